//! What the spawner's admin listener (`--admin-listen`) answers: `/healthz` (the process
//! answers), `/readyz` (a reconcile turn finished and the last one did: the engine answers) and
//! `/metrics` (Prometheus text, see [`crate::metrics`]). The server itself, its limits (bounded
//! connections, every wait under a deadline, so a scraper that stalls cannot hold the spawner's
//! resources) and its shutdown are [`shared::admin`]'s. Unauthenticated: keep it on loopback or a
//! private network.

use std::sync::Arc;

use http::StatusCode;
use shared::admin::{Limits, Reply, Routes};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, Readiness};

/// Connections served at once; more wait in the listen backlog. Probes and a scraper or two
/// need a handful.
const MAX_CONNECTIONS: usize = 16;

/// Serves the admin endpoints until `stop` is cancelled and the answers in flight are done.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>, stop: CancellationToken) {
    let limits = Limits::new(MAX_CONNECTIONS);
    shared::admin::serve(listener, Endpoints(metrics), limits, stop).await;
}

/// The spawner's admin paths.
struct Endpoints(Arc<Metrics>);

impl Routes for Endpoints {
    const PATHS: &'static [&'static str] = &["/healthz", "/readyz", "/metrics"];

    fn answer(&self, path: &str) -> Option<Reply> {
        Some(match path {
            "/healthz" => Reply::text(StatusCode::OK, "ok\n"),
            "/readyz" => match self.0.readiness() {
                Readiness::Ready => Reply::text(StatusCode::OK, "ready\n"),
                Readiness::Starting => Reply::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "starting: no reconcile turn finished yet\n",
                ),
                Readiness::EngineUnreachable => Reply::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "docker engine unreachable: the last reconcile turn failed\n",
                ),
            },
            "/metrics" => Reply::prometheus(self.0.render()),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::{header, Method};

    use super::*;
    use crate::engine;
    use crate::error::Error;

    fn status(metrics: &Arc<Metrics>, method: Method, path: &str) -> StatusCode {
        shared::admin::respond(&Endpoints(metrics.clone()), &method, path).status()
    }

    #[test]
    fn readyz_follows_the_reconcile_turns() {
        let m = Arc::new(Metrics::default());
        assert_eq!(status(&m, Method::GET, "/healthz"), StatusCode::OK);
        assert_eq!(
            status(&m, Method::GET, "/readyz"),
            StatusCode::SERVICE_UNAVAILABLE,
            "no turn finished yet"
        );
        m.turn(&Ok(()));
        assert_eq!(status(&m, Method::GET, "/readyz"), StatusCode::OK);
        m.turn(&Err(Error::Engine(engine::Error::Timeout {
            op: "list containers",
            timeout: Duration::from_secs(1),
        })));
        assert_eq!(
            status(&m, Method::HEAD, "/readyz"),
            StatusCode::SERVICE_UNAVAILABLE,
            "the engine did not answer"
        );
        let body = Endpoints(m.clone())
            .answer("/readyz")
            .expect("/readyz")
            .body;
        assert_eq!(
            body,
            "docker engine unreachable: the last reconcile turn failed\n"
        );
        assert_eq!(status(&m, Method::GET, "/healthz"), StatusCode::OK);
    }

    #[test]
    fn metrics_are_prometheus_text_and_the_rest_is_refused() {
        let m = Arc::new(Metrics::default());
        let resp = shared::admin::respond(&Endpoints(m.clone()), &Method::GET, "/metrics");
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
