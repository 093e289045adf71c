//! The backend's response on the fast path: its head parsed and its framing checked, the
//! client's head written from it as the hyper path would send it (hop-by-hop headers dropped,
//! framing re-stated, `Strict-Transport-Security` and `Date` added when absent), the body's
//! bytes left untouched; and the sidecar's own short answers ([`local_response`]).

use std::time::SystemTime;

use bytes::Bytes;

use super::CONNECTION_TOKENS_MAX;
use crate::http::headers::HOP_BY_HOP;
use crate::http::MAX_HEADERS;

/// How a response body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes; the client connection closes after it too.
    UntilClose,
}

/// What the bytes at the start of the backend's read buffer are.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply {
    Partial,
    /// An interim (1xx) response of this many bytes, skipped as hyper's client skips them.
    Interim(usize),
    /// Not a response this proxy forwards: the reason, for the log; the client gets a 502.
    Bad(&'static str),
    Final(Answer),
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answer {
    pub head_len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The backend connection can take another request after this response.
    pub reusable: bool,
}

/// Largest response head taken from the backend.
const MAX_REPLY_HEAD: usize = 64 * 1024;

/// The headers this hop adds to a response that lacks them: `Strict-Transport-Security`
/// (`--hsts`) and `Alt-Svc` (`--http3`), their values.
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::http) struct Added<'a> {
    pub hsts: Option<&'a [u8]>,
    pub alt_svc: Option<&'a [u8]>,
}

/// Parses the backend's response head and, for a final one, writes the client's head into
/// `out` (cleared first): hop-by-hop headers dropped, framing re-stated, `Strict-Transport-
/// Security` added when configured and absent, `Date` added when absent (as hyper does), and
/// `Connection: close` when this response is the connection's last.
pub(super) fn reply(
    buf: &[u8],
    head_request: bool,
    added: Added<'_>,
    close: bool,
    out: &mut Vec<u8>,
) -> Reply {
    parse(buf, head_request, |final_head| {
        let Final {
            head_len: _,
            status,
            reason,
            headers,
            facts,
            framing,
        } = final_head;
        let last = close || framing == Framing::UntilClose;
        out.clear();
        write_status_line(out, status, reason);
        write_headers(out, headers, facts.tokens());
        write_framing(out, framing, head_request, facts);
        write_added(out, added, facts, last);
        out.extend_from_slice(b"\r\n");
        Ok(())
    })
}

/// The HTTP/2 fast path's reading of the backend's response head: for a final one, its status
/// and the headers an HTTP/2 client gets (`out`), as the hyper path makes them from hyper's
/// client's reading (every header kept, in order, but for hop-by-hop ones and the ones the
/// `Connection` header names; hyper's server adds `Date`, the service HSTS), and the body bytes
/// that came with the head (of a body framed by length or by the connection's end).
///
/// The head and those bytes are copied out of the read buffer once, into one [`Bytes`] that the
/// header values and the first data share: one allocation per response instead of one per
/// header value and one for the data.
pub(super) fn reply_h2(buf: &[u8], head_request: bool, out: &mut Option<H2Head>) -> Reply {
    let mut head_len = 0;
    let reply = parse(buf, head_request, |final_head| {
        let status =
            http::StatusCode::from_u16(final_head.status).map_err(|_| "invalid response head")?;
        let end = final_head.head_len;
        let with_head = match final_head.framing {
            Framing::Length(n) => (n.min((buf.len() - end) as u64)) as usize,
            Framing::UntilClose => buf.len() - end,
            Framing::Empty | Framing::Chunked => 0,
        };
        let block = Bytes::copy_from_slice(&buf[..end + with_head]);
        let tokens = final_head.facts.tokens();
        let mut map = http::HeaderMap::with_capacity(final_head.headers.len());
        for h in final_head.headers {
            let name = h.name.as_bytes();
            if HOP_BY_HOP
                .iter()
                .any(|x| x.as_bytes().eq_ignore_ascii_case(name))
                || tokens.iter().any(|t| t.eq_ignore_ascii_case(name))
            {
                continue;
            }
            let name = http::HeaderName::from_bytes(name).map_err(|_| "invalid header name")?;
            // The value's place in `buf` is its place in `block`.
            let at = h.value.as_ptr() as usize - buf.as_ptr() as usize;
            let value = http::HeaderValue::from_maybe_shared(block.slice(at..at + h.value.len()))
                .map_err(|_| "invalid header value")?;
            map.append(name, value);
        }
        head_len = end;
        *out = Some(H2Head {
            status,
            headers: map,
            first: block.slice(end..),
        });
        Ok(())
    });
    debug_assert!(!matches!(reply, Reply::Final(ref a) if a.head_len != head_len));
    reply
}

