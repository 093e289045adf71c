//! Spike for ACME in the spawner: instant-acme (on ring, with an HTTP client of our own that
//! trusts Pebble's test CA) gets certificates from a real Pebble by HTTP-01 and TLS-ALPN-01,
//! answered by servers in this test on the ports Pebble validates; names Pebble refuses and an
//! unreachable directory fail with errors that say why. The last two tests put the sidecar on
//! those ports: Pebble validates TLS-ALPN-01 against its TLS listener (`--acme-tls-alpn-dir`)
//! and HTTP-01 against its redirect listener (`--acme-webroot`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::certs::dns_sans;
use harness::client::{self, Trust};
use harness::issuer::TestCa;
use harness::pebble::{Options, Pebble};
use harness::wait::{within, STEP};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, KeyAuthorization, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Trust for Pebble's directory (its HTTPS certificate comes from the harness's test CA).
fn directory_roots(pebble: &Pebble) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots
        .add(pebble.directory_ca_der())
        .expect("Pebble's directory CA");
    roots
}

pub(crate) async fn account(pebble: &Pebble) -> Account {
    let (account, _credentials) =
        Account::builder_with_http(Box::new(spawner::AcmeHttp::new(directory_roots(pebble))))
            .create(
                &NewAccount {
                    contact: &["mailto:test@example.com"],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                pebble.directory_url().to_string(),
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("create an ACME account: {e}\n{}", pebble.logs()));
    account
}

/// Polls quickly: Pebble validates within milliseconds without its random sleeps.
fn retries() -> RetryPolicy {
    RetryPolicy::new()
        .initial_delay(Duration::from_millis(50))
        .backoff(1.5)
        .timeout(Duration::from_secs(30))
}

/// Orders a certificate for `name`, answers its `kind` challenge through `publish(token, key
/// authorization)`, finalizes with a fresh key's CSR and returns the PEM chain Pebble issued.
pub(crate) async fn issue(
    pebble: &Pebble,
    account: &Account,
    name: &str,
    kind: ChallengeType,
    publish: impl Fn(&str, &KeyAuthorization),
) -> String {
    let identifiers = [Identifier::Dns(name.to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .unwrap_or_else(|e| panic!("new order for {name}: {e}"));
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.unwrap_or_else(|e| panic!("authorization of {name}: {e}"));
        assert_eq!(
            authz.status,
            AuthorizationStatus::Pending,
            "a fresh authorization (PEBBLE_AUTHZREUSE=0)"
        );
        let mut challenge = authz
            .challenge(kind.clone())
            .unwrap_or_else(|| panic!("Pebble offers no {kind:?} challenge for {name}"));
        publish(&challenge.token, &challenge.key_authorization());
        challenge
            .set_ready()
            .await
            .unwrap_or_else(|e| panic!("set the {kind:?} challenge ready: {e}"));
    }
    let status = order
        .poll_ready(&retries())
        .await
        .unwrap_or_else(|e| panic!("order for {name} to be ready: {e}\n{}", pebble.logs()));
    assert_eq!(
        status,
        OrderStatus::Ready,
        "order for {name} after its {kind:?} challenge\n{}",
        pebble.logs()
    );

    let key = KeyPair::generate().expect("certificate key");
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("CSR parameters");
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).expect("CSR");
    order
        .finalize_csr(csr.der())
        .await
        .unwrap_or_else(|e| panic!("finalize the order for {name}: {e}"));
    order
        .poll_certificate(&retries())
        .await
        .unwrap_or_else(|e| panic!("download the certificate for {name}: {e}"))
}

/// The DER certificates of a PEM chain, leaf first.
fn chain_der(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM chain")
}

/// notAfter minus notBefore of `cert`.
fn lifetime(cert: &CertificateDer<'_>) -> Duration {
    let (_, x509) = X509Certificate::from_der(cert).expect("parse certificate");
    let validity = x509.validity();
    let secs = validity.not_after.timestamp() - validity.not_before.timestamp();
    Duration::from_secs(u64::try_from(secs).expect("notAfter after notBefore"))
}

/// Asserts the chain is for exactly `name` and verifies (as a TLS server certificate for
/// `name`, now) up to Pebble's issuing root.
pub(crate) fn assert_issued_for(
    pebble: &Pebble,
    chain_pem: &str,
    name: &str,
) -> Vec<CertificateDer<'static>> {
    assert_issued_for_all(pebble, chain_pem, &[name])
}

