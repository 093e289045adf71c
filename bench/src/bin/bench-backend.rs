//! The one backend every contender is put in front of: answers fixed-size bodies as fast as
//! hyper can (HTTP/1.1 keep-alive, and h2c for the direct HTTP/2 baseline), or echoes bytes.
//!
//! `GET /small` -> 100 bytes, `GET /1m` -> 1 MiB; anything else 404. The bodies are built once
//! and shared, so the backend costs as little CPU as possible and the contenders are what
//! differs between columns.
//!
//! A `POST` whose `content-type` is `application/grpc` (or `application/grpc+...`), on any path,
//! is answered like a unary gRPC call: the request body is read to its end, then `200` with
//! `content-type: application/grpc`, one length-prefixed message of 100 bytes (flag 0, 4-byte
//! big-endian length) and the trailer `grpc-status: 0`. gRPC needs HTTP/2 (trailers): over
//! HTTP/1.1 such a request gets `505`, as from a real gRPC server. The listener speaks h2c with
//! prior knowledge as well as HTTP/1.1, so the direct baseline, the sidecar's h2c forwarding and
//! nginx's `grpc_pass` all reach the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

/// Size of the `/small` body: a typical small API answer.
const SMALL: usize = 100;
/// Size of the `/1m` body: the bulk-transfer scenario.
const LARGE: usize = 1 << 20;
/// Size of the one message in a gRPC-shaped answer (without its 5-byte prefix).
const GRPC_MESSAGE: usize = 100;
/// Back-off after a failed accept (e.g. out of file descriptors under load), instead of exiting.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mode {
    /// HTTP/1.1 (and h2c with prior knowledge) with fixed-size bodies.
    Http,
    /// Raw TCP echo: every byte read is written back.
    Echo,
}

/// Fixed-size HTTP bodies, or a TCP echo, on loopback.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// What to serve.
    #[arg(long, value_enum, default_value = "http")]
    mode: Mode,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to build the tokio runtime")?;
    rt.block_on(serve(cli))
}

async fn serve(cli: Cli) -> Result<()> {
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("failed to listen on {}", cli.listen))?;
    let bodies = Bodies {
        small: Bytes::from(vec![b's'; SMALL]),
        large: Bytes::from(vec![b'l'; LARGE]),
        grpc: grpc_message(GRPC_MESSAGE),
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("bench-backend: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match cli.mode {
            Mode::Http => {
                tokio::spawn(http_conn(stream, bodies.clone()));
            }
            Mode::Echo => {
                tokio::spawn(echo_conn(stream));
            }
        }
    }
}

/// The answers, built once and shared (cloning `Bytes` is a reference count).
#[derive(Clone)]
struct Bodies {
    small: Bytes,
    large: Bytes,
    /// One length-prefixed gRPC message.
    grpc: Bytes,
}

/// A gRPC length-prefixed message of `len` bytes: flag 0 (not compressed), the length as 4
/// big-endian bytes, then the payload.
fn grpc_message(len: usize) -> Bytes {
    let n = u32::try_from(len).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&n.to_be_bytes());
    out.resize(5 + len, b'g');
    Bytes::from(out)
}

async fn http_conn(stream: TcpStream, bodies: Bodies) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let bodies = bodies.clone();
        async move { Ok::<_, Infallible>(answer(req, bodies).await) }
    });
    // Peers closing mid-request are expected at the end of every timed run.
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn is_grpc(req: &Request<Incoming>) -> bool {
    req.method() == Method::POST
        && req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct.to_ascii_lowercase();
                ct == "application/grpc" || ct.starts_with("application/grpc+")
            })
}

async fn answer(req: Request<Incoming>, bodies: Bodies) -> Response<Fixed> {
    if is_grpc(&req) && req.version() != Version::HTTP_2 {
        // gRPC is HTTP/2 only (its status is a trailer), and a gRPC server refuses anything
        // else: a proxy that forwards gRPC over HTTP/1.1 must fail the row, not pass it.
        let mut resp = Response::new(Fixed {
            data: Some(Bytes::from_static(b"gRPC needs HTTP/2\n")),
            trailers: None,
        });
        *resp.status_mut() = StatusCode::HTTP_VERSION_NOT_SUPPORTED;
        return resp;
    }
    if is_grpc(&req) {
        // A unary call: the one request message is read before the answer, as a server would.
        let read = req.into_body().collect().await;
        let mut trailers = HeaderMap::new();
        let status = if read.is_ok() { "0" } else { "13" };
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        let mut resp = Response::new(Fixed {
            data: Some(bodies.grpc),
            trailers: Some(trailers),
        });
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        return resp;
    }
    let (status, body) = match req.uri().path() {
        "/small" => (StatusCode::OK, bodies.small),
        "/1m" => (StatusCode::OK, bodies.large),
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    let mut resp = Response::new(Fixed {
        data: Some(body),
        trailers: None,
    });
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// A response body of one data frame and, optionally, trailers. Its exact size is known, so
/// HTTP/1.1 answers carry a `content-length` (trailers are only sent over HTTP/2).
struct Fixed {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Fixed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

async fn echo_conn(mut stream: TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}
