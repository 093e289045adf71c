//! The real `sidecar` binary as a child process: started on `127.0.0.1:0`, its bound ports learnt
//! from its startup log lines, its stderr kept for assertions, its resident memory readable,
//! signalled and reaped like an orchestrator would, and killed when the test ends
//! however it ends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bins::bin_path;

/// How long a sidecar may take from spawn to its `listening` line: generating a self-signed
/// certificate and binding are milliseconds, but CI shares its two cores with compilers.
const STARTUP: Duration = Duration::from_secs(20);

/// How long [`run_expect_fail`] waits for a refused configuration to exit (the contract says one
/// second; the test asserts that on the measured time, this only bounds a hang).
const FAIL_WAIT: Duration = Duration::from_secs(5);

/// Environment variables the sidecar reads; cleared so the developer's shell cannot leak into a test.
fn is_sidecar_env(name: &str) -> bool {
    name.starts_with("SIDECAR_")
        || name.starts_with("GOSSLTERM_")
        || name == "RUST_LOG"
        || name == "LOG_LEVEL"
}

/// Options for starting a sidecar; see [`Sidecar::builder`].
#[derive(Debug, Default, Clone)]
pub struct SidecarBuilder {
    args: Vec<String>,
    env: Vec<(String, String)>,
    no_listen_flag: bool,
    admin: bool,
}

impl SidecarBuilder {
    /// `--backend ADDR`.
    pub fn backend(self, addr: SocketAddr) -> Self {
        self.arg("--backend").arg(addr.to_string())
    }

    /// `--mode http|tcp`.
    pub fn mode(self, mode: &str) -> Self {
        self.arg("--mode").arg(mode)
    }

    /// `--cert` and `--key` from a fixture pair.
    pub fn cert(self, pair: &crate::certs::CertPair) -> Self {
        self.arg("--cert")
            .arg(pair.cert.display().to_string())
            .arg("--key")
            .arg(pair.key.display().to_string())
    }

