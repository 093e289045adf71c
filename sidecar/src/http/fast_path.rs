//! The HTTP/1.1 fast path: the common request (HTTP/1.1, origin-form, one valid `Host`, no body
//! or a small one framed by `Content-Length` or strict chunking, no upgrade, not gRPC) parsed
//! once with `httparse` (no allocation per header), its head
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
//! (`fast_heads_frame_as_hyper_frames_them` in [`request_head`]) checks that every head it takes
//! is one hyper parses to the same method, target and end of head, and that the headers it
//! forwards are the ones the hyper path's rewrite forwards.
//!
//! Its parts: the request head ([`request_head`]), the response head and the sidecar's own
//! answers ([`response`]), the end of a chunked body ([`chunked`]), the idle backend connections
//! ([`pool`]); this file drives them, one request after another, on one client connection. The
//! HTTP/2 fast path ([`h2`]) serves bodyless HTTP/2 streams over the same backend connections.

mod chunked;
mod h2;
mod pool;
mod request_head;
mod response;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{AccessLog, ConnInfo, Proxy, BACKEND_CONNECT_LOG, BACKEND_REQUEST_LOG};
use crate::connection::activity::{Activity, Tracked};
use crate::metrics::{BackendError, Protocol};
use chunked::Chunks;
#[cfg(test)]
mod testgen;

pub(super) use h2::Direct;
pub(super) use pool::Pool;
use request_head::{classify, Head, Hop, Plan};
use response::{local_response, reply, Added, Answer, Framing, Reply};

/// Connection tokens kept at most, in a request head and in a response head; a request head
/// naming more goes to hyper.
const CONNECTION_TOKENS_MAX: usize = 16;

/// What a client sending `Expect: 100-continue` waits for before its body (RFC 9110 section
/// 10.1.1), sent when the body has not arrived with the head.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Read size for request heads: most heads fit in one read.
const HEAD_READ: usize = 4 * 1024;
/// Read size for response bytes: one full TLS record's worth per write to the client.
const BODY_READ: usize = 16 * 1024;

