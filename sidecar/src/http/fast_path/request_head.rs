//! The request head on the fast path: parsed once with `httparse` (no allocation per header),
//! taken only when it is the common request (HTTP/1.1, origin-form, one valid `Host`, no body
//! or one of at most [`FAST_BODY_MAX`] bytes framed by one plain `Content-Length` or by strict
//! chunking ([`chunked_end`]), no upgrade, not gRPC), and the backend's head written from it mostly as the bytes it arrived
//! in: hop-by-hop, spoofable forwarding and client-certificate headers left out, this hop's
//! added ([`classify`]). Anything else, and anything this parser is not sure of, is hyper's
//! ([`Head::Fallback`]). The differential test below checks that every head taken is one hyper
//! parses to the same method, target and end of head, and that the headers forwarded are the
//! ones the hyper path's rewrite ([`forward_headers`](crate::http::headers::forward_headers))
//! forwards.

use http::uri::PathAndQuery;
use http::Method;

use super::CONNECTION_TOKENS_MAX;
use crate::http::grpc::is_grpc_content_type;
use crate::http::headers::{header_safe, identity_headers, CLIENT_CERT_HEADERS, HOP_BY_HOP};
use crate::http::{MAX_HEADERS, MAX_HEAD_BYTES};
use crate::tls::client_auth::ClientIdentity;

/// Largest request body the fast path relays (read whole before the request goes to the
/// backend, so a body that ends early never reaches it): one TLS record. A larger one is
/// hyper's, which streams it.
pub(super) const FAST_BODY_MAX: u64 = 16 * 1024;

/// What the fast path makes of the bytes at the start of the read buffer.
#[derive(Debug)]
pub(super) enum Head {
    /// Not a whole head yet (and under [`MAX_HEAD_BYTES`]).
    Partial,
    /// hyper's to serve, from these bytes on.
    Fallback,
    /// A request the fast path serves; its backend head is in the output buffer.
    Fast(Plan),
}

/// A request the fast path serves.
#[derive(Debug)]
pub(super) struct Plan {
    /// Bytes of the read buffer the head took.
    pub head_len: usize,
    pub method: Method,
    pub path: PathAndQuery,
    /// The client asked to close after this request (`Connection: close`).
    pub close: bool,
    /// Repeatable on a fresh backend connection if a pooled one turns out closed (RFC 9110
    /// section 9.2.2: idempotent, and no body).
    pub idempotent: bool,
    /// The body's length (`Content-Length`; 0 without one), at most [`FAST_BODY_MAX`]: the
    /// bytes after the head, forwarded as they are.
    pub body_len: usize,
    /// `Expect: 100-continue`: the client may wait for a `100 Continue` before its body.
    pub expect_continue: bool,
    /// `Transfer-Encoding: chunked`: the body is taken if [`chunked_end`] finds its end within
    /// [`FAST_BODY_MAX`] bytes, and forwarded as it came.
    pub chunked: bool,
}

/// This hop's facts for the forwarding headers.
pub(super) struct Hop<'a> {
    /// The client's address as `X-Forwarded-For` names it, and this listener's port: written
    /// into every head, so formatted once per connection.
    pub client_ip: &'a str,
    pub listen_port: &'a str,
    pub client: Option<&'a ClientIdentity>,
    /// Requests go to the backend over HTTP/1.1 (not all of them over h2c).
    pub http1_backend: bool,
}

