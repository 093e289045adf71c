//! One ACME test's world, set up the same way by every test that talks to a CA: a runtime for
//! the async parts, a Pebble of its own, an empty store, the file that trusts Pebble's directory,
//! the spawner's ACME flags for all three, and a label prefix whose containers a [`TestRun`]
//! guard removes. What a test asks of that world (a spawner, a target, its status row, the
//! certificate served, the pairs in the store) is a method of [`Acme`]; how long it may wait for
//! each is a constant here.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::certs::dns_sans;
use harness::client::{self, HttpConn, Trust, ALPN_H1};
use harness::docker::{images, unique_name, TestRun, LIFECYCLE_DEADLINE};
use harness::pebble::{Options, Pebble};
use harness::spawner::{self, Spawner};
use harness::tmp::TempDir;
use harness::wait::{within, STEP};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;
use tokio::runtime::Runtime;

/// How long an issuance may take end to end (sidecar up, order, validation, delivery). Pebble
/// without its random sleeps validates in milliseconds; the rest is the spawner's turns and a
/// retry or two on a loaded CI machine.
pub(super) const ISSUANCE: Duration = Duration::from_secs(60);
/// How long the status may take to show an ACME outcome the log or the CA already shows.
pub(super) const STATE: Duration = Duration::from_secs(30);
/// The first retry delay the tests run with (`--acme-retry-min`): long enough to tell a backoff
/// from a tight loop in the log, short enough to keep the tests quick.
pub(super) const RETRY_MIN: Duration = Duration::from_secs(2);
/// How often the tests re-check a condition that costs a process (`spawner status`) or a TLS
/// handshake.
const POLL: Duration = Duration::from_millis(200);

