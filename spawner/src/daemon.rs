//! The reconcile loop: one task owns every change to sidecars, so concurrent events can never
//! race into two sidecars for one target. Each turn observes everything, plans (pure), and
//! executes; it runs on every event, after every reconnect, when a backoff expires, and at least
//! every resync interval. A turn runs its actions concurrently (bounded), but waits for all of them
//! before it ends, so the next turn always observes their effects.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{CertsSource, Config};
use crate::container::{cert_paths, sidecar_body, For};
use crate::docker::Engine;
use crate::error::Error;
use crate::events;
use crate::labels::{sidecar_name, TargetSpec};
use crate::observe::{observe, MANAGED_BY_VALUE};
use crate::reconcile::{plan, steps, Action, RemoveReason};

/// First delay before re-creating a sidecar that exited (or failed to create); doubled per failure.
const CRASH_BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Cap of that delay: a crash-looping image costs at most one container per this long.
const CRASH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A sidecar that ran this long before failing starts the backoff from the beginning again.
const CRASH_FORGET_AFTER: Duration = Duration::from_secs(60);
/// First delay before retrying a failed pull; doubled per failure.
const PULL_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Cap of the pull retry delay.
const PULL_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// First delay before retrying a reconcile turn that failed (engine unreachable); doubled.
const RETRY_MIN: Duration = Duration::from_millis(250);
/// Cap of that delay.
const RETRY_MAX: Duration = Duration::from_secs(5);

fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    min.saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max)
}

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
    pulls: Arc<Mutex<HashMap<String, Pull>>>,
    reported: HashMap<String, String>,
}

/// Runs the daemon until `shutdown`. Sidecars are left running on exit: the data plane must not
/// depend on the control plane.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let engine = Arc::new(Engine::new(
        &cfg.docker_host,
        &cfg.docker_socket,
        cfg.docker_timeout,
    ));
    let wake = Arc::new(Notify::new());
    tracing::info!(
        docker_host = %cfg.docker_host,
        label_prefix = %cfg.label_prefix,
        dry_run = cfg.dry_run,
        "spawner started"
    );
    let watcher = tokio::spawn(events::watch(
        engine.clone(),
        wake.clone(),
        shutdown.clone(),
    ));
    let mut d = Daemon {
        cfg,
        engine,
        wake: wake.clone(),
        holds: Mutex::default(),
        pulls: Arc::default(),
        reported: HashMap::new(),
    };
    let mut failures = 0u32;
    loop {
        let next = match d.turn(&shutdown).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("docker engine reachable again");
                }
                failures = 0;
                d.next_deadline()
            }
            Err(e) => {
                failures += 1;
                let delay = backoff(RETRY_MIN, RETRY_MAX, failures);
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
    tracing::info!("spawner stopped; sidecars left running");
    Ok(())
}

impl Daemon {
    /// When the loop must run again without an event: the resync interval, or a backoff expiring.
    fn next_deadline(&self) -> Instant {
        let now = Instant::now();
        let holds = lock(&self.holds);
        let holds = holds.values().map(|h| h.until);
        let pulls = lock(&self.pulls);
        let pulls = pulls.values().filter_map(|p| p.next_attempt);
        holds
            .chain(pulls)
            .filter(|u| *u > now)
            .fold(now + self.cfg.resync_interval, Instant::min)
    }

