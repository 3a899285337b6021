//! The worker's topic table (`Host::subscribe`, `Host::publish`): which connections of this
//! worker are subscribed to which topic, both ways, with the limits and counters. Plain data: the
//! fan-out that writes to connections is `core::topics`, the delivery between workers the mailbox,
//! and across hosts `crate::cluster`.
//!
//! A topic's subscribers are an insertion-ordered set (`IndexSet`): fan-out walks a dense array,
//! and a connection leaves in O(1) (`swap_remove`), so ten thousand subscribers closing at once
//! cost ten thousand steps, not fifty million. [`WORKER_CONN`] in a set is the worker itself
//! (`Host::subscribe_worker`): it hears the topic's messages as `on_publish`.

use std::collections::{HashMap, VecDeque};

use indexmap::IndexSet;
use plugin_api::abi::{TopicStatus, WORKER_CONN};
use plugin_api::ConnId;

use super::topic_seam::{Marks, Recent};
use crate::cluster::link::Link;
use crate::config::TopicLimits;
use crate::status::TopicReport;

/// Counters for `status` and `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TopicStats {
    /// Messages the plugin published here.
    pub published: u64,
    /// Messages published by another worker of this host, or another host, received here.
    pub received: u64,
    /// Copies written to subscribed connections of this worker.
    pub delivered: u64,
    /// Copies not written because the subscriber's send buffer was full (a slow consumer).
    pub dropped_slow: u64,
    /// Calls refused: a bad topic, too many topics on a connection, a message too large.
    pub refused: u64,
    /// Messages a moved connection missed at the hand-over's seam: written by the new worker
    /// (`seam_replayed`), and missed for good (`seam_lost`: older than its log).
    pub seam_replayed: u64,
    pub seam_lost: u64,
    /// Messages from another worker or host over this worker's limits (`topic_max_message`,
    /// `topic_max_len`): skipped.
    pub oversized: u64,
}

/// What a change of subscription means for the broker of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing changed (already subscribed, or not subscribed).
    None,
    /// Subscribed; `first`: the topic had no subscriber in this worker before.
    Added { first: bool },
    /// Unsubscribed; `last`: the topic has no subscriber in this worker any more.
    Removed { last: bool },
}

/// A message queued for the plugin's `on_publish`: topic, message, and its publisher and number
/// when it came from a worker of this host.
pub type Heard = (Box<[u8]>, Vec<u8>, Option<(u64, u64)>);

/// A moved connection's topics heard through the plugin (`RawHostExt::handover_hears`) and the
/// marks it was written up to on them (`topic_seam`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeardSeam {
    pub topics: Vec<Vec<u8>>,
    pub marks: Marks,
}

