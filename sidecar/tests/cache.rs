//! The refresh loop's timing and failure behaviour, against a scripted source
//! and a manual clock (no waiting for real hours).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use attache_aws::cache::{self, CredentialCache, CredentialSource, FetchError, RefreshPolicy};
use attache_aws::credentials::Credentials;
use attache_rt::clock::{Clock, ManualClock};
use attache_sidecar::metrics::Metrics;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

/// A source whose next answers the test scripts: Ok(lifetime) or Err(kind).
struct Scripted {
    clock: ManualClock,
    script: Mutex<Vec<Result<time::Duration, &'static str>>>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl CredentialSource for Scripted {
    async fn fetch(&self) -> Result<Credentials, FetchError> {
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        let next = {
            let mut s = self.script.lock().await;
            if s.is_empty() {
                Err("exhausted")
            } else {
                s.remove(0)
            }
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let now = self.clock.now();
        match next {
            Ok(lifetime) => Ok(Credentials {
                access_key_id: format!("ASIA{call}"),
                secret_access_key: Zeroizing::new("secret".into()),
                session_token: Zeroizing::new("token".into()),
                expiration: now + lifetime,
                issued_at: now,
                role_arn: "arn:aws:iam::123456789012:role/r".into(),
            }),
            Err(kind) => Err(FetchError {
                kind,
                retryable: kind != "denied",
                message: format!("scripted {kind}"),
            }),
        }
    }
}

impl Scripted {
    /// A source on `clock` giving the answers of `script` in turn.
    fn new(clock: &ManualClock, script: Vec<Result<time::Duration, &'static str>>) -> Arc<Self> {
        Arc::new(Scripted {
            clock: clock.clone(),
            script: Mutex::new(script),
            calls: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }

    /// How many fetches have started.
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn start(script: Vec<Result<time::Duration, &'static str>>) -> (Arc<Scripted>, ManualClock) {
    let clock = ManualClock::new(OffsetDateTime::now_utc());
    (Scripted::new(&clock, script), clock)
}

/// The refresh task over `src` with `policy`, on `src`'s clock, counting into `metrics`.
fn spawn(
    src: &Arc<Scripted>,
    policy: RefreshPolicy,
    metrics: Metrics,
) -> (CredentialCache, JoinHandle<()>) {
    cache::spawn(src.clone(), policy, Arc::new(src.clock.clone()), metrics)
}

async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

/// Moves `clock` on by `by`, then lets the refresh task act.
async fn advance(clock: &ManualClock, by: time::Duration) {
    clock.advance(by);
    settle().await;
}

const HOUR: time::Duration = time::Duration::hours(1);

/// A script of `n` failures of `kind`, then an hour-long set.
fn failures_then_success(
    kind: &'static str,
    n: usize,
) -> Vec<Result<time::Duration, &'static str>> {
    let mut script: Vec<_> = std::iter::repeat_n(Err(kind), n).collect();
    script.push(Ok(HOUR));
    script
}

/// Asserts that `metrics` holds `line`.
fn assert_metric(metrics: &Metrics, line: &str) {
    let text = metrics.encode();
    assert!(text.contains(line), "{text}");
}

#[tokio::test]
async fn refreshes_between_a_quarter_of_the_lifetime_and_the_margin() {
    let (src, clock) = start(vec![Ok(HOUR), Ok(HOUR), Ok(HOUR)]);
    let (mut cache, task) = spawn(&src, RefreshPolicy::default(), Metrics::default());
    cache.wait_ready().await;
    assert_eq!(cache.current().unwrap().access_key_id, "ASIA0");
    advance(&clock, time::Duration::minutes(14)).await;
    assert_eq!(
        src.calls(),
        1,
        "no refresh before a quarter of the lifetime"
    );
    // Spread over 15..45 min (a quarter of the lifetime up to 15 min before expiry).
    advance(&clock, time::Duration::minutes(31)).await;
    assert_eq!(src.calls(), 2);
    assert_eq!(cache.current().unwrap().access_key_id, "ASIA1");
    assert_eq!(
        src.max_in_flight.load(Ordering::SeqCst),
        1,
        "never two refreshes at once"
    );
    task.abort();
}

/// Sidecars started together (a rollout) do not refresh together: their
/// refreshes spread over the 30 minutes around half-life.
#[tokio::test]
async fn sidecars_started_together_refresh_at_different_times() {
    let clock = ManualClock::new(OffsetDateTime::now_utc());
    let mut pods = Vec::new();
    for _ in 0..20 {
        let src = Scripted::new(&clock, vec![Ok(HOUR), Ok(HOUR)]);
        let (mut cache, task) = spawn(&src, RefreshPolicy::default(), Metrics::default());
        cache.wait_ready().await;
        pods.push((src, task));
    }
    clock.advance(time::Duration::minutes(15));
    let mut refreshed_in_minute = Vec::new();
    for _ in 0..=30 {
        settle().await;
        let refreshed = pods.iter().filter(|(s, _)| s.calls() >= 2).count();
        refreshed_in_minute.push(refreshed);
        clock.advance(time::Duration::minutes(1));
    }
    assert_eq!(
        refreshed_in_minute.last(),
        Some(&20),
        "{refreshed_in_minute:?}"
    );
    let busiest = refreshed_in_minute
        .windows(2)
        .map(|w| w[1] - w[0])
        .chain([refreshed_in_minute[0]])
        .max()
        .unwrap_or(0);
    assert!(busiest <= 8, "refreshes bunched: {refreshed_in_minute:?}");
    for (_, task) in pods {
        task.abort();
    }
}

#[tokio::test]
async fn serves_the_cached_set_through_an_outage_then_reports_none_after_expiry() {
    let mut script = vec![Ok(HOUR)];
    script.extend(std::iter::repeat_n(Err("server"), 200));
    let (src, clock) = start(script);
    let metrics = Metrics::default();
    let (mut cache, task) = spawn(&src, RefreshPolicy::default(), metrics.clone());
    cache.wait_ready().await;
    // Step through the outage a minute at a time: retries back off but continue.
    for _ in 0..59 {
        advance(&clock, time::Duration::minutes(1)).await;
        assert!(
            cache.is_ready(),
            "the still-valid set is served during the outage"
        );
    }
    let calls_during_outage = src.calls();
    assert!(calls_during_outage >= 5, "retried: {calls_during_outage}");
    assert!(
        calls_during_outage < 60,
        "backed off, not one call per tick: {calls_during_outage}"
    );
    advance(&clock, time::Duration::minutes(2)).await;
    assert!(
        cache.current().is_none(),
        "expired credentials are never served"
    );
    assert!(!cache.is_ready());
    assert_metric(
        &metrics,
        "attache_sidecar_credential_refresh_failures_total{kind=\"server\"}",
    );
    task.abort();
}

#[tokio::test]
async fn backoff_delays_grow_between_failures() {
    let (src, clock) = start(failures_then_success("server", 6));
    let policy = RefreshPolicy {
        backoff_initial: Duration::from_secs(10),
        ..RefreshPolicy::default()
    };
    let (cache, task) = spawn(&src, policy, Metrics::default());
    settle().await;
    assert_eq!(src.calls(), 1);
    // Full jitter: the first retry comes within 2.5..10 s, never at once.
    advance(&clock, time::Duration::seconds(2)).await;
    assert_eq!(src.calls(), 1);
    advance(&clock, time::Duration::seconds(8)).await;
    assert_eq!(src.calls(), 2);
    // Eventually succeeds and is ready (delays up to 20, 40, ... 300 s: at most 610 s).
    for _ in 0..62 {
        advance(&clock, time::Duration::seconds(10)).await;
    }
    assert!(cache.is_ready());
    assert_eq!(src.calls(), 7);
    task.abort();
}

/// Throttling backs off too, but never longer than 10 s: the quota frees up
/// every second, so a throttled pod is ready soon after its turn comes.
#[tokio::test]
async fn throttled_retries_back_off_up_to_ten_seconds() {
    let (src, clock) = start(failures_then_success("throttled", 12));
    let metrics = Metrics::default();
    let (cache, task) = spawn(&src, RefreshPolicy::default(), metrics.clone());
    settle().await;
    // Delays up to 1, 2, 4, 8, then 10 s: at most 95 s for 12 throttles.
    let mut seconds = 0;
    while !cache.is_ready() && seconds < 200 {
        advance(&clock, time::Duration::seconds(1)).await;
        seconds += 1;
    }
    assert!(cache.is_ready() && seconds <= 96, "ready after {seconds} s");
    assert!(seconds >= 12 / 4, "not a hot loop: {seconds} s");
    assert_eq!(src.calls(), 13);
    assert_metric(
        &metrics,
        "attache_sidecar_credential_refresh_failures_total{kind=\"throttled\"} 12",
    );
    task.abort();
}

#[tokio::test]
async fn access_denied_is_retried_slowly() {
    let (src, clock) = start(vec![Err("denied"), Ok(HOUR)]);
    let (cache, task) = spawn(&src, RefreshPolicy::default(), Metrics::default());
    settle().await;
    advance(&clock, time::Duration::seconds(60)).await;
    assert_eq!(src.calls(), 1, "a configuration error is not hammered");
    advance(&clock, time::Duration::minutes(5)).await;
    assert_eq!(src.calls(), 2);
    assert!(cache.is_ready());
    task.abort();
}
