//! ECR controller at scale: 10,000 ServiceAccounts across 1,000 namespaces,
//! 2 roles, 2 regions (one emulator per region), against a real etcd +
//! kube-apiserver (the e2e harness, `deploy/kubernetes` applied; the
//! controller runs as the broker's ServiceAccount). Prints how long seeding
//! took, the time to converge from a cold start, the API-server requests
//! (from the audit log) and AWS calls issued, and peak memory. Not a timed test.
//!
//! `cargo bench -p attache-broker --bench ecr` (env `ECR_BENCH_SAS`,
//! `ECR_BENCH_NAMESPACES` shrink it; `ECR_BENCH_SEED_CONCURRENCY`, default 32,
//! sets how many creates are in flight while seeding).

#[path = "../../tests/e2e/tests/common/mod.rs"]
mod common;
#[path = "../../tests/e2e/tests/ecr_common/mod.rs"]
mod ecr_common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attache_broker::ecr::secret::secret_name;
use attache_broker::metrics::Metrics;
use attache_emulator::Operation;
use attache_rt::clock::{Clock, SystemClock};
use ecr_common::*;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::watcher;

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

/// Runs `create` for every item, `concurrency` at a time.
async fn create_all<T, F, Fut>(items: Vec<T>, concurrency: usize, create: F) -> anyhow::Result<()>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    futures::stream::iter(items.into_iter().map(create))
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let sas = env_usize("ECR_BENCH_SAS", 10_000);
    let namespaces = env_usize("ECR_BENCH_NAMESPACES", 1_000).max(1);
    let concurrency = env_usize("ECR_BENCH_SEED_CONCURRENCY", 32);
    let regions = ["us-east-1", "eu-west-1"];
    let roles = [ROLE, ROLE_B];
    let started = Instant::now();
    let w = World::new(&regions).await;
    println!(
        "etcd + kube-apiserver started, deploy/kubernetes applied in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let ns_name = |n: usize| format!("ns-{n:04}");
    let allowed = format!("[\"{ROLE}\", \"{ROLE_B}\"]");
    let seed_start = Instant::now();
    let nss = Api::<Namespace>::all(w.admin.clone());
    create_all((0..namespaces).collect(), concurrency, |n| {
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {
            "name": ns_name(n),
            "annotations": {"attache.dev/allowed-roles": allowed},
        }}))
        .expect("namespace object");
        let nss = nss.clone();
        async move { nss.create(&PostParams::default(), &ns).await.map(drop) }
    })
    .await?;
    let ns_seeded = seed_start.elapsed();
    create_all((0..sas).collect(), concurrency, |i| {
        let ns = ns_name(i % namespaces);
        let role = roles[(i / namespaces) % 2];
        // Every SA one region; every tenth both.
        let reg = if i % 10 == 0 {
            format!("{},{}", registry(regions[0]), registry(regions[1]))
        } else {
            registry(regions[(i / (2 * namespaces)) % 2])
        };
        let sa = service_account_object(
            &format!("sa-{i:05}"),
            &[
                ("attache.dev/ecr-registries", &reg),
                ("attache.dev/ecr-role-arn", role),
            ],
            &[],
        );
        let api = Api::<ServiceAccount>::namespaced(w.admin.clone(), &ns);
        async move { api.create(&PostParams::default(), &sa).await.map(drop) }
    })
    .await?;
    let seeded = seed_start.elapsed();

    // Follows the ServiceAccounts (as cluster-admin) to see the moment the
    // last one lists its pull secret.
    let (listed_tx, mut listed_rx) = tokio::sync::watch::channel(0usize);
    let (synced_tx, mut synced_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn({
        let api = Api::<ServiceAccount>::all(w.admin.clone());
        async move {
            let mut listed = HashSet::new();
            let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
            while let Some(Ok(e)) = events.next().await {
                let (sa, init_done) = match e {
                    watcher::Event::Apply(sa) | watcher::Event::InitApply(sa) => (Some(sa), false),
                    watcher::Event::InitDone => (None, true),
                    _ => (None, false),
                };
                if init_done {
                    let _ = synced_tx.send(true);
                }
                let Some(sa) = sa else { continue };
                let name = sa.metadata.name.clone().unwrap_or_default();
                let key = (
                    sa.metadata.namespace.clone().unwrap_or_default(),
                    name.clone(),
                );
                let has = sa
                    .image_pull_secrets
                    .iter()
                    .flatten()
                    .any(|r| r.name == secret_name(&name));
                if has {
                    listed.insert(key);
                } else {
                    listed.remove(&key);
                }
                listed_tx.send_replace(listed.len());
            }
        }
    });
    let _ = synced_rx.wait_for(|s| *s).await;
    let seeded_hwm = vm_hwm_kib();
    println!(
        "seeded {namespaces} namespaces in {:.1}s and {sas} ServiceAccounts in {:.1}s more ({concurrency} creates in flight; {:.0} creates/s) (VmHWM {} MiB before the controller)",
        ns_seeded.as_secs_f64(),
        (seeded - ns_seeded).as_secs_f64(),
        (sas + namespaces) as f64 / seeded.as_secs_f64(),
        seeded_hwm / 1024
    );
    let before = broker_call_counts(&w.server);
    let metrics = Metrics::default();
    let mut ctx = w.context(&metrics);
    ctx.clock = Arc::new(SystemClock) as Arc<dyn Clock>;
    let workers = std::env::var("ECR_BENCH_WORKERS").unwrap_or_else(|_| "16".into());
    let args = w.args("bench", &["--ecr-workers", &workers]);
    let start = Instant::now();
    let handle = attache_broker::ecr::start(&args, ctx).await?;
    let written = || metrics.ecr_secrets_written.get() as usize;
    let all_listed = tokio::time::timeout(Duration::from_secs(600), async {
        let _ = listed_rx.wait_for(|n| *n >= sas).await;
        while written() < sas {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    anyhow::ensure!(
        all_listed.is_ok(),
        "not converged after 600 s: {} secrets, {} listed",
        written(),
        *listed_rx.borrow()
    );
    let converged = start.elapsed();
    follower.abort();
    let (etcd_rss, apiserver_rss) = w.server.rss_mib();
    // Check every SA for real.
    let listed: HashSet<(String, String)> = Api::<ServiceAccount>::all(w.admin.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|sa| {
            let name = sa.metadata.name.clone()?;
            sa.image_pull_secrets
                .iter()
                .flatten()
                .any(|r| r.name == secret_name(&name))
                .then(|| (sa.metadata.namespace.clone().unwrap_or_default(), name))
        })
        .collect();
    let secrets: HashSet<(String, String)> = Api::<Secret>::all(w.admin.clone())
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=attache"))
        .await?
        .items
        .into_iter()
        .filter_map(|s| Some((s.metadata.namespace?, s.metadata.name?)))
        .collect();
    let mut ok = 0;
    for i in 0..sas {
        let ns = ns_name(i % namespaces);
        let sa = format!("sa-{i:05}");
        if secrets.contains(&(ns.clone(), secret_name(&sa))) && listed.contains(&(ns, sa)) {
            ok += 1;
        }
    }
    let peak = vm_hwm_kib();
    let after = broker_call_counts(&w.server);
    let mut api: Vec<(String, usize)> = after
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
    let api_total: usize = api.iter().map(|(_, v)| v).sum();
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
        "API-server requests (audit log, the broker's ServiceAccount): {api_total} ({:.2} per ServiceAccount)",
        api_total as f64 / sas as f64
    );
    for (k, v) in &api {
        println!("  {k}: {v}");
    }
    println!("AWS calls: GetAuthorizationToken {ecr_calls} (target 4), CreateSession {sessions}");
    println!(
        "peak RSS (VmHWM, this process: emulators + controller + seeding client): {} MiB; before the controller: {} MiB; growth {} MiB",
        peak / 1024,
        seeded_hwm / 1024,
        peak.saturating_sub(seeded_hwm) / 1024
    );
    println!(
        "API server RSS after convergence: kube-apiserver {apiserver_rss:.0} MiB, etcd {etcd_rss:.0} MiB"
    );
    handle.shutdown().await;
    anyhow::ensure!(ok == sas, "not every ServiceAccount converged");
    Ok(())
}
