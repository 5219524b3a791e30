//! Roles Anywhere CRLs: the emulator's ImportCrl/ListCrls/GetCrl/UpdateCrl/
//! EnableCrl/DisableCrl/DeleteCrl (signed, permission-checked, validated like
//! AWS, PEM only), CreateSession refusing revoked certificates, and
//! attache-aws's CRL client (`sync_crl`) against it.

mod common;

use attache_aws::credentials::Credentials;
use attache_aws::crl::{self, CrlClient, CrlDetail, CrlSync, NewCrl};
use attache_aws::request::AwsError;
use attache_emulator::{Emulator, Operation, Permission};
use attache_pki::X509Signer;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use rcgen::{
    CertificateRevocationList, CertificateRevocationListParams, KeyIdMethod, RevokedCertParams,
    SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

const CRL_ACTIONS: [&str; 7] = [
    "rolesanywhere:ImportCrl",
    "rolesanywhere:ListCrls",
    "rolesanywhere:GetCrl",
    "rolesanywhere:UpdateCrl",
    "rolesanywhere:EnableCrl",
    "rolesanywhere:DisableCrl",
    "rolesanywhere:DeleteCrl",
];

/// A CRL signed by `ca` listing the serials of `revoked`.
fn signed_crl(ca: &TestCa, revoked: &[&X509Signer]) -> CertificateRevocationList {
    let now = OffsetDateTime::now_utc();
    let revoked_certs = revoked
        .iter()
        .map(|s| {
            let (_, cert) = X509Certificate::from_der(s.certificate_der()).unwrap();
            RevokedCertParams {
                serial_number: SerialNumber::from_slice(cert.raw_serial()),
                revocation_time: now - time::Duration::minutes(1),
                reason_code: None,
                invalidity_date: None,
            }
        })
        .collect();
    CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .unwrap()
}

/// The PEM of [`signed_crl`]: what ImportCrl and UpdateCrl take.
fn crl_of(ca: &TestCa, revoked: &[&X509Signer]) -> Vec<u8> {
    signed_crl(ca, revoked).pem().unwrap().into_bytes()
}

/// One PEM block of `label` around `der`, whatever `der` holds.
fn pem_block(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = B64.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n").into_bytes()
}

/// The standard emulator, `ROLE_ARN` allowed `actions`, and its credentials.
async fn setup(actions: &[&str]) -> (Emulator, TestCa, Creds) {
    let (emu, ca, creds) = with_credentials().await;
    emu.add_permission(Permission {
        role_arn: ROLE_ARN.into(),
        actions: actions.iter().map(|a| a.to_string()).collect(),
    });
    (emu, ca, creds)
}

/// A Roles Anywhere REST-JSON call signed as the AWS SDKs sign.
async fn call(emu: &Emulator, creds: &Creds, method: &str, path: &str, body: &str) -> Answer {
    let req = Req::json(method, path, body.as_bytes().to_vec());
    sdk_send(emu, creds, "rolesanywhere", req).await
}

fn import_body(name: &str, crl: &[u8], enabled: Option<bool>) -> String {
    let mut v = serde_json::json!({
        "name": name,
        "crlData": B64.encode(crl),
        "trustAnchorArn": TA_ARN,
    });
    if let Some(e) = enabled {
        v["enabled"] = e.into();
    }
    v.to_string()
}

/// ImportCrl; the new CRL's id.
async fn import(emu: &Emulator, creds: &Creds, crl: &[u8], enabled: Option<bool>) -> String {
    let a = call(
        emu,
        creds,
        "POST",
        "/crls",
        &import_body("attache", crl, enabled),
    )
    .await;
    assert_eq!(a.status, 201, "{a:?}");
    a.json()["crl"]["crlId"].as_str().unwrap().to_string()
}

/// UpdateCrl of `id` with `body`.
async fn update(emu: &Emulator, creds: &Creds, id: &str, body: serde_json::Value) -> Answer {
    let path = format!("/crl/{id}");
    call(emu, creds, "PATCH", &path, &body.to_string()).await
}

fn aws_credentials(c: &Creds) -> Credentials {
    let now = OffsetDateTime::now_utc();
    Credentials {
        access_key_id: c.access_key_id.clone(),
        secret_access_key: c.secret_access_key.clone().into(),
        session_token: c.session_token.clone().into(),
        expiration: now + time::Duration::hours(1),
        issued_at: now,
        role_arn: ROLE_ARN.into(),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// ImportCrl of `crl_pem` for `TA_ARN`, enabled, through attache-aws's client.
async fn client_import(
    emu: &Emulator,
    creds: &Creds,
    name: &str,
    crl_pem: &[u8],
) -> Result<CrlDetail, AwsError> {
    let new = NewCrl {
        name,
        trust_anchor_arn: TA_ARN,
        crl_pem,
        enabled: true,
    };
    let (http, url, aws) = (http(), emu.url(), aws_credentials(creds));
    client(&http, &url, &aws).import_crl(&new).await
}

/// attache-aws's CRL client for the emulator at `url`.
fn client<'a>(http: &'a reqwest::Client, url: &'a str, aws: &'a Credentials) -> CrlClient<'a> {
    CrlClient {
        http,
        endpoint: url,
        region: REGION,
        credentials: aws,
    }
}

#[tokio::test]
async fn import_list_get_update_enable_disable_delete_round_trip() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let first = crl_of(&ca, &[]);
    let a = call(
        &emu,
        &creds,
        "POST",
        "/crls",
        &import_body("attache", &first, None),
    )
    .await;
    assert_eq!(a.status, 201, "{a:?}");
    let crl = &a.json()["crl"];
    let id = crl["crlId"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(
        crl["crlArn"],
        format!("arn:aws:rolesanywhere:{REGION}:{ACCOUNT}:crl/{id}")
    );
    assert_eq!(crl["enabled"], false, "no documented default: disabled");
    assert_eq!(crl["name"], "attache");
    assert_eq!(crl["trustAnchorArn"], TA_ARN);
    assert_eq!(crl["crlData"], B64.encode(&first));
    assert!(crl["createdAt"].as_str().unwrap().ends_with('Z'));

    let list = call(&emu, &creds, "GET", "/crls", "").await;
    assert_eq!(list.status, 200, "{list:?}");
    assert_eq!(list.json()["crls"][0]["crlId"], id.as_str());
    assert!(list.json().get("nextToken").is_none());
    let got = call(&emu, &creds, "GET", &format!("/crl/{id}"), "").await;
    assert_eq!(got.json()["crl"]["crlData"], B64.encode(&first));

    let signer = ca.leaf(&LeafOpts::default());
    let second_crl = signed_crl(&ca, &[&signer]);
    let second = second_crl.pem().unwrap().into_bytes();
    let body = serde_json::json!({"name": "renamed", "crlData": B64.encode(&second)});
    let up = update(&emu, &creds, &id, body).await;
    assert_eq!(up.status, 200, "{up:?}");
    assert_eq!(up.json()["crl"]["name"], "renamed");
    assert_eq!(up.json()["crl"]["crlData"], B64.encode(&second));

    let on = call(&emu, &creds, "POST", &format!("/crl/{id}/enable"), "").await;
    assert_eq!(
        (on.status, &on.json()["crl"]["enabled"]),
        (200, &true.into())
    );
    assert!(emu.crls()[0].enabled);
    let off = call(&emu, &creds, "POST", &format!("/crl/{id}/disable"), "").await;
    assert_eq!(off.json()["crl"]["enabled"], false);

    let records = emu.crls();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].crl_data, second, "kept as imported");
    assert_eq!(records[0].crl_der, second_crl.der().as_ref());
    assert!(!format!("{:?}", records[0]).contains(&format!("{:?}", &second[..8])));

    let del = call(&emu, &creds, "DELETE", &format!("/crl/{id}"), "").await;
    assert_eq!(del.status, 200, "{del:?}");
    assert!(emu.crls().is_empty());
    call(&emu, &creds, "GET", &format!("/crl/{id}"), "")
        .await
        .assert_error(404, "ResourceNotFoundException", &id);
    call(&emu, &creds, "GET", "/crl/not-an-id", "")
        .await
        .assert_error(400, "ValidationException", "crlId");
    for (op, n) in [
        (Operation::ImportCrl, 1),
        (Operation::ListCrls, 1),
        (Operation::GetCrl, 3),
        (Operation::UpdateCrl, 1),
        (Operation::EnableCrl, 1),
        (Operation::DisableCrl, 1),
        (Operation::DeleteCrl, 1),
    ] {
        assert_eq!(emu.request_count(op), n, "{}", op.name());
    }
}

