//! What the daemon counts, and its Prometheus text exposition for the admin listener (written
//! through [`shared::prometheus`]). Plain atomics and fixed label sets: every label value comes from a closed list, except the target
//! name of the certificate gauges, which exists only as long as that container does.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use shared::prometheus::{Exposition, Kind};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::certs::source::{Expiry, Source, Tracker};
use crate::engine;
use crate::error::Error;
use crate::plan::reconcile::{Sidecar, SidecarState, Target};

/// A change the daemon makes to a sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActionKind {
    Create,
    Remove,
    /// Start a sidecar that was created and never started (adopt it).
    Start,
    /// Start a replacement that takes an outdated sidecar's listeners over (a roll-out).
    Replace,
}

impl ActionKind {
    const ALL: [ActionKind; 4] = [
        ActionKind::Create,
        ActionKind::Remove,
        ActionKind::Start,
        ActionKind::Replace,
    ];

    fn as_str(self) -> &'static str {
        match self {
            ActionKind::Create => "create",
            ActionKind::Remove => "remove",
            ActionKind::Start => "start",
            ActionKind::Replace => "replace",
        }
    }
}

/// Roll-outs as of the last turn (gauges).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rollouts {
    /// Targets whose serving sidecar is outdated.
    pub(crate) outdated: u64,
    /// Replacements started and not yet settled.
    pub(crate) in_progress: u64,
    pub(crate) paused: bool,
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done: the sidecar runs (create, start) or is gone (remove).
    Ok,
    /// The engine answered with an error (the create is retried with backoff).
    Refused,
    /// The engine did not answer; the turn fails and is retried.
    Unreachable,
    /// Not attempted yet: the image is being pulled, or the target is in its backoff.
    Deferred,
    /// `--dry-run`: logged, not done.
    DryRun,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Refused,
        Outcome::Unreachable,
        Outcome::Deferred,
        Outcome::DryRun,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Unreachable => "unreachable",
            Outcome::Deferred => "deferred",
            Outcome::DryRun => "dry_run",
        }
    }

    /// The outcome of an engine call that failed.
    pub(crate) fn of(e: &Error) -> Outcome {
        if e.is_transport() {
            Outcome::Unreachable
        } else {
            Outcome::Refused
        }
    }
}

/// Why an engine call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EngineCause {
    /// No connection to the socket.
    Connect,
    /// No answer within `--docker-timeout`.
    Timeout,
    /// The connection broke mid-call.
    Io,
    /// The engine answered with an error status (a name conflict, a missing image, a bad mount).
    Api,
}

impl EngineCause {
    const ALL: [EngineCause; 4] = [
        EngineCause::Connect,
        EngineCause::Timeout,
        EngineCause::Io,
        EngineCause::Api,
    ];

    fn as_str(self) -> &'static str {
        match self {
            EngineCause::Connect => "connect",
            EngineCause::Timeout => "timeout",
            EngineCause::Io => "io",
            EngineCause::Api => "api_error",
        }
    }

    fn of(e: &Error) -> Option<EngineCause> {
        use bollard::errors::Error as B;
        use engine::Error as E;
        Some(match e {
            Error::Engine(E::Connect { .. }) => EngineCause::Connect,
            Error::Engine(E::Timeout { .. }) => EngineCause::Timeout,
            Error::Engine(E::Docker {
                source: B::DockerResponseServerError { .. } | B::DockerStreamError { .. },
                ..
            }) => EngineCause::Api,
            Error::Engine(E::Docker { .. }) => EngineCause::Io,
            Error::WriteStatus(_)
            | Error::WriteBundle(_)
            | Error::Identity(_)
            | Error::Deliver(_)
            | Error::Control(_)
            | Error::RolloutRefused(_)
            | Error::AcmeEabKey { .. }
            | Error::AcmeDnsTsigKey { .. }
            | Error::AcmeDns { .. }
            | Error::AcmeCaCert { .. } => return None,
        })
    }
}

