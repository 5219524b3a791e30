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
        m.register_broker(&mut r);
        m.register_ecr(&mut r);
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }
}

impl Metrics {
    /// The webhook's, the certificate API's and revocation's metrics.
    fn register_broker(&self, r: &mut Registry) {
        r.register(
            "certificates_issued",
            "Workload certificates issued",
            self.certificates_issued.clone(),
        );
        r.register(
            "certificates_refused",
            "Certificate requests refused, by reason",
            self.certificates_refused.clone(),
        );
        r.register(
            "admissions",
            "Admission reviews by decision",
            self.admissions.clone(),
        );
        r.register(
            "admission_duration_seconds",
            "Seconds the webhook took to answer an admission review",
            self.admission_duration.clone(),
        );
        r.register(
            "token_review_cache_hits",
            "TokenReview results served from cache",
            self.token_cache_hits.clone(),
        );
        r.register(
            "token_reviews",
            "TokenReviews sent to the API server",
            self.token_reviews.clone(),
        );
        r.register(
            "certificates_revoked",
            "Workload certificates revoked, by reason",
            self.certificates_revoked.clone(),
        );
        r.register(
            "crl_pushes",
            "CRL pushes to IAM Roles Anywhere, by result",
            self.crl_pushes.clone(),
        );
    }

    /// The ECR controller's metrics.
    fn register_ecr(&self, r: &mut Registry) {
        r.register(
            "ecr_secrets_written",
            "ECR pull secrets created or updated",
            self.ecr_secrets_written.clone(),
        );
        r.register(
            "ecr_refresh_failures",
            "ECR token refresh failures by reason",
            self.ecr_refresh_failures.clone(),
        );
        r.register(
            "ecr_token_expiry_seconds",
            "Seconds until the soonest-expiring ECR token attache manages expires",
            self.ecr_token_expiry_seconds.clone(),
        );
        r.register(
            "ecr_queue_depth",
            "ServiceAccounts queued or being reconciled by the ECR controller",
            self.ecr_queue_depth.clone(),
        );
    }

    /// Every family labelled by reason. prometheus-client encodes nothing, not
    /// even `# TYPE`, for a family without a series, so tests give each of
    /// these one. The pattern names every field: a new field does not compile
    /// until it is sorted here.
    pub fn reason_families(&self) -> [&Family<Reason, Counter>; 5] {
        let Metrics {
            registry: _,
            certificates_issued: _,
            admission_duration: _,
            token_cache_hits: _,
            token_reviews: _,
            ecr_secrets_written: _,
            ecr_token_expiry_seconds: _,
            ecr_queue_depth: _,
            certificates_refused,
            admissions,
            ecr_refresh_failures,
            certificates_revoked,
            crl_pushes,
        } = self;
        [
            certificates_refused,
            admissions,
            ecr_refresh_failures,
            certificates_revoked,
            crl_pushes,
        ]
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed_under_the_attache_prefix() {
        let m = Metrics::default();
        // A family shows only once it has a label set.
        for family in m.reason_families() {
            Metrics::count(family, "test");
        }
        let text = m.encode();
        for name in [
            "certificates_issued",
            "certificates_refused",
            "admissions",
            "admission_duration_seconds",
            "token_review_cache_hits",
            "token_reviews",
            "ecr_secrets_written",
            "ecr_refresh_failures",
            "ecr_token_expiry_seconds",
            "ecr_queue_depth",
            "certificates_revoked",
            "crl_pushes",
        ] {
            assert!(
                text.contains(&format!("# TYPE attache_{name} ")),
                "attache_{name} missing:\n{text}"
            );
        }
    }
}
