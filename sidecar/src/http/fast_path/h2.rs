//! The HTTP/2 fast path: a stream whose request has no body (the common `GET`), for a backend
//! spoken to over HTTP/1.1, is forwarded on one of the fast path's own pooled backend
//! connections, driven in the stream's own task. Its backend head is written once from the
//! request hyper's server parsed ([`write_h2_head`]), the response head is parsed once into the
//! header map hyper's server sends ([`reply_h2`]), and the body is read from the backend
//! connection as hyper's server asks for it ([`Direct`]); the connection goes back to the pool
//! when the body has ended. No hyper-util client, no channel to a connection task, no second
//! serialisation of the head.
//!
//! Everything else (request bodies, gRPC, h2c backends, `CONNECT`, targets that are not a path)
//! takes the hyper path as before. The differential test below checks that every request this
//! path forwards reaches the backend as the hyper path's client would send it, and that every
//! response it reads is the one the hyper path's client reads (status, headers, body, trailers).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::warn;

use super::chunked::{Chunks, Decoded};
use super::request_head::{write_h2_head, Hop};
use super::response::{reply_h2, Answer, Framing, H2Head};
use super::{Answered, Pool, BODY_READ};
use crate::http::{ConnInfo, Drain, Exchange, Proxy, BACKEND_REQUEST_LOG};
use crate::metrics::{BackendError, Metrics};

/// Data frames up to this size are copied out of the read buffer (one small allocation), larger
/// ones share it (no copy, but the buffer cannot be reused while they are in flight).
const COPY_MAX: usize = 4 * 1024;

impl Proxy {
    /// Whether an HTTP/2 request takes this path: no body, not gRPC, a backend spoken to over
    /// HTTP/1.1, a path as its target (not `CONNECT`).
    pub(in crate::http) fn h2_fast<B: Body>(&self, req: &Request<B>, grpc: bool) -> bool {
        !grpc
            && self.fast_h2_backend
            && req.method() != Method::CONNECT
            && req.body().is_end_stream()
            && req
                .uri()
                .path_and_query()
                .is_some_and(|p| p.as_str().starts_with('/'))
    }

    /// Forwards an HTTP/2 request that [`Proxy::h2_fast`] took and waits for the response head
    /// until `head_by`; a request the client cancels still finishes in the background (the
    /// hyper path's [`Exchange`]), so its backend connection goes back to the pool. `None` when
    /// the request holds something only the hyper path forwards (nothing was sent).
    pub(in crate::http) async fn exchange_h2_fast<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        info: &ConnInfo,
        host: &HeaderValue,
        head_by: Instant,
    ) -> Option<Result<(http::response::Parts, Direct), BackendError>> {
        let hop = Hop {
            client_ip: &info.client_ip,
            listen_port: &self.listen_port_text,
            client: info.client.as_ref(),
            http1_backend: true,
        };
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut head = Vec::with_capacity(512);
        if !write_h2_head(
            &mut head,
            req.method(),
            path,
            host.as_bytes(),
            req.headers(),
            &hop,
        ) {
            return None;
        }
        let method = req.method();
        let head_request = method == Method::HEAD;
        let idempotent = matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        let proxy = self.clone();
        let exchange = async move {
            let mut got = None;
            let answered = proxy
                .backend_head(&head, idempotent, |buf| {
                    reply_h2(buf, head_request, &mut got)
                })
                .await?;
            let head = got.ok_or(BackendError::Protocol)?;
            Ok::<_, BackendError>(Fast {
                answered,
                head,
                pool: proxy.fast_pool.clone(),
                metrics: proxy.metrics.clone(),
            })
        };
        let wait = head_by.saturating_duration_since(Instant::now());
        let fast = match tokio::time::timeout_at(head_by, Exchange::new(exchange, wait)).await {
            Err(_) => return Some(Err(BackendError::Timeout)),
            Ok(Err(kind)) => return Some(Err(kind)),
            Ok(Ok(fast)) => fast,
        };
        Some(Ok(fast.into_response()))
    }
}

/// A response head the HTTP/2 fast path got, on its backend connection.
pub(in crate::http) struct Fast {
    answered: Answered,
    head: H2Head,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
}

