//! The worker's event loop: one mio `Poll` over the listening socket, the master's channel, a
//! signalfd, the mailbox, the wakers and the connections. Each turn: the master's frames, then
//! the events (accept, read, connect readiness), the mailbox, UDP datagrams, task results,
//! timers, outbound deadlines, then `dispatch::settle` (deferred events, one flush per dirty
//! connection); then the worker's phase says whether the loop ends.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::{Duration, Instant};

use abi_stable::std_types::RResult;
use mio::net::UnixStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use plugin_api::abi::RawPluginBox;
use plugin_api::ConnId;

use super::core::{Core, CONN_TOKEN_BASE};
use super::listener::Listener;
use super::phase::{ConnPhase, Exit, WorkerPhase};
use super::transport::Stream;
use super::uring::{Ring, RingEvent};
use super::{datagram, dispatch, load_snapshot, mailbox, new_instance, outbound, tasks, FAREWELL_TIMEOUT};
use crate::config::{IoBackend, WorkerSpec};
use crate::ctl::{self, ReportKind, ToMaster, ToWorker, WorkerChannel};
use crate::sys;

mod handover;

const LISTENER: Token = Token(0);
const CONTROL: Token = Token(1);
const SIGNALS: Token = Token(2);
const MAILBOX: Token = Token(3);
/// Messages from other workers delivered per loop turn at most (the rest next turn: a flood of
/// them never starves the connections).
const MAILBOX_BATCH: usize = 256;
/// How often idle connections and lingering closes are checked, while there are connections.
const SWEEP_INTERVAL_MS: u64 = 1000;
/// Bytes read from a socket per read call.
const READ_CHUNK: usize = 64 * 1024;
/// How soon accepting is tried again after the system ran out of descriptors or memory.
const ACCEPT_RETRY_MS: u64 = 100;

pub(super) struct Worker {
    poll: Poll,
    listener: Listener,
    control: WorkerChannel<UnixStream>,
    signals: SignalFd,
    plugin: RawPluginBox,
    core: Core,
    scratch: Vec<u8>,
    epoch: Instant,
    /// Accepting stopped at the connection limit; resumed when a connection closes.
    accept_blocked: bool,
    /// Accepting failed for lack of resources (EMFILE, ENOBUFS…): tried again at this time.
    accept_retry_ms: Option<u64>,
    next_sweep_ms: Option<u64>,
    /// The service's drain timeout, for a SIGTERM sent to the worker by hand.
    drain_timeout_ms: u64,
    /// How often the loop says `alive` to the master's watchdog (0: never).
    heartbeat_ms: u64,
    next_heartbeat_ms: u64,
    /// The resident memory the last heartbeat reported, and when the loop looks at it next
    /// between heartbeats (a worker growing fast reports at once: `max_memory`).
    reported_rss: u64,
    next_rss_check_ms: u64,
    /// The mailbox may hold more messages (a turn stopped at `MAILBOX_BATCH`).
    mailbox_pending: bool,
    /// Where a message from another worker is read (the largest one fits).
    mailbox_buf: Vec<u8>,
    /// The UDP socket may hold more datagrams (a turn stopped at `datagram::BATCH`, or an event).
    udp_pending: bool,
    /// The task pool woke the loop: results or notifications wait.
    tasks_pending: bool,
    /// The master's process when this worker started (its parent).
    parent: nix::unistd::Pid,
    /// The plugin's name (a hand-over offers it to the replacement).
    plugin_name: String,
    /// A hand-over under way, as the old worker or as the replacement.
    handover: Option<handover::Session>,
    /// A `HandOver` that came while this worker still adopted from its predecessor: it starts
    /// once that adoption ended (`handover.rs`, `start_handover`).
    deferred_handover: Option<handover::Deferred>,
    /// A replacement started awaiting its predecessor's hand-over (`WorkerSpec::await_handover`):
    /// it accepts nothing until `Adopt` (then until the hand-over ends) or `Serve`.
    awaiting_handover: bool,
    /// As the old worker of a hand-over, move a plugin's connections in batches when it can
    /// (`WorkerSpec::handover_batches`); false: all at once.
    handover_batches: bool,
    /// `--io uring`: the connections' receives and sends go through this ring, which also
    /// watches the poll (`worker/uring`).
    ring: Option<Ring>,
    ring_events: Vec<RingEvent>,
    /// The listener's connections come from the ring's multishot accept (`--io uring`, a
    /// stream listener, a kernel that takes it), not from `accept4` on epoll's readiness.
    ring_accepts: bool,
    /// The ring's accept is wanted (the listener is watched): false from a stop to the resume,
    /// so that what is taken meanwhile (a replacement paused for a hand-over) does not re-arm it.
    ring_listening: bool,
    /// The poll had more events than one call takes: read it again next turn.
    poll_more: bool,
}

