//! ECR state read back from the cluster: the token state document
//! (`attache-ecr-tokens`, `tokens.json`) a new leader loads, and the pull
//! Secrets in tenant namespaces (which anyone with Secret write access there
//! may have edited) with their `.dockerconfigjson`, annotations and owners.
//! Selector byte 0: the rest is a state document. 1: a pull Secret as the API
//! server returns it. Otherwise: `<registries>\n<password>...`, written the
//! way the controller writes it and read back.
//! Promise: no panic; only well-formed entries are loaded and they survive
//! encode/decode unchanged; what the controller writes reads back as written.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use attache_aws::arn::{validate_role_arn, validate_rolesanywhere_arn};
use attache_broker::ecr::registry::{parse_registries, regions};
use attache_broker::ecr::secret::{DATA_KEY, build, desired, foreign_reason, secret_name};
use attache_broker::ecr::state::{decode, encode};
use attache_broker::ecr::tokens::{Pair, Token};
use attache_broker::ecr::world::SecretInfo;
use k8s_openapi::api::core::v1::Secret;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use zeroize::Zeroizing;

type Entry = (Pair, String, i64, i64);

fn plain(tokens: &[(Pair, Token)]) -> Vec<Entry> {
    tokens
        .iter()
        .map(|(pair, t)| {
            (
                pair.clone(),
                t.password.as_str().to_string(),
                t.obtained_at.unix_timestamp(),
                t.expires_at.unix_timestamp(),
            )
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector {
        0 => {
            let loaded = decode(rest);
            for (Pair { role, profile, .. }, t) in &loaded {
                assert!(validate_role_arn(role).is_ok());
                assert!(validate_rolesanywhere_arn(profile, "profile").is_ok());
                assert!(!t.password.is_empty());
            }
            let mut first = plain(&loaded);
            let mut again = plain(&decode(&encode(&loaded)));
            first.sort();
            again.sort();
            assert_eq!(first, again, "state does not survive encode/decode");
        }
        1 => {
            let Ok(secret) = serde_json::from_slice::<Secret>(rest) else {
                return;
            };
            let sa = secret.metadata.name.clone().unwrap_or_default();
            assert!(secret_name(&sa).len() <= 253);
            let info = SecretInfo::from(&secret);
            if info.owned_by(&sa) {
                assert!(foreign_reason(&secret, &sa).is_none());
            }
        }
        _ => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let mut lines = text.split('\n');
            let Ok(registries) = parse_registries(lines.next().unwrap_or("")) else {
                return;
            };
            let t0 = attache_fuzz::now();
            let mut tokens = BTreeMap::new();
            for (region, password) in regions(&registries).into_iter().zip(lines) {
                tokens.insert(
                    region,
                    Token {
                        password: Arc::new(Zeroizing::new(password.to_string())),
                        obtained_at: t0,
                        expires_at: t0 + time::Duration::hours(12),
                    },
                );
            }
            let d = desired("app", attache_fuzz::ROLE_ARN, &registries, &tokens);
            let secret = build("team-a", "app", "uid-1", &d, None);
            assert!(foreign_reason(&secret, "app").is_none());
            // Through the API server and back, as the kubelet reads it.
            let stored: Secret =
                serde_json::from_value(serde_json::to_value(&secret).expect("serializes"))
                    .expect("reads back");
            let info = SecretInfo::from(&stored);
            assert!(info.owned_by("app"));
            let bytes = &stored.data.as_ref().expect("data")[DATA_KEY].0;
            let config: Value = serde_json::from_slice(bytes).expect("dockerconfigjson is JSON");
            for r in &registries {
                let entry = &config["auths"][&r.host];
                match tokens.get(&r.region) {
                    Some(t) => {
                        assert_eq!(entry["username"], "AWS");
                        assert_eq!(entry["password"].as_str(), Some(t.password.as_str()));
                    }
                    None => assert!(entry.is_null()),
                }
            }
        }
    }
});
