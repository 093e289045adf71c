//! Log lines that a peer can cause, at most one per interval per cause: the first event of an
//! interval is logged with the number of events suppressed since the last line. Used by the
//! sidecar for everything a client can trigger, and by the accept loop ([`crate::accept`]).

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
}
