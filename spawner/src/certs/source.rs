//! Where a sidecar's certificate comes from, and saying so. With `--certs-from`, a sidecar is
//! given `live/<hostname>/fullchain.pem` and `privkey.pem` when the spawner sees both; otherwise
//! it runs self-signed for its hostname. That fallback keeps the target served instead of
//! crash-looping, but it is a downgrade nobody asked for: so each fallback is logged once per
//! target and cause ([`Tracker`]), and recorded on the sidecar's labels. An ACME-managed target's
//! sidecar is recorded as such ([`Recorded::Acme`]): it starts self-signed and serves the pair the
//! spawner delivers into its certificate volume once one is issued.
//!
//! One function, [`judge`], turns what is known of a target's certificate (the sidecar's label,
//! whether ACME manages it, what the store holds, and what the sidecar's own certificate volume
//! holds) into the facts the daemon records on the sidecar and in its gauges and `spawner status`
//! shows, so the three never disagree. `status` reads the chain the sidecar holds through the
//! engine ([`read_served`]): what it serves, wherever the store is.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use shared::schema::{label_name, CERTS_MOUNT};
use shared::telemetry::error_chain;

use crate::config::CertsSource;
use crate::engine::Engine;
use crate::plan::reconcile::{Sidecar, Target};

/// Label suffix on a sidecar: how its certificate was given (see [`Recorded::label_value`]).
/// Spawner-only: the sidecar never reads it.
pub(crate) const LABEL: &str = "cert-source";
/// A certificate chain larger than this is not read for its expiry: certbot's are a few KiB, and
/// the spawner must not be made to read an arbitrary file whole.
const MAX_CHAIN_BYTES: u64 = 1 << 20;
/// The file system calls of one probe: a hung network mount must not hold up a reconcile turn.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Symbolic links followed reading a sidecar's chain: certbot's `live/` links point once into
/// `archive/`; more is not a certificate store.
const MAX_LINKS: usize = 4;
/// What a tar archive adds around one file: its header and padding, with room for a long name.
const ARCHIVE_OVERHEAD: usize = 16 << 10;

/// Why a sidecar runs self-signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// The spawner has no `--certs-from`: self-signed is what was asked for.
    NoCertsFrom,
    /// The `--certs-from` directory does not exist for the spawner (a containerised spawner
    /// without the store mounted into it), or cannot be read.
    DirNotVisible,
    /// The directory is there, but not this file or directory (`live/<hostname>/` or one file
    /// in it), relative to the certificates directory.
    Missing(String),
    /// An ACME-managed sidecar's volume has no pair (`live/<hostname>/`) though the store has
    /// one: the spawner delivers it at its next turn, or says in its log why it cannot.
    NotDelivered(String),
}

impl Fallback {
    /// Stable name, for `--json` and the sidecar label.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Fallback::NoCertsFrom => "no-certs-from",
            Fallback::DirNotVisible => "certs-dir-not-visible",
            Fallback::Missing(_) => "certificate-missing",
            Fallback::NotDelivered(_) => "certificate-not-delivered",
        }
    }

    /// What a person reads.
    pub(crate) fn detail(&self) -> String {
        match self {
            Fallback::NoCertsFrom => "no --certs-from".to_string(),
            Fallback::DirNotVisible => "certs dir not visible to the spawner".to_string(),
            Fallback::Missing(what) => format!("{what} missing"),
            Fallback::NotDelivered(what) => {
                format!("{what} in the store, not delivered to the sidecar yet")
            }
        }
    }
}

/// When a served certificate expires, as far as the spawner can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// notAfter of the first certificate of the chain, unix seconds.
    At(i64),
    /// Not known, and why (a volume the spawner cannot look into, an unreadable file).
    Unknown(String),
}

/// The certificate a sidecar is (or would be) given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// The certificate files: `path` is the chain as the spawner names it (a host path, or
    /// `volume:<name>/live/...`; without either, `<sidecar>:/certs/...` inside the sidecar).
    File {
        path: String,
        expiry: Expiry,
    },
    SelfSigned(Fallback),
    /// Neither the sidecar's volume nor the store could be seen by this process, and why: what
    /// it serves is not guessed.
    Unknown(String),
}

impl Source {
    pub(crate) fn is_file(&self) -> bool {
        matches!(self, Source::File { .. })
    }

    /// `file`, `self-signed` or `unknown`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Source::File { .. } => "file",
            Source::SelfSigned(_) => "self-signed",
            Source::Unknown(_) => "unknown",
        }
    }

    /// One table cell: `file, expires <rfc3339>`, `self-signed: <why>` or `unknown: <why>`.
    pub(crate) fn cell(&self, now: i64) -> String {
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
            Source::Unknown(why) => format!("unknown: {why}"),
        }
    }
}

