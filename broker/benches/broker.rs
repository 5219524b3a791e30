//! `cargo bench -p attache-broker --bench broker`: webhook admission latency
//! at fixed rates over TLS (ServiceAccount and namespace annotations from
//! the broker's watch-fed cache, once `/readyz` says it is listed), and
//! certificate issuance throughput with the TokenReview decision cached, each next to a baseline measured in the same
//! run (a TLS "hello" server with the broker's TLS setup; raw `pki` issuance).
//! The broker runs as its own ServiceAccount against a real etcd +
//! kube-apiserver (the e2e harness, `deploy/kubernetes` applied), which share
//! the machine's cores with this process. Client and servers share this
//! process's 2-worker runtime, as they share the machine's 2 cores. Prints
//! figures; never fails on a slow machine.

#[path = "../../tests/e2e/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use attache_e2e::ApiServer;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, PostParams};
use serde_json::json;

const RATE: u64 = 500;
/// A rate one kube-apiserver on the same 2 cores keeps up with.
const LOW_RATE: u64 = 50;
const SECONDS: u64 = 5;
const CERTS: usize = 4000;
const CLIENTS: usize = 16;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench());
}

/// Latencies of a run at a fixed rate: p50, p99 (ms, answered requests),
/// the rate achieved, and the requests that failed (with the first error).
struct Paced {
    p50: f64,
    p99: f64,
    rate: f64,
    failed: usize,
    first_error: Option<String>,
}

impl Paced {
    fn failures(&self) -> String {
        match &self.first_error {
            Some(e) => format!("; {} failed, first: {e}", self.failed),
            None => String::new(),
        }
    }
}

