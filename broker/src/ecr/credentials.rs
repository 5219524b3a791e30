//! AWS credentials for ECR roles, obtained the way a pod of the
//! ServiceAccount obtains them: the controller mints itself a short-lived
//! workload certificate for `spiffe://<td>/ns/<ns>/sa/<sa>` from the workload
//! CA (the key never leaves memory) and trades it at Roles Anywhere, so the
//! ECR role's IAM trust policy decides for each ServiceAccount exactly as it
//! does for that ServiceAccount's pods.
//!
//! AWS's answer is recorded as a [`Verdict`] per (ServiceAccount, role,
//! profile, trust anchor, session region) until the session it granted
//! expires. The shared ECR token of a role is written for a ServiceAccount
//! only while that ServiceAccount's own verdict is `Accepted`; the most recent
//! accepted session's credentials serve the (one per role and region)
//! `GetAuthorizationToken` call. CreateSession calls are paced by a rate
//! limiter (`--ecr-session-rate`), since Roles Anywhere's default quota is 10
//! per second per account and region, shared with every pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_aws::cache::RefreshPolicy;
use attache_aws::credentials::Credentials;
use attache_aws::session::{SessionClient, SessionConfig};
use attache_pki::{
    CertificateAuthority, KeyType, PrivateKey, VerifiedCsr, WorkloadIdentity, X509Signer,
};
use attache_rt::clock::Clock;
use time::OffsetDateTime;

use super::tokens::TokenFailure;
use super::world::Key;
use crate::metrics::Metrics;

/// Certificates outlive the session they are traded for by this much.
const CERT_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Credentials with less than this left (on the wall clock) are not used.
const CREDENTIALS_MARGIN: time::Duration = time::Duration::minutes(5);
/// How long a refusal by AWS is believed before the ServiceAccount is tried again.
pub const DENIED_RECHECK: Duration = Duration::from_secs(10 * 60);

/// Mints per-ServiceAccount workload certificates from the workload CA.
pub struct Issuer {
    ca: Arc<CertificateAuthority>,
    trust_domain: String,
}

impl Issuer {
    /// Certificates in `trust_domain` from `ca`.
    pub fn new(ca: Arc<CertificateAuthority>, trust_domain: &str) -> Self {
        Issuer {
            ca,
            trust_domain: trust_domain.to_string(),
        }
    }

    /// The SPIFFE ID of a ServiceAccount.
    pub fn spiffe_uri(&self, sa: &Key) -> String {
        WorkloadIdentity::new(&self.trust_domain, &sa.namespace, &sa.name)
            .map(|i| i.spiffe_uri())
            .unwrap_or_else(|_| {
                format!(
                    "spiffe://{}/ns/{}/sa/{}",
                    self.trust_domain, sa.namespace, sa.name
                )
            })
    }

    /// A fresh key and a certificate naming `sa`, valid for `lifetime` from now.
    pub fn signer(&self, sa: &Key, lifetime: Duration) -> Result<X509Signer, String> {
        let identity = WorkloadIdentity::new(&self.trust_domain, &sa.namespace, &sa.name)
            .map_err(|e| e.to_string())?;
        let key = PrivateKey::generate(KeyType::EcdsaP256).map_err(|e| e.to_string())?;
        let csr = key
            .certificate_signing_request()
            .map_err(|e| e.to_string())?;
        let csr = VerifiedCsr::parse(csr.as_bytes()).map_err(|e| e.to_string())?;
        // Validity is judged by AWS on its clock: issue on the wall clock.
        let issued = self
            .ca
            .issue_workload(&csr, &identity, lifetime, OffsetDateTime::now_utc())
            .map_err(|e| e.to_string())?;
        X509Signer::new(issued.der, vec![], key).map_err(|e| e.to_string())
    }
}

/// Settings shared by every session.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Region of sessions through the default trust anchor.
    pub region: String,
    /// Endpoint overrides (one URL, or per region; a per-region entry makes
    /// that region's ECR credentials come from a session in that region).
    pub endpoints: attache_aws::ecr::Endpoints,
    /// Session lifetime.
    pub duration_seconds: u32,
    /// CreateSession calls per second at most (0: unlimited).
    pub rate_per_second: f64,
}

/// Where and as what a ServiceAccount's session for a role is created.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// The role.
    pub role: String,
    /// Roles Anywhere profile.
    pub profile: String,
    /// Trust anchor.
    pub trust_anchor: String,
    /// Region of the session.
    pub region: String,
    /// Endpoint override for that region.
    pub endpoint: Option<String>,
}

impl SessionSettings {
    /// The session target for `role` via `profile` and `trust_anchor`, used
    /// to call ECR in `ecr_region`.
    pub fn target(
        &self,
        role: &str,
        profile: &str,
        trust_anchor: &str,
        ecr_region: &str,
    ) -> Target {
        let (region, endpoint) = match self.endpoints.by_region.get(ecr_region) {
            Some(url) => (ecr_region.to_string(), Some(url.clone())),
            None => (
                attache_aws::arn::arn_region(trust_anchor)
                    .filter(|r| !r.is_empty())
                    .unwrap_or(&self.region)
                    .to_string(),
                self.endpoints.all.clone(),
            ),
        };
        Target {
            role: role.to_string(),
            profile: profile.to_string(),
            trust_anchor: trust_anchor.to_string(),
            region,
            endpoint,
        }
    }
}

