//! The one path every AWS call attache makes goes through: send a signed
//! request, read a bounded reply, and turn failures into one error type,
//! [`AwsError`], classified the same way for every service
//! ([`AwsError::kind`], [`AwsError::is_retryable`]).

use crate::arn::ConfigError;

/// Largest reply read (AWS's are a few KiB).
pub const MAX_REPLY_BYTES: usize = 256 * 1024;
/// Longest part of AWS's error message kept.
const MAX_MESSAGE_CHARS: usize = 300;

/// Which call: the service as people name it and the operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operation {
    /// `Roles Anywhere`, `ECR`, ...
    pub service: &'static str,
    /// `CreateSession`, `GetAuthorizationToken`, ...
    pub name: &'static str,
}

/// An IAM Roles Anywhere operation.
const fn roles_anywhere(name: &'static str) -> Operation {
    Operation {
        service: "Roles Anywhere",
        name,
    }
}

/// IAM Roles Anywhere `CreateSession`.
pub const CREATE_SESSION: Operation = roles_anywhere("CreateSession");
/// IAM Roles Anywhere `ImportCrl`.
pub const IMPORT_CRL: Operation = roles_anywhere("ImportCrl");
/// IAM Roles Anywhere `UpdateCrl`.
pub const UPDATE_CRL: Operation = roles_anywhere("UpdateCrl");
/// IAM Roles Anywhere `ListCrls`.
pub const LIST_CRLS: Operation = roles_anywhere("ListCrls");
/// IAM Roles Anywhere `EnableCrl`.
pub const ENABLE_CRL: Operation = roles_anywhere("EnableCrl");
/// ECR `GetAuthorizationToken`.
pub const GET_AUTHORIZATION_TOKEN: Operation = Operation {
    service: "ECR",
    name: "GetAuthorizationToken",
};

