//! Fault injection (latency, 5xx, throttling, dropped connections, clock
//! skew), request counters, TLS, routing limits and shutdown.

mod common;

use std::time::{Duration, Instant};

use attache_emulator::{Emulator, EmulatorConfig, Operation};
use common::*;
use time::OffsetDateTime;

/// The standard emulator, its CA, and credentials it issued.
struct World {
    emu: Emulator,
    ca: TestCa,
    creds: Creds,
}

impl World {
    async fn new() -> World {
        let (emu, ca, creds) = with_credentials().await;
        World { emu, ca, creds }
    }

    /// A fresh standard CreateSession request, signed now.
    fn ra_request(&self) -> Req {
        let signer = self.ca.leaf(&LeafOpts::default());
        session_request_at(&self.emu, &signer, OffsetDateTime::now_utc())
    }

    /// The answer of `service` ("rolesanywhere", "sts" or "ecr") to its
    /// standard request, signed now.
    async fn call(&self, service: &str) -> Answer {
        let req = match service {
            "rolesanywhere" => return send(&self.emu.url(), &self.ra_request()).await,
            "sts" => sts_request(),
            _ => ecr_request(),
        };
        sdk_send(&self.emu, &self.creds, service, req).await
    }
}

/// A client trusting only the CA certificate `pem`.
fn client_trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .build()
        .unwrap()
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let w = World::new().await;
    w.emu.faults().set_latency(Duration::from_millis(300));
    let start = Instant::now();
    assert_eq!(w.call("sts").await.status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(300),
        "{:?}",
        start.elapsed()
    );
    w.emu.faults().clear();
    let start = Instant::now();
    assert_eq!(w.call("sts").await.status, 200);
    assert!(start.elapsed() < Duration::from_millis(300));
}

#[tokio::test]
async fn injected_5xx_use_each_service_error_shape_then_recover() {
    let w = World::new().await;
    let faults = w.emu.faults();
    faults.fail_next(1, 503);
    let ra = w.call("rolesanywhere").await;
    ra.assert_error(503, "ServiceUnavailableException", "unavailable");
    assert_eq!(w.call("rolesanywhere").await.status, 201);
    faults.fail_next(1, 500);
    let sts = w.call("sts").await;
    sts.assert_error(500, "InternalFailure", "<Type>Receiver</Type>");
    faults.fail_next(2, 503);
    let ecr = w.call("ecr").await;
    ecr.assert_error(503, "ServiceUnavailableException", "__type");
    w.call("sts")
        .await
        .assert_error(503, "ServiceUnavailable", "");
    assert_eq!(w.call("ecr").await.status, 200);
}

#[tokio::test]
async fn throttling_looks_as_each_service_sends_it() {
    let w = World::new().await;
    w.emu.faults().throttle_next(3);
    let cases = [
        ("rolesanywhere", (429, "ThrottlingException")),
        ("sts", (400, "Throttling")),
        ("ecr", (429, "ThrottlingException")),
    ];
    for (service, status_and_code) in cases {
        let answer = w.call(service).await;
        answer.assert_case(service, status_and_code, "Rate exceeded");
    }
    assert_eq!(w.call("sts").await.status, 200);
}

#[tokio::test]
async fn dropped_connection_gets_no_response() {
    let w = World::new().await;
    w.emu.faults().drop_next(1);
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let err = send_with(&client, &w.emu.url(), &w.ra_request()).await;
    assert!(err.is_err(), "expected a transport error, got {err:?}");
    let ok = send_with(&client, &w.emu.url(), &w.ra_request()).await;
    assert_eq!(ok.unwrap().status, 201);
}

#[tokio::test]
async fn clock_skew_moves_the_emulators_clock() {
    let w = World::new().await;
    w.emu.faults().set_clock_skew(time::Duration::minutes(10));
    let ra = w.call("rolesanywhere").await;
    ra.assert_error(403, "AccessDeniedException", "X-Amz-Date is stale");
    let signer = w.ca.leaf(&LeafOpts::default());
    let in_ten_minutes = OffsetDateTime::now_utc() + time::Duration::minutes(10);
    let req = session_request_at(&w.emu, &signer, in_ten_minutes);
    assert_eq!(send(&w.emu.url(), &req).await.status, 201);
    assert!(w.emu.now() > OffsetDateTime::now_utc() + time::Duration::minutes(9));
}

#[tokio::test]
async fn counters_count_every_request_per_operation() {
    let w = World::new().await;
    let emu = &w.emu;
    assert_eq!(emu.request_count(Operation::CreateSession), 1);
    let bad = w.ra_request().changed(|r| r.body = b"{}".to_vec());
    assert_eq!(send(&emu.url(), &bad).await.status, 403);
    emu.faults().fail_next(1, 500);
    assert_eq!(w.call("rolesanywhere").await.status, 500);
    assert_eq!(emu.request_count(Operation::CreateSession), 3);
    assert_eq!(w.call("sts").await.status, 200);
    assert_eq!(send(&emu.url(), &sts_request()).await.status, 403);
    assert_eq!(emu.request_count(Operation::GetCallerIdentity), 2);
    assert_eq!(emu.request_count(Operation::GetAuthorizationToken), 0);
    assert_eq!(w.call("ecr").await.status, 200);
    assert_eq!(emu.request_count(Operation::GetAuthorizationToken), 1);
}

#[tokio::test]
async fn unknown_routes_and_oversized_bodies_are_refused() {
    let (emu, _) = emulator_and_ca().await;
    let oversized = vec![b'x'; attache_emulator::MAX_BODY_BYTES + 1];
    let cases = [
        (
            Req::new("GET", "/nothing"),
            (404, "UnknownOperation"),
            "not an emulated operation",
        ),
        (
            Req::json("POST", "/sessions", oversized),
            (413, "RequestEntityTooLarge"),
            "exceeds",
        ),
        (
            Req::new("GET", "/sessions"),
            (405, "MethodNotAllowed"),
            "CreateSession is POST",
        ),
    ];
    for (req, status_and_code, needle) in cases {
        let answer = send(&emu.url(), &req).await;
        answer.assert_case(&req.path, status_and_code, needle);
    }
    let healthz = Req::new("GET", "/healthz");
    assert_eq!(send(&emu.url(), &healthz).await.status, 200);
}

#[tokio::test]
async fn tls_emulator_serves_https_with_its_generated_ca() {
    let ca = TestCa::new("test root");
    let (emu, ca_pem) = Emulator::start_tls(EmulatorConfig::default())
        .await
        .unwrap();
    assert!(emu.url().starts_with("https://127.0.0.1:"));
    emu.add_trust_anchor(TA_ARN, &ca.pem(), true);
    let trusted = client_trusting(&ca_pem);
    let req = Req::new("GET", "/healthz");
    for url in [emu.url(), emu.url().replace("127.0.0.1", "localhost")] {
        let answer = send_with(&trusted, &url, &req).await.unwrap();
        assert_eq!(answer.status, 200, "{url}");
    }
    let untrusting = client_trusting(&ca.pem());
    assert!(send_with(&untrusting, &emu.url(), &req).await.is_err());
}

#[tokio::test]
async fn shutdown_stops_listening() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let url = emu.url();
    emu.shutdown().await;
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let req = Req::new("GET", "/healthz");
    assert!(send_with(&client, &url, &req).await.is_err());
}
