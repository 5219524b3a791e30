//! CreateSession: a correct request succeeds; a request breaking exactly one
//! rule AWS enforces is refused with AWS's error code and a message naming it.

mod common;

use attache_emulator::{Profile, SessionRecord};
use attache_pki::{
    CaOptions, CertificateAuthority, KeyType, PrivateKey, VerifiedCsr, WorkloadIdentity,
};
use common::*;
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

async fn setup() -> (attache_emulator::Emulator, TestCa) {
    let ca = TestCa::new("test root");
    let emu = emulator(&ca).await;
    (emu, ca)
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

#[tokio::test]
async fn workload_certificate_from_the_pki_ca_gets_credentials_and_is_recorded() {
    let ca = CertificateAuthority::create(&CaOptions::default(), now()).unwrap();
    let emu = emulator(&TestCa::new("unused")).await;
    emu.add_trust_anchor(TA_ARN, &ca.trust_anchor_pem(), true);
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
    let id = WorkloadIdentity::new("cluster.local", "payments", "app").unwrap();
    let cert = ca
        .issue_workload(&csr, &id, std::time::Duration::from_secs(3600), now())
        .unwrap();
    let signer = attache_pki::X509Signer::new(cert.der.clone(), vec![], key).unwrap();
    let req = signed_session_request(
        &signer,
        &host_of(&emu),
        session_body(ROLE_ARN, Some(3600)),
        REGION,
        now(),
    );
    let answer = send(&emu.url(), &req).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let v = answer.json();
    let set = &v["credentialSet"][0];
    let serial_hex = num_to_hex(&cert.serial);
    assert_eq!(
        set["assumedRoleUser"]["arn"],
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/app-role/{serial_hex}")
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
    assert_eq!(role_session_name, serial_hex);
}

/// Decimal string to lower-case hex (the default session name).
fn num_to_hex(decimal: &str) -> String {
    let mut digits: Vec<u32> = decimal.bytes().map(|b| u32::from(b - b'0')).collect();
    let mut out = Vec::new();
    while !(digits.is_empty() || digits.iter().all(|d| *d == 0)) {
        let mut rem = 0;
        let mut next = Vec::new();
        for d in &digits {
            let cur = rem * 10 + d;
            let q = cur / 16;
            rem = cur % 16;
            if !(next.is_empty() && q == 0) {
                next.push(q);
            }
        }
        out.push(std::char::from_digit(rem, 16).unwrap());
        digits = next;
    }
    out.iter().rev().collect()
}

#[tokio::test]
async fn p384_and_rsa_certificates_are_accepted() {
    let (emu, ca) = setup().await;
    for key_type in [KeyType::EcdsaP384, KeyType::Rsa2048] {
        let opts = LeafOpts {
            key_type,
            ..LeafOpts::default()
        };
        let answer = try_session(&emu, &ca, &opts, session_body(ROLE_ARN, None), |_| {}).await;
        assert_eq!(answer.status, 201, "{key_type}: {answer:?}");
    }
}

#[tokio::test]
async fn intermediate_chain_is_accepted_and_must_be_signed() {
    let (emu, root) = setup().await;
    let inter = root.intermediate("test intermediate");
    let signer = inter.leaf_with_chain(&LeafOpts::default(), vec![inter.der()]);
    let req = signed_session_request(
        &signer,
        &host_of(&emu),
        session_body(ROLE_ARN, None),
        REGION,
        now(),
    );
    assert_eq!(send(&emu.url(), &req).await.status, 201);

    // Without the chain the leaf does not reach the anchor.
    let lone = inter.leaf(&LeafOpts::default());
    let req = signed_session_request(
        &lone,
        &host_of(&emu),
        session_body(ROLE_ARN, None),
        REGION,
        now(),
    );
    send(&emu.url(), &req).await.assert_error(
        403,
        "AccessDeniedException",
        "Untrusted signing certificate",
    );

    // A chain header added after signing is refused as unsigned.
    let mut req = signed_session_request(
        &lone,
        &host_of(&emu),
        session_body(ROLE_ARN, None),
        REGION,
        now(),
    );
    use base64::Engine as _;
    req.set(
        "X-Amz-X509-Chain",
        &base64::engine::general_purpose::STANDARD.encode(inter.der()),
    );
    send(&emu.url(), &req).await.assert_error(
        403,
        "AccessDeniedException",
        "SignedHeaders must include 'x-amz-x509-chain'",
    );
}

#[tokio::test]
async fn wrong_serial_in_credential_is_refused() {
    let (emu, ca) = setup().await;
    let answer = try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        session_body(ROLE_ARN, None),
        |r| {
            let auth = r.get("Authorization");
            let fixed = auth.replacen("Credential=", "Credential=1", 1);
            r.set("Authorization", &fixed);
        },
    )
    .await;
    answer.assert_error(
        403,
        "AccessDeniedException",
        "does not match the X-Amz-X509 certificate's serial",
    );
}

#[tokio::test]
async fn stale_or_future_date_is_refused() {
    let (emu, ca) = setup().await;
    let signer = ca.leaf(&LeafOpts::default());
    for offset in [time::Duration::minutes(-6), time::Duration::minutes(6)] {
        let req = signed_session_request(
            &signer,
            &host_of(&emu),
            session_body(ROLE_ARN, None),
            REGION,
            now() + offset,
        );
        send(&emu.url(), &req).await.assert_error(
            403,
            "AccessDeniedException",
            "X-Amz-Date is stale",
        );
    }
    let req = signed_session_request(
        &signer,
        &host_of(&emu),
        session_body(ROLE_ARN, None),
        REGION,
        now() - time::Duration::minutes(4),
    );
    assert_eq!(send(&emu.url(), &req).await.status, 201);
}

#[tokio::test]
async fn scope_date_must_equal_the_request_date() {
    let (emu, ca) = setup().await;
    let answer = try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        session_body(ROLE_ARN, None),
        |r| {
            let auth = r.get("Authorization");
            let date = &r.get("X-Amz-Date")[..8];
            r.set(
                "Authorization",
                &auth.replace(&format!("/{date}/"), "/20200101/"),
            );
        },
    )
    .await;
    answer.assert_error(
        403,
        "AccessDeniedException",
        "does not match the X-Amz-Date date",
    );
}

