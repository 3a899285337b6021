//! One broker connection over a non-blocking mio `TcpStream`: connect, read and write until
//! `WouldBlock`, reconnect with capped exponential back-off. The piece a worker's or the master's
//! event loop hosts: it registers one token, and the loop calls [`Driver::handle_event`] for that
//! token's events and [`Driver::tick`] when [`Driver::next_deadline`] passes.
//!
//! At-most-once: a publish made while the connection is down (or still in its handshake) is
//! dropped and counted; what the broker sent while we were away is lost.
//!
//! Names: an IP address connects at once; a host name is resolved on a short-lived thread (the
//! system resolver blocks) whose answer [`Driver::tick`] picks up, so the loop never waits on DNS.
//! TLS: `rediss://` runs the connection through rustls ([`super::tls`]) from its first byte;
//! `tls://` (NATS) starts in plain text and switches when the client says so
//! ([`Event::StartTls`], after the server's INFO), before CONNECT is written.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::url::{BrokerKind, ClusterUrl};
use super::{AnyProtocol, Broker, Counters, Event, State, TopicError};

/// The first wait before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A TCP connect or a handshake not done within this is abandoned (and retried).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`Driver::tick`] is wanted while a name is being resolved.
const RESOLVE_POLL: Duration = Duration::from_millis(20);
const READ_CHUNK: usize = 64 * 1024;
/// Gathered publishes past this many bytes are written without waiting for the end of the turn.
pub const FLUSH_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriverError {
    #[error("TLS to the broker: {0}")]
    Tls(String),
}

#[derive(Debug)]
enum Conn {
    /// Waiting for `retry_at`.
    Idle,
    Resolving(mpsc::Receiver<io::Result<SocketAddr>>),
    Connecting(TcpStream),
    /// Connected; with its TLS session for a TLS URL.
    Open(TcpStream, Option<Box<rustls::ClientConnection>>),
}

#[derive(Debug)]
pub struct Driver {
    url: ClusterUrl,
    broker: Broker<AnyProtocol>,
    token: Token,
    conn: Conn,
    /// When the current attempt (resolve, connect, handshake) started.
    attempt_started: Instant,
    backoff: Duration,
    retry_at: Option<Instant>,
    events: Vec<Event>,
    connected_once: bool,
    /// Attempts at resolving a name, to take its addresses in turn.
    attempts: usize,
    /// The TLS client configuration of a TLS URL.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Closed on purpose ([`Driver::close`]): no reconnect until [`Driver::reopen`].
    closed: bool,
}

impl Driver {
    /// A driver for `url`, sharing topics with the hosts of the same `service`; `origin` and
    /// `max_message`: see [`AnyProtocol::for_url`].
    pub fn new(
        url: ClusterUrl,
        service: &str,
        token: Token,
        origin: Option<[u8; 8]>,
        max_message: usize,
    ) -> Result<Self, DriverError> {
        let tls = if url.tls { Some(super::tls::client_config(&url).map_err(DriverError::Tls)?) } else { None };
        let broker = Broker::new(AnyProtocol::for_url(&url, service, origin, max_message));
        Ok(Self {
            url,
            broker,
            token,
            conn: Conn::Idle,
            attempt_started: Instant::now(),
            backoff: INITIAL_BACKOFF,
            retry_at: Some(Instant::now()),
            events: Vec::new(),
            connected_once: false,
            attempts: 0,
            tls,
            closed: false,
        })
    }

    pub fn state(&self) -> State {
        self.broker.state()
    }

    /// Closes the connection and stops reconnecting (a Redis Cluster node that no longer owns
    /// slots); dropping the stream deregisters it. What was not written is lost.
    pub fn close(&mut self) {
        self.conn = Conn::Idle;
        self.broker.on_disconnected();
        self.retry_at = None;
        self.closed = true;
    }

