//! A real authoritative DNS server for the tests: BIND 9's `named` (Debian's `bind9`, 9.18 on
//! bookworm) serving the zones a test describes, with RFC 2136 dynamic updates signed by a TSIG
//! key on the zones that allow them. It is the DNS a DNS-01 client updates and Pebble validates
//! against ([`crate::pebble::Options::dns_server`]).
//!
//! `named` runs as a child process of the test, as the test's own user (no `-u`): in the
//! foreground (`-g`, its log on stderr, kept in a file), with its own config (`-c`), zones,
//! journals, TSIG key and log in a directory of its own, answering on 127.0.0.1 only, on a free
//! port (UDP and TCP, the same number), with no rndc (`controls { };`). It never asks another
//! server: it also serves a root zone of its own, so a name outside the test's zones is
//! NXDOMAIN. Recursion is on for 127.0.0.1 only so that a CNAME into another of its zones is
//! followed in the answer, as a resolver (Let's Encrypt's) follows it: what DNS-01 delegation
//! by CNAME needs. It is killed when the value is dropped; a test that panics meanwhile prints
//! its log.
//!
//! Queries go through `dig` and updates through `nsupdate -k` (Debian's `bind9-dnsutils`), the
//! tools an operator would use, so what a test sees is what they would see. A missing tool fails
//! the test naming the package to install (`tests/tools.sh` installs them): never a silent skip.
//!
//! **AppArmor.** Where AppArmor is on (Debian's kernels enable it), the `bind9` package's profile
//! confines `/usr/sbin/named` to `/etc/bind`, `/var/lib/bind` and `/var/cache/bind`, whoever
//! starts it: a named reading a config under `/tmp` is refused. So when the kernel has AppArmor
//! and this user can write `/var/lib/bind` (root, as in CI), named's directory is made there
//! (the profile allows `/var/lib/bind/** rw`); otherwise under the temporary directory, and a
//! named that turns out to be confined there fails the test saying what to change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::pebble::{free_udp_and_tcp_port, log_file};
use crate::tmp::TempDir;
use crate::wait::{within, STEP};

/// How long named gets to answer every zone's SOA (it starts in well under a second).
const START: Duration = Duration::from_secs(20);

/// How often the start polls the zones' SOA records.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// The TTL of every record, and the SOA's negative-caching TTL: short, so that a caching
/// resolver between a test and this server (none today) would not hide an update for long.
const TTL: u32 = 5;

/// The name of the server's TSIG key, in its key file and in `allow-update`.
pub const TSIG_KEY_NAME: &str = "tls-sidecar-test";

/// Where AppArmor's `named` profile lets named read and write (`/var/lib/bind/** rw`).
const APPARMOR_DIR: &str = "/var/lib/bind";

/// The HMAC of the TSIG key ([RFC 8945]); named and nsupdate know both.
///
/// [RFC 8945]: https://www.rfc-editor.org/rfc/rfc8945
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TsigAlgorithm {
    /// `hmac-sha256`, `tsig-keygen`'s default.
    #[default]
    HmacSha256,
    /// `hmac-sha512`.
    HmacSha512,
}

impl TsigAlgorithm {
    /// The name BIND, nsupdate and RFC 8945 use (`hmac-sha256`).
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }
}

/// A zone to serve: its SOA and NS (`ns.<zone>`, 127.0.0.1) are written by the harness, the rest
/// of its records by the test.
#[derive(Debug, Clone)]
pub struct Zone {
    name: String,
    records: Vec<String>,
    dynamic: bool,
}

