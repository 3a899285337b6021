//! A fake host for a plugin's unit tests: no worker, no sockets, no `.so`.
//!
//! [`TestHost`] implements the host's side of the ABI and records what a plugin asks of it
//! (bytes sent, closes, pauses, timers, counters, access-log lines, messages to other workers,
//! log records); its public fields say what the plugin sees (service, slot, worker count, clock,
//! draining, peer addresses) and may be set by a test. [`TestPlugin`] holds a plugin and its
//! host and drives the plugin the way a worker does: `connect`, `feed` bytes (framed with
//! `input`, delivered with `on_message`, refused over the max package size with `on_error`),
//! `close`, fire timers, drain, finish tasks.
//!
//! ```
//! use plugin_api::testing::TestPlugin;
//! use plugin_api::{ConnId, Frame, Host, Protocol, WorkerInfo};
//!
//! struct Upper;
//! impl Protocol for Upper {
//!     fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> { Ok(Upper) }
//!     fn input(&mut self, _: &mut Host<'_>, _: ConnId, buf: &[u8]) -> Frame {
//!         match buf.iter().position(|&b| b == b'\n') {
//!             Some(i) => Frame::Complete(i + 1),
//!             None => Frame::NeedMore,
//!         }
//!     }
//!     fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
//!         host.send(conn, &msg.to_ascii_uppercase());
//!     }
//! }
//!
//! let mut t = TestPlugin::<Upper>::new("").unwrap();
//! let conn = t.connect();
//! t.feed(conn, b"hel");
//! assert!(t.host.take_sent(conn).is_empty(), "half a line is no message");
//! t.feed(conn, b"lo\nbye\n");
//! assert_eq!(t.host.take_sent(conn), b"HELLO\nBYE\n");
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr};

use crate::abi::{
    ConnId, ConnectErrorCode, HostExtension, RawHost, RawHostExt, RawHostExt_TO, RawHostRef, RawHost_TO, RawJobBox,
    RawPeerCred, RawSockAddr, RawTransport, TimerId, TopicStatus, WorkerMsgStatus, MAX_PUBLISH, MAX_TOPICS_PER_CONN,
    MAX_TOPIC_LEN, MAX_WORKER_MESSAGE, NO_COUNTER, WORKER_CONN,
};
pub use crate::log::LogRecord;
use crate::sdk::{raw_sock_addr, ConnError, Frame, Host, InputEnd, Protocol, TaskId, Transport, WorkerInfo};

/// A timer the plugin started ([`Host::add_timer`], [`Host::add_interval`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    /// Milliseconds until it first fires.
    pub delay_ms: u64,
    /// Milliseconds between later firings; 0 for a one-shot timer.
    pub interval_ms: u64,
    /// What comes back in `on_timer`.
    pub data: u64,
}

/// A counter the plugin registered ([`Host::counter`]), with what was added to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCounter {
    /// Its name.
    pub name: String,
    /// Its labels (`key=value,…`).
    pub labels: String,
    /// Its help text.
    pub help: String,
    /// The sum of what was added.
    pub value: u64,
}

/// The host's side of the ABI for a plugin's unit tests: what it answers is in its public
/// fields, what the plugin did is recorded in them. See the [module docs](self).
pub struct TestHost {
    /// The service's name (`Host::service`). Default `"test"`.
    pub service: String,
    /// The worker's slot (`Host::slot`). Default 0.
    pub slot: u32,
    /// The service's workers (`Host::worker_count`; 0 answers "unknown"). Default 1.
    pub worker_count: u32,
    /// The worker's clock (`Host::now_ms`). Default 0; a test moves it.
    pub now_ms: u64,
    /// Whether the worker drains (`Host::is_draining`).
    pub draining: bool,
    /// The largest message: [`TestPlugin::feed`] refuses longer ones as the worker does.
    /// Default 1 MiB.
    pub max_package_size: usize,
    /// Peer addresses by connection (`Host::peer_addr`; none when absent).
    pub peers: HashMap<ConnId, SocketAddr>,
    /// The local address of every connection (`Host::local_addr`).
    pub local: Option<SocketAddr>,
    /// SNI names by connection (`Host::server_name`).
    pub server_names: HashMap<ConnId, String>,
    /// Unix-socket peers by connection (`Host::peer_cred`).
    pub peer_creds: HashMap<ConnId, RawPeerCred>,
    /// What carries each connection (`Host::transport`; [`Transport::Tcp`] when absent).
    pub transports: HashMap<ConnId, Transport>,
    /// The protocol ALPN agreed, by connection (`Host::alpn`).
    pub alpn: HashMap<ConnId, Vec<u8>>,
    /// Bytes reported as not yet written, by connection (`Host::pending_send`).
    pub pending: HashMap<ConnId, u64>,
    /// When set, every `send` to a connection is refused as if its send buffer were full.
    pub refuse_sends: bool,
    /// The access log (`Host::access_log`); `None`: the service has none, and it is refused.
    pub access_log: Option<Vec<u8>>,

