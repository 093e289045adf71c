//! Command line: clap `Cli` (every flag also readable from its env var) turned into a validated
//! `Config` before any socket or container is touched.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use shared::addr::{BackendAddr, ListenAddr};
use shared::backoff::Backoff;
use shared::schema::DEFAULT_LABEL_PREFIX;
use shared::service_identity::TrustDomain;
use shared::telemetry::LogFormat;

/// Let's Encrypt's production directory, the default `--acme-directory`.
pub(crate) const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Longest wait between two ACME attempts for a failing name set: a CA outage of a day costs
/// four orders, well inside any CA's limits, and a fixed problem is noticed within hours.
pub(crate) const ACME_RETRY_MAX: Duration = Duration::from_secs(6 * 3600);
/// Where the spawner keeps the identity CA it makes, the default `--identity-store`.
pub(crate) const IDENTITY_STORE: &str = "/var/lib/tls-sidecar/identity";
/// Default `--identity-ttl`: a stolen identity key is worth a day at most, and renewing at half
/// of it leaves twelve hours to notice a spawner that cannot.
pub(crate) const IDENTITY_TTL: Duration = Duration::from_secs(24 * 3600);
/// Shortest `--identity-ttl`: renewed at half, a shorter one would be reissued every second.
pub(crate) const IDENTITY_TTL_MIN: Duration = Duration::from_secs(2);
/// Longest `--identity-ttl`: past a year a leaf is no longer short-lived, and a key that leaked
/// stays good for longer than anyone would wait.
pub(crate) const IDENTITY_TTL_MAX: Duration = Duration::from_secs(365 * 86_400);

/// Launches a TLS sidecar next to every container that opts in with a label, and removes it when
/// the container goes away.
#[derive(Debug, Parser)]
#[command(name = "spawner", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
    #[command(flatten)]
    pub(crate) opts: Opts,
}

/// What to do; a bare `spawner` is `spawner run`.
#[derive(Debug, Clone, Subcommand, PartialEq, Eq)]
pub enum Command {
    /// Run the daemon: watch the engine and keep exactly one sidecar per opted-in container.
    Run,
    /// Print a table of opted-in containers, their sidecars, certificates and any problem, then
    /// exit.
    Status {
        /// Print the rows as a JSON array of objects (fields in docs/spawner.md), for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The service identity CA (`--identity-*`).
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Ask the running daemon (`spawner run`, in this network namespace: e.g. `docker exec
    /// <spawner> spawner rollout --all`) to replace outdated sidecars now, handing each over in
    /// place; with `--rollout manual` the only way they are replaced. Also resumes a paused
    /// roll-out. Prints what was queued, then exits.
    Rollout {
        /// The target container (its name) whose sidecar to replace.
        #[arg(
            long,
            value_name = "NAME",
            conflicts_with = "all",
            required_unless_present = "all"
        )]
        target: Option<String>,
        /// Every target whose sidecar is outdated.
        #[arg(long)]
        all: bool,
    },
}

/// `spawner ca ...`
#[derive(Debug, Clone, Copy, Subcommand, PartialEq, Eq)]
pub enum CaAction {
    /// Print the identity trust bundle (PEM: the signing CA, then the --identity-trust roots) for
    /// clients outside the spawner's reach, then exit. Reads the CA, never creates one.
    Export,
}