async fn paced(http: &reqwest::Client, url: &str, body: &'static str, rate: u64) -> Paced {
    let n = rate * SECONDS;
    let interval = Duration::from_micros(1_000_000 / rate);
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(n as usize);
    for i in 0..n {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let (http, url) = (http.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let resp = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status();
            let _ = resp.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(status.to_string());
            }
            Ok(t.elapsed().as_secs_f64() * 1e3)
        }));
    }
    let mut v = Vec::with_capacity(n as usize);
    let (mut failed, mut first_error) = (0, None);
    for t in tasks {
        match t.await.unwrap() {
            Ok(ms) => v.push(ms),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    v.sort_by(f64::total_cmp);
    let at = |q: usize| v.get(v.len() * q / 100).copied().unwrap_or(f64::NAN);
    Paced {
        p50: at(50),
        p99: at(99),
        rate,
        failed,
        first_error,
    }
}

async fn bench() {
    let started = Instant::now();
    let server = ApiServer::start(Default::default()).await.unwrap();
    common::apply_deploy(&server);
    let admin = server.admin().await;
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a", "annotations": {"attache.dev/allowed-roles": "[\"arn:aws:iam::123456789012:role/*\"]"}}})).unwrap();
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "app", "annotations": {"attache.dev/role-arn": "arn:aws:iam::123456789012:role/app"}}})).unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), "team-a")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let client = server
        .client_with_token(&common::broker_token(&server).await)
        .await;
    let setup = started.elapsed();
    // Every client here is one address and one identity: lift the per-peer
    // connection cap and the per-identity issuance limit (guards against one
    // noisy pod, not part of what is measured).
    let args = common::broker_args(&[
        "--webhook-config",
        "",
        "--max-connections-per-peer",
        "1024",
        "--max-certificates-per-minute",
        "1000000",
    ]);
    let broker = attache_broker::run::start(args, client).await.unwrap();
    let readyz = format!("http://{}/readyz", broker.admin_addr);
    while !reqwest::get(&readyz)
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let p = broker.addr.port();
    // The broker's serving CA, and the workload CA that signs the baseline's certificate.
    let http = reqwest::Client::builder()
        .tls_certs_only(
            [&broker.serving_ca_pem, &broker.ca.trust_anchor_pem()]
                .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()),
        )
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();

    // Baseline: a TLS hello server with the broker's own TLS setup.
    let cert =
        attache_broker::tls::RotatingCert::new(&broker.ca, &["127.0.0.1".to_string()]).unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(cert.server_config().unwrap());
    let hello = axum::Router::new().route("/", axum::routing::post(|| async { "hello" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hello_url = format!(
        "https://127.0.0.1:{}/",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(attache_rt::serve::serve(
        listener,
        hello,
        Some(tls),
        std::future::pending(),
    ));

    static REVIEW: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"b1","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"team-a","operation":"CREATE","userInfo":{"username":"bench"},"object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"team-a"},"spec":{"serviceAccountName":"app","containers":[{"name":"app","image":"app"}]}}}}"#;
    let mutate_url = format!("https://{}/mutate", broker.webhook_addr);
    let _ = paced(&http, &hello_url, "{}", RATE).await; // warm-up
    let hello = paced(&http, &hello_url, "{}", RATE).await;
    let mutate_low = paced(&http, &mutate_url, REVIEW, LOW_RATE).await;
    let mutate = paced(&http, &mutate_url, REVIEW, RATE).await;

    // Issuance with the TokenReview decision cached (one token, fresh CSRs).
    let token = common::app_token(&server, "team-a").await;
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..CERTS)
            .map(|_| {
                attache_pki::PrivateKey::generate(attache_pki::KeyType::EcdsaP256)
                    .unwrap()
                    .certificate_signing_request()
                    .unwrap()
            })
            .collect(),
    );
    let certs_url = format!("https://127.0.0.1:{p}/v1/certificates");
    let warm = http
        .post(&certs_url)
        .bearer_auth(&token)
        .json(&json!({"csr": csrs[0]}))
        .send()
        .await
        .unwrap();
    assert!(warm.status().is_success());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (http, url, token, csrs, next, failed) = (
                http.clone(),
                certs_url.clone(),
                token.clone(),
                csrs.clone(),
                next.clone(),
                failed.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= csrs.len() {
                        break;
                    }
                    let r = http
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({"csr": csrs[i]}))
                        .send()
                        .await;
                    let ok = match r {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if !ok {
                        failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let failed = failed.load(std::sync::atomic::Ordering::Relaxed);
    let api_rate = CERTS as f64 / t.elapsed().as_secs_f64();

    let id = attache_pki::WorkloadIdentity::new("cluster.local", "team-a", "app").unwrap();
    let parsed: Vec<_> = csrs
        .iter()
        .map(|c| attache_pki::VerifiedCsr::parse(c.as_bytes()).unwrap())
        .collect();
    let t = Instant::now();
    for c in &parsed {
        std::hint::black_box(
            broker
                .ca
                .issue_workload(
                    c,
                    &id,
                    Duration::from_secs(86400),
                    time::OffsetDateTime::now_utc(),
                )
                .unwrap(),
        );
    }
    let raw_rate = parsed.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for c in csrs.iter() {
        std::hint::black_box(attache_pki::VerifiedCsr::parse(c.as_bytes()).unwrap());
    }
    let parse_rate = csrs.len() as f64 / t.elapsed().as_secs_f64();

    let (etcd_rss, apiserver_rss) = server.rss_mib();
    println!(
        "attache-broker benchmark (2 cores; client and broker in one process, a real etcd + kube-apiserver beside them)"
    );
    println!(
        "  API server started and deploy/kubernetes applied in {:.1}s (RSS now: etcd {etcd_rss:.0} MiB, kube-apiserver {apiserver_rss:.0} MiB)",
        setup.as_secs_f64()
    );
    println!(
        "  admission over TLS at {RATE}/s for {SECONDS}s (annotations from the watch cache): p50 {:.2} ms  p99 {:.2} ms  (achieved {:.0}/s{}; target p99 <= 2 ms)",
        mutate.p50,
        mutate.p99,
        mutate.rate,
        mutate.failures()
    );
    println!(
        "  admission over TLS at {LOW_RATE}/s for {SECONDS}s: p50 {:.2} ms  p99 {:.2} ms  (achieved {:.0}/s{})",
        mutate_low.p50,
        mutate_low.p99,
        mutate_low.rate,
        mutate_low.failures()
    );
    println!(
        "  baseline TLS hello server, {RATE}/s:  p50 {:.2} ms  p99 {:.2} ms  (achieved {:.0}/s{})",
        hello.p50,
        hello.p99,
        hello.rate,
        hello.failures()
    );
    println!(
        "  certificate issuance, TokenReview cached, {CLIENTS} clients: {api_rate:.0} certs/s{} (target >= 2000)",
        if failed > 0 {
            format!(" ({failed} of {CERTS} failed)")
        } else {
            String::new()
        }
    );
    println!(
        "  baseline raw pki issuance, 1 thread: {raw_rate:.0} certs/s; CSR parse+verify alone: {parse_rate:.0}/s"
    );
    broker.shutdown().await;
}