impl Worker {
    pub(super) fn start(
        listener: OwnedFd,
        control: WorkerChannel<StdUnixStream>,
        snapshot: OwnedFd,
        spec: &WorkerSpec,
        access_log: Option<std::fs::File>,
        watch: Option<sys::WatchPage>,
    ) -> anyhow::Result<Self> {
        sys::ignore_sigpipe()?;
        // SIGTERM/SIGQUIT: drain then exit; SIGINT: stop now. The master normally says so over
        // the control socket; the signals serve someone who signals a worker by hand.
        // SIGUSR1/2 and SIGIO mean something to the master only: a `pkill -USR2 host` must not
        // kill the workers (their default action is to terminate).
        let signals = sys::signal_fd(&[
            Signal::SIGTERM,
            Signal::SIGQUIT,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGUSR1,
            Signal::SIGUSR2,
            Signal::SIGIO,
        ])?;
        let loaded = load_snapshot(snapshot, &spec.plugin_path)?;
        tracing::info!(plugin = %loaded.name, version = %loaded.version, plugin_api = %loaded.api_version, path = %spec.plugin_path.display(), "plugin loaded");
        let plugin = match new_instance(&loaded, spec) {
            RResult::ROk(p) => p,
            RResult::RErr(e) => anyhow::bail!("plugin {} refused its config: {}", loaded.name, e),
        };
        let poll = Poll::new()?;
        let ring = match spec.io {
            IoBackend::Epoll => None,
            IoBackend::Uring => match Ring::new(poll.as_raw_fd()) {
                Ok(ring) => Some(ring),
                Err(e) => {
                    tracing::warn!("io_uring is unavailable here ({e}); this worker uses epoll");
                    None
                }
            },
        };
        let registry = poll.registry().try_clone()?;
        let (listener, udp) = Listener::from_fd(listener)?;
        let mut worker = Worker {
            listener,
            control: control.map_stream(UnixStream::from_std),
            signals,
            plugin,
            core: Core::new(registry, spec.service.clone(), spec.slot, spec.limits),
            scratch: vec![0; READ_CHUNK],
            epoch: Instant::now(),
            accept_blocked: false,
            accept_retry_ms: None,
            next_sweep_ms: None,
            drain_timeout_ms: spec.drain_timeout_ms,
            heartbeat_ms: spec.heartbeat_ms,
            next_heartbeat_ms: spec.heartbeat_ms,
            reported_rss: 0,
            next_rss_check_ms: 0,
            mailbox_pending: false,
            mailbox_buf: vec![0; mailbox::RECV_BUFFER],
            udp_pending: false,
            parent: nix::unistd::getppid(),
            tasks_pending: false,
            plugin_name: loaded.name.clone(),
            handover: None,
            deferred_handover: None,
            awaiting_handover: spec.await_handover,
            handover_batches: spec.handover_batches,
            ring,
            ring_events: Vec::new(),
            ring_accepts: false,
            ring_listening: false,
            poll_more: false,
            poll,
        };
        worker.core.worker_count = spec.worker_count;
        worker.core.ring = worker.ring.as_ref().map(Ring::handle);
        if let (Some(ring), Some(fd)) = (worker.ring.as_mut(), worker.listener.stream_fd()) {
            ring.listen_on(fd);
            worker.ring_accepts = true;
        }
        // The loop's clock (`now_ms`, from `epoch`) on the system's monotonic clock.
        worker.core.watch = super::core::Watch::new(watch, sys::monotonic_ms());
        worker.core.udp = udp;
        if let Some(file) = access_log {
            worker.core.access_log.switch(file);
        }
        if let Some(tls) = &spec.tls {
            worker.core.tls = Some(crate::tls::server_config(tls)?);
            worker.core.tls_alpn_fixed = tls.alpn_fixed;
        }
        if let Some(url) = &spec.cluster {
            worker.core.join_cluster(url).map_err(anyhow::Error::msg)?;
        }
        if let RResult::RErr(e) = dispatch::worker_start(&mut worker.plugin, &mut worker.core) {
            anyhow::bail!("plugin {} failed to start: {}", loaded.name, e);
        }
        // A replacement awaiting a hand-over watches the slot's socket once it has ended.
        if !worker.awaiting_handover {
            worker.watch_listener()?;
            let registry = worker.poll.registry();
            if let Some(udp) = worker.core.udp.as_mut() {
                registry.register(udp, LISTENER, Interest::READABLE)?;
                // Datagrams may have queued before this worker watched the socket.
                worker.udp_pending = true;
            }
        }
        let registry = worker.poll.registry();
        registry.register(&mut worker.control.stream, CONTROL, Interest::READABLE)?;
        registry.register(&mut SourceFd(&worker.signals.as_raw_fd()), SIGNALS, Interest::READABLE)?;
        worker.send_control(&ToMaster::Ready);
        // The master logs it (with its start time): once is enough at info.
        tracing::debug!("worker ready");
        Ok(worker)
    }

