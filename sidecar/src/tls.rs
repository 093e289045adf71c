//! TLS: the certificates the sidecar serves, the client certificates it accepts, and the one
//! `rustls::ServerConfig` every handshake of the TLS listener uses.
//!
//! Certificates are served through [`CertStore`], a resolver holding the current
//! [`CertSet`]: each handshake picks a certificate by SNI, and a reload ([`reload`]) swaps the
//! whole set atomically without touching the accept loop, so a renewal never drops a connection.
//! Client certificates are verified by [`client_auth`] against CAs that [`client_trust_reload`]
//! keeps current; the trust bundle the egress relays verify servers with ([`identity_trust`]) is
//! reloaded with the certificates. ACME TLS-ALPN-01 challenges get a configuration of their own
//! ([`acme_alpn`]). The crypto provider is named once, here ([`provider`]: ring), so the build
//! can never end up with two providers.
//!
//! This file holds what the modules share (the provider, reading and parsing a certificate/key
//! pair, the digests that tell contents apart, the [`CertStore`]) and builds the server
//! configuration ([`server_config`]).

pub(crate) mod acme_alpn;
pub(crate) mod certs;
pub(crate) mod client_auth;
pub(crate) mod client_trust_reload;
pub(crate) mod identity_trust;
pub(crate) mod reload;
mod reload_triggers;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Flags, PairPaths};
use crate::error::ConfigError;
use certs::{CertFacts, CertSet, Entry, MAX_PAIR_FILE};
use shared::dns::SanName;
use shared::mode::Mode;
use shared::proto::{AlpnList, TlsGroup, TlsGroups};

/// The one crypto provider of the workspace (aws-lc-rs), with its default key-exchange groups:
/// X25519MLKEM768 first, then X25519, secp256r1, secp384r1.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// [`provider`] agreeing only `groups` (`--tls-groups`), in that order of preference; the
/// default groups when the list is empty.
pub(crate) fn provider_for(groups: &TlsGroups) -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::kx_group;
    if groups.is_empty() {
        return provider();
    }
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = groups
        .0
        .iter()
        .map(|g| match g {
            TlsGroup::X25519MlKem768 => kx_group::X25519MLKEM768,
            TlsGroup::X25519 => kx_group::X25519,
            TlsGroup::Secp256r1 => kx_group::SECP256R1,
            TlsGroup::Secp384r1 => kx_group::SECP384R1,
        })
        .collect();
    Arc::new(p)
}

/// The group a handshake agreed, for `sidecar_tls_handshakes_total{group}`; `None` when none
/// was (a resumed TLS 1.2 session) or it is not one of ours.
pub(crate) fn agreed_group(
    group: Option<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> Option<TlsGroup> {
    let code = u16::from(group?.name());
    TlsGroup::ALL.into_iter().find(|g| g.code() == code)
}

/// SHA-256 over a pair's file contents, to notice changes without parsing.
pub(crate) fn pair_hash(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(&(cert.len() as u64).to_be_bytes());
    ctx.update(cert);
    ctx.update(key);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Reads both files of a pair.
pub(crate) fn read_pair(
    paths: &PairPaths,
    flags: Flags,
) -> Result<(Vec<u8>, Vec<u8>), ConfigError> {
    let cert = read_file(flags.cert, &paths.cert, MAX_PAIR_FILE)?;
    let key = if paths.key == paths.cert {
        cert.clone()
    } else {
        read_file(flags.key, &paths.key, MAX_PAIR_FILE)?
    };
    Ok((cert, key))
}

/// Builds an entry from a pair's file contents.
pub(crate) fn parse_pair(
    paths: &PairPaths,
    flags: Flags,
    cert_bytes: &[u8],
    key_bytes: &[u8],
) -> Result<Entry, ConfigError> {
    let chain = parse_chain(flags.cert, &paths.cert, cert_bytes)?;
    let key = parse_key(flags.key, &paths.key, key_bytes)?;
    let signing_key =
        provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| ConfigError::UnusableKey {
                flag: flags.key,
                path: paths.key.clone(),
                reason: e.to_string(),
            })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(ConfigError::KeyMismatch {
                cert_flag: flags.cert,
                cert: paths.cert.clone(),
                key_flag: flags.key,
                key: paths.key.clone(),
            })
        }
        Err(e) => {
            return Err(ConfigError::BadPem {
                flag: flags.cert,
                path: paths.cert.clone(),
                reason: e.to_string(),
            })
        }
    }
    let facts =
        CertFacts::from_der(certified.cert[0].as_ref()).map_err(|reason| ConfigError::BadPem {
            flag: flags.cert,
            path: paths.cert.clone(),
            reason,
        })?;
    Ok(Entry {
        name: paths.name.clone(),
        fingerprint: sha256_fingerprint(certified.cert[0].as_ref()),
        key: Arc::new(certified),
        facts,
        content_hash: pair_hash(cert_bytes, key_bytes),
        origin: paths.cert.display().to_string(),
    })
}

