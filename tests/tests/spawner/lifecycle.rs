//! The spawner against the real Docker engine: every lifecycle rule of the spec. Each test runs
//! its own spawner (a host process) with its own label prefix, so tests in parallel never see each
//! other's containers, and a `TestRun` guard removes everything the test made.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::docker::{
    containers_with_label, docker, docker_ok, host_port, https_get, images, inspect, poll,
    sidecars_for, unique_name, wait_not_running, Container, TestRun, LIFECYCLE_DEADLINE,
};
use harness::spawner::{self, Spawner, DOCKER_SOCKET};

/// The opt-in label for a test prefix, asking for `image`.
fn opt_in(prefix: &str, image: &str) -> String {
    format!("{prefix}.proxy-image={image}")
}

/// A demo container opted in under `prefix`, publishing 8443 on a free loopback port.
fn target(run: &TestRun, prefix: &str, extra_labels: &[String]) -> (String, String) {
    let name = unique_name("app");
    let mut args = vec![
        "-p".to_string(),
        "127.0.0.1::8443".to_string(),
        "--label".to_string(),
    ];
    args.push(opt_in(prefix, &images().sidecar));
    for l in extra_labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = run.container(&name, &images().demo, &args, &[]);
    (name, id)
}

fn sidecars(prefix: &str) -> Vec<Container> {
    containers_with_label(&format!("{prefix}.managed-by=spawner"))
}

/// Waits for exactly one running sidecar in the target's current namespace, and TLS answering
/// through the target's published port. Returns the sidecar and the time it took.
fn wait_served(prefix: &str, target_id: &str) -> (Container, Duration) {
    let start = Instant::now();
    let target = inspect(target_id).expect("target exists");
    let (sidecar, _) = poll(
        LIFECYCLE_DEADLINE,
        "exactly one running sidecar in the target's namespace",
        || {
            let s = sidecars_for(prefix, target_id);
            match s.as_slice() {
                [one]
                    if one.running
                        && one.network_mode == format!("container:{target_id}")
                        && one.label(&format!("{prefix}.target-started")).as_deref()
                            == Some(target.started_at.as_str()) =>
                {
                    Some(one.clone())
                }
                _ => None,
            }
        },
    );
    let port = host_port(target_id, 8443);
    let (body, _) = poll(LIFECYCLE_DEADLINE, "https through the sidecar", || {
        https_get(port)
    });
    assert!(
        body.starts_with("GET / "),
        "demo echo expected, got {body:?}"
    );
    assert!(
        body.to_ascii_lowercase()
            .contains("x-forwarded-proto: https"),
        "forwarded headers: {body}"
    );
    (sidecar, start.elapsed())
}

fn wait_no_sidecar(prefix: &str, target_id: &str) -> Duration {
    poll(
        LIFECYCLE_DEADLINE,
        "the target's sidecar to be removed",
        || sidecars_for(prefix, target_id).is_empty().then_some(()),
    )
    .1
}

/// Asserts the sidecar count stays at exactly `n` running ones for `target_id` over `window`.
fn assert_stays_one(prefix: &str, target_id: &str, window: Duration) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        let s = sidecars_for(prefix, target_id);
        assert!(
            s.len() <= 1,
            "more than one sidecar for one target: {:?}",
            s.iter().map(|c| &c.name).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn start_serves_tls_through_one_locked_down_sidecar_and_stop_removes_it() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    let (name, id) = target(&run, &prefix, &[]);
    let (sidecar, took) = wait_served(&prefix, &id);
    eprintln!("observed latency start->served: {took:?}");
    assert_eq!(sidecar.name, format!("{name}-tls-sidecar"));
    assert_eq!(
        sidecar.label(&format!("{prefix}.sidecar-for")).as_deref(),
        Some(id.as_str())
    );
    let c = &sidecar.raw;
    assert_eq!(c["Config"]["User"], "65534:65534");
    assert_eq!(c["HostConfig"]["ReadonlyRootfs"], true);
    assert_eq!(c["HostConfig"]["CapDrop"][0], "ALL");
    assert!(c["HostConfig"]["SecurityOpt"]
        .to_string()
        .contains("no-new-privileges"));
    assert_eq!(c["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(c["HostConfig"]["PidsLimit"], 128);
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "no");
    assert!(c["Config"]["StopTimeout"].as_i64().unwrap_or(0) >= 10);
    assert!(
        !c["Mounts"].to_string().contains("docker.sock"),
        "no docker socket in the sidecar"
    );
    assert_stays_one(&prefix, &id, Duration::from_secs(1));

    docker_ok(&["stop", "-t", "1", &id]);
    let took = wait_no_sidecar(&prefix, &id);
    eprintln!("observed latency stop->removed: {took:?}");
}

#[test]
fn kill_die_and_rm_each_remove_the_sidecar() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    let killed = target(&run, &prefix, &[]).1;
    let removed = target(&run, &prefix, &[]).1;
    // A target whose main process exits by itself ("die" without stop or kill).
    let name = unique_name("dies");
    let dies = run.container(
        &name,
        &images().demo,
        &[
            "--label",
            &opt_in(&prefix, &images().sidecar),
            "-e",
            "DEMO_LISTEN=127.0.0.1:8080",
        ],
        &[],
    );
    for id in [&killed, &removed, &dies] {
        wait_served_or_running(&prefix, id);
    }
    let start = Instant::now();
    docker_ok(&["kill", &killed]);
    docker_ok(&["rm", "-f", &removed]);
    // The demo exits 0 on SIGTERM: a signal to its process is an ordinary "die".
    docker_ok(&["kill", "-s", "TERM", &dies]);
    for id in [&killed, &removed, &dies] {
        wait_no_sidecar(&prefix, id);
    }
    eprintln!(
        "observed latency kill/rm/die->removed (all three): {:?}",
        start.elapsed()
    );
}