    /// What was sent on each connection, `close`'s last bytes included, until taken.
    pub sent: HashMap<ConnId, Vec<u8>>,
    /// Connections the plugin closed.
    pub closed: HashSet<ConnId>,
    /// Connections the plugin paused (and did not resume).
    pub paused: HashSet<ConnId>,
    /// Live timers.
    pub timers: BTreeMap<TimerId, Timer>,
    /// Registered counters, by id.
    pub counters: Vec<TestCounter>,
    /// What the plugin broadcast to the other workers.
    pub broadcasts: Vec<Vec<u8>>,
    /// What the plugin sent to one worker: `(slot, message)`.
    pub to_workers: Vec<(u32, Vec<u8>)>,
    /// Addresses the plugin connected to; each got the id of its position (generation 1 000).
    pub connects: Vec<String>,
    /// While [`TestPlugin::hand_over_to`] exports: the outbound connections the plugin carries
    /// ([`Host::handover_carry`]).
    pub carrying: Option<Vec<ConnId>>,
    /// While [`TestPlugin::hand_over_to`] adopts: old id → new id of each carried connection
    /// ([`Host::handover_carried`]).
    pub carried: HashMap<u64, ConnId>,
    /// What the plugin declared with [`Host::handover_hears`] while [`TestPlugin::hand_over_to`]
    /// exported: `(connection, topic)`, in order.
    pub hears: Vec<(ConnId, Vec<u8>)>,
    /// Subscriptions by topic ([`Host::subscribe`]; [`crate::abi::WORKER_CONN`] for the worker's own).
    pub subscriptions: BTreeMap<Vec<u8>, BTreeSet<ConnId>>,
    /// What the plugin published: `(topic, message)`. Each was also written to the topic's
    /// subscribed connections here (their `sent`).
    pub published: Vec<(Vec<u8>, Vec<u8>)>,
    /// The plugin's log records (everything it logged while a [`TestPlugin`] drove it).
    pub logs: Arc<Mutex<Vec<LogRecord>>>,
    /// Tasks submitted and not yet run ([`TestPlugin::run_tasks`] runs them).
    tasks: Vec<(u64, RawJobBox)>,
    next_timer: u64,
    next_task: u64,
}

impl Default for TestHost {
    fn default() -> Self {
        TestHost {
            service: "test".into(),
            slot: 0,
            worker_count: 1,
            now_ms: 0,
            draining: false,
            max_package_size: 1 << 20,
            peers: HashMap::new(),
            local: None,
            server_names: HashMap::new(),
            peer_creds: HashMap::new(),
            transports: HashMap::new(),
            alpn: HashMap::new(),
            pending: HashMap::new(),
            refuse_sends: false,
            access_log: None,
            sent: HashMap::new(),
            closed: HashSet::new(),
            paused: HashSet::new(),
            timers: BTreeMap::new(),
            counters: Vec::new(),
            broadcasts: Vec::new(),
            to_workers: Vec::new(),
            connects: Vec::new(),
            carrying: None,
            carried: HashMap::new(),
            hears: Vec::new(),
            subscriptions: BTreeMap::new(),
            published: Vec::new(),
            logs: Arc::default(),
            tasks: Vec::new(),
            next_timer: 1,
            next_task: 1,
        }
    }
}

impl TestHost {
    /// A host with the defaults above.
    pub fn new() -> Self {
        Self::default()
    }

    /// The raw handle a plugin's glue takes (`RawPlugin` methods), borrowed for one call.
    pub fn raw(&mut self) -> RawHostRef<'_> {
        RawHost_TO::from_ptr(self, TD_Opaque)
    }

    /// Runs `f` with the SDK's [`Host`] on this host, recording what the plugin logs.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut Host<'_>) -> R) -> R {
        let logs = Arc::clone(&self.logs);
        crate::log::recording(&logs, || f(&mut Host::from_raw(self.raw())))
    }

    /// What was sent on `conn` since the last call (the bytes are taken).
    pub fn take_sent(&mut self, conn: ConnId) -> Vec<u8> {
        self.sent.remove(&conn).unwrap_or_default()
    }

    /// Whether the plugin closed `conn`.
    pub fn is_closed(&self, conn: ConnId) -> bool {
        self.closed.contains(&conn)
    }

    /// The value of the counter called `name` (the sum over its label sets), if registered.
    pub fn counter_value(&self, name: &str) -> Option<u64> {
        let mut matching = self.counters.iter().filter(|c| c.name == name).peekable();
        matching.peek()?;
        Some(matching.map(|c| c.value).sum())
    }

    /// The messages of the records logged so far.
    pub fn log_messages(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|r| r.message.clone()).collect()
    }

    /// The worker the plugin's `new` hears about.
    pub fn worker_info(&self) -> WorkerInfo {
        WorkerInfo {
            service: self.service.clone(),
            slot: self.slot,
            pid: std::process::id(),
            max_package_size: self.max_package_size,
            max_send_buffer: 1 << 20,
            worker_count: Some(self.worker_count).filter(|&n| n > 0),
        }
    }
}

