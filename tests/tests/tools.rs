//! `tests/tools.sh`, the one list of the host tools the tests start, which `make test` and
//! `.ci/run` run before anything compiles: on a machine without them and without the right to
//! install, it stops at once naming the one command that installs them.

use std::os::unix::fs::symlink;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::docker::repo_root;
use harness::tmp::TempDir;

/// A PATH holding only what the script itself needs (a shell and a few core utilities), so every
/// test tool is missing, as on a fresh machine.
fn bare_path() -> TempDir {
    let dir = TempDir::new("tools-path");
    for tool in ["bash", "sed", "wc", "id", "cat", "tail", "mktemp", "rm"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} is on this machine"));
        symlink(found, dir.path().join(tool)).expect("link a core tool");
    }
    dir
}

#[test]
fn without_the_tools_the_check_stops_at_once_naming_the_install_command() {
    let path = bare_path();
    let started = Instant::now();
    let out = Command::new(path.path().join("bash"))
        .arg(repo_root().join("tests/tools.sh"))
        .arg("--check")
        .env_clear()
        .env("PATH", path.path())
        .stdin(Stdio::null())
        .output()
        .expect("run tests/tools.sh");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        elapsed < Duration::from_secs(10),
        "stops within seconds, not after compiling: {elapsed:?}"
    );
    let command = stderr
        .lines()
        .find(|l| l.contains("apt-get install"))
        .unwrap_or_else(|| panic!("names the install command: {stderr}"));
    for package in [
        "curl",
        "openssl",
        "iproute2",
        "util-linux",
        "haproxy",
        "pebble",
        "busybox-static",
        "docker-compose",
    ] {
        assert!(
            command.split_whitespace().any(|w| w == package),
            "{package} in `{command}`"
        );
    }
    // Each package once, however many of its commands are missing (pebble has two).
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(
        words.iter().filter(|w| **w == "pebble").count(),
        1,
        "{command}"
    );
    assert!(
        stderr.contains("pebble-challtestsrv"),
        "names each missing command: {stderr}"
    );
}

#[test]
fn on_this_machine_every_tool_is_present() {
    // make test ran the script before compiling this binary; it passes again, changing nothing.
    let out = Command::new(repo_root().join("tests/tools.sh"))
        .arg("--check")
        .output()
        .expect("run tests/tools.sh");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
