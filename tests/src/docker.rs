//! Helpers for tests against the real Docker engine, through the `docker` CLI a user would use:
//! the project's images built once per test process, unique names, a drop guard that removes
//! everything a test made (also when it fails), and small readers of container state.
//!
//! A test that needs Docker fails loudly when the engine does not answer; it never skips.
//!
//! ```no_run
//! use harness::docker::{images, unique_name, host_port, TestRun};
//! let run = TestRun::new();
//! let app = run.container(&unique_name("app"), &images().demo, &["-p", "127.0.0.1::8443"], &[]);
//! run.container(&unique_name("tls"), &images().sidecar, &["--network", &format!("container:{app}")], &[]);
//! let port = host_port(&app, 8443);
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::bins::bin_path;

/// Label on every container and volume a test creates: `tls-sidecar-test.run=<run id>`. Outside
/// the `tls-sidecar.` namespace on purpose: a test container carries no label of the default
/// prefix, so a spawner a user runs on this engine (the demo's) never takes it for one of its own.
pub const TEST_RUN_LABEL: &str = "tls-sidecar-test.run";

/// Deadline for a lifecycle expectation (a sidecar appearing or going away). The spec says 2 s;
/// CI shares two cores with compilers, so tests allow more and log what they observed.
pub const LIFECYCLE_DEADLINE: Duration = Duration::from_secs(10);

/// Tags of the project's images built for this test process.
#[derive(Debug, Clone)]
pub struct Images {
    pub sidecar: String,
    pub spawner: String,
    pub demo: String,
}

/// The repository root (the Docker build context).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Runs `docker` with `args`; panics (naming the command) if it cannot be started at all.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `docker {}`: {e} (is the docker CLI installed?)",
                args.join(" ")
            )
        })
}

