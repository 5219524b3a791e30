//! `cargo xtask image`: builds deploy/Dockerfile offline with buildah, its
//! `build` stage replaced by host-built release binaries and the host's
//! copies of the libraries they load, its `BASE` by a local distroless
//! equivalent, then checks the result (crate docs).

mod base;
mod check;
mod runtime_libs;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize;

use crate::{Paths, run};

/// The binaries the image ships.
const BINARIES: [&str; 2] = ["attache-broker", "attache-sidecar"];
/// How deploy/Dockerfile's `build` stage builds them; the host runs the same.
const CARGO_BUILD: &[&str] = &[
    "build",
    "--release",
    "--locked",
    "-p",
    "attache-broker",
    "-p",
    "attache-sidecar",
];
/// How the round trip's AWS emulator is built: in the default target dir,
/// as one of `cargo xtask test`'s own units (`cargo test --workspace`
/// builds `target/debug/attache-emulator` for the emulator's `binary` test),
/// so after `cargo xtask test` nothing is rebuilt. `cargo build -p
/// attache-emulator` would resolve the dependencies' features for that one
/// package without dev-dependencies, and recompile 108 of its 270 units.
const EMULATOR_BUILD: &[&str] = &["test", "--workspace", "--no-run", "--test", "binary"];
const DOCKERFILE: &str = "deploy/Dockerfile";
const IGNOREFILE: &str = "deploy/Dockerfile.dockerignore";
/// What the Dockerfile's `BASE` defaults to, pinned by digest; the local
/// stand-in below mirrors it.
const BASE_DEFAULT: &str = "gcr.io/distroless/static-debian12:nonroot@sha256:";
/// How the Dockerfile's final stage gets the libraries the binaries load.
const RUNTIME_LIBS_COPY: &str = "COPY --from=build /runtime-libs/ /";
/// The local stand-in for the Dockerfile's `BASE`.
const BASE_IMAGE: &str = "localhost/attache-base:local";
const IMAGE: &str = "localhost/attache:dev";
const OCI_TAG: &str = "dev";
const USER: &str = "65532:65532";
const ENTRYPOINT: &str = "/attache-sidecar";
const PORTS: [&str; 2] = ["8080/tcp", "8443/tcp"];
/// Compressed size budget (sum of the gzip layers), in MB of 10^6 bytes: the
/// goal of issue 17. Measured 11.5 on `static-debian12` plus the four
/// libraries the binaries load (base layer 0.7, binaries and libraries 10.8);
/// 18.7 on `cc-debian12`, whose glibc gconv modules and libssl3 they never
/// load.
const BUDGET_MB: f64 = 15.0;

/// buildah with storage of its own under `<target>/image/buildah` (vfs
/// driver): nothing outside the target directory changes, no daemon runs.
pub struct Buildah {
    dir: PathBuf,
    root: PathBuf,
    runroot: PathBuf,
}

impl Buildah {
    fn new(dir: &Path) -> Self {
        let dir = dir.join("buildah");
        Buildah {
            root: dir.join("root"),
            runroot: dir.join("run"),
            dir,
        }
    }

    /// `buildah --root .. --runroot .. --storage-driver vfs`.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .args(["--storage-driver", "vfs"]);
        cmd
    }

    /// Removes the storage: every run starts from nothing.
    fn reset(&self) -> Result<()> {
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("removing buildah's storage {}", self.dir.display()))?;
        }
        Ok(())
    }
}

/// Times the phases and reports each on stderr.
struct Phases(Instant);

impl Phases {
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.0 = Instant::now();
        let out = f().with_context(|| format!("cargo xtask image: {name}"))?;
        eprintln!(
            "xtask: image phase {name}: {:.1}s",
            self.0.elapsed().as_secs_f64()
        );
        Ok(out)
    }
}

