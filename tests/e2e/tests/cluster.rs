//! attache against the real kube-apiserver: the manifests are accepted, the
//! broker runs as its own ServiceAccount (real RBAC authorizes each call), pods
//! are mutated by the real admission chain, and a sidecar run as the pod would
//! run it gets its certificate through real TokenReview of a pod-bound token
//! and serves the role to botocore, the JavaScript, Go, Java and Rust SDKs.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use attache_e2e::{ApiServer, TokenSpec};
use attache_emulator::{Emulator, EmulatorConfig};
use common::*;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

fn pod(name: &str, sa: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"serviceAccountName": sa, "containers": [{
            "name": "app", "image": "public.ecr.aws/aws-cli/aws-cli",
            "env": [{"name": "AWS_REGION", "value": "eu-west-1"}],
        }]}
    }))
    .unwrap()
}

/// The AdmissionReview the API server sends for creating pod `web` of
/// ServiceAccount `sa` in `ns`.
fn pod_review(ns: &str, sa: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "0", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns, "operation": "CREATE", "name": "web",
            "userInfo": {"username": "admin"},
            "object": serde_json::to_value(pod("web", sa)).unwrap(),
        }
    })
}

fn env_of(c: &Value) -> BTreeMap<String, String> {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

async fn stored(client: &kube::Client, ns: &str, name: &str) -> Value {
    let pod = Api::<Pod>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    serde_json::to_value(pod).unwrap()
}

fn injected(pod: &Value) -> bool {
    pod["spec"]["initContainers"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == "attache-sidecar"))
}

/// A namespace allowing ROLE with a ServiceAccount `app` annotated with it.
async fn team(server: &ApiServer) -> (kube::Client, String) {
    broker().await;
    let admin = server.admin().await;
    let ns = team_namespace(server, &[ROLE]).await;
    service_account(&admin, &ns, "app", json!({"attache.dev/role-arn": ROLE})).await;
    (admin, ns)
}

