//! Service identity on the real engine (`spawner run --identity-domain`): three demo services
//! on one user-defined network, each given an identity certificate by the spawner's CA. A calls
//! B in plain HTTP on its own loopback (`upstreams`), its sidecar relays over mutual TLS, B's
//! sidecar admits only A (`allow-identities`) and tells B's app who called; C and a client of
//! another CA are refused in the handshake. Certificates with a lifetime of seconds renew under
//! a keep-alive connection and a long call; after the spawner stops they serve until they
//! expire, and a restarted spawner renews them. A sidecar's key is readable in its own mount
//! namespace and nowhere else.
//!
//! Calls are made from inside a target's network namespace (`nsenter --net`, the way its app
//! would), with curl.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use harness::docker::{
    containers_with_label, docker, docker_ok, host_port, images, poll, unique_name, TestRun,
    LIFECYCLE_DEADLINE,
};
use harness::issuer::{Spec, TestCa};
use harness::spawner::Spawner;

const DOMAIN: &str = "test.internal";
/// The relay port every caller's app uses.
pub(super) const RELAY: u16 = 9001;

/// A fresh identity store for one spawner (the CA is created in it at the first start).
pub(super) fn store() -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name("identity-store"));
    std::fs::create_dir_all(&dir).expect("create the store's parent");
    dir.join("identity")
}

/// A demo service on `net`, reachable there as `alias`, opted in under `prefix` with `labels`
/// (suffixes), publishing 8443 on loopback.
pub(super) fn service(
    run: &TestRun,
    net: &str,
    prefix: &str,
    alias: &str,
    labels: &[(&str, &str)],
) -> String {
    service_on(run, net, prefix, alias, &images().sidecar, labels)
}

/// [`service`] asking for sidecar image `image`.
pub(super) fn service_on(
    run: &TestRun,
    net: &str,
    prefix: &str,
    alias: &str,
    image: &str,
    labels: &[(&str, &str)],
) -> String {
    let mut args: Vec<String> = vec![
        "--network".into(),
        net.into(),
        "--network-alias".into(),
        alias.into(),
        "-p".into(),
        "127.0.0.1::8443".into(),
        "--label".into(),
        format!("{prefix}.proxy-image={image}"),
    ];
    for (k, v) in labels {
        args.push("--label".into());
        args.push(format!("{prefix}.{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run.container(&unique_name(alias), &images().demo, &args, &[])
}

/// A (identity `a`, relaying 127.0.0.1:9001 to `b:8443`) and B (identity `b`, admitting `a`).
pub(super) fn caller_and_callee(run: &TestRun, net: &str, prefix: &str) -> (String, String) {
    caller_and_callee_on(run, net, prefix, &images().sidecar)
}

/// [`caller_and_callee`] asking for sidecar image `image`.
pub(super) fn caller_and_callee_on(
    run: &TestRun,
    net: &str,
    prefix: &str,
    image: &str,
) -> (String, String) {
    let upstream = format!("{RELAY}=b:8443");
    let a = service_on(
        run,
        net,
        prefix,
        "a",
        image,
        &[("identity", "a"), ("upstreams", &upstream)],
    );
    let b = service_on(
        run,
        net,
        prefix,
        "b",
        image,
        &[("identity", "b"), ("allow-identities", "a")],
    );
    (a, b)
}

/// The running sidecar of a target.
fn sidecar_of(prefix: &str, target: &str) -> String {
    poll(LIFECYCLE_DEADLINE, "a running sidecar", || {
        containers_with_label(&format!("{prefix}.sidecar-for={target}"))
            .into_iter()
            .find(|c| c.running)
            .map(|c| c.id)
    })
    .0
}

fn pid_of(container: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.State.Pid}}", container])
}

/// curl run in `container`'s network namespace, as its app would call.
fn curl_in(container: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.args(["-t", &pid_of(container), "-n", "curl", "-s", "-m", "20"]);
    cmd.args(args);
    cmd
}

/// `GET http://127.0.0.1:9001/<path>` from inside `container`: the answer's body, if any.
pub(super) fn call(container: &str, path: &str) -> Option<String> {
    let out = curl_in(container, &[&format!("http://127.0.0.1:{RELAY}/{path}")])
        .output()
        .expect("run nsenter curl");
    let body = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.success() && !body.is_empty()).then_some(body)
}

