//! Sidecar, http mode: ALPN (h2 and HTTP/1.1, with rustls and curl), WebSocket, SSE and large
//! bodies streamed both ways, forwarding headers, hop-by-hop stripping, 502 and 504.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use harness::backend::{pattern_sha256, refused_addr, Backend, Echo};
use harness::client::{self, HttpConn, Trust, ALPN_H1, ALPN_H2_H1};
use harness::sidecar::Sidecar;
use harness::wait::{within, STEP};
use http::{Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use tokio_tungstenite::tungstenite::Message;

/// 32 MiB: far more than any buffer on the way, so only real streaming gets it through intact.
const LARGE: u64 = 32 * 1024 * 1024;

/// Budget for moving [`LARGE`] through two debug-built TLS stacks on a shared 2-core machine.
const LARGE_TRANSFER: Duration = Duration::from_secs(120);

async fn connect(sc: &Sidecar, alpn: &[&str]) -> HttpConn {
    HttpConn::connect(sc.addr(), "localhost", client::config(Trust::AnyCert, alpn)).await
}

#[tokio::test]
async fn http11_is_negotiated_by_alpn_and_proxied() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let mut conn = connect(&sc, ALPN_H1).await;
    assert_eq!(conn.alpn(), Some("http/1.1"));

    let reply = conn.get("/hello?x=1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.version, Version::HTTP_11);
    let echo = Echo::parse(&reply.body);
    assert_eq!(echo.request.method, "GET");
    assert_eq!(echo.request.path, "/hello?x=1");
    assert_eq!(echo.request.version, "HTTP/1.1");

    // Keep-alive: a second request on the same connection.
    let again = conn.get("/again").await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(Echo::parse(&again.body).request.path, "/again");
}

#[tokio::test]
async fn h2_is_negotiated_by_alpn_and_proxied_to_an_http11_backend() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let mut conn = connect(&sc, ALPN_H2_H1).await;
    assert_eq!(
        conn.alpn(),
        Some("h2"),
        "a client offering h2 first must get h2"
    );

    let reply = conn.get("/over-h2").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.version, Version::HTTP_2);
    let echo = Echo::parse(&reply.body);
    assert_eq!(echo.request.path, "/over-h2");
    assert_eq!(
        echo.request.version, "HTTP/1.1",
        "backend is spoken to over HTTP/1.1"
    );
    assert_eq!(
        echo.request.header("host"),
        Some(format!("localhost:{}", sc.addr().port()).as_str()),
        "the h2 :authority becomes the backend's Host"
    );
}

/// Runs curl against the sidecar and returns (body, "http_version http_code").
async fn curl(extra: &[&str], url: &str) -> (String, String) {
    let out = within(
        STEP + STEP,
        "curl",
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "15",
                "-w",
                "\n%{http_version} %{http_code}",
            ])
            .args(extra)
            .arg(url)
            .output(),
    )
    .await
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {extra:?} {url} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, status) = stdout.rsplit_once('\n').expect("curl -w line");
    (body.to_string(), status.to_string())
}

#[tokio::test]
async fn curl_gets_h2_through_the_sidecar() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let url = format!("https://127.0.0.1:{}/curl-h2", sc.addr().port());
    let (body, status) = curl(&["-k", "--http2"], &url).await;
    assert_eq!(status, "2 200", "body: {body}");
    assert_eq!(Echo::parse(body.as_bytes()).request.path, "/curl-h2");
}

#[tokio::test]
async fn curl_gets_http11_through_the_sidecar() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let url = format!("https://127.0.0.1:{}/curl-h1", sc.addr().port());
    let (body, status) = curl(&["-k", "--http1.1"], &url).await;
    assert_eq!(status, "1.1 200", "body: {body}");
    assert_eq!(Echo::parse(body.as_bytes()).request.path, "/curl-h1");
}

