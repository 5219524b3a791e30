//! `cargo xtask bench scale` (or `cargo bench -p attache-sidecar --bench
//! scale`): the sidecar's refresh engines at cluster scale against Roles
//! Anywhere's CreateSession quota (10 per second per account and region by
//! default), enforced by the in-process AWS emulator.
//!
//! Every simulated pod runs what a sidecar runs: its own certificate and key
//! in files (`FileSource`), the CreateSession client (`SessionClient`,
//! SigV4-X509 signing, HTTP to the emulator), the credential cache and its
//! refresh task (`cache::spawn` with the default `RefreshPolicy`: spread
//! refreshes, full-jitter backoff). Only time is simulated: the engines and
//! the emulator (signing time, certificate validity, credential expiry, the
//! quota) share one `ScaledClock` that runs 10 times faster than real time
//! while a rollout is throttled and 100 times faster afterwards, so hours
//! pass in minutes; a watchdog stops that clock while the machine stalls. The pods share one HTTP connection pool (a pool per pod
//! changes nothing the quota sees). An app's credential request is modelled
//! as reading the cache the endpoint serves from (`CredentialCache::current`),
//! once per pod per simulated second (rollout) or five seconds (steady).
//!
//! Prints on stdout exactly:
//!
//! ```text
//! rollout pods=1000 quota=10 ready_p50=<s>s ready_max=<s>s throttled=<n> sdk_failures=<n>
//! steady pods=10000 quota=10 peak_tps=<x> mean_tps=<x> expired_windows=<n>
//! ```
//!
//! - rollout: 1,000 pods start at the same moment; `ready_*` is the time from
//!   start to the first credentials; `throttled` counts CreateSession calls the
//!   quota refused; `sdk_failures` counts credential requests that found no
//!   valid set after the pod was ready, over 90 simulated minutes.
//! - steady: 10,000 pods start at the rate the quota admits (10 per second,
//!   what a cluster-wide restart settles into); then, over hours 2 to 6,
//!   `peak_tps` is the highest CreateSession rate (refused calls included) over
//!   any 60-second window, `mean_tps` the mean, and `expired_windows` counts
//!   the times a pod that had been ready held no valid set.
//!
//! How the settings and the windows were chosen: docs/sizing.md. Figures are
//! printed, never asserted.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attache_aws::cache::{self, CredentialCache, RefreshPolicy};
use attache_aws::session::{SessionClient, SessionConfig};
use attache_emulator::{Emulator, EmulatorConfig, Operation};
use attache_pki::{CaOptions, CertificateAuthority, WorkloadIdentity};
use attache_rt::clock::{Clock, ScaledClock};
use attache_sidecar::certsource::CertSource;
use attache_sidecar::metrics::Metrics;
use attache_sidecar::source::RolesAnywhereSource;
use common::{Setup, file_source, write_workload};
use time::OffsetDateTime;

/// The pods' ARNs and SPIFFE ID, and their certificates' 12 simulated hours.
const SCALE: Setup = Setup {
    anchor: "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/scale",
    profile: "arn:aws:rolesanywhere:us-east-1:123456789012:profile/scale",
    role: "arn:aws:iam::123456789012:role/scale",
    spiffe: "spiffe://scale.local/ns/apps/sa/api",
    lifetime: Duration::from_secs(12 * 3600),
};
const QUOTA: u32 = 10;
/// The session length the sidecar asks for by default.
const SESSION_SECONDS: u32 = 3600;

const ROLLOUT_PODS: usize = 1_000;
const STEADY_PODS: usize = 10_000;
/// Simulated seconds per real second while many pods wait for the quota...
const SLOW: f64 = 10.0;
/// ...and while refreshes trickle.
const FAST: f64 = 100.0;

fn main() {
    if std::env::var_os("SCALE_DEBUG").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temporary directory");
        let start = OffsetDateTime::now_utc();
        let ca = CertificateAuthority::create(&CaOptions::default(), start).expect("CA");
        let t = Instant::now();
        write_certificates(&ca, dir.path(), STEADY_PODS.max(ROLLOUT_PODS), start);
        eprintln!(
            "scale: {} certificates and keys written in {:.1}s; clock x{SLOW} while throttled, x{FAST} after",
            STEADY_PODS.max(ROLLOUT_PODS),
            t.elapsed().as_secs_f64()
        );
        let rollout = rollout(&ca, dir.path()).await;
        println!("{rollout}");
        let steady = steady(&ca, dir.path()).await;
        println!("{steady}");
    });
}

/// Pod `i`'s certificate (12 simulated hours) and key, as files.
fn write_certificates(ca: &CertificateAuthority, dir: &Path, n: usize, now: OffsetDateTime) {
    let id = WorkloadIdentity::from_spiffe_uri(SCALE.spiffe).expect("SPIFFE ID");
    for i in 0..n {
        let (cert, key) = pod_files(dir, i);
        write_workload(ca, &id, SCALE.lifetime, now, &cert, &key);
    }
}