/// Flags shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub(crate) struct Opts {
    /// Docker engine address; only `unix://` sockets are supported.
    #[arg(
        long,
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock",
        global = true
    )]
    pub(crate) docker_host: String,

    /// Label prefix: targets opt in with `<prefix>.proxy-image`, sidecars are marked with
    /// `<prefix>.sidecar-for` and `<prefix>.managed-by`.
    #[arg(long, env = "SPAWNER_LABEL_PREFIX", default_value = DEFAULT_LABEL_PREFIX, global = true)]
    pub(crate) label_prefix: String,

    /// Glob (`*`, `?`) of a sidecar image a target may ask for; repeatable. Anything else is
    /// refused, because a label is all it takes to make the spawner run an image.
    #[arg(
        long = "allow-image",
        env = "SPAWNER_ALLOW_IMAGES",
        value_delimiter = ',',
        default_value = "tls-sidecar/sidecar:*",
        global = true
    )]
    pub(crate) allow_images: Vec<String>,

    /// Certificate store in certbot's layout (`live/<hostname>/fullchain.pem` and `privkey.pem`):
    /// an absolute directory the spawner reads, giving each sidecar only its own files; or a
    /// named volume, mounted whole and read-only into every sidecar at `/certs`
    #[arg(long, env = "SPAWNER_CERTS_FROM", global = true)]
    pub(crate) certs_from: Option<String>,

    /// Where this process sees the `--certs-from` store, when that is not the same path: a
    /// containerised spawner with the store's volume or directory mounted into it. With it the
    /// spawner reads the store (and, with ACME, writes it) and delivers each sidecar its own
    /// files [default: --certs-from when that is an absolute path]
    #[arg(long, env = "SPAWNER_CERTS_PATH", value_name = "PATH", global = true)]
    pub(crate) certs_path: Option<String>,

    /// Obtain certificates by ACME for every target with a `hostname` label, registering the
    /// account with this contact address; needs --acme-agree-tos and a store the spawner can
    /// write (--certs-from, --certs-path) [default: off]
    #[arg(long, env = "SPAWNER_ACME_EMAIL", value_name = "EMAIL", global = true)]
    pub(crate) acme_email: Option<String>,

    /// Agree to the ACME CA's terms of service (required with --acme-email, as certbot asks).
    #[arg(long, env = "SPAWNER_ACME_AGREE_TOS", global = true)]
    pub(crate) acme_agree_tos: bool,

    /// The ACME directory URL. Let's Encrypt's staging directory, for trying things out without
    /// its production rate limits: https://acme-staging-v02.api.letsencrypt.org/directory
    #[arg(long, env = "SPAWNER_ACME_DIRECTORY", value_name = "URL",
          default_value = LETS_ENCRYPT, global = true)]
    pub(crate) acme_directory: String,

    /// PEM file of extra roots trusted for the ACME directory's own HTTPS (a private CA; Pebble
    /// in tests), beside the system's roots (or, where the system has none, as in the FROM-scratch
    /// image, the Mozilla roots built in) [default: none]
    #[arg(long, env = "SPAWNER_ACME_CA_CERT", value_name = "FILE", global = true)]
    pub(crate) acme_ca_cert: Option<std::path::PathBuf>,

    /// External Account Binding (ZeroSSL, Google Trust Services, most commercial CAs): the key
    /// ID the CA gave; needs --acme-eab-hmac-key-file [default: none]
    #[arg(long, env = "SPAWNER_ACME_EAB_KID", value_name = "KID", global = true)]
    pub(crate) acme_eab_kid: Option<String>,

    /// External Account Binding: a file holding the HMAC key the CA gave (base64url, as CAs
    /// print it), readable by the spawner alone; the key itself is never a flag value, which
    /// `ps` would show. Needs --acme-eab-kid [default: none]
    #[arg(
        long,
        env = "SPAWNER_ACME_EAB_HMAC_KEY_FILE",
        value_name = "FILE",
        global = true
    )]
    pub(crate) acme_eab_hmac_key_file: Option<std::path::PathBuf>,

    /// The challenge of a target without an `acme-challenge` label: http-01, tls-alpn-01 or
    /// dns-01 (which needs a DNS provider: --acme-dns-rfc2136-server or --acme-dns-hook)
    #[arg(
        long,
        env = "SPAWNER_ACME_CHALLENGE",
        value_name = "CHALLENGE",
        default_value = "http-01",
        global = true
    )]
    pub(crate) acme_challenge: String,

    /// dns-01 by RFC 2136 dynamic update: the DNS server that takes the updates (the zone's
    /// primary), as IP:PORT or HOST:PORT (resolved at start); needs --acme-dns-tsig-key
    /// [default: none]
    #[arg(
        long,
        env = "SPAWNER_ACME_DNS_RFC2136_SERVER",
        value_name = "HOST:PORT",
        global = true
    )]
    pub(crate) acme_dns_rfc2136_server: Option<String>,

    /// dns-01 by RFC 2136: the file holding the TSIG key the updates are signed with, as BIND's
    /// `tsig-keygen` writes it (`key "NAME" { algorithm hmac-sha256; secret "..."; };`;
    /// hmac-sha256, hmac-sha384 or hmac-sha512), readable by the spawner alone [default: none]
    #[arg(
        long,
        env = "SPAWNER_ACME_DNS_TSIG_KEY",
        value_name = "FILE",
        global = true
    )]
    pub(crate) acme_dns_tsig_key: Option<std::path::PathBuf>,

    /// dns-01 by a program of yours, for any other DNS provider: run as `PATH present FQDN VALUE`
    /// and `PATH cleanup FQDN VALUE` (FQDN with its trailing dot), with an empty environment
    /// but PATH; exit 0 is success (see docs/certificates.md) [default: none]
    #[arg(
        long,
        env = "SPAWNER_ACME_DNS_HOOK",
        value_name = "PATH",
        global = true
    )]
    pub(crate) acme_dns_hook: Option<std::path::PathBuf>,

    /// Longest one run of --acme-dns-hook may take; it is then killed and the order fails
    /// (1s..10m) [default: 1m]
    #[arg(
        long,
        env = "SPAWNER_ACME_DNS_HOOK_TIMEOUT",
        value_name = "DURATION",
        global = true
    )]
    pub(crate) acme_dns_hook_timeout: Option<String>,

    /// dns-01: the DNS server asked to find a name's zone and to see the record (a recursive
    /// resolver, or the zone's own server), as IP:PORT or HOST:PORT [default: the system's
    /// resolvers for the zone, the zone's name servers for the record]
    #[arg(
        long,
        env = "SPAWNER_ACME_DNS_RESOLVER",
        value_name = "HOST:PORT",
        global = true
    )]
    pub(crate) acme_dns_resolver: Option<String>,

    /// dns-01: how long a record may take to show on every server checked before the order
    /// fails; the CA is asked to look only once it shows (1s..1h) [default: 2m]
    #[arg(
        long,
        env = "SPAWNER_ACME_DNS_PROPAGATION_TIMEOUT",
        value_name = "DURATION",
        global = true
    )]
    pub(crate) acme_dns_propagation_timeout: Option<String>,

    /// First wait before retrying a failed order for a name set; doubled per failure up to 6h.
    /// Whatever it is, at most 3 orders per name set are placed in any hour.
    #[arg(long, env = "SPAWNER_ACME_RETRY_MIN", default_value = "1m",
          value_parser = shared::parse::duration, global = true)]
    pub(crate) acme_retry_min: Duration,

    /// Log what would be done and change nothing.
    #[arg(long, global = true)]
    pub(crate) dry_run: bool,

    /// Log format.
    #[arg(
        long,
        env = "SPAWNER_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub(crate) log_format: LogFormat,

    /// Memory limit of each sidecar (bytes, or with a unit: 64MiB, 128m, 1g). A TLS terminator
    /// needs little; the limit stops a runaway sidecar from hurting its target.
    #[arg(
        long,
        env = "SPAWNER_SIDECAR_MEMORY",
        default_value = "64MiB",
        global = true
    )]
    pub(crate) sidecar_memory: String,

    /// Maximum number of processes/threads in each sidecar; bounds a fork/thread leak.
    #[arg(
        long,
        env = "SPAWNER_SIDECAR_PIDS_LIMIT",
        default_value_t = 128,
        global = true
    )]
    pub(crate) sidecar_pids_limit: i64,

    /// Shutdown grace given to each sidecar (`SIDECAR_SHUTDOWN_GRACE`); the container's stop
    /// timeout is this plus 2 s so Docker never kills a draining sidecar early.
    #[arg(long, env = "SPAWNER_SIDECAR_SHUTDOWN_GRACE", default_value = "10s",
          value_parser = shared::parse::duration, global = true)]
    pub(crate) sidecar_shutdown_grace: Duration,

    /// Full reconcile at least this often, even without events (belt and braces against a
    /// missed event).
    #[arg(long, env = "SPAWNER_RESYNC_INTERVAL", default_value = "30s",
          value_parser = shared::parse::duration, global = true)]
    pub(crate) resync_interval: Duration,

    /// Timeout of each Docker API call (pulls get ten times this).
    #[arg(long, env = "SPAWNER_DOCKER_TIMEOUT", default_value = "10s",
          value_parser = shared::parse::duration, global = true)]
    pub(crate) docker_timeout: Duration,

    /// How many actions of one reconcile turn (sidecar creates, removes) run at the same time.
    /// The default is 8: the engine serialises much of container creation (its store, network
    /// namespace setup), so more parallelism mostly queues inside dockerd, while each in-flight
    /// action holds an engine connection and its own timeout is running.
    #[arg(
        long,
        env = "SPAWNER_MAX_PARALLEL_ACTIONS",
        default_value_t = 8,
        global = true
    )]
    pub(crate) max_parallel_actions: usize,

    /// Plain-HTTP admin listener (`IP:PORT`, `[IPv6]:PORT`, or `PORT` / `:PORT` for every IPv4
    /// interface: the sidecar's listen grammar) with `/healthz`, `/readyz` and `/metrics`; off by
    /// default. Unauthenticated: bind it to loopback or a private network
    #[arg(long, env = "SPAWNER_ADMIN_LISTEN", value_name = "ADDR", global = true)]
    pub(crate) admin_listen: Option<String>,

    /// Turn service identity on: every sidecar gets a short-lived certificate for
    /// `spiffe://DOMAIN/<identity>` from the spawner's CA. DOMAIN is a DNS name such as
    /// example.internal [default: off; empty = off]
    #[arg(
        long,
        env = "SPAWNER_IDENTITY_DOMAIN",
        value_name = "DOMAIN",
        global = true
    )]
    pub(crate) identity_domain: Option<String>,

    /// The identity CA's certificate (PEM), when the operator gives the CA; needs
    /// --identity-ca-key [default: the CA in --identity-store, made on first start]
    #[arg(
        long,
        env = "SPAWNER_IDENTITY_CA_CERT",
        value_name = "FILE",
        global = true
    )]
    pub(crate) identity_ca_cert: Option<PathBuf>,

    /// The identity CA's private key (PKCS#8 PEM, mode 0600 or stricter); needs
    /// --identity-ca-cert
    #[arg(
        long,
        env = "SPAWNER_IDENTITY_CA_KEY",
        value_name = "FILE",
        global = true
    )]
    pub(crate) identity_ca_key: Option<PathBuf>,

    /// Lifetime of each identity certificate; renewed at half of it. From 2s to 365d
    /// [default: 24h]
    #[arg(
        long,
        env = "SPAWNER_IDENTITY_TTL",
        value_name = "DURATION",
        global = true
    )]
    pub(crate) identity_ttl: Option<String>,

    /// Directory (absolute) where the spawner makes its identity CA on first start and finds it
    /// after (`ca.pem`, `ca-key.pem`); in a container, keep it on a volume, or each new container
    /// makes a new CA
    /// [default: /var/lib/tls-sidecar/identity]
    #[arg(
        long,
        env = "SPAWNER_IDENTITY_STORE",
        value_name = "DIR",
        global = true
    )]
    pub(crate) identity_store: Option<PathBuf>,

    /// PEM file of roots trusted beside the signing CA, for a CA roll-over: list the old root
    /// here while moving to a new CA, then remove it [default: none]
    #[arg(
        long,
        env = "SPAWNER_IDENTITY_TRUST",
        value_name = "FILE",
        global = true
    )]
    pub(crate) identity_trust: Option<PathBuf>,

    /// When outdated sidecars (their image reference now names another image, or this spawner
    /// would render them differently) are replaced: `auto`, as soon as seen; `manual`, only on
    /// `spawner rollout`. A target's `rollout` label overrides it
    #[arg(long, env = "SPAWNER_ROLLOUT", value_name = "POLICY", default_value = "auto",
          value_parser = RolloutPolicy::from_str, global = true)]
    pub(crate) rollout: RolloutPolicy,

    /// How many sidecars are replaced at the same time, 1 to 64
    #[arg(long, env = "SPAWNER_ROLLOUT_PARALLELISM", value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=64), global = true)]
    pub(crate) rollout_parallelism: u32,

    /// Pause between starting one replacement and the next
    #[arg(long, env = "SPAWNER_ROLLOUT_DELAY", value_name = "DURATION", default_value = "0s",
          value_parser = shared::parse::pause, global = true)]
    pub(crate) rollout_delay: Duration,

    /// How long a replacement has to take over (load its certificates, receive the listeners
    /// and start accepting); past it, it is removed and the old sidecar keeps serving. 1s to 10m
    #[arg(long, env = "SPAWNER_ROLLOUT_TIMEOUT", value_name = "DURATION", default_value = "60s",
          value_parser = shared::parse::duration, global = true)]
    pub(crate) rollout_timeout: Duration,

    /// Failed targets in a row after which the roll-out pauses for every target, until an
    /// image changes again or `spawner rollout` resumes it, 1 to 1000
    #[arg(long, env = "SPAWNER_ROLLOUT_MAX_FAILURES", value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000), global = true)]
    pub(crate) rollout_max_failures: u32,
}

