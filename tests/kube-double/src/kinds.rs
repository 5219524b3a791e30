//! Per-kind defaulting and validation for the non-pod resources (pods: [`crate::pods`]).

use base64::Engine;
use serde_json::{Value, json};

use crate::meta::{is_dns_subdomain, meta_str};
use crate::resources::ResourceType;
use crate::status::Cause;

/// Defaults the API server fills in on create and update, before admission.
pub fn default_object(rt: &ResourceType, obj: &mut Value) {
    match (rt.group, rt.resource) {
        ("", "namespaces") => {
            let name = meta_str(obj, "name").to_string();
            if !name.is_empty() {
                let meta = crate::meta::meta_mut(obj);
                let labels = meta.entry("labels").or_insert_with(|| json!({}));
                if !labels.is_object() {
                    *labels = json!({});
                }
                labels["kubernetes.io/metadata.name"] = json!(name);
            }
            if obj.pointer("/spec/finalizers").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            if obj.pointer("/status/phase").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        ("", "secrets") => {
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|o| o.remove("stringData"))
            {
                if !obj.get("data").is_some_and(Value::is_object) {
                    obj["data"] = json!({});
                }
                for (k, v) in sd {
                    let enc = base64::engine::general_purpose::STANDARD
                        .encode(v.as_str().unwrap_or_default());
                    obj["data"][k] = json!(enc);
                }
            }
            if obj
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .is_empty()
            {
                obj["type"] = json!("Opaque");
            }
        }
        ("", "pods") => crate::pods::default_pod(obj),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations") => {
            for w in obj
                .get_mut("webhooks")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let defaults = [
                    ("failurePolicy", json!("Fail")),
                    ("matchPolicy", json!("Equivalent")),
                    ("namespaceSelector", json!({})),
                    ("objectSelector", json!({})),
                    ("timeoutSeconds", json!(10)),
                    ("reinvocationPolicy", json!("Never")),
                ];
                for (k, v) in defaults {
                    if w.get(k).is_none() {
                        w[k] = v;
                    }
                }
                if let Some(svc) = w.pointer_mut("/clientConfig/service")
                    && svc.get("port").is_none()
                {
                    svc["port"] = json!(443);
                }
                for r in w
                    .get_mut("rules")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if r.get("scope").is_none() {
                        r["scope"] = json!("*");
                    }
                }
            }
        }
        _ => {}
    }
}

fn valid_data_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && !k.starts_with("..")
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

const KEY_MSG: &str = "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')";

fn validate_keys(obj: &Value, fields: &[&str], causes: &mut Vec<Cause>) {
    let mut seen = std::collections::HashSet::new();
    for f in fields {
        for k in obj
            .get(*f)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|m| m.0)
        {
            if !valid_data_key(k) {
                causes.push(Cause::invalid(format!("{f}[{k}]"), &json!(k), KEY_MSG));
            }
            if !seen.insert(k.clone()) {
                causes.push(Cause::duplicate(format!("{f}[{k}]"), &json!(k)));
            }
        }
    }
}

/// Kind-specific validation of an object about to be stored.
pub fn validate(rt: &ResourceType, obj: &Value) -> Vec<Cause> {
    let mut causes = vec![];
    match (rt.group, rt.resource) {
        ("", "configmaps") => validate_keys(obj, &["data", "binaryData"], &mut causes),
        ("", "secrets") => {
            validate_keys(obj, &["data"], &mut causes);
            let ty = obj.get("type").and_then(Value::as_str).unwrap_or_default();
            let data = obj.get("data").cloned().unwrap_or(json!({}));
            match ty {
                "kubernetes.io/dockerconfigjson" => match data.get(".dockerconfigjson") {
                    None => causes.push(Cause::required("data[.dockerconfigjson]", "")),
                    Some(v) => {
                        let raw = base64::engine::general_purpose::STANDARD
                            .decode(v.as_str().unwrap_or_default())
                            .unwrap_or_default();
                        if serde_json::from_slice::<Value>(&raw).is_err() {
                            causes.push(Cause::invalid(
                                "data[.dockerconfigjson]",
                                &json!("<secret contents redacted>"),
                                "invalid character in JSON",
                            ));
                        }
                    }
                },
                "kubernetes.io/dockercfg" if data.get(".dockercfg").is_none() => {
                    causes.push(Cause::required("data[.dockercfg]", ""));
                }
                "kubernetes.io/service-account-token"
                    if obj
                        .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                        .is_none() =>
                {
                    causes.push(Cause::required(
                        "metadata.annotations[kubernetes.io/service-account.name]",
                        "",
                    ));
                }
                _ => {}
            }
            let size: usize = data
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len) * 3 / 4)
                .sum();
            if size > 1024 * 1024 {
                causes.push(Cause {
                    reason: "FieldValueTooLong",
                    field: "data".into(),
                    message: "Too long: may not be more than 1048576 bytes".into(),
                });
            }
        }
        ("coordination.k8s.io", "leases") => {
            if let Some(d) = obj
                .pointer("/spec/leaseDurationSeconds")
                .and_then(Value::as_i64)
                && d <= 0
            {
                causes.push(Cause::invalid(
                    "spec.leaseDurationSeconds",
                    &json!(d),
                    "must be greater than 0",
                ));
            }
        }
        ("", "events") => {
            let ns = meta_str(obj, "namespace");
            if let Some(ins) = obj
                .pointer("/involvedObject/namespace")
                .and_then(Value::as_str)
                && !ins.is_empty()
                && ins != ns
            {
                causes.push(Cause::invalid(
                    "involvedObject.namespace",
                    &json!(ins),
                    "does not match event.namespace",
                ));
            }
        }
        ("events.k8s.io", "events") => {
            for f in [
                "reportingController",
                "reportingInstance",
                "action",
                "reason",
            ] {
                if obj
                    .get(f)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .is_empty()
                {
                    causes.push(Cause::required(f, ""));
                }
            }
            if let Some(t) = obj.get("type").and_then(Value::as_str)
                && t != "Normal"
                && t != "Warning"
            {
                causes.push(Cause::not_supported(
                    "type",
                    &json!(t),
                    &["Normal", "Warning"],
                ));
            }
            if obj.get("note").and_then(Value::as_str).map_or(0, str::len) > 1024 {
                causes.push(Cause {
                    reason: "FieldValueTooLong",
                    field: "note".into(),
                    message: "Too long: may not be more than 1024 bytes".into(),
                });
            }
        }
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations") => {
            validate_webhooks(obj, &mut causes)
        }
        ("", "pods") => causes.extend(crate::pods::validate_pod(obj)),
        _ => {}
    }
    causes
}

