//! Sidecar, ACME TLS-ALPN-01 (RFC 8737) with `--acme-tls-alpn-dir`: a handshake offering
//! `acme-tls/1` for a name with a challenge file gets that certificate and ALPN `acme-tls/1`,
//! then the connection closes; normal clients meanwhile get the normal certificate and service,
//! even with mutual TLS required (the ACME validator has no client certificate). The full
//! issuance against a real ACME server (Pebble) belongs with the spawner's ACME.

use std::sync::Arc;

use harness::backend::Backend;
use harness::certs::{KeyFormat, Pki};
use harness::client::{self, HttpConn, Trust};
use harness::sidecar::Sidecar;
use harness::tmp::TempDir;
use harness::wait::{within, STEP};
use http::StatusCode;
use rustls_pki_types::CertificateDer;
use tokio::io::AsyncReadExt;

/// A TLS-ALPN-01 challenge certificate for `name` and its key, PEM, as an ACME client writes it.
fn challenge_pem(name: &str) -> (String, CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[42u8; 32])];
    let cert = params.self_signed(&key).expect("challenge certificate");
    let der = cert.der().clone();
    (format!("{}{}", cert.pem(), key.serialize_pem()), der)
}

/// The validator's side: it inspects the certificate itself (the acmeIdentifier extension is
/// critical, so webpki, and with it rustls' signature helpers, refuse to parse it); this test
/// compares the certificate's bytes instead, so the handshake signature is not checked here.
fn acme_client() -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(client::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Inspecting(client::provider())))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct Inspecting(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Inspecting {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn a_challenge_is_answered_beside_normal_traffic_even_with_mutual_tls() {
    let pki = Pki::new();
    let server = pki.leaf(&["a.test", "localhost"], KeyFormat::EcPkcs8);
    let clients = Pki::new();
    let challenges = TempDir::new("acme-alpn");
    let (pem, challenge_der) = challenge_pem("a.test");
    challenges.write("a.test.pem", pem);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .cert(&server)
        .arg("--client-ca")
        .arg(clients.ca_pem_file().display().to_string())
        .arg("--acme-tls-alpn-dir")
        .arg(challenges.path().display().to_string())
        .start()
        .await;

    // The validator: SNI a.test, ALPN acme-tls/1 only, no client certificate.
    let mut tls = client::tls_connect(sc.addr(), "a.test", acme_client()).await;
    assert_eq!(client::alpn(&tls).as_deref(), Some("acme-tls/1"));
    assert_eq!(client::peer_cert(&tls), challenge_der);
    let mut rest = Vec::new();
    let read = within(
        STEP,
        "the challenge connection to close",
        tls.read_to_end(&mut rest),
    )
    .await;
    assert!(
        read.is_ok() && rest.is_empty(),
        "no application data: {read:?} {rest:?}"
    );
    sc.wait_log("answered an ACME TLS-ALPN-01 challenge", STEP)
        .await;

    // A normal client at the same time: the normal certificate, and mutual TLS still applies
    // (without a client certificate it is refused).
    let tls = client::try_tls_connect(
        sc.addr(),
        "a.test",
        client::config(Trust::Ca(pki.ca_der()), client::ALPN_H2_H1),
    )
    .await;
    let refused = match tls {
        Err(_) => true,
        // TLS 1.3: the refusal may come with the first read.
        Ok(mut tls) => {
            let mut buf = [0u8; 1];
            matches!(
                within(STEP, "the refusal", tls.read(&mut buf)).await,
                Err(_) | Ok(0)
            )
        }
    };
    assert!(
        refused,
        "mutual TLS must still refuse a client without a certificate"
    );
}

#[tokio::test]
async fn normal_traffic_is_unchanged_and_unknown_names_get_no_challenge() {
    let pki = Pki::new();
    let server = pki.leaf(&["a.test", "localhost"], KeyFormat::EcPkcs8);
    let challenges = TempDir::new("acme-alpn");
    let (pem, _) = challenge_pem("a.test");
    challenges.write("a.test.pem", pem);
    // An unusable file for another name: named in the log, never served.
    challenges.write("broken.test.pem", "not a certificate");
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .cert(&server)
        .arg("--acme-tls-alpn-dir")
        .arg(challenges.path().display().to_string())
        .start()
        .await;

    // Normal clients for the challenged name get the normal certificate and service.
    for alpn in [client::ALPN_H2_H1, client::ALPN_H1] {
        let mut conn = HttpConn::connect(
            sc.addr(),
            "a.test",
            client::config(Trust::Ca(pki.ca_der()), alpn),
        )
        .await;
        let reply = conn.get("/").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let tls = client::tls_connect(
        sc.addr(),
        "a.test",
        client::config(Trust::AnyCert, client::ALPN_H2_H1),
    )
    .await;
    assert_eq!(client::peer_cert(&tls), server.cert_der);

    // acme-tls/1 for a name without a challenge file: no challenge certificate; http mode
    // offers only h2 and http/1.1, so the handshake is refused.
    for name in ["b.test", "broken.test"] {
        let res = client::try_tls_connect(sc.addr(), name, acme_client()).await;
        assert!(
            res.is_err(),
            "{name}: acme-tls/1 must be refused without a usable challenge file"
        );
    }
    let line = sc
        .wait_log("unusable TLS-ALPN-01 challenge file", STEP)
        .await;
    assert!(line.contains("broken.test.pem"), "{line}");
}
