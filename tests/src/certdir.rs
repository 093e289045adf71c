//! A certificates directory as renewal tools leave it, and the ways they change it: the flat
//! layout (`<name>.crt` + `<name>.key`, or one `<name>.pem`), certbot's layout (`live/<name>/*.pem`
//! symlinks into `archive/<name>/`, re-pointed on renewal), an atomic replace (write a temp file in
//! the same directory, `rename` it over, as most tools and Kubernetes do) and an in-place rewrite
//! (truncate and write, as `cp` or a naive script does).

use std::path::{Path, PathBuf};

use crate::issuer::Issued;
use crate::tmp::TempDir;

/// A temp directory to point `--certs-dir` (or `--cert`/`--key`) at. Removed on drop.
pub struct CertsDir {
    dir: TempDir,
}

impl Default for CertsDir {
    fn default() -> Self {
        Self::new()
    }
}

impl CertsDir {
    /// A fresh empty directory.
    pub fn new() -> CertsDir {
        CertsDir {
            dir: TempDir::new("tls-sidecar-certs"),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The directory as a command-line argument.
    pub fn arg(&self) -> String {
        self.path().display().to_string()
    }

    /// Writes the flat pair `<stem>.crt` + `<stem>.key`; returns (cert, key).
    pub fn flat(&self, stem: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        issued.write_to(self.path(), stem)
    }

    /// Writes `<stem>.pem` holding the certificate and then the key.
    pub fn combined(&self, stem: &str, issued: &Issued) -> PathBuf {
        let path = self.path().join(format!("{stem}.pem"));
        write(&path, format!("{}{}", issued.cert_pem, issued.key_pem));
        path
    }

    /// Writes certbot's layout for `name`, version 1: `archive/<name>/fullchain1.pem` and
    /// `privkey1.pem`, linked from `live/<name>/fullchain.pem` and `privkey.pem` by relative
    /// symlinks, as certbot does.
    pub fn certbot(&self, name: &str, issued: &Issued) {
        let live = self.path().join("live").join(name);
        mkdir(&live);
        self.certbot_archive(name, 1, issued);
        for file in ["fullchain", "privkey"] {
            symlink(
                &format!("../../archive/{name}/{file}1.pem"),
                &live.join(format!("{file}.pem")),
            );
        }
    }

    /// A certbot renewal to `version`: new archive files, then each `live/` link re-pointed by
    /// creating a new symlink beside it and renaming it over the old one (atomic per link).
    pub fn certbot_renew(&self, name: &str, version: u32, issued: &Issued) {
        self.certbot_archive(name, version, issued);
        let live = self.path().join("live").join(name);
        for file in ["fullchain", "privkey"] {
            let tmp = live.join(format!(".{file}.pem.new"));
            symlink(&format!("../../archive/{name}/{file}{version}.pem"), &tmp);
            rename(&tmp, &live.join(format!("{file}.pem")));
        }
    }

    fn certbot_archive(&self, name: &str, version: u32, issued: &Issued) {
        let archive = self.path().join("archive").join(name);
        mkdir(&archive);
        write(
            &archive.join(format!("fullchain{version}.pem")),
            &issued.cert_pem,
        );
        write(
            &archive.join(format!("privkey{version}.pem")),
            &issued.key_pem,
        );
    }
}

/// Replaces `path` atomically: `contents` go to a temp file in the same directory, which is then
/// renamed over `path`, so a reader sees the old file or the new one, never a mix.
pub fn replace_atomic(path: &Path, contents: impl AsRef<[u8]>) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write(&tmp, contents);
    rename(&tmp, path);
}

/// Rewrites `path` in place (truncate, then write), keeping its inode.
pub fn rewrite_in_place(path: &Path, contents: impl AsRef<[u8]>) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} for rewrite: {e}", path.display()));
    f.write_all(contents.as_ref())
        .unwrap_or_else(|e| panic!("rewrite {}: {e}", path.display()));
}

/// Writes `contents` to `path` (creating or truncating it).
pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Creates `link` pointing at `target`.
pub fn symlink(target: &str, link: &Path) {
    std::os::unix::fs::symlink(target, link)
        .unwrap_or_else(|e| panic!("symlink {} -> {target}: {e}", link.display()));
}

fn rename(from: &Path, to: &Path) {
    std::fs::rename(from, to)
        .unwrap_or_else(|e| panic!("rename {} -> {}: {e}", from.display(), to.display()));
}

fn mkdir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
}