/// Why an AWS call failed. Messages never contain credentials or tokens.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// AWS answered with an error.
    #[error("{} refused {} in {region}: {code} (HTTP {status}): {message}", .operation.service, .operation.name)]
    Aws {
        /// The call.
        operation: Operation,
        /// Region asked.
        region: String,
        /// HTTP status.
        status: u16,
        /// AWS error type, e.g. `AccessDeniedException`.
        code: String,
        /// AWS's message (at most 300 characters).
        message: String,
    },
    /// The request did not complete in time.
    #[error("{} to {endpoint} timed out", .operation.name)]
    Timeout {
        /// The call.
        operation: Operation,
        /// The endpoint.
        endpoint: String,
    },
    /// Connection-level failure.
    #[error("cannot reach {} at {endpoint}: {}", .operation.service, crate::request::error_chain(.source))]
    Transport {
        /// The call.
        operation: Operation,
        /// The endpoint.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
    /// A success status whose body is not what AWS sends.
    #[error("unexpected {} reply: {reason}", .operation.name)]
    BadReply {
        /// The call.
        operation: Operation,
        /// What is wrong (never a value that may be a secret).
        reason: String,
    },
    /// The request could not be signed or built.
    #[error("cannot sign {}: {source}", .operation.name)]
    Signing {
        /// The call.
        operation: Operation,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A CRL over Roles Anywhere's `crlData` limit, refused before sending.
    #[error("{} refused before sending: the CRL is {len} bytes, over Roles Anywhere's limit of {max} bytes", .operation.name)]
    CrlTooLarge {
        /// The call.
        operation: Operation,
        /// The CRL's size in bytes (PEM, what `crlData` carries).
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
}

impl AwsError {
    /// A reply that is not what AWS sends.
    pub fn bad_reply(operation: Operation, reason: impl Into<String>) -> Self {
        AwsError::BadReply {
            operation,
            reason: reason.into(),
        }
    }

    /// Whether the same request may succeed later without a configuration
    /// change: throttling, 5xx, expired credentials, timeouts, connection
    /// failures and garbled replies. Access denied and validation errors
    /// need someone to change the configuration first.
    pub fn is_retryable(&self) -> bool {
        match self {
            AwsError::Aws { status, code, .. } => {
                *status == 429
                    || *status >= 500
                    || code.contains("Throttl")
                    || code.contains("Expired")
            }
            AwsError::Timeout { .. } | AwsError::Transport { .. } | AwsError::BadReply { .. } => {
                true
            }
            AwsError::Signing { .. } | AwsError::Config(_) | AwsError::CrlTooLarge { .. } => false,
        }
    }

    /// A short label for metrics: `throttled`, `server`, `expired`, `denied`,
    /// `invalid`, `timeout`, `network`, `reply`, `signing`, `config`.
    pub fn kind(&self) -> &'static str {
        match self {
            AwsError::Aws { status, code, .. } if *status == 429 || code.contains("Throttl") => {
                "throttled"
            }
            AwsError::Aws { status, .. } if *status >= 500 => "server",
            AwsError::Aws { code, .. } if code.contains("Expired") => "expired",
            AwsError::Aws { status, code, .. }
                if *status == 401
                    || *status == 403
                    || code.contains("AccessDenied")
                    || code.contains("UnrecognizedClient")
                    || code.contains("Signature") =>
            {
                "denied"
            }
            AwsError::Aws { .. } | AwsError::CrlTooLarge { .. } => "invalid",
            AwsError::Timeout { .. } => "timeout",
            AwsError::Transport { .. } => "network",
            AwsError::BadReply { .. } => "reply",
            AwsError::Signing { .. } => "signing",
            AwsError::Config(_) => "config",
        }
    }
}

/// Sends `request` (already signed) for `operation` in `region` and returns
/// the body of a 2xx reply; anything else is a classified [`AwsError`].
pub async fn send(
    operation: Operation,
    region: &str,
    endpoint: &str,
    request: reqwest::RequestBuilder,
) -> Result<bytes::Bytes, AwsError> {
    send_bounded(operation, region, endpoint, request, MAX_REPLY_BYTES).await
}

/// [`send`] for operations whose replies may exceed [`MAX_REPLY_BYTES`]
/// (Roles Anywhere CRLs come back whole, up to 300,000 bytes each as base64):
/// a reply over `max_reply_bytes` is a [`AwsError::BadReply`].
pub async fn send_bounded(
    operation: Operation,
    region: &str,
    endpoint: &str,
    request: reqwest::RequestBuilder,
    max_reply_bytes: usize,
) -> Result<bytes::Bytes, AwsError> {
    let transport = |source: reqwest::Error| {
        if source.is_timeout() {
            AwsError::Timeout {
                operation,
                endpoint: endpoint.to_string(),
            }
        } else {
            AwsError::Transport {
                operation,
                endpoint: endpoint.to_string(),
                source,
            }
        }
    };
    let resp = request.send().await.map_err(transport)?;
    let status = resp.status().as_u16();
    let error_type = resp
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp.bytes().await.map_err(transport)?;
    if bytes.len() > max_reply_bytes {
        return Err(AwsError::bad_reply(
            operation,
            format!("{} bytes is too large", bytes.len()),
        ));
    }
    if !(200..300).contains(&status) {
        let (code, message) = crate::sigv4::json_error(status, error_type.as_deref(), &bytes);
        return Err(AwsError::Aws {
            operation,
            region: region.to_string(),
            status,
            code,
            message: message.chars().take(MAX_MESSAGE_CHARS).collect(),
        });
    }
    Ok(bytes)
}

/// An error and its causes on one line (reqwest hides the root cause otherwise).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws(status: u16, code: &str) -> AwsError {
        AwsError::Aws {
            operation: CREATE_SESSION,
            region: "us-east-1".into(),
            status,
            code: code.into(),
            message: String::new(),
        }
    }

    #[test]
    fn errors_are_classified_the_same_for_every_service() {
        assert_eq!(aws(429, "ThrottlingException").kind(), "throttled");
        assert!(aws(429, "ThrottlingException").is_retryable());
        assert!(aws(400, "ThrottlingException").is_retryable());
        assert_eq!(aws(503, "ServiceUnavailableException").kind(), "server");
        assert!(aws(503, "ServiceUnavailable").is_retryable());
        assert_eq!(aws(400, "ExpiredTokenException").kind(), "expired");
        assert!(aws(400, "ExpiredTokenException").is_retryable());
        assert_eq!(aws(400, "UnrecognizedClientException").kind(), "denied");
        assert_eq!(aws(403, "AccessDeniedException").kind(), "denied");
        assert!(!aws(403, "AccessDeniedException").is_retryable());
        assert!(!aws(400, "AccessDeniedException").is_retryable());
        assert_eq!(aws(400, "ValidationException").kind(), "invalid");
        assert!(!aws(400, "ValidationException").is_retryable());
        let e = AwsError::bad_reply(GET_AUTHORIZATION_TOKEN, "empty");
        assert_eq!((e.kind(), e.is_retryable()), ("reply", true));
        assert_eq!(
            e.to_string(),
            "unexpected GetAuthorizationToken reply: empty"
        );
        let e = AwsError::CrlTooLarge {
            operation: IMPORT_CRL,
            len: 300_001,
            max: 300_000,
        };
        assert_eq!((e.kind(), e.is_retryable()), ("invalid", false));
        assert!(e.to_string().contains("300001 bytes"), "{e}");
        assert_eq!(
            aws(403, "AccessDeniedException").to_string(),
            "Roles Anywhere refused CreateSession in us-east-1: AccessDeniedException (HTTP 403): "
        );
    }
}
