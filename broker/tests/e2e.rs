//! The broker end to end, against the Kubernetes API test double and the AWS
//! emulator: a pod created through the API is injected by the webhook, its
//! sidecar (the real sidecar code, configured only from the injected env)
//! gets a certificate from the broker with a TokenRequest token, trades it at
//! Roles Anywhere, and botocore sees exactly the ServiceAccount's role.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use attache_broker::run::{RunArgs, Running};
use attache_emulator::{Emulator, EmulatorConfig};
use attache_kube_double::KubeDouble;
use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};

const ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/cluster";
const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/pods";
const ROLE: &str = "arn:aws:iam::123456789012:role/app-reader";
const OTHER_ROLE: &str = "arn:aws:iam::123456789012:role/admin";

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    run: RunArgs,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn required() -> bool {
    std::env::var_os("ATTACHE_REQUIRE_SDK_TESTS").is_some()
}

const BROKER_USER: &str = "system:serviceaccount:attache-system:attache-broker";

/// A client authenticated as the broker's own ServiceAccount, so the audit
/// log tells the broker's calls apart from the test's.
async fn broker_client(double: &KubeDouble) -> kube::Client {
    let admin = double.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin, "attache-system");
    if sas.get_opt("attache-broker").await.unwrap().is_none() {
        let sa = serde_json::from_value(json!({"metadata": {"name": "attache-broker"}})).unwrap();
        let _ = sas.create(&PostParams::default(), &sa).await;
    }
    double
        .client_as("attache-system", "attache-broker")
        .await
        .unwrap()
}

/// Every Kubernetes API call the broker made is in deploy/kubernetes/broker-api-calls.json,
/// the list its RBAC is generated and checked from.
fn assert_calls_are_listed(double: &KubeDouble) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/kubernetes/broker-api-calls.json"
    ))
    .unwrap();
    let list: Value = serde_json::from_str(&text).unwrap();
    let calls = list["calls"].as_array().unwrap();
    let made: Vec<_> = double
        .audit()
        .into_iter()
        .filter(|a| a.user == BROKER_USER)
        .collect();
    assert!(
        !made.is_empty(),
        "the broker made no API calls as its ServiceAccount"
    );
    for a in made {
        let listed = calls.iter().any(|c| {
            c["verb"] == a.verb.as_str()
                && c["group"] == a.group.as_str()
                && c["resource"] == a.resource.as_str()
                && match (c["scope"].as_str(), a.namespace.as_deref()) {
                    (Some("cluster"), None) => true,
                    // A ClusterRole grant: one namespace or all of them (a cluster-wide list/watch).
                    (Some("any"), _) => true,
                    (Some("own"), Some(ns)) => ns == "attache-system",
                    _ => false,
                }
                && c.get("resourceName")
                    .is_none_or(|n| a.name.as_deref() == n.as_str())
        });
        assert!(
            listed,
            "the broker called {a:?}, which broker-api-calls.json (and so its RBAC) does not grant"
        );
    }
}

struct Cluster {
    double: KubeDouble,
    client: kube::Client,
    broker: Option<Running>,
    port: u16,
}

fn broker_args(port: u16, admin: u16) -> RunArgs {
    Flags::parse_from([
        "t",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        &format!("127.0.0.1:{admin}"),
        "--tls-sans",
        "127.0.0.1",
        "--profile-arn",
        PROFILE,
        "--trust-anchor-arn",
        ANCHOR,
        "--log-format",
        "text",
    ])
    .run
}

async fn cluster() -> Cluster {
    attache_sidecar::cli::init_logging(attache_sidecar::cli::LogFormat::Text);
    let double = KubeDouble::start().await.unwrap();
    let client = double.client().await;
    for ns in [
        json!({"metadata": {"name": "attache-system"}}),
        json!({"metadata": {"name": "team-a", "annotations": {"attache.dev/allowed-roles": format!("[\"{ROLE}\"]")}}}),
    ] {
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(ns).unwrap())
            .await
            .unwrap();
    }
    let sa: ServiceAccount = serde_json::from_value(
        json!({"metadata": {"name": "app", "annotations": {"attache.dev/role-arn": ROLE}}}),
    )
    .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), "team-a")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let port = free_port();
    // The webhook is registered before the broker starts; the broker fills in its caBundle.
    let mwc = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "attache-broker"},
        "webhooks": [{
            "name": "inject.attache.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "attache-system"]}]},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 5,
            "reinvocationPolicy": "IfNeeded",
        }]
    });
    let api: Api<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> =
        Api::all(client.clone());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(mwc).unwrap(),
    )
    .await
    .unwrap();
    let broker =
        attache_broker::run::start(broker_args(port, free_port()), broker_client(&double).await)
            .await
            .unwrap();
    Cluster {
        double,
        client,
        broker: Some(broker),
        port,
    }
}

