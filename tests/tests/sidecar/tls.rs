//! Sidecar TLS: protocol versions (rustls and openssl), certificate and key formats, the
//! self-signed certificate (SANs, key type, logged fingerprint), and junk on the TLS port.

use std::time::Duration;

use harness::backend::{sha256_fingerprint, Backend};
use harness::certs::{KeyFormat, Pki};
use harness::client::{self, HttpConn, Trust, ALPN_H1, ALPN_H2_H1};
use harness::sidecar::{log_field, Sidecar};
use harness::wait::{within, STEP};
use http::StatusCode;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs `openssl s_client` against the sidecar; returns (success, stdout + stderr).
async fn s_client(sc: &Sidecar, extra: &[&str]) -> (bool, String) {
    let out = within(
        STEP,
        "openssl s_client",
        tokio::process::Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(sc.addr().to_string())
            .args(["-servername", "localhost"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .expect("run openssl s_client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn tls11_is_refused() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    // SECLEVEL=0 lets this openssl offer TLS 1.1 at all, so the refusal is the sidecar's.
    let (ok, out) = s_client(&sc, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]).await;
    assert!(!ok, "TLS 1.1 handshake must fail:\n{out}");
    assert!(out.contains("Cipher is (NONE)"), "no cipher agreed:\n{out}");
    // The refusal comes from the sidecar (a TLS alert record it sent), not from this openssl
    // giving up locally. rustls answers a TLS 1.1-only ClientHello with handshake_failure.
    assert!(
        out.contains("SSL alert number"),
        "the sidecar answers a TLS 1.1 ClientHello with an alert:\n{out}"
    );
}

#[tokio::test]
async fn tls12_and_tls13_are_accepted_by_openssl() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, out) = s_client(&sc, &[flag]).await;
        assert!(ok, "{version} handshake failed:\n{out}");
        assert!(
            out.contains(&format!("New, {version}, Cipher is")),
            "{version} negotiated:\n{out}"
        );
    }
}

async fn rustls_version_works(version: &'static rustls::SupportedProtocolVersion) {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let config = client::config_with_versions(Trust::AnyCert, ALPN_H2_H1, &[version]);
    let tls = client::tls_connect(sc.addr(), "localhost", config).await;
    assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    let mut conn = HttpConn::over(tls, format!("localhost:{}", sc.addr().port())).await;
    assert_eq!(conn.get("/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn tls12_is_accepted_by_rustls() {
    rustls_version_works(&rustls::version::TLS12).await;
}

#[tokio::test]
async fn tls13_is_accepted_by_rustls() {
    rustls_version_works(&rustls::version::TLS13).await;
}

/// Serves a CA-signed leaf whose key is in `format` and checks a verifying client gets it.
async fn serves_certificate_with(format: KeyFormat) {
    let pki = Pki::new();
    let pair = pki.leaf(&["localhost", "127.0.0.1"], format);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .cert(&pair)
        .start()
        .await;
    let tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::Ca(pki.ca_der()), ALPN_H2_H1),
    )
    .await;
    assert_eq!(client::peer_cert(&tls), pair.cert_der, "{format:?}");
    let mut conn = HttpConn::over(tls, format!("localhost:{}", sc.addr().port())).await;
    assert_eq!(conn.get("/").await.status, StatusCode::OK, "{format:?}");
}

#[tokio::test]
async fn rsa_pkcs1_key_loads() {
    serves_certificate_with(KeyFormat::RsaPkcs1).await;
}

#[tokio::test]
async fn rsa_pkcs8_key_loads() {
    serves_certificate_with(KeyFormat::RsaPkcs8).await;
}

#[tokio::test]
async fn ec_sec1_key_loads() {
    serves_certificate_with(KeyFormat::EcSec1).await;
}

#[tokio::test]
async fn ec_pkcs8_key_loads() {
    serves_certificate_with(KeyFormat::EcPkcs8).await;
}

