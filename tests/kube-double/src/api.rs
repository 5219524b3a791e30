//! The verbs on stored resources: get, list, create, update, patch, delete,
//! deletecollection, with the real server's write pipeline (defaulting, mutating
//! admission, validation, optimistic concurrency, finalizers, namespace and owner cascades).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use base64::Engine;
use serde_json::{Value, json};

use crate::auth::{Authority, UserInfo};
use crate::faults::Faults;
use crate::meta::{
    meta_mut, meta_str, new_uid, now_rfc3339, random_suffix, validate_name, validate_object_meta,
};
use crate::patch::{PatchType, fields_v1};
use crate::resources::{RESOURCES, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{ApiError, ApiResult, Cause, Target};
use crate::store::{ObjKey, Store};

/// State shared by the server and the test-facing handle.
pub struct Shared {
    pub(crate) store: Mutex<Store>,
    pub(crate) auth: Authority,
    pub(crate) faults: Faults,
    pub(crate) counts: Mutex<HashMap<(String, String), u64>>,
    /// Every resource request: who, which verb, on what (bounded).
    pub(crate) audit: Mutex<Vec<crate::AuditEntry>>,
    pub(crate) endpoints: Mutex<HashMap<(String, String, u16), SocketAddr>>,
    pub(crate) version: Mutex<(String, String)>,
    pub(crate) warnings: Mutex<Vec<String>>,
    pub(crate) reviews: Mutex<Vec<Value>>,
    pub(crate) applied: Mutex<HashMap<(ObjKey, String), Value>>,
    pub(crate) ca_pem: String,
    pub(crate) base_url: Mutex<String>,
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not wedge the double).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }
}

/// Options of one write request.
#[derive(Clone, Debug, Default)]
pub struct WriteOpts {
    /// `dryRun=All`.
    pub dry_run: bool,
    /// `fieldManager`.
    pub field_manager: Option<String>,
    /// Who is asking (sent to webhooks as `userInfo`).
    pub user: UserInfo,
    /// Whether to call mutating webhooks (seeding skips them).
    pub webhooks: bool,
    /// The subresource written (`status`).
    pub sub: Option<String>,
}

pub(crate) fn tgt<'a>(rt: &'a ResourceType, name: &'a str) -> Target<'a> {
    Target {
        group: rt.group,
        resource: rt.resource,
        name,
    }
}

fn namespaces_rt() -> &'static ResourceType {
    &RESOURCES[0]
}

fn invalid(rt: &ResourceType, name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(rt.kind, rt.group, name, causes)
}

/// `GET` one object.
pub fn get(sh: &Shared, rt: &'static ResourceType, ns: &str, name: &str) -> ApiResult<Value> {
    sh.store()
        .get(&ObjKey::new(rt, ns, name))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&tgt(rt, name)))
}

/// Parsed list options.
pub struct ListOpts {
    /// `labelSelector`.
    pub labels: LabelSelector,
    /// `fieldSelector`.
    pub fields: FieldSelector,
    /// `limit` (0 = all).
    pub limit: usize,
    /// `continue`.
    pub cont: Option<String>,
}

impl ListOpts {
    /// From query parameters.
    pub fn parse(rt: &ResourceType, q: &HashMap<String, String>) -> ApiResult<ListOpts> {
        Ok(ListOpts {
            labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?,
            fields: FieldSelector::parse(
                rt.resource,
                q.get("fieldSelector").map_or("", String::as_str),
            )?,
            limit: match q.get("limit") {
                Some(l) => l
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
                None => 0,
            },
            cont: q.get("continue").filter(|c| !c.is_empty()).cloned(),
        })
    }

    /// Whether `obj` passes both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(&crate::meta::labels(obj)) && self.fields.matches(obj)
    }
}

/// `GET` a collection (one namespace, or all when `ns` is `None`).
pub fn list(
    sh: &Shared,
    rt: &'static ResourceType,
    ns: Option<&str>,
    o: &ListOpts,
) -> ApiResult<Value> {
    let store = sh.store();
    let rev = store.revision();
    let after = match &o.cont {
        None => None,
        Some(c) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("continue key is not valid: illegal base64 data")
                })?;
            let mut parts = raw.splitn(3, '\n');
            let (_rv, kns, kname) = (parts.next(), parts.next(), parts.next());
            Some((
                kns.unwrap_or_default().to_string(),
                kname.unwrap_or_default().to_string(),
            ))
        }
    };
    let mut items = vec![];
    let mut next = None;
    let mut remaining = 0u64;
    for (k, v) in store.list(rt.index(), ns) {
        if after
            .as_ref()
            .is_some_and(|(an, am)| (&k.namespace, &k.name) <= (an, am))
        {
            continue;
        }
        if !o.matches(v) {
            continue;
        }
        if o.limit > 0 && items.len() >= o.limit {
            remaining += 1;
            continue;
        }
        let mut item = v.clone();
        if let Some(m) = item.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
        items.push(item);
        if o.limit > 0 && items.len() == o.limit {
            next = Some(format!("{rev}\n{}\n{}", k.namespace, k.name));
        }
    }
    let mut meta = json!({"resourceVersion": rev.to_string()});
    if remaining > 0
        && let Some(n) = next
    {
        meta["continue"] = json!(base64::engine::general_purpose::STANDARD.encode(n));
        meta["remainingItemCount"] = json!(remaining);
    }
    Ok(
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": meta, "items": items}),
    )
}

