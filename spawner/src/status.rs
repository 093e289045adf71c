//! `spawner status`: one row per opted-in container with its state, its sidecar(s), any problem
//! and the last sidecar failure, computed with the same observation, plan and failure rules as the
//! daemon so the two never disagree. Read from the engine only (no state file, no daemon to ask):
//! an exited sidecar the daemon keeps during its backoff is inspected and its log read here; once
//! replaced, its failure is read from the labels of the sidecar that replaced it. A sidecar's
//! certificate is judged by the daemon's own rule ([`source::judge`]) from its label and the
//! chain in its certificate volume, read through the engine: what it serves, with or without the
//! daemon's ACME flags, wherever the store is.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use crate::acme::store::Store;
use crate::acme::{self, Standing};
use crate::certs::source::{self, Expiry, Facts, Inputs, Recorded, Source};
use crate::config::Config;
use crate::engine::observe::{examine, observe, Observed};
use crate::engine::Engine;
use crate::error::Error;
use crate::plan::failure::{Failure, Verdict};
use crate::plan::reconcile::{plan, Action, Sidecar, SidecarState, Target};

/// One row of the table: one opted-in container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) target: String,
    pub(crate) target_id: String,
    /// `running` or `stopped`.
    pub(crate) state: &'static str,
    /// Its sidecars, oldest first (normally one).
    pub(crate) sidecars: Vec<SidecarRow>,
    /// Why it is not served, if it is not.
    pub(crate) problem: Option<String>,
    /// The target's last failed sidecar.
    pub(crate) last_failure: Option<Failure>,
    /// The certificate its sidecar serves (or, running without one yet, would be given);
    /// `None` for a target refused a sidecar, or stopped without one.
    pub(crate) cert: Option<Source>,
    /// Who issued that certificate, when its chain was read.
    pub(crate) cert_issuer: Option<String>,
    /// With ACME on, for a target with a `hostname` label: how its certificate stands.
    pub(crate) acme: Option<AcmeRow>,
    /// With `--identity-domain`: the target's SPIFFE ID.
    pub(crate) identity: Option<String>,
    /// The image its sidecar runs, and roll-outs; `None` without a running sidecar.
    pub(crate) image: Option<ImageRow>,
}

/// A served target's image and roll-out: the daemon's view (asked over its control socket), or
/// without a daemon to ask, what the engine shows alone (the image; not the spec, failures or
/// the pause, which only the daemon knows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageRow {
    /// The ID of the image the serving sidecar runs.
    pub(crate) running: String,
    /// The ID its image reference resolves to now.
    pub(crate) wanted: Option<String>,
    /// Why it is outdated (`new image`, `new spec`, ...), if it is.
    pub(crate) outdated: Option<String>,
    /// The roll-out's state (empty: nothing to do); `None`: unknown, no daemon answered.
    pub(crate) rollout: Option<String>,
}

impl ImageRow {
    fn cell(&self) -> String {
        let running = crate::daemon::short_image(&self.running);
        match (&self.outdated, &self.wanted) {
            (Some(why), Some(w)) if crate::daemon::short_image(w) != running => format!(
                "{running} (outdated: {why}, wants {})",
                crate::daemon::short_image(w)
            ),
            (Some(why), _) => format!("{running} (outdated: {why})"),
            (None, _) => running.to_string(),
        }
    }
}

/// What the daemon said of roll-outs (its view, JSON), or why it could not be asked.
type DaemonView = Result<serde_json::Value, String>;

/// A target's ACME standing, from the store and the daemon's state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AcmeRow {
    pub(crate) names: Vec<String>,
    /// How the CA checks the names: `http-01` or `tls-alpn-01` (the `acme-challenge` label).
    pub(crate) challenge: String,
    pub(crate) state: Standing,
    /// The last order's error (also while a certificate still serves: a failing renewal).
    pub(crate) error: Option<String>,
    /// The step that failed: `ca`, `dns zone lookup`, `dns update`, `dns hook`, `dns not
    /// visible`; `None` without an error or when the spawner itself failed (its store).
    pub(crate) step: Option<String>,
}