    /// Connects again after [`Driver::close`] (at the next tick); nothing when not closed.
    pub fn reopen(&mut self, now: Instant) {
        if self.closed {
            self.closed = false;
            self.backoff = INITIAL_BACKOFF;
            self.retry_at = Some(now);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Tests without sockets: the connection is up (the handshake is queued in the output).
    #[cfg(test)]
    pub fn open_for_test(&mut self, now: Instant) {
        self.retry_at = None;
        self.broker.on_connected(now);
    }

    /// Tests without sockets: bytes as if read from the broker.
    #[cfg(test)]
    pub fn feed_for_test(&mut self, bytes: &[u8], now: Instant) -> Vec<Event> {
        self.broker.feed(bytes, now).expect("the test's bytes parse")
    }

    /// Tests without sockets: what would have been written, taken.
    #[cfg(test)]
    pub fn take_output_for_test(&mut self) -> Vec<u8> {
        let out = self.broker.output().to_vec();
        self.broker.consume_output(out.len());
        out
    }

    pub fn counters(&self) -> Counters {
        self.broker.counters()
    }

    #[cfg_attr(not(test), allow(dead_code, reason = "the tests look"))]
    pub fn topic_count(&self) -> usize {
        self.broker.topic_count()
    }

    pub fn subscribe(&mut self, topic: &[u8]) -> Result<(), TopicError> {
        self.broker.subscribe(topic)?;
        self.flush(Instant::now());
        Ok(())
    }

    pub fn unsubscribe(&mut self, topic: &[u8]) {
        self.broker.unsubscribe(topic);
        self.flush(Instant::now());
    }

    /// Ask for a Redis Cluster's slot map (answered as [`Event::Slots`]); false when not ready.
    pub fn request_slots(&mut self) -> bool {
        let asked = self.broker.request_slots();
        self.flush(Instant::now());
        asked
    }

    /// Publish to the other hosts; dropped and counted when not connected. The bytes are written
    /// by [`Driver::flush_output`] (or [`Driver::tick`]), or at once past [`FLUSH_BYTES`]: the
    /// publishes of one loop turn leave in one write instead of one write each.
    pub fn publish(&mut self, topic: &[u8], payload: &[u8]) -> Result<(), TopicError> {
        self.broker.publish(topic, payload)?;
        if self.broker.output().len() >= FLUSH_BYTES {
            self.flush(Instant::now());
        }
        Ok(())
    }

    /// Write what the publishes gathered: the loop calls this at the end of each turn.
    /// A publish a Redis Cluster redirected to this node ([`Broker::publish_redirected`]).
    pub fn publish_redirected(&mut self, topic: &[u8], payload: &[u8], ask: bool) -> Result<(), TopicError> {
        self.broker.publish_redirected(topic, payload, ask)?;
        if self.broker.output().len() >= FLUSH_BYTES {
            self.flush(Instant::now());
        }
        Ok(())
    }

    pub fn flush_output(&mut self) {
        self.flush(Instant::now());
    }

    /// When the loop should call [`Driver::tick`] at the latest.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.conn {
            Conn::Idle => self.retry_at,
            Conn::Resolving(_) => Some(Instant::now() + RESOLVE_POLL),
            Conn::Connecting(_) => Some(self.attempt_started + CONNECT_TIMEOUT),
            Conn::Open(..) if self.broker.state() == State::Handshaking => Some(self.attempt_started + CONNECT_TIMEOUT),
            Conn::Open(..) => self.broker.next_tick(),
        }
    }

