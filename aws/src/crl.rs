//! The IAM Roles Anywhere CRL client: `ListCrls`, `ImportCrl`, `UpdateCrl`,
//! `EnableCrl`, and [`CrlClient::sync_crl`], which keeps one named CRL of a trust anchor
//! equal to the CA's current one. Signed with SigV4 by temporary
//! [`Credentials`] (service `rolesanywhere`), sent through [`request`].
//!
//! Wire format (REST-JSON, AWS API reference `API_ImportCrl`, `API_UpdateCrl`,
//! `API_ListCrls`, `API_EnableCrl`): `POST /crls`, `PATCH /crl/{crlId}`,
//! `GET /crls?nextToken=&pageSize=`, `POST /crl/{crlId}/enable`; replies
//! `{"crl": CrlDetail}` or `{"crls": [CrlDetail], "nextToken"}`, `crlData` as
//! base64 of the CRL's PEM text (`-----BEGIN X509 CRL-----`..., at most
//! 300,000 bytes): "In order to be properly imported, a CRL must be in PEM
//! format." (`API_ImportCrl`).

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::arn::{validate_region, validate_rolesanywhere_arn};
use crate::credentials::Credentials;
use crate::request::{self, AwsError, ENABLE_CRL, IMPORT_CRL, LIST_CRLS, Operation, UPDATE_CRL};

/// Largest CRL Roles Anywhere accepts, in bytes of PEM (`crlData`: "Maximum
/// length of 300000").
pub const MAX_CRL_BYTES: usize = 300_000;
/// CRLs asked for per ListCrls page (each may carry a 300 KB CRL).
pub const LIST_PAGE_SIZE: u32 = 10;
/// Largest CRL reply read: a full page of the largest CRLs as base64, plus room.
const MAX_CRL_REPLY_BYTES: usize = 8 * 1024 * 1024;
/// Signing name of Roles Anywhere.
const SERVICE: &str = "rolesanywhere";

/// One CRL as Roles Anywhere describes it. `Debug` shows the CRL's length,
/// never its bytes.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrlDetail {
    /// `arn:aws:rolesanywhere:<region>:<account>:crl/<id>`.
    #[serde(default)]
    pub crl_arn: String,
    /// The CRL's id (UUID-shaped).
    pub crl_id: String,
    /// The CRL as Roles Anywhere returns it, decoded from base64: the PEM
    /// bytes imported.
    #[serde(default, deserialize_with = "base64_bytes")]
    pub crl_data: Vec<u8>,
    /// Whether CreateSession consults it.
    pub enabled: bool,
    /// Its name.
    pub name: String,
    /// The trust anchor it revokes for.
    pub trust_anchor_arn: String,
    /// When it was imported.
    #[serde(default, deserialize_with = "timestamp")]
    pub created_at: Option<OffsetDateTime>,
    /// When it last changed.
    #[serde(default, deserialize_with = "timestamp")]
    pub updated_at: Option<OffsetDateTime>,
}

impl std::fmt::Debug for CrlDetail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlDetail")
            .field("crl_arn", &self.crl_arn)
            .field("crl_id", &self.crl_id)
            .field("crl_data_len", &self.crl_data.len())
            .field("enabled", &self.enabled)
            .field("name", &self.name)
            .field("trust_anchor_arn", &self.trust_anchor_arn)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .finish()
    }
}

fn base64_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    B64.decode(text.trim())
        .map_err(|e| serde::de::Error::custom(format!("crlData is not base64: {e}")))
}

fn timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<OffsetDateTime>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    OffsetDateTime::parse(&text, &Rfc3339)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("timestamp {text:?}: {e}")))
}

/// One ListCrls page.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrlPage {
    /// The CRLs of this page (of every trust anchor in the account and region).
    #[serde(default)]
    pub crls: Vec<CrlDetail>,
    /// Where the next page starts; `None` on the last page.
    #[serde(default)]
    pub next_token: Option<String>,
}

