//! `attache-emulator`: serves the AWS emulator on a port, configured by a TOML
//! file and flags (every flag also an `ATTACHE_EMULATOR_*` variable).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use attache_emulator::{Emulator, EmulatorConfig};
use clap::Parser;

/// An AWS emulator (IAM Roles Anywhere, STS, ECR) for tests and local demos.
/// It never talks to AWS.
#[derive(Debug, Parser)]
#[command(name = "attache-emulator", version)]
struct Args {
    /// TOML config file: region, account, trust_anchors, profiles, roles.
    #[arg(long, env = "ATTACHE_EMULATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Listen address (overrides the config file; default 127.0.0.1:0).
    #[arg(long, env = "ATTACHE_EMULATOR_LISTEN")]
    listen: Option<SocketAddr>,
    /// AWS region requests must be scoped to (default us-east-1).
    #[arg(long, env = "ATTACHE_EMULATOR_REGION")]
    region: Option<String>,
    /// 12-digit account id (default 123456789012).
    #[arg(long, env = "ATTACHE_EMULATOR_ACCOUNT")]
    account: Option<String>,
    /// Serve HTTPS with a generated certificate; the CA PEM is written to --tls-ca-out.
    #[arg(long, env = "ATTACHE_EMULATOR_TLS")]
    tls: bool,
    /// Where --tls writes the CA certificate to trust.
    #[arg(long, env = "ATTACHE_EMULATOR_TLS_CA_OUT")]
    tls_ca_out: Option<PathBuf>,
    /// Delay added to every answer, e.g. 200ms.
    #[arg(long, env = "ATTACHE_EMULATOR_LATENCY", value_parser = humantime::parse_duration)]
    latency: Option<Duration>,
    /// Fraction (0..1) of requests answered with --fail-status.
    #[arg(long, env = "ATTACHE_EMULATOR_FAIL_RATE", default_value_t = 0.0)]
    fail_rate: f64,
    /// HTTP status for --fail-rate failures (500 or 503).
    #[arg(long, env = "ATTACHE_EMULATOR_FAIL_STATUS", default_value_t = 503)]
    fail_status: u16,
    /// Fraction (0..1) of requests throttled.
    #[arg(long, env = "ATTACHE_EMULATOR_THROTTLE", default_value_t = 0.0)]
    throttle: f64,
    /// Skew of the emulator's clock, e.g. 10m or -10m.
    #[arg(long, env = "ATTACHE_EMULATOR_CLOCK_SKEW", allow_hyphen_values = true)]
    clock_skew: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "ATTACHE_EMULATOR_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn parse_skew(s: &str) -> anyhow::Result<time::Duration> {
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let d = humantime::parse_duration(rest).with_context(|| format!("--clock-skew {s:?}"))?;
    let d = time::Duration::try_from(d).context("--clock-skew is too large")?;
    Ok(if neg { -d } else { d })
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "text" => builder.init(),
        other => anyhow::bail!("--log-format {other:?}: expected text or json"),
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format)?;
    let mut config = match &args.config {
        Some(path) => EmulatorConfig::from_toml_file(path)?,
        None => EmulatorConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(region) = &args.region {
        config.region = region.clone();
    }
    if let Some(account) = &args.account {
        config.account = account.clone();
    }
    if !(0.0..=1.0).contains(&args.fail_rate) || !(0.0..=1.0).contains(&args.throttle) {
        anyhow::bail!("--fail-rate and --throttle must be between 0 and 1");
    }
    let emulator = if args.tls {
        let (emulator, ca_pem) = Emulator::start_tls(config).await?;
        let path = args
            .tls_ca_out
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("attache-emulator-ca.pem"));
        std::fs::write(&path, ca_pem)
            .with_context(|| format!("writing the TLS CA to {}", path.display()))?;
        println!("tls-ca: {}", path.display());
        emulator
    } else {
        Emulator::start(config).await?
    };
    let faults = emulator.faults();
    if let Some(latency) = args.latency {
        faults.set_latency(latency);
    }
    faults.set_fail_rate(args.fail_rate, args.fail_status);
    faults.set_throttle_rate(args.throttle);
    if let Some(skew) = &args.clock_skew {
        faults.set_clock_skew(parse_skew(skew)?);
    }
    println!("url: {}", emulator.url());
    tracing::info!(url = %emulator.url(), region = emulator.region(), "ready; Ctrl-C to stop");
    shutdown_signal().await;
    tracing::info!("shutting down");
    emulator.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_accepts_signs() {
        assert_eq!(parse_skew("10m").unwrap(), time::Duration::minutes(10));
        assert_eq!(parse_skew("-90s").unwrap(), time::Duration::seconds(-90));
        assert!(parse_skew("soon").is_err());
    }

    #[test]
    fn every_flag_has_an_env_variable() {
        use clap::CommandFactory;
        for arg in Args::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(
                env.as_deref()
                    .is_some_and(|e| e.starts_with("ATTACHE_EMULATOR_")),
                "--{id} has no ATTACHE_EMULATOR_ variable"
            );
        }
    }
}
