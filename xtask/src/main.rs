//! `cargo xtask`: the project's tasks.
//!
//! - `cargo xtask tools [NAME...]`: build the pinned external programs the
//!   tests drive (tests/tools.toml) into `<target>/tools/bin`, the Python
//!   venv (tests/requirements.txt) and the JavaScript SDK clients; cached.
//! - `cargo xtask test [-- ARGS]`: provision all of that, then run every test
//!   of the workspace with `ATTACHE_TOOLS_DIR` set. It fails when any test was
//!   ignored or filtered out: nothing is skipped and counted as passed.
//! - `cargo xtask bench NAME`: one benchmark in a release build (scale,
//!   endpoint, vs-signing-helper, broker, ecr), tools provisioned first when
//!   it needs them.
//! - `cargo xtask image`: build the OCI image from deploy/Dockerfile offline
//!   with buildah (root, vfs storage, chroot isolation; no registry, no
//!   daemon) and check it. The Dockerfile's final stage is used as is: its
//!   `build` stage is replaced by the release binaries built on the host
//!   (`cargo build --release --locked -p attache-broker -p attache-sidecar`
//!   into `<target>/image`, so it never waits for the main target dir's
//!   lock) and the host's copies of the shared libraries they load (`ldd`),
//!   and its `BASE` by a local equivalent of distroless
//!   `static-debian12:nonroot` made from the host's Debian packages
//!   (base-files, netbase, tzdata, the CA bundle, user 65532; no libc, no
//!   shell). Then, inside the image: both binaries' `--version`,
//!   `attache-broker ca init` / `ca issue` for an openssl CSR, and
//!   `attache-sidecar credential-process` against the AWS emulator (built
//!   in the default target dir exactly as `cargo xtask test` builds it, so
//!   not again after it; HTTPS on loopback, trusting that CA); and
//!   on the image: user 65532, entrypoint `/attache-sidecar`, no shell, CA
//!   certificates present, exactly the shared libraries the binaries load,
//!   compressed size within budget. Any mismatch fails the task. It prints
//!   one line on stdout,
//!   `image size_mb=<compressed> uncompressed_mb=<n> user=<uid> entrypoint=<path>`,
//!   and leaves the image as an OCI layout in `<target>/image/oci` (tag `dev`).
//!
//! Depends on no attache crate.

mod image;
mod tools;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "attache's project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the pinned tools the tests drive (all, or the ones named:
    /// kube-apiserver, etcd, aws_signing_helper, helm, spire-server,
    /// spire-agent, go-sdk-probe, java-sdk-probe, python, node).
    Tools {
        /// Tools to build; all when none is named.
        names: Vec<String>,
    },
    /// Provision every tool, then run every test of the workspace.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. `-p attache-e2e`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Run one benchmark (release build), provisioning the tools it needs:
    /// scale, endpoint, vs-signing-helper, broker, ecr.
    Bench {
        /// Which benchmark.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(BENCHES.iter().map(|b| b.name)))]
        name: String,
    },
    /// Build the image from deploy/Dockerfile offline with buildah (host-built
    /// binaries and their libraries, a local distroless-equivalent base) and
    /// check it: run both binaries and a credentials round trip inside it,
    /// user, entrypoint, no shell, CA certificates, shared libraries, size.
    /// Needs root, buildah, openssl, dpkg, ldd.
    Image,
}

/// A benchmark `cargo xtask bench NAME` runs.
struct Bench {
    /// The name on the command line.
    name: &'static str,
    /// Its package.
    package: &'static str,
    /// Its `[[bench]]` target.
    target: &'static str,
    /// Whether it needs the pinned tools (kube-apiserver, the signing helper).
    needs_tools: bool,
}

const fn bench_of(
    name: &'static str,
    package: &'static str,
    target: &'static str,
    needs_tools: bool,
) -> Bench {
    Bench {
        name,
        package,
        target,
        needs_tools,
    }
}

const BENCHES: &[Bench] = &[
    bench_of("scale", "attache-sidecar", "scale", false),
    bench_of("endpoint", "attache-sidecar", "endpoint", false),
    bench_of(
        "vs-signing-helper",
        "attache-sidecar",
        "vs_signing_helper",
        true,
    ),
    bench_of("broker", "attache-broker", "broker", true),
    bench_of("ecr", "attache-broker", "ecr", true),
];

/// Where things are.
pub struct Paths {
    /// The workspace root.
    pub root: PathBuf,
    /// The cargo target directory (`CARGO_TARGET_DIR` or `<root>/target`).
    pub target: PathBuf,
    /// `<target dir>/tools`.
    pub tools: PathBuf,
}

