//! The demo app (image `tls-sidecar/demo`): a tiny HTTP echo service. Every request gets a 200
//! plain-text answer listing its method, path, version and headers, so what a sidecar forwards
//! (Host, X-Forwarded-*) is visible; the header `x-demo-version` names the HTTP version the
//! request came in (`HTTP/1.1`, or `HTTP/2.0` over h2c with prior knowledge: both are served on
//! the one port, HTTP/1.1 upgrades included). Listens on `DEMO_LISTEN` (default `0.0.0.0:8080`);
//! exits 0 on SIGTERM or SIGINT at once (it holds no state worth draining).
//!
//! A request carrying `x-demo-delay-ms: N` is answered after N milliseconds (at most a minute):
//! a long-running call, for tests that change something while one is in flight.
//!
//! gRPC requests (`content-type: application/grpc...`, over h2c) are answered by the tests'
//! gRPC service `test.Echo` (`harness::grpc`), so one target serves HTTP and gRPC alike. An
//! HTTP/1.1 request asking to upgrade to `websocket` gets `101 Switching Protocols`, and the
//! connection then echoes every byte it receives (a WebSocket echo, frames left to the client):
//! what a proxy in front must relay as it is.
//!
//! `DEMO_MODE=raw-echo` makes it a plain TCP service instead: each connection is answered with
//! the first line it sent (up to and including the first `\n`, at most 4 KiB), then closed, so a
//! test can see the first bytes that reached the app (e.g. a PROXY protocol header).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

/// A client that sends no request head within this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `x-demo-delay-ms` honoured.
const MAX_DELAY_MS: u64 = 60_000;
/// raw-echo mode: the longest first line echoed back.
const RAW_LINE_MAX: usize = 4096;

/// What the app serves on `DEMO_LISTEN` (`DEMO_MODE`).
#[derive(Clone, Copy)]
enum Mode {
    /// The HTTP echo (HTTP/1.1 and h2c).
    Http,
    /// Each TCP connection gets its first line back.
    RawEcho,
}

/// The body of every answer: the echo's text, or the gRPC service's.
type Body = Either<Full<Bytes>, tonic::body::Body>;

/// One request: gRPC to the test service, a WebSocket upgrade to the byte echo, anything else
/// to the HTTP echo.
async fn serve(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let grpc = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let resp = harness::grpc::route(req).await?;
        return Ok(resp.map(Either::Right));
    }
    let websocket = req
        .headers()
        .get(hyper::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if websocket && req.version() == hyper::Version::HTTP_11 {
        return Ok(upgrade(req).map(Either::Left));
    }
    Ok(echo(req).await?.map(Either::Left))
}

/// Answers a WebSocket upgrade with 101, then echoes the connection's bytes until the client
/// closes it.
fn upgrade(req: Request<Incoming>) -> Response<Full<Bytes>> {
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut read, &mut write).await;
        let _ = write.shutdown().await;
    });
    Response::builder()
        .status(hyper::StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, "websocket")
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let delay = req
        .headers()
        .get("x-demo-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |ms| ms.min(MAX_DELAY_MS));
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut body = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (name, value) in req.headers() {
        body.push_str(&format!(
            "{}: {}\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    let response = Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .header("x-demo-version", format!("{:?}", req.version()))
        .body(Full::new(Bytes::from(body)));
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n")))))
}

/// One HTTP connection: HTTP/1.1 (with upgrades) or h2c with prior knowledge. A client that
/// sends nothing within [`HEADER_READ_TIMEOUT`] is dropped before the version is even known.
async fn serve_http(stream: TcpStream) {
    let mut first = [0u8; 1];
    if !matches!(
        tokio::time::timeout(HEADER_READ_TIMEOUT, stream.peek(&mut first)).await,
        Ok(Ok(1..))
    ) {
        return;
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(serve))
        .await;
}

/// raw-echo mode: reads up to the first `\n` (or [`RAW_LINE_MAX`] bytes, or the end), writes
/// that back and closes.
async fn serve_raw_echo(mut stream: TcpStream) {
    let mut line = Vec::new();
    let mut buf = [0u8; 512];
    let read = async {
        while !line.contains(&b'\n') && line.len() < RAW_LINE_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => line.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, read).await;
    let end = line
        .iter()
        .position(|&b| b == b'\n')
        .map_or(line.len(), |i| i + 1)
        .min(RAW_LINE_MAX);
    let _ = stream.write_all(&line[..end]).await;
    let _ = stream.shutdown().await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let mode = match std::env::var("DEMO_MODE").as_deref() {
        Err(_) | Ok("") | Ok("http") => Mode::Http,
        Ok("raw-echo") => Mode::RawEcho,
        Ok(other) => {
            eprintln!("demo: invalid DEMO_MODE {other:?}: expected http or raw-echo");
            return std::process::ExitCode::from(2);
        }
    };
    let listen = std::env::var("DEMO_LISTEN").unwrap_or_else(|_| "0.0.0.0:8080".to_string());
    let addr: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo: invalid DEMO_LISTEN {listen:?}: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo: cannot listen on {addr}: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("demo: cannot install signal handlers");
            return std::process::ExitCode::from(1);
        }
    };
    let what = match mode {
        Mode::Http => "http",
        Mode::RawEcho => "raw-echo",
    };
    eprintln!("demo: listening on {addr} ({what})");
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // EMFILE and friends: back off briefly instead of spinning or exiting.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                match mode {
                    Mode::Http => tokio::spawn(serve_http(stream)),
                    Mode::RawEcho => tokio::spawn(serve_raw_echo(stream)),
                };
            }
        }
    }
    eprintln!("demo: shutting down");
    std::process::ExitCode::SUCCESS
}
