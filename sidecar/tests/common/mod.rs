//! A small world for end-to-end tests: a CA, the AWS emulator trusting it, a
//! role whose trust policy pins one ServiceAccount, and that SA's certificate.
//! The benches include this file too (`#[path]`), with their own [`Setup`].
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use attache_emulator::{Emulator, EmulatorConfig};
use attache_pki::{
    CaOptions, CertificateAuthority, IssuedCertificate, KeyType, PrivateKey, VerifiedCsr,
    WorkloadIdentity, X509Signer,
};
use attache_sidecar::certsource::{FileSource, FileSourceConfig};
use attache_sidecar::cli::Cli;
use attache_sidecar::metrics::Metrics;
use clap::Parser as _;
use time::OffsetDateTime;

pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "123456789012";
pub const ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/demo-anchor";
pub const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/demo-profile";
pub const ROLE: &str = "arn:aws:iam::123456789012:role/app-reader";
pub const SPIFFE: &str = "spiffe://cluster.local/ns/team-a/sa/app";

/// What a world's emulator trusts and its workload certificate carries.
#[derive(Clone, Copy)]
pub struct Setup {
    pub anchor: &'static str,
    pub profile: &'static str,
    pub role: &'static str,
    /// The ServiceAccount's SPIFFE ID, which the role's trust policy pins.
    pub spiffe: &'static str,
    /// How long the certificate is valid.
    pub lifetime: Duration,
}

/// The tests' setup: the constants above and a day-long certificate.
pub const TESTS: Setup = Setup {
    anchor: ANCHOR,
    profile: PROFILE,
    role: ROLE,
    spiffe: SPIFFE,
    lifetime: Duration::from_secs(24 * 3600),
};

impl Setup {
    /// `--region`, this setup's profile, role and trust anchor, and
    /// `--endpoint`: flags both `attache-sidecar` and `aws_signing_helper` take.
    pub fn flags(&self, endpoint: &str) -> Vec<String> {
        [
            ("--region", REGION),
            ("--profile-arn", self.profile),
            ("--role-arn", self.role),
            ("--trust-anchor-arn", self.anchor),
            ("--endpoint", endpoint),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
    }
}

pub struct World {
    pub setup: Setup,
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    pub emulator: Emulator,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub key_pem: String,
    pub serial_hex: String,
}

impl World {
    /// The world of [`TESTS`].
    pub async fn new() -> World {
        World::with(TESTS).await
    }

    /// A new CA, the emulator trusting it as `setup` says, and the
    /// ServiceAccount's key and certificate in `tls.key` and `tls.crt`.
    pub async fn with(setup: Setup) -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            CertificateAuthority::create(&CaOptions::default(), OffsetDateTime::now_utc()).unwrap();
        let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
        emulator.trust_workload(
            setup.anchor,
            setup.profile,
            setup.role,
            ca.certificate_pem(),
            setup.spiffe,
        );
        let id = WorkloadIdentity::from_spiffe_uri(setup.spiffe).unwrap();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        let leaf = write_workload(
            &ca,
            &id,
            setup.lifetime,
            OffsetDateTime::now_utc(),
            &cert,
            &key,
        );
        World {
            setup,
            key_pem: std::fs::read_to_string(&key).unwrap(),
            serial_hex: serial_hex(&leaf.serial),
            dir,
            ca,
            emulator,
            cert,
            key,
        }
    }

    /// The assumed-role ARN the emulator reports for this world's certificate.
    pub fn expected_arn(&self) -> String {
        let role_name = self.setup.role.rsplit('/').next().unwrap();
        format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{}",
            self.serial_hex
        )
    }

    /// The setup's [`Setup::flags`] at the emulator, with `--certificate` and
    /// `--private-key`: a certificate source both `attache-sidecar` and
    /// `aws_signing_helper` take.
    pub fn flags(&self) -> Vec<String> {
        let mut flags = self.setup.flags(&self.emulator.url());
        flags.extend(
            [
                "--certificate",
                self.cert.to_str().unwrap(),
                "--private-key",
                self.key.to_str().unwrap(),
            ]
            .map(String::from),
        );
        flags
    }

    /// `attache-sidecar <command>` arguments with this world's [`World::flags`].
    pub fn sidecar_args(&self, command: &str) -> Vec<String> {
        sidecar_args(command, self.flags())
    }

    /// A signer for this world's certificate and key, loaded as the sidecar loads them.
    pub fn signer(&self) -> Arc<X509Signer> {
        file_source(&self.cert, &self.key, Metrics::default())
            .load(OffsetDateTime::now_utc())
            .unwrap()
    }
}

