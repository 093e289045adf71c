//! Where a sidecar's certificate comes from, and saying so. With `--certs-from`, a sidecar is
//! given `live/<hostname>/fullchain.pem` and `privkey.pem` when the spawner sees both; otherwise
//! it runs self-signed for its hostname. That fallback keeps the target served instead of
//! crash-looping, but it is a downgrade nobody asked for: so each fallback is logged once per
//! target and cause ([`Tracker`]), recorded on the sidecar's labels (what `spawner status`
//! shows), and a certificate's notAfter is read here for the status table and the expiry gauge.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use shared::schema::label_name;

use crate::config::CertsSource;
use crate::reconcile::Target;

/// Label suffix on a sidecar: the certificate source it was given (see [`Source::label_value`]).
/// Spawner-only: the sidecar never reads it.
pub const LABEL: &str = "cert-source";
/// A certificate chain larger than this is not read for its expiry: certbot's are a few KiB, and
/// the spawner must not be made to read an arbitrary file whole.
const MAX_CHAIN_BYTES: u64 = 1 << 20;
/// The file system calls of one probe: a hung network mount must not hold up a reconcile turn.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a sidecar runs self-signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// The spawner has no `--certs-from`: self-signed is what was asked for.
    NoCertsFrom,
    /// The `--certs-from` directory does not exist for the spawner (a containerised spawner
    /// without the store mounted into it), or cannot be read.
    DirNotVisible,
    /// The directory is there, but not this file or directory (`live/<hostname>/` or one file
    /// in it), relative to the certificates directory.
    Missing(String),
}

impl Fallback {
    /// Stable name, for `--json` and the sidecar label.
    pub fn code(&self) -> &'static str {
        match self {
            Fallback::NoCertsFrom => "no-certs-from",
            Fallback::DirNotVisible => "certs-dir-not-visible",
            Fallback::Missing(_) => "certificate-missing",
        }
    }

    /// What a person reads.
    pub fn detail(&self) -> String {
        match self {
            Fallback::NoCertsFrom => "no --certs-from".to_string(),
            Fallback::DirNotVisible => "certs dir not visible to the spawner".to_string(),
            Fallback::Missing(what) => format!("{what} missing"),
        }
    }
}

/// When a served certificate expires, as far as the spawner can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expiry {
    /// notAfter of the first certificate of the chain, unix seconds.
    At(i64),
    /// Not known, and why (a volume the spawner cannot look into, an unreadable file).
    Unknown(String),
}

/// The certificate a sidecar is (or would be) given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The certificate files: `path` is the chain as the spawner names it (a host path, or
    /// `volume:<name>/live/...`).
    File {
        path: String,
        expiry: Expiry,
    },
    SelfSigned(Fallback),
}

impl Source {
    pub fn is_file(&self) -> bool {
        matches!(self, Source::File { .. })
    }

    /// `file` or `self-signed`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::File { .. } => "file",
            Source::SelfSigned(_) => "self-signed",
        }
    }

    /// The value of the sidecar's [`LABEL`]: `file`, or `self-signed/<code>` with `:<what>` for
    /// a missing file. The expiry is not recorded: a renewal changes it while the sidecar runs.
    pub fn label_value(&self) -> String {
        match self {
            Source::File { .. } => "file".to_string(),
            Source::SelfSigned(f @ Fallback::Missing(what)) => {
                format!("self-signed/{}:{what}", f.code())
            }
            Source::SelfSigned(f) => format!("self-signed/{}", f.code()),
        }
    }

    /// One table cell: `file, expires <rfc3339>` or `self-signed: <why>`.
    pub fn cell(&self, now: i64) -> String {
        match self {
            Source::File {
                expiry: Expiry::At(t),
                ..
            } => {
                let word = if *t < now { "EXPIRED" } else { "expires" };
                format!("file, {word} {}", rfc3339(*t))
            }
            Source::File {
                expiry: Expiry::Unknown(why),
                ..
            } => format!("file, expiry unknown ({why})"),
            Source::SelfSigned(f) => format!("self-signed: {}", f.detail()),
        }
    }
}

/// What a sidecar's [`LABEL`] recorded when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    File,
    SelfSigned(Fallback),
}

