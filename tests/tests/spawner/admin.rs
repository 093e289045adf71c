//! What an operator sees of the spawner, against the real engine: `spawner status --json`, the
//! admin listener (`/healthz`, `/readyz`, `/metrics`), where each target's certificate comes from
//! (a file with its expiry, or self-signed and why) and the warning a fallback gets (once), and
//! the image's binary on the PATH for `docker exec <spawner> spawner status`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use harness::certdir::CertsDir;
use harness::docker::{
    docker, docker_ok, host_port, images, inspect, logs_of, poll, unique_name, TestRun,
    LIFECYCLE_DEADLINE,
};
use harness::issuer::{unix_time, Spec, TestCa};
use harness::metrics::metric;
use harness::spawner::{self, admin_get, row, status_json, Spawner, DOCKER_SOCKET};
use harness::tmp::TempDir;

/// The warning a target whose sidecar falls back to self-signed gets (once per cause).
const FALLBACK_WARNING: &str = "no certificate for this target, its sidecar runs self-signed";

/// A demo container opted in under `prefix` (publishing 8443 on a free loopback port), with
/// `hostname` as its certificate name when given. Returns (name, id).
fn target(run: &TestRun, prefix: &str, hostname: Option<&str>) -> (String, String) {
    let name = unique_name("app");
    let mut args = vec![
        "-p".to_string(),
        "127.0.0.1::8443".to_string(),
        "--label".to_string(),
        format!("{prefix}.proxy-image={}", images().sidecar),
    ];
    if let Some(h) = hostname {
        args.push("--label".into());
        args.push(format!("{prefix}.hostname={h}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = run.container(&name, &images().demo, &args, &[]);
    (name, id)
}

/// Polls `spawner status --json` (with the daemon's `flags`) until the target's row shows one
/// running sidecar; returns that row.
fn wait_row_served(prefix: &str, flags: &[&str], name: &str) -> serde_json::Value {
    poll(
        LIFECYCLE_DEADLINE,
        &format!("status --json to show {name} served"),
        || {
            let rows = status_json(prefix, flags);
            let r = rows.iter().find(|r| r["target"] == name)?;
            let sidecars = r["sidecars"].as_array()?;
            (sidecars.len() == 1 && sidecars[0]["state"] == "running").then(|| r.clone())
        },
    )
    .0
}

/// `/metrics` until `name` satisfies `ok`; returns the whole text.
fn wait_metric(admin: SocketAddr, name: &str, ok: impl Fn(f64) -> bool) -> String {
    poll(LIFECYCLE_DEADLINE, &format!("metric {name}"), || {
        let (code, text) = admin_get(admin, "/metrics")?;
        (code == 200 && ok(metric(&text, name))).then_some(text)
    })
    .0
}

/// The notAfter (`openssl x509 -enddate`) of the certificate served on 127.0.0.1:`port`.
fn served_not_after(port: u16) -> String {
    poll(
        LIFECYCLE_DEADLINE,
        "a TLS handshake through the sidecar",
        || {
            let hello = Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &format!("127.0.0.1:{port}"),
                    "-servername",
                    "localhost",
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run openssl s_client");
            let pem = String::from_utf8_lossy(&hello.stdout).to_string();
            if !pem.contains("BEGIN CERTIFICATE") {
                return None;
            }
            let mut x509 = Command::new("openssl")
                .args(["x509", "-noout", "-enddate"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("run openssl x509");
            use std::io::Write;
            x509.stdin
                .take()
                .expect("stdin")
                .write_all(pem.as_bytes())
                .expect("write to openssl");
            let out = x509.wait_with_output().expect("openssl x509");
            Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
        },
    )
    .0
}

/// certbot's layout for each of `hosts` (a certificate valid until 2031-01-02), readable by the
/// sidecar's user (certbot's own 0600 keys are issue 11's third point, not this test's).
fn certs_for(hosts: &[&str]) -> CertsDir {
    use std::os::unix::fs::PermissionsExt;
    let certs = CertsDir::new();
    let ca = TestCa::new("spawner-admin test CA");
    for host in hosts {
        let issued = ca.issue(&Spec::server(&[host]).valid((2025, 1, 1), (2031, 1, 2)));
        certs.certbot(host, &issued);
    }
    let chmod = |p: &Path, mode| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    chmod(certs.path(), 0o755);
    for host in hosts {
        let key = certs.path().join(format!("archive/{host}/privkey1.pem"));
        chmod(&key, 0o644);
    }
    certs
}

#[test]
fn status_json_admin_endpoints_and_metrics_show_a_served_target() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let spawner = Spawner::start(&prefix, &["--admin-listen", "127.0.0.1:0"]);
    let admin = spawner.admin_addr();
    assert_eq!(
        admin_get(admin, "/healthz").map(|r| r.0),
        Some(200),
        "/healthz answers while the process runs"
    );
    poll(
        LIFECYCLE_DEADLINE,
        "/readyz 200 after the first turn",
        || (admin_get(admin, "/readyz")?.0 == 200).then_some(()),
    );

    let (name, id) = target(&run, &prefix, None);
    let r = wait_row_served(&prefix, &[], &name);
    let sidecar = &r["sidecars"][0];
    assert_eq!(r["target_id"], id.as_str());
    assert_eq!(r["state"], "running");
    assert_eq!(sidecar["name"], format!("{name}-tls-sidecar").as_str());
    let sidecar_id = sidecar["id"].as_str().expect("sidecar id");
    assert!(
        inspect(sidecar_id).is_some_and(|c| c.running),
        "the id is the running sidecar's"
    );
    assert_eq!(r["problem"], serde_json::Value::Null);
    assert_eq!(r["last_failure"], serde_json::Value::Null);
    assert_eq!(r["cert_source"], "self-signed");
    assert_eq!(r["cert_reason"], "no-certs-from");
    assert_eq!(r["cert_detail"], "no --certs-from");
    assert_eq!(r["cert_not_after"], serde_json::Value::Null);
    eprintln!(
        "status --json row:\n{}",
        serde_json::to_string_pretty(&r).unwrap_or_default()
    );
    // A target refused a sidecar shows why, and no certificate.
    let refused = unique_name("miner");
    run.container(
        &refused,
        &images().demo,
        &[
            "--label",
            &format!("{prefix}.proxy-image=evil/miner:latest"),
        ],
        &[],
    );
    let rows = poll(LIFECYCLE_DEADLINE, "the refused target listed", || {
        let rows = status_json(&prefix, &[]);
        rows.iter()
            .any(|r| r["target"] == refused.as_str())
            .then_some(rows)
    })
    .0;
    let m = row(&rows, &refused);
    assert_eq!(
        m["problem"],
        "image evil/miner:latest is not in the allow-list"
    );
    assert_eq!(m["sidecars"], serde_json::json!([]));
    assert_eq!(m["cert_source"], serde_json::Value::Null);
    let table = spawner::status(&prefix, &[]);
    eprintln!("status:\n{table}");
    let line = table
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} in status:\n{table}"));
    assert!(line.contains("self-signed: no --certs-from"), "{line}");

    let text = wait_metric(admin, "spawner_targets{state=\"refused\"}", |v| v == 1.0);
    let text = if metric(&text, "spawner_targets{state=\"served\"}") == 1.0 {
        text
    } else {
        wait_metric(admin, "spawner_targets{state=\"served\"}", |v| v == 1.0)
    };
    assert!(
        metric(
            &text,
            "spawner_actions_total{kind=\"create\",result=\"ok\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &text,
            "spawner_event_to_action_seconds_count{kind=\"create\"}"
        ) >= 1.0,
        "the create was timed from its event:\n{text}"
    );
    assert_eq!(metric(&text, "spawner_sidecars{state=\"running\"}"), 1.0);
    assert!(metric(&text, "spawner_reconcile_turns_total{result=\"ok\"}") >= 1.0);
    assert_eq!(metric(&text, "spawner_ready"), 1.0);
    assert_eq!(
        metric(
            &text,
            &format!("spawner_certificate_source{{target=\"{name}\",source=\"self-signed\"}}")
        ),
        1.0
    );
    assert!(
        !text.contains(&format!("target=\"{refused}\"")),
        "no certificate series for a refused target:\n{text}"
    );
    eprintln!(
        "metrics:\n{}",
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    docker_ok(&["rm", "-f", &id]);
    let text = wait_metric(
        admin,
        "spawner_actions_total{kind=\"remove\",result=\"ok\"}",
        |v| v >= 1.0,
    );
    let text = if metric(&text, "spawner_targets{state=\"served\"}") == 0.0 {
        text
    } else {
        wait_metric(admin, "spawner_targets{state=\"served\"}", |v| v == 0.0)
    };
    assert!(
        !text.contains(&format!("target=\"{name}\"")),
        "a removed target leaves no certificate series:\n{text}"
    );
}

#[test]
fn readyz_is_503_until_a_turn_finished_and_while_the_engine_is_unreachable() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    images();
    // The socket path exists only once the test links it to the engine's.
    let dir = TempDir::new("spawner-socket");
    let socket = dir.path().join("docker.sock");
    let host = format!("unix://{}", socket.display());
    let spawner = Spawner::start_on(&host, &prefix, &["--admin-listen", "127.0.0.1:0"]);
    let admin = spawner.admin_addr();
    spawner.wait_log("reconcile failed", 1, LIFECYCLE_DEADLINE);
    assert_eq!(admin_get(admin, "/healthz").map(|r| r.0), Some(200));
    let (code, body) = admin_get(admin, "/readyz").expect("/readyz answers");
    assert_eq!(code, 503, "not ready before a turn finished: {body}");
    assert!(body.contains("unreachable"), "{body}");
    let text = admin_get(admin, "/metrics").expect("/metrics").1;
    assert!(
        metric(&text, "spawner_engine_errors_total{cause=\"connect\"}") >= 1.0,
        "{text}"
    );
    assert!(metric(&text, "spawner_reconcile_turns_total{result=\"error\"}") >= 1.0);
    assert_eq!(metric(&text, "spawner_ready"), 0.0);

    std::os::unix::fs::symlink(DOCKER_SOCKET, &socket).expect("link the engine's socket");
    let (_, took) = poll(
        LIFECYCLE_DEADLINE,
        "/readyz 200 once the engine answers",
        || (admin_get(admin, "/readyz")?.0 == 200).then_some(()),
    );
    eprintln!("ready {took:?} after the engine's socket appeared");
}

#[test]
fn certificate_source_is_a_file_with_its_expiry_or_self_signed_and_why() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let certs = certs_for(&["good.test"]);
    let dir = certs.arg();
    let flags = ["--certs-from", dir.as_str()];
    let spawner = Spawner::start(
        &prefix,
        &["--certs-from", &dir, "--admin-listen", "127.0.0.1:0"],
    );
    let (good, good_id) = target(&run, &prefix, Some("good.test"));
    let (missing, _) = target(&run, &prefix, Some("missing.test"));
    let good_row = wait_row_served(&prefix, &flags, &good);
    let missing_row = wait_row_served(&prefix, &flags, &missing);

    let not_after = unix_time(2031, 1, 2);
    assert_eq!(good_row["cert_source"], "file");
    assert_eq!(good_row["cert_reason"], serde_json::Value::Null);
    assert_eq!(good_row["cert_not_after"], not_after);
    assert_eq!(
        good_row["cert_detail"],
        format!("{dir}/live/good.test/fullchain.pem").as_str()
    );
    assert_eq!(missing_row["cert_source"], "self-signed");
    assert_eq!(missing_row["cert_reason"], "certificate-missing");
    assert_eq!(missing_row["cert_detail"], "live/missing.test/ missing");
    assert_eq!(
        served_not_after(host_port(&good_id, 8443)),
        "notAfter=Jan  2 00:00:00 2031 GMT",
        "the file status names is the certificate served"
    );

    let table = spawner::status(&prefix, &flags);
    eprintln!("status:\n{table}");
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in status:\n{table}"))
            .to_string()
    };
    assert!(
        line(&good).contains("file, expires 2031-01-02T00:00:00Z"),
        "{}",
        line(&good)
    );
    assert!(
        line(&missing).contains("self-signed: live/missing.test/ missing"),
        "{}",
        line(&missing)
    );

    let admin = spawner.admin_addr();
    let gauge = format!("spawner_certificate_not_after_seconds{{target=\"{good}\"}}");
    let text = wait_metric(admin, &gauge, |v| v == not_after as f64);
    assert_eq!(
        metric(
            &text,
            &format!("spawner_certificate_source{{target=\"{missing}\",source=\"self-signed\"}}")
        ),
        1.0
    );
    assert!(
        !text.contains(&format!(
            "spawner_certificate_not_after_seconds{{target=\"{missing}\"}}"
        )),
        "no expiry for a self-signed target"
    );
    let logs = spawner.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(FALLBACK_WARNING))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "only the fallback is warned about:\n{logs}"
    );
    assert!(
        warnings[0].contains(&missing) && warnings[0].contains("live/missing.test/ missing"),
        "{}",
        warnings[0]
    );
}

