//! The reconcile loop: one task owns every change to sidecars, so concurrent events can never
//! race into two sidecars for one target. Each turn observes everything, plans (pure), and
//! executes; it runs on every event, after every reconnect, when a backoff expires, and at least
//! every resync interval. A turn runs its actions concurrently (bounded), but waits for all of them
//! before it ends, so the next turn always observes their effects. Containers an event reported
//! down are inspected instead of trusted from the listing, and looked at again shortly until the
//! listing agrees ([`crate::engine::event_reports`]), so no `die` is lost to the engine updating
//! its listing late. A sidecar that ended is judged before it is removed
//! ([`crate::plan::failure`]): killed from outside means replaced at once; failed by itself means
//! replaced with backoff, kept until then (its state and log stay readable), its cause logged
//! once per distinct cause and carried on the next sidecar's labels for `spawner status`.
//!
//! Here: the loop and its turn. The loop's memory between turns is one record per target
//! ([`state`]); the rest is in files by role: the view of the engine ([`listing`]), sidecars that
//! ended ([`failures`]), the actions ([`actions`]) and the image pulls they start ([`pulls`]),
//! certificate delivery ([`certificates`]), identity delivery and renewal ([`identities`]), and
//! waiting for a sidecar to listen before ACME sends its CA there ([`listening`]).

mod actions;
mod certificates;
mod failures;
mod identities;
mod listening;
mod listing;
mod pulls;
mod rollouts;
mod state;

pub(crate) use rollouts::short_image;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::acme;
use crate::certs::source;
use crate::config::Config;
use crate::control;
use crate::engine::event_reports::EventReports;
use crate::engine::events;
use crate::engine::observe::Observed;
use crate::engine::Engine;
use crate::error::Error;
use crate::identity::renewal;
use crate::metrics::{Metrics, States};
use crate::plan::container;
use crate::plan::reconcile::{plan, steps, Action, Steps};

use self::identities::Identity;
use self::listing::{Listing, Look};
use self::pulls::Pulls;
use self::rollouts::Rollouts;
use self::state::{Seen, State};

/// Retrying a reconcile turn that failed (engine unreachable): 250 ms, doubled up to 5 s, so a
/// restarting engine is picked up within 5 s.
const RETRY: shared::backoff::Backoff =
    shared::backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

/// The loop: what it works with, and what it keeps between turns (everything else is
/// re-observed).
struct Daemon {
    cfg: Config,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    /// Wakes the loop: an event, a pull that ended, ACME.
    wake: Arc<Notify>,
    /// Per target, and per sidecar made for it. Behind a lock because the actions of a turn run
    /// concurrently; each touches only its own target's record.
    state: Mutex<State>,
    /// Images being pulled, or waiting to be pulled again.
    pulls: Pulls,
    /// The engine's containers as last seen.
    listing: Listing,
    /// Arrival of the oldest event the current turn acts on (kept until a turn succeeds), to
    /// time its actions.
    event_since: Option<Instant>,
    /// ACME, with `--acme-email`.
    acme: Option<Arc<acme::Manager>>,
    /// A sidecar of an ACME-managed target runs but has not said it listens yet: look again then.
    listening_recheck: Option<Instant>,
    /// Service identity, with `--identity-domain`.
    identity: Option<Identity>,
    /// Roll-outs: images resolved, failures, the pause, `spawner rollout` requests.
    rollouts: Mutex<Rollouts>,
}

