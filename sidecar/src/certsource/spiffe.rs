//! X.509-SVIDs from a SPIFFE Workload API socket (a SPIRE agent, say): the
//! agent pushes each rotated SVID on the `FetchX509SVID` stream, the latest
//! one (the default, or the one with the configured SPIFFE ID) signs.
//!
//! The stream, its reconnection with backoff and the SVID choice are the
//! `spiffe` crate's [`X509Source`]; this module turns its SVID into an
//! [`X509Signer`]. The key stays in memory and is never logged.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ::spiffe::transport::Endpoint;
use ::spiffe::x509_source::SvidPicker;
use ::spiffe::{SpiffeId, X509Source, X509SourceError, X509Svid};
use attache_aws::cache::FetchError;
use attache_aws::request::error_chain;
use attache_pki::{PrivateKey, X509Signer};
use attache_rt::clock::Clock;
use tokio::sync::{Mutex, OnceCell};

/// The Workload API endpoint, as the SPIFFE spec writes it in
/// `SPIFFE_ENDPOINT_SOCKET`: `unix:///path/to/socket` (or `tcp://<ip>:<port>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpiffeEndpoint {
    uri: String,
    endpoint: Endpoint,
}

/// Why a `SPIFFE_ENDPOINT_SOCKET` value is not an endpoint.
#[derive(Debug, thiserror::Error)]
#[error(
    "{uri:?} is not a SPIFFE Workload API endpoint (expected unix:///path/to/socket): {source}"
)]
pub struct InvalidEndpoint {
    uri: String,
    #[source]
    source: ::spiffe::transport::EndpointError,
}

impl FromStr for SpiffeEndpoint {
    type Err = InvalidEndpoint;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        Endpoint::parse(uri)
            .map(|endpoint| SpiffeEndpoint {
                uri: uri.to_string(),
                endpoint,
            })
            .map_err(|source| InvalidEndpoint {
                uri: uri.to_string(),
                source,
            })
    }
}

impl fmt::Display for SpiffeEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl SpiffeEndpoint {
    /// The socket file of a `unix:` endpoint.
    fn socket_path(&self) -> Option<&Path> {
        match &self.endpoint {
            Endpoint::Unix(path) => Some(path),
            _ => None,
        }
    }
}

/// How to reach the Workload API and which SVID to use.
#[derive(Clone, Debug)]
pub struct SpiffeSourceConfig {
    /// The Workload API socket.
    pub endpoint: SpiffeEndpoint,
    /// The SVID to use; the Workload API's default (its first) when `None`.
    pub spiffe_id: Option<SpiffeId>,
    /// How long to wait for the first SVID before failing this attempt.
    pub first_svid_timeout: Duration,
}

/// Why no signer could be made from the Workload API.
#[derive(Debug, thiserror::Error)]
pub enum SpiffeError {
    /// The Workload API sent no (matching) SVID in time.
    #[error(
        "no X.509-SVID{} from the SPIFFE Workload API at {endpoint} within {timeout:?}{}",
        for_id(.spiffe_id.as_ref()),
        if_missing(*.socket_missing)
    )]
    NoSvid {
        /// The endpoint.
        endpoint: SpiffeEndpoint,
        /// The SPIFFE ID asked for.
        spiffe_id: Option<SpiffeId>,
        /// The bound on the wait.
        timeout: Duration,
        /// The `unix:` socket file was absent when the wait ended.
        socket_missing: bool,
        /// What the source reported.
        #[source]
        source: X509SourceError,
    },
    /// The source is running but holds no usable SVID now (withdrawn, expired, closed).
    #[error("SPIFFE Workload API at {endpoint}")]
    Source {
        /// The endpoint.
        endpoint: SpiffeEndpoint,
        /// What the source reported.
        #[source]
        source: X509SourceError,
    },
    /// The SVID's key could not be read, or does not match its certificate.
    #[error("X.509-SVID {spiffe_id} from {endpoint} is not usable")]
    Unusable {
        /// The endpoint.
        endpoint: SpiffeEndpoint,
        /// The SVID's SPIFFE ID.
        spiffe_id: SpiffeId,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn for_id(id: Option<&SpiffeId>) -> String {
    id.map(|id| format!(" for {id}")).unwrap_or_default()
}

fn if_missing(socket_missing: bool) -> &'static str {
    if socket_missing {
        " (the socket does not exist)"
    } else {
        ""
    }
}

/// Picks the SVID with one SPIFFE ID.
struct ById(SpiffeId);

