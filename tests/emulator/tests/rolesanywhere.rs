//! CreateSession: a correct request succeeds; a request breaking exactly one
//! rule AWS enforces is refused with AWS's error code and a message naming it.

mod common;

use std::time::Duration;

use attache_emulator::{Profile, SessionRecord};
use attache_pki::{CaOptions, CertificateAuthority, KeyType};
use common::*;
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Signs a correct request with `opts`, lets `tamper` change it, sends it.
async fn try_session(
    emu: &attache_emulator::Emulator,
    ca: &TestCa,
    opts: &LeafOpts,
    body: Vec<u8>,
    tamper: impl FnOnce(&mut Req),
) -> Answer {
    let signer = ca.leaf(opts);
    let mut req = signed_session_request(&signer, &host_of(emu), body, REGION, now());
    tamper(&mut req);
    send(&emu.url(), &req).await
}

/// [`try_session`] for `ROLE_ARN` with a leaf from `ca` made to `opts`.
async fn try_leaf(emu: &attache_emulator::Emulator, ca: &TestCa, opts: &LeafOpts) -> Answer {
    try_session(emu, ca, opts, session_body(ROLE_ARN, None), |_| {}).await
}

/// [`try_session`] of `body` with a default leaf from `ca`.
async fn try_body(emu: &attache_emulator::Emulator, ca: &TestCa, body: Vec<u8>) -> Answer {
    try_session(emu, ca, &LeafOpts::default(), body, |_| {}).await
}

/// The standard CreateSession, changed by `tamper` after signing.
async fn try_tampered(
    emu: &attache_emulator::Emulator,
    ca: &TestCa,
    tamper: impl FnOnce(&mut Req),
) -> Answer {
    let body = session_body(ROLE_ARN, None);
    try_session(emu, ca, &LeafOpts::default(), body, tamper).await
}

/// Replaces `from` with `to` in the Authorization header.
fn replace_in_authorization(r: &mut Req, from: &str, to: &str) {
    let auth = r.get("Authorization").replace(from, to);
    r.set("Authorization", &auth);
}

/// How CreateSession refuses a request breaking one of its rules.
const DENIED: (u16, &str) = (403, "AccessDeniedException");

/// Asserts a 403 AccessDeniedException whose message contains `needle`.
#[track_caller]
fn assert_denied(answer: &Answer, needle: &str) {
    answer.assert_error(403, "AccessDeniedException", needle);
}

