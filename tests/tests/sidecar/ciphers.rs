//! The cipher suite (issue 27's handshake lever): the sidecar chooses AES-128-GCM first (with
//! SHA-256: the cheapest handshake and the fastest records on AES hardware), then AES-256-GCM,
//! then ChaCha20-Poly1305, whatever order the client lists AES in; a client that lists
//! ChaCha20-Poly1305 before any AES-GCM suite (one without AES hardware) keeps its own order.
//! Checked with rustls clients on TLS 1.3 and 1.2 and with Debian's OpenSSL, which lists
//! AES-256-GCM first.

use std::net::SocketAddr;
use std::process::Stdio;

use harness::backend::Backend;
use harness::client::{self, config_with_suites, Trust, ALPN_H1};
use harness::sidecar::Sidecar;
use harness::wait::{within, STEP};
use rustls::crypto::aws_lc_rs::cipher_suite::{
    TLS13_AES_128_GCM_SHA256 as AES128, TLS13_AES_256_GCM_SHA384 as AES256,
    TLS13_CHACHA20_POLY1305_SHA256 as CHACHA, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 as AES128_12,
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 as AES256_12,
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 as CHACHA_12,
};
use rustls::{CipherSuite, SupportedCipherSuite};

/// The suite the sidecar at `addr` agrees with a client offering `suites` (in that order).
async fn agreed(addr: SocketAddr, suites: &[SupportedCipherSuite]) -> CipherSuite {
    let config = config_with_suites(Trust::AnyCert, ALPN_H1, suites);
    let tls = within(
        STEP,
        "a TLS handshake",
        client::try_tls_connect(addr, "localhost", config),
    )
    .await
    .expect("the handshake");
    tls.get_ref()
        .1
        .negotiated_cipher_suite()
        .expect("a suite agreed")
        .suite()
}

#[tokio::test]
async fn aes_128_gcm_is_chosen_unless_the_client_asks_for_chacha20_first() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder().backend(app.addr()).start().await;
    let addr = sc.addr();
    let cases: [(&[SupportedCipherSuite], CipherSuite, &str); 8] = [
        // rustls' default order lists AES-256-GCM first, as OpenSSL's does.
        (&[AES256, AES128, CHACHA], AES128.suite(), "AES-256 first"),
        (&[AES128, AES256], AES128.suite(), "AES-128 first"),
        (
            &[AES256, CHACHA, AES128],
            AES128.suite(),
            "ChaCha between the two AES",
        ),
        (&[AES256], AES256.suite(), "AES-256 alone"),
        (
            &[CHACHA, AES128, AES256],
            CHACHA.suite(),
            "ChaCha first: its own order",
        ),
        (&[CHACHA], CHACHA.suite(), "ChaCha alone"),
        (
            &[AES256_12, AES128_12],
            AES128_12.suite(),
            "TLS 1.2, AES-256 first",
        ),
        (
            &[CHACHA_12, AES256_12],
            CHACHA_12.suite(),
            "TLS 1.2, ChaCha first",
        ),
    ];
    for (offered, want, case) in cases {
        assert_eq!(agreed(addr, offered).await, want, "{case}");
    }
}

/// What `openssl s_client` (Debian's OpenSSL 3.0) reports agreeing with `extra` arguments.
async fn openssl_agrees(addr: SocketAddr, extra: &[&str]) -> String {
    let out = tokio::process::Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "localhost", "-brief"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let out = within(STEP, "openssl s_client", out)
        .await
        .expect("openssl s_client runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn openssl_with_its_default_order_gets_aes_128_gcm() {
    let app = Backend::echo().await;
    let sc = Sidecar::builder().backend(app.addr()).start().await;
    let text = openssl_agrees(sc.addr(), &[]).await;
    assert!(
        text.contains("Ciphersuite: TLS_AES_128_GCM_SHA256"),
        "OpenSSL's default list (AES-256-GCM first) gets AES-128-GCM: {text}"
    );
    let text = openssl_agrees(
        sc.addr(),
        &[
            "-ciphersuites",
            "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
        ],
    )
    .await;
    assert!(
        text.contains("Ciphersuite: TLS_CHACHA20_POLY1305_SHA256"),
        "ChaCha20 first is followed: {text}"
    );
}
