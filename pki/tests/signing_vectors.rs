//! Fixed vectors for Roles Anywhere request signing, derived outside attache.

use attache_pki::cert::parse_certificate_pem;
use attache_pki::signing::{ALGORITHM_RSA, SERVICE_ROLESANYWHERE};
use attache_pki::{PrivateKey, X509Signer};
use time::macros::datetime;

const BODY: &str = r#"{"durationSeconds":3600,"profileArn":"arn:aws:rolesanywhere:us-east-1:123456789012:profile/p","roleArn":"arn:aws:iam::123456789012:role/r","trustAnchorArn":"arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/t"}"#;

/// RSA PKCS#1 v1.5 is deterministic, so the whole `Authorization` header is a
/// fixed function of key, certificate, time and body. The expected value was
/// produced by `fixtures/derive-rsa-vector.sh`, which builds the canonical
/// request and string to sign with `printf` exactly as AWS's "Signing process"
/// page for Roles Anywhere describes, hashes with `openssl dgst -sha256`, signs
/// with `openssl dgst -sha256 -sign rsa-test-key.pem`, and converts the
/// certificate's hex serial to decimal with `bc`. None of attache's code runs
/// in that derivation.
#[test]
fn rsa_authorization_header_matches_the_openssl_derived_vector() {
    let key = PrivateKey::from_pem(include_str!("fixtures/rsa-test-key.pem")).unwrap();
    let (cert, _) = parse_certificate_pem(include_str!("fixtures/rsa-test-cert.pem")).unwrap();
    let signer = X509Signer::new(cert, vec![], key).unwrap();
    assert_eq!(signer.algorithm(), ALGORITHM_RSA);
    let signed = signer
        .sign(
            "POST",
            "rolesanywhere.us-east-1.amazonaws.com",
            "/sessions",
            "",
            &[("Content-Type".into(), "application/json".into())],
            BODY.as_bytes(),
            "us-east-1",
            SERVICE_ROLESANYWHERE,
            datetime!(2024-01-02 03:04:05 UTC),
        )
        .unwrap();
    assert_eq!(signed.get("X-Amz-Date"), Some("20240102T030405Z"));
    assert_eq!(signed.get("X-Amz-X509-Chain"), None);
    assert_eq!(
        signed.get("Authorization").unwrap(),
        "AWS4-X509-RSA-SHA256 Credential=1234567890123456789/20240102/us-east-1/rolesanywhere/aws4_request, \
         SignedHeaders=content-type;host;x-amz-date;x-amz-x509, \
         Signature=1d632f5bc0f555ebbd611d169ce8bb4e02a2929f565361acb700ac45c224627e0973739976d2965e4f36e9b477ab12b436c005fc01793a07c4d4926c40e0b1c56ab41e157f5bc5f19c231ed2ad1c18df0d7c031841ccec2be2b6224f5774682213716279fe5ff5354906757cb2d778f46558274c3a1765f5f8ece0aba741fccd7cd14ff15d7e5b65bc38409f35c220e91e4b4fd5f6d766e685736e1c3af6b8cc2a356aaac54b6a4460f18da6ba7b64cd1fe07f3e4c389469bcfb7263b9a204df40785b668aa21e3a009ea47f68fd31c63bd6ecdfd071cc42683a37137e7d349445fd7d6f8a175bbd818fff0d3a1672520dbc295e5e025b72ea90702f2a264b35"
    );
}

#[test]
fn signer_refuses_a_key_that_is_not_the_certificates() {
    let other = PrivateKey::generate(attache_pki::KeyType::Rsa2048).unwrap();
    let (cert, _) = parse_certificate_pem(include_str!("fixtures/rsa-test-cert.pem")).unwrap();
    let err = X509Signer::new(cert, vec![], other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match"), "{err}");
}
