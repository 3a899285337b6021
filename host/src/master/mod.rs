//! The master: binds every listening socket, starts and watches the workers, replaces any that
//! dies, runs the reload chain, answers control commands, and stops everything on SIGINT (now)
//! or SIGTERM (after draining). The master never loads a plugin: it copies and probes plugin
//! files (`snapshot`, off its loop in `prepare`).
//!
//! Its decisions live in the [`supervisor`] (services, the typed slot table of [`slots`], the
//! reload pipeline of [`reload`]), which acts on processes only through [`process::Processes`].
//! This file is its I/O: one thread, one mio loop; signals arrive through a signalfd, workers
//! talk over their channels, commands come over the control socket; it feeds what happened to
//! the supervisor and carries out the supervisor's outputs.

mod admin;
mod backoff;
mod control;
mod handover;
mod logs;
mod mailbox;
mod prepare;
mod process;
mod recycle;
mod reload;
mod report;
mod slots;
mod snapshot;
pub(crate) mod spawn;
mod supervisor;
mod systemd;
mod trust;
pub mod upgrade;

use std::collections::HashMap;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use mio::net::UnixStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

pub use self::control::Request as ControlRequest;
use self::control::{ControlServer, Request};
use self::prepare::Preparer;
use self::process::OsProcesses;
use self::reload::state::Trigger;
use self::report::{Gather, Requester};
use self::slots::{ClientId, ServiceId, SlotKey, WorkerId};
use self::snapshot::Snapshot;
pub use self::systemd::first_stray_fd;

use self::supervisor::{LoadedTls, Output, Phase, ServiceState, Supervisor};
use crate::config::Service;
use crate::config_file::ServiceConfig;
use crate::ctl::{MasterChannel, ReportKind, ToMaster, ToWorker};
use crate::listen::Listen;
use crate::pidfile::{self, PidFile};
use crate::plan::Plan;
use crate::status::{Answer, WorkerReport};
use crate::watcher::{Change, Watcher};
use crate::{plugin, sys, tls};

const SIGNALS: Token = Token(0);
/// The one waker of the poll (mio allows one): the watcher and the preparer threads share it.
const WAKER: Token = Token(1);
const CONTROL: Token = Token(2);
const ADMIN: Token = Token(3);
/// Worker channels' tokens are their ids above this; control clients' above `CLIENT_TOKEN_BASE`.
const WORKER_TOKEN_BASE: usize = 16;
const CLIENT_TOKEN_BASE: usize = 1 << 40;
/// Admin listener clients' tokens are above this.
const ADMIN_TOKEN_BASE: usize = 1 << 42;

/// What the process that runs the master brings besides the [`Plan`]: how it was started and
/// what it hands on.
pub struct Launch {
    /// Written `ok` once every worker is ready (`start -d` waits for it).
    pub ready: Option<std::fs::File>,
    /// Arguments every worker gets after `worker` (the log level and format).
    pub worker_args: Vec<String>,
    /// The directory and arguments the host was started with (`host restart` reuses them).
    pub start_dir: PathBuf,
    pub start_args: Vec<String>,
    /// What the master's previous image handed over (`host upgrade`): its sockets, workers and
    /// counters are taken over instead of starting anew.
    pub upgrade: Option<upgrade::Inherited>,
    /// The daemon's log file (its stdout and stderr), reopened by `host reopen-logs`; None in
    /// the foreground.
    pub log_file: Option<PathBuf>,
}

pub struct Master {
    poll: Poll,
    signals: SignalFd,
    sup: Supervisor<OsProcesses>,
    /// Each worker's channel, by worker id.
    channels: HashMap<WorkerId, MasterChannel<UnixStream>>,
    /// The workers' mailboxes (messages between workers).
    mailboxes: mailbox::Mailboxes,
    /// The access logs and the log file (`host reopen-logs`).
    logs: logs::Logs,
    watcher: Option<Watcher>,
    control: Option<ControlServer>,
    admin: Option<admin::AdminServer>,
    metrics: admin::MasterMetrics,
    gathers: HashMap<u64, Gather>,
    next_gather: u64,
    /// The last counters each worker reported (a status request, or its final report).
    last_reports: HashMap<WorkerId, WorkerReport>,
    /// Per slot, the counters of its workers that exited: a slot's totals survive replacements.
    carried: HashMap<SlotKey, WorkerReport>,
    started_at: SystemTime,
    /// The directory and arguments the host was started with (reported in `status`).
    start_dir: PathBuf,
    start_args: Vec<String>,
    ready: Option<std::fs::File>,
    preparer: Preparer,
    /// systemd's service manager, when it started us (`NOTIFY_SOCKET`).
    notifier: systemd::Notifier,
    /// The Unix socket files the master bound, removed when it exits (held for their `Drop`).
    _unix_files: Vec<UnixSocketFile>,
    _pid_file: PidFile,
    /// Wakes the loop from another thread (the check of a new binary, `upgrade`).
    waker: Arc<mio::Waker>,
    /// `host upgrade`'s check of the new binary, while it runs.
    upgrading: Option<upgrade::DryRun>,
    /// What each worker last said of its parent-death signal (`kill`), for a binary upgrade.
    parent_death: HashMap<WorkerId, bool>,
}