/// Parses the head at the start of `buf` and, when the fast path takes it, writes the backend's
/// head into `out` (cleared first).
pub(super) fn classify(buf: &[u8], hop: &Hop<'_>, out: &mut Vec<u8>) -> Head {
    // Left uninitialised: httparse fills what it parses (3 KiB not cleared per request).
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Head::Partial,
        _ => return Head::Fallback,
    };
    if head_len > MAX_HEAD_BYTES || req.version != Some(1) || !hop.http1_backend {
        return Head::Fallback;
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Head::Fallback;
    };
    if method == "CONNECT" || method == "PRI" || !target.starts_with('/') {
        return Head::Fallback;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Head::Fallback;
    };
    let Ok(path) = PathAndQuery::try_from(target) else {
        return Head::Fallback;
    };

    // First pass: what decides the request's fate.
    let Some(facts) = scan(req.headers) else {
        return Head::Fallback;
    };
    let Some(host) = facts.host else {
        return Head::Fallback;
    };
    // A body's framing header must reach the backend: not when `Connection` names it.
    if facts.body_len > 0
        && facts
            .tokens()
            .iter()
            .any(|t| t.eq_ignore_ascii_case(b"content-length"))
    {
        return Head::Fallback;
    }
    if std::str::from_utf8(host)
        .ok()
        .and_then(shared::addr::authority_host)
        .is_none()
    {
        return Head::Fallback;
    }

    // Second pass: the backend's head.
    out.clear();
    write_head(out, &method, &path, host, &facts, req.headers, hop);
    let idempotent = facts.body_len == 0
        && !facts.chunked
        && matches!(
            method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
    Head::Fast(Plan {
        head_len,
        method,
        path,
        close: facts.close,
        idempotent,
        body_len: facts.body_len,
        expect_continue: facts.expect_continue,
        chunked: facts.chunked,
    })
}

/// What the first pass over the request's headers found.
struct Facts<'b> {
    host: Option<&'b [u8]>,
    /// The `Connection` header's tokens: the headers it names are not forwarded.
    tokens: [&'b [u8]; CONNECTION_TOKENS_MAX],
    n_tokens: usize,
    close: bool,
    /// The client accepts trailers (`TE: trailers`).
    trailers: bool,
    /// `Content-Length`, when there is one.
    body_len: usize,
    /// `Expect: 100-continue` (the one expectation defined; any other is hyper's).
    expect_continue: bool,
    /// `Transfer-Encoding: chunked`, alone.
    chunked: bool,
}

impl<'b> Facts<'b> {
    fn tokens(&self) -> &[&'b [u8]] {
        &self.tokens[..self.n_tokens]
    }
}

/// The first pass: `None` when a header makes the request hyper's.
#[inline]
fn scan<'b>(headers: &[httparse::Header<'b>]) -> Option<Facts<'b>> {
    let mut facts = Facts {
        host: None,
        tokens: [&[]; CONNECTION_TOKENS_MAX],
        n_tokens: 0,
        close: false,
        trailers: false,
        body_len: 0,
        expect_continue: false,
        chunked: false,
    };
    let mut length_seen = false;
    for h in headers {
        let name = h.name.as_bytes();
        let value = h.value;
        if name.eq_ignore_ascii_case(b"host") {
            if facts.host.is_some() {
                return None;
            }
            facts.host = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // One plain decimal length up to FAST_BODY_MAX; lists, signs, spaces, repeats and
            // larger bodies are hyper's.
            if length_seen {
                return None;
            }
            facts.body_len = body_length(value)?;
            length_seen = true;
        } else if name.eq_ignore_ascii_case(b"expect") {
            if facts.expect_continue || !value.eq_ignore_ascii_case(b"100-continue") {
                return None;
            }
            facts.expect_continue = true;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // `chunked` alone, once; any other coding, a list or a repeat is hyper's.
            if facts.chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return None;
            }
            facts.chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"http2-settings")
        {
            return None;
        } else if name.eq_ignore_ascii_case(b"content-type") {
            if is_grpc_content_type(value) {
                return None;
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            if !connection_tokens(value, &mut facts) {
                return None;
            }
        } else if name.eq_ignore_ascii_case(b"te") {
            facts.trailers |= asks_trailers(value);
        }
    }
    // Both framings: a smuggling attempt, hyper's to refuse.
    if facts.chunked && length_seen {
        return None;
    }
    Some(facts)
}

