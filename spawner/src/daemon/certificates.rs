//! Certificate bundles ([`crate::certs::delivery`]) written into sidecars' own volumes from the
//! `--certs-from` directory: when a sidecar is made, and again at a resync (or when ACME issued
//! some) to every running sidecar whose files changed since they were delivered.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::{lock, Daemon};
use crate::certs::delivery;
use crate::certs::source;
use crate::config::CertsSource;
use crate::engine::observe::Observed;
use crate::error::Error;
use crate::plan::container;
use crate::plan::labels::TargetSpec;
use crate::plan::reconcile::{ContainerId, Sidecar, SidecarId, SidecarState};

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

impl Daemon {
    /// Writes this target's certificate bundle into the sidecar's own volume: its chain and key
    /// when `with_pair`, its client CA with mutual TLS. Nothing to do without a `--certs-from`
    /// directory. Records the digest of what was delivered.
    pub(super) async fn deliver(
        &self,
        target: &ContainerId,
        sidecar: &SidecarId,
        spec: &TargetSpec,
        with_pair: bool,
    ) -> Result<(), Error> {
        let Some(CertsSource::HostDir(dir)) = &self.cfg.certs else {
            return Ok(());
        };
        let bundle = read_bundle(dir, spec, with_pair, self.layout(spec)).await?;
        self.upload_bundle(target, sidecar, dir, &bundle).await
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
        target: &ContainerId,
        sidecar: &SidecarId,
        dir: &str,
        bundle: &delivery::Bundle,
    ) -> Result<(), Error> {
        if !bundle.is_empty() {
            let archive = bundle.tar().map_err(|e| delivery::DeliveryError {
                path: dir.into(),
                reason: format!("cannot build the archive: {e}"),
            })?;
            self.engine
                .upload(sidecar.as_str(), shared::schema::CERTS_MOUNT, archive)
                .await?;
        }
        lock(&self.state).sidecar(target, sidecar).delivered = Some(bundle.digest());
        Ok(())
    }

    /// At a resync: every running sidecar whose target's files changed since they were delivered
    /// (a renewal) gets them again; one serving a self-signed certificate whose target now has
    /// files is removed, so the next turn makes one that serves them.
    pub(super) async fn redeliver(&self, observed: &Observed) -> Result<(), Error> {
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
        let looked_at: HashSet<SidecarId> =
            running.iter().map(|(s, _)| s.id.as_str().into()).collect();
        lock(&self.state).keep_deliveries(|id| looked_at.contains(id));
        for (sidecar, spec) in running {
            let target_name = names
                .get(sidecar.target_id.as_str())
                .copied()
                .unwrap_or_default();
            self.redeliver_to(dir, sidecar, spec, target_name).await?;
        }
        Ok(())
    }

    /// One running sidecar at a resync (see [`Daemon::redeliver`]); `Err` only when the engine
    /// did not answer.
    async fn redeliver_to(
        &self,
        dir: &str,
        sidecar: &Sidecar,
        spec: &TargetSpec,
        target_name: &str,
    ) -> Result<(), Error> {
        let target = ContainerId::from(sidecar.target_id.as_str());
        let id = SidecarId::from(sidecar.id.as_str());
        let recorded = source::recorded(&self.cfg.label_prefix, self.listing.labels(&sidecar.id));
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
            lock(&self.state).sidecar(&target, &id).delivered = None;
            return Ok(());
        }
        let with_pair = given_files && (layout == delivery::Layout::Flat || has_files);
        let bundle = match read_bundle(dir, spec, with_pair, layout).await {
            Ok(b) => b,
            Err(e) => {
                self.redelivery_failed(&target, &id, &sidecar.name, &e.into());
                return Ok(());
            }
        };
        let delivered = lock(&self.state)
            .get_sidecar(&target, &id)
            .and_then(|r| r.delivered);
        if delivered == Some(bundle.digest()) {
            return Ok(());
        }
        match self.upload_bundle(&target, &id, dir, &bundle).await {
            Ok(()) => {
                lock(&self.state)
                    .sidecar(&target, &id)
                    .delivery_error
                    .forget();
                if layout == delivery::Layout::Acme && has_files {
                    let recorded = recorded.as_ref().unwrap_or(&source::Recorded::Acme);
                    self.record_served(&target, target_name, spec, recorded)
                        .await;
                }
                tracing::info!(sidecar = %sidecar.name, "certificates delivered (changed since last delivery, or first look since start)");
                Ok(())
            }
            Err(e) if e.is_transport() => Err(e),
            Err(e) => {
                self.redelivery_failed(&target, &id, &sidecar.name, &e);
                Ok(())
            }
        }
    }

    /// The gauges follow the certificate an ACME-managed sidecar was just given.
    async fn record_served(
        &self,
        target: &ContainerId,
        target_name: &str,
        spec: &TargetSpec,
        recorded: &source::Recorded,
    ) {
        let hostname = spec.hostname.as_str();
        let store = source::look(self.cfg.certs.as_ref(), hostname).await;
        let facts = source::judge(&source::Inputs {
            recorded: Some(recorded),
            acme: true,
            hostname,
            store: &store,
            served: None,
        });
        self.metrics
            .certs
            .record(target.as_str(), target_name, hostname, &facts.source);
    }

    /// A failed re-delivery, logged when its cause differs from the last one logged for this
    /// sidecar.
    fn redelivery_failed(
        &self,
        target: &ContainerId,
        id: &SidecarId,
        sidecar: &str,
        error: &Error,
    ) {
        let text = error.to_string();
        if lock(&self.state)
            .sidecar(target, id)
            .delivery_error
            .is_new(&text)
        {
            tracing::warn!(sidecar, error = %text, "cannot deliver certificates again; the sidecar keeps what it has");
        }
    }
}
