//! `spawner status`: one row per opted-in container with its state, its sidecar(s), any problem
//! and the last sidecar failure, computed with the same observation, plan and failure rules as the
//! daemon so the two never disagree. Read from the engine only (no state file, no daemon to ask):
//! an exited sidecar the daemon keeps during its backoff is inspected and its log read here; once
//! replaced, its failure is read from the labels of the sidecar that replaced it.

use std::collections::HashSet;
use std::io::Write;

use crate::config::Config;
use crate::docker::Engine;
use crate::error::Error;
use crate::failure::{self, Verdict};
use crate::observe::observe;
use crate::reconcile::{plan, Action, SidecarState};

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub target: String,
    pub state: String,
    pub sidecar: String,
    pub sidecar_state: String,
    pub problem: String,
    /// `exit N: <last stderr line>` of the target's last failed sidecar, or `-`.
    pub last_failure: String,
}

/// Observes the engine and builds the rows.
pub async fn rows(cfg: &Config) -> Result<Vec<Row>, Error> {
    let engine = Engine::new(&cfg.docker_host, &cfg.docker_socket, cfg.docker_timeout);
    let observed = observe(
        &engine,
        engine.list_containers().await?,
        &cfg.label_prefix,
        cfg.certs.is_some(),
        &HashSet::new(),
        &mut crate::observe::FactsCache::default(),
    )
    .await?;
    let actions = plan(
        &observed.targets,
        &observed.sidecars,
        &cfg.allow,
        &HashSet::new(),
    );
    let mut rows = Vec::new();
    let mut targets: Vec<_> = observed.targets.iter().collect();
    targets.sort_by(|a, b| a.name.cmp(&b.name));
    for t in targets {
        let mut mine: Vec<_> = observed
            .sidecars
            .iter()
            .filter(|s| s.target_id == t.id)
            .collect();
        mine.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        let mut last_failure = mine.iter().rev().find_map(|s| s.last_failure.clone());
        let mut failing = false;
        for s in &mine {
            if !t.running || s.state != SidecarState::Exited {
                continue;
            }
            if let Some(Verdict::Failed(f)) = failure::examine(&engine, &s.id).await? {
                if s.target_started.as_deref() == Some(t.started_at.as_str()) {
                    failing = true;
                }
                last_failure = Some(f);
            }
        }
        let mut problem = actions
            .iter()
            .find_map(|a| match a {
                Action::Report {
                    target_id, problem, ..
                } if *target_id == t.id => Some(problem.to_string()),
                _ => None,
            })
            .unwrap_or_default();
        let serving = mine.iter().any(|s| s.state == SidecarState::Running);
        if problem.is_empty() && t.running && failing && !serving {
            problem = "sidecar failing, retried with backoff".to_string();
        } else if problem.is_empty() && t.running && !serving {
            problem = match &t.spec {
                Ok(spec) if !engine.image_exists(&spec.image).await? => {
                    format!("image {} missing locally", spec.image)
                }
                _ => "sidecar pending".to_string(),
            };
        }
        let state = if t.running { "running" } else { "stopped" };
        let sidecar = mine
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let sidecar_state = mine
            .iter()
            .map(|s| match s.state {
                SidecarState::Running => "running",
                SidecarState::Created => "created",
                SidecarState::Exited => "exited",
            })
            .collect::<Vec<_>>()
            .join(",");
        rows.push(Row {
            target: t.name.clone(),
            state: state.to_string(),
            sidecar: if sidecar.is_empty() {
                "-".into()
            } else {
                sidecar
            },
            sidecar_state: if sidecar_state.is_empty() {
                "-".into()
            } else {
                sidecar_state
            },
            problem: if problem.is_empty() {
                "-".into()
            } else {
                problem
            },
            last_failure: last_failure.map_or_else(|| "-".into(), |f| f.to_string()),
        });
    }
    Ok(rows)
}

/// Renders rows as an aligned table with a header.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "TARGET",
        "STATE",
        "SIDECAR",
        "SIDECAR STATE",
        "PROBLEM",
        "LAST FAILURE",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.target.as_str(),
                &r.state,
                &r.sidecar,
                &r.sidecar_state,
                &r.problem,
                &r.last_failure,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for c in &cells {
        for (w, v) in widths.iter_mut().zip(c) {
            *w = (*w).max(v.len());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&header).chain(&cells) {
        let parts: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `spawner status`: prints the table to stdout.
pub async fn run(cfg: &Config) -> Result<(), Error> {
    let table = render(&rows(cfg).await?);
    std::io::stdout()
        .lock()
        .write_all(table.as_bytes())
        .map_err(Error::WriteStatus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned() {
        let rows = vec![Row {
            target: "web".into(),
            state: "running".into(),
            sidecar: "web-tls-sidecar".into(),
            sidecar_state: "running".into(),
            problem: "-".into(),
            last_failure: "exit 2: error: no key".into(),
        }];
        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            "TARGET  STATE    SIDECAR          SIDECAR STATE  PROBLEM  LAST FAILURE"
        );
        assert_eq!(
            lines[1],
            "web     running  web-tls-sidecar  running        -        exit 2: error: no key"
        );
    }
}