/// The end of a chunked request body at the start of `body`, read strictly (RFC 9112 section
/// 7.1 at its plainest): each size 1 to 4 hex digits then CRLF, its data then CRLF, the last
/// chunk `0` then CRLF and no trailer fields. `Ok(Some(n))`: the body is `body[..n]`;
/// `Ok(None)`: not all here yet; `Err`: anything else (extensions, trailers, whitespace, a bare
/// LF, a longer size), which is hyper's to read or refuse.
pub(super) fn chunked_end(body: &[u8]) -> Result<Option<usize>, ()> {
    let mut at = 0;
    loop {
        let line = &body[at..];
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == line.len() {
            return if digits > 4 { Err(()) } else { Ok(None) };
        }
        if digits == 0 || digits > 4 {
            return Err(());
        }
        let size = line[..digits].iter().fold(0usize, |n, d| {
            n * 16 + (*d as char).to_digit(16).unwrap_or(0) as usize
        });
        // The size line's CRLF, the data and its CRLF (or, for the last chunk, the final CRLF).
        let data_at = digits + 2;
        let need = if size == 0 {
            data_at + 2
        } else {
            data_at + size + 2
        };
        let have = line.len().min(need);
        let expected_crlf = |i: usize| if i % 2 == 0 { b'\r' } else { b'\n' };
        for (i, b) in line[digits..have.max(digits).min(data_at)]
            .iter()
            .enumerate()
        {
            if *b != expected_crlf(i) {
                return Err(());
            }
        }
        let tail_at = need - 2;
        for (i, b) in line[tail_at.min(have)..have].iter().enumerate() {
            if *b != expected_crlf(i) {
                return Err(());
            }
        }
        if line.len() < need {
            return Ok(None);
        }
        at += need;
        if size == 0 {
            return Ok(Some(at));
        }
    }
}

/// A `Content-Length` value the fast path takes: 1 to 5 ASCII digits, at most
/// [`FAST_BODY_MAX`].
#[inline]
fn body_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 5 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    (n <= FAST_BODY_MAX).then_some(n as usize)
}

/// Notes a `Connection` value's tokens; `false` when they make the request hyper's (an
/// upgrade, or more tokens than are kept).
#[inline]
fn connection_tokens<'b>(value: &'b [u8], facts: &mut Facts<'b>) -> bool {
    let Some(text) = visible(value) else {
        return true;
    };
    for token in text.split(|b| *b == b',') {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            facts.close = true;
        }
        if token.eq_ignore_ascii_case(b"upgrade") {
            return false;
        }
        if token.is_empty() {
            continue;
        }
        if facts.n_tokens == CONNECTION_TOKENS_MAX {
            return false;
        }
        facts.tokens[facts.n_tokens] = token;
        facts.n_tokens += 1;
    }
    true
}

/// A `TE` value that names `trailers`.
#[inline]
fn asks_trailers(value: &[u8]) -> bool {
    visible(value).is_some_and(|text| {
        text.split(|b| *b == b',').any(|t| {
            t.split(|b| *b == b';')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
        })
    })
}

/// The second pass: the backend's head, the request's headers forwarded in order and this
/// hop's added.
fn write_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: &PathAndQuery,
    host: &[u8],
    facts: &Facts<'_>,
    headers: &[httparse::Header<'_>],
    hop: &Hop<'_>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let tokens = facts.tokens();
    // A `Connection` naming `X-Forwarded-For` makes the client's values hop-by-hop: dropped, as
    // the hyper path drops them before appending this client.
    let xff_named = tokens
        .iter()
        .any(|t| t.eq_ignore_ascii_case(b"x-forwarded-for"));
    let mut xff_prior = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            xff_prior |= !xff_named && visible(h.value).is_some();
            continue;
        }
        if dropped(name) || tokens.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if facts.trailers {
        out.extend_from_slice(b"te: trailers\r\n");
    }
    // Hop-by-hop, so not copied above; the body is forwarded as it came, chunked.
    if facts.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    let prior = headers
        .iter()
        .filter(|h| xff_prior && h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .filter_map(|h| visible(h.value));
    write_forwarded(out, prior, host, hop);
    out.extend_from_slice(b"\r\n");
}

