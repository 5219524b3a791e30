//! Reconciling ServiceAccounts into pull Secrets: watches feed the reduced
//! [`World`], workers reconcile one ServiceAccount at a time, a scheduler
//! refreshes shared tokens on the (injectable) clock and re-queues the
//! ServiceAccounts that use them, another retries failed keys with backoff,
//! and a third keeps the tokens' state Secret (in the controller's own
//! namespace) up to date. Tokens are adopted from that Secret only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use attache_aws::cache::RefreshPolicy;
use attache_rt::clock::Clock;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret, ServiceAccount};
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use time::OffsetDateTime;
use tokio::task::JoinSet;

use super::credentials::{Sessions, Target, Verdict};
use super::mirror::{Handlers, follow};
use super::registry::{parse_registries, regions};
use super::secret::{self, Desired, foreign_reason, secret_name};
use super::state::TokenStore;
use super::tokens::{Pair, TokenFailure, Tokens};
use super::world::{Deps, Key, NsInfo, Queue, SaInfo, SecretInfo, World};

mod reconcile;
use crate::metrics::Metrics;
use attache_api::names::ANN_ECR_REGISTRIES;

/// Tries of a write that keeps hitting 409 Conflict before the key is retried later.
const CONFLICT_TRIES: usize = 8;

/// Settings of one controller term.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Role used when a ServiceAccount names none.
    pub default_role: Option<String>,
    /// Roles Anywhere profile used when a ServiceAccount names none.
    pub default_profile: String,
    /// Trust anchor used when a ServiceAccount names none.
    pub default_trust_anchor: String,
    /// Which profile / trust anchor overrides ServiceAccounts may make.
    pub overrides: crate::policy::ArnOverrides,
    /// Enforce `attache.dev/allowed-roles`.
    pub restrictions: bool,
    /// Concurrent reconciles.
    pub workers: usize,
    /// How long a foreign Secret is left alone before it is looked at again.
    pub foreign_recheck: std::time::Duration,
    /// Backoff of failed keys.
    pub backoff: RefreshPolicy,
}

/// Where tokens come from and are kept: the shared cache, the
/// per-ServiceAccount sessions, and the state Secret.
pub struct TokenSources {
    /// The shared token cache.
    pub tokens: Arc<Tokens>,
    /// Per-ServiceAccount sessions and AWS's verdicts.
    pub sessions: Arc<Sessions>,
    /// The state Secret in the controller's namespace.
    pub store: Arc<TokenStore>,
}

/// State shared by the tasks of one leadership term.
pub struct Controller {
    client: kube::Client,
    config: ControllerConfig,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    recorder: Recorder,
    tokens: Arc<Tokens>,
    sessions: Arc<Sessions>,
    store: Arc<TokenStore>,
    /// The reduced cluster state.
    pub world: Mutex<World>,
    /// Keys to reconcile.
    pub queue: Queue,
    deps: Mutex<Deps>,
    warned: Mutex<HashMap<Key, String>>,
    foreign: Mutex<HashMap<Key, OffsetDateTime>>,
    failures: Mutex<HashMap<Key, u32>>,
    delayed: Mutex<BTreeMap<(OffsetDateTime, u64), Key>>,
    delayed_seq: std::sync::atomic::AtomicU64,
    delayed_changed: tokio::sync::Notify,
}

/// A reconcile failure worth retrying (API errors).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The API server refused or failed a request.
    #[error("{action}: {source}")]
    Kube {
        /// What was being done, to which object.
        action: String,
        /// The error.
        source: kube::Error,
    },
    /// Writes kept conflicting with other writers.
    #[error("{action}: kept conflicting with other writers ({CONFLICT_TRIES} tries)")]
    Conflict {
        /// What was being done, to which object.
        action: String,
    },
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

