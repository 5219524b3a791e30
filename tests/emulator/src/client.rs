//! A minimal SDK-style client for the emulator's STS and ECR operations,
//! signed with `attache_aws::sigv4` (the `aws-sigv4` crate, as the AWS SDKs
//! sign): for the demo, and for tests that prove credentials work end to end.

/// Temporary credentials to sign with (attache-aws's: the same type the
/// sidecar and broker sign their own calls with).
pub use attache_aws::sigv4::SigningCredentials;

/// What a call returned: the HTTP status and body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body text.
    pub body: String,
}

/// POSTs `body` to `base` for `service` in `region`, SigV4-signed with `creds`.
pub async fn signed_post(
    http: &reqwest::Client,
    base: &str,
    region: &str,
    service: &str,
    creds: &SigningCredentials,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Reply> {
    let url = format!("{}/", base.trim_end_matches('/'));
    let signed = attache_aws::sigv4::sigv4_headers(
        "POST",
        &url,
        headers,
        body.as_bytes(),
        region,
        service,
        creds,
        std::time::SystemTime::now(),
    )
    .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
    let mut out = http.post(&url).body(body.to_string());
    for (k, v) in &signed {
        out = out.header(k, v);
    }
    let resp = out.send().await?;
    let status = resp.status().as_u16();
    Ok(Reply {
        status,
        body: resp.text().await?,
    })
}

/// STS `GetCallerIdentity`: the caller's ARN.
pub async fn get_caller_identity(
    http: &reqwest::Client,
    base: &str,
    region: &str,
    creds: &SigningCredentials,
) -> anyhow::Result<String> {
    let reply = signed_post(
        http,
        base,
        region,
        "sts",
        creds,
        &[(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )],
        "Action=GetCallerIdentity&Version=2011-06-15",
    )
    .await?;
    anyhow::ensure!(
        reply.status == 200,
        "STS answered HTTP {}: {}",
        reply.status,
        reply.body
    );
    let start = reply.body.find("<Arn>").map(|i| i + 5);
    let end = reply.body.find("</Arn>");
    match (start, end) {
        (Some(s), Some(e)) if s <= e => Ok(reply.body[s..e].to_string()),
        _ => anyhow::bail!("no <Arn> in the STS reply: {}", reply.body),
    }
}

/// ECR `GetAuthorizationToken`: the parsed JSON reply.
pub async fn get_authorization_token(
    http: &reqwest::Client,
    base: &str,
    region: &str,
    creds: &SigningCredentials,
) -> anyhow::Result<serde_json::Value> {
    let reply = signed_post(
        http,
        base,
        region,
        "ecr",
        creds,
        &[
            ("content-type", "application/x-amz-json-1.1"),
            (
                "x-amz-target",
                "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
            ),
        ],
        "{}",
    )
    .await?;
    anyhow::ensure!(
        reply.status == 200,
        "ECR answered HTTP {}: {}",
        reply.status,
        reply.body
    );
    Ok(serde_json::from_str(&reply.body)?)
}
