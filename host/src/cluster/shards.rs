//! Topics over a Redis Cluster (`redis+cluster://HOST:PORT[,HOST:PORT…]`): sharded pub/sub.
//!
//! A Redis Cluster spreads its 16384 slots over its master nodes, and sharded pub/sub keeps a
//! channel's messages on the shard that owns the channel's slot (CRC16 of the channel name, or
//! of its `{hash tag}`, mod 16384): `SPUBLISH` and `SSUBSCRIBE` must go to that node. [`Shards`]
//! does that routing over one [`Driver`] per node (each reconnecting with its own back-off):
//!
//! - the slot map comes from a node (`CLUSTER SLOTS`), first from a seed of the URL, then from
//!   any connected node;
//! - a topic is subscribed (`SSUBSCRIBE`) on the node that owns its slot, once, while it has
//!   local subscribers; a publish goes (`SPUBLISH`) to that node;
//! - the map is asked for again when a node answers `-MOVED`, when a node ends a subscription on
//!   its own (a `sunsubscribe` push: the slot migrated, or a failover gave it to a replica) or
//!   refuses one, when a node's connection drops (a failover may move its slots), and every
//!   [`REFRESH_EVERY`]; topics whose owner changed are moved to the new one;
//! - a map that still names the node that ended (or refused) a topic's subscription as its owner
//!   is older than that node's word: the node asked has not heard of the failover or migration
//!   yet (the cluster bus tells the nodes one by one). The topic is subscribed there meanwhile (a
//!   demoted master, now a replica of the new owner, still serves the slot's subscriptions) and
//!   the map asked for again, of the next node, after [`REFRESH_MIN`], up to [`STALE_MAPS_MAX`]
//!   times in a row;
//! - a publish answered `-MOVED` or `-ASK` (its slot migrating) is sent again, once, to the
//!   node named (after `ASKING` for `-ASK`; `-MOVED` also refreshes the map); redirected again,
//!   or the node named not connected, it is dropped and counted;
//! - a node that owns no slot in a new map is disconnected (and connected again when a map or a
//!   redirection names it);
//! - a node down stops only the topics of its slots: a publish on one of them is dropped and
//!   counted (at-most-once, as everywhere), the other nodes' topics go on, and local delivery
//!   never depends on any of it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mio::{Registry, Token};

use super::driver::{Driver, DriverError};
use super::redis::{channel_slot, RedisOptions, SlotRange};
use super::url::ClusterUrl;
use super::{check_topic, Counters, Event, State, TopicError};

/// The poll tokens of the node connections: `NODE_TOKEN_BASE + node` (far above the worker's
/// connection tokens).
pub const NODE_TOKEN_BASE: usize = usize::MAX / 2;
/// Nodes a worker connects to at most (a cluster's masters and the seeds); a map naming more is
/// routed as far as this allows (the topics of the others are not subscribed, their publishes
/// dropped and counted).
pub const MAX_NODES: usize = 1024;
/// The slot map is asked for at most this often.
pub const REFRESH_MIN: Duration = Duration::from_secs(1);
/// And at least this often, to follow changes no node told us about.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// A map request unanswered this long is given up (and asked of another node).
const REFRESH_TIMEOUT: Duration = Duration::from_secs(10);
/// Stale maps (see the module's doc) asked for again in a row at most; the next one is taken as
/// it is.
pub const STALE_MAPS_MAX: u32 = 10;
const SLOTS: usize = 16384;
const UNOWNED: u16 = u16::MAX;

#[derive(Debug)]
struct Node {
    host: String,
    port: u16,
    driver: Driver,
}

#[derive(Debug)]
struct Topic {
    /// Local subscribers (the worker's table counts them too; this keeps `Shards` whole alone).
    count: usize,
    /// The node it is subscribed on; None while its slot has no reachable owner in the map.
    node: Option<usize>,
    /// The node that ended or refused its subscription, until a map names another owner (or
    /// [`STALE_MAPS_MAX`] maps in a row still name it).
    disowned: Option<usize>,
}

