//! The ECR pull-secret controller: for every ServiceAccount that asks for it
//! (`attache.dev/ecr-registries` on the SA, or on its namespace meaning every
//! SA there), keeps a `kubernetes.io/dockerconfigjson` Secret with fresh ECR
//! registry passwords and lists it in the SA's `imagePullSecrets`.
//!
//! - [`registry`]: registry hosts and regional endpoints.
//! - `attache_aws::ecr`: the `GetAuthorizationToken` client (SigV4 via `aws-sigv4`).
//! - [`tokens`]: one shared token per (role, region, profile), refresh schedule, backoff.
//! - [`secret`]: the Secret's name, content, annotations and ownership rule.
//! - [`world`]: the reduced watch state, the work queue, token dependencies.
//! - [`controller`]: watches, reconcile, schedulers.
//! - [`leader`]: Lease-based leader election (one active controller).
//!
//! Precedence: a ServiceAccount's `attache.dev/ecr-registries` replaces its
//! namespace's (an empty value on the SA opts it out); `attache.dev/ecr-role-arn`
//! on the SA replaces `--ecr-role-arn`. The role must be allowed by the
//! namespace's `attache.dev/allowed-roles` when namespace restrictions are on.
//! A Secret with attache's name that attache does not own (no
//! `app.kubernetes.io/managed-by: attache` label, or owned by another
//! ServiceAccount) is never modified; a Warning Event on the SA says so.
//!
//! Identity: each ServiceAccount's ECR session uses a certificate for that
//! ServiceAccount (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, minted by the
//! controller from the workload CA), so the ECR role's trust policy must allow
//! the ServiceAccounts that pull with it, exactly as for pods
//! (`attache-broker aws-policy --service-account <ns>/<sa>,...`). The controller runs as its own
//! Deployment and ServiceAccount (`attache-broker ecr-controller`, [`cli`]).
//!
//! - [`credentials`]: per-ServiceAccount certificates, sessions and AWS's verdicts.
//! - [`state`]: the tokens' state, in a Secret of the controller's own namespace.
//! - [`crl_sync`]: pushes the broker's CRL to Roles Anywhere (`--crl-sync-role-arn`).

pub mod cli;
pub mod controller;
pub mod credentials;
pub mod crl_sync;
pub mod leader;
mod mirror;
pub mod registry;
pub mod secret;
pub mod state;
pub mod tokens;
pub mod world;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use attache_aws::cache::RefreshPolicy;
use attache_pki::CertificateAuthority;
use attache_rt::clock::Clock;
use attache_rt::parse::duration;
use attache_rt::task::{AbortOnDrop, StopSignal, StoppableTask};
use clap::Args;
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Flags of the ECR controller's work (flattened into `attache-broker
/// ecr-controller`); each also settable by its `ATTACHE_*` variable.
#[derive(Debug, Args, Clone)]
pub struct EcrArgs {
    /// Default IAM role for ECR tokens (a ServiceAccount may name another with attache.dev/ecr-role-arn).
    #[arg(long, env = "ATTACHE_ECR_ROLE_ARN")]
    pub ecr_role_arn: Option<String>,
    /// How often each shared ECR token is renewed (minus up to 10% jitter).
    #[arg(long, env = "ATTACHE_ECR_REFRESH_INTERVAL", default_value = "6h", value_parser = duration)]
    pub ecr_refresh_interval: Duration,
    /// Renew sooner when a token has less than this left.
    #[arg(long, env = "ATTACHE_ECR_MIN_REMAINING", default_value = "4h", value_parser = duration)]
    pub ecr_min_remaining: Duration,
    /// ECR API endpoint override: one URL for every region, or REGION=URL pairs, comma-separated.
    #[arg(long, env = "ATTACHE_ECR_ENDPOINT")]
    pub ecr_endpoint: Option<String>,
    /// Roles Anywhere endpoint override for the controller's sessions: one URL, or
    /// REGION=URL pairs (a region listed gets its own session there, e.g. one emulator per region).
    #[arg(long, env = "ATTACHE_ROLESANYWHERE_ENDPOINT")]
    pub rolesanywhere_endpoint: Option<String>,
    /// Roles Anywhere session duration for ECR roles, seconds (900..43200); AWS's acceptance of a ServiceAccount is reused this long.
    #[arg(long, env = "ATTACHE_ECR_SESSION_DURATION", default_value_t = 3600)]
    pub ecr_session_duration: u32,
    /// CreateSession calls per second at most, one per ServiceAccount and ECR role (0: unlimited; Roles Anywhere allows 10/s per account and region by default, shared with pods).
    #[arg(long, env = "ATTACHE_ECR_SESSION_RATE", default_value_t = 5.0)]
    pub ecr_session_rate: f64,
    /// ServiceAccounts reconciled at once.
    #[arg(long, env = "ATTACHE_ECR_WORKERS", default_value_t = 16)]
    pub ecr_workers: usize,
    /// Lease electing the one active controller (in the controller's namespace).
    #[arg(
        long,
        env = "ATTACHE_ECR_LEASE_NAME",
        default_value = "attache-ecr-controller"
    )]
    pub ecr_lease_name: String,
    /// How long a leader's Lease lasts without renewal.
    #[arg(long, env = "ATTACHE_ECR_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    pub ecr_lease_duration: Duration,
    /// A leader that cannot renew for this long stops (must be < lease duration).
    #[arg(long, env = "ATTACHE_ECR_LEASE_RENEW_DEADLINE", default_value = "10s", value_parser = duration)]
    pub ecr_lease_renew_deadline: Duration,
    /// Pause between Lease attempts.
    #[arg(long, env = "ATTACHE_ECR_LEASE_RETRY_PERIOD", default_value = "2s", value_parser = duration)]
    pub ecr_lease_retry_period: Duration,
    /// This replica's identity in the Lease (default: POD_NAME or the host name, plus a random suffix).
    #[arg(long, env = "ATTACHE_POD_NAME")]
    pub ecr_identity: Option<String>,
    /// IAM role the controller assumes, as its own ServiceAccount, to push the broker's CRL to Roles
    /// Anywhere (ImportCrl, then UpdateCrl) on --trust-anchor-arn; unset: the CRL is not pushed.
    #[arg(long, env = "ATTACHE_CRL_SYNC_ROLE_ARN")]
    pub crl_sync_role_arn: Option<String>,
    /// Name of the CRL in Roles Anywhere.
    #[arg(long, env = "ATTACHE_CRL_NAME", default_value = "attache")]
    pub crl_name: String,
    /// How often the broker's CRL is checked and, when it changed, pushed.
    #[arg(long, env = "ATTACHE_CRL_SYNC_INTERVAL", default_value = "30s", value_parser = duration)]
    pub crl_sync_interval: Duration,
    /// The controller's own ServiceAccount in its namespace: its identity for the CRL push.
    #[arg(
        long,
        env = "ATTACHE_SERVICE_ACCOUNT",
        default_value = "attache-ecr-controller"
    )]
    pub service_account: String,
}