/// Where most tests start: the deployed API server, the shared broker, an
/// admin client and a [`team`] namespace.
async fn setup() -> (
    &'static ApiServer,
    &'static SharedBroker,
    kube::Client,
    String,
) {
    let server = deployed().await;
    let (admin, ns) = team(server).await;
    (server, broker().await, admin, ns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_manifests_and_examples_are_accepted_by_the_real_api_server() {
    // A server of its own: the overlay re-applies the base with other settings.
    let server = ApiServer::start(Default::default()).await.unwrap();
    apply_deploy(&server);
    for kind in [
        "namespace/attache-system",
        "serviceaccount/attache-broker",
        "deployment/attache-broker",
        "service/attache-broker",
        "networkpolicy",
        "poddisruptionbudget/attache-broker",
        "role",
        "rolebinding",
    ] {
        run_ok(server.kubectl().args(["-n", BROKER_NS, "get", kind]));
    }
    run_ok(server.kubectl().args([
        "get",
        "clusterrole,clusterrolebinding,mutatingwebhookconfiguration",
        "-l",
        "app.kubernetes.io/part-of=attache",
    ]));
    // The examples for real; the overlay (which re-applies the base with its
    // settings) as a server-side dry run, so the running test setup stays.
    let examples = root().join("deploy/kubernetes/examples");
    let mut applied = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let dir = entry.unwrap().path();
        if dir.join("kustomization.yaml").exists() {
            apply_kustomization(&server, &dir, &[]);
            applied += 1;
        }
    }
    assert!(applied >= 2, "the s3-list and ecr-pull examples");
    let overlay = root().join("deploy/overlays/my-cluster");
    apply_kustomization(&server, &overlay, &["--field-manager=e2e"]);
    let policy = run_ok(server.kubectl().args([
        "get",
        "mutatingwebhookconfiguration",
        "attache-broker",
        "-o",
        "jsonpath={.webhooks[0].failurePolicy}",
    ]));
    assert_eq!(policy, "Ignore", "the overlay's patch applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_mutated_by_the_real_admission_chain() {
    let server = deployed().await;
    let (admin, ns) = team(server).await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    pods.create(&PostParams::default(), &pod("web", "app"))
        .await
        .unwrap();
    let web = stored(&admin, &ns, "web").await;
    let init = web["spec"]["initContainers"].as_array().expect("injected");
    let sidecar = &init[0];
    assert_eq!(sidecar["name"], "attache-sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert!(sidecar["startupProbe"]["exec"].is_object(), "{sidecar:#}");
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        sidecar["securityContext"]["runAsUser"], 19911,
        "a UID app images do not use"
    );
    assert_eq!(sidecar["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        sidecar["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    let volumes = web["spec"]["volumes"].as_array().unwrap();
    let projected = volumes
        .iter()
        .find_map(|v| {
            v["projected"]["sources"]
                .as_array()?
                .iter()
                .find_map(|s| s.get("serviceAccountToken"))
                .filter(|t| t["audience"] == "attache-broker")
        })
        .unwrap_or_else(|| panic!("a projected token for attache-broker: {volumes:#?}"));
    assert!(projected["expirationSeconds"].as_i64().unwrap() <= 3600);
    let token_volume = volumes
        .iter()
        .find(|v| v["emptyDir"]["medium"] == "Memory")
        .expect("in-memory token volume");
    let app = &web["spec"]["containers"][0];
    let app_env = env_of(app);
    assert_eq!(
        app_env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        "http://127.0.0.1:9911/v1/credentials"
    );
    assert_eq!(
        app_env["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"],
        "/var/run/secrets/attache.dev/token"
    );
    assert_eq!(
        app_env["AWS_REGION"], "eu-west-1",
        "the pod's own value is kept"
    );
    assert_eq!(app_env["AWS_DEFAULT_REGION"], "us-east-1");
    let app_mounts = app["volumeMounts"].as_array().unwrap();
    assert!(
        app_mounts
            .iter()
            .any(|m| m["name"] == token_volume["name"] && m["readOnly"] == true),
        "the app mounts the token volume read-only: {app_mounts:#?}"
    );
    let broker_token_mounted_in_app = app_mounts.iter().any(|m| {
        volumes.iter().any(|v| {
            v["name"] == m["name"] && v["projected"].to_string().contains("attache-broker")
        })
    });
    assert!(
        !broker_token_mounted_in_app,
        "only the sidecar mounts the broker token"
    );

    // An update leaves the pod as it is (the webhook only acts on CREATE).
    pods.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "web"}}})),
    )
    .await
    .unwrap();
    let after = stored(&admin, &ns, "web").await;
    assert_eq!(after["spec"], web["spec"]);

    // A pod that already carries the injection (re-created from the stored
    // spec) is not injected twice.
    let mut again = json!({"metadata": {"name": "web-again"}, "spec": web["spec"].clone()});
    again["spec"].as_object_mut().unwrap().remove("nodeName");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(again).unwrap(),
    )
    .await
    .unwrap();
    let twice = stored(&admin, &ns, "web-again").await;
    assert_eq!(
        twice["spec"]["initContainers"],
        web["spec"]["initContainers"]
    );
    assert_eq!(twice["spec"]["volumes"], web["spec"]["volumes"]);
    assert_eq!(twice["spec"]["containers"], web["spec"]["containers"]);

    // Opt-out by annotation (the broker decides) and by label (the
    // webhook's objectSelector: the API server does not even call it).
    let opt_out = || {
        Some(BTreeMap::from([(
            "attache.dev/inject".into(),
            "false".into(),
        )]))
    };
    let mut by_annotation = pod("optout", "app");
    by_annotation.metadata.annotations = opt_out();
    let mut by_label = pod("optout-label", "app");
    by_label.metadata.labels = opt_out();
    for p in [by_annotation, by_label] {
        let name = p.metadata.name.clone().unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();
        assert!(!injected(&stored(&admin, &ns, &name).await), "{name}");
    }

    // A namespace not labelled attache.dev/injection=enabled is never sent
    // to the webhook: its pods start untouched even with a role.
    let unlabelled = server
        .namespace(
            "unlabelled",
            json!({"attache.dev/allowed-roles": serde_json::to_string(&[ROLE]).unwrap()}),
            json!({}),
        )
        .await;
    service_account(
        &admin,
        &unlabelled,
        "app",
        json!({"attache.dev/role-arn": ROLE}),
    )
    .await;
    Api::<Pod>::namespaced(admin.clone(), &unlabelled)
        .create(&PostParams::default(), &pod("web", "app"))
        .await
        .unwrap();
    assert!(!injected(&stored(&admin, &unlabelled, "web").await));

    // A ServiceAccount without a role: untouched.
    service_account(&admin, &ns, "plain", json!({})).await;
    pods.create(&PostParams::default(), &pod("plain", "plain"))
        .await
        .unwrap();
    assert!(!injected(&stored(&admin, &ns, "plain").await));

    // Denials reach the client with the broker's message.
    service_account(
        &admin,
        &ns,
        "greedy",
        json!({"attache.dev/role-arn": OTHER_ROLE}),
    )
    .await;
    let err = pods
        .create(&PostParams::default(), &pod("greedy", "greedy"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("attache.dev/allowed-roles") && err.contains(OTHER_ROLE) && err.contains(&ns),
        "{err}"
    );
    let mut p = pod("host", "app");
    p.spec.as_mut().unwrap().host_network = Some(true);
    let err = pods
        .create(&PostParams::default(), &p)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("hostNetwork"), "{err}");
    assert_broker_calls_allowed_and_listed(server, BROKER_USER, BROKER_NS);
}

/// The sidecar exactly as injected, run on the host: only file paths, the
/// listen address, the broker address and the AWS endpoint differ from the pod
/// (no kubelet, no cluster DNS, no AWS here).
fn sidecar_cli(
    sidecar: &Value,
    dir: &Path,
    listen: &str,
    broker: &str,
    endpoint: &str,
) -> attache_sidecar::cli::Cli {
    use clap::Parser as _;
    let mut args = vec!["attache-sidecar".to_string(), "serve".to_string()];
    for (k, mut v) in env_of(sidecar) {
        match k.as_str() {
            "ATTACHE_BROKER_URL" => v = broker.to_string(),
            "ATTACHE_SERVICE_ACCOUNT_TOKEN_FILE" => v = dir.join("sa-token").display().to_string(),
            "ATTACHE_TOKEN_FILE" => v = dir.join("token").display().to_string(),
            "ATTACHE_LISTEN" => v = listen.to_string(),
            "ATTACHE_LOG_FORMAT" => v = "text".into(),
            // Only for the kubelet to expand into ATTACHE_ROLE_SESSION_NAME.
            "ATTACHE_POD_NAME" => continue,
            // A switch: clap reads `ATTACHE_IMDS=true` from the environment,
            // but takes no value after `--imds`.
            "ATTACHE_IMDS" => {
                assert_eq!(v, "true");
                args.push("--imds".into());
                continue;
            }
            _ => {}
        }
        let flag = k
            .trim_start_matches("ATTACHE_")
            .to_ascii_lowercase()
            .replace('_', "-");
        args.push(format!("--{flag}={v}"));
    }
    args.push(format!("--endpoint={endpoint}"));
    attache_sidecar::cli::Cli::try_parse_from(&args).unwrap()
}

