//! The master: binds every listening socket, starts and watches the workers, replaces any that
//! dies, runs the reload chain, and stops them all on SIGINT (now) or SIGTERM (after draining).
//! One thread, one mio loop: signals arrive through a signalfd, workers talk over their control
//! sockets. The master never loads a plugin: it copies and probes plugin files (`snapshot`).

mod backoff;
mod reload;
mod snapshot;
mod spawn;
mod table;

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mio::net::UnixStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{self, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use self::reload::{Chain, Outcome, Reloader, Request, SlotKey, Step};
use self::snapshot::{RuntimeDir, Snapshot};
use self::table::{Readiness, Role, Slot, Table, Worker};
use crate::config::{self, Service, WorkerSpec};
use crate::ctl::{self, ToMaster, ToWorker};
use crate::{plugin, sys};

const SIGNALS: Token = Token(0);
/// Worker tokens are unique ids above this.
const WORKER_TOKEN_BASE: usize = 16;

/// Where the master is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for every first worker's "ready"; a worker that fails now fails the start.
    Starting,
    Running,
    /// Workers were told to stop (or drain); the master exits when the last one is reaped.
    Stopping,
}

struct ServiceState {
    service: Service,
    /// The plugin file as found in the plugin directories (snapshots are copies of it).
    source: PathBuf,
    /// The name the plugin must report (None when the service names it by path).
    expected_name: Option<String>,
    /// One SO_REUSEPORT socket per slot, held for the master's whole life.
    sockets: Vec<OwnedFd>,
    /// The snapshot a reload chain under way is moving this service to.
    candidate: Option<Rc<Snapshot>>,
}

pub struct Master {
    poll: Poll,
    signals: SignalFd,
    services: Vec<ServiceState>,
    table: Table,
    phase: Phase,
    /// Why the start failed, once a first worker failed.
    start_error: Option<String>,
    reloader: Reloader,
    /// When the current chain step (one slot's replacement) began.
    step_started: Instant,
    chain_started: Instant,
    /// The outcome of the last reload, for the log and status.
    last_reload: Option<String>,
    // Dropped last: removes the snapshots.
    runtime: RuntimeDir,
}

/// Runs the master in the foreground until it is stopped.
pub fn run(services: Vec<Service>, plugin_dirs: Vec<PathBuf>) -> anyhow::Result<()> {
    let plugin_dirs = if plugin_dirs.is_empty() {
        plugin::default_dirs()
    } else {
        plugin_dirs
    };
    let runtime = RuntimeDir::create().context("could not create the runtime directory")?;
    let mut states = Vec::new();
    let mut slots = Vec::new();
    for (index, service) in services.into_iter().enumerate() {
        let source = plugin::find(&service.plugin, &plugin_dirs)?;
        let expected_name = (!service.plugin.contains('/')).then(|| service.plugin.clone());
        let snap = Rc::new(snapshot::take(&source, &runtime, expected_name.as_deref())?);
        tracing::info!(service = %service.name, plugin = %snap.name, version = %snap.version, hash = %snap.short_hash(), path = %source.display(), "plugin checked");
        let (bound, sockets) = sys::listen_reuseport(service.listen, service.count as usize)
            .with_context(|| format!("could not listen on {}", service.listen))?;
        tracing::info!(service = %service.name, address = %bound, workers = service.count, "listening");
        slots.extend((0..service.count).map(|slot| Slot {
            key: SlotKey {
                service: index,
                slot,
            },
            snapshot: snap.clone(),
            failures: 0,
            restart_at: None,
        }));
        let service = Service {
            listen: bound,
            ..service
        };
        states.push(ServiceState {
            service,
            source,
            expected_name,
            sockets,
            candidate: None,
        });
    }
    let mut master = Master::new(states, slots, runtime)?;
    master.run_loop()
}

