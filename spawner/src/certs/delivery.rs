//! Certificates delivered to each sidecar, one target at a time: the spawner reads the target's
//! own chain and key (and its client CA, with mutual TLS) from `--certs-from`, as its own user
//! (root in the usual deployment, so certbot's `0600 root` keys stay as certbot makes them), and
//! writes them through the engine's archive API into a volume of that sidecar alone, owned by the
//! sidecar's user. A sidecar never sees another site's key, and the store needs no permission
//! change. The spawner compares the source with what it delivered at every resync and delivers
//! again when it changed (a renewal); the sidecar's own reload picks the new files up.
//!
//! Pure apart from [`read`]: the bundle and its archive are unit-tested.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};

use shared::spec::MountedPath;

use crate::layout::{
    CHAIN_FILE, HTTP01_DIR, HTTP01_TOKENS, IDENTITY_CA_FILE, IDENTITY_CERT_FILE, IDENTITY_KEY_FILE,
    KEY_FILE, TLS_ALPN01_DIR,
};

/// Largest file delivered: a chain of a dozen certificates or a CA bundle fits many times over;
/// anything larger is not a certificate file, and would be copied into every sidecar.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 20;
/// The sidecar's user owns the files (it runs as `nobody`): the key `0400`, the rest `0444`.
/// Directories stay root's, so the sidecar cannot add files to its volume.
const SIDECAR_UID: u64 = 65534;

/// What one sidecar is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bundle {
    /// Directories made even when empty (the ACME answer directories a sidecar opens at start).
    dirs: Vec<String>,
    files: Vec<File>,
}

/// Where a bundle puts the target's pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `fullchain.pem` and `privkey.pem` directly under the mount (the sidecar is told the two
    /// paths).
    Flat,
    /// An ACME-managed target: the pair under `live/<hostname>/` (the sidecar reads the mount
    /// as a certificate directory and picks the pair up when it arrives), and the two
    /// challenge-answer directories.
    Acme,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct File {
    /// Relative to the mount, `/`-separated, no `..` (checked by [`MountedPath`] for the CA).
    path: String,
    bytes: Vec<u8>,
    mode: u32,
}

impl Bundle {
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }

    /// Challenge answers (or their emptied, withdrawn form) for the sidecars that serve them:
    /// readable by the sidecar, in root's directories.
    pub(crate) fn answers(files: &[AnswerFile]) -> Bundle {
        Bundle {
            dirs: Vec::new(),
            files: files
                .iter()
                .map(|f| File {
                    path: f.path.clone(),
                    bytes: f.bytes.clone(),
                    mode: 0o444,
                })
                .collect(),
        }
    }

    /// A sidecar's identity: its key (first: a sidecar reloading between the two files sees a key
    /// without its certificate, which it skips, never a new certificate beside the old key), its
    /// certificate and the trust bundle, for the identity volume. Without a pair, the bundle
    /// alone (a trust roll-over between two renewals).
    pub(crate) fn identity(pair: Option<(&str, &str)>, trust: &str) -> Bundle {
        let mut files = Vec::new();
        if let Some((cert, key)) = pair {
            files.push(File {
                path: IDENTITY_KEY_FILE.to_string(),
                bytes: key.as_bytes().to_vec(),
                mode: 0o400,
            });
            files.push(File {
                path: IDENTITY_CERT_FILE.to_string(),
                bytes: cert.as_bytes().to_vec(),
                mode: 0o444,
            });
        }
        files.push(File {
            path: IDENTITY_CA_FILE.to_string(),
            bytes: trust.as_bytes().to_vec(),
            mode: 0o444,
        });
        Bundle {
            dirs: Vec::new(),
            files,
        }
    }

    /// Changes whenever a delivered file's path, content or mode changes.
    pub(crate) fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.files.hash(&mut h);
        h.finish()
    }

    /// The files as a tar archive, for the engine's archive API (extracted at the mount).
    pub(crate) fn tar(&self) -> io::Result<Vec<u8>> {
        let mut out = tar::Builder::new(Vec::new());
        let mut dirs: Vec<String> = Vec::new();
        let explicit = self.dirs.iter().map(|d| (d.as_str(), true));
        let parents = self.files.iter().map(|f| (f.path.as_str(), false));
        for (path, is_dir) in explicit.chain(parents) {
            let segments: Vec<&str> = path.split('/').collect();
            let ancestors = if is_dir {
                &segments[..]
            } else {
                segments.split_last().map_or(&[][..], |(_, d)| d)
            };
            let mut parent = String::new();
            for segment in ancestors {
                parent = if parent.is_empty() {
                    segment.to_string()
                } else {
                    format!("{parent}/{segment}")
                };
                if !dirs.contains(&parent) {
                    let mut h = tar::Header::new_ustar();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_uid(0);
                    h.set_gid(0);
                    h.set_size(0);
                    out.append_data(&mut h, format!("{parent}/"), io::empty())?;
                    dirs.push(parent.clone());
                }
            }
        }
        for f in &self.files {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(f.mode);
            h.set_uid(SIDECAR_UID);
            h.set_gid(SIDECAR_UID);
            h.set_size(f.bytes.len() as u64);
            out.append_data(&mut h, &f.path, f.bytes.as_slice())?;
        }
        out.into_inner()
    }
}

