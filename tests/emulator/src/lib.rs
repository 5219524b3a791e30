//! An AWS emulator for attache's tests and local demo: IAM Roles Anywhere
//! `CreateSession` and CRL operations (`ImportCrl`, `ListCrls`, ...), STS
//! `GetCallerIdentity` and ECR `GetAuthorizationToken`,
//! verifying requests as strictly as AWS does, with run-time fault injection.
//!
//! - [`config`]: accounts, trust anchors, profiles, roles (TOML or code).
//! - [`Emulator`]: the running server handle tests configure and inspect.
//! - [`Faults`]: latency, 5xx, throttling, dropped connections, clock skew.
//!
//! Depends on `attache-pki` (certificate checks) and `attache-aws` (its
//! SDK-style client signs with the same SigV4 code), never on a binary crate.

pub mod client;
pub mod config;
mod crl;
mod ecr;
pub mod faults;
mod policy;
mod rolesanywhere;
mod server;
mod sigv4_verify;
mod state;
mod sts;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use attache_pki::{CaOptions, CertificateAuthority, KeyType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{
    Condition, ConfigError, EmulatorConfig, Operator, Permission, Profile, Role, TrustAnchorConfig,
};
pub use crl::{MAX_CRL_BODY_BYTES, MAX_CRL_BYTES};
pub use ecr::TOKEN_LIFETIME as ECR_TOKEN_LIFETIME;
pub use faults::Faults;
pub use rolesanywhere::{DEFAULT_DURATION, MAX_DURATION, MIN_DURATION};
pub use server::MAX_BODY_BYTES;
pub use state::{CrlRecord, Operation, SessionRecord};

use state::{Anchor, Registry, Shared, parse_anchor_bundle};

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TLS certificate could not be made or loaded.
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

/// A running emulator. Dropping it stops the server; [`Emulator::shutdown`]
/// also waits for in-flight requests.
pub struct Emulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    scheme: &'static str,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("url", &self.url())
            .field("region", &self.shared.region)
            .field("account", &self.shared.account)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Starts a plain-HTTP emulator on `config.listen`.
    pub async fn start(config: EmulatorConfig) -> anyhow::Result<Emulator> {
        Ok(Self::launch(config, None).await?)
    }

    /// Starts an HTTPS emulator with a freshly generated CA and a server
    /// certificate for `localhost` and `127.0.0.1`. Returns the CA PEM to trust.
    pub async fn start_tls(config: EmulatorConfig) -> anyhow::Result<(Emulator, String)> {
        let (acceptor, ca_pem) = tls_acceptor().map_err(StartError::Tls)?;
        let emulator = Self::launch(config, Some(acceptor)).await?;
        Ok((emulator, ca_pem))
    }