/// When outdated sidecars are replaced (`--rollout`, and a target's `rollout` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutPolicy {
    /// As soon as seen.
    Auto,
    /// Only when asked (`spawner rollout`).
    Manual,
}

impl FromStr for RolloutPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(RolloutPolicy::Auto),
            "manual" => Ok(RolloutPolicy::Manual),
            other => Err(format!("{other:?}: expected auto or manual")),
        }
    }
}

impl std::fmt::Display for RolloutPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RolloutPolicy::Auto => "auto",
            RolloutPolicy::Manual => "manual",
        })
    }
}

/// Roll-outs (`--rollout*`): when outdated sidecars are replaced, and how fast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RolloutConfig {
    pub(crate) policy: RolloutPolicy,
    /// At least 1.
    pub(crate) parallelism: usize,
    pub(crate) delay: Duration,
    /// Within [`ROLLOUT_TIMEOUT_MIN`] and [`ROLLOUT_TIMEOUT_MAX`]; what the replacement is told
    /// as its `--take-over-timeout`.
    pub(crate) timeout: Duration,
    pub(crate) max_failures: u32,
}

/// Shortest `--rollout-timeout`, as the sidecar's `--take-over-timeout` allows.
pub(crate) const ROLLOUT_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Longest `--rollout-timeout`.
pub(crate) const ROLLOUT_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// `--rollout-*`, checked.
fn rollout_config(o: &Opts) -> Result<RolloutConfig, ConfigError> {
    if !(ROLLOUT_TIMEOUT_MIN..=ROLLOUT_TIMEOUT_MAX).contains(&o.rollout_timeout) {
        return Err(bad(
            "rollout-timeout",
            &humantime::format_duration(o.rollout_timeout).to_string(),
            "must be from 1s to 10m",
        ));
    }
    if o.rollout_timeout.subsec_nanos() != 0 {
        return Err(bad(
            "rollout-timeout",
            &humantime::format_duration(o.rollout_timeout).to_string(),
            "must be whole seconds",
        ));
    }
    Ok(RolloutConfig {
        policy: o.rollout,
        parallelism: o.rollout_parallelism as usize,
        delay: o.rollout_delay,
        timeout: o.rollout_timeout,
        max_failures: o.rollout_max_failures,
    })
}

/// Sidecar images a target may ask for (`--allow-image`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllowList {
    patterns: Vec<String>,
}

impl AllowList {
    pub(crate) fn new(patterns: Vec<String>) -> Self {
        AllowList { patterns }
    }

    pub(crate) fn allows(&self, image: &str) -> bool {
        self.patterns
            .iter()
            .any(|p| glob_match(p.as_bytes(), image.as_bytes()))
    }
}

/// `*` matches any run (including `/` and `:`), `?` one character; everything else literally.
fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|c| *c == b'*')
}

/// Where sidecar certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CertsSource {
    /// A store this process reads at this path (`--certs-from DIR`, or `--certs-path`): each
    /// sidecar is delivered its own files into a volume of its own ([`crate::certs::delivery`]).
    HostDir(String),
    /// A named volume this process cannot see: mounted whole, read-only, into every sidecar.
    Volume(String),
}

/// When ACME orders (see `acme::plan::decide`): renewal at two thirds of a certificate's
/// lifetime, a failed order retried from a minute up to six hours, at most three orders per name
/// set in an hour (the CA's own limits are weekly, and a loop must never burn them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AcmePolicy {
    /// Renew once this fraction of the lifetime has passed (numerator, denominator).
    pub(crate) renew_after: (u32, u32),
    pub(crate) retry: Backoff,
    pub(crate) max_orders_per_hour: usize,
}

impl Default for AcmePolicy {
    fn default() -> Self {
        AcmePolicy {
            renew_after: (2, 3),
            retry: Backoff::new(Duration::from_secs(60), Duration::from_secs(6 * 3600)),
            max_orders_per_hour: 3,
        }
    }
}

/// ACME settings (`--acme-*`), present when `--acme-email` turns ACME on.
#[derive(Debug, Clone)]
pub(crate) struct AcmeConfig {
    pub(crate) email: String,
    pub(crate) directory: String,
    pub(crate) ca_cert: Option<std::path::PathBuf>,
    /// Where the store is, as this process sees it (written by ACME).
    pub(crate) store: std::path::PathBuf,
    pub(crate) policy: AcmePolicy,
    /// External Account Binding: the key ID and the file holding the HMAC key (read at start).
    pub(crate) eab: Option<(String, std::path::PathBuf)>,
    /// `--acme-challenge`: the challenge of a target without an `acme-challenge` label.
    pub(crate) challenge: ChallengeKind,
    /// dns-01's provider and checks, when a provider is given.
    pub(crate) dns: Option<DnsConfig>,
}

/// Where dns-01 records are written (`--acme-dns-*`); the key file is read and the server's
/// name resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DnsProvider {
    Rfc2136 {
        server: BackendAddr,
        tsig_key: std::path::PathBuf,
    },
    Hook {
        path: std::path::PathBuf,
        timeout: Duration,
    },
}

/// The dns-01 settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DnsConfig {
    pub(crate) provider: DnsProvider,
    pub(crate) resolver: Option<BackendAddr>,
    pub(crate) propagation_timeout: Duration,
}

/// `--acme-dns-propagation-timeout`'s default and bounds.
pub(crate) const DNS_PROPAGATION_DEFAULT: Duration = Duration::from_secs(120);
const DNS_PROPAGATION_MAX: Duration = Duration::from_secs(3600);
/// `--acme-dns-hook-timeout`'s default and bounds.
pub(crate) const DNS_HOOK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
const DNS_HOOK_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// Where the identity CA is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaSource {
    /// The spawner's own, made on first start in this directory (`--identity-store`).
    Store(PathBuf),
    /// One the operator gave (`--identity-ca-cert`, `--identity-ca-key`).
    Files { cert: PathBuf, key: PathBuf },
}

/// Service identity settings (`--identity-*`), present when `--identity-domain` turns it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdentityConfig {
    pub(crate) domain: TrustDomain,
    /// Lifetime of each leaf, within [`IDENTITY_TTL_MIN`] and [`IDENTITY_TTL_MAX`].
    pub(crate) ttl: Duration,
    /// The signing CA.
    pub(crate) ca: CaSource,
    /// Extra roots for the trust bundle (`--identity-trust`).
    pub(crate) trust: Option<PathBuf>,
}

