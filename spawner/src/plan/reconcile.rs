//! The reconcile decision, pure: what the engine shows (opted-in targets and our sidecars) ->
//! the actions that make it right. No I/O, so every rule is unit-tested here and the daemon only
//! executes the plan.

use std::collections::{HashMap, HashSet};

use crate::config::AllowList;
use crate::plan::failure::Failure;
use crate::plan::labels::{LabelError, TargetSpec};

macro_rules! container_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub(crate) struct $name(String);

        impl $name {
            pub(crate) fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_string())
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

container_id! {
    /// A container's full ID as the engine reports it: a target's, or any container's in the
    /// engine's listing. Typed apart from [`SidecarId`] so state kept per target can never be
    /// looked up by a sidecar's ID; [`Target`] and [`Sidecar`] still carry plain strings, turned
    /// into these where state is keyed by them.
    ContainerId
}

container_id! {
    /// The full ID of one of the spawner's sidecars.
    SidecarId
}

/// An opted-in container as observed.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Full container ID.
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) running: bool,
    /// `State.StartedAt`: changes on every start, i.e. with every new network namespace.
    pub(crate) started_at: String,
    pub(crate) spec: Result<TargetSpec, LabelError>,
}

/// A container carrying our `managed-by` label, as observed.
#[derive(Debug, Clone)]
pub(crate) struct Sidecar {
    pub(crate) id: String,
    pub(crate) name: String,
    /// The `sidecar-for` label: full ID of the target it was created for.
    pub(crate) target_id: String,
    /// The `target-started` label: the target's `StartedAt` when the sidecar was created, i.e.
    /// which network namespace it joined.
    pub(crate) target_started: Option<String>,
    pub(crate) state: SidecarState,
    /// Creation time (unix seconds), to keep the oldest of duplicates deterministically.
    pub(crate) created: i64,
    /// Its predecessor's failure, carried on its labels.
    pub(crate) last_failure: Option<Failure>,
    /// What it was made from, for roll-outs.
    pub(crate) made: Made,
}

/// What a sidecar was made from: its image and rendered spec (to see it outdated), and the
/// sidecar it replaces when a roll-out made it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Made {
    /// The ID of the image it runs (`sha256:...`); empty when the engine did not say.
    pub(crate) image_id: String,
    /// Its `spec-digest` label; `None` for a sidecar made before the label existed (compared
    /// by image alone).
    pub(crate) spec_digest: Option<String>,
    /// Its `replaces` label: the full ID of the sidecar it takes over from.
    pub(crate) replaces: Option<String>,
}

/// A sidecar's state, as far as the decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SidecarState {
    Running,
    /// Created and never started: a spawner stopped (or another one is) between its create and
    /// its start. Started ("adopted") instead of making another.
    Created,
    /// Exited, dead, or a create that failed to start.
    Exited,
}

/// Why a sidecar is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemoveReason {
    /// Its target no longer exists.
    TargetGone,
    /// Its target is not running.
    TargetNotRunning,
    /// Its target is running but must not have a sidecar (invalid label, refused image).
    TargetRefused,
    /// Its target restarted since: the sidecar sits in a dead network namespace.
    StaleNamespace,
    /// It exited while its target runs (it will be recreated, with backoff).
    Exited,
    /// Another sidecar already serves the target.
    Duplicate,
    /// Created and never started, while another sidecar serves (or is adopted for) the target.
    NeverStarted,
    /// It handed its listeners over to its replacement and drained (a roll-out that worked).
    HandedOver,
    /// A replacement that ended, or did not take over in time, while the sidecar it was to
    /// replace still serves (a roll-out that failed).
    RolloutFailed,
}

impl RemoveReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RemoveReason::TargetGone => "target gone",
            RemoveReason::TargetNotRunning => "target not running",
            RemoveReason::TargetRefused => "target refused",
            RemoveReason::StaleNamespace => "target restarted",
            RemoveReason::Exited => "sidecar exited",
            RemoveReason::Duplicate => "duplicate",
            RemoveReason::NeverStarted => "never started",
            RemoveReason::HandedOver => "handed over to its replacement",
            RemoveReason::RolloutFailed => "roll-out failed",
        }
    }
}

