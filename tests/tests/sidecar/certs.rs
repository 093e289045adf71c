//! Sidecar certificates: hot reload (atomic rename, in-place rewrite, certbot symlink swap,
//! SIGHUP, the periodic check) without dropping open connections, broken renewals that keep the
//! old certificate and show in logs and metrics, SNI selection in `--certs-dir` (certbot and flat,
//! exact and wildcard, the default), thousands of pairs at start, and the expiry metric.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::backend::Backend;
use harness::certdir::{replace_atomic, rewrite_in_place, symlink, write, CertsDir};
use harness::client::{self, HttpConn, Trust, ALPN_H1};
use harness::issuer::{unix_time, Issued, Spec, TestCa};
use harness::sidecar::{run_expect_fail, Sidecar};
use harness::wait::{poll_until_async, within, STEP};
use http::StatusCode;
use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;

/// Reloads come from inotify plus a 250 ms debounce; this bounds a hang, on a loaded CI machine.
const RELOAD: Duration = Duration::from_secs(10);

/// A reload interval long enough that the periodic check never fires during a test, so a reload
/// seen must have come from inotify or SIGHUP.
const NO_PERIODIC: &str = "1h";

/// A client that accepts any certificate, so a test can compare which one was served.
fn any_cert() -> Arc<ClientConfig> {
    client::config(Trust::AnyCert, ALPN_H1)
}

/// The same, without SNI.
fn any_cert_no_sni() -> Arc<ClientConfig> {
    let mut config = (*any_cert()).clone();
    config.enable_sni = false;
    Arc::new(config)
}

/// The leaf a new connection with SNI `sni` is served.
async fn served(sc: &Sidecar, sni: &str) -> CertificateDer<'static> {
    client::peer_cert(&client::tls_connect(sc.addr(), sni, any_cert()).await)
}

/// Polls new connections until they are served `want`; returns how long that took.
async fn wait_served(sc: &Sidecar, sni: &str, want: &Issued, what: &str) -> Duration {
    let started = Instant::now();
    let addr = sc.addr();
    poll_until_async(RELOAD, what, || async move {
        let tls = client::try_tls_connect(addr, sni, any_cert()).await.ok()?;
        (client::peer_cert(&tls) == want.der).then_some(())
    })
    .await;
    started.elapsed()
}

