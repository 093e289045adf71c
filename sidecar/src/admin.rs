//! The admin listener: plain HTTP on `--admin-listen` with `/healthz` (the process answers),
//! `/readyz` (it accepts TLS connections; 503 while draining) and `/metrics` (Prometheus text).
//! Keep it on a loopback or otherwise private address: it has no authentication.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::metrics::Metrics;
use shared::accept::{self, Accepted};

/// Admin requests are tiny; a client that cannot send one in this time is not a scraper.
const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Most admin connections served at once. Its clients are a health checker and a scraper or two,
/// each with a connection or two; the listener has no authentication and may be reachable from
/// more than loopback, so a client that opens connections without end queues in the backlog
/// after this many instead of taking file descriptors the TLS listener needs.
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin endpoints until `stop` is cancelled.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        info!(admin = %addr, "admin listening");
    }
    let mut listener =
        accept::Listener::new(listener, "admin", stop.clone()).with_limit(MAX_CONNECTIONS);
    while let Some(Accepted {
        stream,
        peer,
        permit,
    }) = listener.accept().await
    {
        let metrics = metrics.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => if let Err(error) = res { debug!(%peer, %error, "admin connection error") },
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_string(),
        );
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".to_string()),
        "/readyz" if metrics.is_draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_string())
        }
        "/readyz" => text(StatusCode::OK, "ready\n".to_string()),
        "/metrics" => {
            let mut resp = text(StatusCode::OK, metrics.render());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n".to_string(),
        ),
    }
}
