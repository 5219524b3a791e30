//! `attache-broker`: parses flags, runs one command, exits non-zero with one
//! clear line on any error.

use attache_broker::ca_cli::{self, CaCommand};
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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ca(cmd) => ca_cli::run(cmd, &mut std::io::stdout().lock()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attache-broker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
