//! Authentication: the double's bearer tokens, ServiceAccount JWTs (TokenRequest) and
//! TokenReview, with the real server's claims and answers.

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair,
    UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};

use crate::meta::{format_time, meta_str};
use crate::resources::ResourceType;
use crate::status::{ApiError, ApiResult, Cause, Target};
use crate::store::{ObjKey, Store};

/// The issuer and default audience of the double's ServiceAccount tokens, as on a
/// default cluster.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// An authenticated user, as in `userInfo` / `TokenReview.status.user`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserInfo {
    /// `username`.
    pub username: String,
    /// `uid` (the ServiceAccount's uid for SA tokens).
    pub uid: String,
    /// `groups`.
    pub groups: Vec<String>,
    /// `extra`.
    pub extra: serde_json::Map<String, Value>,
}

impl UserInfo {
    /// The admin user the double's kubeconfig authenticates as.
    pub fn admin() -> UserInfo {
        UserInfo {
            username: "kubernetes-admin".into(),
            uid: String::new(),
            groups: vec![
                "kubeadm:cluster-admins".into(),
                "system:authenticated".into(),
            ],
            extra: Default::default(),
        }
    }

    /// JSON as in `userInfo`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"username": self.username, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = Value::Object(self.extra.clone());
        }
        v
    }
}

/// The token signer and verifier.
pub struct Authority {
    key: EcdsaKeyPair,
    kid: String,
    /// Static bearer token of the admin user.
    pub admin_token: String,
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn lookup<'a>(store: &'a Store, resource: &str, ns: &str, name: &str) -> Option<&'a Value> {
    let rt = ResourceType::find("", "v1", resource)?;
    store.get(&ObjKey::new(rt, ns, name))
}

