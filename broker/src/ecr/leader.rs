//! Leader election on a `coordination.k8s.io/v1` Lease, so exactly one broker
//! replica runs the ECR controller. kube 5 ships no elector; this follows
//! client-go's: a candidate takes the Lease only when its holder has not
//! renewed it for `lease_duration` as observed on the candidate's own clock
//! (so clock skew between replicas does not matter), every write is guarded
//! by `resourceVersion`, and a leader that cannot renew within
//! `renew_deadline` (< `lease_duration`) stops leading before anyone else may
//! start.

use std::sync::Arc;
use std::time::Duration;

use attache_rt::clock::Clock;
use attache_rt::task::{StopSignal, StoppableTask};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use time::OffsetDateTime;
use tokio::sync::watch;

/// Election settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Namespace of the Lease (the broker's).
    pub namespace: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down.
    pub renew_deadline: Duration,
    /// Pause between attempts.
    pub retry_period: Duration,
}

fn micro(t: OffsetDateTime) -> Option<MicroTime> {
    k8s_openapi::jiff::Timestamp::from_nanosecond(t.unix_timestamp_nanos())
        .ok()
        .map(MicroTime)
}

/// A running elector: `leading()` tells whether this replica leads now.
pub struct Elector {
    leading: watch::Receiver<bool>,
    task: StoppableTask<()>,
}

impl Elector {
    /// Starts campaigning.
    pub fn spawn(client: kube::Client, config: LeaseConfig, clock: Arc<dyn Clock>) -> Elector {
        let (tx, rx) = watch::channel(false);
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let task = StoppableTask::spawn(|stop| campaign(api, config, clock, tx, stop));
        Elector { leading: rx, task }
    }

    /// Whether this replica leads.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops campaigning and, if leading, releases the Lease so another
    /// replica takes over at once.
    pub async fn release(self) {
        let _ = self.task.stop().await;
    }
}

/// What a candidate last saw of the Lease, and when (on its own clock).
struct Observed {
    record: (Option<String>, Option<String>, Option<i32>),
    at: OffsetDateTime,
}

enum Attempt {
    Leading,
    NotLeading,
    Error(String),
}

async fn campaign(
    api: Api<Lease>,
    cfg: LeaseConfig,
    clock: Arc<dyn Clock>,
    tx: watch::Sender<bool>,
    mut stop: StopSignal,
) {
    let mut observed: Option<Observed> = None;
    let mut last_renew: Option<OffsetDateTime> = None;
    loop {
        let outcome = try_acquire_or_renew(&api, &cfg, clock.as_ref(), &mut observed).await;
        let now = clock.now();
        match outcome {
            Attempt::Leading => {
                if !*tx.borrow() {
                    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became the ECR controller leader");
                }
                last_renew = Some(now);
                tx.send_replace(true);
            }
            Attempt::NotLeading => {
                if *tx.borrow() {
                    tracing::warn!(lease = %cfg.name, identity = %cfg.identity, "lost the ECR controller Lease");
                }
                last_renew = None;
                tx.send_replace(false);
            }
            Attempt::Error(e) => {
                let expired = last_renew.is_none_or(|t| now - t >= cfg.renew_deadline);
                if *tx.borrow() && expired {
                    tracing::warn!(lease = %cfg.name, error = %e, "cannot renew the Lease before the renew deadline; stepping down");
                    tx.send_replace(false);
                    last_renew = None;
                } else {
                    tracing::debug!(lease = %cfg.name, error = %e, "Lease attempt failed");
                }
            }
        }
        let next = clock.now() + cfg.retry_period;
        tokio::select! {
            _ = clock.sleep_until(next) => {}
            _ = &mut stop => {
                if *tx.borrow() {
                    tx.send_replace(false);
                    release(&api, &cfg).await;
                }
                return;
            }
        }
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    clock: &dyn Clock,
    observed: &mut Option<Observed>,
) -> Attempt {
    for _ in 0..3 {
        let now = clock.now();
        let current = match api.get_opt(&cfg.name).await {
            Ok(c) => c,
            Err(e) => return Attempt::Error(e.to_string()),
        };
        let duration_secs = i32::try_from(cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    namespace: Some(cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: micro(now),
                    renew_time: micro(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Attempt::Leading,
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => Attempt::Error(e.to_string()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (
            holder.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
            spec.lease_transitions,
        );
        if observed.as_ref().is_none_or(|o| o.record != record) {
            *observed = Some(Observed { record, at: now });
        }
        let seen_at = observed.as_ref().map_or(now, |o| o.at);
        let held_by_me = holder.as_deref() == Some(cfg.identity.as_str());
        let lease_secs = spec.lease_duration_seconds.unwrap_or(duration_secs).max(1) as i64;
        let valid = holder.is_some() && now < seen_at + time::Duration::seconds(lease_secs);
        if !held_by_me && valid {
            return Attempt::NotLeading;
        }
        let mut new_spec = spec.clone();
        if !held_by_me {
            new_spec.acquire_time = micro(now);
            new_spec.lease_transitions = Some(
                spec.lease_transitions.unwrap_or(0)
                    + i32::from(holder.is_some() || spec.acquire_time.is_some()),
            );
        }
        new_spec.holder_identity = Some(cfg.identity.clone());
        new_spec.lease_duration_seconds = Some(duration_secs);
        new_spec.renew_time = micro(now);
        lease.spec = Some(new_spec);
        match api.replace(&cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => return Attempt::Leading,
            // Someone wrote in between (or an injected conflict): look again.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Attempt::Error(e.to_string()),
        }
    }
    Attempt::Error("the Lease kept changing".into())
}

async fn release(api: &Api<Lease>, cfg: &LeaseConfig) {
    for _ in 0..3 {
        let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
            return;
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(cfg.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        lease.spec = Some(spec);
        match api.replace(&cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => {
                tracing::info!(lease = %cfg.name, identity = %cfg.identity, "released the ECR controller Lease");
                return;
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => {
                tracing::warn!(lease = %cfg.name, error = %e, "cannot release the Lease");
                return;
            }
        }
    }
}
