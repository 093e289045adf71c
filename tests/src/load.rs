//! Steady load through a TLS front, for tests that change what serves it while clients use it
//! (a roll-out, a take-over): HTTP/1.1 keep-alive requests, a new connection per request,
//! HTTP/2 requests, and long-lived streams (a gRPC bidirectional stream, a WebSocket echo) that
//! send a message every [`STREAM_EVERY`] until told to finish. Each counts what worked and what
//! failed, keeping the first errors for the failure message.
//!
//! A failure is what a user would see: a refused or reset connection, a failed handshake, a
//! request without a response, a non-2xx answer, a stream cut short. A connection the server
//! closed politely (HTTP/1.1 `Connection: close` after a response, an HTTP/2 GOAWAY seen before
//! the next request is sent) is no failure: the client opens another, as real clients do, and it
//! is counted as a reconnect.
//!
//! The targets answer like the demo app (`tests/src/bin/demo.rs`): any path with 200, gRPC to
//! `harness::grpc`'s `test.Echo`, a WebSocket upgrade with a byte echo.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

use crate::client::{self, empty, Body, Trust, ALPN_H1};
use crate::grpc::GrpcClient;
use crate::wait::STEP;

/// How often a long-lived stream sends a message.
pub const STREAM_EVERY: Duration = Duration::from_millis(100);
/// Errors kept per client, for the failure message.
const KEEP_ERRORS: usize = 5;

/// What one client saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub client: String,
    /// Requests (or stream messages) answered as expected.
    pub ok: u64,
    pub failed: u64,
    /// Connections the server closed politely, replaced by a new one.
    pub reconnects: u64,
    pub errors: Vec<String>,
}

impl Tally {
    fn new(client: &str) -> Tally {
        Tally {
            client: client.to_string(),
            ..Tally::default()
        }
    }

    fn fail(&mut self, what: impl std::fmt::Display) {
        self.failed += 1;
        if self.errors.len() < KEEP_ERRORS {
            self.errors.push(what.to_string());
        }
    }
}

/// The clients, running until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Tells the long-lived streams to finish.
    finish_streams: watch::Sender<bool>,
    tasks: Vec<JoinHandle<Tally>>,
}

/// How many clients of each kind.
#[derive(Debug, Clone, Copy)]
pub struct Mix {
    pub keepalive: usize,
    pub fresh: usize,
    pub h2: usize,
    pub grpc_streams: usize,
    pub websockets: usize,
}

impl Mix {
    /// One of each.
    pub const ALL: Mix = Mix {
        keepalive: 1,
        fresh: 1,
        h2: 1,
        grpc_streams: 1,
        websockets: 1,
    };
    /// Requests only: one HTTP/1.1 keep-alive client, one new connection per request, one HTTP/2.
    pub const REQUESTS: Mix = Mix {
        keepalive: 1,
        fresh: 1,
        h2: 1,
        grpc_streams: 0,
        websockets: 0,
    };
}

impl Load {
    /// Starts the clients of `mix` against the TLS front at `addr` (any certificate accepted).
    pub fn start(addr: SocketAddr, mix: Mix) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (finish_streams, streams) = watch::channel(false);
        let mut tasks = Vec::new();
        for i in 0..mix.keepalive {
            tasks.push(tokio::spawn(keepalive(addr, i, stop.clone())));
        }
        for i in 0..mix.fresh {
            tasks.push(tokio::spawn(fresh(addr, i, stop.clone())));
        }
        for i in 0..mix.h2 {
            tasks.push(tokio::spawn(h2(addr, i, stop.clone())));
        }
        for i in 0..mix.grpc_streams {
            tasks.push(tokio::spawn(grpc_stream(addr, i, streams.clone())));
        }
        for i in 0..mix.websockets {
            tasks.push(tokio::spawn(websocket(addr, i, streams.clone())));
        }
        Load {
            stop,
            finish_streams,
            tasks,
        }
    }

    /// Tells the long-lived streams to end (they close normally and check every echo).
    pub fn finish_streams(&self) {
        let _ = self.finish_streams.send(true);
    }

    /// Stops every client and returns what each saw.
    pub async fn finish(self) -> Vec<Tally> {
        self.finish_streams();
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await.unwrap_or_else(|e| {
                let mut t = Tally::new("a client task");
                t.fail(format!("panicked: {e}"));
                t
            }));
        }
        out
    }
}

/// Prints every tally and panics unless every client saw no failure and did some work.
pub fn assert_clean(tallies: &[Tally]) {
    for t in tallies {
        eprintln!(
            "load: {}: {} ok, {} failed, {} reconnects {:?}",
            t.client, t.ok, t.failed, t.reconnects, t.errors
        );
    }
    let failed: Vec<&Tally> = tallies.iter().filter(|t| t.failed > 0).collect();
    assert!(failed.is_empty(), "clients saw failures: {failed:#?}");
    let idle: Vec<&Tally> = tallies.iter().filter(|t| t.ok == 0).collect();
    assert!(
        idle.is_empty(),
        "clients that got nothing through: {idle:#?}"
    );
}

