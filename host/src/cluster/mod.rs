//! Topics across hosts: the broker clients.
//!
//! Every host started with the same `--cluster URL` and the same service name shares topics
//! through a broker: Redis pub/sub or NATS core subjects. This module is the client side of that,
//! in two layers:
//!
//! - sans-IO wire clients ([`redis::RedisClient`], [`nats::NatsClient`], behind the [`Protocol`]
//!   trait and the [`AnyProtocol`] enum): bytes in, bytes out and events, no sockets, no clock;
//! - [`Broker`]: what the host needs on top of either — subscribe at the broker only to topics
//!   with local subscribers (a refcount), resubscribe everything after a reconnect, keep-alive,
//!   counters — still without IO;
//! - [`driver::Driver`]: one non-blocking mio `TcpStream` with reconnect and capped back-off.
//!
//! Delivery is at-most-once, the brokers' core semantics: a publish made while the connection is
//! down is dropped and counted, and a message the broker sent while we were away is lost.
//!
//! A host does not receive its own publishes back (it delivers them locally itself): NATS is told
//! `echo: false`; Redis has no such switch, so each Redis message carries an 8-byte origin id and
//! a client skips the messages it published.

pub mod driver;
pub mod link;
pub mod nats;
pub mod redis;
pub mod shards;
pub mod tls;
pub mod url;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The longest topic name, in bytes (a topic becomes a Redis channel or a NATS subject).
pub const MAX_TOPIC_BYTES: usize = 1024;
/// Ask the broker for a PONG when nothing was read for this long.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
/// The connection is stale (and is dropped for a reconnect) when a PING stays unanswered this long.
pub const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes waiting to be written to the broker past which a publish is dropped (a broker that
/// stopped reading must not grow the host's memory without bound).
pub const MAX_BACKLOG_BYTES: usize = 64 * 1024 * 1024;

/// What a wire client reports to [`Broker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireEvent {
    /// The handshake is done: the connection can subscribe and publish.
    Ready,
    /// The answer to our keep-alive PING.
    Pong,
    /// A message on a topic (the topic without the service's prefix).
    Message { topic: Vec<u8>, payload: Vec<u8> },
    /// The broker reported an error that does not end the connection.
    ServerError(String),
    /// A message over the limit (`topic_max_message`) was skipped as it arrived.
    Oversized { len: usize },
    /// Switch the connection to TLS now: what the client queued after this goes encrypted
    /// (NATS: after the server's INFO).
    StartTls,
    /// Redis Cluster: the slot map (the answer to [`Protocol::request_slots`]).
    Slots(Vec<redis::SlotRange>),
    /// Redis Cluster: the node ended a subscription on its own (the topic's slot moved), or
    /// refused one (an error answer to SSUBSCRIBE, such as `-MOVED`).
    Unsubscribed { topic: Vec<u8> },
    /// Redis Cluster: a publish answered `-MOVED` (`ask` false) or `-ASK`: the node at
    /// `host:port` (an empty host: the one that answered) takes it. `again`: it had been sent
    /// again after a redirection already.
    Redirect { ask: bool, host: String, port: u16, topic: Vec<u8>, payload: Vec<u8>, again: bool },
}

/// What [`Broker`] (and the driver) reports to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Connected and every topic with local subscribers resubscribed.
    Connected,
    /// The connection ended; the driver reconnects with back-off.
    Disconnected { reason: String },
    /// A message published by another host on a topic with local subscribers.
    Message { topic: Vec<u8>, payload: Vec<u8> },
    /// The broker reported an error on a live connection (logged and counted by the host).
    BrokerError(String),
    /// The driver must start TLS before it writes or reads more (see [`WireEvent::StartTls`]).
    StartTls,
    /// Redis Cluster (for `shards`): the slot map asked for with [`Broker::request_slots`].
    Slots(Vec<redis::SlotRange>),
    /// Redis Cluster (for `shards`): the node dropped (or refused) the subscription of a topic
    /// that still has local subscribers (its slot moved); the broker session forgot it.
    Unsubscribed { topic: Vec<u8> },
    /// Redis Cluster (for `shards`): a publish to send again to the node named, once
    /// ([`WireEvent::Redirect`]; one redirected twice is dropped and counted by the session).
    Redirect { ask: bool, host: String, port: u16, topic: Vec<u8>, payload: Vec<u8> },
}

/// The connection to the broker, as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection (never connected, or waiting for the next attempt).
    Disconnected,
    /// TCP connected, handshake (HELLO / INFO-CONNECT-PING) under way.
    Handshaking,
    /// Subscribing and publishing.
    Ready,
}

