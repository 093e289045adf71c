//! The fast path's idle backend connections, one pool per serving thread: a reused connection
//! saves the backend a connect (and the request a round trip), and a pool per thread keeps a
//! connection on the thread that serves its requests, with no lock shared between threads.

use std::sync::Mutex;
use std::task::Context;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::POOL_IDLE_TIMEOUT;

/// An idle backend connection of the fast path, with its read buffer.
struct Idle {
    stream: TcpStream,
    buf: BytesMut,
    since: Instant,
}

/// The fast path's idle backend connections: most recently used last, taken from the end (a
/// warm one), the oldest dropped first. A plain lock held for a push or a pop: no task, no
/// channel per request.
pub(crate) struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
}

impl Pool {
    pub(crate) fn new(max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    pub(super) fn take(&self) -> Option<(TcpStream, BytesMut)> {
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

    pub(super) fn put(&self, stream: TcpStream, mut buf: BytesMut) {
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
