//! `spawner status`: one row per opted-in container with its state, its sidecar(s) and any
//! problem, computed with the same observation and plan as the daemon so the two never disagree.

use std::collections::HashSet;
use std::io::Write;

use crate::config::Config;
use crate::docker::Engine;
use crate::error::Error;
use crate::observe::observe;
use crate::reconcile::{plan, Action};

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub target: String,
    pub state: String,
    pub sidecar: String,
    pub sidecar_state: String,
    pub problem: String,
}

/// Observes the engine and builds the rows.
pub async fn rows(cfg: &Config) -> Result<Vec<Row>, Error> {
    let engine = Engine::new(&cfg.docker_host, &cfg.docker_socket, cfg.docker_timeout);
    let observed = observe(&engine, &cfg.label_prefix, cfg.certs.is_some()).await?;
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
        let mine: Vec<_> = observed
            .sidecars
            .iter()
            .filter(|s| s.target_id == t.id)
            .collect();
        let mut problem = actions
            .iter()
            .find_map(|a| match a {
                Action::Report {
                    target_id, problem, ..
                } if *target_id == t.id => Some(problem.to_string()),
                _ => None,
            })
            .unwrap_or_default();
        if problem.is_empty() && t.running && mine.is_empty() {
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
            .map(|s| if s.running { "running" } else { "exited" })
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
        });
    }
    Ok(rows)
}

/// Renders rows as an aligned table with a header.
pub fn render(rows: &[Row]) -> String {
    let header = ["TARGET", "STATE", "SIDECAR", "SIDECAR STATE", "PROBLEM"];
    let cells: Vec<[&str; 5]> = rows
        .iter()
        .map(|r| {
            [
                r.target.as_str(),
                &r.state,
                &r.sidecar,
                &r.sidecar_state,
                &r.problem,
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
        }];
        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            "TARGET  STATE    SIDECAR          SIDECAR STATE  PROBLEM"
        );
        assert_eq!(
            lines[1],
            "web     running  web-tls-sidecar  running        -"
        );
    }
}
