//! `attache-demo`: runs the whole attache flow on this machine with no AWS
//! account and no cluster. It creates a CA, starts the AWS emulator with that
//! CA as a Roles Anywhere trust anchor and a role whose trust policy pins one
//! ServiceAccount, issues that ServiceAccount a workload certificate, runs the
//! sidecar's credentials endpoint, and proves it with STS GetCallerIdentity
//! and ECR GetAuthorizationToken. Every AWS call goes to the emulator.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use attache_emulator::client::{self, SessionCredentials};
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
    let key = PrivateKey::generate(KeyType::EcdsaP256)?;
    let csr = VerifiedCsr::parse(key.certificate_signing_request()?.as_bytes())?;
    let leaf = ca.issue_workload(
        &csr,
        &identity,
        Duration::from_secs(24 * 3600),
        OffsetDateTime::now_utc(),
    )?;
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, &leaf.pem)?;
    attache_pki::files::write_atomic(&key_path, key.to_pkcs8_pem().as_bytes(), 0o600, false)?;
    println!(
        "    serial {}  valid until {}  URI SAN {}",
        leaf.serial,
        leaf.not_after,
        identity.spiffe_uri()
    );

    step.say("Starting the sidecar's credentials endpoint");
    let listen = match std::net::TcpListener::bind(&args.listen) {
        Ok(l) => l.local_addr()?.to_string(),
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string(),
    };
    let token_file = dir.path().join("token");
    let cli = attache_sidecar::cli::Cli::try_parse_from([
        "attache-sidecar",
        "serve",
        "--region",
        REGION,
        "--profile-arn",
        PROFILE,
        "--role-arn",
        ROLE,
        "--trust-anchor-arn",
        ANCHOR,
        "--endpoint",
        &emu.url(),
        "--certificate",
        cert_path.to_str().unwrap_or_default(),
        "--private-key",
        key_path.to_str().unwrap_or_default(),
        "--listen",
        &listen,
        "--token-file",
        token_file.to_str().unwrap_or_default(),
        "--log-format",
        "text",
    ])?;
    let sidecar = attache_sidecar::app::InProcess::spawn(cli);
    if !attache_sidecar::app::wait_ready(&listen, Duration::from_secs(5)).await {
        bail!("the sidecar did not become ready; see its log above");
    }
    println!("    http://{listen}/v1/credentials is ready");

    step.say("Reading credentials the way an AWS SDK does (container credentials provider)");
    let http = reqwest::Client::new();
    let token = std::fs::read_to_string(&token_file)?;
    let reply: serde_json::Value = http
        .get(format!("http://{listen}/v1/credentials"))
        .header("Authorization", token.trim())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let creds = SessionCredentials {
        access_key_id: str_field(&reply, "AccessKeyId")?,
        secret_access_key: str_field(&reply, "SecretAccessKey")?,
        session_token: str_field(&reply, "Token")?,
    };
    println!(
        "    AccessKeyId {}  Expiration {}  RoleArn {}",
        creds.access_key_id,
        str_field(&reply, "Expiration")?,
        str_field(&reply, "RoleArn")?
    );

    step.say("Calling STS GetCallerIdentity with them");
    let arn = client::get_caller_identity(&http, &emu.url(), REGION, &creds).await?;
    println!("    {arn}");
    if !arn.starts_with(&format!("arn:aws:sts::{ACCOUNT}:assumed-role/demo-app/")) {
        bail!("unexpected identity {arn}");
    }

    step.say(
        "Calling ECR GetAuthorizationToken and building the pull secret the ECR controller writes",
    );
    let reply = client::get_authorization_token(&http, &emu.url(), REGION, &creds).await?;
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

    println!(
        "\nEverything worked. Point your own AWS SDK or CLI at the endpoint (and the emulator, never real AWS):"
    );
    println!("  export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{listen}/v1/credentials");
    println!(
        "  export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={}",
        token_file.display()
    );
    println!(
        "  export AWS_REGION={REGION} AWS_ENDPOINT_URL={}",
        emu.url()
    );
    println!("  aws sts get-caller-identity");
    if !args.once {
        println!("\nServing until Ctrl-C.");
        let _ = tokio::signal::ctrl_c().await;
    }
    sidecar.stop().await;
    emu.shutdown().await;
    Ok(())
}

fn str_field(v: &serde_json::Value, k: &str) -> Result<String> {
    v[k].as_str()
        .map(str::to_string)
        .with_context(|| format!("no {k} in {v}"))
}

fn redact(s: &str) -> String {
    format!("{}…({} chars)", &s[..s.len().min(4)], s.len())
}