    async fn launch(
        config: EmulatorConfig,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Result<Emulator, StartError> {
        config.validate()?;
        let mut registry = Registry::default();
        for anchor in &config.trust_anchors {
            let pem = anchor.bundle_pem()?;
            let certs = parse_anchor_bundle(&pem).map_err(|why| ConfigError::TrustAnchor {
                arn: anchor.arn.clone(),
                why,
            })?;
            registry.anchors.insert(
                anchor.arn.clone(),
                Anchor {
                    certs_der: certs,
                    enabled: anchor.enabled,
                    load_error: None,
                },
            );
        }
        for p in &config.profiles {
            registry.profiles.insert(p.arn.clone(), p.clone());
        }
        for r in &config.roles {
            registry.roles.insert(r.arn.clone(), r.clone());
        }
        registry.permissions = config.permissions.clone();
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared::new(
            config.region,
            config.account,
            registry,
            config.create_session_per_second,
        ));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, tls, shared.clone(), rx));
        tracing::info!(url = %format!("{scheme}://{addr}"), region = %shared.region, "AWS emulator listening");
        Ok(Emulator {
            shared,
            addr,
            scheme,
            shutdown: tx,
            task: Some(task),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`; use it as the endpoint
    /// override for Roles Anywhere, STS and ECR alike.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The region requests must be scoped to.
    pub fn region(&self) -> &str {
        &self.shared.region
    }

    /// The account that owns the roles.
    pub fn account(&self) -> &str {
        &self.shared.account
    }

    /// The emulator's clock (real time plus injected skew).
    pub fn now(&self) -> OffsetDateTime {
        self.shared.now()
    }

    /// Adds or replaces a trust anchor. A bundle that holds no usable
    /// certificate is logged and makes every session naming this anchor fail;
    /// use [`Emulator::try_add_trust_anchor`] to get the error instead.
    pub fn add_trust_anchor(&self, arn: &str, ca_bundle_pem: &str, enabled: bool) {
        if let Err(e) = self.try_add_trust_anchor(arn, ca_bundle_pem, enabled) {
            tracing::error!(trust_anchor_arn = arn, error = %e, "trust anchor bundle is unusable");
            self.shared.registry().anchors.insert(
                arn.to_string(),
                Anchor {
                    certs_der: Vec::new(),
                    enabled,
                    load_error: Some(e.to_string()),
                },
            );
        }
    }

    /// Adds or replaces a trust anchor, refusing a bundle with no usable certificate.
    pub fn try_add_trust_anchor(
        &self,
        arn: &str,
        ca_bundle_pem: &str,
        enabled: bool,
    ) -> Result<(), ConfigError> {
        let certs = parse_anchor_bundle(ca_bundle_pem).map_err(|why| ConfigError::TrustAnchor {
            arn: arn.to_string(),
            why,
        })?;
        self.shared.registry().anchors.insert(
            arn.to_string(),
            Anchor {
                certs_der: certs,
                enabled,
                load_error: None,
            },
        );
        Ok(())
    }

    /// Enables or disables an existing trust anchor; false if there is none.
    pub fn set_trust_anchor_enabled(&self, arn: &str, enabled: bool) -> bool {
        self.shared
            .registry()
            .anchors
            .get_mut(arn)
            .map(|a| a.enabled = enabled)
            .is_some()
    }

    /// Adds or replaces a profile.
    pub fn add_profile(&self, p: Profile) {
        self.shared.registry().profiles.insert(p.arn.clone(), p);
    }

    /// Adds or replaces a role.
    pub fn add_role(&self, r: Role) {
        self.shared.registry().roles.insert(r.arn.clone(), r);
    }

    /// Attaches a permission policy to a role (adds to any it already has):
    /// the control-plane actions, e.g. `rolesanywhere:ImportCrl`, its
    /// sessions may call.
    pub fn add_permission(&self, p: Permission) {
        self.shared.registry().permissions.push(p);
    }

    /// The usual one-workload setup in one call: `ca_pem` as the enabled trust
    /// anchor `anchor_arn`, an enabled profile `profile_arn` listing only
    /// `role_arn`, and that role with a trust policy that admits only the
    /// certificate whose URI SAN is `spiffe_uri` (`aws:PrincipalTag/x509SAN/URI`).
    pub fn trust_workload(
        &self,
        anchor_arn: &str,
        profile_arn: &str,
        role_arn: &str,
        ca_pem: &str,
        spiffe_uri: &str,
    ) {
        self.add_trust_anchor(anchor_arn, ca_pem, true);
        self.add_profile(Profile {
            arn: profile_arn.into(),
            role_arns: vec![role_arn.into()],
            duration_seconds: None,
            accept_role_session_name: false,
            enabled: true,
        });
        self.add_role(Role {
            arn: role_arn.into(),
            conditions: vec![Condition {
                operator: Operator::StringEquals,
                key: "aws:PrincipalTag/x509SAN/URI".into(),
                values: vec![spiffe_uri.into()],
            }],
        });
    }

    /// Every successful `CreateSession`, oldest first.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        self.shared.registry().sessions.clone()
    }

    /// Every imported CRL as it stands now (after updates, enable/disable;
    /// deleted ones gone), oldest first.
    pub fn crls(&self) -> Vec<CrlRecord> {
        self.shared.registry().crls.clone()
    }

    /// Makes the credentials with this access key id expire now (the next
    /// STS/ECR call signed with them gets `ExpiredToken`). False if unknown.
    pub fn expire_credentials(&self, access_key_id: &str) -> bool {
        let now = self.shared.now();
        self.shared
            .registry()
            .credentials
            .get_mut(access_key_id)
            .map(|c| c.expiration = now - time::Duration::seconds(1))
            .is_some()
    }

    /// The role an unexpired ECR password (the part after `AWS:` in the
    /// decoded `authorizationToken`) was issued to, if this emulator issued it.
    pub fn ecr_password_valid(&self, password: &str) -> Option<String> {
        let now = self.shared.now();
        let registry = self.shared.registry();
        let (role, expires) = registry.ecr_passwords.get(password)?;
        (now < *expires).then(|| role.clone())
    }

    /// The fault-injection handle (cheap to clone, usable after the emulator moves).
    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    /// Sets Roles Anywhere's CreateSession quota for this account and region,
    /// requests per second (0: no quota). AWS's default is 10.
    pub fn set_create_session_quota(&self, per_second: u32) {
        self.shared.set_session_quota(per_second);
    }

    /// CreateSession requests refused with ThrottlingException by the quota.
    pub fn throttled_sessions(&self) -> u64 {
        self.shared.throttled_sessions()
    }

    /// Requests received for `op`, refused and faulted ones included.
    pub fn request_count(&self, op: Operation) -> u64 {
        self.shared.request_count(op)
    }

    /// Stops accepting, lets in-flight requests finish (up to 5 s), and returns.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// A CA and a server certificate for `localhost` / `127.0.0.1`, as a rustls acceptor.
fn tls_acceptor() -> Result<(tokio_rustls::TlsAcceptor, String), String> {
    let now = OffsetDateTime::now_utc();
    let ca = CertificateAuthority::create(
        &CaOptions {
            common_name: "attache-emulator CA".into(),
            organization: "attache".into(),
            ..CaOptions::default()
        },
        now,
    )
    .map_err(|e| e.to_string())?;
    let (cert, key) = ca
        .issue_server(
            &["localhost".to_string(), "127.0.0.1".to_string()],
            KeyType::EcdsaP256,
            Duration::from_secs(30 * 24 * 3600),
            now,
        )
        .map_err(|e| e.to_string())?;
    let key_pem = key.to_pkcs8_pem();
    let key_der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.der)], key_der)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca.trust_anchor_pem(),
    ))
}

/// RFC 3339 UTC with second precision, e.g. `2026-01-01T00:00:00Z` (AWS's form).
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
    ))
    .unwrap_or_default()
}

/// `arn:aws:sts::<account>:assumed-role/<role name>/<session name>`.
pub fn assumed_role_arn(account: &str, role_name: &str, session_name: &str) -> String {
    format!("arn:aws:sts::{account}:assumed-role/{role_name}/{session_name}")
}

/// A stable `AROA...` role id derived from the role ARN (21 characters, as IAM's).
pub fn role_id(role_arn: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, role_arn.as_bytes());
    let alphabet = state::UPPER_ALNUM;
    let suffix: String = digest
        .as_ref()
        .iter()
        .take(17)
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect();
    format!("AROA{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_have_aws_shapes() {
        assert_eq!(rfc3339(OffsetDateTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let id = role_id("arn:aws:iam::123456789012:role/app");
        assert_eq!(id.len(), 21);
        assert!(id.starts_with("AROA"));
        assert_eq!(id, role_id("arn:aws:iam::123456789012:role/app"));
        assert_eq!(
            assumed_role_arn("123456789012", "app", "s"),
            "arn:aws:sts::123456789012:assumed-role/app/s"
        );
    }
}
