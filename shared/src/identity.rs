//! Client identities a mutual-TLS sidecar admits (`--allow-cn`, `--allow-dns-san`,
//! `--allow-uri-san` and their labels), and the comma lists both binaries write them in.

use std::fmt;
use std::str::FromStr;

use crate::dns::{is_label, MAX_NAME};

/// A comma-separated list of values, as an environment variable or a label carries it. Entries
/// are trimmed and empty ones dropped; none of the value types here can contain a comma, so a
/// list always renders to text that parses back to the same list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct List<T>(pub Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<T> List<T> {
    /// The entries of several lists (a repeated flag) as one.
    pub fn concat(lists: Vec<List<T>>) -> List<T> {
        List(lists.into_iter().flat_map(|l| l.0).collect())
    }
}

impl<T: FromStr<Err = String>> FromStr for List<T> {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        text.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(T::from_str)
            .collect::<Result<Vec<T>, String>>()
            .map(List)
    }
}

impl<T: fmt::Display> fmt::Display for List<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Refuses what no listed value may contain: a comma (it separates entries) or a control
/// character (it would break a log line or an environment file).
fn list_entry(text: &str, what: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("empty {what}"));
    }
    if text.contains(',') {
        return Err(format!(
            "{what} {text:?} contains a comma, which separates entries"
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} {text:?} contains a control character"));
    }
    Ok(text.to_string())
}

/// A DNS name pattern for matching certificate names: labels that are each a [`is_label`] label
/// or `*`, which stands for exactly one whole label. Lowercased, as DNS names compare without case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DnsPattern(String);

impl DnsPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` (any case) has as many labels as the pattern and each matches.
    pub fn matches(&self, name: &str) -> bool {
        segments_match(&self.0, &name.to_ascii_lowercase(), '.')
    }
}

impl FromStr for DnsPattern {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let ok = !text.is_empty()
            && text.len() <= MAX_NAME
            && text.split('.').all(|l| l == "*" || is_label(l));
        if ok {
            Ok(DnsPattern(text.to_ascii_lowercase()))
        } else {
            Err(format!(
                "expected a DNS name where `*` may stand for a whole label, got {text:?}"
            ))
        }
    }
}

impl fmt::Display for DnsPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A certificate subject common name, matched exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommonName(String);

impl CommonName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CommonName {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        list_entry(text, "common name").map(CommonName)
    }
}

impl fmt::Display for CommonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A URI SAN pattern such as `spiffe://example.org/ns/*/sa/web`: a URI (it has a scheme, so a
/// `:`; no whitespace) whose `/`-separated segments are each literal or `*`, matching exactly one
/// non-empty segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UriPattern(String);

impl UriPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, uri: &str) -> bool {
        segments_match(&self.0, uri, '/')
    }
}

impl FromStr for UriPattern {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let text = list_entry(text, "URI")?;
        let ok = text.contains(':')
            && !text.chars().any(char::is_whitespace)
            && text.split('/').all(|seg| seg == "*" || !seg.contains('*'));
        if ok {
            Ok(UriPattern(text))
        } else {
            Err(format!(
                "expected a URI such as spiffe://example.org/ns/prod/sa/web, where `*` may stand for a whole segment, got {text:?}"
            ))
        }
    }
}

impl fmt::Display for UriPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `pattern` matches `value` when both have the same number of `sep`-separated segments and
/// each pattern segment is `*` (matching any non-empty segment) or equal to the value's.
pub fn segments_match(pattern: &str, value: &str, sep: char) -> bool {
    let mut p = pattern.split(sep);
    let mut v = value.split(sep);
    loop {
        match (p.next(), v.next()) {
            (None, None) => return true,
            (Some("*"), Some(seg)) if !seg.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Which verified client certificates are admitted. All lists empty: any certificate the client
/// CA verified; otherwise a certificate matching any entry of any list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Identities {
    pub cn: List<CommonName>,
    pub dns: List<DnsPattern>,
    pub uri: List<UriPattern>,
}

impl Identities {
    pub fn is_empty(&self) -> bool {
        self.cn.0.is_empty() && self.dns.0.is_empty() && self.uri.0.is_empty()
    }

    /// The patterns, for messages: `cn=a,dns=*.b,uri=spiffe://c/*`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        parts.extend(self.cn.0.iter().map(|c| format!("cn={c}")));
        parts.extend(self.dns.0.iter().map(|d| format!("dns={d}")));
        parts.extend(self.uri.0.iter().map(|u| format!("uri={u}")));
        parts.join(",")
    }

    /// Whether a certificate with these names is admitted.
    pub fn admits<'a>(
        &self,
        common_names: impl IntoIterator<Item = &'a str>,
        dns_names: impl IntoIterator<Item = &'a str>,
        uris: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        if self.is_empty() {
            return true;
        }
        common_names
            .into_iter()
            .any(|cn| self.cn.0.iter().any(|p| p.as_str() == cn))
            || dns_names
                .into_iter()
                .any(|d| self.dns.0.iter().any(|p| p.matches(d)))
            || uris
                .into_iter()
                .any(|u| self.uri.0.iter().any(|p| p.matches(u)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_trim_drop_empty_entries_and_render_canonically() {
        let l: List<CommonName> = " alice, ,bob ,".parse().expect("list");
        assert_eq!(l.to_string(), "alice,bob");
        assert_eq!(l.to_string().parse::<List<CommonName>>(), Ok(l));
        assert_eq!("".parse::<List<CommonName>>(), Ok(List(Vec::new())));
        assert!("a,b\u{7}".parse::<List<CommonName>>().is_err());
    }

    #[test]
    fn dns_patterns() {
        let p: DnsPattern = "*.Example.org".parse().expect("pattern");
        assert_eq!(p.to_string(), "*.example.org");
        assert!(p.matches("api.EXAMPLE.org"));
        assert!(!p.matches("example.org") && !p.matches("a.b.example.org"));
        for bad in ["", "a*.example", "**", "a..b", "a b"] {
            assert!(bad.parse::<DnsPattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn uri_patterns() {
        let p: UriPattern = "spiffe://example.org/ns/*/sa/web".parse().expect("uri");
        assert!(p.matches("spiffe://example.org/ns/prod/sa/web"));
        assert!(!p.matches("spiffe://example.org/ns//sa/web"));
        assert!(!p.matches("spiffe://example.org/ns/prod/sa/web/x"));
        for bad in [
            "no-scheme",
            "spiffe://a/b*",
            "spiffe://a b",
            "",
            "spiffe://a/,b",
        ] {
            assert!(bad.parse::<UriPattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identities_admit_any_matching_entry() {
        let ids = Identities {
            cn: "alice".parse().expect("cn"),
            dns: "*.svc.example".parse().expect("dns"),
            uri: "spiffe://x/*".parse().expect("uri"),
        };
        assert!(ids.admits(["alice"], [], []));
        assert!(ids.admits([], ["web.svc.example"], []));
        assert!(ids.admits([], [], ["spiffe://x/web"]));
        assert!(!ids.admits(["bob"], ["svc.example"], ["spiffe://y/web"]));
        assert!(Identities::default().admits([], [], []));
        assert_eq!(
            ids.describe(),
            "cn=alice,dns=*.svc.example,uri=spiffe://x/*"
        );
    }
}
