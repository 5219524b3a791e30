//! `attache-sidecar credential-process` and AWS's `aws_signing_helper
//! credential-process` (github.com/aws/rolesanywhere-credential-helper v1.4.0,
//! built by `cargo xtask tools`) are interchangeable: for the same certificate
//! and key against the emulator they print documents with the same keys, and
//! botocore, given either as its `credential_process`, calls STS
//! GetCallerIdentity as the same role.
//!
//! A missing `aws_signing_helper` or tools Python venv fails this test.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;
use time::OffsetDateTime;

/// `aws_signing_helper credential-process` arguments for the world's certificate.
fn helper_args(w: &World) -> Vec<String> {
    let mut args = vec!["credential-process".to_string()];
    args.extend(w.flags());
    args
}

/// A command with no AWS configuration of this machine.
fn clean(mut cmd: Command) -> Command {
    no_aws_config(&mut cmd).env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Runs `program args` (the emulator keeps serving on the other worker) and
/// parses its stdout as one JSON document.
fn run_json(program: &std::path::Path, args: &[String]) -> serde_json::Value {
    let mut cmd = clean(Command::new(program));
    cmd.args(args);
    let out = tokio::task::block_in_place(|| cmd.output().unwrap());
    assert!(
        out.status.success(),
        "{} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn keys(doc: &serde_json::Value) -> BTreeSet<String> {
    doc.as_object().unwrap().keys().cloned().collect()
}

fn expiration(doc: &serde_json::Value) -> OffsetDateTime {
    OffsetDateTime::parse(
        doc["Expiration"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|e| panic!("{e}: {doc}"))
}

/// A `credential_process` line: the program and its arguments, none of which
/// holds a space or a quote (temporary paths, ARNs, a loopback URL).
fn command_line(program: &std::path::Path, args: &[String]) -> String {
    let mut parts = vec![program.to_str().unwrap().to_string()];
    parts.extend(args.iter().cloned());
    for p in &parts {
        assert!(!p.contains([' ', '"', '\'']), "cannot quote {p:?}");
    }
    parts.join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_and_aws_signing_helper_credential_processes_are_interchangeable() {
    let helper = attache_testkit::require_tool("aws_signing_helper");
    let python = attache_testkit::require_python();
    let sidecar = std::path::PathBuf::from(env!("CARGO_BIN_EXE_attache-sidecar"));
    let w = World::new().await;

    // The documents: same keys, same meaning.
    let ours = run_json(&sidecar, &w.sidecar_args("credential-process"));
    let theirs = run_json(&helper, &helper_args(&w));
    assert_eq!(keys(&ours), keys(&theirs), "ours {ours}\ntheirs {theirs}");
    assert_eq!(
        keys(&ours),
        [
            "AccessKeyId",
            "Expiration",
            "SecretAccessKey",
            "SessionToken",
            "Version"
        ]
        .map(String::from)
        .into()
    );
    for doc in [&ours, &theirs] {
        assert_eq!(doc["Version"], 1, "{doc}");
        assert!(doc["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
        assert!(doc["Expiration"].as_str().unwrap().ends_with('Z'), "{doc}");
    }
    // Both ask for the same default session length.
    assert!((expiration(&ours) - expiration(&theirs)).abs() < time::Duration::minutes(1));
    assert_ne!(ours["AccessKeyId"], theirs["AccessKeyId"]);
    let sessions = w.emulator.sessions();
    assert_eq!(sessions.len(), 2);
    for (s, doc) in sessions.iter().zip([&ours, &theirs]) {
        assert_eq!(s.access_key_id, doc["AccessKeyId"].as_str().unwrap());
        assert_eq!(
            (s.role_arn.as_str(), s.trust_anchor_arn.as_str()),
            (ROLE, ANCHOR)
        );
        assert_eq!(s.san_uri.as_deref(), Some(SPIFFE));
        assert_eq!(s.role_session_name, w.serial_hex);
    }

    // botocore with either as its credential_process.
    let config = w.dir.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile attache]\ncredential_process = {}\n\n[profile aws-signing-helper]\ncredential_process = {}\n",
            command_line(&sidecar, &w.sidecar_args("credential-process")),
            command_line(&helper, &helper_args(&w)),
        ),
    )
    .unwrap();
    let mut arns = Vec::new();
    for profile in ["attache", "aws-signing-helper"] {
        let mut cmd = clean(Command::new(&python));
        cmd.args(["-c", BOTO_STS])
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_PROFILE", profile)
            .env("AWS_REGION", REGION)
            .env("STS_ENDPOINT", w.emulator.url());
        let out = tokio::task::block_in_place(|| cmd.output().unwrap());
        assert!(
            out.status.success(),
            "botocore with profile {profile}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(reply["Account"], ACCOUNT, "{profile}: {reply}");
        arns.push(reply["Arn"].as_str().unwrap().to_string());
    }
    assert_eq!(arns[0], arns[1]);
    assert_eq!(arns[0], w.expected_arn());
    // Two more sessions, one per credential_process run by botocore.
    assert_eq!(w.emulator.sessions().len(), 4);
}
