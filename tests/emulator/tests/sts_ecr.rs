//! STS GetCallerIdentity and ECR GetAuthorizationToken: requests signed by the
//! `aws-sigv4` crate (as the AWS SDKs sign) with issued credentials succeed;
//! each SigV4 rule broken on its own is refused with AWS's error.

mod common;

use std::time::{Duration, SystemTime};

use attache_emulator::Emulator;
use attache_pki::sigv4;
use base64::Engine as _;
use common::*;

/// How STS refuses a signature that does not match: status and code.
const STS_MISMATCH: (u16, &str) = (403, "SignatureDoesNotMatch");
/// How ECR refuses a signature that does not match: status and code.
const ECR_MISMATCH: (u16, &str) = (400, "InvalidSignatureException");

/// Asserts STS and ECR both refuse `creds`, each with its own status and code
/// (`codes`: STS's, then ECR's) and `needle` in the message.
async fn assert_both_refuse(
    emu: &Emulator,
    creds: &Creds,
    case: &str,
    codes: [(u16, &str); 2],
    needle: &str,
) {
    let sts = sdk_signed(emu, creds, "sts", sts_request());
    let ecr = sdk_signed(emu, creds, "ecr", ecr_request());
    let (sts_case, ecr_case) = (format!("{case}, STS"), format!("{case}, ECR"));
    let cases = [
        (&*sts_case, sts, codes[0], needle),
        (&*ecr_case, ecr, codes[1], needle),
    ];
    assert_refusals(emu, cases).await;
}

/// `req` signed by hand with pki's SigV4 over exactly `signed_headers` (to
/// build requests a real SDK would never send).
fn hand_signed(
    creds: &Creds,
    host: &str,
    mut req: Req,
    service: &str,
    signed_headers: &[&str],
    with_token: bool,
) -> Req {
    let now = time::OffsetDateTime::now_utc();
    let amz_date = sigv4::format_amz_date(now);
    req.set("host", host);
    req.set("x-amz-date", &amz_date);
    if with_token {
        req.set("x-amz-security-token", &creds.session_token);
    }
    let names: Vec<String> = signed_headers.iter().map(|s| s.to_string()).collect();
    let hash = sigv4::sha256_hex(&req.body);
    let parts = sigv4::RequestParts {
        method: &req.method,
        path: &req.path,
        query: "",
        headers: &req.headers,
        payload_hash: &hash,
    };
    let (canonical, list) = sigv4::canonical_request(&parts, &names).unwrap();
    let scope = sigv4::credential_scope(&amz_date, REGION, service);
    let sts = sigv4::string_to_sign("AWS4-HMAC-SHA256", &amz_date, &scope, &canonical);
    let date = &amz_date[..8];
    let sig = sigv4::hmac_signature(&creds.secret_access_key, date, REGION, service, &sts);
    let key_id = &creds.access_key_id;
    let auth = sigv4::authorization_header("AWS4-HMAC-SHA256", key_id, &scope, &list, &sig);
    req.set("authorization", &auth);
    req
}

#[tokio::test]
async fn sts_accepts_sdk_signed_post_and_get() {
    let (emu, _, creds) = with_credentials().await;
    let a = sdk_send(&emu, &creds, "sts", sts_request()).await;
    assert_eq!(a.status, 200, "{a:?}");
    let serial_session = emu.sessions()[0].role_session_name.clone();
    assert_eq!(
        xml_tag(&a.body, "Arn").unwrap(),
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/app-role/{serial_session}")
    );
    assert!(xml_tag(&a.body, "UserId").unwrap().starts_with("AROA"));
    assert!(
        xml_tag(&a.body, "UserId")
            .unwrap()
            .ends_with(&format!(":{serial_session}"))
    );
    assert_eq!(xml_tag(&a.body, "Account").unwrap(), ACCOUNT);
    assert!(a.body.contains(
        "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">"
    ));
    let get = Req::new("GET", "/?Action=GetCallerIdentity&Version=2011-06-15");
    let a = sdk_send(&emu, &creds, "sts", get).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        emu.request_count(attache_emulator::Operation::GetCallerIdentity),
        2
    );
}

