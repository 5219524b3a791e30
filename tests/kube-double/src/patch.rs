//! PATCH bodies: JSON merge patch, JSON patch, an approximation of strategic merge
//! patch, and an approximation of server-side apply.

use serde_json::{Map, Value, json};

use crate::status::{ApiError, ApiResult};

/// The patch types the API server accepts, by `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply; JSON is YAML too).
    Apply,
}

impl PatchType {
    /// From a `Content-Type` header value; 415 for anything else.
    pub fn from_content_type(ct: &str) -> ApiResult<PatchType> {
        let base = ct.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchType::Apply),
            _ => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {base:?})"
                ),
            )),
        }
    }
}

/// Parses a patch body (YAML allowed for apply).
pub fn parse_body(pt: PatchType, body: &[u8]) -> ApiResult<Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(e) if pt == PatchType::Apply => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("apply patch is not UTF-8"))?;
            serde_saphyr::from_str::<Value>(text).map_err(|y| {
                ApiError::bad_request(format!("error decoding YAML: {y} (as JSON: {e})"))
            })
        }
        Err(e) => Err(ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies a non-apply patch to `live`, returning the patched object.
pub fn apply_patch(pt: PatchType, live: &Value, patch: &Value) -> ApiResult<Value> {
    let mut doc = live.clone();
    match pt {
        PatchType::Merge => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("merge patch must be a JSON object"));
            }
            json_patch::merge(&mut doc, patch);
        }
        PatchType::Json => {
            let p: json_patch::Patch = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            json_patch::patch(&mut doc, &p)
                .map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
        }
        PatchType::Strategic | PatchType::Apply => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(&mut doc, patch);
        }
    }
    Ok(doc)
}

/// The merge key of a list field, as the Kubernetes OpenAPI `x-kubernetes-patch-merge-key`
/// says for the fields the double's resources have.
pub fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "secrets"
        | "webhooks"
        | "resourceClaims" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => "containerPort",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "hostAliases" => "ip",
        _ => return None,
    })
}

/// Lists of scalars merged as sets rather than replaced.
fn is_set_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Strategic merge of `patch` into `target`: maps merge recursively, `null` deletes,
/// lists with a merge key merge item by item, `finalizers` merge as a set, other lists
/// replace. Honours `$patch: replace|delete` and `$deleteFromPrimitiveList/<field>`;
/// other directives (`$setElementOrder`, `$retainKeys`) are ignored.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = strip_directives(patch);
        return;
    }
    if !target.is_object() {
        *target = json!({});
    }
    let Some(tm) = target.as_object_mut() else {
        return;
    };
    for (k, v) in pm {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (tm.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() || v.get("$patch").and_then(Value::as_str) == Some("delete") {
            tm.remove(k);
            continue;
        }
        match (tm.get_mut(k), v) {
            (Some(Value::Array(live)), Value::Array(items)) => {
                if let Some(key) = merge_key(k) {
                    merge_keyed_list(live, items, key);
                } else if is_set_list(k) {
                    for item in items {
                        if !live.contains(item) {
                            live.push(item.clone());
                        }
                    }
                } else {
                    *live = items.iter().map(strip_directives).collect();
                }
            }
            (Some(live @ Value::Object(_)), Value::Object(_)) => strategic_merge(live, v),
            _ => {
                tm.insert(k.clone(), strip_directives(v));
            }
        }
    }
}

fn merge_keyed_list(live: &mut Vec<Value>, items: &[Value], key: &str) {
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *live = items
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return;
    }
    for item in items {
        let id = item.get(key);
        let pos = id.and_then(|id| live.iter().position(|l| l.get(key) == Some(id)));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(id) = id {
                live.retain(|l| l.get(key) != Some(id));
            }
            continue;
        }
        match pos {
            Some(p) => strategic_merge(&mut live[p], item),
            None => live.push(strip_directives(item)),
        }
    }
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// Server-side apply, approximated: merge `applied` into `live` like a strategic merge,
/// then remove fields the same manager applied last time but no longer applies.
pub fn server_side_apply(live: &Value, applied: &Value, previous: Option<&Value>) -> Value {
    let mut doc = live.clone();
    strategic_merge(&mut doc, applied);
    if let Some(prev) = previous {
        remove_unapplied(&mut doc, prev, applied, "");
    }
    doc
}

