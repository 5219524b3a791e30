//! The credential cache: holds the current set, refreshes it ahead of expiry
//! from one background task (so two refreshes never overlap), backs off with
//! jitter on failure, and keeps serving a still-valid set through outages.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::credentials::Credentials;
use crate::metrics::Metrics;

/// When to refresh and how to back off.
#[derive(Clone, Debug)]
pub struct RefreshPolicy {
    /// Refresh once this fraction of the lifetime has passed (default 0.5;
    /// read as at most 0.95, and as 0.5 when not a number).
    pub fraction: f64,
    /// ...and never later than this long before expiry (default 15 min).
    pub min_before_expiry: Duration,
    /// First retry delay after a failure (default 1 s).
    pub backoff_initial: Duration,
    /// Longest retry delay (default 5 min).
    pub backoff_max: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            fraction: 0.5,
            min_before_expiry: Duration::from_secs(15 * 60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
        }
    }
}

impl RefreshPolicy {
    /// When a set obtained at `issued_at` and expiring at `expiration` is
    /// refreshed: at `fraction` of its lifetime, or `min_before_expiry` before
    /// it expires, whichever is first, but never before a quarter of the
    /// lifetime (so a 15-minute session is not refreshed in a tight loop).
    pub fn refresh_at(
        &self,
        issued_at: OffsetDateTime,
        expiration: OffsetDateTime,
    ) -> OffsetDateTime {
        let lifetime = expiration - issued_at;
        // Any settings are safe: a fraction of 1 would refresh only at expiry,
        // and a margin longer than the calendar (`--refresh-before 20000y`)
        // overflowed the date.
        let fraction = if self.fraction.is_finite() {
            self.fraction.clamp(0.0, 0.95)
        } else {
            RefreshPolicy::default().fraction
        };
        let by_fraction = issued_at + lifetime * fraction;
        let by_margin = time::Duration::try_from(self.min_before_expiry)
            .ok()
            .and_then(|m| expiration.checked_sub(m))
            .unwrap_or(issued_at);
        let floor = issued_at + lifetime / 4;
        by_fraction.min(by_margin).max(floor)
    }

    /// The delay before retry number `attempt` (0-based): exponential from
    /// `backoff_initial` up to `backoff_max`, with "equal jitter" (a random
    /// point in the upper half) so many sidecars do not retry in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .backoff_initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.backoff_max);
        let half = base / 2;
        half + half.mul_f64(random_unit())
    }
}

fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// A failed attempt to obtain credentials, classified.
#[derive(Clone, Debug)]
pub struct FetchError {
    /// Metric label, e.g. `throttled`, `denied`, `certificate`.
    pub kind: &'static str,
    /// Whether an immediate retry may help.
    pub retryable: bool,
    /// One line for the log; never contains a secret.
    pub message: String,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Something that can produce a fresh set of credentials.
pub trait CredentialSource: Send + Sync + 'static {
    /// Obtains a new set.
    fn fetch(&self) -> impl Future<Output = Result<Credentials, FetchError>> + Send;
}

impl<S: CredentialSource> CredentialSource for Arc<S> {
    fn fetch(&self) -> impl Future<Output = Result<Credentials, FetchError>> + Send {
        self.as_ref().fetch()
    }
}

/// One held set and its container-credentials JSON, serialized once per
/// refresh instead of once per request.
pub struct Held {
    /// The credentials.
    pub credentials: Arc<Credentials>,
    /// `GET /v1/credentials` body; zeroed on drop.
    pub container_json: zeroize::Zeroizing<Vec<u8>>,
}

impl Held {
    fn new(credentials: Credentials) -> Held {
        let container_json = zeroize::Zeroizing::new(
            serde_json::to_vec(&credentials.container_json()).unwrap_or_default(),
        );
        Held {
            credentials: Arc::new(credentials),
            container_json,
        }
    }
}

/// The read side of the cache, cheap to clone into request handlers.
#[derive(Clone)]
pub struct CredentialCache {
    current: watch::Receiver<Option<Arc<Held>>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialCache")
            .field(
                "current",
                &self
                    .current
                    .borrow()
                    .as_ref()
                    .map(|h| h.credentials.clone()),
            )
            .finish()
    }
}

impl CredentialCache {
    /// The held set if it is still valid now.
    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current_held().map(|h| h.credentials.clone())
    }

    /// The held set and its serialized JSON, if still valid now.
    pub fn current_held(&self) -> Option<Arc<Held>> {
        let now = self.clock.now();
        self.current
            .borrow()
            .clone()
            .filter(|h| h.credentials.is_valid_at(now))
    }

    /// Ready = a valid set is held.
    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    /// Seconds until the held set expires (negative once expired), if any.
    pub fn seconds_until_expiry(&self) -> Option<i64> {
        let now = self.clock.now();
        self.current
            .borrow()
            .as_ref()
            .map(|h| (h.credentials.expiration - now).whole_seconds())
    }

    /// Waits until a valid set is held.
    pub async fn wait_ready(&mut self) {
        loop {
            if self.is_ready() {
                return;
            }
            if self.current.changed().await.is_err() {
                return;
            }
        }
    }

    /// The clock the cache judges validity by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

