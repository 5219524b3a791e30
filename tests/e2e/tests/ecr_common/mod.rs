//! A world for the ECR controller tests (`ecr_controller`) and the broker's
//! ECR benchmark (which includes this file and `common/mod.rs` by path): a
//! dedicated etcd + kube-apiserver with `deploy/kubernetes` applied (RBAC and
//! ValidatingAdmissionPolicies), AWS emulators (one per region) trusting a
//! cluster CA, ECR roles whose trust policies admit ServiceAccounts' own
//! SPIFFE IDs (the controller's sessions are per ServiceAccount), and
//! controllers that run as the controller's own ServiceAccount
//! (`attache-ecr-controller`, real RBAC) on a manual clock.
//!
//! Why a dedicated API server per world: the controller watches every
//! namespace and campaigns for the one Lease its RBAC allows
//! (`attache-ecr-controller`), so two tests' controllers on one server would
//! reconcile each other's ServiceAccounts and fight over the Lease.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use attache_broker::ecr::secret::secret_name;
use attache_broker::ecr::{EcrArgs, EcrContext, EcrHandle};
use attache_broker::metrics::Metrics;
use attache_e2e::{ApiServer, ApiServerOptions, FaultProxy};
use attache_emulator::{Condition, Emulator, EmulatorConfig, Operation, Operator, Profile, Role};
use attache_pki::{CaOptions, CertificateAuthority};
use attache_rt::clock::{Clock, ManualClock};
use clap::Parser;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::common::{ANCHOR, BROKER_NS, CONTROLLER_USER};

pub const ACCOUNT: &str = "123456789012";
pub const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/ecr";
pub const ROLE: &str = "arn:aws:iam::123456789012:role/ecr-pull";
pub const ROLE_B: &str = "arn:aws:iam::123456789012:role/ecr-pull-b";
/// In the profile, trusting nobody until a test says whom (`trust_only`).
pub const ROLE_C: &str = "arn:aws:iam::123456789012:role/ecr-pull-c";
/// Every ServiceAccount of the cluster (ROLE and ROLE_B trust it).
pub const ANY_SA: &str = "spiffe://cluster.local/ns/*/sa/*";
pub const ANN: &str = "attache.dev/ecr-registries";

/// The registry host of `region` in the test account.
pub fn registry(region: &str) -> String {
    format!("{ACCOUNT}.dkr.ecr.{region}.amazonaws.com")
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    ecr: EcrArgs,
}

pub struct World {
    pub server: ApiServer,
    /// cluster-admin, to seed and read objects.
    pub admin: kube::Client,
    /// The controller's ServiceAccount (through the proxy when there is one):
    /// what the controllers run as.
    pub client: kube::Client,
    /// The fault proxy between the controllers and the API server, if asked for.
    pub proxy: Option<FaultProxy>,
    pub ca: Arc<CertificateAuthority>,
    /// Emulators by region (the first is the trust anchor's region).
    pub emulators: BTreeMap<String, Emulator>,
    pub clock: ManualClock,
}

impl World {
    /// A dedicated API server with deploy/kubernetes applied and one emulator per region.
    pub async fn new(regions: &[&str]) -> World {
        Self::start(regions, false).await
    }

    /// A us-east-1 world with [`World::app_namespace`]`(prefix, pull_secrets)`:
    /// (world, namespace, registry host).
    pub async fn with_app(prefix: &str, pull_secrets: &[&str]) -> (World, String, String) {
        let w = World::new(&["us-east-1"]).await;
        let (ns, host) = w.app_namespace(prefix, pull_secrets).await;
        (w, ns, host)
    }

    /// Like [`World::new`], with the controllers' requests going through a [`FaultProxy`].
    pub async fn proxied(regions: &[&str]) -> World {
        Self::start(regions, true).await
    }