/// Waits for one running sidecar for a target (without fetching through it).
fn wait_served_or_running(prefix: &str, id: &str) -> Container {
    poll(LIFECYCLE_DEADLINE, "a running sidecar", || {
        sidecars_for(prefix, id).into_iter().find(|s| s.running)
    })
    .0
}

#[test]
fn restarted_target_gets_a_new_sidecar_and_tls_works_again() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    let id = target(&run, &prefix, &[]).1;
    let (first, _) = wait_served(&prefix, &id);
    docker_ok(&["restart", "-t", "1", &id]);
    let (second, took) = wait_served(&prefix, &id);
    eprintln!("observed latency restart->served: {took:?}");
    assert_ne!(
        first.id, second.id,
        "the old sidecar sat in a dead namespace and must be replaced"
    );
    assert!(inspect(&first.id).is_none(), "old sidecar removed");
}

#[test]
fn killed_sidecar_is_recreated() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    let id = target(&run, &prefix, &[]).1;
    let (first, _) = wait_served(&prefix, &id);
    docker_ok(&["kill", &first.id]);
    let (second, took) = wait_served(&prefix, &id);
    eprintln!("observed latency sidecar killed->recreated and served: {took:?}");
    assert_ne!(first.id, second.id);
}

#[test]
fn crash_looping_sidecar_is_recreated_with_backoff() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    // The sidecar is told to listen on the demo's own port: it fails at once, every time.
    let id = target(&run, &prefix, &[format!("{prefix}.listen=8080")]).1;
    let watch = Duration::from_secs(8);
    let start = Instant::now();
    spawner.wait_log("sidecar started", 1, LIFECYCLE_DEADLINE);
    std::thread::sleep(watch.saturating_sub(start.elapsed()));
    let created = spawner.logs().matches("sidecar started").count();
    eprintln!("crash loop: {created} sidecars created in {watch:?}");
    // Backoff 0.5, 1, 2, 4 s: about five in eight seconds; without backoff it would be dozens.
    assert!(
        (2..=7).contains(&created),
        "expected a bounded number of re-creations, got {created}"
    );
    assert!(spawner
        .logs()
        .contains("sidecar exited while its target runs"));
    assert!(sidecars_for(&prefix, &id).len() <= 1);
}

#[test]
fn spawner_started_late_and_restarted_reconciles_orphans_duplicates_and_missing() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let img = &images().sidecar;
    // Before any spawner: a target without a sidecar, a target with two sidecars, an orphan
    // sidecar of a target that is gone, and a sidecar of a stopped target.
    let missing = target(&run, &prefix, &[]).1;
    let dup = target(&run, &prefix, &[]).1;
    let stopped = target(&run, &prefix, &[]).1;
    let fake = |for_id: &str, net: &str| {
        let labels = [
            format!("{prefix}.managed-by=spawner"),
            format!("{prefix}.sidecar-for={for_id}"),
        ];
        let name = unique_name("fake-sidecar");
        run.container(
            &name,
            img,
            &[
                "--label",
                &labels[0],
                "--label",
                &labels[1],
                "--network",
                net,
                "-e",
                "SIDECAR_LISTEN=0.0.0.0:9443",
            ],
            &[],
        )
    };
    let dup_a = fake(&dup, &format!("container:{dup}"));
    let dup_b = fake(&dup, &format!("container:{dup}"));
    let orphan = fake(
        "0000000000000000000000000000000000000000000000000000000000000000",
        "none",
    );
    let of_stopped = fake(&stopped, &format!("container:{stopped}"));
    docker_ok(&["stop", "-t", "1", &stopped]);

    let mut spawner = Spawner::start(&prefix, &[]);
    let (_, took) = wait_served(&prefix, &missing);
    eprintln!("observed latency spawner start->missing sidecar served: {took:?}");
    wait_served(&prefix, &dup);
    for gone in [&orphan, &of_stopped] {
        poll(LIFECYCLE_DEADLINE, "orphan removed", || {
            inspect(gone).is_none().then_some(())
        });
    }
    assert!(
        inspect(&dup_a).is_none() && inspect(&dup_b).is_none(),
        "stale duplicates (no namespace label) replaced"
    );
    assert!(sidecars_for(&prefix, &stopped).is_empty());

    // Restart the spawner: nothing changes, never a second sidecar.
    let before: Vec<String> = sidecars(&prefix).into_iter().map(|c| c.id).collect();
    spawner.terminate();
    drop(spawner);
    let spawner = Spawner::start(&prefix, &[]);
    spawner.wait_log("subscribed to docker events", 1, LIFECYCLE_DEADLINE);
    assert_stays_one(&prefix, &missing, Duration::from_secs(2));
    assert_stays_one(&prefix, &dup, Duration::from_secs(1));
    let mut after: Vec<String> = sidecars(&prefix).into_iter().map(|c| c.id).collect();
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(before, after, "a restarted spawner keeps healthy sidecars");
}

