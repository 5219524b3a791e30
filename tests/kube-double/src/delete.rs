//! Deletion: preconditions, finalizers, namespace contents and owner-reference garbage
//! collection, and deletecollection.

use serde_json::{Value, json};

use crate::api::{ListOpts, Shared, get, tgt};
use crate::meta::{meta_mut, meta_str, now_rfc3339};
use crate::resources::ResourceType;
use crate::status::{ApiError, ApiResult};
use crate::store::{ObjKey, Store};

/// `DELETE` one object. `body` is the optional `DeleteOptions`.
pub fn delete(
    sh: &Shared,
    rt: &'static ResourceType,
    ns: &str,
    name: &str,
    body: &Value,
    dry_run: bool,
) -> ApiResult<Value> {
    let key = ObjKey::new(rt, ns, name);
    let mut store = sh.store();
    let old = store
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&tgt(rt, name)))?;
    let pre = body.get("preconditions").cloned().unwrap_or(Value::Null);
    if let Some(uid) = pre.get("uid").and_then(Value::as_str)
        && uid != meta_str(&old, "uid")
    {
        return Err(ApiError::conflict(
            &tgt(rt, name),
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta_str(&old, "uid")
            ),
        ));
    }
    if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str)
        && rv != meta_str(&old, "resourceVersion")
    {
        return Err(ApiError::conflict(
            &tgt(rt, name),
            &format!(
                "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                meta_str(&old, "resourceVersion")
            ),
        ));
    }
    let orphan = body.get("propagationPolicy").and_then(Value::as_str) == Some("Orphan")
        || body.get("orphanDependents").and_then(Value::as_bool) == Some(true);
    let has_finalizers = old
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let returns_object = rt.group.is_empty() && matches!(rt.resource, "pods" | "namespaces");
    if has_finalizers {
        let mut obj = old.clone();
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            let m = meta_mut(&mut obj);
            m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
            if !dry_run {
                obj = store.put(key, obj);
            }
        }
        return Ok(obj);
    }
    if dry_run {
        return Ok(if returns_object {
            old
        } else {
            crate::status::success(rt.group, rt.resource, name, meta_str(&old, "uid"))
        });
    }
    let gone = store.remove(&key).unwrap_or(old);
    after_removal(&mut store, rt, ns, name, &gone, orphan);
    if returns_object {
        let mut obj = gone;
        meta_mut(&mut obj).insert("deletionTimestamp".into(), json!(now_rfc3339()));
        if rt.resource == "namespaces" {
            obj["status"]["phase"] = json!("Terminating");
        }
        Ok(obj)
    } else {
        Ok(crate::status::success(
            rt.group,
            rt.resource,
            name,
            meta_str(&gone, "uid"),
        ))
    }
}

/// Cascades after an object is gone: a namespace's contents, and dependents whose every
/// owner is gone (garbage collection, background propagation), or orphaning.
pub(crate) fn after_removal(
    store: &mut Store,
    rt: &ResourceType,
    _ns: &str,
    name: &str,
    gone: &Value,
    orphan: bool,
) {
    if rt.group.is_empty() && rt.resource == "namespaces" {
        let keys: Vec<ObjKey> = store
            .all()
            .filter(|(k, _)| k.namespace == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            store.remove(&k);
        }
    }
    let mut dead = vec![meta_str(gone, "uid").to_string()];
    while let Some(uid) = dead.pop() {
        let dependents: Vec<(ObjKey, Value)> = store
            .all()
            .filter(|(_, v)| owner_uids(v).contains(&uid))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in dependents {
            if orphan {
                let mut v = v;
                if let Some(refs) = v
                    .pointer_mut("/metadata/ownerReferences")
                    .and_then(Value::as_array_mut)
                {
                    refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
                }
                store.put(k, v);
                continue;
            }
            let live_owner = owner_uids(&v)
                .iter()
                .any(|o| *o != uid && store.all().any(|(_, x)| meta_str(x, "uid") == o));
            if !live_owner && let Some(g) = store.remove(&k) {
                dead.push(meta_str(&g, "uid").to_string());
            }
        }
    }
}

fn owner_uids(v: &Value) -> Vec<String> {
    v.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
        .collect()
}

/// `DELETE` a collection: deletes every matching object, returns them as a list.
pub fn delete_collection(
    sh: &Shared,
    rt: &'static ResourceType,
    ns: Option<&str>,
    o: &ListOpts,
    body: &Value,
    dry_run: bool,
) -> ApiResult<Value> {
    let names: Vec<(String, String)> = sh
        .store()
        .list(rt.index(), ns)
        .into_iter()
        .filter(|(_, v)| o.matches(v))
        .map(|(k, _)| (k.namespace.clone(), k.name.clone()))
        .collect();
    let mut items = vec![];
    for (n, name) in names {
        if let Ok(v) = get(sh, rt, &n, &name) {
            items.push(v);
        }
        delete(sh, rt, &n, &name, body, dry_run)?;
    }
    let rev = sh.store().revision();
    Ok(
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {"resourceVersion": rev.to_string()}, "items": items}),
    )
}
