//! Command line and environment -> a validated [`Config`], before any socket is opened.
//!
//! Every flag can also be set from its `SIDECAR_*` environment variable (the names live in
//! `shared::schema::env`, the contract with the spawner). gosslterm's variables are accepted as
//! aliases so its users can switch without touching their deployment: `GOSSLTERM_FRONTEND_ADDR`,
//! `GOSSLTERM_BACKEND_ADDR`, `GOSSLTERM_CERT` and `GOSSLTERM_KEY` each stand for one flag and are
//! read only when that flag (or its `SIDECAR_*` variable) is not given; `LOG_LEVEL` sets the log
//! level when `RUST_LOG` is unset.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use shared::addr::{BackendAddr, ListenAddr};
use shared::dns::SanName;
use shared::identity::{CommonName, DnsPattern, Identities, List, UriPattern};
use shared::mode::ClientAuthMode;
pub use shared::mode::Mode;
use shared::mode::{check_mode, ModeSetting, ModeSettings};
use shared::parse::{duration, MaxAge};
pub(crate) use shared::proto::ProxyProtocol;
use shared::proto::{AlpnList, BackendProtocol, TlsGroups};
use shared::schema::env;
use shared::service_identity::{check_unique, TrustDomain, Upstream};
use shared::spec::{self, Certificate, IdentityFiles, SidecarSpec};
use shared::telemetry::{LogFormat, LogLevel, RUST_LOG};

use crate::error::ConfigError;

use shared::addr::{DEFAULT_BACKEND_PORT, DEFAULT_LISTEN_PORT};

/// Default cap per client address: far above what one real client holds (a browser opens at
/// most 6 connections per origin, an HTTP/2 client one, a service its pool), far below the
/// connection limit, so one address cannot take the sidecar's slots.
const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 256;
/// Default handshake budget: a tenth of the default connection limit, several times what two
/// cores can complete in a second, so real bursts fit and stalls cannot take every slot.
const DEFAULT_MAX_HANDSHAKES: u32 = 1024;
/// Default listen backlog: the kernel's default cap (net.core.somaxconn since Linux 5.4), well
/// above the 128 that would drop SYNs in a burst.
const DEFAULT_LISTEN_BACKLOG: u32 = 4096;
/// Most serving threads (`--workers`).
const MAX_WORKERS: u32 = 256;

/// TLS terminator for one local service: TLS in on `--listen`, plain HTTP or TCP out to
/// `--backend`.
#[derive(Debug, Parser)]
#[command(name = "sidecar", version, about, long_about = None)]
pub struct Cli {
    /// Address to accept TLS on: IP:PORT, [IPv6]:PORT, or PORT / :PORT for all IPv4 interfaces
    /// [default: 0.0.0.0:8443] (alias env: GOSSLTERM_FRONTEND_ADDR)
    #[arg(long, env = env::LISTEN, value_name = "ADDR", value_parser = ListenAddr::from_str)]
    listen: Option<ListenAddr>,

    /// Address of the service to proxy to: HOST:PORT, IP:PORT, [IPv6]:PORT, or PORT / :PORT for
    /// 127.0.0.1 [default: 127.0.0.1:8080] (alias env: GOSSLTERM_BACKEND_ADDR)
    #[arg(long, env = env::BACKEND, value_name = "ADDR", value_parser = BackendAddr::from_str)]
    backend: Option<BackendAddr>,

    /// What to proxy: `http` (HTTP/1.1 and HTTP/2 in front; to the backend as
    /// --backend-protocol says) or `tcp` (raw bytes)
    #[arg(long, env = env::MODE, value_name = "MODE", value_parser = Mode::from_str, default_value_t = Mode::Http)]
    mode: Mode,

    /// http mode: the HTTP version spoken to the backend: `auto` sends gRPC requests
    /// (`content-type: application/grpc...`) over HTTP/2 cleartext (h2c, prior knowledge) and
    /// everything else over HTTP/1.1; `http1` sends everything over HTTP/1.1; `h2c` everything
    /// over HTTP/2. Refused in tcp mode
    #[arg(long, env = env::BACKEND_PROTOCOL, value_name = "PROTOCOL", value_parser = BackendProtocol::from_str, default_value_t = BackendProtocol::Auto)]
    backend_protocol: BackendProtocol,

    /// tcp mode: ALPN protocols offered to clients, in preference order (comma list, e.g.
    /// `h2,http/1.1`; gRPC clients need `h2`). Refused in http mode, which chooses its own
    /// [default: none]
    #[arg(long, env = env::ALPN, value_name = "PROTOCOLS", value_parser = AlpnList::from_str)]
    alpn: Option<AlpnList>,

    /// tcp mode: send a PROXY protocol header (`v1` text, `v2` binary with ALPN, SNI and TLS
    /// TLVs) to the backend before relaying, so it sees the client's address; `off` sends none.
    /// Refused in http mode
    #[arg(long, env = env::PROXY_PROTOCOL, value_name = "VERSION", value_parser = ProxyProtocol::from_str, default_value_t = ProxyProtocol::Off)]
    proxy_protocol: ProxyProtocol,

    /// TLS key-exchange groups agreed with clients and upstreams, in preference order (comma
    /// list of IANA names: X25519MLKEM768, X25519, secp256r1, secp384r1). `X25519MLKEM768` alone
    /// refuses clients without post-quantum key exchange [default:
    /// X25519MLKEM768,X25519,secp256r1,secp384r1]
    #[arg(long, env = env::TLS_GROUPS, value_name = "GROUPS", value_parser = TlsGroups::from_str)]
    tls_groups: Option<TlsGroups>,

