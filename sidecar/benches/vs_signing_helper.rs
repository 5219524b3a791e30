//! `cargo bench -p attache-sidecar --bench vs_signing_helper`: `attache-sidecar
//! serve --imds` next to AWS's `aws_signing_helper serve` (v1.4.0, built by
//! `cargo xtask tools`; its IMDSv2-compatible endpoint), both with the same
//! certificate and key against the in-process AWS emulator. Prints, for each:
//!
//! - credential fetches per second, 8 keep-alive connections, best of 3
//!   rounds: one fetch = IMDSv2 `PUT /latest/api/token` + `GET
//!   /latest/meta-data/iam/security-credentials/<role>` (what an SDK's
//!   instance provider does), and for attache also one `GET /v1/credentials`
//!   (the container provider);
//! - p50/p99 latency of one fetch on one connection (best of 3 rounds);
//! - resident memory (VmRSS) after the load;
//! - start-to-ready: process start until an IMDSv2 credentials fetch answers 200
//!   (both fetch their first session before serving), best of 5;
//!
//! and attache's ratios to the helper. Not a test: figures are printed, never
//! asserted. A missing `aws_signing_helper` fails the bench (attache-testkit).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const THROUGHPUT_SECS: u64 = 2;
const ROUNDS: usize = 3;
const LATENCY_FETCHES: usize = 3_000;
const CONNECTIONS: usize = 8;
const STARTS: usize = 5;

const ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/bench";
const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/bench";
const ROLE: &str = "arn:aws:iam::123456789012:role/bench";
const ROLE_NAME: &str = "bench";

fn main() {
    let helper = attache_testkit::require_tool("aws_signing_helper");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let world = rt.block_on(World::new());

    let attache = Server::Attache;
    let aws = Server::Helper(helper);
    let (mut attache_child, attache_addr, token, attache_ready) = world.start_best_of(&attache);
    let (mut aws_child, aws_addr, _, aws_ready) = world.start_best_of(&aws);
    let v1_req: &'static str = Box::leak(
        format!(
            "GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {token}\r\n\r\n"
        )
        .into_boxed_str(),
    );
    let v1 = move |s: &mut TcpStream, b: &mut Vec<u8>| v1_fetch(s, b, v1_req);

    // Warm up, then alternate the servers and keep each one's best round, so a
    // burst of background work on the machine does not decide the ratio.
    let warm = Duration::from_millis(300);
    load(attache_addr, 1, warm, imds_fetch);
    load(aws_addr, 1, warm, imds_fetch);
    load(attache_addr, 1, warm, v1);
    let (mut attache_rps, mut aws_rps, mut v1_rps) = (0f64, 0f64, 0f64);
    let round = Duration::from_secs(THROUGHPUT_SECS);
    for _ in 0..ROUNDS {
        attache_rps = attache_rps.max(load(attache_addr, CONNECTIONS, round, imds_fetch));
        aws_rps = aws_rps.max(load(aws_addr, CONNECTIONS, round, imds_fetch));
        v1_rps = v1_rps.max(load(attache_addr, CONNECTIONS, round, v1));
    }
    let attache_lat = latencies(attache_addr, LATENCY_FETCHES, imds_fetch);
    let aws_lat = latencies(aws_addr, LATENCY_FETCHES, imds_fetch);
    let v1_lat = latencies(attache_addr, LATENCY_FETCHES, v1);
    let attache_rss = vm_rss_kib(attache_child.id());
    let aws_rss = vm_rss_kib(aws_child.id());
    for c in [&mut attache_child, &mut aws_child] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let sessions = world.emulator.sessions().len();
    drop(world);

    let mib = |kib: u64| kib as f64 / 1024.0;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let row = |label: &str, ours: f64, theirs: f64, unit: &str| {
        let fig = |v: f64| match unit {
            "" => format!("{v:.0}"),
            _ => format!("{v:.1} {unit}"),
        };
        println!(
            "  {label:<40}{:>12}{:>21}{:>12.2}",
            fig(ours),
            fig(theirs),
            ours / theirs
        );
    };
    println!(
        "attache-sidecar vs aws_signing_helper v1.4.0 ({} cores, same certificate, in-process emulator; {sessions} CreateSession calls)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "  {:<40}{:>12}{:>21}{:>12}",
        "", "attache", "aws_signing_helper", "ratio a/h"
    );
    row(
        &format!("IMDSv2 fetches/s, {CONNECTIONS} conns, best of {ROUNDS}"),
        attache_rps,
        aws_rps,
        "",
    );
    row(
        &format!("IMDSv2 fetch p50, 1 conn, best of {ROUNDS}"),
        attache_lat.0,
        aws_lat.0,
        "us",
    );
    row(
        &format!("IMDSv2 fetch p99, 1 conn, best of {ROUNDS}"),
        attache_lat.1,
        aws_lat.1,
        "us",
    );
    row("VmRSS after load", mib(attache_rss), mib(aws_rss), "MiB");
    row(
        &format!("start-to-ready, best of {STARTS}"),
        ms(attache_ready),
        ms(aws_ready),
        "ms",
    );
    println!(
        "  attache /v1/credentials: {v1_rps:.0} req/s ({:.2}x the helper's IMDSv2 fetches/s), p50 {:.1} us, p99 {:.1} us",
        v1_rps / aws_rps,
        v1_lat.0,
        v1_lat.1
    );
    println!(
        "  (one IMDSv2 fetch = PUT token + GET credentials, 2 requests; /v1/credentials = 1 request)"
    );
}

