//! A minimal SDK-style client for the emulator's STS and ECR operations,
//! signed with `attache_aws::sigv4` (the `aws-sigv4` crate, as the AWS SDKs
//! sign): for the demo, and for tests that prove credentials work end to end.

/// Temporary credentials to sign with.
#[derive(Clone)]
pub struct SessionCredentials {
    /// `ASIA...`
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: String,
    /// The session token (`X-Amz-Security-Token`).
    pub session_token: String,
}

impl std::fmt::Debug for SessionCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

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
    creds: &SessionCredentials,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<Reply> {
    let url = format!("{}/", base.trim_end_matches('/'));
    let signing = attache_aws::sigv4::SigningCredentials {
        access_key_id: creds.access_key_id.clone(),
        secret_access_key: creds.secret_access_key.clone().into(),
        session_token: Some(creds.session_token.clone().into()),
    };
    let signed = attache_aws::sigv4::sigv4_headers(
        "POST",
        &url,
        headers,
        body.as_bytes(),
        region,
        service,
        &signing,
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
    creds: &SessionCredentials,
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
    creds: &SessionCredentials,
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
