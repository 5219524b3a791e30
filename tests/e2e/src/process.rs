//! Child processes that never outlive the test process.
//!
//! Children are started from one long-lived supervisor thread with
//! `PR_SET_PDEATHSIG = SIGKILL` (the signal follows the *thread* that forked,
//! so a short-lived test thread must not be the parent), and an `atexit`
//! handler kills the ones still running and removes the harness's directories
//! when the test binary exits, whether its tests passed or panicked.

use std::io;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type Job = Box<dyn FnOnce() + Send>;

fn supervisor() -> &'static Mutex<mpsc::Sender<Job>> {
    static SUPERVISOR: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    SUPERVISOR.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("e2e-supervisor".into())
            .spawn(move || {
                // The sender lives in a static, so this loop (and the thread,
                // the parent of every child) lasts until the process exits.
                while let Ok(job) = rx.recv() {
                    job();
                }
            })
            .expect("spawn the supervisor thread");
        // SAFETY: `cleanup` is an `extern "C" fn()` that only uses statics.
        unsafe {
            libc::atexit(cleanup);
        }
        Mutex::new(tx)
    })
}

#[derive(Default)]
struct Owned {
    pids: Vec<u32>,
    dirs: Vec<PathBuf>,
}

fn owned() -> &'static Mutex<Owned> {
    static OWNED: OnceLock<Mutex<Owned>> = OnceLock::new();
    OWNED.get_or_init(Mutex::default)
}

extern "C" fn cleanup() {
    let Ok(owned) = owned().lock() else { return };
    for pid in &owned.pids {
        // SAFETY: plain syscall; a pid that already exited is harmless here
        // (it was reaped by `forget`'s caller or is a zombie of ours).
        unsafe {
            libc::kill(*pid as libc::pid_t, libc::SIGKILL);
        }
    }
    for dir in &owned.dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes `dir` when the test process exits.
pub fn remove_at_exit(dir: PathBuf) {
    if let Ok(mut o) = owned().lock() {
        o.dirs.push(dir);
    }
}

/// Spawns `cmd` from the supervisor thread, killed with the test process.
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    let (tx, rx) = mpsc::channel();
    let job: Job = Box::new(move || {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let _ = tx.send(cmd.spawn());
    });
    supervisor()
        .lock()
        .map_err(|_| io::Error::other("supervisor poisoned"))?
        .send(job)
        .map_err(|_| io::Error::other("supervisor gone"))?;
    let child = rx
        .recv()
        .map_err(|_| io::Error::other("supervisor dropped the job"))??;
    if let Ok(mut o) = owned().lock() {
        o.pids.push(child.id());
    }
    Ok(child)
}

/// Resident memory of a process in MiB (VmRSS), if it is still running.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}
