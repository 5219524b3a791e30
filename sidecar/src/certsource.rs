//! Where the sidecar's certificate and key come from: files written by
//! something else (cert-manager, a CSI driver), re-read when they change; the
//! attache broker, from a key pair made in memory and a CSR; or a SPIFFE
//! Workload API socket, whose agent pushes each rotated X.509-SVID.

mod spiffe;

pub use self::spiffe::{
    InvalidEndpoint, SpiffeEndpoint, SpiffeError, SpiffeSource, SpiffeSourceConfig,
};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use attache_api::certificates::{self, CertificateReply, CertificateRequest, ErrorReply};
use attache_pki::cert::{CertificateInfo, parse_pem_chain};
use attache_pki::{KeyType, PrivateKey, X509Signer, should_renew};
use tokio::sync::Mutex;

use attache_aws::cache::FetchError;
use attache_aws::request::error_chain;
use attache_rt::clock::Clock;

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CertSourceError {
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Certificate/key content is not usable.
    #[error("{0}")]
    Invalid(String),
    /// The certificate has expired or is not yet valid.
    #[error("certificate {serial} is not valid now (valid {not_before} to {not_after})")]
    Expired {
        /// Serial in decimal.
        serial: String,
        /// Start.
        not_before: time::OffsetDateTime,
        /// End.
        not_after: time::OffsetDateTime,
    },
    /// The broker refused or could not be reached.
    #[error("broker: {0}")]
    Broker(String),
}

impl CertSourceError {
    fn into_fetch(self, retryable: bool) -> FetchError {
        FetchError {
            kind: "certificate",
            retryable,
            message: self.to_string(),
        }
    }
}

/// Paths of a certificate kept in files.
#[derive(Clone, Debug)]
pub struct FileSourceConfig {
    /// Leaf certificate PEM (may also hold the chain after the leaf).
    pub certificate: PathBuf,
    /// Private key PEM (PKCS#8, SEC1 or PKCS#1).
    pub private_key: PathBuf,
    /// Optional intermediates PEM.
    pub intermediates: Option<PathBuf>,
}

/// How to reach the broker.
#[derive(Clone, Debug)]
pub struct BrokerSourceConfig {
    /// e.g. `https://attache-broker.attache-system.svc:8443`.
    pub url: String,
    /// PEM file of the CA that signed the broker's serving certificate.
    pub ca_bundle: PathBuf,
    /// The same bundle as PEM text; when set, `ca_bundle` is not read.
    pub ca_bundle_pem: Option<String>,
    /// The projected ServiceAccount token (audience `attache-broker`), re-read on every request.
    pub service_account_token: PathBuf,
    /// Key type to generate (default ECDSA P-256).
    pub key_type: KeyType,
    /// Request timeout.
    pub timeout: Duration,
}

/// The certificate source in use.
pub enum CertSource {
    /// Files, re-read when their modification time or size changes.
    Files(FileSource),
    /// The attache broker.
    Broker(BrokerSource),
    /// A SPIFFE Workload API socket.
    Spiffe(SpiffeSource),
}

impl CertSource {
    /// The signer to use now: reloaded or renewed when due.
    pub async fn signer(&self, clock: &dyn Clock) -> Result<Arc<X509Signer>, FetchError> {
        match self {
            CertSource::Files(f) => f.signer(clock).await,
            CertSource::Broker(b) => b.signer(clock).await,
            CertSource::Spiffe(s) => s.signer(clock).await,
        }
    }
}

type Stamp = Vec<(u64, Option<SystemTime>)>;

/// Certificate from files.
pub struct FileSource {
    config: FileSourceConfig,
    loaded: Mutex<Option<(Stamp, Arc<X509Signer>)>>,
    metrics: crate::metrics::Metrics,
}

impl FileSource {
    /// A source reading `config`'s files (nothing is read until first use;
    /// call [`FileSource::load`] to validate at start-up).
    pub fn new(config: FileSourceConfig, metrics: crate::metrics::Metrics) -> Self {
        FileSource {
            config,
            loaded: Mutex::new(None),
            metrics,
        }
    }

    fn paths(&self) -> Vec<&PathBuf> {
        let mut p = vec![&self.config.certificate, &self.config.private_key];
        p.extend(self.config.intermediates.as_ref());
        p
    }

