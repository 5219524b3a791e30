//! `attache-broker run`: loads or creates the CA, serves the webhook and the
//! certificate API over HTTPS with a rotating certificate, and health and
//! metrics on a separate admin port.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use attache_pki::{CaOptions, CertificateAuthority, KeyType};
use attache_rt::parse::duration;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use clap::{ArgAction, Args};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use tokio::sync::oneshot;

use crate::certapi::CertApi;
use crate::inject::{BrokerAccess, InjectConfig, SidecarResources, SidecarSpec};
use crate::metrics::Metrics;
use crate::revocation::Revocations;
use crate::tls::{RotatingCert, service_names};
use crate::webhook::Webhook;

/// Largest request body on the HTTPS port (AdmissionReviews of big pods fit).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How often the CA bundle ConfigMap and the webhook caBundle are re-checked.
pub const CA_BUNDLE_RECHECK: Duration = Duration::from_secs(300);
/// Requests handled at once on each HTTPS port (the webhook's and the
/// certificate API's pools are separate, so one cannot starve the other).
pub const MAX_CONCURRENT: usize = 1024;

/// Flags of `attache-broker run`; each also settable by its `ATTACHE_*` variable.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Namespace the broker runs in (holds its CA Secret and bundle ConfigMap).
    #[arg(long, env = "ATTACHE_NAMESPACE", default_value = "attache-system")]
    pub namespace: String,
    /// Name of the broker's Service (its DNS names go into the serving certificate).
    #[arg(long, env = "ATTACHE_SERVICE_NAME", default_value = "attache-broker")]
    pub service_name: String,
    /// Extra names/IPs for the serving certificate, comma-separated.
    #[arg(long, env = "ATTACHE_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
    /// Trust domain: the cluster's name in certificate subjects (O) and SPIFFE IDs.
    #[arg(long, env = "ATTACHE_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Human name of the cluster, used in the CA's common name.
    #[arg(long, env = "ATTACHE_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Roles Anywhere defaults and the overrides ServiceAccounts may ask for.
    #[command(flatten)]
    pub session: crate::flags::SessionDefaults,
    /// Sidecar image injected into pods.
    #[arg(long, env = "ATTACHE_SIDECAR_IMAGE", default_value = concat!("ghcr.io/attache-dev/attache:", env!("CARGO_PKG_VERSION")))]
    pub sidecar_image: String,
    /// imagePullPolicy of the sidecar.
    #[arg(
        long,
        env = "ATTACHE_SIDECAR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub sidecar_image_pull_policy: String,
    /// CPU request of the sidecar.
    #[arg(long, env = "ATTACHE_SIDECAR_CPU_REQUEST", default_value = "10m")]
    pub sidecar_cpu_request: String,
    /// Memory request of the sidecar.
    #[arg(long, env = "ATTACHE_SIDECAR_MEMORY_REQUEST", default_value = "16Mi")]
    pub sidecar_memory_request: String,
    /// Memory limit of the sidecar.
    #[arg(long, env = "ATTACHE_SIDECAR_MEMORY_LIMIT", default_value = "64Mi")]
    pub sidecar_memory_limit: String,
    /// Inject a native sidecar (init container, restartPolicy Always; Kubernetes >= 1.29); false: a plain container.
    #[arg(long, env = "ATTACHE_NATIVE_SIDECAR", default_value_t = true, action = ArgAction::Set)]
    pub native_sidecar: bool,
    /// Enforce the namespace annotation attache.dev/allowed-roles.
    #[arg(long, env = "ATTACHE_NAMESPACE_RESTRICTIONS", default_value_t = true, action = ArgAction::Set)]
    pub namespace_restrictions: bool,
    /// Namespaces never injected, comma-separated (the broker's own is always excluded).
    #[arg(
        long,
        env = "ATTACHE_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub excluded_namespaces: Vec<String>,
    /// Lifetime of workload certificates (no longer than the projected token's, so a stolen key is worth no more than the token it was issued for).
    #[arg(long, env = "ATTACHE_LEAF_LIFETIME", default_value = "1h", value_parser = duration)]
    pub leaf_lifetime: Duration,
    /// Lifetime of the projected ServiceAccount token given to sidecars, seconds.
    #[arg(long, env = "ATTACHE_SA_TOKEN_SECONDS", default_value_t = 3600)]
    pub sa_token_seconds: i64,
    /// UID and GID of the injected sidecar: one your app images do not use (not 0, 1000, 65532, 65534).
    #[arg(long, env = "ATTACHE_SIDECAR_UID", default_value_t = 19911, value_parser = clap::value_parser!(i64).range(1..=2147483647))]
    pub sidecar_uid: i64,
    /// Role session name for ServiceAccounts without attache.dev/session-name: `serial` (AWS uses the certificate serial), `pod` (the pod's name) or a fixed name; names other than `serial` need a profile that accepts custom session names.
    #[arg(long, env = "ATTACHE_SESSION_NAME", default_value = "serial")]
    pub session_name: String,
    /// HTTPS listen address of the certificate API (POST /v1/certificates), reached by sidecars.
    #[arg(long, env = "ATTACHE_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// HTTPS listen address of the admission webhook (POST /mutate), for the API server (restrict it to the control plane with a NetworkPolicy).
    #[arg(long, env = "ATTACHE_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    pub webhook_listen: SocketAddr,
    /// Whole-request time limit on both HTTPS ports (headers, body and answer); slower requests get 408.
    #[arg(long, env = "ATTACHE_REQUEST_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub request_timeout: Duration,
    /// Open connections one client address may hold on the certificate API port.
    #[arg(long, env = "ATTACHE_MAX_CONNECTIONS_PER_PEER", default_value_t = 16)]
    pub max_connections_per_peer: usize,
    /// Open connections one client address may hold on the webhook port (0: no cap). Each API server instance is one address and holds a connection per admission in flight (HTTP/1.1), so keep this above your API servers' concurrent pod writes; it stops one pod that can reach the port from holding every request slot (restrict the port with a NetworkPolicy too: docs/security.md).
    #[arg(
        long,
        env = "ATTACHE_MAX_WEBHOOK_CONNECTIONS_PER_PEER",
        default_value_t = 256
    )]
    pub max_webhook_connections_per_peer: usize,
    /// Certificates one identity (namespace, ServiceAccount, pod) may get per minute; more get 429.
    #[arg(long, env = "ATTACHE_MAX_CERTIFICATES_PER_MINUTE", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_certificates_per_minute: u32,
    /// How often the broker reads its revocation ledger (ConfigMap attache-crl), applies `ca revoke`
    /// requests and re-signs the CRL when due.
    #[arg(long, env = "ATTACHE_REVOCATION_SYNC_INTERVAL", default_value = "30s", value_parser = duration)]
    pub revocation_sync_interval: Duration,
    /// TokenReviews one client address may cause per minute (tokens that pass the broker's own checks
    /// but are not in its cache); more get 429, so distinct forged tokens from one pod cannot keep
    /// TokenReview busy. A pod needs about one per token refresh.
    #[arg(long, env = "ATTACHE_MAX_TOKEN_REVIEWS_PER_PEER", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_token_reviews_per_peer: u32,
    /// TokenReviews in flight at once; further certificate requests wait (then 503).
    #[arg(
        long,
        env = "ATTACHE_MAX_CONCURRENT_TOKEN_REVIEWS",
        default_value_t = 32
    )]
    pub max_concurrent_token_reviews: usize,
    /// Admin listen address (/healthz, /readyz, /metrics; plain HTTP).
    #[arg(long, env = "ATTACHE_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// URL sidecars use to reach the broker (default https://<service>.<namespace>.svc:443).
    #[arg(long, env = "ATTACHE_BROKER_URL")]
    pub broker_url: Option<String>,
    /// Secret holding the CA in --namespace.
    #[arg(long, env = "ATTACHE_CA_SECRET", default_value = attache_api::names::CA_SECRET)]
    pub ca_secret: String,
    /// Secret holding the serving CA in --namespace (signs only the broker's TLS certificates; created if absent).
    #[arg(long, env = "ATTACHE_SERVING_CA_SECRET", default_value = attache_api::names::SERVING_CA_SECRET)]
    pub serving_ca_secret: String,
    /// Use the CA in DIR/ca.pem and DIR/ca-key.pem instead of the Secret (you manage it).
    #[arg(long, env = "ATTACHE_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Key type of a CA the broker creates.
    #[arg(long, env = "ATTACHE_CA_KEY_TYPE", default_value = "ecdsa-p256", value_parser = attache_rt::parse::key_type)]
    pub ca_key_type: KeyType,
    /// MutatingWebhookConfiguration whose caBundle the broker keeps set to its CA ("" to skip).
    #[arg(long, env = "ATTACHE_WEBHOOK_CONFIG", default_value = "attache-broker")]
    pub webhook_config: String,
    /// Log format: json or text.
    #[arg(long, env = attache_api::env::LOG_FORMAT, value_enum, default_value_t = attache_rt::logging::LogFormat::Json)]
    pub log_format: attache_rt::logging::LogFormat,
}

