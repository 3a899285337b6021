//! `host upgrade` (or SIGURG): the master replaces its own program with the binary installed at
//! the path it was started from, without closing a listening socket or dropping a connection.
//!
//! The old image writes everything the new one needs into a versioned [`State`] (JSON in a
//! sealed memfd): the listening sockets of every slot, the control socket and the admin
//! listener, the locked pid file, the plugin snapshots, each live worker (pid, slot, role,
//! readiness, channel, mailbox), the control client waiting for the answer, and the counters
//! `status` and `/metrics` show. Before anything changes it checks that the file exists and is
//! executable, and runs it as a child (`host upgrade-check`) that reads the state and answers
//! whether it accepts it (format version, worker protocol, the same services); a refusal, or an
//! exec that fails, leaves the old master running and says why. Then it clears close-on-exec on
//! exactly the descriptors the state names and `execve`s the binary: same pid, so the workers
//! stay its children and the pid file stays right. The new image ([`Inherited`]) takes those
//! descriptors back, rebuilds the slot table around the adopted workers, and runs the ordinary
//! reload chain (trigger `host upgrade`), which replaces every worker with one exec'd from the
//! new binary, old ones draining; the waiting `host upgrade` hears the chain's outcome.
//!
//! How it can fail, and what the host does (docs/architecture.md, "Binary upgrade"): the check
//! runs off the master's loop (a thread waits for it, bounded with its output), so a binary that
//! hangs or a grandchild that keeps its stderr open stalls nothing; the old image hands a
//! descriptor of itself over with the state, and the new one, until its loop runs, goes back to
//! it ([`roll_back_on_failure`]) on any error or panic, with every descriptor as it was handed.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use mio::{Interest, Token};
use serde::{Deserialize, Serialize};

use super::slots::{ClientId, Readiness, Role, ServiceId, SlotKey, Worker, WorkerId};
use super::snapshot::Snapshot;
use super::supervisor::{Phase, ReloadRecord};
use super::{spawn, Master, WORKER_TOKEN_BASE};
use crate::config_file::ServiceConfig;
use crate::ctl::{MasterChannel, ToWorker, PROTOCOL};
use crate::listen::Listen;
use crate::status::{Answer, WorkerReport};
use crate::sys;

