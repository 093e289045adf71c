//! The ACME protocol (RFC 8555), through `instant-acme`: an account kept in the
//! store (`acme/account.json`, mode 0600, reused after restarts) and one certificate obtained
//! for a name set by HTTP-01 or TLS-ALPN-01, the challenge answers published in the store
//! ([`Store`]) and handed to [`Answers`] (the daemon uploads them into the serving sidecars),
//! and the CA's renewal window for a held certificate (ARI). Driven by the manager
//! ([`crate::acme`]).
//!
//! Every network step is under a timeout, every error says whether retrying can help
//! ([`AcmeError::permanent`]) and what the CA said.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper_util::rt::TokioIo;
use instant_acme::{
    Account, AccountCredentials, AuthorizationHandle, BodyWrapper, BytesResponse, ChallengeType,
    ExternalAccountKey, HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::RootCertStore;
use rustls_pki_types::ServerName;
use shared::dns::{CertName, DnsName};
use tokio::net::TcpStream;

use crate::acme::store::Store;
use crate::certs::delivery::AnswerFile;
use crate::plan::labels::ChallengeKind;

/// Longest one HTTP exchange with the CA may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an order may take from its challenges being ready to the certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest account file read back: the spawner's own, whose credentials (a key and two URLs)
/// are under 1 KiB.
const MAX_ACCOUNT_BYTES: u64 = 64 * 1024;

/// Why an ACME step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeError {
    /// Retrying cannot help until something changes (the CA refused the names or the contact).
    pub permanent: bool,
    pub message: String,
    /// What failed, without what changes from one order to the next (the challenge URL and
    /// token in the CA's detail): the step and the CA's problem type. `None`: the message.
    pub(crate) cause: Option<String>,
    /// The step that failed, as `spawner status` names it: `ca` (the CA answered with an
    /// error), `dns zone lookup`, `dns update`, `dns hook`, `dns not visible`; `None`: the
    /// spawner's own (the store, a key).
    pub(crate) step: Option<&'static str>,
}

impl AcmeError {
    /// What a repeated failure has in common with the last one (see [`AcmeError::cause`]).
    pub(crate) fn cause(&self) -> &str {
        self.cause.as_deref().unwrap_or(&self.message)
    }
}

impl std::fmt::Display for AcmeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AcmeError {}

/// ACME problem types that no retry fixes (RFC 8555 section 6.7): the CA refuses the
/// identifier or the account's contact. A failed challenge (`unauthorized`, `connection`, `dns`)
/// or a rate limit is not among them: it may pass once the target is reachable.
const PERMANENT_PROBLEMS: [&str; 8] = [
    "rejectedIdentifier",
    "unsupportedIdentifier",
    "malformed",
    "caa",
    "invalidContact",
    "unsupportedContact",
    "externalAccountRequired",
    "userActionRequired",
];

fn classify(what: &str, error: instant_acme::Error) -> AcmeError {
    let problem = match &error {
        instant_acme::Error::Api(problem) => problem.r#type.clone(),
        _ => None,
    };
    let permanent = problem.as_deref().is_some_and(|t| {
        PERMANENT_PROBLEMS
            .iter()
            .any(|p| t == format!("urn:ietf:params:acme:error:{p}"))
    });
    AcmeError {
        cause: problem.map(|t| format!("{what}: {t}")),
        step: Some("ca"),
        permanent,
        message: format!("{what}: {error}"),
    }
}

fn transient(message: String) -> AcmeError {
    AcmeError {
        cause: None,
        step: None,
        permanent: false,
        message,
    }
}

/// A certificate obtained: the PEM chain (leaf first) and its private key (PKCS#8 PEM).
#[derive(Debug, Clone)]
pub struct Obtained {
    pub chain_pem: String,
    pub key_pem: String,
}

/// One ACME account at one directory.
pub struct Client {
    account: Account,
    store: Store,
}

impl Client {
    /// The account whose credentials are in the store, or a new one (registered with `email`,
    /// the terms of service agreed) whose credentials are then stored. `roots` are trusted for
    /// the directory's own HTTPS.
    pub async fn open(
        directory: &str,
        roots: RootCertStore,
        email: &str,
        store: Store,
    ) -> Result<Client, AcmeError> {
        Self::open_bound(directory, roots, email, store, None).await
    }