/// A running broker (for tests and the binary).
pub struct Running {
    /// Certificate API address actually bound.
    pub addr: SocketAddr,
    /// Webhook address actually bound.
    pub webhook_addr: SocketAddr,
    /// Admin address actually bound.
    pub admin_addr: SocketAddr,
    /// The workload CA (the Roles Anywhere trust anchor).
    pub ca: Arc<CertificateAuthority>,
    /// PEM of the serving CA, which signs the broker's TLS certificates (the
    /// webhook's caBundle and the sidecars' bundle).
    pub serving_ca_pem: String,
    /// Metrics.
    pub metrics: Metrics,
    stop: Option<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// The serving CA from its Secret, created once if absent.
async fn load_serving_ca(args: &RunArgs, client: &kube::Client) -> Result<CertificateAuthority> {
    let secret = &args.serving_ca_secret;
    load_or_create_ca(
        args,
        client,
        secret,
        "attache serving CA",
        KeyType::EcdsaP256,
    )
    .await
}

/// The workload CA: from `--ca-dir` if given, else from its Secret, created
/// once if absent.
async fn load_ca(args: &RunArgs, client: &kube::Client) -> Result<CertificateAuthority> {
    if let Some(dir) = &args.ca_dir {
        return crate::ca_cli::load_ca(dir);
    }
    load_or_create_ca(
        args,
        client,
        &args.ca_secret,
        "attache CA",
        args.ca_key_type,
    )
    .await
}

/// The CA in Secret `secret` of the broker's namespace, created once if
/// absent as `<title> (<cluster name or trust domain>)`.
async fn load_or_create_ca(
    args: &RunArgs,
    client: &kube::Client,
    secret: &str,
    title: &str,
    key_type: KeyType,
) -> Result<CertificateAuthority> {
    let cluster = args.cluster_name.as_deref().unwrap_or(&args.trust_domain);
    let options = CaOptions {
        key_type,
        common_name: format!("{title} ({cluster})"),
        ..CaOptions::default()
    };
    let secrets = Api::namespaced(client.clone(), &args.namespace);
    let ca = crate::castore::load_or_create(&secrets, &args.namespace, secret, &options).await?;
    Ok(ca)
}

/// Sets `caBundle` of every webhook in the configuration to the CA PEM.
pub async fn patch_webhook_ca_bundle(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<bool> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    for _ in 0..5 {
        let Some(mut cfg) = api
            .get_opt(name)
            .await
            .with_context(|| format!("reading MutatingWebhookConfiguration {name}"))?
        else {
            return Ok(false);
        };
        let bundle = ByteString(ca_pem.as_bytes().to_vec());
        let mut changed = false;
        for w in cfg.webhooks.iter_mut().flatten() {
            if w.client_config.ca_bundle.as_ref() != Some(&bundle) {
                w.client_config.ca_bundle = Some(bundle.clone());
                changed = true;
            }
        }
        if !changed {
            return Ok(true);
        }
        match api.replace(name, &PostParams::default(), &cfg).await {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("updating MutatingWebhookConfiguration {name}"));
            }
        }
    }
    anyhow::bail!("MutatingWebhookConfiguration {name} kept changing; caBundle not set")
}

