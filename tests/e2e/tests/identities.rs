//! attache's two identities against the real kube-apiserver with
//! `deploy/kubernetes` applied: the broker (ServiceAccount `attache-broker`)
//! and the ECR controller (`attache-ecr-controller`), each with a
//! TokenRequest token as a pod of its Deployment gets. Every write either may
//! not make is refused, and the test asserts by what: RBAC (the verb or
//! resource is not granted) or a ValidatingAdmissionPolicy (granted by RBAC,
//! which cannot pin types, name prefixes, labels or fields, but outside what
//! the policy allows). Every write each needs succeeds.

mod common;

use common::*;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const CONTROLLER_SECRETS: &str = "attache-ecr-controller-secrets";
const CONTROLLER_SAS: &str = "attache-ecr-controller-serviceaccounts";
const BROKER_WRITES: &str = "attache-broker-writes";

/// Which layer refused a request.
#[derive(Debug, PartialEq)]
enum By {
    Rbac,
    Policy(&'static str),
}

#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T, kube::Error>, by: By, what: &str) {
    let s = match r {
        Err(kube::Error::Api(s)) => s,
        other => panic!("{what}: expected a refusal ({by:?}), got {other:?}"),
    };
    assert_eq!(s.code, 403, "{what}: {s:?}");
    match by {
        By::Rbac => assert!(
            s.message.contains(" cannot ") && !s.message.contains("ValidatingAdmissionPolicy"),
            "{what}: expected RBAC to refuse: {}",
            s.message
        ),
        By::Policy(policy) => assert!(
            s.message
                .contains(&format!("ValidatingAdmissionPolicy '{policy}'")),
            "{what}: expected {policy} to refuse: {}",
            s.message
        ),
    }
}

#[track_caller]
fn allowed<T>(r: Result<T, kube::Error>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: expected success, got {e}"))
}

/// The API server loads policies asynchronously after they are applied:
/// waits until a dry run of a write the policies refuse is refused (as the
/// controller), for at most a minute.
async fn policies_in_force(server: &attache_e2e::ApiServer) {
    let c = controller_client(server).await;
    let probe: Secret = obj(json!({"metadata": {"name": "attache-ecr-probe"}, "type": "Opaque"}));
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let secrets: Api<Secret> = Api::namespaced(c, "default");
    eventually(
        std::time::Duration::from_secs(60),
        "the ValidatingAdmissionPolicies in force",
        || {
            let secrets = secrets.clone();
            let dry = dry.clone();
            let probe = probe.clone();
            async move {
                match secrets.create(&dry, &probe).await {
                    Err(kube::Error::Api(s)) if s.message.contains("ValidatingAdmissionPolicy") => {
                        Some(())
                    }
                    _ => None,
                }
            }
        },
    )
    .await;
}

