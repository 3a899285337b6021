//! The master's process layer: starting workers, signalling and reaping them, the clock and the
//! plugin lookup, behind one trait. The supervisor only talks to this trait, so its scenarios
//! ("a serving worker dies while its replacement starts") are unit tests with [`fake`] processes.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::snapshot::Snapshot;
use super::spawn::{self, SpawnError};
use crate::config::WorkerSpec;
use crate::ctl::MasterChannel;
use crate::plugin;
use crate::sys::{self, WatchPage};

/// A started worker: its pid, the master's end of its channel and its watch page (None: the
/// fake processes of unit tests may have none).
pub struct Spawned {
    pub pid: Pid,
    pub channel: MasterChannel<UnixStream>,
    pub watch: Option<WatchPage>,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// `exit code N` or `signal SIGX`, for logs and the exit statistics.
    pub how: String,
    /// Exit code 0.
    pub clean: bool,
}

pub trait Processes {
    /// Starts a worker for `spec` on `listener` (one slot's socket, which the master keeps),
    /// loading `snapshot`; `label` goes into its process title.
    fn spawn_worker(
        &mut self,
        spec: &WorkerSpec,
        label: &str,
        listener: BorrowedFd<'_>,
        snapshot: &Snapshot,
    ) -> Result<Spawned, SpawnError>;
    fn kill(&mut self, pid: Pid, signal: Signal);
    /// The exit of `pid` if it exited (never blocks).
    fn reap(&mut self, pid: Pid) -> Option<Exit>;
    fn now(&self) -> Instant;
    /// The file of plugin `name` in `dirs` (or `name` itself when it is a path).
    fn find_plugin(&self, name: &str, dirs: &[PathBuf]) -> Option<PathBuf>;
}

/// Real processes: fork + exec of the host binary.
pub struct OsProcesses {
    /// Arguments every worker gets after `worker` (the log level and format).
    pub worker_args: Vec<String>,
    /// Workers that are not this process's children: adopted by a master that took over from
    /// a binary upgrade's guardian (their parent died). Watched through a pidfd (None: already
    /// gone when adopted); their exit status is not ours to read.
    pub foreign: HashMap<Pid, Option<OwnedFd>>,
}

impl OsProcesses {
    /// Watches `pid`, a worker this process did not start: its end wakes `registry` with
    /// `token` and [`Processes::reap`] reports it.
    pub fn adopt_foreign(&mut self, pid: Pid, registry: &mio::Registry, token: mio::Token) {
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => {
                let raw = fd.as_raw_fd();
                if let Err(e) = registry.register(&mut mio::unix::SourceFd(&raw), token, mio::Interest::READABLE) {
                    tracing::warn!(pid = pid.as_raw(), "could not watch an adopted worker: {e}");
                }
                Some(fd)
            }
            Err(e) => {
                tracing::warn!(pid = pid.as_raw(), "an adopted worker is gone already: {e}");
                None
            }
        };
        self.foreign.insert(pid, pidfd);
    }
}

impl Processes for OsProcesses {
    fn spawn_worker(
        &mut self,
        spec: &WorkerSpec,
        label: &str,
        listener: BorrowedFd<'_>,
        snapshot: &Snapshot,
    ) -> Result<Spawned, SpawnError> {
        let spawned = spawn::spawn_worker(spec, label, listener, snapshot.fd(), &self.worker_args)?;
        Ok(Spawned { pid: spawned.pid, channel: spawned.control, watch: Some(spawned.watch) })
    }

    fn kill(&mut self, pid: Pid, signal: Signal) {
        let _ = nix::sys::signal::kill(pid, signal);
    }

