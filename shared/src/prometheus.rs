//! The Prometheus text exposition format (version 0.0.4), the one writer of both binaries'
//! `/metrics`. Each binary keeps its own plain atomics (bumped on the request path, where a
//! metrics framework would cost more than a relaxed `fetch_add`) and reads them into an
//! [`Exposition`] only when scraped: a family is its `# HELP` and `# TYPE` lines, then its
//! samples, written in the order they are given, so the output is byte for byte what the
//! callers ask for. Label values and help texts are escaped here, once, whatever they hold.

use std::fmt::Write as _;

/// The `Content-Type` of an exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample's value: a count, a signed quantity (seconds until a date that may have passed), or
/// a float (a histogram's sum).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Value::Unsigned(v)
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Signed(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float(v)
    }
}

/// `(name, value)` pairs of one sample, written in this order. Names are identifiers the caller
/// chose; values may hold anything and are escaped.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// A whole exposition, written family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition with room for `bytes` of text.
    pub fn with_capacity(bytes: usize) -> Self {
        Self {
            out: String::with_capacity(bytes),
        }
    }

    /// Starts the family `name`: writes its `# HELP` (`help`, escaped) and `# TYPE` lines. Its
    /// samples follow through the returned [`Family`]; a family with none is still announced.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        let out = &mut self.out;
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        escape_help(out, help);
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(kind.as_str());
        out.push('\n');
        Family { out, name, kind }
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The samples of one family, in [`Exposition`] order.
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
    kind: Kind,
}

impl Family<'_> {
    /// One sample: `name{labels} value` (no braces when `labels` is empty).
    pub fn sample(&mut self, labels: Labels<'_>, value: impl Into<Value>) -> &mut Self {
        debug_assert_ne!(self.kind, Kind::Histogram, "histogram samples are series");
        line(self.out, self.name, "", labels, None, value.into());
        self
    }

    /// One histogram series: `_bucket` lines (cumulative, `le` after `labels`, `+Inf` last),
    /// `_sum` and `_count`. `counts` are the observations in each bucket alone, not cumulative:
    /// one per bound in `bounds` (ascending), then those above every bound.
    pub fn histogram(
        &mut self,
        labels: Labels<'_>,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) -> &mut Self {
        debug_assert_eq!(self.kind, Kind::Histogram);
        debug_assert_eq!(counts.len(), bounds.len() + 1, "a count per bucket");
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += counts.get(i).copied().unwrap_or(0);
            le.clear();
            write_value(&mut le, Value::Float(*bound));
            let le = ("le", le.as_str());
            line(
                self.out,
                self.name,
                "_bucket",
                labels,
                Some(le),
                cumulative.into(),
            );
        }
        cumulative += counts.iter().skip(bounds.len()).sum::<u64>();
        let inf = Some(("le", "+Inf"));
        line(
            self.out,
            self.name,
            "_bucket",
            labels,
            inf,
            cumulative.into(),
        );
        line(self.out, self.name, "_sum", labels, None, sum.into());
        line(
            self.out,
            self.name,
            "_count",
            labels,
            None,
            cumulative.into(),
        );
        self
    }
}

