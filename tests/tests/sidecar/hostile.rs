//! Hostile clients: what one connection, one client address and one request can hold, and for
//! how long. Each test runs the attack (scaled down with flags) and asserts what the other
//! clients, the backend, the metrics and the logs see.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use harness::backend::Backend;
use harness::client::{self, HttpConn, Trust, ALPN_H1, ALPN_H2_H1};
use harness::metrics::{metric, metrics, wait_metric};
use harness::sidecar::Sidecar;
use harness::wait::{poll_until, poll_until_async, within, STEP};
use http::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const ALPN_H2: &[&str] = &["h2"];
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 SETTINGS frame with no settings.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

/// With `--idle-timeout 1s` the goodbye deadline is 1 s too: a connection must be gone within
/// idle + goodbye + the watchdog's tick, with room for a loaded CI machine.
const IDLE_PLUS_GOODBYE: Duration = Duration::from_secs(6);

/// An HTTP/2 PING frame (not an ACK).
fn ping(payload: u8) -> [u8; 17] {
    let mut frame = [0u8; 17];
    frame[2] = 8;
    frame[3] = 6;
    frame[9..].fill(payload);
    frame
}

/// A TLS connection with ALPN h2 that sent the preface and an empty SETTINGS, and will never
/// answer anything (not the SETTINGS ACK, not the GOAWAY's PING).
async fn silent_h2(addr: SocketAddr) -> TlsStream<TcpStream> {
    let mut tls =
        client::tls_connect(addr, "localhost", client::config(Trust::AnyCert, ALPN_H2)).await;
    assert_eq!(client::alpn(&tls).as_deref(), Some("h2"));
    tls.write_all(PREFACE).await.expect("write preface");
    tls.write_all(&EMPTY_SETTINGS)
        .await
        .expect("write SETTINGS");
    tls.flush().await.expect("flush");
    tls
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all local).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    within(STEP, "connect", socket.connect(addr)).await
}

async fn tls_from(from: [u8; 4], addr: SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = connect_from(from, addr).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let connector = TlsConnector::from(client::config(Trust::AnyCert, ALPN_H1));
    within(STEP, "TLS handshake", connector.connect(name, tcp)).await
}

async fn authority_of(sc: &Sidecar) -> String {
    format!("localhost:{}", sc.addr().port())
}

#[tokio::test]
async fn h2_clients_that_never_answer_the_goodbye_are_closed_and_cannot_lock_the_listener() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .args(["--idle-timeout", "1s", "--max-connections", "3"])
        .admin()
        .start()
        .await;
    let silent = [
        silent_h2(sc.addr()).await,
        silent_h2(sc.addr()).await,
        silent_h2(sc.addr()).await,
    ];
    let closing: Vec<_> = silent
        .into_iter()
        .map(|tls| {
            tokio::spawn(client::closed_within(
                tls,
                IDLE_PLUS_GOODBYE,
                "a silent HTTP/2 client to be closed after idle + goodbye",
            ))
        })
        .collect();
    for task in closing {
        task.await.expect("reader task");
    }
    let closed_hard = metric(
        &metrics(&sc).await,
        "sidecar_refusals_total{cause=\"close_deadline\"}",
    );
    assert!(closed_hard >= 3.0, "close_deadline counted {closed_hard}");

    let config = client::config(Trust::AnyCert, ALPN_H2_H1);
    let mut fresh = HttpConn::connect(sc.addr(), "localhost", config).await;
    assert_eq!(fresh.get("/after").await.status, StatusCode::OK);
}

#[tokio::test]
async fn h2_control_frames_alone_do_not_keep_a_connection_open() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .args(["--idle-timeout", "1s"])
        .start()
        .await;
    let tls = silent_h2(sc.addr()).await;
    let (rd, mut wr) = tokio::io::split(tls);
    // PING, WINDOW_UPDATE and PRIORITY every 200 ms: traffic, but never a request.
    let chatter = tokio::spawn(async move {
        let window_update = [0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0x10, 0];
        let priority = [0, 0, 5, 2, 0, 0, 0, 0, 3, 0, 0, 0, 0, 16];
        for i in 0..100u8 {
            let frames = [&ping(i)[..], &window_update[..], &priority[..]].concat();
            if wr.write_all(&frames).await.is_err() || wr.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    client::closed_within(
        rd,
        IDLE_PLUS_GOODBYE,
        "a client sending only control frames to be closed",
    )
    .await;
    chatter.abort();
}

#[tokio::test]
async fn one_client_address_cannot_take_every_slot() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .args(["--max-connections-per-ip", "3"])
        .admin()
        .start()
        .await;
    let authority = authority_of(&sc).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let tls = tls_from([127, 0, 0, 1], sc.addr()).await.expect("TLS");
        let mut conn = HttpConn::over(tls, authority.clone()).await;
        assert_eq!(conn.get("/held").await.status, StatusCode::OK);
        held.push(conn);
    }
    let refused = tls_from([127, 0, 0, 1], sc.addr()).await;
    assert!(
        refused.is_err(),
        "a fourth connection from the same address completed its handshake"
    );
    let other = tls_from([127, 0, 0, 2], sc.addr())
        .await
        .expect("another address is served");
    let mut other = HttpConn::over(other, authority).await;
    assert_eq!(other.get("/other").await.status, StatusCode::OK);
    assert_eq!(held[0].get("/still").await.status, StatusCode::OK);
    wait_metric(&sc, "sidecar_refusals_total{cause=\"per_ip_limit\"}", |v| {
        v == 1.0
    })
    .await;
}

