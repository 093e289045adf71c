//! Sidecar operations: the admin listener (health, readiness, Prometheus metrics that move with
//! traffic), the access log line per request, and JSON logs.

use std::time::Duration;

use harness::backend::{refused_addr, Backend};
use harness::client::{self, HttpConn, Trust, ALPN_H1, ALPN_H2_H1};
use harness::metrics::{metric, metrics, wait_metric};
use harness::sidecar::{log_field, Sidecar};
use harness::wait::{within, STEP};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn healthz_readyz_and_metrics_are_served() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder().backend(app.addr()).admin().start().await;
    let health = client::plain_get(sc.admin_addr(), "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(health.text().trim(), "ok");
    assert_eq!(
        client::plain_get(sc.admin_addr(), "/readyz").await.status,
        StatusCode::OK
    );

    let reply = client::plain_get(sc.admin_addr(), "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "Prometheus text format: {:?}",
        reply.header("content-type")
    );
    let text = reply.text();
    for name in [
        "sidecar_connections_total",
        "sidecar_connections_active",
        "sidecar_handshake_failures_total",
        "sidecar_http_requests_total",
        "sidecar_backend_errors_total",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from /metrics:\n{text}"
        );
    }
}

#[tokio::test]
async fn metrics_move_with_connections_requests_and_handshake_failures() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder().backend(app.addr()).admin().start().await;
    let before = metrics(&sc).await;
    let conns = metric(&before, "sidecar_connections_total");
    let reqs = metric(&before, "sidecar_http_requests_total");
    let failures = metric(&before, "sidecar_handshake_failures_total");

    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H2_H1),
    )
    .await;
    assert_eq!(conn.get("/a").await.status, StatusCode::OK);
    assert_eq!(conn.get("/b").await.status, StatusCode::OK);
    wait_metric(&sc, "sidecar_connections_total", |v| v >= conns + 1.0).await;
    wait_metric(&sc, "sidecar_http_requests_total", |v| v >= reqs + 2.0).await;
    wait_metric(&sc, "sidecar_connections_active", |v| v >= 1.0).await;
    drop(conn);
    wait_metric(&sc, "sidecar_connections_active", |v| v == 0.0).await;

    let mut junk = within(STEP, "connect", TcpStream::connect(sc.addr()))
        .await
        .expect("connect");
    junk.write_all(b"definitely not TLS\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let _ = within(STEP, "junk connection closed", junk.read(&mut buf)).await;
    wait_metric(&sc, "sidecar_handshake_failures_total", |v| {
        v >= failures + 1.0
    })
    .await;
}

#[tokio::test]
async fn backend_errors_are_counted() {
    let mut sc = Sidecar::builder()
        .backend(refused_addr())
        .admin()
        .start()
        .await;
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    assert_eq!(conn.get("/").await.status, StatusCode::BAD_GATEWAY);
    wait_metric(&sc, "sidecar_backend_errors_total", |v| v >= 1.0).await;
    assert!(sc.is_running());
}

#[tokio::test]
async fn each_request_gets_one_access_log_line() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    let reply = conn.get("/access-logged").await;
    assert_eq!(reply.status, StatusCode::OK);
    let line = sc
        .wait_log_all(&["path=/access-logged"], Duration::from_secs(5))
        .await;
    assert!(line.contains(" INFO "), "info level: {line}");
    assert!(line.contains("request"), "message `request`: {line}");
    let client_addr = log_field(&line, "client").unwrap_or_default();
    assert!(
        client_addr.starts_with("127.0.0.1:"),
        "client=IP:PORT in {line}"
    );
    assert_eq!(log_field(&line, "method").as_deref(), Some("GET"), "{line}");
    assert_eq!(log_field(&line, "status").as_deref(), Some("200"), "{line}");
    assert_eq!(
        log_field(&line, "bytes").as_deref(),
        Some(reply.body.len().to_string().as_str()),
        "bytes= is the response body size: {line}"
    );
    let ms = log_field(&line, "duration_ms").unwrap_or_default();
    assert!(ms.parse::<f64>().is_ok(), "duration_ms is a number: {line}");

    let count = sc
        .logs()
        .iter()
        .filter(|l| l.contains("path=/access-logged"))
        .count();
    assert_eq!(count, 1, "exactly one access line per request");
    assert!(
        sc.logs().iter().all(|l| !l.contains('\x1b')),
        "no ANSI colours when stderr is not a terminal"
    );
}

#[tokio::test]
async fn json_log_format_writes_one_json_object_per_line() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--log-format")
        .arg("json")
        .start()
        .await;
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    assert_eq!(conn.get("/json-logged").await.status, StatusCode::OK);
    let line = sc.wait_log("/json-logged", Duration::from_secs(5)).await;
    assert_eq!(log_field(&line, "status").as_deref(), Some("200"), "{line}");
    for l in sc.logs().iter().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v.is_object(), "{l}");
    }
}
