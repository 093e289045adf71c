//! What ACME is asked for each turn, and the wait for a sidecar to listen first: a challenge
//! answer is put only in sidecars whose log said every listener is bound, so the CA is never
//! sent to a port nobody has bound.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::state::Listen;
use super::{lock, Daemon};
use crate::acme;
use crate::engine::observe::Observed;
use crate::error::Error;
use crate::plan::container;
use crate::plan::reconcile::{ContainerId, Sidecar, SidecarId, SidecarState};

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

/// A look at a sidecar's log at `now` (`said`, as for [`listening_verdict`]), given what was
/// known (`was`, not [`Listen::Yes`]): the verdict, and what to remember.
fn heard(was: Listen, said: Option<bool>, now: Instant) -> (Listening, Listen) {
    let since = match was {
        Listen::LookedSince(since) => since,
        Listen::Unknown | Listen::Yes => now,
    };
    match listening_verdict(said, now.duration_since(since)) {
        Listening::NotYet => (Listening::NotYet, Listen::LookedSince(since)),
        v => (v, Listen::Yes),
    }
}

impl Daemon {
    /// What ACME is asked for this turn: the names of every running ACME-managed target that is
    /// served, with its sidecars that are listening (a challenge answer is put only where it is
    /// served). A target whose sidecar has not said so yet waits for a later turn.
    pub(super) async fn acme_wants(
        &mut self,
        observed: &Observed,
        refused: &HashSet<String>,
    ) -> Result<Vec<acme::Want>, Error> {
        self.listening_recheck = None;
        let mut by_target: HashMap<&str, Vec<&Sidecar>> = HashMap::new();
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
                if self.listens(s).await? {
                    sidecars.push(s.id.clone());
                } else {
                    self.listening_recheck = Some(Instant::now() + LISTENING_RECHECK);
                }
            }
            if sidecars.is_empty() {
                continue;
            }
            wants.push(acme::Want {
                names: spec.names().collect(),
                challenge: spec.acme_challenge,
                sidecars,
            });
        }
        Ok(wants)
    }

    /// Whether running sidecar `s` listens: it said so at an earlier look, or says so now, or is
    /// assumed to (see [`listening_verdict`]). `Err` only when the engine did not answer.
    async fn listens(&self, s: &Sidecar) -> Result<bool, Error> {
        let target = ContainerId::from(s.target_id.as_str());
        let id = SidecarId::from(s.id.as_str());
        let was = lock(&self.state)
            .get_sidecar(&target, &id)
            .map(|r| r.listening)
            .unwrap_or_default();
        if was == Listen::Yes {
            return Ok(true);
        }
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
        let verdict = {
            let mut state = lock(&self.state);
            let record = state.sidecar(&target, &id);
            let (verdict, now_known) = heard(
                record.listening,
                said.as_ref().ok().copied(),
                Instant::now(),
            );
            record.listening = now_known;
            verdict
        };
        match verdict {
            Listening::Yes => {}
            Listening::NotYet => return Ok(false),
            Listening::Assumed => match &said {
                Err(e) => {
                    tracing::warn!(sidecar = %s.name, error = %format!("{e:#}"), "cannot read the sidecar's log to see it listening; assuming it does after 5 s")
                }
                Ok(_) => {
                    tracing::info!(sidecar = %s.name, "the sidecar has not logged `listening` in 5 s; assuming it listens")
                }
            },
        }
        Ok(true)
    }
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
    fn the_grace_counts_from_the_first_look() {
        let t0 = Instant::now();
        let (v, known) = heard(Listen::Unknown, Some(false), t0);
        assert_eq!((v, known), (Listening::NotYet, Listen::LookedSince(t0)));
        let (v, known) = heard(known, None, t0 + Duration::from_secs(4));
        assert_eq!((v, known), (Listening::NotYet, Listen::LookedSince(t0)));
        let (v, known) = heard(known, Some(false), t0 + LISTENING_GRACE);
        assert_eq!((v, known), (Listening::Assumed, Listen::Yes));
        assert_eq!(
            heard(Listen::LookedSince(t0), Some(true), t0),
            (Listening::Yes, Listen::Yes)
        );
    }
}
