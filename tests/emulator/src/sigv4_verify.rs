//! Verifies AWS Signature Version 4 (`AWS4-HMAC-SHA256`) on STS and ECR
//! requests against credentials this emulator issued, as AWS does.

use attache_pki::sigv4::{self, Authorization, RequestParts};

use crate::state::{IssuedCredentials, Shared};
use crate::wire::{ApiError, RawRequest};

/// How far `X-Amz-Date` may be from the emulator's clock.
pub(crate) const MAX_SKEW: time::Duration = time::Duration::minutes(5);

/// An AWS error: HTTP status and error code.
#[derive(Clone, Copy)]
pub(crate) struct ErrorCode {
    pub status: u16,
    pub code: &'static str,
}

/// The error codes a service uses for SigV4 failures (they differ between the
/// query protocol of STS and the JSON protocol of ECR).
pub(crate) struct SigV4Codes {
    /// Signing name in the credential scope (`sts`, `ecr`).
    pub service: &'static str,
    /// No `Authorization` at all.
    pub missing: ErrorCode,
    /// `Authorization` that cannot be read.
    pub incomplete: ErrorCode,
    /// Wrong signature, scope or date.
    pub mismatch: ErrorCode,
    /// Unknown access key or session token.
    pub invalid_token: ErrorCode,
    /// Expired credentials.
    pub expired: ErrorCode,
}

/// STS (query protocol) codes.
pub(crate) const STS: SigV4Codes = SigV4Codes {
    service: "sts",
    missing: ErrorCode {
        status: 403,
        code: "MissingAuthenticationToken",
    },
    incomplete: ErrorCode {
        status: 400,
        code: "IncompleteSignature",
    },
    mismatch: ErrorCode {
        status: 403,
        code: "SignatureDoesNotMatch",
    },
    invalid_token: ErrorCode {
        status: 403,
        code: "InvalidClientTokenId",
    },
    expired: ErrorCode {
        status: 403,
        code: "ExpiredToken",
    },
};

/// ECR (AWS JSON 1.1) codes.
pub(crate) const ECR: SigV4Codes = SigV4Codes {
    service: "ecr",
    missing: ErrorCode {
        status: 400,
        code: "MissingAuthenticationTokenException",
    },
    incomplete: ErrorCode {
        status: 400,
        code: "IncompleteSignatureException",
    },
    mismatch: ErrorCode {
        status: 400,
        code: "InvalidSignatureException",
    },
    invalid_token: ErrorCode {
        status: 400,
        code: "UnrecognizedClientException",
    },
    expired: ErrorCode {
        status: 400,
        code: "ExpiredTokenException",
    },
};

/// Roles Anywhere control-plane (REST-JSON) codes: the common errors of
/// AWS's REST-JSON front end, all HTTP 403 (AWS's "Common Errors" pages give
/// `AccessDeniedException`/`ExpiredTokenException` 403).
pub(crate) const ROLESANYWHERE: SigV4Codes = SigV4Codes {
    service: "rolesanywhere",
    missing: ErrorCode {
        status: 403,
        code: "MissingAuthenticationTokenException",
    },
    incomplete: ErrorCode {
        status: 403,
        code: "IncompleteSignatureException",
    },
    mismatch: ErrorCode {
        status: 403,
        code: "InvalidSignatureException",
    },
    invalid_token: ErrorCode {
        status: 403,
        code: "UnrecognizedClientException",
    },
    expired: ErrorCode {
        status: 403,
        code: "ExpiredTokenException",
    },
};

fn err(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code.status, code.code, message)
}

/// Checks the request's SigV4 signature and returns the credentials it was
/// signed with.
pub(crate) fn verify(
    shared: &Shared,
    req: &RawRequest,
    codes: &SigV4Codes,
) -> Result<IssuedCredentials, ApiError> {
    let now = shared.now();
    let auth = read_authorization(req, codes)?;
    let amz_date = check_scope(shared, req, &auth, codes, now)?;
    let creds = credentials_for(shared, req, &auth, codes, now)?;
    check_signature(req, &auth, amz_date, &creds, codes)?;
    Ok(creds)
}

