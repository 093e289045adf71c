//! Roll-outs on the real engine: a sidecar image moved to a new image under the same tag (or a
//! spawner that renders its sidecars differently) replaces every running sidecar in place, the
//! new one taking the listeners over from the old one while clients keep using the target; a
//! bad image never takes a service down and pauses the roll-out; `--rollout manual`, the
//! `rollout` label and `spawner rollout`; fifty targets at parallelism two.
//!
//! Each test tags its own sidecar image (`tls-sidecar/sidecar:ro-...`, made FROM the test image
//! with a label that makes each generation another image), so moving the tag touches no other
//! test.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::docker::{
    docker, docker_ok, host_port, https_get, images, inspect, logs_of, poll, sidecars_for,
    unique_name, Container, TestRun, LIFECYCLE_DEADLINE,
};
use harness::load::{assert_clean, Load, Mix};
use harness::spawner::{self, Spawner};

/// How long a roll-out may take to show in a test (a replacement starts, takes over, the old one
/// drains its streams): generous, CI shares two cores.
const ROLLOUT_DEADLINE: Duration = Duration::from_secs(60);

/// Image tags a test made, removed when it ends (declare before the `TestRun`, so its containers
/// are gone first).
struct Tags(Vec<String>);

impl Drop for Tags {
    fn drop(&mut self) {
        for t in &self.0 {
            let _ = docker(&["image", "rm", "-f", t]);
        }
    }
}

impl Tags {
    fn new() -> Tags {
        Tags(Vec::new())
    }

    /// A fresh sidecar tag for this test.
    fn sidecar(&mut self) -> String {
        let tag = format!("tls-sidecar/sidecar:{}", unique_name("ro"));
        self.0.push(tag.clone());
        tag
    }
}

/// What every test here starts with: its engine resources, a label prefix, and a sidecar tag
/// of its own at generation 1. Dropped in field order: the containers before the image tags.
struct Setup {
    run: TestRun,
    prefix: String,
    tag: String,
    /// The image ID of generation 1.
    first: String,
    _tags: Tags,
}

impl Setup {
    fn new() -> Setup {
        let mut tags = Tags::new();
        let tag = tags.sidecar();
        let run = TestRun::new();
        let prefix = run.label_prefix();
        let first = good(&tag, "1");
        Setup {
            run,
            prefix,
            tag,
            first,
            _tags: tags,
        }
    }
}

