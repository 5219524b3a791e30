//! Real AWS SDKs read the sidecar's endpoint unmodified: botocore (container
//! provider and IMDSv2), the JavaScript SDK v3 (`fromHttp`,
//! `fromContainerMetadata`), the Go SDK v2 and Java SDK v2 default chains
//! (the `go-sdk-probe` and `java-sdk-probe` tools), the Rust SDK's default
//! chain, and `credential_process`. Each calls the emulator's STS
//! GetCallerIdentity and must see the role the certificate's ServiceAccount is
//! allowed. The sidecar's whole log is then searched for every secret it
//! handled.
//!
//! Every external tool comes from `attache_testkit`: a missing one fails the
//! test (`cargo xtask tools` provides them), it is never skipped.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Sidecar {
    child: Child,
    port: u16,
    token_file: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    /// The container credentials endpoint's URL.
    fn full_uri(&self) -> String {
        format!("http://127.0.0.1:{}/v1/credentials", self.port)
    }

    /// Points `cmd`'s container credentials provider at this sidecar (URL
    /// and token file, as the webhook injects them) and turns IMDS off.
    fn container_env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("AWS_CONTAINER_CREDENTIALS_FULL_URI", self.full_uri())
            .env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &self.token_file)
            .env("AWS_EC2_METADATA_DISABLED", "true")
    }
}

