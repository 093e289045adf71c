//! The hand-over's messages and their bytes, pure: [`encode`], and [`header`] then [`decode`]
//! for what arrives. Every message is one frame: an 8-byte header (the magic `TSHO`, the
//! protocol version, the kind, the body's length as a big-endian `u16`) and a body of at most
//! [`MAX_BODY`] bytes. The header never changes between versions, so a sidecar of another
//! version is told apart from garbage and can still read a [`Message::Refused`].
//!
//! Bodies, all integers big-endian:
//! - `Hello`: the asker's timeout in milliseconds (`u32`).
//! - `Listeners`: the sender's process id (`u32`), a count (`u8`), then per listener its role
//!   (`u8`: 0 tls, 1 admin, 2 redirect, 3 upstream), its family (`u8`: 4 or 6), the address
//!   (4 bytes, or 16 bytes and the IPv6 scope id as a `u32`) and the port (`u16`). The sockets
//!   travel beside it as `SCM_RIGHTS`, in the same order.
//! - `Ready`, `Done`: empty.
//! - `Refused`: the reason, UTF-8, at most [`MAX_REASON`] bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use crate::config::{TAKE_OVER_TIMEOUT_MAX, TAKE_OVER_TIMEOUT_MIN};
use crate::listeners::{Entry, Role};

/// The first bytes of every frame.
pub(crate) const MAGIC: [u8; 4] = *b"TSHO";
/// The protocol this sidecar speaks.
pub(crate) const VERSION: u8 = 1;
/// Bytes of a frame's header.
pub(crate) const HEADER_LEN: usize = 8;
/// Largest body: the largest real message (every listener a sidecar can have, IPv6) takes
/// under 2 KiB; anything longer is refused before it is read.
pub(crate) const MAX_BODY: usize = 4096;
/// Most listeners (and so sockets) in one hand-over: TLS, admin, redirect and every upstream.
pub(crate) const MAX_LISTENERS: usize = 3 + shared::service_identity::MAX_UPSTREAMS;
/// Longest refusal reason.
pub(crate) const MAX_REASON: usize = 256;

const HELLO: u8 = 1;
const LISTENERS: u8 = 2;
const READY: u8 = 3;
const DONE: u8 = 4;
const REFUSED: u8 = 5;

/// One message of the hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// Successor to running sidecar: hand me your listeners; give up on me after `timeout`.
    Hello { timeout: Duration },
    /// Running sidecar to successor: my listeners (the sockets attached, in this order).
    Listeners { pid: u32, entries: Vec<Entry> },
    /// Successor: ready to accept; stop accepting and drain.
    Ready,
    /// Running sidecar: stopped accepting; the hand-over socket is released next.
    Done,
    /// Either side: no, and why.
    Refused(String),
}

impl Message {
    /// The message's name, for errors.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "a hello",
            Message::Listeners { .. } => "its listeners",
            Message::Ready => "ready",
            Message::Done => "done",
            Message::Refused(_) => "a refusal",
        }
    }
}

/// Why bytes are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("garbage (not a hand-over message)")]
    Garbage,
    #[error("an unsupported protocol version {0} (this sidecar speaks {VERSION})")]
    Version(u8),
    #[error("an oversized message ({0} bytes, at most {MAX_BODY})")]
    Oversized(usize),
    #[error("an unknown kind of message ({0})")]
    UnknownKind(u8),
    #[error("a malformed message ({0})")]
    Malformed(&'static str),
}

