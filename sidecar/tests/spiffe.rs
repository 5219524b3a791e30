//! The SPIFFE Workload API certificate source against a real SPIRE server and
//! agent (built by `cargo xtask tools` from the pinned module): a registered
//! workload's X.509-SVID signs CreateSession with the SPIRE bundle as trust
//! anchor (through `credential-process`, `serve` and `update`), a long-lived
//! source follows the agent's rotations, and a missing
//! socket or SVID fails with a clear error instead of hanging.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use attache_aws::cache::CredentialSource as _;
use attache_emulator::{Emulator, EmulatorConfig};
use attache_rt::clock::SystemClock;
use attache_sidecar::cli::Command as SidecarCommand;
use attache_sidecar::metrics::Metrics;
use attache_sidecar::source::RolesAnywhereSource;
use attache_testkit::tool_command;
use common::{ANCHOR, PROFILE, ROLE, TESTS, free_port, parse_cli, sidecar_args};

const TRUST_DOMAIN: &str = "example.org";
const WORKLOAD: &str = "spiffe://example.org/workload";
/// The workload SVIDs' lifetime: the agent rotates them at half-life.
const SVID_TTL_SECONDS: u64 = 30;

/// A SPIRE server and agent in a temporary directory, killed on drop.
struct Spire {
    dir: tempfile::TempDir,
    children: Vec<Child>,
    /// The server's X.509 bundle (its CA), PEM.
    bundle_pem: String,
}

