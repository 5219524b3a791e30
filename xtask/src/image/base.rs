//! The local stand-in for deploy/Dockerfile's `BASE`
//! (`gcr.io/distroless/static-debian12:nonroot`), which cannot be pulled
//! offline: the same Debian packages distroless puts in `static-debian12`,
//! copied from the host's installation (`dpkg-query -L`), plus what
//! distroless generates (CA bundle, passwd/group with `nonroot` 65532,
//! nsswitch.conf, /tmp) and its image config (user 65532, workdir
//! /home/nonroot). No libc, no shell: none of these packages ships one.

use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown, symlink};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};

use super::Buildah;
use crate::run;

/// distroless `static-debian12`'s packages (its `base` and `cc` images add
/// libc6, libssl3, libgcc-s1, libgomp1, libstdc++6; the Dockerfile copies
/// only the libraries the binaries load instead). ca-certificates
/// contributes only its generated bundle.
const PACKAGES: &[&str] = &["base-files", "netbase", "tzdata"];

/// The host's CA bundle (package ca-certificates), as distroless ships it.
const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// The uid and gid of `nonroot` in distroless images.
pub const NONROOT: u32 = 65532;

/// Generated files, as distroless writes them (`base/passwd`, `base/group`,
/// `base/nsswitch.conf` in GoogleContainerTools/distroless).
const FILES: &[(&str, &str)] = &[
    (
        "etc/passwd",
        "root:x:0:0:root:/root:/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
         nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n",
    ),
    (
        "etc/group",
        "root:x:0:\nnobody:x:65534:\ntty:x:5:\nstaff:x:50:\nnonroot:x:65532:\n",
    ),
    (
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n\
         protocols: files\nservices: files\nethers: files\nrpc: files\n",
    ),
];

/// Builds `image` from the host's packages into buildah's storage.
pub fn build(buildah: &Buildah, image: &str) -> Result<()> {
    let ctr = run(buildah.cmd().args(["from", "scratch"]))?
        .trim()
        .to_string();
    let rootfs = PathBuf::from(run(buildah.cmd().args(["mount", &ctr]))?.trim());
    let skipped = fill(&rootfs).with_context(|| {
        format!(
            "making the local base's root file system in {}",
            rootfs.display()
        )
    })?;
    if skipped > 0 {
        eprintln!(
            "xtask: base: {skipped} packaged paths absent on this host (dpkg path excludes), left out"
        );
    }
    run(buildah.cmd().args([
        "config",
        "--user",
        &format!("{NONROOT}:{NONROOT}"),
        "--workingdir",
        "/home/nonroot",
        "--env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--env",
        "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
        &ctr,
    ]))?;
    run(buildah.cmd().args(["commit", "--quiet", &ctr, image]))?;
    run(buildah.cmd().args(["rm", &ctr]))?;
    Ok(())
}

/// Copies the packages' files into `rootfs` and writes the generated ones.
/// Returns how many packaged paths the host does not have.
fn fill(rootfs: &Path) -> Result<usize> {
    let rootfs = rootfs.canonicalize()?;
    let mut skipped = 0;
    for package in PACKAGES {
        let list = run(std::process::Command::new("dpkg-query").args(["-L", package]))
            .with_context(|| {
                format!(
                    "listing Debian package {package} (install it: apt-get install -y {package})"
                )
            })?;
        for line in list.lines().filter(|l| l.starts_with('/') && *l != "/.") {
            if !copy_path(&rootfs, Path::new(line))
                .with_context(|| format!("copying {line} of package {package}"))?
            {
                skipped += 1;
            }
        }
    }
    let bundle = Path::new("/").join(CA_BUNDLE);
    ensure!(
        fs::read_to_string(&bundle).is_ok_and(|b| b.contains("BEGIN CERTIFICATE")),
        "{} is missing or holds no certificate: apt-get install -y ca-certificates",
        bundle.display()
    );
    copy_path(&rootfs, &bundle)?;
    for (path, text) in FILES {
        let dest = inside(&rootfs, Path::new(path))?;
        fs::write(&dest, text).with_context(|| format!("writing {}", dest.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o644))?;
    }
    for (dir, mode, owner) in [("tmp", 0o1777, 0), ("home/nonroot", 0o700, NONROOT)] {
        let dest = inside(&rootfs, Path::new(dir))?;
        fs::create_dir_all(&dest)?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        chown(&dest, Some(owner), Some(owner))?;
    }
    Ok(skipped)
}