#[tokio::test]
async fn curl_verifies_the_configured_certificate() {
    let pki = Pki::new();
    let pair = pki.leaf(&["localhost"], KeyFormat::EcPkcs8);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .cert(&pair)
        .start()
        .await;
    let port = sc.addr().port();
    let out = within(
        STEP + STEP,
        "curl",
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "15",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--cacert")
            .arg(pki.ca_pem_file())
            .arg("--resolve")
            .arg(format!("localhost:{port}:127.0.0.1"))
            .arg(format!("https://localhost:{port}/verified"))
            .output(),
    )
    .await
    .expect("run curl");
    assert!(
        out.status.success(),
        "curl with full verification failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

/// The SAN entries of a DER certificate, as openssl prints them (`DNS:x`, `IP Address:y`).
async fn sans(cert: &CertificateDer<'_>) -> Vec<String> {
    openssl_x509(cert, &["-noout", "-ext", "subjectAltName"])
        .await
        .lines()
        .skip(1)
        .flat_map(|l| l.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

async fn openssl_x509(cert: &CertificateDer<'_>, args: &[&str]) -> String {
    let dir = harness::tmp::TempDir::new("tls-sidecar-cert");
    let file = dir.write("served.der", cert.as_ref());
    let out = within(
        STEP,
        "openssl x509",
        tokio::process::Command::new("openssl")
            .args(["x509", "-inform", "DER", "-in"])
            .arg(&file)
            .args(args)
            .output(),
    )
    .await
    .expect("run openssl x509");
    assert!(
        out.status.success(),
        "openssl x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn served_cert(sc: &Sidecar) -> CertificateDer<'static> {
    let tls = client::tls_connect(
        sc.addr(),
        "localhost",
        client::config(Trust::AnyCert, ALPN_H1),
    )
    .await;
    client::peer_cert(&tls)
}

#[tokio::test]
async fn self_signed_certificate_has_the_default_names() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let names = sans(&served_cert(&sc).await).await;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("read hostname")
        .trim()
        .to_string();
    for expected in [
        format!("DNS:{hostname}"),
        "DNS:localhost".to_string(),
        "IP Address:127.0.0.1".to_string(),
        "IP Address:0:0:0:0:0:0:0:1".to_string(),
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from SANs {names:?}"
        );
    }
}

#[tokio::test]
async fn self_signed_certificate_has_the_configured_names() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--self-signed-names")
        .arg("app.internal,api.example.test,10.1.2.3")
        .start()
        .await;
    let names = sans(&served_cert(&sc).await).await;
    for expected in [
        "DNS:app.internal",
        "DNS:api.example.test",
        "IP Address:10.1.2.3",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from SANs {names:?}"
        );
    }
}

#[tokio::test]
async fn self_signed_certificate_is_ecdsa_p256() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let text = openssl_x509(&served_cert(&sc).await, &["-noout", "-text"]).await;
    assert!(text.contains("id-ecPublicKey"), "{text}");
    assert!(
        text.contains("prime256v1") || text.contains("P-256"),
        "{text}"
    );
}

#[tokio::test]
async fn logged_fingerprint_matches_the_served_certificate() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let line = sc
        .wait_log("self-signed certificate", Duration::from_secs(5))
        .await;
    let logged = log_field(&line, "sha256").unwrap_or_else(|| panic!("no sha256= in {line}"));
    let served = served_cert(&sc).await;
    // What an operator compares it with: `openssl x509 -noout -fingerprint -sha256` prints
    // `sha256 Fingerprint=AB:CD:...` (`SHA256 Fingerprint=` in older releases).
    let openssl = openssl_x509(&served, &["-noout", "-fingerprint", "-sha256"]).await;
    let (_, printed) = openssl
        .trim()
        .split_once('=')
        .unwrap_or_else(|| panic!("openssl printed no fingerprint: {openssl}"));
    assert_eq!(
        logged, printed,
        "the logged fingerprint is openssl's, as printed"
    );
    assert_eq!(logged, sha256_fingerprint(served.as_ref()));
}

/// `junk` on a fresh connection gets that connection dropped quickly (well before the default
/// 10 s handshake timeout) while an established connection and new ones keep working.
async fn junk_is_dropped_alone(junk: &[u8], half_close: bool, what: &str) {
    let app = Backend::echo().await;
    let mut sc = Sidecar::start(app.addr()).await;
    let config = client::config(Trust::AnyCert, ALPN_H1);
    let mut before = HttpConn::connect(sc.addr(), "localhost", config.clone()).await;
    assert_eq!(before.get("/before").await.status, StatusCode::OK);

    let mut tcp = within(STEP, "connect", TcpStream::connect(sc.addr()))
        .await
        .expect("connect");
    tcp.write_all(junk).await.expect("write junk");
    if half_close {
        tcp.shutdown().await.expect("shutdown write");
    }
    within(
        Duration::from_secs(5),
        &format!("the sidecar to drop the connection that sent {what}"),
        async {
            let mut buf = [0u8; 4096];
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {} // an alert, or a plain-HTTP hint: fine, as long as it closes
                }
            }
        },
    )
    .await;

    assert_eq!(
        before.get("/after").await.status,
        StatusCode::OK,
        "established connection after {what}"
    );
    let mut fresh = HttpConn::connect(sc.addr(), "localhost", config).await;
    assert_eq!(fresh.get("/fresh").await.status, StatusCode::OK);
    assert!(sc.is_running());
}

#[tokio::test]
async fn garbage_bytes_drop_only_that_connection() {
    junk_is_dropped_alone(&harness::backend::pattern(7, 4096), false, "garbage bytes").await;
}

#[tokio::test]
async fn plain_http_drops_only_that_connection() {
    junk_is_dropped_alone(
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        false,
        "plain HTTP",
    )
    .await;
}

#[tokio::test]
async fn truncated_client_hello_drops_only_that_connection() {
    let hello = client::client_hello_bytes();
    junk_is_dropped_alone(&hello[..hello.len() / 2], true, "half a ClientHello").await;
}