fn pod(name: &str, sa: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "public.ecr.aws/aws-cli/aws-cli", "env": [{"name": "AWS_REGION", "value": "eu-west-1"}]}]}
    }))
    .unwrap()
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

async fn emulator_for(ca_pem: &str) -> Emulator {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emu.trust_workload(
        ANCHOR,
        PROFILE,
        ROLE,
        ca_pem,
        "spiffe://cluster.local/ns/team-a/sa/app",
    );
    emu
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gets_injected_and_its_sidecar_serves_the_service_accounts_role() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "team-a");
    pods.create(&PostParams::default(), &pod("web", "app"))
        .await
        .unwrap();
    let stored = c
        .double
        .get_json("/api/v1/namespaces/team-a/pods/web")
        .unwrap();
    let init = stored["spec"]["initContainers"]
        .as_array()
        .unwrap_or_else(|| {
            panic!(
                "sidecar injected: {stored:#}\n{:#?}",
                c.double.admission_reviews()
            )
        });
    assert_eq!(init[0]["name"], "attache-sidecar");
    assert_eq!(init[0]["restartPolicy"], "Always");
    let app_env = env_of(&stored["spec"]["containers"][0]);
    assert_eq!(
        app_env["AWS_CONTAINER_CREDENTIALS_FULL_URI"],
        "http://127.0.0.1:9911/v1/credentials"
    );
    assert_eq!(
        app_env["AWS_REGION"], "eu-west-1",
        "the pod's own value is kept"
    );
    assert_eq!(app_env["AWS_DEFAULT_REGION"], "us-east-1");
    assert!(attache_kube_double::schema::validate(std::slice::from_ref(&stored)).is_ok());

    // Run the sidecar exactly as injected; only paths, the broker address and
    // the AWS endpoint differ from the pod (no cluster DNS, no AWS here).
    let broker = c.broker.as_ref().unwrap();
    let emu = emulator_for(&broker.ca.trust_anchor_pem()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = c
        .double
        .token_for("team-a", "app", &["attache-broker"], 3600, Some("web"))
        .await
        .unwrap();
    std::fs::write(dir.path().join("sa-token"), &token).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["attache-sidecar".to_string(), "serve".to_string()];
    for (k, mut v) in env_of(&init[0]) {
        match k.as_str() {
            "ATTACHE_BROKER_URL" => v = format!("https://127.0.0.1:{}", c.port),
            "ATTACHE_SERVICE_ACCOUNT_TOKEN_FILE" => {
                v = dir.path().join("sa-token").display().to_string()
            }
            "ATTACHE_TOKEN_FILE" => v = dir.path().join("token").display().to_string(),
            "ATTACHE_LISTEN" => v = listen.clone(),
            "ATTACHE_LOG_FORMAT" => v = "text".into(),
            _ => {}
        }
        let flag = k
            .trim_start_matches("ATTACHE_")
            .to_ascii_lowercase()
            .replace('_', "-");
        args.push(format!("--{flag}={v}"));
    }
    args.push(format!("--endpoint={}", emu.url()));
    let cli = attache_sidecar::cli::Cli::try_parse_from(&args).unwrap();
    let sidecar = attache_sidecar::app::InProcess::spawn(cli);
    assert!(
        attache_sidecar::app::wait_ready(&listen, Duration::from_secs(10)).await,
        "sidecar became ready"
    );
    let session = &emu.sessions()[0];
    assert_eq!(
        session.san_uri.as_deref(),
        Some("spiffe://cluster.local/ns/team-a/sa/app")
    );
    assert_eq!(session.role_arn, ROLE);
    assert!(
        broker
            .metrics
            .encode()
            .contains("attache_certificates_issued_total 1")
    );

    let has_botocore = Command::new("python3")
        .args(["-c", "import botocore"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_botocore {
        let script = "import json, os, botocore.session\nc = botocore.session.get_session().create_client('sts', region_name='us-east-1', endpoint_url=os.environ['STS_ENDPOINT'])\nprint(json.dumps(c.get_caller_identity()))";
        let mut cmd = Command::new("python3");
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(["-c", script])
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://{listen}/v1/credentials"),
            )
            .env(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                dir.path().join("token"),
            )
            .env("STS_ENDPOINT", emu.url());
        let out = tokio::task::block_in_place(|| cmd.output().unwrap());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(
            reply["Arn"]
                .as_str()
                .unwrap()
                .starts_with("arn:aws:sts::123456789012:assumed-role/app-reader/"),
            "{reply}"
        );
    } else {
        assert!(!required(), "botocore is required");
        eprintln!("SKIPPED: botocore not installed");
    }
    sidecar.stop().await;
    c.broker.unwrap().shutdown().await;
    assert_calls_are_listed(&c.double);
}

#[tokio::test]
async fn policy_decides_which_pods_are_injected_or_refused() {
    let c = cluster().await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "team-a");
    // No annotation on the SA: the pod is left alone.
    Api::<ServiceAccount>::namespaced(c.client.clone(), "team-a")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "plain"}})).unwrap(),
        )
        .await
        .unwrap();
    pods.create(&PostParams::default(), &pod("plain", "plain"))
        .await
        .unwrap();
    let stored = c
        .double
        .get_json("/api/v1/namespaces/team-a/pods/plain")
        .unwrap();
    assert!(
        stored["spec"]
            .get("initContainers")
            .is_none_or(|v| !v.to_string().contains("attache-sidecar"))
    );

    // A role the namespace does not allow: refused with the annotation to set.
    Api::<ServiceAccount>::namespaced(c.client.clone(), "team-a")
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "greedy", "annotations": {"attache.dev/role-arn": OTHER_ROLE}}})).unwrap())
        .await
        .unwrap();
    let err = pods
        .create(&PostParams::default(), &pod("greedy", "greedy"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("attache.dev/allowed-roles")
            && err.contains(OTHER_ROLE)
            && err.contains("team-a"),
        "{err}"
    );

    // hostNetwork pods are refused.
    let mut p = pod("host", "app");
    p.spec.as_mut().unwrap().host_network = Some(true);
    let err = pods
        .create(&PostParams::default(), &p)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("hostNetwork"), "{err}");

    // Opt-out annotation.
    let mut p = pod("optout", "app");
    p.metadata.annotations = Some(BTreeMap::from([(
        "attache.dev/inject".into(),
        "false".into(),
    )]));
    pods.create(&PostParams::default(), &p).await.unwrap();
    assert!(
        !c.double
            .get_json("/api/v1/namespaces/team-a/pods/optout")
            .unwrap()
            .to_string()
            .contains("attache-sidecar")
    );
    c.broker.unwrap().shutdown().await;
    assert_calls_are_listed(&c.double);
}

