//! `POST /v1/certificates`: a pod's sidecar proves its identity with its
//! projected ServiceAccount token (checked by TokenReview), the broker checks
//! the SA's role against the namespace policy, and signs the CSR for exactly
//! that ServiceAccount.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use attache_pki::{CertificateAuthority, VerifiedCsr, WorkloadIdentity};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::Value;
use time::OffsetDateTime;

use attache_api::certificates::{CertificateReply, CertificateRequest, ErrorReply};

use crate::inject::pod_role;
use crate::metrics::Metrics;
use crate::policy::check_role;
use attache_api::names::{ANN_ROLE_ARN, TOKEN_AUDIENCE};

/// How long a successful TokenReview is reused.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);
/// At most this many TokenReview results are cached.
pub const TOKEN_CACHE_MAX: usize = 10_000;
/// How long a token TokenReview refused is refused again without asking.
pub const REFUSAL_CACHE_TTL: Duration = Duration::from_secs(10);
/// How long a certificate request waits for a TokenReview slot before a 503.
pub const TOKEN_REVIEW_WAIT: Duration = Duration::from_secs(5);
/// Tolerated clock difference with the API server when pre-checking `exp`.
const EXP_LEEWAY_SECS: i64 = 60;

/// The caller's identity as TokenReview reported it (also the identity
/// each revocation ledger record keeps, hence serde; an absent pod field
/// reads as `None`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Caller {
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// ServiceAccount name.
    pub service_account: String,
    /// Pod the token is bound to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// That pod's uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// TokenReview results by SHA-256 of the token: the caller and until when the
/// entry may be reused (authorization is never cached: it is read again for
/// every request).
pub type TokenCache = Arc<Mutex<HashMap<[u8; 32], Reviewed>>>;

/// A caller TokenReview authenticated, reused until `until`.
#[derive(Clone)]
pub struct Reviewed {
    /// Who the token belongs to.
    pub caller: Caller,
    /// When the entry stops being used.
    pub until: Instant,
}

/// Shared state of the certificate API.
#[derive(Clone)]
pub struct CertApi {
    /// Kubernetes client.
    pub client: kube::Client,
    /// The CA.
    pub ca: Arc<CertificateAuthority>,
    /// Trust domain of issued certificates.
    pub trust_domain: String,
    /// Leaf lifetime.
    pub leaf_lifetime: Duration,
    /// Enforce namespace role policy.
    pub restrictions: bool,
    /// Metrics.
    pub metrics: Metrics,
    /// TokenReview cache keyed by SHA-256 of the token.
    pub cache: TokenCache,
    /// Tokens refused recently (SHA-256 -> refused until), so a flood of
    /// garbage costs no TokenReviews.
    pub refusals: Arc<Mutex<HashMap<[u8; 32], Instant>>>,
    /// Bounds TokenReviews in flight.
    pub reviews: Arc<tokio::sync::Semaphore>,
    /// TokenReviews per client address and minute.
    pub reviews_per_peer: Arc<PeerLimiter>,
    /// Certificates per identity (namespace, ServiceAccount, pod) and minute.
    pub issuance: Arc<IssuanceLimiter>,
    /// Profile / trust anchor overrides a ServiceAccount may make (as the webhook checks them).
    pub overrides: crate::policy::ArnOverrides,
    /// What this replica issued, for revocation.
    pub revocations: crate::revocation::Revocations,
}

/// Who a certificate is issued to, for rate limiting.
pub type IdentityKey = (String, String, Option<String>);

/// A keyed rate limiter on certificates issued per identity, so one pod (or a
/// stolen token) cannot mint certificates in a loop.
pub type IssuanceLimiter = governor::DefaultKeyedRateLimiter<IdentityKey>;

/// A keyed rate limiter on TokenReviews per client address.
pub type PeerLimiter = governor::DefaultKeyedRateLimiter<std::net::IpAddr>;

/// A keyed limiter allowing `per_minute` events per key and minute (bursts
/// up to that many): certificates per identity, TokenReviews per address.
pub fn per_minute_limiter<K: std::hash::Hash + Eq + Clone>(
    per_minute: u32,
) -> governor::DefaultKeyedRateLimiter<K> {
    let n = std::num::NonZeroU32::new(per_minute.max(1)).unwrap_or(std::num::NonZeroU32::MIN);
    governor::RateLimiter::keyed(governor::Quota::per_minute(n))
}

