//! `POST /mutate`: the mutating admission webhook. Looks up the pod's
//! ServiceAccount and namespace annotations ([`crate::informer`]), asks [`crate::inject::decide`], and answers
//! with an AdmissionReview carrying a JSON Patch, a denial, or nothing.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;

use crate::informer::AnnotationCache;
use crate::inject::{Context, Decision, InjectConfig, decide};
use crate::metrics::Metrics;

/// Shared state of the webhook.
#[derive(Clone)]
pub struct Webhook {
    /// ServiceAccount and namespace annotations (watch-fed, live on a miss).
    pub annotations: AnnotationCache,
    /// Injection settings.
    pub config: Arc<InjectConfig>,
    /// Namespaces never injected (the broker's own, kube-system, ...).
    pub excluded_namespaces: Arc<Vec<String>>,
    /// Metrics.
    pub metrics: Metrics,
}

fn review(resp: AdmissionResponse) -> (StatusCode, Json<Value>) {
    (
        StatusCode::OK,
        Json(serde_json::to_value(resp.into_review()).unwrap_or_default()),
    )
}

/// The axum handler: malformed reviews get a 400 naming what is wrong.
pub async fn mutate(
    State(w): State<Webhook>,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let started = std::time::Instant::now();
    let answer = answer(&w, &body).await;
    w.metrics
        .admission_duration
        .observe(started.elapsed().as_secs_f64());
    answer
}

async fn answer(w: &Webhook, body: &[u8]) -> (StatusCode, Json<Value>) {
    let req = match parse_review(body) {
        Ok(r) => r,
        Err(e) => {
            Metrics::count(&w.metrics.admissions, "invalid");
            let msg = format!("malformed AdmissionReview: {e}");
            tracing::warn!(error = %msg, "refused admission review");
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    serde_json::to_value(AdmissionResponse::invalid(&msg).into_review())
                        .unwrap_or_default(),
                ),
            );
        }
    };
    match w.review(&req).await {
        Ok(resp) => review(resp),
        // The API server's failurePolicy decides (Fail: the pod is refused
        // with this message; Ignore: admitted unmodified): never a denial
        // in attache's name for a pod that may not even want a role.
        Err(message) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({"error": "unavailable", "message": message})),
        ),
    }
}

impl Webhook {
    /// The review's answer; `Err` when the ServiceAccount or namespace
    /// cannot be read (answered with HTTP 500).
    async fn review(
        &self,
        req: &AdmissionRequest<DynamicObject>,
    ) -> Result<AdmissionResponse, String> {
        let allow = AdmissionResponse::from(req);
        if req.kind.kind != "Pod"
            || !matches!(req.operation, Operation::Create)
            || req.sub_resource.is_some()
        {
            Metrics::count(&self.metrics.admissions, "skipped");
            return Ok(allow);
        }
        let namespace = req.namespace.clone().unwrap_or_default();
        if self.excluded_namespaces.contains(&namespace) {
            Metrics::count(&self.metrics.admissions, "skipped");
            return Ok(allow);
        }
        let Some(obj) = &req.object else {
            Metrics::count(&self.metrics.admissions, "invalid");
            return Ok(allow.deny("the review has no pod object"));
        };
        let pod = serde_json::to_value(obj).unwrap_or_default();
        let sa_name = pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string();
        let (sa, ns) = tokio::join!(
            self.annotations.service_account(&namespace, &sa_name),
            self.annotations.namespace(&namespace)
        );
        let (sa_ann, ns_ann) = match (sa, ns) {
            (Ok(sa), Ok(ns)) => (sa.unwrap_or_default(), ns.unwrap_or_default()),
            (Err(e), _) | (_, Err(e)) => {
                // failurePolicy decides what the API server does with this.
                Metrics::count(&self.metrics.admissions, "error");
                tracing::error!(namespace = %namespace, service_account = %sa_name, error = %e, "cannot read ServiceAccount or namespace");
                return Err(format!(
                    "attache cannot read ServiceAccount {namespace}/{sa_name} or its namespace; retry"
                ));
            }
        };
        let ctx = Context {
            namespace: &namespace,
            namespace_annotations: &ns_ann,
            service_account: &sa_name,
            sa_annotations: &sa_ann,
        };
        let pod_name = req.name.clone();
        match decide(&pod, &ctx, &self.config) {
            Decision::Skip(why) => {
                tracing::debug!(namespace = %namespace, service_account = %sa_name, reason = why, "not injecting");
                Metrics::count(&self.metrics.admissions, "skipped");
                Ok(allow)
            }
            Decision::Deny(message) => {
                tracing::info!(namespace = %namespace, service_account = %sa_name, pod = %pod_name, message = %message, "denied pod");
                Metrics::count(&self.metrics.admissions, "denied");
                Ok(allow.deny(message))
            }
            Decision::Patch {
                ops,
                warnings,
                role_arn,
            } => match patch_response(allow.clone(), ops, warnings) {
                Ok(resp) => {
                    tracing::info!(namespace = %namespace, service_account = %sa_name, pod = %pod_name, role_arn = %role_arn, "injecting sidecar");
                    Metrics::count(&self.metrics.admissions, "injected");
                    Ok(resp)
                }
                Err(message) => Ok(allow.deny(message)),
            },
        }
    }
}

/// Reads a `POST /mutate` body: an AdmissionReview that carries a request.
/// The error says what is wrong (the handler answers it with a 400).
pub fn parse_review(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| e.to_string())?;
    review
        .try_into()
        .map_err(|_| "the review has no \"request\"".to_string())
}

/// The answer that applies `patch` (from [`Decision::Patch`]) as the
/// review's JSON Patch, with `warnings` for kubectl; `Err` (an internal
/// error, to deny with) when it cannot be encoded.
pub fn patch_response(
    allow: AdmissionResponse,
    patch: json_patch::Patch,
    warnings: Vec<String>,
) -> Result<AdmissionResponse, String> {
    let mut resp = allow
        .with_patch(patch)
        .map_err(|e| format!("internal error encoding the patch: {e}"))?;
    if !warnings.is_empty() {
        resp.warnings = Some(warnings);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// When the ServiceAccount cannot be read, the webhook answers HTTP 500 so
    /// the API server's failurePolicy decides, instead of denying a pod that
    /// may not even ask for a role.
    #[tokio::test]
    async fn an_api_read_error_is_a_500_not_a_denial() {
        // Nothing listens on a port that was just released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        let w = Webhook {
            annotations: AnnotationCache::live(kube::Client::try_from(config).unwrap()),
            config: Arc::new(crate::inject::tests::cfg()),
            excluded_namespaces: Arc::new(vec!["kube-system".into()]),
            metrics: Metrics::default(),
        };
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a", "operation": "CREATE", "name": "web",
                "userInfo": {"username": "admin"},
                "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                           "spec": {"containers": [{"name": "app", "image": "x"}]}},
            }
        });
        let (status, Json(body)) = mutate(State(w), review.to_string().into_bytes().into()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("team-a/default"),
            "{body}"
        );
        assert!(
            body.get("response").is_none(),
            "not an AdmissionReview denial"
        );
    }
}