/// The sharded pub/sub of one worker over a Redis Cluster.
#[derive(Debug)]
pub struct Shards {
    /// The URL's credentials and TLS settings, for every node.
    url: ClusterUrl,
    service: String,
    origin: Option<[u8; 8]>,
    max_message: usize,
    /// `host:<service>:`, the channels' prefix (as the Redis client makes it).
    prefix: Vec<u8>,
    nodes: Vec<Node>,
    /// Slot → node; empty until the first map came.
    slots: Vec<u16>,
    topics: HashMap<Vec<u8>, Topic>,
    want_refresh: bool,
    /// The node asked for the map, and when.
    asking: Option<(usize, Instant)>,
    last_refresh: Option<Instant>,
    /// The node asked first next time (the nodes in turn, so that one answering badly is not
    /// the only one ever asked).
    next_ask: usize,
    /// Publishes dropped because no reachable node owns the topic's slot (no map yet, a slot
    /// without owner, more nodes than [`MAX_NODES`]).
    unrouted: u64,
    /// Stale maps in a row (a topic's owner in them is the node that gave it away).
    stale_maps: u32,
}

impl Shards {
    /// Connects to the seeds of `url` (a `redis+cluster://` URL); the rest as [`Driver::new`].
    pub fn new(
        url: ClusterUrl,
        service: &str,
        origin: Option<[u8; 8]>,
        max_message: usize,
    ) -> Result<Self, DriverError> {
        let prefix = RedisOptions::from_url(&url, service).prefix;
        let mut shards = Shards {
            url: url.clone(),
            service: service.to_string(),
            origin,
            max_message,
            prefix,
            nodes: Vec::new(),
            slots: Vec::new(),
            topics: HashMap::new(),
            want_refresh: true,
            asking: None,
            last_refresh: None,
            next_ask: 0,
            unrouted: 0,
            stale_maps: 0,
        };
        shards.node(&url.host, url.port)?;
        for (host, port) in &url.more_seeds {
            shards.node(host, *port)?;
        }
        Ok(shards)
    }

    /// The index of the node at `host:port`, connecting to it the first time.
    fn node(&mut self, host: &str, port: u16) -> Result<Option<usize>, DriverError> {
        if let Some(i) = self.nodes.iter().position(|n| n.host == host && n.port == port) {
            return Ok(Some(i));
        }
        if self.nodes.len() >= MAX_NODES {
            return Ok(None);
        }
        let url = ClusterUrl { host: host.to_string(), port, more_seeds: Vec::new(), ..self.url.clone() };
        let token = Token(NODE_TOKEN_BASE + self.nodes.len());
        let driver = Driver::new(url, &self.service, token, self.origin, self.max_message)?;
        self.nodes.push(Node { host: host.to_string(), port, driver });
        Ok(Some(self.nodes.len() - 1))
    }

    /// The node that owns `topic`'s slot, if the map names one.
    fn owner(&self, topic: &[u8]) -> Option<usize> {
        let node = *self.slots.get(usize::from(channel_slot(&self.prefix, topic)))?;
        (node != UNOWNED).then_some(usize::from(node))
    }

    /// Ready: the map is known and every node owning slots is connected; Handshaking: some of
    /// it; Disconnected: no node connected.
    pub fn state(&self) -> State {
        let ready = self.nodes.iter().filter(|n| n.driver.state() == State::Ready).count();
        if ready == 0 {
            return State::Disconnected;
        }
        let owners_ready =
            self.owners().iter().all(|&i| self.nodes.get(i).is_some_and(|n| n.driver.state() == State::Ready));
        if self.slots.is_empty() || !owners_ready {
            State::Handshaking
        } else {
            State::Ready
        }
    }

    /// The nodes that own slots in the map.
    fn owners(&self) -> Vec<usize> {
        let mut owners: Vec<usize> = self.slots.iter().filter(|&&n| n != UNOWNED).map(|&n| usize::from(n)).collect();
        owners.sort_unstable();
        owners.dedup();
        owners
    }

    /// The connected nodes among those that own slots, and how many own slots (for `status`).
    pub fn node_counts(&self) -> (usize, usize) {
        let owners = self.owners();
        let ready = owners.iter().filter(|&&i| self.nodes[i].driver.state() == State::Ready).count();
        (ready, owners.len())
    }

