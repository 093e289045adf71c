//! Sidecar, http mode, HTTP/2 cleartext to the backend (`--backend-protocol`): which requests
//! take it, that streams share a few connections whatever clients do, and that a backend restart
//! costs no failed request. gRPC itself (tonic client and server) is in `sidecar::grpc`.

use std::time::Duration;

use futures_util::future::join_all;
use harness::backend::{Backend, Echo};
use harness::client::{self, HttpConn, Trust, ALPN_H1, ALPN_H2_H1};
use harness::sidecar::Sidecar;
use http::{Method, StatusCode};

/// HTTP/2 connections a sidecar keeps to its backend at most
/// (`sidecar::http::h2pool::CONNECTIONS`).
const POOL: usize = 4;

async fn connect(sc: &Sidecar, alpn: &[&str]) -> HttpConn {
    HttpConn::connect(sc.addr(), "localhost", client::config(Trust::AnyCert, alpn)).await
}

async fn sidecar(app: &Backend, protocol: Option<&str>) -> Sidecar {
    let mut b = Sidecar::builder().backend(app.addr());
    if let Some(p) = protocol {
        b = b.args(["--backend-protocol", p]);
    }
    b.start().await
}

/// A gRPC-shaped request (only its content type matters to the routing).
fn grpc_post(conn: &HttpConn, path: &str) -> http::Request<client::Body> {
    conn.request(Method::POST, path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(client::full(vec![0u8, 0, 0, 0, 0]))
        .expect("request")
}

#[tokio::test]
async fn auto_sends_grpc_over_h2c_and_everything_else_over_http11() {
    let app = Backend::echo().await;
    let sc = sidecar(&app, None).await;
    for alpn in [ALPN_H2_H1, ALPN_H1] {
        let mut conn = connect(&sc, alpn).await;
        let plain = conn.get("/plain").await;
        assert_eq!(plain.status, StatusCode::OK, "{}", plain.text());
        assert_eq!(Echo::parse(&plain.body).request.version, "HTTP/1.1");

        let req = grpc_post(&conn, "/pkg.Service/Method");
        let grpc = conn.fetch(req).await;
        assert_eq!(grpc.status, StatusCode::OK, "{}", grpc.text());
        let seen = Echo::parse(&grpc.body).request;
        assert_eq!(seen.version, "HTTP/2.0", "gRPC over {alpn:?}");
        assert_eq!(seen.path, "/pkg.Service/Method");
        // HTTP/2 names the authority in :authority, not in a Host header; the forwarding
        // headers are set as for HTTP/1.1.
        assert_eq!(seen.header("host"), None);
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some(format!("localhost:{}", sc.addr().port()).as_str())
        );
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        assert_eq!(seen.header("te"), Some("trailers"));
    }
    // grpc-web is not gRPC over HTTP/2: it stays HTTP/1.1.
    let mut conn = connect(&sc, ALPN_H2_H1).await;
    let req = conn
        .request(Method::POST, "/web")
        .header("content-type", "application/grpc-web+proto")
        .body(client::empty())
        .expect("request");
    let reply = conn.fetch(req).await;
    assert_eq!(Echo::parse(&reply.body).request.version, "HTTP/1.1");
}

#[tokio::test]
async fn h2c_sends_every_request_over_http2_and_http1_none() {
    let app = Backend::echo().await;
    let h2c = sidecar(&app, Some("h2c")).await;
    for alpn in [ALPN_H2_H1, ALPN_H1] {
        let mut conn = connect(&h2c, alpn).await;
        let reply = conn.get("/any?q=1").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let seen = Echo::parse(&reply.body).request;
        assert_eq!(seen.version, "HTTP/2.0");
        assert_eq!(seen.path, "/any?q=1");
    }
    let http1 = sidecar(&app, Some("http1")).await;
    let mut conn = connect(&http1, ALPN_H2_H1).await;
    let req = grpc_post(&conn, "/pkg.Service/Method");
    let reply = conn.fetch(req).await;
    assert_eq!(Echo::parse(&reply.body).request.version, "HTTP/1.1");
}

