//! Worker recycling (`max_requests`, `max_memory`): the supervisor replaces a serving worker that
//! handled enough messages, or grew too large, with a replacement of reason
//! [`Replace::Recycle`] in its slot (started on the slot's snapshot, promoted once ready, the old
//! worker drains), outside any reload chain. A chain that reaches a slot being recycled takes it
//! over. A worker that keeps growing past [`HARD_FACTOR`] times its memory limit is killed at
//! once ([`Kill::MaxMemory`]) and the log says why.
//!
//! Decisions are made on the worker's heartbeat (`Alive { messages, rss_bytes }`, once a second).

use nix::sys::signal::Signal;

use super::process::Processes;
use super::slots::{Kill, Readiness, Recycle, Replace, Role, SlotKey, WorkerId};
use super::supervisor::{Phase, Supervisor};

/// A worker past `max_memory` times this is killed, not drained (it may be growing without
/// bound, and draining can take the whole drain timeout).
pub const HARD_FACTOR: (u64, u64) = (3, 2);

/// The share by which each worker's limits are moved, up or down (per mille).
const JITTER_PER_MILLE: u64 = 100;

/// `limit` moved by up to ±10 %, the same for a worker every time, different between workers
/// (so that the workers of a service, started together, do not recycle together). 0 stays 0.
pub fn jittered(limit: u64, worker: WorkerId) -> u64 {
    if limit == 0 {
        return 0;
    }
    // splitmix64 of the worker id: a well-spread number in 0..=2000 per mille.
    let mut z = worker.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let per_mille = 1000 - JITTER_PER_MILLE + z % (2 * JITTER_PER_MILLE + 1);
    ((limit as u128 * per_mille as u128) / 1000).clamp(1, u64::MAX as u128) as u64
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl<P: Processes> Supervisor<P> {
    /// A worker's heartbeat: note its usage, then recycle or kill it if it is over a limit.
    pub(in crate::master) fn check_usage(&mut self, id: WorkerId, messages: u64, rss_bytes: u64) {
        let Some(w) = self.slots.worker_mut(id) else { return };
        w.messages = messages;
        w.rss_bytes = rss_bytes;
        let key = w.key;
        let recycle = self.services[key.service.0].service.recycle;
        let max_memory = jittered(recycle.max_memory, id);
        let max_requests = jittered(recycle.max_requests, id);
        let hard = max_memory.saturating_mul(HARD_FACTOR.0) / HARD_FACTOR.1;
        if max_memory > 0 && rss_bytes >= hard {
            return self.kill_for_memory(id, rss_bytes, max_memory);
        }
        let cause = if max_memory > 0 && rss_bytes >= max_memory {
            Recycle::MaxMemory
        } else if max_requests > 0 && messages >= max_requests {
            Recycle::MaxRequests
        } else {
            return;
        };
        let Some(w) = self.slots.worker(id) else { return };
        let busy = self.slots.slot(key).is_none_or(|s| s.replacement().is_some());
        if self.phase != Phase::Running
            || w.recycled.is_some()
            || w.killed.is_some()
            || w.readiness != Readiness::Ready
            || self.slots.role(id) != Some(Role::Serving)
            || busy
        {
            return;
        }
        let service = self.service_name(key.service).to_string();
        let (pid, snap) = (w.pid.as_raw(), self.slots.slot(key).map(|s| s.snapshot.clone()));
        let Some(snap) = snap else { return };
        match cause {
            Recycle::MaxRequests => {
                tracing::info!(service = %service, slot = key.slot, pid, messages, limit = max_requests, "worker handled max_requests messages; recycling it")
            }
            Recycle::MaxMemory => {
                tracing::warn!(service = %service, slot = key.slot, pid, rss = %mib(rss_bytes), limit = %mib(max_memory), "worker reached max_memory; recycling it")
            }
        }
        match self.start_replacement(key, &snap, Replace::Recycle(cause)) {
            Ok(_) => {
                if let Some(w) = self.slots.worker_mut(id) {
                    w.recycled = Some(cause);
                }
            }
            // The old worker goes on; its next heartbeat tries again.
            Err(e) => {
                tracing::error!(service = %service, slot = key.slot, "could not start a worker to recycle into: {e}")
            }
        }
    }

    fn kill_for_memory(&mut self, id: WorkerId, rss_bytes: u64, max_memory: u64) {
        let Some(w) = self.slots.worker_mut(id) else { return };
        if w.killed.is_some() {
            return; // killed already, not reaped yet
        }
        let why = format!(
            "its resident memory reached {}, over {}/{} of max_memory ({})",
            mib(rss_bytes),
            HARD_FACTOR.0,
            HARD_FACTOR.1,
            mib(max_memory)
        );
        w.killed = Some(Kill::MaxMemory);
        w.error = Some(why.clone());
        let (pid, key) = (w.pid, w.key);
        tracing::error!(service = %self.service_name(key.service), slot = key.slot, pid = pid.as_raw(), "worker killed: {why}");
        self.procs.kill(pid, Signal::SIGKILL);
    }

    /// A recycle's replacement exited before it was ready: the old worker goes on serving (its
    /// next heartbeat tries again).
    pub(in crate::master) fn recycle_failed(&mut self, key: SlotKey) {
        self.unmark_recycled(key);
    }

    /// A reload chain reaches `key`: a recycle under way there gives way (its replacement is
    /// stopped; the chain replaces the worker anyway).
    pub(in crate::master) fn cancel_recycle(&mut self, key: SlotKey) {
        let Some(slot) = self.slots.slot(key) else { return };
        let Some((id, Some(Replace::Recycle(_)))) = slot.replacement().map(|id| (id, slot.replacing())) else {
            return;
        };
        tracing::info!(service = %self.service_name(key.service), slot = key.slot, "a reload takes over the slot's recycling");
        self.retire(id, false);
        self.unmark_recycled(key);
    }

    /// The slot's serving worker is no longer being recycled.
    fn unmark_recycled(&mut self, key: SlotKey) {
        let old = self.slots.slot(key).and_then(|s| s.serving());
        if let Some(w) = old.and_then(|old| self.slots.worker_mut(old)) {
            w.recycled = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent_and_spreads_workers() {
        let limits: Vec<u64> = (1..=200).map(|id| jittered(1000, WorkerId(id))).collect();
        assert!(limits.iter().all(|&l| (900..=1100).contains(&l)), "{limits:?}");
        let mut distinct = limits.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 100, "workers get different limits: {}", distinct.len());
        assert_eq!(jittered(1000, WorkerId(7)), jittered(1000, WorkerId(7)), "the same every time");
        assert_eq!(jittered(0, WorkerId(7)), 0, "off stays off");
        assert_eq!(jittered(1, WorkerId(7)), 1);
    }
}