/// Builds `tag` from `dockerfile` (its text, on stdin, no context); returns the image ID.
fn build(tag: &str, dockerfile: &str) -> String {
    let mut child = Command::new("docker")
        .args(["build", "-q", "-t", tag, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run docker build");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dockerfile.as_bytes())
        .expect("write the Dockerfile");
    let out = child.wait_with_output().expect("docker build");
    assert!(
        out.status.success(),
        "docker build of {tag} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    image_id(tag)
}

fn image_id(tag: &str) -> String {
    docker_ok(&["image", "inspect", "--format", "{{.Id}}", tag])
}

/// The test sidecar image as generation `gen` (another image ID each time).
fn good(tag: &str, gen: &str) -> String {
    build(
        tag,
        &format!(
            "FROM {}\nLABEL tls-sidecar-test.generation={gen}\n",
            images().sidecar
        ),
    )
}

/// A bad sidecar image: the sidecar binary started with `args` before the spawner's settings.
fn bad(tag: &str, gen: &str, args: &[&str]) -> String {
    let mut entry = vec!["\"/usr/local/bin/sidecar\"".to_string()];
    entry.extend(args.iter().map(|a| format!("\"{a}\"")));
    build(
        tag,
        &format!(
            "FROM {}\nLABEL tls-sidecar-test.generation={gen}\nENTRYPOINT [{}]\n",
            images().sidecar,
            entry.join(", ")
        ),
    )
}

/// A demo target opted in under `prefix` for sidecar image `image`, publishing 8443 on loopback.
fn target(run: &TestRun, prefix: &str, image: &str, labels: &[String]) -> (String, String) {
    let name = unique_name("app");
    let mut args = vec![
        "-p".to_string(),
        "127.0.0.1::8443".to_string(),
        "--label".to_string(),
        format!("{prefix}.proxy-image={image}"),
    ];
    for l in labels {
        args.extend(["--label".to_string(), l.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = run.container(&name, &images().demo, &args, &[]);
    (name, id)
}

fn image_of(c: &Container) -> String {
    c.raw["Image"].as_str().unwrap_or_default().to_string()
}

/// Waits until the target's only sidecar runs image `image_id` and TLS answers through it.
fn wait_on_image(prefix: &str, target_id: &str, image_id: &str, limit: Duration) -> Container {
    let sidecar = wait_sidecar_on(prefix, target_id, image_id, limit);
    let port = host_port(target_id, 8443);
    poll(LIFECYCLE_DEADLINE, "https through the sidecar", || {
        https_get(port)
    });
    sidecar
}

/// Waits until the target's only sidecar runs image `image_id`.
fn wait_sidecar_on(prefix: &str, target_id: &str, image_id: &str, limit: Duration) -> Container {
    let (sidecar, _) = poll(
        limit,
        &format!("the only sidecar of {target_id} to run image {image_id}"),
        || match sidecars_for(prefix, target_id).as_slice() {
            [one] if one.running && image_of(one) == image_id => Some(one.clone()),
            _ => None,
        },
    );
    sidecar
}

fn addr(target_id: &str) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], host_port(target_id, 8443)))
}

fn row_field(prefix: &str, target: &str, field: &str) -> serde_json::Value {
    let rows = spawner::status_json(prefix, &[]);
    spawner::row(&rows, target)[field].clone()
}

/// `mix` through the TLS front at `addr`, on a runtime of its own (the test thread polls the
/// engine meanwhile); finish it with `rt.block_on(load.finish())`.
fn load_on(addr: SocketAddr, mix: Mix) -> (tokio::runtime::Runtime, Load) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let load = {
        let _in = rt.enter();
        Load::start(addr, mix)
    };
    (rt, load)
}

/// Waits until the sidecar `id` bears the usual name of `target`'s sidecar again.
fn wait_renamed(id: &str, target: &str) {
    poll(LIFECYCLE_DEADLINE, "the replacement renamed back", || {
        inspect(id)
            .filter(|c| c.name == format!("{target}-tls-sidecar"))
            .map(|_| ())
    });
}

#[test]
fn a_new_image_under_the_same_tag_is_rolled_out_under_load_without_a_failed_request() {
    let Setup {
        run,
        prefix,
        tag,
        first,
        ..
    } = &Setup::new();
    let spawner = Spawner::start(prefix, &["--sidecar-shutdown-grace", "10s"]);
    let (name, id) = target(run, prefix, tag, &[]);
    let old = wait_on_image(prefix, &id, first, LIFECYCLE_DEADLINE);
    assert_eq!(
        row_field(prefix, &name, "outdated"),
        serde_json::Value::Null
    );

    let (rt, load) = load_on(addr(&id), Mix::ALL);
    std::thread::sleep(Duration::from_secs(1));
    let changed = Instant::now();
    let second = good(tag, "2");
    assert_ne!(*first, second);
    // The replacement runs the new image beside the old one, which drains its open streams.
    let (new, took) = poll(
        ROLLOUT_DEADLINE,
        "a running replacement on the new image",
        || {
            sidecars_for(prefix, &id)
                .into_iter()
                .find(|s| s.running && image_of(s) == second && s.id != old.id)
        },
    );
    eprintln!("observed: replacement running {took:?} after the image change");
    assert_eq!(
        new.label(&format!("{prefix}.replaces")).as_deref(),
        Some(old.id.as_str())
    );
    // New connections are served by the new image from here: the old one stopped accepting.
    let (_, took) = poll(
        ROLLOUT_DEADLINE,
        "the old sidecar to log the hand-over",
        || logs_of(&old.id).contains("handed over").then_some(()),
    );
    eprintln!("observed: handed over {took:?} later");
    std::thread::sleep(Duration::from_secs(1));
    load.finish_streams();
    let served = wait_on_image(prefix, &id, &second, ROLLOUT_DEADLINE);
    eprintln!(
        "observed: the new image serves alone {:?} after the image change",
        changed.elapsed()
    );
    assert_eq!(served.id, new.id);
    wait_renamed(&new.id, &name);
    std::thread::sleep(Duration::from_secs(1));
    let tallies = rt.block_on(load.finish());
    assert_clean(&tallies);
    assert_eq!(
        row_field(prefix, &name, "image_id").as_str(),
        Some(second.as_str())
    );
    assert_eq!(
        row_field(prefix, &name, "outdated"),
        serde_json::Value::Null
    );
    let logs = spawner.logs();
    assert!(logs.contains("roll-out done"), "{logs}");
}

/// The rollout column of a target in `spawner status --json`.
fn rollout_state(prefix: &str, name: &str) -> String {
    row_field(prefix, name, "rollout")
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_bad_image_never_takes_a_service_down_and_pauses_the_roll_out_until_it_is_fixed() {
    let Setup {
        run,
        prefix,
        tag,
        first,
        ..
    } = &Setup::new();
    let spawner = Spawner::start(
        prefix,
        &[
            "--sidecar-shutdown-grace",
            "2s",
            "--rollout-timeout",
            "3s",
            "--rollout-max-failures",
            "2",
        ],
    );
    let targets: Vec<(String, String)> = (0..3).map(|_| target(run, prefix, tag, &[])).collect();
    for (_, id) in &targets {
        wait_on_image(prefix, id, first, LIFECYCLE_DEADLINE);
    }
    let (rt, load) = load_on(addr(&targets[0].1), Mix::REQUESTS);
    // Three kinds of bad image, each failing two targets and pausing; each new one resumes.
    let kinds: [(&str, &[&str], &str); 3] = [
        ("refuses a flag", &["--no-such-flag"], "exit 2"),
        ("exits at once", &["--version"], "exit 0"),
        (
            "never ready",
            &["--listen", "0.0.0.0:9999"],
            "did not take over within 3s",
        ),
    ];
    for (i, (kind, args, why)) in kinds.iter().enumerate() {
        let pauses = spawner.logs().matches("roll-out paused").count();
        let bad_id = bad(tag, &format!("bad{i}"), args);
        eprintln!("bad image: {kind} ({bad_id})");
        spawner.wait_log("roll-out paused", pauses + 1, ROLLOUT_DEADLINE);
        // Two failed, naming why, the third paused: as the daemon's next turn shows it.
        let (states, _) = poll(
            LIFECYCLE_DEADLINE,
            "two failed targets and a paused one",
            || {
                let states: Vec<String> = targets
                    .iter()
                    .map(|(name, _)| rollout_state(prefix, name))
                    .collect();
                let failed: Vec<&String> = states
                    .iter()
                    .filter(|s| s.starts_with("rollout failed: "))
                    .collect();
                let paused = states.iter().filter(|s| s.starts_with("paused: ")).count();
                (failed.len() == 2 && failed.iter().all(|s| s.contains(why)) && paused == 1)
                    .then_some(states.clone())
            },
        );
        eprintln!("{kind}: {states:?}");
        // Every target still served by its first sidecar alone (a late replacement removed).
        for (name, id) in &targets {
            poll(
                LIFECYCLE_DEADLINE,
                &format!("{kind}: {name} served by the first image alone"),
                || match sidecars_for(prefix, id).as_slice() {
                    [one] if one.running && image_of(one) == *first => Some(()),
                    _ => None,
                },
            );
        }
    }
    // A fixed image resumes the roll-out: every target moves to it.
    let fixed = good(tag, "fixed");
    for (_, id) in &targets {
        wait_on_image(prefix, id, &fixed, ROLLOUT_DEADLINE);
    }
    let tallies = rt.block_on(load.finish());
    assert_clean(&tallies);
    let logs = spawner.logs();
    assert!(logs.contains("roll-out resumed"), "{logs}");
}

#[test]
fn a_spawner_that_renders_sidecars_differently_replaces_them_and_an_unchanged_one_nothing() {
    let Setup {
        run,
        prefix,
        tag,
        first: image,
        ..
    } = &Setup::new();
    let flags = ["--sidecar-shutdown-grace", "5s"];
    let mut first = Spawner::start(prefix, &flags);
    let (_, id) = target(run, prefix, tag, &[]);
    let old = wait_on_image(prefix, &id, image, LIFECYCLE_DEADLINE);
    first.terminate();
    // The same flags: nothing to replace, however long it runs.
    // Its first turns (at start, and once subscribed to events) see the sidecar up to date.
    let second = Spawner::start(prefix, &flags);
    second.wait_log("observed", 2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    let now = sidecars_for(prefix, &id);
    assert!(
        now.len() == 1 && now[0].id == old.id,
        "no churn on a restart: {:?}",
        now.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    drop(second);
    // Another grace: every sidecar is rendered differently, and replaced in place under load.
    let (rt, load) = load_on(addr(&id), Mix::REQUESTS);
    let _third = Spawner::start(prefix, &["--sidecar-shutdown-grace", "7s"]);
    let (new, took) = poll(
        ROLLOUT_DEADLINE,
        "the sidecar replaced",
        || match sidecars_for(prefix, &id).as_slice() {
            [one] if one.running && one.id != old.id => Some(one.clone()),
            _ => None,
        },
    );
    eprintln!("observed: replaced {took:?} after the new spawner started");
    new.assert_env(&["SIDECAR_SHUTDOWN_GRACE=7s"]);
    let tallies = rt.block_on(load.finish());
    assert_clean(&tallies);
}

#[test]
fn manual_targets_wait_for_spawner_rollout_and_status_shows_them_outdated() {
    let Setup {
        run,
        prefix,
        tag,
        first,
        ..
    } = &Setup::new();
    let spawner = Spawner::start(
        prefix,
        &[
            "--sidecar-shutdown-grace",
            "2s",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let admin = spawner.admin_addr();
    let manual_label = vec![format!("{prefix}.rollout=manual")];
    let (manual, manual_id) = target(run, prefix, tag, &manual_label);
    let (auto, auto_id) = target(run, prefix, tag, &[]);
    wait_on_image(prefix, &manual_id, first, LIFECYCLE_DEADLINE);
    wait_on_image(prefix, &auto_id, first, LIFECYCLE_DEADLINE);
    let second = good(tag, "2");
    // The automatic target follows its image; the manual one is only shown outdated.
    wait_on_image(prefix, &auto_id, &second, ROLLOUT_DEADLINE);
    let rows = spawner::status_json(prefix, &[]);
    let row = spawner::row(&rows, &manual);
    assert_eq!(row["image_id"], first.as_str(), "{row:#}");
    assert_eq!(row["wanted_image_id"], second.as_str(), "{row:#}");
    assert_eq!(row["outdated"], "new image", "{row:#}");
    assert!(
        row["rollout"]
            .as_str()
            .unwrap_or_default()
            .starts_with("outdated"),
        "{row:#}"
    );
    let table = spawner::status(prefix, &[]);
    let short = |id: &str| id.trim_start_matches("sha256:")[..12].to_string();
    assert!(
        table.contains(&format!(
            "{} (outdated: new image, wants {})",
            short(first),
            short(&second)
        )),
        "{table}"
    );
    let metric = |line: &str| {
        poll(LIFECYCLE_DEADLINE, line, || {
            let (_, body) = spawner::admin_get(admin, "/metrics")?;
            body.lines().any(|l| l == line).then_some(())
        })
    };
    metric("spawner_sidecars_outdated 1");
    metric("spawner_rollouts_total{result=\"ok\"} 1");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        image_of(&sidecars_for(prefix, &manual_id)[0]),
        *first,
        "manual: not replaced without asking"
    );
    // Asking: an unknown target is refused with exit 1, the manual one is replaced.
    let ask = |target: &str| {
        Command::new(harness::bins::bin_path("spawner"))
            .args(["rollout", "--label-prefix", prefix, "--target", target])
            .output()
            .expect("spawner rollout")
    };
    let out = ask("no-such-target");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no running target named"),
        "{out:?}"
    );
    let out = ask(&manual);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("rolling out 1 target(s): {manual}")),
        "{out:?}"
    );
    wait_on_image(prefix, &manual_id, &second, ROLLOUT_DEADLINE);
    metric("spawner_sidecars_outdated 0");
    metric("spawner_rollouts_total{result=\"ok\"} 2");
    let out = ask(&auto);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{out:?}"
    );
    drop(spawner);
    // Without the daemon, status says what it cannot know.
    let out = Command::new(harness::bins::bin_path("spawner"))
        .args(["status", "--label-prefix", prefix])
        .output()
        .expect("spawner status");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("roll-out state unknown"),
        "{out:?}"
    );
}

