//! Socket addresses as both binaries read them: where a sidecar listens (`--listen`,
//! `--redirect-listen`, `--admin-listen`, the `listen` and `redirect-listen` labels) and where it
//! proxies to (`--backend`, the `backend` label). One grammar, one canonical rendering.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::str::FromStr;

use crate::dns::DnsName;

/// Default TLS port, for the sidecar's `--listen` and the spawner's `listen` label: the common
/// unprivileged HTTPS port, so the sidecar needs no capability to bind it.
pub const DEFAULT_LISTEN_PORT: u16 = 8443;
/// Default backend port: the common port of plain HTTP apps.
pub const DEFAULT_BACKEND_PORT: NonZeroU16 = match NonZeroU16::new(8080) {
    Some(p) => p,
    None => panic!("8080 is not zero"),
};

/// An address to listen on: `PORT` or `:PORT` (every IPv4 interface, as in gosslterm),
/// `IP:PORT` or `[IPv6]:PORT`. Names are refused: a listen address must be unambiguous. Port 0
/// parses (the kernel picks a port: tests and one-off runs); the spawner refuses it for labels,
/// as nobody could reach a sidecar on a port chosen inside a container ([`ListenAddr::fixed_port`]).
/// Renders as `IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(SocketAddr);

impl ListenAddr {
    /// Every IPv4 interface on `port`.
    pub fn any(port: u16) -> Self {
        ListenAddr(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
    }

    pub fn socket_addr(self) -> SocketAddr {
        self.0
    }

    pub fn port(self) -> u16 {
        self.0.port()
    }

    /// The port, unless it is 0 (chosen by the kernel at bind time).
    pub fn fixed_port(self) -> Option<NonZeroU16> {
        NonZeroU16::new(self.0.port())
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(addr: SocketAddr) -> Self {
        ListenAddr(addr)
    }
}

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let expected = || format!("expected PORT, :PORT, IP:PORT or [IPv6]:PORT, got {text:?}");
        let bare = text.strip_prefix(':').unwrap_or(text);
        if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
            return bare
                .parse::<u16>()
                .map(ListenAddr::any)
                .map_err(|_| format!("port out of range in {text:?}"));
        }
        text.parse::<SocketAddr>()
            .map(ListenAddr)
            .map_err(|_| expected())
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The host part of a backend address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// Resolved at connect time, so a backend that moves is followed.
    Name(DnsName),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => write!(f, "{n}"),
        }
    }
}

/// Where a sidecar proxies to: `HOST:PORT`, `IP:PORT`, `[IPv6]:PORT`, or `PORT` / `:PORT`
/// (127.0.0.1, the app in the same network namespace). The port is never 0. Renders as
/// `host:port`, IPv6 in brackets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    pub host: Host,
    pub port: NonZeroU16,
}

impl BackendAddr {
    /// The app in the sidecar's own network namespace, on `port`.
    pub fn local(port: NonZeroU16) -> Self {
        BackendAddr {
            host: Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port,
        }
    }

    /// `host:port` (IPv6 in brackets), as used in URIs and for connecting.
    pub fn authority(&self) -> String {
        self.to_string()
    }
}

fn nonzero_port(text: &str, whole: &str) -> Result<NonZeroU16, String> {
    let port: u16 = text
        .parse()
        .map_err(|_| format!("invalid port {text:?} in {whole:?}"))?;
    NonZeroU16::new(port).ok_or_else(|| format!("port 0 in {whole:?}: a backend needs a real port"))
}

impl FromStr for BackendAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bare = text.strip_prefix(':').unwrap_or(text);
        if !bare.is_empty() && bare.bytes().all(|b| b.is_ascii_digit()) {
            return nonzero_port(bare, text).map(BackendAddr::local);
        }
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(BackendAddr {
                host: Host::Ip(addr.ip()),
                port: nonzero_port(&addr.port().to_string(), text)?,
            });
        }
        let (host, port) = text.rsplit_once(':').ok_or_else(|| {
            format!("expected HOST:PORT, IP:PORT, [IPv6]:PORT or PORT, got {text:?}")
        })?;
        let port = nonzero_port(port, text)?;
        let host: DnsName = host
            .parse()
            .map_err(|_| format!("invalid host {host:?}: expected a DNS name or an IP address"))?;
        Ok(BackendAddr {
            host: Host::Name(host),
            port,
        })
    }
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

/// A request authority as a client sends it (`Host`, or an absolute URI's authority): splits
/// `host[:port]` and validates the host: a DNS name (normalised to lower case), an IPv4
/// address or a bracketed IPv6 address. Anything else, including an invalid port, is `None`.
pub fn authority_host(value: &str) -> Option<String> {
    Some(match split_authority(value)? {
        AuthorityHost::V6(ip) => format!("[{ip}]"),
        AuthorityHost::V4(ip) => ip.to_string(),
        AuthorityHost::Name(name) => name.to_ascii_lowercase(),
    })
}

/// Whether `value` is a request authority [`authority_host`] accepts, without making its host:
/// the check every forwarded request makes, so it allocates nothing.
pub fn is_authority(value: &str) -> bool {
    split_authority(value).is_some()
}

