//! HTTP/3 for the tests: a real client (quinn + h3 + h3-quinn on the workspace's one rustls
//! provider, aws-lc-rs) and the raw QUIC pieces hostile tests need.
//!
//! - [`H3Conn`]: one QUIC connection with HTTP/3 on it; [`Requester`]s cloned from it send any
//!   number of concurrent requests (a body streamed or not, trailers or not) and read whole
//!   responses with their trailers.
//! - [`RawStream`]: a request stream written by hand on an HTTP/3 connection (a head cut short,
//!   a stream never finished), and what the server did to it.
//! - [`SilentConn`]: a QUIC handshake, then nothing at all (not even HTTP/3's SETTINGS).
//! - [`StalledHandshake`]: a real client behind a UDP relay that forwards its first flight and
//!   drops the rest, so the server's half of the handshake never completes.
//! - [`capture_initials`] and [`initial_flood`]: genuine QUIC Initial datagrams, each resent from
//!   its own UDP socket (its own source port), and what came back (Retry or a handshake).
//!
//! Every network step is under a deadline; a hang panics naming what hung.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use rustls_pki_types::CertificateDer;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::backend::pattern;
use crate::client::{self, provider, Trust};
use crate::issuer::Issued;
use crate::wait::{within, STEP};

/// The ALPN token of HTTP/3 (RFC 9114 section 3.1).
pub const ALPN_H3: &[&str] = &["h3"];

/// The client's own QUIC idle timeout: far longer than any server limit a test sets, so a
/// connection that ends was ended by the server, not by the client giving up.
const CLIENT_IDLE: Duration = Duration::from_secs(60);

/// Size of the chunks an upload is written in.
const CHUNK: usize = 64 * 1024;

/// An HTTP/3 request stream of the client ([`Requester::open`]): `recv_data` reads the body.
pub type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// HTTP/3's request sender, as h3-quinn types it.
type H3Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// A rustls client config for HTTP/3: TLS 1.3 only (QUIC has no other), ALPN `h3`, trusting
/// `trust`, presenting `identity` as the client certificate if given.
pub fn config(trust: Trust, identity: Option<&Issued>) -> Arc<ClientConfig> {
    let base = client::config_with_versions(trust, ALPN_H3, &[&rustls::version::TLS13]);
    let mut config = (*base).clone();
    if let Some(id) = identity {
        let key = CertifiedKey::from_der(vec![id.der.clone()], id.key_der(), &provider())
            .expect("client certificate and its key");
        config.client_auth_cert_resolver = Arc::new(FixedClientCert(Arc::new(key)));
    }
    Arc::new(config)
}

/// Presents one certificate to every server that asks.
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// quinn's client config over `tls`, with the client's idle timeout at [`CLIENT_IDLE`] and no
/// keep-alives (a silent client must really be silent).
fn quic_config(tls: Arc<ClientConfig>) -> quinn::ClientConfig {
    let crypto = QuicClientConfig::try_from(tls).expect("a TLS 1.3 config with AES-128-GCM");
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(CLIENT_IDLE.try_into().expect("idle timeout in range")));
    transport.keep_alive_interval(None);
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    config
}

/// A client endpoint on its own UDP socket at `ip` (an ephemeral port).
fn endpoint(ip: IpAddr) -> quinn::Endpoint {
    quinn::Endpoint::client(SocketAddr::new(ip, 0))
        .unwrap_or_else(|e| panic!("bind a QUIC client socket on {ip}: {e}"))
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The QUIC handshake failed (refused, closed by the peer, a TLS alert...).
    Quic(quinn::ConnectionError),
    /// The QUIC connection came up, but HTTP/3 could not start on it.
    H3(h3::error::ConnectionError),
    /// Nothing decided within the time allowed (a server that does not answer at all).
    TimedOut(Duration),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Quic(e) => write!(f, "QUIC handshake failed: {e}"),
            ConnectError::H3(e) => write!(f, "HTTP/3 setup failed: {e}"),
            ConnectError::TimedOut(d) => write!(f, "no QUIC handshake within {d:?}"),
        }
    }
}

