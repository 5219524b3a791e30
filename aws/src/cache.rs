//! The credential cache: holds the current set, refreshes it ahead of expiry
//! from one background task (so two refreshes never overlap), backs off with
//! jitter on failure, and keeps serving a still-valid set through outages.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::credentials::Credentials;
use attache_rt::clock::Clock;

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
    /// Longest retry delay after Roles Anywhere throttled the request
    /// (default 10 s): the quota frees up every second, so waiting minutes
    /// would only delay the pod; full jitter keeps retries from lining up.
    pub throttled_backoff_max: Duration,
    /// Share of the lifetime over which refreshes are spread at random,
    /// centred on the refresh time (default 0.5, read as 0..=1), so sidecars
    /// started together do not refresh together. Never before a quarter of
    /// the lifetime, never past `min_before_expiry` before expiry (or past
    /// `fraction` of the lifetime when that is later): a 1-hour session is
    /// refreshed between 15 and 45 minutes, a 12-hour one between 3 and 9
    /// hours.
    pub spread: f64,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            fraction: 0.5,
            min_before_expiry: Duration::from_secs(15 * 60),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(5 * 60),
            throttled_backoff_max: Duration::from_secs(10),
            spread: 0.5,
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

    /// The refresh time of a set, spread by `unit` (0..1, drawn at random
    /// per refresh) across the window `spread` describes. Like
    /// [`RefreshPolicy::refresh_at`], it lies after a quarter of the
    /// lifetime and before expiry.
    pub fn spread_refresh_at(
        &self,
        issued_at: OffsetDateTime,
        expiration: OffsetDateTime,
        unit: f64,
    ) -> OffsetDateTime {
        let at = self.refresh_at(issued_at, expiration);
        let lifetime = expiration - issued_at;
        let spread = if self.spread.is_finite() {
            self.spread.clamp(0.0, 1.0)
        } else {
            RefreshPolicy::default().spread
        };
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 0.999)
        } else {
            0.0
        };
        let fraction = if self.fraction.is_finite() {
            self.fraction.clamp(0.0, 0.95)
        } else {
            RefreshPolicy::default().fraction
        };
        // Never past the margin before expiry, or past the fraction's point
        // when the margin leaves no room (short sessions): both leave time
        // to retry. Never before a quarter of the lifetime.
        let by_margin = time::Duration::try_from(self.min_before_expiry)
            .ok()
            .and_then(|m| expiration.checked_sub(m))
            .unwrap_or(issued_at);
        let latest = by_margin.max(issued_at + lifetime * fraction);
        let floor: OffsetDateTime = issued_at + lifetime / 4;
        let half = lifetime * (spread / 2.0);
        let lo = (at - half).max(floor);
        let hi = (at + half).min(latest);
        if hi <= lo {
            return at;
        }
        lo + (hi - lo) * unit
    }

    /// The delay before retry number `attempt` (0-based): exponential from
    /// `backoff_initial` up to `backoff_max`, with full jitter (a random
    /// point of the whole interval, never below a quarter of
    /// `backoff_initial`) so many sidecars do not retry in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.capped_backoff(attempt, self.backoff_max, random_unit())
    }

    /// The delay before retry number `attempt` after a throttling error:
    /// as [`RefreshPolicy::backoff`], capped at `throttled_backoff_max`.
    pub fn throttled_backoff(&self, attempt: u32) -> Duration {
        let cap = self.throttled_backoff_max.min(self.backoff_max);
        self.capped_backoff(attempt, cap, random_unit())
    }

    /// The delay after an error that needs a configuration change (denied,
    /// invalid): between half of `backoff_max` and all of it, so a
    /// misconfigured pod is never retried fast, and many of them do not
    /// retry together.
    pub fn configuration_backoff(&self) -> Duration {
        let half = self.backoff_max / 2;
        half + half.mul_f64(random_unit())
    }

    fn capped_backoff(&self, attempt: u32, cap: Duration, unit: f64) -> Duration {
        let base = self
            .backoff_initial
            .saturating_mul(1u32 << attempt.min(20))
            .min(cap);
        let floor = (self.backoff_initial / 4).min(base);
        floor + (base - floor).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A uniform random number in `0..1` (0.5 if the system RNG fails).
pub fn random_unit() -> f64 {
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
    /// `GET /v1/credentials` body, shared by every response that carries
    /// it (no copy per request); zeroed when the last of them drops.
    pub container_json: bytes::Bytes,
}

impl Held {
    fn new(credentials: Credentials) -> Held {
        let container_json = bytes::Bytes::from_owner(zeroize::Zeroizing::new(
            serde_json::to_vec(&credentials.container_json()).unwrap_or_default(),
        ));
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

/// What the refresh engine reports as it goes: the hook a binary's metrics
/// hang on.
pub trait RefreshObserver: Send + Sync + 'static {
    /// A refresh obtained new credentials.
    fn refreshed(&self);
    /// A refresh failed; `kind` is [`FetchError::kind`].
    fn failed(&self, kind: &'static str);
}

/// Starts the refresh task and returns the cache it fills. The task runs
/// until the returned handle is aborted or the runtime shuts down.
pub fn spawn<S: CredentialSource, O: RefreshObserver>(
    source: S,
    policy: RefreshPolicy,
    clock: Arc<dyn Clock>,
    observer: O,
) -> (CredentialCache, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let cache = CredentialCache {
        current: rx,
        clock: clock.clone(),
    };
    let task = tokio::spawn(refresh_loop(source, policy, clock, observer, tx));
    (cache, task)
}

async fn refresh_loop<S: CredentialSource, O: RefreshObserver>(
    source: S,
    policy: RefreshPolicy,
    clock: Arc<dyn Clock>,
    observer: O,
    tx: watch::Sender<Option<Arc<Held>>>,
) {
    let mut failures: u32 = 0;
    loop {
        match source.fetch().await {
            Ok(creds) => {
                failures = 0;
                observer.refreshed();
                let next =
                    policy.spread_refresh_at(creds.issued_at, creds.expiration, random_unit());
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
                observer.failed(e.kind);
                let delay = if e.kind == "throttled" {
                    policy.throttled_backoff(failures)
                } else if e.retryable {
                    policy.backoff(failures)
                } else {
                    // Needs a configuration change: retry slowly, loudly.
                    policy.configuration_backoff()
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
        let late = RefreshPolicy {
            fraction: 0.95,
            ..p.clone()
        };
        let t0 = datetime!(2026-01-01 00:00 UTC);
        for (policy, lifetime, refresh_after) in [
            // 1 h session: half-life (30 min) comes before 45 min.
            (&p, time::Duration::hours(1), time::Duration::minutes(30)),
            // 12 h session: half-life is 6 h.
            (&p, time::Duration::hours(12), time::Duration::hours(6)),
            // With a late fraction, the 15-minute margin wins.
            (&late, time::Duration::hours(1), time::Duration::minutes(45)),
            // 15 min session: margin would be "now"; floor at a quarter of the lifetime.
            (
                &late,
                time::Duration::minutes(15),
                time::Duration::seconds(225),
            ),
        ] {
            assert_eq!(
                policy.refresh_at(t0, t0 + lifetime),
                t0 + refresh_after,
                "fraction {}, {lifetime} session",
                policy.fraction
            );
        }
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
    fn backoff_grows_with_full_jitter_and_is_capped() {
        let p = RefreshPolicy::default();
        for attempt in 0..12 {
            let base = (Duration::from_secs(1) * (1 << attempt)).min(p.backoff_max);
            for (unit, want) in [(0.0, Duration::from_millis(250)), (1.0, base)] {
                assert_eq!(p.capped_backoff(attempt, p.backoff_max, unit), want);
            }
            let d = p.backoff(attempt);
            assert!(
                d >= Duration::from_millis(250) && d <= base,
                "attempt {attempt}: {d:?} vs {base:?}"
            );
            let t = p.throttled_backoff(attempt);
            assert!(
                t >= Duration::from_millis(250) && t <= base.min(Duration::from_secs(10)),
                "throttled attempt {attempt}: {t:?}"
            );
        }
        for _ in 0..100 {
            let c = p.configuration_backoff();
            assert!(c >= p.backoff_max / 2 && c <= p.backoff_max, "{c:?}");
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(5)).collect();
        assert!(samples.len() > 1, "jitter varies the delay");
        // Spread over the whole interval, not its upper half.
        let low = (0..400)
            .filter(|_| p.backoff(5) < Duration::from_secs(16))
            .count();
        assert!(low > 100, "{low} of 400 delays in the lower half");
    }

    #[test]
    fn refreshes_spread_around_half_life_within_the_allowed_window() {
        let p = RefreshPolicy::default();
        let t0 = datetime!(2026-01-01 00:00 UTC);
        let at = |end: OffsetDateTime, unit: f64| p.spread_refresh_at(t0, end, unit) - t0;
        let close = |got: time::Duration, want: time::Duration| {
            (got - want).abs() <= time::Duration::seconds(45)
        };
        // 1 h session: 15 min (a quarter) to 45 min (15 min margin).
        let hour = t0 + time::Duration::hours(1);
        assert_eq!(at(hour, 0.0), time::Duration::minutes(15));
        assert_eq!(at(hour, 0.5), time::Duration::minutes(30));
        assert!(close(at(hour, 0.999), time::Duration::minutes(45)));
        assert!(at(hour, 0.999) < time::Duration::minutes(45));
        // 12 h session: 3 h to 9 h (half the lifetime around half-life).
        let long = t0 + time::Duration::hours(12);
        assert_eq!(at(long, 0.0), time::Duration::hours(3));
        assert!(close(at(long, 0.999), time::Duration::hours(9)));
        // 15 min session: the margin is the whole lifetime, so from a
        // quarter (3:45) up to half of it (7:30).
        let short = t0 + time::Duration::minutes(15);
        assert_eq!(at(short, 0.0), time::Duration::seconds(225));
        assert!(close(at(short, 0.999), time::Duration::seconds(450)));
        // No spread: the plain refresh time.
        let none = RefreshPolicy { spread: 0.0, ..p };
        assert_eq!(
            none.spread_refresh_at(t0, hour, 0.7),
            t0 + time::Duration::minutes(30)
        );
    }
}