/// Reads a file an operator named with `flag` (see `shared::fs`: a regular file of at most
/// `limit` bytes, never waited on if it is a FIFO); errors name the flag and the file.
pub(crate) fn read_file(
    flag: &'static str,
    path: &Path,
    limit: u64,
) -> Result<Vec<u8>, ConfigError> {
    shared::fs::read(path, limit).map_err(|source| ConfigError::ReadFile {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn parse_chain(
    flag: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bad = |reason: String| ConfigError::BadPem {
        flag,
        path: PathBuf::from(path),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("malformed PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no PEM certificate found".to_string()));
    }
    for (i, der) in chain.iter().enumerate() {
        der_check(der).map_err(|reason| {
            bad(format!(
                "certificate {} of the chain is invalid: {reason}",
                i + 1
            ))
        })?;
    }
    Ok(chain)
}

/// Catches DER that is not a certificate at all, so garbage fails at load time, not at the
/// first handshake. An X.509 certificate is one DER SEQUENCE; the leaf is parsed fully later.
fn der_check(der: &CertificateDer<'_>) -> Result<(), String> {
    let b = der.as_ref();
    if b.len() < 4 || b[0] != 0x30 {
        return Err("not a DER certificate".to_string());
    }
    let (len, header) = match b[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (b[2] as usize, 3),
        0x82 => (((b[2] as usize) << 8) | b[3] as usize, 4),
        0x83 if b.len() >= 5 => (
            ((b[2] as usize) << 16) | ((b[3] as usize) << 8) | b[4] as usize,
            5,
        ),
        _ => return Err("unsupported DER length".to_string()),
    };
    if header + len != b.len() {
        return Err("truncated or padded DER".to_string());
    }
    Ok(())
}

fn parse_key(
    flag: &'static str,
    path: &Path,
    bytes: &[u8],
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| ConfigError::BadPem {
        flag,
        path: path.to_path_buf(),
        reason: match e {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "no PEM private key found (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                    .to_string()
            }
            other => format!("malformed PEM: {other}"),
        },
    })
}

/// Generates an ECDSA P-256 certificate for `names` (DNS names and IP addresses).
pub(crate) fn self_signed(names: &[SanName]) -> Result<Entry, ConfigError> {
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(names.clone())
        .map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
    let common_name = names
        .first()
        .cloned()
        .unwrap_or_else(|| "tls-sidecar".to_string());
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "tls-sidecar self-signed");
    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
    let key_der = PrivateKeyDer::try_from(key_pair.serialize_der())
        .map_err(|e| ConfigError::SelfSigned(e.to_string()))?;
    let signing_key = provider().key_provider.load_private_key(key_der)?;
    let der = cert.der().clone();
    let facts = CertFacts::from_der(der.as_ref()).map_err(ConfigError::SelfSigned)?;
    Ok(Entry {
        name: "self-signed".to_string(),
        fingerprint: sha256_fingerprint(der.as_ref()),
        key: Arc::new(CertifiedKey::new(vec![der], signing_key)),
        facts,
        content_hash: [0; 32],
        origin: format!("self-signed for {}", names.join(",")),
    })
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a certificate's DER as `openssl x509 -fingerprint -sha256` prints it (uppercase
/// hex pairs joined by colons), so an operator can compare a logged fingerprint with openssl's
/// output, or a browser's, character for character.
pub(crate) fn sha256_fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let pairs: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    pairs.join(":")
}

/// The certificate resolver every handshake asks. Holds the [`CertSet`] currently served;
/// `replace` swaps it for all new handshakes while established connections keep theirs.
#[derive(Debug)]
pub(crate) struct CertStore {
    current: RwLock<Arc<CertSet>>,
}

impl CertStore {
    pub(crate) fn new(set: CertSet) -> Self {
        Self {
            current: RwLock::new(Arc::new(set)),
        }
    }

    /// Serves `set` to every handshake from now on.
    pub(crate) fn replace(&self, set: CertSet) {
        let set = Arc::new(set);
        match self.current.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }

    /// The set served now.
    pub(crate) fn current(&self) -> Arc<CertSet> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current().select(hello.server_name()).key.clone())
    }
}

/// ALPN protocols offered per mode: HTTP mode negotiates h2 or http/1.1; TCP mode offers
/// `--alpn` (none by default, so any client ALPN is ignored rather than refused). With a list,
/// a client offering none of it is refused (`no_application_protocol`, RFC 7301).
fn alpn(mode: Mode, tcp_alpn: &AlpnList) -> Vec<Vec<u8>> {
    match mode {
        Mode::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        Mode::Tcp => tcp_alpn.to_wire(),
    }
}

