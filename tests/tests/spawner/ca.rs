//! `spawner ca export` (issue 15), the real binary: it prints the identity trust bundle of a CA
//! store (made here by the spawner's own library, as `spawner run --identity-domain` makes it),
//! the signing CA first and then the `--identity-trust` roots, each once; where there is no CA
//! yet it exits 1 saying so and creates nothing. No Docker engine is involved: the engine
//! address points nowhere.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use harness::bins::bin_path;
use harness::tmp::TempDir;
use harness::wait::within;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use spawner::{IdentityCa as Authority, CA_CERT_FILE};

/// Budget for one run of the command: it reads a file or two.
const RUN: Duration = Duration::from_secs(30);

/// `spawner ca export ARGS`, with no identity settings from the environment and an engine
/// address nothing listens on.
async fn export(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(bin_path("spawner"));
    cmd.args(["ca", "export"])
        .args(args)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .kill_on_drop(true);
    for var in [
        "SPAWNER_IDENTITY_DOMAIN",
        "SPAWNER_IDENTITY_CA_CERT",
        "SPAWNER_IDENTITY_CA_KEY",
        "SPAWNER_IDENTITY_TTL",
        "SPAWNER_IDENTITY_STORE",
        "SPAWNER_IDENTITY_TRUST",
    ] {
        cmd.env_remove(var);
    }
    within(RUN, "spawner ca export", cmd.output())
        .await
        .expect("run spawner ca export")
}

fn certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn common_name(der: &CertificateDer<'_>) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("X.509");
    cert.subject().to_string()
}

fn store_path(dir: &Path) -> String {
    dir.display().to_string()
}

#[tokio::test]
async fn export_prints_the_stores_ca_then_the_extra_roots() {
    let tmp = TempDir::new("spawner-ca-export");
    let domain = "example.internal".parse().expect("domain");
    let store = tmp.path().join("identity");
    let ca = Authority::load_or_create(&store, &domain).expect("the store's CA");
    let old = Authority::load_or_create(&tmp.path().join("old"), &domain).expect("an old CA");
    // The roll-over file as an operator might write it: the old root, and the new one again.
    let trust = tmp.write("trust.pem", format!("{}{}", old.cert_pem(), ca.cert_pem()));

    let out = export(&["--identity-store", &store_path(&store)]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = certificates(&out.stdout);
    let on_disk = certificates(&std::fs::read(store.join(CA_CERT_FILE)).expect("ca.pem"));
    assert_eq!(certs, on_disk, "the bundle is the store's CA");
    assert_eq!(
        common_name(&certs[0]),
        "CN=tls-sidecar identity CA example.internal"
    );

    let out = export(&[
        "--identity-store",
        &store_path(&store),
        "--identity-trust",
        &trust.display().to_string(),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let certs = certificates(&out.stdout);
    assert_eq!(certs.len(), 2, "each root once");
    assert_eq!(certs[0], on_disk[0], "the signing CA first");
    assert_eq!(certs[1], certificates(old.cert_pem().as_bytes())[0]);
}

#[tokio::test]
async fn export_without_a_ca_fails_and_creates_nothing() {
    let tmp = TempDir::new("spawner-ca-none");
    let store = tmp.path().join("identity");
    let out = export(&["--identity-store", &store_path(&store)]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "spawner: no identity CA in {} yet",
            store.display()
        )) && stderr.contains("--identity-domain"),
        "{stderr}"
    );
    assert!(!store.exists(), "ca export made the store");

    // A relative store is a configuration error (2), naming the flag.
    let out = export(&["--identity-store", "identity"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--identity-store"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
