//! Per-connection activity tracking, so idle and slow-head timeouts can be decided by a pure
//! function ([`Activity::verdict`]) instead of timers threaded through hyper.
//!
//! [`Tracked`] wraps a connection's I/O and stamps every read and write; the HTTP service marks
//! request start and end. A watchdog beside the connection asks for a verdict on each tick.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// "No time recorded".
const NONE: u64 = u64::MAX;

/// What the watchdog should do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Leave it alone.
    Active,
    /// Nothing happened for the idle timeout: close it gracefully.
    Idle,
    /// A request head was started but not finished in time: drop it.
    HeadTimeout,
}

/// Shared activity record of one connection. Times are milliseconds since `start`.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_io: AtomicU64,
    in_flight: AtomicUsize,
    idle_since: AtomicU64,
    awaiting_head: AtomicBool,
    head_started: AtomicU64,
    /// HTTP/1 only: the raw request head, scanned before hyper parses it.
    scan: Option<Mutex<HeadScan>>,
    /// The last scanned head had ambiguous framing; taken by the next request.
    ambiguous: AtomicBool,
    /// The scan is off while the HTTP/1.1 fast path reads the connection (it reads every head
    /// itself and hands ambiguous ones to hyper through [`Activity::scan_handed_over`]).
    scan_paused: AtomicBool,
    /// Requests the client cancelled before their response (HTTP/2 stream resets).
    resets: Mutex<ResetBudget>,
    /// Cancelled when the connection must end now (its reset budget is spent).
    abort: CancellationToken,
}

/// Cancelled requests a connection may make in a burst: browsers cancel a few streams when a
/// user navigates away, gRPC clients cancel on deadlines; a hundred in a row is an attack
/// (HTTP/2 rapid reset), each of which costs a backend exchange.
pub(crate) const RESET_BURST: u64 = 100;
/// Cancelled requests per second a connection may keep making after its burst.
pub(crate) const RESET_RATE: u64 = 10;

/// A token bucket of cancelled requests: [`RESET_BURST`] deep, refilled at [`RESET_RATE`] per
/// second. Times in milliseconds, tokens in thousandths.
#[derive(Debug)]
pub(crate) struct ResetBudget {
    tokens_milli: u64,
    last_ms: u64,
}

impl Default for ResetBudget {
    fn default() -> Self {
        Self {
            tokens_milli: RESET_BURST * 1000,
            last_ms: 0,
        }
    }
}

impl ResetBudget {
    /// Spends one token at `now_ms`; `false` when the budget is spent.
    pub(crate) fn spend(&mut self, now_ms: u64) -> bool {
        let refill = now_ms.saturating_sub(self.last_ms) * RESET_RATE;
        self.tokens_milli = (self.tokens_milli + refill).min(RESET_BURST * 1000);
        self.last_ms = now_ms.max(self.last_ms);
        if self.tokens_milli < 1000 {
            return false;
        }
        self.tokens_milli -= 1000;
        true
    }
}

/// Largest head the scanner keeps; hyper refuses larger ones with 431 anyway.
const SCAN_MAX: usize = 64 * 1024 + 4;

