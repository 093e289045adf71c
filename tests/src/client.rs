//! Clients as a user's would be: rustls configs (trusting a CA, or any certificate for self-signed
//! mode), a TLS connect with SNI and ALPN, HTTP/1.1 and HTTP/2 over that with hyper's client
//! connections, raw HTTP/1.1 bytes for requests a well-behaved client cannot send, and plain HTTP
//! for the admin listener. Every network step is under [`STEP`].

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::backend::pattern;
use crate::wait::{within, STEP};

/// Error type of request bodies built here.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body: full, empty or streamed.
pub type Body = BoxBody<Bytes, BoxError>;

/// ALPN offering both protocols, h2 preferred, as browsers and curl do.
pub const ALPN_H2_H1: &[&str] = &["h2", "http/1.1"];
/// ALPN offering only HTTP/1.1.
pub const ALPN_H1: &[&str] = &["http/1.1"];

/// The one crypto provider of this workspace, named explicitly.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Which server certificates a client accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only chains to this CA (normal verification, including the name).
    Ca(CertificateDer<'static>),
    /// Anything (for self-signed mode, where the test inspects the certificate instead).
    AnyCert,
}

/// A client config with TLS 1.2 and 1.3, `trust`, and `alpn`.
pub fn config(trust: Trust, alpn: &[&str]) -> Arc<ClientConfig> {
    config_with_versions(trust, alpn, rustls::ALL_VERSIONS)
}

/// A client config limited to `versions`.
pub fn config_with_versions(
    trust: Trust,
    alpn: &[&str],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    config_with(trust, alpn, versions, provider())
}

/// A TLS 1.3 and 1.2 client config offering only the key-exchange `groups`, in that order.
pub fn config_with_groups(
    trust: Trust,
    alpn: &[&str],
    groups: &[&'static dyn rustls::crypto::SupportedKxGroup],
) -> Arc<ClientConfig> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = groups.to_vec();
    config_with(trust, alpn, rustls::ALL_VERSIONS, Arc::new(p))
}

/// A TLS 1.3 and 1.2 client config offering only the cipher `suites`, in that order.
pub fn config_with_suites(
    trust: Trust,
    alpn: &[&str],
    suites: &[rustls::SupportedCipherSuite],
) -> Arc<ClientConfig> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = suites.to_vec();
    let versions: Vec<_> = rustls::ALL_VERSIONS
        .iter()
        .copied()
        .filter(|v| suites.iter().any(|s| s.version() == *v))
        .collect();
    config_with(trust, alpn, &versions, Arc::new(p))
}

