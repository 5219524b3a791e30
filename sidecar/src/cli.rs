//! Command-line and environment configuration of `attache-sidecar`, and its
//! validation into the parts the library runs. Every flag has an `ATTACHE_*`
//! environment variable, which is how the broker's webhook configures it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use attache_api::env;
use attache_pki::KeyType;
use attache_rt::logging::LogFormat;
use attache_rt::parse::{duration, key_type};
use clap::{Args, Parser, Subcommand};

use crate::certsource::{
    BrokerSource, BrokerSourceConfig, CertSource, FileSource, FileSourceConfig, SpiffeEndpoint,
    SpiffeSource, SpiffeSourceConfig,
};
use crate::metrics::Metrics;
use attache_aws::cache::RefreshPolicy;
use attache_aws::session::{SessionClient, SessionConfig};

/// AWS credentials for this pod through IAM Roles Anywhere.
#[derive(Debug, Parser)]
#[command(name = "attache-sidecar", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve credentials on the loopback container-credentials endpoint.
    Serve(ServeArgs),
    /// Print one credential_process JSON document and exit (for ~/.aws/config).
    CredentialProcess(SourceArgs),
    /// Keep a profile in an AWS shared credentials file fresh.
    Update(UpdateArgs),
    /// Exit 0 if the local endpoint is ready (for exec probes: it listens on loopback only).
    Probe(ProbeArgs),
}

/// `probe` flags.
#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// The endpoint's listen address.
    #[arg(long, env = env::LISTEN, default_value = "127.0.0.1:9911")]
    pub listen: SocketAddr,
}

/// Where credentials come from: the role to assume and the certificate to use.
#[derive(Debug, Args, Clone)]
pub struct SourceArgs {
    /// AWS region of Roles Anywhere (default: the trust anchor ARN's region).
    #[arg(long, env = env::REGION)]
    pub region: Option<String>,
    /// Roles Anywhere profile ARN.
    #[arg(long, env = env::PROFILE_ARN)]
    pub profile_arn: String,
    /// IAM role to assume.
    #[arg(long, env = env::ROLE_ARN)]
    pub role_arn: String,
    /// Roles Anywhere trust anchor ARN.
    #[arg(long, env = env::TRUST_ANCHOR_ARN)]
    pub trust_anchor_arn: String,
    /// Session lifetime in seconds (900..43200; the profile may cap it).
    #[arg(long, env = env::SESSION_DURATION, default_value_t = 3600)]
    pub session_duration: u32,
    /// Role session name (only if the profile accepts custom names); made
    /// valid for AWS (2-64 characters of [A-Za-z0-9_+=,.@-]) deterministically.
    /// Empty: none (AWS names the session after the certificate's serial).
    #[arg(long, env = env::ROLE_SESSION_NAME)]
    pub role_session_name: Option<String>,
    /// Roles Anywhere endpoint override (default https://rolesanywhere.<region>.amazonaws.com).
    #[arg(long, env = "ATTACHE_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Extra CA bundle (PEM) to trust for the Roles Anywhere endpoint, e.g. a TLS-inspecting proxy.
    #[arg(long, env = "ATTACHE_ENDPOINT_CA_BUNDLE")]
    pub endpoint_ca_bundle: Option<PathBuf>,
    /// Certificate file (PEM; may hold the chain after the leaf). Use with --private-key.
    #[arg(
        long,
        env = "ATTACHE_CERTIFICATE",
        conflicts_with = "broker_url",
        requires = "private_key"
    )]
    pub certificate: Option<PathBuf>,
    /// Private key file (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, env = "ATTACHE_PRIVATE_KEY", requires = "certificate")]
    pub private_key: Option<PathBuf>,
    /// Intermediate certificates (PEM) sent as X-Amz-X509-Chain.
    #[arg(long, env = "ATTACHE_INTERMEDIATES", requires = "certificate")]
    pub intermediates: Option<PathBuf>,
    /// attache broker URL; the certificate is requested from it with a CSR.
    #[arg(long, env = env::BROKER_URL)]
    pub broker_url: Option<String>,
    /// CA bundle (PEM) that signed the broker's serving certificate.
    #[arg(
        long,
        env = "ATTACHE_CA_BUNDLE",
        default_value = "/var/run/secrets/attache.dev/ca/ca.pem"
    )]
    pub ca_bundle: PathBuf,
    /// The broker CA bundle as PEM text (instead of --ca-bundle; how the webhook passes it).
    #[arg(long, env = env::CA_BUNDLE_PEM, hide_env_values = true)]
    pub ca_bundle_pem: Option<String>,
    /// Projected ServiceAccount token (audience attache-broker) proving this pod's identity to the broker.
    #[arg(
        long,
        env = env::SERVICE_ACCOUNT_TOKEN_FILE,
        default_value = "/var/run/secrets/attache.dev/serviceaccount/token"
    )]
    pub service_account_token_file: PathBuf,
    /// SPIFFE Workload API socket (unix:///path/to/socket): the X.509-SVID and
    /// its key come from it, following the agent's rotations.
    #[arg(
        long,
        env = "SPIFFE_ENDPOINT_SOCKET",
        value_name = "URI",
        conflicts_with_all = ["certificate", "broker_url"]
    )]
    pub spiffe_endpoint_socket: Option<SpiffeEndpoint>,
    /// The SPIFFE ID of the X.509-SVID to use when the Workload API offers
    /// several (default: the first, the API's default).
    #[arg(long, env = "ATTACHE_SPIFFE_ID", requires = "spiffe_endpoint_socket")]
    pub spiffe_id: Option<spiffe::SpiffeId>,
    /// Key type generated for broker-issued certificates.
    #[arg(long, env = "ATTACHE_KEY_TYPE", default_value = "ecdsa-p256", value_parser = key_type)]
    pub key_type: KeyType,
    /// Connect timeout for AWS and the broker.
    #[arg(long, env = "ATTACHE_CONNECT_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub connect_timeout: Duration,
    /// Whole-request timeout for AWS and the broker; also how long to wait
    /// for the first SVID from the SPIFFE Workload API.
    #[arg(long, env = "ATTACHE_REQUEST_TIMEOUT", default_value = "15s", value_parser = duration)]
    pub request_timeout: Duration,
    /// Log format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// `serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Source of credentials.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Listen address (keep it on loopback).
    #[arg(long, env = env::LISTEN, default_value = "127.0.0.1:9911")]
    pub listen: SocketAddr,
    /// Authorization token file (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE); created with a random token if absent.
    #[arg(
        long,
        env = env::TOKEN_FILE,
        default_value = "/var/run/secrets/attache.dev/token"
    )]
    pub token_file: PathBuf,
    /// Refresh when this fraction of the credentials' lifetime has passed.
    #[arg(long, env = "ATTACHE_REFRESH_FRACTION", default_value_t = 0.5)]
    pub refresh_fraction: f64,
    /// Refresh no later than this long before expiry.
    #[arg(long, env = "ATTACHE_REFRESH_BEFORE", default_value = "15m", value_parser = duration)]
    pub refresh_before: Duration,
    /// Also serve IMDSv2-compatible paths (/latest/api/token, /latest/meta-data/iam/security-credentials/).
    #[arg(long, env = "ATTACHE_IMDS")]
    pub imds: bool,
}

