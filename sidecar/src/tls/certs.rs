//! Certificate material: what a certificate says about itself ([`CertFacts`]), the set of
//! certificates served ([`CertSet`], chosen by SNI with a pure function), and finding pairs in a
//! `--certs-dir` (certbot's `live/<name>/` layout and the flat `<name>.crt`/`.key` layout).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;

use crate::config::PairPaths;

/// The largest certificate or key file read (`--cert`, `--key`, `--certs-dir`, the identity
/// pair): a chain of a dozen certificates is tens of KiB; the spawner delivers nothing larger
/// either. A bound on what each of thousands of pairs may hold in memory during a reload.
pub(crate) const MAX_PAIR_FILE: u64 = 1 << 20;

/// What the sidecar needs to know about a certificate, read from its DER.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CertFacts {
    /// Subject in RFC 4514 form, e.g. `CN=web, O=Example`.
    pub subject: String,
    pub common_names: Vec<String>,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// Expiry, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertFacts {
    /// Parses a DER certificate.
    pub(crate) fn from_der(der: &[u8]) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("not an X.509 certificate: {e}"))?;
        let mut facts = CertFacts {
            subject: cert.subject().to_string(),
            common_names: cert
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok().map(String::from))
                .collect(),
            not_after: cert.validity().not_after.timestamp(),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => facts.dns_names.push(d.to_ascii_lowercase()),
                    GeneralName::URI(u) => facts.uris.push((*u).to_string()),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => facts.ips.push(IpAddr::from(
                            <[u8; 4]>::try_from(*bytes).unwrap_or_default(),
                        )),
                        16 => facts.ips.push(IpAddr::from(
                            <[u8; 16]>::try_from(*bytes).unwrap_or_default(),
                        )),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
        Ok(facts)
    }

    /// The names SNI can select this certificate by: DNS SANs, or the common name when there
    /// are none (legacy certificates).
    pub(crate) fn sni_names(&self) -> Vec<String> {
        if self.dns_names.is_empty() {
            self.common_names
                .iter()
                .map(|c| c.to_ascii_lowercase())
                .collect()
        } else {
            self.dns_names.clone()
        }
    }
}

/// One certificate ready to serve.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Name used in logs and metrics: the certbot directory name, the flat file stem,
    /// `default` for `--cert`, `self-signed` for a generated one.
    pub name: String,
    pub key: Arc<CertifiedKey>,
    pub facts: CertFacts,
    /// SHA-256 of the leaf (DER) as openssl prints it (`AB:CD:...`), for logs.
    pub fingerprint: String,
    /// SHA-256 of the certificate and key file contents, to notice changes cheaply.
    pub content_hash: [u8; 32],
    /// Where it came from, for logs.
    pub origin: String,
}

/// The certificates served, indexed for SNI.
#[derive(Debug)]
pub(crate) struct CertSet {
    default: Arc<Entry>,
    exact: HashMap<String, Arc<Entry>>,
    /// `example.com` -> the entry holding `*.example.com`.
    wildcard: HashMap<String, Arc<Entry>>,
    entries: Vec<Arc<Entry>>,
    /// The service identity (`--identity-cert`), if any: also in `exact` and `entries`.
    identity: Option<Arc<Entry>>,
}

