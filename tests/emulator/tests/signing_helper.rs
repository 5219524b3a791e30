//! AWS's own Roles Anywhere signer as the reference client: `aws_signing_helper`
//! (github.com/aws/rolesanywhere-credential-helper, built by `cargo xtask
//! tools`) runs `credential-process` against the in-process emulator with
//! leaves issued by attache's CA (EC P-256, EC P-384, RSA-2048), directly under
//! the trust anchor and through intermediates (`--intermediates`). The
//! credentials it prints must be the session the emulator recorded and must
//! work for STS GetCallerIdentity; a leaf from a CA that is not the anchor, or
//! a chain breaking an intermediate's pathLenConstraint, must be refused.
//!
//! A missing `aws_signing_helper` fails these tests (attache-testkit).

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use attache_emulator::client::{SigningCredentials, get_caller_identity};
use attache_emulator::{Emulator, EmulatorConfig, Operation};
use attache_pki::{CertificateAuthority, IssuedCertificate, KeyType, PrivateKey};
use common::{ACCOUNT, REGION, SPIFFE_URI as SPIFFE, ca_params, serial_hex, workload_leaf};
use rcgen::{CertifiedIssuer, DistinguishedName, DnType};
use time::OffsetDateTime;

const ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/helper-anchor";
const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/helper-profile";
const ROLE: &str = "arn:aws:iam::123456789012:role/helper-role";

type RcgenCa = CertifiedIssuer<'static, PrivateKey>;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A CA certificate made with rcgen (attache's own CA is a root with
/// pathLenConstraint 0, so roots and intermediates of longer chains are built
/// here), signed by `parent` or self-signed.
fn rcgen_ca(
    cn: &str,
    key_type: KeyType,
    path_len: Option<u8>,
    parent: Option<&RcgenCa>,
) -> RcgenCa {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "attache tests");
    dn.push(DnType::CommonName, cn);
    let p = ca_params(dn, path_len);
    let key = PrivateKey::generate(key_type).unwrap();
    match parent {
        Some(parent) => CertifiedIssuer::signed_by(p, key, parent).unwrap(),
        None => CertifiedIssuer::self_signed(p, key).unwrap(),
    }
}

/// attache's CA code issuing under an rcgen-made CA certificate.
fn as_attache_ca(ca: &RcgenCa) -> CertificateAuthority {
    CertificateAuthority::from_pem(&ca.pem(), &ca.key().to_pkcs8_pem()).unwrap()
}

/// A workload leaf for [`SPIFFE`] with a fresh `key_type` key, issued by attache's CA code.
fn issue_leaf(ca: &CertificateAuthority, key_type: KeyType) -> (IssuedCertificate, PrivateKey) {
    workload_leaf(ca, key_type, Duration::from_secs(24 * 3600))
}

/// The leaf, its key and the intermediates on disk, as the helper reads them.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    intermediates: Option<PathBuf>,
}

fn write_files(cert: &IssuedCertificate, key: &PrivateKey, intermediates: &[&RcgenCa]) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("leaf.pem");
    let key_path = dir.path().join("leaf.key");
    std::fs::write(&cert_path, &cert.pem).unwrap();
    std::fs::write(&key_path, key.to_pkcs8_pem().as_bytes()).unwrap();
    let intermediates = (!intermediates.is_empty()).then(|| {
        let path = dir.path().join("intermediates.pem");
        let bundle: String = intermediates.iter().map(|c| c.pem()).collect();
        std::fs::write(&path, bundle).unwrap();
        path
    });
    Files {
        _dir: dir,
        cert: cert_path,
        key: key_path,
        intermediates,
    }
}

/// An emulator trusting `anchor_pem` for one profile and one role whose trust
/// policy admits only [`SPIFFE`].
async fn emulator(anchor_pem: &str) -> Emulator {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emu.trust_workload(ANCHOR, PROFILE, ROLE, anchor_pem, SPIFFE);
    emu
}

