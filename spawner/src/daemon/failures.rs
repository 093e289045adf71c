//! Sidecars that ended or could not be made. A sidecar of a running target that is not running
//! is inspected once and judged ([`crate::plan::failure`]): killed from outside, it is replaced
//! at once; failed by itself (or refused by the engine), its target is held back with a backoff,
//! and the cause is logged when it differs from the last one logged for the target.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::{lock, short, Daemon};
use crate::engine::observe::{examine, Observed};
use crate::error::Error;
use crate::plan::failure::{self, Failure, Verdict};
use crate::plan::reconcile::{ContainerId, SidecarId, SidecarState};

impl Daemon {
    /// Refines the listing's view of sidecars that are not running in their running target's
    /// current namespace (the only ones whose end matters): inspects each once, and reacts to how
    /// it ended (see [`failure::judge`]). Created-and-never-started ones stay `Created` (adopted
    /// by the plan); one that is running after all counts as running.
    pub(super) async fn judge_ended(&self, observed: &mut Observed) -> Result<(), Error> {
        let targets: HashMap<&str, (&str, &str)> = observed
            .targets
            .iter()
            .filter(|t| t.running)
            .map(|t| (t.id.as_str(), (t.name.as_str(), t.started_at.as_str())))
            .collect();
        {
            let mut state = lock(&self.state);
            for s in &observed.sidecars {
                if let Some(f) = &s.last_failure {
                    // A restarted spawner learns the last failure from the sidecar carrying it.
                    let target = state.target(&s.target_id.as_str().into());
                    target.failure.get_or_insert_with(|| f.clone());
                }
            }
        }
        let settled = self.settle_rollouts(observed).await?;
        let mut gone = HashSet::new();
        for s in &mut observed.sidecars {
            if s.state == SidecarState::Running || settled.contains(&s.id) {
                continue;
            }
            let Some((target_name, started_at)) = targets.get(s.target_id.as_str()) else {
                continue;
            };
            if s.target_started.as_deref() != Some(*started_at) {
                continue;
            }
            let target = ContainerId::from(s.target_id.as_str());
            let sidecar = SidecarId::from(s.id.as_str());
            let judged = lock(&self.state)
                .get_sidecar(&target, &sidecar)
                .and_then(|r| r.verdict.clone());
            let verdict = match judged {
                Some(v) => v,
                None => {
                    let Some(v) = examine(&self.engine, &s.id).await? else {
                        gone.insert(s.id.clone());
                        continue;
                    };
                    if matches!(v, Verdict::Killed | Verdict::Failed(_)) {
                        let span = tracing::info_span!("target", target = %target_name, id = %short(&s.target_id));
                        span.in_scope(|| self.ended(&target, &s.name, s.last_failure.as_ref(), &v));
                        lock(&self.state).sidecar(&target, &sidecar).verdict = Some(v.clone());
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
    fn ended(
        &self,
        target: &ContainerId,
        sidecar: &str,
        predecessor: Option<&Failure>,
        v: &Verdict,
    ) {
        match v {
            Verdict::Killed => {
                tracing::info!(sidecar, "sidecar killed from outside, replacing it");
            }
            Verdict::Failed(f) => {
                let (delay, new) = self.note_failure(target, f.clone(), predecessor);
                if new {
                    tracing::warn!(sidecar, exit_code = ?f.exit_code, error = %f.error, recreate_in = ?delay, "sidecar exited while its target runs");
                } else {
                    tracing::debug!(sidecar, exit_code = ?f.exit_code, recreate_in = ?delay, "sidecar exited again, same cause");
                }
            }
            Verdict::Running | Verdict::NeverStarted => {}
        }
    }

    /// The engine refused to create or start a sidecar: back off, and log the cause when new.
    pub(super) fn refused(
        &self,
        target: &ContainerId,
        sidecar: &str,
        what: &'static str,
        e: &Error,
    ) {
        self.metrics.engine_error(e);
        let error = failure::escape(&format!("{e:#}"));
        let f = Failure {
            exit_code: None,
            error: error.clone(),
        };
        let (delay, new) = self.note_failure(target, f, None);
        if new {
            tracing::warn!(error = %error, sidecar, retry_in = ?delay, "{what}");
        } else {
            tracing::debug!(sidecar, retry_in = ?delay, "{what} again, same cause");
        }
    }

    /// A sidecar of `target` failed: holds its next one back and records the failure. Returns
    /// the wait, and whether the cause is new (see [`super::state::TargetState::record_failure`]).
    fn note_failure(
        &self,
        target: &ContainerId,
        f: Failure,
        predecessor: Option<&Failure>,
    ) -> (Duration, bool) {
        let mut state = lock(&self.state);
        let target = state.target(target);
        let delay = target.hold_back(Instant::now());
        (delay, target.record_failure(f, predecessor))
    }
}
