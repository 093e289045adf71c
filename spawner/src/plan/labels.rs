//! Pure label handling: which containers opted in, what their labels ask for (validated), and
//! which sidecar images the allow-list permits. No I/O.

use std::collections::HashMap;
use std::num::NonZeroU16;
use std::str::FromStr;

use crate::config::RolloutPolicy;
use shared::addr::{BackendAddr, ListenAddr, DEFAULT_BACKEND_PORT, DEFAULT_LISTEN_PORT};
use shared::dns::{CertName, DnsName};
use shared::identity::{CommonName, DnsPattern, Identities, List, UriPattern};
use shared::mode::{check_mode, ClientAuthMode, Mode, ModeSetting, ModeSettings};
use shared::parse::MaxAge;
use shared::proto::{AlpnList, BackendProtocol, ProxyProtocol, TlsGroups};
use shared::schema::{label, label_name, BYFAHRER_PROXY_IMAGE_LABEL};
use shared::service_identity::{check_unique, ServiceName, Upstream};
use shared::spec::{Http3, MountedPath};

/// Longest label value the spawner reads, in bytes. Far above any address, name, path or
/// allow-list a target needs; a longer value is a mistake or an attack on what it feeds (the
/// sidecar's environment, the spawner's log and `spawner status`).
pub(crate) const MAX_LABEL_VALUE_BYTES: usize = 4096;
/// How much of a refused oversized value an error repeats: enough to recognise it.
const SHOWN_VALUE_CHARS: usize = 64;

pub use crate::config::ChallengeKind;

/// What a target's labels ask for, validated: each value has its type from `shared`, the same
/// the sidecar parses its flags into, so what is accepted here the sidecar accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// Sidecar image requested by the opt-in label.
    pub(crate) image: String,
    /// Where the sidecar listens in the target's namespace (never port 0).
    pub(crate) listen: ListenAddr,
    pub(crate) backend: BackendAddr,
    pub(crate) mode: Mode,
    /// Name the certificate is for (and its certbot directory, `live/<hostname>/`): the first
    /// of the `hostname` label's names (without its `*.` when it is a wildcard, as certbot
    /// names a wildcard's lineage), or one made of the container name.
    pub(crate) hostname: DnsName,
    /// The first name is `*.<hostname>`.
    pub(crate) hostname_wildcard: bool,
    /// The `hostname` label's other names: one certificate carries them all.
    pub(crate) alt_names: Vec<CertName>,
    /// The names came from the `hostname` label (not the container name): with ACME on, this
    /// target gets a certificate obtained for them.
    pub(crate) hostname_labelled: bool,
    /// How ACME proves control of the names (`acme-challenge`).
    pub(crate) acme_challenge: ChallengeKind,
    /// Mutual TLS, from `client-ca` and the labels that need it.
    pub(crate) mtls: Option<Mtls>,
    /// Plain-HTTP redirect listener in the target's namespace.
    pub(crate) redirect_listen: Option<ListenAddr>,
    pub(crate) hsts: Option<MaxAge>,
    /// http mode: HTTP/3 beside the TLS listener (`http3=true`), with the port of the
    /// `http3-advertise-port` label when given.
    pub(crate) http3: Option<Http3>,
    /// http mode: the HTTP version the sidecar speaks to the backend.
    pub(crate) backend_protocol: BackendProtocol,
    /// tcp mode: ALPN protocols the sidecar offers (empty: none).
    pub(crate) alpn: AlpnList,
    /// tcp mode: PROXY protocol header the sidecar sends to the backend.
    pub(crate) proxy_protocol: ProxyProtocol,
    /// The TLS key-exchange groups its sidecar agrees (`tls-groups`; empty: the default).
    pub(crate) tls_groups: TlsGroups,
    /// Service identity, when the spawner runs an identity CA (`--identity-domain`).
    pub(crate) identity: Option<Identity>,
    /// The target has a network of its own, so its sidecar can tell from the namespace when the
    /// target is gone. Not a label: [`parse_target`] leaves it off, the observation sets it from
    /// the target's inspect data (`crate::engine::observe::has_own_network`).
    pub exit_when_orphaned: bool,
    /// The one host port the engine publishes the listen port on over UDP: what `Alt-Svc`
    /// advertises for HTTP/3 when no `http3-advertise-port` label says. Not a label:
    /// [`parse_target`] leaves it `None`, the observation sets it from the target's inspect data
    /// (`crate::engine::observe::published_udp_port`).
    pub published_udp_port: Option<NonZeroU16>,
    /// The `rollout` label: overrides `--rollout` for this target. Not part of what the
    /// sidecar is told.
    pub(crate) rollout: Option<RolloutPolicy>,
}

/// Mutual TLS settings a target asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mtls {
    /// The client CA bundle, a file under the certificate mount.
    pub(crate) ca: MountedPath,
    /// `client-auth`; the sidecar's default (`required`) when the label is absent.
    pub(crate) auth: ClientAuthMode,
    pub(crate) allow: Identities,
}

/// A target's service identity and what it does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    /// `identity`, else the Compose service name, else the container name.
    pub(crate) name: ServiceName,
    /// `allow-identities`: the clients admitted (mutual TLS against the identity CA); `None`:
    /// client certificates are not asked for.
    pub(crate) admit: Option<Admitted>,
    /// `upstreams`: the egress relays its app calls in plain.
    pub(crate) upstreams: Vec<Upstream>,
}

/// Who `allow-identities` admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// `*`: any identity the CA issued.
    Any,
    /// These services, each once.
    Only(Vec<ServiceName>),
}

/// The label Compose puts on a service's containers: the default identity name.
pub(crate) const COMPOSE_SERVICE_LABEL: &str = "com.docker.compose.service";
/// The labels Swarm puts on a task's containers: its service's name (`<stack>_<service>` for a
/// stack) and the stack's name.
pub(crate) const SWARM_SERVICE_LABEL: &str = "com.docker.swarm.service.name";
pub(crate) const STACK_NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// The name a target's identity defaults to, and what it is: the Compose service name; else the
/// Swarm service's, without its stack's `<stack>_` prefix (what the stack file calls it, and its
/// DNS alias on the stack's networks); else the container name. Replicas share it.
fn default_identity<'a>(
    container_name: &'a str,
    labels: &'a HashMap<String, String>,
) -> (&'static str, &'a str) {
    if let Some(service) = labels.get(COMPOSE_SERVICE_LABEL) {
        return ("Compose service name", service);
    }
    if let Some(service) = labels.get(SWARM_SERVICE_LABEL) {
        let short = labels
            .get(STACK_NAMESPACE_LABEL)
            .and_then(|stack| service.strip_prefix(stack.as_str()))
            .and_then(|rest| rest.strip_prefix('_'))
            .filter(|rest| !rest.is_empty());
        return ("Swarm service name", short.unwrap_or(service));
    }
    ("container name", container_name.trim_start_matches('/'))
}

/// What the spawner gives sidecars, which some labels need.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offered {
    /// `--certs-from` is mounted at `/certs`, so labels naming files there can be honoured.
    pub(crate) certs: bool,
    /// `--identity-domain`: every sidecar gets an identity certificate.
    pub(crate) identity: bool,
    /// ACME is on (`--acme-email`): what it offers a target with a `hostname` label.
    pub(crate) acme: Option<AcmeOffer>,
}

/// What ACME offers a target, which the `acme-challenge` and `hostname` labels must fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcmeOffer {
    /// `--acme-challenge`: the challenge of a target without an `acme-challenge` label.
    pub(crate) default_challenge: ChallengeKind,
    /// A DNS provider is configured (`--acme-dns-rfc2136-server` or `--acme-dns-hook`), so
    /// dns-01 can be answered.
    pub(crate) dns: bool,
}

impl Offered {
    /// Certificates as given, no identity, no ACME.
    pub fn certs(mounted: bool) -> Self {
        Offered {
            certs: mounted,
            identity: false,
            acme: None,
        }
    }
}

/// A label with a value the spawner cannot use; the target gets no sidecar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label {label}={value:?}: {reason}")]
pub struct LabelError {
    pub(crate) label: String,
    pub(crate) value: String,
    pub(crate) reason: String,
}

/// Which label opted a container in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OptIn {
    /// `<prefix>.proxy-image`.
    Prefix,
    /// byfahrer's `org.qnib.byfahrer.proxy-image` (without ours): it stands for byfahrer's
    /// whole setup, its proxy image's addresses included (see [`default_listen`]).
    Byfahrer,
}

