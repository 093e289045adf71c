//! Pure label handling: which containers opted in, what their labels ask for (validated), and
//! which sidecar images the allow-list permits. No I/O.

use std::collections::HashMap;

use shared::dns::{is_label as valid_dns_label, is_name as valid_dns_name};
use shared::schema::{label, label_name, BYFAHRER_PROXY_IMAGE_LABEL};

use crate::container::CERTS_MOUNT;

/// Default port the sidecar listens on inside the target's namespace.
pub const DEFAULT_LISTEN_PORT: u16 = 8443;
/// Default backend port when the target does not expose exactly one other TCP port: the common
/// port of plain HTTP apps.
pub const DEFAULT_BACKEND_PORT: u16 = 8080;
/// Longest label value the spawner reads, in bytes. Far above any address, name, path or
/// allow-list a target needs; a longer value is a mistake or an attack on what it feeds (the
/// sidecar's environment, the spawner's log and `spawner status`).
pub const MAX_LABEL_VALUE_BYTES: usize = 4096;
/// How much of a refused oversized value an error repeats: enough to recognise it.
const SHOWN_VALUE_CHARS: usize = 64;

/// How the sidecar proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Http,
    Tcp,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Http => "http",
            Mode::Tcp => "tcp",
        }
    }
}

/// What a target's labels ask for, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    /// Sidecar image requested by the opt-in label.
    pub image: String,
    /// `SIDECAR_LISTEN`: an address in the target's namespace.
    pub listen: String,
    /// `SIDECAR_BACKEND`.
    pub backend: String,
    pub mode: Mode,
    /// Name the certificate is for.
    pub hostname: String,
    /// Mutual TLS, from `client-ca` and the labels that need it.
    pub mtls: Option<Mtls>,
    /// `SIDECAR_REDIRECT_LISTEN`: plain-HTTP redirect listener in the target's namespace.
    pub redirect_listen: Option<String>,
    /// `SIDECAR_HSTS`: max-age in seconds.
    pub hsts: Option<u64>,
    /// `SIDECAR_EXIT_WHEN_ORPHANED`: the target has a network of its own, so its sidecar can
    /// tell from the namespace when the target is gone. Not a label: [`parse_target`] leaves it
    /// off, the observation sets it from the target's inspect data
    /// ([`crate::container::has_own_network`]).
    pub exit_when_orphaned: bool,
}

/// Mutual TLS settings a target asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mtls {
    /// `SIDECAR_CLIENT_CA`: absolute path inside the sidecar, always under `/certs`.
    pub ca: String,
    /// `SIDECAR_CLIENT_AUTH`; `None` leaves the sidecar's default (`required`).
    pub auth: Option<ClientAuth>,
    /// `SIDECAR_ALLOW_CN`, `SIDECAR_ALLOW_DNS_SAN`, `SIDECAR_ALLOW_URI_SAN`; empty: unset.
    pub allow_cn: Vec<String>,
    pub allow_dns_san: Vec<String>,
    pub allow_uri_san: Vec<String>,
}

/// Whether client certificates are required or only requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Required => "required",
            ClientAuth::Optional => "optional",
        }
    }
}

/// A label with a value the spawner cannot use; the target gets no sidecar.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label {label}={value:?}: {reason}")]
pub struct LabelError {
    pub label: String,
    pub value: String,
    pub reason: &'static str,
}

/// Reads a target's labels. `None`: the container did not opt in. `exposed` holds the target's
/// exposed ports as Docker writes them (`8080/tcp`). `certs_mounted`: the spawner mounts
/// `--certs-from` at `/certs`, so labels naming files there can be honoured.
pub fn parse_target(
    prefix: &str,
    container_name: &str,
    labels: &HashMap<String, String>,
    exposed: &[String],
    certs_mounted: bool,
) -> Option<Result<TargetSpec, LabelError>> {
    let image_label = label_name(prefix, label::PROXY_IMAGE);
    let (image_key, image) = match labels.get(&image_label) {
        Some(v) => (image_label, v),
        None => (
            BYFAHRER_PROXY_IMAGE_LABEL.to_string(),
            labels.get(BYFAHRER_PROXY_IMAGE_LABEL)?,
        ),
    };
    Some(parse_spec(
        prefix,
        container_name,
        labels,
        exposed,
        certs_mounted,
        &image_key,
        image,
    ))
}

