//! The tests are isolated from whatever else runs on the engine, a user's spawner on the default
//! prefix included (the demo's, issue 11): the project's images carry no label that opts in, and
//! a test's containers carry no label of the default prefix. Before, the demo image itself
//! carried `tls-sidecar.proxy-image`, so a running demo's spawner attached a second sidecar to
//! every test target (`Address already in use`, two sidecars for one target).

use std::collections::BTreeMap;
use std::time::Duration;

use harness::docker::{docker_ok, images, inspect, poll, unique_name, TestRun, TEST_RUN_LABEL};
use harness::dockerd::PrivateEngine;
use harness::spawner::Spawner;

/// The prefix a user's spawner runs with when given none (the demo's): `--label-prefix`'s default.
const DEFAULT_PREFIX: &str = "tls-sidecar";

/// Generous bound for steps that only have to happen on the private engine (vfs copies image
/// layers; CI shares two cores with compilers).
const STEP: Duration = Duration::from_secs(60);

/// Labels that make any spawner take a container for a target, or for one of its sidecars: every
/// label of the default prefix, and byfahrer's opt-in, which every spawner accepts.
fn opting_in(labels: &BTreeMap<String, String>) -> Vec<String> {
    labels
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{DEFAULT_PREFIX}.")) || k.starts_with("org.qnib.byfahrer.")
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

fn labels_of(json: &str) -> BTreeMap<String, String> {
    // `{{json .Config.Labels}}` prints `null` for an image without labels.
    serde_json::from_str::<Option<BTreeMap<String, String>>>(json)
        .unwrap_or_else(|e| panic!("labels as JSON: {e}: {json}"))
        .unwrap_or_default()
}

#[test]
fn the_projects_images_carry_no_label_that_opts_in() {
    let imgs = images();
    for image in [&imgs.sidecar, &imgs.spawner, &imgs.demo] {
        let labels = labels_of(&docker_ok(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Labels}}",
            image,
        ]));
        assert_eq!(
            opting_in(&labels),
            Vec::<String>::new(),
            "{image} must not opt its containers in: containers opt in where they are run"
        );
    }
}

#[test]
fn a_tests_target_carries_no_label_of_the_default_prefix() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let opt_in = format!("{prefix}.proxy-image={}", images().sidecar);
    // Made the way every spawner test makes its targets; created, never started.
    let id = run.create(&unique_name("app"), &images().demo, &["--label", &opt_in]);
    let target = inspect(&id).expect("the target exists");
    let labels = labels_of(&target.raw["Config"]["Labels"].to_string());
    assert_eq!(opting_in(&labels), Vec::<String>::new(), "{labels:?}");
    assert!(labels.contains_key(&format!("{prefix}.proxy-image")));
    assert!(labels.contains_key(TEST_RUN_LABEL));
}

/// Every container on `engine` whose network namespace is `target`'s: its sidecars.
fn in_namespace_of(engine: &PrivateEngine, target: &str) -> Vec<String> {
    let ids = engine.docker_ok(&["ps", "-aq", "--no-trunc"]);
    ids.split_whitespace()
        .filter(|id| {
            engine.docker_ok(&["inspect", "--format", "{{.HostConfig.NetworkMode}}", id])
                == format!("container:{target}")
        })
        .map(String::from)
        .collect()
}

/// Containers on `engine` carrying `label` (`key` or `key=value`).
fn with_label(engine: &PrivateEngine, label: &str) -> Vec<String> {
    let ids = engine.docker_ok(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={label}"),
    ]);
    ids.split_whitespace().map(String::from).collect()
}

/// The order: a user's spawner on the default prefix is running (`make demo`), then a
/// test runs its own spawner and target under its own prefix (`make test`). On a private engine,
/// so this default-prefix spawner can never touch anything but what this test makes (a user's
/// demo, or a parallel test run's containers, on the machine's engine).
#[test]
fn a_users_spawner_on_the_default_prefix_leaves_a_tests_target_alone() {
    let engine = PrivateEngine::start();
    // Tagged `latest` as `make images` tags them (on this private engine only): a user's images
    // are there, so any opt-in the user's spawner sees would get a sidecar, not a failed pull.
    let imgs = engine.build_images("latest");
    let users = Spawner::start_on(&engine.host(), DEFAULT_PREFIX, &[]);

    let prefix = unique_name("t");
    let _tests = Spawner::start_on(&engine.host(), &prefix, &[]);
    let run_label = format!("{TEST_RUN_LABEL}={}", unique_name("run"));
    let target = engine.docker_ok(&[
        "run",
        "-d",
        "--name",
        &unique_name("app"),
        "--label",
        &run_label,
        "--label",
        &format!("{prefix}.proxy-image={}", imgs.sidecar),
        &imgs.demo,
    ]);
    // Another spawner's sidecar would take this one's name or its port.
    let served = "the test's target served by its own sidecar";
    let (_, took) = poll(STEP, served, || {
        (with_label(&engine, &format!("{prefix}.sidecar-for={target}")).len() == 1
            && engine
                .https_in(&target)
                .is_some_and(|body| body.starts_with("GET / ")))
        .then_some(())
    });
    eprintln!("observed latency target start->served: {took:?}");

    // A control the user's spawner must act on, started after the test's target: once it is
    // served, the user's spawner has seen the engine as it is with the test's target running
    // (its events come in order, and every turn lists every container).
    let control = engine.docker_ok(&[
        "run",
        "-d",
        "--name",
        &unique_name("users-app"),
        "--label",
        &format!("{DEFAULT_PREFIX}.proxy-image={}", imgs.sidecar),
        &imgs.demo,
    ]);
    poll(STEP, "the user's spawner to serve its own target", || {
        (with_label(&engine, &format!("{DEFAULT_PREFIX}.sidecar-for={control}")).len() == 1
            && engine.https_in(&control).is_some())
        .then_some(())
    });

    let users_sidecars = with_label(&engine, &format!("{DEFAULT_PREFIX}.managed-by"));
    assert_eq!(
        users_sidecars.len(),
        1,
        "the user's spawner made one sidecar, for its own target only:\n{}",
        users.logs()
    );
    assert!(
        with_label(&engine, &format!("{DEFAULT_PREFIX}.sidecar-for={target}")).is_empty(),
        "the user's spawner made a sidecar for the test's target:\n{}",
        users.logs()
    );
    assert_eq!(
        in_namespace_of(&engine, &target).len(),
        1,
        "exactly one sidecar in the test target's namespace, the test's own"
    );
    assert!(
        engine.https_in(&target).is_some(),
        "the test's target is still served"
    );
}