/// Reads a [`Source::label_value`] back; `None` for anything else.
pub fn parse_label(value: &str) -> Option<Recorded> {
    if value == "file" {
        return Some(Recorded::File);
    }
    let rest = value.strip_prefix("self-signed/")?;
    let (code, what) = rest.split_once(':').unwrap_or((rest, ""));
    let f = match code {
        "no-certs-from" => Fallback::NoCertsFrom,
        "certs-dir-not-visible" => Fallback::DirNotVisible,
        "certificate-missing" if !what.is_empty() => Fallback::Missing(what.to_string()),
        _ => return None,
    };
    Some(Recorded::SelfSigned(f))
}

/// The sidecar label recording `source`.
pub fn label(prefix: &str, source: &Source) -> (String, String) {
    (label_name(prefix, LABEL), source.label_value())
}

/// Looks at what `--certs-from` holds for `hostname`, as this process sees it. Never fails: what
/// cannot be seen is a [`Fallback`], what cannot be read an [`Expiry::Unknown`].
pub async fn probe(certs: Option<&CertsSource>, hostname: &str) -> Source {
    match certs {
        None => Source::SelfSigned(Fallback::NoCertsFrom),
        Some(CertsSource::Volume(v)) => Source::File {
            path: format!("volume:{v}{}", live_paths(hostname).0),
            expiry: Expiry::Unknown(format!("volume {v} is not readable by the spawner")),
        },
        Some(CertsSource::HostDir(dir)) => {
            match tokio::time::timeout(PROBE_TIMEOUT, probe_dir(dir, hostname)).await {
                Ok(source) => source,
                Err(_) => Source::SelfSigned(Fallback::DirNotVisible),
            }
        }
    }
}

async fn probe_dir(dir: &str, hostname: &str) -> Source {
    let is_dir = tokio::fs::metadata(dir).await.is_ok_and(|m| m.is_dir());
    if !is_dir {
        return Source::SelfSigned(Fallback::DirNotVisible);
    }
    let (cert, key) = live_paths(hostname);
    let exists = |rel: &str| {
        let path = format!("{dir}{rel}");
        async move { tokio::fs::try_exists(path).await.unwrap_or(false) }
    };
    let live = format!("live/{hostname}/");
    if !exists(&format!("/{live}")).await {
        return Source::SelfSigned(Fallback::Missing(live));
    }
    for rel in [&cert, &key] {
        if !exists(rel).await {
            return Source::SelfSigned(Fallback::Missing(rel.trim_start_matches('/').to_string()));
        }
    }
    let path = format!("{dir}{cert}");
    let expiry = read_expiry(&path).await;
    Source::File { path, expiry }
}

/// notAfter of the first certificate in the PEM file at `path`.
pub async fn read_expiry(path: &str) -> Expiry {
    let read = async {
        let len = tokio::fs::metadata(path).await?.len();
        if len > MAX_CHAIN_BYTES {
            return Err(std::io::Error::other(format!(
                "larger than {MAX_CHAIN_BYTES} bytes"
            )));
        }
        tokio::fs::read(path).await
    };
    match tokio::time::timeout(PROBE_TIMEOUT, read).await {
        Err(_) => Expiry::Unknown("reading it timed out".to_string()),
        Ok(Err(e)) => Expiry::Unknown(format!("cannot read it: {e}")),
        Ok(Ok(pem)) => match not_after(&pem) {
            Ok(t) => Expiry::At(t),
            Err(e) => Expiry::Unknown(e),
        },
    }
}

