//! The HTTP/1.1 fast path: the common request (HTTP/1.1, origin-form, one valid `Host`, no body,
//! no upgrade, not gRPC) parsed once with `httparse` (no allocation per header), its head
//! written to the backend mostly as the bytes it arrived in (hop-by-hop, spoofable forwarding and
//! client-certificate headers left out, this hop's added), and the response relayed with its
//! framing checked but its bytes untouched. One pooled backend connection per exchange, driven
//! in the client connection's own task: no channel, no second task, no re-serialisation.
//!
//! Everything else, and anything this parser is not sure of, goes to hyper for the rest of the
//! connection ([`Head::Fallback`]): the bytes read so far are handed over unconsumed, so hyper
//! sees the connection as if it had read it from the start and applies every rule it always did
//! (431 for oversized heads, 400 for smuggling attempts, upgrades, bodies, `Expect`). The fast
//! path never refuses a request itself, so it cannot be laxer than hyper: a differential test
//! (`tests::fast_heads_frame_as_hyper_frames_them`) checks that every head it takes is one hyper
//! parses to the same method, target and end of head, and that the headers it forwards are the
//! ones the hyper path's rewrite forwards.

use std::time::SystemTime;

use bytes::{Buf, BytesMut};
use http::uri::PathAndQuery;
use http::Method;

use super::{CLIENT_CERT_HEADERS, HOP_BY_HOP, MAX_HEADERS, MAX_HEAD_BYTES};
use crate::mtls::ClientIdentity;

/// What the fast path makes of the bytes at the start of the read buffer.
#[derive(Debug)]
pub enum Head {
    /// Not a whole head yet (and under [`MAX_HEAD_BYTES`]).
    Partial,
    /// hyper's to serve, from these bytes on.
    Fallback,
    /// A request the fast path serves; its backend head is in the output buffer.
    Fast(Plan),
}

/// A request the fast path serves.
#[derive(Debug)]
pub struct Plan {
    /// Bytes of the read buffer the head took.
    pub head_len: usize,
    pub method: Method,
    pub path: PathAndQuery,
    /// The client asked to close after this request (`Connection: close`).
    pub close: bool,
    /// Repeatable on a fresh backend connection if a pooled one turns out closed (RFC 9110
    /// section 9.2.2: idempotent, and no body).
    pub idempotent: bool,
}

/// This hop's facts for the forwarding headers.
pub struct Hop<'a> {
    /// The client's address as `X-Forwarded-For` names it, and this listener's port: written
    /// into every head, so formatted once per connection.
    pub client_ip: String,
    pub listen_port: String,
    pub client: Option<&'a ClientIdentity>,
    /// Requests go to the backend over HTTP/1.1 (not all of them over h2c).
    pub http1_backend: bool,
}

/// Connection tokens kept at most; a head naming more goes to hyper.
const CONNECTION_TOKENS_MAX: usize = 16;