#[tokio::test]
async fn stalled_handshakes_cannot_hold_the_connection_slots() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .args([
            "--max-connections",
            "4",
            "--max-handshakes",
            "2",
            "--handshake-timeout",
            "60s",
        ])
        .admin()
        .start()
        .await;
    // Ten connections that never send a ClientHello, from another address.
    let mut stalled = Vec::new();
    for _ in 0..10 {
        stalled.push(
            connect_from([127, 0, 0, 3], sc.addr())
                .await
                .expect("connect"),
        );
    }
    wait_metric(
        &sc,
        "sidecar_refusals_total{cause=\"handshake_evicted\"}",
        |v| v >= 8.0,
    )
    .await;
    let config = client::config(Trust::AnyCert, ALPN_H2_H1);
    let mut good = HttpConn::connect(sc.addr(), "localhost", config).await;
    assert_eq!(good.get("/served").await.status, StatusCode::OK);
    // The oldest stalls were closed; at most the budget is still waiting.
    let mut closed = 0;
    for mut conn in stalled {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(200), conn.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(closed >= 8, "only {closed} of 10 stalled handshakes closed");
}

#[tokio::test]
async fn a_full_sidecar_closes_the_longest_idle_keepalive_to_admit_a_new_client() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .args(["--max-connections", "2"])
        .admin()
        .start()
        .await;
    let config = client::config(Trust::AnyCert, ALPN_H1);
    let mut oldest = HttpConn::connect(sc.addr(), "localhost", config.clone()).await;
    assert_eq!(oldest.get("/a").await.status, StatusCode::OK);
    let mut newer = HttpConn::connect(sc.addr(), "localhost", config.clone()).await;
    assert_eq!(newer.get("/b").await.status, StatusCode::OK);

    let mut third = HttpConn::connect(sc.addr(), "localhost", config).await;
    assert_eq!(third.get("/c").await.status, StatusCode::OK);
    oldest.wait_closed(STEP).await;
    assert_eq!(newer.get("/b-again").await.status, StatusCode::OK);
    let evicted = metric(
        &metrics(&sc).await,
        "sidecar_refusals_total{cause=\"idle_evicted\"}",
    );
    assert_eq!(evicted, 1.0);
}

#[tokio::test]
async fn listen_backlog_is_what_was_asked_for() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .args(["--listen-backlog", "777"])
        .start()
        .await;
    let port = sc.addr().port();
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .expect("run ss (iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    // State Recv-Q Send-Q Local Peer: for a listening socket Send-Q is the backlog.
    let backlog: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(backlog, ["777"], "ss said: {text}");
    assert!(
        sc.logs()
            .iter()
            .any(|l| l.contains("listening") && l.contains("backlog=777")),
        "{}",
        sc.logs().join("\n")
    );
}

#[tokio::test]
async fn an_h2c_upgrade_is_forwarded_as_a_plain_request() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder().backend(app.addr()).admin().start().await;
    let tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    let resp = client::raw_exchange(
        tls,
        b"GET /h2c HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
    )
    .await
    .expect("a response");
    assert_eq!(resp.status, 200, "{}", resp.head);
    let seen = app.requests();
    let req = seen.iter().find(|r| r.path == "/h2c").expect("forwarded");
    assert_eq!(req.header("upgrade"), None);
    assert_eq!(req.header("http2-settings"), None);
    assert_eq!(req.header("x-forwarded-for"), Some("6.6.6.6, 127.0.0.1"));
    wait_metric(&sc, "sidecar_refusals_total{cause=\"upgrade\"}", |v| {
        v == 1.0
    })
    .await;
}

/// Sends a raw HTTP/1.1 request over TLS and returns the status.
async fn raw_status(sc: &Sidecar, request: &[u8]) -> u16 {
    let tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    client::raw_exchange(tls, request)
        .await
        .expect("a response")
        .status
}