    /// Timers: reconnect, name resolution, connect and handshake timeouts, keep-alive.
    pub fn tick(&mut self, registry: &Registry, now: Instant) -> Vec<Event> {
        match &self.conn {
            Conn::Idle => {
                if self.retry_at.is_some_and(|at| at <= now) {
                    self.retry_at = None;
                    self.begin_attempt(registry, now);
                }
            }
            Conn::Resolving(rx) => match rx.try_recv() {
                Ok(Ok(addr)) => self.connect(registry, addr, now),
                Ok(Err(e)) => self.fail(format!("could not resolve {}: {e}", self.url.host), now),
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.fail("the resolver thread ended without an answer".into(), now)
                }
            },
            Conn::Connecting(_) => {
                if now >= self.attempt_started + CONNECT_TIMEOUT {
                    self.fail(format!("could not connect within {CONNECT_TIMEOUT:?}"), now);
                }
            }
            Conn::Open(..) => {
                if self.broker.state() == State::Handshaking && now >= self.attempt_started + CONNECT_TIMEOUT {
                    self.fail(format!("no handshake within {CONNECT_TIMEOUT:?}"), now);
                } else if let Err(e) = self.broker.tick(now) {
                    self.fail(e.to_string(), now);
                } else {
                    self.flush(now);
                }
            }
        }
        std::mem::take(&mut self.events)
    }

    /// A readiness event for this driver's token.
    pub fn handle_event(&mut self, event: &mio::event::Event, now: Instant) -> Vec<Event> {
        if let Conn::Connecting(stream) = &self.conn {
            if !(event.is_writable() || event.is_error() || event.is_write_closed()) {
                return std::mem::take(&mut self.events);
            }
            match stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.fail(format!("could not connect to {}: {e}", self.url), now);
                    return std::mem::take(&mut self.events);
                }
                Ok(None) => {}
            }
            match stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return std::mem::take(&mut self.events),
                Err(e) => {
                    self.fail(format!("could not connect to {}: {e}", self.url), now);
                    return std::mem::take(&mut self.events);
                }
            }
            let Conn::Connecting(stream) = std::mem::replace(&mut self.conn, Conn::Idle) else {
                unreachable!("matched above");
            };
            let _ = stream.set_nodelay(true);
            let session = match self.tls.as_ref().filter(|_| self.url.kind == BrokerKind::Redis) {
                Some(config) => match super::tls::session(config, &self.url.host) {
                    Ok(s) => Some(Box::new(s)),
                    Err(e) => {
                        self.fail(e, now);
                        return std::mem::take(&mut self.events);
                    }
                },
                None => None,
            };
            self.conn = Conn::Open(stream, session);
            self.broker.on_connected(now);
        }
        if matches!(self.conn, Conn::Open(..)) {
            self.read(now);
            self.flush(now);
        }
        std::mem::take(&mut self.events)
    }

    fn begin_attempt(&mut self, registry: &Registry, now: Instant) {
        self.attempt_started = now;
        let port = self.url.port;
        if let Ok(ip) = self.url.host.parse::<IpAddr>() {
            self.connect(registry, SocketAddr::new(ip, port), now);
            return;
        }
        let (tx, rx) = mpsc::channel();
        let host = self.url.host.clone();
        // A name with several addresses (localhost: ::1 and 127.0.0.1): each attempt takes the
        // next one, so an address that refuses does not stop the others from being tried.
        let pick = self.attempts;
        self.attempts = self.attempts.wrapping_add(1);
        let spawned = std::thread::Builder::new().name("cluster-resolve".into()).spawn(move || {
            let answer = (host.as_str(), port).to_socket_addrs().and_then(|addrs| {
                let addrs: Vec<SocketAddr> = addrs.collect();
                match addrs.len() {
                    0 => Err(io::Error::other("no address for this name")),
                    n => Ok(addrs[pick % n]),
                }
            });
            let _ = tx.send(answer);
        });
        match spawned {
            Ok(_) => self.conn = Conn::Resolving(rx),
            Err(e) => self.fail(format!("could not start the resolver thread: {e}"), now),
        }
    }

    fn connect(&mut self, registry: &Registry, addr: SocketAddr, now: Instant) {
        let mut stream = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.fail(format!("could not connect to {addr}: {e}"), now),
        };
        if let Err(e) = registry.register(&mut stream, self.token, Interest::READABLE | Interest::WRITABLE) {
            return self.fail(format!("could not register the broker socket: {e}"), now);
        }
        self.conn = Conn::Connecting(stream);
    }

    fn read(&mut self, now: Instant) {
        let mut chunk = vec![0u8; READ_CHUNK];
        if let Conn::Open(stream, Some(tls)) = &mut self.conn {
            let (broker, events) = (&mut self.broker, &mut self.events);
            let (mut connected, mut failure) = (false, None);
            let open = super::tls::read(tls, stream, &mut chunk, |plain| {
                let got = broker.feed(plain, now).map_err(|e| e.to_string())?;
                for event in got {
                    connected |= event == Event::Connected;
                    events.push(event);
                }
                Ok(())
            });
            if connected {
                self.backoff = INITIAL_BACKOFF;
                self.connected_once = true;
            }
            match open {
                Ok(true) => {}
                Ok(false) => failure = Some("the broker closed the connection".to_string()),
                Err(e) => failure = Some(e),
            }
            if let Some(reason) = failure {
                self.fail(reason, now);
            }
            return;
        }
        loop {
            let Conn::Open(stream, _) = &mut self.conn else { return };
            match stream.read(&mut chunk) {
                Ok(0) => return self.fail("the broker closed the connection".into(), now),
                Ok(n) => match self.broker.feed(&chunk[..n], now) {
                    Ok(events) => {
                        let mut start_tls = false;
                        for event in events {
                            match event {
                                Event::StartTls => start_tls = true,
                                Event::Connected => {
                                    self.backoff = INITIAL_BACKOFF;
                                    self.connected_once = true;
                                    self.events.push(event);
                                }
                                event => self.events.push(event),
                            }
                        }
                        if start_tls {
                            return self.start_tls(now);
                        }
                    }
                    Err(e) => return self.fail(e.to_string(), now),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(format!("could not read from the broker: {e}"), now),
            }
        }
    }

    /// Switches the open connection to TLS (NATS, after INFO): the caller flushes next, which
    /// sends the ClientHello and the encrypted CONNECT behind it.
    fn start_tls(&mut self, now: Instant) {
        let Some(config) = self.tls.clone() else {
            return self.fail("the broker asked for TLS, which this URL does not have".into(), now);
        };
        match super::tls::session(&config, &self.url.host) {
            Ok(session) => {
                if let Conn::Open(_, tls) = &mut self.conn {
                    *tls = Some(Box::new(session));
                }
            }
            Err(e) => self.fail(e, now),
        }
    }

    fn flush(&mut self, now: Instant) {
        if let Conn::Open(stream, Some(tls)) = &mut self.conn {
            loop {
                match super::tls::write(tls, stream, self.broker.output()) {
                    Ok(0) => return,
                    Ok(n) => self.broker.consume_output(n),
                    Err(e) => return self.fail(e, now),
                }
                if tls.wants_write() {
                    return; // the socket is full: the next writable event goes on
                }
            }
        }
        loop {
            let Conn::Open(stream, _) = &mut self.conn else { return };
            let pending = self.broker.output();
            if pending.is_empty() {
                return;
            }
            match stream.write(pending) {
                Ok(0) => return self.fail("the broker connection wrote nothing".into(), now),
                Ok(n) => self.broker.consume_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(format!("could not write to the broker: {e}"), now),
            }
        }
    }

    /// The attempt or the connection failed: close (dropping the stream deregisters it), report,
    /// and schedule the next attempt.
    fn fail(&mut self, reason: String, now: Instant) {
        let was = std::mem::replace(&mut self.conn, Conn::Idle);
        self.broker.on_disconnected();
        tracing::debug!(broker = %self.url, %reason, backoff = ?self.backoff, "broker connection down");
        if matches!(was, Conn::Open(..)) || !self.connected_once {
            self.events.push(Event::Disconnected { reason });
        }
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}
