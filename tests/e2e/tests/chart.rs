//! The Helm chart `deploy/helm/attache` against the real kube-apiserver and the
//! kustomize base: what helm renders (default values and every
//! `ci/*-values.yaml`) is accepted by a server-side apply, and for the same
//! settings the chart and kustomize (`deploy/kubernetes`,
//! `deploy/overlays/my-cluster`) render the same objects, but for the
//! differences [`normalise`] lists, each with its reason.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use attache_e2e::ApiServer;
use common::{root, run_ok};
use serde_json::Value;

const NAMESPACE: &str = "attache-system";

fn chart() -> PathBuf {
    root().join("deploy/helm/attache")
}

/// The objects of a multi-document YAML stream.
fn objects(yaml: &str, what: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("{what} is not YAML: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// `helm template attache deploy/helm/attache -n attache-system [-f values] [--set ...]`.
fn helm_template(values: Option<&Path>, set: &[&str]) -> Vec<Value> {
    let mut cmd = attache_testkit::tool_command("helm");
    cmd.args(["template", "attache"])
        .arg(chart())
        .args(["--namespace", NAMESPACE]);
    if let Some(values) = values {
        cmd.arg("--values").arg(values);
    }
    for s in set {
        cmd.args(["--set", s]);
    }
    objects(
        &run_ok(&mut cmd),
        &format!("helm template {values:?} {set:?}"),
    )
}

/// `kubectl kustomize <dir>`, with the pinned kubectl.
fn kustomize(dir: &str) -> Vec<Value> {
    let out = run_ok(
        attache_testkit::tool_command("kubectl")
            .arg("kustomize")
            .arg(root().join(dir)),
    );
    objects(&out, dir)
}

/// `deploy/helm/attache/ci/*-values.yaml`: every value set, and ca.mode dir.
fn ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("deploy/helm/attache/ci")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "all-values.yaml")
            && names.iter().any(|n| n == "ca-dir-values.yaml"),
        "{names:?}"
    );
    files
}

