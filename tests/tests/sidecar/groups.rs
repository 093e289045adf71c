//! Post-quantum key exchange (issue 27): the sidecar agrees X25519MLKEM768 with a client that
//! offers it (current browsers and Go offer it first), still agrees X25519, P-256 and P-384 with
//! clients without it (Debian's OpenSSL 3.0 among them), and `--tls-groups` restricts and
//! orders the groups: `X25519MLKEM768` alone refuses a classical client with a handshake
//! failure. `sidecar_tls_handshakes_total{group}` counts what was agreed. The spawner's ACME
//! client offers the hybrid group too.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;

use harness::backend::Backend;
use harness::client::{self, config_with_groups, Trust, ALPN_H1};
use harness::metrics::wait_metric;
use harness::sidecar::{run_expect_fail, Sidecar};
use harness::wait::{within, STEP};
use rustls::crypto::aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
use rustls::crypto::SupportedKxGroup;
use rustls::NamedGroup;

/// The group the sidecar at `addr` agrees with a client offering `groups` (in that order), or
/// the handshake's error.
async fn agreed(
    addr: SocketAddr,
    groups: &[&'static dyn SupportedKxGroup],
) -> Result<NamedGroup, String> {
    let config = config_with_groups(Trust::AnyCert, ALPN_H1, groups);
    let tls = within(
        STEP,
        "a TLS handshake",
        client::try_tls_connect(addr, "localhost", config),
    )
    .await
    .map_err(|e| e.to_string())?;
    let group = tls
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .ok_or("no group agreed")?;
    Ok(group.name())
}

fn handshakes(group: &str) -> String {
    format!("sidecar_tls_handshakes_total{{group=\"{group}\"}}")
}

#[tokio::test]
async fn the_hybrid_group_is_agreed_first_and_classical_clients_still_connect() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder().backend(app.addr()).admin().start().await;
    let addr = sc.addr();

    // rustls's own default (X25519MLKEM768 first, then X25519, P-256, P-384), as browsers offer.
    let default = rustls::crypto::aws_lc_rs::default_provider().kx_groups;
    assert_eq!(agreed(addr, &default).await, Ok(NamedGroup::X25519MLKEM768));
    assert_eq!(agreed(addr, &[X25519]).await, Ok(NamedGroup::X25519));
    assert_eq!(agreed(addr, &[SECP256R1]).await, Ok(NamedGroup::secp256r1));
    assert_eq!(agreed(addr, &[SECP384R1]).await, Ok(NamedGroup::secp384r1));
    // A client that offers the hybrid group without a key share for it gets it by a retry.
    assert_eq!(
        agreed(addr, &[X25519, X25519MLKEM768]).await,
        Ok(NamedGroup::X25519),
        "the client's order among groups it sent shares for"
    );
    wait_metric(&sc, &handshakes("X25519MLKEM768"), |v| v >= 1.0).await;
    wait_metric(&sc, &handshakes("X25519"), |v| v >= 2.0).await;
    wait_metric(&sc, &handshakes("secp256r1"), |v| v >= 1.0).await;
    wait_metric(&sc, &handshakes("secp384r1"), |v| v >= 1.0).await;

    // Debian's OpenSSL 3.0 has no ML-KEM: it agrees X25519 and gets its answer.
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args(["-brief", "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let mut out = out;
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = out.stdin.take().expect("stdin");
        stdin
            .write_all(b"GET /hello HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write the request");
    }
    let done = within(STEP, "openssl s_client", out.wait_with_output())
        .await
        .expect("openssl s_client output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(
        text.contains("HTTP/1.1 200") && text.contains("X25519"),
        "OpenSSL agrees X25519 and is answered: {text}"
    );
}

#[tokio::test]
async fn tls_groups_restricts_what_is_agreed() {
    let app = Backend::echo().await;
    let pq = Sidecar::builder()
        .backend(app.addr())
        .args(["--tls-groups", "X25519MLKEM768"])
        .admin()
        .start()
        .await;
    assert_eq!(
        agreed(pq.addr(), &[X25519MLKEM768]).await,
        Ok(NamedGroup::X25519MLKEM768)
    );
    for classical in [&[X25519][..], &[SECP256R1, SECP384R1]] {
        let e = agreed(pq.addr(), classical)
            .await
            .expect_err("a client without the hybrid group is refused");
        assert!(
            e.contains("HandshakeFailure") || e.contains("handshake"),
            "a handshake failure: {e}"
        );
    }
    wait_metric(&pq, "sidecar_handshake_failures_total", |v| v >= 2.0).await;

    // Another order, by the environment variable: P-384 only, agreed by a retry (the client sent
    // shares for others first).
    let p384 = Sidecar::builder()
        .backend(app.addr())
        .env("SIDECAR_TLS_GROUPS", "secp384r1")
        .start()
        .await;
    let default = rustls::crypto::aws_lc_rs::default_provider().kx_groups;
    assert_eq!(
        agreed(p384.addr(), &default).await,
        Ok(NamedGroup::secp384r1)
    );

    let bad = run_expect_fail(&["--tls-groups", "X25519,X448"], &[]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    assert!(
        bad.stderr.contains("--tls-groups") && bad.stderr.contains("X448"),
        "{bad:?}"
    );
}

/// The spawner's ACME client (the HTTP client it speaks to the CA with) offers the hybrid
/// group: a server that agrees nothing else completes the handshake with it.
#[tokio::test]
async fn the_acme_client_offers_the_hybrid_group() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let mut only_pq = rustls::crypto::aws_lc_rs::default_provider();
    only_pq.kx_groups = vec![X25519MLKEM768];
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(only_pq))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = acceptor.accept(tcp).await.expect("handshake");
        let group = tls
            .get_ref()
            .1
            .negotiated_key_exchange_group()
            .map(|g| g.name());
        let mut head = vec![0u8; 4096];
        let _ = tls.read(&mut head).await;
        tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
            .await
            .expect("answer");
        let _ = tls.shutdown().await;
        group
    });

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .expect("trust the test server");
    let http = spawner::AcmeHttp::new(roots);
    let req = http::Request::builder()
        .uri(format!("https://localhost:{port}/directory"))
        .body(instant_acme::BodyWrapper::from(Vec::new()))
        .expect("request");
    let rsp = within(
        STEP,
        "the ACME client's request",
        instant_acme::HttpClient::request(&http, req),
    )
    .await
    .expect("answered");
    assert_eq!(rsp.parts.status, http::StatusCode::OK);
    let group = within(STEP, "the server's side", served)
        .await
        .expect("server task");
    assert_eq!(group, Some(NamedGroup::X25519MLKEM768));
}
