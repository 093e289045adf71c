//! The request body the proxy forwards: hyper's (HTTP/1.1 and HTTP/2) or an HTTP/3 request
//! stream's receiving half. One type, so every path of [`super::Proxy`] serves the three
//! protocols alike.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// The receiving half of an HTTP/3 request stream.
pub(crate) type H3Recv = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body.
pub(crate) enum RequestBody {
    Hyper(Incoming),
    H3(H3Body),
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        RequestBody::Hyper(body)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::H3(b) => b.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Hyper(b) => b.is_end_stream(),
            RequestBody::H3(b) => b.state == State::Done,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Hyper(b) => b.size_hint(),
            RequestBody::H3(b) => match b.state {
                State::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}

impl Drop for H3Body {
    /// A body dropped before its end (the response did not need the rest, or is done before
    /// the client's end of stream arrived): the client is asked to stop sending with
    /// H3_NO_ERROR, as RFC 9114 section 4.1 says, not told its request failed.
    fn drop(&mut self) {
        if self.state != State::Done && !self.reading {
            self.recv.stop_sending(h3::error::Code::H3_NO_ERROR);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Data,
    Trailers,
    Done,
}

/// An HTTP/3 request body: DATA frames, then the trailers if any.
pub(crate) struct H3Body {
    recv: H3Recv,
    state: State,
    /// A first chunk read by [`H3Body::new`] while looking for the end of the stream.
    first: Option<Bytes>,
    /// The last read returned `Pending`: h3-quinn holds the stream inside its read, and asking
    /// it to stop sending then would panic (h3-quinn 0.0.10); dropping the read stops it.
    reading: bool,
}

impl H3Body {
    /// The body of `recv`. Whatever already arrived is looked at (without waiting): a request
    /// whose stream ended with its head (a `GET`) is known to have no body, so it can take the
    /// paths for bodyless requests, as on HTTP/2.
    pub(crate) fn new(recv: H3Recv) -> Self {
        let mut body = Self {
            recv,
            state: State::Data,
            first: None,
            reading: false,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match body.recv.poll_recv_data(&mut cx) {
            Poll::Ready(Ok(Some(mut chunk))) => {
                body.first = Some(chunk.copy_to_bytes(chunk.remaining()));
            }
            Poll::Ready(Ok(None)) => {
                body.state = State::Trailers;
                if let Poll::Ready(Ok(None)) = body.recv.poll_recv_trailers(&mut cx) {
                    body.state = State::Done;
                }
            }
            // An error shows again at the first real read.
            Poll::Ready(Err(_)) => {}
            Poll::Pending => body.reading = true,
        }
        if body.state == State::Trailers {
            // poll_recv_trailers returned Pending above.
            body.reading = true;
        }
        body
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let res = self.poll_inner(cx);
        self.reading = res.is_pending();
        res
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        loop {
            match self.state {
                State::Data => match self.recv.poll_recv_data(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Some(mut chunk))) => {
                        let data = chunk.copy_to_bytes(chunk.remaining());
                        if data.is_empty() {
                            continue;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Poll::Ready(Ok(None)) => self.state = State::Trailers,
                    Poll::Ready(Err(e)) => {
                        self.state = State::Done;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
                State::Trailers => {
                    let res = std::task::ready!(self.recv.poll_recv_trailers(cx));
                    self.state = State::Done;
                    return Poll::Ready(match res {
                        Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
                        Ok(None) => None,
                        Err(e) => Some(Err(Box::new(e))),
                    });
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }
}