/// A final response head as the HTTP/2 fast path passes it on ([`reply_h2`]).
#[derive(Debug)]
pub(super) struct H2Head {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    /// The body bytes that came with the head (their place in the read buffer: right after it).
    pub first: Bytes,
}

/// A final response head, parsed and checked.
struct Final<'h, 'b> {
    head_len: usize,
    status: u16,
    reason: Option<&'b str>,
    headers: &'h [httparse::Header<'b>],
    facts: &'h Facts<'b>,
    framing: Framing,
}

/// Parses the backend's response head: interim ones skipped, a final one's framing checked and
/// handed to `build` (which may still refuse it).
fn parse(
    buf: &[u8],
    head_request: bool,
    build: impl FnOnce(Final<'_, '_>) -> Result<(), &'static str>,
) -> Reply {
    // Left uninitialised: httparse fills what it parses (3 KiB not cleared per response).
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut headers,
    );
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REPLY_HEAD => return Reply::Partial,
        Ok(httparse::Status::Partial) => return Reply::Bad("response head too large"),
        Err(_) => return Reply::Bad("invalid response head"),
    };
    let Some(status) = resp.code else {
        return Reply::Bad("invalid response head");
    };
    if status == 101 {
        return Reply::Bad("101 without an upgrade");
    }
    if (100..200).contains(&status) {
        return Reply::Interim(head_len);
    }
    let facts = match scan(resp.headers, resp.version == Some(1)) {
        Ok(facts) => facts,
        Err(why) => return Reply::Bad(why),
    };
    if facts.chunked && facts.length.is_some() {
        return Reply::Bad("both Content-Length and Transfer-Encoding");
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if facts.chunked {
        Framing::Chunked
    } else if let Some(n) = facts.length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if let Err(why) = build(Final {
        head_len,
        status,
        reason: resp.reason,
        headers: resp.headers,
        facts: &facts,
        framing,
    }) {
        return Reply::Bad(why);
    }
    Reply::Final(Answer {
        head_len,
        status,
        framing,
        reusable: facts.keep_alive && framing != Framing::UntilClose,
    })
}

/// What a pass over the response's headers found.
struct Facts<'b> {
    length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    /// The `Connection` header's tokens: the headers it names are not forwarded.
    tokens: [&'b [u8]; CONNECTION_TOKENS_MAX],
    n_tokens: usize,
    has_hsts: bool,
    has_alt_svc: bool,
    has_date: bool,
}

impl<'b> Facts<'b> {
    fn tokens(&self) -> &[&'b [u8]] {
        &self.tokens[..self.n_tokens]
    }
}