/// Re-evaluates `check` every [`POLL`] until it returns `Ok`, or panics after `limit` naming
/// `what` and the last thing `check` saw.
pub(super) fn eventually<T>(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= limit => {
                panic!("gave up after {limit:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Asserts `check` holds (returns `Ok`) at every look over `window`.
pub(super) fn holds_for(
    window: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) {
    let end = Instant::now() + window;
    loop {
        if let Err(e) = check() {
            panic!("{what}: {e}");
        }
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// The daemon's ACME and store flags (what `spawner status` must be given too).
pub(super) fn acme_flags(store: &Path, directory: &str, ca_cert: Option<&Path>) -> Vec<String> {
    let mut flags = vec![
        "--certs-from".to_string(),
        store.display().to_string(),
        "--acme-email".to_string(),
        "ops@example.com".to_string(),
        "--acme-agree-tos".to_string(),
        "--acme-directory".to_string(),
        directory.to_string(),
        "--acme-retry-min".to_string(),
        format!("{}s", RETRY_MIN.as_secs()),
    ];
    if let Some(ca) = ca_cert {
        flags.push("--acme-ca-cert".to_string());
        flags.push(ca.display().to_string());
    }
    flags
}

/// A demo container opted in under `prefix` with `labels` (each `key=value` under the prefix,
/// e.g. `hostname=a.test`) and `-p` for each of `publish`. Returns its name and ID.
pub(super) fn target(
    run: &TestRun,
    prefix: &str,
    labels: &[&str],
    publish: &[&str],
) -> (String, String) {
    let name = unique_name("app");
    let mut args = vec![
        "--label".to_string(),
        format!("{prefix}.proxy-image={}", images().sidecar),
    ];
    for l in labels {
        args.push("--label".into());
        args.push(format!("{prefix}.{l}"));
    }
    for p in publish {
        args.push("-p".into());
        args.push((*p).to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let id = run.container(&name, &images().demo, &args, &[]);
    (name, id)
}

/// One test's CA, store and containers: a Pebble, an empty store directory, the file trusting
/// Pebble's directory, the spawner's flags for them, and a label prefix of its own.
///
/// Fields drop in the order declared: the test's containers first, then Pebble and its files,
/// the runtime last. A test's spawner, a local declared after the fixture, stops before all.
pub(super) struct Acme {
    /// Removes the containers and volumes the test made, and the sidecars under `prefix`.
    pub(super) run: TestRun,
    /// The label prefix of this test's spawner and targets.
    pub(super) prefix: String,
    pub(super) pebble: Pebble,
    store: TempDir,
    /// Pebble's directory CA, as `--acme-ca-cert` reads it.
    ca: PathBuf,
    flags: Vec<String>,
    _files: TempDir,
    /// Drives the async parts (TLS clients, Pebble's start); its workers keep open connections
    /// going while the test thread polls.
    rt: Runtime,
}

impl Acme {
    /// [`Acme::start_with`] with Pebble's default settings.
    pub(super) fn start() -> Acme {
        Acme::start_with(Options::default())
    }

    /// Starts a Pebble with `options` and makes the store, the CA file, the flags and a label
    /// prefix.
    pub(super) fn start_with(options: Options) -> Acme {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let pebble = rt.block_on(Pebble::start_with(options));
        let store = TempDir::new("acme-store");
        let files = TempDir::new("acme-files");
        let ca = files.write("directory-ca.pem", pebble.directory_ca_pem());
        let flags = acme_flags(store.path(), pebble.directory_url(), Some(&ca));
        let run = TestRun::new();
        let prefix = run.label_prefix();
        Acme {
            run,
            prefix,
            pebble,
            store,
            ca,
            flags,
            _files: files,
            rt,
        }
    }

    /// The flags `spawner status` gets: the daemon's store and ACME flags.
    pub(super) fn flags(&self) -> Vec<&str> {
        self.flags.iter().map(String::as_str).collect()
    }

    /// The store directory the spawner writes (certbot's layout, and `acme/`).
    pub(super) fn store(&self) -> &Path {
        self.store.path()
    }

    /// The PEM file of Pebble's directory CA (`--acme-ca-cert`).
    pub(super) fn ca(&self) -> &Path {
        &self.ca
    }

    /// A spawner on this test's prefix with this CA and store, reconciling every second (so a
    /// restart's first turns come quickly).
    pub(super) fn spawner(&self) -> Spawner {
        let mut flags = self.flags();
        flags.extend_from_slice(&["--resync-interval", "1s"]);
        Spawner::start(&self.prefix, &flags)
    }

    /// A target on this test's prefix, see [`target`].
    pub(super) fn target(&self, labels: &[&str], publish: &[&str]) -> (String, String) {
        target(&self.run, &self.prefix, labels, publish)
    }

    /// A target for `hostname` (the label's value) publishing its port 80 where Pebble
    /// validates HTTP-01 and its 8443 on a free port. Returns its name and ID.
    pub(super) fn http01_target(&self, hostname: &str) -> (String, String) {
        self.target(
            &[&format!("hostname={hostname}")],
            &[&self.http01_port(), "127.0.0.1::8443"],
        )
    }

    /// `-p` publishing the target's port 80 where Pebble validates HTTP-01.
    pub(super) fn http01_port(&self) -> String {
        format!("127.0.0.1:{}:80", self.pebble.http_port())
    }

    /// `-p` publishing the target's 8443 where Pebble validates TLS-ALPN-01.
    pub(super) fn tls_alpn01_port(&self) -> String {
        format!("127.0.0.1:{}:8443", self.pebble.tls_port())
    }

    /// The status row of `target` (its name).
    pub(super) fn row(&self, target: &str) -> serde_json::Value {
        spawner::row(&spawner::status_json(&self.prefix, &self.flags()), target).clone()
    }

    /// Waits for the status row of `target` to show `acme_state` `state`; returns the row.
    pub(super) fn wait_state(&self, target: &str, state: &str) -> serde_json::Value {
        eventually(
            STATE,
            &format!("acme_state {state:?} in {target}'s status row"),
            || {
                let row = self.row(target);
                if row["acme_state"] == state {
                    Ok(row)
                } else {
                    Err(format!("{row:#}"))
                }
            },
        )
    }

    /// Ok when `chain` verifies, as a TLS server certificate for `name` now, up to Pebble's root.
    pub(super) fn verify(
        &self,
        chain: &[CertificateDer<'static>],
        name: &str,
    ) -> Result<(), String> {
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
        let mut roots = RootCertStore::empty();
        roots
            .add(
                CertificateDer::from_pem_slice(self.pebble.issuer_root_pem().as_bytes())
                    .expect("Pebble root PEM"),
            )
            .expect("add Pebble's root");
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), client::provider())
                .build()
                .expect("verifier");
        let server_name = ServerName::try_from(name.to_string()).expect("server name");
        verifier
            .verify_server_cert(leaf, intermediates, &server_name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| format!("does not verify for {name} to Pebble's root: {e}"))
    }

    /// The chain 127.0.0.1:`port` presents for SNI `sni` (any certificate accepted); `None` when
    /// nothing completes a handshake within a few seconds.
    pub(super) fn served_chain(
        &self,
        port: u16,
        sni: &str,
    ) -> Option<Vec<CertificateDer<'static>>> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let config = client::config(Trust::AnyCert, ALPN_H1);
        self.rt.block_on(async {
            let tls = tokio::time::timeout(
                Duration::from_secs(3),
                client::try_tls_connect(addr, sni, config),
            )
            .await
            .ok()?
            .ok()?;
            let chain = tls.get_ref().1.peer_certificates()?;
            Some(chain.iter().map(|c| c.clone().into_owned()).collect())
        })
    }

    /// Waits until 127.0.0.1:`port` serves, for SNI each of `names`, a chain from Pebble that
    /// verifies for that name (and for all of them); returns the chain served for the first.
    pub(super) fn wait_issued(&self, port: u16, names: &[&str]) -> Vec<CertificateDer<'static>> {
        eventually(
            ISSUANCE,
            &format!("a Pebble certificate for {names:?} served on {port}"),
            || {
                let mut first = None;
                for sni in names {
                    let chain = self.served_chain(port, sni).ok_or("no TLS handshake")?;
                    for name in names {
                        self.verify(&chain, name)?;
                    }
                    first.get_or_insert(chain);
                }
                first.ok_or_else(|| "no names".to_string())
            },
        )
    }

    /// Asserts that 127.0.0.1:`port` serves, for SNI `name`, a self-signed certificate for
    /// `name`: not one from Pebble. Returns the leaf.
    pub(super) fn assert_self_signed(&self, port: u16, name: &str) -> CertificateDer<'static> {
        let chain = eventually(
            LIFECYCLE_DEADLINE,
            "a TLS handshake with the sidecar",
            || {
                self.served_chain(port, name)
                    .ok_or_else(|| "no TLS handshake".to_string())
            },
        );
        assert!(
            self.verify(&chain, name).is_err(),
            "a certificate from Pebble already, expected the self-signed one"
        );
        assert!(
            dns_sans(&chain[0]).iter().any(|n| n == name),
            "the self-signed certificate is for {name}: {:?}",
            dns_sans(&chain[0])
        );
        chain[0].clone()
    }

    /// An HTTP/1.1 connection to 127.0.0.1:`port` as `sni` accepting any certificate, its first
    /// `GET /` answered by the demo app; kept open by the caller.
    pub(super) fn open_conn(&self, port: u16, sni: &str) -> HttpConn {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut conn = self.rt.block_on(HttpConn::connect(
            addr,
            sni,
            client::config(Trust::AnyCert, ALPN_H1),
        ));
        self.assert_demo_answers(&mut conn, "a new connection");
        conn
    }

    /// `GET /` on `conn` is answered by the demo app (its echo of the request).
    pub(super) fn assert_demo_answers(&self, conn: &mut HttpConn, what: &str) {
        let reply = self.rt.block_on(within(STEP, what, conn.get("/")));
        assert_eq!(
            reply.status,
            http::StatusCode::OK,
            "{what}: {}",
            reply.text()
        );
        assert!(
            reply.text().starts_with("GET / "),
            "{what}: the demo's echo expected, got {:?}",
            reply.text()
        );
    }

    /// `archive/<first>/<stem>N.pem` files, sorted.
    fn archive(&self, first: &str, stem: &str) -> Vec<String> {
        let dir = self.store().join("archive").join(first);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| {
                n.strip_prefix(stem)
                    .and_then(|rest| rest.strip_suffix(".pem"))
                    .is_some_and(|num| !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        names.sort();
        names
    }

    /// How many issuances the store holds for `first`: archive pairs (chain and key each).
    pub(super) fn issuances(&self, first: &str) -> usize {
        let chains = self.archive(first, "fullchain");
        let keys = self.archive(first, "privkey");
        assert_eq!(
            chains.len(),
            keys.len(),
            "one key per chain in archive/{first}: {chains:?} {keys:?}"
        );
        chains.len()
    }

    /// Asserts `live/<first>/` links to archive pair `n` and returns that chain's leaf.
    pub(super) fn assert_live_is(&self, first: &str, n: usize) -> CertificateDer<'static> {
        let root = self.store();
        for stem in ["fullchain", "privkey"] {
            let live = root.join(format!("live/{first}/{stem}.pem"));
            let meta = std::fs::symlink_metadata(&live)
                .unwrap_or_else(|e| panic!("{}: {e}", live.display()));
            assert!(
                meta.file_type().is_symlink(),
                "{} is a link",
                live.display()
            );
            let to = std::fs::canonicalize(&live).expect("resolve the live link");
            let want = std::fs::canonicalize(root.join(format!("archive/{first}/{stem}{n}.pem")))
                .expect("archive file");
            assert_eq!(to, want, "{} points at pair {n}", live.display());
        }
        let pem = std::fs::read(root.join(format!("live/{first}/fullchain.pem"))).expect("chain");
        CertificateDer::pem_slice_iter(&pem)
            .next()
            .expect("a certificate in the stored chain")
            .expect("PEM certificate")
    }

    /// The spawner's ACME account in the store.
    pub(super) fn account_path(&self) -> PathBuf {
        self.store().join("acme/account.json")
    }
}

impl Drop for Acme {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.pebble.logs();
            let mut from = logs.len().saturating_sub(6000);
            while !logs.is_char_boundary(from) {
                from += 1;
            }
            eprintln!("---- Pebble (the end of its logs) ----\n{}", &logs[from..]);
        }
    }
}