/// A workload certificate must not outlive the token it was issued for: a
/// stolen token would otherwise buy a key that works longer than the token.
fn check_lifetimes(args: &RunArgs) -> Result<()> {
    let token = Duration::from_secs(args.sa_token_seconds.max(0).unsigned_abs());
    anyhow::ensure!(
        args.leaf_lifetime <= token,
        "--leaf-lifetime {}s is longer than --sa-token-seconds {}: a certificate must not outlive the token it was issued for",
        args.leaf_lifetime.as_secs(),
        args.sa_token_seconds
    );
    Ok(())
}

/// Starts the broker with `client` and returns once both listeners are bound.
pub async fn start(args: RunArgs, client: kube::Client) -> Result<Running> {
    check_lifetimes(&args)?;
    let metrics = Metrics::default();
    let ca = Arc::new(load_ca(&args, &client).await?);
    let ca_pem = ca.trust_anchor_pem();
    let serving_ca = Arc::new(load_serving_ca(&args, &client).await?);
    let serving_pem = serving_ca.trust_anchor_pem();
    anyhow::ensure!(
        serving_pem != ca_pem,
        "the serving CA must not be the workload CA (--serving-ca-secret names --ca-secret)"
    );
    tracing::info!(fingerprint = %ca.info().sha256_fingerprint, not_after = %ca.info().not_after, "CA ready");
    let keeper = keep_bundles(&args, &client, ca_pem, serving_pem.clone()).await;
    let names = service_names(&args.service_name, &args.namespace, &args.tls_sans);
    let cert = RotatingCert::new(&serving_ca, &names)?;
    let tls = tokio_rustls::TlsAcceptor::from(cert.server_config()?);

    let (webhook, synced) = webhook_state(&args, &client, &serving_pem, &metrics);
    let revocations = Revocations::new(
        client.clone(),
        &args.namespace,
        ca.clone(),
        args.leaf_lifetime,
        metrics.clone(),
    )
    .with_sync_interval(args.revocation_sync_interval);
    let certs = cert_api(&args, &client, &ca, &metrics, &revocations);
    let routers = Routers {
        certificates: limited(
            Router::new()
                .route(
                    attache_api::certificates::PATH,
                    post(crate::certapi::issue).with_state(certs),
                )
                .route(
                    attache_api::names::CRL_PATH,
                    get(serve_crl).with_state(revocations.clone()),
                ),
            args.request_timeout,
        ),
        webhook: limited(
            Router::new().route("/mutate", post(crate::webhook::mutate).with_state(webhook)),
            args.request_timeout,
        ),
        admin: admin_router(&metrics, synced),
    };
    let rotation = tokio::spawn(cert.clone().rotate_forever(serving_ca, names));
    let mut background = vec![rotation, keeper];
    background.extend(revocations.spawn(client.clone()));
    let served = serve_all(&args, routers, tls, background).await?;
    Ok(Running {
        serving_ca_pem: serving_pem,
        addr: served.addr,
        webhook_addr: served.webhook_addr,
        admin_addr: served.admin_addr,
        ca,
        metrics,
        stop: Some(served.stop),
        tasks: served.tasks,
    })
}

