//! Revocation end to end, against the real kube-apiserver (RBAC and
//! ValidatingAdmissionPolicies applied) and the AWS emulator: the broker runs
//! as its own ServiceAccount, the ECR controller as its own, pushing the CRL
//! with `--crl-sync-role-arn`. A deleted pod's certificate stops working at
//! "AWS" (CreateSession refused) within the sync intervals, while another
//! pod's keeps working until `ca revoke --service-account` revokes it too.

mod common;
mod ecr_common;

use std::time::Duration;

use attache_aws::session::{SessionClient, SessionConfig};
use attache_broker::metrics::Metrics;
use attache_emulator::{Operator, Permission};
use attache_pki::{KeyType, PrivateKey, X509Signer};
use common::{BROKER_NS, BROKER_USER, CONTROLLER_USER, assert_broker_calls_allowed_and_listed};
use ecr_common::{ROLE, World, allow_profile, trust_role};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

const PROFILE: &str = ecr_common::PROFILE;
const CRL_ROLE: &str = "arn:aws:iam::123456789012:role/attache-crl-sync";
const CONTROLLER_SPIFFE: &str =
    "spiffe://cluster.local/ns/attache-system/sa/attache-ecr-controller";

/// A workload's key and the certificate the broker issued for it.
struct Workload {
    key: PrivateKey,
    cert_der: Vec<u8>,
    serial: String,
}

impl Workload {
    fn signer(&self) -> X509Signer {
        let key = PrivateKey::from_pkcs8_der(&self.key.to_pkcs8_der()).unwrap();
        X509Signer::new(self.cert_der.clone(), vec![], key).unwrap()
    }
}

#[derive(clap::Parser)]
struct Revoke {
    #[command(flatten)]
    args: attache_broker::ca_cli::RevokeArgs,
}

/// Gets a certificate from the broker for pod `name` (created first) of
/// ServiceAccount `app`, as its sidecar would.
async fn workload(
    w: &World,
    ns: &str,
    name: &str,
    broker: &attache_broker::run::Running,
) -> Workload {
    let pods: Api<Pod> = Api::namespaced(w.admin.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "app"}]}
    }))
    .unwrap();
    let uid = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let token = common::pod_token(&w.server, ns, Some((name, &uid))).await;
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let http = common::https_trusting(&broker.serving_ca_pem);
    let csr = key.certificate_signing_request().unwrap();
    let (_, reply) = common::request_certificate(&http, broker.addr, &token, &csr).await;
    let cert_pem = reply["certificate"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"));
    let (cert_der, info) = attache_pki::cert::parse_certificate_pem(cert_pem).unwrap();
    Workload {
        key,
        cert_der,
        serial: info.serial,
    }
}

