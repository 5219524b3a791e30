//! Prometheus metrics of the broker. Labels never carry tokens or keys.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A single `reason`/`decision` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Short machine-readable reason.
    pub reason: String,
}

/// Every broker metric, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Workload certificates issued.
    pub certificates_issued: Counter,
    /// Certificate requests refused, by reason.
    pub certificates_refused: Family<Reason, Counter>,
    /// Admission reviews by decision (`injected`, `skipped`, `denied`, `invalid`).
    pub admissions: Family<Reason, Counter>,
    /// Seconds the webhook took to answer an admission review.
    pub admission_duration: Histogram,
    /// TokenReview cache hits.
    pub token_cache_hits: Counter,
    /// TokenReviews sent to the API server.
    pub token_reviews: Counter,
    /// ECR pull secrets written.
    pub ecr_secrets_written: Counter,
    /// ECR token refresh failures by reason.
    pub ecr_refresh_failures: Family<Reason, Counter>,
    /// Seconds until the soonest-expiring ECR token managed expires.
    pub ecr_token_expiry_seconds: Gauge,
    /// ServiceAccounts queued or being reconciled by the ECR controller.
    pub ecr_queue_depth: Gauge,
    /// Certificates revoked, by reason (`pod_deleted`, `requested`).
    pub certificates_revoked: Family<Reason, Counter>,
    /// CRL pushes to Roles Anywhere, by result (`imported`, `updated`, `failed`).
    pub crl_pushes: Family<Reason, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("attache");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            certificates_issued: Counter::default(),
            certificates_refused: Family::default(),
            admissions: Family::default(),
            // 0.1 ms .. about 3.3 s.
            admission_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            token_cache_hits: Counter::default(),
            token_reviews: Counter::default(),
            ecr_secrets_written: Counter::default(),
            ecr_refresh_failures: Family::default(),
            ecr_token_expiry_seconds: Gauge::default(),
            ecr_queue_depth: Gauge::default(),
            certificates_revoked: Family::default(),
            crl_pushes: Family::default(),
        };
        r.register(
            "certificates_issued",
            "Workload certificates issued",
            m.certificates_issued.clone(),
        );
        r.register(
            "certificates_refused",
            "Certificate requests refused, by reason",
            m.certificates_refused.clone(),
        );
        r.register(
            "admissions",
            "Admission reviews by decision",
            m.admissions.clone(),
        );
        r.register(
            "admission_duration_seconds",
            "Seconds the webhook took to answer an admission review",
            m.admission_duration.clone(),
        );
        r.register(
            "token_review_cache_hits",
            "TokenReview results served from cache",
            m.token_cache_hits.clone(),
        );
        r.register(
            "token_reviews",
            "TokenReviews sent to the API server",
            m.token_reviews.clone(),
        );
        r.register(
            "ecr_secrets_written",
            "ECR pull secrets created or updated",
            m.ecr_secrets_written.clone(),
        );
        r.register(
            "ecr_refresh_failures",
            "ECR token refresh failures by reason",
            m.ecr_refresh_failures.clone(),
        );
        r.register(
            "ecr_token_expiry_seconds",
            "Seconds until the soonest-expiring ECR token attache manages expires",
            m.ecr_token_expiry_seconds.clone(),
        );
        r.register(
            "ecr_queue_depth",
            "ServiceAccounts queued or being reconciled by the ECR controller",
            m.ecr_queue_depth.clone(),
        );
        r.register(
            "certificates_revoked",
            "Workload certificates revoked, by reason",
            m.certificates_revoked.clone(),
        );
        r.register(
            "crl_pushes",
            "CRL pushes to IAM Roles Anywhere, by result",
            m.crl_pushes.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }
}

impl Metrics {
    /// Counts one event with a reason label.
    pub fn count(family: &Family<Reason, Counter>, reason: &str) {
        family
            .get_or_create(&Reason {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
