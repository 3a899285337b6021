//! The worker's connection table and the host handle plugins call into.
//!
//! Plugin calls never close or free a connection directly: they set flags and queue work, and
//! the event loop acts on them between plugin calls, so no callback sees a connection vanish
//! under it and no callback re-enters the plugin.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use abi_stable::std_types::{ROption, RResult, RSlice, RStr};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use plugin_api::abi::{
    ConnError, ConnectErrorCode, RawHost, RawJobBox, RawNotifierBox, RawPeerCred, RawSockAddr, SendFileStatus,
    TaskStatus,
};
use plugin_api::{raw_sock_addr, ConnId, TimerId};
use rustls::ServerConfig;

use super::access_log::AccessLog;
use super::mailbox::Mailbox;
use super::outbound::{self, Pending, PendingState, Resolver, Target};
use super::tasks::Tasks;
use super::timers::Timers;
use super::transport::{Stream, Transport};
use crate::config::Limits;
use crate::ctl::watch;
use crate::status::{ConnReport, PluginCounter, WorkerReport};
use crate::sys::WatchPage;

/// The most counters one plugin may register (they cost memory in every report).
const MAX_PLUGIN_COUNTERS: usize = 256;

/// Written output is dropped from the front of the buffer once this much of it was written.
const COMPACT_AT: usize = 64 * 1024;

/// File bytes one connection writes at most in one flush (`RawHost::send_file`): a large file
/// to a fast reader then goes on next loop turn instead of holding the loop (the other
/// connections' events come first).
pub const FILE_BYTES_PER_FLUSH: u64 = 1024 * 1024;

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

/// How far [`Conn::flush`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// All of the output is written.
    All,
    /// The socket is full: go on when it is writable.
    Blocked,
    /// It wrote its share of file bytes for this turn ([`FILE_BYTES_PER_FLUSH`]): go on next turn.
    Yielded,
}

/// A range of a file queued on a connection's output (`RawHost::send_file`).
pub struct FileOut {
    /// Its place in the output: written once `output` is written up to this index.
    pub at: usize,
    /// The host's own descriptor of the plugin's file (a `dup`).
    pub file: std::fs::File,
    pub offset: u64,
    pub remaining: u64,
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Open,
    /// Close once the output is flushed; nothing more is read or dispatched.
    Closing,
    /// Output flushed and our side shut down; reading and discarding until the peer closes or
    /// the deadline, so a client still sending gets our last response instead of a reset.
    Lingering {
        until_ms: u64,
    },
}

pub struct Conn {
    pub id: ConnId,
    /// The socket, plain or TLS: the plugin sees plaintext either way.
    pub stream: Transport,
    /// Its TLS handshake is not complete: the plugin has not heard of it (`on_connect` comes
    /// after the handshake) and hears nothing if it closes before.
    pub awaiting_handshake: bool,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// A Unix socket's peer: pid, uid, gid (`SO_PEERCRED`, read at accept).
    pub cred: Option<(u32, u32, u32)>,
    pub state: ConnState,
    /// Bytes received and not yet consumed by a message.
    pub input: Vec<u8>,
    /// Length of the next message when the plugin announced one longer than what is buffered.
    pub expect: Option<usize>,
    pub output: Vec<u8>,
    pub output_pos: usize,
    /// File ranges queued among the output bytes, in order (`RawHost::send_file`).
    pub files: VecDeque<FileOut>,
    /// The socket may have unread bytes (edge-triggered: read until WouldBlock).
    pub readable: bool,
    /// The peer closed its sending side (read returned 0).
    pub peer_closed: bool,
    /// epoll said the peer hung up: read to EOF, not just to the first short read.
    pub hup: bool,
    /// When the incomplete message now buffered began to arrive (None: nothing buffered).
    pub message_started_ms: Option<u64>,
    pub paused_by_plugin: bool,
    pub send_buffer_full: bool,
    pub write_interest: bool,
    pub dirty: bool,
    pub last_active_ms: u64,
    pub created_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Opened by the plugin (`RawHost::connect`), not accepted.
    pub outbound: bool,
    /// An outbound connection not established yet: its connect deadline.
    pub connecting_until_ms: Option<u64>,
}