fn config_with(
    trust: Trust,
    alpn: &[&str],
    versions: &[&'static SupportedProtocolVersion],
    offered: Arc<CryptoProvider>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(offered)
        .with_protocol_versions(versions)
        .expect("the provider supports these TLS versions");
    let mut config = match trust {
        Trust::Ca(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca).expect("add test CA to roots");
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::AnyCert => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// Accepts any certificate but still checks the handshake signatures, so the peer must hold the
/// key of the certificate it presents.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TCP connect plus TLS handshake with SNI `server_name`; the error if either fails.
pub async fn try_tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(config).connect(name, tcp).await
}

/// TCP connect plus TLS handshake, panicking (with the reason) if it fails or takes over [`STEP`].
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> TlsStream<TcpStream> {
    within(
        STEP,
        "TLS connect to the sidecar",
        try_tls_connect(addr, server_name, config),
    )
    .await
    .unwrap_or_else(|e| panic!("TLS connect to {addr} as {server_name}: {e}"))
}

/// The certificate the server presented on `tls`.
pub fn peer_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server presented a certificate")
        .clone()
        .into_owned()
}

/// The ALPN protocol negotiated on `tls`, as text.
pub fn alpn(tls: &TlsStream<TcpStream>) -> Option<String> {
    tls.get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

/// One HTTP connection through the sidecar, speaking whatever ALPN negotiated.
pub struct HttpConn {
    sender: Sender,
    authority: String,
    alpn: Option<String>,
    driver: JoinHandle<()>,
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// HTTP version of the response as the client saw it.
    pub version: Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// The complete body.
    pub body: Bytes,
}

impl Reply {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl HttpConn {
    /// Connects to the sidecar at `addr` with SNI `server_name` and starts HTTP/2 if ALPN chose
    /// `h2`, else HTTP/1.1.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> HttpConn {
        let tls = tls_connect(addr, server_name, config).await;
        Self::over(tls, format!("{server_name}:{}", addr.port())).await
    }

    /// Starts HTTP on an established TLS stream; `authority` is sent as `Host` / `:authority`.
    pub async fn over(tls: TlsStream<TcpStream>, authority: String) -> HttpConn {
        let alpn = alpn(&tls);
        let io = TokioIo::new(tls);
        let (sender, driver) = if alpn.as_deref() == Some("h2") {
            let (sender, conn) = within(
                STEP,
                "HTTP/2 handshake",
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io),
            )
            .await
            .expect("HTTP/2 handshake");
            (
                Sender::H2(sender),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (sender, conn) = within(
                STEP,
                "HTTP/1.1 handshake",
                hyper::client::conn::http1::handshake(io),
            )
            .await
            .expect("HTTP/1.1 handshake");
            (
                Sender::H1(sender),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        };
        HttpConn {
            sender,
            authority,
            alpn,
            driver,
        }
    }

    /// Another handle on this HTTP/2 connection, for concurrent streams (`None` for HTTP/1.1).
    pub fn h2_sender(&self) -> Option<hyper::client::conn::http2::SendRequest<Body>> {
        match &self.sender {
            Sender::H2(sender) => Some(sender.clone()),
            Sender::H1(_) => None,
        }
    }

    /// The negotiated ALPN protocol.
    pub fn alpn(&self) -> Option<&str> {
        self.alpn.as_deref()
    }

    /// Builds a request for `path` with the URI form the protocol needs (absolute for h2).
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        match self.sender {
            Sender::H1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header("host", &self.authority),
            Sender::H2(_) => Request::builder()
                .method(method)
                .uri(format!("https://{}{path}", self.authority))
                .version(Version::HTTP_2),
        }
    }

    /// Sends `req` and returns the response head (body still streaming), under [`STEP`].
    pub async fn send(&mut self, req: Request<Body>) -> Response<Incoming> {
        self.send_within(req, STEP).await
    }

    /// Sends `req` and returns the response head, allowing `limit` (for large uploads, whose
    /// response comes only after the whole body went through).
    pub async fn send_within(
        &mut self,
        req: Request<Body>,
        limit: std::time::Duration,
    ) -> Response<Incoming> {
        let what = format!("response head for {} {}", req.method(), req.uri());
        let result = match &mut self.sender {
            Sender::H1(s) => {
                within(STEP, "HTTP/1.1 connection ready", s.ready())
                    .await
                    .expect("HTTP/1.1 connection ready");
                within(limit, &what, s.send_request(req)).await
            }
            Sender::H2(s) => {
                within(STEP, "HTTP/2 connection ready", s.ready())
                    .await
                    .expect("HTTP/2 connection ready");
                within(limit, &what, s.send_request(req)).await
            }
        };
        result.unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Sends `req` and reads the whole response.
    pub async fn fetch(&mut self, req: Request<Body>) -> Reply {
        let resp = self.send(req).await;
        read_reply(resp).await
    }

    /// `GET path` and the whole response.
    pub async fn get(&mut self, path: &str) -> Reply {
        let req = self
            .request(Method::GET, path)
            .body(empty())
            .expect("GET request");
        self.fetch(req).await
    }

    /// Waits until the server closes the connection (the client never closes it on its own).
    pub async fn wait_closed(&mut self, limit: std::time::Duration) {
        within(
            limit,
            "the sidecar to close the connection",
            &mut self.driver,
        )
        .await
        .expect("connection driver task");
    }
}

/// Reads a response's whole body under [`STEP`].
pub async fn read_reply(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = within(STEP, "response body", body.collect())
        .await
        .unwrap_or_else(|e| panic!("reading {} response body: {e}", parts.status))
        .to_bytes();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    }
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body of `data`.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// `total` bytes of [`pattern`] generated lazily in 64 KiB chunks, never held whole.
pub fn pattern_stream(total: u64) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let stream = futures_util::stream::unfold(0u64, move |off| async move {
        if off >= total {
            return None;
        }
        let n = (total - off).min(CHUNK);
        let frame = Frame::data(Bytes::from(pattern(off, n as usize)));
        Some((Ok::<_, BoxError>(frame), off + n))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// A response read off raw bytes.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code from the status line.
    pub status: u16,
    /// The whole head (status line and headers) as text.
    pub head: String,
    /// The body (by `Content-Length`, else until the connection closed).
    pub body: Vec<u8>,
}

/// Writes `request` verbatim on `stream` (reading concurrently, so a server that answers and
/// closes before reading everything still gets its answer seen) and reads one response.
/// `None` if the connection closed without a complete response head.
pub async fn raw_exchange<S>(stream: S, request: &[u8]) -> Option<RawResponse>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        wr
    });
    let resp = within(STEP, "raw HTTP/1.1 response", async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        });
        let mut body = buf[head_end..].to_vec();
        loop {
            if length.is_some_and(|n| body.len() >= n) {
                break;
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        Some(RawResponse { status, head, body })
    })
    .await;
    writer.abort();
    resp
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `GET path` over plain HTTP/1.1 (the admin listener), with `Connection: close`.
pub async fn plain_get(addr: SocketAddr, path: &str) -> Reply {
    let tcp = within(
        STEP,
        "connect to the admin listener",
        TcpStream::connect(addr),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to admin listener {addr}: {e}"));
    let (mut sender, conn) = within(
        STEP,
        "admin HTTP/1.1 handshake",
        hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(tcp)),
    )
    .await
    .expect("admin HTTP/1.1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .uri(path)
        .header("host", addr.to_string())
        .header("connection", "close")
        .body(empty())
        .expect("admin request");
    let resp = within(STEP, "admin response", sender.send_request(req))
        .await
        .unwrap_or_else(|e| panic!("admin GET {path}: {e}"));
    read_reply(resp).await
}

/// The bytes of a real ClientHello (one TLS record) for `localhost`, to send truncated.
pub fn client_hello_bytes() -> Vec<u8> {
    let name = ServerName::try_from("localhost").expect("server name");
    let mut conn = rustls::ClientConnection::new(config(Trust::AnyCert, ALPN_H2_H1), name)
        .expect("client connection");
    let mut out = Vec::new();
    conn.write_tls(&mut out).expect("serialize ClientHello");
    out
}

/// Reads (and ignores) whatever arrives on `rd` until the peer closes it (EOF or reset);
/// panics naming `what` if that takes longer than `limit`.
pub async fn closed_within(
    mut rd: impl tokio::io::AsyncRead + Unpin,
    limit: std::time::Duration,
    what: &str,
) {
    within(limit, what, async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}
