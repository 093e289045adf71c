//! HTTP/2 cleartext (h2c, prior knowledge) to the backend: a few connections, each shared by
//! every stream that lands on it. HTTP/2 multiplexes, so a connection per request would only
//! cost the backend sockets and handshakes; a few (not one) spread the work of framing over the
//! runtime's workers.
//!
//! Connections open lazily, one at a time per slot (concurrent requests that find a slot empty
//! wait for the one connect instead of each opening their own), and are replaced when the
//! backend closes them. Sent once more on a fresh connection: a request the closing connection
//! never took (hyper hands it back), and a request without a body and with an idempotent method
//! (RFC 9110 section 9.2.2) that failed before any response, e.g. written into a connection the
//! backend had just reset, so a backend restart costs no failed `GET`. Other requests (gRPC
//! calls are `POST`s) may have reached the app and fail instead: gRPC clients retry
//! `UNAVAILABLE` by their own policy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use super::body::RequestBody;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use shared::addr::BackendAddr;
use tracing::debug;

/// Connections kept to the backend at most.
pub(crate) const CONNECTIONS: usize = 4;
/// Largest header list accepted from the backend (the same bound as for clients' heads).
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// Why an h2c exchange failed.
#[derive(Debug)]
pub(crate) enum H2Error {
    /// No connection: refused, unreachable, or not accepted within the connect timeout.
    Connect(std::io::Error),
    /// The HTTP/2 handshake or the exchange failed.
    Request(hyper::Error),
}

impl std::fmt::Display for H2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H2Error::Connect(e) => write!(f, "connect: {e}"),
            H2Error::Request(e) => write!(f, "{e}"),
        }
    }
}

/// What the pool sends: the client's body, or nothing (a replayed bodiless request).
type PoolBody = Either<RequestBody, Empty<Bytes>>;

struct Slot {
    sender: Mutex<Option<SendRequest<PoolBody>>>,
    /// Held while this slot connects, so one connect serves every request waiting on it.
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    fn live(&self) -> Option<SendRequest<PoolBody>> {
        let guard = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn set(&self, sender: Option<SendRequest<PoolBody>>) {
        *self.sender.lock().unwrap_or_else(|p| p.into_inner()) = sender;
    }
}

pub(crate) struct H2Pool {
    backend: BackendAddr,
    connect_timeout: Duration,
    slots: Vec<Slot>,
    next: AtomicUsize,
}

impl H2Pool {
    pub(crate) fn new(backend: BackendAddr, connect_timeout: Duration) -> Self {
        Self {
            backend,
            connect_timeout,
            slots: (0..CONNECTIONS)
                .map(|_| Slot {
                    sender: Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Sends `req` on a pooled connection (the next slot in turn) and waits for the response
    /// head. The caller bounds the wait; dropping the future resets the stream only.
    pub(crate) async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, H2Error> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let replay = replayable(&req);
        let mut sender = self.sender(slot).await?;
        let again = match sender.try_send_request(req.map(Either::Left)).await {
            Ok(resp) => return Ok(resp),
            Err(mut error) => match (error.take_message(), replay) {
                // Never sent: the connection was closing.
                (Some(req), _) => req,
                // Sent, but safe to send again.
                (None, Some(req)) => req,
                (None, None) => return Err(H2Error::Request(error.into_error())),
            },
        };
        debug!("pooled h2c connection failed, sending once more on a fresh one");
        // Its task may not have seen it closed yet: drop it from the slot either way.
        slot.set(None);
        let mut sender = self.sender(slot).await?;
        sender.send_request(again).await.map_err(H2Error::Request)
    }

    async fn sender(&self, slot: &Slot) -> Result<SendRequest<PoolBody>, H2Error> {
        if let Some(sender) = slot.live() {
            return Ok(sender);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(sender) = slot.live() {
            return Ok(sender);
        }
        let stream = crate::tcp::connect(&self.backend, self.connect_timeout)
            .await
            .map_err(H2Error::Connect)?;
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEADER_LIST)
            .handshake(TokioIo::new(stream));
        let (sender, conn) = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| {
                H2Error::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "HTTP/2 handshake timed out",
                ))
            })?
            .map_err(H2Error::Request)?;
        // The connection's task ends when either side closes it; `is_closed` then tells the
        // next request to reconnect.
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                debug!(%error, "h2c backend connection ended");
            }
        });
        slot.set(Some(sender.clone()));
        Ok(sender)
    }
}

/// A copy of a request that may be sent again after a failure before any response: an
/// idempotent method and no body. `None` for every other request.
fn replayable(req: &Request<RequestBody>) -> Option<Request<PoolBody>> {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if !idempotent || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(Either::Right(Empty::new()));
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}
