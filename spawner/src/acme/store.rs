//! The certificate store as ACME writes it, in certbot's layout, so a pair the spawner obtained
//! and one certbot made are read the same way ([`crate::certs::delivery::read`]); the names it
//! shares with the sidecars' volumes are in [`crate::layout`]:
//! - `archive/<name>/fullchainN.pem` and `privkeyN.pem`, one pair per issuance (N = 1, 2, ...),
//!   never rewritten; the key `0600`, the chain `0644`, the directory `0700`, as certbot does;
//! - `live/<name>/fullchain.pem` and `privkey.pem`: relative symbolic links to the newest pair;
//! - `acme/http-01/.well-known/acme-challenge/<token>`: the webroot sidecars serve (HTTP-01);
//! - `acme/tls-alpn-01/<name>.pem`: challenge certificates (TLS-ALPN-01, `--acme-tls-alpn-dir`);
//! - `acme/account.json`: the ACME account's credentials, `0600`.
//!
//! Every file is written whole under a temporary name, synced and renamed into place, so no
//! reader ever sees part of one. A new pair is written to the archive first, then the two links
//! are swapped, the key first: between the two renames a reader can find the new key beside
//! the old chain, which every reader rejects by checking that the key matches (the sidecar's
//! reload does; the spawner reads under its own lock).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use shared::dns::DnsName;
use shared::fs::ReadError;

use crate::acme::plan::{Held, NameSet};
use crate::layout::{HTTP01_DIR, HTTP01_TOKENS, TLS_ALPN01_DIR};

/// Largest state file read back: a few hundred bytes per name set, for thousands of them.
const MAX_STATE_BYTES: u64 = 8 << 20;

/// Largest certificate chain read back (the same bound as the delivery's).
const MAX_CHAIN_BYTES: u64 = 256 * 1024;

/// One store, rooted where the spawner sees it (`--certs-path`).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// `live/<name>`.
    pub(crate) fn live_dir(&self, name: &DnsName) -> PathBuf {
        self.root.join("live").join(name.to_string())
    }

    /// The webroot sidecars serve HTTP-01 challenges from (`--acme-webroot`).
    pub fn http01_webroot(&self) -> PathBuf {
        self.root.join(HTTP01_DIR)
    }

    /// Where TLS-ALPN-01 challenge certificates go (`--acme-tls-alpn-dir`).
    pub fn tls_alpn01_dir(&self) -> PathBuf {
        self.root.join(TLS_ALPN01_DIR)
    }

    /// The ACME account's credentials (`acme/account.json`).
    pub fn account_path(&self) -> PathBuf {
        self.root.join("acme").join("account.json")
    }

    /// The ACME order history per name set (`acme/state.json`), so a restarted spawner keeps
    /// its backoffs and hourly caps, and `spawner status` can show the last error.
    pub(crate) fn state_path(&self) -> PathBuf {
        self.root.join("acme").join("state.json")
    }

    /// Replaces the state file whole (0600: it names the sites, nothing secret, but it is the
    /// spawner's).
    pub(crate) fn write_state(&self, json: &[u8]) -> io::Result<()> {
        let path = self.state_path();
        if let Some(dir) = path.parent() {
            create_dir(dir, 0o700)?;
        }
        write_atomic(&path, json, 0o600)
    }

    /// The state file's content; `None` when there is none yet.
    pub(crate) fn read_state(&self) -> Result<Option<Vec<u8>>, ReadError> {
        match shared::fs::read(&self.state_path(), MAX_STATE_BYTES) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The DNS-01 records written and not yet removed (`acme/dns-01.json`): what an interrupted
    /// order left behind is removed by the next one.
    pub(crate) fn dns_records_path(&self) -> PathBuf {
        self.root.join("acme").join("dns-01.json")
    }

    /// Replaces the DNS-01 records file whole (0600).
    pub(crate) fn write_dns_records(&self, json: &[u8]) -> io::Result<()> {
        let path = self.dns_records_path();
        if let Some(dir) = path.parent() {
            create_dir(dir, 0o700)?;
        }
        write_atomic(&path, json, 0o600)
    }

    /// The DNS-01 records file's content; `None` when there is none.
    pub(crate) fn read_dns_records(&self) -> Result<Option<Vec<u8>>, ReadError> {
        match shared::fs::read(&self.dns_records_path(), MAX_STATE_BYTES) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores the account's credentials, readable by the spawner's user only (0600).
    pub(crate) fn write_account(&self, json: &[u8]) -> io::Result<()> {
        let path = self.account_path();
        if let Some(dir) = path.parent() {
            create_dir(dir, 0o700)?;
        }
        write_atomic(&path, json, 0o600)
    }

    /// Stores a new pair for `name` and points `live/<name>` at it. Returns its number N.
    pub fn write_pair(&self, name: &DnsName, chain: &[u8], key: &[u8]) -> io::Result<u32> {
        let archive = self.root.join("archive").join(name.to_string());
        create_dir(&archive, 0o700)?;
        let n = next_version(&archive)?;
        let chain_file = format!("fullchain{n}.pem");
        let key_file = format!("privkey{n}.pem");
        write_atomic(&archive.join(&key_file), key, 0o600)?;
        write_atomic(&archive.join(&chain_file), chain, 0o644)?;
        let live = self.live_dir(name);
        create_dir(&live, 0o755)?;
        let up = Path::new("../../archive").join(name.to_string());
        link_atomic(&up.join(&key_file), &live.join("privkey.pem"))?;
        link_atomic(&up.join(&chain_file), &live.join("fullchain.pem"))?;
        Ok(n)
    }

    /// What the certificate in `live/<name>/fullchain.pem` says about itself: `None` when there
    /// is none or it cannot be read (then a new one is due).
    pub fn held(&self, name: &DnsName) -> Option<Held> {
        leaf_facts(&self.read_chain(name).ok()?)
    }

    /// The certificate chain in `live/<name>/fullchain.pem` (at most [`MAX_CHAIN_BYTES`]).
    pub(crate) fn read_chain(&self, name: &DnsName) -> Result<Vec<u8>, ReadError> {
        let path = self.live_dir(name).join("fullchain.pem");
        shared::fs::read(&path, MAX_CHAIN_BYTES)
    }

    /// Publishes an HTTP-01 key authorization for `token`.
    pub(crate) fn write_http01(&self, token: &str, key_authorization: &str) -> io::Result<PathBuf> {
        let path = self.http01_path(token)?;
        if let Some(dir) = path.parent() {
            create_dir(dir, 0o755)?;
        }
        write_atomic(&path, key_authorization.as_bytes(), 0o644)?;
        Ok(path)
    }

    /// Removes an HTTP-01 challenge file (gone already is fine).
    pub(crate) fn remove_http01(&self, token: &str) -> io::Result<()> {
        remove_if_there(&self.http01_path(token)?)
    }

    fn http01_path(&self, token: &str) -> io::Result<PathBuf> {
        if !is_token(token) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not an ACME token: {token:?}"),
            ));
        }
        Ok(self.http01_webroot().join(HTTP01_TOKENS).join(token))
    }

    /// Publishes a TLS-ALPN-01 challenge certificate and key (PEM) for `name`.
    pub(crate) fn write_tls_alpn01(&self, name: &DnsName, pem: &[u8]) -> io::Result<PathBuf> {
        let dir = self.tls_alpn01_dir();
        create_dir(&dir, 0o755)?;
        let path = dir.join(format!("{name}.pem"));
        write_atomic(&path, pem, 0o644)?;
        Ok(path)
    }

    pub(crate) fn remove_tls_alpn01(&self, name: &DnsName) -> io::Result<()> {
        remove_if_there(&self.tls_alpn01_dir().join(format!("{name}.pem")))
    }
}

