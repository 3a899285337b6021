//! Topics in the connection table: subscribing live connections, and the fan-out that writes a
//! published message to every subscriber's output (no plugin call per recipient), then hands it
//! to the service's other workers (the mailbox) and to the other hosts (the cluster's broker).
//!
//! **Slow consumers.** A subscriber whose queued output has reached `max_send_buffer` misses
//! the message: it is dropped for that subscriber alone and counted (`dropped_slow`); the
//! connection stays open and gets the next messages once it drained. Closing it instead would
//! turn a burst into reconnect storms; buffering past the limit would let one client that does
//! not read grow the worker's memory without bound. One copy below the limit is taken whole, as
//! a plugin's `send` is.
//!
//! Only open connections take a topic's messages: one the plugin closed (its output flushing
//! before the close) gets nothing more, so a protocol's last message stays its last.

use std::collections::VecDeque;
use std::time::Instant;

use plugin_api::abi::{TopicStatus, WORKER_CONN};
use plugin_api::ConnId;

use super::super::phase::ConnPhase;
use super::super::topic_seam::{Logged, Marks};
use super::super::topics::{Change, HeardSeam};
use super::conn::Conn;
use super::{Core, Deferred};
use crate::cluster::link::Link;
use crate::cluster::Event;

impl Core {
    /// `RawHostExt::subscribe`: 1 subscribed now, 0 already, or a negative `TopicStatus`.
    pub fn subscribe(&mut self, conn: ConnId, topic: &[u8]) -> i64 {
        if conn != WORKER_CONN && !self.get(conn).is_some_and(|c| c.phase == ConnPhase::Open) {
            if self.topics.check_topic(topic).is_err() {
                self.topics.stats.refused += 1;
                return TopicStatus::INVALID_TOPIC.0 as i64;
            }
            return TopicStatus::NO_CONNECTION.0 as i64;
        }
        match self.topics.subscribe(conn, topic) {
            Ok(Change::Added { first }) => {
                if first {
                    if let Some(cluster) = self.topics.cluster.as_mut() {
                        // Checked above: the topic is valid for the broker too.
                        let _ = cluster.subscribe(topic);
                    }
                }
                1
            }
            Ok(_) => 0,
            Err(status) => status.0 as i64,
        }
    }

    /// `RawHostExt::unsubscribe`: 1 when there was a subscription, 0 when not.
    pub fn unsubscribe(&mut self, conn: ConnId, topic: &[u8]) -> i64 {
        match self.topics.unsubscribe(conn, topic) {
            Ok(Change::Removed { last }) => {
                if last {
                    if let Some(cluster) = self.topics.cluster.as_mut() {
                        cluster.unsubscribe(topic);
                    }
                }
                1
            }
            Ok(_) => 0,
            Err(status) => status.0 as i64,
        }
    }

    /// The connection left the table (closed, or exported): its subscriptions end.
    pub(super) fn topics_left(&mut self, conn: ConnId) {
        for topic in self.topics.remove_conn(conn) {
            if let Some(cluster) = self.topics.cluster.as_mut() {
                cluster.unsubscribe(&topic);
            }
        }
    }

    /// `RawHostExt::publish`: written to this worker's subscribers now, then sent to the other
    /// workers and hosts. The number of connections of this worker written to, or a negative
    /// `TopicStatus`.
    pub fn publish(&mut self, topic: &[u8], msg: &[u8]) -> i64 {
        if let Err(status) = self.topics.check_publish(topic, msg) {
            self.topics.stats.refused += 1;
            return status.0 as i64;
        }
        self.topics.stats.published += 1;
        let from = (self.topics.publisher, self.topics.seq + 1);
        let written = self.fan_out(Some(from), topic, msg);
        let t = &mut self.topics;
        t.seq += 1;
        t.seen.insert(t.publisher, t.seq);
        t.recent.keep(self.now_ms, t.publisher, t.seq, topic, msg);
        self.mailbox.publish(self.slot, t.publisher, t.seq, topic, msg);
        if let Some(cluster) = self.topics.cluster.as_mut() {
            // Not connected, or a backlog: dropped and counted by the broker session
            // (at-most-once across hosts); local delivery went on above.
            let _ = cluster.publish(topic, msg);
        }
        written as i64
    }

