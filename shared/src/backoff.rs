//! Capped exponential backoff, the one retry policy of both binaries: the sidecar's accept loop,
//! and the spawner's failed reconcile turns, image pulls, crash-looping sidecars and event
//! resubscriptions.
//!
//! Doubling from a small first delay retries a passing fault (a burst that took every file
//! descriptor, an engine restarting) almost at once, yet a lasting one costs a few attempts a
//! minute; the cap bounds how late a recovery is noticed. No jitter: every caller retries one
//! local resource (its own listener, the local Docker engine), so there is no herd to spread out.
//!
//! [`Backoff`] is the policy and pure: the delay after `n` failures. [`Retry`] counts the failures
//! of one thing in a row, for a caller that retries in a loop.

use std::time::Duration;

/// A policy: the first delay and the cap. Each user names its own as a constant and says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits `min` after the first failure, twice as long after each further one, never more
    /// than `max`. Panics when `min > max` (at compile time in a constant).
    pub const fn new(min: Duration, max: Duration) -> Self {
        assert!(
            min.as_nanos() <= max.as_nanos(),
            "backoff minimum above its maximum"
        );
        Self { min, max }
    }

    /// The first delay.
    pub const fn min(self) -> Duration {
        self.min
    }

    /// The cap.
    pub const fn max(self) -> Duration {
        self.max
    }

    /// How long to wait after `failures` failures in a row: `min * 2^(failures - 1)`, capped at
    /// `max`. `0` and `1` both give `min`. Exact for every count: no overflow, no panic.
    pub fn delay(self, failures: u32) -> Duration {
        if self.min.is_zero() {
            return Duration::ZERO;
        }
        let doublings = failures.saturating_sub(1);
        // A shift of 128 or more leaves nothing of a u128: saturate instead.
        let factor = 1u128.checked_shl(doublings).unwrap_or(u128::MAX);
        let nanos = self.min.as_nanos().saturating_mul(factor);
        if nanos >= self.max.as_nanos() {
            return self.max;
        }
        // Below `max`, so the seconds fit in a u64.
        const NANOS_PER_SEC: u128 = 1_000_000_000;
        Duration::new(
            (nanos / NANOS_PER_SEC) as u64,
            (nanos % NANOS_PER_SEC) as u32,
        )
    }

    /// A fresh count of failures under this policy.
    pub const fn retry(self) -> Retry {
        Retry {
            backoff: self,
            failures: 0,
        }
    }
}

/// The failures in a row of one thing retried under a [`Backoff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    backoff: Backoff,
    failures: u32,
}

impl Retry {
    /// Counts one more failure; returns how long to wait before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.backoff.delay(self.failures)
    }

    /// After a success: the next failure waits the first delay again. Returns how many failures
    /// there were in a row before it (`0` when there were none).
    pub fn reset(&mut self) -> u32 {
        std::mem::take(&mut self.failures)
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The policy.
    pub fn backoff(&self) -> Backoff {
        self.backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_the_minimum() {
        let b = Backoff::new(ms(250), Duration::from_secs(5));
        assert_eq!(b.delay(0), ms(250));
        assert_eq!(b.delay(1), ms(250));
        assert_eq!(b.delay(2), ms(500));
        assert_eq!(b.delay(3), ms(1000));
        assert_eq!(b.delay(4), ms(2000));
        assert_eq!(b.delay(5), ms(4000));
    }

    #[test]
    fn stops_at_the_cap() {
        let b = Backoff::new(ms(250), Duration::from_secs(5));
        assert_eq!(b.delay(6), Duration::from_secs(5));
        assert_eq!(b.delay(7), Duration::from_secs(5));
        assert_eq!(b.delay(40), Duration::from_secs(5));
        // A cap that is no power of two of the minimum is reached exactly.
        let b = Backoff::new(ms(5), ms(1000));
        assert_eq!(b.delay(8), ms(640));
        assert_eq!(b.delay(9), ms(1000));
    }

    #[test]
    fn huge_failure_counts_neither_overflow_nor_panic() {
        let b = Backoff::new(ms(500), Duration::from_secs(30));
        for n in [31, 32, 33, 64, 127, 128, 129, 1_000, u32::MAX - 1, u32::MAX] {
            assert_eq!(b.delay(n), Duration::from_secs(30), "{n}");
        }
        // The widest policy there is: still exact where it has not reached the cap.
        let b = Backoff::new(Duration::from_nanos(1), Duration::MAX);
        assert_eq!(b.delay(64), Duration::from_nanos(1 << 63));
        assert_eq!(
            b.delay(65),
            Duration::from_nanos(u64::MAX) + Duration::from_nanos(1)
        );
        assert_eq!(b.delay(u32::MAX), Duration::MAX);
        let b = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(b.delay(1), Duration::MAX);
        assert_eq!(b.delay(u32::MAX), Duration::MAX);
    }

    #[test]
    fn a_zero_minimum_never_waits_and_equal_bounds_never_grow() {
        let b = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(b.delay(1), Duration::ZERO);
        assert_eq!(b.delay(u32::MAX), Duration::ZERO);
        let b = Backoff::new(ms(100), ms(100));
        assert_eq!(b.delay(1), ms(100));
        assert_eq!(b.delay(10), ms(100));
    }

    #[test]
    #[should_panic(expected = "backoff minimum above its maximum")]
    fn a_minimum_above_the_cap_is_refused() {
        let _ = Backoff::new(ms(2), ms(1));
    }

    #[test]
    fn a_retry_counts_failures_until_a_success() {
        let mut r = Backoff::new(ms(5), ms(20)).retry();
        assert_eq!(r.failures(), 0);
        assert_eq!(r.reset(), 0);
        assert_eq!(r.failed(), ms(5));
        assert_eq!(r.failed(), ms(10));
        assert_eq!(r.failed(), ms(20));
        assert_eq!(r.failed(), ms(20));
        assert_eq!(r.failures(), 4);
        assert_eq!(r.reset(), 4);
        assert_eq!(r.failures(), 0);
        assert_eq!(r.failed(), ms(5), "starts from the minimum again");
        assert_eq!(r.backoff(), Backoff::new(ms(5), ms(20)));
    }

    #[test]
    fn a_retry_saturates_its_count() {
        let mut r = Retry {
            backoff: Backoff::new(ms(5), ms(20)),
            failures: u32::MAX - 1,
        };
        assert_eq!(r.failed(), ms(20));
        assert_eq!(r.failed(), ms(20));
        assert_eq!(r.failures(), u32::MAX);
    }
}