/// `{name}{suffix}{labels,extra} {value}\n`.
fn line(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: Labels<'_>,
    extra: Option<(&str, &str)>,
    value: Value,
) {
    out.push_str(name);
    out.push_str(suffix);
    let mut all = labels.iter().copied().chain(extra).peekable();
    if all.peek().is_some() {
        out.push('{');
        for (i, (label, v)) in all.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(label);
            out.push_str("=\"");
            escape_label_value(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

/// A value as the format spells it: integers in decimal, floats in their shortest form (`1`,
/// `0.25`), and the format's own `NaN`, `+Inf`, `-Inf`.
fn write_value(out: &mut String, value: Value) {
    // Writing into a String cannot fail.
    let _ = match value {
        Value::Unsigned(v) => write!(out, "{v}"),
        Value::Signed(v) => write!(out, "{v}"),
        Value::Float(v) if v.is_nan() => write!(out, "NaN"),
        Value::Float(v) if v == f64::INFINITY => write!(out, "+Inf"),
        Value::Float(v) if v == f64::NEG_INFINITY => write!(out, "-Inf"),
        Value::Float(v) => write!(out, "{v}"),
    };
}

/// A label value: `\`, `"` and line feed escaped.
fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A help text: `\` and line feed escaped (quotes are not, in HELP lines).
fn escape_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_family_is_help_type_then_its_samples_in_order() {
        let mut exp = Exposition::default();
        exp.family("app_up", Kind::Gauge, "1 while it runs.")
            .sample(&[], 1u64);
        exp.family("app_requests_total", Kind::Counter, "Requests, by code.")
            .sample(&[("code", "2xx")], 7u64)
            .sample(&[("code", "5xx"), ("kind", "timeout")], 0u64);
        exp.family("app_empty", Kind::Gauge, "No series yet.");
        exp.family("app_expiry_seconds", Kind::Gauge, "Until it expires.")
            .sample(&[("name", "a")], -30i64);
        assert_eq!(
            exp.finish(),
            "# HELP app_up 1 while it runs.\n# TYPE app_up gauge\napp_up 1\n\
             # HELP app_requests_total Requests, by code.\n# TYPE app_requests_total counter\n\
             app_requests_total{code=\"2xx\"} 7\n\
             app_requests_total{code=\"5xx\",kind=\"timeout\"} 0\n\
             # HELP app_empty No series yet.\n# TYPE app_empty gauge\n\
             # HELP app_expiry_seconds Until it expires.\n# TYPE app_expiry_seconds gauge\n\
             app_expiry_seconds{name=\"a\"} -30\n"
        );
    }

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let mut exp = Exposition::default();
        exp.family("t", Kind::Gauge, "h")
            .sample(&[("name", "a\\b\"c\nd"), ("plain", "é [::1]:80")], 1u64);
        let text = exp.finish();
        assert!(
            text.ends_with("t{name=\"a\\\\b\\\"c\\nd\",plain=\"é [::1]:80\"} 1\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 3, "the newline stays in its label");
    }

    #[test]
    fn help_escapes_backslash_and_newline_but_not_quotes() {
        let mut exp = Exposition::default();
        exp.family("t", Kind::Counter, "a \"quoted\" C:\\path\nsecond line");
        assert_eq!(
            exp.finish(),
            "# HELP t a \"quoted\" C:\\\\path\\nsecond line\n# TYPE t counter\n"
        );
    }

    #[test]
    fn a_histogram_has_cumulative_buckets_then_sum_and_count() {
        let mut exp = Exposition::default();
        exp.family("lat_seconds", Kind::Histogram, "Latency.")
            .histogram(
                &[("kind", "create")],
                &[0.01, 0.5, 1.0, 30.0],
                &[2, 0, 1, 0, 3],
                100.2,
            )
            .histogram(&[], &[1.0], &[0, 0], 0.0);
        assert_eq!(
            exp.finish(),
            "# HELP lat_seconds Latency.\n# TYPE lat_seconds histogram\n\
             lat_seconds_bucket{kind=\"create\",le=\"0.01\"} 2\n\
             lat_seconds_bucket{kind=\"create\",le=\"0.5\"} 2\n\
             lat_seconds_bucket{kind=\"create\",le=\"1\"} 3\n\
             lat_seconds_bucket{kind=\"create\",le=\"30\"} 3\n\
             lat_seconds_bucket{kind=\"create\",le=\"+Inf\"} 6\n\
             lat_seconds_sum{kind=\"create\"} 100.2\n\
             lat_seconds_count{kind=\"create\"} 6\n\
             lat_seconds_bucket{le=\"1\"} 0\n\
             lat_seconds_bucket{le=\"+Inf\"} 0\n\
             lat_seconds_sum 0\n\
             lat_seconds_count 0\n"
        );
    }

    #[test]
    fn floats_are_spelled_as_the_format_wants() {
        let mut exp = Exposition::default();
        exp.family("f", Kind::Gauge, "h")
            .sample(&[("v", "nan")], f64::NAN)
            .sample(&[("v", "inf")], f64::INFINITY)
            .sample(&[("v", "-inf")], f64::NEG_INFINITY)
            .sample(&[("v", "frac")], 0.25)
            .sample(&[("v", "max")], u64::MAX)
            .sample(&[("v", "min")], i64::MIN);
        let text = exp.finish();
        for want in [
            "f{v=\"nan\"} NaN\n",
            "f{v=\"inf\"} +Inf\n",
            "f{v=\"-inf\"} -Inf\n",
            "f{v=\"frac\"} 0.25\n",
            "f{v=\"max\"} 18446744073709551615\n",
            "f{v=\"min\"} -9223372036854775808\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
    }
}
