//! The PROXY protocol header a tcp-mode sidecar sends to its backend before the client's bytes
//! (`--proxy-protocol`), as haproxy's proxy-protocol.txt specifies it: version 1 (one text line)
//! or version 2 (binary, with TLVs for the negotiated ALPN, the SNI name and the TLS details).
//!
//! [`header`] is a pure function of what the connection is ([`Origin`]); [`tls_facts`] reads
//! those facts off a finished rustls handshake.

use std::net::{IpAddr, SocketAddr};

use rustls::ServerConnection;
use shared::proto::ProxyProtocol;

use crate::tls::certs::CertFacts;

/// Version 2 signature: the 12 bytes every v2 header starts with.
pub(crate) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 2, command PROXY (the connection was relayed on behalf of another peer).
const V2_VERSION_PROXY: u8 = 0x21;
/// Address family and transport: AF_INET + STREAM, AF_INET6 + STREAM.
const V2_TCP4: u8 = 0x11;
const V2_TCP6: u8 = 0x21;

/// TLV types (proxy-protocol.txt section 2.2).
const PP2_TYPE_ALPN: u8 = 0x01;
const PP2_TYPE_AUTHORITY: u8 = 0x02;
const PP2_TYPE_SSL: u8 = 0x20;
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
const PP2_SUBTYPE_SSL_CN: u8 = 0x22;

/// Bits of the PP2_TYPE_SSL `client` field.
const PP2_CLIENT_SSL: u8 = 0x01;
const PP2_CLIENT_CERT_CONN: u8 = 0x02;
const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// Longest client CN carried in a TLV. X.509 bounds a CN at 64 characters (RFC 5280
/// ub-common-name); a longer one is left out rather than growing every header without bound.
pub(crate) const MAX_CN_BYTES: usize = 1024;

/// What the backend is told about one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The client's address: the TCP peer of the sidecar.
    pub client: SocketAddr,
    /// The address the client connected to (the sidecar's listener).
    pub local: SocketAddr,
    pub tls: TlsFacts,
}

/// What the TLS handshake established (carried in v2 TLVs only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFacts {
    /// The negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// The SNI name the client sent.
    pub sni: Option<String>,
    /// `TLSv1.2` or `TLSv1.3`, as OpenSSL names them (what haproxy sends).
    pub version: Option<&'static str>,
    /// The verified client certificate (mutual TLS).
    pub client_cert: Option<ClientCert>,
}

/// A client certificate the handshake verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCert {
    /// Its subject's first common name.
    pub cn: Option<String>,
    /// Presented in this handshake (false: carried over by session resumption).
    pub this_connection: bool,
}

/// The header to send first, or `None` when `version` is off.
pub(crate) fn header(version: ProxyProtocol, origin: &Origin) -> Option<Vec<u8>> {
    match version {
        ProxyProtocol::Off => None,
        ProxyProtocol::V1 => Some(v1(origin.client, origin.local)),
        ProxyProtocol::V2 => Some(v2(origin)),
    }
}

/// Both addresses in one family: IPv4 when both are (IPv4-mapped IPv6 counts, as a dual-stack
/// listener reports IPv4 clients), else both as IPv6.
fn same_family(client: SocketAddr, local: SocketAddr) -> (IpAddr, IpAddr) {
    let (c, l) = (client.ip().to_canonical(), local.ip().to_canonical());
    match (c, l) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (c, l),
        _ => (IpAddr::V6(v6(c)), IpAddr::V6(v6(l))),
    }
}

