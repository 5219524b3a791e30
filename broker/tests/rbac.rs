//! The install manifests in `deploy/kubernetes` grant each of attache's two
//! identities (the broker, ServiceAccount `attache-broker`; the ECR
//! controller, `attache-ecr-controller`) exactly the Kubernetes API calls
//! listed for it in `deploy/kubernetes/broker-api-calls.json` (every call,
//! nothing more, no wildcards; the broker has no Secret access outside its
//! namespace), and agree with the commands' defaults (names, ports, paths).
//!
//! Renders the kustomization with `kubectl kustomize` (kubectl is on every
//! machine, CI included). `deploy/check_rbac.py` makes the same RBAC check
//! for `deploy/check.sh`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use attache_broker::run::RunArgs;
use clap::Parser;
use serde::Deserialize;
use serde_json::Value;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("broker/ has a parent")
        .to_path_buf()
}

/// One entry of `broker-api-calls.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Call {
    service_account: String,
    component: String,
    verb: String,
    group: String,
    resource: String,
    scope: Scope,
    #[serde(default)]
    resource_name: Option<String>,
    why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Scope {
    /// A namespaced resource in the broker's own namespace.
    Own,
    /// A namespaced resource in any namespace.
    Any,
    /// A cluster-scoped resource.
    Cluster,
}

#[derive(Debug, Deserialize)]
struct CallList {
    calls: Vec<Call>,
}

fn calls() -> Vec<Call> {
    let path = repo_root().join("deploy/kubernetes/broker-api-calls.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let list: CallList = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a valid call list: {e}", path.display()));
    list.calls
}

fn render(dir: &str) -> Vec<Value> {
    let path = repo_root().join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl (needed to render {dir}): {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("kustomize prints UTF-8");
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("kustomize output of {dir} is not YAML: {e}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn defaults() -> RunArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }
    Cli::try_parse_from(["attache-broker"])
        .expect("run has defaults for every flag")
        .run
}

fn controller_defaults() -> attache_broker::ecr::cli::EcrControllerArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        c: attache_broker::ecr::cli::EcrControllerArgs,
    }
    Cli::try_parse_from(["attache-broker"])
        .expect("ecr-controller has defaults for every flag")
        .c
}

const BROKER_SA: &str = "attache-broker";
const CONTROLLER_SA: &str = "attache-ecr-controller";

fn calls_of(calls: &[Call], sa: &str) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| c.service_account == sa)
        .cloned()
        .collect()
}

fn ecr_lease_name() -> String {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        ecr: attache_broker::ecr::EcrArgs,
    }
    Cli::try_parse_from(["attache-broker"])
        .expect("the ECR flags have defaults")
        .ecr
        .ecr_lease_name
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("the manifests have no {kind} {name}"))
}

/// The first document of `kind`; `missing` is the panic message without one.
fn first_of<'a>(docs: &'a [Value], kind: &str, missing: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).expect(missing)
}

/// `doc`'s annotation `key`; `missing` is the panic message without it.
fn annotation<'a>(doc: &'a Value, key: &str, missing: &str) -> &'a str {
    doc["metadata"]["annotations"][key].as_str().expect(missing)
}

/// The elements of a JSON array (none when `list` is not one).
fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list.as_array().into_iter().flatten()
}

