//! The supervisor: the master's decisions, without its I/O. It owns the services, the slot table
//! and the reload pipeline, starts, signals and reaps processes through [`Processes`], and
//! leaves everything else (messages to workers, answers to control clients, files to check) as
//! [`Output`]s for the master's loop to carry out. With fake processes its scenarios are
//! millisecond unit tests.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use super::backoff;
use super::prepare::Job;
use super::process::{Exit, Processes};
use super::reload::state::Reloader;
use super::slots::{ClientId, Kill, Readiness, Replace, Role, ServiceId, SlotKey, SlotTable, Worker, WorkerId};
use super::snapshot::Snapshot;
use crate::config::{Service, Timeouts, WorkerSpec};
use crate::ctl::watch::{self, Whereabouts};
use crate::ctl::{MasterChannel, ToWorker};
use crate::status::Answer;
use crate::sys;
use crate::tls::{CertInfo, TlsSpec};

/// Where the master is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for every first worker's "ready"; a worker that fails now fails the start.
    Starting,
    Running,
    /// Workers were told to stop (or drain); the master exits when the last one is reaped.
    Stopping,
}

/// One configured service and what the master holds for it.
pub struct ServiceState {
    pub service: Service,
    /// The plugin file as found in the plugin directories (snapshots are copies of it).
    pub source: PathBuf,
    /// The name the plugin must report (None when the service names it by path).
    pub expected_name: Option<String>,
    pub reloadable: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    /// One SO_REUSEPORT socket per slot, held for the master's whole life.
    pub sockets: Vec<OwnedFd>,
    /// Its plugin file does not exist yet: no workers until it appears.
    pub waiting: bool,
    /// New connections may be steered over `sockets` (TCP, more than one slot, a socket per
    /// slot, each at its slot's index in the SO_REUSEPORT group).
    pub steer: bool,
    /// Its certificate and key as checked (None: plain TCP).
    pub tls: Option<LoadedTls>,
}

/// A service's checked certificate and key, and what `status` shows of them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedTls {
    pub spec: TlsSpec,
    pub info: CertInfo,
}

/// What the master's loop must do for the supervisor.
#[derive(Debug)]
pub enum Output {
    /// A worker was started: watch its channel.
    Attach(WorkerId, MasterChannel<UnixStream>),
    /// A worker of this slot is gone: read what is left on its channel, then drop it.
    Detach(WorkerId, SlotKey),
    Send(WorkerId, ToWorker),
    Answer(ClientId, Answer),
    /// Check a plugin file off the loop; the result comes back through [`Supervisor::checked`].
    Check(Job),
    /// Every first worker is ready.
    Started,
    /// A reload ended (`done`, `unchanged`, `refused`, `aborted`, `abandoned`) after `duration`.
    ReloadDone {
        outcome: &'static str,
        duration: Duration,
    },
    /// A retired worker exited this long after it was told to go.
    Drained(Duration),
    /// Make a socket pair and tell `old` to hand its connections over to `new` through it
    /// (`fallback`: what `old` does with what stays).
    HandOver {
        old: WorkerId,
        new: WorkerId,
        timeout_ms: u64,
        fallback: crate::ctl::Fallback,
    },
    /// A hand-over ended, as its old worker reported it (for the metrics).
    HandedOver(crate::ctl::HandoverReport),
    /// Send the service's new connections to these slots only (their sockets' indices in the
    /// SO_REUSEPORT group), or (None) to every slot, by the kernel's hash.
    Steer {
        service: ServiceId,
        live: Option<Vec<u32>>,
    },
}

/// The last reload, for the log and `status`.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub trigger: String,
    pub summary: String,
}

pub struct Supervisor<P> {
    pub(in crate::master) procs: P,
    pub services: Vec<ServiceState>,
    pub slots: SlotTable,
    pub(in crate::master) reloader: Reloader<Rc<Snapshot>>,
    pub(in crate::master) phase: Phase,
    /// Why the start failed, once a first worker failed.
    pub(in crate::master) start_error: Option<String>,
    /// (service, how it ended) → count, like Workerman's `worker_exit_info`.
    pub exits: BTreeMap<(String, String), u64>,
    pub last_reload: Option<ReloadRecord>,
    /// A check since the last reload that found nothing to replace.
    pub last_unchanged: Option<ReloadRecord>,
    pub(in crate::master) plugin_dirs: Vec<PathBuf>,
    pub(in crate::master) timeouts: Timeouts,
    pub(in crate::master) out: Vec<Output>,
    /// When the current chain step (one slot's replacement) and the reload began.
    pub(in crate::master) step_started: Instant,
    pub(in crate::master) reload_started: Instant,
    /// The steering last asked for, per service (absent: not asked yet, so whatever a previous
    /// image left attached is replaced).
    pub(in crate::master) steered: BTreeMap<ServiceId, Option<Vec<u32>>>,
    /// The services' TLS session ticket keys (kept across reloads, handed over on upgrade).
    pub(in crate::master) tickets: crate::tls::tickets::TicketStore,
    /// Hand-overs by service name (`status`, `/metrics`).
    pub handovers: BTreeMap<String, super::handover::HandoverTotals>,
    /// The workers' I/O backend (`--io`).
    pub(in crate::master) io: crate::config::IoBackend,
    /// Control clients whose reload answers after its hand-overs (`host reload --handovers`),
    /// until their reload ends; then their answers wait in `held_answers`.
    pub(in crate::master) after_handovers: Vec<super::slots::ClientId>,
    pub(in crate::master) held_answers: Vec<super::handover::HeldAnswer>,
    /// Hand-overs whose old worker is itself still adopting (the target of one under way): each
    /// starts once that one ended (`handover.rs`, issue 21).
    pub(in crate::master) held_handovers: Vec<super::handover::HeldHandover>,
}