impl CertSet {
    /// Builds the set. `entries` are in priority order: when two certificates claim one name,
    /// the earlier wins. `default` serves clients without SNI or with an unknown name; it is
    /// also selectable by its own names.
    pub(crate) fn new(default: Arc<Entry>, entries: Vec<Arc<Entry>>) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut all = vec![default.clone()];
        all.extend(
            entries
                .iter()
                .filter(|e| !Arc::ptr_eq(e, &default))
                .cloned(),
        );
        for entry in &all {
            for name in entry.facts.sni_names() {
                match name.strip_prefix("*.") {
                    Some(parent) => {
                        wildcard
                            .entry(parent.to_string())
                            .or_insert_with(|| entry.clone());
                    }
                    None => {
                        exact.entry(name).or_insert_with(|| entry.clone());
                    }
                }
            }
        }
        Self {
            default,
            exact,
            wildcard,
            entries: all,
            identity: None,
        }
    }

    /// Adds the service identity: chosen by each of its DNS names ahead of every other
    /// certificate (a caller that names the service as SNI is another sidecar, which verifies the
    /// identity and nothing else), its wildcards ignored; the default and all other names are
    /// unchanged.
    pub(crate) fn with_identity(mut self, identity: Arc<Entry>) -> Self {
        for name in &identity.facts.dns_names {
            if !name.starts_with("*.") {
                self.exact.insert(name.clone(), identity.clone());
            }
        }
        if !self.entries.iter().any(|e| Arc::ptr_eq(e, &identity)) {
            self.entries.push(identity.clone());
        }
        self.identity = Some(identity);
        self
    }

    /// The service identity, presented on upstream calls.
    pub(crate) fn identity(&self) -> Option<&Arc<Entry>> {
        self.identity.as_ref()
    }

    /// The certificate for a client's SNI: an exact name, else a wildcard covering exactly one
    /// more label, else the default.
    pub(crate) fn select(&self, sni: Option<&str>) -> &Arc<Entry> {
        let Some(sni) = sni else { return &self.default };
        let sni = sni.trim_end_matches('.').to_ascii_lowercase();
        if let Some(e) = self.exact.get(&sni) {
            return e;
        }
        if let Some((_, parent)) = sni.split_once('.') {
            if let Some(e) = self.wildcard.get(parent) {
                return e;
            }
        }
        &self.default
    }

    pub(crate) fn default_entry(&self) -> &Arc<Entry> {
        &self.default
    }

    /// Every certificate, default first.
    pub(crate) fn entries(&self) -> &[Arc<Entry>] {
        &self.entries
    }

    /// The name and expiry (notAfter, seconds since the Unix epoch) of every certificate, default
    /// first: what the expiry gauge shows.
    pub(crate) fn expiries(&self) -> Vec<(String, i64)> {
        self.entries
            .iter()
            .map(|e| (e.name.clone(), e.facts.not_after))
            .collect()
    }
}

/// Finds the pairs in a certificates directory, sorted by name:
/// - certbot: `DIR/live/<name>/fullchain.pem` + `privkey.pem`;
/// - flat: `DIR/<name>.crt` or `DIR/<name>.pem` with `DIR/<name>.key`, or a `DIR/<name>.pem`
///   holding both the chain and the key.
///
/// A certbot directory without its files is still listed (so a reload notices the missing file
/// and keeps the old certificate); a flat certificate without any key is skipped.
pub(crate) fn scan_dir(dir: &Path) -> std::io::Result<Vec<PairPaths>> {
    let mut pairs = Vec::new();
    let live = dir.join("live");
    if live.is_dir() {
        for entry in std::fs::read_dir(&live)? {
            let entry = entry?;
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(String::from) else {
                continue;
            };
            pairs.push(PairPaths {
                name,
                cert: path.join("fullchain.pem"),
                key: path.join("privkey.pem"),
            });
        }
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for path in &files {
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|e| e.to_str()),
        ) else {
            continue;
        };
        if stem.starts_with('.') || !(ext == "crt" || ext == "pem") {
            continue;
        }
        let key = dir.join(format!("{stem}.key"));
        if key.is_file() {
            // `<name>.crt` wins over `<name>.pem` when both exist.
            if ext == "pem" && dir.join(format!("{stem}.crt")).is_file() {
                continue;
            }
            pairs.push(PairPaths {
                name: stem.to_string(),
                cert: path.clone(),
                key,
            });
        } else if ext == "pem" && pem_has_key(path) {
            pairs.push(PairPaths {
                name: stem.to_string(),
                cert: path.clone(),
                key: path.clone(),
            });
        }
    }
    pairs.sort_by(|a, b| a.name.cmp(&b.name));
    pairs.dedup_by(|a, b| a.name == b.name);
    Ok(pairs)
}

