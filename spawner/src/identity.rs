//! Service identity: every sidecar of a target with an identity gets a short-lived certificate
//! naming its service, signed by the spawner's own CA, and the trust bundle its peers are checked
//! against, so sidecars can authenticate each other without an operator issuing anything.
//!
//! The CA (load or make, sign, the trust bundle, `spawner ca export`) is [`ca`]; when each
//! sidecar is given a new certificate or only a new bundle is [`renewal`]. The daemon delivers
//! both into the sidecar's identity volume.

pub(crate) mod ca;
pub(crate) mod renewal;

use std::path::PathBuf;

/// What went wrong with the identity CA, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot load identity CA {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
    #[error("cannot create identity CA {}: {reason}", path.display())]
    Create { path: PathBuf, reason: String },
    #[error(
        "no identity CA in {} yet: start `spawner run --identity-domain DOMAIN` once, or give --identity-ca-cert",
        store.display()
    )]
    NoCa { store: PathBuf },
    #[error("cannot use --identity-trust {}: {reason}", path.display())]
    Trust { path: PathBuf, reason: String },
    #[error("failed to issue an identity certificate for {id}: {reason}")]
    Issue { id: String, reason: String },
}
