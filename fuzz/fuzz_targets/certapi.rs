//! `POST /v1/certificates` before any TokenReview: the `Authorization`
//! header (first line of the input), the bearer token's JWT pre-check, and
//! the JSON body with its CSR (the rest).
//! Promise: no panic; what passes the pre-check is a three-part JWT for
//! audience attache-broker that has not expired.
#![no_main]

use attache_broker::certapi::{bearer_token, csr_from_body, precheck};
use attache_fuzz::split_line;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (header, body) = split_line(data);
    if let Ok(value) = http::HeaderValue::from_bytes(header) {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, value);
        if let Ok(token) = bearer_token(&headers) {
            assert!(!token.is_empty() && token.trim() == token);
            for now in [0, 1_800_000_000, i64::MAX, i64::MIN] {
                if let Ok(shape) = precheck(token, now) {
                    assert_eq!(token.split('.').count(), 3);
                    assert!(shape.expires_at >= now.saturating_sub(60));
                }
            }
        }
    }
    let _ = csr_from_body(body);
});