/// What [`CrlClient::import_crl`] sends.
#[derive(Clone, Copy, Debug)]
pub struct NewCrl<'a> {
    /// The name (1-255 characters of `[ a-zA-Z0-9-_]`).
    pub name: &'a str,
    /// The trust anchor the CRL revokes for.
    pub trust_anchor_arn: &'a str,
    /// The CRL, PEM (`-----BEGIN X509 CRL-----`...): "In order to be
    /// properly imported, a CRL must be in PEM format." (`API_ImportCrl`).
    pub crl_pem: &'a [u8],
    /// Whether CreateSession consults it from the start (the API reference
    /// documents no default, so it is always sent).
    pub enabled: bool,
}

/// What [`CrlClient::sync_crl`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrlSync {
    /// No CRL had the name: it was imported, enabled.
    Imported {
        /// The new CRL's id.
        crl_id: String,
    },
    /// The CRL existed: its data was replaced (and it was enabled if it was not).
    Updated {
        /// The CRL's id.
        crl_id: String,
        /// Whether it was disabled and had to be enabled.
        enabled_now: bool,
    },
}

impl CrlSync {
    /// The id of the CRL synced.
    pub fn crl_id(&self) -> &str {
        match self {
            CrlSync::Imported { crl_id } | CrlSync::Updated { crl_id, .. } => crl_id,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ImportBody<'a> {
    name: &'a str,
    crl_data: String,
    trust_anchor_arn: &'a str,
    enabled: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateBody {
    crl_data: String,
}

#[derive(Deserialize)]
struct CrlReply {
    crl: CrlDetail,
}

/// Where and as whom the CRL calls go: Roles Anywhere at `endpoint` in
/// `region`, signed with `credentials`.
#[derive(Clone, Copy)]
pub struct CrlClient<'a> {
    /// The HTTP client the calls go through.
    pub http: &'a reqwest::Client,
    /// The Roles Anywhere endpoint (`https://rolesanywhere.<region>.amazonaws.com`).
    pub endpoint: &'a str,
    /// The region the calls are signed for.
    pub region: &'a str,
    /// The temporary credentials that sign them.
    pub credentials: &'a Credentials,
}

impl CrlClient<'_> {
    /// Lists one page of the account's CRLs in the region (all trust
    /// anchors), starting at `next_token` (`None`: the first page).
    pub async fn list_crls(&self, next_token: Option<&str>) -> Result<CrlPage, AwsError> {
        let mut url = self.url("/crls", LIST_CRLS)?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(token) = next_token {
                query.append_pair("nextToken", token);
            }
            query.append_pair("pageSize", &LIST_PAGE_SIZE.to_string());
        }
        let bytes = self.call("GET", url, None, LIST_CRLS).await?;
        serde_json::from_slice(&bytes)
            .map_err(|e| AwsError::bad_reply(LIST_CRLS, format!("not a CRL list: {e}")))
    }

    /// Imports `crl` for its trust anchor. Refuses, before sending, a PEM
    /// CRL over [`MAX_CRL_BYTES`].
    pub async fn import_crl(&self, crl: &NewCrl<'_>) -> Result<CrlDetail, AwsError> {
        check_size(crl.crl_pem, IMPORT_CRL)?;
        validate_rolesanywhere_arn(crl.trust_anchor_arn, "trust-anchor")?;
        let body = ImportBody {
            name: crl.name,
            crl_data: B64.encode(crl.crl_pem),
            trust_anchor_arn: crl.trust_anchor_arn,
            enabled: crl.enabled,
        };
        let body = to_json(&body, IMPORT_CRL)?;
        self.crl("POST", "/crls", Some(body), IMPORT_CRL).await
    }

    /// Replaces the data of CRL `crl_id` with `crl_pem` (the CRL in PEM, as
    /// AWS requires). Refuses, before sending, a PEM CRL over
    /// [`MAX_CRL_BYTES`].
    pub async fn update_crl(&self, crl_id: &str, crl_pem: &[u8]) -> Result<CrlDetail, AwsError> {
        check_size(crl_pem, UPDATE_CRL)?;
        let body = UpdateBody {
            crl_data: B64.encode(crl_pem),
        };
        let body = to_json(&body, UPDATE_CRL)?;
        self.crl("PATCH", &format!("/crl/{crl_id}"), Some(body), UPDATE_CRL)
            .await
    }