/// Builds the server configuration: TLS 1.2 and 1.3 only, rustls defaults otherwise, client
/// certificates verified by `client_auth` when given (mutual TLS).
///
/// With client certificates, no session is ever resumed: a resumed handshake skips client
/// verification and carries the certificate of its first handshake, so it would admit a client
/// whose certificate has since expired (service identities live for hours), whose CA was removed
/// or which was revoked. Every handshake is a full one, judged by the trust in force.
pub(crate) fn server_config(
    store: Arc<CertStore>,
    mode: Mode,
    tcp_alpn: &AlpnList,
    groups: &TlsGroups,
    client_auth: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, ConfigError> {
    let mut provider = (*provider_for(groups)).clone();
    // A stable sort: within one cipher, the provider's order (ECDSA before RSA) is kept.
    provider.cipher_suites.sort_by_key(|s| aead_rank(s.suite()));
    let builder = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mtls = client_auth.is_some();
    let builder = match client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    if mtls {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    config.alpn_protocols = alpn(mode, tcp_alpn);
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// `config` choosing the cipher suite by the client's order instead of its own: for a client
/// that asks for ChaCha20-Poly1305 before AES-GCM ([`prefers_chacha`]).
pub(crate) fn following_client_order(config: &ServerConfig) -> Arc<ServerConfig> {
    let mut config = config.clone();
    config.ignore_client_order = false;
    Arc::new(config)
}

/// The cipher a suite encrypts with, as far as the choice of suite cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Aead {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

fn aead(suite: rustls::CipherSuite) -> Option<Aead> {
    use rustls::CipherSuite as C;
    match suite {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(Aead::Aes128Gcm),
        C::TLS13_AES_256_GCM_SHA384
        | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(Aead::Aes256Gcm),
        C::TLS13_CHACHA20_POLY1305_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(Aead::ChaCha20Poly1305),
        _ => None,
    }
}

/// The server's preference when it chooses the suite: AES-128-GCM (with SHA-256: the cheapest
/// handshake and the fastest records on AES hardware), then AES-256-GCM, then
/// ChaCha20-Poly1305; the order Go's TLS stack (Caddy, Traefik) uses on such hardware.
fn aead_rank(suite: rustls::CipherSuite) -> u8 {
    match aead(suite) {
        Some(Aead::Aes128Gcm) => 0,
        Some(Aead::Aes256Gcm) => 1,
        Some(Aead::ChaCha20Poly1305) => 2,
        None => 3,
    }
}

/// Whether a ClientHello lists a ChaCha20-Poly1305 suite before every AES-GCM one: what a
/// client without AES hardware does (its own order is then followed, so it keeps the cipher
/// that is fast for it). GREASE and unknown values are skipped.
pub(crate) fn prefers_chacha(offered: &[rustls::CipherSuite]) -> bool {
    offered.iter().find_map(|s| aead(*s)) == Some(Aead::ChaCha20Poly1305)
}

#[cfg(test)]
pub(crate) fn sans(names: &[&str]) -> Vec<SanName> {
    names
        .iter()
        .map(|n| n.parse().expect("a valid name"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DIR_FLAGS, IDENTITY_FLAGS, PAIR_FLAGS};

    /// Reads a PEM certificate chain and private key and checks that they belong together.
    fn load_pair(paths: &PairPaths, flags: Flags) -> Result<Entry, ConfigError> {
        let (cert_bytes, key_bytes) = read_pair(paths, flags)?;
        parse_pair(paths, flags, &cert_bytes, &key_bytes)
    }

    #[test]
    fn self_signed_has_fingerprint_of_its_leaf() {
        let loaded = self_signed(&sans(&["localhost", "127.0.0.1"])).expect("generate");
        assert_eq!(
            loaded.fingerprint,
            sha256_fingerprint(loaded.key.cert[0].as_ref())
        );
    }

    #[test]
    fn fingerprint_is_written_as_openssl_writes_it() {
        // SHA-256 of the empty input, in `openssl x509 -fingerprint -sha256`'s form.
        assert_eq!(
            sha256_fingerprint(b""),
            "E3:B0:C4:42:98:FC:1C:14:9A:FB:F4:C8:99:6F:B9:24:\
             27:AE:41:E4:64:9B:93:4C:A4:95:99:1B:78:52:B8:55"
        );
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn der_check_refuses_garbage() {
        assert!(der_check(&CertificateDer::from(vec![1, 2, 3, 4])).is_err());
        assert!(der_check(&CertificateDer::from(vec![0x30, 0x05, 0, 0])).is_err());
        assert!(der_check(&CertificateDer::from(vec![0x30, 0x02, 0, 0])).is_ok());
    }

    #[test]
    fn pair_hash_changes_with_either_file() {
        assert_ne!(pair_hash(b"a", b"b"), pair_hash(b"a", b"c"));
        assert_ne!(pair_hash(b"ab", b""), pair_hash(b"a", b"b"));
    }

    #[test]
    fn a_fifo_as_cert_or_key_is_refused_not_waited_on() {
        use shared::fs::testing::{mkfifo, within};
        let dir = std::env::temp_dir().join(format!("sidecar-tls-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["a.example".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let (cert_path, key_path, fifo) =
            (dir.join("a.crt"), dir.join("a.key"), dir.join("fifo.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        mkfifo(&fifo);
        let pair = |cert: &Path, key: &Path| PairPaths {
            name: "a".to_string(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        };
        assert!(load_pair(&pair(&cert_path, &key_path), PAIR_FLAGS).is_ok());
        for (paths, flags, flag) in [
            (pair(&fifo, &key_path), PAIR_FLAGS, "--cert"),
            (pair(&cert_path, &fifo), PAIR_FLAGS, "--key"),
            (pair(&fifo, &fifo), DIR_FLAGS, "--certs-dir"),
            (pair(&cert_path, &fifo), IDENTITY_FLAGS, "--identity-key"),
        ] {
            let e = within(flag, move || load_pair(&paths, flags).map(|_| ()))
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
    fn config_builds_for_both_modes() {
        let loaded = Arc::new(self_signed(&sans(&["localhost"])).expect("generate"));
        let store = Arc::new(CertStore::new(CertSet::new(loaded, Vec::new())));
        let none = AlpnList::default();
        let http = server_config(
            store.clone(),
            Mode::Http,
            &none,
            &TlsGroups::default(),
            None,
        )
        .expect("http config");
        assert_eq!(
            http.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let tcp = server_config(store.clone(), Mode::Tcp, &none, &TlsGroups::default(), None)
            .expect("tcp config");
        assert!(tcp.alpn_protocols.is_empty());
        let list: AlpnList = "h2,http/1.1".parse().expect("list");
        let tcp = server_config(store.clone(), Mode::Tcp, &list, &TlsGroups::default(), None)
            .expect("tcp config");
        assert_eq!(
            tcp.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(http.session_storage.can_cache(), "resumption without mTLS");
        // The sidecar chooses the suite: AES-128-GCM, AES-256-GCM, ChaCha20 (each TLS 1.3 one
        // first, then TLS 1.2's, ECDSA before RSA as the provider lists them).
        assert!(http.ignore_client_order);
        let order: Vec<_> = http
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        use rustls::CipherSuite as C;
        assert_eq!(
            order,
            [
                C::TLS13_AES_128_GCM_SHA256,
                C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                C::TLS13_AES_256_GCM_SHA384,
                C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                C::TLS13_CHACHA20_POLY1305_SHA256,
                C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]
        );
        assert!(!following_client_order(&http).ignore_client_order);
    }

    #[test]
    fn a_client_listing_chacha20_before_aes_gcm_keeps_its_order() {
        use rustls::CipherSuite as C;
        let grease = C::Unknown(0x0a0a);
        assert!(prefers_chacha(&[
            grease,
            C::TLS13_CHACHA20_POLY1305_SHA256,
            C::TLS13_AES_128_GCM_SHA256
        ]));
        assert!(prefers_chacha(&[
            C::TLS_EMPTY_RENEGOTIATION_INFO_SCSV,
            C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ]));
        assert!(!prefers_chacha(&[
            grease,
            C::TLS13_AES_128_GCM_SHA256,
            C::TLS13_CHACHA20_POLY1305_SHA256
        ]));
        assert!(!prefers_chacha(&[
            C::TLS13_AES_256_GCM_SHA384,
            C::TLS13_CHACHA20_POLY1305_SHA256
        ]));
        assert!(!prefers_chacha(&[grease]));
        assert!(!prefers_chacha(&[]));
    }

    #[test]
    fn mutual_tls_never_resumes_a_session() {
        let loaded = Arc::new(self_signed(&sans(&["localhost"])).expect("generate"));
        let store = Arc::new(CertStore::new(CertSet::new(loaded.clone(), Vec::new())));
        let mut roots = rustls::RootCertStore::empty();
        roots.add(loaded.key.cert[0].clone()).expect("a root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("verifier");
        let config = server_config(
            store,
            Mode::Http,
            &AlpnList::default(),
            &TlsGroups::default(),
            Some(verifier),
        )
        .expect("mtls config");
        assert!(!config.session_storage.can_cache(), "no session stored");
        assert_eq!(config.send_tls13_tickets, 0, "no ticket sent");
    }
}
