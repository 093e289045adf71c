//! A FIFO (named pipe) where a certificate, key, CA, CRL or trust file should be, the real
//! binaries: an operator's mistake or a hostile mount must not make a process wait forever for a
//! writer. The sidecar refuses to start (exit 2, one error line naming the flag, the file and
//! "FIFO"); the spawner refuses (exit 1, likewise); a reload that meets one keeps serving the
//! previous certificate, says which file is wrong, and picks up the repaired file afterwards.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use harness::backend::Backend;
use harness::bins::bin_path;
use harness::certdir::{replace_atomic, CertsDir};
use harness::client::{self, Trust, ALPN_H1};
use harness::issuer::{Spec, TestCa};
use harness::sidecar::{run_expect_fail, Sidecar};
use harness::tmp::TempDir;
use harness::wait::{poll_until_async, within};
use spawner::{IdentityCa as Authority, CA_CERT_FILE, CA_KEY_FILE};

/// Exit code of the sidecar for an invalid configuration.
const CONFIG_ERROR: i32 = 2;

/// Exit code of the spawner when it cannot start with a valid configuration.
const RUNTIME_ERROR: i32 = 1;

/// A refused file ends the process at once: the contract for every invalid configuration.
const PROMPTLY: Duration = Duration::from_secs(1);

/// Budget for one spawner run: it reads a file or two (as in `spawner::ca`).
const SPAWNER_RUN: Duration = Duration::from_secs(30);

/// Reloads come from inotify plus a 250 ms debounce; this bounds a hang on a loaded machine.
const RELOAD: Duration = Duration::from_secs(10);

/// The identity trust domain of the sidecar's identity files.
const DOMAIN: &str = "test.internal";

/// A FIFO made with mkfifo(1) at `path`, which must not exist yet.
fn mkfifo(path: &Path) -> PathBuf {
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo {}", path.display());
    path.to_path_buf()
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Valid files for every sidecar flag that names one, and a FIFO to put in any one's place.
struct Files {
    tmp: TempDir,
    fifo: PathBuf,
}

impl Files {
    fn new() -> Files {
        let tmp = TempDir::new("fifo");
        let server = TestCa::new("server CA");
        let leaf = server.issue(&Spec::server(&["localhost"]));
        leaf.write_to(tmp.path(), "server");
        let clients = TestCa::new("client CA");
        tmp.write("clients.pem", clients.pem());
        tmp.write("clients.crl.pem", clients.crl_pem(&[]));
        let identity_ca = TestCa::new("identity CA");
        let me = identity_ca.issue(&Spec::identity(DOMAIN, "a"));
        tmp.write("identity.crt", &me.cert_pem);
        tmp.write("identity.key", &me.key_pem);
        tmp.write("identity-ca.pem", identity_ca.pem());
        let fifo = mkfifo(&tmp.path().join("fifo.pem"));
        Files { tmp, fifo }
    }

    fn file(&self, name: &str) -> String {
        s(&self.tmp.path().join(name))
    }

    fn fifo(&self) -> String {
        s(&self.fifo)
    }
}

/// Runs the sidecar with `args`, expecting exit 2 at once with one `error:` line that names
/// `flag`, `path` and the FIFO.
fn sidecar_refuses(args: &[String], flag: &str, path: &str) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_expect_fail(&args, &[]);
    assert_eq!(
        out.code,
        Some(CONFIG_ERROR),
        "{args:?}: exit code; stderr:\n{}",
        out.stderr
    );
    assert!(
        out.elapsed < PROMPTLY,
        "{args:?}: took {:?} to exit",
        out.elapsed
    );
    let lines = out.lines();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: one line on stderr:\n{}",
        out.stderr
    );
    assert_eq!(
        lines[0],
        format!("error: failed to read {flag} file {path}: is a FIFO, not a regular file"),
        "{args:?}"
    );
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn a_fifo_as_cert_or_key_refuses_to_start() {
    let f = Files::new();
    let (cert, key, fifo) = (f.file("server.crt"), f.file("server.key"), f.fifo());
    sidecar_refuses(&strings(&["--cert", &fifo, "--key", &key]), "--cert", &fifo);
    sidecar_refuses(&strings(&["--cert", &cert, "--key", &fifo]), "--key", &fifo);
}

#[test]
fn a_fifo_as_client_ca_or_crl_refuses_to_start() {
    let f = Files::new();
    let fifo = f.fifo();
    // With a pair, so that no self-signed certificate is generated (and logged) first.
    let pair = [
        "--cert",
        &f.file("server.crt"),
        "--key",
        &f.file("server.key"),
    ]
    .map(String::from);
    let with_pair = |args: &[&str]| [&pair[..], &strings(args)].concat();
    sidecar_refuses(&with_pair(&["--client-ca", &fifo]), "--client-ca", &fifo);
    sidecar_refuses(
        &with_pair(&["--client-ca", &f.file("clients.pem"), "--client-crl", &fifo]),
        "--client-crl",
        &fifo,
    );
}

#[test]
fn a_fifo_as_any_identity_file_refuses_to_start() {
    let f = Files::new();
    let fifo = f.fifo();
    for flag in ["--identity-cert", "--identity-key", "--identity-ca"] {
        let mut args = Vec::new();
        for (each, file) in [
            ("--identity-cert", "identity.crt"),
            ("--identity-key", "identity.key"),
            ("--identity-ca", "identity-ca.pem"),
        ] {
            args.push(each.to_string());
            args.push(if each == flag {
                fifo.clone()
            } else {
                f.file(file)
            });
        }
        args.extend(strings(&["--identity-domain", DOMAIN]));
        sidecar_refuses(&args, flag, &fifo);
    }
}

