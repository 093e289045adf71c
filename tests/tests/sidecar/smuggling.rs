//! Sidecar, http mode: requests that could smuggle a second request past the proxy, or that are
//! too large to parse, are answered by the sidecar itself and never reach the backend.

use harness::backend::Backend;
use harness::client::{self, HttpConn, RawResponse, Trust, ALPN_H1};
use harness::sidecar::Sidecar;
use http::StatusCode;

/// Sends `request` as raw bytes over TLS (HTTP/1.1) and returns the sidecar's answer.
async fn raw(sc: &Sidecar, request: &[u8]) -> Option<RawResponse> {
    let tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    client::raw_exchange(tls, request).await
}

/// `request` gets `expected` from the sidecar, the backend never sees it, and a well-formed
/// request afterwards is served (and is the only one the backend ever saw).
async fn rejected_before_the_backend(request: &[u8], expected: StatusCode, what: &str) {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    match raw(&sc, request).await {
        Some(resp) => assert_eq!(resp.status, expected.as_u16(), "{what}: got\n{}", resp.head),
        None => panic!("{what}: connection closed without a {expected} response"),
    }

    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    let ok = conn.get("/after").await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "{what}: the sidecar still serves"
    );
    let seen: Vec<String> = app.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/after"], "{what}: requests the backend received");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_gets_400() {
    rejected_before_the_backend(
        b"POST /smuggle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
        StatusCode::BAD_REQUEST,
        "Content-Length + Transfer-Encoding",
    )
    .await;
}

#[tokio::test]
async fn transfer_encoding_before_content_length_gets_400() {
    rejected_before_the_backend(
        b"POST /smuggle HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\
          Content-Length: 4\r\n\r\n0\r\n\r\n\
          GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n",
        StatusCode::BAD_REQUEST,
        "Transfer-Encoding + Content-Length",
    )
    .await;
}

#[tokio::test]
async fn duplicate_differing_content_length_gets_400() {
    rejected_before_the_backend(
        b"POST /smuggle HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\n\
          Content-Length: 5\r\n\r\nabcde",
        StatusCode::BAD_REQUEST,
        "two different Content-Length values",
    )
    .await;
}

#[tokio::test]
async fn control_byte_in_header_value_gets_400() {
    rejected_before_the_backend(
        b"GET /smuggle HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\x01b\r\n\r\n",
        StatusCode::BAD_REQUEST,
        "control byte in a header value",
    )
    .await;
}

#[tokio::test]
async fn space_in_header_name_gets_400() {
    rejected_before_the_backend(
        b"GET /smuggle HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        StatusCode::BAD_REQUEST,
        "whitespace between header name and colon",
    )
    .await;
}

fn request_with_headers(n: usize) -> Vec<u8> {
    let mut req = b"GET /many HTTP/1.1\r\nHost: localhost\r\n".to_vec();
    for i in 1..n {
        req.extend_from_slice(format!("X-Header-{i}: {i}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req
}

#[tokio::test]
async fn more_than_100_headers_gets_431() {
    rejected_before_the_backend(
        &request_with_headers(101),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "101 headers",
    )
    .await;
}

#[tokio::test]
async fn exactly_100_headers_are_forwarded() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let resp = raw(&sc, &request_with_headers(100))
        .await
        .expect("a response to 100 headers");
    assert_eq!(resp.status, 200, "{}", resp.head);
    let seen = app.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-header-99"), Some("99"));
}

#[tokio::test]
async fn head_over_64_kib_gets_431() {
    let mut req = b"GET /huge HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 80 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    rejected_before_the_backend(
        &req,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "an 80 KiB request head",
    )
    .await;
}

#[tokio::test]
async fn a_16_kib_cookie_is_forwarded() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let cookie = "c".repeat(16 * 1024);
    let req = format!("GET /cookie HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n\r\n");
    let resp = raw(&sc, req.as_bytes()).await.expect("a response");
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(app.requests()[0].header("cookie"), Some(cookie.as_str()));
}