    async fn start(regions: &[&str], proxied: bool) -> World {
        let server = ApiServer::start(ApiServerOptions::default())
            .await
            .unwrap_or_else(|e| panic!("starting etcd + kube-apiserver: {e:#}"));
        crate::common::apply_deploy(&server);
        let admin = server.admin().await;
        let token = crate::common::controller_token(&server).await;
        let (client, proxy) = if proxied {
            let proxy = FaultProxy::start(&server.url, server.ca_pem())
                .await
                .expect("fault proxy");
            let client = server
                .client_with_token_via(proxy.url(), proxy.ca_pem(), &token)
                .await;
            (client, Some(proxy))
        } else {
            (server.client_with_token(&token).await, None)
        };
        let ca = Arc::new(
            CertificateAuthority::create(&CaOptions::default(), OffsetDateTime::now_utc())
                .expect("CA"),
        );
        let mut emulators = BTreeMap::new();
        for region in regions {
            let emu = Emulator::start(EmulatorConfig {
                region: region.to_string(),
                ..EmulatorConfig::default()
            })
            .await
            .expect("emulator");
            emu.add_trust_anchor(ANCHOR, ca.certificate_pem(), true);
            allow_profile(&emu, PROFILE, &[ROLE, ROLE_B, ROLE_C]);
            for role in [ROLE, ROLE_B] {
                trust_role(&emu, role, Operator::StringLike, &[ANY_SA]);
            }
            trust_role(&emu, ROLE_C, Operator::StringEquals, &["spiffe://nobody"]);
            emulators.insert(region.to_string(), emu);
        }
        World {
            server,
            admin,
            client,
            proxy,
            ca,
            emulators,
            clock: ManualClock::new(OffsetDateTime::now_utc()),
        }
    }

    /// ROLE_C's trust policy (in every emulator) admits exactly these SPIFFE IDs.
    pub fn trust_only(&self, spiffe_ids: &[String]) {
        for emu in self.emulators.values() {
            trust_role(emu, ROLE_C, Operator::StringEquals, spiffe_ids);
        }
    }

    pub fn emulator(&self) -> &Emulator {
        self.emulators.values().next().expect("an emulator")
    }

    pub fn proxy(&self) -> &FaultProxy {
        self.proxy
            .as_ref()
            .expect("a world started with World::proxied")
    }

    /// Creates a namespace `<prefix>-<n>` allowing both ECR roles, with extra
    /// annotations; returns its name.
    pub async fn namespace(&self, prefix: &str, annotations: &[(&str, &str)]) -> String {
        let mut ann: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ann.entry("attache.dev/allowed-roles".into())
            .or_insert_with(|| format!("[\"{ROLE}\", \"{ROLE_B}\", \"{ROLE_C}\"]"));
        self.server
            .namespace(prefix, serde_json::to_value(ann).unwrap(), json!({}))
            .await
    }

    /// Creates a ServiceAccount (as cluster-admin).
    pub async fn service_account(
        &self,
        ns: &str,
        name: &str,
        annotations: &[(&str, &str)],
        pull_secrets: &[&str],
    ) -> Value {
        let sa = service_account_object(name, annotations, pull_secrets);
        self.create(ns, &sa).await
    }

    /// Creates a Secret from its JSON (as cluster-admin); returns it as stored.
    pub async fn create_secret(&self, ns: &str, obj: Value) -> Value {
        let secret: Secret = serde_json::from_value(obj).unwrap();
        self.create(ns, &secret).await
    }

    /// Creates `obj` in `ns` (as cluster-admin); returns it as stored.
    async fn create<K: Namespaced>(&self, ns: &str, obj: &K) -> Value {
        let created = Api::<K>::namespaced(self.admin.clone(), ns)
            .create(&PostParams::default(), obj)
            .await
            .unwrap_or_else(|e| {
                let name = obj.meta().name.as_deref().unwrap_or_default();
                panic!("creating {} {ns}/{name}: {e}", K::kind(&()))
            });
        serde_json::to_value(created).unwrap()
    }

    /// Namespace `<prefix>-<n>` with ServiceAccount `app` asking for
    /// us-east-1's registry and listing `pull_secrets`: (namespace, registry host).
    pub async fn app_namespace(&self, prefix: &str, pull_secrets: &[&str]) -> (String, String) {
        let host = registry("us-east-1");
        let ns = self.namespace(prefix, &[]).await;
        self.service_account(&ns, "app", &[(ANN, &host)], pull_secrets)
            .await;
        (ns, host)
    }