/// Parses the head at the start of `buf` and, when the fast path takes it, writes the backend's
/// head into `out` (cleared first).
pub fn classify(buf: &[u8], hop: &Hop<'_>, out: &mut Vec<u8>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Head::Partial,
        _ => return Head::Fallback,
    };
    if head_len > MAX_HEAD_BYTES || req.version != Some(1) || !hop.http1_backend {
        return Head::Fallback;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Head::Fallback;
    };
    if method == "CONNECT" || method == "PRI" || !target.starts_with('/') {
        return Head::Fallback;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Head::Fallback;
    };
    let Ok(path) = PathAndQuery::try_from(target) else {
        return Head::Fallback;
    };

    // First pass: what decides the request's fate.
    let mut host: Option<&[u8]> = None;
    let mut tokens: [&[u8]; CONNECTION_TOKENS_MAX] = [&[]; CONNECTION_TOKENS_MAX];
    let mut n_tokens = 0;
    let mut close = false;
    let mut trailers = false;
    let mut length_seen = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Head::Fallback;
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // Only an explicit empty body; any other length is hyper's.
            if length_seen || value != b"0" {
                return Head::Fallback;
            }
            length_seen = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"http2-settings")
        {
            return Head::Fallback;
        } else if name.eq_ignore_ascii_case(b"content-type") {
            if crate::grpc::is_grpc_content_type(value) {
                return Head::Fallback;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            let Some(text) = visible(value) else { continue };
            for token in text.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                }
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Head::Fallback;
                }
                if token.is_empty() {
                    continue;
                }
                if n_tokens == CONNECTION_TOKENS_MAX {
                    return Head::Fallback;
                }
                tokens[n_tokens] = token;
                n_tokens += 1;
            }
        } else if name.eq_ignore_ascii_case(b"te") {
            let Some(text) = visible(value) else { continue };
            trailers |= text.split(|b| *b == b',').any(|t| {
                t.split(|b| *b == b';')
                    .next()
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
            });
        }
    }
    let Some(host) = host else {
        return Head::Fallback;
    };
    if std::str::from_utf8(host)
        .ok()
        .and_then(shared::addr::authority_host)
        .is_none()
    {
        return Head::Fallback;
    }
    let tokens = &tokens[..n_tokens];

    // Second pass: the backend's head.
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut xff_prior = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff_prior |= visible(h.value).is_some();
            continue;
        }
        if dropped(name) || tokens.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    // `X-Forwarded-For` appended to (the hyper path's `set_forwarded`): prior values that are
    // visible ASCII, in order, then this client.
    out.extend_from_slice(b"x-forwarded-for: ");
    if xff_prior {
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("x-forwarded-for") {
                if let Some(v) = visible(h.value) {
                    out.extend_from_slice(v);
                    out.extend_from_slice(b", ");
                }
            }
        }
    }
    out.extend_from_slice(hop.client_ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: https\r\nx-forwarded-host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nx-forwarded-port: ");
    out.extend_from_slice(hop.listen_port.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(id) = hop.client {
        for (name, value) in super::identity_headers(id) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend(super::header_safe(value));
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    let idempotent = matches!(
        method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    Head::Fast(Plan {
        head_len,
        method,
        path,
        close,
        idempotent,
    })
}

/// Request headers never forwarded as they came: hop-by-hop ones, the ones this hop sets.
fn dropped(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
        || CLIENT_CERT_HEADERS
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
        || name.eq_ignore_ascii_case(b"host")
        || name.eq_ignore_ascii_case(b"x-forwarded-proto")
        || name.eq_ignore_ascii_case(b"x-forwarded-host")
        || name.eq_ignore_ascii_case(b"x-forwarded-port")
}

/// The value, if it is what `HeaderValue::to_str` accepts (visible ASCII, space, tab): the
/// values the hyper path reads as text.
fn visible(value: &[u8]) -> Option<&[u8]> {
    value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then_some(value)
}

// ---- responses ----

/// How a response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes; the client connection closes after it too.
    UntilClose,
}

/// What the bytes at the start of the backend's read buffer are.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Partial,
    /// An interim (1xx) response of this many bytes, skipped as hyper's client skips them.
    Interim(usize),
    /// Not a response this proxy forwards: the reason, for the log; the client gets a 502.
    Bad(&'static str),
    Final(Answer),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend connection can take another request after this response.
    pub reusable: bool,
}

/// Largest response head taken from the backend.
const MAX_REPLY_HEAD: usize = 64 * 1024;

/// Parses the backend's response head and, for a final one, writes the client's head into
/// `out` (cleared first): hop-by-hop headers dropped, framing re-stated, `Strict-Transport-
/// Security` added when configured and absent, `Date` added when absent (as hyper does), and
/// `Connection: close` when this response is the connection's last.
pub fn reply(
    buf: &[u8],
    head_request: bool,
    hsts: Option<&[u8]>,
    close: bool,
    out: &mut Vec<u8>,
) -> Reply {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REPLY_HEAD => return Reply::Partial,
        Ok(httparse::Status::Partial) => return Reply::Bad("response head too large"),
        Err(_) => return Reply::Bad("invalid response head"),
    };
    let Some(status) = resp.code else {
        return Reply::Bad("invalid response head");
    };
    if status == 101 {
        return Reply::Bad("101 without an upgrade");
    }
    if (100..200).contains(&status) {
        return Reply::Interim(head_len);
    }
    let http11 = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut keep_alive = http11;
    let mut tokens: [&[u8]; CONNECTION_TOKENS_MAX] = [&[]; CONNECTION_TOKENS_MAX];
    let mut n_tokens = 0;
    let mut has_hsts = false;
    let mut has_date = false;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = digits(h.value) else {
                return Reply::Bad("invalid Content-Length");
            };
            if length.is_some_and(|l| l != n) {
                return Reply::Bad("conflicting Content-Length");
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Reply::Bad("unsupported Transfer-Encoding");
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
                if !token.is_empty() && n_tokens < CONNECTION_TOKENS_MAX {
                    tokens[n_tokens] = token;
                    n_tokens += 1;
                }
            }
        } else if name.eq_ignore_ascii_case(b"strict-transport-security") {
            has_hsts = true;
        } else if name.eq_ignore_ascii_case(b"date") {
            has_date = true;
        }
    }
    if chunked && length.is_some() {
        return Reply::Bad("both Content-Length and Transfer-Encoding");
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let tokens = &tokens[..n_tokens];
    let last = close || framing == Framing::UntilClose;

    out.clear();
    let reason = resp
        .reason
        .filter(|r| !r.is_empty())
        .or_else(|| http::StatusCode::from_u16(status).ok()?.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if HOP_BY_HOP
            .iter()
            .any(|x| x.as_bytes().eq_ignore_ascii_case(name))
            || name.eq_ignore_ascii_case(b"content-length")
            || tokens.iter().any(|t| t.eq_ignore_ascii_case(name))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        // A HEAD answer states the length a GET would get, as the backend said it.
        Framing::Empty if head_request => {
            if let Some(n) = length {
                out.extend_from_slice(b"content-length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            } else if chunked {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
        }
        Framing::Empty | Framing::UntilClose => {}
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if let (Some(value), false) = (hsts, has_hsts) {
        out.extend_from_slice(b"strict-transport-security: ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if last {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Reply::Final(Answer {
        head_len,
        status,
        framing,
        reusable: keep_alive && framing != Framing::UntilClose,
    })
}

/// Appends `n` in decimal (what `write!` does, without the formatting machinery).
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(crate::access_log::decimal(n, &mut [0; 20]));
}

/// A decimal `Content-Length` (digits only, no sign, no spaces inside; at most 19 digits).
fn digits(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

// ---- chunked bodies ----

/// Finds the end of a chunked body as it streams by (RFC 9112 section 7.1), without changing a
/// byte: sizes in hex (at most 15 digits), extensions skipped, CRLF required everywhere (a bare
/// LF is an error), trailer fields passed through up to [`TRAILERS_MAX`] bytes.
#[derive(Debug, Default)]
pub struct Chunks {
    state: State,
    size: u64,
    digits: u8,
    /// Bytes of chunk data seen (for the access log).
    pub data: u64,
    trailer_bytes: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Trailer section bytes accepted at most.
const TRAILERS_MAX: usize = 16 * 1024;

impl Chunks {
    /// Feeds body bytes; returns how many of them belong to the body (all, unless it ended
    /// within them) once the body is complete, `Ok(None)` while it goes on.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, &'static str> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 15 {
                            return Err("chunk size too large");
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = self.size * 16 + d;
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = State::Ext,
                    b'\r' if self.digits > 0 => self.state = State::SizeLf,
                    _ => return Err("invalid chunk size"),
                },
                State::Ext => match b {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err("bare LF in chunk extension"),
                    0..=8 | 0x0a..=0x1f | 0x7f => return Err("control byte in chunk extension"),
                    _ => {}
                },
                State::SizeLf => {
                    if b != b'\n' {
                        return Err("chunk size line not ended by CRLF");
                    }
                    self.digits = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::Data => {
                    let take = (self.size as usize).min(bytes.len() - i);
                    self.size -= take as u64;
                    self.data += take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err("chunk data not followed by CRLF");
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => match b {
                    b'\r' => self.state = State::EndLf,
                    b'\n' => return Err("bare LF after the last chunk"),
                    _ => {
                        self.state = State::Trailer;
                        continue;
                    }
                },
                State::Trailer => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > TRAILERS_MAX {
                        return Err("trailers too large");
                    }
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err("bare LF in trailers"),
                        _ => {}
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err("trailer line not ended by CRLF");
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err("chunked body not ended by CRLF");
                    }
                    self.state = State::Done;
                    return Ok(Some(i + 1));
                }
                State::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok((self.state == State::Done).then_some(bytes.len()))
    }
}

// ---- the connection loop ----

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::POOL_IDLE_TIMEOUT;
use super::{AccessLog, ConnInfo, Proxy, BACKEND_CONNECT_LOG, BACKEND_REQUEST_LOG};
use crate::activity::Tracked;
use crate::metrics::BackendError;

/// Read size for request heads: most heads fit in one read.
const HEAD_READ: usize = 4 * 1024;
/// Read size for response bytes: one full TLS record's worth per write to the client.
const BODY_READ: usize = 16 * 1024;

/// How the fast path left a connection.
pub enum End {
    /// Closed (by either side, or after a response that was the connection's last).
    Closed,
    /// hyper takes over, with the read buffer's bytes first.
    Fallback,
}

/// An idle backend connection of the fast path, with its read buffer.
struct Idle {
    stream: TcpStream,
    buf: BytesMut,
    since: Instant,
}

/// The fast path's idle backend connections: most recently used last, taken from the end (a
/// warm one), the oldest dropped first. A plain lock held for a push or a pop: no task, no
/// channel per request.
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
}

impl Pool {
    pub fn new(max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn take(&self) -> Option<(TcpStream, BytesMut)> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if c.since.elapsed() >= POOL_IDLE_TIMEOUT {
                // The newest is too old: so are all the others.
                idle.clear();
                return None;
            }
            // An idle HTTP/1.1 connection has nothing to say: readable means the backend closed
            // it (or broke the protocol). The reactor's readiness, without a syscall.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if c.stream.poll_read_ready(&mut cx).is_ready() {
                continue;
            }
            return Some((c.stream, c.buf));
        }
        None
    }

    fn put(&self, stream: TcpStream, mut buf: BytesMut) {
        buf.clear();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() >= self.max_idle {
            if self.max_idle == 0 {
                return;
            }
            idle.remove(0);
        }
        idle.push(Idle {
            stream,
            buf,
            since: Instant::now(),
        });
    }
}