/// Why one request failed.
#[derive(Debug)]
pub enum RequestError {
    /// HTTP/3 refused or broke the stream (GOAWAY received, stream reset, connection closed).
    H3(h3::error::StreamError),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::H3(e) => write!(f, "{e}"),
        }
    }
}

impl From<h3::error::StreamError> for RequestError {
    fn from(e: h3::error::StreamError) -> Self {
        RequestError::H3(e)
    }
}

impl RequestError {
    /// Whether the server had sent GOAWAY before this request could start (h3 refuses to open a
    /// stream then).
    pub fn is_goaway(&self) -> bool {
        matches!(
            self,
            RequestError::H3(h3::error::StreamError::RemoteClosing { .. })
        )
    }
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Upload {
    /// No body.
    Empty,
    /// These bytes, in one DATA frame.
    Bytes(Bytes),
    /// `n` bytes of [`pattern`], generated and written 64 KiB at a time.
    Pattern(u64),
}

/// A whole HTTP/3 response.
#[derive(Debug)]
pub struct H3Reply {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The complete body.
    pub body: Bytes,
    /// The trailers, if the response had any.
    pub trailers: Option<HeaderMap>,
}

impl H3Reply {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A trailer's value as text.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|t| t.get(name))
            .and_then(|v| v.to_str().ok())
    }
}

/// One QUIC connection to the sidecar with HTTP/3 on it. Closed (and its socket released) on
/// drop.
pub struct H3Conn {
    endpoint: quinn::Endpoint,
    quic: quinn::Connection,
    requester: Requester,
    driver: JoinHandle<h3::error::ConnectionError>,
}

/// Sends requests on an [`H3Conn`]; cheap to clone, the clones share the connection (each
/// request its own stream), so requests can run in spawned tasks concurrently.
#[derive(Clone)]
pub struct Requester {
    sender: H3Sender,
    authority: String,
}

impl H3Conn {
    /// Connects to `addr` from an ephemeral port on 127.0.0.1 with SNI `server_name`; panics
    /// (with the reason) if the QUIC handshake or the HTTP/3 setup fails or takes over [`STEP`].
    pub async fn connect(addr: SocketAddr, server_name: &str, tls: Arc<ClientConfig>) -> H3Conn {
        Self::connect_from(Ipv4Addr::LOCALHOST.into(), addr, server_name, tls).await
    }

    /// Like [`H3Conn::connect`], from a socket bound to `local` (another loopback address, to be
    /// another client IP).
    pub async fn connect_from(
        local: IpAddr,
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
    ) -> H3Conn {
        Self::try_connect_from(local, addr, server_name, tls, STEP)
            .await
            .unwrap_or_else(|e| panic!("HTTP/3 connect to {addr} as {server_name}: {e}"))
    }

    /// Connects from 127.0.0.1; the error if the handshake fails or does not finish in `limit`.
    pub async fn try_connect(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
        limit: Duration,
    ) -> Result<H3Conn, ConnectError> {
        Self::try_connect_from(Ipv4Addr::LOCALHOST.into(), addr, server_name, tls, limit).await
    }

    /// Connects from `local`; the error if the handshake fails or does not finish in `limit`.
    pub async fn try_connect_from(
        local: IpAddr,
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
        limit: Duration,
    ) -> Result<H3Conn, ConnectError> {
        let endpoint = endpoint(local);
        let connecting = endpoint
            .connect_with(quic_config(tls), addr, server_name)
            .unwrap_or_else(|e| panic!("start a QUIC connection to {addr}: {e}"));
        let setup = async {
            let quic = connecting.await.map_err(ConnectError::Quic)?;
            let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
                .await
                .map_err(ConnectError::H3)?;
            let driver = tokio::spawn(async move { driver.wait_idle().await });
            Ok::<_, ConnectError>((quic, sender, driver))
        };
        let (quic, sender, driver) = tokio::time::timeout(limit, setup)
            .await
            .map_err(|_| ConnectError::TimedOut(limit))??;
        Ok(H3Conn {
            endpoint,
            quic,
            requester: Requester {
                sender,
                authority: format!("{server_name}:{}", addr.port()),
            },
            driver,
        })
    }

    /// A handle for sending requests, e.g. from another task.
    pub fn requester(&self) -> Requester {
        self.requester.clone()
    }