/// What the broker reads from a token before asking TokenReview (the API
/// server checks the signature; this only turns away what cannot pass).
#[derive(Debug, PartialEq, Eq)]
pub struct TokenShape {
    /// `exp`, seconds since the epoch.
    pub expires_at: i64,
}

/// Refuses a bearer token that is not a JWT for audience `attache-broker`
/// that has not expired, without a TokenReview.
pub fn precheck(token: &str, now_unix: i64) -> Result<TokenShape, &'static str> {
    use base64::Engine as _;
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the bearer token is not a JWT");
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "the bearer token's payload is not base64url")?;
    let claims: Value =
        serde_json::from_slice(&bytes).map_err(|_| "the bearer token's payload is not JSON")?;
    let audience_ok = match &claims["aud"] {
        Value::String(a) => a == TOKEN_AUDIENCE,
        Value::Array(list) => list.iter().any(|a| a == TOKEN_AUDIENCE),
        _ => false,
    };
    if !audience_ok {
        return Err("the token's audience must include \"attache-broker\"");
    }
    let expires_at = claims["exp"]
        .as_i64()
        .ok_or("the bearer token has no expiry")?;
    if expires_at.saturating_add(EXP_LEEWAY_SECS) < now_unix {
        return Err("the bearer token has expired");
    }
    Ok(TokenShape { expires_at })
}

/// An API refusal: status, code, message.
#[derive(Debug)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable error code (`unauthenticated`, `forbidden`, `bad_csr`, ...).
    pub code: &'static str,
    /// What was wrong, for people.
    pub message: String,
}

impl Refusal {
    /// A refusal with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Refusal {
            status,
            code,
            message,
        }
    }

    fn into_response(self) -> (StatusCode, Json<Value>) {
        let reply = ErrorReply {
            error: Some(self.code.to_string()),
            message: Some(self.message),
        };
        (
            self.status,
            Json(serde_json::to_value(reply).unwrap_or_default()),
        )
    }
}

/// The Kubernetes API failed: the detail goes to the log, the caller (maybe
/// unauthenticated) gets generic text.
fn kube_unavailable(what: &str, e: kube::Error) -> Refusal {
    tracing::warn!(error = %e, "{what}");
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("{what}: the Kubernetes API is unavailable, retry later"),
    )
}

fn unauthenticated(why: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::UNAUTHORIZED, "unauthenticated", why.into())
}

fn forbidden(why: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::FORBIDDEN, "forbidden", why.into())
}

