//! `attache-demo`: runs the whole attache flow on this machine with no AWS
//! account and no cluster. It creates a CA, starts the AWS emulator with that
//! CA as a Roles Anywhere trust anchor and a role whose trust policy pins one
//! ServiceAccount, issues that ServiceAccount a workload certificate, runs the
//! sidecar's credentials endpoint, and proves it with STS GetCallerIdentity
//! and ECR GetAuthorizationToken. Every AWS call goes to the emulator.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use attache_emulator::client::{self, SigningCredentials};
use attache_emulator::{Emulator, EmulatorConfig};
use attache_pki::{
    CaOptions, CertificateAuthority, KeyType, PrivateKey, VerifiedCsr, WorkloadIdentity,
};
use base64::Engine as _;
use clap::Parser;
use time::OffsetDateTime;

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";
const ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/demo";
const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/demo";
const ROLE: &str = "arn:aws:iam::123456789012:role/demo-app";

/// Run attache end to end against the built-in AWS emulator.
#[derive(Parser, Debug)]
#[command(name = "attache-demo", version, about)]
struct Args {
    /// Endpoint address; falls back to a free port if it is taken.
    #[arg(long, env = "ATTACHE_DEMO_LISTEN", default_value = "127.0.0.1:9911")]
    listen: String,
    /// Exit after the checks instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
}