/// Asserts the chain is for exactly `names` and verifies for each up to Pebble's issuing root.
fn assert_issued_for_all(
    pebble: &Pebble,
    chain_pem: &str,
    names: &[&str],
) -> Vec<CertificateDer<'static>> {
    let chain = chain_der(chain_pem);
    assert!(
        chain.len() >= 2,
        "leaf and intermediate expected:\n{chain_pem}"
    );
    assert_eq!(
        dns_sans(&chain[0]),
        names.iter().map(|n| n.to_string()).collect::<Vec<_>>()
    );
    let mut roots = RootCertStore::empty();
    roots
        .add(
            CertificateDer::from_pem_slice(pebble.issuer_root_pem().as_bytes())
                .expect("Pebble root PEM"),
        )
        .expect("add Pebble's root");
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), client::provider())
        .build()
        .expect("verifier");
    for name in names {
        let server_name = ServerName::try_from(name.to_string()).expect("server name");
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], UnixTime::now())
            .unwrap_or_else(|e| panic!("chain for {name} does not verify to Pebble's root: {e}"));
    }
    chain
}

/// Serves `/.well-known/acme-challenge/<token>` from `tokens` on `addr` (HTTP/1.1).
async fn http01_responder(
    addr: SocketAddr,
    tokens: Arc<Mutex<HashMap<String, String>>>,
) -> JoinHandle<()> {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind the HTTP-01 responder on {addr}: {e}"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tokens = tokens.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<_>| {
                    let answer = req
                        .uri()
                        .path()
                        .strip_prefix("/.well-known/acme-challenge/")
                        .and_then(|t| tokens.lock().expect("tokens").get(t).cloned());
                    async move {
                        Ok::<_, Infallible>(match answer {
                            Some(key_auth) => Response::new(Full::new(Bytes::from(key_auth))),
                            None => Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::new()))
                                .expect("404 response"),
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// The TLS-ALPN-01 answer for `name`: a self-signed certificate for `name` carrying the critical
/// acmeIdentifier extension (RFC 8737) with SHA-256(key authorization).
fn tls_alpn01_cert(name: &str, key_auth: &KeyAuthorization) -> Arc<CertifiedKey> {
    let key = KeyPair::generate().expect("challenge key");
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("challenge params");
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(
        key_auth.digest().as_ref(),
    )];
    let cert = params.self_signed(&key).expect("self-sign challenge cert");
    let signing_key = client::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::try_from(key.serialize_der()).expect("key DER"))
        .expect("load challenge key");
    Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

/// Challenge certificates by SNI, as a TLS-ALPN-01 responder (and the real feature) keeps them.
#[derive(Debug, Default)]
struct ChallengeCerts(Mutex<HashMap<String, Arc<CertifiedKey>>>);

impl ResolvesServerCert for ChallengeCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == b"acme-tls/1"));
        let name = hello.server_name()?;
        acme.then(|| self.0.lock().expect("certs").get(name).cloned())
            .flatten()
    }
}

/// Answers TLS-ALPN-01 on `addr` (ALPN `acme-tls/1` only) with the certificates in `certs`.
async fn tls_alpn01_responder(addr: SocketAddr, certs: Arc<ChallengeCerts>) -> JoinHandle<()> {
    let mut config = rustls::ServerConfig::builder_with_provider(client::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind the TLS-ALPN-01 responder on {addr}: {e}"));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            // The validator only needs the handshake; it closes the connection itself.
            tokio::spawn(async move {
                let _ = acceptor.accept(stream).await;
            });
        }
    })
}

#[tokio::test]
async fn http01_issues_a_certificate_that_chains_to_pebbles_root() {
    let started = Instant::now();
    let pebble = Pebble::start().await;
    eprintln!("Pebble and challtestsrv ready in {:?}", started.elapsed());
    let started = Instant::now();
    let account = account(&pebble).await;
    let tokens = Arc::new(Mutex::new(HashMap::new()));
    let responder = http01_responder(
        SocketAddr::from(([127, 0, 0, 1], pebble.http_port())),
        tokens.clone(),
    )
    .await;
    let chain = within(
        Duration::from_secs(60),
        "issuance by HTTP-01",
        issue(
            &pebble,
            &account,
            "a.test",
            ChallengeType::Http01,
            |t, k| {
                tokens
                    .lock()
                    .expect("tokens")
                    .insert(t.to_string(), k.as_str().to_string());
            },
        ),
    )
    .await;
    eprintln!(
        "HTTP-01: account, order and certificate in {:?}",
        started.elapsed()
    );
    let chain = assert_issued_for(&pebble, &chain, "a.test");
    // Pebble's default lifetime is five years (no certificateValidityPeriod set).
    assert!(
        lifetime(&chain[0]) > Duration::from_secs(4 * 365 * 86400),
        "{:?}",
        lifetime(&chain[0])
    );
    responder.abort();
}