impl AcmeRow {
    /// One table cell: `valid (http-01)`, or the standing, the challenge, the step that
    /// failed and the error: `failing (dns-01, dns update): ...`.
    fn cell(&self) -> String {
        let (state, challenge) = (self.state.as_str(), &self.challenge);
        match (&self.error, &self.step) {
            (None, _) => format!("{state} ({challenge})"),
            (Some(e), None) => format!("{state} ({challenge}): {e}"),
            (Some(e), Some(step)) => format!("{state} ({challenge}, {step}): {e}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SidecarRow {
    pub(crate) name: String,
    pub(crate) id: String,
    /// `running`, `created` or `exited`.
    pub(crate) state: &'static str,
}

/// Observes the engine and builds the rows, one per opted-in container, sorted by name.
/// Also what the daemon said of roll-outs, or why it could not be asked.
pub(crate) async fn rows(cfg: &Config) -> Result<(Vec<Row>, DaemonView), Error> {
    let survey = Survey::take(cfg).await?;
    let mut targets: Vec<_> = survey.observed.targets.iter().collect();
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = Vec::new();
    for t in targets {
        rows.push(survey.row(t).await?);
    }
    Ok((rows, survey.daemon))
}

/// The ACME state file as read (or why it could not be), and the store it was read from.
type AcmeState = (Result<HashMap<String, acme::Entry>, String>, Store);

/// One look at the engine (and the ACME store), judged by the daemon's rules: every row is
/// built from it.
struct Survey<'a> {
    cfg: &'a Config,
    engine: Engine,
    /// What each sidecar's labels say it was given, by sidecar ID.
    recorded: HashMap<String, Recorded>,
    observed: Observed,
    /// The daemon's plan for what was observed: its refusals are the rows' problems.
    actions: Vec<Action>,
    /// With ACME on.
    acme: Option<AcmeState>,
    /// The daemon's roll-out view.
    daemon: DaemonView,
}

impl<'a> Survey<'a> {
    /// Lists the containers, observes and plans them as the daemon would, and reads the ACME
    /// state.
    async fn take(cfg: &'a Config) -> Result<Survey<'a>, Error> {
        let engine = Engine::new(&cfg.docker_host, &cfg.docker_socket, cfg.docker_timeout);
        let listing = engine.list_containers().await?;
        let recorded: HashMap<String, Recorded> = listing
            .iter()
            .filter_map(|c| {
                let given = source::recorded(&cfg.label_prefix, c.labels.as_ref())?;
                Some((c.id.clone()?, given))
            })
            .collect();
        let observed = observe(
            &engine,
            listing,
            &cfg.label_prefix,
            crate::plan::container::offered(cfg),
            &HashSet::new(),
            &mut crate::engine::observe::FactsCache::default(),
        )
        .await?;
        let actions = plan(
            &observed.targets,
            &observed.sidecars,
            &cfg.allow,
            &HashSet::new(),
            &HashSet::new(),
        );
        let acme = cfg.acme.as_ref().map(|a| {
            let store = Store::new(a.store.clone());
            (acme::read_state(&store), store)
        });
        Ok(Survey {
            cfg,
            engine,
            recorded,
            observed,
            actions,
            acme,
            daemon: daemon_view(cfg).await,
        })
    }

    /// The image row of target `t` served by `serving`.
    async fn image(
        &self,
        t: &Target,
        serving: Option<&Sidecar>,
    ) -> Result<Option<ImageRow>, Error> {
        let Some(s) = serving else { return Ok(None) };
        let running = s.made.image_id.clone();
        if let Ok(view) = &self.daemon {
            let entry = &view["targets"][&t.id];
            let text = |k: &str| entry[k].as_str().map(String::from);
            return Ok(Some(ImageRow {
                running,
                wanted: text("wanted_image_id"),
                outdated: text("outdated"),
                rollout: Some(text("rollout").unwrap_or_default()),
            }));
        }
        let wanted = match &t.spec {
            Ok(spec) => self.engine.image_id(&spec.image).await?,
            Err(_) => None,
        };
        let outdated = wanted
            .as_ref()
            .filter(|w| !running.is_empty() && **w != running)
            .map(|_| "new image".to_string());
        Ok(Some(ImageRow {
            running,
            wanted,
            outdated,
            rollout: None,
        }))
    }

    /// The row of target `t`.
    async fn row(&self, t: &Target) -> Result<Row, Error> {
        let cfg = self.cfg;
        let mut mine: Vec<&Sidecar> = self
            .observed
            .sidecars
            .iter()
            .filter(|s| s.target_id == t.id)
            .collect();
        mine.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        let (last_failure, failing) = self.failures(t, &mine).await?;
        let refused = self.actions.iter().find_map(|a| match a {
            Action::Report {
                target_id, problem, ..
            } if *target_id == t.id => Some(problem.to_string()),
            _ => None,
        });
        let serving = mine.iter().any(|s| s.state == SidecarState::Running);
        let problem = match unserved(refused.as_deref(), t.running, failing, serving) {
            None => None,
            Some(Unserved::Pending) => Some(self.pending(t).await?),
            Some(u) => Some(u.to_string()),
        };
        // A certificate for a target with a sidecar, or about to get one; none for the others.
        let newest = mine
            .last()
            .and_then(|s| Some((*s, self.recorded.get(&s.id)?)));
        let managed = t
            .spec
            .as_ref()
            .ok()
            .filter(|spec| crate::plan::container::acme_managed(cfg, spec));
        let cert = match &t.spec {
            Ok(spec) if newest.is_some() || (t.running && refused.is_none()) => {
                Some(certificate(cfg, &self.engine, spec, newest, managed.is_some()).await)
            }
            _ => None,
        };
        let acme = match (managed, &self.acme) {
            (Some(spec), Some((state, store))) => {
                let directory = cfg.acme.as_ref().map_or("", |a| a.directory.as_str());
                Some(acme_row(spec, state, store, directory))
            }
            _ => None,
        };
        let current = mine
            .iter()
            .copied()
            .filter(|s| s.state == SidecarState::Running)
            .find(|s| s.target_started.as_deref() == Some(t.started_at.as_str()));
        let image = self.image(t, current).await?;
        Ok(Row {
            image,
            target: t.name.clone(),
            target_id: t.id.clone(),
            state: if t.running { "running" } else { "stopped" },
            sidecars: mine.iter().map(|s| sidecar_row(s)).collect(),
            problem,
            last_failure,
            cert_issuer: cert.as_ref().and_then(|c| c.issuer.clone()),
            cert: cert.map(|c| c.source),
            acme,
            identity: crate::plan::container::identity_domain(cfg).and_then(|domain| {
                let id = t.spec.as_ref().ok()?.identity.as_ref()?;
                Some(id.name.spiffe_id(domain))
            }),
        })
    }

    /// The last failure among `mine` (`t`'s sidecars, oldest first), and whether `t` is
    /// failing: a sidecar made for its current start exited with a failure. While `t` runs,
    /// an exited sidecar is inspected (its exit and log), which is newer than what the labels
    /// carry.
    async fn failures(
        &self,
        t: &Target,
        mine: &[&Sidecar],
    ) -> Result<(Option<Failure>, bool), Error> {
        let mut last_failure = mine.iter().rev().find_map(|s| s.last_failure.clone());
        let mut failing = false;
        for s in mine {
            if !t.running || s.state != SidecarState::Exited {
                continue;
            }
            if let Some(Verdict::Failed(f)) = examine(&self.engine, &s.id).await? {
                if s.target_started.as_deref() == Some(t.started_at.as_str()) {
                    failing = true;
                }
                last_failure = Some(f);
            }
        }
        Ok((last_failure, failing))
    }

    /// Why a running target has no sidecar yet: its image missing from the engine, or nothing
    /// to say but that one is coming.
    async fn pending(&self, t: &Target) -> Result<String, Error> {
        Ok(match &t.spec {
            Ok(spec) if !self.engine.image_exists(&spec.image).await? => {
                format!("image {} missing locally", spec.image)
            }
            _ => Unserved::Pending.to_string(),
        })
    }
}

/// Why a target is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Unserved {
    /// The daemon refuses it a sidecar (a bad label, an image not allowed): its words.
    Refused(String),
    /// Its sidecar for this start exits with a failure; the daemon retries with backoff.
    Failing,
    /// Running and nothing serves it yet, nor failed: its image may be missing
    /// ([`Survey::pending`] looks).
    Pending,
}

impl std::fmt::Display for Unserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unserved::Refused(problem) => f.write_str(problem),
            Unserved::Failing => f.write_str("sidecar failing, retried with backoff"),
            Unserved::Pending => f.write_str("sidecar pending"),
        }
    }
}