/// The environment variable that carries the state's descriptor number to the new image.
pub const STATE_ENV: &str = "HOST_UPGRADE_STATE";
/// The version of [`State`]; a binary that reads another refuses the upgrade.
pub const FORMAT: u32 = 1;
/// How long the new binary's check of the state may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long what is queued for a worker may take to leave before the exec.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(500);
/// How much of the check's stderr is kept (its last line is the reason of a refusal).
const MAX_CHECK_OUTPUT: usize = 16 * 1024;
/// Set in the environment of the previous image when the new one went back to it: the reason.
const ROLLED_BACK_ENV: &str = "HOST_UPGRADE_ROLLED_BACK";
/// Set in the environment of the previous image when the upgrade's guardian took the master
/// over (a new pid: the workers are not its children).
const RESCUED_ENV: &str = "HOST_UPGRADE_RESCUED";
/// What `host upgrade-check` writes on stderr when it accepts the state and releases a guardian
/// once its loop runs. A binary that does not say so (an older host) is exec'd without one.
pub const GUARDIAN_CAPABILITY: &str = "upgrade-check: accepted; the guardian is released once the loop runs";
/// How long the new image may take to run its loop before its guardian kills it and takes the
/// master over with the previous image.
const GUARDIAN_DEADLINE: Duration = Duration::from_secs(30);
/// How long the workers may take to turn their parent-death signal off before the exec.
const PARENT_DEATH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why `host upgrade` was refused, or failed (the old master goes on in every case).
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("the path the master was started from is unknown")]
    NoPath,
    #[error("there is no host binary at {} any more", .0.display())]
    Missing(PathBuf),
    #[error("could not read {}: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    #[error("{} is not a file", .0.display())]
    NotAFile(PathBuf),
    #[error("{} is not executable", .0.display())]
    NotExecutable(PathBuf),
    #[error("{} was replaced while it was checked; try again", .0.display())]
    Replaced(PathBuf),
    #[error("the master is still starting or is stopping")]
    NotRunning,
    #[error("a reload is under way; try again once it is done")]
    ReloadUnderWay,
    #[error("an upgrade is under way already")]
    UnderWay,
    /// A worker hands its connections over: the master that would kill a replacement stuck
    /// in it (`ToMaster::HandoverTimedOut`) must be the one that started it.
    #[error("a hand-over is under way; try again once it is done")]
    HandoverUnderWay,
    #[error("could not hand the state over: {0}")]
    HandOver(&'static str),
    #[error("could not write the state: {0}")]
    WriteState(#[source] io::Error),
    #[error("could not keep a descriptor of the running binary to go back to: {0}")]
    KeepImage(#[source] io::Error),
    #[error("could not run {}: {source}", path.display())]
    Run { path: PathBuf, source: io::Error },
    #[error("{} did not answer within {} s; killed", path.display(), timeout.as_secs_f64())]
    NoAnswer { path: PathBuf, timeout: Duration },
    #[error("{} refused the running master's state ({how}){}", path.display(), said(reason))]
    Refused { path: PathBuf, how: String, reason: String },
    #[error("could not execute {}: {source}", path.display())]
    Exec { path: PathBuf, source: io::Error },
}

fn said(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

/// What crosses the exec. Descriptors are their numbers: they stay open across it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// The master↔worker protocol the running workers speak.
    pub protocol: u32,
    /// The old binary's version (for the log).
    pub version: String,
    /// Where and with what arguments the host was started (the new image plans its start again
    /// from them, in that directory), and the master's directory now (`/` for a daemon).
    pub start_dir: PathBuf,
    pub start_args: Vec<String>,
    pub cwd: PathBuf,
    pub started_at_ms: u64,
    pub pid_file: PathBuf,
    pub pid_lock: RawFd,
    pub control: Option<RawFd>,
    pub admin: Option<RawFd>,
    pub services: Vec<HandedService>,
    pub snapshots: Vec<HandedSnapshot>,
    pub workers: Vec<HandedWorker>,
    pub last_worker_id: u64,
    /// The `host upgrade` client waiting for the answer.
    pub client: Option<RawFd>,
    /// That client asked to hear how the chain's hand-overs ended too (`--handovers`).
    #[serde(default)]
    pub client_handovers: bool,
    /// (service, how it ended, count).
    pub exits: Vec<(String, String, u64)>,
    /// Per slot (service index, slot), the counters of its workers that exited.
    pub carried: Vec<(usize, u32, WorkerReport)>,
    /// The last reload: when (ms since the epoch), trigger, summary.
    pub last_reload: Option<(u64, String, String)>,
    /// A descriptor of the image that wrote this state: the new image goes back to it when it
    /// fails before its loop runs. Absent in states of older binaries.
    #[serde(default)]
    pub previous_image: Option<RawFd>,
    /// The master's process title, which a new image that goes back restores.
    #[serde(default)]
    pub title: String,
    /// A descriptor of the worker binary the image that wrote this state executes its workers
    /// from (None: itself). The new image executes its own (the one installed beside it) and
    /// keeps this one only to go back: the image gone back to uses it again, whatever file is
    /// at that path now.
    #[serde(default)]
    pub worker_image: Option<RawFd>,
    /// The services' TLS session ticket keys: sessions resume across the upgrade. (The state
    /// travels in a sealed memfd, never a file or a log line.)
    #[serde(default)]
    pub tickets: crate::tls::tickets::TicketStore,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandedService {
    pub name: String,
    /// The address as bound (a [`Listen`] written out: port 0 resolved).
    pub listen: String,
    pub count: u32,
    /// One listening socket per slot.
    pub sockets: Vec<RawFd>,
    pub waiting: bool,
    /// The snapshot its slots run (index in [`State::snapshots`]).
    pub snapshot: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandedSnapshot {
    pub fd: RawFd,
    pub source: PathBuf,
    pub hash: u64,
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandedRole {
    Serving,
    Replacement,
    Retiring,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandedWorker {
    pub id: u64,
    pub service: usize,
    pub slot: u32,
    pub pid: i32,
    pub ready: bool,
    pub role: HandedRole,
    pub snapshot: usize,
    pub uptime_ms: u64,
    /// Its kill deadline, from now (starting or retiring workers).
    pub kill_in_ms: Option<u64>,
    pub retired_ms_ago: Option<u64>,
    pub channel: RawFd,
    pub mailbox: Option<RawFd>,
}

impl State {
    /// Every descriptor the state names.
    fn fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.pid_lock];
        fds.extend(self.previous_image);
        fds.extend(self.worker_image);
        fds.extend(self.control);
        fds.extend(self.admin);
        fds.extend(self.client);
        fds.extend(self.services.iter().flat_map(|s| s.sockets.iter().copied()));
        fds.extend(self.snapshots.iter().map(|s| s.fd));
        fds.extend(self.workers.iter().flat_map(|w| std::iter::once(w.channel).chain(w.mailbox)));
        fds
    }

    /// Whether this binary can take the state over for `services` (its own plan of the same
    /// command line): the format, the workers' protocol, and the same services, in order, with
    /// the same number of workers and a listening address the handed sockets satisfy.
    pub fn check(&self, services: &[ServiceConfig]) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("state format {} is not the {FORMAT} this binary reads", self.format));
        }
        if self.protocol != PROTOCOL {
            return Err(format!(
                "the running workers speak worker protocol {}, this binary {PROTOCOL}: use `host restart`",
                self.protocol
            ));
        }
        let names = |v: Vec<&str>| v.join(", ");
        if services.len() != self.services.len() {
            return Err(format!(
                "the configuration now has services [{}], the running master [{}]",
                names(services.iter().map(|s| s.service.name.as_str()).collect()),
                names(self.services.iter().map(|s| s.name.as_str()).collect())
            ));
        }
        for (new, old) in services.iter().zip(&self.services) {
            let s = &new.service;
            if s.name != old.name {
                return Err(format!("service {} is now {}: use `host restart`", old.name, s.name));
            }
            if s.count != old.count || old.sockets.len() != old.count as usize {
                return Err(format!(
                    "service {}: {} workers now, {} running: use `host restart`",
                    s.name, s.count, old.count
                ));
            }
            let running: Listen = old.listen.parse().map_err(|e| format!("service {}: {e}", old.name))?;
            let same_address = match (&s.listen, &running) {
                (Listen::Unix { path: a, .. }, Listen::Unix { path: b, .. }) => a == b,
                (Listen::Tcp(a), Listen::Tcp(b)) | (Listen::Udp(a), Listen::Udp(b)) => {
                    a == b || (a.port() == 0 && a.ip() == b.ip()) || (a.port() == b.port() && a.ip().is_unspecified())
                }
                _ => false,
            };
            if !same_address {
                return Err(format!(
                    "service {} listens on {} now, {} running: use `host restart`",
                    s.name, s.listen, old.listen
                ));
            }
        }
        Ok(())
    }

    /// Reads the state whose descriptor [`STATE_ENV`] names, without taking any other descriptor
    /// (`host upgrade-check`; the new image uses [`Inherited::take`]).
    pub fn from_env() -> anyhow::Result<Self> {
        let fd = state_fd()?.context("no upgrade state was handed over")?;
        read_state(&fd)
    }
}

fn state_fd() -> anyhow::Result<Option<OwnedFd>> {
    let Ok(number) = std::env::var(STATE_ENV) else { return Ok(None) };
    std::env::remove_var(STATE_ENV);
    let number: RawFd = number.parse().with_context(|| format!("{STATE_ENV}={number:?} is no descriptor"))?;
    let mut fds = sys::take_inherited_range(number, 1).context("could not take the upgrade state")?;
    Ok(fds.pop())
}

fn read_state(fd: &OwnedFd) -> anyhow::Result<State> {
    let file = std::fs::File::from(fd.try_clone()?);
    let len = file.metadata()?.len() as usize;
    let mut bytes = vec![0; len];
    // At offset 0 whatever the shared offset is (the old image wrote it).
    file.read_exact_at(&mut bytes, 0)?;
    let format: serde_json::Value = serde_json::from_slice(&bytes).context("the upgrade state is not JSON")?;
    if format.get("format").and_then(serde_json::Value::as_u64) != Some(FORMAT as u64) {
        anyhow::bail!("upgrade state format {:?} is not the {FORMAT} this binary reads", format.get("format"));
    }
    serde_json::from_value(format).context("could not read the upgrade state")
}

/// The new image's side: the state and every descriptor it names, taken (close-on-exec again).
pub struct Inherited {
    pub state: State,
    fds: HashMap<RawFd, OwnedFd>,
    /// Why the image this one was upgraded to went back to this one (None: a plain upgrade).
    rolled_back: Option<String>,
    /// This image was exec'd by the upgrade's guardian: the master's process died in the new
    /// program, and this one (a new pid) takes over workers that are not its children.
    rescued: bool,
}

/// The guardian of the upgrade that exec'd this image, until its loop runs.
static GUARDIAN: std::sync::Mutex<Option<sys::Guardian>> = std::sync::Mutex::new(None);

impl Inherited {
    /// Called first thing by a starting master: None unless the previous image handed over.
    /// Unless this image is the one gone back to, it can go back to the previous one until its
    /// loop runs (see [`roll_back_on_failure`]).
    pub fn take() -> anyhow::Result<Option<Self>> {
        let Some(fd) = state_fd()? else { return Ok(None) };
        let rolled_back = std::env::var(ROLLED_BACK_ENV).ok();
        std::env::remove_var(ROLLED_BACK_ENV);
        let rescued = std::env::var_os(RESCUED_ENV).is_some();
        std::env::remove_var(RESCUED_ENV);
        *GUARDIAN.lock().unwrap_or_else(|e| e.into_inner()) = sys::Guardian::inherited();
        let state = read_state(&fd)?;
        if rolled_back.is_none() && state.previous_image.is_some() {
            arm_rollback(&state, fd.as_fd()).context("could not keep what the previous image handed over")?;
        }
        let taken = (|| {
            let mut fds = HashMap::new();
            for number in state.fds() {
                let fd = sys::take_inherited_range(number, 1)
                    .with_context(|| format!("descriptor {number} of the upgrade state"))?
                    .pop()
                    .context("no descriptor")?;
                fds.insert(number, fd);
            }
            anyhow::Ok(fds)
        })();
        match taken {
            Ok(fds) => Ok(Some(Inherited { state, fds, rolled_back, rescued })),
            Err(e) => roll_back_on_failure(Ok(Err(e))).map(|()| None),
        }
    }

    fn fd(&mut self, number: RawFd) -> anyhow::Result<OwnedFd> {
        self.fds.remove(&number).with_context(|| format!("descriptor {number} was handed over twice"))
    }

    /// The bound address and per-slot sockets of service `name`.
    pub fn sockets(&mut self, name: &str) -> anyhow::Result<(Listen, Vec<OwnedFd>)> {
        let s = self.state.services.iter().find(|s| s.name == name).context("no such service was handed over")?;
        let listen: Listen = s.listen.parse().map_err(|e: String| anyhow::anyhow!("service {name}: {e}"))?;
        let numbers = s.sockets.clone();
        let sockets = numbers.into_iter().map(|n| self.fd(n)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok((listen, sockets))
    }

    /// The snapshots, as the new image's `Rc`s (by index in the state).
    pub fn snapshots(&mut self) -> anyhow::Result<Vec<Rc<Snapshot>>> {
        let handed = self.state.snapshots.clone();
        handed
            .into_iter()
            .map(|s| Ok(Rc::new(Snapshot::adopt(self.fd(s.fd)?, s.source, s.hash, s.name, s.version))))
            .collect()
    }

    pub fn pid_lock(&mut self) -> anyhow::Result<std::fs::File> {
        Ok(std::fs::File::from(self.fd(self.state.pid_lock)?))
    }

    pub fn control(&mut self) -> anyhow::Result<Option<OwnedFd>> {
        self.state.control.map(|n| self.fd(n)).transpose()
    }

    /// For the image gone back to (or taken over by the guardian), which wrote this state: the
    /// worker binary it executed its workers from before (`Some(None)`: itself). None for a new
    /// image, which executes the worker binary installed beside it.
    pub fn own_worker_image(&mut self) -> anyhow::Result<Option<Option<OwnedFd>>> {
        if self.rolled_back.is_none() && !self.rescued {
            return Ok(None);
        }
        Ok(Some(self.state.worker_image.map(|n| self.fd(n)).transpose()?))
    }
}

/// What a new image keeps to go back to the previous one: copies of every descriptor the state
/// names (numbered above all of them: the originals may be closed or reused meanwhile), of the
/// state itself, and the previous image.
struct Rollback {
    image: OwnedFd,
    /// (copy, the number the previous image expects it at).
    fds: Vec<(OwnedFd, RawFd)>,
    state_number: RawFd,
    start_args: Vec<String>,
    title: String,
}

static ROLLBACK: std::sync::Mutex<Option<Rollback>> = std::sync::Mutex::new(None);

fn arm_rollback(state: &State, state_fd: BorrowedFd<'_>) -> io::Result<()> {
    let image = state.previous_image.ok_or_else(|| io::Error::other("no previous image"))?;
    let mut numbers = state.fds();
    numbers.push(state_fd.as_raw_fd());
    let above = numbers.iter().copied().max().unwrap_or(0) + 1;
    let mut fds = Vec::new();
    for &number in &numbers {
        let copy = sys::dup_inherited_above(number, above)?;
        fds.push((copy, number));
    }
    let image = fds
        .iter()
        .find(|(_, n)| *n == image)
        .map(|(fd, _)| fd.try_clone())
        .transpose()?
        .ok_or_else(|| io::Error::other("the previous image was not handed over"))?;
    let rollback = Rollback {
        image,
        fds,
        state_number: state_fd.as_raw_fd(),
        start_args: state.start_args.clone(),
        title: state.title.clone(),
    };
    *ROLLBACK.lock().unwrap_or_else(|e| e.into_inner()) = Some(rollback);
    Ok(())
}

/// Whether this image can still go back to the one it was upgraded from (it has not run its
/// loop yet). Meanwhile nothing the previous image will take back may be removed: the pid file,
/// the control socket's file, a Unix service socket's file.
pub fn rollback_armed() -> bool {
    ROLLBACK.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// This image runs its loop: it does not go back any more (the copies are closed).
fn disarm_rollback() {
    ROLLBACK.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// The new image's start after an upgrade, `Err` or a panic: while this image can still go back
/// (see [`rollback_armed`]), it execs the previous image with every descriptor the state names
/// put back at its number, and the state: the previous image adopts its workers again and answers
/// the waiting `host upgrade` with the reason. Returns `result` otherwise, or when going back
/// failed too.
pub fn roll_back_on_failure(result: std::thread::Result<anyhow::Result<()>>) -> anyhow::Result<()> {
    let error = match result {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(e)) => e,
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            anyhow::anyhow!("the new binary panicked: {text}")
        }
    };
    let Some(rollback) = ROLLBACK.lock().unwrap_or_else(|e| e.into_inner()).take() else { return Err(error) };
    let reason = format!("{error:#}");
    {
        use std::io::Write as _;
        let _ = writeln!(
            io::stderr(),
            "error: the new binary failed before it was ready: {reason}; going back to the previous one"
        );
    }
    let fds: Vec<(BorrowedFd<'_>, RawFd)> = rollback.fds.iter().map(|(fd, n)| (fd.as_fd(), *n)).collect();
    let number = rollback.state_number.to_string();
    let args = crate::argv::pack_args(&rollback.start_args);
    let env: [(&str, &std::ffi::OsStr); 4] = [
        (STATE_ENV, number.as_ref()),
        (crate::argv::ARGV_ENV, args.as_ref()),
        (crate::argv::TITLED, "1".as_ref()),
        (ROLLED_BACK_ENV, reason.as_ref()),
    ];
    let title = if rollback.title.is_empty() { title() } else { rollback.title.clone() };
    // The guardian stays open across this exec too: the previous image releases it.
    let guardian = GUARDIAN.lock().unwrap_or_else(|e| e.into_inner()).take();
    let guardian_env = guardian.as_ref().map(|g| (g.env_value(), sys::clear_cloexec(g.fd())));
    let mut env = env.to_vec();
    if let Some((value, Ok(()))) = &guardian_env {
        env.push((sys::GUARDIAN_ENV, value.as_ref()));
    }
    let e = sys::exec_restoring(rollback.image.as_fd(), &fds, &title, &env);
    // The exec failed: the process exits, and the guardian (its pipe closed) takes over.
    drop(guardian);
    // The numbers were overwritten under their owners: this process may only exit now.
    Err(error.context(format!("the new binary failed and going back to the previous one failed too ({e})")))
}

/// Why `path` cannot be the new master's binary, if it cannot; else its identity (device,
/// inode), to see that the file executed is the file checked.
fn check_binary(path: &Path) -> Result<(u64, u64), UpgradeError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => UpgradeError::Missing(path.to_path_buf()),
        _ => UpgradeError::Unreadable { path: path.to_path_buf(), source: e },
    })?;
    if !meta.is_file() {
        return Err(UpgradeError::NotAFile(path.to_path_buf()));
    }
    let executable =
        meta.permissions().mode() & 0o111 != 0 && nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok();
    if !executable {
        return Err(UpgradeError::NotExecutable(path.to_path_buf()));
    }
    Ok((meta.dev(), meta.ino()))
}

