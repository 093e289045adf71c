//! DNS messages on the wire (RFC 1035 section 4), only as far as DNS-01 needs them: queries,
//! RFC 2136 UPDATE messages adding or deleting one TXT value, and the decoding of any answer
//! into its header and sections, with the record types the lookups read (A, AAAA, NS, CNAME,
//! SOA, TXT) and TSIG (RFC 8945), whose error code explains a refused update.
//!
//! Encoding never compresses names (a message of ours has a handful). Decoding follows
//! compression pointers only backwards, each jump to before the previous one, so a crafted
//! loop cannot spin; every length is checked against what is left, so malformed or truncated
//! input is an error, never a panic or an out-of-bounds read. Decoded names are lowercase,
//! without the trailing dot (the root is ""), bytes outside printable ASCII as `\DDD`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_NS: u16 = 2;
pub(crate) const TYPE_CNAME: u16 = 5;
pub(crate) const TYPE_SOA: u16 = 6;
pub(crate) const TYPE_TXT: u16 = 16;
pub(crate) const TYPE_AAAA: u16 = 28;
pub(crate) const TYPE_TSIG: u16 = 250;

pub(crate) const CLASS_IN: u16 = 1;
/// RFC 2136 section 2.5.4: "delete an RR from an RRset".
pub(crate) const CLASS_NONE: u16 = 254;
/// TSIG records' class.
pub(crate) const CLASS_ANY: u16 = 255;

pub(crate) const OPCODE_QUERY: u8 = 0;
pub(crate) const OPCODE_UPDATE: u8 = 5;

pub(crate) const RCODE_NOERROR: u8 = 0;
pub(crate) const RCODE_NXDOMAIN: u8 = 3;

/// The header's size, before the first question.
pub(crate) const HEADER_LEN: usize = 12;

/// A name's longest wire form (RFC 1035 section 2.3.4).
const MAX_NAME: usize = 255;
/// A label's longest form (RFC 1035 section 2.3.4).
const MAX_LABEL: usize = 63;
/// Compression pointers followed in one name: each jumps further back, so a name cannot loop,
/// and a real name has far fewer than its 127 labels' worth.
const MAX_JUMPS: usize = 127;

/// Why bytes are not a DNS message (or a name cannot be encoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(what: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(what.into()))
}

/// The header's fields, without the section counts (the decoded sections hold them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Header {
    pub(crate) id: u16,
    /// A response.
    pub(crate) qr: bool,
    pub(crate) opcode: u8,
    pub(crate) aa: bool,
    /// Truncated: the whole answer needs TCP.
    pub(crate) tc: bool,
    /// Recursion desired.
    pub(crate) rd: bool,
    pub(crate) ra: bool,
    pub(crate) rcode: u8,
}

impl Header {
    fn flags(&self) -> u16 {
        (u16::from(self.qr) << 15)
            | (u16::from(self.opcode & 0x0f) << 11)
            | (u16::from(self.aa) << 10)
            | (u16::from(self.tc) << 9)
            | (u16::from(self.rd) << 8)
            | (u16::from(self.ra) << 7)
            | u16::from(self.rcode & 0x0f)
    }

    fn from_flags(id: u16, flags: u16) -> Header {
        Header {
            id,
            qr: flags & 0x8000 != 0,
            opcode: ((flags >> 11) & 0x0f) as u8,
            aa: flags & 0x0400 != 0,
            tc: flags & 0x0200 != 0,
            rd: flags & 0x0100 != 0,
            ra: flags & 0x0080 != 0,
            rcode: (flags & 0x0f) as u8,
        }
    }
}

/// A question (in an UPDATE: the zone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Question {
    pub(crate) name: String,
    pub(crate) qtype: u16,
    pub(crate) qclass: u16,
}

/// A resource record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) name: String,
    pub(crate) rtype: u16,
    pub(crate) class: u16,
    pub(crate) ttl: u32,
    pub(crate) data: RData,
}

