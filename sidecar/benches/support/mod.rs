//! What the endpoint benches share: their world's names, server processes on
//! loopback, and a small HTTP/1 client that measures them.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Setup, World, free_port};

/// Seconds of one throughput round.
pub const THROUGHPUT_SECS: u64 = 2;
/// Throughput rounds per server; the best one counts.
pub const ROUNDS: usize = 3;
/// Keep-alive connections under throughput load.
pub const CONNECTIONS: usize = 8;

/// The benches' ARNs and SPIFFE ID, and a one-hour certificate.
pub const BENCH: Setup = Setup {
    anchor: "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/bench",
    profile: "arn:aws:rolesanywhere:us-east-1:123456789012:profile/bench",
    role: "arn:aws:iam::123456789012:role/bench",
    spiffe: "spiffe://bench.local/ns/ns/sa/sa",
    lifetime: Duration::from_secs(3600),
};

/// A multi-thread tokio runtime with `workers` workers.
pub fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

/// A free loopback address (bound then released).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A server process listening on `addr`, killed on drop. `token` is its
/// `/v1/credentials` token (attache's; empty for the others).
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `attache-sidecar serve` with `world`'s certificate on a free loopback
/// port, its `/v1/credentials` token in a file, stdout to /dev/null; returns
/// the command, the address and the token.
pub fn attache_serve(world: &World) -> (Command, SocketAddr, String) {
    let addr = free_addr();
    let token = "a".repeat(64);
    let token_file = world.dir.path().join(format!("token-{}", addr.port()));
    std::fs::write(&token_file, &token).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_attache-sidecar"));
    cmd.arg("serve")
        .args(world.flags())
        .args(["--listen", &addr.to_string(), "--token-file"])
        .arg(&token_file)
        .stdout(Stdio::null());
    (cmd, addr, token)
}

/// One fetch on a keep-alive connection, reusing the buffer; true when it
/// succeeded.
pub type Fetch = &'static (dyn Fn(&mut TcpStream, &mut Vec<u8>) -> bool + Sync);

/// A fetch sending `req` and wanting a 200.
pub fn get_200(req: String) -> Fetch {
    let req: &'static [u8] = req.leak().as_bytes();
    Box::leak(Box::new(move |s: &mut TcpStream, buf: &mut Vec<u8>| {
        matches!(round_trip(s, req, buf), Ok(200))
    }))
}

/// Waits until `ready` succeeds on a new connection to `server`, polling
/// every 0.5 ms; panics if the process exits or 20 s pass first.
pub fn wait_ready(server: &mut Server, ready: Fetch) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = Vec::new();
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(server.addr)
            && ready(&mut s, &mut buf)
        {
            return;
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("server at {} exited: {status}", server.addr);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    panic!("server at {} never became ready", server.addr);
}

/// Starts a server `n` times with `start` (which returns it ready), keeping
/// the last one; returns it and the best start-to-ready time. `on_best` sees
/// each start faster than the ones before it.
pub fn start_best_of(
    n: usize,
    mut start: impl FnMut() -> Server,
    mut on_best: impl FnMut(&Server),
) -> (Server, Duration) {
    let mut best = Duration::MAX;
    let mut kept = None;
    for _ in 0..n {
        let t = Instant::now();
        let server = start();
        let took = t.elapsed();
        if took < best {
            best = took;
            on_best(&server);
        }
        // Stops the one kept before.
        kept = Some(server);
    }
    (kept.unwrap(), best)
}

/// Sends one request on a keep-alive connection and reads one response
/// (Content-Length framed); returns the status.
pub fn round_trip(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<u16> {
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

/// Closed-loop load of `fetch` on `conns` keep-alive connections to `addr`
/// for `dur`; returns fetches per second. Every fetch must succeed.
pub fn load(addr: SocketAddr, conns: usize, dur: Duration, fetch: Fetch) -> f64 {
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
    assert_eq!(bad, 0, "failed fetches under load at {addr}");
    ok as f64 / dur.as_secs_f64()
}

/// Fetches per second of each `(address, fetch)` on [`CONNECTIONS`]
/// connections, best of [`ROUNDS`] rounds of [`THROUGHPUT_SECS`]. Each is
/// warmed up first, then they alternate, so a burst of background work on
/// the machine does not decide their ratio.
pub fn best_throughput<const N: usize>(targets: [(SocketAddr, Fetch); N]) -> [f64; N] {
    for (addr, fetch) in targets {
        load(addr, 1, Duration::from_millis(300), fetch);
    }
    let round = Duration::from_secs(THROUGHPUT_SECS);
    let mut best = [0f64; N];
    for _ in 0..ROUNDS {
        for (b, (addr, fetch)) in best.iter_mut().zip(targets) {
            *b = b.max(load(addr, CONNECTIONS, round, fetch));
        }
    }
    best
}

/// p50 and p99 in microseconds of `n` sequential fetches on one connection.
pub fn latencies(addr: SocketAddr, n: usize, fetch: Fetch) -> (f64, f64) {
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
    (v[n / 2], v[n * 99 / 100])
}

/// A memory figure of process `pid` in KiB, `field` as `/proc/<pid>/status`
/// names it (`VmRSS:`, `VmHWM:`); 0 if unknown.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
