//! dns-01 (issue 26) end to end: a real BIND 9 (`harness::bind`) serving the test's zones, a
//! real Pebble resolving through it (`-dnsserver`), the real engine and the spawner as a host
//! process. Certificates for names no CA could reach over HTTP: a wildcard and its apex by
//! RFC 2136 dynamic updates signed with TSIG, the same through a `_acme-challenge` CNAME into a
//! separate validation zone, and through an exec hook; and the failures each says by its step:
//! a wrong TSIG key (the update refused), a record that never shows (the CA never asked), a
//! hook that hangs (killed at its bound). No DNS credential or hook path reaches a sidecar.
//!
//! Every test asks BIND directly (`--acme-dns-resolver`): its zones' NS records name 127.0.0.1
//! on port 53, where nothing of the test listens.

use std::path::Path;
use std::time::Duration;

use harness::bind::{tsig_keygen, Bind, TsigAlgorithm, Zone, TSIG_KEY_NAME};
use harness::certs::dns_sans;
use harness::docker::{docker_ok, host_port};
use harness::pebble::Options;
use harness::spawner::{self, Spawner};
use harness::tmp::TempDir;
use tokio::runtime::Runtime;

use super::fixture::{eventually, Acme, STATE};
use super::{count, lines_with, wait_sidecar, ORDERING, ORDER_FAILED};

/// What Pebble logs when it starts validating a challenge: none of it before the record shows.
const PEBBLE_VALIDATES: &str = "Pulled a task from the Tasks queue";

/// The propagation timeout of the tests whose records show at once (BIND applies an update
/// before it answers it).
const PROPAGATION: &str = "20s";

/// One test's DNS and CA: BIND with `zones`, a Pebble resolving through it, and the async
/// runtime BIND's queries run on. Drops the CA world first, then BIND.
struct World {
    acme: Acme,
    bind: Bind,
    rt: Runtime,
    files: TempDir,
}

impl World {
    fn start(zones: &[Zone]) -> World {
        World::start_with(zones, Options::default())
    }

    fn start_with(zones: &[Zone], options: Options) -> World {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let bind = rt.block_on(Bind::start(zones));
        let acme = Acme::start_with(Options {
            dns_server: Some(bind.addr()),
            ..options
        });
        World {
            acme,
            bind,
            rt,
            files: TempDir::new("dns01-files"),
        }
    }

    /// The TXT values at `name` on BIND now.
    fn txt(&self, name: &str) -> Vec<String> {
        self.rt.block_on(self.bind.txt(name))
    }

    /// The spawner's flags for this world: ACME at Pebble, `provider` for the records, BIND as
    /// the resolver, and `extra`.
    fn flags(&self, provider: &[String], extra: &[&str]) -> Vec<String> {
        let mut flags: Vec<String> = self.acme.flags().iter().map(|s| s.to_string()).collect();
        flags.extend(provider.iter().cloned());
        flags.extend([
            "--acme-dns-resolver".to_string(),
            self.bind.addr().to_string(),
            "--resync-interval".to_string(),
            "1s".to_string(),
        ]);
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    }

    /// RFC 2136 to BIND with `key_file`.
    fn rfc2136(&self, key_file: &Path) -> Vec<String> {
        vec![
            "--acme-dns-rfc2136-server".to_string(),
            self.bind.addr().to_string(),
            "--acme-dns-tsig-key".to_string(),
            key_file.display().to_string(),
        ]
    }

    fn spawner(&self, flags: &[String]) -> Spawner {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Spawner::start(&self.acme.prefix, &flags)
    }

    /// The status row of `target`, asked with `flags`.
    fn wait_row(
        &self,
        flags: &[String],
        target: &str,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        eventually(STATE, what, || {
            let rows = spawner::status_json(&self.acme.prefix, &flags);
            let row = spawner::row(&rows, target).clone();
            if check(&row) {
                Ok(row)
            } else {
                Err(format!("{row:#}"))
            }
        })
    }