/// stdout and stderr of `docker logs CONTAINER` (the sidecar logs to stderr).
pub fn logs_of(container: &str) -> String {
    let out = docker(&["logs", container]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `docker` and returns its trimmed stdout; panics with stderr on failure.
pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "`docker {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn build_image(dockerfile: &str, bin: &str, tag: &str) {
    build_image_on(None, dockerfile, bin, tag);
}

/// Builds `tag` from `dockerfile` and the debug binary `bin` on the engine at `host` (the
/// default engine when `None`).
pub fn build_image_on(host: Option<&str>, dockerfile: &str, bin: &str, tag: &str) {
    let root = repo_root();
    let path = bin_path(bin);
    let rel = path.strip_prefix(&root).unwrap_or_else(|_| {
        panic!(
            "{} is outside the build context {}",
            path.display(),
            root.display()
        )
    });
    let rel = rel.to_str().expect("utf-8 binary path");
    let docker_on = || {
        let mut cmd = Command::new("docker");
        if let Some(host) = host {
            cmd.args(["--host", host]);
        }
        cmd
    };
    let image_id = || {
        docker_on()
            .args(["image", "inspect", "--format", "{{.Id}}", tag])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let before = image_id();
    let out = docker_on()
        .current_dir(&root)
        .args([
            "build",
            "-q",
            "-f",
            dockerfile,
            "--build-arg",
            &format!("BIN={rel}"),
            "-t",
            tag,
            ".",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker build: {e}"));
    assert!(
        out.status.success(),
        "docker build of {tag} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    // The image this tag named before (an older binary) is now untagged: remove it, so test runs
    // leave only the tagged images behind (`make clean-images` removes those). The engine keeps
    // it while a container uses it or another tag names it, and says so; that is fine.
    if let Some(old) = before.filter(|old| image_id().as_ref() != Some(old)) {
        let _ = docker_on().args(["image", "rm", &old]).output();
    }
}

/// Builds `tls-sidecar/{sidecar,spawner,demo}:test` (or `:$TLS_SIDECAR_TEST_TAG`) from the debug
/// binaries, once per test process (later callers wait for the first). Panics if the engine does not answer.
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let out = docker(&["version", "--format", "{{.Server.Version}}"]);
        assert!(
            out.status.success(),
            "the Docker engine does not answer (these tests need one): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // Another checkout testing on the same engine at the same time sets its own tag.
        let tag = std::env::var("TLS_SIDECAR_TEST_TAG").unwrap_or_else(|_| "test".to_string());
        let images = Images {
            sidecar: format!("tls-sidecar/sidecar:{tag}"),
            spawner: format!("tls-sidecar/spawner:{tag}"),
            demo: format!("tls-sidecar/demo:{tag}"),
        };
        build_image("sidecar/Dockerfile", "sidecar", &images.sidecar);
        build_image("spawner/Dockerfile", "spawner", &images.spawner);
        build_image("tests/Dockerfile.demo", "demo", &images.demo);
        images
    })
}

/// A name no other test (or test process) uses: `<prefix>-<pid>-<n>-<time>`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        % 100_000;
    format!("{prefix}-{}-{n}-{t}", std::process::id())
}

/// What one test made on the engine. Dropping it force-removes every container, volume and
/// network carrying its run label, and every sidecar a spawner made under one of its label prefixes.
pub struct TestRun {
    pub id: String,
    prefixes: Mutex<Vec<String>>,
}

impl Default for TestRun {
    fn default() -> Self {
        Self::new()
    }
}

impl TestRun {
    pub fn new() -> TestRun {
        TestRun {
            id: unique_name("run"),
            prefixes: Mutex::new(Vec::new()),
        }
    }

    /// `--label` value marking resources of this run.
    pub fn label(&self) -> String {
        format!("{TEST_RUN_LABEL}={}", self.id)
    }

    /// A fresh spawner label prefix, so this test's spawner sees only this test's targets. The
    /// guard removes the sidecars made under it.
    pub fn label_prefix(&self) -> String {
        let p = unique_name("t");
        self.prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p.clone());
        p
    }

    /// `docker run -d --name NAME --label <run> ARGS IMAGE CMD`; returns the full container ID.
    pub fn container(&self, name: &str, image: &str, args: &[&str], cmd: &[&str]) -> String {
        let label = self.label();
        let mut all = vec!["run", "-d", "--name", name, "--label", &label];
        all.extend_from_slice(args);
        all.push(image);
        all.extend_from_slice(cmd);
        docker_ok(&all)
    }

    /// `docker create` with the run label (for tests that start it later); returns the ID.
    pub fn create(&self, name: &str, image: &str, args: &[&str]) -> String {
        let label = self.label();
        let mut all = vec!["create", "--name", name, "--label", &label];
        all.extend_from_slice(args);
        all.push(image);
        docker_ok(&all)
    }

    /// A named volume with the run label.
    pub fn volume(&self, name: &str) -> String {
        docker_ok(&["volume", "create", "--label", &self.label(), name])
    }

    /// A user-defined bridge network with the run label (removed after the containers).
    pub fn network(&self, name: &str) -> String {
        docker_ok(&["network", "create", "--label", &self.label(), name])
    }
}

impl Drop for TestRun {
    fn drop(&mut self) {
        let mut filters = vec![format!("label={}", self.label())];
        for p in self
            .prefixes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            filters.push(format!("label={p}.managed-by"));
        }
        for f in &filters {
            let ids = docker(&["ps", "-aq", "--no-trunc", "--filter", f]);
            let ids = String::from_utf8_lossy(&ids.stdout).to_string();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids);
                let _ = docker(&args);
            }
        }
        let vols = docker(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label={}", self.label()),
        ]);
        for v in String::from_utf8_lossy(&vols.stdout).split_whitespace() {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        let nets = docker(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("label={}", self.label()),
        ]);
        for n in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
            let _ = docker(&["network", "rm", n]);
        }
    }
}