    /// Flags for a controller against this world's emulators.
    pub fn args(&self, identity: &str, extra: &[&str]) -> EcrArgs {
        let endpoints: Vec<String> = self
            .emulators
            .iter()
            .map(|(r, e)| format!("{r}={}", e.url()))
            .collect();
        let endpoints = endpoints.join(",");
        let settings = [
            // The session client stamps and the emulator checks Roles Anywhere
            // credentials on the wall clock while the controller judges them on
            // the manual clock: 12 h sessions stay valid across the time travel.
            "--ecr-session-duration",
            "43200",
            // The emulators' CreateSession quota (AWS's default, 10/s) is
            // shared by every ServiceAccount's session.
            "--ecr-session-rate",
            "8",
        ];
        ecr_args(ROLE, &endpoints, identity, &[&settings[..], extra].concat())
    }

    pub fn context(&self, metrics: &Metrics) -> EcrContext {
        let clock = Arc::new(self.clock.clone());
        ecr_context(self.client.clone(), self.ca.clone(), metrics, clock)
    }

    /// Starts a controller and waits until it leads.
    pub async fn controller(&self, identity: &str, metrics: &Metrics) -> EcrHandle {
        let h = attache_broker::ecr::start(&self.args(identity, &[]), self.context(metrics))
            .await
            .expect("start");
        let mut l = h.leading();
        tokio::time::timeout(Duration::from_secs(30), l.wait_for(|x| *x))
            .await
            .expect("leads in time")
            .expect("elector alive");
        h
    }

    /// [`World::app_namespace`] for each of `prefixes`, without pull secrets
    /// of their own; returns the namespaces.
    pub async fn app_namespaces(&self, prefixes: &[&str]) -> Vec<String> {
        let mut namespaces = Vec::new();
        for prefix in prefixes {
            namespaces.push(self.app_namespace(prefix, &[]).await.0);
        }
        namespaces
    }

    /// Starts controller `a` (counting into `metrics`) and waits until
    /// ServiceAccount `app` of `ns` lists its pull Secret, which holds a
    /// password for `host`; returns the controller and the Secret's name.
    pub async fn serve_app(&self, ns: &str, host: &str, metrics: &Metrics) -> (EcrHandle, String) {
        let controller = self.controller("a", metrics).await;
        let name = secret_name("app");
        eventually(30, "app's pull secret written and listed", async || {
            self.password(ns, &name, host).await.is_some()
                && self.pull_secrets(ns, "app").await.contains(&name)
        })
        .await;
        (controller, name)
    }

    pub async fn secret(&self, ns: &str, name: &str) -> Option<Value> {
        self.get::<Secret>(ns, name).await
    }

    pub async fn sa(&self, ns: &str, name: &str) -> Option<Value> {
        self.get::<ServiceAccount>(ns, name).await
    }

    /// Object `ns/name` of kind `K` as JSON (as cluster-admin), if it exists.
    async fn get<K: Namespaced>(&self, ns: &str, name: &str) -> Option<Value> {
        let obj = Api::<K>::namespaced(self.admin.clone(), ns)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading {} {ns}/{name}: {e}", K::kind(&())))?;
        Some(serde_json::to_value(obj).unwrap())
    }

    /// The pull secret names an SA lists.
    pub async fn pull_secrets(&self, ns: &str, name: &str) -> Vec<String> {
        pull_secret_names(self.sa(ns, name).await.as_ref())
    }

    /// The `.dockerconfigjson` of a Secret, decoded.
    pub async fn docker_config(&self, ns: &str, name: &str) -> Option<Value> {
        use base64::Engine as _;
        let s = self.secret(ns, name).await?;
        let raw = s["data"][".dockerconfigjson"].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The password for `host` in a Secret.
    pub async fn password(&self, ns: &str, name: &str, host: &str) -> Option<String> {
        self.docker_config(ns, name).await?["auths"][host]["password"]
            .as_str()
            .map(str::to_string)
    }

    /// Events (events.k8s.io/v1) about a ServiceAccount: (reason, note).
    pub async fn events_for(&self, ns: &str, sa: &str) -> Vec<(String, String)> {
        use k8s_openapi::api::events::v1::Event;
        let events = Api::<Event>::namespaced(self.admin.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap_or_else(|e| panic!("listing Events in {ns}: {e}"));
        events
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(sa)
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref())
                        == Some("ServiceAccount")
            })
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Waits (30 s at most) for an Event `reason` about ServiceAccount `sa`
    /// whose note contains each of `fragments`.
    pub async fn await_event(&self, ns: &str, sa: &str, reason: &str, fragments: &[&str]) {
        let what = format!("{reason} Event about {ns}/{sa} naming {fragments:?}");
        eventually(30, &what, async || {
            self.events_for(ns, sa)
                .await
                .iter()
                .any(|(r, n)| r == reason && fragments.iter().all(|f| n.contains(f)))
        })
        .await;
    }

