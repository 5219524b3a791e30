//! The names users see (DESIGN.md section 3): annotations, env vars, paths.

/// ServiceAccount/pod annotation: the IAM role to assume; its presence opts pods in.
pub const ANN_ROLE_ARN: &str = "attache.dev/role-arn";
/// ServiceAccount annotation: Roles Anywhere profile ARN override.
pub const ANN_PROFILE_ARN: &str = "attache.dev/profile-arn";
/// ServiceAccount annotation: trust anchor ARN override.
pub const ANN_TRUST_ANCHOR_ARN: &str = "attache.dev/trust-anchor-arn";
/// ServiceAccount annotation: session duration in seconds, 900..43200.
pub const ANN_SESSION_DURATION: &str = "attache.dev/session-duration";
/// ServiceAccount annotation: the role session name, `serial` (AWS names
/// the session after the certificate's serial), `pod` (the pod's name) or a
/// fixed name.
pub const ANN_SESSION_NAME: &str = "attache.dev/session-name";
/// ServiceAccount / namespace annotation: ECR registries to keep a pull secret for.
pub const ANN_ECR_REGISTRIES: &str = "attache.dev/ecr-registries";
/// ServiceAccount annotation: role used for ECR tokens.
pub const ANN_ECR_ROLE_ARN: &str = "attache.dev/ecr-role-arn";
/// Pod / ServiceAccount annotation: `"true"` also serves the IMDSv2 paths
/// in the pod and points its app containers' IMDS clients at the sidecar,
/// for clients that do not read the container credentials endpoint.
pub const ANN_IMDS: &str = "attache.dev/imds";
/// Pod annotation: `"false"` opts the pod out of injection.
pub const ANN_INJECT: &str = "attache.dev/inject";
/// Pod annotation the webhook sets on pods it injected.
pub const ANN_INJECTED: &str = "attache.dev/injected";
/// Namespace annotation: JSON list of role ARNs or `*` globs pods here may use.
pub const ANN_ALLOWED_ROLES: &str = "attache.dev/allowed-roles";

/// Name of the injected sidecar container.
pub const SIDECAR_NAME: &str = "attache-sidecar";
/// Volume holding the endpoint token (in-memory emptyDir).
pub const TOKEN_VOLUME: &str = "attache-token";
/// Volume holding the projected ServiceAccount token for the broker.
pub const SA_TOKEN_VOLUME: &str = "attache-sa-token";
/// Where the endpoint token volume is mounted.
pub const TOKEN_DIR: &str = "/var/run/secrets/attache.dev";
/// The endpoint token file (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
pub const TOKEN_FILE: &str = "/var/run/secrets/attache.dev/token";
/// Where the projected ServiceAccount token is mounted (sidecar only).
pub const SA_TOKEN_DIR: &str = "/var/run/secrets/attache.dev-broker";
/// Audience of the projected ServiceAccount token the broker accepts.
pub const TOKEN_AUDIENCE: &str = "attache-broker";
/// Path of the sidecar's container credentials endpoint.
pub const CREDENTIALS_PATH: &str = "/v1/credentials";
/// Port of the sidecar's loopback endpoint.
pub const SIDECAR_PORT: u16 = 9911;
/// Secret holding the CA (in the broker's namespace).
pub const CA_SECRET: &str = "attache-ca";
/// Secret holding the serving CA: it signs only the broker's TLS serving
/// certificates, so a leaked serving key is never a Roles Anywhere credential.
pub const SERVING_CA_SECRET: &str = "attache-serving-ca";
/// ConfigMap publishing the CA bundle (in the broker's namespace).
pub const CA_BUNDLE_CONFIGMAP: &str = "attache-ca-bundle";
/// ConfigMap holding the revocation ledger and the signed CRL (in the
/// broker's namespace; only attache writes it).
pub const CRL_CONFIGMAP: &str = "attache-crl";
/// Path of the broker's CRL (`GET`, PEM), on the certificate API port.
pub const CRL_PATH: &str = "/v1/crl";
/// A Kubernetes label: its key and the value attache sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label {
    /// The label key.
    pub key: &'static str,
    /// The value.
    pub value: &'static str,
}

impl Label {
    /// The label as an owned `(key, value)` entry of a label map.
    pub fn entry(&self) -> (String, String) {
        (self.key.to_string(), self.value.to_string())
    }

    /// Whether `labels` carry this label with this value.
    pub fn is_on(&self, labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
        labels
            .and_then(|l| l.get(self.key))
            .is_some_and(|v| v == self.value)
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// Label on every object attache manages.
pub const MANAGED_BY: Label = Label {
    key: "app.kubernetes.io/managed-by",
    value: "attache",
};