#[tokio::test]
async fn list_pages_follow_next_token() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let pem = crl_of(&ca, &[]);
    for _ in 0..3 {
        import(&emu, &creds, &pem, None).await;
    }
    let p1 = call(&emu, &creds, "GET", "/crls?pageSize=2", "")
        .await
        .json();
    assert_eq!(p1["crls"].as_array().unwrap().len(), 2);
    let token = p1["nextToken"].as_str().unwrap();
    let p2 = call(
        &emu,
        &creds,
        "GET",
        &format!("/crls?nextToken={token}&pageSize=2"),
        "",
    )
    .await
    .json();
    assert_eq!(p2["crls"].as_array().unwrap().len(), 1);
    assert!(p2.get("nextToken").is_none());
    call(&emu, &creds, "GET", "/crls?pageSize=0", "")
        .await
        .assert_error(400, "ValidationException", "pageSize");
}

#[tokio::test]
async fn a_revoked_serial_is_refused_while_another_from_the_same_ca_succeeds() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let revoked = ca.leaf(&LeafOpts::default());
    let fine = ca.leaf(&LeafOpts::default());
    assert_eq!(create_session(&emu, &revoked).await.status, 201);
    import(&emu, &creds, &crl_of(&ca, &[&revoked]), Some(true)).await;
    let serial = &revoked.certificate().serial;
    create_session(&emu, &revoked)
        .await
        .assert_error(403, "AccessDeniedException", serial);
    assert_eq!(create_session(&emu, &fine).await.status, 201);
}