fn clear_system_fields(obj: &mut Value) {
    let m = meta_mut(obj);
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "selfLink",
    ] {
        m.remove(f);
    }
}

fn check_namespace(store: &Store, rt: &ResourceType, ns: &str) -> ApiResult<()> {
    if !rt.namespaced {
        return Ok(());
    }
    match store.get(&ObjKey::new(namespaces_rt(), "", ns)) {
        None => Err(ApiError::not_found(&Target {
            group: "",
            resource: "namespaces",
            name: ns,
        })),
        Some(n) if n.pointer("/metadata/deletionTimestamp").is_some() => Err(ApiError::forbidden(
            &tgt(rt, ""),
            format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        )),
        Some(_) => Ok(()),
    }
}

fn set_scope(rt: &ResourceType, obj: &mut Value, ns: &str) -> ApiResult<()> {
    let m = meta_mut(obj);
    if rt.namespaced {
        let bns = m
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !bns.is_empty() && bns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        m.insert("namespace".into(), json!(ns));
    } else {
        m.remove("namespace");
    }
    Ok(())
}

fn validate_all(rt: &ResourceType, obj: &Value, name: &str) -> Vec<Cause> {
    let mut causes = if meta_str(obj, "name").is_empty() {
        let g = meta_str(obj, "generateName");
        validate_name(rt.name_rule, &format!("{g}a"), "metadata.generateName")
    } else {
        validate_name(rt.name_rule, name, "metadata.name")
    };
    causes.extend(validate_object_meta(
        obj.get("metadata").unwrap_or(&Value::Null),
    ));
    causes.extend(crate::kinds::validate(rt, obj));
    causes
}

fn warnings_for(rt: &ResourceType, obj: &Value) -> Vec<String> {
    if rt.resource == "pods" {
        crate::pods::pod_warnings(obj)
    } else {
        vec![]
    }
}

