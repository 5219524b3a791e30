//! Where the shared tokens survive a restart or a leader hand-over: one
//! Secret in the controller's own namespace (`attache-ecr-tokens`), written
//! only by the controller. Tenants cannot write there, so nothing a tenant
//! writes (their pull Secrets included) is ever read back as a token: a
//! forged "attache" Secret in an app namespace changes nothing.
//!
//! Even so, what is loaded is checked as if it were untrusted: well-formed
//! role and profile ARNs, a region, a password, and times clamped by
//! [`super::tokens::Tokens::adopt`] (`obtainedAt <= now`, `expiresAt <= now + 12 h`).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::tokens::{Pair, Token};
use attache_api::names::{Label, MANAGED_BY};

/// Name of the state Secret in the controller's namespace.
pub const STATE_SECRET: &str = "attache-ecr-tokens";
/// Its data key.
pub const STATE_KEY: &str = "tokens.json";
/// Its component label.
pub const COMPONENT: Label = Label {
    key: "app.kubernetes.io/component",
    value: "ecr-token-cache",
};
/// Largest state read (a few hundred bytes per (role, region, profile)).
const MAX_STATE_BYTES: usize = 512 * 1024;

/// One token as stored.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    role: String,
    region: String,
    profile: String,
    password: Zeroizing<String>,
    obtained_at: String,
    expires_at: String,
}

