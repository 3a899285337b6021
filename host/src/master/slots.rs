//! The master's view of its processes: one [`Slot`] per worker position of a service, and the
//! worker processes that serve, replace or retire from it.
//!
//! The table, not its callers, keeps the invariants: a slot has at most one serving worker and
//! at most one replacement; promoting a replacement retires the worker it replaces and clears a
//! pending restart; a restart can only be scheduled for a slot that has no serving worker. Roles
//! are where a worker sits in its slot, never a field that could disagree with it.
//!
//! A replacement is the one way a slot's worker is replaced while it serves, whatever the
//! reason ([`Replace`]: a reload step, a recycle, an upgrade): the slot holds it with its
//! reason, the supervisor promotes it when it is ready or drops it when it fails.

use std::collections::BTreeMap;
use std::fmt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::snapshot::Snapshot;

/// A worker process, unique for the master's life (never reused, unlike pids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

/// A service, by its position in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub usize);

/// A control client waiting for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// One worker position: service and slot number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service: ServiceId,
    pub slot: u32,
}

impl fmt::Display for SlotKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.slot)
    }
}

/// Where a worker sits in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The slot's worker (or the one starting to become it after a death).
    Serving,
    /// A reload chain's new worker for the slot, not ready yet; the serving one goes on.
    Replacement,
    /// Told to stop or drain; it exits on its own or is killed at its deadline.
    Retiring,
}

/// Why a slot's serving worker is being replaced (the replacement starts beside it, takes the
/// slot over once ready, and the old one drains).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// A step of the reload chain (a plugin file, a signal, `host reload`).
    Reload,
    /// A step of the reload chain run by `host upgrade`: the new worker runs the new binary.
    Upgrade,
    /// The serving worker reached a limit (`max_requests`, `max_memory`).
    Recycle(Recycle),
}

/// Why a worker is recycled: the prefix of its exit in `status` and `host_worker_exits_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recycle {
    MaxRequests,
    MaxMemory,
}

impl fmt::Display for Recycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Recycle::MaxRequests => "max_requests",
            Recycle::MaxMemory => "max_memory",
        })
    }
}

/// Why the master killed a worker (SIGKILL): the prefix of its exit in `status` and
/// `host_worker_exits_total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kill {
    /// The watchdog: it made no progress, stuck at this place (`in on_message`, `in the host's
    /// loop`).
    Watchdog(String),
    /// Its resident memory grew far past `max_memory` (see `recycle::HARD_FACTOR`).
    MaxMemory,
    /// A replacement that did not finish adopting its predecessor's connections within
    /// `handover_timeout` (the old worker asked: `HandoverTimedOut`).
    HandoverTimeout,
}

impl fmt::Display for Kill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kill::Watchdog(place) => write!(f, "watchdog ({place})"),
            Kill::MaxMemory => f.write_str("max_memory"),
            Kill::HandoverTimeout => f.write_str("hand-over timeout"),
        }
    }
}

/// Where a worker process is in its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Ready,
}

#[derive(Debug)]
pub struct Worker {
    pub id: WorkerId,
    pub key: SlotKey,
    pub pid: Pid,
    pub readiness: Readiness,
    pub snapshot: Rc<Snapshot>,
    pub started: Instant,
    /// SIGKILL at this time (start timeout, or stop/drain timeout).
    pub kill_at: Option<Instant>,
    /// What the worker said before it exited, if it could not start.
    pub error: Option<String>,
    /// When it was told to stop or drain.
    pub retired_at: Option<Instant>,
    /// The watchdog kills it at this time unless it says `alive` before (serving, ready workers
    /// of a master with a worker timeout).
    pub stall_at: Option<Instant>,
    /// The master killed it, and why.
    pub killed: Option<Kill>,
    /// The master's mapping of its watch page (None: adopted from a previous master image).
    pub watch: Option<crate::sys::WatchPage>,
    /// Messages handled and resident bytes, as its last heartbeat said.
    pub messages: u64,
    pub rss_bytes: u64,
    /// It is being recycled, and why.
    pub recycled: Option<Recycle>,
    /// It was told to hand its connections over to this replacement (killed on its
    /// `HandoverTimedOut`); None again once it reported the end (`HandedOver`). While one is
    /// set, `host upgrade` is refused.
    pub handing_over_to: Option<WorkerId>,
    /// From its `HandOver` (and each `HandoverProgress`) to its kill deadline.
    pub handover_grace: Duration,
}

