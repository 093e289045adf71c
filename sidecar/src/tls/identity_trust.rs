//! The identity trust bundle (`--identity-ca`): the roots an egress relay verifies the servers
//! it calls against ([`crate::identity::IdentityVerifier`]). Several roots during a CA
//! roll-over; replaced whole when the file changes, the previous one kept while the file is
//! unusable, so a half-written bundle never stops the calls. It is re-read with the certificates
//! ([`super::reload`]), on the same occasions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::client::WebPkiServerVerifier;
use rustls::RootCertStore;

use super::client_auth::load_roots;
use super::provider;
use crate::error::ConfigError;

/// The flag naming the trust bundle in errors.
const CA_FLAG: &str = "--identity-ca";

/// The identity trust bundle, reloadable.
#[derive(Debug)]
pub(crate) struct IdentityTrust {
    path: PathBuf,
    current: RwLock<Roots>,
}

#[derive(Debug, Clone)]
struct Roots {
    anchors: Arc<RootCertStore>,
    verifier: Arc<WebPkiServerVerifier>,
}

impl Roots {
    fn read(path: &Path) -> Result<Roots, ConfigError> {
        let anchors = Arc::new(load_roots(CA_FLAG, path)?);
        let verifier = WebPkiServerVerifier::builder_with_provider(anchors.clone(), provider())
            .build()
            .map_err(|e| ConfigError::BadPem {
                flag: CA_FLAG,
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(Roots { anchors, verifier })
    }
}

impl IdentityTrust {
    /// Reads the bundle at start: an unusable file is a configuration error.
    pub(crate) fn load(path: &Path) -> Result<IdentityTrust, ConfigError> {
        Ok(IdentityTrust {
            path: path.to_path_buf(),
            current: RwLock::new(Roots::read(path)?),
        })
    }

    /// Re-reads the bundle; `Ok(true)` when it holds other roots than before (then verifying
    /// with them from the next handshake on). An unusable file leaves the current roots in place.
    pub(crate) fn reload(&self) -> Result<bool, ConfigError> {
        let new = Roots::read(&self.path)?;
        let mut current = match self.current.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.anchors.roots == new.anchors.roots {
            return Ok(false);
        }
        *current = new;
        Ok(true)
    }

    /// How many roots the bundle holds now.
    pub(crate) fn roots(&self) -> usize {
        self.roots_now().anchors.roots.len()
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The WebPKI verifier of the roots in force now.
    pub(crate) fn verifier(&self) -> Arc<WebPkiServerVerifier> {
        self.roots_now().verifier
    }

    fn roots_now(&self) -> Roots {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        params.self_signed(&key).expect("self-sign").pem()
    }

    #[test]
    fn the_trust_bundle_is_replaced_whole_and_kept_when_broken() {
        let dir = std::env::temp_dir().join(format!("sidecar-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("ca.pem");
        let (old, new) = (ca_pem("old root"), ca_pem("new root"));
        std::fs::write(&path, &old).expect("write");
        let trust = IdentityTrust::load(&path).expect("load");
        assert_eq!(trust.roots(), 1);
        assert_eq!(trust.reload().ok(), Some(false), "unchanged");
        // A roll-over: both roots, then the new one alone.
        std::fs::write(&path, format!("{old}{new}")).expect("write");
        assert_eq!(trust.reload().ok(), Some(true));
        assert_eq!(trust.roots(), 2);
        for broken in ["", "-----BEGIN CERTIFICATE-----\nnot base64"] {
            std::fs::write(&path, broken).expect("write");
            let err = trust.reload().expect_err("unusable");
            assert!(err.to_string().contains("--identity-ca"), "{err}");
            assert_eq!(trust.roots(), 2, "the previous bundle is kept");
        }
        std::fs::write(&path, &new).expect("write");
        assert_eq!(trust.reload().ok(), Some(true));
        assert_eq!(trust.roots(), 1);
        std::fs::remove_file(&path).expect("rm");
        assert!(
            trust.reload().is_err(),
            "a missing file keeps the roots too"
        );
        assert_eq!(trust.roots(), 1);
        assert!(
            IdentityTrust::load(&path).is_err(),
            "but is refused at start"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_as_the_trust_bundle_is_refused_not_waited_on() {
        use shared::fs::testing::{mkfifo, within};
        let dir = std::env::temp_dir().join(format!("sidecar-trust-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let fifo = dir.join("ca.pem");
        mkfifo(&fifo);
        let path = fifo.clone();
        let e = within("--identity-ca", move || {
            IdentityTrust::load(&path).map(|_| ())
        })
        .expect_err("a FIFO is refused");
        assert_eq!(
            crate::error::chain(&e),
            format!(
                "failed to read --identity-ca file {}: is a FIFO, not a regular file",
                fifo.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
