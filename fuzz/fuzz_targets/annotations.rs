//! The annotation parsers: `attache.dev/allowed-roles` (JSON list of
//! segment-aware globs), `attache.dev/ecr-registries`,
//! `attache.dev/session-duration`, role / profile / trust anchor ARNs, and
//! the values that round-trip through a display form (key types, SPIFFE IDs).
//! The first byte picks the parser; the rest is the annotation value (for
//! allowed-roles: the value, a newline, the role).
//! Promise: no panic; parse(display(x)) == x; a glob matches only what its
//! literal segments allow.
#![no_main]

use std::collections::BTreeMap;

use attache_api::names::ANN_ALLOWED_ROLES;
use attache_aws::arn::{
    arn_region, validate_region, validate_role_arn, validate_rolesanywhere_arn,
};
use attache_broker::ecr::registry::{parse_registries, regions};
use attache_broker::inject::session_duration;
use attache_broker::policy::{check_role, glob_match};
use attache_pki::{KeyType, WorkloadIdentity};
use libfuzzer_sys::fuzz_target;

fn count(s: &str, set: &[char]) -> usize {
    s.chars().filter(|c| set.contains(c)).count()
}

fn globs(value: &str, role: &str) {
    let ns = BTreeMap::from([(ANN_ALLOWED_ROLES.to_string(), value.to_string())]);
    let allowed = check_role("team-a", &ns, role, true).is_ok();
    let Ok(patterns) = serde_json::from_str::<Vec<String>>(value) else {
        assert!(!allowed, "a malformed annotation allowed a role");
        return;
    };
    assert_eq!(allowed, patterns.iter().any(|p| glob_match(p, role)));
    for p in &patterns {
        if !p.contains('*') {
            assert_eq!(glob_match(p, role), p == role, "literal {p:?} vs {role:?}");
        }
        if glob_match(p, role) && !p.contains("**") {
            // A single `*` never matches `:` or `/`: the text has exactly
            // the pattern's separators.
            assert_eq!(
                count(p, &[':', '/']),
                count(role, &[':', '/']),
                "{p:?} vs {role:?}"
            );
        }
    }
    // The role itself, quoted as a JSON list, allows exactly it.
    if !role.contains('*') {
        let own = serde_json::to_string(&[role]).expect("JSON");
        let ns = BTreeMap::from([(ANN_ALLOWED_ROLES.to_string(), own)]);
        assert!(check_role("team-a", &ns, role, true).is_ok());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match selector % 6 {
        0 => {
            let (value, role) = text.split_once('\n').unwrap_or((text, ""));
            globs(value, role);
        }
        1 => {
            if let Ok(list) = parse_registries(text) {
                let shown: Vec<&str> = list.iter().map(|r| r.host.as_str()).collect();
                assert_eq!(parse_registries(&shown.join(",")).as_ref(), Ok(&list));
                for r in &list {
                    assert!(validate_region(&r.region).is_ok(), "{r:?}");
                    assert_eq!(r.account.len(), 12);
                }
                let rs = regions(&list);
                assert!(rs.windows(2).all(|w| w[0] < w[1]));
            }
        }
        2 => {
            if let Some(d) = session_duration(text) {
                assert!((900..=43200).contains(&d));
                assert_eq!(session_duration(&d.to_string()), Some(d));
            }
        }
        3 => {
            if validate_role_arn(text).is_ok() {
                assert!(text.starts_with("arn:"));
                assert_eq!(text.split(':').nth(2), Some("iam"));
                assert!(glob_match(text, text) || text.contains('*'));
            }
            for kind in ["profile", "trust-anchor"] {
                if validate_rolesanywhere_arn(text, kind).is_ok() {
                    let region = arn_region(text).expect("a valid ARN has a region");
                    assert!(validate_region(region).is_ok());
                }
            }
            let _ = validate_region(text);
        }
        4 => {
            if let Ok(k) = text.parse::<KeyType>() {
                assert_eq!(k.to_string().parse::<KeyType>().ok(), Some(k));
            }
        }
        _ => {
            if let Ok(id) = WorkloadIdentity::from_spiffe_uri(text) {
                assert_eq!(
                    WorkloadIdentity::from_spiffe_uri(&id.spiffe_uri()),
                    Ok(id.clone())
                );
                assert_eq!(id.to_string(), text);
            }
        }
    }
});
