//! IAM Roles Anywhere certificate revocation lists: `ImportCrl`, `ListCrls`,
//! `GetCrl`, `UpdateCrl`, `EnableCrl`, `DisableCrl`, `DeleteCrl` (REST-JSON,
//! SigV4-signed with credentials this emulator issued, allowed by the role's
//! permissions), and the revocation check `CreateSession` makes.
//!
//! Limits and codes follow the API reference
//! (<https://docs.aws.amazon.com/rolesanywhere/latest/APIReference/API_ImportCrl.html>,
//! `API_UpdateCrl`, `API_ListCrls`, `API_GetCrl`): `crlData` is base64 of
//! 1..=300000 bytes of PEM ("In order to be properly imported, a CRL must be in
//! PEM format."), here exactly one `X509 CRL` block, kept as sent and returned
//! unchanged; `name` 1..=255 of `[ a-zA-Z0-9-_]`, at most 200 tags, `crlId` 36
//! characters; 400 `ValidationException`, 403 `AccessDeniedException`, 404
//! `ResourceNotFoundException`; ImportCrl answers 201, the others 200.
//!
//! Signature checks, a choice the API reference does not document: ImportCrl
//! and UpdateCrl refuse a CRL that no CA certificate of the trust anchor
//! issued and signed (400 `ValidationException`), so an operator learns at
//! import, not when a revoked workload still gets credentials. CreateSession
//! checks again: a CRL counts for a leaf only when its issuer is the leaf's
//! issuer and its signature verifies with the key of the anchor certificate
//! that signed the leaf (serial numbers are unique per issuer only, RFC 5280
//! 5.1.2.3). A CRL the anchor's current bundle no longer vouches for (after a
//! CA rotation) therefore revokes nothing rather than being trusted unsigned.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http::Response;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

use crate::sigv4_verify;
use crate::state::{CrlRecord, IssuedCredentials, Operation, Registry, Shared, request_id};
use crate::wire::{ApiError, Body, RawRequest, parse_form, response};

/// Largest CRL ImportCrl and UpdateCrl accept, in bytes of PEM (`crlData`'s
/// documented maximum length).
pub const MAX_CRL_BYTES: usize = 300_000;
/// Largest ImportCrl/UpdateCrl request body read: the largest CRL as base64
/// (400,000 characters) plus room for the other fields, so an oversize CRL
/// gets AWS's ValidationException rather than a 413.
pub const MAX_CRL_BODY_BYTES: usize = 512 * 1024;
/// ListCrls page size when the request names none (AWS documents no default).
const DEFAULT_PAGE_SIZE: usize = 50;
/// Most tags ImportCrl accepts.
const MAX_TAGS: usize = 200;

/// Whether a path belongs to the CRL operations (they get the larger body limit).
pub(crate) fn is_crl_path(path: &str) -> bool {
    path == "/crls" || path.starts_with("/crl/")
}

/// The CRL operation `method path` names: `None` when the path is not a CRL
/// path, an error when the method does not fit it.
pub(crate) fn operation(method: &str, path: &str) -> Option<Result<Operation, ApiError>> {
    let wrong = || {
        Some(Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} {path}: no CRL operation takes this method"),
        )))
    };
    let op = if path == "/crls" {
        match method {
            "POST" => Operation::ImportCrl,
            "GET" => Operation::ListCrls,
            _ => return wrong(),
        }
    } else {
        let (_, action) = crl_path(path)?;
        match (action, method) {
            (None, "GET") => Operation::GetCrl,
            (None, "PATCH") => Operation::UpdateCrl,
            (None, "DELETE") => Operation::DeleteCrl,
            (Some("enable"), "POST") => Operation::EnableCrl,
            (Some("disable"), "POST") => Operation::DisableCrl,
            _ => return wrong(),
        }
    };
    Some(Ok(op))
}

/// `/crl/{id}` or `/crl/{id}/enable|disable`: the id and the action.
fn crl_path(path: &str) -> Option<(&str, Option<&str>)> {
    let rest = path.strip_prefix("/crl/")?;
    let (id, action) = match rest.split_once('/') {
        Some((id, a @ ("enable" | "disable"))) => (id, Some(a)),
        Some(_) => return None,
        None => (rest, None),
    };
    (!id.is_empty()).then_some((id, action))
}