/// `/metrics` from the admin listener.
async fn metrics(sc: &Sidecar) -> String {
    let reply = client::plain_get(sc.admin_addr(), "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text()
}

/// The value of the sample `series` (name with labels, exactly as exposed), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const RELOAD_OK: &str = "sidecar_certificate_reloads_total{result=\"success\"}";
const RELOAD_FAILED: &str = "sidecar_certificate_reloads_total{result=\"failure\"}";

fn expiry(name: &str) -> String {
    format!("sidecar_certificate_expiry_seconds{{name=\"{name}\"}}")
}

/// Polls `/metrics` until `series` satisfies `ok`; returns its value.
async fn wait_sample(sc: &Sidecar, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let admin = sc.admin_addr();
    let ok = &ok;
    poll_until_async(
        RELOAD,
        &format!("{series} to reach the expected value"),
        || async move {
            let text = client::plain_get(admin, "/metrics").await.text();
            sample(&text, series).filter(|v| ok(*v))
        },
    )
    .await
}

/// Waits for a log line written after the first `from` lines that contains every needle.
async fn wait_log_after(sc: &Sidecar, from: usize, needles: &[&str]) -> String {
    let deadline = Instant::now() + RELOAD;
    loop {
        if let Some(line) = sc
            .logs()
            .into_iter()
            .skip(from)
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line containing {needles:?} after line {from} within {RELOAD:?}; {}",
            sc.transcript()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Asserts an expiry gauge says `not_after - now`, give or take the test's own duration.
fn assert_expiry(value: f64, not_after: i64, what: &str) {
    let want = (not_after - now_unix()) as f64;
    assert!(
        (value - want).abs() < 300.0,
        "{what}: expiry gauge {value}, expected about {want}"
    );
}

/// An h1 keep-alive connection, used once so it is known to work before the reload.
async fn open_keepalive(sc: &Sidecar) -> (HttpConn, CertificateDer<'static>) {
    let tls = client::tls_connect(sc.addr(), "localhost", any_cert()).await;
    let cert = client::peer_cert(&tls);
    let mut conn = HttpConn::over(tls, format!("localhost:{}", sc.addr().port())).await;
    assert_eq!(conn.get("/before").await.status, StatusCode::OK);
    (conn, cert)
}

/// How a renewal writes the new pair over the old one.
#[derive(Clone, Copy, Debug)]
enum Renewal {
    AtomicRename,
    InPlaceRewrite,
}

/// The renewal is noticed through inotify (no SIGHUP, periodic check out of reach): new
/// connections get the new certificate, the open keep-alive connection keeps working on the old
/// one, and the log, the success counter and the expiry gauge follow.
async fn renewal_is_picked_up(how: Renewal) {
    let ca = TestCa::new("server CA");
    let old = ca.issue(&Spec::server(&["localhost"]).valid((2024, 1, 1), (2040, 1, 1)));
    let new = ca.issue(&Spec::server(&["localhost"]).valid((2024, 1, 1), (2041, 1, 1)));
    let dir = CertsDir::new();
    let (cert, key) = dir.flat("tls", &old);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--cert")
        .arg(cert.display().to_string())
        .arg("--key")
        .arg(key.display().to_string())
        .arg("--reload-interval")
        .arg(NO_PERIODIC)
        .admin()
        .start()
        .await;
    let before = metrics(&sc).await;
    let ok_before = sample(&before, RELOAD_OK).expect("reload success counter exposed");
    assert_expiry(
        sample(&before, &expiry("default")).expect("expiry gauge for --cert"),
        unix_time(2040, 1, 1),
        "before renewal",
    );

    let (mut kept, kept_cert) = open_keepalive(&sc).await;
    assert_eq!(kept_cert, old.der, "the old certificate is served first");

    let renewed = Instant::now();
    match how {
        Renewal::AtomicRename => {
            replace_atomic(&key, &new.key_pem);
            replace_atomic(&cert, &new.cert_pem);
        }
        Renewal::InPlaceRewrite => {
            rewrite_in_place(&key, &new.key_pem);
            rewrite_in_place(&cert, &new.cert_pem);
        }
    }
    wait_served(
        &sc,
        "localhost",
        &new,
        "new connections to get the renewed certificate",
    )
    .await;
    println!(
        "{how:?}: renewed certificate served {:?} after the write",
        renewed.elapsed()
    );

    let fingerprint = harness::backend::sha256_fingerprint(new.der.as_ref());
    sc.wait_log_all(
        &["certificate loaded", "name=default", &fingerprint],
        RELOAD,
    )
    .await;
    wait_sample(&sc, RELOAD_OK, |v| v > ok_before).await;
    let after = metrics(&sc).await;
    assert_expiry(
        sample(&after, &expiry("default")).expect("expiry gauge after renewal"),
        unix_time(2041, 1, 1),
        "after renewal",
    );

    // The connection opened before the reload is untouched: same TLS session, still proxying.
    let reply = kept.get("/after").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{how:?}: open connection broken"
    );
    assert!(
        app.requests().iter().any(|r| r.path == "/after"),
        "the request on the kept connection reached the backend"
    );
    // A second new connection, in case the first one was served mid-swap.
    assert_eq!(served(&sc, "localhost").await, new.der);
}

#[tokio::test]
async fn renewal_by_atomic_rename_is_picked_up_without_dropping_connections() {
    renewal_is_picked_up(Renewal::AtomicRename).await;
}

#[tokio::test]
async fn renewal_by_in_place_rewrite_is_picked_up_without_dropping_connections() {
    renewal_is_picked_up(Renewal::InPlaceRewrite).await;
}

/// `--cert`/`--key` as symlinks into another directory (as a Kubernetes secret mount is): a
/// rewrite of the target files is invisible to the watch on the symlinks' directory, so only
/// SIGHUP or the periodic check can notice it.
struct LinkedPair {
    _links: CertsDir,
    target: CertsDir,
    cert_link: String,
    key_link: String,
}

fn linked_pair(issued: &Issued) -> LinkedPair {
    let target = CertsDir::new();
    target.flat("tls", issued);
    let links = CertsDir::new();
    let cert_link = links.path().join("tls.crt");
    let key_link = links.path().join("tls.key");
    symlink(
        &target.path().join("tls.crt").display().to_string(),
        &cert_link,
    );
    symlink(
        &target.path().join("tls.key").display().to_string(),
        &key_link,
    );
    LinkedPair {
        _links: links,
        target,
        cert_link: cert_link.display().to_string(),
        key_link: key_link.display().to_string(),
    }
}

impl LinkedPair {
    fn rewrite(&self, issued: &Issued) {
        rewrite_in_place(&self.target.path().join("tls.key"), &issued.key_pem);
        rewrite_in_place(&self.target.path().join("tls.crt"), &issued.cert_pem);
    }
}

#[tokio::test]
async fn sighup_reloads_a_change_that_no_watch_sees() {
    let ca = TestCa::new("server CA");
    let old = ca.issue(&Spec::server(&["localhost"]));
    let new = ca.issue(&Spec::server(&["localhost"]));
    let pair = linked_pair(&old);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--cert")
        .arg(&pair.cert_link)
        .arg("--key")
        .arg(&pair.key_link)
        .arg("--reload-interval")
        .arg(NO_PERIODIC)
        .admin()
        .start()
        .await;
    let (mut kept, _) = open_keepalive(&sc).await;
    pair.rewrite(&new);
    // The premise: nothing but SIGHUP can pick this change up. Give a watch (and its 250 ms
    // debounce) ample time to react if it did see it, then check it did not.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        served(&sc, "localhost").await,
        old.der,
        "the rewrite behind the symlinks must not be noticed without SIGHUP"
    );

    let logs_before = sc.logs().len();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &sc.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let took = wait_served(&sc, "localhost", &new, "SIGHUP to load the new certificate").await;
    println!("SIGHUP: new certificate served {took:?} after the signal");
    wait_log_after(&sc, logs_before, &["SIGHUP"]).await;
    wait_sample(&sc, RELOAD_OK, |v| v >= 1.0).await;
    assert_eq!(kept.get("/after").await.status, StatusCode::OK);
    // Still running and serving: SIGHUP is not a stop signal.
    assert_eq!(served(&sc, "localhost").await, new.der);
}

#[tokio::test]
async fn periodic_check_reloads_a_change_that_no_watch_sees() {
    let ca = TestCa::new("server CA");
    let old = ca.issue(&Spec::server(&["localhost"]));
    let new = ca.issue(&Spec::server(&["localhost"]));
    let pair = linked_pair(&old);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--cert")
        .arg(&pair.cert_link)
        .arg("--key")
        .arg(&pair.key_link)
        .arg("--reload-interval")
        .arg("1s")
        .admin()
        .start()
        .await;
    assert_eq!(served(&sc, "localhost").await, old.der);
    pair.rewrite(&new);
    let took = wait_served(&sc, "localhost", &new, "the 1 s periodic check to reload").await;
    println!("periodic check (1s): new certificate served {took:?} after the rewrite");
    wait_sample(&sc, RELOAD_OK, |v| v >= 1.0).await;
}

#[tokio::test]
async fn broken_renewals_keep_the_old_certificate_until_a_good_one() {
    let ca = TestCa::new("server CA");
    let old = ca.issue(&Spec::server(&["localhost"]));
    let next = ca.issue(&Spec::server(&["localhost"]));
    let other = ca.issue(&Spec::server(&["localhost"]));
    let dir = CertsDir::new();
    let (cert, key) = dir.flat("tls", &old);
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--cert")
        .arg(&cert_s)
        .arg("--key")
        .arg(&key_s)
        .arg("--reload-interval")
        .arg(NO_PERIODIC)
        .admin()
        .start()
        .await;
    let (mut kept, _) = open_keepalive(&sc).await;
    let truncated = &next.cert_pem[..next.cert_pem.len() / 2];

    // Each step leaves the pair broken in one way; the file to blame and a word of the reason.
    type Step<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str, &'a str);
    let steps: Vec<Step> = vec![
        (
            "garbage certificate",
            Box::new(|| replace_atomic(&cert, "this is not a certificate\n")),
            &cert_s,
            "no PEM certificate",
        ),
        (
            "key of another certificate",
            Box::new(|| {
                replace_atomic(&cert, &next.cert_pem);
                replace_atomic(&key, &other.key_pem);
            }),
            &key_s,
            "does not match",
        ),
        (
            "truncated certificate",
            Box::new(|| {
                rewrite_in_place(&cert, truncated);
                replace_atomic(&key, &next.key_pem);
            }),
            &cert_s,
            "PEM",
        ),
        (
            "missing key",
            Box::new(|| {
                std::fs::remove_file(&key).expect("remove key");
                replace_atomic(&cert, &next.cert_pem);
            }),
            &key_s,
            "No such file or directory",
        ),
    ];
    for (i, (what, breakage, file, reason)) in steps.iter().enumerate() {
        let from = sc.logs().len();
        breakage();
        let line = wait_log_after(&sc, from, &["certificate reload failed", file, reason]).await;
        println!("{what}: {line}");
        wait_sample(&sc, RELOAD_FAILED, |v| v >= (i + 1) as f64).await;
        assert_eq!(
            served(&sc, "localhost").await,
            old.der,
            "{what}: the old certificate must still be served"
        );
        assert_eq!(
            kept.get(&format!("/during-{i}")).await.status,
            StatusCode::OK,
            "{what}: the open connection keeps working"
        );
    }
    let text = metrics(&sc).await;
    assert_eq!(
        sample(&text, RELOAD_OK),
        Some(0.0),
        "no reload succeeded while the files were broken:\n{text}"
    );

    // A good renewal recovers.
    write(&key, &next.key_pem);
    wait_served(&sc, "localhost", &next, "the repaired pair to be served").await;
    wait_sample(&sc, RELOAD_OK, |v| v >= 1.0).await;
    sc.wait_log_all(
        &[
            "certificate loaded",
            &harness::backend::sha256_fingerprint(next.der.as_ref()),
        ],
        RELOAD,
    )
    .await;
}

#[tokio::test]
async fn certbot_symlink_swap_is_picked_up() {
    let ca = TestCa::new("server CA");
    let v1 = ca.issue(&Spec::server(&["site.example"]));
    let v2 = ca.issue(&Spec::server(&["site.example"]));
    let v3 = ca.issue(&Spec::server(&["site.example"]));
    let dir = CertsDir::new();
    dir.certbot("site.example", &v1);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--certs-dir")
        .arg(dir.arg())
        .arg("--reload-interval")
        .arg(NO_PERIODIC)
        .admin()
        .start()
        .await;
    assert_eq!(served(&sc, "site.example").await, v1.der);
    let tls = client::tls_connect(sc.addr(), "site.example", any_cert()).await;
    let mut kept = HttpConn::over(tls, "site.example".into()).await;
    assert_eq!(kept.get("/before").await.status, StatusCode::OK);

    dir.certbot_renew("site.example", 2, &v2);
    let took = wait_served(&sc, "site.example", &v2, "certbot renewal 2 to be served").await;
    println!("certbot symlink swap: renewed certificate served {took:?} after the swap");
    dir.certbot_renew("site.example", 3, &v3);
    wait_served(&sc, "site.example", &v3, "certbot renewal 3 to be served").await;
    assert_eq!(kept.get("/after").await.status, StatusCode::OK);
    sc.wait_log_all(
        &[
            "certificate loaded",
            "name=site.example",
            &harness::backend::sha256_fingerprint(v3.der.as_ref()),
        ],
        RELOAD,
    )
    .await;
    let text = metrics(&sc).await;
    assert!(
        sample(&text, &expiry("site.example")).is_some(),
        "expiry gauge named after the certbot directory:\n{text}"
    );
}

#[tokio::test]
async fn certbot_pair_losing_its_key_keeps_serving_until_repaired() {
    let ca = TestCa::new("server CA");
    let v1 = ca.issue(&Spec::server(&["site.example"]));
    let v2 = ca.issue(&Spec::server(&["site.example"]));
    let dir = CertsDir::new();
    dir.certbot("site.example", &v1);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--certs-dir")
        .arg(dir.arg())
        .arg("--reload-interval")
        .arg(NO_PERIODIC)
        .admin()
        .start()
        .await;
    let privkey = dir.path().join("live/site.example/privkey.pem");
    let from = sc.logs().len();
    std::fs::remove_file(&privkey).expect("remove the privkey.pem link");
    wait_log_after(
        &sc,
        from,
        &[
            "certificate reload failed",
            &privkey.display().to_string(),
            "No such file or directory",
        ],
    )
    .await;
    wait_sample(&sc, RELOAD_FAILED, |v| v >= 1.0).await;
    assert_eq!(served(&sc, "site.example").await, v1.der);
    dir.certbot_renew("site.example", 2, &v2);
    wait_served(&sc, "site.example", &v2, "the repaired certbot pair").await;
    wait_sample(&sc, RELOAD_OK, |v| v >= 1.0).await;
}

#[tokio::test]
async fn flat_pair_losing_its_key_keeps_serving_until_repaired() {
    let ca = TestCa::new("server CA");
    let v1 = ca.issue(&Spec::server(&["flat.example"]));
    let v2 = ca.issue(&Spec::server(&["flat.example"]));
    let other = ca.issue(&Spec::server(&["aaa.example"]));
    let dir = CertsDir::new();
    // `aaa` sorts first, so it is the default and `flat` is only reachable by SNI.
    dir.flat("aaa", &other);
    let (_, key) = dir.flat("flat", &v1);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--certs-dir")
        .arg(dir.arg())
        .arg("--reload-interval")
        .arg(NO_PERIODIC)
        .admin()
        .start()
        .await;
    assert_eq!(served(&sc, "flat.example").await, v1.der);
    let from = sc.logs().len();
    std::fs::remove_file(&key).expect("remove flat.key");
    let cert = dir.path().join("flat.crt");
    wait_log_after(
        &sc,
        from,
        &[
            "certificate reload failed",
            &cert.display().to_string(),
            "no key file",
        ],
    )
    .await;
    wait_sample(&sc, RELOAD_FAILED, |v| v >= 1.0).await;
    assert_eq!(
        served(&sc, "flat.example").await,
        v1.der,
        "the previous certificate is still served"
    );
    dir.flat("flat", &v2);
    wait_served(&sc, "flat.example", &v2, "the repaired flat pair").await;
}

#[tokio::test]
async fn sni_picks_among_certbot_flat_and_wildcard_pairs() {
    let ca = TestCa::new("server CA");
    let a = ca.issue(&Spec::server(&["a.example", "alt-a.example"]));
    let b = ca.issue(&Spec::server(&["b.example"]));
    let c = ca.issue(&Spec::server(&["c.example"]));
    let wild = ca.issue(&Spec::server(&["*.w.example"]));
    let given = ca.issue(&Spec::server(&["given.example"]));
    let dir = CertsDir::new();
    dir.certbot("a.example", &a);
    dir.flat("b", &b);
    dir.combined("c", &c);
    dir.flat("wild", &wild);
    let app = Backend::echo().await;

    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--certs-dir")
        .arg(dir.arg())
        .start()
        .await;
    let cases: [(&str, &Issued); 8] = [
        ("a.example", &a),
        ("alt-a.example", &a),
        ("B.Example", &b),
        ("c.example", &c),
        ("x.w.example", &wild),
        // A wildcard covers one label only; these fall to the default, the first pair by name.
        ("y.x.w.example", &a),
        ("w.example", &a),
        ("unknown.example", &a),
    ];
    for (sni, want) in cases {
        assert_eq!(served(&sc, sni).await, want.der, "SNI {sni}");
    }
    let no_sni = client::tls_connect(sc.addr(), "localhost", any_cert_no_sni()).await;
    assert_eq!(
        client::peer_cert(&no_sni),
        a.der,
        "no SNI: the first pair by name"
    );
    // A real client verifying names end to end, over HTTP.
    let verifying = client::config(Trust::Ca(ca.der()), ALPN_H1);
    let mut conn = HttpConn::connect(sc.addr(), "x.w.example", verifying).await;
    assert_eq!(conn.get("/").await.status, StatusCode::OK);
    drop(sc);

    // --cert is the default when given, while the directory's names still select theirs.
    let given_dir = CertsDir::new();
    let (gc, gk) = given_dir.flat("given", &given);
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--certs-dir")
        .arg(dir.arg())
        .arg("--cert")
        .arg(gc.display().to_string())
        .arg("--key")
        .arg(gk.display().to_string())
        .start()
        .await;
    assert_eq!(served(&sc, "unknown.example").await, given.der);
    let no_sni = client::tls_connect(sc.addr(), "localhost", any_cert_no_sni()).await;
    assert_eq!(client::peer_cert(&no_sni), given.der, "no SNI: --cert");
    assert_eq!(served(&sc, "b.example").await, b.der);
    assert_eq!(served(&sc, "a.example").await, a.der);
    assert_eq!(served(&sc, "q.w.example").await, wild.der);
}

#[tokio::test]
async fn two_thousand_pairs_load_quickly_and_select_by_sni() {
    const PAIRS: usize = 2000;
    let ca = TestCa::new("server CA");
    let dir = CertsDir::new();
    let mut last = None;
    for i in 0..PAIRS {
        let issued = ca.issue_shared_key(&Spec::server(&[&format!("host-{i:04}.example")]));
        dir.flat(&format!("host-{i:04}"), &issued);
        last = Some(issued);
    }
    let last = last.expect("pairs generated");
    let app = Backend::echo().await;
    // Build (or freshness-check) the binary first so it is not part of the measurement.
    harness::bins::bin_path("sidecar");
    let baseline = {
        let started = Instant::now();
        let sc = Sidecar::start(app.addr()).await;
        let took = started.elapsed();
        drop(sc);
        took
    };
    let started = Instant::now();
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--certs-dir")
        .arg(dir.arg())
        .admin()
        .start()
        .await;
    let took = started.elapsed();
    println!(
        "{PAIRS} pairs: spawn to listening {took:?} (self-signed, no directory: {baseline:?})"
    );
    assert!(
        took < Duration::from_secs(10),
        "loading {PAIRS} pairs took {took:?}"
    );
    assert_eq!(served(&sc, "host-1999.example").await, last.der);
    let text = metrics(&sc).await;
    let gauges = text
        .lines()
        .filter(|l| l.starts_with("sidecar_certificate_expiry_seconds{"))
        .count();
    assert_eq!(gauges, PAIRS, "one expiry gauge per certificate");
}

#[tokio::test]
async fn expiry_gauge_per_certificate() {
    let ca = TestCa::new("server CA");
    let given = ca.issue(&Spec::server(&["localhost"]).valid((2024, 1, 1), (2040, 1, 1)));
    let flat = ca.issue(&Spec::server(&["b.example"]).valid((2024, 1, 1), (2035, 6, 1)));
    let bot = ca.issue(&Spec::server(&["c.example"]).valid((2024, 1, 1), (2030, 3, 1)));
    let expired = ca.issue(&Spec::server(&["old.example"]).expired());
    let dir = CertsDir::new();
    dir.flat("b", &flat);
    dir.certbot("c.example", &bot);
    dir.flat("old", &expired);
    let pair = CertsDir::new();
    let (cert, key) = pair.flat("tls", &given);
    let app = Backend::echo().await;
    let sc = Sidecar::builder()
        .backend(app.addr())
        .arg("--certs-dir")
        .arg(dir.arg())
        .arg("--cert")
        .arg(cert.display().to_string())
        .arg("--key")
        .arg(key.display().to_string())
        .admin()
        .start()
        .await;
    let text = metrics(&sc).await;
    for (name, not_after) in [
        ("default", unix_time(2040, 1, 1)),
        ("b", unix_time(2035, 6, 1)),
        ("c.example", unix_time(2030, 3, 1)),
        ("old", unix_time(2021, 1, 1)),
    ] {
        let v = sample(&text, &expiry(name))
            .unwrap_or_else(|| panic!("no expiry gauge for {name}:\n{text}"));
        assert_expiry(v, not_after, name);
    }
    assert!(sample(&text, &expiry("old")).is_some_and(|v| v < 0.0));
    drop(sc);

    let sc = Sidecar::builder().backend(app.addr()).admin().start().await;
    let text = metrics(&sc).await;
    let v = sample(&text, &expiry("self-signed"))
        .unwrap_or_else(|| panic!("no expiry gauge for the self-signed certificate:\n{text}"));
    assert!(v > 0.0, "self-signed certificate expiry {v}");
}

#[tokio::test]
async fn a_broken_pair_in_the_directory_refuses_to_start() {
    let ca = TestCa::new("server CA");
    let good = ca.issue(&Spec::server(&["a.example"]));
    let dir = CertsDir::new();
    dir.flat("a", &good);
    let bad = dir.path().join("b.crt");
    write(&bad, "garbage");
    write(&dir.path().join("b.key"), &good.key_pem);
    let out = within(STEP, "sidecar refusing to start", async {
        run_expect_fail(&["--certs-dir", &dir.arg()], &[])
    })
    .await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    let lines = out.lines();
    assert_eq!(lines.len(), 1, "one line:\n{}", out.stderr);
    assert!(
        lines[0].contains(&bad.display().to_string()),
        "names the file: {}",
        lines[0]
    );
}
