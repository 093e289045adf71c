//! The HTTP/1.1 fast path against backends that do what real ones do at their worst: close a
//! kept-alive connection right after answering, send chunked and close-delimited bodies,
//! interim responses, and framing that two parsers could read differently. Each backend here
//! is a scripted raw TCP server, so the bytes the sidecar gets are exactly the ones named.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use harness::backend::Backend;
use harness::client::{self, HttpConn, Trust, ALPN_H1};
use harness::sidecar::Sidecar;
use harness::wait::{within, STEP};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A raw backend: for each request head read on a connection, `answer(n)` (n counts requests
/// over all connections) gives the bytes to write and whether to close after them.
struct Raw {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw(answer: fn(usize) -> (Vec<u8>, bool)) -> Raw {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the raw backend");
    let addr = listener.local_addr().expect("its address");
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::SeqCst);
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let n = requests.fetch_add(1, Ordering::SeqCst);
                        let (bytes, close) = answer(n);
                        if s.write_all(&bytes).await.is_err() || close {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    Raw {
        addr,
        connections,
        task,
    }
}

/// A TLS connection to the sidecar, HTTP/1.1 by ALPN, spoken by hand.
async fn connect_tls(sc: &Sidecar) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await
}

async fn h1(sc: &Sidecar) -> HttpConn {
    HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await
}

#[tokio::test]
async fn a_backend_that_closes_every_kept_alive_connection_costs_no_failed_request() {
    // Says keep-alive (HTTP/1.1, no `Connection: close`), then closes: the pooled connection
    // is dead when the next request takes it, whether or not the sidecar noticed yet.
    let backend = raw(|_| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            true,
        )
    })
    .await;
    let sc = Sidecar::start(backend.addr).await;
    let mut conn = h1(&sc).await;
    for i in 0..30 {
        let reply = conn.get("/").await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}");
        assert_eq!(reply.text(), "ok", "request {i}");
    }
    // One backend connection per request: none was answered twice or lost.
    assert!(backend.connections.load(Ordering::SeqCst) >= 30);
}

/// Backend answers whose framing two parsers could read differently, or that are no answer at
/// all: a 502 on every path.
const BAD_FRAMING: &[(&[u8], &str)] = &[
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "Content-Length and Transfer-Encoding",
    ),
    (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok!",
        "conflicting lengths",
    ),
    (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "an encoding it does not know",
    ),
    (
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        "chunked in HTTP/1.0",
    ),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -2\r\n\r\nok", "a negative length"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "101 without asking"),
    (b"garbage\r\n\r\n", "no status line"),
];

#[tokio::test]
async fn backend_framing_two_parsers_could_read_differently_is_a_502_on_both_fast_paths() {
    for &(bad, what) in BAD_FRAMING {
        // The answer of this case: the script is a plain fn, so it reads it from a static.
        static CASE: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());
        *CASE.lock().expect("case") = bad.to_vec();
        let backend = raw(|_| (CASE.lock().expect("case").clone(), true)).await;
        let sc = Sidecar::start(backend.addr).await;
        for (proto, reply) in [
            ("HTTP/1.1", h1(&sc).await.get("/").await),
            ("HTTP/2", h2(&sc).await.get("/").await),
        ] {
            assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{proto}: {what}");
            assert!(
                reply.text().contains("backend request failed"),
                "{proto}: {what}: {}",
                reply.text()
            );
        }
    }
}

