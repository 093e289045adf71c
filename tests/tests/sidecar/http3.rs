//! Sidecar, http mode with `--http3`: QUIC on UDP at the TCP listener's own address and port,
//! HTTP/3 requests forwarded exactly as HTTP/2 ones (forwarding headers, large bodies streamed
//! both ways, trailers, gRPC to an h2c backend, 100 concurrent streams per connection), the same
//! certificates, reloads and client authentication as TCP, `Alt-Svc` on HTTP/1.1 and HTTP/2
//! responses, `proto=h3` in the access log and the metrics, the limits (connections in total and
//! per client address counted with TCP, handshakes bounded with a Retry, handshake, idle and
//! header-read timeouts), 0-RTT refused, and a graceful shutdown.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use harness::backend::{pattern_sha256, sha256_hex, Backend, Echo};
use harness::certdir::{replace_atomic, CertsDir};
use harness::client::{self, HttpConn, Trust, ALPN_H1, ALPN_H2_H1};
use harness::grpc::{GrpcBackend, HttpProtocols, HttpTrailerBackend};
use harness::h3::{
    self, capture_initials, closed_by_peer, initial_flood, partial_request_head, H3Conn, H3Reply,
    RequestError, SilentConn, StalledHandshake, Upload, H3_NO_ERROR,
};
use harness::issuer::{Issued, Spec, TestCa};
use harness::metrics::{metrics, wait_metric};
use harness::mtls::MtlsFixture;
use harness::sidecar::{log_field, Sidecar, SidecarBuilder};
use harness::wait::{poll_until, poll_until_async, within, STEP};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use rustls::ClientConfig;

/// 4 MiB: far above QUIC's stream windows and h3's frame sizes, so only real streaming moves it.
const LARGE: u64 = 4 * 1024 * 1024;

/// Budget for moving [`LARGE`] through debug-built QUIC and TLS on a shared 2-core machine.
const LARGE_TRANSFER: Duration = Duration::from_secs(60);

/// Well under every default limit (10 s handshake and header-read timeouts, 60 s idle), so a
/// close within it is the configured limit at work.
const CLOSED_WITHIN: Duration = Duration::from_secs(5);

/// How long a connection attempt that must fail is given: a refused QUIC connection fails at
/// once, one the server ignores times out here.
const REFUSED_WITHIN: Duration = Duration::from_secs(3);

/// The per-connection cap on concurrent request streams the contract sets.
const MAX_STREAMS: usize = 100;

/// A sidecar with `--http3` in front of `backend`, on a self-signed certificate.
fn http3(backend: SocketAddr) -> SidecarBuilder {
    Sidecar::builder().backend(backend).arg("--http3")
}

/// An HTTP/3 client config that accepts the self-signed certificate.
fn any_cert() -> Arc<ClientConfig> {
    h3::config(Trust::AnyCert, None)
}

/// An echo backend and an `--http3` sidecar in front of it, with `args` added.
async fn echo_http3(args: &[&str]) -> (Backend, Sidecar) {
    let app = Backend::echo().await;
    let sc = http3(app.addr()).args(args.iter().copied()).start().await;
    (app, sc)
}

/// Asserts the sidecar closed a connection gracefully (`CONNECTION_CLOSE` with H3_NO_ERROR),
/// as it does an idle one.
fn assert_closed_gracefully(how: &quinn::ConnectionError, what: &str) {
    match how {
        quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(
            close.error_code.into_inner(),
            u64::from(H3_NO_ERROR),
            "{what}: closed gracefully (H3_NO_ERROR), not for an error: {how}"
        ),
        other => panic!(
            "{what}: the connection ended without the sidecar closing it (no CONNECTION_CLOSE, \
             so no graceful GOAWAY-then-close either): {other}"
        ),
    }
}

async fn connect(sc: &Sidecar) -> H3Conn {
    H3Conn::connect(sc.addr(), "localhost", any_cert()).await
}

async fn tcp_connect(sc: &Sidecar, alpn: &[&str]) -> HttpConn {
    HttpConn::connect(sc.addr(), "localhost", client::config(Trust::AnyCert, alpn)).await
}

/// What `Alt-Svc` must say for HTTP/3 on `port` (the contract's exact value).
fn alt_svc(port: u16) -> String {
    format!("h3=\":{port}\"; ma=86400")
}

/// Waits until the backend has seen a request for `path`.
async fn backend_saw(app: &Backend, path: &str) {
    backend_saw_n(app, path, 1).await;
}

/// Waits until the backend has seen `n` requests for `path`.
async fn backend_saw_n(app: &Backend, path: &str, n: usize) {
    poll_until(
        STEP,
        &format!("the backend to receive {n} x {path}"),
        || (app.requests().iter().filter(|r| r.path == path).count() >= n).then_some(()),
    )
    .await;
}