#[tokio::test]
async fn tls_alpn01_issues_a_certificate_that_chains_to_pebbles_root() {
    let pebble = Pebble::start().await;
    let started = Instant::now();
    let account = account(&pebble).await;
    let certs = Arc::new(ChallengeCerts::default());
    let responder = tls_alpn01_responder(
        SocketAddr::from(([127, 0, 0, 1], pebble.tls_port())),
        certs.clone(),
    )
    .await;
    let chain = within(
        Duration::from_secs(60),
        "issuance by TLS-ALPN-01",
        issue(
            &pebble,
            &account,
            "b.test",
            ChallengeType::TlsAlpn01,
            |_, k| {
                certs
                    .0
                    .lock()
                    .expect("certs")
                    .insert("b.test".to_string(), tls_alpn01_cert("b.test", k));
            },
        ),
    )
    .await;
    eprintln!(
        "TLS-ALPN-01: account, order and certificate in {:?}",
        started.elapsed()
    );
    assert_issued_for(&pebble, &chain, "b.test");
    responder.abort();
}

#[tokio::test]
async fn certificate_validity_period_sets_the_lifetime_of_issued_certificates() {
    let pebble = Pebble::start_with(Options {
        certificate_validity: Some(Duration::from_secs(120)),
        ..Options::default()
    })
    .await;
    let account = account(&pebble).await;
    let tokens = Arc::new(Mutex::new(HashMap::new()));
    let responder = http01_responder(
        SocketAddr::from(([127, 0, 0, 1], pebble.http_port())),
        tokens.clone(),
    )
    .await;
    let chain = issue(
        &pebble,
        &account,
        "short.test",
        ChallengeType::Http01,
        |t, k| {
            tokens
                .lock()
                .expect("tokens")
                .insert(t.to_string(), k.as_str().to_string());
        },
    )
    .await;
    let chain = assert_issued_for(&pebble, &chain, "short.test");
    // Pebble sets notAfter = notBefore + period - 1s (the last second is inclusive).
    assert_eq!(lifetime(&chain[0]), Duration::from_secs(119));
    responder.abort();
}