/// The backend's head (into `out`, cleared first) for a request an HTTP/2 client sent without a
/// body, on the HTTP/2 fast path: what the hyper path's rewrite makes of it (`Host` from the
/// authority, hop-by-hop, spoofable forwarding and client-certificate headers left out, `TE:
/// trailers` since HTTP/2 clients take trailers, this hop's headers added), written once
/// instead of rewritten in a header map and serialised again. `false` (nothing to send) for a
/// request with headers HTTP/2 does not allow (`Connection`, `Transfer-Encoding`): hyper's.
pub(super) fn write_h2_head(
    out: &mut Vec<u8>,
    method: &Method,
    path: &str,
    host: &[u8],
    headers: &http::HeaderMap,
    hop: &Hop<'_>,
) -> bool {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\n");
    let mut xff_prior = false;
    for (name, value) in headers {
        let name = name.as_str().as_bytes();
        if name == b"x-forwarded-for" {
            xff_prior |= visible(value.as_bytes()).is_some();
            continue;
        }
        if name == b"connection" || name == b"transfer-encoding" {
            return false;
        }
        if dropped(name) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"te: trailers\r\n");
    if xff_prior {
        let prior = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| visible(v.as_bytes()));
        write_forwarded(out, prior, host, hop);
    } else {
        write_forwarded(out, std::iter::empty(), host, hop);
    }
    out.extend_from_slice(b"\r\n");
    true
}