/// The webhook's state, and a flag set once its ServiceAccount and namespace
/// caches have listed (`/readyz` waits for it).
fn webhook_state(
    args: &RunArgs,
    client: &kube::Client,
    serving_pem: &str,
    metrics: &Metrics,
) -> (Webhook, Arc<std::sync::atomic::AtomicBool>) {
    let annotations = crate::informer::AnnotationCache::watch(client.clone());
    let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (annotations, synced) = (annotations.clone(), synced.clone());
        tokio::spawn(async move {
            annotations.wait_until_ready().await;
            synced.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!("ServiceAccount and namespace caches listed");
        });
    }
    let webhook = Webhook {
        annotations,
        config: Arc::new(inject_config(args, serving_pem)),
        excluded_namespaces: Arc::new(
            args.excluded_namespaces
                .iter()
                .cloned()
                .chain([args.namespace.clone()])
                .collect(),
        ),
        metrics: metrics.clone(),
    };
    (webhook, synced)
}

/// Publishes the CA bundle ConfigMap and sets the webhook's caBundle now,
/// then keeps both right every [`CA_BUNDLE_RECHECK`] even if someone edits
/// them (or the webhook configuration is applied after the broker starts).
async fn keep_bundles(
    args: &RunArgs,
    client: &kube::Client,
    ca_pem: String,
    serving_pem: String,
) -> tokio::task::JoinHandle<()> {
    let (client, namespace, webhook) = (
        client.clone(),
        args.namespace.clone(),
        args.webhook_config.clone(),
    );
    let configmaps = Api::namespaced(client.clone(), &namespace);
    if let Err(e) = crate::castore::publish_bundle(&configmaps, &namespace, &ca_pem).await {
        tracing::warn!(error = %e, "cannot publish the CA bundle ConfigMap");
    }
    if !webhook.is_empty() {
        match patch_webhook_ca_bundle(&client, &webhook, &serving_pem).await {
            Ok(true) => tracing::info!(webhook = %webhook, "webhook caBundle set"),
            Ok(false) => {
                tracing::warn!(webhook = %webhook, "MutatingWebhookConfiguration not found; caBundle not set")
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot set the webhook caBundle"),
        }
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(CA_BUNDLE_RECHECK).await;
            if let Err(e) = crate::castore::publish_bundle(&configmaps, &namespace, &ca_pem).await {
                tracing::warn!(error = %e, "cannot publish the CA bundle ConfigMap");
            }
            if !webhook.is_empty()
                && let Err(e) = patch_webhook_ca_bundle(&client, &webhook, &serving_pem).await
            {
                tracing::warn!(error = %format!("{e:#}"), "cannot set the webhook caBundle");
            }
        }
    })
}

