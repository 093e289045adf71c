//! Roll-outs, the daemon's side ([`crate::plan::rollout`] decides): resolving each target's
//! image reference to an ID (again after an image event, and at every resync), settling the
//! roll-outs a turn shows over (the old sidecar handed over, or the replacement failed or is
//! late), picking the targets that get a replacement now, answering `spawner rollout`, and
//! publishing what status and `/metrics` show. Making a replacement is [`Daemon::replace`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{lock, Daemon};
use crate::certs::source::{self, Recorded};
use crate::config::RolloutPolicy;
use crate::control::{Ask, Request};
use crate::engine::observe::{examine, Observed};
use crate::error::Error;
use crate::metrics;
use crate::plan::container::{sidecar_body, spec_digest, For};
use crate::plan::failure::Verdict;
use crate::plan::labels::sidecar_name;
use crate::plan::reconcile::{Action, Made, Sidecar, SidecarState, Target};
use crate::plan::rollout::{drift, pairs, Book, Candidate, Drift, Pair, Wanted};

/// On top of `--rollout-timeout` and the sidecar's grace: a replacement whose predecessor still
/// runs this long after it was made did not take over (one that did, the old one has drained
/// and exited by then).
const LATE_MARGIN: Duration = Duration::from_secs(5);

/// What the loop keeps for roll-outs.
pub(super) struct Rollouts {
    book: Book,
    /// Image reference -> the ID it resolves to (`None`: the engine does not have it).
    images: HashMap<String, Option<String>>,
    /// Sidecars whose roll-out's end was counted (the old one that handed over, the replacement
    /// that failed), until they are gone.
    settled: HashSet<String>,
    /// `spawner rollout` requests from the control socket.
    requests: mpsc::Receiver<Request>,
    /// The last turn's view (JSON) for the control socket's `status`.
    pub(super) view: Arc<Mutex<String>>,
    /// When a replacement in progress becomes late.
    late_at: Option<Instant>,
    /// With `--dry-run`: the roll-outs (target, what it wants) already logged as "would".
    dry_run_said: HashSet<(String, Wanted)>,
}

impl Rollouts {
    pub(super) fn new(requests: mpsc::Receiver<Request>) -> Rollouts {
        Rollouts {
            book: Book::default(),
            images: HashMap::new(),
            settled: HashSet::new(),
            requests,
            view: Arc::new(Mutex::new(String::from("{}"))),
            late_at: None,
            dry_run_said: HashSet::new(),
        }
    }

    /// When the loop must look again for roll-outs: a replacement becomes late, or the
    /// `--rollout-delay` after the last one is over.
    pub(super) fn next_wake(&self, delay: Duration) -> impl Iterator<Item = Instant> {
        self.late_at.into_iter().chain(self.book.next_start(delay))
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whether `s` is a replacement whose predecessor is listed running, and that predecessor.
fn predecessor<'a>(s: &Sidecar, sidecars: &'a [Sidecar]) -> Option<&'a Sidecar> {
    let old = s.made.replaces.as_deref()?;
    sidecars.iter().find(|o| o.id == old)
}

/// What a replacement made from `body` runs: its image (`image_id`, as resolved) and digest.
pub(super) fn made_of(
    body: &bollard::models::ContainerCreateBody,
    image_id: &Option<String>,
) -> Made {
    Made {
        image_id: image_id.clone().unwrap_or_default(),
        spec_digest: Some(spec_digest(body)),
        replaces: None,
    }
}

/// What a replacement was made from, as the roll-out it failed was to bring.
fn made_wanted(made: &Made) -> Wanted {
    Wanted {
        image_id: (!made.image_id.is_empty()).then(|| made.image_id.clone()),
        spec_digest: made.spec_digest.clone().unwrap_or_default(),
    }
}

impl Daemon {
    /// Resolves the image reference of every running target to its ID: those not known yet,
    /// and all of them again after an image event or at a resync.
    pub(super) async fn resolve_images(
        &self,
        observed: &Observed,
        resync: bool,
    ) -> Result<(), Error> {
        let wanted: HashSet<&str> = observed
            .targets
            .iter()
            .filter(|t| t.running)
            .filter_map(|t| t.spec.as_ref().ok().map(|s| s.image.as_str()))
            .collect();
        let missing: Vec<&str> = {
            let mut r = lock(&self.rollouts);
            if self.listing.take_images_changed() || resync {
                r.images.clear();
            }
            r.images.retain(|k, _| wanted.contains(k.as_str()));
            wanted
                .iter()
                .copied()
                .filter(|i| !r.images.contains_key(*i))
                .collect()
        };
        for image in missing {
            let id = match self.engine.image_id(image).await {
                Ok(id) => id,
                Err(e) if e.is_transport() => return Err(e.into()),
                Err(e) => {
                    tracing::debug!(image, error = %format!("{e:#}"), "cannot resolve image");
                    None
                }
            };
            lock(&self.rollouts).images.insert(image.to_string(), id);
        }
        Ok(())
    }

