//! CSR (PEM or DER) -> the certificate API's CSR check -> issuance.
//! Promise: no panic; a CSR that passes is issuable, and the certificate
//! carries the CSR's key and the caller's identity only (nothing the CSR
//! asked for in its subject or extensions), and chains to the CA.
#![no_main]

use std::time::Duration;

use attache_fuzz::{ca, ca_der, now};
use attache_pki::cert::{CertificateInfo, verify_chain};
use attache_pki::{VerifiedCsr, WorkloadIdentity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(csr) = VerifiedCsr::parse(data) else {
        return;
    };
    let id = WorkloadIdentity::new("cluster.local", "team-a", "app").expect("identity");
    let leaf = ca()
        .issue_workload(&csr, &id, Duration::from_secs(3600), now())
        .expect("an accepted CSR is issued");
    let info = CertificateInfo::from_der(&leaf.der).expect("issued certificate parses");
    assert_eq!(info.public_key_der, csr.public_key_der());
    assert_eq!(info.key_type, csr.key_type());
    assert_eq!(info.uris, vec![id.spiffe_uri()]);
    assert!(info.dns_names.is_empty());
    assert_eq!(info.common_name.as_deref(), Some("app"));
    assert_eq!(info.organizational_units, vec!["team-a".to_string()]);
    assert_eq!(info.organizations, vec!["cluster.local".to_string()]);
    assert!(!info.is_ca);
    verify_chain(
        &leaf.der,
        &[],
        &[ca_der().to_vec()],
        now() + time::Duration::minutes(1),
    )
    .expect("issued certificate chains to the CA");
});
