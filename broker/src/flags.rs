//! Flags the broker (`run`) and the ECR controller (`ecr-controller`) share:
//! the Roles Anywhere defaults sessions start from, and which overrides a
//! ServiceAccount may ask for.

use clap::Args;

use crate::policy::ArnOverrides;

/// Where sessions go unless a ServiceAccount says otherwise (and what it may say).
#[derive(Debug, Args, Clone, Default)]
pub struct SessionDefaults {
    /// Default AWS region of sessions (else the trust anchor ARN's region).
    #[arg(long, env = "ATTACHE_REGION", default_value = "")]
    pub region: String,
    /// Default Roles Anywhere profile ARN (a ServiceAccount may override it; the ECR controller requires it).
    #[arg(long, env = "ATTACHE_PROFILE_ARN")]
    pub profile_arn: Option<String>,
    /// Default trust anchor ARN (a ServiceAccount may override it; the ECR controller requires it).
    #[arg(long, env = "ATTACHE_TRUST_ANCHOR_ARN")]
    pub trust_anchor_arn: Option<String>,
    /// Profile ARNs (globs) a ServiceAccount may name in attache.dev/profile-arn besides the default, comma-separated.
    #[arg(long, env = "ATTACHE_ALLOWED_PROFILE_ARNS", value_delimiter = ',')]
    pub allowed_profile_arns: Vec<String>,
    /// Trust anchor ARNs (globs) a ServiceAccount may name in attache.dev/trust-anchor-arn besides the default, comma-separated.
    #[arg(long, env = "ATTACHE_ALLOWED_TRUST_ANCHOR_ARNS", value_delimiter = ',')]
    pub allowed_trust_anchor_arns: Vec<String>,
}

impl SessionDefaults {
    /// The override policy these flags set.
    pub fn overrides(&self) -> ArnOverrides {
        ArnOverrides {
            default_profile: self.profile_arn.clone(),
            default_trust_anchor: self.trust_anchor_arn.clone(),
            allowed_profiles: self.allowed_profile_arns.clone(),
            allowed_trust_anchors: self.allowed_trust_anchor_arns.clone(),
        }
    }
}
