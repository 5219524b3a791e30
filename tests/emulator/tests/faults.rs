//! Fault injection (latency, 5xx, throttling, dropped connections, clock
//! skew), request counters, TLS, routing limits and shutdown.

mod common;

use std::time::{Duration, Instant, SystemTime};

use attache_emulator::{Emulator, EmulatorConfig, Operation};
use common::*;
use time::OffsetDateTime;

async fn setup() -> (Emulator, TestCa, Creds) {
    let ca = TestCa::new("test root");
    let emu = emulator(&ca).await;
    let creds = session(&emu, &ca, 3600).await;
    (emu, ca, creds)
}

fn ra_request(emu: &Emulator, ca: &TestCa) -> Req {
    let signer = ca.leaf(&LeafOpts::default());
    signed_session_request(
        &signer,
        &host_of(emu),
        session_body(ROLE_ARN, None),
        REGION,
        OffsetDateTime::now_utc(),
    )
}

async fn sts(emu: &Emulator, creds: &Creds) -> Answer {
    let mut req = sts_request();
    sdk_sign(
        creds,
        "sts",
        REGION,
        &emu.url(),
        &mut req,
        SystemTime::now(),
    );
    send(&emu.url(), &req).await
}

async fn ecr(emu: &Emulator, creds: &Creds) -> Answer {
    let mut req = ecr_request();
    sdk_sign(
        creds,
        "ecr",
        REGION,
        &emu.url(),
        &mut req,
        SystemTime::now(),
    );
    send(&emu.url(), &req).await
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let (emu, _, creds) = setup().await;
    emu.faults().set_latency(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(sts(&emu, &creds).await.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    emu.faults().clear();
    let start = Instant::now();
    assert_eq!(sts(&emu, &creds).await.status, 200);
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn injected_5xx_use_each_service_error_shape_then_recover() {
    let (emu, ca, creds) = setup().await;
    let faults = emu.faults();
    faults.fail_next(1, 503);
    send(&emu.url(), &ra_request(&emu, &ca)).await.assert_error(
        503,
        "ServiceUnavailableException",
        "unavailable",
    );
    assert_eq!(send(&emu.url(), &ra_request(&emu, &ca)).await.status, 201);
    faults.fail_next(1, 500);
    sts(&emu, &creds)
        .await
        .assert_error(500, "InternalFailure", "<Type>Receiver</Type>");
    faults.fail_next(2, 503);
    ecr(&emu, &creds)
        .await
        .assert_error(503, "ServiceUnavailableException", "__type");
    sts(&emu, &creds)
        .await
        .assert_error(503, "ServiceUnavailable", "");
    assert_eq!(ecr(&emu, &creds).await.status, 200);
}

#[tokio::test]
async fn throttling_looks_as_each_service_sends_it() {
    let (emu, ca, creds) = setup().await;
    emu.faults().throttle_next(3);
    send(&emu.url(), &ra_request(&emu, &ca)).await.assert_error(
        429,
        "ThrottlingException",
        "Rate exceeded",
    );
    sts(&emu, &creds)
        .await
        .assert_error(400, "Throttling", "Rate exceeded");
    ecr(&emu, &creds)
        .await
        .assert_error(429, "ThrottlingException", "Rate exceeded");
    assert_eq!(sts(&emu, &creds).await.status, 200);
}

#[tokio::test]
async fn dropped_connection_gets_no_response() {
    let (emu, ca, _) = setup().await;
    emu.faults().drop_next(1);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let err = send_with(&client, &emu.url(), &ra_request(&emu, &ca)).await;
    assert!(err.is_err(), "expected a transport error, got {err:?}");
    let ok = send_with(&client, &emu.url(), &ra_request(&emu, &ca))
        .await
        .unwrap();
    assert_eq!(ok.status, 201);
}

#[tokio::test]
async fn clock_skew_moves_the_emulators_clock() {
    let (emu, ca, _) = setup().await;
    emu.faults().set_clock_skew(time::Duration::minutes(10));
    send(&emu.url(), &ra_request(&emu, &ca)).await.assert_error(
        403,
        "AccessDeniedException",
        "X-Amz-Date is stale",
    );
    let signer = ca.leaf(&LeafOpts::default());
    let req = signed_session_request(
        &signer,
        &host_of(&emu),
        session_body(ROLE_ARN, None),
        REGION,
        OffsetDateTime::now_utc() + time::Duration::minutes(10),
    );
    assert_eq!(send(&emu.url(), &req).await.status, 201);
    assert!(emu.now() > OffsetDateTime::now_utc() + time::Duration::minutes(9));
}

#[tokio::test]
async fn counters_count_every_request_per_operation() {
    let (emu, ca, creds) = setup().await;
    assert_eq!(emu.request_count(Operation::CreateSession), 1);
    let mut bad = ra_request(&emu, &ca);
    bad.body = b"{}".to_vec();
    assert_eq!(send(&emu.url(), &bad).await.status, 403);
    emu.faults().fail_next(1, 500);
    assert_eq!(send(&emu.url(), &ra_request(&emu, &ca)).await.status, 500);
    assert_eq!(emu.request_count(Operation::CreateSession), 3);
    assert_eq!(sts(&emu, &creds).await.status, 200);
    assert_eq!(send(&emu.url(), &sts_request()).await.status, 403);
    assert_eq!(emu.request_count(Operation::GetCallerIdentity), 2);
    assert_eq!(emu.request_count(Operation::GetAuthorizationToken), 0);
    assert_eq!(ecr(&emu, &creds).await.status, 200);
    assert_eq!(emu.request_count(Operation::GetAuthorizationToken), 1);
}

#[tokio::test]
async fn unknown_routes_and_oversized_bodies_are_refused() {
    let (emu, _, _) = setup().await;
    let req = Req {
        method: "GET".into(),
        path: "/nothing".into(),
        headers: vec![],
        body: vec![],
    };
    send(&emu.url(), &req)
        .await
        .assert_error(404, "UnknownOperation", "not an emulated operation");
    let req = Req {
        method: "POST".into(),
        path: "/sessions".into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: vec![b'x'; attache_emulator::MAX_BODY_BYTES + 1],
    };
    send(&emu.url(), &req)
        .await
        .assert_error(413, "RequestEntityTooLarge", "exceeds");
    let req = Req {
        method: "GET".into(),
        path: "/sessions".into(),
        headers: vec![],
        body: vec![],
    };
    send(&emu.url(), &req)
        .await
        .assert_error(405, "MethodNotAllowed", "CreateSession is POST");
    let req = Req {
        method: "GET".into(),
        path: "/healthz".into(),
        headers: vec![],
        body: vec![],
    };
    assert_eq!(send(&emu.url(), &req).await.status, 200);
}

#[tokio::test]
async fn tls_emulator_serves_https_with_its_generated_ca() {
    let ca = TestCa::new("test root");
    let (emu, ca_pem) = Emulator::start_tls(EmulatorConfig::default())
        .await
        .unwrap();
    assert!(emu.url().starts_with("https://127.0.0.1:"));
    emu.add_trust_anchor(TA_ARN, &ca.pem(), true);
    let trusted = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let req = Req {
        method: "GET".into(),
        path: "/healthz".into(),
        headers: vec![],
        body: vec![],
    };
    assert_eq!(
        send_with(&trusted, &emu.url(), &req).await.unwrap().status,
        200
    );
    let localhost = emu.url().replace("127.0.0.1", "localhost");
    assert_eq!(
        send_with(&trusted, &localhost, &req).await.unwrap().status,
        200
    );
    let untrusting = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    assert!(send_with(&untrusting, &emu.url(), &req).await.is_err());
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let url = emu.url();
    emu.shutdown().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let req = Req {
        method: "GET".into(),
        path: "/healthz".into(),
        headers: vec![],
        body: vec![],
    };
    assert!(send_with(&client, &url, &req).await.is_err());
}
