//! IAM Roles Anywhere `CreateSession`: every check AWS makes on an
//! `AWS4-X509-*` signed request, then fresh temporary credentials.

use std::collections::HashMap;

use attache_pki::signing::{ALGORITHM_ECDSA, ALGORITHM_RSA, SERVICE_ROLESANYWHERE};
use attache_pki::sigv4::{self, Authorization};
use attache_pki::{CertificateInfo, KeyType, verify_chain};
use aws_lc_rs::signature;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::Response;
use serde::Deserialize;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::policy::{self, PrincipalTags};
use crate::sigv4_verify::check_skew;
use crate::state::{
    IssuedCredentials, Registry, SECRET_ALPHABET, SessionRecord, Shared, UPPER_ALNUM, random_string,
};
use crate::wire::{ApiError, Body, RawRequest, response};

/// Shortest session AWS allows, in seconds.
pub const MIN_DURATION: i64 = 900;
/// Longest session AWS allows, in seconds.
pub const MAX_DURATION: i64 = 43200;
/// Duration when the request names none.
pub const DEFAULT_DURATION: i64 = 3600;
/// Intermediates accepted in `X-Amz-X509-Chain`.
const MAX_CHAIN: usize = 5;

/// The JSON body of `CreateSession`. AWS takes `profileArn`, `roleArn` and
/// `trustAnchorArn` "as URI parameters or as JSON in the request body" (the
/// CreateSession API page); AWS's own `aws_signing_helper` sends them in the
/// query string, attache in the body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateSessionBody {
    duration_seconds: Option<i64>,
    profile_arn: Option<String>,
    role_arn: Option<String>,
    trust_anchor_arn: Option<String>,
    role_session_name: Option<String>,
}

/// The request's three ARNs, each from the query string or the body.
#[derive(Debug)]
struct SessionTarget {
    profile_arn: String,
    role_arn: String,
    trust_anchor_arn: String,
}

/// Takes each required ARN from the query string or the body. A parameter
/// given in both places with different values is refused rather than guessed.
fn session_target(query: &str, body: &CreateSessionBody) -> Result<SessionTarget, ApiError> {
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode = |s: &str| String::from_utf8_lossy(&sigv4::percent_decode(s)).into_owned();
            (decode(k), decode(v))
        })
        .collect();
    let pick = |name: &str, in_body: &Option<String>| -> Result<String, ApiError> {
        let mut in_query = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v);
        let first = in_query.next();
        if in_query.next().is_some() {
            return Err(ApiError::validation(format!(
                "Parameter {name} is given more than once in the query string"
            )));
        }
        match (first, in_body) {
            (Some(q), Some(b)) if q != b => Err(ApiError::validation(format!(
                "Parameter {name} differs between the query string ({q}) and the request body ({b})"
            ))),
            (Some(v), _) | (None, Some(v)) if !v.is_empty() => Ok(v.clone()),
            _ => Err(ApiError::validation(format!(
                "Invalid request body: missing required parameter {name} (URI parameter or JSON body field)"
            ))),
        }
    };
    Ok(SessionTarget {
        profile_arn: pick("profileArn", &body.profile_arn)?,
        role_arn: pick("roleArn", &body.role_arn)?,
        trust_anchor_arn: pick("trustAnchorArn", &body.trust_anchor_arn)?,
    })
}

fn denied(msg: impl Into<String>) -> ApiError {
    ApiError::access_denied(msg)
}

/// Serves `POST /sessions`: the checks in AWS's order (signature envelope,
/// certificates, signature, body, trust anchor and path, profile and role),
/// then fresh credentials.
pub(crate) fn create_session(
    shared: &Shared,
    req: &RawRequest,
) -> Result<Response<Body>, ApiError> {
    let now = shared.now();
    let envelope = check_envelope(shared, req, now)?;
    let presented = read_certificates(req, &envelope.auth)?;
    let (_, parsed_leaf) = X509Certificate::from_der(&presented.leaf_der)
        .map_err(|e| denied(format!("X-Amz-X509: {e}")))?;
    verify_signature(req, &envelope, &presented, &parsed_leaf)?;
    let body: CreateSessionBody = serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::validation(format!("Invalid request body: {e}")))?;
    let target = session_target(&req.query, &body)?;
    let grant = {
        let registry = shared.registry();
        check_anchor(&registry, &target, &presented, &parsed_leaf, now)?;
        authorize(&registry, &target, &body, &presented.leaf, &parsed_leaf)?
    };
    Ok(issue(shared, now, &target, &presented.leaf, grant))
}

