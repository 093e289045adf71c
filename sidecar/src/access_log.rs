//! The access log: one line per HTTP request, formatted and written off the request path.
//!
//! A request hands an unformatted `Record` to a bounded `Queue`; one writer thread formats
//! what has queued up into one buffer and writes it to stderr with one `write_all`. Formatting
//! and writing each line through the `tracing` subscriber on the request's own thread cost about
//! 15% of HTTP/1.1 keep-alive throughput; handing over a record costs a lock and a push.
//!
//! The lines are byte for byte what the subscriber of [`shared::telemetry`] writes for the
//! `request` event of target `sidecar::http` (text, with or without colours, or JSON), and
//! `RUST_LOG` decides as before whether they are written: `enabled` asks the subscriber. The
//! queue is used only where the subscriber would write the event without a span: an event
//! inside an enabled span (HTTP/1.1 requests at debug level, within `conn{peer=..}`) and every
//! event of a process that did not [`start`] the writer (the library in tests) go through
//! `tracing` on the caller's thread as they always did.
//!
//! When the writer falls behind by `CAPACITY` lines (stderr blocked by a slow log collector),
//! a request never waits: its line is dropped and counted (`sidecar_access_log_dropped_total`),
//! and the writer says at warn, at most once per [`LOG_INTERVAL`], how many it dropped.
//!
//! The writer is one per process, like stderr and the global subscriber it stands in for:
//! `main` starts it beside the subscriber and flushes it ([`flush`]) before the process exits,
//! and `/metrics` reports its drops; the HTTP service only hands it records.

use std::fmt::{self, Write as _};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shared::telemetry::LogFormat;
use tracing::{info, warn, Level};

use crate::throttle::{Escaped, LOG_INTERVAL};

/// The target of the access-log event, what `RUST_LOG` directives name (`sidecar::http=warn`).
/// It is the module the event was logged from before it had a writer of its own.
pub(crate) const TARGET: &str = "sidecar::http";

/// Lines queued at most before new ones are dropped. The writer drains the queue every
/// [`LINGER`], so this is room for ~800k lines a second, far above what the sidecar serves;
/// it fills only when stderr itself stops taking lines, and then holds ~1.2 MiB of records
/// (152 bytes each, plus the request paths they share), a bounded cost for riding out a stall
/// of a log collector.
pub(crate) const CAPACITY: usize = 8192;

/// How long the writer waits after writing a batch before it takes the next one. Requests do
/// not wake a writer that is lingering, so under load the writer wakes at most this often and
/// writes what came meanwhile in one go, instead of one wake-up and one `write` per request;
/// a line reaches stderr at most this much later (its timestamp is the request's own).
const LINGER: Duration = Duration::from_millis(10);

/// How long [`flush`] waits for the last lines at exit: long enough for a healthy writer to
/// write a full queue, bounded so a blocked stderr cannot keep a stopping sidecar alive.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Formatted bytes the writer gathers before a `write_all`, so a full queue does not make one
/// multi-MiB buffer.
const WRITE_CHUNK: usize = 64 * 1024;

/// Longest request path written to the access log; the rest is cut (`...`): a client must not
/// make one line cost more than a few KiB.
pub(crate) const PATH_MAX: usize = 2048;

/// One finished request, as the access log writes it.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub peer: SocketAddr,
    pub method: http::Method,
    /// `None` is written as `/`.
    pub path: Option<http::uri::PathAndQuery>,
    /// The request's protocol: `http/1.1`, `h2` or `h3`.
    pub proto: &'static str,
    pub status: u16,
    pub grpc_status: Option<u32>,
    /// Response body bytes sent.
    pub bytes: u64,
    pub duration: Duration,
    /// When the request ended: the line's timestamp.
    pub at: SystemTime,
}

impl Record {
    fn path(&self) -> Escaped<'_> {
        Escaped {
            bytes: self.path.as_ref().map_or("/", |p| p.as_str()).as_bytes(),
            max: PATH_MAX,
        }
    }

    fn duration_ms(&self) -> u64 {
        self.duration.as_millis() as u64
    }
}

