//! Giving memory back after load.
//!
//! glibc's allocator keeps the memory of freed connections in its arenas: after five bursts of
//! 10,000 TLS connections a sidecar held 262 MB with none open (5.4 MB at start), while its live
//! heap was under 1 MiB (measured with `malloc_stats`; a retention, not a leak). `malloc_trim(0)`
//! hands the free pages back (253 MB to 11 MB). So when the number of open connections has
//! fallen well below its peak since the last trim, this task calls it, off the async threads.
//!
//! Chosen over switching allocators (bench/analysis.md, "Memory after load"): jemalloc with its
//! background thread returns to 15-18 MB but starts at 7.1 MB instead of 5.4 MB (its code and
//! arena metadata), and mimalloc kept 270 MB. glibc plus a trim keeps the smallest idle sidecar,
//! the common case, and comes back lowest after load.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::Metrics;

/// How often the connection count is looked at: memory comes back within this long of the load
/// going, and a trim (a walk over the free lists) costs nothing noticeable at this rate.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Connections that must have closed since the peak before a trim is worth it (about 1.5 MB of
/// buffers at ~24 KiB each).
const MIN_DROP: u64 = 64;

/// Whether to trim: the open connections fell by at least [`MIN_DROP`] and to at most half of
/// their peak since the last trim.
pub(crate) fn should_trim(peak: u64, now: u64) -> bool {
    peak >= now + MIN_DROP && now <= peak / 2
}

/// Trims whenever [`should_trim`] says so, until `stop`.
pub(crate) async fn run(metrics: Arc<Metrics>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut peak = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        peak = peak.max(metrics.take_peak());
        let now = metrics.connections_active();
        if should_trim(peak, now) {
            debug!(peak, open = now, "returning freed memory to the system");
            let _ = tokio::task::spawn_blocking(release_freed_memory).await;
            peak = now;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: malloc_trim takes no pointer and reads nothing of ours; it walks glibc's own arenas
    // under their locks and returns whole free pages to the kernel. It is safe to call at any
    // time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_freed_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_real_drop() {
        assert!(should_trim(10_000, 0));
        assert!(should_trim(200, 100));
        assert!(should_trim(64, 0));
        assert!(!should_trim(63, 0), "too little to gain");
        assert!(!should_trim(10_000, 5_001), "still more than half the peak");
        assert!(!should_trim(0, 0));
        assert!(!should_trim(100, 100));
    }

    #[test]
    fn the_peak_since_the_last_look_is_remembered() {
        let m = Metrics::default();
        let conns: Vec<_> = (0..100).map(|_| m.connection_opened()).collect();
        drop(conns);
        assert_eq!(m.connections_active(), 0);
        assert_eq!(m.take_peak(), 100);
        assert_eq!(m.take_peak(), 0, "taken");
        release_freed_memory();
    }
}
