//! The generic object store: objects by resource/namespace/name, one global
//! `resourceVersion` counter (like etcd's revision) and a bounded event history for watches.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use crate::resources::ResourceType;

/// Identity of a stored object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    /// Index into [`crate::resources::RESOURCES`].
    pub res: usize,
    /// Namespace ("" for cluster-scoped objects).
    pub namespace: String,
    /// Object name.
    pub name: String,
}

impl ObjKey {
    /// Key of `name` in `namespace` for `rt`.
    pub fn new(rt: &'static ResourceType, namespace: &str, name: &str) -> ObjKey {
        ObjKey {
            res: rt.index(),
            namespace: if rt.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }
}

/// Kind of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Object created.
    Added,
    /// Object changed.
    Modified,
    /// Object removed (the event carries its last state).
    Deleted,
}

impl EventType {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// A change, as kept in the history and sent to watchers.
#[derive(Clone, Debug)]
pub struct Event {
    /// The store revision this change created.
    pub rv: u64,
    /// What changed.
    pub key: ObjKey,
    /// The kind of change.
    pub kind: EventType,
    /// New state (last state for deletions).
    pub object: Value,
    /// Previous state for modifications (selectors turn these into ADDED/DELETED).
    pub old: Option<Value>,
}

/// Past events to replay plus a receiver for later ones.
pub type Replay = (Vec<Arc<Event>>, broadcast::Receiver<Arc<Event>>);

/// Default number of events kept for watches that resume from a `resourceVersion`.
pub const DEFAULT_HISTORY: usize = 1000;

/// The object store. Callers hold it behind a mutex.
pub struct Store {
    objects: BTreeMap<ObjKey, Value>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    history_limit: usize,
    compacted_through: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store at revision 1.
    pub fn new() -> Store {
        let (tx, _) = broadcast::channel(4096);
        Store {
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            history_limit: DEFAULT_HISTORY,
            compacted_through: 0,
            tx,
        }
    }

    /// The current revision (what a list returns as its `resourceVersion`).
    pub fn revision(&self) -> u64 {
        self.rv
    }

    /// Oldest revision a watch may resume from; older ones get `410 Expired`.
    pub fn compacted_through(&self) -> u64 {
        self.compacted_through
    }

    /// Sets how many events are kept, compacting immediately.
    pub fn set_history_limit(&mut self, limit: usize) {
        self.history_limit = limit;
        self.compact();
    }

    /// Drops all history (as if etcd compacted up to now).
    pub fn compact_all(&mut self) {
        self.history.clear();
        self.compacted_through = self.rv;
    }

    fn compact(&mut self) {
        while self.history.len() > self.history_limit {
            if let Some(e) = self.history.pop_front() {
                self.compacted_through = e.rv;
            }
        }
    }

    /// One object.
    pub fn get(&self, key: &ObjKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of one resource, optionally in one namespace, in key order.
    pub fn list(&self, res: usize, namespace: Option<&str>) -> Vec<(&ObjKey, &Value)> {
        self.objects
            .iter()
            .filter(|(k, _)| k.res == res && namespace.is_none_or(|ns| k.namespace == ns))
            .collect()
    }

    /// Every stored object.
    pub fn all(&self) -> impl Iterator<Item = (&ObjKey, &Value)> {
        self.objects.iter()
    }

    /// Creates or replaces `key` with `obj`, stamping a new `resourceVersion`.
    pub fn put(&mut self, key: ObjKey, mut obj: Value) -> Value {
        self.rv += 1;
        crate::meta::meta_mut(&mut obj)
            .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        let old = self.objects.insert(key.clone(), obj.clone());
        let kind = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(key, kind, obj.clone(), old);
        obj
    }

    /// Removes `key`, returning its last state.
    pub fn remove(&mut self, key: &ObjKey) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        self.rv += 1;
        // The DELETED event carries the deletion's revision, as the real server does.
        crate::meta::meta_mut(&mut obj)
            .insert("resourceVersion".into(), Value::String(self.rv.to_string()));
        self.record(key.clone(), EventType::Deleted, obj.clone(), None);
        Some(obj)
    }

    fn record(&mut self, key: ObjKey, kind: EventType, object: Value, old: Option<Value>) {
        let ev = Arc::new(Event {
            rv: self.rv,
            key,
            kind,
            object,
            old,
        });
        self.history.push_back(ev.clone());
        self.compact();
        // No receivers is fine.
        let _ = self.tx.send(ev);
    }

    /// Events after `rv` for resource `res`, and a receiver for later ones; `None` when
    /// `rv` is older than the retained history.
    pub fn watch_from(&self, rv: u64) -> Option<Replay> {
        if rv < self.compacted_through {
            return None;
        }
        let past = self.history.iter().filter(|e| e.rv > rv).cloned().collect();
        Some((past, self.tx.subscribe()))
    }

    /// A receiver for events after now.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::RESOURCES;
    use serde_json::json;

    #[test]
    fn revisions_and_history() {
        let mut s = Store::new();
        s.set_history_limit(2);
        let rt = &RESOURCES[0];
        for n in ["a", "b", "c"] {
            s.put(ObjKey::new(rt, "", n), json!({"metadata": {"name": n}}));
        }
        assert_eq!(s.revision(), 4);
        assert!(s.watch_from(1).is_none());
        let (past, _) = s.watch_from(2).expect("revision 2 is retained");
        assert_eq!(past.len(), 2);
    }
}