/// A Unix socket file the master bound: removed when the master exits, if it is still the
/// socket the master bound (not one a later process put there).
struct UnixSocketFile {
    path: PathBuf,
    id: (u64, u64),
}

impl UnixSocketFile {
    fn new(path: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(UnixSocketFile { path: path.to_path_buf(), id: (meta.dev(), meta.ino()) })
    }
}

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        // A new image that fails after `host upgrade` gives the socket back to the previous one.
        if upgrade::rollback_armed() {
            return;
        }
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A service's listening sockets, one per slot, wherever they came from.
struct Sockets {
    /// The address they listen on (a port 0 resolved).
    bound: Listen,
    fds: Vec<std::os::fd::OwnedFd>,
    /// The Unix socket file to remove at a clean stop.
    unix_file: Option<UnixSocketFile>,
}

/// The sockets the master's previous image handed over (`host upgrade`).
fn inherited_sockets(inherited: &mut upgrade::Inherited, service: &Service) -> anyhow::Result<Sockets> {
    let (bound, fds) = inherited.sockets(&service.name)?;
    // The previous image's socket file: removed at this image's clean stop.
    let unix_file = match &bound {
        Listen::Unix { path, .. } => Some(UnixSocketFile::new(path)?),
        _ => None,
    };
    tracing::info!(service = %service.name, address = %bound, workers = service.count, "listening on the sockets handed over by the previous binary");
    Ok(Sockets { bound, fds, unix_file })
}

/// Socket activation: the one socket the service manager holds, shared by every slot (it keeps
/// its queue while the host restarts).
fn activated_sockets(activated: systemd::Activated, service: &Service) -> anyhow::Result<Sockets> {
    let bound = activated.address.map_or_else(|| service.listen.clone(), |a| service.listen.with_ip(a));
    let fds = (0..service.count)
        .map(|_| activated.fd.try_clone())
        .collect::<std::io::Result<Vec<_>>>()
        .context("could not share an activated socket")?;
    tracing::info!(service = %service.name, address = %bound, workers = service.count, "listening on the socket the service manager handed over");
    Ok(Sockets { bound, fds, unix_file: None })
}

/// Binds a service's sockets, one per worker slot: SO_REUSEPORT sockets for TCP and UDP, one
/// Unix listener shared by every slot (its file is removed at exit).
fn bound_sockets(service: &Service) -> anyhow::Result<Sockets> {
    let (listen, count) = (&service.listen, service.count as usize);
    let sockets = match listen {
        Listen::Tcp(addr) => {
            let (bound, fds) = sys::listen_reuseport(*addr, count)?;
            Sockets { bound: Listen::Tcp(bound), fds, unix_file: None }
        }
        Listen::Udp(addr) => {
            let (bound, fds) = sys::udp_reuseport(*addr, count)?;
            Sockets { bound: Listen::Udp(bound), fds, unix_file: None }
        }
        Listen::Unix { path, mode } => {
            let fd = sys::listen_unix(path, *mode)?;
            let unix_file = Some(UnixSocketFile::new(path)?);
            let fds = (0..count).map(|_| fd.try_clone()).collect::<std::io::Result<Vec<_>>>()?;
            Sockets { bound: listen.clone(), fds, unix_file }
        }
    };
    tracing::info!(service = %service.name, address = %sockets.bound, workers = service.count, "listening");
    Ok(sockets)
}

/// Where a start's sockets and snapshots come from: the previous image (`host upgrade`), the
/// service manager (socket activation), or nowhere yet (bind, check).
struct Sources<'a> {
    inherited: Option<&'a mut upgrade::Inherited>,
    /// The previous image's snapshots, by their index in its state.
    snapshots: &'a [Rc<Snapshot>],
    activated: &'a mut Vec<systemd::Activated>,
}

/// A service made ready to run.
struct Prepared {
    state: ServiceState,
    /// The snapshot its slots run (None: waiting for its plugin file).
    snapshot: Option<Rc<Snapshot>>,
    access_log: Option<logs::AccessLog>,
    unix_file: Option<UnixSocketFile>,
}

