//! The master's view of its processes: worker slots and the worker processes serving them.

use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::UnixStream;
use nix::unistd::Pid;

use super::reload::SlotKey;
use super::snapshot::Snapshot;
use crate::ctl::LineConn;

/// What a worker process is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The slot's worker (or the one starting to become it after a death).
    Serving,
    /// A reload chain's new worker for the slot, not ready yet; the old one still serves.
    Replacement,
    /// Told to stop or drain; it exits on its own or is killed at its deadline.
    Retiring,
}

/// Where a worker process is in its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Starting,
    Ready,
}

pub struct Worker {
    /// Unique for the master's life; also the worker's poll token.
    pub id: usize,
    pub key: SlotKey,
    pub pid: Pid,
    pub control: LineConn<UnixStream>,
    pub role: Role,
    pub readiness: Readiness,
    pub snapshot: Rc<Snapshot>,
    pub started: Instant,
    /// SIGKILL at this time (start timeout, or stop/drain timeout).
    pub kill_at: Option<Instant>,
    /// What the worker said before it exited, if it could not start.
    pub error: Option<String>,
}

impl Worker {
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// One worker slot of a service: successive workers of a slot share its listening socket.
pub struct Slot {
    pub key: SlotKey,
    /// The plugin snapshot the slot's serving worker runs (respawns use it too).
    pub snapshot: Rc<Snapshot>,
    /// Quick deaths in a row (see `backoff`).
    pub failures: u32,
    pub restart_at: Option<Instant>,
}

#[derive(Default)]
pub struct Table {
    pub slots: Vec<Slot>,
    pub workers: Vec<Worker>,
    next_id: usize,
}

impl Table {
    pub fn new(slots: Vec<Slot>) -> Self {
        Table { slots, workers: Vec::new(), next_id: 0 }
    }

    pub fn next_id(&mut self, base: usize) -> usize {
        self.next_id += 1;
        base + self.next_id
    }

    pub fn slot_mut(&mut self, key: SlotKey) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.key == key)
    }

    pub fn by_id(&mut self, id: usize) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.id == id)
    }

    pub fn take_by_pid(&mut self, pid: Pid) -> Option<Worker> {
        let i = self.workers.iter().position(|w| w.pid == pid)?;
        Some(self.workers.swap_remove(i))
    }

    /// Whether the slot has a worker serving or starting to serve it.
    pub fn has_serving(&self, key: SlotKey) -> bool {
        self.workers.iter().any(|w| w.key == key && w.role == Role::Serving)
    }

    pub fn all_ready(&self) -> bool {
        self.slots.iter().all(|s| {
            self.workers.iter().any(|w| w.key == s.key && w.role == Role::Serving && w.readiness == Readiness::Ready)
        })
    }
}