    /// The QUIC connection underneath (stats, close reason, raw streams).
    pub fn quic(&self) -> &quinn::Connection {
        &self.quic
    }

    /// The certificate the server presented.
    pub fn peer_cert(&self) -> CertificateDer<'static> {
        peer_cert(&self.quic)
    }

    /// The ALPN protocol the handshake agreed on.
    pub fn alpn(&self) -> Option<String> {
        self.quic
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol)
            .map(|p| String::from_utf8_lossy(&p).into_owned())
    }

    /// See [`Requester::request`].
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        self.requester.request(method, path)
    }

    /// See [`Requester::get`].
    pub async fn get(&self, path: &str) -> H3Reply {
        self.requester.get(path).await
    }

    /// See [`Requester::try_get`].
    pub async fn try_get(&self, path: &str) -> Result<H3Reply, RequestError> {
        self.requester.try_get(path).await
    }

    /// See [`Requester::send`].
    pub async fn send(
        &self,
        head: Request<()>,
        body: Upload,
        trailers: Option<HeaderMap>,
        limit: Duration,
    ) -> H3Reply {
        self.requester.send(head, body, trailers, limit).await
    }

    /// See [`Requester::try_send`].
    pub async fn try_send(
        &self,
        head: Request<()>,
        body: Upload,
        trailers: Option<HeaderMap>,
        limit: Duration,
    ) -> Result<H3Reply, RequestError> {
        self.requester.try_send(head, body, trailers, limit).await
    }

    /// Opens a request stream by hand and writes `bytes` on it, without finishing it (it stays
    /// open as long as the [`RawStream`] lives: dropping it would end it, mid-frame).
    pub async fn open_raw(&self, bytes: &[u8]) -> RawStream {
        self.try_open_raw(bytes)
            .await
            .unwrap_or_else(|e| panic!("open a raw request stream: {e}"))
    }

    /// Like [`H3Conn::open_raw`]; the error if the connection is gone.
    pub async fn try_open_raw(&self, bytes: &[u8]) -> Result<RawStream, String> {
        let (mut send, recv) = within(STEP, "open a raw request stream", self.quic.open_bi())
            .await
            .map_err(|e| e.to_string())?;
        within(STEP, "write on a raw request stream", send.write_all(bytes))
            .await
            .map_err(|e| e.to_string())?;
        Ok(RawStream { send, recv })
    }

    /// Waits until the server closes the connection and returns how it did, panicking naming
    /// `what` if it is still open after `limit`.
    pub async fn wait_closed(&self, limit: Duration, what: &str) -> quinn::ConnectionError {
        within(limit, what, self.quic.closed()).await
    }

    /// Closes the connection now, from the client side (HTTP/3's H3_NO_ERROR).
    pub fn close(&self) {
        self.quic.close(H3_NO_ERROR.into(), b"client done");
    }

    /// Whether the HTTP/3 driver has seen the connection end.
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished() || self.quic.close_reason().is_some()
    }
}

impl Drop for H3Conn {
    fn drop(&mut self) {
        self.quic.close(H3_NO_ERROR.into(), b"client dropped");
        self.endpoint.close(H3_NO_ERROR.into(), b"client dropped");
        self.driver.abort();
    }
}

/// HTTP/3's "no error" code (RFC 9114 section 8.1).
pub const H3_NO_ERROR: u32 = 0x100;