    /// The ID `image` resolved to this turn.
    pub(super) fn rollout_image(&self, image: &str) -> Option<String> {
        lock(&self.rollouts).images.get(image).cloned().flatten()
    }

    /// A replacement could not be made or started (it is removed again): a failed roll-out.
    pub(super) fn rollout_refused(
        &self,
        target: &crate::plan::reconcile::ContainerId,
        target_name: &str,
        name: &str,
        made: &Made,
        reason: String,
    ) {
        self.metrics.action(
            metrics::ActionKind::Replace,
            metrics::Outcome::Refused,
            None,
        );
        self.rollout_failed(target.as_str(), target_name, (name, made), reason);
    }

    /// What `pair`'s target would be made from now.
    fn wanted(&self, pair: &Pair<'_>, images: &HashMap<String, Option<String>>) -> Wanted {
        let recorded = source::recorded(
            &self.cfg.label_prefix,
            self.listing.labels(&pair.serving.id),
        );
        let body = sidecar_body(
            &self.cfg,
            &For {
                id: &pair.target.id,
                started_at: &pair.target.started_at,
                spec: pair.spec,
            },
            recorded == Some(Recorded::File),
        );
        Wanted {
            image_id: images.get(&pair.spec.image).cloned().flatten(),
            spec_digest: spec_digest(&body),
        }
    }

    /// Settles the roll-outs that ended since the last turn, before the failure rules look at
    /// sidecars that are not running: an old sidecar whose replacement runs handed over; a
    /// replacement that ended while its predecessor runs failed (its cause read once). Returns
    /// the sidecars settled here, which are no failure of their target.
    pub(super) async fn settle_rollouts(
        &self,
        observed: &Observed,
    ) -> Result<HashSet<String>, Error> {
        let mut settled = HashSet::new();
        for s in &observed.sidecars {
            let Some(old) = predecessor(s, &observed.sidecars) else {
                continue;
            };
            let name = observed
                .targets
                .iter()
                .find(|t| t.id == s.target_id)
                .map_or("", |t| t.name.as_str());
            match (old.state, s.state) {
                (SidecarState::Exited, SidecarState::Running) => {
                    settled.insert(old.id.clone());
                    if self.first_settle(&old.id) {
                        self.took_over(name, s, old);
                    }
                }
                (SidecarState::Running, SidecarState::Exited) => {
                    settled.insert(s.id.clone());
                    if self.first_settle(&s.id) {
                        let reason = match examine(&self.engine, &s.id).await? {
                            Some(Verdict::Failed(f)) => f.to_string(),
                            Some(Verdict::Killed) => "killed".to_string(),
                            _ => "it ended".to_string(),
                        };
                        self.rollout_failed(&s.target_id, name, (&s.name, &s.made), reason);
                    }
                }
                _ => {}
            }
        }
        let listed: HashSet<&str> = observed.sidecars.iter().map(|s| s.id.as_str()).collect();
        lock(&self.rollouts)
            .settled
            .retain(|id| listed.contains(id.as_str()));
        Ok(settled)
    }

    /// True the first time a sidecar's roll-out end is seen.
    fn first_settle(&self, id: &str) -> bool {
        lock(&self.rollouts).settled.insert(id.to_string())
    }

    fn took_over(&self, target_name: &str, new: &Sidecar, old: &Sidecar) {
        lock(&self.rollouts).book.succeeded(&new.target_id);
        self.metrics.rollout_ended(true);
        tracing::info!(target = %target_name, sidecar = %new.name, image = %short_image(&new.made.image_id), replaced = %old.name, "roll-out done: the replacement took over");
    }

