//! A real AWS client: botocore (PyPI) calls STS GetCallerIdentity and ECR
//! GetAuthorizationToken against the emulator with issued credentials.
//! Skipped, with a notice, when `python3 -c 'import botocore'` fails.

mod common;

use std::process::Command;

use common::*;

const SCRIPT: &str = r#"
import json, sys, botocore.session
from botocore.config import Config
url, key, secret, token, region = sys.argv[1:6]
s = botocore.session.get_session()
cfg = Config(retries={"max_attempts": 1})
out = {}
sts = s.create_client("sts", region_name=region, endpoint_url=url, aws_access_key_id=key,
                      aws_secret_access_key=secret, aws_session_token=token, config=cfg)
out["arn"] = sts.get_caller_identity()["Arn"]
ecr = s.create_client("ecr", region_name=region, endpoint_url=url, aws_access_key_id=key,
                      aws_secret_access_key=secret, aws_session_token=token, config=cfg)
out["proxy"] = ecr.get_authorization_token()["authorizationData"][0]["proxyEndpoint"]
bad = s.create_client("sts", region_name=region, endpoint_url=url, aws_access_key_id=key,
                      aws_secret_access_key="x" * 40, aws_session_token=token, config=cfg)
try:
    bad.get_caller_identity()
    out["bad"] = "accepted"
except Exception as e:
    out["bad"] = e.response["Error"]["Code"]
print(json.dumps(out))
"#;

#[tokio::test]
async fn botocore_signed_requests_are_accepted() {
    let python = attache_testkit::require_python();
    let ca = TestCa::new("test root");
    let emu = emulator(&ca).await;
    let creds = session(&emu, &ca, 3600).await;
    let url = emu.url();
    let (key, secret, token) = (
        creds.access_key_id.clone(),
        creds.secret_access_key.clone(),
        creds.session_token.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", SCRIPT, &url, &key, &secret, &token, REGION])
            .env_remove("AWS_PROFILE")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let session_name = &emu.sessions()[0].role_session_name;
    assert_eq!(
        v["arn"],
        format!("arn:aws:sts::{ACCOUNT}:assumed-role/app-role/{session_name}")
    );
    assert_eq!(
        v["proxy"],
        format!("https://{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com")
    );
    assert_eq!(v["bad"], "SignatureDoesNotMatch");
}
