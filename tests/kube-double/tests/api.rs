//! The double's API behaviour, checked through kube-rs clients.

use std::time::Duration;

use attache_kube_double::KubeDouble;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{
    TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, ServiceAccount};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use serde_json::json;

fn status_of(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}),
    )
    .unwrap()
}

async fn ns(d: &KubeDouble, name: &str) {
    d.seed(&Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
}

#[tokio::test]
async fn crud_sets_system_fields_and_versions() {
    let d = KubeDouble::start().await.unwrap();
    ns(&d, "app").await;
    let api: Api<ConfigMap> = Api::namespaced(d.client().await, "app");
    let created = api
        .create(&PostParams::default(), &cm("one", json!({"a": "1"})))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.uid.as_ref().map(String::len), Some(36));
    assert!(meta.creation_timestamp.is_some());
    let rv1: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();

    let mut got = api.get("one").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    got.data.as_mut().unwrap().insert("k".into(), "w".into());
    let replaced = api
        .replace("one", &PostParams::default(), &got)
        .await
        .unwrap();
    let rv2: u64 = replaced
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv1);

    // A stale resourceVersion is a 409 Conflict with the real server's message.
    let (code, reason, msg) = status_of(
        api.replace("one", &PostParams::default(), &got)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(msg.contains("the object has been modified"), "{msg}");

    let (code, reason, msg) = status_of(
        api.create(&PostParams::default(), &cm("one", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (409, "AlreadyExists", "configmaps \"one\" already exists")
    );

    let (code, reason, _) = status_of(api.get("missing").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    assert!(api.get_opt("missing").await.unwrap().is_none());

    api.delete("one", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("one").await.unwrap().is_none());
    assert_eq!(d.request_count("create", "configmaps"), 2);
    assert_eq!(d.request_count("update", "configmaps"), 2);
}

#[tokio::test]
async fn rejects_what_the_api_server_rejects() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(d.client().await, "default");
    let (code, reason, msg) = status_of(
        api.create(&PostParams::default(), &cm("Bad_Name", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    assert!(
        msg.starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value"),
        "{msg}"
    );

    let missing: Api<ConfigMap> = Api::namespaced(d.client().await, "nope");
    let (code, _, msg) = status_of(
        missing
            .create(&PostParams::default(), &cm("x", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, msg.as_str()), (404, "namespaces \"nope\" not found"));

    let pods: Api<Pod> = Api::namespaced(d.client().await, "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "ghost", "containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    let (code, reason, msg) =
        status_of(pods.create(&PostParams::default(), &pod).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert!(msg.contains("serviceaccount \"ghost\" not found"), "{msg}");

    // Wrong JSON types are a 400; an unknown path a 404.
    let raw = d.client().await;
    let req = http::Request::post("/api/v1/namespaces/default/configmaps")
        .header("content-type", "application/json")
        .body(br#"{"metadata":{"name":"x"},"data":{"k":1}}"#.to_vec())
        .unwrap();
    let (code, reason, _) = status_of(raw.request::<ConfigMap>(req).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
}

#[tokio::test]
async fn pods_are_defaulted_and_get_the_api_token_volume() {
    let d = KubeDouble::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(d.client().await, "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}})).unwrap();
    let p = pods.create(&PostParams::default(), &pod).await.unwrap();
    assert!(p.metadata.name.as_deref().unwrap().starts_with("web-"));
    let spec = p.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("default"));
    assert!(
        spec.volumes.unwrap()[0]
            .name
            .starts_with("kube-api-access-")
    );
    assert_eq!(
        spec.containers[0].image_pull_policy.as_deref(),
        Some("IfNotPresent")
    );
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));
}

#[tokio::test]
async fn namespaces_get_metadata_label_default_sa_and_cascade() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<Namespace> = Api::all(d.client().await);
    let n = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        n.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "team"
    );
    assert!(d.get::<ServiceAccount>("team", "default").is_some());
    assert!(
        d.get_json("/api/v1/namespaces/team/configmaps/kube-root-ca.crt")
            .is_some()
    );
    api.delete("team", &DeleteParams::default()).await.unwrap();
    assert!(d.get::<ServiceAccount>("team", "default").is_none());
}

#[tokio::test]
async fn owner_references_are_kept_and_collected() {
    let d = KubeDouble::start().await.unwrap();
    let c = d.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), "default");
    let sa = sas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(c, "default");
    let s: Secret = serde_json::from_value(json!({"metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "v1", "kind": "ServiceAccount", "name": "owner", "uid": sa.metadata.uid}]},
        "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": "{\"auths\":{}}"}})).unwrap();
    let s = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert_eq!(s.metadata.owner_references.as_ref().map(Vec::len), Some(1));
    assert!(
        s.data.unwrap().contains_key(".dockerconfigjson"),
        "stringData folds into data"
    );
    // Changing the type is rejected.
    let (code, _, _) = status_of(
        secrets
            .patch(
                "owned",
                &PatchParams::default(),
                &Patch::Merge(json!({"type": "Opaque"})),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    sas.delete("owner", &DeleteParams::default()).await.unwrap();
    assert!(secrets.get_opt("owned").await.unwrap().is_none());
}

#[tokio::test]
async fn label_and_field_selectors() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(d.client().await, "default");
    for (n, l) in [
        ("a", json!({"app": "web", "tier": "fe"})),
        ("b", json!({"app": "api"})),
        ("c", json!({})),
    ] {
        api.create(&PostParams::default(), &cm(n, l)).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        let mut v: Vec<String> = l
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .filter(|n| n.len() == 1)
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app=web"))
                .await
                .unwrap()
        ),
        ["a"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app in (web,api)"))
                .await
                .unwrap()
        ),
        ["a", "b"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app notin (web)"))
                .await
                .unwrap()
        ),
        ["b", "c"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("!app"))
                .await
                .unwrap()
        ),
        ["c"]
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().labels("app,tier!=be"))
                .await
                .unwrap()
        ),
        ["a", "b"],
        "!= also matches a missing key"
    );
    assert_eq!(
        names(
            api.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        ["b"]
    );
    let (code, _, _) = status_of(
        api.list(&ListParams::default().fields("data.k=v"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
    // Pagination.
    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = api
        .list(
            &ListParams::default()
                .limit(10)
                .continue_token(page.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 2, "3 seeded + kube-root-ca.crt");
}

#[tokio::test]
async fn patch_types() {
    let d = KubeDouble::start().await.unwrap();
    let c = d.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "sa"}, "imagePullSecrets": [{"name": "a"}]}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    // Strategic merge: imagePullSecrets merge by name.
    let sa = sas
        .patch(
            "sa",
            &PatchParams::default(),
            &Patch::Strategic(json!({"imagePullSecrets": [{"name": "b"}]})),
        )
        .await
        .unwrap();
    assert_eq!(sa.image_pull_secrets.unwrap().len(), 2);
    // Merge patch: lists replace; null deletes.
    let sa = sas.patch("sa", &PatchParams::default(), &Patch::Merge(json!({"imagePullSecrets": [{"name": "c"}], "metadata": {"annotations": {"x": "1"}}}))).await.unwrap();
    assert_eq!(sa.image_pull_secrets.unwrap().len(), 1);
    // JSON patch, including a failed test op (422).
    let sa = sas
        .patch(
            "sa",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(
                    json!([{"op": "add", "path": "/metadata/labels", "value": {"l": "v"}}]),
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(sa.metadata.labels.unwrap()["l"], "v");
    let bad = Patch::Json::<()>(
        serde_json::from_value(json!([{"op": "test", "path": "/metadata/name", "value": "other"}]))
            .unwrap(),
    );
    assert_eq!(
        status_of(
            sas.patch("sa", &PatchParams::default(), &bad)
                .await
                .unwrap_err()
        )
        .0,
        422
    );
    // A patch carrying a stale resourceVersion conflicts.
    let stale = Patch::Merge(json!({"metadata": {"resourceVersion": "1", "labels": {"z": "1"}}}));
    assert_eq!(
        status_of(
            sas.patch("sa", &PatchParams::default(), &stale)
                .await
                .unwrap_err()
        )
        .0,
        409
    );
    // Server-side apply creates, records the manager, and drops fields no longer applied.
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let pp = PatchParams::apply("attache-broker");
    let applied = cms.patch("bundle", &pp, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bundle"}, "data": {"a": "1", "b": "2"}}))).await.unwrap();
    let mf = applied.metadata.managed_fields.unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("attache-broker"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let again = cms.patch("bundle", &pp, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bundle"}, "data": {"a": "3"}}))).await.unwrap();
    assert_eq!(
        again.data.unwrap().into_iter().collect::<Vec<_>>(),
        [("a".to_string(), "3".to_string())]
    );
    assert_eq!(d.request_count("patch", "configmaps"), 2);
}

#[tokio::test]
async fn pod_status_subresource_and_spec_immutability() {
    let d = KubeDouble::start().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(d.client().await, "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let p = pods
        .patch_status(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    // Status in a main-resource patch is ignored.
    let p = pods
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Failed"}, "metadata": {"labels": {"a": "b"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    // Image changes are allowed, other spec changes are not.
    pods.patch(
        "p",
        &PatchParams::default(),
        &Patch::Strategic(json!({"spec": {"containers": [{"name": "c", "image": "busybox:2"}]}})),
    )
    .await
    .unwrap();
    let (code, _, msg) = status_of(
        pods.patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hostNetwork": true}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(msg.contains("pod updates may not change fields"), "{msg}");
}

#[tokio::test]
async fn finalizers_delay_deletion() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(d.client().await, "default");
    let mut c = cm("f", json!({}));
    c.metadata.finalizers = Some(vec!["attache.dev/cleanup".into()]);
    api.create(&PostParams::default(), &c).await.unwrap();
    api.delete("f", &DeleteParams::default()).await.unwrap();
    let live = api.get("f").await.unwrap();
    assert!(live.metadata.deletion_timestamp.is_some());
    api.patch(
        "f",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("f").await.unwrap().is_none());
}

#[tokio::test]
async fn watches_stream_events_resume_and_expire() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(d.client().await, "default");
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(&PostParams::default(), &cm("w", json!({"app": "x"})))
        .await
        .unwrap();
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app": "y"}}})),
    )
    .await
    .unwrap();
    api.delete("w", &DeleteParams::default()).await.unwrap();
    // Resume from the list's version: history replays; the selector turns the
    // label change into a DELETED.
    let stream = api
        .watch(&WatchParams::default().labels("app=x").timeout(2), &rv)
        .await
        .unwrap();
    let events: Vec<WatchEvent<ConfigMap>> = stream.take(2).try_collect().await.unwrap();
    assert!(matches!(events[0], WatchEvent::Added(_)));
    assert!(matches!(events[1], WatchEvent::Deleted(_)));
    // Too old a version: ERROR 410.
    d.compact();
    let mut stream = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected a 410 error event, got {other:?}"),
    }
}

#[tokio::test]
async fn kube_runtime_watcher_sees_changes_and_survives_dropped_watches() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(d.client().await, "default");
    let mut events = watcher(api.clone(), watcher::Config::default().labels("app=w")).boxed();
    let mut seen_init_done = false;
    while let Some(ev) = events.try_next().await.unwrap() {
        if matches!(ev, watcher::Event::InitDone) {
            seen_init_done = true;
            break;
        }
    }
    assert!(seen_init_done);
    api.create(&PostParams::default(), &cm("one", json!({"app": "w"})))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), events.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(next, Some(watcher::Event::Apply(c)) if c.metadata.name.as_deref() == Some("one"))
    );
    d.faults().drop_watches();
    tokio::time::sleep(Duration::from_millis(100)).await;
    api.create(&PostParams::default(), &cm("two", json!({"app": "w"})))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(watcher::Event::Apply(c)) = events.try_next().await.unwrap()
                && c.metadata.name.as_deref() == Some("two")
            {
                return c;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(next.metadata.name.as_deref(), Some("two"));
    assert!(d.request_count("watch", "configmaps") >= 2);
}

#[tokio::test]
async fn faults_inject_errors_conflicts_and_latency() {
    let d = KubeDouble::start().await.unwrap();
    let api: Api<Lease> = Api::namespaced(d.client().await, "kube-node-lease");
    let faults = d.faults();
    faults.fail_next(1, 500, Some("create"), Some("leases"));
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})).unwrap();
    assert_eq!(
        status_of(
            api.create(&PostParams::default(), &lease)
                .await
                .unwrap_err()
        )
        .1,
        "InternalError"
    );
    api.create(&PostParams::default(), &lease).await.unwrap();
    faults.conflict_next_updates(1);
    let patch = Patch::Merge(json!({"spec": {"holderIdentity": "b"}}));
    assert_eq!(
        status_of(
            api.patch("l", &PatchParams::default(), &patch)
                .await
                .unwrap_err()
        )
        .0,
        409
    );
    api.patch("l", &PatchParams::default(), &patch)
        .await
        .unwrap();
    faults.set_latency(Duration::from_millis(200));
    let t = std::time::Instant::now();
    api.get("l").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(200));
    faults.clear();
    // kube-rs retries a 429 (with Retry-After) by itself: the second attempt succeeds.
    let before = d.request_count("get", "leases");
    faults.fail_next(1, 429, None, None);
    api.get("l").await.unwrap();
    assert_eq!(d.request_count("get", "leases"), before + 2);
    faults.fail_next(1, 500, Some("get"), None);
    assert_eq!(status_of(api.get("l").await.unwrap_err()).0, 500);
}

#[tokio::test]
async fn token_request_and_review_behave_like_the_api_server() {
    let d = KubeDouble::start().await.unwrap();
    let c = d.client().await;
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), "default");
    let sa = sas
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "app"}})).unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let pod = pods.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "app", "containers": [{"name": "c", "image": "i"}]}})).unwrap()).await.unwrap();

    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["attache-broker".into()]),
            expiration_seconds: Some(600),
            bound_object_ref: Some(k8s_openapi::api::authentication::v1::BoundObjectReference {
                kind: Some("Pod".into()),
                api_version: Some("v1".into()),
                name: Some("p".into()),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued: TokenRequest = sas
        .create_subresource("token", "app", &PostParams::default(), &tr)
        .await
        .unwrap();
    let token = issued.status.unwrap().token.unwrap();
    assert_eq!(d.request_count("create", "serviceaccounts/token"), 1);

    let reviews: Api<TokenReview> = Api::all(c.clone());
    let review = |token: String, aud: Vec<&str>| TokenReview {
        spec: TokenReviewSpec {
            token,
            audiences: Some(aud.into_iter().map(String::from).collect()),
        },
        ..Default::default()
    };
    let r = reviews
        .create(
            &PostParams::default(),
            &review(token.clone(), vec!["other", "attache-broker"]),
        )
        .await
        .unwrap();
    let st = r.status.unwrap();
    assert_eq!(st.authenticated, Some(true));
    assert_eq!(st.audiences.unwrap(), ["attache-broker"]);
    let user = st.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:app")
    );
    assert_eq!(user.uid, sa.metadata.uid);
    assert_eq!(
        user.groups.unwrap(),
        [
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ]
    );
    let extra = user.extra.unwrap();
    assert_eq!(extra["authentication.kubernetes.io/pod-name"], ["p"]);
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"],
        [pod.metadata.uid.clone().unwrap()]
    );

    // Wrong audience, garbage, and a deleted bound pod are unauthenticated (still 201).
    let r = reviews
        .create(
            &PostParams::default(),
            &review(token.clone(), vec!["sts.amazonaws.com"]),
        )
        .await
        .unwrap();
    assert_ne!(r.status.as_ref().unwrap().authenticated, Some(true));
    assert!(r.status.unwrap().error.unwrap().contains("invalid"));
    let r = reviews
        .create(&PostParams::default(), &review("a.b.c".into(), vec![]))
        .await
        .unwrap();
    assert_ne!(r.status.unwrap().authenticated, Some(true));
    pods.delete("p", &DeleteParams::default()).await.unwrap();
    let r = reviews
        .create(
            &PostParams::default(),
            &review(token, vec!["attache-broker"]),
        )
        .await
        .unwrap();
    assert_ne!(r.status.unwrap().authenticated, Some(true));

    // Too short an expiry is Invalid; an unknown SA is NotFound.
    let short = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(60),
            ..Default::default()
        }),
        ..Default::default()
    };
    let e = sas
        .create_subresource::<TokenRequest, TokenRequest>(
            "token",
            "app",
            &PostParams::default(),
            &short,
        )
        .await
        .unwrap_err();
    assert_eq!(status_of(e).0, 422);
    assert!(
        d.token_for("default", "ghost", &["x"], 3600, None)
            .await
            .is_err()
    );

    // An SA token authenticates API requests as that SA.
    let as_sa = d.client_as("default", "app").await.unwrap();
    let own: Api<ServiceAccount> = Api::namespaced(as_sa, "default");
    assert!(own.get("app").await.is_ok());
    sas.delete("app", &DeleteParams::default()).await.unwrap();
    assert!(matches!(own.get("default").await, Err(kube::Error::Api(s)) if s.code == 401));
}

#[tokio::test]
async fn version_and_discovery() {
    let d = KubeDouble::start().await.unwrap();
    d.set_version("1", "28");
    let c = d.client().await;
    let v = c.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "28"));
    let groups = c.list_api_groups().await.unwrap();
    assert!(
        groups
            .groups
            .iter()
            .any(|g| g.name == "coordination.k8s.io")
    );
    let core = c.list_core_api_resources("v1").await.unwrap();
    assert!(
        core.resources
            .iter()
            .any(|r| r.name == "serviceaccounts/token")
    );
}