/// The signed parts of a request's envelope, checked.
struct Envelope<'a> {
    auth: Authorization,
    amz_date: &'a str,
}

/// The `Authorization` header: an X.509 algorithm, a fresh date, this
/// endpoint's region and service, and the headers AWS requires signed.
fn check_envelope<'a>(
    shared: &Shared,
    req: &'a RawRequest,
    now: time::OffsetDateTime,
) -> Result<Envelope<'a>, ApiError> {
    let auth_value = req
        .header("authorization")
        .ok_or_else(|| denied("Missing Authorization header"))?;
    let auth = Authorization::parse(auth_value).map_err(|e| denied(e.to_string()))?;
    if auth.algorithm != ALGORITHM_ECDSA && auth.algorithm != ALGORITHM_RSA {
        return Err(denied(format!(
            "Unsupported signing algorithm {:?}: expected {ALGORITHM_ECDSA} or {ALGORITHM_RSA}",
            auth.algorithm
        )));
    }
    let amz_date = req
        .header("x-amz-date")
        .ok_or_else(|| denied("Missing X-Amz-Date header"))?;
    let signed_at = sigv4::parse_amz_date(amz_date).map_err(|e| denied(e.to_string()))?;
    check_skew(signed_at, now).map_err(|m| denied(format!("X-Amz-Date is stale: {m}")))?;
    if auth.date != amz_date[..8] {
        return Err(denied(format!(
            "Credential scope date {} does not match the X-Amz-Date date {}",
            auth.date,
            &amz_date[..8]
        )));
    }
    if auth.region != shared.region {
        return Err(denied(format!(
            "Credential scope region '{}' does not match this endpoint's region '{}'",
            auth.region, shared.region
        )));
    }
    if auth.service != SERVICE_ROLESANYWHERE {
        return Err(denied(format!(
            "Credential scope service '{}' is not '{SERVICE_ROLESANYWHERE}'",
            auth.service
        )));
    }
    let mut required = vec!["content-type", "host", "x-amz-date", "x-amz-x509"];
    if req.header("x-amz-x509-chain").is_some() {
        required.push("x-amz-x509-chain");
    }
    for name in required {
        if !auth.signed_headers.iter().any(|h| h == name) {
            return Err(denied(format!(
                "SignedHeaders must include '{name}' (signed: {})",
                auth.signed_headers.join(";")
            )));
        }
    }
    Ok(Envelope { auth, amz_date })
}

/// The certificates a request presents.
struct Presented {
    leaf_der: Vec<u8>,
    leaf: CertificateInfo,
    /// `X-Amz-X509-Chain`, DER, in order.
    chain: Vec<Vec<u8>>,
}

/// Decodes `X-Amz-X509` and `X-Amz-X509-Chain`; the credential's serial
/// must be the leaf's.
fn read_certificates(req: &RawRequest, auth: &Authorization) -> Result<Presented, ApiError> {
    let leaf_b64 = req
        .header("x-amz-x509")
        .ok_or_else(|| denied("Missing X-Amz-X509 header"))?;
    let leaf_der = B64
        .decode(leaf_b64.trim())
        .map_err(|e| denied(format!("X-Amz-X509 is not base64: {e}")))?;
    let leaf = CertificateInfo::from_der(&leaf_der)
        .map_err(|e| denied(format!("X-Amz-X509 is not a usable certificate: {e}")))?;
    let mut chain = Vec::new();
    if let Some(text) = req.header("x-amz-x509-chain") {
        for (i, part) in text.split(',').enumerate() {
            if i >= MAX_CHAIN {
                return Err(denied(format!(
                    "X-Amz-X509-Chain holds more than {MAX_CHAIN} certificates"
                )));
            }
            let der = B64
                .decode(part.trim())
                .map_err(|e| denied(format!("X-Amz-X509-Chain entry {i} is not base64: {e}")))?;
            CertificateInfo::from_der(&der).map_err(|e| {
                denied(format!(
                    "X-Amz-X509-Chain entry {i} is not a certificate: {e}"
                ))
            })?;
            chain.push(der);
        }
    }
    if auth.credential_id != leaf.serial {
        return Err(denied(format!(
            "Credential serial number {} does not match the X-Amz-X509 certificate's serial {}",
            auth.credential_id, leaf.serial
        )));
    }
    Ok(Presented {
        leaf_der,
        leaf,
        chain,
    })
}