impl Authority {
    /// A fresh ES256 signing key and admin token.
    pub fn new() -> anyhow::Result<Authority> {
        let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| anyhow::anyhow!("generating the token signing key failed"))?;
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.public_key().as_ref());
        let kid = B64URL.encode(&digest.as_ref()[..16]);
        let mut raw = [0u8; 24];
        crate::meta::fill_random(&mut raw);
        Ok(Authority {
            key,
            kid,
            admin_token: format!("admin-{}", hex::encode(raw)),
        })
    }

    /// Signs `claims` as a compact JWS (ES256).
    pub fn sign(&self, claims: &Value) -> ApiResult<String> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self
            .key
            .sign(&rng, input.as_bytes())
            .map_err(|_| ApiError::internal("signing the token failed"))?;
        Ok(format!("{input}.{}", B64URL.encode(sig.as_ref())))
    }

    /// Verifies signature, issuer and time window; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Value, String> {
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err("square/go-jose: compact JWS format must have three parts".into());
        }
        let header: Value = B64URL
            .decode(parts[0])
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("square/go-jose: error in cryptographic primitive")?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err("square/go-jose: error in cryptographic primitive".into());
        }
        let sig = B64URL
            .decode(parts[2])
            .map_err(|_| "square/go-jose: error in cryptographic primitive")?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.key.public_key().as_ref())
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .map_err(|_| "square/go-jose: error in cryptographic primitive".to_string())?;
        let claims: Value = B64URL
            .decode(parts[1])
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("square/go-jose: error in cryptographic primitive")?;
        if claims.get("iss").and_then(Value::as_str) != Some(API_AUDIENCE) {
            return Err("token issuer is not trusted".into());
        }
        let t = now();
        if claims
            .get("exp")
            .and_then(Value::as_i64)
            .is_none_or(|exp| t >= exp)
        {
            return Err("service account token has expired".into());
        }
        if claims
            .get("nbf")
            .and_then(Value::as_i64)
            .is_some_and(|nbf| t < nbf)
        {
            return Err("service account token is not valid yet".into());
        }
        Ok(claims)
    }

    /// Authenticates `token` for `audiences`, checking that the ServiceAccount and bound
    /// objects still exist with the uids in the token. Returns the user and the
    /// intersection of audiences.
    pub fn authenticate(
        &self,
        store: &Store,
        token: &str,
        audiences: &[String],
    ) -> Result<(UserInfo, Vec<String>), String> {
        if token == self.admin_token {
            return if audiences.iter().any(|a| a == API_AUDIENCE) {
                Ok((UserInfo::admin(), vec![API_AUDIENCE.into()]))
            } else {
                Err("token not valid for the requested audiences".into())
            };
        }
        let claims = self.verify(token)?;
        let token_aud: Vec<String> = match claims.get("aud") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => vec![],
        };
        let both: Vec<String> = audiences
            .iter()
            .filter(|a| token_aud.contains(a))
            .cloned()
            .collect();
        if both.is_empty() {
            return Err(format!(
                "token audiences {token_aud:?} is invalid for the target audiences {audiences:?}"
            ));
        }
        let k = claims.get("kubernetes.io").cloned().unwrap_or(json!({}));
        let s = |p: &str| {
            k.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let (ns, sa, sa_uid) = (
            s("/namespace"),
            s("/serviceaccount/name"),
            s("/serviceaccount/uid"),
        );
        match lookup(store, "serviceaccounts", &ns, &sa) {
            None => return Err(format!("service account {ns}/{sa} has been deleted")),
            Some(obj) if meta_str(obj, "uid") != sa_uid => {
                return Err(format!(
                    "service account UID ({}) does not match claim ({sa_uid})",
                    meta_str(obj, "uid")
                ));
            }
            _ => {}
        }
        let mut extra = serde_json::Map::new();
        for (kind, resource) in [("pod", "pods"), ("secret", "secrets")] {
            if k.get(kind).is_none() {
                continue;
            }
            let (name, uid) = (s(&format!("/{kind}/name")), s(&format!("/{kind}/uid")));
            match lookup(store, resource, &ns, &name) {
                None => return Err(format!("{kind} {ns}/{name} has been deleted")),
                Some(obj) if meta_str(obj, "uid") != uid => {
                    return Err(format!(
                        "{kind} UID ({}) does not match claim ({uid})",
                        meta_str(obj, "uid")
                    ));
                }
                _ => {}
            }
            if kind == "pod" {
                extra.insert(
                    "authentication.kubernetes.io/pod-name".into(),
                    json!([name]),
                );
                extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([uid]));
            }
        }
        if let Some(jti) = claims.get("jti").and_then(Value::as_str) {
            extra.insert(
                "authentication.kubernetes.io/credential-id".into(),
                json!([format!("JTI={jti}")]),
            );
        }
        let user = UserInfo {
            username: format!("system:serviceaccount:{ns}:{sa}"),
            uid: sa_uid,
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
            extra,
        };
        Ok((user, both))
    }

    /// `POST .../serviceaccounts/{name}/token`: issues a token like the real TokenRequest.
    pub fn token_request(
        &self,
        store: &Store,
        ns: &str,
        sa_name: &str,
        body: Value,
    ) -> ApiResult<Value> {
        let target = Target {
            group: "",
            resource: "serviceaccounts",
            name: sa_name,
        };
        let sa = lookup(store, "serviceaccounts", ns, sa_name)
            .ok_or_else(|| ApiError::not_found(&target))?;
        let tr: k8s_openapi::api::authentication::v1::TokenRequest = serde_json::from_value(body)
            .map_err(|e| {
            ApiError::bad_request(format!(
                "TokenRequest in version \"v1\" cannot be handled as a TokenRequest: {e}"
            ))
        })?;
        let spec_in = tr.spec.unwrap_or_default();
        let exp_secs = spec_in.expiration_seconds.unwrap_or(3600);
        let invalid =
            |c: Cause| ApiError::invalid("TokenRequest", "authentication.k8s.io", sa_name, vec![c]);
        if exp_secs < 600 {
            return Err(invalid(Cause::invalid(
                "spec.expirationSeconds",
                &json!(exp_secs),
                "may not specify a duration less than 10 minutes",
            )));
        }
        if exp_secs > 1 << 32 {
            return Err(invalid(Cause::invalid(
                "spec.expirationSeconds",
                &json!(exp_secs),
                "may not specify a duration larger than 2^32 seconds",
            )));
        }
        let audiences = match spec_in.audiences.clone() {
            Some(a) if !a.is_empty() => a,
            _ => vec![API_AUDIENCE.to_string()],
        };
        let mut kube = json!({
            "namespace": ns,
            "serviceaccount": {"name": sa_name, "uid": meta_str(sa, "uid")},
        });
        if let Some(r) = &spec_in.bound_object_ref {
            let name = r.name.clone().unwrap_or_default();
            let (kind, resource) = match r.kind.as_deref().unwrap_or_default() {
                "Pod" => ("pod", "pods"),
                "Secret" => ("secret", "secrets"),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "cannot bind token for serviceaccount {sa_name:?} to object of type {other:?}"
                    )));
                }
            };
            let obj = lookup(store, resource, ns, &name).ok_or_else(|| {
                ApiError::not_found(&Target {
                    group: "",
                    resource,
                    name: &name,
                })
            })?;
            let uid = meta_str(obj, "uid");
            if let Some(want) = r.uid.as_deref().filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::conflict(
                    &Target {
                        group: "",
                        resource,
                        name: &name,
                    },
                    &format!(
                        "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                    ),
                ));
            }
            if kind == "pod"
                && obj
                    .pointer("/spec/serviceAccountName")
                    .and_then(Value::as_str)
                    != Some(sa_name)
            {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount {sa_name:?} to pod running with different serviceaccount name."
                )));
            }
            kube[kind] = json!({"name": name, "uid": uid});
        }
        let iat = now();
        let exp = iat + exp_secs;
        let claims = json!({
            "aud": audiences, "exp": exp, "iat": iat, "nbf": iat, "iss": API_AUDIENCE,
            "jti": crate::meta::new_uid(),
            "sub": format!("system:serviceaccount:{ns}:{sa_name}"),
            "kubernetes.io": kube,
        });
        let token = self.sign(&claims)?;
        let exp_ts = time::OffsetDateTime::from_unix_timestamp(exp)
            .map(format_time)
            .unwrap_or_default();
        let mut spec = json!({"audiences": audiences, "expirationSeconds": exp_secs});
        if let Some(r) = &spec_in.bound_object_ref {
            spec["boundObjectRef"] = serde_json::to_value(r).unwrap_or(Value::Null);
        }
        Ok(json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": Value::Null},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": exp_ts},
        }))
    }

    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`.
    pub fn token_review(&self, store: &Store, body: Value) -> ApiResult<Value> {
        let rt = ResourceType::find("authentication.k8s.io", "v1", "tokenreviews")
            .ok_or_else(ApiError::no_route)?;
        let review = rt.decode(body)?;
        let token = review
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if token.is_empty() {
            return Err(ApiError::invalid(
                "TokenReview",
                "authentication.k8s.io",
                "",
                vec![Cause::required("spec.token", "")],
            ));
        }
        let requested: Vec<String> = review
            .pointer("/spec/audiences")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .filter(|v: &Vec<String>| !v.is_empty())
            .unwrap_or_else(|| vec![API_AUDIENCE.to_string()]);
        let status = match self.authenticate(store, token, &requested) {
            Ok((user, audiences)) => {
                json!({"authenticated": true, "user": user.to_json(), "audiences": audiences})
            }
            Err(e) => json!({"user": {}, "error": format!("[invalid bearer token, {e}]")}),
        };
        let mut out = review;
        out["metadata"] = json!({"creationTimestamp": Value::Null});
        out["status"] = status;
        Ok(out)
    }

    /// The OIDC discovery document for `base_url`.
    pub fn openid_configuration(&self, base_url: &str) -> Value {
        json!({
            "issuer": API_AUDIENCE,
            "jwks_uri": format!("{base_url}/openid/v1/jwks"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// The JWKS with the signing key.
    pub fn jwks(&self) -> Value {
        let pk = self.key.public_key().as_ref();
        let (x, y) = if pk.len() == 65 {
            (&pk[1..33], &pk[33..65])
        } else {
            (&pk[..0], &pk[..0])
        };
        json!({"keys": [{"use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
                          "x": B64URL.encode(x), "y": B64URL.encode(y)}]})
    }
}
