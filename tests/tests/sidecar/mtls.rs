//! Mutual TLS: a client certificate verified against `--client-ca` (and `--client-crl`), then
//! matched against the allow-lists; refused clients get nothing (the refusal happens in the
//! handshake, in http and tcp mode), admitted ones reach the backend with their identity in
//! `X-Client-Cert-*` headers, which a client can never forge. The CA bundle and CRLs are reloaded
//! without a restart: a CA roll-over, a broken bundle that keeps the previous one, a CRL update.
//! Clients: rustls and curl.

use std::sync::Arc;

use harness::backend::{sha256_hex, Backend};
use harness::certdir::write;
use harness::client::{HttpConn, ALPN_H1, ALPN_H2_H1};
use harness::issuer::{Issued, Spec, TestCa};
use harness::mtls::{expect_refused, CountingEcho, MtlsFixture as Fixture, Refusal};
use harness::sidecar::{run_expect_fail, Sidecar};
use harness::wait::{within, STEP};
use http::{Method, StatusCode};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUEST: &[u8] = b"GET /secret HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// The headers a backend trusts for the client's identity.
const SUBJECT: &str = "x-client-cert-subject";
const SAN: &str = "x-client-cert-san";
const FINGERPRINT: &str = "x-client-cert-fingerprint";

/// Asserts `identity` is admitted: a request goes through and the backend sees it.
async fn admitted(sc: &Sidecar, fx: &Fixture, identity: Option<&Issued>, what: &str) {
    let mut conn = HttpConn::connect(sc.addr(), "localhost", fx.client(identity, ALPN_H1)).await;
    let reply = conn.get("/admitted").await;
    assert_eq!(reply.status, StatusCode::OK, "{what} must be admitted");
}

/// Asserts `identity` is refused and that the backend saw nothing from it.
async fn refused(
    sc: &Sidecar,
    app: &Backend,
    fx: &Fixture,
    identity: Option<&Issued>,
    what: &str,
) -> Refusal {
    let before = app.requests().len();
    let how = expect_refused(
        sc.addr(),
        "localhost",
        fx.client(identity, ALPN_H1),
        REQUEST,
    )
    .await;
    println!("{what}: refused ({how:?})");
    assert_eq!(
        app.requests().len(),
        before,
        "{what}: nothing may reach the backend"
    );
    how
}

#[tokio::test]
async fn allowed_client_reaches_the_backend_with_its_identity() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let sc = fx
        .sidecar(app.addr())
        .arg("--allow-cn")
        .arg("web")
        .start()
        .await;
    let web = fx.issue(
        Spec::client("web")
            .dns("web.svc.example")
            .uri("spiffe://example.org/ns/prod/sa/web")
            .ip("10.1.2.3"),
    );
    for alpn in [ALPN_H1, ALPN_H2_H1] {
        let mut conn = HttpConn::connect(sc.addr(), "localhost", fx.client(Some(&web), alpn)).await;
        let req = conn
            .request(Method::GET, "/whoami")
            .header(SUBJECT, "CN=admin")
            .header(
                "X-Client-Cert-SAN",
                "URI:spiffe://example.org/ns/prod/sa/admin",
            )
            .header(FINGERPRINT, "00".repeat(32))
            .body(harness::client::empty())
            .expect("request");
        let reply = conn.fetch(req).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", conn.alpn());
        let seen = app
            .requests()
            .into_iter()
            .rev()
            .find(|r| r.path == "/whoami")
            .expect("the backend saw the request");
        // `header` also asserts each appears once: the forged copies are gone, not appended to.
        assert_eq!(seen.header(SUBJECT), Some("CN=web"));
        assert_eq!(
            seen.header(SAN),
            Some("DNS:web.svc.example, URI:spiffe://example.org/ns/prod/sa/web, IP:10.1.2.3")
        );
        assert_eq!(
            seen.header(FINGERPRINT),
            Some(sha256_hex(web.der.as_ref()).as_str()),
            "fingerprint is the SHA-256 of the client certificate's DER"
        );
    }
}

