//! The worker's connection table ([`Core`]): every connection by id, what the plugin's calls
//! queued for the loop (dirty connections, deferred events), the worker's phase, and the
//! services a plugin reaches through its host handle (timers, counters, mailbox, tasks).
//!
//! By concern: `conn.rs` one connection and its output; `host.rs` the host handle plugins call
//! into (`RawHost`); `connect.rs` outbound connections; `export.rs` a connection taken out of
//! the table whole and put back (the base of a hand-over); `stats.rs` the counters.

mod conn;
mod connect;
mod export;
mod host;
mod stats;
mod topics;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mio::{Interest, Registry, Token};
use plugin_api::abi::ConnError;
use plugin_api::ConnId;
use rustls::ServerConfig;

pub use self::conn::{Conn, Flushed, Origin, ReadSide};
#[cfg(test)]
pub use self::export::ExportError;
#[cfg(test)]
pub use self::export::{BadSession, FileRange};
pub use self::export::{ExportedConn, Snapshot, Stay};
pub use self::host::Ctx;
pub use self::stats::Stats;
pub use self::topics::CLUSTER;
use super::access_log::AccessLog;
use super::mailbox::Mailbox;
use super::outbound::{Pending, Resolver};
use super::phase::{ConnPhase, WorkerPhase};
use super::tasks::Tasks;
use super::timers::Timers;
use super::topics::TopicTable;
use super::transport::{Stream, Transport};
use crate::config::Limits;
use crate::ctl::watch;
use crate::status::{ConnReport, PluginCounter, WorkerReport};
use crate::sys::WatchPage;

/// The most counters one plugin may register (they cost memory in every report).
const MAX_PLUGIN_COUNTERS: usize = 256;

/// Tokens below this are the listener, the control socket and the signal descriptor.
pub const CONN_TOKEN_BASE: usize = 16;

/// Work for the event loop that arose inside a plugin call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferred {
    BufferFull,
    BufferDrain,
    Error(ConnError),
    /// Reading was resumed: dispatch what is buffered, then read again.
    Resume,
}

pub struct Core {
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    pub timers: Timers,
    pub now_ms: u64,
    /// Where the worker is in its life (`Host::is_draining` reads it).
    pub phase: WorkerPhase,
    pub limits: Limits,
    pub service: String,
    pub slot: u32,
    /// Workers of the service (`RawHost::worker_count`); 0 until the worker sets it.
    pub worker_count: u32,
    /// The plugin's own counters (`RawHost::counter`), by id.
    pub plugin_counters: Vec<PluginCounter>,
    /// Connections with output to flush or a close to carry out.
    pub dirty: Vec<usize>,
    /// The other half of `dirty`, swapped in while it is worked through (no allocation a turn).
    pub dirty_spare: Vec<usize>,
    /// Connections that wrote their share of file bytes this turn: dirty again next turn.
    pub flush_next_turn: Vec<usize>,
    pub deferred: VecDeque<(ConnId, Deferred)>,
    pub stats: Stats,
    /// Outbound connections whose id is given but who have no socket yet (a name being
    /// resolved, or a failure to report).
    pub pending: Vec<Pending>,
    /// Resolves host names off the loop; started at the first name.
    pub resolver: Option<Resolver>,
    /// Outbound connections whose connect is under way (some may have finished since).
    pub connecting: Vec<ConnId>,
    /// The addresses a name resolved to that a connect under way has not tried yet.
    pub fallbacks: Vec<(ConnId, Vec<SocketAddr>)>,
    /// The service's TLS configuration (None: plain TCP).
    pub tls: Option<Arc<ServerConfig>>,
    /// Its ALPN protocols are the service configuration's: the plugin cannot choose others.
    pub tls_alpn_fixed: bool,
    /// Messages to and from the service's other workers.
    pub mailbox: Mailbox,
    /// A UDP service's socket (this slot's): datagrams are read from it and replies sent on it.
    pub udp: Option<mio::net::UdpSocket>,
    /// UDP sessions by peer.
    pub sessions: HashMap<SocketAddr, ConnId>,
    /// The task pool and notifiers, made at the first task or notifier.
    pub tasks: Option<Tasks>,
    /// The service's access log (`RawHost::access_log`).
    pub access_log: AccessLog,
    /// Which plugin callback the loop is in, for the master's watchdog.
    pub watch: Watch,
    /// Topics: subscriptions, the worker's own ones heard, the cluster's broker.
    pub topics: TopicTable,
    /// Outbound connections of a hand-over (`export::Carry`): the ones the plugin names during
    /// an export, and the old ids of those that arrived during an adoption.
    pub carry: export::Carry,
    registry: Registry,
    /// With `--io uring`: the worker's ring, where imported connections go.
    pub ring: Option<super::uring::RingHandle>,
}

