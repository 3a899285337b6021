//! The master: binds every listening socket, starts and watches the workers, replaces any that
//! dies, runs the reload chain, answers control commands, and stops everything on SIGINT (now)
//! or SIGTERM (after draining). One thread, one mio loop: signals arrive through a signalfd,
//! workers talk over their control socket pairs, commands over the control socket. The master
//! never loads a plugin: it copies and probes plugin files (`snapshot`).

mod backoff;
mod chain;
mod control;
mod lifecycle;
mod prepare;
mod reload;
mod report;
mod snapshot;
mod spawn;
mod table;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

pub use self::control::Request as ControlRequest;
use self::control::{ControlServer, Request};
use self::prepare::Preparer;
use self::reload::{Reloader, SlotKey};
use self::report::Gather;
use self::snapshot::Snapshot;
use self::table::{Role, Slot, Table};
use crate::config::{self, Service};
use crate::config_file::ServiceConfig;
use crate::ctl::{ReportKind, ToMaster};
use crate::pidfile::{self, PidFile};
use crate::status::Answer;
use crate::watcher::{Change, Watcher};
use crate::{plugin, sys};

const SIGNALS: Token = Token(0);
/// The one waker of the poll (mio allows one): the watcher and the preparer threads share it.
const WAKER: Token = Token(1);
const CONTROL: Token = Token(2);
/// Worker tokens are unique ids above this; control clients' above `CLIENT_TOKEN_BASE`.
const WORKER_TOKEN_BASE: usize = 16;
const CLIENT_TOKEN_BASE: usize = 1 << 40;

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
    reloadable: bool,
    user: Option<String>,
    group: Option<String>,
    /// One SO_REUSEPORT socket per slot, held for the master's whole life.
    sockets: Vec<OwnedFd>,
    /// The snapshot a reload chain under way is moving this service to.
    candidate: Option<Rc<Snapshot>>,
    /// Its plugin file does not exist yet: no workers until it appears.
    waiting: bool,
}

/// A reload whose candidate files are being checked (see `prepare`).
struct Prep {
    id: u64,
    /// Services whose file is still being checked.
    pending: Vec<usize>,
    ready: Vec<(usize, Snapshot)>,
    /// The first service whose file was refused, and why.
    failure: Option<(usize, String)>,
}

/// How the master is run.
pub struct Options {
    pub plugin_dirs: Vec<PathBuf>,
    pub pid_file: PathBuf,
    /// Written `ok` once every worker is ready (`start -d` waits for it).
    pub ready: Option<std::fs::File>,
    /// A service whose plugin file is missing waits for it (config files) instead of failing
    /// the start (`--plugin`).
    pub wait_for_plugins: bool,
    /// Arguments every worker gets after `worker` (the log level and format).
    pub worker_args: Vec<String>,
    /// How long draining workers may keep connections open (graceful stop and reload).
    pub drain_timeout: Duration,
    /// How long a worker told to stop has before it is killed.
    pub kill_timeout: Duration,
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
    plugin_dirs: Vec<PathBuf>,
    watcher: Option<Watcher>,
    control: Option<ControlServer>,
    gathers: HashMap<u64, Gather>,
    next_gather: u64,
    /// (service, how it ended) → count, like Workerman's `worker_exit_info`.
    exits: BTreeMap<(String, String), u64>,
    started_at: SystemTime,
    ready: Option<std::fs::File>,
    worker_args: Vec<String>,
    drain_timeout: Duration,
    kill_timeout: Duration,
    preparer: Preparer,
    /// The reload whose candidate files are being checked.
    prep: Option<Prep>,
    prep_seq: u64,
    _pid_file: PidFile,
}

