//! Pods: defaulting, the ServiceAccount admission plugin, and the validation the API
//! server applies after mutating admission (for the fields a webhook touches).

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::meta::{LABEL_MSG, is_dns_label, is_dns_subdomain};
use crate::status::Cause;

/// Where the ServiceAccount admission plugin mounts the API credentials.
pub const SA_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

fn set_default(obj: &mut Value, key: &str, v: Value) {
    if obj.is_object() && obj.get(key).is_none_or(Value::is_null) {
        obj[key] = v;
    }
}

fn default_probe(p: &mut Value) {
    set_default(p, "timeoutSeconds", json!(1));
    set_default(p, "periodSeconds", json!(10));
    set_default(p, "successThreshold", json!(1));
    set_default(p, "failureThreshold", json!(3));
    if let Some(h) = p.get_mut("httpGet") {
        set_default(h, "scheme", json!("HTTP"));
    }
}

/// Field defaults the API server sets on pods (a subset of `SetDefaults_Pod`).
pub fn default_pod(pod: &mut Value) {
    set_default(pod, "spec", json!({}));
    let Some(spec) = pod.get_mut("spec") else {
        return;
    };
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("securityContext", json!({})),
        ("schedulerName", json!("default-scheduler")),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
        ("preemptionPolicy", json!("PreemptLowerPriority")),
    ] {
        set_default(spec, k, v);
    }
    let sa = spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec["serviceAccountName"] = json!(sa);
    spec["serviceAccount"] = json!(sa);
    for list in CONTAINER_LISTS {
        for c in spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
            set_default(c, "terminationMessagePolicy", json!("File"));
            if list != "ephemeralContainers" {
                set_default(c, "resources", json!({}));
            }
            let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
            let tag = image.rsplit('/').next().unwrap_or_default();
            let latest = !image.contains('@') && (!tag.contains(':') || tag.ends_with(":latest"));
            set_default(
                c,
                "imagePullPolicy",
                json!(if latest { "Always" } else { "IfNotPresent" }),
            );
            for p in c
                .get_mut("ports")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                set_default(p, "protocol", json!("TCP"));
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                if let Some(p) = c.get_mut(probe) {
                    default_probe(p);
                }
            }
            for e in c
                .get_mut("env")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(fr) = e.pointer_mut("/valueFrom/fieldRef") {
                    set_default(fr, "apiVersion", json!("v1"));
                }
            }
        }
    }
    for v in spec
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        for src in ["secret", "configMap", "projected", "downwardAPI"] {
            if let Some(s) = v.get_mut(src) {
                set_default(s, "defaultMode", json!(420));
            }
        }
        for s in v
            .pointer_mut("/projected/sources")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(t) = s.get_mut("serviceAccountToken") {
                set_default(t, "expirationSeconds", json!(3600));
            }
            if let Some(items) = s
                .pointer_mut("/downwardAPI/items")
                .and_then(Value::as_array_mut)
            {
                for it in items {
                    if let Some(fr) = it.get_mut("fieldRef") {
                        set_default(fr, "apiVersion", json!("v1"));
                    }
                }
            }
        }
    }
    let qos = qos_class(pod);
    set_default(pod, "status", json!({}));
    if let Some(st) = pod.get_mut("status") {
        set_default(st, "phase", json!("Pending"));
        set_default(st, "qosClass", json!(qos));
    }
}

fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .flat_map(|l| pod.pointer(&format!("/spec/{l}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let any = containers.iter().any(|c| {
        c.pointer("/resources/requests")
            .is_some_and(|r| r.as_object().is_some_and(|m| !m.is_empty()))
            || c.pointer("/resources/limits")
                .is_some_and(|r| r.as_object().is_some_and(|m| !m.is_empty()))
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        let lim = c.pointer("/resources/limits");
        let req = c.pointer("/resources/requests").or(lim);
        ["cpu", "memory"].iter().all(|r| {
            lim.and_then(|l| l.get(r)).is_some()
                && lim.and_then(|l| l.get(r)) == req.and_then(|q| q.get(r))
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// The ServiceAccount admission plugin's mutation on create: mounts the API credentials
/// as a projected `kube-api-access-*` volume unless automounting is off.
pub fn mount_service_account_token(pod: &mut Value, sa: &Value, suffix: &str) {
    let automount = pod
        .pointer("/spec/automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if !automount {
        return;
    }
    let Some(spec) = pod.get_mut("spec") else {
        return;
    };
    let already = CONTAINER_LISTS.iter().any(|l| {
        spec.get(*l)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .flat_map(|c| {
                c.get("volumeMounts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
            })
            .any(|m| m.get("mountPath").and_then(Value::as_str) == Some(SA_MOUNT_PATH))
    });
    if already {
        return;
    }
    let vol_name = format!("kube-api-access-{suffix}");
    set_default(spec, "volumes", json!([]));
    if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        vols.push(json!({
            "name": vol_name,
            "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}
        }));
    }
    for l in ["initContainers", "containers"] {
        for c in spec
            .get_mut(l)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            set_default(c, "volumeMounts", json!([]));
            if let Some(m) = c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                m.push(json!({"name": vol_name, "readOnly": true, "mountPath": SA_MOUNT_PATH}));
            }
        }
    }
}

fn valid_env_name(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'=')
}

/// Validation of a pod as stored (after admission), for the fields webhooks touch.
pub fn validate_pod(pod: &Value) -> Vec<Cause> {
    let mut causes = vec![];
    let spec = pod.get("spec").cloned().unwrap_or(json!({}));
    let mut volumes = HashSet::new();
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let p = format!("spec.volumes[{i}]");
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            causes.push(Cause::required(format!("{p}.name"), ""));
        } else if !is_dns_label(name) {
            causes.push(Cause::invalid(format!("{p}.name"), &json!(name), LABEL_MSG));
        }
        if !volumes.insert(name.to_string()) {
            causes.push(Cause::duplicate(format!("{p}.name"), &json!(name)));
        }
        let sources = v
            .as_object()
            .map_or(0, |m| m.keys().filter(|k| *k != "name").count());
        if sources == 0 {
            causes.push(Cause::required(p.clone(), "must specify a volume type"));
        } else if sources > 1 {
            causes.push(Cause::forbidden(
                p.clone(),
                "may not specify more than 1 volume type",
            ));
        }
        if let Some(m) = v.pointer("/emptyDir/medium").and_then(Value::as_str)
            && !matches!(m, "" | "Memory" | "HugePages")
            && !m.starts_with("HugePages-")
        {
            causes.push(Cause::not_supported(
                format!("{p}.emptyDir.medium"),
                &json!(m),
                &["", "Memory", "HugePages"],
            ));
        }
        for (j, s) in v
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(t) = s.get("serviceAccountToken") {
                let sp = format!("{p}.projected.sources[{j}].serviceAccountToken");
                let exp = t
                    .get("expirationSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(3600);
                if exp < 600 {
                    causes.push(Cause::invalid(
                        format!("{sp}.expirationSeconds"),
                        &json!(exp),
                        "may not specify a duration less than 10 minutes",
                    ));
                } else if exp > 1 << 32 {
                    causes.push(Cause::invalid(
                        format!("{sp}.expirationSeconds"),
                        &json!(exp),
                        "may not specify a duration larger than 2^32 seconds",
                    ));
                }
                if t.get("path")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .is_empty()
                {
                    causes.push(Cause::required(format!("{sp}.path"), ""));
                }
            }
        }
    }
    if spec
        .get("containers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
    {
        causes.push(Cause::required("spec.containers", ""));
    }
    let mut names = HashSet::new();
    for list in CONTAINER_LISTS {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let p = format!("spec.{list}[{i}]");
            validate_container(c, &p, list, &volumes, &mut names, &mut causes);
        }
    }
    if let Some(sa) = spec.get("serviceAccountName").and_then(Value::as_str)
        && !sa.is_empty()
        && !is_dns_subdomain(sa)
    {
        causes.push(Cause::invalid(
            "spec.serviceAccountName",
            &json!(sa),
            crate::meta::SUBDOMAIN_MSG,
        ));
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str)
        && !matches!(rp, "Always" | "OnFailure" | "Never")
    {
        causes.push(Cause::not_supported(
            "spec.restartPolicy",
            &json!(rp),
            &["Always", "OnFailure", "Never"],
        ));
    }
    causes
}