/// Which challenge proves control of the names (`<prefix>.acme-challenge`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChallengeKind {
    /// A file on port 80, served by the sidecar's redirect listener.
    #[default]
    Http01,
    /// A certificate in a handshake on port 443, served by the sidecar's TLS listener.
    TlsAlpn01,
    /// A TXT record in DNS, written by the spawner through its DNS provider (the sidecar takes
    /// no part): for names the CA cannot reach, and the one challenge for wildcards.
    Dns01,
}

impl FromStr for ChallengeKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "http-01" => Ok(ChallengeKind::Http01),
            "tls-alpn-01" => Ok(ChallengeKind::TlsAlpn01),
            "dns-01" => Ok(ChallengeKind::Dns01),
            other => Err(format!(
                "expected http-01, tls-alpn-01 or dns-01, got {other:?}"
            )),
        }
    }
}

impl std::fmt::Display for ChallengeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChallengeKind::Http01 => "http-01",
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Dns01 => "dns-01",
        })
    }
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub command: Command,
    /// Path of the engine's unix socket.
    pub(crate) docker_socket: String,
    pub(crate) docker_host: String,
    pub(crate) label_prefix: String,
    pub(crate) allow: AllowList,
    pub(crate) certs: Option<CertsSource>,
    pub(crate) acme: Option<AcmeConfig>,
    pub(crate) dry_run: bool,
    pub log_format: LogFormat,
    pub(crate) sidecar_memory: i64,
    pub(crate) sidecar_pids_limit: i64,
    pub(crate) sidecar_shutdown_grace: Duration,
    pub(crate) resync_interval: Duration,
    pub(crate) docker_timeout: Duration,
    /// At least 1.
    pub(crate) max_parallel_actions: usize,
    pub admin_listen: Option<SocketAddr>,
    /// Service identity, with `--identity-domain`.
    pub(crate) identity: Option<IdentityConfig>,
    /// Where the identity CA is, also without `--identity-domain`: what `spawner ca export`
    /// reads (the same as `identity.ca` when identity is on).
    pub(crate) identity_ca: CaSource,
    /// `--identity-trust`, likewise.
    pub(crate) identity_trust: Option<PathBuf>,
    pub(crate) rollout: RolloutConfig,
}

/// A flag with an invalid value.
#[derive(Debug, thiserror::Error)]
#[error("invalid --{flag} {value:?}: {reason}")]
pub struct ConfigError {
    pub(crate) flag: &'static str,
    pub(crate) value: String,
    pub(crate) reason: String,
}

fn bad(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Cli {
    /// Validates every flag; no I/O.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let o = self.opts;
        let docker_socket = docker_socket(&o.docker_host)?;
        check_label_prefix(&o.label_prefix)?;
        let patterns = allow_patterns(&o.allow_images)?;
        let certs = certs_source(o.certs_from.as_deref(), o.certs_path.as_deref())?;
        let acme = acme_config(&o, certs.as_ref())?;
        let sidecar_memory = sidecar_limits(&o)?;
        let admin_listen = match o.admin_listen.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(
                ListenAddr::from_str(text)
                    .map_err(|reason| bad("admin-listen", text, reason))?
                    .socket_addr(),
            ),
        };
        let command = self.command.unwrap_or(Command::Run);
        let (identity, identity_ca, identity_trust) = identity_config(&o, &command)?;
        let rollout = rollout_config(&o)?;
        Ok(Config {
            command,
            docker_socket,
            docker_host: o.docker_host,
            label_prefix: o.label_prefix,
            allow: AllowList::new(patterns),
            certs,
            acme,
            dry_run: o.dry_run,
            log_format: o.log_format,
            sidecar_memory,
            sidecar_pids_limit: o.sidecar_pids_limit,
            sidecar_shutdown_grace: o.sidecar_shutdown_grace,
            resync_interval: o.resync_interval,
            docker_timeout: o.docker_timeout,
            max_parallel_actions: o.max_parallel_actions,
            admin_listen,
            identity,
            identity_ca,
            identity_trust,
            rollout,
        })
    }
}

/// `--docker-host`: the socket path of a `unix://` address.
fn docker_socket(host: &str) -> Result<String, ConfigError> {
    match host.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => Ok(p.to_string()),
        _ => Err(bad("docker-host", host, "expected unix:///absolute/path")),
    }
}

/// `--label-prefix`: what a Docker label key may hold, not ending in a dot.
fn check_label_prefix(prefix: &str) -> Result<(), ConfigError> {
    let ok = !prefix.is_empty()
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c))
        && !prefix.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(bad(
            "label-prefix",
            prefix,
            "expected letters, digits, '-', '.', '_'",
        ))
    }
}

/// `--allow-image`: at least one pattern, none with white space.
fn allow_patterns(given: &[String]) -> Result<Vec<String>, ConfigError> {
    let patterns: Vec<String> = given
        .iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if patterns.is_empty() {
        return Err(bad(
            "allow-image",
            "",
            "at least one image pattern is required",
        ));
    }
    if let Some(p) = patterns.iter().find(|p| p.chars().any(char::is_whitespace)) {
        return Err(bad("allow-image", p, "patterns contain no whitespace"));
    }
    Ok(patterns)
}

/// `--certs-from` and `--certs-path`: a host directory (where this process sees it) or a
/// named volume.
fn certs_source(
    from: Option<&str>,
    path: Option<&str>,
) -> Result<Option<CertsSource>, ConfigError> {
    let certs_path = match path.map(str::trim) {
        None | Some("") => None,
        Some(p) if p.starts_with('/') => Some(p.to_string()),
        Some(p) => return Err(bad("certs-path", p, "expected an absolute path")),
    };
    Ok(match (from.map(str::trim), certs_path) {
        (None | Some(""), None) => None,
        (None | Some(""), Some(p)) => {
            return Err(bad(
                "certs-path",
                &p,
                "needs --certs-from: the store's source",
            ))
        }
        (Some(p), path) if p.starts_with('/') => {
            Some(CertsSource::HostDir(path.unwrap_or_else(|| p.to_string())))
        }
        (Some(v), Some(path)) if valid_volume_name(v) => Some(CertsSource::HostDir(path)),
        (Some(v), None) if valid_volume_name(v) => Some(CertsSource::Volume(v.to_string())),
        (Some(v), _) => {
            return Err(bad(
                "certs-from",
                v,
                "expected an absolute path or a volume name",
            ))
        }
    })
}

/// `--sidecar-memory` (returned, in bytes), `--sidecar-pids-limit` and
/// `--max-parallel-actions`: limits within what the engine and the loop accept.
fn sidecar_limits(o: &Opts) -> Result<i64, ConfigError> {
    let sidecar_memory =
        parse_bytes(&o.sidecar_memory).map_err(|r| bad("sidecar-memory", &o.sidecar_memory, r))?;
    // Docker refuses memory limits under 6 MiB.
    if sidecar_memory < 6 * 1024 * 1024 {
        return Err(bad(
            "sidecar-memory",
            &o.sidecar_memory,
            "must be at least 6MiB",
        ));
    }
    if o.sidecar_pids_limit < 1 {
        return Err(bad(
            "sidecar-pids-limit",
            &o.sidecar_pids_limit.to_string(),
            "must be positive",
        ));
    }
    if o.max_parallel_actions < 1 {
        return Err(bad(
            "max-parallel-actions",
            &o.max_parallel_actions.to_string(),
            "must be at least 1",
        ));
    }
    Ok(sidecar_memory)
}

/// `--identity-ca-cert`/`--identity-ca-key` (both or neither) or the `--identity-store`.
fn ca_source(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    store: Option<PathBuf>,
) -> Result<CaSource, ConfigError> {
    let show = |p: &PathBuf| p.display().to_string();
    match (cert, key) {
        (Some(cert), Some(key)) => {
            if let Some(store) = &store {
                return Err(bad(
                    "identity-store",
                    &show(store),
                    "not used with --identity-ca-cert: the CA is the one given",
                ));
            }
            Ok(CaSource::Files { cert, key })
        }
        (Some(cert), None) => Err(bad(
            "identity-ca-cert",
            &show(&cert),
            "needs --identity-ca-key: the CA's key",
        )),
        (None, Some(key)) => Err(bad(
            "identity-ca-key",
            &show(&key),
            "needs --identity-ca-cert: the CA's certificate",
        )),
        (None, None) => {
            let store = store.unwrap_or_else(|| PathBuf::from(IDENTITY_STORE));
            if !store.is_absolute() {
                return Err(bad(
                    "identity-store",
                    &show(&store),
                    "expected an absolute path",
                ));
            }
            Ok(CaSource::Store(store))
        }
    }
}

