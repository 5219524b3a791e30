//! AdmissionReview JSON -> the webhook's parse, decision and patch.
//! The first byte picks the broker settings and the ServiceAccount's and
//! namespace's annotations; the rest is the `POST /mutate` body.
//! Promise: no panic; a patch always applies (json-patch) to the pod the
//! webhook saw, keeps it a Pod (volume names stay unique), keeps every env
//! var and volume the pod set, and admitting the patched pod again changes
//! nothing.
#![no_main]

use std::collections::BTreeMap;

use attache_api::names::*;
use attache_broker::inject::{Context, Decision, InjectConfig, decide};
use attache_broker::webhook::{parse_review, patch_response};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::AdmissionResponse;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const ROLE: &str = "arn:aws:iam::123456789012:role/app";

fn config(native: bool, restrictions: bool) -> InjectConfig {
    let mut config = InjectConfig {
        restrictions,
        session_name: if native { "pod" } else { "serial" }.into(),
        ..InjectConfig::example()
    };
    config.sidecar.native = native;
    config
}

/// (name, value-or-source) pairs of every env var and names of every volume.
fn user_state(pod: &Value) -> (Vec<Value>, Vec<Value>) {
    let mut env = Vec::new();
    for kind in ["containers", "initContainers"] {
        for c in pod["spec"][kind].as_array().into_iter().flatten() {
            for e in c["env"].as_array().into_iter().flatten() {
                env.push(serde_json::json!([c["name"], e]));
            }
        }
    }
    let volumes = pod["spec"]["volumes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (env, volumes)
}

fn contains_all(after: &[Value], before: &[Value]) -> bool {
    before.iter().all(|b| after.contains(b))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let Ok(req) = parse_review(body) else {
        return;
    };
    let Some(object) = &req.object else {
        return;
    };
    let pod = serde_json::to_value(object).expect("a DynamicObject serializes");
    let cfg = config(selector & 1 == 0, selector & 2 == 0);
    let mut sa = BTreeMap::new();
    if selector & 4 == 0 {
        sa.insert(ANN_ROLE_ARN.to_string(), ROLE.to_string());
    }
    if selector & 8 != 0 {
        sa.insert(ANN_SESSION_DURATION.to_string(), "7200".to_string());
    }
    let ns = BTreeMap::from([(
        ANN_ALLOWED_ROLES.to_string(),
        r#"["arn:aws:iam::123456789012:role/**"]"#.to_string(),
    )]);
    let ctx = Context {
        namespace: "team-a",
        namespace_annotations: &ns,
        service_account: "app",
        sa_annotations: &sa,
    };
    let Decision::Patch { ops, warnings, .. } = decide(&pod, &ctx, &cfg) else {
        return;
    };
    let resp = patch_response(AdmissionResponse::from(&req), ops.clone(), warnings)
        .expect("the webhook's operations form a patch");
    // What the API server receives: the review JSON with a base64 patch.
    let review = serde_json::to_value(resp.into_review()).expect("review serializes");
    assert_eq!(review["response"]["patchType"], "JSONPatch");
    let patch = ops;
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\npod: {pod}\npatch: {patch:?}"));
    if serde_json::from_value::<Pod>(pod.clone()).is_ok() {
        serde_json::from_value::<Pod>(patched.clone())
            .unwrap_or_else(|e| panic!("patched pod is no Pod: {e}\n{patched}"));
    }
    let names = |p: &Value| {
        let mut n: Vec<String> = p["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| v["name"].to_string())
            .collect();
        n.sort();
        let all = n.len();
        n.dedup();
        all == n.len()
    };
    assert!(!names(&pod) || names(&patched), "duplicate volume names");
    let (env, volumes) = user_state(&pod);
    let (env_after, volumes_after) = user_state(&patched);
    assert!(
        contains_all(&env_after, &env),
        "an env var was overridden or removed"
    );
    assert!(
        contains_all(&volumes_after, &volumes),
        "a volume was overridden or removed"
    );
    assert!(
        matches!(decide(&patched, &ctx, &cfg), Decision::Skip(_)),
        "admitting the patched pod again changes it"
    );
});