/// The frame of `msg`.
pub(crate) fn encode(msg: &Message) -> Vec<u8> {
    let mut body = Vec::new();
    let kind = match msg {
        Message::Hello { timeout } => {
            let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
            body.extend_from_slice(&ms.to_be_bytes());
            HELLO
        }
        Message::Listeners { pid, entries } => {
            body.extend_from_slice(&pid.to_be_bytes());
            body.push(entries.len().min(MAX_LISTENERS) as u8);
            for e in entries.iter().take(MAX_LISTENERS) {
                encode_entry(e, &mut body);
            }
            LISTENERS
        }
        Message::Ready => READY,
        Message::Done => DONE,
        Message::Refused(reason) => {
            body.extend_from_slice(cut(reason, MAX_REASON).as_bytes());
            REFUSED
        }
    };
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&MAGIC);
    frame.push(VERSION);
    frame.push(kind);
    frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// The kind and body length a frame's header announces.
pub(crate) fn header(bytes: &[u8; HEADER_LEN]) -> Result<(u8, usize), WireError> {
    if bytes[..4] != MAGIC {
        return Err(WireError::Garbage);
    }
    if bytes[4] != VERSION {
        return Err(WireError::Version(bytes[4]));
    }
    let len = u16::from_be_bytes([bytes[6], bytes[7]]) as usize;
    if len > MAX_BODY {
        return Err(WireError::Oversized(len));
    }
    Ok((bytes[5], len))
}

/// The message of kind `kind` whose body is `body`.
pub(crate) fn decode(kind: u8, body: &[u8]) -> Result<Message, WireError> {
    match kind {
        HELLO => decode_hello(body),
        LISTENERS => decode_listeners(body),
        READY | DONE if !body.is_empty() => Err(WireError::Malformed("a body where none belongs")),
        READY => Ok(Message::Ready),
        DONE => Ok(Message::Done),
        REFUSED => std::str::from_utf8(body)
            .ok()
            .filter(|r| r.len() <= MAX_REASON)
            .map(|r| Message::Refused(r.to_string()))
            .ok_or(WireError::Malformed("reason")),
        other => Err(WireError::UnknownKind(other)),
    }
}

fn decode_hello(body: &[u8]) -> Result<Message, WireError> {
    let ms: [u8; 4] = body.try_into().map_err(|_| WireError::Malformed("hello"))?;
    let timeout = Duration::from_millis(u64::from(u32::from_be_bytes(ms)));
    if !(TAKE_OVER_TIMEOUT_MIN..=TAKE_OVER_TIMEOUT_MAX).contains(&timeout) {
        return Err(WireError::Malformed("timeout out of range"));
    }
    Ok(Message::Hello { timeout })
}

fn decode_listeners(body: &[u8]) -> Result<Message, WireError> {
    let mut r = Reader(body);
    let pid = r.u32()?;
    let count = r.u8()? as usize;
    if count > MAX_LISTENERS {
        return Err(WireError::Malformed("too many listeners"));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        entries.push(decode_entry(&mut r)?);
    }
    if !r.0.is_empty() {
        return Err(WireError::Malformed("bytes after the listeners"));
    }
    Ok(Message::Listeners { pid, entries })
}

fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    let role = Role::ALL.iter().position(|r| *r == e.role).unwrap_or(0) as u8;
    out.push(role);
    match e.addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.scope_id().to_be_bytes());
        }
    }
    out.extend_from_slice(&e.addr.port().to_be_bytes());
}

fn decode_entry(r: &mut Reader<'_>) -> Result<Entry, WireError> {
    let role = *Role::ALL
        .get(r.u8()? as usize)
        .ok_or(WireError::Malformed("role"))?;
    let addr = match r.u8()? {
        4 => {
            let ip: [u8; 4] = r
                .take(4)?
                .try_into()
                .map_err(|_| WireError::Malformed("address"))?;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), r.u16()?)
        }
        6 => {
            let ip: [u8; 16] = r
                .take(16)?
                .try_into()
                .map_err(|_| WireError::Malformed("address"))?;
            let scope = r.u32()?;
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), r.u16()?, 0, scope))
        }
        _ => return Err(WireError::Malformed("address family")),
    };
    Ok(Entry { role, addr })
}