fn parse_spec(
    prefix: &str,
    container_name: &str,
    labels: &HashMap<String, String>,
    exposed: &[String],
    certs_mounted: bool,
    image_key: &str,
    image: &str,
) -> Result<TargetSpec, LabelError> {
    check_values(prefix, labels)?;
    let err = |key: &str, value: &str, reason| LabelError {
        label: key.to_string(),
        value: value.to_string(),
        reason,
    };
    let image = image.trim();
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(image_key, image, "expected an image reference"));
    }

    let key = label_name(prefix, label::LISTEN);
    let (listen, listen_port) = match labels.get(&key) {
        None => (
            format!("0.0.0.0:{DEFAULT_LISTEN_PORT}"),
            DEFAULT_LISTEN_PORT,
        ),
        Some(v) => parse_listen(v).ok_or_else(|| err(&key, v, "expected a port or ip:port"))?,
    };

    let key = label_name(prefix, label::BACKEND);
    let backend = match labels.get(&key) {
        Some(v) => parse_backend(v).ok_or_else(|| err(&key, v, "expected host:port or a port"))?,
        None => format!("127.0.0.1:{}", default_backend_port(exposed, listen_port)),
    };

    let key = label_name(prefix, label::MODE);
    let mode = match labels.get(&key).map(|v| v.trim()) {
        None | Some("http") => Mode::Http,
        Some("tcp") => Mode::Tcp,
        Some(v) => return Err(err(&key, v, "expected http or tcp")),
    };

    let key = label_name(prefix, label::HOSTNAME);
    let hostname = match labels.get(&key) {
        Some(v) if valid_dns_name(v.trim()) => v.trim().to_string(),
        Some(v) => return Err(err(&key, v, "expected a DNS name")),
        // Docker allows names a certificate cannot carry (over 63 characters, say): a valid
        // form of it, or `localhost` when nothing of it is left.
        None => shared::dns::from_container_name(container_name)
            .unwrap_or_else(|| "localhost".to_string()),
    };

    let key = label_name(prefix, label::REDIRECT_LISTEN);
    let redirect_listen = match labels.get(&key) {
        None => None,
        Some(v) => match parse_listen(v) {
            None => return Err(err(&key, v, "expected a port or ip:port")),
            Some((_, port)) if port == listen_port => {
                return Err(err(&key, v, "must differ from the TLS listen port"))
            }
            Some((addr, _)) => Some(addr),
        },
    };

    let key = label_name(prefix, label::HSTS);
    let hsts = match labels.get(&key) {
        None => None,
        Some(v) => match shared::parse::hsts_max_age(v) {
            Err(_) => return Err(err(&key, v, "expected seconds or <n>[smhdwy] such as 1y")),
            Ok(_) if mode == Mode::Tcp => {
                return Err(err(
                    &key,
                    v,
                    "needs mode http: tcp mode sees no HTTP responses",
                ))
            }
            Ok(secs) => Some(secs),
        },
    };

    Ok(TargetSpec {
        image: image.to_string(),
        listen,
        backend,
        mode,
        hostname,
        mtls: parse_mtls(prefix, labels, certs_mounted)?,
        redirect_listen,
        hsts,
        exit_when_orphaned: false,
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
                reason,
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
    let err = |key: &str, value: &str, reason| LabelError {
        label: key.to_string(),
        value: value.trim().to_string(),
        reason,
    };
    let auth = get(label::CLIENT_AUTH);
    let lists = [label::ALLOW_CN, label::ALLOW_DNS_SAN, label::ALLOW_URI_SAN].map(get);
    let Some((ca_key, ca_value)) = get(label::CLIENT_CA) else {
        // Without a CA nothing verifies clients: refuse rather than silently serve without mTLS.
        if let Some((key, value)) = auth.iter().chain(lists.iter().flatten()).next() {
            return Err(err(key, value, "only valid with the client-ca label"));
        }
        return Ok(None);
    };
    if !certs_mounted {
        return Err(err(
            &ca_key,
            ca_value,
            "needs --certs-from on the spawner: the CA is read from /certs",
        ));
    }
    let ca = certs_path(ca_value)
        .ok_or_else(|| err(&ca_key, ca_value, "expected a file path under /certs"))?;
    let auth = match auth {
        None => None,
        Some((_, v)) if v.trim() == "required" => Some(ClientAuth::Required),
        Some((_, v)) if v.trim() == "optional" => Some(ClientAuth::Optional),
        Some((key, v)) => return Err(err(&key, v, "expected required or optional")),
    };
    let [cn, dns, uri] = lists;
    let list = |entry: Option<(String, &str)>,
                ok: fn(&str) -> bool,
                reason: &'static str|
     -> Result<Vec<String>, LabelError> {
        let Some((key, value)) = entry else {
            return Ok(Vec::new());
        };
        value
            .split(',')
            .map(str::trim)
            .map(|e| {
                let clean = !e.is_empty() && !e.chars().any(char::is_control);
                (clean && ok(e))
                    .then(|| e.to_string())
                    .ok_or_else(|| err(&key, value, reason))
            })
            .collect()
    };
    Ok(Some(Mtls {
        ca,
        auth,
        allow_cn: list(cn, |_| true, "expected a comma list of common names")?,
        allow_dns_san: list(
            dns,
            valid_dns_pattern,
            "expected a comma list of DNS names; `*` may stand for a whole label",
        )?,
        allow_uri_san: list(
            uri,
            valid_uri_pattern,
            "expected a comma list of URIs; `*` may stand for a whole path segment",
        )?,
    }))
}

/// A label path naming a file under the certificate mount: relative (`ca/clients.pem`) or
/// absolute within it (`/certs/ca/clients.pem`). `..` is refused outright rather than resolved,
/// so a label can never name a file outside what the operator chose to mount.
fn certs_path(v: &str) -> Option<String> {
    let v = v.trim();
    if v.chars().any(|c| c.is_control()) {
        return None;
    }
    let rel = match v.strip_prefix(CERTS_MOUNT) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ if v.starts_with('/') => return None,
        _ => v,
    };
    let segments: Vec<&str> = rel
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if segments.is_empty() || segments.contains(&"..") {
        return None;
    }
    Some(format!("{CERTS_MOUNT}/{}", segments.join("/")))
}