impl Requester {
    /// A request head for `path` with the `https` scheme and the connection's authority (sent as
    /// `:authority`).
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.authority))
    }

    /// Sends `head` with no body and returns the stream with the response head read, for a
    /// test that reads the body as it arrives (server-sent events); panics on failure or after
    /// [`STEP`].
    pub async fn open(&self, head: Request<()>) -> (http::Response<()>, H3Stream) {
        let mut sender = self.sender.clone();
        let what = format!("HTTP/3 {} {}", head.method(), head.uri());
        let label = what.clone();
        within(STEP, &label, async move {
            let mut stream = sender
                .send_request(head)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            // A server done with the request may already have stopped the sending side.
            let _ = stream.finish().await;
            let resp = stream
                .recv_response()
                .await
                .unwrap_or_else(|e| panic!("{what}: response head: {e}"));
            (resp, stream)
        })
        .await
    }

    /// Sends `head` with no body and returns its stream at once, before any response: for a
    /// test that cancels requests. `None` when no stream could be opened within `limit` (the
    /// server gives no credit for another).
    pub async fn start(&self, head: Request<()>, limit: Duration) -> Option<H3Stream> {
        let mut sender = self.sender.clone();
        let what = format!("HTTP/3 {} {}", head.method(), head.uri());
        let mut stream = tokio::time::timeout(limit, sender.send_request(head))
            .await
            .ok()?
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let _ = within(STEP, &what, stream.finish()).await;
        Some(stream)
    }

    /// The authority requests carry (`SNI:port`).
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// `GET path` and the whole response, under [`STEP`]; panics if the request fails.
    pub async fn get(&self, path: &str) -> H3Reply {
        let head = self.request(Method::GET, path).body(()).expect("GET head");
        self.send(head, Upload::Empty, None, STEP).await
    }

    /// `GET path`: the whole response or why the request failed.
    pub async fn try_get(&self, path: &str) -> Result<H3Reply, RequestError> {
        let head = self.request(Method::GET, path).body(()).expect("GET head");
        self.try_send(head, Upload::Empty, None, STEP).await
    }

    /// Sends `head`, `body` and `trailers` and reads the whole response; panics if the
    /// exchange fails or takes over `limit`.
    pub async fn send(
        &self,
        head: Request<()>,
        body: Upload,
        trailers: Option<HeaderMap>,
        limit: Duration,
    ) -> H3Reply {
        let what = format!("HTTP/3 {} {}", head.method(), head.uri());
        self.try_send(head, body, trailers, limit)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Sends `head`, `body` (streamed while the response may already be arriving) and
    /// `trailers`, and reads the whole response with its trailers. An HTTP/3 failure is the
    /// error; taking over `limit` panics.
    pub async fn try_send(
        &self,
        head: Request<()>,
        body: Upload,
        trailers: Option<HeaderMap>,
        limit: Duration,
    ) -> Result<H3Reply, RequestError> {
        let what = format!("HTTP/3 exchange {} {}", head.method(), head.uri());
        let mut sender = self.sender.clone();
        within(limit, &what, async move {
            let stream = sender.send_request(head).await?;
            let (mut tx, mut rx) = stream.split();
            let upload = async move {
                write_body(&mut tx, body, trailers).await?;
                Ok::<_, RequestError>(tx)
            };
            let download = async move {
                let resp = rx.recv_response().await?;
                let (parts, ()) = resp.into_parts();
                let mut data = BytesMut::new();
                while let Some(mut chunk) = rx.recv_data().await? {
                    while chunk.has_remaining() {
                        let piece = chunk.chunk();
                        data.extend_from_slice(piece);
                        let n = piece.len();
                        chunk.advance(n);
                    }
                }
                let trailers = rx.recv_trailers().await?;
                Ok::<_, RequestError>(H3Reply {
                    status: parts.status,
                    headers: parts.headers,
                    body: data.freeze(),
                    trailers,
                })
            };
            // The upload's end and the response's may come in either order (a server may answer
            // before it read everything); the stream's send half lives until both are done.
            let (sent, reply) = tokio::join!(upload, download);
            let reply = reply?;
            drop(sent);
            Ok(reply)
        })
        .await
    }
}

async fn write_body(
    tx: &mut h3::client::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    body: Upload,
    trailers: Option<HeaderMap>,
) -> Result<(), RequestError> {
    match body {
        Upload::Empty => {}
        Upload::Bytes(bytes) => {
            if !bytes.is_empty() {
                tx.send_data(bytes).await?;
            }
        }
        Upload::Pattern(total) => {
            let mut off = 0u64;
            while off < total {
                let n = (total - off).min(CHUNK as u64) as usize;
                tx.send_data(Bytes::from(pattern(off, n))).await?;
                off += n as u64;
            }
        }
    }
    if let Some(trailers) = trailers {
        tx.send_trailers(trailers).await?;
    }
    // h3 0.0.8's `send_trailers` does not end the stream (its docs say otherwise): finish it
    // either way.
    tx.finish().await?;
    Ok(())
}