#[tokio::test]
async fn workload_certificate_from_the_pki_ca_gets_credentials_and_is_recorded() {
    let ca = CertificateAuthority::create(&CaOptions::default(), now()).unwrap();
    let emu = emulator(&TestCa::new("unused")).await;
    emu.add_trust_anchor(TA_ARN, &ca.trust_anchor_pem(), true);
    let (cert, key) = workload_leaf(&ca, KeyType::EcdsaP256, Duration::from_secs(3600));
    let signer = attache_pki::X509Signer::new(cert.der.clone(), vec![], key).unwrap();
    let body = session_body(ROLE_ARN, Some(3600));
    let req = signed_session_request(&signer, &host_of(&emu), body, REGION, now());
    let answer = send(&emu.url(), &req).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let v = answer.json();
    let set = &v["credentialSet"][0];
    let hex_serial = serial_hex(&cert.der);
    assert_eq!(
        set["assumedRoleUser"]["arn"],
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/app-role/{hex_serial}")
    );
    assert!(
        set["assumedRoleUser"]["assumedRoleId"]
            .as_str()
            .unwrap()
            .starts_with("AROA")
    );
    assert_eq!(set["roleArn"], ROLE_ARN);
    assert_eq!(set["sourceIdentity"], "CN=app");
    assert_eq!(set["packedPolicySize"], 0);
    let c = &set["credentials"];
    assert!(c["accessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert_eq!(c["accessKeyId"].as_str().unwrap().len(), 20);
    assert_eq!(c["secretAccessKey"].as_str().unwrap().len(), 40);
    let exp = OffsetDateTime::parse(
        c["expiration"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!((exp - now() - time::Duration::hours(1)).abs() < time::Duration::seconds(10));
    assert!(v["subjectArn"].as_str().unwrap().starts_with(&format!(
        "arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:subject/"
    )));
    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 1);
    let SessionRecord {
        role_arn,
        profile_arn,
        trust_anchor_arn,
        certificate_serial,
        subject_cn,
        subject_ou,
        subject_o,
        san_uri,
        access_key_id,
        role_session_name,
        ..
    } = sessions[0].clone();
    assert_eq!(role_arn, ROLE_ARN);
    assert_eq!(profile_arn, PROFILE_ARN);
    assert_eq!(trust_anchor_arn, TA_ARN);
    assert_eq!(certificate_serial, cert.serial);
    assert_eq!(subject_cn.as_deref(), Some("app"));
    assert_eq!(subject_ou.as_deref(), Some("payments"));
    assert_eq!(subject_o.as_deref(), Some("cluster.local"));
    assert_eq!(san_uri.as_deref(), Some(SPIFFE_URI));
    assert_eq!(access_key_id, c["accessKeyId"].as_str().unwrap());
    assert_eq!(role_session_name, hex_serial);
}

#[tokio::test]
async fn p384_and_rsa_certificates_are_accepted() {
    let (emu, ca) = emulator_and_ca().await;
    for key_type in [KeyType::EcdsaP384, KeyType::Rsa2048] {
        let answer = try_leaf(&emu, &ca, &LeafOpts::with(|o| o.key_type = key_type)).await;
        assert_eq!(answer.status, 201, "{key_type}: {answer:?}");
    }
}

#[tokio::test]
async fn intermediate_chain_is_accepted_and_must_be_signed() {
    let (emu, root) = emulator_and_ca().await;
    let inter = root.intermediate("test intermediate");
    let signer = inter.leaf_with_chain(&LeafOpts::default(), vec![inter.der()]);
    assert_eq!(create_session(&emu, &signer).await.status, 201);

    // Without the chain the leaf does not reach the anchor.
    let lone = inter.leaf(&LeafOpts::default());
    assert_denied(
        &create_session(&emu, &lone).await,
        "Untrusted signing certificate",
    );

    // A chain header added after signing is refused as unsigned.
    let mut req = session_request_at(&emu, &lone, now());
    use base64::Engine as _;
    req.set(
        "X-Amz-X509-Chain",
        &base64::engine::general_purpose::STANDARD.encode(inter.der()),
    );
    let answer = send(&emu.url(), &req).await;
    assert_denied(&answer, "SignedHeaders must include 'x-amz-x509-chain'");
}

#[tokio::test]
async fn wrong_serial_in_credential_is_refused() {
    let (emu, ca) = emulator_and_ca().await;
    let answer = try_tampered(&emu, &ca, |r| {
        replace_in_authorization(r, "Credential=", "Credential=1");
    })
    .await;
    assert_denied(
        &answer,
        "does not match the X-Amz-X509 certificate's serial",
    );
}

#[tokio::test]
async fn stale_or_future_date_is_refused() {
    let (emu, ca) = emulator_and_ca().await;
    let signer = ca.leaf(&LeafOpts::default());
    for offset in [time::Duration::minutes(-6), time::Duration::minutes(6)] {
        let req = session_request_at(&emu, &signer, now() + offset);
        let answer = send(&emu.url(), &req).await;
        answer.assert_case(&format!("{offset}"), DENIED, "X-Amz-Date is stale");
    }
    let req = session_request_at(&emu, &signer, now() - time::Duration::minutes(4));
    assert_eq!(send(&emu.url(), &req).await.status, 201);
}

#[tokio::test]
async fn scope_date_must_equal_the_request_date() {
    let (emu, ca) = emulator_and_ca().await;
    let answer = try_tampered(&emu, &ca, |r| {
        let date = r.get("X-Amz-Date")[..8].to_string();
        replace_in_authorization(r, &format!("/{date}/"), "/20200101/");
    })
    .await;
    assert_denied(&answer, "does not match the X-Amz-Date date");
}

#[tokio::test]
async fn wrong_region_or_service_in_scope_is_refused() {
    let (emu, ca) = emulator_and_ca().await;
    let signer = ca.leaf(&LeafOpts::default());
    let host = host_of(&emu);
    let signed_for = |region: &str, service: &str| {
        let body = session_body(ROLE_ARN, None);
        signed_sessions_post(&signer, &host, json_content(), body, region, service, now())
    };
    let cases = [
        ("eu-west-1", "rolesanywhere", "region 'eu-west-1'"),
        (REGION, "sts", "service 'sts'"),
    ];
    for (region, service, needle) in cases {
        let answer = send(&emu.url(), &signed_for(region, service)).await;
        answer.assert_case(needle, DENIED, needle);
    }
}

#[tokio::test]
async fn tampered_body_or_signed_header_fails_the_signature() {
    let (emu, ca) = emulator_and_ca().await;
    let opts = LeafOpts::default();
    let body = try_session(&emu, &ca, &opts, session_body(ROLE_ARN, Some(900)), |r| {
        r.body = session_body(ROLE_ARN, Some(7200));
    })
    .await;
    let header = try_tampered(&emu, &ca, |r| {
        r.set("Content-Type", "application/json; charset=utf-8");
    })
    .await;
    for (case, answer) in [("body", body), ("header", header)] {
        answer.assert_case(case, DENIED, "Signature does not match");
    }
}

#[tokio::test]
async fn missing_signed_header_is_refused() {
    let (emu, ca) = emulator_and_ca().await;
    let signer = ca.leaf(&LeafOpts::default());
    let body = session_body(ROLE_ARN, None);
    // Signed without Content-Type, which is then sent unsigned.
    let host = host_of(&emu);
    let mut req =
        signed_sessions_post(&signer, &host, vec![], body, REGION, "rolesanywhere", now());
    req.headers
        .push(("Content-Type".into(), "application/json".into()));
    let answer = send(&emu.url(), &req).await;
    assert_denied(&answer, "SignedHeaders must include 'content-type'");
}

#[tokio::test]
async fn algorithm_must_match_the_key_type() {
    let (emu, ca) = emulator_and_ca().await;
    let cases = [
        (
            "AWS4-X509-RSA-SHA256",
            "does not match the certificate's ecdsa-p256 key",
        ),
        ("AWS4-HMAC-SHA256", "Unsupported signing algorithm"),
    ];
    for (algorithm, needle) in cases {
        let answer = try_tampered(&emu, &ca, |r| {
            replace_in_authorization(r, "AWS4-X509-ECDSA-SHA256", algorithm);
        })
        .await;
        answer.assert_case(algorithm, DENIED, needle);
    }
}

#[tokio::test]
async fn certificate_from_another_ca_or_anchor_is_refused() {
    let (emu, _) = emulator_and_ca().await;
    let stranger = TestCa::new("test root");
    let answer = try_leaf(&emu, &stranger, &LeafOpts::default()).await;
    answer.assert_case("another CA", DENIED, "Untrusted signing certificate");
    // A CA that is another configured anchor is not this profile's anchor.
    let other = TestCa::new("other root");
    let other_anchor = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/other";
    emu.add_trust_anchor(other_anchor, &other.pem(), true);
    let answer = try_leaf(&emu, &other, &LeafOpts::default()).await;
    let needle = "Untrusted signing certificate for trust anchor";
    answer.assert_case("another anchor", DENIED, needle);
}

#[tokio::test]
async fn expired_not_yet_valid_ca_or_non_signing_leaf_is_refused() {
    let (emu, ca) = emulator_and_ca().await;
    let valid = |from: i64, to: i64| {
        LeafOpts::with(|o| {
            o.not_before = now() + time::Duration::hours(from);
            o.not_after = now() + time::Duration::hours(to);
        })
    };
    let cases = [
        ("expired", valid(-3, -1), "validity period"),
        ("not yet valid", valid(1, 3), "validity period"),
        (
            "CA",
            LeafOpts::with(|o| o.is_ca = true),
            "end-entity certificate is a CA",
        ),
        (
            "no digitalSignature",
            LeafOpts::with(|o| o.digital_signature = false),
            "digitalSignature",
        ),
    ];
    for (case, opts, needle) in cases {
        try_leaf(&emu, &ca, &opts)
            .await
            .assert_case(case, DENIED, needle);
    }
}

#[tokio::test]
async fn role_not_in_profile_is_refused() {
    let (emu, ca) = emulator_and_ca().await;
    let answer = try_body(&emu, &ca, session_body(OTHER_ROLE_ARN, None)).await;
    assert_denied(&answer, "is not in profile");
}

#[tokio::test]
async fn trust_policy_conditions_must_hold() {
    let (emu, ca) = emulator_and_ca().await;
    let cases = [
        (
            LeafOpts::with(|o| o.cn = "intruder".into()),
            "aws:PrincipalTag/x509Subject/CN",
        ),
        (
            LeafOpts::with(|o| {
                o.uri = Some("spiffe://cluster.local/ns/payments/sa/intruder".into())
            }),
            "aws:PrincipalTag/x509SAN/URI",
        ),
        (
            LeafOpts::with(|o| (o.uri, o.dns) = (None, Some("app.example.com".into()))),
            "absent",
        ),
    ];
    for (opts, needle) in cases {
        try_leaf(&emu, &ca, &opts)
            .await
            .assert_case(needle, DENIED, needle);
    }
    let other_ns =
        LeafOpts::with(|o| o.uri = Some("spiffe://cluster.local/ns/billing/sa/app".into()));
    let ok = try_leaf(&emu, &ca, &other_ns).await;
    assert_eq!(ok.status, 201, "StringLike glob should match: {ok:?}");
}

#[tokio::test]
async fn duration_must_be_within_900_and_the_profile_cap() {
    let (emu, ca) = emulator_and_ca().await;
    for bad in [899, 7201, 43201, -1] {
        let answer = try_body(&emu, &ca, session_body(ROLE_ARN, Some(bad))).await;
        let case = format!("{bad}");
        answer.assert_case(&case, (400, "ValidationException"), "durationSeconds");
    }
    for good in [900, 7200] {
        let a = try_body(&emu, &ca, session_body(ROLE_ARN, Some(good))).await;
        assert_eq!(a.status, 201, "{good}: {a:?}");
    }
}

#[tokio::test]
async fn disabled_or_unknown_anchor_and_profile_are_refused() {
    let (emu, ca) = emulator_and_ca().await;
    let standard = || try_body(&emu, &ca, session_body(ROLE_ARN, None));
    emu.add_trust_anchor(TA_ARN, &ca.pem(), false);
    assert_denied(&standard().await, "is disabled");
    assert!(emu.set_trust_anchor_enabled(TA_ARN, true));
    let profile = Profile {
        duration_seconds: None,
        ..profile()
    };
    emu.add_profile(Profile {
        enabled: false,
        ..profile.clone()
    });
    let disabled = format!("Profile {PROFILE_ARN} is disabled");
    assert_denied(&standard().await, &disabled);
    emu.add_profile(profile);
    let body = String::from_utf8(session_body(ROLE_ARN, None)).unwrap();
    let unknown_ta = body.replace("trust-anchor/ta-1", "trust-anchor/nope");
    let answer = try_body(&emu, &ca, unknown_ta.into_bytes()).await;
    assert_denied(&answer, "trust-anchor/nope does not exist");
    let unknown_profile = body.replace("profile/p-1", "profile/nope");
    let answer = try_body(&emu, &ca, unknown_profile.into_bytes()).await;
    assert_denied(&answer, "profile/nope does not exist");
    assert_eq!(standard().await.status, 201);
}

#[tokio::test]
async fn role_session_name_only_when_the_profile_accepts_it() {
    let (emu, ca) = emulator_and_ca().await;
    let mut v: serde_json::Value = serde_json::from_slice(&session_body(ROLE_ARN, None)).unwrap();
    v["roleSessionName"] = "my-session".into();
    let body = serde_json::to_vec(&v).unwrap();
    try_body(&emu, &ca, body.clone()).await.assert_error(
        400,
        "ValidationException",
        "roleSessionName is not accepted",
    );
    emu.add_profile(Profile {
        duration_seconds: None,
        accept_role_session_name: true,
        ..profile()
    });
    let a = try_body(&emu, &ca, body).await;
    assert_eq!(a.status, 201, "{a:?}");
    assert!(
        a.json()["credentialSet"][0]["assumedRoleUser"]["arn"]
            .as_str()
            .unwrap()
            .ends_with("/app-role/my-session")
    );
    assert_eq!(emu.sessions()[0].role_session_name, "my-session");
}

type Tamper = Box<dyn FnOnce(&mut Req)>;

#[tokio::test]
async fn malformed_requests_are_refused_with_a_reason() {
    let (emu, ca) = emulator_and_ca().await;
    let cases: Vec<(&str, Tamper)> = vec![
        (
            "Missing Authorization",
            Box::new(|r: &mut Req| r.headers.retain(|(k, _)| k != "Authorization")),
        ),
        (
            "malformed Authorization",
            Box::new(|r: &mut Req| r.set("Authorization", "AWS4-X509-ECDSA-SHA256 garbage")),
        ),
        (
            "Missing X-Amz-Date",
            Box::new(|r: &mut Req| r.headers.retain(|(k, _)| k != "X-Amz-Date")),
        ),
        (
            "malformed X-Amz-Date",
            Box::new(|r: &mut Req| r.set("X-Amz-Date", "yesterday")),
        ),
        (
            "Missing X-Amz-X509",
            Box::new(|r: &mut Req| r.headers.retain(|(k, _)| k != "X-Amz-X509")),
        ),
        (
            "not base64",
            Box::new(|r: &mut Req| r.set("X-Amz-X509", "!!!")),
        ),
        (
            "not a usable certificate",
            Box::new(|r: &mut Req| r.set("X-Amz-X509", "AAAA")),
        ),
    ];
    for (needle, tamper) in cases {
        let answer = try_tampered(&emu, &ca, tamper).await;
        answer.assert_case(needle, DENIED, needle);
    }
    // A correctly signed body that is not a CreateSession request.
    try_body(&emu, &ca, b"{\"profileArn\": 1}".to_vec())
        .await
        .assert_error(400, "ValidationException", "Invalid request body");
}

#[tokio::test]
async fn host_header_of_the_real_endpoint_routes_to_roles_anywhere() {
    let (emu, ca) = emulator_and_ca().await;
    let signer = ca.leaf(&LeafOpts::default());
    let req = signed_session_request(
        &signer,
        "rolesanywhere.us-east-1.amazonaws.com",
        session_body(ROLE_ARN, None),
        REGION,
        now(),
    );
    let a = send(&emu.url(), &req).await;
    assert_eq!(a.status, 201, "{a:?}");
}
