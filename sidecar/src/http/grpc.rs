//! gRPC in http mode: which requests are gRPC, which way they go to the backend, the client's
//! deadline (`grpc-timeout`), the sidecar's own answers when the backend cannot be reached
//! (HTTP 200 with `grpc-status` 14 or 4, as gRPC clients understand them), and a response body
//! that ends the call with `DEADLINE_EXCEEDED` when the deadline passes mid-stream.
//!
//! The rules are pure functions with unit tests; [`Guarded`] is the one piece with a timer.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use shared::proto::BackendProtocol;
use tokio::time::{Instant, Sleep};

pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub(crate) const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub(crate) const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// `DEADLINE_EXCEEDED`: the client's deadline passed before the call ended.
pub(crate) const DEADLINE_EXCEEDED: u32 = 4;
/// `UNAVAILABLE`: the backend could not be reached or did not answer (gRPC's mapping of HTTP
/// 502, 503 and 504).
pub(crate) const UNAVAILABLE: u32 = 14;

/// The trailers gRPC responses end with, announced in a `Trailer` header for HTTP/1.1 clients
/// (hyper sends an HTTP/1.1 trailer only when announced and asked for with `TE: trailers`).
pub(crate) const TRAILER_NAMES: &str = "grpc-status, grpc-message, grpc-status-details-bin";

/// Whether a request is a gRPC call: `content-type` is `application/grpc`, optionally with a
/// `+format` suffix (`application/grpc+proto`) or parameters. `application/grpc-web` is not:
/// it is HTTP/1.1-compatible framing that the backend's gRPC-Web layer translates.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

/// Whether a `Content-Type` value is gRPC's (`application/grpc`, `+proto` and the like).
pub(crate) fn is_grpc_content_type(bytes: &[u8]) -> bool {
    const PREFIX: &[u8] = b"application/grpc";
    if bytes.len() < PREFIX.len() || !bytes[..PREFIX.len()].eq_ignore_ascii_case(PREFIX) {
        return false;
    }
    matches!(bytes.get(PREFIX.len()), None | Some(b'+' | b';' | b' '))
}

/// Which HTTP version a request goes to the backend in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Http1,
    H2c,
}

/// `--backend-protocol` applied to one request: `auto` sends gRPC over h2c, the rest over
/// HTTP/1.1. Upgrades (WebSocket) always take HTTP/1.1; the caller handles them before this.
pub(crate) fn route(protocol: BackendProtocol, grpc: bool) -> Route {
    match protocol {
        BackendProtocol::Http1 => Route::Http1,
        BackendProtocol::H2c => Route::H2c,
        BackendProtocol::Auto if grpc => Route::H2c,
        BackendProtocol::Auto => Route::Http1,
    }
}

/// Parses `grpc-timeout` (gRPC over HTTP/2: 1 to 8 ASCII digits and a unit, `H` hours, `M`
/// minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds). Anything else is
/// `None`: an unreadable deadline is ignored, as gRPC servers do, and the header still reaches
/// the backend unchanged.
pub(crate) fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (unit, digits) = bytes.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status a response carries in its headers (a trailers-only response) or trailers.
pub(crate) fn status_of(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.trim().parse().ok()
}

/// The headers of the sidecar's own gRPC answer: a trailers-only response (HTTP 200, no body)
/// with `grpc-status` and `grpc-message`. `message` is plain ASCII without `%`, so it needs no
/// percent-encoding.
pub(crate) fn failure_headers(code: u32, message: &'static str) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(3);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, HeaderValue::from(code));
    h.insert(GRPC_MESSAGE, HeaderValue::from_static(message));
    h
}