/// The shared server with the policies in force, a cluster-admin client and
/// a new namespace `tenant-<n>`.
async fn tenant() -> (&'static attache_e2e::ApiServer, kube::Client, String) {
    let server = deployed().await;
    policies_in_force(server).await;
    let admin = server.admin().await;
    let ns = server.namespace("tenant", json!({}), json!({})).await;
    (server, admin, ns)
}

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn pull_secret(name: &str, owner: &ServiceAccount, labelled: bool, type_: &str) -> Secret {
    let mut v = json!({
        "type": type_,
        "metadata": {
            "name": name,
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "ServiceAccount",
                "name": owner.metadata.name, "uid": owner.metadata.uid, "controller": true,
            }],
        },
        "data": {".dockerconfigjson": base64(br#"{"auths":{}}"#)},
    });
    if labelled {
        v["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "attache"});
    }
    obj(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ecr_controller_may_write_only_its_pull_secrets_and_imagepullsecrets() {
    let (server, admin, ns) = tenant().await;
    let c = controller_client(server).await;
    let sas_admin: Api<ServiceAccount> = Api::namespaced(admin.clone(), &ns);
    let app = sas_admin
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "app"}, "imagePullSecrets": [{"name": "keep-me"}]})),
        )
        .await
        .unwrap();
    let secrets_admin: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    // The tenant's own Secrets.
    secrets_admin
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "team-creds"}, "type": "Opaque", "data": {"k": base64(b"v")}})),
        )
        .await
        .unwrap();
    secrets_admin
        .create(
            &PostParams::default(),
            &pull_secret(
                "attache-ecr-theirs",
                &app,
                false,
                "kubernetes.io/dockerconfigjson",
            ),
        )
        .await
        .unwrap();

    let secrets: Api<Secret> = Api::namespaced(c.clone(), &ns);
    let pp = PostParams::default();
    // Its pull Secret: create, update, delete.
    let mine = allowed(
        secrets
            .create(
                &pp,
                &pull_secret(
                    "attache-ecr-app",
                    &app,
                    true,
                    "kubernetes.io/dockerconfigjson",
                ),
            )
            .await,
        "create its pull Secret",
    );
    let mut changed = mine.clone();
    changed.data.as_mut().unwrap().insert(
        ".dockerconfigjson".into(),
        k8s_openapi::ByteString(br#"{"auths":{"x":{}}}"#.to_vec()),
    );
    allowed(
        secrets.replace("attache-ecr-app", &pp, &changed).await,
        "update its pull Secret",
    );

    // Anything else, though RBAC grants create/update/delete of Secrets everywhere.
    let policy = By::Policy(CONTROLLER_SECRETS);
    let docker = "kubernetes.io/dockerconfigjson";
    for (name, labelled, type_, what) in [
        ("attache-ecr-opaque", true, "Opaque", "an Opaque Secret"),
        (
            "pull-creds",
            true,
            docker,
            "a pull Secret without attache's name prefix",
        ),
        (
            "attache-ecr-nolabel",
            false,
            docker,
            "a pull Secret without attache's label",
        ),
    ] {
        refused(
            secrets
                .create(&pp, &pull_secret(name, &app, labelled, type_))
                .await,
            By::Policy(CONTROLLER_SECRETS),
            what,
        );
    }
    let token_secret: Secret = obj(json!({
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": "attache-ecr-token",
            "labels": {"app.kubernetes.io/managed-by": "attache"},
            "annotations": {"kubernetes.io/service-account.name": "app"},
        },
    }));
    refused(
        secrets.create(&pp, &token_secret).await,
        By::Policy(CONTROLLER_SECRETS),
        "a service-account-token Secret",
    );
    // Taking over the tenant's Secret of attache's name by labelling it.
    let mut theirs = secrets.get("attache-ecr-theirs").await.unwrap();
    theirs.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_string(),
            "attache".to_string(),
        )]
        .into(),
    );
    refused(
        secrets.replace("attache-ecr-theirs", &pp, &theirs).await,
        By::Policy(CONTROLLER_SECRETS),
        "labelling a tenant's Secret as attache's",
    );
    refused(
        secrets.delete("team-creds", &DeleteParams::default()).await,
        By::Policy(CONTROLLER_SECRETS),
        "deleting a tenant's Secret",
    );
    refused(
        secrets
            .delete("attache-ecr-theirs", &DeleteParams::default())
            .await,
        By::Policy(CONTROLLER_SECRETS),
        "deleting a tenant's Secret of attache's name",
    );
    // Its token state: in its own namespace only.
    let state = |ns: &str| -> Secret {
        obj(json!({
            "type": "Opaque",
            "metadata": {"name": "attache-ecr-tokens", "namespace": ns, "labels": {"app.kubernetes.io/managed-by": "attache"}},
            "data": {"tokens.json": base64(b"[]")},
        }))
    };
    refused(
        secrets.create(&pp, &state(&ns)).await,
        By::Policy(CONTROLLER_SECRETS),
        "a state Secret outside its namespace",
    );
    let own: Api<Secret> = Api::namespaced(c.clone(), BROKER_NS);
    allowed(own.create(&pp, &state(BROKER_NS)).await, "its state Secret");
    allowed(
        own.delete("attache-ecr-tokens", &DeleteParams::default())
            .await,
        "delete its state Secret",
    );
    // The CA Secret: readable (it mints ServiceAccount certificates), never writable.
    let ca_admin: Api<Secret> = Api::namespaced(admin.clone(), BROKER_NS);
    if ca_admin.get_opt("attache-ca").await.unwrap().is_none() {
        ca_admin
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "attache-ca"}, "type": "Opaque", "data": {"ca.pem": base64(b"x")}})),
            )
            .await
            .unwrap();
    }
    let mut ca = allowed(own.get("attache-ca").await, "read the CA Secret");
    ca.data
        .as_mut()
        .unwrap()
        .insert("ca.pem".into(), k8s_openapi::ByteString(b"evil".to_vec()));
    refused(
        own.replace("attache-ca", &pp, &ca).await,
        policy,
        "overwrite the CA Secret",
    );
    allowed(
        secrets
            .delete("attache-ecr-app", &DeleteParams::default())
            .await,
        "delete its pull Secret",
    );

    // ServiceAccounts: only its imagePullSecrets entries.
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), &ns);
    let merge = |v: Value| Patch::Merge(v);
    let patch = PatchParams::default();
    allowed(
        sas.patch(
            "app",
            &patch,
            &merge(json!({"imagePullSecrets": [{"name": "keep-me"}, {"name": "attache-ecr-app"}]})),
        )
        .await,
        "add its imagePullSecrets entry",
    );
    for (change, what) in [
        (
            json!({"metadata": {"annotations": {"attache.dev/role-arn": "arn:aws:iam::1:role/admin"}}}),
            "annotate a ServiceAccount",
        ),
        (
            json!({"imagePullSecrets": [{"name": "attache-ecr-app"}]}),
            "remove a tenant's imagePullSecrets entry",
        ),
        (
            json!({"imagePullSecrets": [{"name": "keep-me"}, {"name": "attache-ecr-app"}, {"name": "evil"}]}),
            "add another imagePullSecrets entry",
        ),
        (
            json!({"automountServiceAccountToken": false}),
            "change automountServiceAccountToken",
        ),
    ] {
        refused(
            sas.patch("app", &patch, &merge(change)).await,
            By::Policy(CONTROLLER_SAS),
            what,
        );
    }
    allowed(
        sas.patch(
            "app",
            &patch,
            &merge(json!({"imagePullSecrets": [{"name": "keep-me"}]})),
        )
        .await,
        "remove its imagePullSecrets entry",
    );

    // What RBAC does not grant at all.
    refused(
        sas.create(&pp, &obj(json!({"metadata": {"name": "new"}})))
            .await,
        By::Rbac,
        "create a ServiceAccount",
    );
    let tr: k8s_openapi::api::authentication::v1::TokenRequest =
        obj(json!({"spec": {"audiences": ["x"]}}));
    refused(
        sas.create_token_request("app", &pp, &tr).await,
        By::Rbac,
        "a token for a ServiceAccount",
    );
    refused(
        Api::<Pod>::namespaced(c.clone(), &ns)
            .create(&pp, &obj(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}})))
            .await,
        By::Rbac,
        "create a pod",
    );
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(c.clone());
    refused(
        hooks.get("attache-broker").await,
        By::Rbac,
        "read the webhook configuration",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_may_change_only_its_webhooks_ca_bundle_and_has_no_secrets_elsewhere() {
    let (server, admin, ns) = tenant().await;
    let b = broker_client(server).await;
    Api::<Secret>::namespaced(admin.clone(), &ns)
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "team-creds"}, "type": "Opaque"})),
        )
        .await
        .unwrap();
    let pp = PostParams::default();

    // Secrets outside attache-system: nothing.
    let tenant: Api<Secret> = Api::namespaced(b.clone(), &ns);
    refused(
        tenant.get("team-creds").await,
        By::Rbac,
        "read a tenant's Secret",
    );
    refused(
        tenant
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "x"}, "type": "Opaque"})),
            )
            .await,
        By::Rbac,
        "create a Secret in a tenant namespace",
    );
    refused(
        Api::<Secret>::all(b.clone())
            .list(&ListParams::default())
            .await,
        By::Rbac,
        "list Secrets",
    );
    // In attache-system: create is granted (RBAC cannot pin the name of a
    // create), but only the CA Secrets pass the policy.
    let own: Api<Secret> = Api::namespaced(b.clone(), BROKER_NS);
    refused(
        own.get("attache-ecr-tokens").await,
        By::Rbac,
        "read the ECR controller's Secret",
    );
    let sa_token: Secret = obj(json!({
        "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "stolen", "annotations": {"kubernetes.io/service-account.name": "attache-ecr-controller"}},
    }));
    refused(
        own.create(&pp, &sa_token).await,
        By::Policy(BROKER_WRITES),
        "mint a token Secret for the ECR controller",
    );
    refused(
        own.create(
            &pp,
            &obj(json!({"metadata": {"name": "sneaky"}, "type": "Opaque"})),
        )
        .await,
        By::Policy(BROKER_WRITES),
        "create another Secret in its namespace",
    );
    // No Lease (the ECR controller's), no ServiceAccount writes.
    refused(
        Api::<Lease>::namespaced(b.clone(), BROKER_NS)
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "attache-ecr-controller"}})),
            )
            .await,
        By::Rbac,
        "create the controller's Lease",
    );
    refused(
        Api::<ServiceAccount>::namespaced(b.clone(), &ns)
            .patch(
                "default",
                &PatchParams::default(),
                &Patch::Merge(json!({"imagePullSecrets": [{"name": "x"}]})),
            )
            .await,
        By::Rbac,
        "patch a ServiceAccount",
    );

    // Its webhook configuration: caBundle only.
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(b.clone());
    let current = allowed(
        hooks.get("attache-broker").await,
        "read its webhook configuration",
    );
    let with = |f: &dyn Fn(&mut Value)| -> MutatingWebhookConfiguration {
        let mut v = serde_json::to_value(&current).unwrap();
        f(&mut v);
        obj(v)
    };
    let bundle = base64(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    let updated = allowed(
        hooks
            .replace(
                "attache-broker",
                &pp,
                &with(&|v| v["webhooks"][0]["clientConfig"]["caBundle"] = json!(bundle)),
            )
            .await,
        "set caBundle",
    );
    // Each edit replaces one JSON pointer of the stored object.
    let edits = [
        ("/webhooks/0/namespaceSelector", json!({})),
        (
            "/webhooks/0/objectSelector",
            json!({"matchLabels": {"x": "y"}}),
        ),
        (
            "/webhooks/0/rules/0/operations",
            json!(["CREATE", "UPDATE"]),
        ),
        ("/webhooks/0/failurePolicy", json!("Ignore")),
        ("/webhooks/0/clientConfig/service/name", json!("evil")),
        (
            "/webhooks/0/clientConfig",
            json!({"url": "https://evil.example.com/mutate", "caBundle": bundle}),
        ),
    ];
    for (pointer, value) in edits {
        let mut v = serde_json::to_value(&updated).unwrap();
        let slot = v
            .pointer_mut(pointer)
            .unwrap_or_else(|| panic!("no {pointer} in the webhook configuration"));
        *slot = value;
        refused(
            hooks.replace("attache-broker", &pp, &obj(v)).await,
            By::Policy(BROKER_WRITES),
            &format!("change {pointer}"),
        );
    }
    // Another webhook configuration, or deleting its own: not granted.
    Api::<MutatingWebhookConfiguration>::all(admin.clone())
        .create(
            &pp,
            &obj(json!({"metadata": {"name": "someone-elses"}, "webhooks": []})),
        )
        .await
        .unwrap();
    refused(
        hooks.get("someone-elses").await,
        By::Rbac,
        "read another webhook configuration",
    );
    refused(
        hooks
            .delete("attache-broker", &DeleteParams::default())
            .await,
        By::Rbac,
        "delete its webhook configuration",
    );
    refused(
        hooks
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "mine-too"}, "webhooks": []})),
            )
            .await,
        By::Rbac,
        "create a webhook configuration",
    );
}
