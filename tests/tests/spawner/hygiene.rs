//! The spawner's hygiene against the real Docker engine: label values that must never reach a
//! sidecar's environment, and sidecars that end themselves when their target goes while no
//! spawner runs. Like `lifecycle.rs`, each test runs its own spawner (a host process)
//! under its own label prefix, and a `TestRun` guard removes everything the test made.

use std::process::Command;

use harness::docker::{
    containers_with_label, docker_ok, host_port, https_get, images, inspect, logs_of, poll,
    unique_name, Container, TestRun, LIFECYCLE_DEADLINE,
};
use harness::spawner::{self, Spawner};

/// Creates and starts a demo container with `--network none` through the engine's API with these
/// labels (besides the run label): the `docker` CLI cannot pass a NUL byte in an argument, the
/// API can. Returns its ID.
fn start_with_labels(run: &TestRun, name: &str, labels: &[(String, String)]) -> String {
    let mut map = serde_json::Map::new();
    let (run_key, run_value) = run.label().split_once('=').map_or_else(
        || panic!("run label is key=value"),
        |(k, v)| (k.to_string(), v.to_string()),
    );
    map.insert(run_key, run_value.into());
    for (k, v) in labels {
        map.insert(k.clone(), v.clone().into());
    }
    let body = serde_json::json!({
        "Image": images().demo,
        "Labels": map,
        "HostConfig": { "NetworkMode": "none" },
    });
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--unix-socket",
            "/var/run/docker.sock",
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
        ])
        .arg(format!("http://localhost/containers/create?name={name}"))
        .output()
        .expect("run curl");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("engine answer to create {name}: {e}: {out:?}"));
    let id = answer["Id"]
        .as_str()
        .unwrap_or_else(|| panic!("engine refused to create {name}: {answer}"))
        .to_string();
    docker_ok(&["start", &id]);
    id
}

fn sidecars_for(prefix: &str, target_id: &str) -> Vec<Container> {
    containers_with_label(&format!("{prefix}.managed-by=spawner"))
        .into_iter()
        .filter(|s| s.label(&format!("{prefix}.sidecar-for")).as_deref() == Some(target_id))
        .collect()
}

#[test]
fn label_values_with_control_characters_or_over_4_kib_get_no_sidecar_and_a_status_reason() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    let opt_in = (format!("{prefix}.proxy-image"), images().sidecar.clone());
    let cases = [
        (
            "hostname",
            "web\nX_INJECTED=1".to_string(),
            "contains a line break",
        ),
        ("allow-cn", "al\0ice".to_string(), "contains a NUL byte"),
        (
            "backend",
            "127.0.0.1:8080\u{1b}[2J".to_string(),
            "contains a control character",
        ),
        // A label the spawner does not interpret: checked all the same.
        ("note", "n".repeat(5000), "longer than 4096 bytes"),
    ];
    let bad: Vec<(String, String, String, &str)> = cases
        .iter()
        .map(|(suffix, value, reason)| {
            let name = unique_name("app");
            let label = format!("{prefix}.{suffix}");
            let id = start_with_labels(
                &run,
                &name,
                &[opt_in.clone(), (label.clone(), value.clone())],
            );
            (name, id, label, *reason)
        })
        .collect();
    // A clean target started after the bad ones: once it has its sidecar, the spawner has had a
    // turn that saw them all.
    let good = start_with_labels(&run, &unique_name("app"), std::slice::from_ref(&opt_in));
    poll(
        LIFECYCLE_DEADLINE,
        "the clean target's running sidecar",
        || sidecars_for(&prefix, &good).into_iter().find(|s| s.running),
    );

    for (name, id, label, reason) in &bad {
        poll(
            LIFECYCLE_DEADLINE,
            &format!("a warning naming {name}, {label} and {reason:?}"),
            || {
                spawner
                    .logs()
                    .lines()
                    .any(|l| {
                        l.contains("invalid label")
                            && l.contains(name.as_str())
                            && l.contains(label.as_str())
                            && l.contains(reason)
                    })
                    .then_some(())
            },
        );
        assert!(sidecars_for(&prefix, id).is_empty(), "{label}: no sidecar");
    }
    let logs = spawner.logs();
    assert!(
        !logs.contains('\0') && !logs.contains('\u{1b}') && !logs.contains("\nX_INJECTED"),
        "refused values are escaped in the log"
    );
    assert!(
        !logs.contains(&"n".repeat(100)),
        "an oversized value is not repeated whole"
    );

    let status = spawner::status(&prefix, &[]);
    assert!(
        !status.contains('\0') && !status.contains('\u{1b}'),
        "status escapes what it repeats"
    );
    for (name, _, label, reason) in &bad {
        let row = status
            .lines()
            .find(|l| l.starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} in status:\n{status}"));
        assert!(
            row.contains("invalid label") && row.contains(label.as_str()) && row.contains(reason),
            "status names {label} and why: {row}"
        );
    }
    assert_eq!(
        status.lines().count(),
        bad.len() + 2,
        "one line per target plus the header:\n{status}"
    );
}