#[tokio::test]
async fn h3_get_is_forwarded_with_the_same_headers_as_h2() {
    let (_app, sc) = echo_http3(&[]).await;
    let conn = connect(&sc).await;
    assert_eq!(
        conn.alpn().as_deref(),
        Some("h3"),
        "ALPN h3 on the QUIC handshake"
    );

    let head = conn
        .request(Method::GET, "/over-h3?x=1")
        .header("x-end-to-end", "kept")
        .body(())
        .expect("GET head");
    let reply = conn.send(head, Upload::Empty, None, STEP).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let h3_seen = Echo::parse(&reply.body).request;
    assert_eq!(h3_seen.method, "GET");
    assert_eq!(h3_seen.path, "/over-h3?x=1");
    assert_eq!(
        h3_seen.version, "HTTP/1.1",
        "the backend is spoken to over HTTP/1.1"
    );
    let authority = format!("localhost:{}", sc.addr().port());
    assert_eq!(
        h3_seen.header("host"),
        Some(authority.as_str()),
        "the h3 :authority becomes the backend's Host"
    );
    assert_eq!(h3_seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(h3_seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(h3_seen.header("x-end-to-end"), Some("kept"));

    // The same request over HTTP/2: the backend must see the same forwarding headers.
    let mut h2 = tcp_connect(&sc, ALPN_H2_H1).await;
    assert_eq!(h2.alpn(), Some("h2"));
    let h2_seen = Echo::parse(&h2.get("/over-h3?x=1").await.body).request;
    for name in [
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-forwarded-port",
    ] {
        assert_eq!(
            h3_seen.header(name),
            h2_seen.header(name),
            "{name} differs between HTTP/3 and HTTP/2; h3 saw {:?}, h2 saw {:?}",
            h3_seen.headers,
            h2_seen.headers
        );
    }
    // A second request on the same QUIC connection.
    let again = conn.get("/again").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(Echo::parse(&again.body).request.path, "/again");
}

#[tokio::test]
async fn h3_download_of_4_mib_is_streamed_intact() {
    let (_app, sc) = echo_http3(&[]).await;
    let conn = connect(&sc).await;
    let head = conn
        .request(Method::GET, &format!("/download/{LARGE}"))
        .body(())
        .expect("download head");
    let reply = conn.send(head, Upload::Empty, None, LARGE_TRANSFER).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len() as u64, LARGE, "bytes downloaded");
    assert_eq!(
        sha256_hex(&reply.body),
        pattern_sha256(LARGE),
        "body content"
    );
}

#[tokio::test]
async fn h3_upload_of_4_mib_is_streamed_intact() {
    let (_app, sc) = echo_http3(&[]).await;
    let conn = connect(&sc).await;
    let head = conn
        .request(Method::POST, "/upload")
        .header("content-type", "application/octet-stream")
        .body(())
        .expect("upload head");
    let reply = conn
        .send(head, Upload::Pattern(LARGE), None, LARGE_TRANSFER)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let echo = Echo::parse(&reply.body);
    assert_eq!(echo.body_len, LARGE, "bytes the backend received");
    assert_eq!(echo.body_sha256, pattern_sha256(LARGE), "body content");
}

#[tokio::test]
async fn a_hundred_concurrent_h3_streams_share_one_connection_and_the_next_waits() {
    let (app, sc) = echo_http3(&[]).await;
    let conn = connect(&sc).await;
    let limit = Duration::from_secs(60);
    let hold = |requester: h3::Requester| async move {
        let head = requester
            .request(Method::GET, "/hold")
            .body(())
            .expect("hold head");
        requester.send(head, Upload::Empty, None, limit).await
    };
    let held: Vec<_> = (0..MAX_STREAMS)
        .map(|_| tokio::spawn(hold(conn.requester())))
        .collect();
    poll_until(
        Duration::from_secs(30),
        "100 requests of one QUIC connection in flight at the backend at once",
        || (app.requests().len() == MAX_STREAMS).then_some(()),
    )
    .await;

    // Stream 101 has no credit until one of the hundred ends.
    let mut extra = tokio::spawn(hold(conn.requester()));
    let early = tokio::time::timeout(Duration::from_secs(1), &mut extra).await;
    assert!(
        early.is_err(),
        "a 101st request was answered while 100 streams were open: {early:?}"
    );
    assert_eq!(
        app.requests().len(),
        MAX_STREAMS,
        "a 101st concurrent stream reached the backend"
    );

    app.release(MAX_STREAMS + 1);
    for task in held {
        let reply = within(STEP, "a held request's response", task)
            .await
            .expect("request task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "released");
    }
    let reply = within(STEP, "the 101st request, once credit came back", extra)
        .await
        .expect("request task");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(app.requests().len(), MAX_STREAMS + 1);
}

#[tokio::test]
async fn h3_trailers_pass_both_ways() {
    let app = HttpTrailerBackend::start(HttpProtocols::Http1AndH2c).await;
    let sc = http3(app.addr()).start().await;
    let conn = connect(&sc).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let head = conn
        .request(Method::POST, "/trailers")
        .header("te", "trailers")
        // Declared, as the HTTP/1.1 hop to the backend needs (see the h2 trailer tests).
        .header("trailer", "x-checksum")
        .body(())
        .expect("request head");
    let reply = conn
        .send(
            head,
            Upload::Bytes(Bytes::from_static(b"hello")),
            Some(trailers),
            STEP,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.body, Bytes::from_static(b"hello"));
    assert_eq!(
        reply.trailer("x-checksum"),
        Some("abc"),
        "the request's trailer reached the backend, which echoed it as a response trailer \
         that reached the client; trailers: {:?}",
        reply.trailers
    );
}

/// A gRPC message on the wire: uncompressed flag, length (u32 BE), the bytes.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(5 + message.len());
    buf.put_u8(0);
    buf.put_u32(message.len() as u32);
    buf.put_slice(message);
    buf.freeze()
}

#[tokio::test]
async fn grpc_over_h3_reaches_an_h2c_backend() {
    let app = GrpcBackend::start().await;
    let sc = http3(app.addr()).start().await;
    let conn = connect(&sc).await;

    let head = conn
        .request(Method::POST, "/test.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-echo", "metadata")
        .body(())
        .expect("gRPC head");
    let reply = conn
        .send(
            head,
            Upload::Bytes(grpc_frame(b"hello gRPC over h3")),
            None,
            STEP,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/grpc")),
        "{:?}",
        reply.headers
    );
    assert_eq!(
        reply.header("x-echo"),
        Some("metadata"),
        "request metadata reached the backend and its response metadata came back"
    );
    assert_eq!(reply.body, grpc_frame(b"hello gRPC over h3"));
    assert_eq!(
        reply.trailer("grpc-status"),
        Some("0"),
        "the gRPC status travels in HTTP/3 trailers: {:?}",
        reply.trailers
    );

    // A failure is a status too (a trailers-only response: the status in the headers).
    let mut fail = vec![tonic::Code::NotFound as i32 as u8];
    fail.extend_from_slice(b"missing");
    let head = conn
        .request(Method::POST, "/test.Echo/Fail")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("gRPC head");
    let reply = conn
        .send(head, Upload::Bytes(grpc_frame(&fail)), None, STEP)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let status = reply
        .header("grpc-status")
        .or_else(|| reply.trailer("grpc-status"));
    assert_eq!(
        status,
        Some("5"),
        "{:?} {:?}",
        reply.headers,
        reply.trailers
    );
}

/// The mutual-TLS sidecar of [`MtlsFixture`], with `--http3`.
fn mtls_sidecar(fx: &MtlsFixture, backend: SocketAddr) -> SidecarBuilder {
    fx.sidecar(backend).arg("--http3")
}

/// An HTTP/3 client trusting the fixture's server CA, presenting `identity`.
fn mtls_h3_client(fx: &MtlsFixture, identity: Option<&Issued>) -> Arc<ClientConfig> {
    h3::config(Trust::Ca(fx.server_ca.der()), identity)
}

/// Connects and sends `GET path`; what the client saw, or why it got nothing.
async fn h3_get_as(sc: &Sidecar, tls: Arc<ClientConfig>, path: &str) -> Result<StatusCode, String> {
    let conn = H3Conn::try_connect(sc.addr(), "localhost", tls, STEP)
        .await
        .map_err(|e| e.to_string())?;
    conn.try_get(path)
        .await
        .map(|reply| reply.status)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn mtls_over_h3_admits_an_allowed_certificate_and_refuses_the_rest() {
    let fx = MtlsFixture::new();
    let app = Backend::echo().await;
    let sc = mtls_sidecar(&fx, app.addr())
        .arg("--allow-cn")
        .arg("web")
        .start()
        .await;

    let web = fx.clients.issue(&Spec::client("web"));
    let conn = H3Conn::connect(sc.addr(), "localhost", mtls_h3_client(&fx, Some(&web))).await;
    let reply = conn.get("/whoami").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "an allowed client certificate"
    );
    let seen = app
        .requests()
        .into_iter()
        .find(|r| r.path == "/whoami")
        .expect("the backend saw the allowed client's request");
    assert_eq!(seen.header("x-client-cert-subject"), Some("CN=web"));
    assert_eq!(
        seen.header("x-client-cert-fingerprint"),
        Some(sha256_hex(web.der.as_ref()).as_str())
    );

    let other = fx.clients.issue(&Spec::client("other"));
    let stranger = TestCa::new("unknown CA").issue(&Spec::client("web"));
    let cases: [(&str, Option<&Issued>); 3] = [
        ("a CN the allow-list does not name", Some(&other)),
        ("a certificate from an unknown CA", Some(&stranger)),
        ("no certificate", None),
    ];
    for (what, identity) in cases {
        let path = format!("/refused/{}", what.replace(' ', "-"));
        let outcome = h3_get_as(&sc, mtls_h3_client(&fx, identity), &path).await;
        println!("{what}: {outcome:?}");
        assert!(
            outcome.is_err(),
            "{what} must be refused over HTTP/3, got {outcome:?}"
        );
        assert!(
            !app.requests().iter().any(|r| r.path == path),
            "{what}: the request reached the backend"
        );
    }
    // The allowed client's connection is untouched by the refusals.
    assert_eq!(conn.get("/still").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_certificate_reload_is_served_to_new_quic_connections() {
    let ca = TestCa::new("server CA");
    let old = ca.issue(&Spec::server(&["localhost"]));
    let new = ca.issue(&Spec::server(&["localhost"]));
    let dir = CertsDir::new();
    let (cert, key) = dir.flat("tls", &old);
    let app = Backend::echo().await;
    let sc = http3(app.addr())
        .arg("--cert")
        .arg(cert.display().to_string())
        .arg("--key")
        .arg(key.display().to_string())
        .arg("--reload-interval")
        .arg("1h")
        .start()
        .await;
    let kept = connect(&sc).await;
    assert_eq!(
        kept.peer_cert(),
        old.der,
        "the old certificate is served first"
    );
    assert_eq!(kept.get("/before").await.status, StatusCode::OK);

    replace_atomic(&key, &new.key_pem);
    replace_atomic(&cert, &new.cert_pem);
    let addr = sc.addr();
    let want = new.der.clone();
    poll_until_async(
        Duration::from_secs(10),
        "a new QUIC connection to be served the renewed certificate",
        || {
            let want = want.clone();
            async move {
                let conn = H3Conn::try_connect(addr, "localhost", any_cert(), STEP)
                    .await
                    .ok()?;
                (conn.peer_cert() == want).then_some(())
            }
        },
    )
    .await;
    let fresh = connect(&sc).await;
    assert_eq!(fresh.peer_cert(), new.der);
    assert_eq!(fresh.get("/fresh").await.status, StatusCode::OK);
    assert_eq!(
        kept.get("/after").await.status,
        StatusCode::OK,
        "the QUIC connection opened before the reload keeps working"
    );
}

#[tokio::test]
async fn zero_rtt_is_refused() {
    let (_app, sc) = echo_http3(&[]).await;
    let outcome = h3::zero_rtt(sc.addr(), "localhost").await;
    println!("0-RTT: {outcome:?}");
    assert!(
        !outcome.accepted(),
        "the server accepted 0-RTT data: {outcome:?}"
    );
}

#[tokio::test]
async fn alt_svc_on_http11_and_h2_names_the_listen_port_where_h3_answers() {
    let (_app, sc) = echo_http3(&[]).await;
    let port = sc.addr().port();
    for alpn in [ALPN_H1, ALPN_H2_H1] {
        let mut conn = tcp_connect(&sc, alpn).await;
        let reply = conn.get("/alt-svc").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.header("alt-svc"),
            Some(alt_svc(port).as_str()),
            "{:?} response: {:?}",
            conn.alpn(),
            reply.headers
        );
    }
    // The advertised port is where HTTP/3 answers (the listener was asked for port 0).
    let conn = H3Conn::connect(
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
        "localhost",
        any_cert(),
    )
    .await;
    assert_eq!(conn.get("/h3").await.status, StatusCode::OK);
}

#[tokio::test]
async fn alt_svc_names_the_advertise_port_when_one_is_set() {
    let app = Backend::echo().await;
    let sc = http3(app.addr())
        .arg("--http3-advertise-port")
        .arg("8443")
        .start()
        .await;
    for alpn in [ALPN_H1, ALPN_H2_H1] {
        let mut conn = tcp_connect(&sc, alpn).await;
        let reply = conn.get("/alt-svc").await;
        assert_eq!(
            reply.header("alt-svc"),
            Some(alt_svc(8443).as_str()),
            "{:?} response: {:?}",
            conn.alpn(),
            reply.headers
        );
    }
    // HTTP/3 itself is still served on the listener's port.
    assert_eq!(connect(&sc).await.get("/h3").await.status, StatusCode::OK);
}

#[tokio::test]
async fn without_http3_there_is_no_alt_svc_and_no_quic() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    for alpn in [ALPN_H1, ALPN_H2_H1] {
        let mut conn = tcp_connect(&sc, alpn).await;
        let reply = conn.get("/no-alt-svc").await;
        assert_eq!(reply.header("alt-svc"), None, "{:?}", reply.headers);
    }
    let attempt = H3Conn::try_connect(sc.addr(), "localhost", any_cert(), REFUSED_WITHIN).await;
    assert!(attempt.is_err(), "an HTTP/3 connection without --http3");
}

#[tokio::test]
async fn access_log_and_metrics_name_the_protocol() {
    let app = Backend::echo().await;
    let sc = http3(app.addr()).admin().start().await;
    let mut h1 = tcp_connect(&sc, ALPN_H1).await;
    assert_eq!(h1.get("/log-h1").await.status, StatusCode::OK);
    let mut h2 = tcp_connect(&sc, ALPN_H2_H1).await;
    assert_eq!(h2.get("/log-h2").await.status, StatusCode::OK);
    let h3 = connect(&sc).await;
    assert_eq!(h3.get("/log-h3").await.status, StatusCode::OK);
    assert_eq!(h3.get("/log-h3-again").await.status, StatusCode::OK);

    for (path, proto) in [
        ("/log-h1", "http/1.1"),
        ("/log-h2", "h2"),
        ("/log-h3", "h3"),
        ("/log-h3-again", "h3"),
    ] {
        let line = sc.wait_log_all(&[&format!("path={path} ")], STEP).await;
        assert_eq!(
            log_field(&line, "proto").as_deref(),
            Some(proto),
            "access log line: {line}"
        );
        assert_eq!(log_field(&line, "status").as_deref(), Some("200"), "{line}");
    }
    let deadline = Instant::now() + STEP;
    let text = loop {
        let text = metrics(&sc).await;
        if by_protocol(&text, "h3") == 2.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar_http_requests_by_protocol_total{{protocol=\"h3\"}} did not count the 2 HTTP/3 requests; \
             the series naming a protocol:\n{}",
            text.lines()
                .filter(|l| l.contains("protocol="))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        by_protocol(&text, "h2") >= 1.0 && by_protocol(&text, "http/1.1") >= 1.0,
        "HTTP/1.1 and HTTP/2 requests are counted by protocol too:\n{text}"
    );
}

/// The sum of the `sidecar_http_requests_by_protocol_total` samples labelled `protocol="<protocol>"`
/// (whatever other labels they carry).
fn by_protocol(metrics: &str, protocol: &str) -> f64 {
    let label = format!("protocol=\"{protocol}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("sidecar_http_requests_by_protocol_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn max_connections_counts_quic_and_tcp_connections_together() {
    let app = Backend::echo().await;
    let sc = http3(app.addr())
        .args(["--max-connections", "1"])
        .admin()
        .start()
        .await;

    // A TCP connection with a request in flight holds the one slot: a QUIC one is refused.
    let mut tcp = tcp_connect(&sc, ALPN_H1).await;
    let held = tokio::spawn(async move {
        let status = tcp.get("/hold").await.status;
        (tcp, status)
    });
    backend_saw(&app, "/hold").await;
    let refused = H3Conn::try_connect(sc.addr(), "localhost", any_cert(), REFUSED_WITHIN).await;
    match &refused {
        Ok(_) => panic!("a QUIC connection was admitted over --max-connections 1"),
        Err(e) => println!("QUIC over the limit: {e}"),
    }
    app.release(1);
    let (tcp, status) = within(STEP, "the held TCP request", held)
        .await
        .expect("held request task");
    assert_eq!(status, StatusCode::OK);
    drop(tcp);
    let addr = sc.addr();
    let quic = poll_until_async(
        STEP,
        "a QUIC connection once the TCP one is gone",
        || async move {
            H3Conn::try_connect(addr, "localhost", any_cert(), REFUSED_WITHIN)
                .await
                .ok()
        },
    )
    .await;

    // Now QUIC holds the slot with a request in flight: a TCP connection is not served.
    let requester = quic.requester();
    let held = tokio::spawn(async move {
        let head = requester
            .request(Method::GET, "/hold")
            .body(())
            .expect("head");
        requester
            .send(head, Upload::Empty, None, Duration::from_secs(30))
            .await
    });
    // The backend answers `/hold` only when released: this one is held too.
    backend_saw_n(&app, "/hold", 2).await;
    let mut second = tokio::spawn(async move {
        let config = client::config(Trust::AnyCert, ALPN_H1);
        let mut conn = HttpConn::connect(addr, "localhost", config).await;
        conn.get("/second").await.status
    });
    let early = tokio::time::timeout(Duration::from_secs(1), &mut second).await;
    if early.is_ok() {
        app.release(1);
        panic!(
            "a TCP connection was served while a QUIC connection held the only slot: {early:?}; \
             the held QUIC request: {:?}\nmetrics:\n{}\n{}",
            within(STEP, "the held QUIC request", held).await,
            metrics(&sc).await,
            sc.transcript()
        );
    }
    assert!(!app.requests().iter().any(|r| r.path == "/second"));
    app.release(1);
    let reply = within(STEP, "the held QUIC request", held)
        .await
        .expect("held request task");
    assert_eq!(reply.status, StatusCode::OK);
    quic.close();
    let status = within(STEP, "the TCP connection once the QUIC one closed", second)
        .await
        .expect("second client task");
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn max_connections_per_ip_counts_quic_and_tcp_connections_together() {
    let app = Backend::echo().await;
    let sc = http3(app.addr())
        .args(["--max-connections-per-ip", "2"])
        .admin()
        .start()
        .await;
    let mut tcp = tcp_connect(&sc, ALPN_H1).await;
    assert_eq!(tcp.get("/tcp").await.status, StatusCode::OK);
    let quic = connect(&sc).await;
    assert_eq!(quic.get("/quic").await.status, StatusCode::OK);

    let third = H3Conn::try_connect(sc.addr(), "localhost", any_cert(), REFUSED_WITHIN).await;
    assert!(
        third.is_err(),
        "a third connection (QUIC) from 127.0.0.1 was admitted over --max-connections-per-ip 2"
    );
    let third_tcp = client::try_tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    assert!(
        third_tcp.is_err(),
        "a third connection (TCP) from 127.0.0.1 completed its handshake"
    );

    let other_ip: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    let other = H3Conn::connect_from(other_ip, sc.addr(), "localhost", any_cert()).await;
    assert_eq!(other.get("/other-ip").await.status, StatusCode::OK);
    assert_eq!(quic.get("/quic-still").await.status, StatusCode::OK);
    assert_eq!(tcp.get("/tcp-still").await.status, StatusCode::OK);
    wait_metric(&sc, "sidecar_refusals_total{cause=\"per_ip_limit\"}", |v| {
        v >= 2.0
    })
    .await;
}

#[tokio::test]
async fn max_handshakes_answers_an_initial_flood_with_retry_and_serves_real_clients() {
    const BUDGET: usize = 4;
    const FLOOD: usize = 40;
    let app = Backend::echo().await;
    let sc = http3(app.addr())
        .args([
            "--max-handshakes",
            &BUDGET.to_string(),
            // The flood's handshakes never finish: they hold the budget for the whole test.
            "--handshake-timeout",
            "60s",
        ])
        .admin()
        .start()
        .await;
    let initials = capture_initials(FLOOD, "localhost").await;
    let report = initial_flood(sc.addr(), &initials, Duration::from_secs(3)).await;
    println!("{FLOOD} Initials from {FLOOD} source ports: {report:?}");
    assert!(
        report.handshakes <= BUDGET,
        "the sidecar started {} handshakes with --max-handshakes {BUDGET}: {report:?}",
        report.handshakes
    );
    assert!(
        report.handshakes >= 1,
        "not one handshake started: {report:?}"
    );
    assert_eq!(
        report.retried + report.handshakes,
        FLOOD,
        "every Initial over the budget gets a Retry: {report:?}"
    );
    wait_metric(&sc, "sidecar_quic_retries_total", |v| {
        v >= report.retried as f64
    })
    .await;

    // A real client (which answers the Retry) is served while the flood still holds the budget.
    let conn = connect(&sc).await;
    assert_eq!(conn.get("/after-the-flood").await.status, StatusCode::OK);
}

#[tokio::test]
async fn handshake_timeout_abandons_a_stalled_quic_handshake_while_others_are_served() {
    let (_app, sc) = echo_http3(&["--handshake-timeout", "500ms"]).await;
    let started = Instant::now();
    let mut stalled = StalledHandshake::start(sc.addr(), "localhost").await;
    let good = connect(&sc).await;
    assert_eq!(good.get("/meanwhile").await.status, StatusCode::OK);
    let how = stalled
        .wait_abandoned(
            CLOSED_WITHIN,
            "the sidecar to give up on a QUIC handshake it cannot finish",
        )
        .await;
    println!(
        "stalled handshake ended after {:?}: {how}",
        started.elapsed()
    );
    assert!(
        closed_by_peer(&how),
        "closed by the sidecar, not the client: {how}"
    );
    assert_eq!(good.get("/still").await.status, StatusCode::OK);
    assert_eq!(
        connect(&sc).await.get("/fresh").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn idle_timeout_closes_idle_and_silent_quic_connections() {
    let (_app, sc) = echo_http3(&["--idle-timeout", "500ms"]).await;
    let conn = connect(&sc).await;
    let silent = SilentConn::connect(sc.addr(), "localhost", any_cert()).await;
    assert_eq!(conn.get("/once").await.status, StatusCode::OK);
    let how = conn
        .wait_closed(
            CLOSED_WITHIN,
            "the sidecar to close an idle HTTP/3 connection",
        )
        .await;
    assert_closed_gracefully(&how, "an idle connection");
    let how = silent
        .wait_closed(
            CLOSED_WITHIN,
            "the sidecar to close a QUIC connection that never said anything",
        )
        .await;
    assert!(closed_by_peer(&how), "closed by the sidecar: {how}");
    assert_eq!(
        connect(&sc).await.get("/fresh").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn header_read_timeout_resets_an_unfinished_head_and_the_connection_stays_usable() {
    let (app, sc) = echo_http3(&["--header-read-timeout", "500ms"]).await;
    let conn = connect(&sc).await;
    let authority = format!("localhost:{}", sc.addr().port());
    let mut slow = conn.open_raw(&partial_request_head(&authority)).await;
    assert_eq!(conn.get("/meanwhile").await.status, StatusCode::OK);
    let started = Instant::now();
    let end = slow
        .wait_end(
            CLOSED_WITHIN,
            "the sidecar to reset a stream whose head never finished",
        )
        .await;
    println!(
        "unfinished head ended after {:?}: {end:?}",
        started.elapsed()
    );
    assert!(
        end.is_reset(),
        "the stream was reset, not answered or the connection closed: {end:?}"
    );
    assert_eq!(
        conn.get("/after").await.status,
        StatusCode::OK,
        "the connection stays usable for other streams"
    );
    assert!(
        !app.requests().iter().any(|r| r.path == "/"),
        "the unfinished head reached the backend: {:?}",
        app.requests()
    );
}

#[tokio::test]
async fn unfinished_heads_do_not_keep_a_quic_connection_open() {
    let (app, sc) = echo_http3(&["--idle-timeout", "1s", "--header-read-timeout", "500ms"]).await;
    let conn = connect(&sc).await;
    let authority = format!("localhost:{}", sc.addr().port());
    let started = Instant::now();
    // A fresh unfinished head every 300 ms, each stream kept open (never finished): traffic,
    // but never a request.
    let mut streams = Vec::new();
    within(
        Duration::from_secs(8),
        "the sidecar to close a connection that only ever starts heads",
        async {
            while !conn.is_closed() {
                match conn.try_open_raw(&partial_request_head(&authority)).await {
                    Ok(stream) => streams.push(stream),
                    Err(_) => break,
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        },
    )
    .await;
    let how = conn.wait_closed(STEP, "the close reason").await;
    println!(
        "closed after {:?} and {} unfinished heads: {how}",
        started.elapsed(),
        streams.len()
    );
    assert_closed_gracefully(&how, "a connection of unfinished heads, idle");
    assert!(app.requests().is_empty(), "{:?}", app.requests());
}

/// A sidecar with `--shutdown-grace grace` and one HTTP/3 connection whose `GET /hold` the
/// backend holds (released with `app.release(1)`): the backend, the sidecar, the connection and
/// the request's task.
async fn one_request_held(
    grace: &str,
) -> (
    Backend,
    Sidecar,
    H3Conn,
    tokio::task::JoinHandle<Result<H3Reply, RequestError>>,
) {
    let (app, sc) = echo_http3(&["--shutdown-grace", grace]).await;
    let conn = connect(&sc).await;
    let requester = conn.requester();
    let held = tokio::spawn(async move {
        let head = requester
            .request(Method::GET, "/hold")
            .body(())
            .expect("head");
        requester
            .try_send(head, Upload::Empty, None, Duration::from_secs(30))
            .await
    });
    backend_saw(&app, "/hold").await;
    (app, sc, conn, held)
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_h3_request_finish_and_takes_no_new_streams() {
    let (app, mut sc, conn, in_flight) = one_request_held("10s").await;

    sc.sigterm();
    let addr = sc.addr();
    poll_until_async(
        Duration::from_secs(5),
        "new QUIC connections to be refused",
        || async move {
            H3Conn::try_connect(addr, "localhost", any_cert(), Duration::from_secs(1))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match conn.try_get("/after-sigterm").await {
            Err(e) if e.is_goaway() => break,
            outcome => {
                assert!(
                    Instant::now() < deadline,
                    "no GOAWAY on the open connection 5 s after SIGTERM; last request: {:?}; {}",
                    outcome.map(|r| r.status),
                    sc.transcript()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !in_flight.is_finished(),
        "the in-flight request ended before its response"
    );
    assert!(sc.is_running(), "exited with a request still in flight");

    app.release(1);
    let reply = within(STEP, "the in-flight response", in_flight)
        .await
        .unwrap_or_else(|e| panic!("in-flight task: {e:?}\n{}", sc.transcript()))
        .unwrap_or_else(|e| panic!("in-flight request: {e}\n{}", sc.transcript()));
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
async fn shutdown_grace_bounds_the_drain_of_h3_requests() {
    let (_app, mut sc, _conn, stuck) = one_request_held("500ms").await;
    let sent = Instant::now();
    sc.sigterm();
    let status = sc.wait_exit(Duration::from_secs(5)).await;
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_millis(400),
        "exited after {took:?}, before the 500ms grace with a request in flight"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}; {}",
        sc.transcript()
    );
    let outcome = within(STEP, "the cut-off request to fail", stuck)
        .await
        .expect("request task");
    assert!(
        outcome.is_err(),
        "a request past the grace got {:?}",
        outcome.map(|r| r.status)
    );
}

#[tokio::test]
async fn sse_events_arrive_incrementally_over_h3() {
    let (app, sc) = echo_http3(&[]).await;
    let conn = connect(&sc).await;
    let requester = conn.requester();
    let head = requester
        .request(Method::GET, "/sse/3")
        .header("accept", "text/event-stream")
        .body(())
        .expect("sse request");
    let (resp, mut stream) = requester.open(head).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut seen = String::new();
    within(
        STEP,
        "the first event before the backend sends the rest",
        async {
            while !seen.contains("data: event 0\n\n") {
                let mut chunk = stream
                    .recv_data()
                    .await
                    .expect("a chunk")
                    .expect("stream still open");
                let bytes = chunk.copy_to_bytes(chunk.remaining());
                seen.push_str(&String::from_utf8_lossy(&bytes));
            }
        },
    )
    .await;
    assert_eq!(
        app.sse_events_sent(),
        1,
        "the backend is still holding events 1 and 2, so the first event was not buffered"
    );
    assert!(!seen.contains("event 1"), "{seen}");

    app.release(1);
    within(
        STEP,
        "the remaining events and the end of the stream",
        async {
            while let Some(mut chunk) = stream.recv_data().await.expect("a chunk") {
                let bytes = chunk.copy_to_bytes(chunk.remaining());
                seen.push_str(&String::from_utf8_lossy(&bytes));
            }
        },
    )
    .await;
    assert_eq!(
        seen,
        "id: 0\ndata: event 0\n\nid: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\n"
    );
}

/// HTTP/2's rapid reset, over QUIC: a client that cancels each request once it reached the
/// backend cannot make the backend work on more than the connection's 100 streams at once,
/// because QUIC gives a stream's credit back only once the sidecar's side of it is closed too
/// (the sidecar answers a cancelled request when the backend does).
#[tokio::test]
async fn cancelled_h3_requests_keep_their_stream_credit_until_answered() {
    let (app, sc) = echo_http3(&[]).await;
    let conn = connect(&sc).await;
    let requester = conn.requester();
    let mut started = 0;
    let mut blocked = false;
    for _ in 0..2 * MAX_STREAMS {
        let head = requester
            .request(Method::GET, "/hold")
            .body(())
            .expect("hold head");
        let Some(mut stream) = requester.start(head, Duration::from_secs(2)).await else {
            blocked = true;
            break;
        };
        started += 1;
        poll_until(STEP, "the request to reach the backend", || {
            (app.requests().len() == started).then_some(())
        })
        .await;
        // Cancelled both ways, as a browser cancels a request.
        stream.stop_stream(::h3::error::Code::H3_REQUEST_CANCELLED);
        stream.stop_sending(::h3::error::Code::H3_REQUEST_CANCELLED);
    }
    assert!(
        blocked && started == MAX_STREAMS,
        "{started} cancelled requests reached the backend from one connection (blocked: {blocked})"
    );
    // Once the backend answers them, the credit comes back and the connection is served.
    app.release(MAX_STREAMS);
    let reply = within(
        Duration::from_secs(30),
        "a request after the cancels",
        conn.get("/x"),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
}
