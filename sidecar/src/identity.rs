//! Service identity, the calling side: the app calls other services in plain through egress
//! relays ([`egress`]), and each relay calls over mutual TLS, presenting this sidecar's identity
//! and deciding that the server is the service it means. The identity certificate is one of the
//! certificates served (reloaded with them), and its trust bundle is TLS material too
//! ([`crate::tls::identity_trust`]); what is the calling side's alone is here:
//!
//! - [`IdentityVerifier`]: WebPKI chain verification against the current bundle for the DNS name
//!   the relay sent as SNI (the service's name), *then* the identity rule
//!   ([`check_spiffe_id`]): the leaf's one URI SAN is exactly `spiffe://<domain>/<name>`. The DNS
//!   name only picks the certificate; the SPIFFE ID is what a service is.
//! - [`Clients`]: the `ClientConfig` every relay connects with, presenting the identity served
//!   now (rebuilt when the identity certificate changes). TLS session resumption is off: a
//!   resumed session skips certificate verification on both sides and carries the certificates
//!   of its first full handshake, so it would let a caller's old identity, and trust in a
//!   server's, outlive a renewal, a root removed from the bundle, or the certificates' expiry
//!   (a stopped spawner renews nothing). A full ECDSA P-256 handshake per relayed connection is
//!   the price; the app's keep-alive connections make it once.

pub(crate) mod egress;

use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, OtherError, SignatureScheme};

use crate::error::ConfigError;
use crate::throttle::escape;
use crate::tls::certs::{CertFacts, Entry};
use crate::tls::identity_trust::IdentityTrust;
use crate::tls::CertStore;
use shared::proto::AlpnId;
use shared::service_identity::TrustDomain;

/// How much of a server's certificate names a log line shows.
const PRESENTED_MAX: usize = 200;

/// The identity rule for an upstream's server, after its chain and DNS name were verified: its
/// certificate has exactly one URI SAN (an X.509 SVID does), and it is `expected`. `Err` says
/// what is wrong, for the log line.
pub(crate) fn check_spiffe_id(uris: &[String], expected: &str) -> Result<(), &'static str> {
    match uris {
        [one] if one == expected => Ok(()),
        [_] => Err("another identity"),
        [] => Err("its certificate has no URI SAN, so no identity"),
        _ => Err("its certificate has several URI SANs, an identity has exactly one"),
    }
}

/// A server refused by [`IdentityVerifier`]: what it presented, what was expected, and why not.
#[derive(Debug, thiserror::Error)]
#[error("the server presented {presented}, expected {expected}: {reason}")]
pub(crate) struct Refused {
    pub presented: String,
    pub expected: String,
    pub reason: String,
}

/// What a certificate claims to be, for a log line: its URI SANs, else its DNS names, else its
/// subject (escaped: the server chose this text).
fn presented(facts: Option<&CertFacts>) -> String {
    let text = match facts {
        None => "an unparsable certificate".to_string(),
        Some(f) if !f.uris.is_empty() => f.uris.join(", "),
        Some(f) if !f.dns_names.is_empty() => {
            format!("no SPIFFE ID (DNS names {})", f.dns_names.join(", "))
        }
        Some(f) => format!("no SPIFFE ID (subject {})", f.subject),
    };
    escape(text.as_bytes(), PRESENTED_MAX)
}

/// Verifies an upstream's server: WebPKI against the current [`IdentityTrust`] for the SNI name,
/// then [`check_spiffe_id`] with the SPIFFE ID of that name in `domain`.
#[derive(Debug)]
pub(crate) struct IdentityVerifier {
    trust: Arc<IdentityTrust>,
    domain: TrustDomain,
}

impl IdentityVerifier {
    pub(crate) fn new(trust: Arc<IdentityTrust>, domain: TrustDomain) -> Self {
        Self { trust, domain }
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ServerName::DnsName(name) = server_name else {
            // The relay always sends the service name; anything else is a bug, not a server.
            return Err(rustls::Error::General(
                "an identity is verified for a service name".to_string(),
            ));
        };
        let name = name.as_ref();
        let facts = CertFacts::from_der(end_entity.as_ref()).ok();
        let refuse = |reason: String| {
            let refused = Refused {
                presented: presented(facts.as_ref()),
                expected: format!("spiffe://{}/{name}", self.domain),
                reason,
            };
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                refused,
            ))))
        };
        let verified = self.trust.verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verified {
            Ok(_) => {}
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {
                return Err(refuse(format!(
                    "its certificate is not for the DNS name {name}"
                )))
            }
            Err(rustls::Error::InvalidCertificate(e)) => {
                return Err(refuse(format!(
                    "not verified against the identity trust bundle ({}): {e}",
                    self.trust.path().display()
                )))
            }
            Err(e) => return Err(e),
        }
        let expected = format!("spiffe://{}/{name}", self.domain);
        let uris = facts.as_ref().map_or(&[][..], |f| &f.uris[..]);
        match check_spiffe_id(uris, &expected) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(reason) => Err(refuse(reason.to_string())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .verifier()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .verifier()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.verifier().supported_verify_schemes()
    }
}