    /// Enables CRL `crl_id`: CreateSession refuses the certificates it lists.
    pub async fn enable_crl(&self, crl_id: &str) -> Result<CrlDetail, AwsError> {
        self.crl("POST", &format!("/crl/{crl_id}/enable"), None, ENABLE_CRL)
            .await
    }

    /// Makes the CRL named `name` of `trust_anchor_arn` hold `crl_pem` (the
    /// CRL in PEM, as AWS requires), enabled: finds it (ListCrls, every
    /// page), imports it if absent, else updates its data and enables it if
    /// it was disabled. A PEM CRL over [`MAX_CRL_BYTES`] is refused before
    /// anything is sent.
    pub async fn sync_crl(
        &self,
        trust_anchor_arn: &str,
        name: &str,
        crl_pem: &[u8],
    ) -> Result<CrlSync, AwsError> {
        check_size(crl_pem, IMPORT_CRL)?;
        validate_region(self.region)?;
        validate_rolesanywhere_arn(trust_anchor_arn, "trust-anchor")?;
        let Some(existing) = self.find_crl(trust_anchor_arn, name).await? else {
            let new = NewCrl {
                name,
                trust_anchor_arn,
                crl_pem,
                enabled: true,
            };
            let crl = self.import_crl(&new).await?;
            tracing::info!(crl_id = %crl.crl_id, name, trust_anchor_arn, "CRL imported");
            return Ok(CrlSync::Imported { crl_id: crl.crl_id });
        };
        let updated = self.update_crl(&existing.crl_id, crl_pem).await?;
        let enabled_now = !updated.enabled;
        if enabled_now {
            self.enable_crl(&existing.crl_id).await?;
        }
        tracing::info!(crl_id = %existing.crl_id, name, trust_anchor_arn, enabled_now, "CRL updated");
        Ok(CrlSync::Updated {
            crl_id: existing.crl_id,
            enabled_now,
        })
    }

    /// The CRL named `name` of `trust_anchor_arn`, looked for on every page.
    async fn find_crl(
        &self,
        trust_anchor_arn: &str,
        name: &str,
    ) -> Result<Option<CrlDetail>, AwsError> {
        let mut token: Option<String> = None;
        loop {
            let page = self.list_crls(token.as_deref()).await?;
            if let Some(found) = page
                .crls
                .into_iter()
                .find(|c| c.name == name && c.trust_anchor_arn == trust_anchor_arn)
            {
                return Ok(Some(found));
            }
            match page.next_token {
                Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                Some(_) => {
                    return Err(AwsError::bad_reply(
                        LIST_CRLS,
                        "nextToken repeats the token just sent",
                    ));
                }
                None => return Ok(None),
            }
        }
    }
}

/// The documented limit applies to the PEM bytes `crlData` carries.
fn check_size(crl_pem: &[u8], operation: Operation) -> Result<(), AwsError> {
    if crl_pem.len() > MAX_CRL_BYTES {
        return Err(AwsError::CrlTooLarge {
            operation,
            len: crl_pem.len(),
            max: MAX_CRL_BYTES,
        });
    }
    Ok(())
}

fn to_json(body: &impl Serialize, operation: Operation) -> Result<Vec<u8>, AwsError> {
    serde_json::to_vec(body).map_err(|e| AwsError::Signing {
        operation,
        source: e.into(),
    })
}