/// Why a target is not served, if it is not: the daemon's refusal first; otherwise, while it
/// runs with no sidecar running, a failing sidecar or a pending one. A stopped target is not
/// expected to be served.
fn unserved(
    refused: Option<&str>,
    running: bool,
    failing: bool,
    serving: bool,
) -> Option<Unserved> {
    match refused {
        Some(problem) => Some(Unserved::Refused(problem.to_string())),
        None if !running || serving => None,
        None if failing => Some(Unserved::Failing),
        None => Some(Unserved::Pending),
    }
}

/// A sidecar's cells.
fn sidecar_row(s: &Sidecar) -> SidecarRow {
    SidecarRow {
        name: s.name.clone(),
        id: s.id.clone(),
        state: match s.state {
            SidecarState::Running => "running",
            SidecarState::Created => "created",
            SidecarState::Exited => "exited",
        },
    }
}

/// The daemon's roll-out view, asked over its control socket.
async fn daemon_view(cfg: &Config) -> DaemonView {
    let text = crate::control::status(&cfg.label_prefix)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("the daemon's answer is not JSON: {e}"))
}

/// How the certificate of `spec`'s names stands.
fn acme_row(
    spec: &crate::plan::labels::TargetSpec,
    state: &Result<HashMap<String, acme::Entry>, String>,
    store: &Store,
    directory: &str,
) -> AcmeRow {
    let names: Vec<shared::dns::CertName> = spec.names().collect();
    let held = store.held(&spec.hostname);
    let wanted = acme::name_set(&names);
    let (entry, unreadable) = match state {
        Ok(entries) => (entries.get(&acme::key(&names)), None),
        Err(e) => (None, Some(e.clone())),
    };
    let now = std::time::SystemTime::now();
    let state = acme::standing(now, &wanted, held.as_ref(), entry, directory);
    AcmeRow {
        names: names.iter().map(ToString::to_string).collect(),
        challenge: spec.acme_challenge.to_string(),
        state,
        error: entry.and_then(|e| e.last_error.clone()).or(unreadable),
        step: entry.and_then(|e| e.last_step.clone()),
    }
}

