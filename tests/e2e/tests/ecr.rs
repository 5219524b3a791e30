//! The ECR pull-secret controller against the real kube-apiserver, as its own
//! ServiceAccount (real RBAC and ValidatingAdmissionPolicies): Secrets, `imagePullSecrets` and
//! ownerReferences as the server stores them; two controllers contending for
//! the real Lease; and kube-apiserver stopped and restarted mid-run.

mod common;
mod ecr_common;

use std::sync::Arc;
use std::time::Duration;

use attache_broker::ecr::EcrHandle;
use attache_broker::metrics::Metrics;
use attache_e2e::ApiServer;
use attache_emulator::{Emulator, EmulatorConfig, Operator};
use attache_pki::{CaOptions, CertificateAuthority};
use clap::Parser as _;
use common::*;
use ecr_common::{ANN, PROFILE as ECR_PROFILE, allow_profile, ecr_args, ecr_context, trust_role};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

const HOST: &str = "123456789012.dkr.ecr.us-east-1.amazonaws.com";
const SECRET: &str = "attache-ecr-app";

struct World {
    server: &'static ApiServer,
    ca: Arc<CertificateAuthority>,
    emulator: Emulator,
}

async fn world(server: &'static ApiServer) -> World {
    let ca = Arc::new(
        CertificateAuthority::create(&CaOptions::default(), time::OffsetDateTime::now_utc())
            .unwrap(),
    );
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emulator.add_trust_anchor(ANCHOR, ca.certificate_pem(), true);
    allow_profile(&emulator, ECR_PROFILE, &[ECR_ROLE]);
    // Per-ServiceAccount sessions: the pulling ServiceAccounts (the tests' `app`, `worker`).
    let pulling = [
        "spiffe://cluster.local/ns/*/sa/app",
        "spiffe://cluster.local/ns/*/sa/worker",
    ];
    trust_role(&emulator, ECR_ROLE, Operator::StringLike, &pulling);
    World {
        server,
        ca,
        emulator,
    }
}

/// A world on an API server of its own with `deploy/kubernetes` applied
/// (leaked: it lives as long as the test binary).
async fn dedicated_world() -> World {
    let server: &'static ApiServer = Box::leak(Box::new(
        ApiServer::start(Default::default()).await.unwrap(),
    ));
    apply_deploy(server);
    world(server).await
}

impl World {
    /// A controller as its own ServiceAccount, with a short Lease.
    async fn controller(&self, identity: &str) -> EcrHandle {
        let lease = [
            "--ecr-lease-duration",
            "3s",
            "--ecr-lease-renew-deadline",
            "2s",
            "--ecr-lease-retry-period",
            "500ms",
        ];
        let args = ecr_args(ECR_ROLE, &self.emulator.url(), identity, &lease);
        let clock = Arc::new(attache_rt::clock::SystemClock);
        let metrics = Metrics::default();
        let ctx = ecr_context(
            controller_client(self.server).await,
            self.ca.clone(),
            &metrics,
            clock,
        );
        attache_broker::ecr::start(&args, ctx).await.unwrap()
    }

    async fn pull_secret_team(&self) -> (kube::Client, String) {
        let admin = self.server.admin().await;
        let ns = team_namespace(self.server, &[ECR_ROLE]).await;
        let sa = serde_json::from_value(json!({
            "metadata": {"name": "app", "annotations": {ANN: HOST}},
            "imagePullSecrets": [{"name": "existing-creds"}],
        }))
        .unwrap();
        Api::<ServiceAccount>::namespaced(admin.clone(), &ns)
            .create(&Default::default(), &sa)
            .await
            .unwrap();
        (admin, ns)
    }
}

async fn leading(h: &EcrHandle) -> bool {
    *h.leading().borrow()
}

/// Waits until `h`'s elector has finished `n` more tries for the Lease
/// (each publishes its verdict, leading or not; a failed request does not).
async fn lease_tries(h: &EcrHandle, n: usize) {
    let mut verdicts = h.leading();
    verdicts.borrow_and_update();
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(30), verdicts.changed())
            .await
            .expect("the elector tries again")
            .expect("the elector runs");
    }
}

fn pull_secrets(sa: &ServiceAccount) -> Vec<String> {
    sa.image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.clone())
        .collect()
}

/// Waits until the SA lists attache's pull secret and the Secret exists; returns it.
async fn converged(admin: &kube::Client, ns: &str) -> (ServiceAccount, Secret) {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), ns);
    eventually(
        Duration::from_secs(60),
        "the pull secret is written and listed",
        || {
            let (sas, secrets) = (sas.clone(), secrets.clone());
            async move {
                let sa = sas.get("app").await.ok()?;
                let secret = secrets.get_opt(SECRET).await.ok()??;
                pull_secrets(&sa)
                    .contains(&SECRET.to_string())
                    .then_some((sa, secret))
            }
        },
    )
    .await
}

