//! `attache-sidecar`: parses flags, runs one command, exits non-zero with one
//! clear line per problem.

use std::process::ExitCode;

use attache_sidecar::cli::Cli;
use clap::Parser as _;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("attache-sidecar: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(attache_sidecar::app::run(
        cli,
        attache_sidecar::serve::shutdown_signal(),
    ))
}
