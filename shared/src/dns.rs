//! DNS names: one grammar for every name that crosses from a label or a flag into a certificate,
//! a backend address or a redirect (the `hostname` label, `--self-signed-names`, backend hosts,
//! `Host` headers), so the spawner can never accept a name the sidecar refuses.

/// Longest DNS name (RFC 1035, without the trailing dot).
pub const MAX_NAME: usize = 253;
/// Longest DNS label (RFC 1035).
pub const MAX_LABEL: usize = 63;

/// Whether `label` is a DNS label: 1 to 63 letters, digits, `-` or `_` (underscores occur in
/// service names and container names), not starting or ending with `-`.
pub fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= MAX_LABEL
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `name` is a DNS name: dot-separated [`is_label`] labels, at most 253 bytes.
pub fn is_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.split('.').all(is_label)
}

/// A valid DNS name made from a container name for its self-signed certificate, when the target
/// gives no `hostname`: Docker allows names a certificate cannot carry (a 66-character Compose v2
/// name is legal, a DNS label is at most 63). Dots separate labels; other characters outside the
/// label alphabet become `-`; each label is cut to 63 bytes and trimmed of `-`; empty labels are
/// dropped; the whole is cut to 253 bytes on a label boundary. `None` if nothing is left.
pub fn from_container_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for raw in name.trim_start_matches('/').split('.') {
        let cleaned: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(MAX_LABEL)
            .collect();
        let label = cleaned.trim_matches('-');
        if label.is_empty() {
            continue;
        }
        let extra = usize::from(!out.is_empty()) + label.len();
        if out.len() + extra > MAX_NAME {
            break;
        }
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(label);
    }
    (!out.is_empty()).then_some(out)
}

/// A DNS name as [`is_name`] defines it, kept as given (case included: it also names a
/// directory, certbot's `live/<name>/`). Parsing trims surrounding whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DnsName(String);

impl DnsName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for DnsName {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if is_name(text) {
            Ok(DnsName(text.to_string()))
        } else {
            Err(format!(
                "expected a DNS name (labels of letters, digits, `-` or `_`, at most 63 bytes each, 253 in all), got {text:?}"
            ))
        }
    }
}

impl std::fmt::Display for DnsName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name a certificate can be issued for (a subject alternative name): a DNS name, a wildcard
/// `*.<name>`, or an IP address. The `hostname` label is a [`DnsName`], not this: it also names
/// the site's certbot directory, which a wildcard cannot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SanName {
    Dns(DnsName),
    /// `*.<name>`: covers one label in front of the name.
    Wildcard(DnsName),
    Ip(std::net::IpAddr),
}

impl std::str::FromStr for SanName {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Ok(ip) = text.parse() {
            return Ok(SanName::Ip(ip));
        }
        let expected =
            || format!("expected a DNS name, `*.<DNS name>` or an IP address, got {text:?}");
        match text.strip_prefix("*.") {
            Some(rest) => rest.parse().map(SanName::Wildcard).map_err(|_| expected()),
            None => text.parse().map(SanName::Dns).map_err(|_| expected()),
        }
    }
}

impl std::fmt::Display for SanName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SanName::Dns(n) => write!(f, "{n}"),
            SanName::Wildcard(n) => write!(f, "*.{n}"),
            SanName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A name of a site's certificate, as the spawner's `hostname` label lists them: a DNS name or a
/// wildcard `*.<DNS name>` (one label in front of it). Its [`CertName::base`] names the
/// certificate's directory when it comes first (`live/<base>/`, as certbot names a wildcard's
/// lineage) and, for ACME, the name whose `_acme-challenge` record proves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertName {
    base: DnsName,
    wildcard: bool,
}

impl CertName {
    /// The name without any `*.`.
    pub fn base(&self) -> &DnsName {
        &self.base
    }

    /// `*.<base>`.
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }

    /// The name as a subject alternative name.
    pub fn san(&self) -> SanName {
        if self.wildcard {
            SanName::Wildcard(self.base.clone())
        } else {
            SanName::Dns(self.base.clone())
        }
    }
}

impl From<DnsName> for CertName {
    fn from(base: DnsName) -> Self {
        CertName {
            base,
            wildcard: false,
        }
    }
}

impl std::str::FromStr for CertName {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (rest, wildcard) = match text.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (text, false),
        };
        match rest.parse::<DnsName>() {
            // `*.` plus the name must still fit in a DNS name.
            Ok(base) if !wildcard || base.as_str().len() + 2 <= MAX_NAME => {
                Ok(CertName { base, wildcard })
            }
            _ => Err(format!(
                "expected a DNS name or a wildcard `*.<DNS name>` (labels of letters, digits, `-` or `_`, at most 63 bytes each, 253 in all), got {text:?}"
            )),
        }
    }
}

