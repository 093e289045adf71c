//! Upgrading a sidecar in place (`--take-over`): a second sidecar process takes the running
//! one's listening sockets while clients keep using them. No request fails and no connection is
//! refused or reset, the running one drains and exits 0, and the new one serves every listener
//! (TLS, admin, redirect) and can be taken over in turn. A successor that fails before it is
//! ready leaves the running sidecar serving; hostile peers on the hand-over socket are refused.

use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use harness::backend::Backend;
use harness::bins::bin_path;
use harness::client::{self, closed_within, Trust, ALPN_H1};
use harness::grpc::GrpcClient;
use harness::load::{assert_clean, Load, Mix};
use harness::metrics::{metric, metrics, wait_metric};
use harness::redirect;
use harness::sidecar::{free_port, run_expect_fail, Sidecar, SidecarBuilder};
use harness::wait::{poll_until_async, within, STEP};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;

/// How long the sidecar taken over from may take to drain and exit: its streams end as soon as
/// the test ends them, well within the grace.
const DRAIN: Duration = Duration::from_secs(30);
/// The grace the sidecars are started with: longer than any stream of the tests.
const GRACE: &str = "30s";
/// How long a hostile peer that says nothing is kept (the sidecar's 5 s, and room).
const STALL: Duration = Duration::from_secs(15);

/// The demo app as a process on a loopback port: what `harness::load`'s clients expect
/// (answers on any path, gRPC `test.Echo`, a WebSocket byte echo). Killed on drop.
struct Demo {
    child: Child,
    addr: SocketAddr,
}

