//! Checks issued certificates and request signatures with the `openssl` CLI,
//! so attache's rules are verified by a parser and verifier other than its own.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use attache_pki::cert::parse_certificate_pem;
use attache_pki::signing::{ALGORITHM_ECDSA, SERVICE_ROLESANYWHERE};
use attache_pki::sigv4;
use attache_pki::{
    CaOptions, CertificateAuthority, CertificateInfo, CsrError, KeyType, PrivateKey, VerifiedCsr,
    WorkloadIdentity, X509Signer,
};
use time::OffsetDateTime;

/// Runs `openssl` with `command_line` split at white space (no argument
/// here holds a space) in `dir`; returns success and stdout + stderr.
fn openssl(dir: &Path, command_line: &str, stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new("openssl")
        .args(command_line.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the openssl CLI is installed (.ci/run installs it)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn ca(key_type: KeyType) -> CertificateAuthority {
    CertificateAuthority::create(
        &CaOptions {
            key_type,
            ..CaOptions::default()
        },
        now(),
    )
    .unwrap()
}

/// Returns the text block of one extension from `openssl x509 -text`
/// (its header line and the line after it).
fn extension<'a>(text: &'a str, name: &str) -> String {
    let lines: Vec<&'a str> = text.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("extension {name} missing in:\n{text}"));
    format!(
        "{}\n{}",
        lines[i].trim(),
        lines.get(i + 1).unwrap_or(&"").trim()
    )
}

/// Asserts each `X509v3 <name>` extension's block; an empty expected value
/// only asserts that the extension is present.
fn assert_extensions(text: &str, expected: &[[&str; 2]]) {
    for [name, value] in expected {
        let block = extension(text, &format!("X509v3 {name}"));
        if !value.is_empty() {
            assert_eq!(block, format!("X509v3 {name}{value}"), "{text}");
        }
    }
}

#[test]
fn ca_certificates_meet_roles_anywhere_rules_for_every_key_type() {
    for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(key_type);
        let (ok, text) = openssl(
            dir.path(),
            "x509 -noout -text",
            ca.trust_anchor_pem().as_bytes(),
        );
        assert!(ok, "{text}");
        assert!(text.contains("Version: 3 (0x2)"), "{text}");
        assert_extensions(
            &text,
            &[
                ["Basic Constraints", ": critical\nCA:TRUE, pathlen:0"],
                ["Key Usage", ": critical\nCertificate Sign, CRL Sign"],
                ["Subject Key Identifier", ""],
            ],
        );
        assert!(
            text.contains("Subject: O = attache, CN = attache CA"),
            "{text}"
        );
        // Self-signed and valid as a trust anchor.
        std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).unwrap();
        let (ok, out) = openssl(dir.path(), "verify -CAfile ca.pem ca.pem", b"");
        assert!(ok, "{out}");
        let lifetime = ca.info().not_after - ca.info().not_before;
        assert!(lifetime >= time::Duration::days(3650), "{lifetime}");
    }
}