/// The pass over the response's headers: the reason, for the log, when its framing is not
/// one this proxy forwards.
#[inline]
fn scan<'b>(headers: &[httparse::Header<'b>], http11: bool) -> Result<Facts<'b>, &'static str> {
    let mut facts = Facts {
        length: None,
        chunked: false,
        keep_alive: http11,
        tokens: [&[]; CONNECTION_TOKENS_MAX],
        n_tokens: 0,
        has_hsts: false,
        has_alt_svc: false,
        has_date: false,
    };
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let Some(n) = digits(h.value) else {
                return Err("invalid Content-Length");
            };
            if facts.length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length");
            }
            facts.length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !http11 {
                // HTTP/1.0 has no transfer codings: hyper's client refuses the response too.
                return Err("Transfer-Encoding in an HTTP/1.0 response");
            }
            if facts.chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err("unsupported Transfer-Encoding");
            }
            facts.chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_tokens(h.value, &mut facts)?;
        } else if name.eq_ignore_ascii_case(b"strict-transport-security") {
            facts.has_hsts = true;
        } else if name.eq_ignore_ascii_case(b"alt-svc") {
            facts.has_alt_svc = true;
        } else if name.eq_ignore_ascii_case(b"date") {
            facts.has_date = true;
        }
    }
    Ok(facts)
}

/// Notes a `Connection` value: `close` and `keep-alive`, and its tokens. More tokens than are
/// kept is a refusal: a header named by one not kept would cross this hop.
#[inline]
fn connection_tokens<'b>(value: &'b [u8], facts: &mut Facts<'b>) -> Result<(), &'static str> {
    for token in value.split(|b| *b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            facts.keep_alive = false;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            facts.keep_alive = true;
        }
        if !token.is_empty() {
            if facts.n_tokens == CONNECTION_TOKENS_MAX {
                return Err("too many Connection tokens");
            }
            facts.tokens[facts.n_tokens] = token;
            facts.n_tokens += 1;
        }
    }
    Ok(())
}