/// Runs the daemon until `shutdown`. Sidecars are left running on exit: the data plane must not
/// depend on the control plane.
pub(crate) async fn run(
    cfg: Config,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let engine = Arc::new(Engine::new(
        &cfg.docker_host,
        &cfg.docker_socket,
        cfg.docker_timeout,
    ));
    let wake = Arc::new(Notify::new());
    let event_reports = Arc::new(Mutex::new(EventReports::default()));
    tracing::info!(
        docker_host = %cfg.docker_host,
        label_prefix = %cfg.label_prefix,
        dry_run = cfg.dry_run,
        "spawner started"
    );
    // The watcher's wake-ups pass through the event clock, which stamps their arrival.
    let events_wake = Arc::new(Notify::new());
    let relay = tokio::spawn(metrics.clone().relay(events_wake.clone(), wake.clone()));
    let watcher = tokio::spawn(events::watch(
        engine.clone(),
        cfg.label_prefix.clone(),
        event_reports.clone(),
        events_wake,
        shutdown.clone(),
    ));
    let (requests, inbox) = tokio::sync::mpsc::channel(control::QUEUE);
    let prefix = cfg.label_prefix.clone();
    let mut d = Daemon::new(cfg, engine, metrics, wake.clone(), event_reports, inbox).await?;
    let control = tokio::spawn(control::serve(
        prefix,
        requests,
        lock(&d.rollouts).view.clone(),
        wake,
        shutdown.clone(),
    ));
    d.run(&shutdown).await;
    control.abort();
    watcher.abort();
    relay.abort();
    tracing::info!("spawner stopped; sidecars left running");
    Ok(())
}

impl Daemon {
    /// Sets up ACME and service identity, when configured.
    async fn new(
        cfg: Config,
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
        event_reports: Arc<Mutex<EventReports>>,
        inbox: tokio::sync::mpsc::Receiver<control::Request>,
    ) -> Result<Daemon, Error> {
        let acme = match cfg.acme.clone() {
            Some(acme_cfg) => Some(
                acme::Manager::new(acme_cfg, engine.clone(), wake.clone(), metrics.clone()).await?,
            ),
            None => None,
        };
        let identity = match cfg.identity.clone() {
            Some(id_cfg) => Some(Identity::load(id_cfg).await?),
            None => None,
        };
        Ok(Daemon {
            cfg,
            engine,
            metrics,
            wake,
            state: Mutex::default(),
            pulls: Pulls::default(),
            listing: Listing::new(event_reports),
            event_since: None,
            acme,
            listening_recheck: None,
            identity,
            rollouts: Mutex::new(Rollouts::new(inbox)),
        })
    }

