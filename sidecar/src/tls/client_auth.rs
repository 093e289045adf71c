//! Mutual TLS: client certificates verified against `--client-ca` (with optional CRLs), then
//! matched against the allow-lists (`--allow-cn`, `--allow-dns-san`, `--allow-uri-san`). A client
//! that fails either is refused during the handshake, in both modes, so nothing it sends ever
//! reaches the backend. The verified identity is handed to the HTTP layer as [`ClientIdentity`].
//!
//! The verifier is built from the files' bytes ([`build_verifier`]) and served through
//! [`ClientTrust`], which the server configuration keeps for good and
//! [`super::client_trust_reload`] swaps the inner verifier of, so CAs and CRLs change without a
//! restart.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use tracing::{debug, warn};

use super::certs::CertFacts;
use super::{read_file, sha256_hex};
use crate::config::ClientAuth;
use crate::error::ConfigError;
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
pub(crate) struct ClientIdentity {
    /// `X-Client-Cert-Subject`: RFC 4514 subject.
    pub subject: String,
    /// `X-Client-Cert-SAN`: `DNS:a.example, URI:spiffe://..., IP:10.0.0.1`.
    pub san: String,
    /// `X-Client-Cert-Fingerprint`: SHA-256 of the leaf, lowercase hex.
    pub fingerprint: String,
}

impl ClientIdentity {
    /// From the leaf certificate a client presented (already verified by the handshake).
    pub(crate) fn from_leaf(der: &CertificateDer<'_>) -> Option<Self> {
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

/// The largest `--client-ca` or `--client-crl` file read: above the CRLs of large public CAs
/// (tens of MiB), and a bound on what a reload holds in memory if a flag names the wrong file.
pub(crate) const MAX_TRUST_FILE: u64 = 64 * 1024 * 1024;

/// The contents of `--client-ca` and `--client-crl`, as read; a verifier is built from these
/// bytes alone, so building is testable without files and a reload can tell from the hash
/// whether anything changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustFiles {
    pub ca: Vec<u8>,
    pub crl: Option<Vec<u8>>,
}

impl TrustFiles {
    /// Reads the files `auth` names (each at most [`MAX_TRUST_FILE`] bytes).
    pub(crate) fn read(auth: &ClientAuth) -> Result<Self, ConfigError> {
        Ok(Self {
            ca: read_file("--client-ca", &auth.ca, MAX_TRUST_FILE)?,
            crl: auth
                .crl
                .as_deref()
                .map(|path| read_file("--client-crl", path, MAX_TRUST_FILE))
                .transpose()?,
        })
    }