/// The one running sidecar of a target, once there is one.
fn wait_sidecar(prefix: &str, target_id: &str) -> Container {
    poll(
        LIFECYCLE_DEADLINE,
        "a running sidecar for the target",
        || match sidecars_for(prefix, target_id).as_slice() {
            [one] if one.running => Some(one.clone()),
            _ => None,
        },
    )
    .0
}

const ORPHAN_ENV: &str = "SIDECAR_EXIT_WHEN_ORPHANED=true";

#[test]
fn sidecar_exits_by_itself_when_its_target_is_removed_while_the_spawner_is_down() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let net = unique_name("net");
    run.network(&net);
    let mut spawner = Spawner::start(&prefix, &[]);
    let opt_in = format!("{prefix}.proxy-image={}", images().sidecar);
    let target = run.container(
        &unique_name("app"),
        &images().demo,
        &[
            "--network",
            &net,
            "-p",
            "127.0.0.1::8443",
            "--label",
            &opt_in,
        ],
        &[],
    );
    // `--network none`: its namespace never has an interface but lo, so nothing can tell its
    // sidecar that it went; the spawner does not ask it to watch.
    let lonely = run.container(
        &unique_name("lonely"),
        &images().demo,
        &["--network", "none", "--label", &opt_in],
        &[],
    );
    let sidecar = wait_sidecar(&prefix, &target);
    let lonely_sidecar = wait_sidecar(&prefix, &lonely);
    assert!(
        sidecar.env().iter().any(|e| e == ORPHAN_ENV),
        "a target with a network: {:?}",
        sidecar.env()
    );
    assert!(
        !lonely_sidecar
            .env()
            .iter()
            .any(|e| e.starts_with("SIDECAR_EXIT_WHEN_ORPHANED")),
        "a --network none target: {:?}",
        lonely_sidecar.env()
    );
    let port = host_port(&target, 8443);
    poll(LIFECYCLE_DEADLINE, "https through the sidecar", || {
        https_get(port)
    });
    poll(
        LIFECYCLE_DEADLINE,
        "the sidecar watching its namespace",
        || {
            logs_of(&sidecar.id)
                .contains("watching the network namespace's interfaces")
                .then_some(())
        },
    );

    // `docker rm -f target spawner` in one go: nobody is left to remove the sidecar.
    spawner.kill();
    docker_ok(&["rm", "-f", &target]);
    let (code, took) = poll(
        LIFECYCLE_DEADLINE,
        "the orphaned sidecar to exit by itself",
        || {
            let c = inspect(&sidecar.id).expect("nobody removes it: the spawner is down");
            (!c.running).then(|| c.raw["State"]["ExitCode"].clone())
        },
    );
    eprintln!("observed latency target removed->sidecar exited (no spawner): {took:?}");
    assert_eq!(code, 0, "a graceful exit: {}", logs_of(&sidecar.id));
    assert!(
        logs_of(&sidecar.id).contains("lost every interface but lo"),
        "the sidecar logs why: {}",
        logs_of(&sidecar.id)
    );
    assert!(
        inspect(&lonely_sidecar.id).is_some_and(|c| c.running),
        "the other target's sidecar is untouched"
    );
}