    /// The nodes' counters added up, with the publishes no node could take.
    pub fn counters(&self) -> Counters {
        let mut sum = Counters::default();
        for n in &self.nodes {
            let c = n.driver.counters();
            sum.published += c.published;
            sum.received += c.received;
            sum.dropped_disconnected += c.dropped_disconnected;
            sum.dropped_backlog += c.dropped_backlog;
            sum.refused_too_large += c.refused_too_large;
            sum.reconnects += c.reconnects;
            sum.broker_errors += c.broker_errors;
            sum.oversized += c.oversized;
            sum.redirected += c.redirected;
            sum.dropped_redirected += c.dropped_redirected;
        }
        sum.dropped_disconnected += self.unrouted;
        sum
    }

    /// One more local subscriber of `topic`; the first one subscribes on the slot's owner.
    pub fn subscribe(&mut self, topic: &[u8]) -> Result<(), TopicError> {
        check_topic(topic)?;
        if let Some(t) = self.topics.get_mut(topic) {
            t.count += 1;
            return Ok(());
        }
        let node = self.owner(topic);
        if let Some(i) = node {
            self.nodes[i].driver.subscribe(topic)?;
        }
        self.topics.insert(topic.to_vec(), Topic { count: 1, node, disowned: None });
        Ok(())
    }

    /// One local subscriber of `topic` fewer; the last one unsubscribes on its node.
    pub fn unsubscribe(&mut self, topic: &[u8]) {
        let Some(t) = self.topics.get_mut(topic) else { return };
        t.count -= 1;
        if t.count == 0 {
            if let Some(i) = t.node {
                self.nodes[i].driver.unsubscribe(topic);
            }
            self.topics.remove(topic);
        }
    }

    /// Publish on the node that owns `topic`'s slot; dropped and counted when there is none or
    /// it is not connected.
    pub fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TopicError> {
        check_topic(topic)?;
        match self.owner(topic) {
            Some(i) => self.nodes[i].driver.publish(topic, payload),
            None => {
                self.unrouted += 1;
                Err(TopicError::Disconnected)
            }
        }
    }

    pub fn flush_output(&mut self) {
        for n in &mut self.nodes {
            n.driver.flush_output();
        }
    }

    /// A readiness event for one of the node tokens.
    pub fn handle_event(&mut self, event: &mio::event::Event, now: Instant) -> Vec<Event> {
        let Some(i) = event.token().0.checked_sub(NODE_TOKEN_BASE).filter(|&i| i < self.nodes.len()) else {
            return Vec::new();
        };
        let got = self.nodes[i].driver.handle_event(event, now);
        let mut out = Vec::new();
        self.absorb(i, got, now, &mut out);
        self.maybe_refresh(now);
        out
    }