/// Runs a stored pod's sidecar in process as the kubelet would: `token` in
/// its projected volume under `dir`, listening on a free port (returned).
async fn run_sidecar(
    sidecar: &Value,
    dir: &Path,
    token: &str,
    broker: &SharedBroker,
    emu: &Emulator,
) -> (String, attache_sidecar::app::InProcess) {
    std::fs::write(dir.join("sa-token"), token).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let cli = sidecar_cli(sidecar, dir, &listen, &broker.url(), &emu.url());
    let running = attache_sidecar::app::InProcess::spawn(cli);
    assert!(
        attache_sidecar::app::wait_ready(&listen, Duration::from_secs(30)).await,
        "the sidecar became ready"
    );
    (listen, running)
}

/// A client process with only the container-credentials environment an
/// injected app container has, pointed at the emulator's STS.
fn sdk(mut cmd: Command, listen: &str, token_file: &Path, sts: &str) -> Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://{listen}/v1/credentials"),
        )
        .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", token_file)
        .env("STS_ENDPOINT", sts);
    cmd
}

const BOTO_STS: &str = "import json, os, botocore.session\nc = botocore.session.get_session().create_client('sts', region_name=os.environ['AWS_REGION'], endpoint_url=os.environ['STS_ENDPOINT'])\nprint(json.dumps(c.get_caller_identity()))";

/// Creates `pod` in `ns` through the real API server (and so the webhook);
/// returns its uid and the pod as stored.
async fn create_pod(admin: &kube::Client, ns: &str, pod: &Pod) -> (String, Value) {
    let created = Api::<Pod>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), pod)
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    (uid, serde_json::to_value(&created).unwrap())
}

/// What the kubelet makes of a container's env for pod `name`: the downward
/// API's `metadata.name`, then `$(VAR)` references to earlier variables.
fn kubelet_env(container: &Value, name: &str) -> Value {
    let mut out = container.clone();
    let mut seen: Vec<(String, String)> = Vec::new();
    for e in out["env"].as_array_mut().unwrap() {
        let var = e["name"].as_str().unwrap().to_string();
        let value = if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            name.to_string()
        } else {
            let mut v = e["value"].as_str().unwrap_or("").to_string();
            for (k, val) in &seen {
                v = v.replace(&format!("$({k})"), val);
            }
            v
        };
        *e = json!({"name": var, "value": value});
        seen.push((var, value));
    }
    out
}

/// `attache.dev/session-name: pod` on a ServiceAccount: the API server stores
/// the pod with its name from the downward API, and the sidecar run from that
/// spec (its env expanded as the kubelet would) names its sessions after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_named_after_the_pod_when_the_service_account_asks() {
    let (server, broker, admin, ns) = setup().await;
    let annotations = json!({"attache.dev/role-arn": ROLE, "attache.dev/session-name": "pod"});
    service_account(&admin, &ns, "named", annotations).await;
    let (uid, stored) = create_pod(&admin, &ns, &pod("batch-7", "named")).await;
    let sidecar = &stored["spec"]["initContainers"][0];
    let env = sidecar["env"].as_array().unwrap();
    let named = |n: &str| env.iter().find(|e| e["name"] == n).cloned();
    assert_eq!(
        named("ATTACHE_POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        named("ATTACHE_ROLE_SESSION_NAME").unwrap()["value"],
        "$(ATTACHE_POD_NAME)"
    );

    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let spiffe = format!("spiffe://cluster.local/ns/{ns}/sa/named");
    emu.trust_workload(ANCHOR, PROFILE, ROLE, &broker.ca_pem, &spiffe);
    emu.add_profile(attache_emulator::Profile {
        arn: PROFILE.into(),
        role_arns: vec![ROLE.into()],
        duration_seconds: None,
        accept_role_session_name: true,
        enabled: true,
    });
    let dir = tempfile::tempdir().unwrap();
    let token = workload_token(server, &ns, "named", Some(("batch-7", &uid))).await;
    let expanded = kubelet_env(sidecar, "batch-7");
    let (_listen, running) = run_sidecar(&expanded, dir.path(), &token, broker, &emu).await;
    let session = emu.sessions()[0].clone();
    assert_eq!(session.san_uri.as_deref(), Some(spiffe.as_str()));
    assert_eq!(session.role_session_name, "batch-7");
    running.stop().await;
}