/// Counters for `status` and `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Messages handed to the broker.
    pub published: u64,
    /// Messages received from the broker and delivered to the host.
    pub received: u64,
    /// Publishes dropped because the connection was not ready (at-most-once).
    pub dropped_disconnected: u64,
    /// Publishes dropped because [`MAX_BACKLOG_BYTES`] were already waiting to be written.
    pub dropped_backlog: u64,
    /// Publishes refused because they exceed the broker's maximum payload.
    pub refused_too_large: u64,
    /// Successful handshakes after the first one.
    pub reconnects: u64,
    /// Errors the broker reported on a live connection.
    pub broker_errors: u64,
    /// Messages from the broker over `topic_max_message`, skipped.
    pub oversized: u64,
    /// Redis Cluster: publishes answered `-MOVED`/`-ASK` and sent again to the node named.
    pub redirected: u64,
    /// Redis Cluster: publishes dropped because they were redirected a second time, or the
    /// node named was not connected.
    pub dropped_redirected: u64,
}

/// A connection-ending failure.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ClusterError {
    #[error("could not parse what the broker sent: {0}")]
    Protocol(String),
    #[error("the broker refused the connection: {0}")]
    Refused(String),
    #[error("the broker did not answer a PING within {0:?}")]
    Stale(Duration),
}

/// Why a publish or a subscription was not made.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TopicError {
    #[error("a topic name cannot be empty")]
    Empty,
    #[error("a topic name is {len} bytes, more than the {max} allowed")]
    TooLong { len: usize, max: usize },
    #[error("a message of {len} bytes is more than the broker's maximum payload of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("not connected to the broker: the message was dropped (delivery is at-most-once)")]
    Disconnected,
    #[error("{0} bytes are waiting to be written to the broker: the message was dropped")]
    Backlog(usize),
}

/// A sans-IO wire client for one connection at a time.
pub trait Protocol {
    /// Forget the previous connection and queue what the client says first (if anything).
    fn reset(&mut self, out: &mut Vec<u8>);
    /// Parse the complete frames at the start of `input`; returns how many bytes were consumed.
    fn parse(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<WireEvent>) -> Result<usize, ClusterError>;
    fn subscribe(&mut self, topic: &[u8], out: &mut Vec<u8>);
    fn unsubscribe(&mut self, topic: &[u8], out: &mut Vec<u8>);
    /// Refuses a payload over the broker's limit with [`TopicError::TooLarge`].
    fn publish(&mut self, topic: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), TopicError>;
    fn ping(&mut self, out: &mut Vec<u8>);
    /// A publish sent again after a Redis Cluster redirected it (`ask`: after `-ASK`, which
    /// needs `ASKING` first); elsewhere a publish.
    fn publish_redirected(
        &mut self,
        topic: &[u8],
        payload: &[u8],
        _ask: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TopicError> {
        self.publish(topic, payload, out)
    }
    /// Queue a request for a Redis Cluster's slot map; false where there is none (NATS).
    fn request_slots(&mut self, _out: &mut Vec<u8>) -> bool {
        false
    }
}

/// Either broker's wire client, chosen by the cluster URL's scheme.
#[derive(Debug)]
pub enum AnyProtocol {
    Redis(redis::RedisClient),
    Nats(nats::NatsClient),
}

impl AnyProtocol {
    /// The wire client for `url`, its channels or subjects named after `service`; `origin`: the
    /// id of the host, shared by the connections of its workers, so that none receives what
    /// another one of the same host published (None: each connection is its own origin).
    /// `max_message`: the largest message taken from the broker (`topic_max_message`).
    pub fn for_url(url: &url::ClusterUrl, service: &str, origin: Option<[u8; 8]>, max_message: usize) -> Self {
        match url.kind {
            url::BrokerKind::Redis => {
                let options =
                    redis::RedisOptions { origin, max_message, ..redis::RedisOptions::from_url(url, service) };
                Self::Redis(redis::RedisClient::new(options))
            }
            url::BrokerKind::Nats => {
                let options = nats::NatsOptions { origin, max_message, ..nats::NatsOptions::from_url(url, service) };
                Self::Nats(nats::NatsClient::new(options))
            }
        }
    }
}

macro_rules! each {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            AnyProtocol::Redis($p) => $e,
            AnyProtocol::Nats($p) => $e,
        }
    };
}