/// AWS's answer to a ServiceAccount's CreateSession for a role.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// AWS issued a session; believed until it expires (controller's clock).
    Accepted {
        /// Until when.
        until: OffsetDateTime,
    },
    /// AWS refused the identity (HTTP 401/403: the role's trust policy, the
    /// profile's role list, a disabled or mismatched trust anchor).
    Denied {
        /// AWS's message.
        message: String,
        /// When to ask again.
        until: OffsetDateTime,
    },
    /// No answer (throttled, 5xx, network, certificate): asked again later.
    Failed {
        /// Metric label.
        kind: String,
        /// One line, no secrets.
        message: String,
        /// When to ask again.
        until: OffsetDateTime,
        /// Consecutive failures.
        failures: u32,
    },
}

impl Verdict {
    fn until(&self) -> OffsetDateTime {
        match self {
            Verdict::Accepted { until }
            | Verdict::Denied { until, .. }
            | Verdict::Failed { until, .. } => *until,
        }
    }
}

/// Paces calls: at most `rate` per second, bursts of up to one second's worth.
struct RateLimiter {
    rate: f64,
    state: tokio::sync::Mutex<Bucket>,
}

/// A token bucket: how many sessions may start now, as of when.
struct Bucket {
    tokens: f64,
    at: tokio::time::Instant,
}

impl RateLimiter {
    fn new(rate: f64) -> Self {
        RateLimiter {
            rate,
            state: tokio::sync::Mutex::new(Bucket {
                tokens: rate.max(1.0),
                at: tokio::time::Instant::now(),
            }),
        }
    }

    async fn acquire(&self) {
        if self.rate <= 0.0 {
            return;
        }
        let mut s = self.state.lock().await;
        let now = tokio::time::Instant::now();
        let burst = self.rate.max(1.0);
        s.tokens = (s.tokens + now.duration_since(s.at).as_secs_f64() * self.rate).min(burst);
        s.at = now;
        if s.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - s.tokens) / self.rate);
            tokio::time::sleep(wait).await;
            s.tokens = 1.0;
            s.at = tokio::time::Instant::now();
        }
        s.tokens -= 1.0;
    }
}