    /// PEM certificate chain (leaf first); needs --key. Without both, a self-signed certificate
    /// is generated at start (alias env: GOSSLTERM_CERT)
    #[arg(long, env = env::CERT, value_name = "FILE")]
    cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) matching --cert (alias env:
    /// GOSSLTERM_KEY)
    #[arg(long, env = env::KEY, value_name = "FILE")]
    key: Option<PathBuf>,

    /// Directory of certificate pairs chosen by SNI: certbot's `live/<name>/fullchain.pem` +
    /// `privkey.pem`, or flat `<name>.crt`/`<name>.pem` + `<name>.key` [default: none]
    #[arg(long, env = env::CERTS_DIR, value_name = "DIR")]
    certs_dir: Option<PathBuf>,

    /// How often certificate files (and --client-ca, --client-crl) are re-read and compared by
    /// content, besides reloading on SIGHUP and on file-change notifications
    #[arg(long, env = env::RELOAD_INTERVAL, value_parser = duration, default_value = "60s")]
    reload_interval: Duration,

    /// PEM bundle of CAs that issue client certificates: enables mutual TLS; reloaded like the
    /// certificates (a broken file keeps the previous CAs) [default: off]
    #[arg(long, env = env::CLIENT_CA, value_name = "FILE")]
    client_ca: Option<PathBuf>,

    /// With --client-ca: `required` refuses clients without a valid certificate, `optional`
    /// asks for one but also admits clients without [default: required]
    #[arg(long, env = env::CLIENT_AUTH, value_name = "MODE", value_parser = ClientAuthMode::from_str)]
    client_auth: Option<ClientAuthMode>,

    /// PEM file of certificate revocation lists for --client-ca; reloaded like the certificates
    /// (a broken file keeps the previous CRLs) [default: none]
    #[arg(long, env = env::CLIENT_CRL, value_name = "FILE")]
    client_crl: Option<PathBuf>,

    /// Admit client certificates with this subject common name (comma list; repeatable)
    #[arg(long, env = env::ALLOW_CN, value_name = "CN", value_parser = List::<CommonName>::from_str)]
    allow_cn: Vec<List<CommonName>>,

    /// Admit client certificates with this DNS SAN; `*` matches one label (comma list;
    /// repeatable)
    #[arg(long, env = env::ALLOW_DNS_SAN, value_name = "NAME", value_parser = List::<DnsPattern>::from_str)]
    allow_dns_san: Vec<List<DnsPattern>>,

    /// Admit client certificates with this URI SAN (e.g. a SPIFFE ID); `*` matches one path
    /// segment (comma list; repeatable)
    #[arg(long, env = env::ALLOW_URI_SAN, value_name = "URI", value_parser = List::<UriPattern>::from_str)]
    allow_uri_san: Vec<List<UriPattern>>,

    /// Comma-separated DNS names (`*.name` wildcards too) and IP addresses for the self-signed
    /// certificate [default: this host's name, localhost, 127.0.0.1, ::1]
    #[arg(long, env = env::SELF_SIGNED_NAMES, value_name = "NAMES", value_parser = List::<SanName>::from_str)]
    self_signed_names: Vec<List<SanName>>,

    /// Close connections that have not completed the TLS handshake within this time
    #[arg(long, env = env::HANDSHAKE_TIMEOUT, value_parser = duration, default_value = "10s")]
    handshake_timeout: Duration,

    /// Close connections with no request in flight (http) or no bytes moving (tcp) for this long
    #[arg(long, env = env::IDLE_TIMEOUT, value_parser = duration, default_value = "60s")]
    idle_timeout: Duration,

    /// Most connections served at once. When all are taken, the connection idle for longest
    /// (a keep-alive connection with no request in flight, or a stalled handshake) is closed to
    /// admit the new one; when none is idle, new connections wait in the listen backlog
    #[arg(long, env = env::MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..), default_value_t = 10_000)]
    max_connections: u32,

    /// Most connections one client address holds (an IPv4 address, an IPv6 /64); more are
    /// closed at accept. 0 = no cap. Behind a load balancer or Docker's userland proxy all
    /// clients share one address: raise it or set 0 there
    #[arg(long, env = env::MAX_CONNECTIONS_PER_IP, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: u32,

    /// Most connections in the TLS handshake at once; one more closes the handshake that has
    /// waited longest, so stalled handshakes cannot hold the connection slots
    #[arg(long, env = env::MAX_HANDSHAKES, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), default_value_t = DEFAULT_MAX_HANDSHAKES)]
    max_handshakes: u32,

    /// Length of the kernel's queue of connections not yet accepted (capped by the kernel's
    /// net.core.somaxconn)
    #[arg(long, env = env::LISTEN_BACKLOG, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=65535), default_value_t = DEFAULT_LISTEN_BACKLOG)]
    listen_backlog: u32,

    /// Serving threads, each with its own event loop, accepting from the shared listener and
    /// keeping its connections (and their backend connections) to itself; 0 = one per CPU the
    /// process may use (its cgroup quota counts)
    #[arg(long, env = env::WORKERS, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=MAX_WORKERS as i64), default_value_t = 0)]
    workers: u32,

    /// HTTP/1.1 `Upgrade` protocols passed to the backend (comma list; empty = none). Other
    /// upgrade requests are forwarded as plain requests without their `Upgrade` header. `h2c`
    /// cannot be allowed: its tunnel would bypass the forwarding headers and the access log
    #[arg(long, env = env::ALLOW_UPGRADE, value_name = "PROTOCOLS", value_delimiter = ',', default_value = "websocket")]
    allow_upgrade: Vec<String>,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish before the process exits
    #[arg(long, env = env::SHUTDOWN_GRACE, value_parser = duration, default_value = "10s")]
    shutdown_grace: Duration,

    /// Upgrade in place: take the listening sockets over from the sidecar running on the same
    /// --listen address (same user, same network namespace), which drains and exits 0 once this
    /// one is ready to accept; without one running, bind as usual
    #[arg(long, env = env::TAKE_OVER)]
    take_over: bool,

    /// Bound on a whole take-over, from asking the running sidecar to being ready to accept; the
    /// running one gives up on a successor that is not ready within it or its own, the shorter
    /// (1s to 10m)
    #[arg(long, env = env::TAKE_OVER_TIMEOUT, value_parser = duration, default_value = "30s")]
    take_over_timeout: Duration,

    /// Plain-HTTP address for /healthz, /readyz and /metrics [default: off]
    #[arg(long, env = env::ADMIN_LISTEN, value_name = "ADDR")]
    admin_listen: Option<String>,

    /// Log output format on stderr. The level comes from RUST_LOG (default info), or while
    /// RUST_LOG is unset from gosslterm's LOG_LEVEL (trace, debug, info, warn or error)
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// How long to wait for a TCP connection to the backend (then 502 in http mode)
    #[arg(long, env = env::CONNECT_TIMEOUT, value_parser = duration, default_value = "5s")]
    connect_timeout: Duration,

    /// How long to wait for the backend's response headers (then 504)
    #[arg(long, env = env::BACKEND_TIMEOUT, value_parser = duration, default_value = "60s")]
    backend_timeout: Duration,

    /// How long a client may take to send a complete request head once it started one
    #[arg(long, env = env::HEADER_READ_TIMEOUT, value_parser = duration, default_value = "10s")]
    header_read_timeout: Duration,

    /// Plain-HTTP address that answers every request with a 308 redirect to https on the TLS
    /// port (and serves ACME challenges with --acme-webroot) [default: off]
    #[arg(long, env = env::REDIRECT_LISTEN, value_name = "ADDR")]
    redirect_listen: Option<String>,

    /// Port put in redirect Locations, when clients reach the TLS listener on another port than
    /// --listen's (e.g. a published port mapping) [default: the --listen port]
    #[arg(long, env = env::REDIRECT_PORT, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    redirect_port: Option<u16>,

    /// Serve `/.well-known/acme-challenge/<token>` on the redirect listener from
    /// `DIR/.well-known/acme-challenge/<token>` (certbot's webroot layout) [default: off]
    #[arg(long, env = env::ACME_WEBROOT, value_name = "DIR")]
    acme_webroot: Option<PathBuf>,

    /// Answer every ACME http-01 challenge on the redirect listener with `<token>.THUMBPRINT`,
    /// the key authorization of the ACME account with this key thumbprint (RFC 7638, SHA-256,
    /// base64url), without files: for ACME clients on other hosts (stateless mode). Only that
    /// account can use the answers. A --acme-webroot file, when there is one, is served first
    /// [default: off]
    #[arg(long, env = env::ACME_THUMBPRINT, value_name = "THUMBPRINT", value_parser = shared::parse::acme_thumbprint)]
    acme_thumbprint: Option<String>,

    /// Answer ACME TLS-ALPN-01 challenges (RFC 8737) on the TLS listener: a handshake offering
    /// ALPN `acme-tls/1` for a name with a file `DIR/<name>.pem` (the challenge certificate and
    /// its key) is answered with it and closed; all other traffic is unchanged [default: off]
    #[arg(long, env = env::ACME_TLS_ALPN_DIR, value_name = "DIR")]
    acme_tls_alpn_dir: Option<PathBuf>,

    /// Add `Strict-Transport-Security: max-age=<seconds>` to http-mode responses that lack it,
    /// e.g. `365d`, `1y` or `31536000` [default: off]
    #[arg(long, env = env::HSTS, value_name = "MAX_AGE", value_parser = MaxAge::from_str)]
    hsts: Option<MaxAge>,

    /// Append `; includeSubDomains` to the HSTS header (needs --hsts)
    #[arg(long, env = env::HSTS_INCLUDE_SUBDOMAINS)]
    hsts_include_subdomains: bool,

    /// Also serve HTTP/3: QUIC on UDP at the TLS listener's address and port, on the same
    /// certificates, client authentication and limits; HTTP/1.1 and HTTP/2 responses then carry
    /// `Alt-Svc: h3=":PORT"` (http mode) [default: off]
    #[arg(long, env = env::HTTP3)]
    http3: bool,

    /// The UDP port `Alt-Svc` advertises, when clients reach HTTP/3 on another port than the
    /// listener's (a published port mapping). Needs --http3 [default: the --listen port]
    #[arg(long, env = env::HTTP3_ADVERTISE_PORT, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    http3_advertise_port: Option<u16>,

    /// Shut down gracefully (exit 0) once this network namespace has lost every interface but
    /// `lo` after having had one: the container it belongs to is gone. For a sidecar in another
    /// container's namespace (`--network container:...`); checked every second
    #[arg(long, env = env::EXIT_WHEN_ORPHANED)]
    exit_when_orphaned: bool,

    /// Service identity: this sidecar's PEM certificate (`spiffe://DOMAIN/NAME` and DNS `NAME`),
    /// served to clients whose SNI is one of its DNS names and presented on every --upstream
    /// call; reloaded like --cert. Needs --identity-key, --identity-ca and --identity-domain
    /// [default: none]
    #[arg(long, env = env::IDENTITY_CERT, value_name = "FILE")]
    identity_cert: Option<PathBuf>,

    /// The private key of --identity-cert
    #[arg(long, env = env::IDENTITY_KEY, value_name = "FILE")]
    identity_key: Option<PathBuf>,

    /// PEM trust bundle of the identity CA (one root, or several during a CA roll-over):
    /// --upstream servers are verified against it; reloaded when it changes
    #[arg(long, env = env::IDENTITY_CA, value_name = "FILE")]
    identity_ca: Option<PathBuf>,

    /// Trust domain of the identity: an --upstream server must present
    /// `spiffe://DOMAIN/NAME` for its NAME
    #[arg(long, env = env::IDENTITY_DOMAIN, value_name = "DOMAIN", value_parser = TrustDomain::from_str)]
    identity_domain: Option<TrustDomain>,

    /// Egress relay `LOCAL=[NAME@]HOST:PORT`: plain TCP accepted on the loopback address LOCAL
    /// (`PORT` alone: 127.0.0.1:PORT) is relayed over mutual TLS to HOST:PORT, presenting this
    /// sidecar's identity; the server must present `spiffe://DOMAIN/NAME` (NAME defaults to
    /// HOST; required when HOST is an IP address). Needs the --identity-* flags (comma list;
    /// repeatable) [default: none]
    #[arg(long = "upstream", env = env::UPSTREAMS, value_name = "LOCAL=[NAME@]HOST:PORT", value_parser = List::<Upstream>::from_str)]
    upstreams: Vec<List<Upstream>>,
}