#[tokio::test]
async fn unknown_ca_expired_and_missing_certificates_are_refused() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let sc = fx.sidecar(app.addr()).admin().start().await;
    let stranger = TestCa::new("unknown CA").issue(&Spec::client("web"));
    let expired = fx.issue(Spec::client("web").expired());
    let good = fx.issue(Spec::client("web"));
    // The alert tells the client why, and proves each refusal had the named cause.
    let how = refused(&sc, &app, &fx, Some(&stranger), "unknown CA").await;
    assert!(how.is_alert("UnknownCA"), "{how:?}");
    let how = refused(&sc, &app, &fx, Some(&expired), "expired").await;
    assert!(how.is_alert("CertificateExpired"), "{how:?}");
    let how = refused(&sc, &app, &fx, None, "no certificate (required by default)").await;
    assert!(how.is_alert("CertificateRequired"), "{how:?}");
    // Without allow-lists any certificate the CA issued is admitted.
    admitted(&sc, &fx, Some(&good), "a valid certificate").await;
    // The refusals were handshake failures, as the metrics say.
    let text = harness::client::plain_get(sc.admin_addr(), "/metrics")
        .await
        .text();
    assert!(
        text.lines()
            .any(|l| l == "sidecar_handshake_failures_total 3"),
        "three failed handshakes counted:\n{text}"
    );
}

#[tokio::test]
async fn allow_lists_admit_by_cn_dns_or_uri_with_wildcards() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let sc = fx
        .sidecar(app.addr())
        .arg("--allow-cn")
        .arg("billing")
        .arg("--allow-dns-san")
        .arg("*.svc.example")
        .arg("--allow-uri-san")
        .arg("spiffe://example.org/ns/*/sa/web")
        .start()
        .await;
    for (spec, what) in [
        (Spec::client("billing"), "CN billing"),
        (
            Spec::client("x").dns("api.svc.example"),
            "DNS api.svc.example",
        ),
        (
            Spec::client("x").uri("spiffe://example.org/ns/prod/sa/web"),
            "SPIFFE ns/prod/sa/web",
        ),
        (
            Spec::client("x")
                .dns("nope.example")
                .uri("spiffe://example.org/ns/staging/sa/web"),
            "one matching SAN among others",
        ),
    ] {
        admitted(&sc, &fx, Some(&fx.issue(spec)), what).await;
    }
    for (spec, what) in [
        (Spec::client("web"), "CN web"),
        (Spec::client("Billing"), "CN Billing (case differs)"),
        (
            Spec::client("x").dns("a.b.svc.example"),
            "DNS two labels under the wildcard",
        ),
        (
            Spec::client("x").dns("svc.example"),
            "DNS the wildcard's parent",
        ),
        (
            Spec::client("x").uri("spiffe://example.org/ns/prod/sa/db"),
            "SPIFFE another service account",
        ),
        (
            Spec::client("x").uri("spiffe://example.org/ns/a/b/sa/web"),
            "SPIFFE two segments for one *",
        ),
        (
            Spec::client("x").uri("spiffe://other.org/ns/prod/sa/web"),
            "SPIFFE another trust domain",
        ),
    ] {
        let how = refused(&sc, &app, &fx, Some(&fx.issue(spec)), what).await;
        // Refused by the allow-list, not by verification.
        assert!(how.is_alert("AccessDenied"), "{what}: {how:?}");
    }
}

#[tokio::test]
async fn allow_lists_from_env_comma_lists() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--cert")
        .arg(fx.path("server.crt"))
        .arg("--key")
        .arg(fx.path("server.key"))
        .env("SIDECAR_CLIENT_CA", fx.client_ca.display().to_string())
        .env("SIDECAR_ALLOW_CN", "billing,ops")
        .env(
            "SIDECAR_ALLOW_URI_SAN",
            "spiffe://example.org/a,spiffe://example.org/b",
        )
        .start()
        .await;
    admitted(&sc, &fx, Some(&fx.issue(Spec::client("ops"))), "CN ops").await;
    admitted(
        &sc,
        &fx,
        Some(&fx.issue(Spec::client("x").uri("spiffe://example.org/b"))),
        "URI b",
    )
    .await;
    refused(
        &sc,
        &app,
        &fx,
        Some(&fx.issue(Spec::client("web"))),
        "CN web",
    )
    .await;
}

