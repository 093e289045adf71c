//! gRPC through the sidecar (issue 12), with real tonic clients and a real tonic service
//! (`harness::grpc`). http mode: gRPC requests go to the backend over h2c (`--backend-protocol
//! auto`, the default), every call shape passes, deadlines are enforced by the sidecar,
//! failures are gRPC statuses (HTTP 200 + `grpc-status`), the access log and metrics carry the
//! gRPC status, and HTTP trailers pass both ways. tcp mode with `--alpn h2`: the bytes of a gRPC
//! connection are relayed as they are.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use harness::backend::{pattern, refused_addr};
use harness::certs::{CertPair, KeyFormat, Pki};
use harness::client::{self, HttpConn, Trust, ALPN_H1};
use harness::grpc::{
    body_and_trailers, body_with_trailers, collect, fail_request, server_stream_request,
    GrpcBackend, GrpcClient, HttpProtocols, HttpTrailerBackend,
};
use harness::sidecar::{log_field, Sidecar, SidecarBuilder};
use harness::wait::{poll_until_async, read_to_close, within, STEP};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tokio::io::AsyncWriteExt;
use tonic::{Code, Request};

/// 4 MiB: as large as gRPC's customary default message limit, far above any frame or window.
const LARGE: usize = 4 * 1024 * 1024;

/// Budget for one call moving [`LARGE`] through debug-built TLS and HTTP/2 on a shared machine.
const LARGE_CALL: Duration = Duration::from_secs(60);

/// A test CA and a `localhost` certificate it signed, for the sidecar to serve.
struct Tls {
    pki: Pki,
    pair: CertPair,
}

impl Tls {
    fn new() -> Tls {
        let pki = Pki::new();
        let pair = pki.leaf(&["localhost"], KeyFormat::EcPkcs8);
        Tls { pki, pair }
    }

    /// What a client trusts: the test CA (so the name is checked too).
    fn trust(&self) -> Trust {
        Trust::Ca(self.pki.ca_der())
    }

    /// A sidecar serving the test certificate in front of `backend`.
    fn sidecar(&self, backend: std::net::SocketAddr) -> SidecarBuilder {
        Sidecar::builder().backend(backend).cert(&self.pair)
    }
}

/// Unary, server-streaming (100 messages), client-streaming (100 messages) and bidi (50
/// interleaved round trips) calls, each checked message by message.
async fn every_call_shape(client: &mut GrpcClient) {
    let mut req = Request::new(Bytes::from_static(b"hello gRPC"));
    req.metadata_mut()
        .insert("x-echo", "metadata".parse().expect("metadata value"));
    let resp = within(STEP, "Unary", client.unary("Unary", req))
        .await
        .expect("Unary call");
    assert_eq!(
        resp.metadata().get("x-echo").and_then(|v| v.to_str().ok()),
        Some("metadata"),
        "request metadata reaches the backend and its response metadata comes back"
    );
    assert_eq!(resp.into_inner(), Bytes::from_static(b"hello gRPC"));

    let req = Request::new(server_stream_request(100, b"streamed"));
    let mut replies = within(STEP, "ServerStream", async {
        let mut s = client
            .server_streaming("ServerStream", req)
            .await?
            .into_inner();
        collect(&mut s).await
    })
    .await
    .expect("ServerStream call");
    assert_eq!(replies.len(), 100, "every streamed message arrives");
    replies.dedup();
    assert_eq!(replies, vec![Bytes::from_static(b"streamed")]);

    let messages: Vec<Bytes> = (0..100u8).map(|i| Bytes::from(vec![i; 1000])).collect();
    let total = within(
        STEP,
        "ClientStream",
        client.client_streaming("ClientStream", stream::iter(messages)),
    )
    .await
    .expect("ClientStream call")
    .into_inner();
    assert_eq!(total.as_ref(), &100_000u64.to_be_bytes(), "bytes received");

    // Bidi: message i+1 is sent only after the echo of message i arrived, so each answer must
    // cross the sidecar while the call is still open both ways.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let outgoing = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tx.send(Bytes::from("ping 0"))
        .expect("queue the first message");
    let mut echoes = within(
        STEP,
        "Bidi response head",
        client.streaming("Bidi", outgoing),
    )
    .await
    .expect("Bidi call")
    .into_inner();
    for i in 0..50 {
        let echo = within(STEP, &format!("Bidi echo {i}"), echoes.message())
            .await
            .expect("Bidi message")
            .expect("Bidi stream still open");
        assert_eq!(echo, Bytes::from(format!("ping {i}")));
        if i < 49 {
            tx.send(Bytes::from(format!("ping {}", i + 1)))
                .expect("queue the next message");
        }
    }
    drop(tx);
    let rest = within(STEP, "Bidi end", collect(&mut echoes))
        .await
        .expect("Bidi ends with OK");
    assert!(rest.is_empty(), "nothing after the last echo: {rest:?}");
}