fn rfc3339(t: OffsetDateTime) -> String {
    attache_aws::credentials::rfc3339(t)
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Serializes the tokens (sorted, so equal sets give equal bytes).
pub fn encode(tokens: &[(Pair, Token)]) -> Zeroizing<Vec<u8>> {
    let mut entries: Vec<Entry> = tokens
        .iter()
        .map(
            |(
                Pair {
                    role,
                    region,
                    profile,
                },
                t,
            )| Entry {
                role: role.clone(),
                region: region.clone(),
                profile: profile.clone(),
                password: Zeroizing::new(t.password.as_str().to_string()),
                obtained_at: rfc3339(t.obtained_at),
                expires_at: rfc3339(t.expires_at),
            },
        )
        .collect();
    entries.sort_by(|a, b| (&a.role, &a.region, &a.profile).cmp(&(&b.role, &b.region, &b.profile)));
    Zeroizing::new(serde_json::to_vec(&entries).unwrap_or_default())
}

/// The well-formed entries of a state document; anything malformed is dropped.
pub fn decode(bytes: &[u8]) -> Vec<(Pair, Token)> {
    if bytes.len() > MAX_STATE_BYTES {
        return vec![];
    }
    let Ok(entries) = serde_json::from_slice::<Vec<Entry>>(bytes) else {
        return vec![];
    };
    entries
        .into_iter()
        .filter_map(|e| {
            attache_aws::arn::validate_role_arn(&e.role).ok()?;
            attache_aws::arn::validate_rolesanywhere_arn(&e.profile, "profile").ok()?;
            let region_ok = !e.region.is_empty()
                && e.region.len() <= 32
                && e.region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !region_ok || e.password.is_empty() {
                return None;
            }
            let obtained_at = parse_time(&e.obtained_at)?;
            let expires_at = parse_time(&e.expires_at)?;
            Some((
                Pair {
                    role: e.role,
                    region: e.region,
                    profile: e.profile,
                },
                Token {
                    password: std::sync::Arc::new(e.password),
                    obtained_at,
                    expires_at,
                },
            ))
        })
        .collect()
}

/// The state Secret in the controller's namespace.
pub struct TokenStore {
    api: Api<Secret>,
    namespace: String,
    /// Writes one at a time, in order.
    write: tokio::sync::Mutex<()>,
}

impl TokenStore {
    /// The store in `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        TokenStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            write: tokio::sync::Mutex::new(()),
        }
    }

    /// The stored tokens (none if the Secret does not exist or is not attache's).
    pub async fn load(&self) -> Result<Vec<(Pair, Token)>, kube::Error> {
        let Some(s) = self.api.get_opt(STATE_SECRET).await? else {
            return Ok(vec![]);
        };
        if !is_ours(&s) {
            tracing::warn!(namespace = %self.namespace, secret = STATE_SECRET, "the ECR token state Secret is not labelled as attache's; ignored");
            return Ok(vec![]);
        }
        Ok(s.data
            .as_ref()
            .and_then(|d| d.get(STATE_KEY))
            .map(|b| decode(&b.0))
            .unwrap_or_default())
    }

    /// Replaces the stored tokens with `tokens`.
    pub async fn save(&self, tokens: &[(Pair, Token)]) -> Result<(), kube::Error> {
        let _w = self.write.lock().await;
        let data = BTreeMap::from([(STATE_KEY.to_string(), ByteString(encode(tokens).to_vec()))]);
        for _ in 0..5 {
            let current = self.api.get_opt(STATE_SECRET).await?;
            let result = match current {
                Some(cur) => {
                    if !is_ours(&cur) {
                        tracing::warn!(namespace = %self.namespace, secret = STATE_SECRET, "the ECR token state Secret is not labelled as attache's; not overwritten");
                        return Ok(());
                    }
                    if cur.data.as_ref() == Some(&data) {
                        return Ok(());
                    }
                    let obj = self.object(data.clone(), cur.metadata.resource_version.clone());
                    self.api
                        .replace(STATE_SECRET, &PostParams::default(), &obj)
                        .await
                }
                None => {
                    let obj = self.object(data.clone(), None);
                    self.api.create(&PostParams::default(), &obj).await
                }
            };
            match result {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn object(&self, data: BTreeMap<String, ByteString>, rv: Option<String>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(STATE_SECRET.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([MANAGED_BY.entry(), COMPONENT.entry()])),
                resource_version: rv,
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

fn is_ours(s: &Secret) -> bool {
    MANAGED_BY.is_on(s.metadata.labels.as_ref()) && s.type_.as_deref() == Some("Opaque")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLE: &str = "arn:aws:iam::123456789012:role/ecr";
    const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/p";

    fn token(p: &str) -> Token {
        Token::fixture(p)
    }

    #[test]
    fn round_trips_and_drops_malformed_entries() {
        let pair = Pair::new(ROLE, "us-east-1", PROFILE);
        let bytes = encode(&[(pair.clone(), token("pw"))]);
        let back = decode(&bytes);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, pair);
        assert_eq!(back[0].1.password.as_str(), "pw");
        assert_eq!(back[0].1.expires_at, token("pw").expires_at);

        let bad = serde_json::json!([
            {"role": "not-an-arn", "region": "us-east-1", "profile": PROFILE, "password": "x", "obtainedAt": "2026-01-01T00:00:00Z", "expiresAt": "2026-01-01T12:00:00Z"},
            {"role": ROLE, "region": "us-east-1/../x", "profile": PROFILE, "password": "x", "obtainedAt": "2026-01-01T00:00:00Z", "expiresAt": "2026-01-01T12:00:00Z"},
            {"role": ROLE, "region": "us-east-1", "profile": PROFILE, "password": "", "obtainedAt": "2026-01-01T00:00:00Z", "expiresAt": "2026-01-01T12:00:00Z"},
            {"role": ROLE, "region": "us-east-1", "profile": PROFILE, "password": "x", "obtainedAt": "soon", "expiresAt": "2026-01-01T12:00:00Z"},
            {"role": ROLE, "region": "us-east-1", "profile": "arn:aws:iam::1:role/x", "password": "x", "obtainedAt": "2026-01-01T00:00:00Z", "expiresAt": "2026-01-01T12:00:00Z"},
        ]);
        assert!(decode(&serde_json::to_vec(&bad).unwrap()).is_empty());
        assert!(decode(b"{}").is_empty());
    }
}