#[tokio::test]
async fn a_disabled_crl_revokes_nothing() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let revoked = ca.leaf(&LeafOpts::default());
    let id = import(&emu, &creds, &crl_of(&ca, &[&revoked]), Some(false)).await;
    assert_eq!(create_session(&emu, &revoked).await.status, 201);
    call(&emu, &creds, "POST", &format!("/crl/{id}/enable"), "").await;
    assert_eq!(create_session(&emu, &revoked).await.status, 403);
    call(&emu, &creds, "POST", &format!("/crl/{id}/disable"), "").await;
    assert_eq!(create_session(&emu, &revoked).await.status, 201);
}

#[tokio::test]
async fn the_latest_update_replaces_the_revoked_list() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let a = ca.leaf(&LeafOpts::default());
    let b = ca.leaf(&LeafOpts::default());
    let id = import(&emu, &creds, &crl_of(&ca, &[&a]), Some(true)).await;
    assert_eq!(create_session(&emu, &a).await.status, 403);
    let body = serde_json::json!({"crlData": B64.encode(crl_of(&ca, &[&b]))});
    let up = update(&emu, &creds, &id, body).await;
    assert_eq!(up.status, 200, "{up:?}");
    assert_eq!(create_session(&emu, &a).await.status, 201);
    assert_eq!(create_session(&emu, &b).await.status, 403);
}

