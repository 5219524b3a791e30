//! The emulator's configuration: account, region, listen address, and the
//! Roles Anywhere trust anchors, profiles and IAM roles it knows about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML text is not a valid configuration.
    #[error("invalid config: {0}")]
    Toml(#[from] toml::de::Error),
    /// A trust anchor's CA bundle is missing, unreadable or holds no certificate.
    #[error("trust anchor {arn}: {why}")]
    TrustAnchor {
        /// The anchor's ARN.
        arn: String,
        /// What is wrong with its bundle.
        why: String,
    },
    /// A value that is syntactically fine but unusable.
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// Everything the emulator serves. Deserializable from TOML (see the crate's
/// README) and buildable in code; `Default` is an empty `us-east-1` account
/// `123456789012` listening on `127.0.0.1:0`.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmulatorConfig {
    /// The AWS region requests must be scoped to.
    pub region: String,
    /// The 12-digit account id that owns the roles.
    pub account: String,
    /// Where to listen (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Roles Anywhere trust anchors.
    pub trust_anchors: Vec<TrustAnchorConfig>,
    /// Roles Anywhere profiles.
    pub profiles: Vec<Profile>,
    /// IAM roles with their trust-policy conditions.
    pub roles: Vec<Role>,
    /// Permission policies attached to roles: which control-plane actions
    /// (today the Roles Anywhere CRL operations) sessions of a role may call.
    /// A role with none may call none of them.
    pub permissions: Vec<Permission>,
    /// Roles Anywhere CreateSession quota for this account and region,
    /// requests per second with bursts up to that many (AWS's default: 10;
    /// 0: no quota). Over it, CreateSession answers 429 ThrottlingException.
    pub create_session_per_second: u32,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            region: "us-east-1".into(),
            account: "123456789012".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            trust_anchors: Vec::new(),
            profiles: Vec::new(),
            roles: Vec::new(),
            permissions: Vec::new(),
            create_session_per_second: 10,
        }
    }
}

impl EmulatorConfig {
    /// Reads a TOML config file; relative `ca_bundle_file` paths are resolved
    /// against the file's directory.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::from_toml_str(&text, base)
    }

    /// Parses TOML text; relative bundle paths are resolved against `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: EmulatorConfig = toml::from_str(text)?;
        for anchor in &mut config.trust_anchors {
            if let Some(file) = &anchor.ca_bundle_file
                && file.is_relative()
            {
                anchor.ca_bundle_file = Some(base_dir.join(file));
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: account and region shape, duplicate ARNs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.account.len() != 12 || !self.account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConfigError::Invalid(format!(
                "account {:?} must be 12 digits",
                self.account
            )));
        }
        if self.region.is_empty()
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::Invalid(format!(
                "region {:?} must look like us-east-1",
                self.region
            )));
        }
        for role in &self.roles {
            if role_name(&role.arn).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "role ARN {:?} must look like arn:aws:iam::<account>:role/<name>",
                    role.arn
                )));
            }
        }
        for p in &self.permissions {
            if role_name(&p.role_arn).is_none() {
                return Err(ConfigError::Invalid(format!(
                    "permission role ARN {:?} must look like arn:aws:iam::<account>:role/<name>",
                    p.role_arn
                )));
            }
            if let Some(bad) = p.actions.iter().find(|a| !valid_action(a)) {
                return Err(ConfigError::Invalid(format!(
                    "permission action {bad:?} for {} must look like service:Action (e.g. rolesanywhere:ImportCrl)",
                    p.role_arn
                )));
            }
        }
        Ok(())
    }
}

/// A permission policy attached to a role: the actions its sessions may call,
/// as IAM names them (`rolesanywhere:ImportCrl`), with `*` and `?` wildcards
/// (`rolesanywhere:*`); compared case-insensitively, as IAM compares actions.
///
/// Kept apart from [`Role`] (whose conditions are its *trust* policy), as IAM
/// keeps trust and permission policies apart.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    /// The role the policy is attached to.
    pub role_arn: String,
    /// Allowed actions.
    pub actions: Vec<String>,
}

impl Permission {
    /// Whether this policy allows `action` (e.g. `rolesanywhere:ImportCrl`).
    pub fn allows(&self, action: &str) -> bool {
        let action = action.to_ascii_lowercase();
        self.actions
            .iter()
            .any(|a| crate::policy::glob_match(&a.to_ascii_lowercase(), &action))
    }
}

/// `service:Action`, either part possibly a glob.
fn valid_action(action: &str) -> bool {
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'?' || b == b'-')
    };
    action == "*"
        || action
            .split_once(':')
            .is_some_and(|(svc, op)| ok(svc) && ok(op))
}

/// A trust anchor as configured: an ARN and a CA bundle, inline or from a file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustAnchorConfig {
    /// The anchor's ARN, as clients name it in `trustAnchorArn`.
    pub arn: String,
    /// Inline PEM bundle (one or more CA certificates).
    #[serde(default)]
    pub ca_bundle_pem: Option<String>,
    /// A PEM file holding the bundle.
    #[serde(default)]
    pub ca_bundle_file: Option<PathBuf>,
    /// Disabled anchors refuse every session.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl TrustAnchorConfig {
    /// The bundle's PEM text, read from the file when one is named.
    pub fn bundle_pem(&self) -> Result<String, ConfigError> {
        let err = |why: String| ConfigError::TrustAnchor {
            arn: self.arn.clone(),
            why,
        };
        match (&self.ca_bundle_pem, &self.ca_bundle_file) {
            (Some(pem), None) => Ok(pem.clone()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| err(format!("cannot read {}: {e}", path.display()))),
            _ => Err(err(
                "set exactly one of ca_bundle_pem or ca_bundle_file".into()
            )),
        }
    }
}