/// Where a byfahrer target's sidecar listens: the port of gosslterm's image
/// (`GOSSLTERM_FRONTEND_ADDR=:8081`), the proxy byfahrer ran, so its users' `-p 8081:8081` keeps
/// reaching TLS.
pub(crate) const BYFAHRER_LISTEN_PORT: u16 = 8081;

/// Where a sidecar listens when no `listen` label says: 8443, or for byfahrer's opt-in
/// gosslterm's 8081.
pub(crate) fn default_listen(opt_in: OptIn) -> ListenAddr {
    match opt_in {
        OptIn::Prefix => ListenAddr::any(DEFAULT_LISTEN_PORT),
        OptIn::Byfahrer => ListenAddr::any(BYFAHRER_LISTEN_PORT),
    }
}

/// Where a sidecar forwards when no `backend` label says. Ours: the target's only exposed TCP
/// port other than the listen port, else 8080. byfahrer's: always 127.0.0.1:8080, the
/// `GOSSLTERM_BACKEND_ADDR` of gosslterm's image, where byfahrer's apps serve whatever their
/// image exposes (one built on an image that exposes 80, say).
pub(crate) fn default_backend(opt_in: OptIn, exposed: &[String], listen_port: u16) -> BackendAddr {
    match opt_in {
        OptIn::Prefix => BackendAddr::local(default_backend_port(exposed, listen_port)),
        OptIn::Byfahrer => BackendAddr::local(DEFAULT_BACKEND_PORT),
    }
}

/// Reads a target's labels. `None`: the container did not opt in. `exposed` holds the target's
/// exposed ports as Docker writes them (`8080/tcp`). `offered`: what the spawner gives sidecars
/// (labels that need what it does not give are refused).
pub fn parse_target(
    prefix: &str,
    container_name: &str,
    labels: &HashMap<String, String>,
    exposed: &[String],
    offered: Offered,
) -> Option<Result<TargetSpec, LabelError>> {
    let image_label = label_name(prefix, label::PROXY_IMAGE);
    let opt_in = match labels.get(&image_label) {
        Some(image) => Request {
            by: OptIn::Prefix,
            label: &image_label,
            image,
        },
        None => Request {
            by: OptIn::Byfahrer,
            label: BYFAHRER_PROXY_IMAGE_LABEL,
            image: labels.get(BYFAHRER_PROXY_IMAGE_LABEL)?,
        },
    };
    Some(parse_spec(
        prefix,
        container_name,
        labels,
        exposed,
        offered,
        opt_in,
    ))
}

/// The opt-in label a target carries and the image it asks for.
struct Request<'a> {
    by: OptIn,
    label: &'a str,
    image: &'a str,
}

fn parse_spec(
    prefix: &str,
    container_name: &str,
    labels: &HashMap<String, String>,
    exposed: &[String],
    offered: Offered,
    opt_in: Request<'_>,
) -> Result<TargetSpec, LabelError> {
    check_values(prefix, labels)?;
    let image = opt_in.image.trim();
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refused(opt_in.label, image, "expected an image reference"));
    }
    let get = |suffix: &str| {
        let key = label_name(prefix, suffix);
        labels.get(&key).map(|v| (key, v.as_str()))
    };
    // A typed label, or `None` when it is not given.
    fn optional<T: FromStr<Err = String>>(
        given: Option<(String, &str)>,
    ) -> Result<Option<T>, LabelError> {
        given.map(|(key, v)| typed(&key, v)).transpose()
    }

    let listen = match get(label::LISTEN) {
        None => default_listen(opt_in.by),
        Some((key, v)) => fixed_port(&key, v)?,
    };
    let backend = match get(label::BACKEND) {
        Some((key, v)) => typed(&key, v)?,
        None => default_backend(opt_in.by, exposed, listen.port()),
    };
    let mode: Mode = optional(get(label::MODE))?.unwrap_or_default();
    let (first, alt_names) = match get(label::HOSTNAME) {
        Some((key, v)) => hostnames(&key, v)?,
        // Docker allows names a certificate cannot carry (over 63 characters, say): a valid
        // form of it, or `localhost` when nothing of it is left.
        None => (
            shared::dns::from_container_name(container_name)
                .and_then(|n| n.parse::<DnsName>().ok())
                .map_or_else(|| CertName::from(localhost()), CertName::from),
            Vec::new(),
        ),
    };
    let hostname = first.base().clone();
    let hostname_wildcard = first.is_wildcard();
    let challenge_label = get(label::ACME_CHALLENGE);
    let acme_challenge: ChallengeKind = optional(challenge_label.clone())?
        .or(offered.acme.map(|a| a.default_challenge))
        .unwrap_or_default();
    if let (Some(acme), Some((key, v))) = (offered.acme, get(label::HOSTNAME)) {
        acme_fits(
            acme,
            acme_challenge,
            challenge_label,
            &key,
            v,
            &first,
            &alt_names,
        )?;
    }
    let redirect_listen = match get(label::REDIRECT_LISTEN) {
        None => None,
        Some((key, v)) => {
            let addr = fixed_port(&key, v)?;
            if addr.port() == listen.port() {
                return Err(refused(&key, v, "must differ from the TLS listen port"));
            }
            Some(addr)
        }
    };
    let hsts: Option<MaxAge> = optional(get(label::HSTS))?;
    let http3 = http3(prefix, &get)?;
    let backend_protocol: BackendProtocol =
        optional(get(label::BACKEND_PROTOCOL))?.unwrap_or_default();
    let alpn: AlpnList = optional(get(label::ALPN))?.unwrap_or_default();
    let proxy_protocol: ProxyProtocol = optional(get(label::PROXY_PROTOCOL))?.unwrap_or_default();
    let tls_groups: TlsGroups = optional(get(label::TLS_GROUPS))?.unwrap_or_default();
    let rollout: Option<RolloutPolicy> = optional(get(label::ROLLOUT))?;
    let settings = ModeSettings {
        hsts: hsts.is_some(),
        http3: http3.is_some(),
        backend_protocol,
        alpn: &alpn,
        proxy_protocol,
    };
    mode_rules(mode, &settings, &get)?;

    let (mtls, identity) = client_checks(prefix, container_name, labels, offered)?;
    if let Some(id) = &identity {
        check_relay_ports(prefix, labels, id, listen, redirect_listen, &backend)?;
    }

    Ok(TargetSpec {
        image: image.to_string(),
        listen,
        backend,
        mode,
        hostname_labelled: get(label::HOSTNAME).is_some(),
        hostname,
        hostname_wildcard,
        alt_names,
        acme_challenge,
        mtls,
        identity,
        redirect_listen,
        hsts,
        http3,
        backend_protocol,
        alpn,
        proxy_protocol,
        tls_groups,
        exit_when_orphaned: false,
        published_udp_port: None,
        rollout,
    })
}

/// Who may call the target: mutual TLS by `client-ca`, or service identity by
/// `allow-identities`, never both (each names the CA that verifies clients).
fn client_checks(
    prefix: &str,
    container_name: &str,
    labels: &HashMap<String, String>,
    offered: Offered,
) -> Result<(Option<Mtls>, Option<Identity>), LabelError> {
    let mtls = parse_mtls(prefix, labels, offered.certs)?;
    let identity = parse_identity(prefix, container_name, labels, offered.identity)?;
    if let (Some(id), Some(m)) = (&identity, &mtls) {
        if id.admit.is_some() {
            let key = label_name(prefix, label::CLIENT_CA);
            return Err(refused(
                &key,
                m.ca.as_str(),
                "allow-identities verifies clients against the identity CA: use one of the two",
            ));
        }
    }
    Ok((mtls, identity))
}

/// Which settings go with which mode: the sidecar's own rule ([`check_mode`]), so a label is
/// refused exactly when the flag it becomes would be. `get` reads a label by its suffix.
fn mode_rules<'a>(
    mode: Mode,
    settings: &ModeSettings<'_>,
    get: &impl Fn(&str) -> Option<(String, &'a str)>,
) -> Result<(), LabelError> {
    let Err(conflict) = check_mode(mode, settings) else {
        return Ok(());
    };
    let name = match conflict.setting {
        ModeSetting::Hsts => label::HSTS,
        ModeSetting::Http3 => label::HTTP3,
        ModeSetting::BackendProtocol => label::BACKEND_PROTOCOL,
        ModeSetting::Alpn => label::ALPN,
        ModeSetting::ProxyProtocol => label::PROXY_PROTOCOL,
    };
    // Only a given label conflicts (defaults never do); its value is in the message.
    let (key, v) = get(name).unwrap_or_default();
    let reason = format!("needs mode {}: {}", conflict.needs, conflict.why);
    Err(refused(&key, v, reason))
}

