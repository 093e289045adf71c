//! The identity CA (`spawner run --identity-domain`): the authority that signs each
//! sidecar's short-lived certificate for its service identity, and the trust bundle clients and
//! servers check those certificates against.
//!
//! The CA is the spawner's own, made once in its store (`--identity-store`: `ca.pem` 0644 and
//! `ca-key.pem` 0600 in a 0700 directory) and reused after every restart, or one the operator
//! gives (`--identity-ca-cert`, `--identity-ca-key`). Either way the pair is checked when loaded
//! (the key matches the certificate, the certificate is a CA), so a broken CA stops `spawner run`
//! at start instead of handing out certificates nobody trusts.
//!
//! The trust bundle is the signing CA followed by the roots of `--identity-trust`: during a CA
//! roll-over the old and new roots are trusted side by side, then the old one is dropped from
//! that file.
//!
//! I/O stays at the edges ([`Authority::load_or_create`], [`Authority::from_files`],
//! [`ExtraRoots::read`], [`export`]); parsing, checking and signing are pure apart from the
//! randomness of keys and serial numbers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use shared::fs::{Links, RegularFile};
use shared::service_identity::{ServiceName, TrustDomain};
use x509_parser::certificate::X509Certificate;

use crate::config::CaSource;
use crate::identity::IdentityError;

/// The CA certificate in the store.
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA's private key in the store (0600).
pub const CA_KEY_FILE: &str = "ca-key.pem";

/// Lifetime of a CA the spawner makes: long enough that nobody rolls it over by surprise (its
/// leaves live a day), short enough that a forgotten key does not sign forever.
pub(crate) const CA_VALIDITY: Duration = Duration::from_secs(3652 * 86_400);

/// How far before "now" a certificate's notBefore is set, so a peer whose clock is a little
/// behind the spawner's does not see a certificate from the future.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Largest PEM file read (CA certificate, CA key, `--identity-trust`): a bundle of hundreds of
/// roots is far smaller; anything bigger is a mistake, not a trust store.
pub(crate) const MAX_PEM_BYTES: u64 = 1 << 20;

