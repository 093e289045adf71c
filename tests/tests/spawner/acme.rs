//! ACME in the spawner (issue 13) end to end: a real Pebble, the real engine, the spawner as a
//! host process. A target with a hostname label gets a certificate from the CA by HTTP-01
//! (answered by its sidecar's redirect listener on :80) or TLS-ALPN-01 (its TLS listener on
//! 8443), stored in certbot's layout and served without restarting the sidecar; renewed at two
//! thirds of its lifetime; retried with backoff after a failure, never more than three orders an
//! hour; kept across a spawner restart; shared by replicas; refused names stop for good; bad
//! flags exit 2 naming the flag; `spawner status` shows the issued certificate the sidecar serves
//! (issuer, expiry) with or without the ACME flags.
//!
//! Each test has its own Pebble (so every test may use `a.test`), store, spawner and label
//! prefix; Pebble validates at 127.0.0.1 on its own ports, where a test publishes the target's
//! port 80 or 8443, or (to make a challenge reachable only later) a [`Forward`] joins them.
//! That setup is one [`Acme`] (`fixture`). `pebble` holds the pieces underneath, in process:
//! ACME clients against Pebble and the sidecar answering its challenges, without the engine.

mod dns01;
mod fixture;
pub(crate) mod pebble;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::bins::bin_path;
use harness::certs::dns_sans;
use harness::docker::{
    containers_with_label, docker, docker_ok, host_port, https_get, images, logs_of, sidecars_for,
    unique_name, TestRun, LIFECYCLE_DEADLINE,
};
use harness::forward::Forward;
use harness::pebble::Options;
use harness::spawner::{self, Spawner};
use harness::tmp::TempDir;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use fixture::{acme_flags, eventually, holds_for, target, Acme, ISSUANCE, RETRY_MIN, STATE};

/// A line the spawner logs: its level and message.
#[derive(Debug, Clone, Copy)]
struct Event(&'static str, &'static str);

/// What the spawner logs once per order placed.
const ORDERING: Event = Event("INFO", "ordering certificate");
/// What the spawner logs once per certificate obtained.
const ISSUED: Event = Event("INFO", "certificate issued");
/// What the spawner logs (once per distinct cause) when an order fails; repeats of a cause
/// may go to debug, which these tests do not count.
const ORDER_FAILED: Event = Event("WARN", "certificate order failed");
/// What Pebble logs when a challenge fails validation (one authorization per name).
const PEBBLE_INVALID: &str = "set INVALID by completed challenge";

/// `cert`'s notAfter, in unix seconds.
fn not_after(cert: &CertificateDer<'_>) -> i64 {
    let (_, x509) = X509Certificate::from_der(cert).expect("parse certificate");
    x509.validity().not_after.timestamp()
}

/// The sidecars of a target (running or not).
/// Waits for exactly one sidecar of the target, running in its namespace; returns its ID.
fn wait_sidecar(prefix: &str, target_id: &str) -> String {
    eventually(
        LIFECYCLE_DEADLINE,
        "one running sidecar of the target",
        || match sidecars_for(prefix, target_id).as_slice() {
            [one] if one.running && one.network_mode == format!("container:{target_id}") => {
                Ok(one.id.clone())
            }
            other => Err(format!(
                "{:?}",
                other
                    .iter()
                    .map(|c| (&c.name, c.running))
                    .collect::<Vec<_>>()
            )),
        },
    )
}

/// Asserts the target still has exactly one sidecar, running, and that it is `id`.
fn assert_same_sidecar(prefix: &str, target_id: &str, id: &str, what: &str) {
    let now: Vec<(String, bool)> = sidecars_for(prefix, target_id)
        .into_iter()
        .map(|c| (c.id, c.running))
        .collect();
    assert_eq!(
        now,
        [(id.to_string(), true)],
        "{what}: the same sidecar, never restarted"
    );
}

/// The lines of `logs` that are `event` (at its level).
fn lines_with(logs: &str, event: Event) -> Vec<&str> {
    let Event(level, message) = event;
    logs.lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(level) && l.contains(message))
        .collect()
}

/// How many times the spawner has logged `event`.
fn count(spawner: &Spawner, event: Event) -> usize {
    lines_with(&spawner.logs(), event).len()
}

/// Waits until the spawner has logged `event` `times` times.
fn wait_event(spawner: &Spawner, event: Event, times: usize) {
    eventually(ISSUANCE, &format!("{event:?} logged {times} times"), || {
        let n = count(spawner, event);
        (n >= times).then_some(()).ok_or(format!("{n} times"))
    });
}

/// Seconds from log line `earlier` to log line `later` (by their timestamps, within a day).
fn seconds_between(earlier: &str, later: &str) -> f64 {
    (log_time(later) - log_time(earlier)).rem_euclid(86_400.0)
}