/// The host port a container's `port/tcp` is published on (published as `127.0.0.1::PORT`).
pub fn host_port(container: &str, port: u16) -> u16 {
    let out = docker_ok(&["port", container, &format!("{port}/tcp")]);
    let first = out
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .or_else(|| out.lines().next())
        .unwrap_or("");
    first
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("container {container} does not publish {port}/tcp: {out:?}"))
}

/// One container as `docker inspect` shows it.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub started_at: String,
    pub network_mode: String,
    pub raw: serde_json::Value,
}

impl Container {
    /// The environment as `docker inspect` shows it (`NAME=value`).
    pub fn env(&self) -> Vec<String> {
        self.raw["Config"]["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Panics unless every `NAME=value` of `want` is in the environment.
    pub fn assert_env(&self, want: &[&str]) {
        let env = self.env();
        for w in want {
            assert!(
                env.iter().any(|e| e == w),
                "{w} missing from {} env {env:?}",
                self.name
            );
        }
    }

    /// A label value, if set.
    pub fn label(&self, key: &str) -> Option<String> {
        self.raw["Config"]["Labels"][key].as_str().map(String::from)
    }
}

/// Inspects a container; `None` when it does not exist.
pub fn inspect(container: &str) -> Option<Container> {
    let out = docker(&["inspect", "--type", "container", container]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("docker inspect prints JSON");
    let c = v.get(0)?.clone();
    Some(Container {
        id: c["Id"].as_str().unwrap_or_default().to_string(),
        name: c["Name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_string(),
        running: c["State"]["Running"].as_bool().unwrap_or(false),
        started_at: c["State"]["StartedAt"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        network_mode: c["HostConfig"]["NetworkMode"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        raw: c,
    })
}

/// Every container (running or not) carrying `label` (`key` or `key=value`), inspected.
pub fn containers_with_label(label: &str) -> Vec<Container> {
    let ids = docker_ok(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={label}"),
    ]);
    ids.split_whitespace().filter_map(inspect).collect()
}

/// The sidecars (running or not) a spawner under label prefix `prefix` made for target
/// `target_id` (its full ID).
pub fn sidecars_for(prefix: &str, target_id: &str) -> Vec<Container> {
    containers_with_label(&format!("{prefix}.sidecar-for={target_id}"))
}

/// Waits (up to [`LIFECYCLE_DEADLINE`]) for exactly one running sidecar of the target, in the
/// target's network namespace; returns it.
pub fn wait_sidecar(prefix: &str, target_id: &str) -> Container {
    poll(
        LIFECYCLE_DEADLINE,
        "exactly one running sidecar in the target's namespace",
        || match sidecars_for(prefix, target_id).as_slice() {
            [one] if one.running && one.network_mode == format!("container:{target_id}") => {
                Some(one.clone())
            }
            _ => None,
        },
    )
    .0
}

/// Re-evaluates `check` every 50 ms until it returns `Some` or `limit` passes (then panics naming
/// `what`). Returns the value and how long it took, so tests can log observed latencies.
pub fn poll<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "gave up after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until a container is gone or not running.
pub fn wait_not_running(container: &str) -> Duration {
    poll(
        LIFECYCLE_DEADLINE,
        &format!("container {container} to stop"),
        || inspect(container).is_none_or(|c| !c.running).then_some(()),
    )
    .1
}

/// `GET https://127.0.0.1:PORT/` with curl (any certificate accepted); the body on a 2xx.
pub fn https_get(port: u16) -> Option<String> {
    curl_https(port, "-sSfk")
}

/// [`https_get`] with the response head before the body (`curl -i`).
pub fn https_get_with_head(port: u16) -> Option<String> {
    curl_https(port, "-sSfki")
}

/// curl with `flags` on `https://127.0.0.1:PORT/`, 3 s at most: stdout when curl succeeds.
fn curl_https(port: u16, flags: &str) -> Option<String> {
    let out = Command::new("curl")
        .args([
            flags,
            "--max-time",
            "3",
            &format!("https://127.0.0.1:{port}/"),
        ])
        .output()
        .expect("run curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}