#[test]
fn concurrent_events_never_make_two_sidecars() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    let ids: Vec<String> = (0..4)
        .map(|_| {
            run.create(
                &unique_name("app"),
                &images().demo,
                &[
                    "-p",
                    "127.0.0.1::8443",
                    "--label",
                    &opt_in(&prefix, &images().sidecar),
                ],
            )
        })
        .collect();
    // All start at once, then all restart at once, twice: bursts of start/die events.
    let mut start = vec!["start"];
    start.extend(ids.iter().map(String::as_str));
    docker_ok(&start);
    for _ in 0..2 {
        let mut restart = vec!["restart", "-t", "0"];
        restart.extend(ids.iter().map(String::as_str));
        docker_ok(&restart);
    }
    for id in &ids {
        wait_served(&prefix, id);
    }
    for id in &ids {
        assert_stays_one(&prefix, id, Duration::from_millis(500));
    }
    assert_eq!(sidecars(&prefix).len(), ids.len());
}

#[test]
fn many_targets_started_at_once_are_all_served() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    let ids: Vec<String> = (0..12)
        .map(|_| {
            run.create(
                &unique_name("app"),
                &images().demo,
                &[
                    "-p",
                    "127.0.0.1::8443",
                    "--label",
                    &opt_in(&prefix, &images().sidecar),
                ],
            )
        })
        .collect();
    let start = Instant::now();
    let mut cmd = vec!["start"];
    cmd.extend(ids.iter().map(String::as_str));
    docker_ok(&cmd);
    let started = start.elapsed();
    for id in &ids {
        wait_served(&prefix, id);
    }
    eprintln!(
        "observed {} targets: docker start {started:?}, all served {:?}",
        ids.len(),
        start.elapsed()
    );
    for id in &ids {
        assert_stays_one(&prefix, id, Duration::from_millis(200));
    }
    assert_eq!(
        sidecars(&prefix).len(),
        ids.len(),
        "exactly one sidecar each"
    );
}

#[test]
fn image_not_allowed_launches_nothing_and_warns() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    let name = unique_name("app");
    let id = run.container(
        &name,
        &images().demo,
        &["--label", &opt_in(&prefix, "evil/miner:latest")],
        &[],
    );
    spawner.wait_log("not in the allow-list", 1, LIFECYCLE_DEADLINE);
    let logs = spawner.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("not in the allow-list"))
        .unwrap_or_default();
    assert!(
        line.contains(&name) && line.contains("evil/miner:latest"),
        "warning names container and image: {line}"
    );
    let ok = target(&run, &prefix, &[]).1;
    wait_served(&prefix, &ok);
    assert!(sidecars_for(&prefix, &id).is_empty());
    let status = spawner::status(&prefix, &[]);
    let row = status
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} in status:\n{status}"));
    assert!(
        row.contains("not in the allow-list"),
        "status shows the reason: {row}"
    );
    assert!(
        docker(&["image", "inspect", "evil/miner:latest"])
            .status
            .code()
            != Some(0),
        "nothing pulled"
    );
}

#[test]
fn invalid_label_gets_no_sidecar_a_warning_and_a_status_reason() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    let (name, bad) = target(&run, &prefix, &[format!("{prefix}.mode=udp")]);
    let good = target(&run, &prefix, &[]).1;
    wait_served(&prefix, &good);
    spawner.wait_log("invalid label", 1, LIFECYCLE_DEADLINE);
    let logs = spawner.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("invalid label"))
        .unwrap_or_default();
    assert!(
        line.contains(&name) && line.contains(&format!("{prefix}.mode")) && line.contains("udp"),
        "{line}"
    );
    assert!(sidecars_for(&prefix, &bad).is_empty());
    let status = spawner::status(&prefix, &[]);
    let row = status
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} in status:\n{status}"));
    assert!(
        row.contains("invalid label") && row.contains("udp"),
        "{row}"
    );
}

#[test]
fn missing_image_is_pulled_with_retries_while_other_targets_are_served() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    let missing_image = format!("tls-sidecar/sidecar:{}", unique_name("absent"));
    let name = unique_name("app");
    let waiting = run.container(
        &name,
        &images().demo,
        &["--label", &opt_in(&prefix, &missing_image)],
        &[],
    );
    let served = target(&run, &prefix, &[]).1;
    wait_served(&prefix, &served);
    // Backoff 1 s then 2 s: a second failed attempt within the deadline.
    spawner.wait_log("image pull failed", 2, Duration::from_secs(15));
    assert!(spawner.logs().contains(&missing_image));
    assert!(sidecars_for(&prefix, &waiting).is_empty());
    // Still serving others while the pull keeps failing.
    let late = target(&run, &prefix, &[]).1;
    wait_served(&prefix, &late);
}

#[test]
fn sigterm_stops_the_spawner_promptly_and_sidecars_keep_serving() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let mut spawner = Spawner::start(&prefix, &[]);
    let id = target(&run, &prefix, &[]).1;
    let (sidecar, _) = wait_served(&prefix, &id);
    let (status, took) = spawner.terminate();
    eprintln!("observed SIGTERM->exit: {took:?}");
    assert!(status.success(), "exit 0 on SIGTERM, got {status}");
    assert!(took < Duration::from_secs(3), "prompt exit, took {took:?}");
    assert!(
        inspect(&sidecar.id).is_some_and(|c| c.running),
        "sidecar left running"
    );
    assert!(
        https_get(host_port(&id, 8443)).is_some(),
        "data plane still serves"
    );
}

