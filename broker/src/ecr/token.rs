//! The ECR `GetAuthorizationToken` client: AWS JSON 1.1, signed with SigV4 by
//! `aws-sigv4` as the AWS SDKs sign, against the regional endpoint (or an
//! override), with errors classified for retry and metrics.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use attache_aws::credentials::Credentials;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use zeroize::Zeroizing;

/// `X-Amz-Target` of the operation.
pub const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
/// Content type of AWS JSON 1.1.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// Largest reply read (AWS's are a few KiB).
const MAX_REPLY_BYTES: usize = 256 * 1024;
/// Longest token lifetime believed (ECR's are 12 h).
const MAX_LIFETIME: Duration = Duration::from_secs(48 * 3600);

/// A registry password as ECR issued it. `Debug` never shows the password.
#[derive(Clone)]
pub struct IssuedToken {
    /// The registry password (user name is always `AWS`).
    pub password: Zeroizing<String>,
    /// How long it lives, measured from the moment the request was signed
    /// (so a skewed local clock does not distort it).
    pub lifetime: Duration,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("password", &"[redacted]")
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// Why GetAuthorizationToken failed. Messages never contain credentials or tokens.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// ECR answered with an error.
    #[error("ECR refused GetAuthorizationToken in {region}: {code} (HTTP {status}): {message}")]
    Aws {
        /// Region asked.
        region: String,
        /// HTTP status.
        status: u16,
        /// AWS error type, e.g. `ThrottlingException`.
        code: String,
        /// AWS's message.
        message: String,
    },
    /// The request did not complete in time.
    #[error("GetAuthorizationToken to {endpoint} timed out")]
    Timeout {
        /// The endpoint.
        endpoint: String,
    },
    /// Connection-level failure.
    #[error("cannot reach ECR at {endpoint}: {reason}")]
    Transport {
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// A success status whose body is not what ECR sends.
    #[error("unexpected GetAuthorizationToken reply from {endpoint}: {reason}")]
    BadReply {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// The request could not be signed or built.
    #[error("cannot sign GetAuthorizationToken: {0}")]
    Signing(String),
}

impl TokenError {
    /// Whether the same request may succeed later without a configuration change.
    pub fn is_retryable(&self) -> bool {
        match self {
            TokenError::Aws { status, code, .. } => {
                *status == 429
                    || *status >= 500
                    || code.contains("Throttl")
                    || code.contains("Expired")
            }
            TokenError::Timeout { .. }
            | TokenError::Transport { .. }
            | TokenError::BadReply { .. } => true,
            TokenError::Signing(_) => false,
        }
    }

    /// Short metric label: `throttled`, `server`, `expired`, `denied`,
    /// `invalid`, `timeout`, `network`, `reply`, `signing`.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Aws { status, code, .. } if *status == 429 || code.contains("Throttl") => {
                "throttled"
            }
            TokenError::Aws { status, .. } if *status >= 500 => "server",
            TokenError::Aws { code, .. } if code.contains("Expired") => "expired",
            TokenError::Aws { status, code, .. }
                if *status == 403
                    || code.contains("AccessDenied")
                    || code.contains("UnrecognizedClient")
                    || code.contains("Signature") =>
            {
                "denied"
            }
            TokenError::Aws { .. } => "invalid",
            TokenError::Timeout { .. } => "timeout",
            TokenError::Transport { .. } => "network",
            TokenError::BadReply { .. } => "reply",
            TokenError::Signing(_) => "signing",
        }
    }
}

/// Where ECR is reached: one URL for every region, or per-region URLs, else
/// the regional default.
#[derive(Clone, Debug, Default)]
pub struct Endpoints {
    /// Used for every region without its own entry.
    pub all: Option<String>,
    /// Per-region overrides.
    pub by_region: BTreeMap<String, String>,
}

