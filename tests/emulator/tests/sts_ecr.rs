//! STS GetCallerIdentity and ECR GetAuthorizationToken: requests signed by the
//! `aws-sigv4` crate (as the AWS SDKs sign) with issued credentials succeed;
//! each SigV4 rule broken on its own is refused with AWS's error.

mod common;

use std::time::{Duration, SystemTime};

use attache_pki::sigv4;
use base64::Engine as _;
use common::*;

async fn setup() -> (attache_emulator::Emulator, Creds) {
    let ca = TestCa::new("test root");
    let emu = emulator(&ca).await;
    let creds = session(&emu, &ca, 3600).await;
    (emu, creds)
}

async fn signed(
    emu: &attache_emulator::Emulator,
    creds: &Creds,
    service: &str,
    mut req: Req,
) -> Answer {
    sdk_sign(
        creds,
        service,
        REGION,
        &emu.url(),
        &mut req,
        SystemTime::now(),
    );
    send(&emu.url(), &req).await
}

/// Signs by hand with pki's SigV4 over exactly `signed_headers` (to build
/// requests a real SDK would never send).
fn hand_sign(
    creds: &Creds,
    host: &str,
    req: &mut Req,
    service: &str,
    signed_headers: &[&str],
    with_token: bool,
) {
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
    let sig = sigv4::hmac_signature(
        &creds.secret_access_key,
        &amz_date[..8],
        REGION,
        service,
        &sts,
    );
    req.set(
        "authorization",
        &sigv4::authorization_header(
            "AWS4-HMAC-SHA256",
            &creds.access_key_id,
            &scope,
            &list,
            &sig,
        ),
    );
}

#[tokio::test]
async fn sts_accepts_sdk_signed_post_and_get() {
    let (emu, creds) = setup().await;
    let a = signed(&emu, &creds, "sts", sts_request()).await;
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
    let get = Req {
        method: "GET".into(),
        path: "/?Action=GetCallerIdentity&Version=2011-06-15".into(),
        headers: vec![],
        body: vec![],
    };
    let a = signed(&emu, &creds, "sts", get).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        emu.request_count(attache_emulator::Operation::GetCallerIdentity),
        2
    );
}

#[tokio::test]
async fn ecr_issues_a_twelve_hour_password_for_the_role() {
    let (emu, creds) = setup().await;
    let a = signed(&emu, &creds, "ecr", ecr_request()).await;
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

    let mut req = ecr_request();
    req.body = br#"{"registryIds":["111122223333","123456789012"]}"#.to_vec();
    let a = signed(&emu, &creds, "ecr", req).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.json()["authorizationData"][0]["proxyEndpoint"],
        format!("https://111122223333.dkr.ecr.{REGION}.amazonaws.com")
    );
    let mut req = ecr_request();
    req.body = br#"{"registryIds":["nope"]}"#.to_vec();
    signed(&emu, &creds, "ecr", req).await.assert_error(
        400,
        "InvalidParameterException",
        "registryIds",
    );
}

#[tokio::test]
async fn bad_signature_is_refused() {
    let (emu, creds) = setup().await;
    let wrong = Creds {
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
        ..creds.clone()
    };
    signed(&emu, &wrong, "sts", sts_request())
        .await
        .assert_error(
            403,
            "SignatureDoesNotMatch",
            "does not match the signature you provided",
        );
    signed(&emu, &wrong, "ecr", ecr_request())
        .await
        .assert_error(
            400,
            "InvalidSignatureException",
            "does not match the signature you provided",
        );
}

#[tokio::test]
async fn tampered_body_or_header_is_refused() {
    let (emu, creds) = setup().await;
    let mut req = sts_request();
    sdk_sign(
        &creds,
        "sts",
        REGION,
        &emu.url(),
        &mut req,
        SystemTime::now(),
    );
    req.body.extend_from_slice(b"&Extra=1");
    send(&emu.url(), &req).await.assert_error(
        403,
        "SignatureDoesNotMatch",
        "does not match the signature",
    );
    let mut req = ecr_request();
    sdk_sign(
        &creds,
        "ecr",
        REGION,
        &emu.url(),
        &mut req,
        SystemTime::now(),
    );
    req.set(
        "x-amz-target",
        "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationTokens",
    );
    send(&emu.url(), &req).await.assert_error(
        400,
        "InvalidSignatureException",
        "does not match the signature",
    );
    let mut req = ecr_request();
    sdk_sign(
        &creds,
        "ecr",
        REGION,
        &emu.url(),
        &mut req,
        SystemTime::now(),
    );
    req.body = b"{ }".to_vec();
    send(&emu.url(), &req).await.assert_error(
        400,
        "InvalidSignatureException",
        "does not match the signature",
    );
}