/// Runs the master until it is stopped.
pub fn run(services: Vec<ServiceConfig>, options: Options) -> anyhow::Result<()> {
    let plugin_dirs: Vec<PathBuf> =
        if options.plugin_dirs.is_empty() { plugin::default_dirs() } else { options.plugin_dirs };
    let plugin_dirs: Vec<PathBuf> = plugin_dirs.into_iter().map(|d| std::path::absolute(&d).unwrap_or(d)).collect();
    // Remember where the binary is now, before anyone replaces it (see `spawn::host_exe`).
    spawn::host_exe().context("could not find the host binary")?;
    let pid_file = PidFile::acquire(&options.pid_file)?;
    let mut states = Vec::new();
    let mut slots = Vec::new();
    for (index, ServiceConfig { service, reloadable, user, group }) in services.into_iter().enumerate() {
        sys::check_identity(user.as_deref(), group.as_deref())
            .with_context(|| format!("service {} cannot run as the configured user/group", service.name))?;
        let expected_name = (!service.plugin.contains('/')).then(|| service.plugin.clone());
        let source = match plugin::find(&service.plugin, &plugin_dirs) {
            Ok(source) => Some(source),
            Err(e) if options.wait_for_plugins && expected_name.is_some() => {
                tracing::warn!(service = %service.name, "{e}; the service starts when the file appears");
                None
            }
            Err(e) => return Err(e.into()),
        };
        let (bound, sockets) = sys::listen_reuseport(service.listen, service.count as usize)
            .with_context(|| format!("could not listen on {}", service.listen))?;
        tracing::info!(service = %service.name, address = %bound, workers = service.count, "listening");
        if let Some(source) = &source {
            let snap = Rc::new(snapshot::take(source, expected_name.as_deref())?);
            tracing::info!(service = %service.name, plugin = %snap.name, version = %snap.version, hash = %snap.short_hash(), path = %source.display(), "plugin checked");
            slots.extend(service_slots(index, service.count, &snap));
        }
        let service = Service { listen: bound, ..service };
        let waiting = source.is_none();
        let source = source.unwrap_or_default();
        states.push(ServiceState {
            service,
            source,
            expected_name,
            reloadable,
            user,
            group,
            sockets,
            candidate: None,
            waiting,
        });
    }
    let mut master = Master::new(states, slots, plugin_dirs, pid_file, options.ready)?;
    master.worker_args = options.worker_args;
    master.drain_timeout = options.drain_timeout;
    master.kill_timeout = options.kill_timeout;
    master.run_loop()
}

fn service_slots(service: usize, count: u32, snap: &Rc<Snapshot>) -> impl Iterator<Item = Slot> + '_ {
    (0..count).map(move |slot| Slot {
        key: SlotKey { service, slot },
        snapshot: snap.clone(),
        failures: 0,
        restart_at: None,
    })
}

