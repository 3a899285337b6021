//! The master: binds every listening socket, starts and watches the workers, replaces any that
//! dies, and stops them all on SIGINT (now) or SIGTERM (after draining). One thread, one mio
//! loop: signals arrive through a signalfd, workers talk over their control sockets.

mod backoff;
mod spawn;

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mio::net::UnixStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::{self, Signal};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub use self::spawn::probe_plugin;
use crate::config::{self, Service, WorkerSpec};
use crate::ctl::{self, ToMaster, ToWorker};
use crate::{plugin, sys};

const SIGNALS: Token = Token(0);
const SLOT_TOKEN_BASE: usize = 1;

/// Where the master is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for every first worker's "ready"; a worker that fails now fails the start.
    Starting,
    Running,
    /// Workers were told to stop (or drain); the master exits when the last one is reaped.
    Stopping,
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    Starting,
    Ready,
    Stopping,
}

struct Worker {
    pid: Pid,
    control: UnixStream,
    control_buf: Vec<u8>,
    state: WorkerState,
    started: Instant,
    /// SIGKILL at this time (start timeout, or stop/drain timeout).
    kill_at: Option<Instant>,
    /// What the worker said before it exited, if it could not start.
    error: Option<String>,
}

/// One worker slot of a service; successive workers of a slot share its listening socket.
struct Slot {
    service: usize,
    slot: u32,
    worker: Option<Worker>,
    /// Quick deaths in a row (see `backoff`).
    failures: u32,
    restart_at: Option<Instant>,
}

struct ServiceState {
    service: Service,
    plugin_path: PathBuf,
    plugin_label: String,
    /// One SO_REUSEPORT socket per slot, held for the master's whole life.
    sockets: Vec<OwnedFd>,
}

pub struct Master {
    poll: Poll,
    signals: SignalFd,
    services: Vec<ServiceState>,
    slots: Vec<Slot>,
    phase: Phase,
    /// Why the start failed, once a first worker failed.
    start_error: Option<String>,
}

/// Runs the master in the foreground until it is stopped.
pub fn run(services: Vec<Service>, plugin_dirs: Vec<PathBuf>) -> anyhow::Result<()> {
    let plugin_dirs = if plugin_dirs.is_empty() {
        plugin::default_dirs()
    } else {
        plugin_dirs
    };
    let mut states = Vec::new();
    for service in services {
        let plugin_path = plugin::find(&service.plugin, &plugin_dirs)?;
        let report = probe_plugin(&plugin_path)?;
        tracing::info!(service = %service.name, plugin = %report.summary, path = %plugin_path.display(), "plugin checked");
        let plugin_label = report
            .summary
            .split(" (")
            .next()
            .unwrap_or(&service.plugin)
            .to_string();
        let (bound, sockets) = sys::listen_reuseport(service.listen, service.count as usize)
            .with_context(|| format!("could not listen on {}", service.listen))?;
        tracing::info!(service = %service.name, address = %bound, workers = service.count, "listening");
        let service = Service {
            listen: bound,
            ..service
        };
        states.push(ServiceState {
            service,
            plugin_path,
            plugin_label,
            sockets,
        });
    }
    let mut master = Master::new(states)?;
    master.run_loop()
}