    /// Turns until `shutdown`: again at once when woken, else at [`Daemon::next_deadline`];
    /// after a failed turn, with backoff.
    async fn run(&mut self, shutdown: &CancellationToken) {
        let mut failures = 0u32;
        loop {
            let result = self.turn(shutdown).await;
            self.metrics.turn(&result);
            let next = match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!("docker engine reachable again");
                    }
                    failures = 0;
                    self.next_deadline()
                }
                Err(e) => {
                    failures += 1;
                    let delay = RETRY.delay(failures);
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "reconcile failed");
                    Instant::now() + delay
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// When the loop must run again without an event: the resync interval, a backoff expiring, or
    /// a re-check while the listing lags behind an event.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let recheck = self.listing.recheck_at(now);
        let state = lock(&self.state);
        let acme = self.acme.as_ref().and_then(|a| a.next_wake());
        let identity = self
            .identity
            .as_ref()
            .and_then(|id| renewal::next_wake(state.renewals(), *lock(&id.retry), now));
        let rollouts: Vec<Instant> = lock(&self.rollouts)
            .next_wake(self.cfg.rollout.delay)
            .collect();
        state
            .holds_until()
            .chain(rollouts)
            .chain(self.pulls.next_attempts())
            .chain(acme)
            .filter(|u| *u > now)
            // Past the filter: a renewal that fell due while the turn ran wakes the loop at once.
            .chain(identity)
            .chain(recheck)
            .chain(self.listening_recheck)
            .fold(now + self.cfg.resync_interval, Instant::min)
    }

    /// One turn: observe, plan, execute. Reports first (no I/O), then the removes, then the
    /// creates, each step concurrently. On shutdown, actions not started yet are skipped; those
    /// in flight finish (each under its own timeouts), so no half-made sidecar is left behind.
    async fn turn(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        let turn_began = Instant::now();
        if let Some(at) = self.metrics.clock.take() {
            self.event_since.get_or_insert(at);
        }
        let Look {
            mut observed,
            resync,
        } = self.listing.look(&self.engine, &self.cfg).await?;
        self.resolve_images(&observed, resync).await?;
        self.judge_ended(&mut observed).await?;
        let (steps, refused) = self.decide(&observed, turn_began);
        self.publish(&observed, &refused, resync).await;
        self.execute(steps.removes, shutdown).await?;
        self.rename_replacements(&observed).await?;
        self.execute(steps.creates, shutdown).await?;
        self.follow_up(&observed, &refused, resync).await?;
        self.event_since = None;
        Ok(())
    }

    /// Plans the turn ([`plan`], pure), logs each target's refusal once, and forgets what the
    /// turn showed is over ([`State::forget`]). Returns the steps and the IDs of the targets
    /// refused a sidecar.
    fn decide(&self, observed: &Observed, turn_began: Instant) -> (Steps, HashSet<String>) {
        let late = self.late_replacements(observed);
        let mut state = lock(&self.state);
        let held = state.held(Instant::now());
        let mut actions = plan(
            &observed.targets,
            &observed.sidecars,
            &self.cfg.allow,
            &held,
            &late,
        );
        let busy: HashSet<String> = actions.iter().map(|a| a.target_id().to_string()).collect();
        let refused: HashSet<String> = actions
            .iter()
            .filter(|a| matches!(a, Action::Report { .. }))
            .map(|a| a.target_id().to_string())
            .collect();
        actions.extend(self.pick_rollouts(observed, &refused, &busy));
        let steps = steps(actions);
        let mut refused = HashSet::new();
        for report in &steps.reports {
            let Action::Report {
                target_id,
                target_name,
                problem,
            } = report
            else {
                continue;
            };
            let text = problem.to_string();
            refused.insert(target_id.clone());
            if state
                .target(&target_id.as_str().into())
                .refusal
                .is_new(&text)
            {
                tracing::warn!(container = %target_name, problem = %text, "target refused, no sidecar");
            }
        }
        let seen = Seen::of(&observed.targets, &observed.sidecars, &refused);
        state.forget(&seen, turn_began);
        (steps, refused)
    }

    /// Publishes what the turn observed: the state gauges, and where each target's certificate
    /// comes from.
    async fn publish(&self, observed: &Observed, refused: &HashSet<String>, resync: bool) {
        let states = States::of(&observed.targets, &observed.sidecars, refused);
        self.metrics.observed(states, self.engine.calls());
        let (certs, tracker) = (self.cfg.certs.as_ref(), &self.metrics.certs);
        if self.acme.is_some() {
            let managed = observed.targets.iter().filter(|t| {
                t.spec
                    .as_ref()
                    .is_ok_and(|spec| container::acme_managed(&self.cfg, spec))
            });
            tracker.set_acme(managed.map(|t| t.id.clone()).collect());
        }
        let recorded = source::newest_recorded(&self.cfg.label_prefix, &observed.sidecars, |id| {
            self.listing.labels(id)
        });
        tracker
            .sync(certs, &observed.targets, &recorded, refused, resync)
            .await;
    }

    /// After the actions: ACME learns what to serve, certificates are delivered again where they
    /// changed (at a resync, or when ACME issued some), and identities are renewed.
    async fn follow_up(
        &mut self,
        observed: &Observed,
        refused: &HashSet<String>,
        resync: bool,
    ) -> Result<(), Error> {
        if let Some(acme) = self.acme.clone() {
            let wants = self.acme_wants(observed, refused).await?;
            acme.sync(wants, resync).await;
        }
        let issued = self.acme.as_ref().is_some_and(|a| a.take_issued());
        if resync || issued {
            self.redeliver(observed).await?;
        }
        self.renew_identities(observed, resync).await
    }
}

/// The guarded value even if a panicking holder poisoned the lock: every critical section here
/// leaves the state consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_retry_path_keeps_its_policy() {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let delays = |b: shared::backoff::Backoff| [1, 2, 4, 40].map(|n| b.delay(n));
        assert_eq!(
            delays(state::CRASH_BACKOFF),
            [ms(500), secs(1), secs(4), secs(30)]
        );
        assert_eq!(
            delays(pulls::PULL_BACKOFF),
            [secs(1), secs(2), secs(8), secs(60)]
        );
        assert_eq!(delays(RETRY), [ms(250), ms(500), secs(2), secs(5)]);
    }
}
