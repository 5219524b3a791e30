//! The broker's HTTPS serving certificate: issued from the serving CA (Secret
//! `attache-serving-ca`, never the workload CA that Roles Anywhere trusts, so
//! a leaked serving key is no AWS credential) for the Service's DNS names and
//! swapped in place before it expires (no restart).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use attache_pki::{CertificateAuthority, KeyType};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;

/// Lifetime of a serving certificate; renewed at half-life.
pub const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Why a serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Issuance failed.
    #[error("issuing the serving certificate: {0}")]
    Issue(#[from] attache_pki::CaError),
    /// rustls rejected the key.
    #[error("loading the serving key: {0}")]
    Key(String),
}

/// A certificate resolver whose certificate can be replaced at run time.
#[derive(Debug)]
pub struct RotatingCert {
    current: RwLock<Arc<CertifiedKey>>,
    not_after: RwLock<OffsetDateTime>,
    not_before: RwLock<OffsetDateTime>,
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn issue(
    ca: &CertificateAuthority,
    names: &[String],
    now: OffsetDateTime,
) -> Result<(Arc<CertifiedKey>, OffsetDateTime, OffsetDateTime), TlsError> {
    let (cert, key) = ca.issue_server(names, KeyType::EcdsaP256, SERVING_CERT_LIFETIME, now)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.to_pkcs8_der().to_vec().into());
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let ca_der = attache_pki::cert::parse_certificate_pem(ca.certificate_pem())
        .map(|(d, _)| d)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let chain = vec![cert.der.clone().into(), ca_der.into()];
    Ok((
        Arc::new(CertifiedKey::new(chain, signing)),
        cert.not_before,
        cert.not_after,
    ))
}

impl RotatingCert {
    /// Issues the first certificate for `names`.
    pub fn new(ca: &CertificateAuthority, names: &[String]) -> Result<Arc<Self>, TlsError> {
        let (ck, nb, na) = issue(ca, names, OffsetDateTime::now_utc())?;
        Ok(Arc::new(RotatingCert {
            current: RwLock::new(ck),
            not_after: RwLock::new(na),
            not_before: RwLock::new(nb),
        }))
    }

    /// Replaces the certificate with a freshly issued one.
    pub fn rotate(
        &self,
        ca: &CertificateAuthority,
        names: &[String],
        now: OffsetDateTime,
    ) -> Result<(), TlsError> {
        let (ck, nb, na) = issue(ca, names, now)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = ck;
        *self.not_after.write().unwrap_or_else(|e| e.into_inner()) = na;
        *self.not_before.write().unwrap_or_else(|e| e.into_inner()) = nb;
        Ok(())
    }

    /// The leaf certificate currently served, DER.
    pub fn current_der(&self) -> Vec<u8> {
        let ck = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        ck.cert
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default()
    }

    /// When the current certificate should be replaced (half-life).
    pub fn renew_at(&self) -> OffsetDateTime {
        let nb = *self.not_before.read().unwrap_or_else(|e| e.into_inner());
        let na = *self.not_after.read().unwrap_or_else(|e| e.into_inner());
        attache_pki::cert::renewal_time(nb, na, 0.5)
    }

    /// A rustls server configuration serving through this resolver.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Key(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Rotates at half-life forever (spawn it).
    pub async fn rotate_forever(
        self: Arc<Self>,
        ca: Arc<CertificateAuthority>,
        names: Vec<String>,
    ) {
        loop {
            let wait: Duration = (self.renew_at() - OffsetDateTime::now_utc())
                .try_into()
                .unwrap_or_default();
            tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
            match self.rotate(&ca, &names, OffsetDateTime::now_utc()) {
                Ok(()) => tracing::info!("rotated the serving certificate"),
                Err(e) => {
                    tracing::error!(error = %e, "serving certificate rotation failed; retrying in 60 s");
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        }
    }
}

/// The DNS names of a Service `name` in `namespace`, plus `extra`.
pub fn service_names(name: &str, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut v = vec![
        format!("{name}.{namespace}.svc"),
        name.to_string(),
        format!("{name}.{namespace}"),
        format!("{name}.{namespace}.svc.cluster.local"),
    ];
    v.extend(extra.iter().cloned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_swaps_the_served_certificate_in_place() {
        let now = OffsetDateTime::now_utc();
        let ca = CertificateAuthority::create(&attache_pki::CaOptions::default(), now).unwrap();
        let names = service_names("attache-broker", "attache-system", &["127.0.0.1".into()]);
        assert!(names.contains(&"attache-broker.attache-system.svc".to_string()));
        let cert = RotatingCert::new(&ca, &names).unwrap();
        let first = cert.current_der();
        let info = attache_pki::CertificateInfo::from_der(&first).unwrap();
        assert!(
            info.dns_names
                .contains(&"attache-broker.attache-system.svc".to_string())
        );
        let due = cert.renew_at();
        assert!(
            due > now + time::Duration::hours(11) && due < now + time::Duration::hours(13),
            "{due}"
        );
        cert.rotate(&ca, &names, now + time::Duration::hours(12))
            .unwrap();
        assert_ne!(cert.current_der(), first);
        assert!(cert.renew_at() > due);
        assert!(cert.server_config().is_ok());
    }
}
