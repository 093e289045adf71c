//! RFC 2136 dynamic updates: one TXT value added to or deleted from the challenge name, in one
//! UPDATE signed with the TSIG key, sent over TCP (an UPDATE is not retried blindly over UDP,
//! and a signed answer never needs the TC fallback), under [`UPDATE_TIMEOUT`].
//!
//! Adding leaves the name's other values in place (a certificate for `example.com` and
//! `*.example.com` needs two values at `_acme-challenge.example.com` at once); deleting
//! removes exactly the value given (class NONE), and deleting one that is not there succeeds.
//! A refusal names the response code and, when the server put a TSIG error in its answer, what
//! that means for the key; its cause repeats from one failure to the next (no ID, no value,
//! no time).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::debug;

use super::query;
use super::tsig::{self, Unverified};
use super::wire::{self, Change, RCODE_NOERROR};
use super::{DnsError, Location, Step, TsigKey};

/// The TTL of a challenge record: short, so that a resolver does not keep a value for long
/// after a cleanup or serve an old one to the next validation.
pub(crate) const RECORD_TTL: u32 = 60;
/// The whole of an update: connect, send, the server applying it, the answer. Servers apply
/// an update in milliseconds; a primary under load or across the world in a second or two.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends the UPDATE changing `value` at `at.fqdn` in `at.zone` to `server`.
pub(crate) async fn apply(
    server: SocketAddr,
    key: &TsigKey,
    at: &Location,
    value: &str,
    change: Change,
) -> Result<(), DnsError> {
    let what = format!("update of {} in zone {} at {server}", at.fqdn, at.zone);
    let fail = |detail: String| {
        let message = format!("{what} {detail}");
        DnsError {
            step: Step::Update,
            cause: message.clone(),
            message,
        }
    };
    let request = wire::update(
        query::random_id(),
        &at.zone,
        &at.fqdn,
        value.as_bytes(),
        change,
    )
    .map_err(|e| fail(format!("cannot be written: {e}")))?;
    let signed = tsig::sign(&request, key, unix_now())
        .map_err(|e| fail(format!("cannot be signed: {e}")))?;
    let reply = query::tcp(server, &signed.message, UPDATE_TIMEOUT)
        .await
        .map_err(|e| fail(format!("failed: {e}")))?;
    let answer = &reply.message;
    if answer.header.rcode != RCODE_NOERROR {
        return Err(fail(format!(
            "refused: {}{}",
            wire::rcode_name(answer.header.rcode),
            refusal_detail(answer, key)
        )));
    }
    tsig::verify(&reply.bytes, answer, &signed.mac, key, unix_now())
        .map_err(|why| fail(format!("not confirmed: {}", why.describe(key))))?;
    debug!(
        fqdn = %at.fqdn,
        zone = %at.zone,
        %server,
        change = if matches!(change, Change::Delete) { "delete" } else { "add" },
        "dns-01 update applied"
    );
    Ok(())
}

/// Why a refusal happened, in words: the TSIG error when the answer carries one, else what the
/// code usually means for an update.
fn refusal_detail(answer: &wire::Message, key: &TsigKey) -> String {
    if let Some(error) = answer.tsig().map(|t| t.error).filter(|&e| e != 0) {
        return format!(" ({})", Unverified::Error(error).describe(key));
    }
    match answer.header.rcode {
        5 => format!(
            " (the zone does not take updates signed with key \"{}\")",
            key.name
        ),
        9 => " (the server is not authoritative for the zone)".into(),
        10 => " (the name is not in the zone)".into(),
        _ => String::new(),
    }
}

/// Seconds since the epoch, for the TSIG's time signed.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::dns::wire::{Builder, Header, Message, Section, CLASS_ANY, TYPE_TSIG};
    use crate::acme::dns::TsigAlgorithm;

    fn key() -> TsigKey {
        TsigKey {
            name: "k".into(),
            algorithm: TsigAlgorithm::HmacSha256,
            secret: vec![1; 32],
        }
    }

    /// A refusal as BIND writes it for a bad signature: NOTAUTH, an unsigned TSIG with the
    /// error.
    fn refusal(rcode: u8, tsig_error: Option<u16>) -> Message {
        let mut m = Builder::new(Header {
            qr: true,
            opcode: wire::OPCODE_UPDATE,
            rcode,
            ..Header::default()
        });
        if let Some(error) = tsig_error {
            let mut data = Vec::new();
            wire::put_name(&mut data, "hmac-sha256").expect("encodes");
            data.extend_from_slice(&[0, 0, 0, 0, 0, 1, 1, 44, 0, 0, 0, 0]);
            data.extend_from_slice(&error.to_be_bytes());
            data.extend_from_slice(&[0, 0]);
            m.record(Section::Additional, "k", (TYPE_TSIG, CLASS_ANY, 0), &data)
                .expect("encodes");
        }
        Message::parse(&m.finish()).expect("decodes")
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(
            refusal_detail(&refusal(9, Some(16)), &key()),
            " (TSIG BADSIG: the server does not accept key \"k\"; its secret differs)"
        );
        assert!(refusal_detail(&refusal(9, Some(17)), &key()).contains("BADKEY"));
        assert_eq!(
            refusal_detail(&refusal(5, None), &key()),
            " (the zone does not take updates signed with key \"k\")"
        );
        assert_eq!(refusal_detail(&refusal(2, None), &key()), "");
    }
}