    /// A target's roll-out failed: the old sidecar serves on.
    /// `new`: the replacement's name and what it was made from.
    fn rollout_failed(
        &self,
        target_id: &str,
        target_name: &str,
        (name, made): (&str, &Made),
        reason: String,
    ) {
        let max = self.cfg.rollout.max_failures;
        let paused = lock(&self.rollouts).book.failed(
            target_id,
            target_name,
            made_wanted(made),
            reason.clone(),
            max,
        );
        self.metrics.rollout_ended(false);
        tracing::warn!(target = %target_name, sidecar = %name, image = %short_image(&made.image_id), %reason, "roll-out failed: the old sidecar keeps serving; not retried until the image or spec changes");
        if paused {
            let why = lock(&self.rollouts)
                .book
                .paused()
                .unwrap_or_default()
                .to_string();
            tracing::warn!(reason = %why, "roll-out paused for every target");
        }
    }

    /// The replacements in progress that are late (see [`LATE_MARGIN`]): each counted as a
    /// failed roll-out once; the plan removes them.
    pub(super) fn late_replacements(&self, observed: &Observed) -> HashSet<String> {
        let limit = (self.cfg.rollout.timeout + self.cfg.sidecar_shutdown_grace + LATE_MARGIN)
            .as_secs() as i64;
        let now = unix_now();
        let mut late = HashSet::new();
        let mut next: Option<Instant> = None;
        for p in pairs(&observed.targets, &observed.sidecars, &HashSet::new()) {
            let Some(new) = p.incoming else { continue };
            let left = new.created + limit - now;
            if left >= 0 {
                let at = Instant::now() + Duration::from_secs(left as u64 + 1);
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            late.insert(new.id.clone());
            if self.first_settle(&new.id) {
                let reason = format!(
                    "did not take over within {}",
                    humantime::format_duration(self.cfg.rollout.timeout)
                );
                self.rollout_failed(&p.target.id, &p.target.name, (&new.name, &new.made), reason);
            }
        }
        lock(&self.rollouts).late_at = next;
        late
    }

    /// The replacements to start this turn, for targets the plan leaves alone (`busy`: targets
    /// with an action already); answers `spawner rollout` requests and publishes the view.
    pub(super) fn pick_rollouts(
        &self,
        observed: &Observed,
        refused: &HashSet<String>,
        busy: &HashSet<String>,
    ) -> Vec<Action> {
        let pairs = pairs(&observed.targets, &observed.sidecars, refused);
        let images = lock(&self.rollouts).images.clone();
        let wanted: HashMap<String, Wanted> = pairs
            .iter()
            .map(|p| (p.target.id.clone(), self.wanted(p, &images)))
            .collect();
        let mut r = lock(&self.rollouts);
        if r.book.observe(&wanted) {
            tracing::info!("roll-out resumed: an image changed");
        }
        let drifts: HashMap<&str, Drift> = pairs
            .iter()
            .filter_map(|p| {
                Some((
                    p.target.id.as_str(),
                    drift(&p.serving.made, &wanted[&p.target.id])?,
                ))
            })
            .collect();
        answer_requests(&mut r, &pairs, &drifts);
        let outdated: Vec<Candidate> = pairs
            .iter()
            .filter(|p| p.incoming.is_none() && drifts.contains_key(p.target.id.as_str()))
            .filter(|p| !busy.contains(&p.target.id))
            .map(|p| Candidate {
                target_id: p.target.id.clone(),
                target_name: p.target.name.clone(),
                policy: p.spec.rollout.unwrap_or(self.cfg.rollout.policy),
                wanted: wanted[&p.target.id].clone(),
            })
            .collect();
        let in_flight = pairs.iter().filter(|p| p.incoming.is_some()).count();
        let now = Instant::now();
        let mut picked: Vec<&Candidate> = r.book.pick(&outdated, in_flight, &self.cfg.rollout, now);
        if self.cfg.dry_run {
            // Nothing is replaced, so the same targets come up every turn: say it once each.
            r.dry_run_said.retain(|(t, _)| wanted.contains_key(t));
            picked.retain(|c| {
                r.dry_run_said
                    .insert((c.target_id.clone(), c.wanted.clone()))
            });
        }
        let picked: Vec<Action> = picked
            .into_iter()
            .filter_map(|c| pairs.iter().find(|p| p.target.id == c.target_id))
            .map(|p| replace_action(p))
            .collect();
        if !picked.is_empty() && !self.cfg.dry_run {
            r.book.started(now);
        }
        self.metrics.rollouts(metrics::Rollouts {
            outdated: drifts.len() as u64,
            in_progress: in_flight as u64,
            paused: r.book.paused().is_some(),
        });
        let view = render_view(&r.book, &pairs, &wanted, &drifts);
        *lock(&r.view) = view;
        picked
    }

    /// After a hand-over the replacement takes the sidecar's usual name, so `docker logs
    /// <name>-tls-sidecar` goes on working; a name still held is tried again next turn.
    pub(super) async fn rename_replacements(&self, observed: &Observed) -> Result<(), Error> {
        if self.cfg.dry_run {
            return Ok(());
        }
        for (s, name) in renames(&observed.targets, &observed.sidecars) {
            match self.engine.rename(&s.id, &name).await {
                Ok(()) => tracing::debug!(sidecar = %s.name, to = %name, "replacement renamed"),
                Err(e) if e.is_transport() => return Err(e.into()),
                Err(e) => {
                    tracing::debug!(sidecar = %s.name, error = %format!("{e:#}"), "cannot rename the replacement yet")
                }
            }
        }
        Ok(())
    }
}

/// The replacements that take their sidecar's usual name now, with that name: each running one
/// not named so yet whose predecessor has exited (the turn removes it before renaming) or is
/// gone altogether (a spawner removed it and died before the rename; the next one must still
/// finish the job), while no other sidecar holds the name.
fn renames<'a>(targets: &[Target], sidecars: &'a [Sidecar]) -> Vec<(&'a Sidecar, String)> {
    sidecars
        .iter()
        .filter(|s| s.state == SidecarState::Running && s.made.replaces.is_some())
        .filter(|s| predecessor(s, sidecars).is_none_or(|old| old.state == SidecarState::Exited))
        .filter_map(|s| {
            let t = targets.iter().find(|t| t.id == s.target_id)?;
            let name = sidecar_name(&t.name);
            let held = sidecars.iter().any(|o| {
                o.id != s.id && o.name == name && s.made.replaces.as_deref() != Some(&o.id)
            });
            (s.name != name && !held).then_some((s, name))
        })
        .collect()
}