#[tokio::test]
async fn a_crl_not_signed_by_the_trust_anchor_is_refused_at_import() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let victim = ca.leaf(&LeafOpts::default());
    let other = TestCa::new("another root");
    // Same issuer name as the anchor's CA, different key: a forgery.
    let twin = TestCa::new("test root");
    for forger in [&other, &twin] {
        let body = import_body("forged", &crl_of(forger, &[&victim]), Some(true));
        call(&emu, &creds, "POST", "/crls", &body)
            .await
            .assert_error(400, "ValidationException", "not signed by a CA certificate");
    }
    // Nor may UpdateCrl swap one in.
    let id = import(&emu, &creds, &crl_of(&ca, &[]), Some(true)).await;
    let body = serde_json::json!({"crlData": B64.encode(crl_of(&twin, &[&victim]))});
    update(&emu, &creds, &id, body)
        .await
        .assert_error(400, "ValidationException", "not signed");
    assert_eq!(create_session(&emu, &victim).await.status, 201);
    assert_eq!(emu.crls().len(), 1);
}

#[tokio::test]
async fn a_crl_revokes_only_certificates_of_the_key_that_signed_it() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let victim = ca.leaf(&LeafOpts::default());
    import(&emu, &creds, &crl_of(&ca, &[&victim]), Some(true)).await;
    assert_eq!(create_session(&emu, &victim).await.status, 403);
    // CA rotation to a same-named CA with a new key, both in the bundle: a
    // leaf of the new CA with the very same serial is not revoked by the old
    // CA's CRL (serials are unique per issuer, RFC 5280 5.1.2.3).
    let new_ca = TestCa::new("test root");
    emu.add_trust_anchor(TA_ARN, &format!("{}{}", ca.pem(), new_ca.pem()), true);
    let (_, cert) = X509Certificate::from_der(victim.certificate_der()).unwrap();
    let same_serial = new_ca.leaf(&LeafOpts {
        serial: Some(cert.raw_serial().to_vec()),
        ..LeafOpts::default()
    });
    assert_eq!(
        same_serial.certificate().serial,
        victim.certificate().serial
    );
    assert_eq!(create_session(&emu, &same_serial).await.status, 201);
    assert_eq!(create_session(&emu, &victim).await.status, 403);
}

#[tokio::test]
async fn oversize_and_malformed_crl_data_are_validation_errors() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let big = vec![0x30u8; attache_emulator::MAX_CRL_BYTES + 1];
    let junk = pem_block("X509 CRL", b"not a CRL at all");
    let mut trailing = signed_crl(&ca, &[]).der().to_vec();
    trailing.push(0);
    let trailing = pem_block("X509 CRL", &trailing);
    let pem = crl_of(&ca, &[]);
    let none = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/none";
    let not_b64 = serde_json::json!({"name": "x", "crlData": "%%%", "trustAnchorArn": TA_ARN});
    let empty = serde_json::json!({"name": "x", "crlData": "", "trustAnchorArn": TA_ARN});
    let no_data = serde_json::json!({"name": "x", "trustAnchorArn": TA_ARN});
    let unknown =
        serde_json::json!({"name": "x", "crlData": B64.encode(&pem), "trustAnchorArn": none});
    let cases = [
        ("big", import_body("big", &big, None), "300000"),
        ("junk", import_body("junk", &junk, None), "not an X.509 CRL"),
        (
            "trailing",
            import_body("trailing", &trailing, None),
            "after the CRL",
        ),
        (
            "cert",
            import_body("cert", ca.pem().as_bytes(), None),
            "CERTIFICATE",
        ),
        ("not base64", not_b64.to_string(), "base64"),
        ("empty", empty.to_string(), "crlData"),
        ("no crlData", no_data.to_string(), "crlData"),
        ("bad name", import_body("bad/name", &pem, None), "name"),
        ("unknown anchor", unknown.to_string(), "does not exist"),
    ];
    for (case, body, needle) in cases {
        let answer = call(&emu, &creds, "POST", "/crls", &body).await;
        answer.assert_case(case, (400, "ValidationException"), needle);
    }
    assert!(emu.crls().is_empty());
}