#[tokio::test]
async fn websocket_upgrade_round_trips() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    let url = format!("wss://localhost:{}/ws", sc.addr().port());
    let (mut ws, resp) = within(
        STEP,
        "WebSocket handshake",
        tokio_tungstenite::client_async(url, tls),
    )
    .await
    .expect("WebSocket handshake through the sidecar");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

    within(
        STEP,
        "send text",
        ws.send(Message::text("hello through the sidecar")),
    )
    .await
    .expect("send text frame");
    let got = within(STEP, "text echo", ws.next()).await;
    assert_eq!(
        got.expect("a frame").expect("a valid frame"),
        Message::text("hello through the sidecar")
    );

    let blob = Bytes::from(harness::backend::pattern(0, 256 * 1024));
    within(STEP, "send binary", ws.send(Message::binary(blob.clone())))
        .await
        .expect("send binary frame");
    let got = within(STEP, "binary echo", ws.next()).await;
    assert_eq!(
        got.expect("a frame").expect("a valid frame"),
        Message::binary(blob)
    );
    within(STEP, "close", ws.close(None)).await.expect("close");
}

async fn sse_arrives_incrementally(alpn: &[&str]) {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let mut conn = connect(&sc, alpn).await;
    let req = conn
        .request(Method::GET, "/sse/3")
        .header("accept", "text/event-stream")
        .body(client::empty())
        .expect("sse request");
    let resp = conn.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let mut body = resp.into_body();
    let mut seen = String::new();
    within(
        STEP,
        "the first event before the backend sends the rest",
        async {
            while !seen.contains("data: event 0\n\n") {
                let frame = body
                    .frame()
                    .await
                    .expect("stream still open")
                    .expect("frame");
                if let Some(data) = frame.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(data));
                }
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
            while let Some(frame) = body.frame().await {
                let frame = frame.expect("frame");
                if let Some(data) = frame.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(data));
                }
            }
        },
    )
    .await;
    assert_eq!(
        seen,
        "id: 0\ndata: event 0\n\nid: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\n"
    );
}

#[tokio::test]
async fn sse_events_arrive_incrementally_over_http11() {
    sse_arrives_incrementally(ALPN_H1).await;
}

#[tokio::test]
async fn sse_events_arrive_incrementally_over_h2() {
    sse_arrives_incrementally(ALPN_H2_H1).await;
}

async fn large_upload_is_streamed_intact(alpn: &[&str]) {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let mut conn = connect(&sc, alpn).await;
    let req = conn
        .request(Method::POST, "/upload")
        .header("content-type", "application/octet-stream")
        .body(client::pattern_stream(LARGE))
        .expect("upload request");
    let resp = conn.send_within(req, LARGE_TRANSFER).await;
    let reply = client::read_reply(resp).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let echo = Echo::parse(&reply.body);
    assert_eq!(echo.body_len, LARGE, "bytes the backend received");
    assert_eq!(echo.body_sha256, pattern_sha256(LARGE), "body content");
}

#[tokio::test]
async fn large_upload_streams_intact_over_http11() {
    large_upload_is_streamed_intact(ALPN_H1).await;
}

#[tokio::test]
async fn large_upload_streams_intact_over_h2() {
    large_upload_is_streamed_intact(ALPN_H2_H1).await;
}

async fn large_download_is_streamed_intact(alpn: &[&str]) {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let mut conn = connect(&sc, alpn).await;
    let resp = conn
        .send(
            conn.request(Method::GET, &format!("/download/{LARGE}"))
                .body(client::empty())
                .expect("download request"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut len = 0u64;
    within(LARGE_TRANSFER, "32 MiB download", async {
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.expect("download frame").data_ref() {
                len += data.len() as u64;
                ctx.update(data);
            }
        }
    })
    .await;
    assert_eq!(len, LARGE, "bytes downloaded");
    assert_eq!(
        harness::backend::hex(ctx.finish().as_ref()),
        pattern_sha256(LARGE)
    );
}

#[tokio::test]
async fn large_download_streams_intact_over_http11() {
    large_download_is_streamed_intact(ALPN_H1).await;
}

#[tokio::test]
async fn large_download_streams_intact_over_h2() {
    large_download_is_streamed_intact(ALPN_H2_H1).await;
}

#[tokio::test]
async fn forwarding_headers_are_set_host_is_kept_and_xff_is_appended() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let mut conn = connect(&sc, ALPN_H1).await;
    let req = Request::builder()
        .uri("/forwarded")
        .header("host", "app.example.com")
        .header("x-forwarded-for", "203.0.113.7")
        .body(client::empty())
        .expect("request");
    let reply = conn.fetch(req).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = Echo::parse(&reply.body).request;
    assert_eq!(seen.header("host"), Some("app.example.com"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("app.example.com"));
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(sc.addr().port().to_string().as_str())
    );
}