#[tokio::test]
async fn chunked_interim_and_head_answers_arrive_whole_on_one_connection() {
    let backend = raw(|n| {
        let bytes: &[u8] = match n % 3 {
            // An interim answer first, then a chunked body with an extension and a trailer.
            0 => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-sum: 12\r\n\r\n",
            // A length, for HEAD: no body follows.
            1 => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
        };
        (bytes.to_vec(), false)
    })
    .await;
    let sc = Sidecar::start(backend.addr).await;
    let mut conn = h1(&sc).await;
    for round in 0..3 {
        let reply = conn.get("/chunked").await;
        assert_eq!(reply.status, StatusCode::OK, "round {round}");
        assert_eq!(reply.text(), "hello, world", "round {round}");
        let head = conn
            .fetch(
                conn.request(Method::HEAD, "/")
                    .body(client::empty())
                    .expect("HEAD request"),
            )
            .await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.header("content-length"), Some("1234"));
        assert!(head.body.is_empty());
        let missing = conn.get("/missing").await;
        assert_eq!(
            (missing.status, missing.text().as_str()),
            (StatusCode::NOT_FOUND, "nope")
        );
    }
    // All nine answers came over the backend connections the pool kept.
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_until_close_arrives_whole_and_ends_the_connection() {
    let backend = raw(|_| {
        let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'z', 100_000));
        (bytes, true)
    })
    .await;
    let sc = Sidecar::start(backend.addr).await;
    let tls = connect_tls(&sc).await;
    let resp = client::raw_exchange(tls, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("a response");
    assert_eq!(resp.status, 200);
    assert!(
        resp.head.to_ascii_lowercase().contains("connection: close"),
        "{}",
        resp.head
    );
    assert_eq!(resp.body.len(), 100_000);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_a_body_hands_over_to_hyper() {
    let backend = Backend::echo().await;
    let sc = Sidecar::start(backend.addr()).await;
    let mut tls = connect_tls(&sc).await;
    // Three requests in one write: two the fast path takes, then one with a body larger than
    // the fast path relays (hyper's from there on, with the bytes already read), then one more.
    let body = "x".repeat(20_000);
    let burst = format!(
        "GET /one HTTP/1.1\r\nHost: localhost\r\n\r\nGET /two HTTP/1.1\r\nHost: localhost\r\n\r\n\
         POST /three HTTP/1.1\r\nHost: localhost\r\nContent-Length: 20000\r\n\r\n{body}\
         GET /four HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(burst.as_bytes())
        .await
        .expect("write the burst");
    let mut all = Vec::new();
    within(
        STEP,
        "four answers and the close",
        tls.read_to_end(&mut all),
    )
    .await
    .expect("read to the end");
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle} in {text}"))
    };
    // The echo backend names each request's path in its answer, in order.
    assert!(at("/one") < at("/two") && at("/two") < at("/three") && at("/three") < at("/four"));
    assert!(text.contains("\"body_len\":20000"), "{text}");
    assert_eq!(backend.requests().len(), 4);
}