/// Where the served certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertSources {
    /// `--cert`/`--key`: the default certificate.
    pub pair: Option<PairPaths>,
    /// What the default pair's files were named by, for error messages: `--cert`/`--key`, or
    /// gosslterm's `GOSSLTERM_CERT`/`GOSSLTERM_KEY`.
    pub pair_flags: Flags,
    /// `--certs-dir`: certificates chosen by SNI.
    pub dir: Option<PathBuf>,
    /// Names for the self-signed certificate used when neither gives a default.
    pub self_signed_names: Vec<SanName>,
    /// Period of the content check that backs up file-change notifications.
    pub reload_interval: Duration,
    /// `--identity-*`: the service identity, served by SNI beside the others, presented on
    /// upstream calls, its trust bundle verifying upstream servers.
    pub identity: Option<IdentityFiles>,
}

impl CertSources {
    /// Whether any certificate comes from files (and so can be reloaded).
    pub(crate) fn has_files(&self) -> bool {
        self.pair.is_some() || self.dir.is_some() || self.identity.is_some()
    }

    /// Where the identity pair lives, named `identity` in logs and metrics.
    pub(crate) fn identity_pair(&self) -> Option<PairPaths> {
        self.identity.as_ref().map(|id| PairPaths {
            name: IDENTITY_NAME.to_string(),
            cert: id.cert.clone(),
            key: id.key.clone(),
        })
    }
}

/// The identity pair's name in logs and in `sidecar_certificate_expiry_seconds`.
const IDENTITY_NAME: &str = "identity";

/// Where one certificate/key pair lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PairPaths {
    pub name: String,
    pub cert: PathBuf,
    /// The key file; may be the certificate file itself (a combined PEM).
    pub key: PathBuf,
}

/// Flag names to put in error messages for a pair: `--cert`/`--key` for the default pair,
/// `--certs-dir` for pairs found in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flags {
    pub cert: &'static str,
    pub key: &'static str,
}

/// The default pair's flags.
pub(crate) const PAIR_FLAGS: Flags = Flags {
    cert: "--cert",
    key: "--key",
};
/// Flags for pairs found in `--certs-dir`.
pub(crate) const DIR_FLAGS: Flags = Flags {
    cert: "--certs-dir",
    key: "--certs-dir",
};

/// Flags of the service identity's pair.
pub(crate) const IDENTITY_FLAGS: Flags = Flags {
    cert: "--identity-cert",
    key: "--identity-key",
};

/// Mutual TLS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientAuth {
    pub ca: PathBuf,
    pub crl: Option<PathBuf>,
    pub mode: ClientAuthMode,
    pub allow: Identities,
}

/// Everything the sidecar needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Resolved at connect time when it is a name.
    pub(crate) backend: BackendAddr,
    pub mode: Mode,
    /// HTTP version to the backend (http mode).
    pub(crate) backend_protocol: BackendProtocol,
    /// Where TLS-ALPN-01 challenge certificates are read from.
    pub(crate) acme_tls_alpn_dir: Option<PathBuf>,
    /// ALPN protocols offered in tcp mode (empty: none); http mode always offers h2, http/1.1.
    pub(crate) alpn: AlpnList,
    /// PROXY protocol header sent to the backend in tcp mode.
    pub(crate) proxy_protocol: ProxyProtocol,
    /// Key-exchange groups as given (empty: the default, every group, X25519MLKEM768 first).
    pub(crate) tls_groups: TlsGroups,
    pub(crate) certs: CertSources,
    pub(crate) client_auth: Option<ClientAuth>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) header_read_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backend_timeout: Duration,
    pub(crate) max_connections: usize,
    /// 0 = no cap.
    pub(crate) max_connections_per_ip: usize,
    pub(crate) max_handshakes: usize,
    pub listen_backlog: u32,
    /// Serving threads (`--workers`, 0 resolved to the CPUs available).
    pub(crate) workers: usize,
    /// Lowercase protocol names an `Upgrade` may name.
    pub(crate) allow_upgrade: Vec<String>,
    pub(crate) shutdown_grace: Duration,
    /// `--take-over`: ask the sidecar running on `listen` for its listeners first.
    pub(crate) take_over: bool,
    /// Bound on a take-over, taking or handing (within [`TAKE_OVER_TIMEOUT_MIN`] and
    /// [`TAKE_OVER_TIMEOUT_MAX`]).
    pub(crate) take_over_timeout: Duration,
    pub admin_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    /// The log level `LOG_LEVEL` gave, used in place of `RUST_LOG` (which was unset); `None`:
    /// `RUST_LOG` or its default decide.
    pub log_level: Option<LogLevel>,
    pub redirect: Option<Redirect>,
    pub(crate) hsts: Option<Hsts>,
    /// `--http3`: HTTP/3 served beside the TLS listener.
    pub(crate) http3: Option<Http3>,
    /// Exit when the namespace's container is gone (see [`crate::server::orphan`]).
    pub(crate) exit_when_orphaned: bool,
    /// Egress relays (`--upstream`), each on its own loopback address; only with an identity
    /// (`certs.identity`).
    pub upstreams: Vec<Upstream>,
}

/// The HTTP->HTTPS redirect listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub listen: SocketAddr,
    /// Port in the Locations; `None` means the TLS listener's own port.
    pub(crate) port: Option<u16>,
    /// Where ACME http-01 challenge files are read from.
    pub(crate) acme_webroot: Option<PathBuf>,
    /// The ACME account thumbprint every http-01 challenge is answered with.
    pub(crate) acme_thumbprint: Option<String>,
}

/// HTTP/3 beside the TLS listener (`--http3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Http3 {
    /// The port `Alt-Svc` names; `None`: the TLS listener's own.
    pub advertise_port: Option<u16>,
}

/// The `Strict-Transport-Security` policy added to http-mode responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hsts {
    pub max_age: u64,
    pub include_subdomains: bool,
}

impl Hsts {
    /// The header value, e.g. `max-age=31536000; includeSubDomains`.
    pub(crate) fn header_value(&self) -> String {
        if self.include_subdomains {
            format!("max-age={}; includeSubDomains", self.max_age)
        } else {
            format!("max-age={}", self.max_age)
        }
    }
}

