//! `attache-sidecar`: parses flags, runs one command, exits non-zero with one
//! clear line per problem.

use std::process::ExitCode;

use attache_sidecar::cli::Cli;
use clap::Parser as _;

fn main() -> ExitCode {
    attache_sidecar::startup::process_started();
    // Not dumpable: no core dumps, and /proc/<pid>/{mem,environ,root} and
    // ptrace are closed to other processes of the same UID (an app container
    // sharing the pod's process namespace), so the private key and the
    // broker token stay in this process.
    // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        eprintln!(
            "attache-sidecar: cannot make the process non-dumpable: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
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
    attache_sidecar::startup::runtime_built();
    runtime.block_on(attache_sidecar::app::run(
        cli,
        attache_rt::serve::shutdown_signal(),
    ))
}
