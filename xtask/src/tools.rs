//! `cargo xtask tools`: builds every pinned external program the tests drive
//! (tests/tools.toml) with its own package manager into `<target>/tools/bin`,
//! and provisions the Python venv and the JavaScript SDK clients.
//!
//! Each build is cached: a stamp file records the pin and a hash of the
//! sources it was built from, and a tool whose stamp matches and whose binary
//! exists is skipped.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::{Paths, run};

/// tests/tools.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsFile {
    #[serde(default)]
    go: BTreeMap<String, GoTool>,
    #[serde(default)]
    java: BTreeMap<String, JavaTool>,
}

/// A Go program: either `package` from the pinned `module@version`, or our
/// own source directory with pinned requirements.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct GoTool {
    module: Option<String>,
    version: Option<String>,
    package: Option<String>,
    #[serde(default)]
    k8s_staging: bool,
    source: Option<String>,
    #[serde(default)]
    requires: BTreeMap<String, String>,
    /// Built only when named or by `cargo xtask tools` (no test needs it yet).
    #[serde(default)]
    on_demand: bool,
}

/// A Maven project of ours run with `java -cp`.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct JavaTool {
    source: String,
    aws_sdk_bom: String,
}

impl ToolsFile {
    pub fn load(paths: &Paths) -> Result<Self> {
        let file = paths.root.join("tests/tools.toml");
        let text =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))
    }

    /// Every tool name, Go and Java.
    pub fn names(&self) -> Vec<String> {
        self.go.keys().chain(self.java.keys()).cloned().collect()
    }
}

/// Which tools [`provision`] builds.
pub enum Selection<'a> {
    /// Every tool, on-demand ones included (`cargo xtask tools`).
    All,
    /// What the tests need (`cargo xtask test`).
    ForTests,
    /// These names only.
    Named(&'a [String]),
}

/// Builds the selected tools, the venv and the npm clients.
pub fn provision(paths: &Paths, selection: Selection<'_>) -> Result<()> {
    let only: &[String] = match selection {
        Selection::Named(names) => names,
        _ => &[],
    };
    let for_tests = matches!(selection, Selection::ForTests);
    let file = ToolsFile::load(paths)?;
    for name in only {
        ensure!(
            file.names().contains(name) || name == "python" || name == "node",
            "unknown tool {name:?}: tests/tools.toml has {:?} (plus python, node)",
            file.names()
        );
    }
    let wanted = |name: &str| only.is_empty() || only.iter().any(|n| n == name);
    fs::create_dir_all(paths.tools.join("bin"))?;
    fs::create_dir_all(paths.tools.join("stamps"))?;
    if wanted("python") {
        phase(paths, "python", python_venv)?;
    }
    if wanted("node") {
        phase(paths, "node", npm_clients)?;
    }
    for (name, tool) in &file.go {
        if wanted(name) && !(for_tests && tool.on_demand) {
            phase(paths, name, |p| build_go(p, name, tool))?;
        }
    }
    for (name, tool) in &file.java {
        if wanted(name) {
            phase(paths, name, |p| build_java(p, name, tool))?;
        }
    }
    Ok(())
}