#[test]
fn workload_certificate_from_an_openssl_csr_verifies_and_names_the_service_account() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = openssl(
        dir.path(),
        "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf-key.pem \
         -subj /CN=ignored-by-attache/O=evil -out leaf.csr",
        b"",
    );
    assert!(ok, "{out}");
    let csr = VerifiedCsr::parse(&std::fs::read(dir.path().join("leaf.csr")).unwrap()).unwrap();
    assert_eq!(csr.key_type(), KeyType::EcdsaP256);
    let ca = ca(KeyType::EcdsaP256);
    let id = WorkloadIdentity::new("prod.example.com", "payments", "api").unwrap();
    let issued_at = now();
    let leaf = ca
        .issue_workload(&csr, &id, Duration::from_secs(24 * 3600), issued_at)
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), &leaf.pem).unwrap();
    let (ok, out) = openssl(dir.path(), "verify -CAfile ca.pem leaf.pem", b"");
    assert!(ok && out.contains("leaf.pem: OK"), "{out}");

    let (_, text) = openssl(dir.path(), "x509 -in leaf.pem -noout -text", b"");
    assert!(text.contains("Version: 3 (0x2)"), "{text}");
    assert!(
        text.contains("Subject: O = prod.example.com, OU = payments, CN = api"),
        "{text}"
    );
    assert!(
        !text.contains("ignored-by-attache") && !text.contains("evil"),
        "{text}"
    );
    assert_extensions(
        &text,
        &[
            [
                "Subject Alternative Name",
                ":\nURI:spiffe://prod.example.com/ns/payments/sa/api",
            ],
            ["Basic Constraints", ": critical\nCA:FALSE"],
            ["Key Usage", ": critical\nDigital Signature"],
            ["Extended Key Usage", ":\nTLS Web Client Authentication"],
            ["Subject Key Identifier", ""],
            ["Authority Key Identifier", ""],
        ],
    );

    // The public key is the CSR's, so the CSR's private key matches the leaf.
    let (_, leaf_pub) = openssl(dir.path(), "x509 -in leaf.pem -noout -pubkey", b"");
    let (_, key_pub) = openssl(dir.path(), "pkey -in leaf-key.pem -pubout", b"");
    assert_eq!(leaf_pub, key_pub);

    // 128-bit positive serial, back-dated 5 minutes, 24 h lifetime.
    let (_, serial) = openssl(dir.path(), "x509 -in leaf.pem -noout -serial", b"");
    let hex = serial.trim().trim_start_matches("serial=");
    assert_eq!(hex.len(), 32, "{serial}");
    assert!(
        u8::from_str_radix(&hex[..2], 16).unwrap() < 0x80,
        "{serial}"
    );
    let info = CertificateInfo::from_der(&leaf.der).unwrap();
    let backdate = issued_at - info.not_before;
    assert!(
        (299..=301).contains(&backdate.whole_seconds()),
        "{backdate}"
    );
    assert_eq!(
        (info.not_after - info.not_before).whole_seconds(),
        24 * 3600 + 300
    );
    assert_eq!(info.workload_identity(), Some(id));
}

#[test]
fn leaf_lifetime_never_outlives_the_ca() {
    let issued = now();
    let ca = CertificateAuthority::create(
        &CaOptions {
            validity: Duration::from_secs(2 * 24 * 3600),
            ..CaOptions::default()
        },
        issued,
    )
    .unwrap();
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
    let id = WorkloadIdentity::new("td", "ns", "sa").unwrap();
    let leaf = ca
        .issue_workload(
            &csr,
            &id,
            Duration::from_secs(30 * 24 * 3600),
            issued + time::Duration::days(1),
        )
        .unwrap();
    assert_eq!(leaf.not_after, ca.info().not_after);
    let err = ca
        .issue_workload(
            &csr,
            &id,
            Duration::from_secs(3600),
            issued + time::Duration::days(3),
        )
        .unwrap_err();
    assert!(err.to_string().contains("outside its validity"), "{err}");
}

#[test]
fn weak_corrupt_and_garbage_csrs_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = openssl(
        dir.path(),
        "req -new -newkey rsa:1024 -nodes -keyout k.pem -subj /CN=x -out weak.csr",
        b"",
    );
    assert!(ok, "{out}");
    let err = VerifiedCsr::parse(&std::fs::read(dir.path().join("weak.csr")).unwrap()).unwrap_err();
    assert_eq!(err, CsrError::WeakKey(1024));
    assert!(err.to_string().contains("RSA-1024"), "{err}");

    let (ok, out) = openssl(
        dir.path(),
        "req -new -newkey rsa:2048 -nodes -keyout k2.pem -subj /CN=tamper-me -outform DER \
         -out ok.der",
        b"",
    );
    assert!(ok, "{out}");
    let mut der = std::fs::read(dir.path().join("ok.der")).unwrap();
    assert_eq!(
        VerifiedCsr::parse(&der).unwrap().key_type(),
        KeyType::Rsa2048
    );
    let last = der.len() - 1;
    der[last] ^= 0xff; // inside the signature value
    assert_eq!(
        VerifiedCsr::parse(&der).unwrap_err(),
        CsrError::BadSignature
    );

    let err = VerifiedCsr::parse(b"\x30\x03garbage").unwrap_err();
    assert!(matches!(err, CsrError::Malformed(_)), "{err}");
}