/// Small bodies framed by `Content-Length` stay on the fast path: pipelined with the requests
/// around them, each reaches the backend whole, byte for byte.
#[tokio::test]
async fn small_bodies_are_relayed_whole_between_pipelined_requests() {
    let backend = Backend::echo().await;
    let sc = Sidecar::start(backend.addr()).await;
    let mut tls = connect_tls(&sc).await;
    let small: String = (0..4096).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let full = "z".repeat(16 * 1024);
    let burst = format!(
        "POST /a HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4096\r\n\r\n{small}\
         PUT /b HTTP/1.1\r\nHost: localhost\r\nContent-Length: 16384\r\n\r\n{full}\
         POST /c HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n\
         GET /d HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    );
    // In pieces, so a body spans several reads.
    for piece in burst.as_bytes().chunks(1000) {
        tls.write_all(piece).await.expect("write");
        tls.flush().await.expect("flush");
    }
    let mut all = Vec::new();
    within(STEP, "four answers", tls.read_to_end(&mut all))
        .await
        .expect("read to the end");
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
    let seen = backend.requests();
    assert_eq!(seen.len(), 4);
    let sha = |s: &str| harness::backend::sha256_hex(s.as_bytes());
    for (i, (path, len, digest)) in [
        ("/a", 4096, sha(&small)),
        ("/b", 16384, sha(&full)),
        ("/c", 0, sha("")),
        ("/d", 0, sha("")),
    ]
    .into_iter()
    .enumerate()
    {
        assert!(
            text.contains(&format!("\"body_len\":{len}")),
            "{path}: {text}"
        );
        assert!(text.contains(&digest), "{path} arrived whole: {text}");
        assert_eq!(seen[i].path, path);
    }
}

/// Chunked request bodies: strictly framed ones up to 16 KiB on the fast path, the rest (an
/// extension, trailers, a larger body) handed to hyper with the bytes read; each arrives whole,
/// pipelined with the requests around it, and one cut short never reaches the backend.
#[tokio::test]
async fn chunked_bodies_arrive_whole_on_either_path() {
    let backend = Backend::echo().await;
    let sc = Sidecar::start(backend.addr()).await;
    let big = "c".repeat(20_000);
    let mut burst = String::new();
    burst += "POST /plain HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    burst += "POST /ext HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n";
    burst += &format!(
        "POST /big HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    burst += "POST /last HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nend\r\n0\r\n\r\n";
    let mut tls = connect_tls(&sc).await;
    for piece in burst.as_bytes().chunks(700) {
        tls.write_all(piece).await.expect("write");
        tls.flush().await.expect("flush");
    }
    let mut all = Vec::new();
    within(STEP, "four answers", tls.read_to_end(&mut all))
        .await
        .expect("read to the end");
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
    let sha = |s: &str| harness::backend::sha256_hex(s.as_bytes());
    for (path, data) in [
        ("/plain", "hello world"),
        ("/ext", "hello"),
        ("/big", big.as_str()),
        ("/last", "end"),
    ] {
        assert!(text.contains(&sha(data)), "{path} arrived whole: {text}");
    }
    let paths: Vec<String> = backend.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/plain", "/ext", "/big", "/last"]);

    // Cut short: the client goes away in the middle of the body.
    let mut tls = connect_tls(&sc).await;
    tls.write_all(
        b"POST /cut HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    )
    .await
    .expect("write");
    let _ = tls.shutdown().await;
    let mut rest = Vec::new();
    let _ = within(STEP, "the connection's end", tls.read_to_end(&mut rest)).await;
    let mut conn = h1(&sc).await;
    assert_eq!(conn.get("/after").await.status, StatusCode::OK);
    let paths: Vec<String> = backend.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths.last().map(String::as_str), Some("/after"));
    assert!(!paths.iter().any(|p| p == "/cut"), "{paths:?}");
}

/// A client that waits for `100 Continue` before its body (`Expect: 100-continue`, as curl
/// sends for larger uploads) gets it from the fast path, then its answer; so does curl itself.
#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body() {
    let backend = Backend::echo().await;
    let sc = Sidecar::start(backend.addr()).await;
    let mut tls = connect_tls(&sc).await;
    tls.write_all(
        b"PUT /wait HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await
    .expect("write the head");
    tls.flush().await.expect("flush");
    let continue_line = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0u8; continue_line.len()];
    within(
        STEP,
        "100 Continue before the body",
        tls.read_exact(&mut got),
    )
    .await
    .expect("read 100 Continue");
    assert_eq!(got, continue_line);
    tls.write_all(b"hello").await.expect("write the body");
    tls.write_all(b"GET /next HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write the next request");
    let mut all = Vec::new();
    within(STEP, "both answers", tls.read_to_end(&mut all))
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert!(text.contains("\"body_len\":5"), "{text}");
    assert_eq!(backend.requests().len(), 2);

    // curl, sending a 4 KiB upload with the expectation: answered at once, not after its
    // one-second wait for a 100 that never comes.
    let dir = harness::tmp::TempDir::new("expect");
    let file = dir.write("body", "b".repeat(4096));
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--http1.1",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "30",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("https://localhost:{}/curl", sc.addr().port()))
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", sc.addr().port()),
        ])
        .output();
    let out = within(STEP, "curl with Expect: 100-continue", out)
        .await
        .expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains("\"body_len\":4096"),
        "{body} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A client that stalls in the middle of a small body is cut off by `--header-read-timeout`
