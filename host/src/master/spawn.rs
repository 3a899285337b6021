//! Starting processes from the master: workers (fork + exec of the worker binary, or of this
//! binary where there is none; never a bare fork: the master has threads) and the throwaway
//! `check-plugin` probe.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// The program workers and probes are started from: the image the master runs
/// ([`sys::RUNNING_IMAGE`]), never the file at the path it was started from, which an installer
/// may have replaced by a broken binary (issue 20 item 2). Only `host upgrade` moves the master,
/// and with it every later worker, to the file at that path.
pub fn host_exe() -> std::io::Result<PathBuf> {
    // Read the start path now, before anyone replaces the file (`host upgrade` needs it).
    started_from();
    let image = PathBuf::from(sys::RUNNING_IMAGE);
    image.metadata().map(|_| image)
}

/// The path the master was started from, read once (the first call; `master::run` makes it
/// early): `host upgrade` runs whatever binary is installed there now. A master that went back
/// to its previous image after a failed upgrade runs a file that was replaced: the kernel shows
/// its path with ` (deleted)`, which is not part of it.
pub fn started_from() -> Option<&'static PathBuf> {
    static STARTED_FROM: OnceLock<Option<PathBuf>> = OnceLock::new();
    STARTED_FROM
        .get_or_init(|| {
            let path = std::env::current_exe().ok()?;
            let text = path.to_str()?;
            Some(text.strip_suffix(" (deleted)").map(PathBuf::from).unwrap_or(path))
        })
        .as_ref()
}

/// The worker binary's file name, looked for beside the master's binary.
pub const WORKER_BINARY: &str = "host-worker";
/// How long `host-worker --protocol-version` may take.
const PROBE_VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// The worker binary's descriptor is kept numbered at least this: a worker's inherited
/// descriptors (3, 4, …, at most 16 of them) are put in place before the exec that opens it.
const WORKER_IMAGE_MIN_FD: std::os::fd::RawFd = 32;

/// Why the worker binary beside the master cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WorkerBinaryError {
    #[error("could not open the worker binary {}: {source}", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("the worker binary {} does not answer --protocol-version: {reason}", path.display())]
    Probe { path: PathBuf, reason: String },
    #[error(
        "the worker binary {} speaks worker protocol {theirs}, this host {ours}: install `host` and \
         `{WORKER_BINARY}` of the same build together",
        path.display(),
        ours = PROTOCOL
    )]
    Protocol { path: PathBuf, theirs: u32 },
}

/// The program the master's workers are executed from: the worker binary opened at start
/// ([`set_worker_image`]), or this image (`host worker`) when there was none.
static WORKER_IMAGE: OnceLock<Option<OwnedFd>> = OnceLock::new();

/// Sets, once, the program workers are executed from (None: this image). Later calls change
/// nothing.
pub fn set_worker_image(image: Option<OwnedFd>) {
    let _ = WORKER_IMAGE.set(image);
}

/// The worker binary's descriptor, if workers are executed from one.
pub fn worker_image() -> Option<BorrowedFd<'static>> {
    WORKER_IMAGE.get().and_then(|i| i.as_ref()).map(|fd| fd.as_fd())
}

/// `host-worker` beside the binary at `exe`.
pub fn worker_binary_beside(exe: &Path) -> PathBuf {
    exe.with_file_name(WORKER_BINARY)
}

/// Opens the worker binary beside the master's binary (the path it was started from) and checks
/// that it speaks this host's worker protocol. `Ok(None)` when there is none: workers are then
/// executed from this binary, and the log says so. The descriptor is what workers are executed
/// from for the master's whole life, so a file installed over that path meanwhile is run only by
/// `host upgrade`, with the master installed beside it.
pub fn find_worker_image() -> Result<Option<OwnedFd>, WorkerBinaryError> {
    let Some(exe) = started_from() else {
        tracing::info!("the master's path is unknown: workers run this binary (`host worker`)");
        return Ok(None);
    };
    let path = worker_binary_beside(exe);
    let open = || -> std::io::Result<OwnedFd> {
        let file = std::fs::File::open(&path)?;
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other("not a file"));
        }
        // Numbered above what a worker inherits (see `WORKER_IMAGE_MIN_FD`).
        sys::dup_inherited_above(file.as_raw_fd(), WORKER_IMAGE_MIN_FD)
    };
    let image = match open() {
        Ok(image) => image,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("no {WORKER_BINARY} beside {}: workers run this binary (`host worker`)", exe.display());
            return Ok(None);
        }
        Err(source) => return Err(WorkerBinaryError::Open { path, source }),
    };
    let theirs =
        probe_protocol(image.as_fd()).map_err(|reason| WorkerBinaryError::Probe { path: path.clone(), reason })?;
    if theirs != PROTOCOL {
        return Err(WorkerBinaryError::Protocol { path, theirs });
    }
    tracing::info!(path = %path.display(), "workers run the worker binary");
    Ok(Some(image))
}

