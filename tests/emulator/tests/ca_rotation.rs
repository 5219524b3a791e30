//! The CA rotation runbook (docs/security.md) against the emulator: two trust
//! anchors overlap, certificates from the old and the new workload CA both
//! work while both are registered, a certificate is only accepted under its
//! own anchor, and once the old anchor is removed only the new CA's
//! certificates work.

mod common;

use attache_emulator::{Emulator, EmulatorConfig, Operator, Profile, Role};
use attache_pki::{CaOptions, CertificateAuthority, X509Signer};
use common::*;
use time::OffsetDateTime;

const OLD_ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/old";
const NEW_ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/new";

/// CreateSession's status for `signer` naming the trust anchor `anchor`.
async fn session_status(emu: &Emulator, signer: &X509Signer, anchor: &str) -> u16 {
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
        duration_seconds: None,
        ..profile()
    });
    // Step 2 of the runbook: the role trusts the ServiceAccount under either anchor.
    let equals = Operator::StringEquals;
    emu.add_role(Role {
        arn: ROLE_ARN.into(),
        conditions: vec![
            condition(equals, "aws:PrincipalTag/x509SAN/URI", &[SPIFFE_URI]),
            condition(equals, "aws:SourceArn", &[OLD_ANCHOR, NEW_ANCHOR]),
        ],
    });
    let running_pod = workload_signer(&old_ca);
    assert_eq!(session_status(&emu, &running_pod, OLD_ANCHOR).await, 201);

    emu.add_trust_anchor(NEW_ANCHOR, new_ca.certificate_pem(), true);
    // Step 3: new pods get the new CA's certificates; running pods keep working.
    let new_pod = workload_signer(&new_ca);
    assert_eq!(session_status(&emu, &new_pod, NEW_ANCHOR).await, 201);
    assert_eq!(session_status(&emu, &running_pod, OLD_ANCHOR).await, 201);
    // A certificate only verifies under its own anchor.
    assert_eq!(session_status(&emu, &running_pod, NEW_ANCHOR).await, 403);
    assert_eq!(session_status(&emu, &new_pod, OLD_ANCHOR).await, 403);

    // Step 4: the old anchor goes; only the new CA's certificates work.
    assert!(emu.set_trust_anchor_enabled(OLD_ANCHOR, false));
    assert_eq!(session_status(&emu, &running_pod, OLD_ANCHOR).await, 403);
    assert_eq!(session_status(&emu, &new_pod, NEW_ANCHOR).await, 201);
}