    /// A message published by another worker of this host (its id and number: `from`) or by
    /// another host (None): written to this worker's subscribers (and heard by the plugin when
    /// the worker subscribed itself).
    pub fn deliver_published(&mut self, from: Option<(u64, u64)>, topic: &[u8], msg: &[u8]) {
        if self.topics.check_publish(topic, msg).is_err() {
            // Another worker or host with larger limits (a reload changed them): skipped.
            self.topics.stats.oversized += 1;
            return;
        }
        if let Some((publisher, seq)) = from {
            // Had already, by another path (an old worker forwards what it takes after a
            // hand-over: `topic_seam`); a publisher's messages come in order on each path.
            if self.topics.seen.get(&publisher).is_some_and(|&last| seq <= last) {
                return;
            }
            self.topics.seen.insert(publisher, seq);
            self.topics.recent.keep(self.now_ms, publisher, seq, topic, msg);
        }
        self.topics.stats.received += 1;
        self.fan_out(from, topic, msg);
        if !self.topics.seam_marks.is_empty() {
            // Read past every mark of a connection: nothing more of the old worker's can come.
            let seen = &self.topics.seen;
            self.topics.seam_marks.retain(|_, marks| marks.iter().any(|(p, &m)| seen.get(p).copied().unwrap_or(0) < m));
        }
    }

    /// A connection a hand-over brought (subscribed to its topics already) hears what this
    /// worker took on them after the old worker's `marks`, before anything later
    /// (`worker::topic_seam`).
    pub(super) fn replay_missed(&mut self, id: ConnId, marks: &Marks, topics: &[Vec<u8>]) {
        let missed: Vec<Vec<u8>> = self.missed_since(id, marks, topics).into_iter().map(|m| m.msg).collect();
        tracing::debug!(
            conn = id.0,
            replayed = missed.len(),
            ?marks,
            "seam: written the messages the old worker had not"
        );
        for msg in &missed {
            if self.write_published(id, msg) {
                self.topics.stats.seam_replayed += 1;
                self.topics.stats.delivered += 1;
            }
        }
        // Messages still on their way to this worker's mailbox at or below the marks were
        // written by the old worker: the fan-out skips them for this connection.
        let seen = &self.topics.seen;
        if marks.iter().any(|(p, &m)| seen.get(p).copied().unwrap_or(0) < m) {
            self.topics.seam_marks.insert(id, marks.clone());
        }
    }

    /// A connection a hand-over brought (or gave back) that hears topics through the plugin,
    /// once the plugin adopted it: what it missed on them past the old worker's marks, in
    /// order, for the plugin's `on_publish_missed`. None when it hears none.
    pub fn heard_missed(&mut self, id: ConnId) -> Option<(HeardSeam, Vec<Logged>)> {
        let seam = self.topics.heard_pending.remove(&id)?;
        let missed = self.missed_since(id, &seam.marks, &seam.topics);
        Some((seam, missed))
    }

    /// What this worker's log holds on `topics` past `marks`, for connection `id`, in order;
    /// what the log no longer holds is said and counted (`seam_lost`).
    fn missed_since(&mut self, id: ConnId, marks: &Marks, topics: &[Vec<u8>]) -> Vec<Logged> {
        let (missed, lost) = self.topics.recent.missed(marks, topics);
        let missed: Vec<Logged> = missed.cloned().collect();
        if lost > 0 {
            tracing::warn!(conn = id.0, lost, "a moved connection missed topic messages older than this worker's log");
        }
        self.topics.stats.seam_lost += lost;
        missed
    }

    /// After the plugin wrote `replayed` (what [`Core::heard_missed`] gave) to `id`: its marks
    /// advance past them, so that `on_publish` of any of them (still queued, or late from
    /// another path) is not sent to it again (the drop rule: [`TopicTable::had_already`]).
    pub fn heard_replayed(&mut self, id: ConnId, mut seam: HeardSeam, replayed: &[Logged]) {
        for m in replayed {
            let mark = seam.marks.entry(m.publisher).or_default();
            *mark = (*mark).max(m.seq);
        }
        self.topics.stats.seam_replayed += replayed.len() as u64;
        tracing::debug!(conn = id.0, replayed = replayed.len(), "seam: the plugin wrote what the old worker had not");
        if self.get(id).is_some() {
            self.topics.heard_marks.insert(id, seam);
        }
    }