/// (the head and its body must arrive within it), and the backend never sees the request.
#[tokio::test]
async fn a_body_that_stalls_is_cut_off_by_the_head_timeout() {
    let backend = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(backend.addr())
        .args(["--header-read-timeout", "1s"])
        .start()
        .await;
    let mut tls = connect_tls(&sc).await;
    tls.write_all(
        b"POST /slow HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nten bytes.",
    )
    .await
    .expect("write");
    tls.flush().await.expect("flush");
    let mut all = Vec::new();
    within(
        std::time::Duration::from_secs(20),
        "the sidecar closing the stalled connection",
        tls.read_to_end(&mut all),
    )
    .await
    .ok();
    assert!(backend.requests().is_empty(), "nothing reached the backend");
}

/// A body that stops early never reaches the backend (it is read whole first), and framing two
/// parsers could read differently is hyper's, which refuses it: the backend sees neither.
#[tokio::test]
async fn a_body_cut_short_or_framed_twice_never_reaches_the_backend() {
    let backend = Backend::echo().await;
    let sc = Sidecar::start(backend.addr()).await;
    let cases: [&[u8]; 3] = [
        b"POST /cut HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly-part",
        b"POST /both HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /twice HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    ];
    for case in cases {
        let mut tls = connect_tls(&sc).await;
        tls.write_all(case).await.expect("write");
        tls.flush().await.expect("flush");
        // The client gives up (or is refused): either way the connection ends.
        let _ = tls.shutdown().await;
        let mut all = Vec::new();
        let _ = within(STEP, "the connection's end", tls.read_to_end(&mut all)).await;
        let text = String::from_utf8_lossy(&all);
        assert!(
            all.is_empty() || text.starts_with("HTTP/1.1 400"),
            "{:?}: {text}",
            String::from_utf8_lossy(case)
        );
    }
    // A request that works, through the same sidecar: the backend has seen only it.
    let mut conn = h1(&sc).await;
    assert_eq!(conn.get("/after").await.status, StatusCode::OK);
    let seen: Vec<String> = backend.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/after"]);
}

// ---- HTTP/2: streams without a request body take the fast path's backend connections ----

async fn h2(sc: &Sidecar) -> HttpConn {
    let conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, client::ALPN_H2_H1),
    )
    .await;
    assert_eq!(conn.alpn(), Some("h2"));
    conn
}

#[tokio::test]
async fn h2_streams_get_chunked_bodies_trailers_and_head_answers_over_pooled_connections() {
    use http_body_util::BodyExt;
    let backend = raw(|n| {
        let bytes: &[u8] = match n % 3 {
            0 => b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\r\n5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-sum: 12\r\n\r\n",
            1 => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\nnope",
        };
        (bytes.to_vec(), false)
    })
    .await;
    let sc = Sidecar::start(backend.addr).await;
    let mut conn = h2(&sc).await;
    for round in 0..3 {
        let resp = conn
            .send(
                conn.request(Method::GET, "/chunked")
                    .body(client::empty())
                    .expect("GET"),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "round {round}");
        // Hop-by-hop headers and the ones `Connection` names never reach an HTTP/2 client.
        for gone in ["connection", "transfer-encoding", "x-hop", "keep-alive"] {
            assert!(
                resp.headers().get(gone).is_none(),
                "{gone} in {:?}",
                resp.headers()
            );
        }
        let body = resp.into_body().collect().await.expect("the whole body");
        let trailers = body.trailers().cloned().expect("the backend's trailers");
        assert_eq!(
            trailers.get("x-sum").map(|v| v.as_bytes()),
            Some(&b"12"[..])
        );
        assert_eq!(&body.to_bytes()[..], b"hello, world", "round {round}");
        let head = conn
            .fetch(
                conn.request(Method::HEAD, "/")
                    .body(client::empty())
                    .expect("HEAD"),
            )
            .await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.header("content-length"), Some("1234"));
        assert!(head.body.is_empty());
        let missing = conn.get("/missing").await;
        assert_eq!(
            (missing.status, missing.text().as_str()),
            (StatusCode::NOT_FOUND, "nope")
        );
        assert_eq!(missing.headers.get_all("set-cookie").iter().count(), 2);
    }
    // One stream after another: all nine answers came over the one backend connection kept.
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn h2_streams_survive_a_backend_that_closes_every_kept_alive_connection() {
    let backend = raw(|_| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            true,
        )
    })
    .await;
    let sc = Sidecar::start(backend.addr).await;
    let mut conn = h2(&sc).await;
    for i in 0..30 {
        let reply = conn.get("/").await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "ok"),
            "request {i}"
        );
    }
    assert!(backend.connections.load(Ordering::SeqCst) >= 30);
}