/// `HTTP/1.1`, the status and the backend's reason (the canonical one when it sent none).
fn write_status_line(out: &mut Vec<u8>, status: u16, reason: Option<&str>) {
    let reason = reason
        .filter(|r| !r.is_empty())
        .or_else(|| http::StatusCode::from_u16(status).ok()?.canonical_reason())
        .unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The backend's headers, in order, but for hop-by-hop ones, the ones its `Connection` names
/// and `Content-Length` (re-stated from the framing).
fn write_headers(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], tokens: &[&[u8]]) {
    for h in headers {
        let name = h.name.as_bytes();
        if HOP_BY_HOP
            .iter()
            .any(|x| x.as_bytes().eq_ignore_ascii_case(name))
            || name.eq_ignore_ascii_case(b"content-length")
            || tokens.iter().any(|t| t.eq_ignore_ascii_case(name))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// The framing, re-stated.
fn write_framing(out: &mut Vec<u8>, framing: Framing, head_request: bool, facts: &Facts<'_>) {
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        // A HEAD answer states the length a GET would get, as the backend said it.
        Framing::Empty if head_request => {
            if let Some(n) = facts.length {
                out.extend_from_slice(b"content-length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            } else if facts.chunked {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
        }
        Framing::Empty | Framing::UntilClose => {}
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// What this hop adds: `Strict-Transport-Security` and `Alt-Svc` when configured and absent,
/// `Date` when absent, `Connection: close` when this response is the connection's last.
fn write_added(out: &mut Vec<u8>, added: Added<'_>, facts: &Facts<'_>, last: bool) {
    if let (Some(value), false) = (added.hsts, facts.has_hsts) {
        out.extend_from_slice(b"strict-transport-security: ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let (Some(value), false) = (added.alt_svc, facts.has_alt_svc) {
        out.extend_from_slice(b"alt-svc: ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !facts.has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if last {
        out.extend_from_slice(b"connection: close\r\n");
    }
}

/// Appends `n` in decimal (what `write!` does, without the formatting machinery).
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(crate::access_log::decimal(n, &mut [0; 20]));
}

/// A decimal `Content-Length` (digits only, no sign, no spaces inside; at most 19 digits).
fn digits(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// The sidecar's own short answer, as the hyper path's `local` makes it.
pub(super) fn local_response(
    status: u16,
    message: &str,
    added: Added<'_>,
    close: bool,
    out: &mut Vec<u8>,
) {
    use std::io::Write;
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let body = format!("{status} {reason}: {message}\n");
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\ndate: {}\r\n{}\r\n{body}",
        body.len(),
        httpdate::fmt_http_date(SystemTime::now()),
        if close { "connection: close\r\n" } else { "" },
    );
    for (name, value) in [
        (&b"strict-transport-security: "[..], added.hsts),
        (&b"alt-svc: "[..], added.alt_svc),
    ] {
        if let Some(value) = value {
            // Before the blank line that ends the head.
            let at = out.len() - body.len() - 2;
            let line = [name, value, b"\r\n"].concat();
            out.splice(at..at, line);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answer(buf: &[u8], head_request: bool, close: bool) -> (Reply, String) {
        let mut out = Vec::new();
        let r = reply(
            buf,
            head_request,
            Added {
                hsts: Some(b"max-age=60"),
                alt_svc: None,
            },
            close,
            &mut out,
        );
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_framing_is_checked_and_restated() {
        let (r, out) = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nDate: x\r\n\r\nhello",
            false,
            false,
        );
        let Reply::Final(a) = r else { panic!("{r:?}") };
        assert_eq!(
            (a.status, a.framing, a.reusable),
            (200, Framing::Length(5), true)
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nDate: x\r\ncontent-length: 5\r\nstrict-transport-security: max-age=60\r\n\r\n"
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nDate: x\r\nStrict-Transport-Security: max-age=1\r\n\r\n";
        let (r, out) = answer(chunked, false, true);
        let Reply::Final(a) = r else { panic!() };
        assert_eq!(a.framing, Framing::Chunked);
        assert!(
            out.ends_with("transfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{out}"
        );
        assert!(!out.contains("max-age=60"));
        for (bad, why) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
                "both Content-Length and Transfer-Encoding",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "unsupported Transfer-Encoding",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "101 without an upgrade",
            ),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "invalid response head"),
        ] {
            assert_eq!(answer(bad, false, false).0, Reply::Bad(why));
        }
        assert_eq!(
            answer(
                b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200",
                false,
                false
            )
            .0,
            Reply::Interim(37)
        );
        // No body: HEAD, 204, 304, whatever the length says; HEAD keeps the length.
        let (r, out) = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nDate: x\r\n\r\n",
            true,
            false,
        );
        assert!(matches!(
            r,
            Reply::Final(Answer {
                framing: Framing::Empty,
                reusable: true,
                ..
            })
        ));
        assert!(out.contains("content-length: 9\r\n"));
        let (r, _) = answer(
            b"HTTP/1.1 304 Not Modified\r\nDate: x\r\n\r\n",
            false,
            false,
        );
        assert!(matches!(
            r,
            Reply::Final(Answer {
                framing: Framing::Empty,
                ..
            })
        ));
        // Until close: the client connection closes after it; the backend's is not reused.
        let (r, out) = answer(b"HTTP/1.0 200 OK\r\nDate: x\r\n\r\n", false, false);
        assert!(matches!(
            r,
            Reply::Final(Answer {
                framing: Framing::UntilClose,
                reusable: false,
                ..
            })
        ));
        assert!(out.ends_with("connection: close\r\n\r\n"));
        let (r, _) = answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            false,
            false,
        );
        assert!(matches!(
            r,
            Reply::Final(Answer {
                reusable: false,
                ..
            })
        ));
        assert_eq!(
            answer(b"HTTP/1.1 200 OK\r\nContent-Le", false, false).0,
            Reply::Partial
        );
    }

    #[test]
    fn local_answers_are_the_hyper_paths() {
        let mut out = Vec::new();
        local_response(502, "backend unreachable", Added::default(), true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 37\r\n"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\n502 Bad Gateway: backend unreachable\n"));
    }
}