/// `update` flags.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Source of credentials.
    #[command(flatten)]
    pub source: SourceArgs,
    /// Shared credentials file to keep fresh.
    #[arg(
        long,
        env = "ATTACHE_CREDENTIALS_FILE",
        default_value = "~/.aws/credentials"
    )]
    pub credentials_file: String,
    /// Profile (section) name to write.
    #[arg(long, env = "ATTACHE_PROFILE", default_value = "default")]
    pub profile: String,
    /// Write once and exit instead of refreshing forever.
    #[arg(long)]
    pub once: bool,
}

impl ServeArgs {
    /// The refresh policy these flags describe.
    pub fn policy(&self) -> Result<RefreshPolicy, String> {
        if !(0.05..=0.95).contains(&self.refresh_fraction) {
            return Err(format!(
                "invalid --refresh-fraction {}: expected 0.05..0.95",
                self.refresh_fraction
            ));
        }
        Ok(RefreshPolicy {
            fraction: self.refresh_fraction,
            min_before_expiry: self.refresh_before,
            ..RefreshPolicy::default()
        })
    }
}

/// The validated runtime pieces.
pub struct Setup {
    /// CreateSession client.
    pub client: SessionClient,
    /// Certificate source.
    pub certs: CertSource,
    /// How long building the client took (TLS configuration, root store).
    pub client_took: std::time::Duration,
    /// How long reading and checking the certificate took.
    pub certificate_took: std::time::Duration,
}

