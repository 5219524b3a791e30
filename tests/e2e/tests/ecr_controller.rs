//! The ECR pull-secret controller against the real kube-apiserver, as its own
//! ServiceAccount (real RBAC and ValidatingAdmissionPolicies), and the AWS
//! emulator, on a manual clock: Secrets appear with passwords the emulator
//! accepts, tokens are shared, refreshed before expiry, restored after edits,
//! foreign Secrets are left alone, removal cleans up, conflicts, server errors
//! and throttling are survived, a Lease hands the work from one replica to
//! another; a forged "attache" Secret in one namespace changes nothing written
//! to any other; each ServiceAccount's own identity must be trusted by the ECR
//! role; profile and trust anchor overrides are checked.
//!
//! Each test has an API server of its own (see `ecr_common`); the objects the
//! server stores are validated by it. Faults the server cannot produce on cue
//! (409, 5xx) come from the harness's `FaultProxy`.

mod common;
mod ecr_common;

use std::time::Duration;

use attache_broker::ecr::secret::secret_name;
use attache_broker::metrics::Metrics;
use attache_emulator::Operation;
use base64::Engine as _;
use common::{BROKER_NS, CONTROLLER_USER, assert_broker_calls_allowed_and_listed};
use ecr_common::*;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

fn done(w: &World) {
    assert_broker_calls_allowed_and_listed(&w.server, CONTROLLER_USER, BROKER_NS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotated_service_account_gets_a_pull_secret_the_registry_accepts() {
    let (w, ns, host) = World::with_app("team-a", &["existing-creds"]).await;
    w.service_account(
        &ns,
        "typo",
        &[(ANN, "123.dkr.ecr.us-east-1.amazonaws.com")],
        &[],
    )
    .await;
    w.service_account(&ns, "plain", &[], &[]).await;
    let metrics = Metrics::default();
    let (_c, name) = w.serve_app(&ns, &host, &metrics).await;
    // Other entries are kept, ours appended.
    assert_eq!(
        w.pull_secrets(&ns, "app").await,
        vec!["existing-creds".to_string(), name.clone()]
    );
    let secret = w.secret(&ns, &name).await.expect("secret");
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    assert_eq!(
        secret["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "attache"
    );
    let sa = w.sa(&ns, "app").await.unwrap();
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["uid"],
        sa["metadata"]["uid"]
    );
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["kind"],
        "ServiceAccount"
    );
    assert_eq!(secret["metadata"]["annotations"][ANN], host);
    let left = w.time_left(&secret);
    assert!(
        left > time::Duration::hours(11) && left <= time::Duration::hours(12),
        "{left}"
    );

    // A Docker config a registry client would use: auths.<host>.{username,password,auth}.
    let cfg = w
        .docker_config(&ns, &name)
        .await
        .expect("dockerconfigjson parses");
    let entry = &cfg["auths"][&host];
    assert_eq!(entry["username"], "AWS");
    let password = entry["password"].as_str().unwrap();
    let auth = base64::engine::general_purpose::STANDARD
        .decode(entry["auth"].as_str().unwrap())
        .unwrap();
    assert_eq!(auth, format!("AWS:{password}").as_bytes());
    assert_eq!(w.issued_for(password).as_deref(), Some(ROLE));
    assert_eq!(cfg.as_object().unwrap().len(), 1);

    // A bad entry: a Warning Event naming it, and nothing else.
    let bad = "123.dkr.ecr.us-east-1.amazonaws.com";
    w.await_event(&ns, "typo", "InvalidEcrRegistries", &[bad])
        .await;
    assert!(w.secret(&ns, &secret_name("typo")).await.is_none());
    assert!(w.pull_secrets(&ns, "typo").await.is_empty());
    assert!(w.secret(&ns, &secret_name("plain")).await.is_none());
    assert!(
        metrics
            .encode()
            .contains("attache_ecr_secrets_written_total 1"),
        "{}",
        metrics.encode()
    );
    assert!(!metrics.encode().contains(password));
    done(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_sharing_a_role_cost_one_token_call_and_namespace_annotation_covers_every_sa() {
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    let teams = w.app_namespaces(&["n1", "n2", "n3"]).await;
    // Namespace-wide: every SA there, unless its own annotation says otherwise.
    let wide = w.namespace("wide", &[(ANN, &host)]).await;
    // No controller-manager here to create the namespace's `default` SA: as it would.
    w.service_account(&wide, "default", &[], &[]).await;
    w.service_account(&wide, "one", &[], &[]).await;
    w.service_account(&wide, "opted-out", &[(ANN, "")], &[])
        .await;
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;
    let mut listed: Vec<(&str, &str)> = teams.iter().map(|ns| (ns.as_str(), "app")).collect();
    listed.extend([(wide.as_str(), "one"), (wide.as_str(), "default")]);
    eventually(30, "all pull secrets", async || {
        w.each_lists_one(&listed).await
    })
    .await;
    assert!(w.secret(&wide, &secret_name("opted-out")).await.is_none());
    assert!(w.pull_secrets(&wide, "opted-out").await.is_empty());
    assert_eq!(w.token_calls(), 1);
    let p1 = w
        .password(&teams[0], &secret_name("app"), &host)
        .await
        .unwrap();
    assert_eq!(
        w.password(&teams[2], &secret_name("app"), &host)
            .await
            .unwrap(),
        p1
    );
    assert_eq!(
        w.password(&wide, &secret_name("default"), &host)
            .await
            .unwrap(),
        p1
    );
    done(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_travel_refreshes_restores_edits_and_cleans_up() {
    let (w, ns, host) = World::with_app("team", &["keep-me"]).await;
    let (_c, name) = w.serve_app(&ns, &host, &Metrics::default()).await;
    let first = w.password(&ns, &name, &host).await.unwrap();

    // Five hours later nothing is due. (A refresh made too early but seen
    // only after these checks shows below, in when the controller obtained
    // the next token.)
    w.tick(Duration::from_secs(5 * 3600), Duration::from_secs(1800))
        .await;
    let five_hours = attache_rt::clock::Clock::now(&w.clock);
    assert_eq!(w.token_calls(), 1);
    assert_eq!(w.password(&ns, &name, &host).await.unwrap(), first);

    // At 6 h (well before the 12 h expiry) the token is refreshed and written.
    w.tick(Duration::from_secs(3600 + 60), Duration::from_secs(60))
        .await;
    eventually(30, "refreshed password", async || {
        w.password(&ns, &name, &host)
            .await
            .is_some_and(|p| p != first)
    })
    .await;
    assert_eq!(w.token_calls(), 2);
    let second = w.password(&ns, &name, &host).await.unwrap();
    assert_eq!(w.issued_for(&second).as_deref(), Some(ROLE));
    // The controller's own record of the refresh: obtained after the 5 h mark.
    eventually(30, "the refreshed token in the state Secret", async || {
        w.obtained_at(&second).await.is_some()
    })
    .await;
    let obtained = w.obtained_at(&second).await.unwrap();
    assert!(
        obtained > five_hours,
        "refreshed at {obtained}, not after the 5 h mark ({five_hours})"
    );

    // Deleted: restored with the cached token (no AWS call).
    let secrets: Api<Secret> = Api::namespaced(w.admin.clone(), &ns);
    secrets.delete(&name, &Default::default()).await.unwrap();
    eventually(30, "secret restored", async || {
        w.password(&ns, &name, &host).await.as_deref() == Some(second.as_str())
    })
    .await;

    // Edited by someone else: restored.
    let patch = json!({"data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(r#"{"auths":{}}"#)}});
    secrets
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(30, "edit reverted", async || {
        w.password(&ns, &name, &host).await.as_deref() == Some(second.as_str())
    })
    .await;
    assert_eq!(w.token_calls(), 2);

    // Annotation removed: Secret and entry gone, other entries kept.
    let sas: Api<ServiceAccount> = Api::namespaced(w.admin.clone(), &ns);
    let patch = json!({"metadata": {"annotations": {ANN: null}}});
    sas.patch("app", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(30, "cleaned up", async || {
        w.secret(&ns, &name).await.is_none()
            && w.pull_secrets(&ns, "app").await == vec!["keep-me".to_string()]
    })
    .await;
    done(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_secret_with_the_same_name_is_never_touched() {
    let (w, ns, _) = World::with_app("team", &[]).await;
    let name = secret_name("app");
    let foreign = w
        .create_secret(
            &ns,
            json!({"type": "Opaque", "metadata": {"name": name}, "data": {"x": "eQ=="}}),
        )
        .await;
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;
    w.await_event(&ns, "app", "SecretNotOwned", &[&name, "managed-by"])
        .await;
    // The reconcile that sent the Event has finished, and nothing else is queued.
    settled(&metrics).await;
    let now = w.secret(&ns, &name).await.unwrap();
    assert_eq!(
        now["metadata"]["resourceVersion"],
        foreign["metadata"]["resourceVersion"]
    );
    assert_eq!(now["data"], foreign["data"]);
    assert!(w.pull_secrets(&ns, "app").await.is_empty());
    assert_eq!(
        w.app_calls("update", "secrets") + w.app_calls("delete", "secrets"),
        0,
        "no write to the foreign Secret"
    );
    done(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_on_service_account_updates_and_server_errors_converge() {
    let w = World::proxied(&["us-east-1"]).await;
    let (ns, _) = w.app_namespace("team", &["a", "b"]).await;
    let proxy = w.proxy();
    // As if other writers raced it: the ServiceAccount's patches answer 409
    // five times, the Lease's updates twice; and the first Secret create
    // fails with a server error.
    proxy.fail_next(
        5,
        &["PUT", "PATCH"],
        |p| p.contains("/serviceaccounts/"),
        409,
    );
    proxy.fail_next(2, &["PUT"], |p| p.contains("/leases/"), 409);
    let pull_secrets = format!("/api/v1/namespaces/{ns}/secrets");
    proxy.fail_next(1, &["POST"], move |p| p.starts_with(&pull_secrets), 500);
    let metrics = Metrics::default();
    let c = w.controller("a", &metrics).await;
    let name = secret_name("app");
    // The failed create is retried after a backoff, and the Lease renewed,
    // on the controller's clock.
    for _ in 0..300 {
        if w.pull_secrets(&ns, "app").await.contains(&name) && proxy.pending() == 0 {
            break;
        }
        w.tick(Duration::from_secs(1), Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    assert_eq!(
        w.pull_secrets(&ns, "app").await,
        vec!["a".to_string(), "b".to_string(), name.clone()],
        "listed despite the errors, other entries kept"
    );
    assert!(w.secret(&ns, &name).await.is_some());
    assert_eq!(proxy.pending(), 0, "every injected failure was answered");
    assert!(
        c.is_leader(),
        "conflicts on the Lease did not cost the lead"
    );
    let seen = proxy.requests();
    let sa_path = format!("/api/v1/namespaces/{ns}/serviceaccounts/app");
    let conflict = seen
        .iter()
        .position(|r| {
            r.method == "PATCH" && r.path.starts_with(&sa_path) && r.injected == Some(409)
        })
        .expect("an SA patch met a 409");
    assert!(
        seen[conflict..]
            .iter()
            .any(|r| r.method == "GET" && r.path.starts_with(&sa_path) && r.injected.is_none()),
        "a fresh read after the 409: {seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|r| r.method == "POST" && r.path.contains("/secrets") && r.injected == Some(500)),
        "the create met the 500"
    );
    assert!(
        metrics
            .encode()
            .contains("attache_ecr_refresh_failures_total{reason=\"kubernetes\"} 1"),
        "{}",
        metrics.encode()
    );
    common::eventually(
        Duration::from_secs(10),
        "the fresh read in the audit log",
        || {
            let n = w.broker_calls("get", "serviceaccounts");
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;
    done(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_keeps_the_old_secret_and_retries() {
    let (w, ns, host) = World::with_app("team", &[]).await;
    let metrics = Metrics::default();
    let (_c, name) = w.serve_app(&ns, &host, &metrics).await;
    let first = w.password(&ns, &name, &host).await.unwrap();
    let rv = w.secret(&ns, &name).await.unwrap()["metadata"]["resourceVersion"].clone();
    let emu = w.emulator();
    emu.faults().set_throttle_rate(1.0);
    w.tick(Duration::from_secs(6 * 3600), Duration::from_secs(3600))
        .await;
    eventually(30, "refresh failure event", async || {
        w.events_for(&ns, "app")
            .await
            .iter()
            .any(|(r, _)| r.starts_with("EcrToken"))
    })
    .await;
    // Retried with backoff, the old (still valid) Secret untouched.
    let aws_calls = || w.token_calls() + emu.request_count(Operation::CreateSession);
    let calls = aws_calls();
    w.tick(Duration::from_secs(120), Duration::from_secs(5))
        .await;
    let later = aws_calls();
    assert!(later > calls, "retried: {calls} -> {later}");
    assert!(
        later < calls + 40,
        "backoff, not a tight loop: {calls} -> {later}"
    );
    assert_eq!(
        w.secret(&ns, &name).await.unwrap()["metadata"]["resourceVersion"],
        rv
    );
    assert_eq!(w.issued_for(&first).as_deref(), Some(ROLE));
    assert!(
        metrics
            .encode()
            .contains("attache_ecr_refresh_failures_total{reason=\""),
        "{}",
        metrics.encode()
    );
    for (_, note) in w.events_for(&ns, "app").await {
        assert!(!note.contains(&first), "no password in events");
    }
    // AWS recovers: the next retry writes a new token.
    emu.faults().clear();
    for _ in 0..100 {
        if w.password(&ns, &name, &host)
            .await
            .is_some_and(|p| p != first)
        {
            break;
        }
        w.tick(Duration::from_secs(30), Duration::from_secs(10))
            .await;
    }
    let new = w.password(&ns, &name, &host).await.unwrap();
    assert_ne!(new, first);
    assert_eq!(w.issued_for(&new).as_deref(), Some(ROLE));
    done(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_hand_over_loses_no_refresh_and_doubles_no_write() {
    let w = World::new(&["us-east-1"]).await;
    let names = w.app_namespaces(&["n"; 3]).await;
    let host = registry("us-east-1");
    let apps: Vec<(&str, &str)> = names.iter().map(|ns| (ns.as_str(), "app")).collect();
    let (ma, mb) = (Metrics::default(), Metrics::default());
    let a = w.controller("replica-a", &ma).await;
    let name = secret_name("app");
    eventually(30, "A wrote all", async || w.each_lists_one(&apps).await).await;
    let b = attache_broker::ecr::start(&w.args("replica-b", &[]), w.context(&mb))
        .await
        .unwrap();
    w.tick(Duration::from_secs(6), Duration::from_secs(2)).await;
    assert!(a.is_leader() && !b.is_leader(), "one leader while A renews");
    assert_eq!(w.lease().await["spec"]["holderIdentity"], "replica-a");
    // Pull Secret writes by the controller's ServiceAccount, from the audit log.
    let writes = |w: &World| w.app_calls("create", "secrets") + w.app_calls("update", "secrets");
    let before = writes(&w);
    assert_eq!(before, names.len(), "one write per Secret so far");
    let first = w.password(&names[0], &name, &host).await.unwrap();

    // A kept the tokens' state where only attache writes.
    eventually(30, "the token state Secret", async || {
        w.secret(BROKER_NS, attache_broker::ecr::state::STATE_SECRET)
            .await
            .is_some()
    })
    .await;
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
    // B adopted the tokens from the state Secret: no rewrite, no AWS call.
    // (Asserted again, without a wait, by the totals after B's refresh: B
    // writes a refreshed token only after its first reconcile of that
    // ServiceAccount has finished, so those totals hold all of the hand-over.)
    assert_eq!(writes(&w), before, "no double writes on hand-over");
    assert_eq!(w.token_calls(), 1);
    assert_eq!(w.lease().await["spec"]["holderIdentity"], "replica-b");

    // A's refresh schedule carries over: at 6 h B refreshes, once per Secret.
    w.tick(Duration::from_secs(6 * 3600), Duration::from_secs(1800))
        .await;
    eventually(30, "B refreshed", async || {
        for ns in &names {
            if w.password(ns, &name, &host)
                .await
                .is_none_or(|p| p == first)
            {
                return false;
            }
        }
        true
    })
    .await;
    // B's reconciles after its refresh have finished: a doubled write would show.
    settled(&mb).await;
    assert_eq!(writes(&w), before + names.len());
    assert_eq!(w.token_calls(), 2);

    // Graceful shutdown releases the Lease at once.
    b.shutdown().await;
    let lease = w.lease().await;
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    done(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_the_namespace_stops_allowing_loses_its_pull_secret() {
    let (w, ns, host) = World::with_app("team-a", &["existing-creds"]).await;
    let (_c, name) = w.serve_app(&ns, &host, &Metrics::default()).await;

    // The namespace withdraws the role: the secret and its entry go, and an Event says why.
    let patch = json!({"metadata": {"annotations": {"attache.dev/allowed-roles": "[]"}}});
    Api::<Namespace>::all(w.admin.clone())
        .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually(30, "pull secret removed", async || {
        w.secret(&ns, &name).await.is_none()
    })
    .await;
    eventually(30, "entry removed", async || {
        w.pull_secrets(&ns, "app").await == vec!["existing-creds".to_string()]
    })
    .await;
    let events = w.events_for(&ns, "app").await;
    assert!(
        events
            .iter()
            .any(|(r, n)| r == "EcrRoleNotAllowed" && n.contains("attache.dev/allowed-roles")),
        "{events:?}"
    );
    done(&w);
}

/// A Secret a tenant of `ns` could write: every mark of an attache pull
/// Secret (labels, role, registries, token times, a matching data hash),
/// owned by a ServiceAccount there, holding a bogus password that claims to
/// be another team's role's token, obtained "later" and valid for 10 years.
fn forged_pull_secret(name: &str, owner: &Value, host: &str, role: &str) -> Value {
    use attache_broker::ecr::secret::{DATA_KEY, data_hash};
    use k8s_openapi::ByteString;
    let now = time::OffsetDateTime::now_utc();
    let rfc = |t: time::OffsetDateTime| attache_aws::credentials::rfc3339(t);
    let config = json!({"auths": {host: {
        "username": "AWS",
        "password": "forged-password",
        "auth": base64::engine::general_purpose::STANDARD.encode("AWS:forged-password"),
    }}});
    let data = std::collections::BTreeMap::from([(
        DATA_KEY.to_string(),
        ByteString(serde_json::to_vec(&config).unwrap()),
    )]);
    let times = json!([{
        "region": "us-east-1",
        "obtainedAt": rfc(now + time::Duration::hours(1)),
        "expiresAt": rfc(now + time::Duration::days(3650)),
    }]);
    json!({
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/managed-by": "attache",
                "app.kubernetes.io/component": "ecr-pull-secret",
            },
            "annotations": {
                "attache.dev/ecr-role-arn": role,
                "attache.dev/ecr-registries": host,
                "attache.dev/ecr-data-hash": data_hash(&data),
                "attache.dev/ecr-tokens": times.to_string(),
                "attache.dev/ecr-expires-at": rfc(now + time::Duration::days(3650)),
            },
            "ownerReferences": [{
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "name": owner["metadata"]["name"],
                "uid": owner["metadata"]["uid"],
                "controller": true,
            }],
        },
        "data": {DATA_KEY: base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&config).unwrap())},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_attache_secret_in_one_namespace_changes_nothing_written_to_any_other() {
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    // The tenant of `evil` writes what it may write in its own namespace:
    // a ServiceAccount, a pull Secret forged for team-a's role, and a Secret
    // shaped like attache's token state.
    let evil = w.namespace("evil", &[]).await;
    let owner = w.service_account(&evil, "x", &[], &[]).await;
    let forged = w
        .create_secret(
            &evil,
            forged_pull_secret("attache-ecr-forged", &owner, &host, ROLE),
        )
        .await;
    let state = json!([{
        "role": ROLE, "region": "us-east-1", "profile": PROFILE,
        "password": "forged-password",
        "obtainedAt": attache_aws::credentials::rfc3339(time::OffsetDateTime::now_utc()),
        "expiresAt": "2099-01-01T00:00:00Z",
    }]);
    let forged_state = w
        .create_secret(
            &evil,
            json!({
                "type": "Opaque",
                "metadata": {"name": attache_broker::ecr::state::STATE_SECRET, "labels": {"app.kubernetes.io/managed-by": "attache"}},
                "data": {attache_broker::ecr::state::STATE_KEY: base64::engine::general_purpose::STANDARD.encode(state.to_string())},
            }),
        )
        .await;
    let team_a = w.namespace("team-a", &[]).await;
    w.service_account(&team_a, "app", &[(ANN, &host)], &[])
        .await;
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;
    let name = secret_name("app");
    eventually(30, "team-a's pull secret", async || {
        w.password(&team_a, &name, &host).await.is_some()
    })
    .await;
    let password = w.password(&team_a, &name, &host).await.unwrap();
    assert_ne!(password, "forged-password");
    assert_eq!(
        w.issued_for(&password).as_deref(),
        Some(ROLE),
        "a token ECR issued for the role"
    );

    // Forged again while the controller runs, and team-a's Secret must be
    // rewritten (deleted) and a new namespace appears: still the real token.
    let later = w.namespace("evil2", &[]).await;
    let owner2 = w.service_account(&later, "y", &[], &[]).await;
    w.create_secret(
        &later,
        forged_pull_secret("attache-ecr-forged", &owner2, &host, ROLE),
    )
    .await;
    // Time for the controller's Secret watch to deliver the forgery (it
    // changes nothing the test can see, by design).
    tokio::time::sleep(Duration::from_millis(500)).await;
    Api::<Secret>::namespaced(w.admin.clone(), &team_a)
        .delete(&name, &Default::default())
        .await
        .unwrap();
    let team_c = w.namespace("team-c", &[]).await;
    w.service_account(&team_c, "app", &[(ANN, &host)], &[])
        .await;
    eventually(
        30,
        "team-a's Secret restored, team-c's written",
        async || {
            w.password(&team_a, &name, &host).await.is_some()
                && w.password(&team_c, &name, &host).await.is_some()
        },
    )
    .await;
    for ns in [&team_a, &team_c] {
        let p = w.password(ns, &name, &host).await.unwrap();
        assert_eq!(p, password, "{ns}: the one real token");
        let s = w.secret(ns, &name).await.unwrap();
        assert!(
            w.time_left(&s) <= time::Duration::hours(12),
            "{ns}: no adopted far-future expiry"
        );
    }
    // The forged objects themselves are left alone.
    for (ns, obj) in [(&evil, &forged), (&evil, &forged_state)] {
        let now = w
            .secret(ns, obj["metadata"]["name"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(
            now["metadata"]["resourceVersion"],
            obj["metadata"]["resourceVersion"]
        );
    }
    assert_eq!(w.token_calls(), 1);
    done(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_account_needs_the_ecr_roles_trust_for_its_own_identity() {
    let w = World::new(&["us-east-1"]).await;
    let host = registry("us-east-1");
    let ns = w.namespace("team", &[]).await;
    let spiffe = |sa: &str| format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
    // ROLE_C's trust policy names `trusted` only.
    w.trust_only(&[spiffe("trusted")]);
    let ann = [(ANN, host.as_str()), ("attache.dev/ecr-role-arn", ROLE_C)];
    w.service_account(&ns, "trusted", &ann, &[]).await;
    w.service_account(&ns, "other", &ann, &["keep-me"]).await;
    // A profile override nobody allowed.
    let rogue = [
        (ANN, host.as_str()),
        (
            "attache.dev/profile-arn",
            "arn:aws:rolesanywhere:us-east-1:123456789012:profile/elsewhere",
        ),
    ];
    w.service_account(&ns, "rogue", &rogue, &[]).await;
    let metrics = Metrics::default();
    let _c = w.controller("a", &metrics).await;

    eventually(30, "trusted's pull secret", async || {
        w.pull_secrets(&ns, "trusted")
            .await
            .contains(&secret_name("trusted"))
    })
    .await;
    let password = w
        .password(&ns, &secret_name("trusted"), &host)
        .await
        .unwrap();
    assert_eq!(w.issued_for(&password).as_deref(), Some(ROLE_C));
    // `other` shares the role but not the trust: no pull secret, an Event
    // naming its identity, even though a token for the role is at hand.
    w.await_event(
        &ns,
        "other",
        "EcrRoleNotTrusted",
        &[&spiffe("other"), ROLE_C],
    )
    .await;
    w.await_event(
        &ns,
        "rogue",
        "EcrProfileNotAllowed",
        &["attache.dev/profile-arn"],
    )
    .await;
    // The reconciles that sent the Events have finished: a wrong write would show.
    settled(&metrics).await;
    assert!(w.secret(&ns, &secret_name("other")).await.is_none());
    assert_eq!(
        w.pull_secrets(&ns, "other").await,
        vec!["keep-me".to_string()]
    );
    assert!(w.secret(&ns, &secret_name("rogue")).await.is_none());
    // Every session was made with the ServiceAccount's own certificate.
    let sessions = w.emulator().sessions();
    assert!(
        sessions.iter().all(|s| s.san_uri.as_deref()
            != Some("spiffe://cluster.local/ns/attache-system/sa/attache-ecr-controller")),
        "never the controller's own identity"
    );
    assert!(
        sessions
            .iter()
            .any(|s| s.role_arn == ROLE_C
                && s.san_uri.as_deref() == Some(spiffe("trusted").as_str()))
    );

    // The role's trust policy is widened to `other`: it gets the same shared
    // token once AWS accepted its own session (retried after 10 minutes).
    w.trust_only(&[spiffe("trusted"), spiffe("other")]);
    for _ in 0..60 {
        if w.secret(&ns, &secret_name("other")).await.is_some() {
            break;
        }
        w.tick(Duration::from_secs(60), Duration::from_secs(20))
            .await;
    }
    eventually(30, "other's pull secret", async || {
        w.pull_secrets(&ns, "other").await == vec!["keep-me".to_string(), secret_name("other")]
    })
    .await;
    assert_eq!(
        w.password(&ns, &secret_name("other"), &host)
            .await
            .as_deref(),
        Some(password.as_str())
    );
    assert_eq!(
        w.token_calls(),
        1,
        "one token for the role, shared after each ServiceAccount's own verdict"
    );
    assert!(
        w.emulator()
            .sessions()
            .iter()
            .any(|s| s.role_arn == ROLE_C && s.san_uri.as_deref() == Some(spiffe("other").as_str()))
    );
    done(&w);
}