    /// One turn: observe, plan, execute. Reports first (no I/O), then the removes, then the
    /// creates, each step concurrently. On shutdown, actions not started yet are skipped; those
    /// in flight finish (each under its own timeouts), so no half-made sidecar is left behind.
    async fn turn(&mut self, shutdown: &CancellationToken) -> Result<(), Error> {
        let observed = observe(
            &self.engine,
            &self.cfg.label_prefix,
            self.cfg.certs.is_some(),
        )
        .await?;
        let now = Instant::now();
        let known: HashSet<&str> = observed.targets.iter().map(|t| t.id.as_str()).collect();
        self.reported.retain(|id, _| known.contains(id.as_str()));
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
        self.execute(steps.removes, shutdown).await?;
        self.execute(steps.creates, shutdown).await
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
                let r = self
                    .remove(&sidecar_id, &target_id, reason)
                    .instrument(span)
                    .await;
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
                tolerate(r, &target_name)
            }
            Action::Report { .. } => Ok(()),
        }
    }

    fn note_failure(&self, target_id: &str) -> Duration {
        let now = Instant::now();
        let mut holds = lock(&self.holds);
        let failures = match holds.get(target_id) {
            Some(h) if now.duration_since(h.last_failure) < CRASH_FORGET_AFTER => h.failures + 1,
            _ => 1,
        };
        let delay = backoff(CRASH_BACKOFF_MIN, CRASH_BACKOFF_MAX, failures);
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

    async fn remove(
        &self,
        sidecar_id: &str,
        target_id: &str,
        reason: RemoveReason,
    ) -> Result<(), Error> {
        if reason == RemoveReason::Exited {
            let delay = self.note_failure(target_id);
            tracing::warn!(recreate_in = ?delay, "sidecar exited while its target runs");
        }
        if self.cfg.dry_run {
            tracing::info!(reason = reason.as_str(), "dry run: would remove sidecar");
            return Ok(());
        }
        self.engine.remove(sidecar_id).await?;
        tracing::info!(reason = reason.as_str(), "sidecar removed");
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
            return Ok(());
        }
        if self.cfg.dry_run {
            tracing::info!(image = %spec.image, "dry run: would create sidecar");
            return Ok(());
        }
        if !self.image_ready(&spec.image).await? {
            return Ok(());
        }
        let name = sidecar_name(target_name);
        let use_certs = self.certs_exist(&spec.hostname).await;
        let body = sidecar_body(
            &self.cfg,
            &For {
                id: target_id,
                started_at,
                spec,
            },
            use_certs,
        );
        let id = match self.engine.create(&name, body.clone()).await {
            Ok(id) => id,
            Err(e) if e.status_code() == Some(409) && self.free_name(&name).await? => {
                self.engine.create(&name, body).await?
            }
            Err(e) if e.status_code().is_some() => {
                let delay = self.note_failure(target_id);
                tracing::warn!(error = %format!("{e:#}"), sidecar = %name, retry_in = ?delay, "cannot create sidecar");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = self.engine.start(&id).await {
            let delay = self.note_failure(target_id);
            tracing::warn!(error = %format!("{e:#}"), sidecar = %name, retry_in = ?delay, "cannot start sidecar");
            self.engine.remove(&id).await?;
            return Ok(());
        }
        tracing::info!(sidecar = %name, image = %spec.image, listen = %spec.listen, backend = %spec.backend, "sidecar started");
        Ok(())
    }

    /// The sidecar name is taken. Removes the holder only if it is one of ours (by label, checked
    /// on the container itself, never by the name alone). True when the name is free now.
    async fn free_name(&self, name: &str) -> Result<bool, Error> {
        let Some(info) = self.engine.inspect(name).await? else {
            return Ok(true);
        };
        let labels = info.config.and_then(|c| c.labels).unwrap_or_default();
        let managed =
            shared::schema::label_name(&self.cfg.label_prefix, shared::schema::label::MANAGED_BY);
        if labels.get(&managed).map(String::as_str) != Some(MANAGED_BY_VALUE) {
            tracing::warn!(sidecar = %name, "sidecar name taken by a container the spawner does not manage");
            return Ok(false);
        }
        let Some(id) = info.id else { return Ok(false) };
        self.engine.remove(&id).await?;
        tracing::info!(sidecar = %name, "removed stale sidecar holding the name");
        Ok(true)
    }

    /// With a host directory, uses the certificates only if both files exist (so a missing
    /// certificate means self-signed, not a crash loop). A named volume cannot be looked into.
    async fn certs_exist(&self, hostname: &str) -> bool {
        match &self.cfg.certs {
            None => false,
            Some(CertsSource::Volume(_)) => true,
            Some(CertsSource::HostDir(dir)) => {
                let (cert, key) = cert_paths(hostname);
                let host = |p: &str| {
                    format!(
                        "{dir}{}",
                        p.trim_start_matches(crate::container::CERTS_MOUNT)
                    )
                };
                let exists =
                    |p: String| async move { tokio::fs::try_exists(p).await.unwrap_or(false) };
                exists(host(&cert)).await && exists(host(&key)).await
            }
        }
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
                    let delay = backoff(PULL_BACKOFF_MIN, PULL_BACKOFF_MAX, p.failures);
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
    fn backoff_doubles_and_caps() {
        assert_eq!(
            backoff(CRASH_BACKOFF_MIN, CRASH_BACKOFF_MAX, 1),
            Duration::from_millis(500)
        );
        assert_eq!(
            backoff(CRASH_BACKOFF_MIN, CRASH_BACKOFF_MAX, 2),
            Duration::from_secs(1)
        );
        assert_eq!(
            backoff(CRASH_BACKOFF_MIN, CRASH_BACKOFF_MAX, 4),
            Duration::from_secs(4)
        );
        assert_eq!(
            backoff(CRASH_BACKOFF_MIN, CRASH_BACKOFF_MAX, 40),
            CRASH_BACKOFF_MAX
        );
    }
}