/// Reads a body front to back; running short is a malformed message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(role: Role, addr: &str) -> Entry {
        Entry {
            role,
            addr: addr.parse().expect("addr"),
        }
    }

    fn round_trip(msg: &Message) -> Result<Message, WireError> {
        let frame = encode(msg);
        let head: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().expect("header");
        let (kind, len) = header(&head)?;
        assert_eq!(len, frame.len() - HEADER_LEN, "the header counts the body");
        decode(kind, &frame[HEADER_LEN..])
    }

    #[test]
    fn every_message_survives_its_bytes() {
        let mut scoped = entry(Role::Upstream, "[fe80::1]:9002");
        if let SocketAddr::V6(a) = &mut scoped.addr {
            a.set_scope_id(3);
        }
        let messages = [
            Message::Hello {
                timeout: Duration::from_secs(30),
            },
            Message::Listeners {
                pid: 4242,
                entries: vec![
                    entry(Role::Tls, "0.0.0.0:8443"),
                    entry(Role::Admin, "127.0.0.1:9901"),
                    entry(Role::Redirect, "[::]:80"),
                    scoped,
                ],
            },
            Message::Listeners {
                pid: 1,
                entries: vec![],
            },
            Message::Ready,
            Message::Done,
            Message::Refused("another take-over is in progress".into()),
        ];
        for msg in messages {
            assert_eq!(round_trip(&msg), Ok(msg.clone()), "{msg:?}");
        }
    }

    #[test]
    fn the_largest_message_fits_the_limit() {
        let entries = vec![entry(Role::Upstream, "[ffff::ffff]:65535"); MAX_LISTENERS];
        let frame = encode(&Message::Listeners { pid: 1, entries });
        assert!(frame.len() - HEADER_LEN <= MAX_BODY, "{}", frame.len());
        let long = "é".repeat(MAX_REASON);
        match round_trip(&Message::Refused(long)) {
            Ok(Message::Refused(r)) => assert!(r.len() <= MAX_REASON && r.starts_with('é')),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_other_versions_and_oversized_bodies_are_told_apart() {
        assert_eq!(header(b"GET / HT"), Err(WireError::Garbage));
        assert_eq!(header(b"TSHO\x02\x01\x00\x04"), Err(WireError::Version(2)));
        assert_eq!(
            header(b"TSHO\x01\x01\xff\xff"),
            Err(WireError::Oversized(65535))
        );
        assert_eq!(header(b"TSHO\x01\x03\x00\x00"), Ok((READY, 0)));
        assert_eq!(decode(99, b""), Err(WireError::UnknownKind(99)));
    }

    #[test]
    fn malformed_bodies_are_refused() {
        assert!(decode(HELLO, b"\x00\x00").is_err(), "cut short");
        // Outside 1s..=10m.
        assert!(decode(HELLO, &500u32.to_be_bytes()).is_err());
        assert!(decode(HELLO, &600_001u32.to_be_bytes()).is_err());
        assert!(decode(READY, b"x").is_err());
        assert!(decode(REFUSED, b"\xff\xfe").is_err(), "not UTF-8");
        let mut body = 7u32.to_be_bytes().to_vec();
        body.push(1);
        body.extend_from_slice(&[9, 4, 127, 0, 0, 1, 0, 80]);
        assert_eq!(decode(LISTENERS, &body), Err(WireError::Malformed("role")));
        body[5] = 0;
        assert!(decode(LISTENERS, &body).is_ok());
        body[6] = 5;
        assert_eq!(
            decode(LISTENERS, &body),
            Err(WireError::Malformed("address family"))
        );
        body[6] = 4;
        body.push(0);
        assert!(decode(LISTENERS, &body).is_err(), "a byte too many");
        body.truncate(body.len() - 2);
        assert!(decode(LISTENERS, &body).is_err(), "cut short");
        let mut many = 7u32.to_be_bytes().to_vec();
        many.push(MAX_LISTENERS as u8 + 1);
        assert!(decode(LISTENERS, &many).is_err());
    }
}
