//! What the end-to-end tests share: the API server with `deploy/kubernetes`
//! applied, the broker running out of cluster as its own ServiceAccount, and
//! checks on what the broker asked of the API server (from its audit log).
//! The broker's benchmarks include this file by path: it may use only crates
//! attache-broker has as (dev-)dependencies.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use attache_e2e::{ApiServer, ISSUER, TokenSpec};
use clap::Parser as _;
use serde_json::{Value, json};

pub const ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/cluster";
pub const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/pods";
pub const ROLE: &str = "arn:aws:iam::123456789012:role/app-reader";
pub const OTHER_ROLE: &str = "arn:aws:iam::123456789012:role/admin";
pub const ECR_ROLE: &str = "arn:aws:iam::123456789012:role/attache-ecr-pull";
pub const BROKER_NS: &str = "attache-system";
pub const BROKER_SA: &str = "attache-broker";
pub const BROKER_USER: &str = "system:serviceaccount:attache-system:attache-broker";
pub const CONTROLLER_SA: &str = "attache-ecr-controller";
pub const CONTROLLER_USER: &str = "system:serviceaccount:attache-system:attache-ecr-controller";

pub fn root() -> PathBuf {
    attache_testkit::workspace_root()
}

/// Runs a command, failing the test with its output when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shared API server with `kubectl apply --server-side -k deploy/kubernetes` done.
pub async fn deployed() -> &'static ApiServer {
    static DEPLOYED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let server = ApiServer::shared().await;
    DEPLOYED
        .get_or_init(|| async { apply_deploy(server) })
        .await;
    server
}

/// `kubectl apply --server-side -k deploy/kubernetes` on `server`.
pub fn apply_deploy(server: &ApiServer) {
    let dir = root().join("deploy/kubernetes");
    apply_kustomization(server, &dir, &["--field-manager=e2e"]);
}

/// `kubectl apply --server-side <flags> -k <dir>` on `server`.
pub fn apply_kustomization(server: &ApiServer, dir: &Path, flags: &[&str]) {
    tokio::task::block_in_place(|| {
        let mut apply = server.kubectl();
        apply.args(["apply", "--server-side"]).args(flags);
        run_ok(apply.arg("-k").arg(dir))
    });
}

/// A token for the broker's own ServiceAccount, as a pod of its Deployment gets.
pub async fn broker_token(server: &ApiServer) -> String {
    sa_token(server, BROKER_SA).await
}

/// A token for the ECR controller's own ServiceAccount, as a pod of its Deployment gets.
pub async fn controller_token(server: &ApiServer) -> String {
    sa_token(server, CONTROLLER_SA).await
}

/// A client as the broker's own ServiceAccount.
pub async fn broker_client(server: &ApiServer) -> kube::Client {
    server.client_with_token(&broker_token(server).await).await
}

/// A client as the ECR controller's own ServiceAccount.
pub async fn controller_client(server: &ApiServer) -> kube::Client {
    server
        .client_with_token(&controller_token(server).await)
        .await
}

async fn sa_token(server: &ApiServer, sa: &str) -> String {
    server
        .token(
            BROKER_NS,
            sa,
            TokenSpec {
                audiences: &[ISSUER],
                seconds: 24 * 3600,
                pod: None,
            },
        )
        .await
        .unwrap_or_else(|e| panic!("token for {BROKER_NS}/{sa}: {e:#}"))
}

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    run: attache_broker::run::RunArgs,
}

/// `attache-broker run` flags for a broker on loopback.
pub fn broker_args(extra: &[&str]) -> attache_broker::run::RunArgs {
    let mut args = vec![
        "attache-broker",
        "--listen",
        "127.0.0.1:0",
        "--webhook-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--tls-sans",
        "127.0.0.1",
        "--profile-arn",
        PROFILE,
        "--trust-anchor-arn",
        ANCHOR,
        "--log-format",
        "text",
    ];
    args.extend_from_slice(extra);
    Flags::parse_from(args).run
}

/// The broker of this test binary, running on a runtime of its own so every
/// test (each with its own runtime) can use it.
pub struct SharedBroker {
    pub addr: SocketAddr,
    pub webhook_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The workload CA: the Roles Anywhere trust anchor.
    pub ca_pem: String,
    /// The serving CA: signs the broker's TLS certificates only.
    pub serving_ca_pem: String,
}

impl SharedBroker {
    /// The broker's HTTPS base URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// An HTTPS client that trusts the broker's CA.
    pub fn http(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([
                reqwest::Certificate::from_pem(self.serving_ca_pem.as_bytes()).unwrap(),
            ])
            .build()
            .unwrap()
    }