/// The one `Authorization` header, `AWS4-HMAC-SHA256` (no presigned URLs).
fn read_authorization(req: &RawRequest, codes: &SigV4Codes) -> Result<Authorization, ApiError> {
    if req.query.contains("X-Amz-Signature=") {
        return Err(err(
            codes.incomplete,
            "presigned (query-string) requests are not supported by this emulator",
        ));
    }
    let auth_value = match req.header_count("authorization") {
        0 => {
            return Err(err(
                codes.missing,
                "Request is missing Authentication Token",
            ));
        }
        1 => req.header("authorization").unwrap_or_default(),
        _ => return Err(err(codes.incomplete, "more than one Authorization header")),
    };
    let auth = Authorization::parse(auth_value)
        .map_err(|e| err(codes.incomplete, format!("Authorization header: {e}")))?;
    if auth.algorithm != "AWS4-HMAC-SHA256" {
        return Err(err(
            codes.incomplete,
            format!(
                "Unsupported AWS 'algorithm': {:?} (expected AWS4-HMAC-SHA256)",
                auth.algorithm
            ),
        ));
    }
    Ok(auth)
}

/// `X-Amz-Date` within [`MAX_SKEW`] of `now`; the credential scope's date,
/// region and service this endpoint's; `host` and `x-amz-date` signed.
/// Returns `X-Amz-Date`.
fn check_scope<'r>(
    shared: &Shared,
    req: &'r RawRequest,
    auth: &Authorization,
    codes: &SigV4Codes,
    now: time::OffsetDateTime,
) -> Result<&'r str, ApiError> {
    let amz_date = req.header("x-amz-date").ok_or_else(|| {
        err(
            codes.incomplete,
            "Authorization header requires existence of a valid X-Amz-Date header",
        )
    })?;
    let signed_at = sigv4::parse_amz_date(amz_date)
        .map_err(|e| err(codes.incomplete, format!("X-Amz-Date: {e}")))?;
    check_skew(signed_at, now).map_err(|m| err(codes.mismatch, m))?;
    // The credential scope: date, region, service.
    let scope_mismatch = if auth.date != amz_date[..8] {
        Some(format!(
            "Date in Credential scope ({}) does not match YYYYMMDD from X-Amz-Date ({})",
            auth.date,
            &amz_date[..8]
        ))
    } else if auth.region != shared.region {
        Some(format!(
            "Credential should be scoped to a valid region, not '{}' (this endpoint serves '{}')",
            auth.region, shared.region
        ))
    } else if auth.service != codes.service {
        Some(format!(
            "Credential should be scoped to correct service: '{}' (got '{}')",
            codes.service, auth.service
        ))
    } else {
        None
    };
    if let Some(message) = scope_mismatch {
        return Err(err(codes.mismatch, message));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(err(
                codes.mismatch,
                format!("'{required}' must be a 'SignedHeader' in the AWS Authorization"),
            ));
        }
    }
    Ok(amz_date)
}

/// The credentials of the request's access key: issued here, with their own
/// session token (signed), not expired.
fn credentials_for(
    shared: &Shared,
    req: &RawRequest,
    auth: &Authorization,
    codes: &SigV4Codes,
    now: time::OffsetDateTime,
) -> Result<IssuedCredentials, ApiError> {
    let creds = shared
        .registry()
        .credentials
        .get(&auth.credential_id)
        .cloned()
        .ok_or_else(|| {
            err(
                codes.invalid_token,
                format!(
                    "The security token included in the request is invalid (unknown access key {})",
                    auth.credential_id
                ),
            )
        })?;
    match req.header("x-amz-security-token") {
        None => {
            return Err(err(
                codes.invalid_token,
                "The security token included in the request is invalid (temporary credentials need X-Amz-Security-Token)",
            ));
        }
        Some(token) => {
            if !constant_time_eq(token.as_bytes(), creds.session_token.as_bytes()) {
                return Err(err(
                    codes.invalid_token,
                    "The security token included in the request is invalid (X-Amz-Security-Token does not belong to this access key)",
                ));
            }
            if !auth
                .signed_headers
                .iter()
                .any(|h| h == "x-amz-security-token")
            {
                return Err(err(
                    codes.mismatch,
                    "'x-amz-security-token' must be a 'SignedHeader' in the AWS Authorization",
                ));
            }
        }
    }
    if now >= creds.expiration {
        return Err(err(
            codes.expired,
            format!(
                "The security token included in the request is expired (expired at {})",
                crate::rfc3339(creds.expiration)
            ),
        ));
    }
    Ok(creds)
}

