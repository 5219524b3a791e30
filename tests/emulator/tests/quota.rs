//! Roles Anywhere's CreateSession quota (10 per second per account and region
//! by default): the emulator throttles past it with AWS's error shape and
//! counts what it throttled.

mod common;

use common::*;
use time::OffsetDateTime;

/// `n` CreateSessions signed beforehand and sent at once, so they reach the
/// emulator within a moment of each other.
async fn burst(emu: &attache_emulator::Emulator, ca: &TestCa, n: usize) -> Vec<Answer> {
    let signer = ca.leaf(&LeafOpts::default());
    let requests: Vec<_> = (0..n)
        .map(|_| session_request_at(emu, &signer, OffsetDateTime::now_utc()))
        .collect();
    let url = emu.url();
    let sends = requests.iter().map(|r| send(&url, r));
    futures::future::join_all(sends).await
}

#[tokio::test]
async fn create_session_is_throttled_past_the_quota() {
    let ca = TestCa::new("quota root");
    let emu = emulator(&ca).await;
    let answers = burst(&emu, &ca, 25).await;
    let granted = answers.iter().filter(|a| a.status == 201).count();
    let throttled: Vec<_> = answers.iter().filter(|a| a.status != 201).collect();
    // A burst of the quota's size passes; the rest within the same second or so
    // is throttled (a few may pass as the bucket refills while we send).
    assert!((10..=15).contains(&granted), "{granted} granted");
    for a in &throttled {
        a.assert_error(429, "ThrottlingException", "Rate exceeded");
    }
    assert_eq!(emu.throttled_sessions(), throttled.len() as u64);
    assert_eq!(
        emu.sessions().len(),
        granted,
        "throttled requests create no session"
    );
}

#[tokio::test]
async fn the_quota_can_be_raised_or_turned_off() {
    let ca = TestCa::new("quota root");
    let emu = emulator(&ca).await;
    emu.set_create_session_quota(0);
    let answers = burst(&emu, &ca, 40).await;
    assert!(answers.iter().all(|a| a.status == 201));
    assert_eq!(emu.throttled_sessions(), 0);
}
