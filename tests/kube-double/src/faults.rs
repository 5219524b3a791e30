//! Fault injection: latency, injected error statuses, conflicts on writes, dropped watches.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::status::ApiError;

#[derive(Debug)]
struct Rule {
    remaining: u64,
    code: u16,
    verbs: Vec<String>,
    resource: Option<String>,
}

#[derive(Default, Debug)]
struct Inner {
    latency: Duration,
    rules: Vec<Rule>,
}

/// A handle to the double's fault injection; clones share state.
#[derive(Clone, Debug)]
pub struct Faults {
    inner: Arc<Mutex<Inner>>,
    drop_watches: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Faults {
    pub(crate) fn new() -> Faults {
        Faults {
            inner: Arc::default(),
            drop_watches: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delays every API request by `d` before it is handled (watch streams too).
    pub fn set_latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// Makes the next `n` requests matching `verb` (`get`, `list`, `watch`, `create`,
    /// `update`, `patch`, `delete`, `deletecollection`; `None` = any) and `resource`
    /// (plural, with `/subresource`, e.g. `serviceaccounts/token`; `None` = any)
    /// fail with `status` and the matching `Status` body (429 adds `Retry-After: 1`).
    pub fn fail_next(&self, n: u64, status: u16, verb: Option<&str>, resource: Option<&str>) {
        self.lock().rules.push(Rule {
            remaining: n,
            code: status,
            verbs: verb.map(|v| vec![v.to_string()]).unwrap_or_default(),
            resource: resource.map(str::to_string),
        });
    }

    /// Makes the next `n` writes that modify an existing object (`update` or `patch`)
    /// fail with `409 Conflict`, as if another writer had raced them.
    pub fn conflict_next_updates(&self, n: u64) {
        self.lock().rules.push(Rule {
            remaining: n,
            code: 409,
            verbs: vec!["update".into(), "patch".into()],
            resource: None,
        });
    }

    /// Ends every open watch stream now (clients see the stream close, as after an API
    /// server restart or a load balancer timeout).
    pub fn drop_watches(&self) {
        self.drop_watches.send_modify(|g| *g += 1);
    }

    /// Removes every injected fault and the latency.
    pub fn clear(&self) {
        let mut g = self.lock();
        g.rules.clear();
        g.latency = Duration::ZERO;
    }

    pub(crate) fn latency(&self) -> Duration {
        self.lock().latency
    }

    pub(crate) fn watch_drops(&self) -> tokio::sync::watch::Receiver<u64> {
        self.drop_watches.subscribe()
    }

    /// Consumes a matching rule and returns the error it injects.
    pub(crate) fn take(
        &self,
        verb: &str,
        resource: &str,
        name: &str,
        group: &str,
    ) -> Option<ApiError> {
        let mut g = self.lock();
        let rule = g.rules.iter_mut().find(|r| {
            r.remaining > 0
                && (r.verbs.is_empty() || r.verbs.iter().any(|v| v == verb))
                && r.resource.as_deref().is_none_or(|x| x == resource)
        })?;
        rule.remaining -= 1;
        let code = rule.code;
        g.rules.retain(|r| r.remaining > 0);
        if code == 409 && !name.is_empty() {
            let base = resource.split('/').next().unwrap_or(resource);
            return Some(ApiError::stale(&crate::status::Target {
                group,
                resource: base,
                name,
            }));
        }
        Some(ApiError::injected(code))
    }
}
