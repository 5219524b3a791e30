//! What `cargo xtask image` checks inside the built image: its root file
//! system (no shell, CA bundle, user 65532, the binaries, exactly the shared
//! libraries they load), both binaries' `--version`, and a credentials round
//! trip run by the image's own binaries (`attache-broker ca init` / `ca
//! issue`, then `attache-sidecar credential-process` against the AWS emulator
//! on host loopback over HTTPS).

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::{BufRead as _, BufReader, Lines};
use std::os::unix::fs::{MetadataExt as _, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize;

use super::base::NONROOT;
use super::{BINARIES, Buildah};
use crate::run;

/// Shells and shell providers that must not be in the image.
const SHELLS: &[&str] = &[
    "bin/sh",
    "bin/bash",
    "bin/dash",
    "bin/ash",
    "bin/busybox",
    "usr/bin/sh",
    "usr/bin/bash",
    "usr/bin/dash",
    "usr/bin/busybox",
    "busybox/sh",
];

const REGION: &str = "us-east-1";
const ANCHOR: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/image-check";
const PROFILE: &str = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/image-check";
const ROLE: &str = "arn:aws:iam::123456789012:role/image-check";
const NAMESPACE: &str = "image-check";
const SERVICE_ACCOUNT: &str = "sidecar";
/// Inside the container; written by the host through the mounted root.
const WORK: &str = "/tmp/attache-image-check";

/// A working container of the image, mounted; removed on drop.
pub struct Container<'a> {
    buildah: &'a Buildah,
    name: String,
    /// Its root file system, on the host.
    rootfs: PathBuf,
}

impl<'a> Container<'a> {
    pub fn new(buildah: &'a Buildah, image: &str) -> Result<Self> {
        let name = run(buildah.cmd().args(["from", "--pull=never", image]))?
            .trim()
            .to_string();
        let mut ctr = Container {
            buildah,
            name,
            rootfs: PathBuf::new(),
        };
        ctr.rootfs = PathBuf::from(run(buildah.cmd().args(["mount", &ctr.name]))?.trim());
        Ok(ctr)
    }

    /// Runs `args` in the container as the image's user (chroot isolation,
    /// the host's network); returns stdout.
    fn exec(&self, args: &[&str]) -> Result<String> {
        run(self
            .buildah
            .cmd()
            .args(["run", "--isolation", "chroot", &self.name, "--"])
            .args(args))
        .with_context(|| format!("running {args:?} inside the image"))
    }

    /// `path` (absolute inside the container) on the host.
    fn host(&self, path: &str) -> PathBuf {
        self.rootfs.join(path.trim_start_matches('/'))
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .buildah
            .cmd()
            .args(["rm", &self.name])
            .stdout(Stdio::null())
            .status();
    }
}