#[test]
fn a_fallback_is_warned_once_per_target_across_recreations_and_resyncs() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let certs = certs_for(&[]);
    let dir = certs.arg();
    let spawner = Spawner::start(&prefix, &["--certs-from", &dir, "--resync-interval", "1s"]);
    let (first, first_id) = target(&run, &prefix, Some("absent.test"));
    let (second, _) = target(&run, &prefix, Some("absent.test"));
    let flags = ["--certs-from", dir.as_str()];
    wait_row_served(&prefix, &flags, &first);
    wait_row_served(&prefix, &flags, &second);
    // Recreations: the sidecar killed three times, then the target restarted.
    for _ in 0..3 {
        let r = wait_row_served(&prefix, &flags, &first);
        let sidecar = r["sidecars"][0]["id"].as_str().expect("id").to_string();
        docker_ok(&["kill", &sidecar]);
        poll(LIFECYCLE_DEADLINE, "a new sidecar", || {
            let r = status_json(&prefix, &flags);
            let s = &row(&r, &first)["sidecars"];
            (s.as_array()?.len() == 1
                && s[0]["id"] != sidecar.as_str()
                && s[0]["state"] == "running")
                .then_some(())
        });
    }
    docker_ok(&["restart", "-t", "1", &first_id]);
    // Two first sidecars, three replacements, one for the restarted target.
    spawner.wait_log("sidecar started", 6, LIFECYCLE_DEADLINE);
    // Resyncs (every second) re-read everything; they must not repeat the warning either.
    let turns = spawner.logs().matches("observed").count();
    spawner.wait_log("observed", turns + 4, LIFECYCLE_DEADLINE);
    wait_row_served(&prefix, &flags, &first);

    let logs = spawner.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(FALLBACK_WARNING))
        .collect();
    eprintln!(
        "{} sidecars started, {} turns, {} warnings:\n{}",
        logs.matches("sidecar started").count(),
        logs.matches("observed").count(),
        warnings.len(),
        warnings.join("\n")
    );
    for name in [&first, &second] {
        assert_eq!(
            warnings
                .iter()
                .filter(|l| l.contains(name.as_str()))
                .count(),
            1,
            "one warning for {name}:\n{logs}"
        );
    }
    assert_eq!(warnings.len(), 2);
    assert!(
        warnings[0].contains("live/absent.test/ missing"),
        "{}",
        warnings[0]
    );
}