#[tokio::test]
async fn host_rules_refuse_ambiguity_and_follow_the_request_target() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder().backend(app.addr()).admin().start().await;
    let two_hosts = b"GET /two HTTP/1.1\r\nHost: good.example\r\nHost: evil.example\r\n\r\n";
    assert_eq!(raw_status(&sc, two_hosts).await, 400);
    let bad = b"GET /bad HTTP/1.1\r\nHost: evil.example/x@good\r\n\r\n";
    assert_eq!(raw_status(&sc, bad).await, 400);
    let absolute = b"GET http://other.example/admin HTTP/1.1\r\nHost: good.example\r\n\r\n";
    assert_eq!(raw_status(&sc, absolute).await, 200);
    let seen = app.requests();
    assert!(seen.iter().all(|r| r.path != "/two" && r.path != "/bad"));
    let admin = seen.iter().find(|r| r.path == "/admin").expect("forwarded");
    assert_eq!(admin.header("host"), Some("other.example"));
    assert_eq!(admin.header("x-forwarded-host"), Some("other.example"));

    // HTTP/2: a Host header naming another authority than :authority is refused.
    let mut h2 = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H2),
    )
    .await;
    let mismatch = h2
        .request(Method::GET, "/mismatch")
        .header("host", "evil.example")
        .body(client::empty())
        .expect("request");
    assert_eq!(h2.fetch(mismatch).await.status, StatusCode::BAD_REQUEST);
    let matching = h2
        .request(Method::GET, "/matching")
        .body(client::empty())
        .expect("request");
    assert_eq!(h2.fetch(matching).await.status, StatusCode::OK);
    assert!(app.requests().iter().all(|r| r.path != "/mismatch"));
    wait_metric(&sc, "sidecar_refusals_total{cause=\"host\"}", |v| v == 3.0).await;
}

#[tokio::test]
async fn a_malformed_chunk_from_the_client_is_a_400_not_a_backend_failure() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder().backend(app.addr()).admin().start().await;
    let request = b"POST /chunks HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
                    fffffffffffffffff1\r\nxx\r\n0\r\n\r\n";
    assert_eq!(raw_status(&sc, request).await, 400);
    let text = metrics(&sc).await;
    assert_eq!(metric(&text, "sidecar_backend_errors_total"), 0.0, "{text}");
    assert!(
        !sc.logs().iter().any(|l| l.contains("WARN")),
        "a client's bad body is not worth a warning:\n{}",
        sc.logs().join("\n")
    );
}

/// An HTTP/2 connection driven by hyper's client, whose dropped response futures reset their
/// streams (RST_STREAM CANCEL), as a browser's or an attacker's would.
async fn h2_sender(
    sc: &Sidecar,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H2),
    )
    .await;
    let (sender, conn) = within(
        STEP,
        "HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)),
    )
    .await
    .expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, driver)
}

fn hold_request(sc: &Sidecar, n: usize) -> Request<http_body_util::Empty<bytes::Bytes>> {
    Request::builder()
        .uri(format!("https://localhost:{}/hold?{n}", sc.addr().port()))
        .body(http_body_util::Empty::new())
        .expect("request")
}

/// Sends `/hold?n`, waits until the backend has it, then cancels it (the client resets the
/// stream). `false` if the connection is gone.
async fn send_and_cancel(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    sc: &Sidecar,
    app: &Backend,
    n: usize,
) -> bool {
    if within(STEP, "HTTP/2 ready", sender.ready()).await.is_err() {
        return false;
    }
    let path = format!("/hold?{n}");
    let response = sender.send_request(hold_request(sc, n));
    let pending = tokio::spawn(response);
    let arrived = poll_until_async(STEP, "the backend to see the request", || {
        let seen = app.requests().iter().any(|r| r.path == path);
        let finished = pending.is_finished();
        async move { (seen || finished).then_some(seen) }
    })
    .await;
    pending.abort();
    arrived
}

#[tokio::test]
async fn cancelled_h2_requests_give_their_backend_connection_back() {
    let app = Arc::new(Backend::echo().await);
    let sc = Sidecar::builder().backend(app.addr()).start().await;
    let (mut sender, _driver) = h2_sender(&sc).await;
    for n in 0..10 {
        assert!(
            send_and_cancel(&mut sender, &sc, &app, n).await,
            "request {n}"
        );
        // Once the sidecar has seen the cancel (its access-log line), the backend answers the
        // cancelled request, and the sidecar drains the answer.
        let line = format!("path=/hold?{n} status=499");
        poll_until(STEP, "the cancel to reach the sidecar", || {
            sc.logs().iter().any(|l| l.contains(&line)).then_some(())
        })
        .await;
        app.release(1);
    }
    // A normal request after them, as a point where every earlier exchange is settled.
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H2),
    )
    .await;
    assert_eq!(conn.get("/after").await.status, StatusCode::OK);
    assert_eq!(
        app.connections_closed(),
        0,
        "cancelled requests closed backend connections ({} opened)",
        app.connections_opened()
    );
    let cancelled = sc
        .logs()
        .iter()
        .filter(|l| l.contains("/hold") && l.contains("status=499"))
        .count();
    assert_eq!(cancelled, 10, "{}", sc.logs().join("\n"));
}

