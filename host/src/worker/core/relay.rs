//! A measurement, not a mode to run: one worker relays between the host's one broker
//! connection and the other workers (`HOST_BENCH_CLUSTER_RELAY=1`, the `*-relay` rows of
//! `bench/topics.sh`).
//!
//! The host's design gives each worker of a clustered service its own broker connection
//! (docs/architecture.md, "Which process holds the broker connection"). The alternative is one
//! connection per host: the broker sends a message once per host instead of once per subscribed
//! worker, and the relaying process forwards it to the others. This module is that extra hop as
//! a relay would take it, through the same worker-to-worker datagrams the mailboxes carry:
//! slot 0 connects; what it receives from the broker it fans out to its subscribers and
//! publishes to its peers' mailboxes; what a peer publishes reaches slot 0 through the mailbox
//! and slot 0 publishes it at the broker. A relay in the master would cost the same hop (a read
//! and a write per worker) plus the master's loop.
//!
//! Left out, since it does not change the per-message cost measured: the relay subscribes at the
//! broker only to topics with subscribers on its own worker (a real relay would keep a per-host
//! refcount, told by every worker's first and last subscriber, and release a dead worker's
//! share); the benchmark's room has subscribers on every worker.

use super::Core;

impl Core {
    /// A message another host published (from the broker, fanned out here already): to the
    /// other workers' mailboxes, under this worker's publisher id.
    pub(super) fn relay_from_broker(&mut self, topic: &[u8], msg: &[u8]) {
        if !self.topics.relay {
            return;
        }
        let t = &mut self.topics;
        t.seq += 1;
        t.seen.insert(t.publisher, t.seq);
        t.recent.keep(self.now_ms, t.publisher, t.seq, topic, msg);
        self.mailbox.publish(self.slot, t.publisher, t.seq, topic, msg);
    }

    /// A message another worker of this host published (`from`: its publisher id and number;
    /// None: from the broker): to the broker, for the other hosts.
    pub(super) fn relay_to_broker(&mut self, from: Option<(u64, u64)>, topic: &[u8], msg: &[u8]) {
        if !self.topics.relay || from.is_none() {
            return;
        }
        if let Some(cluster) = self.topics.cluster.as_mut() {
            // Dropped and counted by the broker session when not connected (at-most-once).
            let _ = cluster.publish(topic, msg);
        }
    }
}