    /// SHA-256 over both contents: the same hash means the same verifier, nothing to rebuild.
    pub(crate) fn hash(&self) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&(self.ca.len() as u64).to_be_bytes());
        ctx.update(&self.ca);
        if let Some(crl) = &self.crl {
            ctx.update(b"crl");
            ctx.update(crl);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

/// Builds the client verifier (WebPKI against the CAs and CRLs in `files`, then `auth`'s
/// allow-lists) from the files' contents; errors name the flag and file `auth` gives.
pub(crate) fn build_verifier(
    auth: &ClientAuth,
    files: &TrustFiles,
) -> Result<Arc<dyn ClientCertVerifier>, ConfigError> {
    let roots = parse_roots("--client-ca", &auth.ca, &files.ca)?;
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), super::provider());
    if let (Some(path), Some(bytes)) = (&auth.crl, &files.crl) {
        builder = builder.with_crls(parse_crls(path, bytes)?);
    }
    if auth.mode == ClientAuthMode::Optional {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder.build().map_err(|e| match (&e, &auth.crl) {
        (VerifierBuilderError::InvalidCrl(_), Some(crl)) => ConfigError::BadPem {
            flag: "--client-crl",
            path: crl.clone(),
            reason: e.to_string(),
        },
        _ => ConfigError::BadPem {
            flag: "--client-ca",
            path: auth.ca.clone(),
            reason: e.to_string(),
        },
    })?;
    Ok(Arc::new(AllowingVerifier {
        inner,
        allow: auth.allow.clone(),
    }))
}

/// Reads a PEM bundle of CA certificates (`flag` names it in errors, at most
/// [`MAX_TRUST_FILE`] bytes): at least one, each usable as a trust anchor.
pub(crate) fn load_roots(flag: &'static str, path: &Path) -> Result<RootCertStore, ConfigError> {
    parse_roots(flag, path, &read_file(flag, path, MAX_TRUST_FILE)?)
}

fn parse_roots(
    flag: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<RootCertStore, ConfigError> {
    let bad = |reason: String| ConfigError::BadPem {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(bytes)
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

fn parse_crls(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, ConfigError> {
    let bad = |reason: String| ConfigError::BadPem {
        flag: "--client-crl",
        path: path.to_path_buf(),
        reason,
    };
    let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("malformed PEM: {e}")))?;
    if crls.is_empty() {
        return Err(bad("no PEM X509 CRL found".to_string()));
    }
    Ok(crls)
}

/// The client verifier the server configuration holds for its whole life. Each handshake asks
/// the verifier built from the `--client-ca`/`--client-crl` contents in force, which
/// [`ClientTrust::replace`] swaps: handshakes already done keep their verdict (established
/// connections are never touched), the next ones are judged by the new CAs and CRLs.
pub(crate) struct ClientTrust {
    auth: ClientAuth,
    current: RwLock<Arc<Generation>>,
    hints: HintSlots,
}

/// One verifier in force, with what it was built from.
struct Generation {
    verifier: Arc<dyn ClientCertVerifier>,
    hash: [u8; 32],
    /// The slot of [`HintSlots`] holding its CA names; `None`: send none.
    hints: Option<usize>,
}

impl ClientTrust {
    /// Reads and builds the trust `auth` names (at start: a bad file is a configuration error).
    pub(crate) fn load(auth: &ClientAuth) -> Result<Arc<Self>, ConfigError> {
        Self::from_files(auth, &TrustFiles::read(auth)?)
    }

    /// Builds the trust from file contents already read.
    pub(crate) fn from_files(
        auth: &ClientAuth,
        files: &TrustFiles,
    ) -> Result<Arc<Self>, ConfigError> {
        let verifier = build_verifier(auth, files)?;
        let hints = HintSlots::default();
        let generation = Generation {
            hints: hints.intern(verifier.root_hint_subjects()),
            verifier,
            hash: files.hash(),
        };
        Ok(Arc::new(Self {
            auth: auth.clone(),
            current: RwLock::new(Arc::new(generation)),
            hints,
        }))
    }

    /// What the trust is read from.
    pub(crate) fn auth(&self) -> &ClientAuth {
        &self.auth
    }

    /// The [`TrustFiles::hash`] of the contents the verifier in force was built from.
    pub(crate) fn hash(&self) -> [u8; 32] {
        self.generation().hash
    }

    /// Judges every handshake from now on with `verifier` (built from `files`). No session is
    /// resumable under the old trust: a mutual-TLS listener resumes none (see
    /// `tls::server_config`).
    pub(crate) fn replace(&self, verifier: Arc<dyn ClientCertVerifier>, files: &TrustFiles) {
        let hints = self.hints.intern(verifier.root_hint_subjects());
        if hints.is_none() && !verifier.root_hint_subjects().is_empty() {
            warn!(
                slots = HINT_SLOTS,
                "too many distinct client CA bundles loaded; no longer naming the CAs to clients"
            );
        }
        let generation = Arc::new(Generation {
            verifier,
            hash: files.hash(),
            hints,
        });
        match self.current.write() {
            Ok(mut guard) => *guard = generation,
            Err(poisoned) => *poisoned.into_inner() = generation,
        }
    }

    /// The verifier the server configuration is built with.
    pub(crate) fn tls(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        self.clone()
    }

    fn generation(&self) -> Arc<Generation> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl fmt::Debug for ClientTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTrust")
            .field("ca", &self.auth.ca)
            .field("crl", &self.auth.crl)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientTrust {
    fn offer_client_auth(&self) -> bool {
        self.generation().verifier.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.generation().verifier.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.generation()
            .hints
            .map_or(&[], |slot| self.hints.get(slot))
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.generation()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.generation()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.generation()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.generation().verifier.supported_verify_schemes()
    }
}

/// Distinct CA-name lists a [`ClientTrust`] can send over its life. A CA roll-over takes three
/// (old, old and new, new); past this many, the sidecar stops naming CAs rather than hold more.
const HINT_SLOTS: usize = 32;

/// The CA names sent in a certificate request (so a client holding several certificates picks
/// one from an accepted CA). rustls borrows them from the verifier for as long as the verifier
/// lives, so a list, once sent, is kept: each distinct list is stored once, in a slot that is
/// written once and never freed, and a reload back to an earlier bundle reuses its slot.
struct HintSlots {
    slots: [OnceLock<Vec<DistinguishedName>>; HINT_SLOTS],
}

impl Default for HintSlots {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl HintSlots {
    /// The slot holding `names`, filling the first free one if none does; `None` once every
    /// slot holds another list.
    fn intern(&self, names: &[DistinguishedName]) -> Option<usize> {
        let same = |stored: &[DistinguishedName]| {
            stored.len() == names.len()
                && stored
                    .iter()
                    .zip(names)
                    .all(|(a, b)| a.as_ref() == b.as_ref())
        };
        self.slots
            .iter()
            .position(|slot| same(slot.get_or_init(|| names.to_vec())))
    }

    fn get(&self, slot: usize) -> &[DistinguishedName] {
        self.slots
            .get(slot)
            .and_then(OnceLock::get)
            .map_or(&[], Vec::as_slice)
    }
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

    /// A CA and what a test needs of it: its PEM, client certificates and CRLs it signs.
    struct Ca {
        issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let key = rcgen::KeyPair::generate().expect("CA key");
            Ca {
                issuer: rcgen::CertifiedIssuer::self_signed(params, key).expect("CA"),
            }
        }

        fn pem(&self) -> String {
            self.issuer.pem()
        }

        fn client(&self, serial: u64) -> CertificateDer<'static> {
            let mut params = rcgen::CertificateParams::default();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "web");
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            params.serial_number = Some(rcgen::SerialNumber::from(serial));
            let key = rcgen::KeyPair::generate().expect("client key");
            params
                .signed_by(&key, &self.issuer)
                .expect("client certificate")
                .der()
                .clone()
        }

        fn crl(&self, serials: &[u64]) -> String {
            rcgen::CertificateRevocationListParams {
                this_update: rcgen::date_time_ymd(2024, 1, 1),
                next_update: rcgen::date_time_ymd(2099, 1, 1),
                crl_number: rcgen::SerialNumber::from(1u64),
                issuing_distribution_point: None,
                revoked_certs: serials
                    .iter()
                    .map(|s| rcgen::RevokedCertParams {
                        serial_number: rcgen::SerialNumber::from(*s),
                        revocation_time: rcgen::date_time_ymd(2024, 6, 1),
                        reason_code: None,
                        invalidity_date: None,
                    })
                    .collect(),
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&self.issuer)
            .expect("CRL")
            .pem()
            .expect("CRL PEM")
        }
    }

    fn auth(crl: bool) -> ClientAuth {
        ClientAuth {
            ca: "/certs/ca.pem".into(),
            crl: crl.then(|| "/certs/ca.crl".into()),
            mode: ClientAuthMode::Required,
            allow: Identities::default(),
        }
    }

    fn files(cas: &[&Ca]) -> TrustFiles {
        TrustFiles {
            ca: cas.iter().map(|c| c.pem()).collect::<String>().into_bytes(),
            crl: None,
        }
    }

    fn admits_cert(trust: &ClientTrust, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        trust
            .verify_client_cert(cert, &[], UnixTime::now())
            .map(|_| ())
    }

    fn build_error(auth: &ClientAuth, files: &TrustFiles) -> String {
        match build_verifier(auth, files) {
            Ok(_) => panic!("{files:?} must not build"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn broken_bundles_and_crls_name_the_flag_and_file() {
        let ca = Ca::new("clients");
        let with = |ca: &[u8], crl: Option<&[u8]>| TrustFiles {
            ca: ca.to_vec(),
            crl: crl.map(<[u8]>::to_vec),
        };
        for (bytes, reason) in [
            (&b""[..], "no PEM certificate found"),
            (b"garbage, not PEM", "no PEM certificate found"),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                "malformed PEM",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "not a usable CA",
            ),
        ] {
            let e = build_error(&auth(false), &with(bytes, None));
            assert!(
                e.starts_with("--client-ca file /certs/ca.pem: ") && e.contains(reason),
                "{e}"
            );
        }
        let pem = ca.pem();
        for (bytes, reason) in [
            (&b""[..], "no PEM X509 CRL found"),
            (b"garbage", "no PEM X509 CRL found"),
            (
                b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
                "",
            ),
        ] {
            let e = build_error(&auth(true), &with(pem.as_bytes(), Some(bytes)));
            assert!(
                e.starts_with("--client-crl file /certs/ca.crl: ") && e.contains(reason),
                "{e}"
            );
        }
        let crl = ca.crl(&[]);
        assert!(build_verifier(&auth(true), &with(pem.as_bytes(), Some(crl.as_bytes()))).is_ok());
    }

    #[test]
    fn read_names_the_flag_and_file_and_bounds_the_size() {
        let dir = std::env::temp_dir().join(format!("sidecar-mtls-read-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = ClientAuth {
            ca: dir.join("missing.pem"),
            ..auth(false)
        };
        let e = TrustFiles::read(&missing).expect_err("missing file");
        assert!(
            e.to_string()
                .starts_with("failed to read --client-ca file ")
                && e.to_string().ends_with("missing.pem"),
            "{e}"
        );
        let big = dir.join("big.pem");
        let file = std::fs::File::create(&big).expect("create");
        file.set_len(MAX_TRUST_FILE + 1).expect("grow");
        let e = TrustFiles::read(&ClientAuth {
            ca: big,
            ..auth(false)
        })
        .expect_err("too large");
        let e = crate::error::chain(&e);
        assert!(
            e.starts_with("failed to read --client-ca file ")
                && e.ends_with(": larger than 64 MiB"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fifo_as_ca_or_crl_is_refused_not_waited_on() {
        use shared::fs::testing::{mkfifo, within};
        let dir = std::env::temp_dir().join(format!("sidecar-mtls-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (fifo, ca) = (dir.join("fifo.pem"), dir.join("ca.pem"));
        mkfifo(&fifo);
        std::fs::write(&ca, Ca::new("clients").pem()).expect("write CA");
        for (flag, auth) in [
            (
                "--client-ca",
                ClientAuth {
                    ca: fifo.clone(),
                    ..auth(false)
                },
            ),
            (
                "--client-crl",
                ClientAuth {
                    ca: ca.clone(),
                    crl: Some(fifo.clone()),
                    ..auth(false)
                },
            ),
        ] {
            let e = within(flag, move || TrustFiles::read(&auth).map(|_| ()))
                .expect_err("a FIFO is refused");
            assert_eq!(
                crate::error::chain(&e),
                format!(
                    "failed to read {flag} file {}: is a FIFO, not a regular file",
                    fifo.display()
                )
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_hash_changes_with_either_file() {
        let one = TrustFiles {
            ca: b"a".to_vec(),
            crl: None,
        };
        let same = one.clone();
        let crl = TrustFiles {
            crl: Some(b"".to_vec()),
            ..one.clone()
        };
        let moved = TrustFiles {
            ca: b"".to_vec(),
            crl: Some(b"a".to_vec()),
        };
        assert_eq!(one.hash(), same.hash());
        assert_ne!(one.hash(), crl.hash());
        assert_ne!(crl.hash(), moved.hash());
        assert_ne!(
            one.hash(),
            TrustFiles {
                ca: b"b".to_vec(),
                ..one.clone()
            }
            .hash()
        );
    }

    #[test]
    fn a_ca_roll_over_swaps_what_new_handshakes_trust() {
        let (old, new) = (Ca::new("old CA"), Ca::new("new CA"));
        let (old_client, new_client) = (old.client(1), new.client(2));
        let auth = auth(false);
        let trust = ClientTrust::from_files(&auth, &files(&[&old])).expect("old bundle");
        assert!(admits_cert(&trust, &old_client).is_ok());
        assert!(admits_cert(&trust, &new_client).is_err());
        assert_eq!(trust.root_hint_subjects().len(), 1);

        for (bundle, old_ok, new_ok) in [
            (files(&[&old, &new]), true, true),
            (files(&[&new]), false, true),
        ] {
            assert_ne!(trust.hash(), bundle.hash(), "a new bundle is a change");
            let verifier = build_verifier(&auth, &bundle).expect("bundle");
            trust.replace(verifier, &bundle);
            assert_eq!(trust.hash(), bundle.hash());
            assert_eq!(admits_cert(&trust, &old_client).is_ok(), old_ok);
            assert_eq!(admits_cert(&trust, &new_client).is_ok(), new_ok);
            assert_eq!(
                trust.root_hint_subjects().len(),
                usize::from(old_ok) + usize::from(new_ok),
                "the CA names sent follow the bundle"
            );
        }
        assert_eq!(
            admits_cert(&trust, &old_client),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
    }

    #[test]
    fn a_new_crl_refuses_the_certificates_it_revokes() {
        let ca = Ca::new("clients");
        let (revoked, fine) = (ca.client(7), ca.client(8));
        let auth = auth(true);
        let with_crl = |serials: &[u64]| TrustFiles {
            crl: Some(ca.crl(serials).into_bytes()),
            ..files(&[&ca])
        };
        let trust = ClientTrust::from_files(&auth, &with_crl(&[])).expect("trust");
        assert!(admits_cert(&trust, &revoked).is_ok());
        let update = with_crl(&[7]);
        trust.replace(build_verifier(&auth, &update).expect("CRL"), &update);
        assert_eq!(
            admits_cert(&trust, &revoked),
            Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
        );
        assert!(admits_cert(&trust, &fine).is_ok());
    }

    #[test]
    fn with_crls_a_ca_without_one_is_refused() {
        // What docs/sidecar.md tells an operator rolling CAs over with --client-crl: each CA of the
        // bundle needs its CRL, or its certificates' revocation status is unknown, and refused.
        let (old, new) = (Ca::new("old CA"), Ca::new("new CA"));
        let auth = auth(true);
        let only_old = TrustFiles {
            crl: Some(old.crl(&[]).into_bytes()),
            ..files(&[&old, &new])
        };
        let trust = ClientTrust::from_files(&auth, &only_old).expect("trust");
        assert!(admits_cert(&trust, &old.client(1)).is_ok());
        assert_eq!(
            admits_cert(&trust, &new.client(2)),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownRevocationStatus
            ))
        );
        let both = TrustFiles {
            crl: Some(format!("{}{}", old.crl(&[]), new.crl(&[])).into_bytes()),
            ..files(&[&old, &new])
        };
        trust.replace(build_verifier(&auth, &both).expect("both CRLs"), &both);
        assert!(admits_cert(&trust, &new.client(2)).is_ok());
    }

    #[test]
    fn ca_names_are_kept_once_per_distinct_bundle_and_bounded() {
        let names = |n: u8| vec![DistinguishedName::from(vec![n])];
        let slots = HintSlots::default();
        assert_eq!(slots.intern(&names(0)), Some(0));
        assert_eq!(slots.intern(&names(1)), Some(1));
        assert_eq!(
            slots.intern(&names(0)),
            Some(0),
            "back to an earlier bundle"
        );
        assert_eq!(slots.get(1)[0].as_ref(), &[1]);
        for n in 2..HINT_SLOTS as u8 {
            assert_eq!(slots.intern(&names(n)), Some(usize::from(n)));
        }
        assert_eq!(slots.intern(&names(200)), None, "every slot taken");
        assert_eq!(slots.intern(&names(5)), Some(5), "known lists still found");
    }
}
