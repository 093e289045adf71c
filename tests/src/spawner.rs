//! The `spawner` binary as a host process, scoped to one label prefix: its log kept in a file
//! (printed if the test fails), killed on drop.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::bins::bin_path;
use crate::docker::{images, poll, unique_name, LIFECYCLE_DEADLINE};
use crate::sidecar::log_field;

/// The machine's engine.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// A spawner process scoped to one label prefix; killed on drop, its log printed if the test failed.
pub struct Spawner {
    child: Option<Child>,
    log: PathBuf,
}

impl Spawner {
    /// A spawner on the machine's engine (its images built first).
    pub fn start(prefix: &str, extra: &[&str]) -> Spawner {
        images();
        Spawner::start_on(&format!("unix://{DOCKER_SOCKET}"), prefix, extra)
    }

    /// [`Spawner::start`] with `env` added to the spawner's environment.
    pub fn start_with_env(prefix: &str, extra: &[&str], env: &[(&str, &str)]) -> Spawner {
        images();
        Spawner::launch(&format!("unix://{DOCKER_SOCKET}"), prefix, extra, env)
    }

    /// A spawner on the engine at `docker_host`.
    pub fn start_on(docker_host: &str, prefix: &str, extra: &[&str]) -> Spawner {
        Spawner::launch(docker_host, prefix, extra, &[])
    }

    fn launch(docker_host: &str, prefix: &str, extra: &[&str], env: &[(&str, &str)]) -> Spawner {
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("spawner")));
        let file = File::create(&log).expect("create spawner log file");
        let mut args = vec![
            "run",
            "--docker-host",
            docker_host,
            "--label-prefix",
            prefix,
        ];
        args.extend_from_slice(&["--allow-image", "tls-sidecar/sidecar:*"]);
        args.extend_from_slice(extra);
        let child = Command::new(bin_path("spawner"))
            .args(&args)
            .env("RUST_LOG", "info,spawner=debug")
            .envs(env.iter().copied())
            .env_remove("DOCKER_HOST")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start spawner");
        Spawner {
            child: Some(child),
            log,
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log has an `invalid label` warning naming the container, the label, its
    /// value and the reason.
    pub fn wait_invalid_label(&self, container: &str, label: &str, value: &str, reason: &str) {
        crate::docker::poll(
            crate::docker::LIFECYCLE_DEADLINE,
            &format!("a warning naming {container}, {label} and {value}"),
            || {
                self.logs()
                    .lines()
                    .any(|l| {
                        l.contains("invalid label")
                            && l.contains(container)
                            && l.contains(label)
                            && l.contains(value)
                            && l.contains(reason)
                    })
                    .then_some(())
            },
        );
    }

    /// Waits until the log contains `needle` `times` times.
    pub fn wait_log(&self, needle: &str, times: usize, limit: Duration) -> Duration {
        poll(
            limit,
            &format!("spawner log to show {needle:?} x{times}"),
            || (self.logs().matches(needle).count() >= times).then_some(()),
        )
        .1
    }

    /// The admin listener's address (started with `--admin-listen 127.0.0.1:0`), from its
    /// `admin listening` log line.
    pub fn admin_addr(&self) -> SocketAddr {
        poll(LIFECYCLE_DEADLINE, "the spawner's admin listener", || {
            self.logs()
                .lines()
                .filter(|l| l.contains("admin listening"))
                .find_map(|l| log_field(l, "admin")?.parse().ok())
        })
        .0
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no cleanup of any kind, as a crash or an OOM kill would leave things.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("spawner running");
        child.kill().expect("SIGKILL the spawner");
        child.wait().expect("reap the spawner");
    }

    /// SIGTERM, then the exit status and how long the exit took.
    pub fn terminate(&mut self) -> (ExitStatus, Duration) {
        let child = self.child.as_mut().expect("spawner running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        let (status, took) = poll(LIFECYCLE_DEADLINE, "spawner to exit after SIGTERM", || {
            child.try_wait().expect("wait for spawner")
        });
        self.child = None;
        (status, took)
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- spawner log {} ----\n{}",
                self.log.display(),
                self.logs()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// `spawner status --label-prefix PREFIX EXTRA` on the machine's engine: the table it prints.
/// `extra` are the daemon's flags (`--certs-from` changes which labels are valid).
pub fn status(prefix: &str, extra: &[&str]) -> String {
    let out = Command::new(bin_path("spawner"))
        .args(["status", "--label-prefix", prefix])
        .args(extra)
        .env_remove("DOCKER_HOST")
        .output()
        .expect("run spawner status");
    assert!(
        out.status.success(),
        "spawner status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `spawner status --json --label-prefix PREFIX EXTRA`: the rows it prints, parsed.
pub fn status_json(prefix: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = status(prefix, &args);
    match serde_json::from_str(&out) {
        Ok(serde_json::Value::Array(rows)) => rows,
        other => panic!("spawner status --json printed no JSON array ({other:?}):\n{out}"),
    }
}

/// The row of `target` (its container name) in `rows`.
pub fn row<'a>(rows: &'a [serde_json::Value], target: &str) -> &'a serde_json::Value {
    rows.iter()
        .find(|r| r["target"] == target)
        .unwrap_or_else(|| panic!("no row for {target} in {rows:#?}"))
}

/// `GET http://ADDR/PATH` (curl, 3 s at most): status code and body; `None` when nothing answered.
pub fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "3",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n')?;
    let code: u16 = code.trim().parse().ok()?;
    (code != 0).then(|| (code, body.to_string()))
}