/// A record's data, decoded for the types read here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Ns(String),
    Cname(String),
    Soa(Soa),
    /// The character-strings joined, as an ACME server reads them (RFC 8555 section 8.4).
    Txt(Vec<u8>),
    Tsig(Tsig),
    /// Any other type, undecoded.
    Other(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// The SOA fields the log shows; the others are checked and skipped.
pub(crate) struct Soa {
    /// The zone's primary server.
    pub(crate) mname: String,
    pub(crate) serial: u32,
}

/// A TSIG record's data (RFC 8945 section 4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tsig {
    pub(crate) algorithm: String,
    /// Seconds since the epoch, 48 bits.
    pub(crate) time_signed: u64,
    pub(crate) fudge: u16,
    pub(crate) mac: Vec<u8>,
    pub(crate) original_id: u16,
    pub(crate) error: u16,
    pub(crate) other: Vec<u8>,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Message {
    pub(crate) header: Header,
    pub(crate) questions: Vec<Question>,
    pub(crate) answers: Vec<Record>,
    pub(crate) authority: Vec<Record>,
    pub(crate) additional: Vec<Record>,
    /// Where the TSIG record (the last additional record, RFC 8945 section 5.1) starts: what
    /// its MAC covers ends there.
    pub(crate) tsig_offset: Option<usize>,
}

impl Message {
    /// Decodes a whole message; trailing bytes are an error.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Message, WireError> {
        let mut r = Reader { msg: bytes, pos: 0 };
        let id = r.u16("the header")?;
        let flags = r.u16("the header")?;
        let mut counts = [0u16; 4];
        for count in &mut counts {
            *count = r.u16("the header")?;
        }
        let mut message = Message {
            header: Header::from_flags(id, flags),
            ..Message::default()
        };
        for _ in 0..counts[0] {
            let name = r.name("a question")?;
            let qtype = r.u16("a question")?;
            let qclass = r.u16("a question")?;
            message.questions.push(Question {
                name,
                qtype,
                qclass,
            });
        }
        for _ in 0..counts[1] {
            message.answers.push(r.record("the answer section")?);
        }
        for _ in 0..counts[2] {
            message.authority.push(r.record("the authority section")?);
        }
        for i in 0..counts[3] {
            let start = r.pos;
            let record = r.record("the additional section")?;
            if record.rtype == TYPE_TSIG {
                if i + 1 != counts[3] {
                    return err("a TSIG record that is not the last record");
                }
                message.tsig_offset = Some(start);
            }
            message.additional.push(record);
        }
        if r.pos != bytes.len() {
            return err(format!(
                "{} bytes after the last record",
                bytes.len() - r.pos
            ));
        }
        Ok(message)
    }

    /// The TSIG record's data, when the message has one.
    pub(crate) fn tsig(&self) -> Option<&Tsig> {
        match self.additional.last().map(|r| &r.data) {
            Some(RData::Tsig(tsig)) if self.tsig_offset.is_some() => Some(tsig),
            _ => None,
        }
    }
}