#[tokio::test]
async fn streams_from_many_clients_share_a_few_backend_connections() {
    let app = Backend::echo().await;
    let sc = sidecar(&app, Some("h2c")).await;
    // 20 client connections x 10 concurrent requests, all at once.
    let clients = join_all((0..20).map(|_| connect(&sc, ALPN_H2_H1))).await;
    let calls = clients
        .into_iter()
        .enumerate()
        .map(|(c, mut conn)| async move {
            let mut statuses = Vec::new();
            for i in 0..10 {
                statuses.push(conn.get(&format!("/c{c}/r{i}")).await.status);
            }
            statuses
        });
    let statuses: Vec<StatusCode> = join_all(calls).await.into_iter().flatten().collect();
    assert_eq!(statuses.len(), 200);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let opened = app.connections_opened();
    assert!(
        (1..=POOL).contains(&opened),
        "200 requests opened {opened} backend connections; the pool holds at most {POOL}"
    );
}

#[tokio::test]
async fn a_client_naming_many_authorities_opens_no_more_connections() {
    // The pool is keyed by nothing the client controls: one connection set per sidecar, not per
    // Host, so a client cannot make the sidecar open sockets on the app by varying the name.
    let app = Backend::echo().await;
    let sc = sidecar(&app, Some("h2c")).await;
    let mut conn = connect(&sc, ALPN_H1).await;
    for i in 0..50 {
        let req = conn
            .request(Method::GET, "/")
            .header("host", format!("name{i}.example"))
            .body(client::empty())
            .expect("request");
        // HttpConn's HTTP/1.1 builder sets Host already; the last one must be the only one.
        let (mut parts, body) = req.into_parts();
        parts.headers.insert(
            "host",
            format!("name{i}.example").parse().expect("host value"),
        );
        let reply = conn.fetch(http::Request::from_parts(parts, body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let seen = Echo::parse(&reply.body).request;
        assert_eq!(
            seen.header("x-forwarded-host"),
            Some(format!("name{i}.example").as_str())
        );
    }
    let opened = app.connections_opened();
    assert!(
        opened <= POOL,
        "50 authorities opened {opened} backend connections"
    );
}

#[tokio::test]
async fn a_backend_restart_costs_no_failed_request() {
    let app = Backend::echo().await;
    let addr = app.addr();
    let sc = sidecar(&app, Some("h2c")).await;
    let mut conn = connect(&sc, ALPN_H2_H1).await;
    // Open every pooled connection.
    for i in 0..POOL * 2 {
        assert_eq!(conn.get(&format!("/warm{i}")).await.status, StatusCode::OK);
    }
    // Crash and restart, several times: each request after a restart finds its pooled
    // connection closed and must be served on a fresh one.
    let mut app = app;
    for round in 0..3 {
        app.kill().await;
        app = Backend::echo_on(addr).await;
        for i in 0..POOL * 2 {
            let reply = conn.get(&format!("/after{round}/{i}")).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "request {i} after restart {round}: {}\n{}",
                reply.text(),
                sc.logs().join("\n")
            );
        }
    }
}

#[tokio::test]
async fn an_unreachable_h2c_backend_is_a_502_for_plain_requests() {
    let sc = Sidecar::builder()
        .backend(harness::backend::refused_addr())
        .args(["--backend-protocol", "h2c"])
        .start()
        .await;
    let mut conn = connect(&sc, ALPN_H2_H1).await;
    let reply = conn.get("/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    // gRPC callers get a gRPC status instead (sidecar::grpc checks it with a real client).
    let req = grpc_post(&conn, "/pkg.Service/Method");
    let reply = conn.fetch(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("grpc-status"), Some("14"));
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn sse_streams_through_h2c_as_it_is_written() {
    let app = Backend::echo().await;
    let sc = sidecar(&app, Some("h2c")).await;
    let mut conn = connect(&sc, ALPN_H2_H1).await;
    let req = conn
        .request(Method::GET, "/sse/3")
        .body(client::empty())
        .expect("request");
    let resp = conn.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    // The first event arrives while the backend holds the rest: it was streamed, not buffered.
    use http_body_util::BodyExt;
    let first = harness::wait::within(Duration::from_secs(10), "first event", body.frame())
        .await
        .expect("a frame")
        .expect("frame ok");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    assert_eq!(app.sse_events_sent(), 1);
    app.release(2);
    let rest = harness::wait::within(Duration::from_secs(10), "rest", body.collect())
        .await
        .expect("rest of the stream");
    assert!(!rest.to_bytes().is_empty());
}