#[test]
fn a_fifo_in_a_certs_dir_pair_refuses_to_start() {
    let ca = TestCa::new("server CA");
    let site = ca.issue(&Spec::server(&["site.example"]));
    for file in ["fullchain.pem", "privkey.pem"] {
        let dir = CertsDir::new();
        dir.certbot("site.example", &site);
        let path = dir.path().join("live/site.example").join(file);
        std::fs::remove_file(&path).expect("remove the link");
        mkfifo(&path);
        sidecar_refuses(
            &strings(&["--certs-dir", &dir.arg()]),
            "--certs-dir",
            &s(&path),
        );
    }
}

/// `spawner ARGS` with an engine address nothing listens on and no settings from the
/// environment; the spawner must end by itself well within [`SPAWNER_RUN`].
async fn spawner(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(bin_path("spawner"));
    cmd.args(args)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .kill_on_drop(true);
    for (var, _) in std::env::vars() {
        if var.starts_with("SPAWNER_") {
            cmd.env_remove(var);
        }
    }
    within(SPAWNER_RUN, &format!("spawner {args:?}"), cmd.output())
        .await
        .expect("run the spawner")
}

/// The spawner exited 1 with a `spawner:` line naming `what` and `path` as a FIFO.
fn spawner_refused(out: &Output, what: &str, path: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(RUNTIME_ERROR), "stderr:\n{stderr}");
    let want = format!(
        "spawner: {what} {}: is a FIFO, not a regular file",
        path.display()
    );
    assert!(
        stderr.lines().any(|l| l == want),
        "no line {want:?} in:\n{stderr}"
    );
}

#[tokio::test]
async fn a_fifo_as_the_identity_ca_or_trust_is_refused_by_the_spawner() {
    let tmp = TempDir::new("spawner-fifo");
    let store = tmp.path().join("identity");
    Authority::load_or_create(&store, &DOMAIN.parse().expect("domain")).expect("the store's CA");
    let (cert, key) = (s(&store.join(CA_CERT_FILE)), s(&store.join(CA_KEY_FILE)));
    let fifo = mkfifo(&tmp.path().join("fifo.pem"));
    let f = s(&fifo);

    // `ca export` reads the CA's certificate and the extra roots, and needs no engine.
    let out = spawner(&[
        "ca",
        "export",
        "--identity-ca-cert",
        &f,
        "--identity-ca-key",
        &key,
    ])
    .await;
    spawner_refused(&out, "cannot load identity CA", &fifo);
    assert!(out.stdout.is_empty());
    let out = spawner(&[
        "ca",
        "export",
        "--identity-store",
        &s(&store),
        "--identity-trust",
        &f,
    ])
    .await;
    spawner_refused(&out, "cannot use --identity-trust", &fifo);

    // `run` loads the CA's key before it needs the engine.
    let out = spawner(&[
        "run",
        "--identity-domain",
        DOMAIN,
        "--identity-ca-cert",
        &cert,
        "--identity-ca-key",
        &f,
    ])
    .await;
    spawner_refused(&out, "cannot load identity CA", &fifo);
}

#[tokio::test]
async fn a_fifo_as_the_acme_ca_cert_is_refused_by_the_spawner() {
    let tmp = TempDir::new("spawner-acme-fifo");
    let store = tmp.path().join("le");
    std::fs::create_dir_all(&store).expect("the store");
    let fifo = mkfifo(&tmp.path().join("acme-ca.pem"));
    let out = spawner(&[
        "run",
        "--certs-from",
        &s(&store),
        "--acme-email",
        "ops@example.org",
        "--acme-agree-tos",
        "--acme-ca-cert",
        &s(&fifo),
    ])
    .await;
    spawner_refused(&out, "cannot read --acme-ca-cert", &fifo);
}

#[tokio::test]
async fn a_reload_meeting_a_fifo_keeps_serving_and_recovers() {
    let ca = TestCa::new("server CA");
    let old = ca.issue(&Spec::server(&["localhost"]));
    let new = ca.issue(&Spec::server(&["localhost"]));
    let dir = CertsDir::new();
    let (cert, key) = dir.flat("tls", &old);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--cert")
        .arg(s(&cert))
        .arg("--key")
        .arg(s(&key))
        .arg("--reload-interval")
        .arg("1h")
        .start()
        .await;
    let any = client::config(Trust::AnyCert, ALPN_H1);
    let served = || {
        let (addr, any) = (sc.addr(), any.clone());
        async move { client::peer_cert(&client::tls_connect(addr, "localhost", any).await) }
    };
    assert_eq!(served().await, old.der);

    // The certificate replaced by a FIFO, by rename, as a renewal replaces it (inotify sees it).
    let staged = mkfifo(&dir.path().join(".tls.crt.new"));
    std::fs::rename(&staged, &cert).expect("rename the FIFO over the certificate");
    let line = sc
        .wait_log_all(&["certificate reload failed", &s(&cert), "FIFO"], RELOAD)
        .await;
    println!("{line}");
    assert_eq!(
        served().await,
        old.der,
        "the old certificate is still served"
    );

    // The reload task is not stuck on the FIFO: a good renewal is picked up.
    replace_atomic(&key, &new.key_pem);
    replace_atomic(&cert, &new.cert_pem);
    let addr = sc.addr();
    poll_until_async(RELOAD, "the repaired pair to be served", || {
        let any = any.clone();
        let want = new.der.clone();
        async move {
            let tls = client::try_tls_connect(addr, "localhost", any).await.ok()?;
            (client::peer_cert(&tls) == want).then_some(())
        }
    })
    .await;
}
