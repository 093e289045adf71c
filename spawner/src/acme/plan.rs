//! When to order a certificate: a pure decision per name set, from what the store holds, what
//! was tried before and the time. The I/O (the ACME protocol, the store, the engine) lives
//! elsewhere and only carries out [`Decision`]s.
//!
//! The rules:
//! - A certificate that covers exactly the wanted names and is not due is kept: due at two
//!   thirds of its lifetime, or earlier when the CA's renewal information (ARI) says so.
//! - An order is placed only when none is in flight for the same names (replicas share one).
//! - After a failure the next attempt waits a capped exponential backoff; a permanent error (the
//!   CA refuses the name) is not retried until the wanted names change or an operator clears it.
//! - Whatever happens, at most [`AcmePolicy::max_orders_per_hour`] orders per name set in any
//!   hour: the CA's own limits are weekly, and a loop must never burn them.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use crate::config::AcmePolicy;

/// The names one certificate is for (sorted, lowercase, each once): targets wanting the same set
/// share one certificate and one order.
pub type NameSet = BTreeSet<String>;

/// What the store's certificate for a name set says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub names: NameSet,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// The start of the renewal window the CA suggested (ARI), when it offered one.
    pub(crate) suggested_renewal: Option<SystemTime>,
}

/// How an earlier attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Worth retrying: the CA or the challenge was unreachable, a timeout, a rate limit.
    Transient,
    /// Not worth retrying by itself: the CA refused the names or the account.
    Permanent,
}

/// What was tried for a name set (persisted in the store, so a restart keeps it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct History {
    /// When each recent order was placed (older than an hour may be forgotten).
    pub(crate) orders: Vec<SystemTime>,
    /// Failures in a row since the last success, and how the last one ended.
    pub(crate) failures: u32,
    pub(crate) last_failure: Option<(SystemTime, Failure)>,
    /// An order for this name set is in flight now.
    pub(crate) in_flight: bool,
}

/// What to do for a name set now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The held certificate serves; look again at `renew_at`.
    Keep { renew_at: SystemTime },
    /// Place an order now.
    Order { reason: &'static str },
    /// Nothing until `until` (an order in flight, a backoff, the hourly cap).
    Wait {
        until: Option<SystemTime>,
        reason: &'static str,
    },
    /// A permanent error: no order until the names change or the error is cleared.
    Stop,
}

/// When a certificate is due for renewal under `policy`.
pub(crate) fn renew_at(held: &Held, policy: &AcmePolicy) -> SystemTime {
    let lifetime = held
        .not_after
        .duration_since(held.not_before)
        .unwrap_or_default();
    let (num, den) = policy.renew_after;
    let due = held.not_before + lifetime.mul_f64(f64::from(num) / f64::from(den.max(1)));
    match held.suggested_renewal {
        Some(ari) if ari < due => ari,
        _ => due,
    }
}