/// `CrlDetail` as AWS sends it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CrlDetail {
    created_at: String,
    crl_arn: String,
    crl_data: String,
    crl_id: String,
    enabled: bool,
    name: String,
    trust_anchor_arn: String,
    updated_at: String,
}

impl From<&CrlRecord> for CrlDetail {
    fn from(r: &CrlRecord) -> Self {
        CrlDetail {
            created_at: crate::rfc3339(r.created_at),
            crl_arn: r.crl_arn.clone(),
            crl_data: B64.encode(&r.crl_data),
            crl_id: r.crl_id.clone(),
            enabled: r.enabled,
            name: r.name.clone(),
            trust_anchor_arn: r.trust_anchor_arn.clone(),
            updated_at: crate::rfc3339(r.updated_at),
        }
    }
}

#[derive(Serialize)]
struct CrlReply {
    crl: CrlDetail,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListReply {
    crls: Vec<CrlDetail>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

#[derive(Deserialize)]
struct Tag {
    key: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportBody {
    name: Option<String>,
    crl_data: Option<String>,
    trust_anchor_arn: Option<String>,
    enabled: Option<bool>,
    tags: Option<Vec<Tag>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UpdateBody {
    name: Option<String>,
    crl_data: Option<String>,
}

/// Serves one CRL operation: signature, permission, then the operation.
pub(crate) fn handle(
    shared: &Shared,
    req: &RawRequest,
    op: Operation,
) -> Result<Response<Body>, ApiError> {
    let creds = sigv4_verify::verify(shared, req, &sigv4_verify::ROLESANYWHERE)?;
    let id = crl_path(&req.path).map(|(id, _)| id);
    authorize(shared, &creds, op, id)?;
    let now = shared.now();
    let (status, body) = match (op, id) {
        (Operation::ImportCrl, _) => (201, import(shared, req, now)?),
        (Operation::ListCrls, _) => (200, list(shared, req)?),
        (op, Some(id)) => (200, by_id(shared, req, op, id, now)?),
        (op, None) => {
            return Err(ApiError::validation(format!(
                "{} needs a crlId in the path",
                op.name()
            )));
        }
    };
    tracing::info!(operation = op.name(), role_arn = %creds.role_arn, "CRL operation");
    Ok(response(status, "application/json", body, &request_id()))
}

/// IAM: the role's permission policies must allow `rolesanywhere:<op>`.
fn authorize(
    shared: &Shared,
    creds: &IssuedCredentials,
    op: Operation,
    id: Option<&str>,
) -> Result<(), ApiError> {
    let action = format!("rolesanywhere:{}", op.name());
    let registry = shared.registry();
    if registry
        .permissions
        .iter()
        .any(|p| p.role_arn == creds.role_arn && p.allows(&action))
    {
        return Ok(());
    }
    let role_name = crate::config::role_name(&creds.role_arn).unwrap_or("role");
    let user = crate::assumed_role_arn(&shared.account, role_name, &creds.session_name);
    let resource = crl_arn(shared, id.unwrap_or("*"));
    Err(ApiError::access_denied(format!(
        "User: {user} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action"
    )))
}

fn crl_arn(shared: &Shared, id: &str) -> String {
    format!(
        "arn:aws:rolesanywhere:{}:{}:crl/{id}",
        shared.region, shared.account
    )
}

fn reply(record: &CrlRecord) -> String {
    serde_json::to_string(&CrlReply { crl: record.into() }).unwrap_or_default()
}

fn json<'a, T: Deserialize<'a>>(req: &'a RawRequest) -> Result<T, ApiError> {
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::validation(format!("Invalid request body: {e}")))
}

/// AWS's wording for a failed length or pattern constraint.
fn constraint(field: &str, rule: &str) -> ApiError {
    ApiError::validation(format!(
        "1 validation error detected: Value at '{field}' failed to satisfy constraint: {rule}"
    ))
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| constraint(field, "Member must not be null"))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if !(1..=255).contains(&name.len()) {
        return Err(constraint(
            "name",
            "Member must have length between 1 and 255",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" -_".contains(&b))
    {
        return Err(constraint(
            "name",
            "Member must satisfy regular expression pattern: [ a-zA-Z0-9-_]*",
        ));
    }
    Ok(())
}

/// A CRL as ImportCrl/UpdateCrl received it, checked.
struct CheckedCrl {
    /// The PEM bytes as sent (what `crlData` returns).
    pem: Vec<u8>,
    /// The DER inside, for CreateSession's revocation check.
    der: Vec<u8>,
}

/// Decodes `crlData` and checks it is one PEM X.509 CRL, within the limit,
/// issued and signed by a CA certificate of the trust anchor.
fn check_crl_data(
    registry: &Registry,
    crl_data: &str,
    anchor_arn: &str,
) -> Result<CheckedCrl, ApiError> {
    let pem = B64
        .decode(crl_data.trim())
        .map_err(|e| ApiError::validation(format!("crlData is not base64: {e}")))?;
    if pem.is_empty() {
        return Err(constraint(
            "crlData",
            "Member must have length greater than or equal to 1",
        ));
    }
    if pem.len() > MAX_CRL_BYTES {
        return Err(constraint(
            "crlData",
            &format!(
                "Member must have length less than or equal to {MAX_CRL_BYTES} (got {} bytes)",
                pem.len()
            ),
        ));
    }
    let der = pem_crl_der(&pem)?;
    let crl = parse_crl(&der)
        .map_err(|e| ApiError::validation(format!("crlData is not an X.509 CRL: {e}")))?;
    let anchor = registry
        .anchors
        .get(anchor_arn)
        .ok_or_else(|| ApiError::validation(format!("Trust anchor {anchor_arn} does not exist")))?;
    let signed = anchor.certs_der.iter().any(|ca| {
        X509Certificate::from_der(ca).is_ok_and(|(_, ca)| {
            let may_sign_crls = match ca.key_usage() {
                Ok(Some(ku)) => ku.value.crl_sign(),
                Ok(None) => true,
                Err(_) => false,
            };
            ca.subject().as_raw() == crl.issuer().as_raw()
                && may_sign_crls
                && crl.verify_signature(ca.public_key()).is_ok()
        })
    });
    if !signed {
        return Err(ApiError::validation(format!(
            "CRL issued by {:?} is not signed by a CA certificate (with cRLSign) of trust anchor {anchor_arn}",
            crl.issuer().to_string()
        )));
    }
    Ok(CheckedCrl { pem, der })
}

/// The DER of the one PEM `X509 CRL` block `pem` holds. DER, other labels and
/// several blocks are refused: AWS documents "In order to be properly
/// imported, a CRL must be in PEM format."
fn pem_crl_der(pem: &[u8]) -> Result<Vec<u8>, ApiError> {
    let must = "crlData must be a CRL in PEM format (one -----BEGIN X509 CRL----- block): \
                \"In order to be properly imported, a CRL must be in PEM format.\"";
    let blocks = Pem::iter_from_buffer(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::validation(format!("{must}; its PEM is malformed: {e}")))?;
    match <[Pem; 1]>::try_from(blocks) {
        Ok([block]) if block.label == "X509 CRL" => Ok(block.contents),
        Ok([block]) => Err(ApiError::validation(format!(
            "{must}; got a PEM {:?} block",
            block.label
        ))),
        Err(blocks) if blocks.is_empty() => Err(ApiError::validation(format!(
            "{must}; found no PEM block (DER is not accepted)"
        ))),
        Err(blocks) => Err(ApiError::validation(format!(
            "{must}; got {} PEM blocks",
            blocks.len()
        ))),
    }
}

/// A whole DER CRL, nothing after it.
fn parse_crl(der: &[u8]) -> Result<CertificateRevocationList<'_>, String> {
    match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => Ok(crl),
        Ok((rest, _)) => Err(format!("{} bytes after the CRL", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

fn import(shared: &Shared, req: &RawRequest, now: OffsetDateTime) -> Result<String, ApiError> {
    let body: ImportBody = json(req)?;
    let name = required(body.name, "name")?;
    check_name(&name)?;
    let anchor_arn = required(body.trust_anchor_arn, "trustAnchorArn")?;
    if !(1..=1011).contains(&anchor_arn.len())
        || !anchor_arn.starts_with("arn:aws")
        || !anchor_arn.contains(":rolesanywhere:")
        || !anchor_arn.contains(":trust-anchor")
    {
        return Err(constraint(
            "trustAnchorArn",
            "Member must satisfy regular expression pattern: ^arn:aws(-[^:]+)?:rolesanywhere(:.*){2}(:trust-anchor.*)$",
        ));
    }
    let tags = body.tags.unwrap_or_default();
    if tags.len() > MAX_TAGS {
        return Err(constraint(
            "tags",
            &format!("Member must have length less than or equal to {MAX_TAGS}"),
        ));
    }
    let crl_data = required(body.crl_data, "crlData")?;
    let mut registry = shared.registry();
    let crl = check_crl_data(&registry, &crl_data, &anchor_arn)?;
    let crl_id = request_id();
    let record = CrlRecord {
        crl_arn: crl_arn(shared, &crl_id),
        crl_id,
        name,
        trust_anchor_arn: anchor_arn,
        crl_data: crl.pem,
        crl_der: crl.der,
        // The API reference gives no default; disabled is the strict reading
        // (a client that wants revocation must say so, or call EnableCrl).
        enabled: body.enabled.unwrap_or(false),
        tags: tags.into_iter().map(|t| (t.key, t.value)).collect(),
        created_at: now,
        updated_at: now,
    };
    let out = reply(&record);
    registry.crls.push(record);
    Ok(out)
}

fn list(shared: &Shared, req: &RawRequest) -> Result<String, ApiError> {
    let mut start = 0;
    let mut size = DEFAULT_PAGE_SIZE;
    for (k, v) in parse_form(&req.query) {
        match k.as_str() {
            "nextToken" => {
                start = v.parse().map_err(|_| {
                    ApiError::validation(format!(
                        "Invalid nextToken {v:?} (not one this service issued)"
                    ))
                })?;
            }
            "pageSize" => {
                size = v.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
                    ApiError::validation(format!("pageSize {v:?} must be a positive integer"))
                })?;
            }
            _ => {}
        }
    }
    let registry = shared.registry();
    let page: Vec<CrlDetail> = registry
        .crls
        .iter()
        .skip(start)
        .take(size)
        .map(CrlDetail::from)
        .collect();
    let end = start.saturating_add(page.len());
    let next_token = (end < registry.crls.len()).then(|| end.to_string());
    Ok(serde_json::to_string(&ListReply {
        crls: page,
        next_token,
    })
    .unwrap_or_default())
}

/// GetCrl, UpdateCrl, EnableCrl, DisableCrl, DeleteCrl.
fn by_id(
    shared: &Shared,
    req: &RawRequest,
    op: Operation,
    id: &str,
    now: OffsetDateTime,
) -> Result<String, ApiError> {
    let id_shaped = id.len() == 36
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase() || b == b'-');
    if !id_shaped {
        return Err(constraint("crlId", "Member must have length 36"));
    }
    let update: Option<UpdateBody> = match op {
        Operation::UpdateCrl => Some(json(req)?),
        _ => None,
    };
    let mut registry = shared.registry();
    let index = registry
        .crls
        .iter()
        .position(|c| c.crl_id == id)
        .ok_or_else(|| {
            ApiError::new(
                404,
                "ResourceNotFoundException",
                format!("The resource could not be found: CRL {id}"),
            )
        })?;
    if let Some(body) = update {
        if let Some(name) = &body.name {
            check_name(name)?;
        }
        let checked = match &body.crl_data {
            Some(data) => Some(check_crl_data(
                &registry,
                data,
                &registry.crls[index].trust_anchor_arn,
            )?),
            None => None,
        };
        let crl = &mut registry.crls[index];
        if let Some(name) = body.name {
            crl.name = name;
        }
        if let Some(checked) = checked {
            crl.crl_data = checked.pem;
            crl.crl_der = checked.der;
        }
        crl.updated_at = now;
    }
    match op {
        Operation::EnableCrl | Operation::DisableCrl => {
            let crl = &mut registry.crls[index];
            crl.enabled = op == Operation::EnableCrl;
            crl.updated_at = now;
        }
        Operation::DeleteCrl => {
            let removed = registry.crls.remove(index);
            return Ok(reply(&removed));
        }
        _ => {}
    }
    Ok(reply(&registry.crls[index]))
}

/// The enabled CRL of `anchor_arn` that revokes `leaf`, if one does. A CRL
/// counts only if its issuer is the leaf's issuer and its signature verifies
/// with the key of an anchor certificate that signed the leaf (see the
/// module doc). A stored CRL that no longer parses refuses the session.
pub(crate) fn revoked_by<'r>(
    registry: &'r Registry,
    anchor_arn: &str,
    anchor_certs: &[Vec<u8>],
    leaf: &X509Certificate<'_>,
) -> Result<Option<&'r CrlRecord>, String> {
    let signers: Vec<X509Certificate<'_>> = anchor_certs
        .iter()
        .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| c))
        .filter(|ca| {
            ca.subject().as_raw() == leaf.issuer().as_raw()
                && leaf.verify_signature(Some(ca.public_key())).is_ok()
        })
        .collect();
    for record in registry
        .crls
        .iter()
        .filter(|c| c.enabled && c.trust_anchor_arn == anchor_arn)
    {
        let crl = parse_crl(&record.crl_der)
            .map_err(|e| format!("stored CRL {} is unreadable: {e}", record.crl_id))?;
        let applies = crl.issuer().as_raw() == leaf.issuer().as_raw()
            && signers
                .iter()
                .any(|ca| crl.verify_signature(ca.public_key()).is_ok());
        if applies
            && crl
                .iter_revoked_certificates()
                .any(|r| r.serial() == &leaf.serial)
        {
            return Ok(Some(record));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_methods_name_the_operation() {
        let id = "0123abcd-0000-0000-0000-000000000000";
        let op = |m: &str, p: &str| operation(m, p).map(|r| r.map_err(|e| e.status));
        let crl = format!("/crl/{id}");
        let enable = format!("/crl/{id}/enable");
        let disable = format!("/crl/{id}/disable");
        for (method, path, expected) in [
            ("POST", "/crls", Operation::ImportCrl),
            ("GET", "/crls", Operation::ListCrls),
            ("GET", &crl, Operation::GetCrl),
            ("PATCH", &crl, Operation::UpdateCrl),
            ("DELETE", &crl, Operation::DeleteCrl),
            ("POST", &enable, Operation::EnableCrl),
            ("POST", &disable, Operation::DisableCrl),
        ] {
            assert_eq!(op(method, path), Some(Ok(expected)), "{method} {path}");
        }
        assert_eq!(op("PUT", "/crls"), Some(Err(405)));
        assert_eq!(op("GET", &enable), Some(Err(405)));
        assert_eq!(op("POST", &format!("/crl/{id}/other")), None);
        assert_eq!(op("GET", "/crl/"), None);
        assert_eq!(op("POST", "/sessions"), None);
        assert!(is_crl_path("/crls") && is_crl_path("/crl/x") && !is_crl_path("/sessions"));
    }

    #[test]
    fn only_one_pem_x509_crl_block_is_accepted() {
        let block = |label: &str| format!("-----BEGIN {label}-----\nAAEC\n-----END {label}-----\n");
        let crl = block("X509 CRL");
        assert_eq!(pem_crl_der(crl.as_bytes()).unwrap(), [0, 1, 2]);
        let crlf = crl.replace('\n', "\r\n");
        assert_eq!(pem_crl_der(crlf.as_bytes()).unwrap(), [0, 1, 2]);
        for (input, detail) in [
            (b"\x30\x03\x02\x01\x00".to_vec(), "no PEM block"),
            (block("CERTIFICATE").into_bytes(), "\"CERTIFICATE\""),
            (format!("{crl}{crl}").into_bytes(), "2 PEM blocks"),
            (b"-----BEGIN X509 CRL-----\nAAEC\n".to_vec(), "malformed"),
        ] {
            let e = pem_crl_der(&input).unwrap_err();
            assert_eq!(e.code, "ValidationException");
            assert!(
                e.message.contains("must be in PEM format") && e.message.contains(detail),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn names_follow_the_documented_pattern() {
        assert!(check_name("attache workload-CA_1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"a".repeat(256)).is_err());
        let e = check_name("a/b").unwrap_err();
        assert_eq!(e.code, "ValidationException");
    }
}