impl Cli {
    /// Validates the parsed command line. `getenv` supplies the alias variables (the process
    /// environment in `main`, a map in tests) and `hostname` the default self-signed name.
    pub fn into_config(
        self,
        getenv: impl Fn(&str) -> Option<String>,
        hostname: Option<String>,
    ) -> Result<Config, ConfigError> {
        let listen = match (self.listen, getenv(env::GOSSLTERM_FRONTEND_ADDR)) {
            (Some(addr), _) => addr,
            (None, Some(text)) => alias(env::GOSSLTERM_FRONTEND_ADDR, &text)?,
            (None, None) => ListenAddr::any(DEFAULT_LISTEN_PORT),
        }
        .socket_addr();
        let backend = match (self.backend, getenv(env::GOSSLTERM_BACKEND_ADDR)) {
            (Some(addr), _) => addr,
            (None, Some(text)) => alias(env::GOSSLTERM_BACKEND_ADDR, &text)?,
            (None, None) => BackendAddr::local(DEFAULT_BACKEND_PORT),
        };

        let admin_listen = optional_listen("--admin-listen", self.admin_listen)?;
        let redirect = redirect(
            optional_listen("--redirect-listen", self.redirect_listen)?,
            self.redirect_port,
            self.acme_webroot,
            self.acme_thumbprint,
        )?;
        let hsts = hsts(self.hsts, self.hsts_include_subdomains)?;
        let alpn = self.alpn.unwrap_or_default();
        let http3 = http3(self.http3, self.http3_advertise_port)?;
        mode_rules(
            self.mode,
            self.hsts,
            self.http3,
            self.backend_protocol,
            &alpn,
            self.proxy_protocol,
        )?;

        let pair = default_pair(
            given(self.cert, &getenv, env::GOSSLTERM_CERT),
            given(self.key, &getenv, env::GOSSLTERM_KEY),
        )?;
        let log_level = log_level(getenv(RUST_LOG), getenv(env::LOG_LEVEL))?;
        let identity = identity_files(
            self.identity_cert,
            self.identity_key,
            self.identity_ca,
            self.identity_domain,
        )?;
        let upstreams = upstreams(self.upstreams, identity.is_some())?;
        let (pair, pair_flags) = match pair {
            Some((pair, flags)) => (Some(pair), flags),
            None => (None, PAIR_FLAGS),
        };
        let certs = CertSources {
            pair,
            pair_flags,
            dir: self.certs_dir,
            self_signed_names: self_signed_names(self.self_signed_names, hostname)?,
            reload_interval: self.reload_interval,
            identity,
        };

        let allow = Identities {
            cn: List::concat(self.allow_cn),
            dns: List::concat(self.allow_dns_san),
            uri: List::concat(self.allow_uri_san),
        };
        let client_auth = client_auth(self.client_ca, self.client_crl, self.client_auth, allow)?;

        let allow_upgrade = upgrade_protocols(self.allow_upgrade)?;

        Ok(Config {
            listen,
            backend,
            mode: self.mode,
            backend_protocol: self.backend_protocol,
            acme_tls_alpn_dir: self.acme_tls_alpn_dir,
            alpn,
            proxy_protocol: self.proxy_protocol,
            tls_groups: self.tls_groups.unwrap_or_default(),
            certs,
            client_auth,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            header_read_timeout: self.header_read_timeout,
            connect_timeout: self.connect_timeout,
            backend_timeout: self.backend_timeout,
            max_connections: self.max_connections as usize,
            max_connections_per_ip: self.max_connections_per_ip as usize,
            max_handshakes: self.max_handshakes as usize,
            listen_backlog: self.listen_backlog,
            workers: workers(self.workers),
            allow_upgrade,
            shutdown_grace: self.shutdown_grace,
            take_over: self.take_over,
            take_over_timeout: take_over_timeout(self.take_over_timeout)?,
            admin_listen,
            log_format: self.log_format,
            log_level,
            redirect,
            hsts,
            http3,
            exit_when_orphaned: self.exit_when_orphaned,
            upstreams,
        })
    }
}

/// Shortest `--take-over-timeout`: loading certificates and binding take milliseconds, but a
/// loaded machine may need a second.
pub(crate) const TAKE_OVER_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Longest `--take-over-timeout`: a successor that is not ready in ten minutes will not be.
pub(crate) const TAKE_OVER_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// `--take-over-timeout`, within its range.
fn take_over_timeout(given: Duration) -> Result<Duration, ConfigError> {
    if (TAKE_OVER_TIMEOUT_MIN..=TAKE_OVER_TIMEOUT_MAX).contains(&given) {
        return Ok(given);
    }
    Err(ConfigError::Invalid {
        flag: "--take-over-timeout",
        value: shared::parse::render_duration(given),
        reason: "must be from 1s to 10m".to_string(),
    })
}

/// `--workers`: 0 is one per CPU the process may use (its cgroup quota counts).
fn workers(asked: u32) -> usize {
    match asked {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// `--redirect-listen` with what only it makes meaningful: `--redirect-port`, `--acme-webroot`,
/// `--acme-thumbprint`.
fn redirect(
    listen: Option<SocketAddr>,
    port: Option<u16>,
    acme_webroot: Option<PathBuf>,
    acme_thumbprint: Option<String>,
) -> Result<Option<Redirect>, ConfigError> {
    match listen {
        Some(listen) => Ok(Some(Redirect {
            listen,
            port,
            acme_webroot,
            acme_thumbprint,
        })),
        None => {
            if let Some(thumbprint) = acme_thumbprint {
                return Err(ConfigError::Invalid {
                    flag: "--acme-thumbprint",
                    value: thumbprint,
                    reason:
                        "needs --redirect-listen: challenges are served on the redirect listener"
                            .to_string(),
                });
            }
            if let Some(dir) = acme_webroot {
                return Err(ConfigError::Invalid {
                    flag: "--acme-webroot",
                    value: dir.display().to_string(),
                    reason:
                        "needs --redirect-listen: challenges are served on the redirect listener"
                            .to_string(),
                });
            }
            if let Some(port) = port {
                return Err(ConfigError::Invalid {
                    flag: "--redirect-port",
                    value: port.to_string(),
                    reason: "needs --redirect-listen".to_string(),
                });
            }
            Ok(None)
        }
    }
}

/// `--hsts` and `--hsts-include-subdomains`, which needs it.
fn hsts(max_age: Option<MaxAge>, include_subdomains: bool) -> Result<Option<Hsts>, ConfigError> {
    match (max_age, include_subdomains) {
        (Some(max_age), include_subdomains) => Ok(Some(Hsts {
            max_age: max_age.0,
            include_subdomains,
        })),
        (None, true) => Err(ConfigError::Invalid {
            flag: "--hsts-include-subdomains",
            value: "true".to_string(),
            reason: "needs --hsts".to_string(),
        }),
        (None, false) => Ok(None),
    }
}

/// `--http3` and `--http3-advertise-port`, which needs it.
fn http3(on: bool, advertise_port: Option<u16>) -> Result<Option<Http3>, ConfigError> {
    match (on, advertise_port) {
        (true, advertise_port) => Ok(Some(Http3 { advertise_port })),
        (false, Some(port)) => Err(ConfigError::Invalid {
            flag: "--http3-advertise-port",
            value: port.to_string(),
            reason: "needs --http3".to_string(),
        }),
        (false, None) => Ok(None),
    }
}

/// [`check_mode`], the rule the spawner's labels follow too, named in flags.
fn mode_rules(
    mode: Mode,
    hsts: Option<MaxAge>,
    http3: bool,
    backend_protocol: BackendProtocol,
    alpn: &AlpnList,
    proxy_protocol: ProxyProtocol,
) -> Result<(), ConfigError> {
    let settings = ModeSettings {
        hsts: hsts.is_some(),
        http3,
        backend_protocol,
        alpn,
        proxy_protocol,
    };
    let Err(conflict) = check_mode(mode, &settings) else {
        return Ok(());
    };
    let (flag, value) = match conflict.setting {
        ModeSetting::Hsts => ("--hsts", hsts.map(|m| m.to_string()).unwrap_or_default()),
        ModeSetting::Http3 => ("--http3", "true".to_string()),
        ModeSetting::BackendProtocol => ("--backend-protocol", backend_protocol.to_string()),
        ModeSetting::Alpn => ("--alpn", alpn.to_string()),
        ModeSetting::ProxyProtocol => ("--proxy-protocol", proxy_protocol.to_string()),
    };
    Err(ConfigError::Invalid {
        flag,
        value,
        reason: format!("needs --mode {}: {}", conflict.needs, conflict.why),
    })
}

/// `--client-ca` with what only it makes meaningful: `--client-crl`, `--client-auth` and the
/// allow-lists.
fn client_auth(
    ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    mode: Option<ClientAuthMode>,
    allow: Identities,
) -> Result<Option<ClientAuth>, ConfigError> {
    if let Some(ca) = ca {
        return Ok(Some(ClientAuth {
            ca,
            crl,
            mode: mode.unwrap_or_default(),
            allow,
        }));
    }
    let needs_ca = |flag: &'static str, value: String| ConfigError::Invalid {
        flag,
        value,
        reason: "needs --client-ca".to_string(),
    };
    if let Some(mode) = mode {
        return Err(needs_ca("--client-auth", mode.to_string()));
    }
    if let Some(crl) = crl {
        return Err(needs_ca("--client-crl", crl.display().to_string()));
    }
    if !allow.is_empty() {
        return Err(needs_ca(
            "--allow-cn/--allow-dns-san/--allow-uri-san",
            allow.describe(),
        ));
    }
    Ok(None)
}

/// A file of the default pair: its flag (or `SIDECAR_*` variable), else gosslterm's alias
/// variable (an empty one counts as unset).
fn given(
    ours: Option<PathBuf>,
    getenv: &impl Fn(&str) -> Option<String>,
    alias: &str,
) -> Option<Given> {
    ours.map(Given::Ours).or_else(|| {
        getenv(alias)
            .filter(|v| !v.is_empty())
            .map(|v| Given::Alias(PathBuf::from(v)))
    })
}

/// The `--identity-*` flags: all four or none.
fn identity_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    domain: Option<TrustDomain>,
) -> Result<Option<IdentityFiles>, ConfigError> {
    let given = [
        (
            "--identity-cert",
            cert.as_ref().map(|p| p.display().to_string()),
        ),
        (
            "--identity-key",
            key.as_ref().map(|p| p.display().to_string()),
        ),
        (
            "--identity-ca",
            ca.as_ref().map(|p| p.display().to_string()),
        ),
        (
            "--identity-domain",
            domain.as_ref().map(ToString::to_string),
        ),
    ];
    match (cert, key, ca, domain) {
        (Some(cert), Some(key), Some(ca), Some(domain)) => Ok(Some(IdentityFiles {
            cert,
            key,
            ca,
            domain,
        })),
        (None, None, None, None) => Ok(None),
        _ => {
            let missing: Vec<&str> = given
                .iter()
                .filter(|(_, v)| v.is_none())
                .map(|(f, _)| *f)
                .collect();
            let Some((flag, Some(value))) = given.into_iter().find(|(_, v)| v.is_some()) else {
                return Ok(None);
            };
            Err(ConfigError::Invalid {
                flag,
                value,
                reason: format!(
                    "the service identity needs all four --identity-* flags; missing {}",
                    missing.join(", ")
                ),
            })
        }
    }
}