    /// The broker's Prometheus metrics text.
    pub async fn metrics(&self) -> String {
        metrics_at(self.admin_addr).await
    }
}

/// The Prometheus metrics text served on admin listener `admin_addr`.
pub async fn metrics_at(admin_addr: SocketAddr) -> String {
    reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Starts the shared broker as its own ServiceAccount and
/// points the webhook configuration deploy/kubernetes installed at it.
pub async fn broker() -> &'static SharedBroker {
    static BROKER: tokio::sync::OnceCell<SharedBroker> = tokio::sync::OnceCell::const_new();
    BROKER
        .get_or_init(|| async {
            attache_rt::logging::init_logging(attache_rt::logging::LogFormat::Text);
            let server = deployed().await;
            let kubeconfig = server.kubeconfig_yaml(
                "attache-broker",
                json!({"token": broker_token(server).await}),
            );
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("e2e-broker".into())
                .spawn(move || {
                    let rt = tokio::runtime::Runtime::new().unwrap();
                    rt.block_on(async move {
                        let client = client_from_kubeconfig(&kubeconfig).await;
                        let running = attache_broker::run::start(broker_args(&[]), client)
                            .await
                            .expect("broker starts as its own ServiceAccount");
                        let _ = tx.send(SharedBroker {
                            addr: running.addr,
                            webhook_addr: running.webhook_addr,
                            admin_addr: running.admin_addr,
                            ca_pem: running.ca.trust_anchor_pem(),
                            serving_ca_pem: running.serving_ca_pem.clone(),
                        });
                        std::future::pending::<()>().await;
                    });
                })
                .unwrap();
            let broker = rx.await.expect("broker started");
            point_webhook_at(server, &broker).await;
            broker
        })
        .await
}

pub async fn client_from_kubeconfig(yaml: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(yaml).unwrap();
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The broker runs on the host, not behind its Service: the webhook is
/// registered by `url:` to its listener, with the caBundle the broker set.
async fn point_webhook_at(server: &ApiServer, broker: &SharedBroker) {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    let api: kube::Api<MutatingWebhookConfiguration> = kube::Api::all(server.admin().await);
    let current = api.get("attache-broker").await.unwrap();
    let webhooks = current.webhooks.unwrap_or_default();
    assert_eq!(webhooks.len(), 1);
    let bundle = webhooks[0]
        .client_config
        .ca_bundle
        .clone()
        .expect("the broker set the webhook caBundle");
    assert_eq!(
        String::from_utf8_lossy(&bundle.0),
        broker.serving_ca_pem,
        "caBundle is the broker's serving CA"
    );
    let patch = json!([{
        "op": "replace",
        "path": "/webhooks/0/clientConfig",
        "value": {"url": format!("https://{}/mutate", broker.webhook_addr), "caBundle": base64(&bundle.0)},
    }]);
    api.patch(
        "attache-broker",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Json::<()>(serde_json::from_value(patch).unwrap()),
    )
    .await
    .unwrap();
}

pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A namespace for one test, opted into the webhook
/// (`attache.dev/injection=enabled`) and allowing `roles`
/// (`attache.dev/allowed-roles`).
pub async fn team_namespace(server: &ApiServer, roles: &[&str]) -> String {
    server
        .namespace(
            "team",
            json!({"attache.dev/allowed-roles": serde_json::to_string(roles).unwrap()}),
            json!({"attache.dev/injection": "enabled"}),
        )
        .await
}

/// Creates a ServiceAccount with these annotations.
pub async fn service_account(client: &kube::Client, ns: &str, name: &str, annotations: Value) {
    let sa =
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}}))
            .unwrap();
    kube::Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
        .create(&Default::default(), &sa)
        .await
        .unwrap();
}

/// Polls `check` until it returns Some, for at most `limit` (a liveness bound
/// for a failing run, not a timing assertion).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Validates objects with the real API server's schema by a server-side dry run.
pub fn server_dry_run(server: &ApiServer, manifest: &Path) -> String {
    run_ok(
        server
            .kubectl()
            .args(["apply", "--server-side", "--dry-run=server", "-f"])
            .arg(manifest),
    )
}

/// Every API call `user` made, from the API server's audit log.
pub fn audit_calls(server: &ApiServer, user: &str) -> Vec<Value> {
    server
        .audit_events()
        .into_iter()
        .filter(|e| e["user"]["username"] == user)
        .collect()
}