impl Conn {
    /// Bytes queued and not yet written: the output's, and the file ranges'.
    pub fn pending_output(&self) -> usize {
        let files: u64 = self.files.iter().map(|f| f.remaining).sum();
        (self.output.len() - self.output_pos).saturating_add(usize::try_from(files).unwrap_or(usize::MAX))
    }

    /// Where the output ends now (see [`Conn::truncate_output`]).
    pub fn output_mark(&self) -> (usize, usize) {
        (self.output.len(), self.files.len())
    }

    /// Drops what was queued after `mark` and is not written yet (a panicking plugin call's output).
    pub fn truncate_output(&mut self, mark: (usize, usize)) {
        self.files.truncate(mark.1);
        self.output.truncate(mark.0.max(self.output_pos));
    }

    /// Drops all of the output (the connection is closing: nothing more is written).
    pub fn clear_output(&mut self) {
        self.output = Vec::new();
        self.output_pos = 0;
        self.files.clear();
    }

    /// Reading and dispatching are on hold.
    pub fn receive_paused(&self) -> bool {
        self.paused_by_plugin
            || self.send_buffer_full
            || self.state != ConnState::Open
            || self.connecting_until_ms.is_some()
    }

    /// Writes as much of the output as the socket takes, bytes and file ranges in their order
    /// (`now_ms`: a write that makes progress counts as activity). A file that ends before its
    /// range is an error (`UnexpectedEof`): the connection cannot keep the length it promised.
    pub fn flush(&mut self, now_ms: u64) -> io::Result<Flushed> {
        let start = self.bytes_out;
        let mut file_budget = FILE_BYTES_PER_FLUSH;
        let result = loop {
            let until = self.files.front().map_or(self.output.len(), |f| f.at);
            if self.output_pos < until {
                let bytes = &self.output[self.output_pos..until];
                let written = match self.files.front() {
                    Some(_) => self.stream.write_before_file(bytes),
                    None => self.stream.write(bytes),
                };
                match written {
                    Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.output_pos += n;
                        self.bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flushed::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
                continue;
            }
            if let Some(f) = self.files.front_mut() {
                if f.remaining == 0 {
                    self.files.pop_front();
                    continue;
                }
                if file_budget == 0 {
                    break Ok(Flushed::Yielded);
                }
                let want = usize::try_from(f.remaining.min(file_budget)).unwrap_or(usize::MAX);
                match self.stream.write_file(&f.file, f.offset, want) {
                    Ok(0) => {
                        break Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended before its range"))
                    }
                    Ok(n) => {
                        f.offset += n as u64;
                        f.remaining -= n as u64;
                        file_budget = file_budget.saturating_sub(n as u64);
                        self.bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flushed::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
                continue;
            }
            // TLS: the records rustls holds go out too.
            break self.stream.flush_pending().map(|done| if done { Flushed::All } else { Flushed::Blocked });
        };
        if self.bytes_out > start {
            self.last_active_ms = now_ms;
        }
        if self.output_pos == self.output.len() && self.files.is_empty() {
            self.output.clear();
            self.output_pos = 0;
        } else if self.output_pos >= COMPACT_AT && self.output_pos * 2 >= self.output.len() {
            // Written bytes must not pile up while some output is always pending (a client that
            // reads a little slower than it is sent to). File ranges keep their place.
            self.output.drain(..self.output_pos);
            for f in &mut self.files {
                f.at -= self.output_pos;
            }
            self.output_pos = 0;
        }
        result
    }
}

/// Messages per second over the last few seconds, kept without a timer: the loop rolls it once
/// a turn (an idle worker does not wake up for it; a report is a turn of its own).
#[derive(Debug, Default, Clone, Copy)]
pub struct RateMeter {
    /// The second being counted, and the message count when it began.
    second: u64,
    at_start: u64,
    /// Messages in each of the last complete seconds (a ring).
    last: [u64; RATE_SECONDS],
    next: usize,
}

/// Seconds the message rate is averaged over.
const RATE_SECONDS: usize = 5;

impl RateMeter {
    /// Rolls the meter to `now_ms` given the total message count.
    pub fn roll(&mut self, now_ms: u64, messages: u64) {
        let second = now_ms / 1000;
        if second == self.second {
            return;
        }
        let skipped = second.saturating_sub(self.second).min(RATE_SECONDS as u64 + 1);
        // The second that ended got what came since it began; seconds with no turn got nothing.
        for i in 0..skipped.min(RATE_SECONDS as u64) {
            self.last[self.next] = if i == 0 { messages - self.at_start } else { 0 };
            self.next = (self.next + 1) % RATE_SECONDS;
        }
        self.second = second;
        self.at_start = messages;
    }

    /// Messages per second over the last complete seconds.
    pub fn per_second(&self) -> f64 {
        self.last.iter().sum::<u64>() as f64 / RATE_SECONDS as f64
    }
}

/// Counters for the whole worker.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub rate: RateMeter,
    pub accepted: u64,
    pub messages: u64,
    pub send_failures: u64,
    pub plugin_panics: u64,
    /// When the plugin last panicked (the worker's clock).
    pub last_panic_ms: Option<u64>,
    pub closed: u64,
    /// Bytes of connections already closed (live ones count their own).
    pub closed_bytes_in: u64,
    pub closed_bytes_out: u64,
    /// UDP datagrams dropped: over the max package size, over the session limit, or for a
    /// session whose plugin paused receiving.
    pub datagrams_dropped: u64,
}

pub struct Core {
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    pub timers: Timers,
    pub now_ms: u64,
    pub draining: bool,
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
    registry: Registry,
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
    pub fn new(registry: Registry, service: String, slot: u32, limits: Limits) -> Self {
        Core {
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            live: 0,
            timers: Timers::default(),
            now_ms: 0,
            draining: false,
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
            access_log: AccessLog::default(),
            mailbox: Mailbox::default(),
            udp: None,
            sessions: HashMap::new(),
            tasks: None,
            watch: Watch::default(),
            registry,
        }
    }

    pub fn len(&self) -> usize {
        self.live + self.pending.len()
    }

    /// Connections that still matter to a drain: all but those lingering after their close.
    pub fn open_count(&self) -> usize {
        let pending = self.pending.len();
        pending + self.conns.iter().flatten().filter(|c| !matches!(c.state, ConnState::Lingering { .. })).count()
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

    /// Registers `stream` under the reserved `id`: an accepted connection, or (with its connect
    /// deadline) an outbound one whose connect is under way (it waits for writability).
    pub fn place(&mut self, id: ConnId, mut stream: Transport, connecting_until_ms: Option<u64>) -> io::Result<()> {
        let index = id.index();
        let outbound = connecting_until_ms.is_some();
        let interest = if outbound { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
        self.registry.register(&mut stream, Token(index + CONN_TOKEN_BASE), interest)?;
        let _ = stream.set_nodelay(true);
        let datagram = stream.datagram_peer().is_some();
        let conn = Conn {
            id,
            peer: if outbound { None } else { stream.peer_addr().ok() },
            local: match datagram {
                true => self.udp.as_ref().and_then(|u| u.local_addr().ok()),
                false => stream.local_addr().ok(),
            },
            cred: stream.peer_cred(),
            awaiting_handshake: stream.is_handshaking(),
            stream,
            state: ConnState::Open,
            input: Vec::new(),
            expect: None,
            output: Vec::new(),
            output_pos: 0,
            files: VecDeque::new(),
            readable: !outbound && !datagram,
            peer_closed: false,
            hup: false,
            message_started_ms: None,
            paused_by_plugin: false,
            send_buffer_full: false,
            write_interest: outbound,
            dirty: false,
            last_active_ms: self.now_ms,
            created_ms: self.now_ms,
            bytes_in: 0,
            bytes_out: 0,
            outbound,
            connecting_until_ms,
        };
        self.conns[index] = Some(conn);
        self.live += 1;
        Ok(())
    }

    /// `RawHost::connect`: an IP address starts connecting now, a name goes to the resolver;
    /// either way the id is the plugin's at once.
    pub fn connect(&mut self, addr: &str, timeout_ms: u64) -> Result<ConnId, ConnectErrorCode> {
        let target = outbound::parse_target(addr).ok_or(ConnectErrorCode::INVALID_ADDRESS)?;
        if self.len() >= self.limits.max_connections {
            return Err(ConnectErrorCode::LIMIT);
        }
        let timeout_ms = if timeout_ms == 0 { outbound::DEFAULT_CONNECT_TIMEOUT_MS } else { timeout_ms };
        let deadline_ms = self.now_ms.saturating_add(timeout_ms);
        let id = self.reserve_id();
        match target {
            Target::Addr(addr) => match self.start_connect(id, addr, deadline_ms) {
                Ok(()) => {}
                Err(e) => {
                    tracing::debug!(conn = id.0, %addr, "connect failed at once: {e}");
                    self.pending.push(Pending {
                        id,
                        deadline_ms,
                        state: PendingState::Failed(outbound::error_code(&e)),
                    });
                }
            },
            Target::Name(host, port) => {
                let resolver = match self.resolver.as_mut() {
                    Some(r) => r,
                    None => match Resolver::start(&self.registry) {
                        Ok(r) => self.resolver.insert(r),
                        Err(e) => {
                            tracing::warn!("could not start the name resolver: {e}");
                            self.release_id(id);
                            return Err(ConnectErrorCode::IO);
                        }
                    },
                };
                resolver.resolve(id, host, port);
                self.pending.push(Pending { id, deadline_ms, state: PendingState::Resolving });
            }
        }
        Ok(id)
    }

    /// Opens the socket of reserved `id` and starts its non-blocking connect.
    pub fn start_connect(&mut self, id: ConnId, addr: SocketAddr, deadline_ms: u64) -> io::Result<()> {
        // Outbound connections are plain TCP (the host terminates TLS for accepted ones only).
        let stream = Transport::plain(TcpStream::connect(addr)?);
        self.place(id, stream, Some(deadline_ms))?;
        self.connecting.push(id);
        Ok(())
    }

    /// Connects the connecting `id` to `addr` instead, on a new socket (the address it tried
    /// refused).
    pub fn restart_connect(&mut self, id: ConnId, addr: SocketAddr) -> io::Result<()> {
        let mut stream = Transport::plain(TcpStream::connect(addr)?);
        let index = id.index();
        let Some(Some(c)) = self.conns.get_mut(index).map(|c| c.as_mut().filter(|c| c.id == id)) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        let token = Token(index + CONN_TOKEN_BASE);
        let _ = self.registry.deregister(&mut c.stream);
        self.registry.register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        let _ = stream.set_nodelay(true);
        c.local = stream.local_addr().ok();
        c.stream = stream;
        c.write_interest = true;
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
        self.get(id).is_some_and(|c| c.outbound) || self.pending.iter().any(|p| p.id == id)
    }

    /// Deregisters and drops the connection (the socket closes). The caller tells the plugin.
    pub fn remove(&mut self, index: usize) -> Option<Conn> {
        let mut conn = self.conns.get_mut(index)?.take()?;
        let _ = self.registry.deregister(&mut conn.stream);
        if let Some(peer) = conn.stream.datagram_peer() {
            self.sessions.remove(&peer);
        }
        self.free.push(index as u32);
        self.live -= 1;
        self.stats.closed += 1;
        self.stats.closed_bytes_in += conn.bytes_in;
        self.stats.closed_bytes_out += conn.bytes_out;
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
            draining: self.draining,
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
                state: match c.state {
                    ConnState::Open if c.connecting_until_ms.is_some() => "connecting",
                    ConnState::Open if c.awaiting_handshake => "handshake",
                    ConnState::Open if c.paused_by_plugin || c.send_buffer_full => "paused",
                    ConnState::Open => "open",
                    ConnState::Closing => "closing",
                    ConnState::Lingering { .. } => "lingering",
                }
                .to_string(),
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
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(index);
            }
        }
    }

    /// Asks for (or drops) write readiness on a connection, only when it changes.
    pub fn set_write_interest(&mut self, index: usize, on: bool) -> io::Result<()> {
        let Some(Some(c)) = self.conns.get_mut(index) else {
            return Ok(());
        };
        if c.write_interest == on {
            return Ok(());
        }
        c.write_interest = on;
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
            if c.state == ConnState::Open {
                c.state = ConnState::Closing;
            }
            let index = id.index();
            self.mark_dirty(index);
        }
    }

    fn send(&mut self, id: ConnId, data: &[u8]) -> bool {
        let max = self.limits.max_send_buffer;
        let now = self.now_ms;
        let Some(c) = self.conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id) else {
            return false;
        };
        if let Some(peer) = c.stream.datagram_peer() {
            // UDP: each send is one datagram, sent now (a datagram the socket cannot take is
            // dropped, as UDP does; nothing is queued).
            let sent = match (&c.state, &self.udp) {
                (ConnState::Open | ConnState::Closing, Some(udp)) => udp.send_to(data, peer),
                _ => return false,
            };
            return match sent {
                Ok(n) => {
                    c.bytes_out += n as u64;
                    c.last_active_ms = now;
                    true
                }
                Err(e) => {
                    tracing::debug!(conn = id.0, %peer, "datagram not sent: {e}");
                    self.stats.send_failures += 1;
                    self.deferred.push_back((id, Deferred::Error(ConnError::SendFailed)));
                    false
                }
            };
        }
        if (c.state != ConnState::Open && c.state != ConnState::Closing) || c.connecting_until_ms.is_some() {
            return false;
        }
        // Like Workerman: a send is refused once the buffer is already full, but one large send
        // into a buffer below the limit is taken whole (a big response is one send).
        if c.pending_output() >= max {
            self.stats.send_failures += 1;
            self.deferred.push_back((id, Deferred::Error(ConnError::SendFailed)));
            return false;
        }
        c.output.extend_from_slice(data);
        let now_full = c.pending_output() >= max && !c.send_buffer_full;
        if now_full {
            c.send_buffer_full = true;
            self.deferred.push_back((id, Deferred::BufferFull));
        }
        self.mark_dirty(id.index());
        true
    }
}