/// Recreates host path `path` (a file, directory or symlink) inside `rootfs`.
/// Returns false when the host does not have it.
fn copy_path(rootfs: &Path, path: &Path) -> Result<bool> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let rel = path.strip_prefix("/")?;
    let dest = inside(rootfs, rel)?;
    if fs::symlink_metadata(&dest).is_ok() {
        // Already there: a directory two packages share, or one reached
        // through a usrmerge symlink (/lib -> usr/lib).
        return Ok(true);
    }
    let kind = meta.file_type();
    if kind.is_symlink() {
        if path.is_dir() {
            // A directory symlink (usrmerge's /lib -> usr/lib): its target must
            // exist for the paths below it to be written through it.
            let target = path.canonicalize()?;
            fs::create_dir_all(inside(rootfs, target.strip_prefix("/")?)?)?;
        }
        symlink(fs::read_link(path)?, &dest)?;
    } else if kind.is_dir() {
        fs::create_dir(&dest)?;
        fs::set_permissions(&dest, meta.permissions())?;
    } else if kind.is_file() {
        fs::copy(path, &dest)?;
    } else {
        bail!(
            "{} is neither a file, a directory nor a symlink",
            path.display()
        );
    }
    Ok(true)
}

/// `rootfs/rel` with its parent directories created; fails if a symlink on the
/// way would lead the write outside `rootfs` (an absolute directory symlink).
fn inside(rootfs: &Path, rel: &Path) -> Result<PathBuf> {
    let dest = rootfs.join(rel);
    let parent = dest.parent().context("a path inside the root")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    ensure!(
        parent.canonicalize()?.starts_with(rootfs),
        "{} resolves outside the image root {}",
        parent.display(),
        rootfs.display()
    );
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-image-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    #[test]
    fn files_below_a_usrmerge_symlink_land_in_its_target_inside_the_root() {
        let host = scratch("host");
        fs::create_dir_all(host.join("usr/lib")).unwrap();
        fs::write(host.join("usr/lib/libx.so"), "x").unwrap();
        symlink("usr/lib", host.join("lib")).unwrap();
        let rootfs = scratch("rootfs");
        // dpkg lists the symlinked directory before the files below it.
        for path in [host.join("lib"), host.join("lib/libx.so")] {
            assert!(copy_path(&rootfs, &path).unwrap());
        }
        let inner = rootfs.join(host.strip_prefix("/").unwrap());
        assert_eq!(
            fs::read_link(inner.join("lib")).unwrap(),
            Path::new("usr/lib")
        );
        assert_eq!(
            fs::read_to_string(inner.join("usr/lib/libx.so")).unwrap(),
            "x"
        );
        assert!(!copy_path(&rootfs, &host.join("absent")).unwrap());
        fs::remove_dir_all(&host).unwrap();
        fs::remove_dir_all(&rootfs).unwrap();
    }

    #[test]
    fn a_write_through_an_absolute_symlink_out_of_the_root_is_refused() {
        let rootfs = scratch("escape");
        let outside = scratch("outside");
        symlink(&outside, rootfs.join("etc")).unwrap();
        let err = inside(&rootfs, Path::new("etc/passwd")).unwrap_err();
        assert!(
            format!("{err:#}").contains("outside the image root"),
            "{err:#}"
        );
        fs::remove_dir_all(&rootfs).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }
}
