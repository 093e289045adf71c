//! A test CA that issues exactly the certificate a test needs: server or client, any mix of CN,
//! DNS, URI (SPIFFE) and IP SANs, a chosen validity window (an expired client certificate, a
//! server certificate with a known expiry) and serial number, plus CRLs revoking chosen serials.
//!
//! [`crate::certs::Pki`] covers key formats and broken files; this one covers identities, time
//! and revocation, which mutual TLS and the expiry metric are about, and service identities
//! ([`Spec::identity`]) as the spawner's identity CA issues them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What a certificate is for: its extended key usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// `serverAuth`: served by the sidecar.
    Server,
    /// `clientAuth`: presented by a client to a sidecar with `--client-ca`.
    Client,
    /// Both: a service identity, served to its callers and presented to the services it calls.
    Identity,
}

/// A calendar day, `(year, month, day)`, UTC midnight.
pub type Day = (i32, u8, u8);

/// The contents of one certificate to issue; build with [`Spec::server`] / [`Spec::client`].
#[derive(Debug, Clone)]
pub struct Spec {
    usage: Usage,
    cn: Option<String>,
    dns: Vec<String>,
    uris: Vec<String>,
    ips: Vec<IpAddr>,
    /// `(year, month, day)` of notBefore and notAfter; `None` keeps rcgen's wide default.
    validity: Option<(Day, Day)>,
}

impl Spec {
    /// A server certificate for DNS names (the first is also the CN).
    pub fn server(dns: &[&str]) -> Spec {
        Spec {
            usage: Usage::Server,
            cn: dns.first().map(|s| s.to_string()),
            dns: dns.iter().map(|s| s.to_string()).collect(),
            uris: Vec::new(),
            ips: Vec::new(),
            validity: None,
        }
    }

    /// A client certificate with subject `CN=<cn>` and no SANs yet.
    pub fn client(cn: &str) -> Spec {
        Spec {
            usage: Usage::Client,
            cn: Some(cn.to_string()),
            dns: Vec::new(),
            uris: Vec::new(),
            ips: Vec::new(),
            validity: None,
        }
    }

    /// A service identity as the spawner's CA issues it: URI SAN `spiffe://<domain>/<name>`, DNS
    /// SAN `<name>`, subject `CN=<name>`, both `serverAuth` and `clientAuth`.
    pub fn identity(domain: &str, name: &str) -> Spec {
        Spec {
            usage: Usage::Identity,
            cn: Some(name.to_string()),
            dns: vec![name.to_string()],
            uris: vec![format!("spiffe://{domain}/{name}")],
            ips: Vec::new(),
            validity: None,
        }
    }

    /// Adds a DNS SAN.
    pub fn dns(mut self, name: &str) -> Spec {
        self.dns.push(name.to_string());
        self
    }

    /// Adds a URI SAN (e.g. a SPIFFE ID).
    pub fn uri(mut self, uri: &str) -> Spec {
        self.uris.push(uri.to_string());
        self
    }

    /// Adds an IP SAN.
    pub fn ip(mut self, ip: &str) -> Spec {
        self.ips.push(ip.parse().expect("IP SAN"));
        self
    }

    /// Valid from `not_before` to `not_after` (UTC midnight of each `(year, month, day)`).
    pub fn valid(mut self, not_before: Day, not_after: Day) -> Spec {
        self.validity = Some((not_before, not_after));
        self
    }

    /// Expired since 2021.
    pub fn expired(self) -> Spec {
        self.valid((2020, 1, 1), (2021, 1, 1))
    }
}

/// One issued certificate, in memory; write it wherever the test needs it.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM certificate (leaf only).
    pub cert_pem: String,
    /// PEM PKCS#8 private key.
    pub key_pem: String,
    /// The certificate as DER.
    pub der: CertificateDer<'static>,
    /// Its serial number (unique per CA), for CRLs.
    pub serial: u64,
}

impl Issued {
    /// The key as DER, for a rustls client config.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("parse issued key")
    }

    /// Writes `<dir>/<stem>.crt` and `<dir>/<stem>.key`; returns (cert, key).
    pub fn write_to(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write(&cert, &self.cert_pem);
        write(&key, &self.key_pem);
        (cert, key)
    }
}

/// A CA (ECDSA P-256) named `name`, issuing [`Spec`]s and CRLs.
pub struct TestCa {
    ca: CertifiedIssuer<'static, KeyPair>,
    /// One key shared by the certificates this CA issues unless asked otherwise: a fresh ECDSA key
    /// per certificate adds nothing to these tests and thousands of them cost seconds.
    shared_key: KeyPair,
    next_serial: AtomicU64,
}

impl TestCa {
    /// A fresh self-signed CA with `CN=<name>`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate CA key");
        TestCa {
            ca: CertifiedIssuer::self_signed(params, key).expect("self-sign CA"),
            shared_key: KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate key"),
            next_serial: AtomicU64::new(1000),
        }
    }

    /// The CA certificate as DER (a client's root store).
    pub fn der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// The CA certificate as PEM (`--client-ca`, `curl --cacert`).
    pub fn pem(&self) -> String {
        self.ca.pem()
    }

    /// Issues `spec` with its own fresh key.
    pub fn issue(&self, spec: &Spec) -> Issued {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate key");
        self.issue_with(spec, &key)
    }

    /// Issues `spec` with the CA's shared leaf key (fast; for bulk fixtures).
    pub fn issue_shared_key(&self, spec: &Spec) -> Issued {
        self.issue_with(spec, &self.shared_key)
    }

    fn issue_with(&self, spec: &Spec, key: &KeyPair) -> Issued {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let mut params = CertificateParams::default();
        if let Some(cn) = &spec.cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        for d in &spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName(d.clone().try_into().expect("DNS SAN")));
        }
        for u in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(u.clone().try_into().expect("URI SAN")));
        }
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.extended_key_usages = match spec.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Identity => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(SerialNumber::from(serial));
        if let Some(((by, bm, bd), (ay, am, ad))) = spec.validity {
            params.not_before = date_time_ymd(by, bm, bd);
            params.not_after = date_time_ymd(ay, am, ad);
        }
        let cert = params.signed_by(key, &self.ca).expect("sign certificate");
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            serial,
        }
    }

    /// A PEM CRL from this CA revoking `serials` (valid from 2024 until 2099).
    pub fn crl_pem(&self, serials: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: date_time_ymd(2024, 6, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.ca)
            .expect("sign CRL")
            .pem()
            .expect("CRL PEM")
    }
}

/// Seconds since the Unix epoch of `(year, month, day)` at UTC midnight.
pub fn unix_time(year: i32, month: u8, day: u8) -> i64 {
    date_time_ymd(year, month, day).unix_timestamp()
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
