//! The spawner's DNS-01 DNS module (`spawner::Dns`) against a real BIND 9 (`harness::bind`):
//! the zone of a challenge name is found by SOA (also for a name several labels below its zone,
//! and for a zone inside another), a `_acme-challenge` CNAME is followed into a validation zone;
//! TSIG-signed RFC 2136 updates (hmac-sha256 and hmac-sha512) add values side by side and
//! remove exactly one, and the record shows on the server; a wrong key and a zone without
//! updates are refused naming why, and nothing is written; a value never written is reported
//! not visible after the propagation timeout. The exec hook gets its arguments and nothing of
//! the spawner's environment, is killed with what it started at its timeout, and a failing hook
//! is reported with its exit code and stderr.
//!
//! named's NS records point at 127.0.0.1 port 53, where nothing of the test answers, so every
//! test names the server itself as the resolver (`--acme-dns-resolver`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::bind::{tsig_keygen, Bind, TsigAlgorithm as BindAlgorithm, Zone, TSIG_KEY_NAME};
use harness::tmp::TempDir;
use harness::wait::{poll_until, within};
use shared::dns::DnsName;
use spawner::{Dns, DnsError, Location, Provider, Step, TsigAlgorithm, TsigKey};

/// The whole of each test: named starts in under a second, updates and queries take
/// milliseconds; the longest wait is a 2 s propagation timeout.
const LIMIT: Duration = Duration::from_secs(30);

/// The hook's whole environment, as the spawner sets it.
const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `example.test` (updates allowed) with A records, a zone of its own below it
/// (`sub.example.test`), `_acme-challenge.alias.example.test` delegated by CNAME to
/// `alias.validation.test` (updates allowed), a CNAME loop; `static.test` takes no updates.
fn zones() -> Vec<Zone> {
    vec![
        Zone::new("example.test")
            .a("example.test")
            .a("www.example.test")
            .cname(
                "_acme-challenge.alias.example.test",
                "alias.validation.test",
            )
            .cname("_acme-challenge.loop.example.test", "loop2.example.test")
            .cname("loop2.example.test", "_acme-challenge.loop.example.test")
            .dynamic(),
        Zone::new("sub.example.test")
            .a("sub.example.test")
            .dynamic(),
        Zone::new("validation.test").dynamic(),
        Zone::new("static.test").a("static.test"),
    ]
}

fn name(text: &str) -> DnsName {
    text.parse().expect("a DNS name")
}

/// RFC 2136 updates to `bind` with `key_file`, `bind` also the resolver.
fn rfc2136(bind: &Bind, key_file: &Path, propagation: Duration) -> Dns {
    Dns {
        provider: Provider::Rfc2136 {
            server: bind.addr(),
            key: TsigKey::read(key_file).expect("the key file"),
        },
        resolver: Some(bind.addr()),
        propagation_timeout: propagation,
    }
}

async fn locate(dns: &Dns, bind: &Bind, of: &str) -> Location {
    dns.locate(&name(of))
        .await
        .unwrap_or_else(|e| panic!("locate {of}: {e}\n{}", bind.logs()))
}

fn sorted(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values
}