impl Core {
    /// `RawHost::send_file`: queues a range of a duplicate of `fd` after the output so far.
    fn send_file(&mut self, id: ConnId, fd: i32, offset: u64, len: u64) -> Result<(), SendFileStatus> {
        let max = self.limits.max_send_buffer;
        let Some(c) = self.conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id) else {
            return Err(SendFileStatus::REFUSED);
        };
        if c.stream.datagram_peer().is_some() {
            return Err(SendFileStatus::NOT_A_STREAM);
        }
        if (c.state != ConnState::Open && c.state != ConnState::Closing) || c.connecting_until_ms.is_some() {
            return Err(SendFileStatus::REFUSED);
        }
        if offset.checked_add(len).is_none_or(|end| end > i64::MAX as u64) {
            return Err(SendFileStatus::BAD_FILE);
        }
        // As `send`: refused once the buffer is full, taken whole below the limit.
        if c.pending_output() >= max {
            self.stats.send_failures += 1;
            self.deferred.push_back((id, Deferred::Error(ConnError::SendFailed)));
            return Err(SendFileStatus::REFUSED);
        }
        if len == 0 {
            return Ok(());
        }
        let file = crate::sys::dup_regular_file(fd).map_err(|_| SendFileStatus::BAD_FILE)?;
        c.files.push_back(FileOut { at: c.output.len(), file, offset, remaining: len });
        if c.pending_output() >= max && !c.send_buffer_full {
            c.send_buffer_full = true;
            self.deferred.push_back((id, Deferred::BufferFull));
        }
        self.mark_dirty(id.index());
        Ok(())
    }
}