/// An ACME token as RFC 8555 makes them (base64url): 1 to 256 of `[A-Za-z0-9_-]`, the rule the
/// sidecar's webroot applies too.
pub(crate) fn is_token(token: &str) -> bool {
    (1..=256).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The names (DNS SANs, lowercase) and validity of the first certificate in `pem`.
pub(crate) fn leaf_facts(pem: &[u8]) -> Option<Held> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = block.parse_x509().ok()?;
    let mut names = NameSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = name {
                names.insert(d.to_ascii_lowercase());
            }
        }
    }
    let at = |t: i64| {
        u64::try_from(t)
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
    };
    Some(Held {
        names,
        not_before: at(cert.validity().not_before.timestamp())?,
        not_after: at(cert.validity().not_after.timestamp())?,
        suggested_renewal: None,
    })
}

fn create_dir(dir: &Path, mode: u32) -> io::Result<()> {
    if !dir.is_dir() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// The next free pair number in an archive directory: one more than the highest
/// `fullchainN.pem` or `privkeyN.pem` there.
fn next_version(archive: &Path) -> io::Result<u32> {
    let mut highest = 0;
    for entry in fs::read_dir(archive)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        let n = name
            .strip_suffix(".pem")
            .and_then(|s| {
                s.strip_prefix("fullchain")
                    .or_else(|| s.strip_prefix("privkey"))
            })
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(n) = n {
            highest = highest.max(n);
        }
    }
    Ok(highest + 1)
}

/// Writes `data` to `path` whole: a temporary file beside it (created with `mode`, never
/// readable by others in between), synced, renamed over `path`, the directory synced.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    // The umask may have taken bits `mode` asked for.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Points the symbolic link `link` at `target`, replacing whatever is at `link` in one rename.
fn link_atomic(target: &Path, link: &Path) -> io::Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.link-{}",
        link.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, link)?;
    File::open(dir)?.sync_all()
}

