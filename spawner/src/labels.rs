//! Pure label handling: which containers opted in, what their labels ask for (validated), and
//! which sidecar images the allow-list permits. No I/O.

use std::collections::HashMap;

use shared::schema::{label, label_name, BYFAHRER_PROXY_IMAGE_LABEL};

/// Default port the sidecar listens on inside the target's namespace.
pub const DEFAULT_LISTEN_PORT: u16 = 8443;
/// Default backend port when the target does not expose exactly one other TCP port: the common
/// port of plain HTTP apps.
pub const DEFAULT_BACKEND_PORT: u16 = 8080;

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
/// exposed ports as Docker writes them (`8080/tcp`).
pub fn parse_target(
    prefix: &str,
    container_name: &str,
    labels: &HashMap<String, String>,
    exposed: &[String],
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
        &image_key,
        image,
    ))
}

fn parse_spec(
    prefix: &str,
    container_name: &str,
    labels: &HashMap<String, String>,
    exposed: &[String],
    image_key: &str,
    image: &str,
) -> Result<TargetSpec, LabelError> {
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
        None => container_name.to_string(),
    };

    Ok(TargetSpec {
        image: image.to_string(),
        listen,
        backend,
        mode,
        hostname,
    })
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

fn valid_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
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
        parse_target("tls-sidecar", "web", &labels(pairs), &exposed)
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

    #[test]
    fn custom_prefix_ignores_default_labels() {
        let l = labels(&[("tls-sidecar.proxy-image", "i")]);
        assert_eq!(parse_target("t1", "web", &l, &[]), None);
        let l = labels(&[("t1.proxy-image", "i"), ("tls-sidecar.mode", "bogus")]);
        assert!(parse_target("t1", "web", &l, &[]).unwrap().is_ok());
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