/// `--identity-ttl`: between [`IDENTITY_TTL_MIN`] and [`IDENTITY_TTL_MAX`].
fn identity_ttl(text: Option<&str>) -> Result<Duration, ConfigError> {
    let Some(t) = text else {
        return Ok(IDENTITY_TTL);
    };
    let ttl = shared::parse::duration(t).map_err(|r| bad("identity-ttl", t, r))?;
    if ttl < IDENTITY_TTL_MIN {
        return Err(bad(
            "identity-ttl",
            t,
            "must be at least 2s: certificates are renewed at half their lifetime",
        ));
    }
    if ttl > IDENTITY_TTL_MAX {
        return Err(bad(
            "identity-ttl",
            t,
            "must be at most 365d: identity certificates are meant to be short-lived",
        ));
    }
    Ok(ttl)
}

/// The `--identity-*` flags, validated: the identity settings (`None` without
/// `--identity-domain`), and where the CA and extra roots are (for `ca export`, which needs no
/// domain). Any other `--identity-*` flag without the domain is refused, except with `ca`: given
/// alone it would do nothing.
fn identity_config(
    o: &Opts,
    command: &Command,
) -> Result<(Option<IdentityConfig>, CaSource, Option<PathBuf>), ConfigError> {
    // Empty is not given, as for --acme-email: a compose file can pass `${VAR:-}` through.
    let (text, path) = (given_text, given_path);
    let (cert, key, store, trust) = (
        path(&o.identity_ca_cert),
        path(&o.identity_ca_key),
        path(&o.identity_store),
        path(&o.identity_trust),
    );
    let ttl_text = text(&o.identity_ttl);
    let show = |p: &PathBuf| p.display().to_string();
    let domain = match text(&o.identity_domain) {
        Some(d) => Some(
            d.parse::<TrustDomain>()
                .map_err(|r| bad("identity-domain", &d, r))?,
        ),
        None => None,
    };
    if domain.is_none() && !matches!(command, Command::Ca { .. }) {
        let given = [
            ("identity-ca-cert", cert.as_ref().map(show)),
            ("identity-ca-key", key.as_ref().map(show)),
            ("identity-ttl", ttl_text.clone()),
            ("identity-store", store.as_ref().map(show)),
            ("identity-trust", trust.as_ref().map(show)),
        ];
        if let Some((flag, Some(value))) = given.into_iter().find(|(_, v)| v.is_some()) {
            return Err(bad(flag, &value, "needs --identity-domain"));
        }
    }
    let ca = ca_source(cert, key, store)?;
    let ttl = identity_ttl(ttl_text.as_deref())?;
    let identity = domain.map(|domain| IdentityConfig {
        domain,
        ttl,
        ca: ca.clone(),
        trust: trust.clone(),
    });
    Ok((identity, ca, trust))
}

/// The `--acme-*` flags, validated: `None` without `--acme-email`.
fn acme_config(o: &Opts, certs: Option<&CertsSource>) -> Result<Option<AcmeConfig>, ConfigError> {
    // Empty is off, as for --certs-from: a compose file can pass `${ACME_EMAIL:-}` through.
    let Some(email) = o
        .acme_email
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
    else {
        no_dns_flags(o)?;
        return Ok(None);
    };
    valid_email(email).map_err(|r| bad("acme-email", email, r))?;
    let (challenge, dns) = dns_config(o)?;
    if !o.acme_agree_tos {
        return Err(bad(
            "acme-agree-tos",
            "",
            "--acme-email needs it: agree to the ACME CA's terms of service",
        ));
    }
    let directory = o.acme_directory.trim();
    let rest = directory
        .strip_prefix("https://")
        .ok_or_else(|| bad("acme-directory", directory, "expected an https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty()
        || directory
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad(
            "acme-directory",
            directory,
            "expected an https:// URL with a host",
        ));
    }
    let store =
        match certs {
            Some(CertsSource::HostDir(path)) => std::path::PathBuf::from(path),
            Some(CertsSource::Volume(v)) => {
                return Err(bad(
                    "certs-path",
                    "",
                    format!("ACME writes the store: say where this process sees volume {v}"),
                ))
            }
            None => return Err(bad(
                "certs-path",
                "",
                "ACME needs a store it can write: --certs-from DIR (or a volume and --certs-path)",
            )),
        };
    let policy = AcmePolicy {
        retry: Backoff::new(o.acme_retry_min, o.acme_retry_min.max(ACME_RETRY_MAX)),
        ..Default::default()
    };
    Ok(Some(AcmeConfig {
        email: email.to_string(),
        directory: directory.to_string(),
        ca_cert: o.acme_ca_cert.clone(),
        store,
        policy,
        eab: eab_config(o)?,
        challenge,
        dns,
    }))
}

