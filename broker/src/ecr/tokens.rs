//! The shared registry-password cache: one ECR token per (role, region,
//! profile), used by every ServiceAccount that needs it and that AWS accepted
//! for the role (see [`super::credentials`]), refreshed on a jittered schedule,
//! with per-pair backoff so failures never multiply AWS calls. Tokens are
//! adopted only from attache's own state Secret ([`super::state`]), never from
//! objects tenants can write.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attache_aws::cache::RefreshPolicy;
use attache_aws::credentials::Credentials;
use attache_rt::clock::Clock;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::metrics::Metrics;
use attache_aws::ecr::TokenClient;

/// ECR's token lifetime: nothing adopted is believed to last longer.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The unit of sharing of a registry token: the role, the ECR region and the
/// Roles Anywhere profile it was obtained through (a profile may restrict the
/// session with session policies, so tokens obtained through different
/// profiles are never mixed).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pair {
    /// The IAM role ARN the token's session assumed.
    pub role: String,
    /// The ECR region the token is for.
    pub region: String,
    /// The Roles Anywhere profile ARN the session was created through.
    pub profile: String,
}

impl Pair {
    /// The token scope of `role` in `region` through `profile`.
    pub fn new(
        role: impl Into<String>,
        region: impl Into<String>,
        profile: impl Into<String>,
    ) -> Self {
        Pair {
            role: role.into(),
            region: region.into(),
            profile: profile.into(),
        }
    }
}

/// A registry password and its times on the controller's clock. `Debug`
/// never shows the password.
#[derive(Clone)]
pub struct Token {
    /// The password (user `AWS`).
    pub password: Arc<Zeroizing<String>>,
    /// When it was obtained.
    pub obtained_at: OffsetDateTime,
    /// When ECR stops accepting it.
    pub expires_at: OffsetDateTime,
}

