//! Mutating admission webhooks: matching registered `MutatingWebhookConfiguration`s,
//! calling them over HTTPS with an `AdmissionReview` v1, applying JSONPatch responses,
//! and turning denials and failures into the errors the real API server returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::api::{Shared, WriteOpts, lock};
use crate::meta::{labels, meta_str, new_uid};
use crate::resources::ResourceType;
use crate::selectors::LabelSelector;
use crate::status::{ApiError, ApiResult};
use crate::store::ObjKey;

fn list_has(v: Option<&Value>, want: &[&str]) -> bool {
    v.and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|s| want.contains(&s))
}

/// Whether one `rules` entry matches the request.
fn rule_matches(rule: &Value, rt: &ResourceType, sub: Option<&str>, op: &str) -> bool {
    let res = match sub {
        Some(s) => format!("{}/{s}", rt.resource),
        None => rt.resource.to_string(),
    };
    let res_wild = format!("{}/*", rt.resource);
    let resources_ok = match sub {
        None => list_has(rule.get("resources"), &[&res, "*"]),
        Some(s) => list_has(
            rule.get("resources"),
            &[&res, &res_wild, "*/*", &format!("*/{s}")],
        ),
    };
    let scope_ok = match rule.get("scope").and_then(Value::as_str).unwrap_or("*") {
        "Namespaced" => rt.namespaced,
        "Cluster" => !rt.namespaced,
        _ => true,
    };
    list_has(rule.get("operations"), &[op, "*"])
        && list_has(rule.get("apiGroups"), &[rt.group, "*"])
        && list_has(rule.get("apiVersions"), &[rt.version, "*"])
        && resources_ok
        && scope_ok
}

/// A webhook that matched, with what is needed to call it.
struct Call {
    name: String,
    hook: Value,
}