/// Immutability rules checked on update, in addition to [`validate`].
pub fn validate_update(rt: &ResourceType, new: &Value, old: &Value) -> Vec<Cause> {
    let mut causes = vec![];
    match (rt.group, rt.resource) {
        ("", "secrets") | ("", "configmaps") => {
            if rt.resource == "secrets" && new.get("type") != old.get("type") {
                causes.push(Cause::invalid(
                    "type",
                    new.get("type").unwrap_or(&Value::Null),
                    "field is immutable",
                ));
            }
            if old.get("immutable").and_then(Value::as_bool) == Some(true) {
                for f in ["data", "binaryData"] {
                    if new.get(f) != old.get(f) {
                        causes.push(Cause::forbidden(
                            f,
                            "field is immutable when `immutable` is set",
                        ));
                    }
                }
                if new.get("immutable") != old.get("immutable") {
                    causes.push(Cause::forbidden(
                        "immutable",
                        "field is immutable when `immutable` is set",
                    ));
                }
            }
        }
        ("", "pods") => causes.extend(crate::pods::validate_pod_update(new, old)),
        _ => {}
    }
    causes
}

fn validate_webhooks(obj: &Value, causes: &mut Vec<Cause>) {
    let mut names = std::collections::HashSet::new();
    for (i, w) in obj
        .get("webhooks")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("webhooks[{i}]");
        let name = w.get("name").and_then(Value::as_str).unwrap_or_default();
        if !is_dns_subdomain(name) || name.split('.').count() < 3 {
            causes.push(Cause::invalid(
                format!("{p}.name"),
                &json!(name),
                "should be a domain with at least three segments separated by dots",
            ));
        }
        if !names.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("{p}.name"), &json!(name)));
        }
        let side = w
            .get("sideEffects")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !matches!(side, "None" | "NoneOnDryRun") {
            causes.push(Cause::not_supported(
                format!("{p}.sideEffects"),
                &json!(side),
                &["None", "NoneOnDryRun"],
            ));
        }
        let versions: Vec<&str> = w
            .get("admissionReviewVersions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if versions.is_empty() {
            causes.push(Cause::required(
                format!("{p}.admissionReviewVersions"),
                "must specify one of v1, v1beta1",
            ));
        } else if !versions.contains(&"v1") {
            causes.push(Cause::invalid(
                format!("{p}.admissionReviewVersions"),
                &json!(versions),
                "must include at least one of v1 (the only version the double sends)",
            ));
        }
        if let Some(t) = w.get("timeoutSeconds").and_then(Value::as_i64)
            && !(1..=30).contains(&t)
        {
            causes.push(Cause::invalid(
                format!("{p}.timeoutSeconds"),
                &json!(t),
                "the timeout value must be between 1 and 30 seconds",
            ));
        }
        if let Some(fp) = w.get("failurePolicy").and_then(Value::as_str)
            && !matches!(fp, "Fail" | "Ignore")
        {
            causes.push(Cause::not_supported(
                format!("{p}.failurePolicy"),
                &json!(fp),
                &["Fail", "Ignore"],
            ));
        }
        let cc = w.get("clientConfig").cloned().unwrap_or(json!({}));
        match (cc.get("url"), cc.get("service")) {
            (Some(_), Some(_)) | (None, None) => causes.push(Cause::required(
                format!("{p}.clientConfig"),
                "exactly one of url or service is required",
            )),
            (Some(u), None) => {
                let u = u.as_str().unwrap_or_default();
                if !u.starts_with("https://") {
                    causes.push(Cause::invalid(
                        format!("{p}.clientConfig.url"),
                        &json!(u),
                        "'https' is the only allowed URL scheme",
                    ));
                }
            }
            (None, Some(s)) => {
                if let Some(path) = s.get("path").and_then(Value::as_str)
                    && !path.starts_with('/')
                {
                    causes.push(Cause::invalid(
                        format!("{p}.clientConfig.service.path"),
                        &json!(path),
                        "must start with a '/'",
                    ));
                }
            }
        }
    }
}
