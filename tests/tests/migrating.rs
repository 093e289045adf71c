//! Arriving from another tool (`docs/migrating.md`): gosslterm's variables and byfahrer's label do
//! here what they did there, shown the way those projects' READMEs run them, through the real
//! images on the real engine; and the guide's Compose examples are valid Compose files.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::backend::{sha256_fingerprint, Backend};
use harness::certs::{KeyFormat, Pki};
use harness::client::{self, peer_cert, try_tls_connect, HttpConn, Trust, ALPN_H1};
use harness::docker::{
    build_image_on, docker, host_port, images, inspect, logs_of, poll, repo_root, unique_name,
    TestRun, LIFECYCLE_DEADLINE,
};
use harness::dockerd::PrivateEngine;
use harness::sidecar::{log_field, run_expect_fail, Sidecar};
use harness::spawner::Spawner;
use harness::tmp::TempDir;
use harness::wait::{poll_until_async, read_to_close, STEP};
use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Where gosslterm's image keeps its pair (`GOSSLTERM_CERT`, `GOSSLTERM_KEY` in its Dockerfile);
/// the test mounts its own pair there.
const GOSSLTERM_SSL: &str = "/opt/qnib/ssl";

/// The sidecar's configuration-error exit code.
const CONFIG_ERROR: i32 = 2;

/// gosslterm's README: the app publishes the proxy's port, and the proxy joins the app's network
/// namespace configured by gosslterm's variables alone:
/// `docker run --network=container:<app> -e GOSSLTERM_BACKEND_ADDR=127.0.0.1:8080
/// -e GOSSLTERM_FRONTEND_ADDR=:8081 qnib/gosslterm`, then `curl --insecure
/// https://127.0.0.1:8081/pi/100`. Here with the sidecar image, a pair of the test's own
/// (`GOSSLTERM_CERT`, `GOSSLTERM_KEY`) and `LOG_LEVEL=info`.
#[tokio::test]
async fn gosslterm_run_as_its_readme_shows_serves_the_given_pair_at_log_level() {
    let run = TestRun::new();
    let images = images();
    let pki = Pki::new();
    // RSA in PKCS#8, what gosslterm's image made (`openssl req -newkey rsa:2048 -nodes`).
    let pair = pki.leaf(&["localhost"], KeyFormat::RsaPkcs8);
    // Readable by the sidecar's user (65534), as gosslterm's image left its own pair.
    let ssl = TempDir::new("gosslterm-ssl");
    for (from, to) in [(&pair.cert, "cert.pem"), (&pair.key, "key.pem")] {
        let file = ssl.path().join(to);
        std::fs::copy(from, &file).expect("copy the pair into the mounted directory");
        set_mode(&file, 0o644);
    }
    set_mode(ssl.path(), 0o755);

    // The demo app serves 8080 (tests/Dockerfile.demo), as gosslterm's BACKEND default expects.
    let app = run.container(
        &unique_name("app"),
        &images.demo,
        &["-p", "127.0.0.1::8081"],
        &[],
    );
    let network = format!("container:{app}");
    let mount = format!("{}:{GOSSLTERM_SSL}:ro", ssl.path().display());
    let cert = format!("GOSSLTERM_CERT={GOSSLTERM_SSL}/cert.pem");
    let key = format!("GOSSLTERM_KEY={GOSSLTERM_SSL}/key.pem");
    let sidecar = run.container(
        &unique_name("app-gosslterm"),
        &images.sidecar,
        &[
            "--network",
            &network,
            "-v",
            &mount,
            "-e",
            "GOSSLTERM_BACKEND_ADDR=127.0.0.1:8080",
            "-e",
            "GOSSLTERM_FRONTEND_ADDR=:8081",
            "-e",
            &cert,
            "-e",
            &key,
            "-e",
            "LOG_LEVEL=info",
        ],
        &[],
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], host_port(&app, 8081)));

    // Verified against the test CA as `localhost`: the chain and name of the given pair.
    let verified = client::config(Trust::Ca(pki.ca_der()), ALPN_H1);
    let tls = poll_until_async(
        LIFECYCLE_DEADLINE,
        "TLS on the app's published 8081",
        || {
            assert!(
                inspect(&sidecar).is_some_and(|c| c.running),
                "the sidecar exited: {}",
                logs_of(&sidecar)
            );
            let config = verified.clone();
            async move { try_tls_connect(addr, "localhost", config).await.ok() }
        },
    )
    .await;
    assert_eq!(
        peer_cert(&tls),
        pair.cert_der,
        "the certificate served is GOSSLTERM_CERT's"
    );

    let mut conn = HttpConn::over(tls, format!("localhost:{}", addr.port())).await;
    let reply = conn.get("/pi/100").await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.text();
    assert!(
        body.starts_with("GET /pi/100 HTTP/1.1"),
        "answered by the app on GOSSLTERM_BACKEND_ADDR: {body}"
    );
    assert!(body.contains("x-forwarded-proto: https"), "{body}");

    // LOG_LEVEL=info: the info lines, the pair named by its fingerprint, and the access log.
    let fingerprint = sha256_fingerprint(&pair.cert_der);
    let (logs, _) = poll(LIFECYCLE_DEADLINE, "the request's access-log line", || {
        let logs = logs_of(&sidecar);
        logs.lines()
            .any(|l| l.contains(" INFO ") && l.contains("path=/pi/100"))
            .then_some(logs)
    });
    let serving = logs
        .lines()
        .find(|l| l.contains(" INFO ") && l.contains("serving certificate"))
        .unwrap_or_else(|| panic!("no info line naming the certificate:\n{logs}"));
    assert_eq!(
        log_field(serving, "sha256").as_deref(),
        Some(fingerprint.as_str()),
        "{serving}"
    );
    assert_eq!(
        log_field(serving, "origin"),
        Some(format!("{GOSSLTERM_SSL}/cert.pem")),
        "{serving}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains(" INFO ") && l.contains("listening") && l.contains(":8081")),
        "{logs}"
    );
}

