//! Service identity in the loop: each sidecar of a target with an identity is given a
//! certificate signed by the identity CA and the trust bundle when it is made, a new certificate
//! past half its life, and the trust bundle again when it changed; the CA and the extra roots are
//! reloaded at every resync. What each sidecar was given is kept in its record
//! ([`super::state::SidecarRecord::issued`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;

use super::state::{renewed, LogOnce};
use super::{lock, Daemon};
use crate::certs::delivery;
use crate::config::IdentityConfig;
use crate::engine::observe::Observed;
use crate::error::Error;
use crate::identity::renewal::{self, Due, Issued, Signer};
use crate::plan::labels::TargetSpec;
use crate::plan::reconcile::{ContainerId, Sidecar, SidecarId};
use shared::service_identity::ServiceName;

/// How soon a failed identity delivery is tried again.
const IDENTITY_RETRY: Duration = Duration::from_secs(5);

/// Service identity's own state: the signer, and when to retry a failed delivery.
pub(super) struct Identity {
    cfg: IdentityConfig,
    signer: Mutex<Arc<Signer>>,
    /// A delivery failed: try again then (not at once: the engine refused it).
    pub(super) retry: Mutex<Option<Instant>>,
    /// The last failure logged reloading the CA, so a broken file costs one line, not one per
    /// resync.
    ca_error: Mutex<LogOnce>,
}

/// A failed identity reload or delivery (of `what`: a sidecar, or the CA).
fn log_failure(what: &str, error: &str) {
    tracing::warn!(
        sidecar = what,
        error,
        "cannot renew the identity; the sidecar keeps what it has"
    );
}

impl Identity {
    /// Loads the CA and the extra roots.
    pub(super) async fn load(cfg: IdentityConfig) -> Result<Identity, Error> {
        let signer = Signer::load_async(&cfg).await?;
        tracing::info!(domain = %cfg.domain, ttl = ?cfg.ttl, "service identity on: issuing identity certificates");
        Ok(Identity {
            cfg,
            signer: Mutex::new(signer),
            retry: Mutex::default(),
            ca_error: Mutex::default(),
        })
    }

    /// Loads the CA and the extra roots again; on failure keeps the ones it has.
    async fn reload(&self) {
        match Signer::load_async(&self.cfg).await {
            Ok(signer) => {
                let old = lock(&self.signer).clone();
                if signer.ca != old.ca || signer.trust != old.trust {
                    tracing::info!(
                        ca_changed = signer.ca != old.ca,
                        trust_changed = signer.trust != old.trust,
                        "identity CA or trust bundle changed; delivering it"
                    );
                }
                *lock(&self.signer) = signer;
                lock(&self.ca_error).forget();
            }
            Err(e) => {
                let error = e.to_string();
                if lock(&self.ca_error).is_new(&error) {
                    log_failure("the identity CA", &error);
                }
            }
        }
    }

    /// What a sidecar is given: a new certificate for `name` with the trust bundle, or, with
    /// `trust_only` (its last record), only the current trust bundle.
    fn issue(
        &self,
        name: &ServiceName,
        trust_only: Option<&Issued>,
    ) -> Result<(delivery::Bundle, Issued), Error> {
        let signer = lock(&self.signer).clone();
        if let Some(last) = trust_only {
            let bundle = delivery::Bundle::identity(None, &signer.trust_pem);
            let issued = Issued {
                trust: signer.trust,
                at: Instant::now(),
                ..last.clone()
            };
            return Ok((bundle, issued));
        }
        let now = std::time::SystemTime::now();
        let leaf = signer
            .authority
            .issue(&self.cfg.domain, name, self.cfg.ttl, now)?;
        let bundle =
            delivery::Bundle::identity(Some((&leaf.cert_pem, &leaf.key_pem)), &signer.trust_pem);
        let issued = Issued {
            name: name.clone(),
            at: Instant::now(),
            renew_at: renewal::renew_at(Instant::now(), self.cfg.ttl),
            expires: leaf.not_after,
            ca: signer.ca,
            trust: signer.trust,
        };
        Ok((bundle, issued))
    }
}

