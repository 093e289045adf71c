//! The one backend every contender is put in front of: answers fixed-size bodies as fast as
//! hyper can (HTTP/1.1 keep-alive, and h2c for the direct HTTP/2 baseline), or echoes bytes.
//!
//! `GET /small` -> 100 bytes, `GET /1m` -> 1 MiB; anything else 404. The bodies are built once
//! and shared, so the backend costs as little CPU as possible and the contenders are what
//! differs between columns.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

/// Size of the `/small` body: a typical small API answer.
const SMALL: usize = 100;
/// Size of the `/1m` body: the bulk-transfer scenario.
const LARGE: usize = 1 << 20;
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
    let small = Bytes::from(vec![b's'; SMALL]);
    let large = Bytes::from(vec![b'l'; LARGE]);
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
                let (small, large) = (small.clone(), large.clone());
                tokio::spawn(http_conn(stream, small, large));
            }
            Mode::Echo => {
                tokio::spawn(echo_conn(stream));
            }
        }
    }
}

async fn http_conn(stream: TcpStream, small: Bytes, large: Bytes) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (small, large) = (small.clone(), large.clone());
        async move { Ok::<_, Infallible>(answer(req.uri().path(), small, large)) }
    });
    // Peers closing mid-request are expected at the end of every timed run.
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn answer(path: &str, small: Bytes, large: Bytes) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/small" => (StatusCode::OK, small),
        "/1m" => (StatusCode::OK, large),
        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

async fn echo_conn(mut stream: TcpStream) {
    let (mut r, mut w) = stream.split();
    let _ = tokio::io::copy(&mut r, &mut w).await;
}
