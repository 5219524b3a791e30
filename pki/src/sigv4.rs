//! SigV4 canonical requests, strings to sign and `Authorization` headers: the
//! parts AWS's request signing shares between HMAC SigV4 and Roles Anywhere's
//! certificate-based `AWS4-X509-*` algorithms. Written by hand because
//! `aws-sigv4` keeps its canonical request private; its output is the
//! cross-check in the tests.

use aws_lc_rs::{digest, hmac};
use time::OffsetDateTime;
use time::macros::format_description;

/// Why a request's signature parts could not be built or read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// A header listed in `SignedHeaders` is not in the request.
    #[error("signed header {0:?} is missing from the request")]
    MissingSignedHeader(String),
    /// The `Authorization` header is not in SigV4 form.
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorization(String),
    /// `X-Amz-Date` is not `YYYYMMDD'T'HHMMSS'Z'`.
    #[error("malformed X-Amz-Date {0:?}: expected YYYYMMDDTHHMMSSZ")]
    MalformedDate(String),
}

/// `YYYYMMDD'T'HHMMSS'Z'`, the form of `X-Amz-Date`.
pub fn format_amz_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses an `X-Amz-Date` value.
pub fn parse_amz_date(s: &str) -> Result<OffsetDateTime, SigV4Error> {
    time::PrimitiveDateTime::parse(
        s,
        format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .map(|t| t.assume_utc())
    .map_err(|_| SigV4Error::MalformedDate(s.to_string()))
}

/// The credential scope `<yyyymmdd>/<region>/<service>/aws4_request`; `date`
/// is an `X-Amz-Date` value or its first 8 characters.
pub fn credential_scope(date: &str, region: &str, service: &str) -> String {
    let day = date.get(..8).unwrap_or(date);
    format!("{day}/{region}/{service}/aws4_request")
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// One HTTP request as it is (or will be) sent, for canonicalisation.
#[derive(Clone, Debug)]
pub struct RequestParts<'a> {
    /// Method, e.g. `POST`.
    pub method: &'a str,
    /// Path as sent on the wire (already percent-encoded), e.g. `/sessions`.
    pub path: &'a str,
    /// Raw query string without `?` (empty for none).
    pub query: &'a str,
    /// Every header of the request, any case; repeated names allowed.
    pub headers: &'a [(String, String)],
    /// Hex SHA-256 of the body (or `UNSIGNED-PAYLOAD` where a service allows it).
    pub payload_hash: &'a str,
}

/// Builds the SigV4 canonical request over `signed_headers` (lower-case names,
/// any order; they are sorted). Returns it and the `SignedHeaders` value.
pub fn canonical_request(
    req: &RequestParts<'_>,
    signed_headers: &[String],
) -> Result<(String, String), SigV4Error> {
    let mut names: Vec<String> = signed_headers
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    let mut out = String::with_capacity(
        256 + req
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>(),
    );
    out.push_str(req.method);
    out.push('\n');
    out.push_str(&canonical_uri(req.path));
    out.push('\n');
    out.push_str(&canonical_query(req.query));
    out.push('\n');
    for name in &names {
        let mut found = false;
        for (_, v) in req
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            if found {
                out.push(',');
            } else {
                out.push_str(name);
                out.push(':');
                found = true;
            }
            out.push_str(&collapse_spaces(v));
        }
        if !found {
            return Err(SigV4Error::MissingSignedHeader(name.clone()));
        }
        out.push('\n');
    }
    out.push('\n');
    let signed = names.join(";");
    out.push_str(&signed);
    out.push('\n');
    out.push_str(req.payload_hash);
    Ok((out, signed))
}