/// Whether the access log is written at all, as `RUST_LOG` says. Cheap: a level comparison,
/// then the callsite's cached interest.
pub(crate) fn enabled() -> bool {
    tracing::enabled!(target: TARGET, Level::INFO)
}

/// Writes the line of a finished request: through the background writer when it is running and
/// the line would carry no span, otherwise through `tracing` here and now. Call it only when
/// [`enabled`].
pub(crate) fn write(record: Record) {
    if let Some(queue) = WRITER.get() {
        if !in_span() {
            queue.push(record);
            return;
        }
    }
    emit(&record);
}

/// The access-log event as the subscriber gets it.
fn emit(r: &Record) {
    info!(
        target: TARGET,
        client = %r.peer,
        method = %r.method,
        path = %r.path(),
        status = r.status,
        grpc_status = r.grpc_status,
        bytes = r.bytes,
        duration_ms = r.duration_ms(),
        proto = %r.proto,
        "request"
    );
}

/// Whether an event here would be written with a span (its prefix in text, `span` and `spans`
/// in JSON), which a line formatted elsewhere cannot reproduce.
fn in_span() -> bool {
    tracing::dispatcher::get_default(|d| d.current_span().id().is_some())
}

static WRITER: OnceLock<Arc<Queue>> = OnceLock::new();

/// Starts the process's access-log writer, for lines in `format` on stderr. Does nothing when
/// `RUST_LOG` leaves the access log off, or when it is running already.
pub fn start(format: LogFormat) {
    if !enabled() || WRITER.get().is_some() {
        return;
    }
    let style = match format {
        LogFormat::Text => Style::Text {
            ansi: shared::telemetry::ansi(),
        },
        LogFormat::Json => Style::Json,
    };
    match Queue::start(CAPACITY, style, std::io::stderr()) {
        Ok(queue) => {
            let _ = WRITER.set(queue);
        }
        Err(error) => {
            warn!(%error, "could not start the access-log writer, writing lines in place");
        }
    }
}

/// Writes what is queued and stops the writer, waiting at most `timeout`; `false` when lines
/// may be lost (stderr stayed blocked). Lines of requests that end after this are dropped.
pub fn flush(timeout: Duration) -> bool {
    WRITER.get().is_none_or(|q| q.close(timeout))
}

/// Lines the process's writer dropped so far, for `sidecar_access_log_dropped_total`.
pub(crate) fn dropped_total() -> u64 {
    WRITER.get().map_or(0, |q| q.dropped_total())
}

/// How lines are formatted: the two shapes of [`shared::telemetry`]'s subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// tracing-subscriber's default (`Full`) format, coloured when `ansi`.
    Text { ansi: bool },
    /// tracing-subscriber's JSON format with `flatten_event(true)`.
    Json,
}

/// The bounded queue between requests and the writer.
///
/// A `Mutex<Vec>` with a condition variable rather than std's `sync_channel` or tokio's mpsc:
/// the writer takes everything queued in one swap of the vector instead of one receive per
/// record (the lock is held for a push or a swap, never while formatting); a request wakes the
/// writer only when it sleeps waiting for work (a futex call, rarely: see [`LINGER`]); and the
/// close at exit waits, with a timeout, on a condition the writer sets when it is done, which a
/// channel cannot tell. The writer is a dedicated thread, not a task: it blocks on stderr
/// without holding one of the runtime's workers, and never waits for a worker to run it.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// The writer waits here for records, or for the close.
    work: Condvar,
    /// [`Queue::close`] waits here for the writer to finish.
    finished: Condvar,
    capacity: usize,
    dropped_total: AtomicU64,
    /// Dropped since the writer last said so.
    dropped_unreported: AtomicU64,
}

#[derive(Default)]
struct State {
    records: Vec<Record>,
    /// The writer is asleep until a record comes: the next push wakes it.
    writer_waiting: bool,
    closing: bool,
    finished: bool,
}