impl SourceArgs {
    /// Validates everything and builds the pieces. On failure returns one line
    /// per problem found, so a user fixes them all in one go.
    pub fn build(&self, metrics: &Metrics) -> Result<Setup, Vec<String>> {
        let mut problems = Vec::new();
        let config = self.session_config(&mut problems);
        let t = std::time::Instant::now();
        let client = if problems.is_empty() {
            SessionClient::new(config)
                .map_err(|e| problems.push(e.to_string()))
                .ok()
        } else {
            None
        };
        let client_took = t.elapsed();
        let t = std::time::Instant::now();
        let certs = self.cert_source(metrics).map_err(|e| problems.push(e)).ok();
        let certificate_took = t.elapsed();
        match (client, certs) {
            (Some(client), Some(certs)) if problems.is_empty() => Ok(Setup {
                client,
                certs,
                client_took,
                certificate_took,
            }),
            _ => Err(problems),
        }
    }

    /// The CreateSession settings; each bad field adds one line to
    /// `problems` (all of them, not only the first).
    fn session_config(&self, problems: &mut Vec<String>) -> SessionConfig {
        let region = self
            .region
            .clone()
            .or_else(|| attache_aws::arn::arn_region(&self.trust_anchor_arn).map(str::to_string))
            .unwrap_or_default();
        let extra_roots_pem = self.endpoint_ca_bundle.as_ref().and_then(|p| {
            std::fs::read_to_string(p)
                .map_err(|e| {
                    problems.push(format!(
                        "cannot read --endpoint-ca-bundle {}: {e}",
                        p.display()
                    ))
                })
                .ok()
        });
        let config = SessionConfig {
            region,
            endpoint: self.endpoint.clone(),
            profile_arn: self.profile_arn.clone(),
            role_arn: self.role_arn.clone(),
            trust_anchor_arn: self.trust_anchor_arn.clone(),
            duration_seconds: self.session_duration,
            role_session_name: self
                .role_session_name
                .as_deref()
                .map(attache_aws::session::role_session_name)
                .filter(|n| !n.is_empty()),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            extra_roots_pem,
        };
        let checks = [
            attache_aws::arn::validate_region(&config.region),
            attache_aws::arn::validate_rolesanywhere_arn(&config.profile_arn, "profile"),
            attache_aws::arn::validate_rolesanywhere_arn(&config.trust_anchor_arn, "trust-anchor"),
            attache_aws::arn::validate_role_arn(&config.role_arn),
        ];
        problems.extend(
            checks
                .into_iter()
                .filter_map(Result::err)
                .map(|e| e.to_string()),
        );
        config
    }

    /// Certificates from files (checked now), the broker or the SPIFFE
    /// Workload API.
    fn cert_source(&self, metrics: &Metrics) -> Result<CertSource, String> {
        if let Some(endpoint) = &self.spiffe_endpoint_socket {
            return Ok(CertSource::Spiffe(SpiffeSource::new(
                SpiffeSourceConfig {
                    endpoint: endpoint.clone(),
                    spiffe_id: self.spiffe_id.clone(),
                    first_svid_timeout: self.request_timeout,
                },
                metrics.clone(),
            )));
        }
        match (&self.certificate, &self.private_key, &self.broker_url) {
            (Some(cert), Some(key), _) => {
                let files = FileSource::new(
                    FileSourceConfig {
                        certificate: cert.clone(),
                        private_key: key.clone(),
                        intermediates: self.intermediates.clone(),
                    },
                    metrics.clone(),
                );
                files
                    .load(time::OffsetDateTime::now_utc())
                    .map(|_| CertSource::Files(files))
                    .map_err(|e| e.to_string())
            }
            (_, _, Some(url)) => BrokerSource::new(
                BrokerSourceConfig {
                    url: url.clone(),
                    ca_bundle: self.ca_bundle.clone(),
                    ca_bundle_pem: self.ca_bundle_pem.clone(),
                    service_account_token: self.service_account_token_file.clone(),
                    key_type: self.key_type,
                    timeout: self.request_timeout,
                },
                metrics.clone(),
            )
            .map(CertSource::Broker)
            .map_err(|e| e.to_string()),
            _ => Err(
                "no certificate source: give --certificate and --private-key, --broker-url, \
                 or --spiffe-endpoint-socket"
                    .into(),
            ),
        }
    }
}

/// Expands a leading `~/` with `$HOME`.
pub fn expand_home(path: &str) -> PathBuf {
    match (path.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(path),
    }
}

/// Shared handle type of the clock used in binaries.
pub fn system_clock() -> Arc<dyn attache_rt::clock::Clock> {
    Arc::new(attache_rt::clock::SystemClock)
}
