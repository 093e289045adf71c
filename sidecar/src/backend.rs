//! The backend connection of one HTTP/1.1 client connection.
//!
//! An HTTP/1.1 client sends its requests one after another, so each client connection gets its
//! own backend connection, opened on its first request and kept while both ends keep it alive.
//! Its hyper connection future is polled by the client connection's own task (see
//! [`LocalBackend::poll_connection`]), so a request and its response never cross tasks or
//! threads: no pool lock, no channel hand-off to another task, no cross-thread wake-up. (A shared
//! pool, hyper-util's, is still used for HTTP/2 clients, whose streams are concurrent.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::config::Backend;

type ConnFuture = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// Why a request could not be exchanged with the backend.
#[derive(Debug)]
pub enum Failure {
    /// No connection could be made (refused, unreachable, connect timeout).
    Connect(io::Error),
    /// The connection broke during the exchange.
    Exchange(Box<dyn std::error::Error + Send + Sync>),
}

/// The backend connection owned by one client connection.
#[derive(Default)]
pub struct LocalBackend {
    sender: Mutex<Option<http1::SendRequest<Incoming>>>,
    connection: Mutex<Option<ConnFuture>>,
    waker: AtomicWaker,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl LocalBackend {
    /// Sends `req` on this client connection's backend connection, (re)connecting when there is
    /// none. A request the closed connection never took (the backend closed it while idle) is
    /// retried once on a fresh connection; nothing else is retried.
    pub async fn send(
        &self,
        backend: &Backend,
        connect_timeout: Duration,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, Failure> {
        let mut retried = false;
        loop {
            let existing = lock(&self.sender).take().filter(|s| !s.is_closed());
            let mut sender = match existing {
                Some(s) => s,
                None => self.connect(backend, connect_timeout).await?,
            };
            if sender.ready().await.is_err() {
                // Closed between requests: try a fresh connection once.
                if retried {
                    return Err(Failure::Connect(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "backend closed",
                    )));
                }
                retried = true;
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    *lock(&self.sender) = Some(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !retried => {
                        debug!(error = %e.error(), "backend connection closed before the request was sent, reconnecting");
                        retried = true;
                        req = unsent;
                    }
                    _ => return Err(Failure::Exchange(e.into_error().into())),
                },
            }
        }
    }

    async fn connect(
        &self,
        backend: &Backend,
        timeout: Duration,
    ) -> Result<http1::SendRequest<Incoming>, Failure> {
        let stream = crate::tcp::connect(backend, timeout)
            .await
            .map_err(Failure::Connect)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Exchange(e.into()))?;
        // Replacing an old connection drops (closes) it.
        *lock(&self.connection) = Some(Box::pin(connection));
        self.waker.wake();
        Ok(sender)
    }

    /// Drives the backend connection; called by the client connection's task on every wake-up.
    /// Never ready: a finished connection is dropped and the next request opens a new one.
    pub fn poll_connection(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        let mut slot = lock(&self.connection);
        if let Some(connection) = slot.as_mut() {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                if let Err(error) = result {
                    debug!(%error, "backend connection ended");
                }
                *slot = None;
            }
        }
        Poll::Pending
    }
}
