//! The ECR `GetAuthorizationToken` client: AWS JSON 1.1, signed with SigV4 by
//! `aws-sigv4` as the AWS SDKs sign, against the regional endpoint (or an
//! override), with errors classified for retry and metrics.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::credentials::Credentials;
use crate::request::{self, AwsError, GET_AUTHORIZATION_TOKEN};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use zeroize::Zeroizing;

/// `X-Amz-Target` of the operation.
pub const TARGET: &str = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken";
/// Content type of AWS JSON 1.1.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
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

/// The ECR API endpoint of `region`: `https://api.ecr.<region>.amazonaws.com`
/// (`.amazonaws.com.cn` in China).
pub fn default_endpoint(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("https://api.ecr.{region}.amazonaws.com.cn")
    } else {
        format!("https://api.ecr.{region}.amazonaws.com")
    }
}

/// A reusable GetAuthorizationToken client (one connection pool).
#[derive(Clone, Debug)]
pub struct TokenClient {
    http: reqwest::Client,
    endpoints: Endpoints,
}

impl TokenClient {
    /// Builds the HTTP client.
    pub fn new(endpoints: Endpoints, timeout: Duration) -> Result<Self, AwsError> {
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .user_agent(concat!("attache/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| AwsError::Signing {
                operation: GET_AUTHORIZATION_TOKEN,
                source: e.into(),
            })?;
        Ok(TokenClient { http, endpoints })
    }

    /// The URL requests for `region` go to.
    pub fn endpoint(&self, region: &str) -> String {
        self.endpoints
            .get(region)
            .map(|u| format!("{}/", u.trim_end_matches('/')))
            .unwrap_or_else(|| format!("{}/", default_endpoint(region)))
    }

    /// Asks ECR in `region` for a registry password with `creds`.
    pub async fn get_authorization_token(
        &self,
        creds: &Credentials,
        region: &str,
    ) -> Result<IssuedToken, AwsError> {
        let url = self.endpoint(region);
        let body = b"{}";
        let headers = [("content-type", CONTENT_TYPE), ("x-amz-target", TARGET)];
        let signed_at = SystemTime::now();
        let signed = crate::sigv4::sigv4_headers(
            "POST",
            &url,
            &headers,
            body,
            region,
            "ecr",
            &creds.into(),
            signed_at,
        )
        .map_err(|e| AwsError::Signing {
            operation: GET_AUTHORIZATION_TOKEN,
            source: e.into(),
        })?;
        let mut req = self.http.post(&url).body(body.to_vec());
        for (k, v) in &signed {
            req = req.header(k, v);
        }
        let bytes = request::send(GET_AUTHORIZATION_TOKEN, region, &url, req).await?;
        let bad = |reason: String| AwsError::bad_reply(GET_AUTHORIZATION_TOKEN, reason);
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
    fn debug_hides_the_password() {
        let t = IssuedToken {
            password: Zeroizing::new("hunter2-secret".into()),
            lifetime: Duration::from_secs(1),
        };
        assert!(!format!("{t:?}").contains("hunter2"));
    }
}