#[test]
fn ecdsa_request_signatures_verify_with_openssl() {
    for key_type in [KeyType::EcdsaP256, KeyType::EcdsaP384] {
        let dir = tempfile::tempdir().unwrap();
        let ca = ca(KeyType::EcdsaP256);
        let key = PrivateKey::generate(key_type).unwrap();
        let csr =
            VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
        let id = WorkloadIdentity::new("td", "ns", "sa").unwrap();
        let leaf = ca
            .issue_workload(&csr, &id, Duration::from_secs(3600), now())
            .unwrap();
        let signer = X509Signer::new(leaf.der.clone(), vec![], key).unwrap();
        assert_eq!(signer.algorithm(), ALGORITHM_ECDSA);
        let t = now();
        let body = br#"{"durationSeconds":900}"#;
        let signed = signer
            .sign(
                "POST",
                "rolesanywhere.eu-west-1.amazonaws.com",
                "/sessions",
                "",
                &[("Content-Type".into(), "application/json".into())],
                body,
                "eu-west-1",
                SERVICE_ROLESANYWHERE,
                t,
            )
            .unwrap();
        let auth = sigv4::Authorization::parse(signed.get("Authorization").unwrap()).unwrap();
        assert_eq!(auth.credential_id, leaf.serial);
        assert_eq!(
            auth.signed_headers,
            ["content-type", "host", "x-amz-date", "x-amz-x509"]
        );
        // Rebuild the string to sign by hand from what went on the wire.
        let canonical = format!(
            "POST\n/sessions\n\ncontent-type:application/json\nhost:rolesanywhere.eu-west-1.amazonaws.com\nx-amz-date:{}\nx-amz-x509:{}\n\ncontent-type;host;x-amz-date;x-amz-x509\n{}",
            signed.get("X-Amz-Date").unwrap(),
            signed.get("X-Amz-X509").unwrap(),
            sigv4::sha256_hex(body)
        );
        let to_sign = format!(
            "AWS4-X509-ECDSA-SHA256\n{}\n{}\n{}",
            signed.get("X-Amz-Date").unwrap(),
            auth.scope(),
            sigv4::sha256_hex(canonical.as_bytes())
        );
        std::fs::write(dir.path().join("sts"), &to_sign).unwrap();
        std::fs::write(
            dir.path().join("sig.der"),
            hex::decode(&auth.signature).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("leaf.pem"), &leaf.pem).unwrap();
        let (_, pubkey) = openssl(dir.path(), "x509 -in leaf.pem -noout -pubkey", b"");
        std::fs::write(dir.path().join("pub.pem"), pubkey).unwrap();
        // `openssl dgst -verify` of sig.der over the file sts with pub.pem.
        let verify = || {
            openssl(
                dir.path(),
                "dgst -sha256 -verify pub.pem -signature sig.der sts",
                b"",
            )
        };
        let (ok, out) = verify();
        assert!(ok && out.contains("Verified OK"), "{key_type}: {out}");
        // And a different message does not verify (the check can fail).
        std::fs::write(dir.path().join("sts"), format!("{to_sign}x")).unwrap();
        let (ok, _) = verify();
        assert!(!ok);
    }
}

