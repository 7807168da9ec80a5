//! The caller's deadline of a gRPC call, from its `grpc-timeout` header.

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

/// The header in which gRPC clients send their deadline, as a relative timeout.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// When the call's deadline passes, counted from `now`; `None` when the client set none. A
/// malformed header is ignored, as tonic's own timeout layer does.
pub fn call_deadline(metadata: &MetadataMap, now: Instant) -> Option<Instant> {
    let value = metadata.get(GRPC_TIMEOUT)?.to_str().ok()?;
    parse_timeout(value).and_then(|timeout| now.checked_add(timeout))
}

/// `grpc-timeout` is at most 8 digits and one unit: H, M, S, m (ms), u (µs) or n (ns).
fn parse_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = (value.get(..split)?, value.get(split..)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_timeout("7n"), Some(Duration::from_nanos(7)));
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in ["", "S", "5", "5s", "123456789S", "-5S", "5 S", "1.5S", "5Sé"] {
            assert_eq!(parse_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn deadline_counts_from_now() {
        let mut metadata = MetadataMap::new();
        let now = Instant::now();
        assert_eq!(call_deadline(&metadata, now), None);
        metadata.insert(GRPC_TIMEOUT, "100m".parse().expect("ascii"));
        assert_eq!(call_deadline(&metadata, now), Some(now + Duration::from_millis(100)));
    }
}