#[test]
fn dry_run_changes_nothing() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let id = target(&run, &prefix, &[]).1;
    let orphan_labels = [
        format!("{prefix}.managed-by=spawner"),
        format!("{prefix}.sidecar-for=gone"),
    ];
    let orphan = run.create(
        &unique_name("orphan"),
        &images().sidecar,
        &["--label", &orphan_labels[0], "--label", &orphan_labels[1]],
    );
    let spawner = Spawner::start(&prefix, &["--dry-run"]);
    spawner.wait_log("dry run: would create sidecar", 1, LIFECYCLE_DEADLINE);
    spawner.wait_log("dry run: would remove sidecar", 1, LIFECYCLE_DEADLINE);
    assert!(inspect(&orphan).is_some(), "orphan kept in dry run");
    assert_eq!(sidecars(&prefix).len(), 1, "nothing created in dry run");
    assert!(sidecars_for(&prefix, &id).is_empty());
}

#[test]
fn engine_unreachable_at_start_is_retried_then_reconciled() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let dir = harness::tmp::TempDir::new("docker-sock");
    let sock = dir.path().join("docker.sock");
    let spawner = Spawner::start_on(&format!("unix://{}", sock.display()), &prefix, &[]);
    spawner.wait_log("reconcile failed", 2, LIFECYCLE_DEADLINE);
    let id = target(&run, &prefix, &[]).1;
    symlink(DOCKER_SOCKET, &sock).expect("symlink the engine socket into place");
    let (_, took) = wait_served(&prefix, &id);
    eprintln!("observed latency engine reachable->served: {took:?}");
}

/// A unix-socket proxy to the engine that a test can cut (every connection dropped, socket gone)
/// and restore, standing in for an engine restart.
struct SocketProxy {
    path: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SocketProxy {
    fn start(path: &Path) -> SocketProxy {
        let _ = std::fs::remove_file(path);
        let listener = std::os::unix::net::UnixListener::bind(path).expect("bind proxy socket");
        listener
            .set_nonblocking(true)
            .expect("nonblocking proxy socket");
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::UnixListener::from_std(listener).expect("tokio proxy listener");
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        accepted = listener.accept() => {
                            let Ok((mut client, _)) = accepted else { continue };
                            tokio::spawn(async move {
                                if let Ok(mut engine) = tokio::net::UnixStream::connect(DOCKER_SOCKET).await {
                                    let _ = tokio::io::copy_bidirectional(&mut client, &mut engine).await;
                                }
                            });
                        }
                    }
                }
            });
            // Dropping the runtime drops every connection task: the spawner sees its stream break.
            drop(rt);
        });
        SocketProxy {
            path: path.to_path_buf(),
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn cut(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

#[test]
fn broken_event_stream_reconnects_and_catches_up() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let dir = harness::tmp::TempDir::new("docker-proxy");
    let sock = dir.path().join("docker.sock");
    let mut proxy = SocketProxy::start(&sock);
    let spawner = Spawner::start_on(&format!("unix://{}", sock.display()), &prefix, &[]);
    let first = target(&run, &prefix, &[]).1;
    wait_served(&prefix, &first);

    proxy.cut();
    spawner.wait_log("docker event stream", 1, LIFECYCLE_DEADLINE);
    // While disconnected: a new target starts and the first one dies.
    let second = target(&run, &prefix, &[]).1;
    docker_ok(&["kill", &first]);
    let old = sidecars_for(&prefix, &first);
    assert_eq!(
        old.len(),
        1,
        "nothing can change while the spawner is cut off"
    );

    let _proxy = SocketProxy::start(&sock);
    let (_, took) = wait_served(&prefix, &second);
    eprintln!("observed latency reconnect->served: {took:?}");
    wait_no_sidecar(&prefix, &first);
    wait_not_running(&first);
}

#[test]
fn compose_demo_serves_https_and_killing_the_demo_removes_the_sidecar() {
    let port = harness::sidecar::free_port();
    let project =
        harness::compose::Compose::new("docker-compose.yml", &[("DEMO_PORT", port.to_string())]);
    let prefix = project.prefix.clone();
    project.up();

    let (body, took) = poll(
        Duration::from_secs(20),
        "https through the compose demo",
        || https_get(port),
    );
    eprintln!("observed latency compose up->https: {took:?}");
    assert!(body.starts_with("GET / "), "{body}");
    let demo = project.container("demo");
    assert!(!demo.is_empty(), "demo container found");
    assert_eq!(sidecars_for(&prefix, &demo).len(), 1);
    docker_ok(&["kill", &demo]);
    let took = wait_no_sidecar(&prefix, &demo);
    eprintln!("observed latency compose demo killed->sidecar removed: {took:?}");
}

/// A demo target like [`target`], also publishing each of `ports` on a free loopback port.
fn target_publishing(
    run: &TestRun,
    prefix: &str,
    labels: &[String],
    ports: &[u16],
) -> (String, String) {
    let name = unique_name("app");
    let mut args = vec!["-p".to_string(), "127.0.0.1::8443".to_string()];
    for p in ports {
        args.push("-p".into());
        args.push(format!("127.0.0.1::{p}"));
    }
    args.push("--label".into());
    args.push(opt_in(prefix, &images().sidecar));
    for l in labels {
        args.push("--label".into());
        args.push(l.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = run.container(&name, &images().demo, &args, &[]);
    (name, id)
}

/// `curl -sS --max-time 3 ARGS`: stdout when curl succeeds, `None` when it fails.
fn curl(args: &[&str]) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "3"])
        .args(args)
        .output()
        .expect("run curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

#[test]
fn hsts_and_redirect_labels_reach_the_sidecar() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    // 8081: the demo app itself listens on 8080.
    let id = target_publishing(
        &run,
        &prefix,
        &[
            format!("{prefix}.hsts=1y"),
            format!("{prefix}.redirect-listen=8081"),
        ],
        &[8081],
    )
    .1;
    let (sidecar, _) = wait_served(&prefix, &id);
    sidecar.assert_env(&[
        "SIDECAR_HSTS=31536000",
        "SIDECAR_REDIRECT_LISTEN=0.0.0.0:8081",
    ]);

    let https = curl(&[
        "-ki",
        &format!("https://127.0.0.1:{}/", host_port(&id, 8443)),
    ])
    .expect("https through the sidecar");
    assert!(
        https.lines().any(|l| l
            .trim()
            .eq_ignore_ascii_case("strict-transport-security: max-age=31536000")),
        "HSTS header expected:\n{https}"
    );

    let url = format!("http://127.0.0.1:{}/some/path?q=1", host_port(&id, 8081));
    let (redirect, _) = poll(
        LIFECYCLE_DEADLINE,
        "the redirect listener to answer",
        || curl(&["-i", &url]),
    );
    assert!(
        redirect.starts_with("HTTP/1.1 308"),
        "308 expected:\n{redirect}"
    );
    assert!(
        redirect
            .to_ascii_lowercase()
            .contains("location: https://127.0.0.1:8443/some/path?q=1"),
        "redirect to the same path on the TLS port:\n{redirect}"
    );
}

/// A client CA written into a `--certs-from` directory the sidecar (uid 65534) can read, and
/// client certificates it issues, written where curl reads them.
struct ClientCa {
    certs: harness::tmp::TempDir,
    clients: harness::tmp::TempDir,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl ClientCa {
    /// Writes `<certs>/ca/clients.pem`.
    fn new() -> ClientCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        use std::os::unix::fs::PermissionsExt;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "spawner test client CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).expect("self-sign client CA");
        let certs = harness::tmp::TempDir::new("spawner-certs");
        let dir = certs.path().join("ca");
        std::fs::create_dir(&dir).expect("create ca dir");
        let file = certs.write("ca/clients.pem", ca.pem());
        let mode = |p: &Path, m| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod fixture")
        };
        mode(certs.path(), 0o755);
        mode(&dir, 0o755);
        mode(&file, 0o644);
        ClientCa {
            certs,
            clients: harness::tmp::TempDir::new("spawner-clients"),
            ca,
        }
    }

    /// The host directory to pass as `--certs-from`.
    fn certs_from(&self) -> &str {
        self.certs.path().to_str().expect("utf-8 temp path")
    }

    /// A client certificate with subject `CN=<cn>` and the clientAuth usage: `(cert, key)` files.
    fn client(&self, cn: &str) -> (String, String) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("client key");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("sign client certificate");
        let path = |p: PathBuf| p.to_str().expect("utf-8 temp path").to_string();
        (
            path(self.clients.write(&format!("{cn}.crt"), cert.pem())),
            path(
                self.clients
                    .write(&format!("{cn}.key"), key.serialize_pem()),
            ),
        )
    }
}

