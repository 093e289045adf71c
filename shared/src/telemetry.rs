//! Logging setup: `tracing` to stderr, as human text or one JSON object per line. The level comes
//! from `RUST_LOG` (default `info`), so operators use the knob they already know.

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

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing),
/// which keeps in-process tests that start several servers simple.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ =
        tracing::dispatcher::set_global_default(dispatch(format, filter, ansi(), std::io::stderr));
}