    /// Timers of every node, and the map's refresh.
    pub fn tick(&mut self, registry: &Registry, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            let got = self.nodes[i].driver.tick(registry, now);
            self.absorb(i, got, now, &mut out);
        }
        if self.asking.is_some_and(|(_, at)| now >= at + REFRESH_TIMEOUT) {
            self.asking = None;
            self.want_refresh = true;
        }
        self.maybe_refresh(now);
        out
    }

    /// When [`Shards::tick`] is wanted next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let nodes = self.nodes.iter().filter_map(|n| n.driver.next_deadline());
        let refresh = match (self.asking, self.last_refresh) {
            (Some((_, at)), _) => Some(at + REFRESH_TIMEOUT),
            (None, Some(last)) if self.want_refresh => Some(last + REFRESH_MIN),
            (None, Some(last)) => Some(last + REFRESH_EVERY),
            // Never asked yet: a node's Connected event asks.
            (None, None) => None,
        };
        nodes.chain(refresh).min()
    }

    /// What node `i` reported: the map and moves are handled here, the rest goes to the worker.
    fn absorb(&mut self, i: usize, events: Vec<Event>, now: Instant, out: &mut Vec<Event>) {
        for event in events {
            match event {
                Event::Connected => {
                    tracing::info!(node = %self.nodes[i].driver_url(), "connected to a node of the Redis Cluster");
                    if self.slots.is_empty() {
                        self.want_refresh = true;
                    }
                }
                Event::Disconnected { reason } => {
                    if self.asking.is_some_and(|(n, _)| n == i) {
                        self.asking = None;
                    }
                    // A failover may give its slots to a replica.
                    self.want_refresh = true;
                    out.push(Event::Disconnected { reason: format!("{}: {reason}", self.nodes[i].driver_url()) });
                }
                Event::Slots(ranges) => {
                    self.asking = None;
                    let first = self.slots.is_empty();
                    self.apply_map(i, &ranges);
                    if first {
                        out.push(Event::Connected);
                    }
                }
                Event::Unsubscribed { topic } => {
                    tracing::debug!(
                        node = %self.nodes[i].driver_url(),
                        topic = %String::from_utf8_lossy(&topic),
                        "the node ended or refused a subscription"
                    );
                    if let Some(t) = self.topics.get_mut(&topic) {
                        if t.node == Some(i) {
                            t.node = None;
                            t.disowned = Some(i);
                        }
                    }
                    self.want_refresh = true;
                }
                Event::BrokerError(message) => {
                    if message.starts_with("MOVED ") || message.starts_with("CLUSTERDOWN") {
                        self.want_refresh = true;
                    }
                    out.push(Event::BrokerError(format!("{}: {message}", self.nodes[i].driver_url())));
                }
                Event::Redirect { ask, host, port, topic, payload } => {
                    // MOVED: the map is stale; ASK: one key's move under way, the map stands.
                    if !ask {
                        self.want_refresh = true;
                    }
                    let host = if host.is_empty() { self.nodes[i].host.clone() } else { host };
                    match self.node(&host, port) {
                        Ok(Some(n)) => {
                            self.nodes[n].driver.reopen(now);
                            // Not connected (yet): dropped and counted by its session.
                            let _ = self.nodes[n].driver.publish_redirected(&topic, &payload, ask);
                        }
                        Ok(None) | Err(_) => self.unrouted += 1,
                    }
                }
                Event::Message { .. } => out.push(event),
                Event::StartTls => {}
            }
        }
    }

    /// Ask a connected node for the map, when wanted and allowed.
    fn maybe_refresh(&mut self, now: Instant) {
        if self.asking.is_some() {
            return;
        }
        let due = match self.last_refresh {
            None => true,
            Some(last) if self.want_refresh => now >= last + REFRESH_MIN,
            Some(last) => now >= last + REFRESH_EVERY,
        };
        if !due {
            return;
        }
        let count = self.nodes.len();
        for k in 0..count {
            let i = (self.next_ask + k) % count;
            if self.nodes[i].driver.request_slots() {
                self.next_ask = i + 1;
                self.asking = Some((i, now));
                self.last_refresh = Some(now);
                self.want_refresh = false;
                return;
            }
        }
    }

    /// A new map from node `from`: route every topic to its slot's owner.
    fn apply_map(&mut self, from: usize, ranges: &[SlotRange]) {
        let mut slots = vec![UNOWNED; SLOTS];
        for r in ranges {
            let host = if r.host.is_empty() { self.nodes[from].host.clone() } else { r.host.clone() };
            let node = match self.node(&host, r.port) {
                Ok(Some(n)) => {
                    self.nodes[n].driver.reopen(Instant::now());
                    n
                }
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(node = %format!("{host}:{}", r.port), "could not set up the node's connection: {e}");
                    continue;
                }
            };
            for s in r.start..=r.end {
                slots[usize::from(s)] = node as u16;
            }
        }
        self.slots = slots;
        let mut topics: Vec<Vec<u8>> = self.topics.keys().cloned().collect();
        topics.sort();
        let mut stale = false;
        for topic in topics {
            let owner = self.owner(&topic);
            let Some(t) = self.topics.get_mut(&topic) else { continue };
            if t.disowned.is_some() {
                if t.disowned == owner && self.stale_maps < STALE_MAPS_MAX {
                    stale = true;
                } else {
                    t.disowned = None;
                }
            }
            if t.node == owner {
                continue;
            }
            let old = std::mem::replace(&mut t.node, owner);
            if let Some(i) = old {
                self.nodes[i].driver.unsubscribe(&topic);
            }
            if let Some(i) = owner {
                // Checked when it was first subscribed.
                let _ = self.nodes[i].driver.subscribe(&topic);
            }
        }
        // Nodes that own no slot any more (a failover demoted them, their slots migrated away):
        // disconnected, unless the map names no owner at all (the cluster is broken; keep what
        // there is to ask for the next map).
        let owners = self.owners();
        if !owners.is_empty() {
            for (k, n) in self.nodes.iter_mut().enumerate() {
                if !owners.contains(&k) && !n.driver.is_closed() {
                    tracing::info!(node = %n.driver_url(), "closing the connection to a node that owns no slot");
                    n.driver.close();
                }
            }
        }
        if stale {
            self.stale_maps += 1;
            self.want_refresh = true;
            tracing::debug!(
                from = %self.nodes[from].driver_url(),
                "the slot map names a node that gave a topic's slot away: asked for again"
            );
        } else {
            self.stale_maps = 0;
        }
        let from = self.nodes[from].driver_url();
        tracing::debug!(nodes = owners.len(), %from, "the Redis Cluster's slot map applied");
    }
}

