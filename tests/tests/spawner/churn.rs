//! Churn soak: many targets and a random sequence of what users and failures do to them (start,
//! stop, kill, restart, `rm -f` and recreate under the same name, pause/unpause, a sidecar
//! killed or removed behind the spawner's back), a few ms to a second apart, in bursts. After
//! every burst the spawner must converge, and an independent checker verifies the invariant from
//! the engine's own view: each running opted-in target has exactly one running sidecar, made for
//! its current start (so joined to its current namespace) and serving TLS; no sidecar of ours
//! without a running target; nothing left once the last target goes.
//!
//! `make test` runs a CI-sized soak (100 operations on 20 targets); `make soak` runs 500
//! (`CHURN_OPS`, `CHURN_TARGETS` and `CHURN_SEED` set them).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use harness::docker::{docker, docker_ok, https_get, images, unique_name, TestRun};
use harness::spawner::Spawner;

/// How long convergence after a burst may take at most. Generous: a sidecar killed several times
/// in a minute is recreated with crash backoff (0.5 s doubling).
const QUIESCE: Duration = Duration::from_secs(90);
/// Operations between two checks.
const BURST: usize = 10;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: a seeded, reproducible sequence (the seed is printed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the engine says about one target.
#[derive(Debug)]
struct TargetState {
    running: bool,
    paused: bool,
    started: String,
    port: Option<u16>,
}

/// One sidecar of ours.
#[derive(Debug)]
struct SidecarState {
    name: String,
    running: bool,
    target: String,
    started_for: String,
}

/// The invariant's violations at one moment.
#[derive(Debug, Default, PartialEq, Eq)]
struct Violations {
    /// Sidecars of ours whose target is not running (or gone), or that are not running.
    orphans: Vec<String>,
    /// Running targets with more than one sidecar.
    duplicates: Vec<String>,
    /// Running targets without exactly one sidecar for their current start that serves TLS.
    missed: Vec<String>,
}

impl Violations {
    fn is_empty(&self) -> bool {
        self.orphans.is_empty() && self.duplicates.is_empty() && self.missed.is_empty()
    }
}

fn targets_state(ids: &[String]) -> HashMap<String, TargetState> {
    let mut args = vec![
        "inspect",
        "--format",
        "{{.Id}}|{{.State.Running}}|{{.State.Paused}}|{{.State.StartedAt}}|\
         {{range $p, $c := .NetworkSettings.Ports}}{{range $c}}{{.HostPort}} {{end}}{{end}}",
    ];
    args.extend(ids.iter().map(String::as_str));
    // Some may be gone mid-operation: inspect prints what exists and fails for the rest.
    let out = docker(&args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f.len() == 5).then(|| {
                (
                    f[0].to_string(),
                    TargetState {
                        running: f[1] == "true",
                        paused: f[2] == "true",
                        started: f[3].to_string(),
                        port: f[4].split_whitespace().next().and_then(|p| p.parse().ok()),
                    },
                )
            })
        })
        .collect()
}

fn sidecars_state(prefix: &str) -> Vec<SidecarState> {
    let format = format!(
        "{{{{.Names}}}}|{{{{.State}}}}|{{{{.Label \"{prefix}.sidecar-for\"}}}}|{{{{.Label \"{prefix}.target-started\"}}}}"
    );
    docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={prefix}.managed-by=spawner"),
        "--format",
        &format,
    ])
    .lines()
    .filter_map(|l| {
        let f: Vec<&str> = l.split('|').collect();
        (f.len() == 4).then(|| SidecarState {
            name: f[0].to_string(),
            running: f[1] == "running",
            target: f[2].to_string(),
            started_for: f[3].to_string(),
        })
    })
    .collect()
}

/// Checks the invariant for the targets `ids` (the current container of each name).
fn check(prefix: &str, ids: &[String]) -> Violations {
    let targets = targets_state(ids);
    let sidecars = sidecars_state(prefix);
    let mut v = Violations::default();
    for s in &sidecars {
        let target_running = targets.get(&s.target).is_some_and(|t| t.running);
        if !s.running || !target_running {
            v.orphans.push(s.name.clone());
        }
    }
    for (id, t) in &targets {
        if !t.running {
            continue;
        }
        let mine: Vec<&SidecarState> = sidecars.iter().filter(|s| &s.target == id).collect();
        if mine.len() > 1 {
            v.duplicates.push(id[..12].to_string());
            continue;
        }
        let current = mine.len() == 1 && mine[0].running && mine[0].started_for == t.started;
        // A paused target keeps its sidecar, but cannot answer through it.
        let serving = t.paused || t.port.and_then(https_get).is_some();
        if !(current && serving) {
            v.missed.push(id[..12].to_string());
        }
    }
    v
}

