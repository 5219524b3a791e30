//! AWS credentials for ECR roles, obtained the way a pod obtains them: a
//! workload certificate for the broker's own ServiceAccount (issued in-process
//! by the cluster CA, renewed at half-life) traded at Roles Anywhere by the
//! sidecar library's session client and kept fresh by its credential cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_pki::{
    CertificateAuthority, KeyType, PrivateKey, VerifiedCsr, WorkloadIdentity, X509Signer,
};
use attache_sidecar::cache::{self, CredentialCache, CredentialSource, FetchError, RefreshPolicy};
use attache_sidecar::clock::Clock;
use attache_sidecar::credentials::Credentials;
use attache_sidecar::session::{SessionClient, SessionConfig};
use time::OffsetDateTime;

use crate::metrics::Metrics;

/// Lifetime of the broker's own workload certificate.
pub const BROKER_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The broker's own workload certificate (SPIFFE ID of its ServiceAccount),
/// reissued from the in-process CA once half its lifetime has passed.
pub struct BrokerCert {
    ca: Arc<CertificateAuthority>,
    identity: WorkloadIdentity,
    clock: Arc<dyn Clock>,
    current: Mutex<Option<(Arc<X509Signer>, OffsetDateTime)>>,
}

impl BrokerCert {
    /// For the broker's ServiceAccount `namespace`/`service_account`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, attache_pki::IdentityError> {
        Ok(BrokerCert {
            ca,
            identity: WorkloadIdentity::new(trust_domain, namespace, service_account)?,
            clock,
            current: Mutex::new(None),
        })
    }

    /// The SPIFFE ID the ECR roles' trust policies must allow.
    pub fn spiffe_uri(&self) -> String {
        self.identity.spiffe_uri()
    }

    /// A signer with a certificate that is past no more than half its life.
    pub fn signer(&self) -> Result<Arc<X509Signer>, String> {
        let now = self.clock.now();
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((signer, renew_at)) = cur.as_ref()
            && now < *renew_at
        {
            return Ok(signer.clone());
        }
        let key = PrivateKey::generate(KeyType::EcdsaP256).map_err(|e| e.to_string())?;
        let csr = key
            .certificate_signing_request()
            .map_err(|e| e.to_string())?;
        let csr = VerifiedCsr::parse(csr.as_bytes()).map_err(|e| e.to_string())?;
        // Validity is judged by AWS on its clock: issue on the wall clock.
        let issued = self
            .ca
            .issue_workload(
                &csr,
                &self.identity,
                BROKER_CERT_LIFETIME,
                OffsetDateTime::now_utc(),
            )
            .map_err(|e| e.to_string())?;
        let signer = Arc::new(X509Signer::new(issued.der, vec![], key).map_err(|e| e.to_string())?);
        tracing::info!(
            spiffe_id = %self.identity.spiffe_uri(),
            serial = %issued.serial,
            not_after = %attache_sidecar::credentials::rfc3339(issued.not_after),
            "issued the broker's own workload certificate for ECR"
        );
        *cur = Some((signer.clone(), now + BROKER_CERT_LIFETIME / 2));
        Ok(signer)
    }
}

/// CreateSession for one ECR role with the broker's certificate.
pub struct RoleSource {
    session: SessionClient,
    cert: Arc<BrokerCert>,
    metrics: Metrics,
}

impl CredentialSource for RoleSource {
    async fn fetch(&self) -> Result<Credentials, FetchError> {
        let signer = self.cert.signer().map_err(|message| {
            Metrics::count(&self.metrics.ecr_refresh_failures, "certificate");
            FetchError {
                kind: "certificate",
                retryable: true,
                message: format!("cannot issue the broker's own certificate: {message}"),
            }
        })?;
        self.session.create_session(&signer).await.map_err(|e| {
            let kind = e.kind();
            Metrics::count(
                &self.metrics.ecr_refresh_failures,
                &format!("session_{kind}"),
            );
            FetchError {
                kind,
                retryable: e.is_retryable(),
                message: format!(
                    "CreateSession for ECR role {}: {e}",
                    self.session.config().role_arn
                ),
            }
        })
    }
}

/// Settings shared by every role's session.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// Region of the Roles Anywhere trust anchor and profile.
    pub region: String,
    /// Roles Anywhere profile ARN.
    pub profile_arn: String,
    /// Trust anchor ARN.
    pub trust_anchor_arn: String,
    /// Endpoint overrides (one URL, or per region; a per-region entry makes
    /// that region's ECR credentials come from a session in that region).
    pub endpoints: super::token::Endpoints,
    /// Session lifetime.
    pub duration_seconds: u32,
}

/// A credential cache and its refresh task.
type RunningCache = (CredentialCache, tokio::task::JoinHandle<()>);

/// One credential cache per (role, session region), created on first use.
pub struct RoleCredentials {
    settings: SessionSettings,
    cert: Arc<BrokerCert>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    caches: Mutex<HashMap<(String, String), RunningCache>>,
}

impl Drop for RoleCredentials {
    fn drop(&mut self) {
        let caches = self.caches.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, (_, task)) in caches.drain() {
            task.abort();
        }
    }
}

impl RoleCredentials {
    /// No caches yet.
    pub fn new(
        settings: SessionSettings,
        cert: Arc<BrokerCert>,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
    ) -> Self {
        RoleCredentials {
            settings,
            cert,
            clock,
            metrics,
            caches: Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self, role: &str, ecr_region: &str) -> Result<CredentialCache, FetchError> {
        let (region, endpoint) = match self.settings.endpoints.by_region.get(ecr_region) {
            Some(url) => (ecr_region.to_string(), Some(url.clone())),
            None => (
                self.settings.region.clone(),
                self.settings.endpoints.all.clone(),
            ),
        };
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, _)) = caches.get(&(role.to_string(), region.clone())) {
            return Ok(c.clone());
        }
        let session = SessionClient::new(SessionConfig {
            region: region.clone(),
            endpoint,
            profile_arn: self.settings.profile_arn.clone(),
            role_arn: role.to_string(),
            trust_anchor_arn: self.settings.trust_anchor_arn.clone(),
            duration_seconds: self.settings.duration_seconds,
            role_session_name: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            extra_roots_pem: None,
        })
        .map_err(|e| FetchError {
            kind: "config",
            retryable: false,
            message: format!("ECR role {role}: {e}"),
        })?;
        let source = RoleSource {
            session,
            cert: self.cert.clone(),
            metrics: self.metrics.clone(),
        };
        let (cache, task) = cache::spawn(
            source,
            RefreshPolicy::default(),
            self.clock.clone(),
            attache_sidecar::metrics::Metrics::default(),
        );
        caches.insert((role.to_string(), region), (cache.clone(), task));
        Ok(cache)
    }

    /// Valid credentials for `role`, to call ECR in `ecr_region`; waits up
    /// to `wait` for the first set.
    pub async fn get(
        &self,
        role: &str,
        ecr_region: &str,
        wait: Duration,
    ) -> Result<Arc<Credentials>, FetchError> {
        let mut cache = self.cache(role, ecr_region)?;
        if let Some(c) = cache.current() {
            return Ok(c);
        }
        let _ = tokio::time::timeout(wait, cache.wait_ready()).await;
        cache.current().ok_or_else(|| FetchError {
            kind: "credentials",
            retryable: true,
            message: format!("no AWS credentials for ECR role {role} yet (Roles Anywhere CreateSession failing; see earlier log lines)"),
        })
    }
}