/// Presents one identity certificate: the one a [`ClientConfig`] of [`Clients`] was built for.
#[derive(Debug)]
struct Presents(Arc<CertifiedKey>);

impl ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The relays' client configuration for the identity served now (see the module docs for why
/// it is rebuilt when, and only when, that identity changes), one per ALPN protocol offered.
pub(crate) struct Clients {
    store: Arc<CertStore>,
    verifier: Arc<IdentityVerifier>,
    /// The provider with the `--tls-groups` the relays offer.
    provider: Arc<rustls::crypto::CryptoProvider>,
    current: Mutex<Current>,
}

/// The configurations for one identity: without ALPN, and with each protocol an upstream
/// offers (as many as there are distinct `/PROTOCOL`s among the upstreams, at most).
struct Current {
    identity: Arc<Entry>,
    plain: Arc<ClientConfig>,
    with_alpn: Vec<(AlpnId, Arc<ClientConfig>)>,
}

impl fmt::Debug for Clients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    /// Builds the first configuration. `None` when the store serves no identity.
    pub(crate) fn new(
        store: Arc<CertStore>,
        verifier: Arc<IdentityVerifier>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Option<Clients>, ConfigError> {
        let Some(identity) = store.current().identity().cloned() else {
            return Ok(None);
        };
        let plain = client_config(&identity, verifier.clone(), &provider)?;
        Ok(Some(Clients {
            store,
            verifier,
            provider,
            current: Mutex::new(Current {
                identity,
                plain,
                with_alpn: Vec::new(),
            }),
        }))
    }

    /// The configuration presenting the identity served now, offering `alpn` if given.
    pub(crate) fn config(&self, alpn: Option<&AlpnId>) -> Result<Arc<ClientConfig>, ConfigError> {
        let mut current = match self.current.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Never `None`: a reload keeps the identity (the previous one when the new fails).
        if let Some(identity) = self.store.current().identity().cloned() {
            if current.identity.content_hash != identity.content_hash {
                let plain = client_config(&identity, self.verifier.clone(), &self.provider)?;
                *current = Current {
                    identity,
                    plain,
                    with_alpn: Vec::new(),
                };
            }
        }
        let Some(alpn) = alpn else {
            return Ok(current.plain.clone());
        };
        if let Some((_, config)) = current.with_alpn.iter().find(|(a, _)| a == alpn) {
            return Ok(config.clone());
        }
        let mut config = (*current.plain).clone();
        config.alpn_protocols = vec![alpn.as_bytes().to_vec()];
        let config = Arc::new(config);
        current.with_alpn.push((alpn.clone(), config.clone()));
        Ok(config)
    }
}

/// TLS 1.3 and 1.2, the identity presented, servers checked by `verifier`, no resumption (see
/// the module docs), no ALPN (the relay moves bytes; the server's default protocol applies,
/// unless the upstream names one: [`Clients::config`]).
fn client_config(
    identity: &Entry,
    verifier: Arc<IdentityVerifier>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<ClientConfig>, ConfigError> {
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(Presents(identity.key.clone())));
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uris(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_server_is_the_service_whose_one_uri_san_is_its_spiffe_id() {
        let b = "spiffe://test.internal/b";
        assert_eq!(check_spiffe_id(&uris(&[b]), b), Ok(()));
        assert_eq!(
            check_spiffe_id(&uris(&["spiffe://test.internal/c"]), b),
            Err("another identity")
        );
        for near in [
            "spiffe://test.internal/b/",
            "spiffe://test.internal/B",
            "spiffe://other.internal/b",
            "spiffe://test.internal/b/x",
            "https://test.internal/b",
        ] {
            assert!(check_spiffe_id(&uris(&[near]), b).is_err(), "{near}");
        }
        assert!(check_spiffe_id(&[], b)
            .expect_err("none")
            .contains("no URI SAN"));
        assert!(check_spiffe_id(&uris(&[b, "spiffe://test.internal/c"]), b)
            .expect_err("two")
            .contains("several"));
        assert!(check_spiffe_id(&uris(&[b, b]), b).is_err());
    }

    #[test]
    fn a_refusal_names_both_identities() {
        let facts = CertFacts {
            uris: uris(&["spiffe://test.internal/b"]),
            ..Default::default()
        };
        let refused = Refused {
            presented: presented(Some(&facts)),
            expected: "spiffe://test.internal/x".to_string(),
            reason: "another identity".to_string(),
        };
        assert_eq!(
            refused.to_string(),
            "the server presented spiffe://test.internal/b, expected spiffe://test.internal/x: another identity"
        );
        let facts = CertFacts {
            dns_names: uris(&["localhost"]),
            ..Default::default()
        };
        assert_eq!(
            presented(Some(&facts)),
            "no SPIFFE ID (DNS names localhost)"
        );
        let facts = CertFacts {
            uris: uris(&["spiffe://x/\n\u{1b}[31m"]),
            ..Default::default()
        };
        assert_eq!(presented(Some(&facts)), "spiffe://x/\\x0a\\x1b[31m");
    }
}