    /// [`Client::open`], a new account bound to an external account (`--acme-eab-*`, RFC 8555
    /// section 7.3.4) when `eab` is given: the key ID and the raw HMAC key.
    pub async fn open_bound(
        directory: &str,
        roots: RootCertStore,
        email: &str,
        store: Store,
        eab: Option<(&str, &[u8])>,
    ) -> Result<Client, AcmeError> {
        let http = || -> Box<dyn HttpClient> { Box::new(Http::new(roots.clone())) };
        let path = store.account_path();
        // Only a missing file means "no account yet": any other read error must not make a
        // second account (and overwrite the first one's credentials).
        let stored = match shared::fs::read(&path, MAX_ACCOUNT_BYTES) {
            Ok(json) => Some(json),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(transient(format!("{}: {e}", path.display()))),
        };
        // An account is an account at one CA: credentials for another directory (staging,
        // before a switch to production) are replaced by a new account at this one.
        let stored = stored.filter(|json| {
            let at = serde_json::from_slice::<serde_json::Value>(json)
                .ok()
                .and_then(|v| v["directory"].as_str().map(String::from));
            match at {
                Some(other) if other != directory => {
                    tracing::info!(stored = %other, directory, "the stored ACME account is for another directory; registering a new one");
                    false
                }
                _ => true,
            }
        });
        if let Some(json) = stored {
            let credentials: AccountCredentials =
                serde_json::from_slice(&json).map_err(|e| AcmeError {
                    cause: None,
                    step: None,
                    permanent: true,
                    message: format!("{}: not ACME account credentials: {e}", path.display()),
                })?;
            let account = Account::builder_with_http(http())
                .from_credentials(credentials)
                .await
                .map_err(|e| classify("loading the stored ACME account", e))?;
            return Ok(Client { account, store });
        }
        let contact = format!("mailto:{email}");
        let binding = eab.map(|(kid, key)| ExternalAccountKey::new(kid.to_string(), key));
        let what = match eab {
            Some((kid, _)) => format!(
                "creating an ACME account at {directory} with External Account Binding (key ID {kid})"
            ),
            None => format!("creating an ACME account at {directory}"),
        };
        let (account, credentials) = Account::builder_with_http(http())
            .create(
                &NewAccount {
                    contact: &[&contact],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.to_string(),
                binding.as_ref(),
            )
            .await
            .map_err(|e| classify(&what, e))?;
        let json = serde_json::to_vec(&credentials)
            .map_err(|e| transient(format!("serialising the account: {e}")))?;
        store
            .write_account(&json)
            .map_err(|e| transient(format!("{}: {e}", path.display())))?;
        Ok(Client { account, store })
    }

    /// The account's URL at the CA.
    pub fn account_id(&self) -> &str {
        self.account.id()
    }

    /// The CA's suggested renewal window for the leaf of `chain_pem` (ACME Renewal Information,
    /// RFC 9773): the window's start, and how long until the CA wants to be asked again. `None`
    /// when the CA offers no renewal information (the directory names no `renewalInfo`).
    pub(crate) async fn renewal_window(
        &self,
        chain_pem: &[u8],
    ) -> Result<Option<(std::time::SystemTime, Duration)>, AcmeError> {
        use rustls_pki_types::pem::PemObject;
        let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(chain_pem)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| transient("renewal information: no certificate in the chain".into()))?;
        let id = instant_acme::CertificateIdentifier::try_from(&leaf)
            .map_err(|e| transient(format!("renewal information: {e}")))?;
        match self.account.renewal_info(&id).await {
            Ok((info, ask_again)) => {
                let start = info.suggested_window.start.unix_timestamp().max(0) as u64;
                let start = std::time::UNIX_EPOCH + Duration::from_secs(start);
                Ok(Some((start, ask_again)))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(classify("renewal information", e)),
        }
    }

    /// Orders one certificate for `names` (the first base name is the certificate's directory
    /// name), proves control of each by `kind` (http-01 or tls-alpn-01; dns-01 needs
    /// [`Client::obtain_by_dns`]), and returns it. The challenge files are removed again
    /// whatever happens.
    pub async fn obtain(
        &self,
        names: &[CertName],
        kind: ChallengeKind,
    ) -> Result<Obtained, AcmeError> {
        self.obtain_with(names, kind, &StoreOnly, None).await
    }

    /// [`Client::obtain`] by dns-01, the records written and removed by `records`.
    pub async fn obtain_by_dns(
        &self,
        names: &[CertName],
        records: &dyn Dns01,
    ) -> Result<Obtained, AcmeError> {
        self.obtain_with(names, ChallengeKind::Dns01, &StoreOnly, Some(records))
            .await
    }

    /// [`Client::obtain`], with each answer also handed to `answers` after it is written to the
    /// store and before the CA is told to check it (the daemon uploads it into the sidecars
    /// that serve the names), and handed again emptied once the order is over. dns-01 answers
    /// go to `records` instead, removed again once the order is over.
    pub(crate) async fn obtain_with(
        &self,
        names: &[CertName],
        kind: ChallengeKind,
        answers: &dyn Answers,
        records: Option<&dyn Dns01>,
    ) -> Result<Obtained, AcmeError> {
        let mut published = Published::new(&self.store);
        let result = match (kind, records) {
            (ChallengeKind::Dns01, None) => Err(AcmeError {
                cause: None,
                step: None,
                permanent: true,
                message:
                    "dns-01 needs a DNS provider (--acme-dns-rfc2136-server or --acme-dns-hook)"
                        .to_string(),
            }),
            (ChallengeKind::Dns01, Some(records)) => {
                let result = self
                    .order(names, kind, &mut published, answers, Some(records))
                    .await;
                records.cleanup().await;
                result
            }
            _ => self.order(names, kind, &mut published, answers, None).await,
        };
        let withdrawn = published.clear();
        if !withdrawn.is_empty() {
            answers.publish(withdrawn).await;
        }
        result
    }

    /// Places the order, answers its challenges and downloads the certificate.
    async fn order(
        &self,
        names: &[CertName],
        kind: ChallengeKind,
        published: &mut Published<'_>,
        answers: &dyn Answers,
        records: Option<&dyn Dns01>,
    ) -> Result<Obtained, AcmeError> {
        let list = names
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let identifiers: Vec<Identifier> = names
            .iter()
            .map(|n| Identifier::Dns(n.to_string()))
            .collect();
        let mut order = self
            .account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| classify(&format!("ordering a certificate for {list}"), e))?;
        match records {
            Some(records) => authorize_by_dns(&mut order, &list, records).await?,
            None => {
                let mut authorizations = order.authorizations();
                while let Some(authz) = authorizations.next().await {
                    let authz =
                        authz.map_err(|e| classify(&format!("authorization for {list}"), e))?;
                    if authz.status != instant_acme::AuthorizationStatus::Valid {
                        authorize(authz, kind, published, answers).await?;
                    }
                }
            }
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(2.0)
            .timeout(ORDER_TIMEOUT);
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| classify(&format!("validating {list} by {kind}"), e))?;
        if status != OrderStatus::Ready {
            return Err(transient(format!(
                "validating {list} by {kind}: the order is {status:?}"
            )));
        }
        let (key, csr) = certificate_request(names, &list)?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| classify(&format!("finalizing the order for {list}"), e))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| classify(&format!("downloading the certificate for {list}"), e))?;
        Ok(Obtained {
            chain_pem,
            key_pem: key.serialize_pem(),
        })
    }
}