/// One ACME challenge answer as a file: its path relative to the store (the same relative path
/// under a sidecar's `/certs`) and its content; empty when withdrawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AnswerFile {
    pub(crate) path: String,
    pub(crate) bytes: Vec<u8>,
}

/// Why a bundle could not be read; the target's sidecar is not started, and the reason shows in
/// the log and `spawner status`.
#[derive(Debug, thiserror::Error)]
#[error("cannot deliver {path}: {reason}")]
pub struct DeliveryError {
    pub(crate) path: PathBuf,
    pub(crate) reason: String,
}

/// Reads what the sidecar for `hostname` gets from the store at `store`: the certbot pair
/// `live/<hostname>/fullchain.pem` and `privkey.pem` when `with_pair` (placed as `layout`
/// says), and the client CA file.
pub(crate) fn read(
    store: &Path,
    hostname: &str,
    with_pair: bool,
    client_ca: Option<&MountedPath>,
    layout: Layout,
) -> Result<Bundle, DeliveryError> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    if layout == Layout::Acme {
        dirs.push(format!("{HTTP01_DIR}/{HTTP01_TOKENS}"));
        dirs.push(TLS_ALPN01_DIR.to_string());
    }
    if with_pair {
        let live = store.join("live").join(hostname);
        let at = |file: &str| match layout {
            Layout::Flat => file.to_string(),
            Layout::Acme => format!("live/{hostname}/{file}"),
        };
        // The key first: a sidecar reloading between the two sees a key without its chain,
        // which it skips, never a new chain beside the old key.
        files.push(File {
            path: at(KEY_FILE),
            bytes: read_file(&live.join(KEY_FILE))?,
            mode: 0o400,
        });
        files.push(File {
            path: at(CHAIN_FILE),
            bytes: read_file(&live.join(CHAIN_FILE))?,
            mode: 0o444,
        });
    }
    if let Some(ca) = client_ca {
        files.push(File {
            path: ca.relative().to_string(),
            bytes: read_file(&store.join(ca.relative()))?,
            mode: 0o444,
        });
    }
    Ok(Bundle { dirs, files })
}

