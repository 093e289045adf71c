//! The exec hook: any DNS provider through a program of the operator's, called as lego's `exec`
//! provider calls it: `HOOK present <fqdn>. <value>` before the validation and
//! `HOOK cleanup <fqdn>. <value>` after, the fqdn with its trailing dot and after any CNAME.
//!
//! The hook gets nothing of the spawner's: stdin is /dev/null and its environment holds only
//! `PATH` (the spawner's may hold secrets: an EAB key's path, a Docker endpoint). It runs in a
//! process group of its own, so that at its timeout the whole group (a shell script and what it
//! started) is killed with SIGKILL, and the hook reaped. Its stdout and stderr are read as they
//! come, keeping the last [`OUTPUT_TAIL`] bytes of each: a failure shows the end of stderr,
//! where a program says what went wrong.

use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tracing::debug;

use super::{DnsError, Location, Step};

/// The hook's whole environment: the usual system directories, nothing of the spawner's.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Bytes kept of each of the hook's stdout and stderr: the end is where the error is.
const OUTPUT_TAIL: usize = 2048;
/// Bytes of the hook's output shown in an error: a line or three, not a log.
const SHOWN_OUTPUT: usize = 300;
/// Lines of the hook's output shown in an error.
const SHOWN_LINES: usize = 3;
/// How long the output may still come after the hook exited: a process it left behind may
/// hold the pipes open for good.
const PIPE_GRACE: Duration = Duration::from_secs(1);
/// How long reaping the killed hook may take (SIGKILL is not refused; only a process stuck in
/// the kernel takes longer).
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the hook is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Present,
    Cleanup,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Present => "present",
            Action::Cleanup => "cleanup",
        }
    }
}

/// The last [`OUTPUT_TAIL`] bytes of a stream, filled by a task of its own.
type Tail = Arc<Mutex<Vec<u8>>>;

/// Runs `path <action> <fqdn>. <value>`, killed after `limit`.
pub(crate) async fn run(
    path: &Path,
    limit: Duration,
    action: Action,
    at: &Location,
    value: &str,
) -> Result<(), DnsError> {
    let fqdn = format!("{}.", at.fqdn);
    let what = format!("the DNS hook {} {} {fqdn}", path.display(), action.as_str());
    let fail = |message: String, cause: String| DnsError {
        step: Step::Hook,
        message,
        cause,
    };
    let mut command = Command::new(path);
    command
        .arg(action.as_str())
        .arg(&fqdn)
        .arg(value)
        .env_clear()
        .env("PATH", HOOK_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command.spawn().map_err(|e| {
        let message = format!("{what} could not be run: {e}");
        fail(message.clone(), message)
    })?;
    let pid = child.id();
    debug!(
        hook = %path.display(),
        action = action.as_str(),
        fqdn = %fqdn,
        pid,
        "dns hook started"
    );
    let stdout = read_tail(child.stdout.take());
    let stderr = read_tail(child.stderr.take());

    let status = match timeout(limit, child.wait()).await {
        Ok(Ok(status)) => status,
        waited => {
            // Timed out, or waiting failed: the group goes either way, so nothing of the hook
            // outlives the call.
            kill_group(pid);
            let _ = timeout(REAP_TIMEOUT, child.wait()).await;
            let stderr_tail = finish(stderr, Duration::ZERO).await;
            finish(stdout, Duration::ZERO).await;
            debug!(
                hook = %path.display(),
                action = action.as_str(),
                fqdn = %fqdn,
                "dns hook killed"
            );
            let head = match waited {
                Ok(Err(e)) => format!("{what} failed (waiting for it: {e}) and was killed"),
                _ => format!(
                    "{what} was killed after {}",
                    humantime::format_duration(limit)
                ),
            };
            return Err(fail(with_output(&head, &stderr_tail, &[]), head));
        }
    };
    let stderr_tail = finish(stderr, PIPE_GRACE).await;
    let stdout_tail = finish(stdout, PIPE_GRACE).await;
    debug!(
        hook = %path.display(),
        action = action.as_str(),
        fqdn = %fqdn,
        %status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "dns hook finished"
    );
    if status.success() {
        return Ok(());
    }
    let head = format!("{what} {}", describe(status));
    Err(fail(with_output(&head, &stderr_tail, &stdout_tail), head))
}

/// How the hook ended, when not with success.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

/// SIGKILL to the hook's process group (its own: `process_group(0)`), while the hook is not yet
/// reaped, so the group's ID cannot be anyone else's.
fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL) {
        let pid = pid.as_raw_nonzero().get();
        debug!(pid, error = %e, "dns hook: killing its process group failed");
    }
}

