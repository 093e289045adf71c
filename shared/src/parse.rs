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

#[cfg(test)]
mod tests {
    use super::*;

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
}
