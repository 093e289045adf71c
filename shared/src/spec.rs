//! What one sidecar is told: [`SidecarSpec`], built by the spawner from a target's labels and
//! rendered into the sidecar's environment ([`SidecarSpec::to_env`]); the sidecar reads the same
//! variables back through its command line (`sidecar::config::Cli`, whose `Config::spec` gives
//! the spec back). A property test (`spawner/tests/contract.rs`) checks the round trip over
//! generated specs and label sets, so a label the spawner accepts always starts a sidecar.

use std::fmt;
use std::num::NonZeroU16;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::addr::{BackendAddr, ListenAddr};
use crate::dns::SanName;
use crate::identity::Identities;
use crate::mode::{ClientAuthMode, Mode};
use crate::parse::{render_duration, MaxAge};
use crate::proto::{AlpnList, BackendProtocol, ProxyProtocol, TlsGroups};
use crate::schema::{env, CERTS_MOUNT};
use crate::service_identity::{TrustDomain, Upstream};
use crate::telemetry::LogFormat;

/// Everything the spawner tells one sidecar. Settings the spawner never sets (limits, timeouts
/// other than the grace) are absent: the sidecar's defaults apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarSpec {
    pub listen: ListenAddr,
    pub backend: BackendAddr,
    pub mode: Mode,
    pub certificate: Certificate,
    pub client_auth: Option<ClientAuth>,
    pub redirect_listen: Option<ListenAddr>,
    pub hsts: Option<MaxAge>,
    /// http mode: HTTP/3 over QUIC on UDP beside the TLS listener (`None`: TCP only).
    pub http3: Option<Http3>,
    /// http mode: the HTTP version spoken to the backend.
    pub backend_protocol: BackendProtocol,
    /// tcp mode: ALPN protocols offered (empty: none).
    pub alpn: AlpnList,
    /// tcp mode: PROXY protocol header to the backend.
    pub proxy_protocol: ProxyProtocol,
    /// The TLS key-exchange groups agreed, in order (empty: the sidecar's default, every group
    /// with X25519MLKEM768 first).
    pub tls_groups: TlsGroups,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub exit_when_orphaned: bool,
    /// HTTP-01 answers served on the redirect listener from `DIR/.well-known/acme-challenge/`.
    pub acme_webroot: Option<PathBuf>,
    /// TLS-ALPN-01 challenge certificates, `DIR/<name>.pem`, answered on the TLS listener.
    pub acme_tls_alpn_dir: Option<PathBuf>,
    /// Service identity: the sidecar's identity files (with `--identity-domain` on the spawner).
    pub identity: Option<IdentityFiles>,
    /// Egress relays to other services (need `identity`).
    pub upstreams: Vec<Upstream>,
}

/// HTTP/3 (`--http3`): served over QUIC on UDP at the TLS listener's address and port, and
/// announced to HTTP/1.1 and HTTP/2 clients in `Alt-Svc: h3=":PORT"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Http3 {
    /// The port `Alt-Svc` names (`--http3-advertise-port`): where clients reach the UDP listener
    /// from outside, when the engine publishes it on another port. `None`: the listener's own.
    pub advertise_port: Option<NonZeroU16>,
}

/// A sidecar's service identity: its certificate and key (reloaded when they change), the trust
/// bundle of the identity CA (upstream servers are verified against it), and the trust domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub domain: TrustDomain,
}

/// The certificate a sidecar serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Certificate {
    /// PEM chain and key files (reloaded when they change).
    Files { cert: PathBuf, key: PathBuf },
    /// Generated at start for these names.
    SelfSigned { names: Vec<SanName> },
    /// Pairs in certbot's layout under `dir` (`live/<name>/`), chosen by SNI and picked up
    /// when they appear; a certificate generated for `names` serves until the first one does.
    /// What an ACME-managed sidecar is started with: it must switch to the obtained certificate
    /// without a restart.
    Dir { dir: PathBuf, names: Vec<SanName> },
}

/// Mutual TLS: client certificates verified against `ca`, then matched against `allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    pub ca: PathBuf,
    pub mode: ClientAuthMode,
    pub allow: Identities,
}

