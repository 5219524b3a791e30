//! `cargo bench -p attache-sidecar --bench endpoint`: prints the sidecar's
//! figures next to their baselines, measured in the same run on this machine.
//!
//! - `/v1/credentials` throughput (8 keep-alive connections) and latency
//!   (1 connection, closed loop) of the real `attache-sidecar serve` process,
//!   next to a bare hyper "hello" server process on loopback (the ceiling).
//! - The sidecar's resident memory at steady state (VmRSS / VmHWM).
//! - Start-to-ready time of the sidecar process against the AWS emulator,
//!   with the sidecar's own breakdown of it (runtime, logging, TLS client and
//!   root store, certificate, first CreateSession; see `startup.rs`).
//! - CreateSession signing cost next to one raw ECDSA P-256 signature.
//!
//! Not a test: nothing here fails on a slow machine; it prints numbers.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const THROUGHPUT_SECS: u64 = 2;
const ROUNDS: usize = 3;
const LATENCY_REQUESTS: usize = 20_000;
const CONNECTIONS: usize = 8;

fn main() {
    if let Ok(addr) = std::env::var("ATTACHE_BENCH_HELLO") {
        let size = std::env::var("ATTACHE_BENCH_HELLO_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        return hello_server(addr.parse().expect("address"), size);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let world = rt.block_on(World::new());

    // Start-to-ready of the real binary against the emulator (best of 5).
    let mut start_to_ready = Duration::MAX;
    let mut sidecar = None;
    let mut breakdown = None;
    for _ in 0..5 {
        let t = Instant::now();
        let (child, addr, token) = world.spawn_sidecar();
        wait_ready(addr);
        let took = t.elapsed();
        if took < start_to_ready {
            start_to_ready = took;
            breakdown = world.breakdown(addr);
        }
        if let Some((mut old, _, _)) = sidecar.replace((child, addr, token)) {
            let _ = Child::kill(&mut old);
            let _ = old.wait();
        }
    }
    let (mut child, addr, token) = sidecar.unwrap();
    let creds_req = format!(
        "GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n"
    );

    // Two ceilings: the classic 5-byte hello, and one answering a body as long
    // as the credentials reply (so the payload's own cost is visible).
    let reply_len = {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut buf = Vec::new();
        round_trip(&mut s, creds_req.as_bytes(), &mut buf).unwrap();
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.len() - end
    };
    let spawn_hello = |bytes: usize| {
        let hello_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .env("ATTACHE_BENCH_HELLO", hello_addr.to_string())
            .env("ATTACHE_BENCH_HELLO_BYTES", bytes.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_port(hello_addr);
        (child, hello_addr)
    };
    let (mut hello, hello_addr) = spawn_hello(5);
    let (mut hello_big, hello_big_addr) = spawn_hello(reply_len);
    let hello_req = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_string();

    // Warm up, then alternate the servers and keep each one's best round, so a
    // burst of background work on the machine does not decide the ratio.
    load(addr, &creds_req, 1, Duration::from_millis(300));
    load(hello_addr, &hello_req, 1, Duration::from_millis(300));
    load(hello_big_addr, &hello_req, 1, Duration::from_millis(300));
    let (mut sc_rps, mut hello_rps, mut big_rps) = (0f64, 0f64, 0f64);
    for _ in 0..ROUNDS {
        let round = Duration::from_secs(THROUGHPUT_SECS);
        sc_rps = sc_rps.max(load(addr, &creds_req, CONNECTIONS, round).0);
        hello_rps = hello_rps.max(load(hello_addr, &hello_req, CONNECTIONS, round).0);
        big_rps = big_rps.max(load(hello_big_addr, &hello_req, CONNECTIONS, round).0);
    }
    let sc_lat = latencies(addr, &creds_req, LATENCY_REQUESTS);
    let hello_lat = latencies(hello_addr, &hello_req, LATENCY_REQUESTS);
    let (rss, hwm) = memory_kib(child.id());

    let signing = rt.block_on(world.signing_cost());
    let _ = child.kill();
    let _ = child.wait();
    for h in [&mut hello, &mut hello_big] {
        let _ = h.kill();
        let _ = h.wait();
    }

    println!(
        "attache-sidecar benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  /v1/credentials throughput, {CONNECTIONS} connections, best of {ROUNDS} rounds: {sc_rps:.0} req/s",
    );
    println!(
        "    vs hello server (5 B body): {hello_rps:.0} req/s   ratio {:.2} (target >= 0.90)",
        sc_rps / hello_rps
    );
    println!(
        "    vs hello server ({reply_len} B body, as long as the credentials reply): {big_rps:.0} req/s   ratio {:.2}",
        sc_rps / big_rps
    );
    println!(
        "  latency, 1 connection:  p50 {:>6.1} us  p99 {:>6.1} us   hello server: p50 {:>6.1} us  p99 {:>6.1} us   (target p99 < 200 us)",
        sc_lat.0, sc_lat.1, hello_lat.0, hello_lat.1
    );
    println!(
        "  sidecar memory at steady state: VmRSS {:.1} MiB, VmHWM {:.1} MiB (target <= 8 MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "  start-to-ready (process start -> /readyz 200, best of 5): {:.1} ms (target <= 20 ms)",
        start_to_ready.as_secs_f64() * 1e3
    );
    match breakdown {
        Some(b) => {
            let ms = |k: &str| b[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "    inside the process (ms): runtime {:.1}, logging {:.1}, TLS client + root store {:.1}, certificate {:.1}, other {:.1} -> listening at {:.1}; first CreateSession {:.1} -> ready at {:.1}; exec, loading and polling: {:.1}",
                ms("runtime_ms"),
                ms("logging_ms"),
                ms("tls_client_ms"),
                ms("certificate_ms"),
                ms("other_ms"),
                ms("listening_ms"),
                ms("first_session_ms"),
                ms("ready_ms"),
                start_to_ready.as_secs_f64() * 1e3 - ms("ready_ms")
            );
        }
        None => println!("    (the sidecar logged no start-up breakdown)"),
    }
    println!(
        "  CreateSession signing: {:.1} us per request vs raw ECDSA P-256 sign {:.1} us   ratio {:.2} (target <= 1.2)",
        signing.0,
        signing.1,
        signing.0 / signing.1
    );
}

struct World {
    _dir: tempfile::TempDir,
    emulator: attache_emulator::Emulator,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    signer: attache_pki::X509Signer,
}

const ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/bench";
const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/bench";
const ROLE: &str = "arn:aws:iam::123456789012:role/bench";

impl World {
    async fn new() -> World {
        use attache_pki::*;
        let dir = tempfile::tempdir().unwrap();
        let ca =
            CertificateAuthority::create(&CaOptions::default(), time::OffsetDateTime::now_utc())
                .unwrap();
        let emulator =
            attache_emulator::Emulator::start(attache_emulator::EmulatorConfig::default())
                .await
                .unwrap();
        emulator.add_trust_anchor(ANCHOR, ca.certificate_pem(), true);
        emulator.add_profile(attache_emulator::Profile {
            arn: PROFILE.into(),
            role_arns: vec![ROLE.into()],
            duration_seconds: None,
            accept_role_session_name: false,
            enabled: true,
        });
        emulator.add_role(attache_emulator::Role {
            arn: ROLE.into(),
            conditions: vec![],
        });
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr =
            VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
        let id = WorkloadIdentity::new("bench.local", "ns", "sa").unwrap();
        let leaf = ca
            .issue_workload(
                &csr,
                &id,
                Duration::from_secs(3600),
                time::OffsetDateTime::now_utc(),
            )
            .unwrap();
        let cert = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        std::fs::write(&cert, &leaf.pem).unwrap();
        std::fs::write(&key_path, key.to_pkcs8_pem().as_bytes()).unwrap();
        let signer = X509Signer::new(leaf.der, vec![], key).unwrap();
        World {
            _dir: dir,
            emulator,
            cert,
            key: key_path,
            signer,
        }
    }

    fn spawn_sidecar(&self) -> (Child, SocketAddr, String) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let token = "a".repeat(64);
        let token_file = self._dir.path().join(format!("token-{}", addr.port()));
        std::fs::write(&token_file, &token).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_attache-sidecar"))
            .args([
                "serve",
                "--region",
                "us-east-1",
                "--profile-arn",
                PROFILE,
                "--role-arn",
                ROLE,
                "--trust-anchor-arn",
                ANCHOR,
            ])
            .args([
                "--endpoint",
                &self.emulator.url(),
                "--listen",
                &addr.to_string(),
            ])
            .arg("--certificate")
            .arg(&self.cert)
            .arg("--private-key")
            .arg(&self.key)
            .arg("--token-file")
            .arg(&token_file)
            .args(["--log-format", "json"])
            .env("RUST_LOG", "warn,attache_sidecar::startup=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.log_path(addr)).unwrap())
            .spawn()
            .unwrap();
        (child, addr, token)
    }

    fn log_path(&self, addr: SocketAddr) -> std::path::PathBuf {
        self._dir
            .path()
            .join(format!("sidecar-{}.log", addr.port()))
    }

    /// The sidecar's own start-up breakdown (its `ready: first credentials
    /// held` line), once it has been logged.
    fn breakdown(&self, addr: SocketAddr) -> Option<serde_json::Value> {
        for _ in 0..200 {
            let text = std::fs::read_to_string(self.log_path(addr)).unwrap_or_default();
            if let Some(v) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message"] == "ready: first credentials held")
            {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Microseconds per CreateSession signature vs per raw ECDSA P-256 signature.
    async fn signing_cost(&self) -> (f64, f64) {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        const N: u32 = 5_000;
        let body = br#"{"durationSeconds":3600,"profileArn":"arn:aws:rolesanywhere:us-east-1:123456789012:profile/bench","roleArn":"arn:aws:iam::123456789012:role/bench","trustAnchorArn":"arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/bench"}"#;
        let ct = [("Content-Type".to_string(), "application/json".to_string())];
        let t = Instant::now();
        for _ in 0..N {
            let s = self
                .signer
                .sign(
                    "POST",
                    "rolesanywhere.us-east-1.amazonaws.com",
                    "/sessions",
                    "",
                    &ct,
                    body,
                    "us-east-1",
                    "rolesanywhere",
                    time::OffsetDateTime::now_utc(),
                )
                .unwrap();
            std::hint::black_box(s);
        }
        let ours = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref()).unwrap();
        let msg = [7u8; 200];
        let t = Instant::now();
        for _ in 0..N {
            std::hint::black_box(pair.sign(&rng, &msg).unwrap());
        }
        let raw = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
        (ours, raw)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(addr: SocketAddr) {
    for _ in 0..2000 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("{addr} never listened");
}

fn wait_ready(addr: SocketAddr) {
    let req = "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    for _ in 0..10_000 {
        if let Ok(mut s) = TcpStream::connect(addr)
            && let Ok(status) = round_trip(&mut s, req.as_bytes(), &mut Vec::new())
            && status == 200
        {
            return;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    panic!("sidecar at {addr} never became ready");
}

/// Sends one request on a keep-alive connection and reads one response; returns the status.
fn round_trip(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<u16> {
    s.write_all(req)?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            // Cheap header scan (no allocation), so the client's own cost stays
            // small next to the server's on these shared cores.
            let head = &buf[..end];
            let len = head
                .split(|b| *b == b'\n')
                .find_map(|line| {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let (k, v) = line.split_at(line.iter().position(|b| *b == b':')?);
                    k.eq_ignore_ascii_case(b"content-length")
                        .then(|| {
                            std::str::from_utf8(&v[1..])
                                .ok()?
                                .trim()
                                .parse::<usize>()
                                .ok()
                        })
                        .flatten()
                })
                .unwrap_or(0);
            let status = std::str::from_utf8(head.get(9..12).unwrap_or(b"000"))
                .ok()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
    }
}

/// Closed-loop load on `conns` keep-alive connections for `dur`; returns (requests/s, non-200 count).
fn load(addr: SocketAddr, req: &str, conns: usize, dur: Duration) -> (f64, u64) {
    let deadline = Instant::now() + dur;
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let req = req.as_bytes().to_vec();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::new();
                let (mut ok, mut bad) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match round_trip(&mut s, &req, &mut buf) {
                        Ok(200) => ok += 1,
                        _ => bad += 1,
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    let (ok, bad) = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(bad, 0, "non-200 answers under load");
    (ok as f64 / dur.as_secs_f64(), bad)
}

/// p50 and p99 in microseconds over `n` sequential requests on one connection.
fn latencies(addr: SocketAddr, req: &str, n: usize) -> (f64, f64) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(round_trip(&mut s, req.as_bytes(), &mut buf).unwrap(), 200);
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[n / 2], v[n * 99 / 100])
}

fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The baseline: the smallest hyper HTTP/1 server, on a 2-worker runtime like the sidecar's.
fn hello_server(addr: SocketAddr, size: usize) {
    let body: &'static [u8] = Box::leak(vec![b'x'; size].into_boxed_slice());
    use hyper_util::rt::TokioIo;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(hyper::body::Bytes::from_static(body)),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}
