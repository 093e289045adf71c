//! Sidecar limits: handshake, idle and header-read timeouts, and the connection limit. Each test
//! shows the limit acting on one connection while others are served.

use std::time::Duration;

use harness::backend::Backend;
use harness::client::{self, HttpConn, Trust, ALPN_H1, ALPN_H2_H1};
use harness::sidecar::Sidecar;
use harness::wait::{poll_until, within, STEP};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;

/// Well under the 10 s defaults, so a close within it is the configured limit at work.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// Waits until the peer closes `rd` (EOF or reset), ignoring whatever it sends first.
async fn closed_by_sidecar(rd: impl AsyncRead + Unpin, what: &str) {
    client::closed_within(rd, CLOSED_WITHIN, what).await;
}

#[tokio::test]
async fn handshake_timeout_closes_stalled_connections_while_others_are_served() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--handshake-timeout")
        .arg("500ms")
        .start()
        .await;
    // One client sends nothing; another stalls after half a ClientHello.
    let silent = within(STEP, "connect", TcpStream::connect(sc.addr()))
        .await
        .expect("connect");
    let mut partial = within(STEP, "connect", TcpStream::connect(sc.addr()))
        .await
        .expect("connect");
    let hello = client::client_hello_bytes();
    partial
        .write_all(&hello[..hello.len() / 2])
        .await
        .expect("write half a ClientHello");

    let config = client::config(Trust::AnyCert, ALPN_H2_H1);
    let mut good = HttpConn::connect(sc.addr(), "localhost", config.clone()).await;
    assert_eq!(good.get("/meanwhile").await.status, StatusCode::OK);

    closed_by_sidecar(silent, "the silent connection to be closed").await;
    closed_by_sidecar(partial, "the half-handshake connection to be closed").await;

    assert_eq!(good.get("/still").await.status, StatusCode::OK);
    let mut fresh = HttpConn::connect(sc.addr(), "localhost", config).await;
    assert_eq!(fresh.get("/fresh").await.status, StatusCode::OK);
}

async fn idle_connection_is_closed(alpn: &[&str]) {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--idle-timeout")
        .arg("500ms")
        .start()
        .await;
    let mut conn =
        HttpConn::connect(sc.addr(), "localhost", client::config(Trust::AnyCert, alpn)).await;
    assert_eq!(conn.get("/once").await.status, StatusCode::OK);
    conn.wait_closed(CLOSED_WITHIN).await;
}

#[tokio::test]
async fn idle_timeout_closes_an_idle_http11_keepalive_connection() {
    idle_connection_is_closed(ALPN_H1).await;
}

#[tokio::test]
async fn idle_timeout_closes_an_idle_h2_connection() {
    idle_connection_is_closed(ALPN_H2_H1).await;
}

#[tokio::test]
async fn header_read_timeout_closes_a_slow_request_head() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--header-read-timeout")
        .arg("500ms")
        .start()
        .await;
    let mut tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    tls.write_all(b"GET /slowloris HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write a partial head");
    tls.flush().await.expect("flush");
    closed_by_sidecar(tls, "the sidecar to give up on an unfinished request head").await;
    assert!(app.requests().is_empty(), "{:?}", app.requests());
}

#[tokio::test]
async fn max_connections_queues_the_next_connection_while_every_slot_is_busy() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--max-connections")
        .arg("1")
        .start()
        .await;
    let config = client::config(Trust::AnyCert, ALPN_H1);
    let mut first = HttpConn::connect(sc.addr(), "localhost", config.clone()).await;
    // A request in flight: the one slot is busy, so it cannot be closed to make room.
    let held = tokio::spawn(async move {
        let status = first.get("/hold").await.status;
        (first, status)
    });
    poll_until(STEP, "the backend to hold /hold", || {
        app.requests()
            .iter()
            .any(|r| r.path == "/hold")
            .then_some(())
    })
    .await;

    let addr = sc.addr();
    let mut second = tokio::spawn(async move {
        let mut conn = HttpConn::connect(addr, "localhost", config).await;
        conn.get("/second").await.status
    });
    // The limit is visible only as something not happening: give the second client a full
    // second to (wrongly) get through.
    let early = tokio::time::timeout(Duration::from_secs(1), &mut second).await;
    assert!(
        early.is_err(),
        "a second connection was served while the first was busy: {early:?}"
    );
    assert!(
        !app.requests().iter().any(|r| r.path == "/second"),
        "the backend saw /second while the limit was reached"
    );

    // Once the first request is answered, its idle connection makes room for the second.
    app.release(1);
    let (_first, status) = within(STEP, "the held request", held).await.expect("task");
    assert_eq!(status, StatusCode::OK);
    let status = within(STEP, "the queued connection to be served", second)
        .await
        .expect("second client task");
    assert_eq!(status, StatusCode::OK, "waiting, not refused");
}