/// The calls added since plugin-api 0.1.3.
impl RawHostExt for TestHost {
    fn api_version(&self) -> RStr<'static> {
        RStr::from_str(env!("CARGO_PKG_VERSION"))
    }
    fn transport(&self, conn: ConnId) -> RawTransport {
        self.transports.get(&conn).copied().unwrap_or(Transport::Tcp).into()
    }
    fn alpn(&self, conn: ConnId) -> ROption<RSlice<'_, u8>> {
        self.alpn.get(&conn).map(|p| RSlice::from_slice(p)).into()
    }
    fn subscribe(&mut self, conn: ConnId, topic: RSlice<'_, u8>) -> i64 {
        if !valid_topic(&topic) {
            return TopicStatus::INVALID_TOPIC.0 as i64;
        }
        if self.closed.contains(&conn) {
            return TopicStatus::NO_CONNECTION.0 as i64;
        }
        if conn != WORKER_CONN && self.topics_of(conn).len() >= MAX_TOPICS_PER_CONN {
            let already = self.subscriptions.get(topic.as_slice()).is_some_and(|s| s.contains(&conn));
            if !already {
                return TopicStatus::TOO_MANY_TOPICS.0 as i64;
            }
        }
        i64::from(self.subscriptions.entry(topic.to_vec()).or_default().insert(conn))
    }
    fn unsubscribe(&mut self, conn: ConnId, topic: RSlice<'_, u8>) -> i64 {
        if !valid_topic(&topic) {
            return TopicStatus::INVALID_TOPIC.0 as i64;
        }
        let Some(subs) = self.subscriptions.get_mut(topic.as_slice()) else { return 0 };
        let was = subs.remove(&conn);
        if subs.is_empty() {
            self.subscriptions.remove(topic.as_slice());
        }
        i64::from(was)
    }
    fn publish(&mut self, topic: RSlice<'_, u8>, msg: RSlice<'_, u8>) -> i64 {
        if !valid_topic(&topic) {
            return TopicStatus::INVALID_TOPIC.0 as i64;
        }
        if msg.len() > MAX_PUBLISH {
            return TopicStatus::TOO_LARGE.0 as i64;
        }
        self.published.push((topic.to_vec(), msg.to_vec()));
        self.fan_out(&topic, &msg) as i64
    }
    fn subscribers(&mut self, topic: RSlice<'_, u8>) -> i64 {
        if !valid_topic(&topic) {
            return TopicStatus::INVALID_TOPIC.0 as i64;
        }
        self.subscriptions.get(topic.as_slice()).map_or(0, |s| s.iter().filter(|&&c| c != WORKER_CONN).count()) as i64
    }
    fn handover_carry(&mut self, conn: ConnId) -> bool {
        let outbound = RawHost::is_outbound(self, conn) && !self.closed.contains(&conn);
        match &mut self.carrying {
            Some(list) if outbound => {
                if !list.contains(&conn) {
                    list.push(conn);
                }
                true
            }
            _ => false,
        }
    }
    fn handover_carried(&self, old: ConnId) -> ROption<ConnId> {
        self.carried.get(&old.0).copied().into()
    }
    fn handover_hears(&mut self, conn: ConnId, topic: RSlice<'_, u8>) -> bool {
        let hears = self.carrying.is_some() && self.worker_subscribed(&topic);
        if hears {
            self.hears.push((conn, topic.to_vec()));
        }
        hears
    }
}