#[tokio::test]
async fn unknown_access_key_is_refused() {
    let (emu, creds) = setup().await;
    let unknown = Creds {
        access_key_id: "ASIAUNKNOWNUNKNOWN00".into(),
        ..creds
    };
    signed(&emu, &unknown, "sts", sts_request())
        .await
        .assert_error(
            403,
            "InvalidClientTokenId",
            "security token included in the request is invalid",
        );
    signed(&emu, &unknown, "ecr", ecr_request())
        .await
        .assert_error(
            400,
            "UnrecognizedClientException",
            "security token included in the request is invalid",
        );
}

#[tokio::test]
async fn wrong_or_missing_session_token_is_refused() {
    let (emu, creds) = setup().await;
    let wrong = Creds {
        session_token: "forged".into(),
        ..creds.clone()
    };
    signed(&emu, &wrong, "sts", sts_request())
        .await
        .assert_error(
            403,
            "InvalidClientTokenId",
            "does not belong to this access key",
        );
    let host = emu.local_addr().to_string();
    let mut req = sts_request();
    hand_sign(
        &creds,
        &host,
        &mut req,
        "sts",
        &["content-type", "host", "x-amz-date"],
        false,
    );
    send(&emu.url(), &req).await.assert_error(
        403,
        "InvalidClientTokenId",
        "need X-Amz-Security-Token",
    );
}

#[tokio::test]
async fn expired_session_token_is_refused() {
    let (emu, creds) = setup().await;
    assert!(emu.expire_credentials(&creds.access_key_id));
    signed(&emu, &creds, "sts", sts_request())
        .await
        .assert_error(
            403,
            "ExpiredToken",
            "security token included in the request is expired",
        );
    signed(&emu, &creds, "ecr", ecr_request())
        .await
        .assert_error(400, "ExpiredTokenException", "expired");
}

#[tokio::test]
async fn credentials_expire_on_the_emulator_clock() {
    let ca = TestCa::new("test root");
    let emu = emulator(&ca).await;
    let creds = session(&emu, &ca, 900).await;
    emu.faults().set_clock_skew(time::Duration::minutes(16));
    let mut req = sts_request();
    let later = SystemTime::now() + Duration::from_secs(16 * 60);
    sdk_sign(&creds, "sts", REGION, &emu.url(), &mut req, later);
    send(&emu.url(), &req)
        .await
        .assert_error(403, "ExpiredToken", "expired");
    emu.faults().set_clock_skew(time::Duration::minutes(14));
    let mut req = sts_request();
    sdk_sign(
        &creds,
        "sts",
        REGION,
        &emu.url(),
        &mut req,
        SystemTime::now() + Duration::from_secs(14 * 60),
    );
    assert_eq!(send(&emu.url(), &req).await.status, 200);
}

#[tokio::test]
async fn stale_signature_date_is_refused() {
    let (emu, creds) = setup().await;
    let mut req = sts_request();
    sdk_sign(
        &creds,
        "sts",
        REGION,
        &emu.url(),
        &mut req,
        SystemTime::now() - Duration::from_secs(600),
    );
    send(&emu.url(), &req)
        .await
        .assert_error(403, "SignatureDoesNotMatch", "Signature expired");
    let mut req = ecr_request();
    sdk_sign(
        &creds,
        "ecr",
        REGION,
        &emu.url(),
        &mut req,
        SystemTime::now() + Duration::from_secs(600),
    );
    send(&emu.url(), &req).await.assert_error(
        400,
        "InvalidSignatureException",
        "Signature not yet current",
    );
}

