//! The sidecar's errors. [`ConfigError`] is everything wrong with what the operator gave us
//! (exit code 2); [`Error`] is what goes wrong at run time (exit code 1). Messages are lowercase,
//! name the flag or file, and keep the cause as `source` so `{:#}` prints the whole chain.

use std::net::SocketAddr;
use std::path::PathBuf;

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
}

pub(crate) use shared::telemetry::error_chain as chain;
