//! The loopback credentials endpoint: `GET /v1/credentials` for every AWS SDK
//! (container credentials provider), health, readiness, metrics, and optional
//! IMDSv2-compatible paths for SDKs that only know the instance metadata service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::metrics::counter::Counter;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::metrics::{Metrics, RequestLabel};
use attache_api::names::CREDENTIALS_PATH;
use attache_aws::cache::CredentialCache;
use attache_aws::credentials::rfc3339;

/// Largest request body accepted (no endpoint takes a body).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
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

/// A response with a fully buffered body.
pub type Response = http::Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response {
    let mut r = http::Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    respond(status, "application/json", body)
}

/// The endpoint as a plain `tower::Service`: every answer is computed from
/// memory without waiting, so requests are dispatched synchronously (no
/// router, no boxed futures) and the layers around it stay the only cost.
#[derive(Clone)]
pub struct Endpoint {
    shared: Arc<Shared>,
}

struct Shared {
    state: EndpointState,
    /// The series of `GET /v1/credentials` answered 200, looked up once:
    /// it counts nearly every request.
    credentials_served: Counter,
}

impl<B> tower::Service<Request<B>> for Endpoint {
    type Response = Response;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (route, resp) = self.dispatch(req.method(), req.uri().path(), req.headers());
        let status = resp.status().as_u16();
        if route == CREDENTIALS_PATH && status == 200 {
            self.shared.credentials_served.inc();
        } else {
            let label = RequestLabel {
                path: route,
                status,
            };
            self.shared
                .state
                .metrics
                .requests
                .get_or_create(&label)
                .inc();
        }
        std::future::ready(Ok(resp))
    }
}

/// A route's handler: state, request headers, path.
type Handler = fn(&EndpointState, &HeaderMap, &str) -> Response;

const IMDS_ROLES: &str = "/latest/meta-data/iam/security-credentials/";

impl Endpoint {
    fn new(state: EndpointState) -> Endpoint {
        let credentials_served = state.metrics.requests.get_or_create_owned(&RequestLabel {
            path: CREDENTIALS_PATH,
            status: 200,
        });
        Endpoint {
            shared: Arc::new(Shared {
                state,
                credentials_served,
            }),
        }
    }

    /// Routes one request; returns the route label for metrics and the answer.
    fn dispatch(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> (&'static str, Response) {
        let s = &self.shared.state;
        let imds = s.imds.is_some();
        let (route, allowed, handler): (&'static str, &'static str, Handler) = match path {
            CREDENTIALS_PATH => (CREDENTIALS_PATH, "GET", credentials),
            "/healthz" => ("/healthz", "GET", |_, _, _| {
                respond(StatusCode::OK, "text/plain", "ok\n")
            }),
            "/readyz" => ("/readyz", "GET", readyz),
            "/metrics" => ("/metrics", "GET", metrics),
            "/latest/api/token" if imds => ("/latest/api/token", "PUT", imds_token),
            IMDS_ROLES if imds => (IMDS_ROLES, "GET", imds_role),
            p if imds
                && p.len() > IMDS_ROLES.len()
                && p.starts_with(IMDS_ROLES)
                && !p[IMDS_ROLES.len()..].contains('/') =>
            {
                (
                    "/latest/meta-data/iam/security-credentials/{role}",
                    "GET",
                    imds_credentials,
                )
            }
            _ => {
                return (
                    "other",
                    json_error(StatusCode::NOT_FOUND, "not_found", "no such path"),
                );
            }
        };
        if method.as_str() != allowed {
            let mut r = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allowed));
            return (route, r);
        }
        (route, handler(s, headers, path))
    }
}

/// The endpoint service with its body-size limit; slow clients are cut off
/// by the listener's header-read timeout ([`attache_rt::serve::serve`]).
///
/// No concurrency limit: every answer is computed inside `call` without
/// waiting, so no more requests are ever in flight than the runtime has
/// worker threads (a limit of 512 never bound, and cost a shared semaphore
/// per request).
pub fn service(state: EndpointState) -> tower_http::limit::RequestBodyLimit<Endpoint> {
    tower_http::limit::RequestBodyLimit::new(Endpoint::new(state), MAX_BODY_BYTES)
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    // Lengths are not secret (the token's length is fixed); contents compare
    // in constant time.
    aws_lc_rs::constant_time::verify_slices_are_equal(given.as_bytes(), token.as_bytes()).is_ok()
}

