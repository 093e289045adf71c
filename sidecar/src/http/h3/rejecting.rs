//! h3-quinn's QUIC connection with one change: a request stream the server drops before it sent
//! anything on it is reset with H3_REQUEST_REJECTED (RFC 9114 section 8.1: "not processed, safe
//! to retry"). quinn finishes a dropped send stream cleanly instead, which leaves the client an
//! empty, malformed response; the sidecar drops a stream unanswered when its request head does
//! not arrive within `--header-read-timeout`.
//!
//! Every other call goes straight to h3-quinn.

use std::task::{Context, Poll};

use bytes::Buf;
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};

/// One of h3-quinn's connection-level types, whose streams come wrapped in [`Bidi`] and
/// [`Send`]: the connection itself ([`Connection`]) and its stream opener.
pub(crate) struct Wrapped<T>(T);

/// The connection: accepted request streams come wrapped in [`Bidi`].
pub(crate) type Connection = Wrapped<h3_quinn::Connection>;

impl Connection {
    pub(crate) fn new(conn: quinn::Connection) -> Self {
        Wrapped(h3_quinn::Connection::new(conn))
    }
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = Wrapped<h3_quinn::OpenStreams>;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        quic::Connection::<B>::poll_accept_recv(&mut self.0, cx)
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        quic::Connection::<B>::poll_accept_bidi(&mut self.0, cx).map_ok(Bidi::new)
    }

    fn opener(&self) -> Self::OpenStreams {
        Wrapped(quic::Connection::<B>::opener(&self.0))
    }
}

impl<B, T> quic::OpenStreams<B> for Wrapped<T>
where
    B: Buf,
    T: quic::OpenStreams<
        B,
        BidiStream = h3_quinn::BidiStream<B>,
        SendStream = h3_quinn::SendStream<B>,
    >,
{
    type BidiStream = Bidi<B>;
    type SendStream = Send<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        self.0.poll_open_bidi(cx).map_ok(Bidi::new)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.0.poll_open_send(cx).map_ok(Send::new)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        self.0.close(code, reason);
    }
}

/// A request stream: reset on drop when nothing was sent on it.
pub(crate) struct Bidi<B: Buf> {
    inner: Option<h3_quinn::BidiStream<B>>,
    sent: bool,
}

impl<B: Buf> Bidi<B> {
    fn new(inner: h3_quinn::BidiStream<B>) -> Self {
        Self {
            inner: Some(inner),
            sent: false,
        }
    }

    fn inner(&mut self) -> &mut h3_quinn::BidiStream<B> {
        self.inner
            .as_mut()
            .expect("a stream is only taken from by split, which consumes it")
    }
}

impl<B: Buf> Drop for Bidi<B> {
    fn drop(&mut self) {
        if let (Some(inner), false) = (self.inner.as_mut(), self.sent) {
            quic::SendStream::<B>::reset(inner, Code::H3_REQUEST_REJECTED.value());
        }
    }
}

impl<B: Buf> quic::RecvStream for Bidi<B> {
    type Buf = bytes::Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Self::Buf>, StreamErrorIncoming>> {
        self.inner().poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner().stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner
            .as_ref()
            .expect("a stream is only taken from by split, which consumes it")
            .recv_id()
    }
}

impl<B: Buf> quic::SendStream<B> for Bidi<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner().poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.sent = true;
        self.inner().send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.sent = true;
        self.inner().poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.sent = true;
        self.inner().reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        let inner = self
            .inner
            .as_ref()
            .expect("a stream is only taken from by split, which consumes it");
        quic::SendStream::<B>::send_id(inner)
    }
}

impl<B: Buf> quic::BidiStream<B> for Bidi<B> {
    type SendStream = Send<B>;
    type RecvStream = h3_quinn::RecvStream;

    fn split(mut self) -> (Self::SendStream, Self::RecvStream) {
        let sent = self.sent;
        let inner = self
            .inner
            .take()
            .expect("a stream is split once, which consumes it");
        let (send, recv) = inner.split();
        (Send { inner: send, sent }, recv)
    }
}

/// A send stream: reset on drop when nothing was sent on it.
pub(crate) struct Send<B: Buf> {
    inner: h3_quinn::SendStream<B>,
    sent: bool,
}

impl<B: Buf> Send<B> {
    fn new(inner: h3_quinn::SendStream<B>) -> Self {
        Self { inner, sent: false }
    }
}

impl<B: Buf> Drop for Send<B> {
    fn drop(&mut self) {
        if !self.sent {
            quic::SendStream::<B>::reset(&mut self.inner, Code::H3_REQUEST_REJECTED.value());
        }
    }
}

impl<B: Buf> quic::SendStream<B> for Send<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.sent = true;
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.sent = true;
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.sent = true;
        self.inner.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}