impl Zone {
    /// A zone named `name` (`example.test`), with only its SOA and NS records so far.
    pub fn new(name: &str) -> Zone {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
            "zone name {name:?}: letters, digits, '.', '-' and '_' only"
        );
        Zone {
            name,
            records: Vec::new(),
            dynamic: false,
        }
    }

    /// The zone's name, without a trailing dot.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `name IN A 127.0.0.1`: where Pebble connects for HTTP-01 and TLS-ALPN-01.
    pub fn a(self, name: &str) -> Zone {
        let owner = self.owner(name);
        self.record(&format!("{owner} {TTL} IN A 127.0.0.1"))
    }

    /// `name IN CNAME target`, e.g. `_acme-challenge.www.example.test` to a name in another
    /// zone, where a DNS-01 client puts the TXT record instead. A CNAME owner has no other
    /// records: named ignores a TXT update at it, and nsupdate still reports success.
    pub fn cname(self, name: &str, target: &str) -> Zone {
        let owner = self.owner(name);
        let target = fqdn(target);
        self.record(&format!("{owner} {TTL} IN CNAME {target}"))
    }

    /// A TXT record present from the start.
    pub fn txt(self, name: &str, value: &str) -> Zone {
        let owner = self.owner(name);
        self.record(&format!("{owner} {TTL} IN TXT {}", quote(value)))
    }

    /// Any record, as one zone-file line with an absolute owner (`x.example.test. 5 IN MX 10
    /// mail.example.test.`).
    pub fn record(mut self, line: &str) -> Zone {
        self.records.push(line.to_string());
        self
    }

    /// Allows RFC 2136 updates signed with the server's TSIG key
    /// (`allow-update { key "tls-sidecar-test"; };`).
    pub fn dynamic(mut self) -> Zone {
        self.dynamic = true;
        self
    }

    /// `name` as an absolute owner name, which must be in this zone.
    fn owner(&self, name: &str) -> String {
        let owner = fqdn(name);
        assert!(
            self.contains(&owner),
            "{owner} is not in the zone {}",
            self.name
        );
        owner
    }

    /// Whether the absolute name `fqdn` is this zone's apex or below it.
    fn contains(&self, fqdn: &str) -> bool {
        let name = fqdn.trim_end_matches('.');
        name == self.name || name.ends_with(&format!(".{}", self.name))
    }

    /// The zone file: SOA (with `serial`, the instance's own), NS, the NS's address, the records.
    fn file(&self, serial: u32) -> String {
        let zone = &self.name;
        let mut file = format!(
            "$TTL {TTL}\n\
             {zone}. IN SOA ns.{zone}. hostmaster.{zone}. ( {serial} 3600 600 86400 {TTL} )\n\
             {zone}. IN NS ns.{zone}.\n\
             ns.{zone}. IN A 127.0.0.1\n"
        );
        for record in &self.records {
            file.push_str(record);
            file.push('\n');
        }
        file
    }
}

/// A running named serving some zones on 127.0.0.1.
pub struct Bind {
    named: Child,
    addr: SocketAddr,
    zones: Vec<Zone>,
    algorithm: TsigAlgorithm,
    key_file: PathBuf,
    secret: String,
    log: PathBuf,
    /// Tools found at start: `dig` and `nsupdate`.
    dig: PathBuf,
    nsupdate: PathBuf,
    /// named's AppArmor label when it is confined (`named (enforce)`).
    apparmor: Option<String>,
    home: Home,
}

impl Bind {
    /// Starts named with `zones` and an `hmac-sha256` key; see [`Bind::start_with`].
    pub async fn start(zones: &[Zone]) -> Bind {
        Bind::start_with(zones, TsigAlgorithm::default()).await
    }