impl SvidPicker for ById {
    fn pick_svid(&self, svids: &[Arc<X509Svid>]) -> Option<usize> {
        svids.iter().position(|s| *s.spiffe_id() == self.0)
    }
}

/// Certificates from the SPIFFE Workload API, following its rotations.
pub struct SpiffeSource {
    config: SpiffeSourceConfig,
    /// Started at the first [`SpiffeSource::signer`]; streams from then on.
    source: OnceCell<X509Source>,
    /// The signer made from the latest SVID, keyed by its leaf (DER).
    current: Mutex<Option<(Vec<u8>, Arc<X509Signer>)>>,
    metrics: crate::metrics::Metrics,
}

impl SpiffeSource {
    /// A source for `config` (nothing is connected until first use).
    pub fn new(config: SpiffeSourceConfig, metrics: crate::metrics::Metrics) -> Self {
        SpiffeSource {
            config,
            source: OnceCell::new(),
            current: Mutex::new(None),
            metrics,
        }
    }

    /// Connects and waits (bounded) for the first SVID; later calls reuse the stream.
    async fn stream(&self) -> Result<&X509Source, SpiffeError> {
        let c = &self.config;
        self.source
            .get_or_try_init(|| async {
                let builder = X509Source::builder()
                    .endpoint(&c.endpoint.uri)
                    .reconnect_backoff(Duration::from_millis(200), Duration::from_secs(10))
                    .initial_sync_timeout(c.first_svid_timeout);
                let builder = match &c.spiffe_id {
                    Some(id) => builder.picker(ById(id.clone())),
                    None => builder,
                };
                builder.build().await.map_err(|source| SpiffeError::NoSvid {
                    endpoint: c.endpoint.clone(),
                    spiffe_id: c.spiffe_id.clone(),
                    timeout: c.first_svid_timeout,
                    socket_missing: c.endpoint.socket_path().is_some_and(|p| !p.exists()),
                    source,
                })
            })
            .await
    }

    /// The signer for the latest SVID.
    pub async fn current(&self, clock: &dyn Clock) -> Result<Arc<X509Signer>, SpiffeError> {
        let endpoint = &self.config.endpoint;
        let svid = self
            .stream()
            .await?
            .svid()
            .map_err(|source| SpiffeError::Source {
                endpoint: endpoint.clone(),
                source,
            })?;
        let leaf = svid.leaf().as_bytes();
        let mut current = self.current.lock().await;
        if let Some((held, signer)) = current.as_ref()
            && held == leaf
        {
            return Ok(signer.clone());
        }
        let unusable = |source: Box<dyn std::error::Error + Send + Sync>| SpiffeError::Unusable {
            endpoint: endpoint.clone(),
            spiffe_id: svid.spiffe_id().clone(),
            source,
        };
        let key = PrivateKey::from_pkcs8_der(svid.private_key().as_bytes())
            .map_err(|e| unusable(e.into()))?;
        let chain = svid.cert_chain()[1..]
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let signer = X509Signer::new(leaf.to_vec(), chain, key).map_err(|e| unusable(e.into()))?;
        super::check_valid(signer.certificate(), clock.now()).map_err(|e| unusable(e.into()))?;
        let signer = Arc::new(signer);
        self.metrics.certificate_renewals.inc();
        tracing::info!(
            spiffe_id = %svid.spiffe_id(),
            serial = %signer.certificate().serial,
            not_after = %signer.certificate().not_after,
            "using X.509-SVID from the SPIFFE Workload API"
        );
        *current = Some((leaf.to_vec(), signer.clone()));
        Ok(signer)
    }

    pub(super) async fn signer(&self, clock: &dyn Clock) -> Result<Arc<X509Signer>, FetchError> {
        self.current(clock).await.map_err(|e| FetchError {
            kind: "certificate",
            retryable: true,
            message: error_chain(&e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_in_the_spec_form_parse_and_others_are_refused() {
        let ok: SpiffeEndpoint = "unix:///run/spire/agent.sock".parse().unwrap();
        assert_eq!(ok.to_string(), "unix:///run/spire/agent.sock");
        assert_eq!(ok.socket_path(), Some(Path::new("/run/spire/agent.sock")));
        for bad in [
            "/run/spire/agent.sock",
            "http://x/y",
            "unix://host/sock",
            "",
        ] {
            let err = bad.parse::<SpiffeEndpoint>().unwrap_err();
            assert!(err.to_string().contains("unix:///path"), "{bad}: {err}");
        }
    }
}