/// A file of the store, at most [`MAX_FILE_BYTES`] (never waited on if it is a FIFO).
fn read_file(path: &Path) -> Result<Vec<u8>, DeliveryError> {
    shared::fs::read(path, MAX_FILE_BYTES).map_err(|e| DeliveryError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    impl Bundle {
        /// Whether the bundle holds a chain and key (else the sidecar makes a self-signed one).
        fn has_pair(&self) -> bool {
            self.files
                .iter()
                .any(|f| f.path == KEY_FILE || f.path.ends_with(&format!("/{KEY_FILE}")))
        }
    }

    fn store() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "delivery-test-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let live = dir.join("live/web.example");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(dir.join("ca")).unwrap();
        std::fs::write(live.join(CHAIN_FILE), b"chain").unwrap();
        std::fs::write(live.join(KEY_FILE), b"key").unwrap();
        // As certbot leaves it: the key readable by its owner only.
        std::fs::set_permissions(live.join(KEY_FILE), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(dir.join("ca/clients.pem"), b"ca").unwrap();
        dir
    }

    /// (path, mode, uid, content) of every entry.
    fn entries(tar_bytes: &[u8]) -> Vec<(String, u32, u64, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    body,
                )
            })
            .collect()
    }

    #[test]
    fn a_bundle_holds_only_this_target_s_files_owned_by_the_sidecar_user() {
        let dir = store();
        let ca: MountedPath = "ca/clients.pem".parse().unwrap();
        let b = read(&dir, "web.example", true, Some(&ca), Layout::Flat).unwrap();
        assert!(b.has_pair());
        assert_eq!(
            entries(&b.tar().unwrap()),
            vec![
                ("ca/".into(), 0o755, 0, Vec::new()),
                ("privkey.pem".into(), 0o400, 65534, b"key".to_vec()),
                ("fullchain.pem".into(), 0o444, 65534, b"chain".to_vec()),
                ("ca/clients.pem".into(), 0o444, 65534, b"ca".to_vec()),
            ]
        );
        let self_signed = read(&dir, "web.example", false, None, Layout::Flat).unwrap();
        assert!(self_signed.is_empty() && !self_signed.has_pair());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_acme_bundle_puts_the_pair_under_live_and_makes_the_answer_directories() {
        let dir = store();
        let b = read(&dir, "web.example", true, None, Layout::Acme).unwrap();
        assert!(b.has_pair());
        let paths: Vec<(String, u32, u64)> = entries(&b.tar().unwrap())
            .into_iter()
            .map(|(p, mode, uid, _)| (p, mode, uid))
            .collect();
        let d = |p: &str| (p.to_string(), 0o755, 0);
        assert_eq!(
            paths,
            vec![
                d("acme/"),
                d("acme/http-01/"),
                d("acme/http-01/.well-known/"),
                d("acme/http-01/.well-known/acme-challenge/"),
                d("acme/tls-alpn-01/"),
                d("live/"),
                d("live/web.example/"),
                ("live/web.example/privkey.pem".into(), 0o400, 65534),
                ("live/web.example/fullchain.pem".into(), 0o444, 65534),
            ]
        );
        // Before the first certificate: only the directories.
        let empty = read(&dir, "web.example", false, None, Layout::Acme).unwrap();
        assert!(!empty.has_pair() && !empty.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_identity_is_the_sidecar_s_key_its_certificate_and_the_trust_bundle() {
        let b = Bundle::identity(Some(("CERT", "KEY")), "TRUST");
        assert!(
            !b.has_pair(),
            "not a certbot pair: the sidecar reads it by its own flags"
        );
        assert_eq!(
            entries(&b.tar().unwrap()),
            vec![
                ("key.pem".into(), 0o400, 65534, b"KEY".to_vec()),
                ("cert.pem".into(), 0o444, 65534, b"CERT".to_vec()),
                ("ca.pem".into(), 0o444, 65534, b"TRUST".to_vec()),
            ]
        );
        let trust_only = Bundle::identity(None, "TRUST2");
        assert_eq!(
            entries(&trust_only.tar().unwrap()),
            vec![("ca.pem".into(), 0o444, 65534, b"TRUST2".to_vec())]
        );
    }

    #[test]
    fn answers_are_readable_files_and_withdrawn_ones_empty() {
        let b = Bundle::answers(&[
            AnswerFile {
                path: "acme/http-01/.well-known/acme-challenge/tok".into(),
                bytes: b"tok.thumb".to_vec(),
            },
            AnswerFile {
                path: "acme/tls-alpn-01/a.example.pem".into(),
                bytes: Vec::new(),
            },
        ]);
        let files: Vec<_> = entries(&b.tar().unwrap())
            .into_iter()
            .filter(|(p, ..)| !p.ends_with('/'))
            .collect();
        assert_eq!(
            files,
            vec![
                (
                    "acme/http-01/.well-known/acme-challenge/tok".into(),
                    0o444,
                    65534,
                    b"tok.thumb".to_vec()
                ),
                (
                    "acme/tls-alpn-01/a.example.pem".into(),
                    0o444,
                    65534,
                    Vec::new()
                ),
            ]
        );
    }

    #[test]
    fn a_renewal_changes_the_digest() {
        let dir = store();
        let before = read(&dir, "web.example", true, None, Layout::Flat)
            .unwrap()
            .digest();
        assert_eq!(
            read(&dir, "web.example", true, None, Layout::Flat)
                .unwrap()
                .digest(),
            before
        );
        std::fs::write(dir.join("live/web.example").join(CHAIN_FILE), b"renewed").unwrap();
        assert_ne!(
            read(&dir, "web.example", true, None, Layout::Flat)
                .unwrap()
                .digest(),
            before
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_and_oversized_files_are_named() {
        let dir = store();
        let e = read(&dir, "other.example", true, None, Layout::Flat).unwrap_err();
        assert!(
            e.to_string().contains("live/other.example/privkey.pem"),
            "{e}"
        );
        let big = dir.join("ca/big.pem");
        std::fs::write(&big, vec![b'x'; MAX_FILE_BYTES as usize + 1]).unwrap();
        let ca: MountedPath = "ca/big.pem".parse().unwrap();
        let e = read(&dir, "web.example", false, Some(&ca), Layout::Flat).unwrap_err();
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_fifo_in_the_store_is_refused_not_waited_on() {
        use shared::fs::testing::{mkfifo, within};
        for file in [KEY_FILE, CHAIN_FILE, "ca/clients.pem"] {
            let dir = store();
            let path = if file.starts_with("ca/") {
                dir.join(file)
            } else {
                dir.join("live/web.example").join(file)
            };
            std::fs::remove_file(&path).unwrap();
            mkfifo(&path);
            let at = dir.clone();
            let e = within(file, move || {
                let ca: MountedPath = "ca/clients.pem".parse().unwrap();
                read(&at, "web.example", true, Some(&ca), Layout::Flat).map(|_| ())
            })
            .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "cannot deliver {}: is a FIFO, not a regular file",
                    path.display()
                )
            );
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