/// The `http3` label (`true` or `false`, the sidecar's `SIDECAR_HTTP3`) and the
/// `http3-advertise-port` label, which only means something with it. `get` reads a label by its
/// suffix.
fn http3<'a>(
    prefix: &str,
    get: &impl Fn(&str) -> Option<(String, &'a str)>,
) -> Result<Option<Http3>, LabelError> {
    let on = match get(label::HTTP3) {
        None => false,
        Some((key, v)) => switch(&key, v)?,
    };
    let advertise_port = match get(label::HTTP3_ADVERTISE_PORT) {
        None => None,
        Some((key, v)) if !on => {
            let needs = label_name(prefix, label::HTTP3);
            return Err(refused(&key, v, format!("needs {needs}=true")));
        }
        Some((key, v)) => Some(port_number(&key, v)?),
    };
    Ok(on.then_some(Http3 { advertise_port }))
}

/// A label that turns something on or off: `true` or `false`, nothing looser (a `yes` or `1`
/// that silently meant off would be worse than a refusal).
fn switch(key: &str, value: &str) -> Result<bool, LabelError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(refused(key, value, "expected true or false")),
    }
}

/// A port as a label gives it: decimal digits, 1 to 65535.
fn port_number(key: &str, value: &str) -> Result<NonZeroU16, LabelError> {
    let v = value.trim();
    v.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| v.parse::<NonZeroU16>().ok())
        .flatten()
        .ok_or_else(|| refused(key, value, "expected a port, 1 to 65535"))
}

/// Most names one `hostname` label may list: Let's Encrypt's limit of names per certificate.
pub(crate) const MAX_HOSTNAMES: usize = 100;

/// The `hostname` label: one or more DNS names or wildcards (`*.example.com`), comma separated,
/// each once; the first names the certificate's directory.
fn hostnames(key: &str, value: &str) -> Result<(CertName, Vec<CertName>), LabelError> {
    let List(mut names) = typed::<List<CertName>>(key, value)?;
    // DNS names compare without case: `A.example` and `a.example` are one name.
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.to_string().to_ascii_lowercase()));
    if names.len() > MAX_HOSTNAMES {
        return Err(refused(
            key,
            value,
            format!("more than {MAX_HOSTNAMES} names; one certificate carries at most that many"),
        ));
    }
    let mut names = names.into_iter();
    let first = names
        .next()
        .ok_or_else(|| refused(key, value, "expected one or more DNS names"))?;
    Ok((first, names.collect()))
}

/// With ACME on, whether the names of the `hostname` label (`key`=`value`) can be proved by
/// `challenge`: a wildcard only by dns-01 (the CA checks http-01 and tls-alpn-01 at one name
/// and a wildcard stands for all of them), and dns-01 only with a DNS provider on the spawner.
fn acme_fits(
    acme: AcmeOffer,
    challenge: ChallengeKind,
    challenge_label: Option<(String, &str)>,
    key: &str,
    value: &str,
    first: &CertName,
    others: &[CertName],
) -> Result<(), LabelError> {
    let by_label = |reason: String| match &challenge_label {
        Some((k, v)) => refused(k, v, reason),
        None => refused(key, value, reason),
    };
    if challenge == ChallengeKind::Dns01 && !acme.dns {
        return Err(by_label(
            "dns-01 needs a DNS provider on the spawner: --acme-dns-rfc2136-server with --acme-dns-tsig-key, or --acme-dns-hook".to_string(),
        ));
    }
    let wildcard = std::iter::once(first)
        .chain(others)
        .find(|n| n.is_wildcard());
    if let (Some(w), false) = (wildcard, challenge == ChallengeKind::Dns01) {
        let how = match &challenge_label {
            Some((k, _)) => format!("{k}=dns-01"),
            None => {
                format!("the acme-challenge label dns-01 (the spawner's default is {challenge})")
            }
        };
        return Err(refused(
            key,
            value,
            format!(
                "the wildcard {w} can only be proved by dns-01, not {challenge} (the CA checks those at one name): set {how}"
            ),
        ));
    }
    Ok(())
}

impl TargetSpec {
    /// Every name of the target's certificate, the first one first.
    pub(crate) fn names(&self) -> impl Iterator<Item = CertName> + '_ {
        std::iter::once(self.first_name()).chain(self.alt_names.iter().cloned())
    }

    /// The first name: the hostname, or `*.<hostname>`.
    pub(crate) fn first_name(&self) -> CertName {
        let first = CertName::from(self.hostname.clone());
        if self.hostname_wildcard {
            format!("*.{first}").parse().unwrap_or(first)
        } else {
            first
        }
    }
}

fn localhost() -> DnsName {
    DnsName::from_str("localhost").unwrap_or_else(|_| unreachable!("localhost is a DNS name"))
}

fn refused(key: &str, value: &str, reason: impl Into<String>) -> LabelError {
    LabelError {
        label: key.to_string(),
        value: value.trim().to_string(),
        reason: reason.into(),
    }
}

/// A label value parsed by its type in `shared`: the sidecar's own grammar and message.
fn typed<T: FromStr<Err = String>>(key: &str, value: &str) -> Result<T, LabelError> {
    T::from_str(value).map_err(|reason| refused(key, value, reason))
}

/// A listen address with a port chosen here: port 0 would be a random port inside the
/// container that nobody could reach.
fn fixed_port(key: &str, value: &str) -> Result<ListenAddr, LabelError> {
    let addr: ListenAddr = typed(key, value)?;
    addr.fixed_port().map(|_| addr).ok_or_else(|| {
        refused(
            key,
            value,
            "port 0 would be a random port nobody could reach",
        )
    })
}

/// Refuses, before any label is interpreted, a value no label may carry: a newline or any other
/// control character (C0, DEL, C1; NUL included) or more than [`MAX_LABEL_VALUE_BYTES`]. Every
/// label the spawner reads for a target is checked (all `<prefix>.*` ones and the byfahrer
/// opt-in), not only the known ones, so no future label can forget it. Labels are checked in
/// name order: the error is the same on every turn and in `spawner status`.
fn check_values(prefix: &str, labels: &HashMap<String, String>) -> Result<(), LabelError> {
    let ours = format!("{prefix}.");
    let mut read: Vec<(&String, &String)> = labels
        .iter()
        .filter(|(k, _)| k.starts_with(&ours) || k.as_str() == BYFAHRER_PROXY_IMAGE_LABEL)
        .collect();
    read.sort_unstable();
    for (key, value) in read {
        if let Some(reason) = value_problem(value) {
            return Err(LabelError {
                // A key is echoed too: escaped, so it cannot break a log line or the table.
                label: key.escape_debug().to_string(),
                value: shown_value(value),
                reason: reason.to_string(),
            });
        }
    }
    Ok(())
}

/// Why a label value must not be used, if it must not.
fn value_problem(value: &str) -> Option<&'static str> {
    if value.len() > MAX_LABEL_VALUE_BYTES {
        return Some("longer than 4096 bytes");
    }
    value.chars().find(|c| c.is_control()).map(|c| match c {
        '\n' | '\r' => "contains a line break",
        '\0' => "contains a NUL byte",
        _ => "contains a control character",
    })
}

/// A refused value as an error repeats it: cut to its first characters (the `Debug` format of
/// [`LabelError`] escapes what remains).
fn shown_value(value: &str) -> String {
    match value.char_indices().nth(SHOWN_VALUE_CHARS) {
        Some((cut, _)) => format!("{}... ({} bytes)", &value[..cut], value.len()),
        None => value.to_string(),
    }
}

