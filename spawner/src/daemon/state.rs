//! What the loop remembers between turns: one record per target, holding one per sidecar made
//! for it. Everything else is observed again each turn, and a record is forgotten in one pass
//! ([`State::forget`]) once a turn has seen that what it was about is gone or over. Pure: no
//! I/O, and no clock of its own (callers pass `now`), so every rule is unit-tested here.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::identity::renewal::{self, Issued};
use crate::plan::failure::{Failure, Verdict};
use crate::plan::labels::TargetSpec;
use crate::plan::reconcile::{ContainerId, Sidecar, SidecarId, SidecarState, Target};

/// Re-creating a sidecar that exited (or failed to create): 500 ms after the first failure, so a
/// one-off crash is replaced almost at once, doubled per failure up to 30 s, so a crash-looping
/// image costs at most one container per 30 s.
pub(super) const CRASH_BACKOFF: shared::backoff::Backoff =
    shared::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// A sidecar that ran this long before failing starts the backoff from the beginning again.
const CRASH_FORGET_AFTER: Duration = Duration::from_secs(60);

/// Every target's record, by target ID.
#[derive(Debug, Default)]
pub(super) struct State {
    targets: HashMap<ContainerId, TargetState>,
}

/// What the loop remembers about one target.
#[derive(Debug, Default)]
pub(super) struct TargetState {
    /// The backoff after its sidecars failed: no new one before it expires.
    hold: Option<Hold>,
    /// The last failure of one of its sidecars, put on the next one's labels (for
    /// `spawner status`).
    pub(super) failure: Option<Failure>,
    /// The failure cause last logged, so a crash loop logs its cause once, not once per retry.
    cause: LogOnce,
    /// Why it gets no sidecar, as last logged; forgotten when it is served again, so a refusal
    /// that comes back is logged again.
    pub(super) refusal: LogOnce,
    /// Its sidecars, by ID.
    sidecars: HashMap<SidecarId, SidecarRecord>,
}

/// What the loop remembers about one sidecar.
#[derive(Debug, Default)]
pub(super) struct SidecarRecord {
    /// How it ended (killed or failed), so it is inspected and its log read once.
    pub(super) verdict: Option<Verdict>,
    /// The digest of the certificate bundle last delivered into it
    /// ([`crate::certs::delivery`]), so a resync delivers again only what changed.
    pub(super) delivered: Option<u64>,
    /// The last re-delivery failure logged: a broken file costs one line, not one per resync.
    pub(super) delivery_error: LogOnce,
    /// Whether it said it listens (its target is ACME-managed).
    pub(super) listening: Listen,
    /// The identity certificate (or trust bundle) last delivered into it.
    pub(super) issued: Option<Issued>,
    /// The last identity delivery failure logged.
    pub(super) identity_error: LogOnce,
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    failures: u32,
    last_failure: Instant,
    until: Instant,
}

/// Whether a sidecar of an ACME-managed target is known to listen (every listener bound), so a
/// challenge answer put in it is served.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listen {
    /// Its log was not read for it yet.
    #[default]
    Unknown,
    /// Its log was first read for it then, and has not said it yet.
    LookedSince(Instant),
    /// It said so, or was assumed to.
    Yes,
}

/// The cause last logged for something that fails again and again, so each distinct cause costs
/// one log line, not one per retry.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct LogOnce(Option<String>);

impl LogOnce {
    /// True when `cause` is not the one logged last (so log it); remembered either way.
    pub(super) fn is_new(&mut self, cause: &str) -> bool {
        if self.0.as_deref() == Some(cause) {
            return false;
        }
        self.0 = Some(cause.to_string());
        true
    }

