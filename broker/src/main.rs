//! `attache-broker`: parses flags, runs one command, exits non-zero with one
//! clear line on any error.

use attache_broker::ca_cli::{self, CaCommand};
use attache_broker::run::RunArgs;
use clap::{Parser, Subcommand};

/// attache's control plane for Kubernetes clusters outside AWS.
#[derive(Debug, Parser)]
#[command(name = "attache-broker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the cluster certificate authority kept in a directory.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Print the IAM trust policy that lets one ServiceAccount assume a role.
    AwsPolicy(attache_broker::aws_policy::AwsPolicyArgs),
    /// Run the broker in the cluster: webhook, certificate API, admin endpoints.
    Run(Box<RunArgs>),
    /// Run the ECR pull-secret controller (its own Deployment and ServiceAccount).
    EcrController(Box<attache_broker::ecr::cli::EcrControllerArgs>),
}

async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot configure the Kubernetes client (in-cluster config or KUBECONFIG): {e}"
        )
    })
}

async fn ecr_controller(args: attache_broker::ecr::cli::EcrControllerArgs) -> anyhow::Result<()> {
    attache_rt::logging::init_logging(args.log_format);
    let client = kube_client().await?;
    attache_broker::ecr::cli::run(args, client).await
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    attache_rt::logging::init_logging(args.log_format);
    let client = kube_client().await?;
    let running = attache_broker::run::start(args, client).await?;
    attache_rt::serve::shutdown_signal().await;
    running.shutdown().await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ca(CaCommand::Revoke(args)) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(async {
                    let client = kube_client().await?;
                    ca_cli::revoke(args, client, &mut std::io::stdout().lock()).await
                })
            }),
        Command::Ca(cmd) => ca_cli::run(cmd, &mut std::io::stdout().lock()),
        Command::AwsPolicy(a) => attache_broker::aws_policy::run(&a, &mut std::io::stdout().lock())
            .map(|()| {
                for note in attache_broker::aws_policy::profile_notes(&a) {
                    eprintln!("{note}");
                }
            })
            .map_err(Into::into),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(run(*args))),
        Command::EcrController(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(ecr_controller(*args))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attache-broker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
