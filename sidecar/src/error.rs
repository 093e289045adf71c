//! The sidecar's errors. [`ConfigError`] is everything wrong with what the operator gave us
//! (exit code 2); [`Error`] is what goes wrong at run time (exit code 1). Messages are lowercase,
//! name the flag or file, and keep the cause as `source` so `{:#}` prints the whole chain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Invalid configuration: a flag, environment variable or file the operator supplied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {flag} {value:?}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },

    #[error("--cert was given without --key: both or neither are needed")]
    CertWithoutKey,

    #[error("--key was given without --cert: both or neither are needed")]
    KeyWithoutCert,

    /// The file could not be read, or is no regular file of a sane size (`shared::fs`).
    #[error("failed to read {flag} file {}", path.display())]
    ReadFile {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: shared::fs::ReadError,
    },

    #[error("{flag} file {}: {reason}", path.display())]
    BadPem {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error("{key_flag} {} does not match the certificate in {cert_flag} {}", key.display(), cert.display())]
    KeyMismatch {
        cert_flag: &'static str,
        cert: PathBuf,
        key_flag: &'static str,
        key: PathBuf,
    },

    #[error("{flag} {}: unsupported or invalid private key: {reason}", path.display())]
    UnusableKey {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },

    #[error("failed to generate the self-signed certificate: {0}")]
    SelfSigned(String),

    #[error("failed to build the TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Run-time failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to listen on {flag} {addr}")]
    Bind {
        flag: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("failed to install signal handlers")]
    Signals(#[source] std::io::Error),

    /// Taking the listeners over from the running sidecar failed before this one accepted
    /// anything (`--take-over`).
    #[error("take-over failed")]
    TakeOver(#[from] TakeOverError),

    /// What the configuration could not be made into once serving started (the TLS
    /// configuration).
    #[error(transparent)]
    Setup(#[from] ConfigError),
}

/// Why the sidecar could not take the listeners over from the one running (`--take-over`);
/// the running one keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    #[error("cannot reach the running sidecar on the hand-over socket @{name}")]
    Connect {
        name: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the process on the hand-over socket runs as uid {peer}, not as this sidecar's uid {own}"
    )]
    OtherUser { peer: u32, own: u32 },

    #[error("no answer from the running sidecar within {} while {waiting}", shared::parse::render_duration(*.after))]
    TimedOut {
        waiting: &'static str,
        after: Duration,
    },

    #[error("the running sidecar closed the hand-over while {waiting}")]
    Closed { waiting: &'static str },

    #[error("the running sidecar refused: {0}")]
    Refused(String),

    #[error("the hand-over connection failed while {waiting}")]
    Io {
        waiting: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("the running sidecar sent {0}")]
    Protocol(String),

    #[error("the {role} listener handed over as {addr} is unusable: {reason}")]
    BadListener {
        role: &'static str,
        addr: SocketAddr,
        reason: String,
    },

    #[error("this sidecar took longer than {} to get ready", shared::parse::render_duration(*.0))]
    NotReady(Duration),
}

pub(crate) use shared::telemetry::error_chain as chain;
