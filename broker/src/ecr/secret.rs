//! The pull Secret attache writes for a ServiceAccount: its deterministic
//! name, its `.dockerconfigjson`, its annotations and labels, the hash that
//! reveals edits by others, and the ownership rule that keeps attache away
//! from Secrets it did not create.
//!
//! Name: `attache-ecr-<serviceaccount>`; when that exceeds 253 characters the
//! ServiceAccount part is cut and `-<first 10 hex digits of SHA-256(sa)>` appended.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::registry::Registry;
use super::tokens::Token;
use attache_api::names::{Label, MANAGED_BY};

/// Secret name prefix.
pub const NAME_PREFIX: &str = "attache-ecr-";
/// Secret type.
pub const SECRET_TYPE: &str = "kubernetes.io/dockerconfigjson";
/// Data key.
pub const DATA_KEY: &str = ".dockerconfigjson";
/// Label marking what the Secret is for (with `app.kubernetes.io/managed-by`).
pub const COMPONENT: Label = Label {
    key: "app.kubernetes.io/component",
    value: "ecr-pull-secret",
};
/// Label selector of every Secret this controller writes.
pub const SELECTOR: &str =
    "app.kubernetes.io/managed-by=attache,app.kubernetes.io/component=ecr-pull-secret";
/// Annotation: soonest token expiry, RFC 3339 UTC.
pub const ANN_EXPIRES_AT: &str = "attache.dev/ecr-expires-at";
/// Annotation: the registries, comma-separated.
pub const ANN_REGISTRIES: &str = attache_api::names::ANN_ECR_REGISTRIES;
/// Annotation: the role whose tokens these are.
pub const ANN_ROLE: &str = attache_api::names::ANN_ECR_ROLE_ARN;
/// Annotation: SHA-256 of the data attache wrote (hex); differs from the data
/// when someone else edited it. Only tells attache to rewrite the Secret:
/// nothing in a pull Secret is ever read back as a token (tenants can write
/// there; the tokens' state lives in [`super::state`]).
pub const ANN_DATA_HASH: &str = "attache.dev/ecr-data-hash";
/// Longest object name.
const MAX_NAME: usize = 253;

/// The Secret name for ServiceAccount `sa`.
pub fn secret_name(sa: &str) -> String {
    let name = format!("{NAME_PREFIX}{sa}");
    if name.len() <= MAX_NAME {
        return name;
    }
    let hash = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        sa.as_bytes(),
    ));
    let keep = MAX_NAME - NAME_PREFIX.len() - 11;
    // Bytes, not characters: the limit is on bytes.
    let mut cut = String::with_capacity(keep);
    for c in sa.chars() {
        if cut.len() + c.len_utf8() > keep {
            break;
        }
        cut.push(c);
    }
    let cut = cut.trim_end_matches(['-', '.']);
    format!("{NAME_PREFIX}{cut}-{}", hash.get(..10).unwrap_or(&hash))
}

fn rfc3339(t: OffsetDateTime) -> String {
    attache_aws::credentials::rfc3339(t)
}

/// The `.dockerconfigjson` for `registries` with the tokens by region.
/// Deterministic (sorted keys), so equal inputs give equal bytes.
pub fn docker_config_json(
    registries: &[Registry],
    tokens: &BTreeMap<String, Token>,
) -> Zeroizing<Vec<u8>> {
    let mut auths = serde_json::Map::new();
    for r in registries {
        let Some(t) = tokens.get(&r.region) else {
            continue;
        };
        let password: &str = t.password.as_str();
        auths.insert(
            r.host.clone(),
            serde_json::json!({
                "username": "AWS",
                "password": password,
                "auth": B64.encode(format!("AWS:{password}")),
            }),
        );
    }
    let v = serde_json::json!({ "auths": auths });
    Zeroizing::new(serde_json::to_vec(&v).unwrap_or_default())
}

/// SHA-256 (hex) of a Secret's data, keys in order.
pub fn data_hash(data: &BTreeMap<String, ByteString>) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for (k, v) in data {
        ctx.update(&(k.len() as u64).to_be_bytes());
        ctx.update(k.as_bytes());
        ctx.update(&(v.0.len() as u64).to_be_bytes());
        ctx.update(&v.0);
    }
    hex::encode(ctx.finish())
}

/// What the Secret for one ServiceAccount should be.
pub struct Desired {
    /// Secret name.
    pub name: String,
    /// Its data.
    pub data: BTreeMap<String, ByteString>,
    /// Hash of `data`.
    pub hash: String,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
}

