//! Waiting until a record shows ([`super::Dns::wait_visible`]): every server of the location is
//! asked for the TXT records at the fqdn, all at once each round, until each has every value,
//! or the propagation timeout passes. The CA validates from its own resolvers a moment later;
//! asking before the authoritative servers all have the record would fail the challenge, which
//! counts against the CA's limits.
//!
//! The configured resolver is asked with recursion desired (it is one); name servers found by
//! NS records without (they are authoritative, and may refuse recursion). Only TXT records
//! owned by the fqdn count: a CNAME in the answer is not the record (the fqdn is already past
//! any CNAME).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::debug;

use super::query;
use super::wire::{self, RData, RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_TXT};
use super::{Dns, DnsError, Location, Step};

/// The first pause between rounds: a local server has the record at once.
const FIRST_INTERVAL: Duration = Duration::from_millis(250);
/// The longest pause between rounds: secondaries take seconds to minutes, and each round is a
/// query to every server.
const MAX_INTERVAL: Duration = Duration::from_secs(1);
/// Values shown per server in the error: the challenge values are 43 bytes each.
const MAX_SHOWN: usize = 4;

/// What one server last answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Not asked yet, or its answer did not come before the deadline.
    Nothing,
    /// The TXT values at the name (none: NXDOMAIN or no TXT records).
    Values(BTreeSet<String>),
    /// An error code or no answer.
    Failed(String),
}

/// [`super::Dns::wait_visible`].
pub(crate) async fn wait(dns: &Dns, at: &Location, values: &[String]) -> Result<(), DnsError> {
    if at.servers.is_empty() {
        let message = format!("{}: no server to check the TXT record on", at.fqdn);
        return Err(DnsError {
            step: Step::NotVisible,
            cause: message.clone(),
            message,
        });
    }
    let deadline = Instant::now() + dns.propagation_timeout;
    let mut pending: Vec<(SocketAddr, Seen)> =
        at.servers.iter().map(|&s| (s, Seen::Nothing)).collect();
    let mut interval = FIRST_INTERVAL;
    loop {
        let asks = pending.iter().map(|&(server, _)| {
            let rd = dns.resolver == Some(server);
            async move {
                match timeout_at(deadline, query::query(server, &at.fqdn, TYPE_TXT, rd)).await {
                    Err(_) => Seen::Nothing,
                    Ok(Err(e)) => Seen::Failed(e.to_string()),
                    Ok(Ok(m)) if matches!(m.header.rcode, RCODE_NOERROR | RCODE_NXDOMAIN) => {
                        Seen::Values(txt_values(&m, &at.fqdn))
                    }
                    Ok(Ok(m)) => Seen::Failed(wire::rcode_name(m.header.rcode)),
                }
            }
        });
        let seen = join_all(asks).await;
        for ((_, last), now) in pending.iter_mut().zip(seen) {
            if now != Seen::Nothing {
                *last = now;
            }
        }
        pending.retain(|(_, seen)| !shows_all(seen, values));
        if pending.is_empty() {
            debug!(fqdn = %at.fqdn, "dns-01 record visible everywhere");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(not_visible(dns.propagation_timeout, at, &pending));
        }
        sleep_until((Instant::now() + interval).min(deadline)).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

/// The TXT values owned by `fqdn` in the answer.
fn txt_values(answer: &wire::Message, fqdn: &str) -> BTreeSet<String> {
    answer
        .answers
        .iter()
        .filter(|r| r.name == fqdn)
        .filter_map(|r| match &r.data {
            RData::Txt(text) => Some(String::from_utf8_lossy(text).into_owned()),
            _ => None,
        })
        .collect()
}

fn shows_all(seen: &Seen, values: &[String]) -> bool {
    matches!(seen, Seen::Values(have) if values.iter().all(|v| have.contains(v)))
}

/// The error naming each server still without the record and what it answered; the cause
/// leaves the answers out (values change from one order to the next).
fn not_visible(limit: Duration, at: &Location, pending: &[(SocketAddr, Seen)]) -> DnsError {
    let head = format!(
        "{}: TXT not visible after {} on",
        at.fqdn,
        humantime::format_duration(limit)
    );
    let servers: Vec<String> = pending.iter().map(|(s, _)| s.to_string()).collect();
    let answered: Vec<String> = pending
        .iter()
        .map(|(server, seen)| {
            let what = match seen {
                Seen::Nothing => "nothing yet".to_string(),
                Seen::Failed(e) => e.clone(),
                Seen::Values(v) if v.is_empty() => "none".to_string(),
                Seen::Values(v) => {
                    let mut shown: Vec<String> =
                        v.iter().take(MAX_SHOWN).map(|s| format!("{s:?}")).collect();
                    if v.len() > MAX_SHOWN {
                        shown.push(format!("{} more", v.len() - MAX_SHOWN));
                    }
                    shown.join(", ")
                }
            };
            format!("{server} (answered: {what})")
        })
        .collect();
    DnsError {
        step: Step::NotVisible,
        message: format!("{head} {}", answered.join(", ")),
        cause: format!("{head} {}", servers.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> Location {
        Location {
            fqdn: "_acme-challenge.example.test".into(),
            zone: "example.test".into(),
            via_cname: false,
            servers: vec!["127.0.0.1:5300".parse().expect("addr")],
        }
    }

    #[test]
    fn every_value_must_show() {
        let values = ["a".to_string(), "b".to_string()];
        let have = |v: &[&str]| Seen::Values(v.iter().map(|s| s.to_string()).collect());
        assert!(shows_all(&have(&["a", "b", "c"]), &values));
        assert!(!shows_all(&have(&["a"]), &values));
        assert!(!shows_all(&Seen::Failed("SERVFAIL".into()), &values));
        assert!(!shows_all(&Seen::Nothing, &values));
    }

    #[test]
    fn the_error_names_the_server_and_its_answer_and_the_cause_is_stable() {
        let at = location();
        let server = at.servers[0];
        let e = not_visible(
            Duration::from_secs(3),
            &at,
            &[(server, Seen::Values(BTreeSet::new()))],
        );
        assert_eq!(e.step, Step::NotVisible);
        assert_eq!(
            e.message,
            "_acme-challenge.example.test: TXT not visible after 3s on 127.0.0.1:5300 (answered: none)"
        );
        assert_eq!(
            e.cause,
            "_acme-challenge.example.test: TXT not visible after 3s on 127.0.0.1:5300"
        );
        let other = not_visible(
            Duration::from_secs(3),
            &at,
            &[(server, Seen::Values(BTreeSet::from(["old".to_string()])))],
        );
        assert!(
            other.message.ends_with("(answered: \"old\")"),
            "{}",
            other.message
        );
        assert_eq!(other.cause, e.cause);
    }
}
