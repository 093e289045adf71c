//! Mutual TLS: client certificates verified against `--client-ca` (with optional CRLs), then
//! matched against the allow-lists (`--allow-cn`, `--allow-dns-san`, `--allow-uri-san`). A client
//! that fails either is refused during the handshake, in both modes, so nothing it sends ever
//! reaches the backend. The verified identity is handed to the HTTP layer as [`ClientIdentity`].

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use tracing::debug;

use crate::certs::CertFacts;
use crate::config::ClientAuth;
use crate::error::ConfigError;
use crate::tls::sha256_hex;
use shared::identity::Identities;
use shared::mode::ClientAuthMode;

/// Whether a verified certificate is admitted by the allow-lists (the rule lives in
/// `shared::identity`, with the grammar of its patterns).
fn admits(allow: &Identities, facts: &CertFacts) -> bool {
    allow.admits(
        facts.common_names.iter().map(String::as_str),
        facts.dns_names.iter().map(String::as_str),
        facts.uris.iter().map(String::as_str),
    )
}

/// The verified client identity, for the backend's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// `X-Client-Cert-Subject`: RFC 4514 subject.
    pub subject: String,
    /// `X-Client-Cert-SAN`: `DNS:a.example, URI:spiffe://..., IP:10.0.0.1`.
    pub san: String,
    /// `X-Client-Cert-Fingerprint`: SHA-256 of the leaf, lowercase hex.
    pub fingerprint: String,
}

impl ClientIdentity {
    /// From the leaf certificate a client presented (already verified by the handshake).
    pub fn from_leaf(der: &CertificateDer<'_>) -> Option<Self> {
        let facts = CertFacts::from_der(der.as_ref()).ok()?;
        let mut san: Vec<String> = facts.dns_names.iter().map(|d| format!("DNS:{d}")).collect();
        san.extend(facts.uris.iter().map(|u| format!("URI:{u}")));
        san.extend(facts.ips.iter().map(|ip| format!("IP:{ip}")));
        Some(Self {
            subject: facts.subject,
            san: san.join(", "),
            fingerprint: sha256_hex(der.as_ref()),
        })
    }
}

/// Builds the client verifier from the configuration (reads the CA bundle and CRLs).
pub fn verifier(auth: &ClientAuth) -> Result<Arc<dyn ClientCertVerifier>, ConfigError> {
    let roots = load_roots("--client-ca", &auth.ca)?;
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::tls::provider());
    if let Some(crl_path) = &auth.crl {
        builder = builder.with_crls(load_crls(crl_path)?);
    }
    if auth.mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder.build().map_err(|e| ConfigError::BadPem {
        flag: "--client-ca",
        path: auth.ca.clone(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(AllowingVerifier {
        inner,
        allow: auth.allow.clone(),
    }))
}

/// Reads a PEM bundle of CA certificates (`flag` names it in errors): at least one, each usable
/// as a trust anchor.
pub(crate) fn load_roots(flag: &'static str, path: &Path) -> Result<RootCertStore, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::ReadFile {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| ConfigError::BadPem {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("malformed PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate found".to_string()));
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| bad(format!("certificate {} is not a usable CA: {e}", i + 1)))?;
    }
    Ok(roots)
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::ReadFile {
        flag: "--client-crl",
        path: path.to_path_buf(),
        source,
    })?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::BadPem {
            flag: "--client-crl",
            path: path.to_path_buf(),
            reason: format!("malformed PEM: {e}"),
        })?;
    if crls.is_empty() {
        return Err(ConfigError::BadPem {
            flag: "--client-crl",
            path: path.to_path_buf(),
            reason: "no PEM X509 CRL found".to_string(),
        });
    }
    Ok(crls)
}

/// WebPKI verification, then the allow-lists.
struct AllowingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Identities,
}

impl fmt::Debug for AllowingVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowingVerifier")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for AllowingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allow.is_empty() {
            return Ok(verified);
        }
        let facts = CertFacts::from_der(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if admits(&self.allow, &facts) {
            Ok(verified)
        } else {
            debug!(subject = %facts.subject, "client certificate not in the allow-list");
            Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(cn: &str, dns: &[&str], uris: &[&str]) -> CertFacts {
        CertFacts {
            common_names: vec![cn.to_string()],
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            uris: uris.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn list(cn: &str, dns: &str, uri: &str) -> Identities {
        Identities {
            cn: cn.parse().expect("cn"),
            dns: dns.parse().expect("dns"),
            uri: uri.parse().expect("uri"),
        }
    }

    #[test]
    fn any_list_admits_and_empty_admits_all() {
        let allow = list(
            "billing",
            "*.svc.example",
            "spiffe://example.org/ns/*/sa/web",
        );
        assert!(admits(&allow, &facts("billing", &[], &[])));
        assert!(admits(&allow, &facts("x", &["api.svc.example"], &[])));
        assert!(admits(
            &allow,
            &facts("x", &[], &["spiffe://example.org/ns/prod/sa/web"])
        ));
        assert!(!admits(
            &allow,
            &facts(
                "x",
                &["api.other.example"],
                &["spiffe://example.org/ns/prod/sa/db"]
            )
        ));
        assert!(admits(&Identities::default(), &facts("anyone", &[], &[])));
    }
}