/// Why a running target gets no sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Problem {
    InvalidLabel(LabelError),
    ImageNotAllowed(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::InvalidLabel(e) => e.fmt(f),
            Problem::ImageNotAllowed(i) => write!(f, "image {i} is not in the allow-list"),
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Remove {
        sidecar_id: String,
        sidecar_name: String,
        target_id: String,
        reason: RemoveReason,
    },
    /// Start a sidecar that was created and never started (it is already right for the target).
    Start {
        sidecar_id: String,
        sidecar_name: String,
        target_id: String,
        /// What the target asks for, to deliver its certificates before the start (boxed, as
        /// in `Create`).
        spec: Option<Box<TargetSpec>>,
    },
    Create {
        target_id: String,
        target_name: String,
        started_at: String,
        /// Boxed: a spec is several times larger than the other variants.
        spec: Box<TargetSpec>,
    },
    Report {
        target_id: String,
        target_name: String,
        problem: Problem,
    },
    /// Start a replacement for the running sidecar `old` of the target, which takes its
    /// listeners over in place (a roll-out, decided by [`crate::plan::rollout`]).
    Replace {
        target_id: String,
        target_name: String,
        started_at: String,
        spec: Box<TargetSpec>,
        old_id: String,
        old_name: String,
    },
}

impl Action {
    /// The target the action is for.
    pub(crate) fn target_id(&self) -> &str {
        match self {
            Action::Remove { target_id, .. }
            | Action::Start { target_id, .. }
            | Action::Create { target_id, .. }
            | Action::Report { target_id, .. }
            | Action::Replace { target_id, .. } => target_id,
        }
    }
}

/// Computes the actions. Removals come first, so a create never collides with the stale sidecar
/// holding its name. `held` lists targets whose (re)creation is deferred by a backoff: they get
/// no `Create` this round, and their exited sidecar is kept until then (the engine still has its
/// state and log, for `spawner status`). A sidecar created and never started in the target's
/// current namespace is started rather than replaced.
///
/// A roll-out in progress is two running sidecars of one namespace, the second `replaces` the
/// first: both are kept. Once the first has ended (it handed over and drained) it is removed as
/// [`RemoveReason::HandedOver`]; a replacement that ended while the first runs, or is in `aborted`
/// (it did not take over in time), is removed as [`RemoveReason::RolloutFailed`]. Neither counts
/// as a failure of the target: the first keeps serving, or the second serves.
pub(crate) fn plan(
    targets: &[Target],
    sidecars: &[Sidecar],
    allow: &AllowList,
    held: &HashSet<String>,
    aborted: &HashSet<String>,
) -> Vec<Action> {
    let mut by_target: HashMap<&str, Vec<&Sidecar>> = HashMap::new();
    for s in sidecars {
        by_target.entry(s.target_id.as_str()).or_default().push(s);
    }
    let mut removes = Vec::new();
    let mut rest = Vec::new();

    let mut targets: Vec<&Target> = targets.iter().collect();
    targets.sort_by(|a, b| a.id.cmp(&b.id));
    for t in targets {
        let mut mine = by_target.remove(t.id.as_str()).unwrap_or_default();
        mine.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        if !t.running {
            removes.extend(
                mine.iter()
                    .map(|s| remove(s, RemoveReason::TargetNotRunning)),
            );
            continue;
        }
        let problem = match &t.spec {
            Err(e) => Some(Problem::InvalidLabel(e.clone())),
            Ok(spec) if !allow.allows(&spec.image) => {
                Some(Problem::ImageNotAllowed(spec.image.clone()))
            }
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            removes.extend(mine.iter().map(|s| remove(s, RemoveReason::TargetRefused)));
            rest.push(Action::Report {
                target_id: t.id.clone(),
                target_name: t.name.clone(),
                problem,
            });
            continue;
        }
        let mine = roll_outs(t, mine, aborted, &mut removes);
        plan_serving(t, mine, held.contains(&t.id), &mut removes, &mut rest);
    }
    let mut orphans: Vec<&Sidecar> = by_target.into_values().flatten().collect();
    orphans.sort_by(|a, b| a.id.cmp(&b.id));
    removes.extend(
        orphans
            .into_iter()
            .map(|s| remove(s, RemoveReason::TargetGone)),
    );
    removes.extend(rest);
    removes
}

