//! TLS material and the one `rustls::ServerConfig` the sidecar serves with.
//!
//! Certificates are served through [`CertStore`], a resolver whose current certificate can be
//! swapped atomically: that is where hot reload (SIGHUP / file watch) and SNI selection among
//! many certificates plug in, without touching the accept loop. The crypto provider is named
//! explicitly (ring) so the build can never end up with two providers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{CertSource, Mode};
use crate::error::ConfigError;

/// The one crypto provider of the workspace.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate ready to serve, with what operators want to see about it.
#[derive(Debug)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// SHA-256 of the leaf certificate (DER), lowercase hex.
    pub fingerprint: String,
    /// Where it came from, for logs.
    pub origin: String,
}

/// Loads or generates the certificate the config asks for.
pub fn load(source: &CertSource) -> Result<LoadedCert, ConfigError> {
    match source {
        CertSource::Files { cert, key } => load_pair(cert, key),
        CertSource::SelfSigned { names } => self_signed(names),
    }
}

/// Reads a PEM certificate chain and private key and checks that they belong together.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, ConfigError> {
    let chain = read_chain(cert_path)?;
    let key = read_key(key_path)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| ConfigError::UnusableKey { path: key_path.to_path_buf(), reason: e.to_string() })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(ConfigError::KeyMismatch { cert: cert_path.to_path_buf(), key: key_path.to_path_buf() })
        }
        Err(e) => {
            return Err(ConfigError::BadPem { flag: "--cert", path: cert_path.to_path_buf(), reason: e.to_string() })
        }
    }
    let fingerprint = sha256_hex(certified.cert[0].as_ref());
    Ok(LoadedCert { key: Arc::new(certified), fingerprint, origin: cert_path.display().to_string() })
}

fn read_file(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::ReadFile { flag, path: path.to_path_buf(), source })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read_file("--cert", path)?;
    let bad = |reason: String| ConfigError::BadPem { flag: "--cert", path: PathBuf::from(path), reason };
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("malformed PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no PEM certificate found".to_string()));
    }
    for (i, der) in chain.iter().enumerate() {
        webpki_check(der).map_err(|reason| bad(format!("certificate {} of the chain is invalid: {reason}", i + 1)))?;
    }
    Ok(chain)
}

/// Catches DER that is not a certificate at all, so garbage fails at start, not at the first
/// handshake.
fn webpki_check(der: &CertificateDer<'_>) -> Result<(), String> {
    // An X.509 certificate is a DER SEQUENCE of three elements; a full parse happens in rustls
    // when a client verifies it. Checking the outer tag and length catches truncation and
    // non-certificate PEM blocks cheaply.
    let b = der.as_ref();
    if b.len() < 4 || b[0] != 0x30 {
        return Err("not a DER certificate".to_string());
    }
    let (len, header) = match b[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (b[2] as usize, 3),
        0x82 => (((b[2] as usize) << 8) | b[3] as usize, 4),
        0x83 if b.len() >= 5 => (((b[2] as usize) << 16) | ((b[3] as usize) << 8) | b[4] as usize, 5),
        _ => return Err("unsupported DER length".to_string()),
    };
    if header + len != b.len() {
        return Err("truncated or padded DER".to_string());
    }
    Ok(())
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = read_file("--key", path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| ConfigError::BadPem {
        flag: "--key",
        path: path.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM private key found (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".to_string()
            }
            other => format!("malformed PEM: {other}"),
        },
    })
}

/// Generates an ECDSA P-256 certificate for `names` (DNS names and IP addresses).
pub fn self_signed(names: &[String]) -> Result<LoadedCert, ConfigError> {
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
    let mut params =
        rcgen::CertificateParams::new(names.to_vec()).map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
    let common_name = names.first().cloned().unwrap_or_else(|| "tls-sidecar".to_string());
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "tls-sidecar self-signed");
    let cert = params.self_signed(&key_pair).map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
    let key_der = PrivateKeyDer::try_from(key_pair.serialize_der()).map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
    let signing_key = provider().key_provider.load_private_key(key_der)?;
    let der = cert.der().clone();
    let fingerprint = sha256_hex(der.as_ref());
    Ok(LoadedCert {
        key: Arc::new(CertifiedKey::new(vec![der], signing_key)),
        fingerprint,
        origin: format!("self-signed for {}", names.join(",")),
    })
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The certificate resolver. Holds the certificate currently served; `replace` swaps it for all
/// new handshakes while established connections keep theirs.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self { current: RwLock::new(key) }
    }

    /// Serves `key` to every handshake from now on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut guard) => *guard = key,
            Err(poisoned) => *poisoned.into_inner() = key,
        }
    }

    fn get(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// ALPN protocols offered per mode: HTTP mode negotiates h2 or http/1.1; TCP mode offers none,
/// so any client ALPN is ignored rather than refused.
fn alpn(mode: Mode) -> Vec<Vec<u8>> {
    match mode {
        Mode::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Mode::Tcp => Vec::new(),
    }
}

/// Builds the server configuration: TLS 1.2 and 1.3 only, rustls defaults otherwise.
pub fn server_config(store: Arc<CertStore>, mode: Mode) -> Result<Arc<ServerConfig>, ConfigError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = alpn(mode);
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_has_fingerprint_of_its_leaf() {
        let loaded = self_signed(&["localhost".to_string(), "127.0.0.1".to_string()]).expect("generate");
        assert_eq!(loaded.fingerprint, sha256_hex(loaded.key.cert[0].as_ref()));
        assert_eq!(loaded.fingerprint.len(), 64);
    }

    #[test]
    fn der_check_refuses_garbage() {
        assert!(webpki_check(&CertificateDer::from(vec![1, 2, 3, 4])).is_err());
        assert!(webpki_check(&CertificateDer::from(vec![0x30, 0x05, 0, 0])).is_err());
        assert!(webpki_check(&CertificateDer::from(vec![0x30, 0x02, 0, 0])).is_ok());
    }

    #[test]
    fn config_builds_for_both_modes() {
        let loaded = self_signed(&["localhost".to_string()]).expect("generate");
        let store = Arc::new(CertStore::new(loaded.key));
        let http = server_config(store.clone(), Mode::Http).expect("http config");
        assert_eq!(http.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let tcp = server_config(store, Mode::Tcp).expect("tcp config");
        assert!(tcp.alpn_protocols.is_empty());
    }
}