/// Proves control of every pending authorization's name by dns-01: every TXT value written
/// (`example.com` and `*.example.com` put two values side by side at one name) and seen where
/// `records` checks, and only then the CA told to look, each challenge in turn.
async fn authorize_by_dns(
    order: &mut instant_acme::Order,
    list: &str,
    records: &dyn Dns01,
) -> Result<(), AcmeError> {
    let fail = |e| classify(&format!("authorization for {list}"), e);
    let mut wanted = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(fail)?;
        if authz.status != instant_acme::AuthorizationStatus::Pending {
            continue;
        }
        let name = dns_name(authz.identifier().identifier)?;
        let challenge = authz
            .challenge(ChallengeType::Dns01)
            .ok_or_else(|| no_challenge(ChallengeKind::Dns01, &name))?;
        wanted.push((name, challenge.key_authorization().dns_value()));
    }
    if wanted.is_empty() {
        return Ok(());
    }
    records.present(wanted).await?;
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(fail)?;
        if authz.status != instant_acme::AuthorizationStatus::Pending {
            continue;
        }
        let name = dns_name(authz.identifier().identifier)?;
        let mut challenge = authz
            .challenge(ChallengeType::Dns01)
            .ok_or_else(|| no_challenge(ChallengeKind::Dns01, &name))?;
        challenge
            .set_ready()
            .await
            .map_err(|e| classify(&format!("dns-01 challenge for {name}"), e))?;
    }
    Ok(())
}