    /// Asserts nothing of the DNS provider's settings is in `sidecar`: not in its inspect
    /// data (environment, labels, mounts) nor in the files of its certificate volume.
    fn assert_no_credentials(&self, sidecar: &str, secrets: &[&str]) {
        let seen = docker_ok(&["inspect", sidecar]);
        let out = std::process::Command::new("docker")
            .args([
                "cp",
                &format!("{sidecar}:{}", shared::schema::CERTS_MOUNT),
                "-",
            ])
            .output()
            .expect("docker cp");
        assert!(
            out.status.success(),
            "docker cp: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let volume = String::from_utf8_lossy(&out.stdout);
        for secret in secrets {
            assert!(
                !seen.contains(secret),
                "{secret:?} in the sidecar's inspect data: {seen}"
            );
            assert!(
                !volume.contains(secret),
                "{secret:?} in the sidecar's certificate volume"
            );
        }
        for word in ["acme-dns", "tsig", "TSIG"] {
            assert!(
                !seen.contains(word),
                "{word:?} in the sidecar's inspect data: {seen}"
            );
        }
    }
}

/// The secret of a key clause as `tsig-keygen` writes it.
fn secret_of(key: &str) -> String {
    key.split("secret \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a secret in the key clause")
        .to_string()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The dns-01 records the spawner still remembers writing (`acme/dns-01.json`).
fn journal(acme: &Acme) -> Vec<serde_json::Value> {
    match std::fs::read(acme.store().join("acme/dns-01.json")) {
        Ok(bytes) => {
            serde_json::from_slice::<Vec<serde_json::Value>>(&bytes).expect("a JSON array")
        }
        Err(_) => Vec::new(),
    }
}

#[test]
fn rfc2136_to_bind_gets_a_wildcard_and_its_apex_served_for_both_and_removes_the_records() {
    let world = World::start(&[Zone::new("example.test").a("example.test").dynamic()]);
    let flags = world.flags(
        &world.rfc2136(world.bind.tsig_key_file()),
        &["--acme-dns-propagation-timeout", PROPAGATION],
    );
    let spawner = world.spawner(&flags);
    let acme = &world.acme;
    let (name, id) = acme.target(
        &[
            "hostname=example.test,*.example.test",
            "acme-challenge=dns-01",
        ],
        &["127.0.0.1::8443"],
    );
    let port = host_port(&id, 8443);
    let chain = acme.wait_issued(port, &["example.test", "a.example.test"]);
    assert_eq!(
        sorted(dns_sans(&chain[0])),
        ["*.example.test", "example.test"]
    );
    let for_b = acme
        .served_chain(port, "b.example.test")
        .expect("a handshake as b.example.test");
    assert_eq!(for_b[0], chain[0], "every name the wildcard covers gets it");
    acme.verify(&for_b, "b.example.test")
        .expect("verifies for b.example.test");

    // Stored under the name without its star, as certbot names a wildcard's lineage.
    assert_eq!(acme.issuances("example.test"), 1);
    assert_eq!(acme.assert_live_is("example.test", 1), chain[0]);
    // Both values were side by side at one name, and both are gone.
    eventually(STATE, "the TXT records removed", || {
        let left = world.txt("_acme-challenge.example.test");
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    assert!(
        journal(acme).is_empty(),
        "nothing left to clean: {:?}",
        journal(acme)
    );

    let row = world.wait_row(&flags, &name, "valid by dns-01", |r| {
        r["acme_state"] == "valid"
    });
    assert_eq!(row["acme_challenge"], "dns-01", "{row:#}");
    assert_eq!(
        row["acme_names"],
        serde_json::json!(["example.test", "*.example.test"]),
        "{row:#}"
    );
    let table = spawner::status(
        &acme.prefix,
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(table.contains("valid (dns-01)"), "{table}");

    let key = std::fs::read_to_string(world.bind.tsig_key_file()).expect("key file");
    let sidecar = wait_sidecar(&acme.prefix, &id);
    world.assert_no_credentials(
        &sidecar,
        &[
            &secret_of(&key),
            &world.bind.tsig_key_file().display().to_string(),
        ],
    );
    assert_eq!(count(&spawner, ORDER_FAILED), 0, "{}", spawner.logs());
}

#[test]
fn a_cname_delegates_the_record_to_a_validation_zone_only_it_may_update() {
    // The main zone takes no updates: the key may change only the validation zone.
    let world = World::start(&[
        Zone::new("example.test").a("alias.example.test").cname(
            "_acme-challenge.alias.example.test",
            "alias.validation.test",
        ),
        Zone::new("validation.test").dynamic(),
    ]);
    let flags = world.flags(
        &world.rfc2136(world.bind.tsig_key_file()),
        &[
            "--acme-challenge",
            "dns-01",
            "--acme-dns-propagation-timeout",
            PROPAGATION,
        ],
    );
    let _spawner = world.spawner(&flags);
    let acme = &world.acme;
    let (name, id) = acme.target(&["hostname=alias.example.test"], &["127.0.0.1::8443"]);
    let chain = acme.wait_issued(host_port(&id, 8443), &["alias.example.test"]);
    assert_eq!(dns_sans(&chain[0]), ["alias.example.test"]);
    let row = world.wait_row(&flags, &name, "valid", |r| r["acme_state"] == "valid");
    assert_eq!(
        row["acme_challenge"], "dns-01",
        "the spawner's default: {row:#}"
    );
    eventually(STATE, "the delegated record removed", || {
        let left = world.txt("alias.validation.test");
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
}

/// A hook script that writes the record into BIND with `nsupdate`, as a user's script would
/// talk to their DNS host's API, and notes each call (its arguments and its environment).
/// While the file `<calls>.hang` exists, it hangs after writing a record.
fn nsupdate_hook(world: &World, calls: &Path) -> std::path::PathBuf {
    let script = format!(
        "#!/bin/sh\nset -e\necho \"$1 $2 $3\" >> {calls}\nenv >> {calls}.env\ncase \"$1\" in\n  present) op=\"add $2 60\" ;;\n  cleanup) op=\"delete $2\" ;;\n  *) exit 2 ;;\nesac\nprintf 'server 127.0.0.1 {port}\\nupdate %s TXT \"%s\"\\nsend\\n' \"$op\" \"$3\" | nsupdate -k {key}\nif [ \"$1\" = present ] && [ -e {calls}.hang ]; then sleep 600; fi\n",
        calls = calls.display(),
        port = world.bind.addr().port(),
        key = world.bind.tsig_key_file().display(),
    );
    script_file(&world.files, "hook.sh", &script)
}

/// A spawner killed in the middle of an order leaves its record in DNS; the next order (of the
/// next spawner) removes it first, then gets the certificate.
#[test]
fn a_record_left_by_a_killed_spawner_is_removed_by_the_next_order() {
    let world = World::start(&[Zone::new("example.test").a("left.example.test").dynamic()]);
    let calls = world.files.path().join("calls");
    let hang = world.files.write("calls.hang", "");
    let hook = nsupdate_hook(&world, &calls);
    let provider = vec!["--acme-dns-hook".to_string(), hook.display().to_string()];
    let flags = world.flags(&provider, &["--acme-dns-propagation-timeout", PROPAGATION]);
    let acme = &world.acme;
    let name = "_acme-challenge.left.example.test";
    let spawner = world.spawner(&flags);
    let (_, id) = acme.target(
        &["hostname=left.example.test", "acme-challenge=dns-01"],
        &["127.0.0.1::8443"],
    );
    // The record is written, and the hook hangs: the order is in the middle of presenting.
    let left = eventually(STATE, "the first record in DNS", || {
        match &world.txt(name)[..] {
            [value] => Ok(value.clone()),
            other => Err(format!("{other:?}")),
        }
    });
    assert_eq!(journal(acme).len(), 1, "noted before it was written");
    drop(spawner); // SIGKILL: no cleanup runs
    let _ = std::process::Command::new("pkill")
        .args(["-f", &hook.display().to_string()])
        .status();
    std::fs::remove_file(&hang).expect("stop hanging");
    assert_eq!(world.txt(name), std::slice::from_ref(&left), "left behind");

    let _spawner = world.spawner(&flags);
    let chain = acme.wait_issued(host_port(&id, 8443), &["left.example.test"]);
    assert_eq!(dns_sans(&chain[0]), ["left.example.test"]);
    eventually(STATE, "every record removed", || {
        let now = world.txt(name);
        if now.is_empty() {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    let said = std::fs::read_to_string(&calls).expect("the hook's calls");
    assert!(
        said.lines().any(|l| l == format!("cleanup {name}. {left}")),
        "the left-over removed through the hook: {said}"
    );
    assert!(journal(acme).is_empty(), "{:?}", journal(acme));
}

/// The processes of process group `pgid` that are not zombies, from /proc.
fn live_in_group(pgid: &str) -> Vec<String> {
    let mut live = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...: the comm may hold spaces, so split after its ')'.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields.get(2) == Some(&pgid) && fields.first() != Some(&"Z") {
            live.push(stat.split(' ').next().unwrap_or_default().to_string());
        }
    }
    live
}

fn script_file(dir: &TempDir, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.write(name, body);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn an_exec_hook_writes_the_records_and_one_that_hangs_is_killed_at_its_bound() {
    let world = World::start(&[Zone::new("example.test").a("hook.example.test").dynamic()]);
    let calls = world.files.path().join("calls");
    let hook = nsupdate_hook(&world, &calls);
    let provider = vec!["--acme-dns-hook".to_string(), hook.display().to_string()];
    let flags = world.flags(&provider, &["--acme-dns-propagation-timeout", PROPAGATION]);
    let spawner = {
        // A variable of the spawner's environment must not reach the hook.
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Spawner::start_with_env(
            &world.acme.prefix,
            &flags,
            &[("DNS_TEST_SECRET", "s3cret-in-env")],
        )
    };
    let acme = &world.acme;
    let (_, id) = acme.target(
        &["hostname=hook.example.test", "acme-challenge=dns-01"],
        &["127.0.0.1::8443"],
    );
    let chain = acme.wait_issued(host_port(&id, 8443), &["hook.example.test"]);
    assert_eq!(dns_sans(&chain[0]), ["hook.example.test"]);
    let said = eventually(STATE, "the hook's cleanup", || {
        let said = std::fs::read_to_string(&calls).unwrap_or_default();
        if said.lines().any(|l| l.starts_with("cleanup ")) {
            Ok(said)
        } else {
            Err(said)
        }
    });
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "present, then cleanup: {said}");
    let present: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(
        &present[..2],
        ["present", "_acme-challenge.hook.example.test."],
        "{said}"
    );
    assert_eq!(present[2].len(), 43, "the base64url SHA-256 digest: {said}");
    assert_eq!(
        lines[1],
        lines[0].replacen("present", "cleanup", 1),
        "{said}"
    );
    let env = std::fs::read_to_string(format!("{}.env", calls.display()))
        .expect("the hook's environment");
    assert!(
        !env.contains("DNS_TEST_SECRET"),
        "the hook's environment is clean: {env}"
    );
    assert!(env.contains("PATH="), "{env}");
    assert!(
        world.txt("_acme-challenge.hook.example.test").is_empty(),
        "removed by the hook"
    );
    let sidecar = wait_sidecar(&acme.prefix, &id);
    world.assert_no_credentials(&sidecar, &[&hook.display().to_string(), "hook.sh"]);
    drop(spawner);

    // A hook that never ends: killed after its bound, the order failing with that step.
    let pids = world.files.path().join("pids");
    let hangs = script_file(
        &world.files,
        "hangs.sh",
        &format!("#!/bin/sh\necho $$ >> {}\nsleep 600\n", pids.display()),
    );
    let provider = vec!["--acme-dns-hook".to_string(), hangs.display().to_string()];
    let flags = world.flags(&provider, &["--acme-dns-hook-timeout", "1s"]);
    let spawner = world.spawner(&flags);
    let (name, _) = acme.target(
        &["hostname=hang.example.test", "acme-challenge=dns-01"],
        &["127.0.0.1::8443"],
    );
    let row = world.wait_row(&flags, &name, "failing at the hook", |r| {
        r["acme_state"] == "failing"
    });
    assert_eq!(row["acme_step"], "dns hook", "{row:#}");
    let error = row["acme_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("killed after 1s") && error.contains("hangs.sh"),
        "{row:#}"
    );
    // The first run's whole process group (the shell and its sleep) is gone, checked while a
    // later run (the retry) may be hanging.
    let first = eventually(STATE, "a retry of the hook", || {
        let runs = std::fs::read_to_string(&pids).unwrap_or_default();
        match runs.lines().collect::<Vec<_>>()[..] {
            [first, _, ..] => Ok(first.to_string()),
            _ => Err(runs.clone()),
        }
    });
    // SIGKILL to the group is immediate; the kernel and init reaping what it killed is not (a
    // zombie left to an init that never reaps is dead all the same).
    eventually(
        STATE,
        "the first hung hook's group gone",
        || match live_in_group(&first) {
            left if left.is_empty() => Ok(()),
            left => Err(format!("still running in the group: {left:?}")),
        },
    );
    drop(spawner);
}

#[test]
fn a_wrong_tsig_key_fails_once_per_cause_backs_off_and_leaves_no_record() {
    let world = World::start(&[Zone::new("example.test").a("wrong.example.test").dynamic()]);
    // Same name, another secret: BIND refuses the signature.
    let wrong = world.files.write(
        "wrong.key",
        tsig_keygen(TSIG_KEY_NAME, TsigAlgorithm::HmacSha256),
    );
    let flags = world.flags(&world.rfc2136(&wrong), &[]);
    let spawner = world.spawner(&flags);
    let acme = &world.acme;
    let (name, _) = acme.target(
        &["hostname=wrong.example.test", "acme-challenge=dns-01"],
        &["127.0.0.1::8443"],
    );
    let row = world.wait_row(&flags, &name, "failing at the update", |r| {
        r["acme_state"] == "failing"
    });
    assert_eq!(row["acme_step"], "dns update", "{row:#}");
    let error = row["acme_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("NOTAUTH") && (error.contains("BADSIG") || error.contains("BADKEY")),
        "{row:#}"
    );
    // A second order after the backoff, the same cause: still one WARN.
    eventually(Duration::from_secs(30), "a second order", || {
        let n = count(&spawner, ORDERING);
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} orders"))
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let logs = spawner.logs();
    assert_eq!(
        lines_with(&logs, ORDER_FAILED).len(),
        1,
        "one WARN per cause: {logs}"
    );
    assert!(world.txt("_acme-challenge.wrong.example.test").is_empty());
    assert!(
        !acme.pebble.logs().contains(PEBBLE_VALIDATES),
        "the CA was never asked to look"
    );
}

#[test]
fn a_record_that_never_shows_fails_as_not_visible_and_the_ca_is_never_asked() {
    let world = World::start(&[Zone::new("example.test").a("late.example.test").dynamic()]);
    // Says it wrote the record, writes nothing.
    let liar = script_file(&world.files, "liar.sh", "#!/bin/sh\nexit 0\n");
    let provider = vec!["--acme-dns-hook".to_string(), liar.display().to_string()];
    let flags = world.flags(&provider, &["--acme-dns-propagation-timeout", "2s"]);
    let _spawner = world.spawner(&flags);
    let (name, _) = world.acme.target(
        &["hostname=late.example.test", "acme-challenge=dns-01"],
        &["127.0.0.1::8443"],
    );
    let row = world.wait_row(&flags, &name, "failing: not visible", |r| {
        r["acme_state"] == "failing"
    });
    assert_eq!(row["acme_step"], "dns not visible", "{row:#}");
    let error = row["acme_error"].as_str().unwrap_or_default();
    assert!(error.contains("not visible after 2s"), "{row:#}");
    assert!(
        !world.acme.pebble.logs().contains(PEBBLE_VALIDATES),
        "the CA was never asked to look"
    );
}

/// A wildcard with another challenge is refused, naming dns-01, and nothing is ordered.
#[test]
fn a_wildcard_with_http01_is_refused_naming_dns_01() {
    let world = World::start(&[Zone::new("example.test").dynamic()]);
    let flags = world.flags(&world.rfc2136(world.bind.tsig_key_file()), &[]);
    let spawner = world.spawner(&flags);
    let (name, _) = world
        .acme
        .target(&["hostname=*.example.test"], &["127.0.0.1::8443"]);
    let label = format!("{}.hostname", world.acme.prefix);
    spawner.wait_invalid_label(
        &name,
        &label,
        "*.example.test",
        "can only be proved by dns-01, not http-01",
    );
    assert_eq!(count(&spawner, ORDERING), 0);
}
