//! The seam of a hand-over for topic messages: a subscribed connection moving from the old
//! worker to its replacement hears every message of its topics once, in order, although both
//! workers receive each message on their own (each from its mailbox, at its own pace).
//!
//! Every message between the workers of a host carries its publisher's id ([`Marks`] keys: a
//! worker's pid and start time) and the publisher's sequence number. Each worker remembers the
//! last number it took from each publisher. When the old worker takes a connection out
//! (`Core::hold`), those numbers go with it ([`Marks`], in its snapshot): the old worker
//! delivered everything up to them, and delivers nothing after (the connection left its topic
//! table). A new worker keeps the messages it took since it started ([`Recent`], bounded in bytes
//! and time); importing the connection, it writes those of its topics numbered past the marks,
//! in order, before any later one. So a message reaches a moved connection through exactly one of
//! the two workers.
//!
//! A publisher that did not know the new worker yet (the previous slot's replacement, say, early
//! in a reload chain) sends to the old worker only. The master starts a hand-over only once
//! every peer of the replacement acknowledged the set of peers naming it (`master::mailbox`,
//! `PEERS_ACK_WAIT` at most), and a publisher copies what it had queued for the old worker alone
//! to the replacement when it learns of it (`worker::mailbox`): so what was published to the old
//! worker alone is in its mailbox when it reads it to the end before taking connections out, and
//! the marks are exact. The forwarding stays as the fallback (a peer that did not acknowledge in
//! time): the old worker forwards what it takes on the moved connections' topics to its slot's
//! replacement (`TopicTable::handed_over`), and a worker takes each publisher's number once,
//! whichever path it came by (a publisher's messages keep their order on each path; should a
//! forwarded one arrive after a later one came direct, it is dropped rather than written out of
//! order: that loses it for the moved connections. Taking the late message anyway would turn the
//! loss into a reordering, and holding a publisher's later messages until a gap fills would need
//! to know that the missing number is on a forwarded topic, which the numbers do not say).
//!
//! A connection may hear a topic through the plugin rather than the host: the worker listens
//! (`subscribe_worker`) and the plugin's `on_publish` sends to it (resp's pattern subscribers).
//! Its export declares so (`RawHostExt::handover_hears`: [`crate::worker::Snapshot::heard`]).
//! The old worker's plugin hears its queued `on_publish` messages before each connection leaves,
//! so the marks cover what it sent; in the new worker, once the plugin adopted the connection,
//! the messages of those topics past the marks go to the plugin's `on_publish_missed` for it,
//! in order, and its marks advance past them; then a send from `on_publish` of a message (each
//! queued with its publisher and number) to a connection whose mark is at or above it is
//! dropped: it had that message (`TopicTable::had_already`, the drop rule).
//!
//! The old worker keeps what it takes from the start of its hand-over too ([`Recent`] again):
//! a connection taken out and then back (the new plugin refused it, the hand-over failed) is
//! written what it missed while it was out, past its own marks, as the new worker would have.
//!
//! What this cannot cover, said where it is documented (docs/architecture.md, "Hand-over"):
//! messages from other hosts (`--cluster`: at-most-once anyway), and messages older than what
//! [`Recent`] keeps (counted as `seam_lost`).

use std::collections::{HashMap, VecDeque};

/// The last sequence number taken from each publisher (by publisher id).
pub type Marks = HashMap<u64, u64>;

/// What a new worker keeps of the messages it takes: at most this many bytes...
pub const RECENT_BYTES: usize = 8 << 20;
/// ... and only so long after it started, unless a hand-over to it is under way (its
/// replacement's hand-over starts within its start-up; a worker that is no replacement stops
/// keeping them then).
pub const RECENT_MS: u64 = 30_000;

/// A message as a worker took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub publisher: u64,
    pub seq: u64,
    pub topic: Box<[u8]>,
    pub msg: Vec<u8>,
}

/// The messages a new worker took, oldest first, while a hand-over may still come.
#[derive(Debug)]
pub struct Recent {
    log: VecDeque<Logged>,
    bytes: usize,
    /// Keeping (false once the hand-over ended or [`RECENT_MS`] passed without one).
    pub on: bool,
    /// Keeps until this time of the worker's clock (a hand-over to it pushes it on).
    pub until_ms: u64,
    /// Per publisher, the newest number dropped from the log for room.
    evicted: Marks,
    /// Per publisher, its messages in the log (a publisher's numbers grow along the log).
    publishers: HashMap<u64, usize>,
}

impl Default for Recent {
    fn default() -> Self {
        Recent {
            log: VecDeque::new(),
            bytes: 0,
            on: true,
            until_ms: RECENT_MS,
            evicted: Marks::new(),
            publishers: HashMap::new(),
        }
    }
}

impl Recent {
    /// Keeps a message taken at `now_ms` (when on), dropping the oldest beyond [`RECENT_BYTES`].
    pub fn keep(&mut self, now_ms: u64, publisher: u64, seq: u64, topic: &[u8], msg: &[u8]) {
        if !self.on {
            return;
        }
        if now_ms > self.until_ms {
            return self.stop();
        }
        self.bytes += topic.len() + msg.len();
        self.log.push_back(Logged { publisher, seq, topic: topic.into(), msg: msg.to_vec() });
        *self.publishers.entry(publisher).or_default() += 1;
        while self.bytes > RECENT_BYTES {
            let Some(old) = self.log.pop_front() else { break };
            self.bytes -= old.topic.len() + old.msg.len();
            self.evicted.insert(old.publisher, old.seq);
            if let Some(n) = self.publishers.get_mut(&old.publisher) {
                *n -= 1;
                if *n == 0 {
                    self.publishers.remove(&old.publisher);
                }
            }
        }
    }