#[tokio::test]
async fn names_pebble_refuses_fail_the_order_with_the_reason() {
    let pebble = Pebble::start().await;
    let account = account(&pebble).await;
    // Pebble 2.4 answers `malformed` for all of these (Boulder says `rejectedIdentifier`); the
    // detail says what is wrong, with the value or the offending character.
    for (name, detail) in [
        (
            "127.0.0.1",
            r#"DNS identifier with an IP address value: "127.0.0.1""#,
        ),
        ("bad_name.test", "illegal character: '_'"),
        ("*.*.test", r#"too many wildcards "*.*.test""#),
        ("trailing.test.", r#"ending in a period: "trailing.test.""#),
    ] {
        let identifiers = [Identifier::Dns(name.to_string())];
        let err = match account.new_order(&NewOrder::new(&identifiers)).await {
            Ok(_) => panic!("Pebble accepted an order for {name}"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("urn:ietf:params:acme:error:malformed") && err.contains(detail),
            "{name}: {err}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_directory_fails_with_the_address_and_the_cause() {
    // No Pebble: only a CA the client would trust.
    let ca = TestCa::new("unused directory CA");
    // A port nobody listens on.
    let port = harness::backend::refused_addr().port();
    let url = format!("https://127.0.0.1:{port}/dir");
    let err = match within(
        STEP * 2,
        "account creation against nothing",
        Account::builder_with_http(Box::new(spawner::AcmeHttp::new({
            let mut roots = RootCertStore::empty();
            roots.add(ca.der()).expect("test CA");
            roots
        })))
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            url.clone(),
            None,
        ),
    )
    .await
    {
        Ok(_) => panic!("an account on {url}?"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&url) && err.contains("Connection refused"),
        "{err}"
    );
    eprintln!("unreachable directory: {err}");
}

#[tokio::test]
async fn a_wrong_http01_answer_fails_the_order_with_pebbles_reason() {
    let pebble = Pebble::start().await;
    let account = account(&pebble).await;
    let tokens = Arc::new(Mutex::new(HashMap::new()));
    let responder = http01_responder(
        SocketAddr::from(([127, 0, 0, 1], pebble.http_port())),
        tokens.clone(),
    )
    .await;
    let identifiers = [Identifier::Dns("wrong.test".to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .expect("new order");
    let mut authorizations = order.authorizations();
    let mut authz = authorizations
        .next()
        .await
        .expect("one authorization")
        .expect("authorization");
    let mut challenge = authz
        .challenge(ChallengeType::Http01)
        .expect("an HTTP-01 challenge");
    tokens.lock().expect("tokens").insert(
        challenge.token.clone(),
        "not-the-key-authorization".to_string(),
    );
    challenge.set_ready().await.expect("set ready");
    // Pebble copies the challenge's problem into the order's `error`: instant-acme's poll_ready
    // returns it as the error, detail and all.
    let error = match order.poll_ready(&retries()).await {
        Err(instant_acme::Error::Api(problem)) => problem.to_string(),
        other => panic!("{other:?}\n{}", pebble.logs()),
    };
    eprintln!("wrong HTTP-01 answer: {error}");
    assert!(
        error.contains("urn:ietf:params:acme:error:unauthorized")
            && error.contains("did not match")
            && error.contains("not-the-key-authorization"),
        "{error}"
    );
    assert_eq!(order.state().status, OrderStatus::Invalid);
    responder.abort();
}

/// The sidecar's half of ACME, validated by a real ACME server: Pebble's VA connects to the
/// sidecar itself. TLS-ALPN-01 is answered by the TLS listener with `--acme-tls-alpn-dir` while
/// it serves normal traffic; HTTP-01 by the redirect listener with `--acme-webroot`. What an
/// ACME client writes is a file in a directory, as the spawner will.
#[tokio::test]
async fn the_sidecar_answers_tls_alpn01_for_pebble_on_its_tls_listener() {
    let pebble = Pebble::start().await;
    let account = account(&pebble).await;
    let dir = harness::tmp::TempDir::new("tls-alpn-01");
    let app = harness::backend::Backend::echo().await;
    let sc = harness::sidecar::Sidecar::builder()
        .without_listen_flag()
        .args(["--listen", &format!("127.0.0.1:{}", pebble.tls_port())])
        .backend(app.addr())
        .args(["--self-signed-names", "c.test"])
        .arg("--acme-tls-alpn-dir")
        .arg(dir.path().display().to_string())
        .start()
        .await;
    let chain = within(
        Duration::from_secs(60),
        "issuance by TLS-ALPN-01 through the sidecar",
        issue(
            &pebble,
            &account,
            "c.test",
            ChallengeType::TlsAlpn01,
            |_, k| {
                let key = KeyPair::generate().expect("challenge key");
                let mut params =
                    CertificateParams::new(vec!["c.test".to_string()]).expect("params");
                params.distinguished_name = DistinguishedName::new();
                params.custom_extensions =
                    vec![CustomExtension::new_acme_identifier(k.digest().as_ref())];
                let cert = params.self_signed(&key).expect("challenge cert");
                dir.write(
                    "c.test.pem",
                    format!("{}{}", cert.pem(), key.serialize_pem()),
                );
            },
        ),
    )
    .await;
    assert_issued_for(&pebble, &chain, "c.test");
    sc.wait_log("answered an ACME TLS-ALPN-01 challenge", STEP)
        .await;
    // Normal traffic on the same listener meanwhile: served as usual.
    let mut conn = harness::client::HttpConn::connect(
        sc.addr(),
        "c.test",
        client::config(Trust::AnyCert, client::ALPN_H2_H1),
    )
    .await;
    assert_eq!(conn.get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn the_sidecar_answers_http01_for_pebble_on_its_redirect_listener() {
    let pebble = Pebble::start().await;
    let account = account(&pebble).await;
    let webroot = harness::tmp::TempDir::new("http-01");
    std::fs::create_dir_all(webroot.path().join(".well-known/acme-challenge"))
        .expect("challenge directory");
    let app = harness::backend::Backend::echo().await;
    let _sc = harness::sidecar::Sidecar::builder()
        .backend(app.addr())
        .args(["--self-signed-names", "d.test"])
        .args([
            "--redirect-listen",
            &format!("127.0.0.1:{}", pebble.http_port()),
        ])
        .arg("--acme-webroot")
        .arg(webroot.path().display().to_string())
        .start()
        .await;
    let chain = within(
        Duration::from_secs(60),
        "issuance by HTTP-01 through the sidecar",
        issue(
            &pebble,
            &account,
            "d.test",
            ChallengeType::Http01,
            |token, k| {
                webroot.write(&format!(".well-known/acme-challenge/{token}"), k.as_str());
            },
        ),
    )
    .await;
    assert_issued_for(&pebble, &chain, "d.test");
}

/// The account's key thumbprint, as the CA puts it in a key authorization
/// `<token>.<thumbprint>` (read from an authorization of an order left unfinished).
pub(crate) async fn thumbprint(account: &Account) -> String {
    let identifiers = [Identifier::Dns("probe.test".to_string())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .expect("probe order");
    let mut authorizations = order.authorizations();
    let mut authz = authorizations
        .next()
        .await
        .expect("an authorization")
        .expect("authorization");
    let challenge = authz
        .challenge(ChallengeType::Http01)
        .expect("an http-01 challenge");
    let key_auth = challenge.key_authorization();
    let (_, thumbprint) = key_auth.as_str().split_once('.').expect("token.thumbprint");
    thumbprint.to_string()
}

/// Stateless HTTP-01: the sidecar holds no answer file, only the account's thumbprint
/// (`--acme-thumbprint`), and Pebble's check of a fresh token passes.
#[tokio::test]
async fn the_sidecar_answers_http01_statelessly_with_the_account_thumbprint() {
    let pebble = Pebble::start().await;
    let account = account(&pebble).await;
    let thumbprint = thumbprint(&account).await;
    let app = harness::backend::Backend::echo().await;
    let _sc = harness::sidecar::Sidecar::builder()
        .backend(app.addr())
        .args(["--self-signed-names", "s.test"])
        .args([
            "--redirect-listen",
            &format!("127.0.0.1:{}", pebble.http_port()),
        ])
        .args(["--acme-thumbprint", &thumbprint])
        .start()
        .await;
    let chain = within(
        Duration::from_secs(60),
        "issuance by stateless HTTP-01 through the sidecar",
        issue(
            &pebble,
            &account,
            "s.test",
            ChallengeType::Http01,
            |_, _| {},
        ),
    )
    .await;
    assert_issued_for(&pebble, &chain, "s.test");
}

/// The spawner's own ACME client (`spawner::AcmeClient`), its store and the sidecar together:
/// the challenge answers go into the store, the sidecar serves them from there, Pebble
/// validates, the pair lands in certbot's layout, and the account is kept for the next start.
mod spawner_client {
    use super::*;
    use shared::dns::CertName;
    use spawner::{AcmeClient as Client, AcmeStore as Store, ChallengeKind};
    use std::os::unix::fs::PermissionsExt;
    use std::str::FromStr;

    fn roots(pebble: &Pebble) -> RootCertStore {
        directory_roots(pebble)
    }

    /// The spawner's ACME client on `store`, with an account at Pebble.
    async fn open(pebble: &Pebble, store: &Store) -> Client {
        within(
            STEP,
            "the ACME account",
            Client::open(
                pebble.directory_url(),
                roots(pebble),
                "ops@example.com",
                store.clone(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()))
    }

    fn name(n: &str) -> CertName {
        CertName::from_str(n).expect("a DNS name")
    }

    #[tokio::test]
    async fn obtains_by_tls_alpn01_through_the_sidecar_and_keeps_its_account() {
        let pebble = Pebble::start().await;
        let dir = harness::tmp::TempDir::new("acme-store");
        let store = Store::new(dir.path());
        let app = harness::backend::Backend::echo().await;
        let _sc = harness::sidecar::Sidecar::builder()
            .without_listen_flag()
            .args(["--listen", &format!("127.0.0.1:{}", pebble.tls_port())])
            .backend(app.addr())
            .args(["--self-signed-names", "e.test"])
            .arg("--acme-tls-alpn-dir")
            .arg(store.tls_alpn01_dir().display().to_string())
            .start()
            .await;
        let client = open(&pebble, &store).await;
        let names = [name("e.test"), name("www.e.test")];
        let got = within(
            Duration::from_secs(60),
            "a certificate by TLS-ALPN-01",
            client.obtain(&names, ChallengeKind::TlsAlpn01),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
        assert_issued_for_all(&pebble, &got.chain_pem, &["e.test", "www.e.test"]);
        store
            .write_pair(
                names[0].base(),
                got.chain_pem.as_bytes(),
                got.key_pem.as_bytes(),
            )
            .expect("store the pair");
        let held = store.held(names[0].base()).expect("the stored certificate");
        assert_eq!(held.names.len(), 2);
        // The challenge files are gone; the account is kept, readable by the spawner only.
        let left: Vec<_> = std::fs::read_dir(store.tls_alpn01_dir())
            .expect("challenge dir")
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let mode = std::fs::metadata(store.account_path())
            .expect("account file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = open(&pebble, &store).await;
        assert_eq!(again.account_id(), client.account_id());
    }

    #[tokio::test]
    async fn an_account_stored_for_another_directory_is_replaced_by_one_at_this_directory() {
        // Staging first, then production: two CAs, one store.
        let (staging, production) = tokio::join!(Pebble::start(), Pebble::start());
        let dir = harness::tmp::TempDir::new("acme-store");
        let store = Store::new(dir.path());
        let at_staging = open(&staging, &store).await;
        let stored = |store: &Store| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(store.account_path()).expect("account file"))
                .expect("account JSON")
        };
        assert_eq!(stored(&store)["directory"], staging.directory_url());
        let at_production = open(&production, &store).await;
        assert_ne!(at_production.account_id(), at_staging.account_id());
        assert_eq!(stored(&store)["directory"], production.directory_url());
        // And it is kept for the next start at that directory.
        let again = open(&production, &store).await;
        assert_eq!(again.account_id(), at_production.account_id());
    }

    #[tokio::test]
    async fn obtains_by_http01_through_the_sidecars_redirect_listener() {
        let pebble = Pebble::start().await;
        let dir = harness::tmp::TempDir::new("acme-store");
        let store = Store::new(dir.path());
        std::fs::create_dir_all(store.http01_webroot()).expect("webroot");
        let app = harness::backend::Backend::echo().await;
        let _sc = harness::sidecar::Sidecar::builder()
            .backend(app.addr())
            .args(["--self-signed-names", "f.test"])
            .args([
                "--redirect-listen",
                &format!("127.0.0.1:{}", pebble.http_port()),
            ])
            .arg("--acme-webroot")
            .arg(store.http01_webroot().display().to_string())
            .start()
            .await;
        let client = open(&pebble, &store).await;
        let got = within(
            Duration::from_secs(60),
            "a certificate by HTTP-01",
            client.obtain(&[name("f.test")], ChallengeKind::Http01),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pebble.logs()));
        assert_issued_for(&pebble, &got.chain_pem, "f.test");
    }

    #[tokio::test]
    async fn a_refused_name_is_permanent_an_unanswered_challenge_is_not() {
        let pebble = Pebble::start().await;
        let dir = harness::tmp::TempDir::new("acme-store");
        let store = Store::new(dir.path());
        let client = open(&pebble, &store).await;
        // Pebble refuses `_` in a name (a DNS name may hold one; a certificate name may not).
        let refused = client
            .obtain(&[name("bad_name.test")], ChallengeKind::Http01)
            .await
            .expect_err("refused");
        assert!(refused.permanent, "{refused}");
        assert!(refused.message.contains("bad_name.test"), "{refused}");
        // Nobody answers on Pebble's HTTP-01 port: the order fails, and may be retried.
        let unanswered = within(
            Duration::from_secs(60),
            "an order nobody answers",
            client.obtain(&[name("g.test")], ChallengeKind::Http01),
        )
        .await
        .expect_err("no answer");
        assert!(!unanswered.permanent, "{unanswered}");
        assert!(unanswered.message.contains("g.test"), "{unanswered}");
    }

    #[tokio::test]
    async fn an_unreachable_directory_is_a_clear_transient_error() {
        let dir = harness::tmp::TempDir::new("acme-store");
        let addr = harness::backend::refused_addr();
        let err = Client::open(
            &format!("https://{addr}/dir"),
            RootCertStore::empty(),
            "ops@example.com",
            Store::new(dir.path()),
        )
        .await
        .err()
        .expect("nothing listens");
        assert!(!err.permanent, "{err}");
        assert!(err.message.contains(&addr.to_string()), "{err}");
    }
}
