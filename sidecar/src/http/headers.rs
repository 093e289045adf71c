//! The header rules of every forwarded request and response, as pure functions: which requests
//! are refused for their framing or their host (request smuggling, spoofed authorities), which
//! headers never cross a proxy, which upgrades pass, and the headers this hop sets (forwarding,
//! the verified client certificate, HSTS). The hyper path applies them to parsed headers; the
//! HTTP/1.1 fast path writes the same set into the bytes it forwards, and its differential test
//! checks the two agree.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

use crate::tls::client_auth::ClientIdentity;

/// Headers that describe one hop and never cross a proxy (RFC 9110 section 7.6.1), plus the
/// legacy ones proxies traditionally drop too, and `HTTP2-Settings`, which belongs to the h2c
/// upgrade that is never passed. `Trailer` is not among them: it announces end-to-end trailer
/// fields (RFC 9110 section 6.6.2), and HTTP/1.1 carries only announced ones. `TE` is, and is
/// put back as `TE: trailers` when the client accepts trailers.
pub(super) const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "http2-settings",
];

/// Whether an HTTP/1.1 client accepts trailers in the response (`TE: trailers`, RFC 9110
/// section 10.1.4).
pub(super) fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// Refuses requests whose framing two parsers could read differently (request smuggling).
/// hyper already refuses differing duplicate `Content-Length` and invalid header bytes.
pub(super) fn check_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    if headers.contains_key(header::TRANSFER_ENCODING)
        && headers.contains_key(header::CONTENT_LENGTH)
    {
        return Err("both Content-Length and Transfer-Encoding");
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next() {
        if lengths.any(|other| other != first) {
            return Err("conflicting Content-Length headers");
        }
    }
    Ok(())
}

/// The authority a request is for, which becomes the backend's `Host` and
/// `X-Forwarded-Host`: `Ok(None)` when the request names none (HTTP/1.0 without `Host`).
///
/// - More than one `Host` header is refused (RFC 9112 section 3.2).
/// - A request-target with an authority (absolute form in HTTP/1.1, `:authority` in HTTP/2)
///   wins over `Host` (RFC 9112 section 3.2.2); in HTTP/2 a `Host` that names another
///   authority is refused (RFC 9113 section 8.3.1).
/// - The authority must be `host[:port]`: no user info, path or other characters.
pub(super) fn request_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, &'static str> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    if let Some(authority) = uri.authority() {
        valid_authority(authority.as_str().as_bytes()).ok_or("invalid request authority")?;
        if version == Version::HTTP_2 || version == Version::HTTP_3 {
            if let Some(h) = host {
                if !h
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
                {
                    return Err("Host differs from :authority");
                }
            }
        }
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| "invalid request authority");
    }
    match host {
        Some(h) => {
            valid_authority(h.as_bytes()).ok_or("invalid Host header")?;
            Ok(Some(h.clone()))
        }
        None if version == Version::HTTP_11 => Err("missing Host header"),
        None => Ok(None),
    }
}

/// `host[:port]` with a DNS name, an IPv4 address or a bracketed IPv6 address (the one rule for
/// request authorities, `shared::addr::authority_host`, which the redirect listener uses too).
fn valid_authority(bytes: &[u8]) -> Option<()> {
    shared::addr::is_authority(std::str::from_utf8(bytes).ok()?).then_some(())
}

/// What to do with an HTTP/1.1 request's `Upgrade`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum UpgradeAsk {
    /// Not an upgrade request.
    None,
    /// Pass the upgrade, offering the backend only these allowed protocols.
    Allowed(HeaderValue),
    /// None of the offered protocols is allowed: forward as a plain request.
    Refused,
}