/// The task.
pub fn build_and_check(paths: &Paths) -> Result<()> {
    let start = Instant::now();
    preflight()?;
    let dockerfile = fs::read_to_string(paths.root.join(DOCKERFILE))
        .with_context(|| format!("reading {DOCKERFILE}"))?;
    check_dockerfile(&dockerfile)?;
    let dir = paths.target.join("image");
    let buildah = Buildah::new(&dir);
    let mut phase = Phases(Instant::now());

    phase.run("release build", || {
        show(cargo(paths, CARGO_BUILD).env("CARGO_TARGET_DIR", &dir))
    })?;
    phase.run("emulator build", || show(&mut cargo(paths, EMULATOR_BUILD)))?;
    let context = dir.join("build-stage");
    let libs = stage_build_context(&dir.join("release"), &context)?;
    buildah.reset()?;
    phase.run("base image", || base::build(&buildah, BASE_IMAGE))?;
    phase.run("image build", || {
        show(
            buildah
                .cmd()
                .current_dir(&paths.root)
                .args(["build", "--isolation", "chroot", "--pull=never"])
                .args(["--file", DOCKERFILE, "--ignorefile", IGNOREFILE])
                .arg("--build-context")
                .arg(format!("build={}", context.display()))
                .args(["--build-arg", &format!("BASE={BASE_IMAGE}")])
                .args(["--tag", IMAGE, "."]),
        )
    })?;
    let (user, entrypoint) = phase.run("config checks", || check_config(&buildah))?;
    let uncompressed = phase.run("checks inside the image", || {
        let ctr = check::Container::new(&buildah, IMAGE)?;
        let size = check::rootfs(&ctr, &libs)?;
        check::versions(&ctr)?;
        check::round_trip(&ctr, &paths.target.join("debug/attache-emulator"))?;
        Ok(size)
    })?;
    let oci = dir.join("oci");
    let compressed = phase.run("size", || compressed_size(&buildah, &oci))?;
    let mb = |bytes: u64| bytes as f64 / 1e6;
    println!(
        "image size_mb={:.1} uncompressed_mb={:.1} user={user} entrypoint={entrypoint}",
        mb(compressed),
        mb(uncompressed)
    );
    ensure!(
        mb(compressed) <= BUDGET_MB,
        "the image is {:.1} MB compressed, over its budget of {BUDGET_MB} MB",
        mb(compressed)
    );
    buildah.reset()?;
    eprintln!(
        "xtask: image checked in {:.1}s; OCI layout {}:{OCI_TAG}",
        start.elapsed().as_secs_f64(),
        oci.display()
    );
    Ok(())
}

/// Root, buildah, openssl, dpkg-query and ldd, each with the way to get it.
fn preflight() -> Result<()> {
    let uid = run(Command::new("id").arg("-u")).context("cannot run `id -u`")?;
    ensure!(
        uid.trim() == "0",
        "cargo xtask image needs root (buildah mounts container file systems with the vfs \
         driver and runs them with chroot isolation): run it as root or inside `buildah unshare`"
    );
    for (tool, arg, install) in [
        ("buildah", "--version", "apt-get install -y buildah"),
        ("openssl", "version", "apt-get install -y openssl"),
        ("dpkg-query", "--version", "a Debian or Ubuntu host"),
        ("ldd", "--version", "apt-get install -y libc-bin"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(ok, "cargo xtask image needs {tool}: {install}");
    }
    Ok(())
}

/// The parts of deploy/Dockerfile this task relies on: the `build` stage it
/// replaces, built the way the host builds, a digest-pinned `BASE` that is
/// what the local base mirrors and the final stage starts from, the runtime
/// libraries copied from the `build` stage.
fn check_dockerfile(text: &str) -> Result<()> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let cmd = format!("cargo {}", CARGO_BUILD.join(" "));
    ensure!(
        text.contains(&cmd),
        "{DOCKERFILE} no longer runs `{cmd}`: cargo xtask image builds the image's binaries that \
         way on the host; change both together"
    );
    ensure!(
        lines
            .iter()
            .any(|l| l.starts_with("FROM ") && l.ends_with(" AS build")),
        "{DOCKERFILE} has no stage named `build` (cargo xtask image replaces it with host binaries)"
    );
    ensure!(
        lines.iter().rev().find(|l| l.starts_with("FROM ")) == Some(&"FROM ${BASE}"),
        "{DOCKERFILE}'s final stage must start `FROM ${{BASE}}` (cargo xtask image sets BASE)"
    );
    ensure!(
        lines.contains(&RUNTIME_LIBS_COPY),
        "{DOCKERFILE} has no `{RUNTIME_LIBS_COPY}`: the base has no libc, and cargo xtask image \
         provides the binaries' libraries there"
    );
    let base = lines
        .iter()
        .find_map(|l| l.strip_prefix("ARG BASE="))
        .with_context(|| format!("{DOCKERFILE} has no `ARG BASE=<default base image>`"))?;
    ensure!(
        base.starts_with(BASE_DEFAULT),
        "{DOCKERFILE}'s BASE is {base}, not {BASE_DEFAULT}<digest>: cargo xtask image's local \
         base mirrors that one (xtask/src/image/base.rs); change both together"
    );
    let pulled = lines
        .iter()
        .filter_map(|l| l.strip_prefix("FROM "))
        .filter(|f| !f.starts_with("${"))
        .map(|f| f.split_whitespace().next().unwrap_or(""));
    for image in pulled.chain([base]) {
        ensure!(
            pinned(image),
            "{DOCKERFILE}: {image} is not pinned by digest (<name>:<tag>@sha256:<64 hex>)"
        );
    }
    Ok(())
}