impl EcrArgs {
    /// Checks the flags, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            (900..=43200).contains(&self.ecr_session_duration),
            "--ecr-session-duration must be 900..=43200 seconds, got {}",
            self.ecr_session_duration
        );
        anyhow::ensure!(
            self.ecr_min_remaining < Duration::from_secs(12 * 3600),
            "--ecr-min-remaining must be under ECR's 12 h token lifetime"
        );
        anyhow::ensure!(
            self.ecr_refresh_interval >= Duration::from_secs(60),
            "--ecr-refresh-interval must be at least 1m"
        );
        anyhow::ensure!(
            self.ecr_lease_renew_deadline < self.ecr_lease_duration
                && self.ecr_lease_retry_period < self.ecr_lease_renew_deadline,
            "need --ecr-lease-retry-period < --ecr-lease-renew-deadline < --ecr-lease-duration"
        );
        anyhow::ensure!(
            self.ecr_session_rate.is_finite() && self.ecr_session_rate >= 0.0,
            "--ecr-session-rate must be a number >= 0"
        );
        if let Some(role) = &self.ecr_role_arn {
            attache_aws::arn::validate_role_arn(role).context("--ecr-role-arn")?;
        }
        if let Some(role) = &self.crl_sync_role_arn {
            attache_aws::arn::validate_role_arn(role).context("--crl-sync-role-arn")?;
        }
        anyhow::ensure!(
            self.crl_sync_interval >= Duration::from_secs(1),
            "--crl-sync-interval must be at least 1s"
        );
        attache_aws::ecr::Endpoints::parse(self.ecr_endpoint.as_deref())
            .map_err(|e| anyhow::anyhow!("--ecr-endpoint: {e}"))?;
        attache_aws::ecr::Endpoints::parse(self.rolesanywhere_endpoint.as_deref())
            .map_err(|e| anyhow::anyhow!("--rolesanywhere-endpoint: {e}"))?;
        Ok(())
    }
}