/// Applies `--allow-upgrade` to a request: only listed protocols (compared by name, before any
/// `/version`) are offered to the backend. HTTP/2 requests never upgrade.
pub(super) fn upgrade_request(h2: bool, headers: &HeaderMap, allowed: &[String]) -> UpgradeAsk {
    if h2 || !is_upgrade(headers) {
        return UpgradeAsk::None;
    }
    let offered: Vec<&str> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split('/').next().unwrap_or(p);
            allowed
                .iter()
                .any(|a| a.eq_ignore_ascii_case(p) || a.eq_ignore_ascii_case(name))
        })
        .collect();
    if offered.is_empty() {
        return UpgradeAsk::Refused;
    }
    match HeaderValue::from_str(&offered.join(", ")) {
        Ok(v) => UpgradeAsk::Allowed(v),
        Err(_) => UpgradeAsk::Refused,
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols.
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers: the fixed list and every header the `Connection` header names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) headers present instead of a hashed remove per known name: this
    // runs twice per request.
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(&name.as_str()) && !doomed.contains(name) {
            doomed.push(name.clone());
        }
    }
    if doomed.is_empty() {
        return;
    }
    if doomed.contains(&header::CONNECTION) {
        for value in headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for token in value.split(',') {
                if let Ok(name) = HeaderName::from_bytes(token.trim().as_bytes()) {
                    doomed.push(name);
                }
            }
        }
    }
    for name in doomed {
        headers.remove(name);
    }
}

/// What the backend's request headers are made from besides the client's.
pub(super) struct Forward<'a> {
    pub peer: SocketAddr,
    /// The authority the client asked for ([`request_host`]).
    pub host: &'a HeaderValue,
    pub listen_port: u16,
    pub client: Option<&'a ClientIdentity>,
    /// The client accepts trailers: `TE: trailers` goes along.
    pub trailers: bool,
    /// An allowed upgrade, offered to the backend.
    pub upgrade: Option<HeaderValue>,
}