#[cfg(test)]
impl Token {
    /// A token with `password`, obtained 2026-01-01 00:00 UTC, lasting 12 hours.
    pub(crate) fn fixture(password: &str) -> Token {
        let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
        Token {
            password: Arc::new(Zeroizing::new(password.into())),
            obtained_at: t0,
            expires_at: t0 + time::Duration::hours(12),
        }
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A failed refresh, safe to show.
#[derive(Clone, Debug)]
pub struct TokenFailure {
    /// Metric label.
    pub kind: String,
    /// One line, no secrets.
    pub message: String,
}

#[derive(Default)]
struct PairState {
    token: Option<Token>,
    /// When the held token is refreshed (jitter drawn once per token).
    due: Option<OffsetDateTime>,
    failures: u32,
    next_attempt: Option<OffsetDateTime>,
    last_error: Option<TokenFailure>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// Refresh settings.
#[derive(Clone, Debug)]
pub struct TokenPolicy {
    /// Regular refresh period.
    pub refresh_interval: Duration,
    /// Refresh when less than this is left.
    pub min_remaining: Duration,
    /// Fraction of the interval drawn at random and subtracted (0.1 = up to 10% earlier).
    pub jitter: f64,
    /// Backoff after failures.
    pub backoff: RefreshPolicy,
}

/// The per-(role, region) token cache.
pub struct Tokens {
    client: TokenClient,
    clock: Arc<dyn Clock>,
    policy: TokenPolicy,
    metrics: Metrics,
    pairs: Mutex<HashMap<Pair, PairState>>,
    /// Woken whenever a schedule changes.
    pub changed: tokio::sync::Notify,
    /// Woken whenever a new token was obtained from AWS (to persist it).
    pub fetched: tokio::sync::Notify,
}

fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

impl Tokens {
    /// An empty cache.
    pub fn new(
        client: TokenClient,
        clock: Arc<dyn Clock>,
        policy: TokenPolicy,
        metrics: Metrics,
    ) -> Self {
        Tokens {
            client,
            clock,
            policy,
            metrics,
            pairs: Mutex::new(HashMap::new()),
            changed: tokio::sync::Notify::new(),
            fetched: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Pair, PairState>> {
        self.pairs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn due_for(&self, t: &Token) -> OffsetDateTime {
        let jitter = self
            .policy
            .refresh_interval
            .mul_f64(self.policy.jitter.clamp(0.0, 0.5) * random_unit());
        let by_interval = t.obtained_at + self.policy.refresh_interval.saturating_sub(jitter);
        let by_remaining = t.expires_at - self.policy.min_remaining;
        let floor = t.obtained_at + (t.expires_at - t.obtained_at) / 4;
        by_interval.min(by_remaining).max(floor)
    }

    /// Offers a token from attache's own state Secret (after a restart or a
    /// leader hand-over); its times are clamped first (`obtained_at <= now`,
    /// `expires_at <= now + 12 h` and `<= obtained_at + 12 h`); kept if it is
    /// newer than what is held and still has more than `min_remaining` left.
    pub fn adopt(&self, pair: &Pair, mut token: Token) -> bool {
        let now = self.clock.now();
        token.obtained_at = token.obtained_at.min(now);
        token.expires_at = token
            .expires_at
            .min(now + MAX_TOKEN_LIFETIME)
            .min(token.obtained_at + MAX_TOKEN_LIFETIME);
        if token.password.is_empty() || token.expires_at - now <= self.policy.min_remaining {
            return false;
        }
        let mut pairs = self.lock();
        let st = pairs.entry(pair.clone()).or_default();
        if st
            .token
            .as_ref()
            .is_some_and(|t| t.obtained_at >= token.obtained_at)
        {
            return false;
        }
        st.due = Some(self.due_for(&token));
        st.token = Some(token);
        drop(pairs);
        self.changed.notify_one();
        true
    }

    /// Every held token (for the state Secret).
    pub fn snapshot(&self) -> Vec<(Pair, Token)> {
        self.lock()
            .iter()
            .filter_map(|(p, st)| st.token.clone().map(|t| (p.clone(), t)))
            .collect()
    }

    /// The held token while it has more than `min_remaining` left.
    pub fn held(&self, pair: &Pair) -> Option<Token> {
        self.lock().get(pair).and_then(|st| self.usable(st))
    }

    /// The token to write for `pair`: the held one while it has more than
    /// `min_remaining` left, else a fresh one fetched with the credentials
    /// `credentials` gives (one request at a time per pair; callers waiting
    /// share the result). While AWS fails, a held token that is still valid
    /// is returned.
    pub async fn get<F, Fut>(&self, pair: &Pair, credentials: F) -> Result<Token, TokenFailure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Credentials>, TokenFailure>>,
    {
        let lock = {
            let mut pairs = self.lock();
            let st = pairs.entry(pair.clone()).or_default();
            if let Some(t) = self.usable(st) {
                return Ok(t);
            }
            st.lock.clone()
        };
        let _guard = lock.lock().await;
        {
            let pairs = self.lock();
            if let Some(st) = pairs.get(pair) {
                if let Some(t) = self.usable(st) {
                    return Ok(t);
                }
                if let Some(at) = st.next_attempt
                    && self.clock.now() < at
                {
                    return self.fallback(st);
                }
            }
        }
        self.fetch_locked(pair, credentials).await
    }

    fn usable(&self, st: &PairState) -> Option<Token> {
        let t = st.token.as_ref()?;
        (t.expires_at - self.clock.now() > self.policy.min_remaining).then(|| t.clone())
    }

    fn fallback(&self, st: &PairState) -> Result<Token, TokenFailure> {
        match &st.token {
            Some(t) if t.expires_at > self.clock.now() => Ok(t.clone()),
            _ => Err(st.last_error.clone().unwrap_or(TokenFailure {
                kind: "unavailable".into(),
                message: "no ECR token yet".into(),
            })),
        }
    }

    /// Fetches now for a pair whose refresh is due (the scheduler calls this).
    /// Returns whether a new token was stored.
    pub async fn refresh<F, Fut>(&self, pair: &Pair, credentials: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Credentials>, TokenFailure>>,
    {
        let lock = self.lock().entry(pair.clone()).or_default().lock.clone();
        let _guard = lock.lock().await;
        {
            let pairs = self.lock();
            if let Some(st) = pairs.get(pair)
                && st.due.is_some_and(|d| d > self.clock.now())
                && st.next_attempt.is_none()
            {
                return false; // someone refreshed it meanwhile
            }
        }
        // A failure may still hand back the held token: success means a new one.
        let _ = self.fetch_locked(pair, credentials).await;
        self.failing(pair).is_none()
    }

    async fn fetch_locked<F, Fut>(&self, pair: &Pair, credentials: F) -> Result<Token, TokenFailure>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Credentials>, TokenFailure>>,
    {
        let Pair { role, region, .. } = pair;
        let started = self.clock.now();
        let result = match credentials().await {
            Err(e) => Err(e),
            Ok(creds) => self
                .client
                .get_authorization_token(&creds, region)
                .await
                .map_err(|e| {
                    Metrics::count(&self.metrics.ecr_refresh_failures, e.kind());
                    TokenFailure {
                        kind: e.kind().to_string(),
                        message: e.to_string(),
                    }
                }),
        };
        let now = self.clock.now();
        let mut pairs = self.lock();
        let st = pairs.entry(pair.clone()).or_default();
        let out = match result {
            Ok(issued) => {
                let token = Token {
                    password: Arc::new(issued.password),
                    obtained_at: started,
                    expires_at: started + issued.lifetime,
                };
                st.due = Some(self.due_for(&token));
                st.token = Some(token.clone());
                st.failures = 0;
                st.next_attempt = None;
                st.last_error = None;
                tracing::info!(
                    role_arn = %role,
                    region = %region,
                    expires_at = %attache_aws::credentials::rfc3339(token.expires_at),
                    "obtained an ECR registry token"
                );
                Ok(token)
            }
            Err(e) => {
                let delay = self.policy.backoff.backoff(st.failures);
                st.failures = st.failures.saturating_add(1);
                st.next_attempt = Some(now + delay);
                st.last_error = Some(e.clone());
                let valid_until = st.token.as_ref().map(|t| t.expires_at).filter(|e| *e > now);
                tracing::warn!(
                    role_arn = %role,
                    region = %region,
                    kind = %e.kind,
                    error = %e.message,
                    retry_in_ms = delay.as_millis() as u64,
                    keeping_until = ?valid_until.map(attache_aws::credentials::rfc3339),
                    "ECR token refresh failed"
                );
                match valid_until {
                    Some(_) => self.fallback(st),
                    None => Err(e),
                }
            }
        };
        drop(pairs);
        self.update_gauge();
        self.changed.notify_one();
        if out.is_ok() && self.failing(pair).is_none() {
            self.fetched.notify_one();
        }
        out
    }

    /// Drops `pair` (nobody uses it any more).
    pub fn forget(&self, pair: &Pair) {
        self.lock().remove(pair);
    }

    /// The latest failure of `pair` while it is failing.
    pub fn failing(&self, pair: &Pair) -> Option<(u32, TokenFailure)> {
        let pairs = self.lock();
        let st = pairs.get(pair)?;
        st.last_error.clone().map(|e| (st.failures, e))
    }

    /// The earliest moment some pair needs attention, and the pairs due now.
    pub fn schedule(&self) -> (Option<OffsetDateTime>, Vec<Pair>) {
        let now = self.clock.now();
        let pairs = self.lock();
        let mut next: Option<OffsetDateTime> = None;
        let mut due = vec![];
        for (pair, st) in pairs.iter() {
            let at = match (st.next_attempt, st.due) {
                (Some(a), _) => Some(a),
                (None, d) => d,
            };
            let Some(at) = at else { continue };
            if at <= now {
                due.push(pair.clone());
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (next, due)
    }

    fn update_gauge(&self) {
        let now = self.clock.now();
        let soonest = self
            .lock()
            .values()
            .filter_map(|st| st.token.as_ref().map(|t| t.expires_at))
            .min();
        if let Some(exp) = soonest {
            self.metrics
                .ecr_token_expiry_seconds
                .set((exp - now).whole_seconds());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use attache_rt::clock::ManualClock;

    fn tokens(clock: &ManualClock) -> Tokens {
        Tokens::new(
            TokenClient::new(Default::default(), Duration::from_secs(1)).unwrap(),
            Arc::new(clock.clone()),
            TokenPolicy {
                refresh_interval: Duration::from_secs(6 * 3600),
                min_remaining: Duration::from_secs(4 * 3600),
                jitter: 0.0,
                backoff: RefreshPolicy::default(),
            },
            Metrics::default(),
        )
    }

    fn pair() -> Pair {
        Pair::new(
            "arn:aws:iam::1:role/r",
            "us-east-1",
            "arn:aws:rolesanywhere:us-east-1:1:profile/p",
        )
    }

    #[test]
    fn adopted_times_are_clamped_to_now_and_twelve_hours() {
        let now = time::macros::datetime!(2026-01-01 00:00 UTC);
        let clock = ManualClock::new(now);
        let t = tokens(&clock);
        let far = Token {
            password: Arc::new(Zeroizing::new("pw".into())),
            obtained_at: now + time::Duration::hours(1),
            expires_at: now + time::Duration::days(3650),
        };
        assert!(t.adopt(&pair(), far));
        let held = t.held(&pair()).unwrap();
        assert_eq!(held.obtained_at, now);
        assert_eq!(held.expires_at, now + time::Duration::hours(12));
        // Too little left after clamping, or no password: not adopted.
        let t = tokens(&clock);
        let old = Token {
            password: Arc::new(Zeroizing::new("pw".into())),
            obtained_at: now - time::Duration::hours(10),
            expires_at: now + time::Duration::days(1),
        };
        assert!(!t.adopt(&pair(), old), "obtained 10 h ago: 2 h left");
        let empty = Token {
            password: Arc::new(Zeroizing::new(String::new())),
            obtained_at: now,
            expires_at: now + time::Duration::hours(12),
        };
        assert!(!t.adopt(&pair(), empty));
        assert!(t.held(&pair()).is_none());
    }
}
