//! Revocation: which certificate went to which pod, the revoked serials, and
//! the CRL the CA signs over them.
//!
//! - Each replica remembers, in memory, the serial, pod and expiry of every
//!   certificate it issued ([`Revocations::record`]).
//! - A pod deleted before its certificates expire has them revoked: a
//!   metadata watch of pods reports the deletion (or its absence from a
//!   relist, for deletions the watch missed).
//! - `attache-broker ca revoke` writes requests (by serial, by pod, by
//!   ServiceAccount) into the same ledger; every replica turns the requests
//!   it can match into serials at its next sync.
//! - The ledger and the signed CRL live in the ConfigMap [`CRL_CONFIGMAP`]
//!   in the broker's namespace (only attache writes there), changed with
//!   optimistic concurrency so replicas never lose each other's entries.
//!   The CRL is served at `GET /v1/crl`; the ECR controller pushes it to
//!   Roles Anywhere.
//!
//! - Each replica also merges its records into the ledger at every sync
//!   (its `issued` list, pruned at expiry), and matches deletions and
//!   requests against every replica's records there: a certificate issued
//!   by a replica that has since restarted or gone is still revoked by pod,
//!   by ServiceAccount and when its pod is deleted. A crash loses at most
//!   the records of the last sync interval; past [`MAX_ISSUED_BYTES`] of
//!   records (about 1,700 unexpired certificates) the oldest are not stored
//!   (a warning says so) to keep the ConfigMap under its size limit; the
//!   replica that issued them still holds them in memory.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use attache_pki::crl::{CrlError, Revoked, SignedCrl};
use attache_pki::{CertificateAuthority, IssuedCertificate};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ObjectMeta, PartialObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::certapi::Caller;

pub use attache_api::names::CRL_CONFIGMAP;
/// Its key holding the ledger ([`Ledger`], JSON).
pub const LEDGER_KEY: &str = "revocations.json";
/// Its key holding the signed CRL (PEM).
pub const CRL_KEY: &str = "crl.pem";
/// How long a signed CRL is valid (`nextUpdate`); it is re-signed at half.
pub const CRL_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a replica reads the ledger, applies requests and re-signs, by
/// default (`--revocation-sync-interval`).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(30);
/// How long a revocation by serial whose certificate's expiry is unknown
/// stays listed.
pub const UNKNOWN_EXPIRY_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// The reason recorded for a deleted pod's certificates.
const POD_DELETED: &str = "pod deleted";
/// Deleted pods are revoked in batches gathered over this long.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Most bytes of issued-certificate records the ledger keeps (JSON; about
/// 230 bytes a record, so about 1,700 unexpired certificates), leaving room
/// in the ConfigMap's 1 MiB for the CRL (up to 300 KB of DER, as PEM) and
/// the revoked entries.
pub const MAX_ISSUED_BYTES: usize = 400_000;

/// What the ConfigMap records: revoked serials and pending requests.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Ledger {
    /// The number of the last CRL signed.
    #[serde(default)]
    pub number: u64,
    /// `nextUpdate` of the last CRL signed.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub next_update: Option<OffsetDateTime>,
    /// SHA-256 fingerprint of the CA that signed it.
    #[serde(default)]
    pub signed_by: String,
    /// Revoked certificates.
    #[serde(default)]
    pub revoked: Vec<Entry>,
    /// Revocations by pod or ServiceAccount, matched by every replica
    /// against the certificates it issued.
    #[serde(default)]
    pub requests: Vec<Request>,
    /// Unexpired certificates the replicas issued, merged at each sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub issued: Vec<Issued>,
}

/// One revoked certificate.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Serial, decimal.
    pub serial: String,
    /// When it was revoked.
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
    /// When the certificate expires (the entry is dropped then).
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Why, for people reading the ConfigMap.
    pub reason: String,
}

/// A revocation of every certificate issued before `before` to a pod or a
/// ServiceAccount.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// The namespace.
    pub namespace: String,
    /// The ServiceAccount (every pod of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The pod, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Certificates issued before this are revoked.
    #[serde(with = "time::serde::rfc3339")]
    pub before: OffsetDateTime,
    /// Why.
    pub reason: String,
}