fn load_error(path: &Path, reason: impl Into<String>) -> IdentityError {
    IdentityError::Load {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn create_error(path: &Path) -> impl Fn(io::Error) -> IdentityError + '_ {
    move |e| IdentityError::Create {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A service's certificate and key, as the sidecar is given them.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Leaf {
    /// The leaf certificate alone (the CA is in the trust bundle).
    pub(crate) cert_pem: String,
    /// Its ECDSA P-256 key, PKCS#8.
    pub(crate) key_pem: String,
    /// The certificate's notAfter (whole seconds, as in the certificate).
    pub(crate) not_after: SystemTime,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// A CA that can sign: its certificate and its key, checked to belong together.
#[derive(Debug)]
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    /// The certificate's subject, DER: every leaf's issuer must be exactly this, or it would not
    /// chain (names are compared byte for byte).
    subject: Vec<u8>,
    not_after: SystemTime,
}

impl Authority {
    /// The spawner's own CA in `store`: loaded when `ca.pem` and `ca-key.pem` are there, made
    /// (ECDSA P-256, valid ten years, named after `domain`) when neither is. Never overwrites a
    /// key: one file without the other, a key others can read, or a pair that does not match is
    /// an error naming the file.
    pub fn load_or_create(store: &Path, domain: &TrustDomain) -> Result<Self, IdentityError> {
        let cert_path = store.join(CA_CERT_FILE);
        let key_path = store.join(CA_KEY_FILE);
        let now = SystemTime::now();
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => Self::from_files(&cert_path, &key_path),
            (false, false) => {
                create_store(store)?;
                let (cert_pem, key_pem) =
                    new_ca(domain, now).map_err(|e| IdentityError::Create {
                        path: cert_path.clone(),
                        reason: e.to_string(),
                    })?;
                // The key first: a crash in between leaves a key without a certificate, which
                // the next start refuses instead of making a second CA over it.
                write_new(&key_path, key_pem.as_bytes(), 0o600)?;
                write_new(&cert_path, cert_pem.as_bytes(), 0o644)?;
                Self::from_pem(
                    &cert_path,
                    cert_pem.as_bytes(),
                    &key_path,
                    key_pem.as_bytes(),
                    now,
                )
            }
            (true, false) => Err(load_error(
                &key_path,
                format!(
                    "missing beside {}: restore it, or move {} away to make a new CA",
                    cert_path.display(),
                    CA_CERT_FILE
                ),
            )),
            (false, true) => Err(load_error(
                &cert_path,
                format!(
                    "missing beside {}: restore it, or move {} away to make a new CA",
                    key_path.display(),
                    CA_KEY_FILE
                ),
            )),
        }
    }

    /// A CA from a certificate and key file (`--identity-ca-cert`, `--identity-ca-key`, or the
    /// store's): the certificate must be one CA certificate valid now, the key a PKCS#8 key
    /// rcgen can sign with (ECDSA P-256 or P-384, Ed25519, RSA) matching it, readable by its
    /// owner only.
    pub(crate) fn from_files(cert: &Path, key: &Path) -> Result<Self, IdentityError> {
        let cert_pem =
            shared::fs::read(cert, MAX_PEM_BYTES).map_err(|e| load_error(cert, e.to_string()))?;
        let key_pem = read_key(key)?;
        Self::from_pem(cert, &cert_pem, key, &key_pem, SystemTime::now())
    }

    /// The CA of `source`: [`Self::load_or_create`] or [`Self::from_files`].
    pub(crate) fn load(source: &CaSource, domain: &TrustDomain) -> Result<Self, IdentityError> {
        match source {
            CaSource::Store(dir) => Self::load_or_create(dir, domain),
            CaSource::Files { cert, key } => Self::from_files(cert, key),
        }
    }

    /// Checks a certificate and key (PEM) and makes the authority; the paths name the files in
    /// errors.
    pub(crate) fn from_pem(
        cert_path: &Path,
        cert_pem: &[u8],
        key_path: &Path,
        key_pem: &[u8],
        now: SystemTime,
    ) -> Result<Self, IdentityError> {
        let cert = one_certificate(cert_pem).map_err(|r| load_error(cert_path, r))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| load_error(cert_path, format!("not an X.509 certificate: {e}")))?;
        check_ca(&parsed).map_err(|r| load_error(cert_path, r))?;
        let not_before = time_of(parsed.validity().not_before.timestamp());
        let not_after = time_of(parsed.validity().not_after.timestamp());
        if now < not_before {
            return Err(load_error(
                cert_path,
                format!("not valid before {}", rfc3339(not_before)),
            ));
        }
        if now >= not_after {
            return Err(load_error(
                cert_path,
                format!(
                    "expired at {}: make or give a new CA (and trust it beside the old one)",
                    rfc3339(not_after)
                ),
            ));
        }
        let key = signing_key(key_pem).map_err(|r| load_error(key_path, r))?;
        if key.der_bytes() != parsed.public_key().subject_public_key.data.as_ref() {
            return Err(load_error(
                key_path,
                format!(
                    "does not match the certificate {} (a key of another CA?)",
                    cert_path.display()
                ),
            ));
        }
        let subject = parsed.subject().as_raw().to_vec();
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| load_error(cert_path, format!("cannot sign with it: {e}")))?;
        let authority = Authority {
            issuer,
            cert,
            subject,
            not_after,
        };
        // Sign one throw-away leaf now, so a CA whose name rcgen cannot reproduce exactly fails
        // here, at start, rather than at each sidecar.
        authority
            .probe(now)
            .map_err(|e| load_error(cert_path, e.to_string()))?;
        Ok(authority)
    }

    fn probe(&self, now: SystemTime) -> Result<Leaf, IdentityError> {
        let fail = |reason: String| IdentityError::Issue {
            id: "a probe".to_string(),
            reason,
        };
        let domain: TrustDomain = "probe.invalid".parse().map_err(fail)?;
        let name: ServiceName = "probe".parse().map_err(fail)?;
        self.issue(&domain, &name, CLOCK_SKEW, now)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem_of(&self.cert)
    }

    /// A certificate for service `name` of `domain`, valid from `now` (less [`CLOCK_SKEW`]) for
    /// `ttl` (cut at the CA's own notAfter), with a fresh ECDSA P-256 key: SANs
    /// `spiffe://<domain>/<name>` (URI; what servers admit) and `<name>` (DNS; what clients send
    /// as SNI and check), CN `<name>`, for both TLS server and client authentication.
    pub(crate) fn issue(
        &self,
        domain: &TrustDomain,
        name: &ServiceName,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Leaf, IdentityError> {
        let id = name.spiffe_id(domain);
        let fail = |reason: String| IdentityError::Issue {
            id: id.clone(),
            reason,
        };
        let not_after =
            whole_seconds(now.checked_add(ttl).unwrap_or(self.not_after)).min(self.not_after);
        if not_after <= now {
            return Err(fail(format!(
                "the CA expired at {}",
                rfc3339(self.not_after)
            )));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        let uri = id.clone().try_into().map_err(|e| fail(format!("{e}")))?;
        let dns = name
            .as_str()
            .to_string()
            .try_into()
            .map_err(|e| fail(format!("{e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri), SanType::DnsName(dns)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().map_err(fail)?);
        params.not_before =
            asn1_time(now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH)).map_err(fail)?;
        params.not_after = asn1_time(not_after).map_err(fail)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der())
            .map_err(|e| fail(format!("cannot read back the certificate: {e}")))?;
        if parsed.issuer().as_raw() != self.subject.as_slice() {
            return Err(fail(
                "the CA's subject name cannot be reproduced exactly, so its leaves would not chain to it"
                    .to_string(),
            ));
        }
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// The trust bundle (PEM): this CA, then the `extra` roots that are not already in it.
    pub(crate) fn trust_bundle(&self, extra: Option<&ExtraRoots>) -> String {
        bundle(&self.cert, extra)
    }
}

/// Roots trusted beside the signing CA (`--identity-trust`): during a CA roll-over, the CA
/// being replaced (or the one coming), so certificates of both verify until every sidecar has a
/// new one. Each is a CA certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExtraRoots {
    certs: Vec<CertificateDer<'static>>,
}

impl ExtraRoots {
    /// Reads and checks the file (at most [`MAX_PEM_BYTES`]).
    pub(crate) fn read(path: &Path) -> Result<Self, IdentityError> {
        let pem = shared::fs::read(path, MAX_PEM_BYTES).map_err(|e| IdentityError::Trust {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(path, &pem)
    }

    /// Checks PEM text: certificates only, each a CA. An empty file is no extra roots (what is
    /// left once an old root has been removed); text without any PEM block is refused. `path`
    /// names the file in errors.
    pub(crate) fn parse(path: &Path, pem: &[u8]) -> Result<Self, IdentityError> {
        let fail = |reason: String| IdentityError::Trust {
            path: path.to_path_buf(),
            reason,
        };
        if pem.len() as u64 > MAX_PEM_BYTES {
            return Err(fail(format!("larger than {MAX_PEM_BYTES} bytes")));
        }
        let blocks = pem::parse_many(pem).map_err(|e| fail(format!("not PEM: {e}")))?;
        if blocks.is_empty() && !pem.iter().all(u8::is_ascii_whitespace) {
            return Err(fail("no PEM certificate found".to_string()));
        }
        let mut certs = Vec::with_capacity(blocks.len());
        for (i, block) in blocks.iter().enumerate() {
            let n = i + 1;
            if block.tag() != "CERTIFICATE" {
                return Err(fail(format!(
                    "PEM block {n} is a {}, not a CERTIFICATE",
                    block.tag()
                )));
            }
            let (_, cert) = x509_parser::parse_x509_certificate(block.contents())
                .map_err(|e| fail(format!("certificate {n} is not X.509: {e}")))?;
            check_ca(&cert)
                .map_err(|r| fail(format!("certificate {n} ({}) {r}", cert.subject())))?;
            certs.push(CertificateDer::from(block.contents().to_vec()));
        }
        Ok(ExtraRoots { certs })
    }
}

/// `spawner ca export`: the trust bundle of the CA of `source` and the roots of `trust`, read
/// and never created; needs only the CA's certificate, not its key.
pub(crate) fn export(source: &CaSource, trust: Option<&Path>) -> Result<String, IdentityError> {
    let path = match source {
        CaSource::Store(dir) => {
            let path = dir.join(CA_CERT_FILE);
            if !exists(&path)? {
                return Err(IdentityError::NoCa { store: dir.clone() });
            }
            path
        }
        CaSource::Files { cert, .. } => cert.clone(),
    };
    let pem =
        shared::fs::read(&path, MAX_PEM_BYTES).map_err(|e| load_error(&path, e.to_string()))?;
    let cert = one_certificate(&pem).map_err(|r| load_error(&path, r))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| load_error(&path, format!("not an X.509 certificate: {e}")))?;
    check_ca(&parsed).map_err(|r| load_error(&path, r))?;
    let extra = trust.map(ExtraRoots::read).transpose()?;
    Ok(bundle(&cert, extra.as_ref()))
}

/// `ca` then the extra roots, each once, PEM.
fn bundle(ca: &CertificateDer<'_>, extra: Option<&ExtraRoots>) -> String {
    let mut seen: Vec<&[u8]> = vec![ca.as_ref()];
    let mut out = pem_of(ca);
    for cert in extra.map(|e| e.certs.as_slice()).unwrap_or_default() {
        if !seen.contains(&cert.as_ref()) {
            seen.push(cert.as_ref());
            out.push_str(&pem_of(cert));
        }
    }
    out
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.as_ref()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// Why `cert` cannot be a CA, if it cannot: basicConstraints CA:true, and keyCertSign when it
/// has a keyUsage at all.
fn check_ca(cert: &X509Certificate<'_>) -> Result<(), String> {
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| format!("has a broken basicConstraints: {e}"))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err("is not a CA certificate (no basicConstraints CA:true)".to_string());
    }
    let usage = cert
        .key_usage()
        .map_err(|e| format!("has a broken keyUsage: {e}"))?;
    if usage.is_some_and(|u| !u.value.key_cert_sign()) {
        return Err("is a CA certificate whose keyUsage lacks keyCertSign".to_string());
    }
    Ok(())
}

/// The one certificate of a CA certificate file.
fn one_certificate(pem: &[u8]) -> Result<CertificateDer<'static>, String> {
    let blocks = pem::parse_many(pem).map_err(|e| format!("not PEM: {e}"))?;
    let mut certs = blocks.iter().filter(|b| b.tag() == "CERTIFICATE");
    match (certs.next(), certs.next()) {
        (None, _) => Err("no PEM certificate found".to_string()),
        (Some(_), Some(_)) => Err(
            "more than one certificate: give the signing CA alone (more roots go in --identity-trust)"
                .to_string(),
        ),
        (Some(cert), None) => Ok(CertificateDer::from(cert.contents().to_vec())),
    }
}

/// The CA's signing key from PEM: one PKCS#8 key (what the `ring` backend reads).
fn signing_key(pem: &[u8]) -> Result<KeyPair, String> {
    let blocks = pem::parse_many(pem).map_err(|e| format!("not PEM: {e}"))?;
    let [block] = blocks.as_slice() else {
        return Err(format!(
            "expected one PEM private key, found {} PEM blocks",
            blocks.len()
        ));
    };
    match block.tag() {
        "PRIVATE KEY" => {}
        "EC PRIVATE KEY" | "RSA PRIVATE KEY" => {
            return Err(format!(
                "a {} (SEC1/PKCS#1) is not supported: convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`",
                block.tag()
            ))
        }
        "ENCRYPTED PRIVATE KEY" => {
            return Err("an encrypted key is not supported: give it unencrypted (PKCS#8)".into())
        }
        other => return Err(format!("a {other}, not a PEM private key")),
    }
    KeyPair::try_from(block.contents()).map_err(|e| {
        format!("not a key this CA can sign with (ECDSA P-256 or P-384, Ed25519, RSA): {e}")
    })
}

/// A CA made for `domain` at `now`: certificate and key, PEM.
fn new_ca(domain: &TrustDomain, now: SystemTime) -> Result<(String, String), String> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("tls-sidecar identity CA {domain}"),
    );
    // pathlen 0: this CA signs leaves, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial()?);
    params.not_before = asn1_time(now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH))?;
    params.not_after = asn1_time(now + CA_VALIDITY)?;
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// 16 random bytes, positive: unique without coordination, as CAs have done since serials
/// became unpredictable (CA/B Forum: at least 64 random bits).
fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "no randomness for a serial number".to_string())?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn whole_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