impl Master {
    fn new(services: Vec<ServiceState>) -> anyhow::Result<Self> {
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
        let slots = services
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                (0..s.service.count).map(move |slot| Slot {
                    service: i,
                    slot,
                    worker: None,
                    failures: 0,
                    restart_at: None,
                })
            })
            .collect();
        Ok(Master {
            poll,
            signals,
            services,
            slots,
            phase: Phase::Starting,
            start_error: None,
        })
    }

    fn run_loop(&mut self) -> anyhow::Result<()> {
        sys::set_thread_name("host: master");
        for index in 0..self.slots.len() {
            self.spawn_slot(index);
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
                    Token(t) => self.read_control(t - SLOT_TOKEN_BASE),
                }
            }
            self.reap_children();
            self.run_deadlines();
            if self.phase == Phase::Starting
                && self.slots.iter().all(|s| {
                    s.worker
                        .as_ref()
                        .is_some_and(|w| w.state == WorkerState::Ready)
                })
            {
                self.phase = Phase::Running;
                let workers = self.slots.len();
                tracing::info!(workers, "host ready");
            }
            if self.phase == Phase::Stopping && self.slots.iter().all(|s| s.worker.is_none()) {
                tracing::info!("all workers stopped; master exits");
                return match self.start_error.take() {
                    Some(e) => Err(anyhow::anyhow!(e)),
                    None => Ok(()),
                };
            }
        }
    }

    fn spawn_slot(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        slot.restart_at = None;
        let state = &self.services[slot.service];
        let spec = WorkerSpec {
            service: state.service.name.clone(),
            slot: slot.slot,
            plugin_path: state.plugin_path.clone(),
            plugin_config: state.service.plugin_config.clone(),
            limits: state.service.limits,
        };
        match spawn::spawn_worker(
            &spec,
            &state.plugin_label,
            &state.sockets[slot.slot as usize],
        ) {
            Ok(spawned) => {
                let mut control = UnixStream::from_std(spawned.control);
                if let Err(e) = self.poll.registry().register(
                    &mut control,
                    Token(index + SLOT_TOKEN_BASE),
                    Interest::READABLE,
                ) {
                    tracing::error!(service = %spec.service, slot = spec.slot, "could not watch a worker: {e}");
                }
                tracing::info!(service = %spec.service, slot = spec.slot, pid = spawned.pid.as_raw(), "worker started");
                slot.worker = Some(Worker {
                    pid: spawned.pid,
                    control,
                    control_buf: Vec::new(),
                    state: WorkerState::Starting,
                    started: Instant::now(),
                    kill_at: Some(Instant::now() + config::START_TIMEOUT),
                    error: None,
                });
            }
            Err(e) => {
                tracing::error!(service = %spec.service, slot = spec.slot, "{e}");
                slot.failures += 1;
                slot.restart_at = Some(
                    Instant::now()
                        + backoff::restart_delay(slot.failures).max(Duration::from_millis(100)),
                );
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
                other => tracing::warn!(signal = %other, "signal not handled yet; ignored"),
            }
        }
    }

    /// Tells every worker to stop (graceful: drain first), with a deadline after which it is killed.
    fn stop(&mut self, graceful: bool) {
        if self.phase == Phase::Stopping {
            if !graceful {
                // A second SIGINT during a graceful stop: stop now.
                tracing::info!("stopping now");
                self.signal_workers(&ToWorker::Stop, config::KILL_TIMEOUT);
            }
            return;
        }
        tracing::info!(graceful, "stopping");
        self.phase = Phase::Stopping;
        if graceful {
            let drain_ms = config::DRAIN_TIMEOUT.as_millis() as u64;
            self.signal_workers(
                &ToWorker::Drain {
                    timeout_ms: drain_ms,
                },
                config::DRAIN_TIMEOUT + config::KILL_TIMEOUT,
            );
        } else {
            self.signal_workers(&ToWorker::Stop, config::KILL_TIMEOUT);
        }
    }

    fn signal_workers(&mut self, msg: &ToWorker, kill_after: Duration) {
        let kill_at = Instant::now() + kill_after;
        for slot in &mut self.slots {
            slot.restart_at = None;
            if let Some(w) = slot.worker.as_mut() {
                send_control(w, msg);
                w.state = WorkerState::Stopping;
                w.kill_at = Some(w.kill_at.map_or(kill_at, |k| k.min(kill_at)));
            }
        }
    }

    fn read_control(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let service = &self.services[slot.service].service.name;
        let Some(w) = slot.worker.as_mut() else {
            return;
        };
        let mut buf = [0u8; 1024];
        loop {
            match w.control.read(&mut buf) {
                Ok(0) => break, // exited: reaped on SIGCHLD
                Ok(n) => w.control_buf.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        for line in ctl::take_lines(&mut w.control_buf) {
            match ToMaster::parse(&line) {
                Some(ToMaster::Ready) if w.state == WorkerState::Starting => {
                    w.state = WorkerState::Ready;
                    w.kill_at = None;
                    let ms = w.started.elapsed().as_millis() as u64;
                    tracing::info!(service = %service, slot = slot.slot, pid = w.pid.as_raw(), start_ms = ms, "worker ready");
                }
                Some(ToMaster::Ready) => {}
                Some(ToMaster::Error(e)) => w.error = Some(e),
                None => tracing::warn!(line = line.trim_end(), "unknown message from a worker"),
            }
        }
    }

    /// Collects every exited child (`waitpid(WNOHANG)` until none is left) and decides what
    /// each exit means for its slot.
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
            if let Some(index) = self
                .slots
                .iter()
                .position(|s| s.worker.as_ref().is_some_and(|w| w.pid == pid))
            {
                self.worker_exited(index, clean, &how);
            }
        }
    }

    fn worker_exited(&mut self, index: usize, clean: bool, how: &str) {
        let slot = &mut self.slots[index];
        let Some(mut w) = slot.worker.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut w.control);
        let service = &self.services[slot.service].service.name;
        let (pid, lived) = (w.pid.as_raw(), w.started.elapsed());
        let expected = w.state == WorkerState::Stopping;
        if expected && clean {
            tracing::info!(service = %service, slot = slot.slot, pid, "worker stopped");
        } else if expected {
            tracing::warn!(service = %service, slot = slot.slot, pid, "worker stopped with {how}");
        } else {
            let why = w
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            tracing::error!(service = %service, slot = slot.slot, pid, lived_ms = lived.as_millis() as u64, "worker died with {how}{why}");
        }
        match self.phase {
            Phase::Stopping => {}
            Phase::Starting if w.state == WorkerState::Starting => {
                let why = w
                    .error
                    .take()
                    .unwrap_or_else(|| format!("it exited with {how} before it was ready"));
                self.start_error = Some(format!(
                    "worker #{} of service {service} could not start: {why}",
                    slot.slot
                ));
                self.stop(false);
            }
            Phase::Starting | Phase::Running => {
                let quick = w.state != WorkerState::Ready || lived < backoff::MIN_UPTIME;
                slot.failures = if quick { slot.failures + 1 } else { 1 };
                let delay = backoff::restart_delay(slot.failures);
                if delay > Duration::ZERO {
                    tracing::warn!(service = %service, slot = slot.slot, failures = slot.failures, delay_ms = delay.as_millis() as u64, "worker keeps dying; restarting after a delay");
                }
                slot.restart_at = Some(Instant::now() + delay);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.slots
            .iter()
            .flat_map(|s| [s.restart_at, s.worker.as_ref().and_then(|w| w.kill_at)])
            .flatten()
            .min()
    }

    fn run_deadlines(&mut self) {
        let now = Instant::now();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            if let Some(w) = slot.worker.as_mut() {
                if w.kill_at.is_some_and(|k| k <= now) {
                    let service = &self.services[slot.service].service.name;
                    let why = if w.state == WorkerState::Starting {
                        "was not ready in time"
                    } else {
                        "did not stop in time"
                    };
                    tracing::warn!(service = %service, slot = slot.slot, pid = w.pid.as_raw(), "worker {why}; killing it");
                    if w.state == WorkerState::Starting && w.error.is_none() {
                        w.error = Some(format!(
                            "it was not ready within {} s",
                            config::START_TIMEOUT.as_secs()
                        ));
                    }
                    let _ = signal::kill(w.pid, Signal::SIGKILL);
                    w.kill_at = None;
                }
            }
            if self.phase != Phase::Stopping
                && slot.worker.is_none()
                && slot.restart_at.is_some_and(|t| t <= now)
            {
                self.spawn_slot(index);
            }
        }
    }
}

fn send_control(w: &mut Worker, msg: &ToWorker) {
    use std::io::Write;
    if let Err(e) = (&w.control).write_all(msg.encode().as_bytes()) {
        // It is exiting already; the kill deadline still applies.
        tracing::debug!(pid = w.pid.as_raw(), "could not message a worker: {e}");
    }
}