    pub(super) fn run_loop(&mut self) -> io::Result<Exit> {
        let mut events = Events::with_capacity(1024);
        // What the master sent with its hello is read already: no event will announce it.
        self.read_control();
        loop {
            let timeout = self.poll_timeout();
            match self.wait(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.core.now_ms = self.epoch.elapsed().as_millis() as u64;
            // The master's frames first: peers it told of before a client's message arrived
            // are known when that message is dispatched.
            if events.iter().any(|e| e.token() == CONTROL) {
                self.read_control();
            }
            // Then the hand-over: an old worker's acknowledgement, a replacement's adoptions.
            if self.handover.is_some() {
                self.drive_handover();
            }
            let ring_events = std::mem::take(&mut self.ring_events);
            for event in &ring_events {
                let index = event.token - CONN_TOKEN_BASE;
                if event.writable {
                    self.core.mark_dirty(index);
                }
                if event.readable {
                    self.read_conn(index, event.hup);
                }
            }
            self.ring_events = ring_events;
            if self.ring_accepts {
                self.ring_accepted();
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER if self.listener.is_udp() => self.udp_pending = self.core.phase.accepting(),
                    LISTENER => self.accept_all(),
                    CONTROL | handover::HANDOVER => {}
                    SIGNALS => self.read_signals(),
                    MAILBOX => self.mailbox_pending = true,
                    mailbox::PEERS => self.core.mailbox.flush_waiting(),
                    tasks::TASKS => self.tasks_pending = true,
                    outbound::RESOLVER => self.core.resolved(),
                    super::core::CLUSTER => self.core.cluster_ready(event),
                    t if crate::cluster::link::Link::is_node_token(t) => self.core.cluster_ready(event),
                    Token(t) if t < CONN_TOKEN_BASE => {}
                    Token(t) => {
                        let index = t - CONN_TOKEN_BASE;
                        if self.core.by_index(index).is_some_and(|c| matches!(c.phase, ConnPhase::Connecting { .. })) {
                            if let Some(outcome) = self.core.connect_ready(index) {
                                let hup = event.is_read_closed() || event.is_error();
                                dispatch::outbound(&mut self.plugin, &mut self.core, &mut self.scratch, outcome, hup);
                            }
                            continue;
                        }
                        if event.is_writable() {
                            self.core.mark_dirty(index);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read_conn(index, event.is_read_closed() || event.is_error());
                        }
                    }
                }
            }
            self.read_mailbox();
            if self.udp_pending {
                self.udp_pending = datagram::receive(&mut self.plugin, &mut self.core, &mut self.scratch);
            }
            self.deliver_tasks();
            dispatch::published(&mut self.plugin, &mut self.core);
            self.run_timers();
            for outcome in self.core.expire_outbound() {
                dispatch::outbound(&mut self.plugin, &mut self.core, &mut self.scratch, outcome, false);
            }
            self.core.cluster_tick();
            self.settle();
            self.core.cluster_flush();
            self.core.access_log.flush_due(self.core.now_ms);
            self.core.stats.rate.roll(self.core.now_ms, self.core.stats.messages);
            self.beat();
            let core = &self.core;
            // Running jobs are waited for too: their results may be answers to send.
            let idle = || core.open_count() == 0 && core.tasks_in_flight() == 0;
            if let Some(exit) = core.phase.after_turn(idle, core.now_ms) {
                if exit == Exit::Drained && core.tasks_in_flight() > 0 {
                    tracing::warn!(tasks = core.tasks_in_flight(), "drain deadline: tasks left unfinished");
                }
                return Ok(exit);
            }
        }
    }

    /// Waits for events: on the poll, or with `--io uring` on the ring (which reports the
    /// connections' completions in `ring_events` and says when the poll has events).
    fn wait(&mut self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        let Some(ring) = self.ring.as_mut() else {
            return self.poll.poll(events, timeout);
        };
        let mut ring_events = std::mem::take(&mut self.ring_events);
        let timeout = if self.poll_more { Some(Duration::ZERO) } else { timeout };
        let polled = ring.turn(timeout, self.epoch.elapsed().as_millis() as u64, &mut ring_events);
        self.ring_events = ring_events;
        if polled? || self.poll_more {
            self.poll.poll(events, Some(Duration::ZERO))?;
            self.poll_more = events.iter().count() >= events.capacity();
        } else {
            events.clear();
        }
        Ok(())
    }