/// What the controller runs with besides its flags.
#[derive(Clone)]
pub struct EcrContext {
    /// Kubernetes client (the controller's own ServiceAccount).
    pub client: kube::Client,
    /// The workload CA: the controller mints each ServiceAccount's ECR certificate from it.
    pub ca: Arc<CertificateAuthority>,
    /// The controller's namespace (holds the Lease and the token state Secret).
    pub namespace: String,
    /// Trust domain of certificates.
    pub trust_domain: String,
    /// Roles Anywhere defaults (profile and trust anchor required) and allowed overrides.
    pub session: crate::flags::SessionDefaults,
    /// Enforce `attache.dev/allowed-roles`.
    pub namespace_restrictions: bool,
    /// Metrics.
    pub metrics: Metrics,
    /// The clock schedules run on (tests inject a manual one).
    pub clock: Arc<dyn Clock>,
}

/// The running controller.
pub struct EcrHandle {
    leading: watch::Receiver<bool>,
    // Dropped in this order: the supervisor (and with it every write) is
    // aborted before the elector stops campaigning.
    supervisor: StoppableTask<()>,
    elector: leader::Elector,
}

impl EcrHandle {
    /// Whether this replica is the active controller now.
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// Changes of leadership.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Stops the controller and hands the Lease over at once.
    pub async fn shutdown(self) {
        let _ = self.supervisor.stop().await;
        self.elector.release().await;
    }
}

fn identity(args: &EcrArgs) -> String {
    let base = args
        .ecr_identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "attache-ecr-controller".into());
    if args.ecr_identity.is_some() {
        return base;
    }
    let mut b = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut b);
    format!("{base}_{}", hex::encode(b))
}

/// Starts campaigning for the Lease; while leading, runs the controller.
/// Returns at once; an error names the missing or bad setting.
pub async fn start(args: &EcrArgs, ctx: EcrContext) -> Result<EcrHandle> {
    args.validate()?;
    let plan = Plan::resolve(args, &ctx)?;
    tracing::info!(identity = %plan.identity, trust_domain = %ctx.trust_domain, "ECR pull-secret controller campaigning for its Lease");
    let elector = leader::Elector::spawn(
        ctx.client.clone(),
        leader::LeaseConfig {
            name: args.ecr_lease_name.clone(),
            namespace: ctx.namespace.clone(),
            identity: plan.identity.clone(),
            lease_duration: args.ecr_lease_duration,
            renew_deadline: args.ecr_lease_renew_deadline,
            retry_period: args.ecr_lease_retry_period,
        },
        ctx.clock.clone(),
    );
    let leading = elector.leading();
    let supervisor =
        StoppableTask::spawn(|stop| supervise(args.clone(), ctx, plan, elector.leading(), stop));
    Ok(EcrHandle {
        leading,
        elector,
        supervisor,
    })
}

/// Each time this replica becomes the leader, a new [`Term`] runs until the
/// lead is lost or `stop` fires.
async fn supervise(
    args: EcrArgs,
    ctx: EcrContext,
    plan: Plan,
    mut leading: tokio::sync::watch::Receiver<bool>,
    mut stop: StopSignal,
) {
    loop {
        tokio::select! {
            r = leading.wait_for(|l| *l) => if r.is_err() { return },
            _ = &mut stop => return,
        }
        let term = match new_term(&args, &ctx, &plan) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "cannot start the ECR controller");
                return;
            }
        };
        // Aborted with the supervisor, so a dropped handle stops all writes.
        let task = AbortOnDrop(tokio::spawn(term.controller.run()));
        let crl = term
            .crl
            .map(|p| AbortOnDrop(tokio::spawn(p.run(args.crl_sync_interval))));
        tokio::select! {
            _ = leading.wait_for(|l| !*l) => {}
            _ = &mut stop => return,
        }
        drop((task, crl));
        tracing::info!("ECR controller stopped (no longer the leader)");
    }
}

/// The settings every term shares, checked once at start.
struct Plan {
    defaults: Defaults,
    settings: credentials::SessionSettings,
    ecr_endpoints: attache_aws::ecr::Endpoints,
    /// This replica's Lease holder identity (also the Events' instance).
    identity: String,
}

