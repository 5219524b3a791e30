//! The Rust SDK probe: resolves credentials with `aws-config`'s default chain
//! (which reads `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`, as an unmodified app does), calls
//! STS GetCallerIdentity at `STS_ENDPOINT` and prints `{"Arn": ...}`.

use anyhow::{Context as _, Result};
use aws_credential_types::provider::ProvideCredentials as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let creds = config
        .credentials_provider()
        .context("the default chain has no credentials provider")?
        .provide_credentials()
        .await
        .context("the default chain resolved no credentials")?;
    anyhow::ensure!(creds.expiry().is_some(), "the credentials carry no expiry");
    let session = attache_emulator::client::SigningCredentials {
        access_key_id: creds.access_key_id().to_string(),
        secret_access_key: creds.secret_access_key().to_string().into(),
        session_token: creds.session_token().map(|t| t.to_string().into()),
    };
    let endpoint = std::env::var("STS_ENDPOINT").context("STS_ENDPOINT")?;
    let region = std::env::var("AWS_REGION").context("AWS_REGION")?;
    let arn = attache_emulator::client::get_caller_identity(
        &reqwest::Client::new(),
        &endpoint,
        &region,
        &session,
    )
    .await?;
    println!("{}", serde_json::json!({ "Arn": arn }));
    Ok(())
}