/// A text flag's value, trimmed; empty is not given (a compose file can pass `${VAR:-}`
/// through).
fn given_text(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// A path flag's value; empty is not given.
fn given_path(v: &Option<PathBuf>) -> Option<PathBuf> {
    v.clone().filter(|p| !p.as_os_str().is_empty())
}

/// The `--acme-dns-*` flags with ACME off: each given one is refused (it would do nothing).
fn no_dns_flags(o: &Opts) -> Result<(), ConfigError> {
    let text = given_text;
    let path = |v: &Option<PathBuf>| given_path(v).map(|p| p.display().to_string());
    let challenge = Some(o.acme_challenge.trim().to_string()).filter(|c| c != "http-01");
    let given = [
        ("acme-challenge", challenge),
        ("acme-dns-rfc2136-server", text(&o.acme_dns_rfc2136_server)),
        ("acme-dns-tsig-key", path(&o.acme_dns_tsig_key)),
        ("acme-dns-hook", path(&o.acme_dns_hook)),
        ("acme-dns-hook-timeout", text(&o.acme_dns_hook_timeout)),
        ("acme-dns-resolver", text(&o.acme_dns_resolver)),
        (
            "acme-dns-propagation-timeout",
            text(&o.acme_dns_propagation_timeout),
        ),
    ];
    match given.into_iter().find(|(_, v)| v.is_some()) {
        Some((flag, Some(value))) => Err(bad(flag, &value, "needs --acme-email: ACME is off")),
        _ => Ok(()),
    }
}

/// `--acme-challenge` and the `--acme-dns-*` flags: at most one provider, each with what it
/// needs; dns-01 as the default only with one; the checks' settings only with one.
fn dns_config(o: &Opts) -> Result<(ChallengeKind, Option<DnsConfig>), ConfigError> {
    let (text, path) = (given_text, given_path);
    let challenge: ChallengeKind = o
        .acme_challenge
        .parse()
        .map_err(|r| bad("acme-challenge", &o.acme_challenge, r))?;
    let address = |flag: &'static str, value: Option<String>| {
        value
            .map(|v| {
                v.parse::<BackendAddr>()
                    .map_err(|r| bad(flag, &v, format!("expected HOST:PORT or IP:PORT: {r}")))
            })
            .transpose()
    };
    let server = address("acme-dns-rfc2136-server", text(&o.acme_dns_rfc2136_server))?;
    let resolver = address("acme-dns-resolver", text(&o.acme_dns_resolver))?;
    let key = path(&o.acme_dns_tsig_key);
    let hook = path(&o.acme_dns_hook);
    let bounded = |flag: &'static str, value: Option<String>, max: Duration| {
        let Some(v) = value else { return Ok(None) };
        let d = shared::parse::duration(&v).map_err(|r| bad(flag, &v, r))?;
        if d < Duration::from_secs(1) || d > max {
            let max = shared::parse::render_duration(max);
            return Err(bad(flag, &v, format!("expected 1s to {max}")));
        }
        Ok(Some(d))
    };
    let hook_timeout = bounded(
        "acme-dns-hook-timeout",
        text(&o.acme_dns_hook_timeout),
        DNS_HOOK_TIMEOUT_MAX,
    )?;
    let propagation = bounded(
        "acme-dns-propagation-timeout",
        text(&o.acme_dns_propagation_timeout),
        DNS_PROPAGATION_MAX,
    )?;
    let provider =
        match (server, key, hook) {
            (Some(_), _, Some(hook)) => {
                return Err(bad(
                    "acme-dns-hook",
                    &hook.display().to_string(),
                    "give one DNS provider: --acme-dns-rfc2136-server or --acme-dns-hook, not both",
                ))
            }
            (Some(server), Some(tsig_key), None) => Some(DnsProvider::Rfc2136 { server, tsig_key }),
            (Some(server), None, None) => return Err(bad(
                "acme-dns-rfc2136-server",
                &server.to_string(),
                "needs --acme-dns-tsig-key: the file of the TSIG key the updates are signed with",
            )),
            (None, Some(key), _) => {
                return Err(bad(
                    "acme-dns-tsig-key",
                    &key.display().to_string(),
                    "needs --acme-dns-rfc2136-server: the DNS server that takes the updates",
                ))
            }
            (None, None, Some(path)) => {
                if !path.is_absolute() {
                    return Err(bad(
                        "acme-dns-hook",
                        &path.display().to_string(),
                        "expected an absolute path: the hook runs with an empty environment",
                    ));
                }
                Some(DnsProvider::Hook {
                    path,
                    timeout: hook_timeout.unwrap_or(DNS_HOOK_TIMEOUT_DEFAULT),
                })
            }
            (None, None, None) => None,
        };
    if hook_timeout.is_some() && !matches!(provider, Some(DnsProvider::Hook { .. })) {
        return Err(bad(
            "acme-dns-hook-timeout",
            &text(&o.acme_dns_hook_timeout).unwrap_or_default(),
            "needs --acme-dns-hook",
        ));
    }
    let Some(provider) = provider else {
        if challenge == ChallengeKind::Dns01 {
            return Err(bad(
                "acme-challenge",
                "dns-01",
                "needs a DNS provider: --acme-dns-rfc2136-server with --acme-dns-tsig-key, or --acme-dns-hook",
            ));
        }
        for (flag, value) in [
            ("acme-dns-resolver", text(&o.acme_dns_resolver)),
            (
                "acme-dns-propagation-timeout",
                text(&o.acme_dns_propagation_timeout),
            ),
        ] {
            if let Some(v) = value {
                return Err(bad(
                    flag,
                    &v,
                    "needs a DNS provider: --acme-dns-rfc2136-server or --acme-dns-hook",
                ));
            }
        }
        return Ok((challenge, None));
    };
    Ok((
        challenge,
        Some(DnsConfig {
            provider,
            resolver,
            propagation_timeout: propagation.unwrap_or(DNS_PROPAGATION_DEFAULT),
        }),
    ))
}

/// `--acme-eab-kid` and `--acme-eab-hmac-key-file`: both or neither.
fn eab_config(o: &Opts) -> Result<Option<(String, std::path::PathBuf)>, ConfigError> {
    let kid = o
        .acme_eab_kid
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let file = o
        .acme_eab_hmac_key_file
        .clone()
        .filter(|p| !p.as_os_str().is_empty());
    match (kid, file) {
        (None, None) => Ok(None),
        (Some(kid), Some(file)) => {
            if kid.len() > 256 || kid.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(bad(
                    "acme-eab-kid",
                    kid,
                    "expected the key ID the CA gave (printable, at most 256 bytes)",
                ));
            }
            Ok(Some((kid.to_string(), file)))
        }
        (Some(kid), None) => Err(bad(
            "acme-eab-kid",
            kid,
            "needs --acme-eab-hmac-key-file: the file holding the CA's HMAC key",
        )),
        (None, Some(file)) => Err(bad(
            "acme-eab-hmac-key-file",
            &file.display().to_string(),
            "needs --acme-eab-kid: the key ID the CA gave",
        )),
    }
}

/// An address the CA will take as `mailto:`: one `@`, a local part of printable characters
/// without the few that break a URI, and a domain that is a DNS name with a dot.
fn valid_email(email: &str) -> Result<(), &'static str> {
    const EXPECTED: &str = "expected an email address such as admin@example.com";
    let (local, domain) = email.split_once('@').ok_or(EXPECTED)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| c.is_ascii_graphic() && !"@,;<>()[]\\\"".contains(c));
    let domain_ok = domain.contains('.') && !domain.ends_with('.') && shared::dns::is_name(domain);
    if local_ok && domain_ok {
        Ok(())
    } else {
        Err(EXPECTED)
    }
}

