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
//!   its own (a `sunsubscribe` push: the slot migrated), when a node's connection drops (a
//!   failover may move its slots), and every [`REFRESH_EVERY`]; topics whose owner changed are
//!   moved to the new one;
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
        self.topics.insert(topic.to_vec(), Topic { count: 1, node });
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
        self.absorb(i, got, &mut out);
        self.maybe_refresh(now);
        out
    }

    /// Timers of every node, and the map's refresh.
    pub fn tick(&mut self, registry: &Registry, now: Instant) -> Vec<Event> {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            let got = self.nodes[i].driver.tick(registry, now);
            self.absorb(i, got, &mut out);
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
    fn absorb(&mut self, i: usize, events: Vec<Event>, out: &mut Vec<Event>) {
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
                    if let Some(t) = self.topics.get_mut(&topic) {
                        if t.node == Some(i) {
                            t.node = None;
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
                Ok(Some(n)) => n,
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
        for topic in topics {
            let owner = self.owner(&topic);
            let Some(t) = self.topics.get_mut(&topic) else { continue };
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
        tracing::debug!(nodes = self.owners().len(), "the Redis Cluster's slot map applied");
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
