//! Reads the engine's state into the reconcile inputs: opted-in targets (with their current
//! network namespace, `StartedAt`) and the sidecars carrying our labels; and what a sidecar that
//! ended says of itself, for the failure rules ([`examine`]).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::num::NonZeroU16;

use bollard::models::{
    ContainerInspectResponse, ContainerSummary, ContainerSummaryStateEnum, PortMap,
};
use shared::schema::{label, label_name};

use crate::engine::{Engine, Error};
use crate::plan::failure::{self, State, Verdict};
use crate::plan::labels::{parse_target, Offered, TargetSpec};
use crate::plan::reconcile::{Made, Sidecar, SidecarState, Target};

/// How many of the last stderr lines of an ended sidecar are fetched to find its error line.
const LOG_TAIL_LINES: &str = "5";

/// What the engine shows, as the reconcile decision needs it.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    pub(crate) targets: Vec<Target>,
    pub(crate) sidecars: Vec<Sidecar>,
    /// For each container of `down` passed to [`observe`]: whether the listing showed it running
    /// (absent: not listed at all).
    pub(crate) listed: HashMap<String, bool>,
}

/// What an inspect of a running target says that the listing does not.
#[derive(Debug, Clone)]
struct Facts {
    started_at: String,
    exposed: Vec<String>,
    running: bool,
    own_network: bool,
    /// The target's UDP ports the engine publishes: `(port in the target, host port)`.
    udp_published: Vec<(u16, NonZeroU16)>,
}

/// Inspect results of running targets, so a turn inspects only the targets something points at
/// (an event named them, they were not running at the last look, or they are new), not every
/// target on every event: the engine calls per event stay constant however many targets run.
/// Forgotten per container when an event names it, wholly when the event stream was
/// re-subscribed (events may be lost) and at every periodic resync.
#[derive(Debug, Default)]
pub(crate) struct FactsCache {
    map: HashMap<String, Facts>,
}