    /// `waitpid(pid, WNOHANG)`, never `waitpid(-1)`: the preparer thread waits for its own probe
    /// processes, and reaping one of those here would leave it with ECHILD.
    fn reap(&mut self, pid: Pid) -> Option<Exit> {
        if let Some(pidfd) = self.foreign.get(&pid) {
            if pidfd.as_ref().is_some_and(|fd| !sys::pidfd_ended(fd.as_fd())) {
                return None;
            }
            // Its pidfd leaves the poll as it closes.
            self.foreign.remove(&pid);
            return Some(Exit {
                how: "exit (status unknown: adopted, not a child of this master)".into(),
                clean: false,
            });
        }
        let status = loop {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        match status {
            Ok(WaitStatus::Exited(_, code)) => Some(Exit { how: format!("exit code {code}"), clean: code == 0 }),
            Ok(WaitStatus::Signaled(_, sig, core)) => {
                let how = format!("signal {sig}{}", if core { " (core dumped)" } else { "" });
                Some(Exit { how, clean: false })
            }
            Ok(_) => None,
            Err(e) => {
                // ECHILD: not our child any more (cannot happen for a worker we started).
                tracing::error!(pid = pid.as_raw(), "waitpid failed: {e}");
                Some(Exit { how: format!("waitpid error {e}"), clean: false })
            }
        }
    }

    fn now(&self) -> Instant {
        Instant::now()
    }

    fn find_plugin(&self, name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
        plugin::find(name, dirs).ok()
    }
}

/// Processes that exist only in a table, for unit tests of the supervisor.
#[cfg(test)]
pub mod fake {
    use std::collections::{BTreeMap, HashMap};
    use std::time::Duration;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Started {
        pub pid: Pid,
        pub service: String,
        pub slot: u32,
        pub hash: u64,
        /// Started to await a hand-over (`WorkerSpec::await_handover`).
        pub await_handover: bool,
    }

    pub struct FakeProcesses {
        pub now: Instant,
        next_pid: i32,
        /// Every process started, in order.
        pub started: Vec<Started>,
        /// Processes that exited and are not reaped yet.
        exited: BTreeMap<Pid, Exit>,
        pub signals: Vec<(Pid, Signal)>,
        /// The next spawns fail.
        pub refuse_spawn: bool,
        pub plugins: HashMap<String, PathBuf>,
        /// The workers' ends of their channels (kept open, like a live worker).
        peers: Vec<UnixStream>,
        /// The workers' mappings of their watch pages (a test plays a worker stuck in a callback).
        pub watches: HashMap<Pid, WatchPage>,
    }

    impl Default for FakeProcesses {
        fn default() -> Self {
            FakeProcesses {
                now: Instant::now(),
                next_pid: 100,
                started: Vec::new(),
                exited: BTreeMap::new(),
                signals: Vec::new(),
                refuse_spawn: false,
                plugins: HashMap::new(),
                peers: Vec::new(),
                watches: HashMap::new(),
            }
        }
    }

    impl FakeProcesses {
        /// Makes `pid` exit (reaped at the next `reap`).
        pub fn exit(&mut self, pid: Pid, how: &str) {
            self.exited.insert(pid, Exit { how: how.to_string(), clean: how == "exit code 0" });
        }

        pub fn advance(&mut self, by: Duration) {
            self.now += by;
        }

        pub fn last(&self) -> &Started {
            self.started.last().expect("a process was started")
        }
    }

    impl Processes for FakeProcesses {
        fn spawn_worker(
            &mut self,
            spec: &WorkerSpec,
            _label: &str,
            _listener: BorrowedFd<'_>,
            snapshot: &Snapshot,
        ) -> Result<Spawned, SpawnError> {
            if self.refuse_spawn {
                return Err(SpawnError::Spawn(std::io::Error::other("fork refused")));
            }
            self.next_pid += 1;
            let pid = Pid::from_raw(self.next_pid);
            let (ours, theirs) = UnixStream::pair().expect("socketpair");
            self.peers.push(theirs);
            self.started.push(Started {
                pid,
                service: spec.service.clone(),
                slot: spec.slot,
                hash: snapshot.hash,
                await_handover: spec.await_handover,
            });
            let (watch, fd) = WatchPage::create("fake-watch").expect("memfd");
            self.watches.insert(pid, WatchPage::map(std::os::fd::AsFd::as_fd(&fd)).expect("mmap"));
            Ok(Spawned { pid, channel: MasterChannel::new(ours), watch: Some(watch) })
        }

        fn kill(&mut self, pid: Pid, signal: Signal) {
            self.signals.push((pid, signal));
            if signal == Signal::SIGKILL {
                self.exit(pid, "signal SIGKILL");
            }
        }

        fn reap(&mut self, pid: Pid) -> Option<Exit> {
            self.exited.remove(&pid)
        }

        fn now(&self) -> Instant {
            self.now
        }

        fn find_plugin(&self, name: &str, _dirs: &[PathBuf]) -> Option<PathBuf> {
            self.plugins.get(name).cloned()
        }
    }
}
