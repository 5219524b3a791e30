//! Flag value parsers shared by every attache command line (clap
//! `value_parser`s): one spelling of each error.

use std::time::Duration;

use attache_pki::KeyType;

/// A human duration such as `30s`, `15m`, `24h` or `90d`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (examples: 30s, 15m, 24h, 90d)"))
}

/// A key type name: `ecdsa-p256`, `ecdsa-p384`, `rsa-2048`, ...
pub fn key_type(s: &str) -> Result<KeyType, String> {
    s.parse().map_err(|e: attache_pki::KeyError| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_duration_names_the_value_and_shows_examples() {
        assert_eq!(duration("90d").unwrap(), Duration::from_secs(90 * 86_400));
        let e = duration("soon").unwrap_err();
        assert!(e.contains("\"soon\"") && e.contains("15m"), "{e}");
    }

    #[test]
    fn key_types_parse_by_name() {
        assert_eq!(key_type("ecdsa-p256").unwrap(), KeyType::EcdsaP256);
        assert!(key_type("dsa").unwrap_err().contains("dsa"));
    }
}