impl Protocol for AnyProtocol {
    fn reset(&mut self, out: &mut Vec<u8>) {
        each!(self, p => p.reset(out))
    }
    fn parse(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<WireEvent>) -> Result<usize, ClusterError> {
        each!(self, p => p.parse(input, out, events))
    }
    fn subscribe(&mut self, topic: &[u8], out: &mut Vec<u8>) {
        each!(self, p => p.subscribe(topic, out))
    }
    fn unsubscribe(&mut self, topic: &[u8], out: &mut Vec<u8>) {
        each!(self, p => p.unsubscribe(topic, out))
    }
    fn publish(&mut self, topic: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), TopicError> {
        each!(self, p => p.publish(topic, payload, out))
    }
    fn publish_redirected(
        &mut self,
        topic: &[u8],
        payload: &[u8],
        ask: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TopicError> {
        each!(self, p => p.publish_redirected(topic, payload, ask, out))
    }
    fn ping(&mut self, out: &mut Vec<u8>) {
        each!(self, p => p.ping(out))
    }
    fn request_slots(&mut self, out: &mut Vec<u8>) -> bool {
        each!(self, p => p.request_slots(out))
    }
}

fn check_topic(topic: &[u8]) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(TopicError::TooLong { len: topic.len(), max: MAX_TOPIC_BYTES });
    }
    Ok(())
}

/// The broker session of one host: refcounted subscriptions, resubscription, keep-alive,
/// counters. Sans-IO: the caller moves bytes ([`Broker::feed`], [`Broker::output`]) and calls
/// [`Broker::on_connected`] / [`Broker::on_disconnected`].
#[derive(Debug)]
pub struct Broker<P: Protocol> {
    protocol: P,
    /// Local subscribers per topic; a topic is in here only while its count is above zero.
    topics: HashMap<Vec<u8>, usize>,
    state: State,
    input: Vec<u8>,
    output: Vec<u8>,
    counters: Counters,
    handshakes: u64,
    last_input: Option<Instant>,
    ping_sent: Option<Instant>,
}