/// `<algorithm>\n<amz-date>\n<scope>\n<hex sha256(canonical request)>`.
pub fn string_to_sign(algorithm: &str, amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "{algorithm}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

/// The HMAC SigV4 signature (`AWS4-HMAC-SHA256`) of `string_to_sign`, hex.
pub fn hmac_signature(
    secret_access_key: &str,
    date: &str,
    region: &str,
    service: &str,
    string_to_sign: &str,
) -> String {
    let mac = |key: &[u8], data: &str| -> Vec<u8> {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data.as_bytes())
            .as_ref()
            .to_vec()
    };
    let k_date = mac(format!("AWS4{secret_access_key}").as_bytes(), date);
    let k_region = mac(&k_date, region);
    let k_service = mac(&k_region, service);
    let k_signing = mac(&k_service, "aws4_request");
    hex::encode(mac(&k_signing, string_to_sign))
}

/// A parsed `Authorization: <alg> Credential=..., SignedHeaders=..., Signature=...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// `AWS4-HMAC-SHA256`, `AWS4-X509-ECDSA-SHA256`, ...
    pub algorithm: String,
    /// The credential's first part: an access key id or a certificate serial.
    pub credential_id: String,
    /// `yyyymmdd` from the scope.
    pub date: String,
    /// Region from the scope.
    pub region: String,
    /// Service from the scope.
    pub service: String,
    /// Lower-case header names, in the order given.
    pub signed_headers: Vec<String>,
    /// Hex signature.
    pub signature: String,
}

impl Authorization {
    /// Parses the header value.
    pub fn parse(value: &str) -> Result<Self, SigV4Error> {
        let bad = |why: &str| SigV4Error::MalformedAuthorization(why.to_string());
        let (algorithm, rest) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| bad("no algorithm"))?;
        let mut credential = None;
        let mut signed = None;
        let mut signature = None;
        for part in rest.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| bad("expected key=value parts"))?;
            match k {
                "Credential" => credential = Some(v),
                "SignedHeaders" => signed = Some(v),
                "Signature" => signature = Some(v),
                other => return Err(bad(&format!("unknown part {other:?}"))),
            }
        }
        let credential = credential.ok_or_else(|| bad("Credential is missing"))?;
        let scope: Vec<&str> = credential.split('/').collect();
        let [id, date, region, service, terminator] = scope.as_slice() else {
            return Err(bad(
                "Credential must be <id>/<date>/<region>/<service>/aws4_request",
            ));
        };
        if *terminator != "aws4_request" {
            return Err(bad("Credential scope must end in aws4_request"));
        }
        let signed_headers: Vec<String> = signed
            .ok_or_else(|| bad("SignedHeaders is missing"))?
            .split(';')
            .map(str::to_string)
            .collect();
        if signed_headers
            .iter()
            .any(|h| h.is_empty() || *h != h.to_ascii_lowercase())
        {
            return Err(bad(
                "SignedHeaders must be lower-case names separated by ';'",
            ));
        }
        let signature = signature.ok_or_else(|| bad("Signature is missing"))?;
        if signature.is_empty() || !signature.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("Signature must be hex"));
        }
        Ok(Authorization {
            algorithm: algorithm.to_string(),
            credential_id: id.to_string(),
            date: date.to_string(),
            region: region.to_string(),
            service: service.to_string(),
            signed_headers,
            signature: signature.to_string(),
        })
    }

    /// The credential scope this header claims.
    pub fn scope(&self) -> String {
        credential_scope(&self.date, &self.region, &self.service)
    }
}