impl Paths {
    fn discover() -> Result<Self> {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has a parent directory")?
            .to_path_buf();
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        let target = if target.is_absolute() {
            target
        } else {
            root.join(target)
        };
        Ok(Paths {
            root,
            tools: target.join("tools"),
            target,
        })
    }
}

/// Runs a command with stderr shown; returns its stdout. Fails naming the command.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {shown} (is it installed?)"))?;
    ensure!(out.status.success(), "{shown} failed: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let paths = Paths::discover()?;
    match cli.task {
        Task::Tools { names } if names.is_empty() => {
            tools::provision(&paths, tools::Selection::All)
        }
        Task::Tools { names } => tools::provision(&paths, tools::Selection::Named(&names)),
        Task::Test { cargo_args } => test(&paths, &cargo_args),
        Task::Bench { name } => bench(&paths, &name),
        Task::Image => image::build_and_check(&paths),
    }
}

fn bench(paths: &Paths, name: &str) -> Result<()> {
    let Bench {
        package,
        target,
        needs_tools,
        ..
    } = BENCHES
        .iter()
        .find(|b| b.name == name)
        .with_context(|| format!("no benchmark named {name:?}"))?;
    if *needs_tools {
        tools::provision(paths, tools::Selection::ForTests)?;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&paths.root)
        .args(["bench", "-p", package, "--bench", target])
        .env("ATTACHE_TOOLS_DIR", &paths.tools)
        .stdin(Stdio::null())
        .status()
        .context("cannot start cargo bench")?;
    ensure!(status.success(), "cargo bench {package} {target}: {status}");
    Ok(())
}

fn test(paths: &Paths, cargo_args: &[String]) -> Result<()> {
    let start = Instant::now();
    tools::provision(paths, tools::Selection::ForTests)?;
    let provisioned = start.elapsed();
    eprintln!("xtask: phase provision: {:.1}s", provisioned.as_secs_f64());
    let counts = cargo_test(paths, cargo_args)?;
    eprintln!(
        "xtask: phase cargo test: {:.1}s",
        (start.elapsed() - provisioned).as_secs_f64()
    );
    eprintln!(
        "xtask: {} passed, {} failed, {} ignored, {} filtered out, in {} test binaries",
        counts.passed, counts.failed, counts.ignored, counts.filtered, counts.binaries
    );
    ensure!(counts.binaries > 0, "cargo test ran no test binary");
    ensure!(
        counts.ignored == 0 && (counts.filtered == 0 || !cargo_args.is_empty()),
        "{} tests were ignored and {} filtered out: every test must run",
        counts.ignored,
        counts.filtered
    );
    Ok(())
}

#[derive(Default)]
struct Counts {
    binaries: u64,
    passed: u64,
    failed: u64,
    ignored: u64,
    filtered: u64,
}

impl Counts {
    /// Adds one libtest summary line:
    /// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; ...`
    fn add(&mut self, line: &str) -> bool {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return false;
        };
        self.binaries += 1;
        for part in rest.split(';') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let n = |i: usize| {
                words
                    .get(i)
                    .and_then(|w| w.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            match words.as_slice() {
                [_, _, "passed", ..] => self.passed += n(1),
                [_, "passed", ..] => self.passed += n(0),
                [_, "failed", ..] => self.failed += n(0),
                [_, "ignored", ..] => self.ignored += n(0),
                [_, "filtered", "out", ..] => self.filtered += n(0),
                _ => {}
            }
        }
        true
    }
}

/// `cargo test --workspace --no-fail-fast` (one red test binary does not hide
/// the others) with the tools directory exported; echoes its
/// output and counts the libtest summaries.
fn cargo_test(paths: &Paths, cargo_args: &[String]) -> Result<Counts> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&paths.root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(cargo_args)
        .env("ATTACHE_TOOLS_DIR", &paths.tools)
        .stdout(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().context("cannot start cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut counts = Counts::default();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        counts.add(line.trim());
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo test failed: {status} ({} failed)", counts.failed);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_libtest_summaries() {
        let mut c = Counts::default();
        assert!(c.add("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.01s"));
        assert!(!c.add("running 3 tests"));
        assert!(c.add("test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s"));
        assert_eq!(
            (c.binaries, c.passed, c.failed, c.ignored, c.filtered),
            (2, 4, 2, 1, 2)
        );
    }

    #[test]
    fn the_pinned_tools_file_parses() {
        let file = tools::ToolsFile::load(&Paths::discover().unwrap()).unwrap();
        for name in [
            "kube-apiserver",
            "etcd",
            "aws_signing_helper",
            "helm",
            "spire-server",
            "spire-agent",
            "go-sdk-probe",
            "java-sdk-probe",
        ] {
            assert!(
                file.names().iter().any(|n| n == name),
                "{name} is not pinned"
            );
        }
    }
}
