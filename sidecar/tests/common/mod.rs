//! A small world for end-to-end tests: a CA, the AWS emulator trusting it, a
//! role whose trust policy pins one ServiceAccount, and that SA's certificate.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use attache_emulator::{Emulator, EmulatorConfig};
use attache_pki::{
    CaOptions, CertificateAuthority, KeyType, PrivateKey, VerifiedCsr, WorkloadIdentity,
};
use time::OffsetDateTime;

pub const REGION: &str = "us-east-1";
pub const ACCOUNT: &str = "123456789012";
pub const ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/demo-anchor";
pub const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/demo-profile";
pub const ROLE: &str = "arn:aws:iam::123456789012:role/app-reader";
pub const SPIFFE: &str = "spiffe://cluster.local/ns/team-a/sa/app";

pub struct World {
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    pub emulator: Emulator,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub key_pem: String,
    pub serial_hex: String,
}

impl World {
    pub async fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            CertificateAuthority::create(&CaOptions::default(), OffsetDateTime::now_utc()).unwrap();
        let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
        emulator.trust_workload(ANCHOR, PROFILE, ROLE, ca.certificate_pem(), SPIFFE);
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr =
            VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
        let id = WorkloadIdentity::new("cluster.local", "team-a", "app").unwrap();
        let leaf = ca
            .issue_workload(
                &csr,
                &id,
                Duration::from_secs(24 * 3600),
                OffsetDateTime::now_utc(),
            )
            .unwrap();
        let cert = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        std::fs::write(&cert, &leaf.pem).unwrap();
        let key_pem = key.to_pkcs8_pem().to_string();
        std::fs::write(&key_path, &key_pem).unwrap();
        let serial_hex = serial_hex(&leaf.serial);
        World {
            dir,
            ca,
            emulator,
            cert,
            key: key_path,
            key_pem,
            serial_hex,
        }
    }

    /// The assumed-role ARN the emulator reports for this world's certificate.
    pub fn expected_arn(&self) -> String {
        format!(
            "arn:aws:sts::{ACCOUNT}:assumed-role/app-reader/{}",
            self.serial_hex
        )
    }

    /// Common `attache-sidecar` source flags for this world.
    pub fn source_flags(&self) -> Vec<String> {
        let mut flags = role_flags(&self.emulator.url());
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
}

/// The `attache-sidecar` source flags naming this world's region, profile,
/// role and trust anchor at `endpoint` (text logs), without a certificate source.
pub fn role_flags(endpoint: &str) -> Vec<String> {
    [
        "--region",
        REGION,
        "--profile-arn",
        PROFILE,
        "--role-arn",
        ROLE,
        "--trust-anchor-arn",
        ANCHOR,
        "--endpoint",
        endpoint,
        "--log-format",
        "text",
    ]
    .map(String::from)
    .to_vec()
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
