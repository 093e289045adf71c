//! Test PKI: a throwaway CA and leaf certificates for chosen names, written as PEM files in every
//! key format the sidecar must load (PKCS#8, PKCS#1 RSA, SEC1 EC), plus the broken inputs the
//! sidecar must refuse (mismatched pairs, garbage, a key where a certificate belongs).
//!
//! rcgen with ring cannot generate RSA keys, so RSA keys and the PKCS#1 / SEC1 re-encodings come
//! from the `openssl` CLI; rcgen still signs every certificate with the test CA.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::CertificateDer;

use crate::tmp::TempDir;

/// How a leaf's private key is encoded on disk (the PEM label tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// ECDSA P-256, `BEGIN PRIVATE KEY` (PKCS#8).
    EcPkcs8,
    /// ECDSA P-256, `BEGIN EC PRIVATE KEY` (SEC1).
    EcSec1,
    /// RSA 2048, `BEGIN RSA PRIVATE KEY` (PKCS#1).
    RsaPkcs1,
    /// RSA 2048, `BEGIN PRIVATE KEY` (PKCS#8).
    RsaPkcs8,
}

/// A certificate file and its key file, plus the certificate's DER to compare with what is served.
#[derive(Debug, Clone)]
pub struct CertPair {
    /// PEM certificate (leaf only).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// The leaf certificate as DER.
    pub cert_der: CertificateDer<'static>,
}

/// A test CA plus a temp directory its fixtures are written to; both live as long as the value.
pub struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    next: AtomicUsize,
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

impl Pki {
    /// A fresh CA (ECDSA P-256) in a fresh temp directory.
    pub fn new() -> Pki {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "tls-sidecar test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate CA key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("self-sign test CA");
        Pki {
            dir: TempDir::new("tls-sidecar-pki"),
            ca,
            next: AtomicUsize::new(0),
        }
    }

    /// The CA certificate, for a client's root store.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// The CA certificate as a PEM file, for `curl --cacert`.
    pub fn ca_pem_file(&self) -> PathBuf {
        self.write("ca.pem", self.ca.pem())
    }

    /// The directory fixtures are written to.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an arbitrary fixture file (garbage, truncated PEM...) and returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        self.dir.write(name, contents)
    }

    /// A leaf certificate for `names` (DNS names or IP addresses) signed by the CA, with its key
    /// written in `format`.
    pub fn leaf(&self, names: &[&str], format: KeyFormat) -> CertPair {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (key_pair, key_pem) = match format {
            KeyFormat::EcPkcs8 | KeyFormat::EcSec1 => {
                let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate EC key");
                let pkcs8 = key.serialize_pem();
                let pem = if format == KeyFormat::EcSec1 {
                    let p8 = self.write(&format!("leaf{n}-ec.p8.pem"), &pkcs8);
                    let sec1 = self.dir().join(format!("leaf{n}-ec.sec1.pem"));
                    openssl(&["ec", "-in", path_str(&p8), "-out", path_str(&sec1)]);
                    read(&sec1)
                } else {
                    pkcs8
                };
                (key, pem)
            }
            KeyFormat::RsaPkcs1 | KeyFormat::RsaPkcs8 => {
                let pkcs1 = self.dir().join(format!("leaf{n}-rsa.p1.pem"));
                let pkcs8 = self.dir().join(format!("leaf{n}-rsa.p8.pem"));
                openssl(&["genrsa", "-traditional", "-out", path_str(&pkcs1), "2048"]);
                openssl(&[
                    "pkcs8",
                    "-topk8",
                    "-nocrypt",
                    "-in",
                    path_str(&pkcs1),
                    "-out",
                    path_str(&pkcs8),
                ]);
                let pkcs8_pem = read(&pkcs8);
                let key = KeyPair::from_pem(&pkcs8_pem).expect("load RSA key into rcgen");
                let pem = if format == KeyFormat::RsaPkcs1 {
                    read(&pkcs1)
                } else {
                    pkcs8_pem
                };
                (key, pem)
            }
        };
        let expected_label = match format {
            KeyFormat::EcPkcs8 | KeyFormat::RsaPkcs8 => "-----BEGIN PRIVATE KEY-----",
            KeyFormat::EcSec1 => "-----BEGIN EC PRIVATE KEY-----",
            KeyFormat::RsaPkcs1 => "-----BEGIN RSA PRIVATE KEY-----",
        };
        assert!(
            key_pem.starts_with(expected_label),
            "fixture for {format:?} must start with {expected_label}, got {:?}",
            key_pem.lines().next()
        );

        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf names");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params
            .signed_by(&key_pair, &self.ca)
            .expect("sign leaf with test CA");

        CertPair {
            cert: self.write(&format!("leaf{n}.crt.pem"), cert.pem()),
            key: self.write(&format!("leaf{n}.key.pem"), key_pem),
            cert_der: cert.der().clone(),
        }
    }

    /// A certificate for `localhost` paired with the key of a different certificate.
    pub fn mismatched_pair(&self) -> CertPair {
        let served = self.leaf(&["localhost"], KeyFormat::EcPkcs8);
        let other = self.leaf(&["localhost"], KeyFormat::EcPkcs8);
        CertPair {
            key: other.key,
            ..served
        }
    }
}

/// Runs the `openssl` CLI, panicking with its stderr if it fails.
fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run the openssl CLI (is it installed?)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The DNS names of `cert`'s subjectAltName; panics if it has none (every certificate the
/// tests look at names its hosts there).
pub fn dns_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert).expect("parse certificate");
    let san = x509
        .subject_alternative_name()
        .expect("a valid subjectAltName")
        .expect("a subjectAltName");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}