    /// The failure is over: its cause is logged again if it comes back.
    pub(super) fn forget(&mut self) {
        self.0 = None;
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl TargetState {
    /// A sidecar of this target failed at `now`: its next one waits per [`CRASH_BACKOFF`], for
    /// the failures in a row (counted afresh [`CRASH_FORGET_AFTER`] after the last one). Returns
    /// the wait.
    pub(super) fn hold_back(&mut self, now: Instant) -> Duration {
        let failures = match self.hold {
            Some(h) if now.duration_since(h.last_failure) < CRASH_FORGET_AFTER => h.failures + 1,
            _ => 1,
        };
        let delay = CRASH_BACKOFF.delay(failures);
        self.hold = Some(Hold {
            failures,
            last_failure: now,
            until: now + delay,
        });
        delay
    }

    /// Whether its next sidecar is held back at `now`.
    pub(super) fn held(&self, now: Instant) -> bool {
        self.hold.is_some_and(|h| h.until > now)
    }

    /// Records the latest failure of one of its sidecars; true when its cause is new: not the
    /// one logged last for this target, nor (when none was logged yet: the spawner restarted)
    /// `predecessor`'s, the failure the failed sidecar's labels carry.
    pub(super) fn record_failure(&mut self, f: Failure, predecessor: Option<&Failure>) -> bool {
        if self.cause.is_empty() {
            self.cause = LogOnce(predecessor.map(Failure::to_string));
        }
        let new = self.cause.is_new(&f.to_string());
        self.failure = Some(f);
        new
    }
}

impl SidecarRecord {
    /// Forgets what this turn showed is over (`presence`: `None` when the sidecar is gone);
    /// false when nothing is left to keep.
    fn forget(&mut self, presence: Option<Presence>, turn_began: Instant) -> bool {
        if presence.is_none() {
            self.verdict = None;
            self.identity_error.forget();
        }
        if matches!(presence, None | Some(Presence::Stopped)) {
            self.listening = Listen::Unknown;
        }
        let renewed = presence == Some(Presence::Renewed);
        if let Some(issued) = &self.issued {
            if !renewal::keep(issued, renewed, turn_began) {
                self.issued = None;
            }
        }
        presence.is_some()
            || self.delivered.is_some()
            || !self.delivery_error.is_empty()
            || self.issued.is_some()
    }
}

/// What a turn saw, as far as forgetting needs it.
#[derive(Debug, Default)]
pub(super) struct Seen {
    /// Every target observed, running or not.
    pub(super) targets: HashSet<ContainerId>,
    /// The targets refused a sidecar this turn.
    pub(super) refused: HashSet<ContainerId>,
    /// Every sidecar observed.
    pub(super) sidecars: HashMap<SidecarId, Presence>,
}

/// How a sidecar was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    /// Not running: it ended, or was never started.
    Stopped,
    /// Running, but its identity is not renewed (see [`Presence::Renewed`]).
    Running,
    /// Running in its running target's current namespace, with an identity the loop renews.
    Renewed,
}

impl Seen {
    /// What `targets` and `sidecars` (as judged this turn) show; `refused` by target ID.
    pub(super) fn of(targets: &[Target], sidecars: &[Sidecar], refused: &HashSet<String>) -> Seen {
        let renewed: HashSet<&str> = renewed(targets, sidecars)
            .into_iter()
            .map(|(s, _)| s.id.as_str())
            .collect();
        let presence = |s: &Sidecar| match s.state {
            SidecarState::Running if renewed.contains(s.id.as_str()) => Presence::Renewed,
            SidecarState::Running => Presence::Running,
            SidecarState::Created | SidecarState::Exited => Presence::Stopped,
        };
        Seen {
            targets: targets.iter().map(|t| t.id.as_str().into()).collect(),
            refused: refused.iter().map(|id| id.as_str().into()).collect(),
            sidecars: sidecars
                .iter()
                .map(|s| (s.id.as_str().into(), presence(s)))
                .collect(),
        }
    }
}

/// The sidecars whose identity the loop keeps renewed, with their target's spec: running, in
/// their running target's current namespace, for a target with an identity.
pub(super) fn renewed<'a>(
    targets: &'a [Target],
    sidecars: &'a [Sidecar],
) -> Vec<(&'a Sidecar, &'a TargetSpec)> {
    let targets: HashMap<&str, (&TargetSpec, &str)> = targets
        .iter()
        .filter(|t| t.running)
        .filter_map(|t| {
            Some((
                t.id.as_str(),
                (t.spec.as_ref().ok()?, t.started_at.as_str()),
            ))
        })
        .collect();
    sidecars
        .iter()
        .filter(|s| s.state == SidecarState::Running)
        .filter_map(|s| {
            let (spec, started) = targets.get(s.target_id.as_str())?;
            (s.target_started.as_deref() == Some(*started) && spec.identity.is_some())
                .then_some((s, *spec))
        })
        .collect()
}

impl State {
    /// The record of target `id` (a new one when there is none).
    pub(super) fn target(&mut self, id: &ContainerId) -> &mut TargetState {
        self.targets.entry(id.clone()).or_default()
    }

