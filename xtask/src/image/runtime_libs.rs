//! The shared libraries the image's binaries load, as `ldd` resolves them:
//! the final stage's base (distroless `static-debian12`) has no libc, so
//! deploy/Dockerfile's `build` stage collects them under `/runtime-libs` at
//! the paths `ldd` printed (links followed) and the final stage copies that
//! tree onto `/`. This module builds the same tree from the host's copies for
//! the build context that stands in for that stage.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};

use crate::run;

/// The directory the Dockerfile's `build` stage fills and its final stage
/// copies onto `/` (`COPY --from=build /runtime-libs/ /`).
pub const DIR: &str = "runtime-libs";

/// The libraries `ldd` lists for `binaries`, each once, sorted: the ones
/// resolved through `=>` and the loader (an absolute path of its own). The
/// vDSO, which the kernel maps, has no file and is left out.
pub fn resolve(binaries: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let out = run(Command::new("ldd").args(binaries))
        .context("`ldd` on the release binaries (package libc-bin)")?;
    parse_ldd(&out)
}

/// Parses `ldd` output for one or more files. Fails on a library `ldd`
/// cannot find: the image would not start.
fn parse_ldd(out: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [name, "=>", "not", "found", ..] => bail!("ldd cannot find {name}: {}", line.trim()),
            [_, "=>", path, ..] if path.starts_with('/') => libs.push(PathBuf::from(path)),
            [path, addr] if path.starts_with('/') && addr.starts_with('(') => {
                libs.push(PathBuf::from(path))
            }
            // A file header (`/attache-broker:`), the vDSO.
            _ => {}
        }
    }
    ensure!(
        !libs.is_empty(),
        "ldd lists no shared library: the binaries are not dynamically linked, \
         or ldd's output changed:\n{out}"
    );
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Copies each of `libs` (host paths, symlinks followed) to the same path
/// below `into`, as the Dockerfile's `build` stage does with `cp -L`.
pub fn stage(libs: &[PathBuf], into: &Path) -> Result<()> {
    for lib in libs {
        let dest = into.join(lib.strip_prefix("/").context("an absolute library path")?);
        fs::create_dir_all(dest.parent().context("a library path has a parent")?)?;
        fs::copy(lib, &dest)
            .with_context(|| format!("copying {} to {}", lib.display(), dest.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ldd /attache-broker /attache-sidecar` in rust:1.95.0-bookworm and on
    /// a Debian 12 host, addresses aside.
    const TWO_BINARIES: &str = "/attache-broker:
\tlinux-vdso.so.1 (0x00007ffd5a1f2000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1c6f1000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0c1c611000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c1c430000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1d1b5000)
/attache-sidecar:
\tlinux-vdso.so.1 (0x00007ffc2d5e4000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f2b0f8d1000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f2b0f7f1000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2b0f610000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f2b0fd3d000)
";

    #[test]
    fn ldd_output_gives_each_library_and_the_loader_once_without_the_vdso() {
        let libs = parse_ldd(TWO_BINARIES).unwrap();
        let want: Vec<PathBuf> = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "/lib/x86_64-linux-gnu/libm.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(libs, want);
    }

    #[test]
    fn a_library_ldd_cannot_find_or_a_static_binary_fails() {
        let missing =
            "\tlibssl.so.3 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n";
        let err = parse_ldd(missing).unwrap_err().to_string();
        assert!(err.contains("libssl.so.3"), "{err}");
        assert!(parse_ldd("\tnot a dynamic executable\n").is_err());
    }

    /// The Dockerfile's `RUN` that fills `/runtime-libs`, as one shell script
    /// (continuation lines joined).
    fn dockerfile_script(dockerfile: &str) -> String {
        let mut script = String::new();
        let mut in_run = false;
        for line in dockerfile.lines() {
            if !in_run && line.starts_with("RUN ") && line.contains(DIR) {
                in_run = true;
            } else if !in_run && line.starts_with("RUN ") {
                continue;
            }
            if in_run {
                let body = line.strip_prefix("RUN ").unwrap_or(line);
                match body.strip_suffix('\\') {
                    Some(rest) => script.push_str(rest),
                    None => {
                        script.push_str(body);
                        break;
                    }
                }
            }
        }
        assert!(
            !script.is_empty(),
            "deploy/Dockerfile has no RUN that fills /{DIR}"
        );
        script
    }

    /// Each entry below `root`: its path, mode, and for a file its size and
    /// a hash of its bytes (short assertion messages).
    fn tree(root: &Path) -> Vec<(PathBuf, u32, u64, u64)> {
        use std::hash::{DefaultHasher, Hash as _, Hasher as _};
        use std::os::unix::fs::PermissionsExt as _;
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let meta = entry.metadata().unwrap();
                let rel = entry.path().strip_prefix(root).unwrap().to_path_buf();
                let mode = meta.permissions().mode();
                if meta.is_dir() {
                    out.push((rel, mode, 0, 0));
                    stack.push(entry.path());
                } else {
                    assert!(meta.is_file(), "{} is not a regular file", rel.display());
                    let mut hasher = DefaultHasher::new();
                    fs::read(entry.path()).unwrap().hash(&mut hasher);
                    out.push((rel, mode, meta.len(), hasher.finish()));
                }
            }
        }
        out.sort();
        out
    }

    /// The Dockerfile's script and this module, run on the same binary on
    /// this host, produce the same tree: what the xtask puts in the build
    /// context is what the Dockerfile's `build` stage makes.
    #[test]
    fn the_dockerfiles_script_and_stage_build_the_same_tree() {
        let root = crate::Paths::discover().unwrap().root;
        let dockerfile = fs::read_to_string(root.join(super::super::DOCKERFILE)).unwrap();
        let script = dockerfile_script(&dockerfile);
        assert!(
            script.contains("ldd /attache-broker /attache-sidecar"),
            "{script}"
        );
        let exe = std::env::current_exe().unwrap();
        let scratch =
            std::env::temp_dir().join(format!("xtask-runtime-libs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&scratch);
        let (from_script, from_xtask) = (scratch.join("script"), scratch.join("xtask"));
        fs::create_dir_all(&scratch).unwrap();
        let script = script
            .replace(&format!("/{DIR}"), from_script.to_str().unwrap())
            .replace(
                "ldd /attache-broker /attache-sidecar",
                &format!("ldd {0} {0}", exe.display()),
            );
        let status = Command::new("sh")
            .args(["-c", &script])
            .current_dir(&scratch)
            .status()
            .unwrap();
        assert!(status.success(), "the Dockerfile's script failed: {script}");

        let libs = resolve(&[exe.clone(), exe]).unwrap();
        stage(&libs, &from_xtask).unwrap();
        assert_eq!(tree(&from_script), tree(&from_xtask));
        assert!(tree(&from_xtask).len() >= 2 + libs.len());
        fs::remove_dir_all(&scratch).unwrap();
    }
}