impl<P: Protocol> Broker<P> {
    pub fn new(protocol: P) -> Self {
        Self {
            protocol,
            topics: HashMap::new(),
            state: State::Disconnected,
            input: Vec::new(),
            output: Vec::new(),
            counters: Counters::default(),
            handshakes: 0,
            last_input: None,
            ping_sent: None,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// How many topics have local subscribers (and so are subscribed at the broker when ready).
    #[cfg_attr(not(test), allow(dead_code, reason = "the tests look"))]
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// One more local subscriber of `topic`; the first one subscribes at the broker.
    pub fn subscribe(&mut self, topic: &[u8]) -> Result<(), TopicError> {
        check_topic(topic)?;
        let count = self.topics.entry(topic.to_vec()).or_insert(0);
        *count += 1;
        if *count == 1 && self.state == State::Ready {
            self.protocol.subscribe(topic, &mut self.output);
        }
        Ok(())
    }

    /// One local subscriber of `topic` fewer; the last one unsubscribes at the broker.
    /// Unsubscribing a topic without subscribers does nothing.
    pub fn unsubscribe(&mut self, topic: &[u8]) {
        let Some(count) = self.topics.get_mut(topic) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            self.topics.remove(topic);
            if self.state == State::Ready {
                self.protocol.unsubscribe(topic, &mut self.output);
            }
        }
    }

    /// Ask for the slot map (Redis Cluster); false when not ready or not Redis.
    pub fn request_slots(&mut self) -> bool {
        self.state == State::Ready && self.protocol.request_slots(&mut self.output)
    }

    /// Publish `payload` on `topic` to the other hosts. Not ready: dropped and counted.
    pub fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TopicError> {
        self.publish_with(topic, payload, None)
    }

    /// A publish another node of a Redis Cluster redirected here (`ask`: with `-ASK`); counted
    /// as redirected, and as dropped when this connection is not ready.
    pub fn publish_redirected(&mut self, topic: &[u8], payload: &[u8], ask: bool) -> Result<(), TopicError> {
        if self.state != State::Ready {
            self.counters.dropped_redirected += 1;
            return Err(TopicError::Disconnected);
        }
        self.publish_with(topic, payload, Some(ask))
    }

    fn publish_with(&mut self, topic: &[u8], payload: &[u8], redirect: Option<bool>) -> Result<(), TopicError> {
        check_topic(topic)?;
        if self.state != State::Ready {
            self.counters.dropped_disconnected += 1;
            return Err(TopicError::Disconnected);
        }
        if self.output.len() >= MAX_BACKLOG_BYTES {
            self.counters.dropped_backlog += 1;
            return Err(TopicError::Backlog(self.output.len()));
        }
        let sent = match redirect {
            None => self.protocol.publish(topic, payload, &mut self.output),
            Some(ask) => self.protocol.publish_redirected(topic, payload, ask, &mut self.output),
        };
        match sent {
            Ok(()) => {
                match redirect {
                    None => self.counters.published += 1,
                    Some(_) => self.counters.redirected += 1,
                }
                Ok(())
            }
            Err(e) => {
                if matches!(e, TopicError::TooLarge { .. }) {
                    self.counters.refused_too_large += 1;
                }
                Err(e)
            }
        }
    }

    /// A new TCP connection: start the handshake.
    pub fn on_connected(&mut self, now: Instant) {
        self.input.clear();
        self.output.clear();
        self.state = State::Handshaking;
        self.last_input = Some(now);
        self.ping_sent = None;
        self.protocol.reset(&mut self.output);
    }

    /// The connection is gone: what was not written is lost.
    pub fn on_disconnected(&mut self) {
        self.input.clear();
        self.output.clear();
        self.state = State::Disconnected;
        self.ping_sent = None;
    }

    /// Bytes read from the broker. An error ends the connection (the caller closes it).
    pub fn feed(&mut self, bytes: &[u8], now: Instant) -> Result<Vec<Event>, ClusterError> {
        self.last_input = Some(now);
        self.ping_sent = None;
        self.input.extend_from_slice(bytes);
        let mut wire = Vec::new();
        let used = self.protocol.parse(&self.input, &mut self.output, &mut wire)?;
        self.input.drain(..used);
        let mut events = Vec::new();
        for event in wire {
            match event {
                WireEvent::Ready => {
                    self.state = State::Ready;
                    self.handshakes += 1;
                    if self.handshakes > 1 {
                        self.counters.reconnects += 1;
                    }
                    let mut topics: Vec<&Vec<u8>> = self.topics.keys().collect();
                    topics.sort();
                    for topic in topics {
                        self.protocol.subscribe(topic, &mut self.output);
                    }
                    events.push(Event::Connected);
                }
                WireEvent::Pong => {}
                WireEvent::StartTls => events.push(Event::StartTls),
                WireEvent::Message { topic, payload } => {
                    // A message in flight when the last subscriber left: not ours any more.
                    if self.topics.contains_key(&topic) {
                        self.counters.received += 1;
                        events.push(Event::Message { topic, payload });
                    }
                }
                WireEvent::ServerError(message) => {
                    self.counters.broker_errors += 1;
                    events.push(Event::BrokerError(message));
                }
                WireEvent::Slots(ranges) => events.push(Event::Slots(ranges)),
                WireEvent::Redirect { again: true, topic, .. } => {
                    // Bounded: sent again once already (a slot moving twice, or a loop).
                    self.counters.dropped_redirected += 1;
                    tracing::debug!(topic = %String::from_utf8_lossy(&topic), "a publish redirected twice: dropped");
                }
                WireEvent::Redirect { ask, host, port, topic, payload, again: false } => {
                    events.push(Event::Redirect { ask, host, port, topic, payload })
                }
                WireEvent::Unsubscribed { topic } => {
                    if self.topics.remove(&topic).is_some() {
                        events.push(Event::Unsubscribed { topic });
                    }
                }
                WireEvent::Oversized { len } => {
                    self.counters.oversized += 1;
                    tracing::warn!(bytes = len, "a message from the broker over topic_max_message skipped");
                }
            }
        }
        Ok(events)
    }

    /// Keep-alive: queue a PING after [`PING_INTERVAL`] of silence; fail after [`PING_TIMEOUT`]
    /// without an answer.
    pub fn tick(&mut self, now: Instant) -> Result<(), ClusterError> {
        if self.state == State::Disconnected {
            return Ok(());
        }
        if let Some(sent) = self.ping_sent {
            if now.saturating_duration_since(sent) >= PING_TIMEOUT {
                return Err(ClusterError::Stale(PING_TIMEOUT));
            }
            return Ok(());
        }
        let quiet_since = self.last_input.unwrap_or(now);
        if self.state == State::Ready && now.saturating_duration_since(quiet_since) >= PING_INTERVAL {
            self.protocol.ping(&mut self.output);
            self.ping_sent = Some(now);
        }
        Ok(())
    }

    /// When [`Broker::tick`] next has something to do.
    pub fn next_tick(&self) -> Option<Instant> {
        match (self.state, self.ping_sent, self.last_input) {
            (State::Disconnected, _, _) => None,
            (_, Some(sent), _) => Some(sent + PING_TIMEOUT),
            (State::Ready, None, Some(last)) => Some(last + PING_INTERVAL),
            _ => None,
        }
    }

    /// Bytes waiting to be written to the broker.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of [`Broker::output`] were written.
    pub fn consume_output(&mut self, n: usize) {
        self.output.drain(..n);
    }
}
