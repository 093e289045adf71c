//! Log lines that a client can cause, at most one per interval per cause.
//!
//! An attacker who can make the sidecar write a line per connection or per request writes the
//! operator's logs (and fills their disk). Each such call site owns a [`Throttle`]: the first
//! event of an interval is logged with the number of events suppressed since the last line; the
//! metrics carry the exact totals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One line per cause per this long: often enough to see an attack start and stop, rarely enough
/// that a flood costs a few lines a minute.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Gate for one cause's log lines.
#[derive(Debug)]
pub struct Throttle {
    interval_ms: u64,
    /// Milliseconds since [`epoch`] before which nothing is logged.
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttle {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as u64,
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when a line may be written now (with how many events went unlogged
    /// since the last one), `None` when this event only counts.
    pub fn ready(&self) -> Option<u64> {
        self.ready_at(epoch().elapsed().as_millis() as u64)
    }

    fn ready_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms + self.interval_ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Text a client chose (a path, a name), made safe for a log line when displayed: control
/// characters (C1 ones included, which terminals obey too), quotes, backslashes and every
/// non-ASCII byte are written as escapes, and it is cut at `max` bytes. Printable ASCII, the
/// usual case, is written as is without allocating.
pub struct Escaped<'a> {
    pub bytes: &'a [u8],
    pub max: usize,
}

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.bytes[..self.bytes.len().min(self.max)];
        let plain = |b: &u8| (0x20..=0x7e).contains(b) && *b != b'\\' && *b != b'"';
        let mut rest = shown;
        while !rest.is_empty() {
            let run = rest.iter().take_while(|b| plain(b)).count();
            if run > 0 {
                // Printable ASCII is valid UTF-8.
                f.write_str(std::str::from_utf8(&rest[..run]).unwrap_or_default())?;
                rest = &rest[run..];
                continue;
            }
            match rest[0] {
                b'\\' => f.write_str("\\\\")?,
                b'"' => f.write_str("\\\"")?,
                b => write!(f, "\\x{b:02x}")?,
            }
            rest = &rest[1..];
        }
        if self.bytes.len() > self.max {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// [`Escaped`] as a string.
pub fn escape(bytes: &[u8], max: usize) -> String {
    Escaped { bytes, max }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let t = Throttle::new(Duration::from_secs(10));
        assert_eq!(t.ready_at(5), Some(0));
        assert_eq!(t.ready_at(6), None);
        assert_eq!(t.ready_at(9_000), None);
        assert_eq!(t.ready_at(10_004), None);
        assert_eq!(t.ready_at(10_005), Some(3));
        assert_eq!(t.ready_at(10_006), None);
        assert_eq!(t.ready_at(60_000), Some(1));
    }

    #[test]
    fn escaping_keeps_printable_ascii_and_cuts_long_text() {
        assert_eq!(escape(b"app.example", 64), "app.example");
        assert_eq!(
            escape(b"a\r\nb\"\\\x1b[31m\xff", 64),
            "a\\x0d\\x0ab\\\"\\\\\\x1b[31m\\xff"
        );
        assert_eq!(escape(b"abcdef", 3), "abc...");
        assert_eq!(escape("/a\u{9b}31m".as_bytes(), 64), "/a\\xc2\\x9b31m");
    }
}