#[tokio::test]
async fn wrong_region_or_service_in_scope_is_refused() {
    let (emu, ca) = setup().await;
    let signer = ca.leaf(&LeafOpts::default());
    let req = signed_session_request(
        &signer,
        &host_of(&emu),
        session_body(ROLE_ARN, None),
        "eu-west-1",
        now(),
    );
    send(&emu.url(), &req)
        .await
        .assert_error(403, "AccessDeniedException", "region 'eu-west-1'");
    let content = vec![("Content-Type".to_string(), "application/json".to_string())];
    let body = session_body(ROLE_ARN, None);
    let signed = signer
        .sign(
            "POST",
            &host_of(&emu),
            "/sessions",
            "",
            &content,
            &body,
            REGION,
            "sts",
            now(),
        )
        .unwrap();
    let mut headers = content;
    headers.extend(signed.headers);
    let req = Req {
        method: "POST".into(),
        path: "/sessions".into(),
        headers,
        body,
    };
    send(&emu.url(), &req)
        .await
        .assert_error(403, "AccessDeniedException", "service 'sts'");
}

#[tokio::test]
async fn tampered_body_fails_the_signature() {
    let (emu, ca) = setup().await;
    let answer = try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        session_body(ROLE_ARN, Some(900)),
        |r| {
            r.body = session_body(ROLE_ARN, Some(7200));
        },
    )
    .await;
    answer.assert_error(403, "AccessDeniedException", "Signature does not match");
}

#[tokio::test]
async fn tampered_signed_header_fails_the_signature() {
    let (emu, ca) = setup().await;
    let answer = try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        session_body(ROLE_ARN, None),
        |r| {
            r.set("Content-Type", "application/json; charset=utf-8");
        },
    )
    .await;
    answer.assert_error(403, "AccessDeniedException", "Signature does not match");
}

#[tokio::test]
async fn missing_signed_header_is_refused() {
    let (emu, ca) = setup().await;
    let signer = ca.leaf(&LeafOpts::default());
    let body = session_body(ROLE_ARN, None);
    // Signed without Content-Type, which is then sent unsigned.
    let signed = signer
        .sign(
            "POST",
            &host_of(&emu),
            "/sessions",
            "",
            &[],
            &body,
            REGION,
            "rolesanywhere",
            now(),
        )
        .unwrap();
    let mut headers = signed.headers;
    headers.push(("Content-Type".into(), "application/json".into()));
    let req = Req {
        method: "POST".into(),
        path: "/sessions".into(),
        headers,
        body,
    };
    send(&emu.url(), &req).await.assert_error(
        403,
        "AccessDeniedException",
        "SignedHeaders must include 'content-type'",
    );
}

