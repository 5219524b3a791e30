//! The IAM Roles Anywhere `CreateSession` client: builds, signs and sends the
//! request, and turns AWS's reply into [`Credentials`] or a classified error.

use std::sync::Arc;
use std::time::Duration;

use attache_pki::X509Signer;
use attache_pki::signing::SERVICE_ROLESANYWHERE;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::arn::{ConfigError, validate_region, validate_role_arn, validate_rolesanywhere_arn};
use crate::credentials::Credentials;
use crate::request::{self, AwsError, CREATE_SESSION};

fn bad(reason: String) -> AwsError {
    AwsError::bad_reply(CREATE_SESSION, reason)
}
use attache_rt::clock::{Clock, SystemClock};

/// Where and what to ask Roles Anywhere for.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// AWS region of the Roles Anywhere endpoint and the credential scope.
    pub region: String,
    /// Base URL override (e.g. the emulator); default `https://rolesanywhere.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    /// Roles Anywhere profile ARN.
    pub profile_arn: String,
    /// IAM role to assume.
    pub role_arn: String,
    /// Trust anchor the certificate chains to.
    pub trust_anchor_arn: String,
    /// Requested session lifetime, 900..=43200 seconds.
    pub duration_seconds: u32,
    /// Optional role session name (the profile must accept it).
    pub role_session_name: Option<String>,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Extra PEM roots to trust for the endpoint (private CA of a proxy or emulator).
    pub extra_roots_pem: Option<String>,
}

impl SessionConfig {
    /// Checks every field, naming the first that cannot be right.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_region(&self.region)?;
        validate_rolesanywhere_arn(&self.profile_arn, "profile")?;
        validate_rolesanywhere_arn(&self.trust_anchor_arn, "trust-anchor")?;
        validate_role_arn(&self.role_arn)?;
        if !(900..=43200).contains(&self.duration_seconds) {
            return Err(ConfigError::Arn {
                what: "session duration",
                value: self.duration_seconds.to_string(),
                expected: "900..=43200 seconds",
            });
        }
        Ok(())
    }
}

