//! Service identity (`spawner run --identity-domain`): the names the spawner's identity CA issues
//! certificates for, and the egress relays (`--upstream LOCAL=REMOTE`) through which one
//! service calls another over mutual TLS. One parser and one rendering per value, used by the
//! spawner (labels) and the sidecar (flags) alike.
//!
//! A service's identity is the SPIFFE ID `spiffe://<domain>/<name>` and the DNS name `<name>`,
//! both in its certificate: the URI is what servers admit (`allow-identities`) and clients
//! expect; the DNS name is what a client sends as SNI, so the server's sidecar picks its identity
//! certificate among the others it serves.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use crate::addr::{BackendAddr, Host};
use crate::dns::is_name;
use crate::proto::AlpnId;

/// Whether the last label of `name` is all digits (or a `0x` hex number): such a name reads as an
/// IPv4 address, and TLS libraries refuse it as a DNS name (rustls does).
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    let hex = last
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || last.bytes().all(|b| b.is_ascii_digit())
}

/// A SPIFFE trust domain (`--identity-domain`): a lowercase DNS name, e.g. `example.internal`.
/// Input is lowercased (DNS names compare without case; a SPIFFE trust domain is lowercase).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let v = text.trim().to_ascii_lowercase();
        if is_name(&v) && !ends_in_number(&v) {
            Ok(TrustDomain(v))
        } else {
            Err(format!(
                "expected a trust domain such as example.internal (a DNS name: labels of letters, digits, `-` or `_`), got {:?}",
                text.trim()
            ))
        }
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A service's name within its trust domain (the `identity` label; by default the Compose service
/// name or the container name): a DNS name, lowercased, whose last label is not a number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<domain>/<name>`: the URI SAN of this service's certificate.
    pub fn spiffe_id(&self, domain: &TrustDomain) -> String {
        format!("spiffe://{domain}/{}", self.0)
    }
}

