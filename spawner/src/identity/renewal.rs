//! Which sidecar needs an identity certificate or a trust bundle delivered, and when: the
//! decisions of service identity, pure, over what was delivered to each sidecar ([`Issued`]),
//! and the [`Signer`] they are made with. The CA itself is [`crate::identity::ca`]; the daemon
//! delivers what [`due`] asks for into the sidecar's identity volume
//! ([`crate::certs::delivery::Bundle::identity`]).
//!
//! What was delivered is kept in memory only: a restarted spawner knows nothing of the sidecars
//! it finds running, so it issues each one a fresh certificate at its first turn. That is the
//! renewal a restart owes them (their last certificate may be past half its life), costs one
//! signature per sidecar, and needs no state on disk beside the CA.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shared::service_identity::ServiceName;
use tokio::time::Instant;

use crate::config::{CaSource, IdentityConfig};
use crate::identity::ca::{Authority, ExtraRoots};
use crate::identity::IdentityError;

/// What certificates are signed with, and the trust bundle delivered beside them: loaded at
/// start (a CA that cannot be loaded or made stops the spawner) and again at every resync, so
/// a roll-over (a new `--identity-trust`, a replaced CA) needs no restart.
#[derive(Debug)]
pub(crate) struct Signer {
    pub(crate) authority: Authority,
    /// Digest of the CA certificate.
    pub(crate) ca: u64,
    pub(crate) trust_pem: String,
    /// Digest of the trust bundle.
    pub(crate) trust: u64,
}

/// How long loading the CA and the extra roots may take (a hung network mount).
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

impl Signer {
    /// Loads (or, in the store, creates) the CA and reads `--identity-trust`.
    pub(crate) fn load(cfg: &IdentityConfig) -> Result<Signer, IdentityError> {
        let authority = Authority::load(&cfg.ca, &cfg.domain)?;
        let extra = cfg.trust.as_deref().map(ExtraRoots::read).transpose()?;
        let trust_pem = authority.trust_bundle(extra.as_ref());
        Ok(Signer {
            ca: digest(authority.cert_pem().as_bytes()),
            trust: digest(trust_pem.as_bytes()),
            trust_pem,
            authority,
        })
    }

    /// [`Signer::load`] off the async threads, under a timeout.
    pub(crate) async fn load_async(cfg: &IdentityConfig) -> Result<Arc<Signer>, IdentityError> {
        let failed = |reason: &str| IdentityError::Load {
            path: match &cfg.ca {
                CaSource::Store(dir) => dir.clone(),
                CaSource::Files { cert, .. } => cert.clone(),
            },
            reason: reason.to_string(),
        };
        let owned = cfg.clone();
        let load = tokio::task::spawn_blocking(move || Signer::load(&owned));
        match tokio::time::timeout(LOAD_TIMEOUT, load).await {
            Err(_) => Err(failed("reading the CA timed out")),
            Ok(Err(_)) => Err(failed("the task reading the CA failed")),
            Ok(Ok(r)) => r.map(Arc::new),
        }
    }
}

/// What one sidecar was last given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issued {
    /// The identity its certificate names.
    pub(crate) name: ServiceName,
    /// When it was delivered.
    pub(crate) at: Instant,
    /// When to issue the next one: half its lifetime after it was issued.
    pub(crate) renew_at: Instant,
    /// Its certificate's notAfter (for the logs and the expiry gauge).
    pub(crate) expires: SystemTime,
    /// Digest of the CA that signed it: a new signing CA reissues every certificate.
    pub(crate) ca: u64,
    /// Digest of the trust bundle delivered beside it.
    pub(crate) trust: u64,
}

/// What a sidecar needs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Nothing: its certificate is fresh and its bundle current.
    Nothing,
    /// A new certificate (and the bundle with it): none delivered yet (a new sidecar, or one a
    /// restarted spawner finds), half its lifetime is over, or the signing CA changed.
    Issue,
    /// Only the trust bundle changed (a root added or removed for a roll-over).
    Trust,
}

/// What the sidecar whose last delivery was `last` needs at `now`, for identity `name`, with the
/// signing CA `ca` and the trust bundle `trust` (digests).
pub(crate) fn due(
    last: Option<&Issued>,
    name: &ServiceName,
    now: Instant,
    ca: u64,
    trust: u64,
) -> Due {
    match last {
        None => Due::Issue,
        Some(l) if &l.name != name || l.ca != ca || now >= l.renew_at => Due::Issue,
        Some(l) if l.trust != trust => Due::Trust,
        Some(_) => Due::Nothing,
    }
}

