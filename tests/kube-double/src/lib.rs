//! An in-process Kubernetes API server test double for attache's end-to-end tests.
//!
//! [`KubeDouble::start`] serves a subset of the Kubernetes API over HTTPS on
//! `127.0.0.1` with its own CA; [`KubeDouble::client`] returns a `kube::Client` built
//! from a generated kubeconfig, so code under test talks to it exactly as to a real
//! cluster. See the crate README for which behaviours are emulated and which are not.

pub mod admission;
pub mod api;
pub mod auth;
pub mod delete;
pub mod faults;
pub mod kinds;
pub mod meta;
pub mod patch;
pub mod pods;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;
pub mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

use crate::api::{Shared, WriteOpts, lock};
use crate::auth::{Authority, UserInfo};
use crate::resources::ResourceType;
use crate::store::{ObjKey, Store};

pub use crate::auth::API_AUDIENCE;
pub use crate::faults::Faults;

/// At most this many requests are kept in the audit log.
pub const AUDIT_MAX: usize = 100_000;

/// One request as an audit log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Authenticated user name (`system:serviceaccount:<ns>:<sa>` for ServiceAccount tokens).
    pub user: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// API group (`""` for core).
    pub group: String,
    /// Plural resource, with `/subresource` when there is one.
    pub resource: String,
    /// Namespace of a namespaced request.
    pub namespace: Option<String>,
    /// Object name, when the request names one.
    pub name: Option<String>,
}
pub use crate::server::serve_tls;

/// Namespaces every cluster starts with.
pub const INITIAL_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// A running API server double. Dropping it leaves the server task running until the
/// test's runtime shuts down.
pub struct KubeDouble {
    sh: Arc<Shared>,
    url: String,
    ca_pem: String,
}

impl std::fmt::Debug for KubeDouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeDouble")
            .field("url", &self.url)
            .finish()
    }
}

/// Runs a future that is known not to suspend (a write with webhooks off) to completion.
fn run_now<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

