//! The CreateSession client and the cache against the AWS emulator: first
//! session, error classification under throttling, 5xx, timeouts and denial,
//! and recovery through the refresh loop.

mod common;

use std::sync::Arc;
use std::time::Duration;

use attache_aws::cache::{self, RefreshPolicy};
use attache_aws::session::{SessionClient, SessionConfig};
use attache_rt::clock::SystemClock;
use attache_sidecar::certsource::CertSource;
use attache_sidecar::metrics::Metrics;
use attache_sidecar::source::RolesAnywhereSource;
use common::*;

fn config(w: &World, role: &str) -> SessionConfig {
    SessionConfig {
        region: REGION.into(),
        endpoint: Some(w.emulator.url()),
        profile_arn: PROFILE.into(),
        role_arn: role.into(),
        trust_anchor_arn: ANCHOR.into(),
        duration_seconds: 900,
        role_session_name: None,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_millis(1500),
        extra_roots_pem: None,
    }
}

#[tokio::test]
async fn first_session_returns_credentials_for_the_pinned_role() {
    let w = World::new().await;
    let client = SessionClient::new(config(&w, ROLE)).unwrap();
    let creds = client.create_session(&w.signer()).await.unwrap();
    assert!(creds.access_key_id.starts_with("ASIA"));
    assert_eq!(creds.role_arn, ROLE);
    let lifetime = creds.expiration - creds.issued_at;
    assert!(
        (895..=900).contains(&lifetime.whole_seconds()),
        "{lifetime}"
    );
    let s = &w.emulator.sessions()[0];
    assert_eq!(s.san_uri.as_deref(), Some(SPIFFE));
    assert_eq!(s.access_key_id, creds.access_key_id);
}

#[tokio::test]
async fn errors_are_classified_as_aws_sends_them() {
    let w = World::new().await;
    let client = SessionClient::new(config(&w, ROLE)).unwrap();
    let s = w.signer();

    w.emulator.faults().throttle_next(1);
    let e = client.create_session(&s).await.unwrap_err();
    assert_eq!((e.kind(), e.is_retryable()), ("throttled", true), "{e}");

    w.emulator.faults().fail_next(1, 503);
    let e = client.create_session(&s).await.unwrap_err();
    assert_eq!((e.kind(), e.is_retryable()), ("server", true), "{e}");

    w.emulator.faults().set_latency(Duration::from_secs(3));
    let e = client.create_session(&s).await.unwrap_err();
    assert_eq!((e.kind(), e.is_retryable()), ("timeout", true), "{e}");
    w.emulator.faults().clear();

    // A role the profile does not list: AWS says no, and retrying will not help.
    let other = SessionClient::new(config(&w, "arn:aws:iam::123456789012:role/admin")).unwrap();
    let e = other.create_session(&s).await.unwrap_err();
    assert_eq!((e.kind(), e.is_retryable()), ("denied", false), "{e}");
    assert!(e.to_string().contains("AccessDeniedException"), "{e}");

    // And the same client works again once the faults are gone.
    assert!(client.create_session(&s).await.is_ok());
}

#[tokio::test]
async fn the_cache_recovers_after_throttling() {
    let w = World::new().await;
    w.emulator.faults().throttle_next(2);
    let source = RolesAnywhereSource {
        certs: CertSource::Files(file_source(&w.cert, &w.key, Metrics::default())),
        client: SessionClient::new(config(&w, ROLE)).unwrap(),
        clock: Arc::new(SystemClock),
    };
    let policy = RefreshPolicy {
        backoff_initial: Duration::from_millis(50),
        ..RefreshPolicy::default()
    };
    let metrics = Metrics::default();
    let (mut cache, task) = cache::spawn(source, policy, Arc::new(SystemClock), metrics.clone());
    tokio::time::timeout(Duration::from_secs(10), cache.wait_ready())
        .await
        .unwrap();
    assert_eq!(
        w.emulator
            .request_count(attache_emulator::Operation::CreateSession),
        3
    );
    assert!(
        metrics
            .encode()
            .contains("attache_sidecar_credential_refresh_failures_total{kind=\"throttled\"} 2")
    );
    task.abort();
}

/// A session name given to the sidecar (what the webhook sets from
/// `attache.dev/session-name`) is made valid for AWS and used only where the
/// profile accepts custom names, as AWS does; elsewhere the refusal names
/// the profile setting.
#[tokio::test]
async fn session_names_are_made_valid_and_need_a_profile_that_accepts_them() {
    use attache_sidecar::cli::Command;
    const NAMING: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/naming";
    let w = World::new().await;
    w.emulator.add_profile(attache_emulator::Profile {
        arn: NAMING.into(),
        role_arns: vec![ROLE.into()],
        duration_seconds: None,
        accept_role_session_name: true,
        enabled: true,
    });
    let client = |profile: &str, name: &str| {
        let mut args = w.sidecar_args("serve");
        set_flag(&mut args, "--profile-arn", profile);
        args.extend(["--role-session-name".to_string(), name.to_string()]);
        let Command::Serve(args) = parse_cli(&args).command else {
            unreachable!("serve")
        };
        args.source.build(&Metrics::default()).unwrap().client
    };
    let long_pod = format!("{}-7d9f8-xk2lp", "batch-".repeat(20));
    let creds = client(NAMING, &long_pod)
        .create_session(&w.signer())
        .await
        .unwrap();
    let used = &w.emulator.sessions()[0].role_session_name;
    assert_eq!(used, &attache_aws::session::role_session_name(&long_pod));
    assert_eq!(used.len(), 64);
    assert!(used.starts_with("batch-batch-"), "{used}");
    assert_eq!(creds.role_arn, ROLE);
    let refused = client(PROFILE, "web-1")
        .create_session(&w.signer())
        .await
        .unwrap_err();
    assert_eq!((refused.kind(), refused.is_retryable()), ("invalid", false));
    assert!(
        refused.to_string().contains("acceptRoleSessionName"),
        "{refused}"
    );
}