async fn post_csr(port: u16, ca_pem: &str, token: Option<&str>, csr: &str) -> (u16, Value) {
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let mut req = http
        .post(format!("https://127.0.0.1:{port}/v1/certificates"))
        .json(&json!({"csr": csr}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

fn csr() -> String {
    attache_pki::PrivateKey::generate(attache_pki::KeyType::EcdsaP256)
        .unwrap()
        .certificate_signing_request()
        .unwrap()
}

#[tokio::test]
async fn certificate_api_authenticates_authorizes_and_checks_the_csr() {
    let c = cluster().await;
    let ca_pem = c.broker.as_ref().unwrap().ca.trust_anchor_pem();
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "team-a");
    pods.create(&PostParams::default(), &pod("web", "app"))
        .await
        .unwrap();

    let good = c
        .double
        .token_for("team-a", "app", &["attache-broker"], 3600, Some("web"))
        .await
        .unwrap();
    let unused = c
        .double
        .token_for("team-a", "app", &["attache-broker"], 3600, Some("web"))
        .await
        .unwrap();
    let (status, body) = post_csr(c.port, &ca_pem, Some(&good), &csr()).await;
    assert_eq!(status, 200, "{body}");
    // A second request with the same token is decided from the cache.
    let reviews = c.double.request_count("create", "tokenreviews");
    assert_eq!(post_csr(c.port, &ca_pem, Some(&good), &csr()).await.0, 200);
    assert_eq!(c.double.request_count("create", "tokenreviews"), reviews);
    let (_, info) =
        attache_pki::cert::parse_certificate_pem(body["certificate"].as_str().unwrap()).unwrap();
    assert_eq!(info.uris, ["spiffe://cluster.local/ns/team-a/sa/app"]);
    assert!(body["notAfter"].as_str().unwrap().ends_with('Z'));

    let (status, body) = post_csr(c.port, &ca_pem, None, &csr()).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (401, "unauthenticated"),
        "{body}"
    );
    let wrong_audience = c
        .double
        .token_for("team-a", "app", &["vault"], 3600, None)
        .await
        .unwrap();
    assert_eq!(
        post_csr(c.port, &ca_pem, Some(&wrong_audience), &csr())
            .await
            .0,
        401
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = c
        .double
        .sign_token_claims(&json!({
            "aud": ["attache-broker"], "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600,
            "iss": attache_kube_double::API_AUDIENCE, "sub": "system:serviceaccount:team-a:app",
            "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "app", "uid": "x"}},
        }))
        .unwrap();
    assert_eq!(
        post_csr(c.port, &ca_pem, Some(&expired), &csr()).await.0,
        401
    );

    // Weak key in the CSR: 400 naming the field.
    let weak = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-subj",
            "/CN=weak",
        ])
        .output()
        .unwrap();
    let (status, body) = post_csr(
        c.port,
        &ca_pem,
        Some(&good),
        &String::from_utf8_lossy(&weak.stdout),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("\"csr\"") && msg.contains("RSA-1024"),
        "{body}"
    );

    // Role not allowed: 403 naming the annotation; deleted pod / SA: 401.
    Api::<ServiceAccount>::namespaced(c.client.clone(), "team-a")
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "greedy", "annotations": {"attache.dev/role-arn": OTHER_ROLE}}})).unwrap())
        .await
        .unwrap();
    let greedy = c
        .double
        .token_for("team-a", "greedy", &["attache-broker"], 3600, None)
        .await
        .unwrap();
    let (status, body) = post_csr(c.port, &ca_pem, Some(&greedy), &csr()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("attache.dev/allowed-roles"),
        "{body}"
    );

    // A token bound to a deleted pod (not used before, so not in the cache).
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        post_csr(c.port, &ca_pem, Some(&unused), &csr()).await.0,
        401,
        "token bound to a deleted pod"
    );
    let plain_sa = c
        .double
        .token_for("team-a", "greedy", &["attache-broker"], 3600, None)
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(c.client.clone(), "team-a")
        .delete("greedy", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        post_csr(c.port, &ca_pem, Some(&plain_sa), &csr()).await.0,
        401,
        "token of a deleted SA"
    );
    let metrics = c.broker.as_ref().unwrap().metrics.encode();
    assert!(
        metrics.contains("attache_certificates_refused_total{reason=\"unauthenticated\"}"),
        "{metrics}"
    );
    c.broker.unwrap().shutdown().await;
    assert_calls_are_listed(&c.double);
}