/// `--upstream`: the relays, each on its own local address, and only with an identity to
/// present.
fn upstreams(given: Vec<List<Upstream>>, identity: bool) -> Result<Vec<Upstream>, ConfigError> {
    let list = List::concat(given);
    if let Err(reason) = check_unique(&list.0) {
        return Err(ConfigError::Invalid {
            flag: "--upstream",
            value: list.to_string(),
            reason,
        });
    }
    if let (Some(first), false) = (list.0.first(), identity) {
        return Err(ConfigError::Invalid {
            flag: "--upstream",
            value: first.to_string(),
            reason: "needs the service identity (--identity-cert, --identity-key, --identity-ca, --identity-domain): the relay presents it to the server and verifies the server's against it".to_string(),
        });
    }
    Ok(list.0)
}

/// `--allow-upgrade`: lowercase tokens, empty entries dropped; `h2c` refused.
fn upgrade_protocols(given: Vec<String>) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for name in given {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        let invalid = |reason: &str| ConfigError::Invalid {
            flag: "--allow-upgrade",
            value: name.clone(),
            reason: reason.to_string(),
        };
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b))
        {
            return Err(invalid("not a protocol name (RFC 9110 token)"));
        }
        if name == "h2c" || name.starts_with("h2c/") {
            return Err(invalid(
                "h2c cannot be passed: the tunnel would bypass the forwarding headers and the access log (clients get HTTP/2 over TLS through ALPN)",
            ));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// A listener address where an empty value means off (an environment variable set to nothing).
fn optional_listen(
    flag: &'static str,
    text: Option<String>,
) -> Result<Option<SocketAddr>, ConfigError> {
    match text {
        Some(text) if !text.trim().is_empty() => ListenAddr::from_str(&text)
            .map(|a| Some(a.socket_addr()))
            .map_err(|reason| ConfigError::Invalid {
                flag,
                value: text,
                reason,
            }),
        _ => Ok(None),
    }
}

/// Where one file of the default pair was named: `--cert`/`--key` (or `SIDECAR_CERT`/
/// `SIDECAR_KEY`), or gosslterm's alias variable.
#[derive(Debug)]
enum Given {
    Ours(PathBuf),
    Alias(PathBuf),
}

/// `--cert` and `--key`, each possibly from its gosslterm alias: both or neither. Half a pair is
/// refused naming what was given, so a gosslterm user reads the variable they set.
/// With the pair, the names its two files were given by, for the errors of later loads.
fn default_pair(
    cert: Option<Given>,
    key: Option<Given>,
) -> Result<Option<(PairPaths, Flags)>, ConfigError> {
    let path = |g: Given, ours: &'static str, alias: &'static str| match g {
        Given::Ours(p) => (p, ours),
        Given::Alias(p) => (p, alias),
    };
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let (cert, cert_flag) = path(cert, PAIR_FLAGS.cert, env::GOSSLTERM_CERT);
            let (key, key_flag) = path(key, PAIR_FLAGS.key, env::GOSSLTERM_KEY);
            let pair = PairPaths {
                name: "default".to_string(),
                cert,
                key,
            };
            let flags = Flags {
                cert: cert_flag,
                key: key_flag,
            };
            Ok(Some((pair, flags)))
        }
        (Some(Given::Ours(_)), None) => Err(ConfigError::CertWithoutKey),
        (None, Some(Given::Ours(_))) => Err(ConfigError::KeyWithoutCert),
        (Some(Given::Alias(cert)), None) => Err(ConfigError::Invalid {
            flag: env::GOSSLTERM_CERT,
            value: cert.display().to_string(),
            reason: format!(
                "given without {} (or --key): both or neither are needed",
                env::GOSSLTERM_KEY
            ),
        }),
        (None, Some(Given::Alias(key))) => Err(ConfigError::Invalid {
            flag: env::GOSSLTERM_KEY,
            value: key.display().to_string(),
            reason: format!(
                "given without {} (or --cert): both or neither are needed",
                env::GOSSLTERM_CERT
            ),
        }),
        (None, None) => Ok(None),
    }
}

/// gosslterm's `LOG_LEVEL`, honoured only when `RUST_LOG` is unset (or empty): the level to log
/// at, or `None` for `RUST_LOG` and its default. An empty `LOG_LEVEL` counts as unset, as for
/// the other variables a deployment may leave blank; anything else must be a level.
fn log_level(
    rust_log: Option<String>,
    log_level: Option<String>,
) -> Result<Option<LogLevel>, ConfigError> {
    if rust_log.is_some_and(|v| !v.trim().is_empty()) {
        return Ok(None);
    }
    match log_level {
        Some(text) if !text.trim().is_empty() => alias(env::LOG_LEVEL, &text).map(Some),
        _ => Ok(None),
    }
}

/// A gosslterm alias variable, parsed with the grammar of the flag it stands for.
fn alias<T: FromStr<Err = String>>(name: &'static str, text: &str) -> Result<T, ConfigError> {
    T::from_str(text).map_err(|reason| ConfigError::Invalid {
        flag: name,
        value: text.to_string(),
        reason,
    })
}

