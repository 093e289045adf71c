//! Why a sidecar is not running: judged by pure rules from what the engine says of it (its state
//! and the last line it wrote to stderr, read by [`crate::engine::observe::examine`]) before the
//! spawner removes it, and carried on the next sidecar's labels so `spawner status` can show it
//! after the failed container is gone.

use std::collections::HashMap;
use std::fmt;

use bollard::models::ContainerInspectResponse;
use shared::schema::{label, label_name};

/// How much of a sidecar's error is kept: a label value, a status cell and a log field, so it
/// must stay short; the sidecar's errors are one line naming the flag or file.
pub(crate) const MAX_ERROR_BYTES: usize = 300;
/// `State.StartedAt` of a container that was never started.
const NEVER: &str = "0001-01-01T00:00:00Z";

/// A sidecar that failed by itself: what its target's status row shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    /// The container's exit code; `None` when the engine refused to create or start it.
    pub(crate) exit_code: Option<i64>,
    /// Its last stderr line (or the engine's error), escaped and bounded; may be empty.
    pub(crate) error: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.exit_code, self.error.is_empty()) {
            (Some(code), true) => write!(f, "exit {code}"),
            (Some(code), false) => write!(f, "exit {code}: {}", self.error),
            (None, _) => write!(f, "not started: {}", self.error),
        }
    }
}

/// What the engine says about a sidecar the listing shows not running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It is running after all (the listing was older than the inspect).
    Running,
    /// Created and never started, no error: a spawner stopped between create and start. Adopt it
    /// (start it) rather than make another.
    NeverStarted,
    /// Killed from outside (SIGKILL, not the OOM killer): nothing wrong with the sidecar, so it is
    /// replaced at once and this does not count towards the crash backoff.
    Killed,
    /// It failed by itself (or could not be started).
    Failed(Failure),
}

/// The state fields [`judge`] reads, as inspect reports them.
#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    pub(crate) running: bool,
    pub(crate) status: String,
    pub(crate) exit_code: i64,
    pub(crate) oom_killed: bool,
    pub(crate) started_at: String,
    /// The engine's error (a failed start).
    pub(crate) error: String,
}

impl State {
    pub(crate) fn of(info: &ContainerInspectResponse) -> State {
        let s = info.state.clone().unwrap_or_default();
        State {
            running: s.running.unwrap_or(false),
            status: s.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code: s.exit_code.unwrap_or(0),
            oom_killed: s.oom_killed.unwrap_or(false),
            started_at: s.started_at.unwrap_or_default(),
            error: s.error.unwrap_or_default(),
        }
    }
}

/// The rules. `stderr_line`: the last line the sidecar wrote to stderr (already escaped).
pub(crate) fn judge(s: &State, stderr_line: &str) -> Verdict {
    if s.running {
        return Verdict::Running;
    }
    let never_started = s.started_at.is_empty() || s.started_at == NEVER;
    if never_started && s.status == "created" && s.error.is_empty() {
        return Verdict::NeverStarted;
    }
    // 137 = 128 + SIGKILL. Nothing inside the sidecar sends its PID 1 a SIGKILL: either the OOM
    // killer (flagged, and a real failure) or someone outside (`docker kill`, an orchestrator).
    if s.exit_code == 137 && !s.oom_killed {
        return Verdict::Killed;
    }
    let error = if !s.error.is_empty() {
        escape(&s.error)
    } else if s.oom_killed {
        "killed: out of memory (raise --sidecar-memory)".to_string()
    } else {
        stderr_line.to_string()
    };
    Verdict::Failed(Failure {
        exit_code: Some(s.exit_code),
        error,
    })
}

/// The last non-empty line of a log tail, control characters escaped, at most
/// [`MAX_ERROR_BYTES`].
pub(crate) fn last_line(logs: &[u8]) -> String {
    let text = String::from_utf8_lossy(logs);
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("");
    escape(line)
}