impl Plan {
    /// The profile and trust anchor (both required and valid), the region
    /// (the trust anchor's, else `--region`), the endpoints and rate.
    fn resolve(args: &EcrArgs, ctx: &EcrContext) -> Result<Plan> {
        let (Some(profile_arn), Some(trust_anchor_arn)) = (
            ctx.session.profile_arn.clone(),
            ctx.session.trust_anchor_arn.clone(),
        ) else {
            anyhow::bail!("the ECR controller needs --profile-arn and --trust-anchor-arn");
        };
        attache_aws::arn::validate_rolesanywhere_arn(&profile_arn, "profile")
            .context("--profile-arn")?;
        attache_aws::arn::validate_rolesanywhere_arn(&trust_anchor_arn, "trust-anchor")
            .context("--trust-anchor-arn")?;
        let region = attache_aws::arn::arn_region(&trust_anchor_arn)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| ctx.session.region.clone());
        anyhow::ensure!(
            !region.is_empty(),
            "no region for the ECR controller's Roles Anywhere sessions: set --region"
        );
        let endpoints = |given: &Option<String>| {
            attache_aws::ecr::Endpoints::parse(given.as_deref()).map_err(anyhow::Error::msg)
        };
        Ok(Plan {
            defaults: Defaults {
                profile: profile_arn,
                trust_anchor: trust_anchor_arn,
            },
            settings: credentials::SessionSettings {
                region,
                endpoints: endpoints(&args.rolesanywhere_endpoint)?,
                duration_seconds: args.ecr_session_duration,
                rate_per_second: args.ecr_session_rate,
            },
            ecr_endpoints: endpoints(&args.ecr_endpoint)?,
            identity: identity(args),
        })
    }
}

/// What a leader runs: the controller, and the CRL push if configured.
struct Term {
    controller: Arc<controller::Controller>,
    crl: Option<crl_sync::CrlPusher>,
}

/// The Roles Anywhere profile and trust anchor a ServiceAccount gets unless
/// it overrides them.
struct Defaults {
    profile: String,
    trust_anchor: String,
}

fn new_term(args: &EcrArgs, ctx: &EcrContext, plan: &Plan) -> Result<Term> {
    let backoff = RefreshPolicy::default();
    let sessions = Arc::new(credentials::Sessions::new(
        plan.settings.clone(),
        credentials::Issuer::new(ctx.ca.clone(), &ctx.trust_domain),
        ctx.clock.clone(),
        ctx.metrics.clone(),
        backoff.clone(),
    ));
    let client =
        attache_aws::ecr::TokenClient::new(plan.ecr_endpoints.clone(), Duration::from_secs(15))?;
    let tokens = Arc::new(tokens::Tokens::new(
        client,
        ctx.clock.clone(),
        tokens::TokenPolicy {
            refresh_interval: args.ecr_refresh_interval,
            min_remaining: args.ecr_min_remaining,
            jitter: 0.1,
            backoff: backoff.clone(),
        },
        ctx.metrics.clone(),
    ));
    let recorder = kube::runtime::events::Recorder::new(
        ctx.client.clone(),
        kube::runtime::events::Reporter {
            controller: "attache-ecr".into(),
            instance: Some(plan.identity.clone()),
        },
    );
    let crl = match &args.crl_sync_role_arn {
        Some(role) => Some(crl_pusher(args, ctx, plan, role, sessions.clone())?),
        None => None,
    };
    let defaults = &plan.defaults;
    let controller = Arc::new(controller::Controller::new(
        ctx.client.clone(),
        controller::ControllerConfig {
            default_role: args.ecr_role_arn.clone(),
            default_profile: defaults.profile.clone(),
            default_trust_anchor: defaults.trust_anchor.clone(),
            overrides: crate::policy::ArnOverrides {
                default_profile: Some(defaults.profile.clone()),
                default_trust_anchor: Some(defaults.trust_anchor.clone()),
                allowed_profiles: ctx.session.allowed_profile_arns.clone(),
                allowed_trust_anchors: ctx.session.allowed_trust_anchor_arns.clone(),
            },
            restrictions: ctx.namespace_restrictions,
            workers: args.ecr_workers,
            foreign_recheck: args.ecr_refresh_interval,
            backoff,
        },
        ctx.clock.clone(),
        ctx.metrics.clone(),
        recorder,
        controller::TokenSources {
            tokens,
            sessions,
            store: Arc::new(state::TokenStore::new(ctx.client.clone(), &ctx.namespace)),
        },
    ));
    Ok(Term { controller, crl })
}

/// The CRL push to Roles Anywhere, as the controller's own ServiceAccount
/// assuming `role`.
fn crl_pusher(
    args: &EcrArgs,
    ctx: &EcrContext,
    plan: &Plan,
    role: &str,
    sessions: Arc<credentials::Sessions>,
) -> Result<crl_sync::CrlPusher> {
    let settings = &plan.settings;
    Ok(crl_sync::CrlPusher {
        store: crate::revocation::LedgerStore::new(ctx.client.clone(), &ctx.namespace),
        ca: ctx.ca.clone(),
        sessions,
        identity: world::Key::new(&ctx.namespace, &args.service_account),
        target: settings.target(
            role,
            &plan.defaults.profile,
            &plan.defaults.trust_anchor,
            &settings.region,
        ),
        name: args.crl_name.clone(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .context("HTTP client for Roles Anywhere")?,
        metrics: ctx.metrics.clone(),
        pushed: None,
    })
}