/// One worker slot of a service: successive workers of a slot share its listening socket.
#[derive(Debug)]
pub struct Slot {
    pub key: SlotKey,
    /// The plugin snapshot the slot's serving worker runs (respawns use it too).
    pub snapshot: Rc<Snapshot>,
    serving: Option<WorkerId>,
    replacement: Option<(WorkerId, Replace)>,
    retiring: Vec<WorkerId>,
    /// Failed starts in a row (see `backoff`).
    pub failures: u32,
    restart_at: Option<Instant>,
}

impl Slot {
    pub fn serving(&self) -> Option<WorkerId> {
        self.serving
    }

    pub fn replacement(&self) -> Option<WorkerId> {
        self.replacement.map(|(id, _)| id)
    }

    /// Why the slot's replacement (if any) replaces its worker.
    pub fn replacing(&self) -> Option<Replace> {
        self.replacement.map(|(_, why)| why)
    }

    #[cfg(test)]
    pub fn restart_at(&self) -> Option<Instant> {
        self.restart_at
    }
}

/// Why the table refused a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error("no such slot")]
    NoSlot,
    #[error("the slot already has a serving worker")]
    HasServing,
    #[error("the slot already has a replacement worker")]
    HasReplacement,
}

#[derive(Debug, Default)]
pub struct SlotTable {
    slots: Vec<Slot>,
    workers: BTreeMap<WorkerId, Worker>,
    next_id: u64,
}

impl SlotTable {
    /// Adds `count` slots for `service`, each to run `snapshot`.
    pub fn add_service(&mut self, service: ServiceId, count: u32, snapshot: &Rc<Snapshot>) -> Vec<SlotKey> {
        let keys: Vec<SlotKey> = (0..count).map(|slot| SlotKey { service, slot }).collect();
        self.slots.extend(keys.iter().map(|&key| Slot {
            key,
            snapshot: snapshot.clone(),
            serving: None,
            replacement: None,
            retiring: Vec::new(),
            failures: 0,
            restart_at: None,
        }));
        keys
    }

