//! What the controller knows of the cluster, kept small: watch events of
//! ServiceAccounts, Namespaces and attache's pull Secrets are reduced to the
//! few fields reconciling needs (no Secret data is held), plus the work queue
//! that hands each ServiceAccount to one worker at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};

use super::secret::{ANN_DATA_HASH, data_hash};
use attache_api::names::{
    ANN_ALLOWED_ROLES, ANN_ECR_REGISTRIES, ANN_ECR_ROLE_ARN, ANN_PROFILE_ARN, ANN_TRUST_ANCHOR_ARN,
    MANAGED_BY,
};

/// A namespaced object (ServiceAccount or Secret) by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}

impl Key {
    /// The object `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Key {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// What reconciling needs of a ServiceAccount.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SaInfo {
    /// uid (owner references point at it).
    pub uid: String,
    /// resourceVersion last seen.
    pub resource_version: String,
    /// `attache.dev/ecr-registries`, if set.
    pub registries: Option<String>,
    /// `attache.dev/ecr-role-arn`, if set.
    pub role: Option<String>,
    /// `attache.dev/profile-arn`, if set (checked against the allow-list).
    pub profile: Option<String>,
    /// `attache.dev/trust-anchor-arn`, if set (checked against the allow-list).
    pub trust_anchor: Option<String>,
    /// Names in `imagePullSecrets`, in order.
    pub pull_secrets: Vec<String>,
}

impl SaInfo {
    /// Reduces a ServiceAccount.
    pub fn from(sa: &ServiceAccount) -> SaInfo {
        let ann = sa.metadata.annotations.as_ref();
        let trimmed = |k: &str| {
            ann.and_then(|a| a.get(k))
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
        };
        SaInfo {
            uid: sa.metadata.uid.clone().unwrap_or_default(),
            resource_version: sa.metadata.resource_version.clone().unwrap_or_default(),
            registries: ann.and_then(|a| a.get(ANN_ECR_REGISTRIES)).cloned(),
            role: trimmed(ANN_ECR_ROLE_ARN),
            profile: trimmed(ANN_PROFILE_ARN),
            trust_anchor: trimmed(ANN_TRUST_ANCHOR_ARN),
            pull_secrets: sa
                .image_pull_secrets
                .iter()
                .flatten()
                .map(|r| r.name.clone())
                .collect(),
        }
    }
}

impl SaInfo {
    /// The override annotations the allow-list checks look at.
    pub fn override_annotations(&self) -> BTreeMap<String, String> {
        [
            (ANN_PROFILE_ARN, &self.profile),
            (ANN_TRUST_ANCHOR_ARN, &self.trust_anchor),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
        .collect()
    }
}

/// What reconciling needs of a Namespace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NsInfo {
    /// `attache.dev/ecr-registries`, if set.
    pub registries: Option<String>,
    /// `attache.dev/allowed-roles`, if set.
    pub allowed_roles: Option<String>,
}

impl NsInfo {
    /// Reduces a Namespace.
    pub fn from(ns: &Namespace) -> NsInfo {
        let ann = ns.metadata.annotations.as_ref();
        NsInfo {
            registries: ann.and_then(|a| a.get(ANN_ECR_REGISTRIES)).cloned(),
            allowed_roles: ann.and_then(|a| a.get(ANN_ALLOWED_ROLES)).cloned(),
        }
    }

    /// The annotations policy checks look at.
    pub fn policy_annotations(&self) -> BTreeMap<String, String> {
        self.allowed_roles
            .iter()
            .map(|v| (ANN_ALLOWED_ROLES.to_string(), v.clone()))
            .collect()
    }
}

/// A ServiceAccount owner reference of a Secret.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Owner {
    /// The ServiceAccount's name (same namespace as the Secret).
    pub name: String,
    /// Its uid.
    pub uid: String,
}

/// What reconciling needs of one of attache's pull Secrets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecretInfo {
    /// resourceVersion last seen.
    pub resource_version: String,
    /// Carries `app.kubernetes.io/managed-by: attache`.
    pub managed: bool,
    /// Its ServiceAccount owner references.
    pub owners: Vec<Owner>,
    /// Type is `kubernetes.io/dockerconfigjson`.
    pub docker_type: bool,
    /// SHA-256 of the data as stored.
    pub data_hash: String,
    /// The hash annotation attache wrote.
    pub annotated_hash: Option<String>,
}

impl SecretInfo {
    /// Reduces a Secret.
    pub fn from(s: &Secret) -> SecretInfo {
        SecretInfo {
            resource_version: s.metadata.resource_version.clone().unwrap_or_default(),
            managed: MANAGED_BY.is_on(s.metadata.labels.as_ref()),
            owners: s
                .metadata
                .owner_references
                .iter()
                .flatten()
                .filter(|o| o.kind == "ServiceAccount")
                .map(|o| Owner {
                    name: o.name.clone(),
                    uid: o.uid.clone(),
                })
                .collect(),
            docker_type: s.type_.as_deref() == Some(super::secret::SECRET_TYPE),
            data_hash: data_hash(&s.data.clone().unwrap_or_default()),
            annotated_hash: s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANN_DATA_HASH))
                .cloned(),
        }
    }

    /// Whether attache may change it on behalf of ServiceAccount `sa`.
    pub fn owned_by(&self, sa: &str) -> bool {
        self.managed && self.docker_type && self.owners.iter().any(|o| o.name == sa)
    }
}

