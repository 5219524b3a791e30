//! etcd + kube-apiserver on loopback, and clients for them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use crate::certs::ClusterCerts;
use crate::process;

/// The ServiceAccount token issuer (and default API audience).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Extra settings for a dedicated API server.
#[derive(Debug, Default, Clone)]
pub struct ApiServerOptions {
    /// Extra kube-apiserver flags.
    pub extra_args: Vec<String>,
}

/// A running etcd + kube-apiserver pair; see the crate docs.
pub struct ApiServer {
    dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    certs: ClusterCerts,
    etcd_port: u16,
    api_port: u16,
    options: ApiServerOptions,
    etcd: Mutex<Option<Child>>,
    apiserver: Mutex<Option<Child>>,
    /// When kube-apiserver was started and when it first answered ready, each time.
    starts: Mutex<Vec<(SystemTime, SystemTime)>>,
    admin_kubeconfig: PathBuf,
}

fn free_port() -> Result<u16> {
    // Both servers bind their own sockets from flags, so a port is chosen here
    // and handed over; start() retries with new ports if one was taken meanwhile.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether a GET of `url` answers with a success status.
async fn answers_ok(http: &reqwest::Client, url: &str) -> bool {
    http.get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl ApiServer {
    /// The API server of this test binary, started on first use.
    pub async fn shared() -> &'static ApiServer {
        static SHARED: tokio::sync::OnceCell<ApiServer> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_init(|| async {
                ApiServer::start(ApiServerOptions::default())
                    .await
                    .unwrap_or_else(|e| panic!("starting etcd + kube-apiserver: {e:#}"))
            })
            .await
    }

    /// Starts a dedicated etcd + kube-apiserver (torn down on drop and at exit).
    pub async fn start(options: ApiServerOptions) -> Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::start_once(options.clone()).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("not started")))
    }

    async fn start_once(options: ApiServerOptions) -> Result<Self> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("attache-e2e-")
            .tempdir()?
            .keep();
        process::remove_at_exit(dir.clone());
        let certs = ClusterCerts::write(&dir)?;
        let api_port = free_port()?;
        let server = ApiServer {
            url: format!("https://127.0.0.1:{api_port}"),
            admin_kubeconfig: dir.join("admin.kubeconfig"),
            etcd_port: free_port()?,
            api_port,
            options,
            etcd: Mutex::new(None),
            apiserver: Mutex::new(None),
            starts: Mutex::new(Vec::new()),
            certs,
            dir,
        };
        std::fs::write(
            &server.admin_kubeconfig,
            server.kubeconfig_yaml(
                "admin",
                json!({
                    "client-certificate-data": b64(&server.certs.admin_cert_pem),
                    "client-key-data": b64(&server.certs.admin_key_pem),
                }),
            ),
        )?;
        server.start_etcd().await?;
        server.start_apiserver().await?;
        let (etcd_rss, apiserver_rss) = server.rss_mib();
        eprintln!(
            "e2e: etcd + kube-apiserver ready at {} in {:.1}s (RSS etcd {etcd_rss:.0} MiB, kube-apiserver {apiserver_rss:.0} MiB)",
            server.url,
            started.elapsed().as_secs_f64(),
        );
        Ok(server)
    }

    async fn start_etcd(&self) -> Result<()> {
        let peer = free_port()?;
        let client_url = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = attache_testkit::tool_command("etcd");
        cmd.args([
            "--name=e2e",
            &format!("--data-dir={}", self.dir.join("etcd").display()),
            &format!("--listen-client-urls={client_url}"),
            &format!("--advertise-client-urls={client_url}"),
            &format!("--listen-peer-urls={peer_url}"),
            &format!("--initial-advertise-peer-urls={peer_url}"),
            &format!("--initial-cluster=e2e={peer_url}"),
            "--unsafe-no-fsync",
            "--log-level=warn",
        ]);
        let log = self.dir.join("etcd.log");
        let child = spawn_logged(cmd, &log)?;
        *self.etcd.lock().map_err(poisoned)? = Some(child);
        let http = reqwest::Client::new();
        let health = format!("{client_url}/health");
        self.wait(&self.etcd, &log, "etcd", || answers_ok(&http, &health))
            .await
    }

    /// (Re)starts kube-apiserver over the same etcd and certificates.
    pub async fn start_apiserver(&self) -> Result<()> {
        let dir = &self.dir;
        let path = |p: &Path| p.display().to_string();
        let mut cmd = attache_testkit::tool_command("kube-apiserver");
        cmd.args([
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.api_port),
            format!("--cert-dir={}", dir.join("apiserver").display()),
            format!("--tls-cert-file={}", path(&self.certs.serving_cert)),
            format!("--tls-private-key-file={}", path(&self.certs.serving_key)),
            format!("--client-ca-file={}", path(&self.certs.ca_file)),
            format!("--service-account-issuer={ISSUER}"),
            format!(
                "--service-account-key-file={}",
                path(&self.certs.sa_public_key)
            ),
            format!(
                "--service-account-signing-key-file={}",
                path(&self.certs.sa_key)
            ),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-priority-and-fairness=false".into(),
            // No kubernetes Service endpoints: the advertise address is loopback.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
            format!(
                "--audit-policy-file={}",
                self.write_audit_policy()?.display()
            ),
            format!("--audit-log-path={}", self.audit_log().display()),
            "--audit-log-format=json".into(),
            "--audit-log-mode=blocking".into(),
            "--v=1".into(),
        ]);
        cmd.args(&self.options.extra_args);
        let log = dir.join("kube-apiserver.log");
        let spawned = SystemTime::now();
        let child = spawn_logged(cmd, &log)?;
        *self.apiserver.lock().map_err(poisoned)? = Some(child);
        let http = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(
                self.certs.ca_pem.as_bytes(),
            )?])
            .build()?;
        let readyz = format!("{}/readyz", self.url);
        self.wait(&self.apiserver, &log, "kube-apiserver", || {
            answers_ok(&http, &readyz)
        })
        .await?;
        self.starts
            .lock()
            .map_err(poisoned)?
            .push((spawned, SystemTime::now()));
        Ok(())
    }

    /// Each time kube-apiserver was (re)started: from its start until it
    /// answered `/readyz`. It serves requests meanwhile, and until its RBAC
    /// caches are filled it refuses them (403), whoever asks.
    pub fn starting_windows(&self) -> Vec<(SystemTime, SystemTime)> {
        self.starts.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn write_audit_policy(&self) -> Result<PathBuf> {
        let path = self.dir.join("audit-policy.yaml");
        std::fs::write(
            &path,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
        )?;
        Ok(path)
    }

    fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    /// Every audit event so far (level Metadata: who, verb, object, response code).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_log())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Stops kube-apiserver (etcd keeps running), e.g. to test watch recovery.
    pub fn stop_apiserver(&self) -> Result<()> {
        if let Some(mut child) = self.apiserver.lock().map_err(poisoned)?.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    async fn wait<F, Fut>(
        &self,
        child: &Mutex<Option<Child>>,
        log: &Path,
        what: &str,
        ready: F,
    ) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if ready().await {
                return Ok(());
            }
            if let Some(c) = child.lock().map_err(poisoned)?.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("{what} exited with {status}:\n{}", tail(log, 40));
            }
            if Instant::now() > deadline {
                bail!("{what} not ready after 120 s:\n{}", tail(log, 40));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The cluster CA's PEM (it signed the API server's serving certificate).
    pub fn ca_pem(&self) -> &str {
        &self.certs.ca_pem
    }

    /// A kubeconfig whose user authenticates with `auth` (kubeconfig `user` fields).
    pub fn kubeconfig_yaml(&self, user: &str, auth: serde_json::Value) -> String {
        self.kubeconfig_yaml_via(&self.url, &self.certs.ca_pem, user, auth)
    }

    /// A kubeconfig for the server at `url`, trusting `ca_pem`, e.g. a
    /// [`crate::FaultProxy`] in front of this API server.
    pub fn kubeconfig_yaml_via(
        &self,
        url: &str,
        ca_pem: &str,
        user: &str,
        auth: serde_json::Value,
    ) -> String {
        json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": url,
                "certificate-authority-data": b64(ca_pem),
            }}],
            "users": [{"name": user, "user": auth}],
            "contexts": [{"name": user, "context": {"cluster": "e2e", "user": user}}],
            "current-context": user,
        })
        .to_string()
    }

    /// The admin (`system:masters`) kubeconfig file, for kubectl.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// `kubectl --kubeconfig <admin>`, the kubectl built with kube-apiserver.
    pub fn kubectl(&self) -> Command {
        let mut cmd = attache_testkit::tool_command("kubectl");
        cmd.arg("--kubeconfig").arg(&self.admin_kubeconfig);
        cmd
    }

    async fn client_from_yaml(yaml: &str) -> Result<kube::Client> {
        let kc = Kubeconfig::from_yaml(yaml)?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A client with cluster-admin rights (a client certificate in `system:masters`).
    pub async fn admin(&self) -> kube::Client {
        let yaml = std::fs::read_to_string(&self.admin_kubeconfig).expect("admin kubeconfig");
        Self::client_from_yaml(&yaml).await.expect("admin client")
    }

    /// A client authenticated by a bearer token (e.g. a ServiceAccount's), so
    /// RBAC authorizes its calls as that identity.
    pub async fn client_with_token(&self, token: &str) -> kube::Client {
        let yaml = self.kubeconfig_yaml("token", json!({"token": token}));
        Self::client_from_yaml(&yaml).await.expect("token client")
    }

    /// A client of the server at `url` (trusting `ca_pem`) authenticated by a
    /// bearer token, e.g. through a [`crate::FaultProxy`].
    pub async fn client_with_token_via(
        &self,
        url: &str,
        ca_pem: &str,
        token: &str,
    ) -> kube::Client {
        let yaml = self.kubeconfig_yaml_via(url, ca_pem, "token", json!({"token": token}));
        Self::client_from_yaml(&yaml).await.expect("token client")
    }

    /// Resident memory of etcd and kube-apiserver now, MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        let rss = |c: &Mutex<Option<Child>>| {
            c.lock()
                .ok()
                .and_then(|c| c.as_ref().and_then(|c| process::rss_mib(c.id())))
                .unwrap_or(0.0)
        };
        (rss(&self.etcd), rss(&self.apiserver))
    }

    /// A TokenRequest token for `namespace/service_account` with these
    /// audiences, bound to a pod (name, uid) when given, as the kubelet gets
    /// for a projected volume.
    pub async fn token(
        &self,
        namespace: &str,
        service_account: &str,
        request: TokenSpec<'_>,
    ) -> Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.admin().await, namespace);
        let spec = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(request.audiences.iter().map(|a| a.to_string()).collect()),
                expiration_seconds: Some(request.seconds),
                bound_object_ref: request.pod.map(|(name, uid)| BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(name.into()),
                    uid: Some(uid.into()),
                }),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let reply = api
            .create_token_request(service_account, &PostParams::default(), &spec)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{service_account}"))?;
        reply
            .status
            .and_then(|s| s.token)
            .context("TokenRequest answered without a token")
    }

    /// Creates a namespace named `<prefix>-<n>` (unique in this process) with
    /// these annotations and labels, and returns its name.
    pub async fn namespace(
        &self,
        prefix: &str,
        annotations: serde_json::Value,
        labels: serde_json::Value,
    ) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed));
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations, "labels": labels}
        }))
        .expect("namespace object");
        Api::<Namespace>::all(self.admin().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        name
    }

    /// The API server's port.
    pub fn port(&self) -> u16 {
        self.api_port
    }
}

/// What a TokenRequest asks for.
#[derive(Debug, Clone, Copy)]
pub struct TokenSpec<'a> {
    pub audiences: &'a [&'a str],
    pub seconds: i64,
    /// `(name, uid)` of the pod the token is bound to.
    pub pod: Option<(&'a str, &'a str)>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        for child in [&self.apiserver, &self.etcd] {
            if let Ok(mut c) = child.lock()
                && let Some(mut c) = c.take()
            {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log)?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    process::spawn(cmd).with_context(|| format!("starting {cmd:?}", cmd = log.display()))
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> anyhow::Error {
    anyhow::anyhow!("a harness lock was poisoned by a panic")
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