impl Request {
    fn matches(&self, issued: &Issued) -> bool {
        issued.to.namespace == self.namespace
            && issued.issued_at < self.before
            && self
                .service_account
                .as_ref()
                .is_none_or(|sa| *sa == issued.to.service_account)
            && self
                .pod
                .as_ref()
                .is_none_or(|p| Some(p) == issued.to.pod_name.as_ref())
    }
}

/// A certificate a replica issued.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    /// Serial, decimal.
    pub serial: String,
    /// Who it was issued to: namespace, ServiceAccount, and the pod (name
    /// and uid) its token was bound to; stored as fields of the record.
    #[serde(flatten)]
    pub to: Caller,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// When it expires.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// Merges `mine` into the ledger's records (one per serial), drops expired
/// ones and, past `max_bytes` of JSON, the oldest; returns how many were
/// dropped for room.
pub fn merge_issued(
    ledger: &mut Ledger,
    mine: &[Issued],
    now: OffsetDateTime,
    max_bytes: usize,
) -> usize {
    let known: HashSet<String> = ledger.issued.iter().map(|i| i.serial.clone()).collect();
    ledger
        .issued
        .extend(mine.iter().filter(|i| !known.contains(&i.serial)).cloned());
    ledger.issued.retain(|i| i.not_after > now);
    // Oldest first; the newest are kept while they fit.
    ledger.issued.sort_by_key(|i| i.issued_at);
    let mut bytes = 0;
    let fit = ledger
        .issued
        .iter()
        .rev()
        .take_while(|i| {
            bytes += serde_json::to_string(i).map_or(usize::MAX / 2, |j| j.len() + 1);
            bytes <= max_bytes
        })
        .count();
    let dropped = ledger.issued.len() - fit;
    ledger.issued.drain(..dropped);
    dropped
}

impl Issued {
    fn entry(&self, reason: &str, now: OffsetDateTime) -> Entry {
        Entry {
            serial: self.serial.clone(),
            revoked_at: now,
            not_after: self.not_after,
            reason: reason.to_string(),
        }
    }
}

