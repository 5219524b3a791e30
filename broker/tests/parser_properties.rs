//! The broker's parsers round-trip through their display form: durations
//! (`--ca-validity`, `--leaf-validity`, ...), key types, SPIFFE IDs,
//! `attache.dev/session-duration` and `attache.dev/ecr-registries`.

use std::time::Duration;

use attache_broker::ecr::registry::parse_registries;
use attache_broker::inject::session_duration;
use attache_pki::{KeyType, WorkloadIdentity};
use attache_rt::parse::{duration as parse_duration, key_type as parse_key_type};
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"
}

fn registry() -> impl Strategy<Value = String> {
    (
        "[0-9]{12}",
        "[a-z]{2}",
        "[a-z]{1,9}",
        1..20u32,
        any::<bool>(),
    )
        .prop_map(|(account, cc, word, n, scheme)| {
            let (region, suffix) = if cc == "cn" {
                (format!("cn-{word}-{n}"), "amazonaws.com.cn")
            } else {
                (format!("{cc}-{word}-{n}"), "amazonaws.com")
            };
            let host = format!("{account}.dkr.ecr.{region}.{suffix}");
            if scheme {
                format!("https://{host}/")
            } else {
                host
            }
        })
}

proptest! {
    #[test]
    fn durations_round_trip(secs in 0u64..(200 * 365 * 24 * 3600), nanos in 0u32..1_000_000_000) {
        let d = Duration::new(secs, nanos);
        let shown = humantime::format_duration(d).to_string();
        prop_assert_eq!(parse_duration(&shown), Ok(d), "{}", shown);
    }

    #[test]
    fn key_types_round_trip(i in 0..KeyType::ALL.len(), upper in any::<bool>()) {
        let k = KeyType::ALL[i];
        let shown = if upper { k.to_string().to_uppercase() } else { k.to_string() };
        prop_assert_eq!(parse_key_type(&shown), Ok(k));
    }

    #[test]
    fn spiffe_ids_round_trip(
        td in prop::collection::vec(label(), 1..4),
        ns in label(),
        sa in prop::collection::vec(label(), 1..3),
    ) {
        let id = WorkloadIdentity::new(&td.join("."), &ns, &sa.join(".")).unwrap();
        prop_assert_eq!(WorkloadIdentity::from_spiffe_uri(&id.to_string()), Ok(id));
    }

    #[test]
    fn session_durations_round_trip(d in any::<u32>()) {
        let parsed = session_duration(&format!(" {d} "));
        prop_assert_eq!(parsed, (900..=43200).contains(&d).then_some(d));
    }

    #[test]
    fn registry_lists_round_trip(hosts in prop::collection::vec(registry(), 1..5)) {
        let list = parse_registries(&hosts.join(",")).unwrap();
        let shown: Vec<&str> = list.iter().map(|r| r.host.as_str()).collect();
        prop_assert_eq!(parse_registries(&shown.join(",")), Ok(list.clone()));
        prop_assert!(list.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    }
}