impl SidecarSpec {
    /// The environment that tells a sidecar this spec: `(name, value)` pairs, each variable at
    /// most once, unset settings left out so the sidecar's defaults apply.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            (env::LISTEN, self.listen.to_string()),
            (env::BACKEND, self.backend.to_string()),
            (env::MODE, self.mode.to_string()),
            (env::SHUTDOWN_GRACE, render_duration(self.shutdown_grace)),
            (env::LOG_FORMAT, self.log_format.to_string()),
        ];
        match &self.certificate {
            Certificate::Files { cert, key } => {
                out.push((env::CERT, cert.display().to_string()));
                out.push((env::KEY, key.display().to_string()));
            }
            Certificate::SelfSigned { names } => {
                out.push((
                    env::SELF_SIGNED_NAMES,
                    crate::identity::List(names.clone()).to_string(),
                ));
            }
            Certificate::Dir { dir, names } => {
                out.push((env::CERTS_DIR, dir.display().to_string()));
                out.push((
                    env::SELF_SIGNED_NAMES,
                    crate::identity::List(names.clone()).to_string(),
                ));
            }
        }
        if let Some(auth) = &self.client_auth {
            out.push((env::CLIENT_CA, auth.ca.display().to_string()));
            out.push((env::CLIENT_AUTH, auth.mode.to_string()));
            let lists = [
                (env::ALLOW_CN, auth.allow.cn.to_string()),
                (env::ALLOW_DNS_SAN, auth.allow.dns.to_string()),
                (env::ALLOW_URI_SAN, auth.allow.uri.to_string()),
            ];
            out.extend(lists.into_iter().filter(|(_, v)| !v.is_empty()));
        }
        if let Some(addr) = self.redirect_listen {
            out.push((env::REDIRECT_LISTEN, addr.to_string()));
        }
        if let Some(max_age) = self.hsts {
            out.push((env::HSTS, max_age.to_string()));
        }
        if let Some(h3) = self.http3 {
            out.push((env::HTTP3, "true".to_string()));
            if let Some(port) = h3.advertise_port {
                out.push((env::HTTP3_ADVERTISE_PORT, port.to_string()));
            }
        }
        if self.backend_protocol != BackendProtocol::Auto {
            out.push((env::BACKEND_PROTOCOL, self.backend_protocol.to_string()));
        }
        if !self.alpn.is_empty() {
            out.push((env::ALPN, self.alpn.to_string()));
        }
        if self.proxy_protocol != ProxyProtocol::Off {
            out.push((env::PROXY_PROTOCOL, self.proxy_protocol.to_string()));
        }
        if !self.tls_groups.is_empty() {
            out.push((env::TLS_GROUPS, self.tls_groups.to_string()));
        }
        if self.exit_when_orphaned {
            out.push((env::EXIT_WHEN_ORPHANED, "true".to_string()));
        }
        if let Some(dir) = &self.acme_webroot {
            out.push((env::ACME_WEBROOT, dir.display().to_string()));
        }
        if let Some(dir) = &self.acme_tls_alpn_dir {
            out.push((env::ACME_TLS_ALPN_DIR, dir.display().to_string()));
        }
        if let Some(id) = &self.identity {
            out.push((env::IDENTITY_CERT, id.cert.display().to_string()));
            out.push((env::IDENTITY_KEY, id.key.display().to_string()));
            out.push((env::IDENTITY_CA, id.ca.display().to_string()));
            out.push((env::IDENTITY_DOMAIN, id.domain.to_string()));
        }
        if !self.upstreams.is_empty() {
            out.push((
                env::UPSTREAMS,
                crate::identity::List(self.upstreams.clone()).to_string(),
            ));
        }
        out
    }

    /// [`SidecarSpec::to_env`] as `NAME=value` strings, as the engine's API takes them.
    pub fn to_env_strings(&self) -> Vec<String> {
        self.to_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

/// A file under the certificate mount, as a label names it: relative (`ca/clients.pem`) or
/// absolute within the mount (`/certs/ca/clients.pem`). `..` is refused outright rather than
/// resolved, so a label can never name a file outside what the operator chose to mount. Renders
/// as the absolute path inside the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MountedPath(String);

impl MountedPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path relative to the mount (`ca/clients.pem`).
    pub fn relative(&self) -> &str {
        self.0
            .strip_prefix(CERTS_MOUNT)
            .unwrap_or(&self.0)
            .trim_start_matches('/')
    }
}

impl FromStr for MountedPath {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let v = text.trim();
        let expected = || format!("expected a file path under {CERTS_MOUNT}, got {v:?}");
        if v.chars().any(|c| c.is_control() || c == ',') {
            return Err(expected());
        }
        let rel = match v.strip_prefix(CERTS_MOUNT) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ if v.starts_with('/') => return Err(expected()),
            _ => v,
        };
        let segments: Vec<&str> = rel
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        if segments.is_empty() || segments.contains(&"..") {
            return Err(expected());
        }
        Ok(MountedPath(format!("{CERTS_MOUNT}/{}", segments.join("/"))))
    }
}