impl RawHost for TestHost {
    fn extension(&mut self) -> HostExtension<'_> {
        HostExtension::new(RawHostExt_TO::from_ptr(self, TD_Opaque))
    }
    fn send(&mut self, conn: ConnId, data: RSlice<'_, u8>) -> bool {
        if self.refuse_sends || self.closed.contains(&conn) {
            return false;
        }
        self.sent.entry(conn).or_default().extend_from_slice(&data);
        true
    }
    fn close(&mut self, conn: ConnId, last: RSlice<'_, u8>) {
        if self.closed.insert(conn) {
            self.sent.entry(conn).or_default().extend_from_slice(&last);
        }
    }
    fn pause_recv(&mut self, conn: ConnId, paused: bool) {
        if paused {
            self.paused.insert(conn);
        } else {
            self.paused.remove(&conn);
        }
    }
    fn peer_addr(&self, conn: ConnId) -> RawSockAddr {
        raw_sock_addr(self.peers.get(&conn).copied())
    }
    fn local_addr(&self, _conn: ConnId) -> RawSockAddr {
        raw_sock_addr(self.local)
    }
    fn pending_send(&self, conn: ConnId) -> u64 {
        self.pending.get(&conn).copied().unwrap_or(0)
    }
    fn add_timer(&mut self, delay_ms: u64, interval_ms: u64, data: u64) -> TimerId {
        let id = TimerId(self.next_timer);
        self.next_timer += 1;
        self.timers.insert(id, Timer { delay_ms, interval_ms, data });
        id
    }
    fn del_timer(&mut self, timer: TimerId) -> bool {
        self.timers.remove(&timer).is_some()
    }
    fn slot(&self) -> u32 {
        self.slot
    }
    fn service(&self) -> RStr<'_> {
        RStr::from_str(&self.service)
    }
    fn is_draining(&self) -> bool {
        self.draining
    }
    fn now_ms(&self) -> u64 {
        self.now_ms
    }
    fn worker_count(&self) -> u32 {
        self.worker_count
    }
    fn counter(&mut self, name: RStr<'_>, labels: RStr<'_>, help: RStr<'_>) -> u32 {
        if name.is_empty() {
            return NO_COUNTER;
        }
        if let Some(i) = self.counters.iter().position(|c| c.name == name.as_str() && c.labels == labels.as_str()) {
            return i as u32;
        }
        self.counters.push(TestCounter {
            name: name.to_string(),
            labels: labels.to_string(),
            help: help.to_string(),
            value: 0,
        });
        (self.counters.len() - 1) as u32
    }
    fn counter_add(&mut self, counter: u32, delta: u64) {
        if let Some(c) = self.counters.get_mut(counter as usize) {
            c.value += delta;
        }
    }
    fn connect(&mut self, addr: RStr<'_>, _timeout_ms: u64) -> RResult<ConnId, ConnectErrorCode> {
        self.connects.push(addr.to_string());
        RResult::ROk(ConnId::new(self.connects.len() as u32 - 1, 1000))
    }
    fn is_outbound(&self, conn: ConnId) -> bool {
        conn.generation() == 1000 && conn.index() < self.connects.len()
    }
    fn server_name(&self, conn: ConnId) -> ROption<RStr<'_>> {
        self.server_names.get(&conn).map(|s| RStr::from_str(s)).into()
    }
    fn broadcast(&mut self, msg: RSlice<'_, u8>) -> i64 {
        if msg.len() > MAX_WORKER_MESSAGE {
            return WorkerMsgStatus::TOO_LARGE.0 as i64;
        }
        self.broadcasts.push(msg.to_vec());
        i64::from(self.worker_count.saturating_sub(1))
    }
    fn send_to_worker(&mut self, slot: u32, msg: RSlice<'_, u8>) -> i64 {
        if msg.len() > MAX_WORKER_MESSAGE {
            return WorkerMsgStatus::TOO_LARGE.0 as i64;
        }
        self.to_workers.push((slot, msg.to_vec()));
        i64::from(slot < self.worker_count)
    }
    fn peer_cred(&self, conn: ConnId) -> ROption<RawPeerCred> {
        self.peer_creds.get(&conn).copied().into()
    }
    fn submit_task(&mut self, job: RawJobBox) -> i64 {
        let id = self.next_task;
        self.next_task += 1;
        self.tasks.push((id, job));
        id as i64
    }
    fn access_log(&mut self, line: RSlice<'_, u8>) -> bool {
        match &mut self.access_log {
            Some(log) => {
                log.extend_from_slice(&line);
                true
            }
            None => false,
        }
    }
}

impl TestHost {
    /// Writes `msg` to every connection subscribed to `topic` (as the worker does); how many.
    fn fan_out(&mut self, topic: &[u8], msg: &[u8]) -> usize {
        let Some(subs) = self.subscriptions.get(topic) else { return 0 };
        let mut n = 0;
        for conn in subs.iter().filter(|&&c| c != WORKER_CONN && !self.closed.contains(&c)) {
            self.sent.entry(*conn).or_default().extend_from_slice(msg);
            n += 1;
        }
        n
    }

    /// Whether the worker itself is subscribed to `topic` (`Host::subscribe_worker`).
    pub fn worker_subscribed(&self, topic: &[u8]) -> bool {
        self.subscriptions.get(topic).is_some_and(|s| s.contains(&WORKER_CONN))
    }

    /// The topics `conn` is subscribed to.
    pub fn topics_of(&self, conn: ConnId) -> Vec<Vec<u8>> {
        self.subscriptions.iter().filter(|(_, s)| s.contains(&conn)).map(|(t, _)| t.clone()).collect()
    }
}

fn valid_topic(topic: &[u8]) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC_LEN
}