/// The certificate the server presented on `quic`.
pub fn peer_cert(quic: &quinn::Connection) -> CertificateDer<'static> {
    quic.peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned())
        .expect("the server presented a certificate")
}

/// The QPACK encoding (no dynamic table) of a `GET https://authority/` request head: static
/// table entries 17 (`:method GET`), 23 (`:scheme https`), 1 (`:path /`), and `:authority`
/// (entry 0) with a literal value.
fn qpack_get_head(authority: &str) -> Vec<u8> {
    assert!(
        authority.len() < 127,
        "authority too long for one-byte length"
    );
    let mut block = vec![0x00, 0x00, 0xc0 | 17, 0xc0 | 23, 0xc0 | 1];
    block.push(0x50); // literal with a static name reference, index 0
    block.push(authority.len() as u8);
    block.extend_from_slice(authority.as_bytes());
    block
}

/// A complete HTTP/3 HEADERS frame for `GET https://authority/`.
pub fn request_head_frame(authority: &str) -> Vec<u8> {
    let block = qpack_get_head(authority);
    assert!(
        block.len() < 64,
        "head too long for a one-byte frame length"
    );
    let mut frame = vec![0x01, block.len() as u8];
    frame.extend_from_slice(&block);
    frame
}

/// The first bytes of [`request_head_frame`]: the frame's type and length announce the whole
/// head, and then only its first few bytes follow (a slowloris head).
pub fn partial_request_head(authority: &str) -> Vec<u8> {
    let frame = request_head_frame(authority);
    frame[..5].to_vec()
}

/// A request stream written by hand.
pub struct RawStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// How the server ended its sending half of a [`RawStream`].
#[derive(Debug)]
pub enum SendHalf {
    /// RESET_STREAM with this code: the request was not served.
    Reset(u64),
    /// A normal end (FIN) after these bytes: a response (or, with no bytes, none at all).
    Finished(Vec<u8>),
    /// Still open when the other signal came (the client stops waiting a moment after it).
    Open,
    /// The whole connection ended.
    ConnectionLost(quinn::ConnectionError),
}

/// How the server ended a [`RawStream`]: both halves, as seen by the client.
#[derive(Debug)]
pub struct StreamEnd {
    /// What the server did with its sending half (the response side).
    pub response: SendHalf,
    /// STOP_SENDING's code, if the server asked the client to stop sending the request.
    pub stop_sending: Option<u64>,
}

impl StreamEnd {
    /// Whether the server reset the stream (RESET_STREAM on its sending half) and the
    /// connection lives on.
    pub fn is_reset(&self) -> bool {
        matches!(self.response, SendHalf::Reset(_))
    }
}

/// After the first sign of the server ending a stream, how long the client waits for the other
/// half's signal (both are sent in the same flight; this only absorbs scheduling).
const OTHER_HALF: Duration = Duration::from_millis(300);

impl RawStream {
    /// Writes more bytes on the stream.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), quinn::WriteError> {
        within(
            STEP,
            "write on a raw request stream",
            self.send.write_all(bytes),
        )
        .await
    }

    /// Waits until the server ends the stream in any way (its response half ended, or a
    /// STOP_SENDING), then briefly for the other half's signal; panics naming `what` if nothing
    /// happened within `limit`.
    pub async fn wait_end(&mut self, limit: Duration, what: &str) -> StreamEnd {
        let RawStream { send, recv } = self;
        let read = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match recv.read(&mut buf).await {
                    Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                    Ok(None) => return SendHalf::Finished(got),
                    Err(quinn::ReadError::Reset(code)) => {
                        return SendHalf::Reset(code.into_inner())
                    }
                    Err(quinn::ReadError::ConnectionLost(e)) => return SendHalf::ConnectionLost(e),
                    Err(e) => panic!("reading a raw request stream: {e}"),
                }
            }
        };
        let stopped = async {
            match send.stopped().await {
                Ok(Some(code)) => Some(code.into_inner()),
                // Finished and acknowledged, or the connection gone: no STOP_SENDING.
                Ok(None) | Err(_) => std::future::pending().await,
            }
        };
        tokio::pin!(read, stopped);
        within(limit, what, async {
            tokio::select! {
                response = &mut read => {
                    let stop_sending = tokio::time::timeout(OTHER_HALF, &mut stopped).await.ok().flatten();
                    StreamEnd { response, stop_sending }
                }
                code = &mut stopped => {
                    let response = tokio::time::timeout(OTHER_HALF, &mut read)
                        .await
                        .unwrap_or(SendHalf::Open);
                    StreamEnd { response, stop_sending: code }
                }
            }
        })
        .await
    }
}