/// Runs the program `image` with `--protocol-version` and reads the number it prints, within
/// [`PROBE_VERSION_TIMEOUT`].
fn probe_protocol(image: BorrowedFd<'_>) -> Result<u32, String> {
    // The child inherits the image as fd 3 and runs it by that path: open across the exec, so
    // that a script runs too (its interpreter opens the path after the exec).
    let mut cmd = Command::new(format!("/proc/self/fd/{}", sys::FIRST_INHERITED_FD));
    cmd.arg("--protocol-version")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = sys::spawn_with_fds(&mut cmd, &[image]).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + PROBE_VERSION_TIMEOUT;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                abandon(&mut child);
                return Err(format!("no answer within {} s", PROBE_VERSION_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(pause),
            Err(e) => {
                abandon(&mut child);
                return Err(e.to_string());
            }
        }
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        // It exited: what its stdout holds is there now, and no more is waited for (a
        // grandchild may keep the pipe open).
        if sys::set_nonblocking(pipe.as_fd()).is_ok() {
            let mut bytes = Vec::new();
            let _ = pipe.by_ref().take(64).read_to_end(&mut bytes);
            out = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    if !status.success() {
        return Err(format!("it exited with {status}"));
    }
    out.trim().parse().map_err(|_| format!("it printed {:?}, not a protocol number", out.trim()))
}

/// A memfd's name is at most 249 bytes (`memfd_create` fails with EINVAL beyond): the name is a
/// label for `/proc/PID/fd`, so a long one is cut (on a character boundary).
fn memfd_label(name: &str) -> &str {
    const MAX: usize = 200;
    if name.len() <= MAX {
        return name;
    }
    let mut end = MAX;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// A started worker: its pid, the master's end of its channel (its hello queued) and the
/// master's mapping of its watch page.
pub struct Spawned {
    pub pid: Pid,
    pub control: MasterChannel<UnixStream>,
    pub watch: sys::WatchPage,
}

/// Starts a worker for `spec` on `listener` (one slot's socket, which the master keeps) with the
/// plugin snapshot `plugin` (a sealed memfd). The worker inherits, in this order: the listener
/// (fd 3), its end of the control socket (fd 4), the snapshot (fd 5), its watch page (fd 6, a
/// memfd the master keeps mapped: which plugin callback the worker is in); nothing else.
pub fn spawn_worker(
    spec: &WorkerSpec,
    plugin_label: &str,
    listener: BorrowedFd<'_>,
    plugin: BorrowedFd<'_>,
    args: &[String],
) -> Result<Spawned, SpawnError> {
    // The worker binary (by its descriptor: see `WORKER_IMAGE_MIN_FD`), else this image.
    let exe = match worker_image() {
        Some(image) => PathBuf::from(format!("/proc/self/fd/{}", image.as_raw_fd())),
        None => host_exe().map_err(SpawnError::Exe)?,
    };
    let (ours, theirs) = UnixStream::pair().map_err(SpawnError::Spawn)?;
    let (watch, watch_fd) = sys::WatchPage::create(memfd_label(&format!("host-watch-{}-{}", spec.slot, spec.service)))
        .map_err(SpawnError::Spawn)?;
    let mut cmd = Command::new(exe);
    // argv is the title alone (`ps` shows nothing after it); the arguments go in the environment.
    cmd.arg0(format!("host: worker {} #{} {}", spec.service, spec.slot, plugin_label))
        .env(
            crate::argv::ARGV_ENV,
            crate::argv::pack_args(std::iter::once("worker").chain(args.iter().map(String::as_str))),
        )
        // Only the master talks to systemd.
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        // A group of its own: a terminal's Ctrl+C reaches only the master, which stops workers
        // in order.
        .process_group(0);
    let mut child = sys::spawn_with_fds(&mut cmd, &[listener.as_fd(), theirs.as_fd(), plugin, watch_fd.as_fd()])
        .map_err(SpawnError::Spawn)?;
    // Only the worker may hold this end, or the master would never see it close.
    drop(theirs);
    // The mapping keeps the page; the descriptor is not needed any more.
    drop(watch_fd);
    let pid = Pid::from_raw(child.id() as i32);
    let hello = |ours: UnixStream| {
        ours.set_nonblocking(true)?;
        // Queued, never a blocking write: what the socket does not take now is flushed by the loop.
        let mut control = MasterChannel::new(ours);
        control.send(&ToWorker::Hello { protocol: PROTOCOL, spec: Box::new(spec.clone()) })?;
        Ok(control)
    };
    match hello(ours) {
        // The master reaps its children itself (waitpid on SIGCHLD); `Child` needs no wait.
        Ok(control) => Ok(Spawned { pid, control, watch }),
        Err(e) => {
            abandon(&mut child);
            Err(SpawnError::Spec(e))
        }
    }
}

/// A worker that never got its spec: nobody will ever know its pid, so it is killed and reaped
/// now, or it would stay a zombie (it waits for a hello that never comes, then exits).
fn abandon(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// What `host check-plugin` found in a plugin file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// `name version (ABI n)`, as the probe printed it.
    pub summary: String,
}

/// Who a probe runs as and how long it may take.
#[derive(Debug, Clone, Default)]
pub struct ProbeAs {
    /// The service's user and group: the probe runs the plugin's load-time code with no more
    /// privilege than the service's workers.
    pub user: Option<String>,
    pub group: Option<String>,
}

/// The probe process under way, so that it can be killed from another thread (the master
/// shutting down): its pid while it runs, cleared (under the lock) before it is reaped, so a
/// kill never reaches a reused pid.
pub type Running = std::sync::Arc<std::sync::Mutex<Option<Pid>>>;

/// Loads the snapshot `plugin` (a memfd, inherited as fd 3) in a throwaway exec'd child
/// (`host check-plugin /proc/self/fd/3`), so that a broken file can crash nothing but the probe.
/// The child switches to `who`'s user and group before it loads anything, and is killed
/// (SIGKILL, reaped) when it has not answered within `timeout`: a plugin whose load-time code
/// blocks is refused, never a hang. Errors name `shown`, the user's file. Blocking; it takes a
/// few milliseconds.
pub fn probe_plugin(
    plugin: BorrowedFd<'_>,
    shown: &Path,
    who: &ProbeAs,
    timeout: Duration,
    running: &Running,
) -> Result<ProbeReport, SpawnError> {
    let exe = host_exe().map_err(SpawnError::Exe)?;
    let inherited = format!("/proc/self/fd/{}", sys::FIRST_INHERITED_FD);
    let mut cmd = Command::new(exe);
    // Immediate binding: a plugin calling a symbol no library defines is refused now, not when
    // a worker first calls it (lazy binding would pass the probe and kill the worker later).
    cmd.env("LD_BIND_NOW", "1")
        .arg("check-plugin")
        .arg(&inherited)
        .arg("--log-level")
        .arg("error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(user) = &who.user {
        cmd.arg("--user").arg(user);
    }
    if let Some(group) = &who.group {
        cmd.arg("--group").arg(group);
    }
    let mut child = sys::spawn_with_fds(&mut cmd, &[plugin]).map_err(SpawnError::Spawn)?;
    // Read both pipes on their own threads: a long abi_stable report fills a pipe, and a child
    // blocked on a full pipe must not look like a hung plugin.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = wait_or_kill(&mut child, timeout, running).map_err(SpawnError::Spawn)?;
    let (stdout, stderr) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
    let Some(status) = status else {
        return Err(SpawnError::Probe(format!(
            "plugin {} did not finish loading within {} s (its load-time code blocks?); the probe was killed",
            shown.display(),
            timeout.as_secs_f64()
        )));
    };
    if status.success() {
        let summary = String::from_utf8_lossy(&stdout).trim().to_string();
        return Ok(ProbeReport { summary });
    }
    let stderr = String::from_utf8_lossy(&stderr);
    let reason = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    let reason = reason.strip_prefix("error: ").unwrap_or(&reason).replace(&inherited, &shown.display().to_string());
    Err(SpawnError::Probe(match status.signal() {
        Some(sig) => format!(
            "loading plugin {} crashed the probe (signal {sig}): the file is damaged or truncated",
            shown.display()
        ),
        None if reason.is_empty() => format!("plugin {} was refused (exit {:?})", shown.display(), status.code()),
        None => reason,
    }))
}

/// Waits for `child` until `timeout`; then (or when someone took the pid out of `running` to
/// kill it) SIGKILLs and reaps it and returns None.
pub(super) fn wait_or_kill(
    child: &mut Child,
    timeout: Duration,
    running: &Running,
) -> std::io::Result<Option<ExitStatus>> {
    let pid = Pid::from_raw(child.id() as i32);
    *running.lock().unwrap_or_else(|e| e.into_inner()) = Some(pid);
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        {
            // Checked and cleared under the lock: a kill from `Preparer::drop` either happens
            // before the reap (and the status says so) or finds no pid.
            let mut current = running.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(status) = child.try_wait()? {
                *current = None;
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                *current = None;
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;

    // Item 15 of issue #15: a worker whose spec could not be written must not stay behind. A
    // zombie still answers kill(pid, 0); only a reaped pid is gone (ESRCH).
    #[test]
    fn a_long_service_name_still_makes_a_valid_memfd_label() {
        let name = format!("host-watch-0-{}", "é".repeat(200));
        let label = super::memfd_label(&name);
        assert!(label.len() <= 200 && name.starts_with(label));
        assert!(crate::sys::WatchPage::create(label).is_ok());
        assert_eq!(super::memfd_label("host-watch-0-web"), "host-watch-0-web");
    }

    #[test]
    fn an_abandoned_worker_is_killed_and_reaped() {
        let mut child = Command::new("sleep").arg("60").spawn().expect("sleep runs");
        let pid = Pid::from_raw(child.id() as i32);
        super::abandon(&mut child);
        assert_eq!(kill(pid, None), Err(Errno::ESRCH), "the abandoned child is still there (a zombie?)");
    }
}