    /// Keeps what comes from now on, until [`Recent::stop`] (an old worker during its hand-over:
    /// a connection that comes back is written what it missed while it was out). What it keeps
    /// already (a worker that was a replacement lately) stays.
    pub fn keep_from_now(&mut self) {
        self.on = true;
        self.until_ms = u64::MAX;
    }

    /// Stops keeping and frees what was kept.
    pub fn stop(&mut self) {
        *self = Recent { on: false, ..Recent::default() };
    }

    /// The messages a connection subscribed to `topics` missed after the old worker's `marks`,
    /// in the order this worker took them; and how many it missed that are no longer kept.
    pub fn missed<'a>(&'a self, marks: &'a Marks, topics: &'a [Vec<u8>]) -> (impl Iterator<Item = &'a Logged>, u64) {
        let lost = self
            .evicted
            .iter()
            .filter(|(p, &evicted)| evicted > marks.get(p).copied().unwrap_or(0))
            .map(|(p, &evicted)| evicted - marks.get(p).copied().unwrap_or(0))
            .sum();
        // What is past the marks is at the log's end: each publisher's numbers grow along the
        // log, so the scan from the end stops once it met, for every publisher in the log, a
        // number at or below its mark (an import costs what it missed, not the whole log: a
        // hand-over in batches of 10,000 subscribers imports each against the same log).
        let (mut start, mut done) = (self.log.len(), Vec::new());
        for (i, m) in self.log.iter().enumerate().rev() {
            if done.len() == self.publishers.len() {
                break;
            }
            start = i;
            if m.seq <= marks.get(&m.publisher).copied().unwrap_or(0) && !done.contains(&m.publisher) {
                done.push(m.publisher);
            }
        }
        let missed = self.log.range(start..).filter(move |m| {
            m.seq > marks.get(&m.publisher).copied().unwrap_or(0) && topics.iter().any(|t| t[..] == m.topic[..])
        });
        (missed, lost)
    }
}

/// This worker's id as a publisher: its pid and the time it started, so that a later process
/// with the same pid is another publisher.
pub fn publisher_id() -> u64 {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u32);
    (u64::from(std::process::id()) << 32) | u64::from(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> Vec<Vec<u8>> {
        names.iter().map(|t| t.as_bytes().to_vec()).collect()
    }

    #[test]
    fn a_connection_misses_what_came_after_the_marks_on_its_topics() {
        let mut r = Recent::default();
        for seq in 1..=5 {
            r.keep(0, 7, seq, b"red", format!("r{seq}").as_bytes());
            r.keep(0, 9, seq, b"blue", format!("b{seq}").as_bytes());
        }
        // The old worker took 7 up to 3 and nothing of 9 (it never heard of it).
        let marks = Marks::from([(7, 3)]);
        let (both, red) = (topics(&["red", "blue"]), topics(&["red"]));
        let (missed, lost) = r.missed(&marks, &both);
        let missed: Vec<&[u8]> = missed.map(|m| &m.msg[..]).collect();
        assert_eq!(missed, [&b"b1"[..], b"b2", b"b3", b"r4", b"b4", b"r5", b"b5"]);
        assert_eq!(lost, 0);
        let (missed, _) = r.missed(&marks, &red);
        assert_eq!(missed.count(), 2, "only its topics");
        r.stop();
        assert_eq!(r.missed(&marks, &topics(&["red"])).0.count(), 0);
        r.keep(0, 7, 6, b"red", b"late");
        assert_eq!(r.missed(&marks, &topics(&["red"])).0.count(), 0, "a stopped log keeps nothing");
    }

    // The scan from the end stops at the marks (what is older is never looked at), and a
    // publisher the old worker never heard of (mark 0) keeps it going: nothing is missed.
    #[test]
    fn the_scan_stops_once_every_publisher_met_its_mark() {
        let mut r = Recent::default();
        for seq in 1..=1000 {
            r.keep(0, 7, seq, b"red", b"x");
        }
        r.keep(0, 9, 1, b"red", b"q");
        r.keep(0, 7, 1001, b"red", b"y");
        let t = topics(&["red"]);
        let marks = Marks::from([(7, 999), (9, 1)]);
        let (missed, _) = r.missed(&marks, &t);
        assert_eq!(missed.map(|m| (m.publisher, m.seq)).collect::<Vec<_>>(), [(7, 1000), (7, 1001)]);
        let unknown = Marks::from([(7, 999)]);
        let (missed, _) = r.missed(&unknown, &t);
        assert_eq!(missed.count(), 3, "9's first message too");
    }

    #[test]
    fn the_log_is_bounded_and_says_what_it_dropped() {
        let mut r = Recent::default();
        let big = vec![0; RECENT_BYTES / 4];
        for seq in 1..=6 {
            r.keep(0, 1, seq, b"t", &big);
        }
        assert!(r.bytes <= RECENT_BYTES);
        // 6 kept, 3 fit: 1..=3 were dropped.
        let (marks, t) = (Marks::from([(1, 1)]), topics(&["t"]));
        let (missed, lost) = r.missed(&marks, &t);
        assert_eq!((missed.count(), lost), (3, 2));
        assert_eq!(r.missed(&Marks::from([(1, 4)]), &topics(&["t"])).1, 0);
        // Past its time (no hand-over came) it stops and frees what it kept.
        r.keep(RECENT_MS + 1, 1, 7, b"t", b"x");
        assert!(!r.on && r.log.is_empty() && r.bytes == 0);
    }
}