impl Drop for Spire {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Spire {
    /// Starts the server (join_token node attestation, sqlite datastore,
    /// short SVID TTL), registers `spiffe://example.org/workload` for this
    /// process's uid under the agent that a join token will attest, then
    /// starts that agent (unix workload attestor).
    fn start() -> Spire {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port().to_string();
        let data = d.join("server");
        std::fs::write(
            d.join("server.conf"),
            spire_config(
                "server",
                &data,
                &d.join("server.sock"),
                &[
                    ("bind_address", "127.0.0.1"),
                    ("bind_port", &port),
                    ("default_x509_svid_ttl", &format!("{SVID_TTL_SECONDS}s")),
                ],
                (
                    r#"DataStore "sql""#,
                    &[
                        ("database_type", "sqlite3"),
                        (
                            "connection_string",
                            &format!("{}/datastore.sqlite3", data.display()),
                        ),
                    ],
                ),
            ),
        )
        .unwrap();
        let mut spire = Spire {
            children: vec![spawn_logged(
                tool_command("spire-server")
                    .args(["run", "-config"])
                    .arg(d.join("server.conf")),
                &d.join("server.log"),
            )],
            dir,
            bundle_pem: String::new(),
        };
        let d = spire.dir.path().to_path_buf();
        let server_sock = d.join("server.sock");
        let server = |args: &[&str]| {
            let mut cmd = tool_command("spire-server");
            cmd.args(args).arg("-socketPath").arg(&server_sock);
            cmd
        };
        wait_until_healthy(&mut server(&["healthcheck"]), &d.join("server.log"));
        spire.bundle_pem = stdout(&mut server(&["bundle", "show"]));
        assert!(spire.bundle_pem.contains("BEGIN CERTIFICATE"));
        std::fs::write(d.join("bundle.pem"), &spire.bundle_pem).unwrap();

        let token = stdout(&mut server(&["token", "generate", "-ttl", "600"]));
        let token = token
            .lines()
            .find_map(|l| l.strip_prefix("Token: "))
            .unwrap_or_else(|| panic!("spire-server token generate printed {token:?}"))
            .trim()
            .to_string();
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        stdout(&mut server(&[
            "entry",
            "create",
            "-parentID",
            &format!("spiffe://{TRUST_DOMAIN}/spire/agent/join_token/{token}"),
            "-spiffeID",
            WORKLOAD,
            "-selector",
            &format!("unix:uid:{uid}"),
        ]));

        std::fs::write(
            d.join("agent.conf"),
            spire_config(
                "agent",
                &d.join("agent"),
                &spire.agent_socket(),
                &[
                    ("server_address", "127.0.0.1"),
                    ("server_port", &port),
                    (
                        "trust_bundle_path",
                        &d.join("bundle.pem").display().to_string(),
                    ),
                ],
                (r#"WorkloadAttestor "unix""#, &[]),
            ),
        )
        .unwrap();
        spire.children.push(spawn_logged(
            tool_command("spire-agent")
                .args(["run", "-config"])
                .arg(d.join("agent.conf"))
                .args(["-joinToken", &token]),
            &d.join("agent.log"),
        ));
        wait_until_healthy(
            tool_command("spire-agent")
                .args(["healthcheck", "-socketPath"])
                .arg(spire.agent_socket()),
            &d.join("agent.log"),
        );
        spire
    }

    fn agent_socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    /// `unix:///<agent socket>`, the form SPIFFE_ENDPOINT_SOCKET takes.
    fn endpoint(&self) -> String {
        format!("unix://{}", self.agent_socket().display())
    }
}

/// A SPIRE configuration file for `section` (`server` or `agent`): the trust
/// domain, warnings only, its data in `data` and its API on `socket`, then
/// `settings`; the in-memory key manager, join-token node attestation and
/// `plugin` (its kind and name, and its `plugin_data` settings).
fn spire_config(
    section: &str,
    data: &Path,
    socket: &Path,
    settings: &[(&str, &str)],
    (plugin, plugin_data): (&str, &[(&str, &str)]),
) -> String {
    let lines = |indent: &str, items: &[(&str, &str)]| -> String {
        items
            .iter()
            .map(|(key, value)| format!("{indent}{key} = \"{value}\"\n"))
            .collect()
    };
    let (data, socket) = (data.display().to_string(), socket.display().to_string());
    let shared = [
        ("trust_domain", TRUST_DOMAIN),
        ("log_level", "WARN"),
        ("data_dir", &data),
        ("socket_path", &socket),
    ];
    let settings = lines("    ", &shared) + &lines("    ", settings);
    let plugin_data = lines("            ", plugin_data);
    format!(
        r#"{section} {{
{settings}}}
plugins {{
    KeyManager "memory" {{
        plugin_data {{}}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    {plugin} {{
        plugin_data {{
{plugin_data}        }}
    }}
}}
"#
    )
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn wait_until_healthy(cmd: &mut Command, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if cmd.output().is_ok_and(|o| o.status.success()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{cmd:?} not healthy within 60s; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// The emulator trusting `bundle_pem`, with a role that admits only
/// `spiffe://example.org/workload`.
async fn emulator(bundle_pem: &str) -> Emulator {
    let emulator = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emulator.trust_workload(ANCHOR, PROFILE, ROLE, bundle_pem, WORKLOAD);
    emulator
}

/// `credential-process` with the tests' role flags at `emulator_url` (no
/// certificate source), then `extra`.
fn credential_process(emulator_url: &str, extra: &[&str]) -> Vec<String> {
    let mut args = sidecar_args("credential-process", TESTS.flags(emulator_url));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn sidecar(args: &[String], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attache-sidecar"))
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The same source the binary builds, from `credential-process` arguments.
fn in_process_source(args: &[String]) -> RolesAnywhereSource {
    let SidecarCommand::CredentialProcess(source) = parse_cli(args).command else {
        unreachable!("parsed credential-process");
    };
    let setup = source
        .build(&Metrics::default())
        .unwrap_or_else(|p| panic!("{p:?}"));
    RolesAnywhereSource {
        certs: setup.certs,
        client: setup.client,
        clock: Arc::new(SystemClock),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spire_svid_gets_credentials_and_rotations_are_followed() {
    let spire = Spire::start();
    let emulator = emulator(&spire.bundle_pem).await;

    // (a) credential-process, the socket named as the SPIFFE spec names it.
    let out = sidecar(
        &credential_process(&emulator.url(), &[]),
        &[("SPIFFE_ENDPOINT_SOCKET", &spire.endpoint())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["Version"], 1, "{doc}");
    let sessions = emulator.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].san_uri.as_deref(), Some(WORKLOAD));
    assert_eq!(
        doc["AccessKeyId"].as_str(),
        Some(sessions[0].access_key_id.as_str())
    );
    assert!(
        !stderr.contains("PRIVATE KEY"),
        "the SVID's key was logged: {stderr}"
    );

    // (b) One long-lived source (flags parsed as the binary parses them,
    // picking the SVID by SPIFFE ID): after the agent rotates the SVID, the
    // next CreateSession is signed with the new certificate.
    let source = in_process_source(&credential_process(
        &emulator.url(),
        &[
            "--spiffe-endpoint-socket",
            &spire.endpoint(),
            "--spiffe-id",
            WORKLOAD,
        ],
    ));
    let last_serial = || {
        emulator
            .sessions()
            .last()
            .unwrap()
            .certificate_serial
            .clone()
    };
    source.fetch().await.unwrap();
    let first = last_serial();
    let deadline = Instant::now() + Duration::from_secs(3 * SVID_TTL_SECONDS);
    let rotated = loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        source.fetch().await.unwrap();
        let serial = last_serial();
        if serial != first {
            break serial;
        }
        assert!(
            Instant::now() < deadline,
            "the SVID {first} was still used after {}s (TTL {SVID_TTL_SECONDS}s)",
            3 * SVID_TTL_SECONDS
        );
    };
    let session = emulator.sessions().last().unwrap().clone();
    assert_eq!(session.certificate_serial, rotated);
    assert_eq!(session.san_uri.as_deref(), Some(WORKLOAD));

    // (c) `serve` and `update` take the same source: the endpoint serves the
    // credentials of a session signed with the SVID, and `update --once`
    // writes them to a shared credentials file.
    let dir = tempfile::tempdir().unwrap();
    let socket = ["--spiffe-endpoint-socket", &spire.endpoint()];
    let listen = format!("127.0.0.1:{}", free_port());
    let token_file = dir.path().join("token");
    let mut serve = sidecar_args("serve", TESTS.flags(&emulator.url()));
    serve.extend(socket.map(String::from));
    serve.extend(["--listen".into(), listen.clone()]);
    serve.extend(["--token-file".into(), token_file.display().to_string()]);
    let running = attache_sidecar::app::InProcess::spawn(parse_cli(&serve));
    assert!(
        attache_sidecar::app::wait_ready(&listen, Duration::from_secs(30)).await,
        "serve with the SPIFFE source became ready"
    );
    let token = std::fs::read_to_string(&token_file).unwrap();
    let served: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{listen}/v1/credentials"))
        .header("Authorization", token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = emulator.sessions().last().unwrap().clone();
    assert_eq!(session.san_uri.as_deref(), Some(WORKLOAD));
    assert_eq!(
        served["AccessKeyId"].as_str(),
        Some(session.access_key_id.as_str()),
        "{served}"
    );
    running.stop().await;
    let credentials = dir.path().join("credentials");
    let mut update = sidecar_args("update", TESTS.flags(&emulator.url()));
    update.extend(socket.map(String::from));
    update.extend(["--once".into(), "--credentials-file".into()]);
    update.push(credentials.display().to_string());
    let out = sidecar(&update, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_to_string(&credentials).unwrap();
    let session = emulator.sessions().last().unwrap().clone();
    assert_eq!(session.san_uri.as_deref(), Some(WORKLOAD));
    assert!(
        written.contains(&format!("aws_access_key_id = {}", session.access_key_id)),
        "{written}"
    );

    // (d) The socket is up but offers no SVID with the asked-for ID: a clear
    // error once the bounded wait ends.
    let started = Instant::now();
    let out = sidecar(
        &credential_process(
            &emulator.url(),
            &[
                "--spiffe-endpoint-socket",
                &spire.endpoint(),
                "--spiffe-id",
                "spiffe://example.org/someone-else",
                "--request-timeout",
                "2s",
            ],
        ),
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "no X.509-SVID for spiffe://example.org/someone-else from the SPIFFE Workload API"
        ),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{stderr}");
}

#[test]
fn a_missing_socket_or_a_bad_socket_value_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let common = |extra: &[&str]| {
        let mut args = credential_process("http://127.0.0.1:9", &["--request-timeout", "2s"]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // A socket that does not exist: a bounded wait, then the reason.
    let missing = format!("unix://{}/agent.sock", dir.path().display());
    let started = Instant::now();
    let out = sidecar(&common(&[]), &[("SPIFFE_ENDPOINT_SOCKET", &missing)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no X.509-SVID from the SPIFFE Workload API at {missing} within 2s (the socket does not exist)"
        )),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30), "{stderr}");

    // Not a SPIFFE endpoint URI: a usage error naming the flag, at once.
    for bad in ["/run/spire/agent.sock", "http://127.0.0.1/agent.sock"] {
        let out = sidecar(&common(&["--spiffe-endpoint-socket", bad]), &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("--spiffe-endpoint-socket"), "{stderr}");
        assert!(stderr.contains("unix:///path/to/socket"), "{stderr}");
    }

    // One certificate source at a time.
    let out = sidecar(
        &common(&["--broker-url", "https://broker:8443"]),
        &[("SPIFFE_ENDPOINT_SOCKET", &missing)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--spiffe-endpoint-socket"), "{stderr}");
}