impl Fast {
    /// The client's response head, and its body to be read from the backend connection.
    fn into_response(self) -> (http::response::Parts, Direct) {
        let Answered {
            stream,
            mut buf,
            answer,
        } = self.answered;
        // The head, and the body bytes that came with it (already copied out).
        let H2Head {
            status,
            headers,
            first,
        } = self.head;
        buf.advance(answer.head_len + first.len());
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.headers = headers;
        let mut body = Direct::new(stream, buf, &answer, self.pool, self.metrics);
        body.start_with(first);
        (parts, body)
    }
}

impl Drain for Fast {
    fn drain(self) -> impl std::future::Future<Output = ()> + Send {
        crate::http::drain(self.into_response().1)
    }
}

/// A response body read from the backend connection as hyper's server asks for it: its framing
/// (length, chunked with trailers, until close) decoded, the data passed on. Once it has ended
/// the connection goes back to the pool (unless the backend said it was its last, or sent bytes
/// past the end); dropped before, the connection is closed (a stream the client reset).
pub(crate) struct Direct {
    /// Body bytes read with the head, passed on first.
    first: Option<Bytes>,
    stream: Option<TcpStream>,
    buf: BytesMut,
    framing: Framing,
    /// Bytes still to come of a `Content-Length` body.
    remaining: u64,
    chunks: Chunks,
    /// The body has ended, cleanly.
    done: bool,
    reusable: bool,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
}

impl Direct {
    /// The body of the response `answer` describes, its first bytes (after the head) in `buf`.
    fn new(
        stream: TcpStream,
        buf: BytesMut,
        answer: &Answer,
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            first: None,
            stream: Some(stream),
            buf,
            framing: answer.framing,
            remaining: match answer.framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunks: Chunks::keeping_trailers(),
            done: matches!(answer.framing, Framing::Empty | Framing::Length(0)),
            reusable: answer.reusable,
            pool,
            metrics,
        }
    }

    /// Passes `first` on before anything read later: body bytes that came with the head.
    fn start_with(&mut self, first: Bytes) {
        if first.is_empty() {
            return;
        }
        if let Framing::Length(_) = self.framing {
            self.remaining -= first.len() as u64;
            self.done = self.remaining == 0;
        }
        self.first = Some(first);
    }

    /// The next frame from what is buffered, if there is one; `Ok(None)` when more must be read.
    fn buffered(&mut self) -> Result<Option<Frame<Bytes>>, &'static str> {
        if let Some(first) = self.first.take() {
            return Ok(Some(Frame::data(first)));
        }
        match self.framing {
            Framing::Empty => Ok(None),
            Framing::Length(_) => {
                let take = self.remaining.min(self.buf.len() as u64) as usize;
                if take == 0 {
                    return Ok(None);
                }
                self.remaining -= take as u64;
                self.done = self.remaining == 0;
                Ok(Some(Frame::data(self.split(take))))
            }
            Framing::UntilClose => {
                let take = self.buf.len();
                Ok((take > 0).then(|| Frame::data(self.split(take))))
            }
            Framing::Chunked => loop {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                match self.chunks.decode(&self.buf)? {
                    Decoded::More(n) => self.buf.advance(n),
                    Decoded::Data { skip, len } => {
                        self.buf.advance(skip);
                        return Ok(Some(Frame::data(self.split(len))));
                    }
                    Decoded::End(n) => {
                        self.buf.advance(n);
                        self.done = true;
                        return match self.chunks.take_trailers() {
                            Some(bytes) => Ok(Some(Frame::trailers(trailers(&bytes)?))),
                            None => Ok(None),
                        };
                    }
                }
            },
        }
    }

    /// The first `n` buffered bytes, as a frame's data.
    fn split(&mut self, n: usize) -> Bytes {
        if n <= COPY_MAX {
            let data = Bytes::copy_from_slice(&self.buf[..n]);
            self.buf.advance(n);
            data
        } else {
            self.buf.split_to(n).freeze()
        }
    }

    /// A body that broke off: counted and logged (throttled), as the HTTP/1.1 fast path does;
    /// the stream is reset (hyper's server does that on a body error), and the connection closed.
    fn broke(&mut self, why: &'static str) -> io::Error {
        self.stream = None;
        self.metrics.backend_error(BackendError::Protocol);
        if let Some(suppressed) = BACKEND_REQUEST_LOG.ready() {
            warn!(error = why, suppressed, "backend response body broke off");
        }
        io::Error::other(why)
    }
}