#[tokio::test]
async fn wrong_region_or_service_is_refused() {
    let (emu, creds) = setup().await;
    let mut req = sts_request();
    sdk_sign(
        &creds,
        "sts",
        "eu-west-1",
        &emu.url(),
        &mut req,
        SystemTime::now(),
    );
    send(&emu.url(), &req).await.assert_error(
        403,
        "SignatureDoesNotMatch",
        "scoped to a valid region",
    );
    signed(&emu, &creds, "iam", sts_request())
        .await
        .assert_error(
            403,
            "SignatureDoesNotMatch",
            "scoped to correct service: 'sts'",
        );
    signed(&emu, &creds, "sts", ecr_request())
        .await
        .assert_error(
            400,
            "InvalidSignatureException",
            "scoped to correct service: 'ecr'",
        );
}

#[tokio::test]
async fn missing_signed_header_is_refused() {
    let (emu, creds) = setup().await;
    let host = emu.local_addr().to_string();
    let all = ["content-type", "host", "x-amz-date", "x-amz-security-token"];
    let mut req = sts_request();
    hand_sign(&creds, &host, &mut req, "sts", &all, true);
    assert_eq!(
        send(&emu.url(), &req).await.status,
        200,
        "hand-signed control request"
    );
    let mut req = sts_request();
    hand_sign(
        &creds,
        &host,
        &mut req,
        "sts",
        &["content-type", "host", "x-amz-date"],
        true,
    );
    send(&emu.url(), &req).await.assert_error(
        403,
        "SignatureDoesNotMatch",
        "'x-amz-security-token' must be a 'SignedHeader'",
    );
    let mut req = sts_request();
    hand_sign(
        &creds,
        &host,
        &mut req,
        "sts",
        &["content-type", "x-amz-date", "x-amz-security-token"],
        true,
    );
    send(&emu.url(), &req).await.assert_error(
        403,
        "SignatureDoesNotMatch",
        "'host' must be a 'SignedHeader'",
    );
    let mut req = ecr_request();
    hand_sign(
        &creds,
        &host,
        &mut req,
        "ecr",
        &["host", "x-amz-security-token"],
        true,
    );
    send(&emu.url(), &req).await.assert_error(
        400,
        "InvalidSignatureException",
        "'x-amz-date' must be a 'SignedHeader'",
    );
}

#[tokio::test]
async fn unsigned_or_malformed_requests_are_refused() {
    let (emu, creds) = setup().await;
    send(&emu.url(), &sts_request()).await.assert_error(
        403,
        "MissingAuthenticationToken",
        "missing Authentication Token",
    );
    send(&emu.url(), &ecr_request()).await.assert_error(
        400,
        "MissingAuthenticationTokenException",
        "missing Authentication Token",
    );
    let mut req = sts_request();
    req.set("authorization", "AWS4-HMAC-SHA256 Credential=x");
    send(&emu.url(), &req)
        .await
        .assert_error(400, "IncompleteSignature", "Authorization header");
    let mut req = sts_request();
    req.body = b"Action=AssumeRole&Version=2011-06-15".to_vec();
    signed(&emu, &creds, "sts", req)
        .await
        .assert_error(400, "InvalidAction", "AssumeRole");
    let mut req = ecr_request();
    req.set("content-type", "application/json");
    signed(&emu, &creds, "ecr", req).await.assert_error(
        400,
        "SerializationException",
        "application/x-amz-json-1.1",
    );
}

#[tokio::test]
async fn host_headers_of_real_endpoints_route_sts_and_ecr() {
    let (emu, creds) = setup().await;
    // An STS request with no Action still reaches STS by its Host.
    let mut req = Req {
        method: "POST".into(),
        path: "/".into(),
        headers: vec![
            ("host".into(), "sts.us-east-1.amazonaws.com".into()),
            (
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
        ],
        body: b"Version=2011-06-15".to_vec(),
    };
    sdk_sign(
        &creds,
        "sts",
        REGION,
        "http://sts.us-east-1.amazonaws.com",
        &mut req,
        SystemTime::now(),
    );
    send(&emu.url(), &req)
        .await
        .assert_error(400, "MissingAction", "Missing Action");
    let mut req = ecr_request();
    req.headers.retain(|(k, _)| k != "x-amz-target");
    req.set("host", "api.ecr.us-east-1.amazonaws.com");
    sdk_sign(
        &creds,
        "ecr",
        REGION,
        "http://api.ecr.us-east-1.amazonaws.com",
        &mut req,
        SystemTime::now(),
    );
    send(&emu.url(), &req).await.assert_error(
        400,
        "UnknownOperationException",
        "Unknown operation",
    );
}