/// Seconds since midnight of a log line's RFC 3339 timestamp (`2026-11-25T15:54:59.373595Z`).
fn log_time(line: &str) -> f64 {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let time = stamp
        .split_once('T')
        .and_then(|(_, t)| t.strip_suffix('Z'))
        .unwrap_or_else(|| panic!("no timestamp at the start of {line:?}"));
    let parts: Vec<f64> = time
        .split(':')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|e| panic!("timestamp {stamp:?}: {e}"))
        })
        .collect();
    assert_eq!(parts.len(), 3, "timestamp {stamp:?}");
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

#[test]
fn http01_certificate_is_obtained_stored_in_certbot_layout_and_served() {
    let acme = Acme::start();
    let spawner = acme.spawner();
    let (name, id) = acme.http01_target("a.test");
    let port = host_port(&id, 8443);
    let started = Instant::now();
    let chain = acme.wait_issued(port, &["a.test"]);
    eprintln!(
        "HTTP-01: Pebble's certificate served after {:?}",
        started.elapsed()
    );
    assert_eq!(dns_sans(&chain[0]), ["a.test"]);

    // The store: one pair in certbot's layout, the one served; the account private to the
    // spawner; the order history kept.
    assert_eq!(acme.issuances("a.test"), 1);
    assert_eq!(
        acme.assert_live_is("a.test", 1),
        chain[0],
        "the stored certificate is served"
    );
    let mode = std::fs::metadata(acme.account_path())
        .expect("acme/account.json")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "acme/account.json is the spawner's alone"
    );
    let state = std::fs::read(acme.store().join("acme/state.json")).expect("acme/state.json");
    serde_json::from_slice::<serde_json::Value>(&state).expect("acme/state.json is JSON");

    let row = acme.wait_state(&name, "valid");
    assert_eq!(row["acme_names"], serde_json::json!(["a.test"]), "{row:#}");
    assert_eq!(row["acme_challenge"], "http-01", "{row:#}");
    assert_eq!(
        row["cert_not_after"].as_i64(),
        Some(not_after(&chain[0])),
        "status shows the expiry of the certificate served: {row:#}"
    );

    let logs = spawner.logs();
    let orders = lines_with(&logs, ORDERING);
    assert!(
        (1..=3).contains(&orders.len()) && orders.iter().all(|l| l.contains("a.test")),
        "one order (a retry at most two), naming a.test: {orders:#?}"
    );
    assert!(!lines_with(&logs, ISSUED).is_empty(), "{ISSUED:?} logged");
}