#[tokio::test]
async fn a_der_crl_is_refused_because_aws_requires_pem() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let victim = ca.leaf(&LeafOpts::default());
    let crl = signed_crl(&ca, &[&victim]);
    let refused = "must be in PEM format";
    let der = import_body("der", crl.der(), Some(true));
    call(&emu, &creds, "POST", "/crls", &der)
        .await
        .assert_error(400, "ValidationException", refused);
    let pem = crl.pem().unwrap();
    let two = import_body("two", format!("{pem}{pem}").as_bytes(), Some(true));
    call(&emu, &creds, "POST", "/crls", &two)
        .await
        .assert_error(400, "ValidationException", "2 PEM blocks");
    assert!(emu.crls().is_empty());
    // Nor may UpdateCrl swap DER in for the PEM.
    let id = import(&emu, &creds, pem.as_bytes(), Some(true)).await;
    let body = serde_json::json!({"crlData": B64.encode(crl.der())});
    update(&emu, &creds, &id, body)
        .await
        .assert_error(400, "ValidationException", refused);
    assert_eq!(emu.crls()[0].crl_data, pem.as_bytes());
    // The client sends what it is given, and reports AWS's refusal.
    let err = client_import(&emu, &creds, "der", crl.der())
        .await
        .unwrap_err();
    assert!(err.to_string().contains(refused), "{err}");
    assert_eq!(create_session(&emu, &victim).await.status, 403);
}

#[tokio::test]
async fn a_role_without_the_action_is_denied() {
    let (emu, ca, creds) = setup(&["rolesanywhere:ListCrls"]).await;
    assert_eq!(call(&emu, &creds, "GET", "/crls", "").await.status, 200);
    let body = import_body("attache", &crl_of(&ca, &[]), Some(true));
    call(&emu, &creds, "POST", "/crls", &body)
        .await
        .assert_error(
            403,
            "AccessDeniedException",
            "not authorized to perform: rolesanywhere:ImportCrl",
        );
    assert!(emu.crls().is_empty());
    // Another role's permissions do not count.
    emu.add_permission(Permission {
        role_arn: OTHER_ROLE_ARN.into(),
        actions: vec!["rolesanywhere:*".into()],
    });
    let a = call(&emu, &creds, "POST", "/crls", &body).await;
    assert_eq!(a.status, 403, "{a:?}");
    // The client sees a non-retryable denial.
    let err = client_import(&emu, &creds, "attache", &crl_of(&ca, &[]))
        .await
        .unwrap_err();
    assert_eq!((err.kind(), err.is_retryable()), ("denied", false), "{err}");
    assert!(err.to_string().contains("ImportCrl"), "{err}");
}

#[tokio::test]
async fn unsigned_and_foreign_requests_are_refused() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let body = import_body("attache", &crl_of(&ca, &[]), Some(true));
    let unsigned = Req::json("POST", "/crls", body.into_bytes());
    let stranger = Creds {
        access_key_id: "ASIANOTISSUEDHERE000".into(),
        ..creds.clone()
    };
    let foreign = sdk_signed(&emu, &stranger, "rolesanywhere", unsigned.clone());
    let wrong_service = sdk_signed(&emu, &creds, "sts", unsigned.clone());
    let other = import_body("other", &crl_of(&ca, &[]), Some(true)).into_bytes();
    let tampered = sdk_signed(&emu, &creds, "rolesanywhere", unsigned.clone());
    let tampered = tampered.changed(|r| r.body = other);
    let mismatch = (403, "InvalidSignatureException");
    let cases = [
        (
            "unsigned",
            unsigned,
            (403, "MissingAuthenticationTokenException"),
            "Authentication Token",
        ),
        (
            "unknown key",
            foreign,
            (403, "UnrecognizedClientException"),
            "security token",
        ),
        ("wrong service", wrong_service, mismatch, "rolesanywhere"),
        ("tampered", tampered, mismatch, "signature"),
    ];
    assert_refusals(&emu, cases).await;
    assert!(emu.crls().is_empty());
}