/// `POST` a new object through the full pipeline. Returns the stored object and warnings.
pub async fn create(
    sh: &Arc<Shared>,
    rt: &'static ResourceType,
    ns: &str,
    body: Value,
    o: &WriteOpts,
) -> ApiResult<(Value, Vec<String>)> {
    let mut obj = rt.decode(body)?;
    set_scope(rt, &mut obj, ns)?;
    let ns = if rt.namespaced { ns } else { "" };
    if meta_str(&obj, "name").is_empty() && meta_str(&obj, "generateName").is_empty() {
        return Err(invalid(
            rt,
            "",
            vec![Cause::required(
                "metadata.name",
                "name or generateName is required",
            )],
        ));
    }
    if !meta_str(&obj, "resourceVersion").is_empty() {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    clear_system_fields(&mut obj);
    crate::kinds::default_object(rt, &mut obj);
    {
        let store = sh.store();
        check_namespace(&store, rt, ns)?;
        if rt.resource == "pods" && rt.group.is_empty() {
            let sa_name = obj
                .pointer("/spec/serviceAccountName")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            let sa_rt =
                ResourceType::find("", "v1", "serviceaccounts").ok_or_else(ApiError::no_route)?;
            let Some(sa) = store.get(&ObjKey::new(sa_rt, ns, &sa_name)).cloned() else {
                return Err(ApiError::forbidden(
                    &tgt(rt, meta_str(&obj, "name")),
                    format!(
                        "error looking up service account {ns}/{sa_name}: serviceaccount {sa_name:?} not found"
                    ),
                ));
            };
            crate::pods::mount_service_account_token(&mut obj, &sa, &random_suffix(5));
        }
    }
    if o.webhooks {
        obj = crate::admission::run(sh, rt, None, "CREATE", ns, obj, None, o).await?;
        obj = rt.decode(obj)?;
        set_scope(rt, &mut obj, ns)?;
        crate::kinds::default_object(rt, &mut obj);
    }
    let mut name = meta_str(&obj, "name").to_string();
    let causes = validate_all(rt, &obj, &name);
    if !causes.is_empty() {
        return Err(invalid(rt, &name, causes));
    }
    if name.is_empty() {
        name = format!("{}{}", meta_str(&obj, "generateName"), random_suffix(5));
    }
    let m = meta_mut(&mut obj);
    m.insert("name".into(), json!(name));
    m.insert("uid".into(), json!(new_uid()));
    m.insert("creationTimestamp".into(), json!(now_rfc3339()));
    if obj.get("spec").is_some() && rt.resource != "namespaces" {
        meta_mut(&mut obj).insert("generation".into(), json!(1));
    }
    let warnings = warnings_for(rt, &obj);
    if o.dry_run {
        return Ok((obj, warnings));
    }
    let stored = {
        let mut store = sh.store();
        check_namespace(&store, rt, ns)?;
        let key = ObjKey::new(rt, ns, &name);
        if store.get(&key).is_some() {
            return Err(ApiError::already_exists(&tgt(rt, &name)));
        }
        let stored = store.put(key, obj);
        if rt.resource == "namespaces" && rt.group.is_empty() {
            namespace_created(&mut store, &name, &sh.ca_pem);
        }
        stored
    };
    Ok((stored, warnings))
}

/// What the namespace controllers do for a new namespace: the `default` ServiceAccount
/// and the `kube-root-ca.crt` ConfigMap.
fn namespace_created(store: &mut Store, ns: &str, ca_pem: &str) {
    let now = now_rfc3339();
    if let Some(rt) = ResourceType::find("", "v1", "serviceaccounts") {
        let key = ObjKey::new(rt, ns, "default");
        if store.get(&key).is_none() {
            store.put(key, json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": ns, "uid": new_uid(), "creationTimestamp": now}}));
        }
    }
    if let Some(rt) = ResourceType::find("", "v1", "configmaps") {
        let key = ObjKey::new(rt, ns, "kube-root-ca.crt");
        if store.get(&key).is_none() {
            store.put(key, json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kube-root-ca.crt", "namespace": ns, "uid": new_uid(), "creationTimestamp": now,
                             "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                "data": {"ca.crt": ca_pem}}));
        }
    }
}

fn without_volatile(v: &Value) -> Value {
    let mut v = v.clone();
    let m = meta_mut(&mut v);
    m.remove("resourceVersion");
    m.remove("managedFields");
    v
}

/// `PUT` (or the update half of a `PATCH`): `obj` replaces the stored object.
pub async fn update(
    sh: &Arc<Shared>,
    rt: &'static ResourceType,
    ns: &str,
    name: &str,
    body: Value,
    o: &WriteOpts,
) -> ApiResult<(Value, Vec<String>)> {
    let mut obj = rt.decode(body)?;
    let bname = meta_str(&obj, "name").to_string();
    if bname.is_empty() {
        meta_mut(&mut obj).insert("name".into(), json!(name));
    } else if bname != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({bname}) does not match the name on the URL ({name})"
        )));
    }
    set_scope(rt, &mut obj, ns)?;
    let ns = if rt.namespaced { ns } else { "" };
    let key = ObjKey::new(rt, ns, name);
    let old = sh
        .store()
        .get(&key)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&tgt(rt, name)))?;
    let old_rv = meta_str(&old, "resourceVersion").to_string();
    let body_rv = meta_str(&obj, "resourceVersion").to_string();
    if !body_rv.is_empty() && body_rv != old_rv {
        return Err(ApiError::stale(&tgt(rt, name)));
    }
    let status_only = o.sub.as_deref() == Some("status");
    if rt.status_subresource {
        if status_only {
            let status = obj.get("status").cloned();
            obj = old.clone();
            match status {
                Some(s) => obj["status"] = s,
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        } else if let Some(s) = old.get("status") {
            obj["status"] = s.clone();
        }
    }
    {
        let om = old.get("metadata").cloned().unwrap_or(json!({}));
        let m = meta_mut(&mut obj);
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ] {
            match om.get(f) {
                Some(v) => m.insert(f.into(), v.clone()),
                None => m.remove(f),
            };
        }
        if !m.contains_key("managedFields")
            && let Some(mf) = om.get("managedFields")
        {
            m.insert("managedFields".into(), mf.clone());
        }
        m.insert("resourceVersion".into(), json!(old_rv));
    }
    crate::kinds::default_object(rt, &mut obj);
    if o.webhooks {
        obj = crate::admission::run(sh, rt, o.sub.as_deref(), "UPDATE", ns, obj, Some(&old), o)
            .await?;
        obj = rt.decode(obj)?;
        set_scope(rt, &mut obj, ns)?;
        crate::kinds::default_object(rt, &mut obj);
    }
    let mut causes = validate_all(rt, &obj, name);
    causes.extend(crate::kinds::validate_update(rt, &obj, &old));
    if !causes.is_empty() {
        return Err(invalid(rt, name, causes));
    }
    let warnings = warnings_for(rt, &obj);
    if without_volatile(&obj) == without_volatile(&old) {
        return Ok((old, warnings));
    }
    if obj.get("spec") != old.get("spec")
        && let Some(g) = old.pointer("/metadata/generation").and_then(Value::as_i64)
    {
        meta_mut(&mut obj).insert("generation".into(), json!(g + 1));
    }
    if o.dry_run {
        return Ok((obj, warnings));
    }
    let mut store = sh.store();
    match store.get(&key) {
        None => return Err(ApiError::not_found(&tgt(rt, name))),
        Some(cur) if meta_str(cur, "resourceVersion") != old_rv => {
            let mut e = ApiError::stale(&tgt(rt, name));
            e.race = true;
            return Err(e);
        }
        Some(_) => {}
    }
    let finalizers_done = obj.pointer("/metadata/deletionTimestamp").is_some()
        && obj
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    if finalizers_done {
        let gone = store.put(key.clone(), obj);
        store.remove(&key);
        crate::delete::after_removal(&mut store, rt, ns, name, &gone, false);
        return Ok((gone, warnings));
    }
    Ok((store.put(key, obj), warnings))
}