#[tokio::test]
async fn a_connection_that_keeps_cancelling_requests_is_closed() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .args(["--backend-timeout", "2s"])
        .admin()
        .start()
        .await;
    let (mut sender, driver) = h2_sender(&sc).await;
    let start = std::time::Instant::now();
    let mut sent = 0;
    while sent < 300 && send_and_cancel(&mut sender, &sc, &app, sent).await {
        sent += 1;
    }
    assert!(
        sent < 300,
        "300 cancelled requests and the connection is still open"
    );
    // The burst (100), what the rate (10/s) refilled meanwhile, and a few in flight.
    let allowed = 100 + (start.elapsed().as_secs_f64() * 10.0) as usize + 5;
    assert!(
        sent <= allowed,
        "closed only after {sent} cancelled requests"
    );
    within(STEP, "the client connection to end", driver)
        .await
        .expect("driver");
    wait_metric(
        &sc,
        "sidecar_refusals_total{cause=\"stream_resets\"}",
        |v| v == 1.0,
    )
    .await;
    let warnings = sc
        .logs()
        .iter()
        .filter(|l| l.contains("cancels requests faster"))
        .count();
    assert_eq!(warnings, 1);
    app.release(300);
}

#[tokio::test]
async fn attacker_bytes_never_reach_the_logs_and_logs_carry_no_build_paths() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .start()
        .await;
    // A ClientHello whose SNI carries an escape sequence ("localhost" -> "lo\x1b[31mst").
    let mut hello = client::client_hello_bytes();
    let at = hello
        .windows(9)
        .position(|w| w == b"localhost")
        .expect("SNI in the ClientHello");
    hello[at..at + 9].copy_from_slice(b"lo\x1b[31m\x07t");
    for _ in 0..20 {
        let mut tcp = within(STEP, "connect", TcpStream::connect(sc.addr()))
            .await
            .expect("connect");
        tcp.write_all(&hello).await.expect("write ClientHello");
        client::closed_within(tcp, STEP, "the bad ClientHello to be refused").await;
    }
    // Also a few requests, whose access-log lines must not name source files either.
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    assert_eq!(conn.get("/logged").await.status, StatusCode::OK);
    // A path with a C1 control character (CSI, which terminals obey like ESC [).
    let csi = b"GET /csi\xc2\x9b31m HTTP/1.1\r\nHost: localhost\r\n\r\n";
    assert_eq!(raw_status(&sc, csi).await, 200);
    poll_until(STEP, "the access-log lines", || {
        let logs = sc.logs();
        let seen = |p: &str| logs.iter().any(|l| l.contains(p));
        (seen("/logged") && seen("/csi")).then_some(())
    })
    .await;
    let logs = sc.logs();
    assert!(
        logs.iter()
            .all(|l| !l.contains('\x1b') && !l.contains('\x07') && !l.contains('\u{9b}')),
        "raw control bytes from a client in the logs:\n{}",
        logs.join("\n")
    );
    assert!(
        logs.iter()
            .all(|l| !l.contains("log.file") && !l.contains(".rs\"") && !l.contains("/src/")),
        "source paths in the logs:\n{}",
        logs.join("\n")
    );
    let warnings = logs.iter().filter(|l| l.contains("\"WARN\"")).count();
    assert!(
        warnings <= 1,
        "{warnings} warnings for 20 bad ClientHellos:\n{}",
        logs.join("\n")
    );
}

#[tokio::test]
async fn upgraded_connections_keep_their_slot() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .args(["--max-connections-per-ip", "1"])
        .start()
        .await;
    let tls = tls_from([127, 0, 0, 1], sc.addr()).await.expect("TLS");
    let url = format!("wss://localhost:{}/ws", sc.addr().port());
    let (ws, resp) = within(
        STEP,
        "WebSocket handshake",
        tokio_tungstenite::client_async(url, tls),
    )
    .await
    .expect("WebSocket handshake through the sidecar");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    // The WebSocket is the address's one connection: a second one is refused...
    assert!(
        tls_from([127, 0, 0, 1], sc.addr()).await.is_err(),
        "an upgraded connection gave its slot back while it was open"
    );
    // ...until the WebSocket closes.
    drop(ws);
    poll_until_async(STEP, "the slot to come back", || async {
        tls_from([127, 0, 0, 1], sc.addr()).await.ok().map(|_| ())
    })
    .await;
}