async fn start_sidecar(w: &World) -> Sidecar {
    let port = free_port();
    let token_file = w.dir.path().join("run/token");
    let log = w.dir.path().join("sidecar.log");
    let mut args = w.sidecar_args("serve");
    args.extend([
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--token-file".into(),
        token_file.to_str().unwrap().into(),
        "--imds".into(),
    ]);
    let child = sidecar(&args)
        .env("RUST_LOG", "trace")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut s = Sidecar {
        child,
        port,
        token_file,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            && r.status().is_success()
        {
            return s;
        }
        if let Ok(Some(status)) = s.child.try_wait() {
            panic!(
                "sidecar exited {status}: {}",
                std::fs::read_to_string(&s.log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "sidecar not ready: {}",
            std::fs::read_to_string(&s.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `attache-sidecar` binary with `args`.
fn sidecar(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_attache-sidecar"));
    cmd.args(args);
    cmd
}

/// Runs `cmd` to its end; `block_in_place` keeps the in-process emulator serving meanwhile.
fn output(cmd: &mut Command) -> Output {
    tokio::task::block_in_place(|| cmd.output().unwrap())
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An environment with no AWS configuration but what the test gives.
fn clean_env(cmd: &mut Command) -> &mut Command {
    no_aws_config(cmd).env("AWS_REGION", REGION)
}

/// botocore (the tools venv's Python; a missing venv fails the test) asking
/// the emulator's STS who it is, with no AWS configuration yet.
fn botocore(w: &World) -> Command {
    let mut cmd = Command::new(attache_testkit::require_python());
    clean_env(&mut cmd)
        .args(["-c", BOTO_STS])
        .env("STS_ENDPOINT", w.emulator.url());
    cmd
}

/// [`botocore`] with IMDS off and the `attache` profile of `file`, which
/// `file_var` names (`AWS_CONFIG_FILE` or `AWS_SHARED_CREDENTIALS_FILE`).
fn attache_profile(w: &World, file_var: &str, file: &Path) -> Command {
    let mut cmd = botocore(w);
    cmd.env(file_var, file)
        .env("AWS_PROFILE", "attache")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    cmd
}

/// Runs a client process printing STS GetCallerIdentity as JSON on its last
/// line, asserts it saw the world's role, and returns the reply.
fn identity_of(w: &World, client: &mut Command) -> serde_json::Value {
    let out = output(client);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reply: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(reply["Arn"], w.expected_arn(), "{reply}");
    assert_eq!(reply["Account"], ACCOUNT);
    let sessions = w.emulator.sessions();
    assert!(!sessions.is_empty());
    assert!(
        sessions
            .iter()
            .all(|s| s.san_uri.as_deref() == Some(SPIFFE) && s.role_arn == ROLE)
    );
    reply
}

fn assert_no_secrets_in(log: &Path, secrets: &[&str]) {
    let text = std::fs::read_to_string(log).unwrap();
    assert!(
        text.contains("obtained AWS credentials"),
        "the log is captured: {text}"
    );
    for s in secrets {
        assert!(!s.is_empty());
        assert!(
            !text.contains(s),
            "secret {}... found in the sidecar log",
            &s[..s.len().min(6)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn botocore_and_javascript_sdks_get_the_service_accounts_role_and_logs_hold_no_secret() {
    let w = World::new().await;
    let sidecar = start_sidecar(&w).await;
    let sts = w.emulator.url();

    // Both before any client runs: a missing tool fails at once.
    attache_testkit::require_python();
    let js_dir = attache_testkit::require_node_clients();

    // Container credentials provider.
    identity_of(&w, sidecar.container_env(&mut botocore(&w)));
    // IMDSv2 (token PUT, role listing, credentials).
    identity_of(
        &w,
        botocore(&w).env(
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            format!("http://127.0.0.1:{}/", sidecar.port),
        ),
    );

    let token = std::fs::read_to_string(&sidecar.token_file).unwrap();
    for provider in ["fromHttp", "fromContainerMetadata"] {
        let mut cmd = Command::new("node");
        clean_env(&mut cmd)
            .arg(js_dir.join("sts-identity.mjs"))
            .arg(provider)
            .env("AWS_CONTAINER_CREDENTIALS_FULL_URI", sidecar.full_uri())
            .env("STS_ENDPOINT", &sts);
        if provider == "fromHttp" {
            // What the SDK's default chain uses for FULL_URI: the token file.
            cmd.env(
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                &sidecar.token_file,
            );
        } else {
            // The older ECS provider only reads the token from the environment.
            cmd.env("AWS_CONTAINER_AUTHORIZATION_TOKEN", token.trim());
        }
        identity_of(&w, &mut cmd);
    }

    assert_log_holds_no_secret(&w, sidecar).await;
}

/// Fetches every secret the sidecar handled, stops it, then searches its log.
async fn assert_log_holds_no_secret(w: &World, sidecar: Sidecar) {
    let token = std::fs::read_to_string(&sidecar.token_file).unwrap();
    let creds = json(
        reqwest::Client::new()
            .get(sidecar.full_uri())
            .header("Authorization", token.trim()),
    )
    .await;
    let key_body: String = w.key_pem.lines().nth(1).unwrap().to_string();
    let log = sidecar.log.clone();
    drop(sidecar);
    assert_no_secrets_in(
        &log,
        &[
            creds["SecretAccessKey"].as_str().unwrap(),
            creds["Token"].as_str().unwrap(),
            token.trim(),
            &key_body,
        ],
    );
}

/// Runs an SDK probe tool (`go-sdk-probe`, `java-sdk-probe`): the SDK's
/// default credential chain, unconfigured but for the two variables the
/// webhook injects, must find the sidecar's endpoint and get the role.
async fn probe_gets_the_service_accounts_role(tool: &str) {
    let probe = attache_testkit::require_tool(tool);
    let w = World::new().await;
    let sidecar = start_sidecar(&w).await;
    let home = w.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = Command::new(&probe);
    clean_env(&mut cmd)
        .env("HOME", &home)
        .env("STS_ENDPOINT", w.emulator.url());
    let reply = identity_of(&w, sidecar.container_env(&mut cmd));
    assert!(
        reply["UserId"].as_str().is_some_and(|u| !u.is_empty()),
        "{reply}"
    );
    assert_log_holds_no_secret(&w, sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_sdk_default_chain_gets_the_service_accounts_role() {
    probe_gets_the_service_accounts_role("go-sdk-probe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn java_sdk_default_chain_gets_the_service_accounts_role() {
    probe_gets_the_service_accounts_role("java-sdk-probe").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_process_output_works_as_an_aws_config_credential_process() {
    let w = World::new().await;
    let args = w.sidecar_args("credential-process");
    let out = output(&mut sidecar(&args));
    assert_success(&out);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["Version"], 1);
    assert!(doc["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert!(doc["Expiration"].as_str().unwrap().ends_with('Z'));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains(doc["SecretAccessKey"].as_str().unwrap()));

    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_attache-sidecar").to_string())
        .chain(args)
        .collect();
    let config = w.dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile attache]\ncredential_process = {}\n",
            quoted.join(" ")
        ),
    )
    .unwrap();
    identity_of(&w, &mut attache_profile(&w, "AWS_CONFIG_FILE", &config));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_validation_lists_every_problem_on_its_own_line() {
    let w = World::new().await;
    let out = Command::new(env!("CARGO_BIN_EXE_attache-sidecar"))
        .args([
            "credential-process",
            "--region",
            "mars-1",
            "--profile-arn",
            "arn:aws:rolesanywhere:us-east-1:1:profile/p",
            "--role-arn",
            "arn:aws:iam::123456789012:user/bob",
            "--trust-anchor-arn",
            ANCHOR,
            "--certificate",
            w.cert.to_str().unwrap(),
            "--private-key",
            w.dir.path().join("missing.key").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    for needle in [
        "unknown region \"mars-1\"",
        "invalid profile ARN",
        "invalid role ARN",
        "missing.key",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "{needle} not in {err}"
        );
    }
    // A key that does not match the certificate, and an expired certificate.
    let other = attache_pki::PrivateKey::generate(attache_pki::KeyType::EcdsaP256).unwrap();
    let other_key = w.dir.path().join("other.key");
    std::fs::write(&other_key, other.to_pkcs8_pem().as_bytes()).unwrap();
    let mut args = w.sidecar_args("credential-process");
    set_flag(&mut args, "--private-key", other_key.to_str().unwrap());
    let out = output(&mut sidecar(&args));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not match"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_writes_one_profile_and_keeps_the_others() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = World::new().await;
    let file = w.dir.path().join("aws/credentials");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "[personal]\naws_access_key_id = AKIAKEEPME\n").unwrap();
    let mut args = w.sidecar_args("update");
    args.extend(
        [
            "--once",
            "--profile",
            "attache",
            "--credentials-file",
            file.to_str().unwrap(),
        ]
        .map(String::from),
    );
    assert_success(&output(&mut sidecar(&args)));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("[personal]\naws_access_key_id = AKIAKEEPME"),
        "{text}"
    );
    assert!(
        text.contains("[attache]\naws_access_key_id = ASIA"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    identity_of(
        &w,
        &mut attache_profile(&w, "AWS_SHARED_CREDENTIALS_FILE", &file),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_and_no_proxy_are_honoured() {
    use std::io::{Read as _, Write as _};
    let w = World::new().await;
    // A stand-in proxy that records the CONNECT line and refuses it: nothing leaves the machine.
    let proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let seen = std::thread::spawn(move || {
        let (mut s, _) = proxy.accept().unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        let _ = s.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n");
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    });
    let mut args = w.sidecar_args("credential-process");
    // Without --endpoint the real regional endpoint is used, through the proxy.
    let i = args.iter().position(|a| a == "--endpoint").unwrap();
    args.drain(i..i + 2);
    let out = output(
        sidecar(&args)
            .env("HTTPS_PROXY", &proxy_url)
            .env_remove("NO_PROXY"),
    );
    assert!(!out.status.success());
    assert_eq!(
        seen.join().unwrap(),
        "CONNECT rolesanywhere.us-east-1.amazonaws.com:443 HTTP/1.1"
    );
    // NO_PROXY exempts the emulator: the same proxy setting, yet a direct call succeeds.
    let out = output(
        sidecar(&w.sidecar_args("credential-process"))
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "127.0.0.1"),
    );
    assert_success(&out);
}

/// Runs the Rust SDK's default credential chain in a child process (this
/// test binary again, running only this test with `ATTACHE_AWS_CONFIG_CHILD`
/// set, which takes the child's part), because the chain reads the process
/// environment and tests share theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_aws_config_default_chain_reads_the_endpoint() {
    if std::env::var_os("ATTACHE_AWS_CONFIG_CHILD").is_some() {
        return aws_config_child().await;
    }
    let w = World::new().await;
    let sidecar = start_sidecar(&w).await;
    let home = w.dir.path().join("home");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    clean_env(&mut cmd)
        .args([
            "rust_aws_config_default_chain_reads_the_endpoint",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ATTACHE_AWS_CONFIG_CHILD", "1")
        .env("HOME", &home)
        .env("STS_ENDPOINT", w.emulator.url());
    let out = output(sidecar.container_env(&mut cmd));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("ARN={}", w.expected_arn())),
        "{stdout}"
    );
    assert!(stdout.contains("EXPIRY=some"), "{stdout}");
}

/// The child side of the test above: resolve, call STS, print what it saw.
async fn aws_config_child() {
    use aws_credential_types::provider::ProvideCredentials as _;
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let provider = config
        .credentials_provider()
        .expect("a credentials provider");
    let creds = provider
        .provide_credentials()
        .await
        .expect("the default chain resolves credentials");
    let session = attache_emulator::client::SigningCredentials {
        access_key_id: creds.access_key_id().to_string(),
        secret_access_key: creds.secret_access_key().to_string().into(),
        session_token: creds.session_token().map(|t| t.to_string().into()),
    };
    let endpoint = std::env::var("STS_ENDPOINT").unwrap();
    let arn = attache_emulator::client::get_caller_identity(
        &reqwest::Client::new(),
        &endpoint,
        REGION,
        &session,
    )
    .await
    .unwrap();
    println!("ARN={arn}");
    println!(
        "EXPIRY={}",
        if creds.expiry().is_some() {
            "some"
        } else {
            "none"
        }
    );
}