    /// Enables the admin listener on an ephemeral loopback port and waits for it too.
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self.arg("--admin-listen").arg("127.0.0.1:0")
    }

    /// Enables the admin listener on `addr` (a fixed port, e.g. one a take-over hands on) and
    /// waits for it too.
    pub fn admin_on(mut self, addr: SocketAddr) -> Self {
        self.admin = true;
        self.arg("--admin-listen").arg(addr.to_string())
    }

    /// More command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// One more command-line argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// One environment variable for the child.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Leaves out the harness's `--listen 127.0.0.1:0`, for tests that set the listen address
    /// themselves (through an env var or alias); the address must still use port 0.
    pub fn without_listen_flag(mut self) -> Self {
        self.no_listen_flag = true;
        self
    }

    /// Spawns the sidecar and waits until it logs that it is listening (and, with
    /// [`SidecarBuilder::admin`], that the admin listener is up).
    pub async fn start(self) -> Sidecar {
        let mut cmd = Command::new(bin_path("sidecar"));
        if !self.no_listen_flag {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(&self.args);
        clear_sidecar_env(&mut cmd);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn the sidecar binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        drain(child.stderr.take().expect("piped stderr"), logs.clone());
        drain(child.stdout.take().expect("piped stdout"), stdout.clone());
        let mut sidecar = Sidecar {
            child,
            addr: None,
            listen: None,
            admin: None,
            logs,
            stdout,
            args: self.args,
        };

        let deadline = Instant::now() + STARTUP;
        loop {
            let lines = sidecar.logs();
            sidecar.listen = lines
                .iter()
                .filter(|l| l.contains("listening"))
                .find_map(|l| log_field(l, "listen"))
                .and_then(|v| v.parse().ok());
            if self.admin {
                sidecar.admin = lines
                    .iter()
                    .filter(|l| l.contains("listening"))
                    .find_map(|l| log_field(l, "admin"))
                    .and_then(|v| v.parse().ok());
            }
            if sidecar.listen.is_some() && (!self.admin || sidecar.admin.is_some()) {
                break;
            }
            if let Ok(Some(status)) = sidecar.child.try_wait() {
                panic!(
                    "sidecar {:?} exited with {status} before listening; {}",
                    sidecar.args,
                    sidecar.transcript()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "sidecar {:?} did not log its listening line(s) within {STARTUP:?}; {}",
                    sidecar.args,
                    sidecar.transcript()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sidecar.addr = sidecar.listen.map(loopback_for);
        sidecar
    }
}

/// A running sidecar process. Killed (SIGKILL) and reaped on drop.
pub struct Sidecar {
    child: Child,
    addr: Option<SocketAddr>,
    listen: Option<SocketAddr>,
    admin: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
    args: Vec<String>,
}

impl Sidecar {
    /// Options for a sidecar started with `--listen 127.0.0.1:0`.
    pub fn builder() -> SidecarBuilder {
        SidecarBuilder::default()
    }

    /// An http-mode sidecar with a self-signed certificate in front of `backend`.
    pub async fn start(backend: SocketAddr) -> Sidecar {
        Self::builder().backend(backend).start().await
    }

    /// The address to connect to (an unspecified listen address mapped to loopback).
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("sidecar listen address")
    }

    /// The listen address exactly as the sidecar logged it.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.expect("sidecar listen address")
    }

    /// The admin listener's address; panics if the admin listener was not requested.
    pub fn admin_addr(&self) -> SocketAddr {
        let admin = self.admin.expect("start the sidecar with .admin()");
        loopback_for(admin)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (`VmRSS` in `/proc/<pid>/status`), in KiB: what an orchestrator's
    /// memory limit and `docker stats` see.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS line in {path}:\n{status}"))
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// Waits until a stderr line contains every one of `needles`, and returns that line.
    pub async fn wait_log_all(&self, needles: &[&str], limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .logs()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)));
            if let Some(line) = found {
                return line;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no sidecar log line containing all of {needles:?} within {limit:?}; {}",
                    self.transcript()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a stderr line contains `needle`, and returns that line.
    pub async fn wait_log(&self, needle: &str, limit: Duration) -> String {
        self.wait_log_all(&[needle], limit).await
    }

    /// Sends SIGTERM, as `docker stop` does.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGINT, as Ctrl-C does.
    pub fn sigint(&self) {
        self.signal("INT");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {} failed", self.child.id());
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit, panicking with its logs if it has not within `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll sidecar exit") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "sidecar still running {limit:?} after being asked to stop; {}",
                    self.transcript()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stderr and stdout so far, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "stderr:\n{}\nstdout:\n{}",
            self.logs().join("\n"),
            self.stdout.lock().expect("stdout lock").join("\n")
        )
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a sidecar that refused to start ended.
#[derive(Debug)]
pub struct Exited {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Everything it wrote to stderr.
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

impl Exited {
    /// The stderr lines that are not empty.
    pub fn lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect()
    }
}

/// Runs the sidecar with `args` and `env` (plus `--listen 127.0.0.1:0` unless the listen address
/// is given), expecting it to exit on its own; panics if it is still running after a few seconds.
pub fn run_expect_fail(args: &[&str], env: &[(&str, &str)]) -> Exited {
    let mut cmd = Command::new(bin_path("sidecar"));
    let listen_given = args.iter().any(|a| a.starts_with("--listen"))
        || env
            .iter()
            .any(|(k, _)| *k == "SIDECAR_LISTEN" || *k == "GOSSLTERM_FRONTEND_ADDR");
    if !listen_given {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    cmd.args(args);
    clear_sidecar_env(&mut cmd);
    cmd.envs(env.iter().copied());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn the sidecar binary");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let reader = drain(child.stderr.take().expect("piped stderr"), lines.clone());
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll sidecar exit") {
            break status;
        }
        if started.elapsed() > FAIL_WAIT {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            panic!(
                "sidecar {args:?} {env:?} was expected to refuse to start but was still running \
                 after {FAIL_WAIT:?}; stderr:\n{}",
                lines.lock().expect("log lock").join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = started.elapsed();
    let _ = reader.join();
    let stderr = lines.lock().expect("log lock").join("\n");
    Exited {
        code: status.code(),
        stderr,
        elapsed,
    }
}

/// A loopback port nothing listens on now (bound, then released), for addresses a flag cannot
/// take as port 0 (an `--upstream` the app must know in advance).
///
/// Handed out in turn from below the kernel's ephemeral range (32768 and up on Linux): a port
/// the kernel picked for `bind(0)` is the kernel's to pick again, for the next test's listener,
/// an outgoing connection or a port Docker publishes, between the probe and the real bind. Here
/// nothing else draws from the range, and a counter keeps this process from handing a port out
/// twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Another checkout's test process on this machine starts elsewhere in the range.
    let start = std::process::id().wrapping_mul(7919) % COUNT;
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % COUNT) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + COUNT)
}

/// The value of field `name` in a log line, text (`name=value`, `name="value"`) or JSON (a
/// top-level key or one under `fields`).
pub fn log_field(line: &str, name: &str) -> Option<String> {
    let trimmed = line.trim();
    if trimmed.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(trimmed).ok()?;
        let field = v
            .get("fields")
            .and_then(|f| f.get(name))
            .or_else(|| v.get(name))?;
        return Some(match field {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    let key = format!("{name}=");
    let mut rest = line;
    while let Some(pos) = rest.find(&key) {
        let at_boundary = pos == 0 || rest[..pos].ends_with(' ');
        let after = &rest[pos + key.len()..];
        if at_boundary {
            let value = if let Some(quoted) = after.strip_prefix('"') {
                quoted.split('"').next().unwrap_or_default()
            } else {
                after.split_whitespace().next().unwrap_or_default()
            };
            return Some(value.to_string());
        }
        rest = after;
    }
    None
}

fn clear_sidecar_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str() {
            if is_sidecar_env(name) {
                cmd.env_remove(name);
            }
        }
    }
}

/// Where a client connects to reach a listener bound to `addr` (all interfaces -> loopback).
fn loopback_for(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

/// Copies a child's output into `sink` line by line on a thread, so the pipe never fills up.
fn drain(
    pipe: impl std::io::Read + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        use std::io::BufRead;
        let reader = std::io::BufReader::new(pipe);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            sink.lock().expect("log lock").push(text);
        }
    })
}