impl Daemon {
    /// Issues the sidecar a certificate for its target's identity (or, with `trust_only`, only
    /// the current trust bundle) and writes it into the sidecar's identity volume. Nothing to do
    /// without identities or for a target without one.
    pub(super) async fn deliver_identity(
        &self,
        target: &ContainerId,
        sidecar: &SidecarId,
        spec: &TargetSpec,
        trust_only: Option<&Issued>,
    ) -> Result<(), Error> {
        let (Some(id), Some(wanted)) = (&self.identity, &spec.identity) else {
            return Ok(());
        };
        let (bundle, issued) = id.issue(&wanted.name, trust_only)?;
        let archive = bundle.tar().map_err(|e| delivery::DeliveryError {
            path: shared::schema::IDENTITY_MOUNT.into(),
            reason: format!("cannot build the archive: {e}"),
        })?;
        let uploaded = self
            .engine
            .upload(sidecar.as_str(), shared::schema::IDENTITY_MOUNT, archive)
            .await;
        self.metrics.identity_delivery(
            uploaded
                .as_ref()
                .map(|()| trust_only.is_none())
                .map_err(|_| ()),
        );
        uploaded?;
        let mut state = lock(&self.state);
        let record = state.sidecar(target, sidecar);
        record.issued = Some(issued);
        record.identity_error.forget();
        Ok(())
    }

    /// Every turn: renews the identity certificates past half their life, and delivers a trust
    /// bundle that changed; at a resync, reloads the CA and the extra roots first. A sidecar the
    /// spawner has no record of (it restarted) gets a fresh certificate. Concurrently, as a
    /// turn's actions: after a restart every sidecar is due at once.
    pub(super) async fn renew_identities(
        &self,
        observed: &Observed,
        resync: bool,
    ) -> Result<(), Error> {
        let Some(id) = &self.identity else {
            return Ok(());
        };
        if resync {
            id.reload().await;
        }
        let now = Instant::now();
        *lock(&id.retry) = None;
        let due = self.identities_due(id, observed, now);
        let unreachable: Mutex<Option<Error>> = Mutex::new(None);
        stream::iter(due)
            .for_each_concurrent(self.cfg.max_parallel_actions, |(sidecar, spec, last)| {
                let unreachable = &unreachable;
                async move {
                    if lock(unreachable).is_some() {
                        return;
                    }
                    let target = ContainerId::from(sidecar.target_id.as_str());
                    let sidecar_id = SidecarId::from(sidecar.id.as_str());
                    let delivered = self
                        .deliver_identity(&target, &sidecar_id, spec, last.as_ref())
                        .await;
                    match delivered {
                        Ok(()) => {
                            tracing::debug!(sidecar = %sidecar.name, trust_only = last.is_some(), "identity delivered")
                        }
                        Err(e) if e.is_transport() => {
                            lock(unreachable).get_or_insert(e);
                        }
                        Err(e) => {
                            let error = e.to_string();
                            let new = lock(&self.state)
                                .sidecar(&target, &sidecar_id)
                                .identity_error
                                .is_new(&error);
                            if new {
                                log_failure(&sidecar.name, &error);
                            }
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

    /// The sidecars whose identity is due at `now` ([`renewal::due`]), with their target's spec
    /// and, when only the trust bundle is due, what they were given last.
    fn identities_due<'a>(
        &self,
        id: &Identity,
        observed: &'a Observed,
        now: Instant,
    ) -> Vec<(&'a Sidecar, &'a TargetSpec, Option<Issued>)> {
        let signer = lock(&id.signer).clone();
        let state = lock(&self.state);
        renewed(&observed.targets, &observed.sidecars)
            .into_iter()
            .filter_map(|(sidecar, spec)| {
                let wanted = spec.identity.as_ref()?;
                let last = state
                    .get_sidecar(
                        &sidecar.target_id.as_str().into(),
                        &sidecar.id.as_str().into(),
                    )
                    .and_then(|r| r.issued.clone());
                match renewal::due(last.as_ref(), &wanted.name, now, signer.ca, signer.trust) {
                    Due::Nothing => None,
                    Due::Issue => Some((sidecar, spec, None)),
                    Due::Trust => Some((sidecar, spec, last)),
                }
            })
            .collect()
    }
}