/// The certificate of a target: with a sidecar, what it serves (its label, the chain in its
/// certificate volume, what the store holds now); without one, what the daemon would give it.
/// `acme`: this process's flags make the target ACME-managed (needed only for a sidecar labelled
/// by a spawner older than the `acme` label).
async fn certificate(
    cfg: &Config,
    engine: &Engine,
    spec: &crate::plan::labels::TargetSpec,
    sidecar: Option<(&Sidecar, &Recorded)>,
    acme: bool,
) -> Facts {
    let hostname = spec.hostname.as_str();
    let store = source::look(cfg.certs.as_ref(), hostname).await;
    let served = match sidecar {
        Some((s, given)) => {
            let paths = source::served_paths(given, acme, cfg.certs.as_ref(), hostname);
            source::read_served(engine, &s.id, &s.name, &paths).await
        }
        None => None,
    };
    source::judge(&Inputs {
        recorded: sidecar.map(|(_, given)| given),
        acme,
        hostname,
        store: &store,
        served: served.as_ref(),
    })
}

/// The `CERTIFICATE` cell: the source, and the issuer of a chain that was read.
fn cert_cell(r: &Row, now: i64) -> String {
    match (&r.cert, &r.cert_issuer) {
        (None, _) => String::new(),
        (Some(c), Some(issuer)) if c.is_file() => format!("{}, issuer {issuer}", c.cell(now)),
        (Some(c), _) => c.cell(now),
    }
}

