//! TLS-ALPN-01 (RFC 8737): an ACME server validating a name connects to port 443 and offers ALPN
//! `acme-tls/1` (and nothing else) with the name as SNI; it expects a self-signed certificate
//! for that name with the critical acmeIdentifier extension, and no application data.
//!
//! With `--acme-tls-alpn-dir DIR`, whoever runs ACME (the spawner, or certbot-like tooling)
//! writes that certificate and its key, PEM, into `DIR/<name>.pem`. For a ClientHello offering
//! `acme-tls/1` whose SNI has such a file, the handshake is done with a configuration of its own
//! (that certificate, ALPN `acme-tls/1` only, no client authentication) and the connection is
//! closed after it; every other ClientHello gets the normal configuration, so normal traffic is
//! unchanged while a challenge is pending.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use shared::dns::DnsName;

/// The ALPN protocol id of TLS-ALPN-01.
pub(crate) const ACME_TLS_1: &[u8] = b"acme-tls/1";
/// Largest challenge file read: a certificate and a key are a few KiB.
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Where challenge certificates are looked up.
#[derive(Debug, Clone)]
pub(crate) struct Challenges {
    dir: PathBuf,
}

impl Challenges {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The file holding the challenge certificate for `name`.
    pub(crate) fn path(&self, name: &DnsName) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// The configuration answering the challenge for `name`, if a challenge file is there.
    /// `Err` names what is wrong with a file that is there but unusable.
    pub(crate) async fn config_for(
        &self,
        name: &DnsName,
    ) -> Result<Option<Arc<ServerConfig>>, String> {
        let path = self.path(name);
        let pem = match shared::fs::read_async(&path, MAX_FILE_BYTES).await {
            Ok(pem) => pem,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        challenge_config(&pem)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The name a ClientHello asks a challenge for: it offers `acme-tls/1` and sends an SNI DNS
/// name (lowercased; anything else, e.g. an IP or no SNI, is no challenge).
pub(crate) fn wanted<'a>(
    mut alpn: impl Iterator<Item = &'a [u8]>,
    server_name: Option<&str>,
) -> Option<DnsName> {
    if !alpn.any(|p| p == ACME_TLS_1) {
        return None;
    }
    DnsName::from_str(&server_name?.to_ascii_lowercase()).ok()
}

/// A server configuration that answers a TLS-ALPN-01 challenge with the certificate and key in
/// `pem`: ALPN `acme-tls/1` only, TLS 1.2 or 1.3, no client certificates.
pub(crate) fn challenge_config(pem: &[u8]) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate".to_string());
    }
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no usable key: {e}"))?;
    let provider = super::provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("no usable key: {e}"))?;
    // rustls' own pair check parses the certificate with webpki, which refuses the critical
    // acmeIdentifier extension every challenge certificate has; compare the public keys instead.
    let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let matches = signing
        .public_key()
        .is_some_and(|spki| spki.as_ref() == leaf.public_key().raw);
    if !matches {
        return Err("certificate and key do not match".to_string());
    }
    let certified = Arc::new(CertifiedKey::new(certs, signing));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Always(certified)));
    config.alpn_protocols = vec![ACME_TLS_1.to_vec()];
    Ok(Arc::new(config))
}

/// Serves one certificate whatever the ClientHello says.
#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl ResolvesServerCert for Always {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem_pair(name: &str) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7u8; 32])];
        let cert = params.self_signed(&key).expect("cert");
        format!("{}{}", cert.pem(), key.serialize_pem())
    }

    #[test]
    fn only_an_acme_tls_offer_with_a_dns_sni_is_a_challenge() {
        let offer = |alpn: &[&[u8]], sni: Option<&str>| wanted(alpn.iter().copied(), sni);
        assert_eq!(
            offer(&[ACME_TLS_1], Some("App.Example")).map(|n| n.to_string()),
            Some("app.example".to_string())
        );
        assert_eq!(
            offer(&[b"h2", ACME_TLS_1], Some("a.example")).map(|n| n.to_string()),
            Some("a.example".to_string())
        );
        assert!(offer(&[b"h2"], Some("a.example")).is_none());
        assert!(offer(&[], Some("a.example")).is_none());
        assert!(offer(&[ACME_TLS_1], None).is_none());
        // Nothing that could leave the directory, or is no name.
        for sni in ["../x", "a/b", "*.example", ""] {
            assert!(offer(&[ACME_TLS_1], Some(sni)).is_none(), "{sni:?}");
        }
    }

    #[test]
    fn a_challenge_file_gives_an_acme_tls_only_config() {
        let config = challenge_config(pem_pair("a.example").as_bytes()).expect("valid");
        assert_eq!(config.alpn_protocols, vec![ACME_TLS_1.to_vec()]);
        let err = challenge_config(b"garbage").expect_err("no cert");
        assert!(err.contains("no certificate"), "{err}");
        let only_cert = pem_pair("a.example");
        let only_cert = &only_cert[..only_cert.find("-----BEGIN PRIVATE KEY").expect("key")];
        let err = challenge_config(only_cert.as_bytes()).expect_err("no key");
        assert!(err.contains("no usable key"), "{err}");
        let other = pem_pair("a.example");
        let other_key = &other[other.find("-----BEGIN PRIVATE KEY").expect("key")..];
        let err =
            challenge_config(format!("{only_cert}{other_key}").as_bytes()).expect_err("mismatched");
        assert!(err.contains("do not match"), "{err}");
    }

    #[tokio::test]
    async fn files_are_looked_up_by_name_and_bounded() {
        let dir = std::env::temp_dir().join(format!("acme-alpn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let challenges = Challenges::new(dir.clone());
        let name: DnsName = "a.example".parse().expect("name");
        assert!(challenges
            .config_for(&name)
            .await
            .expect("absent")
            .is_none());
        std::fs::write(challenges.path(&name), pem_pair("a.example")).expect("write");
        assert!(challenges
            .config_for(&name)
            .await
            .expect("present")
            .is_some());
        std::fs::write(challenges.path(&name), vec![b'x'; 70 * 1024]).expect("write");
        let err = challenges.config_for(&name).await.expect_err("too large");
        assert!(err.contains("larger than 64 KiB"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_fifo_challenge_file_is_refused_not_waited_on() {
        use shared::fs::testing::{mkfifo, within};
        let dir = std::env::temp_dir().join(format!("acme-alpn-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let challenges = Challenges::new(dir.clone());
        let name: DnsName = "a.example".parse().expect("name");
        let fifo = challenges.path(&name);
        mkfifo(&fifo);
        let err = within("a FIFO challenge file", move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            rt.block_on(challenges.config_for(&name)).map(|_| ())
        })
        .expect_err("a FIFO is refused");
        assert_eq!(
            err,
            format!("{}: is a FIFO, not a regular file", fifo.display())
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
