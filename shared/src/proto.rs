//! Protocol settings both binaries read: in tcp mode, the ALPN protocols a sidecar offers
//! (`--alpn`, the `alpn` label) and whether it sends a PROXY protocol header to its backend
//! (`--proxy-protocol`, the `proxy-protocol` label); in http mode, the HTTP version it speaks
//! to its backend (`--backend-protocol`, the `backend-protocol` label).

use std::fmt;
use std::str::FromStr;

/// Longest ALPN protocol id (RFC 7301: a one-byte length, empty ids not allowed).
pub const MAX_ALPN_ID_BYTES: usize = 255;

/// One ALPN protocol id, e.g. `h2` or `http/1.1`: 1 to 255 printable ASCII bytes without a
/// comma (the list separator) or a space. RFC 7301 allows any bytes; every registered id is
/// printable, and an unprintable one could not be written in a flag or a label anyway.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AlpnId(String);

impl AlpnId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl FromStr for AlpnId {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let v = text.trim();
        if v.is_empty() || v.len() > MAX_ALPN_ID_BYTES {
            return Err(format!(
                "expected an ALPN protocol id of 1 to {MAX_ALPN_ID_BYTES} bytes, got {v:?}"
            ));
        }
        if !v.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return Err(format!(
                "expected an ALPN protocol id of printable ASCII without commas or spaces, got {v:?}"
            ));
        }
        Ok(AlpnId(v.to_string()))
    }
}

impl fmt::Display for AlpnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// ALPN protocols in preference order, each at most once (`h2,http/1.1`). Empty entries are
/// dropped, so an empty value is the empty list: no ALPN offered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AlpnList(pub Vec<AlpnId>);

impl AlpnList {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The ids as rustls takes them (`ServerConfig::alpn_protocols`).
    pub fn to_wire(&self) -> Vec<Vec<u8>> {
        self.0.iter().map(|id| id.as_bytes().to_vec()).collect()
    }
}

impl FromStr for AlpnList {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut out: Vec<AlpnId> = Vec::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let id: AlpnId = part.parse()?;
            if out.contains(&id) {
                return Err(format!("ALPN protocol {id} is listed twice"));
            }
            out.push(id);
        }
        Ok(AlpnList(out))
    }
}

impl fmt::Display for AlpnList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(id.as_str())?;
        }
        Ok(())
    }
}

/// A TLS key-exchange group a sidecar may agree (`--tls-groups`, the `tls-groups` label), named
/// as IANA's TLS Supported Groups registry spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsGroup {
    /// The hybrid of X25519 and ML-KEM-768 (post-quantum), what current browsers offer first.
    X25519MlKem768,
    X25519,
    /// P-256.
    Secp256r1,
    /// P-384.
    Secp384r1,
}

impl TlsGroup {
    /// Every group, in the default preference order.
    pub const ALL: [TlsGroup; 4] = [
        TlsGroup::X25519MlKem768,
        TlsGroup::X25519,
        TlsGroup::Secp256r1,
        TlsGroup::Secp384r1,
    ];

    /// IANA's name.
    pub fn name(self) -> &'static str {
        match self {
            TlsGroup::X25519MlKem768 => "X25519MLKEM768",
            TlsGroup::X25519 => "X25519",
            TlsGroup::Secp256r1 => "secp256r1",
            TlsGroup::Secp384r1 => "secp384r1",
        }
    }

    /// The group's code point in the registry.
    pub fn code(self) -> u16 {
        match self {
            TlsGroup::X25519MlKem768 => 0x11ec,
            TlsGroup::X25519 => 0x001d,
            TlsGroup::Secp256r1 => 0x0017,
            TlsGroup::Secp384r1 => 0x0018,
        }
    }
}

impl FromStr for TlsGroup {
    type Err = String;
    /// IANA's names, any case; `P-256` and `P-384` too (as OpenSSL and Go also write them).
    fn from_str(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let found = TlsGroup::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(t));
        match (found, t.to_ascii_uppercase().as_str()) {
            (Some(g), _) => Ok(g),
            (None, "P-256" | "PRIME256V1") => Ok(TlsGroup::Secp256r1),
            (None, "P-384") => Ok(TlsGroup::Secp384r1),
            _ => Err(format!(
                "expected a TLS group: X25519MLKEM768, X25519, secp256r1 or secp384r1, got {t:?}"
            )),
        }
    }
}

impl fmt::Display for TlsGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The key-exchange groups a sidecar may agree, in its order of preference; empty: all of
/// [`TlsGroup::ALL`] in that order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TlsGroups(pub Vec<TlsGroup>);

impl TlsGroups {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The groups to offer or accept, in order: the list, or every group.
    pub fn effective(&self) -> Vec<TlsGroup> {
        if self.0.is_empty() {
            TlsGroup::ALL.to_vec()
        } else {
            self.0.clone()
        }
    }
}