    /// Once the plugin heard every queued message: connections whose marks this worker has
    /// read past need no drop rule any more.
    pub fn heard_settled(&mut self) {
        if self.topics.heard_marks.is_empty() || !self.topics.heard.is_empty() {
            return;
        }
        let seen = &self.topics.seen;
        self.topics.heard_marks.retain(|_, h| h.marks.iter().any(|(p, &m)| seen.get(p).copied().unwrap_or(0) < m));
    }

    /// Writes `msg` to every subscribed connection of `topic` with room in its send buffer,
    /// queues it for the plugin's `on_publish` when the worker itself is subscribed; returns
    /// how many connections it was written to.
    fn fan_out(&mut self, from: Option<(u64, u64)>, topic: &[u8], msg: &[u8]) -> usize {
        // The subscriber set stays borrowed from the topic table while the connections are
        // written: the writer borrows the other fields.
        let Some(subs) = self.topics.subscribers(topic) else { return 0 };
        let seam = &self.topics.seam_marks;
        let mut out =
            TopicWriter::new(&mut self.conns, &mut self.deferred, &mut self.dirty, self.limits.max_send_buffer);
        let (mut written, mut dropped, mut worker) = (0u64, 0u64, false);
        for &id in subs {
            if id == WORKER_CONN {
                worker = true;
                continue;
            }
            // Written by the old worker already (a connection a hand-over just brought).
            if let (false, Some((publisher, seq))) = (seam.is_empty(), from) {
                if seam.get(&id).is_some_and(|marks| seq <= marks.get(&publisher).copied().unwrap_or(0)) {
                    continue;
                }
            }
            match out.write(id, msg) {
                Wrote::Written => written += 1,
                Wrote::Dropped => dropped += 1,
                Wrote::Not => {}
            }
        }
        if worker {
            self.topics.heard.push_back((topic.into(), msg.to_vec(), from));
        }
        self.topics.stats.delivered += written;
        self.topics.stats.dropped_slow += dropped;
        written as usize
    }

    /// Writes one topic message to connection `id` as the fan-out does (the seam's replay);
    /// true when written.
    fn write_published(&mut self, id: ConnId, msg: &[u8]) -> bool {
        let mut out =
            TopicWriter::new(&mut self.conns, &mut self.deferred, &mut self.dirty, self.limits.max_send_buffer);
        match out.write(id, msg) {
            Wrote::Written => true,
            Wrote::Dropped => {
                self.topics.stats.dropped_slow += 1;
                false
            }
            Wrote::Not => false,
        }
    }
}

/// What [`TopicWriter::write`] did with a message for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    /// Queued in its output.
    Written,
    /// Its send buffer is full: this message is dropped for it (a slow consumer).
    Dropped,
    /// Gone, or closing: nothing more goes after what it queued.
    Not,
}

/// Writes topic messages into connections' output, with the connection table's bookkeeping
/// (the send-buffer bound, `buffer_full`, the dirty list): the one place a topic message meets
/// a connection. It borrows the fields it needs, not the whole `Core`, so the fan-out can hold
/// the subscriber set meanwhile.
struct TopicWriter<'a> {
    conns: &'a mut [Option<Conn>],
    deferred: &'a mut VecDeque<(ConnId, Deferred)>,
    dirty: &'a mut Vec<usize>,
    max_send_buffer: usize,
}

impl<'a> TopicWriter<'a> {
    fn new(
        conns: &'a mut [Option<Conn>],
        deferred: &'a mut VecDeque<(ConnId, Deferred)>,
        dirty: &'a mut Vec<usize>,
        max_send_buffer: usize,
    ) -> Self {
        TopicWriter { conns, deferred, dirty, max_send_buffer }
    }