/// Runs `aws_signing_helper credential-process` against `emu` with no AWS
/// configuration from this machine. `block_in_place` keeps the in-process
/// emulator serving on the other worker.
fn run_helper(emu: &Emulator, files: &Files) -> Output {
    let mut cmd = attache_testkit::tool_command("aws_signing_helper");
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .args(["credential-process", "--certificate"])
        .arg(&files.cert)
        .arg("--private-key")
        .arg(&files.key);
    let url = emu.url();
    let options = [
        ("--trust-anchor-arn", ANCHOR),
        ("--profile-arn", PROFILE),
        ("--role-arn", ROLE),
        ("--region", REGION),
        ("--endpoint", &url),
    ];
    for (option, value) in options {
        cmd.arg(option).arg(value);
    }
    if let Some(bundle) = &files.intermediates {
        cmd.arg("--intermediates").arg(bundle);
    }
    tokio::task::block_in_place(|| cmd.output().expect("aws_signing_helper runs"))
}

/// Runs the helper and asserts it is refused: it fails, and its stderr names
/// AccessDeniedException and each of `needles`.
fn assert_helper_refused(emu: &Emulator, files: &Files, needles: &[&str]) -> Output {
    let out = run_helper(emu, files);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {stderr}");
    for needle in ["AccessDeniedException"].iter().chain(needles) {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    out
}

/// The helper succeeds; its JSON is the session the emulator recorded for
/// [`ROLE`] and [`SPIFFE`]; the credentials pass STS GetCallerIdentity.
async fn assert_helper_gets_the_role(emu: &Emulator, files: &Files, cert: &IssuedCertificate) {
    let out = run_helper(emu, files);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "aws_signing_helper failed: {stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let keys: Vec<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "AccessKeyId",
            "Expiration",
            "SecretAccessKey",
            "SessionToken",
            "Version"
        ],
        "{doc}"
    );
    assert_eq!(doc["Version"], 1);
    let access_key_id = doc["AccessKeyId"].as_str().unwrap();
    assert!(access_key_id.starts_with("ASIA"), "{doc}");
    let expiration = OffsetDateTime::parse(
        doc["Expiration"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    // The helper asks for its default 3600 s session.
    assert!((expiration - now() - time::Duration::hours(1)).abs() < time::Duration::minutes(1));

    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let s = &sessions[0];
    assert_eq!(s.role_arn, ROLE);
    assert_eq!(s.profile_arn, PROFILE);
    assert_eq!(s.trust_anchor_arn, ANCHOR);
    assert_eq!(s.san_uri.as_deref(), Some(SPIFFE));
    assert_eq!(s.subject_cn.as_deref(), Some("app"));
    assert_eq!(s.certificate_serial, cert.serial);
    assert_eq!(s.access_key_id, access_key_id);
    assert_eq!(s.role_session_name, serial_hex(&cert.der));

    let creds = SigningCredentials {
        access_key_id: access_key_id.to_string(),
        secret_access_key: doc["SecretAccessKey"].as_str().unwrap().to_string().into(),
        session_token: Some(doc["SessionToken"].as_str().unwrap().to_string().into()),
    };
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let arn = get_caller_identity(&http, &emu.url(), REGION, &creds)
        .await
        .unwrap();
    assert_eq!(
        arn,
        attache_emulator::assumed_role_arn(ACCOUNT, "helper-role", &s.role_session_name)
    );
}

/// A leaf of `key_type` issued by an attache CA (same key type) that is the anchor.
async fn directly_under_the_anchor(key_type: KeyType) {
    let ca = CertificateAuthority::create(
        &attache_pki::CaOptions {
            key_type,
            ..attache_pki::CaOptions::default()
        },
        now(),
    )
    .unwrap();
    let emu = emulator(&ca.trust_anchor_pem()).await;
    let (cert, key) = issue_leaf(&ca, key_type);
    let files = write_files(&cert, &key, &[]);
    assert_helper_gets_the_role(&emu, &files, &cert).await;
}

/// A leaf of `key_type` issued by an attache CA that is an intermediate under
/// the anchor root; the helper sends the intermediate as X-Amz-X509-Chain.
async fn through_an_intermediate(key_type: KeyType) {
    let root = rcgen_ca("helper test root", KeyType::EcdsaP384, Some(1), None);
    let intermediate = rcgen_ca("helper test intermediate", key_type, Some(0), Some(&root));
    let emu = emulator(&root.pem()).await;
    let (cert, key) = issue_leaf(&as_attache_ca(&intermediate), key_type);

    // Without --intermediates the leaf does not reach the anchor.
    let lone = write_files(&cert, &key, &[]);
    assert_helper_refused(&emu, &lone, &[]);
    assert!(emu.sessions().is_empty());

    let files = write_files(&cert, &key, &[&intermediate]);
    assert_helper_gets_the_role(&emu, &files, &cert).await;
}

/// One test per key type and case: `name: case(KeyType variant);`.
macro_rules! key_type_tests {
    ($($name:ident: $case:ident($key_type:ident);)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $case(KeyType::$key_type).await;
        }
    )*};
}