/// Renders rows as an aligned table with a header; `now` (unix seconds) marks expired
/// certificates.
pub(crate) fn render(rows: &[Row], now: i64) -> String {
    let acme = rows.iter().any(|r| r.acme.is_some());
    let mut header = vec![
        "TARGET",
        "STATE",
        "SIDECAR",
        "SIDECAR STATE",
        "CERTIFICATE",
        "PROBLEM",
        "LAST FAILURE",
    ];
    if acme {
        header.push("ACME");
    }
    let identity = rows.iter().any(|r| r.identity.is_some());
    if identity {
        header.push("IDENTITY");
    }
    header.push("IMAGE");
    let rollout = rows
        .iter()
        .filter_map(|r| r.image.as_ref())
        .any(|i| i.rollout.as_deref() != Some(""));
    if rollout {
        header.push("ROLLOUT");
    }
    let header: Vec<String> = header.into_iter().map(String::from).collect();
    let dash = |v: String| if v.is_empty() { "-".to_string() } else { v };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let sidecars = |f: fn(&SidecarRow) -> &str| {
                dash(r.sidecars.iter().map(f).collect::<Vec<_>>().join(","))
            };
            let mut cells = vec![
                r.target.clone(),
                r.state.to_string(),
                sidecars(|s| &s.name),
                sidecars(|s| s.state),
                dash(cert_cell(r, now)),
                dash(r.problem.clone().unwrap_or_default()),
                dash(
                    r.last_failure
                        .as_ref()
                        .map(Failure::to_string)
                        .unwrap_or_default(),
                ),
            ];
            if acme {
                cells.push(dash(r.acme.as_ref().map(AcmeRow::cell).unwrap_or_default()));
            }
            if identity {
                cells.push(dash(r.identity.clone().unwrap_or_default()));
            }
            cells.push(dash(
                r.image.as_ref().map(ImageRow::cell).unwrap_or_default(),
            ));
            if rollout {
                let cell = match r.image.as_ref().map(|i| i.rollout.as_deref()) {
                    None => String::new(),
                    Some(None) => "?".to_string(),
                    Some(Some(state)) => state.to_string(),
                };
                cells.push(dash(cell));
            }
            cells
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(String::len).collect();
    for c in &cells {
        for (w, v) in widths.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&header).chain(&cells) {
        let parts: Vec<String> = line
            .iter()
            .zip(widths.iter().copied())
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The rows as a JSON array, one object per row; the fields are documented in docs/spawner.md
/// and only ever added to.
pub(crate) fn to_json(rows: &[Row]) -> serde_json::Value {
    use serde_json::{json, Value};
    let rows = rows.iter().map(|r| {
        let (source, reason, detail, not_after) = match &r.cert {
            None => (Value::Null, Value::Null, Value::Null, Value::Null),
            Some(Source::File { path, expiry }) => (
                json!("file"),
                Value::Null,
                match expiry {
                    Expiry::At(_) => json!(path),
                    Expiry::Unknown(why) => json!(format!("{path}: expiry unknown ({why})")),
                },
                match expiry {
                    Expiry::At(t) => json!(t),
                    Expiry::Unknown(_) => Value::Null,
                },
            ),
            Some(Source::SelfSigned(f)) => (
                json!("self-signed"),
                json!(f.code()),
                json!(f.detail()),
                Value::Null,
            ),
            Some(Source::Unknown(why)) => (json!("unknown"), Value::Null, json!(why), Value::Null),
        };
        json!({
            "target": r.target,
            "target_id": r.target_id,
            "state": r.state,
            "sidecars": r.sidecars.iter().map(|s| json!({
                "name": s.name,
                "id": s.id,
                "state": s.state,
            })).collect::<Vec<_>>(),
            "problem": r.problem,
            "last_failure": r.last_failure.as_ref().map(|f| json!({
                "exit_code": f.exit_code,
                "error": f.error,
                "text": f.to_string(),
            })),
            "cert_source": source,
            "cert_reason": reason,
            "cert_detail": detail,
            "cert_not_after": not_after,
            "cert_issuer": r.cert_issuer,
            "acme_state": r.acme.as_ref().map(|a| a.state.as_str()),
            "acme_error": r.acme.as_ref().and_then(|a| a.error.clone()),
            "acme_names": r.acme.as_ref().map(|a| a.names.clone()),
            "acme_challenge": r.acme.as_ref().map(|a| a.challenge.clone()),
            "acme_step": r.acme.as_ref().and_then(|a| a.step.clone()),
            "identity": r.identity,
            "image_id": r.image.as_ref().map(|i| i.running.clone()),
            "wanted_image_id": r.image.as_ref().and_then(|i| i.wanted.clone()),
            "outdated": r.image.as_ref().and_then(|i| i.outdated.clone()),
            "rollout": r.image.as_ref().and_then(|i| i.rollout.clone()),
        })
    });
    Value::Array(rows.collect())
}

/// `spawner status`: prints the table (or, with `json`, the JSON array) to stdout.
pub(crate) async fn run(cfg: &Config, json: bool) -> Result<(), Error> {
    let (rows, daemon) = rows(cfg).await?;
    match &daemon {
        Ok(view) => {
            if let Some(paused) = view["paused"].as_str() {
                eprintln!("note: the roll-out is paused: {paused}");
            }
        }
        Err(why) => eprintln!(
            "note: roll-out state unknown (outdated by image only; failures and the pause are the daemon's): {why}"
        ),
    }
    let out = if json {
        format!("{:#}\n", to_json(&rows))
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        render(&rows, now)
    };
    std::io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(Error::WriteStatus)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::source::Fallback;

    fn row() -> Row {
        Row {
            target: "web".into(),
            target_id: "abc".into(),
            state: "running",
            sidecars: vec![SidecarRow {
                name: "web-tls-sidecar".into(),
                id: "def".into(),
                state: "running",
            }],
            problem: None,
            last_failure: Some(Failure {
                exit_code: Some(2),
                error: "error: no key".into(),
            }),
            cert: Some(Source::File {
                path: "/etc/le/live/web/fullchain.pem".into(),
                expiry: Expiry::At(1_925_078_400),
            }),
            cert_issuer: None,
            acme: None,
            identity: None,
            image: Some(ImageRow {
                running: "sha256:0123456789abcdef".into(),
                wanted: Some("sha256:0123456789abcdef".into()),
                outdated: None,
                rollout: Some(String::new()),
            }),
        }
    }

    #[test]
    fn a_refusal_comes_first_then_a_failing_or_pending_sidecar_of_a_running_target() {
        let refused = Some("image evil is not in the allow-list");
        for (running, failing, serving) in [(true, true, false), (false, false, false)] {
            assert_eq!(
                unserved(refused, running, failing, serving),
                Some(Unserved::Refused(
                    "image evil is not in the allow-list".into()
                ))
            );
        }
        assert_eq!(unserved(None, true, true, false), Some(Unserved::Failing));
        assert_eq!(unserved(None, true, false, false), Some(Unserved::Pending));
        assert_eq!(
            unserved(None, true, true, true),
            None,
            "a running sidecar serves it"
        );
        assert_eq!(unserved(None, false, true, false), None, "stopped");
        assert_eq!(
            Unserved::Failing.to_string(),
            "sidecar failing, retried with backoff"
        );
        assert_eq!(Unserved::Pending.to_string(), "sidecar pending");
    }

    #[test]
    fn a_sidecar_row_names_its_state() {
        let sidecar = |state| Sidecar {
            id: "def".into(),
            name: "web-tls-sidecar".into(),
            target_id: "abc".into(),
            target_started: None,
            state,
            created: 0,
            last_failure: None,
            made: Default::default(),
        };
        let states = [
            (SidecarState::Running, "running"),
            (SidecarState::Created, "created"),
            (SidecarState::Exited, "exited"),
        ];
        for (state, cell) in states {
            assert_eq!(
                sidecar_row(&sidecar(state)),
                SidecarRow {
                    name: "web-tls-sidecar".into(),
                    id: "def".into(),
                    state: cell,
                }
            );
        }
    }

    #[test]
    fn an_identity_column_appears_with_identities() {
        let with = Row {
            identity: Some("spiffe://example.internal/web".into()),
            ..row()
        };
        let t = render(&[with.clone(), row()], 0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("LAST FAILURE           IDENTITY"), "{t}");
        assert!(lines[1].contains("spiffe://example.internal/web"), "{t}");
        assert!(lines[2].contains(" -  "), "{t}");
        assert_eq!(
            to_json(&[with])[0]["identity"],
            "spiffe://example.internal/web"
        );
    }

    #[test]
    fn outdated_sidecars_show_both_images_and_their_roll_out() {
        let outdated = Row {
            image: Some(ImageRow {
                running: "sha256:0123456789abcdef".into(),
                wanted: Some("sha256:fedcba9876543210".into()),
                outdated: Some("new image".into()),
                rollout: Some("rollout failed: exit 2: error: unknown flag".into()),
            }),
            ..row()
        };
        let t = render(&[outdated.clone(), row()], 0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].ends_with("IMAGE                                                   ROLLOUT"),
            "{t}"
        );
        assert!(
            lines[1].ends_with("0123456789ab (outdated: new image, wants fedcba987654)  rollout failed: exit 2: error: unknown flag"),
            "{t}"
        );
        assert!(
            lines[2].ends_with("0123456789ab                                            -"),
            "{t}"
        );
        let v = to_json(&[outdated]);
        assert_eq!(v[0]["wanted_image_id"], "sha256:fedcba9876543210");
        assert_eq!(v[0]["outdated"], "new image");
        // Without a daemon to ask: the image alone, the roll-out unknown.
        let unknown = Row {
            image: Some(ImageRow {
                rollout: None,
                ..row().image.expect("an image row")
            }),
            ..row()
        };
        let t = render(std::slice::from_ref(&unknown), 0);
        assert!(
            t.lines()
                .nth(1)
                .expect("a row")
                .ends_with("0123456789ab  ?"),
            "{t}"
        );
        assert_eq!(to_json(&[unknown])[0]["rollout"], serde_json::Value::Null);
    }

    #[test]
    fn table_is_aligned() {
        let api = Row {
            target: "api".into(),
            sidecars: vec![],
            last_failure: None,
            problem: Some("sidecar pending".into()),
            cert: Some(Source::SelfSigned(Fallback::Missing("live/api/".into()))),
            image: None,
            ..row()
        };
        let t = render(&[row(), api], 0);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "TARGET  STATE    SIDECAR          SIDECAR STATE  CERTIFICATE                         PROBLEM          LAST FAILURE           IMAGE"
        );
        assert_eq!(
            lines[1],
            "web     running  web-tls-sidecar  running        file, expires 2031-01-02T00:00:00Z  -                exit 2: error: no key  0123456789ab"
        );
        assert_eq!(
            lines[2],
            "api     running  -                -              self-signed: live/api/ missing      sidecar pending  -                      -"
        );
    }

    #[test]
    fn json_has_the_same_rows_as_data() {
        let v = to_json(&[row()]);
        assert_eq!(
            v,
            serde_json::json!([{
                "target": "web",
                "target_id": "abc",
                "state": "running",
                "sidecars": [{"name": "web-tls-sidecar", "id": "def", "state": "running"}],
                "problem": null,
                "last_failure": {"exit_code": 2, "error": "error: no key", "text": "exit 2: error: no key"},
                "cert_source": "file",
                "cert_reason": null,
                "cert_detail": "/etc/le/live/web/fullchain.pem",
                "cert_not_after": 1_925_078_400,
                "cert_issuer": null,
                "acme_state": null,
                "acme_error": null,
                "acme_names": null,
                "acme_challenge": null,
                "acme_step": null,
                "identity": null,
                "image_id": "sha256:0123456789abcdef",
                "wanted_image_id": "sha256:0123456789abcdef",
                "outdated": null,
                "rollout": "",
            }])
        );
        let failing = Row {
            acme: Some(AcmeRow {
                names: vec!["web.example".into(), "www.example".into()],
                challenge: "http-01".into(),
                state: Standing::Failing,
                error: Some("validating web.example by http-01: connection refused".into()),
                step: Some("ca".into()),
            }),
            ..row()
        };
        let v = to_json(std::slice::from_ref(&failing));
        assert_eq!(v[0]["acme_state"], "failing");
        assert_eq!(v[0]["acme_challenge"], "http-01");
        assert_eq!(v[0]["acme_step"], "ca");
        assert_eq!(
            v[0]["acme_names"],
            serde_json::json!(["web.example", "www.example"])
        );
        assert_eq!(
            v[0]["acme_error"],
            "validating web.example by http-01: connection refused"
        );
        let table = render(&[failing, row()], 0);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("  ACME "), "{table}");
        assert!(
            lines[1].contains(
                "failing (http-01, ca): validating web.example by http-01: connection refused  "
            ),
            "{table}"
        );
        assert!(lines[2].contains("  -   "), "{table}");
        let hidden = Row {
            cert: Some(Source::SelfSigned(Fallback::DirNotVisible)),
            ..row()
        };
        let v = to_json(&[hidden]);
        assert_eq!(v[0]["cert_source"], "self-signed");
        assert_eq!(v[0]["cert_reason"], "certs-dir-not-visible");
        assert_eq!(v[0]["cert_detail"], "certs dir not visible to the spawner");
        assert_eq!(v[0]["cert_not_after"], serde_json::Value::Null);
    }

    #[test]
    fn the_served_certificate_shows_its_issuer_and_what_cannot_be_seen_says_why() {
        let acme = Row {
            cert: Some(Source::File {
                path: "/store/live/a.example/fullchain.pem".into(),
                expiry: Expiry::At(1_925_078_400),
            }),
            cert_issuer: Some("Pebble Intermediate CA 1a2b3c".into()),
            ..row()
        };
        let table = render(std::slice::from_ref(&acme), 0);
        assert!(
            table.lines().nth(1).is_some_and(|l| l.contains(
                "file, expires 2031-01-02T00:00:00Z, issuer Pebble Intermediate CA 1a2b3c"
            )),
            "{table}"
        );
        let v = to_json(&[acme]);
        assert_eq!(v[0]["cert_source"], "file");
        assert_eq!(v[0]["cert_not_after"], 1_925_078_400);
        assert_eq!(v[0]["cert_issuer"], "Pebble Intermediate CA 1a2b3c");
        let unseen = Row {
            cert: Some(Source::Unknown(
                "cannot see it: the store: no --certs-from".into(),
            )),
            cert_issuer: None,
            ..row()
        };
        let table = render(std::slice::from_ref(&unseen), 0);
        assert!(
            table.contains("unknown: cannot see it: the store: no --certs-from"),
            "{table}"
        );
        let v = to_json(&[unseen]);
        assert_eq!(v[0]["cert_source"], "unknown");
        assert_eq!(v[0]["cert_reason"], serde_json::Value::Null);
        assert_eq!(
            v[0]["cert_detail"],
            "cannot see it: the store: no --certs-from"
        );
        assert_eq!(v[0]["cert_not_after"], serde_json::Value::Null);
    }
}