/// One service made ready to run: its access log opened, its certificate checked, its plugin
/// found and checked (or waited for), its sockets taken or bound.
fn prepare_service(
    ServiceConfig { service, reloadable, user, group }: ServiceConfig,
    plan: &Plan,
    from: &mut Sources<'_>,
) -> anyhow::Result<Prepared> {
    sys::check_identity(user.as_deref(), group.as_deref())
        .with_context(|| format!("service {} cannot run as the configured user/group", service.name))?;
    // Opened as the master's user, before any worker switches to the service's.
    let access_log = service.access_log.as_deref().map(|p| logs::AccessLog::open(&service.name, p)).transpose()?;
    let tls = service.tls.as_ref().map(|files| load_tls(&service.name, files)).transpose()?;
    let expected_name = (!plugin::is_path(&service.plugin)).then(|| service.plugin.clone());
    let source = match plugin::find(&service.plugin, &plan.plugin_dirs) {
        Ok(source) => Some(source),
        Err(e) if plan.from_file && expected_name.is_some() => {
            tracing::warn!(service = %service.name, "{e}; the service starts when the file appears");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let handed = from.activated.iter().position(|a| {
        a.name.as_deref() == Some(service.name.as_str()) || (a.address.is_some() && a.address == service.listen.ip())
    });
    let sockets = match (from.inherited.as_deref_mut(), handed) {
        (Some(inherited), _) => inherited_sockets(inherited, &service)?,
        (None, Some(i)) => activated_sockets(from.activated.swap_remove(i), &service)?,
        (None, None) => bound_sockets(&service).with_context(|| format!("could not listen on {}", service.listen))?,
    };
    let (snapshot, waiting) = match (&from.inherited, &source) {
        (Some(inherited), _) => {
            let handed = inherited.state.services.iter().find(|s| s.name == service.name).and_then(|s| s.snapshot);
            let snapshot = handed.and_then(|i| from.snapshots.get(i).cloned());
            let waiting = snapshot.is_none();
            (snapshot, waiting)
        }
        (None, Some(source)) => {
            let options = snapshot::CheckOptions {
                probe_as: spawn::ProbeAs { user: user.clone(), group: group.clone() },
                probe_timeout: plan.timeouts.probe,
                insecure: plan.insecure_plugins,
            };
            let snap = Rc::new(snapshot::take(source, expected_name.as_deref(), &options, &Default::default())?);
            tracing::info!(service = %service.name, plugin = %snap.name, version = %snap.version, hash = %snap.short_hash(), path = %source.display(), "plugin checked");
            (Some(snap), false)
        }
        (None, None) => (None, true),
    };
    let Sockets { bound, fds, unix_file } = sockets;
    // A TCP service with a socket of its own per slot (not one socket shared, as a socket the
    // service manager handed over is): new connections can be steered away from a slot without
    // a live worker.
    let steer = matches!(bound, Listen::Tcp(_))
        && fds.len() > 1
        && !sys::same_socket(fds[0].as_fd(), fds[1].as_fd()).unwrap_or(true);
    let state = ServiceState {
        service: Service { listen: bound, ..service },
        steer,
        waiting,
        source: source.unwrap_or_default(),
        expected_name,
        reloadable,
        user,
        group,
        sockets: fds,
        tls,
    };
    Ok(Prepared { state, snapshot, access_log, unix_file })
}

/// Runs the master until it is stopped.
pub fn run(plan: Plan, launch: Launch) -> anyhow::Result<()> {
    // Remember where the binary is now, before anyone replaces it (see `spawn::host_exe`).
    spawn::host_exe().context("could not find the host binary")?;
    let mut inherited = launch.upgrade;
    // The program workers are executed from, opened once: the one the previous image used when
    // this image is the one gone back to after a failed upgrade, else the worker binary beside
    // this one (or this one).
    let kept = match inherited.as_mut() {
        Some(i) => i.own_worker_image()?,
        None => None,
    };
    let worker_image = match kept {
        Some(kept) => kept,
        None => spawn::find_worker_image()?,
    };
    spawn::set_worker_image(worker_image);
    let snapshots = match inherited.as_mut() {
        Some(i) => i.snapshots()?,
        None => Vec::new(),
    };
    let pid_file = match inherited.as_mut() {
        Some(i) => PidFile::adopt(&plan.pid_file, i.pid_lock()?),
        None => {
            pidfile::prepare_default_dir(&plan.pid_file)?;
            PidFile::acquire(&plan.pid_file)?
        }
    };
    let mut activated =
        systemd::take_activated().context("could not take the sockets the service manager handed over")?;
    let mut states = Vec::new();
    let mut unix_files = Vec::new();
    let mut access_logs = Vec::new();
    let mut from = Sources { inherited: inherited.as_mut(), snapshots: &snapshots, activated: &mut activated };
    for service in plan.services.iter().cloned() {
        let prepared = prepare_service(service, &plan, &mut from)?;
        states.push((prepared.state, prepared.snapshot));
        access_logs.push(prepared.access_log);
        unix_files.extend(prepared.unix_file);
    }
    for a in &activated {
        tracing::warn!(name = ?a.name, address = ?a.address, "a socket handed over by the service manager matches no service; closed");
    }
    drop(activated);
    // The plugin directories, and the directory of every plugin given by path: a plugin in use
    // is always watched.
    let mut watched = plan.plugin_dirs.clone();
    for (state, _) in &states {
        if state.expected_name.is_none() {
            if let Some(dir) = state.source.parent().filter(|d| !watched.iter().any(|w| w == d)) {
                watched.push(dir.to_path_buf());
            }
        }
    }
    let mut logs = logs::Logs::default();
    (logs.access, logs.log_file) = (access_logs, launch.log_file);
    let procs = OsProcesses { worker_args: launch.worker_args, foreign: Default::default() };
    let mut sup = Supervisor::new(procs, states, plan.plugin_dirs.clone(), plan.timeouts);
    sup.io = plan.io;
    let parts = Parts {
        watched,
        pid_file,
        ready: launch.ready,
        policy: prepare::Policy { probe_timeout: plan.timeouts.probe, insecure: plan.insecure_plugins },
        handed_control: match inherited.as_mut() {
            Some(i) => i.control()?,
            None => None,
        },
        // After an upgrade, the previous image's admin listener is adopted instead.
        admin_listen: plan.admin_listen.filter(|_| inherited.is_none()),
        unix_files,
        start_dir: launch.start_dir,
        start_args: launch.start_args,
        logs,
    };
    let mut master = Master::new(sup, parts)?;
    if let Some(inherited) = inherited {
        master.adopt(inherited, &snapshots)?;
    }
    master.run_loop()
}

/// What the master is built with, besides its supervisor.
struct Parts {
    /// The directories the watcher watches.
    watched: Vec<PathBuf>,
    pid_file: PidFile,
    ready: Option<std::fs::File>,
    policy: prepare::Policy,
    /// The control socket the previous image handed over.
    handed_control: Option<std::os::fd::OwnedFd>,
    admin_listen: Option<std::net::SocketAddr>,
    unix_files: Vec<UnixSocketFile>,
    start_dir: PathBuf,
    start_args: Vec<String>,
    logs: logs::Logs,
}

/// Reads and checks a service's certificate and key (the start fails on a broken pair); warns
/// when the certificate expires soon.
fn load_tls(service: &str, files: &tls::TlsFiles) -> anyhow::Result<LoadedTls> {
    let now = SystemTime::now();
    let (spec, info) = tls::load(files, now).with_context(|| format!("service {service}: TLS"))?;
    tls::warn_if_expiring(service, &info, now);
    tracing::info!(service, subject = %info.subject, expires = %info.not_after_text, alpn = ?spec.alpn, "TLS certificate checked");
    Ok(LoadedTls { spec, info })
}

impl Master {
    fn new(sup: Supervisor<OsProcesses>, parts: Parts) -> anyhow::Result<Self> {
        let Parts {
            watched,
            pid_file,
            ready,
            policy,
            handed_control,
            admin_listen,
            unix_files,
            start_dir,
            start_args,
            logs,
        } = parts;
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
            Signal::SIGURG,
        ])?;
        let poll = Poll::new()?;
        poll.registry().register(&mut SourceFd(&signals.as_raw_fd()), SIGNALS, Interest::READABLE)?;
        let socket = pidfile::socket_path(pid_file.path());
        // Without it the master still runs; only the control commands (not the signals) are lost.
        let bound = match handed_control {
            Some(fd) => ControlServer::adopt(fd, &socket, poll.registry(), CONTROL, CLIENT_TOKEN_BASE),
            None => ControlServer::bind(&socket, poll.registry(), CONTROL, CLIENT_TOKEN_BASE),
        };
        let control = match bound {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(path = %socket.display(), "could not create the control socket ({e}); use signals");
                None
            }
        };
        let admin = match admin_listen {
            Some(address) => {
                let server = admin::AdminServer::bind(address, poll.registry(), ADMIN, ADMIN_TOKEN_BASE)
                    .with_context(|| format!("could not listen on {address} for the admin listener"))?;
                tracing::info!(address = %server.address, "admin listener: /metrics, /healthz");
                Some(server)
            }
            None => None,
        };
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let preparer = Preparer::start(waker.clone(), policy)?;
        let upgrade_waker = waker.clone();
        // The watcher is a thread; workers are started by fork + exec, which is safe with
        // threads around (a bare fork is not: docs/architecture.md pitfall 4).
        let tls_files: Vec<PathBuf> = sup
            .services
            .iter()
            .filter_map(|s| s.service.tls.as_ref())
            .flat_map(|t| [t.cert.clone(), t.key.clone()])
            .collect();
        let watcher = match Watcher::start(&watched, &tls_files, waker) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("plugin files are not watched (reload with SIGHUP): {e}");
                None
            }
        };
        Ok(Master {
            poll,
            signals,
            sup,
            channels: HashMap::new(),
            mailboxes: mailbox::Mailboxes::default(),
            logs,
            watcher,
            control,
            admin,
            metrics: admin::MasterMetrics::default(),
            gathers: HashMap::new(),
            next_gather: 0,
            last_reports: HashMap::new(),
            carried: HashMap::new(),
            started_at: SystemTime::now(),
            start_dir,
            start_args,
            ready,
            preparer,
            notifier: systemd::Notifier::from_env(),
            _unix_files: unix_files,
            _pid_file: pid_file,
            waker: upgrade_waker,
            upgrading: None,
            parent_death: HashMap::new(),
        })
    }

    fn run_loop(&mut self) -> anyhow::Result<()> {
        sys::set_thread_name("host: master");
        self.sup.start();
        let mut events = Events::with_capacity(64);
        loop {
            self.carry_out();
            if let Some(result) = self.sup.finished() {
                tracing::info!("all workers stopped; master exits");
                return result.map_err(anyhow::Error::msg);
            }
            let timeout = self.next_deadline().map(|d| d.saturating_duration_since(Instant::now()));
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("the master's poll failed"),
            }
            let turned = Instant::now();
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.read_signals(),
                    WAKER => {
                        if let Some(w) = self.watcher.as_mut() {
                            w.collect(Instant::now());
                        }
                        for done in self.preparer.take() {
                            self.sup.checked(done);
                        }
                        self.upgrade_checked();
                    }
                    CONTROL => {
                        if let Some(c) = self.control.as_mut() {
                            c.accept_all(self.poll.registry());
                        }
                    }
                    ADMIN => {
                        if let Some(a) = self.admin.as_mut() {
                            a.accept_all(self.poll.registry());
                        }
                    }
                    Token(t) if t >= ADMIN_TOKEN_BASE => self.read_admin(Token(t), event.is_writable()),
                    Token(t) if t >= CLIENT_TOKEN_BASE => self.read_client(Token(t)),
                    Token(t) => self.read_worker(WorkerId((t - WORKER_TOKEN_BASE) as u64)),
                }
            }
            // What an exited worker said last (why it could not start, its final counters) is
            // read before its exit is acted on.
            for (id, exit) in self.sup.take_exits() {
                self.read_worker(id);
                self.sup.worker_exited(id, &exit);
            }
            // The watchdog judges workers by what the master read from them: a master that
            // stalled itself did not read their heartbeats (issue 20 item 1).
            self.sup.master_busy(turned.elapsed());
            self.run_deadlines();
        }
    }

    /// Carries out what the supervisor decided.
    fn carry_out(&mut self) {
        loop {
            // Before the outputs: a worker hears of its peers before anyone hears it is ready
            // (`Started`, a reload's end).
            self.tell_peers();
            self.release_handovers();
            let outputs = self.sup.take_outputs();
            if outputs.is_empty() {
                return;
            }
            for output in outputs {
                match output {
                    Output::Attach(id, stream) => self.attach(id, stream),
                    Output::Detach(id, key) => {
                        if let Some(mut channel) = self.channels.remove(&id) {
                            let _ = self.poll.registry().deregister(&mut channel.stream);
                        }
                        self.mailboxes.close(id);
                        self.gather_forget(id);
                        self.logs_forget(id);
                        self.finish_reopens(false);
                        self.carry_counters(id, key);
                    }
                    Output::Send(id, msg) => self.send(id, &msg),
                    Output::HandOver { old, new, timeout_ms, fallback } => {
                        let handover = mailbox::PendingHandOver { old, new, timeout_ms, fallback };
                        if let Some(h) = self.mailboxes.hold(handover, Instant::now()) {
                            tracing::debug!(
                                old = old.0,
                                new = new.0,
                                waited_ms = 0,
                                "hand-over starts: its peers know the replacement"
                            );
                            self.start_handover(h.old, h.new, h.timeout_ms, h.fallback);
                        }
                    }
                    Output::HandedOver(report) => self.metrics.handed_over(&report),
                    Output::Answer(client, answer) => self.answer_all(&[client], &answer),
                    Output::Check(job) => self.preparer.submit(job),
                    Output::ReloadDone { outcome, duration } => self.metrics.reload_finished(outcome, duration),
                    Output::Drained(duration) => self.metrics.drained(duration),
                    Output::Steer { service, live } => self.steer(service, live.as_deref()),
                    Output::Started => {
                        let workers = self.sup.slots.workers().count();
                        tracing::info!(workers, pid = std::process::id(), "host ready");
                        match self.ready.take() {
                            Some(mut ready) => {
                                let _ = ready.write_all(b"ok\n");
                            }
                            None => self.print_banner(),
                        }
                        // The start-up's code (command line, configuration, plugin checks) is
                        // not run again: its pages go back (docs/architecture.md, "A worker's
                        // memory"), as each worker's do.
                        match crate::sys::release_idle_pages() {
                            Ok(released) => tracing::debug!(?released, "idle pages released"),
                            Err(e) => tracing::debug!("could not release idle pages: {e}"),
                        }
                    }
                }
            }
            let sup = &self.sup;
            self.notifier.update(sup.phase(), sup.reloader_idle(), || summary(sup));
        }
    }

    fn attach(&mut self, id: WorkerId, channel: MasterChannel<std::os::unix::net::UnixStream>) {
        if let Err(e) = channel.stream.set_nonblocking(true) {
            tracing::error!(worker = id.0, "could not watch a worker: {e}");
        }
        let mut channel = channel.map_stream(UnixStream::from_std);
        let token = Token(WORKER_TOKEN_BASE + id.0 as usize);
        if let Err(e) = self.poll.registry().register(&mut channel.stream, token, Interest::READABLE) {
            tracing::error!(worker = id.0, "could not watch a worker: {e}");
        }
        self.channels.insert(id, channel);
        // Its access log first: the worker waits for it right after the hello.
        self.send_access_log(id);
        let Some(channel) = self.channels.get_mut(&id) else { return };
        // Its mailbox, right after the hello (messages between workers).
        match self.mailboxes.open(id) {
            Ok(receiver) => {
                if let Err(e) = channel.send_with_fds(&ToWorker::Mailbox, vec![receiver]) {
                    tracing::warn!(worker = id.0, "could not send the worker its mailbox: {e}");
                }
            }
            Err(e) => tracing::warn!(worker = id.0, "could not make a mailbox: {e}"),
        }
        // The hello may not have left whole yet.
        self.watch_channel_output(id);
    }

    /// Tells the workers of each service whose set of ready workers changed who their peers
    /// are now (see `mailbox`).
    fn tell_peers(&mut self) {
        let channels = &self.channels;
        let acks =
            |id| channels.get(&id).and_then(|c| c.peer_protocol).is_some_and(|p| p >= mailbox::PEERS_ACK_PROTOCOL);
        for (id, msg, fds) in self.mailboxes.changes(&self.sup.slots, acks) {
            if let Some(channel) = self.channels.get_mut(&id) {
                if let Err(e) = channel.send_with_fds(&msg, fds) {
                    tracing::warn!(worker = id.0, "could not tell a worker its peers: {e}");
                }
            }
            self.watch_channel_output(id);
        }
    }

    /// Starts the hand-overs held until the replacement's peers know it (`mailbox`), once they
    /// do (or exited), or the wait is over.
    fn release_handovers(&mut self) {
        // As the supervisor's held hand-overs: none starts once the master stops (every worker was
        // told to go).
        if self.sup.phase() == Phase::Stopping {
            for h in self.mailboxes.take_held() {
                tracing::debug!(old = h.old.0, new = h.new.0, "a hand-over held for its peers dropped: stopping");
                self.sup.handover_not_started(h.old);
            }
            return;
        }
        for r in self.mailboxes.release(Instant::now()) {
            let h = r.handover;
            let waited_ms = r.waited.as_millis() as u64;
            if r.unaware.is_empty() {
                tracing::debug!(
                    old = h.old.0,
                    new = h.new.0,
                    waited_ms,
                    "hand-over starts: its peers know the replacement"
                );
            } else {
                let pids: Vec<i32> =
                    r.unaware.iter().filter_map(|&id| self.sup.slots.worker(id)).map(|w| w.pid.as_raw()).collect();
                let pid = |id: WorkerId| self.sup.slots.worker(id).map_or(0, |w| w.pid.as_raw());
                tracing::info!(old_pid = pid(h.old), new_pid = pid(h.new), waited_ms, ?pids, "hand-over starts before every peer acknowledged the replacement (what reaches the old worker alone is forwarded)");
            }
            self.start_handover(h.old, h.new, h.timeout_ms, h.fallback);
        }
    }

    /// Makes the socket pair of a hand-over and gives one end to each worker (the replacement
    /// first); when it cannot be made, or a worker speaks a protocol without hand-overs, the old
    /// worker drains (or stops) instead.
    fn start_handover(&mut self, old: WorkerId, new: WorkerId, timeout_ms: u64, fallback: crate::ctl::Fallback) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let speaks =
            |id| self.channels.get(&id).and_then(|c| c.peer_protocol).is_some_and(|p| p >= handover::HANDOVER_PROTOCOL);
        if !speaks(old) || !speaks(new) {
            tracing::info!(worker = old.0, "the worker's protocol has no hand-over; it drains");
            self.sup.handover_not_started(old);
            self.send(new, &ToWorker::Serve);
            return self.send(old, &handover::fallback_message(fallback));
        }
        let pair = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC);
        let (a, b) = match pair {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(worker = old.0, "could not make a hand-over socket pair: {e}; the worker drains");
                self.sup.handover_not_started(old);
                self.send(new, &ToWorker::Serve);
                return self.send(old, &handover::fallback_message(fallback));
            }
        };
        let (adopt, hand_over) = handover::messages(timeout_ms, fallback);
        self.send_with_fds(new, &adopt, vec![b]);
        self.send_with_fds(old, &hand_over, vec![a]);
    }

    fn send_with_fds(&mut self, id: WorkerId, msg: &ToWorker, fds: Vec<std::os::fd::OwnedFd>) {
        if let Some(channel) = self.channels.get_mut(&id) {
            if let Err(e) = channel.send_with_fds(msg, fds) {
                tracing::warn!(worker = id.0, "could not send {msg:?}: {e}");
                if channel.error.is_some() {
                    channel.shut_down();
                }
            }
        }
        self.watch_channel_output(id);
    }

    fn send(&mut self, id: WorkerId, msg: &ToWorker) {
        if let Some(channel) = self.channels.get_mut(&id) {
            if let Err(e) = channel.send(msg) {
                tracing::warn!(worker = id.0, "could not send {msg:?}: {e}");
                if channel.error.is_some() {
                    channel.shut_down();
                }
            }
        }
        self.watch_channel_output(id);
    }

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else { continue };
            match sig {
                Signal::SIGCHLD => {} // reaped after every poll
                Signal::SIGINT => self.sup.stop(false),
                Signal::SIGTERM => self.sup.stop(true),
                Signal::SIGUSR1 => self.sup.request_reload(false, Trigger::Signal("SIGUSR1"), None),
                Signal::SIGQUIT => self.sup.request_reload(true, Trigger::Signal("SIGQUIT"), None),
                Signal::SIGHUP => self.sup.request_reload(true, Trigger::Signal("SIGHUP"), None),
                Signal::SIGUSR2 => self.start_gather(ReportKind::Status, Requester::Log),
                Signal::SIGIO => self.start_gather(ReportKind::Connections, Requester::Log),
                Signal::SIGURG => self.upgrade(None, false),
                other => tracing::debug!(signal = %other, "signal ignored"),
            }
        }
    }

    fn read_client(&mut self, token: Token) {
        let Some(control) = self.control.as_mut() else { return };
        let Some((client, request)) = control.read(token, self.poll.registry()) else { return };
        let client = ClientId(client);
        tracing::debug!(?request, "control request");
        match request {
            Request::Stop { graceful } => {
                let message = format!("stopping (master pid {})", std::process::id());
                let (drain, kill) = self.sup.drain_and_kill();
                let wait = if graceful { drain } else { Duration::ZERO } + kill;
                self.answer_all(&[client], &Answer::Ok { message, wait_ms: wait.as_millis() as u64 });
                self.sup.stop(graceful);
            }
            Request::Reload { graceful, handovers } => {
                if handovers {
                    self.sup.answer_after_handovers(client);
                }
                self.sup.request_reload(graceful, Trigger::Command, Some(client))
            }
            Request::Status => self.start_gather(ReportKind::Status, Requester::Control(client)),
            Request::Connections => self.start_gather(ReportKind::Connections, Requester::Control(client)),
            Request::Upgrade { handovers } => self.upgrade(Some(client), handovers),
            Request::ReopenLogs => self.reopen_logs(client),
        }
    }

    fn read_admin(&mut self, token: Token, writable: bool) {
        let Some(admin) = self.admin.as_mut() else { return };
        if writable {
            admin.flush(token.0, self.poll.registry());
        }
        let Some(admin) = self.admin.as_mut() else { return };
        let Some((id, request)) = admin.read(token, self.poll.registry()) else { return };
        match request {
            admin::AdminRequest::Metrics => self.start_gather(ReportKind::Status, Requester::Admin(id)),
            admin::AdminRequest::Health => {
                let (status, body) = match self.health() {
                    Ok(()) => ("200 OK", "ok\n".to_string()),
                    Err(why) => ("503 Service Unavailable", format!("{why}\n")),
                };
                if let Some(a) = self.admin.as_mut() {
                    a.answer(id, status, "text/plain; charset=utf-8", &body, self.poll.registry());
                }
            }
        }
    }

    /// Healthy while running with every service's workers ready.
    fn health(&self) -> Result<(), String> {
        match self.sup.phase() {
            Phase::Starting => return Err("starting".into()),
            Phase::Stopping => return Err("stopping".into()),
            Phase::Running => {}
        }
        for (i, state) in self.sup.services.iter().enumerate() {
            let name = &state.service.name;
            if state.waiting {
                return Err(format!("service {name} is waiting for its plugin file"));
            }
            let ready = |slot: &slots::Slot| {
                slot.serving()
                    .and_then(|id| self.sup.slots.worker(id))
                    .is_some_and(|w| w.readiness == slots::Readiness::Ready)
            };
            if let Some(slot) = self.sup.slots.service_slots(slots::ServiceId(i)).find(|s| !ready(s)) {
                return Err(format!("service {name} has no ready worker in slot #{}", slot.key.slot));
            }
        }
        Ok(())
    }

    fn answer_all(&mut self, clients: &[ClientId], answer: &Answer) {
        if let Some(control) = self.control.as_mut() {
            for &client in clients {
                control.answer(client.0, answer, self.poll.registry());
            }
        }
    }

    fn read_worker(&mut self, id: WorkerId) {
        let Some(channel) = self.channels.get_mut(&id) else { return };
        let broke = channel.error.take();
        for msg in channel.read() {
            match msg {
                ToMaster::Hello { protocol } => tracing::debug!(worker = id.0, protocol, "worker hello"),
                ToMaster::Ready => self.sup.worker_ready(id),
                ToMaster::Alive { messages, rss_bytes } => self.sup.worker_alive(id, messages, rss_bytes),
                ToMaster::Error(e) => self.sup.worker_error(id, e),
                ToMaster::Report { id: gather, json, .. } => self.gather_reply(id, gather, json),
                ToMaster::LogsReopened { id: request, error } => self.logs_reopened(id, request, error),
                ToMaster::ParentDeath { kill } => {
                    self.parent_death.insert(id, kill);
                }
                ToMaster::HandedOver(report) => self.sup.handed_over(id, report),
                ToMaster::HandoverTimedOut => self.sup.handover_timed_out(id),
                ToMaster::HandoverProgress { state_bytes } => self.sup.handover_progress(id, state_bytes),
                ToMaster::PeersKnown { generation } => self.mailboxes.peers_known(id, generation),
            }
        }
        // A worker of another version, a frame over the limit, a worker that does not read: the
        // channel is shut down, so the worker stops; its error tells why.
        if let Some(e) = broke.or_else(|| self.channels.get_mut(&id).and_then(|c| c.error.take())) {
            tracing::error!(worker = id.0, "worker channel broken: {e}");
            if let Some(channel) = self.channels.get_mut(&id) {
                channel.shut_down();
            }
            self.sup.worker_error(id, e);
        }
        self.watch_channel_output(id);
    }

    /// Flushes what is queued for a worker and waits for writability while some is left.
    fn watch_channel_output(&mut self, id: WorkerId) {
        let Some(channel) = self.channels.get_mut(&id) else { return };
        let interest = match channel.flush() {
            Ok(false) => Interest::READABLE | Interest::WRITABLE,
            _ => Interest::READABLE,
        };
        let token = Token(WORKER_TOKEN_BASE + id.0 as usize);
        let _ = self.poll.registry().reregister(&mut channel.stream, token, interest);
    }

    fn next_deadline(&self) -> Option<Instant> {
        let watch = self.watcher.as_ref().and_then(Watcher::next_deadline);
        let gathers = self.gathers.values().map(|g| g.deadline);
        let admin = self.admin.as_ref().and_then(admin::AdminServer::next_deadline);
        let reopens = self.logs.next_deadline();
        let held = self.mailboxes.next_deadline();
        let sup = self.sup.next_deadline();
        sup.into_iter().chain(watch).chain(gathers).chain(admin).chain(reopens).chain(held).min()
    }

    fn run_deadlines(&mut self) {
        self.sup.tick();
        if let Some(a) = self.admin.as_mut() {
            a.expire(Instant::now(), self.poll.registry());
        }
        self.finish_gathers(true);
        self.finish_reopens(true);
        // Taken even when stopping, or its deadline would stay in the past and the poll spin.
        let now = Instant::now();
        let changed = self.watcher.as_mut().map(|w| w.due(now)).unwrap_or_default();
        let appeared = self.watcher.as_mut().map(|w| w.appeared_dirs(now)).unwrap_or_default();
        if self.sup.phase() == Phase::Stopping {
            return;
        }
        // A plugin directory that appeared: its files count as written.
        for dir in appeared {
            let files = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path());
            for path in files.filter(|p| p.extension().is_some_and(|e| e == "so")).collect::<Vec<_>>() {
                self.sup.plugin_file_changed(&path);
            }
        }
        for (path, change) in changed {
            if self.sup.is_tls_file(&path) {
                if change == Change::Written {
                    self.sup.tls_file_changed(&path);
                }
                continue;
            }
            match change {
                Change::Written => self.sup.plugin_file_changed(&path),
                Change::Removed => self.sup.plugin_file_removed(&path),
            }
        }
    }

    /// What runs, in a few lines on stdout (a foreground start): services, addresses, workers,
    /// plugins, the watched directories, the pid file, how to stop.
    /// Steers a service's new connections as the supervisor decided (`Output::Steer`).
    fn steer(&mut self, service: ServiceId, live: Option<&[u32]>) {
        let state = &self.sup.services[service.0];
        let Some(socket) = state.sockets.first() else { return };
        let name = &state.service.name;
        match (sys::steer_reuseport(socket.as_fd(), live), live) {
            (Ok(()), Some(live)) => {
                tracing::info!(service = %name, ?live, "slots without a live worker: new connections go to the live slots only")
            }
            (Ok(()), None) => tracing::debug!(service = %name, "new connections spread over every slot"),
            (Err(e), _) => tracing::warn!(service = %name, "could not steer new connections: {e}"),
        }
    }

    fn print_banner(&self) {
        let mut out = format!("host {} ready (master pid {})\n", env!("CARGO_PKG_VERSION"), std::process::id());
        for (i, state) in self.sup.services.iter().enumerate() {
            let svc = &state.service;
            let plugin = match self.sup.slots.service_slots(slots::ServiceId(i)).next() {
                Some(slot) => format!("{} {} ({})", slot.snapshot.name, slot.snapshot.version, state.source.display()),
                None => format!("waiting for plugin {}", svc.plugin),
            };
            let workers = if svc.count == 1 { "worker" } else { "workers" };
            out.push_str(&format!("  {:<12} {:<22} {} {workers:<7}  {plugin}\n", svc.name, svc.listen, svc.count));
        }
        if let Some(w) = &self.watcher {
            let (watched, missing) = w.directories();
            let mut dirs: Vec<String> = watched.iter().map(|d| d.display().to_string()).collect();
            dirs.extend(missing.iter().map(|d| format!("{} (once it exists)", d.display())));
            out.push_str(&format!("  plugins watched in: {}\n", dirs.join(", ")));
        }
        out.push_str(&format!("  pid file: {}\n", self._pid_file.path().display()));
        // Commands that reach this host whatever else runs: its pid file named.
        let this = format!("--pid-file {}", self._pid_file.path().display());
        out.push_str(&format!(
            "  stop: Ctrl+C, or `host stop [-g] {this}`; reload: `host reload [-g] {this}`; status: `host status {this}`\n"
        ));
        let mut stdout = io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }
}

/// One line for systemd's STATUS=: workers, last reload.
fn summary(sup: &Supervisor<OsProcesses>) -> String {
    let ready = sup.slots.workers().filter(|w| w.readiness == slots::Readiness::Ready).count();
    let last = sup.last_reload.as_ref().map_or("none".to_string(), |r| r.summary.clone());
    format!("{ready} workers ready; last reload: {last}")
}
