//! The worker's side of `--cluster`: one broker connection ([`Driver`]: Redis, NATS) or one per
//! node of a Redis Cluster ([`Shards`]), behind one interface.

use std::time::Instant;

use mio::{Registry, Token};

use super::driver::{Driver, DriverError};
use super::shards::{Shards, NODE_TOKEN_BASE};
use super::url::ClusterUrl;
use super::{Counters, Event, State, TopicError};

#[derive(Debug)]
pub enum Link {
    One(Box<Driver>),
    Shards(Box<Shards>),
}

impl Link {
    /// The link for `url`: a Redis Cluster's nodes for `redis+cluster://`, else one connection
    /// registered under `token`. The rest as [`Driver::new`].
    pub fn new(
        url: ClusterUrl,
        service: &str,
        token: Token,
        origin: Option<[u8; 8]>,
        max_message: usize,
    ) -> Result<Self, DriverError> {
        Ok(if url.cluster {
            Link::Shards(Box::new(Shards::new(url, service, origin, max_message)?))
        } else {
            Link::One(Box::new(Driver::new(url, service, token, origin, max_message)?))
        })
    }

    /// Whether a poll token is one of a Redis Cluster's node connections.
    pub fn is_node_token(token: Token) -> bool {
        token.0 >= NODE_TOKEN_BASE
    }

    pub fn state(&self) -> State {
        match self {
            Link::One(d) => d.state(),
            Link::Shards(s) => s.state(),
        }
    }

    /// `ready`, `connecting` or `down`; for a Redis Cluster with the connected nodes among those
    /// owning slots (`ready 3/3 nodes`).
    pub fn state_text(&self) -> String {
        let word = match self.state() {
            State::Ready => "ready",
            State::Handshaking => "connecting",
            State::Disconnected => "down",
        };
        match self {
            Link::One(_) => word.to_string(),
            Link::Shards(s) => {
                let (ready, owners) = s.node_counts();
                format!("{word} {ready}/{owners} nodes")
            }
        }
    }

    pub fn counters(&self) -> Counters {
        match self {
            Link::One(d) => d.counters(),
            Link::Shards(s) => s.counters(),
        }
    }

    pub fn subscribe(&mut self, topic: &[u8]) -> Result<(), TopicError> {
        match self {
            Link::One(d) => d.subscribe(topic),
            Link::Shards(s) => s.subscribe(topic),
        }
    }

    pub fn unsubscribe(&mut self, topic: &[u8]) {
        match self {
            Link::One(d) => d.unsubscribe(topic),
            Link::Shards(s) => s.unsubscribe(topic),
        }
    }

    pub fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TopicError> {
        match self {
            Link::One(d) => d.publish(topic, payload),
            Link::Shards(s) => s.publish(topic, payload),
        }
    }

    pub fn flush_output(&mut self) {
        match self {
            Link::One(d) => d.flush_output(),
            Link::Shards(s) => s.flush_output(),
        }
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self {
            Link::One(d) => d.next_deadline(),
            Link::Shards(s) => s.next_deadline(),
        }
    }

    pub fn tick(&mut self, registry: &Registry, now: Instant) -> Vec<Event> {
        match self {
            Link::One(d) => d.tick(registry, now),
            Link::Shards(s) => s.tick(registry, now),
        }
    }

    pub fn handle_event(&mut self, event: &mio::event::Event, now: Instant) -> Vec<Event> {
        match self {
            Link::One(d) => d.handle_event(event, now),
            Link::Shards(s) => s.handle_event(event, now),
        }
    }
}