/// `container` sets ATTACHE_NAMESPACE from the downward API.
fn assert_namespace_from_downward_api(container: &Value) {
    let ns_env = items(&container["env"])
        .find(|e| e["name"] == "ATTACHE_NAMESPACE")
        .expect("ATTACHE_NAMESPACE is set");
    assert_eq!(
        ns_env["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace",
        "the namespace comes from the downward API"
    );
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Where a grant applies.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    /// Through a ClusterRoleBinding: every namespace and cluster-scoped resources.
    Cluster,
    /// Through a RoleBinding: namespaced resources of this namespace.
    Namespace(String),
}

/// One (group, resource, verb) a rule grants, with its resourceNames.
#[derive(Debug, Clone)]
struct Grant {
    reach: Reach,
    origin: String,
    group: String,
    resource: String,
    verb: String,
    names: Option<BTreeSet<String>>,
}

/// Every grant bound to `namespace/service_account`; panics on wildcards,
/// nonResourceURLs and bindings to missing roles.
fn grants(docs: &[Value], namespace: &str, service_account: &str) -> Vec<Grant> {
    let mut out = Vec::new();
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let bound = items(&b["subjects"]).any(|s| {
            s["kind"] == "ServiceAccount"
                && s["name"] == service_account
                && s["namespace"] == namespace
        });
        if !bound {
            continue;
        }
        let binding = format!(
            "{} {}",
            b["kind"].as_str().unwrap_or_default(),
            b["metadata"]["name"].as_str().unwrap_or_default()
        );
        let reach = if b["kind"] == "ClusterRoleBinding" {
            Reach::Cluster
        } else {
            Reach::Namespace(
                b["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
            )
        };
        let role_kind = b["roleRef"]["kind"].as_str().unwrap_or_default();
        let role_name = b["roleRef"]["name"].as_str().unwrap_or_default();
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == role_kind
                    && d["metadata"]["name"] == role_name
                    && (role_kind == "ClusterRole"
                        || Reach::Namespace(
                            d["metadata"]["namespace"]
                                .as_str()
                                .unwrap_or_default()
                                .into(),
                        ) == reach)
            })
            .unwrap_or_else(|| panic!("{binding} refers to a missing {role_kind} {role_name}"));
        for (i, rule) in items(&role["rules"]).enumerate() {
            let origin = format!("{role_kind} {role_name} rule {i} (via {binding})");
            assert!(
                rule.get("nonResourceURLs").is_none(),
                "{origin}: nonResourceURLs are never needed"
            );
            let groups = strings(&rule["apiGroups"]);
            let resources = strings(&rule["resources"]);
            let verbs = strings(&rule["verbs"]);
            for s in groups.iter().chain(&resources).chain(&verbs) {
                assert!(
                    !s.contains('*'),
                    "{origin}: wildcard {s:?} is not least privilege"
                );
            }
            let names = rule
                .get("resourceNames")
                .map(|n| strings(n).into_iter().collect::<BTreeSet<_>>());
            for g in &groups {
                for r in &resources {
                    for v in &verbs {
                        out.push(Grant {
                            reach: reach.clone(),
                            origin: origin.clone(),
                            group: g.clone(),
                            resource: r.clone(),
                            verb: v.clone(),
                            names: names.clone(),
                        });
                    }
                }
            }
        }
    }
    out
}

fn same_target(g: &Grant, c: &Call) -> bool {
    g.group == c.group && g.resource == c.resource && g.verb == c.verb
}

/// Does `g` allow `c` for a broker running in `own`?
fn allows(g: &Grant, c: &Call, own: &str) -> bool {
    let reach_ok = match (&g.reach, c.scope) {
        (Reach::Cluster, _) => true,
        (Reach::Namespace(ns), Scope::Own) => ns == own,
        (Reach::Namespace(_), _) => false,
    };
    let name_ok = match (&g.names, &c.resource_name) {
        (None, _) => true,
        (Some(names), Some(n)) => names.contains(n),
        (Some(_), None) => false,
    };
    reach_ok && name_ok && same_target(g, c)
}

/// Is `g` needed by some call, and no wider than the calls need? A grant
/// pinned to several names needs a call for each name.
fn needed(g: &Grant, calls: &[Call], own: &str) -> bool {
    let fits = |c: &Call| {
        same_target(g, c)
            && match (&g.reach, c.scope) {
                (Reach::Cluster, Scope::Any | Scope::Cluster) => true,
                (Reach::Namespace(ns), Scope::Own) => ns == own,
                _ => false,
            }
    };
    match &g.names {
        // Any name: only a call that needs any name.
        None => calls.iter().any(|c| fits(c) && c.resource_name.is_none()),
        Some(names) => names.iter().all(|x| {
            calls
                .iter()
                .any(|c| fits(c) && c.resource_name.as_deref() == Some(x.as_str()))
        }),
    }
}