/// No shell, the CA bundle, `nonroot` 65532 in /etc/passwd, both binaries
/// root-owned and executable, the shared libraries they load (`libs`, paths
/// as `ldd` resolved them) at those paths and no other shared object.
/// Returns the root's size in bytes (regular files, each inode once).
pub fn rootfs(ctr: &Container, libs: &[PathBuf]) -> Result<u64> {
    let root = &ctr.rootfs;
    for shell in SHELLS {
        ensure!(
            fs::symlink_metadata(root.join(shell)).is_err(),
            "the image has /{shell}: it must ship no shell"
        );
    }
    let bundle = fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt"))
        .context("the image has no /etc/ssl/certs/ca-certificates.crt")?;
    let certs = bundle.matches("-----BEGIN CERTIFICATE-----").count();
    ensure!(
        certs >= 10,
        "/etc/ssl/certs/ca-certificates.crt holds {certs} certificates"
    );
    let passwd =
        fs::read_to_string(root.join("etc/passwd")).context("the image has no /etc/passwd")?;
    ensure!(
        passwd
            .lines()
            .any(|l| l.split(':').nth(2) == Some(&NONROOT.to_string())),
        "/etc/passwd has no user {NONROOT}"
    );
    for bin in BINARIES {
        let meta =
            fs::metadata(root.join(bin)).with_context(|| format!("the image has no /{bin}"))?;
        ensure!(
            meta.is_file() && meta.uid() == 0 && meta.mode() & 0o7777 == 0o755,
            "/{bin} must be a root-owned 0755 file (uid {}, mode {:o})",
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    let mut want = BTreeSet::new();
    for lib in libs {
        let rel = lib.strip_prefix("/").context("an absolute library path")?;
        ensure!(
            fs::metadata(root.join(rel)).is_ok_and(|m| m.is_file()),
            "the image has no {} (the binaries load it)",
            lib.display()
        );
        want.insert(file_name(lib));
    }
    let (size, shared) = walk(root)?;
    let have: BTreeSet<String> = shared.iter().map(|p| file_name(p)).collect();
    ensure!(
        have == want,
        "the image's shared objects are {shared:?}, expected only what the binaries load: {want:?}"
    );
    Ok(size)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Whether `name` is a shared object's: `*.so` or `*.so.<version>`.
fn is_shared_object(name: &str) -> bool {
    name.ends_with(".so") || name.contains(".so.")
}

/// The size of the tree below `root` (regular files, each inode once) and
/// its shared objects (files or symlinks, paths relative to `root`). Does
/// not follow symlinks.
fn walk(root: &Path) -> Result<(u64, Vec<PathBuf>)> {
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut shared = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            if is_shared_object(&entry.file_name().to_string_lossy()) {
                shared.push(entry.path().strip_prefix(root)?.to_path_buf());
            }
            if meta.is_file() && seen.insert(meta.ino()) {
                total += meta.len();
            }
        }
    }
    shared.sort();
    Ok((total, shared))
}

/// Each binary's `--version`, run inside the image, is `<name> <version>`.
pub fn versions(ctr: &Container) -> Result<()> {
    for bin in BINARIES {
        let out = ctr.exec(&[&format!("/{bin}"), "--version"])?;
        let want = format!("{bin} {}", env!("CARGO_PKG_VERSION"));
        ensure!(
            out.trim() == want,
            "/{bin} --version inside the image printed {:?}, expected {want:?}",
            out.trim()
        );
    }
    Ok(())
}

/// The credentials round trip, with the image's binaries doing the work.
/// A P-256 key and CSR in `work`, as a workload would make them, owned by
/// the image's user.
fn make_key_and_csr(work: &Path) -> Result<()> {
    // A P-256 key and CSR, as a workload would make them.
    let openssl = Command::new("openssl")
        .current_dir(work)
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-keyout",
            "leaf-key.pem",
            "-subj",
            "/CN=image-check",
        ])
        .args(["-out", "leaf.csr"])
        .stdin(Stdio::null())
        .output()
        .context("cannot start openssl")?;
    ensure!(
        openssl.status.success(),
        "openssl req (the round trip's key and CSR) failed: {}\n{}",
        openssl.status,
        String::from_utf8_lossy(&openssl.stderr)
    );
    for path in [work, &work.join("leaf-key.pem"), &work.join("leaf.csr")] {
        chown(path, Some(NONROOT), Some(NONROOT))?;
    }
    Ok(())
}

/// `attache-broker ca init` and `ca issue` inside the image: a CA, then the
/// workload's certificate; the files are written as the image's user.
fn issue_in_image(ctr: &Container) -> Result<()> {
    let ca = format!("{WORK}/ca");
    ctr.exec(&["/attache-broker", "ca", "init", "--dir", &ca])?;
    // Whoever wrote the key is who the image runs as.
    let key = fs::metadata(ctr.host(&format!("{ca}/ca-key.pem")))
        .context("attache-broker ca init inside the image wrote no ca-key.pem")?;
    ensure!(
        (key.uid(), key.gid()) == (NONROOT, NONROOT),
        "processes in the image run as uid {} gid {}, expected {NONROOT}",
        key.uid(),
        key.gid()
    );
    ctr.exec(&[
        "/attache-broker",
        "ca",
        "issue",
        "--dir",
        &ca,
        "--csr",
        &format!("{WORK}/leaf.csr"),
        "--namespace",
        NAMESPACE,
        "--service-account",
        SERVICE_ACCOUNT,
        "--out",
        &format!("{WORK}/leaf.pem"),
    ])?;

    Ok(())
}

pub fn round_trip(ctr: &Container, emulator_bin: &Path) -> Result<()> {
    let work = ctr.host(WORK);
    fs::create_dir_all(&work)?;
    make_key_and_csr(&work)?;
    issue_in_image(ctr)?;
    let config = work.join("emulator.toml");
    fs::write(&config, emulator_config())?;
    let tls_ca = work.join("emulator-ca.pem");
    let emulator = Emulator::start(emulator_bin, &config, &tls_ca)?;
    let out = ctr.exec(&[
        "/attache-sidecar",
        "credential-process",
        "--region",
        REGION,
        "--profile-arn",
        PROFILE,
        "--role-arn",
        ROLE,
        "--trust-anchor-arn",
        ANCHOR,
        "--endpoint",
        &emulator.url,
        "--endpoint-ca-bundle",
        &format!("{WORK}/emulator-ca.pem"),
        "--certificate",
        &format!("{WORK}/leaf.pem"),
        "--private-key",
        &format!("{WORK}/leaf-key.pem"),
        "--log-format",
        "text",
    ])?;
    drop(emulator);
    check_credential_process(&out)
}