/// `GET /` over https with an optional client certificate; the body on a 2xx.
fn https_as(port: u16, client: Option<&(String, String)>) -> Option<String> {
    let url = format!("https://127.0.0.1:{port}/");
    match client {
        Some((cert, key)) => curl(&["-kf", "--cert", cert, "--key", key, &url]),
        None => curl(&["-kf", &url]),
    }
}

#[test]
fn client_ca_label_admits_only_allowed_client_certificates() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let ca = ClientCa::new();
    let _spawner = Spawner::start(&prefix, &["--certs-from", ca.certs_from()]);
    let id = target(
        &run,
        &prefix,
        &[
            format!("{prefix}.client-ca=ca/clients.pem"),
            format!("{prefix}.allow-cn=alice,carol"),
        ],
    )
    .1;
    let sidecar = wait_served_or_running(&prefix, &id);
    sidecar.assert_env(&[
        "SIDECAR_CLIENT_CA=/certs/ca/clients.pem",
        "SIDECAR_ALLOW_CN=alice,carol",
    ]);
    let port = host_port(&id, 8443);
    let alice = ca.client("alice");
    let (body, _) = poll(
        LIFECYCLE_DEADLINE,
        "https with an allowed client certificate",
        || https_as(port, Some(&alice)),
    );
    assert!(
        body.to_ascii_lowercase()
            .contains("x-client-cert-subject: cn=alice"),
        "the backend sees the verified identity:\n{body}"
    );
    assert_eq!(https_as(port, None), None, "no client certificate: refused");
    assert_eq!(
        https_as(port, Some(&ca.client("mallory"))),
        None,
        "a certificate outside the allow-list: refused"
    );
    let other_ca = ClientCa::new();
    assert_eq!(
        https_as(port, Some(&other_ca.client("alice"))),
        None,
        "an allowed name from another CA: refused"
    );
}