/// The action starting a replacement for `p`'s serving sidecar.
fn replace_action(p: &Pair<'_>) -> Action {
    Action::Replace {
        target_id: p.target.id.clone(),
        target_name: p.target.name.clone(),
        started_at: p.target.started_at.clone(),
        spec: Box::new(p.spec.clone()),
        old_id: p.serving.id.clone(),
        old_name: p.serving.name.clone(),
    }
}

/// The name of a replacement for sidecar `old_name` of target `target_name`: the usual name
/// when the old one does not hold it (an earlier rename failed), else the usual name with
/// `-next`.
pub(super) fn replacement_name(target_name: &str, old_name: &str) -> String {
    let usual = sidecar_name(target_name);
    if old_name == usual {
        format!("{usual}-next")
    } else {
        usual
    }
}

/// Answers the queued `spawner rollout` requests from this turn's facts.
fn answer_requests(r: &mut Rollouts, pairs: &[Pair<'_>], drifts: &HashMap<&str, Drift>) {
    while let Ok(req) = r.requests.try_recv() {
        let was_paused = r.book.paused().map(String::from);
        let answer = match &req.ask {
            Ask::All => {
                let mut names: Vec<(&str, &str)> = pairs
                    .iter()
                    .filter(|p| drifts.contains_key(p.target.id.as_str()))
                    .map(|p| (p.target.name.as_str(), p.target.id.as_str()))
                    .collect();
                names.sort_unstable();
                r.book.ask(names.iter().map(|(_, id)| id.to_string()));
                if names.is_empty() {
                    "nothing to roll out: every sidecar is up to date".to_string()
                } else {
                    let list: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
                    format!("rolling out {} target(s): {}", list.len(), list.join(", "))
                }
            }
            Ask::Target(name) => match pairs.iter().find(|p| p.target.name == *name) {
                None => format!(
                    "error: no running target named {name:?} with a sidecar of this spawner"
                ),
                Some(p) if !drifts.contains_key(p.target.id.as_str()) => {
                    r.book.ask(Vec::new());
                    format!("{name}: its sidecar is up to date")
                }
                Some(p) => {
                    r.book.ask([p.target.id.clone()]);
                    format!("rolling out 1 target(s): {name}")
                }
            },
        };
        let answer = match (was_paused, answer.starts_with("error: ")) {
            (Some(_), false) => format!("{answer} (the paused roll-out resumed)"),
            _ => answer,
        };
        tracing::info!(%answer, "spawner rollout");
        let _ = req.answer.send(answer);
    }
}

/// The first 12 hex digits of an image ID, as `docker images` shows them.
pub(crate) fn short_image(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

/// The view `spawner status` shows: per target ID, the image its sidecar runs and the one it
/// would get, whether it is outdated and why, and its roll-out's state; and the pause.
fn render_view(
    book: &Book,
    pairs: &[Pair<'_>],
    wanted: &HashMap<String, Wanted>,
    drifts: &HashMap<&str, Drift>,
) -> String {
    let mut targets = serde_json::Map::new();
    for p in pairs {
        let id = p.target.id.as_str();
        let state = match (p.incoming, book.failure(id)) {
            (Some(new), _) => format!("rolling out: {} taking over", new.name),
            (None, Some(f)) => format!("rollout failed: {}", f.reason),
            (None, None) if drifts.contains_key(id) => match (book.paused(), p.spec.rollout) {
                (Some(why), _) => format!("paused: {why}"),
                (None, Some(RolloutPolicy::Manual)) => {
                    "outdated (manual: spawner rollout)".to_string()
                }
                (None, _) => "outdated".to_string(),
            },
            (None, None) => String::new(),
        };
        targets.insert(
            id.to_string(),
            json!({
                "image_id": p.serving.made.image_id,
                "wanted_image_id": wanted.get(id).and_then(|w| w.image_id.clone()),
                "outdated": drifts.get(id).map(ToString::to_string),
                "rollout": state,
            }),
        );
    }
    json!({ "targets": targets, "paused": book.paused() }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_takes_the_name_the_old_sidecar_does_not_hold() {
        assert_eq!(
            replacement_name("web", "web-tls-sidecar"),
            "web-tls-sidecar-next"
        );
        assert_eq!(
            replacement_name("web", "web-tls-sidecar-next"),
            "web-tls-sidecar"
        );
        assert_eq!(short_image("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_image("abc"), "abc");
    }

    fn target() -> Target {
        Target {
            id: "t".into(),
            name: "/web".into(),
            running: true,
            started_at: "s1".into(),
            // Not read by the renames.
            spec: Err(crate::plan::labels::LabelError {
                label: "l".into(),
                value: "v".into(),
                reason: "r".into(),
            }),
        }
    }

    fn sidecar(id: &str, name: &str, state: SidecarState, replaces: Option<&str>) -> Sidecar {
        Sidecar {
            id: id.into(),
            name: name.into(),
            target_id: "t".into(),
            target_started: Some("s1".into()),
            state,
            created: 0,
            last_failure: None,
            made: Made {
                replaces: replaces.map(Into::into),
                ..Made::default()
            },
        }
    }

    fn renamed(sidecars: &[Sidecar]) -> Vec<(String, String)> {
        renames(&[target()], sidecars)
            .into_iter()
            .map(|(s, name)| (s.id.clone(), name))
            .collect()
    }

    #[test]
    fn a_replacement_is_renamed_once_its_predecessor_has_exited_or_is_gone() {
        use SidecarState::{Created, Exited, Running};
        let want = vec![("new".to_string(), "web-tls-sidecar".to_string())];
        // Predecessor exited (removed this turn, before the rename).
        let old = sidecar("old", "web-tls-sidecar", Exited, None);
        let new = sidecar("new", "web-tls-sidecar-next", Running, Some("old"));
        assert_eq!(renamed(&[old.clone(), new.clone()]), want);
        // Predecessor already gone: a spawner removed it and died before renaming.
        assert_eq!(renamed(std::slice::from_ref(&new)), want);
        // Predecessor still serving (draining or not handed over yet): not yet.
        let serving = sidecar("old", "web-tls-sidecar", Running, None);
        assert!(renamed(&[serving, new.clone()]).is_empty());
        // The name held by another sidecar (not the predecessor): left alone.
        let other = sidecar("dup", "web-tls-sidecar", Exited, None);
        assert!(renamed(&[other, new.clone()]).is_empty());
        // Already named; not running; not a replacement: nothing to do.
        let named = sidecar("new", "web-tls-sidecar", Running, Some("old"));
        assert!(renamed(&[old.clone(), named]).is_empty());
        let created = sidecar("new", "web-tls-sidecar-next", Created, Some("old"));
        assert!(renamed(&[old.clone(), created]).is_empty());
        let first = sidecar("first", "web-tls-sidecar-next", Running, None);
        assert!(renamed(&[first]).is_empty());
    }
}
