//! Mutating admission through real HTTPS webhooks, and schema validation of what the
//! double stores.

use std::time::Duration;

use attache_kube_double::KubeDouble;
use axum::{Json, Router, routing::post};
use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

fn allow(req: &Value, patch: Option<Value>) -> Value {
    let mut resp = json!({"uid": req["request"]["uid"], "allowed": true});
    if let Some(p) = patch {
        resp["patchType"] = json!("JSONPatch");
        resp["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(p.to_string()));
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp})
}

/// A test webhook server: `/mutate` injects a native sidecar, `/deny` denies, `/slow`
/// never answers in time, `/dangling` mounts a volume that does not exist.
async fn webhook_server() -> (String, String) {
    let ca = attache_pki::CertificateAuthority::create(
        &attache_pki::CaOptions::default(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    let (cert, key) = ca
        .issue_server(
            &[
                "localhost".into(),
                "127.0.0.1".into(),
                "hook.webhooks.svc".into(),
            ],
            attache_pki::KeyType::EcdsaP256,
            Duration::from_secs(3600),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
    let router = Router::new()
        .route("/mutate", post(|Json(r): Json<Value>| async move {
            Json(allow(&r, Some(json!([
                {"op": "add", "path": "/metadata/labels/injected", "value": "true"},
                {"op": "add", "path": "/spec/volumes/-", "value": {"name": "attache-token", "emptyDir": {"medium": "Memory"}}},
                {"op": "add", "path": "/spec/initContainers", "value": [{"name": "attache-sidecar", "image": "attache/sidecar:1", "restartPolicy": "Always",
                    "startupProbe": {"httpGet": {"path": "/readyz", "port": 9911}},
                    "volumeMounts": [{"name": "attache-token", "mountPath": "/var/run/secrets/attache.dev"}]}]},
                {"op": "add", "path": "/spec/containers/0/env", "value": [{"name": "AWS_REGION", "value": "eu-west-1"}, {"name": "AWS_REGION", "value": "dup"}]}
            ]))))
        }))
        .route("/deny", post(|Json(r): Json<Value>| async move {
            Json(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {
                "uid": r["request"]["uid"], "allowed": false,
                "status": {"code": 403, "message": "namespace \"team\" may not use role arn:aws:iam::1:role/x (annotation attache.dev/allowed-roles)"}}}))
        }))
        .route("/slow", post(|Json(r): Json<Value>| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(allow(&r, None))
        }))
        .route("/dangling", post(|Json(r): Json<Value>| async move {
            Json(allow(&r, Some(json!([{"op": "add", "path": "/spec/containers/0/volumeMounts/-", "value": {"name": "nope", "mountPath": "/x"}}]))))
        }));
    let addr = attache_kube_double::serve_tls(router, &cert.pem, &key.to_pkcs8_pem())
        .await
        .unwrap();
    (
        format!("https://127.0.0.1:{}", addr.port()),
        ca.certificate_pem().to_string(),
    )
}

fn config(
    name: &str,
    client_config: Value,
    ca_pem: &str,
    extra: Value,
) -> MutatingWebhookConfiguration {
    let mut hook = json!({
        "name": name, "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 1,
        "clientConfig": client_config,
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system"]}]},
    });
    hook["clientConfig"]["caBundle"] =
        json!(base64::engine::general_purpose::STANDARD.encode(ca_pem));
    if let (Some(h), Some(e)) = (hook.as_object_mut(), extra.as_object()) {
        h.extend(e.clone());
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "webhooks": [hook]})).unwrap()
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}})).unwrap()
}

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn setup() -> (KubeDouble, String, String) {
    let d = KubeDouble::start().await.unwrap();
    let (url, ca) = webhook_server().await;
    (d, url, ca)
}