#[test]
fn invalid_tls_policy_labels_get_no_sidecar_and_a_status_reason() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let ca = ClientCa::new();
    let flags = ["--certs-from", ca.certs_from()];
    let spawner = Spawner::start(&prefix, &flags);
    let cases = [
        ("client-ca", "../ca/clients.pem", "under /certs"),
        ("allow-cn", "alice", "only valid with the client-ca label"),
        ("hsts", "abc", "expected seconds"),
    ];
    let bad: Vec<(String, String, String, &str, &str)> = cases
        .iter()
        .map(|(suffix, value, reason)| {
            let label = format!("{prefix}.{suffix}");
            let (name, id) = target(&run, &prefix, &[format!("{label}={value}")]);
            (name, id, label, *value, *reason)
        })
        .collect();
    let good = target(&run, &prefix, &[]).1;
    wait_served(&prefix, &good);
    for (name, id, label, value, reason) in &bad {
        spawner.wait_invalid_label(name, label, value, reason);
        assert!(
            sidecars_for(&prefix, id).is_empty(),
            "{label}={value}: no sidecar"
        );
    }
    let status = spawner::status(&prefix, &flags);
    for (name, _, label, value, reason) in &bad {
        let row = status
            .lines()
            .find(|l| l.starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("{name} in status:\n{status}"));
        assert!(
            row.contains(label.as_str()) && row.contains(value) && row.contains(reason),
            "status shows the reason for {label}={value}: {row}"
        );
    }
}

// ---- Lifecycle under real engine timing (issue 9) ----

/// Deterministic pseudo-random delays in `[0, max)`: a fixed seed, so a failure replays with the
/// same schedule (xorshift64*; the test needs a spread of kill times, not cryptography).
fn spread(seed: u64, n: usize, max: Duration) -> Vec<Duration> {
    let mut x = seed.max(1);
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
            max.mul_f64(r as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

/// p50, p95 (nearest rank) and max.
fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration, Duration) {
    assert!(!v.is_empty(), "no samples");
    v.sort();
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (rank(0.50), rank(0.95), v[v.len() - 1])
}

/// Issue 9's figure for one kill, p95 under 2 s over 20 kills at random times, is printed here
/// and not asserted: a timed assertion fails on a loaded machine and hides nothing a user sees.
/// The outcome is asserted (every kill recovered, one sidecar each); `make soak` measures the
/// figure under churn.
const RECOVERY_GOAL: &str = "goal p95 < 2s";

/// IDs of every container of ours for a target, in any state, in one engine call (cheap enough to
/// poll tightly while measuring).
fn sidecar_ids_for(prefix: &str, target_id: &str) -> Vec<String> {
    let filter = format!("label={prefix}.sidecar-for={target_id}");
    docker_ok(&["ps", "-aq", "--no-trunc", "--filter", &filter])
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The one running sidecar for a target, when there is exactly one container of ours for it.
fn only_running_sidecar(prefix: &str, target_id: &str) -> Option<Container> {
    match sidecar_ids_for(prefix, target_id).as_slice() {
        [one] => inspect(one).filter(|c| c.running),
        _ => None,
    }
}

#[test]
fn killed_sidecars_are_recreated_and_serving_after_every_kill() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    // Two targets killed in parallel, ten kills each, each 0-3 s after its sidecar started.
    let targets: Vec<String> = (0..2).map(|_| target(&run, &prefix, &[]).1).collect();
    let samples: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let prefix = &prefix;
                s.spawn(move || {
                    let port = host_port(id, 8443);
                    let (mut current, _) = wait_served(prefix, id);
                    let mut took = Vec::new();
                    for delay in spread(0x5eed + i as u64, 10, Duration::from_secs(3)) {
                        std::thread::sleep(delay);
                        let start = Instant::now();
                        docker_ok(&["kill", &current.id]);
                        let (next, _) = poll(
                            LIFECYCLE_DEADLINE,
                            "a new sidecar serving after the kill",
                            || {
                                https_get(port)?;
                                only_running_sidecar(prefix, id).filter(|c| c.id != current.id)
                            },
                        );
                        // From before the kill: includes the CLI's own round trip.
                        took.push(start.elapsed());
                        current = next;
                    }
                    took
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("kill loop thread"))
            .collect()
    });
    let (p50, p95, max) = percentiles(samples.clone());
    eprintln!(
        "observed sidecar killed->recreated and serving, {} kills: p50 {p50:?} p95 {p95:?} max {max:?} ({RECOVERY_GOAL})",
        samples.len()
    );
    eprintln!(
        "observed the listing still showing a killed sidecar running after its die event: {} of {} kills",
        spawner.logs().matches("listing lags behind the event").count(),
        samples.len()
    );
    assert_eq!(samples.len(), 20);
    for id in &targets {
        assert_stays_one(&prefix, id, Duration::from_millis(300));
    }
}

#[test]
fn killed_targets_lose_their_sidecar_after_every_kill() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let _spawner = Spawner::start(&prefix, &[]);
    let targets: Vec<String> = (0..2).map(|_| target(&run, &prefix, &[]).1).collect();
    let samples: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let prefix = &prefix;
                s.spawn(move || {
                    let mut took = Vec::new();
                    for (n, delay) in spread(0xdead + i as u64, 10, Duration::from_secs(3))
                        .into_iter()
                        .enumerate()
                    {
                        if n > 0 {
                            docker_ok(&["start", id]);
                        }
                        poll(LIFECYCLE_DEADLINE, "the target's sidecar running", || {
                            only_running_sidecar(prefix, id)
                        });
                        std::thread::sleep(delay);
                        let start = Instant::now();
                        docker_ok(&["kill", id]);
                        poll(
                            LIFECYCLE_DEADLINE,
                            "the killed target's sidecar removed",
                            || sidecar_ids_for(prefix, id).is_empty().then_some(()),
                        );
                        took.push(start.elapsed());
                    }
                    took
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("kill loop thread"))
            .collect()
    });
    let (p50, p95, max) = percentiles(samples.clone());
    eprintln!(
        "observed target killed->sidecar removed, {} kills: p50 {p50:?} p95 {p95:?} max {max:?} ({RECOVERY_GOAL})",
        samples.len()
    );
    assert_eq!(samples.len(), 20);
}