/// Reads a message front to back; every read checks what is left.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn bytes(&mut self, n: usize, what: &str) -> Result<&[u8], WireError> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.msg.len());
        match end {
            Some(end) => {
                let bytes = &self.msg[self.pos..end];
                self.pos = end;
                Ok(bytes)
            }
            None => err(format!("truncated in {what}")),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        Ok(self.bytes(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, WireError> {
        let b = self.bytes(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        let b = self.bytes(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn name(&mut self, what: &str) -> Result<String, WireError> {
        let (name, end) = read_name(self.msg, self.pos, what)?;
        self.pos = end;
        Ok(name)
    }

    fn record(&mut self, what: &str) -> Result<Record, WireError> {
        let name = self.name(what)?;
        let rtype = self.u16(what)?;
        let class = self.u16(what)?;
        let ttl = self.u32(what)?;
        let len = usize::from(self.u16(what)?);
        let start = self.pos;
        self.bytes(len, what)?;
        let mut data = Reader {
            // The whole message, for compression pointers; the data ends at `end`.
            msg: &self.msg[..start + len],
            pos: start,
        };
        let what = format!("the data of a record of type {rtype} in {what}");
        let what = what.as_str();
        let decoded = match rtype {
            TYPE_A => RData::A(Ipv4Addr::from(
                <[u8; 4]>::try_from(data.rest())
                    .map_err(|_| WireError(format!("{len} bytes in {what}, not 4")))?,
            )),
            TYPE_AAAA => RData::Aaaa(Ipv6Addr::from(
                <[u8; 16]>::try_from(data.rest())
                    .map_err(|_| WireError(format!("{len} bytes in {what}, not 16")))?,
            )),
            TYPE_NS => RData::Ns(data.name(what)?),
            TYPE_CNAME => RData::Cname(data.name(what)?),
            TYPE_SOA => {
                let mname = data.name(what)?;
                let _rname = data.name(what)?;
                let serial = data.u32(what)?;
                // Refresh, retry, expire, minimum.
                data.bytes(16, what)?;
                RData::Soa(Soa { mname, serial })
            }
            TYPE_TXT => {
                if len == 0 {
                    return err(format!("no character-string in {what}"));
                }
                let mut text = Vec::new();
                while data.pos < data.msg.len() {
                    let n = usize::from(data.u8(what)?);
                    text.extend_from_slice(data.bytes(n, what)?);
                }
                RData::Txt(text)
            }
            TYPE_TSIG => {
                let algorithm = data.name(what)?;
                let high = u64::from(data.u16(what)?);
                let low = u64::from(data.u32(what)?);
                let fudge = data.u16(what)?;
                let mac_len = usize::from(data.u16(what)?);
                let mac = data.bytes(mac_len, what)?.to_vec();
                let original_id = data.u16(what)?;
                let error = data.u16(what)?;
                let other_len = usize::from(data.u16(what)?);
                let other = data.bytes(other_len, what)?.to_vec();
                RData::Tsig(Tsig {
                    algorithm,
                    time_signed: (high << 32) | low,
                    fudge,
                    mac,
                    original_id,
                    error,
                    other,
                })
            }
            _ => RData::Other(data.rest().to_vec()),
        };
        if data.pos != data.msg.len() {
            return err(format!("{what}: longer than its content"));
        }
        Ok(Record {
            name,
            rtype,
            class,
            ttl,
            data: decoded,
        })
    }

    /// The bytes left, consumed.
    fn rest(&mut self) -> &[u8] {
        let rest = &self.msg[self.pos..];
        self.pos = self.msg.len();
        rest
    }
}

/// Decodes the name at `start` of `msg`: the name and where the bytes after it begin.
fn read_name(msg: &[u8], start: usize, what: &str) -> Result<(String, usize), WireError> {
    let mut name = String::new();
    let mut pos = start;
    // Where the name's own bytes end: after its first pointer, or after its root label.
    let mut end = None;
    // The lowest position this name has been read from: a pointer must jump below it.
    let mut floor = start;
    let mut jumps = 0;
    let mut wire_len = 1;
    loop {
        let Some(&len) = msg.get(pos) else {
            return err(format!("truncated name in {what}"));
        };
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((name, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                let len = usize::from(len);
                let Some(label) = msg.get(pos + 1..pos + 1 + len) else {
                    return err(format!("truncated name in {what}"));
                };
                wire_len += len + 1;
                if wire_len > MAX_NAME {
                    return err(format!("a name longer than {MAX_NAME} bytes in {what}"));
                }
                if !name.is_empty() {
                    name.push('.');
                }
                push_label(&mut name, label);
                pos += 1 + len;
            }
            0xc0 => {
                let Some(&low) = msg.get(pos + 1) else {
                    return err(format!("truncated name in {what}"));
                };
                let target = (usize::from(len & 0x3f) << 8) | usize::from(low);
                jumps += 1;
                if target >= floor || jumps > MAX_JUMPS {
                    return err(format!("a compression pointer that loops in {what}"));
                }
                end.get_or_insert(pos + 2);
                floor = target;
                pos = target;
            }
            _ => return err(format!("an unknown label type in {what}")),
        }
    }
}

/// Appends a label lowercase, escaping the dot, the backslash and bytes outside printable ASCII.
fn push_label(name: &mut String, label: &[u8]) {
    for &b in label {
        match b {
            b'.' | b'\\' => {
                name.push('\\');
                name.push(char::from(b));
            }
            0x21..=0x7e => name.push(char::from(b.to_ascii_lowercase())),
            _ => name.push_str(&format!("\\{b:03}")),
        }
    }
}

/// Appends `name` (dotted, a trailing dot optional, "" or "." for the root) uncompressed.
pub(crate) fn put_name(buf: &mut Vec<u8>, name: &str) -> Result<(), WireError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let mut wire_len = 1;
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() || label.len() > MAX_LABEL {
                return err(format!(
                    "{name:?}: a label must have 1 to {MAX_LABEL} bytes"
                ));
            }
            wire_len += label.len() + 1;
            if wire_len > MAX_NAME {
                return err(format!("{name:?}: longer than {MAX_NAME} bytes"));
            }
            buf.push(label.len() as u8);
            buf.extend_from_slice(label.as_bytes());
        }
    }
    buf.push(0);
    Ok(())
}

/// TXT data: `value` as character-strings of at most 255 bytes each (one, even when empty).
pub(crate) fn txt_data(value: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(value.len() + value.len() / 255 + 1);
    let mut chunks = value.chunks(255).peekable();
    if chunks.peek().is_none() {
        data.push(0);
    }
    for chunk in chunks {
        data.push(chunk.len() as u8);
        data.extend_from_slice(chunk);
    }
    data
}

/// The section a record goes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// Only the tests write answers (as a server would).
    #[cfg(test)]
    Answer,
    /// In an UPDATE: the update section.
    Authority,
    #[cfg(test)]
    Additional,
}

/// Writes a message; the sections may be filled in any order.
#[derive(Debug)]
pub(crate) struct Builder {
    header: Header,
    questions: Vec<u8>,
    sections: [Vec<u8>; 3],
    counts: [u16; 4],
}

impl Builder {
    pub(crate) fn new(header: Header) -> Builder {
        Builder {
            header,
            questions: Vec::new(),
            sections: [Vec::new(), Vec::new(), Vec::new()],
            counts: [0; 4],
        }
    }

    pub(crate) fn question(
        &mut self,
        name: &str,
        qtype: u16,
        qclass: u16,
    ) -> Result<(), WireError> {
        put_name(&mut self.questions, name)?;
        self.questions.extend_from_slice(&qtype.to_be_bytes());
        self.questions.extend_from_slice(&qclass.to_be_bytes());
        self.counts[0] += 1;
        Ok(())
    }

    pub(crate) fn record(
        &mut self,
        section: Section,
        name: &str,
        (rtype, class, ttl): (u16, u16, u32),
        data: &[u8],
    ) -> Result<(), WireError> {
        let Ok(len) = u16::try_from(data.len()) else {
            return err("record data longer than 65535 bytes");
        };
        let index = match section {
            #[cfg(test)]
            Section::Answer => 0,
            Section::Authority => 1,
            #[cfg(test)]
            Section::Additional => 2,
        };
        let buf = &mut self.sections[index];
        put_name(buf, name)?;
        buf.extend_from_slice(&rtype.to_be_bytes());
        buf.extend_from_slice(&class.to_be_bytes());
        buf.extend_from_slice(&ttl.to_be_bytes());
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(data);
        self.counts[index + 1] += 1;
        Ok(())
    }

    /// The message's bytes.
    pub(crate) fn finish(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            HEADER_LEN + self.questions.len() + self.sections.iter().map(Vec::len).sum::<usize>(),
        );
        out.extend_from_slice(&self.header.id.to_be_bytes());
        out.extend_from_slice(&self.header.flags().to_be_bytes());
        for count in self.counts {
            out.extend_from_slice(&count.to_be_bytes());
        }
        out.extend_from_slice(&self.questions);
        for section in &self.sections {
            out.extend_from_slice(section);
        }
        out
    }
}