/// The check of the new binary under way, off the master's loop.
pub(super) struct DryRun {
    client: Option<ClientId>,
    /// The client asked for the outcome of the hand-overs too (`host upgrade --handovers`).
    handovers: bool,
    exe: PathBuf,
    identity: (u64, u64),
    done: mpsc::Receiver<Result<Accepted, UpgradeError>>,
}

/// The new binary's check accepted the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// It releases a guardian ([`GUARDIAN_CAPABILITY`]).
    guardian: bool,
}

/// Starts [`dry_run`] on a thread of its own, which sends its outcome and wakes the master.
fn start_dry_run(
    exe: PathBuf,
    state: OwnedFd,
    dir: PathBuf,
    waker: Arc<mio::Waker>,
) -> io::Result<mpsc::Receiver<Result<Accepted, UpgradeError>>> {
    let (tx, rx) = mpsc::channel();
    // The child's parent-death signal fires when this thread ends: after it is reaped.
    std::thread::Builder::new().name("host: upgrade-check".into()).spawn(move || {
        let result = dry_run(&exe, state.as_fd(), &dir, CHECK_TIMEOUT);
        let _ = tx.send(result);
        let _ = waker.wake();
    })?;
    Ok(rx)
}

/// Runs `exe upgrade-check` with the state (fd 3) in `dir`: the new binary reads it and says
/// whether it takes it over. Its last line of stderr is the reason of a refusal. `timeout`
/// bounds everything, its output included: once the child exited, what its stderr holds is read
/// and no more (a grandchild may keep the pipe open for ever).
fn dry_run(exe: &Path, state: BorrowedFd<'_>, dir: &Path, timeout: Duration) -> Result<Accepted, UpgradeError> {
    let path = || exe.to_path_buf();
    let mut cmd = Command::new(exe);
    cmd.arg("upgrade-check")
        .env(STATE_ENV, sys::FIRST_INHERITED_FD.to_string())
        .env_remove("NOTIFY_SOCKET")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let deadline = Instant::now() + timeout;
    // A binary just installed may still be open for writing a moment (ETXTBSY: the installer,
    // or a process forked while it wrote): try again for about a second.
    let mut tries = 0;
    let mut child = loop {
        match sys::spawn_with_fds(&mut cmd, &[state]) {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => break other.map_err(|source| UpgradeError::Run { path: path(), source })?,
        }
    };
    let mut stderr = child.stderr.take();
    if let Some(pipe) = &stderr {
        sys::set_nonblocking(pipe.as_fd()).map_err(|source| UpgradeError::Run { path: path(), source })?;
    }
    let mut text = Vec::new();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(pipe) = stderr.as_mut() {
            if read_available(pipe, &mut text) {
                stderr = None;
            }
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                if let Some(pipe) = stderr.as_mut() {
                    read_available(pipe, &mut text);
                }
                break Some(status);
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => {}
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(UpgradeError::Run { path: path(), source });
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let stderr = String::from_utf8_lossy(&text).into_owned();
    let reason = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
    let reason = reason.strip_prefix("error: ").unwrap_or(reason).to_string();
    match status {
        None => Err(UpgradeError::NoAnswer { path: path(), timeout }),
        Some(s) if s.success() => Ok(Accepted { guardian: stderr.lines().any(|l| l.trim() == GUARDIAN_CAPABILITY) }),
        Some(s) => {
            let how = match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(code), _) => format!("exit code {code}"),
                (None, Some(sig)) => format!("signal {sig}"),
                _ => "an unknown status".to_string(),
            };
            Err(UpgradeError::Refused { path: path(), how, reason })
        }
    }
}