fn kind(o: &Value) -> &str {
    o["kind"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_chart_is_accepted_by_the_real_api_server() {
    let server = ApiServer::shared().await;
    // With default values the chart leaves the namespace to
    // `helm install --create-namespace`.
    run_ok(server.kubectl().args(["create", "namespace", NAMESPACE]));
    let mut renders = vec![("default values".to_string(), helm_template(None, &[]))];
    for file in ci_values() {
        renders.push((file.display().to_string(), helm_template(Some(&file), &[])));
    }
    let mut monitors = 0;
    for (what, rendered) in renders {
        // The ServiceMonitor's CRD (Prometheus Operator) is not installed
        // here, so it alone is not applied; deploy/check.sh
        // (deploy/helm/check_rendered.py) checks its shape.
        let (skipped, applied): (Vec<Value>, Vec<Value>) = rendered
            .into_iter()
            .partition(|o| kind(o) == "ServiceMonitor");
        monitors += skipped.len();
        let file = tempfile::NamedTempFile::new().unwrap();
        let stream: Vec<String> = applied.iter().map(Value::to_string).collect();
        std::fs::write(file.path(), stream.join("\n---\n")).unwrap();
        let out = tokio::task::block_in_place(|| {
            run_ok(
                server
                    .kubectl()
                    .args(["apply", "--server-side", "--field-manager=helm-e2e", "-f"])
                    .arg(file.path()),
            )
        });
        assert_eq!(
            out.lines()
                .filter(|l| l.ends_with("serverside-applied"))
                .count(),
            applied.len(),
            "every object of {what} applied:\n{out}"
        );
    }
    assert_eq!(monitors, 1, "ci/all-values.yaml renders the ServiceMonitor");

    // The last settings applied (ci/ca-dir-values.yaml) are the ones stored.
    let webhook: Value = serde_json::from_str(&run_ok(server.kubectl().args([
        "get",
        "mutatingwebhookconfiguration",
        "attache-broker",
        "-o",
        "json",
    ])))
    .unwrap();
    let selector = &webhook["webhooks"][0]["namespaceSelector"];
    assert!(
        selector.get("matchLabels").is_none(),
        "ca-dir-values.yaml opts every namespace in: {selector}"
    );
    let broker: Value = serde_json::from_str(&run_ok(server.kubectl().args([
        "-n",
        NAMESPACE,
        "get",
        "deployment",
        "attache-broker",
        "-o",
        "json",
    ])))
    .unwrap();
    let env = &broker["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(
        env.as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "ATTACHE_CA_DIR" && e["value"] == "/etc/attache/ca"),
        "{env}"
    );
}

/// Labels helm adds to every object (never to pod templates or selectors).
const HELM_LABELS: [&str; 4] = [
    "helm.sh/chart",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
];

const CLUSTER_SCOPED: [&str; 6] = [
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// The name the kustomize base gives the settings ConfigMap, less
/// configMapGenerator's content hash (`attache-broker-config-<10 chars>`).
fn unhashed(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((base, hash)) if base == "attache-broker-config" && hash.len() == 10 => {
            base.to_string()
        }
        _ => name.to_string(),
    }
}

fn collapse_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Objects by (kind, namespace, name), with the intended differences between
/// the chart and the kustomize base taken out. Each is listed here, and why:
///
/// 1. Helm's own labels (`HELM_LABELS`) on the chart's objects: release
///    bookkeeping, on object metadata only.
/// 2. The settings ConfigMap: kustomize's configMapGenerator names it
///    `attache-broker-config-<content hash>` (and rewrites the Deployments'
///    `envFrom`) so a change rolls the pods; the chart keeps the plain name,
///    which `helm upgrade` updates in place, and rolls the pods with the pod
///    template annotation `checksum/config` instead. The hash is cut and the
///    annotation dropped (after checking the chart has it).
/// 3. `metadata.namespace` of cluster-scoped objects: kustomize's namespace
///    transformer does not know ValidatingAdmissionPolicy(Binding) are
///    cluster-scoped and stamps the namespace on them (the API server ignores
///    it); the chart gives them none (checked).
/// 4. Whitespace in the policies' CEL: kustomize's YAML reader turns each
///    line break before a more-indented line of the base's folded (`>-`)
///    expressions into two; helm passes the text through. CEL ignores it.
///
/// The Namespace object (5th difference) is handled by the callers.
fn normalise(objects: Vec<Value>, from_chart: bool) -> BTreeMap<(String, String, String), Value> {
    let mut out = BTreeMap::new();
    for mut o in objects {
        let kind = kind(&o).to_string();
        let meta = o["metadata"].as_object_mut().expect("metadata");
        if from_chart {
            let labels = meta
                .get_mut("labels")
                .and_then(Value::as_object_mut)
                .unwrap_or_else(|| panic!("the chart labels {kind}"));
            for l in HELM_LABELS {
                assert!(labels.remove(l).is_some(), "{kind}: helm label {l}");
            }
        }
        if CLUSTER_SCOPED.contains(&kind.as_str()) {
            let ns = meta.remove("namespace");
            assert!(
                !from_chart || ns.is_none(),
                "the chart gives cluster-scoped {kind} no namespace"
            );
        }
        if kind == "ConfigMap" {
            let name = unhashed(meta["name"].as_str().unwrap());
            meta.insert("name".into(), name.into());
        }
        if kind == "Deployment" {
            let template = &mut o["spec"]["template"];
            let annotations = template["metadata"]["annotations"]
                .as_object_mut()
                .expect("pod template annotations");
            let checksum = annotations.remove("checksum/config");
            if from_chart {
                let checksum = checksum.expect("the chart's pods roll on config changes");
                assert_eq!(checksum.as_str().unwrap().len(), 64, "a sha256");
            }
            for c in template["spec"]["containers"].as_array_mut().unwrap() {
                for e in c["envFrom"].as_array_mut().into_iter().flatten() {
                    let name = unhashed(e["configMapRef"]["name"].as_str().unwrap());
                    e["configMapRef"]["name"] = name.into();
                }
            }
        }
        if kind == "ValidatingAdmissionPolicy" {
            for v in o["spec"]["validations"].as_array_mut().unwrap() {
                for field in ["expression", "messageExpression"] {
                    if let Some(s) = v[field].as_str() {
                        v[field] = collapse_whitespace(s).into();
                    }
                }
            }
        }
        let key = (
            kind,
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            o["metadata"]["name"].as_str().unwrap().to_string(),
        );
        assert!(out.insert(key.clone(), o).is_none(), "{key:?} twice");
    }
    out
}

/// Asserts both renders hold the same objects, object by object.
fn assert_same(
    what: &str,
    kustomize: &BTreeMap<(String, String, String), Value>,
    chart: &BTreeMap<(String, String, String), Value>,
) {
    let only = |a: &BTreeMap<_, _>, b: &BTreeMap<_, _>| -> Vec<(String, String, String)> {
        a.keys().filter(|k| !b.contains_key(*k)).cloned().collect()
    };
    assert_eq!(
        (only(kustomize, chart), only(chart, kustomize)),
        (vec![], vec![]),
        "{what}: (objects only kustomize renders, objects only the chart renders)"
    );
    for (key, k) in kustomize {
        let c = &chart[key];
        assert!(
            k == c,
            "{what}: {key:?} differs\nkustomize: {}\nchart: {}",
            serde_json::to_string_pretty(k).unwrap(),
            serde_json::to_string_pretty(c).unwrap()
        );
    }
}

/// Takes the Namespace `attache-system` out of a kustomize render.
fn take_namespace(objects: &mut BTreeMap<(String, String, String), Value>) -> Value {
    objects
        .remove(&("Namespace".into(), String::new(), NAMESPACE.into()))
        .expect("the kustomize base renders the Namespace")
}

/// deploy/overlays/my-cluster's settings as chart values.
const MY_CLUSTER_VALUES: &str = r#"
config:
  trustDomain: prod-eu.example.com
  clusterName: prod-eu
  region: eu-west-1
  trustAnchorArn: arn:aws:rolesanywhere:eu-west-1:111122223333:trust-anchor/00000000-0000-0000-0000-000000000000
  profileArn: arn:aws:rolesanywhere:eu-west-1:111122223333:profile/00000000-0000-0000-0000-000000000000
ecrController:
  roleArn: arn:aws:iam::111122223333:role/attache-ecr-pull
  crlSyncRoleArn: arn:aws:iam::111122223333:role/attache-crl-sync
webhook:
  failurePolicy: Ignore
networkPolicy:
  webhookFrom:
    - ipBlock:
        cidr: 10.0.0.0/24
"#;

#[test]
fn chart_defaults_render_the_kustomize_base() {
    let mut base = normalise(kustomize("deploy/kubernetes"), false);
    let chart = normalise(helm_template(None, &[]), true);
    // 5. The Namespace: the base renders it; the chart's default does not,
    // since `helm install --create-namespace` cannot hand a namespace to the
    // release it installs into (namespace.create=true renders it, below).
    let namespace = take_namespace(&mut base);
    assert_same("deploy/kubernetes vs chart defaults", &base, &chart);

    // namespace.create=true renders the base's Namespace, which `helm
    // uninstall` keeps (it holds the CA Secret the broker created).
    let mut with_namespace = normalise(helm_template(None, &["namespace.create=true"]), true);
    let mut rendered = with_namespace
        .remove(&("Namespace".into(), String::new(), NAMESPACE.into()))
        .expect("namespace.create=true renders the Namespace");
    assert_eq!(
        rendered["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove("helm.sh/resource-policy"),
        Some("keep".into())
    );
    if rendered["metadata"]["annotations"] == serde_json::json!({}) {
        rendered["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("annotations");
    }
    assert_eq!(rendered, namespace);
    assert_same(
        "chart defaults vs namespace.create=true",
        &chart,
        &with_namespace,
    );
}

#[test]
fn chart_values_render_the_my_cluster_overlay() {
    let mut overlay = normalise(kustomize("deploy/overlays/my-cluster"), false);
    take_namespace(&mut overlay);
    let values = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(values.path(), MY_CLUSTER_VALUES).unwrap();
    let chart = normalise(helm_template(Some(values.path()), &[]), true);
    assert_same(
        "deploy/overlays/my-cluster vs the chart with its settings",
        &overlay,
        &chart,
    );
}