/// A CA that requires External Account Binding (Pebble, as ZeroSSL or Google Trust Services do):
/// the account is bound with the key ID and the key from its file, and the certificate issued;
/// with the wrong key, the order fails naming the binding, and status says so.
#[test]
fn external_account_binding_registers_with_the_right_key_and_names_a_wrong_one() {
    let kid = "kid-tls-sidecar";
    let key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let acme = Acme::start_with(Options {
        eab_keys: vec![(kid.to_string(), key.to_string())],
        ..Options::default()
    });
    let secrets = TempDir::new("eab");
    let right = secrets.write("right", format!("{key}\n"));
    let wrong = secrets.write("wrong", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8");
    // The wrong key first: the account is refused, nothing is stored, status names the binding.
    let mut flags = acme.flags();
    let wrong_flags = [
        "--acme-eab-kid",
        kid,
        "--acme-eab-hmac-key-file",
        wrong.to_str().expect("utf-8 path"),
    ];
    flags.extend_from_slice(&wrong_flags);
    flags.extend_from_slice(&["--resync-interval", "1s"]);
    let spawner = Spawner::start(&acme.prefix, &flags);
    let (name, id) = acme.http01_target("eab.test");
    let row = acme.wait_state(&name, "failing");
    let error = row["acme_error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("External Account Binding") && error.contains(kid),
        "the failure names the binding: {row:#}"
    );
    assert!(!acme.account_path().exists(), "no account stored");
    drop(spawner);
    // That name set's orders are capped and backed off now: the next names are another target's.
    docker_ok(&["rm", "-f", &id]);
    // The right key: bound, and the certificate issued and served.
    let mut flags = acme.flags();
    let right_flags = [
        "--acme-eab-kid",
        kid,
        "--acme-eab-hmac-key-file",
        right.to_str().expect("utf-8 path"),
    ];
    flags.extend_from_slice(&right_flags);
    flags.extend_from_slice(&["--resync-interval", "1s"]);
    let _spawner = Spawner::start(&acme.prefix, &flags);
    let (_, id) = acme.http01_target("bound.test");
    let chain = acme.wait_issued(host_port(&id, 8443), &["bound.test"]);
    assert_eq!(dns_sans(&chain[0]), ["bound.test"]);
    assert!(acme.account_path().exists(), "the bound account is stored");
    // The key is the spawner's alone: not in the sidecar's environment nor its labels.
    let sidecar = wait_sidecar(&acme.prefix, &id);
    let seen = docker_ok(&["inspect", &sidecar]);
    // (Not the bare letters "eab": hex IDs and digests contain them by chance.)
    assert!(
        !seen.contains(key) && !seen.contains(kid) && !seen.contains("acme-eab"),
        "{seen}"
    );
}

#[test]
fn tls_alpn01_gets_one_certificate_for_two_names() {
    let acme = Acme::start();
    let _spawner = acme.spawner();
    let (name, _) = acme.target(
        &["hostname=a.test,b.test", "acme-challenge=tls-alpn-01"],
        &[&acme.tls_alpn01_port()],
    );
    let chain = acme.wait_issued(acme.pebble.tls_port(), &["a.test", "b.test"]);
    assert_eq!(
        dns_sans(&chain[0]),
        ["a.test", "b.test"],
        "one certificate for both"
    );
    let for_b = acme
        .served_chain(acme.pebble.tls_port(), "b.test")
        .expect("handshake as b.test");
    assert_eq!(for_b[0], chain[0], "the same certificate for either name");

    assert_eq!(acme.issuances("a.test"), 1, "one order, one archive pair");
    assert_eq!(acme.assert_live_is("a.test", 1), chain[0]);
    for other in ["live/b.test", "archive/b.test"] {
        assert!(
            !acme.store().join(other).exists(),
            "the pair is stored under the first name only, not {other}"
        );
    }
    let row = acme.wait_state(&name, "valid");
    assert_eq!(
        row["acme_names"],
        serde_json::json!(["a.test", "b.test"]),
        "{row:#}"
    );
    assert_eq!(row["acme_challenge"], "tls-alpn-01", "{row:#}");
    let table = spawner::status(&acme.prefix, &acme.flags());
    assert!(table.contains("valid (tls-alpn-01)"), "{table}");
}

#[test]
fn the_sidecar_switches_from_self_signed_to_the_issued_certificate_without_a_restart() {
    let acme = Acme::start();
    let spawner = acme.spawner();
    // Port 80 is published, but not where Pebble looks: the challenge is unreachable until the
    // forwarder joins the two.
    let (_, id) = acme.target(&["hostname=a.test"], &["127.0.0.1::80", "127.0.0.1::8443"]);
    let (port, port80) = (host_port(&id, 8443), host_port(&id, 80));
    let sidecar = wait_sidecar(&acme.prefix, &id);
    wait_event(&spawner, ORDER_FAILED, 1);

    let self_signed = acme.assert_self_signed(port, "a.test");
    let mut old = acme.open_conn(port, "a.test");
    let forward = Forward::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, acme.pebble.http_port())),
        SocketAddr::from((Ipv4Addr::LOCALHOST, port80)),
    );

    let chain = acme.wait_issued(port, &["a.test"]);
    assert_ne!(chain[0], self_signed);
    assert!(
        forward.accepted() > 0,
        "Pebble validated through the forwarder"
    );
    assert_same_sidecar(&acme.prefix, &id, &sidecar, "after the certificate arrived");
    acme.assert_demo_answers(&mut old, "the connection opened before the switch");
    let mut new = acme.open_conn(port, "a.test");
    acme.assert_demo_answers(&mut new, "a connection after the switch");
}

/// The common name of `cert`'s issuer (`who = "issuer"`) or subject.
fn common_name(cert: &CertificateDer<'_>, who: &str) -> String {
    let (_, x509) = X509Certificate::from_der(cert).expect("parse certificate");
    let name = if who == "issuer" {
        x509.issuer()
    } else {
        x509.subject()
    };
    let cn = name
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    cn.unwrap_or_else(|| panic!("no {who} common name in {name}"))
}

