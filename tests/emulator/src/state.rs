//! What the emulator remembers: its configured resources, the credentials and
//! ECR passwords it issued, recorded sessions, and per-operation counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use time::OffsetDateTime;

use crate::config::{Permission, Profile, Role};
use crate::faults::Faults;

/// The operations the emulator serves, for [`crate::Emulator::request_count`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// IAM Roles Anywhere `CreateSession`.
    CreateSession,
    /// STS `GetCallerIdentity`.
    GetCallerIdentity,
    /// ECR `GetAuthorizationToken`.
    GetAuthorizationToken,
    /// IAM Roles Anywhere `ImportCrl`.
    ImportCrl,
    /// IAM Roles Anywhere `ListCrls`.
    ListCrls,
    /// IAM Roles Anywhere `GetCrl`.
    GetCrl,
    /// IAM Roles Anywhere `UpdateCrl`.
    UpdateCrl,
    /// IAM Roles Anywhere `EnableCrl`.
    EnableCrl,
    /// IAM Roles Anywhere `DisableCrl`.
    DisableCrl,
    /// IAM Roles Anywhere `DeleteCrl`.
    DeleteCrl,
}

impl Operation {
    /// Every operation, in counter order.
    const ALL: [Operation; 10] = [
        Operation::CreateSession,
        Operation::GetCallerIdentity,
        Operation::GetAuthorizationToken,
        Operation::ImportCrl,
        Operation::ListCrls,
        Operation::GetCrl,
        Operation::UpdateCrl,
        Operation::EnableCrl,
        Operation::DisableCrl,
        Operation::DeleteCrl,
    ];

    fn index(self) -> usize {
        Self::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }

    /// The AWS operation name.
    pub fn name(self) -> &'static str {
        match self {
            Operation::CreateSession => "CreateSession",
            Operation::GetCallerIdentity => "GetCallerIdentity",
            Operation::GetAuthorizationToken => "GetAuthorizationToken",
            Operation::ImportCrl => "ImportCrl",
            Operation::ListCrls => "ListCrls",
            Operation::GetCrl => "GetCrl",
            Operation::UpdateCrl => "UpdateCrl",
            Operation::EnableCrl => "EnableCrl",
            Operation::DisableCrl => "DisableCrl",
            Operation::DeleteCrl => "DeleteCrl",
        }
    }
}

/// A certificate revocation list imported with `ImportCrl`, as it stands now.
#[derive(Clone, PartialEq, Eq)]
pub struct CrlRecord {
    /// `arn:aws:rolesanywhere:<region>:<account>:crl/<crl_id>`.
    pub crl_arn: String,
    /// UUID-shaped id.
    pub crl_id: String,
    /// The name given at import (or by UpdateCrl).
    pub name: String,
    /// The trust anchor it provides revocation for.
    pub trust_anchor_arn: String,
    /// `crlData` as imported: the PEM bytes, returned unchanged; replaced by
    /// UpdateCrl.
    pub crl_data: Vec<u8>,
    /// The DER inside `crl_data`, which CreateSession's revocation check reads.
    pub crl_der: Vec<u8>,
    /// Whether CreateSession consults it.
    pub enabled: bool,
    /// Tags given at import, `(key, value)`.
    pub tags: Vec<(String, String)>,
    /// When it was imported.
    pub created_at: OffsetDateTime,
    /// When it last changed.
    pub updated_at: OffsetDateTime,
}

/// Shows the CRL's length, not its bytes.
impl std::fmt::Debug for CrlRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlRecord")
            .field("crl_id", &self.crl_id)
            .field("name", &self.name)
            .field("trust_anchor_arn", &self.trust_anchor_arn)
            .field("crl_data_len", &self.crl_data.len())
            .field("crl_der_len", &self.crl_der.len())
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// One successful `CreateSession`: which certificate identity got which role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// The assumed role.
    pub role_arn: String,
    /// The profile named in the request.
    pub profile_arn: String,
    /// The trust anchor the certificate chained to.
    pub trust_anchor_arn: String,
    /// The leaf certificate's serial, decimal.
    pub certificate_serial: String,
    /// Subject CN of the leaf.
    pub subject_cn: Option<String>,
    /// First subject OU of the leaf.
    pub subject_ou: Option<String>,
    /// First subject O of the leaf.
    pub subject_o: Option<String>,
    /// First URI SAN of the leaf.
    pub san_uri: Option<String>,
    /// The access key id handed out (not secret).
    pub access_key_id: String,
    /// When the credentials expire.
    pub expiration: OffsetDateTime,
    /// The role session name used in the assumed-role ARN.
    pub role_session_name: String,
}

/// Credentials the emulator issued. `Debug` redacts the secret and the token.
#[derive(Clone)]
pub(crate) struct IssuedCredentials {
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: OffsetDateTime,
    pub role_arn: String,
    pub session_name: String,
}

impl std::fmt::Debug for IssuedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCredentials")
            .field("secret_access_key", &"[redacted]")
            .field("session_token", &"[redacted]")
            .field("expiration", &self.expiration)
            .field("role_arn", &self.role_arn)
            .field("session_name", &self.session_name)
            .finish()
    }
}

/// A configured trust anchor with its bundle parsed to DER.
#[derive(Clone, Debug)]
pub(crate) struct Anchor {
    pub certs_der: Vec<Vec<u8>>,
    pub enabled: bool,
    /// Why the bundle could not be used, when it could not.
    pub load_error: Option<String>,
}

