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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bollard::models::ContainerSummary;
use futures_util::stream::{self, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::acme;
use crate::certs::delivery;
use crate::certs::source;
use crate::config::{CertsSource, Config};
use crate::engine::event_reports::EventReports;
use crate::engine::events;
use crate::engine::observe::{examine, observe, summary_of, FactsCache, Observed};
use crate::engine::Engine;
use crate::error::Error;
use crate::identity::renewal::{self, Due, Issued, Signer};
use crate::metrics::{ActionKind, Metrics, Outcome, States};
use crate::plan::container::{self, sidecar_body, For};
use crate::plan::failure::{self, Failure, Verdict};
use crate::plan::labels::{sidecar_name, TargetSpec};
use crate::plan::reconcile::{plan, steps, Action, RemoveReason, SidecarState};
use shared::schema::MANAGED_BY_SPAWNER;

/// Re-creating a sidecar that exited (or failed to create): 500 ms after the first failure, so a
/// one-off crash is replaced almost at once, doubled per failure up to 30 s, so a crash-looping
/// image costs at most one container per 30 s.
const CRASH_BACKOFF: shared::backoff::Backoff =
    shared::backoff::Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// A sidecar that ran this long before failing starts the backoff from the beginning again.
const CRASH_FORGET_AFTER: Duration = Duration::from_secs(60);
/// Retrying a failed pull: 1 s, doubled per failure up to 60 s; a registry that refuses is asked
/// once a minute, not once per turn.
const PULL_BACKOFF: shared::backoff::Backoff =
    shared::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
/// Retrying a reconcile turn that failed (engine unreachable): 250 ms, doubled up to 5 s, so a
/// restarting engine is picked up within 5 s.
const RETRY: shared::backoff::Backoff =
    shared::backoff::Backoff::new(Duration::from_millis(250), Duration::from_secs(5));

#[derive(Debug, Clone, Copy)]
struct Hold {
    failures: u32,
    last_failure: Instant,
    until: Instant,
}

#[derive(Debug, Default)]
struct Pull {
    in_flight: bool,
    failures: u32,
    next_attempt: Option<Instant>,
}

/// State the loop keeps between turns; everything else is re-observed.
struct Daemon {
    cfg: Config,
    engine: Arc<Engine>,
    wake: Arc<Notify>,
    /// Behind a lock because the actions of a turn run concurrently; each touches only its own
    /// target's entry.
    holds: Mutex<HashMap<String, Hold>>,
    /// Per sidecar: the digest of the certificate bundle last delivered into it
    /// ([`crate::certs::delivery`]), so a resync delivers again only what changed.
    delivered: Mutex<HashMap<String, u64>>,
    /// Per sidecar: the last re-delivery failure logged (see `redelivery_failed`).
    redelivery_errors: Mutex<HashMap<String, String>>,
    pulls: Arc<Mutex<HashMap<String, Pull>>>,
    reported: HashMap<String, String>,
    /// Containers the event stream reported down (shared with the watcher).
    event_reports: Arc<Mutex<EventReports>>,
    /// Verdicts on ended sidecars by sidecar ID, so each is inspected and its log read once.
    verdicts: HashMap<String, Verdict>,
    /// Per target: the last failure of one of its sidecars (put on the next one's labels), and the
    /// cause last logged (so a crash loop logs its cause once, not once per retry).
    failures: Mutex<HashMap<String, Failure>>,
    logged_causes: Mutex<HashMap<String, String>>,
    /// Inspect results of running targets (see [`FactsCache`]), and when it was last emptied.
    facts: FactsCache,
    facts_since: Instant,
    /// The engine's containers as last seen: a full listing at start, after the event stream was
    /// re-subscribed and at every resync; in between, kept current by inspecting only the
    /// containers events named, so the engine work per event does not grow with the number of
    /// containers. `None`: list everything next turn.
    listing: Option<HashMap<String, ContainerSummary>>,
    metrics: Arc<Metrics>,
    /// Arrival of the oldest event the current turn acts on (kept until a turn succeeds), to
    /// time its actions.
    event_since: Option<Instant>,
    /// ACME, with `--acme-email`.
    acme: Option<Arc<acme::Manager>>,
    /// Service identity, with `--identity-domain`.
    identity: Option<Identity>,
    /// Sidecars of ACME-managed targets whose log showed `listening`: every listener bound, so
    /// a challenge answer put in them is served.
    listening: HashSet<String>,
    /// Per sidecar that has not said it yet, when its log was first read for it.
    listening_since: HashMap<String, Instant>,
    /// A sidecar of an ACME-managed target runs but has not said `listening` yet: look again.
    listening_recheck: Option<Instant>,
}

/// Service identity's state: the signer, and what each sidecar was given.
struct Identity {
    cfg: crate::config::IdentityConfig,
    signer: Mutex<Arc<Signer>>,
    issued: Mutex<HashMap<String, Issued>>,
    /// A delivery failed: try again then (not at once: the engine refused it).
    retry: Mutex<Option<Instant>>,
    /// The last reload or delivery failure logged, per sidecar ("" for the CA itself), so a
    /// broken file costs one line, not one per turn.
    errors: Mutex<HashMap<String, String>>,
}

/// How soon a failed identity delivery is tried again.
const IDENTITY_RETRY: Duration = Duration::from_secs(5);

/// The line a sidecar logs once every listener is bound (they are bound before it serves).
const LISTENING: &str = "listening";
/// How much of a sidecar's log is read looking for [`LISTENING`]: its start-up lines are a few
/// hundred bytes.
const LISTENING_LOG_BYTES: usize = 64 * 1024;
/// How soon a sidecar that has not said [`LISTENING`] yet is looked at again, and for how long
/// before it is assumed to listen ([`listening_verdict`]): a sidecar binds in milliseconds.
const LISTENING_RECHECK: Duration = Duration::from_millis(200);
const LISTENING_GRACE: Duration = Duration::from_secs(5);

/// Whether a sidecar counts as listening: it said so (`said`: its log was read and held the
/// line, or not; `None`: the log could not be read), or it has not for [`LISTENING_GRACE`]
/// since it was first looked at: then its listeners are taken as bound, so a log the engine
/// cannot read back, or a sidecar image that words it otherwise, delays its target's
/// certificate by 5 s instead of stopping it for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listening {
    Yes,
    NotYet,
    Assumed,
}