#[tokio::test]
async fn ecr_issues_a_twelve_hour_password_for_the_role() {
    let (emu, _, creds) = with_credentials().await;
    let a = sdk_send(&emu, &creds, "ecr", ecr_request()).await;
    assert_eq!(a.status, 200, "{a:?}");
    let v = a.json();
    let data = &v["authorizationData"][0];
    assert_eq!(
        data["proxyEndpoint"],
        format!("https://{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com")
    );
    let expires = data["expiresAt"].as_f64().unwrap();
    let in_12h =
        (time::OffsetDateTime::now_utc() + time::Duration::hours(12)).unix_timestamp() as f64;
    assert!((expires - in_12h).abs() < 10.0, "{expires} vs {in_12h}");
    let token = base64::engine::general_purpose::STANDARD
        .decode(data["authorizationToken"].as_str().unwrap())
        .unwrap();
    let token = String::from_utf8(token).unwrap();
    let password = token.strip_prefix("AWS:").unwrap();
    assert_eq!(emu.ecr_password_valid(password).as_deref(), Some(ROLE_ARN));
    assert_eq!(emu.ecr_password_valid("not-issued"), None);
    emu.faults().set_clock_skew(time::Duration::hours(13));
    assert_eq!(
        emu.ecr_password_valid(password),
        None,
        "expired passwords are invalid"
    );
    emu.faults().clear();

    let with_ids = |ids: &str| ecr_request().changed(|r| r.body = ids.as_bytes().to_vec());
    let two = with_ids(r#"{"registryIds":["111122223333","123456789012"]}"#);
    let a = sdk_send(&emu, &creds, "ecr", two).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.json()["authorizationData"][0]["proxyEndpoint"],
        format!("https://111122223333.dkr.ecr.{REGION}.amazonaws.com")
    );
    let nope = with_ids(r#"{"registryIds":["nope"]}"#);
    let a = sdk_send(&emu, &creds, "ecr", nope).await;
    a.assert_error(400, "InvalidParameterException", "registryIds");
}

/// A wrong secret key (bad signature) and an unknown access key id.
#[tokio::test]
async fn bad_signature_or_unknown_access_key_is_refused() {
    let (emu, _, creds) = with_credentials().await;
    let mut wrong_secret = creds.clone();
    wrong_secret.secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into();
    let mut unknown = creds;
    unknown.access_key_id = "ASIAUNKNOWNUNKNOWN00".into();
    let mismatch = "does not match the signature you provided";
    let invalid = "security token included in the request is invalid";
    let unknown_codes = [
        (403, "InvalidClientTokenId"),
        (400, "UnrecognizedClientException"),
    ];
    let cases = [
        (
            "bad signature",
            wrong_secret,
            [STS_MISMATCH, ECR_MISMATCH],
            mismatch,
        ),
        ("unknown access key", unknown, unknown_codes, invalid),
    ];
    for (case, creds, codes, needle) in cases {
        assert_both_refuse(&emu, &creds, case, codes, needle).await;
    }
}

#[tokio::test]
async fn tampered_body_or_header_is_refused() {
    let (emu, _, creds) = with_credentials().await;
    let sts = sdk_signed(&emu, &creds, "sts", sts_request());
    let ecr = sdk_signed(&emu, &creds, "ecr", ecr_request());
    let other_target = "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationTokens";
    let sts_body = sts.changed(|r| r.body.extend_from_slice(b"&Extra=1"));
    let ecr_target = ecr.clone().changed(|r| r.set("x-amz-target", other_target));
    let ecr_body = ecr.changed(|r| r.body = b"{ }".to_vec());
    let mismatch = "does not match the signature";
    let cases = [
        ("STS body", sts_body, STS_MISMATCH, mismatch),
        ("ECR target", ecr_target, ECR_MISMATCH, mismatch),
        ("ECR body", ecr_body, ECR_MISMATCH, mismatch),
    ];
    assert_refusals(&emu, cases).await;
}

#[tokio::test]
async fn wrong_or_missing_session_token_is_refused() {
    let (emu, _, creds) = with_credentials().await;
    let wrong = Creds {
        session_token: "forged".into(),
        ..creds.clone()
    };
    let forged = sdk_signed(&emu, &wrong, "sts", sts_request());
    let signed = ["content-type", "host", "x-amz-date"];
    let missing = hand_signed(&creds, &host_of(&emu), sts_request(), "sts", &signed, false);
    let invalid = (403, "InvalidClientTokenId");
    let not_its_key = "does not belong to this access key";
    let cases = [
        ("wrong token", forged, invalid, not_its_key),
        ("no token", missing, invalid, "need X-Amz-Security-Token"),
    ];
    assert_refusals(&emu, cases).await;
}

#[tokio::test]
async fn expired_session_token_is_refused() {
    let (emu, _, creds) = with_credentials().await;
    assert!(emu.expire_credentials(&creds.access_key_id));
    let sts = sdk_send(&emu, &creds, "sts", sts_request()).await;
    let needle = "security token included in the request is expired";
    sts.assert_error(403, "ExpiredToken", needle);
    let ecr = sdk_send(&emu, &creds, "ecr", ecr_request()).await;
    ecr.assert_error(400, "ExpiredTokenException", "expired");
}

#[tokio::test]
async fn credentials_expire_on_the_emulator_clock() {
    let ca = TestCa::new("test root");
    let emu = emulator(&ca).await;
    let creds = session(&emu, &ca, 900).await;
    // The request is signed at the skewed clock's time, so only expiry counts.
    let sts_at = |minutes: u64| {
        emu.faults()
            .set_clock_skew(time::Duration::minutes(minutes as i64));
        let mut req = sts_request();
        let at = SystemTime::now() + Duration::from_secs(minutes * 60);
        sdk_sign(&creds, "sts", REGION, &emu.url(), &mut req, at);
        req
    };
    send(&emu.url(), &sts_at(16))
        .await
        .assert_error(403, "ExpiredToken", "expired");
    assert_eq!(send(&emu.url(), &sts_at(14)).await.status, 200);
}

#[tokio::test]
async fn stale_signature_date_is_refused() {
    let (emu, _, creds) = with_credentials().await;
    let (url, now, ten_minutes) = (emu.url(), SystemTime::now(), Duration::from_secs(600));
    let mut stale = sts_request();
    sdk_sign(&creds, "sts", REGION, &url, &mut stale, now - ten_minutes);
    let mut early = ecr_request();
    sdk_sign(&creds, "ecr", REGION, &url, &mut early, now + ten_minutes);
    let cases = [
        ("stale", stale, STS_MISMATCH, "Signature expired"),
        ("future", early, ECR_MISMATCH, "Signature not yet current"),
    ];
    assert_refusals(&emu, cases).await;
}

#[tokio::test]
async fn wrong_region_or_service_is_refused() {
    let (emu, _, creds) = with_credentials().await;
    let (url, now) = (emu.url(), SystemTime::now());
    let mut region = sts_request();
    sdk_sign(&creds, "sts", "eu-west-1", &url, &mut region, now);
    let iam = sdk_signed(&emu, &creds, "iam", sts_request());
    let sts_for_ecr = sdk_signed(&emu, &creds, "sts", ecr_request());
    let cases = [
        ("region", region, STS_MISMATCH, "scoped to a valid region"),
        ("iam", iam, STS_MISMATCH, "scoped to correct service: 'sts'"),
        (
            "sts",
            sts_for_ecr,
            ECR_MISMATCH,
            "scoped to correct service: 'ecr'",
        ),
    ];
    assert_refusals(&emu, cases).await;
}

#[tokio::test]
async fn missing_signed_header_is_refused() {
    let (emu, _, creds) = with_credentials().await;
    let host = host_of(&emu);
    let sign = |req: Req, service: &str, headers: &[&str]| {
        hand_signed(&creds, &host, req, service, headers, true)
    };
    let all = ["content-type", "host", "x-amz-date", "x-amz-security-token"];
    let control = sign(sts_request(), "sts", &all);
    assert_eq!(
        send(&emu.url(), &control).await.status,
        200,
        "hand-signed control request"
    );
    // Each leaves `missing` out of SignedHeaders.
    let cases: [(&str, &str, &[&str]); 3] = [
        (
            "x-amz-security-token",
            "sts",
            &["content-type", "host", "x-amz-date"],
        ),
        (
            "host",
            "sts",
            &["content-type", "x-amz-date", "x-amz-security-token"],
        ),
        ("x-amz-date", "ecr", &["host", "x-amz-security-token"]),
    ];
    for (missing, service, signed) in cases {
        let (req, status_and_code) = match service {
            "sts" => (sts_request(), STS_MISMATCH),
            _ => (ecr_request(), ECR_MISMATCH),
        };
        let answer = send(&emu.url(), &sign(req, service, signed)).await;
        let needle = format!("'{missing}' must be a 'SignedHeader'");
        answer.assert_case(missing, status_and_code, &needle);
    }
}

#[tokio::test]
async fn unsigned_or_malformed_requests_are_refused() {
    let (emu, _, creds) = with_credentials().await;
    let bad_auth = "AWS4-HMAC-SHA256 Credential=x";
    let malformed = sts_request().changed(|r| r.set("authorization", bad_auth));
    let assume_role = b"Action=AssumeRole&Version=2011-06-15".to_vec();
    let assume_role = sts_request().changed(|r| r.body = assume_role);
    let json = ecr_request().changed(|r| r.set("content-type", "application/json"));
    let missing = "missing Authentication Token";
    let sts_missing = (403, "MissingAuthenticationToken");
    let ecr_missing = (400, "MissingAuthenticationTokenException");
    let cases = [
        ("unsigned STS", sts_request(), sts_missing, missing),
        ("unsigned ECR", ecr_request(), ecr_missing, missing),
        (
            "malformed",
            malformed,
            (400, "IncompleteSignature"),
            "Authorization header",
        ),
        (
            "AssumeRole",
            sdk_signed(&emu, &creds, "sts", assume_role),
            (400, "InvalidAction"),
            "AssumeRole",
        ),
        (
            "JSON",
            sdk_signed(&emu, &creds, "ecr", json),
            (400, "SerializationException"),
            "application/x-amz-json-1.1",
        ),
    ];
    assert_refusals(&emu, cases).await;
}

/// `req` for `host` (a real AWS endpoint) signed by `creds` for `service`.
fn signed_for_host(creds: &Creds, service: &str, host: &str, mut req: Req) -> Req {
    req.set("host", host);
    let url = format!("http://{host}");
    sdk_sign(creds, service, REGION, &url, &mut req, SystemTime::now());
    req
}

#[tokio::test]
async fn host_headers_of_real_endpoints_route_sts_and_ecr() {
    let (emu, _, creds) = with_credentials().await;
    // An STS request with no Action still reaches STS by its Host.
    let form = "application/x-www-form-urlencoded";
    let no_action = Req::new("POST", "/").changed(|r| {
        r.set("content-type", form);
        r.body = b"Version=2011-06-15".to_vec();
    });
    let sts = signed_for_host(&creds, "sts", "sts.us-east-1.amazonaws.com", no_action);
    let no_target = ecr_request().changed(|r| r.headers.retain(|(k, _)| k != "x-amz-target"));
    let ecr = signed_for_host(&creds, "ecr", "api.ecr.us-east-1.amazonaws.com", no_target);
    let cases = [
        ("STS", sts, (400, "MissingAction"), "Missing Action"),
        (
            "ECR",
            ecr,
            (400, "UnknownOperationException"),
            "Unknown operation",
        ),
    ];
    assert_refusals(&emu, cases).await;
}
