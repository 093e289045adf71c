//! Per-connection activity tracking, so idle and slow-head timeouts can be decided by a pure
//! function ([`Activity::verdict`]) instead of timers threaded through hyper.
//!
//! [`Tracked`] wraps a connection's I/O and stamps every read and write; the HTTP service marks
//! request start and end. A watchdog beside the connection asks for a verdict on each tick.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// "No time recorded".
const NONE: u64 = u64::MAX;

/// What the watchdog should do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Leave it alone.
    Active,
    /// Nothing happened for the idle timeout: close it gracefully.
    Idle,
    /// A request head was started but not finished in time: drop it.
    HeadTimeout,
}

/// Shared activity record of one connection. Times are milliseconds since `start`.
#[derive(Debug)]
pub struct Activity {
    start: Instant,
    last_io: AtomicU64,
    in_flight: AtomicUsize,
    idle_since: AtomicU64,
    awaiting_head: AtomicBool,
    head_started: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_io: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            awaiting_head: AtomicBool::new(true),
            head_started: AtomicU64::new(NONE),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        if self.awaiting_head.swap(false, Ordering::Relaxed) && self.in_flight.load(Ordering::Relaxed) == 0 {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request head was parsed and handed to the service.
    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Relaxed);
    }

    /// A response finished (or was abandoned).
    pub fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Relaxed);
            self.head_started.store(NONE, Ordering::Relaxed);
            self.awaiting_head.store(true, Ordering::Relaxed);
        }
    }

    /// Request-based verdict (HTTP): idle means no request in flight for `idle`; a head counts
    /// from its first byte and must complete within `head` (`None` for HTTP/2, which has no
    /// request head in that sense).
    pub fn verdict(&self, idle: Duration, head: Option<Duration>) -> Verdict {
        let now = self.now_ms();
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Verdict::Active;
        }
        let started = self.head_started.load(Ordering::Relaxed);
        if let Some(head) = head {
            if started != NONE {
                return if now.saturating_sub(started) >= head.as_millis() as u64 {
                    Verdict::HeadTimeout
                } else {
                    Verdict::Active
                };
            }
        }
        let since = self.idle_since.load(Ordering::Relaxed);
        if now.saturating_sub(since) >= idle.as_millis() as u64 {
            Verdict::Idle
        } else {
            Verdict::Active
        }
    }

    /// Byte-based verdict (TCP relays, upgraded connections): idle means no byte moved either
    /// way for `idle`.
    pub fn io_verdict(&self, idle: Duration) -> Verdict {
        let last = self.last_io.load(Ordering::Relaxed);
        if self.now_ms().saturating_sub(last) >= idle.as_millis() as u64 {
            Verdict::Idle
        } else {
            Verdict::Active
        }
    }
}

/// How often a watchdog looks: often enough to honour short timeouts within a quarter of their
/// length, rarely enough (at most once a second) to cost nothing with thousands of connections.
pub fn tick_period(shortest: Duration) -> Duration {
    (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// I/O wrapper that records activity on every successful read and write.
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        res
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
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const HEAD: Option<Duration> = Some(Duration::from_secs(10));

    #[tokio::test(start_paused = true)]
    async fn fresh_connection_becomes_idle_after_the_idle_timeout() {
        let a = Activity::new();
        assert_eq!(a.verdict(IDLE, HEAD), Verdict::Active);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(a.verdict(IDLE, HEAD), Verdict::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_must_finish_within_the_head_timeout() {
        let a = Activity::new();
        a.on_read();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(a.verdict(IDLE, HEAD), Verdict::Active);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(a.verdict(IDLE, HEAD), Verdict::HeadTimeout);
        // HTTP/2 has no head timeout: only idleness counts.
        assert_eq!(a.verdict(IDLE, None), Verdict::Active);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_in_flight_are_never_idle_and_idleness_restarts_after_them() {
        let a = Activity::new();
        a.on_read();
        a.request_started();
        tokio::time::advance(Duration::from_secs(120)).await;
        assert_eq!(a.verdict(IDLE, HEAD), Verdict::Active);
        a.request_finished();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(a.verdict(IDLE, HEAD), Verdict::Active);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(a.verdict(IDLE, HEAD), Verdict::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn io_verdict_counts_bytes_either_way() {
        let a = Activity::new();
        tokio::time::advance(Duration::from_secs(30)).await;
        a.on_write();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(a.io_verdict(IDLE), Verdict::Active);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(a.io_verdict(IDLE), Verdict::Idle);
    }

    #[test]
    fn tick_period_is_bounded() {
        assert_eq!(tick_period(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(tick_period(Duration::from_millis(200)), Duration::from_millis(50));
        assert_eq!(tick_period(Duration::from_millis(1)), Duration::from_millis(20));
    }
}