fn validate_container(
    c: &Value,
    p: &str,
    list: &str,
    volumes: &HashSet<String>,
    names: &mut HashSet<String>,
    causes: &mut Vec<Cause>,
) {
    let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required(format!("{p}.name"), ""));
    } else if !is_dns_label(name) {
        causes.push(Cause::invalid(format!("{p}.name"), &json!(name), LABEL_MSG));
    } else if !names.insert(name.to_string()) {
        causes.push(Cause::duplicate(format!("{p}.name"), &json!(name)));
    }
    if c.get("image")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .is_empty()
    {
        causes.push(Cause::required(format!("{p}.image"), ""));
    }
    let restart = c.get("restartPolicy").and_then(Value::as_str);
    match (list, restart) {
        ("initContainers", Some("Always")) | (_, None) => {}
        ("initContainers", Some(other)) => causes.push(Cause::not_supported(
            format!("{p}.restartPolicy"),
            &json!(other),
            &["Always"],
        )),
        (_, Some(_)) => causes.push(Cause::forbidden(
            format!("{p}.restartPolicy"),
            "may not be set for non-init containers",
        )),
    }
    if list == "initContainers" && restart != Some("Always") {
        for f in [
            "lifecycle",
            "livenessProbe",
            "readinessProbe",
            "startupProbe",
        ] {
            if c.get(f).is_some_and(|v| !v.is_null()) {
                causes.push(Cause::forbidden(
                    format!("{p}.{f}"),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            }
        }
    }
    let mut paths = HashSet::new();
    for (j, m) in c
        .get("volumeMounts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let mp = format!("{p}.volumeMounts[{j}]");
        let vname = m.get("name").and_then(Value::as_str).unwrap_or_default();
        if vname.is_empty() {
            causes.push(Cause::required(format!("{mp}.name"), ""));
        } else if !volumes.contains(vname) {
            causes.push(Cause::not_found(format!("{mp}.name"), &json!(vname)));
        }
        let path = m
            .get("mountPath")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if path.is_empty() {
            causes.push(Cause::required(format!("{mp}.mountPath"), ""));
        } else if !paths.insert(path.to_string()) {
            causes.push(Cause::invalid(
                format!("{mp}.mountPath"),
                &json!(path),
                "must be unique",
            ));
        }
    }
    for (j, e) in c
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let ep = format!("{p}.env[{j}]");
        let n = e.get("name").and_then(Value::as_str).unwrap_or_default();
        if n.is_empty() {
            causes.push(Cause::required(format!("{ep}.name"), ""));
        } else if !valid_env_name(n) {
            causes.push(Cause::invalid(format!("{ep}.name"), &json!(n), "a valid environment variable name must consist only of printable ASCII characters other than '='"));
        }
        let has_value = e
            .get("value")
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty());
        if has_value && e.get("valueFrom").is_some_and(|v| !v.is_null()) {
            causes.push(Cause::invalid(
                format!("{ep}.valueFrom"),
                &json!(""),
                "may not be specified when `value` is not empty",
            ));
        }
    }
    for (j, port) in c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let n = port
            .get("containerPort")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if !(1..=65535).contains(&n) {
            causes.push(Cause::invalid(
                format!("{p}.ports[{j}].containerPort"),
                &json!(n),
                "must be between 1 and 65535, inclusive",
            ));
        }
    }
}

/// Warnings the real server returns (HTTP `Warning` header) without rejecting the pod:
/// duplicate environment variable names.
pub fn pod_warnings(pod: &Value) -> Vec<String> {
    let mut out = vec![];
    for list in CONTAINER_LISTS {
        for (i, c) in pod
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let mut seen = HashSet::new();
            for (j, e) in c
                .get("env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let n = e.get("name").and_then(Value::as_str).unwrap_or_default();
                if !seen.insert(n.to_string()) {
                    out.push(format!("spec.{list}[{i}].env[{j}]: hides previous definition of {n:?}, which may be dropped when using apply"));
                }
            }
        }
    }
    out
}

fn without_images(spec: &Value) -> Value {
    let mut s = spec.clone();
    for list in CONTAINER_LISTS {
        for c in s
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(o) = c.as_object_mut() {
                o.remove("image");
            }
        }
    }
    if let Some(o) = s.as_object_mut() {
        o.remove("activeDeadlineSeconds");
        o.remove("tolerations");
        o.remove("terminationGracePeriodSeconds");
        o.remove("schedulingGates");
    }
    s
}

/// Pod spec immutability on update.
pub fn validate_pod_update(new: &Value, old: &Value) -> Vec<Cause> {
    let (n, o) = (
        new.get("spec").cloned().unwrap_or(json!({})),
        old.get("spec").cloned().unwrap_or(json!({})),
    );
    if without_images(&n) != without_images(&o) {
        return vec![Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        )];
    }
    vec![]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_dangling_mounts_and_bad_restart_policy() {
        let pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "restartPolicy": "Always",
             "volumeMounts": [{"name": "missing", "mountPath": "/m"}]}
        ]}});
        let causes = validate_pod(&pod);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert!(fields.contains(&"spec.containers[0].restartPolicy"));
        assert!(fields.contains(&"spec.containers[0].volumeMounts[0].name"));
    }

    #[test]
    fn defaults_and_token_mount() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "busybox"}]}});
        default_pod(&mut pod);
        mount_service_account_token(&mut pod, &json!({}), "abcde");
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["spec"]["volumes"][0]["name"], "kube-api-access-abcde");
        assert!(validate_pod(&pod).is_empty());
    }
}