impl FromStr for ServiceName {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let v = text.trim().to_ascii_lowercase();
        if is_name(&v) && !ends_in_number(&v) {
            Ok(ServiceName(v))
        } else {
            Err(format!(
                "expected a service name (a DNS name: labels of letters, digits, `-` or `_`, at most 63 bytes each, the last not a number), got {:?}",
                text.trim()
            ))
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One egress relay, `LOCAL=[NAME@]HOST:PORT[/PROTOCOL]`: a plain listener on `local` (a
/// loopback address of the app's namespace; `PORT` alone is `127.0.0.1:PORT`) whose connections
/// are relayed over mutual TLS to `remote`, whose certificate must carry `identity` (by default
/// the remote's host name; required when the host is an IP address). `PROTOCOL`, an ALPN id,
/// is offered in the handshake: `h2` for an app speaking HTTP/2 or gRPC (in cleartext, to the
/// relay), so the server's sidecar speaks HTTP/2 to it; without one, none is offered and an
/// http-mode server speaks HTTP/1.1.
///
/// Loopback only: the relay lends the sidecar's identity to whoever connects, which must be the
/// app in its own namespace, never another host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    pub local: SocketAddr,
    pub remote: BackendAddr,
    pub identity: ServiceName,
    /// The ALPN protocol offered to the server, if any.
    pub alpn: Option<AlpnId>,
}

impl FromStr for Upstream {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (local, remote) = text.split_once('=').ok_or_else(|| {
            format!("expected LOCAL=REMOTE such as 127.0.0.1:9001=b:8443, got {text:?}")
        })?;
        let local = local.trim();
        let local: SocketAddr = match local.parse::<u16>() {
            Ok(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            Err(_) => local.parse().map_err(|_| {
                format!("invalid local address {local:?} in {text:?}: expected PORT, IP:PORT or [IPv6]:PORT")
            })?,
        };
        if !local.ip().is_loopback() {
            return Err(format!(
                "local address {local} in {text:?} is not a loopback address: the relay lends this sidecar's identity to whoever connects, so it listens for the app in its own namespace only"
            ));
        }
        if local.port() == 0 {
            return Err(format!(
                "port 0 in {text:?}: the app needs a fixed port to call"
            ));
        }
        let remote = remote.trim();
        let (name, address) = match remote.split_once('@') {
            Some((name, address)) => (Some(name), address),
            None => (None, remote),
        };
        // An ALPN id may hold a `/` itself (`http/1.1`): the first one ends the address.
        let (address, alpn) = match address.split_once('/') {
            Some((address, alpn)) => (address, Some(alpn.parse::<AlpnId>()?)),
            None => (address, None),
        };
        let address: BackendAddr = address.parse()?;
        let identity = match (name, &address.host) {
            (Some(name), _) => name.parse()?,
            (None, Host::Name(host)) => host.as_str().parse().map_err(|e: String| {
                format!("{e}; say whose certificate {address} serves with NAME@{address}")
            })?,
            (None, Host::Ip(_)) => {
                return Err(format!(
                    "remote {address} in {text:?} is an IP address: say whose identity it serves with NAME@{address}"
                ))
            }
        };
        Ok(Upstream {
            local,
            remote: address,
            identity,
            alpn,
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let implied =
            matches!(&self.remote.host, Host::Name(h) if h.as_str() == self.identity.as_str());
        if implied {
            write!(f, "{}={}", self.local, self.remote)?;
        } else {
            write!(f, "{}={}@{}", self.local, self.identity, self.remote)?;
        }
        match &self.alpn {
            Some(alpn) => write!(f, "/{alpn}"),
            None => Ok(()),
        }
    }
}

/// Most egress relays one sidecar runs: each is a listener and a task; a label (4 KiB) could
/// otherwise ask for a couple of hundred.
pub const MAX_UPSTREAMS: usize = 64;

/// Refuses two relays on one local address (the second could never listen), and more than
/// [`MAX_UPSTREAMS`].
pub fn check_unique(upstreams: &[Upstream]) -> Result<(), String> {
    if upstreams.len() > MAX_UPSTREAMS {
        return Err(format!(
            "{} upstreams; at most {MAX_UPSTREAMS}",
            upstreams.len()
        ));
    }
    for (i, u) in upstreams.iter().enumerate() {
        if upstreams[..i].iter().any(|o| o.local == u.local) {
            return Err(format!("two upstreams listen on {}", u.local));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_dns_names_not_numbers() {
        let ok = |v: &str| v.parse::<ServiceName>().map(|n| n.to_string());
        assert_eq!(ok("Web").as_deref(), Ok("web"));
        assert_eq!(ok("my_service").as_deref(), Ok("my_service"));
        assert_eq!(ok("api.v2").as_deref(), Ok("api.v2"));
        for bad in [
            "",
            "-a",
            "a b",
            "123",
            "web.1",
            "0x1f",
            "a/b",
            "a,b",
            &"x".repeat(64),
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
        let d: TrustDomain = "Example.Internal".parse().expect("domain");
        assert_eq!(
            "b".parse::<ServiceName>().expect("name").spiffe_id(&d),
            "spiffe://example.internal/b"
        );
        assert!("a b".parse::<TrustDomain>().is_err());
    }

    #[test]
    fn upstreams_parse_and_render_back() {
        let u = |v: &str| v.parse::<Upstream>();
        let a = u("127.0.0.1:9001=b:8443").expect("plain");
        assert_eq!(a.local, "127.0.0.1:9001".parse().expect("addr"));
        assert_eq!(a.identity.as_str(), "b");
        assert_eq!(a.to_string(), "127.0.0.1:9001=b:8443");
        let short = u("9001=b:8443").expect("port only");
        assert_eq!(short, a);
        let named = u("[::1]:9002=payments@10.0.0.5:8443").expect("named");
        assert_eq!(named.identity.as_str(), "payments");
        assert_eq!(named.to_string(), "[::1]:9002=payments@10.0.0.5:8443");
        assert_eq!(u(&named.to_string()), Ok(named));
        let renamed = u("9003=billing@b:8443").expect("other name");
        assert_eq!(renamed.to_string(), "127.0.0.1:9003=billing@b:8443");
        let grpc = u("9004=b:8443/h2").expect("with ALPN");
        assert_eq!(grpc.alpn.as_ref().map(AlpnId::as_str), Some("h2"));
        assert_eq!(grpc.to_string(), "127.0.0.1:9004=b:8443/h2");
        let h1 = u("9005=pay@10.0.0.5:8443/http/1.1").expect("ALPN with a slash");
        assert_eq!(h1.alpn.as_ref().map(AlpnId::as_str), Some("http/1.1"));
        assert_eq!(u(&h1.to_string()), Ok(h1));
        assert_eq!(a.alpn, None);
        for (bad, why) in [
            ("9001=b:8443/", "ALPN protocol id"),
            ("9001=b:8443/h 2", "ALPN protocol id"),
            ("b:8443", "LOCAL=REMOTE"),
            ("0.0.0.0:9001=b:8443", "not a loopback"),
            ("10.1.2.3:9001=b:8443", "not a loopback"),
            ("0=b:8443", "port 0"),
            ("9001=10.0.0.5:8443", "NAME@"),
            ("9001=b", "HOST:PORT"),
            ("9001=b:0", "port 0"),
            ("9001=web.1:8443", "service name"),
            ("x=b:8443", "invalid local"),
        ] {
            let e = u(bad).expect_err(bad);
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn two_relays_cannot_share_a_port() {
        let list: crate::identity::List<Upstream> =
            "9001=b:8443, 9002=c:8443".parse().expect("list");
        assert!(check_unique(&list.0).is_ok());
        let list: crate::identity::List<Upstream> =
            "9001=b:8443,127.0.0.1:9001=c:8443".parse().expect("list");
        assert!(check_unique(&list.0)
            .expect_err("dup")
            .contains("127.0.0.1:9001"));
        let many: Vec<Upstream> = (0..=MAX_UPSTREAMS)
            .map(|i| format!("{}=b:8443", 10_000 + i).parse().expect("upstream"))
            .collect();
        assert!(check_unique(&many[..MAX_UPSTREAMS]).is_ok());
        assert!(check_unique(&many)
            .expect_err("too many")
            .contains("at most 64"));
    }
}
