//! Credentials from IAM Roles Anywhere: the certificate source plus the
//! CreateSession client, as one [`CredentialSource`] for the cache.

use std::sync::Arc;

use crate::certsource::CertSource;
use attache_aws::cache::{CredentialSource, FetchError};
use attache_aws::credentials::Credentials;
use attache_aws::session::SessionClient;
use attache_rt::clock::Clock;

/// CreateSession signed with the current certificate.
pub struct RolesAnywhereSource {
    /// Where the certificate comes from.
    pub certs: CertSource,
    /// The CreateSession client.
    pub client: SessionClient,
    /// The clock used to judge certificate validity.
    pub clock: Arc<dyn Clock>,
}

impl CredentialSource for RolesAnywhereSource {
    async fn fetch(&self) -> Result<Credentials, FetchError> {
        let signer = self.certs.signer(self.clock.as_ref()).await?;
        self.client
            .create_session(&signer)
            .await
            .map_err(|e| FetchError {
                kind: e.kind(),
                retryable: e.is_retryable(),
                message: e.to_string(),
            })
    }
}