    /// Generates the TSIG key (`tsig-keygen -a <algorithm>`), writes the zones and the config,
    /// starts named and polls until every zone's SOA answers with this instance's serial. A port
    /// another process took between the pick and named's bind makes a start on a fresh port
    /// (three attempts); any other failure panics with named's log.
    pub async fn start_with(zones: &[Zone], algorithm: TsigAlgorithm) -> Bind {
        assert!(!zones.is_empty(), "a DNS server needs at least one zone");
        let tools = Tools::find();
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            match Bind::try_start(&tools, zones, algorithm).await {
                Ok(bind) => return bind,
                Err(e) if attempt < ATTEMPTS && e.contains("address in use") => {
                    eprintln!("bind: its port was taken meanwhile, starting again");
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    async fn try_start(
        tools: &Tools,
        zones: &[Zone],
        algorithm: TsigAlgorithm,
    ) -> Result<Bind, String> {
        let home = Home::new();
        let dir = home.path().to_path_buf();
        let key = tsig_keygen_with(&tools.tsig_keygen, TSIG_KEY_NAME, algorithm);
        let secret = tsig_secret(&key);
        let key_file = dir.join("tsig.key");
        write(&key_file, &key);
        let serial = unique_serial();
        for zone in zones {
            write(&dir.join(zone_file_name(zone)), &zone.file(serial));
        }
        write(&dir.join(ROOT_ZONE_FILE), ROOT_ZONE);
        let addr = free_udp_and_tcp_port();
        let config = dir.join("named.conf");
        write(&config, &named_conf(&dir, addr.port(), zones));

        let log = dir.join("named.log");
        // -g: foreground, log to stderr; -4: IPv4 only; -n 1: one worker thread, plenty for
        // a test and cheap when many tests run at once.
        let named = Command::new(&tools.named)
            .args(["-g", "-4", "-n", "1", "-c"])
            .arg(&config)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", tools.named.display()));
        let confinement = apparmor_label(named.id());
        let mut bind = Bind {
            named,
            addr,
            zones: zones.to_vec(),
            algorithm,
            key_file,
            secret,
            log,
            dig: tools.dig.clone(),
            nsupdate: tools.nsupdate.clone(),
            apparmor: confinement,
            home,
        };
        if let Some(label) = bind.apparmor.as_deref().filter(|l| l.contains("enforce")) {
            if !bind.home.under_apparmor_dir() {
                panic!("{}", apparmor_advice(label, bind.home.path()));
            }
        }
        bind.wait_ready(serial).await?;
        Ok(bind)
    }

    /// Polls every zone's SOA until each answers with `serial` (so it is this named answering,
    /// not another process on the same port). Errors when named exits or logs that it could not
    /// open a listener ("address in use", also checked once ready); panics after [`START`].
    async fn wait_ready(&mut self, serial: u32) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + START;
        let serial = serial.to_string();
        let mut pending: Vec<String> = self.zones.iter().map(|z| z.name.clone()).collect();
        while !pending.is_empty() {
            if let Ok(Some(status)) = self.named.try_wait() {
                self.check_port_taken()?;
                return Err(format!(
                    "named exited at start: {status}{}\n{}",
                    apparmor_hint(),
                    self.logs()
                ));
            }
            self.check_port_taken()?;
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "named not answering the SOA of {} on {} after {START:?}{}\n{}",
                    pending.join(", "),
                    self.addr,
                    apparmor_hint(),
                    self.logs()
                );
            }
            let mut still = Vec::new();
            for zone in pending {
                let answered = match self.try_records(&zone, "SOA").await {
                    Ok((status, soa)) => {
                        status == "NOERROR"
                            && soa
                                .iter()
                                .any(|r| r.split_whitespace().nth(2) == Some(serial.as_str()))
                    }
                    Err(_) => false,
                };
                if !answered {
                    still.push(zone);
                }
            }
            pending = still;
            if !pending.is_empty() {
                tokio::time::sleep(POLL_EVERY).await;
            }
        }
        self.check_port_taken()
    }

    /// Whether named logged that it could not bind its port: TCP taken, it goes on without
    /// it ("creating TCP socket: address in use"); UDP taken, it exits ("creating IPv4
    /// interface lo failed", "unable to listen on any configured interfaces").
    fn check_port_taken(&self) -> Result<(), String> {
        const PORT_TAKEN: [&str; 3] = [
            "address in use",
            "creating IPv4 interface lo failed",
            "unable to listen on any configured interfaces",
        ];
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if PORT_TAKEN.iter().any(|m| log.contains(m)) {
            return Err(format!(
                "named could not take port {}: address in use\n{}",
                self.addr.port(),
                self.logs()
            ));
        }
        Ok(())
    }