/// CreateSession for `ROLE` with the workload's certificate: Ok, or AWS's error.
async fn create_session(w: &World, workload: &Workload) -> Result<(), String> {
    let client = SessionClient::new(SessionConfig {
        region: "us-east-1".into(),
        endpoint: Some(w.emulator().url()),
        profile_arn: PROFILE.into(),
        role_arn: ROLE.into(),
        trust_anchor_arn: common::ANCHOR.into(),
        duration_seconds: 900,
        role_session_name: None,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(15),
        extra_roots_pem: None,
    })
    .unwrap();
    client
        .create_session(&workload.signer())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn crl_of(broker: &attache_broker::run::Running) -> Option<String> {
    let reply = common::https_trusting(&broker.serving_ca_pem)
        .get(format!("https://{}/v1/crl", broker.addr))
        .send()
        .await
        .ok()?;
    (reply.status() == 200).then_some(reply.text().await.ok()?)
}

/// Starts the broker as its own ServiceAccount with the world's CA (which
/// the emulator's trust anchor holds), syncing revocations every second.
async fn start_broker(w: &World, ca_dir: &std::path::Path) -> attache_broker::run::Running {
    let broker_client = common::broker_client(&w.server).await;
    attache_broker::run::start(
        common::broker_args(&[
            "--webhook-config",
            "",
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--revocation-sync-interval",
            "1s",
        ]),
        broker_client,
    )
    .await
    .unwrap()
}

/// Waits (up to a minute) until Roles Anywhere refuses the workload's
/// certificate; returns AWS's error.
async fn refused(w: &World, workload: &Workload, what: &str) -> String {
    common::eventually(Duration::from_secs(60), what, || async {
        create_session(w, workload).await.err()
    })
    .await
}

/// `attache-broker ca revoke --namespace <broker's> --reason "key leaked"
/// ARGS` as the cluster admin; returns what it printed.
async fn ca_revoke(w: &World, args: &[&str]) -> String {
    let base = ["revoke", "--namespace", BROKER_NS, "--reason", "key leaked"];
    let parsed = <Revoke as clap::Parser>::parse_from(base.iter().chain(args));
    let mut out = Vec::new();
    attache_broker::ca_cli::revoke(parsed.args, w.admin.clone(), &mut out)
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// Waits (up to 30 s) until the ledger records the workload's certificate.
async fn recorded(w: &World, workload: &Workload) {
    let what = format!("serial {} recorded in the ledger", workload.serial);
    common::eventually(Duration::from_secs(30), &what, || async {
        let ledger = ledger(w).await;
        ledger
            .issued
            .iter()
            .any(|i| i.serial == workload.serial)
            .then_some(())
    })
    .await;
}

/// The revocation ledger in the broker's ConfigMap.
async fn ledger(w: &World) -> attache_broker::revocation::Ledger {
    let cm: ConfigMap = Api::namespaced(w.admin.clone(), BROKER_NS)
        .get(attache_broker::revocation::CRL_CONFIGMAP)
        .await
        .unwrap();
    let json = &cm.data.unwrap_or_default()[attache_broker::revocation::LEDGER_KEY];
    serde_json::from_str(json).unwrap()
}

/// The ECR controller's CRL push interval in this test.
const CRL_SYNC: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pods_certificate_stops_working_at_aws() {
    let w = World::new(&["us-east-1"]).await;
    let emu = w.emulator();
    // The CRL push role: trusted by the controller's own identity only,
    // allowed the four CRL calls.
    allow_profile(emu, PROFILE, &[ROLE, CRL_ROLE]);
    trust_role(emu, CRL_ROLE, Operator::StringEquals, &[CONTROLLER_SPIFFE]);
    emu.add_permission(Permission {
        role_arn: CRL_ROLE.into(),
        actions: attache_broker::aws_policy::CRL_SYNC_ACTIONS
            .iter()
            .map(|a| a.to_string())
            .collect(),
    });

    // The broker, as its own ServiceAccount, with the world's CA (which the
    // emulator's trust anchor holds).
    let ca_dir = tempfile::tempdir().unwrap();
    std::fs::write(ca_dir.path().join("ca.pem"), w.ca.certificate_pem()).unwrap();
    std::fs::write(
        ca_dir.path().join("ca-key.pem"),
        w.ca.private_key_pem().as_bytes(),
    )
    .unwrap();
    let broker = start_broker(&w, ca_dir.path()).await;

    // The controller pushes the CRL as itself.
    let metrics = Metrics::default();
    let args = w.args(
        "a",
        &[
            "--crl-sync-role-arn",
            CRL_ROLE,
            "--crl-sync-interval",
            &format!("{}s", CRL_SYNC.as_secs()),
        ],
    );
    let controller = attache_broker::ecr::start(&args, w.context(&metrics))
        .await
        .unwrap();

    let ns = w.namespace("team", &[]).await;
    w.service_account(&ns, "app", &[("attache.dev/role-arn", ROLE)], &[])
        .await;
    let web = workload(&w, &ns, "web", &broker).await;
    let api = workload(&w, &ns, "api", &broker).await;
    create_session(&w, &web)
        .await
        .expect("a fresh certificate works");
    create_session(&w, &api)
        .await
        .expect("a fresh certificate works");

    // The first (empty) CRL reaches Roles Anywhere: imported once, enabled.
    common::eventually(Duration::from_secs(60), "the CRL imported", || async {
        emu.crls().first().map(|c| c.enabled).filter(|e| *e)
    })
    .await;

    // The pod goes: its certificate is revoked (deletions are batched over
    // a second), the CRL re-signed, and pushed within one CRL sync interval.
    let deleted = std::time::Instant::now();
    Api::<Pod>::namespaced(w.admin.clone(), &ns)
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let refusal = refused(&w, &web, "web's certificate refused").await;
    let took = deleted.elapsed();
    println!("the deleted pod's certificate was refused at AWS {took:?} after the deletion");
    // The batch, one sync interval, and 3 s for the API server, the watch
    // and the polling of this test on a busy machine.
    let bound = Duration::from_secs(1) + CRL_SYNC + Duration::from_secs(3);
    assert!(
        took <= bound,
        "refused {took:?} after the deletion; expected within {bound:?}"
    );
    assert!(
        refusal.contains("AccessDenied") && refusal.contains(&web.serial),
        "{refusal}"
    );
    create_session(&w, &api)
        .await
        .expect("another pod's certificate still works");

    // The broker serves the CRL it signed, listing exactly web's serial;
    // openssl verifies it with the CA.
    let crl = crl_of(&broker).await.expect("GET /v1/crl");
    assert_eq!(
        w.ca.verify_crl(crl.as_bytes()).unwrap(),
        vec![web.serial.clone()]
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("crl.pem"), &crl).unwrap();
    std::fs::write(dir.path().join("ca.pem"), w.ca.certificate_pem()).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args(["crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-noout"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("verify OK"), "{said}");
    assert_eq!(emu.crls().len(), 1, "one CRL, updated in place");
    let revoked = broker.metrics.encode();
    assert!(
        revoked.contains("attache_certificates_revoked_total{reason=\"pod_deleted\"} 1"),
        "{revoked}"
    );

    // The broker restarts (a new replica in its place): the records the old
    // one kept in the ledger let the new one revoke what the old one issued.
    let job = workload(&w, &ns, "job", &broker).await;
    create_session(&w, &job)
        .await
        .expect("a fresh certificate works");
    recorded(&w, &job).await;
    broker.shutdown().await;
    let broker = start_broker(&w, ca_dir.path()).await;
    Api::<Pod>::namespaced(w.admin.clone(), &ns)
        .delete("job", &DeleteParams::default())
        .await
        .unwrap();
    refused(&w, &job, "job's certificate refused after the restart").await;
    let mut listed =
        w.ca.verify_crl(crl_of(&broker).await.unwrap().as_bytes())
            .unwrap();
    listed.sort();
    let mut expected = vec![web.serial.clone(), job.serial.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    // An operator revokes by serial (twice: it is listed once, with the
    // certificate's expiry from the records) and by pod.
    let batch = workload(&w, &ns, "batch", &broker).await;
    let cron = workload(&w, &ns, "cron", &broker).await;
    for fresh in [&batch, &cron] {
        create_session(&w, fresh)
            .await
            .expect("a fresh certificate works");
    }
    recorded(&w, &batch).await;
    let said = ca_revoke(&w, &["--serial", &batch.serial]).await;
    assert!(
        said.starts_with("recorded 1 serial(s) (0 listed already)"),
        "{said}"
    );
    let said = ca_revoke(&w, &["--serial", &batch.serial]).await;
    assert!(
        said.starts_with("recorded 0 serial(s) (1 listed already)"),
        "{said}"
    );
    ca_revoke(&w, &["--pod", &format!("{ns}/cron")]).await;
    refused(&w, &batch, "batch's certificate refused").await;
    refused(&w, &cron, "cron's certificate refused").await;
    let l = ledger(&w).await;
    let listed: Vec<_> = l
        .revoked
        .iter()
        .filter(|e| e.serial == batch.serial)
        .collect();
    let record = l.issued.iter().find(|i| i.serial == batch.serial).unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].not_after, record.not_after);

    // An operator revokes the ServiceAccount: api's certificate goes too.
    ca_revoke(&w, &["--service-account", &format!("{ns}/app")]).await;
    refused(&w, &api, "api's certificate refused").await;
    let pushed = metrics.encode();
    assert!(
        pushed.contains("attache_crl_pushes_total{reason=\"imported\"} 1"),
        "{pushed}"
    );
    assert!(
        pushed.contains("attache_crl_pushes_total{reason=\"updated\"}"),
        "{pushed}"
    );
    let revoked = broker.metrics.encode();
    assert!(
        revoked.contains("attache_certificates_revoked_total{reason=\"pod_deleted\"} 1"),
        "{revoked}"
    );
    // cron (by pod) and api (by ServiceAccount) were matched by the broker;
    // batch's serial was listed by the command itself.
    assert!(
        revoked.contains("attache_certificates_revoked_total{reason=\"requested\"} 2"),
        "{revoked}"
    );

    controller.shutdown().await;
    broker.shutdown().await;
    assert_broker_calls_allowed_and_listed(&w.server, BROKER_USER, BROKER_NS);
    assert_broker_calls_allowed_and_listed(&w.server, CONTROLLER_USER, BROKER_NS);
}
