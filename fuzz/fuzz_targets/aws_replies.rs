//! Replies from AWS, or from whatever proxy sits in between, through the real
//! clients over HTTP: Roles Anywhere `CreateSession` (the STS credentials the
//! sidecar serves) and ECR `GetAuthorizationToken`.
//! Input: a selector byte (service, HTTP status), the `x-amzn-ErrorType`
//! header up to the first newline, then the body; `@EXP@` in the body becomes
//! a plausible expiry (RFC 3339 for CreateSession, epoch seconds for ECR).
//! Promise: no panic or hang; credentials are only accepted when unexpired,
//! never believed to outlive the session asked for, and safe to write into a
//! credentials file (no control characters or spaces); ECR tokens only with a
//! password and a lifetime of at most 48 h.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use attache_aws::ecr::{Endpoints, TokenClient};
use attache_aws::session::{SessionClient, SessionConfig};
use attache_fuzz::{Reply, ReplyServer, runtime, signer, split_line};
use attache_pki::X509Signer;
use libfuzzer_sys::fuzz_target;

const STATUSES: [u16; 16] = [
    200, 200, 200, 200, 201, 204, 301, 400, 401, 403, 404, 429, 500, 502, 503, 599,
];

struct Fixture {
    server: ReplyServer,
    session: SessionClient,
    ecr: TokenClient,
    signer: X509Signer,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let server = ReplyServer::start();
        let session = SessionClient::new(SessionConfig {
            region: "eu-west-1".into(),
            endpoint: Some(server.url.clone()),
            profile_arn: "arn:aws:rolesanywhere:eu-west-1:123456789012:profile/p".into(),
            role_arn: attache_fuzz::ROLE_ARN.into(),
            trust_anchor_arn: "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/t".into(),
            duration_seconds: 3600,
            role_session_name: None,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            extra_roots_pem: None,
        })
        .expect("session client");
        let ecr = TokenClient::new(
            Endpoints::parse(Some(&server.url)).expect("endpoint"),
            Duration::from_secs(2),
        )
        .expect("ECR client");
        Fixture {
            server,
            session,
            ecr,
            signer: signer(),
        }
    })
}

fn replace(body: &[u8], with: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(b"@EXP@") {
            out.extend_from_slice(with.as_bytes());
            i += 5;
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

fn ini_safe(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (error_type, body) = split_line(rest);
    let f = fixture();
    let now = time::OffsetDateTime::now_utc();
    let ecr = selector & 1 == 1;
    let expiry = if ecr {
        format!("{}.5", (now + time::Duration::hours(12)).unix_timestamp())
    } else {
        attache_aws::credentials::rfc3339(now + time::Duration::hours(1))
    };
    f.server.set(Reply {
        status: STATUSES[usize::from(selector >> 1) % STATUSES.len()],
        error_type: (!error_type.is_empty())
            .then(|| String::from_utf8_lossy(error_type).into_owned()),
        body: replace(body, &expiry),
    });
    if ecr {
        let creds = attache_fuzz::credentials();
        if let Ok(t) = runtime().block_on(f.ecr.get_authorization_token(&creds, "us-east-1")) {
            assert!(!t.password.is_empty());
            assert!(t.lifetime > Duration::ZERO && t.lifetime <= Duration::from_secs(48 * 3600));
        }
    } else if let Ok(c) = runtime().block_on(f.session.create_session(&f.signer)) {
        assert!(c.expiration > now, "expired credentials accepted");
        // The session asked for 3600 s; 5 min of clock skew are tolerated.
        assert!(
            c.expiration <= time::OffsetDateTime::now_utc() + time::Duration::minutes(65),
            "an expiry beyond the session's length was believed"
        );
        assert!(
            ini_safe(&c.access_key_id),
            "access key id {:?}",
            c.access_key_id
        );
        assert!(ini_safe(&c.secret_access_key), "unsafe secret access key");
        assert!(ini_safe(&c.session_token), "unsafe session token");
    }
    // The error reader both clients share.
    let _ = attache_aws::sigv4::json_error(400, None, body);
});