#[tokio::test]
async fn mutating_webhook_patches_pods_and_sees_a_full_review() {
    let (d, url, ca) = setup().await;
    let c = d.client().await;
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(c.clone());
    hooks
        .create(
            &PostParams::default(),
            &config(
                "inject.attache.dev",
                json!({"url": format!("{url}/mutate")}),
                &ca,
                json!({}),
            ),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let p = pods
        .create(&PostParams::default(), &pod("web"))
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.as_ref().unwrap()["injected"], "true");
    let spec = p.spec.unwrap();
    let init = &spec.init_containers.unwrap()[0];
    assert_eq!(init.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        init.termination_message_path.as_deref(),
        Some("/dev/termination-log"),
        "defaults re-applied after mutation"
    );
    assert!(
        d.warnings()
            .iter()
            .any(|w| w.contains("hides previous definition of \"AWS_REGION\""))
    );

    let reviews = d.admission_reviews();
    let r = &reviews[0]["review"]["request"];
    assert_eq!(reviews[0]["webhook"], "inject.attache.dev");
    assert_eq!(
        r["kind"],
        json!({"group": "", "version": "v1", "kind": "Pod"})
    );
    assert_eq!(
        r["resource"],
        json!({"group": "", "version": "v1", "resource": "pods"})
    );
    assert_eq!(
        (
            r["namespace"].as_str(),
            r["name"].as_str(),
            r["operation"].as_str()
        ),
        (Some("default"), Some("web"), Some("CREATE"))
    );
    assert_eq!(r["userInfo"]["username"], "kubernetes-admin");
    assert_eq!(r["dryRun"], false);
    assert_eq!(
        r["object"]["spec"]["serviceAccountName"], "default",
        "webhooks see the defaulted pod"
    );
    assert_eq!(r["uid"].as_str().map(str::len), Some(36));

    // dryRun: the webhook is told, nothing is stored.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    pods.create(&dry, &pod("dry")).await.unwrap();
    assert_eq!(
        d.admission_reviews().last().unwrap()["review"]["request"]["dryRun"],
        true
    );
    assert!(pods.get_opt("dry").await.unwrap().is_none());

    // kube-system is excluded by the namespaceSelector.
    let before = d.admission_reviews().len();
    let sys: Api<Pod> = Api::namespaced(c, "kube-system");
    let p = sys
        .create(&PostParams::default(), &pod("sys"))
        .await
        .unwrap();
    assert!(!p.metadata.labels.unwrap().contains_key("injected"));
    assert_eq!(d.admission_reviews().len(), before);
}

#[tokio::test]
async fn denial_returns_the_webhook_message() {
    let (d, url, ca) = setup().await;
    let c = d.client().await;
    Api::<MutatingWebhookConfiguration>::all(c.clone())
        .create(
            &PostParams::default(),
            &config(
                "deny.attache.dev",
                json!({"url": format!("{url}/deny")}),
                &ca,
                json!({}),
            ),
        )
        .await
        .unwrap();
    let (code, _, msg) = api_error(
        Api::<Pod>::namespaced(c, "default")
            .create(&PostParams::default(), &pod("p"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 403);
    assert_eq!(
        msg,
        "admission webhook \"deny.attache.dev\" denied the request: namespace \"team\" may not use role arn:aws:iam::1:role/x (annotation attache.dev/allowed-roles)"
    );
}

#[tokio::test]
async fn timeouts_follow_the_failure_policy() {
    let (d, url, ca) = setup().await;
    let c = d.client().await;
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(c.clone());
    hooks
        .create(
            &PostParams::default(),
            &config(
                "slow.attache.dev",
                json!({"url": format!("{url}/slow")}),
                &ca,
                json!({"failurePolicy": "Fail"}),
            ),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c, "default");
    let t = std::time::Instant::now();
    let (code, reason, msg) = api_error(
        pods.create(&PostParams::default(), &pod("a"))
            .await
            .unwrap_err(),
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "timeoutSeconds honoured"
    );
    assert_eq!((code, reason.as_str()), (500, "InternalError"));
    assert!(
        msg.starts_with("Internal error occurred: failed calling webhook \"slow.attache.dev\""),
        "{msg}"
    );
    hooks.patch("slow.attache.dev", &kube::api::PatchParams::default(), &kube::api::Patch::Json::<()>(serde_json::from_value(json!([{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}])).unwrap())).await.unwrap();
    pods.create(&PostParams::default(), &pod("b"))
        .await
        .unwrap();
}

#[tokio::test]
async fn service_references_resolve_and_verify_the_service_name() {
    let (d, url, ca) = setup().await;
    let c = d.client().await;
    d.set_service_endpoint("webhooks", "hook", 443, &url)
        .unwrap();
    Api::<MutatingWebhookConfiguration>::all(c.clone())
        .create(
            &PostParams::default(),
            &config(
                "svc.attache.dev",
                json!({"service": {"namespace": "webhooks", "name": "hook", "path": "/mutate"}}),
                &ca,
                json!({}),
            ),
        )
        .await
        .unwrap();
    let p = Api::<Pod>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &pod("p"))
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap()["injected"], "true");
    // An object selector that does not match skips the webhook.
    Api::<MutatingWebhookConfiguration>::all(c.clone())
        .delete("svc.attache.dev", &Default::default())
        .await
        .unwrap();
    Api::<MutatingWebhookConfiguration>::all(c.clone())
        .create(
            &PostParams::default(),
            &config(
                "sel.attache.dev",
                json!({"service": {"namespace": "webhooks", "name": "hook", "path": "/deny"}}),
                &ca,
                json!({"objectSelector": {"matchLabels": {"app": "other"}}}),
            ),
        )
        .await
        .unwrap();
    Api::<Pod>::namespaced(c, "default")
        .create(&PostParams::default(), &pod("q"))
        .await
        .unwrap();
}