/// A DNS SAN pattern: a DNS name whose labels may each be `*` (matching one whole label).
fn valid_dns_pattern(p: &str) -> bool {
    !p.is_empty() && p.len() <= 253 && p.split('.').all(|l| l == "*" || valid_dns_label(l))
}

/// A URI SAN pattern: has a scheme separator, no whitespace, `*` only as a whole `/` segment.
fn valid_uri_pattern(p: &str) -> bool {
    p.contains(':')
        && !p.chars().any(char::is_whitespace)
        && p.split('/').all(|seg| seg == "*" || !seg.contains('*'))
}

fn parse_port(s: &str) -> Option<u16> {
    s.parse::<u16>().ok().filter(|p| *p != 0)
}

fn parse_listen(v: &str) -> Option<(String, u16)> {
    let v = v.trim();
    if let Some(p) = parse_port(v) {
        return Some((format!("0.0.0.0:{p}"), p));
    }
    let addr: std::net::SocketAddr = v.parse().ok()?;
    (addr.port() != 0).then(|| (addr.to_string(), addr.port()))
}

fn parse_backend(v: &str) -> Option<String> {
    let v = v.trim();
    if let Some(p) = parse_port(v) {
        return Some(format!("127.0.0.1:{p}"));
    }
    if let Ok(addr) = v.parse::<std::net::SocketAddr>() {
        return (addr.port() != 0).then(|| addr.to_string());
    }
    let (host, port) = v.rsplit_once(':')?;
    (valid_dns_name(host) && parse_port(port).is_some()).then(|| v.to_string())
}