/// A plugin and its [`TestHost`], driven as a worker drives them. See the [module docs](self).
pub struct TestPlugin<P> {
    /// The plugin under test.
    pub plugin: P,
    /// Its host.
    pub host: TestHost,
    /// Bytes received and not yet delivered, by connection.
    buffers: HashMap<ConnId, Vec<u8>>,
    /// The length of a message still arriving, by connection.
    expect: HashMap<ConnId, usize>,
    next_conn: u32,
}

impl<P: Protocol> TestPlugin<P> {
    /// Builds the plugin from `config` (`Protocol::new`) on a default [`TestHost`], and starts
    /// its worker (`on_worker_start`).
    pub fn new(config: &str) -> Result<Self, String> {
        Self::on(TestHost::default(), config)
    }

    /// Builds the plugin from `config` on `host` (set its fields first), and starts its worker.
    pub fn on(mut host: TestHost, config: &str) -> Result<Self, String> {
        let info = host.worker_info();
        let logs = Arc::clone(&host.logs);
        let mut plugin = crate::log::recording(&logs, || P::new(config, &info))?;
        host.with(|h| plugin.on_worker_start(h))?;
        Ok(TestPlugin { plugin, host, buffers: HashMap::new(), expect: HashMap::new(), next_conn: 0 })
    }