/// `ROLLOUT_TARGETS` (default 50) targets rolled out with parallelism 2, one under load.
#[test]
fn fifty_targets_roll_out_with_parallelism_two() {
    let n: usize = std::env::var("ROLLOUT_TARGETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let Setup {
        run,
        prefix,
        tag,
        first,
        ..
    } = &Setup::new();
    let spawner = Spawner::start(
        prefix,
        &[
            "--sidecar-shutdown-grace",
            "3s",
            "--rollout-parallelism",
            "2",
        ],
    );
    let targets: Vec<(String, String)> = (0..n).map(|_| target(run, prefix, tag, &[])).collect();
    for (_, id) in &targets {
        wait_on_image(prefix, id, first, Duration::from_secs(120));
    }
    let (rt, load) = load_on(addr(&targets[0].1), Mix::REQUESTS);
    let started = Instant::now();
    let second = good(tag, "2");
    let limit = Duration::from_secs(30 + 10 * n as u64);
    let (_, took) = poll(limit, "every target on the new image", || {
        targets
            .iter()
            .all(|(_, id)| {
                let s = sidecars_for(prefix, id);
                s.len() == 1 && s[0].running && image_of(&s[0]) == second
            })
            .then_some(())
    });
    eprintln!(
        "observed: {n} targets rolled out with parallelism 2 in {took:?} ({:?} per target)",
        took / n as u32
    );
    let tallies = rt.block_on(load.finish());
    assert_clean(&tallies);
    let done = spawner.logs().matches("roll-out done").count();
    assert_eq!(done, n, "one hand-over per target");
    let _ = started;
}