/// `attache-sidecar <command>` arguments: `flags`, then text logs.
pub fn sidecar_args(command: &str, flags: Vec<String>) -> Vec<String> {
    let mut args = vec![command.to_string()];
    args.extend(flags);
    args.extend(["--log-format", "text"].map(String::from));
    args
}

/// Sets the value that follows `flag` in `args`, which must hold it.
pub fn set_flag(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).unwrap();
    args[i + 1] = value.to_string();
}

/// `attache-sidecar <args>` parsed as the binary parses its command line.
pub fn parse_cli(args: &[String]) -> Cli {
    Cli::try_parse_from(std::iter::once("attache-sidecar".to_string()).chain(args.iter().cloned()))
        .unwrap()
}

/// Issues `id` a certificate from `ca` for a new P-256 key, valid for
/// `lifetime` from `now`, and writes both as PEM to `cert` and `key`.
pub fn write_workload(
    ca: &CertificateAuthority,
    id: &WorkloadIdentity,
    lifetime: Duration,
    now: OffsetDateTime,
    cert: &Path,
    key: &Path,
) -> IssuedCertificate {
    let private_key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
    let csr = private_key.certificate_signing_request().unwrap();
    let csr = VerifiedCsr::parse(csr.as_bytes()).unwrap();
    let leaf = ca.issue_workload(&csr, id, lifetime, now).unwrap();
    std::fs::write(cert, &leaf.pem).unwrap();
    std::fs::write(key, private_key.to_pkcs8_pem().as_bytes()).unwrap();
    leaf
}

/// The sidecar's certificate source for `cert` and `key` (no intermediates).
pub fn file_source(cert: &Path, key: &Path, metrics: Metrics) -> FileSource {
    FileSource::new(
        FileSourceConfig {
            certificate: cert.to_path_buf(),
            private_key: key.to_path_buf(),
            intermediates: None,
        },
        metrics,
    )
}

/// Takes this machine's AWS configuration away from `cmd`: no `AWS_*`
/// variables, and /dev/null as config and credentials files.
pub fn no_aws_config(cmd: &mut Command) -> &mut Command {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
}

/// A botocore script printing STS GetCallerIdentity as JSON, in `AWS_REGION`
/// at the endpoint `STS_ENDPOINT`.
pub const BOTO_STS: &str = r#"
import json, os, botocore.session
s = botocore.session.get_session()
c = s.create_client("sts", region_name=os.environ["AWS_REGION"], endpoint_url=os.environ["STS_ENDPOINT"])
print(json.dumps(c.get_caller_identity()))
"#;

/// Sends `req` and reads the body of the reply (whatever its status) as JSON.
pub async fn json(req: reqwest::RequestBuilder) -> serde_json::Value {
    req.send().await.unwrap().json().await.unwrap()
}

/// Sends `req` and reads the body of the reply (whatever its status) as text.
pub async fn text(req: reqwest::RequestBuilder) -> String {
    req.send().await.unwrap().text().await.unwrap()
}

/// Decimal serial to lower-case hex (the emulator's default session name).
pub fn serial_hex(decimal: &str) -> String {
    // Long division by 16 on the decimal digits.
    let mut digits: Vec<u32> = decimal.bytes().map(|b| u32::from(b - b'0')).collect();
    let mut out = Vec::new();
    while !(digits.is_empty() || digits.iter().all(|d| *d == 0)) {
        let mut rem = 0;
        let mut next = Vec::with_capacity(digits.len());
        for d in &digits {
            let cur = rem * 10 + d;
            let q = cur / 16;
            rem = cur % 16;
            if !(next.is_empty() && q == 0) {
                next.push(q);
            }
        }
        out.push(std::char::from_digit(rem, 16).unwrap());
        digits = next;
    }
    out.iter().rev().collect()
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