    fn stamp(&self) -> Stamp {
        self.paths()
            .iter()
            .map(|p| match std::fs::metadata(p) {
                Ok(m) => (m.len(), m.modified().ok()),
                Err(_) => (0, None),
            })
            .collect()
    }

    /// Reads and checks the files now: the key must match the certificate and
    /// the certificate must be valid at `now`.
    pub fn load(&self, now: time::OffsetDateTime) -> Result<Arc<X509Signer>, CertSourceError> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).map_err(|e| CertSourceError::Read {
                path: p.clone(),
                reason: e.to_string(),
            })
        };
        let cert_text = read(&self.config.certificate)?;
        let mut chain = parse_pem_chain(&cert_text).map_err(|e| {
            CertSourceError::Invalid(format!("{}: {e}", self.config.certificate.display()))
        })?;
        if chain.is_empty() {
            return Err(CertSourceError::Invalid(format!(
                "{}: no CERTIFICATE block",
                self.config.certificate.display()
            )));
        }
        let leaf = chain.remove(0);
        if let Some(p) = &self.config.intermediates {
            chain.extend(
                parse_pem_chain(&read(p)?)
                    .map_err(|e| CertSourceError::Invalid(format!("{}: {e}", p.display())))?,
            );
        }
        let key = zeroize::Zeroizing::new(read(&self.config.private_key)?);
        let key = PrivateKey::from_pem(&key).map_err(|e| {
            CertSourceError::Invalid(format!("{}: {e}", self.config.private_key.display()))
        })?;
        let signer = X509Signer::new(leaf, chain, key).map_err(|e| {
            CertSourceError::Invalid(format!(
                "{} and {}: {e}",
                self.config.certificate.display(),
                self.config.private_key.display()
            ))
        })?;
        check_valid(signer.certificate(), now)?;
        Ok(Arc::new(signer))
    }

    async fn signer(&self, clock: &dyn Clock) -> Result<Arc<X509Signer>, FetchError> {
        let stamp = self.stamp();
        let mut loaded = self.loaded.lock().await;
        if let Some((s, signer)) = loaded.as_ref()
            && *s == stamp
        {
            return Ok(signer.clone());
        }
        match self.load(clock.now()) {
            Ok(signer) => {
                renewed(&self.metrics, &signer, "loaded certificate from files");
                *loaded = Some((stamp, signer.clone()));
                Ok(signer)
            }
            // A half-written rotation: keep using the previous pair while it is valid.
            Err(e) => match loaded.as_ref() {
                Some((_, old)) if old.certificate().is_valid_at(clock.now()) => {
                    tracing::warn!(error = %e, "certificate files changed but do not load; keeping the previous certificate");
                    Ok(old.clone())
                }
                _ => Err(e.into_fetch(true)),
            },
        }
    }
}

/// Counts a new certificate and logs `message` with its serial and expiry.
fn renewed(metrics: &crate::metrics::Metrics, signer: &X509Signer, message: &str) {
    metrics.certificate_renewals.inc();
    tracing::info!(
        serial = %signer.certificate().serial,
        not_after = %signer.certificate().not_after,
        "{message}"
    );
}