/// The `credential_process` document AWS SDKs read. Never printed: it holds
/// the secret key and session token.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialProcess {
    version: u32,
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

fn check_credential_process(out: &str) -> Result<()> {
    let doc: CredentialProcess = serde_json::from_str(out.trim()).map_err(|e| {
        // serde_json's message has a position only, never the input.
        anyhow::anyhow!(
            "credential-process inside the image printed no credential_process document: {e}"
        )
    })?;
    ensure!(
        doc.version == 1,
        "credential-process Version {}",
        doc.version
    );
    ensure!(
        doc.access_key_id.starts_with("ASIA") && doc.access_key_id.len() == 20,
        "credential-process AccessKeyId {:?} is not an emulator session key",
        doc.access_key_id
    );
    ensure!(
        doc.secret_access_key.len() == 40 && !doc.session_token.is_empty(),
        "credential-process returned an empty or malformed secret key or session token"
    );
    ensure!(
        doc.expiration.ends_with('Z') || doc.expiration.contains('+'),
        "credential-process Expiration {:?} is not RFC 3339",
        doc.expiration
    );
    Ok(())
}

/// The emulator's config for the round trip: `tests/emulator/one-role.toml`
/// filled in with the image check's anchor, profile, role and SPIFFE ID.
fn emulator_config() -> String {
    let spiffe_id = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{SERVICE_ACCOUNT}");
    let mut config = String::from("# Written by cargo xtask image.\n");
    config += &include_str!("../../../tests/emulator/one-role.toml")
        .replace("{region}", REGION)
        .replace("{account}", "123456789012")
        .replace("{trust_anchor_arn}", ANCHOR)
        .replace("{ca_bundle_file}", "ca/ca.pem")
        .replace("{profile_arn}", PROFILE)
        .replace("{role_arn}", ROLE)
        .replace("{spiffe_id}", &spiffe_id);
    config
}

/// The emulator on host loopback over HTTPS; killed on drop.
struct Emulator {
    child: Child,
    url: String,
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl Emulator {
    fn start(bin: &Path, config: &Path, tls_ca_out: &Path) -> Result<Self> {
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--tls", "--tls-ca-out"])
            .arg(tls_ca_out)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("emulator stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            match lines.next() {
                Some(line) => {
                    if let Some(url) = line?.strip_prefix("url: ") {
                        break url.to_string();
                    }
                }
                None => {
                    let status = child.wait()?;
                    bail!("attache-emulator exited ({status}) before printing its url");
                }
            }
        };
        ensure!(
            url.starts_with("https://127.0.0.1:"),
            "attache-emulator serves {url}, expected https on 127.0.0.1"
        );
        Ok(Emulator {
            child,
            url,
            _stdout: lines,
        })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_objects_are_told_by_name() {
        for name in [
            "libc.so.6",
            "ld-linux-x86-64.so.2",
            "libgcc_s.so.1",
            "gconv.so",
        ] {
            assert!(is_shared_object(name), "{name}");
        }
        for name in [
            "ca-certificates.crt",
            "os-release",
            "attache-broker",
            "solo",
        ] {
            assert!(!is_shared_object(name), "{name}");
        }
    }

    #[test]
    fn a_credential_process_document_passes_and_a_bad_one_fails_without_echoing_it() {
        let good = r#"{"Version":1,"AccessKeyId":"ASIAAAAAAAAAAAAAAAAA","SecretAccessKey":"0123456789012345678901234567890123456789","SessionToken":"tok","Expiration":"2030-01-01T00:00:00Z"}"#;
        check_credential_process(good).unwrap();
        let secret =
            r#"{"Version":1,"AccessKeyId":"ASIAAAAAAAAAAAAAAAAA","SecretAccessKey":"s3cr3t-value""#;
        let err = format!("{:#}", check_credential_process(secret).unwrap_err());
        assert!(!err.contains("s3cr3t"), "{err}");
    }
}
