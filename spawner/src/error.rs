//! The spawner's error type: one variant per operation that can fail, each keeping its source.

use std::time::Duration;

/// Everything that can go wrong talking to the Docker engine or preparing to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to connect to the docker engine at {host}")]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("docker call {op} timed out after {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("docker call {op} failed")]
    Docker {
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("failed to write the status table")]
    WriteStatus(#[source] std::io::Error),
    #[error("failed to write the trust bundle")]
    WriteBundle(#[source] std::io::Error),
    /// The identity CA cannot be loaded, made or read.
    #[error(transparent)]
    Identity(#[from] crate::identity_ca::IdentityError),
    #[error(transparent)]
    Deliver(#[from] crate::delivery::DeliveryError),
    #[error("cannot read --acme-ca-cert {}: {reason}", path.display())]
    AcmeCaCert {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl Error {
    /// The HTTP status the engine answered with, when it answered at all.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Error::Docker {
                source: bollard::errors::Error::DockerResponseServerError { status_code, .. },
                ..
            } => Some(*status_code),
            _ => None,
        }
    }

    /// True when the engine could not be reached (as opposed to answering with an error), so the
    /// cached connection should be dropped and re-established.
    pub fn is_transport(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } => true,
            Error::Docker { source, .. } => !matches!(
                source,
                bollard::errors::Error::DockerResponseServerError { .. }
                    | bollard::errors::Error::DockerStreamError { .. }
            ),
            Error::WriteStatus(_)
            | Error::WriteBundle(_)
            | Error::Identity(_)
            | Error::Deliver(_)
            | Error::AcmeCaCert { .. } => false,
        }
    }
}