/// Reads `stream` to its end in a task, keeping its last [`OUTPUT_TAIL`] bytes.
fn read_tail<R: AsyncRead + Unpin + Send + 'static>(stream: Option<R>) -> (Tail, JoinHandle<()>) {
    let tail: Tail = Arc::default();
    let kept = tail.clone();
    let task = tokio::spawn(async move {
        let Some(mut stream) = stream else { return };
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let Ok(mut kept) = kept.lock() else { return };
                    kept.extend_from_slice(&buf[..n]);
                    let excess = kept.len().saturating_sub(OUTPUT_TAIL);
                    kept.drain(..excess);
                }
            }
        }
    });
    (tail, task)
}

/// Waits up to `grace` for the stream's end, stops reading, and gives what was kept.
async fn finish((tail, task): (Tail, JoinHandle<()>), grace: Duration) -> Vec<u8> {
    let abort = task.abort_handle();
    if timeout(grace, task).await.is_err() {
        abort.abort();
    }
    tail.lock().map(|t| t.clone()).unwrap_or_default()
}

/// `head`, then the last lines of stderr (or stdout when stderr is empty).
fn with_output(head: &str, stderr: &[u8], stdout: &[u8]) -> String {
    let (name, summary) = match summary(stderr) {
        Some(s) => ("stderr", s),
        None => match summary(stdout) {
            Some(s) => ("stdout", s),
            None => return head.to_string(),
        },
    };
    format!("{head}: {name}: {summary}")
}

/// The last [`SHOWN_LINES`] non-empty lines, control characters escaped, at most
/// [`SHOWN_OUTPUT`] bytes (the end kept); None when there are none.
fn summary(output: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return None;
    }
    let last = lines[lines.len().saturating_sub(SHOWN_LINES)..].join(" / ");
    let escaped: String = last
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    if escaped.len() <= SHOWN_OUTPUT {
        return Some(escaped);
    }
    let mut start = escaped.len() - SHOWN_OUTPUT;
    while !escaped.is_char_boundary(start) {
        start += 1;
    }
    Some(format!("...{}", &escaped[start..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_are_shown_escaped_and_bounded() {
        assert_eq!(summary(b""), None);
        assert_eq!(summary(b"\n  \n"), None);
        assert_eq!(
            summary(b"one\ntwo\nthree\nfour\n\n").as_deref(),
            Some("two / three / four")
        );
        assert_eq!(
            summary(b"bad \x1b[31mred\x07\n").as_deref(),
            Some("bad \\u{1b}[31mred\\u{7}")
        );
        let long = format!("{}end", "é".repeat(400));
        let shown = summary(long.as_bytes()).expect("a summary");
        assert!(
            shown.len() <= SHOWN_OUTPUT + 3 && shown.ends_with("end") && shown.starts_with("...")
        );
    }

    #[test]
    fn errors_show_stderr_else_stdout() {
        assert_eq!(with_output("h", b"oops\n", b"out\n"), "h: stderr: oops");
        assert_eq!(with_output("h", b"", b"out\n"), "h: stdout: out");
        assert_eq!(with_output("h", b"", b""), "h");
    }
}