#[tokio::test]
async fn an_h2_body_cut_short_by_the_backend_is_an_error_not_a_complete_response() {
    use http_body_util::BodyExt;
    let backend = raw(|n| {
        let bytes: &[u8] = if n == 0 {
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf!"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        (bytes.to_vec(), true)
    })
    .await;
    let sc = Sidecar::start(backend.addr).await;
    let mut conn = h2(&sc).await;
    let mut sender = conn.h2_sender().expect("HTTP/2");
    let req = conn
        .request(Method::GET, "/")
        .body(client::empty())
        .expect("GET");
    // The stream is reset when the body breaks: before its head was sent (the client sees an
    // error for the request) or after (the body ends in an error). Never a clean end.
    let got = within(STEP, "an answer", sender.send_request(req)).await;
    if let Ok(resp) = got {
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.into_body().collect().await.is_err(),
            "a cut body must not end cleanly"
        );
    }
    // The connection and the next stream are unharmed.
    let reply = conn.get("/").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "ok")
    );
}

#[tokio::test]
async fn h2_bodies_until_close_arrive_whole_and_their_connections_are_not_reused() {
    let backend = raw(|_| {
        let mut bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'z', 100_000));
        (bytes, true)
    })
    .await;
    let sc = Sidecar::start(backend.addr).await;
    let mut conn = h2(&sc).await;
    for _ in 0..3 {
        let reply = conn.get("/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), 100_000);
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_hundred_concurrent_h2_streams_each_get_their_own_answer() {
    let backend = Backend::echo().await;
    let sc = Sidecar::start(backend.addr()).await;
    let conn = h2(&sc).await;
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut sender = conn.h2_sender().expect("HTTP/2");
        let req = conn
            .request(Method::GET, &format!("/stream/{i}?q={i}"))
            .body(client::empty())
            .expect("GET");
        tasks.push(tokio::spawn(async move {
            within(STEP, "HTTP/2 ready", sender.ready())
                .await
                .expect("ready");
            let resp = within(STEP, "an answer", sender.send_request(req))
                .await
                .expect("a response");
            (i, client::read_reply(resp).await)
        }));
    }
    for task in tasks {
        let (i, reply) = task.await.expect("stream task");
        assert_eq!(reply.status, StatusCode::OK, "stream {i}");
        let echo = harness::backend::Echo::parse(&reply.body);
        assert_eq!(echo.request.path, format!("/stream/{i}?q={i}"));
        assert_eq!(echo.request.header("x-forwarded-proto"), Some("https"));
        let authority = format!("localhost:{}", sc.addr().port());
        assert_eq!(echo.request.header("host"), Some(authority.as_str()));
    }
    // No more backend connections than streams were in flight at once.
    assert!(
        backend.connections_opened() <= 100,
        "{}",
        backend.connections_opened()
    );
}

#[tokio::test]
async fn a_client_resetting_an_h2_stream_mid_body_leaves_its_connection_serving() {
    // The first answer announces more than it sends and then stalls: the client gives up on
    // that stream (a reset); the backend connection is closed, never reused half-read.
    let backend = raw(|n| {
        let bytes: &[u8] = if n == 0 {
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst part"
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        };
        (bytes.to_vec(), false)
    })
    .await;
    let sc = Sidecar::start(backend.addr).await;
    let mut conn = h2(&sc).await;
    let resp = conn
        .send(
            conn.request(Method::GET, "/stall")
                .body(client::empty())
                .expect("GET"),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);
    for _ in 0..3 {
        let reply = conn.get("/").await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "ok")
        );
    }
    assert!(backend.connections.load(Ordering::SeqCst) >= 2);
}