/// What the webhook injects, from the flags.
fn inject_config(args: &RunArgs, serving_pem: &str) -> InjectConfig {
    let url = args.broker_url.clone();
    InjectConfig {
        sidecar: SidecarSpec {
            image: args.sidecar_image.clone(),
            image_pull_policy: args.sidecar_image_pull_policy.clone(),
            resources: SidecarResources {
                cpu_request: args.sidecar_cpu_request.clone(),
                memory_request: args.sidecar_memory_request.clone(),
                memory_limit: args.sidecar_memory_limit.clone(),
            },
            native: args.native_sidecar,
            uid: args.sidecar_uid,
        },
        session: args.session.clone(),
        session_name: args.session_name.clone(),
        broker: BrokerAccess {
            url: url.unwrap_or_else(|| {
                format!("https://{}.{}.svc:443", args.service_name, args.namespace)
            }),
            ca_bundle_pem: serving_pem.to_string(),
            token_seconds: args.sa_token_seconds,
        },
        restrictions: args.namespace_restrictions,
    }
}

/// The certificate API's state, from the flags.
fn cert_api(
    args: &RunArgs,
    client: &kube::Client,
    ca: &Arc<CertificateAuthority>,
    metrics: &Metrics,
    revocations: &Revocations,
) -> CertApi {
    CertApi {
        revocations: revocations.clone(),
        overrides: args.session.overrides(),
        client: client.clone(),
        ca: ca.clone(),
        trust_domain: args.trust_domain.clone(),
        leaf_lifetime: args.leaf_lifetime,
        restrictions: args.namespace_restrictions,
        metrics: metrics.clone(),
        cache: Arc::new(Mutex::new(Default::default())),
        refusals: Arc::new(Mutex::new(Default::default())),
        reviews: Arc::new(tokio::sync::Semaphore::new(
            args.max_concurrent_token_reviews.max(1),
        )),
        reviews_per_peer: Arc::new(crate::certapi::per_minute_limiter(
            args.max_token_reviews_per_peer,
        )),
        issuance: Arc::new(crate::certapi::per_minute_limiter(
            args.max_certificates_per_minute,
        )),
    }
}

/// `GET /v1/crl`: the CA's current CRL (PEM), 503 until the first sync.
async fn serve_crl(State(revocations): State<Revocations>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    match revocations.crl_pem() {
        Some(pem) => (
            [(http::header::CONTENT_TYPE, "application/x-pem-file")],
            pem,
        )
            .into_response(),
        None => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "the CRL is not signed yet; retry shortly\n",
        )
            .into_response(),
    }
}

/// The limits of the certificate API and webhook ports: body size, whole
/// request time, concurrent requests.
fn limited(router: Router, request_timeout: Duration) -> Router {
    router
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT,
        ))
}

/// `/healthz`, `/readyz` (ready once the annotation caches are listed) and
/// `/metrics`.
fn admin_router(metrics: &Metrics, synced: Arc<std::sync::atomic::AtomicBool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || async move {
                // Admissions are served meanwhile (lookups read live), but
                // the Service sends them elsewhere until the caches are full.
                if synced.load(std::sync::atomic::Ordering::Relaxed) {
                    (axum::http::StatusCode::OK, "ready\n")
                } else {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "listing ServiceAccounts and namespaces\n",
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(m): State<Metrics>| async move { m.encode() }),
        )
        .with_state(metrics.clone())
}

