//! Helpers for the redirect listener and HSTS tests: the redirect listener's address learnt from
//! its log line, raw HTTP/1.1 exchanges (so no client normalises a path or fixes a Host), and an
//! app that sets its own `Strict-Transport-Security`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::client::{raw_exchange, RawResponse};
use crate::sidecar::{log_field, Sidecar};
use crate::wait::{within, STEP};

/// The HSTS value [`HstsBackend`] sends.
pub const BACKEND_HSTS: &str = "max-age=5; preload";

/// Waits for the `redirect listening` line and returns the address to connect to.
pub async fn redirect_addr(sc: &Sidecar, limit: Duration) -> SocketAddr {
    let line = sc.wait_log("redirect listening", limit).await;
    let addr: SocketAddr = log_field(&line, "redirect")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no redirect address in {line:?}"));
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// Sends `request` verbatim on a new connection to `addr` and reads one response.
pub async fn raw(addr: SocketAddr, request: &str) -> RawResponse {
    let tcp = within(
        STEP,
        "connect to the redirect listener",
        TcpStream::connect(addr),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    raw_exchange(tcp, request.as_bytes())
        .await
        .unwrap_or_else(|| panic!("no response to {request:?}"))
}

/// `METHOD target` with `Host: host` (no Host header when `None`), closing the connection.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: Option<&str>,
) -> RawResponse {
    let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
    raw(
        addr,
        &format!("{method} {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n"),
    )
    .await
}

/// A header's value in a raw response head (the first, case-insensitive name).
pub fn raw_header(resp: &RawResponse, name: &str) -> Option<String> {
    raw_headers(resp, name).into_iter().next()
}

/// Every value of a header in a raw response head.
pub fn raw_headers(resp: &RawResponse, name: &str) -> Vec<String> {
    resp.head
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
        .collect()
}

/// An HTTP/1.1 app answering every request with `200 hsts-app` and its own
/// `Strict-Transport-Security: ` [`BACKEND_HSTS`]. Stops accepting when dropped.
pub struct HstsBackend {
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl HstsBackend {
    /// Starts the app on an ephemeral loopback port.
    pub async fn start() -> HstsBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hsts backend");
        let addr = listener.local_addr().expect("hsts backend address");
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = service_fn(|_req| async {
                        let resp = Response::builder()
                            .status(StatusCode::OK)
                            .header("strict-transport-security", BACKEND_HSTS)
                            .body(Full::new(Bytes::from_static(b"hsts-app")))
                            .expect("hsts response");
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HstsBackend { addr, accept }
    }

    /// Where the app listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HstsBackend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
