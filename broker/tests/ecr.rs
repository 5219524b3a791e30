//! The ECR pull-secret controller against the Kubernetes API double and the
//! AWS emulator, on a manual clock: Secrets appear with passwords the emulator
//! accepts, tokens are shared, refreshed before expiry, restored after edits,
//! foreign Secrets are left alone, removal cleans up, conflicts and throttling
//! are survived, and a Lease hands the work from one replica to another.

mod ecr_common;

use std::time::Duration;

use attache_broker::ecr::secret::secret_name;
use attache_broker::metrics::Metrics;
use attache_emulator::Operation;
use base64::Engine as _;
use ecr_common::*;
use serde_json::json;

const ANN: &str = "attache.dev/ecr-registries";

fn validate(w: &World, objs: Vec<serde_json::Value>) {
    let _ = w;
    attache_kube_double::schema::validate(&objs)
        .expect("objects validate against the Kubernetes schemas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_service_account_gets_a_pull_secret_the_registry_accepts() {
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    w.namespace("team-a", &[]);
    w.service_account("team-a", "app", &[(ANN, &host)], &["existing-creds"]);
    w.service_account(
        "team-a",
        "typo",
        &[(ANN, "123.dkr.ecr.us-east-1.amazonaws.com")],
        &[],
    );
    w.service_account("team-a", "plain", &[], &[]);
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;

    let name = secret_name("app");
    eventually(10, "SA lists the pull secret", || {
        w.pull_secrets("team-a", "app").contains(&name)
    })
    .await;
    // Other entries are kept, ours appended.
    assert_eq!(
        w.pull_secrets("team-a", "app"),
        vec!["existing-creds".to_string(), name.clone()]
    );
    let secret = w.secret("team-a", &name).expect("secret");
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "attache"
    );
    let sa = w.sa("team-a", "app").unwrap();
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        sa["metadata"]["uid"]
    );
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "ServiceAccount"
    );
    assert_eq!(secret["metadata"]["annotations"][ANN], host);
    let expires = secret["metadata"]["annotations"]["attache.dev/ecr-expires-at"]
        .as_str()
        .unwrap();
    let expires =
        time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let left = expires - attache_sidecar::clock::Clock::now(&w.clock);
    assert!(
        left > time::Duration::hours(11) && left <= time::Duration::hours(12),
        "{left}"
    );

    // A Docker config a registry client would use: auths.<host>.{username,password,auth}.
    let cfg = w
        .docker_config("team-a", &name)
        .expect("dockerconfigjson parses");
    let entry = &cfg["auths"][&host];
    assert_eq!(entry["username"], "AWS");
    let password = entry["password"].as_str().unwrap();
    let auth = base64::engine::general_purpose::STANDARD
        .decode(entry["auth"].as_str().unwrap())
        .unwrap();
    assert_eq!(auth, format!("AWS:{password}").as_bytes());
    assert_eq!(
        w.emulator().ecr_password_valid(password).as_deref(),
        Some(ROLE)
    );
    assert_eq!(cfg.as_object().unwrap().len(), 1);

    // A bad entry: a Warning Event naming it, and nothing else.
    eventually(10, "warning about the bad registry", || {
        w.events_for("team-a", "typo").iter().any(|(r, n)| {
            r == "InvalidEcrRegistries" && n.contains("123.dkr.ecr.us-east-1.amazonaws.com")
        })
    })
    .await;
    assert!(w.secret("team-a", &secret_name("typo")).is_none());
    assert!(w.pull_secrets("team-a", "typo").is_empty());
    assert!(w.secret("team-a", &secret_name("plain")).is_none());
    assert!(
        metrics
            .encode()
            .contains("attache_ecr_secrets_written_total 1"),
        "{}",
        metrics.encode()
    );
    assert!(!metrics.encode().contains(password));

    validate(&w, vec![secret, w.sa("team-a", "app").unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_sharing_a_role_cost_one_token_call_and_namespace_annotation_covers_every_sa() {
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    for ns in ["n1", "n2", "n3"] {
        w.namespace(ns, &[]);
        w.service_account(ns, "app", &[(ANN, &host)], &[]);
    }
    // Namespace-wide: every SA there, unless its own annotation says otherwise.
    w.namespace("wide", &[(ANN, &host)]);
    w.service_account("wide", "one", &[], &[]);
    w.service_account("wide", "opted-out", &[(ANN, "")], &[]);
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;
    eventually(10, "all pull secrets", || {
        ["n1", "n2", "n3"]
            .iter()
            .all(|ns| w.pull_secrets(ns, "app").len() == 1)
            && w.pull_secrets("wide", "one").len() == 1
            && w.pull_secrets("wide", "default").len() == 1
    })
    .await;
    assert!(w.secret("wide", &secret_name("opted-out")).is_none());
    assert_eq!(
        w.emulator().request_count(Operation::GetAuthorizationToken),
        1
    );
    let p1 = w.password("n1", &secret_name("app"), &host).unwrap();
    assert_eq!(w.password("n3", &secret_name("app"), &host).unwrap(), p1);
    assert_eq!(
        w.password("wide", &secret_name("default"), &host).unwrap(),
        p1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_refreshes_restores_edits_and_cleans_up() {
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    w.namespace("team", &[]);
    w.service_account("team", "app", &[(ANN, &host)], &["keep-me"]);
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;
    let name = secret_name("app");
    eventually(10, "secret", || w.password("team", &name, &host).is_some()).await;
    let first = w.password("team", &name, &host).unwrap();
    let emu = w.emulator();

    // Five hours later nothing is due.
    w.tick(Duration::from_secs(5 * 3600), Duration::from_secs(1800))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(emu.request_count(Operation::GetAuthorizationToken), 1);
    assert_eq!(w.password("team", &name, &host).unwrap(), first);

    // At 6 h (well before the 12 h expiry) the token is refreshed and written.
    w.tick(Duration::from_secs(3600 + 60), Duration::from_secs(60))
        .await;
    eventually(10, "refreshed password", || {
        w.password("team", &name, &host).is_some_and(|p| p != first)
    })
    .await;
    assert_eq!(emu.request_count(Operation::GetAuthorizationToken), 2);
    let second = w.password("team", &name, &host).unwrap();
    assert_eq!(emu.ecr_password_valid(&second).as_deref(), Some(ROLE));

    // Deleted: restored with the cached token (no AWS call).
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(w.client.clone(), "team");
    secrets.delete(&name, &Default::default()).await.unwrap();
    eventually(10, "secret restored", || {
        w.password("team", &name, &host).as_deref() == Some(second.as_str())
    })
    .await;

    // Edited by someone else: restored.
    let patch = json!({"data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(r#"{"auths":{}}"#)}});
    secrets
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    eventually(10, "edit reverted", || {
        w.password("team", &name, &host).as_deref() == Some(second.as_str())
    })
    .await;
    assert_eq!(emu.request_count(Operation::GetAuthorizationToken), 2);
    validate(
        &w,
        vec![
            w.secret("team", &name).unwrap(),
            w.sa("team", "app").unwrap(),
        ],
    );

    // Annotation removed: Secret and entry gone, other entries kept.
    let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(w.client.clone(), "team");
    let patch = json!({"metadata": {"annotations": {ANN: null}}});
    sas.patch(
        "app",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .unwrap();
    eventually(10, "cleaned up", || {
        w.secret("team", &name).is_none()
            && w.pull_secrets("team", "app") == vec!["keep-me".to_string()]
    })
    .await;
    validate(&w, vec![w.sa("team", "app").unwrap()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_secret_with_the_same_name_is_never_touched() {
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    w.namespace("team", &[]);
    let name = secret_name("app");
    let foreign = w.seed(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": name, "namespace": "team"}, "data": {"x": "eQ=="}}),
    );
    w.service_account("team", "app", &[(ANN, &host)], &[]);
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;
    eventually(10, "SecretNotOwned event", || {
        w.events_for("team", "app")
            .iter()
            .any(|(r, n)| r == "SecretNotOwned" && n.contains(&name) && n.contains("managed-by"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = w.secret("team", &name).unwrap();
    assert_eq!(
        now["metadata"]["resourceVersion"],
        foreign["metadata"]["resourceVersion"]
    );
    assert_eq!(now["data"], foreign["data"]);
    assert!(w.pull_secrets("team", "app").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_service_account_updates_converge() {
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    w.namespace("team", &[]);
    w.service_account("team", "app", &[(ANN, &host)], &["a", "b"]);
    // Every update and patch answers 409 a few times (the Lease's too).
    w.double.faults().conflict_next_updates(5);
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;
    let name = secret_name("app");
    eventually(10, "listed despite conflicts", || {
        w.pull_secrets("team", "app").contains(&name)
    })
    .await;
    assert_eq!(
        w.pull_secrets("team", "app"),
        vec!["a".to_string(), "b".to_string(), name]
    );
    assert!(
        w.double.request_count("get", "serviceaccounts") >= 1,
        "fresh reads after 409"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_keeps_the_old_secret_and_retries() {
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    w.namespace("team", &[]);
    w.service_account("team", "app", &[(ANN, &host)], &[]);
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;
    let name = secret_name("app");
    eventually(10, "secret", || w.password("team", &name, &host).is_some()).await;
    let first = w.password("team", &name, &host).unwrap();
    let rv = w.secret("team", &name).unwrap()["metadata"]["resourceVersion"].clone();
    let emu = w.emulator();
    emu.faults().set_throttle_rate(1.0);
    w.tick(Duration::from_secs(6 * 3600), Duration::from_secs(3600))
        .await;
    eventually(10, "refresh failure event", || {
        w.events_for("team", "app")
            .iter()
            .any(|(r, _)| r.starts_with("EcrToken"))
    })
    .await;
    // Retried with backoff, the old (still valid) Secret untouched.
    let calls = emu.request_count(Operation::GetAuthorizationToken)
        + emu.request_count(Operation::CreateSession);
    w.tick(Duration::from_secs(120), Duration::from_secs(5))
        .await;
    let later = emu.request_count(Operation::GetAuthorizationToken)
        + emu.request_count(Operation::CreateSession);
    assert!(later > calls, "retried: {calls} -> {later}");
    assert!(
        later < calls + 40,
        "backoff, not a tight loop: {calls} -> {later}"
    );
    assert_eq!(
        w.secret("team", &name).unwrap()["metadata"]["resourceVersion"],
        rv
    );
    assert_eq!(emu.ecr_password_valid(&first).as_deref(), Some(ROLE));
    assert!(
        metrics
            .encode()
            .contains("attache_ecr_refresh_failures_total{reason=\""),
        "{}",
        metrics.encode()
    );
    for (_, note) in w.events_for("team", "app") {
        assert!(!note.contains(&first), "no password in events");
    }
    // AWS recovers: the next retry writes a new token.
    emu.faults().clear();
    for _ in 0..100 {
        if w.password("team", &name, &host).is_some_and(|p| p != first) {
            break;
        }
        w.tick(Duration::from_secs(30), Duration::from_secs(10))
            .await;
    }
    let new = w.password("team", &name, &host).unwrap();
    assert_ne!(new, first);
    assert_eq!(emu.ecr_password_valid(&new).as_deref(), Some(ROLE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_hand_over_loses_no_refresh_and_doubles_no_write() {
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    let names: Vec<String> = (0..3).map(|i| format!("n{i}")).collect();
    for ns in &names {
        w.namespace(ns, &[]);
        w.service_account(ns, "app", &[(ANN, &host)], &[]);
    }
    let (ma, mb) = (Metrics::default(), Metrics::default());
    let a = w.controller("replica-a", &ma).await;
    let name = secret_name("app");
    eventually(10, "A wrote all", || {
        names.iter().all(|ns| w.pull_secrets(ns, "app").len() == 1)
    })
    .await;
    let b = attache_broker::ecr::start(&w.args("replica-b", &[]), w.context(&mb))
        .await
        .unwrap();
    w.tick(Duration::from_secs(6), Duration::from_secs(2)).await;
    assert!(a.is_leader() && !b.is_leader(), "one leader while A renews");
    let writes = |w: &World| {
        w.double.request_count("create", "secrets") + w.double.request_count("update", "secrets")
    };
    let before = writes(&w);
    let first = w.password("n0", &name, &host).unwrap();

    // A stalls (its process is gone without releasing): B takes over after the lease expires.
    drop(a);
    let mut leading = b.leading();
    for _ in 0..30 {
        if *leading.borrow() {
            break;
        }
        w.tick(Duration::from_secs(2), Duration::from_secs(2)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), leading.wait_for(|l| *l))
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // B adopted the tokens in A's Secrets: no rewrite, no AWS call.
    assert_eq!(writes(&w), before, "no double writes on hand-over");
    assert_eq!(
        w.emulator().request_count(Operation::GetAuthorizationToken),
        1
    );
    let lease = w
        .double
        .get_json(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/{BROKER_NS}/leases/attache-ecr-controller"
        ))
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-b");
    validate(&w, vec![lease]);

    // A's refresh schedule carries over: at 6 h B refreshes, once per Secret.
    w.tick(Duration::from_secs(6 * 3600), Duration::from_secs(1800))
        .await;
    eventually(10, "B refreshed", || {
        names
            .iter()
            .all(|ns| w.password(ns, &name, &host).is_some_and(|p| p != first))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(writes(&w), before + names.len() as u64);
    assert_eq!(
        w.emulator().request_count(Operation::GetAuthorizationToken),
        2
    );

    // Graceful shutdown releases the Lease at once.
    b.shutdown().await;
    let lease = w
        .double
        .get_json(&format!(
            "/apis/coordination.k8s.io/v1/namespaces/{BROKER_NS}/leases/attache-ecr-controller"
        ))
        .unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_the_namespace_stops_allowing_loses_its_pull_secret() {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, Patch, PatchParams};
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    w.namespace("team-a", &[]);
    w.service_account("team-a", "app", &[(ANN, &host)], &["existing-creds"]);
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;
    let name = secret_name("app");
    eventually(10, "pull secret written", || {
        w.secret("team-a", &name).is_some()
    })
    .await;

    // The namespace withdraws the role: the secret and its entry go, and an Event says why.
    let patch = json!({"metadata": {"annotations": {"attache.dev/allowed-roles": "[]"}}});
    Api::<Namespace>::all(w.client.clone())
        .patch("team-a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(10, "pull secret removed", || {
        w.secret("team-a", &name).is_none()
    })
    .await;
    eventually(10, "entry removed", || {
        w.pull_secrets("team-a", "app") == vec!["existing-creds".to_string()]
    })
    .await;
    let events = w.events_for("team-a", "app");
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "EcrRoleNotAllowed" && n.contains("attache.dev/allowed-roles")),
        "{events:?}"
    );
}