    /// The time to the nearest deadline, or None (block: no CPU use when idle).
    fn poll_timeout(&mut self) -> Option<Duration> {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.core.now_ms = now;
        if self.core.len() > 0 && self.next_sweep_ms.is_none() {
            self.next_sweep_ms = Some(now + SWEEP_INTERVAL_MS);
        }
        let busy = self.mailbox_pending || self.udp_pending || !self.core.topics.heard.is_empty();
        if !self.core.deferred.is_empty() || !self.core.dirty.is_empty() || busy {
            // settle() stopped before it was done: go on at once.
            return Some(Duration::ZERO);
        }
        let deadlines = [
            self.core.timers.next_timeout_ms(now).map(|ms| now + ms),
            self.next_sweep_ms,
            self.core.phase.deadline_ms(),
            self.accept_retry_ms,
            (self.heartbeat_ms > 0).then_some(self.next_heartbeat_ms),
            self.core.next_outbound_deadline(),
            self.core.access_log.deadline_ms(),
            self.handover_deadline(),
            self.core.cluster_deadline_ms(),
        ];
        deadlines.into_iter().flatten().min().map(|d| Duration::from_millis(d.saturating_sub(now)))
    }

    /// Tells the master's watchdog that the loop turns: at most once per heartbeat, also when
    /// idle (the poll wakes for it). A worker stuck in a plugin callback stops saying it.
    fn beat(&mut self) {
        const RSS_CHECK_MS: u64 = 50;
        if self.heartbeat_ms == 0 {
            return;
        }
        let due = self.core.now_ms >= self.next_heartbeat_ms;
        let mut rss = None;
        if !due && self.core.now_ms >= self.next_rss_check_ms {
            self.next_rss_check_ms = self.core.now_ms + RSS_CHECK_MS;
            rss = Some(resident_bytes());
        }
        let grew = rss.is_some_and(|r| grew_to_report(self.reported_rss, r));
        if due || grew {
            self.next_heartbeat_ms = self.core.now_ms + self.heartbeat_ms;
            let rss_bytes = rss.unwrap_or_else(resident_bytes);
            self.reported_rss = rss_bytes;
            let alive = ToMaster::Alive { messages: self.core.stats.messages, rss_bytes };
            self.send_control(&alive);
            crate::logging::flush_suppressed();
        }
    }