/// The request's signature, over the request as received, by the leaf's key
/// with the algorithm its key type calls for.
fn verify_signature(
    req: &RawRequest,
    envelope: &Envelope<'_>,
    presented: &Presented,
    parsed_leaf: &X509Certificate<'_>,
) -> Result<(), ApiError> {
    let auth = &envelope.auth;
    let verify_alg: &'static dyn signature::VerificationAlgorithm =
        match (auth.algorithm.as_str(), presented.leaf.key_type) {
            (ALGORITHM_ECDSA, KeyType::EcdsaP256) => &signature::ECDSA_P256_SHA256_ASN1,
            (ALGORITHM_ECDSA, KeyType::EcdsaP384) => &signature::ECDSA_P384_SHA256_ASN1,
            (ALGORITHM_RSA, k) if k.is_rsa() => &signature::RSA_PKCS1_2048_8192_SHA256,
            (alg, k) => {
                return Err(denied(format!(
                    "Signing algorithm {alg} does not match the certificate's {k} key"
                )));
            }
        };
    let (canonical, to_sign) =
        crate::sigv4_verify::string_to_sign(req, auth, envelope.amz_date).map_err(denied)?;
    let sig = hex::decode(&auth.signature).map_err(|_| denied("Signature is not hex"))?;
    let spk = parsed_leaf.public_key().subject_public_key.data.as_ref();
    if signature::UnparsedPublicKey::new(verify_alg, spk)
        .verify(to_sign.as_bytes(), &sig)
        .is_err()
    {
        tracing::debug!(canonical_request = %canonical, "X.509 request signature mismatch");
        return Err(denied(
            "Signature does not match: the request signature we calculated does not match the signature you provided",
        ));
    }
    Ok(())
}

/// The trust anchor exists, is enabled and loaded; the presented path chains
/// to it; the leaf is an end-entity signing certificate its CRLs do not revoke.
fn check_anchor(
    registry: &Registry,
    target: &SessionTarget,
    presented: &Presented,
    parsed_leaf: &X509Certificate<'_>,
    now: time::OffsetDateTime,
) -> Result<(), ApiError> {
    let anchor_arn = &target.trust_anchor_arn;
    let anchor = enabled("Trust anchor", &registry.anchors, anchor_arn, |a| a.enabled)?;
    if let Some(why) = &anchor.load_error {
        return Err(denied(format!(
            "Trust anchor {anchor_arn} has no usable CA bundle: {why}"
        )));
    }
    verify_chain(
        &presented.leaf_der,
        &presented.chain,
        &anchor.certs_der,
        now,
    )
    .map_err(|e| {
        denied(format!(
            "Untrusted signing certificate for trust anchor {anchor_arn}: {e}"
        ))
    })?;
    let leaf = &presented.leaf;
    if leaf.is_ca {
        return Err(denied(
            "Untrusted signing certificate: the end-entity certificate is a CA (basicConstraints CA:TRUE)",
        ));
    }
    if !leaf.digital_signature {
        return Err(denied(
            "Untrusted signing certificate: keyUsage does not allow digitalSignature",
        ));
    }
    if let Some(crl) = crate::crl::revoked_by(registry, anchor_arn, &anchor.certs_der, parsed_leaf)
        .map_err(denied)?
    {
        return Err(denied(format!(
            "Untrusted signing certificate: certificate serial number {} is revoked by CRL {} ({}) of trust anchor {anchor_arn}",
            leaf.serial, crl.name, crl.crl_id
        )));
    }
    Ok(())
}

/// The `kind` ("Trust anchor", "Profile") of `resources` that `arn` names;
/// refused when it does not exist or is disabled.
fn enabled<'a, T>(
    kind: &str,
    resources: &'a HashMap<String, T>,
    arn: &str,
    is_enabled: impl Fn(&T) -> bool,
) -> Result<&'a T, ApiError> {
    let found = resources
        .get(arn)
        .ok_or_else(|| denied(format!("{kind} {arn} does not exist")))?;
    if !is_enabled(found) {
        return Err(denied(format!("{kind} {arn} is disabled")));
    }
    Ok(found)
}

