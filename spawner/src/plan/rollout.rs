//! Roll-outs, pure: which sidecars are outdated ([`drift`]), what the spawner remembers of
//! roll-outs between turns ([`Book`]: failures per target, the pause, what was asked for), and
//! which targets get a replacement now ([`Book::pick`]). The daemon observes and acts
//! (`crate::daemon::rollouts`); every rule is unit-tested here.
//!
//! The model is Swarm's rolling update with `order: start-first` and `failure_action: pause`:
//! a replacement starts beside the sidecar it replaces and takes its listeners over in place; one
//! that fails leaves the old sidecar serving, is not retried for that target until what it was
//! made from changes, and after `--rollout-max-failures` failed targets in a row nothing more is
//! replaced until an image changes again or `spawner rollout` resumes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{RolloutConfig, RolloutPolicy};
use crate::plan::labels::TargetSpec;
use crate::plan::reconcile::{Made, Sidecar, SidecarState, Target};

/// What a target's sidecar would be made from today: the ID its image reference resolves to
/// (`None`: the engine does not have the image) and the digest of the container the spawner
/// renders for it ([`crate::plan::container::spec_digest`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Wanted {
    pub(crate) image_id: Option<String>,
    pub(crate) spec_digest: String,
}

/// Why a sidecar is outdated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Drift {
    /// Its image reference now names another image.
    Image,
    /// This spawner renders it differently (another version, a changed flag).
    Spec,
    Both,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Drift::Image => "new image",
            Drift::Spec => "new spec",
            Drift::Both => "new image and spec",
        })
    }
}

/// Whether a sidecar made as `made` is outdated against `wanted`. A sidecar without a
/// `spec-digest` label (made before it existed) is compared by image alone; an image the engine
/// does not have, or a sidecar whose image ID is unknown, is no drift: nothing would be gained.
pub(crate) fn drift(made: &Made, wanted: &Wanted) -> Option<Drift> {
    let image = match &wanted.image_id {
        Some(want) => !made.image_id.is_empty() && made.image_id != *want,
        None => false,
    };
    let spec = made
        .spec_digest
        .as_ref()
        .is_some_and(|d| *d != wanted.spec_digest);
    match (image, spec) {
        (true, true) => Some(Drift::Both),
        (true, false) => Some(Drift::Image),
        (false, true) => Some(Drift::Spec),
        (false, false) => None,
    }
}

/// A running target's sidecars as roll-outs see them: the one serving its current namespace
/// (the oldest running one that is not a replacement in progress), and the replacement in
/// progress beside it, if any.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pair<'a> {
    pub(crate) target: &'a Target,
    pub(crate) spec: &'a TargetSpec,
    pub(crate) serving: &'a Sidecar,
    pub(crate) incoming: Option<&'a Sidecar>,
}

/// The [`Pair`] of every running target with a valid spec, not `refused`, and a running sidecar
/// in its current namespace.
pub(crate) fn pairs<'a>(
    targets: &'a [Target],
    sidecars: &'a [Sidecar],
    refused: &HashSet<String>,
) -> Vec<Pair<'a>> {
    let mut running: HashMap<(&str, &str), Vec<&Sidecar>> = HashMap::new();
    for s in sidecars {
        if let (SidecarState::Running, Some(started)) = (s.state, s.target_started.as_deref()) {
            running
                .entry((s.target_id.as_str(), started))
                .or_default()
                .push(s);
        }
    }
    let mut out = Vec::new();
    for t in targets
        .iter()
        .filter(|t| t.running && !refused.contains(&t.id))
    {
        let (Ok(spec), Some(mine)) = (
            &t.spec,
            running.get_mut(&(t.id.as_str(), t.started_at.as_str())),
        ) else {
            continue;
        };
        mine.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        let replacing = |s: &Sidecar| {
            s.made
                .replaces
                .as_deref()
                .is_some_and(|old| mine.iter().any(|o| o.id == old))
        };
        let incoming = mine.iter().copied().find(|s| replacing(s));
        let Some(serving) = mine.iter().copied().find(|s| !replacing(s)) else {
            continue;
        };
        out.push(Pair {
            target: t,
            spec,
            serving,
            incoming,
        });
    }
    out
}