/// byfahrer's README: the spawner runs with the Docker socket; the app, serving 8080, is started
/// with `-p 8081:8081 --label org.qnib.byfahrer.proxy-image=qnib/gosslterm` and nothing else, and
/// `curl --insecure https://127.0.0.1:8081/pi/99999` answers through it. Here the label names the
/// sidecar image, which must bring what gosslterm's image did: TLS on 8081 to 127.0.0.1:8080.
///
/// On a private engine: every spawner honours byfahrer's label whatever its prefix, so on the
/// machine's engine every spawner running there (the other tests', a user's demo) would take
/// this target too, or warn about it and count it in their status and metrics. Its published
/// port is on the private engine's loopback, reached from the engine's network namespace.
#[test]
fn byfahrer_label_alone_gives_tls_on_8081_and_removing_the_app_leaves_nothing() {
    let engine = PrivateEngine::start();
    let tag = unique_name("migrating");
    let sidecar_image = format!("tls-sidecar/sidecar:{tag}");
    let demo_image = format!("tls-sidecar/demo:{tag}");
    let host = engine.host();
    build_image_on(Some(&host), "sidecar/Dockerfile", "sidecar", &sidecar_image);
    build_image_on(Some(&host), "tests/Dockerfile.demo", "demo", &demo_image);
    // A network of its own, so the engine can publish ports (it runs without a default bridge).
    let net = unique_name("net");
    engine.docker_ok(&["network", "create", &net]);

    let prefix = unique_name("t");
    let spawner = Spawner::start_on(&host, &prefix, &[]);
    let app = engine.docker_ok(&[
        "run",
        "-d",
        "--name",
        &unique_name("www"),
        "--network",
        &net,
        "-p",
        "127.0.0.1::8081",
        "--label",
        &format!("org.qnib.byfahrer.proxy-image={sidecar_image}"),
        &demo_image,
    ]);
    let port = engine_port(&engine, &app, 8081);

    let sidecar_for = format!("label={prefix}.sidecar-for={app}");
    let (body, took) = poll(
        Duration::from_secs(60),
        "https://127.0.0.1:<published 8081>/pi/99999 through the app",
        || https_on_engine(&engine, port, "/pi/99999"),
    );
    eprintln!("served {took:?} after the app started");
    assert!(
        body.starts_with("GET /pi/99999 HTTP/1.1"),
        "the app answered: {body}\n{}",
        spawner.logs()
    );
    assert!(body.contains("x-forwarded-proto: https"), "{body}");

    let sidecars = ids(&engine, &sidecar_for);
    assert_eq!(sidecars.len(), 1, "one sidecar: {sidecars:?}");
    let env = engine.docker_ok(&["inspect", "--format", "{{json .Config.Env}}", &sidecars[0]]);
    assert!(
        env.contains("\"SIDECAR_LISTEN=0.0.0.0:8081\"")
            && env.contains("\"SIDECAR_BACKEND=127.0.0.1:8080\""),
        "gosslterm's image's addresses: {env}"
    );

    engine.docker_ok(&["rm", "-f", &app]);
    let (_, took) = poll(LIFECYCLE_DEADLINE, "no sidecar left behind", || {
        (ids(&engine, &sidecar_for).is_empty()
            && ids(&engine, &format!("label={prefix}.managed-by")).is_empty())
        .then_some(())
    });
    eprintln!("sidecar gone {took:?} after the app was removed");
    assert_eq!(
        engine.docker_ok(&["ps", "-aq"]),
        "",
        "nothing else on the engine either"
    );
}