impl FromStr for TlsGroups {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let mut out: Vec<TlsGroup> = Vec::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let group: TlsGroup = part.parse()?;
            if out.contains(&group) {
                return Err(format!("TLS group {group} is listed twice"));
            }
            out.push(group);
        }
        if out.is_empty() {
            return Err(format!(
                "expected one or more TLS groups (X25519MLKEM768, X25519, secp256r1, secp384r1), comma separated, got {text:?}"
            ));
        }
        Ok(TlsGroups(out))
    }
}

impl fmt::Display for TlsGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, g) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(g.name())?;
        }
        Ok(())
    }
}

/// Whether a tcp-mode sidecar opens each backend connection with a PROXY protocol header
/// (haproxy's proxy-protocol.txt), and which version. Off unless asked for: a backend that does
/// not expect the header would read it as the start of its own protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProxyProtocol {
    #[default]
    Off,
    /// The text header: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// The binary header, with TLVs (ALPN, SNI, TLS details).
    V2,
}

impl ProxyProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::Off => "off",
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

impl FromStr for ProxyProtocol {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "off" => Ok(ProxyProtocol::Off),
            "v1" => Ok(ProxyProtocol::V1),
            "v2" => Ok(ProxyProtocol::V2),
            other => Err(format!("expected off, v1 or v2, got {other:?}")),
        }
    }
}

impl fmt::Display for ProxyProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP version an http-mode sidecar speaks to its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendProtocol {
    /// gRPC requests (`content-type: application/grpc` or `application/grpc+...`) over HTTP/2
    /// cleartext with prior knowledge, every other request over HTTP/1.1.
    #[default]
    Auto,
    /// Every request over HTTP/1.1.
    Http1,
    /// Every request over HTTP/2 cleartext with prior knowledge (h2c).
    H2c,
}

impl BackendProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendProtocol::Auto => "auto",
            BackendProtocol::Http1 => "http1",
            BackendProtocol::H2c => "h2c",
        }
    }
}

impl FromStr for BackendProtocol {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "auto" => Ok(BackendProtocol::Auto),
            "http1" => Ok(BackendProtocol::Http1),
            "h2c" => Ok(BackendProtocol::H2c),
            other => Err(format!("expected auto, http1 or h2c, got {other:?}")),
        }
    }
}

impl fmt::Display for BackendProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tls_groups_parse_by_iana_name_in_order_each_once() {
        use super::{TlsGroup, TlsGroups};
        let g: TlsGroups = "X25519MLKEM768, x25519,P-256".parse().expect("groups");
        assert_eq!(
            g.0,
            [
                TlsGroup::X25519MlKem768,
                TlsGroup::X25519,
                TlsGroup::Secp256r1
            ]
        );
        assert_eq!(g.to_string(), "X25519MLKEM768,X25519,secp256r1");
        assert_eq!(g.to_string().parse::<TlsGroups>(), Ok(g));
        assert_eq!(TlsGroups::default().effective(), TlsGroup::ALL);
        assert_eq!(TlsGroup::X25519MlKem768.code(), 4588);
        for bad in ["", ",", "X448", "X25519,X25519", "ffdhe2048"] {
            let e = bad.parse::<TlsGroups>().expect_err(bad);
            assert!(e.contains("TLS group"), "{bad:?}: {e}");
        }
    }

    use super::*;

    #[test]
    fn alpn_lists_parse_and_render() {
        let list: AlpnList = " h2, http/1.1 ,".parse().expect("valid");
        assert_eq!(list.to_string(), "h2,http/1.1");
        assert_eq!(list.to_wire(), vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(list.to_string().parse::<AlpnList>(), Ok(list));
        assert_eq!("".parse::<AlpnList>(), Ok(AlpnList::default()));
        let long = "a".repeat(255);
        assert!(long.parse::<AlpnList>().is_ok());
        for bad in ["h2,h2", "a b", "h\u{e9}", "x\ty", &"a".repeat(256)] {
            assert!(bad.parse::<AlpnList>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn proxy_protocol_parses_and_renders() {
        for p in [ProxyProtocol::Off, ProxyProtocol::V1, ProxyProtocol::V2] {
            assert_eq!(p.to_string().parse::<ProxyProtocol>(), Ok(p));
        }
        assert_eq!(" v2 ".parse::<ProxyProtocol>(), Ok(ProxyProtocol::V2));
        for bad in ["", "on", "V1", "2"] {
            assert!(bad.parse::<ProxyProtocol>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backend_protocol_parses_and_renders() {
        for p in [
            BackendProtocol::Auto,
            BackendProtocol::Http1,
            BackendProtocol::H2c,
        ] {
            assert_eq!(p.to_string().parse::<BackendProtocol>(), Ok(p));
        }
        assert_eq!(BackendProtocol::default(), BackendProtocol::Auto);
        for bad in ["", "h2", "HTTP1", "http/1.1", "grpc"] {
            assert!(bad.parse::<BackendProtocol>().is_err(), "{bad:?}");
        }
    }
}