/// A Roles Anywhere profile: which roles a session may assume, and how long.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The profile's ARN, as clients name it in `profileArn`.
    pub arn: String,
    /// Roles this profile may hand out.
    pub role_arns: Vec<String>,
    /// The profile's session-duration cap in seconds (AWS's `durationSeconds`).
    #[serde(default)]
    pub duration_seconds: Option<u32>,
    /// Whether clients may name the session (`roleSessionName`).
    #[serde(default)]
    pub accept_role_session_name: bool,
    /// Disabled profiles refuse every session.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// An IAM role and the conditions of its trust policy (all must hold).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// `arn:aws:iam::<account>:role/<name>`.
    pub arn: String,
    /// Trust-policy conditions; every one must hold.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// One trust-policy condition: `operator` on `key`, true when any value matches.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// How values are compared.
    pub operator: Operator,
    /// A condition key, e.g. `aws:PrincipalTag/x509SAN/URI` or `aws:SourceArn`.
    pub key: String,
    /// Accepted values (any one matches).
    pub values: Vec<String>,
}

/// The IAM string condition operators the emulator evaluates.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum Operator {
    /// Exact, case-sensitive match.
    StringEquals,
    /// Case-sensitive match with `*` and `?` wildcards.
    StringLike,
}

impl std::fmt::Display for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operator::StringEquals => "StringEquals",
            Operator::StringLike => "StringLike",
        })
    }
}

fn yes() -> bool {
    true
}

/// The role name of `arn:aws:iam::<account>:role/<path/>name`.
pub fn role_name(arn: &str) -> Option<&str> {
    let rest = arn.strip_prefix("arn:aws:iam::")?;
    let (_account, resource) = rest.split_once(':')?;
    let path = resource.strip_prefix("role/")?;
    let name = path.rsplit('/').next()?;
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_config_parses_with_defaults_and_relative_paths() {
        let text = r#"
            region = "eu-west-1"
            [[trust_anchors]]
            arn = "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/ta"
            ca_bundle_file = "ca.pem"
            [[profiles]]
            arn = "arn:aws:rolesanywhere:eu-west-1:123456789012:profile/p"
            role_arns = ["arn:aws:iam::123456789012:role/app"]
            duration_seconds = 3600
            [[roles]]
            arn = "arn:aws:iam::123456789012:role/app"
            [[roles.conditions]]
            operator = "StringLike"
            key = "aws:PrincipalTag/x509SAN/URI"
            values = ["spiffe://td/ns/*/sa/app"]
        "#;
        let c = EmulatorConfig::from_toml_str(text, Path::new("/etc/emu")).unwrap();
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(c.account, "123456789012");
        assert_eq!(
            c.trust_anchors[0].ca_bundle_file.as_deref(),
            Some(Path::new("/etc/emu/ca.pem"))
        );
        assert!(c.trust_anchors[0].enabled && c.profiles[0].enabled);
        assert!(!c.profiles[0].accept_role_session_name);
        assert_eq!(c.roles[0].conditions[0].operator, Operator::StringLike);
    }

    #[test]
    fn bad_configs_are_refused_with_the_field_named() {
        let base = Path::new(".");
        let err = EmulatorConfig::from_toml_str("account = \"12\"", base).unwrap_err();
        assert!(err.to_string().contains("12 digits"), "{err}");
        let err = EmulatorConfig::from_toml_str("regio = \"x\"", base).unwrap_err();
        assert!(err.to_string().contains("regio"), "{err}");
        let err = EmulatorConfig::from_toml_str("[[roles]]\narn = \"role/x\"", base).unwrap_err();
        assert!(err.to_string().contains("role/x"), "{err}");
    }

    #[test]
    fn permissions_parse_validate_and_match_like_iam_actions() {
        let text = r#"
            [[permissions]]
            role_arn = "arn:aws:iam::123456789012:role/app"
            actions = ["rolesanywhere:ImportCrl", "rolesanywhere:List*"]
        "#;
        let c = EmulatorConfig::from_toml_str(text, Path::new(".")).unwrap();
        let p = &c.permissions[0];
        assert!(p.allows("rolesanywhere:ImportCrl"));
        assert!(p.allows("RolesAnywhere:importcrl"));
        assert!(p.allows("rolesanywhere:ListCrls"));
        assert!(!p.allows("rolesanywhere:UpdateCrl"));
        assert!(EmulatorConfig::default().permissions.is_empty());
        let bad =
            "[[permissions]]\nrole_arn = \"arn:aws:iam::1:role/a\"\nactions = [\"ImportCrl\"]";
        let err = EmulatorConfig::from_toml_str(bad, Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("ImportCrl"), "{err}");
        let bad = "[[permissions]]\nrole_arn = \"arn:aws:iam::1:role/a\"\nactions = []\nextra = 1";
        assert!(EmulatorConfig::from_toml_str(bad, Path::new(".")).is_err());
    }

    #[test]
    fn role_names_come_from_the_arn() {
        assert_eq!(role_name("arn:aws:iam::123456789012:role/app"), Some("app"));
        assert_eq!(
            role_name("arn:aws:iam::123456789012:role/path/to/app"),
            Some("app")
        );
        assert_eq!(role_name("arn:aws:iam::123456789012:user/app"), None);
    }
}
