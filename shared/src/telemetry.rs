//! Logging setup: `tracing` to stderr, as human text or one JSON object per line. The level comes
//! from `RUST_LOG` (default `info`), so operators use the knob they already know; the sidecar also
//! takes gosslterm's `LOG_LEVEL` ([`LogLevel`]) when `RUST_LOG` is unset.

use std::io::IsTerminal;

use tracing::Dispatch;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{fmt, EnvFilter};

/// Log output format, chosen with `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The variable `tracing`'s filter is read from: when set, it decides alone.
pub const RUST_LOG: &str = EnvFilter::DEFAULT_ENV;

/// One level for every log line, as gosslterm's `LOG_LEVEL` names them (`warn` was its default
/// and meant "silent": no access log). The one parser of such a value: [`LogLevel::from_str`].
///
/// [`LogLevel::from_str`]: std::str::FromStr::from_str
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Every level, most verbose first.
    pub const ALL: [LogLevel; 5] = [
        LogLevel::Trace,
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Warn,
        LogLevel::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    /// The filter that logs this level and above, for every target.
    pub fn filter(self) -> EnvFilter {
        EnvFilter::new(self.as_str())
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    /// One of [`LogLevel::ALL`]'s names, in any case, surrounding whitespace ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        LogLevel::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = LogLevel::ALL.iter().map(|l| l.as_str()).collect();
                format!("expected one of {}", names.join(", "))
            })
    }
}

impl std::fmt::Display for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether log lines carry ANSI colours: only for a person at a terminal; log collectors and
/// tests get plain text. Asked by [`init`] and by anything else that writes log lines to stderr
/// in the same format (the sidecar's access-log writer), so both decide alike.
pub fn ansi() -> bool {
    std::io::stderr().is_terminal()
}

/// The subscriber [`init`] installs, writing to `writer`: kept apart so a test can capture
/// exactly the lines a user gets.
pub fn dispatch<W>(format: LogFormat, filter: EnvFilter, ansi: bool, writer: W) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => Dispatch::new(builder.finish()),
        LogFormat::Json => Dispatch::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .finish(),
        ),
    }
}

/// Installs the global subscriber, its level from `RUST_LOG` (default `info`). Calling it twice
/// is harmless (the second call does nothing), which keeps in-process tests that start several
/// servers simple.
pub fn init(format: LogFormat) {
    init_at(format, None);
}

/// [`init`], with `level` in place of `RUST_LOG` when given: the caller decided that `RUST_LOG`
/// is unset and that another variable names the level (the sidecar's `LOG_LEVEL`).
pub fn init_at(format: LogFormat, level: Option<LogLevel>) {
    let filter = match level {
        Some(level) => level.filter(),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let _ =
        tracing::dispatcher::set_global_default(dispatch(format, filter, ansi(), std::io::stderr));
}

/// An error and its sources, `: `-separated (like `{:#}` in a `main`), so a log line or a status
/// cell carries the reason (e.g. `No such file or directory`) and not only the operation.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn log_levels_are_gosslterms_names_in_any_case() {
        for (text, level) in [
            ("trace", LogLevel::Trace),
            ("DEBUG", LogLevel::Debug),
            ("Info", LogLevel::Info),
            (" warn ", LogLevel::Warn),
            ("error", LogLevel::Error),
        ] {
            assert_eq!(text.parse::<LogLevel>(), Ok(level), "{text:?}");
            assert_eq!(level.to_string().parse::<LogLevel>(), Ok(level));
        }
        for bad in [
            "",
            "warning",
            "fatal",
            "panic",
            "off",
            "info,sidecar=debug",
            "3",
        ] {
            assert_eq!(
                bad.parse::<LogLevel>(),
                Err("expected one of trace, debug, info, warn, error".to_string()),
                "{bad:?}"
            );
        }
    }

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_level_logs_itself_and_above_only() {
        let out = Lines::default();
        let writer = out.clone();
        let dispatch = dispatch(LogFormat::Text, LogLevel::Warn.filter(), false, move || {
            writer.clone()
        });
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info!("quiet info line");
            tracing::warn!("loud warn line");
            tracing::error!("loud error line");
        });
        let text =
            String::from_utf8_lossy(&out.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned();
        assert!(!text.contains("quiet info line"), "{text}");
        assert!(
            text.contains("loud warn line") && text.contains("loud error line"),
            "{text}"
        );
    }
}