    /// GetAuthorizationToken calls the (first) emulator answered.
    pub fn token_calls(&self) -> u64 {
        self.emulator()
            .request_count(Operation::GetAuthorizationToken)
    }

    /// The role ECR (the first emulator) issued `password` for, while it is valid.
    pub fn issued_for(&self, password: &str) -> Option<String> {
        self.emulator().ecr_password_valid(password)
    }

    /// What a pull Secret's `attache.dev/ecr-expires-at` leaves on the world's clock.
    pub fn time_left(&self, secret: &Value) -> time::Duration {
        let at = secret["metadata"]["annotations"]["attache.dev/ecr-expires-at"]
            .as_str()
            .unwrap_or_else(|| panic!("no expiry annotation: {secret}"));
        OffsetDateTime::parse(at, &Rfc3339).unwrap() - self.clock.now()
    }

    /// When (on the world's clock) the controller obtained the token
    /// `password`, from its state Secret; None until it is stored there.
    pub async fn obtained_at(&self, password: &str) -> Option<OffsetDateTime> {
        use attache_broker::ecr::state::{STATE_KEY, STATE_SECRET, decode};
        use base64::Engine as _;
        let state = self.secret(BROKER_NS, STATE_SECRET).await?;
        let raw = state["data"][STATE_KEY].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
        decode(&bytes)
            .into_iter()
            .find(|(_, t)| t.password.as_str() == password)
            .map(|(_, t)| t.obtained_at)
    }

    /// Whether each (namespace, ServiceAccount) lists exactly one pull secret.
    pub async fn each_lists_one(&self, sas: &[(&str, &str)]) -> bool {
        for (ns, sa) in sas {
            if self.pull_secrets(ns, sa).await.len() != 1 {
                return false;
            }
        }
        true
    }

    /// The Lease the controllers campaign for.
    pub async fn lease(&self) -> Value {
        use k8s_openapi::api::coordination::v1::Lease;
        let lease = Api::<Lease>::namespaced(self.admin.clone(), BROKER_NS)
            .get("attache-ecr-controller")
            .await
            .expect("the controllers' Lease");
        serde_json::to_value(lease).unwrap()
    }

