//! The sidecar process cannot be read by other processes of its UID: it makes
//! itself non-dumpable before anything else, so an app container sharing the
//! pod's process namespace cannot open `/proc/<pid>/mem`, `environ` or `root`
//! (the kernel then owns those files as root) to take the key or the token.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_process_is_not_dumpable() {
    let w = World::new().await;
    // Readable by the unprivileged user the sidecar runs as here.
    for p in [w.dir.path(), &w.cert, &w.key] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // An endpoint that accepts and never answers keeps the process waiting.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let mut args = w.sidecar_args("credential-process");
    set_flag(&mut args, "--endpoint", &endpoint);
    let nobody = 65534;
    let mut child = Command::new(env!("CARGO_BIN_EXE_attache-sidecar"))
        .args(&args)
        .uid(nobody)
        .gid(nobody)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _held = tokio::time::timeout(Duration::from_secs(10), silent.accept())
        .await
        .expect("the sidecar connected")
        .unwrap();
    let environ = std::fs::metadata(format!("/proc/{}/environ", child.id())).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&nobody.to_string())),
        "the sidecar ran as {nobody}: {status}"
    );
    assert_eq!(
        environ.uid(),
        0,
        "a dumpable process's /proc files belong to its own UID ({nobody}); a non-dumpable one's to root"
    );
}