/// `name` made into a valid `roleSessionName` (2-64 characters of
/// `[A-Za-z0-9_+=,.@-]`), deterministically: other characters become `-`; a
/// name longer than 64 keeps its first 55 characters and ends with `-` and 8
/// hex digits of its SHA-256, so two long pod names sharing a prefix stay
/// apart; a one-character name is padded with `_`; an empty one stays empty
/// (no custom name).
pub fn role_session_name(name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if out.len() > 64 {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
        out.truncate(55);
        out.push('-');
        out.push_str(&hex::encode(&digest.as_ref()[..4]));
    }
    while out.len() < 2 {
        out.push('_');
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CreateSessionRequest<'a> {
    duration_seconds: u32,
    profile_arn: &'a str,
    role_arn: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    role_session_name: Option<&'a str>,
    trust_anchor_arn: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateSessionReply {
    credential_set: Vec<CredentialSetEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialSetEntry {
    credentials: WireCredentials,
    role_arn: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireCredentials {
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Zeroizing<String>,
    expiration: String,
}

/// A reusable CreateSession client (one connection pool).
#[derive(Clone)]
pub struct SessionClient {
    http: reqwest::Client,
    config: SessionConfig,
    url: reqwest::Url,
    host: String,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for SessionClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionClient")
            .field("config", &self.config)
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

/// The Roles Anywhere endpoint of `region`:
/// `https://rolesanywhere.<region>.amazonaws.com`.
pub fn default_endpoint(region: &str) -> String {
    format!("https://rolesanywhere.{region}.amazonaws.com")
}

impl SessionClient {
    /// Validates `config` and builds the HTTP client. Proxies come from
    /// `HTTPS_PROXY` / `NO_PROXY` as usual.
    pub fn new(config: SessionConfig) -> Result<Self, AwsError> {
        config.validate()?;
        let base = config
            .endpoint
            .clone()
            .unwrap_or_else(|| default_endpoint(&config.region));
        let bad_endpoint = |why: String| {
            AwsError::Config(ConfigError::Arn {
                what: "Roles Anywhere endpoint",
                value: format!("{base} ({why})"),
                expected: "an http(s) URL such as https://rolesanywhere.us-east-1.amazonaws.com",
            })
        };
        let mut url = reqwest::Url::parse(&base).map_err(|e| bad_endpoint(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_endpoint("scheme must be http or https".into()));
        }
        let host_name = url
            .host_str()
            .ok_or_else(|| bad_endpoint("no host".into()))?
            .to_string();
        let host = match url.port() {
            Some(p) => format!("{host_name}:{p}"),
            None => host_name,
        };
        let path = format!("{}/sessions", url.path().trim_end_matches('/'));
        url.set_path(&path);
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("attache-sidecar/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &config.extra_roots_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| bad_endpoint(format!("extra roots: {e}")))?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| bad_endpoint(format!("HTTP client: {e}")))?;
        Ok(SessionClient {
            http,
            config,
            url,
            host,
            clock: Arc::new(SystemClock),
        })
    }

    /// Signs requests and judges replies by `clock` instead of the system
    /// clock (the scale benchmark runs many sessions on a faster clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The session settings.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Calls CreateSession signed with `signer`'s certificate and key.
    pub async fn create_session(&self, signer: &X509Signer) -> Result<Credentials, AwsError> {
        let c = &self.config;
        let body = serde_json::to_vec(&CreateSessionRequest {
            duration_seconds: c.duration_seconds,
            profile_arn: &c.profile_arn,
            role_arn: &c.role_arn,
            role_session_name: c.role_session_name.as_deref(),
            trust_anchor_arn: &c.trust_anchor_arn,
        })
        .map_err(|e| AwsError::Signing {
            operation: CREATE_SESSION,
            source: e.into(),
        })?;
        let now = self.clock.now();
        let content_type = ("Content-Type".to_string(), "application/json".to_string());
        let signed = signer
            .sign(
                "POST",
                &self.host,
                self.url.path(),
                self.url.query().unwrap_or(""),
                std::slice::from_ref(&content_type),
                &body,
                &c.region,
                SERVICE_ROLESANYWHERE,
                now,
            )
            .map_err(|e| AwsError::Signing {
                operation: CREATE_SESSION,
                source: e.into(),
            })?;
        let mut req = self
            .http
            .post(self.url.clone())
            .header(&content_type.0, &content_type.1)
            .body(body);
        for (k, v) in &signed.headers {
            if !k.eq_ignore_ascii_case("host") {
                req = req.header(k, v);
            }
        }
        let endpoint = self.url.to_string();
        let bytes = request::send(CREATE_SESSION, &c.region, &endpoint, req).await?;
        credentials_from_reply(&bytes, now, c)
    }
}

/// The longest clock difference with AWS tolerated when believing an expiry.
const MAX_CLOCK_SKEW: time::Duration = time::Duration::minutes(5);

/// The credentials of a successful CreateSession reply `bytes` to a request
/// signed at `now`. What AWS never sends is refused (an empty or non-ASCII
/// key, control characters or spaces that would break a credentials file
/// line, an expiry in the past); an expiry later than the session asked for
/// (plus clock skew) is cut to that, so a reply from a broken proxy can
/// never stop the refreshes.
fn credentials_from_reply(
    bytes: &[u8],
    now: OffsetDateTime,
    c: &SessionConfig,
) -> Result<Credentials, AwsError> {
    let reply: CreateSessionReply =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a credentialSet: {e}")))?;
    let entry = reply
        .credential_set
        .into_iter()
        .next()
        .ok_or_else(|| bad("empty credentialSet".into()))?;
    let creds = &entry.credentials;
    for (field, value) in [
        ("accessKeyId", creds.access_key_id.as_str()),
        ("secretAccessKey", creds.secret_access_key.as_str()),
        ("sessionToken", creds.session_token.as_str()),
    ] {
        // The value itself is never shown: it may be a secret.
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(format!(
                "{field} is empty or holds characters AWS never sends (spaces, control or non-ASCII characters)"
            )));
        }
    }
    let expiration = OffsetDateTime::parse(&creds.expiration, &Rfc3339)
        .map_err(|e| bad(format!("expiration: {e}")))?;
    if expiration <= now {
        return Err(bad(format!(
            "credentials already expired at {}",
            creds.expiration
        )));
    }
    let latest = now + time::Duration::seconds(i64::from(c.duration_seconds)) + MAX_CLOCK_SKEW;
    Ok(Credentials {
        access_key_id: entry.credentials.access_key_id,
        secret_access_key: entry.credentials.secret_access_key,
        session_token: entry.credentials.session_token,
        expiration: expiration.min(latest),
        issued_at: now,
        role_arn: entry.role_arn.unwrap_or_else(|| c.role_arn.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration every check accepts.
    fn valid_config() -> SessionConfig {
        SessionConfig {
            region: "us-east-1".into(),
            endpoint: None,
            profile_arn: "arn:aws:rolesanywhere:us-east-1:123456789012:profile/p".into(),
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            trust_anchor_arn: "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/t".into(),
            duration_seconds: 3600,
            role_session_name: None,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            extra_roots_pem: None,
        }
    }

    /// Found writing the aws_replies fuzz target's checks: a reply (from a
    /// broken or hostile proxy) with a line break in a key was accepted, and
    /// `update` wrote it into the credentials file as extra lines (another
    /// profile, a `credential_process`); an expiry years away was believed,
    /// so the sidecar never refreshed.
    #[test]
    fn replies_with_unsafe_keys_or_endless_sessions_are_not_believed() {
        let c = valid_config();
        let now = time::macros::datetime!(2026-01-01 00:00 UTC);
        let reply = |key: &str, secret: &str, expiration: &str| {
            serde_json::json!({"credentialSet": [{"credentials": {
                "accessKeyId": key, "secretAccessKey": secret,
                "sessionToken": "IQoJtoken/+=", "expiration": expiration}}]})
            .to_string()
        };
        let believe = |key: &str, secret: &str, expiration: &str| {
            credentials_from_reply(reply(key, secret, expiration).as_bytes(), now, &c)
        };
        let ok = believe("ASIAX", "abc/+=", "2026-01-01T01:00:00Z").unwrap();
        assert_eq!(ok.expiration, now + time::Duration::hours(1));
        assert_eq!(ok.role_arn, c.role_arn);
        for (key, secret) in [
            ("ASIAX", "s\n[default]\ncredential_process = /bin/evil"),
            ("ASIA X", "s"),
            ("", "s"),
            ("ASIAX", "s\u{e9}"),
        ] {
            let err = believe(key, secret, "2026-01-01T01:00:00Z")
                .unwrap_err()
                .to_string();
            assert!(err.contains("characters AWS never sends"), "{err}");
            assert!(!err.contains("evil"), "the value is not shown: {err}");
        }
        let far = believe("ASIAX", "s", "9999-12-31T23:59:59Z").unwrap();
        assert_eq!(far.expiration, now + time::Duration::minutes(65));
    }

    #[test]
    fn config_validation_names_the_bad_field() {
        let cfg = valid_config();
        assert!(cfg.validate().is_ok());
        let bad = SessionConfig {
            role_arn: "arn:aws:iam::123:role/r".into(),
            ..cfg.clone()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("role ARN"));
        let bad = SessionConfig {
            duration_seconds: 60,
            ..cfg.clone()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("session duration")
        );
        let bad = SessionConfig {
            endpoint: Some("ftp://x".into()),
            ..cfg
        };
        assert!(
            SessionClient::new(bad)
                .unwrap_err()
                .to_string()
                .contains("endpoint")
        );
    }

    #[test]
    fn session_names_are_made_valid_deterministically() {
        let valid = |n: &str| {
            (2..=64).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
        };
        assert_eq!(role_session_name("web-7d9f8-xk2lp"), "web-7d9f8-xk2lp");
        assert_eq!(role_session_name("team/api job"), "team-api-job");
        assert_eq!(role_session_name("x"), "x_");
        assert_eq!(role_session_name(""), "");
        let long_a = format!("{}-a", "p".repeat(240));
        let long_b = format!("{}-b", "p".repeat(240));
        let (a, b) = (role_session_name(&long_a), role_session_name(&long_b));
        assert!(valid(&a) && valid(&b), "{a} {b}");
        assert_eq!(a.len(), 64);
        assert_ne!(a, b, "long names sharing a prefix stay apart");
        assert_eq!(a, role_session_name(&long_a), "deterministic");
        for name in ["é", "ünïcödé-pod", "a b", "@", "日本語"] {
            let n = role_session_name(name);
            assert!(valid(&n), "{name:?} -> {n:?}");
        }
    }
}