fn pinned(image: &str) -> bool {
    image.split_once("@sha256:").is_some_and(|(name, digest)| {
        name.contains(':')
            && digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

/// `cargo ARGS` in the workspace root.
fn cargo(paths: &Paths, args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(&paths.root).args(args);
    cmd
}

/// Fills `to`, the build context that stands in for the Dockerfile's `build`
/// stage, with what the final stage copies from it: the release binaries and
/// `runtime-libs/`, the host's copies of the libraries they load. Returns
/// those libraries' paths.
fn stage_build_context(release: &Path, to: &Path) -> Result<Vec<PathBuf>> {
    if to.exists() {
        fs::remove_dir_all(to)?;
    }
    fs::create_dir_all(to)?;
    let mut binaries = Vec::new();
    for bin in BINARIES {
        fs::copy(release.join(bin), to.join(bin))
            .with_context(|| format!("copying {}", release.join(bin).display()))?;
        binaries.push(to.join(bin));
    }
    let libs = runtime_libs::resolve(&binaries)?;
    runtime_libs::stage(&libs, &to.join(runtime_libs::DIR))?;
    let shown: Vec<String> = libs.iter().map(|l| l.display().to_string()).collect();
    eprintln!("xtask: image: the binaries load {}", shown.join(" "));
    Ok(libs)
}

/// Runs a command with its stdout shown on stderr (stdout carries only the summary).
fn show(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    ensure!(status.success(), "{shown} failed: {status}");
    Ok(())
}

#[derive(Deserialize)]
struct Inspect {
    #[serde(rename = "OCIv1")]
    oci: OciImage,
}

#[derive(Deserialize)]
struct OciImage {
    config: OciConfig,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OciConfig {
    user: Option<String>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

/// User 65532, entrypoint `/attache-sidecar` with no command (the webhook
/// passes args only), the two ports. Returns (uid, entrypoint).
fn check_config(buildah: &Buildah) -> Result<(String, String)> {
    let out = run(buildah.cmd().args(["inspect", "--type", "image", IMAGE]))?;
    let config = serde_json::from_str::<Inspect>(&out)
        .context("parsing buildah inspect")?
        .oci
        .config;
    let user = config.user.unwrap_or_default();
    ensure!(
        user == USER,
        "the image's user is {user:?}, expected {USER:?}"
    );
    let entrypoint = config.entrypoint.unwrap_or_default();
    ensure!(
        entrypoint == [ENTRYPOINT],
        "the image's entrypoint is {entrypoint:?}, expected [{ENTRYPOINT:?}]"
    );
    let cmd = config.cmd.unwrap_or_default();
    ensure!(
        cmd.is_empty(),
        "the image has a command {cmd:?}: the sidecar takes its arguments from the pod"
    );
    let ports: Vec<String> = config
        .exposed_ports
        .unwrap_or_default()
        .into_keys()
        .collect();
    ensure!(
        ports == PORTS,
        "the image exposes {ports:?}, expected {PORTS:?}"
    );
    let uid = user.split(':').next().unwrap_or_default().to_string();
    Ok((uid, entrypoint.concat()))
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<OciDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OciDescriptor {
    media_type: String,
    digest: String,
    size: u64,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct OciManifest {
    layers: Vec<OciDescriptor>,
}

/// Pushes the image to an OCI layout at `oci` (gzip layers, as a registry
/// stores them) and sums its layers.
fn compressed_size(buildah: &Buildah, oci: &Path) -> Result<u64> {
    if oci.exists() {
        fs::remove_dir_all(oci)?;
    }
    run(buildah
        .cmd()
        .args(["push", "--quiet", "--compression-format", "gzip", IMAGE])
        .arg(format!("oci:{}:{OCI_TAG}", oci.display())))?;
    let blob = |digest: &str| -> Result<String> {
        let hex = digest
            .strip_prefix("sha256:")
            .with_context(|| format!("digest {digest}"))?;
        let path = oci.join("blobs/sha256").join(hex);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let index: OciIndex = serde_json::from_str(&fs::read_to_string(oci.join("index.json"))?)
        .context("parsing the OCI layout's index.json")?;
    let manifest = index
        .manifests
        .iter()
        .find(|m| {
            m.annotations
                .get("org.opencontainers.image.ref.name")
                .is_some_and(|t| t == OCI_TAG)
        })
        .with_context(|| format!("the OCI layout has no manifest tagged {OCI_TAG}"))?;
    let manifest: OciManifest =
        serde_json::from_str(&blob(&manifest.digest)?).context("parsing the image manifest")?;
    let mut total = 0;
    for layer in &manifest.layers {
        if !layer.media_type.ends_with("+gzip") {
            bail!("layer {} is {}, not gzip", layer.digest, layer.media_type);
        }
        total += layer.size;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dockerfile_keeps_what_cargo_xtask_image_replaces_and_pins_its_bases() {
        let paths = Paths::discover().unwrap();
        let text = fs::read_to_string(paths.root.join(DOCKERFILE)).unwrap();
        check_dockerfile(&text).unwrap();
    }

    #[test]
    fn unpinned_or_tag_only_bases_are_refused() {
        let digest = "a".repeat(64);
        assert!(pinned(&format!(
            "gcr.io/distroless/static-debian12:nonroot@sha256:{digest}"
        )));
        assert!(!pinned("gcr.io/distroless/static-debian12:nonroot"));
        assert!(!pinned(&format!("rust:1.95@sha256:{}", "a".repeat(63))));
        assert!(!pinned(&format!("rust:1.95@sha256:{}", "A".repeat(64))));
        let good = fs::read_to_string(Paths::discover().unwrap().root.join(DOCKERFILE)).unwrap();
        let bad = good.replace("@sha256:", "@sha512:");
        assert!(check_dockerfile(&bad).is_err());
        let moved = good.replace(" AS build", " AS compile");
        assert!(check_dockerfile(&moved).is_err());
    }

    #[test]
    fn a_base_the_local_one_does_not_mirror_or_no_runtime_libraries_is_refused() {
        let good = fs::read_to_string(Paths::discover().unwrap().root.join(DOCKERFILE)).unwrap();
        let cc = good.replace(
            "ARG BASE=gcr.io/distroless/static-debian12:",
            "ARG BASE=gcr.io/distroless/cc-debian12:",
        );
        assert_ne!(cc, good);
        let err = check_dockerfile(&cc).unwrap_err().to_string();
        assert!(err.contains("mirrors"), "{err}");
        let no_libs = good.replace(RUNTIME_LIBS_COPY, "");
        assert_ne!(no_libs, good);
        assert!(check_dockerfile(&no_libs).is_err());
    }
}