    fn accept_all(&mut self) {
        while self.core.phase.accepting() && !self.awaiting_handover {
            if self.core.len() >= self.core.limits.max_connections {
                self.accept_blocked = true;
                // The ring's accept is cancelled next turn (what it completes meanwhile waits
                // in its queue for a free place, as the rest waits in the listener's).
                if let Some(ring) = self.ring.as_mut().filter(|_| self.ring_accepts) {
                    ring.accepting(false);
                }
                return;
            }
            let next = match self.ring.as_mut() {
                Some(_) if self.ring_accepts && !self.ring_listening => return,
                Some(ring) if self.ring_accepts => match ring.take_accepted() {
                    Some(next) => next.map(|fd| self.listener.stream_from(fd)),
                    None => {
                        // All taken: the accept goes on (or is armed again).
                        ring.accepting(true);
                        return;
                    }
                },
                _ => self.listener.accept(),
            };
            match next {
                Ok(stream) => {
                    self.admit(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The client gave up before it was accepted (or a firewall refused it): the next
                // one in the queue is fine.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(nix::libc::ECONNABORTED | nix::libc::EPROTO | nix::libc::EPERM)
                    ) =>
                {
                    tracing::debug!("accept: {e}; accepting the next one");
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the queue keeps the clients; try again
                    // shortly, whether or not any connection is open.
                    tracing::warn!("accept failed: {e}; trying again in {ACCEPT_RETRY_MS} ms");
                    self.accept_retry_ms = Some(self.core.now_ms + ACCEPT_RETRY_MS);
                    return;
                }
            }
        }
    }

    /// Puts an accepted stream in the table (on the ring with `--io uring`) and tells the plugin.
    fn admit(&mut self, stream: Stream) -> Option<ConnId> {
        let stream = match &self.ring {
            Some(ring) => ring.adopt(stream),
            None => stream,
        };
        match self.core.insert(stream) {
            Ok(id) => {
                self.core.stats.accepted += 1;
                // TLS: the plugin hears of it once the handshake is done.
                if self.core.get(id).is_some_and(|c| c.phase == ConnPhase::Open) {
                    dispatch::connect(&mut self.plugin, &mut self.core, id);
                }
                Some(id)
            }
            Err(e) => {
                tracing::warn!("could not register a connection: {e}");
                None
            }
        }
    }

    /// After a turn with `--io uring`: the connections the ring's accept brought are taken, and
    /// a kernel that refused the multishot accept has the listener go back to epoll.
    fn ring_accepted(&mut self) {
        let Some(ring) = self.ring.as_ref() else { return };
        if ring.accept_refused() {
            tracing::debug!("the kernel refused io_uring's multishot accept: the listener is on epoll");
            self.ring_accepts = false;
            if self.core.phase.accepting() && !self.awaiting_handover {
                self.resume_accepting();
            }
        }
        if !self.ring.as_ref().is_some_and(Ring::has_accepted) {
            return;
        }
        if self.core.phase.accepting() {
            self.accept_all();
        } else {
            // A draining (or handing-over) worker whose accept ended late: the kernel took
            // them, so they are served here.
            self.serve_accepted(true);
        }
    }

    /// Serves the connections the ring's accept completed before it ended, whether or not the
    /// worker accepts (the kernel took them: no other worker will); `drain`: the plugin hears
    /// `on_drain` for each too (a drain began before they arrived).
    fn serve_accepted(&mut self, drain: bool) {
        while let Some(next) = self.ring.as_mut().and_then(Ring::take_accepted) {
            match next {
                Ok(fd) => {
                    let stream = self.listener.stream_from(fd);
                    if let Some(id) = self.admit(stream) {
                        if drain && matches!(self.core.phase, WorkerPhase::Draining { .. }) {
                            dispatch::drain(&mut self.plugin, &mut self.core, id);
                        }
                    }
                }
                Err(e) => tracing::debug!("accept: {e}"),
            }
        }
    }

    /// Watches the listening socket: through the ring's accept, or on epoll.
    fn watch_listener(&mut self) -> io::Result<()> {
        match self.ring.as_mut() {
            Some(ring) if self.ring_accepts => {
                ring.accepting(true);
                self.ring_listening = true;
                Ok(())
            }
            _ => self.poll.registry().register(&mut self.listener, LISTENER, Interest::READABLE),
        }
    }

    fn read_control(&mut self) {
        for (msg, fds) in self.control.read_with_fds() {
            match msg {
                ToWorker::Mailbox => self.take_mailbox(fds),
                ToWorker::Peers { replace, peers, generation } => {
                    self.core.mailbox.set_peers(replace, peers, fds, self.poll.registry());
                    // The last frame of a set: what this worker sends from now on reaches all
                    // of it (the master may be holding a hand-over until it knows).
                    if generation != 0 {
                        self.core.mailbox.peers_complete();
                        self.send_control(&ToMaster::PeersKnown { generation });
                    }
                }
                ToWorker::Hello { .. } => tracing::warn!("a second hello from the master ignored"),
                ToWorker::Stop => self.core.phase.stop(Exit::Stopped),
                ToWorker::Drain { timeout_ms } => self.start_drain(timeout_ms),
                ToWorker::ReloadHook => dispatch::worker_reload(&mut self.plugin, &mut self.core),
                ToWorker::ParentDeath { kill } => self.parent_death(kill),
                ToWorker::HandOver { timeout_ms, fallback } => self.start_handover(fds, timeout_ms, fallback),
                ToWorker::Adopt { timeout_ms } => self.start_adopt(fds, timeout_ms),
                ToWorker::Serve => {
                    if std::mem::take(&mut self.awaiting_handover) {
                        tracing::debug!("no hand-over comes: serving");
                        self.resume_accepting();
                    }
                }
                ToWorker::Logs { id, access_log, log_file } => {
                    let error = self.switch_logs(fds, access_log, log_file).err();
                    if let Some(e) = &error {
                        tracing::warn!("could not switch to the reopened logs: {e}");
                    }
                    if id != 0 {
                        self.send_control(&ToMaster::LogsReopened { id, error });
                    }
                }
                ToWorker::Report { id, kind } => {
                    let json = match kind {
                        ReportKind::Status => serde_json::to_string(&self.core.report()),
                        ReportKind::Connections => serde_json::to_string(&self.core.connections()),
                    }
                    .expect("reports always serialize");
                    self.send_control(&ToMaster::Report { id, kind, json });
                }
            }
        }
        if self.control.closed && !matches!(self.core.phase, WorkerPhase::Exiting { .. }) {
            match &self.control.error {
                Some(e) => tracing::error!("the channel to the master broke: {e}; stopping"),
                None => tracing::warn!("the master is gone; stopping"),
            }
            self.core.phase.stop(Exit::MasterGone);
        }
        self.flush_control();
    }

    /// Sets the parent-death signal as the master asks (SIGKILL, or none while a binary upgrade
    /// may leave this worker to the upgrade's guardian) and says so. Armed again after the
    /// master's process changed (this worker was adopted by a guardian), it would never fire: the
    /// worker then keeps it off and answers `kill: false`.
    fn parent_death(&mut self, kill: bool) {
        let parent = nix::unistd::getppid();
        let kill = kill && parent == self.parent;
        let result = if kill {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        } else {
            nix::sys::prctl::set_pdeathsig(None)
        };
        if let Err(e) = result {
            tracing::warn!("could not set the parent-death signal: {e}");
        }
        // The master may have died between the check and the prctl: then go now, as the signal
        // would have made us.
        if kill && nix::unistd::getppid() != self.parent {
            self.core.phase.stop(Exit::MasterGone);
            return;
        }
        self.send_control(&ToMaster::ParentDeath { kill });
    }

    /// Switches to the log descriptors of a `Logs` frame: the access log (what is buffered goes to
    /// the old one first), then the log file as stdout and stderr.
    fn switch_logs(&mut self, fds: Vec<OwnedFd>, access_log: bool, log_file: bool) -> Result<(), String> {
        let mut fds = fds.into_iter();
        if access_log {
            let fd = fds.next().ok_or("no access log descriptor came")?;
            self.core.access_log.switch(std::fs::File::from(fd));
        }
        if log_file {
            let fd = fds.next().ok_or("no log file descriptor came")?;
            sys::redirect_stdio(fd.as_fd()).map_err(|e| format!("could not switch to the new log file: {e}"))?;
        }
        Ok(())
    }

    fn take_mailbox(&mut self, fds: Vec<OwnedFd>) {
        let Some(fd) = fds.into_iter().next() else {
            tracing::warn!("a mailbox without its descriptor ignored");
            return;
        };
        if let Err(e) = self.poll.registry().register(&mut SourceFd(&fd.as_raw_fd()), MAILBOX, Interest::READABLE) {
            tracing::warn!("could not watch the mailbox: {e}; messages from other workers are lost");
            return;
        }
        if let Some(old) = self.core.mailbox.receiver.replace(fd) {
            let _ = self.poll.registry().deregister(&mut SourceFd(&old.as_raw_fd()));
        }
        // Messages may have arrived before it was watched.
        self.mailbox_pending = true;
    }

    /// Delivers up to `MAILBOX_BATCH` messages from other workers to the plugin.
    fn read_mailbox(&mut self) {
        if !self.mailbox_pending {
            return;
        }
        for _ in 0..MAILBOX_BATCH {
            match self.core.mailbox.next(&mut self.mailbox_buf) {
                Ok(Some(mailbox::Incoming::Datagram { from, len })) if from & mailbox::TOPIC_FLAG != 0 => {
                    let body = &self.mailbox_buf[4..4 + len];
                    match mailbox::split_topic(body) {
                        Some(m) => {
                            self.core.deliver_published(Some((m.publisher, m.seq)), m.topic, m.msg);
                            if self.core.topics.handed_over.contains(m.topic) {
                                let slot = self.core.slot;
                                self.core.mailbox.forward(slot, from, body);
                            }
                        }
                        None => tracing::warn!(from_slot = from & !mailbox::TOPIC_FLAG, "a malformed topic message"),
                    }
                }
                Ok(Some(mailbox::Incoming::Datagram { from, len })) => {
                    let msg = &self.mailbox_buf[4..4 + len];
                    dispatch::worker_message(&mut self.plugin, &mut self.core, from, msg);
                }
                Ok(Some(mailbox::Incoming::Assembled { from, body })) => match mailbox::split_topic(&body) {
                    Some(m) if from & mailbox::TOPIC_FLAG != 0 => {
                        self.core.deliver_published(Some((m.publisher, m.seq)), m.topic, m.msg);
                        if self.core.topics.handed_over.contains(m.topic) {
                            let slot = self.core.slot;
                            self.core.mailbox.forward(slot, from, &body);
                        }
                    }
                    _ => tracing::warn!(from_slot = from & !mailbox::TOPIC_FLAG, "a malformed large message"),
                },
                Ok(Some(mailbox::Incoming::Fragment)) => {}
                Ok(None) => {
                    self.mailbox_pending = false;
                    return;
                }
                Err(e) => {
                    tracing::warn!("mailbox: {e}");
                    self.mailbox_pending = false;
                    return;
                }
            }
        }
    }

    /// Delivers every message in the mailbox now (a bounded number of batches).
    pub(super) fn read_mailbox_to_end(&mut self) {
        self.mailbox_pending = true;
        for _ in 0..64 {
            self.read_mailbox();
            if !self.mailbox_pending {
                return;
            }
        }
    }

    /// Delivers what the task pool finished and what the plugin's threads notified.
    fn deliver_tasks(&mut self) {
        if !std::mem::take(&mut self.tasks_pending) {
            return;
        }
        let Some(tasks) = self.core.tasks.as_mut() else { return };
        let ready = tasks.take_ready();
        for (id, result) in ready.finished {
            if let Err(e) = &result {
                tracing::warn!(task = id, "task failed: {e}");
            }
            dispatch::task_done(&mut self.plugin, &mut self.core, id, result);
        }
        for note in ready.notes {
            dispatch::notify(&mut self.plugin, &mut self.core, &note);
        }
    }

    fn send_control(&mut self, msg: &ToMaster) {
        if let Err(e) = self.control.send(msg) {
            tracing::warn!("could not send the master {}: {e}", msg_name(msg));
        }
        self.flush_control();
    }

    /// Writes what the master takes now; waits for writability while some is left.
    fn flush_control(&mut self) {
        let done = match self.control.flush() {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!("control socket failed: {e}; stopping");
                self.core.phase.stop(Exit::MasterGone);
                return;
            }
        };
        let interest = if done { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
        let _ = self.poll.registry().reregister(&mut self.control.stream, CONTROL, interest);
    }

    fn read_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGINT) => self.core.phase.stop(Exit::Stopped),
                Ok(Signal::SIGTERM | Signal::SIGQUIT) => self.start_drain(self.drain_timeout_ms),
                Ok(other) => tracing::debug!(signal = ?other, "signal ignored"),
                Err(_) => {}
            }
        }
    }

    /// Stops accepting and asks the plugin to wind down every connection; the loop exits when
    /// none is left or at the deadline.
    fn start_drain(&mut self, timeout_ms: u64) {
        if !self.core.phase.drain(self.core.now_ms + timeout_ms) {
            return;
        }
        tracing::info!(connections = self.core.open_count(), timeout_ms, "draining");
        self.stop_accepting();
        self.core.access_log.flush();
        for id in self.core.ids() {
            dispatch::drain(&mut self.plugin, &mut self.core, id);
        }
        self.core.close_sessions();
    }

    /// A replacement waiting for its predecessor's state takes no connection (they wait in the
    /// slot's accept queue); [`Worker::resume_accepting`] goes on.
    fn pause_accepting(&mut self) {
        if self.core.phase.accepting() && !self.awaiting_handover {
            self.stop_accepting();
        }
    }

    fn resume_accepting(&mut self) {
        if !self.core.phase.accepting() || self.awaiting_handover {
            return;
        }
        if let Err(e) = self.watch_listener() {
            tracing::error!("could not watch the listening socket again: {e}");
        }
        if let Some(udp) = self.core.udp.as_mut() {
            let _ = self.poll.registry().register(udp, LISTENER, Interest::READABLE);
            self.udp_pending = true;
        }
        // Connections queued meanwhile raise no new edge.
        if !self.listener.is_udp() {
            self.accept_all();
        }
    }

    /// Stops taking connections (and datagrams): the slot's replacement serves from now on.
    /// With the ring's accept: it is cancelled and its end awaited, so that the connections
    /// after it stay in the listener's queue; those it completed before are served now if the
    /// worker is leaving (draining, handing over), or wait for [`Worker::resume_accepting`].
    fn stop_accepting(&mut self) {
        match self.ring.as_mut() {
            Some(ring) if self.ring_accepts => {
                self.ring_listening = false;
                if let Err(e) = ring.stop_accepting() {
                    // What it still completes is served when it comes (`ring_accepted`).
                    tracing::warn!("could not stop the ring's accept: {e}");
                }
                if !self.core.phase.accepting() {
                    self.serve_accepted(false);
                }
            }
            _ => {
                let _ = self.poll.registry().deregister(&mut self.listener);
            }
        }
        // UDP: the slot's socket is shared with the replacement, which reads it from now on.
        if let Some(udp) = self.core.udp.as_mut() {
            let _ = self.poll.registry().deregister(udp);
        }
        self.udp_pending = false;
    }

    fn read_conn(&mut self, index: usize, hup: bool) {
        if let Some(c) = self.core.by_index(index) {
            c.read.ready = true;
        }
        dispatch::read(&mut self.plugin, &mut self.core, &mut self.scratch, index, hup);
    }

    fn run_timers(&mut self) {
        let now = self.core.now_ms;
        // One round: a timer the plugin re-arms at 0 ms fires next turn, after I/O was served.
        self.core.timers.begin_round();
        while let Some(timer) = self.core.timers.pop_due(now) {
            dispatch::timer(&mut self.plugin, &mut self.core, timer.id, timer.data);
        }
        self.core.timers.end_round();
        if self.accept_retry_ms.is_some_and(|t| t <= now) {
            self.accept_retry_ms = None;
            self.accept_all();
        }
        if self.next_sweep_ms.is_some_and(|t| t <= now) {
            self.next_sweep_ms = None;
            dispatch::sweep(&mut self.plugin, &mut self.core, now);
            if self.accept_blocked {
                self.accept_blocked = false;
                self.accept_all();
            }
        }
    }

    /// Delivers deferred events and flushes output until nothing is left to do this turn.
    fn settle(&mut self) {
        let closed_before = self.core.stats_closed();
        dispatch::settle(&mut self.plugin, &mut self.core, &mut self.scratch);
        if self.accept_blocked && self.core.stats_closed() != closed_before {
            self.accept_blocked = false;
            self.accept_all();
            dispatch::settle(&mut self.plugin, &mut self.core, &mut self.scratch);
        }
    }

    /// Timers the plugin left armed (for the exit's log line).
    pub(super) fn timers(&self) -> usize {
        self.core.timers.len()
    }

    pub(super) fn shut_down(&mut self) {
        dispatch::worker_stop(&mut self.plugin, &mut self.core);
        crate::logging::flush_suppressed();
        for id in self.core.ids() {
            dispatch::close_now(&mut self.plugin, &mut self.core, id.index());
        }
        for pending in std::mem::take(&mut self.core.pending) {
            dispatch::pending_closed(&mut self.plugin, &mut self.core, pending.id, None);
        }
        // After the last plugin call (a connection closed now may log its response).
        self.core.access_log.flush();
        if let Some(ring) = self.ring.as_mut() {
            ring.finish(FAREWELL_TIMEOUT);
        }
        // The final counters (report id 0): the master adds them to the slot's totals, so a
        // replacement does not reset them. Best effort: a master that is gone does not read it.
        let json = serde_json::to_string(&self.core.report()).expect("reports always serialize");
        self.send_control(&ToMaster::Report { id: ctl::FINAL_REPORT, kind: ReportKind::Status, json });
        if self.control.pending() && !self.control.closed {
            let _ = self.control.flush_timeout(FAREWELL_TIMEOUT);
        }
    }
}