/// Unix seconds as the status table writes them: `2027-01-02T03:04:05Z`.
fn rfc3339(unix: i64) -> String {
    let t = x509_parser::time::ASN1Time::from_timestamp(unix)
        .expect("a time")
        .to_datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[test]
fn status_shows_the_issued_certificate_its_sidecar_serves_with_or_without_the_acme_flags() {
    let acme = Acme::start();
    let spawner = acme.spawner();
    let (name, id) = acme.http01_target("a.test");
    let port = host_port(&id, 8443);
    // The normal ACME path: the sidecar is made while the store is empty, recorded as
    // ACME-managed, and the certificate is delivered into it once issued.
    let sidecar = wait_sidecar(&acme.prefix, &id);
    let inspected = harness::docker::inspect(&sidecar).expect("inspect the sidecar");
    assert_eq!(
        inspected.raw["Config"]["Labels"][format!("{}.cert-source", acme.prefix)],
        "acme",
        "the sidecar records that ACME manages its certificate"
    );
    let chain = acme.wait_issued(port, &["a.test"]);
    assert_same_sidecar(&acme.prefix, &id, &sidecar, "after the certificate arrived");
    let logs = spawner.logs();
    let started = logs
        .find("sidecar started")
        .expect("\"sidecar started\" logged");
    let issued = lines_with(&logs, ISSUED);
    let issued_at = logs.find(issued.first().expect("\"certificate issued\" logged"));
    assert!(
        issued_at.is_some_and(|at| at > started),
        "the certificate was issued after the sidecar started:\n{logs}"
    );

    let expires = not_after(&chain[0]);
    let issuer = common_name(&chain[0], "issuer");
    assert_eq!(
        issuer,
        common_name(&chain[1], "subject"),
        "the leaf is issued by the intermediate served with it"
    );
    assert!(
        issuer.starts_with("Pebble Intermediate CA"),
        "issued by Pebble's intermediate: {issuer}"
    );
    let sidecar_name = inspected.name.trim_start_matches('/').to_string();
    let store = acme.store().display().to_string();
    let in_store = format!("{store}/live/a.test/fullchain.pem");
    let in_sidecar = format!("{sidecar_name}:/certs/live/a.test/fullchain.pem");
    let cases: [(&str, Vec<&str>, &str); 3] = [
        ("--certs-from only", vec!["--certs-from", &store], &in_store),
        ("the daemon's ACME flags", acme.flags(), &in_store),
        ("no flags at all", Vec::new(), &in_sidecar),
    ];
    let cell = format!("file, expires {}, issuer {issuer}", rfc3339(expires));
    for (flags_are, flags, detail) in &cases {
        let rows = spawner::status_json(&acme.prefix, flags);
        let row = spawner::row(&rows, &name);
        let what = format!("spawner status --json with {flags_are}: {row:#}");
        assert_eq!(row["cert_source"], "file", "{what}");
        assert_eq!(row["cert_reason"], serde_json::Value::Null, "{what}");
        assert_eq!(row["cert_not_after"].as_i64(), Some(expires), "{what}");
        assert_eq!(row["cert_issuer"], issuer.as_str(), "{what}");
        assert_eq!(row["cert_detail"], *detail, "{what}");
        let table = spawner::status(&acme.prefix, flags);
        let line = table
            .lines()
            .find(|l| l.starts_with(name.as_str()))
            .unwrap_or_else(|| panic!("no line for {name} in status with {flags_are}:\n{table}"));
        assert!(
            line.contains(&cell),
            "spawner status with {flags_are} shows {cell:?}:\n{table}"
        );
    }
    let row = acme.wait_state(&name, "valid");
    assert_eq!(row["acme_names"], serde_json::json!(["a.test"]), "{row:#}");
    let without = spawner::row(
        &spawner::status_json(&acme.prefix, &["--certs-from", &store]),
        &name,
    )
    .clone();
    assert_eq!(
        without["acme_state"],
        serde_json::Value::Null,
        "the ACME column needs the ACME flags (it reads acme/state.json): {without:#}"
    );
}

#[test]
fn the_certificate_is_renewed_at_two_thirds_of_its_lifetime_while_connections_keep_working() {
    let acme = Acme::start_with(Options {
        certificate_validity: Some(Duration::from_secs(30)),
        ..Options::default()
    });
    let spawner = acme.spawner();
    let (name, id) = acme.http01_target("a.test");
    let port = host_port(&id, 8443);
    let first = acme.wait_issued(port, &["a.test"]);
    let sidecar = wait_sidecar(&acme.prefix, &id);
    let mut old = acme.open_conn(port, "a.test");

    // Renewal is due 20 s after issuance; until the renewed certificate is served, the
    // connection opened before it answers every half second or so.
    let renewed = eventually(ISSUANCE, "a renewed certificate served", || {
        acme.assert_demo_answers(&mut old, "the connection opened before the renewal");
        if acme.issuances("a.test") < 2 {
            return Err("one archive pair".to_string());
        }
        let chain = acme
            .served_chain(port, "a.test")
            .ok_or("no TLS handshake")?;
        if chain[0] == first[0] {
            return Err("the first certificate still served".to_string());
        }
        acme.verify(&chain, "a.test")?;
        Ok(chain)
    });
    acme.assert_demo_answers(&mut old, "the connection opened before the renewal");
    assert_same_sidecar(&acme.prefix, &id, &sidecar, "after the renewal");
    let n = acme.issuances("a.test");
    assert_eq!(
        acme.assert_live_is("a.test", n),
        renewed[0],
        "the newest pair is live and served"
    );
    let row = acme.wait_state(&name, "valid");
    assert_eq!(
        row["cert_not_after"].as_i64(),
        Some(not_after(&renewed[0])),
        "status shows the renewed certificate's expiry: {row:#}"
    );
    let orders = count(&spawner, ORDERING);
    assert!((2..=3).contains(&orders), "{orders} orders in about 30 s");
}

#[test]
fn an_unreachable_challenge_fails_visibly_is_retried_with_backoff_and_recovers() {
    let acme = Acme::start();
    let spawner = acme.spawner();
    let (name, id) = acme.target(&["hostname=a.test"], &["127.0.0.1::80", "127.0.0.1::8443"]);
    let (port, port80) = (host_port(&id, 8443), host_port(&id, 80));
    assert_ne!(
        port80,
        acme.pebble.http_port(),
        "port 80 is not where Pebble looks"
    );

    let row = acme.wait_state(&name, "failing");
    let error = row["acme_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("a.test"),
        "the error names the name: {row:#}"
    );
    acme.assert_self_signed(port, "a.test");
    assert!(https_get(port).is_some(), "the app is served meanwhile");

    // A second order, after the backoff, fails the same way (Pebble says so) before the
    // challenge becomes reachable.
    wait_event(&spawner, ORDERING, 2);
    eventually(STATE, "Pebble to fail the second order's challenge", || {
        let failed = acme.pebble.logs().matches(PEBBLE_INVALID).count();
        (failed >= 2)
            .then_some(())
            .ok_or(format!("{failed} failed validations"))
    });
    let _forward = Forward::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, acme.pebble.http_port())),
        SocketAddr::from((Ipv4Addr::LOCALHOST, port80)),
    );
    acme.wait_issued(port, &["a.test"]);
    acme.wait_state(&name, "valid");
    assert_eq!(acme.issuances("a.test"), 1);
    let logs = spawner.logs();
    let orders = lines_with(&logs, ORDERING);
    assert!(orders.len() <= 3, "at most 3 orders an hour: {orders:#?}");
    let failed = lines_with(&logs, ORDER_FAILED);
    // From the first failure to the retry: the backoff's first delay, whole.
    let gap = seconds_between(failed[0], orders[1]);
    assert!(
        gap >= RETRY_MIN.as_secs_f64() - 0.05,
        "the retry came {gap:.2}s after the failure, before the backoff ({RETRY_MIN:?}):\n{}\n{}\n{}",
        orders[0],
        failed[0],
        orders[1]
    );
    assert_eq!(
        failed.len(),
        1,
        "two failures of one cause (connection refused), logged once:\n{}",
        failed.join("\n")
    );
}

