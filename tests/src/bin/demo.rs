//! The demo app (image `tls-sidecar/demo`): a tiny HTTP/1.1 echo service. Every request gets a 200
//! plain-text answer listing its method, path and headers, so what a sidecar forwards (Host,
//! X-Forwarded-*) is visible. Listens on `DEMO_LISTEN` (default `0.0.0.0:8080`); exits 0 on SIGTERM
//! or SIGINT at once (it holds no state worth draining).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// A client that sends no request head within this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
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
        .body(Full::new(Bytes::from(body)));
    Ok(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n")))))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
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
    eprintln!("demo: listening on {addr}");
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
                tokio::spawn(async move {
                    let mut builder = http1::Builder::new();
                    builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
                    let _ = builder.serve_connection(TokioIo::new(stream), service_fn(echo)).with_upgrades().await;
                });
            }
        }
    }
    eprintln!("demo: shutting down");
    std::process::ExitCode::SUCCESS
}