/// A query for `name`'s `qtype` records in class IN; `rd`: recursion desired (to a resolver).
pub(crate) fn query(id: u16, name: &str, qtype: u16, rd: bool) -> Result<Vec<u8>, WireError> {
    let mut message = Builder::new(Header {
        id,
        opcode: OPCODE_QUERY,
        rd,
        ..Header::default()
    });
    message.question(name, qtype, CLASS_IN)?;
    Ok(message.finish())
}

/// What an UPDATE does to one TXT value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// Adds `name TTL IN TXT value` (RFC 2136 section 2.5.1); other values stay.
    Add { ttl: u32 },
    /// Deletes that value only (section 2.5.4: class NONE, TTL 0); a no-op when absent.
    Delete,
}

/// An UPDATE of `zone` changing the TXT value `value` at `name` (RFC 2136 section 2): the zone
/// section `zone SOA IN`, no prerequisites, one update record.
pub(crate) fn update(
    id: u16,
    zone: &str,
    name: &str,
    value: &[u8],
    change: Change,
) -> Result<Vec<u8>, WireError> {
    let mut message = Builder::new(Header {
        id,
        opcode: OPCODE_UPDATE,
        ..Header::default()
    });
    message.question(zone, TYPE_SOA, CLASS_IN)?;
    let (class, ttl) = match change {
        Change::Add { ttl } => (CLASS_IN, ttl),
        Change::Delete => (CLASS_NONE, 0),
    };
    message.record(
        Section::Authority,
        name,
        (TYPE_TXT, class, ttl),
        &txt_data(value),
    )?;
    Ok(message.finish())
}