fn no_challenge(kind: ChallengeKind, name: &DnsName) -> AcmeError {
    AcmeError {
        cause: None,
        step: Some("ca"),
        permanent: true,
        message: format!("the CA offers no {kind} challenge for {name}"),
    }
}

/// Where dns-01 records go: the daemon's DNS provider ([`crate::acme::dns01`]).
pub trait Dns01: Send + Sync {
    /// Writes a TXT record `_acme-challenge.<name>` (or where its CNAME points) with each value
    /// and waits until every one can be seen; what was written is remembered for
    /// [`Dns01::cleanup`], also when a later one fails.
    fn present(
        &self,
        records: Vec<(DnsName, String)>,
    ) -> Pin<Box<dyn Future<Output = Result<(), AcmeError>> + Send + '_>>;

    /// Removes what [`Dns01::present`] wrote; failures are the implementor's to log.
    fn cleanup(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Proves control of one pending authorization's name by `kind`: the answer published (the
/// store, then `answers`), then the CA told to check it.
async fn authorize(
    mut authz: AuthorizationHandle<'_>,
    kind: ChallengeKind,
    published: &mut Published<'_>,
    answers: &dyn Answers,
) -> Result<(), AcmeError> {
    let name = dns_name(authz.identifier().identifier)?;
    let mut challenge = authz
        .challenge(challenge_type(kind))
        .ok_or_else(|| no_challenge(kind, &name))?;
    let key_authorization = challenge.key_authorization();
    let answer = match kind {
        ChallengeKind::Http01 => published.http01(&challenge.token, key_authorization.as_str())?,
        ChallengeKind::TlsAlpn01 => {
            published.tls_alpn01(&name, key_authorization.digest().as_ref())?
        }
        ChallengeKind::Dns01 => return Err(no_challenge(kind, &name)),
    };
    answers.publish(vec![answer]).await;
    challenge
        .set_ready()
        .await
        .map_err(|e| classify(&format!("{kind} challenge for {name}"), e))
}

/// The name an authorization is about: only DNS names are ordered, so anything else the CA
/// asks about is an error no retry fixes.
fn dns_name(identifier: &Identifier) -> Result<DnsName, AcmeError> {
    match identifier {
        Identifier::Dns(name) => DnsName::from_str(name).map_err(|e| AcmeError {
            cause: None,
            step: None,
            permanent: true,
            message: format!("the CA asked about {name:?}: {e}"),
        }),
        other => Err(AcmeError {
            cause: None,
            step: None,
            permanent: true,
            message: format!("the CA asked about {other:?}, not a DNS name"),
        }),
    }
}

/// The ACME challenge type of a `challenge` label value.
fn challenge_type(kind: ChallengeKind) -> ChallengeType {
    match kind {
        ChallengeKind::Http01 => ChallengeType::Http01,
        ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        ChallengeKind::Dns01 => ChallengeType::Dns01,
    }
}

/// A new key and the certificate request for `names` signed with it (no subject: the names
/// are in its subject alternative names). `list`: the names as errors show them.
fn certificate_request(
    names: &[CertName],
    list: &str,
) -> Result<(rcgen::KeyPair, rcgen::CertificateSigningRequest), AcmeError> {
    let key =
        rcgen::KeyPair::generate().map_err(|e| transient(format!("generating a key: {e}")))?;
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| transient(format!("certificate request for {list}: {e}")))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| transient(format!("certificate request for {list}: {e}")))?;
    Ok((key, csr))
}