/// When a certificate issued at `at` for `ttl` is renewed: at half its lifetime, so a spawner
/// that is down for less than that never lets one expire.
pub(crate) fn renew_at(at: Instant, ttl: Duration) -> Instant {
    at + ttl / 2
}

/// When the loop must wake for the renewals `renew_at` (of the sidecars it keeps a record of):
/// at the soonest; at once when that moment has passed (it fell due while the last pass ran),
/// unless a delivery failed, then at `retry` (a failed renewal keeps its past moment, and must
/// not make the loop spin).
pub(crate) fn next_wake(
    renew_at: impl IntoIterator<Item = Instant>,
    retry: Option<Instant>,
    now: Instant,
) -> Option<Instant> {
    let soonest = renew_at.into_iter().min()?;
    Some(if soonest > now {
        soonest
    } else {
        retry.unwrap_or(now)
    })
}

/// Whether to keep the record of a sidecar after a pass: one the pass looked at (running, in
/// its target's namespace), or one delivered since the turn began (created or adopted by this
/// turn, after the observation). Records of sidecars that ended, were removed or wait to be
/// replaced go: their renewal moments must not wake the loop.
pub(crate) fn keep(record: &Issued, looked_at: bool, turn_began: Instant) -> bool {
    looked_at || record.at >= turn_began
}

/// A stable digest of file contents, to notice a changed CA or bundle.
pub(crate) fn digest(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn issued(name: &str, now: Instant) -> Issued {
        Issued {
            name: name.parse().unwrap(),
            at: now,
            renew_at: renew_at(now, Duration::from_secs(10)),
            expires: SystemTime::UNIX_EPOCH,
            ca: 1,
            trust: 2,
        }
    }

    #[test]
    fn a_certificate_is_issued_first_then_at_half_its_life_or_for_a_new_ca() {
        let t0 = Instant::now();
        let b: ServiceName = "b".parse().unwrap();
        assert_eq!(due(None, &b, t0, 1, 2), Due::Issue, "first look");
        let last = issued("b", t0);
        let s = Duration::from_secs;
        assert_eq!(due(Some(&last), &b, t0 + s(4), 1, 2), Due::Nothing);
        assert_eq!(due(Some(&last), &b, t0 + s(5), 1, 2), Due::Issue, "half");
        assert_eq!(due(Some(&last), &b, t0 + s(1), 9, 2), Due::Issue, "new CA");
        assert_eq!(
            due(Some(&last), &"c".parse().unwrap(), t0, 1, 2),
            Due::Issue,
            "another name"
        );
        assert_eq!(
            due(Some(&last), &b, t0 + s(1), 1, 3),
            Due::Trust,
            "roll-over"
        );
        // A renewal that is due carries the new bundle too.
        assert_eq!(due(Some(&last), &b, t0 + s(6), 1, 3), Due::Issue);
    }

    #[test]
    fn the_loop_wakes_for_the_soonest_renewal_at_once_when_past_and_at_the_retry_after_a_failure() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        assert_eq!(next_wake([], None, t0), None, "nothing to renew");
        assert_eq!(next_wake([t0 + s(5), t0 + s(3)], None, t0), Some(t0 + s(3)));
        // Fell due while the last pass ran (the bug a lucky interleaving hid): now, not never.
        assert_eq!(next_wake([t0 + s(3)], None, t0 + s(4)), Some(t0 + s(4)));
        // A failed delivery keeps its past moment: the retry, not a spin.
        assert_eq!(
            next_wake([t0 + s(3)], Some(t0 + s(9)), t0 + s(4)),
            Some(t0 + s(9))
        );
    }

    #[test]
    fn records_are_kept_for_sidecars_looked_at_or_delivered_this_turn() {
        let t0 = Instant::now();
        let turn = t0 + Duration::from_secs(10);
        let old = issued("b", t0);
        let fresh = issued("b", turn + Duration::from_millis(5));
        assert!(keep(&old, true, turn));
        assert!(!keep(&old, false, turn), "ended or removed");
        assert!(keep(&fresh, false, turn), "created by this turn");
    }

    #[test]
    fn digests_follow_content() {
        assert_eq!(digest(b"a"), digest(b"a"));
        assert_ne!(digest(b"a"), digest(b"b"));
    }
}
