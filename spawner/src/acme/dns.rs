//! DNS-01 (RFC 8555 section 8.4): where a name's challenge record goes, writing and removing it
//! through the configured provider, and waiting until the zone's authoritative servers show it.
//!
//! The ACME client sees four calls: [`Dns::locate`] (the record's name after any CNAME, its
//! zone by SOA, the servers to check), [`Dns::present`] and [`Dns::cleanup`] (one TXT value
//! added or removed, beside any others), [`Dns::wait_visible`]. Every failure is a [`DnsError`]
//! naming its [`Step`], with a `cause` that stays the same while the cause does.
//!
//! Our own minimal DNS, no resolver library: [`wire`] encodes queries and RFC 2136 UPDATEs and
//! decodes answers, never panicking on what a server sends; [`key`] reads `tsig-keygen`'s key
//! files; [`tsig`] signs updates and checks signed answers (RFC 8945); [`query`] is the
//! transport (UDP, TCP on truncation, every step under a timeout) and the system's resolvers;
//! [`lookup`] follows CNAMEs and finds the zone; [`update`] and [`hook`] are the two providers;
//! [`visible`] polls until the record shows. Everything is bounded: CNAME hops, labels
//! stripped, servers asked, message sizes, tries, the hook's output and run time.

mod hook;
mod key;
mod lookup;
mod query;
mod tsig;
mod update;
mod visible;
mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shared::dns::DnsName;

/// The largest key file read: a key clause is about 100 bytes.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// The HMAC of a TSIG key (RFC 8945).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    HmacSha256,
    HmacSha384,
    HmacSha512,
}

/// A TSIG key as BIND's `tsig-keygen` writes it: `key "NAME" { algorithm hmac-sha256; secret
/// "BASE64"; };`. The secret is never logged or shown (`Debug` leaves it out).
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    pub name: String,
    pub algorithm: TsigAlgorithm,
    pub(crate) secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TsigKey {
    /// Reads and parses a key file (bounded size); the error names what is wrong, never the
    /// secret.
    pub fn read(path: &Path) -> Result<TsigKey, String> {
        let bytes = shared::fs::read(path, MAX_KEY_FILE)
            .map_err(|e| format!("TSIG key file {}: {e}", path.display()))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| format!("TSIG key file {}: not UTF-8 text", path.display()))?;
        TsigKey::parse(text).map_err(|e| format!("TSIG key file {}: {e}", path.display()))
    }

    /// Parses the key-clause text.
    pub fn parse(text: &str) -> Result<TsigKey, String> {
        key::parse(text)
    }
}

/// Where DNS-01 records are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// RFC 2136 dynamic updates to `server`, signed with `key`.
    Rfc2136 { server: SocketAddr, key: TsigKey },
    /// `path present FQDN VALUE` / `path cleanup FQDN VALUE`, each killed after `timeout`.
    Hook { path: PathBuf, timeout: Duration },
}

/// The DNS-01 settings of the spawner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub provider: Provider,
    /// Asked for the zone lookup and the visibility check; `None`: the system's resolvers
    /// (`/etc/resolv.conf`) for the lookup, the zone's name servers for the check.
    pub resolver: Option<SocketAddr>,
    /// How long a record may take to be visible everywhere it is checked.
    pub propagation_timeout: Duration,
}

/// The step of DNS-01 that failed: `spawner status` and the log name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Finding the zone (SOA) or following the `_acme-challenge` CNAME.
    ZoneLookup,
    /// The RFC 2136 update was refused or not answered.
    Update,
    /// The exec hook failed, timed out or could not be run.
    Hook,
    /// The record did not show on every server checked within the propagation timeout.
    NotVisible,
}

/// Why a DNS-01 step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsError {
    pub step: Step,
    /// Whole, for the log and status (names the server, the zone, the code).
    pub message: String,
    /// What repeats from one failure of the same cause to the next (no values, no timings):
    /// one WARN per cause.
    pub cause: String,
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DnsError {}

/// Where a name's challenge record goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The record's name after any CNAME, lowercase, without the trailing dot
    /// (`_acme-challenge.example.com`, or where its CNAME points).
    pub fqdn: String,
    /// The zone holding `fqdn` (the owner of its SOA), without the trailing dot.
    pub zone: String,
    /// `_acme-challenge.<name>` was a CNAME.
    pub via_cname: bool,
    /// The servers the visibility check asks.
    pub servers: Vec<SocketAddr>,
}

impl Dns {
    /// Where the record proving `name` (without any `*.`) goes.
    pub async fn locate(&self, name: &DnsName) -> Result<Location, DnsError> {
        lookup::locate(self, name.as_str()).await
    }

    /// Adds the TXT value (beside any others there).
    pub async fn present(&self, at: &Location, value: &str) -> Result<(), DnsError> {
        match &self.provider {
            Provider::Rfc2136 { server, key } => {
                let add = wire::Change::Add {
                    ttl: update::RECORD_TTL,
                };
                update::apply(*server, key, at, value, add).await
            }
            Provider::Hook { path, timeout } => {
                hook::run(path, *timeout, hook::Action::Present, at, value).await
            }
        }
    }

    /// Removes the TXT value (only it).
    pub async fn cleanup(&self, at: &Location, value: &str) -> Result<(), DnsError> {
        match &self.provider {
            Provider::Rfc2136 { server, key } => {
                update::apply(*server, key, at, value, wire::Change::Delete).await
            }
            Provider::Hook { path, timeout } => {
                hook::run(path, *timeout, hook::Action::Cleanup, at, value).await
            }
        }
    }

    /// Waits until every value shows on every server of `at`, up to the propagation timeout.
    pub async fn wait_visible(&self, at: &Location, values: &[String]) -> Result<(), DnsError> {
        visible::wait(self, at, values).await
    }
}