/// `attache.dev/imds: "true"` on a pod: its stored spec points the app's
/// IMDS client at the sidecar, and a client that reads only IMDS (botocore
/// with no container-credentials variables, as an SDK older than the
/// container provider) gets the role through the sidecar run from that spec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_annotated_for_imds_serves_clients_that_speak_only_imds() {
    let (server, broker, admin, ns) = setup().await;
    let mut legacy = pod("legacy", "app");
    legacy.metadata.annotations = Some([("attache.dev/imds".into(), "true".into())].into());
    let (uid, stored) = create_pod(&admin, &ns, &legacy).await;
    let sidecar = &stored["spec"]["initContainers"][0];
    let app = env_of(&stored["spec"]["containers"][0]);
    assert_eq!(env_of(sidecar)["ATTACHE_IMDS"], "true");
    assert_eq!(
        app["AWS_EC2_METADATA_SERVICE_ENDPOINT"],
        "http://127.0.0.1:9911"
    );
    // Newer SDKs still find the container endpoint first.
    assert!(
        app.contains_key("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        "{app:?}"
    );

    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let spiffe = format!("spiffe://cluster.local/ns/{ns}/sa/app");
    emu.trust_workload(ANCHOR, PROFILE, ROLE, &broker.ca_pem, &spiffe);
    let dir = tempfile::tempdir().unwrap();
    let token = pod_token(server, &ns, Some(("legacy", &uid))).await;
    let (listen, running) = run_sidecar(sidecar, dir.path(), &token, broker, &emu).await;
    let mut boto = Command::new(attache_testkit::require_python());
    boto.args(["-c", BOTO_STS]);
    let mut boto = sdk(boto, &listen, &dir.path().join("token"), &emu.url());
    // Only IMDS, at the stored spec's endpoint moved to this test's port.
    boto.env_remove("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        .env_remove("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            app["AWS_EC2_METADATA_SERVICE_ENDPOINT"].replace("127.0.0.1:9911", &listen),
        );
    let out = tokio::task::block_in_place(|| run_ok(&mut boto));
    let reply: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("botocore through IMDS: {e}: {out}"));
    assert!(
        reply["Arn"]
            .as_str()
            .is_some_and(|a| a.starts_with("arn:aws:sts::123456789012:assumed-role/app-reader/")),
        "{reply}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_with_a_pod_bound_token_serves_the_role_to_every_sdk() {
    let (server, broker, admin, ns) = setup().await;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let created = pods
        .create(&PostParams::default(), &pod("web", "app"))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let web = serde_json::to_value(&created).unwrap();
    let sidecar = &web["spec"]["initContainers"][0];
    let spiffe = format!("spiffe://cluster.local/ns/{ns}/sa/app");

    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    // AWS trusts the workload CA only; the broker's TLS certificate comes
    // from another CA, so its key is no AWS credential.
    assert_ne!(broker.ca_pem, broker.serving_ca_pem);
    assert_eq!(
        env_of(sidecar)["ATTACHE_CA_BUNDLE_PEM"],
        broker.serving_ca_pem,
        "the sidecar trusts the serving CA for TLS to the broker"
    );
    emu.trust_workload(ANCHOR, PROFILE, ROLE, &broker.ca_pem, &spiffe);
    let dir = tempfile::tempdir().unwrap();
    // What the kubelet writes into the projected volume: a token bound to the pod.
    let token = pod_token(server, &ns, Some(("web", &uid))).await;
    let unused = pod_token(server, &ns, Some(("web", &uid))).await;
    let (listen, running) = run_sidecar(sidecar, dir.path(), &token, broker, &emu).await;
    let session = &emu.sessions()[0];
    assert_eq!(session.san_uri.as_deref(), Some(spiffe.as_str()));
    assert_eq!(session.role_arn, ROLE);

    let token_file = dir.path().join("token");
    let clients: Vec<(&str, Command)> = vec![
        ("botocore", {
            let mut c = Command::new(attache_testkit::require_python());
            c.args(["-c", BOTO_STS]);
            c
        }),
        ("JavaScript v3", {
            let js = attache_testkit::require_node_clients();
            let mut c = Command::new("node");
            c.current_dir(&js).args(["sts-identity.mjs", "fromHttp"]);
            c
        }),
        ("Go v2", attache_testkit::tool_command("go-sdk-probe")),
        ("Java v2", attache_testkit::tool_command("java-sdk-probe")),
        (
            "Rust aws-config",
            Command::new(env!("CARGO_BIN_EXE_rust-sdk-probe")),
        ),
    ];
    for (name, cmd) in clients {
        let mut cmd = sdk(cmd, &listen, &token_file, &emu.url());
        let out = tokio::task::block_in_place(|| run_ok(&mut cmd));
        let reply: Value = serde_json::from_str(out.lines().last().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{name}: {e}: {out}"));
        assert!(
            reply["Arn"].as_str().is_some_and(
                |a| a.starts_with("arn:aws:sts::123456789012:assumed-role/app-reader/")
            ),
            "{name}: {reply}"
        );
    }
    running.stop().await;

    // The pod goes: the API server refuses its tokens, and the broker issues
    // nothing more for it.
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.clone(),
            audiences: Some(vec!["attache-broker".into()]),
        },
        ..TokenReview::default()
    };
    let answer = eventually(
        Duration::from_secs(30),
        "TokenReview refuses the token",
        || {
            let admin = admin.clone();
            let review = review.clone();
            async move {
                let a = Api::<TokenReview>::all(admin)
                    .create(&PostParams::default(), &review)
                    .await
                    .unwrap();
                let status = a.status.unwrap_or_default();
                (status.authenticated != Some(true)).then_some(status)
            }
        },
    )
    .await;
    let why = answer.error.unwrap_or_default();
    assert!(
        why.contains("invalidated") || why.contains("not found"),
        "{why}"
    );
    let csr = fresh_csr();
    // The sidecar's own token (its decision cached by the broker) and one
    // never used before.
    for t in [&token, &unused] {
        let (status, body) = request_certificate(&broker.http(), broker.addr, t, &csr).await;
        assert_eq!(status, 401, "{body}");
    }
    assert_broker_calls_allowed_and_listed(server, BROKER_USER, BROKER_NS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_api_authenticates_authorizes_and_checks_the_csr() {
    let (server, broker, admin, ns) = setup().await;
    let csr = fresh_csr;
    let post = |token: Option<String>, csr: String| {
        let http = broker.http();
        let url = format!("{}/v1/certificates", broker.url());
        async move {
            let mut req = http.post(url).json(&json!({"csr": csr}));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let good = app_token(server, &ns).await;
    let (status, body) = post(Some(good.clone()), csr()).await;
    assert_eq!(status, 200, "{body}");
    let (_, info) =
        attache_pki::cert::parse_certificate_pem(body["certificate"].as_str().unwrap()).unwrap();
    assert_eq!(
        info.uris,
        [format!("spiffe://cluster.local/ns/{ns}/sa/app")]
    );

    let (status, body) = post(None, csr()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthenticated"))
    );
    let vault = TokenSpec {
        audiences: &["vault"],
        seconds: 3600,
        pod: None,
    };
    let vault = server.token(&ns, "app", vault).await.unwrap();
    assert_eq!(post(Some(vault), csr()).await.0, 401, "wrong audience");
    // One signature character changed, away from the end: the last one
    // carries padding bits a decoder may ignore.
    let mut forged = good.clone();
    let at = forged.len() - 8;
    let flipped = if &forged[at..=at] == "A" { "B" } else { "A" };
    forged.replace_range(at..=at, flipped);
    assert_eq!(post(Some(forged), csr()).await.0, 401, "bad signature");

    let weak = tokio::task::block_in_place(|| {
        run_ok(Command::new("openssl").args([
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-subj",
            "/CN=weak",
        ]))
    });
    let (status, body) = post(Some(good.clone()), weak).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("RSA-1024"),
        "{body}"
    );

    // Refused by policy: a role the namespace does not allow, and a profile
    // override the broker was not told to allow (--allowed-profile-arns).
    let elsewhere = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/elsewhere";
    for (sa, annotations, why) in [
        (
            "greedy",
            json!({"attache.dev/role-arn": OTHER_ROLE}),
            "attache.dev/allowed-roles",
        ),
        (
            "elsewhere",
            json!({"attache.dev/role-arn": ROLE, "attache.dev/profile-arn": elsewhere}),
            "--allowed-profile-arns",
        ),
    ] {
        service_account(&admin, &ns, sa, annotations).await;
        let token = workload_token(server, &ns, sa, None).await;
        let (status, body) = post(Some(token), csr()).await;
        assert_eq!(status, 403, "{sa}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{sa}: {body}");
    }
    // One identity gets at most --max-certificates-per-minute (10) a minute.
    service_account(&admin, &ns, "burst", json!({"attache.dev/role-arn": ROLE})).await;
    let burst = workload_token(server, &ns, "burst", None).await;
    for i in 0..10 {
        let (status, body) = post(Some(burst.clone()), csr()).await;
        assert_eq!(status, 200, "certificate {i}: {body}");
    }
    let (status, body) = post(Some(burst), csr()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    let metrics = broker.metrics().await;
    assert!(
        metrics.contains("attache_certificates_refused_total"),
        "{metrics}"
    );
    assert_broker_calls_allowed_and_listed(server, BROKER_USER, BROKER_NS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_admission_reviews_get_a_400_with_a_reason() {
    deployed().await;
    let broker = broker().await;
    let http = broker.http();
    for body in [
        "not json",
        "{}",
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":1}}",
    ] {
        let resp = http
            .post(format!("https://{}/mutate", broker.webhook_addr))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert!(
            v["response"]["status"]["message"]
                .as_str()
                .unwrap()
                .contains("malformed AdmissionReview"),
            "{v}"
        );
    }
    // An oversized body is refused from its Content-Length, before it is read.
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        broker.webhook_addr,
        2 * 1024 * 1024
    );
    let reply =
        raw_tls_exchange(broker.webhook_addr, &broker.serving_ca_pem, head.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
}

/// Sends `request` over TLS to the broker and returns the start of the reply.
/// A TLS client configuration trusting only `ca_pem`.
fn tls_client_config(ca_pem: &str) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

async fn raw_tls_exchange(addr: std::net::SocketAddr, ca_pem: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let config = tls_client_config(ca_pem);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(request).await.unwrap();
    let mut buf = vec![0; 1024];
    let n = tls.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_starting_together_share_one_ca() {
    // A server of its own: the shared one already has a CA.
    let server = ApiServer::start(Default::default()).await.unwrap();
    apply_deploy(&server);
    let client = broker_client(&server).await;
    let args = || broker_args(&[]);
    let (a, b) = tokio::join!(
        attache_broker::run::start(args(), client.clone()),
        attache_broker::run::start(args(), client.clone()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.ca.info().sha256_fingerprint,
        b.ca.info().sha256_fingerprint
    );
    assert_eq!(a.serving_ca_pem, b.serving_ca_pem, "one serving CA too");
    let admin = server.admin().await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(admin.clone(), BROKER_NS);
    let cas: Vec<_> = secrets
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.metadata.name.as_deref() == Some("attache-ca"))
        .collect();
    assert_eq!(cas.len(), 1);
    let bundle: k8s_openapi::api::core::v1::ConfigMap = Api::namespaced(admin, BROKER_NS)
        .get("attache-ca-bundle")
        .await
        .unwrap();
    assert_eq!(
        bundle.data.unwrap()["ca.pem"],
        a.ca.trust_anchor_pem(),
        "the published bundle is the shared CA"
    );
    a.shutdown().await;
    b.shutdown().await;
    assert_broker_calls_allowed_and_listed(&server, BROKER_USER, BROKER_NS);
}

/// Opens a TLS connection and sends a request head whose body never comes;
/// `None` when the broker closed the connection before the handshake ended.
async fn slow_body(
    source: [u8; 4],
    addr: std::net::SocketAddr,
    ca_pem: &str,
    path: &str,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt as _;
    let config = tls_client_config(ca_pem);
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket
        .bind((std::net::Ipv4Addr::from(source), 0).into())
        .ok()?;
    let tcp = socket.connect(addr).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .ok()?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{"
    );
    tls.write_all(head.as_bytes()).await.ok()?;
    tls.flush().await.ok()?;
    Some(tls)
}

/// A client whose connections come from another loopback address (another peer).
fn http_from(source: [u8; 4], ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(source))
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

/// A CSR for a new P-256 key.
fn fresh_csr() -> String {
    attache_pki::PrivateKey::generate(attache_pki::KeyType::EcdsaP256)
        .unwrap()
        .certificate_signing_request()
        .unwrap()
}

/// A team namespace and a broker of its own (same CA Secret), so its metrics
/// count only the calling test's requests; it leaves the webhook
/// configuration alone.
async fn team_with_own_broker() -> (
    &'static ApiServer,
    kube::Client,
    String,
    attache_broker::run::Running,
) {
    let server = deployed().await;
    broker().await;
    let (admin, ns) = team(server).await;
    let client = broker_client(server).await;
    let running = attache_broker::run::start(broker_args(&["--webhook-config", ""]), client)
        .await
        .unwrap();
    (server, admin, ns, running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_garbage_tokens_cannot_starve_admission_or_token_review() {
    use futures::StreamExt as _;
    let (server, admin, ns, running) = team_with_own_broker().await;
    let ca_pem = running.serving_ca_pem.clone();

    // 1,100 slow-body connections from one pod's address to the certificate
    // API port: at most --max-connections-per-peer (16) are even accepted.
    let flood = |source: [u8; 4], addr, path: &'static str| {
        let ca_pem = ca_pem.clone();
        async move {
            let held: Vec<_> = futures::stream::iter(0..1100)
                .map(|_| slow_body(source, addr, &ca_pem, path))
                .buffer_unordered(64)
                .collect()
                .await;
            held.into_iter().flatten().collect::<Vec<_>>()
        }
    };
    let held = flood([127, 0, 0, 5], running.addr, "/v1/certificates").await;
    assert!(
        held.len() <= 16,
        "{} slow connections accepted from one peer",
        held.len()
    );
    // And 1,100 to the webhook port, from another pod that can reach it: at
    // most --max-webhook-connections-per-peer (256) of the 1,024 request
    // slots are held.
    let held_webhook = flood([127, 0, 0, 6], running.webhook_addr, "/mutate").await;
    assert!(
        (1..=256).contains(&held_webhook.len()),
        "{} slow connections to the webhook accepted from one peer",
        held_webhook.len()
    );

    // Meanwhile admission, from the API server's address, answers at once ...
    let review = pod_review(&ns, "app");
    let mutate = common::https_trusting(&ca_pem)
        .post(format!("https://{}/mutate", running.webhook_addr))
        .json(&review)
        .send();
    let reply = tokio::time::timeout(Duration::from_secs(1), mutate)
        .await
        .expect("/mutate answered within 1 s during the flood")
        .unwrap();
    assert_eq!(reply.status(), 200);
    let answer: Value = reply.json().await.unwrap();
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");

    // ... and another pod (another address) still gets its certificate.
    let token = app_token(server, &ns).await;
    let other_pod = http_from([127, 0, 0, 2], &ca_pem);
    let (status, body) = request_certificate(&other_pod, running.addr, &token, &fresh_csr()).await;
    assert_eq!(status, 200, "{body}");
    drop(held);
    drop(held_webhook);

    // 1,000 garbage tokens cost no TokenReview; 1,000 requests with one
    // forged but well-formed token cost one.
    let reviews_before = running.metrics.token_reviews.get();
    let garbage = http_from([127, 0, 0, 3], &ca_pem);
    let forged = |n: usize| {
        use base64::Engine as _;
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 600;
        format!(
            "{}.{}.{}",
            b64(json!({"alg": "ES256", "kid": "forged"})),
            b64(
                json!({"aud": ["attache-broker"], "exp": exp, "jti": n, "sub": format!("system:serviceaccount:{ns}:app")})
            ),
            "c2lnbmF0dXJl"
        )
    };
    for (i, token) in (0..1000)
        .map(|i| format!("garbage-{i}"))
        .chain(std::iter::repeat_n(forged(0), 1000))
        .enumerate()
    {
        let (status, _) = request_certificate(&garbage, running.addr, &token, "x").await;
        assert_eq!(status, 401, "request {i}");
    }
    let reviews = running.metrics.token_reviews.get() - reviews_before;
    assert_eq!(reviews, 1, "TokenReviews for 2,000 bad requests");

    // 1,000 distinct well-formed forgeries from one address: each would need
    // its own TokenReview, but the address gets --max-token-reviews-per-peer
    // (30) a minute; the rest get 429 without one.
    let reviews_before = running.metrics.token_reviews.get();
    let forger = http_from([127, 0, 0, 7], &ca_pem);
    let mut statuses = BTreeMap::<u16, usize>::new();
    for n in 1..=1000 {
        let (status, _) = request_certificate(&forger, running.addr, &forged(n), "x").await;
        *statuses.entry(status).or_default() += 1;
    }
    let reviews = running.metrics.token_reviews.get() - reviews_before;
    assert!(
        reviews <= 31,
        "{reviews} TokenReviews for 1,000 distinct forged tokens from one address"
    );
    assert_eq!(
        statuses.get(&429).copied().unwrap_or(0) + statuses.get(&401).copied().unwrap_or(0),
        1000,
        "{statuses:?}"
    );
    assert!(
        statuses.get(&429).copied().unwrap_or(0) >= 969,
        "{statuses:?}"
    );
    // Another pod (address) still gets its certificate.
    let (status, body) = request_certificate(&other_pod, running.addr, &token, &fresh_csr()).await;
    assert_eq!(status, 200, "{body}");
    running.shutdown().await;
    let _ = admin;
}

/// A rollout (issue 16): 1,000 pods of one ServiceAccount, each from its own
/// address, send their CSRs within 10 s, as their sidecars start. Every one
/// gets a certificate: TokenReviews are bounded
/// (`--max-concurrent-token-reviews`) and wait their turn instead of failing
/// (a request still waiting after 5 s gets a 503, which sidecars retry),
/// the rate limit is per pod, and nothing waits past the broker's
/// `--request-timeout` (which would answer an error, failing this test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_of_1000_pods_gets_every_certificate() {
    use futures::StreamExt as _;
    const PODS: usize = 1000;
    let (server, admin, ns, running) = team_with_own_broker().await;
    let ca_pem = running.serving_ca_pem.clone();

    // The pods (opted out of injection: only their tokens matter here) and a
    // token bound to each, as the kubelet would project it.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let tokens: Vec<String> = futures::stream::iter(0..PODS)
        .map(|i| {
            let pods = pods.clone();
            let ns = ns.clone();
            async move {
                let mut p = pod(&format!("fleet-{i}"), "app");
                p.metadata.annotations =
                    Some([("attache.dev/inject".to_string(), "false".to_string())].into());
                let created = pods.create(&PostParams::default(), &p).await.unwrap();
                let uid = created.metadata.uid.unwrap();
                server
                    .token(
                        &ns,
                        "app",
                        TokenSpec {
                            audiences: &["attache-broker"],
                            seconds: 3600,
                            pod: Some((&format!("fleet-{i}"), &uid)),
                        },
                    )
                    .await
                    .unwrap()
            }
        })
        .buffered(16)
        .collect()
        .await;
    let csrs: Vec<String> = (0..PODS)
        .map(|_| {
            attache_pki::PrivateKey::generate(attache_pki::KeyType::EcdsaP256)
                .unwrap()
                .certificate_signing_request()
                .unwrap()
        })
        .collect();

    // One request every 10 ms, each from its own pod address.
    let url = format!("https://{}/v1/certificates", running.addr);
    let reviews_before = running.metrics.token_reviews.get();
    let start = tokio::time::Instant::now();
    let mut sent = Vec::with_capacity(PODS);
    for (i, (token, csr)) in tokens.into_iter().zip(csrs).enumerate() {
        tokio::time::sleep_until(start + Duration::from_millis(10 * i as u64)).await;
        let http = http_from([127, 1, (i / 250) as u8, (i % 250 + 1) as u8], &ca_pem);
        let url = url.clone();
        sent.push(tokio::spawn(async move {
            let t = tokio::time::Instant::now();
            // A 503 ("too many at once") or a connection closed before any
            // answer is retried after a second, as the sidecar retries them;
            // any other answer is final.
            let mut retries = 0;
            loop {
                let sent = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"csr": csr}))
                    .send()
                    .await;
                let resp = match sent {
                    Err(e) if retries < 5 => {
                        eprintln!("pod {i}: retrying after {e}");
                        retries += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    other => other.unwrap(),
                };
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                if status == 503 && retries < 5 {
                    retries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                return (status, body, t.elapsed(), retries);
            }
        }));
    }
    let mut latencies = Vec::with_capacity(PODS);
    let mut retried = 0;
    for (i, s) in sent.into_iter().enumerate() {
        let (status, body, took, retries) = s.await.unwrap();
        retried += usize::from(retries > 0);
        assert_eq!(status, 200, "pod {i}: {body}");
        assert!(
            body["certificate"]
                .as_str()
                .is_some_and(|c| c.contains("BEGIN CERTIFICATE")),
            "pod {i}: {body}"
        );
        latencies.push(took);
    }
    let all = start.elapsed();
    latencies.sort();
    let reviews = running.metrics.token_reviews.get() - reviews_before;
    // A request that gave up waiting for a TokenReview slot made none; one
    // cut off mid-review may make a second on retry.
    assert!(
        (PODS as u64..=(PODS + retried) as u64).contains(&reviews),
        "{reviews} TokenReviews for {PODS} pods' tokens ({retried} retried)"
    );
    // Bounded TokenReviews wait their turn: on a busy 2-core machine a few
    // requests may wait past the 5 s limit and be retried, not a quarter.
    assert!(
        retried < PODS / 4,
        "{retried} of {PODS} requests needed a retry"
    );
    eprintln!(
        "rollout: {PODS} certificates in {:.1}s (requests over 10 s, {retried} retried after a 503); latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        all.as_secs_f64(),
        latencies[PODS / 2].as_secs_f64() * 1e3,
        latencies[PODS * 99 / 100].as_secs_f64() * 1e3,
        latencies[PODS - 1].as_secs_f64() * 1e3
    );
    running.shutdown().await;
}

/// The certificate API reuses a token's TokenReview, never its
/// authorization: tightening a namespace's `allowed-roles` refuses the very
/// next request made with an already-accepted token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tightened_policy_refuses_the_next_request_of_a_cached_token() {
    let (server, admin, ns, running) = team_with_own_broker().await;
    let token = app_token(server, &ns).await;
    let http = common::https_trusting(&running.serving_ca_pem);
    let post = async || request_certificate(&http, running.addr, &token, &fresh_csr()).await;
    assert_eq!(post().await.0, 200);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(admin.clone());
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "attache.dev/allowed-roles": serde_json::to_string(&[OTHER_ROLE]).unwrap(),
            }}})),
        )
        .await
        .unwrap();
    let hits = running.metrics.token_cache_hits.get();
    let reviews = running.metrics.token_reviews.get();
    let (status, body) = post().await;
    assert_eq!(status, 403);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("attache.dev/allowed-roles")),
        "{body}"
    );
    assert_eq!(
        (
            running.metrics.token_cache_hits.get() - hits,
            running.metrics.token_reviews.get() - reviews
        ),
        (1, 0),
        "the token's TokenReview was reused, its authorization was not"
    );
    running.shutdown().await;
}