impl Endpoints {
    /// Parses `URL` or `REGION=URL,REGION=URL` (empty: defaults).
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        let mut out = Endpoints::default();
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(out);
        };
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some((region, url)) => {
                    check_url(url)?;
                    out.by_region
                        .insert(region.trim().to_string(), url.trim().to_string());
                }
                None => {
                    check_url(part)?;
                    out.all = Some(part.to_string());
                }
            }
        }
        Ok(out)
    }

    /// The override for `region`, if any.
    pub fn get(&self, region: &str) -> Option<&str> {
        self.by_region
            .get(region)
            .or(self.all.as_ref())
            .map(String::as_str)
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let u = reqwest::Url::parse(url.trim()).map_err(|e| format!("{url:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("{url:?}: expected an http(s) URL"));
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reply {
    authorization_data: Vec<AuthorizationData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthorizationData {
    authorization_token: Zeroizing<String>,
    expires_at: f64,
}

/// A reusable GetAuthorizationToken client (one connection pool).
#[derive(Clone, Debug)]
pub struct TokenClient {
    http: reqwest::Client,
    endpoints: Endpoints,
}

impl TokenClient {
    /// Builds the HTTP client.
    pub fn new(endpoints: Endpoints, timeout: Duration) -> Result<Self, TokenError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .user_agent(concat!("attache-broker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TokenError::Signing(format!("HTTP client: {e}")))?;
        Ok(TokenClient { http, endpoints })
    }

    /// The URL requests for `region` go to.
    pub fn endpoint(&self, region: &str) -> String {
        self.endpoints
            .get(region)
            .map(|u| format!("{}/", u.trim_end_matches('/')))
            .unwrap_or_else(|| format!("{}/", super::registry::default_endpoint(region)))
    }

    /// Asks ECR in `region` for a registry password with `creds`.
    pub async fn get_authorization_token(
        &self,
        creds: &Credentials,
        region: &str,
    ) -> Result<IssuedToken, TokenError> {
        let url = self.endpoint(region);
        let body = b"{}";
        let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)];
        let signed_at = SystemTime::now();
        let signed = attache_aws::sigv4::sigv4_headers(
            "POST",
            &url,
            &headers,
            body,
            region,
            "ecr",
            &creds.into(),
            signed_at,
        )
        .map_err(TokenError::Signing)?;
        let mut req = self.http.post(&url).body(body.to_vec());
        for (k, v) in &signed {
            req = req.header(k, v);
        }
        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                TokenError::Timeout {
                    endpoint: url.clone(),
                }
            } else {
                TokenError::Transport {
                    endpoint: url.clone(),
                    reason: attache_aws::session::error_chain(&e),
                }
            }
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let error_type = resp
            .headers()
            .get("x-amzn-errortype")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = resp.bytes().await.map_err(transport)?;
        let bad = |reason: String| TokenError::BadReply {
            endpoint: url.clone(),
            reason,
        };
        if bytes.len() > MAX_REPLY_BYTES {
            return Err(bad(format!("{} bytes is too large", bytes.len())));
        }
        if !(200..300).contains(&status) {
            let (code, message) =
                attache_aws::sigv4::json_error(status, error_type.as_deref(), &bytes);
            let message: String = message.chars().take(300).collect();
            return Err(TokenError::Aws {
                region: region.to_string(),
                status,
                code,
                message,
            });
        }
        let reply: Reply = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("not an authorizationData list: {e}")))?;
        let data = reply
            .authorization_data
            .into_iter()
            .next()
            .ok_or_else(|| bad("empty authorizationData".into()))?;
        let decoded = Zeroizing::new(
            B64.decode(data.authorization_token.trim())
                .map_err(|_| bad("authorizationToken is not base64".into()))?,
        );
        let text = std::str::from_utf8(&decoded)
            .map_err(|_| bad("authorizationToken is not UTF-8".into()))?;
        let Some(("AWS", password)) = text.split_once(':') else {
            return Err(bad("authorizationToken is not AWS:<password>".into()));
        };
        if password.is_empty() {
            return Err(bad("empty password".into()));
        }
        let signed_secs = signed_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let secs = data.expires_at - signed_secs;
        if !secs.is_finite() || secs <= 0.0 || secs > MAX_LIFETIME.as_secs_f64() {
            return Err(bad(format!(
                "expiresAt {} is not within 48 h of now",
                data.expires_at
            )));
        }
        Ok(IssuedToken {
            password: Zeroizing::new(password.to_string()),
            lifetime: Duration::from_secs_f64(secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_single_and_per_region() {
        let e = Endpoints::parse(Some("http://127.0.0.1:1")).unwrap();
        assert_eq!(e.get("eu-west-1"), Some("http://127.0.0.1:1"));
        let e = Endpoints::parse(Some("us-east-1=http://a:1, eu-west-1=http://b:2")).unwrap();
        assert_eq!(e.get("eu-west-1"), Some("http://b:2"));
        assert_eq!(e.get("ap-south-1"), None);
        assert!(Endpoints::parse(Some("ftp://x")).is_err());
        assert!(Endpoints::parse(None).unwrap().get("x").is_none());
        let c = TokenClient::new(Endpoints::default(), Duration::from_secs(1)).unwrap();
        assert_eq!(
            c.endpoint("us-west-2"),
            "https://api.ecr.us-west-2.amazonaws.com/"
        );
    }

    #[test]
    fn errors_are_classified() {
        let aws = |status, code: &str| TokenError::Aws {
            region: "us-east-1".into(),
            status,
            code: code.into(),
            message: String::new(),
        };
        assert_eq!(aws(429, "ThrottlingException").kind(), "throttled");
        assert!(aws(400, "ThrottlingException").is_retryable());
        assert_eq!(aws(503, "ServiceUnavailableException").kind(), "server");
        assert_eq!(aws(400, "ExpiredTokenException").kind(), "expired");
        assert_eq!(aws(400, "UnrecognizedClientException").kind(), "denied");
        assert!(!aws(400, "AccessDeniedException").is_retryable());
    }

    #[test]
    fn debug_hides_the_password() {
        let t = IssuedToken {
            password: Zeroizing::new("hunter2-secret".into()),
            lifetime: Duration::from_secs(1),
        };
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