impl<P: Processes> Supervisor<P> {
    /// A supervisor for `services` whose slots run the given snapshots (None: waiting).
    pub fn new(
        procs: P,
        services: Vec<(ServiceState, Option<Rc<Snapshot>>)>,
        plugin_dirs: Vec<PathBuf>,
        timeouts: Timeouts,
    ) -> Self {
        let now = procs.now();
        let mut slots = SlotTable::default();
        let mut states = Vec::new();
        for (i, (state, snapshot)) in services.into_iter().enumerate() {
            if let Some(snap) = &snapshot {
                slots.add_service(ServiceId(i), state.service.count, snap);
            }
            states.push(state);
        }
        Supervisor {
            procs,
            services: states,
            slots,
            reloader: Reloader::default(),
            phase: Phase::Starting,
            start_error: None,
            exits: BTreeMap::new(),
            last_reload: None,
            last_unchanged: None,
            plugin_dirs,
            timeouts,
            io: crate::config::IoBackend::default(),
            out: Vec::new(),
            step_started: now,
            reload_started: now,
            steered: BTreeMap::new(),
            tickets: Default::default(),
            handovers: BTreeMap::new(),
            after_handovers: Vec::new(),
            held_answers: Vec::new(),
            held_handovers: Vec::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn reloader_idle(&self) -> bool {
        self.reloader.is_idle()
    }

    /// Whether an old worker hands over and has not reported the end (`HandedOver`).
    pub fn handover_under_way(&self) -> bool {
        !self.held_handovers.is_empty() || self.slots.workers().any(|w| w.handing_over_to.is_some())
    }

    /// Whether the master may hand its state over to a new binary now (`host upgrade`): only
    /// while running, with no reload and no hand-over under way or held (the master that would
    /// kill a stuck replacement must be the one that knows the pair, and a held one lives only
    /// in this master's memory).
    pub fn may_upgrade(&self) -> Result<(), super::upgrade::UpgradeError> {
        use super::upgrade::UpgradeError;
        if self.phase != Phase::Running {
            return Err(UpgradeError::NotRunning);
        }
        if !self.reloader.is_idle() {
            return Err(UpgradeError::ReloadUnderWay);
        }
        if self.handover_under_way() {
            return Err(UpgradeError::HandoverUnderWay);
        }
        Ok(())
    }

    /// The drain and kill timeouts (a stop waits for both).
    pub fn drain_and_kill(&self) -> (Duration, Duration) {
        (self.timeouts.drain, self.timeouts.kill)
    }

    pub fn now(&self) -> Instant {
        self.procs.now()
    }

    #[cfg(test)]
    pub fn procs(&mut self) -> &mut P {
        &mut self.procs
    }

    /// What the loop must do now.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        self.steer();
        std::mem::take(&mut self.out)
    }

    /// While a slot of a steerable service has no ready serving worker (dead, starting again,
    /// backing off) and others have, new connections go to the others only: none waits in the
    /// accept queue of a slot nobody accepts on. With every slot live (or none), the kernel
    /// spreads them over all.
    fn steer(&mut self) {
        // Starting: every slot's first worker is on its way (the host is not ready before).
        if self.phase != Phase::Running {
            return;
        }
        for (i, state) in self.services.iter().enumerate() {
            if !state.steer {
                continue;
            }
            let service = ServiceId(i);
            let live: Vec<u32> = self
                .slots
                .slots()
                .filter(|s| s.key.service == service)
                .filter(|s| self.slots.is_live(s))
                .map(|s| s.key.slot)
                .collect();
            let all = live.len() == state.sockets.len() || live.is_empty();
            let wanted = (!all).then_some(live);
            if self.steered.get(&service) != Some(&wanted) {
                self.steered.insert(service, wanted.clone());
                self.out.push(Output::Steer { service, live: wanted });
            }
        }
    }

    /// Stopping and every worker gone: the master exits, with the start error if there was one.
    pub fn finished(&mut self) -> Option<Result<(), String>> {
        (self.phase == Phase::Stopping && self.slots.is_empty()).then(|| self.start_error.take().map_or(Ok(()), Err))
    }

    pub fn service_name(&self, service: ServiceId) -> &str {
        &self.services[service.0].service.name
    }

    /// Starts the first worker of every slot.
    pub fn start(&mut self) {
        let keys: Vec<SlotKey> = self.slots.slots().map(|s| s.key).collect();
        for key in keys {
            self.spawn_serving(key);
        }
        self.check_started();
    }

    fn check_started(&mut self) {
        if self.phase == Phase::Starting && self.slots.all_ready() {
            self.phase = Phase::Running;
            self.out.push(Output::Started);
        }
    }

    fn spec(&self, key: SlotKey, snap: &Snapshot) -> WorkerSpec {
        let state = &self.services[key.service.0];
        WorkerSpec {
            service: state.service.name.clone(),
            slot: key.slot,
            plugin_path: snap.source.clone(),
            plugin_config: state.service.plugin_config.clone(),
            limits: state.service.limits,
            user: state.user.clone(),
            group: state.group.clone(),
            drain_timeout_ms: self.timeouts.drain.as_millis() as u64,
            worker_count: state.service.count,
            heartbeat_ms: crate::config::heartbeat_ms(self.timeouts.worker, state.service.recycle),
            tls: state.tls.as_ref().map(|t| t.spec.clone()),
            access_log: state.service.access_log.is_some(),
            cluster: state.service.cluster.clone(),
            io: self.io,
            await_handover: false,
            handover_batches: state.service.handover_batches,
        }
    }

    /// Starts a process for `key` running `snap`; returns the new worker, unregistered.
    pub(in crate::master) fn launch(
        &mut self,
        key: SlotKey,
        snap: &Rc<Snapshot>,
        role: Role,
    ) -> Result<Worker, String> {
        let mut spec = self.spec(key, snap);
        // A replacement may be handed the slot's connections: it serves no one before that.
        spec.await_handover = role == Role::Replacement && self.services[key.service.0].service.handover;
        if let Some(tls) = spec.tls.as_mut() {
            let now = SystemTime::now();
            // Every service's older keys are forgotten as periods pass.
            self.tickets.advance(now);
            tls.tickets = Some(self.tickets.keys(&spec.service, now).map_err(|e| e.to_string())?);
        }
        let label = format!("{} {}", snap.name, snap.version);
        let socket = self.services[key.service.0].sockets[key.slot as usize].as_fd();
        let spawned = self.procs.spawn_worker(&spec, &label, socket, snap).map_err(|e| e.to_string())?;
        let now = self.procs.now();
        let id = self.slots.next_worker_id();
        tracing::info!(service = %spec.service, slot = key.slot, pid = spawned.pid.as_raw(), hash = %snap.short_hash(), ?role, "worker started");
        self.out.push(Output::Attach(id, spawned.channel));
        Ok(Worker {
            id,
            key,
            pid: spawned.pid,
            readiness: Readiness::Starting,
            snapshot: snap.clone(),
            started: now,
            kill_at: Some(now + self.timeouts.start),
            error: None,
            retired_at: None,
            stall_at: None,
            killed: None,
            watch: spawned.watch,
            messages: 0,
            rss_bytes: 0,
            recycled: None,
            handing_over_to: None,
            handover_grace: Duration::ZERO,
        })
    }

    /// Starts a replacement for `key`'s serving worker on `snap`, for `why`: it takes the slot
    /// over once ready ([`Supervisor::promote`]).
    pub(in crate::master) fn start_replacement(
        &mut self,
        key: SlotKey,
        snap: &Rc<Snapshot>,
        why: Replace,
    ) -> Result<WorkerId, String> {
        let worker = self.launch(key, snap, Role::Replacement)?;
        self.slots.insert_replacement(worker, why).map_err(|e| e.to_string())
    }

    /// A slot's replacement is ready: a recycle's takes the slot over at once; a reload step's
    /// is the chain's to promote.
    fn replacement_ready(&mut self, key: SlotKey) {
        match self.slots.slot(key).and_then(|s| s.replacing()) {
            Some(Replace::Recycle(_)) => self.promote(key, true, "recycle"),
            _ => {
                let fx = self.reloader.ready(key, &self.views());
                self.apply(fx);
            }
        }
    }

    /// Starts the serving worker of a slot that has none; on failure, tries again later.
    pub(in crate::master) fn spawn_serving(&mut self, key: SlotKey) {
        let Some(slot) = self.slots.slot(key) else { return };
        if slot.serving().is_some() {
            return;
        }
        let snap = slot.snapshot.clone();
        match self.launch(key, &snap, Role::Serving) {
            Ok(worker) => {
                if let Err(e) = self.slots.insert_serving(worker) {
                    tracing::error!(slot = key.slot, "internal: {e}");
                }
            }
            // A worker that cannot even be started while the host starts fails the start, with
            // the reason (`start -d` says it), instead of being tried again for ever.
            Err(e) if self.phase == Phase::Starting => {
                let service = self.service_name(key.service).to_string();
                tracing::error!(service = %service, slot = key.slot, "{e}");
                self.start_error = Some(format!("worker #{} of service {service} could not start: {e}", key.slot));
                self.stop(false);
            }
            Err(e) => {
                tracing::error!(service = %self.service_name(key.service), slot = key.slot, "{e}");
                let failures = self.slots.note_failure(key, true);
                let delay = backoff::restart_delay(failures).max(Duration::from_millis(100));
                self.slots.schedule_restart(key, self.procs.now() + delay);
            }
        }
    }

    /// A worker said it is serving.
    pub fn worker_ready(&mut self, id: WorkerId) {
        let Some(w) = self.slots.worker_mut(id) else { return };
        if w.readiness == Readiness::Ready {
            return;
        }
        w.readiness = Readiness::Ready;
        let (key, pid) = (w.key, w.pid.as_raw());
        let ms = w.uptime(self.procs.now()).as_millis() as u64;
        let role = self.slots.role(id);
        if role != Some(Role::Retiring) {
            // The start deadline is met (a retiring worker keeps its stop deadline); the
            // watchdog takes over.
            let stall_at = self.timeouts.worker.map(|t| self.procs.now() + t);
            if let Some(w) = self.slots.worker_mut(id) {
                w.kill_at = None;
                w.stall_at = stall_at;
            }
        }
        tracing::info!(service = %self.service_name(key.service), slot = key.slot, pid, start_ms = ms, "worker ready");
        match role {
            Some(Role::Replacement) => self.replacement_ready(key),
            Some(Role::Serving) => {
                self.slots.note_failure(key, false);
            }
            _ => {}
        }
        self.check_started();
    }

    /// A ready worker's loop turned: the watchdog waits again; recycling looks at its usage.
    pub fn worker_alive(&mut self, id: WorkerId, messages: u64, rss_bytes: u64) {
        let now = self.procs.now();
        if let Some(timeout) = self.timeouts.worker {
            if let Some(w) = self.slots.worker_mut(id).filter(|w| w.stall_at.is_some()) {
                w.stall_at = Some(now + timeout);
            }
        }
        self.check_usage(id, messages, rss_bytes);
    }

    /// A worker reported why it cannot start (it exits next).
    pub fn worker_error(&mut self, id: WorkerId, error: String) {
        if let Some(w) = self.slots.worker_mut(id) {
            w.error = Some(error);
        }
    }

    /// Collects every exited worker and acts on it.
    #[cfg(test)]
    pub fn reap(&mut self) {
        for (id, exit) in self.take_exits() {
            self.worker_exited(id, &exit);
        }
    }

    /// The workers that exited since the last call (reaped, not acted on yet: the loop first reads
    /// what they said last, then calls [`Supervisor::worker_exited`]).
    pub fn take_exits(&mut self) -> Vec<(WorkerId, Exit)> {
        let pids: Vec<(WorkerId, nix::unistd::Pid)> = self.slots.workers().map(|w| (w.id, w.pid)).collect();
        pids.into_iter().filter_map(|(id, pid)| self.procs.reap(pid).map(|exit| (id, exit))).collect()
    }

    /// A worker exited (reaped by [`Supervisor::take_exits`]).
    pub fn worker_exited(&mut self, id: WorkerId, exit: &Exit) {
        // An old worker gone before its hand-over's report: the answers that waited for it go.
        self.settle_held_answers(id, None);
        let slot = self.slots.worker(id).and_then(|w| self.slots.slot(w.key));
        let replacing = slot.filter(|s| s.replacement() == Some(id)).and_then(|s| s.replacing());
        let Some((w, role)) = self.slots.remove(id) else { return };
        let key = w.key;
        self.out.push(Output::Detach(id, key));
        // Gone: the hand-over it handed over in (if any) is over, and one held for it as an old
        // worker cannot start (its replacement is told to serve).
        self.start_held_handovers();
        let service = self.service_name(key.service).to_string();
        let how = match (&w.killed, w.recycled) {
            (Some(kill), _) => format!("{kill}: {}", exit.how),
            (None, Some(cause)) => format!("{cause}: {}", exit.how),
            (None, None) => exit.how.clone(),
        };
        *self.exits.entry((service.clone(), how)).or_default() += 1;
        let pid = w.pid.as_raw();
        let lived_ms = w.uptime(self.procs.now()).as_millis() as u64;
        let why = w.error.clone().unwrap_or_else(|| format!("it exited with {} before it was ready", exit.how));
        if let Some(at) = w.retired_at {
            self.out.push(Output::Drained(self.procs.now().saturating_duration_since(at)));
        }
        match role {
            Role::Retiring if exit.clean => tracing::info!(service = %service, slot = key.slot, pid, "worker stopped"),
            Role::Retiring => {
                tracing::warn!(service = %service, slot = key.slot, pid, "worker stopped with {}", exit.how)
            }
            Role::Replacement if matches!(replacing, Some(Replace::Recycle(_))) => {
                tracing::error!(service = %service, slot = key.slot, pid, "worker to recycle into failed: {why}; the old one goes on");
                self.recycle_failed(key);
                self.restart_if_empty(key, false);
            }
            Role::Replacement => {
                tracing::error!(service = %service, slot = key.slot, pid, "replacement worker failed: {why}");
                self.replacement_failed(key, &why);
                // The slot lost its serving worker meanwhile: it needs one again.
                self.restart_if_empty(key, false);
            }
            Role::Serving => {
                let detail = w.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                tracing::error!(service = %service, slot = key.slot, pid, lived_ms, "worker died with {}{detail}", exit.how);
                match self.phase {
                    Phase::Stopping => {}
                    Phase::Starting if w.readiness == Readiness::Starting => {
                        self.start_error =
                            Some(format!("worker #{} of service {service} could not start: {why}", key.slot));
                        self.stop(false);
                    }
                    // A worker that served is replaced at once; back-off is for slots whose
                    // workers cannot start.
                    Phase::Starting | Phase::Running => self.restart_if_empty(key, w.readiness == Readiness::Starting),
                }
            }
        }
    }

    /// Schedules a serving worker for a slot left without one (unless a replacement is about to
    /// take it over, or the master stops).
    pub(in crate::master) fn restart_if_empty(&mut self, key: SlotKey, failed_start: bool) {
        if self.phase == Phase::Stopping {
            return;
        }
        let Some(slot) = self.slots.slot(key) else { return };
        if slot.serving().is_some() || slot.replacement().is_some() {
            return;
        }
        let failures = self.slots.note_failure(key, failed_start);
        let delay = backoff::restart_delay(failures);
        if delay > Duration::ZERO {
            tracing::warn!(service = %self.service_name(key.service), slot = key.slot, failures, delay_ms = delay.as_millis() as u64, "worker keeps dying at start; restarting after a delay");
        }
        self.slots.schedule_restart(key, self.procs.now() + delay);
    }

    /// The master's own loop was busy for `busy` since its poll returned. Longer than a
    /// heartbeat's share of the worker timeout, and what workers said meanwhile sat unread: the
    /// watchdog gives each worker a whole timeout from now instead of blaming it for the
    /// master's stall (issue 20 item 1).
    pub fn master_busy(&mut self, busy: Duration) {
        let Some(timeout) = self.timeouts.worker else { return };
        if busy < timeout / 4 {
            return;
        }
        let fresh = self.procs.now() + timeout;
        let watched: Vec<WorkerId> = self.slots.workers().filter(|w| w.stall_at.is_some()).map(|w| w.id).collect();
        for &id in &watched {
            if let Some(at) = self.slots.worker_mut(id).and_then(|w| w.stall_at.as_mut()) {
                *at = (*at).max(fresh);
            }
        }
        let spared = watched.len();
        tracing::warn!(
            busy_ms = busy.as_millis() as u64,
            workers = spared,
            "the master's loop was held up; the watchdog waits a whole timeout again"
        );
    }

    /// Kills workers past their deadline and starts the restarts that are due.
    pub fn tick(&mut self) {
        let now = self.procs.now();
        let overdue: Vec<WorkerId> =
            self.slots.workers().filter(|w| w.kill_at.is_some_and(|k| k <= now)).map(|w| w.id).collect();
        let stalled: Vec<WorkerId> =
            self.slots.workers().filter(|w| w.stall_at.is_some_and(|k| k <= now)).map(|w| w.id).collect();
        for id in stalled {
            let timeout = self.timeouts.worker.unwrap_or_default();
            let Some(w) = self.slots.worker_mut(id) else { continue };
            w.stall_at = None;
            // Read before the kill: the page says where the loop is now.
            let whereabouts = w.watch.as_ref().map(|page| watch::decode(page.load()));
            let (place, stuck_s) = match whereabouts {
                Some(Whereabouts::InCallback { name, since_ms }) => {
                    let since = sys::monotonic_ms().saturating_sub(since_ms);
                    (format!("in {name}"), Duration::from_millis(since).as_secs())
                }
                Some(Whereabouts::InLoop) => ("in the host's loop".to_string(), timeout.as_secs()),
                None => ("in an unknown callback".to_string(), timeout.as_secs()),
            };
            w.error = Some(format!("it made no progress for {} s (stuck {place})", timeout.as_secs_f64()));
            w.killed = Some(Kill::Watchdog(place.clone()));
            let (pid, key) = (w.pid, w.key);
            let plugin = format!("{} {}", w.snapshot.name, w.snapshot.version);
            tracing::error!(service = %self.service_name(key.service), slot = key.slot, pid = pid.as_raw(), plugin = %plugin, timeout_s = timeout.as_secs_f64(), "worker made no progress: stuck {place} for {stuck_s} s; killed");
            self.procs.kill(pid, Signal::SIGKILL);
        }
        for id in overdue {
            let start = self.timeouts.start;
            let Some(w) = self.slots.worker_mut(id) else { continue };
            let starting = w.readiness == Readiness::Starting;
            let why = if starting { "was not ready in time" } else { "did not stop in time" };
            if starting && w.error.is_none() {
                w.error = Some(format!("it was not ready within {} s", start.as_secs_f64()));
            }
            w.kill_at = None;
            let (pid, key) = (w.pid, w.key);
            tracing::warn!(service = %self.service_name(key.service), slot = key.slot, pid = pid.as_raw(), "worker {why}; killing it");
            self.procs.kill(pid, Signal::SIGKILL);
        }
        if self.phase != Phase::Stopping {
            for key in self.slots.take_due_restarts(now) {
                self.spawn_serving(key);
            }
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots.next_deadline()
    }

    /// Tells every worker to stop (graceful: drain first), with a deadline after which it is killed.
    pub fn stop(&mut self, graceful: bool) {
        if self.phase == Phase::Stopping {
            if !graceful {
                tracing::info!("stopping now");
                self.retire_all(false);
            }
            return;
        }
        tracing::info!(graceful, "stopping");
        self.phase = Phase::Stopping;
        let fx = self.reloader.stop();
        self.apply(fx);
        self.answer_held_now();
        // Held hand-overs never start: every worker is told to go (a replacement awaiting one
        // drains or stops as any).
        self.held_handovers.clear();
        self.slots.cancel_restarts();
        self.retire_all(graceful);
    }

    fn retire_all(&mut self, graceful: bool) {
        let ids: Vec<WorkerId> = self.slots.workers().map(|w| w.id).collect();
        for id in ids {
            self.retire(id, graceful);
        }
    }

    /// Asks one worker to go: drain (graceful) or stop now, killed at the deadline either way.
    pub(in crate::master) fn retire(&mut self, id: WorkerId, graceful: bool) {
        let (drain, kill) = (self.timeouts.drain, self.timeouts.kill);
        let now = self.procs.now();
        let Some(w) = self.slots.worker_mut(id) else { return };
        let (msg, kill_after) = if graceful {
            (ToWorker::Drain { timeout_ms: drain.as_millis() as u64 }, drain + kill)
        } else {
            (ToWorker::Stop, kill)
        };
        let kill_at = now + kill_after;
        w.kill_at = Some(w.kill_at.map_or(kill_at, |k| k.min(kill_at)));
        // Its stop deadline bounds it now.
        w.stall_at = None;
        w.retired_at.get_or_insert(now);
        self.slots.retire(id);
        // A worker already exiting does not read it; the kill deadline still applies.
        self.out.push(Output::Send(id, msg));
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;
    use std::path::Path;

    use super::super::prepare::{Done, Purpose};
    use super::super::process::fake::FakeProcesses;
    use super::super::reload::state::{CheckId, Trigger};
    use super::*;

    fn socket() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    fn state(name: &str, count: u32, reloadable: bool) -> ServiceState {
        ServiceState {
            service: Service::for_tests(name, name, "127.0.0.1:0", count),
            source: PathBuf::from(format!("/plugins/lib{name}.so")),
            expected_name: Some(name.into()),
            reloadable,
            user: None,
            group: None,
            tls: None,
            sockets: (0..count).map(|_| socket()).collect(),
            waiting: false,
            steer: false,
        }
    }

    const TIMEOUTS: Timeouts = Timeouts {
        start: Duration::from_secs(10),
        drain: Duration::from_secs(5),
        kill: Duration::from_secs(2),
        worker: Some(Duration::from_secs(30)),
        probe: Duration::from_secs(10),
    };

    fn supervisor(services: Vec<(ServiceState, Option<u64>)>) -> Supervisor<FakeProcesses> {
        let mut procs = FakeProcesses::default();
        for (s, _) in &services {
            procs.plugins.insert(s.service.name.clone(), s.source.clone());
        }
        let services = services
            .into_iter()
            .map(|(s, hash)| {
                let snap = hash.map(|h| Rc::new(Snapshot::fake(&s.service.name, h)));
                (s, snap)
            })
            .collect();
        Supervisor::new(procs, services, Vec::new(), TIMEOUTS)
    }

    /// Every worker id attached so far, in order, and the outputs.
    fn outputs(sup: &mut Supervisor<FakeProcesses>) -> Vec<Output> {
        sup.take_outputs()
    }

    fn attached(out: &[Output]) -> Vec<WorkerId> {
        out.iter().filter_map(|o| if let Output::Attach(id, _) = o { Some(*id) } else { None }).collect()
    }

    fn checks(out: &[Output]) -> Vec<&Job> {
        out.iter().filter_map(|o| if let Output::Check(j) = o { Some(j) } else { None }).collect()
    }

    fn serving(sup: &Supervisor<FakeProcesses>, service: usize, slot: u32) -> Option<WorkerId> {
        sup.slots.slot(SlotKey { service: ServiceId(service), slot }).and_then(|s| s.serving())
    }

    fn pid(sup: &Supervisor<FakeProcesses>, id: WorkerId) -> nix::unistd::Pid {
        sup.slots.worker(id).unwrap().pid
    }

    /// Starts the supervisor and makes every first worker ready.
    fn started(services: Vec<(ServiceState, Option<u64>)>) -> Supervisor<FakeProcesses> {
        let mut sup = supervisor(services);
        sup.start();
        let out = outputs(&mut sup);
        for id in attached(&out) {
            sup.worker_ready(id);
        }
        assert_eq!(sup.phase(), Phase::Running);
        assert!(matches!(outputs(&mut sup).last(), Some(Output::Started)));
        sup
    }

    fn done(job: &Job, hash: u64) -> Done {
        let Purpose::Reload(check) = job.purpose else { panic!("reload job expected") };
        Done {
            purpose: Purpose::Reload(check),
            service: job.service,
            source: job.source.clone(),
            result: Ok(Snapshot::fake("http", hash)),
        }
    }

    #[test]
    fn a_worker_that_fails_at_start_fails_the_start() {
        let mut sup = supervisor(vec![(state("http", 2, true), Some(1))]);
        sup.start();
        let ids = attached(&outputs(&mut sup));
        assert_eq!(ids.len(), 2);
        sup.worker_error(ids[0], "plugin refused its config".into());
        let p = pid(&sup, ids[0]);
        sup.procs().exit(p, "exit code 2");
        sup.reap();
        assert_eq!(sup.phase(), Phase::Stopping);
        let p = pid(&sup, ids[1]);
        sup.procs().exit(p, "exit code 0");
        sup.reap();
        let err = sup.finished().unwrap().unwrap_err();
        assert!(err.contains("plugin refused its config"), "{err}");
    }

    // Issue 20 item 8: a worker that cannot be started at all while the host starts fails the
    // start with the reason; it is not tried again for ever.
    #[test]
    fn a_worker_that_cannot_be_spawned_at_start_fails_the_start_with_the_reason() {
        let mut sup = supervisor(vec![(state("http", 2, true), Some(1))]);
        sup.procs().refuse_spawn = true;
        sup.start();
        assert_eq!(sup.phase(), Phase::Stopping);
        for id in attached(&outputs(&mut sup)) {
            let p = pid(&sup, id);
            sup.procs().exit(p, "signal SIGKILL");
        }
        sup.reap();
        let err = sup.finished().expect("stopped").unwrap_err();
        assert!(err.contains("could not start") && err.contains("fork refused"), "{err}");
    }

    #[test]
    fn a_serving_worker_that_dies_is_replaced_at_once_even_when_young() {
        let mut sup = started(vec![(state("http", 1, true), Some(1))]);
        for _ in 0..5 {
            let id = serving(&sup, 0, 0).unwrap();
            let p = pid(&sup, id);
            sup.procs().exit(p, "signal SIGSEGV");
            sup.reap();
            sup.tick();
            let new = attached(&outputs(&mut sup));
            assert_eq!(new.len(), 1, "replaced at once, no back-off for a worker that served");
            sup.worker_ready(new[0]);
        }
        assert_eq!(sup.exits.get(&("http".into(), "signal SIGSEGV".into())), Some(&5));
    }

    #[test]
    fn a_slot_whose_workers_cannot_start_backs_off() {
        let mut sup = started(vec![(state("http", 1, true), Some(1))]);
        let id = serving(&sup, 0, 0).unwrap();
        let p = pid(&sup, id);
        sup.procs().exit(p, "signal SIGKILL");
        sup.reap();
        sup.tick();
        let mut delays = Vec::new();
        for _ in 0..4 {
            let new = attached(&outputs(&mut sup));
            assert_eq!(new.len(), 1);
            let p = pid(&sup, new[0]);
            sup.procs().exit(p, "exit code 2");
            sup.reap();
            let at = sup.next_deadline().unwrap();
            delays.push(at.saturating_duration_since(sup.now()));
            sup.procs().advance(delays.last().copied().unwrap());
            sup.tick();
        }
        assert!(delays.windows(2).all(|d| d[1] > d[0]), "growing delays: {delays:?}");
    }

    #[test]
    fn a_serving_worker_dying_while_its_replacement_starts_never_gives_two_serving_workers() {
        let mut sup = started(vec![(state("http", 1, true), Some(1))]);
        let old = serving(&sup, 0, 0).unwrap();
        sup.request_reload(true, Trigger::Command, Some(ClientId(7)));
        let out = outputs(&mut sup);
        let job = checks(&out)[0];
        sup.checked(done(job, 2));
        let replacement = attached(&outputs(&mut sup))[0];
        // The old serving worker dies young while the replacement starts.
        let p = pid(&sup, old);
        sup.procs().exit(p, "signal SIGSEGV");
        sup.reap();
        sup.tick();
        assert!(attached(&outputs(&mut sup)).is_empty(), "the replacement takes the slot over; no restart");
        sup.worker_ready(replacement);
        assert_eq!(serving(&sup, 0, 0), Some(replacement));
        // Much later, nothing else starts for that slot.
        sup.procs().advance(Duration::from_secs(60));
        sup.tick();
        let out = outputs(&mut sup);
        assert!(attached(&out).is_empty());
        assert!(out.iter().any(|o| matches!(o, Output::Answer(ClientId(7), Answer::Ok { .. }))), "{out:?}");
        assert_eq!(sup.slots.workers().count(), 1);
    }

    #[test]
    fn a_failed_replacement_of_a_slot_without_a_worker_restarts_the_old_snapshot() {
        let mut sup = started(vec![(state("http", 1, true), Some(1))]);
        let old = serving(&sup, 0, 0).unwrap();
        sup.request_reload(true, Trigger::Signal("SIGHUP"), None);
        let out = outputs(&mut sup);
        sup.checked(done(checks(&out)[0], 2));
        let replacement = attached(&outputs(&mut sup))[0];
        let p = pid(&sup, old);
        sup.procs().exit(p, "signal SIGKILL");
        sup.reap();
        let p = pid(&sup, replacement);
        sup.procs().exit(p, "exit code 2");
        sup.reap();
        sup.tick();
        let new = attached(&outputs(&mut sup));
        assert_eq!(new.len(), 1, "the slot gets a serving worker again");
        assert_eq!(sup.procs().last().hash, 1, "on the last good snapshot");
        assert!(sup.last_reload.as_ref().unwrap().summary.starts_with("aborted"), "{:?}", sup.last_reload);
    }

    #[test]
    fn a_manual_reload_skips_a_waiting_service_and_only_hooks_a_non_reloadable_one() {
        let mut waiting = state("later", 1, true);
        waiting.waiting = true;
        let mut sup =
            started(vec![(state("http", 1, true), Some(1)), (state("fixed", 1, false), Some(1)), (waiting, None)]);
        let fixed = serving(&sup, 1, 0).unwrap();
        sup.request_reload(false, Trigger::Command, Some(ClientId(1)));
        let out = outputs(&mut sup);
        assert!(out.iter().any(|o| matches!(o, Output::Send(id, ToWorker::ReloadHook) if *id == fixed)));
        let jobs = checks(&out);
        assert_eq!(jobs.len(), 1, "only the reloadable, started service is checked: {out:?}");
        assert_eq!(jobs[0].service, ServiceId(0));
    }

    #[test]
    fn a_file_change_of_a_non_reloadable_service_reloads_nothing() {
        let mut sup = started(vec![(state("fixed", 1, false), Some(1))]);
        sup.plugin_file_changed(Path::new("/plugins/libfixed.so"));
        assert!(checks(&outputs(&mut sup)).is_empty());
    }

    #[test]
    fn a_waiting_service_starts_when_its_file_passes() {
        let mut waiting = state("later", 2, true);
        waiting.waiting = true;
        let mut sup = started(vec![(state("http", 1, true), Some(1)), (waiting, None)]);
        sup.plugin_file_changed(Path::new("/plugins/liblater.so"));
        let out = outputs(&mut sup);
        let job = checks(&out)[0];
        assert_eq!(job.purpose, Purpose::Activate);
        let d = Done {
            purpose: Purpose::Activate,
            service: job.service,
            source: job.source.clone(),
            result: Ok(Snapshot::fake("later", 5)),
        };
        sup.checked(d);
        assert_eq!(attached(&outputs(&mut sup)).len(), 2);
        assert!(!sup.services[1].waiting);
    }

    #[test]
    fn stop_during_a_check_answers_the_waiter_and_ignores_the_result() {
        let mut sup = started(vec![(state("http", 1, true), Some(1))]);
        sup.request_reload(true, Trigger::Command, Some(ClientId(3)));
        let out = outputs(&mut sup);
        let job = checks(&out)[0];
        let late = done(job, 2);
        sup.stop(true);
        let out = outputs(&mut sup);
        assert!(out.iter().any(|o| matches!(o, Output::Answer(ClientId(3), Answer::Error { .. }))));
        assert!(out.iter().any(|o| matches!(o, Output::Send(_, ToWorker::Drain { .. }))));
        sup.checked(late);
        assert!(attached(&outputs(&mut sup)).is_empty());
        let _ = CheckId(0);
    }

    #[test]
    fn workers_that_do_not_stop_in_time_are_killed() {
        let mut sup = started(vec![(state("http", 2, true), Some(1))]);
        sup.stop(false);
        sup.procs().advance(TIMEOUTS.kill);
        sup.tick();
        assert_eq!(sup.procs().signals.iter().filter(|(_, s)| *s == Signal::SIGKILL).count(), 2);
        sup.reap();
        assert_eq!(sup.finished(), Some(Ok(())));
    }

    #[test]
    fn the_watchdog_kills_a_silent_worker_and_its_slot_is_served_again_at_once() {
        let mut sup = started(vec![(state("http", 2, true), Some(1))]);
        let (stuck, fine) = (serving(&sup, 0, 0).unwrap(), serving(&sup, 0, 1).unwrap());
        // The stuck worker's page says it is in on_message.
        let p = pid(&sup, stuck);
        let word = watch::encode(const { watch::callback("on_message") }, sys::monotonic_ms().saturating_sub(40_000));
        sup.procs().watches[&p].store(word);
        for _ in 0..4 {
            sup.procs().advance(Duration::from_secs(10));
            sup.worker_alive(fine, 0, 0);
            sup.tick();
        }
        let killed: Vec<_> = sup.procs().signals.clone();
        assert_eq!(killed, vec![(pid(&sup, stuck), Signal::SIGKILL)], "only the silent worker is killed");
        let error = sup.slots.worker(stuck).unwrap().error.clone().unwrap();
        assert!(error.contains("stuck in on_message"), "{error}");
        sup.reap();
        sup.tick();
        let new = attached(&outputs(&mut sup));
        assert_eq!(new.len(), 1, "replaced at once");
        assert_eq!(serving(&sup, 0, 1), Some(fine));
        let how = "watchdog (in on_message): signal SIGKILL";
        assert_eq!(sup.exits.get(&("http".into(), how.into())), Some(&1), "{:?}", sup.exits);
    }

    // Issue 20 item 1: the master itself stalled (a blocking step in its loop) and read no
    // heartbeat meanwhile: no worker is killed for it.
    #[test]
    fn the_watchdog_does_not_blame_workers_for_the_masters_own_stall() {
        let mut sup = started(vec![(state("http", 2, true), Some(1))]);
        let timeout = TIMEOUTS.worker.unwrap();
        sup.procs().advance(timeout + Duration::from_secs(1));
        sup.master_busy(timeout + Duration::from_secs(1));
        sup.tick();
        assert!(sup.procs().signals.is_empty(), "workers killed for the master's stall: {:?}", sup.procs().signals);
        // A worker that stays silent a whole timeout afterwards is still killed.
        sup.procs().advance(timeout);
        sup.master_busy(Duration::from_millis(1));
        sup.tick();
        assert_eq!(sup.procs().signals.len(), 2);
    }

    #[test]
    fn a_stuck_retiring_worker_never_blocks_the_reload_chain() {
        let mut sup = started(vec![(state("http", 2, true), Some(1))]);
        sup.request_reload(true, Trigger::Command, Some(ClientId(9)));
        let out = outputs(&mut sup);
        sup.checked(done(checks(&out)[0], 2));
        // Neither old worker ever exits (stuck in its plugin); each replacement gets ready.
        for _ in 0..2 {
            let new = attached(&outputs(&mut sup));
            assert_eq!(new.len(), 1);
            sup.worker_ready(new[0]);
        }
        let out = outputs(&mut sup);
        assert!(out.iter().any(|o| matches!(o, Output::Answer(ClientId(9), Answer::Ok { .. }))), "{out:?}");
        assert_eq!(sup.slots.workers().count(), 4, "the old ones still retire");
        // They are killed at their deadline: the hand-over's (and its waits for the peers and for a timed-out
        // replacement's end), then the drain's.
        let wait = Duration::from_millis(crate::ctl::HANDOVER_END_WAIT_MS) + crate::master::mailbox::PEERS_ACK_WAIT;
        sup.procs().advance(crate::config::DEFAULT_HANDOVER_TIMEOUT + wait + TIMEOUTS.drain + TIMEOUTS.kill);
        sup.tick();
        assert_eq!(sup.procs().signals.iter().filter(|(_, s)| *s == Signal::SIGKILL).count(), 2);
    }

    fn steering(out: &[Output]) -> Vec<Option<Vec<u32>>> {
        out.iter().filter_map(|o| if let Output::Steer { live, .. } = o { Some(live.clone()) } else { None }).collect()
    }

    #[test]
    fn new_connections_avoid_a_slot_without_a_ready_worker_until_it_has_one_again() {
        let mut steered = state("http", 3, true);
        steered.steer = true;
        let mut sup = supervisor(vec![(steered, Some(1)), (state("other", 2, true), Some(1))]);
        sup.start();
        let out = outputs(&mut sup);
        assert!(steering(&out).is_empty(), "nothing while starting");
        let ids = attached(&out);
        sup.worker_ready(ids[0]);
        assert!(steering(&outputs(&mut sup)).is_empty(), "nothing while starting");
        for id in &ids[1..] {
            sup.worker_ready(*id);
        }
        let out = outputs(&mut sup);
        assert_eq!(
            steering(&out),
            vec![None],
            "running, all live: the kernel's spread (once, for the steerable service)"
        );
        assert!(out.iter().any(|o| matches!(o, Output::Started)));
        // Slot 1 dies; its next workers cannot start (back-off).
        let p = pid(&sup, serving(&sup, 0, 1).unwrap());
        sup.procs().exit(p, "signal SIGSEGV");
        sup.reap();
        assert_eq!(steering(&outputs(&mut sup)), vec![Some(vec![0, 2])]);
        for _ in 0..3 {
            sup.tick();
            let new = attached(&outputs(&mut sup));
            assert_eq!(new.len(), 1);
            let p = pid(&sup, new[0]);
            sup.procs().exit(p, "exit code 3");
            sup.reap();
            let wait = sup.next_deadline().unwrap().saturating_duration_since(sup.now());
            sup.procs().advance(wait);
            assert!(steering(&outputs(&mut sup)).is_empty(), "no flapping while it cannot start");
        }
        // It comes back: every slot gets new connections again.
        sup.tick();
        let new = attached(&outputs(&mut sup));
        sup.worker_ready(new[0]);
        assert_eq!(steering(&outputs(&mut sup)), vec![None]);
    }

    fn recycling(max_requests: u64, max_memory: u64) -> ServiceState {
        let mut s = state("http", 2, true);
        s.service.recycle = crate::config::Recycle { max_requests, max_memory };
        s
    }

    /// `to` was told to drain, or to hand over (and drain what stays).
    fn sent_drain(out: &[Output], to: WorkerId) -> bool {
        out.iter().any(|o| match o {
            Output::Send(id, ToWorker::Drain { .. }) => *id == to,
            Output::HandOver { old, fallback: crate::ctl::Fallback::Drain { .. }, .. } => *old == to,
            _ => false,
        })
    }

    // A promoted replacement takes the old worker's connections (hand-over, with the drain as
    // the fallback), unless the service says `handover = false`: then the old one drains. A
    // replacement that may be handed connections starts awaiting them (it accepts nothing
    // before); one that will not be is told to serve as it is promoted.
    #[test]
    fn a_replaced_worker_hands_over_unless_the_service_drains() {
        for handover in [true, false] {
            let mut s = state("http", 1, true);
            s.service.handover = handover;
            let mut sup = started(vec![(s, Some(1))]);
            assert!(!sup.procs().last().await_handover, "a slot's first worker awaits nothing");
            let old = serving(&sup, 0, 0).unwrap();
            sup.request_reload(true, Trigger::Command, None);
            let out = outputs(&mut sup);
            sup.checked(done(checks(&out)[0], 2));
            let new = attached(&outputs(&mut sup));
            assert_eq!(sup.procs().last().await_handover, handover);
            sup.worker_ready(new[0]);
            let out = outputs(&mut sup);
            let handed = out.iter().any(|o| matches!(o, Output::HandOver { old: o, new: n, fallback: crate::ctl::Fallback::Drain { .. }, .. } if *o == old && *n == new[0]));
            let drained = out.iter().any(|o| matches!(o, Output::Send(id, ToWorker::Drain { .. }) if *id == old));
            let served = out.iter().any(|o| matches!(o, Output::Send(id, ToWorker::Serve) if *id == new[0]));
            assert_eq!((handed, drained, served), (handover, !handover, !handover), "handover = {handover}: {out:?}");
        }
    }

    // `host reload --handovers`: the answer waits for the hand-over the reload began, then says
    // what it did; an old worker that exits without a report (killed at its deadline) ends the
    // wait too, and so does a master that stops. (A client that did not ask hears the chain's
    // end at once: the tests above.)
    #[test]
    fn a_reload_asked_with_handovers_answers_once_they_ended() {
        for how in ["reported", "killed", "stopped"] {
            let mut sup = started(vec![(state("http", 1, true), Some(1))]);
            let old = serving(&sup, 0, 0).unwrap();
            sup.answer_after_handovers(ClientId(7));
            sup.request_reload(true, Trigger::Command, Some(ClientId(7)));
            let out = outputs(&mut sup);
            sup.checked(done(checks(&out)[0], 2));
            let new = attached(&outputs(&mut sup));
            sup.worker_ready(new[0]);
            let out = outputs(&mut sup);
            assert!(out.iter().any(|o| matches!(o, Output::HandOver { old: o, .. } if *o == old)), "{out:?}");
            assert!(!out.iter().any(|o| matches!(o, Output::Answer(..))), "not before the hand-over ended: {out:?}");
            match how {
                "reported" => sup.handed_over(
                    old,
                    crate::ctl::HandoverReport { attempted: true, moved: 3, stayed: 1, ..Default::default() },
                ),
                "killed" => {
                    let p = pid(&sup, old);
                    sup.procs().exit(p, "signal SIGKILL");
                    sup.reap();
                }
                _ => sup.stop(true),
            }
            let out = outputs(&mut sup);
            let message = out.iter().find_map(|o| match o {
                Output::Answer(ClientId(7), Answer::Ok { message, .. }) => Some(message.clone()),
                _ => None,
            });
            let message = message.unwrap_or_else(|| panic!("no answer: {out:?}"));
            let outcome = match how {
                "reported" => "; hand-overs: 3 connections moved, 1 drained",
                _ => "; hand-overs: 0 connections moved, 0 drained, 1 ended without a report",
            };
            assert!(message.starts_with("reload done: 1 workers replaced") && message.ends_with(outcome), "{message}");
            assert!(sup.held_answers.is_empty() && sup.after_handovers.is_empty());
        }
    }

    // The service's `handover_timeout` is what both workers are told, and the old worker's kill
    // deadline waits for it (then the drain, then the kill timeout).
    #[test]
    fn the_handover_timeout_is_the_services() {
        let mut s = state("http", 1, true);
        s.service.limits.handover_timeout_ms = 3000;
        let mut sup = started(vec![(s, Some(1))]);
        let old = serving(&sup, 0, 0).unwrap();
        sup.request_reload(true, Trigger::Command, None);
        let out = outputs(&mut sup);
        sup.checked(done(checks(&out)[0], 2));
        let new = attached(&outputs(&mut sup));
        sup.worker_ready(new[0]);
        let out = outputs(&mut sup);
        let timeout = out.iter().find_map(|o| match o {
            Output::HandOver { old: o, timeout_ms, .. } if *o == old => Some(*timeout_ms),
            _ => None,
        });
        assert_eq!(timeout, Some(3000), "{out:?}");
        let p = pid(&sup, old);
        let wait = Duration::from_millis(crate::ctl::HANDOVER_END_WAIT_MS) + crate::master::mailbox::PEERS_ACK_WAIT;
        let kill_after = Duration::from_millis(3000) + wait + TIMEOUTS.drain + TIMEOUTS.kill;
        sup.procs().advance(kill_after - Duration::from_millis(1));
        sup.tick();
        let killed = |sup: &mut Supervisor<FakeProcesses>| sup.procs().signals.contains(&(p, Signal::SIGKILL));
        assert!(
            !killed(&mut sup),
            "not before the hand-over (and its wait for the replacement's end), drain and kill timeouts"
        );
        sup.procs().advance(Duration::from_millis(1));
        sup.tick();
        assert!(killed(&mut sup), "killed at their sum");
    }

    // An old worker writing a long worker state reports progress (`HandoverProgress`): its kill
    // deadline counts again from each report, so it is not killed while it goes on; once its
    // hand-over ended (`HandedOver`), a report extends nothing, and an upgrade may go on.
    #[test]
    fn handover_progress_extends_the_old_workers_kill_deadline() {
        let mut s = state("http", 1, true);
        s.service.limits.handover_timeout_ms = 3000;
        let mut sup = started(vec![(s, Some(1))]);
        let old = serving(&sup, 0, 0).unwrap();
        assert!(!sup.handover_under_way());
        sup.request_reload(true, Trigger::Command, None);
        let out = outputs(&mut sup);
        sup.checked(done(checks(&out)[0], 2));
        let new = attached(&outputs(&mut sup));
        sup.worker_ready(new[0]);
        let _ = outputs(&mut sup);
        assert!(sup.handover_under_way());
        let p = pid(&sup, old);
        let wait = Duration::from_millis(crate::ctl::HANDOVER_END_WAIT_MS) + crate::master::mailbox::PEERS_ACK_WAIT;
        let grace = Duration::from_millis(3000) + wait + TIMEOUTS.drain + TIMEOUTS.kill;
        let killed = |sup: &mut Supervisor<FakeProcesses>| sup.procs().signals.contains(&(p, Signal::SIGKILL));
        // Each report comes 1 ms before the deadline the last one set.
        for _ in 0..3 {
            sup.procs().advance(grace - Duration::from_millis(1));
            sup.tick();
            assert!(!killed(&mut sup), "killed while it reported progress");
            sup.handover_progress(old, 1 << 30);
        }
        sup.handed_over(old, crate::ctl::HandoverReport { attempted: true, moved: 1, ..Default::default() });
        assert!(!sup.handover_under_way(), "the hand-over ended");
        sup.procs().advance(grace - Duration::from_millis(1));
        sup.tick();
        assert!(!killed(&mut sup));
        sup.handover_progress(old, 1 << 30);
        sup.procs().advance(Duration::from_millis(1));
        sup.tick();
        assert!(killed(&mut sup), "a report after the end extends nothing");
    }

    // An old worker whose hand-over timed out asks the master to end its replacement: the master
    // kills that one (the replacement it named in the `HandOver`), once, and only it; it is then
    // replaced as a worker that died would be. A worker that hands nothing over asks in vain.
    #[test]
    fn a_handover_timeout_kills_the_replacement_and_only_it() {
        let mut sup = started(vec![(state("http", 1, true), Some(1))]);
        let old = serving(&sup, 0, 0).unwrap();
        sup.handover_timed_out(old);
        assert!(sup.procs().signals.is_empty(), "no hand-over yet: {:?}", sup.procs().signals);
        sup.request_reload(true, Trigger::Command, None);
        let out = outputs(&mut sup);
        sup.checked(done(checks(&out)[0], 2));
        let new = attached(&outputs(&mut sup));
        sup.worker_ready(new[0]);
        let out = outputs(&mut sup);
        assert!(out.iter().any(|o| matches!(o, Output::HandOver { old: o, new: n, .. } if *o == old && *n == new[0])));
        let (p_old, p_new) = (pid(&sup, old), pid(&sup, new[0]));
        sup.handover_timed_out(new[0]);
        assert!(sup.procs().signals.is_empty(), "the replacement hands nothing over");
        sup.handover_timed_out(old);
        sup.handover_timed_out(old);
        assert_eq!(sup.procs().signals, vec![(p_new, Signal::SIGKILL)], "the replacement, once");
        assert!(!sup.procs().signals.contains(&(p_old, Signal::SIGKILL)));
        sup.procs().exit(p_new, "signal SIGKILL");
        sup.reap();
        assert!(sup.slots.worker(new[0]).is_none(), "the killed replacement is gone");
        // Once it is gone, a late ask kills nothing.
        sup.handover_timed_out(old);
        assert_eq!(sup.procs().signals.len(), 1);
    }

    #[test]
    fn a_worker_past_max_requests_is_replaced_before_it_drains() {
        let mut sup = started(vec![(recycling(100, 0), Some(1))]);
        let (old, other) = (serving(&sup, 0, 0).unwrap(), serving(&sup, 0, 1).unwrap());
        sup.worker_alive(old, 50, 1 << 20);
        sup.worker_alive(other, 89, 1 << 20);
        assert!(attached(&outputs(&mut sup)).is_empty(), "under the limit (even at -10 %)");
        sup.worker_alive(old, 111, 1 << 20);
        let out = outputs(&mut sup);
        let new = attached(&out);
        assert_eq!(new.len(), 1, "a replacement starts (over the limit, even at +10 %)");
        assert!(!sent_drain(&out, old), "make before break: the old one serves until it is ready");
        sup.worker_alive(old, 150, 1 << 20);
        assert!(attached(&outputs(&mut sup)).is_empty(), "one recycle at a time");
        sup.worker_ready(new[0]);
        assert_eq!(serving(&sup, 0, 0), Some(new[0]));
        assert!(sent_drain(&outputs(&mut sup), old), "then the old one drains");
        let p = pid(&sup, old);
        sup.procs().exit(p, "exit code 0");
        sup.reap();
        sup.tick();
        assert!(attached(&outputs(&mut sup)).is_empty(), "nothing else starts");
        assert_eq!(sup.exits.get(&("http".into(), "max_requests: exit code 0".into())), Some(&1), "{:?}", sup.exits);
        assert_eq!(serving(&sup, 0, 1), Some(other));
    }

    #[test]
    fn a_worker_past_max_memory_is_recycled_and_one_growing_on_is_killed() {
        let mb = 1 << 20;
        let mut sup = started(vec![(recycling(0, 64 * mb), Some(1))]);
        let old = serving(&sup, 0, 0).unwrap();
        sup.worker_alive(old, 1_000_000, 50 * mb);
        assert!(attached(&outputs(&mut sup)).is_empty(), "messages alone do not count");
        sup.worker_alive(old, 1_000_000, 72 * mb);
        let new = attached(&outputs(&mut sup));
        assert_eq!(new.len(), 1, "recycled");
        assert!(sup.procs().signals.is_empty());
        // It grows on before its replacement is ready: killed, and the log says why.
        sup.worker_alive(old, 1_000_000, 200 * mb);
        let p = pid(&sup, old);
        assert_eq!(sup.procs().signals, vec![(p, Signal::SIGKILL)]);
        sup.worker_alive(old, 1_000_000, 210 * mb);
        assert_eq!(sup.procs().signals.len(), 1, "killed once");
        sup.reap();
        sup.tick();
        assert!(attached(&outputs(&mut sup)).is_empty(), "the replacement takes the slot over");
        sup.worker_ready(new[0]);
        assert_eq!(serving(&sup, 0, 0), Some(new[0]));
        assert_eq!(sup.exits.get(&("http".into(), "max_memory: signal SIGKILL".into())), Some(&1), "{:?}", sup.exits);
    }

    #[test]
    fn a_failed_recycle_keeps_the_old_worker_and_a_reload_takes_a_recycle_over() {
        let mut sup = started(vec![(recycling(10, 0), Some(1))]);
        let old = serving(&sup, 0, 0).unwrap();
        sup.worker_alive(old, 20, 0);
        let new = attached(&outputs(&mut sup));
        let p = pid(&sup, new[0]);
        sup.procs().exit(p, "exit code 2");
        sup.reap();
        sup.tick();
        assert!(attached(&outputs(&mut sup)).is_empty());
        assert_eq!(serving(&sup, 0, 0), Some(old), "the old worker goes on");
        // The next heartbeat tries again; a reload reaching the slot then takes over.
        sup.worker_alive(old, 21, 0);
        let recycle = attached(&outputs(&mut sup))[0];
        sup.request_reload(true, Trigger::Command, Some(ClientId(4)));
        let out = outputs(&mut sup);
        sup.checked(done(checks(&out)[0], 2));
        let out = outputs(&mut sup);
        assert!(out.iter().any(|o| matches!(o, Output::Send(id, ToWorker::Stop) if *id == recycle)), "{out:?}");
        let chain = attached(&out);
        assert_eq!(chain.len(), 1);
        sup.worker_ready(chain[0]);
        assert_eq!(serving(&sup, 0, 0), Some(chain[0]));
        assert_eq!(sup.procs().started.iter().filter(|s| s.hash == 2).count(), 2, "the chain goes on with slot 1");
    }

    /// Whether `out` tells `old` to hand over to `new`.
    fn handover(out: &[Output], old: WorkerId, new: WorkerId) -> bool {
        out.iter().any(|o| matches!(o, Output::HandOver { old: o, new: n, .. } if *o == old && *n == new))
    }

    /// A reload of slot 0 onto snapshot `hash` for `client`, until its replacement is ready
    /// (started awaiting a hand-over); the replacement.
    fn reload_ready(sup: &mut Supervisor<FakeProcesses>, client: Option<ClientId>, hash: u64) -> WorkerId {
        sup.request_reload(true, Trigger::Command, client);
        let out = outputs(sup);
        sup.checked(done(checks(&out)[0], hash));
        let new = attached(&outputs(sup))[0];
        assert!(sup.procs().last().await_handover);
        sup.worker_ready(new);
        new
    }

    /// A reload whose hand-over begins at once (slot 0's worker adopts from none): the old
    /// worker and its replacement.
    fn reload_handing_over(
        sup: &mut Supervisor<FakeProcesses>,
        client: Option<ClientId>,
        hash: u64,
    ) -> (WorkerId, WorkerId) {
        let old = serving(sup, 0, 0).unwrap();
        let new = reload_ready(sup, client, hash);
        let out = outputs(sup);
        assert!(handover(&out, old, new), "{out:?}");
        (old, new)
    }

    // Issue 21: a second reload's replacement W3 is ready while W2, the first one's, still
    // adopts from W1. W2 is not told to hand over (that would end its adoption half-way): the
    // hand-over to W3 is held, with no deadline on W2, and starts once W1's ended (its report or
    // its exit). When W2 dies meanwhile, W3 serves; a master that stops drops it.
    #[test]
    fn a_handover_waits_while_its_old_worker_still_adopts() {
        for how in ["reported", "earlier exits", "adopting dies", "stopped"] {
            let mut s = state("http", 1, true);
            s.service.limits.handover_timeout_ms = 3000;
            let mut sup = started(vec![(s, Some(1))]);
            sup.answer_after_handovers(ClientId(7));
            let (w1, w2) = reload_handing_over(&mut sup, None, 2);
            // The second reload, while W1 hands over to W2.
            let w3 = reload_ready(&mut sup, Some(ClientId(7)), 3);
            let out = outputs(&mut sup);
            let handover_to_w3 = |out: &[Output]| handover(out, w2, w3);
            assert!(!handover_to_w3(&out), "not while W2 adopts: {out:?}");
            assert!(!out.iter().any(|o| matches!(o, Output::Send(id, _) if *id == w2 || *id == w3)), "{out:?}");
            assert!(!out.iter().any(|o| matches!(o, Output::Answer(..))), "the --handovers answer waits: {out:?}");
            assert_eq!(serving(&sup, 0, 0), Some(w3));
            assert!(sup.handover_under_way(), "an upgrade waits for the held one too");
            // Long after the hand-over's own deadlines, W2 and W3 are left alone.
            let (p2, p3) = (pid(&sup, w2), pid(&sup, w3));
            sup.procs().advance(Duration::from_millis(3000) + TIMEOUTS.drain + TIMEOUTS.kill);
            sup.handover_progress(w1, 1 << 20);
            sup.tick();
            assert!(!sup.procs().signals.iter().any(|&(p, _)| p == p2 || p == p3), "{:?}", sup.procs().signals);
            let _ = outputs(&mut sup);
            match how {
                "reported" => {
                    sup.handed_over(w1, crate::ctl::HandoverReport { attempted: true, moved: 2, ..Default::default() })
                }
                "earlier exits" => {
                    let p = pid(&sup, w1);
                    sup.procs().exit(p, "exit code 0");
                    sup.reap();
                }
                "adopting dies" => {
                    sup.procs().exit(p2, "signal SIGSEGV");
                    sup.reap();
                }
                _ => sup.stop(true),
            }
            let out = outputs(&mut sup);
            match how {
                "reported" | "earlier exits" => {
                    assert!(handover_to_w3(&out), "{how}: the held hand-over starts: {out:?}");
                    // Its deadline counts from now.
                    let wait = Duration::from_millis(crate::ctl::HANDOVER_END_WAIT_MS)
                        + crate::master::mailbox::PEERS_ACK_WAIT;
                    let grace = Duration::from_millis(3000) + wait + TIMEOUTS.drain + TIMEOUTS.kill;
                    sup.procs().advance(grace - Duration::from_millis(1));
                    sup.tick();
                    assert!(!sup.procs().signals.contains(&(p2, Signal::SIGKILL)));
                    assert!(!out.iter().any(|o| matches!(o, Output::Answer(..))), "{out:?}");
                    sup.handed_over(w2, crate::ctl::HandoverReport { attempted: true, moved: 3, ..Default::default() });
                    let out = outputs(&mut sup);
                    // Both hand-overs under way or held when the second reload ended.
                    let said = match how {
                        "reported" => "; hand-overs: 5 connections moved, 0 drained",
                        _ => "; hand-overs: 3 connections moved, 0 drained, 1 ended without a report",
                    };
                    let answered = out.iter().any(|o| matches!(o, Output::Answer(ClientId(7), Answer::Ok { message, .. }) if message.ends_with(said)));
                    assert!(answered, "{out:?}");
                    assert!(!sup.handover_under_way());
                }
                "adopting dies" => {
                    assert!(!handover_to_w3(&out), "{out:?}");
                    assert!(out.iter().any(|o| matches!(o, Output::Send(id, ToWorker::Serve) if *id == w3)), "{out:?}");
                    assert!(sup.held_handovers.is_empty());
                }
                _ => {
                    assert!(!handover_to_w3(&out), "{out:?}");
                    assert!(sup.held_handovers.is_empty());
                    sup.handed_over(w1, crate::ctl::HandoverReport { attempted: true, ..Default::default() });
                    assert!(!handover_to_w3(&outputs(&mut sup)), "a stopping master starts none");
                }
            }
        }
    }

    // A recycle while a hand-over is held or under way waits its turn as a reload's does:
    // "adopting" — W2, still adopting from W1, reaches max_memory (a large state arriving): its
    // recycle's W3 is ready before W1's hand-over ended, so W2's hand-over to W3 is held; W2
    // heard over its limit again starts no second recycle, and once past the hard limit it is
    // killed and W3 serves. "held" — W3, the held hand-over's new worker, reaches max_requests:
    // its recycle's W4 waits behind W2's hand-over to W3, which waits behind W1's. Each starts
    // once the one before it ended, and `host upgrade` is refused until the last has.
    #[test]
    fn a_recycle_during_a_held_handover_waits_its_turn() {
        let mb = 1 << 20;
        for case in ["adopting", "adopting grows on", "held"] {
            let mut s = state("http", 1, true);
            s.service.recycle = crate::config::Recycle { max_requests: 1000, max_memory: 64 * mb };
            let mut sup = started(vec![(s, Some(1))]);
            let (w1, w2) = reload_handing_over(&mut sup, None, 2);
            // The worker W4's hand-over comes from, and the one it adopts from meanwhile.
            let (old, held_behind) = if case == "held" {
                let w3 = reload_ready(&mut sup, None, 3);
                assert!(!handover(&outputs(&mut sup), w2, w3));
                (w3, w2)
            } else {
                (w2, w1)
            };
            match case {
                "held" => sup.worker_alive(old, 2000, mb),
                _ => sup.worker_alive(old, 10, 80 * mb),
            }
            let new = attached(&outputs(&mut sup));
            assert_eq!(new.len(), 1, "{case}: a recycle starts");
            let new = new[0];
            assert!(sup.procs().last().await_handover, "{case}");
            sup.worker_ready(new);
            let out = outputs(&mut sup);
            assert_eq!(serving(&sup, 0, 0), Some(new), "{case}");
            assert!(!handover(&out, old, new), "{case}: not while {old:?} adopts: {out:?}");
            assert!(
                !out.iter().any(|o| matches!(o, Output::Send(id, _) if *id == old || *id == new)),
                "{case}: {out:?}"
            );
            assert!(sup.handover_under_way(), "{case}: an upgrade is refused");
            // Heard over its limit again: no second recycle (it is not the slot's worker now).
            sup.worker_alive(old, 3000, 80 * mb);
            assert!(attached(&outputs(&mut sup)).is_empty(), "{case}: one recycle");
            if case == "adopting grows on" {
                // Past the hard limit while held: killed; its replacement serves.
                sup.worker_alive(old, 3000, 200 * mb);
                let p = pid(&sup, old);
                assert_eq!(sup.procs().signals, vec![(p, Signal::SIGKILL)]);
                sup.procs().exit(p, "signal SIGKILL");
                sup.reap();
                let out = outputs(&mut sup);
                assert!(out.iter().any(|o| matches!(o, Output::Send(id, ToWorker::Serve) if *id == new)), "{out:?}");
                assert!(sup.held_handovers.is_empty());
                assert!(sup.handover_under_way(), "W1's hand-over to the dead W2 has not reported");
                sup.handed_over(w1, crate::ctl::HandoverReport { attempted: true, ..Default::default() });
                assert!(!sup.handover_under_way());
                assert_eq!(sup.exits.get(&("http".into(), "max_memory: signal SIGKILL".into())), Some(&1));
                continue;
            }
            let report = crate::ctl::HandoverReport { attempted: true, moved: 1, ..Default::default() };
            sup.handed_over(w1, report.clone());
            let out = outputs(&mut sup);
            if case == "held" {
                assert!(handover(&out, w2, old), "{out:?}");
                assert!(!handover(&out, old, new), "W3 still adopts from W2: {out:?}");
                assert!(sup.handover_under_way());
                sup.handed_over(held_behind, report.clone());
            }
            let out = outputs(&mut sup);
            let started_now = case != "held" || handover(&out, old, new);
            assert!(started_now, "{case}: {out:?}");
            assert!(sup.handover_under_way(), "{case}: the recycle's own hand-over");
            sup.handed_over(old, report.clone());
            assert!(!sup.handover_under_way(), "{case}");
            let p = pid(&sup, old);
            sup.procs().exit(p, "exit code 0");
            sup.reap();
            sup.tick();
            assert!(attached(&outputs(&mut sup)).is_empty(), "{case}: nothing else starts");
            let how = if case == "held" { "max_requests: exit code 0" } else { "max_memory: exit code 0" };
            assert_eq!(sup.exits.get(&("http".into(), how.into())), Some(&1), "{case}: {:?}", sup.exits);
            assert_eq!(serving(&sup, 0, 0), Some(new));
        }
    }

    // `host upgrade` arriving while a hand-over is held is refused (`a hand-over is under way`),
    // and so at every step until the last hand-over of the slot's chain ended: the held one
    // lives only in this master, and its old worker has no kill deadline the state could carry.
    // When the adopting worker dies, its replacement serves, and the upgrade may go once the
    // hand-over to the dead one reported.
    #[test]
    fn an_upgrade_is_refused_while_a_handover_is_held_and_until_the_chain_ended() {
        use super::super::upgrade::UpgradeError;
        let refused = |sup: &Supervisor<FakeProcesses>| match sup.may_upgrade() {
            Err(UpgradeError::HandoverUnderWay) => true,
            Ok(()) => false,
            Err(e) => panic!("refused for another reason: {e}"),
        };
        for adopting_dies in [false, true] {
            let mut sup = started(vec![(state("http", 1, true), Some(1))]);
            assert!(!refused(&sup));
            let (w1, w2) = reload_handing_over(&mut sup, None, 2);
            assert!(refused(&sup), "W1 hands over to W2");
            sup.request_reload(true, Trigger::Command, None);
            assert!(matches!(sup.may_upgrade(), Err(UpgradeError::ReloadUnderWay)));
            let out = outputs(&mut sup);
            sup.checked(done(checks(&out)[0], 3));
            let w3 = attached(&outputs(&mut sup))[0];
            sup.worker_ready(w3);
            assert!(!handover(&outputs(&mut sup), w2, w3));
            assert!(sup.reloader_idle());
            assert_eq!(sup.held_handovers.len(), 1);
            assert!(refused(&sup), "held");
            let report = crate::ctl::HandoverReport { attempted: true, moved: 1, ..Default::default() };
            if adopting_dies {
                let p = pid(&sup, w2);
                sup.procs().exit(p, "signal SIGSEGV");
                sup.reap();
                assert!(sup.held_handovers.is_empty());
                assert!(refused(&sup), "W1 has not reported the end of its hand-over to the dead W2");
                sup.handed_over(w1, crate::ctl::HandoverReport { failure: Some("gone".into()), ..report });
            } else {
                sup.handed_over(w1, report.clone());
                assert!(handover(&outputs(&mut sup), w2, w3));
                assert!(refused(&sup), "W2 hands over to W3");
                sup.handed_over(w2, report);
            }
            assert!(sup.may_upgrade().is_ok(), "adopting dies: {adopting_dies}");
        }
    }
}