/// Which credential server to start.
enum Server {
    Attache,
    Helper(PathBuf),
}

struct World {
    dir: tempfile::TempDir,
    emulator: attache_emulator::Emulator,
    cert: PathBuf,
    key: PathBuf,
}

impl World {
    async fn new() -> World {
        use attache_pki::*;
        let dir = tempfile::tempdir().unwrap();
        let now = time::OffsetDateTime::now_utc();
        let ca = CertificateAuthority::create(&CaOptions::default(), now).unwrap();
        let emulator =
            attache_emulator::Emulator::start(attache_emulator::EmulatorConfig::default())
                .await
                .unwrap();
        emulator.trust_workload(
            ANCHOR,
            PROFILE,
            ROLE,
            ca.certificate_pem(),
            "spiffe://bench.local/ns/ns/sa/sa",
        );
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let csr =
            VerifiedCsr::parse(key.certificate_signing_request().unwrap().as_bytes()).unwrap();
        let id = WorkloadIdentity::new("bench.local", "ns", "sa").unwrap();
        let leaf = ca
            .issue_workload(&csr, &id, Duration::from_secs(3600), now)
            .unwrap();
        let cert = dir.path().join("tls.crt");
        let key_path = dir.path().join("tls.key");
        std::fs::write(&cert, &leaf.pem).unwrap();
        std::fs::write(&key_path, key.to_pkcs8_pem().as_bytes()).unwrap();
        World {
            dir,
            emulator,
            cert,
            key: key_path,
        }
    }

    /// Starts `server` on a free loopback port; returns it, its address and
    /// (attache only) the /v1/credentials token.
    fn spawn(&self, server: &Server) -> (Child, SocketAddr, String) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let url = self.emulator.url();
        let source: [&str; 10] = [
            "--region",
            "us-east-1",
            "--profile-arn",
            PROFILE,
            "--role-arn",
            ROLE,
            "--trust-anchor-arn",
            ANCHOR,
            "--endpoint",
            &url,
        ];
        let files = |cmd: &mut Command| {
            cmd.arg("--certificate")
                .arg(&self.cert)
                .arg("--private-key")
                .arg(&self.key);
        };
        let token = "a".repeat(64);
        let mut cmd = match server {
            Server::Attache => {
                let token_file = self.dir.path().join(format!("token-{}", addr.port()));
                std::fs::write(&token_file, &token).unwrap();
                let mut cmd = Command::new(env!("CARGO_BIN_EXE_attache-sidecar"));
                cmd.arg("serve").args(source);
                files(&mut cmd);
                cmd.args(["--imds", "--listen", &addr.to_string(), "--token-file"])
                    .arg(&token_file)
                    .env("RUST_LOG", "warn");
                cmd
            }
            Server::Helper(path) => {
                let mut cmd = Command::new(path);
                cmd.arg("serve").args(source);
                files(&mut cmd);
                cmd.args(["--port", &addr.port().to_string()]);
                cmd
            }
        };
        for (k, _) in std::env::vars() {
            if k.starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        (child, addr, token)
    }