impl Controller {
    /// A controller with an empty world.
    pub fn new(
        client: kube::Client,
        config: ControllerConfig,
        clock: Arc<dyn Clock>,
        metrics: Metrics,
        recorder: Recorder,
        sources: TokenSources,
    ) -> Self {
        Controller {
            queue: Queue::with_depth(metrics.ecr_queue_depth.clone()),
            client,
            config,
            clock,
            metrics,
            recorder,
            tokens: sources.tokens,
            sessions: sources.sessions,
            store: sources.store,
            world: Mutex::default(),
            deps: Mutex::default(),
            warned: Mutex::default(),
            foreign: Mutex::default(),
            failures: Mutex::default(),
            delayed: Mutex::default(),
            delayed_seq: Default::default(),
            delayed_changed: tokio::sync::Notify::new(),
        }
    }

    /// Runs the term: watches, then workers and schedulers, until aborted.
    pub async fn run(self: Arc<Self>) {
        // Tokens from the state Secret only attache writes (its own
        // namespace), so a new leader neither rewrites nor refetches them.
        match self.store.load().await {
            Ok(stored) => {
                let n = stored
                    .into_iter()
                    .filter(|(pair, token)| self.tokens.adopt(pair, token.clone()))
                    .count();
                tracing::info!(adopted = n, "ECR token state loaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the ECR token state Secret; tokens will be fetched anew")
            }
        }
        let mut tasks = JoinSet::new();
        let (ready_tx, mut ready_rx) = tokio::sync::watch::channel(0u32);
        let ready_tx = Arc::new(ready_tx);
        tasks.spawn(self.clone().watch_service_accounts(ready_tx.clone()));
        tasks.spawn(self.clone().watch_namespaces(ready_tx.clone()));
        tasks.spawn(self.clone().watch_secrets(ready_tx));
        // Work starts once all three lists are in.
        let _ = ready_rx.wait_for(|n| *n >= 3).await;
        let keys: Vec<Key> = lock(&self.world).sas.keys().cloned().collect();
        tracing::info!(
            service_accounts = keys.len(),
            "ECR controller synced; reconciling"
        );
        self.queue.push_all(keys);
        for _ in 0..self.config.workers.max(1) {
            tasks.spawn(self.clone().work());
        }
        tasks.spawn(self.clone().refresh_tokens());
        tasks.spawn(self.clone().retry_delayed());
        tasks.spawn(self.clone().persist_tokens());
        while tasks.join_next().await.is_some() {}
    }

    async fn watch_service_accounts(self: Arc<Self>, ready: Arc<tokio::sync::watch::Sender<u32>>) {
        let api: Api<ServiceAccount> = Api::all(self.client.clone());
        let handlers = Handlers {
            id: |sa: &ServiceAccount| key_of(&sa.metadata),
            apply: |sa: ServiceAccount, synced| {
                let key = key_of(&sa.metadata);
                let info = SaInfo::from(&sa);
                let changed = lock(&self.world).sas.insert(key.clone(), info.clone()) != Some(info);
                if changed && synced {
                    self.queue.push(key);
                }
            },
            delete: |sa: ServiceAccount| {
                let key = key_of(&sa.metadata);
                lock(&self.world).sas.remove(&key);
                self.queue.push(key);
            },
            relisted: |seen: HashSet<Key>, first| {
                let gone = take_unseen(&mut lock(&self.world).sas, &seen);
                for (k, _) in gone {
                    self.queue.push(k);
                }
                // After a broken watch anything may have changed: look at everyone.
                if !first {
                    let keys: Vec<Key> = lock(&self.world).sas.keys().cloned().collect();
                    self.queue.push_all(keys);
                }
            },
        };
        let every = watcher::Config::default();
        follow(api, every, "ServiceAccount", handlers, &ready).await;
    }