/// A 4 MiB request answered by a 4 MiB response.
async fn large_messages(client: &mut GrpcClient) {
    let payload = Bytes::from(pattern(0, LARGE));
    let back = within(LARGE_CALL, "4 MiB Unary", client.echo(payload.clone()))
        .await
        .expect("4 MiB Unary call");
    assert_eq!(back.len(), LARGE, "response size");
    assert!(
        back == payload,
        "the 4 MiB response differs from the request"
    );
}

#[tokio::test]
async fn grpc_backend_answers_directly_over_h2c() {
    // The harness itself, without a sidecar: what the sidecar tests compare with.
    let app = GrpcBackend::start().await;
    let mut client = GrpcClient::connect_h2c(app.addr()).await;
    every_call_shape(&mut client).await;
    large_messages(&mut client).await;
    let status = client.fail(Code::NotFound, "no such thing").await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such thing");
}

#[tokio::test]
async fn grpc_calls_of_every_shape_pass_in_http_mode() {
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls.sidecar(app.addr()).start().await;
    let mut client = GrpcClient::connect(sc.addr(), tls.trust()).await;
    every_call_shape(&mut client).await;
}

#[tokio::test]
async fn grpc_4mib_messages_pass_both_ways_in_http_mode() {
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls.sidecar(app.addr()).start().await;
    let mut client = GrpcClient::connect(sc.addr(), tls.trust()).await;
    large_messages(&mut client).await;
}

/// 200 concurrent unary calls over one connection of `client`, all answered.
async fn concurrent_calls(client: &GrpcClient) {
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move { (i, client.echo(format!("call {i}")).await) })
        })
        .collect();
    let results = within(
        STEP * 6,
        "200 concurrent calls",
        futures_util::future::join_all(calls),
    )
    .await;
    for joined in results {
        let (i, result) = joined.expect("call task");
        let got = result.unwrap_or_else(|s| panic!("call {i} failed: {s:?}"));
        assert_eq!(got, Bytes::from(format!("call {i}")));
    }
    assert_eq!(
        client.connects(),
        1,
        "every call went over the one connection"
    );
}

#[tokio::test]
async fn grpc_200_concurrent_calls_share_one_client_connection() {
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls.sidecar(app.addr()).start().await;
    let client = GrpcClient::connect(sc.addr(), tls.trust()).await;
    concurrent_calls(&client).await;
}

#[tokio::test]
async fn grpc_deadline_is_enforced_by_the_sidecar() {
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls.sidecar(app.addr()).start().await;
    // A client that leaves the deadline to the server side: the backend ignores it, so only
    // the sidecar can answer DEADLINE_EXCEEDED.
    let mut client = GrpcClient::connect_no_client_deadline(sc.addr(), tls.trust()).await;
    let outcome = within(
        STEP,
        "Sleep 5000 ms with a 300 ms deadline",
        client.sleep(5000, Duration::from_millis(300)),
    )
    .await;
    let status = outcome.expect_err("a call past its deadline must fail");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let line = sc.wait_log_all(&["path=/test.Echo/Sleep"], STEP).await;
    assert_eq!(
        log_field(&line, "grpc_status").as_deref(),
        Some("4"),
        "access log: {line}"
    );
    // The connection is still good for the next call.
    let again = within(STEP, "a call after the deadline", client.echo("after"))
        .await
        .expect("call after the deadline");
    assert_eq!(again, Bytes::from_static(b"after"));
}