/// A backend connection with its response head read.
struct Answered {
    stream: TcpStream,
    buf: BytesMut,
    answer: Answer,
}

impl Proxy {
    /// Serves requests of one HTTP/1.1 connection on the fast path until the connection ends,
    /// or a request needs hyper ([`End::Fallback`]: `buf` then starts with its head). `closing`
    /// is the watchdog's graceful close: no new request is read once it is cancelled.
    pub(super) async fn serve_fast<S>(
        &self,
        io: &mut Tracked<S>,
        buf: &mut BytesMut,
        info: &ConnInfo,
        closing: &CancellationToken,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let hop = Hop {
            client_ip: info.peer.ip().to_canonical().to_string(),
            listen_port: self.listen_port.to_string(),
            client: info.client.as_ref(),
            http1_backend: crate::grpc::route(self.config.backend_protocol, false)
                == crate::grpc::Route::Http1,
        };
        let mut out = Vec::with_capacity(1024);
        let mut reply_head = Vec::with_capacity(1024);
        loop {
            let plan = loop {
                if !buf.is_empty() {
                    match classify(buf, &hop, &mut out) {
                        Head::Fast(plan) => break plan,
                        Head::Fallback => return End::Fallback,
                        Head::Partial => {}
                    }
                }
                buf.reserve(HEAD_READ);
                let read = if buf.is_empty() {
                    tokio::select! {
                        r = io.read_buf(buf) => r,
                        () = closing.cancelled() => {
                            // Idle and asked to close: say goodbye (TLS close_notify).
                            let _ = tokio::time::timeout(super::GOODBYE_MAX, io.shutdown()).await;
                            return End::Closed;
                        }
                    }
                } else {
                    io.read_buf(buf).await
                };
                match read {
                    Ok(0) | Err(_) => return End::Closed,
                    Ok(_) => {}
                }
            };
            buf.advance(plan.head_len);
            if !self
                .exchange_fast(io, plan, &mut out, &mut reply_head, info, closing)
                .await
            {
                let _ = tokio::time::timeout(super::GOODBYE_MAX, io.shutdown()).await;
                return End::Closed;
            }
        }
    }