    /// The record of target `id`, if there is one.
    pub(super) fn get(&self, id: &ContainerId) -> Option<&TargetState> {
        self.targets.get(id)
    }

    /// The record of `sidecar`, made for `target` (a new one when there is none).
    pub(super) fn sidecar(
        &mut self,
        target: &ContainerId,
        sidecar: &SidecarId,
    ) -> &mut SidecarRecord {
        self.target(target)
            .sidecars
            .entry(sidecar.clone())
            .or_default()
    }

    /// The record of `sidecar`, made for `target`, if there is one.
    pub(super) fn get_sidecar(
        &self,
        target: &ContainerId,
        sidecar: &SidecarId,
    ) -> Option<&SidecarRecord> {
        self.targets.get(target)?.sidecars.get(sidecar)
    }

    /// The targets whose next sidecar is held back at `now` (by ID, as the plan takes them).
    pub(super) fn held(&self, now: Instant) -> HashSet<String> {
        self.targets
            .iter()
            .filter(|(_, t)| t.held(now))
            .map(|(id, _)| id.to_string())
            .collect()
    }

    /// When each backoff expires.
    pub(super) fn holds_until(&self) -> impl Iterator<Item = Instant> + '_ {
        self.targets
            .values()
            .filter_map(|t| t.hold.map(|h| h.until))
    }

    /// When each identity certificate delivered is to be renewed.
    pub(super) fn renewals(&self) -> impl Iterator<Item = Instant> + '_ {
        self.targets
            .values()
            .flat_map(|t| t.sidecars.values())
            .filter_map(|s| s.issued.as_ref().map(|i| i.renew_at))
    }

    /// Forgets, in one pass, what a turn showed is over: targets that are gone (with their
    /// sidecars' records), the refusal of a target not refused any more, sidecars that are gone,
    /// whether a sidecar that is not running listened, and the identity record of a sidecar
    /// whose identity is not renewed any more (unless delivered since `turn_began`: created or
    /// adopted after the observation), so its renewal moment does not wake the loop. Delivery
    /// digests are left to [`State::keep_deliveries`], which the re-delivery pass calls.
    pub(super) fn forget(&mut self, seen: &Seen, turn_began: Instant) {
        self.targets.retain(|id, target| {
            if !seen.targets.contains(id) {
                return false;
            }
            if !seen.refused.contains(id) {
                target.refusal.forget();
            }
            target
                .sidecars
                .retain(|id, s| s.forget(seen.sidecars.get(id).copied(), turn_began));
            true
        });
    }

    /// The re-delivery pass looked at the sidecars `looked_at` says (running, of a running
    /// target): every other one's digest and logged failure are forgotten, so it is delivered
    /// again (and a failure logged again) when a later pass looks at it.
    pub(super) fn keep_deliveries(&mut self, looked_at: impl Fn(&SidecarId) -> bool) {
        for target in self.targets.values_mut() {
            for (id, s) in &mut target.sidecars {
                if !looked_at(id) {
                    s.delivered = None;
                    s.delivery_error.forget();
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn failure(code: i64) -> Failure {
        Failure {
            exit_code: Some(code),
            error: "boom".into(),
        }
    }

    fn issued(at: Instant) -> Issued {
        Issued {
            name: "web".parse().unwrap(),
            at,
            renew_at: at + Duration::from_secs(60),
            expires: std::time::SystemTime::now(),
            ca: 1,
            trust: 2,
        }
    }

    fn ids() -> (ContainerId, SidecarId) {
        ("t".into(), "s".into())
    }

    fn seen(targets: &[&str], sidecars: &[(&str, Presence)]) -> Seen {
        Seen {
            targets: targets.iter().map(|&t| t.into()).collect(),
            refused: HashSet::new(),
            sidecars: sidecars.iter().map(|&(s, p)| (s.into(), p)).collect(),
        }
    }

    #[test]
    fn failures_in_a_row_back_off_and_a_long_run_starts_over() {
        let mut t = TargetState::default();
        let now = Instant::now();
        assert!(!t.held(now));
        assert_eq!(t.hold_back(now), ms(500));
        assert!(t.held(now + ms(499)));
        assert!(!t.held(now + ms(500)));
        assert_eq!(t.hold_back(now + ms(1_000)), ms(1_000));
        assert_eq!(t.hold_back(now + ms(3_000)), ms(2_000));
        let later = now + ms(3_000) + CRASH_FORGET_AFTER;
        assert_eq!(
            t.hold_back(later),
            ms(500),
            "a minute after the last failure"
        );
    }

    #[test]
    fn a_log_once_cause_is_new_when_it_changes_or_came_back_after_it_was_forgotten() {
        let mut l = LogOnce::default();
        assert!(l.is_new("a"));
        assert!(!l.is_new("a"));
        assert!(l.is_new("b"));
        assert!(l.is_new("a"));
        l.forget();
        assert!(l.is_new("a"));
    }

    #[test]
    fn a_failure_cause_is_new_unless_logged_last_or_carried_by_the_predecessor() {
        let mut t = TargetState::default();
        assert!(
            !t.record_failure(failure(1), Some(&failure(1))),
            "a restarted spawner"
        );
        assert_eq!(t.failure, Some(failure(1)));
        assert!(
            t.record_failure(failure(2), Some(&failure(2))),
            "logged last: exit 1"
        );
        assert!(!t.record_failure(failure(2), None));
        let mut fresh = TargetState::default();
        assert!(fresh.record_failure(failure(1), Some(&failure(2))));
        assert!(TargetState::default().record_failure(failure(1), None));
    }

    #[test]
    fn held_lists_only_targets_whose_backoff_runs() {
        let mut s = State::default();
        let now = Instant::now();
        s.target(&"a".into()).hold_back(now);
        s.target(&"b".into());
        assert_eq!(s.held(now), HashSet::from(["a".to_string()]));
        assert!(s.held(now + ms(500)).is_empty());
        assert_eq!(s.holds_until().collect::<Vec<_>>(), [now + ms(500)]);
    }

    #[test]
    fn a_gone_target_is_forgotten_with_its_sidecars() {
        let mut s = State::default();
        let (t, sc) = ids();
        let now = Instant::now();
        s.target(&t).hold_back(now);
        s.sidecar(&t, &sc).delivered = Some(7);
        s.forget(&seen(&["other"], &[("s", Presence::Running)]), now);
        assert!(s.get(&t).is_none());
        assert!(s.held(now).is_empty());
    }

    #[test]
    fn a_refusal_is_forgotten_once_the_target_is_not_refused() {
        let mut s = State::default();
        let t: ContainerId = "t".into();
        assert!(s.target(&t).refusal.is_new("bad label"));
        let mut refused = seen(&["t"], &[]);
        refused.refused.insert(t.clone());
        s.forget(&refused, Instant::now());
        assert!(!s.target(&t).refusal.is_new("bad label"), "still refused");
        s.forget(&seen(&["t"], &[]), Instant::now());
        assert!(s.target(&t).refusal.is_new("bad label"), "refused again");
    }

    #[test]
    fn a_gone_sidecar_keeps_only_its_delivery_until_the_delivery_pass() {
        let mut s = State::default();
        let (t, sc) = ids();
        let now = Instant::now();
        let r = s.sidecar(&t, &sc);
        r.verdict = Some(Verdict::Killed);
        r.delivered = Some(7);
        r.listening = Listen::Yes;
        r.identity_error.is_new("refused");
        s.forget(&seen(&["t"], &[]), now);
        let r = s.get_sidecar(&t, &sc).unwrap();
        assert_eq!(r.verdict, None);
        assert_eq!(r.delivered, Some(7));
        assert_eq!(r.listening, Listen::Unknown);
        assert!(r.identity_error.is_empty());
        s.keep_deliveries(|_| false);
        s.forget(&seen(&["t"], &[]), now);
        assert!(s.get_sidecar(&t, &sc).is_none());
    }

    #[test]
    fn a_stopped_sidecar_keeps_its_verdict_and_forgets_it_listened() {
        let mut s = State::default();
        let (t, sc) = ids();
        let r = s.sidecar(&t, &sc);
        r.verdict = Some(Verdict::Killed);
        r.listening = Listen::Yes;
        s.forget(&seen(&["t"], &[("s", Presence::Stopped)]), Instant::now());
        let r = s.get_sidecar(&t, &sc).unwrap();
        assert_eq!(r.verdict, Some(Verdict::Killed));
        assert_eq!(r.listening, Listen::Unknown);
        s.sidecar(&t, &sc).listening = Listen::Yes;
        s.forget(&seen(&["t"], &[("s", Presence::Running)]), Instant::now());
        assert_eq!(s.get_sidecar(&t, &sc).unwrap().listening, Listen::Yes);
    }

    #[test]
    fn an_identity_record_is_kept_while_renewed_or_when_delivered_this_turn() {
        let mut s = State::default();
        let (t, sc) = ids();
        let before = Instant::now();
        let turn_began = before + ms(10);
        s.sidecar(&t, &sc).issued = Some(issued(before));
        s.forget(&seen(&["t"], &[("s", Presence::Renewed)]), turn_began);
        assert_eq!(s.renewals().count(), 1);
        s.forget(&seen(&["t"], &[("s", Presence::Running)]), turn_began);
        assert_eq!(s.renewals().count(), 0, "no longer renewed");
        s.sidecar(&t, &sc).issued = Some(issued(turn_began));
        s.forget(&seen(&["t"], &[]), turn_began);
        assert_eq!(s.renewals().count(), 1, "delivered after the observation");
    }

    #[test]
    fn the_delivery_pass_forgets_the_sidecars_it_did_not_look_at() {
        let mut s = State::default();
        let t: ContainerId = "t".into();
        for id in ["a", "b"] {
            let r = s.sidecar(&t, &id.into());
            r.delivered = Some(1);
            r.delivery_error.is_new("unreadable");
        }
        s.keep_deliveries(|id| id.as_str() == "a");
        let a = s.get_sidecar(&t, &"a".into()).unwrap();
        assert_eq!((a.delivered, a.delivery_error.is_empty()), (Some(1), false));
        let b = s.get_sidecar(&t, &"b".into()).unwrap();
        assert_eq!((b.delivered, b.delivery_error.is_empty()), (None, true));
    }

    #[test]
    fn seen_tells_renewed_sidecars_from_running_and_stopped_ones() {
        use crate::plan::labels::Identity;
        let plain = TargetSpec {
            image: "tls-sidecar/sidecar:latest".into(),
            listen: "0.0.0.0:8443".parse().unwrap(),
            backend: "127.0.0.1:8080".parse().unwrap(),
            mode: shared::mode::Mode::Http,
            hostname: "web".parse().unwrap(),
            hostname_wildcard: false,
            alt_names: Vec::new(),
            hostname_labelled: false,
            acme_challenge: Default::default(),
            mtls: None,
            identity: None,
            redirect_listen: None,
            hsts: None,
            http3: None,
            backend_protocol: Default::default(),
            alpn: Default::default(),
            proxy_protocol: Default::default(),
            tls_groups: Default::default(),
            exit_when_orphaned: false,
            published_udp_port: None,
            rollout: None,
        };
        let mut spec = plain.clone();
        spec.identity = Some(Identity {
            name: "web".parse().unwrap(),
            admit: None,
            upstreams: Vec::new(),
        });
        let target = |id: &str, spec: &TargetSpec| Target {
            id: id.into(),
            name: format!("n{id}"),
            running: true,
            started_at: "t1".into(),
            spec: Ok(spec.clone()),
        };
        let sidecar = |id: &str, target: &str, started: &str, state| Sidecar {
            id: id.into(),
            name: format!("s{id}"),
            target_id: target.into(),
            target_started: Some(started.into()),
            state,
            created: 0,
            last_failure: None,
            made: Default::default(),
        };
        let targets = [target("a", &spec), target("b", &plain)];
        let sidecars = [
            sidecar("1", "a", "t1", SidecarState::Running),
            sidecar("2", "a", "t0", SidecarState::Running),
            sidecar("3", "b", "t1", SidecarState::Running),
            sidecar("4", "a", "t1", SidecarState::Exited),
            sidecar("5", "gone", "t1", SidecarState::Created),
        ];
        let refused = HashSet::from(["b".to_string()]);
        let seen = Seen::of(&targets, &sidecars, &refused);
        let p = |id: &str| seen.sidecars[&SidecarId::from(id)];
        assert_eq!(p("1"), Presence::Renewed);
        assert_eq!(p("2"), Presence::Running, "a stale namespace");
        assert_eq!(p("3"), Presence::Running, "no identity");
        assert_eq!(p("4"), Presence::Stopped);
        assert_eq!(p("5"), Presence::Stopped);
        assert_eq!(seen.targets.len(), 2);
        assert_eq!(seen.refused, HashSet::from(["b".into()]));
    }
}
