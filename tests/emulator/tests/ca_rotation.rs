//! The CA rotation runbook (docs/security.md) against the emulator: two trust
//! anchors overlap, certificates from the old and the new workload CA both
//! work while both are registered, a certificate is only accepted under its
//! own anchor, and once the old anchor is removed only the new CA's
//! certificates work.

mod common;

use std::time::Duration;

use attache_emulator::{Condition, Emulator, EmulatorConfig, Operator, Profile, Role};
use attache_pki::{
    CaOptions, CertificateAuthority, KeyType, PrivateKey, VerifiedCsr, WorkloadIdentity, X509Signer,
};
use common::*;
use time::OffsetDateTime;

const OLD_ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/old";
const NEW_ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/new";

/// A workload certificate from `ca` for payments/app, as the broker issues it.
fn workload(ca: &CertificateAuthority) -> X509Signer {
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
    let id = WorkloadIdentity::new("cluster.local", "payments", "app").unwrap();
    let leaf = ca
        .issue_workload(
            &csr,
            &id,
            Duration::from_secs(3600),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    X509Signer::new(leaf.der, Vec::new(), key).unwrap()
}

async fn create_session(emu: &Emulator, signer: &X509Signer, anchor: &str) -> u16 {
    let body = serde_json::to_vec(&serde_json::json!({
        "profileArn": PROFILE_ARN, "roleArn": ROLE_ARN, "trustAnchorArn": anchor,
    }))
    .unwrap();
    let req = signed_session_request(
        signer,
        &host_of(emu),
        body,
        REGION,
        OffsetDateTime::now_utc(),
    );
    send(&emu.url(), &req).await.status
}

#[tokio::test]
async fn two_anchors_overlap_during_ca_rotation() {
    let now = OffsetDateTime::now_utc();
    let old_ca = CertificateAuthority::create(&CaOptions::default(), now).unwrap();
    let new_ca = CertificateAuthority::create(&CaOptions::default(), now).unwrap();
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emu.add_trust_anchor(OLD_ANCHOR, old_ca.certificate_pem(), true);
    emu.add_profile(Profile {
        arn: PROFILE_ARN.into(),
        role_arns: vec![ROLE_ARN.into()],
        duration_seconds: None,
        accept_role_session_name: false,
        enabled: true,
    });
    // Step 2 of the runbook: the role trusts the ServiceAccount under either anchor.
    emu.add_role(Role {
        arn: ROLE_ARN.into(),
        conditions: vec![
            Condition {
                operator: Operator::StringEquals,
                key: "aws:PrincipalTag/x509SAN/URI".into(),
                values: vec![SPIFFE_URI.into()],
            },
            Condition {
                operator: Operator::StringEquals,
                key: "aws:SourceArn".into(),
                values: vec![OLD_ANCHOR.into(), NEW_ANCHOR.into()],
            },
        ],
    });
    let running_pod = workload(&old_ca);
    assert_eq!(create_session(&emu, &running_pod, OLD_ANCHOR).await, 201);

    emu.add_trust_anchor(NEW_ANCHOR, new_ca.certificate_pem(), true);
    // Step 3: new pods get the new CA's certificates; running pods keep working.
    let new_pod = workload(&new_ca);
    assert_eq!(create_session(&emu, &new_pod, NEW_ANCHOR).await, 201);
    assert_eq!(create_session(&emu, &running_pod, OLD_ANCHOR).await, 201);
    // A certificate only verifies under its own anchor.
    assert_eq!(create_session(&emu, &running_pod, NEW_ANCHOR).await, 403);
    assert_eq!(create_session(&emu, &new_pod, OLD_ANCHOR).await, 403);

    // Step 4: the old anchor goes; only the new CA's certificates work.
    assert!(emu.set_trust_anchor_enabled(OLD_ANCHOR, false));
    assert_eq!(create_session(&emu, &running_pod, OLD_ANCHOR).await, 403);
    assert_eq!(create_session(&emu, &new_pod, NEW_ANCHOR).await, 201);
}