/// A `--certs-from` directory whose `live/<host>/privkey.pem` does not belong to its
/// `fullchain.pem` (a botched manual renewal): the spawner delivers both, the sidecar exits 2 with
/// `does not match the certificate` at every start, and the spawner keeps recreating it.
fn mismatched_key_certs(host: &str) -> harness::tmp::TempDir {
    let dir = harness::tmp::TempDir::new("spawner-certs");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_string()])
        .expect("cert params")
        .self_signed(&key)
        .expect("self-sign");
    std::fs::create_dir_all(dir.path().join("live").join(host)).expect("create live dir");
    dir.write(&format!("live/{host}/fullchain.pem"), cert.pem());
    dir.write(&format!("live/{host}/privkey.pem"), other.serialize_pem());
    dir
}

#[test]
fn failing_sidecar_shows_its_exit_code_and_error_in_status_and_logs_the_cause_once() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let host = "failing.test";
    let certs = mismatched_key_certs(host);
    let certs_from = certs.path().to_str().expect("utf-8 temp path").to_string();
    let flags = ["--certs-from", certs_from.as_str()];
    let spawner = Spawner::start(&prefix, &flags);
    let (name, id) = target(&run, &prefix, &[format!("{prefix}.hostname={host}")]);
    let healthy = target(&run, &prefix, &[]).1;
    wait_served(&prefix, &healthy);
    // Backoff 0.5, 1, 2 s: a fourth sidecar is made about 3.5 s after the first failed.
    spawner.wait_log("sidecar started", 5, Duration::from_secs(20));
    let logs = spawner.logs();
    let first = logs
        .lines()
        .filter(|l| l.contains("sidecar exited while its target runs"))
        .collect::<Vec<_>>();
    assert_eq!(
        first.len(),
        1,
        "the cause is logged once across retries:\n{logs}"
    );
    assert!(
        first[0].contains("exit_code=Some(2)") && first[0].contains("privkey.pem"),
        "the log names the exit code and the sidecar's error: {}",
        first[0]
    );
    let repeats = logs.matches("sidecar exited again, same cause").count();
    eprintln!(
        "failing sidecar: {} created, cause logged once, {repeats} repeats at debug",
        logs.matches("sidecar started").count()
    );
    assert!(repeats >= 2, "retries happened: {logs}");
    assert!(sidecars_for(&prefix, &id).len() <= 1);

    let status = spawner::status(&prefix, &flags);
    eprintln!("{status}");
    let header = status.lines().next().unwrap_or_default();
    let row = status
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} in status:\n{status}"));
    let column = header.find("LAST FAILURE").expect("LAST FAILURE column");
    let last_failure = row.get(column..).unwrap_or_default();
    assert!(
        last_failure.starts_with("exit 2: error:")
            && last_failure.contains("privkey.pem")
            && last_failure.contains("does not match the certificate"),
        "status shows the exit code and the error line: {row}"
    );
    let healthy_row = status
        .lines()
        .find(|l| !l.starts_with(&name) && l.contains("running"))
        .unwrap_or_default();
    let healthy_failure = healthy_row.get(column..).unwrap_or_default();
    assert!(
        healthy_failure.starts_with("- "),
        "a healthy target has no failure: {healthy_row}"
    );
}

/// Samples every sidecar of ours each ~50 ms until told to stop; returns the worst count of
/// containers of ours seen at once for one target, with the sample that showed it.
fn watch_max_per_target(prefix: &str, stop: &std::sync::atomic::AtomicBool) -> (usize, String) {
    let label = format!("{prefix}.sidecar-for");
    let mut worst = (0, String::new());
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let out = docker_ok(&[
            "ps",
            "-a",
            "--filter",
            &format!("label={prefix}.managed-by=spawner"),
            "--format",
            &format!("{{{{.Label \"{label}\"}}}} {{{{.Names}}}} {{{{.State}}}}"),
        ]);
        let mut per: std::collections::HashMap<&str, usize> = Default::default();
        for line in out.lines() {
            *per.entry(line.split(' ').next().unwrap_or("")).or_default() += 1;
        }
        if let Some(max) = per.values().copied().max() {
            if max > worst.0 {
                worst = (max, out.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    worst
}

#[test]
fn two_spawners_on_one_prefix_never_make_two_sidecars_for_a_target() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let a = Spawner::start(&prefix, &[]);
    let b = Spawner::start(&prefix, &[]);
    a.wait_log("subscribed to docker events", 1, LIFECYCLE_DEADLINE);
    b.wait_log("subscribed to docker events", 1, LIFECYCLE_DEADLINE);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (worst, ids) = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_max_per_target(&prefix, &stop));
        // Both see every event at the same moment: starts, sidecar kills, target restarts.
        let ids: Vec<String> = (0..4).map(|_| target(&run, &prefix, &[]).1).collect();
        for id in &ids {
            wait_served(&prefix, id);
        }
        for round in 0..3 {
            for id in &ids {
                if let Some(s) = only_running_sidecar(&prefix, id) {
                    docker_ok(&["kill", &s.id]);
                }
            }
            for id in &ids {
                wait_served(&prefix, id);
            }
            let mut restart = vec!["restart", "-t", "0"];
            restart.extend(ids.iter().map(String::as_str));
            docker_ok(&restart);
            for id in &ids {
                let (_, took) = wait_served(&prefix, id);
                eprintln!("two spawners, round {round}: restart->served {took:?}");
            }
        }
        for id in &ids {
            assert_stays_one(&prefix, id, Duration::from_millis(500));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (watcher.join().expect("watcher thread"), ids)
    });
    eprintln!(
        "two spawners: at most {} container(s) of ours for one target at once",
        worst.0
    );
    assert!(
        worst.0 <= 1,
        "two sidecars for one target at once:\n{}",
        worst.1
    );
    assert_eq!(sidecars(&prefix).len(), ids.len(), "converged: one each");
    let adopted = a.logs().matches("adopted").count() + b.logs().matches("adopted").count();
    eprintln!("two spawners: {adopted} sidecar(s) adopted from the other spawner");
}

