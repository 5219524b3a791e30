//! ECR `GetAuthorizationToken` over AWS JSON 1.1: a 12-hour registry password
//! for the role whose credentials signed the request.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::Response;
use serde::Deserialize;

use crate::sigv4_verify;
use crate::state::{SECRET_ALPHABET, Shared, random_string};
use crate::wire::{ApiError, Body, RawRequest, response};

/// The `X-Amz-Target` prefix of every ECR operation.
pub(crate) const TARGET_PREFIX: &str = "AmazonEC2ContainerRegistry_V20150921.";
/// How long an ECR password lives.
pub const TOKEN_LIFETIME: time::Duration = time::Duration::hours(12);

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetAuthorizationTokenBody {
    registry_ids: Option<Vec<String>>,
}

/// Serves an ECR request (only `GetAuthorizationToken` exists here).
pub(crate) fn handle(shared: &Shared, req: &RawRequest) -> Result<Response<Body>, ApiError> {
    let creds = sigv4_verify::verify(shared, req, &sigv4_verify::ECR)?;
    let target = req.header("x-amz-target").unwrap_or_default();
    let op = target.strip_prefix(TARGET_PREFIX).unwrap_or(target);
    if op != "GetAuthorizationToken" {
        return Err(ApiError::new(
            400,
            "UnknownOperationException",
            format!(
                "Unknown operation {target:?} (this emulator serves GetAuthorizationToken only)"
            ),
        ));
    }
    let content_type = req.header("content-type").unwrap_or_default();
    if !content_type.starts_with("application/x-amz-json-1.1") {
        return Err(ApiError::new(
            400,
            "SerializationException",
            format!("Content-Type must be application/x-amz-json-1.1, got {content_type:?}"),
        ));
    }
    let body: GetAuthorizationTokenBody = if req.body.is_empty() {
        GetAuthorizationTokenBody::default()
    } else {
        serde_json::from_slice(&req.body).map_err(|e| {
            ApiError::new(
                400,
                "SerializationException",
                format!("Invalid request body: {e}"),
            )
        })?
    };
    let registries = match body.registry_ids {
        Some(ids) if !ids.is_empty() => ids,
        _ => vec![shared.account.clone()],
    };
    for id in &registries {
        if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::new(
                400,
                "InvalidParameterException",
                format!("registryIds: {id:?} is not a 12-digit account id"),
            ));
        }
    }
    let expires = shared.now() + TOKEN_LIFETIME;
    let password = random_string(256, SECRET_ALPHABET);
    shared
        .registry()
        .ecr_passwords
        .insert(password.clone(), (creds.role_arn.clone(), expires));
    let token = B64.encode(format!("AWS:{password}"));
    let expires_at = expires.unix_timestamp_nanos() as f64 / 1e9;
    let data: Vec<serde_json::Value> = registries
        .iter()
        .map(|id| {
            serde_json::json!({
                "authorizationToken": token,
                "expiresAt": expires_at,
                "proxyEndpoint": format!("https://{id}.dkr.ecr.{}.amazonaws.com", shared.region),
            })
        })
        .collect();
    tracing::info!(role_arn = %creds.role_arn, registries = ?registries, "GetAuthorizationToken");
    Ok(response(
        200,
        "application/x-amz-json-1.1",
        serde_json::json!({ "authorizationData": data }).to_string(),
        &crate::state::request_id(),
    ))
}