fn rbac_violations(docs: &[Value], calls: &[Call], own: &str, sa: &str) -> Vec<String> {
    let grants = grants(docs, own, sa);
    let mut problems = Vec::new();
    for c in calls {
        if !grants.iter().any(|g| allows(g, c, own)) {
            problems.push(format!("not granted: {c:?}"));
        }
    }
    for g in &grants {
        if !needed(g, calls, own) {
            problems.push(format!(
                "granted but not needed by any listed call: {} {}/{} {:?} names {:?} from {}",
                g.verb, g.group, g.resource, g.reach, g.names, g.origin
            ));
        }
    }
    problems
}

#[test]
fn call_list_is_well_formed_and_names_the_brokers_objects() {
    let calls = calls();
    let known_verbs = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let d = defaults();
    let lease = ecr_lease_name();
    let own_names = [
        attache_broker::ecr::state::STATE_SECRET,
        attache_api::names::CA_SECRET,
        attache_api::names::SERVING_CA_SECRET,
        attache_api::names::CA_BUNDLE_CONFIGMAP,
        attache_api::names::CRL_CONFIGMAP,
        d.webhook_config.as_str(),
        lease.as_str(),
    ];
    for c in &calls {
        assert!(
            known_verbs.contains(&c.verb.as_str()),
            "unknown verb: {c:?}"
        );
        assert!(!c.why.trim().is_empty() && !c.component.is_empty(), "{c:?}");
        assert!(
            !c.resource.is_empty() && c.resource == c.resource.to_lowercase(),
            "resources are lowercase plurals: {c:?}"
        );
        if let Some(n) = &c.resource_name {
            assert!(
                !matches!(c.verb.as_str(), "create" | "list" | "watch"),
                "RBAC cannot limit {} by name: {c:?}",
                c.verb
            );
            assert!(own_names.contains(&n.as_str()), "unknown object {n}: {c:?}");
        }
    }
    for c in &calls {
        assert!(
            [BROKER_SA, CONTROLLER_SA].contains(&c.service_account.as_str()),
            "every call names its identity: {c:?}"
        );
    }
    // The calls the code makes today (broker/src): keep the list in step.
    let has = |sa: &str, verb: &str, resource: &str, scope: Scope| {
        calls.iter().any(|c| {
            c.service_account == sa && c.verb == verb && c.resource == resource && c.scope == scope
        })
    };
    assert!(has(BROKER_SA, "create", "tokenreviews", Scope::Cluster));
    assert!(has(BROKER_SA, "get", "serviceaccounts", Scope::Any));
    assert!(has(BROKER_SA, "get", "pods", Scope::Any));
    assert!(has(BROKER_SA, "get", "namespaces", Scope::Cluster));
    assert!(has(BROKER_SA, "create", "secrets", Scope::Own));
    assert!(has(BROKER_SA, "update", "configmaps", Scope::Own));
    assert!(has(
        BROKER_SA,
        "update",
        "mutatingwebhookconfigurations",
        Scope::Cluster
    ));
    assert!(has(CONTROLLER_SA, "update", "leases", Scope::Own));
    assert!(has(CONTROLLER_SA, "patch", "serviceaccounts", Scope::Any));
    assert!(has(CONTROLLER_SA, "watch", "secrets", Scope::Any));
    assert!(has(CONTROLLER_SA, "get", "secrets", Scope::Own));
    // The broker (webhook, certificate API, CA) touches Secrets only in its
    // own namespace, and no Lease: the ECR controller is another identity.
    for c in calls_of(&calls, BROKER_SA) {
        assert!(
            !(c.resource == "secrets" && c.scope != Scope::Own),
            "the broker has no Secret access outside its namespace: {c:?}"
        );
        assert_ne!(c.resource, "leases", "{c:?}");
    }
}