#[derive(Debug, Default)]
pub struct TopicTable {
    by_topic: HashMap<Box<[u8]>, IndexSet<ConnId>>,
    /// The topics of each connection (the worker's own under [`WORKER_CONN`]).
    by_conn: HashMap<ConnId, Vec<Box<[u8]>>>,
    pub stats: TopicStats,
    /// Messages on topics the worker itself subscribed to, for the plugin's `on_publish` (heard
    /// after the plugin call that published them, never inside it).
    /// Each with its publisher and number when it came from a worker of this host (the drop
    /// rule of `topic_seam`: [`TopicTable::hearing`]).
    pub heard: VecDeque<Heard>,
    /// While the plugin's `on_publish` runs: the message's topic, publisher and number (a
    /// send from it to a connection that had that message already is dropped: `topic_seam`).
    pub hearing: Option<(Box<[u8]>, u64, u64)>,
    /// While the plugin exports a connection in a hand-over: its id (`RawHostExt::handover_hears`
    /// is answered for it alone).
    pub exporting: Option<ConnId>,
    /// The topics each connection hears through the plugin's `on_publish`, as its plugin
    /// declared in its export (`RawHostExt::handover_hears`): they go in its snapshot.
    pub declared: HashMap<ConnId, Vec<Vec<u8>>>,
    /// Connections imported with such topics, until the plugin adopted them and heard what they
    /// missed (`on_publish_missed`): their topics and the old worker's marks.
    pub heard_pending: HashMap<ConnId, HeardSeam>,
    /// Connections that heard what they missed, with their marks advanced past it, until this
    /// worker has read past them: a send from `on_publish` of a message at or below its
    /// publisher's mark is dropped (it had it, from the old worker or the replay).
    pub heard_marks: HashMap<ConnId, HeardSeam>,
    /// The broker connection of the service's cluster (`--cluster`), when it has one.
    pub cluster: Option<Link>,
    /// This worker's id as a publisher, and the number of its last publish.
    pub publisher: u64,
    pub seq: u64,
    /// The last number taken from each publisher, this worker included (`topic_seam`).
    pub seen: Marks,
    /// What it took since it started, for connections a hand-over brings (`topic_seam`).
    pub recent: Recent,
    /// Connections a hand-over brought, with the old worker's marks, until this worker has read
    /// past them: a message at or below its publisher's mark was written by the old worker.
    pub seam_marks: HashMap<ConnId, Marks>,
    /// In an old worker: the topics of the connections it handed over. What it takes on them
    /// afterwards it forwards to its slot's replacement, which may not hear it from the
    /// publisher (one that did not know the replacement yet): `topic_seam`.
    pub handed_over: std::collections::HashSet<Box<[u8]>>,
    /// The service's limits (`topic_max_message`, `topic_max_len`, `topics_per_connection`).
    pub limits: TopicLimits,
}

impl TopicTable {
    /// An empty table with the service's `limits`, of a worker whose publisher id is
    /// `publisher` (`topic_seam::publisher_id`).
    pub fn new(limits: TopicLimits, publisher: u64) -> Self {
        TopicTable { limits, publisher, ..TopicTable::default() }
    }

    /// Checks a topic name: 1 to `topic_max_len` bytes.
    pub fn check_topic(&self, topic: &[u8]) -> Result<(), TopicStatus> {
        if topic.is_empty() || topic.len() > self.limits.max_topic_len {
            return Err(TopicStatus::INVALID_TOPIC);
        }
        Ok(())
    }

    /// Checks a publish: a valid topic and at most `topic_max_message` bytes.
    pub fn check_publish(&self, topic: &[u8], msg: &[u8]) -> Result<(), TopicStatus> {
        self.check_topic(topic)?;
        if msg.len() > self.limits.max_message {
            return Err(TopicStatus::TOO_LARGE);
        }
        Ok(())
    }

    /// Subscribes `conn` (which the caller checked is live) to `topic`.
    pub fn subscribe(&mut self, conn: ConnId, topic: &[u8]) -> Result<Change, TopicStatus> {
        let refused = self.check_topic(topic).and_then(|()| {
            let topics = self.by_conn.get(&conn).map_or(0, Vec::len);
            let already = self.by_topic.get(topic).is_some_and(|s| s.contains(&conn));
            if already {
                return Ok(true);
            }
            if conn != WORKER_CONN && topics >= self.limits.per_connection {
                return Err(TopicStatus::TOO_MANY_TOPICS);
            }
            Ok(false)
        });
        match refused {
            Err(status) => {
                self.stats.refused += 1;
                Err(status)
            }
            Ok(true) => Ok(Change::None),
            Ok(false) => {
                let subs = self.by_topic.entry(topic.into()).or_default();
                let first = subs.is_empty();
                subs.insert(conn);
                self.by_conn.entry(conn).or_default().push(topic.into());
                Ok(Change::Added { first })
            }
        }
    }

