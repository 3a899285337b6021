//! Starting processes from the master: workers (fork + exec of this binary, never a bare fork:
//! the master has threads) and the throwaway `check-plugin` probe.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nix::unistd::Pid;

use crate::config::WorkerSpec;
use crate::ctl::{MasterChannel, ToWorker, PROTOCOL};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("could not find the host binary to exec: {0}")]
    Exe(std::io::Error),
    #[error("could not start a worker process: {0}")]
    Spawn(std::io::Error),
    #[error("could not send the worker its spec: {0}")]
    Spec(std::io::Error),
    #[error("{0}")]
    Probe(String),
}

/// The host binary workers and probes are started from: the path the master was started from,
/// read once (after the file is replaced, `/proc/self/exe` reads `… (deleted)`), so a new binary
/// installed there takes over with the next worker; or, when that path is gone, the running
/// image itself.
pub fn host_exe() -> std::io::Result<PathBuf> {
    static STARTED_FROM: OnceLock<Option<PathBuf>> = OnceLock::new();
    match STARTED_FROM.get_or_init(|| std::env::current_exe().ok()) {
        Some(path) if path.is_file() => Ok(path.clone()),
        _ => {
            let running = PathBuf::from("/proc/self/exe");
            running.metadata().map(|_| running)
        }
    }
}

/// A started worker: its pid and the master's end of its channel, its hello queued.
pub struct Spawned {
    pub pid: Pid,
    pub control: MasterChannel<UnixStream>,
}

/// Starts a worker for `spec` on `listener` (one slot's socket, which the master keeps) with the
/// plugin snapshot `plugin` (a sealed memfd). The worker inherits, in this order: the listener
/// (fd 3), its end of the control socket (fd 4), the snapshot (fd 5); nothing else.
pub fn spawn_worker(
    spec: &WorkerSpec,
    plugin_label: &str,
    listener: BorrowedFd<'_>,
    plugin: BorrowedFd<'_>,
    args: &[String],
) -> Result<Spawned, SpawnError> {
    let exe = host_exe().map_err(SpawnError::Exe)?;
    let (ours, theirs) = UnixStream::pair().map_err(SpawnError::Spawn)?;
    let mut cmd = Command::new(exe);
    cmd.arg0(format!("host: worker {} #{} {}", spec.service, spec.slot, plugin_label))
        .arg("worker")
        .args(args)
        // Only the master talks to systemd.
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        // A group of its own: a terminal's Ctrl+C reaches only the master, which stops workers
        // in order.
        .process_group(0);
    let child =
        sys::spawn_with_fds(&mut cmd, &[listener.as_fd(), theirs.as_fd(), plugin]).map_err(SpawnError::Spawn)?;
    // Only the worker may hold this end, or the master would never see it close.
    drop(theirs);
    let pid = Pid::from_raw(child.id() as i32);
    // The master reaps its children itself (waitpid on SIGCHLD); `Child` needs no wait.
    drop(child);
    ours.set_nonblocking(true).map_err(SpawnError::Spec)?;
    // Queued, never a blocking write: what the socket does not take now is flushed by the loop.
    let mut control = MasterChannel::new(ours);
    control.send(&ToWorker::Hello { protocol: PROTOCOL, spec: spec.clone() }).map_err(SpawnError::Spec)?;
    Ok(Spawned { pid, control })
}

/// What `host check-plugin` found in a plugin file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// `name version (ABI n)`, as the probe printed it.
    pub summary: String,
}

/// Loads the snapshot `plugin` (a memfd, inherited as fd 3) in a throwaway exec'd child
/// (`host check-plugin /proc/self/fd/3`), so that a broken file can crash nothing but the probe.
/// Errors name `shown`, the user's file. Blocking; it takes a few milliseconds.
pub fn probe_plugin(plugin: BorrowedFd<'_>, shown: &Path) -> Result<ProbeReport, SpawnError> {
    let exe = host_exe().map_err(SpawnError::Exe)?;
    let inherited = format!("/proc/self/fd/{}", sys::FIRST_INHERITED_FD);
    let mut cmd = Command::new(exe);
    cmd.arg("check-plugin")
        .arg(&inherited)
        .arg("--log-level")
        .arg("error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = sys::spawn_with_fds(&mut cmd, &[plugin])
        .and_then(|child| child.wait_with_output())
        .map_err(SpawnError::Spawn)?;
    if out.status.success() {
        let summary = String::from_utf8_lossy(&out.stdout).trim().to_string();
        return Ok(ProbeReport { summary });
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    let reason = reason.strip_prefix("error: ").unwrap_or(&reason).replace(&inherited, &shown.display().to_string());
    Err(SpawnError::Probe(match out.status.signal() {
        Some(sig) => format!(
            "loading plugin {} crashed the probe (signal {sig}): the file is damaged or truncated",
            shown.display()
        ),
        None if reason.is_empty() => format!("plugin {} was refused (exit {:?})", shown.display(), out.status.code()),
        None => reason,
    }))
}