fn listening_verdict(said: Option<bool>, looked_for: Duration) -> Listening {
    match said {
        Some(true) => Listening::Yes,
        _ if looked_for >= LISTENING_GRACE => Listening::Assumed,
        _ => Listening::NotYet,
    }
}

/// How long reading one target's certificate files may take (a hung network mount).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads a target's bundle off the async threads, under [`READ_TIMEOUT`].
async fn read_bundle(
    dir: &str,
    spec: &TargetSpec,
    with_pair: bool,
    layout: delivery::Layout,
) -> Result<delivery::Bundle, delivery::DeliveryError> {
    let store = std::path::PathBuf::from(dir);
    let hostname = spec.hostname.to_string();
    let ca = spec.mtls.as_ref().map(|m| m.ca.clone());
    let read = tokio::task::spawn_blocking(move || {
        delivery::read(&store, &hostname, with_pair, ca.as_ref(), layout)
    });
    let fail = |reason: &str| delivery::DeliveryError {
        path: dir.into(),
        reason: reason.to_string(),
    };
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Err(_) => Err(fail("reading the certificate files timed out")),
        Ok(Err(_)) => Err(fail("the reading task failed")),
        Ok(Ok(r)) => r,
    }
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
    let acme = match cfg.acme.clone() {
        Some(acme_cfg) => {
            Some(acme::Manager::new(acme_cfg, engine.clone(), wake.clone(), metrics.clone()).await?)
        }
        None => None,
    };
    let identity = match cfg.identity.clone() {
        Some(id_cfg) => {
            let signer = Signer::load_async(&id_cfg).await?;
            tracing::info!(domain = %id_cfg.domain, ttl = ?id_cfg.ttl, "service identity on: issuing identity certificates");
            Some(Identity {
                cfg: id_cfg,
                signer: Mutex::new(signer),
                issued: Mutex::default(),
                retry: Mutex::default(),
                errors: Mutex::default(),
            })
        }
        None => None,
    };
    let mut d = Daemon {
        identity,
        acme,
        listening: HashSet::new(),
        listening_since: HashMap::new(),
        listening_recheck: None,
        cfg,
        engine,
        wake: wake.clone(),
        holds: Mutex::default(),
        delivered: Mutex::default(),
        redelivery_errors: Mutex::default(),
        pulls: Arc::default(),
        reported: HashMap::new(),
        event_reports,
        verdicts: HashMap::new(),
        failures: Mutex::default(),
        logged_causes: Mutex::default(),
        facts: FactsCache::default(),
        facts_since: Instant::now(),
        listing: None,
        metrics,
        event_since: None,
    };
    let mut failures = 0u32;
    loop {
        let result = d.turn(&shutdown).await;
        d.metrics.turn(&result);
        let next = match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("docker engine reachable again");
                }
                failures = 0;
                d.next_deadline()
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
            _ = wake.notified() => {}
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    watcher.abort();
    relay.abort();
    tracing::info!("spawner stopped; sidecars left running");
    Ok(())
}

impl Daemon {
    /// Brings the listing up to date: everything when `touched` is `None` (or nothing is known
    /// yet), else one inspect per container an event named. Containers an event reported down
    /// are inspected either way: a full listing can still show them running (see
    /// [`crate::engine::event_reports`]), an inspect reads the container itself.
    async fn refresh_listing(
        &mut self,
        touched: Option<&HashSet<String>>,
        down: &HashSet<String>,
    ) -> Result<(), Error> {
        let touched = match (&self.listing, touched) {
            (Some(_), Some(touched)) => touched.clone(),
            _ => {
                let all = self.engine.list_containers().await?;
                self.listing = Some(
                    all.into_iter()
                        .filter_map(|c| Some((c.id.clone()?, c)))
                        .collect(),
                );
                HashSet::new()
            }
        };
        let listing = self.listing.get_or_insert_with(HashMap::new);
        for id in touched.union(down) {
            match self.engine.inspect(id).await? {
                None => {
                    listing.remove(id);
                }
                Some(info) => {
                    listing.insert(id.clone(), summary_of(&info));
                }
            }
        }
        Ok(())
    }

