//! Properties of the webhook's patch for arbitrary pods (containers, init
//! containers, env, volumes, annotations whose keys hold `~` and `/`): the
//! patch applies with json-patch, the result is still a Pod (no duplicate
//! volume names either), the pod's own env vars, mounts, volumes and
//! annotations are never overridden or removed, and admitting the patched pod
//! again changes nothing.

use std::collections::BTreeMap;

use attache_api::names::*;
use attache_broker::inject::{Context, Decision, InjectConfig, decide};
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const ROLE: &str = "arn:aws:iam::123456789012:role/app";

fn config(native_sidecar: bool) -> InjectConfig {
    let mut config = InjectConfig {
        session_name: "pod".into(),
        ..InjectConfig::example()
    };
    config.sidecar.native = native_sidecar;
    config
}

/// Env var names, including the ones the webhook sets.
fn env_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("AWS_REGION".to_string()),
        Just("AWS_DEFAULT_REGION".to_string()),
        Just("AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string()),
        Just("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".to_string()),
        Just("AWS_ACCESS_KEY_ID".to_string()),
        "[A-Z_]{1,12}",
    ]
}

fn env_var() -> impl Strategy<Value = Value> {
    (env_name(), prop::option::of("[ -~]{0,16}")).prop_map(|(name, value)| match value {
        Some(v) => json!({"name": name, "value": v}),
        None => json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
    })
}

fn mount() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z]{1,8}".prop_map(|n| json!({"name": n, "mountPath": format!("/{n}")})),
        Just(json!({"name": "mine", "mountPath": TOKEN_DIR})),
        Just(json!({"name": TOKEN_VOLUME, "mountPath": "/elsewhere"})),
    ]
}

/// A container; `env` / `volumeMounts` absent, empty or filled.
fn container(name: String) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec(env_var(), 0..4)),
        prop::option::of(prop::collection::vec(mount(), 0..3)),
    )
        .prop_map(move |(env, mounts)| {
            let mut c = json!({"name": name, "image": "busybox"});
            if let Some(env) = env {
                c["env"] = Value::Array(env);
            }
            if let Some(m) = mounts {
                c["volumeMounts"] = Value::Array(m);
            }
            c
        })
}

fn containers(prefix: &'static str, min: usize) -> impl Strategy<Value = Vec<Value>> {
    (min..4usize).prop_flat_map(move |n| {
        (0..n)
            .map(|i| container(format!("{prefix}{i}")))
            .collect::<Vec<_>>()
    })
}

/// Annotation keys with `~` and `/` (JSON Pointer's escape characters).
fn annotations() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    prop::option::of(prop::collection::btree_map(
        prop_oneof![
            "[a-z~/.]{1,12}",
            Just("a~1b".to_string()),
            Just("x/~0".to_string()),
            Just(ANN_INJECTED.to_string()),
            Just(ANN_ROLE_ARN.to_string()),
        ],
        "[ -~]{0,12}",
        0..5,
    ))
}

fn pod() -> impl Strategy<Value = Value> {
    (
        containers("app", 1),
        prop::option::of(containers("init", 0)),
        prop::option::of(prop::collection::vec(
            prop_oneof![
                4 => "[a-z]{1,8}",
                1 => Just(TOKEN_VOLUME.to_string()),
                1 => Just(SA_TOKEN_VOLUME.to_string()),
            ]
            .prop_map(|n| json!({"name": n, "emptyDir": {}})),
            0..3,
        )),
        annotations(),
        any::<bool>(),
    )
        .prop_map(|(containers, init, volumes, annotations, share)| {
            let mut spec = Map::new();
            spec.insert("serviceAccountName".into(), json!("app"));
            spec.insert("containers".into(), Value::Array(containers));
            if let Some(init) = init {
                spec.insert("initContainers".into(), Value::Array(init));
            }
            if let Some(mut v) = volumes {
                // Kubernetes requires unique volume names.
                v.sort_by_key(|v| v["name"].to_string());
                v.dedup_by_key(|v| v["name"].clone());
                spec.insert("volumes".into(), Value::Array(v));
            }
            if share {
                spec.insert("shareProcessNamespace".into(), json!(true));
            }
            let mut metadata = json!({"name": "p", "namespace": "team-a"});
            if let Some(a) = annotations {
                metadata["annotations"] = json!(a);
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
        })
}

/// (container, env entry) pairs and volumes the pod sets itself.
fn env_entries(pod: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for kind in ["containers", "initContainers"] {
        for c in pod["spec"][kind].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                out.push((c["name"].as_str().unwrap_or("").to_string(), e.clone()));
            }
        }
    }
    out
}