fn password(secret: &Secret) -> String {
    let raw = &secret.data.as_ref().unwrap()[".dockerconfigjson"].0;
    let cfg: Value = serde_json::from_slice(raw).unwrap();
    cfg["auths"][HOST]["password"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_secrets_through_real_rbac_and_a_real_lease_hand_over() {
    let w = world(deployed().await).await;
    let (admin, ns) = w.pull_secret_team().await;
    let a = w.controller("replica-a").await;
    let (sa, secret) = converged(&admin, &ns).await;
    assert_eq!(
        pull_secrets(&sa),
        ["existing-creds", SECRET],
        "ours appended, others kept"
    );
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ServiceAccount", "app")
    );
    assert_eq!(Some(&owner.uid), sa.metadata.uid.as_ref());
    assert_eq!(
        secret.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "attache"
    );
    assert_eq!(
        w.emulator.ecr_password_valid(&password(&secret)).as_deref(),
        Some(ECR_ROLE)
    );
    assert!(leading(&a).await);

    // A second replica contends for the same real Lease and waits: after
    // it has looked at the Lease four times (its 500 ms retry period, 2 s),
    // exactly one leads.
    let b = w.controller("replica-b").await;
    lease_tries(&b, 4).await;
    assert!(leading(&a).await && !leading(&b).await, "exactly one leads");
    let leases: Api<Lease> = Api::namespaced(admin.clone(), BROKER_NS);
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    assert_eq!(
        holder(leases.get("attache-ecr-controller").await.unwrap()),
        "replica-a"
    );

    // The leader stops; the other takes over and keeps the Secret fresh.
    a.shutdown().await;
    let mut l = b.leading();
    tokio::time::timeout(Duration::from_secs(30), l.wait_for(|x| *x))
        .await
        .expect("replica-b takes over")
        .unwrap();
    assert_eq!(
        holder(leases.get("attache-ecr-controller").await.unwrap()),
        "replica-b"
    );
    // The new leader repairs a deleted Secret.
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .delete(SECRET, &DeleteParams::default())
        .await
        .unwrap();
    let (_, restored) = converged(&admin, &ns).await;
    assert_ne!(restored.metadata.uid, secret.metadata.uid, "written again");
    b.shutdown().await;
    assert_broker_calls_allowed_and_listed(w.server, CONTROLLER_USER, BROKER_NS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_after_the_api_server_restarts() {
    // A dedicated API server: this test stops it.
    let w = dedicated_world().await;
    let server = w.server;
    let (admin, ns) = w.pull_secret_team().await;
    let c = w.controller("replica-a").await;
    converged(&admin, &ns).await;

    server.stop_apiserver().unwrap();
    server.start_apiserver().await.unwrap();
    let admin = server.admin().await;

    // Changes after the restart reach the controller through its resumed watches.
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let second =
        serde_json::from_value(json!({"metadata": {"name": "worker", "annotations": {ANN: HOST}}}))
            .unwrap();
    sas.create(&Default::default(), &second).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    eventually(
        Duration::from_secs(90),
        "a Secret for the SA created after the restart",
        || {
            let secrets = secrets.clone();
            async move {
                secrets
                    .get_opt("attache-ecr-worker")
                    .await
                    .ok()?
                    .map(|_| ())
            }
        },
    )
    .await;
    sas.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {ANN: null}}})),
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(60),
        "the Secret of the un-annotated SA is removed",
        || {
            let secrets = secrets.clone();
            async move { secrets.get_opt(SECRET).await.ok()?.is_none().then_some(()) }
        },
    )
    .await;
    // Nothing lost, nothing doubled: one managed Secret, for `worker`.
    let managed = secrets
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=attache"))
        .await
        .unwrap();
    let names: Vec<_> = managed
        .items
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names, ["attache-ecr-worker"]);
    c.shutdown().await;
    assert_broker_calls_allowed_and_listed(server, CONTROLLER_USER, BROKER_NS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ecr_controller_command_waits_for_the_ca_secret_then_serves_pull_secrets() {
    // A dedicated API server: the controller campaigns for the one Lease.
    let w = dedicated_world().await;
    let server = w.server;
    let (admin, ns) = w.pull_secret_team().await;
    let client = controller_client(server).await;
    #[derive(clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        c: attache_broker::ecr::cli::EcrControllerArgs,
    }
    let url = w.emulator.url();
    let args = Cmd::parse_from([
        "attache-broker",
        "--admin-listen",
        "127.0.0.1:0",
        "--profile-arn",
        ECR_PROFILE,
        "--trust-anchor-arn",
        ANCHOR,
        "--ecr-role-arn",
        ECR_ROLE,
        "--ecr-endpoint",
        &url,
        "--rolesanywhere-endpoint",
        &url,
        "--ecr-identity",
        "command",
        "--log-format",
        "text",
    ])
    .c;
    let running = attache_broker::ecr::cli::start(args, client).await.unwrap();
    let readyz = format!("http://{}/readyz", running.admin_addr);
    let status = || async { reqwest::get(&readyz).await.unwrap().status().as_u16() };
    // No CA Secret yet (the broker creates it): alive, not ready, nothing written.
    assert_eq!(
        reqwest::get(format!("http://{}/healthz", running.admin_addr))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(status().await, 503);
    // The broker's CA appears; the controller reads it (get by name) and works.
    let ca = json!({
        "metadata": {"name": "attache-ca", "labels": {"app.kubernetes.io/managed-by": "attache"}},
        "type": "Opaque",
        "data": {
            "ca.pem": base64(w.ca.trust_anchor_pem().as_bytes()),
            "ca-key.pem": base64(w.ca.private_key_pem().as_bytes()),
        },
    });
    Api::<Secret>::namespaced(admin.clone(), BROKER_NS)
        .create(&Default::default(), &serde_json::from_value(ca).unwrap())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "ready", || async {
        (status().await == 200).then_some(())
    })
    .await;
    let (_, secret) = converged(&admin, &ns).await;
    assert_eq!(
        w.emulator.ecr_password_valid(&password(&secret)).as_deref(),
        Some(ECR_ROLE)
    );
    assert!(running.is_ready());
    let metrics = metrics_at(running.admin_addr).await;
    assert!(
        metrics.contains("attache_ecr_secrets_written_total 1"),
        "{metrics}"
    );
    running.shutdown().await.unwrap();
    assert_broker_calls_allowed_and_listed(server, CONTROLLER_USER, BROKER_NS);
}