impl KubeDouble {
    /// Starts a double with a fresh CA, serving HTTPS on an ephemeral port, with the
    /// namespaces of a new cluster (`default`, `kube-system`, `kube-public`,
    /// `kube-node-lease`, each with its `default` ServiceAccount and `kube-root-ca.crt`).
    pub async fn start() -> anyhow::Result<KubeDouble> {
        let now = time::OffsetDateTime::now_utc();
        let ca = attache_pki::CertificateAuthority::create(
            &attache_pki::CaOptions {
                common_name: "kube-double CA".into(),
                organization: "kube-double".into(),
                ..Default::default()
            },
            now,
        )?;
        let (cert, key) = ca.issue_server(
            &[
                "localhost".into(),
                "127.0.0.1".into(),
                "kubernetes.default.svc".into(),
            ],
            attache_pki::KeyType::EcdsaP256,
            Duration::from_secs(24 * 3600),
            now,
        )?;
        let ca_pem = ca.certificate_pem().to_string();
        let sh = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            auth: Authority::new()?,
            faults: Faults::new(),
            counts: Mutex::default(),
            audit: Mutex::default(),
            endpoints: Mutex::default(),
            version: Mutex::new(("1".into(), "34".into())),
            warnings: Mutex::default(),
            reviews: Mutex::default(),
            applied: Mutex::default(),
            ca_pem: ca_pem.clone(),
            base_url: Mutex::default(),
        });
        let mut chain = cert.pem.clone();
        chain.push_str(&ca_pem);
        let addr =
            server::serve_tls(server::router(sh.clone()), &chain, &key.to_pkcs8_pem()).await?;
        let url = format!("https://127.0.0.1:{}", addr.port());
        *lock(&sh.base_url) = url.clone();
        let double = KubeDouble { sh, url, ca_pem };
        for ns in INITIAL_NAMESPACES {
            double.seed_json(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )?;
        }
        Ok(double)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The admin bearer token (user `kubernetes-admin`, groups `kubeadm:cluster-admins`).
    pub fn admin_token(&self) -> String {
        self.sh.auth.admin_token.clone()
    }

    /// A kubeconfig (YAML) for the admin user, for a subprocess.
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_yaml_for_token(&self.sh.auth.admin_token)
    }

    /// A kubeconfig (YAML) authenticating with `token` (e.g. from [`Self::token_for`]).
    pub fn kubeconfig_yaml_for_token(&self, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-double\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: kube-double-user\n  user:\n    token: {token}\ncontexts:\n- name: kube-double\n  context:\n    cluster: kube-double\n    user: kube-double-user\n    namespace: default\ncurrent-context: kube-double\n",
            self.url
        )
    }

    /// A `kube::Client` for the admin user.
    ///
    /// # Panics
    /// If the generated kubeconfig cannot be loaded (a bug in the double).
    pub async fn client(&self) -> kube::Client {
        match self.client_for_token(&self.sh.auth.admin_token).await {
            Ok(c) => c,
            Err(e) => panic!("kube-double: building the admin client failed: {e:#}"),
        }
    }

    /// A `kube::Client` authenticating with `token`.
    pub async fn client_for_token(&self, token: &str) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml_for_token(token))?;
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        Ok(kube::Client::try_from(cfg)?)
    }

    /// A `kube::Client` authenticated as ServiceAccount `namespace/name` (a one-hour
    /// token for the API audience).
    pub async fn client_as(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<kube::Client> {
        let token = self
            .token_for(namespace, service_account, &[], 3600, None)
            .await?;
        self.client_for_token(&token).await
    }

    /// Inserts an object through the create pipeline (defaulting and validation, side
    /// effects like a namespace's `default` ServiceAccount) without webhooks or HTTP.
    /// Returns the stored object.
    pub fn seed<K: Serialize + DeserializeOwned + kube::Resource<DynamicType = ()>>(
        &self,
        obj: &K,
    ) -> anyhow::Result<K> {
        let mut v = serde_json::to_value(obj)?;
        v["apiVersion"] = json!(K::api_version(&()));
        v["kind"] = json!(K::kind(&()));
        Ok(serde_json::from_value(self.seed_json(v)?)?)
    }

    /// [`Self::seed`] for a raw object (it must carry `apiVersion` and `kind`).
    pub fn seed_json(&self, obj: Value) -> anyhow::Result<Value> {
        let av = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or_default();
        let rt = ResourceType::by_kind(av, kind)
            .filter(|r| r.stored)
            .with_context(|| format!("kube-double does not store {av}/{kind}"))?;
        let ns = meta::meta_str(&obj, "namespace").to_string();
        let opts = WriteOpts {
            user: UserInfo::admin(),
            ..Default::default()
        };
        let res = run_now(api::create(&self.sh, rt, &ns, obj, &opts))
            .context("seeding did not complete synchronously")?;
        res.map(|(v, _)| v)
            .map_err(|e| anyhow::anyhow!("seeding failed ({}): {}", e.code, e.message))
    }

    /// A stored object by API path, e.g. `/api/v1/namespaces/default/pods/web` or
    /// `/apis/coordination.k8s.io/v1/namespaces/ns/leases/name` (leading `/` optional).
    pub fn get_json(&self, path: &str) -> Option<Value> {
        let p = format!("/{}", path.trim_start_matches('/'));
        let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return None,
        };
        let (res, ns, name) = match rest {
            ["namespaces", ns, res, name] => (*res, *ns, *name),
            [res, name] => (*res, "", *name),
            _ => return None,
        };
        let rt = ResourceType::find(group, version, res)?;
        self.sh.store().get(&ObjKey::new(rt, ns, name)).cloned()
    }

    /// A stored object, typed (`namespace` is ignored for cluster-scoped kinds).
    pub fn get<K: DeserializeOwned + kube::Resource<DynamicType = ()>>(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<K> {
        let rt = ResourceType::by_kind(&K::api_version(&()), &K::kind(&()))?;
        let v = self
            .sh
            .store()
            .get(&ObjKey::new(rt, namespace, name))
            .cloned()?;
        serde_json::from_value(v).ok()
    }

    /// Every stored object (with `apiVersion` and `kind`), in a stable order.
    pub fn dump(&self) -> Vec<Value> {
        self.sh.store().all().map(|(_, v)| v.clone()).collect()
    }

    /// How many requests the server received for `verb` (`get`, `list`, `watch`,
    /// `create`, `update`, `patch`, `delete`, `deletecollection`) on `resource` (plural,
    /// with `/subresource`: `serviceaccounts/token`, `pods/status`).
    pub fn request_count(&self, verb: &str, resource: &str) -> u64 {
        lock(&self.sh.counts)
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every `(verb, resource)` counter.
    pub fn request_counts(&self) -> HashMap<(String, String), u64> {
        lock(&self.sh.counts).clone()
    }

    /// Every resource request received so far (at most [`AUDIT_MAX`]), in order:
    /// the authenticated user, the verb and the object it addressed.
    pub fn audit(&self) -> Vec<AuditEntry> {
        lock(&self.sh.audit).clone()
    }

    /// The fault-injection handle.
    pub fn faults(&self) -> Faults {
        self.sh.faults.clone()
    }

    /// Issues a ServiceAccount token like `TokenRequest` (without an HTTP request).
    /// Empty `audiences` means the API server's audience.
    pub async fn token_for(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
        expiration_seconds: i64,
        bound_pod: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut spec = json!({"audiences": audiences, "expirationSeconds": expiration_seconds});
        if let Some(pod) = bound_pod {
            spec["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1", "name": pod});
        }
        let body =
            json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
        let out = {
            let store = self.sh.store();
            self.sh
                .auth
                .token_request(&store, namespace, service_account, body)
        }
        .map_err(|e| anyhow::anyhow!("TokenRequest failed ({}): {}", e.code, e.message))?;
        out.pointer("/status/token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .context("no token in TokenRequest")
    }

    /// Signs arbitrary claims with the double's ServiceAccount token key, so a
    /// test can craft tokens the API would never issue (already expired, say).
    pub fn sign_token_claims(&self, claims: &Value) -> anyhow::Result<String> {
        self.sh
            .auth
            .sign(claims)
            .map_err(|e| anyhow::anyhow!("signing failed ({}): {}", e.code, e.message))
    }

    /// Maps webhook `clientConfig.service` `{namespace, name, port}` to a local HTTPS
    /// endpoint such as `https://127.0.0.1:8443`. The double connects there but verifies
    /// the certificate for `<name>.<namespace>.svc`, as the real API server does.
    pub fn set_service_endpoint(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
        url: &str,
    ) -> anyhow::Result<()> {
        let hostport = url
            .trim_start_matches("https://")
            .split('/')
            .next()
            .unwrap_or_default();
        let addr: SocketAddr = hostport
            .parse()
            .with_context(|| format!("{url:?} is not https://<ip>:<port>"))?;
        lock(&self.sh.endpoints).insert((namespace.into(), name.into(), port), addr);
        Ok(())
    }

    /// Sets what `/version` reports (default 1.34).
    pub fn set_version(&self, major: &str, minor: &str) {
        *lock(&self.sh.version) = (major.into(), minor.into());
    }

    /// Warnings returned to clients so far (duplicate env names, webhook warnings).
    pub fn warnings(&self) -> Vec<String> {
        lock(&self.sh.warnings).clone()
    }

    /// Every AdmissionReview sent to a webhook, as `{"webhook": name, "review": ...}`.
    pub fn admission_reviews(&self) -> Vec<Value> {
        lock(&self.sh.reviews).clone()
    }

    /// Keeps only the last `n` events for watch resumption (default 1000).
    pub fn set_watch_history(&self, n: usize) {
        self.sh.store().set_history_limit(n);
    }

    /// Forgets all watch history: watches resuming from any earlier version get `410`.
    pub fn compact(&self) {
        self.sh.store().compact_all();
    }

    /// The current store revision (the `resourceVersion` a list would return).
    pub fn revision(&self) -> u64 {
        self.sh.store().revision()
    }

    /// Authenticates `token` as TokenReview would for `audiences`; for assertions.
    pub fn review_token(&self, token: &str, audiences: &[&str]) -> Result<UserInfo, String> {
        let aud: Vec<String> = if audiences.is_empty() {
            vec![API_AUDIENCE.into()]
        } else {
            audiences.iter().map(|a| a.to_string()).collect()
        };
        let store = self.sh.store();
        self.sh
            .auth
            .authenticate(&store, token, &aud)
            .map(|(u, _)| u)
    }
}