/// Builds the header value.
pub fn authorization_header(
    algorithm: &str,
    credential_id: &str,
    scope: &str,
    signed_headers: &str,
    signature: &str,
) -> String {
    format!(
        "{algorithm} Credential={credential_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// Percent-encodes every byte but the RFC 3986 unreserved set.
pub fn uri_encode(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if is_unreserved(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes (a malformed escape is kept as is; `+` is not a space,
/// as in SigV4's query canonicalisation).
pub fn percent_decode(s: &str) -> Vec<u8> {
    let hex_val = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(hi), Some(lo)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The canonical URI for every service but S3: dot segments removed, then each
/// segment of the wire path encoded once more (AWS's "double encoding").
fn canonical_uri(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(
        &segments
            .iter()
            .map(|s| uri_encode(s.as_bytes()))
            .collect::<Vec<_>>()
            .join("/"),
    );
    out
}

fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k)),
                uri_encode(&percent_decode(v)),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Trims and collapses runs of whitespace, borrowing when nothing changes
/// (the common case, and the `X-Amz-X509` value is large).
fn collapse_spaces(v: &str) -> std::borrow::Cow<'_, str> {
    // One pass: clean when no whitespace but single inner spaces.
    let mut prev_space = true; // a leading space is not clean
    let mut clean = true;
    for &c in v.as_bytes() {
        if c.is_ascii_whitespace() {
            if c != b' ' || prev_space {
                clean = false;
                break;
            }
            prev_space = true;
        } else {
            prev_space = false;
        }
    }
    if clean && (v.is_empty() || !prev_space) {
        std::borrow::Cow::Borrowed(v)
    } else {
        std::borrow::Cow::Owned(v.split_whitespace().collect::<Vec<_>>().join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's published SigV4 example (IAM ListUsers, "Create a canonical request
    // for Signature Version 4" in the IAM user guide): secret key
    // wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY, 20150830T123600Z, us-east-1/iam.
    #[test]
    fn matches_aws_published_sigv4_example() {
        let headers = vec![
            ("Host".to_string(), "iam.amazonaws.com".to_string()),
            (
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded; charset=utf-8".to_string(),
            ),
            ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
        ];
        let req = RequestParts {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            payload_hash: &sha256_hex(b""),
        };
        let (canonical, signed) = canonical_request(
            &req,
            &["content-type".into(), "host".into(), "x-amz-date".into()],
        )
        .unwrap();
        assert_eq!(signed, "content-type;host;x-amz-date");
        assert_eq!(
            sha256_hex(canonical.as_bytes()),
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
        );
        let sts = string_to_sign(
            "AWS4-HMAC-SHA256",
            "20150830T123600Z",
            "20150830/us-east-1/iam/aws4_request",
            &canonical,
        );
        assert_eq!(
            hmac_signature(
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "20150830",
                "us-east-1",
                "iam",
                &sts
            ),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn canonical_uri_and_query_follow_aws_rules() {
        for (path, canonical) in [
            ("", "/"),
            ("/sessions", "/sessions"),
            ("/a/./b/../c%20d", "/a/c%2520d"),
        ] {
            assert_eq!(canonical_uri(path), canonical, "{path:?}");
        }
        for (query, canonical) in [
            ("b=2&a=%2F&a=1&c", "a=%2F&a=1&b=2&c="),
            ("k=a b", "k=a%20b"),
        ] {
            assert_eq!(canonical_query(query), canonical, "{query:?}");
        }
    }

    #[test]
    fn authorization_round_trips_and_rejects_garbage() {
        let h = authorization_header(
            "AWS4-X509-ECDSA-SHA256",
            "1234",
            "20240101/us-east-1/rolesanywhere/aws4_request",
            "content-type;host",
            "abcdef",
        );
        let a = Authorization::parse(&h).unwrap();
        assert_eq!(a.credential_id, "1234");
        assert_eq!(a.region, "us-east-1");
        assert_eq!(a.service, "rolesanywhere");
        assert_eq!(a.signed_headers, ["content-type", "host"]);
        assert_eq!(a.scope(), "20240101/us-east-1/rolesanywhere/aws4_request");
        for bad in [
            "",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d, SignedHeaders=host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=Host, Signature=00",
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=xyz",
        ] {
            assert!(Authorization::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn header_values_are_trimmed_and_collapsed() {
        assert!(matches!(
            collapse_spaces("a b"),
            std::borrow::Cow::Borrowed(_)
        ));
        for (value, collapsed) in [
            ("a b", "a b"),
            (" a  b\t", "a b"),
            ("a\tb", "a b"),
            ("a ", "a"),
            ("", ""),
        ] {
            assert_eq!(collapse_spaces(value), collapsed, "{value:?}");
        }
    }

    #[test]
    fn amz_date_round_trips() {
        let t = parse_amz_date("20240229T235959Z").unwrap();
        assert_eq!(format_amz_date(t), "20240229T235959Z");
        assert!(parse_amz_date("2024-02-29T23:59:59Z").is_err());
    }
}