/// Configured resources and issued secrets, behind one lock.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pub anchors: HashMap<String, Anchor>,
    pub profiles: HashMap<String, Profile>,
    pub roles: HashMap<String, Role>,
    /// Permission policies, in the order attached.
    pub permissions: Vec<Permission>,
    /// Imported CRLs, oldest first (ListCrls pages in this order).
    pub crls: Vec<CrlRecord>,
    pub sessions: Vec<SessionRecord>,
    pub credentials: HashMap<String, IssuedCredentials>,
    /// ECR password -> (role ARN, expiry). Keys are secrets: never log them.
    pub ecr_passwords: HashMap<String, (String, OffsetDateTime)>,
}

/// The emulator's clock as the quota's time source.
#[derive(Clone, Debug)]
pub(crate) struct QuotaClock(Faults);

impl governor::clock::Clock for QuotaClock {
    type Instant = std::time::Duration;

    fn now(&self) -> std::time::Duration {
        (self.0.now() - OffsetDateTime::UNIX_EPOCH)
            .try_into()
            .unwrap_or_default()
    }
}

type QuotaLimiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    QuotaClock,
    governor::middleware::NoOpMiddleware<std::time::Duration>,
>;

/// Roles Anywhere's CreateSession quota for this account and region
/// (requests per second, bursts up to that many, by the emulator's clock);
/// `None`: no quota.
pub(crate) struct SessionQuota(Mutex<Option<QuotaLimiter>>);

impl std::fmt::Debug for SessionQuota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionQuota")
    }
}

impl SessionQuota {
    pub fn new(per_second: u32, clock: &Faults) -> Self {
        let limiter = std::num::NonZeroU32::new(per_second).map(|n| {
            governor::RateLimiter::direct_with_clock(
                governor::Quota::per_second(n),
                QuotaClock(clock.clone()),
            )
        });
        SessionQuota(Mutex::new(limiter))
    }
}

/// State shared by the server tasks and the [`crate::Emulator`] handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub region: String,
    pub account: String,
    pub faults: Faults,
    registry: Mutex<Registry>,
    counters: [AtomicU64; Operation::ALL.len()],
    quota: SessionQuota,
    throttled: AtomicU64,
}

impl Shared {
    pub fn new(
        region: String,
        account: String,
        registry: Registry,
        sessions_per_second: u32,
    ) -> Self {
        let faults = Faults::default();
        Shared {
            region,
            account,
            quota: SessionQuota::new(sessions_per_second, &faults),
            faults,
            registry: Mutex::new(registry),
            counters: Default::default(),
            throttled: AtomicU64::new(0),
        }
    }

    /// Takes one CreateSession from the quota; `false` (and counted) when
    /// the account and region are over it, as AWS throttles.
    pub fn admit_session(&self) -> bool {
        let quota = self.quota.0.lock().unwrap_or_else(|e| e.into_inner());
        let admitted = quota.as_ref().is_none_or(|q| q.check().is_ok());
        if !admitted {
            self.throttled.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Replaces the CreateSession quota (0: none).
    pub fn set_session_quota(&self, per_second: u32) {
        *self.quota.0.lock().unwrap_or_else(|e| e.into_inner()) =
            SessionQuota::new(per_second, &self.faults)
                .0
                .into_inner()
                .unwrap_or_else(|e| e.into_inner());
    }

    /// CreateSession requests refused by the quota.
    pub fn throttled_sessions(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// The registry; never held across an await.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn count(&self, op: Operation) {
        self.counters[op.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_count(&self, op: Operation) -> u64 {
        self.counters[op.index()].load(Ordering::Relaxed)
    }

    /// The emulator's clock (real time plus injected skew).
    pub fn now(&self) -> OffsetDateTime {
        self.faults.now()
    }
}

/// Parses a trust anchor bundle into DER certificates that are CAs.
pub(crate) fn parse_anchor_bundle(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let certs = attache_pki::cert::parse_pem_chain(pem).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("the CA bundle holds no CERTIFICATE block".into());
    }
    for der in &certs {
        attache_pki::CertificateInfo::from_der(der).map_err(|e| e.to_string())?;
    }
    Ok(certs)
}

/// `n` random characters from `alphabet`.
pub(crate) fn random_string(n: usize, alphabet: &[u8]) -> String {
    let mut bytes = vec![0u8; n];
    // aws-lc-rs' RNG does not fail in practice; retry a few times if it does.
    for _ in 0..3 {
        if aws_lc_rs::rand::fill(&mut bytes).is_ok() {
            break;
        }
    }
    bytes
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect()
}

/// Upper-case letters and digits, the alphabet of AWS key ids.
pub(crate) const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Letters, digits, `+` and `/`: the alphabet of secret access keys.
pub(crate) const SECRET_ALPHABET: &[u8] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A request id in UUID shape.
pub(crate) fn request_id() -> String {
    uuid_shape(&random_string(32, b"0123456789abcdef"))
}

/// The first 32 characters of `hex` as 8-4-4-4-12 (callers give at least 32).
pub(crate) fn uuid_shape(hex: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_issued_credentials_hides_secrets() {
        let c = IssuedCredentials {
            secret_access_key: "SECRETSECRET".into(),
            session_token: "TOKENTOKEN".into(),
            expiration: OffsetDateTime::UNIX_EPOCH,
            role_arn: "arn:aws:iam::123456789012:role/r".into(),
            session_name: "s".into(),
        };
        let d = format!("{c:?}");
        assert!(
            !d.contains("SECRETSECRET") && !d.contains("TOKENTOKEN"),
            "{d}"
        );
        assert!(d.contains("role/r"));
    }

    #[test]
    fn random_strings_use_the_alphabet_and_differ() {
        let a = random_string(16, UPPER_ALNUM);
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| UPPER_ALNUM.contains(&b)));
        assert_ne!(a, random_string(16, UPPER_ALNUM));
        assert_eq!(request_id().len(), 36);
    }
}