/// A backend response body with, for gRPC calls with a deadline, a timer: once the deadline
/// passes the body ends with `grpc-status: 4` trailers (the backend's stream is dropped, which
/// resets it), so a backend that ignores the deadline cannot hold the call open past it.
pub(crate) struct Guarded<B> {
    inner: B,
    deadline: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl<B> Guarded<B> {
    pub(crate) fn new(inner: B, deadline: Option<Instant>) -> Self {
        Self {
            inner,
            deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            expired: false,
        }
    }
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        let res = Pin::new(&mut self.inner).poll_frame(cx);
        if res.is_ready() {
            return res;
        }
        let Some(deadline) = self.deadline.as_mut() else {
            return res;
        };
        if deadline.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.expired = true;
        let mut trailers = HeaderMap::with_capacity(2);
        trailers.insert(GRPC_STATUS, HeaderValue::from(DEADLINE_EXCEEDED));
        trailers.insert(GRPC_MESSAGE, HeaderValue::from_static("deadline exceeded"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.deadline.is_some() {
            // It may end early, with trailers: no exact length to promise.
            let mut hint = SizeHint::new();
            hint.set_lower(0);
            hint
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_type(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(value).expect("value"),
        );
        h
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc; charset=utf-8",
        ] {
            assert!(is_grpc(&with_type(yes)), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "application/json",
            "text/grpc",
            "",
        ] {
            assert!(!is_grpc(&with_type(no)), "{no}");
        }
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn auto_sends_only_grpc_over_h2c() {
        use BackendProtocol::*;
        assert_eq!(route(Auto, true), Route::H2c);
        assert_eq!(route(Auto, false), Route::Http1);
        assert_eq!(route(Http1, true), Route::Http1);
        assert_eq!(route(H2c, false), Route::H2c);
    }

    #[test]
    fn grpc_timeouts_parse_per_the_spec() {
        let t = |s: &str| parse_timeout(&HeaderValue::from_str(s).expect("value"));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("2M"), Some(Duration::from_secs(120)));
        assert_eq!(t("30S"), Some(Duration::from_secs(30)));
        assert_eq!(t("300m"), Some(Duration::from_millis(300)));
        assert_eq!(t("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(t("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(t("0m"), Some(Duration::ZERO));
        for bad in [
            "",
            "m",
            "100",
            "123456789m",
            "1.5S",
            "-1S",
            "1s",
            "1 S",
            "1h",
        ] {
            assert_eq!(t(bad), None, "{bad:?}");
        }
        // The largest value does not overflow.
        assert_eq!(t("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
    }

    #[test]
    fn statuses_read_from_headers_or_trailers() {
        let mut h = HeaderMap::new();
        assert_eq!(status_of(&h), None);
        h.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        assert_eq!(status_of(&h), Some(5));
        h.insert(GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(status_of(&h), None);
        let f = failure_headers(UNAVAILABLE, "backend unreachable");
        assert_eq!(status_of(&f), Some(14));
        assert_eq!(f[GRPC_MESSAGE], "backend unreachable");
        assert!(is_grpc(&f));
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_ends_a_silent_stream_with_status_4() {
        use http_body_util::{BodyExt, StreamBody};
        // A body that never yields: the backend holds the stream open.
        let silent = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, std::convert::Infallible>,
        >());
        let mut body = Guarded::new(silent, Some(Instant::now() + Duration::from_millis(300)));
        let frame = body.frame().await.expect("a frame").expect("ok");
        let trailers = frame.into_trailers().expect("trailers");
        assert_eq!(status_of(&trailers), Some(DEADLINE_EXCEEDED));
        assert!(body.frame().await.is_none());
        assert!(body.is_end_stream());
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_deadline_the_body_passes_unchanged() {
        use http_body_util::{BodyExt, Full};
        let mut body = Guarded::new(Full::new(Bytes::from_static(b"abc")), None);
        assert_eq!(body.size_hint().exact(), Some(3));
        let frame = body.frame().await.expect("a frame").expect("ok");
        assert_eq!(frame.into_data().expect("data"), Bytes::from_static(b"abc"));
        assert!(body.frame().await.is_none());
    }
}