#[tokio::test]
async fn grpc_deadline_ends_a_stream_the_backend_holds_open() {
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls.sidecar(app.addr()).start().await;
    let mut client = GrpcClient::connect_no_client_deadline(sc.addr(), tls.trust()).await;
    // The head and a first message come at once; then the backend sends nothing, ever, and
    // ignores the deadline: the sidecar ends the stream with DEADLINE_EXCEEDED.
    let mut stream = within(
        STEP,
        "StreamThenStall's head",
        client.stream_then_stall(Duration::from_millis(500)),
    )
    .await
    .expect("the stream starts");
    let first = within(STEP, "the first message", stream.message())
        .await
        .expect("first message")
        .expect("a message");
    assert_eq!(first, Bytes::from_static(b"first"));
    let end = within(STEP, "the stream's end at its deadline", stream.message()).await;
    let status = end.expect_err("the stream must end with a status");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let line = sc
        .wait_log_all(&["path=/test.Echo/StreamThenStall"], STEP)
        .await;
    assert_eq!(
        log_field(&line, "grpc_status").as_deref(),
        Some("4"),
        "{line}"
    );
}

#[tokio::test]
async fn grpc_streams_outlive_the_backend_timeout_while_they_move() {
    // --backend-timeout bounds the wait for the response head only: a bidi stream that keeps
    // moving runs well past it.
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls
        .sidecar(app.addr())
        .args(["--backend-timeout", "1s"])
        .start()
        .await;
    let mut client = GrpcClient::connect(sc.addr(), tls.trust()).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let outbound =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    tx.send(Bytes::from_static(b"0")).await.expect("send");
    let mut inbound = within(STEP, "Bidi's head", client.streaming("Bidi", outbound))
        .await
        .expect("the stream starts")
        .into_inner();
    let started = std::time::Instant::now();
    let mut round = 0u32;
    // Until 2.5 s (2.5 times the backend timeout) have passed with messages moving.
    while started.elapsed() < Duration::from_millis(2500) {
        let echoed = within(STEP, "an echo", inbound.message())
            .await
            .expect("the stream is still open")
            .expect("a message");
        assert_eq!(echoed, Bytes::from(round.to_string()));
        round += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(Bytes::from(round.to_string())).await.expect("send");
    }
    drop(tx);
    let last = within(STEP, "the last echo", inbound.message())
        .await
        .expect("the stream ends cleanly");
    assert_eq!(last, Some(Bytes::from(round.to_string())));
    assert_eq!(
        within(STEP, "the stream's end", inbound.message())
            .await
            .expect("status OK"),
        None
    );
}

#[tokio::test]
async fn grpc_backend_down_is_unavailable() {
    let tls = Tls::new();
    let sc = tls.sidecar(refused_addr()).start().await;
    let mut client = GrpcClient::connect(sc.addr(), tls.trust()).await;
    let status = within(STEP, "a call with the backend down", client.echo("anyone?"))
        .await
        .expect_err("no backend, no answer");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        !status.message().is_empty(),
        "the status says why: {status:?}"
    );
}

#[tokio::test]
async fn grpc_error_statuses_and_trailers_reach_the_client_intact() {
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls.sidecar(app.addr()).start().await;
    let mut client = GrpcClient::connect(sc.addr(), tls.trust()).await;

    // Trailers-only: the status in the response's only HEADERS frame.
    let mut req = Request::new(fail_request(Code::NotFound, "no such widget"));
    req.metadata_mut()
        .insert("x-echo", "in the status".parse().expect("metadata value"));
    let status = within(STEP, "Fail", client.unary("Fail", req))
        .await
        .expect_err("Fail fails");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no such widget");
    assert_eq!(
        status
            .metadata()
            .get("x-echo")
            .and_then(|v| v.to_str().ok()),
        Some("in the status"),
        "{status:?}"
    );

    // Real trailers: a message, then the status in HEADERS after the DATA.
    let mut req = Request::new(fail_request(Code::PermissionDenied, "not yours"));
    req.metadata_mut()
        .insert("x-echo", "in the trailers".parse().expect("metadata value"));
    let mut replies = within(STEP, "FailAfter", client.server_streaming("FailAfter", req))
        .await
        .expect("FailAfter answers a message first")
        .into_inner();
    let first = within(STEP, "FailAfter message", replies.message())
        .await
        .expect("the message before the failure")
        .expect("one message");
    assert_eq!(first, Bytes::from_static(b"before the failure"));
    let status = within(STEP, "FailAfter status", replies.message())
        .await
        .expect_err("the stream ends with the status from the trailers");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(status.message(), "not yours");
    assert_eq!(
        status
            .metadata()
            .get("x-echo")
            .and_then(|v| v.to_str().ok()),
        Some("in the trailers"),
        "{status:?}"
    );
}