/// The trailer section (its field lines and the empty line after them) as header fields, read
/// as hyper's client reads them.
fn trailers(bytes: &[u8]) -> Result<HeaderMap, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; crate::http::MAX_HEADERS];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(bytes, &mut fields)
    else {
        return Err("invalid trailers");
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name =
            http::HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "invalid trailer name")?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| "invalid trailer value")?;
        map.append(name, value);
    }
    Ok(map)
}

impl Body for Direct {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if this.done && this.first.is_none() {
                // Trailers may follow the last data of a chunked body: they were returned with it.
                return Poll::Ready(None);
            }
            match this.buffered() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.done || this.framing == Framing::Empty => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(why) => return Poll::Ready(Some(Err(this.broke(why)))),
            }
            let Some(stream) = this.stream.as_mut() else {
                return Poll::Ready(Some(Err(io::Error::other("backend connection gone"))));
            };
            if this.buf.capacity() - this.buf.len() < BODY_READ / 4 {
                this.buf.reserve(BODY_READ);
            }
            match tokio_util::io::poll_read_buf(Pin::new(stream), cx, &mut this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if this.framing == Framing::UntilClose => {
                    this.stream = None;
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Some(Err(this.broke("backend closed the body early"))))
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(_)) => {
                    return Poll::Ready(Some(Err(this.broke("backend connection failed"))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.first.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(_) => SizeHint::with_exact(
                self.remaining + self.first.as_ref().map_or(0, |f| f.len() as u64),
            ),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        // Bytes past the response's end: the backend is confused; do not reuse it.
        if self.done && self.reusable && self.buf.is_empty() {
            self.pool.put(stream, std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use http::header::{self, HeaderName};
    use http::{StatusCode, Uri, Version};
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::http::fast_path::response::Reply;
    use crate::http::fast_path::testgen::Rng;
    use crate::http::headers::{forward_headers, request_host, strip_hop_by_hop, Forward};
    use crate::tls::client_auth::ClientIdentity;

    const PEER: &str = "192.0.2.7:5555";
    const BACKEND: &str = "127.0.0.1:9";

    fn hop(client: Option<&ClientIdentity>) -> Hop<'_> {
        Hop {
            client_ip: "192.0.2.7",
            listen_port: "8443",
            client,
            http1_backend: true,
        }
    }

    // ---- requests ----

    const METHODS: &[&str] = &[
        "GET", "GET", "HEAD", "DELETE", "OPTIONS", "PUT", "POST", "PATCH", "TRACE", "BREW",
    ];
    const PATHS: &[&str] = &[
        "/",
        "/a?b=c",
        "/%2e%2e/x",
        "//double",
        "/?",
        "/caf%C3%A9",
        "/{x}",
        "/\"q\"",
        "/a?x=1&y=%20",
        "/~user/;p=1",
        "/a/../b",
    ];
    const AUTHORITIES: &[&str] = &[
        "example.com",
        "example.com:8443",
        "[::1]:8443",
        "EXAMPLE.com",
        "a.b.c",
    ];
    const HEADERS: &[(&str, &[u8])] = &[
        ("accept", b"*/*"),
        ("user-agent", b"gen/1"),
        ("cookie", b"a=b"),
        ("cookie", b"c=d"),
        ("x-forwarded-for", b"10.0.0.1"),
        ("x-forwarded-for", b"10.0.0.2, 10.0.0.3"),
        ("x-forwarded-for", b"caf\xc3\xa9"),
        ("x-forwarded-proto", b"http"),
        ("x-forwarded-host", b"evil.example"),
        ("x-forwarded-port", b"1"),
        ("x-client-cert-subject", b"CN=admin"),
        ("x-client-cert-san", b"URI:spiffe://evil"),
        ("x-client-cert-fingerprint", b"00"),
        ("forwarded", b"for=1.2.3.4"),
        ("te", b"trailers"),
        ("content-length", b"0"),
        ("proxy-authorization", b"Basic eA=="),
        ("keep-alive", b"timeout=5"),
        ("proxy-connection", b"keep-alive"),
        ("http2-settings", b"AAMAAABkAAQAAP__"),
        ("upgrade", b"websocket"),
        ("connection", b"close"),
        ("transfer-encoding", b"chunked"),
        ("x-obs", b"a\x80\xffb"),
        ("x-tab", b"a\tb"),
        ("x-empty", b""),
        ("x-long", b"LONG"),
        ("trailer", b"x-checksum"),
        ("expect", b"100-continue"),
        ("content-type", b"application/json"),
        ("host", b"HOST"),
        ("host", b"other.example"),
    ];

    /// An HTTP/2 request as hyper's server hands it over: method, target, headers.
    fn generate_request(rng: &mut Rng) -> (Method, Uri, HeaderMap) {
        let method = Method::from_bytes(rng.pick(METHODS, 50).as_bytes()).unwrap();
        let authority = rng.pick(AUTHORITIES, 60);
        let path = rng.pick(PATHS, 50);
        let uri = Uri::builder()
            .scheme("https")
            .authority(authority)
            .path_and_query(path)
            .build()
            .unwrap();
        let mut headers = HeaderMap::new();
        for _ in 0..(rng.next() % 7) {
            let (name, value) = HEADERS[(rng.next() % HEADERS.len() as u64) as usize];
            let value = match value {
                b"LONG" => vec![b'a'; 9000],
                b"HOST" => authority.as_bytes().to_vec(),
                v => v.to_vec(),
            };
            headers.append(
                HeaderName::from_static(name),
                HeaderValue::from_bytes(&value).unwrap(),
            );
        }
        (method, uri, headers)
    }

    /// What the hyper path sends the backend for this request: its rewrite, then hyper's
    /// HTTP/1.1 client writing it (the bytes caught on the other end of a pipe).
    async fn hyper_sends(
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        host: &HeaderValue,
        client: Option<&ClientIdentity>,
    ) -> Vec<u8> {
        let mut headers = headers.clone();
        forward_headers(
            &mut headers,
            &Forward {
                peer: PEER.parse().unwrap(),
                host,
                listen_port: 8443,
                client,
                trailers: true,
                upgrade: None,
            },
        );
        headers.insert(header::HOST, host.clone());
        // The pool's key, as the rewrite makes it; hyper-util's client sends its origin form.
        let absolute = Uri::try_from(format!("http://{BACKEND}{path}")).unwrap();
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.method_mut() = method.clone();
        *req.uri_mut() = Uri::try_from(absolute.path_and_query().unwrap().as_str()).unwrap();
        *req.headers_mut() = headers;
        let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        let sent = tokio::spawn(async move { sender.send_request(req).await });
        let mut seen = Vec::new();
        let mut chunk = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = server_io.read(&mut chunk).await.unwrap();
            assert!(n > 0, "hyper's client wrote no whole head");
            seen.extend_from_slice(&chunk[..n]);
        }
        sent.abort();
        task.abort();
        seen
    }

    /// A request head as (method, target, headers sorted by lowercase name).
    fn parsed(head: &[u8]) -> (String, String, Vec<(String, Vec<u8>)>) {
        let mut fields = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut fields);
        let end = match req.parse(head) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("{other:?}: {:?}", String::from_utf8_lossy(head)),
        };
        assert_eq!(end, head.len(), "bytes after the head");
        let mut v: Vec<_> = req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
        v.sort();
        (
            req.method.unwrap().to_owned(),
            req.path.unwrap().to_owned(),
            v,
        )
    }

    #[tokio::test]
    async fn fast_h2_requests_reach_the_backend_as_the_hyper_path_sends_them() {
        let identity = ClientIdentity {
            subject: "CN=svc\u{1}a".into(),
            san: "URI:spiffe://d/a".into(),
            fingerprint: "ab:cd".into(),
        };
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut taken, mut handed, mut refused) = (0, 0, 0);
        for case in 0..3000 {
            let (method, uri, headers) = generate_request(&mut rng);
            let client = (case % 3 == 0).then_some(&identity);
            // The checks both paths make first.
            let host = match request_host(Version::HTTP_2, &uri, &headers) {
                Ok(Some(host)) => host,
                Ok(None) => unreachable!("an HTTP/2 request names its authority"),
                Err(_) => {
                    refused += 1;
                    continue;
                }
            };
            let path = uri.path_and_query().unwrap().as_str();
            let mut fast = Vec::new();
            if !write_h2_head(
                &mut fast,
                &method,
                path,
                host.as_bytes(),
                &headers,
                &hop(client),
            ) {
                handed += 1;
                continue;
            }
            taken += 1;
            let hyper = hyper_sends(&method, path, &headers, &host, client).await;
            assert_eq!(
                parsed(&fast),
                parsed(&hyper),
                "case {case}: {method} {uri} {headers:?}"
            );
        }
        assert!(
            taken > 1500 && handed > 50 && refused > 20,
            "taken {taken}, handed over {handed}, refused {refused}"
        );
    }

    // ---- responses ----

    const STATUS_LINES: &[&str] = &[
        "HTTP/1.1 200 OK",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 204 No Content",
        "HTTP/1.1 304 Not Modified",
        "HTTP/1.0 200 OK",
        "HTTP/1.1 500 ",
        "HTTP/1.1 299 Custom",
        "HTTP/1.1 200",
        "HTTP/1.1 101 Switching Protocols",
        "HTTP/1.1 999 Odd",
    ];
    const RESPONSE_HEADERS: &[&str] = &[
        "Content-Type: text/plain",
        "Set-Cookie: a=1",
        "Set-Cookie: b=2",
        "Connection: close",
        "Connection: keep-alive",
        "Connection: x-hop",
        "X-Hop: 1",
        "Keep-Alive: timeout=5",
        "Date: Mon, 07 Dec 2026 00:00:00 GMT",
        "Strict-Transport-Security: max-age=1",
        "X-Obs: a\u{80}b",
        "Trailer: x-checksum",
        "Upgrade: h2c",
        "Proxy-Authenticate: Basic",
        "Content-Length: 0, 0",
        "Content-Length: 3",
        "Transfer-Encoding: gzip",
        "Transfer-Encoding: chunked",
        "X-Empty:",
        "X Bad: 1",
    ];
    /// Chunked bodies as sent, and the data each carries.
    const CHUNKED: &[&str] = &[
        "5\r\nhello\r\n0\r\n\r\n",
        "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        "0\r\n\r\n",
        "5;ext=1\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n0\r\nX-Checksum: 1\r\nX-Other: a b\r\n\r\n",
        "5\r\nhello\r\n0\r\nBad Trailer: 1\r\n\r\n",
        "5\r\nhel",
        "5\nhello\n0\n\n",
        "zz\r\n",
    ];

    /// A backend's response bytes, closed after them.
    fn generate_response(rng: &mut Rng) -> Vec<u8> {
        let mut r = String::new();
        if rng.chance(5) {
            r.push_str("HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n");
        }
        r.push_str(rng.pick(STATUS_LINES, 60));
        r.push_str("\r\n");
        for _ in 0..(rng.next() % 4) {
            r.push_str(rng.pick(RESPONSE_HEADERS, 30));
            r.push_str("\r\n");
        }
        let body = match rng.next() % 4 {
            0 => {
                let n = [0usize, 5, 100, 5000][(rng.next() % 4) as usize];
                r.push_str(&format!("Content-Length: {n}\r\n"));
                "b".repeat(n + usize::from(rng.chance(10)))
            }
            1 => {
                r.push_str("Transfer-Encoding: chunked\r\n");
                rng.pick(CHUNKED, 50).to_owned()
            }
            2 => "close-delimited".repeat(1 + (rng.next() % 500) as usize),
            _ => String::new(),
        };
        r.push_str("\r\n");
        r.push_str(&body);
        r.into_bytes()
    }

    /// What a client of the proxy gets: status, headers (sorted), data, trailers (sorted).
    type Seen = (
        StatusCode,
        Vec<(String, Vec<u8>)>,
        Vec<u8>,
        Vec<(String, Vec<u8>)>,
    );

    fn sorted(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        v.sort();
        v
    }

    async fn collect<B>(status: StatusCode, headers: &HeaderMap, body: B) -> Option<Seen>
    where
        B: Body<Data = Bytes>,
    {
        let all = body.collect().await.ok()?;
        let trailers = all.trailers().map(sorted).unwrap_or_default();
        Some((status, sorted(headers), all.to_bytes().to_vec(), trailers))
    }

    /// The hyper path's reading: hyper's HTTP/1.1 client, then the hop-by-hop headers dropped.
    async fn hyper_reads(bytes: Vec<u8>, method: Method) -> Option<Seen> {
        let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            let _ = server_io.read(&mut chunk).await;
            let _ = server_io.write_all(&bytes).await;
            let _ = server_io.shutdown().await;
            // Keep the pipe open until the client is done reading.
            let _ = server_io.read(&mut chunk).await;
        });
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from_static("/");
        req.headers_mut()
            .insert(header::HOST, HeaderValue::from_static("a"));
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let resp = sender.send_request(req).await.ok()?;
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            collect(parts.status, &parts.headers, body).await
        })
        .await
        .expect("hyper's client hung");
        task.abort();
        got
    }

    /// This path's reading: the head parsed as [`Proxy::exchange_h2_fast`] does, the body read
    /// by [`Direct`] from a real backend connection.
    async fn fast_reads(bytes: Vec<u8>, head_request: bool) -> Option<Seen> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            let mut sink = [0u8; 64];
            let _ = s.read(&mut sink).await;
        });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut buf = BytesMut::new();
        let mut got = None;
        let answer = loop {
            if !buf.is_empty() {
                match reply_h2(&buf, head_request, &mut got) {
                    Reply::Final(answer) => break answer,
                    Reply::Interim(n) => {
                        buf.advance(n);
                        continue;
                    }
                    Reply::Bad(_) => return None,
                    Reply::Partial => {}
                }
            }
            if stream.read_buf(&mut buf).await.unwrap() == 0 {
                return None;
            }
        };
        let head = got.unwrap();
        buf.advance(answer.head_len + head.first.len());
        let mut body = Direct::new(
            stream,
            buf,
            &answer,
            Arc::new(Pool::new(4)),
            Arc::new(Metrics::default()),
        );
        body.start_with(head.first);
        collect(head.status, &head.headers, body).await
    }

    #[tokio::test]
    async fn fast_h2_responses_read_as_the_hyper_path_reads_them() {
        let mut rng = Rng(0x853c_49e6_748f_ea9b);
        let (mut same, mut stricter) = (0, 0);
        for case in 0..1500 {
            let bytes = generate_response(&mut rng);
            let head_request = rng.chance(15);
            let method = if head_request {
                Method::HEAD
            } else {
                Method::GET
            };
            let show = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            let fast = fast_reads(bytes.clone(), head_request).await;
            let hyper = hyper_reads(bytes, method).await;
            match fast {
                // Never laxer than hyper: what this path passes on, hyper's client reads the same.
                Some(fast) => {
                    assert_eq!(Some(fast), hyper, "case {case}: {show:?}");
                    same += 1;
                }
                None => stricter += 1,
            }
        }
        assert!(
            same > 700 && stricter > 100,
            "read alike {same}, refused by this path only {stricter}"
        );
    }

    #[test]
    fn chunked_bodies_decode_to_their_data_and_trailers_however_they_are_split() {
        let body = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 1\r\n\r\n";
        for split in 0..=body.len() {
            let mut c = Chunks::keeping_trailers();
            let mut data = Vec::new();
            let mut ended = false;
            for part in [&body[..split], &body[split..]] {
                let mut at = 0;
                while at < part.len() && !ended {
                    match c.decode(&part[at..]).unwrap() {
                        Decoded::More(n) => at += n,
                        Decoded::Data { skip, len } => {
                            data.extend_from_slice(&part[at + skip..at + skip + len]);
                            at += skip + len;
                        }
                        Decoded::End(n) => {
                            at += n;
                            ended = true;
                        }
                    }
                }
            }
            assert!(ended, "split at {split}");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "split at {split}");
            let t = trailers(&c.take_trailers().unwrap()).unwrap();
            assert_eq!(t.get("x-sum").unwrap(), "1");
        }
        let mut c = Chunks::keeping_trailers();
        assert_eq!(c.decode(b"0\r\n\r\n").unwrap(), Decoded::End(5));
        assert!(c.take_trailers().is_none());
    }
}
