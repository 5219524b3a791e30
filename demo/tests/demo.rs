//! README command 1 works: the demo runs the whole flow and says so.

#[test]
fn demo_runs_the_whole_flow_against_the_emulator() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_attache-demo"))
        .args(["--once", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("arn:aws:sts::123456789012:assumed-role/demo-app/"),
        "{stdout}"
    );
    assert!(stdout.contains("\"username\":\"AWS\""), "{stdout}");
    assert!(
        stdout.contains("export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(stdout.contains("Everything worked"), "{stdout}");
    assert!(
        !stdout.contains("amazonaws.com/") || !stdout.contains("https://sts."),
        "never a real AWS endpoint"
    );
}