/// Calls from the app of `caller` through its egress relay, one after the other until `stop`:
/// how many were answered, and the failures.
fn relay_calls(
    caller: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (0, Vec::new());
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            match super::identity::call(&caller, &format!("call-{n}")) {
                Some(body) if body.starts_with(&format!("GET /call-{n} ")) => ok += 1,
                other => failed.push(format!("call {n}: {other:?}")),
            }
        }
        (ok, failed)
    })
}

#[test]
fn a_roll_out_hands_the_egress_relays_over_too_and_no_call_between_services_fails() {
    let Setup {
        run,
        prefix,
        tag,
        first,
        ..
    } = &Setup::new();
    let net = run.network(&unique_name("ronet"));
    let store = super::identity::store();
    let mut args = super::identity::identity_args(&store, "1h");
    args.extend(["--sidecar-shutdown-grace".to_string(), "3s".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let spawner = Spawner::start(prefix, &args);
    let (a, b) = super::identity::caller_and_callee_on(run, &net, prefix, tag);
    // B admits A's identity only: no plain https check through it.
    wait_sidecar_on(prefix, &a, first, LIFECYCLE_DEADLINE);
    wait_sidecar_on(prefix, &b, first, LIFECYCLE_DEADLINE);
    poll(LIFECYCLE_DEADLINE, "A's first call to B answered", || {
        super::identity::call(&a, "first")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let calls = relay_calls(a.clone(), stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    // Both sidecars are replaced: A's relay listener and B's TLS listener change hands.
    let second = good(tag, "2");
    wait_sidecar_on(prefix, &a, &second, ROLLOUT_DEADLINE);
    wait_sidecar_on(prefix, &b, &second, ROLLOUT_DEADLINE);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = calls.join().expect("the calling thread");
    eprintln!(
        "observed: {ok} calls through the egress relay, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "calls failed: {failed:?}");
    assert!(ok > 0, "no call went through");
    assert_eq!(spawner.logs().matches("roll-out done").count(), 2);
}

/// A spawner killed at the worst moments of a roll-out: with a replacement that never takes
/// over, and with one that took over while no spawner ran. The next spawner settles both from
/// what the containers say: the late one is removed (the old sidecar serves on), the old one
/// that handed over is removed and its replacement takes the usual name.
#[test]
fn a_spawner_killed_mid_roll_out_leaves_nothing_for_the_next_one_to_get_wrong() {
    let Setup {
        run,
        prefix,
        tag,
        first,
        ..
    } = &Setup::new();
    let flags = ["--sidecar-shutdown-grace", "2s", "--rollout-timeout", "3s"];
    let mut spawner = Spawner::start(prefix, &flags);
    let (name, id) = target(run, prefix, tag, &[]);
    let old = wait_on_image(prefix, &id, first, LIFECYCLE_DEADLINE);
    let (rt, load) = load_on(addr(&id), Mix::REQUESTS);
    // A replacement that never takes over; the spawner dies while it runs.
    bad(tag, "never", &["--listen", "0.0.0.0:9999"]);
    let (late, _) = poll(ROLLOUT_DEADLINE, "the replacement running", || {
        sidecars_for(prefix, &id)
            .into_iter()
            .find(|s| s.running && s.id != old.id)
    });
    spawner.kill();
    let mut spawner = Spawner::start(prefix, &flags);
    poll(ROLLOUT_DEADLINE, "the late replacement removed", || {
        inspect(&late.id).is_none().then_some(())
    });
    let s = sidecars_for(prefix, &id);
    assert!(
        s.len() == 1 && s[0].id == old.id,
        "the old sidecar serves on"
    );
    spawner.wait_log("did not take over within 3s", 1, LIFECYCLE_DEADLINE);
    // A good replacement; the spawner dies as soon as it runs, and the hand-over happens
    // without it.
    let fixed = good(tag, "fixed");
    let (new, _) = poll(ROLLOUT_DEADLINE, "the replacement running", || {
        sidecars_for(prefix, &id)
            .into_iter()
            .find(|s| s.running && image_of(s) == fixed)
    });
    spawner.kill();
    // Exited, or already removed: the spawner may have seen the hand-over finish (it takes a
    // few hundred milliseconds) before the kill reached it. Either way the next spawner must
    // settle on the replacement.
    poll(
        ROLLOUT_DEADLINE,
        "the old sidecar to drain and exit",
        || inspect(&old.id).is_none_or(|c| !c.running).then_some(()),
    );
    let _next = Spawner::start(prefix, &flags);
    let served = wait_on_image(prefix, &id, &fixed, ROLLOUT_DEADLINE);
    assert_eq!(served.id, new.id);
    wait_renamed(&new.id, &name);
    let tallies = rt.block_on(load.finish());
    assert_clean(&tallies);
}

/// `--dry-run` replaces nothing and says what it would roll out once per target and image, not
/// once per turn.
#[test]
fn a_dry_run_says_once_what_it_would_roll_out_and_replaces_nothing() {
    let Setup {
        run,
        prefix,
        tag,
        first,
        ..
    } = &Setup::new();
    let mut spawner = Spawner::start(prefix, &[]);
    let (_, id) = target(run, prefix, tag, &[]);
    let old = wait_on_image(prefix, &id, first, LIFECYCLE_DEADLINE);
    spawner.terminate();
    let dry = Spawner::start(prefix, &["--dry-run", "--resync-interval", "1s"]);
    good(tag, "2");
    dry.wait_log("dry run: would roll out", 1, ROLLOUT_DEADLINE);
    // Several turns later (one a second): still said once, and the old sidecar alone serves.
    let turns = dry.logs().matches("observed").count();
    dry.wait_log("observed", turns + 3, LIFECYCLE_DEADLINE);
    assert_eq!(dry.logs().matches("dry run: would roll out").count(), 1);
    let s = sidecars_for(prefix, &id);
    assert!(s.len() == 1 && s[0].id == old.id, "nothing replaced");
}
