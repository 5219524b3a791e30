//! Environment variable names: the ones the webhook sets on the sidecar
//! (each is also that sidecar flag's variable) and on the app's containers.

/// Sidecar: AWS region of sessions (`--region`).
pub const REGION: &str = "ATTACHE_REGION";
/// Sidecar: the role to assume (`--role-arn`).
pub const ROLE_ARN: &str = "ATTACHE_ROLE_ARN";
/// Sidecar: Roles Anywhere profile ARN (`--profile-arn`).
pub const PROFILE_ARN: &str = "ATTACHE_PROFILE_ARN";
/// Sidecar: trust anchor ARN (`--trust-anchor-arn`).
pub const TRUST_ANCHOR_ARN: &str = "ATTACHE_TRUST_ANCHOR_ARN";
/// Sidecar: session duration in seconds (`--session-duration`).
pub const SESSION_DURATION: &str = "ATTACHE_SESSION_DURATION";
/// Sidecar: the role session name (`--role-session-name`).
pub const ROLE_SESSION_NAME: &str = "ATTACHE_ROLE_SESSION_NAME";
/// Sidecar: the pod's name, from the downward API (for `session-name: pod`).
pub const POD_NAME: &str = "ATTACHE_POD_NAME";
/// Sidecar: the broker's certificate API base URL (`--broker-url`).
pub const BROKER_URL: &str = "ATTACHE_BROKER_URL";
/// Sidecar: PEM of the CA that serves the broker (`--ca-bundle-pem`).
pub const CA_BUNDLE_PEM: &str = "ATTACHE_CA_BUNDLE_PEM";
/// Sidecar: the projected ServiceAccount token file (`--service-account-token-file`).
pub const SERVICE_ACCOUNT_TOKEN_FILE: &str = "ATTACHE_SERVICE_ACCOUNT_TOKEN_FILE";
/// Sidecar: the endpoint token file (`--token-file`).
pub const TOKEN_FILE: &str = "ATTACHE_TOKEN_FILE";
/// Sidecar: the endpoint's listen address (`--listen`).
pub const LISTEN: &str = "ATTACHE_LISTEN";
/// Every attache binary: `json` or `text` (`--log-format`).
pub const LOG_FORMAT: &str = "ATTACHE_LOG_FORMAT";

/// Sidecar: also serve the IMDSv2 paths (`--imds`).
pub const IMDS: &str = "ATTACHE_IMDS";

/// App: the container credentials endpoint URL every AWS SDK reads.
pub const AWS_CONTAINER_CREDENTIALS_FULL_URI: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
/// App: the file holding the endpoint's `Authorization` token.
pub const AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: &str = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE";
/// App: where an SDK's IMDS client connects (set for `attache.dev/imds`).
pub const AWS_EC2_METADATA_SERVICE_ENDPOINT: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