/// Upper bounds (seconds) of the event-to-action histogram: a sidecar is normally made or
/// removed within a few hundred ms of its event; the tail shows a loaded engine.
const LATENCY_BOUNDS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative), the last one above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, secs: f64) {
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Targets by what they get, and sidecars by engine state, as of the last turn.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct States {
    /// Running, with a running sidecar in its current namespace.
    pub(crate) served: u64,
    /// Running, no running sidecar yet (being made, failing and backing off, image missing).
    pub(crate) pending: u64,
    /// Running, and refused a sidecar (invalid label, image not allowed).
    pub(crate) refused: u64,
    pub(crate) stopped: u64,
    pub(crate) sidecars_running: u64,
    pub(crate) sidecars_created: u64,
    pub(crate) sidecars_exited: u64,
}

impl States {
    /// Counts a turn's observation; `refused`: the targets its plan refused.
    pub(crate) fn of(
        targets: &[Target],
        sidecars: &[Sidecar],
        refused: &HashSet<String>,
    ) -> States {
        let mut s = States::default();
        let serving: HashSet<(&str, &str)> = sidecars
            .iter()
            .filter(|c| c.state == SidecarState::Running)
            .filter_map(|c| Some((c.target_id.as_str(), c.target_started.as_deref()?)))
            .collect();
        for t in targets {
            let n = if !t.running {
                &mut s.stopped
            } else if refused.contains(&t.id) {
                &mut s.refused
            } else if serving.contains(&(t.id.as_str(), t.started_at.as_str())) {
                &mut s.served
            } else {
                &mut s.pending
            };
            *n += 1;
        }
        for c in sidecars {
            *match c.state {
                SidecarState::Running => &mut s.sidecars_running,
                SidecarState::Created => &mut s.sidecars_created,
                SidecarState::Exited => &mut s.sidecars_exited,
            } += 1;
        }
        s
    }
}

/// Whether the daemon is ready (for `/readyz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// No reconcile turn has finished yet.
    Starting = 0,
    /// The last turn finished.
    Ready = 1,
    /// The last turn failed: the engine did not answer.
    EngineUnreachable = 2,
}

/// Everything the admin listener shows. Shared by the daemon (writes) and the listener (reads).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    readiness: AtomicU8,
    turns_ok: AtomicU64,
    turns_failed: AtomicU64,
    actions: [[AtomicU64; Outcome::ALL.len()]; ActionKind::ALL.len()],
    latency: [Histogram; ActionKind::ALL.len()],
    engine_errors: [AtomicU64; EngineCause::ALL.len()],
    engine_calls: AtomicU64,
    /// ACME orders that ended: issued, failed (retried), failed for good (not retried).
    acme_orders: [AtomicU64; 3],
    /// Identity deliveries: certificates issued, trust bundles alone, failures.
    identity: [AtomicU64; 3],
    states: Mutex<States>,
    rollouts: Mutex<Rollouts>,
    /// Roll-outs that ended: the replacement took over; it failed.
    rollouts_ended: [AtomicU64; 2],
    /// The certificate source of each target's sidecar, for the certificate gauges.
    pub(crate) certs: Tracker,
    /// When events arrived that no turn has acted on yet.
    pub(crate) clock: EventClock,
}

impl Metrics {
    pub(crate) fn readiness(&self) -> Readiness {
        match self.readiness.load(Ordering::Relaxed) {
            1 => Readiness::Ready,
            2 => Readiness::EngineUnreachable,
            _ => Readiness::Starting,
        }
    }

    /// A reconcile turn finished (`Ok`) or failed; a failure is an engine error.
    pub(crate) fn turn(&self, result: &Result<(), Error>) {
        match result {
            Ok(()) => {
                self.turns_ok.fetch_add(1, Ordering::Relaxed);
                self.readiness
                    .store(Readiness::Ready as u8, Ordering::Relaxed);
            }
            Err(e) => {
                self.turns_failed.fetch_add(1, Ordering::Relaxed);
                self.readiness
                    .store(Readiness::EngineUnreachable as u8, Ordering::Relaxed);
                self.engine_error(e);
            }
        }
    }

    /// An action ended. Done ones (`Ok`) whose turn an event started are timed from the event.
    pub(crate) fn action(&self, kind: ActionKind, outcome: Outcome, event_since: Option<Instant>) {
        self.actions[kind as usize][outcome as usize].fetch_add(1, Ordering::Relaxed);
        if let (Outcome::Ok, Some(at)) = (outcome, event_since) {
            self.latency[kind as usize].observe(at.elapsed().as_secs_f64());
        }
    }

