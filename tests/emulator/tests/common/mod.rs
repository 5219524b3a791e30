//! Shared test fixtures: test CAs built with rcgen (so every certificate
//! property can be bent), an emulator with one anchor/profile/role, and
//! request helpers that sign the way real clients do.
#![allow(dead_code)]

use std::time::{Duration, SystemTime};

use attache_emulator::{Condition, Emulator, EmulatorConfig, Operator, Profile, Role};
use attache_pki::{
    CertificateAuthority, IssuedCertificate, KeyType, PrivateKey, VerifiedCsr, WorkloadIdentity,
    X509Signer,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";
pub const TA_ARN: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/ta-1";
pub const PROFILE_ARN: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/p-1";
pub const ROLE_ARN: &str = "arn:aws:iam::123456789012:role/app-role";
pub const OTHER_ROLE_ARN: &str = "arn:aws:iam::123456789012:role/other-role";
pub const SPIFFE_URI: &str = "spiffe://cluster.local/ns/payments/sa/app";

/// A CA made with rcgen whose key is an attache `PrivateKey`.
pub struct TestCa {
    pub issuer: CertifiedIssuer<'static, PrivateKey>,
}

/// What a leaf certificate should look like.
#[derive(Clone)]
pub struct LeafOpts {
    pub key_type: KeyType,
    pub cn: String,
    pub ou: String,
    pub o: String,
    pub uri: Option<String>,
    pub dns: Option<String>,
    pub is_ca: bool,
    pub digital_signature: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The serial's bytes; random when `None`.
    pub serial: Option<Vec<u8>>,
}

impl LeafOpts {
    /// The default leaf after `change`.
    pub fn with(change: impl FnOnce(&mut LeafOpts)) -> LeafOpts {
        let mut opts = LeafOpts::default();
        change(&mut opts);
        opts
    }
}

impl Default for LeafOpts {
    fn default() -> Self {
        let now = OffsetDateTime::now_utc();
        LeafOpts {
            key_type: KeyType::EcdsaP256,
            cn: "app".into(),
            ou: "payments".into(),
            o: "cluster.local".into(),
            uri: Some(SPIFFE_URI.into()),
            dns: None,
            is_ca: false,
            digital_signature: true,
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::hours(24),
            serial: None,
        }
    }
}

/// A random positive 16-byte serial number.
pub fn serial() -> SerialNumber {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b[0] = (b[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&b)
}

/// A CA certificate for subject `dn`: pathLenConstraint `path_len` (none if
/// `None`), keyCertSign and cRLSign, valid from a day ago for 30 days.
pub fn ca_params(dn: DistinguishedName, path_len: Option<u8>) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.serial_number = Some(serial());
    p.not_before = now - time::Duration::days(1);
    p.not_after = now + time::Duration::days(30);
    p
}

/// [`ca_params`] for an unconstrained CA whose subject is only `CN=cn`.
fn named_ca_params(cn: &str) -> CertificateParams {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    ca_params(dn, None)
}

impl TestCa {
    pub fn new(cn: &str) -> TestCa {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        TestCa {
            issuer: CertifiedIssuer::self_signed(named_ca_params(cn), key).unwrap(),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, cn: &str) -> TestCa {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        TestCa {
            issuer: CertifiedIssuer::signed_by(named_ca_params(cn), key, &self.issuer).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// A leaf with its key, as a signer (with `chain` as X-Amz-X509-Chain).
    pub fn leaf_with_chain(&self, opts: &LeafOpts, chain: Vec<Vec<u8>>) -> X509Signer {
        let key = PrivateKey::generate(opts.key_type).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, opts.o.as_str());
        p.distinguished_name
            .push(DnType::OrganizationalUnitName, opts.ou.as_str());
        p.distinguished_name
            .push(DnType::CommonName, opts.cn.as_str());
        if let Some(uri) = &opts.uri {
            p.subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().unwrap()));
        }
        if let Some(dns) = &opts.dns {
            p.subject_alt_names
                .push(SanType::DnsName(dns.as_str().try_into().unwrap()));
        }
        p.is_ca = if opts.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        p.key_usages = if opts.digital_signature {
            vec![KeyUsagePurpose::DigitalSignature]
        } else {
            vec![KeyUsagePurpose::KeyEncipherment]
        };
        if opts.is_ca {
            p.key_usages.push(KeyUsagePurpose::KeyCertSign);
        }
        p.serial_number = Some(match &opts.serial {
            Some(bytes) => SerialNumber::from_slice(bytes),
            None => serial(),
        });
        p.not_before = opts.not_before;
        p.not_after = opts.not_after;
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        X509Signer::new(cert.der().to_vec(), chain, key).unwrap()
    }

    pub fn leaf(&self, opts: &LeafOpts) -> X509Signer {
        self.leaf_with_chain(opts, Vec::new())
    }
}

/// A trust-policy condition: `key` compared by `operator` with `values`.
pub fn condition(operator: Operator, key: &str, values: &[&str]) -> Condition {
    Condition {
        operator,
        key: key.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

/// The standard profile: `PROFILE_ARN`, enabled, listing only `ROLE_ARN`,
/// sessions up to 7200 s, no roleSessionName.
pub fn profile() -> Profile {
    Profile {
        arn: PROFILE_ARN.into(),
        role_arns: vec![ROLE_ARN.into()],
        duration_seconds: Some(7200),
        accept_role_session_name: false,
        enabled: true,
    }
}

/// The standard set-up: anchor `TA_ARN` = `ca`, [`profile`] allowing
/// `ROLE_ARN` (trust policy pins CN=app and the SPIFFE URI by glob) and
/// `OTHER_ROLE_ARN` existing but not in the profile.
pub async fn emulator(ca: &TestCa) -> Emulator {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emu.add_trust_anchor(TA_ARN, &ca.pem(), true);
    emu.add_profile(profile());
    let uri_glob = "spiffe://cluster.local/ns/*/sa/app";
    emu.add_role(Role {
        arn: ROLE_ARN.into(),
        conditions: vec![
            condition(
                Operator::StringEquals,
                "aws:PrincipalTag/x509Subject/CN",
                &["app"],
            ),
            condition(
                Operator::StringLike,
                "aws:PrincipalTag/x509SAN/URI",
                &[uri_glob],
            ),
            condition(Operator::StringEquals, "aws:SourceArn", &[TA_ARN]),
        ],
    });
    emu.add_role(Role {
        arn: OTHER_ROLE_ARN.into(),
        conditions: vec![],
    });
    emu
}

/// [`emulator`] for a new CA named "test root", and that CA.
pub async fn emulator_and_ca() -> (Emulator, TestCa) {
    let ca = TestCa::new("test root");
    let emu = emulator(&ca).await;
    (emu, ca)
}

/// [`emulator_and_ca`] and the credentials of a one-hour session.
pub async fn with_credentials() -> (Emulator, TestCa, Creds) {
    let (emu, ca) = emulator_and_ca().await;
    let creds = session(&emu, &ca, 3600).await;
    (emu, ca, creds)
}

pub fn host_of(emu: &Emulator) -> String {
    emu.local_addr().to_string()
}

/// A CreateSession body.
pub fn session_body(role: &str, duration: Option<i64>) -> Vec<u8> {
    let mut v = serde_json::json!({
        "profileArn": PROFILE_ARN,
        "roleArn": role,
        "trustAnchorArn": TA_ARN,
    });
    if let Some(d) = duration {
        v["durationSeconds"] = d.into();
    }
    serde_json::to_vec(&v).unwrap()
}

/// A certificate for [`SPIFFE_URI`] issued by attache's CA code, valid for
/// `lifetime`, and its fresh `key_type` key.
pub fn workload_leaf(
    ca: &CertificateAuthority,
    key_type: KeyType,
    lifetime: Duration,
) -> (IssuedCertificate, PrivateKey) {
    let key = PrivateKey::generate(key_type).unwrap();
    let csr = VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
    let id = WorkloadIdentity::from_spiffe_uri(SPIFFE_URI).unwrap();
    let now = OffsetDateTime::now_utc();
    (ca.issue_workload(&csr, &id, lifetime, now).unwrap(), key)
}

/// A P-256 [`workload_leaf`] valid for an hour, as the broker issues it, as a signer.
pub fn workload_signer(ca: &CertificateAuthority) -> X509Signer {
    let (cert, key) = workload_leaf(ca, KeyType::EcdsaP256, Duration::from_secs(3600));
    X509Signer::new(cert.der, Vec::new(), key).unwrap()
}

/// A certificate's serial number in lower-case hex (the default session name).
pub fn serial_hex(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.serial.to_str_radix(16)
}

/// A request about to be sent, open to tampering.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    /// A `method` request for `path` with no headers and no body.
    pub fn new(method: &str, path: &str) -> Req {
        Req {
            method: method.into(),
            path: path.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A `method` request for `path` carrying `body` as `application/json`.
    pub fn json(method: &str, path: &str, body: Vec<u8>) -> Req {
        Req {
            headers: vec![("content-type".into(), "application/json".into())],
            body,
            ..Req::new(method, path)
        }
    }

    /// This request after `change`.
    pub fn changed(mut self, change: impl FnOnce(&mut Req)) -> Req {
        change(&mut self);
        self
    }

    pub fn set(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
    }

    pub fn get(&self, name: &str) -> String {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// A POST /sessions of `body` with `headers`, signed over those headers by
/// `signer` for `service` in `region` at `now`.
pub fn signed_sessions_post(
    signer: &X509Signer,
    host: &str,
    mut headers: Vec<(String, String)>,
    body: Vec<u8>,
    region: &str,
    service: &str,
    now: OffsetDateTime,
) -> Req {
    let path = "/sessions";
    let signed = signer
        .sign(
            "POST", host, path, "", &headers, &body, region, service, now,
        )
        .unwrap();
    headers.extend(signed.headers);
    Req {
        headers,
        body,
        ..Req::new("POST", path)
    }
}

/// The Content-Type header of a CreateSession request.
pub fn json_content() -> Vec<(String, String)> {
    vec![("Content-Type".to_string(), "application/json".to_string())]
}

/// A CreateSession request signed by `signer` at `now` for `region`.
pub fn signed_session_request(
    signer: &X509Signer,
    host: &str,
    body: Vec<u8>,
    region: &str,
    now: OffsetDateTime,
) -> Req {
    let content = json_content();
    signed_sessions_post(signer, host, content, body, region, "rolesanywhere", now)
}

/// The standard CreateSession request for `ROLE_ARN` to `emu`, signed by
/// `signer` at `at`.
pub fn session_request_at(emu: &Emulator, signer: &X509Signer, at: OffsetDateTime) -> Req {
    let body = session_body(ROLE_ARN, None);
    signed_session_request(signer, &host_of(emu), body, REGION, at)
}

/// One refusal to check: its name, the request, the status and code, and a
/// fragment of the message.
pub type RefusalCase<'a> = (&'a str, Req, (u16, &'a str), &'a str);

/// Sends each case's request to `emu` and asserts its refusal; a failure
/// names the case.
pub async fn assert_refusals(emu: &Emulator, cases: impl IntoIterator<Item = RefusalCase<'_>>) {
    for (case, req, status_and_code, needle) in cases {
        let answer = send(&emu.url(), &req).await;
        answer.assert_case(case, status_and_code, needle);
    }
}

/// Sends [`session_request_at`] signed now.
pub async fn create_session(emu: &Emulator, signer: &X509Signer) -> Answer {
    let req = session_request_at(emu, signer, OffsetDateTime::now_utc());
    send(&emu.url(), &req).await
}

/// The answer: status, `x-amzn-ErrorType`, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub error_type: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Asserts an error with this status and code whose message contains `needle`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, needle: &str) {
        self.assert_case("", (status, code), needle);
    }

    /// [`Answer::assert_error`] for one case of several: a failure names `case`.
    #[track_caller]
    pub fn assert_case(&self, case: &str, (status, code): (u16, &str), needle: &str) {
        assert_eq!(self.status, status, "{case}: {self:?}");
        let code_seen = if self.error_type.is_empty() {
            xml_tag(&self.body, "Code").unwrap_or_default()
        } else {
            self.error_type.clone()
        };
        assert_eq!(code_seen, code, "{case}: {self:?}");
        assert!(
            self.body.contains(needle),
            "{case}: expected {needle:?} in {self:?}"
        );
    }
}

pub fn xml_tag(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(body[start..end].to_string())
}

pub async fn send(url: &str, req: &Req) -> Answer {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    send_with(&client, url, req).await.unwrap()
}

pub async fn send_with(client: &reqwest::Client, url: &str, req: &Req) -> reqwest::Result<Answer> {
    let mut rb = client.request(
        reqwest::Method::from_bytes(req.method.as_bytes()).unwrap(),
        format!("{url}{}", req.path),
    );
    for (k, v) in &req.headers {
        rb = rb.header(k, v);
    }
    let resp = rb.body(req.body.clone()).send().await?;
    let status = resp.status().as_u16();
    let error_type = resp
        .headers()
        .get("x-amzn-ErrorType")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = resp.text().await?;
    Ok(Answer {
        status,
        error_type,
        body,
    })
}

/// Temporary credentials from a CreateSession answer.
#[derive(Clone, Debug)]
pub struct Creds {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
}

pub fn creds_of(answer: &Answer) -> Creds {
    assert_eq!(answer.status, 201, "{answer:?}");
    let c = &answer.json()["credentialSet"][0]["credentials"];
    Creds {
        access_key_id: c["accessKeyId"].as_str().unwrap().into(),
        secret_access_key: c["secretAccessKey"].as_str().unwrap().into(),
        session_token: c["sessionToken"].as_str().unwrap().into(),
    }
}

/// Runs a successful CreateSession for `ROLE_ARN` and returns the credentials.
pub async fn session(emu: &Emulator, ca: &TestCa, duration: i64) -> Creds {
    let signer = ca.leaf(&LeafOpts::default());
    let body = session_body(ROLE_ARN, Some(duration));
    let now = OffsetDateTime::now_utc();
    let req = signed_session_request(&signer, &host_of(emu), body, REGION, now);
    creds_of(&send(&emu.url(), &req).await)
}

/// Signs with the `aws-sigv4` crate exactly as the AWS SDKs do (default
/// settings: double URI encoding, path normalisation, session token signed),
/// through attache's one signing function (`attache_aws::sigv4`), which the
/// emulator's verifier does not share.
pub fn sdk_sign(
    creds: &Creds,
    service: &str,
    region: &str,
    url: &str,
    req: &mut Req,
    at: SystemTime,
) {
    let signing = attache_aws::sigv4::SigningCredentials {
        access_key_id: creds.access_key_id.clone(),
        secret_access_key: creds.secret_access_key.clone().into(),
        session_token: Some(creds.session_token.clone().into()),
    };
    let headers: Vec<(&str, &str)> = req
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let url = format!("{url}{}", req.path);
    let signed = attache_aws::sigv4::sigv4_headers(
        &req.method,
        &url,
        &headers,
        &req.body,
        region,
        service,
        &signing,
        at,
    )
    .unwrap();
    req.headers = signed;
}

/// `req` signed by `creds` for `service` in `REGION` now, as the SDKs sign.
pub fn sdk_signed(emu: &Emulator, creds: &Creds, service: &str, mut req: Req) -> Req {
    sdk_sign(
        creds,
        service,
        REGION,
        &emu.url(),
        &mut req,
        SystemTime::now(),
    );
    req
}

/// Sends [`sdk_signed`] to `emu`.
pub async fn sdk_send(emu: &Emulator, creds: &Creds, service: &str, req: Req) -> Answer {
    send(&emu.url(), &sdk_signed(emu, creds, service, req)).await
}

/// An STS GetCallerIdentity POST, unsigned.
pub fn sts_request() -> Req {
    Req {
        method: "POST".into(),
        path: "/".into(),
        headers: vec![(
            "content-type".into(),
            "application/x-www-form-urlencoded; charset=utf-8".into(),
        )],
        body: b"Action=GetCallerIdentity&Version=2011-06-15".to_vec(),
    }
}

/// An ECR GetAuthorizationToken, unsigned.
pub fn ecr_request() -> Req {
    Req {
        method: "POST".into(),
        path: "/".into(),
        headers: vec![
            ("content-type".into(), "application/x-amz-json-1.1".into()),
            (
                "x-amz-target".into(),
                "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken".into(),
            ),
        ],
        body: b"{}".to_vec(),
    }
}
