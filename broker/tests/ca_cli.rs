//! The `attache-broker ca` commands as a user runs them, checked with openssl.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

fn broker(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attache-broker"))
        .args(args)
        .output()
        .unwrap()
}

fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `args` split on whitespace (paths here have none).
fn words(args: &str) -> Vec<&str> {
    args.split_whitespace().collect()
}

/// An openssl P-256 key (`NAME-key.pem`) and CSR (`NAME.csr`) in `dir`.
fn openssl_csr(dir: &Path, name: &str) {
    let o = openssl(
        dir,
        &words(&format!(
            "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}-key.pem -subj /CN=whatever -out {name}.csr"
        )),
    );
    assert!(o.status.success(), "{}", text(&o));
}

/// `attache-broker ca issue` of `csr` with the CA in directory `ca` for
/// ServiceAccount `(namespace, name)`, then `extra` flags.
fn ca_issue(ca: &str, csr: &Path, (ns, sa): (&str, &str), extra: &[&str]) -> Output {
    let csr = csr.to_str().unwrap();
    let mut args = vec!["ca", "issue", "--dir", ca, "--csr", csr];
    args.extend(["--namespace", ns, "--service-account", sa]);
    args.extend_from_slice(extra);
    broker(&args)
}

/// A failure is one line on stderr, a non-zero exit, and never a panic.
fn assert_clean_failure(o: &Output, expect: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail: {}", text(o));
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(expect), "expected {expect:?} in {err}");
}

/// A fresh temporary directory and the path of its `ca/` (not made yet).
fn workdir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca").to_str().unwrap().to_owned();
    (dir, ca)
}

