//! The sidecar image next to an app container, the way users run it without the spawner:
//! `docker run --network=container:<app> tls-sidecar/sidecar`, hardened as the spawner runs it.

use harness::docker::{
    docker_ok, host_port, https_get, images, logs_of, poll, unique_name, TestRun,
    LIFECYCLE_DEADLINE,
};

#[test]
fn sidecar_image_serves_https_in_the_app_namespace() {
    let run = TestRun::new();
    let images = images();
    // The app publishes the sidecar's port: both share one network namespace.
    let app = run.container(
        &unique_name("app"),
        &images.demo,
        &["-p", "127.0.0.1::8443"],
        &[],
    );
    let network = format!("container:{app}");
    let sidecar = run.container(
        &unique_name("app-tls"),
        &images.sidecar,
        &[
            "--network",
            &network,
            "--read-only",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-e",
            "SIDECAR_SELF_SIGNED_NAMES=app.example,localhost",
        ],
        &[],
    );
    let port = host_port(&app, 8443);

    let (body, took) = poll(
        LIFECYCLE_DEADLINE,
        "HTTPS through the sidecar container",
        || https_get(port),
    );
    eprintln!("sidecar container served after {took:?}");
    assert!(
        body.starts_with("GET / HTTP/1.1"),
        "demo app answered through the sidecar: {body}"
    );
    assert!(
        body.contains("x-forwarded-proto: https"),
        "forwarding headers added: {body}"
    );

    // The image's defaults: unprivileged user, and the self-signed certificate logged.
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.Config.User}}", &sidecar]),
        "65534:65534"
    );
    let logs = docker_ok(&["logs", &sidecar]);
    let stderr = String::from_utf8_lossy(
        &std::process::Command::new("docker")
            .args(["logs", &sidecar])
            .output()
            .expect("docker logs")
            .stderr,
    )
    .to_string();
    let all = format!("{logs}{stderr}");
    assert!(
        all.contains("listening") && all.contains("sha256="),
        "sidecar logs: {all}"
    );

    // SIGTERM (docker stop) drains and exits 0.
    docker_ok(&["stop", "-t", "20", &sidecar]);
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &sidecar]),
        "0"
    );
}

#[test]
fn exit_when_orphaned_ends_the_sidecar_once_its_app_is_removed() {
    let run = TestRun::new();
    let images = images();
    let net = unique_name("net");
    run.network(&net);
    // One app on a network of its own, one with `--network none` (only `lo`, ever).
    let app = run.container(&unique_name("app"), &images.demo, &["--network", &net], &[]);
    let lonely = run.container(
        &unique_name("lonely"),
        &images.demo,
        &["--network", "none"],
        &[],
    );
    let sidecar_for = |app: &str| {
        run.container(
            &unique_name("app-tls"),
            &images.sidecar,
            &[
                "--network",
                &format!("container:{app}"),
                "-e",
                "SIDECAR_EXIT_WHEN_ORPHANED=true",
            ],
            &[],
        )
    };
    let watching = sidecar_for(&app);
    let unattached = sidecar_for(&lonely);
    poll(LIFECYCLE_DEADLINE, "the sidecar watching eth0", || {
        logs_of(&watching)
            .contains("watching the network namespace's interfaces")
            .then_some(())
    });
    poll(LIFECYCLE_DEADLINE, "the lo-only sidecar to say so", || {
        logs_of(&unattached)
            .contains("no interface but lo yet")
            .then_some(())
    });

    docker_ok(&["rm", "-f", &app, &lonely]);
    let (code, took) = poll(
        LIFECYCLE_DEADLINE,
        "the orphaned sidecar to exit by itself",
        || {
            let state = docker_ok(&[
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.ExitCode}}",
                &watching,
            ]);
            state.strip_prefix("false ").map(str::to_string)
        },
    );
    eprintln!("orphaned sidecar exited {took:?} after its app was removed");
    assert_eq!(code, "0", "a graceful exit: {}", logs_of(&watching));
    assert!(
        logs_of(&watching).contains("lost every interface but lo"),
        "the log says why: {}",
        logs_of(&watching)
    );
    // Its namespace never had an interface but lo: nothing was lost, it keeps running (the
    // spawner does not set the flag for such targets).
    assert_eq!(
        docker_ok(&["inspect", "--format", "{{.State.Running}}", &unattached]),
        "true",
        "{}",
        logs_of(&unattached)
    );
}