/// The host handle a plugin gets during one call.
pub struct Ctx<'a> {
    pub core: &'a mut Core,
}

impl RawHost for Ctx<'_> {
    fn send(&mut self, conn: ConnId, data: RSlice<'_, u8>) -> bool {
        self.core.send(conn, data.as_slice())
    }

    fn close(&mut self, conn: ConnId, last: RSlice<'_, u8>) {
        if outbound::cancel_pending(self.core, conn) {
            return;
        }
        if !last.is_empty() {
            self.core.send(conn, last.as_slice());
        }
        self.core.close_after_flush(conn);
    }

    fn pause_recv(&mut self, conn: ConnId, paused: bool) {
        let Some(c) = self.core.get_mut(conn) else {
            return;
        };
        let was = c.paused_by_plugin;
        c.paused_by_plugin = paused;
        if was && !paused {
            self.core.deferred.push_back((conn, Deferred::Resume));
        }
    }

    fn peer_addr(&self, conn: ConnId) -> RawSockAddr {
        raw_sock_addr(self.core.get(conn).and_then(|c| c.peer))
    }

    fn local_addr(&self, conn: ConnId) -> RawSockAddr {
        raw_sock_addr(self.core.get(conn).and_then(|c| c.local))
    }

    fn pending_send(&self, conn: ConnId) -> u64 {
        self.core.get(conn).map_or(0, |c| c.pending_output() as u64)
    }

    fn add_timer(&mut self, delay_ms: u64, interval_ms: u64, data: u64) -> TimerId {
        self.core.timers.add(self.core.now_ms, delay_ms, interval_ms, data)
    }

    fn del_timer(&mut self, timer: TimerId) -> bool {
        self.core.timers.remove(timer)
    }

    fn slot(&self) -> u32 {
        self.core.slot
    }

    fn service(&self) -> RStr<'_> {
        RStr::from_str(&self.core.service)
    }

    fn is_draining(&self) -> bool {
        self.core.draining
    }

    fn now_ms(&self) -> u64 {
        self.core.now_ms
    }

    fn worker_count(&self) -> u32 {
        self.core.worker_count
    }

    fn counter(&mut self, name: RStr<'_>, labels: RStr<'_>, help: RStr<'_>) -> u32 {
        let (name, labels) = (name.as_str(), labels.as_str());
        if let Some(i) = self.core.plugin_counters.iter().position(|c| c.name == name && c.labels == labels) {
            return i as u32;
        }
        if !PluginCounter::valid(name, labels) || self.core.plugin_counters.len() >= MAX_PLUGIN_COUNTERS {
            return plugin_api::abi::NO_COUNTER;
        }
        let counter = PluginCounter { name: name.into(), labels: labels.into(), help: help.as_str().into(), value: 0 };
        self.core.plugin_counters.push(counter);
        (self.core.plugin_counters.len() - 1) as u32
    }

    fn counter_add(&mut self, counter: u32, delta: u64) {
        if let Some(c) = self.core.plugin_counters.get_mut(counter as usize) {
            c.value = c.value.saturating_add(delta);
        }
    }

    fn connect(&mut self, addr: RStr<'_>, timeout_ms: u64) -> RResult<ConnId, ConnectErrorCode> {
        self.core.connect(addr.as_str(), timeout_ms).into()
    }

    fn is_outbound(&self, conn: ConnId) -> bool {
        self.core.is_outbound(conn)
    }

    fn server_name(&self, conn: ConnId) -> ROption<RStr<'_>> {
        self.core.get(conn).and_then(|c| c.stream.server_name()).map(RStr::from_str).into()
    }

    fn broadcast(&mut self, msg: RSlice<'_, u8>) -> i64 {
        let slot = self.core.slot;
        self.core.mailbox.broadcast(slot, msg.as_slice())
    }
    fn send_to_worker(&mut self, slot: u32, msg: RSlice<'_, u8>) -> i64 {
        let from = self.core.slot;
        self.core.mailbox.send_to(from, slot, msg.as_slice())
    }

    fn peer_cred(&self, conn: ConnId) -> ROption<RawPeerCred> {
        let cred = self.core.get(conn).and_then(|c| c.cred);
        cred.map(|(pid, uid, gid)| RawPeerCred { pid, uid, gid }).into()
    }

    fn submit_task(&mut self, job: RawJobBox) -> i64 {
        match self.core.tasks() {
            Some(tasks) => tasks.submit(job),
            None => TaskStatus::UNSUPPORTED.0 as i64,
        }
    }

    fn notifier(&mut self) -> ROption<RawNotifierBox> {
        self.core.tasks().map(|tasks| tasks.notifier()).into()
    }

    fn access_log(&mut self, line: RSlice<'_, u8>) -> bool {
        self.core.access_log.append(line.as_slice(), self.core.now_ms)
    }

    fn send_file(&mut self, conn: ConnId, fd: i32, offset: u64, len: u64) -> i64 {
        match self.core.send_file(conn, fd, offset, len) {
            Ok(()) => 0,
            Err(status) => status.0 as i64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateMeter;

    #[test]
    fn the_rate_is_the_average_of_the_last_complete_seconds() {
        let mut r = RateMeter::default();
        r.roll(0, 0);
        r.roll(999, 400);
        assert_eq!(r.per_second(), 0.0, "no second is complete yet");
        r.roll(1000, 500);
        assert_eq!(r.per_second(), 100.0, "500 messages in 1 of 5 seconds");
        r.roll(2000, 1000);
        assert_eq!(r.per_second(), 200.0);
        // Idle for a minute: the rate falls to nothing.
        r.roll(62_000, 1000);
        assert_eq!(r.per_second(), 0.0);
    }
}