#[test]
fn init_issue_show_round_trip_with_an_openssl_csr() {
    let (dir, ca) = workdir();
    let (d, ca_dir, ca) = (dir.path(), Path::new(&ca), ca.as_str());
    let o = broker(&["ca", "init", "--dir", ca, "--common-name", "test CA"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("trust anchor"), "{}", text(&o));
    let mode = std::fs::metadata(ca_dir.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Refuses to overwrite without --force, and leaves the CA untouched.
    let before = std::fs::read(ca_dir.join("ca.pem")).unwrap();
    assert_clean_failure(&broker(&["ca", "init", "--dir", ca]), "already exists");
    assert_eq!(std::fs::read(ca_dir.join("ca.pem")).unwrap(), before);

    openssl_csr(d, "leaf");
    let out = d.join("leaf.pem");
    let o = ca_issue(
        ca,
        &d.join("leaf.csr"),
        ("team-a", "uploader"),
        &[
            "--trust-domain",
            "prod.example.com",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = openssl(d, &["verify", "-CAfile", "ca/ca.pem", "leaf.pem"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = openssl(d, &words("x509 -in leaf.pem -noout -ext subjectAltName"));
    assert!(
        text(&o).contains("URI:spiffe://prod.example.com/ns/team-a/sa/uploader"),
        "{}",
        text(&o)
    );

    // Without --out the PEM goes to stdout.
    let o = ca_issue(ca, &d.join("leaf.csr"), ("a", "b"), &[]);
    assert!(
        o.status.success()
            && String::from_utf8_lossy(&o.stdout).starts_with("-----BEGIN CERTIFICATE-----")
    );

    let o = broker(&["ca", "show", "--dir", ca]);
    assert!(o.status.success(), "{}", text(&o));
    let fp = openssl(d, &words("x509 -in ca/ca.pem -noout -fingerprint -sha256"));
    let fp = String::from_utf8_lossy(&fp.stdout)
        .trim()
        .split('=')
        .nth(1)
        .unwrap()
        .to_string();
    let shown = text(&o);
    assert!(shown.contains(&fp), "{shown} lacks {fp}");
    assert!(
        shown.contains("ecdsa-p256") && shown.contains("CN=test CA"),
        "{shown}"
    );

    // --force replaces it.
    let o = broker(&[
        "ca",
        "init",
        "--dir",
        ca,
        "--force",
        "--key-type",
        "ecdsa-p384",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_ne!(std::fs::read(ca_dir.join("ca.pem")).unwrap(), before);
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let (dir, ca) = workdir();
    let (d, ca) = (dir.path(), ca.as_str());
    assert!(broker(&["ca", "init", "--dir", ca]).status.success());
    let issue = |csr: &str, ns: &str| ca_issue(ca, &d.join(csr), (ns, "sa"), &[]);

    let o = openssl(
        d,
        &words("req -new -newkey rsa:1024 -nodes -keyout k.pem -subj /CN=x -out weak.csr"),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_clean_failure(&issue("weak.csr", "ns"), "RSA-1024, too weak");

    let o = openssl(
        d,
        &words(
            "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k2.pem -subj /CN=x -outform DER -out ok.der",
        ),
    );
    assert!(o.status.success());
    let mut der = std::fs::read(d.join("ok.der")).unwrap();
    let n = der.len();
    der[n - 3] ^= 0x55;
    std::fs::write(d.join("corrupt.csr"), der).unwrap();
    assert_clean_failure(&issue("corrupt.csr", "ns"), "signature does not verify");

    std::fs::write(d.join("garbage.csr"), b"\x00\x01garbage bytes").unwrap();
    assert_clean_failure(&issue("garbage.csr", "ns"), "malformed CSR");

    assert_clean_failure(&issue("ok.der", "Bad_NS"), "invalid namespace");
    assert_clean_failure(&issue("missing.csr", "ns"), "cannot read");
    assert_clean_failure(
        &broker(&["ca", "show", "--dir", d.join("nowhere").to_str().unwrap()]),
        "cannot read",
    );
    // Unknown key type, bad duration: clap reports them (usage error, exit 2),
    // still no panic.
    let x = d.join("x");
    for (flag, value, says) in [
        ("--key-type", "dsa", "unknown key type"),
        ("--validity", "soon", "invalid duration"),
    ] {
        let o = broker(&["ca", "init", "--dir", x.to_str().unwrap(), flag, value]);
        assert!(
            !o.status.success() && text(&o).contains(says),
            "{flag} {value}: {}",
            text(&o)
        );
    }
}

/// `ca crl` for a CA the user manages: openssl verifies the CRL's signature
/// with the CA, lists the revoked serials, and `verify -crl_check` then
/// refuses the revoked certificate while accepting another one.
#[test]
fn a_crl_signed_by_ca_crl_revokes_in_openssl() {
    let (dir, ca) = workdir();
    let d = dir.path();
    let run = |args: String| {
        let o = broker(&words(&args));
        assert!(o.status.success(), "{args}: {}", text(&o));
        text(&o)
    };
    run(format!("ca init --dir {ca}"));
    for name in ["revoked", "kept"] {
        openssl_csr(d, name);
        run(format!(
            "ca issue --dir {ca} --csr {0}/{name}.csr --namespace team-a --service-account {name} --out {0}/{name}.pem",
            d.display()
        ));
    }
    let kept_serial = text(&openssl(d, &words("x509 -in kept.pem -noout -serial")));
    let wrote = run(format!(
        "ca crl --dir {ca} --cert {0}/revoked.pem --serial 0x1234 --out {0}/crl.pem",
        d.display()
    ));
    assert!(wrote.contains("listing 2 certificate(s)"), "{wrote}");

    let shown = text(&openssl(
        d,
        &words("crl -in crl.pem -CAfile ca/ca.pem -noout -text"),
    ));
    assert!(shown.contains("verify OK"), "{shown}");
    assert!(shown.contains("Serial Number: 1234"), "{shown}");
    let kept_hex = kept_serial.trim().trim_start_matches("serial=");
    assert!(!shown.contains(kept_hex), "{shown}");

    let verify = |leaf: &str| {
        openssl(
            d,
            &words(&format!(
                "verify -crl_check -CAfile ca/ca.pem -CRLfile crl.pem {leaf}"
            )),
        )
    };
    let o = verify("revoked.pem");
    assert!(
        !o.status.success() && text(&o).contains("revoked"),
        "{}",
        text(&o)
    );
    assert!(verify("kept.pem").status.success());

    // DER on request (Roles Anywhere itself takes the PEM).
    run(format!(
        "ca crl --dir {ca} --serial 77 --format der --out {}/crl.der",
        d.display()
    ));
    let o = openssl(
        d,
        &words("crl -inform DER -in crl.der -CAfile ca/ca.pem -noout"),
    );
    assert!(text(&o).contains("verify OK"), "{}", text(&o));

    assert_clean_failure(
        &broker(&words(&format!("ca crl --dir {ca} --serial 12ab"))),
        "not a certificate serial",
    );
    assert_clean_failure(
        &broker(&words(&format!("ca crl --dir {}/nowhere", d.display()))),
        "cannot read",
    );
}
