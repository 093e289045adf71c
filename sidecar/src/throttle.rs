//! Log lines that a client can cause: at most one per interval per cause ([`Throttle`], shared
//! with the spawner, whose accept loop uses it too), and client-chosen text escaped and cut
//! ([`Escaped`]).
//!
//! An attacker who can make the sidecar write a line per connection or per request writes the
//! operator's logs (and fills their disk). Each such call site owns a [`Throttle`]: the first
//! event of an interval is logged with the number of events suppressed since the last line; the
//! metrics carry the exact totals.

pub(crate) use shared::throttle::{Throttle, LOG_INTERVAL};

/// Text a client chose (a path, a name), made safe for a log line when displayed: control
/// characters (C1 ones included, which terminals obey too), quotes, backslashes and every
/// non-ASCII byte are written as escapes, and it is cut at `max` bytes. Printable ASCII, the
/// usual case, is written as is without allocating.
pub(crate) struct Escaped<'a> {
    pub bytes: &'a [u8],
    pub max: usize,
}

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.bytes[..self.bytes.len().min(self.max)];
        let plain = |b: &u8| (0x20..=0x7e).contains(b) && *b != b'\\' && *b != b'"';
        let mut rest = shown;
        while !rest.is_empty() {
            let run = rest.iter().take_while(|b| plain(b)).count();
            if run > 0 {
                // Printable ASCII is valid UTF-8.
                f.write_str(std::str::from_utf8(&rest[..run]).unwrap_or_default())?;
                rest = &rest[run..];
                continue;
            }
            match rest[0] {
                b'\\' => f.write_str("\\\\")?,
                b'"' => f.write_str("\\\"")?,
                b => write!(f, "\\x{b:02x}")?,
            }
            rest = &rest[1..];
        }
        if self.bytes.len() > self.max {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// [`Escaped`] as a string.
pub(crate) fn escape(bytes: &[u8], max: usize) -> String {
    Escaped { bytes, max }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_printable_ascii_and_cuts_long_text() {
        assert_eq!(escape(b"app.example", 64), "app.example");
        assert_eq!(
            escape(b"a\r\nb\"\\\x1b[31m\xff", 64),
            "a\\x0d\\x0ab\\\"\\\\\\x1b[31m\\xff"
        );
        assert_eq!(escape(b"abcdef", 3), "abc...");
        assert_eq!(escape("/a\u{9b}31m".as_bytes(), 64), "/a\\xc2\\x9b31m");
    }
}
