//! Sidecar images the loop pulls itself: at most one pull per image at a time, in the
//! background, so a slow or failing pull never holds up other targets; retried with backoff.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::lock;
use crate::engine::Engine;
use crate::error::Error;

/// Retrying a failed pull: 1 s, doubled per failure up to 60 s; a registry that refuses is asked
/// once a minute, not once per turn.
pub(super) const PULL_BACKOFF: shared::backoff::Backoff =
    shared::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// Pulls by image, shared with the pulls running in the background.
#[derive(Clone, Default)]
pub(super) struct Pulls(Arc<Mutex<HashMap<String, Pull>>>);

/// One image's pulls.
#[derive(Debug, Default)]
struct Pull {
    in_flight: bool,
    failures: u32,
    next_attempt: Option<Instant>,
}

impl Pull {
    /// Whether a pull may start at `now`: none runs, and no backoff does.
    fn may_start(&self, now: Instant) -> bool {
        !self.in_flight && self.next_attempt.is_none_or(|t| t <= now)
    }

    /// A pull failed at `now`: the next one waits per [`PULL_BACKOFF`]. Returns the wait.
    fn failed(&mut self, now: Instant) -> Duration {
        self.in_flight = false;
        self.failures += 1;
        let delay = PULL_BACKOFF.delay(self.failures);
        self.next_attempt = Some(now + delay);
        delay
    }
}

impl Pulls {
    /// When each failed pull may be tried again.
    pub(super) fn next_attempts(&self) -> Vec<Instant> {
        lock(&self.0)
            .values()
            .filter_map(|p| p.next_attempt)
            .collect()
    }

    /// True when `image` is present. Otherwise starts a background pull (unless one runs or
    /// backs off), which wakes the loop when it ends.
    pub(super) async fn ready(
        &self,
        engine: &Arc<Engine>,
        wake: &Arc<Notify>,
        image: &str,
    ) -> Result<bool, Error> {
        if engine.image_exists(image).await? {
            return Ok(true);
        }
        {
            let mut pulls = lock(&self.0);
            let p = pulls.entry(image.to_string()).or_default();
            if !p.may_start(Instant::now()) {
                return Ok(false);
            }
            p.in_flight = true;
        }
        tracing::info!(image, "image missing locally, pulling");
        let (engine, pulls, wake, image) = (
            engine.clone(),
            self.clone(),
            wake.clone(),
            image.to_string(),
        );
        tokio::spawn(async move {
            let result = engine.pull(&image).await;
            let mut pulls = lock(&pulls.0);
            match result {
                Ok(()) => {
                    pulls.remove(&image);
                    tracing::info!(image = %image, "image pulled");
                }
                Err(e) => {
                    let p = pulls.entry(image.clone()).or_default();
                    let delay = p.failed(Instant::now());
                    tracing::warn!(image = %image, error = %format!("{e:#}"), attempt = p.failures, retry_in = ?delay, "image pull failed");
                }
            }
            drop(pulls);
            wake.notify_one();
        });
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pull_at_a_time_and_none_while_backing_off() {
        let now = Instant::now();
        let mut p = Pull::default();
        assert!(p.may_start(now));
        p.in_flight = true;
        assert!(!p.may_start(now), "in flight");
        assert_eq!(p.failed(now), Duration::from_secs(1));
        assert!(!p.may_start(now + Duration::from_millis(999)));
        assert!(p.may_start(now + Duration::from_secs(1)));
        p.in_flight = true;
        assert_eq!(p.failed(now), Duration::from_secs(2), "the second failure");
    }
}