    /// Ends `conn`'s subscription to `topic`.
    pub fn unsubscribe(&mut self, conn: ConnId, topic: &[u8]) -> Result<Change, TopicStatus> {
        self.check_topic(topic)?;
        let Some(subs) = self.by_topic.get_mut(topic) else { return Ok(Change::None) };
        if !subs.swap_remove(&conn) {
            return Ok(Change::None);
        }
        let last = subs.is_empty();
        if last {
            self.by_topic.remove(topic);
        }
        if let Some(topics) = self.by_conn.get_mut(&conn) {
            if let Some(i) = topics.iter().position(|t| &t[..] == topic) {
                topics.swap_remove(i);
            }
            if topics.is_empty() {
                self.by_conn.remove(&conn);
            }
        }
        Ok(Change::Removed { last })
    }

    /// Ends every subscription of `conn` (it closed, or left the table); returns the topics
    /// that have no subscriber left in this worker.
    pub fn remove_conn(&mut self, conn: ConnId) -> Vec<Box<[u8]>> {
        self.seam_marks.remove(&conn);
        self.declared.remove(&conn);
        self.heard_pending.remove(&conn);
        self.heard_marks.remove(&conn);
        let Some(topics) = self.by_conn.remove(&conn) else { return Vec::new() };
        let mut emptied = Vec::new();
        for topic in topics {
            if let Some(subs) = self.by_topic.get_mut(&topic) {
                subs.swap_remove(&conn);
                if subs.is_empty() {
                    self.by_topic.remove(&topic);
                    emptied.push(topic);
                }
            }
        }
        emptied
    }

    /// `RawHostExt::handover_hears`: during the export of `conn`, it hears `topic`, a topic the
    /// worker subscribed to itself, through the plugin. False otherwise.
    pub fn declare_heard(&mut self, conn: ConnId, topic: &[u8]) -> bool {
        let worker = self.by_topic.get(topic).is_some_and(|s| s.contains(&WORKER_CONN));
        if !worker || self.exporting != Some(conn) {
            return false;
        }
        let topics = self.declared.entry(conn).or_default();
        if !topics.iter().any(|t| t[..] == *topic) {
            topics.push(topic.to_vec());
        }
        true
    }

    /// The drop rule (`topic_seam`): while `on_publish` runs for a message, whether a send of
    /// it to `conn` repeats what `conn` had already (from the old worker, or the replay).
    pub fn had_already(&self, conn: ConnId) -> bool {
        let Some((topic, publisher, seq)) = &self.hearing else { return false };
        self.heard_marks.get(&conn).is_some_and(|h| {
            h.marks.get(publisher).is_some_and(|m| seq <= m) && h.topics.iter().any(|t| t[..] == topic[..])
        })
    }

    /// The subscribers of `topic` (the worker itself among them as [`WORKER_CONN`]).
    pub fn subscribers(&self, topic: &[u8]) -> Option<&IndexSet<ConnId>> {
        self.by_topic.get(topic)
    }

    /// How many connections (not the worker itself) are subscribed to `topic`.
    pub fn conn_count(&self, topic: &[u8]) -> usize {
        self.by_topic.get(topic).map_or(0, |s| s.len() - usize::from(s.contains(&WORKER_CONN)))
    }

    /// The topics of `conn`, in the order it subscribed to them (for a hand-over's snapshot).
    pub fn topics_of(&self, conn: ConnId) -> Vec<Vec<u8>> {
        self.by_conn.get(&conn).map_or_else(Vec::new, |t| t.iter().map(|t| t.to_vec()).collect())
    }

    /// Topics with at least one subscriber here.
    pub fn topic_count(&self) -> usize {
        self.by_topic.len()
    }

    /// Subscriptions (connection, topic) here, the worker's own included.
    pub fn subscription_count(&self) -> usize {
        self.by_topic.values().map(IndexSet::len).sum()
    }

