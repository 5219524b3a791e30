//! The loopback credentials endpoint: `GET /v1/credentials` for every AWS SDK
//! (container credentials provider), health, readiness, metrics, and optional
//! IMDSv2-compatible paths for SDKs that only know the instance metadata service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::cache::CredentialCache;
use crate::credentials::rfc3339;
use crate::metrics::{Metrics, RequestLabel};

/// Largest request body accepted (no endpoint takes a body).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Requests handled at once; more wait.
pub const MAX_CONCURRENT: usize = 512;
/// At most this many IMDSv2 session tokens are remembered.
const MAX_IMDS_TOKENS: usize = 1024;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct EndpointState {
    /// The credential cache.
    pub cache: CredentialCache,
    /// The token the `Authorization` header must equal.
    pub token: Arc<Zeroizing<String>>,
    /// Metrics registry.
    pub metrics: Metrics,
    /// IMDSv2 session tokens, when the IMDS paths are on.
    pub imds: Option<Arc<ImdsTokens>>,
}

/// IMDSv2 session tokens handed out by `PUT /latest/api/token`.
#[derive(Default)]
pub struct ImdsTokens {
    tokens: Mutex<HashMap<String, OffsetDateTime>>,
}

impl ImdsTokens {
    fn issue(&self, ttl: i64, now: OffsetDateTime) -> String {
        let mut bytes = [0u8; 32];
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        let token = hex::encode(bytes);
        let mut map = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, exp| *exp > now);
        if map.len() >= MAX_IMDS_TOKENS
            && let Some(oldest) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(token.clone(), now + time::Duration::seconds(ttl));
        token
    }

    fn valid(&self, token: &str, now: OffsetDateTime) -> bool {
        let map = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        map.get(token).is_some_and(|exp| *exp > now)
    }
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "error": code, "message": message })),
    )
        .into_response()
}

/// The state handlers share: one `Arc`, so extracting it per request is one
/// reference-count bump rather than a clone of every field.
type Shared = Arc<EndpointState>;

/// Builds the router with body-size and concurrency limits.
pub fn router(state: EndpointState) -> Router {
    let state: Shared = Arc::new(state);
    let mut r = Router::new()
        .route("/v1/credentials", get(credentials))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    if state.imds.is_some() {
        r = r
            .route("/latest/api/token", put(imds_token))
            .route(
                "/latest/meta-data/iam/security-credentials/",
                get(imds_role),
            )
            .route(
                "/latest/meta-data/iam/security-credentials/{role}",
                get(imds_credentials),
            );
    }
    r.fallback(|| async { json_error(StatusCode::NOT_FOUND, "not_found", "no such path") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            MAX_BODY_BYTES,
        ))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            MAX_CONCURRENT,
        ))
        .with_state(state)
}

/// Known routes as static labels (no allocation per request, bounded label set).
const ROUTES: [&str; 7] = [
    "/v1/credentials",
    "/healthz",
    "/readyz",
    "/metrics",
    "/latest/api/token",
    "/latest/meta-data/iam/security-credentials/",
    "/latest/meta-data/iam/security-credentials/{role}",
];

/// Counts each answer by route and status. (No per-request timer: handlers
/// answer from memory and never wait; slow clients are cut off by the
/// listener's header-read timeout.)
async fn count(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| ROUTES.iter().find(|r| **r == p.as_str()))
        .copied()
        .unwrap_or("other");
    let resp = next.run(req).await;
    s.metrics
        .requests
        .get_or_create(&RequestLabel {
            path,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let given = given.as_bytes();
    // Lengths are not secret (the token's length is fixed); contents compare in constant time.
    given.len() == token.len() && bool::from(given.ct_eq(token.as_bytes()))
}

async fn credentials(State(s): State<Shared>, req: Request) -> Response {
    if !authorized(req.headers(), &s.token) {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the Authorization header must carry the token from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        );
    }
    match s.cache.current_held() {
        Some(h) => (
            [
                (header::CACHE_CONTROL, "no-store"),
                (header::CONTENT_TYPE, "application/json"),
            ],
            h.container_json.to_vec(),
        )
            .into_response(),
        None => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_credentials",
            "no valid AWS credentials are held yet (or they expired); see the sidecar's log for why",
        ),
    }
}

async fn readyz(State(s): State<Shared>) -> Response {
    if s.cache.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid credentials yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Shared>) -> Response {
    if let Some(secs) = s.cache.seconds_until_expiry() {
        s.metrics.expiry_seconds.set(secs);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

fn imds_denied(headers: &HeaderMap) -> Option<Response> {
    // As EC2 does: requests relayed through a proxy are refused.
    headers.contains_key("x-forwarded-for").then(|| {
        json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "forwarded requests are refused",
        )
    })
}

async fn imds_token(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = imds_denied(&headers) {
        return r;
    }
    let Some(imds) = &s.imds else {
        return json_error(StatusCode::NOT_FOUND, "not_found", "IMDS paths are off");
    };
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    match ttl {
        Some(ttl) if (1..=21600).contains(&ttl) => {
            let token = imds.issue(ttl, s.cache.clock().now());
            (
                [("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())],
                token,
            )
                .into_response()
        }
        _ => json_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "X-aws-ec2-metadata-token-ttl-seconds must be 1..21600",
        ),
    }
}

fn imds_session_ok(s: &EndpointState, headers: &HeaderMap) -> Option<Response> {
    if let Some(r) = imds_denied(headers) {
        return Some(r);
    }
    let imds = s.imds.as_ref()?;
    let token = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (!imds.valid(token, s.cache.clock().now())).then(|| {
        json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid X-aws-ec2-metadata-token is required",
        )
    })
}

fn role_name(role_arn: &str) -> &str {
    role_arn.rsplit('/').next().unwrap_or(role_arn)
}

async fn imds_role(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Some(r) = imds_session_ok(&s, &headers) {
        return r;
    }
    match s.cache.current() {
        Some(c) => role_name(&c.role_arn).to_string().into_response(),
        None => json_error(
            StatusCode::NOT_FOUND,
            "no_credentials",
            "no valid AWS credentials are held yet",
        ),
    }
}

async fn imds_credentials(
    State(s): State<Shared>,
    Path(role): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = imds_session_ok(&s, &headers) {
        return r;
    }
    match s.cache.current() {
        Some(c) if role_name(&c.role_arn) == role => Json(serde_json::json!({
            "Code": "Success",
            "LastUpdated": rfc3339(c.issued_at),
            "Type": "AWS-HMAC",
            "AccessKeyId": c.access_key_id,
            "SecretAccessKey": c.secret_access_key.as_str(),
            "Token": c.session_token.as_str(),
            "Expiration": c.expiration_rfc3339(),
        }))
        .into_response(),
        Some(_) => json_error(StatusCode::NOT_FOUND, "not_found", "no such role"),
        None => json_error(
            StatusCode::NOT_FOUND,
            "no_credentials",
            "no valid AWS credentials are held yet",
        ),
    }
}