#[test]
fn rbac_grants_every_listed_call_and_nothing_more() {
    let docs = render("deploy/kubernetes");
    let calls = calls();
    let d = defaults();
    let c = controller_defaults();
    for (deployment, identity, namespace) in [
        ("attache-broker", BROKER_SA, &d.namespace),
        ("attache-ecr-controller", CONTROLLER_SA, &c.namespace),
    ] {
        let deployment = find(&docs, "Deployment", deployment);
        let own = deployment["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(own, namespace, "installed in the default namespace");
        let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(
            sa, identity,
            "each Deployment runs as its own ServiceAccount"
        );
        find(&docs, "ServiceAccount", sa);
        let problems = rbac_violations(&docs, &calls_of(&calls, sa), own, sa);
        assert!(
            problems.is_empty(),
            "RBAC problems of {sa}:\n{}",
            problems.join("\n")
        );
    }
    // Nothing is bound to any other ServiceAccount of attache's namespace.
    for b in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        for s in items(&b["subjects"]) {
            if s["namespace"] == d.namespace.as_str() {
                assert!(
                    s["name"] == BROKER_SA || s["name"] == CONTROLLER_SA,
                    "{} binds {}",
                    b["metadata"]["name"],
                    s["name"]
                );
            }
        }
    }
}

#[test]
fn the_broker_is_refused_the_controllers_calls_and_the_other_way_round() {
    let docs = render("deploy/kubernetes");
    let calls = calls();
    let own = "attache-system";
    let broker_with_controller_calls =
        rbac_violations(&docs, &calls_of(&calls, CONTROLLER_SA), own, BROKER_SA);
    for needle in ["leases", "secrets"] {
        assert!(
            broker_with_controller_calls
                .iter()
                .any(|m| m.starts_with("not granted") && m.contains(needle)),
            "the broker may not {needle}: {broker_with_controller_calls:?}"
        );
    }
    let controller_with_broker_calls =
        rbac_violations(&docs, &calls_of(&calls, BROKER_SA), own, CONTROLLER_SA);
    for needle in [
        "tokenreviews",
        "mutatingwebhookconfigurations",
        "configmaps",
    ] {
        assert!(
            controller_with_broker_calls
                .iter()
                .any(|m| m.starts_with("not granted") && m.contains(needle)),
            "the controller may not use {needle}: {controller_with_broker_calls:?}"
        );
    }
}

#[test]
fn the_check_catches_missing_and_excess_grants() {
    let mut docs = render("deploy/kubernetes");
    let calls = calls_of(&calls(), BROKER_SA);
    let own = "attache-system";
    let sa = "attache-broker";
    assert!(rbac_violations(&docs, &calls, own, sa).is_empty());

    // A call nobody granted.
    let mut more = calls.clone();
    more.push(Call {
        service_account: BROKER_SA.into(),
        component: "test".into(),
        verb: "delete".into(),
        group: "".into(),
        resource: "pods".into(),
        scope: Scope::Any,
        resource_name: None,
        why: "test".into(),
    });
    let p = rbac_violations(&docs, &more, own, sa);
    assert!(
        p.iter()
            .any(|m| m.starts_with("not granted") && m.contains("pods")),
        "{p:?}"
    );

    // An own-namespace call must not be satisfied by a Role elsewhere.
    for d in docs
        .iter_mut()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "Role")
    {
        d["metadata"]["namespace"] = "default".into();
    }
    let p = rbac_violations(&docs, &calls, own, sa);
    assert!(p.iter().any(|m| m.contains("configmaps")), "{p:?}");
    let mut docs = render("deploy/kubernetes");

    // A wider-than-needed grant: configmaps update on any name.
    let cr = docs
        .iter_mut()
        .find(|d| d["kind"] == "Role")
        .expect("a Role");
    cr["rules"].as_array_mut().expect("rules").push(
        serde_json::json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["update"]}),
    );
    let p = rbac_violations(&docs, &calls, own, sa);
    assert!(
        p.iter().any(|m| m.starts_with("granted but not needed")),
        "{p:?}"
    );
}

#[test]
#[should_panic(expected = "wildcard")]
fn wildcards_are_refused() {
    let mut docs = render("deploy/kubernetes");
    let cr = docs
        .iter_mut()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    cr["rules"][0]["verbs"] = serde_json::json!(["*"]);
    grants(&docs, "attache-system", "attache-broker");
}