fn remove(s: &Sidecar, reason: RemoveReason) -> Action {
    Action::Remove {
        sidecar_id: s.id.clone(),
        sidecar_name: s.name.clone(),
        target_id: s.target_id.clone(),
        reason,
    }
}

/// Settles the roll-outs among a running target's sidecars (oldest first) of its current
/// namespace: removes the sidecars that handed over and the replacements that failed or are
/// `aborted`, and returns the rest without the replacements still in progress (kept, and not
/// counted as duplicates by [`plan_serving`]).
fn roll_outs<'a>(
    t: &Target,
    mine: Vec<&'a Sidecar>,
    aborted: &HashSet<String>,
    removes: &mut Vec<Action>,
) -> Vec<&'a Sidecar> {
    let current = |s: &Sidecar| s.target_started.as_deref() == Some(t.started_at.as_str());
    let running = |s: &Sidecar| current(s) && s.state == SidecarState::Running;
    let running_ids: HashSet<&'a str> = mine
        .iter()
        .filter(|s| running(s))
        .map(|s| s.id.as_str())
        .collect();
    let is_running = |id: &str| running_ids.contains(id);
    // A running replacement whose predecessor (still listed) is not running took over.
    let took_over: HashSet<&str> = mine
        .iter()
        .filter(|s| running(s) && !aborted.contains(&s.id))
        .filter_map(|s| s.made.replaces.as_deref())
        .filter(|old| !is_running(old))
        .collect();
    let mut rest = Vec::new();
    for s in mine {
        let replacing = s.made.replaces.as_deref().filter(|old| is_running(old));
        if current(s) && took_over.contains(s.id.as_str()) && s.state == SidecarState::Exited {
            removes.push(remove(s, RemoveReason::HandedOver));
        } else if current(s) && replacing.is_some() {
            if s.state == SidecarState::Exited || aborted.contains(&s.id) {
                removes.push(remove(s, RemoveReason::RolloutFailed));
            } else if s.state == SidecarState::Running {
                // In progress: kept beside its predecessor.
            } else {
                rest.push(s);
            }
        } else {
            rest.push(s);
        }
    }
    rest
}

/// The actions for a running target the spawner serves, given its sidecars (oldest first): keep
/// one running sidecar of its current namespace (or start one created there), remove the rest,
/// and create one when none is kept and the target is not `held` back.
fn plan_serving(
    t: &Target,
    mine: Vec<&Sidecar>,
    held: bool,
    removes: &mut Vec<Action>,
    rest: &mut Vec<Action>,
) {
    let mut keeper = None;
    let mut never_started = Vec::new();
    for s in mine {
        let current = s.target_started.as_deref() == Some(t.started_at.as_str());
        let reason = match (current, s.state) {
            (false, _) => RemoveReason::StaleNamespace,
            (true, SidecarState::Exited) if held => continue,
            (true, SidecarState::Exited) => RemoveReason::Exited,
            (true, SidecarState::Created) => {
                never_started.push(s);
                continue;
            }
            (true, SidecarState::Running) if keeper.is_some() => RemoveReason::Duplicate,
            (true, SidecarState::Running) => {
                keeper = Some(s);
                continue;
            }
        };
        removes.push(remove(s, reason));
    }
    for s in never_started {
        if keeper.is_some() {
            removes.push(remove(s, RemoveReason::NeverStarted));
        } else {
            keeper = Some(s);
            rest.push(Action::Start {
                sidecar_id: s.id.clone(),
                sidecar_name: s.name.clone(),
                target_id: t.id.clone(),
                spec: t.spec.clone().ok().map(Box::new),
            });
        }
    }
    if keeper.is_none() && !held {
        if let Ok(spec) = &t.spec {
            rest.push(Action::Create {
                target_id: t.id.clone(),
                target_name: t.name.clone(),
                started_at: t.started_at.clone(),
                spec: Box::new(spec.clone()),
            });
        }
    }
}

