//! In-process backends on `127.0.0.1:0` for the sidecar to proxy to.
//!
//! [`Backend`] is one HTTP app (HTTP/1.1, and HTTP/2 cleartext with prior knowledge on the same
//! port, as gRPC servers and `--backend-protocol h2c` need) that records every request head it receives (so a test can prove
//! a smuggled request never arrived) and serves, by path:
//! - `/ws` with `Upgrade: websocket`: a WebSocket echo;
//! - `/sse/N`: N server-sent events; the first is sent at once, the rest only after the test calls
//!   [`Backend::release`], so a client that sees the first event early proves the proxy streams;
//! - `/download/N`: N bytes of [`pattern`] streamed in chunks, without a `Content-Length`;
//! - `/hold`: answers only after [`Backend::release`] (a request kept in flight on purpose);
//! - `/hop-response`: a response carrying hop-by-hop headers the proxy must strip;
//! - anything else: the echo, a JSON [`Echo`] of the request (its body streamed, counted, hashed).
//!
//! [`TcpBackend`] is a raw TCP echo that reports the client's half-close.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Infallible>;

/// Size of each chunk a streaming response is written in.
const CHUNK: usize = 64 * 1024;

/// The head of one request as the backend received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`...
    pub method: String,
    /// Path and query.
    pub path: String,
    /// `HTTP/1.1` (the sidecar always talks HTTP/1.1 to its backend).
    pub version: String,
    /// Every header in arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// The values of every header named `name` (case-insensitive).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The single value of header `name`; panics if it appears more than once.
    pub fn header(&self, name: &str) -> Option<&str> {
        let all = self.header_all(name);
        assert!(all.len() <= 1, "header {name} repeated: {all:?}");
        all.first().copied()
    }
}

/// What the echo route answers, parsed back by the test.
#[derive(Debug, Clone)]
pub struct Echo {
    /// The request as the backend saw it.
    pub request: Recorded,
    /// Bytes of request body received.
    pub body_len: u64,
    /// Lowercase hex SHA-256 of the request body.
    pub body_sha256: String,
}

impl Echo {
    /// Parses the echo route's JSON answer.
    pub fn parse(body: &[u8]) -> Echo {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "echo body is not JSON ({e}): {}",
                String::from_utf8_lossy(body)
            )
        });
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        let headers = v["headers"]
            .as_array()
            .expect("echo headers array")
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().unwrap_or_default().to_string(),
                    pair[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Echo {
            request: Recorded {
                method: s("method"),
                path: s("path"),
                version: s("version"),
                headers,
            },
            body_len: v["body_len"].as_u64().expect("echo body_len"),
            body_sha256: s("body_sha256"),
        }
    }
}

/// `len` deterministic bytes starting at `offset` of an endless pattern (period 251, a prime, so
/// a dropped or repeated chunk changes the hash).
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) % 251) as u8)
        .collect()
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// SHA-256 of a certificate's DER as `openssl x509 -fingerprint -sha256` prints it
/// (`AB:CD:...`): the form the sidecar logs.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    sha256_hex(der)
        .to_ascii_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// SHA-256 of `total` bytes of [`pattern`], computed chunk by chunk.
pub fn pattern_sha256(total: u64) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut off = 0;
    while off < total {
        let n = (total - off).min(CHUNK as u64) as usize;
        ctx.update(&pattern(off, n));
        off += n as u64;
    }
    hex(ctx.finish().as_ref())
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An address on which nothing listens, for "backend refused": a port from below the ephemeral
/// range ([`crate::sidecar::free_port`]), which no other test's `bind(0)` can be given.
pub fn refused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], crate::sidecar::free_port()))
}

struct State {
    requests: Mutex<Vec<Recorded>>,
    gate: Semaphore,
    sse_sent: AtomicUsize,
    header_delay: Duration,
    /// TCP connections accepted and ended (by either side).
    conns_opened: AtomicUsize,
    conns_closed: AtomicUsize,
}

/// The HTTP/1.1 and h2c test app (see the module docs for its routes). Stops accepting when
/// dropped.
pub struct Backend {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
    /// Set to close every connection at once ([`Backend::kill`]).
    kill: tokio::sync::watch::Sender<bool>,
}

impl Backend {
    /// The echo app on an ephemeral loopback port.
    pub async fn echo() -> Backend {
        Self::start("127.0.0.1:0".parse().expect("loopback"), Duration::ZERO).await
    }

    /// The echo app on a given address (e.g. one a sidecar was already pointed at).
    pub async fn echo_on(addr: SocketAddr) -> Backend {
        Self::start(addr, Duration::ZERO).await
    }

    /// The echo app, but every response's headers come only after `delay` (for backend timeouts).
    pub async fn slow_headers(delay: Duration) -> Backend {
        Self::start("127.0.0.1:0".parse().expect("loopback"), delay).await
    }