impl CertApi {
    /// Authenticates a bearer token with TokenReview (audience `attache-broker`).
    pub async fn authenticate(&self, token: &str) -> Result<Caller, Refusal> {
        self.metrics.token_reviews.inc();
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let result = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| kube_unavailable("TokenReview failed", e))?;
        let status = result.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            tracing::debug!(
                reason = status.error.as_deref().unwrap_or(""),
                "TokenReview refused a token"
            );
            return Err(unauthenticated(
                "the ServiceAccount token was not accepted (TokenReview)",
            ));
        }
        if !status
            .audiences
            .unwrap_or_default()
            .iter()
            .any(|a| a == TOKEN_AUDIENCE)
        {
            return Err(unauthenticated(format!(
                "the token's audience must include {TOKEN_AUDIENCE:?}"
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some(rest) = username.strip_prefix("system:serviceaccount:") else {
            return Err(forbidden(format!("{username:?} is not a ServiceAccount")));
        };
        let Some((namespace, service_account)) = rest.split_once(':') else {
            return Err(unauthenticated(format!(
                "malformed ServiceAccount user name {username:?}"
            )));
        };
        let extra = user.extra.unwrap_or_default();
        let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
        let caller = Caller {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            pod_name: first("authentication.kubernetes.io/pod-name"),
            pod_uid: first("authentication.kubernetes.io/pod-uid"),
        };
        Ok(caller)
    }

    /// The pod a pod-bound token names, refused when it no longer exists or
    /// was replaced by another pod of the same name; `None` for a token bound
    /// to no pod.
    async fn bound_pod(&self, caller: &Caller) -> Result<Option<Pod>, Refusal> {
        let Some(name) = &caller.pod_name else {
            return Ok(None);
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &caller.namespace);
        let pod = pods
            .get_opt(name)
            .await
            .map_err(|e| kube_unavailable("reading the pod", e))?
            .ok_or_else(|| {
                unauthenticated(format!("pod {}/{name} no longer exists", caller.namespace))
            })?;
        if caller.pod_uid.is_some() && pod.metadata.uid != caller.pod_uid {
            return Err(unauthenticated(format!(
                "pod {}/{name} was replaced",
                caller.namespace
            )));
        }
        Ok(Some(pod))
    }

    /// Finds the role the caller may use and checks it against policy.
    pub async fn authorize(&self, caller: &Caller) -> Result<String, Refusal> {
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &caller.namespace);
        let sa = sas
            .get_opt(&caller.service_account)
            .await
            .map_err(|e| kube_unavailable("reading the ServiceAccount", e))?
            .ok_or_else(|| {
                forbidden(format!(
                    "ServiceAccount {}/{} does not exist",
                    caller.namespace, caller.service_account
                ))
            })?;
        let sa_ann = sa.metadata.annotations.unwrap_or_default();
        self.overrides
            .check(&caller.namespace, &caller.service_account, &sa_ann)
            .map_err(|e| forbidden(e.to_string()))?;
        let pod_value = match self.bound_pod(caller).await? {
            Some(pod) => serde_json::to_value(&pod).unwrap_or_default(),
            None => Value::Null,
        };
        let role = pod_role(&pod_value, &sa_ann).map(str::to_string).ok_or_else(|| {
            forbidden(format!(
                "ServiceAccount {}/{} has no {ANN_ROLE_ARN} annotation: kubectl annotate serviceaccount -n {} {} {ANN_ROLE_ARN}=arn:aws:iam::<account>:role/<name>",
                caller.namespace, caller.service_account, caller.namespace, caller.service_account
            ))
        })?;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns_ann: BTreeMap<String, String> = namespaces
            .get_opt(&caller.namespace)
            .await
            .map_err(|e| kube_unavailable("reading the namespace", e))?
            .and_then(|n| n.metadata.annotations)
            .unwrap_or_default();
        check_role(&caller.namespace, &ns_ann, &role, self.restrictions).map_err(|e| {
            forbidden(format!(
                "ServiceAccount {}/{}: {e}",
                caller.namespace, caller.service_account
            ))
        })?;
        Ok(role)
    }

    /// Authenticates and authorizes `token`, reusing the TokenReview of the
    /// same token from the last [`TOKEN_CACHE_TTL`] (never past the token's
    /// `exp`), so a burst of pods or a sidecar retrying does not hammer
    /// TokenReview. Authorization is never reused: the ServiceAccount, the
    /// bound pod and the namespace are read again for every request, so a
    /// deleted pod's token, a removed role annotation or a tightened
    /// `allowed-roles` stops working at once. Tokens that cannot pass
    /// (not a JWT, wrong audience, expired) are refused without a TokenReview;
    /// tokens TokenReview refused are refused again for
    /// [`REFUSAL_CACHE_TTL`] without asking; TokenReviews in flight are bounded.
    pub async fn identify(
        &self,
        token: &str,
        peer: Option<std::net::IpAddr>,
    ) -> Result<(Caller, String), Refusal> {
        let key: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        let now = Instant::now();
        if self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .is_some_and(|until| *until > now)
        {
            return Err(unauthenticated(
                "the ServiceAccount token was not accepted (TokenReview)",
            ));
        }
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|r| r.until > now)
            .map(|r| r.caller.clone());
        if let Some(caller) = cached {
            self.metrics.token_cache_hits.inc();
            // Only the TokenReview is reused: policy is read again, so a
            // removed role annotation, a tightened allowed-roles or a
            // deleted pod takes effect on the next request.
            return match self.authorize(&caller).await {
                Ok(role) => Ok((caller, role)),
                Err(refusal) => {
                    self.cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                    Err(refusal)
                }
            };
        }
        let shape =
            precheck(token, OffsetDateTime::now_utc().unix_timestamp()).map_err(unauthenticated)?;
        self.check_peer(peer)?;
        let caller = self.review(token, key).await?;
        let role = self.authorize(&caller).await?;
        let left = shape.expires_at - OffsetDateTime::now_utc().unix_timestamp();
        let ttl = TOKEN_CACHE_TTL.min(Duration::from_secs(left.max(0).unsigned_abs()));
        self.cache_review(key, caller.clone(), ttl);
        Ok((caller, role))
    }

    /// Counts a TokenReview against the client address's quota.
    fn check_peer(&self, peer: Option<std::net::IpAddr>) -> Result<(), Refusal> {
        let Some(ip) = peer else { return Ok(()) };
        if self.reviews_per_peer.len() > TOKEN_CACHE_MAX {
            self.reviews_per_peer.retain_recent();
        }
        self.reviews_per_peer.check_key(&ip).map_err(|_| {
            Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many new ServiceAccount tokens from this address: retry in a minute".into(),
            )
        })
    }

    /// One TokenReview, waiting at most [`TOKEN_REVIEW_WAIT`] for a slot; a
    /// token it refuses is remembered for [`REFUSAL_CACHE_TTL`].
    async fn review(&self, token: &str, key: [u8; 32]) -> Result<Caller, Refusal> {
        let _permit = tokio::time::timeout(TOKEN_REVIEW_WAIT, self.reviews.acquire())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "too many certificate requests at once, retry later".into(),
                )
            })?;
        match self.authenticate(token).await {
            Err(r) if r.status == StatusCode::UNAUTHORIZED => {
                remember(&self.refusals, key, Instant::now() + REFUSAL_CACHE_TTL);
                Err(r)
            }
            other => other,
        }
    }

    /// Keeps `caller` for `ttl` in the bounded cache (when full: expired
    /// entries go first, then the one closest to expiry).
    fn cache_review(&self, key: [u8; 32], caller: Caller, ttl: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.retain(|_, r| r.until > now);
            if cache.len() >= TOKEN_CACHE_MAX
                && let Some(oldest) = cache.iter().min_by_key(|(_, r)| r.until).map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            key,
            Reviewed {
                caller,
                until: now + ttl,
            },
        );
    }

    /// The whole request: authenticate, authorize, verify the CSR, issue.
    pub async fn handle(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        peer: Option<std::net::IpAddr>,
    ) -> Result<CertificateReply, Refusal> {
        let token = bearer_token(headers)?;
        let (caller, role) = self.identify(token, peer).await?;
        let key: IdentityKey = (
            caller.namespace.clone(),
            caller.service_account.clone(),
            caller.pod_name.clone(),
        );
        if self.issuance.len() > TOKEN_CACHE_MAX {
            self.issuance.retain_recent();
        }
        if self.issuance.check_key(&key).is_err() {
            return Err(Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "too many certificates for {}/{}{}: retry in a minute",
                    caller.namespace,
                    caller.service_account,
                    caller
                        .pod_name
                        .as_deref()
                        .map(|p| format!(" (pod {p})"))
                        .unwrap_or_default()
                ),
            ));
        }
        let csr = csr_from_body(body)?;
        let identity = WorkloadIdentity::new(
            &self.trust_domain,
            &caller.namespace,
            &caller.service_account,
        )
        .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "bad_identity", e.to_string()))?;
        let now = OffsetDateTime::now_utc();
        let leaf = self
            .ca
            .issue_workload(&csr, &identity, self.leaf_lifetime, now)
            .map_err(|e| {
                Refusal::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "issue_failed",
                    e.to_string(),
                )
            })?;
        tracing::info!(
            namespace = %caller.namespace,
            service_account = %caller.service_account,
            pod = caller.pod_name.as_deref().unwrap_or(""),
            role_arn = %role,
            serial = %leaf.serial,
            not_after = %leaf.not_after,
            "issued workload certificate"
        );
        self.revocations.record(&caller, &leaf, now);
        self.metrics.certificates_issued.inc();
        Ok(CertificateReply {
            certificate: leaf.pem,
            chain: vec![],
            not_after: Some(attache_aws::credentials::rfc3339(leaf.not_after)),
        })
    }
}