/// notAfter (unix seconds) of the first certificate of a PEM chain.
pub fn not_after(pem: &[u8]) -> Result<i64, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("no PEM certificate in it: {e}"))?;
    let cert = block
        .parse_x509()
        .map_err(|e| format!("not a certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The certbot layout under `--certs-from`: `/live/<hostname>/fullchain.pem` and `privkey.pem`.
fn live_paths(hostname: &str) -> (String, String) {
    (
        format!("/live/{hostname}/fullchain.pem"),
        format!("/live/{hostname}/privkey.pem"),
    )
}

/// `2027-01-02T03:04:05Z`.
pub fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Per target: the source its current sidecar was given (for the gauges) and the fallback last
/// logged (so a crash loop or a restart does not repeat the warning).
#[derive(Debug, Default)]
pub struct Tracker {
    targets: Mutex<HashMap<String, Entry>>,
    /// Targets whose certificate ACME obtains: a missing one is expected until it lands.
    acme: Mutex<HashSet<String>>,
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    /// `None` while the target is not running.
    current: Option<Source>,
    warned: Option<Fallback>,
}

impl Tracker {
    /// Records the source a new sidecar of the target gets, and logs a fallback the first time
    /// it happens to this target for this cause. No `--certs-from` is not a fallback worth a
    /// warning: self-signed is what was configured. True when it logged.
    pub fn record(
        &self,
        target_id: &str,
        target_name: &str,
        hostname: &str,
        source: &Source,
    ) -> bool {
        let mut targets = lock(&self.targets);
        let entry = targets
            .entry(target_id.to_string())
            .or_insert_with(|| Entry {
                name: target_name.to_string(),
                current: None,
                warned: None,
            });
        entry.name = target_name.to_string();
        entry.current = Some(source.clone());
        let fallback = match source {
            Source::SelfSigned(f) if *f != Fallback::NoCertsFrom => f,
            _ => {
                entry.warned = None;
                return false;
            }
        };
        if entry.warned.as_ref() == Some(fallback) {
            return false;
        }
        entry.warned = Some(fallback.clone());
        drop(targets);
        if matches!(fallback, Fallback::Missing(_)) && lock(&self.acme).contains(target_id) {
            tracing::info!(
                container = %target_name,
                hostname,
                "no certificate for this target yet; its sidecar runs self-signed until ACME delivers one"
            );
            return true;
        }
        let hint = match fallback {
            Fallback::DirNotVisible => {
                "a spawner in a container needs the store mounted into it, and --certs-from set to that path"
            }
            _ => "certbot layout: live/<hostname>/fullchain.pem and privkey.pem; picked up at the next resync once they are there",
        };
        tracing::warn!(
            container = %target_name,
            hostname,
            reason = %fallback.detail(),
            hint,
            "no certificate for this target, its sidecar runs self-signed"
        );
        true
    }

    /// The targets whose certificates ACME obtains (replaces the previous set).
    pub fn set_acme(&self, targets: HashSet<String>) {
        *lock(&self.acme) = targets;
    }

    /// Keeps up with the targets of a turn: forgets those gone, marks those not running or
    /// `refused` a sidecar, and probes running ones it has no record of (a restarted spawner
    /// adopting running sidecars). With `reread`, reads every recorded chain's expiry again
    /// (certbot renews in place).
    pub async fn sync(
        &self,
        certs: Option<&CertsSource>,
        targets: &[Target],
        refused: &HashSet<String>,
        reread: bool,
    ) {
        let missing: Vec<(String, String, String)> = {
            let mut map = lock(&self.targets);
            let known: HashMap<&str, &Target> =
                targets.iter().map(|t| (t.id.as_str(), t)).collect();
            map.retain(|id, _| known.contains_key(id.as_str()));
            let mut missing = Vec::new();
            for t in targets {
                let entry = map.get_mut(&t.id);
                let serves = t.running && !refused.contains(&t.id);
                match (serves, entry, &t.spec) {
                    (false, Some(e), _) => e.current = None,
                    (true, None, Ok(spec)) => {
                        missing.push((t.id.clone(), t.name.clone(), spec.hostname.to_string()))
                    }
                    (true, Some(e), Ok(spec)) if e.current.is_none() => {
                        missing.push((t.id.clone(), t.name.clone(), spec.hostname.to_string()))
                    }
                    _ => {}
                }
            }
            missing
        };
        for (id, name, hostname) in missing {
            let source = probe(certs, &hostname).await;
            self.record(&id, &name, &hostname, &source);
        }
        if reread {
            self.reread().await;
        }
    }

    async fn reread(&self) {
        let files: Vec<(String, String)> = lock(&self.targets)
            .iter()
            .filter_map(|(id, e)| match &e.current {
                Some(Source::File { path, .. }) if !path.starts_with("volume:") => {
                    Some((id.clone(), path.clone()))
                }
                _ => None,
            })
            .collect();
        for (id, path) in files {
            let expiry = read_expiry(&path).await;
            if let Some(Some(Source::File { expiry: e, .. })) =
                lock(&self.targets).get_mut(&id).map(|e| e.current.as_mut())
            {
                *e = expiry;
            }
        }
    }

    /// (target name, source) of every running target with a record, by name.
    pub fn current(&self) -> Vec<(String, Source)> {
        let mut v: Vec<(String, Source)> = lock(&self.targets)
            .values()
            .filter_map(|e| Some((e.name.clone(), e.current.clone()?)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pem_valid_until(year: i32) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["web.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 2);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn not_after_is_read_from_the_first_certificate() {
        let chain = format!("{}{}", pem_valid_until(2031), pem_valid_until(2040));
        // 2031-01-02T00:00:00Z
        assert_eq!(not_after(chain.as_bytes()), Ok(1_925_078_400));
        assert_eq!(rfc3339(1_925_078_400), "2031-01-02T00:00:00Z");
        assert!(not_after(b"not a pem").is_err());
    }

    #[test]
    fn labels_round_trip() {
        for source in [
            Source::File {
                path: "/x".into(),
                expiry: Expiry::At(1),
            },
            Source::SelfSigned(Fallback::NoCertsFrom),
            Source::SelfSigned(Fallback::DirNotVisible),
            Source::SelfSigned(Fallback::Missing("live/web.test/".into())),
        ] {
            let back = parse_label(&source.label_value()).unwrap();
            match (&source, back) {
                (Source::File { .. }, Recorded::File) => {}
                (Source::SelfSigned(a), Recorded::SelfSigned(b)) => assert_eq!(*a, b),
                (s, b) => panic!("{s:?} came back as {b:?}"),
            }
        }
        assert_eq!(parse_label("self-signed/what"), None);
        assert_eq!(parse_label("self-signed/certificate-missing"), None);
    }

    #[test]
    fn cells_say_the_source_and_why() {
        let file = |expiry| Source::File {
            path: "/c/live/w/fullchain.pem".into(),
            expiry,
        };
        assert_eq!(
            file(Expiry::At(1_925_078_400)).cell(0),
            "file, expires 2031-01-02T00:00:00Z"
        );
        assert_eq!(
            file(Expiry::At(1)).cell(2),
            "file, EXPIRED 1970-01-01T00:00:01Z"
        );
        assert_eq!(
            Source::SelfSigned(Fallback::Missing("live/w/".into())).cell(0),
            "self-signed: live/w/ missing"
        );
        assert_eq!(
            Source::SelfSigned(Fallback::DirNotVisible).cell(0),
            "self-signed: certs dir not visible to the spawner"
        );
    }

    #[tokio::test]
    async fn probe_tells_the_causes_apart() {
        let dir = std::env::temp_dir().join(format!("cert-source-{}", std::process::id()));
        let live = dir.join("live/web.test");
        std::fs::create_dir_all(&live).unwrap();
        let d = dir.to_str().unwrap().to_string();
        let from = CertsSource::HostDir(d.clone());
        assert_eq!(
            probe(None, "web.test").await,
            Source::SelfSigned(Fallback::NoCertsFrom)
        );
        assert_eq!(
            probe(
                Some(&CertsSource::HostDir(format!("{d}/absent"))),
                "web.test"
            )
            .await,
            Source::SelfSigned(Fallback::DirNotVisible)
        );
        assert_eq!(
            probe(Some(&from), "other.test").await,
            Source::SelfSigned(Fallback::Missing("live/other.test/".into()))
        );
        std::fs::write(live.join("fullchain.pem"), pem_valid_until(2031)).unwrap();
        assert_eq!(
            probe(Some(&from), "web.test").await,
            Source::SelfSigned(Fallback::Missing("live/web.test/privkey.pem".into()))
        );
        std::fs::write(live.join("privkey.pem"), "key").unwrap();
        assert_eq!(
            probe(Some(&from), "web.test").await,
            Source::File {
                path: format!("{d}/live/web.test/fullchain.pem"),
                expiry: Expiry::At(1_925_078_400)
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fallback_is_recorded_once_per_cause() {
        let t = Tracker::default();
        let missing = Source::SelfSigned(Fallback::Missing("live/w/".into()));
        let hidden = Source::SelfSigned(Fallback::DirNotVisible);
        let file = Source::File {
            path: "/p".into(),
            expiry: Expiry::At(5),
        };
        let none = Source::SelfSigned(Fallback::NoCertsFrom);
        let logged: Vec<bool> = [&missing, &missing, &hidden, &hidden, &file, &hidden, &none]
            .into_iter()
            .map(|s| t.record("id", "w", "w", s))
            .collect();
        assert_eq!(
            logged,
            [true, false, true, false, false, true, false],
            "once per cause; a fix makes the next fallback news; no --certs-from is no news"
        );
        assert!(!t.record("other", "o", "o", &none));
        assert!(t.record("other", "o", "o", &missing), "per target");
        assert_eq!(t.current().len(), 2);
    }
}