#[tokio::test]
async fn sync_imports_then_updates_and_revocation_takes_effect() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let (http, url, aws) = (http(), emu.url(), aws_credentials(&creds));
    let victim = ca.leaf(&LeafOpts::default());
    let crls = client(&http, &url, &aws);
    let sync = |pem: Vec<u8>| async move { crls.sync_crl(TA_ARN, "attache", &pem).await };
    let first = sync(crl_of(&ca, &[])).await.unwrap();
    let CrlSync::Imported { crl_id } = &first else {
        panic!("expected an import, got {first:?}");
    };
    assert!(emu.crls()[0].enabled, "sync imports enabled");
    assert_eq!(create_session(&emu, &victim).await.status, 201);
    let updated = |enabled_now| CrlSync::Updated {
        crl_id: crl_id.clone(),
        enabled_now,
    };

    let second = sync(crl_of(&ca, &[&victim])).await.unwrap();
    assert_eq!(second, updated(false));
    create_session(&emu, &victim).await.assert_error(
        403,
        "AccessDeniedException",
        &victim.certificate().serial,
    );

    // Disabled behind its back: the next sync enables it again.
    call(&emu, &creds, "POST", &format!("/crl/{crl_id}/disable"), "").await;
    assert_eq!(create_session(&emu, &victim).await.status, 201);
    let third = sync(crl_of(&ca, &[&victim])).await.unwrap();
    assert_eq!(third, updated(true));
    assert_eq!(create_session(&emu, &victim).await.status, 403);
    assert_eq!(emu.crls().len(), 1);
    assert_eq!(emu.request_count(Operation::ImportCrl), 1);
    assert_eq!(emu.request_count(Operation::UpdateCrl), 2);
}

#[tokio::test]
async fn sync_follows_next_token_and_matches_name_and_anchor() {
    let (emu, ca, creds) = setup(&CRL_ACTIONS).await;
    let (http, url, aws) = (http(), emu.url(), aws_credentials(&creds));
    let crls = client(&http, &url, &aws);
    let pem = crl_of(&ca, &[]);
    for i in 0..crl::LIST_PAGE_SIZE + 2 {
        let name = format!("crl {i}");
        let new = NewCrl {
            name: &name,
            trust_anchor_arn: TA_ARN,
            crl_pem: &pem,
            enabled: false,
        };
        let detail = crls.import_crl(&new).await.unwrap();
        assert_eq!(
            (detail.name.as_str(), &detail.crl_data),
            (name.as_str(), &pem)
        );
        assert!(!format!("{detail:?}").contains("BEGIN"));
    }
    let page = crls.list_crls(None).await.unwrap();
    assert_eq!(page.crls.len(), crl::LIST_PAGE_SIZE as usize);
    assert!(page.next_token.is_some());
    let last = format!("crl {}", crl::LIST_PAGE_SIZE + 1);
    let done = crls.sync_crl(TA_ARN, &last, &pem).await.unwrap();
    let want = emu.crls().into_iter().find(|c| c.name == last).unwrap();
    assert_eq!(
        done,
        CrlSync::Updated {
            crl_id: want.crl_id,
            enabled_now: true
        }
    );
    assert_eq!(emu.crls().len(), crl::LIST_PAGE_SIZE as usize + 2);
    assert_eq!(emu.request_count(Operation::ListCrls), 3);
}

#[tokio::test]
async fn the_client_refuses_an_oversize_crl_before_sending() {
    let (emu, _ca, creds) = setup(&CRL_ACTIONS).await;
    let big = vec![0u8; crl::MAX_CRL_BYTES + 1];
    let (http, url, aws) = (http(), emu.url(), aws_credentials(&creds));
    let err = client(&http, &url, &aws)
        .sync_crl(TA_ARN, "attache", &big)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AwsError::CrlTooLarge { len, max: 300_000, .. } if len == 300_001),
        "{err}"
    );
    assert_eq!(emu.request_count(Operation::ListCrls), 0);
    assert_eq!(emu.request_count(Operation::ImportCrl), 0);
}