fn valid_volume_name(v: &str) -> bool {
    let mut chars = v.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Parses a byte size: plain bytes, or a number with `k`/`m`/`g` (also `KiB`, `MiB`, `GiB`, `kb`...),
/// all binary multiples as Docker uses them.
pub(crate) fn parse_bytes(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: i64 = num
        .parse()
        .map_err(|_| "expected a size such as 64MiB or 128m".to_string())?;
    let mult: i64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err("unknown unit; use b, k, m or g (KiB, MiB, GiB)".to_string()),
    };
    n.checked_mul(mult).ok_or_else(|| "too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["spawner"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parse").into_config()
    }

    #[test]
    fn defaults_are_valid() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c.command, Command::Run);
        assert_eq!(c.docker_socket, "/var/run/docker.sock");
        assert_eq!(c.label_prefix, "tls-sidecar");
        assert!(c.allow.allows("tls-sidecar/sidecar:latest"));
        assert_eq!(c.sidecar_memory, 64 << 20);
        assert_eq!(c.sidecar_pids_limit, 128);
        assert_eq!(c.max_parallel_actions, 8);
    }

    #[test]
    fn status_subcommand_takes_flags_after_it() {
        let c = cfg(&["status", "--label-prefix", "x"]).expect("status");
        assert_eq!(c.command, Command::Status { json: false });
        assert_eq!(c.label_prefix, "x");
        let c = cfg(&["status", "--json"]).expect("status --json");
        assert_eq!(c.command, Command::Status { json: true });
    }

    #[test]
    fn admin_listen_is_off_by_default_and_typed() {
        assert_eq!(cfg(&[]).expect("defaults").admin_listen, None);
        let c = cfg(&["--admin-listen", "127.0.0.1:9090"]).expect("ip:port");
        assert_eq!(
            c.admin_listen,
            Some("127.0.0.1:9090".parse().expect("addr"))
        );
        let c = cfg(&["--admin-listen", ":9090"]).expect(":port");
        assert_eq!(c.admin_listen, Some("0.0.0.0:9090".parse().expect("addr")));
        let c = cfg(&["--admin-listen", "[::1]:9090"]).expect("[v6]:port");
        assert_eq!(c.admin_listen, Some("[::1]:9090".parse().expect("addr")));
        // One listen grammar everywhere (shared::addr::ListenAddr): a bare port too.
        let c = cfg(&["--admin-listen", "9090"]).expect("port");
        assert_eq!(c.admin_listen, Some("0.0.0.0:9090".parse().expect("addr")));
        for bad in ["localhost:9090", ":99999", "1.2.3.4", "[::1]"] {
            let e = cfg(&["--admin-listen", bad]).expect_err(bad);
            assert_eq!(e.flag, "admin-listen");
        }
    }

    #[test]
    fn refuses_bad_values() {
        assert!(cfg(&["--docker-host", "tcp://1.2.3.4:2375"]).is_err());
        assert!(cfg(&["--sidecar-memory", "lots"]).is_err());
        assert!(cfg(&["--sidecar-memory", "1k"]).is_err());
        assert!(cfg(&["--certs-from", "../certs"]).is_err());
        assert!(cfg(&["--label-prefix", "a b"]).is_err());
        assert!(cfg(&["--allow-image", ""]).is_err());
        assert!(cfg(&["--max-parallel-actions", "0"]).is_err());
    }

    #[test]
    fn certs_from_distinguishes_dirs_and_volumes() {
        let c = cfg(&["--certs-from", "/etc/letsencrypt"]).expect("dir");
        assert_eq!(
            c.certs,
            Some(CertsSource::HostDir("/etc/letsencrypt".into()))
        );
        let c = cfg(&["--certs-from", "letsencrypt"]).expect("volume");
        assert_eq!(c.certs, Some(CertsSource::Volume("letsencrypt".into())));
    }

    #[test]
    fn certs_path_says_where_the_spawner_sees_the_store() {
        let c = cfg(&["--certs-from", "/etc/letsencrypt", "--certs-path", "/store"]).expect("dir");
        assert_eq!(c.certs, Some(CertsSource::HostDir("/store".into())));
        let c = cfg(&["--certs-from", "letsencrypt", "--certs-path", "/store"]).expect("volume");
        assert_eq!(c.certs, Some(CertsSource::HostDir("/store".into())));
        for (args, flag) in [
            (&["--certs-path", "/store"][..], "certs-path"),
            (
                &["--certs-from", "le", "--certs-path", "store"][..],
                "certs-path",
            ),
        ] {
            assert_eq!(cfg(args).expect_err("refused").flag, flag, "{args:?}");
        }
    }

    #[test]
    fn dns_01_needs_one_provider_with_what_it_needs() {
        let on = [
            "--certs-from",
            "/le",
            "--acme-email",
            "a@example.com",
            "--acme-agree-tos",
        ];
        let with = |extra: &[&str]| {
            let mut args = on.to_vec();
            args.extend_from_slice(extra);
            cfg(&args)
        };
        let acme = with(&[]).expect("acme").acme.expect("on");
        assert_eq!(acme.challenge, ChallengeKind::Http01);
        assert_eq!(acme.dns, None);

        let rfc = with(&[
            "--acme-challenge",
            "dns-01",
            "--acme-dns-rfc2136-server",
            "192.0.2.53:5353",
            "--acme-dns-tsig-key",
            "/run/secrets/tsig.key",
            "--acme-dns-resolver",
            "ns1.example.net:53",
            "--acme-dns-propagation-timeout",
            "30s",
        ])
        .expect("rfc 2136")
        .acme
        .expect("on");
        assert_eq!(rfc.challenge, ChallengeKind::Dns01);
        let dns = rfc.dns.expect("a provider");
        assert_eq!(
            dns.provider,
            DnsProvider::Rfc2136 {
                server: "192.0.2.53:5353".parse().expect("an address"),
                tsig_key: "/run/secrets/tsig.key".into(),
            }
        );
        assert_eq!(
            dns.resolver,
            Some("ns1.example.net:53".parse().expect("an address"))
        );
        assert_eq!(dns.propagation_timeout, Duration::from_secs(30));

        let hook = with(&["--acme-dns-hook", "/usr/local/bin/dns-hook"])
            .expect("hook")
            .acme
            .expect("on");
        assert_eq!(hook.challenge, ChallengeKind::Http01, "dns-01 per label");
        let dns = hook.dns.expect("a provider");
        assert_eq!(
            dns.provider,
            DnsProvider::Hook {
                path: "/usr/local/bin/dns-hook".into(),
                timeout: DNS_HOOK_TIMEOUT_DEFAULT,
            }
        );
        assert_eq!(dns.propagation_timeout, DNS_PROPAGATION_DEFAULT);

        let refused = |extra: &[&str]| with(extra).expect_err("refused");
        for (args, flag, says) in [
            (
                &["--acme-challenge", "dns-01"][..],
                "acme-challenge",
                "needs a DNS provider",
            ),
            (
                &["--acme-challenge", "dns-02"],
                "acme-challenge",
                "expected http-01",
            ),
            (
                &["--acme-dns-rfc2136-server", "192.0.2.53:53"],
                "acme-dns-rfc2136-server",
                "--acme-dns-tsig-key",
            ),
            (
                &["--acme-dns-tsig-key", "/k"],
                "acme-dns-tsig-key",
                "--acme-dns-rfc2136-server",
            ),
            (
                &[
                    "--acme-dns-rfc2136-server",
                    "192.0.2.53:53",
                    "--acme-dns-tsig-key",
                    "/k",
                    "--acme-dns-hook",
                    "/h",
                ],
                "acme-dns-hook",
                "not both",
            ),
            (
                &["--acme-dns-hook", "dns-hook"],
                "acme-dns-hook",
                "absolute path",
            ),
            (
                &["--acme-dns-hook-timeout", "5s"],
                "acme-dns-hook-timeout",
                "needs --acme-dns-hook",
            ),
            (
                &["--acme-dns-hook", "/h", "--acme-dns-hook-timeout", "500ms"],
                "acme-dns-hook-timeout",
                "1s to 10m",
            ),
            (
                &[
                    "--acme-dns-hook",
                    "/h",
                    "--acme-dns-propagation-timeout",
                    "2h",
                ],
                "acme-dns-propagation-timeout",
                "1s to 1h",
            ),
            (
                &["--acme-dns-resolver", "192.0.2.1:53"],
                "acme-dns-resolver",
                "needs a DNS provider",
            ),
            (
                &["--acme-dns-hook", "/h", "--acme-dns-resolver", "no port"],
                "acme-dns-resolver",
                "expected HOST:PORT",
            ),
            (
                &[
                    "--acme-dns-rfc2136-server",
                    "a b:53",
                    "--acme-dns-tsig-key",
                    "/k",
                ],
                "acme-dns-rfc2136-server",
                "expected HOST:PORT",
            ),
        ] {
            let e = refused(args);
            assert_eq!(e.flag, flag, "{args:?}: {e}");
            assert!(e.to_string().contains(says), "{args:?}: {e}");
        }
        // Empty is not given (a compose file passing `${VAR:-}` through).
        assert_eq!(
            with(&["--acme-dns-resolver", "", "--acme-dns-rfc2136-server", ""])
                .expect("empty")
                .acme
                .expect("on")
                .dns,
            None
        );
        // With ACME off, each of them would do nothing: refused.
        for args in [
            &["--acme-challenge", "dns-01"][..],
            &["--acme-dns-hook", "/h"],
            &["--acme-dns-rfc2136-server", "192.0.2.53:53"],
        ] {
            let e = cfg(args).expect_err("ACME off");
            assert!(e.to_string().contains("needs --acme-email"), "{e}");
        }
    }

    #[test]
    fn external_account_binding_needs_both_its_flags() {
        let on = [
            "--certs-from",
            "/le",
            "--acme-email",
            "a@example.com",
            "--acme-agree-tos",
        ];
        let with = |extra: &[&str]| {
            let mut args = on.to_vec();
            args.extend_from_slice(extra);
            cfg(&args)
        };
        assert_eq!(with(&[]).expect("acme").acme.expect("on").eab, None);
        let both = with(&[
            "--acme-eab-kid",
            "kid-1",
            "--acme-eab-hmac-key-file",
            "/run/secrets/eab",
        ])
        .expect("both");
        assert_eq!(
            both.acme.expect("on").eab,
            Some(("kid-1".into(), "/run/secrets/eab".into()))
        );
        let refused = |extra: &[&str]| with(extra).expect_err("refused");
        let e = refused(&["--acme-eab-kid", "kid-1"]);
        assert_eq!(e.flag, "acme-eab-kid");
        assert!(e.to_string().contains("--acme-eab-hmac-key-file"), "{e}");
        let e = refused(&["--acme-eab-hmac-key-file", "/run/secrets/eab"]);
        assert_eq!(e.flag, "acme-eab-hmac-key-file");
        let e = refused(&["--acme-eab-kid", "a b", "--acme-eab-hmac-key-file", "/k"]);
        assert_eq!(e.flag, "acme-eab-kid");
    }

    #[test]
    fn acme_is_off_by_default_and_needs_its_flags() {
        assert!(cfg(&[]).expect("defaults").acme.is_none());
        assert!(cfg(&["--acme-email", ""])
            .expect("empty is off")
            .acme
            .is_none());
        let on = [
            "--certs-from",
            "/le",
            "--acme-email",
            "a@example.com",
            "--acme-agree-tos",
        ];
        let c = cfg(&on).expect("acme");
        let acme = c.acme.expect("on");
        assert_eq!(acme.directory, LETS_ENCRYPT);
        assert_eq!(acme.store, std::path::PathBuf::from("/le"));
        assert_eq!(acme.policy.max_orders_per_hour, 3);
        assert_eq!(acme.policy.retry.delay(1), Duration::from_secs(60));
        let refused = |args: &[&str]| cfg(args).expect_err("refused").flag;
        assert_eq!(refused(&on[..4]), "acme-agree-tos");
        for email in [
            "not-an-email",
            "a@b",
            "@example.com",
            "a b@example.com",
            "a@exa mple.com",
        ] {
            let mut args = on.to_vec();
            args[3] = email;
            assert_eq!(refused(&args), "acme-email", "{email}");
        }
        let mut args = on.to_vec();
        args.extend(["--acme-directory", "http://ca.example/dir"]);
        assert_eq!(refused(&args), "acme-directory");
        assert_eq!(refused(&on[2..]), "certs-path", "no store");
        let mut args = on.to_vec();
        args[1] = "le-volume";
        assert_eq!(
            refused(&args),
            "certs-path",
            "a volume the spawner cannot see"
        );
        assert!(Cli::try_parse_from(["spawner", "--acme-retry-min", "0s"]).is_err());
    }

    #[test]
    fn identity_is_off_by_default_and_typed() {
        let c = cfg(&[]).expect("defaults");
        assert_eq!(c.identity, None);
        assert_eq!(c.identity_ca, CaSource::Store(IDENTITY_STORE.into()));
        assert!(cfg(&["--identity-domain", " "])
            .expect("empty is off")
            .identity
            .is_none());
        let c = cfg(&["--identity-domain", "Example.Internal"]).expect("on");
        let id = c.identity.expect("identity");
        assert_eq!(id.domain.as_str(), "example.internal");
        assert_eq!(id.ttl, Duration::from_secs(24 * 3600));
        assert_eq!(id.ca, CaSource::Store(IDENTITY_STORE.into()));
        assert_eq!(id.trust, None);

        let c = cfg(&[
            "--identity-domain",
            "example.internal",
            "--identity-ca-cert",
            "ca.pem",
            "--identity-ca-key",
            "/secrets/ca-key.pem",
            "--identity-ttl",
            "1h 30m",
            "--identity-trust",
            "/etc/old-root.pem",
        ])
        .expect("operator CA");
        let id = c.identity.expect("identity");
        assert_eq!(
            id.ca,
            CaSource::Files {
                cert: "ca.pem".into(),
                key: "/secrets/ca-key.pem".into()
            }
        );
        assert_eq!(id.ttl, Duration::from_secs(5400));
        assert_eq!(id.trust, Some("/etc/old-root.pem".into()));
        assert_eq!(c.identity_ca, id.ca);
        assert_eq!(c.identity_trust, id.trust);
        let c = cfg(&[
            "--identity-domain",
            "d.example",
            "--identity-store",
            "/srv/id",
        ])
        .expect("store");
        assert_eq!(
            c.identity.expect("identity").ca,
            CaSource::Store("/srv/id".into())
        );
    }

    #[test]
    fn identity_flags_are_refused_with_their_reason() {
        let refused = |args: &[&str]| {
            let mut v = vec!["--identity-domain", "example.internal"];
            v.extend_from_slice(args);
            cfg(&v).expect_err("refused")
        };
        let e = cfg(&["--identity-domain", "not a domain"]).expect_err("domain");
        assert_eq!(e.flag, "identity-domain");
        for (ttl, why) in [
            ("1s", "at least 2s"),
            ("366d", "at most 365d"),
            ("0s", "greater than zero"),
            ("soon", "expected a duration"),
        ] {
            let e = refused(&["--identity-ttl", ttl]);
            assert_eq!(e.flag, "identity-ttl", "{ttl}");
            assert!(e.reason.contains(why), "{ttl}: {e}");
        }
        assert!(cfg(&["--identity-domain", "d.example", "--identity-ttl", "2s"]).is_ok());
        assert!(cfg(&["--identity-domain", "d.example", "--identity-ttl", "365d"]).is_ok());
        let e = refused(&["--identity-ca-cert", "/ca.pem"]);
        assert_eq!(e.flag, "identity-ca-cert");
        assert!(e.reason.contains("--identity-ca-key"), "{e}");
        let e = refused(&["--identity-ca-key", "/ca-key.pem"]);
        assert_eq!(e.flag, "identity-ca-key");
        assert!(e.reason.contains("--identity-ca-cert"), "{e}");
        let e = refused(&[
            "--identity-ca-cert",
            "/ca.pem",
            "--identity-ca-key",
            "/k.pem",
            "--identity-store",
            "/srv",
        ]);
        assert_eq!(e.flag, "identity-store");
        let e = refused(&["--identity-store", "identity"]);
        assert_eq!(e.flag, "identity-store");
        assert!(e.reason.contains("absolute"), "{e}");
    }

    #[test]
    fn identity_flags_need_the_domain_except_for_ca_export() {
        for (flag, value) in [
            ("--identity-ca-cert", "/ca.pem"),
            ("--identity-ca-key", "/ca-key.pem"),
            ("--identity-ttl", "1h"),
            ("--identity-store", "/srv/id"),
            ("--identity-trust", "/old.pem"),
        ] {
            let e = cfg(&[flag, value]).expect_err(flag);
            assert_eq!(format!("--{}", e.flag), flag);
            assert_eq!(e.reason, "needs --identity-domain");
            let e = cfg(&["status", flag, value]).expect_err(flag);
            assert_eq!(format!("--{}", e.flag), flag);
        }
        let c = cfg(&["ca", "export"]).expect("export");
        assert_eq!(
            c.command,
            Command::Ca {
                action: CaAction::Export
            }
        );
        assert_eq!(c.identity, None);
        assert_eq!(c.identity_ca, CaSource::Store(IDENTITY_STORE.into()));
        let c = cfg(&[
            "ca",
            "export",
            "--identity-store",
            "/srv/id",
            "--identity-trust",
            "/old.pem",
        ])
        .expect("export from a store");
        assert_eq!(c.identity_ca, CaSource::Store("/srv/id".into()));
        assert_eq!(c.identity_trust, Some("/old.pem".into()));
        let c = cfg(&[
            "--identity-ca-cert",
            "/ca.pem",
            "--identity-ca-key",
            "/k.pem",
            "ca",
            "export",
        ])
        .expect("export given files");
        assert!(matches!(c.identity_ca, CaSource::Files { .. }));
        assert_eq!(
            cfg(&["ca", "export", "--identity-store", "rel"])
                .expect_err("still validated")
                .flag,
            "identity-store"
        );
        assert!(
            Cli::try_parse_from(["spawner", "ca"]).is_err(),
            "an action is required"
        );
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("128m"), Ok(128 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(parse_bytes("1x").is_err());
    }

    #[test]
    fn allow_list_globs() {
        let a = AllowList::new(vec![
            "tls-sidecar/sidecar:*".into(),
            "reg.example/tls?:1.*".into(),
        ]);
        assert!(a.allows("tls-sidecar/sidecar:latest"));
        assert!(a.allows("tls-sidecar/sidecar:"));
        assert!(!a.allows("tls-sidecar/sidecar"));
        assert!(!a.allows("evil/tls-sidecar/sidecar:latest"));
        assert!(a.allows("reg.example/tls1:1.2"));
        assert!(!a.allows("reg.example/tls12:1.2"));
        assert!(AllowList::new(vec!["*".into()]).allows("anything/at:all"));
    }
}