fn check_valid(info: &CertificateInfo, now: time::OffsetDateTime) -> Result<(), CertSourceError> {
    if info.is_valid_at(now) {
        Ok(())
    } else {
        Err(CertSourceError::Expired {
            serial: info.serial.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }
}

/// Certificates from the broker's `POST /v1/certificates`.
pub struct BrokerSource {
    config: BrokerSourceConfig,
    http: reqwest::Client,
    current: Mutex<Option<Arc<X509Signer>>>,
    metrics: crate::metrics::Metrics,
}

impl BrokerSource {
    /// Builds the HTTPS client trusting only `config.ca_bundle`.
    pub fn new(
        config: BrokerSourceConfig,
        metrics: crate::metrics::Metrics,
    ) -> Result<Self, CertSourceError> {
        let pem = match &config.ca_bundle_pem {
            Some(text) => text.as_bytes().to_vec(),
            None => std::fs::read(&config.ca_bundle).map_err(|e| CertSourceError::Read {
                path: config.ca_bundle.clone(),
                reason: e.to_string(),
            })?,
        };
        let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            CertSourceError::Invalid(format!("{}: {e}", config.ca_bundle.display()))
        })?;
        if roots.is_empty() {
            return Err(CertSourceError::Invalid(format!(
                "{}: no CERTIFICATE block",
                config.ca_bundle.display()
            )));
        }
        let builder = reqwest::Client::builder()
            .tls_certs_only(roots)
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("attache-sidecar/", env!("CARGO_PKG_VERSION")));
        let http = builder
            .build()
            .map_err(|e| CertSourceError::Invalid(format!("HTTP client: {e}")))?;
        Ok(BrokerSource {
            config,
            http,
            current: Mutex::new(None),
            metrics,
        })
    }

    async fn signer(&self, clock: &dyn Clock) -> Result<Arc<X509Signer>, FetchError> {
        let mut current = self.current.lock().await;
        let now = clock.now();
        if let Some(s) = current.as_ref()
            && !should_renew(s.certificate(), now)
        {
            return Ok(s.clone());
        }
        match self.request(now).await {
            Ok(signer) => {
                renewed(
                    &self.metrics,
                    &signer,
                    "obtained workload certificate from the broker",
                );
                *current = Some(signer.clone());
                Ok(signer)
            }
            Err(e) => match current.as_ref() {
                Some(old) if old.certificate().is_valid_at(now) => {
                    tracing::warn!(error = %e, not_after = %old.certificate().not_after, "certificate renewal failed; using the current certificate until it expires");
                    Ok(old.clone())
                }
                _ => Err(e.into_fetch(true)),
            },
        }
    }

    /// Generates a key pair, sends a CSR with the ServiceAccount token and
    /// returns the signer for the certificate the broker issued.
    pub async fn request(
        &self,
        now: time::OffsetDateTime,
    ) -> Result<Arc<X509Signer>, CertSourceError> {
        let token = zeroize::Zeroizing::new(
            std::fs::read_to_string(&self.config.service_account_token).map_err(|e| {
                CertSourceError::Read {
                    path: self.config.service_account_token.clone(),
                    reason: e.to_string(),
                }
            })?,
        );
        let key = PrivateKey::generate(self.config.key_type)
            .map_err(|e| CertSourceError::Invalid(e.to_string()))?;
        let csr = key
            .certificate_signing_request()
            .map_err(|e| CertSourceError::Invalid(e.to_string()))?;
        let url = format!(
            "{}{}",
            self.config.url.trim_end_matches('/'),
            certificates::PATH
        );
        let resp = self
            .http
            .post(&url)
            .bearer_auth(token.trim())
            .json(&CertificateRequest {
                csr: csr.to_string(),
            })
            .send()
            .await
            .map_err(|e| {
                CertSourceError::Broker(format!("cannot reach {url}: {}", error_chain(&e)))
            })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            CertSourceError::Broker(format!("reading reply from {url}: {}", error_chain(&e)))
        })?;
        if !status.is_success() {
            let err: Option<ErrorReply> = serde_json::from_slice(&body).ok();
            let (code, message) = err
                .map(|e| (e.error.unwrap_or_default(), e.message.unwrap_or_default()))
                .unwrap_or_else(|| {
                    (
                        String::new(),
                        String::from_utf8_lossy(&body).chars().take(200).collect(),
                    )
                });
            return Err(CertSourceError::Broker(format!(
                "HTTP {} {code}: {message}",
                status.as_u16()
            )));
        }
        let reply: CertificateReply = serde_json::from_slice(&body)
            .map_err(|e| CertSourceError::Broker(format!("unexpected reply: {e}")))?;
        let leaf = parse_pem_chain(&reply.certificate)
            .ok()
            .and_then(|mut c| (!c.is_empty()).then(|| c.remove(0)))
            .ok_or_else(|| CertSourceError::Broker("reply certificate is not PEM".into()))?;
        let mut chain = Vec::new();
        for pem in &reply.chain {
            chain.extend(
                parse_pem_chain(pem)
                    .map_err(|e| CertSourceError::Broker(format!("reply chain: {e}")))?,
            );
        }
        let signer = X509Signer::new(leaf, chain, key)
            .map_err(|e| CertSourceError::Broker(format!("issued certificate: {e}")))?;
        check_valid(signer.certificate(), now)?;
        Ok(Arc::new(signer))
    }
}