impl Master {
    fn new(
        services: Vec<ServiceState>,
        slots: Vec<Slot>,
        runtime: RuntimeDir,
    ) -> anyhow::Result<Self> {
        sys::ignore_sigpipe()?;
        let signals = sys::signal_fd(&[
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGCHLD,
            Signal::SIGHUP,
            Signal::SIGQUIT,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGIO,
        ])?;
        let poll = Poll::new()?;
        poll.registry().register(
            &mut SourceFd(&signals.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        let table = Table::new(slots);
        Ok(Master {
            poll,
            signals,
            services,
            table,
            phase: Phase::Starting,
            start_error: None,
            reloader: Reloader::default(),
            step_started: Instant::now(),
            chain_started: Instant::now(),
            last_reload: None,
            runtime,
        })
    }

    fn run_loop(&mut self) -> anyhow::Result<()> {
        sys::set_thread_name("host: master");
        let keys: Vec<SlotKey> = self.table.slots.iter().map(|s| s.key).collect();
        for key in keys {
            self.spawn(key, Role::Serving);
        }
        let mut events = Events::with_capacity(64);
        loop {
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("the master's poll failed"),
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.read_signals(),
                    Token(id) => self.read_control(id),
                }
            }
            self.reap_children();
            self.run_deadlines();
            if self.phase == Phase::Starting && self.table.all_ready() {
                self.phase = Phase::Running;
                tracing::info!(workers = self.table.slots.len(), "host ready");
            }
            if self.phase == Phase::Stopping && self.table.workers.is_empty() {
                tracing::info!("all workers stopped; master exits");
                return match self.start_error.take() {
                    Some(e) => Err(anyhow::anyhow!(e)),
                    None => Ok(()),
                };
            }
        }
    }

