//! The webhook's view of ServiceAccount and namespace annotations: a
//! watch-fed cache of their metadata (metadata-only list + watch, managed
//! fields dropped), so admitting a pod costs no API request.
//!
//! A miss (the cache not yet listed, or an object created a moment ago that
//! the watch has not delivered) falls back to a live read, so a
//! ServiceAccount applied together with its Deployment is never missed. A
//! cached entry can trail an annotation change by the watch's delay
//! (milliseconds); that is safe because the webhook only prepares pods: the
//! certificate API, which decides what a pod gets, reads the ServiceAccount,
//! the pod and the namespace live for every request.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};

/// Annotations of an object.
pub type Annotations = BTreeMap<String, String>;

/// Cached metadata of every ServiceAccount and namespace.
#[derive(Clone)]
pub struct AnnotationCache {
    client: kube::Client,
    service_accounts: Option<Store<PartialObjectMeta<ServiceAccount>>>,
    namespaces: Option<Store<PartialObjectMeta<Namespace>>>,
}

impl AnnotationCache {
    /// Starts watching ServiceAccounts and namespaces (tasks on the current
    /// runtime, retried with backoff while the API server is away).
    pub fn watch(client: kube::Client) -> Self {
        AnnotationCache {
            service_accounts: Some(spawn_reflector::<ServiceAccount>(client.clone())),
            namespaces: Some(spawn_reflector::<Namespace>(client.clone())),
            client,
        }
    }

    /// No cache: every lookup is a live read (tests, and callers that admit
    /// too few pods to be worth a watch).
    pub fn live(client: kube::Client) -> Self {
        AnnotationCache {
            client,
            service_accounts: None,
            namespaces: None,
        }
    }

    /// Waits until both caches hold a first full list (readiness).
    pub async fn wait_until_ready(&self) {
        if let Some(s) = &self.service_accounts {
            let _ = s.wait_until_ready().await;
        }
        if let Some(s) = &self.namespaces {
            let _ = s.wait_until_ready().await;
        }
    }

    /// The annotations of ServiceAccount `namespace/name`; `None` if it
    /// does not exist.
    pub async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Annotations>, kube::Error> {
        let key = ObjectRef::new(name).within(namespace);
        if let Some(hit) = self.service_accounts.as_ref().and_then(|s| s.get(&key)) {
            return Ok(Some(hit.metadata.annotations.clone().unwrap_or_default()));
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), namespace);
        Ok(api
            .get_opt(name)
            .await?
            .map(|sa| sa.metadata.annotations.unwrap_or_default()))
    }

    /// The annotations of namespace `name`; `None` if it does not exist.
    pub async fn namespace(&self, name: &str) -> Result<Option<Annotations>, kube::Error> {
        let key = ObjectRef::new(name);
        if let Some(hit) = self.namespaces.as_ref().and_then(|s| s.get(&key)) {
            return Ok(Some(hit.metadata.annotations.clone().unwrap_or_default()));
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        Ok(api
            .get_opt(name)
            .await?
            .map(|ns| ns.metadata.annotations.unwrap_or_default()))
    }
}

fn spawn_reflector<K>(client: kube::Client) -> Store<PartialObjectMeta<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K: Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<PartialObjectMeta<K>> = Api::all(client);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(|o| o.metadata.managed_fields = None);
    let kind = K::kind(&()).to_string();
    tokio::spawn(async move {
        reflector::reflector(writer, stream)
            .for_each(move |event| {
                if let Err(e) = event {
                    tracing::warn!(kind = %kind, error = %e, "watch failed; retrying (lookups read live meanwhile)");
                }
                futures::future::ready(())
            })
            .await;
    });
    reader
}