#[tokio::test]
async fn algorithm_must_match_the_key_type() {
    let (emu, ca) = setup().await;
    let answer = try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        session_body(ROLE_ARN, None),
        |r| {
            let auth = r
                .get("Authorization")
                .replace("AWS4-X509-ECDSA-SHA256", "AWS4-X509-RSA-SHA256");
            r.set("Authorization", &auth);
        },
    )
    .await;
    answer.assert_error(
        403,
        "AccessDeniedException",
        "does not match the certificate's ecdsa-p256 key",
    );
    let answer = try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        session_body(ROLE_ARN, None),
        |r| {
            let auth = r
                .get("Authorization")
                .replace("AWS4-X509-ECDSA-SHA256", "AWS4-HMAC-SHA256");
            r.set("Authorization", &auth);
        },
    )
    .await;
    answer.assert_error(
        403,
        "AccessDeniedException",
        "Unsupported signing algorithm",
    );
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let (emu, _) = setup().await;
    let stranger = TestCa::new("test root");
    let answer = try_session(
        &emu,
        &stranger,
        &LeafOpts::default(),
        session_body(ROLE_ARN, None),
        |_| {},
    )
    .await;
    answer.assert_error(
        403,
        "AccessDeniedException",
        "Untrusted signing certificate",
    );
}

#[tokio::test]
async fn certificate_chaining_to_another_configured_anchor_is_refused() {
    let (emu, _) = setup().await;
    let other = TestCa::new("other root");
    emu.add_trust_anchor(
        "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/other",
        &other.pem(),
        true,
    );
    let answer = try_session(
        &emu,
        &other,
        &LeafOpts::default(),
        session_body(ROLE_ARN, None),
        |_| {},
    )
    .await;
    answer.assert_error(
        403,
        "AccessDeniedException",
        "Untrusted signing certificate for trust anchor",
    );
}

#[tokio::test]
async fn expired_or_not_yet_valid_certificate_is_refused() {
    let (emu, ca) = setup().await;
    let expired = LeafOpts {
        not_before: now() - time::Duration::hours(3),
        not_after: now() - time::Duration::hours(1),
        ..LeafOpts::default()
    };
    try_session(&emu, &ca, &expired, session_body(ROLE_ARN, None), |_| {})
        .await
        .assert_error(403, "AccessDeniedException", "validity period");
    let future = LeafOpts {
        not_before: now() + time::Duration::hours(1),
        not_after: now() + time::Duration::hours(3),
        ..LeafOpts::default()
    };
    try_session(&emu, &ca, &future, session_body(ROLE_ARN, None), |_| {})
        .await
        .assert_error(403, "AccessDeniedException", "validity period");
}

#[tokio::test]
async fn ca_certificate_used_as_leaf_is_refused() {
    let (emu, ca) = setup().await;
    let opts = LeafOpts {
        is_ca: true,
        ..LeafOpts::default()
    };
    try_session(&emu, &ca, &opts, session_body(ROLE_ARN, None), |_| {})
        .await
        .assert_error(
            403,
            "AccessDeniedException",
            "end-entity certificate is a CA",
        );
}

#[tokio::test]
async fn leaf_without_digital_signature_usage_is_refused() {
    let (emu, ca) = setup().await;
    let opts = LeafOpts {
        digital_signature: false,
        ..LeafOpts::default()
    };
    try_session(&emu, &ca, &opts, session_body(ROLE_ARN, None), |_| {})
        .await
        .assert_error(403, "AccessDeniedException", "digitalSignature");
}

#[tokio::test]
async fn role_not_in_profile_is_refused() {
    let (emu, ca) = setup().await;
    try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        session_body(OTHER_ROLE_ARN, None),
        |_| {},
    )
    .await
    .assert_error(403, "AccessDeniedException", "is not in profile");
}

#[tokio::test]
async fn trust_policy_conditions_must_hold() {
    let (emu, ca) = setup().await;
    let wrong_cn = LeafOpts {
        cn: "intruder".into(),
        ..LeafOpts::default()
    };
    try_session(&emu, &ca, &wrong_cn, session_body(ROLE_ARN, None), |_| {})
        .await
        .assert_error(
            403,
            "AccessDeniedException",
            "aws:PrincipalTag/x509Subject/CN",
        );
    let wrong_uri = LeafOpts {
        uri: Some("spiffe://cluster.local/ns/payments/sa/intruder".into()),
        ..LeafOpts::default()
    };
    try_session(&emu, &ca, &wrong_uri, session_body(ROLE_ARN, None), |_| {})
        .await
        .assert_error(403, "AccessDeniedException", "aws:PrincipalTag/x509SAN/URI");
    let no_uri = LeafOpts {
        uri: None,
        dns: Some("app.example.com".into()),
        ..LeafOpts::default()
    };
    try_session(&emu, &ca, &no_uri, session_body(ROLE_ARN, None), |_| {})
        .await
        .assert_error(403, "AccessDeniedException", "absent");
    let other_ns = LeafOpts {
        uri: Some("spiffe://cluster.local/ns/billing/sa/app".into()),
        ..LeafOpts::default()
    };
    let ok = try_session(&emu, &ca, &other_ns, session_body(ROLE_ARN, None), |_| {}).await;
    assert_eq!(ok.status, 201, "StringLike glob should match: {ok:?}");
}