    pub fn next_worker_id(&mut self) -> WorkerId {
        self.next_id += 1;
        WorkerId(self.next_id)
    }

    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.iter()
    }

    pub fn slot(&self, key: SlotKey) -> Option<&Slot> {
        self.slots.iter().find(|s| s.key == key)
    }

    fn slot_mut(&mut self, key: SlotKey) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.key == key)
    }

    /// The slots of one service, in slot order.
    pub fn service_slots(&self, service: ServiceId) -> impl Iterator<Item = &Slot> {
        self.slots.iter().filter(move |s| s.key.service == service)
    }

    pub fn workers(&self) -> impl Iterator<Item = &Worker> {
        self.workers.values()
    }

    pub fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.get(&id)
    }

    pub fn worker_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.workers.get_mut(&id)
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    pub fn role(&self, id: WorkerId) -> Option<Role> {
        let w = self.workers.get(&id)?;
        let slot = self.slot(w.key)?;
        Some(if slot.serving == Some(id) {
            Role::Serving
        } else if slot.replacement() == Some(id) {
            Role::Replacement
        } else {
            Role::Retiring
        })
    }

    /// Makes `worker` its slot's serving worker; clears the slot's pending restart.
    pub fn insert_serving(&mut self, worker: Worker) -> Result<WorkerId, TableError> {
        let slot = self.slots.iter_mut().find(|s| s.key == worker.key).ok_or(TableError::NoSlot)?;
        if slot.serving.is_some() {
            return Err(TableError::HasServing);
        }
        slot.serving = Some(worker.id);
        slot.restart_at = None;
        let id = worker.id;
        self.workers.insert(id, worker);
        Ok(id)
    }

    /// Puts back a worker the master's previous image handed over (a binary upgrade) in the role
    /// it had there, with its id (a replacement as a reload step's); ids given later count on
    /// from the highest.
    pub fn adopt(&mut self, worker: Worker, role: Role) -> Result<WorkerId, TableError> {
        self.next_id = self.next_id.max(worker.id.0);
        match role {
            Role::Serving => self.insert_serving(worker),
            Role::Replacement => self.insert_replacement(worker, Replace::Reload),
            Role::Retiring => {
                let id = worker.id;
                self.slot_mut(worker.key).ok_or(TableError::NoSlot)?.retiring.push(id);
                self.workers.insert(id, worker);
                Ok(id)
            }
        }
    }

    /// The last worker id given (a binary upgrade hands it over, so ids are never reused).
    pub fn last_worker_id(&self) -> u64 {
        self.next_id
    }

    /// Ids up to `last` are taken (see [`SlotTable::last_worker_id`]).
    pub fn skip_worker_ids(&mut self, last: u64) {
        self.next_id = self.next_id.max(last);
    }

    /// Adds `worker` as its slot's replacement, for `why`.
    pub fn insert_replacement(&mut self, worker: Worker, why: Replace) -> Result<WorkerId, TableError> {
        let slot = self.slots.iter_mut().find(|s| s.key == worker.key).ok_or(TableError::NoSlot)?;
        if slot.replacement.is_some() {
            return Err(TableError::HasReplacement);
        }
        slot.replacement = Some((worker.id, why));
        let id = worker.id;
        self.workers.insert(id, worker);
        Ok(id)
    }

    /// The replacement of `key` becomes its serving worker and runs the slot's snapshot from now
    /// on; the worker it replaces (if any) retires. Returns the retired worker.
    pub fn promote(&mut self, key: SlotKey) -> Result<Option<WorkerId>, TableError> {
        let slot = self.slots.iter_mut().find(|s| s.key == key).ok_or(TableError::NoSlot)?;
        let Some((new, _)) = slot.replacement.take() else { return Err(TableError::NoSlot) };
        let old = slot.serving.replace(new);
        slot.retiring.extend(old);
        slot.restart_at = None;
        slot.failures = 0;
        if let Some(w) = self.workers.get(&new) {
            slot.snapshot = w.snapshot.clone();
        }
        Ok(old)
    }

    /// Moves a serving worker or a replacement to the retiring ones.
    pub fn retire(&mut self, id: WorkerId) {
        let Some(key) = self.workers.get(&id).map(|w| w.key) else { return };
        let Some(slot) = self.slot_mut(key) else { return };
        if slot.serving == Some(id) {
            slot.serving = None;
        } else if slot.replacement() == Some(id) {
            slot.replacement = None;
        } else {
            return;
        }
        slot.retiring.push(id);
    }

    /// Removes an exited worker; returns it with the role it had.
    pub fn remove(&mut self, id: WorkerId) -> Option<(Worker, Role)> {
        let role = self.role(id)?;
        let worker = self.workers.remove(&id)?;
        if let Some(slot) = self.slot_mut(worker.key) {
            match role {
                Role::Serving => slot.serving = None,
                Role::Replacement => slot.replacement = None,
                Role::Retiring => slot.retiring.retain(|&w| w != id),
            }
        }
        Some((worker, role))
    }

    /// Schedules a new serving worker for `key` after `delay`. Refused (false) while the slot has
    /// a serving worker: a slot never gets a second one.
    pub fn schedule_restart(&mut self, key: SlotKey, at: Instant) -> bool {
        match self.slot_mut(key) {
            Some(slot) if slot.serving.is_none() => {
                slot.restart_at = Some(at);
                true
            }
            _ => false,
        }
    }

    /// Counts a failed start of `key` and returns how many there were in a row.
    pub fn note_failure(&mut self, key: SlotKey, failed: bool) -> u32 {
        let Some(slot) = self.slot_mut(key) else { return 0 };
        slot.failures = if failed { slot.failures.saturating_add(1) } else { 0 };
        slot.failures
    }

    pub fn cancel_restarts(&mut self) {
        for slot in &mut self.slots {
            slot.restart_at = None;
        }
    }

    /// Slots whose restart is due at `now` (their timers are cleared).
    pub fn take_due_restarts(&mut self, now: Instant) -> Vec<SlotKey> {
        let mut due = Vec::new();
        for slot in &mut self.slots {
            if slot.restart_at.is_some_and(|t| t <= now) {
                slot.restart_at = None;
                due.push(slot.key);
            }
        }
        due
    }

    /// The slot has a ready serving worker.
    pub fn is_live(&self, slot: &Slot) -> bool {
        slot.serving.and_then(|id| self.workers.get(&id)).is_some_and(|w| w.readiness == Readiness::Ready)
    }

    /// Every slot has a ready serving worker.
    pub fn all_ready(&self) -> bool {
        self.slots.iter().all(|s| self.is_live(s))
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        let restarts = self.slots.iter().filter_map(|s| s.restart_at);
        let kills = self.workers.values().filter_map(|w| w.kill_at);
        let stalls = self.workers.values().filter_map(|w| w.stall_at);
        restarts.chain(kills).chain(stalls).min()
    }
}