impl Queue {
    /// A queue of at most `capacity` records and its writer thread, writing into `sink`.
    pub(crate) fn start<W: Write + Send + 'static>(
        capacity: usize,
        style: Style,
        sink: W,
    ) -> std::io::Result<Arc<Queue>> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            finished: Condvar::new(),
            capacity,
            dropped_total: AtomicU64::new(0),
            dropped_unreported: AtomicU64::new(0),
        });
        let writer = queue.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(style, sink))?;
        Ok(queue)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a record for the writer; never waits for it. `false` when the record was dropped
    /// (and counted): the queue is full, or closed.
    pub(crate) fn push(&self, record: Record) -> bool {
        let mut state = self.lock();
        if state.records.len() >= self.capacity || state.closing {
            drop(state);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            self.dropped_unreported.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        state.records.push(record);
        let wake = std::mem::take(&mut state.writer_waiting);
        drop(state);
        if wake {
            self.work.notify_one();
        }
        true
    }

    /// Records dropped so far.
    pub(crate) fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Refuses new records, lets the writer write the queued ones and waits at most `timeout`
    /// for it to finish; `true` when it did.
    pub(crate) fn close(&self, timeout: Duration) -> bool {
        let mut state = self.lock();
        state.closing = true;
        self.work.notify_one();
        let (state, _) = self
            .finished
            .wait_timeout_while(state, timeout, |s| !s.finished)
            .unwrap_or_else(PoisonError::into_inner);
        state.finished
    }

    /// The writer thread: takes all queued records, writes them, lingers, again; until closed
    /// and empty.
    fn run<W: Write>(&self, style: Style, mut sink: W) {
        let mut batch = Vec::new();
        let mut buf = String::with_capacity(WRITE_CHUNK);
        let mut lines = LineFormat::new(style);
        let mut last_report: Option<Instant> = None;
        loop {
            let closing = {
                let mut state = self.lock();
                while state.records.is_empty() && !state.closing {
                    state.writer_waiting = true;
                    state = self
                        .work
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                state.writer_waiting = false;
                std::mem::swap(&mut state.records, &mut batch);
                state.closing
            };
            for record in batch.drain(..) {
                lines.line(&record, &mut buf);
                if buf.len() >= WRITE_CHUNK {
                    // As the subscriber does: a log line that cannot be written is lost.
                    let _ = sink.write_all(buf.as_bytes());
                    buf.clear();
                }
            }
            if !buf.is_empty() {
                let _ = sink.write_all(buf.as_bytes());
                buf.clear();
            }
            let _ = sink.flush();
            // Give back what a burst grew, as the sidecar does with idle memory.
            if batch.capacity() > self.capacity.min(1024) {
                batch = Vec::new();
            }
            if buf.capacity() > 2 * WRITE_CHUNK {
                buf = String::with_capacity(WRITE_CHUNK);
            }
            let due = last_report.is_none_or(|t| t.elapsed() >= LOG_INTERVAL);
            if (due || closing) && self.dropped_unreported.load(Ordering::Relaxed) > 0 {
                let dropped = self.dropped_unreported.swap(0, Ordering::Relaxed);
                warn!(
                    dropped,
                    capacity = self.capacity,
                    "access log lines dropped, the writer fell behind"
                );
                last_report = Some(Instant::now());
            }
            if closing {
                // Nothing came after the swap: pushes are refused once closing.
                self.lock().finished = true;
                self.finished.notify_all();
                return;
            }
            let state = self.lock();
            let _ = self
                .work
                .wait_timeout_while(state, LINGER, |s| !s.closing)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

// ---- formatting: tracing-subscriber's output for the `request` event ----

/// Formats access-log lines in one [`Style`]. Built for the writer's loop: constant pieces are
/// pushed as they are, numbers written by hand and the date and time of day kept from the last
/// line until the second changes, so a line costs a small fraction of `core::fmt` per field
/// (the writer has a core's worth of competition on a busy two-core host).
pub(crate) struct LineFormat {
    style: Style,
    /// The second of `date_time`, in seconds since the epoch.
    second: Option<i64>,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    date_time: String,
}

impl LineFormat {
    pub(crate) fn new(style: Style) -> Self {
        Self {
            style,
            second: None,
            date_time: String::new(),
        }
    }

    /// Appends the line of `r` to `out`, newline included.
    pub(crate) fn line(&mut self, r: &Record, out: &mut String) {
        match self.style {
            Style::Text { ansi } => self.text(ansi, r, out),
            Style::Json => self.json(r, out),
        }
    }

    /// `Full` format: `{timestamp}  INFO {target}: request {name}={value} ...`; with colours,
    /// the timestamp, target and `=` dimmed, the level green and field names italic.
    fn text(&mut self, ansi: bool, r: &Record, out: &mut String) {
        const DIM: &str = "\x1b[2m";
        const RESET: &str = "\x1b[0m";
        if ansi {
            out.push_str(DIM);
            self.timestamp(r.at, out);
            out.push_str(RESET);
            out.push_str(" \x1b[32m INFO\x1b[0m \x1b[2m");
            out.push_str(TARGET);
            out.push_str("\x1b[0m\x1b[2m:\x1b[0m request");
        } else {
            self.timestamp(r.at, out);
            out.push_str("  INFO ");
            out.push_str(TARGET);
            out.push_str(": request");
        }
        let name = |out: &mut String, name: &str| {
            if ansi {
                out.push_str(" \x1b[3m");
                out.push_str(name);
                out.push_str("\x1b[0m\x1b[2m=\x1b[0m");
            } else {
                out.push(' ');
                out.push_str(name);
                out.push('=');
            }
        };
        name(out, "client");
        push_addr(out, r.peer);
        name(out, "method");
        out.push_str(r.method.as_str());
        name(out, "path");
        // Writing into a String cannot fail.
        let _ = write!(out, "{}", r.path());
        name(out, "status");
        push_u64(out, u64::from(r.status));
        if let Some(code) = r.grpc_status {
            name(out, "grpc_status");
            push_u64(out, u64::from(code));
        }
        name(out, "bytes");
        push_u64(out, r.bytes);
        name(out, "duration_ms");
        push_u64(out, r.duration_ms());
        name(out, "proto");
        out.push_str(r.proto);
        out.push('\n');
    }

    /// JSON with flattened fields: timestamp, level, the event's fields in order, target. No
    /// `span` keys: lines with a span are not written here (see [`write`]).
    fn json(&mut self, r: &Record, out: &mut String) {
        out.push_str("{\"timestamp\":\"");
        self.timestamp(r.at, out);
        out.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"client\":\"");
        let mut addr = String::new();
        push_addr(&mut addr, r.peer);
        push_json_str(out, &addr);
        out.push_str("\",\"method\":\"");
        push_json_str(out, r.method.as_str());
        out.push_str("\",\"path\":\"");
        let _ = write!(JsonString(out), "{}", r.path());
        out.push_str("\",\"status\":");
        push_u64(out, u64::from(r.status));
        if let Some(code) = r.grpc_status {
            out.push_str(",\"grpc_status\":");
            push_u64(out, u64::from(code));
        }
        out.push_str(",\"bytes\":");
        push_u64(out, r.bytes);
        out.push_str(",\"duration_ms\":");
        push_u64(out, r.duration_ms());
        out.push_str(",\"proto\":\"");
        out.push_str(r.proto);
        out.push_str("\",\"target\":\"");
        out.push_str(TARGET);
        out.push_str("\"}\n");
    }

    /// As [`Timestamp`] displays it.
    fn timestamp(&mut self, at: SystemTime, out: &mut String) {
        let (secs, nanos) = since_epoch(at);
        if self.second != Some(secs) {
            self.date_time.clear();
            let _ = write!(self.date_time, "{}", DateTime(secs));
            self.second = Some(secs);
        }
        out.push_str(&self.date_time);
        out.push('.');
        let micros = nanos / 1_000;
        let mut div = 100_000;
        while div > 0 {
            out.push(char::from(b'0' + (micros / div % 10) as u8));
            div /= 10;
        }
        out.push('Z');
    }
}

/// `n` in decimal, as `Display` writes it, in `digits` (the returned tail of it): numbers in
/// hot output without the formatting machinery (here and in the HTTP/1.1 fast path's heads).
pub(crate) fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &digits[at..]
}

/// `n` in decimal, as `Display` writes it.
fn push_u64(out: &mut String, n: u64) {
    out.push_str(std::str::from_utf8(decimal(n, &mut [0; 20])).unwrap_or_default());
}

/// `addr` as `Display` writes it: IPv4 by hand, the rarer IPv6 through `Display`.
fn push_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(octet));
            }
            out.push(':');
            push_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// `s` inside a JSON string literal, escaped as serde_json escapes: runs that need no escape