impl Node {
    fn driver_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    //! The router without a cluster: node connections opened and fed by hand, their output read
    //! back as commands.
    use redis_protocol::resp3::decode::complete::decode;
    use redis_protocol::resp3::types::OwnedFrame;

    use super::*;

    const ORIGIN: [u8; 8] = *b"origin!!";

    fn shards() -> Shards {
        let url = crate::cluster::url::parse("redis+cluster://127.0.0.1:7000").unwrap();
        Shards::new(url, "chat", Some(ORIGIN), 1024).unwrap()
    }

    /// Feeds node `i` bytes as if read from it; what the router passes on to the worker.
    fn feed(s: &mut Shards, i: usize, bytes: &[u8], now: Instant) -> Vec<Event> {
        let got = s.nodes[i].driver.feed_for_test(bytes, now);
        let mut out = Vec::new();
        s.absorb(i, got, now, &mut out);
        out
    }

    /// Node `i` connected and through its handshake.
    fn ready(s: &mut Shards, i: usize, now: Instant) -> Vec<Event> {
        s.nodes[i].driver.open_for_test(now);
        s.nodes[i].driver.take_output_for_test();
        let out = feed(s, i, b"%0\r\n", now);
        assert_eq!(s.nodes[i].driver.state(), State::Ready);
        out
    }

    /// What node `i` would have been sent, one command a string (`SPUBLISH host:chat:t …`).
    fn sent(s: &mut Shards, i: usize) -> Vec<String> {
        let bytes = s.nodes[i].driver.take_output_for_test();
        let mut at = 0;
        let mut commands = Vec::new();
        while at < bytes.len() {
            let (frame, n) = decode(&bytes[at..]).unwrap().unwrap();
            at += n;
            let OwnedFrame::Array { data, .. } = frame else { panic!("not a command") };
            let words: Vec<String> = data
                .iter()
                .map(|f| match f {
                    OwnedFrame::BlobString { data, .. } => String::from_utf8_lossy(data).into_owned(),
                    other => panic!("not a bulk string: {other:?}"),
                })
                .collect();
            commands.push(words.join(" "));
        }
        commands
    }

    fn slots_reply(ranges: &[(u16, u16, u16)]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", ranges.len()).into_bytes();
        for (start, end, port) in ranges {
            out.extend(
                format!("*3\r\n:{start}\r\n:{end}\r\n*3\r\n$9\r\n127.0.0.1\r\n:{port}\r\n$2\r\nid\r\n").into_bytes(),
            );
        }
        out
    }