impl Demo {
    async fn start() -> Demo {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(bin_path("demo"))
            .env("DEMO_LISTEN", addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the demo app");
        poll_until_async(STEP, "the demo app to listen", || async move {
            TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        Demo { child, addr }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fixed addresses a sidecar and its successors share: a take-over is found by the TLS
/// listen address, and hands each listener on by its role and address.
struct Front {
    listen: SocketAddr,
    admin: SocketAddr,
    redirect: SocketAddr,
    backend: SocketAddr,
}

impl Front {
    fn new(backend: SocketAddr) -> Front {
        let port = || SocketAddr::from(([127, 0, 0, 1], free_port()));
        Front {
            listen: port(),
            admin: port(),
            redirect: port(),
            backend,
        }
    }

    fn builder(&self) -> SidecarBuilder {
        Sidecar::builder()
            .without_listen_flag()
            .args(["--listen", &self.listen.to_string()])
            .backend(self.backend)
            .admin_on(self.admin)
            .args(["--redirect-listen", &self.redirect.to_string()])
            .args(["--shutdown-grace", GRACE])
    }

    async fn start(&self) -> Sidecar {
        self.builder().start().await
    }

    async fn take_over(&self) -> Sidecar {
        self.builder().arg("--take-over").start().await
    }

    /// The flags of a successor started by `run_expect_fail`, plus `extra`.
    fn successor_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--listen",
            &self.listen.to_string(),
            "--backend",
            &self.backend.to_string(),
            "--take-over",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }
}

/// Steady request load: `harness::load`'s HTTP/1.1 keep-alive client, its new connection per
/// request and its HTTP/2 client.
struct Requests {
    load: Load,
}

impl Requests {
    fn start(addr: SocketAddr) -> Requests {
        Requests {
            load: Load::start(addr, Mix::REQUESTS),
        }
    }

    /// Stops every client; panics unless none saw a failure and each got requests through.
    async fn assert_clean(self) {
        let tallies = within(STEP, "the load's clients", self.load.finish()).await;
        assert_clean(&tallies);
    }
}

/// Waits until the sidecar at `sc` exits, asserting exit 0.
async fn exits_zero(sc: &mut Sidecar) {
    let status = sc.wait_exit(DRAIN).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; {}",
        sc.transcript()
    );
}

/// A WebSocket through the sidecar at `addr` to the demo's byte echo, upgraded.
async fn websocket(addr: SocketAddr) -> TlsStream<TcpStream> {
    harness::load::websocket_connect(addr)
        .await
        .unwrap_or_else(|e| panic!("WebSocket through {addr}: {e}"))
}

/// Sends `msg` on the WebSocket and expects it back.
async fn ws_echo(ws: &mut TlsStream<TcpStream>, msg: &str) {
    let mut echo = vec![0u8; msg.len()];
    within(STEP, "WebSocket echo", async {
        ws.write_all(msg.as_bytes()).await?;
        ws.read_exact(&mut echo).await
    })
    .await
    .unwrap_or_else(|e| panic!("WebSocket echo of {msg:?}: {e}"));
    assert_eq!(echo, msg.as_bytes());
}

/// A gRPC bidirectional stream (`test.Echo/Bidi`) through the sidecar: what is sent, and what
/// comes back.
struct Bidi {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    rx: tonic::Streaming<Bytes>,
}

impl Bidi {
    async fn open(addr: SocketAddr) -> Bidi {
        let mut client = GrpcClient::connect(addr, Trust::AnyCert).await;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let messages =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let rx = within(STEP, "gRPC stream", client.streaming("Bidi", messages))
            .await
            .expect("gRPC stream")
            .into_inner();
        Bidi { tx, rx }
    }

    async fn echo(&mut self, msg: &'static str) {
        self.tx
            .send(Bytes::from_static(msg.as_bytes()))
            .await
            .expect("send on the stream");
        let got = within(STEP, "gRPC echo", self.rx.message()).await;
        assert_eq!(
            got.expect("gRPC status"),
            Some(Bytes::from_static(msg.as_bytes()))
        );
    }

    /// Ends the stream from this side; it must end with status OK.
    async fn finish(self) {
        let Bidi { tx, mut rx } = self;
        drop(tx);
        let end = within(STEP, "the end of the gRPC stream", rx.message()).await;
        assert!(matches!(end, Ok(None)), "the stream ended with {end:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_take_over_under_load_refuses_nothing_and_the_old_sidecar_drains_then_exits_zero() {
    let app = Demo::start().await;
    let front = Front::new(app.addr);
    let mut old = front.start().await;
    let addr = old.addr();
    let load = Requests::start(addr);
    let mut ws = websocket(addr).await;
    ws_echo(&mut ws, "before the take-over\n").await;
    let mut stream = Bidi::open(addr).await;
    stream.echo("before the take-over").await;
    let served = "sidecar_http_requests_total{code=\"2xx\"}";
    wait_metric(&old, served, |n| n >= 20.0).await;

    let new = front.take_over().await;
    old.wait_log("handed over its listeners; draining", STEP)
        .await;
    new.wait_log("took over 3 listeners from the running sidecar", STEP)
        .await;
    // The admin port is the new sidecar's now: its own counters grow under the load.
    wait_metric(&new, served, |n| n >= 20.0).await;
    assert!(old.is_running(), "the old sidecar left its streams");
    // The WebSocket and the HTTP/2 stream go on through the draining sidecar, then end normally.
    ws_echo(&mut ws, "during the drain\n").await;
    stream.echo("during the drain").await;
    stream.finish().await;
    within(STEP, "closing the WebSocket", ws.shutdown())
        .await
        .expect("WebSocket close");
    closed_within(&mut ws, STEP, "the WebSocket's close").await;
    exits_zero(&mut old).await;

    // With the old process gone, the new one serves every listener.
    let before = metric(&metrics(&new).await, served);
    wait_metric(&new, served, |n| n >= before + 20.0).await;
    load.assert_clean().await;
    let moved = redirect::request(front.redirect, "GET", "/after", Some("a.example")).await;
    assert_eq!(moved.status, 308, "{}", moved.head);
    let text = metrics(&new).await;
    assert_eq!(metric(&text, "sidecar_up"), 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_successor_that_fails_before_ready_leaves_the_running_sidecar_serving() {
    let app = Demo::start().await;
    let front = Front::new(app.addr);
    let mut old = front.start().await;
    let load = Requests::start(old.addr());
    wait_metric(&old, "sidecar_http_requests_total{code=\"2xx\"}", |n| {
        n >= 10.0
    })
    .await;

    // Its certificate does not exist: a configuration error, after it got the listeners.
    let missing = [
        "--cert",
        "/nonexistent/cert.pem",
        "--key",
        "/nonexistent/key.pem",
    ];
    let out = run_expect_fail(&as_strs(&front.successor_args(&missing)), &[]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--cert"), "{}", out.stderr);
    // A listener the running sidecar does not have, on a port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    let out = run_expect_fail(
        &as_strs(&front.successor_args(&["--redirect-listen", &port])),
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("--redirect-listen"), "{}", out.stderr);

    wait_metric(&old, "sidecar_handovers_total{result=\"aborted\"}", |n| {
        n >= 2.0
    })
    .await;
    assert!(old.is_running(), "{}", old.transcript());
    // Still the one serving, and still able to hand over.
    let served = "sidecar_http_requests_total{code=\"2xx\"}";
    let before = metric(&metrics(&old).await, served);
    wait_metric(&old, served, |n| n >= before + 10.0).await;
    let new = front.take_over().await;
    exits_zero(&mut old).await;
    wait_metric(&new, served, |n| n >= 10.0).await;
    load.assert_clean().await;
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[tokio::test]
async fn take_over_with_nothing_running_binds_and_can_itself_be_taken_over_twice() {
    let app = Backend::echo().await;
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let builder = Sidecar::builder()
        .without_listen_flag()
        .args(["--listen", &listen.to_string(), "--take-over"])
        .backend(app.addr());
    let mut first = builder.clone().start().await;
    first
        .wait_log("no running sidecar to take over from", STEP)
        .await;
    get_ok(first.addr()).await;

    let mut second = builder.clone().start().await;
    second
        .wait_log("took over 1 listeners from the running sidecar", STEP)
        .await;
    exits_zero(&mut first).await;
    get_ok(second.addr()).await;

    let third = builder.start().await;
    third
        .wait_log("took over 1 listeners from the running sidecar", STEP)
        .await;
    exits_zero(&mut second).await;
    get_ok(third.addr()).await;
}

/// One `GET` on a new connection through the sidecar at `addr`, answered 200.
async fn get_ok(addr: SocketAddr) {
    let mut conn =
        client::HttpConn::connect(addr, "localhost", client::config(Trust::AnyCert, ALPN_H1)).await;
    assert_eq!(conn.get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_running_sidecar_that_never_answers_fails_the_take_over_with_exit_1() {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let name = shared::handover::socket_name(listen);
    // Something holds the hand-over socket and accepts, but never answers.
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let _silent = std::os::unix::net::UnixListener::bind_addr(&addr).expect("hold the name");
    let listen_arg = listen.to_string();
    let out = run_expect_fail(
        &[
            "--listen",
            &listen_arg,
            "--take-over",
            "--take-over-timeout",
            "1s",
        ],
        &[],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].starts_with("error: take-over failed: no answer from the running sidecar"),
        "{}",
        out.stderr
    );
    // It never listened: the port is still free.
    std::net::TcpListener::bind(listen).expect("the TLS port was never bound");
}

/// A frame of the hand-over protocol as a peer would write it: magic, `version`, `kind`, body.
fn frame(version: u8, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = b"TSHO".to_vec();
    out.extend_from_slice(&[version, kind]);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A well-formed request for the listeners, asking for 30 s.
fn hello() -> Vec<u8> {
    frame(1, 1, &30_000u32.to_be_bytes())
}

async fn hand_over_socket(listen: SocketAddr) -> UnixStream {
    let name = shared::handover::socket_name(listen);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let std = std::os::unix::net::UnixStream::connect_addr(&addr)
        .unwrap_or_else(|e| panic!("connect to the hand-over socket @{name}: {e}"));
    std.set_nonblocking(true).expect("nonblocking");
    UnixStream::from_std(std).expect("tokio stream")
}

/// Reads whatever the sidecar answers until it closes.
async fn answer(mut s: UnixStream, limit: Duration, what: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    within(limit, what, async {
        while let Ok(n @ 1..) = s.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_peers_on_the_hand_over_socket_are_refused_and_a_real_take_over_still_works() {
    let app = Demo::start().await;
    let front = Front::new(app.addr);
    let mut old = front.start().await;
    let load = Requests::start(old.addr());

    // Connects and says nothing: refused after the sidecar's wait.
    let stalled = hand_over_socket(front.listen).await;
    let stall = tokio::spawn(answer(stalled, STALL, "the stalled peer to be closed"));
    garbage_and_oversized_are_refused(front.listen).await;
    // Another protocol version: told why.
    let mut s = hand_over_socket(front.listen).await;
    s.write_all(&frame(9, 1, &30_000u32.to_be_bytes()))
        .await
        .expect("write");
    let said = answer(s, STEP, "another version to be refused").await;
    assert!(
        String::from_utf8_lossy(&said).contains("unsupported protocol version 9"),
        "{said:?}"
    );
    a_second_asker_is_refused(front.listen).await;
    assert!(within(STALL, "the stalled peer", stall).await.is_ok());

    let refused = "sidecar_handovers_total{result=\"refused\"}";
    wait_metric(&old, refused, |n| n >= 5.0).await;
    wait_metric(&old, "sidecar_handovers_total{result=\"aborted\"}", |n| {
        n >= 1.0
    })
    .await;
    old.wait_log("refused a take-over request; serving on", STEP)
        .await;
    assert!(old.is_running(), "{}", old.transcript());

    let new = front.take_over().await;
    exits_zero(&mut old).await;
    wait_metric(&new, "sidecar_http_requests_total{code=\"2xx\"}", |n| {
        n >= 10.0
    })
    .await;
    load.assert_clean().await;
}

/// Garbage, then a header announcing a body past the limit (and the body): each closed.
async fn garbage_and_oversized_are_refused(listen: SocketAddr) {
    let mut s = hand_over_socket(listen).await;
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(answer(s, STEP, "garbage to be refused").await, b"");
    let mut s = hand_over_socket(listen).await;
    let mut oversized = b"TSHO\x01\x01\xff\xff".to_vec();
    oversized.extend(std::iter::repeat_n(b'x', 64 * 1024));
    let writer = tokio::spawn(async move {
        let _ = s.write_all(&oversized).await;
        s
    });
    let s = within(STEP, "oversized write", writer)
        .await
        .expect("writer");
    assert_eq!(
        answer(s, STEP, "an oversized message to be refused").await,
        b""
    );
}

/// While one peer is being handed the listeners (and never says it is ready), a second asking
/// is told no; then the first goes away, which the sidecar counts as an aborted take-over.
async fn a_second_asker_is_refused(listen: SocketAddr) {
    let mut first = hand_over_socket(listen).await;
    first.write_all(&hello()).await.expect("write");
    let mut head = [0u8; 6];
    within(STEP, "the listeners", first.read_exact(&mut head))
        .await
        .expect("the listeners");
    assert_eq!(&head, b"TSHO\x01\x02", "a Listeners frame");
    let mut second = hand_over_socket(listen).await;
    second.write_all(&hello()).await.expect("write");
    let said = answer(second, STEP, "a second asker to be refused").await;
    assert!(
        String::from_utf8_lossy(&said).contains("another take-over is in progress"),
        "{said:?}"
    );
}