#[tokio::test]
async fn duration_must_be_within_900_and_the_profile_cap() {
    let (emu, ca) = setup().await;
    for bad in [899, 7201, 43201, -1] {
        try_session(
            &emu,
            &ca,
            &LeafOpts::default(),
            session_body(ROLE_ARN, Some(bad)),
            |_| {},
        )
        .await
        .assert_error(400, "ValidationException", "durationSeconds");
    }
    for good in [900, 7200] {
        let a = try_session(
            &emu,
            &ca,
            &LeafOpts::default(),
            session_body(ROLE_ARN, Some(good)),
            |_| {},
        )
        .await;
        assert_eq!(a.status, 201, "{good}: {a:?}");
    }
}

#[tokio::test]
async fn disabled_or_unknown_anchor_and_profile_are_refused() {
    let (emu, ca) = setup().await;
    emu.add_trust_anchor(TA_ARN, &ca.pem(), false);
    try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        session_body(ROLE_ARN, None),
        |_| {},
    )
    .await
    .assert_error(403, "AccessDeniedException", "is disabled");
    assert!(emu.set_trust_anchor_enabled(TA_ARN, true));
    let profile = Profile {
        arn: PROFILE_ARN.into(),
        role_arns: vec![ROLE_ARN.into()],
        duration_seconds: None,
        accept_role_session_name: false,
        enabled: false,
    };
    emu.add_profile(profile.clone());
    try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        session_body(ROLE_ARN, None),
        |_| {},
    )
    .await
    .assert_error(
        403,
        "AccessDeniedException",
        &format!("Profile {PROFILE_ARN} is disabled"),
    );
    emu.add_profile(Profile {
        enabled: true,
        ..profile
    });
    let body = String::from_utf8(session_body(ROLE_ARN, None)).unwrap();
    let unknown_ta = body
        .replace("trust-anchor/ta-1", "trust-anchor/nope")
        .into_bytes();
    try_session(&emu, &ca, &LeafOpts::default(), unknown_ta, |_| {})
        .await
        .assert_error(
            403,
            "AccessDeniedException",
            "trust-anchor/nope does not exist",
        );
    let unknown_profile = body.replace("profile/p-1", "profile/nope").into_bytes();
    try_session(&emu, &ca, &LeafOpts::default(), unknown_profile, |_| {})
        .await
        .assert_error(403, "AccessDeniedException", "profile/nope does not exist");
    let ok = try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        session_body(ROLE_ARN, None),
        |_| {},
    )
    .await;
    assert_eq!(ok.status, 201);
}

#[tokio::test]
async fn role_session_name_only_when_the_profile_accepts_it() {
    let (emu, ca) = setup().await;
    let mut v: serde_json::Value = serde_json::from_slice(&session_body(ROLE_ARN, None)).unwrap();
    v["roleSessionName"] = "my-session".into();
    let body = serde_json::to_vec(&v).unwrap();
    try_session(&emu, &ca, &LeafOpts::default(), body.clone(), |_| {})
        .await
        .assert_error(
            400,
            "ValidationException",
            "roleSessionName is not accepted",
        );
    emu.add_profile(Profile {
        arn: PROFILE_ARN.into(),
        role_arns: vec![ROLE_ARN.into()],
        duration_seconds: None,
        accept_role_session_name: true,
        enabled: true,
    });
    let a = try_session(&emu, &ca, &LeafOpts::default(), body, |_| {}).await;
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
    let (emu, ca) = setup().await;
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
        try_session(
            &emu,
            &ca,
            &LeafOpts::default(),
            session_body(ROLE_ARN, None),
            tamper,
        )
        .await
        .assert_error(403, "AccessDeniedException", needle);
    }
    // A correctly signed body that is not a CreateSession request.
    try_session(
        &emu,
        &ca,
        &LeafOpts::default(),
        b"{\"profileArn\": 1}".to_vec(),
        |_| {},
    )
    .await
    .assert_error(400, "ValidationException", "Invalid request body");
}

#[tokio::test]
async fn host_header_of_the_real_endpoint_routes_to_roles_anywhere() {
    let (emu, ca) = setup().await;
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