/// A QUIC connection that completed its handshake (ALPN `h3`) and then sends nothing: no
/// HTTP/3 control stream, no SETTINGS, no request, no keep-alive.
pub struct SilentConn {
    endpoint: quinn::Endpoint,
    quic: quinn::Connection,
}

impl SilentConn {
    /// Connects to `addr` as `server_name`; panics if the handshake fails or takes over [`STEP`].
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<ClientConfig>,
    ) -> SilentConn {
        let endpoint = endpoint(Ipv4Addr::LOCALHOST.into());
        let connecting = endpoint
            .connect_with(quic_config(tls), addr, server_name)
            .unwrap_or_else(|e| panic!("start a QUIC connection to {addr}: {e}"));
        let quic = within(STEP, "a silent client's QUIC handshake", connecting)
            .await
            .unwrap_or_else(|e| panic!("a silent client's QUIC handshake with {addr}: {e}"));
        SilentConn { endpoint, quic }
    }

    /// Waits until the server closes the connection and returns how it did.
    pub async fn wait_closed(&self, limit: Duration, what: &str) -> quinn::ConnectionError {
        within(limit, what, self.quic.closed()).await
    }
}

impl Drop for SilentConn {
    fn drop(&mut self) {
        self.endpoint.close(H3_NO_ERROR.into(), b"client dropped");
    }
}

/// Whether `e` is the server closing the connection on purpose (an application or transport
/// CONNECTION_CLOSE), as opposed to the client giving up or timing out.
pub fn closed_by_peer(e: &quinn::ConnectionError) -> bool {
    matches!(
        e,
        quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::ConnectionClosed(_)
    )
}

/// The first byte of a QUIC v1 long-header packet's type bits (RFC 9000 section 17.2).
const LONG_HEADER: u8 = 0x80;
const TYPE_MASK: u8 = 0x30;
const TYPE_INITIAL: u8 = 0x00;
const TYPE_HANDSHAKE: u8 = 0x20;
const TYPE_RETRY: u8 = 0x30;

/// What kind of QUIC packet a datagram starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// Long header, type Initial.
    Initial,
    /// Long header, type 0-RTT.
    ZeroRtt,
    /// Long header, type Handshake.
    Handshake,
    /// Long header, type Retry.
    Retry,
    /// Long header with version 0.
    VersionNegotiation,
    /// Short header (1-RTT).
    Short,
}

/// The kind of the first packet in `datagram`.
pub fn packet_kind(datagram: &[u8]) -> PacketKind {
    let first = datagram.first().copied().unwrap_or_default();
    if first & LONG_HEADER == 0 {
        return PacketKind::Short;
    }
    if datagram.len() >= 5 && datagram[1..5] == [0, 0, 0, 0] {
        return PacketKind::VersionNegotiation;
    }
    match first & TYPE_MASK {
        TYPE_INITIAL => PacketKind::Initial,
        TYPE_HANDSHAKE => PacketKind::Handshake,
        TYPE_RETRY => PacketKind::Retry,
        _ => PacketKind::ZeroRtt,
    }
}

/// The destination connection ID of a long-header packet.
fn long_header_dcid(datagram: &[u8]) -> Option<&[u8]> {
    let len = *datagram.get(5)? as usize;
    datagram.get(6..6 + len)
}

/// A rustls config for generating Initials: X25519 only, so the ClientHello (and with it the
/// whole first flight) fits one datagram; the handshake never gets far enough to verify anything.
fn initial_only_config() -> Arc<ClientConfig> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    let mut config = ClientConfig::builder_with_provider(Arc::new(p))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h3".to_vec()];
    Arc::new(config)
}