/// A plan cut into what the daemon runs one after the other. Inside `removes` every action names
/// a different sidecar; inside `creates` every action names a different target (so a different
/// sidecar name): the actions of one step are independent and may run concurrently. `removes`
/// runs to its end before `creates` starts, so a create never collides with the stale sidecar
/// (of its own target, or of a gone target with the same name) that still holds its name.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Steps {
    /// No I/O: handled before the others.
    pub(crate) reports: Vec<Action>,
    pub(crate) removes: Vec<Action>,
    pub(crate) creates: Vec<Action>,
}

/// Sorts the actions of a plan into [`Steps`], keeping their order inside each step.
pub(crate) fn steps(actions: Vec<Action>) -> Steps {
    let mut s = Steps::default();
    for a in actions {
        match a {
            Action::Report { .. } => s.reports.push(a),
            Action::Remove { .. } => s.removes.push(a),
            Action::Create { .. } | Action::Start { .. } | Action::Replace { .. } => {
                s.creates.push(a)
            }
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use shared::mode::Mode;

    fn spec(image: &str) -> TargetSpec {
        TargetSpec {
            image: image.into(),
            listen: "0.0.0.0:8443".parse().unwrap(),
            backend: "127.0.0.1:8080".parse().unwrap(),
            mode: Mode::Http,
            hostname: "web".parse().unwrap(),
            hostname_wildcard: false,
            alt_names: Vec::new(),
            hostname_labelled: false,
            acme_challenge: Default::default(),
            mtls: None,
            identity: None,
            redirect_listen: None,
            hsts: None,
            http3: None,
            backend_protocol: Default::default(),
            alpn: Default::default(),
            proxy_protocol: Default::default(),
            tls_groups: Default::default(),
            exit_when_orphaned: false,
            published_udp_port: None,
            rollout: None,
        }
    }

    fn target(id: &str, running: bool) -> Target {
        Target {
            id: id.into(),
            name: format!("n{id}"),
            running,
            started_at: "t1".into(),
            spec: Ok(spec("tls-sidecar/sidecar:latest")),
        }
    }

    fn sidecar(id: &str, target: &str, started: &str, running: bool, created: i64) -> Sidecar {
        Sidecar {
            id: id.into(),
            name: format!("s{id}"),
            target_id: target.into(),
            target_started: Some(started.into()),
            state: if running {
                SidecarState::Running
            } else {
                SidecarState::Exited
            },
            created,
            last_failure: None,
            made: Made::default(),
        }
    }

    fn never_started(id: &str, target: &str, created: i64) -> Sidecar {
        Sidecar {
            state: SidecarState::Created,
            ..sidecar(id, target, "t1", false, created)
        }
    }

    fn started(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Start { sidecar_id, .. } => Some(sidecar_id.clone()),
                _ => None,
            })
            .collect()
    }

    fn allow() -> AllowList {
        AllowList::new(vec!["tls-sidecar/sidecar:*".into()])
    }

    fn run(targets: &[Target], sidecars: &[Sidecar]) -> Vec<Action> {
        plan(
            targets,
            sidecars,
            &allow(),
            &HashSet::new(),
            &HashSet::new(),
        )
    }

    fn removed(actions: &[Action]) -> Vec<(String, RemoveReason)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove {
                    sidecar_id, reason, ..
                } => Some((sidecar_id.clone(), *reason)),
                _ => None,
            })
            .collect()
    }

    fn created(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Create { target_id, .. } => Some(target_id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn missing_sidecar_is_created() {
        let a = run(&[target("a", true)], &[]);
        assert_eq!(created(&a), vec!["a"]);
        assert!(removed(&a).is_empty());
    }

    #[test]
    fn healthy_sidecar_means_nothing_to_do() {
        assert!(run(&[target("a", true)], &[sidecar("s1", "a", "t1", true, 1)]).is_empty());
    }

    #[test]
    fn orphan_of_a_removed_target_is_removed() {
        let a = run(&[], &[sidecar("s1", "gone", "t1", true, 1)]);
        assert_eq!(
            removed(&a),
            vec![("s1".to_string(), RemoveReason::TargetGone)]
        );
        assert!(created(&a).is_empty());
    }

    #[test]
    fn sidecar_of_a_stopped_target_is_removed_and_not_recreated() {
        let a = run(&[target("a", false)], &[sidecar("s1", "a", "t1", true, 1)]);
        assert_eq!(
            removed(&a),
            vec![("s1".to_string(), RemoveReason::TargetNotRunning)]
        );
        assert!(created(&a).is_empty());
    }

    #[test]
    fn duplicates_keep_the_oldest() {
        let a = run(
            &[target("a", true)],
            &[
                sidecar("s2", "a", "t1", true, 5),
                sidecar("s1", "a", "t1", true, 3),
                sidecar("s3", "a", "t1", true, 9),
            ],
        );
        assert_eq!(
            removed(&a),
            vec![
                ("s2".to_string(), RemoveReason::Duplicate),
                ("s3".to_string(), RemoveReason::Duplicate)
            ]
        );
        assert!(created(&a).is_empty());
    }

    #[test]
    fn restarted_target_gets_a_new_sidecar() {
        let mut t = target("a", true);
        t.started_at = "t2".into();
        let a = run(&[t], &[sidecar("s1", "a", "t1", true, 1)]);
        assert_eq!(
            removed(&a),
            vec![("s1".to_string(), RemoveReason::StaleNamespace)]
        );
        assert_eq!(created(&a), vec!["a"]);
        assert!(
            matches!(a[0], Action::Remove { .. }),
            "remove before create: {a:?}"
        );
    }

    #[test]
    fn sidecar_without_namespace_label_is_stale() {
        let mut s = sidecar("s1", "a", "t1", true, 1);
        s.target_started = None;
        let a = run(&[target("a", true)], &[s]);
        assert_eq!(
            removed(&a),
            vec![("s1".to_string(), RemoveReason::StaleNamespace)]
        );
        assert_eq!(created(&a), vec!["a"]);
    }

    fn replacement(id: &str, of: &str, running: bool, created: i64) -> Sidecar {
        let mut s = sidecar(id, "a", "t1", running, created);
        s.made.replaces = Some(of.into());
        s
    }

    #[test]
    fn a_roll_out_in_progress_keeps_both_sidecars_and_creates_nothing() {
        let s = [
            sidecar("old", "a", "t1", true, 1),
            replacement("new", "old", true, 2),
        ];
        let a = run(&[target("a", true)], &s);
        assert!(a.is_empty(), "both kept, nothing made: {a:?}");
        // Held (a backoff of the target) changes nothing either.
        let held: HashSet<String> = ["a".to_string()].into();
        let a = plan(&[target("a", true)], &s, &allow(), &held, &HashSet::new());
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn the_sidecar_that_handed_over_is_removed_and_its_replacement_serves() {
        let s = [
            sidecar("old", "a", "t1", false, 1),
            replacement("new", "old", true, 2),
        ];
        let a = run(&[target("a", true)], &s);
        assert_eq!(
            removed(&a),
            vec![("old".to_string(), RemoveReason::HandedOver)]
        );
        assert!(created(&a).is_empty(), "{a:?}");
        // Held or not: a hand-over is no failure, nothing is kept as evidence.
        let held: HashSet<String> = ["a".to_string()].into();
        let a = plan(&[target("a", true)], &s, &allow(), &held, &HashSet::new());
        assert_eq!(
            removed(&a),
            vec![("old".to_string(), RemoveReason::HandedOver)]
        );
        // Once it is gone, the replacement is the target's only sidecar.
        let a = run(&[target("a", true)], &s[1..]);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn a_failed_or_late_replacement_is_removed_and_the_old_sidecar_keeps_serving() {
        let exited = [
            sidecar("old", "a", "t1", true, 1),
            replacement("new", "old", false, 2),
        ];
        let a = run(&[target("a", true)], &exited);
        assert_eq!(
            removed(&a),
            vec![("new".to_string(), RemoveReason::RolloutFailed)]
        );
        assert!(created(&a).is_empty(), "{a:?}");
        let late = [
            sidecar("old", "a", "t1", true, 1),
            replacement("new", "old", true, 2),
        ];
        let aborted: HashSet<String> = ["new".to_string()].into();
        let a = plan(
            &[target("a", true)],
            &late,
            &allow(),
            &HashSet::new(),
            &aborted,
        );
        assert_eq!(
            removed(&a),
            vec![("new".to_string(), RemoveReason::RolloutFailed)]
        );
    }

    #[test]
    fn a_replacement_of_a_restarted_target_is_stale_like_any_other() {
        let mut t = target("a", true);
        t.started_at = "t2".into();
        let s = [
            sidecar("old", "a", "t1", true, 1),
            replacement("new", "old", true, 2),
        ];
        let mut removed_ids: Vec<String> = removed(&run(&[t], &s))
            .into_iter()
            .map(|(id, reason)| {
                assert_eq!(reason, RemoveReason::StaleNamespace);
                id
            })
            .collect();
        removed_ids.sort();
        assert_eq!(removed_ids, ["new", "old"]);
    }

    #[test]
    fn exited_sidecar_is_replaced_unless_held() {
        let s = [sidecar("s1", "a", "t1", false, 1)];
        let a = run(&[target("a", true)], &s);
        assert_eq!(removed(&a), vec![("s1".to_string(), RemoveReason::Exited)]);
        assert_eq!(created(&a), vec!["a"]);
        let held: HashSet<String> = ["a".to_string()].into();
        let a = plan(&[target("a", true)], &s, &allow(), &held, &HashSet::new());
        assert!(
            a.is_empty(),
            "held: not recreated yet, and the exited one is kept as evidence: {a:?}"
        );
    }

    #[test]
    fn never_started_sidecar_is_adopted_not_duplicated() {
        // A spawner killed between create and start left it: start it, create nothing.
        let a = run(&[target("a", true)], &[never_started("s1", "a", 1)]);
        assert_eq!(started(&a), vec!["s1"]);
        assert!(created(&a).is_empty() && removed(&a).is_empty(), "{a:?}");
        // Also while held: starting is not creating.
        let held: HashSet<String> = ["a".to_string()].into();
        let a = plan(
            &[target("a", true)],
            &[never_started("s1", "a", 1)],
            &allow(),
            &held,
            &HashSet::new(),
        );
        assert_eq!(started(&a), vec!["s1"]);
        // Next to a running one it is a duplicate; of two, the oldest is adopted.
        let a = run(
            &[target("a", true)],
            &[
                never_started("s1", "a", 1),
                sidecar("s2", "a", "t1", true, 2),
            ],
        );
        assert_eq!(
            removed(&a),
            vec![("s1".to_string(), RemoveReason::NeverStarted)]
        );
        assert!(started(&a).is_empty() && created(&a).is_empty());
        let a = run(
            &[target("a", true)],
            &[never_started("s2", "a", 2), never_started("s1", "a", 1)],
        );
        assert_eq!(started(&a), vec!["s1"]);
        assert_eq!(
            removed(&a),
            vec![("s2".to_string(), RemoveReason::NeverStarted)]
        );
        // In a namespace that is gone: stale, replaced.
        let mut old = never_started("s1", "a", 1);
        old.target_started = Some("t0".into());
        let a = run(&[target("a", true)], &[old]);
        assert_eq!(
            removed(&a),
            vec![("s1".to_string(), RemoveReason::StaleNamespace)]
        );
        assert_eq!(created(&a), vec!["a"]);
    }

    #[test]
    fn exited_duplicate_next_to_a_running_one_is_just_removed() {
        let a = run(
            &[target("a", true)],
            &[
                sidecar("s1", "a", "t1", false, 1),
                sidecar("s2", "a", "t1", true, 2),
            ],
        );
        assert_eq!(removed(&a), vec![("s1".to_string(), RemoveReason::Exited)]);
        assert!(created(&a).is_empty());
    }

    #[test]
    fn refused_image_launches_nothing_and_reports() {
        let mut t = target("a", true);
        t.spec = Ok(spec("evil/miner:latest"));
        let a = run(&[t], &[sidecar("s1", "a", "t1", true, 1)]);
        assert_eq!(
            removed(&a),
            vec![("s1".to_string(), RemoveReason::TargetRefused)]
        );
        assert!(created(&a).is_empty());
        assert!(a.iter().any(|x| matches!(x,
            Action::Report { problem: Problem::ImageNotAllowed(i), .. } if i == "evil/miner:latest")));
    }

    #[test]
    fn invalid_label_launches_nothing_and_reports_only_that_target() {
        let mut bad = target("a", true);
        bad.spec = Err(LabelError {
            label: "tls-sidecar.mode".into(),
            value: "udp".into(),
            reason: "x".to_string(),
        });
        let a = run(&[bad, target("b", true)], &[]);
        assert_eq!(created(&a), vec!["b"]);
        assert!(a.iter().any(|x| matches!(x,
            Action::Report { target_id, problem: Problem::InvalidLabel(e), .. }
                if target_id == "a" && e.value == "udp")));
    }

    #[test]
    fn stopped_target_with_invalid_label_is_not_reported() {
        let mut bad = target("a", false);
        bad.spec = Err(LabelError {
            label: "l".into(),
            value: "v".into(),
            reason: "x".to_string(),
        });
        assert!(run(&[bad], &[]).is_empty());
    }

    #[test]
    fn plan_is_stable_when_applied() {
        // After the plan for a fresh target is executed, the next round does nothing: never two.
        let t = target("a", true);
        let first = run(std::slice::from_ref(&t), &[]);
        assert_eq!(created(&first).len(), 1);
        let after = run(&[t], &[sidecar("new", "a", "t1", true, 10)]);
        assert!(after.is_empty(), "{after:?}");
    }

    #[test]
    fn many_targets_are_independent() {
        let mut t2 = target("b", true);
        t2.started_at = "t9".into();
        let a = run(
            &[target("a", true), t2, target("c", false)],
            &[
                sidecar("sa", "a", "t1", true, 1),
                sidecar("sb", "b", "t1", true, 1),
                sidecar("sc", "c", "t1", true, 1),
            ],
        );
        assert_eq!(
            removed(&a),
            vec![
                ("sb".to_string(), RemoveReason::StaleNamespace),
                ("sc".to_string(), RemoveReason::TargetNotRunning)
            ]
        );
        assert_eq!(created(&a), vec!["b"]);
    }

    #[test]
    fn steps_are_independent_inside_and_removes_come_first() {
        // Target "a" restarted (stale sidecar + create), "b" has an exited sidecar and a
        // duplicate, "c" is new, "d" is refused, and an orphan of a gone target.
        let mut a = target("a", true);
        a.started_at = "t2".into();
        let mut d = target("d", true);
        d.spec = Ok(spec("evil/image:1"));
        let actions = run(
            &[a, target("b", true), target("c", true), d],
            &[
                sidecar("sa", "a", "t1", true, 1),
                sidecar("sb1", "b", "t1", false, 1),
                sidecar("sb2", "b", "t1", false, 2),
                sidecar("so", "gone", "t1", true, 1),
            ],
        );
        let total = actions.len();
        let s = steps(actions);
        assert_eq!(s.reports.len() + s.removes.len() + s.creates.len(), total);
        assert!(s.reports.iter().all(|a| matches!(a, Action::Report { .. })));
        let mut removed: Vec<String> = removed(&s.removes).into_iter().map(|r| r.0).collect();
        removed.sort();
        assert_eq!(removed, ["sa", "sb1", "sb2", "so"]);
        let mut creates = created(&s.creates);
        assert_eq!(creates.len(), s.creates.len(), "only creates in creates");
        creates.sort();
        // One create per target: concurrent creates never race for one target or one name.
        assert_eq!(creates, ["a", "b", "c"]);
    }
}