#[test]
fn a_challenge_that_never_works_gets_at_most_three_orders_an_hour() {
    let acme = Acme::start();
    let spawner = acme.spawner();
    let (name, _) = acme.target(&["hostname=a.test"], &["127.0.0.1::8443"]);
    // Backoff 2 s, then 4 s: the third order comes about 6 s after the first.
    wait_event(&spawner, ORDERING, 3);
    eventually(STATE, "Pebble to fail the third order's challenge", || {
        let failed = acme.pebble.logs().matches(PEBBLE_INVALID).count();
        (failed >= 3)
            .then_some(())
            .ok_or(format!("{failed} failed validations"))
    });
    // A fourth would be due 8 s after the third failed; wait past that, and a bit.
    holds_for(
        Duration::from_secs(10),
        "no fourth order within the hour",
        || {
            let orders = count(&spawner, ORDERING);
            (orders == 3)
                .then_some(())
                .ok_or(format!("{orders} orders"))
        },
    );
    let row = acme.wait_state(&name, "failing");
    assert!(
        row["acme_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{row:#}"
    );
    // Each retry waited its backoff after the failure before it, so at least that long after
    // the order before it: 2 s, then twice that.
    let logs = spawner.logs();
    let orders = lines_with(&logs, ORDERING);
    for (i, min) in [(1, RETRY_MIN), (2, RETRY_MIN * 2)] {
        let gap = seconds_between(orders[i - 1], orders[i]);
        assert!(
            gap >= min.as_secs_f64() - 0.05,
            "order {} came {gap:.2}s after order {i}, less than the backoff {min:?}:\n{}",
            i + 1,
            orders.join("\n")
        );
    }
}

#[test]
fn a_restarted_spawner_keeps_the_certificate_and_orders_nothing() {
    let acme = Acme::start();
    let mut first = acme.spawner();
    let (name, id) = acme.http01_target("a.test");
    let port = host_port(&id, 8443);
    let chain = acme.wait_issued(port, &["a.test"]);
    let sidecar = wait_sidecar(&acme.prefix, &id);
    let account = std::fs::read(acme.account_path()).expect("acme/account.json");
    first.kill();

    let second = acme.spawner();
    second.wait_log("spawner started", 1, LIFECYCLE_DEADLINE);
    // Several reconcile turns (one a second) with the store's certificate valid and not due.
    holds_for(
        Duration::from_secs(6),
        "the restarted spawner keeps what the store holds",
        || {
            let logs = second.logs();
            if !lines_with(&logs, ORDERING).is_empty() {
                return Err(format!("it ordered again:\n{logs}"));
            }
            let served = acme
                .served_chain(port, "a.test")
                .ok_or("no TLS handshake")?;
            (served[0] == chain[0])
                .then_some(())
                .ok_or_else(|| "a different certificate served".to_string())
        },
    );
    assert_same_sidecar(&acme.prefix, &id, &sidecar, "across the spawner's restart");
    assert_eq!(acme.issuances("a.test"), 1, "still one archive pair");
    assert_eq!(
        std::fs::read(acme.account_path()).expect("acme/account.json"),
        account,
        "the account is kept"
    );
    acme.wait_state(&name, "valid");
}

#[test]
fn replicas_with_one_hostname_share_one_order_and_one_certificate() {
    let acme = Acme::start();
    let spawner = acme.spawner();
    // Only the first replica's port 80 is where Pebble looks; both start at once.
    let (name_a, a) = acme.http01_target("a.test");
    let (name_b, b) = acme.target(&["hostname=a.test"], &["127.0.0.1::8443"]);
    let chain_a = acme.wait_issued(host_port(&a, 8443), &["a.test"]);
    let chain_b = acme.wait_issued(host_port(&b, 8443), &["a.test"]);
    assert_eq!(
        chain_a[0], chain_b[0],
        "both replicas serve the one certificate"
    );
    for name in [&name_a, &name_b] {
        acme.wait_state(name, "valid");
    }
    let logs = spawner.logs();
    assert_eq!(
        lines_with(&logs, ORDERING).len(),
        1,
        "one order for both replicas:\n{logs}"
    );
    assert_eq!(acme.issuances("a.test"), 1);
}

/// Runs `spawner ARGS` (with `env` added) to its exit: the exit code and stderr. Panics if it
/// is still running after [`LIFECYCLE_DEADLINE`] (a flag accepted that should not be).
fn spawner_exit(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = TempDir::new("spawner-exit");
    let err_path = dir.path().join("stderr");
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = Command::new(bin_path("spawner"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("DOCKER_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .expect("start spawner");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for spawner") {
            break status;
        }
        if start.elapsed() > LIFECYCLE_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "spawner {args:?} {env:?} still running after {LIFECYCLE_DEADLINE:?}: {}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status.code(), stderr)
}

/// Runs `spawner run` with `flags` (and `env`) and asserts it exits 2 with an error naming `flag`.
fn assert_refused(what: &str, flags: &[&str], env: &[(&str, &str)], flag: &str) {
    let prefix = unique_name("t");
    let mut args = vec!["run", "--label-prefix", &prefix];
    args.extend_from_slice(&["--acme-directory", "https://127.0.0.1:1/dir"]);
    args.extend_from_slice(flags);
    let (code, stderr) = spawner_exit(&args, env);
    assert_eq!(code, Some(2), "{what}: exit 2 expected; stderr: {stderr}");
    assert!(
        stderr.contains(flag),
        "{what}: the error names {flag}: {stderr}"
    );
}

#[test]
fn bad_acme_flags_exit_2_naming_the_flag() {
    let store = TempDir::new("acme-store");
    let store = store.path().display().to_string();
    let email = ["--acme-email", "ops@example.com"];
    assert_refused(
        "an invalid email",
        &[
            "--certs-from",
            &store,
            "--acme-email",
            "not-an-email",
            "--acme-agree-tos",
        ],
        &[],
        "--acme-email",
    );
    assert_refused(
        "an invalid email in the environment",
        &["--certs-from", &store, "--acme-agree-tos"],
        &[("SPAWNER_ACME_EMAIL", "not-an-email")],
        "--acme-email",
    );
    assert_refused(
        "the terms of service not agreed",
        &["--certs-from", &store, email[0], email[1]],
        &[],
        "--acme-agree-tos",
    );
    assert_refused(
        "no store",
        &[email[0], email[1], "--acme-agree-tos"],
        &[],
        "--certs-path",
    );
    let volume = unique_name("no-such-volume");
    assert_refused(
        "a named volume the spawner cannot see",
        &[
            "--certs-from",
            &volume,
            email[0],
            email[1],
            "--acme-agree-tos",
        ],
        &[],
        "--certs-path",
    );
}

#[test]
fn an_unreachable_directory_fails_visibly_while_every_target_is_served() {
    let run = TestRun::new();
    let prefix = run.label_prefix();
    let store = TempDir::new("acme-store");
    let refused = harness::backend::refused_addr();
    let flags = acme_flags(store.path(), &format!("https://{refused}/dir"), None);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let spawner = Spawner::start(&prefix, &flags);
    let (acme_name, acme_id) = target(&run, &prefix, &["hostname=a.test"], &["127.0.0.1::8443"]);
    let (plain_name, plain_id) = target(&run, &prefix, &[], &["127.0.0.1::8443"]);
    let (bad_name, bad_id) = target(
        &run,
        &prefix,
        &["hostname=c.test", "acme-challenge=dns-01"],
        &["127.0.0.1::8443"],
    );

    wait_sidecar(&prefix, &plain_id);
    eventually(
        LIFECYCLE_DEADLINE,
        "the app without a hostname served",
        || https_get(host_port(&plain_id, 8443)).ok_or_else(|| "no answer".to_string()),
    );
    wait_sidecar(&prefix, &acme_id);
    eventually(
        LIFECYCLE_DEADLINE,
        "the ACME target served meanwhile",
        || https_get(host_port(&acme_id, 8443)).ok_or_else(|| "no answer".to_string()),
    );
    let label = format!("{prefix}.acme-challenge");
    spawner.wait_invalid_label(&bad_name, &label, "dns-01", "");
    assert!(
        sidecars_for(&prefix, &bad_id).is_empty(),
        "no sidecar for a refused target"
    );

    let row = eventually(STATE, "acme_state failing naming the directory", || {
        let rows = spawner::status_json(&prefix, &flags);
        let row = spawner::row(&rows, &acme_name).clone();
        let names_it = row["acme_error"]
            .as_str()
            .is_some_and(|e| e.contains(&refused.to_string()));
        if row["acme_state"] == "failing" && names_it {
            Ok(rows)
        } else {
            Err(format!("{row:#}"))
        }
    });
    let plain = spawner::row(&row, &plain_name);
    assert!(
        plain["acme_state"].is_null() && plain["acme_error"].is_null(),
        "ACME does not apply to a target without a hostname: {plain:#}"
    );
}

#[test]
fn a_name_the_ca_refuses_stops_ordering_for_good() {
    let acme = Acme::start();
    let spawner = acme.spawner();
    let (name, _) = acme.http01_target("bad_name.test");
    let row = acme.wait_state(&name, "stopped");
    assert!(
        row["acme_error"]
            .as_str()
            .is_some_and(|e| e.contains("bad_name.test")),
        "the error names the name: {row:#}"
    );
    // Past the first two retry delays (2 s, 4 s): still the one order.
    holds_for(
        RETRY_MIN * 4,
        "no second order for a name the CA refused",
        || {
            let orders = count(&spawner, ORDERING);
            (orders == 1)
                .then_some(())
                .ok_or(format!("{orders} orders"))
        },
    );
    acme.wait_state(&name, "stopped");
}

/// Prints the logs of the spawner container `0` and of the sidecars under prefix `1` when the
/// test fails; declared after the [`TestRun`], so it runs before the containers are removed.
struct LogsOnFailure(String, String);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- docker logs {} ----\n{}", self.0, logs_of(&self.0));
            for sidecar in containers_with_label(&format!("{}.managed-by", self.1)) {
                eprintln!(
                    "---- docker logs {} (sidecar) ----\n{}",
                    sidecar.name,
                    logs_of(&sidecar.id)
                );
            }
        }
    }
}