    /// One request of the fast path, its backend head in `out`. Whether the client connection
    /// stays open for the next one.
    async fn exchange_fast<S>(
        &self,
        io: &mut Tracked<S>,
        plan: Plan,
        out: &mut Vec<u8>,
        reply_head: &mut Vec<u8>,
        info: &ConnInfo,
        closing: &CancellationToken,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        info.activity.request_started();
        let head_request = plan.method == Method::HEAD;
        let mut log = AccessLog {
            peer: info.peer,
            method: plan.method,
            path: Some(plan.path),
            status: 0,
            bytes: 0,
            grpc: false,
            grpc_status: None,
            finished: false,
            start: Instant::now(),
            activity: info.activity.clone(),
            metrics: self.metrics.clone(),
        };
        let head_by = log.start + self.config.backend_timeout;
        let close = plan.close || closing.is_cancelled();
        let hsts = self.hsts.as_ref().map(|v| v.as_bytes());
        let got = match tokio::time::timeout_at(
            head_by,
            self.backend_head(out, plan.idempotent, head_request, hsts, close, reply_head),
        )
        .await
        {
            Err(_) => Err(BackendError::Timeout),
            Ok(r) => r,
        };
        let Answered {
            stream: mut backend,
            buf: mut rbuf,
            answer,
        } = match got {
            Ok(a) => a,
            Err(kind) => {
                self.metrics.backend_error(kind);
                let (status, message) = match kind {
                    BackendError::Timeout => (504, "backend did not answer in time"),
                    BackendError::Connect => (502, "backend unreachable"),
                    BackendError::Protocol => (502, "backend request failed"),
                };
                local_response(status, message, hsts, close, out);
                log.status = status;
                let ok = io.write_all(out).await.is_ok() && io.flush().await.is_ok();
                log.finished = ok;
                return ok && !close;
            }
        };
        log.status = answer.status;
        rbuf.advance(answer.head_len);
        let last = close || answer.framing == Framing::UntilClose;
        let mut reusable = answer.reusable;
        // The head and what body came with it, in one write.
        let mut remaining = match answer.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut chunks = Chunks::default();
        let mut done = answer.framing == Framing::Empty;
        let first = self.body_part(
            &mut rbuf,
            answer.framing,
            &mut remaining,
            &mut chunks,
            &mut done,
        );
        let Ok(first) = first else {
            return self.body_broke(&mut log);
        };
        reply_head.extend_from_slice(&rbuf[..first]);
        log.bytes += body_bytes(answer.framing, first, &chunks);
        rbuf.advance(first);
        if io.write_all(reply_head).await.is_err() {
            return false;
        }
        while !done {
            rbuf.clear();
            rbuf.reserve(BODY_READ);
            // A read error ends the body as an early close does.
            let n: usize = backend.read_buf(&mut rbuf).await.unwrap_or_default();
            if n == 0 {
                if answer.framing == Framing::UntilClose {
                    break;
                }
                // Cut short: the client must see a broken response, not a complete one.
                return self.body_broke(&mut log);
            }
            let before = chunks.data;
            let Ok(part) = self.body_part(
                &mut rbuf,
                answer.framing,
                &mut remaining,
                &mut chunks,
                &mut done,
            ) else {
                return self.body_broke(&mut log);
            };
            log.bytes += match answer.framing {
                Framing::Chunked => chunks.data - before,
                _ => part as u64,
            };
            if io.write_all(&rbuf[..part]).await.is_err() {
                return false;
            }
            rbuf.advance(part);
        }
        if io.flush().await.is_err() {
            return false;
        }
        log.finished = true;
        // Bytes past the response's end: the backend is confused; do not reuse it.
        reusable &= rbuf.is_empty() && answer.framing != Framing::UntilClose;
        if reusable {
            self.fast_pool.put(backend, rbuf);
        } else {
            let _ = backend.shutdown().await;
        }
        drop(log);
        !last
    }

