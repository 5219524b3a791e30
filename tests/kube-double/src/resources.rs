//! The resource types the double serves, and decoding through `k8s-openapi` types.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::meta::NameRule;
use crate::status::{ApiError, ApiResult};

/// What the double knows about one resource type.
#[derive(Debug)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Plural resource name, as in URLs.
    pub resource: &'static str,
    /// Object kind.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether `status` is a subresource (main-resource writes keep the old status).
    pub status_subresource: bool,
    /// Name validation rule.
    pub name_rule: NameRule,
    /// Whether objects are stored (false: create-only virtual resources like TokenReview).
    pub stored: bool,
    /// Decodes into the `k8s-openapi` type and back: type errors are rejected, unknown
    /// fields are dropped (the real server prunes them too).
    normalize: fn(&Value) -> Result<Value, serde_json::Error>,
}

fn roundtrip<K: DeserializeOwned + Serialize>(v: &Value) -> Result<Value, serde_json::Error> {
    let k: K = serde_json::from_value(v.clone())?;
    serde_json::to_value(k)
}

macro_rules! rt {
    ($g:expr, $v:expr, $r:expr, $k:expr, $ns:expr, $st:expr, $rule:expr, $stored:expr, $ty:ty) => {
        ResourceType {
            group: $g,
            version: $v,
            resource: $r,
            kind: $k,
            namespaced: $ns,
            status_subresource: $st,
            name_rule: $rule,
            stored: $stored,
            normalize: roundtrip::<$ty>,
        }
    };
}

use k8s_openapi::api::{
    admissionregistration::v1 as admreg, authentication::v1 as authn, coordination::v1 as coord,
    core::v1 as core, events::v1 as events,
};

/// Every resource type the double serves.
pub static RESOURCES: &[ResourceType] = &[
    rt!(
        "",
        "v1",
        "namespaces",
        "Namespace",
        false,
        true,
        NameRule::Label,
        true,
        core::Namespace
    ),
    rt!(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        false,
        NameRule::Subdomain,
        true,
        core::ServiceAccount
    ),
    rt!(
        "",
        "v1",
        "secrets",
        "Secret",
        true,
        false,
        NameRule::Subdomain,
        true,
        core::Secret
    ),
    rt!(
        "",
        "v1",
        "configmaps",
        "ConfigMap",
        true,
        false,
        NameRule::Subdomain,
        true,
        core::ConfigMap
    ),
    rt!(
        "",
        "v1",
        "pods",
        "Pod",
        true,
        true,
        NameRule::Subdomain,
        true,
        core::Pod
    ),
    rt!(
        "",
        "v1",
        "events",
        "Event",
        true,
        false,
        NameRule::Subdomain,
        true,
        core::Event
    ),
    rt!(
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        true,
        false,
        NameRule::Subdomain,
        true,
        events::Event
    ),
    rt!(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        false,
        NameRule::Subdomain,
        true,
        coord::Lease
    ),
    rt!(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
        false,
        NameRule::Subdomain,
        true,
        admreg::MutatingWebhookConfiguration
    ),
    rt!(
        "authentication.k8s.io",
        "v1",
        "tokenreviews",
        "TokenReview",
        false,
        false,
        NameRule::Subdomain,
        false,
        authn::TokenReview
    ),
];

impl ResourceType {
    /// `group/version` or `version` for core.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Looks up by URL parts.
    pub fn find(group: &str, version: &str, resource: &str) -> Option<&'static ResourceType> {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.resource == resource)
    }

    /// Looks up by `apiVersion` and `kind`.
    pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceType> {
        RESOURCES
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
    }

    /// Index in [`RESOURCES`] (stable identity for the store).
    pub fn index(&'static self) -> usize {
        RESOURCES
            .iter()
            .position(|r| std::ptr::eq(r, self))
            .unwrap_or(usize::MAX)
    }

    /// Checks `apiVersion`/`kind` of a body (filling them in when absent) and decodes it
    /// through the typed model, as the API server's decoder does.
    pub fn decode(&self, mut body: Value) -> ApiResult<Value> {
        if !body.is_object() {
            return Err(ApiError::bad_request(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml; expected a {} object",
                self.kind
            )));
        }
        let av = self.api_version();
        match body.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => body["apiVersion"] = Value::String(av.clone()),
            Some(v) if v == av => {}
            Some(v) => {
                return Err(ApiError::bad_request(format!(
                    "the API version in the data ({v}) does not match the expected API version ({av})"
                )));
            }
        }
        match body.get("kind").and_then(Value::as_str) {
            None | Some("") => body["kind"] = Value::String(self.kind.into()),
            Some(k) if k == self.kind => {}
            Some(k) => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    self.kind
                )));
            }
        }
        let mut out = (self.normalize)(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: {e}",
                self.kind, self.version, self.kind
            ))
        })?;
        // k8s-openapi always writes `metadata`; the API server omits nothing here either.
        if out.get("metadata").is_none() {
            out["metadata"] = serde_json::json!({});
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_fills_type_and_rejects_wrong_types() {
        let rt = ResourceType::find("", "v1", "configmaps").unwrap_or(&RESOURCES[0]);
        let v = rt
            .decode(serde_json::json!({"metadata": {"name": "a"}, "data": {"k": "v"}, "bogus": 1}))
            .unwrap_or_default();
        assert_eq!(v["kind"], "ConfigMap");
        assert!(v.get("bogus").is_none());
        let bad = rt.decode(serde_json::json!({"metadata": {"name": "a"}, "data": {"k": 1}}));
        assert_eq!(bad.err().map(|e| e.code), Some(400));
    }
}
