//! The admin listener of both binaries (`--admin-listen`): plain HTTP/1.1 answering a handful of
//! fixed paths (`/healthz`, `/readyz`, `/metrics`) that each binary names through [`Routes`].
//! One server, so both get the same protections: it has no authentication and may be reachable
//! from more than loopback, so everything a client can hold is bounded.
//!
//! - Connections: at most [`Limits::max_connections`] at once (more wait in the listen
//!   backlog), accepted by [`accept::Listener`]: accept errors are retried with its backoff.
//! - Time: a request head must arrive whole within [`Limits::header_timeout`] of the connection
//!   opening or of the previous answer, which makes it the keep-alive idle timeout too (hyper
//!   starts that timer whenever the connection waits for a request); an answer the client takes
//!   nothing of for [`Limits::write_timeout`] is abandoned.
//! - Size: a request head is at most [`MAX_HEAD`] bytes (431 past it); a request body is never
//!   read.
//! - Methods: `GET` and `HEAD` (no body) on every path; anything else is 405, with `Allow`.
//! - Shutdown: cancelling the stop token closes the listener (new connections are refused), closes
//!   idle connections, lets answers in flight finish within [`Limits::shutdown_grace`], then
//!   drops what is left; [`serve`] returns when every connection is gone.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use crate::accept::{self, Accepted};
use crate::prometheus;

/// The `Content-Type` of the plain-text answers.
pub const TEXT: &str = "text/plain; charset=utf-8";

/// Most bytes of one request head. An admin request is a line and a few short headers, well
/// under 1 KiB; 8 KiB is the least hyper allows and leaves room for what a browser adds.
pub const MAX_HEAD: usize = 8 * 1024;

/// A request head must arrive within this; the keep-alive idle timeout too. A probe or a scraper
/// sends its request at once; a client slower than this is neither.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// An answer the client takes nothing of for this long is abandoned: a scraper reads its few KiB
/// at once, and a client that stops reading must not hold a connection slot.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// At shutdown, answers in flight get this long to finish. They are written in well under a
/// millisecond to a client that reads; the process does not wait longer for one that does not.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What one admin listener allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// See [`HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// See [`WRITE_TIMEOUT`].
    pub write_timeout: Duration,
    /// See [`SHUTDOWN_GRACE`].
    pub shutdown_grace: Duration,
}

impl Limits {
    /// At most `max_connections` at once, the default timeouts.
    pub const fn new(max_connections: usize) -> Self {
        Self {
            max_connections,
            header_timeout: HEADER_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// One answer: its status, `Content-Type` and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Bytes,
}

impl Reply {
    /// Plain text ([`TEXT`]).
    pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type: TEXT,
            body: body.into(),
        }
    }

    /// 200 with a Prometheus text exposition ([`prometheus::CONTENT_TYPE`]).
    pub fn prometheus(exposition: String) -> Self {
        Self {
            status: StatusCode::OK,
            content_type: prometheus::CONTENT_TYPE,
            body: exposition.into(),
        }
    }
}

/// What a binary's admin listener answers: a fixed set of paths, each computed on request.
pub trait Routes: Send + Sync + 'static {
    /// Every path answered, in the order the 404 answer suggests them.
    const PATHS: &'static [&'static str];

    /// The answer for `path` (to `GET` and `HEAD`); `None` for a path not in [`Self::PATHS`].
    fn answer(&self, path: &str) -> Option<Reply>;
}

/// The response to `method path`: 405 for a method other than `GET` or `HEAD` (whatever the
/// path), the route's answer, or 404 naming the paths there are. Pure; hyper leaves out the body
/// of an answer to `HEAD`.
pub fn respond<R: Routes>(routes: &R, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut resp = response(Reply::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
        ));
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let reply = routes.answer(path).unwrap_or_else(|| {
        Reply::text(
            StatusCode::NOT_FOUND,
            format!("not found: try {}\n", one_of(R::PATHS)),
        )
    });
    response(reply)
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = reply.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    resp
}