/// The reduced cluster state.
#[derive(Default)]
pub struct World {
    /// ServiceAccounts by key (sorted, so a namespace is a range).
    pub sas: BTreeMap<Key, SaInfo>,
    /// Namespaces by name.
    pub namespaces: HashMap<String, NsInfo>,
    /// attache's pull Secrets by key.
    pub secrets: HashMap<Key, SecretInfo>,
}

impl World {
    /// Keys of every ServiceAccount in `namespace`.
    pub fn sas_in(&self, namespace: &str) -> Vec<Key> {
        self.sas
            .range(Key::new(namespace, "")..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Key>,
    queued: HashSet<Key>,
    active: HashSet<Key>,
    dirty: HashSet<Key>,
}

/// A de-duplicating work queue: a key is queued at most once, and a key
/// being worked on is queued again only after its worker finishes.
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    notify: tokio::sync::Notify,
    /// Reports [`Queue::len`] after every change.
    depth: prometheus_client::metrics::gauge::Gauge,
}

impl QueueState {
    fn len(&self) -> usize {
        self.ready.len() + self.active.len()
    }
}

impl Queue {
    /// An empty queue that keeps `depth` at its length.
    pub fn with_depth(depth: prometheus_client::metrics::gauge::Gauge) -> Self {
        Queue {
            depth,
            ..Queue::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(&self, s: &QueueState) {
        self.depth.set(i64::try_from(s.len()).unwrap_or(i64::MAX));
    }

    /// Queues `key` (no-op if already queued).
    pub fn push(&self, key: Key) {
        let mut s = self.lock();
        if s.active.contains(&key) {
            s.dirty.insert(key);
        } else if s.queued.insert(key.clone()) {
            s.ready.push_back(key);
            self.report(&s);
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Queues every one of `keys`.
    pub fn push_all(&self, keys: impl IntoIterator<Item = Key>) {
        for key in keys {
            self.push(key);
        }
    }

    /// Waits for the next key and marks it active.
    pub async fn pop(&self) -> Key {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.lock();
                if let Some(k) = s.ready.pop_front() {
                    s.queued.remove(&k);
                    s.active.insert(k.clone());
                    if !s.ready.is_empty() {
                        self.notify.notify_one();
                    }
                    return k;
                }
            }
            notified.await;
        }
    }

    /// Marks `key` done; queues it again if it changed meanwhile (in one
    /// step, so the length never passes through zero on the way).
    pub fn done(&self, key: &Key) {
        let mut s = self.lock();
        s.active.remove(key);
        let again = s.dirty.remove(key) && s.queued.insert(key.clone());
        if again {
            s.ready.push_back(key.clone());
        }
        self.report(&s);
        drop(s);
        if again {
            self.notify.notify_one();
        }
    }

    /// Keys queued or being worked on.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is queued or active.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which ServiceAccounts use which (role, region) token.
#[derive(Default)]
pub struct Deps {
    by_pair: HashMap<super::tokens::Pair, BTreeSet<Key>>,
    by_key: HashMap<Key, Vec<super::tokens::Pair>>,
}

impl Deps {
    /// Records that `key` uses exactly `pairs`.
    pub fn set(&mut self, key: &Key, pairs: Vec<super::tokens::Pair>) {
        if self.by_key.get(key) == Some(&pairs) {
            return;
        }
        self.remove(key);
        for p in &pairs {
            self.by_pair
                .entry(p.clone())
                .or_default()
                .insert(key.clone());
        }
        self.by_key.insert(key.clone(), pairs);
    }

    /// Forgets `key`.
    pub fn remove(&mut self, key: &Key) {
        for p in self.by_key.remove(key).unwrap_or_default() {
            if let Some(set) = self.by_pair.get_mut(&p) {
                set.remove(key);
                if set.is_empty() {
                    self.by_pair.remove(&p);
                }
            }
        }
    }

    /// ServiceAccounts using `pair`.
    pub fn dependents(&self, pair: &super::tokens::Pair) -> Vec<Key> {
        self.by_pair
            .get(pair)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queue_deduplicates_and_requeues_keys_changed_while_active() {
        let depth = prometheus_client::metrics::gauge::Gauge::default();
        let q = Queue::with_depth(depth.clone());
        let k = Key::new("ns", "a");
        q.push(k.clone());
        q.push(k.clone());
        assert_eq!((q.len(), depth.get()), (1, 1));
        let got = q.pop().await;
        assert_eq!(got, k);
        assert_eq!(depth.get(), 1, "an active key counts");
        q.push(k.clone()); // while active: deferred
        assert_eq!(q.lock().ready.len(), 0);
        q.done(&k);
        assert_eq!(depth.get(), 1, "requeued at once, never zero between");
        assert_eq!(q.pop().await, k);
        q.done(&k);
        assert!(q.is_empty());
        assert_eq!(depth.get(), 0);
    }

    #[test]
    fn deps_track_pairs_both_ways() {
        let mut d = Deps::default();
        let k = Key::new("ns", "a");
        let p = super::super::tokens::Pair::new("role", "us-east-1", "profile");
        d.set(&k, vec![p.clone()]);
        assert_eq!(d.dependents(&p), vec![k.clone()]);
        d.remove(&k);
        assert!(d.dependents(&p).is_empty());
    }
}