fn v6(ip: IpAddr) -> std::net::Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n` (at most 107 bytes).
fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (src, dst) = same_family(client, local);
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {src} {dst} {} {}\r\n",
        client.port(),
        local.port()
    )
    .into_bytes()
}

/// Signature, version/command, family, length, addresses, then the TLVs.
fn v2(origin: &Origin) -> Vec<u8> {
    let (src, dst) = same_family(origin.client, origin.local);
    let mut body = Vec::with_capacity(128);
    let family = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            V2_TCP4
        }
        (s, d) => {
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
            V2_TCP6
        }
    };
    body.extend_from_slice(&origin.client.port().to_be_bytes());
    body.extend_from_slice(&origin.local.port().to_be_bytes());

    let tls = &origin.tls;
    if let Some(alpn) = &tls.alpn {
        tlv(&mut body, PP2_TYPE_ALPN, alpn);
    }
    if let Some(sni) = &tls.sni {
        tlv(&mut body, PP2_TYPE_AUTHORITY, sni.as_bytes());
    }
    tlv(&mut body, PP2_TYPE_SSL, &ssl_value(tls));

    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(V2_VERSION_PROXY);
    out.push(family);
    // Bounded far below 64 KiB: SNI and ALPN are at most 255 bytes, the CN MAX_CN_BYTES.
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// PP2_TYPE_SSL: `client` flags, `verify` (0: a client certificate was presented and verified),
/// then the version and CN sub-TLVs.
fn ssl_value(tls: &TlsFacts) -> Vec<u8> {
    let mut client = PP2_CLIENT_SSL;
    let mut verify: u32 = 1;
    if let Some(cert) = &tls.client_cert {
        client |= PP2_CLIENT_CERT_SESS;
        if cert.this_connection {
            client |= PP2_CLIENT_CERT_CONN;
        }
        // rustls completes a handshake only with a verified certificate.
        verify = 0;
    }
    let mut value = vec![client];
    value.extend_from_slice(&verify.to_be_bytes());
    if let Some(version) = tls.version {
        tlv(&mut value, PP2_SUBTYPE_SSL_VERSION, version.as_bytes());
    }
    if let Some(cn) = tls.client_cert.as_ref().and_then(|c| c.cn.as_deref()) {
        if cn.len() <= MAX_CN_BYTES {
            tlv(&mut value, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
        }
    }
    value
}

/// Appends one TLV: type, 16-bit big-endian length, value.
fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(value.len() as u16).to_be_bytes());
    out.extend_from_slice(value);
}

/// The facts of a finished server handshake.
pub(crate) fn tls_facts(conn: &ServerConnection) -> TlsFacts {
    let version = conn.protocol_version().and_then(|v| match v {
        rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
        rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
        _ => None,
    });
    let client_cert = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| ClientCert {
            cn: CertFacts::from_der(leaf.as_ref())
                .ok()
                .and_then(|f| f.common_names.into_iter().next()),
            this_connection: conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed),
        });
    TlsFacts {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        sni: conn.server_name().map(str::to_string),
        version,
        client_cert,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(client: &str, local: &str) -> Origin {
        Origin {
            client: client.parse().expect("client addr"),
            local: local.parse().expect("local addr"),
            tls: TlsFacts::default(),
        }
    }

    #[test]
    fn off_sends_nothing() {
        assert_eq!(
            header(ProxyProtocol::Off, &origin("1.2.3.4:5", "6.7.8.9:10")),
            None
        );
    }

    #[test]
    fn v1_matches_the_spec_examples() {
        // proxy-protocol.txt 2.1: "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        let h = header(
            ProxyProtocol::V1,
            &origin("192.168.0.1:56324", "192.168.0.11:443"),
        );
        assert_eq!(
            h.as_deref(),
            Some(&b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"[..])
        );
        let h = header(ProxyProtocol::V1, &origin("[2001:db8::1]:1", "[::1]:443"));
        assert_eq!(
            h.as_deref(),
            Some(&b"PROXY TCP6 2001:db8::1 ::1 1 443\r\n"[..])
        );
        // A dual-stack listener sees IPv4 clients as mapped addresses: still TCP4.
        let h = header(
            ProxyProtocol::V1,
            &origin("[::ffff:10.0.0.1]:40000", "[::ffff:10.0.0.2]:8443"),
        );
        assert_eq!(
            h.as_deref(),
            Some(&b"PROXY TCP4 10.0.0.1 10.0.0.2 40000 8443\r\n"[..])
        );
        // Mixed families become IPv6 (the IPv4 one mapped); the longest line fits 107 bytes.
        let h = header(
            ProxyProtocol::V1,
            &origin(
                "10.0.0.1:65535",
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            ),
        )
        .expect("a header");
        assert_eq!(
            h,
            b"PROXY TCP6 ::ffff:10.0.0.1 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
        );
        assert!(h.len() <= 107);
    }

    #[test]
    fn v2_ipv4_without_tls_details_is_addresses_and_the_ssl_tlv() {
        let h = header(
            ProxyProtocol::V2,
            &origin("127.0.0.2:1234", "127.0.0.1:443"),
        )
        .expect("a header");
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &b"\r\n\r\n\0\r\nQUIT\n"[..],                  // signature
            &[0x21, 0x11, 0x00, 20],                      // v2 PROXY, TCP4, 12 + 8 bytes
            &[127, 0, 0, 2], &[127, 0, 0, 1],             // src, dst
            &[0x04, 0xd2], &[0x01, 0xbb],                 // 1234, 443
            &[0x20, 0x00, 0x05, 0x01, 0, 0, 0, 1],        // SSL: client SSL, verify 1 (no cert)
        ]
        .concat();
        assert_eq!(h, want);
    }

    #[test]
    fn v2_carries_alpn_authority_version_and_client_cn() {
        let o = Origin {
            tls: TlsFacts {
                alpn: Some(b"h2".to_vec()),
                sni: Some("app.example".to_string()),
                version: Some("TLSv1.3"),
                client_cert: Some(ClientCert {
                    cn: Some("alice".to_string()),
                    this_connection: true,
                }),
            },
            ..origin("[2001:db8::2]:50000", "[2001:db8::1]:8443")
        };
        let h = header(ProxyProtocol::V2, &o).expect("a header");
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        src[15] = 2;
        let mut dst = src;
        dst[15] = 1;
        #[rustfmt::skip]
        let tlvs: Vec<u8> = [
            &[0x01, 0x00, 0x02][..], b"h2",                  // ALPN
            &[0x02, 0x00, 0x0b], b"app.example",             // AUTHORITY
            &[0x20, 0x00, 0x17, 0x07, 0, 0, 0, 0],           // SSL: SSL|CERT_CONN|CERT_SESS, verified
            &[0x21, 0x00, 0x07], b"TLSv1.3",                 //   SSL_VERSION
            &[0x22, 0x00, 0x05], b"alice",                   //   SSL_CN
        ]
        .concat();
        let len = (36 + tlvs.len()) as u16;
        let want: Vec<u8> = [
            &V2_SIGNATURE[..],
            &[0x21, 0x21],
            &len.to_be_bytes(),
            &src,
            &dst,
            &50000u16.to_be_bytes(),
            &8443u16.to_be_bytes(),
            &tlvs,
        ]
        .concat();
        assert_eq!(h, want);
    }

    #[test]
    fn v2_resumed_certificate_and_oversized_cn() {
        let o = Origin {
            tls: TlsFacts {
                client_cert: Some(ClientCert {
                    cn: Some("x".repeat(MAX_CN_BYTES + 1)),
                    this_connection: false,
                }),
                ..TlsFacts::default()
            },
            ..origin("127.0.0.1:1", "127.0.0.1:2")
        };
        let h = header(ProxyProtocol::V2, &o).expect("a header");
        // Only the SSL TLV: CERT_SESS without CERT_CONN, verified, no CN sub-TLV.
        assert_eq!(&h[28..], &[0x20, 0x00, 0x05, 0x05, 0, 0, 0, 0]);
    }
}