/// The header rules of every forwarded request (both paths: the HTTP/1.1 fast path writes the
/// same set, which its differential test checks against this): hop-by-hop headers dropped,
/// `TE: trailers` and an allowed upgrade put back, forwarding and client-certificate headers set.
/// `Host` is the caller's (HTTP/2 backends take `:authority` instead).
pub(super) fn forward_headers(headers: &mut HeaderMap, f: &Forward<'_>) {
    strip_hop_by_hop(headers);
    if f.trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(value) = f.upgrade.clone() {
        headers.insert(header::UPGRADE, value);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    set_forwarded(headers, f.peer, f.host, f.listen_port);
    set_client_identity(headers, f.client);
}

/// Adds the HSTS header unless the backend set its own: the app's policy wins, and a second
/// `Strict-Transport-Security` header would be ignored anyway (browsers honour only the first,
/// RFC 6797 section 8.1).
pub(super) fn add_hsts(headers: &mut HeaderMap, value: HeaderValue) {
    headers
        .entry(header::STRICT_TRANSPORT_SECURITY)
        .or_insert(value);
}

/// Sets the de-facto forwarding headers. `X-Forwarded-For` is appended to (the client may be
/// behind other proxies); the others describe this hop and are overwritten so a client cannot
/// claim another scheme, host or port.
pub(super) fn set_forwarded(
    headers: &mut HeaderMap,
    peer: SocketAddr,
    host: &HeaderValue,
    listen_port: u16,
) {
    let xff = HeaderName::from_static("x-forwarded-for");
    let prior: Vec<&str> = headers
        .get_all(&xff)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let client_ip = peer.ip().to_canonical().to_string();
    let value = if prior.is_empty() {
        client_ip
    } else {
        format!("{}, {}", prior.join(", "), client_ip)
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(xff, v);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    headers.insert(HeaderName::from_static("x-forwarded-host"), host.clone());
    headers.insert(
        HeaderName::from_static("x-forwarded-port"),
        HeaderValue::from(listen_port),
    );
}

/// Headers carrying the verified client certificate to the backend.
pub(super) const CLIENT_CERT_HEADERS: [&str; 3] = [
    "x-client-cert-subject",
    "x-client-cert-san",
    "x-client-cert-fingerprint",
];

/// A certificate field as a header value: certificates may hold control characters, a header
/// value may not (each becomes `?`). Both request paths write client identities through it.
pub(super) fn header_safe(value: &str) -> impl Iterator<Item = u8> + '_ {
    value
        .bytes()
        .map(|b| if b < 0x20 || b == 0x7f { b'?' } else { b })
}

/// The client-certificate headers an identity sets: (name, raw value), empty fields left out.
/// Both request paths write them from here.
pub(super) fn identity_headers(id: &ClientIdentity) -> impl Iterator<Item = (&'static str, &str)> {
    CLIENT_CERT_HEADERS
        .into_iter()
        .zip([
            id.subject.as_str(),
            id.san.as_str(),
            id.fingerprint.as_str(),
        ])
        .filter(|(_, v)| !v.is_empty())
}

/// Removes any client-certificate headers the client sent (always: they cannot be trusted) and
/// sets them from the certificate the handshake verified, if any.
pub(super) fn set_client_identity(headers: &mut HeaderMap, identity: Option<&ClientIdentity>) {
    for name in CLIENT_CERT_HEADERS {
        headers.remove(name);
    }
    let Some(id) = identity else { return };
    for (name, value) in identity_headers(id) {
        let clean: Vec<u8> = header_safe(value).collect();
        if let Ok(v) = HeaderValue::from_bytes(&clean) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn client_identity_headers_are_replaced_never_forwarded() {
        let mut h = headers(&[
            ("x-client-cert-subject", "CN=forged"),
            ("X-Client-Cert-Fingerprint", "00"),
        ]);
        set_client_identity(&mut h, None);
        assert!(h.is_empty());
        let id = ClientIdentity {
            subject: "CN=web\n".into(),
            san: "DNS:web.example".into(),
            fingerprint: "ab".into(),
        };
        let mut h = headers(&[("x-client-cert-subject", "CN=forged")]);
        set_client_identity(&mut h, Some(&id));
        assert_eq!(h["x-client-cert-subject"], "CN=web?");
        assert_eq!(h["x-client-cert-san"], "DNS:web.example");
        assert_eq!(h["x-client-cert-fingerprint"], "ab");
    }

    #[test]
    fn framing_conflicts_are_refused() {
        assert!(check_framing(&headers(&[
            ("content-length", "5"),
            ("transfer-encoding", "chunked")
        ]))
        .is_err());
        assert!(check_framing(&headers(&[
            ("content-length", "5"),
            ("content-length", "6")
        ]))
        .is_err());
        assert!(check_framing(&headers(&[
            ("content-length", "5"),
            ("content-length", "5")
        ]))
        .is_ok());
        assert!(check_framing(&headers(&[("transfer-encoding", "chunked")])).is_ok());
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("x-kept").map(|v| v.as_bytes()), Some(&b"yes"[..]));
    }

    fn uri(s: &str) -> Uri {
        s.parse().expect("uri")
    }

    #[test]
    fn host_rules_follow_rfc_9112_and_9113() {
        let v11 = Version::HTTP_11;
        let host = |h: &[(&str, &str)], u: &str, v| request_host(v, &uri(u), &headers(h));
        assert_eq!(
            host(&[("host", "app.example:8443")], "/", v11),
            Ok(Some(HeaderValue::from_static("app.example:8443")))
        );
        assert_eq!(
            host(&[("host", "a.example"), ("host", "a.example")], "/", v11),
            Err("more than one Host header")
        );
        assert_eq!(
            host(&[("host", "evil.example/x@good")], "/", v11),
            Err("invalid Host header")
        );
        assert_eq!(
            host(&[("host", "user@good")], "/", v11),
            Err("invalid Host header")
        );
        assert_eq!(
            host(&[("host", "good:99999x")], "/", v11),
            Err("invalid Host header")
        );
        assert_eq!(host(&[], "/", v11), Err("missing Host header"));
        assert_eq!(host(&[], "/", Version::HTTP_10), Ok(None));
        assert_eq!(
            host(&[("host", "[::1]:8443")], "/", v11),
            Ok(Some(HeaderValue::from_static("[::1]:8443")))
        );
        assert_eq!(
            host(&[("host", "[nope]")], "/", v11),
            Err("invalid Host header")
        );
        // Absolute form: the target's authority wins over Host.
        assert_eq!(
            host(
                &[("host", "good.example")],
                "http://other.example/admin",
                v11
            ),
            Ok(Some(HeaderValue::from_static("other.example")))
        );
        assert_eq!(
            host(&[], "http://u@other.example/", v11),
            Err("invalid request authority")
        );
        // HTTP/2: :authority is the host; a different Host header is refused.
        let v2 = Version::HTTP_2;
        assert_eq!(
            host(&[], "https://a.example/", v2),
            Ok(Some(HeaderValue::from_static("a.example")))
        );
        assert_eq!(
            host(&[("host", "A.example")], "https://a.example/", v2),
            Ok(Some(HeaderValue::from_static("a.example")))
        );
        assert_eq!(
            host(&[("host", "b.example")], "https://a.example/", v2),
            Err("Host differs from :authority")
        );
    }

    #[test]
    fn only_allowed_upgrades_pass() {
        let allowed = vec!["websocket".to_string()];
        let ask = |h: &[(&str, &str)]| upgrade_request(false, &headers(h), &allowed);
        assert_eq!(
            ask(&[("connection", "Upgrade"), ("upgrade", "WebSocket")]),
            UpgradeAsk::Allowed(HeaderValue::from_static("WebSocket"))
        );
        assert_eq!(
            ask(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", "h2c")
            ]),
            UpgradeAsk::Refused
        );
        assert_eq!(
            ask(&[("connection", "upgrade"), ("upgrade", "h2c, websocket")]),
            UpgradeAsk::Allowed(HeaderValue::from_static("websocket"))
        );
        assert_eq!(ask(&[("upgrade", "websocket")]), UpgradeAsk::None);
        assert_eq!(
            upgrade_request(
                true,
                &headers(&[("connection", "upgrade"), ("upgrade", "websocket")]),
                &allowed
            ),
            UpgradeAsk::None
        );
        assert_eq!(
            upgrade_request(
                false,
                &headers(&[("connection", "upgrade"), ("upgrade", "websocket")]),
                &[]
            ),
            UpgradeAsk::Refused
        );
        let mut h = headers(&[("http2-settings", "AAMAAABkAAQAAP__"), ("x-kept", "1")]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("http2-settings").is_none());
    }

    #[test]
    fn trailers_are_accepted_only_when_te_says_so() {
        assert!(accepts_trailers(&headers(&[("te", "trailers")])));
        assert!(accepts_trailers(&headers(&[("te", "gzip, Trailers")])));
        assert!(accepts_trailers(&headers(&[
            ("te", "deflate;q=0.5"),
            ("te", "trailers;q=1")
        ])));
        assert!(!accepts_trailers(&headers(&[("te", "gzip")])));
        assert!(!accepts_trailers(&headers(&[("te", "trailersx")])));
        assert!(!accepts_trailers(&headers(&[])));
    }

    #[test]
    fn upgrade_needs_both_headers() {
        assert!(is_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!is_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!is_upgrade(&headers(&[("connection", "upgrade")])));
    }

    #[test]
    fn hsts_is_added_once_and_never_over_the_backends() {
        let value = HeaderValue::from_static("max-age=60");
        let mut h = headers(&[("content-type", "text/plain")]);
        add_hsts(&mut h, value.clone());
        add_hsts(&mut h, value.clone());
        assert_eq!(
            h.get_all("strict-transport-security")
                .iter()
                .collect::<Vec<_>>(),
            vec!["max-age=60"]
        );

        let mut h = headers(&[("strict-transport-security", "max-age=5; preload")]);
        add_hsts(&mut h, value);
        assert_eq!(
            h.get_all("strict-transport-security")
                .iter()
                .collect::<Vec<_>>(),
            vec!["max-age=5; preload"]
        );
    }

    #[test]
    fn forwarded_headers_append_for_and_overwrite_the_rest() {
        let mut h = headers(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-port", "1"),
        ]);
        let peer: SocketAddr = "[::ffff:192.0.2.7]:5555".parse().expect("addr");
        set_forwarded(&mut h, peer, &HeaderValue::from_static("app.example"), 8443);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["x-forwarded-port"], "8443");
    }
}
