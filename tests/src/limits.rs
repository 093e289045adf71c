//! The test process's open-files limit. Tests that hold thousands of sockets raise their soft
//! limit first (the sidecar they start inherits it), since many shells still default to 1,024.

use std::process::Command;

/// Raises this process's soft `RLIMIT_NOFILE` to at least `needed`, panicking if the hard limit
/// does not allow it. util-linux's `prlimit` does the call, as `kill` sends the harness's
/// signals: the workspace forbids `unsafe`, and this is not worth a dependency.
pub fn raise_open_files(needed: u64) {
    let (soft, hard) = open_files();
    if soft >= needed {
        return;
    }
    assert!(
        hard >= needed,
        "this test holds {needed} files open but the hard limit is {hard}: raise it (ulimit -Hn)"
    );
    let status = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={needed}:"))
        .status()
        .expect("run prlimit (util-linux)");
    assert!(status.success(), "prlimit --nofile={needed}: failed");
    let (now, _) = open_files();
    assert!(
        now >= needed,
        "open-files soft limit still {now} after prlimit"
    );
}

/// The soft and hard open-files limits, from `/proc/self/limits`.
fn open_files() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-files line in /proc/self/limits:\n{limits}"));
    let mut values = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(u64::MAX)); // "unlimited"
    match (values.next(), values.next()) {
        (Some(soft), Some(hard)) => (soft, hard),
        _ => panic!("unexpected open-files line: {line}"),
    }
}