/// The value of header `name` in the demo's echo of a request.
fn echoed<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// The fingerprint of the client certificate B's sidecar saw on one call.
fn caller_fingerprint(body: &str) -> String {
    echoed(body, "x-client-cert-fingerprint")
        .unwrap_or_else(|| panic!("no client certificate header in {body}"))
        .to_string()
}

fn logs_of(container: &str) -> String {
    let out = docker(&["logs", container]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub(super) fn identity_args(store: &Path, ttl: &str) -> Vec<String> {
    vec![
        "--identity-domain".into(),
        DOMAIN.into(),
        "--identity-store".into(),
        store.display().to_string(),
        "--identity-ttl".into(),
        ttl.into(),
    ]
}

#[test]
fn services_call_each_other_through_their_sidecars_over_mutual_tls() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let net = run.network(&unique_name("idnet"));
    let store = store();
    let args = identity_args(&store, "1h");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let spawner = Spawner::start(&prefix, &args);
    let (a, b) = caller_and_callee(&run, &net, &prefix);
    let upstream = format!("{RELAY}=b:8443");
    let c = service(
        &run,
        &net,
        &prefix,
        "c",
        &[("identity", "c"), ("upstreams", &upstream)],
    );
    let sidecar_c = sidecar_of(&prefix, &c);
    sidecar_of(&prefix, &a);
    sidecar_of(&prefix, &b);

    // A's app calls B in plain on its own loopback and gets B's app's answer, which saw A.
    let (body, _) = poll(LIFECYCLE_DEADLINE, "A's call to B answered", || {
        call(&a, "from-a")
    });
    assert!(body.starts_with("GET /from-a HTTP/1.1"), "B's echo: {body}");
    let san = echoed(&body, "x-client-cert-san").unwrap_or_default();
    assert!(
        san.contains(&format!("URI:spiffe://{DOMAIN}/a")),
        "B's app sees A's identity: {body}"
    );
    assert!(
        !san.contains("spiffe://test.internal/c"),
        "only A's identity: {body}"
    );

    // `spawner status` names each target's identity.
    let rows = harness::spawner::status_json(&prefix, &args);
    let identity_of = |id: &str| {
        rows.iter()
            .find(|r| r["target_id"] == id)
            .map(|r| r["identity"].clone())
    };
    assert_eq!(
        identity_of(&a),
        Some(serde_json::json!("spiffe://test.internal/a"))
    );
    assert_eq!(
        identity_of(&c),
        Some(serde_json::json!("spiffe://test.internal/c"))
    );

    // C is not in B's allow-identities: refused in the handshake, its app sees a closed
    // connection, C's sidecar says why.
    assert_eq!(call(&c, "from-c"), None, "C must not reach B's app");
    poll(
        LIFECYCLE_DEADLINE,
        "C's sidecar logging the refusal",
        || {
            let log = logs_of(&sidecar_c);
            log.lines()
                .any(|l| {
                    l.contains("upstream call failed")
                        && l.contains("127.0.0.1:9001=b:8443")
                        && l.contains("step=handshake")
                })
                .then_some(())
        },
    );

    // A client with a certificate of another CA, claiming A's identity, is refused by B.
    let dir = std::env::temp_dir().join(unique_name("other-ca"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let other = TestCa::new("other").issue(
        &Spec::client("a")
            .uri(&format!("spiffe://{DOMAIN}/a"))
            .dns("a"),
    );
    let (cert, key) = other.write_to(&dir, "a");
    let b_port = host_port(&b, 8443);
    let out = Command::new("curl")
        .args(["-sk", "-m", "10", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(format!("https://127.0.0.1:{b_port}/"))
        .output()
        .expect("run curl");
    assert!(
        !out.status.success() && out.stdout.is_empty(),
        "a certificate of another CA must be refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The trust bundle `spawner ca export` prints verifies a sidecar's identity from outside:
    // A's sidecar serves its identity certificate to a client asking for `a`.
    let bundle = export_bundle(&store);
    let bundle_file = dir.join("bundle.pem");
    std::fs::write(&bundle_file, &bundle).expect("write bundle");
    let a_port = host_port(&a, 8443);
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "--cacert"])
        .arg(&bundle_file)
        .args(["--resolve", &format!("a:{a_port}:127.0.0.1")])
        .arg(format!("https://a:{a_port}/outside"))
        .output()
        .expect("run curl");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("GET /outside"),
        "the exported bundle verifies A's identity: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(spawner);
}

/// `spawner ca export` against `store`.
fn export_bundle(store: &Path) -> String {
    let out = Command::new(harness::bins::bin_path("spawner"))
        .args(["ca", "export", "--identity-store"])
        .arg(store)
        .output()
        .expect("run spawner ca export");
    assert!(
        out.status.success(),
        "spawner ca export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    pem
}

/// How many TCP connections curl -v opened (`* Connected to` lines in its stderr).
fn connections_opened(curl_stderr: &[u8]) -> usize {
    String::from_utf8_lossy(curl_stderr)
        .matches("Connected to")
        .count()
}

/// Output of a background command.
fn finish(child: std::process::Child) -> Output {
    child
        .wait_with_output()
        .expect("wait for the background call")
}

#[test]
fn identities_renew_under_live_connections_and_outlive_a_stopped_spawner() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let net = run.network(&unique_name("idnet"));
    let store = store();
    // Renewed every 5 s.
    let args = identity_args(&store, "10s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut spawner = Spawner::start(&prefix, &args);
    let (a, b) = caller_and_callee(&run, &net, &prefix);
    let certs = [&a, &b].map(|t| identity_volume(&sidecar_of(&prefix, t)).join("cert.pem"));
    let (first, _) = poll(LIFECYCLE_DEADLINE, "A's call to B answered", || {
        call(&a, "first")
    });
    let first = caller_fingerprint(&first);
    let ca_before = std::fs::read(store.join("ca.pem")).expect("the CA in the store");

    // One keep-alive connection, sixteen requests a second apart (spanning several renewals),
    // and one call that takes twelve seconds, both started now.
    let urls = format!("http://127.0.0.1:{RELAY}/keep-[1-16]");
    let keep_alive = curl_in(&a, &["-v", "--rate", "1/s", &urls])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the keep-alive calls");
    let long = curl_in(
        &a,
        &[
            "-H",
            "x-demo-delay-ms: 12000",
            &format!("http://127.0.0.1:{RELAY}/long"),
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .expect("start the long call");

    // New connections present a renewed certificate.
    poll(
        Duration::from_secs(20),
        "a renewed client certificate",
        || {
            let body = call(&a, "renewed")?;
            (caller_fingerprint(&body) != first).then_some(())
        },
    );

    let keep_alive = finish(keep_alive);
    let text = String::from_utf8_lossy(&keep_alive.stdout).to_string();
    assert!(keep_alive.status.success(), "keep-alive calls: {text}");
    assert_eq!(
        connections_opened(&keep_alive.stderr),
        1,
        "one connection for every request: {}",
        String::from_utf8_lossy(&keep_alive.stderr)
    );
    let answers: Vec<&str> = text.split("GET /keep-").skip(1).collect();
    assert_eq!(
        answers.len(),
        16,
        "every keep-alive request answered: {text}"
    );
    let fingerprints: std::collections::HashSet<String> =
        answers.iter().map(|a| caller_fingerprint(a)).collect();
    assert_eq!(
        fingerprints.len(),
        1,
        "one connection throughout, never re-made: {text}"
    );
    let long = finish(long);
    let long_text = String::from_utf8_lossy(&long.stdout).to_string();
    assert!(
        long.status.success() && long_text.starts_with("GET /long"),
        "the long call finished across renewals: {long_text}"
    );

    // The spawner stops right after it renewed both certificates (so what the sidecars hold
    // then is good for about 10 s, whatever the engine's pace), and they keep serving...
    for cert in &certs {
        let before = std::fs::read(cert).expect("an identity certificate");
        poll(Duration::from_secs(20), "a renewal", || {
            (std::fs::read(cert).ok()? != before).then_some(())
        });
    }
    spawner.kill();
    let (body, _) = poll(LIFECYCLE_DEADLINE, "a call right after the stop", || {
        call(&a, "after-stop")
    });
    let last = caller_fingerprint(&body);
    // ... until they expire (10 s at most after the last renewal).
    poll(
        Duration::from_secs(30),
        "calls failing once the certificates expired",
        || call(&a, "expired").is_none().then_some(()),
    );

    // A restarted spawner (same store, same CA) renews them.
    let _spawner = Spawner::start(&prefix, &args);
    let (body, _) = poll(Duration::from_secs(30), "calls answered again", || {
        call(&a, "renewed-after-restart")
    });
    assert_ne!(caller_fingerprint(&body), last, "a new certificate");
    assert_eq!(
        std::fs::read(store.join("ca.pem")).expect("the CA in the store"),
        ca_before,
        "the CA is reused after a restart"
    );
}

/// Where a container's `/identity` volume is on the host.
fn identity_volume(container: &str) -> PathBuf {
    let format = "{{range .Mounts}}{{if eq .Destination \"/identity\"}}{{.Source}}{{end}}{{end}}";
    let source = docker_ok(&["inspect", "-f", format, container]);
    assert!(!source.is_empty(), "{container} has an /identity volume");
    PathBuf::from(source)
}

/// Runs busybox `applet args` as the sidecar's user inside `sidecar`'s mount namespace: the
/// sidecar's image holds nothing but its binary, so the test puts the host's static busybox into
/// the sidecar's own volume first.
fn busybox_in(sidecar: &str, applet_args: &[&str]) -> Output {
    let mut args = vec!["exec", "-u", "65534:65534", sidecar, "/identity/busybox"];
    args.extend_from_slice(applet_args);
    docker(&args)
}

#[test]
fn a_sidecar_reads_its_own_key_and_no_other_sidecar_s() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let net = run.network(&unique_name("idnet"));
    let store = store();
    let args = identity_args(&store, "1h");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _spawner = Spawner::start(&prefix, &args);
    let a = service(&run, &net, &prefix, "a", &[("identity", "a")]);
    let b = service(&run, &net, &prefix, "b", &[("identity", "b")]);
    let (sa, sb) = (sidecar_of(&prefix, &a), sidecar_of(&prefix, &b));
    let (va, vb) = (identity_volume(&sa), identity_volume(&sb));
    poll(LIFECYCLE_DEADLINE, "both identities delivered", || {
        (va.join("key.pem").is_file() && vb.join("key.pem").is_file()).then_some(())
    });
    let busybox = which("busybox");
    std::fs::copy(&busybox, va.join("busybox")).expect("copy busybox into A's volume");

    // Its own key: readable by the sidecar's user, and nothing but its identity beside it.
    let own = busybox_in(&sa, &["cat", "/identity/key.pem"]);
    assert!(
        own.status.success() && String::from_utf8_lossy(&own.stdout).contains("PRIVATE KEY"),
        "A's sidecar reads its own key: {}",
        String::from_utf8_lossy(&own.stderr)
    );
    let listing = busybox_in(&sa, &["ls", "/identity"]);
    let mut files: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    files.sort();
    assert_eq!(files, ["busybox", "ca.pem", "cert.pem", "key.pem"]);

    // B's key: its volume is not in A's mount namespace, at its host path or anywhere.
    let other = vb.join("key.pem");
    let theirs = busybox_in(&sa, &["cat", &other.display().to_string()]);
    assert!(
        !theirs.status.success() && theirs.stdout.is_empty(),
        "A's sidecar must not read B's key"
    );
    let mounts = busybox_in(&sa, &["cat", "/proc/self/mountinfo"]);
    let mounts = String::from_utf8_lossy(&mounts.stdout).to_string();
    let b_volume = vb
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    assert!(
        !b_volume.is_empty() && !mounts.contains(&b_volume),
        "B's volume {b_volume} is not mounted in A's sidecar: {mounts}"
    );
    let found = busybox_in(&sa, &["find", "/", "-xdev", "-name", "key.pem"]);
    let found = String::from_utf8_lossy(&found.stdout).to_string();
    assert_eq!(found.trim(), "", "no key on A's root file system: {found}");

    // Never through the environment or labels.
    let inspect = docker_ok(&["inspect", &sa]);
    assert!(
        !inspect.contains("PRIVATE KEY"),
        "no key in A's sidecar's config"
    );
}

fn which(program: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .expect("run sh");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "{program} is needed (Debian's busybox-static)"
    );
    PathBuf::from(path)
}

#[test]
fn the_compose_example_gives_two_services_mutual_tls_with_one_label_each() {
    let project = harness::compose::Compose::new("docs/identity/docker-compose.yml", &[]);
    project.up();
    let web = project.container("web");
    assert!(!web.is_empty(), "the web service runs");
    let (body, _) = poll(
        Duration::from_secs(30),
        "web's call to api answered",
        || call(&web, "compose"),
    );
    assert!(
        body.starts_with("GET /compose HTTP/1.1"),
        "api's echo: {body}"
    );
    let san = echoed(&body, "x-client-cert-san").unwrap_or_default();
    assert!(
        san.contains("URI:spiffe://example.internal/web"),
        "api's app sees web's identity: {body}"
    );
}

/// Writes `bytes` to `path` the way a deployment replaces a file: a temporary file beside it,
/// renamed over it (with `mode`).
fn replace_file(path: &Path, bytes: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).expect("chmod");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The leaf certificate served on 127.0.0.1:`port` for `sni`, as PEM (`openssl s_client`; the
/// server's certificate comes before it asks for the client's).
fn served_pem(port: u16, sni: &str) -> Option<String> {
    let out = Command::new("timeout")
        .args(["5", "openssl", "s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", sni])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    Some(text[start..end].to_string())
}

/// How many certificates a PEM file holds.
fn certificates_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches("BEGIN CERTIFICATE")
        .count()
}

/// Whether the leaf in `cert` verifies against the roots in `ca` alone (openssl).
fn issued_by(cert: &Path, ca: &Path) -> bool {
    Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(ca)
        .arg(cert)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_ca_roll_over_needs_no_restart_and_drops_no_connection() {
    use spawner::{IdentityCa as Authority, CA_CERT_FILE, CA_KEY_FILE};
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let net = run.network(&unique_name("idnet"));
    // Two CAs, made as the spawner makes its own; the operator gives the signing one as files.
    let dir = std::env::temp_dir().join(unique_name("rollover"));
    let domain = DOMAIN.parse().expect("domain");
    for ca in ["old", "new"] {
        Authority::load_or_create(&dir.join(ca), &domain).expect("make a CA");
    }
    let ca_cert = |ca: &str| dir.join(ca).join(CA_CERT_FILE);
    let ca_key = |ca: &str| dir.join(ca).join(CA_KEY_FILE);
    let read = |p: PathBuf| std::fs::read(p).expect("read");
    let (signing_cert, signing_key, trust) = (
        dir.join("signing.pem"),
        dir.join("signing-key.pem"),
        dir.join("trust.pem"),
    );
    replace_file(&signing_key, &read(ca_key("old")), 0o600);
    replace_file(&signing_cert, &read(ca_cert("old")), 0o644);
    replace_file(&trust, b"", 0o644);
    let args = [
        "--identity-domain",
        DOMAIN,
        "--identity-ca-cert",
        &signing_cert.display().to_string(),
        "--identity-ca-key",
        &signing_key.display().to_string(),
        "--identity-trust",
        &trust.display().to_string(),
        "--resync-interval",
        "1s",
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _spawner = Spawner::start(&prefix, &args);
    let (a, b) = caller_and_callee(&run, &net, &prefix);
    let (va, vb) = (
        identity_volume(&sidecar_of(&prefix, &a)),
        identity_volume(&sidecar_of(&prefix, &b)),
    );
    let (first, _) = poll(LIFECYCLE_DEADLINE, "A's call to B answered", || {
        call(&a, "first")
    });
    let first = caller_fingerprint(&first);
    assert!(issued_by(&va.join("cert.pem"), &ca_cert("old")));

    // One keep-alive connection through the whole roll-over: up to 200 requests, 2 a second,
    // still going when the old root is gone (checked below), then stopped.
    let urls = format!("http://127.0.0.1:{RELAY}/keep-[1-200]");
    let mut keep_alive = curl_in(&a, &["-v", "--rate", "2/s", &urls])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the keep-alive calls");

    // 1. The new CA is trusted beside the old one.
    replace_file(&trust, &read(ca_cert("new")), 0o644);
    poll(Duration::from_secs(20), "both roots in B's bundle", || {
        (certificates_in(&vb.join("ca.pem")) == 2).then_some(())
    });
    assert!(call(&a, "both-trusted").is_some(), "calls go on");

    // 2. The new CA signs; the old one stays trusted: every certificate is reissued by the new.
    replace_file(&signing_key, &read(ca_key("new")), 0o600);
    replace_file(&signing_cert, &read(ca_cert("new")), 0o644);
    replace_file(&trust, &read(ca_cert("old")), 0o644);
    poll(
        Duration::from_secs(20),
        "certificates of the new CA",
        || {
            (issued_by(&va.join("cert.pem"), &ca_cert("new"))
                && issued_by(&vb.join("cert.pem"), &ca_cert("new")))
            .then_some(())
        },
    );
    // Both sidecars have picked their new certificates up: A presents its own on new calls, B
    // serves its own.
    poll(
        LIFECYCLE_DEADLINE,
        "A presenting its new certificate",
        || {
            let body = call(&a, "new-ca")?;
            (caller_fingerprint(&body) != first).then_some(())
        },
    );
    let served = dir.join("served-b.pem");
    let b_port = host_port(&b, 8443);
    poll(LIFECYCLE_DEADLINE, "B serving its new certificate", || {
        std::fs::write(&served, served_pem(b_port, "b")?).ok()?;
        issued_by(&served, &ca_cert("new")).then_some(())
    });

    // 3. The old CA is removed: only the new one is trusted, and calls go on.
    replace_file(&trust, b"", 0o644);
    poll(Duration::from_secs(20), "one root in B's bundle", || {
        (certificates_in(&vb.join("ca.pem")) == 1).then_some(())
    });
    assert!(
        issued_by(&vb.join("ca.pem"), &ca_cert("new")),
        "the new root"
    );
    assert!(call(&a, "old-removed").is_some(), "calls go on");
    assert!(
        keep_alive.try_wait().expect("poll curl").is_none(),
        "the keep-alive connection spans the whole roll-over"
    );

    // The connection made under the old CA was never dropped: curl opened one connection, and
    // every request on it was answered.
    let _ = keep_alive.kill();
    let keep_alive = finish(keep_alive);
    let text = String::from_utf8_lossy(&keep_alive.stdout).to_string();
    assert_eq!(
        connections_opened(&keep_alive.stderr),
        1,
        "one connection for every request: {}",
        String::from_utf8_lossy(&keep_alive.stderr)
    );
    let answers: Vec<&str> = text.split("GET /keep-").skip(1).collect();
    assert!(answers.len() >= 6, "requests answered throughout: {text}");
    let seen: std::collections::HashSet<String> =
        answers.iter().map(|a| caller_fingerprint(a)).collect();
    assert_eq!(seen.len(), 1, "one connection throughout: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