/// `PATCH`, including server-side apply (which may create).
pub async fn patch(
    sh: &Arc<Shared>,
    rt: &'static ResourceType,
    ns: &str,
    name: &str,
    pt: PatchType,
    body: &[u8],
    o: &WriteOpts,
) -> ApiResult<(u16, Value, Vec<String>)> {
    let patch = crate::patch::parse_body(pt, body)?;
    let manager = o.field_manager.clone().unwrap_or_default();
    if pt == PatchType::Apply && manager.is_empty() {
        return Err(ApiError::invalid(
            "PatchOptions",
            "meta.k8s.io",
            "",
            vec![Cause::required(
                "fieldManager",
                "is required for apply patch",
            )],
        ));
    }
    let key = ObjKey::new(rt, if rt.namespaced { ns } else { "" }, name);
    for attempt in 0.. {
        let old = sh.store().get(&key).cloned();
        let managed_entry = |applied: &Value| {
            json!({"manager": manager, "operation": "Apply", "apiVersion": rt.api_version(),
                   "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fields_v1(applied)})
        };
        let new = match (&old, pt) {
            (None, PatchType::Apply) => {
                let mut obj = patch.clone();
                if meta_str(&obj, "name").is_empty() {
                    meta_mut(&mut obj).insert("name".into(), json!(name));
                }
                meta_mut(&mut obj).insert("managedFields".into(), json!([managed_entry(&patch)]));
                let (v, w) = create(sh, rt, ns, obj, o).await?;
                if !o.dry_run {
                    lock(&sh.applied).insert((key.clone(), manager.clone()), patch.clone());
                }
                return Ok((201, v, w));
            }
            (None, _) => return Err(ApiError::not_found(&tgt(rt, name))),
            (Some(old), PatchType::Apply) => {
                if patch.get("apiVersion").and_then(Value::as_str)
                    != Some(rt.api_version().as_str())
                    || patch.get("kind").and_then(Value::as_str) != Some(rt.kind)
                {
                    return Err(ApiError::bad_request(
                        "apiVersion and kind of the applied object must match the URL",
                    ));
                }
                let prev = lock(&sh.applied)
                    .get(&(key.clone(), manager.clone()))
                    .cloned();
                let mut new = crate::patch::server_side_apply(old, &patch, prev.as_ref());
                let mut mf: Vec<Value> = old
                    .pointer("/metadata/managedFields")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|e| {
                        !(e.get("manager").and_then(Value::as_str) == Some(&manager)
                            && e.get("operation").and_then(Value::as_str) == Some("Apply"))
                    })
                    .collect();
                mf.push(managed_entry(&patch));
                meta_mut(&mut new).insert("managedFields".into(), json!(mf));
                new
            }
            (Some(old), _) => crate::patch::apply_patch(pt, old, &patch)?,
        };
        match update(sh, rt, ns, name, new, o).await {
            Err(e) if e.race && attempt < 5 => continue,
            Err(e) => return Err(e),
            Ok((v, w)) => {
                if pt == PatchType::Apply && !o.dry_run {
                    lock(&sh.applied).insert((key.clone(), manager.clone()), patch.clone());
                }
                return Ok((200, v, w));
            }
        }
    }
    Err(ApiError::internal("patch retries exhausted"))
}
