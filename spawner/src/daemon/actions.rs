//! Executing a plan's actions ([`crate::plan::reconcile::Action`]): removing a sidecar, making
//! one (pull its image, create it, deliver its certificates and identity, start it), and
//! adopting one that was created and never started. An engine that answered with an error
//! affects only that action (the target is backed off); an engine that did not answer fails the
//! turn.

use std::collections::HashMap;
use std::sync::Mutex;

use bollard::models::ContainerCreateBody;
use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{lock, short, Daemon};
use crate::certs::source;
use crate::error::Error;
use crate::metrics::{ActionKind, Outcome};
use crate::plan::container::{self, sidecar_body, For};
use crate::plan::failure::{self, Verdict};
use crate::plan::labels::{sidecar_name, TargetSpec};
use crate::plan::reconcile::{Action, ContainerId, RemoveReason, SidecarId};
use shared::schema::MANAGED_BY_SPAWNER;

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

impl Daemon {
    /// Runs independent actions (one step of a plan), at most `max_parallel_actions` at a time,
    /// and returns when all have finished. An engine that answered with an error affects only its
    /// action; an engine that did not answer stops the actions not started yet and fails the
    /// turn (retried with backoff), as does nothing else.
    pub(super) async fn execute(
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
                    .remove(&sidecar_id.into(), reason)
                    .instrument(span)
                    .await;
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
                    .create(&target_id.into(), &target_name, &started_at, &spec)
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
                    .adopt(&sidecar_id.into(), &target_id.into(), spec.as_deref())
                    .instrument(span)
                    .await;
                self.failed(ActionKind::Start, &r);
                tolerate(r, &sidecar_name)
            }
            Action::Replace {
                target_id,
                target_name,
                started_at,
                spec,
                old_id,
                old_name,
            } => {
                let span =
                    tracing::info_span!("target", target = %target_name, id = %short(&target_id));
                let old = (old_id.as_str(), old_name.as_str());
                let r = self
                    .replace(&target_id.into(), &target_name, &started_at, &spec, old)
                    .instrument(span)
                    .await;
                self.failed(ActionKind::Replace, &r);
                tolerate(r, &target_name)
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

    async fn remove(&self, sidecar: &SidecarId, reason: RemoveReason) -> Result<(), Error> {
        if self.cfg.dry_run {
            tracing::info!(reason = reason.as_str(), "dry run: would remove sidecar");
            self.count(ActionKind::Remove, Outcome::DryRun);
            return Ok(());
        }
        self.engine.remove(sidecar.as_str()).await?;
        tracing::info!(reason = reason.as_str(), "sidecar removed");
        self.count(ActionKind::Remove, Outcome::Ok);
        Ok(())
    }

    /// Makes `target` a sidecar, unless it is held back by a backoff or its image is still being
    /// pulled.
    async fn create(
        &self,
        target: &ContainerId,
        target_name: &str,
        started_at: &str,
        spec: &TargetSpec,
    ) -> Result<(), Error> {
        let held = lock(&self.state)
            .get(target)
            .is_some_and(|t| t.held(Instant::now()));
        if held {
            self.count(ActionKind::Create, Outcome::Deferred);
            return Ok(());
        }
        if self.cfg.dry_run {
            tracing::info!(image = %spec.image, "dry run: would create sidecar");
            self.count(ActionKind::Create, Outcome::DryRun);
            return Ok(());
        }
        if !self
            .pulls
            .ready(&self.engine, &self.wake, &spec.image)
            .await?
        {
            self.count(ActionKind::Create, Outcome::Deferred);
            return Ok(());
        }
        let name = sidecar_name(target_name);
        let (body, use_certs) = self
            .request(target, target_name, started_at, spec, None)
            .await;
        let Some(id) = self
            .create_container(&name, body, target, started_at, spec)
            .await?
        else {
            return Ok(());
        };
        self.provision_and_start(target, &name, &id, spec, use_certs)
            .await
    }

    /// Delivers what sidecar `id` (`name`, just created) needs and starts it; a refusal removes
    /// it again.
    async fn provision_and_start(
        &self,
        target: &ContainerId,
        name: &str,
        id: &SidecarId,
        spec: &TargetSpec,
        use_certs: bool,
    ) -> Result<(), Error> {
        let refusal = match self.provision(target, id, spec, use_certs).await {
            Err((_, e)) if e.is_transport() => return Err(e),
            Err(refusal) => Some(refusal),
            Ok(()) => match self.engine.start(id.as_str()).await {
                Ok(()) => None,
                Err(e) => Some(("cannot start sidecar", e.into())),
            },
        };
        if let Some(refusal) = refusal {
            return self
                .undo(ActionKind::Create, target, name, id, refusal)
                .await;
        }
        tracing::info!(sidecar = %name, image = %spec.image, listen = %spec.listen, backend = %spec.backend, "sidecar started");
        self.count(ActionKind::Create, Outcome::Ok);
        Ok(())
    }

    /// Delivers a sidecar's certificates, then its identity; on failure, says which failed.
    async fn provision(
        &self,
        target: &ContainerId,
        id: &SidecarId,
        spec: &TargetSpec,
        with_pair: bool,
    ) -> Result<(), (&'static str, Error)> {
        self.deliver(target, id, spec, with_pair)
            .await
            .map_err(|e| ("cannot deliver certificates", e))?;
        self.deliver_identity(target, id, spec, None)
            .await
            .map_err(|e| ("cannot deliver its identity", e))
    }

    /// Starts a replacement for `old` (its ID and name), the outdated sidecar of `target`,
    /// which takes its listeners over in place (a roll-out). Whatever goes wrong before the
    /// replacement starts, it is removed again and the roll-out counts as failed: the old
    /// sidecar serves on. Its outcome is settled in later turns
    /// ([`Daemon::settle_rollouts`]).
    async fn replace(
        &self,
        target: &ContainerId,
        target_name: &str,
        started_at: &str,
        spec: &TargetSpec,
        (old_id, old_name): (&str, &str),
    ) -> Result<(), Error> {
        if self.cfg.dry_run {
            tracing::info!(image = %spec.image, sidecar = old_name, "dry run: would roll out a replacement");
            self.count(ActionKind::Replace, Outcome::DryRun);
            return Ok(());
        }
        let name = super::rollouts::replacement_name(target_name, old_name);
        let (body, use_certs) = self
            .request(target, target_name, started_at, spec, Some(old_id))
            .await;
        let made = super::rollouts::made_of(&body, &self.rollout_image(&spec.image));
        let id = match self.engine.create(&name, body).await {
            Ok(id) => SidecarId::from(id),
            Err(e) if e.status_code().is_some() => {
                let reason = format!(
                    "cannot create the replacement: {}",
                    crate::plan::failure::escape(&format!("{e:#}"))
                );
                self.rollout_refused(target, target_name, &name, &made, reason);
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let refusal = match self.provision(target, &id, spec, use_certs).await {
            Err((_, e)) if e.is_transport() => return Err(e),
            Err((what, e)) => Some(format!("{what}: {e:#}")),
            Ok(()) => match self.engine.start(id.as_str()).await {
                Ok(()) => None,
                Err(e) if e.is_transport() => return Err(e.into()),
                Err(e) => Some(format!("cannot start the replacement: {e:#}")),
            },
        };
        if let Some(reason) = refusal {
            self.rollout_refused(target, target_name, &name, &made, reason);
            return self.engine.remove(id.as_str()).await.map_err(Error::from);
        }
        tracing::info!(sidecar = %name, replaces = old_name, image = %spec.image, "roll-out: replacement started, taking over");
        self.count(ActionKind::Replace, Outcome::Ok);
        Ok(())
    }

    /// The container request for a new sidecar of `target`: labelled with where its certificate
    /// comes from, and with its predecessor's failure; with `replaces`, a replacement for that
    /// sidecar ([`container::replacement_body`]). True when it is given certificate files.
    async fn request(
        &self,
        target: &ContainerId,
        target_name: &str,
        started_at: &str,
        spec: &TargetSpec,
        replaces: Option<&str>,
    ) -> (ContainerCreateBody, bool) {
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
            .record(target.as_str(), target_name, hostname, &facts.source);
        let use_certs = facts.source.is_file();
        let at = For {
            id: target.as_str(),
            started_at,
            spec,
        };
        let mut body = match replaces {
            None => sidecar_body(&self.cfg, &at, use_certs),
            Some(old) => container::replacement_body(&self.cfg, &at, use_certs, old),
        };
        let labels = body.labels.get_or_insert_with(HashMap::new);
        if let Some(f) = lock(&self.state)
            .get(target)
            .and_then(|t| t.failure.as_ref())
        {
            labels.extend(failure::to_labels(&self.cfg.label_prefix, f));
        }
        labels.extend([source::label(&self.cfg.label_prefix, &facts.given)]);
        (body, use_certs)
    }

    /// Creates the sidecar container `name`; when the name is taken, claims it (see
    /// [`Daemon::claim_name`]). `None` when there is nothing more to do: a sidecar of ours for
    /// this target holds the name, or the engine refused (the target is backed off).
    async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
        target: &ContainerId,
        started_at: &str,
        spec: &TargetSpec,
    ) -> Result<Option<SidecarId>, Error> {
        let created = match self.engine.create(name, body.clone()).await {
            Ok(id) => Ok(id),
            Err(e) if e.status_code() == Some(409) => {
                match self.claim_name(name, target, started_at, spec).await? {
                    Claim::Free => self.engine.create(name, body).await,
                    Claim::Adopted => return Ok(None),
                    Claim::Taken => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match created {
            Ok(id) => Ok(Some(id.into())),
            Err(e) if e.status_code().is_some() => {
                self.refused(target, name, "cannot create sidecar", &e.into());
                self.count(ActionKind::Create, Outcome::Refused);
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Making or starting sidecar `id` (`sidecar` in the log) was refused (`what`, the error):
    /// back off, and remove it.
    async fn undo(
        &self,
        kind: ActionKind,
        target: &ContainerId,
        sidecar: &str,
        id: &SidecarId,
        (what, e): (&'static str, Error),
    ) -> Result<(), Error> {
        self.refused(target, sidecar, what, &e);
        self.count(kind, Outcome::Refused);
        self.engine.remove(id.as_str()).await.map_err(Error::from)
    }

    /// Starts a sidecar that was created and never started (a spawner stopped between the two, or
    /// another spawner is about to start it: starting a running container is a no-op).
    async fn adopt(
        &self,
        sidecar: &SidecarId,
        target: &ContainerId,
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
            let delivered = self.provision(target, sidecar, spec, with_pair).await;
            match delivered {
                Err((_, e)) if e.status_code() == Some(404) => return Ok(()),
                Err(refusal) if !refusal.1.is_transport() => {
                    let name = sidecar.as_str();
                    return self
                        .undo(ActionKind::Start, target, name, sidecar, refusal)
                        .await;
                }
                Err((_, e)) => return Err(e),
                Ok(()) => {}
            }
        }
        match self.engine.start(sidecar.as_str()).await {
            Ok(()) => {
                tracing::info!("never-started sidecar adopted and started");
                self.count(ActionKind::Start, Outcome::Ok);
                Ok(())
            }
            Err(e) if e.status_code() == Some(404) => Ok(()),
            Err(e) if e.status_code().is_some() => {
                let refusal = ("cannot start sidecar", e.into());
                self.undo(
                    ActionKind::Start,
                    target,
                    sidecar.as_str(),
                    sidecar,
                    refusal,
                )
                .await
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
        target: &ContainerId,
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
        let same = labels.get(&key(label::SIDECAR_FOR)).map(String::as_str)
            == Some(target.as_str())
            && labels.get(&key(label::TARGET_STARTED)).map(String::as_str) == Some(started_at);
        if same {
            let state = failure::State::of(&info);
            if failure::judge(&state, "") == Verdict::NeverStarted {
                self.adopt(&id.into(), target, Some(spec)).await?;
            } else {
                tracing::info!(sidecar = %name, "sidecar already made for this target, adopted");
            }
            return Ok(Claim::Adopted);
        }
        self.engine.remove(&id).await?;
        tracing::info!(sidecar = %name, "removed stale sidecar holding the name");
        Ok(Claim::Free)
    }
}
