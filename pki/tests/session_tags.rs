//! Roles Anywhere maps a certificate's subject to STS session (principal)
//! tags (`x509Subject/CN`, `/OU`, `/O`), which STS accepts only as values of
//! at most 256 characters from `[\p{L}\p{Z}\p{N}_.:/=+\-@]`. Every identity
//! a workload certificate can carry, up to the longest names Kubernetes
//! allows, gives subject values STS takes.

use std::time::Duration;

use attache_pki::{
    CaOptions, CertificateAuthority, KeyType, PrivateKey, VerifiedCsr, WorkloadIdentity,
};

/// STS's rule for a session tag value.
fn valid_tag_value(v: &str) -> bool {
    v.chars().count() <= 256
        && v.chars().all(|c| {
            c.is_alphabetic() || c.is_whitespace() || c.is_numeric() || "_.:/=+-@".contains(c)
        })
}

fn label(len: usize, fill: char) -> String {
    std::iter::repeat_n(fill, len).collect()
}

#[test]
fn subject_values_of_every_identity_are_valid_session_tags() {
    let now = time::OffsetDateTime::now_utc();
    let ca = CertificateAuthority::create(&CaOptions::default(), now).unwrap();
    // The longest DNS subdomain (253 characters in labels of 63) and label.
    let subdomain = |fill: char| {
        [
            label(63, fill),
            label(63, fill),
            label(63, fill),
            label(61, fill),
        ]
        .join(".")
    };
    for (td, ns, sa) in [
        (
            "cluster.local".to_string(),
            "team-a".to_string(),
            "app".to_string(),
        ),
        (subdomain('t'), label(63, 'n'), subdomain('s')),
        ("a".into(), "b".into(), "c".into()),
        (
            "prod.example.com".into(),
            "payments-0".into(),
            "api.v2-reader".into(),
        ),
    ] {
        let id = WorkloadIdentity::new(&td, &ns, &sa).unwrap();
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr =
            VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
        let leaf = ca
            .issue_workload(&csr, &id, Duration::from_secs(3600), now)
            .unwrap();
        let (_, info) = attache_pki::cert::parse_certificate_pem(&leaf.pem).unwrap();
        let values: Vec<String> = info
            .common_name
            .iter()
            .cloned()
            .chain(info.organizational_units.iter().cloned())
            .chain(info.organizations.iter().cloned())
            .collect();
        assert!(values.len() >= 3, "{values:?}");
        for v in &values {
            assert!(
                valid_tag_value(v),
                "{v:?} ({} chars) is no valid session tag",
                v.len()
            );
        }
    }
}