    /// When the loop must run again without an event: the resync interval, a backoff expiring, or
    /// a re-check while the listing lags behind an event.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let recheck = lock(&self.event_reports).recheck_at(now);
        let holds = lock(&self.holds);
        let holds = holds.values().map(|h| h.until);
        let pulls = lock(&self.pulls);
        let pulls = pulls.values().filter_map(|p| p.next_attempt);
        let acme = self.acme.as_ref().and_then(|a| a.next_wake());
        let identity = self.identity.as_ref().and_then(|id| {
            let renewals: Vec<Instant> = lock(&id.issued).values().map(|i| i.renew_at).collect();
            renewal::next_wake(renewals, *lock(&id.retry), now)
        });
        holds
            .chain(pulls)
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
        let calls_before = self.engine.calls();
        if let Some(at) = self.metrics.clock.take() {
            self.event_since.get_or_insert(at);
        }
        let (down, touched) = {
            let mut reports = lock(&self.event_reports);
            let down: HashSet<String> = reports.down().map(String::from).collect();
            (down, reports.take_touched())
        };
        // The periodic resync trusts nothing cached.
        let resync = self.facts_since.elapsed() >= self.cfg.resync_interval;
        if resync {
            self.facts_since = Instant::now();
        }
        let touched = if resync { None } else { touched };
        let observed = match self.refresh_listing(touched.as_ref(), &down).await {
            Ok(()) => {
                self.facts.forget(touched);
                let listing = self.listing.iter().flat_map(|l| l.values().cloned());
                observe(
                    &self.engine,
                    listing,
                    &self.cfg.label_prefix,
                    container::offered(&self.cfg),
                    &down,
                    &mut self.facts,
                )
                .await
                .map_err(Error::from)
            }
            Err(e) => Err(e),
        };
        if observed.is_err() {
            // Nothing cached survives a failed look: the engine may have restarted.
            self.facts.forget(None);
            self.listing = None;
        }
        let mut observed = observed?;
        tracing::debug!(
            api_calls = self.engine.calls() - calls_before,
            cached_targets = self.facts.len(),
            "observed"
        );
        lock(&self.event_reports).settle(Instant::now(), |id| observed.listed.get(id).copied());
        self.judge_ended(&mut observed).await?;
        let now = Instant::now();
        let known: HashSet<&str> = observed.targets.iter().map(|t| t.id.as_str()).collect();
        self.reported.retain(|id, _| known.contains(id.as_str()));
        lock(&self.failures).retain(|id, _| known.contains(id.as_str()));
        lock(&self.logged_causes).retain(|id, _| known.contains(id.as_str()));
        let held: HashSet<String> = {
            let mut holds = lock(&self.holds);
            holds.retain(|id, _| known.contains(id.as_str()));
            holds
                .iter()
                .filter(|(_, h)| h.until > now)
                .map(|(id, _)| id.clone())
                .collect()
        };
        let steps = steps(plan(
            &observed.targets,
            &observed.sidecars,
            &self.cfg.allow,
            &held,
        ));
        let mut reported_now = HashSet::new();
        for report in steps.reports {
            if let Action::Report {
                target_id,
                target_name,
                problem,
            } = report
            {
                let text = problem.to_string();
                reported_now.insert(target_id.clone());
                if self.reported.get(&target_id) != Some(&text) {
                    tracing::warn!(container = %target_name, problem = %text, "target refused, no sidecar");
                    self.reported.insert(target_id, text);
                }
            }
        }
        self.reported.retain(|id, _| reported_now.contains(id));
        let states = States::of(&observed.targets, &observed.sidecars, &reported_now);
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
        let listing = self.listing.as_ref();
        let recorded = source::newest_recorded(&self.cfg.label_prefix, &observed.sidecars, |id| {
            listing?.get(id)?.labels.as_ref()
        });
        tracker
            .sync(certs, &observed.targets, &recorded, &reported_now, resync)
            .await;
        self.execute(steps.removes, shutdown).await?;
        self.execute(steps.creates, shutdown).await?;
        if let Some(acme) = self.acme.clone() {
            let wants = self.acme_wants(&observed, &reported_now).await?;
            acme.sync(wants, resync).await;
        }
        let issued = self.acme.as_ref().is_some_and(|a| a.take_issued());
        if resync || issued {
            self.redeliver(&observed).await?;
        }
        self.renew_identities(&observed, resync, turn_began).await?;
        self.event_since = None;
        Ok(())
    }

    /// What ACME is asked for this turn: the names of every running ACME-managed target that is
    /// served, with its sidecars that are listening (a challenge answer is put only where it is
    /// served). A target whose sidecar has not said so yet waits for a later turn, so the CA is
    /// never sent to a port nobody has bound.
    async fn acme_wants(
        &mut self,
        observed: &Observed,
        refused: &HashSet<String>,
    ) -> Result<Vec<acme::Want>, Error> {
        let running: HashSet<&str> = observed
            .sidecars
            .iter()
            .filter(|s| s.state == SidecarState::Running)
            .map(|s| s.id.as_str())
            .collect();
        self.listening.retain(|id| running.contains(id.as_str()));
        self.listening_since
            .retain(|id, _| running.contains(id.as_str()));
        self.listening_recheck = None;
        let mut by_target: HashMap<&str, Vec<&crate::plan::reconcile::Sidecar>> = HashMap::new();
        for s in observed
            .sidecars
            .iter()
            .filter(|s| s.state == SidecarState::Running)
        {
            by_target.entry(s.target_id.as_str()).or_default().push(s);
        }
        let mut wants = Vec::new();
        for t in &observed.targets {
            let Ok(spec) = &t.spec else { continue };
            if !t.running || refused.contains(&t.id) || !container::acme_managed(&self.cfg, spec) {
                continue;
            }
            let mut sidecars = Vec::new();
            for s in by_target.get(t.id.as_str()).into_iter().flatten() {
                if s.target_started.as_deref() != Some(t.started_at.as_str()) {
                    continue;
                }
                if !self.listening.contains(&s.id) {
                    let said = match self
                        .engine
                        .log_head_contains(&s.id, LISTENING, LISTENING_LOG_BYTES)
                        .await
                    {
                        Ok(said) => Ok(said),
                        Err(e) if e.is_transport() => return Err(e.into()),
                        // A log driver the engine cannot read back (`none`, some remote ones).
                        Err(e) => Err(e),
                    };
                    let since = *self
                        .listening_since
                        .entry(s.id.clone())
                        .or_insert_with(Instant::now);
                    match listening_verdict(said.as_ref().ok().copied(), since.elapsed()) {
                        Listening::Yes => {}
                        Listening::NotYet => {
                            self.listening_recheck = Some(Instant::now() + LISTENING_RECHECK);
                            continue;
                        }
                        Listening::Assumed => match &said {
                            Err(e) => {
                                tracing::warn!(sidecar = %s.name, error = %format!("{e:#}"), "cannot read the sidecar's log to see it listening; assuming it does after 5 s")
                            }
                            Ok(_) => {
                                tracing::info!(sidecar = %s.name, "the sidecar has not logged `listening` in 5 s; assuming it listens")
                            }
                        },
                    }
                    self.listening.insert(s.id.clone());
                    self.listening_since.remove(&s.id);
                }
                sidecars.push(s.id.clone());
            }
            if sidecars.is_empty() {
                continue;
            }
            wants.push(acme::Want {
                names: spec.names().cloned().collect(),
                challenge: spec.acme_challenge,
                sidecars,
            });
        }
        Ok(wants)
    }

    /// Refines the listing's view of sidecars that are not running in their running target's
    /// current namespace (the only ones whose end matters): inspects each once, and reacts to how
    /// it ended (see [`failure::judge`]). Created-and-never-started ones stay `Created` (adopted
    /// by the plan); one that is running after all counts as running.
    async fn judge_ended(&mut self, observed: &mut Observed) -> Result<(), Error> {
        let targets: HashMap<&str, (&str, &str)> = observed
            .targets
            .iter()
            .filter(|t| t.running)
            .map(|t| (t.id.as_str(), (t.name.as_str(), t.started_at.as_str())))
            .collect();
        let ids: HashSet<&str> = observed.sidecars.iter().map(|s| s.id.as_str()).collect();
        self.verdicts.retain(|id, _| ids.contains(id.as_str()));
        {
            let mut failures = lock(&self.failures);
            for s in &observed.sidecars {
                if let Some(f) = &s.last_failure {
                    // A restarted spawner learns the last failure from the sidecar carrying it.
                    failures
                        .entry(s.target_id.clone())
                        .or_insert_with(|| f.clone());
                }
            }
        }
        let mut gone = HashSet::new();
        for s in &mut observed.sidecars {
            if s.state == SidecarState::Running {
                continue;
            }
            let Some((target_name, started_at)) = targets.get(s.target_id.as_str()) else {
                continue;
            };
            if s.target_started.as_deref() != Some(*started_at) {
                continue;
            }
            let verdict = match self.verdicts.get(&s.id) {
                Some(v) => v.clone(),
                None => {
                    let Some(v) = examine(&self.engine, &s.id).await? else {
                        gone.insert(s.id.clone());
                        continue;
                    };
                    if matches!(v, Verdict::Killed | Verdict::Failed(_)) {
                        let span = tracing::info_span!("target", target = %target_name, id = %short(&s.target_id));
                        span.in_scope(|| {
                            self.ended(&s.target_id, &s.name, s.last_failure.as_ref(), &v)
                        });
                        self.verdicts.insert(s.id.clone(), v.clone());
                    }
                    v
                }
            };
            s.state = match verdict {
                Verdict::Running => SidecarState::Running,
                Verdict::NeverStarted => SidecarState::Created,
                Verdict::Killed | Verdict::Failed(_) => SidecarState::Exited,
            };
        }
        observed.sidecars.retain(|s| !gone.contains(&s.id));
        Ok(())
    }

    /// A sidecar of a running target ended: killed from outside (replaced at once) or failed
    /// (replaced after a backoff; its cause logged when it differs from the last one, which a
    /// restarted spawner reads from `predecessor`, the failure the sidecar's labels carry).
    fn ended(&self, target_id: &str, sidecar: &str, predecessor: Option<&Failure>, v: &Verdict) {
        match v {
            Verdict::Killed => {
                tracing::info!(sidecar, "sidecar killed from outside, replacing it");
            }
            Verdict::Failed(f) => {
                let delay = self.note_failure(target_id);
                self.note_cause(target_id, f.clone(), predecessor, |new| {
                    if new {
                        tracing::warn!(sidecar, exit_code = ?f.exit_code, error = %f.error, recreate_in = ?delay, "sidecar exited while its target runs");
                    } else {
                        tracing::debug!(sidecar, exit_code = ?f.exit_code, recreate_in = ?delay, "sidecar exited again, same cause");
                    }
                });
            }
            Verdict::Running | Verdict::NeverStarted => {}
        }
    }

    /// Records a target's latest failure; `log(true)` when its cause is new (not the one logged
    /// last for this target, nor `predecessor`'s), `log(false)` when it repeats.
    fn note_cause(
        &self,
        target_id: &str,
        f: Failure,
        predecessor: Option<&Failure>,
        log: impl FnOnce(bool),
    ) {
        let cause = f.to_string();
        let mut logged = lock(&self.logged_causes);
        let last = logged
            .get(target_id)
            .cloned()
            .or_else(|| predecessor.map(Failure::to_string));
        log(last.as_deref() != Some(cause.as_str()));
        logged.insert(target_id.to_string(), cause);
        drop(logged);
        lock(&self.failures).insert(target_id.to_string(), f);
    }

    /// Runs independent actions (one step of a plan), at most `max_parallel_actions` at a time,
    /// and returns when all have finished. An engine that answered with an error affects only its
    /// action; an engine that did not answer stops the actions not started yet and fails the
    /// turn (retried with backoff), as does nothing else.
    async fn execute(
        &self,
        actions: Vec<Action>,
        shutdown: &CancellationToken,
    ) -> Result<(), Error> {
        let unreachable: Mutex<Option<Error>> = Mutex::new(None);
        stream::iter(actions)
            .for_each_concurrent(self.cfg.max_parallel_actions, |action| {
                let unreachable = &unreachable;
                async move {
                    if shutdown.is_cancelled() || lock(unreachable).is_some() {
                        return;
                    }
                    if let Err(e) = self.act(action).await {
                        lock(unreachable).get_or_insert(e);
                    }
                }
            })
            .await;
        match unreachable.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Executes one action in its own span; `Err` only when the engine did not answer.
    async fn act(&self, action: Action) -> Result<(), Error> {
        match action {
            Action::Remove {
                sidecar_id,
                sidecar_name,
                target_id,
                reason,
            } => {
                let span = tracing::info_span!("sidecar", target = %short(&target_id), sidecar = %sidecar_name);
                let r = self.remove(&sidecar_id, reason).instrument(span).await;
                self.failed(ActionKind::Remove, &r);
                tolerate(r, &sidecar_name)
            }
            Action::Create {
                target_id,
                target_name,
                started_at,
                spec,
            } => {
                let span =
                    tracing::info_span!("target", target = %target_name, id = %short(&target_id));
                let r = self
                    .create(&target_id, &target_name, &started_at, &spec)
                    .instrument(span)
                    .await;
                self.failed(ActionKind::Create, &r);
                tolerate(r, &target_name)
            }
            Action::Start {
                sidecar_id,
                sidecar_name,
                target_id,
                spec,
            } => {
                let span = tracing::info_span!("sidecar", target = %short(&target_id), sidecar = %sidecar_name);
                let r = self
                    .adopt(&sidecar_id, &target_id, spec.as_deref())
                    .instrument(span)
                    .await;
                self.failed(ActionKind::Start, &r);
                tolerate(r, &sidecar_name)
            }
            Action::Report { .. } => Ok(()),
        }
    }

    /// Counts an action that ended with an engine error (the others count where they end).
    fn failed(&self, kind: ActionKind, r: &Result<(), Error>) {
        if let Err(e) = r {
            self.metrics.action(kind, Outcome::of(e), None);
            self.metrics.engine_error(e);
        }
    }

    /// Counts an action that ended without an engine error.
    fn count(&self, kind: ActionKind, outcome: Outcome) {
        self.metrics.action(kind, outcome, self.event_since);
    }

    fn note_failure(&self, target_id: &str) -> Duration {
        let now = Instant::now();
        let mut holds = lock(&self.holds);
        let failures = match holds.get(target_id) {
            Some(h) if now.duration_since(h.last_failure) < CRASH_FORGET_AFTER => h.failures + 1,
            _ => 1,
        };
        let delay = CRASH_BACKOFF.delay(failures);
        holds.insert(
            target_id.to_string(),
            Hold {
                failures,
                last_failure: now,
                until: now + delay,
            },
        );
        delay
    }

    async fn remove(&self, sidecar_id: &str, reason: RemoveReason) -> Result<(), Error> {
        if self.cfg.dry_run {
            tracing::info!(reason = reason.as_str(), "dry run: would remove sidecar");
            self.count(ActionKind::Remove, Outcome::DryRun);
            return Ok(());
        }
        self.engine.remove(sidecar_id).await?;
        tracing::info!(reason = reason.as_str(), "sidecar removed");
        self.count(ActionKind::Remove, Outcome::Ok);
        Ok(())
    }

    async fn create(
        &self,
        target_id: &str,
        target_name: &str,
        started_at: &str,
        spec: &TargetSpec,
    ) -> Result<(), Error> {
        if lock(&self.holds)
            .get(target_id)
            .is_some_and(|h| h.until > Instant::now())
        {
            self.count(ActionKind::Create, Outcome::Deferred);
            return Ok(());
        }
        if self.cfg.dry_run {
            tracing::info!(image = %spec.image, "dry run: would create sidecar");
            self.count(ActionKind::Create, Outcome::DryRun);
            return Ok(());
        }
        if !self.image_ready(&spec.image).await? {
            self.count(ActionKind::Create, Outcome::Deferred);
            return Ok(());
        }
        let name = sidecar_name(target_name);
        let hostname = spec.hostname.as_str();
        let store = source::look(self.cfg.certs.as_ref(), hostname).await;
        let facts = source::judge(&source::Inputs {
            recorded: None,
            acme: container::acme_managed(&self.cfg, spec),
            hostname,
            store: &store,
            served: None,
        });
        self.metrics
            .certs
            .record(target_id, target_name, hostname, &facts.source);
        let use_certs = facts.source.is_file();
        let mut body = sidecar_body(
            &self.cfg,
            &For {
                id: target_id,
                started_at,
                spec,
            },
            use_certs,
        );
        if let Some(f) = lock(&self.failures).get(target_id) {
            body.labels
                .get_or_insert_with(HashMap::new)
                .extend(failure::to_labels(&self.cfg.label_prefix, f));
        }
        body.labels
            .get_or_insert_with(HashMap::new)
            .extend([source::label(&self.cfg.label_prefix, &facts.given)]);
        let created = match self.engine.create(&name, body.clone()).await {
            Ok(id) => Ok(id),
            Err(e) if e.status_code() == Some(409) => {
                match self.claim_name(&name, target_id, started_at, spec).await? {
                    Claim::Free => self.engine.create(&name, body).await,
                    Claim::Adopted => return Ok(()),
                    Claim::Taken => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let id = match created {
            Ok(id) => id,
            Err(e) if e.status_code().is_some() => {
                self.refused(target_id, &name, "cannot create sidecar", &e.into());
                self.count(ActionKind::Create, Outcome::Refused);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = self.deliver(&id, spec, use_certs).await {
            if e.is_transport() {
                return Err(e);
            }
            self.refused(target_id, &name, "cannot deliver certificates", &e);
            self.count(ActionKind::Create, Outcome::Refused);
            self.engine.remove(&id).await?;
            return Ok(());
        }
        if let Err(e) = self.deliver_identity(&id, spec, None).await {
            if e.is_transport() {
                return Err(e);
            }
            self.refused(target_id, &name, "cannot deliver its identity", &e);
            self.count(ActionKind::Create, Outcome::Refused);
            self.engine.remove(&id).await?;
            return Ok(());
        }
        if let Err(e) = self.engine.start(&id).await {
            self.refused(target_id, &name, "cannot start sidecar", &e.into());
            self.count(ActionKind::Create, Outcome::Refused);
            self.engine.remove(&id).await?;
            return Ok(());
        }
        tracing::info!(sidecar = %name, image = %spec.image, listen = %spec.listen, backend = %spec.backend, "sidecar started");
        self.count(ActionKind::Create, Outcome::Ok);
        Ok(())
    }

    /// The engine refused to create or start a sidecar: back off, and log the cause when new.
    fn refused(&self, target_id: &str, sidecar: &str, what: &'static str, e: &Error) {
        self.metrics.engine_error(e);
        let delay = self.note_failure(target_id);
        let error = failure::escape(&format!("{e:#}"));
        let f = Failure {
            exit_code: None,
            error: error.clone(),
        };
        self.note_cause(target_id, f, None, |new| {
            if new {
                tracing::warn!(error = %error, sidecar, retry_in = ?delay, "{what}");
            } else {
                tracing::debug!(sidecar, retry_in = ?delay, "{what} again, same cause");
            }
        });
    }

    /// Writes this target's certificate bundle ([`crate::certs::delivery`]) into the sidecar's own
    /// volume: its chain and key when `with_pair`, its client CA with mutual TLS. Nothing to do
    /// without a `--certs-from` directory. Records the digest of what was delivered.
    async fn deliver(
        &self,
        sidecar_id: &str,
        spec: &TargetSpec,
        with_pair: bool,
    ) -> Result<(), Error> {
        let Some(CertsSource::HostDir(dir)) = &self.cfg.certs else {
            return Ok(());
        };
        let bundle = read_bundle(dir, spec, with_pair, self.layout(spec)).await?;
        self.upload_bundle(sidecar_id, dir, &bundle).await
    }

    /// Where a target's pair goes in its sidecar's volume.
    fn layout(&self, spec: &TargetSpec) -> delivery::Layout {
        if container::acme_managed(&self.cfg, spec) {
            delivery::Layout::Acme
        } else {
            delivery::Layout::Flat
        }
    }

    /// Writes a bundle already read into the sidecar's volume and records its digest.
    async fn upload_bundle(
        &self,
        sidecar_id: &str,
        dir: &str,
        bundle: &delivery::Bundle,
    ) -> Result<(), Error> {
        if !bundle.is_empty() {
            let archive = bundle.tar().map_err(|e| delivery::DeliveryError {
                path: dir.into(),
                reason: format!("cannot build the archive: {e}"),
            })?;
            self.engine
                .upload(sidecar_id, shared::schema::CERTS_MOUNT, archive)
                .await?;
        }
        lock(&self.delivered).insert(sidecar_id.to_string(), bundle.digest());
        Ok(())
    }

    /// A failed re-delivery, logged when its cause differs from the last one logged for this
    /// sidecar: a broken file costs one line, not one per resync.
    fn redelivery_failed(&self, sidecar: &str, sidecar_id: &str, error: &Error) {
        let text = error.to_string();
        let mut last = lock(&self.redelivery_errors);
        if last.get(sidecar_id) != Some(&text) {
            tracing::warn!(sidecar, error = %text, "cannot deliver certificates again; the sidecar keeps what it has");
            last.insert(sidecar_id.to_string(), text);
        }
    }

    /// At a resync: every running sidecar whose target's files changed since they were delivered
    /// (a renewal) gets them again; one serving a self-signed certificate whose target now has
    /// files is removed, so the next turn makes one that serves them.
    async fn redeliver(&self, observed: &Observed) -> Result<(), Error> {
        let Some(CertsSource::HostDir(dir)) = &self.cfg.certs else {
            return Ok(());
        };
        let specs: HashMap<&str, &TargetSpec> = observed
            .targets
            .iter()
            .filter(|t| t.running)
            .filter_map(|t| Some((t.id.as_str(), t.spec.as_ref().ok()?)))
            .collect();
        let names: HashMap<&str, &str> = observed
            .targets
            .iter()
            .map(|t| (t.id.as_str(), t.name.as_str()))
            .collect();
        let running: Vec<_> = observed
            .sidecars
            .iter()
            .filter(|s| s.state == SidecarState::Running)
            .filter_map(|s| Some((s, *specs.get(s.target_id.as_str())?)))
            .collect();
        let gone = |id: &String| !running.iter().any(|(s, _)| &s.id == id);
        lock(&self.delivered).retain(|id, _| !gone(id));
        lock(&self.redelivery_errors).retain(|id, _| !gone(id));
        for (sidecar, spec) in running {
            let labels = self
                .listing
                .as_ref()
                .and_then(|l| l.get(&sidecar.id))
                .and_then(|c| c.labels.as_ref());
            let recorded = source::recorded(&self.cfg.label_prefix, labels);
            let given_files = matches!(
                recorded,
                Some(source::Recorded::File | source::Recorded::Acme)
            );
            let has_files = source::probe(self.cfg.certs.as_ref(), spec.hostname.as_str())
                .await
                .is_file();
            let layout = self.layout(spec);
            // An ACME-managed sidecar reads its directory: a pair that appears is delivered and
            // picked up, no new sidecar needed.
            let given_files = given_files || layout == delivery::Layout::Acme;
            if has_files && !given_files {
                tracing::info!(sidecar = %sidecar.name, "certificate files appeared; replacing the self-signed sidecar");
                self.engine.remove(&sidecar.id).await?;
                lock(&self.delivered).remove(&sidecar.id);
                continue;
            }
            let with_pair = given_files && (layout == delivery::Layout::Flat || has_files);
            let bundle = match read_bundle(dir, spec, with_pair, layout).await {
                Ok(b) => b,
                Err(e) => {
                    self.redelivery_failed(&sidecar.name, &sidecar.id, &e.into());
                    continue;
                }
            };
            if lock(&self.delivered).get(&sidecar.id) == Some(&bundle.digest()) {
                continue;
            }
            match self.upload_bundle(&sidecar.id, dir, &bundle).await {
                Ok(()) => {
                    lock(&self.redelivery_errors).remove(&sidecar.id);
                    if layout == delivery::Layout::Acme && has_files {
                        // The gauges follow the certificate it now serves.
                        let hostname = spec.hostname.as_str();
                        let store = source::look(self.cfg.certs.as_ref(), hostname).await;
                        let facts = source::judge(&source::Inputs {
                            recorded: Some(recorded.as_ref().unwrap_or(&source::Recorded::Acme)),
                            acme: true,
                            hostname,
                            store: &store,
                            served: None,
                        });
                        let name = names
                            .get(sidecar.target_id.as_str())
                            .copied()
                            .unwrap_or_default();
                        self.metrics.certs.record(
                            &sidecar.target_id,
                            name,
                            hostname,
                            &facts.source,
                        );
                    }
                    tracing::info!(sidecar = %sidecar.name, "certificates delivered (changed since last delivery, or first look since start)")
                }
                Err(e) if e.is_transport() => return Err(e),
                Err(e) => self.redelivery_failed(&sidecar.name, &sidecar.id, &e),
            }
        }
        Ok(())
    }

    /// Issues the sidecar a certificate for its target's identity (or, with `trust_only`, only
    /// the current trust bundle) and writes it into the sidecar's identity volume. Nothing to do
    /// without identities or for a target without one.
    async fn deliver_identity(
        &self,
        sidecar_id: &str,
        spec: &TargetSpec,
        trust_only: Option<&Issued>,
    ) -> Result<(), Error> {
        let (Some(id), Some(target)) = (&self.identity, &spec.identity) else {
            return Ok(());
        };
        let signer = lock(&id.signer).clone();
        let (bundle, issued) = match trust_only {
            Some(last) => (
                delivery::Bundle::identity(None, &signer.trust_pem),
                Issued {
                    trust: signer.trust,
                    at: Instant::now(),
                    ..last.clone()
                },
            ),
            None => {
                let now = std::time::SystemTime::now();
                let leaf = signer
                    .authority
                    .issue(&id.cfg.domain, &target.name, id.cfg.ttl, now)?;
                let bundle = delivery::Bundle::identity(
                    Some((&leaf.cert_pem, &leaf.key_pem)),
                    &signer.trust_pem,
                );
                let issued = Issued {
                    name: target.name.clone(),
                    at: Instant::now(),
                    renew_at: renewal::renew_at(Instant::now(), id.cfg.ttl),
                    expires: leaf.not_after,
                    ca: signer.ca,
                    trust: signer.trust,
                };
                (bundle, issued)
            }
        };
        let archive = bundle.tar().map_err(|e| delivery::DeliveryError {
            path: shared::schema::IDENTITY_MOUNT.into(),
            reason: format!("cannot build the archive: {e}"),
        })?;
        let uploaded = self
            .engine
            .upload(sidecar_id, shared::schema::IDENTITY_MOUNT, archive)
            .await;
        self.metrics.identity_delivery(
            uploaded
                .as_ref()
                .map(|()| trust_only.is_none())
                .map_err(|_| ()),
        );
        uploaded?;
        lock(&id.issued).insert(sidecar_id.to_string(), issued);
        lock(&id.errors).remove(sidecar_id);
        Ok(())
    }

    /// Every turn: renews the identity certificates past half their life, and delivers a trust
    /// bundle that changed; at a resync, reloads the CA and the extra roots first. A sidecar the
    /// spawner has no record of (it restarted) gets a fresh certificate.
    async fn renew_identities(
        &self,
        observed: &Observed,
        resync: bool,
        turn_began: Instant,
    ) -> Result<(), Error> {
        let Some(id) = &self.identity else {
            return Ok(());
        };
        if resync {
            match Signer::load_async(&id.cfg).await {
                Ok(signer) => {
                    let old = lock(&id.signer).clone();
                    if signer.ca != old.ca || signer.trust != old.trust {
                        tracing::info!(
                            ca_changed = signer.ca != old.ca,
                            trust_changed = signer.trust != old.trust,
                            "identity CA or trust bundle changed; delivering it"
                        );
                    }
                    *lock(&id.signer) = signer;
                    lock(&id.errors).remove("");
                }
                Err(e) => self.identity_failed(id, "", "the identity CA", &e.to_string()),
            }
        }
        let targets: HashMap<&str, (&TargetSpec, &str)> = observed
            .targets
            .iter()
            .filter(|t| t.running)
            .filter_map(|t| {
                Some((
                    t.id.as_str(),
                    (t.spec.as_ref().ok()?, t.started_at.as_str()),
                ))
            })
            .collect();
        let running: Vec<(&crate::plan::reconcile::Sidecar, &TargetSpec)> = observed
            .sidecars
            .iter()
            .filter(|s| s.state == SidecarState::Running)
            .filter_map(|s| {
                let (spec, started) = targets.get(s.target_id.as_str())?;
                (s.target_started.as_deref() == Some(*started) && spec.identity.is_some())
                    .then_some((s, *spec))
            })
            .collect();
        {
            let looked_at: HashSet<&str> = running.iter().map(|(s, _)| s.id.as_str()).collect();
            lock(&id.issued)
                .retain(|k, v| renewal::keep(v, looked_at.contains(k.as_str()), turn_began));
            let ids: HashSet<&str> = observed.sidecars.iter().map(|s| s.id.as_str()).collect();
            lock(&id.errors).retain(|k, _| k.is_empty() || ids.contains(k.as_str()));
        }
        let signer = lock(&id.signer).clone();
        let now = Instant::now();
        *lock(&id.retry) = None;
        let due: Vec<_> = running
            .into_iter()
            .filter_map(|(sidecar, spec)| {
                let target = spec.identity.as_ref()?;
                let last = lock(&id.issued).get(&sidecar.id).cloned();
                match renewal::due(last.as_ref(), &target.name, now, signer.ca, signer.trust) {
                    Due::Nothing => None,
                    Due::Issue => Some((sidecar, spec, None)),
                    Due::Trust => Some((sidecar, spec, last)),
                }
            })
            .collect();
        // Concurrently, as a turn's actions: after a restart every sidecar is due at once.
        let unreachable: Mutex<Option<Error>> = Mutex::new(None);
        stream::iter(due)
            .for_each_concurrent(self.cfg.max_parallel_actions, |(sidecar, spec, last)| {
                let unreachable = &unreachable;
                async move {
                    if lock(unreachable).is_some() {
                        return;
                    }
                    match self.deliver_identity(&sidecar.id, spec, last.as_ref()).await {
                        Ok(()) => {
                            tracing::debug!(sidecar = %sidecar.name, trust_only = last.is_some(), "identity delivered")
                        }
                        Err(e) if e.is_transport() => {
                            lock(unreachable).get_or_insert(e);
                        }
                        Err(e) => {
                            self.identity_failed(id, &sidecar.id, &sidecar.name, &e.to_string());
                            *lock(&id.retry) = Some(now + IDENTITY_RETRY);
                        }
                    }
                }
            })
            .await;
        match unreachable.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A failed identity reload or delivery, logged when its cause is new for `key`.
    fn identity_failed(&self, id: &Identity, key: &str, what: &str, error: &str) {
        let mut errors = lock(&id.errors);
        if errors.get(key).map(String::as_str) != Some(error) {
            tracing::warn!(
                sidecar = what,
                error,
                "cannot renew the identity; the sidecar keeps what it has"
            );
            errors.insert(key.to_string(), error.to_string());
        }
    }

    /// Starts a sidecar that was created and never started (a spawner stopped between the two, or
    /// another spawner is about to start it: starting a running container is a no-op).
    async fn adopt(
        &self,
        sidecar_id: &str,
        target_id: &str,
        spec: Option<&TargetSpec>,
    ) -> Result<(), Error> {
        if self.cfg.dry_run {
            tracing::info!("dry run: would start the never-started sidecar");
            self.count(ActionKind::Start, Outcome::DryRun);
            return Ok(());
        }
        // Its creator may have stopped before delivering: deliver (again; it is idempotent).
        if let Some(spec) = spec {
            let with_pair = source::probe(self.cfg.certs.as_ref(), spec.hostname.as_str())
                .await
                .is_file();
            match self.deliver(sidecar_id, spec, with_pair).await {
                Err(e) if e.status_code() == Some(404) => return Ok(()),
                Err(e) if !e.is_transport() => {
                    self.refused(target_id, sidecar_id, "cannot deliver certificates", &e);
                    self.count(ActionKind::Start, Outcome::Refused);
                    return self.engine.remove(sidecar_id).await.map_err(Error::from);
                }
                r => r?,
            }
            match self.deliver_identity(sidecar_id, spec, None).await {
                Err(e) if e.status_code() == Some(404) => return Ok(()),
                Err(e) if !e.is_transport() => {
                    self.refused(target_id, sidecar_id, "cannot deliver its identity", &e);
                    self.count(ActionKind::Start, Outcome::Refused);
                    return self.engine.remove(sidecar_id).await.map_err(Error::from);
                }
                r => r?,
            }
        }
        match self.engine.start(sidecar_id).await {
            Ok(()) => {
                tracing::info!("never-started sidecar adopted and started");
                self.count(ActionKind::Start, Outcome::Ok);
                Ok(())
            }
            Err(e) if e.status_code() == Some(404) => Ok(()),
            Err(e) if e.status_code().is_some() => {
                self.refused(target_id, sidecar_id, "cannot start sidecar", &e.into());
                self.count(ActionKind::Start, Outcome::Refused);
                self.engine.remove(sidecar_id).await.map_err(Error::from)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The sidecar name is taken. A holder we do not manage (by label, checked on the container
    /// itself, never by the name alone) is never touched. One of ours for this very target and
    /// namespace (another spawner on the same prefix made it, or our own earlier attempt) is
    /// adopted: started if it never was, else left to the next turn. Any other of ours is stale
    /// and removed by ID.
    async fn claim_name(
        &self,
        name: &str,
        target_id: &str,
        started_at: &str,
        spec: &TargetSpec,
    ) -> Result<Claim, Error> {
        let Some(info) = self.engine.inspect(name).await? else {
            return Ok(Claim::Free);
        };
        let labels = info
            .config
            .clone()
            .and_then(|c| c.labels)
            .unwrap_or_default();
        let key = |l| shared::schema::label_name(&self.cfg.label_prefix, l);
        use shared::schema::label;
        if labels.get(&key(label::MANAGED_BY)).map(String::as_str) != Some(MANAGED_BY_SPAWNER) {
            tracing::warn!(sidecar = %name, "sidecar name taken by a container the spawner does not manage");
            return Ok(Claim::Taken);
        }
        let Some(id) = info.id.clone() else {
            return Ok(Claim::Taken);
        };
        let same = labels.get(&key(label::SIDECAR_FOR)).map(String::as_str) == Some(target_id)
            && labels.get(&key(label::TARGET_STARTED)).map(String::as_str) == Some(started_at);
        if same {
            let state = failure::State::of(&info);
            if failure::judge(&state, "") == Verdict::NeverStarted {
                self.adopt(&id, target_id, Some(spec)).await?;
            } else {
                tracing::info!(sidecar = %name, "sidecar already made for this target, adopted");
            }
            return Ok(Claim::Adopted);
        }
        self.engine.remove(&id).await?;
        tracing::info!(sidecar = %name, "removed stale sidecar holding the name");
        Ok(Claim::Free)
    }

    /// True when the image is present. Otherwise starts (at most one, with backoff) background
    /// pull, so a slow or failing pull never holds up other targets.
    async fn image_ready(&self, image: &str) -> Result<bool, Error> {
        if self.engine.image_exists(image).await? {
            return Ok(true);
        }
        let now = Instant::now();
        let mut pulls = lock(&self.pulls);
        let p = pulls.entry(image.to_string()).or_default();
        if p.in_flight || p.next_attempt.is_some_and(|t| t > now) {
            return Ok(false);
        }
        p.in_flight = true;
        drop(pulls);
        tracing::info!(image, "image missing locally, pulling");
        let (engine, pulls, wake, image) = (
            self.engine.clone(),
            self.pulls.clone(),
            self.wake.clone(),
            image.to_string(),
        );
        tokio::spawn(async move {
            let result = engine.pull(&image).await;
            let mut pulls = pulls.lock().unwrap_or_else(|p| p.into_inner());
            match result {
                Ok(()) => {
                    pulls.remove(&image);
                    tracing::info!(image = %image, "image pulled");
                }
                Err(e) => {
                    let p = pulls.entry(image.clone()).or_default();
                    p.in_flight = false;
                    p.failures += 1;
                    let delay = PULL_BACKOFF.delay(p.failures);
                    p.next_attempt = Some(Instant::now() + delay);
                    tracing::warn!(image = %image, error = %format!("{e:#}"), attempt = p.failures, retry_in = ?delay, "image pull failed");
                }
            }
            drop(pulls);
            wake.notify_one();
        });
        Ok(false)
    }
}

/// Who holds a sidecar's name after a create answered 409.
enum Claim {
    /// Nobody (any more): create again.
    Free,
    /// A sidecar of ours for this target and namespace: nothing to create.
    Adopted,
    /// A container we do not manage: leave it, back off.
    Taken,
}

/// An engine that answered with an error affects only that container: log and go on. An engine
/// that did not answer ends the turn (retried with backoff).
fn tolerate(r: Result<(), Error>, container: &str) -> Result<(), Error> {
    match r {
        Err(e) if !e.is_transport() => {
            tracing::warn!(container, error = %format!("{e:#}"), "docker refused an action");
            Ok(())
        }
        r => r,
    }
}

/// The guarded value even if a panicking holder poisoned the lock: every critical section here
/// leaves the maps consistent.
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
    fn a_sidecar_listens_when_it_says_so_or_is_assumed_to_after_its_rechecks() {
        let ms = Duration::from_millis;
        assert_eq!(listening_verdict(Some(true), ms(0)), Listening::Yes);
        assert_eq!(listening_verdict(Some(false), ms(200)), Listening::NotYet);
        assert_eq!(
            listening_verdict(None, ms(200)),
            Listening::NotYet,
            "an unreadable log"
        );
        assert_eq!(listening_verdict(Some(false), ms(4_999)), Listening::NotYet);
        assert_eq!(
            listening_verdict(Some(false), ms(5_000)),
            Listening::Assumed
        );
        assert_eq!(listening_verdict(None, ms(5_000)), Listening::Assumed);
    }

    #[test]
    fn each_retry_path_keeps_its_policy() {
        let ms = Duration::from_millis;
        let secs = Duration::from_secs;
        let delays = |b: shared::backoff::Backoff| [1, 2, 4, 40].map(|n| b.delay(n));
        assert_eq!(delays(CRASH_BACKOFF), [ms(500), secs(1), secs(4), secs(30)]);
        assert_eq!(delays(PULL_BACKOFF), [secs(1), secs(2), secs(8), secs(60)]);
        assert_eq!(delays(RETRY), [ms(250), ms(500), secs(2), secs(5)]);
    }
}
