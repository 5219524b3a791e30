//! The broker's certificate API, `POST /v1/certificates`, as both sides see
//! it: the sidecar sends a [`CertificateRequest`] with its ServiceAccount
//! token as `Authorization: Bearer`, and gets a [`CertificateReply`] or an
//! [`ErrorReply`].

use serde::{Deserialize, Serialize};

/// The path of the certificate API.
pub const PATH: &str = "/v1/certificates";

/// The request body.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertificateRequest {
    /// A PKCS#10 certificate signing request, PEM.
    pub csr: String,
}

/// The reply to a granted request.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateReply {
    /// The workload certificate, PEM.
    pub certificate: String,
    /// Intermediates, PEM (empty: the CA is the trust anchor).
    #[serde(default)]
    pub chain: Vec<String>,
    /// When the certificate expires (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// The reply to a refused request (any non-2xx status).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ErrorReply {
    /// A stable code: `unauthenticated`, `forbidden`, `bad_request`, `bad_csr`, ...
    #[serde(default)]
    pub error: Option<String>,
    /// What was wrong, for people.
    #[serde(default)]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_names_are_the_documented_ones() {
        let reply = CertificateReply {
            certificate: "C".into(),
            chain: vec![],
            not_after: Some("2026-01-01T00:00:00Z".into()),
        };
        let v = serde_json::to_value(&reply).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"certificate": "C", "chain": [], "notAfter": "2026-01-01T00:00:00Z"})
        );
        let old: CertificateReply = serde_json::from_str(r#"{"certificate":"C"}"#).unwrap();
        assert!(old.chain.is_empty() && old.not_after.is_none());
        let req: CertificateRequest = serde_json::from_str(r#"{"csr":"P"}"#).unwrap();
        assert_eq!(req.csr, "P");
    }
}