/// The host of a valid authority, as parsed.
enum AuthorityHost<'a> {
    V6(std::net::Ipv6Addr),
    V4(Ipv4Addr),
    Name(&'a str),
}

/// The one grammar of request authorities: `host[:port]`, the port 1 to 5 digits and at most
/// 65535, the host a bracketed IPv6 address, an IPv4 address or a DNS name (a final dot allowed).
fn split_authority(value: &str) -> Option<AuthorityHost<'_>> {
    let (host, port) = if let Some(rest) = value.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let ip: std::net::Ipv6Addr = inside.parse().ok()?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (AuthorityHost::V6(ip), port)
    } else {
        let (host, port) = match value.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value, None),
        };
        let host = if let Ok(ip) = host.parse::<Ipv4Addr>() {
            AuthorityHost::V4(ip)
        } else if crate::dns::is_name(host.strip_suffix('.').unwrap_or(host)) {
            AuthorityHost::Name(host)
        } else {
            return None;
        };
        (host, port)
    };
    if let Some(port) = port {
        if port.is_empty()
            || port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return None;
        }
    }
    Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(text: &str) -> Result<String, String> {
        text.parse::<ListenAddr>().map(|a| a.to_string())
    }

    fn backend(text: &str) -> Result<String, String> {
        text.parse::<BackendAddr>().map(|a| a.to_string())
    }

    #[test]
    fn listen_forms() {
        assert_eq!(listen("8443").as_deref(), Ok("0.0.0.0:8443"));
        assert_eq!(listen(":8443").as_deref(), Ok("0.0.0.0:8443"));
        assert_eq!(listen(" 127.0.0.1:0 ").as_deref(), Ok("127.0.0.1:0"));
        assert_eq!(listen("[::1]:443").as_deref(), Ok("[::1]:443"));
        assert_eq!(listen("[::]:443").as_deref(), Ok("[::]:443"));
        for bad in [
            "",
            ":",
            "localhost:443",
            "1.2.3.4",
            ":99999",
            "99999",
            "-1",
            "a:b",
        ] {
            assert!(listen(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            "0".parse::<ListenAddr>().map(ListenAddr::fixed_port),
            Ok(None)
        );
    }

    #[test]
    fn backend_forms() {
        assert_eq!(backend("app:8080").as_deref(), Ok("app:8080"));
        assert_eq!(backend("8080").as_deref(), Ok("127.0.0.1:8080"));
        assert_eq!(backend(":80").as_deref(), Ok("127.0.0.1:80"));
        assert_eq!(backend("[::1]:80").as_deref(), Ok("[::1]:80"));
        assert_eq!(backend("10.0.0.2:5432").as_deref(), Ok("10.0.0.2:5432"));
        for bad in [
            "",
            "app",
            "app:0",
            "0",
            ":0",
            "127.0.0.1:0",
            "-app:80",
            "bad host:80",
            "*.a:80",
            "a:99999",
            "[::1]",
            ":",
        ] {
            assert!(backend(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn renderings_parse_back_to_the_same_value() {
        for text in ["0.0.0.0:1", "[fe80::1]:65535", "192.168.1.1:8443"] {
            let a: ListenAddr = text.parse().expect(text);
            assert_eq!(a.to_string().parse::<ListenAddr>(), Ok(a));
        }
        for text in ["app.internal:1", "[2001:db8::1]:443", "1.2.3.4:9"] {
            let b: BackendAddr = text.parse().expect(text);
            assert_eq!(b.to_string().parse::<BackendAddr>(), Ok(b));
        }
    }

    #[test]
    fn hosts_are_validated_and_their_port_dropped() {
        for good in [
            "example.com",
            "Example.COM:8080",
            "192.0.2.1:80",
            "[::1]",
            "a.b.",
        ] {
            assert!(is_authority(good), "{good:?} should be accepted");
        }
        assert_eq!(authority_host("example.com"), Some("example.com".into()));
        assert_eq!(
            authority_host("Example.COM:8080"),
            Some("example.com".into())
        );
        assert_eq!(authority_host("example.com."), Some("example.com.".into()));
        assert_eq!(authority_host("my_host"), Some("my_host".into()));
        assert_eq!(authority_host("192.0.2.1:80"), Some("192.0.2.1".into()));
        assert_eq!(authority_host("[::1]"), Some("[::1]".into()));
        assert_eq!(
            authority_host("[2001:DB8::1]:8080"),
            Some("[2001:db8::1]".into())
        );
        for bad in [
            "",
            ":80",
            "evil.com/path",
            "evil.com@x",
            "a b",
            "host:",
            "host:80:90",
            "host:99999",
            "host:8o",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[not-ip]:80",
            "::1",
            "-bad.example",
            "a..b",
            "evil.com\\@x",
            "x\"onload",
            "%65vil.com",
        ] {
            assert_eq!(authority_host(bad), None, "{bad:?} should be refused");
            assert!(!is_authority(bad), "{bad:?} should be refused");
        }
    }
}