struct Step(u8);
impl Step {
    fn say(&mut self, what: &str) {
        self.0 += 1;
        println!("\n[{}] {what}", self.0);
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attache-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let mut step = Step(0);
    let dir = tempfile::tempdir()?;
    let identity = WorkloadIdentity::new("demo.attache.dev", "payments", "api")?;

    step.say("Creating the cluster CA (the IAM Roles Anywhere trust anchor)");
    let ca = CertificateAuthority::create(&CaOptions::default(), OffsetDateTime::now_utc())?;
    println!(
        "    subject {}  sha256 {}",
        ca.info().subject,
        ca.info().sha256_fingerprint
    );

    step.say("Starting the AWS emulator (Roles Anywhere, STS, ECR) on loopback");
    let emu = Emulator::start(EmulatorConfig::default()).await?;
    emu.trust_workload(
        ANCHOR,
        PROFILE,
        ROLE,
        ca.certificate_pem(),
        &identity.spiffe_uri(),
    );
    println!("    {}  trust anchor {ANCHOR}", emu.url());
    println!(
        "    role {ROLE} may be assumed only by {}",
        identity.spiffe_uri()
    );

    step.say(&format!(
        "Issuing a workload certificate for ServiceAccount {}/{}",
        identity.namespace(),
        identity.service_account()
    ));
    let files = issue_certificate(&ca, &identity, dir.path())?;

    step.say("Starting the sidecar's credentials endpoint");
    let endpoint = start_sidecar(&args.listen, &emu.url(), &files, dir.path()).await?;
    println!("    http://{}/v1/credentials is ready", endpoint.listen);

    step.say("Reading credentials the way an AWS SDK does (container credentials provider)");
    let http = reqwest::Client::new();
    let creds = read_credentials(&http, &endpoint).await?;

    step.say("Calling STS GetCallerIdentity with them");
    let arn = client::get_caller_identity(&http, &emu.url(), REGION, &creds).await?;
    println!("    {arn}");
    if !arn.starts_with(&format!("arn:aws:sts::{ACCOUNT}:assumed-role/demo-app/")) {
        bail!("unexpected identity {arn}");
    }

    step.say(
        "Calling ECR GetAuthorizationToken and building the pull secret the ECR controller writes",
    );
    show_pull_secret(&http, &emu.url(), &creds).await?;

    print_usage(&endpoint, &emu.url());
    if !args.once {
        println!("\nServing until Ctrl-C.");
        let _ = tokio::signal::ctrl_c().await;
    }
    endpoint.sidecar.stop().await;
    emu.shutdown().await;
    Ok(())
}

/// Where the workload's certificate and key were written.
struct CertificateFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

/// Issues `identity` a one-day certificate for a fresh P-256 key and writes
/// both into `dir` (the key mode 0600), as the broker's client would.
fn issue_certificate(
    ca: &CertificateAuthority,
    identity: &WorkloadIdentity,
    dir: &Path,
) -> Result<CertificateFiles> {
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let csr = VerifiedCsr::parse(key.certificate_signing_request()?.as_bytes())?;
    let leaf = ca.issue_workload(
        &csr,
        identity,
        Duration::from_secs(24 * 3600),
        OffsetDateTime::now_utc(),
    )?;
    let files = CertificateFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    std::fs::write(&files.cert, &leaf.pem)?;
    attache_pki::files::write_atomic(&files.key, key.to_pkcs8_pem().as_bytes(), 0o600, false)?;
    println!(
        "    serial {}  valid until {}  URI SAN {}",
        leaf.serial,
        leaf.not_after,
        identity.spiffe_uri()
    );
    Ok(files)
}

/// The running sidecar and how to reach it.
struct Endpoint {
    sidecar: attache_sidecar::app::InProcess,
    listen: String,
    token_file: std::path::PathBuf,
}

/// Runs the sidecar's `serve` in this process on `listen` (a free port if it
/// is taken), against the emulator at `aws_endpoint`, until it is ready.
async fn start_sidecar(
    listen: &str,
    aws_endpoint: &str,
    files: &CertificateFiles,
    dir: &Path,
) -> Result<Endpoint> {
    let listen = match std::net::TcpListener::bind(listen) {
        Ok(l) => l.local_addr()?.to_string(),
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string(),
    };
    let token_file = dir.join("token");
    let path = |p: &Path| p.to_str().unwrap_or_default().to_string();
    let mut argv: Vec<String> = vec!["attache-sidecar".into(), "serve".into()];
    for (flag, value) in [
        ("--region", REGION.to_string()),
        ("--profile-arn", PROFILE.into()),
        ("--role-arn", ROLE.into()),
        ("--trust-anchor-arn", ANCHOR.into()),
        ("--endpoint", aws_endpoint.into()),
        ("--certificate", path(&files.cert)),
        ("--private-key", path(&files.key)),
        ("--listen", listen.clone()),
        ("--token-file", path(&token_file)),
        ("--log-format", "text".into()),
    ] {
        argv.extend([flag.to_string(), value]);
    }
    let cli = attache_sidecar::cli::Cli::try_parse_from(argv)?;
    let sidecar = attache_sidecar::app::InProcess::spawn(cli);
    if !attache_sidecar::app::wait_ready(&listen, Duration::from_secs(5)).await {
        bail!("the sidecar did not become ready; see its log above");
    }
    Ok(Endpoint {
        sidecar,
        listen,
        token_file,
    })
}

/// GETs the endpoint with the token from its file, as an AWS SDK's container
/// credentials provider does.
async fn read_credentials(
    http: &reqwest::Client,
    endpoint: &Endpoint,
) -> Result<SigningCredentials> {
    let token = std::fs::read_to_string(&endpoint.token_file)?;
    let reply: serde_json::Value = http
        .get(format!("http://{}/v1/credentials", endpoint.listen))
        .header("Authorization", token.trim())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let creds = SigningCredentials {
        access_key_id: str_field(&reply, "AccessKeyId")?,
        secret_access_key: str_field(&reply, "SecretAccessKey")?.into(),
        session_token: Some(str_field(&reply, "Token")?.into()),
    };
    println!(
        "    AccessKeyId {}  Expiration {}  RoleArn {}",
        creds.access_key_id,
        str_field(&reply, "Expiration")?,
        str_field(&reply, "RoleArn")?
    );
    Ok(creds)
}

/// Gets an ECR token and prints the `.dockerconfigjson` the ECR controller
/// would write from it, secrets shortened.
async fn show_pull_secret(
    http: &reqwest::Client,
    aws_endpoint: &str,
    creds: &SigningCredentials,
) -> Result<()> {
    let reply = client::get_authorization_token(http, aws_endpoint, REGION, creds).await?;
    let data = &reply["authorizationData"][0];
    let auth = data["authorizationToken"]
        .as_str()
        .context("no authorizationToken")?;
    let decoded = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(auth)?)?;
    let password = decoded
        .strip_prefix("AWS:")
        .context("token is not AWS:<password>")?;
    let registry = format!("{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com");
    let config = serde_json::json!({"auths": {registry: {"username": "AWS", "password": redact(password), "auth": redact(auth)}}});
    println!(
        "    .dockerconfigjson (secrets shortened):\n    {}",
        serde_json::to_string(&config)?
    );
    println!("    expires at {} (12 h)", data["expiresAt"]);
    Ok(())
}

/// How to point one's own SDK or CLI at the demo.
fn print_usage(endpoint: &Endpoint, aws_endpoint: &str) {
    println!(
        "\nEverything worked. Point your own AWS SDK or CLI at the endpoint (and the emulator, never real AWS):"
    );
    println!(
        "  export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{}/v1/credentials",
        endpoint.listen
    );
    println!(
        "  export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}",
        endpoint.token_file.display()
    );
    println!("  export AWS_REGION={REGION} AWS_ENDPOINT_URL={aws_endpoint}");
    println!("  aws sts get-caller-identity");
}

fn str_field(v: &serde_json::Value, k: &str) -> Result<String> {
    v[k].as_str()
        .map(str::to_string)
        .with_context(|| format!("no {k} in {v}"))
}

fn redact(s: &str) -> String {
    format!("{}…({} chars)", &s[..s.len().min(4)], s.len())
}