#[test]
fn manifests_match_the_brokers_defaults() {
    let docs = render("deploy/kubernetes");
    let d = defaults();
    // Service: 443 -> the HTTPS listener; the default broker URL is this Service.
    let svc = find(&docs, "Service", &d.service_name);
    assert_eq!(svc["metadata"]["namespace"], d.namespace.as_str());
    let https = items(&svc["spec"]["ports"])
        .find(|p| p["port"] == 443)
        .expect("the Service exposes 443");
    let deployment = find(&docs, "Deployment", "attache-broker");
    let pod = &deployment["spec"]["template"]["spec"];
    let broker = items(&pod["containers"])
        .find(|c| c["name"] == "broker")
        .expect("a broker container");
    let port_of = |name: &Value| {
        items(&broker["ports"])
            .find(|p| &p["name"] == name || &p["containerPort"] == name)
            .and_then(|p| p["containerPort"].as_u64())
    };
    assert_eq!(
        port_of(&https["targetPort"]),
        Some(u64::from(d.listen.port()))
    );
    assert_eq!(
        port_of(&broker["readinessProbe"]["httpGet"]["port"]),
        Some(u64::from(d.admin_listen.port())),
        "probes use the admin port"
    );
    assert_eq!(broker["command"], serde_json::json!(["/attache-broker"]));
    assert_eq!(broker["args"], serde_json::json!(["run"]));
    assert_namespace_from_downward_api(broker);
    let sc = &broker["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));

    // The webhook the broker patches, calling the Service's /mutate.
    let mwc = find(&docs, "MutatingWebhookConfiguration", &d.webhook_config);
    let hooks = mwc["webhooks"].as_array().expect("webhooks");
    assert_eq!(hooks.len(), 1);
    let w = &hooks[0];
    let svc_ref = &w["clientConfig"]["service"];
    assert_eq!(svc_ref["name"], d.service_name.as_str());
    assert_eq!(svc_ref["namespace"], d.namespace.as_str());
    assert_eq!(svc_ref["path"], "/mutate");
    // The webhook port of the Service, which targets the broker's --webhook-listen port.
    assert_eq!(svc_ref["port"], 9443);
    let svc = find(&docs, "Service", &d.service_name);
    let webhook_port = items(&svc["spec"]["ports"])
        .find(|p| p["port"] == 9443)
        .expect("a Service port 9443");
    assert_eq!(webhook_port["targetPort"], "webhook");
    assert_eq!(
        w["namespaceSelector"]["matchLabels"]["attache.dev/injection"], "enabled",
        "only opted-in namespaces are sent to the webhook"
    );
    assert!(
        w["clientConfig"].get("caBundle").is_none(),
        "the broker sets caBundle"
    );
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
    let excluded = items(&w["namespaceSelector"]["matchExpressions"])
        .find(|e| e["key"] == "kubernetes.io/metadata.name" && e["operator"] == "NotIn")
        .map(|e| strings(&e["values"]))
        .unwrap_or_default();
    for ns in d.excluded_namespaces.iter().chain([&d.namespace]) {
        assert!(
            excluded.contains(ns),
            "{ns} is excluded by the namespaceSelector"
        );
    }
    let skip = w["objectSelector"]["matchExpressions"][0].clone();
    assert_eq!(skip["key"], attache_api::names::ANN_INJECT);
    assert_eq!(skip["operator"], "NotIn");
}

#[test]
fn examples_render_and_opt_in_with_the_documented_annotations() {
    let s3 = render("deploy/kubernetes/examples/s3-list");
    let sa = first_of(&s3, "ServiceAccount", "the S3 example has a ServiceAccount");
    let role = annotation(
        sa,
        attache_api::names::ANN_ROLE_ARN,
        "annotated with attache.dev/role-arn",
    );
    let ns = first_of(&s3, "Namespace", "a Namespace");
    let allowed: Vec<String> = serde_json::from_str(annotation(
        ns,
        attache_api::names::ANN_ALLOWED_ROLES,
        "namespace lists its allowed roles",
    ))
    .expect("allowed-roles is a JSON list");
    assert!(
        allowed.iter().any(|r| r == role),
        "{allowed:?} allows {role}"
    );

    let ecr = render("deploy/kubernetes/examples/ecr-pull");
    let sa = first_of(
        &ecr,
        "ServiceAccount",
        "the ECR example has a ServiceAccount",
    );
    let registries = annotation(
        sa,
        attache_api::names::ANN_ECR_REGISTRIES,
        "annotated with attache.dev/ecr-registries",
    );
    let deployment = first_of(&ecr, "Deployment", "a Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    let image = pod["containers"][0]["image"].as_str().unwrap_or_default();
    assert!(
        registries.split(',').any(|r| image.starts_with(r.trim())),
        "{image} comes from one of {registries}"
    );
}

#[test]
fn cloudformation_trust_policies_match_aws_policy() {
    use attache_broker::aws_policy::{ACTIONS, SAN_URI_KEY, SERVICE_PRINCIPAL, SOURCE_ARN_KEY};
    let path = repo_root().join("deploy/aws/attache.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    // Three roles (example, ECR pull, CRL push), each pinned like
    // `aws-policy` pins them.
    let count = |s: &str| text.matches(s).count();
    assert_eq!(count(&format!("Service: {SERVICE_PRINCIPAL}")), 3);
    for action in ACTIONS {
        assert_eq!(count(&format!("- {action}\n")), 3, "{action}");
    }
    assert_eq!(count("ArnEquals:"), 3);
    assert_eq!(
        count(&format!(
            "{SOURCE_ARN_KEY}: !GetAtt TrustAnchor.TrustAnchorArn"
        )),
        3
    );
    assert_eq!(
        count(&format!(
            "{SAN_URI_KEY}: !Sub spiffe://${{TrustDomain}}/ns/"
        )),
        3
    );
    // The CRL push role: the controller's identity and exactly the calls
    // `aws-policy --crl-sync` grants.
    assert!(text.contains(&format!(
        "{SAN_URI_KEY}: !Sub spiffe://${{TrustDomain}}/ns/${{AttacheNamespace}}/sa/{CONTROLLER_SA}"
    )));
    for action in attache_broker::aws_policy::CRL_SYNC_ACTIONS {
        assert_eq!(count(&format!("- {action}\n")), 1, "{action}");
    }
    assert!(text.contains("SourceType: CERTIFICATE_BUNDLE"));
}

#[test]
fn the_ecr_controller_runs_as_its_own_deployment_and_identity() {
    let docs = render("deploy/kubernetes");
    let c = controller_defaults();
    let deployment = find(&docs, "Deployment", "attache-ecr-controller");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], CONTROLLER_SA);
    let container = &pod["containers"][0];
    assert_eq!(container["command"], serde_json::json!(["/attache-broker"]));
    assert_eq!(container["args"], serde_json::json!(["ecr-controller"]));
    let port = items(&container["ports"])
        .find(|p| p["name"] == container["readinessProbe"]["httpGet"]["port"])
        .and_then(|p| p["containerPort"].as_u64());
    assert_eq!(
        port,
        Some(u64::from(c.admin_listen.port())),
        "probes use the admin port"
    );
    assert_namespace_from_downward_api(container);
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // The broker no longer runs the controller: no Lease identity there.
    let broker = find(&docs, "Deployment", "attache-broker");
    let broker_env = broker["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!broker_env.iter().any(|e| e["name"] == "ATTACHE_POD_NAME"));

    // The policies confining both identities' writes, each bound with Deny.
    for name in [
        "attache-ecr-controller-secrets",
        "attache-ecr-controller-serviceaccounts",
        "attache-broker-writes",
    ] {
        let policy = find(&docs, "ValidatingAdmissionPolicy", name);
        assert_eq!(policy["spec"]["failurePolicy"], "Fail", "{name}");
        let binding = find(&docs, "ValidatingAdmissionPolicyBinding", name);
        assert_eq!(binding["spec"]["policyName"], name);
        assert_eq!(
            binding["spec"]["validationActions"],
            serde_json::json!(["Deny"])
        );
    }
}