impl fmt::Display for MountedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounted_paths_stay_under_the_mount() {
        let ok = |v: &str| v.parse::<MountedPath>().map(|p| p.to_string());
        assert_eq!(ok("ca/clients.pem").as_deref(), Ok("/certs/ca/clients.pem"));
        assert_eq!(ok("/certs/ca//./c.pem").as_deref(), Ok("/certs/ca/c.pem"));
        assert_eq!(
            "/certs/a/b.pem"
                .parse::<MountedPath>()
                .map(|p| p.relative().to_string()),
            Ok("a/b.pem".to_string())
        );
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "/certsx/a",
            "/certs",
            "a,b",
        ] {
            assert!(ok(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_holds_each_setting_once_and_only_what_is_set() {
        let spec = SidecarSpec {
            listen: ListenAddr::any(8443),
            backend: "3000".parse().expect("backend"),
            mode: Mode::Tcp,
            certificate: Certificate::SelfSigned {
                names: vec![
                    "web".parse().expect("name"),
                    "127.0.0.1".parse().expect("ip"),
                ],
            },
            client_auth: None,
            redirect_listen: None,
            hsts: None,
            http3: None,
            backend_protocol: BackendProtocol::Auto,
            alpn: AlpnList::default(),
            proxy_protocol: ProxyProtocol::Off,
            tls_groups: TlsGroups::default(),
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Text,
            exit_when_orphaned: false,
            acme_webroot: None,
            acme_tls_alpn_dir: None,
            identity: None,
            upstreams: Vec::new(),
        };
        assert_eq!(
            spec.to_env_strings(),
            [
                "SIDECAR_LISTEN=0.0.0.0:8443",
                "SIDECAR_BACKEND=127.0.0.1:3000",
                "SIDECAR_MODE=tcp",
                "SIDECAR_SHUTDOWN_GRACE=10s",
                "SIDECAR_LOG_FORMAT=text",
                "SIDECAR_SELF_SIGNED_NAMES=web,127.0.0.1",
            ]
        );
        let spec = SidecarSpec {
            alpn: "h2,http/1.1".parse().expect("alpn"),
            proxy_protocol: ProxyProtocol::V2,
            backend_protocol: BackendProtocol::H2c,
            tls_groups: "X25519MLKEM768".parse().expect("groups"),
            ..spec
        };
        let env = spec.to_env_strings();
        assert!(
            !env.iter().any(|e| e.starts_with("SIDECAR_HTTP3")),
            "{env:?}"
        );
        for want in [
            "SIDECAR_TLS_GROUPS=X25519MLKEM768",
            "SIDECAR_ALPN=h2,http/1.1",
            "SIDECAR_PROXY_PROTOCOL=v2",
            "SIDECAR_BACKEND_PROTOCOL=h2c",
        ] {
            assert!(env.iter().any(|e| e == want), "{want} missing from {env:?}");
        }
    }

    #[test]
    fn http3_is_told_as_a_switch_and_an_optional_advertised_port() {
        let spec = |http3| SidecarSpec {
            listen: ListenAddr::any(8443),
            backend: "3000".parse().expect("backend"),
            mode: Mode::Http,
            certificate: Certificate::SelfSigned {
                names: vec!["web".parse().expect("name")],
            },
            client_auth: None,
            redirect_listen: None,
            hsts: None,
            http3,
            backend_protocol: BackendProtocol::Auto,
            alpn: AlpnList::default(),
            proxy_protocol: ProxyProtocol::Off,
            tls_groups: TlsGroups::default(),
            shutdown_grace: Duration::from_secs(10),
            log_format: LogFormat::Text,
            exit_when_orphaned: false,
            acme_webroot: None,
            acme_tls_alpn_dir: None,
            identity: None,
            upstreams: Vec::new(),
        };
        let h3 = |env: Vec<String>| -> Vec<String> {
            env.into_iter()
                .filter(|e| e.starts_with("SIDECAR_HTTP3"))
                .collect()
        };
        assert!(h3(spec(None).to_env_strings()).is_empty());
        assert_eq!(
            h3(spec(Some(Http3::default())).to_env_strings()),
            ["SIDECAR_HTTP3=true"]
        );
        let published = Http3 {
            advertise_port: NonZeroU16::new(443),
        };
        assert_eq!(
            h3(spec(Some(published)).to_env_strings()),
            ["SIDECAR_HTTP3=true", "SIDECAR_HTTP3_ADVERTISE_PORT=443"]
        );
    }
}
