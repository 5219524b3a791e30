//! Watch streams: initial state or history replay from a `resourceVersion`, live events,
//! selector transitions (ADDED/DELETED when an object starts/stops matching), bookmarks,
//! `410 Expired` for compacted versions, timeouts and injected drops.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::api::{ListOpts, Shared};
use crate::resources::ResourceType;
use crate::status::{ApiError, ApiResult};
use crate::store::{Event, EventType};

/// How long a watch stays idle before a `BOOKMARK` is sent (when bookmarks are allowed).
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(5);

/// Watch parameters from the query string.
pub struct WatchOpts {
    /// Selectors.
    pub list: ListOpts,
    /// `resourceVersion` ("" or "0": start with the current state).
    pub resource_version: String,
    /// `timeoutSeconds` (default 1800).
    pub timeout: Duration,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents`.
    pub initial_events: bool,
}

struct State {
    sh: Arc<Shared>,
    rt: &'static ResourceType,
    ns: Option<String>,
    opts: WatchOpts,
    queue: VecDeque<Value>,
    rx: Option<broadcast::Receiver<Arc<Event>>>,
    drops: tokio::sync::watch::Receiver<u64>,
    deadline: Instant,
    done: bool,
}

fn with_type(rt: &ResourceType, mut obj: Value) -> Value {
    obj["apiVersion"] = json!(rt.api_version());
    obj["kind"] = json!(rt.kind);
    obj
}

fn bookmark(rt: &ResourceType, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"type": "BOOKMARK", "object": {"apiVersion": rt.api_version(), "kind": rt.kind, "metadata": meta}})
}

/// The wire event for a store event, if a watch on `rt` in `ns` with `list` selectors
/// should see it.
fn translate(
    rt: &'static ResourceType,
    ns: Option<&str>,
    list: &ListOpts,
    e: &Event,
) -> Option<Value> {
    if e.key.res != rt.index() || ns.is_some_and(|n| n != e.key.namespace) {
        return None;
    }
    let now = list.matches(&e.object);
    let was = e.old.as_ref().is_some_and(|o| list.matches(o));
    let ty = match (e.kind, was, now) {
        (EventType::Added, _, true) => "ADDED",
        (EventType::Modified, true, true) => "MODIFIED",
        (EventType::Modified, false, true) => "ADDED",
        (EventType::Modified, true, false) => "DELETED",
        (EventType::Deleted, _, true) => "DELETED",
        _ => return None,
    };
    Some(json!({"type": ty, "object": with_type(rt, e.object.clone())}))
}

/// Starts a watch; the body streams one JSON event per line.
pub fn start(
    sh: Arc<Shared>,
    rt: &'static ResourceType,
    ns: Option<String>,
    opts: WatchOpts,
) -> ApiResult<Body> {
    let mut queue = VecDeque::new();
    let rx;
    {
        let store = sh.store();
        let rv = opts.resource_version.as_str();
        if rv.is_empty() || rv == "0" || opts.initial_events {
            for (_, v) in store.list(rt.index(), ns.as_deref()) {
                if opts.list.matches(v) {
                    queue.push_back(json!({"type": "ADDED", "object": with_type(rt, v.clone())}));
                }
            }
            if opts.initial_events && opts.bookmarks {
                queue.push_back(bookmark(rt, store.revision(), true));
            }
            rx = Some(store.subscribe());
        } else {
            let n: u64 = rv
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
            match store.watch_from(n) {
                Some((past, r)) => {
                    queue.extend(
                        past.iter()
                            .filter_map(|e| translate(rt, ns.as_deref(), &opts.list, e)),
                    );
                    rx = Some(r);
                }
                None => {
                    let err = ApiError::expired(format!(
                        "too old resource version: {n} ({})",
                        store.compacted_through()
                    ));
                    queue.push_back(json!({"type": "ERROR", "object": err.to_status()}));
                    rx = None;
                }
            }
        }
    }
    let deadline = Instant::now() + opts.timeout;
    let drops = {
        let mut d = sh.faults.watch_drops();
        d.mark_unchanged();
        d
    };
    let state = State {
        sh,
        rt,
        ns,
        opts,
        queue,
        rx,
        drops,
        deadline,
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(v) = st.queue.pop_front() {
                let mut line = v.to_string().into_bytes();
                line.push(b'\n');
                return Some((Ok::<Bytes, Infallible>(Bytes::from(line)), st));
            }
            if st.done {
                return None;
            }
            let rx = st.rx.as_mut()?;
            let idle = tokio::time::sleep(if st.opts.bookmarks {
                BOOKMARK_INTERVAL
            } else {
                Duration::from_secs(3600)
            });
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(e) => {
                        if let Some(v) = translate(st.rt, st.ns.as_deref(), &st.opts.list, &e) {
                            st.queue.push_back(v);
                        }
                    }
                    // Lagged or closed: end the stream; the client resumes from its last version.
                    Err(_) => st.done = true,
                },
                _ = tokio::time::sleep_until(st.deadline) => st.done = true,
                _ = st.drops.changed() => st.done = true,
                _ = idle => {
                    let rv = st.sh.store().revision();
                    st.queue.push_back(bookmark(st.rt, rv, false));
                }
            }
        }
    });
    Ok(Body::from_stream(stream))
}