impl Worker {
    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(table: &mut SlotTable, key: SlotKey, snap: &Rc<Snapshot>) -> Worker {
        let id = table.next_worker_id();
        Worker {
            id,
            key,
            pid: Pid::from_raw(1000 + id.0 as i32),
            readiness: Readiness::Starting,
            snapshot: snap.clone(),
            started: Instant::now(),
            kill_at: None,
            error: None,
            retired_at: None,
            stall_at: None,
            killed: None,
            watch: None,
            messages: 0,
            rss_bytes: 0,
            recycled: None,
            handing_over_to: None,
            handover_grace: Duration::ZERO,
        }
    }

    fn key(slot: u32) -> SlotKey {
        SlotKey { service: ServiceId(0), slot }
    }

    #[test]
    fn a_slot_never_has_two_serving_workers() {
        let snap = Rc::new(Snapshot::fake("http", 1));
        let mut t = SlotTable::default();
        t.add_service(ServiceId(0), 2, &snap);
        let a = worker(&mut t, key(0), &snap);
        let a = t.insert_serving(a).unwrap();
        let b = worker(&mut t, key(0), &snap);
        assert_eq!(t.insert_serving(b).unwrap_err(), TableError::HasServing);
        assert!(!t.schedule_restart(key(0), Instant::now()), "no restart while one serves");
        assert_eq!(t.role(a), Some(Role::Serving));
        let (gone, role) = t.remove(a).unwrap();
        assert_eq!((gone.id, role), (a, Role::Serving));
        assert!(t.schedule_restart(key(0), Instant::now()));
    }

    #[test]
    fn promotion_retires_the_old_worker_and_clears_a_pending_restart() {
        let old_snap = Rc::new(Snapshot::fake("http", 1));
        let new_snap = Rc::new(Snapshot::fake("http", 2));
        let mut t = SlotTable::default();
        t.add_service(ServiceId(0), 1, &old_snap);
        let old = worker(&mut t, key(0), &old_snap);
        let old = t.insert_serving(old).unwrap();
        let new = worker(&mut t, key(0), &new_snap);
        let new = t.insert_replacement(new, Replace::Reload).unwrap();
        let extra = worker(&mut t, key(0), &new_snap);
        assert_eq!(t.insert_replacement(extra, Replace::Reload).unwrap_err(), TableError::HasReplacement);
        // The serving worker dies while the replacement starts: a restart is scheduled...
        t.remove(old).unwrap();
        assert!(t.schedule_restart(key(0), Instant::now() + Duration::from_secs(1)));
        // ...and the promotion cancels it: the replacement now serves.
        assert_eq!(t.promote(key(0)).unwrap(), None);
        assert_eq!(t.slot(key(0)).unwrap().restart_at(), None);
        assert_eq!(t.role(new), Some(Role::Serving));
        assert_eq!(t.slot(key(0)).unwrap().snapshot.hash, 2);
        assert!(t.take_due_restarts(Instant::now() + Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn promotion_and_retirement_move_workers_between_roles() {
        let snap = Rc::new(Snapshot::fake("http", 1));
        let mut t = SlotTable::default();
        t.add_service(ServiceId(0), 1, &snap);
        let a = worker(&mut t, key(0), &snap);
        let a = t.insert_serving(a).unwrap();
        let b = worker(&mut t, key(0), &snap);
        let b = t.insert_replacement(b, Replace::Recycle(Recycle::MaxRequests)).unwrap();
        assert_eq!(t.slot(key(0)).unwrap().replacing(), Some(Replace::Recycle(Recycle::MaxRequests)));
        assert_eq!(t.promote(key(0)).unwrap(), Some(a));
        assert_eq!(t.slot(key(0)).unwrap().replacing(), None);
        assert_eq!(t.role(a), Some(Role::Retiring));
        assert_eq!(t.role(b), Some(Role::Serving));
        t.retire(b);
        assert_eq!(t.role(b), Some(Role::Retiring));
        assert_eq!(t.slot(key(0)).unwrap().serving(), None);
        assert!(!t.all_ready());
        assert_eq!(t.remove(a).map(|(_, r)| r), Some(Role::Retiring));
        assert_eq!(t.remove(a).map(|(_, r)| r), None);
    }

    #[test]
    fn due_restarts_are_taken_once() {
        let snap = Rc::new(Snapshot::fake("http", 1));
        let mut t = SlotTable::default();
        t.add_service(ServiceId(0), 2, &snap);
        let now = Instant::now();
        assert!(t.schedule_restart(key(1), now));
        assert_eq!(t.next_deadline(), Some(now));
        assert_eq!(t.take_due_restarts(now), vec![key(1)]);
        assert!(t.take_due_restarts(now).is_empty());
        assert_eq!(t.next_deadline(), None);
    }
}