/// A target whose serving sidecar is outdated, as [`Book::pick`] needs it.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub(crate) target_id: String,
    pub(crate) target_name: String,
    /// `--rollout`, or the target's `rollout` label.
    pub(crate) policy: RolloutPolicy,
    pub(crate) wanted: Wanted,
}

/// A roll-out that failed for one target: what it was to bring, and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failed {
    pub(crate) wanted: Wanted,
    pub(crate) reason: String,
}

/// What the daemon remembers of roll-outs between turns. Forgotten on restart: a failed image is
/// then tried once more per target (the old sidecar serves throughout), and the pause is lifted.
#[derive(Debug, Default)]
pub(crate) struct Book {
    /// Per target ID.
    failed: HashMap<String, Failed>,
    /// Failed targets since the last roll-out that worked.
    in_a_row: u32,
    /// Why nothing is rolled out.
    paused: Option<String>,
    /// When the last replacement started, for `--rollout-delay`.
    last_start: Option<Instant>,
    /// What `spawner rollout` asked for, with `--rollout manual` (or a `manual` label).
    asked: Asked,
}

/// Targets a `spawner rollout` asked for (by ID; `--all`: those outdated when asked), until
/// replaced.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Asked {
    targets: HashSet<String>,
}

impl Book {
    /// The failed roll-out of a target, if it is still the one wanted.
    pub(crate) fn failure(&self, target_id: &str) -> Option<&Failed> {
        self.failed.get(target_id)
    }

    pub(crate) fn paused(&self) -> Option<&str> {
        self.paused.as_deref()
    }

    /// A replacement started at `now`.
    pub(crate) fn started(&mut self, now: Instant) {
        self.last_start = Some(now);
    }

    /// A target's replacement took over.
    pub(crate) fn succeeded(&mut self, target_id: &str) {
        self.in_a_row = 0;
        self.failed.remove(target_id);
        self.asked.targets.remove(target_id);
    }

    /// A target's roll-out to `wanted` failed (`target_name` for the pause's reason). True when
    /// this failure paused the roll-out.
    pub(crate) fn failed(
        &mut self,
        target_id: &str,
        target_name: &str,
        wanted: Wanted,
        reason: String,
        max_failures: u32,
    ) -> bool {
        self.asked.targets.remove(target_id);
        self.in_a_row = self.in_a_row.saturating_add(1);
        let pause = self.paused.is_none() && self.in_a_row >= max_failures;
        if pause {
            self.paused = Some(format!(
                "{} failed targets in a row (the last: {target_name}: {reason}); resumes when an image changes or on `spawner rollout`",
                self.in_a_row
            ));
        }
        self.failed
            .insert(target_id.to_string(), Failed { wanted, reason });
        pause
    }

    /// What each target would be made from now (by target ID, every target served): a failure
    /// is forgotten once what its target wants changed, and such a change (a fixed image) resumes
    /// a paused roll-out. Targets gone are forgotten. True when the roll-out resumed.
    pub(crate) fn observe(&mut self, wanted: &HashMap<String, Wanted>) -> bool {
        let mut changed = false;
        self.failed.retain(|target, f| match wanted.get(target) {
            Some(w) if *w == f.wanted => true,
            Some(_) => {
                changed = true;
                false
            }
            None => false,
        });
        self.asked.targets.retain(|t| wanted.contains_key(t));
        if changed && self.paused.is_some() {
            self.paused = None;
            self.in_a_row = 0;
            return true;
        }
        false
    }

    /// `spawner rollout`: the targets asked for are replaced when outdated, even with
    /// `manual`, their failures are forgotten (tried again), and a pause is lifted.
    pub(crate) fn ask(&mut self, targets: impl IntoIterator<Item = String>) {
        for t in targets {
            self.failed.remove(&t);
            self.asked.targets.insert(t);
        }
        self.paused = None;
        self.in_a_row = 0;
    }