/// Why the ledger could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The API server refused or failed.
    #[error("{action} ConfigMap {namespace}/{CRL_CONFIGMAP}: {source}")]
    Kube {
        /// What was tried.
        action: &'static str,
        /// The broker's namespace.
        namespace: String,
        /// The failure.
        #[source]
        source: kube::Error,
    },
    /// The ledger is not valid JSON.
    #[error("ConfigMap {CRL_CONFIGMAP} key {LEDGER_KEY} is not a valid ledger: {0}")]
    Ledger(#[source] serde_json::Error),
    /// The CRL could not be signed.
    #[error(transparent)]
    Crl(#[from] CrlError),
    /// Other writers kept changing the ConfigMap.
    #[error("ConfigMap {CRL_CONFIGMAP} kept changing; gave up after {0} attempts")]
    Conflict(usize),
}

/// Reads and changes the ledger in `namespace` (used by the broker and by
/// `attache-broker ca revoke`).
#[derive(Clone)]
pub struct LedgerStore {
    api: Api<ConfigMap>,
    namespace: String,
}

impl LedgerStore {
    /// The ledger of the broker in `namespace`.
    pub fn new(client: kube::Client, namespace: &str) -> Self {
        LedgerStore {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
        }
    }

    fn kube(&self, action: &'static str) -> impl FnOnce(kube::Error) -> RevocationError + '_ {
        move |source| RevocationError::Kube {
            action,
            namespace: self.namespace.clone(),
            source,
        }
    }

    /// The signed CRL (PEM), if the ConfigMap holds one.
    pub async fn crl_pem(&self) -> Result<Option<String>, RevocationError> {
        let cm = self
            .api
            .get_opt(CRL_CONFIGMAP)
            .await
            .map_err(self.kube("reading"))?;
        Ok(cm.and_then(|cm| cm.data?.remove(CRL_KEY)))
    }

    /// Applies `change` to the ledger and stores it, retrying on conflicts.
    /// `change` returns the CRL to store with it, or `None` to keep the
    /// stored one; returns whether anything was written and the CRL stored.
    pub async fn update(
        &self,
        mut change: impl FnMut(&mut Ledger, Option<&str>) -> Result<Option<SignedCrl>, CrlError>,
    ) -> Result<Option<String>, RevocationError> {
        const ATTEMPTS: usize = 8;
        for _ in 0..ATTEMPTS {
            let existing = self
                .api
                .get_opt(CRL_CONFIGMAP)
                .await
                .map_err(self.kube("reading"))?;
            let data = existing
                .as_ref()
                .and_then(|cm| cm.data.clone())
                .unwrap_or_default();
            let mut ledger: Ledger = match data.get(LEDGER_KEY) {
                Some(json) => serde_json::from_str(json).map_err(RevocationError::Ledger)?,
                None => Ledger::default(),
            };
            let before = ledger.clone();
            let stored_crl = data.get(CRL_KEY).map(String::as_str);
            let signed = change(&mut ledger, stored_crl)?;
            if signed.is_none() && ledger == before {
                return Ok(stored_crl.map(str::to_string));
            }
            let crl_pem = signed.map(|c| c.pem).or(stored_crl.map(str::to_string));
            let mut new_data = BTreeMap::from([(
                LEDGER_KEY.to_string(),
                // Compact: the issued records are most of it.
                serde_json::to_string(&ledger).map_err(RevocationError::Ledger)?,
            )]);
            if let Some(pem) = &crl_pem {
                new_data.insert(CRL_KEY.to_string(), pem.clone());
            }
            let written = match existing {
                Some(mut cm) => {
                    cm.data = Some(new_data);
                    self.api
                        .replace(CRL_CONFIGMAP, &PostParams::default(), &cm)
                        .await
                        .map(|_| ())
                }
                None => {
                    let cm = ConfigMap {
                        metadata: ObjectMeta {
                            name: Some(CRL_CONFIGMAP.to_string()),
                            namespace: Some(self.namespace.clone()),
                            labels: Some(crate::castore::labels()),
                            ..Default::default()
                        },
                        data: Some(new_data),
                        ..Default::default()
                    };
                    self.api
                        .create(&PostParams::default(), &cm)
                        .await
                        .map(|_| ())
                }
            };
            match written {
                Ok(()) => return Ok(crl_pem),
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => return Err(self.kube("writing")(e)),
            }
        }
        Err(RevocationError::Conflict(ATTEMPTS))
    }
}

/// Signs a new CRL over `ledger` if it changed, the stored one is missing,
/// was signed by another CA, or is past half its validity; prunes expired
/// entries and requests no certificate can match any more.
pub fn refresh(
    ca: &CertificateAuthority,
    ledger: &mut Ledger,
    stored_crl: Option<&str>,
    changed: bool,
    max_lifetime: Duration,
    now: OffsetDateTime,
) -> Result<Option<SignedCrl>, CrlError> {
    let before = ledger.revoked.len() + ledger.requests.len();
    ledger.revoked.retain(|e| e.not_after > now);
    let lifetime = time::Duration::try_from(max_lifetime).unwrap_or(time::Duration::DAY);
    ledger.requests.retain(|r| r.before + lifetime > now);
    let pruned = ledger.revoked.len() + ledger.requests.len() != before;
    let fingerprint = &ca.info().sha256_fingerprint;
    let half = time::Duration::try_from(CRL_VALIDITY / 2).unwrap_or(time::Duration::DAY);
    let stale = ledger.next_update.is_none_or(|next| next - half <= now);
    if !(changed || pruned || stale || stored_crl.is_none() || ledger.signed_by != *fingerprint) {
        return Ok(None);
    }
    let revoked: Vec<Revoked> = ledger
        .revoked
        .iter()
        .map(|e| Revoked {
            serial: e.serial.clone(),
            revoked_at: e.revoked_at,
            not_after: e.not_after,
        })
        .collect();
    let crl = ca.sign_crl(&revoked, ledger.number + 1, now, CRL_VALIDITY)?;
    ledger.number = crl.number;
    ledger.next_update = Some(crl.next_update);
    ledger.signed_by = fingerprint.clone();
    Ok(Some(crl))
}

/// The broker's revocation state: what this replica issued, the current CRL.
#[derive(Clone)]
pub struct Revocations {
    store: LedgerStore,
    ca: Arc<CertificateAuthority>,
    max_lifetime: Duration,
    issued: Arc<Mutex<Vec<Issued>>>,
    /// Every replica's records, as the ledger held them at the last write.
    known: Arc<Mutex<Vec<Issued>>>,
    crl: Arc<RwLock<Option<String>>>,
    metrics: crate::metrics::Metrics,
    sync_interval: Duration,
}

impl Revocations {
    /// Revocation for the broker in `namespace` whose certificates live at
    /// most `max_lifetime`.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        ca: Arc<CertificateAuthority>,
        max_lifetime: Duration,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        Revocations {
            store: LedgerStore::new(client, namespace),
            ca,
            max_lifetime,
            issued: Arc::default(),
            known: Arc::default(),
            crl: Arc::default(),
            metrics,
            sync_interval: SYNC_INTERVAL,
        }
    }

    /// Syncs every `interval` instead of [`SYNC_INTERVAL`].
    pub fn with_sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval.max(Duration::from_secs(1));
        self
    }

    /// Remembers a certificate issued to `caller`.
    pub fn record(&self, caller: &Caller, leaf: &IssuedCertificate, now: OffsetDateTime) {
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        issued.retain(|i| i.not_after > now);
        issued.push(Issued {
            serial: leaf.serial.clone(),
            to: caller.clone(),
            issued_at: now,
            not_after: leaf.not_after,
        });
    }

    /// The current CRL (PEM), once the first sync has signed or read one.
    pub fn crl_pem(&self) -> Option<String> {
        self.crl.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// This replica's records and every replica's the ledger held at the
    /// last write (one per serial), unexpired and kept by `keep`.
    fn unexpired(&self, now: OffsetDateTime, keep: impl Fn(&Issued) -> bool) -> Vec<Issued> {
        let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = HashSet::new();
        issued
            .iter()
            .chain(known.iter())
            .filter(|i| i.not_after > now && keep(i) && seen.insert(i.serial.clone()))
            .cloned()
            .collect()
    }

    /// Writes `entries` (plus whatever the ledger's requests match here) to
    /// the ledger, re-signing the CRL when anything changed or is due.
    async fn write(&self, entries: Vec<Entry>) -> Result<(), RevocationError> {
        let now = OffsetDateTime::now_utc();
        let mine: Vec<Issued> = {
            let issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
            issued
                .iter()
                .filter(|i| i.not_after > now)
                .cloned()
                .collect()
        };
        let mut added_here: Vec<(String, String)> = Vec::new();
        let mut known = Vec::new();
        let mut dropped = 0;
        let crl = self
            .store
            .update(|ledger, stored| {
                dropped = merge_issued(ledger, &mine, now, MAX_ISSUED_BYTES);
                known.clone_from(&ledger.issued);
                // Serials listed already, then each new one once.
                let mut seen: HashSet<String> =
                    ledger.revoked.iter().map(|e| e.serial.clone()).collect();
                let requested = ledger.issued.iter().filter_map(|i| {
                    let r = ledger.requests.iter().find(|r| r.matches(i))?;
                    Some(i.entry(&r.reason, now))
                });
                let new: Vec<Entry> = entries
                    .iter()
                    .cloned()
                    .chain(requested)
                    .filter(|e| seen.insert(e.serial.clone()))
                    .collect();
                let changed = !new.is_empty();
                added_here = new
                    .iter()
                    .map(|e| (e.serial.clone(), e.reason.clone()))
                    .collect();
                ledger.revoked.extend(new);
                refresh(&self.ca, ledger, stored, changed, self.max_lifetime, now)
            })
            .await?;
        if let Some(pem) = crl {
            *self.crl.write().unwrap_or_else(|e| e.into_inner()) = Some(pem);
        }
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = known;
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_bytes = MAX_ISSUED_BYTES,
                "more unexpired certificates than the ledger keeps records of: the oldest are not stored, so once the replica that issued them restarts they can be revoked by serial only"
            );
        }
        for (serial, reason) in &added_here {
            let label = if reason == POD_DELETED {
                "pod_deleted"
            } else {
                "requested"
            };
            crate::metrics::Metrics::count(&self.metrics.certificates_revoked, label);
            tracing::info!(serial = %serial, reason = %reason, "certificate revoked");
        }
        Ok(())
    }

    /// Revokes the unexpired certificates this replica issued to the pods
    /// with these uids.
    pub async fn revoke_pods(&self, uids: &HashSet<String>) -> Result<usize, RevocationError> {
        let now = OffsetDateTime::now_utc();
        let entries: Vec<Entry> = self
            .unexpired(now, |i| {
                i.to.pod_uid.as_ref().is_some_and(|u| uids.contains(u))
            })
            .iter()
            .map(|i| i.entry(POD_DELETED, now))
            .collect();
        let n = entries.len();
        if n > 0 {
            self.write(entries).await?;
            tracing::info!(
                certificates = n,
                pods = uids.len(),
                "revoked the certificates of deleted pods"
            );
        }
        Ok(n)
    }

    /// Reads the ledger, applies its requests to this replica's
    /// certificates, and re-signs the CRL when due.
    pub async fn sync(&self) -> Result<(), RevocationError> {
        self.write(Vec::new()).await
    }

    /// The pod uids this replica issued unexpired certificates to before `t`.
    fn pod_uids_issued_before(&self, t: OffsetDateTime) -> HashSet<String> {
        let now = OffsetDateTime::now_utc();
        self.unexpired(now, |i| i.issued_at < t)
            .into_iter()
            .filter_map(|i| i.to.pod_uid)
            .collect()
    }

    /// Runs forever: syncs every sync interval and revokes the
    /// certificates of pods deleted (seen by a metadata watch of pods, or
    /// missing from its relist).
    pub fn spawn(self, client: kube::Client) -> Vec<tokio::task::JoinHandle<()>> {
        let (deleted_tx, deleted_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let syncer = {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = me.sync().await {
                        tracing::warn!(error = %e, "revocation sync failed; retrying");
                    }
                    tokio::time::sleep(me.sync_interval).await;
                }
            })
        };
        let batcher = tokio::spawn(self.clone().revoke_batches(deleted_rx));
        let watcher = tokio::spawn(async move {
            // Every replica's records first, so the first relist judges the
            // certificates a predecessor issued too.
            if let Err(e) = self.sync().await {
                tracing::warn!(error = %e, "revocation sync failed; watching pods anyway");
            }
            self.watch_pods(client, deleted_tx).await;
        });
        vec![syncer, batcher, watcher]
    }

    async fn revoke_batches(self, mut deleted: tokio::sync::mpsc::UnboundedReceiver<String>) {
        while let Some(first) = deleted.recv().await {
            tokio::time::sleep(BATCH_DELAY).await;
            let mut uids = HashSet::from([first]);
            while let Ok(more) = deleted.try_recv() {
                uids.insert(more);
            }
            if let Err(e) = self.revoke_pods(&uids).await {
                tracing::warn!(error = %e, pods = uids.len(), "revoking deleted pods' certificates failed; retrying after the sync interval");
                self.retry_later(uids);
            }
        }
    }

    fn retry_later(&self, uids: HashSet<String>) {
        let me = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(me.sync_interval).await;
            if let Err(e) = me.revoke_pods(&uids).await {
                tracing::warn!(error = %e, pods = uids.len(), "revoking deleted pods' certificates failed again");
            }
        });
    }

    async fn watch_pods(
        self,
        client: kube::Client,
        deleted: tokio::sync::mpsc::UnboundedSender<String>,
    ) {
        let api: Api<PartialObjectMeta<Pod>> = Api::all(client);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        // Pods listed by the current relist, and when it started.
        let mut listed: Option<(HashSet<String>, OffsetDateTime)> = None;
        while let Some(event) = events.next().await {
            let uid = |o: &PartialObjectMeta<Pod>| o.metadata.uid.clone().unwrap_or_default();
            match event {
                Ok(watcher::Event::Delete(pod)) => {
                    let _ = deleted.send(uid(&pod));
                }
                Ok(watcher::Event::Init) => {
                    listed = Some((HashSet::new(), OffsetDateTime::now_utc()));
                }
                Ok(watcher::Event::InitApply(pod)) => {
                    if let Some((present, _)) = listed.as_mut() {
                        present.insert(uid(&pod));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    // A pod issued a certificate before the relist began
                    // existed then; if the relist does not show it, it was
                    // deleted while the watch was away. (Pods created during
                    // the relist may be missing from it, so are not judged.)
                    if let Some((present, started)) = listed.take() {
                        for gone in self.pod_uids_issued_before(started).difference(&present) {
                            let _ = deleted.send(gone.clone());
                        }
                    }
                }
                Ok(watcher::Event::Apply(_)) => {}
                Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> CertificateAuthority {
        CertificateAuthority::create(&Default::default(), OffsetDateTime::now_utc()).unwrap()
    }

    fn issued(pod: &str, sa: &str, issued_at: OffsetDateTime) -> Issued {
        Issued {
            serial: "1".into(),
            to: Caller {
                namespace: "team-a".into(),
                service_account: sa.into(),
                pod_name: Some(pod.into()),
                pod_uid: Some(format!("uid-{pod}")),
            },
            issued_at,
            not_after: issued_at + time::Duration::HOUR,
        }
    }

    #[test]
    fn requests_match_by_namespace_pod_or_service_account_and_only_earlier_certificates() {
        let now = OffsetDateTime::now_utc();
        let by_pod = Request {
            namespace: "team-a".into(),
            service_account: None,
            pod: Some("web-1".into()),
            before: now,
            reason: "test".into(),
        };
        let by_sa = Request {
            service_account: Some("web".into()),
            pod: None,
            ..by_pod.clone()
        };
        let earlier = now - time::Duration::MINUTE;
        assert!(by_pod.matches(&issued("web-1", "web", earlier)));
        assert!(!by_pod.matches(&issued("web-2", "web", earlier)));
        assert!(!by_pod.matches(&issued("web-1", "web", now + time::Duration::SECOND)));
        assert!(by_sa.matches(&issued("web-2", "web", earlier)));
        assert!(!by_sa.matches(&issued("web-2", "api", earlier)));
        let mut other_ns = issued("web-1", "web", earlier);
        other_ns.to.namespace = "team-b".into();
        assert!(!by_pod.matches(&other_ns) && !by_sa.matches(&other_ns));
    }

    #[test]
    fn the_crl_is_re_signed_when_changed_due_or_from_another_ca_and_prunes_what_expired() {
        let now = OffsetDateTime::now_utc();
        let ca = ca();
        let entry = |serial: &str, not_after| Entry {
            serial: serial.into(),
            revoked_at: now - time::Duration::HOUR,
            not_after,
            reason: "test".into(),
        };
        let mut ledger = Ledger {
            revoked: vec![
                entry("11", now + time::Duration::HOUR),
                entry("22", now - time::Duration::MINUTE),
            ],
            requests: vec![Request {
                namespace: "a".into(),
                service_account: Some("b".into()),
                pod: None,
                before: now - time::Duration::hours(3),
                reason: "old".into(),
            }],
            ..Ledger::default()
        };
        let hour = Duration::from_secs(3600);
        let crl = refresh(&ca, &mut ledger, None, false, hour, now)
            .unwrap()
            .expect("no CRL yet: one is signed");
        assert_eq!(crl.serials, vec!["11".to_string()]);
        assert_eq!(
            ca.verify_crl(crl.pem.as_bytes()).unwrap(),
            vec!["11".to_string()]
        );
        assert_eq!(ledger.revoked.len(), 1, "expired entry pruned");
        assert!(
            ledger.requests.is_empty(),
            "a request older than any certificate is pruned"
        );
        assert_eq!(
            (ledger.number, ledger.signed_by.clone()),
            (1, ca.info().sha256_fingerprint.clone())
        );

        // Nothing changed and the CRL is fresh: nothing to sign.
        assert!(
            refresh(&ca, &mut ledger, Some(&crl.pem), false, hour, now)
                .unwrap()
                .is_none()
        );
        // A change, a writer without the key asking (next_update cleared), a
        // CRL past half its validity, or a new CA: signed again, numbers grow.
        assert_eq!(
            refresh(&ca, &mut ledger, Some(&crl.pem), true, hour, now)
                .unwrap()
                .unwrap()
                .number,
            2
        );
        ledger.next_update = None;
        assert_eq!(
            refresh(&ca, &mut ledger, Some(&crl.pem), false, hour, now)
                .unwrap()
                .unwrap()
                .number,
            3
        );
        let later = now + CRL_VALIDITY / 2;
        ledger.revoked[0].not_after = later + time::Duration::HOUR;
        assert_eq!(
            refresh(&ca, &mut ledger, Some(&crl.pem), false, hour, later)
                .unwrap()
                .unwrap()
                .number,
            4
        );
        let other = self::ca();
        let crl = refresh(&other, &mut ledger, Some(&crl.pem), false, hour, later)
            .unwrap()
            .unwrap();
        assert_eq!(other.verify_crl(&crl.der).unwrap(), vec!["11".to_string()]);
    }

    #[test]
    fn issued_records_merge_once_per_serial_drop_at_expiry_and_stay_bounded() {
        let now = OffsetDateTime::now_utc();
        let record = |serial: usize, issued_at: OffsetDateTime| Issued {
            serial: serial.to_string(),
            ..issued("web-1", "web", issued_at)
        };
        let mut ledger = Ledger {
            issued: vec![record(1, now), record(2, now - time::Duration::HOUR * 2)],
            ..Ledger::default()
        };
        // Another replica's record 1 is kept once; 2 has expired.
        let merged = merge_issued(&mut ledger, &[record(1, now), record(3, now)], now, 1 << 20);
        assert_eq!(merged, 0);
        let serials: Vec<_> = ledger.issued.iter().map(|i| i.serial.as_str()).collect();
        assert_eq!(serials, ["1", "3"]);
        // Past the byte bound the oldest go first.
        let one = serde_json::to_string(&record(10, now)).unwrap().len() + 1;
        let newer: Vec<Issued> = (10..15)
            .map(|n| record(n, now + time::Duration::seconds(n as i64)))
            .collect();
        assert_eq!(merge_issued(&mut ledger, &newer, now, 5 * one), 2);
        let serials: Vec<_> = ledger.issued.iter().map(|i| i.serial.as_str()).collect();
        assert_eq!(serials, ["10", "11", "12", "13", "14"]);
        // The bound holds for the real limit.
        let many: Vec<Issued> = (100..5100).map(|n| record(n, now)).collect();
        merge_issued(&mut ledger, &many, now, MAX_ISSUED_BYTES);
        assert!(serde_json::to_string(&ledger.issued).unwrap().len() <= MAX_ISSUED_BYTES);
    }

    #[test]
    fn the_ledger_reads_back_what_it_wrote_and_refuses_garbage_clearly() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let ledger = Ledger {
            number: 4,
            next_update: Some(now),
            signed_by: "ab".into(),
            revoked: vec![Entry {
                serial: "5".into(),
                revoked_at: now,
                not_after: now,
                reason: "pod deleted".into(),
            }],
            requests: vec![],
            issued: vec![issued("web-1", "web", now)],
        };
        let json = serde_json::to_string(&ledger).unwrap();
        assert!(
            json.contains("\"notAfter\"")
                && json.contains("\"revokedAt\"")
                && json.contains("\"podUid\":\"uid-web-1\""),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Ledger>(&json).unwrap(), ledger);
        // A record as every replica writes and reads it.
        let at = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap();
        let stored = r#"{"serial":"1","namespace":"team-a","serviceAccount":"web","podName":"web-1","podUid":"uid-web-1","issuedAt":"2026-01-01T00:00:00Z","notAfter":"2026-01-01T01:00:00Z"}"#;
        assert_eq!(
            serde_json::to_string(&issued("web-1", "web", at)).unwrap(),
            stored
        );
        assert_eq!(
            serde_json::from_str::<Issued>(stored).unwrap(),
            issued("web-1", "web", at)
        );
        let podless = stored.replace(r#""podName":"web-1","podUid":"uid-web-1","#, "");
        let read = serde_json::from_str::<Issued>(&podless).unwrap();
        assert_eq!((read.to.pod_name, read.to.pod_uid), (None, None));
        let err = serde_json::from_str::<Ledger>("{\"revoked\": 3}")
            .map_err(RevocationError::Ledger)
            .unwrap_err()
            .to_string();
        assert!(err.contains(LEDGER_KEY), "{err}");
    }
}