/// The names for a self-signed certificate: the given lists, or the defaults (this host's name
/// when it is a valid name, localhost, 127.0.0.1, ::1).
fn self_signed_names(
    given: Vec<List<SanName>>,
    hostname: Option<String>,
) -> Result<Vec<SanName>, ConfigError> {
    if given.is_empty() {
        let mut names: Vec<SanName> = hostname
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty() && *h != "localhost")
            .and_then(|h| h.parse().ok())
            .into_iter()
            .collect();
        names.extend(["localhost", "127.0.0.1", "::1"].map(|n| {
            SanName::from_str(n).unwrap_or(SanName::Ip(std::net::Ipv6Addr::LOCALHOST.into()))
        }));
        return Ok(names);
    }
    let names = List::concat(given).0;
    if names.is_empty() {
        return Err(ConfigError::Invalid {
            flag: "--self-signed-names",
            value: String::new(),
            reason: "at least one name is needed".to_string(),
        });
    }
    Ok(names)
}

impl Config {
    /// The part of this configuration the spawner controls, as a [`SidecarSpec`]: what the
    /// sidecar understood from its environment. The contract test renders a spec, parses it here
    /// and compares.
    pub fn spec(&self) -> SidecarSpec {
        let certificate = match (&self.certs.pair, &self.certs.dir) {
            (Some(pair), _) => Certificate::Files {
                cert: pair.cert.clone(),
                key: pair.key.clone(),
            },
            (None, Some(dir)) => Certificate::Dir {
                dir: dir.clone(),
                names: self.certs.self_signed_names.clone(),
            },
            (None, None) => Certificate::SelfSigned {
                names: self.certs.self_signed_names.clone(),
            },
        };
        SidecarSpec {
            listen: self.listen.into(),
            backend: self.backend.clone(),
            mode: self.mode,
            certificate,
            client_auth: self.client_auth.as_ref().map(|a| spec::ClientAuth {
                ca: a.ca.clone(),
                mode: a.mode,
                allow: a.allow.clone(),
            }),
            redirect_listen: self.redirect.as_ref().map(|r| r.listen.into()),
            hsts: self.hsts.map(|h| MaxAge(h.max_age)),
            http3: self.http3.map(|h| spec::Http3 {
                advertise_port: h.advertise_port.and_then(std::num::NonZeroU16::new),
            }),
            backend_protocol: self.backend_protocol,
            alpn: self.alpn.clone(),
            proxy_protocol: self.proxy_protocol,
            tls_groups: self.tls_groups.clone(),
            shutdown_grace: self.shutdown_grace,
            log_format: self.log_format,
            exit_when_orphaned: self.exit_when_orphaned,
            acme_webroot: self.redirect.as_ref().and_then(|r| r.acme_webroot.clone()),
            acme_tls_alpn_dir: self.acme_tls_alpn_dir.clone(),
            identity: self.certs.identity.clone(),
            upstreams: self.upstreams.clone(),
        }
    }
}