    fn push(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            out.extend(format!("${}\r\n", p.len()).into_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        [format!(">{}\r\n", parts.len()).into_bytes(), out].concat()
    }

    /// A topic whose slot is in the lower (`low`) or upper half.
    fn topic_in(low: bool) -> (Vec<u8>, u16) {
        (0..)
            .map(|k| format!("t{k}").into_bytes())
            .map(|t| {
                let slot = channel_slot(b"host:chat:", &t);
                (t, slot)
            })
            .find(|(_, slot)| (*slot < 8192) == low)
            .unwrap()
    }

    #[test]
    fn publishes_follow_moved_and_ask_once_and_nodes_without_slots_are_closed() {
        let now = Instant::now();
        let mut s = shards();
        assert!(ready(&mut s, 0, now).is_empty());
        s.maybe_refresh(now);
        assert_eq!(sent(&mut s, 0), ["CLUSTER SLOTS"]);
        let map = feed(&mut s, 0, &slots_reply(&[(0, 8191, 7000), (8192, 16383, 7001)]), now);
        assert_eq!(map, vec![Event::Connected]);
        assert_eq!(s.nodes.len(), 2);
        ready(&mut s, 1, now);
        assert_eq!(s.state(), State::Ready);

        // Each topic subscribed on its slot's owner only.
        let ((low, _), (high, high_slot)) = (topic_in(true), topic_in(false));
        let (low_name, high_name) = (String::from_utf8(low.clone()).unwrap(), String::from_utf8(high.clone()).unwrap());
        s.subscribe(&low).unwrap();
        s.subscribe(&high).unwrap();
        assert_eq!(sent(&mut s, 0), [format!("SSUBSCRIBE host:chat:{low_name}")]);
        assert_eq!(sent(&mut s, 1), [format!("SSUBSCRIBE host:chat:{high_name}")]);
        let confirm = |t: &str| push(&[b"ssubscribe", format!("host:chat:{t}").as_bytes(), b"1"]);
        feed(&mut s, 0, &confirm(&low_name), now);
        feed(&mut s, 1, &confirm(&high_name), now);

        // MOVED: sent again to the node named, and the map is wanted again.
        s.publish(&high, b"m1").unwrap();
        assert_eq!(sent(&mut s, 1), [format!("SPUBLISH host:chat:{high_name} origin!!m1")]);
        s.want_refresh = false;
        feed(&mut s, 1, format!("-MOVED {high_slot} 127.0.0.1:7000\r\n").as_bytes(), now);
        assert_eq!(sent(&mut s, 0), [format!("SPUBLISH host:chat:{high_name} origin!!m1")]);
        assert!(s.want_refresh);
        assert_eq!((s.counters().redirected, s.counters().dropped_redirected), (1, 0));
        // Redirected again: dropped and counted, sent nowhere.
        feed(&mut s, 0, format!("-MOVED {high_slot} 127.0.0.1:7001\r\n").as_bytes(), now);
        assert!(sent(&mut s, 0).is_empty() && sent(&mut s, 1).is_empty());
        assert_eq!((s.counters().redirected, s.counters().dropped_redirected), (1, 1));

        // ASK to a node not connected yet (an empty host: the node that answered): it is
        // connected to, and the publish dropped and counted meanwhile.
        s.publish(&high, b"m2").unwrap();
        sent(&mut s, 1);
        feed(&mut s, 1, format!("-ASK {high_slot} :7002\r\n").as_bytes(), now);
        assert_eq!(s.nodes.len(), 3);
        assert_eq!((s.nodes[2].host.as_str(), s.nodes[2].port), ("127.0.0.1", 7002));
        assert_eq!((s.counters().redirected, s.counters().dropped_redirected), (1, 2));
        // Once connected: ASKING, then the publish.
        ready(&mut s, 2, now);
        s.publish(&high, b"m3").unwrap();
        sent(&mut s, 1);
        s.want_refresh = false;
        feed(&mut s, 1, format!("-ASK {high_slot} 127.0.0.1:7002\r\n").as_bytes(), now);
        assert_eq!(sent(&mut s, 2), ["ASKING".to_string(), format!("SPUBLISH host:chat:{high_name} origin!!m3")]);
        assert!(!s.want_refresh, "ASK leaves the map as it is");
        assert_eq!(s.counters().redirected, 2);
        feed(&mut s, 2, b"+OK\r\n:1\r\n", now);

        // A failover: node 2 owns node 1's slots now. The subscription moves there and node 1,
        // owning nothing, is disconnected and not reconnected.
        let later = now + REFRESH_EVERY;
        s.maybe_refresh(later);
        let asked = (0..3).find(|&i| sent(&mut s, i) == ["CLUSTER SLOTS"]).expect("a node asked for the map");
        feed(&mut s, asked, &slots_reply(&[(0, 8191, 7000), (8192, 16383, 7002)]), later);
        // (Its SUNSUBSCRIBE is not even written: closing the connection ends it.)
        assert!(sent(&mut s, 1).is_empty());
        assert_eq!(sent(&mut s, 2), [format!("SSUBSCRIBE host:chat:{high_name}")]);
        assert!(s.nodes[1].driver.is_closed());
        assert_eq!(s.nodes[1].driver.state(), State::Disconnected);
        assert!(s.nodes[1].driver.next_deadline().is_none(), "a closed node is not reconnected");
        assert_eq!(s.node_counts(), (2, 2));
        assert_eq!(s.state(), State::Ready);
        s.publish(&high, b"m4").unwrap();
        assert_eq!(sent(&mut s, 2), [format!("SPUBLISH host:chat:{high_name} origin!!m4")]);

        // Named again (a redirection): connected again.
        s.publish(&high, b"m5").unwrap();
        feed(&mut s, 2, &confirm(&high_name), later);
        feed(&mut s, 2, format!("-MOVED {high_slot} 127.0.0.1:7001\r\n").as_bytes(), later);
        assert!(!s.nodes[1].driver.is_closed());
        assert!(s.nodes[1].driver.next_deadline().is_some_and(|at| at <= later));
    }

    /// Asks for the map at `now` and answers it with `ranges` from the node asked.
    fn answer_map(s: &mut Shards, ranges: &[(u16, u16, u16)], now: Instant) {
        for i in 0..s.nodes.len() {
            sent(s, i);
        }
        s.maybe_refresh(now);
        let asked = (0..s.nodes.len()).find(|&i| sent(s, i) == ["CLUSTER SLOTS"]).expect("a node asked for the map");
        feed(s, asked, &slots_reply(ranges), now);
    }

    #[test]
    fn a_map_older_than_a_failover_is_asked_for_again_until_it_names_the_new_owner() {
        let now = Instant::now();
        let mut s = shards();
        ready(&mut s, 0, now);
        answer_map(&mut s, &[(0, 8191, 7000), (8192, 16383, 7001)], now);
        ready(&mut s, 1, now);
        let (high, _) = topic_in(false);
        let channel = [b"host:chat:".as_slice(), &high].concat();
        s.subscribe(&high).unwrap();
        assert_eq!(sent(&mut s, 1), [format!("SSUBSCRIBE {}", String::from_utf8_lossy(&channel))]);
        feed(&mut s, 1, &push(&[b"ssubscribe", &channel, b"1"]), now);

        // A failover gives node 1's slots to its replica (7002): node 1 ends the subscription.
        // The node asked next has not heard of it yet and still names node 1.
        feed(&mut s, 1, &push(&[b"sunsubscribe", &channel, b"0"]), now);
        assert!(s.want_refresh);
        let t1 = now + REFRESH_MIN;
        answer_map(&mut s, &[(0, 8191, 7000), (8192, 16383, 7001)], t1);
        // Subscribed there meanwhile (a demoted master serves its new master's slots), and the
        // map is asked for again after REFRESH_MIN, not at the periodic refresh.
        assert_eq!(sent(&mut s, 1), [format!("SSUBSCRIBE {}", String::from_utf8_lossy(&channel))]);
        assert!(s.want_refresh, "a stale map is asked for again");
        assert_eq!(s.next_deadline(), Some(t1 + REFRESH_MIN));
        assert!(!s.nodes[1].driver.is_closed());

        // The next map names the new owner: the topic moves there, node 1 is closed, and the map
        // is not asked for again before the periodic refresh.
        let t2 = t1 + REFRESH_MIN;
        answer_map(&mut s, &[(0, 8191, 7000), (8192, 16383, 7002)], t2);
        assert_eq!(s.nodes.len(), 3);
        assert!(s.nodes[1].driver.is_closed());
        assert!(!s.want_refresh);
        ready(&mut s, 2, t2);
        assert_eq!(sent(&mut s, 2), [format!("SSUBSCRIBE {}", String::from_utf8_lossy(&channel))]);

        // A subscription refused (-MOVED) is not taken for one: the map is asked for again, and
        // one still naming the node that refused is asked for again too, at most STALE_MAPS_MAX
        // times in a row; the next one is taken as it is.
        let mut at = t2;
        for k in 0..=STALE_MAPS_MAX {
            feed(&mut s, 2, b"-MOVED 9000 127.0.0.1:7001\r\n", at);
            assert!(s.want_refresh);
            at += REFRESH_MIN;
            answer_map(&mut s, &[(0, 8191, 7000), (8192, 16383, 7002)], at);
            assert_eq!(sent(&mut s, 2), [format!("SSUBSCRIBE {}", String::from_utf8_lossy(&channel))], "map {k}");
            assert_eq!(s.want_refresh, k < STALE_MAPS_MAX, "map {k}");
        }
        assert_eq!(s.next_deadline(), Some(at + REFRESH_EVERY));
    }
}
