//! The spawner against an engine that restarts, that is down when the spawner starts, and that
//! is a swarm. Each test owns a private `dockerd` (harness::dockerd): the machine's engine is
//! never stopped or reconfigured.

use std::time::{Duration, Instant};

use harness::docker::{poll, unique_name, Images};
use harness::dockerd::PrivateEngine;
use harness::spawner::Spawner;

/// How long after the engine is back every target must be served again (issue 9).
const SERVED_AFTER_ENGINE: Duration = Duration::from_secs(5);
/// Generous bound for steps that only have to happen (a swarm scheduling tasks on a loaded CI
/// machine, vfs copying image layers).
const SWARM_STEP: Duration = Duration::from_secs(60);

/// A target with `--restart always`, opted in under `prefix`.
fn run_target(engine: &PrivateEngine, images: &Images, prefix: &str) -> String {
    let label = format!("{prefix}.proxy-image={}", images.sidecar);
    engine.docker_ok(&[
        "run",
        "-d",
        "--name",
        &unique_name("target"),
        "--restart",
        "always",
        "--label",
        &label,
        &images.demo,
    ])
}

/// Running sidecars of `prefix` for target `id`, with their `target-started` label.
fn sidecars_for(engine: &PrivateEngine, prefix: &str, id: &str) -> Vec<(String, String)> {
    let out = engine.docker_ok(&[
        "ps",
        "--filter",
        &format!("label={prefix}.sidecar-for={id}"),
        "--format",
        &format!("{{{{.ID}}}} {{{{.Label \"{prefix}.target-started\"}}}}"),
    ]);
    out.lines()
        .filter_map(|l| {
            let (id, started) = l.split_once(' ')?;
            Some((id.to_string(), started.to_string()))
        })
        .collect()
}

/// The container's current start (`State.StartedAt`): a restarted container has a new one, and a
/// new network namespace with it. (Namespace inode numbers are not compared: the kernel reuses
/// them once the old namespaces are gone, so an unchanged number proves nothing.)
fn started_at(engine: &PrivateEngine, container: &str) -> String {
    engine.docker_ok(&["inspect", "--format", "{{.State.StartedAt}}", container])
}

/// Whether target `id` is served right now: exactly one running sidecar, made for the target's
/// current start (so joined to its current namespace), answering TLS inside that namespace.
fn served_now(engine: &PrivateEngine, prefix: &str, id: &str) -> bool {
    let started = started_at(engine, id);
    let sidecars = sidecars_for(engine, prefix, id);
    sidecars.len() == 1
        && sidecars[0].1 == started
        && engine
            .https_in(id)
            .is_some_and(|body| body.contains("GET / HTTP/1.1"))
}

#[test]
fn after_an_engine_restart_every_target_is_served_again_in_its_new_namespace() {
    let mut engine = PrivateEngine::start();
    let images = engine.build_images("engine");
    let prefix = unique_name("t");
    let _spawner = Spawner::start_on(&engine.host(), &prefix, &[]);
    let targets: Vec<String> = (0..3)
        .map(|_| run_target(&engine, &images, &prefix))
        .collect();
    for id in &targets {
        poll(SWARM_STEP, "target served before the restart", || {
            served_now(&engine, &prefix, id).then_some(())
        });
    }
    let before: Vec<String> = targets.iter().map(|t| started_at(&engine, t)).collect();

    engine.stop();
    let back = engine.start_again();
    for (id, old_start) in targets.iter().zip(&before) {
        poll(
            SWARM_STEP,
            "target served again in a new namespace after the engine restart",
            || {
                // served_now also checks the sidecar was made for this start and answers TLS inside
                // the target's current namespace.
                let restarted = started_at(&engine, id) != *old_start;
                (restarted && served_now(&engine, &prefix, id)).then_some(())
            },
        );
    }
    let took = back.elapsed();
    eprintln!("every target served again {took:?} after the engine was back");
    assert!(
        took <= SERVED_AFTER_ENGINE,
        "targets served again only {took:?} after the engine was back"
    );
    // The old sidecars (stopped with the engine, `restart: no`) are gone, not just stopped.
    poll(SWARM_STEP, "stale sidecars removed", || {
        let all = engine.docker_ok(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={prefix}.managed-by=spawner"),
        ]);
        (all.lines().count() == targets.len()).then_some(())
    });
}

#[test]
fn a_spawner_started_while_the_engine_is_down_waits_then_converges() {
    let mut engine = PrivateEngine::start();
    let images = engine.build_images("engine");
    let prefix = unique_name("t");
    engine.stop();
    let mut spawner = Spawner::start_on(&engine.host(), &prefix, &[]);
    // It keeps trying instead of exiting.
    spawner.wait_log("reconcile failed", 2, SWARM_STEP);
    assert!(
        spawner.is_running(),
        "the spawner gave up while the engine was down"
    );

    let back = engine.start_again();
    let id = run_target(&engine, &images, &prefix);
    let (_, took) = poll(SWARM_STEP, "target served once the engine is up", || {
        served_now(&engine, &prefix, &id).then_some(())
    });
    eprintln!(
        "served {took:?} after the target started ({:?} after the engine)",
        back.elapsed()
    );
}

/// Every running task of `service` served by exactly one sidecar, `want` tasks, and no sidecar
/// of `prefix` without a running task.
fn swarm_converged(engine: &PrivateEngine, prefix: &str, service: &str, want: usize) -> bool {
    let tasks = engine.tasks_of(service);
    if tasks.len() != want || !tasks.iter().all(|t| served_now(engine, prefix, t)) {
        return false;
    }
    let sidecars = engine.docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={prefix}.managed-by=spawner"),
        "--format",
        &format!("{{{{.Label \"{prefix}.sidecar-for\"}}}}"),
    ]);
    sidecars
        .lines()
        .all(|target| tasks.iter().any(|t| t == target))
}

#[test]
fn swarm_tasks_get_sidecars_through_scale_and_rolling_update() {
    let engine = PrivateEngine::start();
    let images = engine.build_images("swarm");
    engine.docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    // The documented stack file, as users deploy it: the spawner as a global service.
    let prefix = unique_name("t");
    let stack = "tls";
    let socket = engine.socket().display().to_string();
    engine.stack_deploy(
        "docs/swarm/stack.yml",
        stack,
        &[
            ("TLS_SIDECAR_TAG", "swarm"),
            ("TLS_SIDECAR_LABEL_PREFIX", &prefix),
            ("DOCKER_SOCKET", &socket),
            ("WEB_REPLICAS", "3"),
            ("HTTPS_PORT", "18443"),
        ],
    );
    let web = format!("{stack}_web");
    let (_, took) = poll(SWARM_STEP, "3 tasks, each served by one sidecar", || {
        swarm_converged(&engine, &prefix, &web, 3).then_some(())
    });
    eprintln!("swarm: 3 tasks served {took:?} after the deploy");

    engine.docker_ok(&["service", "scale", "--detach", &format!("{web}=1")]);
    let (_, took) = poll(SWARM_STEP, "scaled down to 1 task, 1 sidecar", || {
        swarm_converged(&engine, &prefix, &web, 1).then_some(())
    });
    eprintln!("swarm: scaled down {took:?}");

    let before = engine.tasks_of(&web);
    let started = Instant::now();
    engine.docker_ok(&["service", "update", "--detach", "--force", &web]);
    poll(SWARM_STEP, "the rolling update's new task served", || {
        let now = engine.tasks_of(&web);
        (now != before && swarm_converged(&engine, &prefix, &web, 1)).then_some(())
    });
    eprintln!("swarm: rolling update served {:?}", started.elapsed());
    let _ = images;
}