fn remove_unapplied(live: &mut Value, prev: &Value, new: &Value, field: &str) {
    match (live, prev, new) {
        (Value::Object(l), Value::Object(p), n) => {
            for (k, pv) in p {
                if field.is_empty() && matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                match n.get(k) {
                    None => {
                        l.remove(k);
                    }
                    Some(nv) => {
                        if let Some(lv) = l.get_mut(k) {
                            remove_unapplied(lv, pv, nv, k);
                        }
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(p), Value::Array(n)) => {
            let Some(key) = merge_key(field) else { return };
            for pi in p {
                let Some(id) = pi.get(key) else { continue };
                match n.iter().find(|ni| ni.get(key) == Some(id)) {
                    None => l.retain(|li| li.get(key) != Some(id)),
                    Some(ni) => {
                        if let Some(li) = l.iter_mut().find(|li| li.get(key) == Some(id)) {
                            remove_unapplied(li, pi, ni, "");
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// A `fieldsV1` description of the fields set in `v` (approximate: the real server
/// also tracks defaulted fields).
pub fn fields_v1(v: &Value) -> Value {
    fn walk(v: &Value, top: bool) -> Map<String, Value> {
        let mut out = Map::new();
        let Some(m) = v.as_object() else { return out };
        for (k, val) in m {
            if top && matches!(k.as_str(), "apiVersion" | "kind") {
                continue;
            }
            let entry = match val {
                Value::Object(_) if k != "metadata" || !top => {
                    let mut inner = walk(val, false);
                    inner.insert(".".into(), json!({}));
                    Value::Object(inner)
                }
                Value::Object(_) => {
                    let mut inner = walk(val, false);
                    inner.remove("f:name");
                    inner.remove("f:namespace");
                    Value::Object(inner)
                }
                Value::Array(items) => match merge_key(k) {
                    Some(key) => {
                        let mut inner = Map::new();
                        inner.insert(".".into(), json!({}));
                        for it in items {
                            let id = it.get(key).cloned().unwrap_or(Value::Null);
                            let mut fields = walk(it, false);
                            fields.insert(".".into(), json!({}));
                            inner
                                .insert(format!("k:{}", json!({ key: id })), Value::Object(fields));
                        }
                        Value::Object(inner)
                    }
                    None => json!({}),
                },
                _ => json!({}),
            };
            out.insert(format!("f:{k}"), entry);
        }
        out
    }
    Value::Object(walk(v, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merges_named_lists() {
        let mut live = json!({"spec": {"containers": [
            {"name": "app", "image": "a", "env": [{"name": "X", "value": "1"}]}
        ], "tolerations": [{"key": "a"}]}});
        strategic_merge(
            &mut live,
            &json!({"spec": {"containers": [
                {"name": "app", "env": [{"name": "Y", "value": "2"}]},
                {"name": "side", "image": "s"}
            ], "tolerations": [{"key": "b"}]}}),
        );
        assert_eq!(live["spec"]["containers"][0]["image"], "a");
        assert_eq!(live["spec"]["containers"][0]["env"][1]["name"], "Y");
        assert_eq!(live["spec"]["containers"][1]["name"], "side");
        assert_eq!(live["spec"]["tolerations"], json!([{"key": "b"}]));
        strategic_merge(
            &mut live,
            &json!({"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}),
        );
        assert_eq!(live["spec"]["containers"].as_array().map(Vec::len), Some(1));
    }

    #[test]
    fn apply_removes_fields_no_longer_applied() {
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2", "other": "x"}}});
        let prev = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        let new = json!({"metadata": {"labels": {"a": "3"}}});
        let out = server_side_apply(&live, &new, Some(&prev));
        assert_eq!(out["metadata"]["labels"], json!({"a": "3", "other": "x"}));
    }

    #[test]
    fn fields_v1_shape() {
        let f = fields_v1(
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        );
        assert!(f["f:metadata"]["f:labels"]["f:a"].is_object());
        assert!(f["f:spec"]["f:containers"]["k:{\"name\":\"c\"}"]["f:image"].is_object());
    }
}
