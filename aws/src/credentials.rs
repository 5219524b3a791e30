//! Temporary AWS credentials as the sidecar holds and serves them.

use std::fmt;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

/// One set of temporary credentials. `Debug` shows the access key id and the
/// expiry, never the secret key or the session token.
#[derive(Clone)]
pub struct Credentials {
    /// `ASIA...`
    pub access_key_id: String,
    /// The secret half; zeroed on drop.
    pub secret_access_key: Zeroizing<String>,
    /// The STS session token; zeroed on drop.
    pub session_token: Zeroizing<String>,
    /// When AWS stops accepting them.
    pub expiration: OffsetDateTime,
    /// When they were obtained (for refresh-at-fraction-of-lifetime).
    pub issued_at: OffsetDateTime,
    /// The role they belong to.
    pub role_arn: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("session_token", &"[redacted]")
            .field("expiration", &self.expiration)
            .field("role_arn", &self.role_arn)
            .finish()
    }
}

impl Credentials {
    /// Whether AWS still accepts them at `now`.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        now < self.expiration
    }

    /// The account id from the role ARN (`arn:aws:iam::<account>:role/...`).
    pub fn account_id(&self) -> Option<&str> {
        self.role_arn.split(':').nth(4).filter(|a| !a.is_empty())
    }

    /// `Expiration` as RFC 3339 UTC with whole seconds, e.g. `2026-01-01T00:00:00Z`.
    pub fn expiration_rfc3339(&self) -> String {
        rfc3339(self.expiration)
    }

    /// The container-credentials reply (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
    pub fn container_json(&self) -> ContainerCredentials<'_> {
        ContainerCredentials {
            access_key_id: &self.access_key_id,
            secret_access_key: &self.secret_access_key,
            token: &self.session_token,
            expiration: self.expiration_rfc3339(),
            role_arn: &self.role_arn,
            account_id: self.account_id(),
        }
    }

    /// The `credential_process` reply.
    pub fn process_json(&self) -> ProcessCredentials<'_> {
        ProcessCredentials {
            version: 1,
            access_key_id: &self.access_key_id,
            secret_access_key: &self.secret_access_key,
            session_token: &self.session_token,
            expiration: self.expiration_rfc3339(),
        }
    }
}

/// Formats a time as RFC 3339 UTC with whole seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339).unwrap_or_default()
}

/// JSON body of `GET /v1/credentials`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerCredentials<'a> {
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: String,
    role_arn: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_id: Option<&'a str>,
}

/// JSON printed by `attache-sidecar credential-process`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessCredentials<'a> {
    version: u8,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    session_token: &'a str,
    expiration: String,
}

/// A fixed credential set for tests (feature `test-util`).
#[cfg(any(test, feature = "test-util"))]
pub fn sample(issued_at: OffsetDateTime, lifetime: time::Duration) -> Credentials {
    Credentials {
        access_key_id: "ASIAEXAMPLE".into(),
        secret_access_key: Zeroizing::new("s3cr3t-value".into()),
        session_token: Zeroizing::new("t0ken-value".into()),
        expiration: issued_at + lifetime,
        issued_at,
        role_arn: "arn:aws:iam::123456789012:role/demo".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn container_json_has_the_fields_sdks_read() {
        let c = sample(
            datetime!(2026-01-01 00:00:00.5 UTC),
            time::Duration::hours(1),
        );
        let v = serde_json::to_value(c.container_json()).unwrap();
        assert_eq!(v["AccessKeyId"], "ASIAEXAMPLE");
        assert_eq!(v["SecretAccessKey"], "s3cr3t-value");
        assert_eq!(v["Token"], "t0ken-value");
        assert_eq!(v["Expiration"], "2026-01-01T01:00:00Z");
        assert_eq!(v["AccountId"], "123456789012");
        let p = serde_json::to_value(c.process_json()).unwrap();
        assert_eq!(p["Version"], 1);
        assert_eq!(p["SessionToken"], "t0ken-value");
    }

    #[test]
    fn debug_hides_secrets() {
        let c = sample(OffsetDateTime::now_utc(), time::Duration::hours(1));
        let d = format!("{c:?}");
        assert!(!d.contains("s3cr3t") && !d.contains("t0ken"), "{d}");
    }
}
