//! Certificate sources: bootstrap and renewal from a broker (a small stand-in
//! speaking the broker's wire contract), and rotation of certificate files.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use attache_pki::{CaOptions, CertificateAuthority, KeyType, VerifiedCsr, WorkloadIdentity};
use attache_rt::clock::ManualClock;
use attache_sidecar::certsource::{BrokerSource, BrokerSourceConfig, CertSource};
use attache_sidecar::metrics::Metrics;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::{file_source, write_workload};
use time::OffsetDateTime;

struct FakeBroker {
    ca: CertificateAuthority,
    token: String,
    up: AtomicBool,
    issued: AtomicUsize,
    clock: ManualClock,
}

async fn issue(
    State(b): State<Arc<FakeBroker>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> (StatusCode, Json<serde_json::Value>) {
    use attache_rt::clock::Clock as _;
    if !b.up.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "unavailable", "message": "down for the test"})),
        );
    }
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {}", b.token))
    {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "unauthenticated", "message": "bad token"})),
        );
    }
    let csr = match VerifiedCsr::parse(body["csr"].as_str().unwrap_or("").as_bytes()) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "bad_csr", "message": e.to_string()})),
            );
        }
    };
    let id = WorkloadIdentity::new("cluster.local", "team-a", "app").unwrap();
    let leaf =
        b.ca.issue_workload(&csr, &id, Duration::from_secs(24 * 3600), b.clock.now())
            .unwrap();
    b.issued.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::OK,
        Json(
            serde_json::json!({"certificate": leaf.pem, "chain": [], "notAfter": leaf.not_after.to_string()}),
        ),
    )
}

async fn start_broker(
    dir: &std::path::Path,
    clock: ManualClock,
) -> (Arc<FakeBroker>, BrokerSourceConfig) {
    let ca = CertificateAuthority::create(
        &CaOptions::default(),
        OffsetDateTime::now_utc() - time::Duration::days(1),
    )
    .unwrap();
    let (server_cert, server_key) = ca
        .issue_server(
            &["localhost".into()],
            KeyType::EcdsaP256,
            Duration::from_secs(30 * 24 * 3600),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![server_cert.der.clone().into()],
        rustls::pki_types::PrivatePkcs8KeyDer::from(server_key.to_pkcs8_der().to_vec()).into(),
    )
    .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.certificate_pem()).unwrap();
    std::fs::write(dir.join("sa-token"), "the-sa-token\n").unwrap();
    let broker = Arc::new(FakeBroker {
        ca,
        token: "the-sa-token".into(),
        up: AtomicBool::new(true),
        issued: AtomicUsize::new(0),
        clock,
    });
    let app = Router::new()
        .route("/v1/certificates", post(issue))
        .with_state(broker.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(attache_rt::serve::serve(
        listener,
        app,
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))),
        std::future::pending(),
    ));
    let config = BrokerSourceConfig {
        url: format!("https://localhost:{port}"),
        ca_bundle: dir.join("ca.pem"),
        ca_bundle_pem: None,
        service_account_token: dir.join("sa-token"),
        key_type: KeyType::EcdsaP256,
        timeout: Duration::from_secs(5),
    };
    (broker, config)
}

/// A broker stand-in on a manual clock, with the CA bundle and token files
/// its client reads in a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    clock: ManualClock,
    broker: Arc<FakeBroker>,
    config: BrokerSourceConfig,
}

impl Fixture {
    async fn start() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(OffsetDateTime::now_utc());
        let (broker, config) = start_broker(dir.path(), clock.clone()).await;
        Fixture {
            dir,
            clock,
            broker,
            config,
        }
    }

    /// The broker certificate source, reading the files as they are now.
    fn source(&self) -> CertSource {
        CertSource::Broker(BrokerSource::new(self.config.clone(), Metrics::default()).unwrap())
    }
}