fn phase(paths: &Paths, name: &str, f: impl FnOnce(&Paths) -> Result<Built>) -> Result<()> {
    let start = Instant::now();
    let built = f(paths).with_context(|| format!("provisioning {name}"))?;
    let verb = match built {
        Built::Cached => "up to date",
        Built::Fresh => "built",
    };
    eprintln!(
        "xtask: tool {name}: {verb} in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

enum Built {
    Cached,
    Fresh,
}

/// A stamp: the spec and source hash a tool was built from.
struct Stamp {
    path: PathBuf,
    want: String,
}

impl Stamp {
    fn new(paths: &Paths, name: &str, spec: &impl Serialize, sources: &[PathBuf]) -> Result<Self> {
        let mut want = serde_json::to_string(spec)?;
        want.push_str(&format!("\nsources={:016x}", hash_files(sources)?));
        Ok(Stamp {
            path: paths.tools.join("stamps").join(name),
            want,
        })
    }

    fn fresh(&self, outputs: &[PathBuf]) -> bool {
        outputs.iter().all(|o| o.exists())
            && fs::read_to_string(&self.path).is_ok_and(|have| have == self.want)
    }

    fn write(&self) -> Result<()> {
        fs::write(&self.path, &self.want)?;
        Ok(())
    }
}

/// FNV-1a over the files' names and bytes, in order (stable across Rust versions).
fn hash_files(files: &[PathBuf]) -> Result<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for f in files {
        eat(f.to_string_lossy().as_bytes());
        eat(&fs::read(f).with_context(|| format!("reading {}", f.display()))?);
    }
    Ok(h)
}

/// Files below `dir` (recursively, sorted), skipping build output.
fn source_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default();
            if name == "target" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn go() -> std::process::Command {
    let mut cmd = std::process::Command::new("go");
    // Use the machine's Go; never fetch another toolchain.
    cmd.env("GOTOOLCHAIN", "local").env("GOFLAGS", "-mod=mod");
    cmd
}

fn build_go(paths: &Paths, name: &str, tool: &GoTool) -> Result<Built> {
    let out = paths.tools.join("bin").join(name);
    let sources = match &tool.source {
        Some(src) => source_files(&paths.root.join(src))?,
        None => Vec::new(),
    };
    let stamp = Stamp::new(paths, name, tool, &sources)?;
    if stamp.fresh(std::slice::from_ref(&out)) {
        return Ok(Built::Cached);
    }
    let work = paths.tools.join("build").join(name);
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let package = match (&tool.source, &tool.module, &tool.version, &tool.package) {
        (Some(src), None, None, None) => {
            let src = paths.root.join(src);
            for f in &sources {
                let rel = f.strip_prefix(&src)?;
                let dest = work.join(rel);
                fs::create_dir_all(dest.parent().unwrap_or(&work))?;
                fs::copy(f, &dest)?;
            }
            for (module, version) in &tool.requires {
                run(go()
                    .current_dir(&work)
                    .args(["get", &format!("{module}@{version}")]))?;
            }
            ".".to_string()
        }
        (None, Some(module), Some(version), Some(package)) => {
            let mut gomod = format!(
                "// Generated by cargo xtask tools.\nmodule attache.dev/tools/{name}\n\ngo 1.26.0\n"
            );
            if tool.k8s_staging {
                gomod.push_str(&k8s_staging_replaces(module, version)?);
            }
            fs::write(work.join("go.mod"), gomod)?;
            run(go()
                .current_dir(&work)
                .args(["get", "-tool", &format!("{package}@{version}")]))?;
            package.clone()
        }
        _ => bail!(
            "tests/tools.toml [go.{name}] needs either `source` or all of `module`, `version`, `package`"
        ),
    };
    let mut ldflags = "-s -w".to_string();
    if tool.k8s_staging
        && let Some(version) = &tool.version
    {
        let (major, minor) = major_minor(version)?;
        ldflags.push_str(&format!(
            " -X k8s.io/component-base/version.gitVersion={version} \
             -X k8s.io/component-base/version.gitMajor={major} \
             -X k8s.io/component-base/version.gitMinor={minor}"
        ));
    }
    run(go().current_dir(&work).args([
        "build",
        "-trimpath",
        &format!("-ldflags={ldflags}"),
        "-o",
        &out.to_string_lossy(),
        &package,
    ]))?;
    stamp.write()?;
    Ok(Built::Fresh)
}

fn major_minor(version: &str) -> Result<(String, String)> {
    let mut parts = version.trim_start_matches('v').split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(major), Some(minor), Some(_)) => Ok((major.to_string(), minor.to_string())),
        _ => bail!("version {version:?} is not vMAJOR.MINOR.PATCH"),
    }
}