    async fn start(addr: SocketAddr, header_delay: Duration) -> Backend {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind backend on {addr}: {e}"));
        let addr = listener.local_addr().expect("backend address");
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
            sse_sent: AtomicUsize::new(0),
            header_delay,
            conns_opened: AtomicUsize::new(0),
            conns_closed: AtomicUsize::new(0),
        });
        let accept_state = state.clone();
        let (kill, killed) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // As servers do: responses written in pieces go out at once.
                let _ = stream.set_nodelay(true);
                let state = accept_state.clone();
                state.conns_opened.fetch_add(1, Ordering::SeqCst);
                let mut killed = killed.clone();
                tokio::spawn(async move {
                    let conn_state = state.clone();
                    let service = service_fn(move |req| handle(state.clone(), req));
                    let mut builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // Room for what the sidecar forwards on top of a client's 100 headers.
                    builder.http1().max_headers(200);
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = killed.wait_for(|k| *k) => {}
                    }
                    conn_state.conns_closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Backend {
            addr,
            state,
            accept,
            kill,
        }
    }

    /// Where the backend listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request head received so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// Lets `n` held responses (`/hold`, the rest of an `/sse/N` stream) proceed.
    pub fn release(&self, n: usize) {
        self.state.gate.add_permits(n);
    }

    /// TCP connections the backend has accepted so far.
    pub fn connections_opened(&self) -> usize {
        self.state.conns_opened.load(Ordering::SeqCst)
    }

    /// TCP connections that have ended so far.
    pub fn connections_closed(&self) -> usize {
        self.state.conns_closed.load(Ordering::SeqCst)
    }

    /// How many server-sent events the backend has written so far.
    pub fn sse_events_sent(&self) -> usize {
        self.state.sse_sent.load(Ordering::SeqCst)
    }
}

impl Backend {
    /// Stops the backend as a crash would: the listener and every open connection closed at
    /// once, mid-request or not. `Backend::echo_on(addr)` starts it again on the same port.
    pub async fn kill(mut self) {
        self.accept.abort();
        // Wait until the aborted task (and its listener) is gone, so the port is free.
        let _ = (&mut self.accept).await;
        let _ = self.kill.send(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn handle(
    state: Arc<State>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let recorded = Recorded {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    };
    state
        .requests
        .lock()
        .expect("requests lock")
        .push(recorded.clone());
    if !state.header_delay.is_zero() {
        tokio::time::sleep(state.header_delay).await;
    }

    let path = req.uri().path().to_string();
    let is_ws = recorded
        .header_all("upgrade")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("websocket"));
    if path == "/ws" && is_ws {
        let key = recorded
            .header("sec-websocket-key")
            .unwrap_or_default()
            .to_string();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    let echo = match msg {
                        Message::Text(_) | Message::Binary(_) => msg,
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(echo).await.is_err() {
                        break;
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "websocket")
            .header("connection", "Upgrade")
            .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
            .body(full(""))
            .expect("101 response");
        return Ok(resp);
    }
    if let Some(n) = path.strip_prefix("/sse/") {
        let n: usize = n.parse().unwrap_or(3);
        return Ok(sse(state, n));
    }
    if let Some(n) = path.strip_prefix("/download/") {
        let n: u64 = n.parse().unwrap_or(0);
        return Ok(download(n));
    }
    if path == "/hold" {
        if let Ok(permit) = state.gate.acquire().await {
            permit.forget();
        }
        return Ok(Response::new(full("released")));
    }
    if path == "/hop-response" {
        let resp = Response::builder()
            .header("connection", "x-resp-hop")
            .header("x-resp-hop", "must not reach the client")
            .header("keep-alive", "timeout=9")
            .header("proxy-connection", "keep-alive")
            .header("x-end-to-end", "kept")
            .body(full("hop"))
            .expect("hop response");
        return Ok(resp);
    }

    // The echo: stream the request body through a hash without holding it.
    let mut body = req.into_body();
    let mut len = 0u64;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    len += data.len() as u64;
                    ctx.update(data);
                }
            }
            Err(_) => break,
        }
    }
    let json = serde_json::json!({
        "method": recorded.method,
        "path": recorded.path,
        "version": recorded.version,
        "headers": recorded.headers.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
        "body_len": len,
        "body_sha256": hex(ctx.finish().as_ref()),
    });
    let resp = Response::builder()
        .header("content-type", "application/json")
        .body(full(json.to_string()))
        .expect("echo response");
    Ok(resp)
}

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

fn sse(state: Arc<State>, n: usize) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for i in 0..n {
            if i == 1 {
                match state.gate.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return,
                }
            }
            if i > 1 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if tx
                .send(Bytes::from(format!("id: {i}\ndata: event {i}\n\n")))
                .await
                .is_err()
            {
                return;
            }
            state.sse_sent.fetch_add(1, Ordering::SeqCst);
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("sse response")
}

fn download(total: u64) -> Response<Body> {
    let stream = futures_util::stream::unfold(0u64, move |off| async move {
        if off >= total {
            return None;
        }
        let n = (total - off).min(CHUNK as u64) as usize;
        let chunk = Bytes::from(pattern(off, n));
        Some((Ok::<_, Infallible>(Frame::data(chunk)), off + n as u64))
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("download response")
}

/// A raw TCP echo: every byte is written back as it arrives; when the client half-closes, the
/// backend answers `eof after N bytes\n` and then closes, proving the EOF got through and the
/// reverse direction still worked.
pub struct TcpBackend {
    addr: SocketAddr,
    eofs: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl TcpBackend {
    /// The echo on an ephemeral loopback port.
    pub async fn echo() -> TcpBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp backend");
        let addr = listener.local_addr().expect("tcp backend address");
        let eofs = Arc::new(AtomicUsize::new(0));
        let counter = eofs.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(echo_tcp(stream, counter.clone()));
            }
        });
        TcpBackend { addr, eofs, accept }
    }

    /// Where the backend listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many connections have seen the client's EOF.
    pub fn eofs_seen(&self) -> usize {
        self.eofs.load(Ordering::SeqCst)
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn echo_tcp(mut stream: TcpStream, eofs: Arc<AtomicUsize>) {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0usize;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    eofs.fetch_add(1, Ordering::SeqCst);
    let _ = stream
        .write_all(format!("eof after {total} bytes\n").as_bytes())
        .await;
    let _ = AsyncWriteExt::shutdown(&mut stream).await;
}