/// What a granted session gets.
struct Grant {
    role_arn: String,
    duration_seconds: i64,
    session_name: String,
}

/// The profile exists, is enabled and lists the role; the role's trust
/// policy allows this certificate; the duration and session name are within
/// what the profile allows.
fn authorize(
    registry: &Registry,
    target: &SessionTarget,
    body: &CreateSessionBody,
    leaf: &CertificateInfo,
    parsed_leaf: &X509Certificate<'_>,
) -> Result<Grant, ApiError> {
    let profile_arn = &target.profile_arn;
    let role_arn = &target.role_arn;
    let profile = enabled("Profile", &registry.profiles, profile_arn, |p| p.enabled)?;
    if !profile.role_arns.contains(role_arn) {
        return Err(denied(format!(
            "Role {role_arn} is not in profile {profile_arn}"
        )));
    }
    let role = registry.roles.get(role_arn).ok_or_else(|| {
        denied(format!(
            "Unable to assume role {role_arn}: the role does not exist"
        ))
    })?;
    let tags = PrincipalTags::from_certificate(leaf, parsed_leaf, &target.trust_anchor_arn);
    policy::evaluate(&role.conditions, &tags).map_err(|why| {
        denied(format!(
            "Unable to assume role {role_arn}: its trust policy does not allow this certificate: {why}"
        ))
    })?;
    let cap = profile
        .duration_seconds
        .map_or(MAX_DURATION, |c| i64::from(c).min(MAX_DURATION));
    let duration = body.duration_seconds.unwrap_or(DEFAULT_DURATION.min(cap));
    if !(MIN_DURATION..=cap).contains(&duration) {
        return Err(ApiError::validation(format!(
            "durationSeconds {duration} is out of range: must be between {MIN_DURATION} and {cap} for profile {profile_arn}"
        )));
    }
    let session_name = match &body.role_session_name {
        Some(_) if !profile.accept_role_session_name => {
            return Err(ApiError::validation(format!(
                "roleSessionName is not accepted by profile {profile_arn} (acceptRoleSessionName is false)"
            )));
        }
        Some(name) if !valid_session_name(name) => {
            return Err(ApiError::validation(format!(
                "roleSessionName {name:?} must be 2-64 characters of [A-Za-z0-9_+=,.@-]"
            )));
        }
        Some(name) => name.clone(),
        None => parsed_leaf.serial.to_str_radix(16),
    };
    Ok(Grant {
        role_arn: role.arn.clone(),
        duration_seconds: duration,
        session_name,
    })
}