/// How a sidecar's certificate was given, as its [`LABEL`] records it (written when the sidecar
/// is made, never changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recorded {
    /// The certificate files (in its own volume, or the named volume mounted whole).
    File,
    SelfSigned(Fallback),
    /// ACME obtains its certificate: it reads its certificate directory, serves self-signed
    /// until a pair is delivered there, and each renewal is delivered into it. Sidecars made
    /// before this label existed carry `file` or `self-signed/...` instead.
    Acme,
}

impl Recorded {
    /// The value of the sidecar's [`LABEL`]: `file`, `acme`, or `self-signed/<code>` with
    /// `:<what>` for a missing file. No expiry: a renewal changes it while the sidecar runs.
    pub(crate) fn label_value(&self) -> String {
        match self {
            Recorded::File => "file".to_string(),
            Recorded::Acme => "acme".to_string(),
            Recorded::SelfSigned(f @ (Fallback::Missing(what) | Fallback::NotDelivered(what))) => {
                format!("self-signed/{}:{what}", f.code())
            }
            Recorded::SelfSigned(f) => format!("self-signed/{}", f.code()),
        }
    }
}

/// Reads a [`Recorded::label_value`] back (those of every earlier version too); `None` for
/// anything else.
pub(crate) fn parse_label(value: &str) -> Option<Recorded> {
    match value {
        "file" => return Some(Recorded::File),
        "acme" => return Some(Recorded::Acme),
        _ => {}
    }
    let rest = value.strip_prefix("self-signed/")?;
    let (code, what) = rest.split_once(':').unwrap_or((rest, ""));
    let f = match code {
        "no-certs-from" => Fallback::NoCertsFrom,
        "certs-dir-not-visible" => Fallback::DirNotVisible,
        "certificate-missing" if !what.is_empty() => Fallback::Missing(what.to_string()),
        "certificate-not-delivered" if !what.is_empty() => Fallback::NotDelivered(what.to_string()),
        _ => return None,
    };
    Some(Recorded::SelfSigned(f))
}

/// The sidecar label recording `given`.
pub(crate) fn label(prefix: &str, given: &Recorded) -> (String, String) {
    (label_name(prefix, LABEL), given.label_value())
}

/// What a container's labels record (under `prefix`), if they record anything this version
/// reads.
pub(crate) fn recorded(prefix: &str, labels: Option<&HashMap<String, String>>) -> Option<Recorded> {
    parse_label(labels?.get(&label_name(prefix, LABEL))?)
}

/// Per target ID, what the label of its newest sidecar records (`labels_of` a sidecar's ID:
/// its labels, from the engine's listing).
pub(crate) fn newest_recorded<'a>(
    prefix: &str,
    sidecars: &[Sidecar],
    labels_of: impl Fn(&str) -> Option<&'a HashMap<String, String>>,
) -> HashMap<String, Recorded> {
    let mut newest: HashMap<&str, &Sidecar> = HashMap::new();
    for s in sidecars {
        let slot = newest.entry(s.target_id.as_str()).or_insert(s);
        if (s.created, &s.id) > (slot.created, &slot.id) {
            *slot = s;
        }
    }
    newest
        .into_iter()
        .filter_map(|(target, s)| Some((target.to_string(), recorded(prefix, labels_of(&s.id))?)))
        .collect()
}

/// The first certificate of a chain, as far as the status and the gauges need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chain {
    /// notAfter, unix seconds.
    pub(crate) not_after: i64,
    /// Who issued it: its issuer's common name, else the whole name (control characters
    /// escaped).
    pub(crate) issuer: String,
}

/// What the store holds for a hostname, as one process sees it ([`look`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The certificate the daemon would give a new sidecar now.
    pub(crate) source: Source,
    /// The issuer of that chain, when it was read.
    pub(crate) issuer: Option<String>,
    /// The chain's path as the spawner names it ([`chain_path`]); `None` without `--certs-from`.
    pub(crate) path: Option<String>,
}

/// What a sidecar's certificate volume holds where the sidecar reads its chain, read through
/// the engine ([`read_served`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Served {
    /// A chain, read at `path` (`<sidecar>:/certs/...`).
    Chain { path: String, chain: Chain },
    /// Nothing there: no pair was delivered (an ACME-managed sidecar then serves self-signed).
    Absent,
    /// It could not be read, and why.
    Unreadable(String),
}

/// Everything one process knows about a target's certificate at one moment: the input of
/// [`judge`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inputs<'a> {
    /// What its newest sidecar's [`LABEL`] records; `None` without a sidecar (the facts are
    /// then what the daemon would give one now).
    pub(crate) recorded: Option<&'a Recorded>,
    /// Whether this process's configuration has ACME obtain the target's certificate. Decides
    /// for a target without a sidecar; for a sidecar it matters only when its label predates
    /// [`Recorded::Acme`] (a self-signed label then means "until ACME delivers").
    pub(crate) acme: bool,
    /// The target's hostname (the first name of its certificate).
    pub(crate) hostname: &'a str,
    /// What the store holds now, as this process sees it.
    pub(crate) store: &'a Stored,
    /// What the sidecar's own volume holds; `None` when not read (no sidecar, or the daemon,
    /// which knows what it delivered).
    pub(crate) served: Option<&'a Served>,
}

