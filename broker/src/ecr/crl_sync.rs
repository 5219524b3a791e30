//! Pushes the broker's CRL to IAM Roles Anywhere, so a revoked certificate
//! stops working at AWS: the controller reads the CRL the broker signed
//! (ConfigMap `attache-crl`), checks it is the workload CA's, and when it
//! changed calls `ImportCrl` (first time) or `UpdateCrl` on the trust anchor
//! (`--trust-anchor-arn`), under the CRL name `--crl-name`.
//!
//! It signs those calls with a session of `--crl-sync-role-arn` obtained as
//! the controller's own ServiceAccount (`spiffe://<td>/ns/<ns>/sa/<sa>`,
//! `--service-account`), so that role's trust policy must trust that identity
//! and its permissions allow `rolesanywhere:ListCrls`, `ImportCrl`,
//! `UpdateCrl` and `EnableCrl` (`attache-broker aws-policy --crl-sync` prints
//! that permission policy). Only the leader pushes.

use std::sync::Arc;
use std::time::Duration;

use attache_aws::crl::CrlSync;
use attache_pki::CertificateAuthority;

use super::credentials::{Sessions, Target};
use super::world::Key;
use crate::metrics::Metrics;
use crate::revocation::LedgerStore;

/// Pushes the CRL when it changes.
pub struct CrlPusher {
    /// Where the broker keeps the CRL.
    pub store: LedgerStore,
    /// The workload CA (the CRL must be its own).
    pub ca: Arc<CertificateAuthority>,
    /// Sessions (shared with the ECR work).
    pub sessions: Arc<Sessions>,
    /// The controller's own ServiceAccount.
    pub identity: Key,
    /// The session's role, profile, trust anchor and region.
    pub target: Target,
    /// The CRL's name in Roles Anywhere.
    pub name: String,
    /// HTTP client for Roles Anywhere.
    pub http: reqwest::Client,
    /// Metrics.
    pub metrics: Metrics,
    /// The CRL last pushed, PEM (`None` at start: the first check pushes).
    pub pushed: Option<Vec<u8>>,
}

impl CrlPusher {
    /// Checks every `interval`, pushing a changed CRL; runs until aborted.
    pub async fn run(mut self, interval: Duration) {
        loop {
            match self.push_if_changed().await {
                Ok(Some(done)) => {
                    let result = match &done {
                        CrlSync::Imported { .. } => "imported",
                        CrlSync::Updated { .. } => "updated",
                    };
                    Metrics::count(&self.metrics.crl_pushes, result);
                    tracing::info!(crl_id = %done.crl_id(), result, name = %self.name, trust_anchor = %self.target.trust_anchor, "CRL pushed to Roles Anywhere");
                }
                Ok(None) => {}
                Err(e) => {
                    Metrics::count(&self.metrics.crl_pushes, "failed");
                    tracing::warn!(error = %e, "pushing the CRL to Roles Anywhere failed; retrying");
                }
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Pushes the broker's current CRL if it differs from the last pushed.
    pub async fn push_if_changed(&mut self) -> Result<Option<CrlSync>, String> {
        let Some(pem) = self.store.crl_pem().await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        // Roles Anywhere takes the CRL "in PEM format" (ImportCrl).
        let pem = pem.into_bytes();
        if self.pushed.as_deref() == Some(pem.as_slice()) {
            return Ok(None);
        }
        self.ca
            .verify_crl(&pem)
            .map_err(|e| format!("ConfigMap {}: {e}", crate::revocation::CRL_CONFIGMAP))?;
        let credentials = self
            .sessions
            .credentials(&self.identity, &self.target)
            .await
            .map_err(|f| format!("no session for {}: {}", self.target.role, f.message))?;
        let endpoint = self
            .target
            .endpoint
            .clone()
            .unwrap_or_else(|| attache_aws::session::default_endpoint(&self.target.region));
        let crls = attache_aws::crl::CrlClient {
            http: &self.http,
            endpoint: &endpoint,
            region: &self.target.region,
            credentials: &credentials,
        };
        let done = crls
            .sync_crl(&self.target.trust_anchor, &self.name, &pem)
            .await
            .map_err(|e| e.to_string())?;
        self.pushed = Some(pem);
        Ok(Some(done))
    }
}