impl CrlClient<'_> {
    /// The endpoint + `path`, checked to be an http(s) URL.
    fn url(&self, path: &str, operation: Operation) -> Result<reqwest::Url, AwsError> {
        url(self.endpoint, path, operation)
    }

    /// A call whose reply is `{"crl": CrlDetail}`.
    async fn crl(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        operation: Operation,
    ) -> Result<CrlDetail, AwsError> {
        let url = self.url(path, operation)?;
        let bytes = self.call(method, url, body, operation).await?;
        let reply: CrlReply = serde_json::from_slice(&bytes)
            .map_err(|e| AwsError::bad_reply(operation, format!("not a CRL: {e}")))?;
        Ok(reply.crl)
    }

    /// Signs and sends one request; the reply body of a 2xx.
    async fn call(
        &self,
        method: &str,
        url: reqwest::Url,
        body: Option<Vec<u8>>,
        operation: Operation,
    ) -> Result<bytes::Bytes, AwsError> {
        let signing = |source: Box<dyn std::error::Error + Send + Sync>| AwsError::Signing {
            operation,
            source,
        };
        let body = body.unwrap_or_default();
        let content_type = [("content-type", "application/json")];
        let headers: &[(&str, &str)] = if body.is_empty() { &[] } else { &content_type };
        let signed = crate::sigv4::sigv4_headers(
            method,
            url.as_str(),
            headers,
            &body,
            self.region,
            SERVICE,
            &self.credentials.into(),
            SystemTime::now(),
        )
        .map_err(|e| signing(e.into()))?;
        let http_method =
            reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| signing(e.into()))?;
        let endpoint = url.to_string();
        let mut req = self.http.request(http_method, url).body(body);
        for (k, v) in &signed {
            req = req.header(k, v);
        }
        request::send_bounded(operation, self.region, &endpoint, req, MAX_CRL_REPLY_BYTES).await
    }
}

/// `endpoint` + `path`, checked to be an http(s) URL.
fn url(endpoint: &str, path: &str, operation: Operation) -> Result<reqwest::Url, AwsError> {
    let text = format!("{}{path}", endpoint.trim_end_matches('/'));
    let url = reqwest::Url::parse(&text).map_err(|e| AwsError::Signing {
        operation,
        source: format!("endpoint {endpoint:?}: {e}").into(),
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(AwsError::Signing {
            operation,
            source: format!("endpoint {endpoint:?} is not http(s)").into(),
        });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET_PEM: &[u8] = b"-----BEGIN X509 CRL-----\nSECRET\n-----END X509 CRL-----\n";

    #[test]
    fn crl_details_parse_and_debug_shows_only_the_length() {
        let json = format!(
            r#"{{"crl":{{"crlArn":"arn:aws:rolesanywhere:us-east-1:123456789012:crl/x",
            "crlId":"0123abcd-0000-0000-0000-000000000000","crlData":"{}","enabled":false,
            "name":"attache","trustAnchorArn":"arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/t",
            "createdAt":"2026-01-01T00:00:00Z","updatedAt":"2026-01-01T00:00:01.5Z"}}}}"#,
            B64.encode(SECRET_PEM)
        );
        let reply: CrlReply = serde_json::from_str(&json).unwrap();
        assert_eq!(reply.crl.crl_data, SECRET_PEM);
        assert!(!reply.crl.enabled);
        assert_eq!(
            reply.crl.updated_at.unwrap() - reply.crl.created_at.unwrap(),
            time::Duration::milliseconds(1500)
        );
        let d = format!("{:?}", reply.crl);
        assert!(
            d.contains(&format!("crl_data_len: {}", SECRET_PEM.len())) && !d.contains("SECRET"),
            "{d}"
        );
        let bad = json.replace(&B64.encode(SECRET_PEM), "not base64!");
        assert!(serde_json::from_str::<CrlReply>(&bad).is_err());
    }

    #[test]
    fn oversize_crls_are_refused_before_sending() {
        assert!(check_size(&vec![b'A'; MAX_CRL_BYTES], IMPORT_CRL).is_ok());
        let e = check_size(&vec![b'A'; MAX_CRL_BYTES + 1], UPDATE_CRL).unwrap_err();
        assert!(matches!(e, AwsError::CrlTooLarge { len, .. } if len == MAX_CRL_BYTES + 1));
        assert_eq!(
            CrlSync::Updated {
                crl_id: "x".into(),
                enabled_now: false
            }
            .crl_id(),
            "x"
        );
    }

    #[test]
    fn urls_join_the_endpoint_and_path() {
        let u = url("http://127.0.0.1:1/", "/crls", LIST_CRLS).unwrap();
        assert_eq!(u.as_str(), "http://127.0.0.1:1/crls");
        assert!(url("ftp://x", "/crls", LIST_CRLS).is_err());
        assert!(url("not a url", "/crls", LIST_CRLS).is_err());
    }
}