#[test]
fn a_spawner_container_without_the_certs_mount_says_so_and_docker_exec_status_works() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    // The host has the certificate; the spawner's container is not given the directory.
    let certs = certs_for(&["hidden.test"]);
    let dir = certs.arg();
    let spawner = unique_name("spawner");
    run.container(
        &spawner,
        &images().spawner,
        &[
            "-v",
            &format!("{DOCKER_SOCKET}:/var/run/docker.sock"),
            "-e",
            &format!("SPAWNER_LABEL_PREFIX={prefix}"),
            "-e",
            &format!("SPAWNER_CERTS_FROM={dir}"),
            "-e",
            "SPAWNER_ALLOW_IMAGES=tls-sidecar/sidecar:*",
        ],
        &[],
    );
    let (name, _) = target(&run, &prefix, Some("hidden.test"));
    let exec_status = |json: bool| {
        let mut args = vec!["exec", spawner.as_str(), "spawner", "status"];
        if json {
            args.push("--json");
        }
        let out = docker(&args);
        assert!(
            out.status.success(),
            "docker exec {spawner} spawner status: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let rows = poll(LIFECYCLE_DEADLINE, "the target served", || {
        let rows: Vec<serde_json::Value> = serde_json::from_str(&exec_status(true)).ok()?;
        let r = rows.iter().find(|r| r["target"] == name.as_str())?;
        (r["sidecars"][0]["state"] == "running").then(|| rows.clone())
    })
    .0;
    let r = row(&rows, &name);
    assert_eq!(r["cert_source"], "self-signed");
    assert_eq!(r["cert_reason"], "certs-dir-not-visible");
    let table = exec_status(false);
    eprintln!("docker exec {spawner} spawner status:\n{table}");
    assert!(
        table.contains("self-signed: certs dir not visible to the spawner"),
        "{table}"
    );
    // The host sees the file, yet the sidecar was made self-signed: status shows what was given.
    let host = spawner::status_json(&prefix, &["--certs-from", &dir]);
    assert_eq!(row(&host, &name)["cert_reason"], "certs-dir-not-visible");

    let logs = poll(LIFECYCLE_DEADLINE, "the fallback warning", || {
        let logs = logs_of(&spawner);
        logs.contains(FALLBACK_WARNING).then_some(logs)
    })
    .0;
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains(FALLBACK_WARNING))
        .collect();
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(
        warnings[0].contains("certs dir not visible to the spawner")
            && warnings[0].contains("needs the store mounted into it"),
        "the warning says why and what to do: {}",
        warnings[0]
    );
}