/// The facts of a target's certificate: how its sidecar is (or would be) made, and what it
/// serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    /// What the sidecar's label records (for a sidecar yet to be made: what it will).
    pub(crate) given: Recorded,
    /// What it serves.
    pub(crate) source: Source,
    /// The served chain's issuer, when known.
    pub(crate) issuer: Option<String>,
}

/// The one decision about a target's certificate, for the daemon (what a new sidecar is given
/// and recorded as, and the gauges), and `spawner status`. Pure.
///
/// Without a sidecar: an ACME-managed target's sidecar is made [`Recorded::Acme`], any other
/// gets the files when the store has them, else self-signed and why; it serves what the store
/// holds. With one: the chain in its own volume wins when it was read (what it serves, whatever
/// the store holds or this process sees of it). A sidecar made self-signed serves that until it
/// is replaced. An ACME-managed one with nothing in its volume serves self-signed; one whose
/// volume was not read serves what the store holds, which the daemon delivers. What neither
/// shows is said to be unknown, and why, never guessed.
pub(crate) fn judge(i: &Inputs<'_>) -> Facts {
    let store = i.store;
    let given = match i.recorded {
        Some(r) => r.clone(),
        None if i.acme => Recorded::Acme,
        None => match &store.source {
            Source::File { .. } => Recorded::File,
            Source::SelfSigned(f) => Recorded::SelfSigned(f.clone()),
            // `look` never says unknown; what cannot be seen is not there for the daemon.
            Source::Unknown(_) => Recorded::SelfSigned(Fallback::DirNotVisible),
        },
    };
    let facts = |source: Source, issuer: Option<String>| Facts {
        given: given.clone(),
        source,
        issuer,
    };
    let from_store = || facts(store.source.clone(), store.issuer.clone());
    if i.recorded.is_none() {
        return from_store();
    }
    let acme = given == Recorded::Acme || (i.acme && matches!(given, Recorded::SelfSigned(_)));
    let live = format!("live/{}/", i.hostname);
    let path = || {
        store
            .path
            .clone()
            .unwrap_or_else(|| format!("{live}fullchain.pem"))
    };
    // Why this process cannot see the certificate, from the volume's side and the store's.
    let unseen = || {
        let volume = match i.served {
            Some(Served::Unreadable(why)) => format!("its certificate volume: {why}; "),
            _ => String::new(),
        };
        let store_why = match &store.source {
            Source::SelfSigned(f) => f.detail(),
            Source::File {
                expiry: Expiry::Unknown(why),
                ..
            } => why.clone(),
            Source::File { .. } => String::new(),
            Source::Unknown(why) => why.clone(),
        };
        format!("{volume}the store: {store_why}")
    };
    match (&given, i.served) {
        (Recorded::SelfSigned(f), _) if !acme => facts(Source::SelfSigned(f.clone()), None),
        (
            _,
            Some(Served::Chain {
                path: inside,
                chain,
            }),
        ) => facts(
            Source::File {
                path: store.path.clone().unwrap_or_else(|| inside.clone()),
                expiry: Expiry::At(chain.not_after),
            },
            Some(chain.issuer.clone()),
        ),
        (_, Some(Served::Absent)) if acme => {
            let why = match &store.source {
                Source::File { .. } => Fallback::NotDelivered(live),
                Source::SelfSigned(f @ Fallback::Missing(_)) => f.clone(),
                _ => Fallback::Missing(live),
            };
            facts(Source::SelfSigned(why), None)
        }
        (_, Some(Served::Absent)) => facts(
            Source::File {
                path: path(),
                expiry: Expiry::Unknown("not in the sidecar's certificate volume".to_string()),
            },
            None,
        ),
        // Not read, or unreadable: the store's pair is what the daemon delivers.
        (_, _) if store.source.is_file() => from_store(),
        (_, _) if acme => match &store.source {
            Source::SelfSigned(f @ Fallback::Missing(_)) => {
                facts(Source::SelfSigned(f.clone()), None)
            }
            _ => facts(
                Source::Unknown(format!("cannot see it: {}", unseen())),
                None,
            ),
        },
        (_, _) => facts(
            Source::File {
                path: path(),
                expiry: Expiry::Unknown(format!("not readable by this process: {}", unseen())),
            },
            None,
        ),
    }
}

