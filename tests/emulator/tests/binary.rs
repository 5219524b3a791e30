//! The `attache-emulator` binary: reads a TOML config, prints its URL, serves,
//! and exits cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use time::OffsetDateTime;

#[tokio::test]
async fn binary_serves_its_config_file_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("test root");
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let config = include_str!("../one-role.toml")
        .replace("{region}", REGION)
        .replace("{account}", ACCOUNT)
        .replace("{trust_anchor_arn}", TA_ARN)
        .replace("{ca_bundle_file}", "ca.pem")
        .replace("{profile_arn}", PROFILE_ARN)
        .replace("{role_arn}", ROLE_ARN)
        .replace("{spiffe_id}", SPIFFE_URI);
    let config_path = dir.path().join("emulator.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_attache-emulator"))
        .env("ATTACHE_EMULATOR_CONFIG", &config_path)
        .env("ATTACHE_EMULATOR_LISTEN", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        lines
            .find_map(|l| {
                l.ok()
                    .and_then(|l| l.strip_prefix("url: ").map(str::to_string))
            })
            .unwrap_or_default()
    })
    .await
    .unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{url:?}");
    let host = url.trim_start_matches("http://").to_string();
    let signer = ca.leaf(&LeafOpts::default());
    let req = signed_session_request(
        &signer,
        &host,
        session_body(ROLE_ARN, None),
        REGION,
        OffsetDateTime::now_utc(),
    );
    let answer = send(&url, &req).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    let creds = creds_of(&answer);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit: {:?}", out.status);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("CreateSession granted"), "{logs}");
    assert!(
        !logs.contains(&creds.secret_access_key),
        "secret key leaked into logs"
    );
    assert!(
        !logs.contains(&creds.session_token),
        "session token leaked into logs"
    );
}

#[test]
fn binary_refuses_a_bad_config_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[trust_anchors]]\narn = \"ta\"\nca_bundle_file = \"missing.pem\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_attache-emulator"))
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.pem"), "{err}");
}
