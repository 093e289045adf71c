//! Sidecar configuration: every invalid input exits at once with its code and one `error:` line
//! naming the flag or file; env vars and the gosslterm aliases configure the same things as flags.

use std::time::Duration;

use harness::backend::{Backend, TcpBackend};
use harness::certs::{KeyFormat, Pki};
use harness::client::{self, HttpConn, Trust, ALPN_H2_H1};
use harness::sidecar::{run_expect_fail, Exited, Sidecar};
use harness::wait::{within, STEP};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The contract: a refused configuration ends the process within a second.
const PROMPTLY: Duration = Duration::from_secs(1);

/// Exit code for an invalid configuration.
const CONFIG_ERROR: i32 = 2;

/// Exit code for a failure at startup with a valid configuration (e.g. port in use).
const RUNTIME_ERROR: i32 = 1;

/// Runs the sidecar expecting exit `code` with exactly one stderr line, `error: ...`, containing
/// every one of `mentions`. Returns that line.
fn refused(args: &[&str], env: &[(&str, &str)], code: i32, mentions: &[&str]) -> String {
    let out = run_expect_fail(args, env);
    assert_one_error_line(&out, args, env, code);
    let line = out.lines()[0].to_string();
    for m in mentions {
        assert!(
            line.contains(m),
            "{args:?} {env:?}: error line should name {m:?}: {line}"
        );
    }
    line
}

fn assert_one_error_line(out: &Exited, args: &[&str], env: &[(&str, &str)], code: i32) {
    assert_eq!(
        out.code,
        Some(code),
        "{args:?} {env:?}: exit code; stderr:\n{}",
        out.stderr
    );
    assert!(
        out.elapsed < PROMPTLY,
        "{args:?} {env:?}: took {:?} to exit",
        out.elapsed
    );
    let lines = out.lines();
    assert_eq!(
        lines.len(),
        1,
        "{args:?} {env:?}: exactly one line on stderr, got:\n{}",
        out.stderr
    );
    assert!(
        lines[0].starts_with("error: "),
        "{args:?} {env:?}: {}",
        lines[0]
    );
}

fn s(path: &std::path::Path) -> String {
    path.display().to_string()
}

#[test]
fn missing_cert_file_is_a_config_error() {
    let pki = Pki::new();
    let pair = pki.leaf(&["localhost"], KeyFormat::EcPkcs8);
    let missing = s(&pki.dir().join("nope/cert.pem"));
    refused(
        &["--cert", &missing, "--key", &s(&pair.key)],
        &[],
        CONFIG_ERROR,
        &[&missing],
    );
}

#[test]
fn missing_key_file_is_a_config_error() {
    let pki = Pki::new();
    let pair = pki.leaf(&["localhost"], KeyFormat::EcPkcs8);
    let missing = s(&pki.dir().join("nope/key.pem"));
    refused(
        &["--cert", &s(&pair.cert), "--key", &missing],
        &[],
        CONFIG_ERROR,
        &[&missing],
    );
}

#[test]
fn unreadable_cert_is_a_config_error() {
    // Tests may run as root, which reads any mode-000 file; a directory is unreadable as a file
    // for everyone.
    let pki = Pki::new();
    let pair = pki.leaf(&["localhost"], KeyFormat::EcPkcs8);
    let dir = s(pki.dir());
    refused(
        &["--cert", &dir, "--key", &s(&pair.key)],
        &[],
        CONFIG_ERROR,
        &[&dir],
    );
}

#[test]
fn malformed_cert_pem_is_a_config_error() {
    let pki = Pki::new();
    let pair = pki.leaf(&["localhost"], KeyFormat::EcPkcs8);
    for (name, contents) in [
        ("garbage.pem", "this is not a certificate\n".to_string()),
        (
            "truncated.pem",
            "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n".to_string(),
        ),
        (
            "key-instead.pem",
            std::fs::read_to_string(&pair.key).expect("key"),
        ),
    ] {
        let bad = s(&pki.write(name, contents));
        refused(
            &["--cert", &bad, "--key", &s(&pair.key)],
            &[],
            CONFIG_ERROR,
            &[&bad],
        );
    }
}

#[test]
fn malformed_key_pem_is_a_config_error() {
    let pki = Pki::new();
    let pair = pki.leaf(&["localhost"], KeyFormat::EcPkcs8);
    for (name, contents) in [
        ("garbage.key", "not a key\n".to_string()),
        (
            "cert-instead.key",
            std::fs::read_to_string(&pair.cert).expect("cert"),
        ),
    ] {
        let bad = s(&pki.write(name, contents));
        refused(
            &["--cert", &s(&pair.cert), "--key", &bad],
            &[],
            CONFIG_ERROR,
            &[&bad],
        );
    }
}

#[test]
fn key_not_matching_cert_is_a_config_error() {
    let pki = Pki::new();
    let pair = pki.mismatched_pair();
    let (cert, key) = (s(&pair.cert), s(&pair.key));
    let line = refused(&["--cert", &cert, "--key", &key], &[], CONFIG_ERROR, &[]);
    assert!(
        line.contains(&key) || line.contains(&cert),
        "the error should name the files that do not match: {line}"
    );
    assert!(
        line.to_lowercase().contains("match"),
        "say what is wrong: {line}"
    );
}

#[test]
fn only_cert_without_key_is_a_config_error() {
    let pki = Pki::new();
    let pair = pki.leaf(&["localhost"], KeyFormat::EcPkcs8);
    refused(&["--cert", &s(&pair.cert)], &[], CONFIG_ERROR, &["--key"]);
    refused(&["--key", &s(&pair.key)], &[], CONFIG_ERROR, &["--cert"]);
    refused(
        &[],
        &[("SIDECAR_CERT", &s(&pair.cert))],
        CONFIG_ERROR,
        &["key"],
    );
}