/// Where inside a sidecar made as `given` to look for the chain it serves, the first found
/// winning; none for a sidecar made self-signed (unless ACME manages it: an older label). Its
/// own volume has the flat `fullchain.pem`, or for an ACME-managed sidecar `live/<hostname>/`;
/// a named volume mounted whole has certbot's layout. Not knowing which (no `--certs-from`
/// given to this process, or an older ACME-managed sidecar), both are tried.
pub(crate) fn served_paths(
    given: &Recorded,
    acme: bool,
    certs: Option<&CertsSource>,
    hostname: &str,
) -> Vec<String> {
    let live = format!("{CERTS_MOUNT}/live/{hostname}/fullchain.pem");
    let flat = format!("{CERTS_MOUNT}/{}", crate::layout::CHAIN_FILE);
    match (given, certs) {
        (Recorded::Acme, _) => vec![live],
        (Recorded::SelfSigned(_), _) if acme => vec![live],
        (Recorded::SelfSigned(_), _) => Vec::new(),
        (Recorded::File, Some(CertsSource::HostDir(_))) if !acme => vec![flat],
        (Recorded::File, Some(CertsSource::Volume(_))) => vec![live],
        (Recorded::File, _) => vec![flat, live],
    }
}

/// Reads the chain a sidecar holds, through the engine's archive API (so it works wherever the
/// engine is reachable, whoever can read the store): the first of `paths` that exists, links
/// followed within the certificate mount. `None` without paths to look at. Every call is under
/// the engine's timeout.
pub(crate) async fn read_served(
    engine: &Engine,
    sidecar_id: &str,
    sidecar_name: &str,
    paths: &[String],
) -> Option<Served> {
    if paths.is_empty() {
        return None;
    }
    for path in paths {
        let pem = match read_in(engine, sidecar_id, path).await {
            Ok(Some(pem)) => pem,
            Ok(None) => continue,
            Err(why) => return Some(Served::Unreadable(format!("{path}: {why}"))),
        };
        return Some(match read_chain(&pem) {
            Ok(chain) => Served::Chain {
                path: format!("{sidecar_name}:{path}"),
                chain,
            },
            Err(why) => Served::Unreadable(format!("{path}: {why}")),
        });
    }
    Some(Served::Absent)
}

/// The file at `path` in a container, links followed; `None` when nothing is there.
async fn read_in(engine: &Engine, id: &str, path: &str) -> Result<Option<Vec<u8>>, String> {
    let max = MAX_CHAIN_BYTES as usize + ARCHIVE_OVERHEAD;
    let mut at = path.to_string();
    for _ in 0..=MAX_LINKS {
        let archive = match engine.download(id, &at, max).await {
            Ok(Some(a)) => a,
            Ok(None) => return Ok(None),
            Err(e) => return Err(error_chain(&e)),
        };
        if archive.len() > max {
            return Err(format!("larger than {MAX_CHAIN_BYTES} bytes"));
        }
        match entry_of(&archive)? {
            Archived::File(bytes) => return Ok(Some(bytes)),
            Archived::Link(to) => at = follow(&at, &to)?,
        }
    }
    Err(format!("more than {MAX_LINKS} symbolic links"))
}

/// The one entry of the archive the engine gives for a file.
#[derive(Debug, PartialEq, Eq)]
enum Archived {
    File(Vec<u8>),
    /// A symbolic link, and where it points.
    Link(String),
}

fn entry_of(archive: &[u8]) -> Result<Archived, String> {
    use std::io::Read;
    let bad = |e: std::io::Error| format!("not a readable archive: {e}");
    let mut tar = tar::Archive::new(archive);
    let mut entry = tar
        .entries()
        .map_err(bad)?
        .next()
        .ok_or("an empty archive")?
        .map_err(bad)?;
    match entry.header().entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            if entry.size() > MAX_CHAIN_BYTES {
                return Err(format!("larger than {MAX_CHAIN_BYTES} bytes"));
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(bad)?;
            Ok(Archived::File(bytes))
        }
        tar::EntryType::Symlink => {
            let to = entry.link_name().map_err(bad)?.ok_or("a link to nowhere")?;
            Ok(Archived::Link(to.to_string_lossy().into_owned()))
        }
        other => Err(format!("not a file ({other:?})")),
    }
}

