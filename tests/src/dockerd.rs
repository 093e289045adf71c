//! A Docker engine of the test's own, for tests that restart the engine or turn it into a swarm:
//! its own `--data-root`, `--exec-root`, `--pidfile`, unix socket and `--config-file` under a
//! temporary directory, so the machine's engine is never stopped or reconfigured.
//!
//! It runs in a network namespace of its own (`ip netns`), with `--bridge=none --iptables=false`:
//! whatever networks it makes (a swarm's `docker_gwbridge`, overlays) live and die in that
//! namespace, and it changes no firewall rule and no interface of the machine. Never start it in
//! the machine's namespace: with `--bridge=none` dockerd deletes an existing `docker0`, the
//! machine engine's bridge. Tests reach a
//! container from inside the container's own network namespace ([`PrivateEngine::https_in`],
//! through `nsenter`), as a sidecar's peers in that namespace would. Storage is `vfs`, which needs nothing of the kernel and is
//! fast enough for the few-MiB images built FROM scratch here.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::docker::{build_image_on, unique_name, Images};

/// How long dockerd may take to answer after it was started (it starts in about a second; CI
/// shares two cores with compilers).
const ENGINE_START: Duration = Duration::from_secs(60);
/// How long dockerd may take to exit after SIGTERM (it stops its containers first).
const ENGINE_STOP: Duration = Duration::from_secs(60);

/// Where a swarm node's engine sees its own directory ([`PrivateEngine::start_node`]): the same
/// path on every node, so a global service can bind-mount "this node's socket"
/// (`/run/tls-sidecar-node/docker.sock`) as a real swarm's `/var/run/docker.sock`.
pub const NODE_DIR: &str = "/run/tls-sidecar-node";

/// A private `dockerd`, stopped and its directory removed on drop.
pub struct PrivateEngine {
    dir: PathBuf,
    /// The network namespace dockerd runs in.
    netns: String,
    /// Whether the namespace is this engine's own (deleted with it), or a test bed's.
    owns_netns: bool,
    /// A swarm node's host name: the engine then runs in mount and UTS namespaces of its own,
    /// with its `node/` directory at [`NODE_DIR`] and its socket in it.
    node: Option<String>,
    child: Option<Child>,
}

impl PrivateEngine {
    /// Starts a private engine and waits until it answers.
    pub fn start() -> PrivateEngine {
        let dir = std::env::temp_dir().join(unique_name("tls-sidecar-dockerd"));
        std::fs::create_dir_all(&dir).expect("create the engine's directory");
        // Its own (empty) configuration: the machine's daemon.json (data-root, storage driver)
        // must not apply to it.
        std::fs::write(dir.join("daemon.json"), "{}\n").expect("write daemon.json");
        let netns = unique_name("tsd");
        ip(&["netns", "add", &netns]);
        ip(&["-n", &netns, "link", "set", "lo", "up"]);
        let mut engine = PrivateEngine {
            dir,
            netns,
            owns_netns: true,
            node: None,
            child: None,
        };
        engine.spawn();
        engine
    }

    /// Starts an engine as one node of a multi-node test bed: in the network namespace `netns`
    /// (made and deleted by the bed), with host name `hostname` (what `docker node ls` shows)
    /// in a UTS namespace of its own, and in a mount namespace of its own where its `node/`
    /// directory, holding its socket, is [`NODE_DIR`]. Every node's containers then find their
    /// own node's engine at one path, as on separate machines.
    pub fn start_node(netns: &str, hostname: &str) -> PrivateEngine {
        let dir = std::env::temp_dir().join(unique_name("tls-sidecar-node"));
        std::fs::create_dir_all(dir.join("node")).expect("create the engine's directory");
        std::fs::create_dir_all(NODE_DIR).expect("create the node directory's mount point");
        std::fs::write(dir.join("daemon.json"), "{}\n").expect("write daemon.json");
        let mut engine = PrivateEngine {
            dir,
            netns: netns.to_string(),
            owns_netns: false,
            node: Some(hostname.to_string()),
            child: None,
        };
        engine.spawn();
        engine
    }