#[tokio::test]
async fn x_forwarded_for_is_the_client_ip_when_absent() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let mut conn = connect(&sc, ALPN_H2_H1).await;
    let reply = conn.get("/no-xff").await;
    let seen = Echo::parse(&reply.body).request;
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let mut conn = connect(&sc, ALPN_H1).await;
    let req = Request::builder()
        .uri("/hop")
        .header("host", "localhost")
        .header("connection", "keep-alive, x-secret-hop")
        .header("x-secret-hop", "listed in Connection")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers")
        .header("trailer", "x-checksum")
        .header("upgrade", "foo/1")
        .header("proxy-authorization", "Basic dXNlcjpwYXNz")
        .header("x-end-to-end", "kept")
        .body(client::empty())
        .expect("request");
    let reply = conn.fetch(req).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = Echo::parse(&reply.body).request;
    for hop in [
        "x-secret-hop",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "proxy-authorization",
        "transfer-encoding",
    ] {
        assert!(
            seen.header_all(hop).is_empty(),
            "hop-by-hop header {hop} reached the backend: {:?}",
            seen.headers
        );
    }
    for value in seen.header_all("connection") {
        assert!(
            !value.to_ascii_lowercase().contains("x-secret-hop"),
            "client's Connection header forwarded: {value}"
        );
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    // TE is hop-by-hop, but the client's acceptance of trailers is passed on (the sidecar
    // relays them); Trailer announces end-to-end fields and is kept (RFC 9110 section 6.6.2).
    assert_eq!(seen.header_all("te"), vec!["trailers"]);
    assert_eq!(seen.header("trailer"), Some("x-checksum"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let mut conn = connect(&sc, ALPN_H1).await;
    let reply = conn.get("/hop-response").await;
    assert_eq!(reply.status, StatusCode::OK);
    for hop in ["x-resp-hop", "keep-alive", "proxy-connection"] {
        assert!(
            reply.header(hop).is_none(),
            "hop-by-hop response header {hop} reached the client: {:?}",
            reply.headers
        );
    }
    assert_eq!(reply.header("x-end-to-end"), Some("kept"));
    assert_eq!(reply.text(), "hop");
}

#[tokio::test]
async fn refused_backend_gets_502_and_the_sidecar_recovers_when_it_comes_up() {
    let dead = refused_addr();
    let mut sc = Sidecar::start(dead).await;
    for attempt in 0..2 {
        let mut conn = connect(&sc, ALPN_H1).await;
        let reply = conn.get("/down").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "attempt {attempt}");
        let ctype = reply.header("content-type").unwrap_or_default();
        assert!(ctype.starts_with("text/plain"), "content-type {ctype:?}");
        assert!(
            !reply.body.is_empty() && reply.body.len() < 512,
            "a short plain-text body, got {:?}",
            reply.text()
        );
    }
    assert!(sc.is_running(), "the sidecar must stay up after 502s");

    let app = Backend::echo_on(dead).await;
    let mut conn = connect(&sc, ALPN_H2_H1).await;
    let reply = conn.get("/up").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(app.requests().len(), 1);
}

#[tokio::test]
async fn backend_slower_than_backend_timeout_gets_504() {
    let app = Backend::slow_headers(Duration::from_secs(8)).await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--backend-timeout")
        .arg("300ms")
        .start()
        .await;
    let mut conn = connect(&sc, ALPN_H1).await;
    let started = Instant::now();
    let reply = conn.get("/slow").await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "504 should come after about 300ms, took {:?}",
        started.elapsed()
    );
    assert_eq!(app.requests().len(), 1, "the request did reach the backend");
}

/// A backend that answers one request per connection and then closes it, without saying so
/// (no `Connection: close`), like an app whose keep-alive timeout is shorter than the sidecar's.
async fn one_request_per_connection_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let body = format!("connection {n}");
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
                // Close as soon as the response is out.
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn backend_closing_idle_connections_is_reconnected_transparently() {
    let (backend, accepted) = one_request_per_connection_backend().await;
    let sc = Sidecar::start(backend).await;
    let mut conn = connect(&sc, ALPN_H1).await;
    for i in 1..=3 {
        let reply = conn.get(&format!("/again/{i}")).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {}",
            reply.text()
        );
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one backend connection per request"
    );
}
