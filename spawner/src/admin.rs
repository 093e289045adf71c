//! The admin listener (`--admin-listen`): plain HTTP with `/healthz` (the process answers),
//! `/readyz` (a reconcile turn finished and the last one did: the engine answers) and
//! `/metrics` (Prometheus text, see [`crate::metrics`]). Unauthenticated: keep it on loopback or
//! a private network. Bounded: a fixed number of connections, one request each, every one under
//! a deadline, so a scraper that stalls cannot hold the spawner's resources.

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

use crate::metrics::{Metrics, Readiness};

/// Connections served at once; more wait in the listen backlog. Probes and a scraper or two
/// need a handful.
const MAX_CONNECTIONS: usize = 16;
/// An admin request is one short line and a few headers; a client slower than this is not a
/// probe or a scraper.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-connection deadline: one request and its answer (a few KiB), whatever the client does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin endpoints until `stop`.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(admin = %addr, "admin listening");
    }
    let mut listener =
        shared::accept::Listener::new(listener, "admin", stop.clone()).with_limit(MAX_CONNECTIONS);
    while let Some(shared::accept::Accepted {
        stream,
        peer,
        permit,
    }) = listener.accept().await
    {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "admin connection error"),
                Err(_) => tracing::debug!(%peer, "admin connection timed out"),
            }
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    answer(req.method(), req.uri().path(), metrics)
}

/// The answer to `method path`.
fn answer(method: &Method, path: &str, metrics: &Metrics) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match metrics.readiness() {
            Readiness::Ready => text(StatusCode::OK, "ready\n"),
            Readiness::Starting => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: no reconcile turn finished yet\n",
            ),
            Readiness::EngineUnreachable => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "docker engine unreachable: the last reconcile turn failed\n",
            ),
        },
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
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn status(metrics: &Metrics, method: Method, path: &str) -> StatusCode {
        answer(&method, path, metrics).status()
    }

    #[test]
    fn readyz_follows_the_reconcile_turns() {
        let m = Metrics::default();
        assert_eq!(status(&m, Method::GET, "/healthz"), StatusCode::OK);
        assert_eq!(
            status(&m, Method::GET, "/readyz"),
            StatusCode::SERVICE_UNAVAILABLE,
            "no turn finished yet"
        );
        m.turn(&Ok(()));
        assert_eq!(status(&m, Method::GET, "/readyz"), StatusCode::OK);
        m.turn(&Err(Error::Timeout {
            op: "list containers",
            timeout: Duration::from_secs(1),
        }));
        assert_eq!(
            status(&m, Method::HEAD, "/readyz"),
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine did not answer"
        );
        assert_eq!(status(&m, Method::GET, "/healthz"), StatusCode::OK);
    }

    #[test]
    fn metrics_are_prometheus_text_and_the_rest_is_refused() {
        let m = Metrics::default();
        let resp = answer(&Method::GET, "/metrics", &m);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(
            status(&m, Method::POST, "/metrics"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(status(&m, Method::GET, "/"), StatusCode::NOT_FOUND);
    }
}