#[tokio::test]
async fn the_zone_is_found_by_its_soa() {
    within(LIMIT, "locating challenge names in their zones", async {
        let bind = Bind::start(&zones()).await;
        let dns = rfc2136(&bind, bind.tsig_key_file(), Duration::from_secs(5));
        for (of, fqdn, zone) in [
            (
                "example.test",
                "_acme-challenge.example.test",
                "example.test",
            ),
            (
                "www.example.test",
                "_acme-challenge.www.example.test",
                "example.test",
            ),
            // Nothing exists below the zone's apex here: NXDOMAIN, the SOA in the authority
            // section.
            (
                "a.b.example.test",
                "_acme-challenge.a.b.example.test",
                "example.test",
            ),
            // A zone of its own inside example.test: counting labels would miss it.
            (
                "x.sub.example.test",
                "_acme-challenge.x.sub.example.test",
                "sub.example.test",
            ),
            ("Static.TEST", "_acme-challenge.static.test", "static.test"),
        ] {
            let at = locate(&dns, &bind, of).await;
            assert_eq!(
                at,
                Location {
                    fqdn: fqdn.into(),
                    zone: zone.into(),
                    via_cname: false,
                    // The resolver and the update server: the same, once.
                    servers: vec![bind.addr()],
                },
                "{of}"
            );
        }

        // A name in none of the zones: only the root's SOA (named's own root zone) answers.
        let e = dns
            .locate(&name("nowhere.invalid"))
            .await
            .expect_err("no zone");
        assert_eq!(e.step, Step::ZoneLookup);
        assert!(
            e.message.contains("_acme-challenge.nowhere.invalid")
                && e.message.contains("in no zone")
                && e.message.contains(&bind.addr().to_string()),
            "{e}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_cname_at_the_challenge_name_is_followed_into_its_zone() {
    within(LIMIT, "locating through a CNAME", async {
        let bind = Bind::start(&zones()).await;
        let dns = rfc2136(&bind, bind.tsig_key_file(), Duration::from_secs(5));
        let at = locate(&dns, &bind, "alias.example.test").await;
        assert_eq!(
            at,
            Location {
                fqdn: "alias.validation.test".into(),
                zone: "validation.test".into(),
                via_cname: true,
                servers: vec![bind.addr()],
            }
        );

        let e = dns
            .locate(&name("loop.example.test"))
            .await
            .expect_err("a CNAME loop");
        assert_eq!(e.step, Step::ZoneLookup);
        assert!(e.message.contains("CNAME loop"), "{e}");
        assert_eq!(e.cause, e.message);
    })
    .await;
}

/// Two values side by side (a certificate for `example.test` and `*.example.test`), visible,
/// one removed, removing it again is no error, then the other.
async fn present_wait_cleanup(algorithm: BindAlgorithm, expected: TsigAlgorithm) {
    let bind = Bind::start_with(&zones(), algorithm).await;
    let dns = rfc2136(&bind, bind.tsig_key_file(), Duration::from_secs(10));
    let Provider::Rfc2136 { key, .. } = &dns.provider else {
        unreachable!("rfc2136 above")
    };
    assert_eq!(
        (key.name.as_str(), key.algorithm),
        (TSIG_KEY_NAME, expected)
    );

    let at = locate(&dns, &bind, "example.test").await;
    let values = ["first-value".to_string(), "second-value".to_string()];
    for value in &values {
        dns.present(&at, value)
            .await
            .unwrap_or_else(|e| panic!("present {value}: {e}\n{}", bind.logs()));
    }
    dns.wait_visible(&at, &values)
        .await
        .unwrap_or_else(|e| panic!("visible: {e}\n{}", bind.logs()));
    assert_eq!(sorted(bind.txt(&at.fqdn).await), values);

    dns.cleanup(&at, &values[0]).await.expect("cleanup");
    assert_eq!(bind.txt(&at.fqdn).await, [values[1].clone()]);
    dns.cleanup(&at, &values[0])
        .await
        .expect("removing a value that is not there");
    dns.cleanup(&at, &values[1]).await.expect("cleanup");
    assert!(bind.txt(&at.fqdn).await.is_empty());

    // Through the CNAME: written at its target, seen at the challenge name as a CA sees it.
    let delegated = locate(&dns, &bind, "alias.example.test").await;
    dns.present(&delegated, "delegated-value")
        .await
        .expect("present at the CNAME's target");
    dns.wait_visible(&delegated, &["delegated-value".to_string()])
        .await
        .expect("visible");
    assert_eq!(
        bind.txt("_acme-challenge.alias.example.test").await,
        ["delegated-value"]
    );
    dns.cleanup(&delegated, "delegated-value")
        .await
        .expect("cleanup");
    assert!(bind.txt("alias.validation.test").await.is_empty());
}

#[tokio::test]
async fn signed_updates_with_hmac_sha256_add_and_remove_values() {
    within(
        LIMIT,
        "hmac-sha256 updates",
        present_wait_cleanup(BindAlgorithm::HmacSha256, TsigAlgorithm::HmacSha256),
    )
    .await;
}

#[tokio::test]
async fn signed_updates_with_hmac_sha512_add_and_remove_values() {
    within(
        LIMIT,
        "hmac-sha512 updates",
        present_wait_cleanup(BindAlgorithm::HmacSha512, TsigAlgorithm::HmacSha512),
    )
    .await;
}

#[tokio::test]
async fn a_wrong_key_or_a_static_zone_is_refused_and_nothing_written() {
    within(LIMIT, "refused updates", async {
        let bind = Bind::start(&zones()).await;
        let keys = TempDir::new("acme-dns-keys");
        // The right name with another secret, and a name the server does not know.
        let wrong_secret = keys.write(
            "wrong-secret.key",
            tsig_keygen(TSIG_KEY_NAME, BindAlgorithm::HmacSha256),
        );
        let unknown = keys.write(
            "unknown.key",
            tsig_keygen("someone-else", BindAlgorithm::HmacSha256),
        );
        let addr = bind.addr();
        for (key_file, key_name, tsig_error) in [
            (&wrong_secret, TSIG_KEY_NAME, "BADSIG"),
            (&unknown, "someone-else", "BADKEY"),
        ] {
            let dns = rfc2136(&bind, key_file, Duration::from_secs(5));
            let at = locate(&dns, &bind, "example.test").await;
            let e = dns.present(&at, "value").await.expect_err("refused");
            assert_eq!(e.step, Step::Update, "{e}");
            let expected = format!(
                "update of _acme-challenge.example.test in zone example.test at {addr} refused: \
                 NOTAUTH (TSIG {tsig_error}: the server does not "
            );
            assert!(e.message.starts_with(&expected), "{e}");
            assert!(e.message.contains(&format!("key \"{key_name}\"")), "{e}");
            assert!(!e.message.contains("value"), "{e}");
            // Again: the same cause, so the log warns once.
            let again = dns.present(&at, "another").await.expect_err("refused");
            assert_eq!(again.cause, e.cause);
            assert!(bind.txt("_acme-challenge.example.test").await.is_empty());
        }

        let dns = rfc2136(&bind, bind.tsig_key_file(), Duration::from_secs(5));
        let at = locate(&dns, &bind, "static.test").await;
        let e: DnsError = dns.present(&at, "value").await.expect_err("refused");
        assert_eq!(e.step, Step::Update);
        assert!(
            e.message.starts_with(&format!(
                "update of _acme-challenge.static.test in zone static.test at {addr} refused: REFUSED"
            )),
            "{e}"
        );
        assert!(bind.txt("_acme-challenge.static.test").await.is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_value_never_written_is_not_visible_after_the_timeout() {
    within(LIMIT, "waiting for a value never written", async {
        let bind = Bind::start(&zones()).await;
        let dns = rfc2136(&bind, bind.tsig_key_file(), Duration::from_secs(2));
        let at = locate(&dns, &bind, "example.test").await;
        let started = Instant::now();
        let e = dns
            .wait_visible(&at, &["never-written".to_string()])
            .await
            .expect_err("not visible");
        let took = started.elapsed();
        assert!(
            (Duration::from_secs(2)..Duration::from_secs(5)).contains(&took),
            "{took:?}"
        );
        assert_eq!(e.step, Step::NotVisible);
        assert_eq!(
            e.message,
            format!(
                "_acme-challenge.example.test: TXT not visible after 2s on {} (answered: none)",
                bind.addr()
            )
        );

        // Another value there: named in the message, not in the cause.
        bind.update_txt("_acme-challenge.example.test", "other-value", true)
            .await;
        let again = dns
            .wait_visible(&at, &["never-written".to_string()])
            .await
            .expect_err("not visible");
        assert!(
            again.message.contains("(answered: \"other-value\")"),
            "{again}"
        );
        assert_eq!(again.cause, e.cause);
        assert!(!again.cause.contains("other-value"));
    })
    .await;
}

/// Installs `body` as an executable script `name` in `dir`. Copied into place by `install`, so
/// no file descriptor of this process ever has the script open for writing: a fork by another
/// test meanwhile would make its exec fail with "Text file busy".
fn script(dir: &TempDir, name: &str, body: &str) -> PathBuf {
    let source = dir.write(&format!("{name}.source"), body);
    let path = dir.path().join(name);
    let out = Command::new("install")
        .args(["-m", "0755"])
        .arg(&source)
        .arg(&path)
        .output()
        .expect("run install");
    assert!(out.status.success(), "install: {out:?}");
    path
}

fn hook(path: &Path, timeout: Duration, resolver: Option<SocketAddr>) -> Dns {
    Dns {
        provider: Provider::Hook {
            path: path.to_path_buf(),
            timeout,
        },
        resolver,
        propagation_timeout: Duration::from_secs(10),
    }
}

/// A location without a DNS server, for the hook tests that need none.
fn location(fqdn: &str) -> Location {
    Location {
        fqdn: fqdn.into(),
        zone: "x.test".into(),
        via_cname: false,
        servers: Vec::new(),
    }
}

#[tokio::test]
async fn a_hook_writes_through_nsupdate_with_its_arguments_and_a_clean_environment() {
    within(LIMIT, "the exec hook", async {
        let bind = Bind::start(&zones()).await;
        let dir = TempDir::new("acme-dns-hook");
        let calls = dir.path().join("calls");
        let env = dir.path().join("env");
        let body = format!(
            r#"#!/bin/sh
printf '%s|%s|%s\n' "$1" "$2" "$3" >> '{calls}'
env > '{env}'
case "$1" in
    present) op="add $2 60" ;;
    cleanup) op="delete $2" ;;
    *) echo "unknown action $1" >&2; exit 2 ;;
esac
printf 'server 127.0.0.1 {port}\nzone example.test.\nupdate %s TXT "%s"\nsend\n' "$op" "$3" \
    | nsupdate -k '{key}' -t 5
"#,
            calls = calls.display(),
            env = env.display(),
            port = bind.addr().port(),
            key = bind.tsig_key_file().display(),
        );
        let path = script(&dir, "hook.sh", &body);
        let dns = hook(&path, Duration::from_secs(10), Some(bind.addr()));

        let at = locate(&dns, &bind, "example.test").await;
        // With a hook, only the resolver is asked.
        assert_eq!(at.servers, [bind.addr()]);
        dns.present(&at, "hook-value")
            .await
            .unwrap_or_else(|e| panic!("present: {e}\n{}", bind.logs()));
        dns.wait_visible(&at, &["hook-value".to_string()])
            .await
            .expect("visible");
        assert_eq!(bind.txt(&at.fqdn).await, ["hook-value"]);
        dns.cleanup(&at, "hook-value").await.expect("cleanup");
        assert!(bind.txt(&at.fqdn).await.is_empty());

        let calls = std::fs::read_to_string(&calls).expect("the hook's calls");
        assert_eq!(
            calls,
            "present|_acme-challenge.example.test.|hook-value\n\
             cleanup|_acme-challenge.example.test.|hook-value\n"
        );
        // Only PATH of ours; the shell adds PWD (and maybe SHLVL, _). Nothing of this
        // process's environment (HOME, CARGO_*, ...) gets through.
        let env = std::fs::read_to_string(&env).expect("the hook's environment");
        let shell_sets = |var: &str| matches!(var, "PWD" | "OLDPWD" | "SHLVL" | "_");
        let vars: Vec<(&str, &str)> = env.lines().filter_map(|l| l.split_once('=')).collect();
        assert!(vars.contains(&("PATH", HOOK_PATH)), "{env}");
        for (var, _) in &vars {
            assert!(
                *var == "PATH" || shell_sets(var),
                "{var} in the hook's environment:\n{env}"
            );
        }
        let ours: Vec<String> = std::env::vars().map(|(var, _)| var).collect();
        assert!(
            ours.iter().any(|v| v == "HOME" || v.starts_with("CARGO")),
            "{ours:?}"
        );
        for var in ours {
            assert!(
                var == "PATH" || shell_sets(&var) || !vars.iter().any(|(v, _)| *v == var),
                "the test's {var} reached the hook"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn a_hook_that_hangs_is_killed_with_what_it_started() {
    within(LIMIT, "a hanging hook", async {
        let dir = TempDir::new("acme-dns-hang");
        let pid_file = dir.path().join("sleep.pid");
        let body = format!(
            "#!/bin/sh\nsleep 60 &\necho $! > '{}'\nwait\n",
            pid_file.display()
        );
        let path = script(&dir, "hang.sh", &body);
        let dns = hook(&path, Duration::from_secs(1), None);
        let started = Instant::now();
        let e = dns
            .present(&location("_acme-challenge.x.test"), "value")
            .await
            .expect_err("killed");
        let took = started.elapsed();
        assert!(
            (Duration::from_secs(1)..Duration::from_secs(10)).contains(&took),
            "{took:?}"
        );
        assert_eq!(e.step, Step::Hook);
        assert_eq!(
            e.message,
            format!(
                "the DNS hook {} present _acme-challenge.x.test. was killed after 1s",
                path.display()
            )
        );
        assert_eq!(e.cause, e.message);

        // The sleep the script started went with it (gone, or a zombie where PID 1 does not
        // reap orphans).
        let pid = std::fs::read_to_string(&pid_file).expect("the sleep's pid");
        let stat = format!("/proc/{}/stat", pid.trim());
        poll_until(
            Duration::from_secs(5),
            "the hook's sleep to be gone",
            || match std::fs::read_to_string(&stat) {
                Err(_) => Some(()),
                Ok(s) => s
                    .rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
                    .then_some(()),
            },
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_failing_hook_is_reported_with_its_exit_code_and_stderr() {
    within(LIMIT, "a failing hook", async {
        let dir = TempDir::new("acme-dns-fail");
        let path = script(
            &dir,
            "fail.sh",
            "#!/bin/sh\necho 'some progress'\necho 'first line' >&2\n\
             printf 'the API said no\\033[0m\\n' >&2\nexit 3\n",
        );
        let dns = hook(&path, Duration::from_secs(10), None);
        let at = location("_acme-challenge.x.test");
        let e = dns
            .cleanup(&at, "secret-ish-value")
            .await
            .expect_err("exit 3");
        assert_eq!(e.step, Step::Hook);
        let head = format!(
            "the DNS hook {} cleanup _acme-challenge.x.test. exited with code 3",
            path.display()
        );
        assert_eq!(
            e.message,
            format!("{head}: stderr: first line / the API said no\\u{{1b}}[0m")
        );
        assert_eq!(e.cause, head);

        let missing = hook(
            &dir.path().join("missing.sh"),
            Duration::from_secs(10),
            None,
        );
        let e = missing
            .present(&at, "value")
            .await
            .expect_err("no such file");
        assert_eq!(e.step, Step::Hook);
        assert!(
            e.message
                .ends_with("could not be run: No such file or directory (os error 2)"),
            "{e}"
        );
    })
    .await;
}

#[test]
fn a_key_file_in_tsig_keygen_format_is_read() {
    let dir = TempDir::new("acme-dns-key");
    for (algorithm, expected) in [
        (BindAlgorithm::HmacSha256, TsigAlgorithm::HmacSha256),
        (BindAlgorithm::HmacSha512, TsigAlgorithm::HmacSha512),
    ] {
        let text = tsig_keygen("made-by-keygen", algorithm);
        let file = dir.write("k.key", &text);
        let key = TsigKey::read(&file).expect("reads");
        assert_eq!(
            (key.name.as_str(), key.algorithm),
            ("made-by-keygen", expected)
        );
        let debug = format!("{key:?}");
        let secret = text
            .split('"')
            .nth(3)
            .expect("the secret, the fourth quoted part");
        assert!(!debug.contains(secret), "{debug}");
    }
    let e = TsigKey::read(&dir.path().join("none.key")).expect_err("missing");
    assert!(e.contains("none.key") && e.contains("No such file"), "{e}");
    let e = TsigKey::read(&dir.write("md5.key", "key k { algorithm hmac-md5; secret \"AAAA\"; };"))
        .expect_err("md5");
    assert!(e.contains("hmac-md5 is not supported"), "{e}");
}
