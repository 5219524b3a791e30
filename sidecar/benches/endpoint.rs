//! `cargo bench -p attache-sidecar --bench endpoint`: prints the sidecar's
//! figures next to their baselines, measured in the same run on this machine.
//!
//! - `/v1/credentials` throughput (8 keep-alive connections) and latency
//!   (1 connection, closed loop) of the real `attache-sidecar serve` process,
//!   next to a bare hyper "hello" server process on loopback (the ceiling).
//! - The CPU each server process spends per request (its user + system time
//!   over a load round, divided by the requests it answered): the cost of
//!   the sidecar's own work, free of the load generator sharing the cores.
//! - The sidecar's resident memory at steady state (VmRSS / VmHWM).
//! - Start-to-ready time of the sidecar process against the AWS emulator,
//!   with the sidecar's own breakdown of it (runtime, logging, TLS client and
//!   root store, certificate, first CreateSession; see `startup.rs`).
//! - CreateSession signing cost next to one raw ECDSA P-256 signature.
//!
//! Not a test: nothing here fails on a slow machine; it prints numbers.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::World;
use support::*;

const LATENCY_REQUESTS: usize = 20_000;

fn main() {
    if let Ok(addr) = std::env::var("ATTACHE_BENCH_HELLO") {
        let size = std::env::var("ATTACHE_BENCH_HELLO_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        return hello_server(addr.parse().expect("address"), size);
    }
    let rt = runtime(1);
    let world = rt.block_on(World::with(BENCH));

    // Start-to-ready of the real binary against the emulator (best of 5).
    let readyz = get_200("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".into());
    let mut breakdown = None;
    let (sidecar, start_to_ready) = start_best_of(
        5,
        || {
            let mut sidecar = spawn_sidecar(&world);
            wait_ready(&mut sidecar, readyz);
            sidecar
        },
        |best| breakdown = read_breakdown(&world, best.addr),
    );
    let addr = sidecar.addr;
    let creds_req = format!(
        "GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n\r\n",
        sidecar.token
    );

    // Two ceilings: the classic 5-byte hello, and one answering a body as long
    // as the credentials reply (so the payload's own cost is visible).
    let reply_len = {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut buf = Vec::new();
        round_trip(&mut s, creds_req.as_bytes(), &mut buf).unwrap();
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        buf.len() - end
    };
    let creds = get_200(creds_req);
    let hello_get = get_200("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".into());
    let spawn_hello = |bytes: usize| {
        let addr = free_addr();
        let child = Command::new(std::env::current_exe().unwrap())
            .env("ATTACHE_BENCH_HELLO", addr.to_string())
            .env("ATTACHE_BENCH_HELLO_BYTES", bytes.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut hello = Server {
            child,
            addr,
            token: String::new(),
        };
        wait_ready(&mut hello, hello_get);
        hello
    };
    let hello = spawn_hello(5);
    let hello_big = spawn_hello(reply_len);

    let [sc_rps, hello_rps, big_rps] = best_throughput([
        (addr, creds),
        (hello.addr, hello_get),
        (hello_big.addr, hello_get),
    ]);
    let cpu = [
        (sidecar.child.id(), addr, creds),
        (hello.child.id(), hello.addr, hello_get),
        (hello_big.child.id(), hello_big.addr, hello_get),
    ]
    .map(|(pid, addr, fetch)| cpu_per_request(pid, addr, fetch));
    let sc_lat = latencies(addr, LATENCY_REQUESTS, creds);
    let hello_lat = latencies(hello.addr, LATENCY_REQUESTS, hello_get);
    let pid = sidecar.child.id();
    let (rss, hwm) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));

    let signing = signing_cost(&world.signer());
    drop((sidecar, hello, hello_big));

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
        "  server CPU per request (user + system, least of {ROUNDS} rounds): sidecar {:.1} us, hello {:.1} us ({:.1} us with the {reply_len} B body)   sidecar / hello {:.2}",
        cpu[0],
        cpu[1],
        cpu[2],
        cpu[0] / cpu[2],
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

/// Microseconds of CPU (user + system) process `pid` spends per request
/// answered on [`CONNECTIONS`] connections, least of [`ROUNDS`] rounds.
fn cpu_per_request(pid: u32, addr: SocketAddr, fetch: Fetch) -> f64 {
    let round = Duration::from_secs(THROUGHPUT_SECS);
    (0..ROUNDS)
        .map(|_| {
            let before = cpu_seconds(pid);
            let served = load(addr, CONNECTIONS, round, fetch) * round.as_secs_f64();
            (cpu_seconds(pid) - before) / served * 1e6
        })
        .fold(f64::INFINITY, f64::min)
}

/// User + system time of process `pid` so far, in seconds (`/proc/<pid>/stat`);
/// NaN (printed as such) if it cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the line.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_second as f64
}

/// `attache-sidecar serve` logging JSON, with its start-up breakdown, to
/// [`log_path`].
fn spawn_sidecar(world: &World) -> Server {
    let (mut cmd, addr, token) = attache_serve(world);
    let child = cmd
        .args(["--log-format", "json"])
        .env("RUST_LOG", "warn,attache_sidecar::startup=info")
        .stderr(std::fs::File::create(log_path(world, addr)).unwrap())
        .spawn()
        .unwrap();
    Server { child, addr, token }
}

/// The log of the sidecar listening on `addr`.
fn log_path(world: &World, addr: SocketAddr) -> std::path::PathBuf {
    world
        .dir
        .path()
        .join(format!("sidecar-{}.log", addr.port()))
}

/// The sidecar's own start-up breakdown (its `ready: first credentials
/// held` line), once it has been logged.
fn read_breakdown(world: &World, addr: SocketAddr) -> Option<serde_json::Value> {
    for _ in 0..200 {
        let text = std::fs::read_to_string(log_path(world, addr)).unwrap_or_default();
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
fn signing_cost(signer: &attache_pki::X509Signer) -> (f64, f64) {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    const N: u32 = 5_000;
    let body = br#"{"durationSeconds":3600,"profileArn":"arn:aws:rolesanywhere:us-east-1:123456789012:profile/bench","roleArn":"arn:aws:iam::123456789012:role/bench","trustAnchorArn":"arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/bench"}"#;
    let ct = [("Content-Type".to_string(), "application/json".to_string())];
    let t = Instant::now();
    for _ in 0..N {
        let s = signer
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

/// The baseline: the smallest hyper HTTP/1 server, on a 2-worker runtime like the sidecar's.
fn hello_server(addr: SocketAddr, size: usize) {
    let body: &'static [u8] = Box::leak(vec![b'x'; size].into_boxed_slice());
    use hyper_util::rt::TokioIo;
    runtime(2).block_on(async move {
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