/// Pod `i`'s certificate and key files in `dir`.
fn pod_files(dir: &Path, i: usize) -> (PathBuf, PathBuf) {
    (dir.join(format!("{i}.crt")), dir.join(format!("{i}.key")))
}

struct World {
    emulator: Emulator,
    clock: ScaledClock,
    client: SessionClient,
    /// Real milliseconds the watchdog took out of the simulation.
    held: Arc<std::sync::atomic::AtomicU64>,
}

/// Stops the simulated clock while the runtime stalls (another process
/// took the CPU, or the engines fell behind): a late wake-up of this task
/// is real time the simulation did not get to use, and at x100 a three-second
/// stall would otherwise age every in-flight request past the 5-minute
/// signing-time window.
async fn watchdog(clock: ScaledClock, held: Arc<std::sync::atomic::AtomicU64>) {
    const TICK: Duration = Duration::from_millis(5);
    loop {
        let t = Instant::now();
        tokio::time::sleep(TICK).await;
        let late = t.elapsed().saturating_sub(TICK + Duration::from_millis(2));
        if !late.is_zero() {
            clock.hold(late);
            held.fetch_add(
                late.as_millis() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }
}

impl World {
    async fn new(ca: &CertificateAuthority, factor: f64) -> World {
        let emulator = Emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator");
        emulator.set_create_session_quota(QUOTA);
        emulator.trust_workload(
            SCALE.anchor,
            SCALE.profile,
            SCALE.role,
            ca.certificate_pem(),
            SCALE.spiffe,
        );
        let clock = ScaledClock::new(OffsetDateTime::now_utc(), factor);
        let held = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(watchdog(clock.clone(), held.clone()));
        let c = clock.clone();
        emulator.faults().set_clock(Arc::new(move || c.now()));
        let client = SessionClient::new(SessionConfig {
            region: "us-east-1".into(),
            endpoint: Some(emulator.url()),
            profile_arn: SCALE.profile.into(),
            role_arn: SCALE.role.into(),
            trust_anchor_arn: SCALE.anchor.into(),
            duration_seconds: SESSION_SECONDS,
            role_session_name: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            extra_roots_pem: None,
        })
        .expect("session client")
        .with_clock(Arc::new(clock.clone()));
        World {
            emulator,
            clock,
            client,
            held,
        }
    }

    /// Starts pod `i`'s refresh engine; returns its cache.
    fn start_pod(
        &self,
        dir: &Path,
        i: usize,
    ) -> (CredentialCache, tokio::task::JoinHandle<()>, Metrics) {
        let metrics = Metrics::default();
        let (cert, key) = pod_files(dir, i);
        let source = RolesAnywhereSource {
            certs: CertSource::Files(file_source(&cert, &key, metrics.clone())),
            client: self.client.clone(),
            clock: Arc::new(self.clock.clone()),
        };
        let (cache, task) = cache::spawn(
            source,
            RefreshPolicy::default(),
            Arc::new(self.clock.clone()),
            metrics.clone(),
        );
        (cache, task, metrics)
    }

    fn create_session_calls(&self) -> u64 {
        self.emulator.request_count(Operation::CreateSession)
    }

    /// Seconds the watchdog held the clock for stalls.
    fn held_seconds(&self) -> f64 {
        self.held.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1000.0
    }

    /// Stops the pods and the emulator.
    async fn stop(self, pods: &[Pod]) {
        for p in pods {
            p.task.abort();
        }
        self.emulator.shutdown().await;
    }
}

/// A pod the bench watches: its cache, when it started and when it was ready.
struct Pod {
    cache: CredentialCache,
    metrics: Metrics,
    task: tokio::task::JoinHandle<()>,
    started: OffsetDateTime,
    ready: Option<OffsetDateTime>,
    /// Held no valid set at the last look, after having been ready.
    lapsed: bool,
}

/// Failed credential requests and lapses seen by one look at every pod.
#[derive(Default)]
struct Looks {
    sdk_failures: u64,
    expired_windows: u64,
}

/// Failed refreshes of every pod by kind, e.g. `throttled=120 timeout=2`.
fn failures(pods: &[Pod]) -> String {
    let mut by_kind = std::collections::BTreeMap::<String, u64>::new();
    for p in pods {
        for line in p.metrics.encode().lines() {
            if let Some(rest) =
                line.strip_prefix("attache_sidecar_credential_refresh_failures_total{kind=\"")
                && let Some((kind, n)) = rest.split_once("\"} ")
            {
                *by_kind.entry(kind.to_string()).or_default() += n.parse::<u64>().unwrap_or(0);
            }
        }
    }
    if by_kind.is_empty() {
        return "none".into();
    }
    by_kind
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn look(pods: &mut [Pod], now: OffsetDateTime, looks: &mut Looks) {
    for p in pods {
        let valid = p.cache.current().is_some();
        match (p.ready, valid) {
            (None, true) => p.ready = Some(now),
            (Some(_), false) => {
                looks.sdk_failures += 1;
                if !p.lapsed {
                    looks.expired_windows += 1;
                    if std::env::var_os("SCALE_DEBUG").is_some() {
                        eprintln!(
                            "lapse: {}s after start, expiry in {:?}",
                            (now - p.started).whole_seconds(),
                            p.cache.seconds_until_expiry()
                        );
                    }
                }
                p.lapsed = true;
            }
            (Some(_), true) => p.lapsed = false,
            (None, false) => {}
        }
    }
}

async fn rollout(ca: &CertificateAuthority, dir: &Path) -> String {
    let world = World::new(ca, SLOW).await;
    let t0 = world.clock.now();
    let mut pods: Vec<Pod> = (0..ROLLOUT_PODS)
        .map(|i| {
            let (cache, task, metrics) = world.start_pod(dir, i);
            Pod {
                cache,
                metrics,
                task,
                started: t0,
                ready: None,
                lapsed: false,
            }
        })
        .collect();
    // Readiness exactly: each pod's wait for its first set.
    let waits: Vec<_> = pods
        .iter()
        .map(|p| {
            let mut cache = p.cache.clone();
            let clock = world.clock.clone();
            tokio::spawn(async move {
                cache.wait_ready().await;
                clock.now()
            })
        })
        .collect();
    let mut ready_at = Vec::with_capacity(waits.len());
    for w in waits {
        ready_at.push(w.await.expect("readiness wait"));
    }
    for (p, at) in pods.iter_mut().zip(&ready_at) {
        p.ready = Some(*at);
    }
    let all_ready = world.clock.now();
    world.clock.set_factor(FAST);
    let mut looks = Looks::default();
    let end = t0 + time::Duration::minutes(90);
    let mut at = all_ready;
    while at < end {
        at += time::Duration::seconds(1);
        world.clock.sleep_until(at).await;
        look(&mut pods, world.clock.now(), &mut looks);
    }
    let mut waited: Vec<f64> = pods
        .iter()
        .map(|p| (p.ready.unwrap_or(end) - p.started).as_seconds_f64())
        .collect();
    waited.sort_by(f64::total_cmp);
    let throttled = world.emulator.throttled_sessions();
    eprintln!(
        "scale: rollout: all {ROLLOUT_PODS} ready after {:.1}s simulated; {} CreateSession calls over 90 minutes; failed refreshes: {}; clock held {:.1}s for stalls",
        (all_ready - t0).as_seconds_f64(),
        world.create_session_calls(),
        failures(&pods),
        world.held_seconds()
    );
    world.stop(&pods).await;
    format!(
        "rollout pods={ROLLOUT_PODS} quota={QUOTA} ready_p50={:.1}s ready_max={:.1}s throttled={throttled} sdk_failures={}",
        waited[waited.len() / 2],
        waited[waited.len() - 1],
        looks.sdk_failures
    )
}

async fn steady(ca: &CertificateAuthority, dir: &Path) -> String {
    let world = World::new(ca, FAST).await;
    let t0 = world.clock.now();
    // Pods arrive at the quota's rate, 10 per second.
    let mut pods = Vec::with_capacity(STEADY_PODS);
    for i in 0..STEADY_PODS {
        let at = t0 + time::Duration::milliseconds(i as i64 * 1000 / i64::from(QUOTA));
        world.clock.sleep_until(at).await;
        let (cache, task, metrics) = world.start_pod(dir, i);
        pods.push(Pod {
            cache,
            metrics,
            task,
            started: at,
            ready: None,
            lapsed: false,
        });
    }
    // Every simulated second: CreateSession calls in that second; every
    // five: a look at every pod.
    let window_start = t0 + time::Duration::hours(2);
    let window_end = t0 + time::Duration::hours(6);
    let mut samples = Vec::new();
    let mut looks = Looks::default();
    let mut at = world.clock.now();
    let mut last = world.create_session_calls();
    let mut tick = 0u64;
    while at < window_end {
        at += time::Duration::seconds(1);
        world.clock.sleep_until(at).await;
        let calls = world.create_session_calls();
        if at > window_start {
            samples.push(calls - last);
        }
        last = calls;
        tick += 1;
        if tick.is_multiple_of(5) {
            look(&mut pods, world.clock.now(), &mut looks);
        }
    }
    let total: u64 = samples.iter().sum();
    let mean = total as f64 / samples.len().max(1) as f64;
    let peak = samples
        .windows(60)
        .map(|w| w.iter().sum::<u64>() as f64 / 60.0)
        .fold(0.0, f64::max);
    let busiest_second = samples.iter().copied().max().unwrap_or(0);
    let never_ready = pods.iter().filter(|p| p.ready.is_none()).count();
    eprintln!(
        "scale: steady: hours 2-6: {total} CreateSession calls ({} refused by the quota in the whole run), busiest single second {busiest_second}; {never_ready} pods never ready; failed refreshes: {}; clock held {:.1}s for stalls",
        world.emulator.throttled_sessions(),
        failures(&pods),
        world.held_seconds()
    );
    world.stop(&pods).await;
    format!(
        "steady pods={STEADY_PODS} quota={QUOTA} peak_tps={peak:.1} mean_tps={mean:.1} expired_windows={}",
        looks.expired_windows
    )
}