/// Waits until the invariant holds; returns how long that took, or panics with what is wrong.
fn quiesce(prefix: &str, ids: &[String], spawner: &Spawner) -> Duration {
    let start = Instant::now();
    let mut last = Violations::default();
    while start.elapsed() < QUIESCE {
        last = check(prefix, ids);
        if last.is_empty() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "not converged within {QUIESCE:?}: {} orphans {:?}, {} duplicates {:?}, {} missed {:?}\n{}",
        last.orphans.len(),
        last.orphans,
        last.duplicates.len(),
        last.duplicates,
        last.missed.len(),
        last.missed,
        spawner.logs()
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn churn_soak_converges_after_every_burst() {
    let ops = env_or("CHURN_OPS", 100) as usize;
    let n = env_or("CHURN_TARGETS", 20) as usize;
    let seed = env_or("CHURN_SEED", 0x5eed_1234_abcd);
    eprintln!("churn: {ops} operations on {n} targets, seed {seed}");
    let mut rng = Rng(seed.max(1));
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    let opt_in = format!("{prefix}.proxy-image={}", images().sidecar);
    let names: Vec<String> = (0..n).map(|_| unique_name("churn")).collect();
    let create = |name: &str| -> String {
        run.container(
            name,
            &images().demo,
            &["--label", &opt_in, "-p", "127.0.0.1::8443"],
            &[],
        )
    };
    let mut ids: Vec<String> = names.iter().map(|name| create(name)).collect();
    let mut times = vec![quiesce(&prefix, &ids, &spawner)];

    let mut counts: HashMap<&str, usize> = HashMap::new();
    for i in 0..ops {
        let t = rng.below(n as u64) as usize;
        let (name, id) = (names[t].as_str(), ids[t].clone());
        let sidecar = format!("{name}-tls-sidecar");
        let op = match rng.below(10) {
            0 => {
                docker(&["start", &id]);
                "start"
            }
            1 => {
                docker(&["stop", "-t", "1", &id]);
                "stop"
            }
            2 => {
                docker(&["kill", &id]);
                "kill"
            }
            3 => {
                docker(&["restart", "-t", "1", &id]);
                "restart"
            }
            4 => {
                docker(&["rm", "-f", &id]);
                ids[t] = create(name);
                "rm -f + recreate"
            }
            5 => {
                docker(&["pause", &id]);
                "pause"
            }
            6 => {
                docker(&["unpause", &id]);
                "unpause"
            }
            7 => {
                docker(&["kill", &sidecar]);
                "kill sidecar"
            }
            8 => {
                docker(&["rm", "-f", &sidecar]);
                "rm -f sidecar"
            }
            _ => {
                docker(&["start", &id]);
                "start"
            }
        };
        *counts.entry(op).or_default() += 1;
        // A few ms to a second apart, mostly short.
        let pause = if rng.below(4) == 0 {
            rng.below(1000)
        } else {
            rng.below(50)
        };
        std::thread::sleep(Duration::from_millis(pause));
        if (i + 1) % BURST == 0 || i + 1 == ops {
            times.push(quiesce(&prefix, &ids, &spawner));
        }
    }

    // Every target gone: nothing of ours may remain.
    for id in &ids {
        docker(&["rm", "-f", id]);
    }
    let start = Instant::now();
    while !sidecars_state(&prefix).is_empty() {
        assert!(
            start.elapsed() < QUIESCE,
            "sidecars left after the last target went: {:?}",
            sidecars_state(&prefix)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    times.push(start.elapsed());

    times.sort();
    eprintln!(
        "churn: operations {counts:?}; orphans 0, duplicates 0, missed targets 0 after each of \
         {} checks; convergence p50 {:?} p95 {:?} max {:?}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        times[times.len() - 1]
    );
}

#[test]
fn pausing_a_target_keeps_its_sidecar() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    let opt_in = format!("{prefix}.proxy-image={}", images().sidecar);
    let id = run.container(
        &unique_name("paused"),
        &images().demo,
        &["--label", &opt_in, "-p", "127.0.0.1::8443"],
        &[],
    );
    let ids = vec![id.clone()];
    quiesce(&prefix, &ids, &spawner);
    let before = sidecars_state(&prefix);
    docker_ok(&["pause", &id]);
    // A resync-free window long enough for a wrong removal to happen (events are handled in
    // milliseconds): the sidecar must still be the same one.
    std::thread::sleep(Duration::from_secs(2));
    let during = sidecars_state(&prefix);
    assert_eq!(
        during.iter().map(|s| &s.name).collect::<Vec<_>>(),
        before.iter().map(|s| &s.name).collect::<Vec<_>>()
    );
    assert!(during.iter().all(|s| s.running), "{during:?}");
    docker_ok(&["unpause", &id]);
    quiesce(&prefix, &ids, &spawner);
    assert!(
        !spawner.logs().contains("sidecar removed"),
        "{}",
        spawner.logs()
    );
}