    /// The network namespace the engine runs in (`ip netns` name).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .expect("open dockerd.log");
        let err = log.try_clone().expect("clone log handle");
        let d = |name: &str| self.dir.join(name).display().to_string();
        // `nsenter --net`, not `ip netns exec`: the latter also makes a mount namespace with a
        // fresh /sys, where dockerd finds no cgroups.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.netns));
        match &self.node {
            // A node: its own mount and UTS namespaces (private propagation, so nothing it
            // mounts shows on the machine), its host name set and its directory bound at
            // NODE_DIR before dockerd starts in them.
            Some(hostname) => {
                cmd.args([
                    "--",
                    "unshare",
                    "--mount",
                    "--uts",
                    "--propagation",
                    "private",
                ])
                .args(["--", "sh", "-c"])
                .arg(r#"hostname "$1" && mount --bind "$2" "$3" && shift 3 && exec dockerd "$@""#)
                .args(["node-engine", hostname, &d("node"), NODE_DIR]);
            }
            None => {
                cmd.args(["--", "dockerd"]);
            }
        }
        let child = cmd
            .args([
                "--config-file",
                &d("daemon.json"),
                "--data-root",
                &d("data"),
                "--exec-root",
                &d("exec"),
                "--pidfile",
                &d("docker.pid"),
                "--host",
                &self.host(),
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--storage-driver=vfs",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start dockerd (Debian's docker.io)");
        self.child = Some(child);
        let deadline = Instant::now() + ENGINE_START;
        while !self.docker(&["version"]).status.success() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("dockerd exited with {status}: {}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within {ENGINE_START:?}: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The engine's address, for `--docker-host` or `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The engine's socket file (for a node, in the directory it sees at [`NODE_DIR`]).
    pub fn socket(&self) -> PathBuf {
        match self.node {
            Some(_) => self.dir.join("node").join("docker.sock"),
            None => self.dir.join("docker.sock"),
        }
    }

    /// The end of dockerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs `docker --host <this engine> ARGS`.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("--host")
            .arg(self.host())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker: {e}"))
    }

    /// Like [`PrivateEngine::docker`]; panics with stderr on failure, returns trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "`docker {}` on the private engine failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Builds the project's images into this engine, tagged `tag`.
    pub fn build_images(&self, tag: &str) -> Images {
        let images = Images {
            sidecar: format!("tls-sidecar/sidecar:{tag}"),
            spawner: format!("tls-sidecar/spawner:{tag}"),
            demo: format!("tls-sidecar/demo:{tag}"),
        };
        let host = self.host();
        build_image_on(
            Some(&host),
            "sidecar/Dockerfile",
            "sidecar",
            &images.sidecar,
        );
        build_image_on(
            Some(&host),
            "spawner/Dockerfile",
            "spawner",
            &images.spawner,
        );
        build_image_on(Some(&host), "tests/Dockerfile.demo", "demo", &images.demo);
        images
    }

    /// Stops the engine (SIGTERM: it stops its containers, then exits) and waits for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + ENGINE_STOP;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("dockerd did not exit within {ENGINE_STOP:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the engine again on the same directories (after [`PrivateEngine::stop`]); returns
    /// when it answers.
    pub fn start_again(&mut self) -> Instant {
        assert!(self.child.is_none(), "the engine is still running");
        self.spawn();
        Instant::now()
    }

    /// The PID of a running container's first process (0 when it is not running).
    pub fn pid_of(&self, container: &str) -> u32 {
        self.docker_ok(&["inspect", "--format", "{{.State.Pid}}", container])
            .parse()
            .unwrap_or(0)
    }

    /// `GET https://127.0.0.1:8443/` from inside the network namespace of `container` (curl,
    /// certificate not verified): the body, or `None` if nothing answered with TLS.
    pub fn https_in(&self, container: &str) -> Option<String> {
        let pid = self.pid_of(container);
        if pid == 0 {
            return None;
        }
        https_in_netns(pid)
    }

    /// The directory holding the engine's files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `docker stack deploy --resolve-image never -c <repo>/FILE STACK` on this engine (a swarm
    /// manager), with the stack file's variables `vars` in the environment; panics with stderr
    /// on failure.
    pub fn stack_deploy(&self, file: &str, stack: &str, vars: &[(&str, &str)]) {
        let out = Command::new("docker")
            .args(["--host", &self.host()])
            .args(["stack", "deploy", "--resolve-image", "never", "-c"])
            .arg(crate::docker::repo_root().join(file))
            .arg(stack)
            .envs(vars.iter().copied())
            .output()
            .expect("run docker stack deploy");
        assert!(
            out.status.success(),
            "docker stack deploy -c {file} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Running task containers of swarm service `service` on this engine (full IDs).
    pub fn tasks_of(&self, service: &str) -> Vec<String> {
        let out = self.docker_ok(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
        ]);
        out.lines().map(str::to_string).collect()
    }

    /// `cmd` to run in the network namespace of running container `container` (through
    /// `nsenter`); add its arguments. `None` when the container is not running.
    pub fn in_netns_of(&self, container: &str, cmd: &str) -> Option<Command> {
        let pid = self.pid_of(container);
        (pid != 0).then(|| in_netns(pid, cmd))
    }
}

/// `cmd` to run in the network namespace of process `pid`; add its arguments.
pub fn in_netns(pid: u32, cmd: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.args(["--target", &pid.to_string(), "--net", "--", cmd]);
    c
}

/// `GET https://127.0.0.1:8443/` inside the network namespace of process `pid`.
pub fn https_in_netns(pid: u32) -> Option<String> {
    let out = in_netns(pid, "curl")
        .args([
            "-sk",
            "--max-time",
            "3",
            "-o",
            "-",
            "https://127.0.0.1:8443/",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if self.child.is_some() {
            // Leave a swarm first (it would keep restarting tasks), then remove every
            // container, so nothing outlives the engine.
            let _ = self.docker(&["swarm", "leave", "--force"]);
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
            self.stop();
        }
        if self.owns_netns {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.netns])
                .status();
        }
        // A swarm leaves its sandboxes' namespaces bind-mounted under the exec root.
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        for point in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if Path::new(point).starts_with(&self.dir) {
                let _ = Command::new("umount").args(["-l", point]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `ip ARGS` (iproute2); panics with its stderr on failure.
pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip (iproute2): {e}"));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
