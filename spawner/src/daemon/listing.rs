//! The engine's containers as the loop last saw them, and a turn's look at the engine: a full
//! listing at start, after the event stream was re-subscribed and at every resync; in between,
//! kept current by inspecting only the containers events named, so the engine work per event
//! does not grow with the number of containers. Containers an event reported down are inspected
//! either way: a full listing can still show them running ([`crate::engine::event_reports`]), an
//! inspect reads the container itself.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bollard::models::ContainerSummary;
use tokio::time::Instant;

use super::lock;
use crate::config::Config;
use crate::engine::event_reports::EventReports;
use crate::engine::observe::{observe, summary_of, FactsCache, Observed};
use crate::engine::Engine;
use crate::error::Error;
use crate::plan::container;
use crate::plan::reconcile::ContainerId;

/// What the loop knows of the engine's containers between turns.
pub(super) struct Listing {
    /// Every container by ID, as last seen. `None`: list everything next turn.
    containers: Option<HashMap<ContainerId, ContainerSummary>>,
    /// Containers the event stream reported down, and those it named (shared with the watcher).
    reports: Arc<Mutex<EventReports>>,
    /// Inspect results of running targets (see [`FactsCache`]), and when it was last emptied.
    facts: FactsCache,
    facts_since: Instant,
}

/// What a turn saw.
pub(super) struct Look {
    pub(super) observed: Observed,
    /// A periodic resync: nothing cached was trusted.
    pub(super) resync: bool,
}

impl Listing {
    pub(super) fn new(reports: Arc<Mutex<EventReports>>) -> Listing {
        Listing {
            containers: None,
            reports,
            facts: FactsCache::default(),
            facts_since: Instant::now(),
        }
    }

    /// When a container the listing still shows running after an event reported it down is to
    /// be looked at again.
    pub(super) fn recheck_at(&self, now: Instant) -> Option<Instant> {
        lock(&self.reports).recheck_at(now)
    }

    /// Whether an image event arrived (or events may have been missed) since the last call.
    pub(super) fn take_images_changed(&self) -> bool {
        lock(&self.reports).take_images_changed()
    }

    /// A container's labels, as last listed.
    pub(super) fn labels(&self, id: &str) -> Option<&HashMap<String, String>> {
        self.containers
            .as_ref()?
            .get(&ContainerId::from(id))?
            .labels
            .as_ref()
    }

    /// Brings the listing up to date and observes targets and sidecars from it. The periodic
    /// resync (every `resync_interval`) trusts nothing cached. Nothing cached survives a failed
    /// look: the engine may have restarted.
    pub(super) async fn look(&mut self, engine: &Engine, cfg: &Config) -> Result<Look, Error> {
        let calls_before = engine.calls();
        let (down, touched) = {
            let mut reports = lock(&self.reports);
            let down: HashSet<String> = reports.down().map(String::from).collect();
            (down, reports.take_touched())
        };
        let resync = self.facts_since.elapsed() >= cfg.resync_interval;
        if resync {
            self.facts_since = Instant::now();
        }
        let touched = if resync { None } else { touched };
        let observed = match self.refresh(engine, touched.as_ref(), &down).await {
            Ok(()) => {
                self.facts.forget(touched);
                let listing = self.containers.iter().flat_map(|l| l.values().cloned());
                observe(
                    engine,
                    listing,
                    &cfg.label_prefix,
                    container::offered(cfg),
                    &down,
                    &mut self.facts,
                )
                .await
                .map_err(Error::from)
            }
            Err(e) => Err(e),
        };
        if observed.is_err() {
            self.facts.forget(None);
            self.containers = None;
        }
        let observed = observed?;
        tracing::debug!(
            api_calls = engine.calls() - calls_before,
            cached_targets = self.facts.len(),
            "observed"
        );
        lock(&self.reports).settle(Instant::now(), |id| observed.listed.get(id).copied());
        Ok(Look { observed, resync })
    }

    /// Everything when `touched` is `None` (or nothing is known yet), else one inspect per
    /// container an event named; and one per container reported `down` either way.
    async fn refresh(
        &mut self,
        engine: &Engine,
        touched: Option<&HashSet<String>>,
        down: &HashSet<String>,
    ) -> Result<(), Error> {
        let touched = match (&self.containers, touched) {
            (Some(_), Some(touched)) => touched.clone(),
            _ => {
                let all = engine.list_containers().await?;
                self.containers = Some(
                    all.into_iter()
                        .filter_map(|c| Some((c.id.clone()?.into(), c)))
                        .collect(),
                );
                HashSet::new()
            }
        };
        let containers = self.containers.get_or_insert_with(HashMap::new);
        for id in touched.union(down) {
            match engine.inspect(id).await? {
                None => {
                    containers.remove(&ContainerId::from(id.as_str()));
                }
                Some(info) => {
                    containers.insert(id.as_str().into(), summary_of(&info));
                }
            }
        }
        Ok(())
    }
}