/// One HTTP connection's sender.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Body>),
    H2(hyper::client::conn::http2::SendRequest<Body>),
}

impl Sender {
    /// Connects with ALPN `alpn`; the error as text.
    async fn connect(addr: SocketAddr, alpn: &[&str]) -> Result<Sender, String> {
        let config = client::config(Trust::AnyCert, alpn);
        let tls = tokio::time::timeout(STEP, client::try_tls_connect(addr, "localhost", config))
            .await
            .map_err(|_| "TLS connect timed out".to_string())?
            .map_err(|e| format!("TLS connect: {e}"))?;
        let h2 = client::alpn(&tls).as_deref() == Some("h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H2(s))
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H1(s))
        }
    }

    /// Whether the connection can take another request (false: the server closed it politely).
    async fn ready(&mut self) -> bool {
        let ready = async {
            match self {
                Sender::H1(s) => s.ready().await.is_ok(),
                Sender::H2(s) => s.ready().await.is_ok(),
            }
        };
        tokio::time::timeout(STEP, ready).await.unwrap_or(false)
    }

    /// `GET /` and its whole body: whether the server will close the connection after it.
    /// `Err(None)`: the request was never processed (an HTTP/2 GOAWAY came first), so it may be
    /// sent again on a new connection (RFC 9113, section 8.7), as pooling clients do.
    async fn get(&mut self, addr: SocketAddr) -> Result<bool, Option<String>> {
        let req = match self {
            Sender::H1(_) => Request::builder()
                .method(Method::GET)
                .uri("/")
                .header("host", format!("localhost:{}", addr.port())),
            Sender::H2(_) => Request::builder()
                .method(Method::GET)
                .uri(format!("https://localhost:{}/", addr.port()))
                .version(http::Version::HTTP_2),
        }
        .body(empty())
        .map_err(|e| Some(e.to_string()))?;
        let exchange = async {
            let resp = match self {
                Sender::H1(s) => s
                    .send_request(req)
                    .await
                    .map_err(|e| Some(format!("request: {e}")))?,
                Sender::H2(s) => match s.try_send_request(req).await {
                    Ok(resp) => resp,
                    Err(mut e) => {
                        let unsent = e.take_message().is_some();
                        let error = e.into_error();
                        if unsent || refused_by_goaway(&error) {
                            return Err(None);
                        }
                        return Err(Some(format!("request: {error}")));
                    }
                },
            };
            let close = resp
                .headers()
                .get(http::header::CONNECTION)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            let status = resp.status();
            resp.into_body()
                .collect()
                .await
                .map_err(|e| Some(format!("response body: {e}")))?;
            if !status.is_success() {
                return Err(Some(format!("status {status}")));
            }
            Ok(close)
        };
        tokio::time::timeout(STEP, exchange)
            .await
            .map_err(|_| Some("no response in time".to_string()))?
    }
}

/// Whether a request failed only because the server's graceful GOAWAY came first: its stream is
/// past the last one the server processed.
fn refused_by_goaway(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = e.source();
    }
    false
}

/// HTTP/1.1 requests one after the other on one connection, a new one when the server closes it.
async fn keepalive(addr: SocketAddr, i: usize, stop: Arc<AtomicBool>) -> Tally {
    requests(addr, format!("http/1.1 keep-alive #{i}"), ALPN_H1, stop).await
}

/// HTTP/2 requests one after the other on one connection, a new one after a GOAWAY.
async fn h2(addr: SocketAddr, i: usize, stop: Arc<AtomicBool>) -> Tally {
    requests(addr, format!("http/2 #{i}"), &["h2"], stop).await
}