/// This machine's (or container's) host name, for the default self-signed certificate.
pub fn system_hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cli(args: &[&str]) -> Cli {
        let mut all = vec!["sidecar"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("valid command line")
    }

    fn names(list: &[SanName]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cli(args).into_config(|k| env.get(k).cloned(), Some("app-host".to_string()))
    }

    #[test]
    fn take_over_is_a_switch_with_a_bounded_timeout() {
        let c = config(&[], &[]).expect("defaults");
        assert!(!c.take_over, "off unless asked for");
        assert_eq!(c.take_over_timeout, Duration::from_secs(30));
        let c = config(&["--take-over", "--take-over-timeout", "1s"], &[]).expect("valid");
        assert!(c.take_over);
        assert_eq!(c.take_over_timeout, Duration::from_secs(1));
        assert!(config(&["--take-over-timeout", "10m"], &[]).is_ok());
        for bad in ["999ms", "601s", "1h"] {
            let err = config(&["--take-over-timeout", bad], &[]).expect_err(bad);
            assert!(err.to_string().contains("--take-over-timeout"), "{err}");
        }
    }

    #[test]
    fn exit_when_orphaned_is_a_switch() {
        let c = config(&["--exit-when-orphaned"], &[]).expect("valid");
        assert!(c.exit_when_orphaned);
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let c = config(&[], &[]).expect("defaults are valid");
        assert_eq!(c.listen, "0.0.0.0:8443".parse().expect("addr"));
        assert_eq!(c.backend.authority(), "127.0.0.1:8080");
        assert_eq!(c.mode, Mode::Http);
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.max_connections_per_ip, 256);
        assert_eq!(c.max_handshakes, 1024);
        assert_eq!(c.listen_backlog, 4096);
        assert_eq!(c.allow_upgrade, vec!["websocket".to_string()]);
        assert_eq!(c.shutdown_grace, Duration::from_secs(10));
        assert_eq!(c.admin_listen, None);
        assert!(!c.exit_when_orphaned, "off unless asked for");
        assert_eq!(
            names(&c.certs.self_signed_names),
            ["app-host", "localhost", "127.0.0.1", "::1"]
        );
        assert_eq!(c.certs.pair, None);
        assert_eq!(c.certs.dir, None);
        assert_eq!(c.certs.reload_interval, Duration::from_secs(60));
        assert_eq!(c.client_auth, None);
    }

    #[test]
    fn gosslterm_aliases_apply_only_when_ours_are_unset() {
        let c = config(
            &[],
            &[
                ("GOSSLTERM_FRONTEND_ADDR", ":8081"),
                ("GOSSLTERM_BACKEND_ADDR", ":9000"),
            ],
        )
        .expect("aliases valid");
        assert_eq!(c.listen, "0.0.0.0:8081".parse().expect("addr"));
        assert_eq!(c.backend.authority(), "127.0.0.1:9000");

        let c = config(
            &["--listen", "127.0.0.1:1"],
            &[("GOSSLTERM_FRONTEND_ADDR", ":8081")],
        )
        .expect("valid");
        assert_eq!(c.listen, "127.0.0.1:1".parse().expect("addr"));
    }

    #[test]
    fn bad_alias_value_names_the_alias() {
        let err = config(&[], &[("GOSSLTERM_FRONTEND_ADDR", "nope")]).expect_err("invalid");
        assert!(err.to_string().contains("GOSSLTERM_FRONTEND_ADDR"), "{err}");
    }

    #[test]
    fn cert_and_key_go_together() {
        assert!(matches!(
            config(&["--cert", "c.pem"], &[]),
            Err(ConfigError::CertWithoutKey)
        ));
        assert!(matches!(
            config(&["--key", "k.pem"], &[]),
            Err(ConfigError::KeyWithoutCert)
        ));
        let c = config(&["--cert", "c.pem", "--key", "k.pem"], &[]).expect("valid");
        assert_eq!(
            c.certs.pair.map(|p| (p.cert, p.key)),
            Some(("c.pem".into(), "k.pem".into()))
        );
    }

    fn pair_of(c: &Config) -> Option<(PathBuf, PathBuf)> {
        c.certs.pair.clone().map(|p| (p.cert, p.key))
    }

    #[test]
    fn gosslterm_cert_and_key_name_the_default_pair() {
        let gosslterm = [
            ("GOSSLTERM_CERT", "/opt/qnib/ssl/cert.pem"),
            ("GOSSLTERM_KEY", "/opt/qnib/ssl/key.pem"),
        ];
        let c = config(&[], &gosslterm).expect("aliases valid");
        assert_eq!(
            pair_of(&c),
            Some((
                "/opt/qnib/ssl/cert.pem".into(),
                "/opt/qnib/ssl/key.pem".into()
            ))
        );
        assert!(c.certs.has_files(), "reloaded like --cert/--key");
        assert!(
            matches!(c.spec().certificate, Certificate::Files { .. }),
            "served as given, not self-signed"
        );
        // Empty, as gosslterm read it: not given.
        let c = config(&[], &[("GOSSLTERM_CERT", ""), ("GOSSLTERM_KEY", "")]).expect("valid");
        assert_eq!(pair_of(&c), None);
    }

    #[test]
    fn cert_and_key_flags_win_over_gosslterms_one_by_one() {
        let gosslterm = [("GOSSLTERM_CERT", "g.crt"), ("GOSSLTERM_KEY", "g.key")];
        let c = config(&["--cert", "c.pem", "--key", "k.pem"], &gosslterm).expect("valid");
        assert_eq!(pair_of(&c), Some(("c.pem".into(), "k.pem".into())));
        // Each alias stands for its flag alone, as GOSSLTERM_FRONTEND_ADDR does for --listen.
        let c = config(&["--cert", "c.pem"], &gosslterm).expect("valid");
        assert_eq!(pair_of(&c), Some(("c.pem".into(), "g.key".into())));
        let c = config(&["--key", "k.pem"], &gosslterm).expect("valid");
        assert_eq!(pair_of(&c), Some(("g.crt".into(), "k.pem".into())));
        let c = config(&["--cert", "c.pem"], &[("GOSSLTERM_KEY", "g.key")]).expect("valid");
        assert_eq!(pair_of(&c), Some(("c.pem".into(), "g.key".into())));
    }

    #[test]
    fn half_a_gosslterm_pair_is_refused_naming_the_variable() {
        let err = config(&[], &[("GOSSLTERM_CERT", "/ssl/cert.pem")]).expect_err("no key");
        assert_eq!(
            err.to_string(),
            "invalid GOSSLTERM_CERT \"/ssl/cert.pem\": given without GOSSLTERM_KEY (or --key): both or neither are needed"
        );
        let err = config(&[], &[("GOSSLTERM_KEY", "/ssl/key.pem")]).expect_err("no cert");
        assert_eq!(
            err.to_string(),
            "invalid GOSSLTERM_KEY \"/ssl/key.pem\": given without GOSSLTERM_CERT (or --cert): both or neither are needed"
        );
        // The flag's own half still gets the flag's message.
        assert!(matches!(
            config(&["--cert", "c.pem"], &[("GOSSLTERM_CERT", "g.crt")]),
            Err(ConfigError::CertWithoutKey)
        ));
    }

    #[test]
    fn log_level_applies_when_rust_log_is_unset() {
        let level = |env: &[(&str, &str)]| config(&[], env).map(|c| c.log_level);
        assert_eq!(level(&[]).expect("valid"), None, "RUST_LOG's default");
        assert_eq!(
            level(&[("LOG_LEVEL", "WARN")]).expect("valid"),
            Some(LogLevel::Warn)
        );
        assert_eq!(
            level(&[("LOG_LEVEL", "debug"), ("RUST_LOG", "")]).expect("valid"),
            Some(LogLevel::Debug),
            "an empty RUST_LOG is unset"
        );
        assert_eq!(
            level(&[("LOG_LEVEL", "debug"), ("RUST_LOG", "warn")]).expect("valid"),
            None,
            "RUST_LOG wins"
        );
        assert_eq!(level(&[("LOG_LEVEL", " ")]).expect("valid"), None);
    }

    #[test]
    fn a_bad_log_level_is_refused_naming_the_variable_and_the_levels() {
        let err = config(&[], &[("LOG_LEVEL", "verbose")]).expect_err("not a level");
        assert_eq!(
            err.to_string(),
            "invalid LOG_LEVEL \"verbose\": expected one of trace, debug, info, warn, error"
        );
        // Ignored, so not judged, while RUST_LOG decides: an unrelated LOG_LEVEL in a
        // deployment's environment cannot stop a sidecar configured the usual way.
        let c = config(&[], &[("LOG_LEVEL", "verbose"), ("RUST_LOG", "info")]).expect("valid");
        assert_eq!(c.log_level, None);
    }

    #[test]
    fn listen_and_backend_take_the_shared_grammar() {
        // Every form of shared::addr, through the flags and the environment alike.
        let c = config(&["--listen", "9443", "--backend", "3000"], &[]).expect("bare ports");
        assert_eq!(c.listen, "0.0.0.0:9443".parse().expect("addr"));
        assert_eq!(c.backend.authority(), "127.0.0.1:3000");
        let c = config(&["--listen", "[::1]:443", "--backend", "app:8080"], &[]).expect("valid");
        assert_eq!(c.listen, "[::1]:443".parse().expect("addr"));
        assert_eq!(c.backend.authority(), "app:8080");
        let c = config(&["--listen", "127.0.0.1:0"], &[]).expect("port 0 for tests");
        assert_eq!(c.listen.port(), 0);
        for args in [
            ["--listen", "localhost:443"],
            ["--listen", ":99999"],
            ["--backend", "app"],
            ["--backend", "-app:80"],
            ["--backend", "app:0"],
        ] {
            assert!(
                Cli::try_parse_from(["sidecar", args[0], args[1]]).is_err(),
                "{args:?} should be refused"
            );
        }
    }

    #[test]
    fn self_signed_names_are_validated() {
        let c = config(&["--self-signed-names", "a.example, 10.0.0.1,"], &[]).expect("valid");
        assert_eq!(names(&c.certs.self_signed_names), ["a.example", "10.0.0.1"]);
        let c = config(&["--self-signed-names", "*.a.example"], &[]).expect("wildcard");
        assert_eq!(names(&c.certs.self_signed_names), ["*.a.example"]);
        assert!(Cli::try_parse_from(["sidecar", "--self-signed-names", "not a name"]).is_err());
        assert!(config(&["--self-signed-names", ","], &[]).is_err());
    }

    #[test]
    fn hsts_header_value_and_dependencies() {
        let c = config(&["--hsts", "1y", "--hsts-include-subdomains"], &[]).expect("valid");
        assert_eq!(
            c.hsts.map(|h| h.header_value()),
            Some("max-age=31536000; includeSubDomains".to_string())
        );
        let c = config(&[], &[]).expect("valid");
        assert_eq!(c.hsts, None);
        let c = config(&["--hsts", "60"], &[]).expect("valid");
        assert_eq!(
            c.hsts.map(|h| h.header_value()),
            Some("max-age=60".to_string())
        );
        let err = config(&["--hsts-include-subdomains"], &[]).expect_err("needs --hsts");
        assert!(err.to_string().contains("--hsts"), "{err}");
        let err = config(&["--hsts", "1d", "--mode", "tcp"], &[]).expect_err("http only");
        assert!(err.to_string().contains("--mode http"), "{err}");
    }

    #[test]
    fn http3_and_its_advertised_port() {
        assert_eq!(config(&[], &[]).expect("defaults").http3, None);
        let c = config(&["--http3"], &[]).expect("http3");
        assert_eq!(
            c.http3,
            Some(Http3 {
                advertise_port: None
            })
        );
        let c = config(&["--http3", "--http3-advertise-port", "443"], &[]).expect("advertised");
        assert_eq!(
            c.http3,
            Some(Http3 {
                advertise_port: Some(443)
            })
        );
        let err = config(&["--http3-advertise-port", "443"], &[]).expect_err("needs --http3");
        assert!(
            err.to_string().contains("--http3-advertise-port")
                && err.to_string().contains("needs --http3"),
            "{err}"
        );
        let err = config(&["--http3", "--mode", "tcp"], &[]).expect_err("http only");
        assert!(
            err.to_string().contains("--http3") && err.to_string().contains("--mode http"),
            "{err}"
        );
        for bad in ["0", "65536", "x"] {
            let argv = ["sidecar", "--http3", "--http3-advertise-port", bad];
            assert!(Cli::try_parse_from(argv).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn backend_protocol_is_an_http_mode_setting() {
        let c = config(&[], &[]).expect("defaults");
        assert_eq!(c.backend_protocol, BackendProtocol::Auto);
        let c = config(&["--backend-protocol", "h2c"], &[]).expect("h2c");
        assert_eq!(c.backend_protocol, BackendProtocol::H2c);
        let c = config(&["--backend-protocol", "http1"], &[]).expect("http1");
        assert_eq!(c.backend_protocol, BackendProtocol::Http1);
        let err = config(&["--mode", "tcp", "--backend-protocol", "h2c"], &[]).expect_err("tcp");
        assert!(
            err.to_string().contains("--backend-protocol")
                && err.to_string().contains("--mode http"),
            "{err}"
        );
        assert!(Cli::try_parse_from(["sidecar", "--backend-protocol", "h2"]).is_err());
    }

    #[test]
    fn alpn_and_proxy_protocol_are_tcp_mode_settings() {
        let c = config(&[], &[]).expect("defaults");
        assert!(c.alpn.is_empty());
        assert_eq!(c.proxy_protocol, ProxyProtocol::Off);
        let c = config(
            &[
                "--mode",
                "tcp",
                "--alpn",
                "h2,http/1.1",
                "--proxy-protocol",
                "v2",
            ],
            &[],
        )
        .expect("valid in tcp mode");
        assert_eq!(c.alpn.to_string(), "h2,http/1.1");
        assert_eq!(c.proxy_protocol, ProxyProtocol::V2);
        let err = config(&["--alpn", "h2"], &[]).expect_err("http mode");
        assert!(
            err.to_string().contains("--alpn") && err.to_string().contains("--mode tcp"),
            "{err}"
        );
        let err = config(&["--proxy-protocol", "v1"], &[]).expect_err("http mode");
        assert!(err.to_string().contains("--proxy-protocol"), "{err}");
        for args in [["--alpn", "h2,h2"], ["--proxy-protocol", "v3"]] {
            assert!(
                Cli::try_parse_from(["sidecar", args[0], args[1]]).is_err(),
                "{args:?} should be refused"
            );
        }
    }

    #[test]
    fn redirect_listener_and_its_dependencies() {
        let c = config(
            &[
                "--redirect-listen",
                ":80",
                "--redirect-port",
                "443",
                "--acme-webroot",
                "/w",
            ],
            &[],
        )
        .expect("valid");
        assert_eq!(
            c.redirect,
            Some(Redirect {
                listen: "0.0.0.0:80".parse().expect("addr"),
                port: Some(443),
                acme_webroot: Some(PathBuf::from("/w")),
                acme_thumbprint: None,
            })
        );
        let thumbprint = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        let c = config(
            &["--redirect-listen", ":80", "--acme-thumbprint", thumbprint],
            &[],
        )
        .expect("valid");
        assert_eq!(
            c.redirect.and_then(|r| r.acme_thumbprint).as_deref(),
            Some(thumbprint)
        );
        let err = config(&["--acme-thumbprint", thumbprint], &[]).expect_err("needs the listener");
        assert!(
            err.to_string().contains("--acme-thumbprint")
                && err.to_string().contains("--redirect-listen"),
            "{err}"
        );
        let err = config(&["--acme-webroot", "/w"], &[]).expect_err("needs the listener");
        assert!(
            err.to_string().contains("--acme-webroot")
                && err.to_string().contains("--redirect-listen"),
            "{err}"
        );
        let err = config(&["--redirect-port", "8443"], &[]).expect_err("needs the listener");
        assert!(err.to_string().contains("--redirect-listen"), "{err}");
        let err = config(&["--redirect-listen", "nope"], &[]).expect_err("bad address");
        assert!(err.to_string().contains("--redirect-listen"), "{err}");
        assert!(Cli::try_parse_from(["sidecar", "--redirect-port", "0"]).is_err());
    }

    #[test]
    fn mutual_tls_settings() {
        let c = config(
            &[
                "--client-ca",
                "ca.pem",
                "--allow-uri-san",
                "spiffe://example.org/ns/*/sa/web",
            ],
            &[],
        )
        .expect("valid");
        let auth = c.client_auth.expect("mtls on");
        assert_eq!(auth.mode, ClientAuthMode::Required);
        assert!(!auth.allow.is_empty());
        let c = Cli::try_parse_from([
            "sidecar",
            "--client-ca",
            "ca.pem",
            "--client-auth",
            "optional",
        ])
        .expect("parse")
        .into_config(|_| None, None)
        .map(|c| c.client_auth.map(|a| a.mode));
        assert_eq!(c.ok().flatten(), Some(ClientAuthMode::Optional));
        for args in [
            vec!["--client-auth", "optional"],
            vec!["--allow-cn", "x"],
            vec!["--client-crl", "crl.pem"],
        ] {
            let err = config(&args, &[]).expect_err("needs --client-ca");
            assert!(err.to_string().contains("needs --client-ca"), "{err}");
        }
    }

    const IDENTITY: [&str; 8] = [
        "--identity-cert",
        "/identity/cert.pem",
        "--identity-key",
        "/identity/key.pem",
        "--identity-ca",
        "/identity/ca.pem",
        "--identity-domain",
        "Test.Internal",
    ];

    #[test]
    fn identity_takes_all_four_flags_or_none() {
        let c = config(&IDENTITY, &[]).expect("all four");
        let id = c.certs.identity.clone().expect("identity on");
        assert_eq!(id.domain.as_str(), "test.internal");
        assert_eq!(id.ca, PathBuf::from("/identity/ca.pem"));
        assert_eq!(
            c.certs.identity_pair().map(|p| (p.name, p.cert, p.key)),
            Some((
                "identity".to_string(),
                "/identity/cert.pem".into(),
                "/identity/key.pem".into()
            ))
        );
        assert!(c.certs.has_files(), "the identity pair is reloaded");
        assert_eq!(config(&[], &[]).expect("none").certs.identity, None);
        let err = config(&IDENTITY[..4], &[]).expect_err("two of four");
        let text = err.to_string();
        assert!(
            text.contains("--identity-cert")
                && text.contains("missing --identity-ca, --identity-domain"),
            "{text}"
        );
        let err = config(&["--identity-domain", "d.example"], &[]).expect_err("one of four");
        assert!(
            err.to_string()
                .contains("missing --identity-cert, --identity-key, --identity-ca"),
            "{err}"
        );
        assert!(Cli::try_parse_from(["sidecar", "--identity-domain", "a b"]).is_err());
    }

    #[test]
    fn upstreams_need_the_identity_and_distinct_local_addresses() {
        let mut args = IDENTITY.to_vec();
        args.extend([
            "--upstream",
            "9001=b:8443",
            "--upstream",
            "[::1]:9002=pay@10.0.0.5:8443",
        ]);
        let c = config(&args, &[]).expect("valid");
        let shown: Vec<String> = c.upstreams.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["127.0.0.1:9001=b:8443", "[::1]:9002=pay@10.0.0.5:8443"]
        );

        let err = config(&["--upstream", "9001=b:8443"], &[]).expect_err("no identity");
        assert!(
            err.to_string().contains("--upstream")
                && err.to_string().contains("needs the service identity"),
            "{err}"
        );
        let mut args = IDENTITY.to_vec();
        args.extend(["--upstream", "9001=b:8443,127.0.0.1:9001=c:8443"]);
        let err = config(&args, &[]).expect_err("same local address");
        assert!(
            err.to_string()
                .contains("two upstreams listen on 127.0.0.1:9001"),
            "{err}"
        );
        for bad in ["0.0.0.0:9001=b:8443", "9001=10.0.0.5:8443", "b:8443"] {
            assert!(
                Cli::try_parse_from(["sidecar", "--upstream", bad]).is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        let bad = [
            vec!["--handshake-timeout", "soon"],
            vec!["--idle-timeout", "0s"],
            vec!["--mode", "udp"],
            vec!["--max-connections", "0"],
            vec!["--log-format", "xml"],
        ];
        for args in bad {
            let mut all = vec!["sidecar"];
            all.extend_from_slice(&args);
            assert!(
                Cli::try_parse_from(&all).is_err(),
                "{args:?} should be refused"
            );
        }
    }

    #[test]
    fn upgrade_protocols_are_tokens_and_never_h2c() {
        let c = config(&["--allow-upgrade", "WebSocket, foo/1,,"], &[]).expect("valid");
        assert_eq!(
            c.allow_upgrade,
            vec!["websocket".to_string(), "foo/1".to_string()]
        );
        let c = config(&["--allow-upgrade", ""], &[]).expect("valid");
        assert!(c.allow_upgrade.is_empty());
        for bad in ["h2c", "web socket", "a\"b"] {
            let err = config(&["--allow-upgrade", bad], &[])
                .expect_err(bad)
                .to_string();
            assert!(err.contains("--allow-upgrade"), "{err}");
        }
    }
}