    /// Starts a worker for `key` running the slot's snapshot (or, for a replacement, the
    /// service's reload candidate). Returns false when the process could not be started.
    fn spawn(&mut self, key: SlotKey, role: Role) -> bool {
        let state = &self.services[key.service];
        let Some(slot) = self.table.slot_mut(key) else {
            return false;
        };
        slot.restart_at = None;
        let snap = match (role, &state.candidate) {
            (Role::Replacement, Some(c)) => c.clone(),
            _ => slot.snapshot.clone(),
        };
        let spec = WorkerSpec {
            service: state.service.name.clone(),
            slot: key.slot,
            plugin_path: snap.path.clone(),
            plugin_config: state.service.plugin_config.clone(),
            limits: state.service.limits,
        };
        let label = format!("{} {}", snap.name, snap.version);
        match spawn::spawn_worker(&spec, &label, &state.sockets[key.slot as usize]) {
            Ok(spawned) => {
                let id = self.table.next_id(WORKER_TOKEN_BASE);
                let mut control = UnixStream::from_std(spawned.control);
                if let Err(e) =
                    self.poll
                        .registry()
                        .register(&mut control, Token(id), Interest::READABLE)
                {
                    tracing::error!(service = %spec.service, slot = key.slot, "could not watch a worker: {e}");
                }
                tracing::info!(service = %spec.service, slot = key.slot, pid = spawned.pid.as_raw(), hash = %snap.short_hash(), ?role, "worker started");
                self.table.workers.push(Worker {
                    id,
                    key,
                    pid: spawned.pid,
                    control,
                    control_buf: Vec::new(),
                    role,
                    readiness: Readiness::Starting,
                    snapshot: snap,
                    started: Instant::now(),
                    kill_at: Some(Instant::now() + config::START_TIMEOUT),
                    error: None,
                });
                true
            }
            Err(e) => {
                tracing::error!(service = %spec.service, slot = key.slot, "{e}");
                if role == Role::Serving {
                    if let Some(slot) = self.table.slot_mut(key) {
                        slot.failures += 1;
                        slot.restart_at = Some(
                            Instant::now()
                                + backoff::restart_delay(slot.failures)
                                    .max(Duration::from_millis(100)),
                        );
                    }
                }
                false
            }
        }
    }

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => {} // reaped after every poll
                Signal::SIGINT => self.stop(false),
                Signal::SIGTERM => self.stop(true),
                Signal::SIGUSR1 => self.request_reload(false, "SIGUSR1"),
                Signal::SIGQUIT | Signal::SIGHUP => self.request_reload(true, &format!("{sig}")),
                other => tracing::warn!(signal = %other, "signal not handled yet; ignored"),
            }
        }
    }

    /// Tells every worker to stop (graceful: drain first), with a deadline after which it is killed.
    fn stop(&mut self, graceful: bool) {
        if self.phase == Phase::Stopping {
            if !graceful {
                tracing::info!("stopping now");
                self.retire_all(false);
            }
            return;
        }
        tracing::info!(graceful, "stopping");
        self.phase = Phase::Stopping;
        if let (Some(chain), _) = self.reloader.finish() {
            tracing::warn!(reason = %chain.request.reason, "reload abandoned: the master is stopping");
        }
        for slot in &mut self.table.slots {
            slot.restart_at = None;
        }
        self.retire_all(graceful);
    }

    fn retire_all(&mut self, graceful: bool) {
        let ids: Vec<usize> = self.table.workers.iter().map(|w| w.id).collect();
        for id in ids {
            self.retire(id, graceful);
        }
    }

    /// Asks one worker to go: drain (graceful) or stop now, killed at the deadline either way.
    fn retire(&mut self, id: usize, graceful: bool) {
        let Some(w) = self.table.by_id(id) else {
            return;
        };
        let (msg, kill_after) = if graceful {
            (
                ToWorker::Drain {
                    timeout_ms: config::DRAIN_TIMEOUT.as_millis() as u64,
                },
                config::DRAIN_TIMEOUT + config::KILL_TIMEOUT,
            )
        } else {
            (ToWorker::Stop, config::KILL_TIMEOUT)
        };
        if let Err(e) = (&w.control).write_all_msg(&msg) {
            // It is exiting already; the kill deadline still applies.
            tracing::debug!(pid = w.pid.as_raw(), "could not message a worker: {e}");
        }
        w.role = Role::Retiring;
        let kill_at = Instant::now() + kill_after;
        w.kill_at = Some(w.kill_at.map_or(kill_at, |k| k.min(kill_at)));
    }

    fn read_control(&mut self, id: usize) {
        let Some(w) = self.table.by_id(id) else {
            return;
        };
        let mut buf = [0u8; 1024];
        loop {
            match w.control.read(&mut buf) {
                Ok(0) => break, // it exited: reaped on SIGCHLD
                Ok(n) => w.control_buf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        for line in ctl::take_lines(&mut w.control_buf) {
            match ToMaster::parse(&line) {
                Some(ToMaster::Ready) => self.worker_ready(id),
                Some(ToMaster::Error(e)) => {
                    if let Some(w) = self.table.by_id(id) {
                        w.error = Some(e);
                    }
                }
                None => tracing::warn!(line = line.trim_end(), "unknown message from a worker"),
            }
        }
    }

    fn worker_ready(&mut self, id: usize) {
        let Some(w) = self.table.by_id(id) else {
            return;
        };
        if w.readiness == Readiness::Ready {
            return;
        }
        w.readiness = Readiness::Ready;
        w.kill_at = None;
        let (key, role, pid, ms) = (w.key, w.role, w.pid.as_raw(), w.uptime().as_millis() as u64);
        let service = &self.services[key.service].service.name;
        tracing::info!(service = %service, slot = key.slot, pid, start_ms = ms, "worker ready");
        if role == Role::Replacement {
            let steps = self
                .reloader
                .chain
                .as_mut()
                .map(|c| c.ready(key))
                .unwrap_or_default();
            for step in steps {
                self.apply(step);
            }
        }
    }

    /// Collects every exited child (`waitpid(WNOHANG)` until none is left).
    fn reap_children(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::ECHILD) => return,
                Ok(status) => status,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("waitpid failed: {e}");
                    return;
                }
            };
            let (pid, how) = match status {
                WaitStatus::Exited(pid, code) => (pid, format!("exit code {code}")),
                WaitStatus::Signaled(pid, sig, core) => (
                    pid,
                    format!("signal {sig}{}", if core { " (core dumped)" } else { "" }),
                ),
                _ => continue,
            };
            let clean = matches!(status, WaitStatus::Exited(_, 0));
            if let Some(w) = self.table.take_by_pid(pid) {
                self.worker_exited(w, clean, &how);
            }
        }
    }

    fn worker_exited(&mut self, mut w: Worker, clean: bool, how: &str) {
        let _ = self.poll.registry().deregister(&mut w.control);
        let key = w.key;
        let service = self.services[key.service].service.name.clone();
        let (pid, lived) = (w.pid.as_raw(), w.uptime());
        let why = w
            .error
            .clone()
            .unwrap_or_else(|| format!("it exited with {how} before it was ready"));
        match w.role {
            Role::Retiring if clean => {
                tracing::info!(service = %service, slot = key.slot, pid, "worker stopped")
            }
            Role::Retiring => {
                tracing::warn!(service = %service, slot = key.slot, pid, "worker stopped with {how}")
            }
            Role::Replacement => {
                tracing::error!(service = %service, slot = key.slot, pid, "replacement worker failed: {why}");
                if let Some(step) = self
                    .reloader
                    .chain
                    .as_mut()
                    .and_then(|c| c.failed(key, &why))
                {
                    self.apply(step);
                }
            }
            Role::Serving => {
                let detail = w
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                tracing::error!(service = %service, slot = key.slot, pid, lived_ms = lived.as_millis() as u64, "worker died with {how}{detail}");
                match self.phase {
                    Phase::Stopping => {}
                    Phase::Starting if w.readiness == Readiness::Starting => {
                        self.start_error = Some(format!(
                            "worker #{} of service {service} could not start: {why}",
                            key.slot
                        ));
                        self.stop(false);
                    }
                    Phase::Starting | Phase::Running => self.schedule_respawn(
                        key,
                        w.readiness == Readiness::Ready && lived >= backoff::MIN_UPTIME,
                    ),
                }
            }
        }
    }

    fn schedule_respawn(&mut self, key: SlotKey, lived_long: bool) {
        if self.table.has_serving(key) {
            return;
        }
        let service = self.services[key.service].service.name.clone();
        let Some(slot) = self.table.slot_mut(key) else {
            return;
        };
        slot.failures = if lived_long { 1 } else { slot.failures + 1 };
        let delay = backoff::restart_delay(slot.failures);
        if delay > Duration::ZERO {
            tracing::warn!(service = %service, slot = key.slot, failures = slot.failures, delay_ms = delay.as_millis() as u64, "worker keeps dying; restarting after a delay");
        }
        slot.restart_at = Some(Instant::now() + delay);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let restarts = self.table.slots.iter().filter_map(|s| s.restart_at);
        let kills = self.table.workers.iter().filter_map(|w| w.kill_at);
        restarts.chain(kills).min()
    }

    fn run_deadlines(&mut self) {
        let now = Instant::now();
        for w in &mut self.table.workers {
            if w.kill_at.is_some_and(|k| k <= now) {
                let service = &self.services[w.key.service].service.name;
                let why = if w.readiness == Readiness::Starting {
                    "was not ready in time"
                } else {
                    "did not stop in time"
                };
                tracing::warn!(service = %service, slot = w.key.slot, pid = w.pid.as_raw(), "worker {why}; killing it");
                if w.readiness == Readiness::Starting && w.error.is_none() {
                    w.error = Some(format!(
                        "it was not ready within {} s",
                        config::START_TIMEOUT.as_secs()
                    ));
                }
                let _ = signal::kill(w.pid, Signal::SIGKILL);
                w.kill_at = None;
            }
        }
        if self.phase == Phase::Stopping {
            return;
        }
        let due: Vec<SlotKey> = self
            .table
            .slots
            .iter()
            .filter(|s| s.restart_at.is_some_and(|t| t <= now))
            .map(|s| s.key)
            .collect();
        for key in due {
            self.spawn(key, Role::Serving);
        }
    }

    /// A reload was asked for (signal, command or watcher).
    fn request_reload(&mut self, graceful: bool, reason: &str) {
        if self.phase != Phase::Running {
            tracing::warn!(
                reason,
                "reload ignored: the master is not running yet (or stopping)"
            );
            return;
        }
        let request = Request {
            graceful,
            reason: reason.to_string(),
            waiters: Vec::new(),
        };
        match self.reloader.trigger(request) {
            Some(request) => self.start_chain(request),
            None => tracing::info!(reason, "reload queued: a reload is under way"),
        }
    }

    /// Checks every service's plugin file again and starts a chain over all slots.
    fn start_chain(&mut self, request: Request) {
        self.chain_started = Instant::now();
        self.step_started = Instant::now();
        tracing::info!(reason = %request.reason, graceful = request.graceful, "reload starting");
        for i in 0..self.services.len() {
            let state = &self.services[i];
            match snapshot::take(&state.source, &self.runtime, state.expected_name.as_deref()) {
                Ok(snap) => self.services[i].candidate = Some(Rc::new(snap)),
                Err(e) => {
                    let slot = SlotKey {
                        service: i,
                        slot: 0,
                    };
                    self.reloader.chain = Some(Chain::new(Vec::new(), request));
                    self.apply(Step::Finished(Outcome::Aborted {
                        slot,
                        replaced: 0,
                        reason: e.to_string(),
                    }));
                    return;
                }
            }
        }
        let keys: Vec<SlotKey> = self.table.slots.iter().map(|s| s.key).collect();
        let mut chain = Chain::new(keys, request);
        let step = chain.first();
        self.reloader.chain = Some(chain);
        self.apply(step);
    }

    fn apply(&mut self, step: Step) {
        match step {
            Step::Start(key) => {
                self.step_started = Instant::now();
                if !self.spawn(key, Role::Replacement) {
                    if let Some(step) = self
                        .reloader
                        .chain
                        .as_mut()
                        .and_then(|c| c.failed(key, "could not start a process"))
                    {
                        self.apply(step);
                    }
                }
            }
            Step::Retire(key) => self.promote(key),
            Step::Finished(outcome) => self.finish_chain(outcome),
        }
    }

    /// The replacement of `key` is ready: it becomes the slot's worker, the old one goes.
    fn promote(&mut self, key: SlotKey) {
        let graceful = self
            .reloader
            .chain
            .as_ref()
            .is_some_and(|c| c.request.graceful);
        let Some(new) = self
            .table
            .workers
            .iter_mut()
            .find(|w| w.key == key && w.role == Role::Replacement)
        else {
            return;
        };
        new.role = Role::Serving;
        let (new_id, new_pid, new_snap) = (new.id, new.pid.as_raw(), new.snapshot.clone());
        let old: Vec<(usize, i32, String)> = self
            .table
            .workers
            .iter()
            .filter(|w| w.key == key && w.role == Role::Serving && w.id != new_id)
            .map(|w| (w.id, w.pid.as_raw(), w.snapshot.short_hash()))
            .collect();
        if let Some(slot) = self.table.slot_mut(key) {
            slot.snapshot = new_snap.clone();
            slot.failures = 0;
        }
        let service = self.services[key.service].service.name.clone();
        let old_pids: Vec<i32> = old.iter().map(|o| o.1).collect();
        let old_hash = old
            .first()
            .map(|o| o.2.clone())
            .unwrap_or_else(|| "-".into());
        tracing::info!(
            service = %service, slot = key.slot, old_pid = ?old_pids, new_pid, old_hash = %old_hash, new_hash = %new_snap.short_hash(),
            step_ms = self.step_started.elapsed().as_millis() as u64, "reload step: slot replaced"
        );
        for (id, _, _) in old {
            self.retire(id, graceful);
        }
    }

    fn finish_chain(&mut self, outcome: Outcome) {
        let ms = self.chain_started.elapsed().as_millis() as u64;
        let summary = match &outcome {
            Outcome::Done { replaced } => {
                tracing::info!(replaced, total_ms = ms, "reload done");
                format!("done: {replaced} workers replaced in {ms} ms")
            }
            Outcome::Aborted {
                slot,
                replaced,
                reason,
            } => {
                let service = &self.services[slot.service].service.name;
                tracing::error!(service = %service, slot = slot.slot, replaced, "reload aborted: {reason}; the old workers keep serving");
                format!("aborted at {service} #{}: {reason}", slot.slot)
            }
        };
        self.last_reload = Some(summary);
        for state in &mut self.services {
            state.candidate = None;
        }
        let in_use: Vec<PathBuf> = self
            .table
            .slots
            .iter()
            .map(|s| s.snapshot.path.clone())
            .chain(self.table.workers.iter().map(|w| w.snapshot.path.clone()))
            .collect();
        let refs: Vec<&std::path::Path> = in_use.iter().map(PathBuf::as_path).collect();
        self.runtime.remove_unused(&refs);
        let (_, next) = self.reloader.finish();
        if let Some(next) = next {
            self.start_chain(next);
        }
    }
}

trait WriteMsg {
    fn write_all_msg(self, msg: &ToWorker) -> io::Result<()>;
}

impl WriteMsg for &UnixStream {
    fn write_all_msg(self, msg: &ToWorker) -> io::Result<()> {
        use std::io::Write;
        let mut s = self;
        s.write_all(msg.encode().as_bytes())
    }
}