/// The broker's three routers.
struct Routers {
    certificates: Router,
    webhook: Router,
    admin: Router,
}

/// The bound ports and what stops them.
struct Served {
    addr: SocketAddr,
    webhook_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds the three ports and serves them until `stop` is sent: the
/// certificate API stops first, then the webhook, then the admin port; then
/// `background` tasks are aborted.
async fn serve_all(
    args: &RunArgs,
    routers: Routers,
    tls: tokio_rustls::TlsAcceptor,
    background: Vec<tokio::task::JoinHandle<()>>,
) -> Result<Served> {
    let listener = attache_rt::serve::bind(args.listen).await?;
    let webhook_listener = attache_rt::serve::bind(args.webhook_listen).await?;
    let admin_listener = attache_rt::serve::bind(args.admin_listen).await?;
    let addr = listener.local_addr()?;
    let webhook_addr = webhook_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (admin_stop_tx, admin_stop_rx) = oneshot::channel::<()>();
    let (webhook_stop_tx, webhook_stop_rx) = oneshot::channel::<()>();
    let webhook_limits = attache_rt::serve::ConnectionLimits {
        per_peer: (args.max_webhook_connections_per_peer > 0)
            .then_some(args.max_webhook_connections_per_peer),
        tag_peer: false,
    };
    let serve_webhook = tokio::spawn(attache_rt::serve::serve_limited(
        webhook_listener,
        routers.webhook,
        Some(tls.clone()),
        async move {
            let _ = webhook_stop_rx.await;
        },
        webhook_limits,
    ));
    let per_peer = attache_rt::serve::ConnectionLimits {
        per_peer: Some(args.max_connections_per_peer.max(1)),
        // The certificate API limits TokenReviews per address.
        tag_peer: true,
    };
    let main = routers.certificates;
    let serve_main = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.await;
        };
        attache_rt::serve::serve_limited(listener, main, Some(tls), stop, per_peer).await;
        let _ = webhook_stop_tx.send(());
        let _ = serve_webhook.await;
        // The admin port goes down last, after in-flight requests finished.
        let _ = admin_stop_tx.send(());
        for task in background {
            task.abort();
        }
    });
    let serve_admin = tokio::spawn(attache_rt::serve::serve(
        admin_listener,
        routers.admin,
        None,
        async move {
            let _ = admin_stop_rx.await;
        },
    ));
    tracing::info!(%addr, %webhook_addr, %admin_addr, "broker serving");
    Ok(Served {
        addr,
        webhook_addr,
        admin_addr,
        stop: stop_tx,
        tasks: vec![serve_main, serve_admin],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    #[test]
    fn a_leaf_may_not_outlive_its_token() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let args = |extra: &[&str]| {
            let base = ["broker", "--trust-anchor-arn", TA, "--profile-arn", PROFILE];
            Cli::try_parse_from(base.iter().chain(extra)).unwrap().run
        };
        check_lifetimes(&args(&[])).unwrap();
        check_lifetimes(&args(&[
            "--leaf-lifetime",
            "30m",
            "--sa-token-seconds",
            "1800",
        ]))
        .unwrap();
        let err = check_lifetimes(&args(&["--leaf-lifetime", "2h"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--leaf-lifetime 7200s is longer than --sa-token-seconds 3600: a certificate must not outlive the token it was issued for"
        );
    }

    const TA: &str = "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/ta";
    const PROFILE: &str = "arn:aws:rolesanywhere:eu-west-1:123456789012:profile/p";

    /// Both HTTPS ports' limits: a request whose body never ends holds its
    /// slot only until the whole-request timeout, then gets 408.
    #[tokio::test(start_paused = true)]
    async fn a_request_whose_body_never_ends_gets_408() {
        let timeout = Duration::from_secs(10);
        let router = limited(
            Router::new().route("/mutate", post(|body: String| async move { body })),
            timeout,
        );
        let never = futures::stream::pending::<Result<Vec<u8>, std::io::Error>>();
        let request = http::Request::post("/mutate")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from_stream(never))
            .unwrap();
        let started = tokio::time::Instant::now();
        let reply = router.oneshot(request).await.unwrap();
        assert_eq!(reply.status(), http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(started.elapsed(), timeout);
    }
}
