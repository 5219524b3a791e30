//! `attache-broker ecr-controller`: the ECR pull-secret controller alone, as
//! its own Deployment and ServiceAccount (`attache-ecr-controller`), apart
//! from the broker's webhook and certificate API. It reads the workload CA
//! Secret (get by name, never creates it: the broker does) to mint each
//! ServiceAccount's ECR certificate, campaigns for its Lease, and serves
//! `/healthz`, `/readyz` and `/metrics` on its admin port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use attache_pki::CertificateAuthority;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::{ArgAction, Args};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::{EcrArgs, EcrContext, EcrHandle};
use crate::metrics::Metrics;

/// How often a missing or unreadable CA Secret is read again.
const CA_RETRY: Duration = Duration::from_secs(5);

/// Flags of `attache-broker ecr-controller`; each also settable by its `ATTACHE_*` variable.
#[derive(Debug, Args, Clone)]
pub struct EcrControllerArgs {
    /// Namespace the controller runs in (holds the CA Secret, its Lease and its token state Secret).
    #[arg(long, env = "ATTACHE_NAMESPACE", default_value = "attache-system")]
    pub namespace: String,
    /// Trust domain: the cluster's name in SPIFFE IDs (as the broker's --trust-domain).
    #[arg(long, env = "ATTACHE_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Roles Anywhere defaults and the overrides ServiceAccounts may ask for.
    #[command(flatten)]
    pub session: crate::flags::SessionDefaults,
    /// Enforce the namespace annotation attache.dev/allowed-roles.
    #[arg(long, env = "ATTACHE_NAMESPACE_RESTRICTIONS", default_value_t = true, action = ArgAction::Set)]
    pub namespace_restrictions: bool,
    /// Secret holding the workload CA in --namespace (read only; the broker creates it).
    #[arg(long, env = "ATTACHE_CA_SECRET", default_value = attache_api::names::CA_SECRET)]
    pub ca_secret: String,
    /// Admin listen address (/healthz, /readyz, /metrics; plain HTTP).
    #[arg(long, env = "ATTACHE_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,
    /// Log format: json or text.
    #[arg(long, env = attache_api::env::LOG_FORMAT, value_enum, default_value_t = attache_rt::logging::LogFormat::Json)]
    pub log_format: attache_rt::logging::LogFormat,
    /// The controller's work.
    #[command(flatten)]
    pub ecr: EcrArgs,
}

impl EcrControllerArgs {
    /// Checks the flags, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        self.ecr.validate()?;
        let (Some(profile), Some(anchor)) =
            (&self.session.profile_arn, &self.session.trust_anchor_arn)
        else {
            anyhow::bail!("the ECR controller needs --profile-arn and --trust-anchor-arn");
        };
        attache_aws::arn::validate_rolesanywhere_arn(profile, "profile")
            .map_err(|e| anyhow::anyhow!("--profile-arn: {e}"))?;
        attache_aws::arn::validate_rolesanywhere_arn(anchor, "trust-anchor")
            .map_err(|e| anyhow::anyhow!("--trust-anchor-arn: {e}"))?;
        Ok(())
    }
}

/// The workload CA from its Secret, waiting until it exists and is readable.
pub async fn wait_for_ca(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> CertificateAuthority {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    loop {
        match secrets.get_opt(name).await {
            Ok(Some(s)) => match crate::castore::from_secret(&s, namespace, name) {
                Ok(ca) => return ca,
                Err(e) => tracing::warn!(error = %e, "the workload CA is unusable; retrying"),
            },
            Ok(None) => {
                tracing::warn!(
                    namespace,
                    secret = name,
                    "no workload CA Secret yet (the broker creates it); retrying"
                )
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the workload CA Secret; retrying"),
        }
        tokio::time::sleep(CA_RETRY).await;
    }
}

/// A running `ecr-controller` (for tests and the binary).
pub struct RunningController {
    /// Admin address actually bound.
    pub admin_addr: SocketAddr,
    /// Metrics.
    pub metrics: Metrics,
    ready: Arc<AtomicBool>,
    startup: tokio::task::JoinHandle<Result<EcrHandle>>,
    admin_stop: tokio::sync::oneshot::Sender<()>,
    serve_admin: tokio::task::JoinHandle<()>,
}

impl RunningController {
    /// Whether the CA is loaded and the controller campaigning.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Stops the controller (handing its Lease over) and the admin port.
    pub async fn shutdown(self) -> Result<()> {
        let result = if self.startup.is_finished() {
            match self.startup.await {
                Ok(Ok(handle)) => {
                    handle.shutdown().await;
                    Ok(())
                }
                Ok(Err(e)) => Err(e),
                Err(e) => Err(anyhow::anyhow!("the ECR controller's start failed: {e}")),
            }
        } else {
            self.startup.abort();
            Ok(())
        };
        let _ = self.admin_stop.send(());
        let _ = self.serve_admin.await;
        result
    }
}

/// Serves the admin port and starts the controller once the workload CA can
/// be read; returns once the admin port is bound.
pub async fn start(args: EcrControllerArgs, client: kube::Client) -> Result<RunningController> {
    args.validate()?;
    let metrics = Metrics::default();
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(
                |State((_, ready)): State<(Metrics, Arc<AtomicBool>)>| async move {
                    if ready.load(Ordering::Relaxed) {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "waiting for the workload CA\n",
                        )
                    }
                },
            ),
        )
        .route(
            "/metrics",
            get(|State((m, _)): State<(Metrics, Arc<AtomicBool>)>| async move { m.encode() }),
        )
        .with_state((metrics.clone(), ready.clone()));
    let listener = attache_rt::serve::bind(args.admin_listen).await?;
    let admin_addr = listener.local_addr()?;
    let (admin_stop, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serve_admin = tokio::spawn(attache_rt::serve::serve(
        listener,
        admin,
        None,
        async move {
            let _ = admin_stop_rx.await;
        },
    ));
    let startup = {
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let ca = wait_for_ca(&client, &args.namespace, &args.ca_secret).await;
            tracing::info!(fingerprint = %ca.info().sha256_fingerprint, "workload CA loaded");
            let handle = super::start(
                &args.ecr,
                EcrContext {
                    client: client.clone(),
                    ca: Arc::new(ca),
                    namespace: args.namespace.clone(),
                    trust_domain: args.trust_domain.clone(),
                    session: args.session.clone(),
                    namespace_restrictions: args.namespace_restrictions,
                    metrics,
                    clock: Arc::new(attache_rt::clock::SystemClock),
                },
            )
            .await;
            match handle {
                Ok(h) => {
                    ready.store(true, Ordering::Relaxed);
                    Ok(h)
                }
                Err(e) => {
                    // Stays unready (/readyz 503), so the rollout stops here.
                    tracing::error!(error = %format!("{e:#}"), "cannot start the ECR controller");
                    Err(e)
                }
            }
        })
    };
    tracing::info!(%admin_addr, "ECR controller admin port serving");
    Ok(RunningController {
        admin_addr,
        metrics,
        ready,
        startup,
        admin_stop,
        serve_admin,
    })
}

/// Runs the controller until SIGTERM or Ctrl-C.
pub async fn run(args: EcrControllerArgs, client: kube::Client) -> Result<()> {
    let running = start(args, client).await?;
    attache_rt::serve::shutdown_signal().await;
    running.shutdown().await
}