    /// Runs `f` with the plugin and a [`Host`] on the test host (to call a `Protocol` method
    /// directly, or look into the plugin).
    pub fn call<R>(&mut self, f: impl FnOnce(&mut P, &mut Host<'_>) -> R) -> R {
        let plugin = &mut self.plugin;
        self.host.with(|h| f(plugin, h))
    }

    /// A new connection (`on_connect`); its id.
    pub fn connect(&mut self) -> ConnId {
        let conn = ConnId::new(self.next_conn, 1);
        self.next_conn += 1;
        self.call(|p, h| p.on_connect(h, conn));
        conn
    }

    /// A new connection from `peer`.
    pub fn connect_from(&mut self, peer: SocketAddr) -> ConnId {
        let conn = ConnId::new(self.next_conn, 1);
        self.host.peers.insert(conn, peer);
        self.next_conn += 1;
        self.call(|p, h| p.on_connect(h, conn));
        conn
    }

    /// `bytes` arrive on `conn`: framed with `input` and delivered with `on_message`, message by
    /// message, as the worker does. A message over the host's max package size is refused with
    /// `on_error(PackageTooLarge)`; an `Invalid` frame (or `Complete(0)`), a refused message or a
    /// close by the plugin stops delivery on the connection (the worker closes it once flushed),
    /// and so does a pause until the next `feed` after the plugin resumes it.
    pub fn feed(&mut self, conn: ConnId, bytes: &[u8]) {
        let mut buf = self.buffers.remove(&conn).unwrap_or_default();
        buf.extend_from_slice(bytes);
        let max = self.host.max_package_size;
        while !buf.is_empty() && !self.host.closed.contains(&conn) && !self.host.paused.contains(&conn) {
            // A length `input` gave already is not asked again while the rest arrives.
            let frame = match self.expect.get(&conn) {
                Some(&n) => Frame::Complete(n),
                None => self.call(|p, h| p.input(h, conn, &buf)),
            };
            match frame {
                Frame::NeedMore if buf.len() >= max => return self.refuse(conn),
                Frame::NeedMore => break,
                Frame::Complete(n) if n > max => return self.refuse(conn),
                Frame::Complete(0) | Frame::Invalid => {
                    self.host.closed.insert(conn);
                    return;
                }
                Frame::Complete(n) if n > buf.len() => {
                    self.expect.insert(conn, n);
                    break;
                }
                Frame::Complete(n) => {
                    self.expect.remove(&conn);
                    let msg: Vec<u8> = buf.drain(..n).collect();
                    self.call(|p, h| p.on_message(h, conn, &msg));
                }
            }
        }
        self.buffers.insert(conn, buf);
    }

    /// A message over the max package size: the plugin hears it, the worker closes the
    /// connection once what the plugin queued is flushed.
    fn refuse(&mut self, conn: ConnId) {
        self.call(|p, h| p.on_error(h, conn, ConnError::PackageTooLarge));
        self.host.closed.insert(conn);
    }

    /// Bytes received on `conn` and not delivered yet (a partial message).
    pub fn buffered(&self, conn: ConnId) -> &[u8] {
        self.buffers.get(&conn).map_or(&[], Vec::as_slice)
    }

    /// The connection is gone (`on_close`); its buffered bytes are dropped.
    pub fn close(&mut self, conn: ConnId) {
        self.buffers.remove(&conn);
        self.expect.remove(&conn);
        self.call(|p, h| p.on_close(h, conn));
        // A connection's subscriptions end with it.
        self.host.subscriptions.retain(|_, subs| {
            subs.remove(&conn);
            !subs.is_empty()
        });
    }

    /// A message published on `topic` by another worker or host: written to the topic's
    /// subscribed connections here, and heard by the plugin (`on_publish`) when the worker
    /// subscribed itself. How many connections it was written to.
    pub fn publish(&mut self, topic: &[u8], msg: &[u8]) -> usize {
        let n = self.host.fan_out(topic, msg);
        if self.host.worker_subscribed(topic) {
            self.call(|p, h| p.on_publish(h, topic, msg));
        }
        n
    }

    /// A message on `topic` that `conn` missed across a hand-over, as the host replays it
    /// (`on_publish_missed`).
    pub fn publish_missed(&mut self, conn: ConnId, topic: &[u8], msg: &[u8]) {
        self.call(|p, h| p.on_publish_missed(h, conn, topic, msg));
    }

    /// The peer of `conn` finished sending (`on_input_end`): with [`InputEnd::Close`] the worker
    /// closes the connection once what is queued is written (marked closed here); the answer
    /// either way. Bytes of a partial message still buffered are dropped, as the worker does.
    pub fn input_end(&mut self, conn: ConnId) -> InputEnd {
        self.buffers.remove(&conn);
        self.expect.remove(&conn);
        let end = self.call(|p, h| p.on_input_end(h, conn));
        if end == InputEnd::Close {
            self.host.closed.insert(conn);
        }
        end
    }

    /// Hands this worker's `conns` over to `to` (a replacement: the same plugin or another
    /// release of it), as the host does on a reload: `to` must accept the state version
    /// (`handover_accepts`), then each connection's state is exported (`export_conn`; one that
    /// declines stays here), the worker-wide state is exported and adopted
    /// (`export_worker`, `adopt_worker`), and each connection is adopted (`adopt_conn`) under
    /// a new id of `to`, with its subscriptions and the bytes this side buffered and did not
    /// deliver (they are fed to `to` at once). Outbound connections the plugin carries
    /// ([`Host::handover_carry`]) get new outbound ids of `to` (its `connects`) before anything
    /// is adopted, as the host's do. Answers the moved connections as (old id, new id), the
    /// carried ones after the others (those carried by a connection `to` refused went back with
    /// it and are not among them), or why nothing moved.
    pub fn hand_over_to<Q: Protocol>(
        &mut self,
        to: &mut TestPlugin<Q>,
        conns: &[ConnId],
    ) -> Result<Vec<(ConnId, ConnId)>, String> {
        self.hand_over_with_steps(to, conns, |_| {})
    }

    /// [`TestPlugin::hand_over_to`], with the pre-copy the host runs first when `to` adopts
    /// steps (`Q::HANDOVER_STEPS`): this plugin's `export_worker_step` until it is ready, each
    /// step staged by `to` (`adopt_worker_step`), `between(self)` after each step but the last
    /// (serve this plugin meanwhile: the writes the last part must carry). A failure after steps
    /// tells both sides `drop_worker_steps`, as the host does.
    pub fn hand_over_with_steps<Q: Protocol>(
        &mut self,
        to: &mut TestPlugin<Q>,
        conns: &[ConnId],
        mut between: impl FnMut(&mut Self),
    ) -> Result<Vec<(ConnId, ConnId)>, String> {
        let name = std::any::type_name::<P>().to_string();
        if P::HANDOVER_VERSION == 0 {
            return Err("the old plugin does not take part".into());
        }
        if !to.call(|q, h| q.handover_accepts(h, &name, P::HANDOVER_VERSION)) {
            return Err(format!("the new plugin refuses state version {}", P::HANDOVER_VERSION));
        }
        let mut steps = 0u64;
        let mut copying = Q::HANDOVER_STEPS;
        while copying {
            let mut step = Vec::new();
            let answer = self
                .call(|p, h| p.export_worker_step(h, &mut crate::StateWriter::new(crate::abi::state_sink(&mut step))));
            let refused = !step.is_empty() && !to.call(|q, h| q.adopt_worker_step(h, P::HANDOVER_VERSION, &step));
            steps += u64::from(!step.is_empty());
            if answer == crate::ExportStep::Failed || refused {
                self.call(|p, h| p.drop_worker_steps(h));
                to.call(|q, h| q.drop_worker_steps(h));
                return Err(format!("the copy failed after {steps} steps"));
            }
            copying = answer == crate::ExportStep::More;
            if copying {
                between(self);
            }
        }
        let mut states = Vec::new();
        for &conn in conns {
            let mut bytes = Vec::new();
            self.host.carrying = Some(Vec::new());
            let moved = self
                .call(|p, h| p.export_conn(h, conn, &mut crate::StateWriter::new(crate::abi::state_sink(&mut bytes))));
            let carried = self.host.carrying.take().unwrap_or_default();
            if moved {
                states.push((conn, bytes, carried));
            }
        }
        let mut worker = Vec::new();
        self.host.carrying = Some(Vec::new());
        let exported =
            self.call(|p, h| p.export_worker(h, &mut crate::StateWriter::new(crate::abi::state_sink(&mut worker))));
        let worker_carried = self.host.carrying.take().unwrap_or_default();
        if !exported {
            if steps > 0 {
                to.call(|q, h| q.drop_worker_steps(h));
            }
            return Err("the old plugin declined to export its worker state".into());
        }
        // Each carried connection gets its new id before anything is adopted; it moves with what
        // carries it (the worker state, or its owner: a refused owner's go back with it).
        let mut carry = |carried: &[ConnId]| -> Vec<(ConnId, ConnId)> {
            let mut pairs = Vec::new();
            for &old in carried {
                let addr = self.host.connects.get(old.index()).cloned().unwrap_or_default();
                to.host.connects.push(addr);
                let new = ConnId::new(to.host.connects.len() as u32 - 1, 1000);
                to.host.carried.insert(old.0, new);
                pairs.push((old, new));
            }
            pairs
        };
        let mut carried_pairs = carry(&worker_carried);
        let states: Vec<_> = states.into_iter().map(|(conn, state, carried)| (conn, state, carry(&carried))).collect();
        if !to.call(|q, h| q.adopt_worker(h, P::HANDOVER_VERSION, &worker)) {
            if steps > 0 {
                to.call(|q, h| q.drop_worker_steps(h));
            }
            return Err("the new plugin refused the worker state".into());
        }
        let mut moved = Vec::new();
        for (old, state, carried) in states {
            let new = ConnId::new(to.next_conn, 1);
            to.next_conn += 1;
            if let Some(peer) = self.host.peers.get(&old) {
                to.host.peers.insert(new, *peer);
            }
            // Subscriptions move with the connection, before the plugin adopts it (as the host's).
            let topics = self.host.topics_of(old);
            for topic in &topics {
                to.host.subscriptions.entry(topic.clone()).or_default().insert(new);
            }
            if !to.call(|q, h| q.adopt_conn(h, new, P::HANDOVER_VERSION, &state)) {
                to.host.subscriptions.retain(|_, subs| {
                    subs.remove(&new);
                    !subs.is_empty()
                });
                continue;
            }
            self.host.subscriptions.retain(|_, subs| {
                subs.remove(&old);
                !subs.is_empty()
            });
            carried_pairs.extend(carried);
            let buffered = self.buffers.remove(&old).unwrap_or_default();
            if let Some(n) = self.expect.remove(&old) {
                to.expect.insert(new, n);
            }
            to.feed(new, &buffered);
            moved.push((old, new));
        }
        to.host.carried.clear();
        moved.extend(carried_pairs);
        Ok(moved)
    }

    /// An error on `conn` (`on_error`).
    pub fn error(&mut self, conn: ConnId, err: ConnError) {
        self.call(|p, h| p.on_error(h, conn, err));
    }

    /// The worker drains: the plugin hears `on_drain` for every connection given.
    pub fn drain(&mut self, conns: &[ConnId]) {
        self.host.draining = true;
        for &conn in conns {
            self.call(|p, h| p.on_drain(h, conn));
        }
    }

    /// Fires `timer` (`on_timer` with its data); a one-shot timer is gone afterwards. False
    /// when there is no such timer.
    pub fn fire(&mut self, timer: TimerId) -> bool {
        let Some(t) = self.host.timers.get(&timer).copied() else { return false };
        if t.interval_ms == 0 {
            self.host.timers.remove(&timer);
        }
        self.call(|p, h| p.on_timer(h, timer, t.data));
        true
    }

    /// Moves the clock by `ms` and fires every timer due by then, earliest first (an interval
    /// fires as often as it is due).
    pub fn advance(&mut self, ms: u64) {
        let end = self.host.now_ms + ms;
        let mut due: HashMap<TimerId, u64> =
            self.host.timers.iter().map(|(&id, t)| (id, self.host.now_ms + t.delay_ms)).collect();
        loop {
            let next =
                due.iter().filter(|(_, &at)| at <= end).min_by_key(|(&id, &at)| (at, id)).map(|(&id, &at)| (id, at));
            let Some((id, at)) = next else { break };
            self.host.now_ms = at;
            let interval = self.host.timers.get(&id).map(|t| t.interval_ms);
            match interval {
                Some(i) if i > 0 => {
                    due.insert(id, at + i);
                }
                _ => {
                    due.remove(&id);
                }
            }
            self.fire(id);
            // Timers the plugin started meanwhile count from now.
            for (&new, t) in &self.host.timers {
                due.entry(new).or_insert(at + t.delay_ms);
            }
            due.retain(|id, _| self.host.timers.contains_key(id));
        }
        self.host.now_ms = end;
    }

    /// Runs the tasks submitted so far (`Host::spawn_task`) on this thread and delivers their
    /// results (`on_task_done`), in the order they were submitted. How many ran.
    pub fn run_tasks(&mut self) -> usize {
        let tasks = std::mem::take(&mut self.host.tasks);
        let n = tasks.len();
        for (id, mut job) in tasks {
            let result = job.run().into_result().map(|v| v.into_vec()).map_err(|e| e.into_string());
            self.call(|p, h| p.on_task_done(h, TaskId(id), result));
        }
        n
    }

    /// A message from the worker of `from_slot` (`on_worker_message`).
    pub fn worker_message(&mut self, from_slot: u32, msg: &[u8]) {
        self.call(|p, h| p.on_worker_message(h, from_slot, msg));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Lines: `echo X` echoes, `tick` starts a 10 ms interval that writes `tick N`, `count`
    /// counts, `task X` upper-cases X off the loop, `bye` closes; logs every line.
    struct Lines {
        ticks: Vec<(ConnId, u64)>,
        tasks: HashMap<TaskId, ConnId>,
    }

    impl Protocol for Lines {
        fn new(_: &str, _: &WorkerInfo) -> Result<Self, String> {
            Ok(Lines { ticks: Vec::new(), tasks: HashMap::new() })
        }
        fn input(&mut self, _: &mut Host<'_>, _: ConnId, buf: &[u8]) -> Frame {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => Frame::Complete(i + 1),
                None => Frame::NeedMore,
            }
        }
        fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
            let line = std::str::from_utf8(msg).unwrap().trim_end();
            crate::tracing::info!(conn = conn.index(), "line {line}");
            if let Some(x) = line.strip_prefix("echo ") {
                host.send(conn, format!("{x}\n").as_bytes());
            } else if line == "tick" {
                host.add_interval(Duration::from_millis(10), conn.0);
                self.ticks.push((conn, 0));
            } else if line == "count" {
                let counter = host.counter("lines", "", "lines seen").unwrap();
                host.add(counter, 1);
            } else if let Some(x) = line.strip_prefix("task ") {
                let x = x.to_string();
                let id = host.spawn_task(move || x.to_uppercase().into_bytes()).unwrap();
                self.tasks.insert(id, conn);
            } else if line == "bye" {
                host.close_with(conn, b"see you\n");
            }
        }
        fn on_timer(&mut self, host: &mut Host<'_>, _: TimerId, data: u64) {
            for (conn, n) in self.ticks.iter_mut().filter(|(c, _)| c.0 == data) {
                *n += 1;
                host.send(*conn, format!("tick {n} at {}\n", host.now_ms()).as_bytes());
            }
        }
        fn on_task_done(&mut self, host: &mut Host<'_>, task: TaskId, result: Result<Vec<u8>, String>) {
            let conn = self.tasks.remove(&task).unwrap();
            host.send(conn, &result.unwrap());
        }
    }