/// Starts the refresh task and returns the cache it fills. The task runs
/// until the returned handle is aborted or the runtime shuts down.
pub fn spawn<S: CredentialSource>(
    source: S,
    policy: RefreshPolicy,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
) -> (CredentialCache, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let cache = CredentialCache {
        current: rx,
        clock: clock.clone(),
    };
    let task = tokio::spawn(refresh_loop(source, policy, clock, metrics, tx));
    (cache, task)
}

async fn refresh_loop<S: CredentialSource>(
    source: S,
    policy: RefreshPolicy,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    tx: watch::Sender<Option<Arc<Held>>>,
) {
    let mut failures: u32 = 0;
    loop {
        match source.fetch().await {
            Ok(creds) => {
                failures = 0;
                metrics.refreshes.inc();
                let next = policy.refresh_at(creds.issued_at, creds.expiration);
                tracing::info!(
                    role_arn = %creds.role_arn,
                    access_key_id = %creds.access_key_id,
                    expiration = %creds.expiration_rfc3339(),
                    next_refresh = %crate::credentials::rfc3339(next),
                    "obtained AWS credentials"
                );
                tx.send_replace(Some(Arc::new(Held::new(creds))));
                clock.sleep_until(next).await;
            }
            Err(e) => {
                metrics
                    .refresh_failures
                    .get_or_create(&crate::metrics::KindLabel {
                        kind: e.kind.to_string(),
                    })
                    .inc();
                let delay = if e.retryable {
                    policy.backoff(failures)
                } else {
                    // Needs a configuration change: retry slowly, loudly.
                    policy.backoff(u32::MAX / 2)
                };
                failures = failures.saturating_add(1);
                let held = tx.borrow().as_ref().map(|h| h.credentials.expiration);
                let now = clock.now();
                match held {
                    Some(exp) if exp > now => tracing::warn!(
                        kind = e.kind,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        serving_until = %crate::credentials::rfc3339(exp),
                        "credential refresh failed; serving the cached set until it expires"
                    ),
                    _ => tracing::error!(
                        kind = e.kind,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "credential refresh failed and no valid credentials are held"
                    ),
                }
                clock.sleep_until(now + delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn refresh_happens_at_half_life_or_fifteen_minutes_before_expiry() {
        let p = RefreshPolicy::default();
        let t0 = datetime!(2026-01-01 00:00 UTC);
        // 1 h session: half-life (30 min) comes before 45 min.
        assert_eq!(
            p.refresh_at(t0, t0 + time::Duration::hours(1)),
            t0 + time::Duration::minutes(30)
        );
        // 12 h session: half-life is 6 h.
        assert_eq!(
            p.refresh_at(t0, t0 + time::Duration::hours(12)),
            t0 + time::Duration::hours(6)
        );
        // With a late fraction, the 15-minute margin wins.
        let late = RefreshPolicy {
            fraction: 0.95,
            ..p.clone()
        };
        assert_eq!(
            late.refresh_at(t0, t0 + time::Duration::hours(1)),
            t0 + time::Duration::minutes(45)
        );
        // 15 min session: margin would be "now"; floor at a quarter of the lifetime.
        assert_eq!(
            late.refresh_at(t0, t0 + time::Duration::minutes(15)),
            t0 + time::Duration::seconds(225)
        );
    }

    /// Found writing the refresh-schedule property (tests/properties.rs): a
    /// `--refresh-before` past the calendar's end panicked (date overflow), a
    /// fraction of 1 scheduled the refresh at expiry, a NaN one panicked.
    #[test]
    fn extreme_settings_still_refresh_between_a_quarter_of_the_lifetime_and_expiry() {
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let exp = t0 + time::Duration::hours(1);
        for policy in [
            RefreshPolicy {
                min_before_expiry: Duration::from_secs(20_000 * 366 * 24 * 3600),
                ..RefreshPolicy::default()
            },
            RefreshPolicy {
                min_before_expiry: Duration::MAX,
                ..RefreshPolicy::default()
            },
            RefreshPolicy {
                fraction: 1.0,
                min_before_expiry: Duration::ZERO,
                ..RefreshPolicy::default()
            },
            RefreshPolicy {
                fraction: f64::NAN,
                ..RefreshPolicy::default()
            },
            RefreshPolicy {
                fraction: f64::INFINITY,
                min_before_expiry: Duration::ZERO,
                ..RefreshPolicy::default()
            },
        ] {
            let at = policy.refresh_at(t0, exp);
            assert!(
                at >= t0 + time::Duration::minutes(15) && at < exp,
                "{policy:?}: {at}"
            );
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        let p = RefreshPolicy::default();
        for attempt in 0..12 {
            let d = p.backoff(attempt);
            let base = (Duration::from_secs(1) * (1 << attempt)).min(p.backoff_max);
            assert!(
                d >= base / 2 && d <= base,
                "attempt {attempt}: {d:?} vs {base:?}"
            );
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(5)).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
    }
}
