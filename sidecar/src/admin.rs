//! What the sidecar's admin listener (`--admin-listen`) answers: `/healthz` (the process
//! answers), `/readyz` (it accepts TLS connections; 503 while draining) and `/metrics`
//! (Prometheus text). The server itself, its limits and its shutdown are [`shared::admin`]'s.
//! Keep it on a loopback or otherwise private address: it has no authentication.

use std::sync::Arc;

use http::StatusCode;
use shared::admin::{Limits, Reply, Routes};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Most admin connections served at once. Its clients are a health checker and a scraper or two,
/// each with a connection or two; the listener has no authentication and may be reachable from
/// more than loopback, so a client that opens connections without end queues in the backlog
/// after this many instead of taking file descriptors the TLS listener needs.
const MAX_CONNECTIONS: usize = 64;

/// Serves the admin endpoints until `stop` is cancelled and the answers in flight are done.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    let limits = Limits::new(MAX_CONNECTIONS);
    shared::admin::serve(listener, Endpoints(metrics), limits, stop).await;
}

/// The sidecar's admin paths.
struct Endpoints(Arc<Metrics>);

impl Routes for Endpoints {
    const PATHS: &'static [&'static str] = &["/healthz", "/readyz", "/metrics"];

    fn answer(&self, path: &str) -> Option<Reply> {
        Some(match path {
            "/healthz" => Reply::text(StatusCode::OK, "ok\n"),
            "/readyz" if self.0.is_draining() => {
                Reply::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            }
            "/readyz" => Reply::text(StatusCode::OK, "ready\n"),
            "/metrics" => Reply::prometheus(self.0.render()),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    fn answer(metrics: &Arc<Metrics>, path: &str) -> Option<Reply> {
        Endpoints(metrics.clone()).answer(path)
    }

    #[test]
    fn readyz_is_503_once_draining_and_healthz_stays_200() {
        let m = Arc::new(Metrics::default());
        assert_eq!(
            answer(&m, "/readyz"),
            Some(Reply::text(StatusCode::OK, "ready\n"))
        );
        m.set_draining();
        assert_eq!(
            answer(&m, "/readyz"),
            Some(Reply::text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"))
        );
        assert_eq!(
            answer(&m, "/healthz"),
            Some(Reply::text(StatusCode::OK, "ok\n"))
        );
    }

    #[test]
    fn metrics_are_prometheus_text_and_other_paths_are_404() {
        let m = Arc::new(Metrics::default());
        let metrics = answer(&m, "/metrics").expect("/metrics");
        assert_eq!(metrics.status, StatusCode::OK);
        assert_eq!(
            metrics.content_type,
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert!(metrics.body.starts_with(b"# HELP sidecar_up "));
        let endpoints = Endpoints(m);
        let resp = shared::admin::respond(&endpoints, &Method::GET, "/");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let resp = shared::admin::respond(&endpoints, &Method::POST, "/metrics");
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
}