fn credentials(s: &EndpointState, headers: &HeaderMap, _path: &str) -> Response {
    if !authorized(headers, &s.token) {
        return json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the Authorization header must carry the token from AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
        );
    }
    match s.cache.current_held() {
        Some(h) => {
            let mut r = respond(StatusCode::OK, "application/json", h.container_json.clone());
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        None => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_credentials",
            "no valid AWS credentials are held yet (or they expired); see the sidecar's log for why",
        ),
    }
}

fn readyz(s: &EndpointState, _: &HeaderMap, _: &str) -> Response {
    if s.cache.is_ready() {
        respond(StatusCode::OK, "text/plain", "ready\n")
    } else {
        respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "no valid credentials yet\n",
        )
    }
}

fn metrics(s: &EndpointState, _: &HeaderMap, _: &str) -> Response {
    if let Some(secs) = s.cache.seconds_until_expiry() {
        s.metrics.expiry_seconds.set(secs);
    }
    respond(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        s.metrics.encode(),
    )
}

/// Whether a `Host` header names this loopback endpoint (`127.x.y.z`,
/// `localhost` or `[::1]`, with or without a port). A browser tricked by DNS
/// rebinding sends the attacker's host name instead.
pub fn loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, port)) if port.is_empty() || port.starts_with(':') => inside,
            _ => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn imds_denied(headers: &HeaderMap) -> Option<Response> {
    // As EC2 does: requests relayed through a proxy are refused.
    if headers.contains_key("x-forwarded-for") {
        return Some(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "forwarded requests are refused",
        ));
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    (!loopback_host(host)).then(|| {
        json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the Host header must name the loopback endpoint (127.0.0.1, localhost or [::1])",
        )
    })
}

fn imds_token(s: &EndpointState, headers: &HeaderMap, _: &str) -> Response {
    if let Some(r) = imds_denied(headers) {
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
            let mut r = respond(StatusCode::OK, "text/plain", token);
            if let Ok(v) = HeaderValue::from_str(&ttl.to_string()) {
                r.headers_mut()
                    .insert("x-aws-ec2-metadata-token-ttl-seconds", v);
            }
            r
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

fn imds_role(s: &EndpointState, headers: &HeaderMap, _: &str) -> Response {
    if let Some(r) = imds_session_ok(s, headers) {
        return r;
    }
    match s.cache.current() {
        Some(c) => respond(
            StatusCode::OK,
            "text/plain",
            role_name(&c.role_arn).to_string(),
        ),
        None => json_error(
            StatusCode::NOT_FOUND,
            "no_credentials",
            "no valid AWS credentials are held yet",
        ),
    }
}

fn imds_credentials(s: &EndpointState, headers: &HeaderMap, path: &str) -> Response {
    if let Some(r) = imds_session_ok(s, headers) {
        return r;
    }
    let role = &path[IMDS_ROLES.len()..];
    match s.cache.current() {
        Some(c) if role_name(&c.role_arn) == role => {
            let body = serde_json::json!({
                "Code": "Success",
                "LastUpdated": rfc3339(c.issued_at),
                "Type": "AWS-HMAC",
                "AccessKeyId": c.access_key_id,
                "SecretAccessKey": c.secret_access_key.as_str(),
                "Token": c.session_token.as_str(),
                "Expiration": c.expiration_rfc3339(),
            });
            respond(
                StatusCode::OK,
                "application/json",
                Zeroizing::new(body.to_string()).as_bytes().to_vec(),
            )
        }
        Some(_) => json_error(StatusCode::NOT_FOUND, "not_found", "no such role"),
        None => json_error(
            StatusCode::NOT_FOUND,
            "no_credentials",
            "no valid AWS credentials are held yet",
        ),
    }
}

#[cfg(test)]
mod host_tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_hosts_reach_the_imds_paths() {
        for ok in [
            "127.0.0.1:9911",
            "127.0.0.1",
            "localhost:9911",
            "LOCALHOST",
            "[::1]:9911",
            "[::1]",
            "127.8.9.10:1",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example.com",
            "evil.example.com:9911",
            "169.254.169.254",
            "10.0.0.1:9911",
            "[::1",
            "[::1]x",
            "127.0.0.1.evil.com",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