/// The rows `docker exec CONTAINER spawner status --json` prints (the container's environment
/// gives it the daemon's flags).
fn exec_status_json(container: &str) -> Result<Vec<serde_json::Value>, String> {
    let out = docker(&["exec", container, "spawner", "status", "--json"]);
    if !out.status.success() {
        return Err(format!(
            "docker exec {container} spawner status --json: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "no JSON array ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Where the engine keeps a named volume's files on the host (read here as root).
fn volume_mountpoint(volume: &str) -> PathBuf {
    PathBuf::from(docker_ok(&[
        "volume",
        "inspect",
        "-f",
        "{{.Mountpoint}}",
        volume,
    ]))
}

/// The leaf of the PEM chain in `file`.
fn leaf_of(file: &Path) -> CertificateDer<'static> {
    let pem = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap_or_else(|| panic!("no certificate in {}", file.display()))
        .expect("PEM certificate")
}

#[test]
fn a_spawner_container_with_the_store_in_a_named_volume_issues_and_delivers_per_sidecar() {
    let acme = Acme::start();
    let volume = unique_name("acme-store");
    acme.run.volume(&volume);
    let spawner = unique_name("spawner");
    let _logs = LogsOnFailure(spawner.clone(), acme.prefix.clone());
    let env = [
        format!("SPAWNER_LABEL_PREFIX={}", acme.prefix),
        "SPAWNER_ALLOW_IMAGES=tls-sidecar/sidecar:*".to_string(),
        format!("SPAWNER_CERTS_FROM={volume}"),
        "SPAWNER_CERTS_PATH=/store".to_string(),
        "SPAWNER_ACME_EMAIL=ops@example.com".to_string(),
        "SPAWNER_ACME_AGREE_TOS=true".to_string(),
        format!("SPAWNER_ACME_DIRECTORY={}", acme.pebble.directory_url()),
        "SPAWNER_ACME_CA_CERT=/acme-ca.pem".to_string(),
        format!("SPAWNER_ACME_RETRY_MIN={}s", RETRY_MIN.as_secs()),
    ];
    let socket = format!("{}:/var/run/docker.sock", harness::spawner::DOCKER_SOCKET);
    let store_mount = format!("{volume}:/store");
    let ca_mount = format!("{}:/acme-ca.pem:ro", acme.ca().display());
    let mut args = vec![
        "--network",
        "host",
        "-v",
        &socket,
        "-v",
        &store_mount,
        "-v",
        &ca_mount,
    ];
    for e in &env {
        args.extend_from_slice(&["-e", e]);
    }
    acme.run
        .container(&spawner, &images().spawner, &args, &["run"]);

    let (name, id) = acme.http01_target("a.test");
    let port = host_port(&id, 8443);
    let started = Instant::now();
    let chain = eventually(
        ISSUANCE,
        &format!("a Pebble certificate for a.test served on {port}"),
        || {
            let running = harness::docker::inspect(&spawner).is_some_and(|c| c.running);
            assert!(running, "the spawner container {spawner} is not running");
            let chain = acme
                .served_chain(port, "a.test")
                .ok_or("no TLS handshake")?;
            acme.verify(&chain, "a.test")?;
            Ok(chain)
        },
    );
    eprintln!(
        "spawner container: Pebble's certificate served after {:?}",
        started.elapsed()
    );
    assert_eq!(dns_sans(&chain[0]), ["a.test"]);

    // The store, in the volume only the spawner mounts: the certificate served, and the
    // account private.
    let store = volume_mountpoint(&volume);
    assert_eq!(
        leaf_of(&store.join("live/a.test/fullchain.pem")),
        chain[0],
        "the store's live/a.test/fullchain.pem is the certificate served"
    );
    let account = store.join("acme/account.json");
    let mode = std::fs::metadata(&account)
        .unwrap_or_else(|e| panic!("{}: {e}", account.display()))
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "acme/account.json is the spawner's alone"
    );

    // The sidecar has a volume of its own at /certs, never the store.
    let sidecar = wait_sidecar(&acme.prefix, &id);
    let inspected = harness::docker::inspect(&sidecar).expect("inspect the sidecar");
    let mounts = inspected.raw["Mounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for m in &mounts {
        let source = Path::new(m["Source"].as_str().unwrap_or_default());
        assert!(
            m["Name"] != volume.as_str()
                && !source.starts_with(&store)
                && (source.as_os_str().is_empty() || !store.starts_with(source)),
            "the sidecar mounts the store: {m:#}"
        );
    }
    let certs = mounts
        .iter()
        .find(|m| m["Destination"] == "/certs")
        .unwrap_or_else(|| panic!("no mount at /certs in the sidecar: {mounts:#?}"));
    let certs_name = certs["Name"].as_str().unwrap_or_default();
    assert!(
        certs["Type"] == "volume"
            && certs_name.len() == 64
            && certs_name.bytes().all(|b| b.is_ascii_hexdigit()),
        "the sidecar's /certs is an anonymous volume: {certs:#}"
    );
    let delivered = PathBuf::from(certs["Source"].as_str().expect("the volume's Source"));
    assert_eq!(
        leaf_of(&delivered.join("live/a.test/fullchain.pem")),
        chain[0],
        "the sidecar's own volume holds the certificate it serves"
    );
    assert!(
        !delivered.join("acme/account.json").exists(),
        "the account key is not delivered to the sidecar"
    );

    eventually(
        STATE,
        &format!("acme_state \"valid\" in {name}'s row of docker exec {spawner} spawner status"),
        || {
            let rows = exec_status_json(&spawner)?;
            let row = rows
                .iter()
                .find(|r| r["target"] == name.as_str())
                .ok_or_else(|| format!("no row for {name}: {rows:#?}"))?;
            (row["acme_state"] == "valid")
                .then_some(())
                .ok_or_else(|| format!("{row:#}"))
        },
    );
}