/// Control characters as `\n`, `\u{1b}` ...; cut at [`MAX_ERROR_BYTES`] on a character boundary
/// (with `...` marking the cut), so a hostile or broken log cannot reach a terminal or a label raw.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let piece: String = if c.is_control() {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + piece.len() > MAX_ERROR_BYTES {
            out.push_str("...");
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// The labels a new sidecar carries about its predecessor's failure.
pub(crate) fn to_labels(prefix: &str, f: &Failure) -> Vec<(String, String)> {
    let code = f.exit_code.map(|c| c.to_string()).unwrap_or_default();
    vec![
        (label_name(prefix, label::LAST_EXIT_CODE), code),
        (label_name(prefix, label::LAST_ERROR), escape(&f.error)),
    ]
}

/// The predecessor's failure a sidecar carries, if any.
pub(crate) fn from_labels(prefix: &str, labels: &HashMap<String, String>) -> Option<Failure> {
    let code = labels.get(&label_name(prefix, label::LAST_EXIT_CODE))?;
    let error = labels
        .get(&label_name(prefix, label::LAST_ERROR))
        .map(|e| escape(e))
        .unwrap_or_default();
    Some(Failure {
        exit_code: code.parse().ok(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i64) -> State {
        State {
            status: "exited".into(),
            exit_code: code,
            started_at: "2026-01-01T00:00:00Z".into(),
            ..State::default()
        }
    }

    #[test]
    fn sigkill_from_outside_is_not_a_failure_but_oom_is() {
        assert_eq!(judge(&exited(137), ""), Verdict::Killed);
        let oom = State {
            oom_killed: true,
            ..exited(137)
        };
        assert!(matches!(judge(&oom, ""), Verdict::Failed(f)
            if f.exit_code == Some(137) && f.error.contains("out of memory")));
    }

    #[test]
    fn exit_code_and_error_line_of_a_failure() {
        let v = judge(
            &exited(2),
            "error: failed to read --key /k: Permission denied",
        );
        let Verdict::Failed(f) = v else {
            panic!("failure expected")
        };
        assert_eq!(
            f.to_string(),
            "exit 2: error: failed to read --key /k: Permission denied"
        );
        // A clean exit while the target runs is still a failure (nobody asked it to stop).
        assert!(matches!(judge(&exited(0), ""), Verdict::Failed(_)));
    }

    #[test]
    fn created_never_started_is_adopted_unless_its_start_failed() {
        let created = State {
            status: "created".into(),
            started_at: NEVER.into(),
            ..State::default()
        };
        assert_eq!(judge(&created, ""), Verdict::NeverStarted);
        let failed = State {
            exit_code: 128,
            error: "cannot join network of a non running container".into(),
            ..created
        };
        assert!(matches!(judge(&failed, ""), Verdict::Failed(f)
            if f.exit_code == Some(128) && f.error.contains("cannot join")));
        let running = State {
            running: true,
            ..exited(0)
        };
        assert_eq!(judge(&running, ""), Verdict::Running);
    }

    #[test]
    fn last_line_is_escaped_and_bounded() {
        assert_eq!(
            last_line(b"info: starting\nerror: bad \x1b[31mkey\x1b[0m\n\n"),
            "error: bad \\u{1b}[31mkey\\u{1b}[0m"
        );
        assert_eq!(last_line(b""), "");
        let long = format!("error: {}", "x".repeat(1000));
        let l = last_line(long.as_bytes());
        assert!(l.len() <= MAX_ERROR_BYTES + 3 && l.ends_with("..."), "{l}");
        let multibyte = "é".repeat(400);
        assert!(escape(&multibyte).ends_with("..."));
    }

    #[test]
    fn failure_round_trips_through_labels() {
        let f = Failure {
            exit_code: Some(2),
            error: "error: no\nway".into(),
        };
        let labels: HashMap<String, String> = to_labels("p", &f).into_iter().collect();
        assert_eq!(labels["p.last-error"], "error: no\\nway");
        let back = from_labels("p", &labels).expect("failure label");
        assert_eq!(back.exit_code, Some(2));
        assert_eq!(back.error, "error: no\\nway");
        assert_eq!(from_labels("p", &HashMap::new()), None);
        let refused = Failure {
            exit_code: None,
            error: "no such image".into(),
        };
        let labels: HashMap<String, String> = to_labels("p", &refused).into_iter().collect();
        assert_eq!(
            from_labels("p", &labels).map(|f| f.to_string()),
            Some("not started: no such image".into())
        );
    }
}