#[test]
fn spawner_killed_while_creating_sidecars_converges_without_duplicates_or_orphans() {
    let run = TestRun::new();
    for after in [0u64, 50, 200] {
        let prefix = run.label_prefix();
        let ids: Vec<String> = (0..10)
            .map(|_| {
                run.create(
                    &unique_name("app"),
                    &images().demo,
                    &[
                        "-p",
                        "127.0.0.1::8443",
                        "--label",
                        &opt_in(&prefix, &images().sidecar),
                    ],
                )
            })
            .collect();
        let mut spawner = Spawner::start(&prefix, &[]);
        spawner.wait_log("subscribed to docker events", 1, LIFECYCLE_DEADLINE);
        // All ten at once (one `docker start` each, in parallel); the spawner is killed `after` ms
        // after its first sidecar appears, while it is creating and starting the others.
        let starts: Vec<Child> = ids
            .iter()
            .map(|id| {
                Command::new("docker")
                    .args(["start", id])
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("run docker start")
            })
            .collect();
        let managed = format!("label={prefix}.managed-by=spawner");
        poll(LIFECYCLE_DEADLINE, "the spawner's first sidecar", || {
            (!docker_ok(&["ps", "-aq", "--filter", &managed]).is_empty()).then_some(())
        });
        std::thread::sleep(Duration::from_millis(after));
        spawner.kill();
        for mut c in starts {
            assert!(
                c.wait().expect("wait for docker start").success(),
                "docker start failed"
            );
        }
        let left: Vec<String> = sidecars(&prefix)
            .iter()
            .map(|c| {
                let state = c.raw["State"]["Status"].as_str().unwrap_or("?");
                format!("{} {state}", c.name)
            })
            .collect();
        drop(spawner);

        let _spawner = Spawner::start(&prefix, &[]);
        let (_, took) = poll(
            Duration::from_secs(5),
            "one running sidecar per target in its namespace, nothing else",
            || {
                let all = sidecars(&prefix);
                let ok = all.len() == ids.len()
                    && ids.iter().all(|id| {
                        let started = inspect(id).map(|t| t.started_at).unwrap_or_default();
                        all.iter()
                            .filter(|s| {
                                s.running
                                    && s.label(&format!("{prefix}.sidecar-for")).as_deref()
                                        == Some(id.as_str())
                                    && s.label(&format!("{prefix}.target-started"))
                                        == Some(started.clone())
                            })
                            .count()
                            == 1
                    });
                ok.then_some(())
            },
        );
        eprintln!(
            "spawner SIGKILLed {after} ms after its first of 10 sidecars appeared (left: {} of ours: {left:?}); restarted, converged in {took:?}",
            left.len()
        );
        for id in &ids {
            wait_served(&prefix, id);
        }
    }
}

#[test]
fn half_created_sidecar_is_adopted_by_the_next_spawner() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let (name, id) = target(&run, &prefix, &[]);
    // Exactly what a spawner killed between its create and its start leaves behind.
    let started = inspect(&id).expect("target").started_at;
    let labels = [
        format!("{prefix}.managed-by=spawner"),
        format!("{prefix}.sidecar-for={id}"),
        format!("{prefix}.target-started={started}"),
    ];
    let half = docker_ok(&[
        "create",
        "--name",
        &format!("{name}-tls-sidecar"),
        "--label",
        &labels[0],
        "--label",
        &labels[1],
        "--label",
        &labels[2],
        "--network",
        &format!("container:{id}"),
        "--user",
        "65534:65534",
        &images().sidecar,
    ]);
    let _spawner = Spawner::start(&prefix, &[]);
    let (served, took) = wait_served(&prefix, &id);
    eprintln!("observed latency spawner start->half-created sidecar adopted and served: {took:?}");
    assert_eq!(
        served.id, half,
        "the never-started sidecar is started, not replaced"
    );
    assert_stays_one(&prefix, &id, Duration::from_millis(500));
}

/// Issue 10's first defect: Docker allows a 66-character name (Compose v2's
/// `<project>-<service>-1` gets long), a DNS label is at most 63. Without a `hostname` label the
/// spawner once handed that name to the sidecar as its certificate name, and the sidecar exited 2
/// at every start.
#[test]
fn a_target_whose_name_no_certificate_can_carry_is_served() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &[]);
    let unique = unique_name("long");
    let name = format!("{unique}-{}", "x".repeat(66 - unique.len() - 1));
    assert_eq!(name.len(), 66);
    let label = opt_in(&prefix, &images().sidecar);
    let id = run.container(
        &name,
        &images().demo,
        &["-p", "127.0.0.1::8443", "--label", &label],
        &[],
    );
    let (sidecar, took) = wait_served(&prefix, &id);
    eprintln!("66-character target served after {took:?}");
    assert!(sidecar.running);
    assert!(
        !spawner.logs().contains("sidecar exited"),
        "{}",
        spawner.logs()
    );
}