fn asn1_time(t: SystemTime) -> Result<time::OffsetDateTime, String> {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| "a time outside what a certificate can hold".to_string())
}

fn time_of(unix: i64) -> SystemTime {
    match u64::try_from(unix) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH,
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(load_error(path, e.to_string())),
    }
}

/// A private key file, refused when its mode lets anyone but its owner read or change it (as
/// ssh refuses such keys): whoever reads this key can mint any service's identity. The mode is
/// that of the file then read, not of whatever the path names a moment later.
fn read_key(path: &Path) -> Result<Vec<u8>, IdentityError> {
    let fail = |e: shared::fs::ReadError| load_error(path, e.to_string());
    let file = RegularFile::open(path, Links::Follow).map_err(fail)?;
    let mode = file.metadata().permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(load_error(
            path,
            format!(
                "mode {mode:04o} lets group or others read or change the CA's key: chmod 600 {}",
                path.display()
            ),
        ));
    }
    file.read(MAX_PEM_BYTES).map_err(fail)
}

/// The store directory, made 0700 when missing (an existing one is left as it is).
fn create_store(store: &Path) -> Result<(), IdentityError> {
    if store.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(store)
        .and_then(|()| fs::set_permissions(store, fs::Permissions::from_mode(0o700)))
        .map_err(create_error(store))
}