fn remove_if_there(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn store() -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "acme-store-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        fs::create_dir_all(&dir).expect("store dir");
        (Store::new(&dir), dir)
    }

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn pairs_land_in_certbots_layout_with_its_permissions() {
        let (store, dir) = store();
        let name = DnsName::from_str("a.example").expect("name");
        let (chain, key) = pair(&["a.example", "b.example"]);
        assert_eq!(
            store
                .write_pair(&name, chain.as_bytes(), key.as_bytes())
                .expect("write"),
            1
        );
        let live = dir.join("live/a.example");
        assert_eq!(
            fs::read_to_string(live.join("fullchain.pem")).expect("chain"),
            chain
        );
        assert_eq!(
            fs::read_to_string(live.join("privkey.pem")).expect("key"),
            key
        );
        assert_eq!(
            fs::read_link(live.join("privkey.pem")).expect("a link"),
            PathBuf::from("../../archive/a.example/privkey1.pem")
        );
        assert_eq!(mode(&dir.join("archive/a.example/privkey1.pem")), 0o600);
        assert_eq!(mode(&dir.join("archive/a.example/fullchain1.pem")), 0o644);
        assert_eq!(mode(&dir.join("archive/a.example")), 0o700);
        let held = store.held(&name).expect("held");
        assert_eq!(
            held.names.into_iter().collect::<Vec<_>>(),
            vec!["a.example".to_string(), "b.example".to_string()]
        );

        // A renewal: a new archive pair, the links moved, the old pair kept.
        let (chain2, key2) = pair(&["a.example"]);
        assert_eq!(
            store
                .write_pair(&name, chain2.as_bytes(), key2.as_bytes())
                .expect("renew"),
            2
        );
        assert_eq!(
            fs::read_to_string(live.join("fullchain.pem")).expect("chain"),
            chain2
        );
        assert_eq!(
            fs::read_to_string(live.join("privkey.pem")).expect("key"),
            key2
        );
        assert!(dir.join("archive/a.example/privkey1.pem").exists());
        // No temporary file is left behind.
        for d in [live.clone(), dir.join("archive/a.example")] {
            for entry in fs::read_dir(&d).expect("dir") {
                let n = entry.expect("entry").file_name();
                assert!(!n.to_string_lossy().starts_with('.'), "{n:?} left in {d:?}");
            }
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_certbot_made_pair_is_replaced_in_place() {
        // certbot's live files are links too; a hand-made store may have plain files.
        let (store, dir) = store();
        let name = DnsName::from_str("c.example").expect("name");
        let live = dir.join("live/c.example");
        fs::create_dir_all(&live).expect("live");
        fs::write(live.join("fullchain.pem"), "old").expect("old chain");
        fs::write(live.join("privkey.pem"), "old").expect("old key");
        let (chain, key) = pair(&["c.example"]);
        store
            .write_pair(&name, chain.as_bytes(), key.as_bytes())
            .expect("write");
        assert_eq!(
            fs::read_to_string(live.join("fullchain.pem")).expect("chain"),
            chain
        );
        assert!(store
            .held(&DnsName::from_str("none.example").expect("name"))
            .is_none());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn challenge_files_are_published_and_removed() {
        let (store, dir) = store();
        let path = store
            .write_http01("tok_EN-1", "tok_EN-1.thumb")
            .expect("http-01");
        assert_eq!(
            path,
            dir.join("acme/http-01/.well-known/acme-challenge/tok_EN-1")
        );
        assert_eq!(fs::read_to_string(&path).expect("read"), "tok_EN-1.thumb");
        store.remove_http01("tok_EN-1").expect("remove");
        store
            .remove_http01("tok_EN-1")
            .expect("gone already is fine");
        for bad in ["", "../x", "a/b", "a.b", &"x".repeat(257)] {
            assert!(store.write_http01(bad, "k").is_err(), "{bad:?}");
        }
        let name = DnsName::from_str("a.example").expect("name");
        let path = store.write_tls_alpn01(&name, b"pem").expect("tls-alpn-01");
        assert_eq!(path, dir.join("acme/tls-alpn-01/a.example.pem"));
        store.remove_tls_alpn01(&name).expect("remove");
        assert!(!path.exists());
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_fifo_as_state_or_chain_is_refused_not_waited_on() {
        use shared::fs::testing::{mkfifo, within};
        let (store, dir) = store();
        let name = DnsName::from_str("a.example").expect("name");
        assert!(store.read_state().expect("no state yet").is_none());
        fs::create_dir_all(dir.join("acme")).expect("acme dir");
        mkfifo(&store.state_path());
        fs::create_dir_all(store.live_dir(&name)).expect("live dir");
        mkfifo(&store.live_dir(&name).join("fullchain.pem"));
        let (s, n) = (store.clone(), name.clone());
        let (state, chain, held) = within("the store's files", move || {
            (s.read_state(), s.read_chain(&n), s.held(&n))
        });
        let state = state.expect_err("a FIFO state file is refused");
        assert_eq!(state.to_string(), "is a FIFO, not a regular file");
        assert!(
            matches!(chain, Err(ReadError::NotRegular { .. })),
            "{chain:?}"
        );
        assert!(held.is_none(), "no certificate held");
        let _ = fs::remove_dir_all(dir);
    }
}