/// The worker's side of its watch page (`ctl::watch`): which plugin callback the loop is in, for
/// the master to read when the worker stops answering. One relaxed store per plugin call in, one
/// out; nothing without a page (a worker started by hand, or by an older master).
#[derive(Debug, Default)]
pub struct Watch {
    page: Option<WatchPage>,
    /// The system's monotonic clock (ms) at the worker's epoch: `now_ms` plus this is the
    /// master's clock.
    base_ms: u64,
}

impl Watch {
    pub fn new(page: Option<WatchPage>, base_ms: u64) -> Self {
        Watch { page, base_ms }
    }

    /// The loop enters plugin callback `id` (`ctl::watch::callback`) in the turn begun at `now_ms`.
    #[inline]
    pub fn enter(&self, id: u8, now_ms: u64) {
        if let Some(page) = &self.page {
            page.store(watch::encode(id, self.base_ms + now_ms));
        }
    }

    /// The loop is back in the host's code.
    #[inline]
    pub fn leave(&self) {
        if let Some(page) = &self.page {
            page.store(watch::IN_LOOP);
        }
    }
}

impl Core {
    /// The plugin's ALPN protocols (`RawHostExt::set_alpn`): TLS handshakes from now on offer
    /// them, unless the service configured its own (`tls_alpn`). Each is 1 to 255 bytes
    /// (RFC 7301); an invalid list changes nothing. False when not applied.
    pub fn set_alpn<'p>(&mut self, protocols: impl Iterator<Item = &'p [u8]>) -> bool {
        let Some(tls) = &self.tls else { return false };
        if self.tls_alpn_fixed {
            return false;
        }
        let list: Vec<Vec<u8>> = protocols.map(<[u8]>::to_vec).collect();
        if list.iter().any(|p| p.is_empty() || p.len() > 255) {
            return false;
        }
        tracing::debug!(alpn = ?list.iter().map(|p| String::from_utf8_lossy(p)).collect::<Vec<_>>(), "ALPN protocols chosen by the plugin");
        let mut config = ServerConfig::clone(tls);
        config.alpn_protocols = list;
        self.tls = Some(Arc::new(config));
        true
    }

    pub fn new(registry: Registry, service: String, slot: u32, limits: Limits) -> Self {
        Core {
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            live: 0,
            timers: Timers::default(),
            now_ms: 0,
            phase: WorkerPhase::Serving,
            limits,
            service,
            slot,
            worker_count: 0,
            plugin_counters: Vec::new(),
            dirty: Vec::new(),
            dirty_spare: Vec::new(),
            flush_next_turn: Vec::new(),
            deferred: VecDeque::new(),
            stats: Stats::default(),
            pending: Vec::new(),
            resolver: None,
            connecting: Vec::new(),
            fallbacks: Vec::new(),
            tls: None,
            tls_alpn_fixed: false,
            access_log: AccessLog::default(),
            mailbox: Mailbox::new(limits.topics.max_message),
            udp: None,
            sessions: HashMap::new(),
            tasks: None,
            watch: Watch::default(),
            topics: TopicTable::new(limits.topics, super::topic_seam::publisher_id()),
            carry: export::Carry::default(),
            registry,
            ring: None,
        }
    }

    pub fn len(&self) -> usize {
        self.live + self.pending.len()
    }

    /// Connections that still matter to a drain: all but those lingering after their close.
    pub fn open_count(&self) -> usize {
        let pending = self.pending.len();
        pending + self.conns.iter().flatten().filter(|c| !matches!(c.phase, ConnPhase::Lingering { .. })).count()
    }

    pub fn stats_closed(&self) -> u64 {
        self.stats.closed
    }

    /// Registers an accepted stream (TCP or Unix) and returns its id.
    pub fn insert(&mut self, stream: Stream) -> io::Result<ConnId> {
        let stream = match &self.tls {
            Some(config) => Transport::tls(stream, config)?,
            None => Transport::plain(stream),
        };
        let id = self.reserve_id();
        match self.place(id, stream, None) {
            Ok(()) => Ok(id),
            Err(e) => {
                self.release_id(id);
                Err(e)
            }
        }
    }

    /// A fresh id whose index holds no connection yet ([`Core::place`] or [`Core::release_id`]).
    pub fn reserve_id(&mut self) -> ConnId {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None => {
                self.conns.push(None);
                self.generations.push(0);
                self.conns.len() - 1
            }
        };
        self.generations[index] = self.generations[index].wrapping_add(1);
        ConnId::new(index as u32, self.generations[index])
    }

    /// Gives back a reserved id that never got a connection.
    pub fn release_id(&mut self, id: ConnId) {
        if self.conns.get(id.index()).is_some_and(Option::is_none) {
            self.free.push(id.index() as u32);
        }
    }

    /// Registers `stream` under the reserved `id`: an accepted connection (a TLS one starts
    /// handshaking), or (with its connect deadline) an outbound one whose connect is under way
    /// (it waits for writability).
    pub fn place(&mut self, id: ConnId, mut stream: Transport, connecting_until_ms: Option<u64>) -> io::Result<()> {
        let index = id.index();
        let outbound = connecting_until_ms.is_some();
        let interest = if outbound { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        self.registry.register(&mut stream, Token(index + CONN_TOKEN_BASE), interest)?;
        let _ = stream.set_nodelay(true);
        let datagram = stream.datagram_peer().is_some();
        let phase = match connecting_until_ms {
            Some(until_ms) => ConnPhase::Connecting { until_ms },
            None if stream.is_handshaking() => ConnPhase::Handshaking,
            None => ConnPhase::Open,
        };
        let conn = Conn {
            id,
            peer: if outbound { None } else { stream.peer_addr().ok() },
            local: match datagram {
                true => self.udp.as_ref().and_then(|u| u.local_addr().ok()),
                false => stream.local_addr().ok(),
            },
            cred: stream.peer_cred(),
            stream,
            phase,
            origin: if outbound { Origin::Outbound } else { Origin::Accepted },
            input: Vec::new(),
            expect: None,
            output: Vec::new(),
            output_pos: 0,
            files: VecDeque::new(),
            read: ReadSide { ready: !outbound && !datagram, ..ReadSide::default() },
            hold: Default::default(),
            sched: conn::Sched { write_interest: outbound, dirty: false },
            message_started_ms: None,
            last_active_ms: self.now_ms,
            created_ms: self.now_ms,
            bytes_in: 0,
            bytes_out: 0,
        };
        self.conns[index] = Some(conn);
        self.live += 1;
        Ok(())
    }

    /// The task pool, made now if it was not (None: the waker could not be made).
    fn tasks(&mut self) -> Option<&mut Tasks> {
        if self.tasks.is_none() {
            match Tasks::new(&self.registry, self.limits.task_threads, self.limits.task_queue) {
                Ok(tasks) => self.tasks = Some(tasks),
                Err(e) => tracing::warn!("could not make the task pool: {e}"),
            }
        }
        self.tasks.as_mut()
    }

    /// Jobs whose result the plugin has not heard yet.
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks.as_ref().map_or(0, Tasks::in_flight)
    }

    /// True for an outbound connection, established or not.
    pub fn is_outbound(&self, id: ConnId) -> bool {
        self.get(id).is_some_and(|c| c.origin == Origin::Outbound) || self.pending.iter().any(|p| p.id == id)
    }

    /// Deregisters and drops the connection (the socket closes). The caller tells the plugin.
    pub fn remove(&mut self, index: usize) -> Option<Conn> {
        let conn = self.take(index)?;
        self.stats.closed += 1;
        self.stats.closed_bytes_in += conn.bytes_in;
        self.stats.closed_bytes_out += conn.bytes_out;
        Some(conn)
    }

    /// Takes the connection out of the table: deregistered, its index free, its socket open.
    fn take(&mut self, index: usize) -> Option<Conn> {
        let mut conn = self.conns.get_mut(index)?.take()?;
        let _ = self.registry.deregister(&mut conn.stream);
        self.topics_left(conn.id);
        if let Some(peer) = conn.stream.datagram_peer() {
            self.sessions.remove(&peer);
        }
        self.free.push(index as u32);
        self.live -= 1;
        Some(conn)
    }

    pub fn by_index(&mut self, index: usize) -> Option<&mut Conn> {
        self.conns.get_mut(index)?.as_mut()
    }

    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.index())?.as_ref().filter(|c| c.id == id)
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns.get_mut(id.index())?.as_mut().filter(|c| c.id == id)
    }

    pub fn ids(&self) -> Vec<ConnId> {
        self.conns.iter().flatten().map(|c| c.id).collect()
    }

    pub fn report(&mut self) -> WorkerReport {
        self.stats.rate.roll(self.now_ms, self.stats.messages);
        let tasks = self.tasks.as_mut().map(|t| t.refresh_stats()).unwrap_or_default();
        let live = self.conns.iter().flatten();
        WorkerReport {
            messages_per_s: self.stats.rate.per_second(),
            connections: self.open_count() as u64,
            accepted: self.stats.accepted,
            messages: self.stats.messages,
            bytes_in: self.stats.closed_bytes_in + live.clone().map(|c| c.bytes_in).sum::<u64>(),
            bytes_out: self.stats.closed_bytes_out + live.map(|c| c.bytes_out).sum::<u64>(),
            send_failures: self.stats.send_failures,
            plugin_panics: self.stats.plugin_panics,
            last_panic_s: self.stats.last_panic_ms.map(|at| self.now_ms.saturating_sub(at) / 1000),
            timers: self.timers.len() as u64,
            draining: self.phase.is_draining(),
            plugin_counters: self.plugin_counters.clone(),
            worker_msgs_sent: self.mailbox.sent,
            worker_msgs_received: self.mailbox.received,
            worker_msgs_dropped: self.mailbox.dropped,
            datagrams_dropped: self.stats.datagrams_dropped,
            tasks_submitted: tasks.submitted,
            tasks_failed: tasks.failed,
            tasks_refused: tasks.refused,
            tasks_in_flight: self.tasks_in_flight() as u64,
            notify_dropped: tasks.notify_dropped,
            topics: {
                let mut t = self.topics.report();
                t.oversized += self.mailbox.oversized;
                t
            },
            tls_closed_key_update: crate::tls::moved::COUNTERS.closed_key_update.load(Ordering::Relaxed),
            tls_closed_aead_limit: crate::tls::moved::COUNTERS.closed_exhausted.load(Ordering::Relaxed),
        }
    }

    pub fn connections(&self) -> Vec<ConnReport> {
        let addr = |a: Option<SocketAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
        self.conns
            .iter()
            .flatten()
            .map(|c| ConnReport {
                id: c.id.0,
                slot: self.slot,
                index: c.id.index() as u64,
                age_s: self.now_ms.saturating_sub(c.created_ms) / 1000,
                idle_s: self.now_ms.saturating_sub(c.last_active_ms) / 1000,
                local: addr(c.local),
                peer: addr(c.peer),
                bytes_in: c.bytes_in,
                bytes_out: c.bytes_out,
                pending_send: c.pending_output() as u64,
                state: c.phase.name(c.hold.any()).to_string(),
            })
            .collect()
    }

    /// Marks the connections that yielded this turn dirty again: the loop's next turn (which
    /// does not wait while connections are dirty) goes on with them after the new events.
    pub fn requeue_next_turn(&mut self) {
        let mut next = std::mem::take(&mut self.flush_next_turn);
        for index in next.drain(..) {
            self.mark_dirty(index);
        }
        self.flush_next_turn = next;
    }

    pub fn mark_dirty(&mut self, index: usize) {
        if let Some(Some(c)) = self.conns.get_mut(index) {
            if !c.sched.dirty {
                c.sched.dirty = true;
                self.dirty.push(index);
            }
        }
    }

    /// Asks for (or drops) write readiness on a connection, only when it changes.
    pub fn set_write_interest(&mut self, index: usize, on: bool) -> io::Result<()> {
        let Some(Some(c)) = self.conns.get_mut(index) else {
            return Ok(());
        };
        if c.sched.write_interest == on {
            return Ok(());
        }
        c.sched.write_interest = on;
        let interest = if on { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        self.registry.reregister(&mut c.stream, Token(index + CONN_TOKEN_BASE), interest)
    }

    /// Ends every UDP session once the plugin had its say (a draining worker reads its socket no
    /// more: the sessions would only wait for their idle timeout).
    pub fn close_sessions(&mut self) {
        let ids: Vec<ConnId> = self.sessions.values().copied().collect();
        for id in ids {
            self.close_after_flush(id);
        }
    }

    /// Marks the connection for closing once its output is flushed.
    pub fn close_after_flush(&mut self, id: ConnId) {
        if let Some(c) = self.get_mut(id) {
            c.phase = c.phase.close();
            let index = id.index();
            self.mark_dirty(index);
        }
    }
}