key_type_tests! {
    ec_p256_leaf_directly_under_the_anchor: directly_under_the_anchor(EcdsaP256);
    ec_p384_leaf_directly_under_the_anchor: directly_under_the_anchor(EcdsaP384);
    rsa_2048_leaf_directly_under_the_anchor: directly_under_the_anchor(Rsa2048);
    ec_p256_leaf_through_an_intermediate: through_an_intermediate(EcdsaP256);
    ec_p384_leaf_through_an_intermediate: through_an_intermediate(EcdsaP384);
    rsa_2048_leaf_through_an_intermediate: through_an_intermediate(Rsa2048);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaf_from_a_ca_that_is_not_the_anchor_is_refused() {
    let anchor = CertificateAuthority::create(&attache_pki::CaOptions::default(), now()).unwrap();
    let stranger = CertificateAuthority::create(
        &attache_pki::CaOptions {
            common_name: "attache CA".into(), // same name, different key
            ..attache_pki::CaOptions::default()
        },
        now(),
    )
    .unwrap();
    let emu = emulator(&anchor.trust_anchor_pem()).await;
    let (cert, key) = issue_leaf(&stranger, KeyType::EcdsaP256);
    // The stranger's certificate offered as an intermediate does not help either.
    let stranger_as_chain = rcgen_ca("stranger", KeyType::EcdsaP256, None, None);
    for intermediates in [Vec::new(), vec![&stranger_as_chain]] {
        let files = write_files(&cert, &key, &intermediates);
        let out = assert_helper_refused(&emu, &files, &["Untrusted signing certificate"]);
        assert!(out.stdout.is_empty());
    }
    assert!(emu.sessions().is_empty());
    // Both requests reached the emulator and were refused there.
    assert_eq!(emu.request_count(Operation::CreateSession), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_intermediates_obey_path_length_constraints() {
    let root = rcgen_ca("helper test root", KeyType::EcdsaP256, None, None);
    let emu = emulator(&root.pem()).await;
    // pathLenConstraint 0 on the upper intermediate forbids another below it.
    for (upper_path_len, allowed) in [(Some(0), false), (Some(1), true)] {
        let upper = rcgen_ca(
            "upper intermediate",
            KeyType::EcdsaP256,
            upper_path_len,
            Some(&root),
        );
        let lower = rcgen_ca(
            "lower intermediate",
            KeyType::EcdsaP256,
            Some(0),
            Some(&upper),
        );
        let (cert, key) = issue_leaf(&as_attache_ca(&lower), KeyType::EcdsaP256);
        let files = write_files(&cert, &key, &[&lower, &upper]);
        if allowed {
            assert_helper_gets_the_role(&emu, &files, &cert).await;
        } else {
            assert_helper_refused(&emu, &files, &["pathLenConstraint"]);
            assert!(emu.sessions().is_empty());
        }
    }
}

#[test]
fn the_helper_is_the_pinned_v1_4_0_build() {
    // Built without -ldflags, `aws_signing_helper version` prints nothing; the
    // Go build info embedded in the binary names the module version.
    let binary = std::fs::read(attache_testkit::require_tool("aws_signing_helper")).unwrap();
    let needle = b"github.com/aws/rolesanywhere-credential-helper\tv1.4.0\t";
    assert!(
        binary.windows(needle.len()).any(|w| w == needle),
        "aws_signing_helper is not rolesanywhere-credential-helper v1.4.0 (run `cargo xtask tools`)"
    );
}