    /// What `status` and `/metrics` show of the topics.
    pub fn report(&self) -> TopicReport {
        let s = self.stats;
        let mut report = TopicReport {
            topics: self.topic_count() as u64,
            subscriptions: self.subscription_count() as u64,
            published: s.published,
            received: s.received,
            delivered: s.delivered,
            dropped: s.dropped_slow,
            refused: s.refused,
            oversized: s.oversized,
            ..TopicReport::default()
        };
        if let Some(cluster) = &self.cluster {
            let c = cluster.counters();
            report.broker = Some(cluster.state_text());
            report.broker_published = c.published;
            report.broker_received = c.received;
            report.broker_dropped =
                c.dropped_disconnected + c.dropped_backlog + c.refused_too_large + c.dropped_redirected;
            report.broker_reconnects = c.reconnects;
            report.oversized += c.oversized;
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_kept_both_ways_and_end_with_the_connection() {
        let mut t = TopicTable::default();
        let (a, b) = (ConnId::new(1, 1), ConnId::new(2, 1));
        assert_eq!(t.subscribe(a, b"red"), Ok(Change::Added { first: true }));
        assert_eq!(t.subscribe(b, b"red"), Ok(Change::Added { first: false }));
        assert_eq!(t.subscribe(b, b"red"), Ok(Change::None));
        assert_eq!(t.subscribe(b, b"blue"), Ok(Change::Added { first: true }));
        assert_eq!(t.subscribe(WORKER_CONN, b"blue"), Ok(Change::Added { first: false }));
        assert_eq!(t.conn_count(b"blue"), 1, "the worker itself is no connection");
        assert_eq!((t.topic_count(), t.subscription_count()), (2, 4));
        assert_eq!(t.topics_of(b), [b"red".to_vec(), b"blue".to_vec()]);
        assert_eq!(t.unsubscribe(a, b"red"), Ok(Change::Removed { last: false }));
        assert_eq!(t.unsubscribe(a, b"red"), Ok(Change::None));
        assert_eq!(t.remove_conn(b), vec![Box::from(&b"red"[..])], "blue still has the worker");
        assert_eq!(t.subscribers(b"blue").map(|s| s.len()), Some(1));
        assert!(t.subscribers(b"red").is_none());
        assert!(t.remove_conn(b).is_empty());
    }

    #[test]
    fn limits_are_refused_and_counted() {
        let mut t = TopicTable::default();
        let d = TopicLimits::default();
        let c = ConnId::new(1, 1);
        assert_eq!(t.subscribe(c, b""), Err(TopicStatus::INVALID_TOPIC));
        assert_eq!(t.subscribe(c, &vec![b'x'; d.max_topic_len + 1]), Err(TopicStatus::INVALID_TOPIC));
        for i in 0..d.per_connection {
            assert!(t.subscribe(c, format!("t{i}").as_bytes()).is_ok());
        }
        assert_eq!(t.subscribe(c, b"more"), Err(TopicStatus::TOO_MANY_TOPICS));
        assert_eq!(t.subscribe(c, b"t0"), Ok(Change::None), "one it has already is no new topic");
        assert_eq!(t.stats.refused, 3);
        assert_eq!(t.check_publish(b"t", &vec![0; d.max_message + 1]), Err(TopicStatus::TOO_LARGE));
        assert_eq!(t.check_publish(b"t", &vec![0; d.max_message]), Ok(()));
    }

    #[test]
    fn the_services_limits_apply() {
        let mut t = TopicTable::new(TopicLimits { max_message: 10, max_topic_len: 3, per_connection: 2 }, 1);
        let c = ConnId::new(1, 1);
        assert_eq!(t.subscribe(c, b"abcd"), Err(TopicStatus::INVALID_TOPIC));
        assert!(t.subscribe(c, b"abc").is_ok() && t.subscribe(c, b"b").is_ok());
        assert_eq!(t.subscribe(c, b"c"), Err(TopicStatus::TOO_MANY_TOPICS));
        assert_eq!(t.subscribe(WORKER_CONN, b"c"), Ok(Change::Added { first: true }), "the worker has no cap");
        assert_eq!(t.check_publish(b"abc", &[0; 11]), Err(TopicStatus::TOO_LARGE));
        assert_eq!(t.check_publish(b"abc", &[0; 10]), Ok(()));
    }
}