/// The signature over the request as received, by the credentials' secret key.
fn check_signature(
    req: &RawRequest,
    auth: &Authorization,
    amz_date: &str,
    creds: &IssuedCredentials,
    codes: &SigV4Codes,
) -> Result<(), ApiError> {
    let (_, to_sign) = string_to_sign(req, auth, amz_date).map_err(|e| err(codes.mismatch, e))?;
    let expected = sigv4::hmac_signature(
        &creds.secret_access_key,
        &auth.date,
        &auth.region,
        &auth.service,
        &to_sign,
    );
    if !constant_time_eq(
        expected.as_bytes(),
        auth.signature.to_ascii_lowercase().as_bytes(),
    ) {
        // The canonical request holds the session token: log only its shape.
        tracing::debug!(scope = %auth.scope(), signed_headers = %auth.signed_headers.join(";"), "SigV4 signature mismatch");
        return Err(err(
            codes.mismatch,
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(())
}

/// The canonical request over the request as received (its body hashed,
/// the headers `auth` names), and the string to sign from it.
pub(crate) fn string_to_sign(
    req: &RawRequest,
    auth: &Authorization,
    amz_date: &str,
) -> Result<(String, String), String> {
    let payload_hash = sigv4::sha256_hex(&req.body);
    let parts = RequestParts {
        method: &req.method,
        path: &req.path,
        query: &req.query,
        headers: &req.headers,
        payload_hash: &payload_hash,
    };
    let (canonical, _) =
        sigv4::canonical_request(&parts, &auth.signed_headers).map_err(|e| e.to_string())?;
    let to_sign = sigv4::string_to_sign(&auth.algorithm, amz_date, &auth.scope(), &canonical);
    Ok((canonical, to_sign))
}

/// Refuses a signing time more than [`MAX_SKEW`] away from `now`, with AWS's wording.
pub(crate) fn check_skew(
    signed_at: time::OffsetDateTime,
    now: time::OffsetDateTime,
) -> Result<(), String> {
    let fmt = sigv4::format_amz_date;
    if signed_at < now - MAX_SKEW {
        return Err(format!(
            "Signature expired: {} is now earlier than {} ({} - 5 min.)",
            fmt(signed_at),
            fmt(now - MAX_SKEW),
            fmt(now)
        ));
    }
    if signed_at > now + MAX_SKEW {
        return Err(format!(
            "Signature not yet current: {} is still later than {} ({} + 5 min.)",
            fmt(signed_at),
            fmt(now + MAX_SKEW),
            fmt(now)
        ));
    }
    Ok(())
}

/// Compares secrets without an early exit.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_window_is_five_minutes_either_way() {
        let now = time::OffsetDateTime::now_utc();
        assert!(check_skew(now - time::Duration::minutes(4), now).is_ok());
        assert!(check_skew(now + time::Duration::minutes(4), now).is_ok());
        let e = check_skew(now - time::Duration::minutes(6), now).unwrap_err();
        assert!(e.starts_with("Signature expired"), "{e}");
        let e = check_skew(now + time::Duration::minutes(6), now).unwrap_err();
        assert!(e.starts_with("Signature not yet current"), "{e}");
    }
}
