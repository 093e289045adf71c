//! TSIG (RFC 8945): signing an UPDATE with the key's HMAC and checking the server's signed
//! answer, and the words for the TSIG error a refusing server puts in its answer.
//!
//! The MAC of a request covers the message as sent without its TSIG record, then the TSIG
//! variables (section 4.3.3): the key's name and the algorithm's in canonical form (lowercase,
//! uncompressed), class ANY, TTL 0, the time signed (48 bits), the fudge, the error and the
//! other data. The MAC of the answer (section 4.3.1) covers the request's MAC (with its 2-byte
//! length) first, then the answer without its TSIG record (its additional count one less and
//! its original ID in place), then its own TSIG variables.

use aws_lc_rs::hmac;

use super::wire::{self, Message, RData, WireError, CLASS_ANY, TYPE_TSIG};
use super::{TsigAlgorithm, TsigKey};

/// How far apart the two clocks may be, in seconds: RFC 8945 section 10's recommendation.
pub(crate) const FUDGE: u16 = 300;

/// The TSIG error codes (RFC 8945 section 3).
const BADSIG: u16 = 16;
const BADKEY: u16 = 17;
const BADTIME: u16 = 18;
const BADTRUNC: u16 = 22;

impl TsigAlgorithm {
    /// The algorithm's name in key files and in TSIG records (`hmac-sha256`).
    pub fn name(self) -> &'static str {
        match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha384 => "hmac-sha384",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        }
    }

    /// The algorithm named `name`, in any case, with or without a trailing dot.
    pub(crate) fn from_name(name: &str) -> Option<TsigAlgorithm> {
        let name = name.strip_suffix('.').unwrap_or(name);
        [
            TsigAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512,
        ]
        .into_iter()
        .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            TsigAlgorithm::HmacSha256 => hmac::HMAC_SHA256,
            TsigAlgorithm::HmacSha384 => hmac::HMAC_SHA384,
            TsigAlgorithm::HmacSha512 => hmac::HMAC_SHA512,
        }
    }
}

/// A signed request and its MAC, which the answer's MAC covers.
#[derive(Debug)]
pub(crate) struct Signed {
    pub(crate) message: Vec<u8>,
    pub(crate) mac: Vec<u8>,
}

/// The TSIG variables (RFC 8945 section 4.3.3).
fn variables(
    key: &TsigKey,
    time_signed: u64,
    fudge: u16,
    error: u16,
    other: &[u8],
) -> Result<Vec<u8>, WireError> {
    let mut v = Vec::with_capacity(64 + other.len());
    wire::put_name(&mut v, &key.name.to_ascii_lowercase())?;
    v.extend_from_slice(&CLASS_ANY.to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    wire::put_name(&mut v, key.algorithm.name())?;
    put_time(&mut v, time_signed);
    v.extend_from_slice(&fudge.to_be_bytes());
    v.extend_from_slice(&error.to_be_bytes());
    v.extend_from_slice(&(other.len() as u16).to_be_bytes());
    v.extend_from_slice(other);
    Ok(v)
}

/// 48 bits of seconds, high 16 first.
fn put_time(buf: &mut Vec<u8>, time: u64) {
    buf.extend_from_slice(&((time >> 32) as u16).to_be_bytes());
    buf.extend_from_slice(&(time as u32).to_be_bytes());
}

/// Signs `message` (a whole message without TSIG) at `now` (seconds since the epoch): the
/// message with the TSIG record appended and its additional count one more.
pub(crate) fn sign(message: &[u8], key: &TsigKey, now: u64) -> Result<Signed, WireError> {
    if message.len() < wire::HEADER_LEN {
        return Err(WireError("a message shorter than its header".into()));
    }
    let mut digest = message.to_vec();
    digest.extend_from_slice(&variables(key, now, FUDGE, 0, &[])?);
    let hmac_key = hmac::Key::new(key.algorithm.hmac(), &key.secret);
    let mac = hmac::sign(&hmac_key, &digest).as_ref().to_vec();

    let mut data = Vec::with_capacity(32 + mac.len());
    wire::put_name(&mut data, key.algorithm.name())?;
    put_time(&mut data, now);
    data.extend_from_slice(&FUDGE.to_be_bytes());
    data.extend_from_slice(&(mac.len() as u16).to_be_bytes());
    data.extend_from_slice(&mac);
    // The original ID: the message's own.
    data.extend_from_slice(&message[..2]);
    // Error 0, no other data.
    data.extend_from_slice(&[0, 0, 0, 0]);

    let mut signed = message.to_vec();
    wire::put_name(&mut signed, &key.name.to_ascii_lowercase())?;
    signed.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    signed.extend_from_slice(&CLASS_ANY.to_be_bytes());
    signed.extend_from_slice(&0u32.to_be_bytes());
    signed.extend_from_slice(&(data.len() as u16).to_be_bytes());
    signed.extend_from_slice(&data);
    bump_arcount(&mut signed, 1)?;
    Ok(Signed {
        message: signed,
        mac,
    })
}

/// Adds `delta` (1 or -1) to the header's additional count.
fn bump_arcount(message: &mut [u8], delta: i32) -> Result<(), WireError> {
    let count = i32::from(u16::from_be_bytes([message[10], message[11]])) + delta;
    let count =
        u16::try_from(count).map_err(|_| WireError("additional count out of range".into()))?;
    message[10..12].copy_from_slice(&count.to_be_bytes());
    Ok(())
}

/// Why a signed answer is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unverified {
    /// No TSIG record.
    Unsigned,
    /// Signed with another key or algorithm than the request.
    OtherKey,
    /// A TSIG error from the server (its answer is then not signed).
    Error(u16),
    /// The MAC is not the key's over the answer (or is truncated).
    BadMac,
    /// Signed at a time more than the fudge away from this host's clock.
    Time,
}