/// `client-ca` and the labels that only make sense with it.
fn parse_mtls(
    prefix: &str,
    labels: &HashMap<String, String>,
    certs_mounted: bool,
) -> Result<Option<Mtls>, LabelError> {
    let get = |suffix: &str| {
        let key = label_name(prefix, suffix);
        labels.get(&key).map(|v| (key, v.as_str()))
    };
    let auth = get(label::CLIENT_AUTH);
    let lists = [label::ALLOW_CN, label::ALLOW_DNS_SAN, label::ALLOW_URI_SAN].map(get);
    let Some((ca_key, ca_value)) = get(label::CLIENT_CA) else {
        // Without a CA nothing verifies clients: refuse rather than silently serve without mTLS.
        if let Some((key, value)) = auth.iter().chain(lists.iter().flatten()).next() {
            return Err(refused(key, value, "only valid with the client-ca label"));
        }
        return Ok(None);
    };
    if !certs_mounted {
        return Err(refused(
            &ca_key,
            ca_value,
            "needs --certs-from on the spawner: the CA is read from /certs",
        ));
    }
    let ca: MountedPath = typed(&ca_key, ca_value)?;
    let auth = match auth {
        None => ClientAuthMode::default(),
        Some((key, v)) => typed(&key, v)?,
    };
    let [cn, dns, uri] = lists;
    fn list<T: FromStr<Err = String>>(
        entry: Option<(String, &str)>,
    ) -> Result<List<T>, LabelError> {
        entry.map_or(Ok(List::default()), |(key, v)| typed(&key, v))
    }
    Ok(Some(Mtls {
        ca,
        auth,
        allow: Identities {
            cn: list::<CommonName>(cn)?,
            dns: list::<DnsPattern>(dns)?,
            uri: list::<UriPattern>(uri)?,
        },
    }))
}

/// `identity`, `allow-identities` and `upstreams`: refused unless the spawner gives identities.
fn parse_identity(
    prefix: &str,
    container_name: &str,
    labels: &HashMap<String, String>,
    offered: bool,
) -> Result<Option<Identity>, LabelError> {
    let get = |suffix: &str| {
        let key = label_name(prefix, suffix);
        labels.get(&key).map(|v| (key, v.as_str()))
    };
    let given = [label::IDENTITY, label::ALLOW_IDENTITIES, label::UPSTREAMS].map(get);
    if !offered {
        if let Some((key, value)) = given.iter().flatten().next() {
            return Err(refused(
                key,
                value,
                "needs --identity-domain on the spawner: it issues the identities",
            ));
        }
        return Ok(None);
    }
    let [name, admit, upstreams] = given;
    let name: ServiceName = match name {
        Some((key, v)) => typed(&key, v)?,
        None => {
            let (what, default) = default_identity(container_name, labels);
            default.parse().map_err(|reason: String| {
                refused(
                    &label_name(prefix, label::IDENTITY),
                    default,
                    format!("the {what} is not a service name ({reason}): set this label"),
                )
            })?
        }
    };
    let admit = match admit {
        None => None,
        Some((key, v)) => Some(admitted(&key, v)?),
    };
    let upstreams = match upstreams {
        None => Vec::new(),
        Some((key, v)) => {
            let List(list) = typed::<List<Upstream>>(&key, v)?;
            check_unique(&list).map_err(|reason| refused(&key, v, reason))?;
            if list.is_empty() {
                return Err(refused(&key, v, "expected LOCAL=REMOTE entries"));
            }
            list
        }
    };
    Ok(Some(Identity {
        name,
        admit,
        upstreams,
    }))
}

