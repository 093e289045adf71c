//! Locating the project's binaries. Integration tests live in their own crate, so Cargo does not
//! build the `sidecar` and `spawner` executables for them; the first caller builds them (a no-op
//! when they are fresh) so a test can never run against a stale binary.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The target directory that holds this test executable's profile (`.../debug`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable path");
    // target/<triple>/debug/deps/integration-<hash> -> target/<triple>/debug
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in <profile>/deps")
        .to_path_buf()
}

/// Builds the workspace binaries once per test process, with the same profile as the tests.
fn build_once() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args([
                "build",
                "--bins",
                "-p",
                "sidecar",
                "-p",
                "spawner",
                "-p",
                "tls-sidecar-tests",
            ])
            .status()
            .expect("run cargo build for the workspace binaries");
        assert!(
            status.success(),
            "cargo build of the workspace binaries failed"
        );
    });
}

/// Path of a workspace binary (`sidecar`, `spawner` or `demo`), built if needed.
pub fn bin_path(name: &str) -> PathBuf {
    build_once();
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "binary {} not found after building",
        path.display()
    );
    path
}