#[tokio::test]
async fn revoked_certificate_is_refused_with_a_crl() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let revoked = fx.issue(Spec::client("web"));
    let fine = fx.issue(Spec::client("web"));
    let crl = fx.files.path().join("clients.crl.pem");
    write(&crl, fx.clients.crl_pem(&[revoked.serial]));
    let sc = fx
        .sidecar(app.addr())
        .arg("--client-crl")
        .arg(crl.display().to_string())
        .start()
        .await;
    let how = refused(&sc, &app, &fx, Some(&revoked), "a revoked certificate").await;
    assert!(how.is_alert("CertificateRevoked"), "{how:?}");
    admitted(&sc, &fx, Some(&fine), "a certificate the CRL does not list").await;
}

#[tokio::test]
async fn optional_mode_admits_clients_without_a_certificate_but_not_bad_ones() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let sc = fx
        .sidecar(app.addr())
        .arg("--client-auth")
        .arg("optional")
        .arg("--allow-cn")
        .arg("web")
        .start()
        .await;
    // No certificate: admitted, with no identity, and forged identity headers removed.
    let mut conn = HttpConn::connect(sc.addr(), "localhost", fx.client(None, ALPN_H1)).await;
    let req = conn
        .request(Method::GET, "/anonymous")
        .header(SUBJECT, "CN=web")
        .header(SAN, "DNS:web.svc.example")
        .header(FINGERPRINT, "ab".repeat(32))
        .body(harness::client::empty())
        .expect("request");
    assert_eq!(conn.fetch(req).await.status, StatusCode::OK);
    let seen = app
        .requests()
        .into_iter()
        .find(|r| r.path == "/anonymous")
        .expect("the backend saw the request");
    for name in [SUBJECT, SAN, FINGERPRINT] {
        assert_eq!(
            seen.header(name),
            None,
            "{name} forged by a client without a certificate"
        );
    }

    // A certificate, when presented, is still verified and allow-listed.
    let web = fx.issue(Spec::client("web"));
    let mut conn = HttpConn::connect(sc.addr(), "localhost", fx.client(Some(&web), ALPN_H1)).await;
    assert_eq!(conn.get("/identified").await.status, StatusCode::OK);
    let seen = app
        .requests()
        .into_iter()
        .find(|r| r.path == "/identified")
        .expect("the backend saw the request");
    assert_eq!(seen.header(SUBJECT), Some("CN=web"));
    let stranger = TestCa::new("unknown CA").issue(&Spec::client("web"));
    refused(&sc, &app, &fx, Some(&stranger), "optional mode, unknown CA").await;
    refused(
        &sc,
        &app,
        &fx,
        Some(&fx.issue(Spec::client("db"))),
        "optional mode, not allowed",
    )
    .await;
}

#[tokio::test]
async fn forged_identity_headers_never_reach_the_backend_without_mtls() {
    let app = Backend::echo().await;
    let sc = Sidecar::start(app.addr()).await;
    let config = harness::client::config(harness::client::Trust::AnyCert, ALPN_H2_H1);
    for alpn_config in [
        config,
        harness::client::config(harness::client::Trust::AnyCert, ALPN_H1),
    ] {
        let mut conn = HttpConn::connect(sc.addr(), "localhost", alpn_config).await;
        let path = format!("/forged-{}", conn.alpn().unwrap_or("none"));
        let req = conn
            .request(Method::GET, &path)
            .header("X-Client-Cert-Subject", "CN=admin")
            .header("x-client-cert-san", "DNS:admin.example")
            .header("X-CLIENT-CERT-FINGERPRINT", "ab".repeat(32))
            .body(harness::client::empty())
            .expect("request");
        assert_eq!(conn.fetch(req).await.status, StatusCode::OK);
        let seen = app
            .requests()
            .into_iter()
            .find(|r| r.path == path)
            .expect("the backend saw the request");
        for name in [SUBJECT, SAN, FINGERPRINT] {
            assert!(
                seen.header_all(name).is_empty(),
                "{name} forged over {path}"
            );
        }
    }
}

