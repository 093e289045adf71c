//! `make install` and `make uninstall` as a packager runs them (issue 11): DESTDIR and PREFIX
//! honoured, both binaries runnable from where they land, and removed again.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use harness::bins::bin_path;
use harness::docker::repo_root;
use harness::tmp::TempDir;

/// `make -C <repo> TARGET RELEASE=<dir> DESTDIR=<dir> PREFIX=/usr`. `RELEASE` points at this
/// test run's own (debug) binaries, which exist, so the recipe installs them without a release
/// build: the rule under test is the copy, not cargo.
fn make(target: &str, release: &Path, destdir: &Path) -> Output {
    let out = Command::new("make")
        .arg("-C")
        .arg(repo_root())
        .arg(target)
        .arg(format!("RELEASE={}", release.display()))
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg("PREFIX=/usr")
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make {target} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn make_install_puts_both_binaries_in_destdir_prefix_bin_and_uninstall_removes_them() {
    let release = bin_path("sidecar")
        .parent()
        .expect("the binary has a directory")
        .to_path_buf();
    assert!(bin_path("spawner").starts_with(&release));
    let dest = TempDir::new("tls-sidecar-install");
    let out = make("install", &release, dest.path());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        !said.contains("cargo build"),
        "binaries that exist are installed as they are, not rebuilt:\n{said}"
    );

    let bin = dest.path().join("usr/bin");
    for name in ["sidecar", "spawner"] {
        let path = bin.join(name);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{} installed: {e}", path.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{} mode {mode:o}", path.display());
        // From the installed path, with an empty environment: nothing of the build is needed.
        let version = Command::new(&path)
            .arg("--version")
            .env_clear()
            .output()
            .unwrap_or_else(|e| panic!("run {} --version: {e}", path.display()));
        assert!(version.status.success(), "{name} --version: {version:?}");
        let said = String::from_utf8_lossy(&version.stdout);
        assert_eq!(
            said.trim(),
            format!("{name} {}", env!("CARGO_PKG_VERSION")),
            "{name} --version"
        );
    }
    let mut listed: Vec<String> = std::fs::read_dir(&bin)
        .expect("list bin")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ["sidecar", "spawner"], "nothing else is installed");

    make("uninstall", &release, dest.path());
    for name in ["sidecar", "spawner"] {
        assert!(!bin.join(name).exists(), "{name} removed by make uninstall");
    }
}
