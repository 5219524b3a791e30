//! Prometheus metrics of the sidecar. Labels never carry secrets.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label for failures by kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `throttled`, `server`, `denied`, `invalid`, `timeout`, `network`, `certificate`, ...
    pub kind: String,
}

/// Label for served requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabel {
    /// Route, e.g. `/v1/credentials`.
    pub path: &'static str,
    /// HTTP status code.
    pub status: u16,
}

/// Every metric the sidecar exports, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Successful credential refreshes.
    pub refreshes: Counter,
    /// Failed refreshes by kind.
    pub refresh_failures: Family<KindLabel, Counter>,
    /// Seconds until the held credentials expire (set at scrape time).
    pub expiry_seconds: Gauge,
    /// Requests served by path and status.
    pub requests: Family<RequestLabel, Counter>,
    /// Certificates obtained from the broker or re-read from files.
    pub certificate_renewals: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("attache_sidecar");
        let refreshes = Counter::default();
        let refresh_failures = Family::<KindLabel, Counter>::default();
        let expiry_seconds = Gauge::default();
        let requests = Family::<RequestLabel, Counter>::default();
        let certificate_renewals = Counter::default();
        registry.register(
            "credential_refreshes",
            "Successful CreateSession refreshes",
            refreshes.clone(),
        );
        registry.register(
            "credential_refresh_failures",
            "Failed credential refreshes by kind",
            refresh_failures.clone(),
        );
        registry.register(
            "credentials_expiry_seconds",
            "Seconds until the held credentials expire (negative: expired, absent: none held)",
            expiry_seconds.clone(),
        );
        registry.register(
            "http_requests",
            "Requests served by path and status",
            requests.clone(),
        );
        registry.register(
            "certificate_renewals",
            "Workload certificates obtained or reloaded",
            certificate_renewals.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            refreshes,
            refresh_failures,
            expiry_seconds,
            requests,
            certificate_renewals,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl attache_aws::cache::RefreshObserver for Metrics {
    fn refreshed(&self) {
        self.refreshes.inc();
    }

    fn failed(&self, kind: &'static str) {
        self.refresh_failures
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }
}