impl Master {
    fn new(
        services: Vec<ServiceState>,
        slots: Vec<Slot>,
        plugin_dirs: Vec<PathBuf>,
        pid_file: PidFile,
        ready: Option<std::fs::File>,
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
        poll.registry().register(&mut SourceFd(&signals.as_raw_fd()), SIGNALS, Interest::READABLE)?;
        let socket = pidfile::socket_path(pid_file.path());
        // Without it the master still runs; only the control commands (not the signals) are lost.
        let control = match ControlServer::bind(&socket, poll.registry(), CONTROL, CLIENT_TOKEN_BASE) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(path = %socket.display(), "could not create the control socket ({e}); use signals");
                None
            }
        };
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let preparer = Preparer::start(waker.clone())?;
        // The watcher is a thread; workers are started by fork + exec, which is safe with
        // threads around (a bare fork is not: DESIGN.md pitfall 4).
        let watcher = match Watcher::start(&plugin_dirs, waker) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("plugin files are not watched (reload with SIGHUP): {e}");
                None
            }
        };
        Ok(Master {
            poll,
            signals,
            services,
            table: Table::new(slots),
            phase: Phase::Starting,
            start_error: None,
            reloader: Reloader::default(),
            step_started: Instant::now(),
            chain_started: Instant::now(),
            last_reload: None,
            plugin_dirs,
            watcher,
            control,
            gathers: HashMap::new(),
            next_gather: 0,
            exits: BTreeMap::new(),
            started_at: SystemTime::now(),
            ready,
            worker_args: Vec::new(),
            drain_timeout: config::DRAIN_TIMEOUT,
            kill_timeout: config::KILL_TIMEOUT,
            preparer,
            prep: None,
            prep_seq: 0,
            _pid_file: pid_file,
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
            // Checked before every wait, so a start with nothing to wait for is ready at once.
            if self.phase == Phase::Starting && self.table.all_ready() {
                self.phase = Phase::Running;
                tracing::info!(workers = self.table.slots.len(), pid = std::process::id(), "host ready");
                if let Some(mut ready) = self.ready.take() {
                    let _ = ready.write_all(b"ok\n");
                }
            }
            if self.phase == Phase::Stopping && self.table.workers.is_empty() {
                tracing::info!("all workers stopped; master exits");
                return match self.start_error.take() {
                    Some(e) => Err(anyhow::anyhow!(e)),
                    None => Ok(()),
                };
            }
            let timeout = self.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("the master's poll failed"),
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.read_signals(),
                    WAKER => {
                        if let Some(w) = self.watcher.as_mut() {
                            w.collect(Instant::now());
                        }
                        self.prepared();
                    }
                    CONTROL => {
                        if let Some(c) = self.control.as_mut() {
                            c.accept_all(self.poll.registry());
                        }
                    }
                    Token(t) if t >= CLIENT_TOKEN_BASE => self.read_client(Token(t)),
                    Token(id) => self.read_worker(id),
                }
            }
            self.reap_children();
            self.run_deadlines();
        }
    }

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
            match sig {
                Signal::SIGCHLD => {} // reaped after every poll
                Signal::SIGINT => self.stop(false),
                Signal::SIGTERM => self.stop(true),
                Signal::SIGUSR1 => self.request_reload(false, "SIGUSR1", None),
                Signal::SIGQUIT | Signal::SIGHUP => self.request_reload(true, sig.as_str(), None),
                Signal::SIGUSR2 => self.start_gather(ReportKind::Status, None),
                Signal::SIGIO => self.start_gather(ReportKind::Connections, None),
                other => tracing::debug!(signal = %other, "signal ignored"),
            }
        }
    }

    fn read_client(&mut self, token: Token) {
        let Some(control) = self.control.as_mut() else { return };
        let Some((client, request)) = control.read(token, self.poll.registry()) else { return };
        tracing::debug!(?request, "control request");
        match request {
            Request::Stop { graceful } => {
                let message = format!("stopping (master pid {})", std::process::id());
                let wait = if graceful { self.drain_timeout } else { Duration::ZERO } + self.kill_timeout;
                self.answer_all(&[client], &Answer::Ok { message, wait_ms: wait.as_millis() as u64 });
                self.stop(graceful);
            }
            Request::Reload { graceful } => {
                let reason = if graceful { "host reload -g" } else { "host reload" };
                self.request_reload(graceful, reason, Some(client));
            }
            Request::Status => self.start_gather(ReportKind::Status, Some(client)),
            Request::Connections => self.start_gather(ReportKind::Connections, Some(client)),
        }
    }

    fn answer_all(&mut self, clients: &[u64], answer: &Answer) {
        if let Some(control) = self.control.as_mut() {
            for &client in clients {
                control.answer(client, answer, self.poll.registry());
            }
        }
    }

    fn read_worker(&mut self, id: usize) {
        let Some(w) = self.table.by_id(id) else { return };
        let lines = w.control.read_lines();
        for line in lines {
            match ToMaster::parse(&line) {
                Some(ToMaster::Ready) => self.worker_ready(id),
                Some(ToMaster::Error(e)) => {
                    if let Some(w) = self.table.by_id(id) {
                        w.error = Some(e);
                    }
                }
                Some(ToMaster::Report { id: gather, json, .. }) => self.gather_reply(id, gather, json),
                None => tracing::warn!(line, "unknown message from a worker"),
            }
        }
        self.watch_control_output(id);
    }

    /// Flushes what is queued for a worker and waits for writability while some is left.
    fn watch_control_output(&mut self, id: usize) {
        let Some(w) = self.table.by_id(id) else { return };
        let interest = match w.control.flush() {
            Ok(false) => Interest::READABLE | Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        let _ = self.poll.registry().reregister(&mut w.control.stream, Token(id), interest);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let restarts = self.table.slots.iter().filter_map(|s| s.restart_at);
        let kills = self.table.workers.iter().filter_map(|w| w.kill_at);
        let watch = self.watcher.as_ref().and_then(Watcher::next_deadline);
        let gathers = self.gathers.values().map(|g| g.deadline);
        restarts.chain(kills).chain(watch).chain(gathers).min()
    }

    fn run_deadlines(&mut self) {
        self.kill_overdue();
        self.finish_gathers(true);
        // Taken even when stopping, or its deadline would stay in the past and the poll spin.
        let now = Instant::now();
        let changed = self.watcher.as_mut().map(|w| w.due(now)).unwrap_or_default();
        let appeared = self.watcher.as_mut().map(|w| w.appeared_dirs(now)).unwrap_or_default();
        if self.phase == Phase::Stopping {
            return;
        }
        // A plugin directory that appeared: its files count as written.
        for dir in appeared {
            let files = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path());
            for path in files.filter(|p| p.extension().is_some_and(|e| e == "so")).collect::<Vec<_>>() {
                self.plugin_file_changed(&path);
            }
        }
        for (path, change) in changed {
            match change {
                Change::Written => self.plugin_file_changed(&path),
                Change::Removed => self.plugin_file_removed(&path),
            }
        }
        self.respawn_due(now);
    }
}