/// Whether kube-apiserver received the call `e` (an audit event) while it was
/// starting, when it refuses everyone until its RBAC caches are filled.
fn while_starting(server: &ApiServer, e: &Value) -> bool {
    use time::format_description::well_known::Rfc3339;
    let Some(at) = e["requestReceivedTimestamp"]
        .as_str()
        .and_then(|t| time::OffsetDateTime::parse(t, &Rfc3339).ok())
        .map(std::time::SystemTime::from)
    else {
        return false;
    };
    server
        .starting_windows()
        .into_iter()
        .any(|(from, to)| from <= at && at <= to)
}

/// The API calls of one of attache's identities (`user`: the broker's or the
/// ECR controller's ServiceAccount; the calls listed for that ServiceAccount
/// count): none was refused (a 403 means its RBAC lacks a
/// grant; one received while kube-apiserver was restarting is no RBAC
/// verdict), and each is listed in deploy/kubernetes/broker-api-calls.json,
/// the list its RBAC is generated from.
pub fn assert_broker_calls_allowed_and_listed(server: &ApiServer, user: &str, own_ns: &str) {
    let text =
        std::fs::read_to_string(root().join("deploy/kubernetes/broker-api-calls.json")).unwrap();
    let list: Value = serde_json::from_str(&text).unwrap();
    let identity = user.rsplit(':').next().unwrap_or_default();
    let calls: Vec<&Value> = list["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["serviceAccount"] == identity)
        .collect();
    assert!(!calls.is_empty(), "no calls listed for {identity}");
    let made = audit_calls(server, user);
    assert!(!made.is_empty(), "{user} made no API calls");
    for e in &made {
        let code = e["responseStatus"]["code"].as_u64().unwrap_or(0);
        assert!(
            code != 403 || while_starting(server, e),
            "RBAC refused the call {e:#}"
        );
        let obj = &e["objectRef"];
        let mut resource = obj["resource"].as_str().unwrap_or("").to_string();
        if let Some(sub) = obj["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let verb = e["verb"].as_str().unwrap_or("");
        let group = obj["apiGroup"].as_str().unwrap_or("");
        // The audit log names a Namespace object's own name as its namespace.
        let namespace = obj["namespace"]
            .as_str()
            .filter(|_| resource != "namespaces");
        let name = obj["name"].as_str();
        let listed = calls.iter().any(|c| {
            c["verb"] == verb
                && c["group"] == group
                && c["resource"] == resource.as_str()
                && match (c["scope"].as_str(), namespace) {
                    (Some("cluster"), None) => true,
                    (Some("any"), _) => true,
                    (Some("own"), Some(ns)) => ns == own_ns,
                    _ => false,
                }
                && c.get("resourceName").is_none_or(|n| name == n.as_str())
        });
        assert!(
            listed,
            "{user} called {verb} {group}/{resource} ns={namespace:?} name={name:?}, which broker-api-calls.json (and so its RBAC) does not grant"
        );
    }
}

/// A token of ServiceAccount `app` for the broker, bound to no pod.
pub async fn app_token(server: &ApiServer, ns: &str) -> String {
    pod_token(server, ns, None).await
}

/// A token of ServiceAccount `app` for the broker, bound to `pod` (name, uid)
/// as the kubelet projects it.
pub async fn pod_token(server: &ApiServer, ns: &str, pod: Option<(&str, &str)>) -> String {
    workload_token(server, ns, "app", pod).await
}

/// A token of ServiceAccount `sa` for the broker (an hour), bound to `pod`
/// (name, uid) as the kubelet projects it, if given.
pub async fn workload_token(
    server: &ApiServer,
    ns: &str,
    sa: &str,
    pod: Option<(&str, &str)>,
) -> String {
    let spec = TokenSpec {
        audiences: &["attache-broker"],
        seconds: 3600,
        pod,
    };
    server
        .token(ns, sa, spec)
        .await
        .unwrap_or_else(|e| panic!("token for {ns}/{sa}: {e:#}"))
}

/// Sends `request`; its reply's JSON body.
pub async fn json_reply(request: reqwest::RequestBuilder) -> Value {
    let reply = request.send().await.unwrap();
    reply.json().await.unwrap()
}

/// POSTs `csr` with `token` to the certificate API at `addr`: the reply's
/// status and JSON body (null if it has none).
pub async fn request_certificate(
    http: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    csr: &str,
) -> (u16, Value) {
    let reply = http
        .post(format!("https://{addr}/v1/certificates"))
        .bearer_auth(token)
        .json(&json!({"csr": csr}))
        .send()
        .await
        .unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// An HTTPS client trusting only `ca_pem` (the broker's serving CA).
pub fn https_trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}