#[test]
fn unparsable_addresses_are_config_errors() {
    refused(
        &["--listen", "not-an-address"],
        &[],
        CONFIG_ERROR,
        &["--listen"],
    );
    refused(
        &["--listen", "127.0.0.1:99999"],
        &[],
        CONFIG_ERROR,
        &["--listen"],
    );
    refused(&["--backend", "nowhere"], &[], CONFIG_ERROR, &["--backend"]);
    refused(
        &["--admin-listen", "admin:port"],
        &[],
        CONFIG_ERROR,
        &["--admin-listen"],
    );
    refused(
        &[],
        &[("SIDECAR_BACKEND", "bad address")],
        CONFIG_ERROR,
        &["backend"],
    );
}

#[test]
fn unparsable_durations_are_config_errors() {
    for flag in [
        "--handshake-timeout",
        "--idle-timeout",
        "--shutdown-grace",
        "--connect-timeout",
        "--backend-timeout",
        "--header-read-timeout",
    ] {
        refused(&[flag, "10 parsecs"], &[], CONFIG_ERROR, &[flag]);
    }
    refused(
        &[],
        &[("SIDECAR_IDLE_TIMEOUT", "soon")],
        CONFIG_ERROR,
        &["idle-timeout"],
    );
}

#[test]
fn invalid_enum_and_number_values_are_config_errors() {
    refused(&["--mode", "udp"], &[], CONFIG_ERROR, &["--mode"]);
    refused(
        &["--log-format", "xml"],
        &[],
        CONFIG_ERROR,
        &["--log-format"],
    );
    refused(
        &["--max-connections", "lots"],
        &[],
        CONFIG_ERROR,
        &["--max-connections"],
    );
    refused(&[], &[("SIDECAR_MODE", "quic")], CONFIG_ERROR, &["mode"]);
}

#[test]
fn listen_port_in_use_is_a_runtime_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run_expect_fail(&["--listen", &addr], &[]);
    assert_eq!(out.code, Some(RUNTIME_ERROR), "stderr:\n{}", out.stderr);
    assert!(out.elapsed < PROMPTLY, "took {:?}", out.elapsed);
    // Reading of the contract: startup info lines (e.g. the self-signed fingerprint) may come
    // first; the failure itself is one `error:` line, the last one.
    let errors: Vec<&str> = out
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line:\n{}", out.stderr);
    assert_eq!(out.lines().last(), errors.first(), "{}", out.stderr);
    assert!(errors[0].contains(&addr), "names {addr}: {}", errors[0]);
}

#[test]
fn admin_port_in_use_is_a_runtime_error_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = run_expect_fail(&["--admin-listen", &addr], &[]);
    assert_eq!(out.code, Some(RUNTIME_ERROR), "stderr:\n{}", out.stderr);
    let last = out.lines().last().copied().unwrap_or_default().to_string();
    assert!(
        last.starts_with("error: ") && last.contains(&addr),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn env_vars_configure_listen_backend_and_mode() {
    let app = TcpBackend::echo().await;
    let sc = Sidecar::builder()
        .without_listen_flag()
        .env("SIDECAR_LISTEN", "127.0.0.1:0")
        .env("SIDECAR_BACKEND", app.addr().to_string())
        .env("SIDECAR_MODE", "tcp")
        .start()
        .await;
    let mut tls =
        client::tls_connect(sc.addr(), "localhost", client::config(Trust::AnyCert, &[])).await;
    tls.write_all(b"via env").await.expect("write");
    let mut buf = [0u8; 7];
    within(STEP, "tcp echo", tls.read_exact(&mut buf))
        .await
        .expect("read echo");
    assert_eq!(&buf, b"via env");
}

#[tokio::test]
async fn cert_and_key_from_env() {
    let pki = Pki::new();
    let pair = pki.leaf(&["localhost"], KeyFormat::EcSec1);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .env("SIDECAR_CERT", s(&pair.cert))
        .env("SIDECAR_KEY", s(&pair.key))
        .start()
        .await;
    let tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::Ca(pki.ca_der()), ALPN_H2_H1),
    )
    .await;
    assert_eq!(client::peer_cert(&tls), pair.cert_der);
}

#[tokio::test]
async fn gosslterm_aliases_work_and_a_bare_port_means_all_interfaces() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .without_listen_flag()
        .env("GOSSLTERM_FRONTEND_ADDR", ":0")
        .env("GOSSLTERM_BACKEND_ADDR", app.addr().to_string())
        .start()
        .await;
    assert!(
        sc.listen_addr().ip().is_unspecified(),
        "`:PORT` binds all interfaces, got {}",
        sc.listen_addr()
    );
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H2_H1),
    )
    .await;
    let reply = conn.get("/gosslterm").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(app.requests().len(), 1, "proxied to GOSSLTERM_BACKEND_ADDR");
}

#[tokio::test]
async fn bare_port_listen_flag_means_all_interfaces() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .without_listen_flag()
        .arg("--listen")
        .arg(":0")
        .backend(app.addr())
        .start()
        .await;
    assert!(
        sc.listen_addr().ip().is_unspecified(),
        "{}",
        sc.listen_addr()
    );
    let mut conn = HttpConn::connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H2_H1),
    )
    .await;
    assert_eq!(conn.get("/").await.status, StatusCode::OK);
}