/// A response code in words (RFC 1035, RFC 2136, RFC 6895).
pub(crate) fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        6 => "YXDOMAIN".into(),
        7 => "YXRRSET".into(),
        8 => "NXRRSET".into(),
        9 => "NOTAUTH".into(),
        10 => "NOTZONE".into(),
        other => format!("RCODE{other}"),
    }
}

/// A record type in words, for messages.
pub(crate) fn type_name(rtype: u16) -> String {
    match rtype {
        TYPE_A => "A".into(),
        TYPE_NS => "NS".into(),
        TYPE_CNAME => "CNAME".into(),
        TYPE_SOA => "SOA".into(),
        TYPE_TXT => "TXT".into(),
        TYPE_AAAA => "AAAA".into(),
        TYPE_TSIG => "TSIG".into(),
        other => format!("TYPE{other}"),
    }
}

/// Whether `name` is `zone` or below it (both as decoded: lowercase, no trailing dot).
pub(crate) fn is_within(name: &str, zone: &str) -> bool {
    zone.is_empty()
        || name == zone
        || name
            .strip_suffix(zone)
            .is_some_and(|head| head.ends_with('.') && !head.ends_with("\\."))
}

/// `name` without its leftmost label; None for the root.
pub(crate) fn parent(name: &str) -> Option<&str> {
    if name.is_empty() {
        return None;
    }
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'.' => return Some(&name[i + 1..]),
            _ => i += 1,
        }
    }
    Some("")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer as a server writes it, with compression: the question's name once, pointers
    /// to it after.
    fn compressed_answer() -> Vec<u8> {
        let mut m = vec![
            0x12, 0x34, // id
            0x81, 0x80, // QR, RD, RA, NOERROR
            0, 1, 0, 2, 0, 1, 0, 0,
        ];
        // Question at 12: _acme-challenge.Example.TEST TXT IN
        m.push(15);
        m.extend_from_slice(b"_acme-challenge");
        m.push(7);
        m.extend_from_slice(b"Example");
        m.push(4);
        m.extend_from_slice(b"TEST");
        m.push(0);
        m.extend_from_slice(&[0, 16, 0, 1]);
        // Answer 1: ptr 12, TXT, two strings.
        m.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, 8]);
        m.extend_from_slice(&[3, b'a', b'b', b'c', 3, b'd', b'e', b'f']);
        // Answer 2: ptr 12, CNAME to "x" + ptr to "example.test" (offset 28).
        m.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 4]);
        m.extend_from_slice(&[1, b'x', 0xc0, 28]);
        // Authority: SOA at ptr 28.
        // mname ns.example.test, rname root ("" = 0), then five numbers.
        let mut soa_data = vec![2, b'n', b's', 0xc0, 28, 0];
        for n in 1u32..=5 {
            soa_data.extend_from_slice(&n.to_be_bytes());
        }
        m.extend_from_slice(&[0xc0, 28, 0, 6, 0, 1, 0, 0, 0, 60]);
        m.extend_from_slice(&(soa_data.len() as u16).to_be_bytes());
        m.extend_from_slice(&soa_data);
        m
    }

    #[test]
    fn compressed_answers_decode() {
        let m = Message::parse(&compressed_answer()).expect("decodes");
        assert_eq!(m.header.id, 0x1234);
        assert!(m.header.qr && m.header.rd && m.header.ra && !m.header.tc);
        assert_eq!(m.header.rcode, RCODE_NOERROR);
        assert_eq!(
            m.questions,
            [Question {
                name: "_acme-challenge.example.test".into(),
                qtype: TYPE_TXT,
                qclass: CLASS_IN
            }]
        );
        assert_eq!(m.answers[0].name, "_acme-challenge.example.test");
        assert_eq!(m.answers[0].data, RData::Txt(b"abcdef".to_vec()));
        assert_eq!(m.answers[1].data, RData::Cname("x.example.test".into()));
        assert_eq!(m.authority[0].name, "example.test");
        assert_eq!(
            m.authority[0].data,
            RData::Soa(Soa {
                mname: "ns.example.test".into(),
                serial: 1,
            })
        );
        assert_eq!(m.tsig_offset, None);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let full = compressed_answer();
        for len in 0..full.len() {
            assert!(Message::parse(&full[..len]).is_err(), "{len} bytes");
        }
        let mut longer = full.clone();
        longer.push(0);
        assert!(Message::parse(&longer).is_err());
    }

    #[test]
    fn pointer_loops_and_forward_pointers_are_errors() {
        let mut m = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        // A pointer to itself.
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(Message::parse(&m).is_err());
        // A label, then a pointer back to the label: a loop through a backward pointer.
        let mut m = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[1, b'a', 0xc0, 12, 0, 1, 0, 1]);
        assert!(Message::parse(&m).is_err());
        // A forward pointer.
        let mut m = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0xc0, 14, 0, 0, 1, 0, 1]);
        assert!(Message::parse(&m).is_err());
        // Reserved label type.
        let mut m = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[0x41, 0, 0, 1, 0, 1]);
        assert!(Message::parse(&m).is_err());
    }

    #[test]
    fn names_longer_than_255_bytes_are_errors() {
        let mut m = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for _ in 0..5 {
            m.push(63);
            m.extend_from_slice(&[b'a'; 63]);
        }
        m.extend_from_slice(&[0, 0, 1, 0, 1]);
        let e = Message::parse(&m).expect_err("too long");
        assert!(e.0.contains("longer than 255"), "{e}");
        let mut buf = Vec::new();
        assert!(put_name(&mut buf, &vec!["a".repeat(63); 5].join(".")).is_err());
        assert!(put_name(&mut buf, &"a".repeat(64)).is_err());
        assert!(put_name(&mut buf, "a..b").is_err());
    }

    #[test]
    fn record_data_must_fill_its_length() {
        // An A record of 5 bytes, and a CNAME whose name ends before its data does.
        for data in [vec![1, 2, 3, 4, 5], vec![1, b'x', 0, 0]] {
            let rtype = if data.len() == 5 { TYPE_A } else { TYPE_CNAME };
            let mut m = Builder::new(Header::default());
            m.record(Section::Answer, "a.test", (rtype, CLASS_IN, 1), &data)
                .expect("encodes");
            assert!(Message::parse(&m.finish()).is_err());
        }
        // TXT: a string running past the data's end, and no string at all.
        for data in [vec![5, b'a'], vec![]] {
            let mut m = Builder::new(Header::default());
            m.record(Section::Answer, "a.test", (TYPE_TXT, CLASS_IN, 1), &data)
                .expect("encodes");
            assert!(Message::parse(&m.finish()).is_err());
        }
    }

    #[test]
    fn queries_round_trip() {
        let bytes = query(7, "_acme-challenge.example.test.", TYPE_TXT, true).expect("encodes");
        let m = Message::parse(&bytes).expect("decodes");
        assert_eq!(m.header.id, 7);
        assert!(m.header.rd && !m.header.qr);
        assert_eq!(m.header.opcode, OPCODE_QUERY);
        assert_eq!(m.questions[0].name, "_acme-challenge.example.test");
        assert_eq!(m.questions[0].qtype, TYPE_TXT);
        let m = Message::parse(&query(8, "example.test", TYPE_SOA, false).expect("encodes"))
            .expect("decodes");
        assert!(!m.header.rd);
    }

    #[test]
    fn updates_add_and_delete_one_value() {
        let add = update(
            9,
            "example.test",
            "_acme-challenge.example.test",
            b"v",
            Change::Add { ttl: 60 },
        )
        .expect("encodes");
        let m = Message::parse(&add).expect("decodes");
        assert_eq!(m.header.opcode, OPCODE_UPDATE);
        assert_eq!(m.questions[0].name, "example.test");
        assert_eq!(m.questions[0].qtype, TYPE_SOA);
        assert_eq!(
            m.authority,
            [Record {
                name: "_acme-challenge.example.test".into(),
                rtype: TYPE_TXT,
                class: CLASS_IN,
                ttl: 60,
                data: RData::Txt(b"v".to_vec())
            }]
        );
        let delete = update(
            9,
            "example.test",
            "_acme-challenge.example.test",
            b"v",
            Change::Delete,
        )
        .expect("encodes");
        let m = Message::parse(&delete).expect("decodes");
        assert_eq!(m.authority[0].class, CLASS_NONE);
        assert_eq!(m.authority[0].ttl, 0);
        assert_eq!(m.authority[0].data, RData::Txt(b"v".to_vec()));
    }

    #[test]
    fn long_txt_values_are_split_and_joined() {
        let value = vec![b'x'; 600];
        let data = txt_data(&value);
        assert_eq!(data.len(), 603);
        assert_eq!((data[0], data[256], data[512]), (255, 255, 90));
        assert_eq!(txt_data(b""), [0]);
        let mut m = Builder::new(Header::default());
        m.record(Section::Answer, "a.test", (TYPE_TXT, CLASS_IN, 1), &data)
            .expect("encodes");
        let m = Message::parse(&m.finish()).expect("decodes");
        assert_eq!(m.answers[0].data, RData::Txt(value));
    }

    #[test]
    fn odd_label_bytes_are_escaped() {
        let mut m = vec![0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&[3, b'a', b'.', 0, 0, 0, 1, 0, 1]);
        let q = Message::parse(&m).expect("decodes");
        assert_eq!(q.questions[0].name, "a\\.\\000");
        assert_eq!(parent("a\\.b.c"), Some("c"));
        assert!(!is_within("a\\.example.test", "\\.example.test"));
    }

    #[test]
    fn names_relate_to_zones() {
        assert!(is_within("a.example.test", "example.test"));
        assert!(is_within("example.test", "example.test"));
        assert!(!is_within("aexample.test", "example.test"));
        assert!(is_within("example.test", ""));
        assert_eq!(parent("a.example.test"), Some("example.test"));
        assert_eq!(parent("test"), Some(""));
        assert_eq!(parent(""), None);
    }

    #[test]
    fn words_for_codes() {
        assert_eq!(rcode_name(9), "NOTAUTH");
        assert_eq!(rcode_name(5), "REFUSED");
        assert_eq!(rcode_name(15), "RCODE15");
        assert_eq!(type_name(TYPE_SOA), "SOA");
        assert_eq!(type_name(99), "TYPE99");
    }

    proptest::proptest! {
        /// Any bytes: an error or a message, never a panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = Message::parse(&bytes);
        }

        /// A valid answer with any bytes changed: an error or a message, never a panic.
        #[test]
        fn mutations_never_panic(at in 0usize..200, byte in proptest::num::u8::ANY) {
            let mut m = compressed_answer();
            let i = at % m.len();
            m[i] = byte;
            let _ = Message::parse(&m);
        }

        /// What is encoded decodes to the same.
        #[test]
        fn updates_round_trip(
            labels in proptest::collection::vec("[a-z0-9_-]{1,20}", 1..5),
            value in proptest::collection::vec(proptest::num::u8::ANY, 0..700),
            id in proptest::num::u16::ANY,
        ) {
            let name = labels.join(".");
            let bytes = update(id, &name, &name, &value, Change::Add { ttl: 60 }).expect("encodes");
            let m = Message::parse(&bytes).expect("decodes");
            proptest::prop_assert_eq!(m.header.id, id);
            proptest::prop_assert_eq!(&m.questions[0].name, &name);
            proptest::prop_assert_eq!(&m.authority[0].data, &RData::Txt(value));
        }
    }
}