impl Unverified {
    /// In words, stable from one failure to the next.
    pub(crate) fn describe(&self, key: &TsigKey) -> String {
        match self {
            Unverified::Unsigned => "the answer is not signed".into(),
            Unverified::OtherKey => format!("the answer is not signed with key \"{}\"", key.name),
            Unverified::Error(error) => error_words(*error, key),
            Unverified::BadMac => format!("the answer's signature is not key \"{}\"'s", key.name),
            Unverified::Time => format!(
                "the answer was signed at a time more than {FUDGE} s from this host's clock"
            ),
        }
    }
}

/// Checks the TSIG of `answer` (its bytes `bytes`) to a request whose MAC was `request_mac`.
pub(crate) fn verify(
    bytes: &[u8],
    answer: &Message,
    request_mac: &[u8],
    key: &TsigKey,
    now: u64,
) -> Result<(), Unverified> {
    let (Some(offset), Some(record)) = (answer.tsig_offset, answer.additional.last()) else {
        return Err(Unverified::Unsigned);
    };
    let RData::Tsig(tsig) = &record.data else {
        return Err(Unverified::Unsigned);
    };
    if tsig.error != 0 {
        return Err(Unverified::Error(tsig.error));
    }
    if !record.name.eq_ignore_ascii_case(&key.name)
        || TsigAlgorithm::from_name(&tsig.algorithm) != Some(key.algorithm)
    {
        return Err(Unverified::OtherKey);
    }
    if tsig.mac.len() != key.algorithm.hmac().digest_algorithm().output_len() {
        return Err(Unverified::BadMac);
    }
    let mut digest = Vec::with_capacity(bytes.len() + request_mac.len() + 64);
    digest.extend_from_slice(&(request_mac.len() as u16).to_be_bytes());
    digest.extend_from_slice(request_mac);
    let start = digest.len();
    digest.extend_from_slice(&bytes[..offset]);
    digest[start..start + 2].copy_from_slice(&tsig.original_id.to_be_bytes());
    bump_arcount(&mut digest[start..], -1).map_err(|_| Unverified::Unsigned)?;
    let vars = variables(key, tsig.time_signed, tsig.fudge, tsig.error, &tsig.other)
        .map_err(|_| Unverified::OtherKey)?;
    digest.extend_from_slice(&vars);
    let hmac_key = hmac::Key::new(key.algorithm.hmac(), &key.secret);
    hmac::verify(&hmac_key, &digest, &tsig.mac).map_err(|_| Unverified::BadMac)?;
    if now.abs_diff(tsig.time_signed) > u64::from(tsig.fudge) {
        return Err(Unverified::Time);
    }
    Ok(())
}