impl FactsCache {
    /// Forgets what `touched` names (`None`: everything).
    pub(crate) fn forget(&mut self, touched: Option<HashSet<String>>) {
        match touched {
            None => self.map.clear(),
            Some(ids) => {
                for id in ids {
                    self.map.remove(&id);
                }
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// What a full listing would show for a container, from a fresh inspect of it: how a turn keeps
/// its listing current without listing everything again.
pub(crate) fn summary_of(info: &ContainerInspectResponse) -> ContainerSummary {
    ContainerSummary {
        id: info.id.clone(),
        names: info.name.clone().map(|n| vec![n]),
        labels: info.config.as_ref().and_then(|c| c.labels.clone()),
        image_id: info.image.clone(),
        state: info
            .state
            .as_ref()
            .and_then(|s| s.status)
            .and_then(|s| s.to_string().parse().ok()),
        created: info
            .created
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64),
        ..Default::default()
    }
}

fn sidecar_state(s: Option<ContainerSummaryStateEnum>) -> SidecarState {
    match s {
        Some(
            ContainerSummaryStateEnum::RUNNING
            | ContainerSummaryStateEnum::PAUSED
            | ContainerSummaryStateEnum::RESTARTING,
        ) => SidecarState::Running,
        Some(ContainerSummaryStateEnum::CREATED) => SidecarState::Created,
        _ => SidecarState::Exited,
    }
}

fn name_of(c: &ContainerSummary) -> String {
    c.names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default()
}

/// The reconcile inputs from a listing (whose entries for `down` containers the caller has
/// already corrected by inspecting them, see [`crate::engine::event_reports`]), plus an inspect
/// of each running target not in `cache` (for `StartedAt` and exposed ports). `offered`: what
/// sidecars are given (see [`parse_target`]).
pub(crate) async fn observe(
    engine: &Engine,
    listing: impl IntoIterator<Item = ContainerSummary>,
    prefix: &str,
    offered: Offered,
    down: &HashSet<String>,
    cache: &mut FactsCache,
) -> Result<Observed, Error> {
    let mut running_targets: HashSet<String> = HashSet::new();
    let managed_key = label_name(prefix, label::MANAGED_BY);
    let for_key = label_name(prefix, label::SIDECAR_FOR);
    let started_key = label_name(prefix, label::TARGET_STARTED);
    let digest_key = label_name(prefix, label::SPEC_DIGEST);
    let replaces_key = label_name(prefix, label::REPLACES);
    let mut out = Observed::default();
    for c in listing {
        let (Some(id), Some(labels)) = (c.id.clone(), c.labels.as_ref()) else {
            continue;
        };
        let running = c.state == Some(ContainerSummaryStateEnum::RUNNING);
        if down.contains(&id) {
            out.listed.insert(id.clone(), running);
        }
        if labels.get(&managed_key).map(String::as_str) == Some(shared::schema::MANAGED_BY_SPAWNER)
        {
            if let Some(target_id) = labels.get(&for_key) {
                let state = sidecar_state(c.state);
                out.sidecars.push(Sidecar {
                    id,
                    name: name_of(&c),
                    target_id: target_id.clone(),
                    target_started: labels.get(&started_key).cloned(),
                    state,
                    created: c.created.unwrap_or_default(),
                    last_failure: failure::from_labels(prefix, labels),
                    made: Made {
                        image_id: c.image_id.clone().unwrap_or_default(),
                        spec_digest: labels.get(&digest_key).cloned(),
                        replaces: labels.get(&replaces_key).cloned(),
                    },
                });
            }
            continue;
        }
        // A paused target keeps its network namespace, and so its sidecar: removing the sidecar
        // on `pause` and creating another on `unpause` would only churn.
        let running = running || c.state == Some(ContainerSummaryStateEnum::PAUSED);
        let name = name_of(&c);
        // Cheap pre-check on the listing; the spec is parsed from the inspect below.
        if parse_target(prefix, &name, labels, &[], offered).is_none() {
            continue;
        }
        let facts = match cache.map.get(&id) {
            Some(f) if running && !down.contains(&id) => f.clone(),
            _ if running => {
                let Some(facts) = inspect_target(engine, &id).await? else {
                    continue;
                };
                if facts.running {
                    cache.map.insert(id.clone(), facts.clone());
                }
                facts
            }
            _ => Facts {
                started_at: String::new(),
                exposed: Vec::new(),
                running: false,
                own_network: false,
                udp_published: Vec::new(),
            },
        };
        if facts.running {
            running_targets.insert(id.clone());
        }
        let Facts {
            started_at,
            exposed,
            running,
            own_network,
            udp_published,
        } = facts;
        let Some(spec) = parse_target(prefix, &name, labels, &exposed, offered) else {
            continue;
        };
        let spec = spec.map(|spec| TargetSpec {
            exit_when_orphaned: own_network,
            published_udp_port: published_udp_port(&udp_published, spec.listen.port()),
            ..spec
        });
        out.targets.push(Target {
            id,
            name,
            running,
            started_at,
            spec,
        });
    }
    // Only what is running now stays: a target seen stopped is inspected again when it runs.
    cache.map.retain(|id, _| running_targets.contains(id));
    Ok(out)
}

/// What an inspect tells of a target that the listing does not; `None` when it is gone.
async fn inspect_target(engine: &Engine, id: &str) -> Result<Option<Facts>, Error> {
    let Some(info) = engine.inspect(id).await? else {
        return Ok(None);
    };
    let own_network = has_own_network(&info);
    let udp_published = udp_publications(&info);
    let state = info.state.unwrap_or_default();
    Ok(Some(Facts {
        started_at: state.started_at.unwrap_or_default(),
        exposed: info
            .config
            .and_then(|c| c.exposed_ports)
            .unwrap_or_default(),
        running: state.running.unwrap_or(false),
        own_network,
        udp_published,
    }))
}

/// The UDP ports a target publishes on the host, `(port in the target, host port)`, each pair
/// once: what the engine bound (`NetworkSettings.Ports`, which knows the host port it chose for
/// `-p 8443/udp`) and what was asked (`HostConfig.PortBindings`). A host port that is a range
/// or empty (the engine's choice, not yet made) says nothing.
pub(crate) fn udp_publications(target: &ContainerInspectResponse) -> Vec<(u16, NonZeroU16)> {
    let bound = target
        .network_settings
        .as_ref()
        .and_then(|n| n.ports.as_ref());
    let asked = target
        .host_config
        .as_ref()
        .and_then(|h| h.port_bindings.as_ref());
    let pairs = |map: Option<&PortMap>| -> Vec<(u16, NonZeroU16)> {
        map.into_iter()
            .flatten()
            .filter_map(|(key, bindings)| {
                let port = key.strip_suffix("/udp")?.parse::<u16>().ok()?;
                Some((port, bindings.as_deref().unwrap_or_default()))
            })
            .flat_map(|(port, bindings)| {
                bindings.iter().filter_map(move |b| {
                    let host = b.host_port.as_deref()?.trim().parse::<NonZeroU16>().ok()?;
                    Some((port, host))
                })
            })
            .collect()
    };
    let all: BTreeSet<(u16, NonZeroU16)> = pairs(bound).into_iter().chain(pairs(asked)).collect();
    all.into_iter().collect()
}

/// The host port that `port` of the target is published on over UDP, when there is exactly one
/// (`-p 443:8443/udp`, bound on IPv4 and IPv6 alike): where HTTP/3 clients reach the sidecar's
/// UDP listener, so what its `Alt-Svc` should name. None, or several (no one port to name):
/// `None`, and the sidecar advertises its own port unless a label says.
pub(crate) fn published_udp_port(published: &[(u16, NonZeroU16)], port: u16) -> Option<NonZeroU16> {
    let hosts: BTreeSet<NonZeroU16> = published
        .iter()
        .filter(|(p, _)| *p == port)
        .map(|(_, host)| *host)
        .collect();
    match hosts.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// Whether a target has a network namespace of its own with an interface the engine deletes when
/// the target goes: then its sidecar is told `SIDECAR_EXIT_WHEN_ORPHANED` and ends itself when
/// the namespace is left with only `lo`, even while no spawner runs. Not for `none` (nothing to
/// lose, ever), `host` (the host's interfaces never go) or `container:<other>` (the namespace
/// and its interfaces belong to the other container and outlive this target).
pub(crate) fn has_own_network(target: &ContainerInspectResponse) -> bool {
    let mode = target
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
        .unwrap_or("default");
    if matches!(mode, "none" | "host") || mode.starts_with("container:") {
        return false;
    }
    target
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .is_some_and(|nets| nets.keys().any(|n| n != "none" && n != "host"))
}

/// Inspects a sidecar the listing shows not running and judges it; its log is read only when it
/// ended by itself. `None` when it is gone.
pub(crate) async fn examine(engine: &Engine, id: &str) -> Result<Option<Verdict>, Error> {
    let Some(info) = engine.inspect(id).await? else {
        return Ok(None);
    };
    let state = State::of(&info);
    let mut verdict = failure::judge(&state, "");
    if let Verdict::Failed(f) = &mut verdict {
        if f.error.is_empty() {
            // A log driver that cannot be read back (syslog, none) leaves only the exit code.
            f.error = match engine.stderr_tail(id, LOG_TAIL_LINES).await {
                Ok(bytes) => failure::last_line(&bytes),
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "cannot read the sidecar's log");
                    String::new()
                }
            };
        }
    }
    Ok(Some(verdict))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{HostConfig, PortBinding};

    /// An inspect result with this `HostConfig.NetworkMode` and these `NetworkSettings.Networks`.
    fn inspected(mode: Option<&str>, networks: &[&str]) -> ContainerInspectResponse {
        ContainerInspectResponse {
            host_config: Some(HostConfig {
                network_mode: mode.map(String::from),
                ..Default::default()
            }),
            network_settings: Some(bollard::models::NetworkSettings {
                networks: Some(
                    networks
                        .iter()
                        .map(|n| (n.to_string(), Default::default()))
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A port map: `(key, [(host ip, host port)])`.
    fn port_map(entries: &[(&str, &[(&str, &str)])]) -> PortMap {
        entries
            .iter()
            .map(|(key, bindings)| {
                let list = bindings
                    .iter()
                    .map(|(ip, port)| PortBinding {
                        host_ip: Some(ip.to_string()),
                        host_port: Some(port.to_string()),
                    })
                    .collect();
                (key.to_string(), Some(list))
            })
            .collect()
    }

    /// An inspect result whose engine bound `bound` (`NetworkSettings.Ports`) and was asked for
    /// `asked` (`HostConfig.PortBindings`).
    fn publishing(bound: PortMap, asked: PortMap) -> ContainerInspectResponse {
        ContainerInspectResponse {
            host_config: Some(HostConfig {
                port_bindings: Some(asked),
                ..Default::default()
            }),
            network_settings: Some(bollard::models::NetworkSettings {
                ports: Some(bound),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn udp_publications_read_what_was_bound_and_what_was_asked() {
        let port = |p| NonZeroU16::new(p).expect("a test port is not 0");
        // `-p 443:8443/tcp -p 443:8443/udp` bound on IPv4 and IPv6; `-p 127.0.0.1::9000/udp`
        // asked with no host port, bound on one the engine chose.
        let both = publishing(
            port_map(&[
                ("8443/tcp", &[("0.0.0.0", "443"), ("::", "443")]),
                ("8443/udp", &[("0.0.0.0", "443"), ("::", "443")]),
                ("9000/udp", &[("127.0.0.1", "32768")]),
                ("53/sctp", &[("0.0.0.0", "53")]),
            ]),
            port_map(&[
                ("8443/tcp", &[("", "443")]),
                ("8443/udp", &[("", "443")]),
                ("9000/udp", &[("127.0.0.1", "")]),
                ("7000/udp", &[("", "7000-7010")]),
            ]),
        );
        assert_eq!(
            udp_publications(&both),
            [(8443, port(443)), (9000, port(32768))]
        );
        // Only asked (not bound yet), or only bound: either is read.
        let asked = publishing(PortMap::new(), port_map(&[("8443/udp", &[("", "4433")])]));
        assert_eq!(udp_publications(&asked), [(8443, port(4433))]);
        let bound = publishing(
            port_map(&[("8443/udp", &[("0.0.0.0", "4433")])]),
            PortMap::new(),
        );
        assert_eq!(udp_publications(&bound), [(8443, port(4433))]);
        // An exposed, unpublished port: `"8443/udp": null`.
        let unpublished = publishing(
            HashMap::from([("8443/udp".to_string(), None)]),
            PortMap::new(),
        );
        assert!(udp_publications(&unpublished).is_empty());
        assert!(udp_publications(&ContainerInspectResponse::default()).is_empty());
    }

    #[test]
    fn the_published_udp_port_is_the_one_host_port_of_the_listen_port() {
        let port = |p| NonZeroU16::new(p).expect("a test port is not 0");
        let published = [(8443, port(443)), (9443, port(9443))];
        assert_eq!(published_udp_port(&published, 8443), Some(port(443)));
        assert_eq!(published_udp_port(&published, 9443), Some(port(9443)));
        assert_eq!(published_udp_port(&published, 8080), None, "not published");
        assert_eq!(published_udp_port(&[], 8443), None);
        // Two host ports: none of them is the one to advertise.
        let twice = [(8443, port(443)), (8443, port(8443))];
        assert_eq!(published_udp_port(&twice, 8443), None);
        // The same host port on two addresses (IPv4 and IPv6) is one port.
        let dual = [(8443, port(443)), (8443, port(443))];
        assert_eq!(published_udp_port(&dual, 8443), Some(port(443)));
    }

    #[test]
    fn own_network_is_one_the_engine_tears_down_with_the_target() {
        assert!(has_own_network(&inspected(Some("default"), &["bridge"])));
        assert!(has_own_network(&inspected(Some("bridge"), &["bridge"])));
        assert!(has_own_network(&inspected(
            Some("appnet"),
            &["appnet", "other"]
        )));
        assert!(has_own_network(&inspected(None, &["appnet"])));
        // Docker lists the pseudo-network `none` (or `host`) under Networks for those modes.
        assert!(!has_own_network(&inspected(Some("none"), &["none"])));
        assert!(!has_own_network(&inspected(Some("host"), &["host"])));
        assert!(!has_own_network(&inspected(Some("container:abc"), &[])));
        assert!(
            !has_own_network(&inspected(Some("appnet"), &[])),
            "disconnected from every network: only lo"
        );
        assert!(!has_own_network(&ContainerInspectResponse::default()));
    }
}