/// How the fast path left a connection.
pub(super) enum End {
    /// Closed (by either side, or after a response that was the connection's last).
    Closed,
    /// hyper takes over, with the read buffer's bytes first.
    Fallback,
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
    /// is the watchdog's graceful close: once it is cancelled, the next request is read only
    /// if it comes before the client has been quiet for the drain linger ([`read_idle`]), and
    /// is answered with `Connection: close`.
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
            client_ip: &info.client_ip,
            listen_port: &self.listen_port_text,
            client: info.client.as_ref(),
            http1_backend: self.fast_h2_backend,
        };
        let mut out = Vec::with_capacity(1024);
        let mut reply_head = Vec::with_capacity(1024);
        let linger = super::DRAIN_LINGER.min(self.config.idle_timeout);
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
                    match read_idle(io, buf, &info.activity, closing, linger).await {
                        Some(read) => read,
                        None => {
                            // Asked to close, and quiet: say goodbye (TLS close_notify).
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
            // The body, whole, after the backend's head: a client that stops sending it is
            // dropped before anything reaches the backend. The request has not started for the
            // watchdog yet, so `--header-read-timeout` bounds the head and this body together.
            let Some(body_len) = self.read_body(io, buf, &plan).await else {
                return End::Closed;
            };
            let Some(body_len) = body_len else {
                // A chunked body the fast path does not read: hyper's, from its head on.
                return End::Fallback;
            };
            out.extend_from_slice(&buf[plan.head_len..plan.head_len + body_len]);
            buf.advance(plan.head_len + body_len);
            if !self
                .exchange_fast(io, plan, &mut out, &mut reply_head, info, closing)
                .await
            {
                let _ = tokio::time::timeout(super::GOODBYE_MAX, io.shutdown()).await;
                return End::Closed;
            }
        }
    }

    /// Reads the body of the request whose head starts `buf` until all of it is there, sending
    /// `100 Continue` first if the client asked and the body has not come with the head.
    /// `None`: the client went away; `Some(None)`: a chunked body the fast path does not take
    /// (not strictly framed, or longer than [`request_head::FAST_BODY_MAX`]), `buf` untouched;
    /// `Some(Some(n))`: the body is the `n` bytes after the head.
    async fn read_body<S>(
        &self,
        io: &mut Tracked<S>,
        buf: &mut BytesMut,
        plan: &Plan,
    ) -> Option<Option<usize>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut asked = !plan.expect_continue;
        loop {
            let body = &buf[plan.head_len..];
            let complete = if plan.chunked {
                match request_head::chunked_end(body) {
                    Ok(Some(n)) => Some(n),
                    Ok(None) if (body.len() as u64) < request_head::FAST_BODY_MAX => None,
                    _ => return Some(None),
                }
            } else {
                (body.len() >= plan.body_len).then_some(plan.body_len)
            };
            if let Some(n) = complete {
                return Some(Some(n));
            }
            if !asked {
                // The client may be waiting for this before it sends the body.
                asked = true;
                if io.write_all(CONTINUE).await.is_err() || io.flush().await.is_err() {
                    return None;
                }
            }
            buf.reserve(HEAD_READ);
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
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
            proto: Protocol::Http1,
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
        let hsts = Added {
            hsts: self.hsts.as_ref().map(|v| v.as_bytes()),
            alt_svc: self.alt_svc.as_ref().map(|v| v.as_bytes()),
        };
        let got = match tokio::time::timeout_at(
            head_by,
            self.backend_head(out, plan.idempotent, |buf| {
                reply(buf, head_request, hsts, close, reply_head)
            }),
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
            Err(kind) => return self.fast_failed(io, kind, hsts, close, out, &mut log).await,
        };
        log.status = answer.status;
        rbuf.advance(answer.head_len);
        let last = close || answer.framing == Framing::UntilClose;
        if !self
            .relay_response(
                io,
                &mut backend,
                &mut rbuf,
                answer.framing,
                reply_head,
                &mut log,
            )
            .await
        {
            return false;
        }
        log.finished = true;
        // Bytes past the response's end: the backend is confused; do not reuse it.
        let reusable = answer.reusable && rbuf.is_empty() && answer.framing != Framing::UntilClose;
        if reusable {
            self.fast_pool.put(backend, rbuf);
        } else {
            let _ = backend.shutdown().await;
        }
        drop(log);
        !last
    }

    /// The sidecar's own answer (502 or 504) to a request the backend did not answer. Whether
    /// the client connection stays open.
    async fn fast_failed<S>(
        &self,
        io: &mut Tracked<S>,
        kind: BackendError,
        hsts: Added<'_>,
        close: bool,
        out: &mut Vec<u8>,
        log: &mut AccessLog,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
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
        ok && !close
    }

    /// Relays a response whose head is in `reply_head` and whose body starts in `rbuf`: the head
    /// and what body came with it in one write, then the rest of the body as it arrives, then a
    /// flush. Whether it all reached the client (a broken body is logged by [`Self::body_broke`]).
    async fn relay_response<S>(
        &self,
        io: &mut Tracked<S>,
        backend: &mut TcpStream,
        rbuf: &mut BytesMut,
        framing: Framing,
        reply_head: &mut Vec<u8>,
        log: &mut AccessLog,
    ) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        // The head and what body came with it, in one write.
        let mut remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut chunks = Chunks::default();
        let mut done = framing == Framing::Empty;
        let first = self.body_part(rbuf, framing, &mut remaining, &mut chunks, &mut done);
        let Ok(first) = first else {
            return self.body_broke(log);
        };
        reply_head.extend_from_slice(&rbuf[..first]);
        log.bytes += body_bytes(framing, first, &chunks);
        rbuf.advance(first);
        if io.write_all(reply_head).await.is_err() {
            return false;
        }
        while !done {
            rbuf.clear();
            rbuf.reserve(BODY_READ);
            // A read error ends the body as an early close does.
            let n: usize = backend.read_buf(rbuf).await.unwrap_or_default();
            if n == 0 {
                if framing == Framing::UntilClose {
                    break;
                }
                // Cut short: the client must see a broken response, not a complete one.
                return self.body_broke(log);
            }
            let before = chunks.data;
            let Ok(part) = self.body_part(rbuf, framing, &mut remaining, &mut chunks, &mut done)
            else {
                return self.body_broke(log);
            };
            log.bytes += match framing {
                Framing::Chunked => chunks.data - before,
                _ => part as u64,
            };
            if io.write_all(&rbuf[..part]).await.is_err() {
                return false;
            }
            rbuf.advance(part);
        }
        io.flush().await.is_ok()
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
        mut parse: impl FnMut(&[u8]) -> Reply,
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
                        match parse(&rbuf) {
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

/// Reads the first bytes of the next request. Once the connection is asked to close (the
/// drain, making room, idle), it waits for them only until the client has been quiet for
/// `linger`: a request sent just as the close began is still read, and answered with
/// `Connection: close`, instead of meeting a closed connection. `None` when it is time to close.
async fn read_idle<S>(
    io: &mut Tracked<S>,
    buf: &mut BytesMut,
    activity: &Activity,
    closing: &CancellationToken,
    linger: Duration,
) -> Option<io::Result<usize>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !closing.is_cancelled() {
        tokio::select! {
            read = io.read_buf(buf) => return Some(read),
            () = closing.cancelled() => {}
        }
    }
    tokio::time::timeout_at(activity.last_io() + linger, io.read_buf(buf))
        .await
        .ok()
}

/// Body bytes (for the access log) in the first `first` bytes after the head.
fn body_bytes(framing: Framing, first: usize, chunks: &Chunks) -> u64 {
    match framing {
        Framing::Chunked => chunks.data,
        _ => first as u64,
    }
}

/// A connection's stream with bytes already read from it put back in front: what hyper gets
/// when the fast path hands a connection over.
pub(super) struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub(super) fn new(prefix: Bytes, inner: S) -> Self {
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