    /// An ACME order ended: `Ok`, or failed, permanently or not.
    pub(crate) fn acme_order(&self, outcome: Result<(), bool>) {
        let i = match outcome {
            Ok(()) => 0,
            Err(false) => 1,
            Err(true) => 2,
        };
        self.acme_orders[i].fetch_add(1, Ordering::Relaxed);
    }

    /// An identity delivery ended: a certificate (`Ok(true)`), a trust bundle alone
    /// (`Ok(false)`), or a failure.
    pub(crate) fn identity_delivery(&self, outcome: Result<bool, ()>) {
        let i = match outcome {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(()) => 2,
        };
        self.identity[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The roll-out gauges of the last turn.
    pub(crate) fn rollouts(&self, r: Rollouts) {
        *lock(&self.rollouts) = r;
    }

    /// A roll-out ended for one target: its replacement took over (`true`), or it failed.
    pub(crate) fn rollout_ended(&self, ok: bool) {
        self.rollouts_ended[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// An engine call failed (counted by cause).
    pub(crate) fn engine_error(&self, e: &Error) {
        if let Some(cause) = EngineCause::of(e) {
            self.engine_errors[cause as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the last turn observed, and the engine calls made so far.
    pub(crate) fn observed(&self, states: States, engine_calls: u64) {
        *lock(&self.states) = states;
        self.engine_calls.store(engine_calls, Ordering::Relaxed);
    }

    /// Stamps every wake-up from `events` on the [`EventClock`], then passes it on to `wake`.
    /// Runs until aborted.
    pub(crate) async fn relay(self: Arc<Self>, events: Arc<Notify>, wake: Arc<Notify>) {
        loop {
            events.notified().await;
            self.clock.stamp();
            wake.notify_one();
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut exp = Exposition::with_capacity(4096);
        self.render_loop(&mut exp);
        self.render_latency(&mut exp);
        self.render_states(&mut exp);
        self.render_rollouts(&mut exp);
        self.render_certs(&mut exp);
        exp.finish()
    }

    fn render_loop(&self, exp: &mut Exposition) {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        exp.family(
            "spawner_ready",
            Kind::Gauge,
            "1 once a reconcile turn finished and while the last one did (/readyz answers 200).",
        )
        .sample(&[], u64::from(self.readiness() == Readiness::Ready));
        exp.family(
            "spawner_reconcile_turns_total",
            Kind::Counter,
            "Reconcile turns (observe, plan, act), by result; a failed turn is retried with backoff.",
        )
        .sample(&[("result", "ok")], get(&self.turns_ok))
        .sample(&[("result", "error")], get(&self.turns_failed));
        let mut actions = exp.family(
            "spawner_actions_total",
            Kind::Counter,
            "Sidecar actions, by kind and result.",
        );
        for k in ActionKind::ALL {
            for o in Outcome::ALL {
                let labels = [("kind", k.as_str()), ("result", o.as_str())];
                actions.sample(&labels, get(&self.actions[k as usize][o as usize]));
            }
        }
        let mut causes = exp.family(
            "spawner_engine_errors_total",
            Kind::Counter,
            "Docker engine calls that failed, by cause.",
        );
        for c in EngineCause::ALL {
            causes.sample(
                &[("cause", c.as_str())],
                get(&self.engine_errors[c as usize]),
            );
        }
        let mut orders = exp.family(
            "spawner_acme_orders_total",
            Kind::Counter,
            "ACME orders that ended, by result: issued; failed (retried with backoff); refused (the CA refused for good, not retried).",
        );
        for (r, n) in ["issued", "failed", "refused"]
            .into_iter()
            .zip(&self.acme_orders)
        {
            orders.sample(&[("result", r)], get(n));
        }
        let mut identity = exp.family(
            "spawner_identity_deliveries_total",
            Kind::Counter,
            "Service identity deliveries into sidecars, by result: certificate (a new one, with the trust bundle); trust-bundle (the bundle alone, after a roll-over); failed (retried in 5 s).",
        );
        for (r, n) in ["certificate", "trust-bundle", "failed"]
            .into_iter()
            .zip(&self.identity)
        {
            identity.sample(&[("result", r)], get(n));
        }
        exp.family(
            "spawner_engine_calls_total",
            Kind::Counter,
            "Docker engine API calls made (as of the last reconcile turn).",
        )
        .sample(&[], get(&self.engine_calls));
    }

    fn render_latency(&self, exp: &mut Exposition) {
        let mut latency = exp.family(
            "spawner_event_to_action_seconds",
            Kind::Histogram,
            "From a Docker event's arrival to the sidecar action it caused being done, by kind.",
        );
        for kind in ActionKind::ALL {
            let h = &self.latency[kind as usize];
            let counts = h.buckets.each_ref().map(|b| b.load(Ordering::Relaxed));
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            latency.histogram(&[("kind", kind.as_str())], &LATENCY_BOUNDS, &counts, sum);
        }
    }

    fn render_rollouts(&self, exp: &mut Exposition) {
        let r = *lock(&self.rollouts);
        exp.family(
            "spawner_sidecars_outdated",
            Kind::Gauge,
            "Targets whose sidecar is outdated (its image reference names another image now, or the spawner renders it differently), as of the last reconcile turn.",
        )
        .sample(&[], r.outdated);
        exp.family(
            "spawner_rollouts_in_progress",
            Kind::Gauge,
            "Replacements started that have not taken over or failed yet.",
        )
        .sample(&[], r.in_progress);
        exp.family(
            "spawner_rollout_paused",
            Kind::Gauge,
            "1 while the roll-out is paused after --rollout-max-failures failed targets in a row.",
        )
        .sample(&[], u64::from(r.paused));
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        exp.family(
            "spawner_rollouts_total",
            Kind::Counter,
            "Roll-outs that ended, by result: ok (the replacement took over), failed (the old sidecar kept serving).",
        )
        .sample(&[("result", "ok")], get(&self.rollouts_ended[0]))
        .sample(&[("result", "failed")], get(&self.rollouts_ended[1]));
    }

    fn render_states(&self, exp: &mut Exposition) {
        let s = *lock(&self.states);
        exp.family(
            "spawner_targets",
            Kind::Gauge,
            "Opted-in containers by state, as of the last reconcile turn.",
        )
        .sample(&[("state", "served")], s.served)
        .sample(&[("state", "pending")], s.pending)
        .sample(&[("state", "refused")], s.refused)
        .sample(&[("state", "stopped")], s.stopped);
        exp.family(
            "spawner_sidecars",
            Kind::Gauge,
            "Sidecars of this spawner's label prefix by state, as of the last reconcile turn.",
        )
        .sample(&[("state", "running")], s.sidecars_running)
        .sample(&[("state", "created")], s.sidecars_created)
        .sample(&[("state", "exited")], s.sidecars_exited);
    }

    fn render_certs(&self, exp: &mut Exposition) {
        let certs = self.certs.current();
        let mut sources = exp.family(
            "spawner_certificate_source",
            Kind::Gauge,
            "Certificate each running target's sidecar was given (1 per target).",
        );
        for (name, source) in &certs {
            let labels = [("target", name.as_str()), ("source", source.kind())];
            sources.sample(&labels, 1u64);
        }
        let mut not_after = exp.family(
            "spawner_certificate_not_after_seconds",
            Kind::Gauge,
            "notAfter (unix seconds) of the certificate file each target's sidecar serves, as the spawner reads it.",
        );
        for (name, source) in &certs {
            if let Source::File {
                expiry: Expiry::At(t),
                ..
            } = source
            {
                not_after.sample(&[("target", name.as_str())], *t);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// When the oldest Docker event that no turn has acted on yet arrived. The event watcher wakes
/// the loop through [`Metrics::relay`], which notes the time before passing the wake-up on: a
/// wake-up that arrives while a turn runs is stamped then, not when the loop gets to it.
#[derive(Debug, Default)]
pub(crate) struct EventClock {
    pending: Mutex<Option<Instant>>,
}

impl EventClock {
    /// Notes an arrival, unless an older one is still pending.
    fn stamp(&self) {
        lock(&self.pending).get_or_insert_with(Instant::now);
    }

    /// The arrival of the oldest event not taken yet, and forgets it.
    pub(crate) fn take(&self) -> Option<Instant> {
        lock(&self.pending).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::labels::LabelError;

    fn target(id: &str, running: bool) -> Target {
        Target {
            id: id.into(),
            name: id.into(),
            running,
            started_at: "s1".into(),
            spec: Err(LabelError {
                label: "p.mode".into(),
                value: "udp".into(),
                reason: "expected http or tcp".to_string(),
            }),
        }
    }

    fn sidecar(target: &str, started: &str, state: SidecarState) -> Sidecar {
        Sidecar {
            id: format!("sc-{target}-{started}"),
            name: format!("{target}-tls-sidecar"),
            target_id: target.into(),
            target_started: Some(started.into()),
            state,
            created: 0,
            last_failure: None,
            made: Default::default(),
        }
    }

    #[test]
    fn targets_are_counted_by_what_they_get() {
        let targets = [
            target("served", true),
            target("stale", true),
            target("refused", true),
            target("new", true),
            target("off", false),
        ];
        let sidecars = [
            sidecar("served", "s1", SidecarState::Running),
            sidecar("stale", "s0", SidecarState::Running),
            sidecar("new", "s1", SidecarState::Created),
        ];
        let refused = HashSet::from(["refused".to_string()]);
        let s = States::of(&targets, &sidecars, &refused);
        assert_eq!(
            s,
            States {
                served: 1,
                pending: 2,
                refused: 1,
                stopped: 1,
                sidecars_running: 2,
                sidecars_created: 1,
                sidecars_exited: 0,
            }
        );
    }

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let m = Metrics::default();
        assert!(m.render().contains("spawner_ready 0\n"));
        m.turn(&Ok(()));
        m.action(ActionKind::Create, Outcome::Ok, Some(Instant::now()));
        m.action(ActionKind::Remove, Outcome::Refused, None);
        m.engine_error(&Error::Engine(engine::Error::Timeout {
            op: "list containers",
            timeout: std::time::Duration::from_secs(1),
        }));
        m.acme_order(Ok(()));
        m.acme_order(Err(false));
        m.acme_order(Err(false));
        m.certs.record(
            "id",
            "web",
            "web.test",
            &Source::File {
                path: "/c/live/web.test/fullchain.pem".into(),
                expiry: Expiry::At(1_925_078_400),
            },
        );
        let text = m.render();
        for want in [
            "spawner_ready 1\n",
            "spawner_acme_orders_total{result=\"issued\"} 1\n",
            "spawner_acme_orders_total{result=\"failed\"} 2\n",
            "spawner_acme_orders_total{result=\"refused\"} 0\n",
            "spawner_reconcile_turns_total{result=\"ok\"} 1\n",
            "spawner_actions_total{kind=\"create\",result=\"ok\"} 1\n",
            "spawner_actions_total{kind=\"remove\",result=\"refused\"} 1\n",
            "spawner_actions_total{kind=\"start\",result=\"dry_run\"} 0\n",
            "spawner_engine_errors_total{cause=\"timeout\"} 1\n",
            "spawner_event_to_action_seconds_bucket{kind=\"create\",le=\"0.01\"} 1\n",
            "spawner_event_to_action_seconds_bucket{kind=\"create\",le=\"+Inf\"} 1\n",
            "spawner_event_to_action_seconds_count{kind=\"create\"} 1\n",
            "spawner_event_to_action_seconds_count{kind=\"remove\"} 0\n",
            "spawner_targets{state=\"served\"} 0\n",
            "# TYPE spawner_event_to_action_seconds histogram\n",
            "spawner_certificate_source{target=\"web\",source=\"file\"} 1\n",
            "spawner_certificate_not_after_seconds{target=\"web\"} 1925078400\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        m.turn(&Err(Error::Engine(engine::Error::Timeout {
            op: "list containers",
            timeout: std::time::Duration::from_secs(1),
        })));
        assert_eq!(m.readiness(), Readiness::EngineUnreachable);
        assert!(m.render().contains("spawner_ready 0\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.latency[0].observe(0.2);
        m.latency[0].observe(100.0);
        let text = m.render();
        assert!(
            text.contains("spawner_event_to_action_seconds_bucket{kind=\"create\",le=\"0.1\"} 0\n")
        );
        assert!(text
            .contains("spawner_event_to_action_seconds_bucket{kind=\"create\",le=\"0.25\"} 1\n"));
        assert!(
            text.contains("spawner_event_to_action_seconds_bucket{kind=\"create\",le=\"30\"} 1\n")
        );
        assert!(text
            .contains("spawner_event_to_action_seconds_bucket{kind=\"create\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("spawner_event_to_action_seconds_sum{kind=\"create\"} 100.2\n"));
    }
}