/// This hop's headers: `X-Forwarded-*` and, for a client with a certificate, its identity.
/// `prior`: the client's `X-Forwarded-For` values the hyper path keeps (visible ASCII, in order).
fn write_forwarded<'v>(
    out: &mut Vec<u8>,
    prior: impl Iterator<Item = &'v [u8]>,
    host: &[u8],
    hop: &Hop<'_>,
) {
    // `X-Forwarded-For` appended to (the hyper path's `set_forwarded`): prior values, then
    // this client.
    out.extend_from_slice(b"x-forwarded-for: ");
    for v in prior {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(hop.client_ip.as_bytes());
    out.extend_from_slice(b"\r\nx-forwarded-proto: https\r\nx-forwarded-host: ");
    out.extend_from_slice(host);
    out.extend_from_slice(b"\r\nx-forwarded-port: ");
    out.extend_from_slice(hop.listen_port.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(id) = hop.client {
        for (name, value) in identity_headers(id) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend(header_safe(value));
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Request headers never forwarded as they came: hop-by-hop ones, the ones this hop sets.
fn dropped(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
        || CLIENT_CERT_HEADERS
            .iter()
            .any(|h| h.as_bytes().eq_ignore_ascii_case(name))
        || name.eq_ignore_ascii_case(b"host")
        || name.eq_ignore_ascii_case(b"x-forwarded-proto")
        || name.eq_ignore_ascii_case(b"x-forwarded-host")
        || name.eq_ignore_ascii_case(b"x-forwarded-port")
}

/// The value, if it is what `HeaderValue::to_str` accepts (visible ASCII, space, tab): the
/// values the hyper path reads as text.
fn visible(value: &[u8]) -> Option<&[u8]> {
    value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        .then_some(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use crate::http::fast_path::testgen::Rng;

    use bytes::Bytes;
    use http::header::{HeaderMap, HeaderValue};
    use http_body_util::BodyExt;

    use crate::http::headers::{accepts_trailers, forward_headers, Forward};

    const PEER: &str = "192.0.2.7:5555";

    fn hop(client: Option<&ClientIdentity>) -> Hop<'_> {
        Hop {
            client_ip: "192.0.2.7",
            listen_port: "8443",
            client,
            http1_backend: true,
        }
    }

    fn fast(head: &[u8]) -> Option<(Plan, Vec<u8>)> {
        let mut out = Vec::new();
        match classify(head, &hop(None), &mut out) {
            Head::Fast(p) => Some((p, out)),
            _ => None,
        }
    }

    #[test]
    fn the_common_request_is_taken_and_forwarded_with_this_hops_headers() {
        let head = b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: http\r\nX-Client-Cert-Subject: CN=admin\r\n\r\nGET /next";
        let (plan, out) = fast(head).expect("fast");
        assert_eq!(plan.head_len, head.len() - b"GET /next".len());
        assert_eq!(plan.path.as_str(), "/a?b=c");
        assert!(!plan.close && plan.idempotent);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "GET /a?b=c HTTP/1.1\r\nhost: example.com\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.1, 192.0.2.7\r\nx-forwarded-proto: https\r\nx-forwarded-host: example.com\r\nx-forwarded-port: 8443\r\n\r\n"
        );
    }

    #[test]
    fn a_small_body_framed_by_content_length_is_taken_and_its_request_is_not_retried() {
        let head = b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let (plan, out) = fast(head).expect("fast");
        assert_eq!(plan.head_len, head.len() - 3);
        assert_eq!(plan.body_len, 3);
        assert!(!plan.idempotent, "a body is never sent twice");
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Content-Length: 3\r\n"));
        let put = b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 16384\r\n\r\n";
        let (plan, _) = fast(put).expect("fast");
        assert_eq!((plan.body_len, plan.idempotent), (16384, false));
        let (plan, _) =
            fast(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n").expect("fast");
        assert_eq!((plan.body_len, plan.idempotent), (0, true));
        let (plan, out) = fast(
            b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\n",
        )
        .expect("fast");
        assert!(plan.expect_continue && plan.body_len == 2);
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("Expect: 100-Continue\r\n"),
            "forwarded, as the hyper path forwards it"
        );
        assert_eq!(body_length(b"007"), Some(7));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 ",
            b"0x10",
            b"16385",
            b"123456",
            b"1,1",
        ] {
            assert_eq!(body_length(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_strictly_chunked_body_is_found_and_anything_looser_is_hyper_s() {
        assert_eq!(chunked_end(b"5\r\nhello\r\n0\r\n\r\nGET"), Ok(Some(15)));
        assert_eq!(chunked_end(b"0\r\n\r\n"), Ok(Some(5)));
        assert_eq!(
            chunked_end(b"3\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\n"),
            Ok(Some(28))
        );
        assert_eq!(chunked_end(b"0005\r\nhello\r\n0\r\n\r\n"), Ok(Some(18)));
        // Every prefix of a good body is "not yet".
        let good = b"5\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\n\r\n";
        for n in 0..good.len() {
            assert_eq!(chunked_end(&good[..n]), Ok(None), "{n}");
        }
        assert_eq!(chunked_end(good), Ok(Some(good.len())));
        for bad in [
            &b"5;ext=1\r\nhello\r\n0\r\n\r\n"[..],
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\r\nX-Trailer: 1\r\n\r\n",
            b"0\r\n\n",
            b"00005\r\nhello\r\n0\r\n\r\n",
            b"-5\r\n",
            b"g\r\n",
            b"\r\n",
            b"12345",
        ] {
            assert_eq!(
                chunked_end(bad),
                Err(()),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let (plan, out) =
            fast(b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
                .expect("fast");
        assert!(plan.chunked && !plan.idempotent && plan.body_len == 0);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("transfer-encoding: chunked\r\n"));
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 16385\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: content-length\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let mut out = Vec::new();
            assert!(
                matches!(classify(head, &hop(None), &mut out), Head::Fallback),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let mut out = Vec::new();
        assert!(matches!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n", &hop(None), &mut out),
            Head::Partial
        ));
        // A head that never ends is hyper's (it answers 431) once it passes the limit.
        let mut long = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        long.resize(MAX_HEAD_BYTES + 1, b'a');
        assert!(matches!(
            classify(&long, &hop(None), &mut out),
            Head::Fallback
        ));
        // gRPC backends over h2c: everything is hyper's.
        let no_h1 = Hop {
            http1_backend: false,
            ..hop(None)
        };
        assert!(matches!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &no_h1, &mut out),
            Head::Fallback
        ));
    }

    // ---- the differential test ----

    const METHODS: &[&str] = &[
        "GET", "GET", "GET", "HEAD", "POST", "DELETE", "OPTIONS", "PUT", "PATCH", "BREW",
        "CONNECT", "PRI", "get", "G\0T", "G T",
    ];
    const TARGETS: &[&str] = &[
        "/",
        "/",
        "/a?b=c",
        "/%2e%2e/x",
        "//double",
        "/?",
        "/a b",
        "*",
        "http://example.com/",
        "/\x7f",
        "/caf\u{e9}",
        "/a#frag",
        "/\"q\"",
        "/{x}",
    ];
    const VERSIONS: &[&str] = &[
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.1",
        "HTTP/1.0",
        "HTTP/2.0",
        "HTTP/1.2",
        "http/1.1",
        "HTTP/1.1 ",
        "HTTP/1.10",
    ];
    const HEADERS: &[&str] = &[
        "Accept: */*",
        "User-Agent: gen/1",
        "Host: example.com",
        "Host: example.com:8443",
        "Host: [::1]:8443",
        "Host: ",
        "Host: a b",
        "Host: ex@mple.com",
        "Host : example.com",
        "Host:\texample.com\t",
        "host:EXAMPLE.com",
        "Content-Length: 0",
        "Content-Length: 00",
        "Content-Length: +0",
        "Content-Length:  0 ",
        "Content-Length: 0, 0",
        "Content-Length: 5",
        "Content-Length: -1",
        "Content-Length: 99999999999999999999999",
        "Content-Length: 16",
        "Content-Length: 007",
        "Content-Length: 16384",
        "Content-Length: 16385",
        "Transfer-Encoding: chunked",
        "Transfer-Encoding: chunked, identity",
        "Transfer-Encoding: identity",
        "Transfer-Encoding : chunked",
        "X-Fold: a\r\n b",
        "X-Fold: a\n\tb",
        "X-Nul: a\0b",
        "X-Ctl: a\x01b",
        "X-Del: a\x7fb",
        "X-Empty:",
        "X-Space:    padded   ",
        "Connection: close",
        "Connection: keep-alive",
        "Connection: x-forwarded-for",
        "Connection: content-length",
        "Connection: upgrade",
        "Connection: Close, X-Secret",
        "Connection: te, host",
        "Connection: ,,",
        "X-Secret: 1",
        "Upgrade: websocket",
        "Expect: 100-continue",
        "Expect: 100-continue",
        "expect: 100-CONTINUE",
        "Expect: 200-ok",
        "TE: trailers",
        "TE: gzip;q=1, trailers;q=0.5",
        "TE: chunked",
        "Trailer: x-checksum",
        "X-Forwarded-For: 10.0.0.1",
        "X-Forwarded-For: 10.0.0.2, 10.0.0.3",
        "x-forwarded-for: caf\u{e9}",
        "X-Forwarded-Proto: http",
        "X-Forwarded-Host: evil.example",
        "X-Forwarded-Port: 1",
        "X-Client-Cert-Subject: CN=admin",
        "x-client-cert-san: URI:spiffe://evil",
        "Forwarded: for=1.2.3.4",
        "Content-Type: application/grpc",
        "Content-Type: application/grpc+proto",
        "Content-Type: text/plain",
        "Proxy-Authorization: Basic eA==",
        "Proxy-Connection: keep-alive",
        "HTTP2-Settings: AAMAAABkAAQAAP__",
        "Keep-Alive: timeout=5",
        "\0Bad: x",
        ": novalue",
        "X Bad: x",
        "X-Bad\t: x",
        "X-Long: LONG",
        "Cookie: a=b; c=d",
    ];
    const ENDINGS: &[&str] = &["\r\n", "\r\n", "\r\n", "\r\n", "\r\n", "\n", "\r", "\r\r\n"];
    /// Chunked bodies, as sent, and the data each carries: plain ones and the ones a lax parser
    /// might read otherwise (the fast path must refuse those, or read what hyper reads).
    const CHUNKED: &[(&str, &str)] = &[
        ("5\r\nhello\r\n0\r\n\r\n", "hello"),
        ("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", "abcde"),
        ("0\r\n\r\n", ""),
        ("A\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
        ("00a\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
        ("5;ext=1\r\nhello\r\n0\r\n\r\n", "hello"),
        ("5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n", "hello"),
        ("5\nhello\n0\n\n", "hello"),
        ("5 \r\nhello\r\n0\r\n\r\n", "hello"),
    ];

    fn generate(rng: &mut Rng) -> Vec<u8> {
        let mut head = String::new();
        if rng.chance(3) {
            head.push_str("\r\n");
        }
        // Each part is the clean common one more often than not, so that enough heads are
        // ones the fast path takes and the hostile parts are tried one or two at a time.
        let part = |rng: &mut Rng, items: &[&'static str]| -> &'static str {
            if rng.chance(60) {
                items[0]
            } else {
                items[(rng.next() % items.len() as u64) as usize]
            }
        };
        head.push_str(part(rng, METHODS));
        head.push(' ');
        head.push_str(part(rng, TARGETS));
        head.push(' ');
        head.push_str(part(rng, VERSIONS));
        head.push_str(part(rng, ENDINGS));
        if rng.chance(75) {
            head.push_str("Host: example.com\r\n");
        }
        for _ in 0..(rng.next() % 6) {
            let line = part(rng, HEADERS).replace("LONG", &"a".repeat(9000));
            head.push_str(&line);
            head.push_str(part(rng, ENDINGS));
        }
        head.push_str(if rng.chance(95) { "\r\n" } else { "\n" });
        head.into_bytes()
    }

    /// What hyper's server made of a connection's bytes: each request's method, target,
    /// headers and body.
    async fn hyper_reads(bytes: Vec<u8>) -> Vec<(Method, String, HeaderMap, Vec<u8>)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let record = record.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes().to_vec())
                        .unwrap_or_default();
                    let target = parts
                        .uri
                        .path_and_query()
                        .map_or(String::new(), |p| p.to_string());
                    record
                        .lock()
                        .unwrap()
                        .push((parts.method, target, parts.headers, body));
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                        Bytes,
                    >::new(
                    )))
                }
            });
        let conn = hyper::server::conn::http1::Builder::new()
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD_BYTES.max(8192) * 2)
            .max_header_size(MAX_HEAD_BYTES)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        let task = tokio::spawn(conn);
        client.write_all(&bytes).await.unwrap();
        // Read answers until both came or hyper closed the connection (it refused the head);
        // the bound only keeps a hung parser from hanging the test.
        let mut sink = Vec::new();
        let mut chunk = [0u8; 4096];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            // Final answers only: hyper may send a `100 Continue` first.
            while sink.windows(9).filter(|w| w == b"HTTP/1.1 ").count()
                - sink.windows(12).filter(|w| w == b"HTTP/1.1 100").count()
                < 2
            {
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        drop(client);
        let _ = task.await;
        let out = std::mem::take(&mut *seen.lock().unwrap());
        out
    }

    /// The headers of a head as (lowercase name, value), sorted: order is not meaning.
    fn header_set(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        v.sort();
        v
    }

    fn parsed_set(head: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        assert!(matches!(req.parse(head), Ok(httparse::Status::Complete(_))));
        let mut v: Vec<_> = req
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn fast_heads_frame_as_hyper_frames_them() {
        let identity = ClientIdentity {
            subject: "CN=svc\u{1}a".into(),
            san: "URI:spiffe://d/a".into(),
            fingerprint: String::new(),
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut taken, mut handed, mut bodies) = (0, 0, 0);
        for case in 0..4000 {
            let head = generate(&mut rng);
            let client = (case % 3 == 0).then_some(&identity);
            let mut out = Vec::new();
            let plan = match classify(&head, &hop(client), &mut out) {
                Head::Fast(plan) => plan,
                Head::Fallback => {
                    handed += 1;
                    continue;
                }
                // The generator's line endings can leave a head unfinished: hyper would wait too.
                Head::Partial => continue,
            };
            taken += 1;
            let show = String::from_utf8_lossy(&head).into_owned();
            assert_eq!(plan.head_len, head.len(), "case {case}: {show:?}");
            // hyper, given the same bytes, the body the head announces and a second request
            // after them, must read the same request, with that body, and then the second one:
            // the same framing.
            let (wire, body): (Vec<u8>, Vec<u8>) = if plan.chunked {
                let (wire, data) = CHUNKED[case % CHUNKED.len()];
                match chunked_end(wire.as_bytes()) {
                    // The fast path reads exactly this body: hyper must read the same.
                    Ok(Some(n)) => {
                        assert_eq!(n, wire.len(), "case {case}: {wire:?}");
                        (wire.as_bytes().to_vec(), data.as_bytes().to_vec())
                    }
                    // Not the fast path's: hyper takes it from the head on.
                    _ => {
                        handed += 1;
                        continue;
                    }
                }
            } else {
                let body: Vec<u8> = (0..plan.body_len).map(|i| b'a' + (i % 26) as u8).collect();
                (body.clone(), body)
            };
            bodies += usize::from(!wire.is_empty());
            let mut bytes = head.clone();
            bytes.extend_from_slice(&wire);
            bytes.extend_from_slice(b"GET /second HTTP/1.1\r\nHost: b\r\n\r\n");
            let seen = hyper_reads(bytes).await;
            // ... unless the client asked to close: then hyper closes after the first, as the
            // fast path does.
            let expect = if plan.close { 1 } else { 2 };
            assert_eq!(
                seen.len(),
                expect,
                "case {case}: hyper read {:?} from {show:?}",
                seen.iter().map(|s| (&s.0, &s.1)).collect::<Vec<_>>()
            );
            let (method, target, headers, hyper_body) = &seen[0];
            assert_eq!(
                (method, target.as_str()),
                (&plan.method, plan.path.as_str()),
                "case {case}: {show:?}"
            );
            assert_eq!(
                hyper_body, &body,
                "case {case}: hyper read another body from {show:?}"
            );
            if !plan.close {
                assert_eq!(seen[1].1, "/second", "case {case}: {show:?}");
            }
            // The headers the backend gets: the hyper path's rules on hyper's reading (where
            // hyper's client then frames a streamed body as chunked itself).
            let mut expected = headers.clone();
            let host = headers.get(http::header::HOST).cloned().unwrap();
            let trailers = accepts_trailers(headers);
            forward_headers(
                &mut expected,
                &Forward {
                    peer: PEER.parse().unwrap(),
                    host: &host,
                    listen_port: 8443,
                    client,
                    trailers,
                    upgrade: None,
                },
            );
            expected.insert(http::header::HOST, host);
            if plan.chunked {
                expected.insert(
                    http::header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            assert_eq!(
                parsed_set(&out),
                header_set(&expected),
                "case {case}: {show:?}"
            );
        }
        // The generator must exercise both sides.
        assert!(
            taken > 500 && handed > 500 && bodies > 20,
            "taken {taken} ({bodies} with a body), handed over {handed}"
        );
    }
}
