//! The loopback credentials endpoint as an SDK and an attacker see it.

mod common;

use std::sync::Arc;

use attache_aws::cache::{self, CredentialSource, FetchError, RefreshPolicy};
use attache_aws::credentials::Credentials;
use attache_rt::clock::SystemClock;
use attache_sidecar::metrics::Metrics;
use attache_sidecar::server::{EndpointState, ImdsTokens, service};
use common::{json, text};
use time::OffsetDateTime;
use tokio::sync::Notify;
use zeroize::Zeroizing;

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Fails until `open` is notified, then returns a fixed set.
struct Gate {
    open: Arc<Notify>,
}

impl CredentialSource for Gate {
    async fn fetch(&self) -> Result<Credentials, FetchError> {
        self.open.notified().await;
        let now = OffsetDateTime::now_utc();
        Ok(Credentials {
            access_key_id: "ASIATESTKEY".into(),
            secret_access_key: Zeroizing::new("SECRETVALUE".into()),
            session_token: Zeroizing::new("SESSIONTOKEN".into()),
            expiration: now + time::Duration::hours(1),
            issued_at: now,
            role_arn: "arn:aws:iam::123456789012:role/app-reader".into(),
        })
    }
}

struct Running {
    url: String,
    open: Arc<Notify>,
    state: EndpointState,
    http: reqwest::Client,
}

async fn start(imds: bool) -> Running {
    let open = Arc::new(Notify::new());
    let metrics = Metrics::default();
    let (cache, _task) = cache::spawn(
        Gate { open: open.clone() },
        RefreshPolicy::default(),
        Arc::new(SystemClock),
        metrics.clone(),
    );
    let state = EndpointState {
        cache,
        token: Arc::new(Zeroizing::new(TOKEN.into())),
        metrics,
        imds: imds.then(|| Arc::new(ImdsTokens::default())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(attache_rt::serve::serve(
        listener,
        service(state.clone()),
        None,
        std::future::pending(),
    ));
    Running {
        url,
        open,
        state,
        http: reqwest::Client::new(),
    }
}

/// The IMDSv2 role listing; the role's name after it gives its credentials.
const IMDS_CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/";

impl Running {
    async fn ready(&self) {
        self.open.notify_one();
        let mut cache = self.state.cache.clone();
        cache.wait_ready().await;
    }

    /// A GET of `path` on the endpoint.
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.url))
    }

    /// The status of a plain GET of `path`.
    async fn status(&self, path: &str) -> reqwest::StatusCode {
        self.get(path).send().await.unwrap().status()
    }

    /// `GET /v1/credentials`, with `auth` as its Authorization header if any.
    async fn credentials(&self, auth: Option<&str>) -> reqwest::Response {
        let mut req = self.get("/v1/credentials");
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.send().await.unwrap()
    }

    /// An IMDSv2 session token request asking for 60 seconds.
    fn token_request(&self) -> reqwest::RequestBuilder {
        self.http
            .put(format!("{}/latest/api/token", self.url))
            .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
    }
}

#[tokio::test]
async fn credentials_need_the_exact_token() {
    let r = start(false).await;
    r.ready().await;
    let resp = r.credentials(None).await;
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let mut wrong = TOKEN.to_string();
    wrong.replace_range(63.., "0");
    assert_eq!(r.credentials(Some(&wrong)).await.status(), 401);
    assert_eq!(r.credentials(Some(&TOKEN[..10])).await.status(), 401);
    let bearer = format!("Bearer {TOKEN}");
    assert_eq!(r.credentials(Some(&bearer)).await.status(), 401);

    let resp = r.credentials(Some(TOKEN)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["AccessKeyId"], "ASIATESTKEY");
    assert_eq!(body["SecretAccessKey"], "SECRETVALUE");
    assert_eq!(body["Token"], "SESSIONTOKEN");
    assert_eq!(body["RoleArn"], "arn:aws:iam::123456789012:role/app-reader");
    assert_eq!(body["AccountId"], "123456789012");
    let exp = body["Expiration"].as_str().unwrap();
    assert!(
        exp.ends_with('Z')
            && OffsetDateTime::parse(exp, &time::format_description::well_known::Rfc3339).is_ok(),
        "{exp}"
    );
}

#[tokio::test]
async fn unavailable_and_not_ready_until_credentials_are_held() {
    let r = start(false).await;
    let resp = r.credentials(Some(TOKEN)).await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_credentials");
    assert_eq!(r.status("/readyz").await, 503);
    assert_eq!(r.status("/healthz").await, 200);
    r.ready().await;
    assert_eq!(r.status("/readyz").await, 200);
}

#[tokio::test]
async fn metrics_count_requests_by_status_and_show_expiry_without_secrets() {
    let r = start(false).await;
    r.ready().await;
    r.credentials(None).await;
    r.credentials(Some(TOKEN)).await;
    let text = text(r.get("/metrics")).await;
    assert!(
        text.contains(
            "attache_sidecar_http_requests_total{path=\"/v1/credentials\",status=\"401\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "attache_sidecar_http_requests_total{path=\"/v1/credentials\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("attache_sidecar_credential_refreshes_total 1"),
        "{text}"
    );
    let expiry_line = text
        .lines()
        .find(|l| l.starts_with("attache_sidecar_credentials_expiry_seconds "))
        .unwrap();
    let secs: i64 = expiry_line.split(' ').nth(1).unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&secs), "{expiry_line}");
    for secret in ["SECRETVALUE", "SESSIONTOKEN", TOKEN] {
        assert!(!text.contains(secret));
    }
}

#[tokio::test]
async fn imds_v2_flow_works_only_with_a_session_token() {
    let r = start(true).await;
    r.ready().await;
    assert_eq!(r.status(IMDS_CREDENTIALS).await, 401);
    let resp = r
        .http
        .put(format!("{}/latest/api/token", r.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "TTL header is required");
    let token = text(r.token_request()).await;
    let with_token = |path: &str| r.get(path).header("X-aws-ec2-metadata-token", &token);
    let role = text(with_token(IMDS_CREDENTIALS)).await;
    assert_eq!(role, "app-reader");
    let creds = json(with_token(&format!("{IMDS_CREDENTIALS}{role}"))).await;
    assert_eq!(creds["Code"], "Success");
    assert_eq!(creds["AccessKeyId"], "ASIATESTKEY");
    let forwarded = with_token(IMDS_CREDENTIALS)
        .header("X-Forwarded-For", "10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(forwarded.status(), 403);
    // DNS rebinding: a page in the pod's browser reaching 127.0.0.1 under
    // its own host name gets neither a token nor credentials.
    for (method, path) in [
        (reqwest::Method::PUT, "/latest/api/token"),
        (reqwest::Method::GET, IMDS_CREDENTIALS),
    ] {
        let rebound = r
            .http
            .request(method, format!("{}{path}", r.url))
            .header("Host", "evil.example.com")
            .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
            .header("X-aws-ec2-metadata-token", &token)
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), 403, "{path}");
    }
    let big = r
        .token_request()
        .body(vec![b'x'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413, "body limit");
}

#[tokio::test]
async fn imds_paths_are_off_by_default() {
    let r = start(false).await;
    r.ready().await;
    let resp = r.token_request().send().await.unwrap();
    assert_eq!(resp.status(), 404);
}