/// The webhook reads ServiceAccount and namespace annotations from its
/// watch-fed cache: once `/readyz` says the cache is listed, admitting pods
/// costs no API read (counted in the API server's audit log); a
/// ServiceAccount created a moment before its pod is still honoured (a miss
/// reads live); and an annotation change reaches the webhook through the
/// watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_reads_annotations_from_a_watch_cache() {
    let (server, admin, ns, running) = team_with_own_broker().await;
    let http = common::https_trusting(&running.serving_ca_pem);
    let admin_http = reqwest::Client::new();
    let readyz = format!("http://{}/readyz", running.admin_addr);
    eventually(
        Duration::from_secs(30),
        "the broker's caches listed",
        || async {
            let r = admin_http.get(&readyz).send().await.ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;
    let admit = |sa: &'static str| {
        let (http, body) = (http.clone(), pod_review(&ns, sa));
        let url = format!("https://{}/mutate", running.webhook_addr);
        async move {
            let reply = json_reply(http.post(url).json(&body)).await;
            assert_eq!(reply["response"]["allowed"], true, "{reply}");
            // kube-rs sends the patch as a byte array; the API server takes it.
            !reply["response"]["patch"].is_null()
        }
    };
    // Created after the cache was listed, then admitted at once: injected
    // whether the watch delivered it yet or the lookup read it live.
    service_account(&admin, &ns, "fresh", json!({"attache.dev/role-arn": ROLE})).await;
    assert!(
        admit("fresh").await,
        "a just-created ServiceAccount is honoured"
    );

    let reads = |name: &'static str| {
        let ns = ns.clone();
        move || {
            audit_calls(server, BROKER_USER)
                .into_iter()
                .filter(|e| {
                    e["verb"] == "get"
                        && e["objectRef"]["namespace"] == ns.as_str()
                        && e["objectRef"]["resource"] == "serviceaccounts"
                        && e["objectRef"]["name"] == name
                })
                .count()
        }
    };
    let app_reads = reads("app");
    // `app` existed before this broker started: every admission is a hit.
    let before = app_reads();
    for _ in 0..20 {
        assert!(admit("app").await);
    }
    assert_eq!(
        app_reads(),
        before,
        "20 admissions of a cached ServiceAccount read it from the API server"
    );

    // An annotation change reaches the cache through the watch.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    sas.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"attache.dev/role-arn": null}}})),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the removed role annotation to reach the webhook",
        || async { (!admit("app").await).then_some(()) },
    )
    .await;
    assert_eq!(app_reads(), before, "still no live read");
    running.shutdown().await;
}