/// Where the link at `from` pointing to `to` leads, inside the certificate mount only (the
/// chain is looked for there, never elsewhere in the sidecar).
fn follow(from: &str, to: &str) -> Result<String, String> {
    let base = if to.starts_with('/') {
        String::new()
    } else {
        from.rsplit_once('/').map_or("", |(dir, _)| dir).to_string()
    };
    let mut parts: Vec<&str> = Vec::new();
    for segment in base.split('/').chain(to.split('/')) {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let path = format!("/{}", parts.join("/"));
    let mount = format!("{CERTS_MOUNT}/");
    if path.starts_with(&mount) {
        Ok(path)
    } else {
        Err(format!("{from} links outside {CERTS_MOUNT} (to {to})"))
    }
}

/// Looks at what `--certs-from` holds for `hostname`, as this process sees it. Never fails: what
/// cannot be seen is a [`Fallback`], what cannot be read an [`Expiry::Unknown`].
pub(crate) async fn probe(certs: Option<&CertsSource>, hostname: &str) -> Source {
    look(certs, hostname).await.source
}

/// [`probe`], with the chain's issuer and path.
pub(crate) async fn look(certs: Option<&CertsSource>, hostname: &str) -> Stored {
    let path = chain_path(certs, hostname);
    let (source, issuer) = match certs {
        None => (Source::SelfSigned(Fallback::NoCertsFrom), None),
        Some(CertsSource::Volume(v)) => (
            Source::File {
                path: path.clone().unwrap_or_default(),
                expiry: Expiry::Unknown(format!("volume {v} is not readable by the spawner")),
            },
            None,
        ),
        Some(CertsSource::HostDir(dir)) => {
            match tokio::time::timeout(PROBE_TIMEOUT, probe_dir(dir, hostname)).await {
                Ok(seen) => seen,
                Err(_) => (Source::SelfSigned(Fallback::DirNotVisible), None),
            }
        }
    };
    Stored {
        source,
        issuer,
        path,
    }
}

/// The chain of `hostname` as the spawner names it: a path under `--certs-from`, or
/// `volume:<name>/live/...`.
pub(crate) fn chain_path(certs: Option<&CertsSource>, hostname: &str) -> Option<String> {
    let (cert, _) = live_paths(hostname);
    match certs? {
        CertsSource::HostDir(dir) => Some(format!("{dir}{cert}")),
        CertsSource::Volume(v) => Some(format!("volume:{v}{cert}")),
    }
}

async fn probe_dir(dir: &str, hostname: &str) -> (Source, Option<String>) {
    let is_dir = tokio::fs::metadata(dir).await.is_ok_and(|m| m.is_dir());
    if !is_dir {
        return (Source::SelfSigned(Fallback::DirNotVisible), None);
    }
    let (cert, key) = live_paths(hostname);
    let exists = |rel: &str| {
        let path = format!("{dir}{rel}");
        async move { tokio::fs::try_exists(path).await.unwrap_or(false) }
    };
    let live = format!("live/{hostname}/");
    if !exists(&format!("/{live}")).await {
        return (Source::SelfSigned(Fallback::Missing(live)), None);
    }
    for rel in [&cert, &key] {
        if !exists(rel).await {
            let what = rel.trim_start_matches('/').to_string();
            return (Source::SelfSigned(Fallback::Missing(what)), None);
        }
    }
    let path = format!("{dir}{cert}");
    match read_chain_file(&path).await {
        Ok(chain) => (
            Source::File {
                path,
                expiry: Expiry::At(chain.not_after),
            },
            Some(chain.issuer),
        ),
        Err(why) => (
            Source::File {
                path,
                expiry: Expiry::Unknown(why),
            },
            None,
        ),
    }
}

/// notAfter of the first certificate in the PEM file at `path`.
pub(crate) async fn read_expiry(path: &str) -> Expiry {
    match read_chain_file(path).await {
        Ok(chain) => Expiry::At(chain.not_after),
        Err(why) => Expiry::Unknown(why),
    }
}

/// The first certificate of the PEM file at `path`, bounded in size and time (a FIFO in its
/// place is refused at once, not waited on: [`shared::fs`]).
async fn read_chain_file(path: &str) -> Result<Chain, String> {
    let read = shared::fs::read_async(std::path::Path::new(path), MAX_CHAIN_BYTES);
    match tokio::time::timeout(PROBE_TIMEOUT, read).await {
        Err(_) => Err("reading it timed out".to_string()),
        Ok(Err(e)) => Err(format!("cannot read it: {e}")),
        Ok(Ok(pem)) => read_chain(&pem),
    }
}

/// The first certificate of a PEM chain: its notAfter and issuer.
pub(crate) fn read_chain(pem: &[u8]) -> Result<Chain, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem)
        .map_err(|e| format!("no PEM certificate in it: {e}"))?;
    let cert = block
        .parse_x509()
        .map_err(|e| format!("not a certificate: {e}"))?;
    let issuer = cert.issuer();
    let name = issuer
        .iter_common_name()
        .find_map(|cn| cn.as_str().ok().map(str::to_string))
        .unwrap_or_else(|| issuer.to_string());
    Ok(Chain {
        not_after: cert.validity().not_after.timestamp(),
        issuer: crate::plan::failure::escape(&name),
    })
}

/// The certbot layout under `--certs-from`: `/live/<hostname>/fullchain.pem` and `privkey.pem`.
fn live_paths(hostname: &str) -> (String, String) {
    (
        format!("/live/{hostname}/fullchain.pem"),
        format!("/live/{hostname}/privkey.pem"),
    )
}