impl std::fmt::Debug for Desired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desired")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Builds the desired state from the tokens (one per region of `registries`).
pub fn desired(
    sa: &str,
    role: &str,
    registries: &[Registry],
    tokens: &BTreeMap<String, Token>,
) -> Desired {
    let json = docker_config_json(registries, tokens);
    let data = BTreeMap::from([(DATA_KEY.to_string(), ByteString(json.to_vec()))]);
    let hash = data_hash(&data);
    let soonest = tokens.values().map(|t| t.expires_at).min();
    let mut annotations = BTreeMap::from([
        (
            ANN_REGISTRIES.to_string(),
            registries
                .iter()
                .map(|r| r.host.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        (ANN_ROLE.to_string(), role.to_string()),
        (ANN_DATA_HASH.to_string(), hash.clone()),
    ]);
    if let Some(s) = soonest {
        annotations.insert(ANN_EXPIRES_AT.to_string(), rfc3339(s));
    }
    Desired {
        name: secret_name(sa),
        data,
        hash,
        annotations,
    }
}

/// The full Secret object for `desired`, owned by the ServiceAccount.
pub fn build(
    namespace: &str,
    sa: &str,
    sa_uid: &str,
    desired: &Desired,
    resource_version: Option<String>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(desired.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([MANAGED_BY.entry(), COMPONENT.entry()])),
            annotations: Some(desired.annotations.clone()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ServiceAccount".into(),
                name: sa.to_string(),
                uid: sa_uid.to_string(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            resource_version,
            ..Default::default()
        },
        type_: Some(SECRET_TYPE.into()),
        data: Some(desired.data.clone()),
        ..Default::default()
    }
}

/// Why a Secret with attache's name is not attache's to change.
pub fn foreign_reason(secret: &Secret, sa: &str) -> Option<String> {
    if !MANAGED_BY.is_on(secret.metadata.labels.as_ref()) {
        return Some(format!(
            "it has no label {MANAGED_BY} (attache did not create it)"
        ));
    }
    let owned = secret
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "ServiceAccount" && o.name == sa);
    if !owned {
        return Some(format!("it is not owned by ServiceAccount {sa:?}"));
    }
    if secret.type_.as_deref() != Some(SECRET_TYPE) {
        return Some(format!("its type is not {SECRET_TYPE}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(p: &str) -> Token {
        Token::fixture(p)
    }

    #[test]
    fn names_are_deterministic_and_bounded() {
        assert_eq!(secret_name("app"), "attache-ecr-app");
        let long = "a".repeat(250);
        let n = secret_name(&long);
        assert!(n.len() <= 253 && n.starts_with(NAME_PREFIX), "{n}");
        assert_eq!(n, secret_name(&long));
        assert_ne!(n, secret_name(&format!("{}b", "a".repeat(249))));
        // Found by fuzzing (ecr_secret target): a name of multi-byte
        // characters was cut by characters, not bytes, and overran 253.
        // (Kubernetes names are ASCII; the bound holds for any input.)
        for c in ['é', '日', '😀'] {
            let wide: String = std::iter::repeat_n(c, 250).collect();
            let n = secret_name(&wide);
            assert!(
                n.len() <= 253 && n.starts_with(NAME_PREFIX),
                "{} bytes",
                n.len()
            );
        }
    }

    #[test]
    fn docker_config_has_auth_per_registry_and_round_trips() {
        let regs = super::super::registry::parse_registries(
            "123456789012.dkr.ecr.us-east-1.amazonaws.com,210987654321.dkr.ecr.eu-west-1.amazonaws.com",
        )
        .unwrap();
        let tokens = BTreeMap::from([
            ("us-east-1".to_string(), token("pw-east")),
            ("eu-west-1".to_string(), token("pw-west")),
        ]);
        let d = desired("app", "arn:aws:iam::123456789012:role/ecr", &regs, &tokens);
        let v: serde_json::Value = serde_json::from_slice(&d.data[DATA_KEY].0).unwrap();
        let e = &v["auths"]["123456789012.dkr.ecr.us-east-1.amazonaws.com"];
        assert_eq!(e["username"], "AWS");
        assert_eq!(e["password"], "pw-east");
        assert_eq!(
            B64.decode(e["auth"].as_str().unwrap()).unwrap(),
            b"AWS:pw-east"
        );
        assert_eq!(d.annotations[ANN_EXPIRES_AT], "2026-01-01T12:00:00Z");
        let s = build("ns", "app", "uid-1", &d, None);
        assert!(foreign_reason(&s, "app").is_none());
        assert!(foreign_reason(&s, "other").is_some());
        // Nothing a tenant could use to forge a token is read from it: no token times.
        assert!(
            !s.metadata
                .annotations
                .as_ref()
                .unwrap()
                .keys()
                .any(|k| k.contains("tokens"))
        );
        let mut unlabelled = s;
        unlabelled.metadata.labels = None;
        assert!(
            foreign_reason(&unlabelled, "app")
                .unwrap()
                .contains("managed-by")
        );
    }
}