    #[test]
    fn feeds_frames_and_records_what_the_plugin_did() {
        let mut t = TestPlugin::<Lines>::new("").unwrap();
        let a = t.connect();
        let b = t.connect();
        t.feed(a, b"echo one\necho tw");
        assert_eq!(t.host.take_sent(a), b"one\n");
        assert_eq!(t.buffered(a), b"echo tw");
        t.feed(a, b"o\ncount\ncount\n");
        assert_eq!(t.host.take_sent(a), b"two\n");
        assert_eq!(t.host.counter_value("lines"), Some(2));
        t.feed(b, b"bye\necho lost\n");
        assert!(t.host.is_closed(b));
        assert_eq!(t.host.take_sent(b), b"see you\n", "nothing is delivered after the close");
        assert!(t.host.log_messages().contains(&"line echo one conn=0".to_string()), "{:?}", t.host.log_messages());
    }

    #[test]
    fn an_oversized_message_is_refused_like_the_worker_does() {
        let host = TestHost { max_package_size: 8, ..TestHost::default() };
        let mut t = TestPlugin::<Lines>::on(host, "").unwrap();
        let c = t.connect();
        t.feed(c, b"echo 123456789");
        assert!(t.host.is_closed(c));
        assert_eq!(t.host.take_sent(c), b"", "Protocol::on_error's default closes without a word");
    }

    #[test]
    fn timers_fire_as_the_clock_moves_and_tasks_run_when_asked() {
        let mut t = TestPlugin::<Lines>::new("").unwrap();
        let c = t.connect();
        t.feed(c, b"tick\n");
        assert_eq!(t.host.timers.len(), 1);
        t.advance(25);
        assert_eq!(t.host.take_sent(c), b"tick 1 at 10\ntick 2 at 20\n");
        assert_eq!(t.host.now_ms, 25);
        t.feed(c, b"task loud\n");
        assert!(t.host.take_sent(c).is_empty(), "a task's result waits for run_tasks");
        assert_eq!(t.run_tasks(), 1);
        assert_eq!(t.host.take_sent(c), b"LOUD");
    }
}
