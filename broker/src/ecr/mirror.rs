//! Following one watch: the loop every mirrored kind shares (initial list,
//! re-lists after a broken watch, applies and deletes), so each kind only says
//! what an event means for the controller's [`super::world::World`].

use std::collections::HashSet;
use std::hash::Hash;

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;

/// What a kind does with its watch events.
pub(super) struct Handlers<K, Id, A, D, R>
where
    A: FnMut(K, bool),
    D: FnMut(K),
    R: FnMut(HashSet<Id>, bool),
{
    /// The identity under which re-lists are compared.
    pub id: fn(&K) -> Id,
    /// An object was listed or changed; the flag says whether the initial list is done.
    pub apply: A,
    /// An object was deleted.
    pub delete: D,
    /// A (re)list finished with these ids; the flag is true for the first one.
    pub relisted: R,
}

/// Follows `api` (filtered by `config`) until the stream ends, calling the
/// handlers, and bumps `ready` once the first list is complete. Watch errors
/// are logged and retried with kube-runtime's default backoff.
pub(super) async fn follow<K, Id, A, D, R>(
    api: Api<K>,
    config: watcher::Config,
    kind: &'static str,
    mut h: Handlers<K, Id, A, D, R>,
    ready: &tokio::sync::watch::Sender<u32>,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    Id: Eq + Hash,
    A: FnMut(K, bool),
    D: FnMut(K),
    R: FnMut(HashSet<Id>, bool),
{
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut relist: Option<HashSet<Id>> = None;
    let mut synced = false;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!(kind, error = %e, "watch failed; retrying");
                continue;
            }
        };
        match ev {
            watcher::Event::Init => relist = Some(HashSet::new()),
            watcher::Event::InitApply(obj) | watcher::Event::Apply(obj) => {
                if let Some(seen) = relist.as_mut() {
                    seen.insert((h.id)(&obj));
                }
                (h.apply)(obj, synced);
            }
            watcher::Event::Delete(obj) => (h.delete)(obj),
            watcher::Event::InitDone => {
                if let Some(seen) = relist.take() {
                    (h.relisted)(seen, !synced);
                }
                if !synced {
                    synced = true;
                    ready.send_modify(|n| *n += 1);
                }
            }
        }
    }
}