/// `allow-identities`: `*`, or service names (each once).
fn admitted(key: &str, value: &str) -> Result<Admitted, LabelError> {
    let entries: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    match entries.as_slice() {
        [] => Err(refused(
            key,
            value,
            "expected service names, or `*` for any",
        )),
        ["*"] => Ok(Admitted::Any),
        _ if entries.contains(&"*") => Err(refused(
            key,
            value,
            "`*` admits every identity: give it alone",
        )),
        _ => {
            let mut names: Vec<ServiceName> = Vec::new();
            for e in entries {
                let n: ServiceName = typed(key, e)?;
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            Ok(Admitted::Only(names))
        }
    }
}

/// An egress relay cannot listen where the sidecar or the app already does: it would never
/// bind, and the sidecar would fail to start.
fn check_relay_ports(
    prefix: &str,
    labels: &HashMap<String, String>,
    id: &Identity,
    listen: ListenAddr,
    redirect: Option<ListenAddr>,
    backend: &BackendAddr,
) -> Result<(), LabelError> {
    let key = label_name(prefix, label::UPSTREAMS);
    let value = labels.get(&key).map(String::as_str).unwrap_or_default();
    let backend_local = match backend.host {
        shared::addr::Host::Ip(ip) if ip.is_loopback() => Some(backend.port.get()),
        _ => None,
    };
    for u in &id.upstreams {
        let port = u.local.port();
        let clash = if [Some(listen), redirect].into_iter().flatten().any(|a| {
            let a = a.socket_addr();
            a.port() == port && (a.ip().is_unspecified() || a.ip() == u.local.ip())
        }) {
            Some("the sidecar's own listener")
        } else if backend_local == Some(port) {
            Some("the app's port (the backend)")
        } else {
            None
        };
        if let Some(what) = clash {
            return Err(refused(&key, value, format!("{} is {what}", u.local)));
        }
    }
    Ok(())
}

/// The only exposed TCP port other than the sidecar's own, else the default.
fn default_backend_port(exposed: &[String], listen_port: u16) -> NonZeroU16 {
    let mut ports = exposed.iter().filter_map(|e| {
        let (port, proto) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
        (proto == "tcp")
            .then(|| port.parse::<NonZeroU16>().ok())
            .flatten()
    });
    let mut ports: Vec<NonZeroU16> = ports.by_ref().filter(|p| p.get() != listen_port).collect();
    ports.sort_unstable();
    ports.dedup();
    match ports.as_slice() {
        [only] => *only,
        _ => DEFAULT_BACKEND_PORT,
    }
}

/// Sidecar container name for a target: Docker names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, which
/// target names already satisfy.
pub(crate) fn sidecar_name(target_name: &str) -> String {
    format!("{}-tls-sidecar", target_name.trim_start_matches('/'))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)], exposed: &[&str]) -> Option<Result<TargetSpec, LabelError>> {
        let exposed: Vec<String> = exposed.iter().map(|s| s.to_string()).collect();
        parse_target(
            "tls-sidecar",
            "web",
            &labels(pairs),
            &exposed,
            Offered::certs(true),
        )
    }

    #[test]
    fn a_container_name_no_certificate_can_carry_becomes_a_valid_hostname() {
        let labels: HashMap<String, String> =
            [("tls-sidecar.proxy-image".to_string(), "img".to_string())].into();
        let long = format!("{}-web-1", "p".repeat(60));
        let s = parse_target("tls-sidecar", &long, &labels, &[], Offered::default())
            .expect("a target")
            .expect("valid");
        assert!(shared::dns::is_name(s.hostname.as_str()), "{}", s.hostname);
        assert_eq!(s.hostname.as_str().len(), 63);
        let s = parse_target("tls-sidecar", "--", &labels, &[], Offered::default())
            .expect("a target")
            .expect("valid");
        assert_eq!(s.hostname.as_str(), "localhost");
    }

    #[test]
    fn no_opt_in_label_means_not_a_target() {
        assert_eq!(parse(&[("tls-sidecar.mode", "tcp")], &[]), None);
    }

    #[test]
    fn defaults() {
        let s = parse(&[("tls-sidecar.proxy-image", "tls-sidecar/sidecar:1")], &[])
            .unwrap()
            .unwrap();
        assert_eq!(s.image, "tls-sidecar/sidecar:1");
        assert_eq!(s.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(s.backend.to_string(), "127.0.0.1:8080");
        assert_eq!(s.mode, Mode::Http);
        assert_eq!(s.hostname.as_str(), "web");
    }

    #[test]
    fn byfahrer_alias_opts_in() {
        let s = parse(&[("org.qnib.byfahrer.proxy-image", "img")], &[])
            .unwrap()
            .unwrap();
        assert_eq!(s.image, "img");
    }

    #[test]
    fn defaults_by_opt_in_label() {
        let exposed = |e: &[&str]| e.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(default_listen(OptIn::Prefix).to_string(), "0.0.0.0:8443");
        assert_eq!(default_listen(OptIn::Byfahrer).to_string(), "0.0.0.0:8081");
        for ports in [
            &[][..],
            &["3000/tcp"],
            &["80/tcp"],
            &["8081/tcp", "9090/tcp"],
        ] {
            assert_eq!(
                default_backend(OptIn::Byfahrer, &exposed(ports), 8081).to_string(),
                "127.0.0.1:8080",
                "gosslterm's backend whatever the image exposes: {ports:?}"
            );
        }
        assert_eq!(
            default_backend(OptIn::Prefix, &exposed(&["3000/tcp"]), 8443).to_string(),
            "127.0.0.1:3000"
        );
        assert_eq!(
            default_backend(OptIn::Prefix, &[], 8443).to_string(),
            "127.0.0.1:8080"
        );
    }

    #[test]
    fn byfahrer_alone_gets_gosslterms_image_addresses() {
        // byfahrer's README: `-p 8081:8081 --label org.qnib.byfahrer.proxy-image=...` on an app
        // serving 8080 (docker adds the published 8081 to the exposed ports).
        let byfahrer = [("org.qnib.byfahrer.proxy-image", "tls-sidecar/sidecar:1")];
        let s = parse(&byfahrer, &["8080/tcp", "8081/tcp"])
            .unwrap()
            .unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:8081");
        assert_eq!(s.backend.to_string(), "127.0.0.1:8080");
        let s = parse(&byfahrer, &["8081/tcp"]).unwrap().unwrap();
        assert_eq!(
            (s.listen.to_string(), s.backend.to_string()),
            ("0.0.0.0:8081".to_string(), "127.0.0.1:8080".to_string())
        );
    }

    #[test]
    fn byfahrer_defaults_give_way_to_the_prefixs_labels() {
        let s = parse(
            &[
                ("org.qnib.byfahrer.proxy-image", "img"),
                ("tls-sidecar.listen", "9443"),
            ],
            &["3000/tcp"],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:9443");
        assert_eq!(s.backend.to_string(), "127.0.0.1:8080", "still gosslterm's");
        let s = parse(
            &[
                ("org.qnib.byfahrer.proxy-image", "img"),
                ("tls-sidecar.backend", "3000"),
            ],
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (s.listen.to_string(), s.backend.to_string()),
            ("0.0.0.0:8081".to_string(), "127.0.0.1:3000".to_string())
        );
        // With the prefix's own opt-in beside it, the target is ours: our defaults.
        let s = parse(
            &[
                ("org.qnib.byfahrer.proxy-image", "img"),
                ("tls-sidecar.proxy-image", "ours"),
            ],
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.image, "ours");
        assert_eq!(s.listen.to_string(), "0.0.0.0:8443");
        // A label prefix of another spawner names nothing here.
        let s = parse_target(
            "other",
            "web",
            &labels(&[
                ("org.qnib.byfahrer.proxy-image", "img"),
                ("tls-sidecar.listen", "9443"),
            ]),
            &[],
            Offered::default(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:8081");
    }

    #[test]
    fn backend_defaults_to_the_only_exposed_tcp_port() {
        let opt = [("tls-sidecar.proxy-image", "i")];
        let b = |e: &[&str]| parse(&opt, e).unwrap().unwrap().backend.to_string();
        assert_eq!(b(&["3000/tcp"]), "127.0.0.1:3000");
        assert_eq!(
            b(&["3000/tcp", "8443/tcp"]),
            "127.0.0.1:3000",
            "the listen port is not a backend"
        );
        assert_eq!(b(&["3000/tcp", "53/udp"]), "127.0.0.1:3000");
        assert_eq!(b(&["3000/tcp", "4000/tcp"]), "127.0.0.1:8080");
        assert_eq!(b(&[]), "127.0.0.1:8080");
    }

    #[test]
    fn hostname_lists_names_for_one_certificate_and_acme_challenge_says_how() {
        let opt = ("tls-sidecar.proxy-image", "i");
        let s = parse(
            &[
                opt,
                (
                    "tls-sidecar.hostname",
                    "a.example, B.example,A.example,,c.example",
                ),
                ("tls-sidecar.acme-challenge", "tls-alpn-01"),
            ],
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.hostname.as_str(), "a.example");
        let names: Vec<String> = s.names().map(|n| n.to_string()).collect();
        assert_eq!(names, ["a.example", "B.example", "c.example"], "each once");
        assert!(s.hostname_labelled);
        assert_eq!(s.acme_challenge, ChallengeKind::TlsAlpn01);
        let d = parse(&[opt], &[]).unwrap().unwrap();
        assert!(!d.hostname_labelled, "a name made of the container name");
        assert_eq!(d.acme_challenge, ChallengeKind::Http01);
        let refused = |pairs: &[(&str, &str)]| parse(pairs, &[]).unwrap().unwrap_err();
        let e = refused(&[opt, ("tls-sidecar.acme-challenge", "dns-02")]);
        assert_eq!(e.label, "tls-sidecar.acme-challenge");
        assert!(e.reason.contains("http-01, tls-alpn-01 or dns-01"), "{e}");
        for bad in ["", ",", "a.example,*.*.b.example", "a.example,bad name"] {
            let e = refused(&[opt, ("tls-sidecar.hostname", bad)]);
            assert_eq!(e.label, "tls-sidecar.hostname", "{bad:?}");
        }
        let many: Vec<String> = (0..=MAX_HOSTNAMES)
            .map(|i| format!("n{i}.example"))
            .collect();
        let many = many.join(",");
        let e = refused(&[opt, ("tls-sidecar.hostname", &many)]);
        assert!(e.reason.contains("more than 100 names"), "{e}");
    }

    /// Parses on top of the opt-in label with ACME on: `default` challenge, a DNS provider or not.
    fn with_acme(
        pairs: &[(&str, &str)],
        default: ChallengeKind,
        dns: bool,
    ) -> Result<TargetSpec, LabelError> {
        let mut l = vec![("tls-sidecar.proxy-image", "i")];
        l.extend_from_slice(pairs);
        let offered = Offered {
            certs: true,
            identity: false,
            acme: Some(AcmeOffer {
                default_challenge: default,
                dns,
            }),
        };
        parse_target("tls-sidecar", "web", &labels(&l), &[], offered).unwrap()
    }

    #[test]
    fn wildcards_are_proved_by_dns_01_alone_and_name_their_directory_without_the_star() {
        use ChallengeKind::{Dns01, Http01, TlsAlpn01};
        let both = ("tls-sidecar.hostname", "*.example.test,example.test");
        let dns = ("tls-sidecar.acme-challenge", "dns-01");
        let s = with_acme(&[both, dns], Http01, true).expect("dns-01 proves a wildcard");
        assert_eq!(
            s.hostname.as_str(),
            "example.test",
            "certbot's lineage name"
        );
        assert!(s.hostname_wildcard);
        let names: Vec<String> = s.names().map(|n| n.to_string()).collect();
        assert_eq!(names, ["*.example.test", "example.test"]);
        assert_eq!(s.acme_challenge, Dns01);
        let s = with_acme(&[both], Dns01, true).expect("dns-01 by default");
        assert_eq!(s.acme_challenge, Dns01);

        for (challenge, default) in [("http-01", Dns01), ("tls-alpn-01", Dns01)] {
            let e = with_acme(
                &[both, ("tls-sidecar.acme-challenge", challenge)],
                default,
                true,
            )
            .expect_err("another challenge cannot prove a wildcard");
            assert_eq!(e.label, "tls-sidecar.hostname");
            assert!(
                e.reason
                    .contains("the wildcard *.example.test can only be proved by dns-01")
                    && e.reason.contains("set tls-sidecar.acme-challenge=dns-01"),
                "{e}"
            );
        }
        let e = with_acme(
            &[("tls-sidecar.hostname", "a.test,*.b.test")],
            TlsAlpn01,
            true,
        )
        .expect_err("the spawner's default");
        assert!(
            e.reason.contains("not tls-alpn-01") && e.reason.contains("default is tls-alpn-01"),
            "{e}"
        );

        let e = with_acme(&[both, dns], Http01, false).expect_err("no DNS provider");
        assert_eq!(e.label, "tls-sidecar.acme-challenge");
        assert!(
            e.reason
                .contains("dns-01 needs a DNS provider on the spawner"),
            "{e}"
        );

        // Without ACME a wildcard names a certificate of files or a self-signed one.
        let s = parse(&[("tls-sidecar.proxy-image", "i"), both], &[])
            .unwrap()
            .expect("no ACME: accepted");
        assert_eq!(s.hostname.as_str(), "example.test");
        assert_eq!(s.first_name().to_string(), "*.example.test");
        // Without a hostname label nothing is ordered: the challenge is not checked.
        assert!(with_acme(&[dns], Http01, false).is_ok());
    }

    #[test]
    fn explicit_labels() {
        let s = parse(
            &[
                ("tls-sidecar.proxy-image", "i"),
                ("tls-sidecar.listen", "9443"),
                ("tls-sidecar.backend", "db:5432"),
                ("tls-sidecar.mode", "tcp"),
                ("tls-sidecar.hostname", "db.example.com"),
            ],
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.listen.to_string(), "0.0.0.0:9443");
        assert_eq!(s.backend.to_string(), "db:5432");
        assert_eq!(s.mode, Mode::Tcp);
        assert_eq!(s.hostname.as_str(), "db.example.com");
        let s = parse(
            &[
                ("tls-sidecar.proxy-image", "i"),
                ("tls-sidecar.listen", "127.0.0.1:9000"),
            ],
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9000");
        // The sidecar's forms are the label's too: `:PORT` and bare ports alike.
        let s = accepted(&[
            ("tls-sidecar.listen", ":9443"),
            ("tls-sidecar.backend", "3000"),
        ]);
        assert_eq!(s.listen.to_string(), "0.0.0.0:9443");
        assert_eq!(s.backend.to_string(), "127.0.0.1:3000");
    }

    #[test]
    fn invalid_values_name_label_and_value() {
        let cases = [
            ("tls-sidecar.listen", "70000"),
            ("tls-sidecar.listen", "0"),
            ("tls-sidecar.backend", "no port"),
            ("tls-sidecar.backend", "host:0"),
            ("tls-sidecar.backend", "-host:80"),
            ("tls-sidecar.hostname", "a.*.example.com"),
            ("tls-sidecar.mode", "udp"),
            ("tls-sidecar.hostname", "bad name!"),
            ("tls-sidecar.proxy-image", " "),
        ];
        for (k, v) in cases {
            let mut l = vec![("tls-sidecar.proxy-image", "i")];
            l.push((k, v));
            let e = parse(&l, &[]).unwrap().unwrap_err();
            assert_eq!(e.label, k);
            assert_eq!(e.value, v.trim());
            let msg = e.to_string();
            assert!(msg.contains(k), "{msg}");
        }
    }

    /// Parses `pairs` on top of the opt-in label and expects an error naming `label`.
    fn refused(pairs: &[(&str, &str)], certs_mounted: bool, label: &str, reason: &str) {
        let mut l = vec![("tls-sidecar.proxy-image", "i")];
        l.extend_from_slice(pairs);
        let e = parse_target(
            "tls-sidecar",
            "web",
            &labels(&l),
            &[],
            Offered::certs(certs_mounted),
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(e.label, label, "{pairs:?}: {e}");
        assert!(e.to_string().contains(reason), "{pairs:?}: {e}");
    }

    fn accepted(pairs: &[(&str, &str)]) -> TargetSpec {
        let mut l = vec![("tls-sidecar.proxy-image", "i")];
        l.extend_from_slice(pairs);
        parse(&l, &[]).unwrap().unwrap()
    }

    /// Parses on top of the opt-in label with identities offered, as container `name`.
    fn with_identity(name: &str, pairs: &[(&str, &str)]) -> Result<TargetSpec, LabelError> {
        let mut l = vec![("tls-sidecar.proxy-image", "i")];
        l.extend_from_slice(pairs);
        let offered = Offered {
            certs: true,
            identity: true,
            acme: None,
        };
        parse_target("tls-sidecar", name, &labels(&l), &[], offered).unwrap()
    }

    #[test]
    fn identity_defaults_to_the_compose_service_then_the_container_name() {
        let id = |name: &str, pairs: &[(&str, &str)]| {
            with_identity(name, pairs)
                .unwrap()
                .identity
                .unwrap()
                .name
                .to_string()
        };
        assert_eq!(id("/Web", &[]), "web");
        assert_eq!(
            id("proj_api_1", &[("com.docker.compose.service", "api")]),
            "api"
        );
        assert_eq!(
            id(
                "proj_api_1",
                &[
                    ("com.docker.compose.service", "api"),
                    ("tls-sidecar.identity", "billing")
                ]
            ),
            "billing"
        );
        let swarm = [
            ("com.docker.swarm.service.name", "shop_api"),
            ("com.docker.stack.namespace", "shop"),
        ];
        assert_eq!(id("shop_api.1.x7k2m9", &swarm), "api", "a stack's service");
        assert_eq!(
            id("pay.2.q1w2e3", &[("com.docker.swarm.service.name", "pay")]),
            "pay",
            "a service outside a stack"
        );
        let s = with_identity("web", &[]).unwrap().identity.unwrap();
        assert_eq!((s.admit, s.upstreams), (None, Vec::new()));
        // A legal container name that is not a service name: refused with the way out.
        let e = with_identity("web.1", &[]).unwrap_err();
        assert_eq!(e.label, "tls-sidecar.identity");
        assert!(
            e.reason.contains("container name") && e.reason.contains("set this label"),
            "{e}"
        );
        let e = with_identity("web", &[("tls-sidecar.identity", "a b")]).unwrap_err();
        assert!(e.reason.contains("service name"), "{e}");
    }

    #[test]
    fn identity_labels_need_the_identity_ca() {
        for l in ["identity", "allow-identities", "upstreams"] {
            let key = format!("tls-sidecar.{l}");
            refused(
                &[(key.as_str(), "a")],
                true,
                &key,
                "needs --identity-domain",
            );
        }
        assert_eq!(accepted(&[]).identity, None);
    }

    #[test]
    fn allow_identities_admits_names_or_anyone() {
        let admit = |v: &str| with_identity("b", &[("tls-sidecar.allow-identities", v)]);
        let names = |v: &str| match admit(v).unwrap().identity.unwrap().admit {
            Some(Admitted::Only(n)) => n.iter().map(ToString::to_string).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(names("a, c,A"), ["a", "c"]);
        assert_eq!(
            admit("*").unwrap().identity.unwrap().admit,
            Some(Admitted::Any)
        );
        for bad in ["", " , ", "a,*", "a b", "web.1"] {
            let e = admit(bad).unwrap_err();
            assert_eq!(e.label, "tls-sidecar.allow-identities", "{bad:?}");
        }
        let e = with_identity(
            "b",
            &[
                ("tls-sidecar.allow-identities", "a"),
                ("tls-sidecar.client-ca", "ca.pem"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.label, "tls-sidecar.client-ca");
        assert!(e.reason.contains("identity CA"), "{e}");
    }

    #[test]
    fn upstreams_are_loopback_relays_on_free_ports() {
        let up = |v: &str| with_identity("a", &[("tls-sidecar.upstreams", v)]);
        let list = up("9001=b:8443,127.0.0.1:9002=pay@10.0.0.5:8443")
            .unwrap()
            .identity
            .unwrap()
            .upstreams;
        let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["127.0.0.1:9001=b:8443", "127.0.0.1:9002=pay@10.0.0.5:8443"]
        );
        for (bad, why) in [
            ("0.0.0.0:9001=b:8443", "loopback"),
            ("9001=b:8443,9001=c:8443", "two upstreams"),
            ("8443=b:8443", "sidecar's own listener"),
            ("8080=b:8443", "app's port"),
            ("9001=10.0.0.5:8443", "NAME@"),
            (",", "LOCAL=REMOTE"),
        ] {
            let e = up(bad).unwrap_err();
            assert_eq!(e.label, "tls-sidecar.upstreams", "{bad:?}");
            assert!(e.reason.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn new_labels_default_to_off() {
        let s = accepted(&[]);
        assert_eq!((s.mtls, s.redirect_listen, s.hsts), (None, None, None));
        assert_eq!((s.http3, s.published_udp_port), (None, None));
    }

    #[test]
    fn client_ca_is_a_file_under_certs() {
        let ca = |v: &str| accepted(&[("tls-sidecar.client-ca", v)]).mtls.unwrap();
        let m = ca("ca/clients.pem");
        assert_eq!(m.ca.as_str(), "/certs/ca/clients.pem");
        assert_eq!(m.auth, ClientAuthMode::Required, "the sidecar's default");
        assert!(m.allow.is_empty());
        assert_eq!(ca("/certs/ca.pem").ca.as_str(), "/certs/ca.pem");
        assert_eq!(ca(" ./ca//x.pem ").ca.as_str(), "/certs/ca/x.pem");
        for bad in [
            "",
            " ",
            "/etc/ssl/ca.pem",
            "/certs",
            "/certs/",
            "/certsx/ca.pem",
            "../ca.pem",
            "/certs/../etc/shadow",
            "ca/../../x",
        ] {
            refused(
                &[("tls-sidecar.client-ca", bad)],
                true,
                "tls-sidecar.client-ca",
                "under /certs",
            );
        }
    }

    #[test]
    fn client_ca_needs_certs_from() {
        refused(
            &[("tls-sidecar.client-ca", "ca.pem")],
            false,
            "tls-sidecar.client-ca",
            "--certs-from",
        );
    }

    #[test]
    fn client_auth_mode() {
        let auth = |v: &str| {
            accepted(&[
                ("tls-sidecar.client-ca", "ca.pem"),
                ("tls-sidecar.client-auth", v),
            ])
            .mtls
            .unwrap()
            .auth
        };
        assert_eq!(auth("required"), ClientAuthMode::Required);
        assert_eq!(auth(" optional "), ClientAuthMode::Optional);
        refused(
            &[
                ("tls-sidecar.client-ca", "ca.pem"),
                ("tls-sidecar.client-auth", "maybe"),
            ],
            true,
            "tls-sidecar.client-auth",
            "required or optional",
        );
        refused(
            &[("tls-sidecar.client-auth", "optional")],
            true,
            "tls-sidecar.client-auth",
            "only valid with the client-ca label",
        );
    }

    #[test]
    fn allow_lists() {
        let m = accepted(&[
            ("tls-sidecar.client-ca", "ca.pem"),
            ("tls-sidecar.allow-cn", "alice, Bob Smith"),
            ("tls-sidecar.allow-dns-san", "*.svc.example,api.example"),
            (
                "tls-sidecar.allow-uri-san",
                "spiffe://example.org/ns/*/sa/web,urn:x",
            ),
        ])
        .mtls
        .unwrap();
        assert_eq!(m.allow.cn.to_string(), "alice,Bob Smith");
        assert_eq!(m.allow.dns.to_string(), "*.svc.example,api.example");
        assert_eq!(
            m.allow.uri.to_string(),
            "spiffe://example.org/ns/*/sa/web,urn:x"
        );
        // Empty entries are dropped, as the sidecar drops them.
        let m = accepted(&[
            ("tls-sidecar.client-ca", "ca.pem"),
            ("tls-sidecar.allow-cn", "alice,,bob,"),
        ])
        .mtls
        .unwrap();
        assert_eq!(m.allow.cn.to_string(), "alice,bob");
        let cases = [
            ("allow-dns-san", "a*.example"),
            ("allow-dns-san", "bad name.example"),
            ("allow-dns-san", "a..example"),
            ("allow-uri-san", "no-scheme/path"),
            ("allow-uri-san", "spiffe://example.org/ns/web*"),
            ("allow-uri-san", "spiffe://example.org/a b"),
        ];
        for (suffix, value) in cases {
            let key = format!("tls-sidecar.{suffix}");
            refused(
                &[("tls-sidecar.client-ca", "ca.pem"), (&key, value)],
                true,
                &key,
                "expected",
            );
        }
        for suffix in ["allow-cn", "allow-dns-san", "allow-uri-san"] {
            let key = format!("tls-sidecar.{suffix}");
            refused(
                &[(&key, "spiffe://x/y")],
                true,
                &key,
                "only valid with the client-ca label",
            );
        }
    }

    #[test]
    fn redirect_listen() {
        let r = |v: &str| accepted(&[("tls-sidecar.redirect-listen", v)]).redirect_listen;
        let r = |v: &str| r(v).map(|a| a.to_string());
        assert_eq!(r("8081").as_deref(), Some("0.0.0.0:8081"));
        assert_eq!(r(":8081").as_deref(), Some("0.0.0.0:8081"));
        assert_eq!(r("127.0.0.1:80").as_deref(), Some("127.0.0.1:80"));
        refused(
            &[("tls-sidecar.redirect-listen", "70000")],
            true,
            "tls-sidecar.redirect-listen",
            "port out of range",
        );
        for bad in ["http", "localhost:80"] {
            refused(
                &[("tls-sidecar.redirect-listen", bad)],
                true,
                "tls-sidecar.redirect-listen",
                "expected PORT, :PORT, IP:PORT or [IPv6]:PORT",
            );
        }
        refused(
            &[("tls-sidecar.redirect-listen", "0")],
            true,
            "tls-sidecar.redirect-listen",
            "port 0",
        );
        refused(
            &[("tls-sidecar.redirect-listen", "8443")],
            true,
            "tls-sidecar.redirect-listen",
            "must differ from the TLS listen port",
        );
        refused(
            &[
                ("tls-sidecar.listen", "9443"),
                ("tls-sidecar.redirect-listen", "127.0.0.1:9443"),
            ],
            true,
            "tls-sidecar.redirect-listen",
            "must differ",
        );
    }

    #[test]
    fn hsts() {
        let h = |v: &str| accepted(&[("tls-sidecar.hsts", v)]).hsts;
        assert_eq!(h("1y"), Some(MaxAge(31_536_000)));
        assert_eq!(h("31536000"), Some(MaxAge(31_536_000)));
        assert_eq!(h("0"), Some(MaxAge(0)));
        for bad in ["abc", "1.5d", "-1", ""] {
            refused(
                &[("tls-sidecar.hsts", bad)],
                true,
                "tls-sidecar.hsts",
                "expected seconds",
            );
        }
        refused(
            &[("tls-sidecar.mode", "tcp"), ("tls-sidecar.hsts", "1y")],
            true,
            "tls-sidecar.hsts",
            "needs mode http",
        );
    }

    #[test]
    fn http3_is_a_switch_of_http_mode() {
        let h3 = |pairs: &[(&str, &str)]| accepted(pairs).http3;
        assert_eq!(h3(&[]), None, "off unless asked");
        assert_eq!(h3(&[("tls-sidecar.http3", "false")]), None);
        assert_eq!(h3(&[("tls-sidecar.http3", "true")]), Some(Http3::default()));
        assert_eq!(
            h3(&[
                ("tls-sidecar.http3", " true "),
                ("tls-sidecar.mode", "http")
            ]),
            Some(Http3::default())
        );
        for bad in ["yes", "1", "on", "TRUE", "True", ""] {
            refused(
                &[("tls-sidecar.http3", bad)],
                true,
                "tls-sidecar.http3",
                "expected true or false",
            );
        }
        refused(
            &[("tls-sidecar.mode", "tcp"), ("tls-sidecar.http3", "true")],
            true,
            "tls-sidecar.http3",
            "needs mode http",
        );
        // Off is what tcp mode does anyway: accepted there.
        let s = accepted(&[("tls-sidecar.mode", "tcp"), ("tls-sidecar.http3", "false")]);
        assert_eq!(s.http3, None);
    }

    #[test]
    fn http3_advertise_port_is_a_port_and_needs_http3() {
        let port = |v: &str| {
            accepted(&[
                ("tls-sidecar.http3", "true"),
                ("tls-sidecar.http3-advertise-port", v),
            ])
            .http3
            .and_then(|h| h.advertise_port)
            .map(NonZeroU16::get)
        };
        assert_eq!(port("443"), Some(443));
        assert_eq!(port(" 1 "), Some(1));
        assert_eq!(port("65535"), Some(65535));
        for bad in ["0", "65536", "-1", "+443", "443/udp", ":443", "abc", ""] {
            refused(
                &[
                    ("tls-sidecar.http3", "true"),
                    ("tls-sidecar.http3-advertise-port", bad),
                ],
                true,
                "tls-sidecar.http3-advertise-port",
                "expected a port, 1 to 65535",
            );
        }
        for without in [&[][..], &[("tls-sidecar.http3", "false")][..]] {
            let mut pairs = without.to_vec();
            pairs.push(("tls-sidecar.http3-advertise-port", "443"));
            refused(
                &pairs,
                true,
                "tls-sidecar.http3-advertise-port",
                "needs tls-sidecar.http3=true",
            );
        }
        // The label's prefix is the spawner's.
        let mut l = labels(&[
            ("acme.proxy-image", "i"),
            ("acme.http3-advertise-port", "443"),
        ]);
        l.insert("tls-sidecar.http3".into(), "true".into());
        let e = parse_target("acme", "web", &l, &[], Offered::certs(true))
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("needs acme.http3=true"), "{e}");
    }

    #[test]
    fn backend_protocol_is_an_http_mode_label() {
        assert_eq!(accepted(&[]).backend_protocol, BackendProtocol::Auto);
        let s = accepted(&[("tls-sidecar.backend-protocol", "h2c")]);
        assert_eq!(s.backend_protocol, BackendProtocol::H2c);
        let s = accepted(&[("tls-sidecar.backend-protocol", "http1")]);
        assert_eq!(s.backend_protocol, BackendProtocol::Http1);
        // The default is what tcp mode does anyway: accepted there.
        let tcp = ("tls-sidecar.mode", "tcp");
        let s = accepted(&[tcp, ("tls-sidecar.backend-protocol", "auto")]);
        assert_eq!(s.backend_protocol, BackendProtocol::Auto);
        refused(
            &[tcp, ("tls-sidecar.backend-protocol", "h2c")],
            true,
            "tls-sidecar.backend-protocol",
            "needs mode http",
        );
        refused(
            &[("tls-sidecar.backend-protocol", "grpc")],
            true,
            "tls-sidecar.backend-protocol",
            "expected auto, http1 or h2c",
        );
    }

    #[test]
    fn alpn_and_proxy_protocol_are_tcp_mode_labels() {
        let tcp = ("tls-sidecar.mode", "tcp");
        let s = accepted(&[
            tcp,
            ("tls-sidecar.alpn", "h2, http/1.1"),
            ("tls-sidecar.proxy-protocol", "v2"),
        ]);
        assert_eq!(s.alpn.to_string(), "h2,http/1.1");
        assert_eq!(s.proxy_protocol, ProxyProtocol::V2);
        let s = accepted(&[]);
        assert!(s.alpn.is_empty());
        assert_eq!(s.proxy_protocol, ProxyProtocol::Off);
        // Their defaults are what http mode does: harmless, accepted.
        let s = accepted(&[("tls-sidecar.proxy-protocol", "off")]);
        assert_eq!(s.proxy_protocol, ProxyProtocol::Off);
        for (label, value) in [
            ("tls-sidecar.alpn", "h2"),
            ("tls-sidecar.proxy-protocol", "v1"),
        ] {
            refused(&[(label, value)], true, label, "needs mode tcp");
            refused(
                &[("tls-sidecar.mode", "http"), (label, value)],
                true,
                label,
                "needs mode tcp",
            );
        }
        refused(
            &[tcp, ("tls-sidecar.alpn", "h2,h2")],
            true,
            "tls-sidecar.alpn",
            "listed twice",
        );
        refused(
            &[tcp, ("tls-sidecar.proxy-protocol", "v3")],
            true,
            "tls-sidecar.proxy-protocol",
            "expected off, v1 or v2",
        );
    }

    #[test]
    fn values_with_control_characters_are_refused_on_every_label_we_read() {
        let cases = [
            (
                "tls-sidecar.hostname",
                "web\nX-Injected=1",
                "contains a line break",
            ),
            (
                "tls-sidecar.backend",
                "127.0.0.1:80\r",
                "contains a line break",
            ),
            ("tls-sidecar.mode", "tcp\n", "contains a line break"),
            ("tls-sidecar.allow-cn", "al\0ice", "contains a NUL byte"),
            (
                "tls-sidecar.allow-cn",
                "al\u{7}ice",
                "contains a control character",
            ),
            ("tls-sidecar.client-ca", "ca\n.pem", "contains a line break"),
            (
                "tls-sidecar.listen",
                "\u{1b}[2J8443",
                "contains a control character",
            ),
            ("tls-sidecar.hsts", "1y\t", "contains a control character"),
            (
                "tls-sidecar.hostname",
                "web\u{7f}",
                "contains a control character",
            ),
            (
                "tls-sidecar.hostname",
                "web\u{85}",
                "contains a control character",
            ),
            // Labels the spawner does not (yet) interpret are refused too.
            ("tls-sidecar.future-label", "a\nb", "contains a line break"),
            ("tls-sidecar.proxy-image", "i\n", "contains a line break"),
        ];
        for (key, value, reason) in cases {
            let mut l = labels(&[("tls-sidecar.proxy-image", "i")]);
            l.insert(key.to_string(), value.to_string());
            let e = parse_target("tls-sidecar", "web", &l, &[], Offered::certs(true))
                .unwrap()
                .unwrap_err();
            assert_eq!(
                (e.label.as_str(), e.reason.as_str()),
                (key, reason),
                "{value:?}"
            );
            let shown = e.to_string();
            assert!(
                !shown.chars().any(char::is_control),
                "the error is one printable line: {shown:?}"
            );
        }
        let e = parse(&[("org.qnib.byfahrer.proxy-image", "img\n")], &[])
            .unwrap()
            .unwrap_err();
        assert_eq!(e.label, "org.qnib.byfahrer.proxy-image");
    }

    #[test]
    fn values_over_4_kib_are_refused_and_not_repeated_whole() {
        let longest = "a".repeat(MAX_LABEL_VALUE_BYTES);
        let m = accepted(&[
            ("tls-sidecar.client-ca", "ca.pem"),
            ("tls-sidecar.allow-cn", &longest),
        ])
        .mtls
        .unwrap();
        assert_eq!(m.allow.cn.to_string(), longest, "4096 bytes are allowed");
        let over = format!("{longest}b");
        let e = parse(
            &[
                ("tls-sidecar.proxy-image", "i"),
                ("tls-sidecar.allow-cn", &over),
            ],
            &[],
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(e.label, "tls-sidecar.allow-cn");
        assert_eq!(e.reason, "longer than 4096 bytes");
        assert_eq!(
            MAX_LABEL_VALUE_BYTES, 4096,
            "the reason above names the limit"
        );
        assert!(e.to_string().len() < 200, "{e}");
        assert!(e.value.ends_with("... (4097 bytes)"), "{}", e.value);
        // Multi-byte characters: 4096 bytes is the limit, not 4096 characters.
        let wide = "\u{e9}".repeat(2049);
        let e = parse(
            &[
                ("tls-sidecar.proxy-image", "i"),
                ("tls-sidecar.hostname", &wide),
            ],
            &[],
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(e.reason, "longer than 4096 bytes");
    }

    #[test]
    fn value_checks_name_the_first_bad_label_and_ignore_other_prefixes() {
        let l = labels(&[
            ("tls-sidecar.proxy-image", "i"),
            ("tls-sidecar.mode", "x\ny"),
            ("tls-sidecar.hostname", "x\ny"),
            ("com.example.note", "free\ntext"),
        ]);
        for _ in 0..10 {
            let e = parse_target("tls-sidecar", "web", &l, &[], Offered::certs(true))
                .unwrap()
                .unwrap_err();
            assert_eq!(e.label, "tls-sidecar.hostname", "in name order, every time");
        }
        let other = labels(&[
            ("tls-sidecar.proxy-image", "i"),
            ("com.example.note", "free\ntext\0"),
            ("tls-sidecarx.y", "a\nb"),
        ]);
        assert!(
            parse_target("tls-sidecar", "web", &other, &[], Offered::certs(true))
                .unwrap()
                .is_ok()
        );
        let weird_key = labels(&[
            ("tls-sidecar.proxy-image", "i"),
            ("tls-sidecar.a\nb", "c\nd"),
        ]);
        let e = parse_target("tls-sidecar", "web", &weird_key, &[], Offered::certs(true))
            .unwrap()
            .unwrap_err();
        assert_eq!(e.label, "tls-sidecar.a\\nb", "the key is escaped too");
    }

    #[test]
    fn custom_prefix_ignores_default_labels() {
        let l = labels(&[("tls-sidecar.proxy-image", "i")]);
        assert_eq!(parse_target("t1", "web", &l, &[], Offered::default()), None);
        let l = labels(&[("t1.proxy-image", "i"), ("tls-sidecar.mode", "bogus")]);
        assert!(parse_target("t1", "web", &l, &[], Offered::default())
            .unwrap()
            .is_ok());
    }

    #[test]
    fn sidecar_names() {
        assert_eq!(sidecar_name("/web"), "web-tls-sidecar");
        assert_eq!(sidecar_name("web"), "web-tls-sidecar");
    }
}