    /// Starts `server` [`STARTS`] times, keeping the last; returns it and the
    /// best start-to-ready time.
    fn start_best_of(&self, server: &Server) -> (Child, SocketAddr, String, Duration) {
        let mut best = Duration::MAX;
        let mut kept: Option<(Child, SocketAddr, String)> = None;
        for _ in 0..STARTS {
            let t = Instant::now();
            let (mut child, addr, token) = self.spawn(server);
            wait_ready(addr, &mut child);
            best = best.min(t.elapsed());
            if let Some((mut old, _, _)) = kept.replace((child, addr, token)) {
                let _ = old.kill();
                let _ = old.wait();
            }
        }
        let (child, addr, token) = kept.unwrap();
        (child, addr, token, best)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Ready = an IMDSv2 credentials fetch answers 200.
fn wait_ready(addr: SocketAddr, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = Vec::new();
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(addr)
            && imds_fetch(&mut s, &mut buf)
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("credential server at {addr} exited: {status}");
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    panic!("credential server at {addr} never served credentials");
}

const TOKEN_REQ: &[u8] = b"PUT /latest/api/token HTTP/1.1\r\nHost: 127.0.0.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\nContent-Length: 0\r\n\r\n";

/// One IMDSv2 fetch on a keep-alive connection: a session token, then the
/// role's credentials with it. True when both answer 200 and the credentials
/// are there.
fn imds_fetch(s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let Ok(200) = round_trip(s, TOKEN_REQ, buf) else {
        return false;
    };
    let token = body(buf).to_vec();
    let mut req = Vec::with_capacity(256);
    req.extend_from_slice(b"GET /latest/meta-data/iam/security-credentials/");
    req.extend_from_slice(ROLE_NAME.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nHost: 127.0.0.1\r\nX-aws-ec2-metadata-token: ");
    req.extend_from_slice(&token);
    req.extend_from_slice(b"\r\n\r\n");
    matches!(round_trip(s, &req, buf), Ok(200)) && contains(body(buf), b"\"SecretAccessKey\"")
}

/// One `GET /v1/credentials` (attache's container-credentials path).
fn v1_fetch(s: &mut TcpStream, buf: &mut Vec<u8>, req: &str) -> bool {
    matches!(round_trip(s, req.as_bytes(), buf), Ok(200))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn body(response: &[u8]) -> &[u8] {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |i| i + 4);
    &response[end..]
}

/// Sends one request on a keep-alive connection and reads one response
/// (Content-Length framed); returns the status.
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

/// Closed-loop load of `fetch` on `conns` keep-alive connections for `dur`;
/// returns fetches per second. Every fetch must succeed.
fn load(
    addr: SocketAddr,
    conns: usize,
    dur: Duration,
    fetch: impl Fn(&mut TcpStream, &mut Vec<u8>) -> bool + Copy + Send + 'static,
) -> f64 {
    let deadline = Instant::now() + dur;
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                let mut buf = Vec::new();
                let (mut ok, mut bad) = (0u64, 0u64);
                while Instant::now() < deadline {
                    if fetch(&mut s, &mut buf) {
                        ok += 1;
                    } else {
                        bad += 1;
                    }
                }
                (ok, bad)
            })
        })
        .collect();
    let (ok, bad) = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0u64, 0u64), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(bad, 0, "failed credential fetches under load at {addr}");
    ok as f64 / dur.as_secs_f64()
}

/// p50 and p99 in microseconds of `n` sequential fetches on one connection,
/// each the best of [`ROUNDS`] rounds (a scheduler hiccup on these shared
/// cores should not decide a p99).
fn latencies(
    addr: SocketAddr,
    n: usize,
    fetch: impl Fn(&mut TcpStream, &mut Vec<u8>) -> bool,
) -> (f64, f64) {
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = Vec::new();
        let mut v: Vec<f64> = (0..n)
            .map(|_| {
                let t = Instant::now();
                assert!(fetch(&mut s, &mut buf), "fetch failed at {addr}");
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        v.sort_by(f64::total_cmp);
        best = (best.0.min(v[n / 2]), best.1.min(v[n * 99 / 100]));
    }
    best
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