/// A TSIG error in words, naming the key: what a refusing server's answer says.
pub(crate) fn error_words(error: u16, key: &TsigKey) -> String {
    let name = &key.name;
    match error {
        BADSIG => {
            format!("TSIG BADSIG: the server does not accept key \"{name}\"; its secret differs")
        }
        BADKEY => format!(
            "TSIG BADKEY: the server does not know key \"{name}\" with algorithm {}",
            key.algorithm.name()
        ),
        BADTIME => format!(
            "TSIG BADTIME: this host's clock and the server's differ by more than {FUDGE} s"
        ),
        BADTRUNC => "TSIG BADTRUNC: the server refuses a truncated MAC".into(),
        other => format!("TSIG error {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::dns::wire::{update, Builder, Change, Header, Section};

    fn key(algorithm: TsigAlgorithm) -> TsigKey {
        TsigKey {
            name: "Tls-Sidecar-Test".into(),
            algorithm,
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        }
    }

    fn request() -> Vec<u8> {
        update(
            0xabcd,
            "example.test",
            "_acme-challenge.example.test",
            b"value",
            Change::Add { ttl: 60 },
        )
        .expect("encodes")
    }

    /// The answer a server signs: the request's header flipped to a response, its zone
    /// section, then the TSIG over (request MAC, answer, variables).
    fn signed_answer(key: &TsigKey, request_mac: &[u8], time: u64, id: u16) -> Vec<u8> {
        let mut answer = Builder::new(Header {
            id,
            qr: true,
            opcode: wire::OPCODE_UPDATE,
            ..Header::default()
        });
        answer
            .question("example.test", wire::TYPE_SOA, wire::CLASS_IN)
            .expect("encodes");
        let answer = answer.finish();
        let mut digest = (request_mac.len() as u16).to_be_bytes().to_vec();
        digest.extend_from_slice(request_mac);
        digest.extend_from_slice(&answer);
        digest.extend_from_slice(&variables(key, time, FUDGE, 0, &[]).expect("encodes"));
        let mac = hmac::sign(&hmac::Key::new(key.algorithm.hmac(), &key.secret), &digest);
        let mut data = Vec::new();
        wire::put_name(&mut data, key.algorithm.name()).expect("encodes");
        put_time(&mut data, time);
        data.extend_from_slice(&FUDGE.to_be_bytes());
        data.extend_from_slice(&(mac.as_ref().len() as u16).to_be_bytes());
        data.extend_from_slice(mac.as_ref());
        data.extend_from_slice(&id.to_be_bytes());
        data.extend_from_slice(&[0, 0, 0, 0]);
        let mut with_tsig = Builder::new(Header {
            id,
            qr: true,
            opcode: wire::OPCODE_UPDATE,
            ..Header::default()
        });
        with_tsig
            .question("example.test", wire::TYPE_SOA, wire::CLASS_IN)
            .expect("encodes");
        with_tsig
            .record(
                Section::Additional,
                &key.name,
                (TYPE_TSIG, CLASS_ANY, 0),
                &data,
            )
            .expect("encodes");
        with_tsig.finish()
    }

    #[test]
    fn a_signed_request_carries_a_verifiable_tsig() {
        for algorithm in [
            TsigAlgorithm::HmacSha256,
            TsigAlgorithm::HmacSha384,
            TsigAlgorithm::HmacSha512,
        ] {
            let key = key(algorithm);
            let plain = request();
            let signed = sign(&plain, &key, 1_700_000_000).expect("signs");
            let m = Message::parse(&signed.message).expect("decodes");
            assert_eq!(m.additional.len(), 1);
            assert_eq!(m.additional[0].name, "tls-sidecar-test");
            assert_eq!(m.additional[0].class, CLASS_ANY);
            let RData::Tsig(tsig) = &m.additional[0].data else {
                panic!("no TSIG: {m:?}")
            };
            assert_eq!(tsig.algorithm, algorithm.name());
            assert_eq!(tsig.time_signed, 1_700_000_000);
            assert_eq!(tsig.fudge, FUDGE);
            assert_eq!(tsig.original_id, 0xabcd);
            assert_eq!(tsig.mac, signed.mac);
            assert_eq!(
                tsig.mac.len(),
                algorithm.hmac().digest_algorithm().output_len()
            );
            // The MAC, recomputed as a server does: the message without its TSIG, the
            // variables.
            let mut digest = signed.message[..m.tsig_offset.expect("tsig")].to_vec();
            digest[11] -= 1;
            assert_eq!(digest, plain);
            digest.extend_from_slice(
                &variables(&key, tsig.time_signed, tsig.fudge, 0, &[]).expect("encodes"),
            );
            let hmac_key = hmac::Key::new(algorithm.hmac(), &key.secret);
            hmac::verify(&hmac_key, &digest, &tsig.mac).expect("the MAC verifies");
        }
    }

    #[test]
    fn the_request_mac_is_known_vector() {
        // HMAC-SHA256 over the digest, computed independently of `sign`'s layout: the
        // variables' bytes spelled out.
        let key = key(TsigAlgorithm::HmacSha256);
        let plain = request();
        let signed = sign(&plain, &key, 0x0102_0304_0506).expect("signs");
        let mut digest = plain.clone();
        digest.extend_from_slice(b"\x10tls-sidecar-test\x00");
        digest.extend_from_slice(&[0x00, 0xff, 0, 0, 0, 0]);
        digest.extend_from_slice(b"\x0bhmac-sha256\x00");
        digest.extend_from_slice(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x01, 0x2c, 0, 0, 0, 0]);
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key.secret), &digest);
        assert_eq!(signed.mac, expected.as_ref());
    }

    #[test]
    fn a_server_signed_answer_verifies() {
        let key = key(TsigAlgorithm::HmacSha512);
        let signed = sign(&request(), &key, 1000).expect("signs");
        let answer = signed_answer(&key, &signed.mac, 1000, 0xabcd);
        let m = Message::parse(&answer).expect("decodes");
        assert_eq!(verify(&answer, &m, &signed.mac, &key, 1100), Ok(()));
        // Another request's MAC, another secret, a changed byte, a skewed clock: refused.
        assert_eq!(
            verify(&answer, &m, &[0; 64], &key, 1100),
            Err(Unverified::BadMac)
        );
        let mut other = key.clone();
        other.secret[0] ^= 1;
        assert_eq!(
            verify(&answer, &m, &signed.mac, &other, 1100),
            Err(Unverified::BadMac)
        );
        let mut changed = answer.clone();
        changed[3] ^= 0x01; // rcode NOERROR -> FORMERR
        let m2 = Message::parse(&changed).expect("decodes");
        assert_eq!(
            verify(&changed, &m2, &signed.mac, &key, 1100),
            Err(Unverified::BadMac)
        );
        assert_eq!(
            verify(&answer, &m, &signed.mac, &key, 1000 + 301),
            Err(Unverified::Time)
        );
        let mut renamed = key.clone();
        renamed.name = "someone-else".into();
        assert_eq!(
            verify(&answer, &m, &signed.mac, &renamed, 1000),
            Err(Unverified::OtherKey)
        );
        let mut unsigned = answer[..m.tsig_offset.expect("tsig")].to_vec();
        unsigned[11] = 0;
        let m3 = Message::parse(&unsigned).expect("decodes");
        assert_eq!(
            verify(&unsigned, &m3, &signed.mac, &key, 1000),
            Err(Unverified::Unsigned)
        );
    }

    #[test]
    fn tsig_errors_in_words() {
        let key = key(TsigAlgorithm::HmacSha256);
        assert_eq!(
            error_words(16, &key),
            "TSIG BADSIG: the server does not accept key \"Tls-Sidecar-Test\"; its secret differs"
        );
        assert!(error_words(17, &key).contains("BADKEY"));
        assert!(error_words(17, &key).contains("hmac-sha256"));
        assert!(error_words(18, &key).contains("BADTIME"));
        assert!(error_words(22, &key).contains("BADTRUNC"));
        assert_eq!(error_words(99, &key), "TSIG error 99");
        assert_eq!(Unverified::Error(16).describe(&key), error_words(16, &key));
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(
            TsigAlgorithm::from_name("HMAC-SHA512."),
            Some(TsigAlgorithm::HmacSha512)
        );
        assert_eq!(TsigAlgorithm::from_name("hmac-md5.sig-alg.reg.int"), None);
        assert_eq!(TsigAlgorithm::HmacSha384.name(), "hmac-sha384");
    }
}
