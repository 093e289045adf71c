//! What the event stream reported since the loop last looked: the containers it said went down,
//! until the engine's listing agrees, and every container it named (what is cached about them may
//! be out of date).
//!
//! At the moment the engine emits `die`, its container listing can still show that container
//! `running` (the listing is a snapshot the engine updates after it emits the event; measured on
//! 20.10: `docker ps` right after the event prints `Up 1 second`, `docker inspect` prints `exited`).
//! A turn woken by the event would then see nothing to do, and the change would wait for the next
//! resync. So the watcher records the IDs of containers reported down (`die`, `stop`, `destroy`),
//! the observation inspects those (inspect reads the container itself, not the snapshot), and the
//! loop re-checks every [`RECHECK`] while any of them is still listed as running. `kill` is not a
//! down event: a signal the process survives (`docker kill -s HUP`) stops nothing; the `die` that
//! follows a fatal one is (and `stop` comes after `die`). A later `start` of the same container
//! cancels the record.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

/// How often the loop looks again while the listing still shows a container running that an event
/// said went down. Short: a dead sidecar means a target without TLS.
pub(crate) const RECHECK: Duration = Duration::from_millis(200);
/// A record the listing never confirms (an engine bug, a clock jump) is dropped after this long;
/// the periodic resync is the backstop beyond it.
const TTL: Duration = Duration::from_secs(10);
/// At most this many records: a burst of events for many containers cannot grow memory without
/// bound (the oldest records go first; the resync covers what they said).
const MAX_RECORDS: usize = 4096;

/// Container IDs reported down, with when the event arrived and whether the listing agreed yet.
#[derive(Debug, Default)]
pub(crate) struct EventReports {
    down: HashMap<String, Record>,
    /// Containers any event named since the last turn: what the observation knew of them
    /// (cached inspect facts) may be out of date.
    touched: HashSet<String>,
    /// Events may have been missed (the stream was re-subscribed) or too many came to remember
    /// one by one: nothing cached can be trusted.
    all_touched: bool,
    /// An image was tagged, pulled, loaded or removed (or events may have been missed): the IDs
    /// image references resolve to may have changed (roll-outs, `crate::daemon::rollouts`).
    images: bool,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    at: Instant,
    /// The last listing showed it not running (or gone); until then the loop re-checks.
    confirmed: bool,
}

/// What an event means for the record of its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    Down,
    Up,
    Nothing,
}

/// The meaning of a container event action (`start`, `die`, `health_status: healthy`, ...).
pub(crate) fn effect(action: &str) -> Effect {
    match action {
        "die" | "stop" | "destroy" => Effect::Down,
        "start" | "restart" => Effect::Up,
        _ => Effect::Nothing,
    }
}

impl EventReports {
    /// Records one event for container `id`.
    pub(crate) fn record(&mut self, id: &str, action: &str, now: Instant) {
        if !self.all_touched {
            self.touched.insert(id.to_string());
            if self.touched.len() > MAX_RECORDS {
                self.touched.clear();
                self.all_touched = true;
            }
        }
        match effect(action) {
            Effect::Down => {
                self.down.insert(
                    id.to_string(),
                    Record {
                        at: now,
                        confirmed: false,
                    },
                );
                if self.down.len() > MAX_RECORDS {
                    if let Some(oldest) = self
                        .down
                        .iter()
                        .min_by_key(|(_, r)| r.at)
                        .map(|(k, _)| k.clone())
                    {
                        self.down.remove(&oldest);
                    }
                }
            }
            Effect::Up => {
                self.down.remove(id);
            }
            Effect::Nothing => {}
        }
    }

    /// The event stream was (re)subscribed: events in between may be lost.
    pub(crate) fn resubscribed(&mut self) {
        self.touched.clear();
        self.all_touched = true;
        self.images = true;
    }

    /// An image event arrived.
    pub(crate) fn image_changed(&mut self) {
        self.images = true;
    }

    /// Whether images changed since the last call.
    pub(crate) fn take_images_changed(&mut self) -> bool {
        std::mem::take(&mut self.images)
    }