    /// The DNS server: 127.0.0.1, UDP and TCP on the same port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The TSIG key in the key-clause format `tsig-keygen` writes (`key "tls-sidecar-test" {
    /// algorithm hmac-sha256; secret "..."; };`), which `nsupdate -k` and named read: what a
    /// DNS-01 client is given.
    pub fn tsig_key_file(&self) -> &Path {
        &self.key_file
    }

    /// The key's name, [`TSIG_KEY_NAME`].
    pub fn tsig_key_name(&self) -> &str {
        TSIG_KEY_NAME
    }

    /// The key's HMAC.
    pub fn tsig_algorithm(&self) -> TsigAlgorithm {
        self.algorithm
    }

    /// The key's secret, base64 as in the key file.
    pub fn tsig_secret(&self) -> &str {
        &self.secret
    }

    /// The TXT values at `name`, each record's strings joined (as an ACME server reads them),
    /// following a CNAME as a resolver does (also into another zone of this server). Empty when
    /// the name or its TXT records do not exist; panics on any other answer (REFUSED for a name
    /// outside the zones).
    pub async fn txt(&self, name: &str) -> Vec<String> {
        self.records(name, "TXT")
            .await
            .iter()
            .map(|rdata| unquote_txt(rdata))
            .collect()
    }

    /// The data of the `rtype` records at `name` in the answer, as `dig` writes them
    /// (`127.0.0.1` for A, `"v"` for TXT), following CNAMEs; empty on NXDOMAIN or no data.
    /// Panics on another status, or when dig fails.
    pub async fn records(&self, name: &str, rtype: &str) -> Vec<String> {
        match self.try_records(name, rtype).await {
            Ok((status, records)) if status == "NOERROR" || status == "NXDOMAIN" => records,
            Ok((status, _)) => panic!(
                "{name} {rtype} from {}: {status}\n{}",
                self.addr,
                self.logs()
            ),
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }

    /// The answer's status (`NOERROR`, `REFUSED`...) and the `rtype` records' data.
    async fn try_records(&self, name: &str, rtype: &str) -> Result<(String, Vec<String>), String> {
        let name = fqdn(name);
        let args = [
            "@127.0.0.1".to_string(),
            "-p".to_string(),
            self.addr.port().to_string(),
            // Recursion desired, as a resolver asks (so a CNAME is followed), one second per
            // try, no search list.
            "+time=1".to_string(),
            "+tries=2".to_string(),
            "+nosearch".to_string(),
            "+noall".to_string(),
            "+comments".to_string(),
            "+answer".to_string(),
            name.clone(),
            rtype.to_string(),
        ];
        let out = run(&self.dig, &args, None).await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let status = text
            .lines()
            .find_map(|l| l.split_once("status: "))
            .and_then(|(_, rest)| rest.split(',').next())
            .map(str::to_string);
        match (out.status.success(), status) {
            (true, Some(status)) => Ok((status, answer_data(&text, rtype))),
            _ => Err(format!(
                "dig {name} {rtype} from {}: {}\n{text}{}",
                self.addr,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )),
        }
    }

    /// Adds (`add`) or deletes the TXT record `value` at `name` with an RFC 2136 update signed
    /// with this server's key (`nsupdate -k`); panics, with nsupdate's output and named's log,
    /// if the server does not apply it. Other TXT values at `name` stay.
    pub async fn update_txt(&self, name: &str, value: &str, add: bool) {
        if let Err(e) = self
            .update_txt_with_key(&self.key_file, name, value, add)
            .await
        {
            panic!("{e}\n{}", self.logs());
        }
    }

    /// [`Bind::update_txt`] signed with another key file (e.g. a wrong one), returning
    /// nsupdate's output when the update fails (`update failed: NOTAUTH(BADSIG)`, `REFUSED`...).
    pub async fn update_txt_with_key(
        &self,
        key_file: &Path,
        name: &str,
        value: &str,
        add: bool,
    ) -> Result<(), String> {
        let owner = fqdn(name);
        let mut script = format!("server 127.0.0.1 {}\n", self.addr.port());
        // The zone named, rather than found by nsupdate's SOA query, when it is one of ours.
        if let Some(zone) = self
            .zones
            .iter()
            .filter(|z| z.contains(&owner))
            .max_by_key(|z| z.name.len())
        {
            script += &format!("zone {}.\n", zone.name);
        }
        let value = quote(value);
        script += &if add {
            format!("update add {owner} {TTL} TXT {value}\n")
        } else {
            format!("update delete {owner} TXT {value}\n")
        };
        script += "send\n";
        let args = [
            "-k".to_string(),
            key_file.display().to_string(),
            // Give up after 5 s rather than nsupdate's 300.
            "-t".to_string(),
            "5".to_string(),
        ];
        let out = run(&self.nsupdate, &args, Some(script.clone())).await?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nsupdate -k {} ({}) failed: {}\n{script}{}{}",
                key_file.display(),
                if add { "add" } else { "delete" },
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// named's log so far (its stderr), with its AppArmor confinement when it has one.
    pub fn logs(&self) -> String {
        let apparmor = match &self.apparmor {
            Some(label) => format!(", AppArmor label {label}"),
            None => String::new(),
        };
        format!(
            "--- named log ({}{apparmor}) ---\n{}",
            self.home.path().display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.named.kill();
        let _ = self.named.wait();
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// Generates a TSIG key named `name` with `tsig-keygen`: the key clause, to write to a file for
/// `nsupdate -k` (a test's wrong key, say).
pub fn tsig_keygen(name: &str, algorithm: TsigAlgorithm) -> String {
    tsig_keygen_with(&Tools::find().tsig_keygen, name, algorithm)
}

fn tsig_keygen_with(bin: &Path, name: &str, algorithm: TsigAlgorithm) -> String {
    let out = Command::new(bin)
        .args(["-a", algorithm.name(), name])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let key = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && key.contains("secret \""),
        "{} -a {} {name}: {}\n{key}{}",
        bin.display(),
        algorithm.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    key
}

/// The base64 secret of a key clause.
fn tsig_secret(key: &str) -> String {
    key.split_once("secret \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(secret, _)| secret.to_string())
        .unwrap_or_else(|| panic!("no secret in the TSIG key {key}"))
}

/// The BIND tools, found on PATH or in /usr/sbin (not on a normal user's PATH on Debian).
struct Tools {
    named: PathBuf,
    tsig_keygen: PathBuf,
    dig: PathBuf,
    nsupdate: PathBuf,
}

impl Tools {
    fn find() -> Tools {
        Tools {
            named: find_tool("named", "bind9"),
            tsig_keygen: find_tool("tsig-keygen", "bind9"),
            dig: find_tool("dig", "bind9-dnsutils"),
            nsupdate: find_tool("nsupdate", "bind9-dnsutils"),
        }
    }
}

fn find_tool(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is needed for the test DNS server but is not on PATH or in /usr/sbin: \
                 install it with `apt-get install -y {package}` (tests/tools.sh does, as root)"
            )
        })
}

/// named's directory: config, zone files and their journals, the key and the log. Under
/// [`APPARMOR_DIR`] when the kernel has AppArmor and this user may write there, else a
/// [`TempDir`]; removed on drop either way.
struct Home {
    path: PathBuf,
    /// None when under [`APPARMOR_DIR`], removed by [`Home`]'s own drop.
    _tmp: Option<TempDir>,
}

impl Home {
    fn new() -> Home {
        if apparmor_enabled() {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = Path::new(APPARMOR_DIR).join(format!(
                "tls-sidecar-tests-{}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed),
                nanos()
            ));
            if std::fs::create_dir(&path).is_ok() {
                return Home { path, _tmp: None };
            }
        }
        let tmp = TempDir::new("bind");
        Home {
            path: tmp.path().to_path_buf(),
            _tmp: Some(tmp),
        }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn under_apparmor_dir(&self) -> bool {
        self._tmp.is_none()
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        if self._tmp.is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Whether the kernel runs AppArmor (world-readable, unlike the list of loaded profiles).
fn apparmor_enabled() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|s| s.trim() == "Y")
}

/// The AppArmor label of a running process (`named (enforce)`, `unconfined`), when AppArmor is
/// on and the label is readable; None for unconfined.
fn apparmor_label(pid: u32) -> Option<String> {
    if !apparmor_enabled() {
        return None;
    }
    ["attr/apparmor/current", "attr/current"]
        .iter()
        .find_map(|f| std::fs::read_to_string(format!("/proc/{pid}/{f}")).ok())
        .map(|label| label.trim_end_matches(['\0', '\n']).to_string())
        .filter(|label| label != "unconfined")
}

/// A line for failure messages when AppArmor may be what stopped named.
fn apparmor_hint() -> &'static str {
    if apparmor_enabled() {
        " (AppArmor is on: a `named` profile in enforce mode confines named to /etc/bind, \
         /var/lib/bind and /var/cache/bind; see tests/src/bind.rs)"
    } else {
        ""
    }
}

/// What to do when named is confined and its files are where the profile forbids.
fn apparmor_advice(label: &str, dir: &Path) -> String {
    let tmp = std::env::temp_dir();
    let tmp = tmp.display();
    format!(
        "AppArmor confines named (label `{label}`, Debian's /etc/apparmor.d/usr.sbin.named) to \
         /etc/bind, {APPARMOR_DIR} and /var/cache/bind, and this user cannot write \
         {APPARMOR_DIR}, so its files are in {} where the profile refuses them. Run the tests as \
         root (as CI does), or allow the test directories: `printf '{tmp}/bind-*/ rw,\\n\
         {tmp}/bind-*/** rwk,\\n' | sudo tee -a /etc/apparmor.d/local/usr.sbin.named && sudo \
         apparmor_parser -r /etc/apparmor.d/usr.sbin.named`, or put the profile in complain \
         mode (`sudo aa-complain /usr/sbin/named`, from apparmor-utils)",
        dir.display()
    )
}

/// named.conf: an authoritative-only server on 127.0.0.1:`port`, every file in `dir`.
fn named_conf(dir: &Path, port: u16, zones: &[Zone]) -> String {
    let dir = dir.display();
    let mut conf = format!(
        r#"// The tests' DNS server (tests/src/bind.rs).
include "{dir}/tsig.key";
options {{
    directory "{dir}";
    // Nothing in /run/named, where the system's named keeps its own.
    pid-file none;
    lock-file none;
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    // With reuseport, a second named binds the same port too and the kernel shares the
    // queries between them; without, its TCP bind fails and its log says "address in use".
    reuseport no;
    // Recursion only so that a CNAME into another zone of this server is followed, as a
    // resolver follows it (an authoritative-only named answers the CNAME alone, and Pebble's
    // resolver does not chase it): every name is in a zone of its own, the root zone below
    // included, so named never asks another server and needs no root hints.
    recursion yes;
    allow-recursion {{ 127.0.0.1; }};
    allow-query-cache {{ 127.0.0.1; }};
    max-cache-size 8m;
    dnssec-validation no;
    empty-zones-enable no;
    // NOTIFY would go to the NS records' address, 127.0.0.1 port 53: someone else's.
    notify no;
    allow-transfer {{ none; }};
    geoip-directory none;
}};
// No rndc: nothing listens on 953, no rndc.key is read.
controls {{ }};
// Every name outside the test's zones: NXDOMAIN from here, never a query to the Internet.
zone "." {{
    type primary;
    file "{ROOT_ZONE_FILE}";
}};
"#
    );
    for zone in zones {
        conf += &format!(
            "zone \"{name}\" {{\n    type primary;\n    file \"{file}\";\n",
            name = zone.name,
            file = zone_file_name(zone)
        );
        if zone.dynamic {
            conf += &format!("    allow-update {{ key \"{TSIG_KEY_NAME}\"; }};\n");
        }
        conf += "};\n";
    }
    conf
}

/// The root zone: SOA and NS only, so every other name is NXDOMAIN.
const ROOT_ZONE: &str = "$TTL 5\n\
    . IN SOA localhost. hostmaster.localhost. ( 1 3600 600 86400 5 )\n\
    . IN NS localhost.\n\
    localhost. IN A 127.0.0.1\n";

/// Its file, named so that no test zone's file (`<zone>.zone`) can have the name.
const ROOT_ZONE_FILE: &str = "root-zone";

fn zone_file_name(zone: &Zone) -> String {
    format!("{}.zone", zone.name)
}

/// `name` as an absolute, lowercase domain name (`www.example.test.`).
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.').to_ascii_lowercase())
}

/// `value` as one zone-file character string.
fn quote(value: &str) -> String {
    let mut quoted = String::from("\"");
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// A TXT record's data as dig writes it (`"abc" "def"`, with `\"`, `\\` and `\DDD` escapes):
/// its strings joined.
fn unquote_txt(rdata: &str) -> String {
    let mut bytes = Vec::new();
    let mut chars = rdata.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => in_string = !in_string,
            '\\' if in_string => {
                let digits: String = std::iter::from_fn(|| chars.next_if(char::is_ascii_digit))
                    .take(3)
                    .collect();
                if digits.len() == 3 {
                    bytes.push(digits.parse::<u8>().unwrap_or(b'?'));
                } else if let Some(escaped) = chars.next() {
                    let mut buf = [0; 4];
                    bytes.extend_from_slice(escaped.encode_utf8(&mut buf).as_bytes());
                }
            }
            c if in_string => {
                let mut buf = [0; 4];
                bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            _ => {}
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The data of the `rtype` records in dig's answer section (`owner TTL class type data`).
fn answer_data(dig_output: &str, rtype: &str) -> Vec<String> {
    dig_output
        .lines()
        .filter(|line| !line.starts_with(';') && !line.trim().is_empty())
        .filter_map(|line| {
            let mut rest = line.trim();
            let mut fields = Vec::new();
            for _ in 0..4 {
                let end = rest.find(char::is_whitespace)?;
                fields.push(&rest[..end]);
                rest = rest[end..].trim_start();
            }
            fields[3]
                .eq_ignore_ascii_case(rtype)
                .then(|| rest.to_string())
        })
        .collect()
}

/// Runs a BIND tool (with `stdin` as its input), bounded by [`STEP`].
async fn run(bin: &Path, args: &[String], stdin: Option<String>) -> Result<Output, String> {
    let what = format!("{} {}", bin.display(), args.join(" "));
    let mut child = tokio::process::Command::new(bin)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| format!("{what}: writing its input: {e}"))?;
    }
    within(STEP, &what, child.wait_with_output())
        .await
        .map_err(|e| format!("{what}: {e}"))
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A SOA serial that tells this instance's answers from another named's on the same port.
fn unique_serial() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(nanos());
    hasher.write_u32(std::process::id());
    // 1..=2^31: a valid serial with room to grow.
    (hasher.finish() % (1 << 31)) as u32 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_data_is_unquoted_and_joined() {
        assert_eq!(unquote_txt(r#""abc""#), "abc");
        assert_eq!(unquote_txt(r#""ab" "cd""#), "abcd");
        assert_eq!(unquote_txt(r#""a\"b\\c\032d""#), "a\"b\\c d");
    }

    #[test]
    fn answer_lines_give_their_data() {
        let out = ";; ->>HEADER<<- opcode: QUERY, status: NOERROR, id: 1\n\
                   _acme-challenge.a.example.test. 5 IN CNAME a.validation.test.\n\
                   a.validation.test.\t5\tIN\tTXT\t\"x y\" \"z\"\n";
        assert_eq!(answer_data(out, "TXT"), vec!["\"x y\" \"z\""]);
        assert_eq!(answer_data(out, "CNAME"), vec!["a.validation.test."]);
    }
}