    /// How many bytes at the start of `rbuf` belong to the body; updates the framing's state
    /// and sets `done` at its end.
    fn body_part(
        &self,
        rbuf: &mut BytesMut,
        framing: Framing,
        remaining: &mut u64,
        chunks: &mut Chunks,
        done: &mut bool,
    ) -> Result<usize, &'static str> {
        match framing {
            Framing::Empty => Ok(0),
            Framing::Length(_) => {
                let take = (*remaining).min(rbuf.len() as u64) as usize;
                *remaining -= take as u64;
                *done = *remaining == 0;
                Ok(take)
            }
            Framing::Chunked => match chunks.feed(rbuf)? {
                Some(n) => {
                    *done = true;
                    Ok(n)
                }
                None => Ok(rbuf.len()),
            },
            Framing::UntilClose => Ok(rbuf.len()),
        }
    }

    /// A response body that broke after its head was sent: logged, and the client connection
    /// closed without a clean end so the client sees it incomplete.
    fn body_broke(&self, log: &mut AccessLog) -> bool {
        self.metrics.backend_error(BackendError::Protocol);
        if let Some(suppressed) = BACKEND_REQUEST_LOG.ready() {
            warn!(backend = %self.backend_authority, suppressed, "backend response body broke off");
        }
        log.finished = false;
        false
    }

    /// Sends the request head on a pooled or new backend connection and reads the response
    /// head (skipping interim ones). A pooled connection that turns out closed before any byte
    /// of a response is replaced once, for requests that may be repeated.
    async fn backend_head(
        &self,
        head: &[u8],
        idempotent: bool,
        head_request: bool,
        hsts: Option<&[u8]>,
        close: bool,
        reply_head: &mut Vec<u8>,
    ) -> Result<Answered, BackendError> {
        let mut pooled = self.fast_pool.take();
        loop {
            let reused = pooled.is_some();
            let (mut stream, mut rbuf) = match pooled.take() {
                Some(c) => c,
                None => {
                    match crate::tcp::connect(&self.config.backend, self.config.connect_timeout)
                        .await
                    {
                        Ok(s) => (s, BytesMut::with_capacity(BODY_READ)),
                        Err(error) => {
                            if let Some(suppressed) = BACKEND_CONNECT_LOG.ready() {
                                warn!(backend = %self.backend_authority, %error, suppressed, "backend connect failed");
                            }
                            return Err(BackendError::Connect);
                        }
                    }
                }
            };
            let sent = stream.write_all(head).await;
            let mut seen = 0usize;
            let result: Result<Answer, &'static str> = async {
                sent.map_err(|_| "write failed")?;
                loop {
                    if !rbuf.is_empty() {
                        match reply(&rbuf, head_request, hsts, close, reply_head) {
                            Reply::Final(a) => return Ok(a),
                            Reply::Interim(n) => {
                                rbuf.advance(n);
                                continue;
                            }
                            Reply::Bad(why) => return Err(why),
                            Reply::Partial => {}
                        }
                    }
                    rbuf.reserve(BODY_READ);
                    match stream.read_buf(&mut rbuf).await {
                        Ok(0) => return Err("closed before a response"),
                        Ok(n) => seen += n,
                        Err(_) => return Err("read failed"),
                    }
                }
            }
            .await;
            match result {
                Ok(answer) => {
                    return Ok(Answered {
                        stream,
                        buf: rbuf,
                        answer,
                    })
                }
                Err(_) if reused && seen == 0 && idempotent => {
                    // The backend closed its idle connection as we reused it: a fresh one.
                    debug!("pooled backend connection was closed; retrying on a new one");
                    pooled = None;
                    continue;
                }
                Err(why) => {
                    if let Some(suppressed) = BACKEND_REQUEST_LOG.ready() {
                        warn!(backend = %self.backend_authority, error = why, suppressed, over = "HTTP/1.1", "backend request failed");
                    }
                    return Err(BackendError::Protocol);
                }
            }
        }
    }
}

/// Body bytes (for the access log) in the first `first` bytes after the head.
fn body_bytes(framing: Framing, first: usize, chunks: &Chunks) -> u64 {
    match framing {
        Framing::Chunked => chunks.data,
        _ => first as u64,
    }
}