#[test]
fn rsa_ca_imported_from_openssl_issues_verifiable_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = openssl(
        dir.path(),
        "req -x509 -newkey rsa:3072 -nodes -keyout ca-key.pem -out ca.pem -subj \
         /O=corp/CN=corp-root -days 30 -addext basicConstraints=critical,CA:TRUE -addext \
         keyUsage=critical,keyCertSign,cRLSign",
        b"",
    );
    assert!(ok, "{out}");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap();
    let ca = CertificateAuthority::from_pem(&read("ca.pem"), &read("ca-key.pem")).unwrap();
    assert_eq!(ca.info().key_type, KeyType::Rsa3072);
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
    let id = WorkloadIdentity::new("td", "ns", "sa").unwrap();
    let leaf = ca
        .issue_workload(&csr, &id, Duration::from_secs(3600), now())
        .unwrap();
    std::fs::write(dir.path().join("leaf.pem"), &leaf.pem).unwrap();
    let (ok, out) = openssl(dir.path(), "verify -CAfile ca.pem leaf.pem", b"");
    assert!(ok, "{out}");

    // A key that is not the CA's, and a certificate that is not a CA, are refused.
    let other = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let err = CertificateAuthority::from_pem(&read("ca.pem"), &other.to_pkcs8_pem()).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let err = CertificateAuthority::from_pem(&leaf.pem, &key.to_pkcs8_pem()).unwrap_err();
    assert!(err.to_string().contains("CA:TRUE"), "{err}");
}

#[test]
fn server_certificates_carry_the_service_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca(KeyType::EcdsaP256);
    let names = vec![
        "attache-broker.attache-system.svc".to_string(),
        "127.0.0.1".to_string(),
    ];
    let (cert, _key) = ca
        .issue_server(&names, KeyType::EcdsaP256, Duration::from_secs(3600), now())
        .unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.certificate_pem()).unwrap();
    std::fs::write(dir.path().join("srv.pem"), &cert.pem).unwrap();
    let (ok, out) = openssl(
        dir.path(),
        "verify -CAfile ca.pem -purpose sslserver -verify_hostname \
         attache-broker.attache-system.svc srv.pem",
        b"",
    );
    assert!(ok, "{out}");
    assert!(
        ca.issue_server(
            &["bad_name!".into()],
            KeyType::EcdsaP256,
            Duration::from_secs(3600),
            now()
        )
        .is_err()
    );
}

#[test]
fn chain_verification_accepts_own_leaves_and_refuses_strangers() {
    let t = now();
    let ca_a = ca(KeyType::EcdsaP256);
    let ca_b = ca(KeyType::EcdsaP256);
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
    let id = WorkloadIdentity::new("td", "ns", "sa").unwrap();
    let leaf = ca_a
        .issue_workload(&csr, &id, Duration::from_secs(3600), t)
        .unwrap();
    let anchor_a = parse_certificate_pem(ca_a.certificate_pem()).unwrap().0;
    let anchor_b = parse_certificate_pem(ca_b.certificate_pem()).unwrap().0;
    assert_eq!(
        attache_pki::verify_chain(&leaf.der, &[], &[anchor_b.clone(), anchor_a.clone()], t)
            .unwrap(),
        1
    );
    let err = attache_pki::verify_chain(&leaf.der, &[], &[anchor_b], t).unwrap_err();
    assert!(err.to_string().contains("no trusted issuer"), "{err}");
    let err = attache_pki::verify_chain(&leaf.der, &[], &[anchor_a], t + time::Duration::hours(2))
        .unwrap_err();
    assert!(err.to_string().contains("validity"), "{err}");
}

#[test]
fn renewal_is_due_at_half_life() {
    let ca = ca(KeyType::EcdsaP256);
    let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
    let id = WorkloadIdentity::new("td", "ns", "sa").unwrap();
    let t = now();
    let leaf = ca
        .issue_workload(&csr, &id, Duration::from_secs(3600), t)
        .unwrap();
    let info = CertificateInfo::from_der(&leaf.der).unwrap();
    let half = info.not_before + (info.not_after - info.not_before) / 2;
    assert!(!attache_pki::should_renew(
        &info,
        half - time::Duration::seconds(1)
    ));
    assert!(attache_pki::should_renew(&info, half));
}