#[tokio::test]
async fn tcp_mode_refuses_in_the_handshake_and_admits_the_allowed_client() {
    let fx = Fixture::new();
    let echo = CountingEcho::start().await;
    let sc = fx
        .sidecar(echo.addr())
        .mode("tcp")
        .arg("--allow-uri-san")
        .arg("spiffe://example.org/ns/*/sa/web")
        .start()
        .await;
    let stranger = TestCa::new("unknown CA").issue(&Spec::client("web"));
    let outsider = fx.issue(Spec::client("x").uri("spiffe://example.org/ns/prod/sa/db"));
    for (identity, what, alert) in [
        (None, "no certificate", "CertificateRequired"),
        (Some(&stranger), "unknown CA", "UnknownCA"),
        (Some(&outsider), "not in the allow-list", "AccessDenied"),
    ] {
        let how = expect_refused(sc.addr(), "localhost", fx.client(identity, &[]), b"ping").await;
        println!("tcp, {what}: refused ({how:?})");
        assert!(how.is_alert(alert), "tcp, {what}: {how:?}");
        assert_eq!(
            echo.accepted(),
            0,
            "{what}: the sidecar must not connect to the backend"
        );
    }

    let web = fx.issue(Spec::client("x").uri("spiffe://example.org/ns/prod/sa/web"));
    let mut tls =
        harness::client::tls_connect(sc.addr(), "localhost", fx.client(Some(&web), &[])).await;
    within(STEP, "write through the tcp relay", tls.write_all(b"ping"))
        .await
        .expect("write");
    let mut buf = [0u8; 4];
    within(STEP, "echo through the tcp relay", tls.read_exact(&mut buf))
        .await
        .expect("read the echo");
    assert_eq!(&buf, b"ping");
    assert_eq!(
        echo.accepted(),
        1,
        "only the admitted client reached the backend"
    );
}

#[tokio::test]
async fn curl_with_a_client_certificate() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let sc = fx
        .sidecar(app.addr())
        .arg("--allow-cn")
        .arg("curl-client")
        .start()
        .await;
    let me = fx.issue(Spec::client("curl-client").dns("curl.svc.example"));
    let (cert, key) = me.write_to(fx.files.path(), "curl-client");
    let server_ca = fx.files.path().join("server-ca.pem");
    write(&server_ca, fx.server_ca.pem());
    let port = sc.addr().port();
    let curl = |with_cert: bool| {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["--silent", "--show-error", "--max-time", "10"])
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg("--cacert")
            .arg(&server_ca);
        if with_cert {
            cmd.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        cmd.arg(format!("https://localhost:{port}/curl"));
        cmd.stdin(std::process::Stdio::null());
        cmd
    };
    let out = within(STEP, "curl with a client certificate", curl(true).output())
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let echo = harness::backend::Echo::parse(&out.stdout);
    assert_eq!(echo.request.header(SUBJECT), Some("CN=curl-client"));
    assert_eq!(echo.request.header(SAN), Some("DNS:curl.svc.example"));
    assert_eq!(
        echo.request.header(FINGERPRINT),
        Some(sha256_hex(me.der.as_ref()).as_str())
    );

    let before = app.requests().len();
    let out = within(
        STEP,
        "curl without a client certificate",
        curl(false).output(),
    )
    .await
    .expect("run curl");
    assert!(
        !out.status.success(),
        "curl without a certificate must fail, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "no response body for a refused client"
    );
    println!(
        "curl without a certificate: exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    assert_eq!(app.requests().len(), before, "nothing reached the backend");
}