/// `2027-01-02T03:04:05Z`.
pub(crate) fn rfc3339(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Per target: the source its current sidecar was given (for the gauges) and the fallback last
/// logged (so a crash loop or a restart does not repeat the warning).
#[derive(Debug, Default)]
pub(crate) struct Tracker {
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
    pub(crate) fn record(
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
    pub(crate) fn set_acme(&self, targets: HashSet<String>) {
        *lock(&self.acme) = targets;
    }

    /// Keeps up with the targets of a turn: forgets those gone, marks those not running or
    /// `refused` a sidecar, and judges running ones it has no record of (a restarted spawner
    /// adopting running sidecars) from their sidecar's label (`recorded`, by target ID) and the
    /// store. With `reread`, reads every recorded chain's expiry again (certbot renews in place).
    pub(crate) async fn sync(
        &self,
        certs: Option<&CertsSource>,
        targets: &[Target],
        recorded: &HashMap<String, Recorded>,
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
            let store = look(certs, &hostname).await;
            let acme = lock(&self.acme).contains(&id);
            let facts = judge(&Inputs {
                recorded: recorded.get(&id),
                acme,
                hostname: &hostname,
                store: &store,
                served: None,
            });
            self.record(&id, &name, &hostname, &facts.source);
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
    pub(crate) fn current(&self) -> Vec<(String, Source)> {
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

    /// notAfter (unix seconds) of the first certificate of a PEM chain.
    fn not_after(pem: &[u8]) -> Result<i64, String> {
        read_chain(pem).map(|c| c.not_after)
    }

    fn pem_valid_until(year: i32) -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["web.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(year, 1, 2);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Issuer Test CA");
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
    fn a_fifo_chain_has_an_unknown_expiry_at_once() {
        use shared::fs::testing::{mkfifo, within_async};
        let fifo = std::env::temp_dir().join(format!("cert-source-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        mkfifo(&fifo);
        let path = fifo.display().to_string();
        let expiry = within_async("the expiry of a FIFO", move || async move {
            read_expiry(&path).await
        });
        assert_eq!(
            expiry,
            Expiry::Unknown("cannot read it: is a FIFO, not a regular file".to_string())
        );
        let _ = std::fs::remove_file(&fifo);
    }

    #[test]
    fn labels_round_trip_and_earlier_labels_still_read() {
        for given in [
            Recorded::File,
            Recorded::Acme,
            Recorded::SelfSigned(Fallback::NoCertsFrom),
            Recorded::SelfSigned(Fallback::DirNotVisible),
            Recorded::SelfSigned(Fallback::Missing("live/web.test/".into())),
            Recorded::SelfSigned(Fallback::NotDelivered("live/web.test/".into())),
        ] {
            assert_eq!(parse_label(&given.label_value()), Some(given.clone()));
        }
        // What spawners before the `acme` value wrote.
        for (old, read) in [
            ("file", Recorded::File),
            (
                "self-signed/no-certs-from",
                Recorded::SelfSigned(Fallback::NoCertsFrom),
            ),
            (
                "self-signed/certs-dir-not-visible",
                Recorded::SelfSigned(Fallback::DirNotVisible),
            ),
            (
                "self-signed/certificate-missing:live/a.example/",
                Recorded::SelfSigned(Fallback::Missing("live/a.example/".into())),
            ),
        ] {
            assert_eq!(parse_label(old), Some(read), "{old}");
        }
        assert_eq!(parse_label("acme"), Some(Recorded::Acme));
        assert_eq!(parse_label("self-signed/what"), None);
        assert_eq!(parse_label("self-signed/certificate-missing"), None);
        assert_eq!(parse_label("acme/v2"), None);
        let labels = HashMap::from([("p.cert-source".to_string(), "acme".to_string())]);
        assert_eq!(recorded("p", Some(&labels)), Some(Recorded::Acme));
        assert_eq!(recorded("q", Some(&labels)), None);
    }

    const HOST: &str = "a.example";
    const STORE_PATH: &str = "/le/live/a.example/fullchain.pem";

    fn stored_file() -> Stored {
        Stored {
            source: Source::File {
                path: STORE_PATH.into(),
                expiry: Expiry::At(2_000),
            },
            issuer: Some("Store CA".into()),
            path: Some(STORE_PATH.into()),
        }
    }

    fn stored_missing() -> Stored {
        Stored {
            source: Source::SelfSigned(Fallback::Missing("live/a.example/".into())),
            issuer: None,
            path: Some(STORE_PATH.into()),
        }
    }

    fn stored_hidden(f: Fallback) -> Stored {
        let path = (f != Fallback::NoCertsFrom).then(|| STORE_PATH.to_string());
        Stored {
            source: Source::SelfSigned(f),
            issuer: None,
            path,
        }
    }

    fn served_chain() -> Served {
        Served::Chain {
            path: "web-tls-sidecar:/certs/live/a.example/fullchain.pem".into(),
            chain: Chain {
                not_after: 1_000,
                issuer: "Pebble Intermediate CA 1a2b3c".into(),
            },
        }
    }

    fn judged(
        recorded: Option<&Recorded>,
        acme: bool,
        store: &Stored,
        served: Option<&Served>,
    ) -> Facts {
        judge(&Inputs {
            recorded,
            acme,
            hostname: HOST,
            store,
            served,
        })
    }

    fn file(path: &str, expiry: Expiry) -> Source {
        Source::File {
            path: path.into(),
            expiry,
        }
    }

    #[test]
    fn a_new_sidecar_is_given_what_the_store_holds_and_recorded_as_acme_when_acme_manages_it() {
        let f = judged(None, false, &stored_file(), None);
        assert_eq!(f.given, Recorded::File);
        assert_eq!(f.source, stored_file().source);
        assert_eq!(f.issuer.as_deref(), Some("Store CA"));
        let f = judged(None, false, &stored_missing(), None);
        assert_eq!(
            f.given,
            Recorded::SelfSigned(Fallback::Missing("live/a.example/".into()))
        );
        assert_eq!(f.source, stored_missing().source);
        let f = judged(None, true, &stored_missing(), None);
        assert_eq!(
            f.given,
            Recorded::Acme,
            "self-signed only until ACME delivers"
        );
        assert_eq!(f.source, stored_missing().source);
        let f = judged(None, true, &stored_file(), None);
        assert_eq!(f.given, Recorded::Acme);
        assert_eq!(f.source, stored_file().source);
        let f = judged(None, false, &stored_hidden(Fallback::NoCertsFrom), None);
        assert_eq!(f.given, Recorded::SelfSigned(Fallback::NoCertsFrom));
    }

    #[test]
    fn an_acme_sidecar_shows_the_chain_in_its_volume_whatever_this_process_sees_of_the_store() {
        for store in [
            stored_file(),
            stored_missing(),
            stored_hidden(Fallback::NoCertsFrom),
            stored_hidden(Fallback::DirNotVisible),
        ] {
            for acme_flags in [false, true] {
                let f = judged(
                    Some(&Recorded::Acme),
                    acme_flags,
                    &store,
                    Some(&served_chain()),
                );
                let path = store
                    .path
                    .as_deref()
                    .unwrap_or("web-tls-sidecar:/certs/live/a.example/fullchain.pem");
                assert_eq!(f.source, file(path, Expiry::At(1_000)), "{store:?}");
                assert_eq!(f.issuer.as_deref(), Some("Pebble Intermediate CA 1a2b3c"));
                assert_eq!(f.given, Recorded::Acme);
            }
        }
    }

    #[test]
    fn an_acme_sidecar_with_nothing_in_its_volume_serves_self_signed_and_says_why() {
        let acme = Some(&Recorded::Acme);
        assert_eq!(
            judged(acme, false, &stored_file(), Some(&Served::Absent)).source,
            Source::SelfSigned(Fallback::NotDelivered("live/a.example/".into())),
            "issued, not delivered yet"
        );
        assert_eq!(
            judged(acme, false, &stored_missing(), Some(&Served::Absent)).source,
            Source::SelfSigned(Fallback::Missing("live/a.example/".into()))
        );
        assert_eq!(
            judged(
                acme,
                false,
                &stored_hidden(Fallback::NoCertsFrom),
                Some(&Served::Absent)
            )
            .source,
            Source::SelfSigned(Fallback::Missing("live/a.example/".into())),
            "its volume says so, seen from anywhere"
        );
    }

    #[test]
    fn an_acme_sidecar_whose_volume_was_not_read_serves_what_the_store_holds_or_is_unknown() {
        let acme = Some(&Recorded::Acme);
        let unreadable = Served::Unreadable("docker call timed out".into());
        for served in [None, Some(&unreadable)] {
            let f = judged(acme, false, &stored_file(), served);
            assert_eq!(f.source, stored_file().source);
            assert_eq!(f.issuer.as_deref(), Some("Store CA"));
            assert_eq!(
                judged(acme, false, &stored_missing(), served).source,
                stored_missing().source
            );
        }
        let f = judged(
            acme,
            false,
            &stored_hidden(Fallback::DirNotVisible),
            Some(&unreadable),
        );
        assert_eq!(
            f.source,
            Source::Unknown(
                "cannot see it: its certificate volume: docker call timed out; the store: certs dir not visible to the spawner".into()
            ),
            "never guessed self-signed"
        );
        assert_eq!(f.source.kind(), "unknown");
    }

    #[test]
    fn a_sidecar_labelled_before_the_acme_label_counts_as_acme_managed_with_the_acme_flags() {
        let old = Recorded::SelfSigned(Fallback::Missing("live/a.example/".into()));
        let f = judged(Some(&old), true, &stored_file(), Some(&served_chain()));
        assert_eq!(f.source, file(STORE_PATH, Expiry::At(1_000)));
        assert_eq!(f.given, old, "the label is what it is");
        assert_eq!(
            judged(Some(&old), true, &stored_file(), None).source,
            stored_file().source
        );
        assert_eq!(
            judged(Some(&old), false, &stored_file(), None).source,
            old_source(&old),
            "without them: a self-signed sidecar, replaced by the daemon once files exist"
        );
        assert_eq!(
            served_paths(&old, true, None, HOST),
            ["/certs/live/a.example/fullchain.pem"]
        );
        assert!(served_paths(&old, false, None, HOST).is_empty());
    }

    fn old_source(r: &Recorded) -> Source {
        match r {
            Recorded::SelfSigned(f) => Source::SelfSigned(f.clone()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_self_signed_sidecar_serves_self_signed_whatever_the_store_holds_now() {
        for f in [
            Fallback::NoCertsFrom,
            Fallback::DirNotVisible,
            Fallback::Missing("live/a.example/".into()),
        ] {
            let given = Recorded::SelfSigned(f.clone());
            let facts = judged(Some(&given), false, &stored_file(), None);
            assert_eq!(facts.source, Source::SelfSigned(f));
            assert_eq!(facts.issuer, None);
        }
    }

    #[test]
    fn a_file_sidecar_shows_its_volume_then_the_store_then_what_cannot_be_read() {
        let given = Some(&Recorded::File);
        let f = judged(given, false, &stored_file(), Some(&served_chain()));
        assert_eq!(
            f.source,
            file(STORE_PATH, Expiry::At(1_000)),
            "the store's name, the expiry of what the sidecar holds (a renewal not yet delivered)"
        );
        assert_eq!(f.issuer.as_deref(), Some("Pebble Intermediate CA 1a2b3c"));
        assert_eq!(
            judged(given, false, &stored_file(), None).source,
            stored_file().source
        );
        assert_eq!(
            judged(given, false, &stored_hidden(Fallback::DirNotVisible), None).source,
            file(
                STORE_PATH,
                Expiry::Unknown(
                    "not readable by this process: the store: certs dir not visible to the spawner"
                        .into()
                )
            )
        );
        assert_eq!(
            judged(given, false, &stored_missing(), Some(&Served::Absent)).source,
            file(
                STORE_PATH,
                Expiry::Unknown("not in the sidecar's certificate volume".into())
            )
        );
    }

    #[test]
    fn the_chain_is_looked_for_where_the_sidecar_reads_it() {
        let dir = CertsSource::HostDir("/le".into());
        let volume = CertsSource::Volume("le".into());
        let live = "/certs/live/a.example/fullchain.pem";
        let flat = "/certs/fullchain.pem";
        assert_eq!(served_paths(&Recorded::Acme, false, None, HOST), [live]);
        assert_eq!(
            served_paths(&Recorded::File, false, Some(&dir), HOST),
            [flat]
        );
        assert_eq!(
            served_paths(&Recorded::File, false, Some(&volume), HOST),
            [live]
        );
        assert_eq!(
            served_paths(&Recorded::File, false, None, HOST),
            [flat, live]
        );
        assert_eq!(
            served_paths(&Recorded::File, true, Some(&dir), HOST),
            [flat, live]
        );
        assert!(served_paths(
            &Recorded::SelfSigned(Fallback::NoCertsFrom),
            false,
            Some(&dir),
            HOST
        )
        .is_empty());
    }

    #[test]
    fn links_are_followed_within_the_certificate_mount_only() {
        assert_eq!(
            follow(
                "/certs/live/a.example/fullchain.pem",
                "../../archive/a.example/fullchain3.pem"
            ),
            Ok("/certs/archive/a.example/fullchain3.pem".to_string())
        );
        assert_eq!(
            follow("/certs/live/a/fullchain.pem", "/certs/x/./c.pem"),
            Ok("/certs/x/c.pem".to_string())
        );
        assert!(follow("/certs/live/a/fullchain.pem", "../../../etc/passwd").is_err());
        assert!(follow("/certs/live/a/fullchain.pem", "/etc/passwd").is_err());
        assert!(follow("/certs/fullchain.pem", "..").is_err());
    }

    #[test]
    fn an_archive_gives_its_file_or_its_link() {
        let mut b = tar::Builder::new(Vec::new());
        let pem = pem_valid_until(2031);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(pem.len() as u64);
        h.set_mode(0o444);
        b.append_data(&mut h, "fullchain.pem", pem.as_bytes())
            .unwrap();
        let archive = b.into_inner().unwrap();
        assert_eq!(entry_of(&archive), Ok(Archived::File(pem.into_bytes())));

        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "fullchain.pem", "../../archive/a/fullchain1.pem")
            .unwrap();
        let archive = b.into_inner().unwrap();
        assert_eq!(
            entry_of(&archive),
            Ok(Archived::Link("../../archive/a/fullchain1.pem".into()))
        );
        assert!(entry_of(b"").is_err());
    }

    #[test]
    fn the_issuer_is_its_common_name() {
        let chain = read_chain(pem_valid_until(2031).as_bytes()).unwrap();
        assert_eq!(chain.not_after, 1_925_078_400);
        assert_eq!(chain.issuer, "Issuer Test CA");
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
        assert_eq!(
            Source::SelfSigned(Fallback::NotDelivered("live/w/".into())).cell(0),
            "self-signed: live/w/ in the store, not delivered to the sidecar yet"
        );
        assert_eq!(
            Source::Unknown("cannot see it: the store: no --certs-from".into()).cell(0),
            "unknown: cannot see it: the store: no --certs-from"
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