/// The only exposed TCP port other than the sidecar's own, else the default.
fn default_backend_port(exposed: &[String], listen_port: u16) -> u16 {
    let mut ports = exposed.iter().filter_map(|e| {
        let (port, proto) = e.split_once('/').unwrap_or((e.as_str(), "tcp"));
        (proto == "tcp").then(|| parse_port(port)).flatten()
    });
    let mut ports: Vec<u16> = ports.by_ref().filter(|p| *p != listen_port).collect();
    ports.sort_unstable();
    ports.dedup();
    match ports.as_slice() {
        [only] => *only,
        _ => DEFAULT_BACKEND_PORT,
    }
}

/// Sidecar images a target may ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    patterns: Vec<String>,
}

impl AllowList {
    pub fn new(patterns: Vec<String>) -> Self {
        AllowList { patterns }
    }

    pub fn allows(&self, image: &str) -> bool {
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

/// Sidecar container name for a target: Docker names allow `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, which
/// target names already satisfy.
pub fn sidecar_name(target_name: &str) -> String {
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
        parse_target("tls-sidecar", "web", &labels(pairs), &exposed, true)
    }

    #[test]
    fn a_container_name_no_certificate_can_carry_becomes_a_valid_hostname() {
        let labels: HashMap<String, String> =
            [("tls-sidecar.proxy-image".to_string(), "img".to_string())].into();
        let long = format!("{}-web-1", "p".repeat(60));
        let s = parse_target("tls-sidecar", &long, &labels, &[], false)
            .expect("a target")
            .expect("valid");
        assert!(valid_dns_name(&s.hostname), "{}", s.hostname);
        assert_eq!(s.hostname.len(), 63);
        let s = parse_target("tls-sidecar", "--", &labels, &[], false)
            .expect("a target")
            .expect("valid");
        assert_eq!(s.hostname, "localhost");
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
        assert_eq!(s.listen, "0.0.0.0:8443");
        assert_eq!(s.backend, "127.0.0.1:8080");
        assert_eq!(s.mode, Mode::Http);
        assert_eq!(s.hostname, "web");
    }

    #[test]
    fn byfahrer_alias_opts_in() {
        let s = parse(&[("org.qnib.byfahrer.proxy-image", "img")], &[])
            .unwrap()
            .unwrap();
        assert_eq!(s.image, "img");
    }

    #[test]
    fn backend_defaults_to_the_only_exposed_tcp_port() {
        let opt = [("tls-sidecar.proxy-image", "i")];
        let b = |e: &[&str]| parse(&opt, e).unwrap().unwrap().backend;
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
        assert_eq!(s.listen, "0.0.0.0:9443");
        assert_eq!(s.backend, "db:5432");
        assert_eq!(s.mode, Mode::Tcp);
        assert_eq!(s.hostname, "db.example.com");
        let s = parse(
            &[
                ("tls-sidecar.proxy-image", "i"),
                ("tls-sidecar.listen", "127.0.0.1:9000"),
            ],
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.listen, "127.0.0.1:9000");
    }

    #[test]
    fn invalid_values_name_label_and_value() {
        let cases = [
            ("tls-sidecar.listen", "70000"),
            ("tls-sidecar.listen", "0"),
            ("tls-sidecar.backend", "no port"),
            ("tls-sidecar.backend", "host:0"),
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
        let e = parse_target("tls-sidecar", "web", &labels(&l), &[], certs_mounted)
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

    #[test]
    fn new_labels_default_to_off() {
        let s = accepted(&[]);
        assert_eq!((s.mtls, s.redirect_listen, s.hsts), (None, None, None));
    }

    #[test]
    fn client_ca_is_a_file_under_certs() {
        let ca = |v: &str| accepted(&[("tls-sidecar.client-ca", v)]).mtls.unwrap();
        let m = ca("ca/clients.pem");
        assert_eq!(m.ca, "/certs/ca/clients.pem");
        assert_eq!(m.auth, None);
        assert!(m.allow_cn.is_empty() && m.allow_dns_san.is_empty() && m.allow_uri_san.is_empty());
        assert_eq!(ca("/certs/ca.pem").ca, "/certs/ca.pem");
        assert_eq!(ca(" ./ca//x.pem ").ca, "/certs/ca/x.pem");
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
        assert_eq!(auth("required"), Some(ClientAuth::Required));
        assert_eq!(auth(" optional "), Some(ClientAuth::Optional));
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
        assert_eq!(m.allow_cn, ["alice", "Bob Smith"]);
        assert_eq!(m.allow_dns_san, ["*.svc.example", "api.example"]);
        assert_eq!(
            m.allow_uri_san,
            ["spiffe://example.org/ns/*/sa/web", "urn:x"]
        );
        let cases = [
            ("allow-cn", "alice,,bob"),
            ("allow-cn", "alice,"),
            ("allow-dns-san", "a*.example"),
            ("allow-dns-san", "bad name.example"),
            ("allow-dns-san", "a..example"),
            ("allow-dns-san", ""),
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
                "expected a comma list",
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
        assert_eq!(r("8081").as_deref(), Some("0.0.0.0:8081"));
        assert_eq!(r("127.0.0.1:80").as_deref(), Some("127.0.0.1:80"));
        for bad in ["http", "0", "70000", ":80"] {
            refused(
                &[("tls-sidecar.redirect-listen", bad)],
                true,
                "tls-sidecar.redirect-listen",
                "expected a port or ip:port",
            );
        }
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
        assert_eq!(h("1y"), Some(31_536_000));
        assert_eq!(h("31536000"), Some(31_536_000));
        assert_eq!(h("0"), Some(0));
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
            let e = parse_target("tls-sidecar", "web", &l, &[], true)
                .unwrap()
                .unwrap_err();
            assert_eq!((e.label.as_str(), e.reason), (key, reason), "{value:?}");
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
        assert_eq!(m.allow_cn.concat(), longest, "4096 bytes are allowed");
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
            let e = parse_target("tls-sidecar", "web", &l, &[], true)
                .unwrap()
                .unwrap_err();
            assert_eq!(e.label, "tls-sidecar.hostname", "in name order, every time");
        }
        let other = labels(&[
            ("tls-sidecar.proxy-image", "i"),
            ("com.example.note", "free\ntext\0"),
            ("tls-sidecarx.y", "a\nb"),
        ]);
        assert!(parse_target("tls-sidecar", "web", &other, &[], true)
            .unwrap()
            .is_ok());
        let weird_key = labels(&[
            ("tls-sidecar.proxy-image", "i"),
            ("tls-sidecar.a\nb", "c\nd"),
        ]);
        let e = parse_target("tls-sidecar", "web", &weird_key, &[], true)
            .unwrap()
            .unwrap_err();
        assert_eq!(e.label, "tls-sidecar.a\\nb", "the key is escaped too");
    }

    #[test]
    fn custom_prefix_ignores_default_labels() {
        let l = labels(&[("tls-sidecar.proxy-image", "i")]);
        assert_eq!(parse_target("t1", "web", &l, &[], false), None);
        let l = labels(&[("t1.proxy-image", "i"), ("tls-sidecar.mode", "bogus")]);
        assert!(parse_target("t1", "web", &l, &[], false).unwrap().is_ok());
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

    #[test]
    fn sidecar_names() {
        assert_eq!(sidecar_name("/web"), "web-tls-sidecar");
        assert_eq!(sidecar_name("web"), "web-tls-sidecar");
    }
}