/// Per-ServiceAccount sessions and AWS's verdicts on them.
pub struct Sessions {
    settings: SessionSettings,
    issuer: Issuer,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    backoff: RefreshPolicy,
    limiter: RateLimiter,
    verdicts: Mutex<HashMap<Key, HashMap<Target, Verdict>>>,
    latest: Mutex<HashMap<Target, Arc<Credentials>>>,
    clients: Mutex<HashMap<Target, Arc<SessionClient>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sessions {
    /// No sessions yet.
    pub fn new(
        settings: SessionSettings,
        issuer: Issuer,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        backoff: RefreshPolicy,
    ) -> Self {
        Sessions {
            limiter: RateLimiter::new(settings.rate_per_second),
            settings,
            issuer,
            clock,
            metrics,
            backoff,
            verdicts: Mutex::default(),
            latest: Mutex::default(),
            clients: Mutex::default(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    /// The SPIFFE ID a ServiceAccount's sessions carry.
    pub fn spiffe_uri(&self, sa: &Key) -> String {
        self.issuer.spiffe_uri(sa)
    }

    /// The recorded verdict for `sa` and `target` while it holds.
    pub fn cached(&self, sa: &Key, target: &Target) -> Option<Verdict> {
        let now = self.clock.now();
        lock(&self.verdicts)
            .get(sa)
            .and_then(|m| m.get(target))
            .filter(|v| v.until() > now)
            .cloned()
    }

    /// AWS's verdict for `sa` assuming `target.role`: the recorded one while
    /// it holds, else a new CreateSession with the ServiceAccount's own certificate.
    pub async fn verdict(&self, sa: &Key, target: &Target) -> Verdict {
        if let Some(v) = self.cached(sa, target) {
            return v;
        }
        match self.create(sa, target).await {
            Ok(_) => self.cached(sa, target).unwrap_or(Verdict::Accepted {
                until: self.clock.now(),
            }),
            Err(v) => v,
        }
    }

    /// Credentials for `target.role`, to call ECR: those of the most recent
    /// accepted session for the target while they last, else a new session
    /// as `sa` (which records `sa`'s verdict too).
    pub async fn credentials(
        &self,
        sa: &Key,
        target: &Target,
    ) -> Result<Arc<Credentials>, TokenFailure> {
        let now = OffsetDateTime::now_utc();
        if let Some(c) = lock(&self.latest).get(target)
            && c.expiration - now > CREDENTIALS_MARGIN
        {
            return Ok(c.clone());
        }
        self.create(sa, target).await.map_err(|v| match v {
            Verdict::Denied { message, .. } => TokenFailure {
                kind: "session_denied".into(),
                message,
            },
            Verdict::Failed { kind, message, .. } => TokenFailure {
                kind: format!("session_{kind}"),
                message,
            },
            Verdict::Accepted { .. } => TokenFailure {
                kind: "session".into(),
                message: "no credentials".into(),
            },
        })
    }

    /// Forgets everything recorded for `sa` (deleted or opted out).
    pub fn forget(&self, sa: &Key) {
        lock(&self.verdicts).remove(sa);
    }

    fn client(&self, target: &Target) -> Result<Arc<SessionClient>, String> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(target) {
            return Ok(c.clone());
        }
        let client = SessionClient::new(SessionConfig {
            region: target.region.clone(),
            endpoint: target.endpoint.clone(),
            profile_arn: target.profile.clone(),
            role_arn: target.role.clone(),
            trust_anchor_arn: target.trust_anchor.clone(),
            duration_seconds: self.settings.duration_seconds,
            role_session_name: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            extra_roots_pem: None,
        })
        .map_err(|e| format!("ECR role {}: {e}", target.role))?;
        let client = Arc::new(client);
        clients.insert(target.clone(), client.clone());
        Ok(client)
    }

    fn record(&self, sa: &Key, target: &Target, v: Verdict) {
        lock(&self.verdicts)
            .entry(sa.clone())
            .or_default()
            .insert(target.clone(), v);
    }

    fn failed(&self, sa: &Key, target: &Target, kind: &str, message: String) -> Verdict {
        let failures = match lock(&self.verdicts).get(sa).and_then(|m| m.get(target)) {
            Some(Verdict::Failed { failures, .. }) => failures + 1,
            _ => 1,
        };
        Metrics::count(
            &self.metrics.ecr_refresh_failures,
            &format!("session_{kind}"),
        );
        let v = Verdict::Failed {
            kind: kind.to_string(),
            message,
            until: self.clock.now() + self.backoff.backoff(failures - 1),
            failures,
        };
        self.record(sa, target, v.clone());
        v
    }

    /// One CreateSession as `sa`; records the verdict.
    async fn create(&self, sa: &Key, target: &Target) -> Result<Arc<Credentials>, Verdict> {
        let client = match self.client(target) {
            Ok(c) => c,
            Err(message) => return Err(self.failed(sa, target, "config", message)),
        };
        let lifetime = Duration::from_secs(u64::from(self.settings.duration_seconds)) + CERT_MARGIN;
        let signer = match self.issuer.signer(sa, lifetime) {
            Ok(s) => s,
            Err(e) => {
                let message = format!(
                    "cannot issue a certificate for {}: {e}",
                    self.spiffe_uri(sa)
                );
                return Err(self.failed(sa, target, "certificate", message));
            }
        };
        self.limiter.acquire().await;
        match client.create_session(&signer).await {
            Ok(creds) => {
                let left = creds.expiration - OffsetDateTime::now_utc();
                let until = self.clock.now() + left.max(time::Duration::ZERO);
                self.record(sa, target, Verdict::Accepted { until });
                let creds = Arc::new(creds);
                lock(&self.latest).insert(target.clone(), creds.clone());
                tracing::debug!(namespace = %sa.namespace, service_account = %sa.name, role_arn = %target.role, "Roles Anywhere accepted the ServiceAccount for the ECR role");
                Ok(creds)
            }
            Err(e) => {
                let kind = e.kind();
                let message = format!(
                    "CreateSession for ECR role {} as {}: {e}",
                    target.role,
                    self.spiffe_uri(sa)
                );
                if kind == "denied" {
                    Metrics::count(&self.metrics.ecr_refresh_failures, "session_denied");
                    let v = Verdict::Denied {
                        message,
                        until: self.clock.now() + DENIED_RECHECK,
                    };
                    self.record(sa, target, v.clone());
                    Err(v)
                } else {
                    Err(self.failed(sa, target, kind, message))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_rate_limiter_paces_calls() {
        // 20 at once (one second's worth), then one every 50 ms.
        let l = RateLimiter::new(20.0);
        let t0 = tokio::time::Instant::now();
        for _ in 0..30 {
            l.acquire().await;
        }
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(450), "{took:?}");
    }

    #[test]
    fn per_region_endpoints_get_their_own_session_region() {
        let s = SessionSettings {
            region: "us-east-1".into(),
            endpoints: attache_aws::ecr::Endpoints::parse(Some("eu-west-1=http://127.0.0.1:1"))
                .unwrap(),
            duration_seconds: 3600,
            rate_per_second: 0.0,
        };
        let anchor = "arn:aws:rolesanywhere:ap-south-1:1:trust-anchor/x";
        let t = s.target("r", "p", anchor, "eu-west-1");
        assert_eq!(
            (t.region.as_str(), t.endpoint.as_deref()),
            ("eu-west-1", Some("http://127.0.0.1:1"))
        );
        let t = s.target("r", "p", anchor, "us-west-2");
        assert_eq!((t.region.as_str(), t.endpoint), ("ap-south-1", None));
    }
}
