//! The request as received on the wire, AWS error values, and how each
//! service renders them (JSON for Roles Anywhere and ECR, XML for STS).

use http::{HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;

use crate::state::request_id;

/// The response body type the emulator produces.
pub(crate) type Body = Full<Bytes>;

/// A request exactly as received: the raw path and query, every header in
/// order, and the body bytes. Signatures are checked against this, never
/// against what a client says about its request.
pub(crate) struct RawRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// Shows the method, path and header names only: header values and bodies
/// carry session tokens and signatures.
impl std::fmt::Debug for RawRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RawRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

impl RawRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }

    /// How many times a header occurs.
    pub fn header_count(&self, name: &str) -> usize {
        self.values(name).count()
    }

    /// Every value of a header, in order, by case-insensitive name.
    fn values<'a, 'n>(&'a self, name: &'n str) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An AWS error: HTTP status, error code (`x-amzn-ErrorType` / `<Code>`) and a
/// message that names the check that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} (HTTP {status}): {message}")]
pub(crate) struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// HTTP 403 `AccessDeniedException`.
    pub fn access_denied(message: impl Into<String>) -> Self {
        Self::new(403, "AccessDeniedException", message)
    }

    /// HTTP 400 `ValidationException`.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "ValidationException", message)
    }
}

/// Which service's wire format an answer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Service {
    RolesAnywhere,
    Sts,
    Ecr,
    /// Not routed to any service: plain JSON.
    Unknown,
}

impl Service {
    /// The error code AWS uses when it throttles this service, with its status.
    pub fn throttling(self) -> ApiError {
        match self {
            // STS (query protocol) throttles with HTTP 400 and code Throttling.
            Service::Sts => ApiError::new(400, "Throttling", "Rate exceeded"),
            // Roles Anywhere and ECR: HTTP 429 ThrottlingException.
            _ => ApiError::new(429, "ThrottlingException", "Rate exceeded"),
        }
    }

    /// The error an injected 5xx produces.
    pub fn internal(self, status: u16) -> ApiError {
        let unavailable = status == 503;
        let code = match (self, unavailable) {
            (Service::Sts, true) => "ServiceUnavailable",
            (Service::Sts, false) => "InternalFailure",
            (Service::Ecr, true) => "ServiceUnavailableException",
            (Service::Ecr, false) => "ServerException",
            (_, true) => "ServiceUnavailableException",
            (_, false) => "InternalServerException",
        };
        let message = if unavailable {
            "Service is unavailable (injected fault)"
        } else {
            "An internal error occurred (injected fault)"
        };
        ApiError::new(status, code, message)
    }

    /// Renders an error the way this service sends it.
    pub fn error_response(self, err: &ApiError) -> Response<Body> {
        let rid = request_id();
        let (content_type, body) = match self {
            Service::Sts => {
                let kind = if err.status >= 500 {
                    "Receiver"
                } else {
                    "Sender"
                };
                (
                    "text/xml",
                    format!(
                        "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <Error>\n    <Type>{kind}</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{rid}</RequestId>\n</ErrorResponse>\n",
                        xml_escape(err.code),
                        xml_escape(&err.message)
                    ),
                )
            }
            Service::Ecr => (
                "application/x-amz-json-1.1",
                serde_json::json!({"__type": err.code, "message": err.message}).to_string(),
            ),
            Service::RolesAnywhere | Service::Unknown => (
                "application/json",
                serde_json::json!({"message": err.message}).to_string(),
            ),
        };
        let mut resp = response(err.status, content_type, body, &rid);
        if self != Service::Sts
            && let Ok(v) = HeaderValue::from_str(err.code)
        {
            resp.headers_mut().insert("x-amzn-ErrorType", v);
        }
        resp
    }
}

/// A response with a status, content type, body and request id.
pub(crate) fn response(
    status: u16,
    content_type: &str,
    body: String,
    request_id: &str,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut().insert("x-amzn-RequestId", v);
    }
    resp
}

/// Escapes text for an XML element (quotes stay as they are, as AWS sends them).
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c => out.push(c),
        }
    }
    out
}

/// Decodes `application/x-www-form-urlencoded` text into pairs.
pub(crate) fn parse_form(text: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(b[i + 1]), hex(b[i + 2])) {
                        (Some(hi), Some(lo)) => {
                            out.push((hi * 16 + lo) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_plus_and_percent() {
        assert_eq!(
            parse_form("Action=GetCallerIdentity&Version=2011-06-15&x=a+b%2Fc&bad=%zz&end=%4"),
            vec![
                ("Action".into(), "GetCallerIdentity".into()),
                ("Version".into(), "2011-06-15".into()),
                ("x".into(), "a b/c".into()),
                ("bad".into(), "%zz".into()),
                ("end".into(), "%4".into()),
            ]
        );
    }

    #[test]
    fn sts_errors_are_xml_and_json_errors_carry_the_type_header() {
        let err = ApiError::new(403, "InvalidClientTokenId", "bad <token>");
        let r = Service::Sts.error_response(&err);
        assert_eq!(r.status(), 403);
        assert!(r.headers().get("x-amzn-ErrorType").is_none());
        let r = Service::Ecr.error_response(&err);
        assert_eq!(r.headers()["x-amzn-ErrorType"], "InvalidClientTokenId");
        assert_eq!(xml_escape("a<b&'\">"), "a&lt;b&amp;'\"&gt;");
    }
}