    /// How many `verb` calls on `resource` the controller's ServiceAccount made
    /// (from the audit log; refused ones included).
    pub fn broker_calls(&self, verb: &str, resource: &str) -> usize {
        broker_call_counts(&self.server)
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Like [`World::broker_calls`], for app namespaces only (not the
    /// controller's own, where it keeps its Lease and token state).
    pub fn app_calls(&self, verb: &str, resource: &str) -> usize {
        let mut seen = std::collections::HashSet::new();
        crate::common::audit_calls(&self.server, CONTROLLER_USER)
            .into_iter()
            .filter(|e| seen.insert(e["auditID"].as_str().unwrap_or_default().to_string()))
            .filter(|e| {
                e["verb"] == verb
                    && e["objectRef"]["resource"] == resource
                    && e["objectRef"]["subresource"].is_null()
                    && e["objectRef"]["namespace"] != BROKER_NS
            })
            .count()
    }

    /// Moves the clock forward in steps, letting tasks run between them.
    pub async fn tick(&self, total: Duration, step: Duration) {
        let mut done = Duration::ZERO;
        while done < total {
            self.clock
                .advance(time::Duration::try_from(step).expect("step"));
            done += step;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Adds profile `profile` (enabled, no duration or session name of its own)
/// allowing `roles`.
pub fn allow_profile(emu: &Emulator, profile: &str, roles: &[&str]) {
    emu.add_profile(Profile {
        arn: profile.into(),
        role_arns: roles.iter().map(|r| r.to_string()).collect(),
        duration_seconds: None,
        accept_role_session_name: false,
        enabled: true,
    });
}

/// Adds (or replaces) `role`, trusting certificates whose SAN URI matches
/// one of `sans` by `operator`.
pub fn trust_role(emu: &Emulator, role: &str, operator: Operator, sans: &[impl AsRef<str>]) {
    emu.add_role(Role {
        arn: role.into(),
        conditions: vec![Condition {
            operator,
            key: "aws:PrincipalTag/x509SAN/URI".into(),
            values: sans.iter().map(|s| s.as_ref().to_string()).collect(),
        }],
    });
}

/// Controller flags: `identity` pulling with `role`, ECR and Roles Anywhere
/// at `endpoints` (`URL` or `region=URL,...`), then `extra`.
pub fn ecr_args(role: &str, endpoints: &str, identity: &str, extra: &[&str]) -> EcrArgs {
    let mut argv = vec![
        "t",
        "--ecr-role-arn",
        role,
        "--ecr-endpoint",
        endpoints,
        "--rolesanywhere-endpoint",
        endpoints,
        "--ecr-identity",
        identity,
    ];
    argv.extend_from_slice(extra);
    Flags::parse_from(argv).ecr
}

/// The controller's context: as `client`, minting from `ca`, with PROFILE
/// and ANCHOR (us-east-1) as its defaults and namespace restrictions on.
pub fn ecr_context(
    client: kube::Client,
    ca: Arc<CertificateAuthority>,
    metrics: &Metrics,
    clock: Arc<dyn Clock>,
) -> EcrContext {
    EcrContext {
        client,
        ca,
        namespace: BROKER_NS.into(),
        trust_domain: "cluster.local".into(),
        session: attache_broker::flags::SessionDefaults {
            region: "us-east-1".into(),
            profile_arn: Some(PROFILE.into()),
            trust_anchor_arn: Some(ANCHOR.into()),
            ..Default::default()
        },
        namespace_restrictions: true,
        metrics: metrics.clone(),
        clock,
    }
}

/// A namespaced Kubernetes object kind the world reads and creates as JSON.
trait Namespaced:
    kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + serde::Serialize
    + serde::de::DeserializeOwned
    + Clone
    + std::fmt::Debug
{
}

impl<K> Namespaced for K where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug
{
}

/// A ServiceAccount object with these annotations and `imagePullSecrets`.
pub fn service_account_object(
    name: &str,
    annotations: &[(&str, &str)],
    pull_secrets: &[&str],
) -> ServiceAccount {
    let ann: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    let mut sa = json!({"metadata": {"name": name, "annotations": ann}});
    if !pull_secrets.is_empty() {
        sa["imagePullSecrets"] = pull_secrets.iter().map(|n| json!({"name": n})).collect();
    }
    serde_json::from_value(sa).unwrap()
}

/// The `imagePullSecrets` names of a ServiceAccount (as JSON).
pub fn pull_secret_names(sa: Option<&Value>) -> Vec<String> {
    sa.and_then(|s| s["imagePullSecrets"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect()
}

/// The controller ServiceAccount's API calls so far by (verb, resource[/subresource]),
/// each request counted once (a watch is logged when it starts and when it ends).
pub fn broker_call_counts(server: &ApiServer) -> BTreeMap<(String, String), usize> {
    let mut seen = std::collections::HashSet::new();
    let mut counts = BTreeMap::new();
    for e in crate::common::audit_calls(server, CONTROLLER_USER) {
        if !seen.insert(e["auditID"].as_str().unwrap_or_default().to_string()) {
            continue;
        }
        let obj = &e["objectRef"];
        let mut resource = obj["resource"].as_str().unwrap_or_default().to_string();
        if let Some(sub) = obj["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let verb = e["verb"].as_str().unwrap_or_default().to_string();
        *counts.entry((verb, resource)).or_default() += 1;
    }
    counts
}

/// Waits until the ECR controller counting into `metrics` has nothing queued
/// or in progress (`attache_ecr_queue_depth` 0). Called after a sign that a
/// reconcile started (an Event, a write), it means that reconcile finished.
pub async fn settled(metrics: &Metrics) {
    eventually(30, "the ECR controller's queue drained", async || {
        metrics.ecr_queue_depth.get() == 0
    })
    .await;
}

/// Polls `cond` every 50 ms for up to `secs` seconds (a liveness bound for a
/// failing run, not a timing assertion).
pub async fn eventually(secs: u64, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}