/// `n` genuine QUIC v1 Initial datagrams (each a distinct connection: its own destination
/// connection ID) for `server_name`, as quinn's client sends them: `n` connections are pointed at
/// a UDP socket of the test's own, which keeps the first datagram of each.
///
/// Distinct connection IDs matter: a server routes copies of one Initial to the one handshake it
/// started for it, so only distinct Initials make distinct handshakes.
pub async fn capture_initials(n: usize, server_name: &str) -> Vec<Vec<u8>> {
    let trap = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind the capture socket");
    let trap_addr = trap.local_addr().expect("capture socket address");
    let endpoint = endpoint(Ipv4Addr::LOCALHOST.into());
    let config = quic_config(initial_only_config());
    let mut pending = Vec::new();
    for _ in 0..n {
        pending.push(
            endpoint
                .connect_with(config.clone(), trap_addr, server_name)
                .expect("start a QUIC connection to the capture socket"),
        );
    }
    let mut seen = HashSet::new();
    let mut initials = Vec::new();
    let mut buf = vec![0u8; 65536];
    within(STEP, "capture QUIC Initial datagrams", async {
        while initials.len() < n {
            let (len, _) = trap.recv_from(&mut buf).await.expect("receive an Initial");
            let datagram = &buf[..len];
            assert_eq!(
                packet_kind(datagram),
                PacketKind::Initial,
                "quinn's first datagram is not an Initial: {:02x?}",
                &datagram[..len.min(16)]
            );
            let dcid = long_header_dcid(datagram)
                .expect("an Initial has a destination connection ID")
                .to_vec();
            if seen.insert(dcid) {
                initials.push(datagram.to_vec());
            }
        }
    })
    .await;
    drop(pending);
    endpoint.close(0u32.into(), b"");
    initials
}

/// What came back to each socket of an [`initial_flood`].
#[derive(Debug, Default)]
pub struct FloodReport {
    /// Initials sent, each from its own socket.
    pub sent: usize,
    /// Sockets whose first reply was a Retry.
    pub retried: usize,
    /// Sockets whose first reply was a handshake (an Initial from the server): handshakes the
    /// server started.
    pub handshakes: usize,
    /// Sockets whose first reply was something else (a version negotiation, a short packet).
    pub other: usize,
    /// Sockets that got nothing back.
    pub unanswered: usize,
}

/// Sends each of `initials` once from its own fresh UDP socket on 127.0.0.1 to `target`, then
/// waits until every socket got a reply or `wait` has passed, and reports what the first reply
/// of each was.
pub async fn initial_flood(
    target: SocketAddr,
    initials: &[Vec<u8>],
    wait: Duration,
) -> FloodReport {
    let mut sockets = Vec::new();
    for initial in initials {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind a flood socket");
        socket
            .send_to(initial, target)
            .await
            .unwrap_or_else(|e| panic!("send an Initial to {target}: {e}"));
        sockets.push(socket);
    }
    let replies: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
                    Ok(Ok(n)) => Some(packet_kind(&buf[..n])),
                    _ => None,
                }
            })
        })
        .collect();
    let mut report = FloodReport {
        sent: initials.len(),
        ..FloodReport::default()
    };
    for reply in replies {
        match within(wait + STEP, "a flood socket's reply", reply)
            .await
            .expect("flood reader task")
        {
            Some(PacketKind::Retry) => report.retried += 1,
            Some(PacketKind::Initial) => report.handshakes += 1,
            Some(_) => report.other += 1,
            None => report.unanswered += 1,
        }
    }
    report
}

/// A real client whose handshake the server can never finish: between it and the server sits a
/// UDP relay that passes the server's packets on, and the client's only until the server
/// answered with a handshake packet (so a Retry round trip still works); the client's second
/// flight (its Finished) never arrives.
pub struct StalledHandshake {
    endpoint: quinn::Endpoint,
    connecting: Option<quinn::Connecting>,
    quic: Option<quinn::Connection>,
    relay: JoinHandle<()>,
}