/// Where challenge answers go besides the store.
pub(crate) trait Answers: Send + Sync {
    /// Makes `files` visible to whoever answers the CA; failures are the implementor's to log
    /// (an answer that did not arrive fails the challenge, which is reported).
    fn publish(&self, files: Vec<AnswerFile>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Answers served from the store alone (a sidecar mounting it, or a test).
pub(crate) struct StoreOnly;

impl Answers for StoreOnly {
    fn publish(&self, _files: Vec<AnswerFile>) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// The challenge answers written for one order, removed when it ends.
struct Published<'a> {
    store: &'a Store,
    tokens: Vec<String>,
    names: Vec<DnsName>,
}

impl<'a> Published<'a> {
    fn new(store: &'a Store) -> Self {
        Self {
            store,
            tokens: Vec::new(),
            names: Vec::new(),
        }
    }

    fn http01(&mut self, token: &str, key_authorization: &str) -> Result<AnswerFile, AcmeError> {
        self.store
            .write_http01(token, key_authorization)
            .map_err(|e| transient(format!("publishing the HTTP-01 answer: {e}")))?;
        self.tokens.push(token.to_string());
        Ok(AnswerFile {
            path: http01_path(token),
            bytes: key_authorization.as_bytes().to_vec(),
        })
    }

    /// The TLS-ALPN-01 certificate (RFC 8737): self-signed for `name`, with the critical
    /// acmeIdentifier extension holding SHA-256 of the key authorization.
    fn tls_alpn01(&mut self, name: &DnsName, digest: &[u8]) -> Result<AnswerFile, AcmeError> {
        let fail = |e: String| transient(format!("the TLS-ALPN-01 certificate for {name}: {e}"));
        let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
            .map_err(|e| fail(e.to_string()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
        let pem = format!("{}{}", cert.pem(), key.serialize_pem());
        self.store
            .write_tls_alpn01(name, pem.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
        self.names.push(name.clone());
        Ok(AnswerFile {
            path: tls_alpn01_path(name),
            bytes: pem.into_bytes(),
        })
    }

    /// Removes every answer from the store; returns them emptied, for [`Answers::publish`].
    fn clear(&mut self) -> Vec<AnswerFile> {
        let mut withdrawn = Vec::new();
        for token in self.tokens.drain(..) {
            let _ = self.store.remove_http01(&token);
            withdrawn.push(http01_path(&token));
        }
        for name in self.names.drain(..) {
            let _ = self.store.remove_tls_alpn01(&name);
            withdrawn.push(tls_alpn01_path(&name));
        }
        withdrawn
            .into_iter()
            .map(|path| AnswerFile {
                path,
                bytes: Vec::new(),
            })
            .collect()
    }
}

fn http01_path(token: &str) -> String {
    use crate::layout::{HTTP01_DIR, HTTP01_TOKENS};
    format!("{HTTP01_DIR}/{HTTP01_TOKENS}/{token}")
}

fn tls_alpn01_path(name: &DnsName) -> String {
    format!("{}/{name}.pem", crate::layout::TLS_ALPN01_DIR)
}

/// instant-acme's HTTP client: one HTTP/1.1 connection per exchange over rustls, trusting only
/// `roots` (ACME traffic is a few requests per certificate; no pool needed). Every error names
/// the URL and the step that failed.
pub struct Http {
    tls: Arc<rustls::ClientConfig>,
}

impl Http {
    pub fn new(roots: RootCertStore) -> Self {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap_or_else(|_| unreachable!("the provider supports the default TLS versions"))
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls: Arc::new(config),
        }
    }
}

type HttpResult = Result<BytesResponse, instant_acme::Error>;

impl HttpClient for Http {
    fn request(
        &self,
        req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = HttpResult> + Send>> {
        let tls = self.tls.clone();
        Box::pin(async move {
            let url = req.uri().to_string();
            let fail = |what: String| instant_acme::Error::Other(format!("{url}: {what}").into());
            match tokio::time::timeout(HTTP_TIMEOUT, send(tls, req)).await {
                Ok(Ok(rsp)) => Ok(BytesResponse::from(rsp)),
                Ok(Err(e)) => Err(fail(e)),
                Err(_) => Err(fail(format!("no response within {HTTP_TIMEOUT:?}"))),
            }
        })
    }
}

/// Sends `req` (an absolute `https://` URL) on a fresh connection.
async fn send(
    tls: Arc<rustls::ClientConfig>,
    mut req: Request<BodyWrapper<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, String> {
    let uri = req.uri().clone();
    if uri.scheme_str() != Some("https") {
        return Err("only https URLs are used for ACME".to_string());
    }
    let host = uri.host().ok_or("no host in the URL")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| format!("connect to {host}:{port}: {e}"))?;
    // hyper writes a request's head and body apart: without this, Nagle's algorithm and the
    // server's delayed ACK cost 40 ms per POST.
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
        .map_err(|e| format!("server name {host}: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let authority = uri.authority().map_or(host, |a| a.to_string());
    *req.uri_mut() = uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| format!("request path: {e}"))?;
    req.headers_mut().insert(
        http::header::HOST,
        authority.parse().map_err(|e| format!("Host: {e}"))?,
    );
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_as_the_account_file_is_refused_not_waited_on() {
        use shared::fs::testing::{mkfifo, within_async};
        let dir = std::env::temp_dir().join(format!("acme-account-fifo-{}", std::process::id()));
        let store = Store::new(&dir);
        let path = store.account_path();
        std::fs::create_dir_all(path.parent().expect("acme dir")).expect("create the store");
        let _ = std::fs::remove_file(&path);
        mkfifo(&path);
        // Nothing listens on the directory's address: the account file is read before any call.
        let opened = within_async("the account file", move || async move {
            Client::open(
                "https://127.0.0.1:9/directory",
                RootCertStore::empty(),
                "ops@example.org",
                store,
            )
            .await
            .map(|_| ())
        });
        let e = opened.expect_err("a FIFO is refused");
        assert_eq!(
            e.message,
            format!("{}: is a FIFO, not a regular file", path.display())
        );
        assert!(!e.permanent);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn challenge_kinds_parse_and_render() {
        for k in [
            ChallengeKind::Http01,
            ChallengeKind::TlsAlpn01,
            ChallengeKind::Dns01,
        ] {
            assert_eq!(k.to_string().parse::<ChallengeKind>(), Ok(k));
        }
        assert_eq!(ChallengeKind::default(), ChallengeKind::Http01);
        assert!("dns-02".parse::<ChallengeKind>().is_err());
    }

    #[test]
    fn only_dns_names_are_authorized_and_anything_else_is_permanent() {
        let name = dns_name(&Identifier::Dns("a.example".into())).expect("a DNS name");
        assert_eq!(name.as_str(), "a.example");
        let e = dns_name(&Identifier::Dns("a..example".into())).expect_err("not a name");
        assert!(
            e.permanent && e.message.starts_with("the CA asked about \"a..example\": "),
            "{e}"
        );
        let ip = Identifier::Ip(std::net::Ipv4Addr::LOCALHOST.into());
        let e = dns_name(&ip).expect_err("an IP address");
        assert!(
            e.permanent && e.message.ends_with(", not a DNS name"),
            "{e}"
        );
        assert_eq!(challenge_type(ChallengeKind::Http01), ChallengeType::Http01);
        assert_eq!(
            challenge_type(ChallengeKind::TlsAlpn01),
            ChallengeType::TlsAlpn01
        );
    }

    #[test]
    fn the_certificate_request_names_every_name_and_nothing_else() {
        use x509_parser::prelude::FromDer;
        let names: Vec<CertName> = ["a.example", "*.b.example"]
            .iter()
            .map(|n| n.parse().expect("name"))
            .collect();
        let (key, csr) = certificate_request(&names, "a.example,*.b.example").expect("csr");
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(csr.der())
                .expect("a DER request");
        req.verify_signature().expect("signed with its key");
        assert_eq!(
            &*req
                .certification_request_info
                .subject_pki
                .subject_public_key
                .data,
            key.public_key_raw()
        );
        assert_eq!(req.certification_request_info.subject.iter().count(), 0);
        let mut sans = Vec::new();
        for ext in req.requested_extensions().into_iter().flatten() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) = ext {
                for n in &san.general_names {
                    sans.push(n.to_string());
                }
            }
        }
        assert_eq!(sans, ["DNSName(a.example)", "DNSName(*.b.example)"]);
    }

    #[test]
    fn refused_names_are_permanent_failed_challenges_are_not() {
        let problem = |t: &str| {
            instant_acme::Error::Api(instant_acme::Problem {
                r#type: Some(format!("urn:ietf:params:acme:error:{t}")),
                detail: Some("x".into()),
                status: Some(400),
                subproblems: Vec::new(),
            })
        };
        assert!(classify("o", problem("rejectedIdentifier")).permanent);
        assert!(classify("o", problem("malformed")).permanent);
        assert!(!classify("o", problem("unauthorized")).permanent);
        assert!(!classify("o", problem("connection")).permanent);
        assert!(!classify("o", problem("rateLimited")).permanent);
        let e = classify("ordering a.example", problem("caa"));
        assert!(
            e.permanent && e.message.starts_with("ordering a.example: "),
            "{e}"
        );
    }
}