/// `LOG_LEVEL` is the level while `RUST_LOG` is unset: at `debug` a refused handshake is logged
/// (it is a debug line); with `RUST_LOG=info` beside it, it is not.
#[tokio::test]
async fn log_level_sets_the_level_and_rust_log_wins() {
    let app = Backend::echo().await;
    let debug = Sidecar::builder()
        .backend(app.addr())
        .env("LOG_LEVEL", "DEBUG")
        .start()
        .await;
    plain_bytes_to(debug.addr()).await;
    debug.wait_log("tls handshake failed", STEP).await;

    let info = Sidecar::builder()
        .backend(app.addr())
        .env("LOG_LEVEL", "debug")
        .env("RUST_LOG", "info")
        .start()
        .await;
    plain_bytes_to(info.addr()).await;
    // A request after the refused handshake has ended: its access-log line comes after
    // anything the handshake logged.
    let mut conn = HttpConn::connect(
        info.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    assert_eq!(conn.get("/after").await.status, StatusCode::OK);
    info.wait_log_all(&["request", "path=/after"], STEP).await;
    assert!(
        !info
            .logs()
            .iter()
            .any(|l| l.contains("DEBUG") || l.contains("tls handshake failed")),
        "RUST_LOG=info decides: {}",
        info.transcript()
    );
}

#[test]
fn a_bad_log_level_or_half_a_gosslterm_pair_is_one_line_and_exit_2() {
    for (env, line) in [
        (
            &[("LOG_LEVEL", "verbose")][..],
            "error: invalid LOG_LEVEL \"verbose\": expected one of trace, debug, info, warn, error",
        ),
        (
            &[("GOSSLTERM_CERT", "/opt/qnib/ssl/cert.pem")][..],
            "error: invalid GOSSLTERM_CERT \"/opt/qnib/ssl/cert.pem\": given without GOSSLTERM_KEY (or --key): both or neither are needed",
        ),
        (
            &[("GOSSLTERM_KEY", "/opt/qnib/ssl/key.pem")][..],
            "error: invalid GOSSLTERM_KEY \"/opt/qnib/ssl/key.pem\": given without GOSSLTERM_CERT (or --cert): both or neither are needed",
        ),
        (
            // A file the pair names is missing: the error names the variable it came by.
            &[("GOSSLTERM_CERT", "/nonexistent/cert.pem"), ("GOSSLTERM_KEY", "/nonexistent/key.pem")][..],
            "error: failed to read GOSSLTERM_CERT file /nonexistent/cert.pem: No such file or directory (os error 2)",
        ),
    ] {
        let out = run_expect_fail(&[], env);
        assert_eq!(out.code, Some(CONFIG_ERROR), "{env:?}: {}", out.stderr);
        assert_eq!(out.lines(), vec![line], "{env:?}");
    }
}

/// Every ```yaml block of the guide (the before/after Compose files) is accepted by `compose
/// config`: Compose v2 (`docker compose`) and v1 (`docker-compose`), whichever are installed.
#[test]
fn the_guides_compose_examples_are_valid_compose_files() {
    let guide = std::fs::read_to_string(repo_root().join("docs/migrating.md"))
        .expect("read docs/migrating.md");
    let blocks = yaml_blocks(&guide);
    assert!(
        blocks.len() >= 4,
        "a before and an after for nginx-proxy and for Traefik: {} blocks",
        blocks.len()
    );
    let mut tools: Vec<Vec<&str>> = Vec::new();
    if docker(&["compose", "version"]).status.success() {
        tools.push(vec!["docker", "compose"]);
    }
    if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        tools.push(vec!["docker-compose"]);
    }
    assert!(
        !tools.is_empty(),
        "neither `docker compose` nor `docker-compose` is installed"
    );
    let dir = TempDir::new("migrating-compose");
    for (n, block) in blocks.iter().enumerate() {
        let file = dir.write(&format!("example{n}.yml"), block);
        for tool in &tools {
            let out = Command::new(tool[0])
                .args(&tool[1..])
                .arg("-f")
                .arg(&file)
                .args(["config", "-q"])
                .current_dir(dir.path())
                .output()
                .expect("run compose");
            assert!(
                out.status.success(),
                "`{} config` refuses example {n} of docs/migrating.md: {}\n{block}",
                tool.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The contents of the guide's fenced ```yaml blocks.
fn yaml_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match current.as_mut() {
            None if line.trim() == "```yaml" => current = Some(String::new()),
            None => {}
            Some(_) if line.trim() == "```" => blocks.extend(current.take()),
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {} {mode:o}: {e}", path.display()));
}

/// Sends a plain-HTTP request to a TLS port and waits until the sidecar closes the connection.
async fn plain_bytes_to(addr: SocketAddr) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write plain HTTP");
    read_to_close(STEP, "the sidecar to close a plain-HTTP connection", tcp).await;
}

/// The host port `container`'s `port/tcp` is published on, on the private engine.
fn engine_port(engine: &PrivateEngine, container: &str, port: u16) -> u16 {
    let out = engine.docker_ok(&["port", container, &format!("{port}/tcp")]);
    out.lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("{container} does not publish {port}/tcp: {out:?}"))
}

/// Container IDs on the private engine matching a `docker ps --filter`.
fn ids(engine: &PrivateEngine, filter: &str) -> Vec<String> {
    engine
        .docker_ok(&["ps", "-aq", "--no-trunc", "--filter", filter])
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// `GET https://127.0.0.1:PORT/PATH` (curl, any certificate, 3 s at most) in the private
/// engine's network namespace, where it publishes ports: the body on a 2xx.
fn https_on_engine(engine: &PrivateEngine, port: u16, path: &str) -> Option<String> {
    let pid = std::fs::read_to_string(engine.dir().join("docker.pid")).ok()?;
    let out = Command::new("nsenter")
        .args(["--target", pid.trim(), "--net", "--"])
        .args(["curl", "-sSfk", "--max-time", "3"])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