/// Writes a file that must not exist yet, whole: a temporary file beside it (created with
/// `mode`, so a key is never readable by others, not even briefly), synced, then linked into
/// place. A link, not a rename: a rename would replace a file another spawner made meanwhile;
/// a link fails instead.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), IdentityError> {
    let fail = create_error(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut suffix = [0u8; 8];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut suffix)
        .map_err(|_| fail(io::Error::other("no randomness for a temporary name")))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{suffix}"));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have taken bits `mode` asked for.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    written.map_err(&fail)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::Arc;

    impl Authority {
        /// The CA certificate's notAfter: no leaf outlives it.
        fn not_after(&self) -> SystemTime {
            self.not_after
        }
    }

    impl ExtraRoots {
        fn is_empty(&self) -> bool {
            self.certs.is_empty()
        }
    }

    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::{ServerName, UnixTime};

    fn temp_dir(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!(
            "identity-ca-{tag}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ))
    }

    fn domain() -> TrustDomain {
        "example.internal".parse().unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn der_of(pem: &str) -> CertificateDer<'static> {
        one_certificate(pem.as_bytes()).unwrap()
    }

    fn unix(t: SystemTime) -> UnixTime {
        UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap())
    }

    /// Verifies `leaf` as rustls would, for server `name` and as a client certificate.
    fn verify(
        ca: &CertificateDer<'static>,
        leaf: &str,
        name: &str,
        at: SystemTime,
    ) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let leaf = der_of(leaf);
        let server = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .unwrap();
        server.verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            unix(at),
        )?;
        let client = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .unwrap();
        client.verify_client_cert(&leaf, &[], unix(at))?;
        Ok(())
    }

    #[test]
    fn the_store_is_made_once_with_its_modes_and_reused() {
        let dir = temp_dir("store");
        let store = dir.join("identity");
        let a = Authority::load_or_create(&store, &domain()).unwrap();
        assert_eq!(mode(&store), 0o700);
        assert_eq!(mode(&store.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&store.join(CA_CERT_FILE)), 0o644);
        let names: Vec<_> = fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");

        let pem = fs::read_to_string(store.join(CA_CERT_FILE)).unwrap();
        assert_eq!(a.cert_pem(), pem);
        let der = der_of(&pem);
        let (_, ca) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert_eq!(
            ca.subject().to_string(),
            "CN=tls-sidecar identity CA example.internal"
        );
        let bc = ca.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = ca.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert_eq!(
            ca.public_key()
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok()),
            Some(x509_parser::oid_registry::OID_EC_P256)
        );
        let life = ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp();
        assert_eq!(life, (CA_VALIDITY + CLOCK_SKEW).as_secs() as i64);

        // A restart loads the same CA; its leaves verify against the first one's certificate.
        let b = Authority::load_or_create(&store, &domain()).unwrap();
        assert_eq!(b.cert_pem(), pem);
        assert_eq!(
            fs::read_to_string(store.join(CA_CERT_FILE)).unwrap(),
            pem,
            "not rewritten"
        );
        let now = SystemTime::now();
        let name: ServiceName = "web".parse().unwrap();
        let leaf = b
            .issue(&domain(), &name, Duration::from_secs(3600), now)
            .unwrap();
        verify(&der, &leaf.cert_pem, "web", now).unwrap();
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_broken_store_is_refused_and_left_alone() {
        let dir = temp_dir("broken");
        Authority::load_or_create(&dir, &domain()).unwrap();
        let cert = dir.join(CA_CERT_FILE);
        let key = dir.join(CA_KEY_FILE);
        let key_pem = fs::read(&key).unwrap();
        let refused = |what: &str| {
            let e = Authority::load_or_create(&dir, &domain()).expect_err(what);
            e.to_string()
        };

        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = refused("world-readable key");
        assert!(e.contains(&key.display().to_string()), "{e}");
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(refused("group-readable key").contains("mode 0640"));
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();

        // Another CA's certificate beside this key.
        let other = temp_dir("other");
        Authority::load_or_create(&other, &domain()).unwrap();
        let cert_pem = fs::read(&cert).unwrap();
        fs::write(&cert, fs::read(other.join(CA_CERT_FILE)).unwrap()).unwrap();
        let e = refused("mismatched pair");
        assert!(
            e.contains(&key.display().to_string()) && e.contains("does not match"),
            "{e}"
        );
        fs::write(&cert, &cert_pem).unwrap();

        // Only one of the two: never a new CA over the survivor.
        fs::remove_file(&cert).unwrap();
        let e = refused("key without certificate");
        assert!(
            e.contains(&cert.display().to_string()) && e.contains("missing"),
            "{e}"
        );
        assert_eq!(fs::read(&key).unwrap(), key_pem, "the key is untouched");
        assert!(!cert.exists());
        fs::write(&cert, &cert_pem).unwrap();
        fs::remove_file(&key).unwrap();
        let e = refused("certificate without key");
        assert!(
            e.contains(&key.display().to_string()) && e.contains("missing"),
            "{e}"
        );
        assert!(!key.exists());
        let _ = fs::remove_dir_all(dir);
        let _ = fs::remove_dir_all(other);
    }

    #[test]
    fn operator_files_must_be_a_matching_ca_pair() {
        let dir = temp_dir("files");
        fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("ca.crt");
        let key = dir.join("ca.key");
        let write_key = |pem: &str| {
            let _ = fs::remove_file(&key);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key)
                .unwrap()
                .write_all(pem.as_bytes())
                .unwrap();
        };

        // A P-384 CA an operator made: accepted, and its leaves verify.
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(DnType::CommonName, "Example identity root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = params.self_signed(&ca_key).unwrap();
        fs::write(&cert, ca_cert.pem()).unwrap();
        write_key(&ca_key.serialize_pem());
        let a = Authority::from_files(&cert, &key).unwrap();
        let now = SystemTime::now();
        let leaf = a
            .issue(
                &domain(),
                &"api".parse().unwrap(),
                Duration::from_secs(60),
                now,
            )
            .unwrap();
        verify(ca_cert.der(), &leaf.cert_pem, "api", now).unwrap();

        // A certificate that is not a CA.
        let leaf_key = KeyPair::generate().unwrap();
        let not_ca = CertificateParams::new(vec!["ca.example".to_string()])
            .unwrap()
            .self_signed(&leaf_key)
            .unwrap();
        fs::write(&cert, not_ca.pem()).unwrap();
        write_key(&leaf_key.serialize_pem());
        let e = Authority::from_files(&cert, &key).unwrap_err().to_string();
        assert!(
            e.contains(&cert.display().to_string()) && e.contains("not a CA"),
            "{e}"
        );

        // A key of the wrong kind, and no key at all.
        fs::write(&cert, ca_cert.pem()).unwrap();
        write_key("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n");
        let e = Authority::from_files(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("PKCS#8"), "{e}");
        write_key(&ca_cert.pem());
        let e = Authority::from_files(&cert, &key).unwrap_err().to_string();
        assert!(
            e.contains(&key.display().to_string()) && e.contains("CERTIFICATE"),
            "{e}"
        );
        // Two certificates in the CA file.
        write_key(&ca_key.serialize_pem());
        fs::write(&cert, format!("{}{}", ca_cert.pem(), not_ca.pem())).unwrap();
        let e = Authority::from_files(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("more than one certificate"), "{e}");
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn an_expired_ca_is_refused() {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&ca_key).unwrap();
        let e = Authority::from_pem(
            Path::new("/ca.pem"),
            cert.pem().as_bytes(),
            Path::new("/ca-key.pem"),
            ca_key.serialize_pem().as_bytes(),
            SystemTime::now(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("/ca.pem") && e.contains("expired at 2021-01-01"),
            "{e}"
        );
    }

    #[test]
    fn leaves_carry_the_identity_and_verify_against_their_ca_only() {
        let domain = domain();
        let now = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let (cert_pem, key_pem) = new_ca(&domain, now - Duration::from_secs(3600)).unwrap();
        let a = Authority::from_pem(
            Path::new("ca.pem"),
            cert_pem.as_bytes(),
            Path::new("ca-key.pem"),
            key_pem.as_bytes(),
            now,
        )
        .unwrap();
        let name: ServiceName = "payments".parse().unwrap();
        let ttl = Duration::from_secs(24 * 3600);
        let leaf = a.issue(&domain, &name, ttl, now).unwrap();
        assert_eq!(leaf.not_after, now + ttl);
        let ca = der_of(&cert_pem);
        verify(&ca, &leaf.cert_pem, "payments", now).unwrap();
        verify(
            &ca,
            &leaf.cert_pem,
            "payments",
            now + ttl - Duration::from_secs(1),
        )
        .unwrap();
        assert!(verify(
            &ca,
            &leaf.cert_pem,
            "payments",
            now + ttl + Duration::from_secs(1)
        )
        .is_err());
        assert!(
            verify(&ca, &leaf.cert_pem, "web", now).is_err(),
            "another name"
        );

        let der = der_of(&leaf.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        use x509_parser::extensions::GeneralName;
        let sans = &cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names;
        let uris: Vec<_> = sans
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(uris, ["spiffe://example.internal/payments"]);
        let dns: Vec<_> = sans
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(*d),
                _ => None,
            })
            .collect();
        assert_eq!(dns, ["payments"]);
        assert_eq!(sans.len(), 2);
        assert_eq!(cert.subject().to_string(), "CN=payments");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.any);
        let ku = cert.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign());
        assert!(!cert.is_ca());
        let bc = cert.basic_constraints().unwrap().unwrap().value;
        assert!(!bc.ca);
        assert_eq!(
            cert.validity().not_before.timestamp(),
            1_900_000_000 - CLOCK_SKEW.as_secs() as i64
        );
        assert_eq!(
            cert.validity().not_after.timestamp(),
            1_900_000_000 + ttl.as_secs() as i64
        );
        let key = KeyPair::from_pem(&leaf.key_pem).unwrap();
        assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            key.der_bytes(),
            cert.public_key().subject_public_key.data.as_ref()
        );

        // Each leaf has a key and serial of its own.
        let again = a.issue(&domain, &name, ttl, now).unwrap();
        assert_ne!(again.key_pem, leaf.key_pem);
        let der2 = der_of(&again.cert_pem);
        let (_, cert2) = x509_parser::parse_x509_certificate(&der2).unwrap();
        assert_ne!(cert.raw_serial(), cert2.raw_serial());

        // Another authority's leaf does not verify against this CA.
        let (other_pem, other_key) = new_ca(&domain, now - Duration::from_secs(3600)).unwrap();
        let b = Authority::from_pem(
            Path::new("b.pem"),
            other_pem.as_bytes(),
            Path::new("b-key.pem"),
            other_key.as_bytes(),
            now,
        )
        .unwrap();
        let foreign = b.issue(&domain, &name, ttl, now).unwrap();
        assert!(verify(&ca, &foreign.cert_pem, "payments", now).is_err());
    }

    #[test]
    fn leaves_end_with_their_ca() {
        let domain = domain();
        let start = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let (cert_pem, key_pem) = new_ca(&domain, start).unwrap();
        let a = Authority::from_pem(
            Path::new("ca.pem"),
            cert_pem.as_bytes(),
            Path::new("ca-key.pem"),
            key_pem.as_bytes(),
            start,
        )
        .unwrap();
        let name: ServiceName = "web".parse().unwrap();
        let late = a.not_after() - Duration::from_secs(3600);
        let leaf = a
            .issue(&domain, &name, Duration::from_secs(86_400), late)
            .unwrap();
        assert_eq!(leaf.not_after, a.not_after());
        let e = a
            .issue(&domain, &name, Duration::from_secs(60), a.not_after())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("spiffe://example.internal/web") && e.contains("expired"),
            "{e}"
        );
    }

    #[test]
    fn the_bundle_is_the_ca_then_new_extra_roots() {
        let now = SystemTime::now();
        let (ca_pem, ca_key) = new_ca(&domain(), now).unwrap();
        let a = Authority::from_pem(
            Path::new("ca.pem"),
            ca_pem.as_bytes(),
            Path::new("ca-key.pem"),
            ca_key.as_bytes(),
            now,
        )
        .unwrap();
        assert_eq!(a.trust_bundle(None), ca_pem);
        let (old_pem, _) = new_ca(&domain(), now).unwrap();
        let trust = Path::new("/etc/trust.pem");
        // The old root, the signing CA again and the old root again: each once, the CA first.
        let extra =
            ExtraRoots::parse(trust, format!("{old_pem}\n{ca_pem}{old_pem}").as_bytes()).unwrap();
        let bundle = a.trust_bundle(Some(&extra));
        assert_eq!(bundle, format!("{ca_pem}{old_pem}"));
        assert!(ExtraRoots::parse(trust, b"").unwrap().is_empty());
        assert!(ExtraRoots::parse(trust, b"\n  \n").unwrap().is_empty());
        assert_eq!(a.trust_bundle(Some(&ExtraRoots::default())), ca_pem);

        let leaf_key = KeyPair::generate().unwrap();
        let not_ca = CertificateParams::new(vec!["x.example".to_string()])
            .unwrap()
            .self_signed(&leaf_key)
            .unwrap()
            .pem();
        for (bad, why) in [
            (format!("{old_pem}{not_ca}"), "certificate 2"),
            ("garbage".to_string(), "no PEM certificate"),
            (leaf_key.serialize_pem(), "PRIVATE KEY, not a CERTIFICATE"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string(),
                "not X.509",
            ),
            ("x".repeat(MAX_PEM_BYTES as usize + 1), "larger than"),
        ] {
            let e = ExtraRoots::parse(trust, bad.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--identity-trust /etc/trust.pem") && e.contains(why),
                "{why}: {e}"
            );
        }
        let e = ExtraRoots::read(Path::new("/nonexistent/trust.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/trust.pem"), "{e}");
    }

    #[test]
    fn export_reads_and_never_creates() {
        let dir = temp_dir("export");
        let e = export(&CaSource::Store(dir.clone()), None).unwrap_err();
        assert!(matches!(e, IdentityError::NoCa { .. }), "{e}");
        assert!(e.to_string().contains("--identity-domain"), "{e}");
        assert!(!dir.exists(), "nothing made");
        let a = Authority::load_or_create(&dir, &domain()).unwrap();
        assert_eq!(
            export(&CaSource::Store(dir.clone()), None).unwrap(),
            a.cert_pem()
        );
        let files = CaSource::Files {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join("no-key-needed"),
        };
        assert_eq!(export(&files, None).unwrap(), a.cert_pem());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_fifo_as_any_ca_file_is_refused_not_waited_on() {
        use shared::fs::testing::{mkfifo, within};
        let dir = temp_dir("fifo");
        let store = dir.join("identity");
        Authority::load_or_create(&store, &domain()).unwrap();
        let (cert, key) = (store.join(CA_CERT_FILE), store.join(CA_KEY_FILE));
        let fifo = dir.join("fifo.pem");
        mkfifo(&fifo);
        let is_fifo = |what: &str, e: IdentityError, prefix: &str| {
            assert_eq!(
                e.to_string(),
                format!("{prefix} {}: is a FIFO, not a regular file", fifo.display()),
                "{what}"
            );
        };
        let load = "cannot load identity CA";
        let (c, f) = (cert.clone(), fifo.clone());
        let e = within("--identity-ca-cert", move || {
            Authority::from_files(&f, &key)
        });
        is_fifo("--identity-ca-cert", e.unwrap_err(), load);
        let f = fifo.clone();
        let e = within("--identity-ca-key", move || Authority::from_files(&c, &f));
        is_fifo("--identity-ca-key", e.unwrap_err(), load);
        let f = fifo.clone();
        let e = within("--identity-trust", move || ExtraRoots::read(&f));
        is_fifo(
            "--identity-trust",
            e.unwrap_err(),
            "cannot use --identity-trust",
        );
        let files = CaSource::Files {
            cert: fifo.clone(),
            key: fifo.clone(),
        };
        let e = within("ca export", move || export(&files, None));
        is_fifo("ca export", e.unwrap_err(), load);

        // The store's own key replaced by a FIFO.
        fs::remove_file(store.join(CA_KEY_FILE)).unwrap();
        fs::rename(&fifo, store.join(CA_KEY_FILE)).unwrap();
        let s = store.clone();
        let e = within("the store", move || {
            Authority::load_or_create(&s, &domain())
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!(
                "{load} {}: is a FIFO, not a regular file",
                store.join(CA_KEY_FILE).display()
            )
        );
        let _ = fs::remove_dir_all(dir);
    }
}
