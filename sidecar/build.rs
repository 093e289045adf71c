//! Link options of the release `sidecar` binary that keep an idle sidecar small: most of its
//! memory is the pages of its own file that start-up touched, and the kernel maps 64 KiB around
//! every page fault on a file.
//!
//! - `link/startup.ld` gathers the code that start-up runs in front of `.text`, so that it shares
//!   those 64 KiB windows instead of touching most of the text; `link/startup-layout` writes it
//!   (and says how and when to run it again).
//! - `-z pack-relative-relocs` stores the static PIE's relative relocations as RELR: about 4 KiB
//!   instead of 350 KiB of RELA that start-up reads through once. glibc's static start-up code
//!   applies them from 2.36 on and ignores them before, so the flag is only given when the glibc
//!   linked is recent enough.
//!
//! Only for static glibc release builds on Linux (the images' build, `.cargo/config.toml`):
//! debug builds link as before.

use std::env;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=link/startup.ld");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let static_glibc = var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu"
        && var("CARGO_CFG_TARGET_FEATURE")
            .split(',')
            .any(|f| f == "crt-static");
    if !static_glibc || var("PROFILE") != "release" {
        return;
    }
    let script = format!("{}/link/startup.ld", var("CARGO_MANIFEST_DIR"));
    println!("cargo::rustc-link-arg-bin=sidecar=-Wl,-T,{script}");
    if glibc_at_least(2, 36) {
        println!("cargo::rustc-link-arg-bin=sidecar=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether the build machine's glibc (the one a static build links) is `major.minor` or later,
/// as `getconf GNU_LIBC_VERSION` tells ("glibc 2.36"); `false` when it cannot tell.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text.trim().strip_prefix("glibc ") else {
        return false;
    };
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}
