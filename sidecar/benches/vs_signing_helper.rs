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

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{World, no_aws_config};
use support::*;

const LATENCY_FETCHES: usize = 3_000;
const STARTS: usize = 5;
/// The name of the role of [`BENCH`], as IMDS lists it.
const ROLE_NAME: &str = "bench";
/// An IMDSv2 credentials fetch.
const IMDS: Fetch = &imds_fetch;

fn main() {
    let helper = attache_testkit::require_tool("aws_signing_helper");
    let rt = runtime(1);
    let world = rt.block_on(World::with(BENCH));

    // Ready = an IMDSv2 credentials fetch answers 200.
    let start = |kind: &Kind| {
        let ready = || {
            let mut server = spawn(&world, kind);
            wait_ready(&mut server, IMDS);
            server
        };
        start_best_of(STARTS, ready, |_| {})
    };
    let (attache, attache_ready) = start(&Kind::Attache);
    let (aws, aws_ready) = start(&Kind::Helper(helper));
    let v1 = get_200(format!(
        "GET /v1/credentials HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\n\r\n",
        attache.token
    ));

    let [attache_rps, aws_rps, v1_rps] =
        best_throughput([(attache.addr, IMDS), (aws.addr, IMDS), (attache.addr, v1)]);
    let attache_lat = best_latencies(attache.addr, IMDS);
    let aws_lat = best_latencies(aws.addr, IMDS);
    let v1_lat = best_latencies(attache.addr, v1);
    let attache_rss = status_kib(attache.child.id(), "VmRSS:");
    let aws_rss = status_kib(aws.child.id(), "VmRSS:");
    drop((attache, aws));
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
enum Kind {
    Attache,
    Helper(PathBuf),
}

/// Starts `kind` with `world`'s certificate on a free loopback port, in an
/// environment without AWS configuration.
fn spawn(world: &World, kind: &Kind) -> Server {
    let (mut cmd, addr, token) = match kind {
        Kind::Attache => {
            let (mut cmd, addr, token) = attache_serve(world);
            cmd.arg("--imds").env("RUST_LOG", "warn");
            (cmd, addr, token)
        }
        Kind::Helper(path) => {
            let addr = free_addr();
            let mut cmd = Command::new(path);
            cmd.arg("serve")
                .args(world.flags())
                .args(["--port", &addr.port().to_string()]);
            (cmd, addr, String::new())
        }
    };
    let child = no_aws_config(&mut cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server { child, addr, token }
}

/// [`latencies`] of [`LATENCY_FETCHES`] fetches, each figure the best of
/// [`ROUNDS`] rounds (a scheduler hiccup on these shared cores should not
/// decide a p99).
fn best_latencies(addr: SocketAddr, fetch: Fetch) -> (f64, f64) {
    (0..ROUNDS)
        .map(|_| latencies(addr, LATENCY_FETCHES, fetch))
        .fold((f64::MAX, f64::MAX), |best, l| {
            (best.0.min(l.0), best.1.min(l.1))
        })
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