impl StalledHandshake {
    /// Starts the handshake with the server at `addr`.
    pub async fn start(addr: SocketAddr, server_name: &str) -> StalledHandshake {
        let relay_socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the relay's client side");
        let upstream = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the relay's server side");
        let relay_addr = relay_socket.local_addr().expect("relay address");
        let relay = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut server_answered = false;
            let mut from_client = vec![0u8; 65536];
            let mut from_server = vec![0u8; 65536];
            loop {
                tokio::select! {
                    got = relay_socket.recv_from(&mut from_client) => {
                        let Ok((n, peer)) = got else { return };
                        client = Some(peer);
                        if !server_answered {
                            let _ = upstream.send_to(&from_client[..n], addr).await;
                        }
                    }
                    got = upstream.recv_from(&mut from_server) => {
                        let Ok((n, _)) = got else { return };
                        if packet_kind(&from_server[..n]) != PacketKind::Retry {
                            server_answered = true;
                        }
                        if let Some(peer) = client {
                            let _ = relay_socket.send_to(&from_server[..n], peer).await;
                        }
                    }
                }
            }
        });
        let endpoint = endpoint(Ipv4Addr::LOCALHOST.into());
        let connecting = endpoint
            .connect_with(
                quic_config(config(Trust::AnyCert, None)),
                relay_addr,
                server_name,
            )
            .expect("start a QUIC connection through the relay");
        StalledHandshake {
            endpoint,
            connecting: Some(connecting),
            quic: None,
            relay,
        }
    }

    /// Waits until the server gives up on the handshake, and returns how the client learnt it:
    /// the handshake failing, or (if the client had already finished its side) the connection
    /// closing. Panics naming `what` if neither happened within `limit`.
    pub async fn wait_abandoned(&mut self, limit: Duration, what: &str) -> quinn::ConnectionError {
        within(limit, what, async {
            if let Some(connecting) = self.connecting.take() {
                match connecting.await {
                    Err(e) => return e,
                    Ok(quic) => self.quic = Some(quic),
                }
            }
            self.quic
                .as_ref()
                .expect("a connection once the handshake is done")
                .closed()
                .await
        })
        .await
    }
}

impl Drop for StalledHandshake {
    fn drop(&mut self) {
        self.relay.abort();
        self.endpoint.close(0u32.into(), b"");
    }
}

/// What became of a 0-RTT attempt on a resumed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroRtt {
    /// The server's session ticket did not allow early data, so the client could not offer it.
    NotOffered,
    /// The client offered early data and the server declined it.
    Rejected,
    /// The server accepted early data.
    Accepted,
}

impl ZeroRtt {
    /// Whether the server took 0-RTT data.
    pub fn accepted(self) -> bool {
        self == ZeroRtt::Accepted
    }
}

/// Connects to `addr` once (a full handshake and a request, so the server's session ticket has
/// arrived), then resumes with early data enabled and reports whether 0-RTT was possible.
pub async fn zero_rtt(addr: SocketAddr, server_name: &str) -> ZeroRtt {
    let mut tls = (*config(Trust::AnyCert, None)).clone();
    tls.enable_early_data = true;
    let tls = Arc::new(tls);
    {
        let first = H3Conn::connect(addr, server_name, tls.clone()).await;
        let reply = first.get("/zero-rtt-first").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "the first, full-handshake request"
        );
    }
    let endpoint = endpoint(Ipv4Addr::LOCALHOST.into());
    let connecting = endpoint
        .connect_with(quic_config(tls), addr, server_name)
        .unwrap_or_else(|e| panic!("start a resumed QUIC connection to {addr}: {e}"));
    let outcome = match connecting.into_0rtt() {
        Err(connecting) => {
            within(STEP, "the resumed handshake without 0-RTT", connecting)
                .await
                .unwrap_or_else(|e| panic!("the resumed handshake with {addr}: {e}"));
            ZeroRtt::NotOffered
        }
        Ok((_quic, accepted)) => {
            if within(STEP, "the server's answer to 0-RTT", accepted).await {
                ZeroRtt::Accepted
            } else {
                ZeroRtt::Rejected
            }
        }
    };
    endpoint.close(H3_NO_ERROR.into(), b"done");
    outcome
}