fn env_names_of(pod: &Value, container: &str) -> Vec<String> {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        .filter(|c| c["name"] == container)
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect()
}

fn list(pod: &Value, pointer: &str) -> Vec<Value> {
    pod.pointer(pointer)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn check(pod: &Value, native: bool) -> Result<(), TestCaseError> {
    let sa = BTreeMap::from([(ANN_ROLE_ARN.to_string(), ROLE.to_string())]);
    let ns = BTreeMap::from([(
        ANN_ALLOWED_ROLES.to_string(),
        format!("[\"{ROLE}\", \"arn:aws:iam::123456789012:role/**\"]"),
    )]);
    let ctx = Context {
        namespace: "team-a",
        namespace_annotations: &ns,
        service_account: "app",
        sa_annotations: &sa,
    };
    let cfg = config(native);
    let ops = match decide(pod, &ctx, &cfg) {
        Decision::Patch { ops, .. } => ops,
        // Only a pod-level role that is not an ARN, or a volume named like
        // attache's, may refuse these pods; by name.
        Decision::Deny(m) => {
            let taken = list(pod, "/spec/volumes")
                .iter()
                .any(|v| v["name"] == TOKEN_VOLUME || v["name"] == SA_TOKEN_VOLUME);
            prop_assert!(
                m.contains(ANN_ROLE_ARN) || (taken && m.contains("volume")),
                "{m}"
            );
            return Ok(());
        }
        Decision::Skip(_) => return Ok(()),
    };
    let mut out = pod.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| TestCaseError::fail(format!("{e}")))?;
    // Still a Pod.
    serde_json::from_value::<Pod>(out.clone())
        .map_err(|e| TestCaseError::fail(format!("not a Pod: {e}")))?;
    // Every env var the pod set is still there, unchanged, and no name the
    // pod set was added again (which would override it).
    let after = env_entries(&out);
    for (c, e) in env_entries(pod) {
        prop_assert!(after.contains(&(c.clone(), e.clone())), "{c}: {e} removed");
        let name = e["name"].as_str().unwrap_or("");
        let count = |p: &Value| env_names_of(p, &c).iter().filter(|n| *n == name).count();
        prop_assert_eq!(count(&out), count(pod), "{} added again in {}", name, c);
    }
    // Volumes, mounts and annotations the pod set are kept.
    let volumes = list(&out, "/spec/volumes");
    for v in list(pod, "/spec/volumes") {
        prop_assert!(volumes.contains(&v), "volume {v} removed");
    }
    let mut names: Vec<String> = volumes.iter().map(|v| v["name"].to_string()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    prop_assert_eq!(names.len(), before, "duplicate volume names");
    for kind in ["containers", "initContainers"] {
        for c in list(pod, &format!("/spec/{kind}")) {
            let now = list(&out, &format!("/spec/{kind}"));
            let same = now.iter().find(|n| n["name"] == c["name"]).unwrap();
            for m in list(&c, "/volumeMounts") {
                prop_assert!(list(same, "/volumeMounts").contains(&m));
            }
        }
    }
    if let Some(a) = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for (k, v) in a {
            if k != ANN_INJECTED {
                prop_assert_eq!(&out["metadata"]["annotations"][k], v);
            }
        }
    }
    // Idempotent: the patched pod is admitted unchanged.
    prop_assert_eq!(decide(&out, &ctx, &cfg), Decision::Skip("already injected"));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_patch_applies_keeps_what_the_pod_set_and_is_idempotent(
        pod in pod(),
        native in any::<bool>(),
    ) {
        check(&pod, native)?;
    }
}