/// are copied whole.
fn push_json_str(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(at) = rest.find(|c: char| c == '"' || c == '\\' || c < '\x20') {
        out.push_str(&rest[..at]);
        let c = rest.as_bytes()[at];
        match c {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            c => {
                let _ = write!(out, "\\u{c:04x}");
            }
        }
        rest = &rest[at + 1..];
    }
    out.push_str(rest);
}

/// Writes into a JSON string literal ([`push_json_str`]).
struct JsonString<'a>(&'a mut String);

impl fmt::Write for JsonString<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        push_json_str(self.0, s);
        Ok(())
    }
}

/// Seconds since the epoch (negative before it) and the nanoseconds past that second.
fn since_epoch(at: SystemTime) -> (i64, u32) {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-(d.as_secs() as i64), 0),
                n => (-(d.as_secs() as i64) - 1, 1_000_000_000 - n),
            }
        }
    }
}

/// tracing-subscriber's `SystemTime` timestamp: RFC 3339 in UTC with microseconds,
/// `2026-01-02T03:04:05.123456Z`; written plainly, for the tests of [`LineFormat::timestamp`].
#[cfg(test)]
struct Timestamp(SystemTime);

#[cfg(test)]
impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, nanos) = since_epoch(self.0);
        write!(f, "{}.{:06}Z", DateTime(secs), nanos / 1_000)
    }
}