/// The sidecar's own short answer, as the hyper path's `local` makes it.
pub fn local_response(
    status: u16,
    message: &str,
    hsts: Option<&[u8]>,
    close: bool,
    out: &mut Vec<u8>,
) {
    use std::io::Write;
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let body = format!("{status} {reason}: {message}\n");
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\ndate: {}\r\n{}\r\n{body}",
        body.len(),
        httpdate::fmt_http_date(SystemTime::now()),
        if close { "connection: close\r\n" } else { "" },
    );
    if let Some(value) = hsts {
        // Before the blank line that ends the head.
        let at = out.len() - body.len() - 2;
        let line = [&b"strict-transport-security: "[..], value, b"\r\n"].concat();
        out.splice(at..at, line);
    }
}

/// A connection's stream with bytes already read from it put back in front: what hyper gets
/// when the fast path hands a connection over.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::http::{forward_headers, Forward};
    use http::header::{HeaderMap, HeaderValue};
    use http_body_util::BodyExt;
    use std::sync::Arc;

    const PEER: &str = "192.0.2.7:5555";

    fn hop(client: Option<&ClientIdentity>) -> Hop<'_> {
        Hop {
            client_ip: "192.0.2.7".into(),
            listen_port: "8443".into(),
            client,
            http1_backend: true,
        }
    }

    fn fast(head: &[u8]) -> Option<(Plan, Vec<u8>)> {
        let mut out = Vec::new();
        match classify(head, &hop(None), &mut out) {
            Head::Fast(p) => Some((p, out)),
            _ => None,
        }
    }

    #[test]
    fn the_common_request_is_taken_and_forwarded_with_this_hops_headers() {
        let head = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Client-Cert-Subject: CN=admin\r\n\r\nGET /next";
        let (plan, out) = fast(head).expect("fast");
        assert_eq!(plan.head_len, head.len() - b"GET /next".len());
        assert_eq!(plan.path.as_str(), "/a?b=c");
        assert!(!plan.close && plan.idempotent);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "GET /a?b=c HTTP/1.1\r\nhost: example.com\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.1, 192.0.2.7\r\nx-forwarded-proto: https\r\nx-forwarded-host: example.com\r\nx-forwarded-port: 8443\r\n\r\n"
        );
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let mut out = Vec::new();
            assert!(
                matches!(classify(head, &hop(None), &mut out), Head::Fallback),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let mut out = Vec::new();
        assert!(matches!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n", &hop(None), &mut out),
            Head::Partial
        ));
        // A head that never ends is hyper's (it answers 431) once it passes the limit.
        let mut long = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        long.resize(MAX_HEAD_BYTES + 1, b'a');
        assert!(matches!(
            classify(&long, &hop(None), &mut out),
            Head::Fallback
        ));
        // gRPC backends over h2c: everything is hyper's.
        let no_h1 = Hop {
            http1_backend: false,
            ..hop(None)
        };
        assert!(matches!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &no_h1, &mut out),
            Head::Fallback
        ));
    }

    fn answer(buf: &[u8], head_request: bool, close: bool) -> (Reply, String) {
        let mut out = Vec::new();
        let r = reply(buf, head_request, Some(b"max-age=60"), close, &mut out);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_is_checked_and_restated() {
        let (r, out) = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nDate: x\r\n\r\nhello",
            false,
            false,
        );
        let Reply::Final(a) = r else { panic!("{r:?}") };
        assert_eq!(
            (a.status, a.framing, a.reusable),
            (200, Framing::Length(5), true)
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nDate: x\r\ncontent-length: 5\r\nstrict-transport-security: max-age=60\r\n\r\n"
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nDate: x\r\nStrict-Transport-Security: max-age=1\r\n\r\n";
        let (r, out) = answer(chunked, false, true);
        let Reply::Final(a) = r else { panic!() };
        assert_eq!(a.framing, Framing::Chunked);
        assert!(
            out.ends_with("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{out}"
        );
        assert!(!out.contains("max-age=60"));
        for (bad, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                "both Content-Length and Transfer-Encoding",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "unsupported Transfer-Encoding",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "101 without an upgrade",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "invalid response head"),
        ] {
            assert_eq!(answer(bad, false, false).0, Reply::Bad(why));
        }
        assert_eq!(
            answer(
                b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200",
                false,
                false
            )
            .0,
            Reply::Interim(37)
        );
        // No body: HEAD, 204, 304, whatever the length says; HEAD keeps the length.
        let (r, out) = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nDate: x\r\n\r\n",
            true,
            false,
        );
        assert!(matches!(
            r,
            Reply::Final(Answer {
                framing: Framing::Empty,
                reusable: true,
                ..
            })
        ));
        assert!(out.contains("content-length: 9\r\n"));
        let (r, _) = answer(
            b"HTTP/1.1 304 Not Modified\r\nDate: x\r\n\r\n",
            false,
            false,
        );
        assert!(matches!(
            r,
            Reply::Final(Answer {
                framing: Framing::Empty,
                ..
            })
        ));
        // Until close: the client connection closes after it; the backend's is not reused.
        let (r, out) = answer(b"HTTP/1.0 200 OK\r\nDate: x\r\n\r\n", false, false);
        assert!(matches!(
            r,
            Reply::Final(Answer {
                framing: Framing::UntilClose,
                reusable: false,
                ..
            })
        ));
        assert!(out.ends_with("connection: close\r\n\r\n"));
        let (r, _) = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            false,
            false,
        );
        assert!(matches!(
            r,
            Reply::Final(Answer {
                reusable: false,
                ..
            })
        ));
        assert_eq!(
            answer(b"HTTP/1.1 200 OK\r\nContent-Le", false, false).0,
            Reply::Partial
        );
    }

    #[test]
    fn chunked_bodies_end_where_they_end_however_they_are_split() {
        let body = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=end {
            let mut c = Chunks::default();
            let first = c.feed(&body[..split]).unwrap();
            let got = match first {
                Some(n) => n,
                None => split + c.feed(&body[split..]).unwrap().expect("ends"),
            };
            assert_eq!(got, end, "split at {split}");
            assert_eq!(c.data, 31);
        }
        for bad in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"x\r\n",
            b"\r\n",
            b"1000000000000000\r\n",
            b"5\r\nhelloXX",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"5;a\x01\r\n",
        ] {
            assert!(
                Chunks::default().feed(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut huge = b"0\r\nX: ".to_vec();
        huge.resize(TRAILERS_MAX + 16, b'a');
        assert!(Chunks::default().feed(&huge).is_err());
    }

    #[test]
    fn local_answers_are_the_hyper_paths() {
        let mut out = Vec::new();
        local_response(502, "backend unreachable", None, true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 37\r\n"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\n502 Bad Gateway: backend unreachable\n"));
    }

    // ---- the differential test ----

    /// A small deterministic generator (xorshift), so a failure names a reproducible case.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn chance(&mut self, percent: u64) -> bool {
            self.next() % 100 < percent
        }
    }

    const METHODS: &[&str] = &[
        "GET", "GET", "GET", "HEAD", "POST", "DELETE", "OPTIONS", "PUT", "PATCH", "BREW",
        "CONNECT", "PRI", "get", "G\0T", "G T",
    ];
    const TARGETS: &[&str] = &[
        "/",
        "/",
        "/a?b=c",
        "/%2e%2e/x",
        "//double",
        "/?",
        "/a b",
        "*",
        "http://example.com/",
        "/\x7f",
        "/caf\u{e9}",
        "/a#frag",
        "/\"q\"",
        "/{x}",
    ];
    const VERSIONS: &[&str] = &[
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/1.2",
        "http/1.1",
        "HTTP/1.1 ",
        "HTTP/1.10",
    ];
    const HEADERS: &[&str] = &[
        "Accept: */*",
        "User-Agent: gen/1",
        "Host: example.com",
        "Host: example.com:8443",
        "Host: [::1]:8443",
        "Host: ",
        "Host: a b",
        "Host: ex@mple.com",
        "Host : example.com",
        "Host:\texample.com\t",
        "host:EXAMPLE.com",
        "Content-Length: 0",
        "Content-Length: 00",
        "Content-Length: +0",
        "Content-Length:  0 ",
        "Content-Length: 0, 0",
        "Content-Length: 5",
        "Content-Length: -1",
        "Content-Length: 99999999999999999999999",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: identity",
        "Transfer-Encoding : chunked",
        "X-Fold: a\r\n b",
        "X-Fold: a\n\tb",
        "X-Nul: a\0b",
        "X-Ctl: a\x01b",
        "X-Del: a\x7fb",
        "X-Empty:",
        "X-Space:    padded   ",
        "Connection: close",
        "Connection: keep-alive",
        "Connection: x-forwarded-for",
        "Connection: content-length",
        "Connection: upgrade",
        "Connection: Close, X-Secret",
        "Connection: te, host",
        "Connection: ,,",
        "X-Secret: 1",
        "Upgrade: websocket",
        "Expect: 100-continue",
        "TE: trailers",
        "TE: gzip;q=1, trailers;q=0.5",
        "TE: chunked",
        "Trailer: x-checksum",
        "X-Forwarded-For: 10.0.0.1",
        "X-Forwarded-For: 10.0.0.2, 10.0.0.3",
        "x-forwarded-for: caf\u{e9}",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Port: 1",
        "X-Client-Cert-Subject: CN=admin",
        "x-client-cert-san: URI:spiffe://evil",
        "Forwarded: for=1.2.3.4",
        "Content-Type: application/grpc",
        "Content-Type: application/grpc+proto",
        "Content-Type: text/plain",
        "Proxy-Authorization: Basic eA==",
        "Proxy-Connection: keep-alive",
        "HTTP2-Settings: AAMAAABkAAQAAP__",
        "Keep-Alive: timeout=5",
        "\0Bad: x",
        ": novalue",
        "X Bad: x",
        "X-Bad\t: x",
        "X-Long: LONG",
        "Cookie: a=b; c=d",
    ];
    const ENDINGS: &[&str] = &["\r\n", "\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r", "\r\r\n"];

    fn generate(rng: &mut Rng) -> Vec<u8> {
        let mut head = String::new();
        if rng.chance(3) {
            head.push_str("\r\n");
        }
        // Each part is the clean common one more often than not, so that enough heads are
        // ones the fast path takes and the hostile parts are tried one or two at a time.
        let part = |rng: &mut Rng, items: &[&'static str]| -> &'static str {
            if rng.chance(60) {
                items[0]
            } else {
                items[(rng.next() % items.len() as u64) as usize]
            }
        };
        head.push_str(part(rng, METHODS));
        head.push(' ');
        head.push_str(part(rng, TARGETS));
        head.push(' ');
        head.push_str(part(rng, VERSIONS));
        head.push_str(part(rng, ENDINGS));
        if rng.chance(75) {
            head.push_str("Host: example.com\r\n");
        }
        for _ in 0..(rng.next() % 6) {
            let line = part(rng, HEADERS).replace("LONG", &"a".repeat(9000));
            head.push_str(&line);
            head.push_str(part(rng, ENDINGS));
        }
        head.push_str(if rng.chance(95) { "\r\n" } else { "\n" });
        head.into_bytes()
    }

    /// What hyper's server made of a connection's bytes: each request's method, target,
    /// headers and body.
    async fn hyper_reads(bytes: Vec<u8>) -> Vec<(Method, String, HeaderMap, Vec<u8>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let record = record.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes().to_vec())
                        .unwrap_or_default();
                    let target = parts
                        .uri
                        .path_and_query()
                        .map_or(String::new(), |p| p.to_string());
                    record
                        .lock()
                        .unwrap()
                        .push((parts.method, target, parts.headers, body));
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                        Bytes,
                    >::new(
                    )))
                }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD_BYTES.max(8192) * 2)
            .max_header_size(MAX_HEAD_BYTES)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let task = tokio::spawn(conn);
        client.write_all(&bytes).await.unwrap();
        // Read answers until both came or hyper closed the connection (it refused the head);
        // the bound only keeps a hung parser from hanging the test.
        let mut sink = Vec::new();
        let mut chunk = [0u8; 4096];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while sink.windows(8).filter(|w| w == b"HTTP/1.1").count() < 2 {
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        drop(client);
        let _ = task.await;
        let out = std::mem::take(&mut *seen.lock().unwrap());
        out
    }

    /// The headers of a head as (lowercase name, value), sorted: order is not meaning.
    fn header_set(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        v.sort();
        v
    }

    fn parsed_set(head: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        assert!(matches!(req.parse(head), Ok(httparse::Status::Complete(_))));
        let mut v: Vec<_> = req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn fast_heads_frame_as_hyper_frames_them() {
        let identity = ClientIdentity {
            subject: "CN=svc\u{1}a".into(),
            san: "URI:spiffe://d/a".into(),
            fingerprint: String::new(),
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut taken, mut handed) = (0, 0);
        for case in 0..4000 {
            let head = generate(&mut rng);
            let client = (case % 3 == 0).then_some(&identity);
            let mut out = Vec::new();
            let plan = match classify(&head, &hop(client), &mut out) {
                Head::Fast(plan) => plan,
                Head::Fallback => {
                    handed += 1;
                    continue;
                }
                // The generator's line endings can leave a head unfinished: hyper would wait too.
                Head::Partial => continue,
            };
            taken += 1;
            let show = String::from_utf8_lossy(&head).into_owned();
            assert_eq!(plan.head_len, head.len(), "case {case}: {show:?}");
            // hyper, given the same bytes and a second request after them, must read the same
            // request, with no body, and then the second one: the same framing.
            let mut bytes = head.clone();
            bytes.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: b\r\n\r\n");
            let seen = hyper_reads(bytes).await;
            // ... unless the client asked to close: then hyper closes after the first, as the
            // fast path does.
            let expect = if plan.close { 1 } else { 2 };
            assert_eq!(
                seen.len(),
                expect,
                "case {case}: hyper read {:?} from {show:?}",
                seen.iter().map(|s| (&s.0, &s.1)).collect::<Vec<_>>()
            );
            let (method, target, headers, body) = &seen[0];
            assert_eq!(
                (method, target.as_str()),
                (&plan.method, plan.path.as_str()),
                "case {case}: {show:?}"
            );
            assert!(
                body.is_empty(),
                "case {case}: hyper read a body from {show:?}"
            );
            if !plan.close {
                assert_eq!(seen[1].1, "/second", "case {case}: {show:?}");
            }
            // The headers the backend gets: the hyper path's rules on hyper's reading.
            let mut expected = headers.clone();
            let host = headers.get(http::header::HOST).cloned().unwrap();
            let trailers = super::super::accepts_trailers(headers);
            forward_headers(
                &mut expected,
                &Forward {
                    peer: PEER.parse().unwrap(),
                    host: &host,
                    listen_port: 8443,
                    client,
                    trailers,
                    upgrade: None,
                },
            );
            expected.insert(http::header::HOST, host);
            assert_eq!(
                parsed_set(&out),
                header_set(&expected),
                "case {case}: {show:?}"
            );
        }
        // The generator must exercise both sides.
        assert!(
            taken > 500 && handed > 500,
            "taken {taken}, handed over {handed}"
        );
        let _ = HeaderValue::from_static("x");
    }
}
