//! Value parsers used by both command lines, so flags with the same kind of value accept the
//! same syntax and fail with the same messages.

use std::time::Duration;

/// Parses a human duration such as `10s`, `500ms` or `1m 30s`. Zero is refused: every duration
/// in this project is a timeout or a grace period, where zero would mean "fail at once".
pub fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration such as 10s, 500ms or 1m ({e})"))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_string());
    }
    Ok(d)
}

/// Parses an ACME account key's thumbprint (RFC 7638 with SHA-256, as RFC 8555 puts in a key
/// authorization `<token>.<thumbprint>`): 43 characters of unpadded base64url, the canonical
/// encoding of 32 bytes (the last character carries 4 bits, its 2 low bits zero).
pub fn acme_thumbprint(s: &str) -> Result<String, String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let expected =
        "expected the account key's SHA-256 thumbprint: 43 characters of base64url (RFC 7638)";
    let s = s.trim();
    if s.len() != 43 {
        return Err(format!("{expected}, got {} characters", s.len()));
    }
    let mut last = 0;
    for b in s.bytes() {
        match ALPHABET.iter().position(|a| *a == b) {
            Some(i) => last = i,
            None => return Err(format!("{expected}; {:?} is not base64url", b as char)),
        }
    }
    if last % 4 != 0 {
        return Err(format!(
            "{expected}; its last character is not the end of 32 bytes"
        ));
    }
    Ok(s.to_string())
}

/// Parses a pause between two steps, such as `0s` (none) or `5s`: [`duration`]'s syntax, zero
/// allowed.
pub fn pause(s: &str) -> Result<Duration, String> {
    match duration(s) {
        Err(e) if humantime::parse_duration(s.trim()).is_ok_and(|d| d.is_zero()) => {
            let _ = e;
            Ok(Duration::ZERO)
        }
        r => r,
    }
}

/// Renders a duration so that [`duration`] parses it back to the same value (`1m 30s`, `250ms`).
pub fn render_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// An HSTS max-age in seconds (`--hsts`, the `hsts` label); parsed by [`hsts_max_age`], rendered
/// as the bare number of seconds the header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaxAge(pub u64);

impl std::str::FromStr for MaxAge {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        hsts_max_age(text).map(MaxAge)
    }
}

impl std::fmt::Display for MaxAge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Parses an HSTS max-age: a bare number of seconds, or a number with one unit among `s`, `m`,
/// `h`, `d`, `w` and `y` (365 days, so `1y` is the 31536000 that HSTS preload lists ask for).
/// Zero is allowed: `max-age=0` is how a site tells browsers to forget its policy. Shared so the
/// spawner refuses exactly the `hsts` label values the sidecar would refuse.
pub fn hsts_max_age(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let expected = || format!("expected seconds or a duration such as 365d or 1y, got {text:?}");
    let number: u64 = number.parse().map_err(|_| expected())?;
    let scale: u64 = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => return Err(expected()),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| "too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_thumbprints_are_43_base64url_characters_of_32_bytes() {
        let good = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        assert_eq!(acme_thumbprint(good).as_deref(), Ok(good));
        assert_eq!(acme_thumbprint(&format!(" {good}\n")).as_deref(), Ok(good));
        for bad in [
            "",
            "short",
            &good[..42],
            &format!("{good}A"),
            "NzbLsXh8uDCcd+6MNwXF4W/7noWXFZAfHkxZsRGC9Xs",
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9X=",
            // 'B' carries bits past the 256th.
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9XB",
        ] {
            let err = acme_thumbprint(bad).expect_err(bad);
            assert!(err.contains("thumbprint"), "{err}");
        }
    }

    #[test]
    fn parses_common_forms() {
        assert_eq!(duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("1m"), Ok(Duration::from_secs(60)));
    }

    #[test]
    fn refuses_garbage_and_zero() {
        assert!(duration("ten").is_err());
        assert!(duration("10").is_err());
        assert!(duration("0s").is_err());
    }

    #[test]
    fn rendered_durations_parse_back() {
        for d in [
            Duration::from_millis(1),
            Duration::from_secs(10),
            Duration::from_millis(90_500),
            Duration::from_secs(86_400 * 400 + 7),
        ] {
            assert_eq!(
                duration(&render_duration(d)),
                Ok(d),
                "{}",
                render_duration(d)
            );
        }
        assert_eq!("1y".parse::<MaxAge>(), Ok(MaxAge(31_536_000)));
        assert_eq!(MaxAge(60).to_string(), "60");
    }

    #[test]
    fn hsts_max_age_forms() {
        assert_eq!(hsts_max_age("31536000"), Ok(31_536_000));
        assert_eq!(hsts_max_age("31536000s"), Ok(31_536_000));
        assert_eq!(hsts_max_age("90m"), Ok(5_400));
        assert_eq!(hsts_max_age("365d"), Ok(31_536_000));
        assert_eq!(hsts_max_age(" 1y "), Ok(31_536_000));
        assert_eq!(hsts_max_age("2w"), Ok(1_209_600));
        assert_eq!(hsts_max_age("0"), Ok(0));
        for bad in [
            "",
            "y",
            "1.5d",
            "-1",
            "1 year",
            "1d2h",
            "abc",
            "99999999999999999999y",
        ] {
            assert!(hsts_max_age(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