/// A message's name for a log line (a report may be megabytes of JSON).
fn msg_name(msg: &ToMaster) -> &'static str {
    match msg {
        ToMaster::Hello { .. } => "hello",
        ToMaster::Error(_) => "error",
        ToMaster::Ready => "ready",
        ToMaster::Report { .. } => "report",
        ToMaster::Alive { .. } => "alive",
        ToMaster::LogsReopened { .. } => "logs reopened",
        ToMaster::ParentDeath { .. } => "parent death",
        ToMaster::HandedOver(_) => "hand-over report",
        ToMaster::HandoverTimedOut => "hand-over timed out",
        ToMaster::HandoverProgress { .. } => "hand-over progress",
        ToMaster::PeersKnown { .. } => "peers known",
    }
}

/// Whether resident memory grew enough since the last heartbeat (`reported`) to report it now:
/// by an eighth, and 8 MiB at least.
pub(super) fn grew_to_report(reported: u64, rss: u64) -> bool {
    const MIN_GROWTH: u64 = 8 << 20;
    rss >= reported.saturating_add((reported / 8).max(MIN_GROWTH))
}

/// The process's resident memory in bytes, from `/proc/self/statm` (one short read into a stack
/// buffer: this runs every 50 ms and allocates nothing; 0 if it cannot be read).
pub(super) fn resident_bytes() -> u64 {
    use std::io::Read;
    // Seven numbers of at most 20 digits each, and their separators.
    let mut buf = [0u8; 160];
    let Ok(mut file) = std::fs::File::open("/proc/self/statm") else { return 0 };
    let Ok(n) = file.read(&mut buf) else { return 0 };
    let pages = statm_resident_pages(&buf[..n]);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096);
    pages * page as u64
}

/// The second field of `/proc/self/statm` (resident pages), or 0.
pub(super) fn statm_resident_pages(statm: &[u8]) -> u64 {
    let text = std::str::from_utf8(statm).unwrap_or("");
    text.split_ascii_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
}