/// The sum of `sidecar_grpc_responses_total` samples labelled `code="<code>"`.
fn grpc_responses(metrics: &str, code: u32) -> f64 {
    let label = format!("code=\"{code}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("sidecar_grpc_responses_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn grpc_status_is_in_the_access_log_and_the_metrics() {
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls.sidecar(app.addr()).admin().start().await;
    let mut client = GrpcClient::connect(sc.addr(), tls.trust()).await;
    for i in 0..3 {
        within(STEP, "Unary", client.echo(format!("ok {i}")))
            .await
            .expect("OK call");
    }
    let status = within(STEP, "Fail", client.fail(Code::NotFound, "missing")).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let unary_lines = poll_until_async(STEP, "3 access log lines for Unary", || async {
        let lines: Vec<String> = sc
            .logs()
            .into_iter()
            .filter(|l| l.contains("path=/test.Echo/Unary"))
            .collect();
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    for line in &unary_lines {
        assert_eq!(
            log_field(line, "grpc_status").as_deref(),
            Some("0"),
            "{line}"
        );
        assert_eq!(log_field(line, "status").as_deref(), Some("200"), "{line}");
    }
    let line = sc.wait_log("path=/test.Echo/Fail", STEP).await;
    assert_eq!(
        log_field(&line, "grpc_status").as_deref(),
        Some("5"),
        "{line}"
    );

    let admin = sc.admin_addr();
    let (ok, not_found) = poll_until_async(
        STEP,
        "sidecar_grpc_responses_total to count the calls",
        || async move {
            let text = client::plain_get(admin, "/metrics").await.text();
            let counts = (grpc_responses(&text, 0), grpc_responses(&text, 5));
            (counts.0 >= 3.0 && counts.1 >= 1.0).then_some(counts)
        },
    )
    .await;
    assert!(ok >= 3.0 && not_found >= 1.0, "{ok} {not_found}");
}

#[tokio::test]
async fn backend_protocol_http1_cannot_reach_an_h2c_only_grpc_backend() {
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls
        .sidecar(app.addr())
        .args(["--backend-protocol", "http1"])
        .start()
        .await;
    let mut client = GrpcClient::connect(sc.addr(), tls.trust()).await;
    let outcome = within(STEP, "a gRPC call over HTTP/1.1", client.echo("h1?")).await;
    let status = outcome.expect_err("an h2c-only server cannot answer HTTP/1.1");
    assert_ne!(status.code(), Code::Ok, "{status:?}");
}

#[tokio::test]
async fn backend_protocol_h2c_sends_plain_http_over_http2() {
    let tls = Tls::new();
    let app = HttpTrailerBackend::start(HttpProtocols::H2cOnly).await;
    let sc = tls
        .sidecar(app.addr())
        .args(["--backend-protocol", "h2c"])
        .start()
        .await;
    let mut conn =
        HttpConn::connect(sc.addr(), "localhost", client::config(tls.trust(), ALPN_H1)).await;
    let reply = conn.get("/plain").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-request-version"), Some("HTTP/2.0"));
}

/// An HTTP/2 client's request trailers reach the backend, and its response trailers come back.
async fn h2_trailers_round_trip(backend_protocol: Option<&str>, expected_version: &str) {
    let tls = Tls::new();
    let protocols = match backend_protocol {
        Some("h2c") => HttpProtocols::H2cOnly,
        _ => HttpProtocols::Http1AndH2c,
    };
    let app = HttpTrailerBackend::start(protocols).await;
    let mut builder = tls.sidecar(app.addr());
    if let Some(p) = backend_protocol {
        builder = builder.args(["--backend-protocol", p]);
    }
    let sc = builder.start().await;
    let mut conn =
        HttpConn::connect(sc.addr(), "localhost", client::config(tls.trust(), &["h2"])).await;
    assert_eq!(conn.alpn(), Some("h2"));
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let req = conn
        .request(Method::POST, "/trailers")
        .header("te", "trailers")
        // Declared, as HTTP/1.1 needs: hyper writes a chunked trailer only if the head's
        // `Trailer` names it, so an undeclared one is dropped on the way to an HTTP/1.1 backend.
        .header("trailer", "x-checksum")
        .body(body_with_trailers(b"hello", trailers))
        .expect("request with trailers");
    let resp = conn.send(req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("x-request-version")
            .and_then(|v| v.to_str().ok()),
        Some(expected_version),
        "the backend was spoken to over {expected_version}"
    );
    let (body, trailers) = body_and_trailers(resp.into_body())
        .await
        .expect("response body and trailers");
    assert_eq!(body, Bytes::from_static(b"hello"));
    let trailers = trailers.expect("the response has trailers");
    assert_eq!(
        trailers.get("x-checksum").and_then(|v| v.to_str().ok()),
        Some("abc"),
        "{trailers:?}"
    );
}

#[tokio::test]
async fn h2_trailers_round_trip_to_an_http11_backend() {
    // `auto`: a request that is not gRPC goes to the backend over HTTP/1.1 (chunked trailers).
    h2_trailers_round_trip(None, "HTTP/1.1").await;
}

#[tokio::test]
async fn h2_trailers_round_trip_to_an_h2c_backend() {
    h2_trailers_round_trip(Some("h2c"), "HTTP/2.0").await;
}

/// A chunked body: its data and its trailer lines (`name: value`), or why it is not one.
fn dechunk(mut rest: &[u8]) -> Result<(Vec<u8>, Vec<String>), String> {
    let mut data = Vec::new();
    loop {
        let end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line without CRLF")?;
        let size_line = String::from_utf8_lossy(&rest[..end]).into_owned();
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|e| format!("chunk size {size_line:?}: {e}"))?;
        rest = &rest[end + 2..];
        if size == 0 {
            break;
        }
        if rest.len() < size + 2 {
            return Err(format!("a {size}-byte chunk cut short"));
        }
        data.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    let text = String::from_utf8_lossy(rest);
    let mut trailers = Vec::new();
    for line in text.split("\r\n") {
        if line.is_empty() {
            return Ok((data, trailers));
        }
        trailers.push(line.to_string());
    }
    Err(format!("no empty line after the trailers: {text:?}"))
}

/// An HTTP/1.1 client sending a chunked body with a trailer and `TE: trailers` gets a chunked
/// response with the backend's trailer after the last chunk.
async fn http11_chunked_trailers_round_trip(backend_protocol: Option<&str>) {
    let tls = Tls::new();
    let protocols = match backend_protocol {
        Some("h2c") => HttpProtocols::H2cOnly,
        _ => HttpProtocols::Http1AndH2c,
    };
    let app = HttpTrailerBackend::start(protocols).await;
    let mut builder = tls.sidecar(app.addr());
    if let Some(p) = backend_protocol {
        builder = builder.args(["--backend-protocol", p]);
    }
    let sc = builder.start().await;
    let tls_stream =
        client::tls_connect(sc.addr(), "localhost", client::config(tls.trust(), ALPN_H1)).await;
    chunked_trailer_exchange(tls_stream).await;
}

/// Sends a chunked request with trailer `x-checksum: abc` and `TE: trailers` on `stream`, and
/// checks the response is chunked with that trailer after the last chunk.
async fn chunked_trailer_exchange(
    mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
) {
    let request = b"POST /trailers HTTP/1.1\r\n\
        Host: localhost\r\n\
        Transfer-Encoding: chunked\r\n\
        TE: trailers\r\n\
        Trailer: x-checksum\r\n\
        Connection: close\r\n\
        \r\n\
        5\r\nhello\r\n\
        0\r\n\
        x-checksum: abc\r\n\
        \r\n";
    stream.write_all(request).await.expect("write request");
    stream.flush().await.expect("flush request");
    let raw = read_to_close(STEP, "the chunked response", stream).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head: {text:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "the response is chunked: {text:?}"
    );
    let (data, trailers) =
        dechunk(body.as_bytes()).unwrap_or_else(|e| panic!("{e}; response: {text:?}"));
    assert_eq!(data, b"hello", "{text:?}");
    assert!(
        trailers
            .iter()
            .any(|l| l.eq_ignore_ascii_case("x-checksum: abc")),
        "the trailer follows the last chunk: {text:?}"
    );
}

#[tokio::test]
async fn trailer_backend_echoes_trailers_directly() {
    // The harness itself, without a sidecar: HTTP/1.1 chunked trailers and h2c trailers.
    let app = HttpTrailerBackend::start(HttpProtocols::Http1AndH2c).await;
    let tcp = within(STEP, "connect", tokio::net::TcpStream::connect(app.addr()))
        .await
        .expect("connect to the trailer backend");
    chunked_trailer_exchange(tcp).await;

    let app = HttpTrailerBackend::start(HttpProtocols::H2cOnly).await;
    let tcp = within(STEP, "connect", tokio::net::TcpStream::connect(app.addr()))
        .await
        .expect("connect to the trailer backend");
    let (mut sender, conn) = within(
        STEP,
        "h2c handshake",
        hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        ),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}/trailers", app.addr()))
        .body(body_with_trailers(b"hello", trailers))
        .expect("request with trailers");
    let resp = within(STEP, "h2c response", sender.send_request(req))
        .await
        .expect("h2c response");
    assert_eq!(
        resp.headers()
            .get("x-request-version")
            .and_then(|v| v.to_str().ok()),
        Some("HTTP/2.0")
    );
    let (body, trailers) = body_and_trailers(resp.into_body())
        .await
        .expect("body and trailers");
    assert_eq!(body, Bytes::from_static(b"hello"));
    assert_eq!(
        trailers
            .as_ref()
            .and_then(|t| t.get("x-checksum"))
            .and_then(|v| v.to_str().ok()),
        Some("abc"),
        "{trailers:?}"
    );
}

#[tokio::test]
async fn http11_chunked_trailers_round_trip_to_an_http11_backend() {
    http11_chunked_trailers_round_trip(None).await;
}

#[tokio::test]
async fn http11_chunked_trailers_round_trip_to_an_h2c_backend() {
    http11_chunked_trailers_round_trip(Some("h2c")).await;
}

#[tokio::test]
async fn grpc_passes_through_tcp_mode_with_alpn_h2() {
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls
        .sidecar(app.addr())
        .mode("tcp")
        .args(["--alpn", "h2"])
        .start()
        .await;
    let mut client = GrpcClient::connect(sc.addr(), tls.trust()).await;
    every_call_shape(&mut client).await;
    large_messages(&mut client).await;
    concurrent_calls(&client).await;
    let status = within(STEP, "Fail", client.fail(Code::NotFound, "nothing")).await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "nothing");

    // The premise of the http-mode deadline test: the backend ignores `grpc-timeout`, and a
    // relay of bytes leaves it alone, so the call outlives its deadline and succeeds.
    let mut client = GrpcClient::connect_no_client_deadline(sc.addr(), tls.trust()).await;
    let slept = within(
        STEP,
        "Sleep 500 ms with a 100 ms deadline",
        client.sleep(500, Duration::from_millis(100)),
    )
    .await
    .expect("the backend ignores the deadline");
    assert_eq!(slept, Bytes::from_static(b"slept"));
}

#[tokio::test]
async fn grpc_clients_refuse_tcp_mode_without_alpn_h2() {
    // The original report of issue 12: tcp mode offers no ALPN by default, and a gRPC client
    // does not speak HTTP/2 over a connection that did not negotiate h2.
    let tls = Tls::new();
    let app = GrpcBackend::start().await;
    let sc = tls.sidecar(app.addr()).mode("tcp").start().await;
    let refused = within(
        STEP,
        "a gRPC channel without ALPN",
        GrpcClient::try_connect(sc.addr(), tls.trust()),
    )
    .await;
    let err = match refused {
        Ok(_) => panic!("the channel connected without h2 negotiated"),
        Err(e) => e,
    };
    assert!(
        format!("{err:?}").contains("did not negotiate h2"),
        "{err:?}"
    );
}