    /// Which of the `outdated` targets get a replacement now, `in_flight` replacements running:
    /// none while paused; those whose policy is `auto` or that were asked for, minus those whose
    /// roll-out to what they want failed already; by name, up to the parallelism, and with a
    /// `--rollout-delay` one at a time, that long after the last.
    pub(crate) fn pick<'a>(
        &self,
        outdated: &'a [Candidate],
        in_flight: usize,
        cfg: &RolloutConfig,
        now: Instant,
    ) -> Vec<&'a Candidate> {
        if self.paused.is_some() {
            return Vec::new();
        }
        let mut slots = cfg.parallelism.saturating_sub(in_flight);
        if !cfg.delay.is_zero() {
            let due = self
                .last_start
                .is_none_or(|at| now.duration_since(at) >= cfg.delay);
            slots = if due { slots.min(1) } else { 0 };
        }
        let mut eligible: BTreeMap<(&str, &str), &Candidate> = BTreeMap::new();
        for c in outdated {
            let wanted =
                c.policy == RolloutPolicy::Auto || self.asked.targets.contains(&c.target_id);
            let failed = self
                .failed
                .get(&c.target_id)
                .is_some_and(|f| f.wanted == c.wanted);
            if wanted && !failed {
                eligible.insert((c.target_name.as_str(), c.target_id.as_str()), c);
            }
        }
        eligible.into_values().take(slots).collect()
    }

    /// When the next replacement may start, with a `--rollout-delay` (for the loop's wake-up).
    pub(crate) fn next_start(&self, delay: Duration) -> Option<Instant> {
        (!delay.is_zero())
            .then_some(self.last_start)
            .flatten()
            .map(|at| at + delay)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn wanted(image: &str, spec: &str) -> Wanted {
        Wanted {
            image_id: Some(image.into()),
            spec_digest: spec.into(),
        }
    }

    fn made(image: &str, spec: Option<&str>) -> Made {
        Made {
            image_id: image.into(),
            spec_digest: spec.map(String::from),
            replaces: None,
        }
    }

    fn cfg(parallelism: usize, delay: Duration) -> RolloutConfig {
        RolloutConfig {
            policy: RolloutPolicy::Auto,
            parallelism,
            delay,
            timeout: Duration::from_secs(60),
            max_failures: 3,
        }
    }

    fn candidate(id: &str, policy: RolloutPolicy) -> Candidate {
        Candidate {
            target_id: id.into(),
            target_name: format!("n{id}"),
            policy,
            wanted: wanted("sha256:new", "d1"),
        }
    }

    fn ids(picked: &[&Candidate]) -> Vec<String> {
        picked.iter().map(|c| c.target_id.clone()).collect()
    }

    #[test]
    fn pairs_name_the_serving_sidecar_and_the_replacement_beside_it() {
        use crate::plan::labels::parse_target;
        let labels: HashMap<String, String> =
            [("tls-sidecar.proxy-image".to_string(), "img".to_string())].into();
        let spec = parse_target("tls-sidecar", "web", &labels, &[], Default::default())
            .unwrap()
            .unwrap();
        let target = |id: &str| Target {
            id: id.into(),
            name: format!("n{id}"),
            running: true,
            started_at: "t1".into(),
            spec: Ok(spec.clone()),
        };
        let sidecar = |id: &str, t: &str, created: i64, replaces: Option<&str>| Sidecar {
            id: id.into(),
            name: id.into(),
            target_id: t.into(),
            target_started: Some("t1".into()),
            state: SidecarState::Running,
            created,
            last_failure: None,
            made: Made {
                replaces: replaces.map(String::from),
                ..Made::default()
            },
        };
        let targets = [target("a"), target("b"), target("c")];
        let sidecars = [
            sidecar("new", "a", 5, Some("old")),
            sidecar("old", "a", 1, None),
            // A replacement whose predecessor is gone serves.
            sidecar("b2", "b", 3, Some("gone")),
        ];
        let p = pairs(&targets, &sidecars, &HashSet::new());
        let seen: Vec<(&str, &str, Option<&str>)> = p
            .iter()
            .map(|p| {
                (
                    p.target.id.as_str(),
                    p.serving.id.as_str(),
                    p.incoming.map(|s| s.id.as_str()),
                )
            })
            .collect();
        assert_eq!(seen, [("a", "old", Some("new")), ("b", "b2", None)]);
        let refused: HashSet<String> = ["a".to_string()].into();
        assert_eq!(pairs(&targets, &sidecars, &refused).len(), 1);
    }

    #[test]
    fn a_sidecar_is_outdated_by_its_image_or_its_spec() {
        let w = wanted("sha256:b", "d1");
        assert_eq!(drift(&made("sha256:b", Some("d1")), &w), None);
        assert_eq!(drift(&made("sha256:a", Some("d1")), &w), Some(Drift::Image));
        assert_eq!(drift(&made("sha256:b", Some("d0")), &w), Some(Drift::Spec));
        assert_eq!(drift(&made("sha256:a", Some("d0")), &w), Some(Drift::Both));
        // Made before the digest label: by image alone.
        assert_eq!(drift(&made("sha256:b", None), &w), None);
        // Unknown on either side: no drift claimed.
        assert_eq!(drift(&made("", Some("d1")), &w), None);
        let gone = Wanted {
            image_id: None,
            spec_digest: "d1".into(),
        };
        assert_eq!(drift(&made("sha256:a", Some("d1")), &gone), None);
    }

    #[test]
    fn auto_targets_are_picked_by_name_up_to_the_parallelism() {
        let book = Book::default();
        let now = Instant::now();
        let outdated = [
            candidate("c", RolloutPolicy::Auto),
            candidate("a", RolloutPolicy::Auto),
            candidate("b", RolloutPolicy::Auto),
            candidate("m", RolloutPolicy::Manual),
        ];
        let zero = Duration::ZERO;
        assert_eq!(
            ids(&book.pick(&outdated, 0, &cfg(2, zero), now)),
            ["a", "b"]
        );
        assert_eq!(ids(&book.pick(&outdated, 1, &cfg(2, zero), now)), ["a"]);
        assert!(book.pick(&outdated, 2, &cfg(2, zero), now).is_empty());
        assert_eq!(
            ids(&book.pick(&outdated, 0, &cfg(10, zero), now)),
            ["a", "b", "c"],
            "manual is not picked unless asked"
        );
    }

    #[test]
    fn a_delay_starts_one_at_a_time_that_long_after_the_last() {
        let mut book = Book::default();
        let now = Instant::now();
        let outdated = [
            candidate("a", RolloutPolicy::Auto),
            candidate("b", RolloutPolicy::Auto),
        ];
        let c = cfg(4, Duration::from_secs(5));
        assert_eq!(ids(&book.pick(&outdated, 0, &c, now)), ["a"]);
        book.started(now);
        assert!(book
            .pick(&outdated, 0, &c, now + Duration::from_secs(4))
            .is_empty());
        assert_eq!(
            ids(&book.pick(&outdated, 0, &c, now + Duration::from_secs(5))),
            ["a"]
        );
        assert_eq!(
            book.next_start(Duration::from_secs(5)),
            Some(now + Duration::from_secs(5))
        );
        assert_eq!(book.next_start(Duration::ZERO), None);
    }

    #[test]
    fn a_failed_target_is_not_retried_until_what_it_wants_changes() {
        let mut book = Book::default();
        let now = Instant::now();
        let c = cfg(4, Duration::ZERO);
        let a = candidate("a", RolloutPolicy::Auto);
        book.failed("a", "na", a.wanted.clone(), "exit 2".into(), 3);
        assert_eq!(book.failure("a").unwrap().reason, "exit 2");
        assert!(book.pick(std::slice::from_ref(&a), 0, &c, now).is_empty());
        // The same image and spec: still failed.
        let same: HashMap<String, Wanted> = [("a".to_string(), a.wanted.clone())].into();
        assert!(!book.observe(&same));
        assert!(book.failure("a").is_some());
        // A new image: tried again.
        let fixed = Candidate {
            wanted: wanted("sha256:fixed", "d1"),
            ..a.clone()
        };
        let now_wanted: HashMap<String, Wanted> = [("a".to_string(), fixed.wanted.clone())].into();
        book.observe(&now_wanted);
        assert!(book.failure("a").is_none());
        assert_eq!(ids(&book.pick(&[fixed], 0, &c, now)), ["a"]);
    }

    #[test]
    fn failed_targets_in_a_row_pause_everything_until_an_image_changes() {
        let mut book = Book::default();
        let now = Instant::now();
        let c = cfg(4, Duration::ZERO);
        let bad = wanted("sha256:bad", "d1");
        assert!(!book.failed("a", "na", bad.clone(), "exit 1".into(), 3));
        assert!(!book.failed("b", "nb", bad.clone(), "exit 1".into(), 3));
        // A success in between starts the count again.
        book.succeeded("x");
        assert!(!book.failed("c", "nc", bad.clone(), "exit 1".into(), 3));
        assert!(!book.failed("d", "nd", bad.clone(), "exit 1".into(), 3));
        assert!(
            book.failed("e", "ne", bad.clone(), "exit 1".into(), 3),
            "third in a row"
        );
        let reason = book.paused().unwrap().to_string();
        assert!(
            reason.contains("3 failed targets in a row") && reason.contains("ne: exit 1"),
            "{reason}"
        );
        let other = candidate("z", RolloutPolicy::Auto);
        assert!(
            book.pick(std::slice::from_ref(&other), 0, &c, now)
                .is_empty(),
            "paused for all"
        );
        // Nothing changed: still paused.
        let all: HashMap<String, Wanted> = ["c", "d", "e", "z"]
            .map(|t| (t.to_string(), bad.clone()))
            .into();
        assert!(!book.observe(&all));
        assert!(book.paused().is_some());
        // The image is fixed: resumed, and the failed targets are tried again.
        let fixed = wanted("sha256:fixed", "d1");
        let all: HashMap<String, Wanted> = ["c", "d", "e", "z"]
            .map(|t| (t.to_string(), fixed.clone()))
            .into();
        assert!(book.observe(&all));
        assert!(book.paused().is_none());
        assert!(book.failure("e").is_none());
        assert_eq!(ids(&book.pick(&[other], 0, &c, now)), ["z"]);
    }

    #[test]
    fn asking_replaces_manual_targets_and_resumes_a_pause() {
        let mut book = Book::default();
        let now = Instant::now();
        let c = cfg(4, Duration::ZERO);
        let m = candidate("m", RolloutPolicy::Manual);
        assert!(book.pick(std::slice::from_ref(&m), 0, &c, now).is_empty());
        for t in ["a", "b", "c"] {
            book.failed(t, t, m.wanted.clone(), "x".into(), 3);
        }
        assert!(book.paused().is_some());
        book.ask(["m".to_string()]);
        assert!(book.paused().is_none());
        assert_eq!(ids(&book.pick(std::slice::from_ref(&m), 0, &c, now)), ["m"]);
        // Done: asked no more.
        book.succeeded("m");
        assert!(book.pick(&[m], 0, &c, now).is_empty());
    }

    #[test]
    fn targets_gone_are_forgotten() {
        let mut book = Book::default();
        book.failed("a", "na", wanted("i", "d"), "x".into(), 3);
        book.ask(["b".to_string()]);
        book.observe(&HashMap::new());
        assert!(book.failure("a").is_none());
        assert!(book.asked.targets.is_empty());
    }
}