/// The ServiceAccount token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, Refusal> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "an Authorization: Bearer <ServiceAccount token> header is required".into(),
            )
        })
}

/// The verified CSR of a request body `{"csr": "<PEM>"}`; a 400 naming the
/// field otherwise.
pub fn csr_from_body(body: &[u8]) -> Result<VerifiedCsr, Refusal> {
    let request: Value = serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("body is not JSON: {e}"),
        )
    })?;
    // Read as a value first, so a missing or mistyped field gets the
    // message below rather than serde's.
    let request: CertificateRequest = serde_json::from_value(request).map_err(|_| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "field \"csr\" (a PEM string) is required".into(),
        )
    })?;
    VerifiedCsr::parse(request.csr.as_bytes()).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_csr",
            format!("field \"csr\": {e}"),
        )
    })
}

/// The axum handler.
pub async fn issue(
    State(api): State<CertApi>,
    peer: Option<axum::Extension<attache_rt::serve::PeerAddr>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let peer = peer.map(|axum::Extension(p)| p.0.ip());
    match api.handle(&headers, &body, peer).await {
        Ok(reply) => (
            StatusCode::OK,
            Json(serde_json::to_value(reply).unwrap_or_default()),
        ),
        Err(r) => {
            tracing::warn!(status = r.status.as_u16(), error = r.code, message = %r.message, "refused certificate request");
            Metrics::count(&api.metrics.certificates_refused, r.code);
            r.into_response()
        }
    }
}