/// Reads what `pipe` (non-blocking) holds now into `text`, keeping the last
/// [`MAX_CHECK_OUTPUT`] bytes. True at its end (or an error).
fn read_available(pipe: &mut impl io::Read, text: &mut Vec<u8>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => {
                text.extend_from_slice(&buf[..n]);
                if text.len() > MAX_CHECK_OUTPUT {
                    text.drain(..text.len() - MAX_CHECK_OUTPUT);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// The master's process title (`argv[0]`), which the new image keeps.
fn title() -> String {
    std::fs::read("/proc/self/cmdline")
        .ok()
        .and_then(|c| c.split(|&b| b == 0).next().map(|t| String::from_utf8_lossy(t).into_owned()))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "host: master".to_string())
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Master {
    /// `host upgrade` or SIGURG: checks the new binary (off the loop; [`Master::upgrade_checked`]
    /// goes on when the check is done). A refusal is answered and logged: the old master goes on.
    pub(super) fn upgrade(&mut self, client: Option<ClientId>, handovers: bool) {
        tracing::info!("binary upgrade requested");
        if let Err(e) = self.start_upgrade(client, handovers) {
            self.refuse_upgrade(client, &e);
        }
    }

    fn refuse_upgrade(&mut self, client: Option<ClientId>, reason: &UpgradeError) {
        tracing::error!("upgrade refused: {reason}; this master goes on");
        if let Some(client) = client {
            let message = format!("upgrade refused: {reason}; the master (pid {}) goes on", std::process::id());
            self.answer_all(&[client], &Answer::Error { message });
        }
        let sup = &self.sup;
        self.notifier.update(sup.phase(), sup.reloader_idle(), || super::summary(sup));
    }

    /// Whether the master can hand its state over now.
    fn can_hand_over(&self) -> Result<(), UpgradeError> {
        self.sup.may_upgrade()
    }

    fn start_upgrade(&mut self, client: Option<ClientId>, handovers: bool) -> Result<(), UpgradeError> {
        if self.upgrading.is_some() {
            return Err(UpgradeError::UnderWay);
        }
        let exe = spawn::started_from().cloned().ok_or(UpgradeError::NoPath)?;
        let identity = check_binary(&exe)?;
        self.can_hand_over()?;
        let (state, _) = self.hand_over(client, handovers)?;
        let json = serde_json::to_vec(&state).map_err(|e| UpgradeError::WriteState(e.into()))?;
        let memfd = sys::sealed_memfd("host-upgrade-state", &mut &json[..]).map_err(UpgradeError::WriteState)?;
        let done = start_dry_run(exe.clone(), memfd, state.start_dir.clone(), self.waker.clone())
            .map_err(|source| UpgradeError::Run { path: exe.clone(), source })?;
        tracing::info!(path = %exe.display(), "checking the new binary (`host upgrade-check`)");
        self.upgrading = Some(DryRun { client, handovers, exe, identity, done });
        Ok(())
    }

    /// The loop was woken: when the check of the new binary is done, executes it or says why not.
    pub(super) fn upgrade_checked(&mut self) {
        let Some(run) = &self.upgrading else { return };
        let result = match run.done.try_recv() {
            Ok(result) => result,
            Err(mpsc::TryRecvError::Empty) => return,
            Err(mpsc::TryRecvError::Disconnected) => Err(UpgradeError::Run {
                path: run.exe.clone(),
                source: io::Error::other("the thread that ran the check ended"),
            }),
        };
        let Some(DryRun { client, handovers, exe, identity, .. }) = self.upgrading.take() else { return };
        let Err(e) = result.and_then(|accepted| self.exec_upgrade(client, handovers, &exe, identity, accepted));
        self.refuse_upgrade(client, &e);
    }

    /// Asks every worker to set its parent-death signal (`kill`: SIGKILL, as workers start; or
    /// none) and waits up to `wait` for their answers, reading whatever else they say meanwhile.
    /// Returns how many did not answer in time.
    fn set_parent_death(&mut self, kill: bool, wait: Duration) -> usize {
        let ids: Vec<WorkerId> = self.channels.keys().copied().collect();
        for &id in &ids {
            self.parent_death.remove(&id);
            if let Some(channel) = self.channels.get_mut(&id) {
                let _ = channel.send(&ToWorker::ParentDeath { kill });
            }
            self.watch_channel_output(id);
        }
        let deadline = Instant::now() + wait;
        loop {
            let waiting: Vec<WorkerId> = ids
                .iter()
                .copied()
                .filter(|id| {
                    self.channels.get(id).is_some_and(|c| !c.closed) && self.parent_death.get(id) != Some(&kill)
                })
                .collect();
            let left = deadline.saturating_duration_since(Instant::now());
            if waiting.is_empty() || left.is_zero() {
                return waiting.len();
            }
            {
                let mut fds: Vec<nix::poll::PollFd<'_>> = waiting
                    .iter()
                    .filter_map(|id| self.channels.get(id))
                    .map(|c| nix::poll::PollFd::new(c.stream.as_fd(), nix::poll::PollFlags::POLLIN))
                    .collect();
                let ms = left.as_millis().clamp(1, u16::MAX as u128) as u16;
                let _ = nix::poll::poll(&mut fds, ms);
            }
            for &id in &waiting {
                self.read_worker(id);
            }
        }
    }

    /// The new binary accepted the state: hands over the state as it is now and executes it.
    /// Returns only when that could not be done.
    fn exec_upgrade(
        &mut self,
        client: Option<ClientId>,
        handovers: bool,
        exe: &Path,
        identity: (u64, u64),
        accepted: Accepted,
    ) -> Result<Infallible, UpgradeError> {
        if check_binary(exe)? != identity {
            return Err(UpgradeError::Replaced(exe.to_path_buf()));
        }
        // What the workers said so far is acted on, and what is queued for them leaves first.
        let ids: Vec<WorkerId> = self.channels.keys().copied().collect();
        for &id in &ids {
            self.read_worker(id);
        }
        self.carry_out();
        self.can_hand_over()?;
        for channel in self.channels.values_mut() {
            let _ = channel.flush_timeout(FLUSH_TIMEOUT);
        }
        // With a guardian, the workers outlive the master's process should the new program die
        // in its place (their parent-death signal off until the new image turns it on again).
        if accepted.guardian {
            let left = self.set_parent_death(false, PARENT_DEATH_TIMEOUT);
            if left > 0 {
                tracing::warn!(workers = left, "some workers did not turn their parent-death signal off in time: they would die with a new binary that fails before it runs");
            }
        }
        // systemd hears RELOADING=1 now (the new image says MAINPID= and READY=1); READY=1 again
        // if the exec fails.
        self.notifier.upgrading();
        // Kept across the exec: the new image goes back to it if it fails before it is ready.
        let image = sys::open_running_image().map_err(UpgradeError::KeepImage)?;
        let (mut state, handed) = self.hand_over(client, handovers)?;
        state.previous_image = Some(image.as_raw_fd());
        let json = serde_json::to_vec(&state).map_err(|e| UpgradeError::WriteState(e.into()))?;
        let memfd = sys::sealed_memfd("host-upgrade-state", &mut &json[..]).map_err(UpgradeError::WriteState)?;
        tracing::info!(path = %exe.display(), workers = state.workers.len(), "the new binary accepts the state; executing it");
        let mut fds: Vec<BorrowedFd<'_>> = handed.clone();
        fds.push(memfd.as_fd());
        fds.push(image.as_fd());
        let mut guardian = None;
        let error = match fds.iter().try_for_each(|fd| sys::clear_cloexec(*fd)) {
            Ok(()) => {
                let number = memfd.as_raw_fd().to_string();
                let args = crate::argv::pack_args(&state.start_args);
                if accepted.guardian {
                    // Forked with every descriptor of the state open across exec: should the new
                    // program die before it runs its loop, this image takes the master back.
                    let reason = format!(
                        "{} ended before it ran the host's loop, or did not run it within {} s",
                        exe.display(),
                        GUARDIAN_DEADLINE.as_secs()
                    );
                    let rescue: [(&str, &std::ffi::OsStr); 5] = [
                        (STATE_ENV, number.as_ref()),
                        (crate::argv::ARGV_ENV, args.as_ref()),
                        (crate::argv::TITLED, "1".as_ref()),
                        (ROLLED_BACK_ENV, reason.as_ref()),
                        (RESCUED_ENV, "1".as_ref()),
                    ];
                    match sys::Guardian::fork(image.as_fd(), &title(), &rescue, GUARDIAN_DEADLINE) {
                        Ok(g) => guardian = Some(g),
                        Err(e) => tracing::warn!("could not start the upgrade's guardian: {e}; executing without one"),
                    }
                }
                let release = guardian.as_ref().map(sys::Guardian::env_value).unwrap_or_default();
                let mut env: Vec<(&str, &std::ffi::OsStr)> = vec![
                    (STATE_ENV, number.as_ref()),
                    (crate::argv::ARGV_ENV, args.as_ref()),
                    (crate::argv::TITLED, "1".as_ref()),
                ];
                if guardian.is_some() {
                    env.push((sys::GUARDIAN_ENV, release.as_ref()));
                }
                sys::exec_image(exe, &title(), &env)
            }
            Err(e) => e,
        };
        // Still here: the exec failed. Nothing of ours may leak into the next child.
        for fd in &fds {
            let _ = sys::set_cloexec(*fd);
        }
        if let Some(guardian) = guardian {
            let _ = sys::set_cloexec(guardian.fd());
            guardian.release();
        }
        if accepted.guardian {
            self.set_parent_death(true, Duration::ZERO);
        }
        Err(UpgradeError::Exec { path: exe.to_path_buf(), source: error })
    }

    /// The state, and the descriptors it names (borrowed from the master).
    fn hand_over(
        &self,
        client: Option<ClientId>,
        handovers: bool,
    ) -> Result<(State, Vec<BorrowedFd<'_>>), UpgradeError> {
        let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
        let number = |fd: BorrowedFd<'_>| fd.as_raw_fd();
        let mut snapshots: Vec<(Rc<Snapshot>, HandedSnapshot)> = Vec::new();
        let mut snapshot_index = |snap: &Rc<Snapshot>| -> usize {
            if let Some(i) = snapshots.iter().position(|(s, _)| Rc::ptr_eq(s, snap)) {
                return i;
            }
            let handed = HandedSnapshot {
                fd: snap.fd().as_raw_fd(),
                source: snap.source.clone(),
                hash: snap.hash,
                name: snap.name.clone(),
                version: snap.version.clone(),
            };
            snapshots.push((snap.clone(), handed));
            snapshots.len() - 1
        };
        let mut services = Vec::new();
        for (i, s) in self.sup.services.iter().enumerate() {
            let snapshot = self.sup.slots.service_slots(ServiceId(i)).next().map(|slot| snapshot_index(&slot.snapshot));
            fds.extend(s.sockets.iter().map(|fd| fd.as_fd()));
            services.push(HandedService {
                name: s.service.name.clone(),
                listen: s.service.listen.to_string(),
                count: s.service.count,
                sockets: s.sockets.iter().map(|fd| number(fd.as_fd())).collect(),
                waiting: s.waiting,
                snapshot,
            });
        }
        let now = self.sup.now();
        let mut workers = Vec::new();
        for w in self.sup.slots.workers() {
            let channel = self.channels.get(&w.id).ok_or(UpgradeError::HandOver("a worker has no channel"))?;
            let role = match self.sup.slots.role(w.id) {
                Some(Role::Serving) => HandedRole::Serving,
                Some(Role::Replacement) => HandedRole::Replacement,
                _ => HandedRole::Retiring,
            };
            let mailbox = self.mailboxes.sender(w.id);
            fds.push(channel.stream.as_fd());
            fds.extend(mailbox);
            workers.push(HandedWorker {
                id: w.id.0,
                service: w.key.service.0,
                slot: w.key.slot,
                pid: w.pid.as_raw(),
                ready: w.readiness == Readiness::Ready,
                role,
                snapshot: snapshot_index(&w.snapshot),
                uptime_ms: w.uptime(now).as_millis() as u64,
                kill_in_ms: w.kill_at.map(|k| k.saturating_duration_since(now).as_millis() as u64),
                retired_ms_ago: w.retired_at.map(|r| now.saturating_duration_since(r).as_millis() as u64),
                channel: channel.stream.as_raw_fd(),
                mailbox: mailbox.map(|m| m.as_raw_fd()),
            });
        }
        let snapshots: Vec<HandedSnapshot> = snapshots.into_iter().map(|(_, h)| h).collect();
        for s in &snapshots {
            let snap = self
                .sup
                .slots
                .workers()
                .map(|w| &w.snapshot)
                .chain(self.sup.slots.slots().map(|s| &s.snapshot))
                .find(|snap| snap.fd().as_raw_fd() == s.fd)
                .ok_or(UpgradeError::HandOver("a snapshot vanished"))?;
            fds.push(snap.fd());
        }
        let pid_lock = self._pid_file.lock_fd();
        fds.push(pid_lock);
        let control = self.control.as_ref().map(|c| c.listener_fd());
        fds.extend(control);
        let admin = self.admin.as_ref().map(|a| a.listener_fd());
        fds.extend(admin);
        let client_fd = client.and_then(|c| self.control.as_ref().and_then(|s| s.client_fd(c.0)));
        fds.extend(client_fd);
        let worker_image = spawn::worker_image();
        fds.extend(worker_image);
        let state = State {
            format: FORMAT,
            protocol: PROTOCOL,
            version: env!("CARGO_PKG_VERSION").to_string(),
            start_dir: self.start_dir.clone(),
            start_args: self.start_args.clone(),
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            started_at_ms: epoch_ms(self.started_at),
            pid_file: self._pid_file.path().to_path_buf(),
            pid_lock: pid_lock.as_raw_fd(),
            control: control.map(|c| c.as_raw_fd()),
            admin: admin.map(|a| a.as_raw_fd()),
            services,
            snapshots,
            workers,
            last_worker_id: self.sup.slots.last_worker_id(),
            client: client_fd.map(|c| c.as_raw_fd()),
            client_handovers: handovers && client_fd.is_some(),
            exits: self.sup.exits.iter().map(|((s, how), n)| (s.clone(), how.clone(), *n)).collect(),
            carried: self.carried.iter().map(|(k, r)| (k.service.0, k.slot, r.clone())).collect(),
            last_reload: self.sup.last_reload.as_ref().map(|r| (epoch_ms(r.at), r.trigger.clone(), r.summary.clone())),
            previous_image: None,
            title: title(),
            tickets: self.sup.tickets.clone(),
            worker_image: worker_image.map(|fd| fd.as_raw_fd()),
        };
        Ok((state, fds))
    }

    /// The new image: puts the handed-over workers, channels, mailboxes, counters and the waiting
    /// client back, then starts the reload chain that moves every worker onto this binary.
    pub(super) fn adopt(&mut self, mut inherited: Inherited, snapshots: &[Rc<Snapshot>]) -> anyhow::Result<()> {
        let state = inherited.state.clone();
        let now = self.sup.now();
        let ms = Duration::from_millis;
        for w in &state.workers {
            let id = WorkerId(w.id);
            let snapshot = snapshots.get(w.snapshot).context("a worker's snapshot was not handed over")?.clone();
            let ready = if w.ready { Readiness::Ready } else { Readiness::Starting };
            let serving_ready = w.ready && w.role == HandedRole::Serving;
            let worker = Worker {
                id,
                key: SlotKey { service: ServiceId(w.service), slot: w.slot },
                pid: nix::unistd::Pid::from_raw(w.pid),
                readiness: ready,
                snapshot,
                started: now.checked_sub(ms(w.uptime_ms)).unwrap_or(now),
                kill_at: w.kill_in_ms.map(|k| now + ms(k)),
                error: None,
                retired_at: w.retired_ms_ago.map(|r| now.checked_sub(ms(r)).unwrap_or(now)),
                stall_at: self.sup.timeouts.worker.filter(|_| serving_ready).map(|t| now + t),
                killed: None,
                // The page stayed with the previous image: the watchdog of an adopted worker
                // cannot say which callback it is stuck in.
                watch: None,
                // The next heartbeat says; the chain this upgrade starts replaces it anyway.
                messages: 0,
                rss_bytes: 0,
                recycled: None,
                handing_over_to: None,
                handover_grace: Duration::ZERO,
            };
            let role = match w.role {
                HandedRole::Serving => Role::Serving,
                HandedRole::Replacement => Role::Replacement,
                HandedRole::Retiring => Role::Retiring,
            };
            self.sup.slots.adopt(worker, role).map_err(|e| anyhow::anyhow!("worker {}: {e}", w.pid))?;
            let stream = std::os::unix::net::UnixStream::from(inherited.fd(w.channel)?);
            stream.set_nonblocking(true)?;
            let mut channel = MasterChannel::new(stream).map_stream(mio::net::UnixStream::from_std);
            // The hellos were exchanged with the previous image.
            channel.peer_protocol = Some(state.protocol);
            let token = Token(WORKER_TOKEN_BASE + w.id as usize);
            self.poll.registry().register(&mut channel.stream, token, Interest::READABLE)?;
            self.channels.insert(id, channel);
            if let Some(m) = w.mailbox {
                self.mailboxes.adopt(id, inherited.fd(m)?);
            }
        }
        self.sup.slots.skip_worker_ids(state.last_worker_id);
        self.sup.phase = Phase::Running;
        for (service, how, n) in state.exits {
            self.sup.exits.insert((service, how), n);
        }
        for (service, slot, report) in state.carried {
            self.carried.insert(SlotKey { service: ServiceId(service), slot }, report);
        }
        self.sup.tickets = state.tickets.clone();
        self.sup.last_reload =
            state.last_reload.map(|(at, trigger, summary)| ReloadRecord { at: UNIX_EPOCH + ms(at), trigger, summary });
        self.started_at = UNIX_EPOCH + ms(state.started_at_ms);
        if let Some(admin) = state.admin {
            let fd = inherited.fd(admin)?;
            let server =
                super::admin::AdminServer::adopt(fd, self.poll.registry(), super::ADMIN, super::ADMIN_TOKEN_BASE)?;
            self.admin = Some(server);
        }
        let client = match (state.client, self.control.as_mut()) {
            (Some(fd), Some(control)) => Some(ClientId(control.adopt_client(inherited.fd(fd)?, self.poll.registry())?)),
            _ => None,
        };
        self.notifier.adopted();
        // From here on this image runs its loop: it does not go back any more, and the
        // upgrade's guardian (if any) can go.
        disarm_rollback();
        if let Some(guardian) = GUARDIAN.lock().unwrap_or_else(|e| e.into_inner()).take() {
            guardian.release();
        }
        if inherited.rescued {
            // The workers outlived the master's process: they are not this process's children.
            for w in &state.workers {
                let token = Token(WORKER_TOKEN_BASE + w.id as usize);
                self.sup.procs.adopt_foreign(nix::unistd::Pid::from_raw(w.pid), self.poll.registry(), token);
            }
        } else {
            // Same process, same children: they die with it again.
            self.set_parent_death(true, Duration::ZERO);
        }
        if let Some(reason) = inherited.rolled_back.take() {
            let how = if inherited.rescued {
                "the upgrade's guardian took the master over: it (pid {pid})"
            } else {
                "the master (pid {pid})"
            };
            let how = how.replace("{pid}", &std::process::id().to_string());
            tracing::error!(workers = state.workers.len(), pid = std::process::id(), "upgrade failed: the new binary failed before it was ready ({reason}); back on this binary ({how}), every worker kept");
            if let Some(client) = client {
                let message = format!(
                    "upgrade failed: the new binary failed before it was ready ({reason}); {how} went back to the previous binary and goes on"
                );
                self.answer_all(&[client], &Answer::Error { message });
            }
            return Ok(());
        }
        tracing::info!(from = %state.version, to = %env!("CARGO_PKG_VERSION"), workers = state.workers.len(), pid = std::process::id(), "upgraded: this binary took the master over; replacing every worker");
        // `host upgrade --handovers`: the answer waits for the chain's hand-overs, as a reload's.
        if let Some(client) = client.filter(|_| state.client_handovers) {
            self.sup.answer_after_handovers(client);
        }
        self.sup.request_reload(true, super::reload::state::Trigger::Upgrade, client);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Service;

    fn service(name: &str, listen: &str, count: u32) -> ServiceConfig {
        ServiceConfig {
            service: Service::for_tests(name, "http", listen, count),
            reloadable: true,
            user: None,
            group: None,
        }
    }

    fn state() -> State {
        State {
            format: FORMAT,
            protocol: PROTOCOL,
            version: "0".into(),
            start_dir: "/".into(),
            start_args: Vec::new(),
            cwd: "/".into(),
            started_at_ms: 0,
            pid_file: "/tmp/h.pid".into(),
            pid_lock: 3,
            control: None,
            admin: None,
            services: vec![HandedService {
                name: "web".into(),
                listen: "127.0.0.1:4242".parse().unwrap(),
                count: 2,
                sockets: vec![5, 6],
                waiting: false,
                snapshot: Some(0),
            }],
            snapshots: Vec::new(),
            workers: Vec::new(),
            last_worker_id: 2,
            client: None,
            client_handovers: false,
            exits: Vec::new(),
            carried: Vec::new(),
            last_reload: None,
            previous_image: None,
            title: String::new(),
            tickets: Default::default(),
            worker_image: Some(40),
        }
    }

    #[test]
    fn the_same_services_are_accepted_and_others_refused_with_the_reason() {
        let s = state();
        assert_eq!(s.check(&[service("web", "127.0.0.1:4242", 2)]), Ok(()));
        assert_eq!(s.check(&[service("web", "127.0.0.1:0", 2)]), Ok(()), "an OS-chosen port takes the bound one");
        let err = s.check(&[service("web", "127.0.0.1:4242", 3)]).unwrap_err();
        assert!(err.contains("3 workers now, 2 running"), "{err}");
        let err = s.check(&[service("api", "127.0.0.1:4242", 2)]).unwrap_err();
        assert!(err.contains("is now api"), "{err}");
        let err = s.check(&[service("web", "127.0.0.1:8080", 2)]).unwrap_err();
        assert!(err.contains("listens on 127.0.0.1:8080"), "{err}");
        let err =
            State { protocol: PROTOCOL + 1, ..state() }.check(&[service("web", "127.0.0.1:4242", 2)]).unwrap_err();
        assert!(err.contains("worker protocol"), "{err}");
    }

    #[test]
    fn the_state_round_trips_through_a_sealed_memfd() {
        let json = serde_json::to_vec(&state()).unwrap();
        let fd = sys::sealed_memfd("test-state", &mut &json[..]).unwrap();
        let back = read_state(&fd).unwrap();
        assert_eq!(back.services[0].sockets, vec![5, 6]);
        // The worker binary's descriptor crosses the exec (and is kept for a rollback) like the rest.
        assert_eq!(back.worker_image, Some(40));
        assert_eq!(back.fds(), vec![3, 40, 5, 6]);
        // A state of an older binary has none.
        let mut older = serde_json::to_value(state()).unwrap();
        older.as_object_mut().unwrap().remove("worker_image");
        let older: State = serde_json::from_value(older).unwrap();
        assert_eq!(older.worker_image, None);
        let other = serde_json::to_vec(&serde_json::json!({ "format": 99 })).unwrap();
        let fd = sys::sealed_memfd("test-state", &mut &other[..]).unwrap();
        assert!(read_state(&fd).unwrap_err().to_string().contains("format"));
    }

    #[test]
    fn a_missing_or_non_executable_binary_is_refused() {
        let dir = std::env::temp_dir().join(format!("host-upgrade-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("host");
        assert!(matches!(check_binary(&path), Err(UpgradeError::Missing(_))));
        std::fs::write(&path, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(check_binary(&path), Err(UpgradeError::NotExecutable(_))));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_binary(&path).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A script at `dir/name` with `body`, and the state to check.
    fn script(name: &str, body: &str) -> (PathBuf, OwnedFd) {
        let dir = std::env::temp_dir().join(format!("host-upgrade-check-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("host");
        let new = dir.join("host.new");
        std::fs::write(&new, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&new, &path).unwrap();
        let json = serde_json::to_vec(&state()).unwrap();
        (path, sys::sealed_memfd("test-state", &mut &json[..]).unwrap())
    }

    // Issue 20 item 1: the check is bounded with its output. A grandchild that keeps stderr
    // open delays nothing (it used to hold the master until the grandchild ended); a check that
    // hangs is killed at the timeout.
    #[test]
    fn the_check_is_bounded_with_its_output_and_says_the_reason() {
        let (path, state) = script("grandchild", "sleep 30 &\necho 'error: this build says no' >&2\nexit 1");
        let started = Instant::now();
        let err = dry_run(&path, state.as_fd(), Path::new("/"), Duration::from_secs(20)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "waited {:?} for the grandchild", started.elapsed());
        assert!(matches!(&err, UpgradeError::Refused { reason, .. } if reason == "this build says no"), "{err}");
        let (path, state) = script("hangs", "exec sleep 30");
        let err = dry_run(&path, state.as_fd(), Path::new("/"), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, UpgradeError::NoAnswer { .. }), "{err}");
        let (path, state) = script("accepts", "exit 0");
        dry_run(&path, state.as_fd(), Path::new("/"), Duration::from_secs(20)).unwrap();
    }
}