    /// Takes what events said since the last call: `None` when everything must be looked at
    /// again, else the containers events named.
    pub(crate) fn take_touched(&mut self) -> Option<HashSet<String>> {
        let touched = std::mem::take(&mut self.touched);
        if std::mem::take(&mut self.all_touched) {
            None
        } else {
            Some(touched)
        }
    }

    /// The containers to inspect instead of trusting the listing.
    pub(crate) fn down(&self) -> impl Iterator<Item = &str> {
        self.down.keys().map(String::as_str)
    }

    /// After a listing: `listed_running(id)` is `Some(true)` while the listing still shows the
    /// container running, `Some(false)` once it shows it stopped, `None` when it is gone. Records
    /// the listing agrees with are confirmed (and dropped once the container is gone); stale ones
    /// expire.
    pub(crate) fn settle(&mut self, now: Instant, listed_running: impl Fn(&str) -> Option<bool>) {
        self.down.retain(|id, r| {
            if now.duration_since(r.at) > TTL {
                return false;
            }
            match listed_running(id) {
                None => false,
                Some(false) => {
                    r.confirmed = true;
                    true
                }
                Some(true) => {
                    r.confirmed = false;
                    true
                }
            }
        });
    }

    /// When the loop must look again: soon while a record is unconfirmed, else never.
    pub(crate) fn recheck_at(&self, now: Instant) -> Option<Instant> {
        self.down
            .values()
            .any(|r| !r.confirmed)
            .then_some(now + RECHECK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_touches_its_container_and_a_resubscription_touches_all() {
        let now = Instant::now();
        let mut s = EventReports::default();
        s.record("a", "start", now);
        s.record("b", "health_status: healthy", now);
        let mut touched: Vec<String> = s.take_touched().expect("some").into_iter().collect();
        touched.sort();
        assert_eq!(touched, ["a", "b"]);
        assert_eq!(s.take_touched(), Some(HashSet::new()), "taken once");
        s.record("c", "die", now);
        s.resubscribed();
        assert_eq!(s.take_touched(), None, "anything may have changed");
        assert_eq!(s.take_touched(), Some(HashSet::new()));
        for i in 0..=MAX_RECORDS {
            s.record(&format!("x{i}"), "start", now);
        }
        assert_eq!(s.take_touched(), None, "too many to list: everything");
    }

    #[test]
    fn die_is_recorded_and_start_cancels_it() {
        let now = Instant::now();
        let mut s = EventReports::default();
        s.record("a", "die", now);
        s.record("b", "kill", now);
        s.record("c", "destroy", now);
        let mut down: Vec<&str> = s.down().collect();
        down.sort();
        assert_eq!(down, vec!["a", "c"], "kill alone stops nothing");
        s.record("a", "start", now);
        assert_eq!(s.down().collect::<Vec<_>>(), vec!["c"]);
    }

    #[test]
    fn rechecks_until_the_listing_agrees() {
        let now = Instant::now();
        let mut s = EventReports::default();
        assert_eq!(s.recheck_at(now), None);
        s.record("a", "die", now);
        assert_eq!(s.recheck_at(now), Some(now + RECHECK));
        // The listing still says running: keep looking.
        s.settle(now, |_| Some(true));
        assert_eq!(s.recheck_at(now), Some(now + RECHECK));
        // It caught up: no more re-checks, but the container is still inspected.
        s.settle(now, |_| Some(false));
        assert_eq!(s.recheck_at(now), None);
        assert_eq!(s.down().count(), 1);
        // Gone from the listing: forgotten.
        s.settle(now, |_| None);
        assert_eq!(s.down().count(), 0);
    }

    #[test]
    fn records_expire_and_are_bounded() {
        let now = Instant::now();
        let mut s = EventReports::default();
        s.record("a", "die", now);
        s.settle(now + TTL + Duration::from_millis(1), |_| Some(true));
        assert_eq!(s.down().count(), 0, "expired");
        for i in 0..MAX_RECORDS + 10 {
            s.record(
                &format!("c{i}"),
                "die",
                now + Duration::from_millis(i as u64),
            );
        }
        assert_eq!(s.down().count(), MAX_RECORDS);
        assert!(
            !s.down().any(|id| id == "c0"),
            "the oldest record goes first"
        );
    }
}
