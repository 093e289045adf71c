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

/// Text a client chose (a header, a name), made safe for a log line: control characters,
/// quotes, backslashes and non-ASCII bytes are escaped, and it is cut at `max` bytes.
pub fn escape(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 8);
    for &b in bytes.iter().take(max) {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'"' => out.push_str("\\\""),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        out.push_str("...");
    }
    out
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
    }
}