async fn requests(addr: SocketAddr, name: String, alpn: &[&str], stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::new(&name);
    let mut conn: Option<Sender> = None;
    while !stop.load(Ordering::Relaxed) {
        let usable = match conn.take() {
            Some(mut s) => {
                if s.ready().await {
                    Some(s)
                } else {
                    t.reconnects += 1;
                    None
                }
            }
            None => None,
        };
        let mut sender = match usable {
            Some(s) => s,
            None => match Sender::connect(addr, alpn).await {
                Ok(s) => s,
                Err(e) => {
                    t.fail(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match sender.get(addr).await {
            Ok(close) => {
                t.ok += 1;
                if close {
                    t.reconnects += 1;
                } else {
                    conn = Some(sender);
                }
            }
            // Never processed: sent again on a new connection.
            Err(None) => t.reconnects += 1,
            Err(Some(e)) => t.fail(e),
        }
    }
    t
}

/// A new TLS connection for every request.
async fn fresh(addr: SocketAddr, i: usize, stop: Arc<AtomicBool>) -> Tally {
    let mut t = Tally::new(&format!("new connection per request #{i}"));
    while !stop.load(Ordering::Relaxed) {
        match Sender::connect(addr, ALPN_H1).await {
            Ok(mut s) => match s.get(addr).await {
                Ok(_) => t.ok += 1,
                Err(e) => t.fail(e.unwrap_or_else(|| "request not processed".into())),
            },
            Err(e) => t.fail(e),
        }
    }
    t
}

/// One gRPC bidirectional stream (`test.Echo/Bidi`): a message every [`STREAM_EVERY`] until
/// `finish`, then the end of the stream; every echo and an OK status expected.
async fn grpc_stream(addr: SocketAddr, i: usize, mut finish: watch::Receiver<bool>) -> Tally {
    let mut t = Tally::new(&format!("grpc stream #{i}"));
    let mut client = match GrpcClient::try_connect(addr, Trust::AnyCert).await {
        Ok(c) => c,
        Err(e) => {
            t.fail(format!("gRPC connect: {e:?}"));
            return t;
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let messages =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut stream = match client.streaming("Bidi", messages).await {
        Ok(r) => r.into_inner(),
        Err(e) => {
            t.fail(format!("gRPC stream: {e}"));
            return t;
        }
    };
    let mut n = 0u64;
    loop {
        let sent = Bytes::from(format!("message {n}"));
        if tx.send(sent.clone()).await.is_err() {
            t.fail("the stream's sender closed");
            return t;
        }
        match tokio::time::timeout(STEP, stream.message()).await {
            Ok(Ok(Some(got))) if got == sent => t.ok += 1,
            Ok(Ok(Some(got))) => t.fail(format!("echo {got:?} for {sent:?}")),
            Ok(Ok(None)) => {
                t.fail("the stream ended early");
                return t;
            }
            Ok(Err(status)) => {
                t.fail(format!("gRPC status: {status}"));
                return t;
            }
            Err(_) => {
                t.fail("no echo in time");
                return t;
            }
        }
        n += 1;
        tokio::select! {
            _ = finish.wait_for(|f| *f) => break,
            () = tokio::time::sleep(STREAM_EVERY) => {}
        }
    }
    drop(tx);
    match tokio::time::timeout(STEP, stream.message()).await {
        Ok(Ok(None)) => {}
        other => t.fail(format!("the stream did not end with OK: {other:?}")),
    }
    t
}

/// One WebSocket (an HTTP/1.1 upgrade to the demo's byte echo): a message every
/// [`STREAM_EVERY`] until `finish`, every echo expected, then a close.
async fn websocket(addr: SocketAddr, i: usize, mut finish: watch::Receiver<bool>) -> Tally {
    let mut t = Tally::new(&format!("websocket #{i}"));
    let mut tls = match websocket_connect(addr).await {
        Ok(s) => s,
        Err(e) => {
            t.fail(e);
            return t;
        }
    };
    let mut n = 0u64;
    loop {
        let msg = format!("frame {n:08}\n");
        let mut echo = vec![0u8; msg.len()];
        let round = async {
            tls.write_all(msg.as_bytes()).await?;
            tls.read_exact(&mut echo).await
        };
        match tokio::time::timeout(STEP, round).await {
            Ok(Ok(_)) if echo == msg.as_bytes() => t.ok += 1,
            Ok(Ok(_)) => t.fail(format!(
                "echo {:?} for {msg:?}",
                String::from_utf8_lossy(&echo)
            )),
            Ok(Err(e)) => {
                t.fail(format!("websocket message: {e}"));
                return t;
            }
            Err(_) => {
                t.fail("no echo in time");
                return t;
            }
        }
        n += 1;
        tokio::select! {
            _ = finish.wait_for(|f| *f) => break,
            () = tokio::time::sleep(STREAM_EVERY) => {}
        }
    }
    let _ = tls.shutdown().await;
    t
}

/// A WebSocket through the TLS front at `addr` to the demo's byte echo: the upgrade request,
/// and its `101` read; the error as text.
pub async fn websocket_connect(addr: SocketAddr) -> Result<TlsStream<TcpStream>, String> {
    let config = client::config(Trust::AnyCert, ALPN_H1);
    let mut tls = tokio::time::timeout(STEP, client::try_tls_connect(addr, "localhost", config))
        .await
        .map_err(|_| "TLS connect timed out".to_string())?
        .map_err(|e| format!("TLS connect: {e}"))?;
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost:{}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        addr.port()
    );
    tls.write_all(upgrade.as_bytes())
        .await
        .map_err(|e| format!("upgrade request: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        match tokio::time::timeout(STEP, tls.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            other => return Err(format!("upgrade response: {other:?}")),
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!("not upgraded: {}", String::from_utf8_lossy(&head)));
    }
    Ok(tls)
}
