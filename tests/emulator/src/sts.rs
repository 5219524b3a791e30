//! STS `GetCallerIdentity` over the query protocol, answered with the
//! assumed-role identity of the credentials that signed the request.

use http::Response;

use crate::sigv4_verify;
use crate::state::Shared;
use crate::wire::{ApiError, Body, RawRequest, parse_form, response, xml_escape};

/// The query parameters of an STS request: the URL query, then a form body.
pub(crate) fn params(req: &RawRequest) -> Vec<(String, String)> {
    let mut params = parse_form(&req.query);
    let is_form = req.header("content-type").is_some_and(|c| {
        c.to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    if is_form && let Ok(text) = std::str::from_utf8(&req.body) {
        params.extend(parse_form(text));
    }
    params
}

/// The `Action` parameter, if any.
pub(crate) fn action(req: &RawRequest) -> Option<String> {
    params(req)
        .into_iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v)
}

/// Serves an STS request (only `GetCallerIdentity` exists here).
pub(crate) fn handle(shared: &Shared, req: &RawRequest) -> Result<Response<Body>, ApiError> {
    let creds = sigv4_verify::verify(shared, req, &sigv4_verify::STS)?;
    let params = params(req);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    match get("Action") {
        Some("GetCallerIdentity") => {}
        Some(other) => {
            return Err(ApiError::new(
                400,
                "InvalidAction",
                format!(
                    "Could not find operation {other} for version 2011-06-15 (this emulator serves GetCallerIdentity only)"
                ),
            ));
        }
        None => return Err(ApiError::new(400, "MissingAction", "Missing Action")),
    }
    if let Some(v) = get("Version")
        && v != "2011-06-15"
    {
        return Err(ApiError::new(
            400,
            "InvalidAction",
            format!("Could not find operation GetCallerIdentity for version {v}"),
        ));
    }
    let role_name = crate::config::role_name(&creds.role_arn).unwrap_or("role");
    let rid = crate::state::request_id();
    let body = format!(
        "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n  <GetCallerIdentityResult>\n    <Arn>{}</Arn>\n    <UserId>{}</UserId>\n    <Account>{}</Account>\n  </GetCallerIdentityResult>\n  <ResponseMetadata>\n    <RequestId>{rid}</RequestId>\n  </ResponseMetadata>\n</GetCallerIdentityResponse>\n",
        xml_escape(&crate::assumed_role_arn(
            &shared.account,
            role_name,
            &creds.session_name
        )),
        xml_escape(&format!(
            "{}:{}",
            crate::role_id(&creds.role_arn),
            creds.session_name
        )),
        shared.account,
    );
    tracing::info!(role_arn = %creds.role_arn, session = %creds.session_name, "GetCallerIdentity");
    Ok(response(200, "text/xml", body, &rid))
}
