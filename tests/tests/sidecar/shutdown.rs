//! Sidecar shutdown: SIGTERM/SIGINT stop accepting, in-flight requests finish within the grace
//! period, readiness turns 503 while draining, and the process exits 0.

use std::time::{Duration, Instant};

use harness::backend::Backend;
use harness::client::{self, HttpConn, Trust, ALPN_H1};
use harness::sidecar::Sidecar;
use harness::wait::{poll_until, poll_until_async, within, STEP};
use http::{Method, StatusCode};
use tokio::net::TcpStream;

#[tokio::test]
async fn sigterm_drains_an_in_flight_request_then_exits_zero() {
    let app = Backend::echo().await;
    let mut sc = Sidecar::builder()
        .backend(app.addr())
        .admin()
        .arg("--shutdown-grace")
        .arg("10s")
        .start()
        .await;
    assert_eq!(
        client::plain_get(sc.admin_addr(), "/readyz").await.status,
        StatusCode::OK
    );

    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    let req = conn
        .request(Method::GET, "/hold")
        .body(client::empty())
        .expect("request");
    let in_flight = tokio::spawn(async move {
        let resp = conn.send_within(req, Duration::from_secs(30)).await;
        client::read_reply(resp).await
    });
    poll_until(STEP, "the held request to reach the backend", || {
        app.requests()
            .iter()
            .any(|r| r.path == "/hold")
            .then_some(())
    })
    .await;

    sc.sigterm();
    let addr = sc.addr();
    poll_until_async(
        Duration::from_secs(5),
        "new connections to be refused",
        || async move { TcpStream::connect(addr).await.is_err().then_some(()) },
    )
    .await;
    let admin = sc.admin_addr();
    poll_until_async(
        Duration::from_secs(5),
        "/readyz to turn 503 while draining",
        || async move {
            (client::plain_get(admin, "/readyz").await.status == StatusCode::SERVICE_UNAVAILABLE)
                .then_some(())
        },
    )
    .await;
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended before its response"
    );
    assert!(sc.is_running(), "exited with a request still in flight");

    app.release(1);
    let reply = within(STEP, "the in-flight response", in_flight)
        .await
        .expect("in-flight task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "released");
    let status = sc.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; {}",
        sc.transcript()
    );
}

#[tokio::test]
async fn shutdown_grace_bounds_the_drain() {
    let app = Backend::echo().await;
    let mut sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--shutdown-grace")
        .arg("500ms")
        .start()
        .await;
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    let req = conn
        .request(Method::GET, "/hold")
        .body(client::empty())
        .expect("request");
    let _stuck = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(30), conn.send(req)).await;
    });
    poll_until(STEP, "the held request to reach the backend", || {
        app.requests()
            .iter()
            .any(|r| r.path == "/hold")
            .then_some(())
    })
    .await;

    let sent = Instant::now();
    sc.sigterm();
    let status = sc.wait_exit(Duration::from_secs(5)).await;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "exited after {took:?}, before the 500ms grace with a request in flight"
    );
    // Reading of the contract: the grace period ending is still an orderly shutdown, so exit 0.
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; {}",
        sc.transcript()
    );
}

#[tokio::test]
async fn idle_keepalive_connections_do_not_delay_shutdown() {
    let app = Backend::echo().await;
    let mut sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--shutdown-grace")
        .arg("10s")
        .start()
        .await;
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    assert_eq!(conn.get("/idle-after-this").await.status, StatusCode::OK);
    sc.sigterm();
    let status = sc.wait_exit(Duration::from_secs(3)).await;
    assert_eq!(status.code(), Some(0));
    conn.wait_closed(STEP).await;
}

#[tokio::test]
async fn sigint_exits_zero() {
    let app = Backend::echo().await;
    let mut sc = Sidecar::start(app.addr()).await;
    sc.sigint();
    let status = sc.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", sc.transcript());
}