#[tokio::test]
async fn mtls_flags_without_client_ca_refuse_to_start() {
    let fx = Fixture::new();
    let crl = fx.files.path().join("x.crl.pem");
    write(&crl, fx.clients.crl_pem(&[]));
    let crl = crl.display().to_string();
    for args in [
        vec!["--allow-cn", "web"],
        vec!["--allow-dns-san", "*.svc.example"],
        vec!["--allow-uri-san", "spiffe://example.org/*"],
        vec!["--client-auth", "optional"],
        vec!["--client-crl", crl.as_str()],
    ] {
        let out = within(STEP, "sidecar refusing to start", async {
            run_expect_fail(&args, &[])
        })
        .await;
        assert_eq!(out.code, Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(args[0]) && out.stderr.contains("needs --client-ca"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

/// A periodic check that never fires during a test: a reload seen came from inotify or SIGHUP.
const NO_PERIODIC: &str = "1h";

/// One request on a connection that closes after it, for [`status_now`].
const REQUEST_CLOSE: &[u8] = b"GET /now HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

const RELOAD_FAILED: &str = "sidecar_certificate_reloads_total{result=\"failure\"}";

/// The status `config`'s client gets for one request on a new connection, or `None` if the
/// sidecar refused it in the handshake (an alert where the response would be).
async fn status_now(addr: std::net::SocketAddr, config: Arc<ClientConfig>) -> Option<u16> {
    let tls = within(
        STEP,
        "TLS connect",
        harness::client::try_tls_connect(addr, "localhost", config),
    )
    .await
    .ok()?;
    harness::client::raw_exchange(tls, REQUEST_CLOSE)
        .await
        .map(|r| r.status)
}

/// Polls, each time with a fresh client config (no session to resume), until `identity` is
/// admitted (`admit`) or refused (`!admit`) by new handshakes.
async fn wait_until(sc: &Sidecar, fx: &Fixture, identity: &Issued, admit: bool, what: &str) {
    let addr = sc.addr();
    harness::wait::poll_until_async(STEP, what, || {
        let config = fx.client(Some(identity), ALPN_H1);
        async move {
            let status = status_now(addr, config).await;
            assert!(
                status.is_none() || status == Some(200),
                "{what}: unexpected status {status:?}"
            );
            (status.is_some() == admit).then_some(())
        }
    })
    .await;
}

/// The bundle a deployment swaps in: written beside the file, then renamed over it.
fn deploy_bundle(fx: &Fixture, cas: &[&TestCa]) {
    let pem: String = cas.iter().map(|ca| ca.pem()).collect();
    harness::certdir::replace_atomic(&fx.client_ca, pem);
}

#[tokio::test]
async fn a_client_ca_roll_over_needs_no_restart_and_keeps_open_connections() {
    let fx = Fixture::new();
    let old_ca = &fx.clients;
    let new_ca = TestCa::new("next client CA");
    let app = Backend::echo().await;
    let sc = fx
        .sidecar(app.addr())
        .arg("--reload-interval")
        .arg(NO_PERIODIC)
        .start()
        .await;
    let old_client = fx.issue(Spec::client("web"));
    let new_client = new_ca.issue(&Spec::client("web"));

    // A keep-alive connection with the old CA's certificate, used once. The same client's next
    // connection makes a full handshake: a mutual-TLS listener resumes no session, since a
    // resumption would skip verification (and so outlive a removed CA, a revocation or the
    // certificate's expiry).
    let old_config = fx.client(Some(&old_client), ALPN_H1);
    let mut kept = HttpConn::connect(sc.addr(), "localhost", old_config.clone()).await;
    assert_eq!(kept.get("/before").await.status, StatusCode::OK);
    let again = harness::client::tls_connect(sc.addr(), "localhost", old_config.clone()).await;
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full),
        "no session resumed with client certificates"
    );
    drop(again);
    let how = refused(&sc, &app, &fx, Some(&new_client), "new CA, not yet trusted").await;
    assert!(how.is_alert("UnknownCA"), "{how:?}");

    // Step 1: old and new side by side. Both are admitted.
    deploy_bundle(&fx, &[old_ca, &new_ca]);
    wait_until(&sc, &fx, &new_client, true, "a new-CA client admitted").await;
    admitted(
        &sc,
        &fx,
        Some(&old_client),
        "an old-CA client, both CAs trusted",
    )
    .await;
    sc.wait_log_all(&["client CAs loaded", "cas=2"], STEP).await;

    // Step 2: new only. New handshakes of old-CA clients are refused...
    deploy_bundle(&fx, &[&new_ca]);
    wait_until(&sc, &fx, &old_client, false, "an old-CA client refused").await;
    let how = refused(&sc, &app, &fx, Some(&old_client), "old CA, removed").await;
    assert!(how.is_alert("UnknownCA"), "{how:?}");
    admitted(&sc, &fx, Some(&new_client), "a new-CA client, new CA only").await;
    // ...also the client that connected before, with the same configuration (had it resumed a
    // session, its certificate would not be verified again).
    let before = app.requests().len();
    let how = expect_refused(sc.addr(), "localhost", old_config, REQUEST).await;
    assert!(
        how.is_alert("UnknownCA"),
        "resuming after the roll-over: {how:?}"
    );
    assert_eq!(app.requests().len(), before, "nothing reached the backend");

    // The connection made before the roll-over still answers.
    assert_eq!(kept.get("/after").await.status, StatusCode::OK);
    assert!(
        app.requests().iter().any(|r| r.path == "/after"),
        "the kept connection's request reached the backend"
    );
}

#[tokio::test]
async fn a_broken_client_ca_bundle_keeps_the_previous_one() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let sc = fx
        .sidecar(app.addr())
        .arg("--reload-interval")
        .arg(NO_PERIODIC)
        .admin()
        .start()
        .await;
    let client = fx.issue(Spec::client("web"));
    let stranger = TestCa::new("unknown CA").issue(&Spec::client("web"));
    let ca = fx.client_ca.display().to_string();
    let mut kept =
        HttpConn::connect(sc.addr(), "localhost", fx.client(Some(&client), ALPN_H1)).await;
    assert_eq!(kept.get("/before").await.status, StatusCode::OK);

    // Garbage: one error naming the flag, the file and the reason; the old CA still verifies.
    harness::certdir::replace_atomic(&fx.client_ca, "this is not a PEM bundle\n");
    let line = sc
        .wait_log_all(&["client CA reload failed", &ca], STEP)
        .await;
    assert!(
        line.contains(&format!("--client-ca file {ca}: no PEM certificate found")),
        "{line}"
    );
    harness::metrics::wait_metric(&sc, RELOAD_FAILED, |v| v == 1.0).await;
    admitted(&sc, &fx, Some(&client), "an old-CA client, bundle broken").await;
    let how = refused(&sc, &app, &fx, Some(&stranger), "unknown CA, bundle broken").await;
    assert!(how.is_alert("UnknownCA"), "{how:?}");

    // SIGHUP retries and reports again (a tick or another change would not repeat it).
    let status = std::process::Command::new("kill")
        .args(["-HUP", &sc.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    harness::metrics::wait_metric(&sc, RELOAD_FAILED, |v| v == 2.0).await;
    harness::wait::poll_until(STEP, "the error logged again after SIGHUP", || {
        let lines = sc.logs();
        let errors = lines
            .iter()
            .filter(|l| l.contains("client CA reload failed"))
            .count();
        (errors == 2).then_some(())
    })
    .await;

    // Missing: a new error, and still the old CA.
    std::fs::remove_file(&fx.client_ca).expect("remove the bundle");
    harness::metrics::wait_metric(&sc, RELOAD_FAILED, |v| v == 3.0).await;
    let line = sc
        .wait_log_all(
            &["client CA reload failed", "failed to read --client-ca file"],
            STEP,
        )
        .await;
    assert!(
        line.contains(&ca) && line.contains("No such file"),
        "{line}"
    );
    admitted(&sc, &fx, Some(&client), "an old-CA client, bundle missing").await;

    // Fixed: the next good bundle is loaded.
    let next = TestCa::new("next client CA");
    deploy_bundle(&fx, &[&fx.clients, &next]);
    wait_until(
        &sc,
        &fx,
        &next.issue(&Spec::client("web")),
        true,
        "a client of the CA added by the fixed bundle",
    )
    .await;
    assert_eq!(kept.get("/after").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_crl_update_refuses_the_revoked_certificate_without_restart() {
    let fx = Fixture::new();
    let app = Backend::echo().await;
    let crl = fx.files.path().join("clients.crl.pem");
    write(&crl, fx.clients.crl_pem(&[]));
    let sc = fx
        .sidecar(app.addr())
        .arg("--client-crl")
        .arg(crl.display().to_string())
        .arg("--reload-interval")
        .arg(NO_PERIODIC)
        .start()
        .await;
    let doomed = fx.issue(Spec::client("web"));
    let fine = fx.issue(Spec::client("web"));
    let mut kept =
        HttpConn::connect(sc.addr(), "localhost", fx.client(Some(&doomed), ALPN_H1)).await;
    assert_eq!(kept.get("/before").await.status, StatusCode::OK);

    harness::certdir::replace_atomic(&crl, fx.clients.crl_pem(&[doomed.serial]));
    wait_until(&sc, &fx, &doomed, false, "the revoked client refused").await;
    let how = refused(&sc, &app, &fx, Some(&doomed), "revoked by the new CRL").await;
    assert!(how.is_alert("CertificateRevoked"), "{how:?}");
    admitted(
        &sc,
        &fx,
        Some(&fine),
        "a certificate the new CRL does not list",
    )
    .await;
    // Revocation judges new handshakes; the connection made before keeps working.
    assert_eq!(kept.get("/after").await.status, StatusCode::OK);
}