/// Fresh credentials for `grant`, recorded for the STS/ECR checks and the
/// tests' session log, as AWS's CreateSession reply (201).
fn issue(
    shared: &Shared,
    now: time::OffsetDateTime,
    target: &SessionTarget,
    leaf: &CertificateInfo,
    grant: Grant,
) -> Response<Body> {
    let Grant {
        role_arn,
        duration_seconds,
        session_name,
    } = grant;
    let expiration = now + time::Duration::seconds(duration_seconds);
    let access_key_id = format!("ASIA{}", random_string(16, UPPER_ALNUM));
    let creds = IssuedCredentials {
        secret_access_key: random_string(40, SECRET_ALPHABET),
        session_token: format!("IQoJemulator{}", random_string(300, SECRET_ALPHABET)),
        expiration,
        role_arn: role_arn.clone(),
        session_name: session_name.clone(),
    };
    let role_name = crate::config::role_name(&role_arn).unwrap_or("role");
    let reply = serde_json::json!({
        "credentialSet": [{
            "assumedRoleUser": {
                "arn": crate::assumed_role_arn(&shared.account, role_name, &session_name),
                "assumedRoleId": format!("{}:{session_name}", crate::role_id(&role_arn)),
            },
            "credentials": {
                "accessKeyId": access_key_id,
                "secretAccessKey": creds.secret_access_key,
                "sessionToken": creds.session_token,
                "expiration": crate::rfc3339(expiration),
            },
            "packedPolicySize": 0,
            "roleArn": role_arn,
            "sourceIdentity": format!("CN={}", leaf.common_name.clone().unwrap_or_default()),
        }],
        "subjectArn": format!(
            "arn:aws:rolesanywhere:{}:{}:subject/{}",
            shared.region,
            shared.account,
            uuid_from(leaf.subject.as_bytes())
        ),
    });
    let record = SessionRecord {
        role_arn: role_arn.clone(),
        profile_arn: target.profile_arn.clone(),
        trust_anchor_arn: target.trust_anchor_arn.clone(),
        certificate_serial: leaf.serial.clone(),
        subject_cn: leaf.common_name.clone(),
        subject_ou: leaf.organizational_units.first().cloned(),
        subject_o: leaf.organizations.first().cloned(),
        san_uri: leaf.uris.first().cloned(),
        access_key_id: access_key_id.clone(),
        expiration,
        role_session_name: session_name,
    };
    {
        let mut registry = shared.registry();
        registry.credentials.insert(access_key_id.clone(), creds);
        registry.sessions.push(record);
    }
    tracing::info!(
        role_arn = %role_arn,
        profile_arn = %target.profile_arn,
        serial = %leaf.serial,
        subject = %leaf.subject,
        access_key_id = %access_key_id,
        duration_seconds,
        "CreateSession granted"
    );
    response(
        201,
        "application/json",
        reply.to_string(),
        &crate::state::request_id(),
    )
}

/// AWS's `roleSessionName` rule: 2-64 characters of `[\w+=,.@-]`.
fn valid_session_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

/// A stable UUID-shaped id derived from `data`.
fn uuid_from(data: &[u8]) -> String {
    crate::state::uuid_shape(&sigv4::sha256_hex(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_follow_aws_rules() {
        assert!(valid_session_name("app-1@ns.example"));
        assert!(!valid_session_name("a"));
        assert!(!valid_session_name("has space"));
        assert!(!valid_session_name(&"x".repeat(65)));
    }

    fn body(json: &str) -> CreateSessionBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn arns_come_from_the_query_string_or_the_body() {
        let q = "profileArn=arn%3Aaws%3Arolesanywhere%3Aus-east-1%3A1%3Aprofile%2Fp\
                 &roleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr\
                 &trustAnchorArn=arn%3Aaws%3Arolesanywhere%3Aus-east-1%3A1%3Atrust-anchor%2Ft";
        let from_query = session_target(q, &body(r#"{"durationSeconds":3600}"#)).unwrap();
        assert_eq!(
            from_query.profile_arn,
            "arn:aws:rolesanywhere:us-east-1:1:profile/p"
        );
        assert_eq!(from_query.role_arn, "arn:aws:iam::1:role/r");
        assert_eq!(
            from_query.trust_anchor_arn,
            "arn:aws:rolesanywhere:us-east-1:1:trust-anchor/t"
        );
        let b = r#"{"profileArn":"p","roleArn":"r","trustAnchorArn":"t"}"#;
        let from_body = session_target("", &body(b)).unwrap();
        assert_eq!(
            (
                from_body.profile_arn,
                from_body.role_arn,
                from_body.trust_anchor_arn
            ),
            ("p".into(), "r".into(), "t".into())
        );
        // Both places agreeing is fine; disagreeing, repeated or absent is not.
        assert!(session_target("roleArn=r", &body(b)).is_ok());
        let e = session_target("roleArn=other", &body(b)).unwrap_err();
        assert!(e.message.contains("differs"), "{e}");
        let e = session_target("roleArn=r&roleArn=r", &body(b)).unwrap_err();
        assert!(e.message.contains("more than once"), "{e}");
        let e = session_target("", &body(r#"{"profileArn":"p","roleArn":"r"}"#)).unwrap_err();
        assert!(e.message.contains("trustAnchorArn"), "{e}");
        assert_eq!(e.code, "ValidationException");
    }

    #[test]
    fn subject_ids_are_stable_and_uuid_shaped() {
        assert_eq!(uuid_from(b"CN=a"), uuid_from(b"CN=a"));
        assert_ne!(uuid_from(b"CN=a"), uuid_from(b"CN=b"));
        assert_eq!(uuid_from(b"x").len(), 36);
    }
}