/// Runs every matching mutating webhook in order and returns the mutated object.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    sh: &Arc<Shared>,
    rt: &'static ResourceType,
    sub: Option<&str>,
    op: &str,
    ns: &str,
    mut obj: Value,
    old: Option<&Value>,
    o: &WriteOpts,
) -> ApiResult<Value> {
    if rt.group == "admissionregistration.k8s.io" || !rt.stored {
        return Ok(obj);
    }
    let (calls, ns_labels) = {
        let store = sh.store();
        let Some(cfg_rt) = ResourceType::find(
            "admissionregistration.k8s.io",
            "v1",
            "mutatingwebhookconfigurations",
        ) else {
            return Ok(obj);
        };
        let mut calls = vec![];
        for (_, cfg) in store.list(cfg_rt.index(), None) {
            for hook in cfg
                .get("webhooks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let name = hook
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                calls.push(Call {
                    name,
                    hook: hook.clone(),
                });
            }
        }
        let ns_labels = if rt.group.is_empty() && rt.resource == "namespaces" {
            Some(labels(&obj))
        } else if rt.namespaced {
            Some(
                store
                    .get(&ObjKey::new(&crate::resources::RESOURCES[0], "", ns))
                    .map(labels)
                    .unwrap_or_default(),
            )
        } else {
            None
        };
        (calls, ns_labels)
    };
    let mut warnings = vec![];
    for call in calls {
        let hook = &call.hook;
        let rules_ok = hook
            .get("rules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .any(|r| rule_matches(r, rt, sub, op));
        if !rules_ok {
            continue;
        }
        if let Some(nsl) = &ns_labels
            && !LabelSelector::from_object(hook.get("namespaceSelector"))?.matches(nsl)
        {
            continue;
        }
        let osel = LabelSelector::from_object(hook.get("objectSelector"))?;
        if !(osel.matches(&labels(&obj)) || old.is_some_and(|x| osel.matches(&labels(x)))) {
            continue;
        }
        let ignore = hook.get("failurePolicy").and_then(Value::as_str) == Some("Ignore");
        match call_one(sh, &call, rt, sub, op, ns, &obj, old, o).await {
            Ok(Outcome::Allowed {
                patched,
                warnings: w,
            }) => {
                obj = patched;
                warnings.extend(w);
            }
            Ok(Outcome::Denied(e)) => return Err(e),
            Err(CallError::Patch(e)) => return Err(e),
            Err(CallError::Transport(msg)) => {
                if ignore {
                    tracing::warn!(webhook = %call.name, error = %msg, "failed calling webhook, failing open");
                    continue;
                }
                return Err(ApiError::internal(format!(
                    "failed calling webhook {:?}: {msg}",
                    call.name
                )));
            }
        }
    }
    lock(&sh.warnings).extend(warnings);
    Ok(obj)
}

enum Outcome {
    Allowed {
        patched: Value,
        warnings: Vec<String>,
    },
    Denied(ApiError),
}

enum CallError {
    /// Calling failed (subject to `failurePolicy`).
    Transport(String),
    /// The returned patch could not be applied (always an error).
    Patch(ApiError),
}

fn resolve(sh: &Shared, cc: &Value) -> Result<(String, Option<(String, SocketAddr)>), String> {
    if let Some(u) = cc.get("url").and_then(Value::as_str) {
        return Ok((u.to_string(), None));
    }
    let svc = cc.get("service").cloned().unwrap_or(Value::Null);
    let s = |k: &str| {
        svc.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (ns, name, path) = (s("namespace"), s("name"), s("path"));
    let port = svc.get("port").and_then(Value::as_u64).unwrap_or(443) as u16;
    let host = format!("{name}.{ns}.svc");
    let addr = lock(&sh.endpoints)
        .get(&(ns.clone(), name.clone(), port))
        .copied()
        .ok_or_else(|| format!("service \"{name}\" not found"))?;
    Ok((format!("https://{host}:{port}{path}"), Some((host, addr))))
}

#[allow(clippy::too_many_arguments)]
async fn call_one(
    sh: &Arc<Shared>,
    call: &Call,
    rt: &ResourceType,
    sub: Option<&str>,
    op: &str,
    ns: &str,
    obj: &Value,
    old: Option<&Value>,
    o: &WriteOpts,
) -> Result<Outcome, CallError> {
    let hook = &call.hook;
    let timeout = hook
        .get("timeoutSeconds")
        .and_then(Value::as_u64)
        .unwrap_or(10);
    let cc = hook.get("clientConfig").cloned().unwrap_or(Value::Null);
    let (url, resolved) = resolve(sh, &cc).map_err(CallError::Transport)?;
    let url = format!(
        "{url}{}timeout={timeout}s",
        if url.contains('?') { '&' } else { '?' }
    );
    let uid = new_uid();
    let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
    let mut gvr = json!({"group": rt.group, "version": rt.version, "resource": rt.resource});
    let mut request = json!({
        "uid": uid, "kind": gvk, "resource": gvr.clone(), "requestKind": gvk, "requestResource": gvr.clone(),
        "operation": op, "userInfo": o.user.to_json(), "object": obj,
        "oldObject": old.cloned().unwrap_or(Value::Null), "dryRun": o.dry_run,
        "options": if op == "CREATE" {
            json!({"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"})
        } else {
            json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"})
        },
    });
    if let Some(fm) = &o.field_manager {
        request["options"]["fieldManager"] = json!(fm);
    }
    if let Some(s) = sub {
        request["subResource"] = json!(s);
        request["requestSubResource"] = json!(s);
        gvr["resource"] = json!(rt.resource);
    }
    let name = meta_str(obj, "name");
    if !name.is_empty() {
        request["name"] = json!(name);
    }
    if rt.namespaced {
        request["namespace"] = json!(ns);
    }
    let review =
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    lock(&sh.reviews).push(json!({"webhook": call.name, "review": review}));

    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(timeout));
    if let Some(ca) = cc.get("caBundle").and_then(Value::as_str) {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(ca)
            .map_err(|e| CallError::Transport(format!("invalid caBundle: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| CallError::Transport(format!("invalid caBundle: {e}")))?;
        builder = builder.tls_certs_only(certs);
    }
    if let Some((host, addr)) = &resolved {
        builder = builder.resolve(host, *addr);
    }
    let client = builder
        .build()
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let post =
        |e: String| CallError::Transport(format!("failed to call webhook: Post {url:?}: {e}"));
    let resp = client
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, */*")
        .body(review.to_string())
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                post("context deadline exceeded".into())
            } else {
                post(format!("{e:?}"))
            }
        })?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| post(e.to_string()))?;
    if !status.is_success() {
        return Err(CallError::Transport(format!(
            "failed to call webhook: the server responded with status {}",
            status.as_u16()
        )));
    }
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|e| CallError::Transport(format!("failed to decode response: {e}")))?;
    if body.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || body.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err(CallError::Transport(format!(
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview, got {}, Kind={}",
            body.get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            body.get("kind").and_then(Value::as_str).unwrap_or_default()
        )));
    }
    let r = body
        .get("response")
        .cloned()
        .ok_or_else(|| CallError::Transport("webhook response was absent".into()))?;
    let got_uid = r.get("uid").and_then(Value::as_str).unwrap_or_default();
    if got_uid != uid {
        return Err(CallError::Transport(format!(
            "expected response.uid={uid:?}, got {got_uid:?}"
        )));
    }
    let warnings: Vec<String> = r
        .get("warnings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|w| w.as_str().map(str::to_string))
        .collect();
    if r.get("allowed").and_then(Value::as_bool) != Some(true) {
        return Ok(Outcome::Denied(denied(&call.name, r.get("status"))));
    }
    let mut patched = obj.clone();
    // `patch` is a Go []byte: JSON decoding accepts a base64 string (what Go
    // clients send) or an array of byte values (what kube-rs sends).
    let raw: Option<Vec<u8>> = match r.get("patch") {
        None | Some(Value::Null) => None,
        Some(Value::String(p64)) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(p64)
                .map_err(|e| CallError::Patch(ApiError::internal(e.to_string())))?,
        ),
        Some(Value::Array(bytes)) => Some(
            bytes
                .iter()
                .map(|b| b.as_u64().and_then(|v| u8::try_from(v).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| CallError::Transport("patch array holds a non-byte value".into()))?,
        ),
        Some(other) => {
            return Err(CallError::Transport(format!(
                "patch must be base64 or a byte array, got {other}"
            )));
        }
    };
    if let Some(raw) = raw {
        let pt = r
            .get("patchType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if pt != "JSONPatch" {
            return Err(CallError::Transport(format!(
                "unsupported patch type {pt:?}"
            )));
        }
        let patch: json_patch::Patch = serde_json::from_slice(&raw)
            .map_err(|e| CallError::Patch(ApiError::internal(e.to_string())))?;
        json_patch::patch(&mut patched, &patch)
            .map_err(|e| CallError::Patch(ApiError::internal(e.to_string())))?;
    }
    Ok(Outcome::Allowed { patched, warnings })
}

/// The error for `allowed: false`, as `webhookerrors.ToStatusErr` builds it.
fn denied(webhook: &str, status: Option<&Value>) -> ApiError {
    let by = format!("admission webhook {webhook:?} denied the request");
    let st = status.cloned().unwrap_or(Value::Null);
    let code = st.get("code").and_then(Value::as_u64).unwrap_or(0) as u16;
    let code = if code < 400 { 400 } else { code };
    let message = st
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let reason = st.get("reason").and_then(Value::as_str).unwrap_or_default();
    let text = if !message.is_empty() {
        format!("{by}: {message}")
    } else if !reason.is_empty() {
        format!("{by}: {reason}")
    } else {
        format!("{by} without explanation")
    };
    let mut e = ApiError::new(code, reason, text);
    if let Some(d) = st.get("details") {
        e.details = d.clone();
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_resources_and_subresources() {
        let pods = ResourceType::find("", "v1", "pods");
        let Some(pods) = pods else { return };
        let rule = json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "*"});
        assert!(rule_matches(&rule, pods, None, "CREATE"));
        assert!(!rule_matches(&rule, pods, None, "UPDATE"));
        assert!(!rule_matches(&rule, pods, Some("status"), "CREATE"));
        let all = json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"]});
        assert!(rule_matches(&all, pods, Some("status"), "UPDATE"));
    }

    #[test]
    fn denial_message_like_the_api_server() {
        let e = denied(
            "inject.attache.dev",
            Some(&json!({"message": "no role", "code": 403})),
        );
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "admission webhook \"inject.attache.dev\" denied the request: no role"
        );
        assert_eq!(denied("w.x.y", None).code, 400);
    }
}