fn pem_has_key(path: &Path) -> bool {
    shared::fs::read(path, MAX_PAIR_FILE).is_ok_and(|b| b.windows(11).any(|w| w == b"PRIVATE KEY"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::self_signed;

    fn entry(name: &str, names: &[&str]) -> Arc<Entry> {
        let mut e = self_signed(&crate::tls::sans(names)).expect("generate");
        e.name = name.to_string();
        Arc::new(e)
    }

    #[test]
    fn facts_read_sans_and_expiry() {
        let e = entry("a", &["a.example", "*.b.example", "10.1.2.3"]);
        assert_eq!(e.facts.dns_names, vec!["a.example", "*.b.example"]);
        assert_eq!(e.facts.ips, vec!["10.1.2.3".parse::<IpAddr>().expect("ip")]);
        assert!(e.facts.not_after > 1_700_000_000);
        assert!(
            e.facts.subject.contains("CN=a.example"),
            "{}",
            e.facts.subject
        );
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default() {
        let default = entry("default", &["default.example"]);
        let a = entry("a", &["a.example"]);
        let wild = entry("wild", &["*.w.example"]);
        let set = CertSet::new(default.clone(), vec![a.clone(), wild.clone()]);
        assert_eq!(set.select(Some("a.example")).name, "a");
        assert_eq!(set.select(Some("A.EXAMPLE.")).name, "a");
        assert_eq!(set.select(Some("x.w.example")).name, "wild");
        // A wildcard covers exactly one label.
        assert_eq!(set.select(Some("y.x.w.example")).name, "default");
        assert_eq!(set.select(Some("w.example")).name, "default");
        assert_eq!(set.select(Some("unknown.example")).name, "default");
        assert_eq!(set.select(None).name, "default");
        assert_eq!(set.select(Some("default.example")).name, "default");
        assert_eq!(set.entries().len(), 3);
    }

    #[test]
    fn earlier_entries_win_a_shared_name() {
        let first = entry("first", &["same.example"]);
        let second = entry("second", &["same.example"]);
        let set = CertSet::new(first.clone(), vec![first, second]);
        assert_eq!(set.select(Some("same.example")).name, "first");
        assert_eq!(set.entries().len(), 2);
    }

    #[test]
    fn the_identity_wins_its_exact_names_and_leaves_the_rest() {
        let default = entry("default", &["default.example", "b"]);
        let other = entry("other", &["b.example", "*.example", "shared"]);
        let id = entry("identity", &["b", "shared", "*.internal"]);
        let set = CertSet::new(default.clone(), vec![other.clone()]).with_identity(id.clone());
        assert_eq!(set.select(Some("b")).name, "identity", "over the default");
        assert_eq!(set.select(Some("B.")).name, "identity");
        assert_eq!(
            set.select(Some("shared")).name,
            "identity",
            "over a directory pair"
        );
        assert_eq!(set.select(Some("b.example")).name, "other");
        assert_eq!(
            set.select(Some("x.internal")).name,
            "default",
            "no wildcard"
        );
        assert_eq!(set.select(Some("unknown")).name, "default");
        assert_eq!(set.select(None).name, "default");
        assert_eq!(set.select(Some("default.example")).name, "default");
        assert!(set.identity().is_some_and(|i| Arc::ptr_eq(i, &id)));
        assert_eq!(set.entries().len(), 3);
        assert!(CertSet::new(default, vec![other]).identity().is_none());
    }

    #[test]
    fn scan_finds_certbot_and_flat_pairs() {
        let dir = std::env::temp_dir().join(format!("sidecar-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("live/site.example")).expect("mkdir");
        std::fs::write(dir.join("live/README"), "certbot readme").expect("write");
        for f in ["a.crt", "a.key", "b.pem", "b.key", "c.crt", "README.md"] {
            std::fs::write(dir.join(f), "x").expect("write");
        }
        std::fs::write(dir.join("d.pem"), "-----BEGIN PRIVATE KEY-----").expect("write");
        let pairs = scan_dir(&dir).expect("scan");
        let names: Vec<&str> = pairs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, vec!["a", "b", "d", "site.example"]);
        assert_eq!(pairs[3].cert, dir.join("live/site.example/fullchain.pem"));
        assert_eq!(pairs[2].cert, pairs[2].key);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