    fn write(&mut self, id: ConnId, msg: &[u8]) -> Wrote {
        let index = id.index();
        let Some(c) = self.conns.get_mut(index).and_then(Option::as_mut).filter(|c| c.id == id) else {
            return Wrote::Not;
        };
        // Closing (the plugin closed it, maybe after a protocol's own close message): nothing
        // more goes after what it queued.
        if c.phase != ConnPhase::Open {
            return Wrote::Not;
        }
        let max = self.max_send_buffer;
        if c.pending_output() >= max {
            return Wrote::Dropped;
        }
        // One copy below the limit is taken whole, as a plugin's `send` is.
        c.output.extend_from_slice(msg);
        if c.pending_output() >= max && !c.hold.buffer_full {
            c.hold.buffer_full = true;
            self.deferred.push_back((id, Deferred::BufferFull));
        }
        if !c.sched.dirty {
            c.sched.dirty = true;
            self.dirty.push(index);
        }
        Wrote::Written
    }
}

/// The token of the cluster's broker connection in the worker's poll.
pub const CLUSTER: mio::Token = mio::Token(7);

impl Core {
    /// Connects this worker to the service's cluster (`--cluster URL`, checked by the config).
    /// Its publishes carry the host's origin ([`host_origin`]), shared by every worker of the
    /// host: what one publishes reaches the others through the mailboxes, and the broker's copy
    /// is skipped by them.
    pub fn join_cluster(&mut self, url: &str) -> Result<(), String> {
        let url = crate::cluster::url::parse(url).map_err(|e| format!("--cluster: {e}"))?;
        let driver = Link::new(url, &self.service, CLUSTER, Some(host_origin()), self.topics.limits.max_message)
            .map_err(|e| e.to_string())?;
        self.topics.cluster = Some(driver);
        Ok(())
    }

    /// A readiness event of the broker connection.
    pub fn cluster_ready(&mut self, event: &mio::event::Event) {
        let Some(cluster) = self.topics.cluster.as_mut() else { return };
        let events = cluster.handle_event(event, Instant::now());
        self.cluster_events(events);
    }

    /// The broker connection's timers (connect, back-off, keep-alive), when due.
    pub fn cluster_tick(&mut self) {
        let Some(cluster) = self.topics.cluster.as_mut() else { return };
        if cluster.next_deadline().is_some_and(|at| at <= Instant::now()) {
            let events = cluster.tick(&self.registry, Instant::now());
            self.cluster_events(events);
        }
    }

    /// When [`Core::cluster_tick`] is due, on the loop's clock.
    pub fn cluster_deadline_ms(&self) -> Option<u64> {
        let at = self.topics.cluster.as_ref()?.next_deadline()?;
        Some(self.now_ms + at.saturating_duration_since(Instant::now()).as_millis() as u64)
    }

    /// Writes the turn's publishes to the broker in one write.
    pub fn cluster_flush(&mut self) {
        if let Some(cluster) = self.topics.cluster.as_mut() {
            cluster.flush_output();
        }
    }

    fn cluster_events(&mut self, events: Vec<Event>) {
        for event in events {
            match event {
                Event::Message { topic, payload } => {
                    self.deliver_published(None, &topic, &payload);
                }
                Event::Connected => tracing::info!("connected to the cluster's broker"),
                Event::Disconnected { reason } => {
                    tracing::warn!("the cluster's broker connection is down: {reason}; local delivery goes on")
                }
                Event::BrokerError(message) => tracing::warn!("the cluster's broker reported: {message}"),
                // The driver's and the Redis Cluster router's own business (never reported).
                Event::StartTls | Event::Slots(_) | Event::Unsubscribed { .. } | Event::Redirect { .. } => {}
            }
        }
    }
}

/// The id of this host in the cluster, the same in each of its workers: a hash of the machine's
/// id, the master's pid (the worker's parent, kept across `host upgrade`) and the master's start
/// time (so that a pid reused later is another origin).
pub fn host_origin() -> [u8; 8] {
    use std::hash::{Hash, Hasher};
    let master = nix::unistd::getppid().as_raw();
    let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    // Field 22 of /proc/PID/stat, after the command name in parentheses (which may hold spaces).
    let started = std::fs::read_to_string(format!("/proc/{master}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19).map(String::from)))
        .unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (machine.trim(), master, started).hash(&mut hasher);
    hasher.finish().to_le_bytes()
}
