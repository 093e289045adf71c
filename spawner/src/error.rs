//! The spawner's error type: one variant per operation that can fail, each keeping its source.
//! A failed engine call is the engine's own [`engine::Error`](crate::engine::Error), carried whole.

/// Everything that can go wrong talking to the Docker engine or preparing to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Docker engine failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::Error),
    #[error("failed to write the status table")]
    WriteStatus(#[source] std::io::Error),
    #[error("failed to write the trust bundle")]
    WriteBundle(#[source] std::io::Error),
    /// The identity CA cannot be loaded, made or read.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    #[error(transparent)]
    Deliver(#[from] crate::certs::delivery::DeliveryError),
    /// `spawner rollout` or `spawner status` could not ask the daemon.
    #[error(transparent)]
    Control(#[from] crate::control::Unreachable),
    /// The daemon refused a `spawner rollout` request.
    #[error("{0}")]
    RolloutRefused(String),
    #[error("cannot read --acme-eab-hmac-key-file {}: {reason}", path.display())]
    AcmeEabKey {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("cannot read --acme-dns-tsig-key {}: {reason}", path.display())]
    AcmeDnsTsigKey {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A `--acme-dns-*` value that cannot be used (a server name that does not resolve, a hook
    /// that is not an executable file).
    #[error("cannot use --{flag} {value}: {reason}")]
    AcmeDns {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot read --acme-ca-cert {}: {reason}", path.display())]
    AcmeCaCert {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl Error {
    /// The HTTP status the engine answered with, when it answered at all.
    pub(crate) fn status_code(&self) -> Option<u16> {
        match self {
            Error::Engine(e) => e.status_code(),
            _ => None,
        }
    }

    /// True when the engine could not be reached (as opposed to answering with an error), so the
    /// cached connection should be dropped and re-established.
    pub(crate) fn is_transport(&self) -> bool {
        match self {
            Error::Engine(e) => e.is_transport(),
            Error::WriteStatus(_)
            | Error::WriteBundle(_)
            | Error::Identity(_)
            | Error::Deliver(_)
            | Error::Control(_)
            | Error::RolloutRefused(_)
            | Error::AcmeEabKey { .. }
            | Error::AcmeDnsTsigKey { .. }
            | Error::AcmeDns { .. }
            | Error::AcmeCaCert { .. } => false,
        }
    }
}