#[tokio::test]
async fn mutated_pods_are_validated() {
    let (d, url, ca) = setup().await;
    let c = d.client().await;
    Api::<MutatingWebhookConfiguration>::all(c.clone())
        .create(
            &PostParams::default(),
            &config(
                "dangling.attache.dev",
                json!({"url": format!("{url}/dangling")}),
                &ca,
                json!({}),
            ),
        )
        .await
        .unwrap();
    let (code, reason, msg) = api_error(
        Api::<Pod>::namespaced(c.clone(), "default")
            .create(&PostParams::default(), &pod("p"))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        msg.contains("spec.containers[0].volumeMounts[1].name: Not found: \"nope\""),
        "{msg}"
    );
    // Invalid webhook configurations are rejected too.
    let bad = config("short", json!({"url": "http://insecure"}), &ca, json!({}));
    let (code, _, msg) = api_error(
        Api::<MutatingWebhookConfiguration>::all(c)
            .create(&PostParams::default(), &bad)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(msg.contains("webhooks[0].clientConfig.url"), "{msg}");
}

#[tokio::test]
async fn stored_objects_validate_against_kubernetes_schemas() {
    let (d, url, ca) = setup().await;
    let c = d.client().await;
    Api::<MutatingWebhookConfiguration>::all(c.clone())
        .create(
            &PostParams::default(),
            &config(
                "inject.attache.dev",
                json!({"url": format!("{url}/mutate")}),
                &ca,
                json!({}),
            ),
        )
        .await
        .unwrap();
    Api::<Namespace>::all(c.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    Api::<Pod>::namespaced(c.clone(), "team")
        .create(&PostParams::default(), &pod("web"))
        .await
        .unwrap();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(c.clone(), "team");
    cms.patch("bundle", &kube::api::PatchParams::apply("attache"), &kube::api::Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bundle"}, "data": {"ca.crt": "x"}}))).await.unwrap();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(c.clone(), "team");
    leases.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000000Z"}})).unwrap()).await.unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(c.clone(), "team");
    secrets.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "pull"}, "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": "{\"auths\":{}}"}})).unwrap()).await.unwrap();
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(c, "team");
    events.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "e1"}, "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "attache.dev/broker", "reportingInstance": "broker-0", "action": "Sync", "reason": "Refused", "type": "Warning", "note": "not ours", "regarding": {"kind": "Secret", "namespace": "team", "name": "pull"}})).unwrap()).await.unwrap();

    let objects = d.dump();
    assert!(objects.len() >= 20);
    attache_kube_double::schema::validate(&objects).unwrap();
}
