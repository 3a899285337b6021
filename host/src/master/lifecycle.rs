//! Worker lifecycles: spawning, readiness, retiring, reaping, respawning with back-off, killing
//! at deadlines.

use std::time::{Duration, Instant};

use mio::net::UnixStream;
use mio::{Interest, Token};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::reload::SlotKey;
use super::table::{Readiness, Role, Worker};
use super::{backoff, spawn, Master, Phase, WORKER_TOKEN_BASE};
use crate::config::{self, WorkerSpec};
use crate::ctl::{LineConn, ToWorker};

impl Master {
    /// Starts a worker for `key` running the slot's snapshot (or, for a replacement, the
    /// service's reload candidate). Returns false when the process could not be started.
    pub(super) fn spawn(&mut self, key: SlotKey, role: Role) -> bool {
        let state = &self.services[key.service];
        let Some(slot) = self.table.slot_mut(key) else { return false };
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
            worker_count: state.service.count,
            user: state.user.clone(),
            group: state.group.clone(),
        };
        let label = format!("{} {}", snap.name, snap.version);
        match spawn::spawn_worker(&spec, &label, &state.sockets[key.slot as usize], &self.worker_args) {
            Ok(spawned) => {
                let id = self.table.next_id(WORKER_TOKEN_BASE);
                let mut control = UnixStream::from_std(spawned.control);
                if let Err(e) = self.poll.registry().register(&mut control, Token(id), Interest::READABLE) {
                    tracing::error!(service = %spec.service, slot = key.slot, "could not watch a worker: {e}");
                }
                tracing::info!(service = %spec.service, slot = key.slot, pid = spawned.pid.as_raw(), hash = %snap.short_hash(), ?role, "worker started");
                self.table.workers.push(Worker {
                    id,
                    key,
                    pid: spawned.pid,
                    control: LineConn::new(control, crate::ctl::MAX_REPORT_LINE),
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
                        let delay = backoff::restart_delay(slot.failures).max(Duration::from_millis(100));
                        slot.restart_at = Some(Instant::now() + delay);
                    }
                }
                false
            }
        }
    }

    /// Tells every worker to stop (graceful: drain first), with a deadline after which it is killed.
    pub(super) fn stop(&mut self, graceful: bool) {
        if self.phase == Phase::Stopping {
            if !graceful {
                tracing::info!("stopping now");
                self.retire_all(false);
            }
            return;
        }
        tracing::info!(graceful, "stopping");
        self.phase = Phase::Stopping;
        self.prep = None;
        if let (Some(chain), queued) = self.reloader.finish() {
            tracing::warn!(reason = %chain.request.reason, "reload abandoned: the master is stopping");
            let mut waiters = chain.request.waiters;
            waiters.extend(queued.map(|q| q.waiters).unwrap_or_default());
            let message = "reload abandoned: the master is stopping".to_string();
            self.answer_all(&waiters, &crate::status::Answer::Error { message });
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
    pub(super) fn retire(&mut self, id: usize, graceful: bool) {
        let (drain, kill) = (self.drain_timeout, self.kill_timeout);
        let Some(w) = self.table.by_id(id) else { return };
        let (msg, kill_after) = if graceful {
            (ToWorker::Drain { timeout_ms: drain.as_millis() as u64 }, drain + kill)
        } else {
            (ToWorker::Stop, kill)
        };
        // A worker already exiting does not read it; the kill deadline still applies.
        let _ = w.control.send(msg.encode().as_bytes());
        w.role = Role::Retiring;
        let kill_at = Instant::now() + kill_after;
        w.kill_at = Some(w.kill_at.map_or(kill_at, |k| k.min(kill_at)));
        self.watch_control_output(id);
    }

    pub(super) fn worker_ready(&mut self, id: usize) {
        let Some(w) = self.table.by_id(id) else { return };
        if w.readiness == Readiness::Ready {
            return;
        }
        w.readiness = Readiness::Ready;
        w.kill_at = None;
        let (key, role, pid, ms) = (w.key, w.role, w.pid.as_raw(), w.uptime().as_millis() as u64);
        let service = &self.services[key.service].service.name;
        tracing::info!(service = %service, slot = key.slot, pid, start_ms = ms, "worker ready");
        if role == Role::Replacement {
            let steps = self.reloader.chain.as_mut().map(|c| c.ready(key)).unwrap_or_default();
            for step in steps {
                self.apply(step);
            }
        }
    }

    /// Collects every exited worker: `waitpid(pid, WNOHANG)` for each one in the table. Not
    /// `waitpid(-1)`: the preparer thread waits for its own probe processes, and reaping one of
    /// those here would leave it with ECHILD.
    pub(super) fn reap_children(&mut self) {
        let pids: Vec<Pid> = self.table.workers.iter().map(|w| w.pid).collect();
        for pid in pids {
            let status = loop {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            let how = match status {
                Ok(WaitStatus::Exited(_, code)) => format!("exit code {code}"),
                Ok(WaitStatus::Signaled(_, sig, core)) => {
                    format!("signal {sig}{}", if core { " (core dumped)" } else { "" })
                }
                Ok(_) => continue,
                Err(e) => {
                    // ECHILD: not our child any more (cannot happen for a worker we started).
                    tracing::error!(pid = pid.as_raw(), "waitpid failed: {e}");
                    format!("waitpid error {e}")
                }
            };
            let clean = matches!(status, Ok(WaitStatus::Exited(_, 0)));
            if let Some(w) = self.table.take_by_pid(pid) {
                self.worker_exited(w, clean, &how);
            }
        }
    }

    fn worker_exited(&mut self, mut w: Worker, clean: bool, how: &str) {
        let _ = self.poll.registry().deregister(&mut w.control.stream);
        self.gather_forget(w.id);
        let key = w.key;
        let service = self.services[key.service].service.name.clone();
        *self.exits.entry((service.clone(), how.to_string())).or_default() += 1;
        let (pid, lived) = (w.pid.as_raw(), w.uptime());
        let why = w.error.clone().unwrap_or_else(|| format!("it exited with {how} before it was ready"));
        match w.role {
            Role::Retiring => {
                if clean {
                    tracing::info!(service = %service, slot = key.slot, pid, "worker stopped");
                } else {
                    tracing::warn!(service = %service, slot = key.slot, pid, "worker stopped with {how}");
                }
                if self.phase != Phase::Stopping && self.reloader.chain.is_none() {
                    self.remove_unused_snapshots();
                }
            }
            Role::Replacement => {
                tracing::error!(service = %service, slot = key.slot, pid, "replacement worker failed: {why}");
                if let Some(step) = self.reloader.chain.as_mut().and_then(|c| c.failed(key, &why)) {
                    self.apply(step);
                }
            }
            Role::Serving => {
                let detail = w.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
                tracing::error!(service = %service, slot = key.slot, pid, lived_ms = lived.as_millis() as u64, "worker died with {how}{detail}");
                match self.phase {
                    Phase::Stopping => {}
                    Phase::Starting if w.readiness == Readiness::Starting => {
                        self.start_error =
                            Some(format!("worker #{} of service {service} could not start: {why}", key.slot));
                        self.stop(false);
                    }
                    Phase::Starting | Phase::Running => {
                        let lived_long = w.readiness == Readiness::Ready && lived >= backoff::MIN_UPTIME;
                        self.schedule_respawn(key, lived_long);
                    }
                }
            }
        }
    }

    fn schedule_respawn(&mut self, key: SlotKey, lived_long: bool) {
        if self.table.has_serving(key) {
            return;
        }
        let service = self.services[key.service].service.name.clone();
        let Some(slot) = self.table.slot_mut(key) else { return };
        slot.failures = if lived_long { 1 } else { slot.failures + 1 };
        let delay = backoff::restart_delay(slot.failures);
        if delay > Duration::ZERO {
            tracing::warn!(service = %service, slot = key.slot, failures = slot.failures, delay_ms = delay.as_millis() as u64, "worker keeps dying; restarting after a delay");
        }
        slot.restart_at = Some(Instant::now() + delay);
    }

    /// SIGKILL for workers past their deadline (not ready in time, or not stopped in time).
    pub(super) fn kill_overdue(&mut self) {
        let now = Instant::now();
        for w in &mut self.table.workers {
            if w.kill_at.is_some_and(|k| k <= now) {
                let service = &self.services[w.key.service].service.name;
                let starting = w.readiness == Readiness::Starting;
                let why = if starting { "was not ready in time" } else { "did not stop in time" };
                tracing::warn!(service = %service, slot = w.key.slot, pid = w.pid.as_raw(), "worker {why}; killing it");
                if starting && w.error.is_none() {
                    w.error = Some(format!("it was not ready within {} s", config::START_TIMEOUT.as_secs()));
                }
                let _ = signal::kill(w.pid, Signal::SIGKILL);
                w.kill_at = None;
            }
        }
    }

    pub(super) fn respawn_due(&mut self, now: Instant) {
        let due: Vec<SlotKey> =
            self.table.slots.iter().filter(|s| s.restart_at.is_some_and(|t| t <= now)).map(|s| s.key).collect();
        for key in due {
            self.spawn(key, Role::Serving);
        }
    }
}