#[derive(Debug, Default)]
struct HeadScan {
    buf: Vec<u8>,
    done: bool,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::with_scan(None))
    }

    /// For HTTP/1 connections: also scans each request head for ambiguous framing (both
    /// `Content-Length` and `Transfer-Encoding`), which hyper would silently resolve; the proxy
    /// refuses such requests instead ([`Activity::take_ambiguous`]).
    pub(crate) fn new_http1() -> Arc<Self> {
        Arc::new(Self::with_scan(Some(Mutex::new(HeadScan::default()))))
    }

    fn with_scan(scan: Option<Mutex<HeadScan>>) -> Self {
        Self {
            start: Instant::now(),
            last_io: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            awaiting_head: AtomicBool::new(true),
            head_started: AtomicU64::new(NONE),
            scan,
            ambiguous: AtomicBool::new(false),
            scan_paused: AtomicBool::new(false),
            resets: Mutex::new(ResetBudget::default()),
            abort: CancellationToken::new(),
        }
    }

    /// A request was cancelled by the client before its response: spends the reset budget and,
    /// when it is spent, asks the connection to end ([`Activity::aborted`]).
    pub(crate) fn request_cancelled(&self) {
        let now = self.now_ms();
        let ok = match self.resets.lock() {
            Ok(mut b) => b.spend(now),
            Err(p) => p.into_inner().spend(now),
        };
        if !ok {
            self.abort.cancel();
        }
    }

    /// Completes when the connection must end at once.
    pub(crate) fn aborted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.abort.cancelled()
    }

    /// Whether the request just started had ambiguous framing (clears the mark).
    pub(crate) fn take_ambiguous(&self) -> bool {
        self.ambiguous.swap(false, Ordering::Relaxed)
    }

    /// Turns the head scan off: the HTTP/1.1 fast path reads the heads.
    pub(crate) fn pause_scan(&self) {
        self.scan_paused.store(true, Ordering::Relaxed);
    }

    /// The fast path hands the connection to hyper with `buf` read but not consumed: the scan
    /// judges the head at its start as it would have while reading it, and goes on from there.
    pub(crate) fn scan_handed_over(&self, buf: &[u8]) {
        let Some(scan) = &self.scan else { return };
        let mut scan = match scan.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        scan.buf.clear();
        scan.done = false;
        drop(scan);
        self.scan_paused.store(false, Ordering::Relaxed);
        self.scan_head(buf);
    }

    fn scan_head(&self, bytes: &[u8]) {
        let Some(scan) = &self.scan else { return };
        if self.scan_paused.load(Ordering::Relaxed) {
            return;
        }
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return;
        }
        let mut scan = match scan.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if scan.done {
            return;
        }
        let room = SCAN_MAX.saturating_sub(scan.buf.len());
        scan.buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        if let Some(end) = head_end(&scan.buf) {
            if starts_like_request(&scan.buf) && ambiguous_framing(&scan.buf[..end]) {
                self.ambiguous.store(true, Ordering::Relaxed);
            }
            scan.done = true;
        } else if scan.buf.len() >= SCAN_MAX || !starts_like_request(&scan.buf) {
            scan.done = true;
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn on_read(&self, bytes: &[u8]) {
        self.scan_head(bytes);
        let now = self.now_ms();
        self.last_io.store(now, Ordering::Relaxed);
        if self.awaiting_head.swap(false, Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(now, Ordering::Relaxed);
        }
    }

    fn on_write(&self) {
        self.last_io.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request head was parsed and handed to the service.
    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(NONE, Ordering::Relaxed);
    }

    /// A response finished (or was abandoned).
    pub(crate) fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since.store(self.now_ms(), Ordering::Relaxed);
            self.head_started.store(NONE, Ordering::Relaxed);
            self.awaiting_head.store(true, Ordering::Relaxed);
            if let Some(scan) = &self.scan {
                let mut scan = match scan.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                scan.buf.clear();
                scan.done = false;
            }
        }
    }

    /// Since when the connection has had no request in flight (and, for HTTP/1, no request
    /// head arriving); `None` while it is busy. Decides which connection makes room when every
    /// slot is taken.
    pub(crate) fn quiet_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) > 0
            || (self.scan.is_some() && self.head_started.load(Ordering::Relaxed) != NONE)
        {
            return None;
        }
        Some(self.start + Duration::from_millis(self.idle_since.load(Ordering::Relaxed)))
    }

    /// When a byte last moved either way (the start, before any did).
    pub(crate) fn last_io(&self) -> Instant {
        self.start + Duration::from_millis(self.last_io.load(Ordering::Relaxed))
    }

    /// Whether a request is in flight.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Request-based verdict (HTTP): idle means no request in flight for `idle`; a head counts
    /// from its first byte and must complete within `head` (`None` for HTTP/2, which has no
    /// request head in that sense).
    pub(crate) fn verdict(&self, idle: Duration, head: Option<Duration>) -> Verdict {
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
    pub(crate) fn io_verdict(&self, idle: Duration) -> Verdict {
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
pub(crate) fn tick_period(shortest: Duration) -> Duration {
    (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

/// I/O wrapper that records activity on every successful read and write.
#[derive(Debug)]
pub(crate) struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Tracked<T> {
    pub(crate) fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read(&buf.filled()[before..]);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
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

/// Where a request head ends (index of its blank line), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Whether `buf` begins like a request line (`TOKEN SP`): bytes read after a pipelined request
/// may be the middle of a body, which must not be mistaken for a head.
fn starts_like_request(buf: &[u8]) -> bool {
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match buf.get(method_len) {
        Some(b' ') => method_len > 0,
        None => true, // not enough bytes yet
        Some(_) => false,
    }
}

/// Whether a request head carries both `Content-Length` and `Transfer-Encoding` (RFC 9112
/// section 6.3: a request smuggling vector when two parsers disagree on which wins).
pub(crate) fn ambiguous_framing(head: &[u8]) -> bool {
    let (mut cl, mut te) = (false, false);
    for line in head.split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        cl |= name.eq_ignore_ascii_case(b"content-length");
        te |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    cl && te
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
        a.on_read(b"G");
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
        a.on_read(b"GET / HTTP/1.1\r\n\r\n");
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
    async fn last_io_is_the_last_byte_either_way() {
        let a = Activity::new_http1();
        let t0 = Instant::now();
        assert_eq!(a.last_io(), t0);
        tokio::time::advance(Duration::from_secs(2)).await;
        a.on_read(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(a.last_io(), t0 + Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(3)).await;
        a.on_write();
        assert_eq!(a.last_io(), t0 + Duration::from_secs(5));
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
    fn framing_with_both_lengths_is_ambiguous() {
        assert!(ambiguous_framing(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked"
        ));
        assert!(ambiguous_framing(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4"
        ));
        assert!(!ambiguous_framing(b"POST / HTTP/1.1\r\nContent-Length: 4"));
        assert!(!ambiguous_framing(
            b"POST /content-length: HTTP/1.1\r\nTransfer-Encoding: chunked"
        ));
    }

    #[test]
    fn scanner_marks_an_ambiguous_head_split_over_reads_and_resets_per_request() {
        let a = Activity::new_http1();
        a.on_read(b"POST / HTTP/1.1\r\nContent-Le");
        a.on_read(b"ngth: 4\r\nTransfer-Encoding: chunked\r\n\r\n");
        a.request_started();
        assert!(a.take_ambiguous());
        assert!(!a.take_ambiguous());
        // Body bytes while the request is in flight are not heads.
        a.on_read(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n");
        a.request_finished();
        a.on_read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        a.request_started();
        assert!(!a.take_ambiguous());
        a.request_finished();
        // Mid-body bytes after a pipelined request are ignored.
        a.on_read(b"tail of a body\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n");
        a.request_started();
        assert!(!a.take_ambiguous());
    }

    #[test]
    fn reset_budget_allows_a_burst_then_a_rate() {
        let mut b = ResetBudget::default();
        for i in 0..RESET_BURST {
            assert!(b.spend(0), "cancel {i} of the burst");
        }
        assert!(!b.spend(0), "the burst is spent");
        assert!(!b.spend(50), "half a token is not a token");
        assert!(b.spend(100), "one token back after 1/RESET_RATE s");
        assert!(!b.spend(100));
        // A long quiet spell refills the whole burst and no more.
        assert!(b.spend(3_600_000));
        for _ in 1..RESET_BURST {
            assert!(b.spend(3_600_000));
        }
        assert!(!b.spend(3_600_000));
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_since_is_none_while_busy_and_dates_from_the_last_response() {
        let a = Activity::new_http1();
        let t0 = Instant::now();
        assert_eq!(a.quiet_since(), Some(t0));
        a.on_read(b"GET / HT");
        assert_eq!(a.quiet_since(), None, "a head is arriving");
        a.on_read(b"TP/1.1\r\n\r\n");
        a.request_started();
        assert_eq!(a.quiet_since(), None);
        tokio::time::advance(Duration::from_secs(3)).await;
        a.request_finished();
        assert_eq!(a.quiet_since(), Some(t0 + Duration::from_secs(3)));
        // HTTP/2 bytes (PING, SETTINGS) never make a connection busy.
        let h2 = Activity::new();
        let t1 = Instant::now();
        h2.on_read(b"\0\0\x08\x06");
        assert_eq!(h2.quiet_since(), Some(t1));
    }

    #[tokio::test(start_paused = true)]
    async fn spending_the_reset_budget_aborts_the_connection() {
        let a = Activity::new();
        for _ in 0..RESET_BURST {
            a.request_cancelled();
        }
        assert!(!a.abort.is_cancelled());
        a.request_cancelled();
        assert!(a.abort.is_cancelled());
    }

    #[test]
    fn tick_period_is_bounded() {
        assert_eq!(tick_period(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(
            tick_period(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        assert_eq!(
            tick_period(Duration::from_millis(1)),
            Duration::from_millis(20)
        );
    }
}