#[tokio::test]
async fn two_replicas_starting_together_share_one_ca() {
    let double = KubeDouble::start().await.unwrap();
    let client = double.client().await;
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "attache-system"}})).unwrap(),
        )
        .await
        .unwrap();
    let broker = broker_client(&double).await;
    let (a, b) = tokio::join!(
        attache_broker::run::start(broker_args(free_port(), free_port()), broker.clone()),
        attache_broker::run::start(broker_args(free_port(), free_port()), broker.clone()),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.ca.info().sha256_fingerprint,
        b.ca.info().sha256_fingerprint
    );
    let secrets = double
        .dump()
        .into_iter()
        .filter(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "attache-ca")
        .count();
    assert_eq!(secrets, 1);
    let bundle = double
        .get_json("/api/v1/namespaces/attache-system/configmaps/attache-ca-bundle")
        .unwrap();
    assert_eq!(bundle["data"]["ca.pem"], a.ca.trust_anchor_pem());
    a.shutdown().await;
    b.shutdown().await;
    assert_calls_are_listed(&double);
}

#[tokio::test]
async fn malformed_admission_reviews_get_a_400_with_a_reason() {
    let c = cluster().await;
    let ca_pem = c.broker.as_ref().unwrap().ca.trust_anchor_pem();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    for body in [
        "not json",
        "{}",
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{\"uid\":1}}",
    ] {
        let resp = http
            .post(format!("https://127.0.0.1:{}/mutate", c.port))
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
    let big = vec![b'x'; 2 * 1024 * 1024];
    let resp = http
        .post(format!("https://127.0.0.1:{}/mutate", c.port))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    c.broker.unwrap().shutdown().await;
    assert_calls_are_listed(&c.double);
}
