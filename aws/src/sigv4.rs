//! What every AWS call attache makes shares: SigV4 signing exactly as the AWS
//! SDKs sign (the `aws-sigv4` crate), and reading AWS's JSON error replies.

use std::time::SystemTime;

use zeroize::Zeroizing;

/// Static or temporary credentials to sign with. `Debug` shows the key id only.
#[derive(Clone)]
pub struct SigningCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: Zeroizing<String>,
    /// Session token, for temporary credentials.
    pub session_token: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for SigningCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl From<&crate::credentials::Credentials> for SigningCredentials {
    fn from(c: &crate::credentials::Credentials) -> Self {
        SigningCredentials {
            access_key_id: c.access_key_id.clone(),
            secret_access_key: c.secret_access_key.clone(),
            session_token: Some(c.session_token.clone()),
        }
    }
}

/// Signs a request with AWS Signature Version 4 (`AWS4-HMAC-SHA256`) and
/// returns every header to send: `headers` plus `authorization`,
/// `x-amz-date` and `x-amz-security-token`.
#[allow(clippy::too_many_arguments)]
pub fn sigv4_headers(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    region: &str,
    service: &str,
    creds: &SigningCredentials,
    at: SystemTime,
) -> Result<Vec<(String, String)>, String> {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = aws_credential_types::Credentials::new(
        creds.access_key_id.clone(),
        creds.secret_access_key.to_string(),
        creds.session_token.as_ref().map(|t| t.to_string()),
        None,
        "attache",
    )
    .into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(at)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(
        method,
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut req = req.body(()).map_err(|e| e.to_string())?;
    instructions.apply_to_request_http1x(&mut req);
    Ok(req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect())
}

/// AWS's error type and message from a JSON error reply: the type from the
/// `x-amzn-ErrorType` header (its part before `:`) or the body's `__type`
/// (its part after `#`), the message from `message`/`Message` (or the start of
/// the body). Neither ever holds a secret AWS was sent.
pub fn json_error(status: u16, error_type_header: Option<&str>, body: &[u8]) -> (String, String) {
    let parsed: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = parsed
        .get("message")
        .or_else(|| parsed.get("Message"))
        .and_then(|m| m.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
    let code = error_type_header
        .map(|v| v.split(':').next().unwrap_or(v).to_string())
        .or_else(|| {
            parsed
                .get("__type")
                .and_then(|t| t.as_str())
                .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())
        })
        .unwrap_or_else(|| format!("HTTP{status}"));
    (code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_are_read_from_header_or_body() {
        let body = br#"{"__type":"com.amazon#ThrottlingException","message":"slow down"}"#;
        assert_eq!(
            json_error(400, None, body),
            ("ThrottlingException".into(), "slow down".into())
        );
        assert_eq!(
            json_error(
                403,
                Some("AccessDeniedException:http://internal"),
                br#"{"message":"no"}"#
            ),
            ("AccessDeniedException".into(), "no".into())
        );
        assert_eq!(
            json_error(502, None, b"<html>bad gateway</html>"),
            ("HTTP502".into(), "<html>bad gateway</html>".into())
        );
    }

    #[test]
    fn signing_adds_the_sigv4_headers_and_debug_hides_secrets() {
        let creds = SigningCredentials {
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: Zeroizing::new("very-secret".into()),
            session_token: Some(Zeroizing::new("session-token".into())),
        };
        let h = sigv4_headers(
            "POST",
            "https://sts.us-east-1.amazonaws.com/",
            &[("content-type", "x")],
            b"",
            "us-east-1",
            "sts",
            &creds,
            SystemTime::now(),
        )
        .unwrap();
        let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert!(
            get("authorization")
                .unwrap()
                .starts_with("AWS4-HMAC-SHA256 Credential=ASIAEXAMPLE/")
        );
        assert_eq!(
            get("x-amz-security-token").as_deref(),
            Some("session-token")
        );
        assert!(get("x-amz-date").is_some());
        let d = format!("{creds:?}");
        assert!(
            !d.contains("very-secret") && !d.contains("session-token"),
            "{d}"
        );
    }
}
