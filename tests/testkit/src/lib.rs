//! Shared test fixtures for attache's test crates.
//!
//! Every test that drives an external program (kube-apiserver, etcd, AWS's
//! `aws_signing_helper`, helm, the Go and Java SDK probes, botocore in the
//! tools venv, the JavaScript SDK) finds it through [`require_tool`] and
//! friends. A missing tool **fails** the test with the command that provides
//! it: nothing is ever skipped and counted as passed.
//!
//! Where tools live: `cargo xtask tools` builds them into
//! `<target dir>/tools/` and `cargo xtask test` exports `ATTACHE_TOOLS_DIR`
//! pointing there. Without that variable the default `target/tools` of this
//! workspace is used, so `cargo test` after one `cargo xtask tools` works too.
//!
//! Must not depend on any attache crate (every test crate may use it).

use std::path::{Path, PathBuf};

/// The variable `cargo xtask test` sets to the tools directory.
pub const TOOLS_DIR_ENV: &str = "ATTACHE_TOOLS_DIR";

/// The workspace root: the nearest directory holding a `[workspace]`
/// Cargo.toml above the package under test (`CARGO_MANIFEST_DIR`, which
/// cargo sets when it runs a test), else above this crate's own source.
/// Read at run time, so a test binary built from another checkout that
/// shares the target directory still finds this checkout's tools.
pub fn workspace_root() -> PathBuf {
    // Cargo sets CARGO_MANIFEST_DIR for tests but not always for benches,
    // which run in their package's directory; the compile-time path comes
    // last, as it is stale when the crate was built from another checkout.
    let candidates = [
        std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from),
        std::env::current_dir().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    let workspace = |start: &Path| {
        start
            .ancestors()
            .find(|dir| {
                std::fs::read_to_string(dir.join("Cargo.toml"))
                    .is_ok_and(|toml| toml.contains("[workspace]"))
            })
            .map(Path::to_path_buf)
    };
    candidates
        .iter()
        .flatten()
        .find_map(|start| workspace(start))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `<target dir>/tools`: `$ATTACHE_TOOLS_DIR`, else `$CARGO_TARGET_DIR/tools`,
/// else `<workspace>/target/tools`.
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(TOOLS_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("tools")
}

fn require_path(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} is missing: {} does not exist. Run `cargo xtask tools` \
         (or `cargo xtask test`, which provisions every tool and runs all tests).",
        path.display()
    );
    path
}

/// The path of a pinned tool binary built by `cargo xtask tools`
/// (`kube-apiserver`, `etcd`, `aws_signing_helper`, `helm`, `spire-server`,
/// `spire-agent`, `go-sdk-probe`, `java-sdk-probe`). Panics, failing the
/// test, when it is absent.
pub fn require_tool(name: &str) -> PathBuf {
    require_path(tools_dir().join("bin").join(name), &format!("tool {name}"))
}

/// The Python interpreter of the tools venv (botocore, kubernetes-validate,
/// cfn-lint from tests/requirements.txt). Fails the test when absent.
pub fn require_python() -> PathBuf {
    require_path(
        tools_dir().join("venv/bin/python3"),
        "the tools Python venv (tests/requirements.txt)",
    )
}

/// `tests/sdk-clients` with its `node_modules` installed (`npm ci`); fails the
/// test when `node` or the modules are absent.
pub fn require_node_clients() -> PathBuf {
    let dir = workspace_root().join("tests/sdk-clients");
    require_path(
        dir.join("node_modules/@aws-sdk/client-sts"),
        "the JavaScript SDK (npm ci --prefix tests/sdk-clients)",
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "node is not installed (cargo xtask test installs it)"
    );
    dir
}

/// A `Command` for a tool from [`require_tool`].
pub fn tool_command(name: &str) -> std::process::Command {
    std::process::Command::new(require_tool(name))
}

/// Asserts that every flag of every command of the program `bin` (named
/// `name` in messages) appears in backticks in docs/reference.md.
/// Subcommands are read from each `--help`'s `Commands:` list, so a new one
/// is checked without being named here. Returns the commands checked.
pub fn assert_every_flag_documented(bin: &Path, name: &str) -> Vec<String> {
    let reference = std::fs::read_to_string(workspace_root().join("docs/reference.md"))
        .expect("docs/reference.md");
    let mut checked = Vec::new();
    let mut pending: Vec<Vec<String>> = vec![vec![]];
    while let Some(cmd) = pending.pop() {
        let out = std::process::Command::new(bin)
            .args(&cmd)
            .arg("--help")
            .output()
            .unwrap_or_else(|e| panic!("{name} {} --help: {e}", cmd.join(" ")));
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let subcommands = subcommands(&help);
        let flags = flags(&help);
        assert!(
            !flags.is_empty() || !subcommands.is_empty(),
            "{name} {} --help lists neither flags nor commands:\n{help}",
            cmd.join(" ")
        );
        for f in flags {
            assert!(
                reference.contains(&format!("`{f}`")),
                "{name} {} {f} is not documented in docs/reference.md",
                cmd.join(" ")
            );
        }
        for sub in subcommands {
            pending.push(cmd.iter().cloned().chain([sub]).collect());
        }
        checked.push(cmd.join(" "));
    }
    checked
}

/// The names in a clap `--help`'s `Commands:` list, but `help`.
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The `--long` flags a `--help` defines (its option lines, not flags its
/// descriptions mention), but `--help` and `--version`.
fn flags(help: &str) -> Vec<&str> {
    help.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with('-'))
        // The option's own spelling ends where its description starts.
        .filter_map(|l| l.split("  ").next())
        .flat_map(str::split_whitespace)
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric() && c != '-'))
        .filter(|w| *w != "--help" && *w != "--version")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_fails_with_the_command_that_provides_it() {
        let err = std::panic::catch_unwind(|| require_tool("no-such-tool-attache"))
            .expect_err("a missing tool must fail");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("cargo xtask tools"), "{msg}");
        assert!(msg.contains("no-such-tool-attache"), "{msg}");
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("[workspace]"));
    }
}
