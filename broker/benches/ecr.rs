//! ECR controller at scale: 10,000 ServiceAccounts across 1,000 namespaces,
//! 2 roles, 2 regions (one emulator per region), against the Kubernetes API
//! double. Prints the time to converge from a cold start, the API-server
//! requests and AWS calls issued, and peak memory. Not a timed test.
//!
//! `cargo bench -p attache-broker --bench ecr` (env `ECR_BENCH_SAS`,
//! `ECR_BENCH_NAMESPACES` shrink it).

#[path = "../tests/ecr_common/mod.rs"]
mod ecr_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use attache_broker::ecr::secret::secret_name;
use attache_broker::metrics::Metrics;
use attache_emulator::Operation;
use attache_sidecar::clock::{Clock, SystemClock};
use ecr_common::*;

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let sas = env_usize("ECR_BENCH_SAS", 10_000);
    let namespaces = env_usize("ECR_BENCH_NAMESPACES", 1_000).max(1);
    let regions = ["us-east-1", "eu-west-1"];
    let roles = [ROLE, ROLE_B];
    let w = World::new(&regions).await;
    let seed_start = Instant::now();
    for n in 0..namespaces {
        w.namespace(&format!("ns-{n:04}"), &[]);
    }
    for i in 0..sas {
        let ns = format!("ns-{:04}", i % namespaces);
        let role = roles[(i / namespaces) % 2];
        // Every SA one region; every tenth both.
        let reg = if i % 10 == 0 {
            format!("{},{}", registry(regions[0]), registry(regions[1]))
        } else {
            registry(regions[(i / (2 * namespaces)) % 2])
        };
        w.service_account(
            &ns,
            &format!("sa-{i:05}"),
            &[
                ("attache.dev/ecr-registries", &reg),
                ("attache.dev/ecr-role-arn", role),
            ],
            &[],
        );
    }
    let seeded_hwm = vm_hwm_kib();
    println!(
        "seeded {sas} ServiceAccounts in {namespaces} namespaces in {:.1}s (VmHWM {} MiB before the controller)",
        seed_start.elapsed().as_secs_f64(),
        seeded_hwm / 1024
    );
    let before = w.double.request_counts();
    let metrics = Metrics::default();
    let mut ctx = w.context(&metrics);
    ctx.clock = Arc::new(SystemClock) as Arc<dyn Clock>;
    let workers = std::env::var("ECR_BENCH_WORKERS").unwrap_or_else(|_| "16".into());
    let args = w.args("bench", &["--ecr-workers", &workers]);
    let start = Instant::now();
    let handle = attache_broker::ecr::start(&args, ctx).await?;
    let deadline = start + Duration::from_secs(600);
    let written = || metrics.ecr_secrets_written.get() as usize;
    loop {
        let listed = w.double.request_count("patch", "serviceaccounts") as usize;
        if written() >= sas && listed >= sas {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "not converged after 600 s: {} secrets",
            written()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let converged = start.elapsed();
    // Check every SA for real.
    let mut ok = 0;
    for i in 0..sas {
        let ns = format!("ns-{:04}", i % namespaces);
        let sa = format!("sa-{i:05}");
        if w.pull_secrets(&ns, &sa).contains(&secret_name(&sa))
            && w.secret(&ns, &secret_name(&sa)).is_some()
        {
            ok += 1;
        }
    }
    let peak = vm_hwm_kib();
    let after = w.double.request_counts();
    let mut api: Vec<(String, u64)> = after
        .iter()
        .map(|(k, v)| {
            (
                format!("{} {}", k.0, k.1),
                v - before.get(k).copied().unwrap_or(0),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    api.sort();
    let api_total: u64 = api.iter().map(|(_, v)| v).sum();
    let mut ecr_calls = 0;
    let mut sessions = 0;
    for e in w.emulators.values() {
        ecr_calls += e.request_count(Operation::GetAuthorizationToken);
        sessions += e.request_count(Operation::CreateSession);
    }
    println!(
        "converged: {ok}/{sas} ServiceAccounts with a listed pull secret in {:.2}s",
        converged.as_secs_f64()
    );
    println!(
        "API-server requests: {api_total} ({:.2} per ServiceAccount)",
        api_total as f64 / sas as f64
    );
    for (k, v) in &api {
        println!("  {k}: {v}");
    }
    println!("AWS calls: GetAuthorizationToken {ecr_calls} (target 4), CreateSession {sessions}");
    println!(
        "peak RSS (VmHWM, whole process: API double + emulators + controller): {} MiB; before the controller: {} MiB; growth {} MiB",
        peak / 1024,
        seeded_hwm / 1024,
        peak.saturating_sub(seeded_hwm) / 1024
    );
    handle.shutdown().await;
    anyhow::ensure!(ok == sas, "not every ServiceAccount converged");
    Ok(())
}