/// `a, b or c`.
fn one_of(paths: &[&str]) -> String {
    match paths {
        [] => String::new(),
        [one] => (*one).to_string(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// Serves `routes` on `listener` until `stop` is cancelled, then shuts down gracefully (see the
/// module doc); returns once every connection is closed.
pub async fn serve<R: Routes>(
    listener: TcpListener,
    routes: R,
    limits: Limits,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(admin = %addr, "admin listening");
    }
    let routes = Arc::new(routes);
    let connections = TaskTracker::new();
    let mut listener =
        accept::Listener::new(listener, "admin", stop.clone()).with_limit(limits.max_connections);
    while let Some(Accepted {
        stream,
        peer,
        permit,
    }) = listener.accept().await
    {
        let conn = Connection {
            peer,
            limits,
            _permit: permit,
        };
        connections.spawn(conn.serve(stream, routes.clone(), stop.clone()));
    }
    // Refuse new connections while the open ones finish.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One accepted connection and its slot under the limit, given back when it ends.
struct Connection {
    peer: SocketAddr,
    limits: Limits,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Connection {
    async fn serve<R: Routes>(self, stream: TcpStream, routes: Arc<R>, stop: CancellationToken) {
        let peer = self.peer;
        let service = service_fn(move |req: Request<Incoming>| {
            let resp = respond(routes.as_ref(), req.method(), req.uri().path());
            std::future::ready(Ok::<_, Infallible>(resp))
        });
        let io = TokioIo::new(WriteDeadline::new(stream, self.limits.write_timeout));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_timeout)
            .max_buf_size(MAX_HEAD)
            .serve_connection(io, service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            () = stop.cancelled() => {
                // Closes it now if idle, else after the answer in flight.
                conn.as_mut().graceful_shutdown();
                match tokio::time::timeout(self.limits.shutdown_grace, conn.as_mut()).await {
                    Ok(result) => result,
                    Err(_) => {
                        debug!(%peer, "admin connection dropped at the shutdown deadline");
                        return;
                    }
                }
            }
        };
        if let Err(error) = result {
            debug!(%peer, %error, "admin connection error");
        }
    }
}

/// A stream whose writes fail with `TimedOut` once one has waited `timeout` without progress:
/// hyper bounds the wait for a request, this bounds the wait for a client to take its answer.
struct WriteDeadline<S> {
    io: S,
    timeout: Duration,
    /// Runs while a write waits; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(io: S, timeout: Duration) -> Self {
        Self {
            io,
            timeout,
            stalled: None,
        }
    }

    /// After a write returned `Pending`: an error once it has waited too long.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client took none of the answer in time",
        ))
    }

    /// Passes on a write's result, timing how long it has been pending.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Pending => self.poll_stalled(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;

    /// Every await in these tests is under this; a hang fails with what was awaited.
    const STEP: Duration = Duration::from_secs(5);

    async fn within<F: Future>(what: &str, fut: F) -> F::Output {
        tokio::time::timeout(STEP, fut)
            .await
            .unwrap_or_else(|_| panic!("{what}: no result within {STEP:?}"))
    }

    /// A body far larger than the socket buffers on both sides: its answer stays in flight until
    /// the client reads it.
    const BIG: usize = 32 << 20;

    struct Fixed {
        big: Bytes,
    }

    impl Routes for Fixed {
        const PATHS: &'static [&'static str] = &["/healthz", "/metrics", "/big"];

        fn answer(&self, path: &str) -> Option<Reply> {
            Some(match path {
                "/healthz" => Reply::text(StatusCode::OK, "ok\n"),
                "/metrics" => Reply::prometheus("m 1\n".to_string()),
                "/big" => Reply::text(StatusCode::OK, self.big.clone()),
                _ => return None,
            })
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    struct Server {
        addr: SocketAddr,
        stop: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Server {
        async fn start(limits: Limits) -> Self {
            let listener = within("bind", TcpListener::bind("127.0.0.1:0"))
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let stop = CancellationToken::new();
            let routes = Fixed {
                big: Bytes::from(vec![b'x'; BIG]),
            };
            let task = tokio::spawn(serve(listener, routes, limits, stop.clone()));
            Self { addr, stop, task }
        }

        async fn connect(&self) -> TcpStream {
            within("connect", TcpStream::connect(self.addr))
                .await
                .expect("connect")
        }

        /// Cancels the stop token; returns how long `serve` took to return.
        async fn shut_down(self) -> Duration {
            let start = Instant::now();
            self.stop.cancel();
            within("serve to return", self.task)
                .await
                .expect("serve panicked");
            start.elapsed()
        }
    }

    /// One response as read off the wire.
    #[derive(Debug)]
    struct Answer {
        head: String,
        body: Vec<u8>,
    }

    impl Answer {
        fn status(&self) -> u16 {
            self.head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("a status line: {}", self.head))
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }

        fn text(&self) -> &str {
            std::str::from_utf8(&self.body).expect("utf-8 body")
        }
    }

    /// Sends `request` and reads one answer (its body unless it answers a HEAD); asserts that
    /// nothing follows it.
    async fn exchange(stream: &mut TcpStream, request: &str) -> Answer {
        within("write the request", stream.write_all(request.as_bytes()))
            .await
            .expect("write");
        read_answer(stream, request.starts_with("HEAD ")).await
    }

    async fn read_answer(stream: &mut TcpStream, head_only: bool) -> Answer {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = within("read a head", stream.read(&mut chunk))
                .await
                .expect("read");
            assert!(
                n > 0,
                "closed mid-head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..end].to_vec()).expect("utf-8 head");
        let mut answer = Answer {
            head,
            body: buf[end..].to_vec(),
        };
        let len = match head_only {
            true => 0,
            false => answer
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .expect("content-length"),
        };
        while answer.body.len() < len {
            let n = within("read a body", stream.read(&mut chunk))
                .await
                .expect("read");
            assert!(n > 0, "closed mid-body");
            answer.body.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(answer.body.len(), len, "bytes past the answer");
        answer
    }

    /// Reads until the server closes; returns when it did, and anything it sent first.
    async fn closed(stream: &mut TcpStream) -> (Instant, Vec<u8>) {
        let mut rest = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match within("the server to close", stream.read(&mut chunk)).await {
                Ok(0) | Err(_) => return (Instant::now(), rest),
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n")
    }

    #[tokio::test]
    async fn routes_answer_with_their_status_type_and_body_and_the_rest_is_404() {
        let server = Server::start(Limits::new(4)).await;
        let mut conn = server.connect().await;

        let health = exchange(&mut conn, &get("/healthz")).await;
        assert_eq!(health.status(), 200);
        assert_eq!(health.header("content-type"), Some(TEXT));
        assert_eq!(health.text(), "ok\n");

        let metrics = exchange(&mut conn, &get("/metrics")).await;
        assert_eq!(metrics.status(), 200);
        assert_eq!(
            metrics.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert_eq!(metrics.text(), "m 1\n");

        let missing = exchange(&mut conn, &get("/nope?x=1")).await;
        assert_eq!(missing.status(), 404);
        assert_eq!(missing.header("content-type"), Some(TEXT));
        assert_eq!(
            missing.text(),
            "not found: try /healthz, /metrics or /big\n"
        );

        // The query is not part of the path.
        let query = exchange(&mut conn, &get("/healthz?verbose")).await;
        assert_eq!(query.text(), "ok\n");
        server.shut_down().await;
    }

    #[tokio::test]
    async fn head_gets_the_headers_of_get_and_no_body() {
        let server = Server::start(Limits::new(4)).await;
        let mut conn = server.connect().await;
        let head = exchange(&mut conn, "HEAD /healthz HTTP/1.1\r\nHost: admin\r\n\r\n").await;
        assert_eq!(head.status(), 200);
        assert_eq!(head.header("content-length"), Some("3"));
        assert_eq!(head.header("content-type"), Some(TEXT));
        // No body came: the next answer on the connection starts right after the head.
        let next = exchange(&mut conn, &get("/healthz")).await;
        assert_eq!(next.text(), "ok\n");
        server.shut_down().await;
    }

    #[tokio::test]
    async fn other_methods_are_405_with_allow_whatever_the_path() {
        let server = Server::start(Limits::new(4)).await;
        for (request, path) in [
            (
                "POST /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
                "/healthz",
            ),
            ("DELETE /nope HTTP/1.1\r\nHost: a\r\n\r\n", "/nope"),
            (
                "PUT /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                "/metrics",
            ),
        ] {
            let mut conn = server.connect().await;
            let refused = exchange(&mut conn, request).await;
            assert_eq!(refused.status(), 405, "{path}");
            assert_eq!(refused.header("allow"), Some("GET, HEAD"), "{path}");
            assert_eq!(refused.header("content-type"), Some(TEXT));
            assert_eq!(refused.text(), "method not allowed\n");
        }

        // A body announced and never sent does not hold the connection open past its answer.
        let mut conn = server.connect().await;
        let request = "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n";
        assert_eq!(exchange(&mut conn, request).await.status(), 405);
        let (_, rest) = closed(&mut conn).await;
        assert!(rest.is_empty());
        server.shut_down().await;
    }

    #[test]
    fn respond_checks_the_method_before_the_path() {
        let routes = Fixed { big: Bytes::new() };
        let status = |m: Method, p: &str| respond(&routes, &m, p).status();
        assert_eq!(status(Method::GET, "/healthz"), StatusCode::OK);
        assert_eq!(status(Method::HEAD, "/metrics"), StatusCode::OK);
        assert_eq!(status(Method::GET, "/"), StatusCode::NOT_FOUND);
        assert_eq!(status(Method::POST, "/"), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            status(Method::OPTIONS, "/healthz"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(one_of(&[]), "");
        assert_eq!(one_of(&["/a"]), "/a");
        assert_eq!(one_of(&["/a", "/b"]), "/a or /b");
    }

    #[tokio::test]
    async fn keep_alive_serves_requests_until_the_connection_idles_for_the_header_timeout() {
        let limits = Limits {
            header_timeout: ms(300),
            ..Limits::new(4)
        };
        let server = Server::start(limits).await;
        let mut conn = server.connect().await;
        for _ in 0..3 {
            // Pauses shorter than the timeout keep the connection.
            tokio::time::sleep(ms(100)).await;
            assert_eq!(exchange(&mut conn, &get("/healthz")).await.status(), 200);
        }
        let idle = Instant::now();
        let (at, rest) = closed(&mut conn).await;
        assert!(rest.is_empty(), "{rest:?}");
        let waited = at - idle;
        assert!(
            waited >= ms(250) && waited < ms(3000),
            "closed after {waited:?} idle"
        );
        server.shut_down().await;
    }

    #[tokio::test]
    async fn a_silent_client_is_closed_after_the_header_timeout() {
        let limits = Limits {
            header_timeout: ms(300),
            ..Limits::new(4)
        };
        let server = Server::start(limits).await;
        let start = Instant::now();
        let mut silent = server.connect().await;
        let mut slow = server.connect().await;
        // A head that trickles in slower than the deadline is cut at the deadline too.
        within("write", slow.write_all(b"GET /healthz HTTP/1.1\r\n"))
            .await
            .expect("write");
        for conn in [&mut silent, &mut slow] {
            let (at, rest) = closed(conn).await;
            let waited = at - start;
            assert!(
                waited >= ms(250) && waited < ms(3000),
                "closed after {waited:?}: {rest:?}"
            );
            assert!(!String::from_utf8_lossy(&rest).contains("200"), "{rest:?}");
        }
        server.shut_down().await;
    }

    #[tokio::test]
    async fn a_head_past_the_bound_is_refused_with_431() {
        let server = Server::start(Limits::new(4)).await;
        let mut conn = server.connect().await;
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Filler: {}\r\n\r\n",
            "y".repeat(MAX_HEAD)
        );
        // The server may close before taking all of it: only the answer matters.
        let _ = within("write", conn.write_all(request.as_bytes())).await;
        let (_, rest) = closed(&mut conn).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.starts_with("HTTP/1.1 431 "),
            "431 for a head over {MAX_HEAD} bytes: {rest:?}"
        );

        // Just under the bound is served.
        let mut conn = server.connect().await;
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Filler: {}\r\n\r\n",
            "y".repeat(MAX_HEAD - 200)
        );
        assert_eq!(exchange(&mut conn, &request).await.status(), 200);
        server.shut_down().await;
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_slot() {
        let server = Server::start(Limits::new(1)).await;
        let holder = server.connect().await;
        // Queued in the backlog: connected, written, unanswered while the slot is held.
        let mut queued = server.connect().await;
        within("write", queued.write_all(get("/healthz").as_bytes()))
            .await
            .expect("write");
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(ms(300), queued.read(&mut byte)).await;
        assert!(early.is_err(), "answered past the limit: {early:?}");

        drop(holder);
        let answer = read_answer(&mut queued, false).await;
        assert_eq!(answer.status(), 200);
        server.shut_down().await;
    }

    #[tokio::test]
    async fn a_client_that_takes_none_of_its_answer_loses_its_slot_after_the_write_timeout() {
        let limits = Limits {
            write_timeout: ms(300),
            ..Limits::new(1)
        };
        let server = Server::start(limits).await;
        let mut stalled = server.connect().await;
        within("write", stalled.write_all(get("/big").as_bytes()))
            .await
            .expect("write");
        let start = Instant::now();
        let mut next = server.connect().await;
        let answer = exchange(&mut next, &get("/healthz")).await;
        assert_eq!(answer.status(), 200);
        assert!(
            start.elapsed() >= ms(250),
            "served while the slot was held: {:?}",
            start.elapsed()
        );
        // The abandoned answer was cut short.
        let mut taken = 0usize;
        let mut chunk = vec![0u8; 1 << 20];
        loop {
            match within("read the cut answer", stalled.read(&mut chunk)).await {
                Ok(0) | Err(_) => break,
                Ok(n) => taken += n,
            }
        }
        assert!(taken < BIG, "the whole answer arrived after its deadline");
        server.shut_down().await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_finishes_answers_in_flight_and_refuses_new_ones() {
        let limits = Limits {
            shutdown_grace: Duration::from_secs(4),
            ..Limits::new(4)
        };
        let server = Server::start(limits).await;
        let addr = server.addr;
        let mut idle = server.connect().await;
        assert_eq!(exchange(&mut idle, &get("/healthz")).await.status(), 200);
        let mut fresh = server.connect().await;
        let mut busy = server.connect().await;
        within("write", busy.write_all(get("/big").as_bytes()))
            .await
            .expect("write");
        // Let the answer fill the socket buffers before the stop.
        tokio::time::sleep(ms(100)).await;

        let stop = server.stop.clone();
        let task = server.task;
        stop.cancel();
        let (_, rest) = closed(&mut idle).await;
        assert!(rest.is_empty(), "an idle connection is closed at once");
        let (_, rest) = closed(&mut fresh).await;
        assert!(rest.is_empty(), "so is one that sent nothing yet");

        let answer = read_answer(&mut busy, false).await;
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.body.len(), BIG, "the answer in flight finished");
        let (_, rest) = closed(&mut busy).await;
        assert!(rest.is_empty());

        within("serve to return", task).await.expect("serve");
        let refused = within("connect", TcpStream::connect(addr)).await;
        assert!(refused.is_err(), "a connection accepted after the stop");
    }

    #[tokio::test]
    async fn shutdown_drops_an_answer_still_in_flight_at_the_grace_deadline() {
        let limits = Limits {
            shutdown_grace: ms(200),
            write_timeout: Duration::from_secs(60),
            ..Limits::new(4)
        };
        let server = Server::start(limits).await;
        let mut stalled = server.connect().await;
        within("write", stalled.write_all(get("/big").as_bytes()))
            .await
            .expect("write");
        tokio::time::sleep(ms(100)).await;
        let took = server.shut_down().await;
        assert!(
            took >= ms(150) && took < ms(3000),
            "serve returned {took:?} after the stop"
        );
        drop(stalled);
    }
}
