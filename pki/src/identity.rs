//! Workload identities: the Kubernetes names a certificate carries, and their validation.

use std::fmt;

/// Why a name cannot be part of a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// A namespace that is not a DNS-1123 label.
    #[error(
        "invalid namespace {0:?}: must be a DNS-1123 label (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
    )]
    Namespace(String),
    /// A ServiceAccount name that is not a DNS-1123 subdomain.
    #[error(
        "invalid service account name {0:?}: must be a DNS-1123 subdomain (1-253 lowercase letters, digits, '-' or '.', each label starting and ending with a letter or digit)"
    )]
    ServiceAccount(String),
    /// A trust domain that is not a DNS name.
    #[error("invalid trust domain {0:?}: must be a lowercase DNS name such as cluster.example.com")]
    TrustDomain(String),
    /// A SPIFFE URI that does not have the `/ns/<ns>/sa/<sa>` shape.
    #[error("not an attache workload SPIFFE ID: {0:?}")]
    SpiffeId(String),
}

/// The pod identity one workload certificate names: exactly one ServiceAccount
/// in one namespace of one cluster (trust domain).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadIdentity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl WorkloadIdentity {
    /// Builds an identity after checking every name the way Kubernetes does.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        if !is_dns_subdomain(trust_domain) {
            return Err(IdentityError::TrustDomain(trust_domain.to_string()));
        }
        if !is_dns_label(namespace) {
            return Err(IdentityError::Namespace(namespace.to_string()));
        }
        if !is_dns_subdomain(service_account) {
            return Err(IdentityError::ServiceAccount(service_account.to_string()));
        }
        Ok(WorkloadIdentity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`.
    pub fn from_spiffe_uri(uri: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::SpiffeId(uri.to_string());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa),
            _ => Err(bad()),
        }
    }

    /// The cluster's trust domain (the certificate subject's `O`).
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The pod's namespace (the certificate subject's `OU`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The pod's ServiceAccount (the certificate subject's `CN`).
    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The URI SAN that IAM trust policies pin through `aws:PrincipalTag/x509SAN/URI`.
    pub fn spiffe_uri(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl fmt::Display for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spiffe_uri())
    }
}

/// RFC 1123 label as Kubernetes validates it (`IsDNS1123Label`).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain as Kubernetes validates it (`IsDNS1123Subdomain`).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_uri_names_namespace_and_service_account() {
        let id = WorkloadIdentity::new("cluster.local", "payments", "api").unwrap();
        assert_eq!(id.spiffe_uri(), "spiffe://cluster.local/ns/payments/sa/api");
        assert_eq!(
            WorkloadIdentity::from_spiffe_uri(&id.spiffe_uri()).unwrap(),
            id
        );
    }

    #[test]
    fn kubernetes_name_rules_are_enforced() {
        assert!(WorkloadIdentity::new("td", "ns", "sa.with.dots").is_ok());
        for (td, ns, sa, what) in [
            ("td", "Payments", "api", "namespace"),
            ("td", "-ns", "api", "namespace"),
            ("td", "a.b", "api", "namespace"),
            ("td", &"n".repeat(64), "api", "namespace"),
            ("td", "ns", "API", "service account"),
            ("td", "ns", "", "service account"),
            ("td", "ns", "a/b", "service account"),
            ("TD", "ns", "sa", "trust domain"),
            ("td/x", "ns", "sa", "trust domain"),
            ("", "ns", "sa", "trust domain"),
        ] {
            let err = WorkloadIdentity::new(td, ns, sa).unwrap_err().to_string();
            assert!(err.contains(what), "{td}/{ns}/{sa}: {err}");
        }
    }

    #[test]
    fn malformed_spiffe_ids_are_refused() {
        for uri in [
            "https://td/ns/a/sa/b",
            "spiffe://td/ns/a",
            "spiffe://td/ns/a/sa/b/extra",
            "spiffe://td/sa/b/ns/a",
        ] {
            assert!(WorkloadIdentity::from_spiffe_uri(uri).is_err(), "{uri}");
        }
    }
}