#[tokio::test]
async fn broker_bootstrap_renews_at_half_life_and_rides_out_outages() {
    let f = Fixture::start().await;
    let (clock, broker, source) = (&f.clock, &f.broker, f.source());

    let first = source.signer(clock).await.unwrap();
    assert_eq!(
        first
            .certificate()
            .workload_identity()
            .unwrap()
            .spiffe_uri(),
        "spiffe://cluster.local/ns/team-a/sa/app"
    );
    assert_eq!(broker.issued.load(Ordering::SeqCst), 1);
    // Before half-life the same certificate is reused.
    clock.advance(time::Duration::hours(11));
    let again = source.signer(clock).await.unwrap();
    assert_eq!(again.certificate().serial, first.certificate().serial);
    assert_eq!(broker.issued.load(Ordering::SeqCst), 1);
    // At half-life with the broker down: keep the current, still-valid one.
    clock.advance(time::Duration::hours(2));
    broker.up.store(false, Ordering::SeqCst);
    let during = source.signer(clock).await.unwrap();
    assert_eq!(during.certificate().serial, first.certificate().serial);
    // Broker back: a new key and certificate.
    broker.up.store(true, Ordering::SeqCst);
    let renewed = source.signer(clock).await.unwrap();
    assert_ne!(renewed.certificate().serial, first.certificate().serial);
    assert_ne!(
        renewed.certificate().public_key_der,
        first.certificate().public_key_der
    );
    assert_eq!(broker.issued.load(Ordering::SeqCst), 2);
    // Down past expiry: an error that says why.
    broker.up.store(false, Ordering::SeqCst);
    clock.advance(time::Duration::hours(30));
    let err = source.signer(clock).await.unwrap_err();
    assert_eq!(err.kind, "certificate");
    assert!(
        err.message.contains("HTTP 503") && err.message.contains("down for the test"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn broker_refusal_is_reported_with_its_message() {
    let f = Fixture::start().await;
    std::fs::write(f.dir.path().join("sa-token"), "someone-else").unwrap();
    let err = f.source().signer(&f.clock).await.unwrap_err().message;
    assert!(err.contains("HTTP 401 unauthenticated: bad token"), "{err}");
}

#[tokio::test]
async fn broker_with_an_untrusted_certificate_is_refused() {
    let f = Fixture::start().await;
    let other =
        CertificateAuthority::create(&CaOptions::default(), OffsetDateTime::now_utc()).unwrap();
    std::fs::write(f.dir.path().join("ca.pem"), other.certificate_pem()).unwrap();
    let err = f.source().signer(&f.clock).await.unwrap_err().message;
    assert!(err.contains("cannot reach"), "{err}");
}

/// Writes a one-hour certificate for ServiceAccount `sa` and its key to
/// `tls.crt` and `tls.key` in `dir`; returns its serial.
fn write_pair(dir: &std::path::Path, ca: &CertificateAuthority, sa: &str) -> String {
    let id = WorkloadIdentity::new("td", "ns", sa).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let now = OffsetDateTime::now_utc();
    write_workload(ca, &id, Duration::from_secs(3600), now, &cert, &key).serial
}

#[tokio::test]
async fn file_certificates_are_reloaded_when_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let ca =
        CertificateAuthority::create(&CaOptions::default(), OffsetDateTime::now_utc()).unwrap();
    let first = write_pair(dir.path(), &ca, "one");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let source = CertSource::Files(file_source(&cert, &key, Metrics::default()));
    let clock = ManualClock::new(OffsetDateTime::now_utc());
    assert_eq!(
        source.signer(&clock).await.unwrap().certificate().serial,
        first
    );
    // cert-manager style rotation: both files replaced.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = write_pair(dir.path(), &ca, "two-longer-name");
    assert_eq!(
        source.signer(&clock).await.unwrap().certificate().serial,
        second
    );
    // A torn write (new cert, old key) keeps the previous pair in use.
    let key_before = std::fs::read(&key).unwrap();
    write_pair(dir.path(), &ca, "three-even-longer-name");
    std::fs::write(&key, key_before).unwrap();
    assert_eq!(
        source.signer(&clock).await.unwrap().certificate().serial,
        second
    );
}