/// The decision for one name set at `now`.
pub(crate) fn decide(
    now: SystemTime,
    wanted: &NameSet,
    held: Option<&Held>,
    history: &History,
    policy: &AcmePolicy,
) -> Decision {
    if let Some(held) = held.filter(|h| &h.names == wanted && now < h.not_after) {
        let at = renew_at(held, policy);
        if now < at {
            return Decision::Keep { renew_at: at };
        }
    }
    if history.in_flight {
        return Decision::Wait {
            until: None,
            reason: "an order for these names is in flight",
        };
    }
    if let Some((at, kind)) = history.last_failure {
        if kind == Failure::Permanent {
            return Decision::Stop;
        }
        let retry_at = at + policy.retry.delay(history.failures);
        if now < retry_at {
            return Decision::Wait {
                until: Some(retry_at),
                reason: "backing off after a failed order",
            };
        }
    }
    let hour = Duration::from_secs(3600);
    let mut recent: Vec<SystemTime> = history
        .orders
        .iter()
        .copied()
        .filter(|t| now.duration_since(*t).map_or(true, |age| age < hour))
        .collect();
    if policy.max_orders_per_hour == 0 {
        return Decision::Wait {
            until: None,
            reason: "ordering is off (no orders allowed per hour)",
        };
    }
    if recent.len() >= policy.max_orders_per_hour {
        recent.sort();
        let oldest = recent[recent.len() - policy.max_orders_per_hour];
        return Decision::Wait {
            until: Some(oldest + hour),
            reason: "hourly order limit for these names reached",
        };
    }
    let reason = match held {
        None => "no certificate for these names",
        Some(h) if &h.names != wanted => "the certificate names other names",
        Some(h) if now >= h.not_after => "the certificate has expired",
        Some(_) => "the certificate is due for renewal",
    };
    Decision::Order { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> NameSet {
        list.iter().map(|n| n.to_string()).collect()
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    const DAY: u64 = 86_400;

    fn held(list: &[&str], from: u64, days: u64) -> Held {
        Held {
            names: names(list),
            not_before: t(from),
            not_after: t(from + days * DAY),
            suggested_renewal: None,
        }
    }

    #[test]
    fn a_valid_certificate_is_kept_until_two_thirds_of_its_life() {
        let p = AcmePolicy::default();
        let want = names(&["a.example"]);
        let h = held(&["a.example"], 0, 90);
        assert_eq!(
            decide(t(DAY), &want, Some(&h), &History::default(), &p),
            Decision::Keep {
                renew_at: t(60 * DAY)
            }
        );
        assert_eq!(
            decide(t(60 * DAY), &want, Some(&h), &History::default(), &p),
            Decision::Order {
                reason: "the certificate is due for renewal"
            }
        );
        assert_eq!(
            decide(t(91 * DAY), &want, Some(&h), &History::default(), &p),
            Decision::Order {
                reason: "the certificate has expired"
            }
        );
    }

    #[test]
    fn the_cas_renewal_window_only_brings_renewal_forward() {
        let p = AcmePolicy::default();
        let mut h = held(&["a.example"], 0, 90);
        h.suggested_renewal = Some(t(10 * DAY));
        assert_eq!(renew_at(&h, &p), t(10 * DAY));
        h.suggested_renewal = Some(t(80 * DAY));
        assert_eq!(renew_at(&h, &p), t(60 * DAY));
    }

    #[test]
    fn other_names_need_a_new_certificate() {
        let p = AcmePolicy::default();
        let h = held(&["a.example"], 0, 90);
        assert_eq!(
            decide(
                t(DAY),
                &names(&["a.example", "b.example"]),
                Some(&h),
                &History::default(),
                &p
            ),
            Decision::Order {
                reason: "the certificate names other names"
            }
        );
        assert_eq!(
            decide(t(0), &names(&["a.example"]), None, &History::default(), &p),
            Decision::Order {
                reason: "no certificate for these names"
            }
        );
    }

    #[test]
    fn one_order_at_a_time_per_name_set() {
        let history = History {
            in_flight: true,
            ..History::default()
        };
        assert!(matches!(
            decide(t(0), &names(&["a"]), None, &history, &AcmePolicy::default()),
            Decision::Wait { until: None, .. }
        ));
    }

    #[test]
    fn failures_back_off_and_permanent_ones_stop() {
        let p = AcmePolicy::default();
        let want = names(&["a"]);
        let history = History {
            orders: vec![t(0)],
            failures: 3,
            last_failure: Some((t(0), Failure::Transient)),
            in_flight: false,
        };
        // 60 s doubled twice: 240 s.
        assert_eq!(
            decide(t(100), &want, None, &history, &p),
            Decision::Wait {
                until: Some(t(240)),
                reason: "backing off after a failed order"
            }
        );
        assert!(matches!(
            decide(t(240), &want, None, &history, &p),
            Decision::Order { .. }
        ));
        let permanent = History {
            last_failure: Some((t(0), Failure::Permanent)),
            ..history
        };
        assert_eq!(
            decide(t(999 * DAY), &want, None, &permanent, &p),
            Decision::Stop
        );
    }

    #[test]
    fn never_more_than_the_hourly_cap_whatever_happens() {
        let p = AcmePolicy::default();
        let want = names(&["a"]);
        // Three orders in the last hour, none failed (e.g. each certificate lost right away).
        let history = History {
            orders: vec![t(0), t(600), t(1200)],
            ..History::default()
        };
        assert_eq!(
            decide(t(1800), &want, None, &history, &p),
            Decision::Wait {
                until: Some(t(3600)),
                reason: "hourly order limit for these names reached"
            }
        );
        assert!(matches!(
            decide(t(3600), &want, None, &history, &p),
            Decision::Order { .. }
        ));
        let off = AcmePolicy {
            max_orders_per_hour: 0,
            ..p
        };
        assert!(matches!(
            decide(t(0), &want, None, &History::default(), &off),
            Decision::Wait { until: None, .. }
        ));
        // Any sequence of decisions at any times places at most 3 orders in any hour.
        let mut placed: Vec<SystemTime> = Vec::new();
        for step in 0..2000u64 {
            let now = t(step * 7);
            let h = History {
                orders: placed.clone(),
                ..History::default()
            };
            if let Decision::Order { .. } = decide(now, &want, None, &h, &p) {
                placed.push(now);
            }
        }
        for (i, start) in placed.iter().enumerate() {
            let in_hour = placed[i..]
                .iter()
                .filter(|t| t.duration_since(*start).expect("ordered") < Duration::from_secs(3600))
                .count();
            assert!(in_hour <= 3, "{in_hour} orders within an hour of {start:?}");
        }
    }
}
