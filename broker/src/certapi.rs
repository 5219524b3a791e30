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
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::inject::pod_role;
use crate::metrics::Metrics;
use crate::names::{ANN_ROLE_ARN, TOKEN_AUDIENCE};
use crate::policy::check_role;

/// How long a successful TokenReview is reused.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);
/// At most this many TokenReview results are cached.
pub const TOKEN_CACHE_MAX: usize = 10_000;

/// The caller's identity as TokenReview reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// ServiceAccount name.
    pub service_account: String,
    /// Pod the token is bound to, if any.
    pub pod_name: Option<String>,
    /// That pod's uid.
    pub pod_uid: Option<String>,
}

/// Authentication and authorization results by SHA-256 of the token: the
/// caller, the role it may use, and until when the entry may be reused.
pub type TokenCache = Arc<Mutex<HashMap<[u8; 32], (Caller, String, Instant)>>>;

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
}

/// An API refusal: status, code, message.
#[derive(Debug)]
pub struct Refusal(pub StatusCode, pub &'static str, pub String);

impl Refusal {
    fn into_response(self) -> (StatusCode, Json<Value>) {
        (self.0, Json(json!({"error": self.1, "message": self.2})))
    }
}

fn kube_unavailable(what: &str, e: kube::Error) -> Refusal {
    Refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("{what}: {e}"),
    )
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
        let unauthenticated =
            |why: String| Refusal(StatusCode::UNAUTHORIZED, "unauthenticated", why);
        if status.authenticated != Some(true) {
            return Err(unauthenticated(format!(
                "the ServiceAccount token was not accepted: {}",
                status.error.unwrap_or_else(|| "not authenticated".into())
            )));
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
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("{username:?} is not a ServiceAccount"),
            ));
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
                Refusal(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    format!("pod {}/{name} no longer exists", caller.namespace),
                )
            })?;
        if caller.pod_uid.is_some() && pod.metadata.uid != caller.pod_uid {
            return Err(Refusal(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                format!("pod {}/{name} was replaced", caller.namespace),
            ));
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
                Refusal(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "ServiceAccount {}/{} does not exist",
                        caller.namespace, caller.service_account
                    ),
                )
            })?;
        let sa_ann = sa.metadata.annotations.unwrap_or_default();
        let pod_value = match self.bound_pod(caller).await? {
            Some(pod) => serde_json::to_value(&pod).unwrap_or_default(),
            None => Value::Null,
        };
        let role = pod_role(&pod_value, &sa_ann).map(str::to_string).ok_or_else(|| {
            Refusal(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "ServiceAccount {}/{} has no {ANN_ROLE_ARN} annotation: kubectl annotate serviceaccount -n {} {} {ANN_ROLE_ARN}=arn:aws:iam::<account>:role/<name>",
                    caller.namespace, caller.service_account, caller.namespace, caller.service_account
                ),
            )
        })?;
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns_ann: BTreeMap<String, String> = namespaces
            .get_opt(&caller.namespace)
            .await
            .map_err(|e| kube_unavailable("reading the namespace", e))?
            .and_then(|n| n.metadata.annotations)
            .unwrap_or_default();
        check_role(&caller.namespace, &ns_ann, &role, self.restrictions).map_err(|e| {
            Refusal(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "ServiceAccount {}/{}: {e}",
                    caller.namespace, caller.service_account
                ),
            )
        })?;
        Ok(role)
    }

    /// Authenticates and authorizes `token`, reusing a decision made in the
    /// last [`TOKEN_CACHE_TTL`] for the same token (so a burst of pods, or a
    /// sidecar retrying, does not hammer the API server). Refusals are not
    /// cached. A reused decision for a pod-bound token still checks that the
    /// pod exists (one read instead of TokenReview and three reads), so a
    /// deleted pod's token stops working at once.
    pub async fn identify(&self, token: &str) -> Result<(Caller, String), Refusal> {
        let key: [u8; 32] = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .unwrap_or([0; 32]);
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|(_, _, until)| *until > Instant::now())
            .map(|(caller, role, _)| (caller.clone(), role.clone()));
        if let Some((caller, role)) = cached {
            self.metrics.token_cache_hits.inc();
            if let Err(refusal) = self.bound_pod(&caller).await {
                self.cache
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                return Err(refusal);
            }
            return Ok((caller, role));
        }
        let caller = self.authenticate(token).await?;
        let role = self.authorize(&caller).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if cache.len() >= TOKEN_CACHE_MAX {
            cache.retain(|_, (_, _, until)| *until > now);
            if cache.len() >= TOKEN_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (caller.clone(), role.clone(), now + TOKEN_CACHE_TTL));
        Ok((caller, role))
    }

    /// The whole request: authenticate, authorize, verify the CSR, issue.
    pub async fn handle(&self, headers: &HeaderMap, body: &[u8]) -> Result<Value, Refusal> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Refusal(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "an Authorization: Bearer <ServiceAccount token> header is required".into(),
                )
            })?;
        let (caller, role) = self.identify(token).await?;
        let request: Value = serde_json::from_slice(body).map_err(|e| {
            Refusal(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body is not JSON: {e}"),
            )
        })?;
        let csr_pem = request.get("csr").and_then(Value::as_str).ok_or_else(|| {
            Refusal(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "field \"csr\" (a PEM string) is required".into(),
            )
        })?;
        let csr = VerifiedCsr::parse(csr_pem.as_bytes()).map_err(|e| {
            Refusal(
                StatusCode::BAD_REQUEST,
                "bad_csr",
                format!("field \"csr\": {e}"),
            )
        })?;
        let identity = WorkloadIdentity::new(
            &self.trust_domain,
            &caller.namespace,
            &caller.service_account,
        )
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, "bad_identity", e.to_string()))?;
        let leaf = self
            .ca
            .issue_workload(
                &csr,
                &identity,
                self.leaf_lifetime,
                OffsetDateTime::now_utc(),
            )
            .map_err(|e| {
                Refusal(
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
        self.metrics.certificates_issued.inc();
        Ok(json!({
            "certificate": leaf.pem,
            "chain": [],
            "notAfter": attache_sidecar::credentials::rfc3339(leaf.not_after),
        }))
    }
}

/// The axum handler.
pub async fn issue(
    State(api): State<CertApi>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    match api.handle(&headers, &body).await {
        Ok(v) => (StatusCode::OK, Json(v)),
        Err(r) => {
            tracing::warn!(status = r.0.as_u16(), error = r.1, message = %r.2, "refused certificate request");
            Metrics::count(&api.metrics.certificates_refused, r.1);
            r.into_response()
        }
    }
}