/// `YYYY-MM-DDTHH:MM:SS` in UTC of a second since the epoch, years past 9999 with a `+` and
/// before year 0 with a `-`, as tracing-subscriber writes them.
struct DateTime(i64);

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(self.0.div_euclid(86_400));
        let time = self.0.rem_euclid(86_400);
        if year > 9999 {
            write!(f, "+{year}")?;
        } else if year < 0 {
            write!(f, "{year:05}")?;
        } else {
            write!(f, "{year:04}")?;
        }
        write!(
            f,
            "-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            time / 3600,
            time / 60 % 60,
            time % 60
        )
    }
}

/// (year, month, day) of a day counted from 1970-01-01, in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use tracing_subscriber::EnvFilter;

    fn record(method: &str, peer: &str, path: Option<&str>, grpc_status: Option<u32>) -> Record {
        Record {
            peer: peer.parse().expect("peer"),
            method: method.parse().expect("method"),
            path: path.map(|p| p.parse().expect("path")),
            proto: "h2",
            status: 200,
            grpc_status,
            bytes: 1234,
            duration: Duration::from_micros(1_500_700),
            at: SystemTime::now(),
        }
    }

    /// Quotes, backslashes, non-ASCII and control characters: what a client can put in a path
    /// that hyper accepts.
    const HOSTILE_PATH: &str = "/a\"b\\c{}/\u{e9}\u{9b}?q=\\{}";

    fn samples() -> Vec<Record> {
        let long = format!("/{}?q=1", "a".repeat(PATH_MAX + 10));
        vec![
            record("GET", "127.0.0.1:40000", Some("/small"), None),
            record("POST", "[::1]:5000", Some("/test.Echo/Unary"), Some(14)),
            record("PURGE", "10.1.2.3:1", Some(HOSTILE_PATH), None),
            record("GET", "127.0.0.1:2", Some(&long), Some(0)),
            record("OPTIONS", "127.0.0.1:3", None, None),
        ]
    }

    /// What the process's subscriber ([`shared::telemetry::dispatch`], as `main` installs it)
    /// writes for the access-log event of `r`, and the time just before and after.
    fn subscriber_line(format: LogFormat, ansi: bool, r: &Record) -> (String, String, String) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let dispatch =
            shared::telemetry::dispatch(format, EnvFilter::new("info"), ansi, move || {
                Capture(sink.clone())
            });
        let before = Timestamp(SystemTime::now()).to_string();
        tracing::dispatcher::with_default(&dispatch, || emit(r));
        let after = Timestamp(SystemTime::now()).to_string();
        let bytes = out.lock().expect("capture").clone();
        (String::from_utf8(bytes).expect("utf-8"), before, after)
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The formatter's line equals the subscriber's, byte for byte but the timestamp, which must
    /// lie between the times taken around the subscriber's event (fixed-width, so they compare
    /// as strings).
    fn assert_same_line(style: Style, r: &Record) {
        let (format, ansi) = match style {
            Style::Text { ansi } => (LogFormat::Text, ansi),
            Style::Json => (LogFormat::Json, false),
        };
        let (theirs, before, after) = subscriber_line(format, ansi, r);
        let mut ours = String::new();
        LineFormat::new(style).line(r, &mut ours);
        let ts = Timestamp(r.at).to_string();
        let at = ours.find(&ts).expect("our timestamp");
        let their_ts = theirs.get(at..at + ts.len()).unwrap_or_default();
        assert!(
            before.as_str() <= their_ts && their_ts <= after.as_str(),
            "their timestamp {their_ts:?} at the same place, in {theirs:?}"
        );
        let theirs = format!("{}{ts}{}", &theirs[..at], &theirs[at + ts.len()..]);
        assert_eq!(ours, theirs, "{style:?}");
    }

    #[test]
    fn text_lines_are_the_subscribers() {
        for r in samples() {
            assert_same_line(Style::Text { ansi: false }, &r);
            assert_same_line(Style::Text { ansi: true }, &r);
        }
        let mut line = String::new();
        LineFormat::new(Style::Text { ansi: false }).line(&samples()[2], &mut line);
        assert!(
            line.contains(
                " path=/a\\\"b\\\\c{}/\\xc3\\xa9\\xc2\\x9b?q=\\\\{} status=200 bytes=1234 duration_ms=1500 proto=h2\n"
            ),
            "path escaped as before: {line}"
        );
    }

    #[test]
    fn json_lines_are_the_subscribers_and_parse() {
        for r in samples() {
            assert_same_line(Style::Json, &r);
            let mut line = String::new();
            LineFormat::new(Style::Json).line(&r, &mut line);
            assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
            let value: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            let mut keys: Vec<&str> = value
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            let mut expected = vec![
                "bytes",
                "client",
                "duration_ms",
                "level",
                "message",
                "method",
                "path",
                "proto",
                "status",
                "target",
                "timestamp",
            ];
            if r.grpc_status.is_some() {
                expected.push("grpc_status");
            }
            expected.sort_unstable();
            assert_eq!(keys, expected, "{line}");
            assert_eq!(value["message"], "request");
            assert_eq!(value["target"], TARGET);
            assert_eq!(value["status"], 200);
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at =
            |secs: u64, nanos: u32| Timestamp(UNIX_EPOCH + Duration::new(secs, nanos)).to_string();
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 123_456_789), "2000-02-29T00:00:00.123456Z");
        assert_eq!(
            at(1_798_761_599, 999_999_999),
            "2026-12-31T23:59:59.999999Z"
        );
        assert_eq!(at(253_402_300_799, 0), "9999-12-31T23:59:59.000000Z");
        let before = Timestamp(UNIX_EPOCH - Duration::from_millis(1_500)).to_string();
        assert_eq!(before, "1969-12-31T23:59:58.500000Z");
    }

    #[test]
    fn cached_date_follows_the_second() {
        let mut lines = LineFormat::new(Style::Json);
        let base = UNIX_EPOCH + Duration::from_secs(1_798_761_598);
        for offset_ms in [0, 999, 1_000, 1_001, 2_500, 1_000, 86_400_000] {
            let at = base + Duration::from_millis(offset_ms);
            let mut line = String::new();
            lines.line(
                &Record {
                    at,
                    ..samples()[0].clone()
                },
                &mut line,
            );
            let want = Timestamp(at).to_string();
            assert!(
                line.contains(&format!("\"timestamp\":\"{want}\"")),
                "{line}"
            );
        }
    }

    #[test]
    fn hand_written_pieces_equal_display_and_serde_json() {
        for n in [0, 7, 10, 99, 65_535, u64::from(u32::MAX), u64::MAX] {
            let mut out = String::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string());
        }
        for addr in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.0.1:80",
            "[::1]:443",
        ] {
            let addr: SocketAddr = addr.parse().expect("addr");
            let mut out = String::new();
            push_addr(&mut out, addr);
            assert_eq!(out, addr.to_string());
        }
        let every: String = (0u8..0x80)
            .map(char::from)
            .chain("\u{9b}\u{e9}\u{2028}".chars())
            .collect();
        let mut out = String::from('"');
        push_json_str(&mut out, &every);
        out.push('"');
        assert_eq!(out, serde_json::to_string(&every).expect("json"));
    }

    #[test]
    fn rust_log_decides_as_for_the_event() {
        let on = |directives: &str| {
            let dispatch = shared::telemetry::dispatch(
                LogFormat::Text,
                EnvFilter::new(directives),
                false,
                std::io::sink,
            );
            tracing::dispatcher::with_default(&dispatch, enabled)
        };
        assert!(on("info"));
        assert!(on("warn,sidecar::http=info"));
        assert!(!on("warn"));
        assert!(!on("info,sidecar::http=warn"));
        assert!(!on("info,sidecar=warn"));
    }

    #[test]
    fn lines_inside_an_enabled_span_are_left_to_the_subscriber() {
        let in_conn = |directives: &str| {
            let dispatch = shared::telemetry::dispatch(
                LogFormat::Text,
                EnvFilter::new(directives),
                false,
                std::io::sink,
            );
            tracing::dispatcher::with_default(&dispatch, || {
                let outside = in_span();
                let inside = tracing::debug_span!("conn", peer = "127.0.0.1:1").in_scope(in_span);
                (outside, inside)
            })
        };
        assert_eq!(in_conn("info"), (false, false));
        assert_eq!(in_conn("debug"), (false, true));
    }

    /// A sink whose first write waits until the test releases it, like a stderr nobody reads.
    struct Stalled {
        blocked: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some((entered, release)) = self.blocked.take() {
                let _ = entered.send(());
                let _ = release.recv();
            }
            self.out.lock().expect("sink").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        /// Only against a hang: nothing here depends on timing.
        const HANG: Duration = Duration::from_secs(30);
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = Stalled {
            blocked: Some((entered_tx, release_rx)),
            out: out.clone(),
        };
        let line = |n: usize| record("GET", "127.0.0.1:9", Some(&format!("/{n}")), None);
        let queue = Queue::start(4, Style::Text { ansi: false }, sink).expect("writer");
        assert!(queue.push(line(0)));
        entered_rx
            .recv_timeout(HANG)
            .expect("the writer takes the first line and blocks writing it");

        // The writer is stuck: four lines fit, the rest are dropped, and no push waits.
        let pusher = queue.clone();
        let (done_tx, done_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let accepted: Vec<bool> = (1..=7).map(|n| pusher.push(line(n))).collect();
            let _ = done_tx.send(accepted);
        });
        let accepted = done_rx.recv_timeout(HANG).expect("pushes never wait");
        assert_eq!(accepted, [true, true, true, true, false, false, false]);
        assert_eq!(queue.dropped_total(), 3);

        release_tx.send(()).expect("release");
        assert!(queue.close(HANG), "the queued lines are written at close");
        let written = String::from_utf8(out.lock().expect("sink").clone()).expect("utf-8");
        let paths: Vec<&str> = written
            .lines()
            .map(|l| {
                l.split(" path=")
                    .nth(1)
                    .and_then(|p| p.split(' ').next())
                    .unwrap_or("")
            })
            .collect();
        assert_eq!(paths, ["/0", "/1", "/2", "/3", "/4"], "{written}");
        assert!(!queue.push(line(8)), "nothing is taken after the close");
        assert_eq!(queue.dropped_total(), 4);
    }
}