impl std::fmt::Display for CertName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(self.base.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_1035_lengths_and_hyphen_rules() {
        assert!(is_name("app.example.com"));
        assert!(is_name("my_service-1"));
        assert!(is_name(&"a".repeat(63)));
        assert!(!is_name(&"a".repeat(64)));
        assert!(!is_name(&vec!["a".repeat(63); 4].join(".")), "255 bytes");
        assert!(!is_name("-a.example"));
        assert!(!is_name("a-.example"));
        assert!(!is_name("a..b"));
        assert!(!is_name("*.example"));
        assert!(!is_name("bad name"));
        assert!(!is_name(""));
    }

    #[test]
    fn container_names_become_valid_names() {
        let long = format!("{}-web-1", "p".repeat(60));
        assert_eq!(long.len(), 66);
        let fixed = from_container_name(&long).expect("a name");
        assert!(is_name(&fixed), "{fixed}");
        assert_eq!(fixed.len(), 63);
        assert_eq!(from_container_name("web").as_deref(), Some("web"));
        assert_eq!(from_container_name("/web").as_deref(), Some("web"));
        assert_eq!(from_container_name("my.app_1").as_deref(), Some("my.app_1"));
        assert_eq!(from_container_name("-a-").as_deref(), Some("a"));
        assert_eq!(from_container_name("a..b").as_deref(), Some("a.b"));
        assert_eq!(from_container_name("...").as_deref(), None);
        let many = vec!["x".repeat(63); 5].join(".");
        let fixed = from_container_name(&many).expect("a name");
        assert!(is_name(&fixed) && fixed.len() <= MAX_NAME, "{fixed}");
    }

    #[test]
    fn every_sanitized_name_is_valid() {
        // A spread of what Docker allows ([a-zA-Z0-9][a-zA-Z0-9_.-]*) and worse.
        let alphabet: Vec<char> = "aZ9_.-/ é*".chars().collect();
        let mut seed: u64 = 0x2545_f491;
        for _ in 0..5_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 300) as usize;
            let name: String = (0..len)
                .map(|i| alphabet[((seed >> (i % 50)) as usize + i) % alphabet.len()])
                .collect();
            if let Some(fixed) = from_container_name(&name) {
                assert!(is_name(&fixed), "{name:?} -> {fixed:?}");
            }
        }
    }

    #[test]
    fn typed_names_round_trip_and_refuse_what_is_not_a_name() {
        for good in ["app.example.com", "web", "my_service-1", "Example.COM"] {
            let n: DnsName = good.parse().expect(good);
            assert_eq!(n.to_string(), good);
        }
        for bad in ["", "-a", "a..b", "*.example", "bad name", "a:b"] {
            assert!(bad.parse::<DnsName>().is_err(), "{bad:?}");
        }
        for (text, shown) in [
            ("a.example", "a.example"),
            ("*.a.example", "*.a.example"),
            (" 10.0.0.1 ", "10.0.0.1"),
            ("::1", "::1"),
        ] {
            let n: SanName = text.parse().expect(text);
            assert_eq!(n.to_string(), shown);
        }
        for bad in ["*", "*.", "a.*.example", "not a name", "*.*.example"] {
            assert!(bad.parse::<SanName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn certificate_names_are_names_or_one_leading_wildcard() {
        let n: CertName = " *.example.com ".parse().expect("wildcard");
        assert!(n.is_wildcard());
        assert_eq!(n.base().as_str(), "example.com");
        assert_eq!(n.to_string(), "*.example.com");
        assert_eq!(
            n.san(),
            SanName::Wildcard("example.com".parse().expect("a name"))
        );
        let n: CertName = "example.com".parse().expect("name");
        assert!(!n.is_wildcard());
        assert_eq!(n.to_string(), "example.com");
        assert_eq!(n, CertName::from(n.base().clone()));
        let long = format!("{}.{}", "a".repeat(61), vec!["b".repeat(63); 3].join("."));
        assert_eq!(long.len(), MAX_NAME);
        assert!(long.parse::<CertName>().is_ok());
        assert!(
            format!("*.{long}").parse::<CertName>().is_err(),
            "255 bytes with the star"
        );
        assert!(format!("*.{}", &long[2..]).parse::<CertName>().is_ok());
        for bad in [
            "*",
            "*.",
            "a.*.example",
            "*.*.example",
            "**.example",
            "*example",
            "bad name",
        ] {
            let e = bad.parse::<CertName>().expect_err(bad);
            assert!(e.contains("wildcard"), "{e}");
        }
    }
}