/// `replace` lines mapping every staging module k8s.io/kubernetes@version
/// replaces with `./staging/...` to its published `v0.<minor>.<patch>`.
fn k8s_staging_replaces(module: &str, version: &str) -> Result<String> {
    let out = run(go().args(["mod", "download", "-json", &format!("{module}@{version}")]))?;
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Download {
        go_mod: PathBuf,
    }
    let download: Download = serde_json::from_str(&out).context("go mod download -json")?;
    let upstream = fs::read_to_string(&download.go_mod)?;
    let (_, minor) = major_minor(version)?;
    let patch = version.rsplit('.').next().unwrap_or("0");
    let staged = format!("v0.{minor}.{patch}");
    let mut replaces = String::from("\nreplace (\n");
    let mut count = 0;
    for line in upstream.lines() {
        let line = line.trim();
        if let Some((from, to)) = line.split_once("=>")
            && to.trim().starts_with("./staging/")
        {
            let from = from.trim();
            replaces.push_str(&format!("\t{from} => {from} {staged}\n"));
            count += 1;
        }
    }
    ensure!(
        count > 0,
        "{module}@{version}'s go.mod replaces no staging modules"
    );
    replaces.push_str(")\n");
    Ok(replaces)
}

fn build_java(paths: &Paths, name: &str, tool: &JavaTool) -> Result<Built> {
    let src = paths.root.join(&tool.source);
    let sources = source_files(&src)?;
    let stamp = Stamp::new(paths, name, tool, &sources)?;
    let bin = paths.tools.join("bin").join(name);
    let lib = paths.tools.join(name).join("lib");
    if stamp.fresh(&[bin.clone(), lib.clone()]) {
        return Ok(Built::Cached);
    }
    let work = paths.tools.join("build").join(name);
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    for f in &sources {
        let dest = work.join(f.strip_prefix(&src)?);
        fs::create_dir_all(dest.parent().unwrap_or(&work))?;
        fs::copy(f, &dest)?;
    }
    run(std::process::Command::new("mvn").current_dir(&work).args([
        "-B",
        "-q",
        "package",
        &format!("-Daws.sdk.bom.version={}", tool.aws_sdk_bom),
    ]))?;
    if lib.exists() {
        fs::remove_dir_all(&lib)?;
    }
    fs::create_dir_all(&lib)?;
    let target = work.join("target");
    let mut jars = vec![target.join(format!("{name}.jar"))];
    for entry in fs::read_dir(target.join("dependency"))? {
        jars.push(entry?.path());
    }
    for jar in jars
        .iter()
        .filter(|j| j.extension().is_some_and(|e| e == "jar"))
    {
        fs::copy(jar, lib.join(jar.file_name().unwrap_or_default()))?;
    }
    let main_class = java_main_class(&work.join("pom.xml"))?;
    fs::write(
        &bin,
        format!(
            "#!/bin/sh\n# Generated by cargo xtask tools.\nexec java -cp \"$(dirname \"$0\")/../{name}/lib/*\" {main_class} \"$@\"\n"
        ),
    )?;
    make_executable(&bin)?;
    stamp.write()?;
    Ok(Built::Fresh)
}

/// The `<mainClass>` a Maven project declares (as its manifest's Main-Class).
fn java_main_class(pom: &Path) -> Result<String> {
    let text = fs::read_to_string(pom)?;
    let start = text
        .find("<mainClass>")
        .context("pom.xml names no <mainClass>")?
        + "<mainClass>".len();
    let end = text[start..]
        .find("</mainClass>")
        .context("unterminated <mainClass>")?;
    Ok(text[start..start + end].trim().to_string())
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn python_venv(paths: &Paths) -> Result<Built> {
    let reqs = paths.root.join("tests/requirements.txt");
    let venv = paths.tools.join("venv");
    let python = venv.join("bin/python3");
    let stamp = Stamp::new(paths, "python", &"venv", std::slice::from_ref(&reqs))?;
    if stamp.fresh(std::slice::from_ref(&python)) {
        return Ok(Built::Cached);
    }
    if !python.exists() {
        run(std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv))?;
    }
    run(std::process::Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&reqs))?;
    stamp.write()?;
    Ok(Built::Fresh)
}

fn npm_clients(paths: &Paths) -> Result<Built> {
    let dir = paths.root.join("tests/sdk-clients");
    let lock = dir.join("package-lock.json");
    let stamp = Stamp::new(paths, "node", &"npm ci", &[lock])?;
    if stamp.fresh(&[dir.join("node_modules")]) {
        return Ok(Built::Cached);
    }
    run(std::process::Command::new("npm")
        .args([
            "ci",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&dir))?;
    stamp.write()?;
    Ok(Built::Fresh)
}