/// Adds a refused token to the bounded refusal cache.
fn remember(refusals: &Mutex<HashMap<[u8; 32], Instant>>, key: [u8; 32], until: Instant) {
    let mut map = refusals.lock().unwrap_or_else(|e| e.into_inner());
    if map.len() >= TOKEN_CACHE_MAX {
        let now = Instant::now();
        map.retain(|_, u| *u > now);
        if map.len() >= TOKEN_CACHE_MAX {
            return;
        }
    }
    map.insert(key, until);
}

#[cfg(test)]
mod precheck_tests {
    use super::*;
    use base64::Engine as _;
    use serde_json::json;

    fn jwt(claims: Value) -> String {
        let enc =
            |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.sig", enc(&json!({"alg": "ES256"})), enc(&claims))
    }

    #[test]
    fn only_unexpired_jwts_for_the_broker_reach_token_review() {
        let now = 1_800_000_000;
        let good = jwt(json!({"aud": ["attache-broker"], "exp": now + 600}));
        assert_eq!(
            precheck(&good, now),
            Ok(TokenShape {
                expires_at: now + 600
            })
        );
        let single = jwt(json!({"aud": "attache-broker", "exp": now + 600}));
        assert!(precheck(&single, now).is_ok());
        for (token, why) in [
            ("garbage".to_string(), "not a JWT"),
            ("a.b.c.d".to_string(), "not a JWT"),
            ("a.!!!.c".to_string(), "base64url"),
            (jwt(json!({"aud": ["vault"], "exp": now + 600})), "audience"),
            (jwt(json!({"aud": ["attache-broker"]})), "no expiry"),
            (
                jwt(json!({"aud": ["attache-broker"], "exp": now - 3600})),
                "expired",
            ),
        ] {
            let err = precheck(&token, now).unwrap_err();
            assert!(err.contains(why), "{token}: {err}");
        }
    }

    /// Found by fuzzing (certapi target): `exp` near `i64::MAX` overflowed
    /// the leeway addition (a panic with overflow checks, a wrap to
    /// "expired" without).
    #[test]
    fn an_expiry_at_the_end_of_time_does_not_overflow() {
        let far = jwt(json!({"aud": ["attache-broker"], "exp": i64::MAX}));
        assert_eq!(
            precheck(&far, 1_800_000_000),
            Ok(TokenShape {
                expires_at: i64::MAX
            })
        );
        let past = jwt(json!({"aud": ["attache-broker"], "exp": i64::MIN}));
        assert!(precheck(&past, 1_800_000_000).is_err());
    }
}