    async fn watch_namespaces(self: Arc<Self>, ready: Arc<tokio::sync::watch::Sender<u32>>) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let handlers = Handlers {
            id: |ns: &Namespace| ns.metadata.name.clone().unwrap_or_default(),
            apply: |ns: Namespace, synced| {
                let name = ns.metadata.name.clone().unwrap_or_default();
                let info = NsInfo::from(&ns);
                let changed = lock(&self.world)
                    .namespaces
                    .insert(name.clone(), info.clone())
                    != Some(info);
                if changed && synced {
                    let keys = lock(&self.world).sas_in(&name);
                    self.queue.push_all(keys);
                }
            },
            delete: |ns: Namespace| {
                let name = ns.metadata.name.clone().unwrap_or_default();
                lock(&self.world).namespaces.remove(&name);
            },
            relisted: |seen: HashSet<String>, _first| {
                lock(&self.world).namespaces.retain(|n, _| seen.contains(n));
            },
        };
        let every = watcher::Config::default();
        follow(api, every, "Namespace", handlers, &ready).await;
    }

    async fn watch_secrets(self: Arc<Self>, ready: Arc<tokio::sync::watch::Sender<u32>>) {
        let api: Api<Secret> = Api::all(self.client.clone());
        let requeue_owners = |key: &Key, info: SecretInfo| {
            for o in info.owners {
                self.queue.push(Key::new(&key.namespace, o.name));
            }
        };
        let handlers = Handlers {
            id: |s: &Secret| key_of(&s.metadata),
            apply: |s: Secret, synced| {
                let key = key_of(&s.metadata);
                let info = SecretInfo::from(&s);
                let changed = lock(&self.world).secrets.insert(key.clone(), info.clone())
                    != Some(info.clone());
                if changed && synced {
                    requeue_owners(&key, info);
                }
            },
            delete: |s: Secret| {
                let key = key_of(&s.metadata);
                let info = lock(&self.world).secrets.remove(&key);
                if let Some(info) = info {
                    requeue_owners(&key, info);
                }
            },
            relisted: |seen: HashSet<Key>, _first| {
                let gone = take_unseen(&mut lock(&self.world).secrets, &seen);
                for (k, i) in gone {
                    requeue_owners(&k, i);
                }
            },
        };
        let config = watcher::Config::default().labels(secret::SELECTOR);
        follow(api, config, "Secret", handlers, &ready).await;
    }

    /// Writes the held tokens to the state Secret whenever new ones arrive.
    async fn persist_tokens(self: Arc<Self>) {
        loop {
            self.tokens.fetched.notified().await;
            let mut attempt = 0;
            while let Err(e) = self.store.save(&self.tokens.snapshot()).await {
                let delay = self.config.backoff.backoff(attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot write the ECR token state Secret");
                tokio::time::sleep(delay).await;
            }
        }
    }

    /// Where `key`'s session for `pair` is created (its trust anchor override, else the default).
    fn target_for(&self, key: &Key, pair: &Pair) -> Option<Target> {
        let anchor = lock(&self.world).sas.get(key).map(|s| {
            s.trust_anchor
                .clone()
                .unwrap_or_else(|| self.config.default_trust_anchor.clone())
        })?;
        Some(
            self.sessions
                .settings()
                .target(&pair.role, &pair.profile, &anchor, &pair.region),
        )
    }

    /// Credentials to refresh `pair`'s token: the latest accepted session's,
    /// else a new session as one of the ServiceAccounts using the token.
    async fn pair_credentials(
        &self,
        pair: &Pair,
    ) -> Result<Arc<attache_aws::credentials::Credentials>, TokenFailure> {
        let mut last = TokenFailure {
            kind: "unavailable".into(),
            message: "no ServiceAccount uses this token".into(),
        };
        for key in self.dependents(pair).iter().take(3) {
            let Some(target) = self.target_for(key, pair) else {
                continue;
            };
            match self.sessions.credentials(key, &target).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn work(self: Arc<Self>) {
        loop {
            let key = self.queue.pop().await;
            let result = self.reconcile(&key).await;
            match result {
                Ok(()) => {
                    lock(&self.failures).remove(&key);
                }
                Err(e) => {
                    let n = {
                        let mut f = lock(&self.failures);
                        let n = f.entry(key.clone()).or_insert(0);
                        *n += 1;
                        *n
                    };
                    let delay = self.config.backoff.backoff(n.saturating_sub(1));
                    Metrics::count(&self.metrics.ecr_refresh_failures, "kubernetes");
                    tracing::warn!(namespace = %key.namespace, service_account = %key.name, error = %e, retry_in_ms = delay.as_millis() as u64, "ECR pull secret reconcile failed");
                    self.retry_at(key.clone(), self.clock.now() + delay);
                }
            }
            self.queue.done(&key);
        }
    }

    fn retry_at(&self, key: Key, at: OffsetDateTime) {
        let seq = self
            .delayed_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.delayed).insert((at, seq), key);
        self.delayed_changed.notify_one();
    }

    /// Waits until `next` on the controller's clock (no limit if `None`) or
    /// until `changed` fires, whichever is first.
    async fn wait_until(&self, next: Option<OffsetDateTime>, changed: impl Future<Output = ()>) {
        match next {
            Some(at) => {
                tokio::select! {
                    _ = self.clock.sleep_until(at) => {}
                    _ = changed => {}
                }
            }
            None => changed.await,
        }
    }

    async fn retry_delayed(self: Arc<Self>) {
        loop {
            let changed = self.delayed_changed.notified();
            let now = self.clock.now();
            let (due, next) = {
                let mut d = lock(&self.delayed);
                let later = d.split_off(&(now, u64::MAX));
                let due: Vec<Key> = std::mem::replace(&mut *d, later).into_values().collect();
                (due, d.keys().next().map(|(at, _seq)| *at))
            };
            self.queue.push_all(due);
            self.wait_until(next, changed).await;
        }
    }

    async fn refresh_tokens(self: Arc<Self>) {
        let in_flight: Arc<Mutex<HashSet<Pair>>> = Arc::default();
        loop {
            let changed = self.tokens.changed.notified();
            let (next, due) = self.tokens.schedule();
            for pair in due {
                if self.dependents(&pair).is_empty() {
                    self.tokens.forget(&pair);
                    continue;
                }
                if !lock(&in_flight).insert(pair.clone()) {
                    continue;
                }
                let this = self.clone();
                let in_flight = in_flight.clone();
                tokio::spawn(async move {
                    let ok = this
                        .tokens
                        .refresh(&pair, || this.pair_credentials(&pair))
                        .await;
                    lock(&in_flight).remove(&pair);
                    let keys = this.dependents(&pair);
                    if ok {
                        this.queue.push_all(keys);
                    } else if let Some((_, failure)) = this.tokens.failing(&pair) {
                        for k in keys {
                            let sa_uid = lock(&this.world).sas.get(&k).map(|s| s.uid.clone());
                            if let Some(uid) = sa_uid {
                                let note = format!(
                                    "cannot refresh the ECR token of role {} in {}: {}; the current pull secret is kept and the refresh retried",
                                    pair.role, pair.region, failure.message
                                );
                                this.warn(&k, &uid, "EcrTokenRefreshFailed", note).await;
                            }
                        }
                    }
                    this.tokens.changed.notify_one();
                });
            }
            self.wait_until(next, changed).await;
        }
    }

    fn dependents(&self, pair: &Pair) -> Vec<Key> {
        lock(&self.deps).dependents(pair)
    }

    /// Publishes a Warning Event on the ServiceAccount (once per distinct message).
    async fn warn(&self, key: &Key, uid: &str, reason: &str, note: String) {
        {
            let mut w = lock(&self.warned);
            let tag = format!("{reason}: {note}");
            if w.get(key) == Some(&tag) {
                return;
            }
            w.insert(key.clone(), tag);
        }
        tracing::warn!(namespace = %key.namespace, service_account = %key.name, reason, message = %note, "ECR pull secret not updated");
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ServiceAccount".into()),
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            uid: Some(uid.to_string()),
            ..Default::default()
        };
        let mut note = note;
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.to_string(),
            note: Some(note),
            action: "UpdatePullSecret".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "cannot publish an Event");
        }
    }

    fn clear_warning(&self, key: &Key) {
        lock(&self.warned).remove(key);
    }
}

/// Takes out of `map` the entries whose key `seen` lacks: the objects that
/// went away while the watch was down.
fn take_unseen<M, V>(map: &mut M, seen: &HashSet<Key>) -> Vec<(Key, V)>
where
    M: Default + IntoIterator<Item = (Key, V)> + FromIterator<(Key, V)>,
{
    let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(map)
        .into_iter()
        .partition(|(k, _)| !seen.contains(k));
    *map = kept.into_iter().collect();
    gone
}

fn key_of(meta: &kube::api::ObjectMeta) -> Key {
    Key::new(
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}
