//! The safe side of the ABI: the trait a plugin implements and the handle it talks to the host
//! through.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use abi_stable::std_types::{RResult, RSlice, RStr};

mod topics;

pub use self::topics::TopicError;

use crate::abi::{
    self, ConnErrorCode, ConnId, ConnectErrorCode, HostExtension, RawFrame, RawHostRef, RawInputEnd, RawSockAddr,
    RawTransport, TimerId,
};

/// Why the host reports an error on a connection ([`Protocol::on_error`]). More reasons will
/// come with new host features: match with a `_ =>` arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnError {
    /// The next message is over the service's max package size. The plugin may queue an error
    /// response; the connection is closed after it is flushed.
    PackageTooLarge,
    /// The connection was idle (or a message incomplete) for longer than allowed.
    Timeout,
    /// A send was refused: the connection is closed or its send buffer is full.
    SendFailed,
    /// The socket reported an error (reset by peer, say); the connection is gone.
    Io,
    /// An outbound connection was refused by its peer.
    ConnectRefused,
    /// An outbound connection was not established in time.
    ConnectTimeout,
    /// The TLS handshake failed; the connection is gone.
    TlsHandshake,
}

impl From<abi::ConnError> for ConnError {
    fn from(err: abi::ConnError) -> Self {
        match err {
            abi::ConnError::PackageTooLarge => ConnError::PackageTooLarge,
            abi::ConnError::Timeout => ConnError::Timeout,
            abi::ConnError::SendFailed => ConnError::SendFailed,
            abi::ConnError::Io => ConnError::Io,
        }
    }
}

impl From<ConnErrorCode> for ConnError {
    /// A code this SDK does not know (from a newer host) becomes [`ConnError::Io`]: whatever it
    /// is, the connection is gone.
    fn from(code: ConnErrorCode) -> Self {
        match code {
            ConnErrorCode::CONNECT_REFUSED => ConnError::ConnectRefused,
            ConnErrorCode::CONNECT_TIMEOUT => ConnError::ConnectTimeout,
            ConnErrorCode::TLS_HANDSHAKE => ConnError::TlsHandshake,
            code => code.closest_conn_error().into(),
        }
    }
}

impl From<ConnError> for ConnErrorCode {
    fn from(err: ConnError) -> Self {
        match err {
            ConnError::PackageTooLarge => ConnErrorCode::PACKAGE_TOO_LARGE,
            ConnError::Timeout => ConnErrorCode::TIMEOUT,
            ConnError::SendFailed => ConnErrorCode::SEND_FAILED,
            ConnError::Io => ConnErrorCode::IO,
            ConnError::ConnectRefused => ConnErrorCode::CONNECT_REFUSED,
            ConnError::ConnectTimeout => ConnErrorCode::CONNECT_TIMEOUT,
            ConnError::TlsHandshake => ConnErrorCode::TLS_HANDSHAKE,
        }
    }
}

/// Why [`Host::connect`] could not start a connection. More reasons may come: match with a
/// `_ =>` arm. (A connection that started and then failed is reported by
/// [`Protocol::on_error`] instead: [`ConnError::ConnectRefused`], [`ConnError::ConnectTimeout`]
/// or [`ConnError::Io`], then [`Protocol::on_close`].)
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectError {
    /// The host is too old to open connections.
    Unsupported,
    /// The address is neither `ip:port`, `[ipv6]:port` nor `name:port`.
    InvalidAddress,
    /// The worker is at its max connections.
    Limit,
    /// The socket could not be created (out of descriptors, say).
    Io,
}

impl From<ConnectErrorCode> for ConnectError {
    fn from(code: ConnectErrorCode) -> Self {
        match code {
            ConnectErrorCode::UNSUPPORTED => ConnectError::Unsupported,
            ConnectErrorCode::INVALID_ADDRESS => ConnectError::InvalidAddress,
            ConnectErrorCode::LIMIT => ConnectError::Limit,
            _ => ConnectError::Io,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectError::Unsupported => "the host cannot open outbound connections",
            ConnectError::InvalidAddress => "not an address (ip:port, [ipv6]:port or name:port)",
            ConnectError::Limit => "the worker is at its max connections",
            ConnectError::Io => "could not create the socket",
        })
    }
}

impl std::error::Error for ConnectError {}

/// Where [`Host::connect`] connects to: a [`SocketAddr`] or text (`"127.0.0.1:9001"`,
/// `"[::1]:80"`, `"localhost:8080"`).
pub trait ConnectAddr {
    /// The address as the host reads it.
    fn to_connect_addr(&self) -> std::borrow::Cow<'_, str>;
}

impl ConnectAddr for str {
    fn to_connect_addr(&self) -> std::borrow::Cow<'_, str> {
        self.into()
    }
}

impl ConnectAddr for String {
    fn to_connect_addr(&self) -> std::borrow::Cow<'_, str> {
        self.as_str().into()
    }
}

impl ConnectAddr for SocketAddr {
    fn to_connect_addr(&self) -> std::borrow::Cow<'_, str> {
        self.to_string().into()
    }
}

impl<T: ConnectAddr + ?Sized> ConnectAddr for &T {
    fn to_connect_addr(&self) -> std::borrow::Cow<'_, str> {
        (**self).to_connect_addr()
    }
}

/// What a plugin's framing step says about the bytes buffered on a connection (Workerman's
/// `input()` contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// No complete message yet: wait for more bytes.
    NeedMore,
    /// The next message is this many bytes long. It may be longer than what is buffered: the host
    /// then waits for the rest, or refuses it at once when it is over the max package size.
    Complete(usize),
    /// The bytes can never become a valid message: the host closes the connection once what the
    /// plugin queued is flushed (queue an error response first, if the protocol has one).
    Invalid,
}

impl From<Frame> for RawFrame {
    fn from(f: Frame) -> Self {
        match f {
            Frame::NeedMore => RawFrame::NeedMore,
            Frame::Complete(n) => RawFrame::Complete(n as u64),
            Frame::Invalid => RawFrame::Invalid,
        }
    }
}

/// What happens to a connection whose peer finished sending ([`Protocol::on_input_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputEnd {
    /// Close once what is queued is written (the default: a request/response protocol answered
    /// what it read, and the peer sends no more).
    #[default]
    Close,
    /// Keep the write side open until the plugin closes the connection ([`Host::close`]): an
    /// answer still to come (from an upstream, a task, a timer) reaches a peer that half-closed.
    /// Nothing more is read; the idle timeout still applies.
    KeepOpen,
}

impl From<InputEnd> for RawInputEnd {
    fn from(end: InputEnd) -> Self {
        match end {
            InputEnd::Close => RawInputEnd::CLOSE,
            InputEnd::KeepOpen => RawInputEnd::KEEP_OPEN,
        }
    }
}

/// What carries a connection ([`Host::transport`]). More kinds may come: match with a `_ =>`
/// arm.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// A Unix stream socket.
    Unix,
    /// A UDP session.
    Udp,
    /// TLS over TCP (the host does TLS itself: the plugin sees plaintext).
    TlsTcp,
    /// TLS over a Unix stream socket.
    TlsUnix,
    /// The host cannot say (older than plugin-api 0.1.4), or no such connection.
    Unknown,
}

impl Transport {
    /// True for TLS over any socket.
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::TlsTcp | Transport::TlsUnix)
    }
}

impl From<RawTransport> for Transport {
    fn from(raw: RawTransport) -> Self {
        match raw {
            RawTransport::TCP => Transport::Tcp,
            RawTransport::UNIX => Transport::Unix,
            RawTransport::UDP => Transport::Udp,
            RawTransport::TLS_TCP => Transport::TlsTcp,
            RawTransport::TLS_UNIX => Transport::TlsUnix,
            _ => Transport::Unknown,
        }
    }
}

impl From<Transport> for RawTransport {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Tcp => RawTransport::TCP,
            Transport::Unix => RawTransport::UNIX,
            Transport::Udp => RawTransport::UDP,
            Transport::TlsTcp => RawTransport::TLS_TCP,
            Transport::TlsUnix => RawTransport::TLS_UNIX,
            Transport::Unknown => RawTransport::UNKNOWN,
        }
    }
}

/// Identity of the worker a plugin instance runs in, given to [`Protocol::new`].
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// The service's name.
    pub service: String,
    /// The worker's slot within its service (0-based).
    pub slot: u32,
    /// The worker's process id.
    pub pid: u32,
    /// The service's largest message: the host refuses longer ones (`on_error(PackageTooLarge)`),
    /// so a protocol can refuse them itself first (HTTP: 413 before `100 Continue`).
    pub max_package_size: usize,
    /// The send buffer: output queued above it makes the connection full (`on_buffer_full`, then
    /// `on_buffer_drain` once written). A plugin streaming a large answer sends up to it at a time.
    pub max_send_buffer: usize,
    /// How many workers the service has; `None` from a host too old to say.
    pub worker_count: Option<u32>,
}

/// The host, as a plugin sees it during one callback.
pub struct Host<'a> {
    raw: RawHostRef<'a>,
}

impl<'a> Host<'a> {
    #[doc(hidden)]
    pub fn from_raw(raw: RawHostRef<'a>) -> Self {
        Host { raw }
    }

    /// Queues `data` on the connection; it is written at the end of the worker's loop turn,
    /// together with everything else queued in that turn. False when the connection is closed or
    /// its send buffer is full.
    pub fn send(&mut self, conn: ConnId, data: &[u8]) -> bool {
        self.raw.send(conn, RSlice::from_slice(data))
    }

    /// Closes the connection once everything queued on it is flushed.
    pub fn close(&mut self, conn: ConnId) {
        self.raw.close(conn, RSlice::from_slice(&[]))
    }

    /// Queues `last`, then closes the connection once everything is flushed.
    pub fn close_with(&mut self, conn: ConnId, last: &[u8]) {
        self.raw.close(conn, RSlice::from_slice(last))
    }

    /// Stops reading from the connection until [`Host::resume_recv`].
    pub fn pause_recv(&mut self, conn: ConnId) {
        self.raw.pause_recv(conn, true)
    }

    /// Reads from the connection again after [`Host::pause_recv`].
    pub fn resume_recv(&mut self, conn: ConnId) {
        self.raw.pause_recv(conn, false)
    }

    /// The connection's peer address; `None` when unknown, and on a Unix socket (which has
    /// none: see [`Host::peer_cred`]). On a UDP session, the address replies go to.
    pub fn peer_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        sock_addr(self.raw.peer_addr(conn))
    }

    /// The connection's local address; `None` when unknown or on a Unix socket.
    pub fn local_addr(&self, conn: ConnId) -> Option<SocketAddr> {
        sock_addr(self.raw.local_addr(conn))
    }

    /// Bytes queued on the connection and not yet written.
    pub fn pending_send(&self, conn: ConnId) -> usize {
        self.raw.pending_send(conn) as usize
    }

    /// A timer that fires once after `delay`; `data` comes back in [`Protocol::on_timer`].
    pub fn add_timer(&mut self, delay: Duration, data: u64) -> TimerId {
        self.raw.add_timer(millis(delay), 0, data)
    }

    /// A timer that fires every `interval` until deleted.
    pub fn add_interval(&mut self, interval: Duration, data: u64) -> TimerId {
        let ms = millis(interval).max(1);
        self.raw.add_timer(ms, ms, data)
    }

    /// Deletes a timer; false when there was none (it fired once already, say).
    pub fn del_timer(&mut self, timer: TimerId) -> bool {
        self.raw.del_timer(timer)
    }

    /// The worker's slot within its service (0-based).
    pub fn slot(&self) -> u32 {
        self.raw.slot()
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        self.raw.service().as_str()
    }

    /// True once the worker was asked to drain (graceful stop or reload).
    pub fn is_draining(&self) -> bool {
        self.raw.is_draining()
    }

    /// The worker's monotonic clock in milliseconds, read once per loop turn.
    pub fn now_ms(&self) -> u64 {
        self.raw.now_ms()
    }

    /// How many workers the service has; `None` from a host too old to say.
    pub fn worker_count(&self) -> Option<u32> {
        match self.raw.worker_count() {
            0 => None,
            n => Some(n),
        }
    }

    /// A counter of this plugin in the host's metrics: `host_plugin_NAME_total{service, slot,
    /// LABELS}`. `name` is `[a-z_][a-z0-9_]*` (64 bytes at most), `labels` `key=value` pairs
    /// separated by commas (or empty). Register once (in `on_worker_start`), then
    /// [`Host::add`] is cheap. `None`: an invalid name, or a host too old to count.
    pub fn counter(&mut self, name: &str, labels: &str, help: &str) -> Option<Counter> {
        match self.raw.counter(RStr::from_str(name), RStr::from_str(labels), RStr::from_str(help)) {
            crate::abi::NO_COUNTER => None,
            id => Some(Counter(id)),
        }
    }

    /// Adds `delta` to `counter`.
    pub fn add(&mut self, counter: Counter, delta: u64) {
        self.raw.counter_add(counter.0, delta)
    }

    /// Opens an outbound TCP connection, with the host's default connect timeout (10 s). An IP
    /// address connects at once; a host name is resolved off the worker's loop. The id is
    /// valid at once: the plugin hears [`Protocol::on_connect`] once connected (send from
    /// there on: earlier sends are refused), or [`Protocol::on_error`] with
    /// [`ConnError::ConnectRefused`], [`ConnError::ConnectTimeout`] or [`ConnError::Io`], then
    /// [`Protocol::on_close`]. Once connected it is like an accepted connection (framing,
    /// send, close, pause, buffer events, idle timeout), told apart by [`Host::is_outbound`].
    /// Outbound connections are the plugin's to close; a draining worker asks it to with
    /// [`Protocol::on_drain`] (the default closes) and closes what is left at its deadline.
    pub fn connect(&mut self, addr: impl ConnectAddr) -> Result<ConnId, ConnectError> {
        self.connect_timeout(addr, Duration::ZERO)
    }

    /// [`Host::connect`] giving up after `timeout` (zero: the host's default).
    pub fn connect_timeout(&mut self, addr: impl ConnectAddr, timeout: Duration) -> Result<ConnId, ConnectError> {
        let addr = addr.to_connect_addr();
        match self.raw.connect(RStr::from_str(&addr), millis(timeout)) {
            RResult::ROk(conn) => Ok(conn),
            RResult::RErr(code) => Err(code.into()),
        }
    }

    /// True for a connection opened with [`Host::connect`], false for an accepted one.
    pub fn is_outbound(&self, conn: ConnId) -> bool {
        self.raw.is_outbound(conn)
    }

    /// The server name the client asked for with TLS SNI (`None` on plain TCP, without SNI, or
    /// from a host too old to say). The host does TLS itself: the plugin sees plaintext.
    pub fn server_name(&self, conn: ConnId) -> Option<String> {
        self.raw.server_name(conn).into_option().map(|name| name.as_str().to_string())
    }

    /// What carries the connection: TCP, a Unix socket, a UDP session, or TLS over one of them
    /// ([`Transport::Unknown`] from a host older than plugin-api 0.1.4, or for a connection
    /// that is gone).
    pub fn transport(&mut self, conn: ConnId) -> Transport {
        self.extension().map_or(Transport::Unknown, |ext| ext.ext.transport(conn).into())
    }

    /// The application protocol the connection's TLS handshake agreed by ALPN (RFC 7301), such
    /// as `b"h2"`: `None` without TLS, when the client offered no ALPN, or from a host older than
    /// plugin-api 0.1.4 ([`Host::transport`] says which).
    pub fn alpn(&mut self, conn: ConnId) -> Option<Vec<u8>> {
        self.extension().and_then(|ext| ext.ext.alpn(conn).into_option().map(|p| p.to_vec()))
    }

    /// Chooses the ALPN protocols the service's TLS handshakes offer (in order of preference,
    /// each 1 to 255 bytes), as [`RawHostExt::set_alpn`](crate::abi::RawHostExt::set_alpn)
    /// says: from `on_worker_start`, before the first connection. False when the host does not
    /// apply it (no TLS, a configured `tls_alpn`, an invalid list, a host older than 0.1.4).
    pub fn set_alpn(&mut self, protocols: &[&str]) -> bool {
        let list: Vec<RStr<'_>> = protocols.iter().map(|p| RStr::from_str(p)).collect();
        self.extension().is_some_and(|mut ext| ext.ext.set_alpn(RSlice::from_slice(&list)))
    }

    /// In a hand-over's export (`export_conn` of the connection that owns it, or
    /// `export_worker`): the outbound connection `conn` moves with its owner, as
    /// [`RawHostExt::handover_carry`](crate::abi::RawHostExt::handover_carry) says. False: it
    /// stays (still connecting, not outbound, an older host…): decline the owner, or leave it
    /// out of the worker state.
    pub fn handover_carry(&mut self, conn: ConnId) -> bool {
        self.extension().is_some_and(|mut ext| ext.ext.handover_carry(conn))
    }

    /// In a hand-over's adoption (`adopt_worker`, `adopt_conn`): this worker's id of the
    /// connection the old worker carried as `old` (written in your state), or `None` when it did
    /// not come (forget it).
    pub fn handover_carried(&mut self, old: ConnId) -> Option<ConnId> {
        self.extension().and_then(|ext| ext.ext.handover_carried(old).into_option())
    }

    /// In a hand-over's `export_conn` of `conn`: `conn` hears `topic` (a topic this worker
    /// subscribed to itself, [`Host::subscribe_worker`]) through [`Protocol::on_publish`], as
    /// [`RawHostExt::handover_hears`](crate::abi::RawHostExt::handover_hears) says: the host
    /// keeps each message once, in order, across the move (the replacement hears what `conn`
    /// missed as [`Protocol::on_publish_missed`]). False (no such worker subscription, no export
    /// of `conn` under way, a host older than this call): decline `conn`.
    pub fn handover_hears(&mut self, conn: ConnId, topic: &[u8]) -> bool {
        self.extension().is_some_and(|mut ext| ext.ext.handover_hears(conn, RSlice::from_slice(topic)))
    }

    /// The host's calls added since plugin-api 0.1.3, once their layout is checked (`None` when
    /// it does not match this `plugin-api`'s: each call then answers "unsupported").
    fn extension(&mut self) -> Option<HostExtension<'_>> {
        let ext = self.raw.extension();
        match ext.check() {
            Ok(()) => Some(ext),
            Err(e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| tracing::warn!("the host's extension is unusable: {e}"));
                None
            }
        }
    }

    /// Sends `msg` to every other live worker of the service (draining ones too, until they
    /// exit): each hears [`Protocol::on_worker_message`]. Returns how many workers it was queued
    /// for. Sends never block: a worker whose mailbox is full (it does not keep up) or that is
    /// gone misses the message, and the drop is counted in `host status`. Messages from one
    /// worker arrive in the order they were sent.
    pub fn broadcast(&mut self, msg: &[u8]) -> Result<u32, WorkerMsgError> {
        worker_msg_result(self.raw.broadcast(RSlice::from_slice(msg))).map(|n| n as u32)
    }

    /// Sends `msg` to the serving worker of `slot` (the replacement once a reload promoted
    /// it). `Err(Dropped)` when there is none, its mailbox is full or it is gone (counted).
    pub fn send_to_worker(&mut self, slot: u32, msg: &[u8]) -> Result<(), WorkerMsgError> {
        match worker_msg_result(self.raw.send_to_worker(slot, RSlice::from_slice(msg)))? {
            0 => Err(WorkerMsgError::Dropped),
            _ => Ok(()),
        }
    }

    /// The process at the other end of a Unix-socket connection (its pid, uid and gid when it
    /// connected: `SO_PEERCRED`). `None` on TCP and UDP, or from a host too old to say.
    pub fn peer_cred(&self, conn: ConnId) -> Option<PeerCred> {
        let raw = self.raw.peer_cred(conn).into_option()?;
        Some(PeerCred { pid: raw.pid, uid: raw.uid, gid: raw.gid })
    }

    /// Appends one line to the service's access log (`--access-log`, `access_log` in a config
    /// file). `line` should end with `\n`; the host writes whole lines, buffered (a call is a
    /// copy; the file sees the lines within about a second). False when the service has no access
    /// log or the host is too old to keep one: check it once (say, with an empty line in
    /// `on_worker_start`, which writes nothing) to skip formatting lines nobody keeps.
    pub fn access_log(&mut self, line: impl AsRef<[u8]>) -> bool {
        self.raw.access_log(RSlice::from_slice(line.as_ref()))
    }
}

/// The process at the other end of a Unix socket ([`Host::peer_cred`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Its process id.
    pub pid: u32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
}

impl Host<'_> {
    /// Runs `job` on the worker's task pool, off the event loop: for what blocks (reading files,
    /// a blocking library) or computes for long. The pool has the service's `task_threads`
    /// threads (started at the first task) and a bounded queue. The result comes back on the
    /// loop as [`Protocol::on_task_done`] with the id returned here; a job that panics comes back
    /// as `Err` with the panic's message (the worker lives on). The job must not touch the
    /// plugin's loop state: it owns what it needs (clone an `Arc`, a file handle) and returns
    /// bytes. Tasks of a connection that closed meanwhile still end with `on_task_done`.
    pub fn spawn_task<F>(&mut self, job: F) -> Result<TaskId, TaskError>
    where
        F: FnOnce() -> Vec<u8> + Send + 'static,
    {
        match self.raw.submit_task(crate::glue::job(job)) {
            id if id > 0 => Ok(TaskId(id as u64)),
            code if code == abi::TaskStatus::QUEUE_FULL.0 as i64 => Err(TaskError::QueueFull),
            _ => Err(TaskError::Unsupported),
        }
    }

    /// Queues `len` bytes of `file` from `offset` on the connection's output, after what was
    /// sent before and before what is sent after, without the plugin reading or buffering them:
    /// the host keeps its own descriptor of the file (drop `file` when you like) and writes the
    /// range as the socket takes it, with `sendfile(2)` on plain TCP or Unix streams (zero copy)
    /// and by reading and encrypting it under TLS. It counts toward the send buffer like a
    /// [`Host::send`] of `len` bytes (the same refusal when the buffer is already full,
    /// [`Protocol::on_buffer_full`], [`Protocol::on_buffer_drain`] once all of it is written). A
    /// file that turns out shorter than `offset + len` closes the connection: the length it
    /// promised cannot be kept. `sendfile` reads through the page cache inside the worker's
    /// loop: a range that is not cached waits for the disk there (see the docs, "Sending
    /// files"). [`SendFileError::Unsupported`] from a host older than plugin-api 0.1.2: read
    /// the file and `send` it instead.
    pub fn send_file(
        &mut self,
        conn: ConnId,
        file: &std::fs::File,
        offset: u64,
        len: u64,
    ) -> Result<(), SendFileError> {
        use std::os::fd::AsRawFd;
        match self.raw.send_file(conn, file.as_raw_fd(), offset, len) {
            0.. => Ok(()),
            code if code == abi::SendFileStatus::REFUSED.0 as i64 => Err(SendFileError::Refused),
            code if code == abi::SendFileStatus::BAD_FILE.0 as i64 => Err(SendFileError::BadFile),
            code if code == abi::SendFileStatus::NOT_A_STREAM.0 as i64 => Err(SendFileError::NotAStream),
            _ => Err(SendFileError::Unsupported),
        }
    }

    /// A handle for the plugin's own threads to wake the loop with data: each
    /// [`Notifier::notify`] is heard as [`Protocol::on_notify`] on the loop thread. `None` from
    /// a host too old to offer it. Cheap to clone; keep one.
    pub fn notifier(&mut self) -> Option<Notifier> {
        self.raw.notifier().into_option().map(Notifier)
    }
}

/// The id of a task ([`Host::spawn_task`]), given back with its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

/// Why [`Host::spawn_task`] did not take a job. More reasons may come: match with `_ =>`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskError {
    /// The host has no task pool (older than plugin-api 0.1.2).
    Unsupported,
    /// The pool's queue is full (the service's `task_queue`): try later, or do less.
    QueueFull,
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TaskError::Unsupported => "the host has no task pool",
            TaskError::QueueFull => "the task queue is full",
        })
    }
}

impl std::error::Error for TaskError {}

/// Wakes the worker's loop with data from any thread ([`Host::notifier`]). `Send + Sync +
/// Clone`; it only queues bytes, never touches the loop's state.
#[derive(Clone)]
pub struct Notifier(abi::RawNotifierBox);

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Notifier")
    }
}

impl Notifier {
    /// Queues `data` for [`Protocol::on_notify`] and wakes the loop. The queue is bounded
    /// ([`crate::abi::MAX_NOTIFY_QUEUE`] messages of at most
    /// [`crate::abi::MAX_NOTIFY_MESSAGE`] bytes): past it the message is dropped (and counted).
    pub fn notify(&self, data: &[u8]) -> Result<(), NotifyError> {
        match abi::NotifyStatus(self.0.notify(RSlice::from_slice(data))) {
            abi::NotifyStatus::QUEUED => Ok(()),
            abi::NotifyStatus::FULL => Err(NotifyError::Full),
            abi::NotifyStatus::TOO_LARGE => Err(NotifyError::TooLarge),
            _ => Err(NotifyError::Gone),
        }
    }
}

/// Why [`Notifier::notify`] did not queue a message. More reasons may come: match with `_ =>`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyError {
    /// The queue is full: the loop does not keep up. The message is dropped.
    Full,
    /// Over [`crate::abi::MAX_NOTIFY_MESSAGE`] bytes.
    TooLarge,
    /// The worker exited.
    Gone,
}

impl std::fmt::Display for NotifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NotifyError::Full => "the notify queue is full",
            NotifyError::TooLarge => "the message is over the notify limit",
            NotifyError::Gone => "the worker is gone",
        })
    }
}

impl std::error::Error for NotifyError {}

/// Why [`Host::send_file`] queued nothing. More reasons may come: match with `_ =>`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFileError {
    /// The host cannot send files (older than plugin-api 0.1.2): read the file and `send` it.
    Unsupported,
    /// The connection is closed, not connected yet, or its send buffer is full (as
    /// [`Host::send`] refuses; wait for [`Protocol::on_buffer_drain`]).
    Refused,
    /// Not an open regular file, or the range overflows.
    BadFile,
    /// A UDP session: datagrams carry no file.
    NotAStream,
}

impl std::fmt::Display for SendFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SendFileError::Unsupported => "the host cannot send files",
            SendFileError::Refused => "the connection refused the file (closed or its send buffer is full)",
            SendFileError::BadFile => "not an open regular file, or the range overflows",
            SendFileError::NotAStream => "a UDP session cannot carry a file",
        })
    }
}

impl std::error::Error for SendFileError {}

/// Why a message between workers was not sent ([`Host::broadcast`], [`Host::send_to_worker`]).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMsgError {
    /// The host is too old to pass messages between workers.
    Unsupported,
    /// The message is over [`crate::abi::MAX_WORKER_MESSAGE`] bytes.
    TooLarge,
    /// No worker serves that slot, or its mailbox is full, or it is gone.
    Dropped,
}

impl std::fmt::Display for WorkerMsgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkerMsgError::Unsupported => "the host does not pass messages between workers",
            WorkerMsgError::TooLarge => "the message is over the 64 KiB limit",
            WorkerMsgError::Dropped => "no worker took the message",
        })
    }
}

impl std::error::Error for WorkerMsgError {}

fn worker_msg_result(answer: i64) -> Result<u64, WorkerMsgError> {
    match answer {
        n if n >= 0 => Ok(n as u64),
        n if n == abi::WorkerMsgStatus::TOO_LARGE.0 as i64 => Err(WorkerMsgError::TooLarge),
        // UNSUPPORTED, and any status this SDK does not know.
        _ => Err(WorkerMsgError::Unsupported),
    }
}

/// A counter registered with [`Host::counter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counter(u32);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn sock_addr(raw: RawSockAddr) -> Option<SocketAddr> {
    let ip = match raw.family {
        4 => IpAddr::V4(Ipv4Addr::new(raw.ip[0], raw.ip[1], raw.ip[2], raw.ip[3])),
        6 => IpAddr::V6(Ipv6Addr::from(raw.ip)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, raw.port))
}

/// Converts a socket address for the ABI (used by the host).
pub fn raw_sock_addr(addr: Option<SocketAddr>) -> RawSockAddr {
    match addr {
        Some(SocketAddr::V4(a)) => {
            let mut ip = [0u8; 16];
            ip[..4].copy_from_slice(&a.ip().octets());
            RawSockAddr { family: 4, port: a.port(), ip }
        }
        Some(SocketAddr::V6(a)) => RawSockAddr { family: 6, port: a.port(), ip: a.ip().octets() },
        None => RawSockAddr { family: 0, port: 0, ip: [0; 16] },
    }
}

/// A protocol handler: one instance per worker. Only [`Protocol::new`], [`Protocol::input`] and
/// [`Protocol::on_message`] are required; every other event has a sensible default.
///
/// A panic in any of these is caught by the glue: the connection concerned is closed, the panic
/// is logged, and the worker goes on serving.
pub trait Protocol: Sized + 'static {
    /// Builds the instance from the service's `config` (TOML text; empty when there is none).
    fn new(config: &str, worker: &WorkerInfo) -> Result<Self, String>;

    /// Called once the worker is up, before it accepts. An error stops the worker before it
    /// reports ready (a reload is then aborted and the old workers keep serving).
    fn on_worker_start(&mut self, _host: &mut Host<'_>) -> Result<(), String> {
        Ok(())
    }
    /// Called once before the worker exits.
    fn on_worker_stop(&mut self, _host: &mut Host<'_>) {}
    /// Called instead of a restart on services that are not reloadable.
    fn on_worker_reload(&mut self, _host: &mut Host<'_>) {}
    /// A new connection was accepted, or an outbound one ([`Host::connect`]) is established
    /// ([`Host::is_outbound`] tells which).
    fn on_connect(&mut self, _host: &mut Host<'_>, _conn: ConnId) {}

    /// Framing: how long is the next message in `buf` (the bytes buffered on `conn`)?
    fn input(&mut self, host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame;

    /// One complete message, as delimited by [`Protocol::input`].
    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]);

    /// The connection is closed (drop its state: its id is stale from now on).
    fn on_close(&mut self, _host: &mut Host<'_>, _conn: ConnId) {}
    /// An error on the connection. The default closes the connection (after whatever is queued).
    fn on_error(&mut self, host: &mut Host<'_>, conn: ConnId, _err: ConnError) {
        host.close(conn);
    }
    /// The connection's send buffer is full: the host stops reading from it until it drains.
    fn on_buffer_full(&mut self, _host: &mut Host<'_>, _conn: ConnId) {}
    /// The connection's send buffer drained below the limit after [`Protocol::on_buffer_full`].
    fn on_buffer_drain(&mut self, _host: &mut Host<'_>, _conn: ConnId) {}
    /// A timer fired, with the `data` given to [`Host::add_timer`] or [`Host::add_interval`].
    fn on_timer(&mut self, _host: &mut Host<'_>, _timer: TimerId, _data: u64) {}
    /// The worker is draining (graceful stop or reload); called for every established
    /// connection, outbound ones included. The default closes the connection once what is queued
    /// is flushed; a request/response protocol closes after the response in flight.
    fn on_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        host.close(conn);
    }
    /// A message from another worker of the service ([`Host::broadcast`] or
    /// [`Host::send_to_worker`]), sent by the worker of `from_slot`.
    fn on_worker_message(&mut self, _host: &mut Host<'_>, _from_slot: u32, _msg: &[u8]) {}
    /// A task of [`Host::spawn_task`] ended: its bytes, or `Err` with the message of its panic.
    /// On the loop thread, also while the worker drains.
    fn on_task_done(&mut self, _host: &mut Host<'_>, _task: TaskId, _result: Result<Vec<u8>, String>) {}
    /// Bytes a thread of the plugin queued with [`Notifier::notify`], in order, on the loop thread.
    fn on_notify(&mut self, _host: &mut Host<'_>, _data: &[u8]) {}
    /// The peer of `conn` finished sending: it half-closed (`shutdown(SHUT_WR)`, `nc -q1`) or
    /// closed; every message it sent was dispatched before this. Nothing more is read. The default,
    /// [`InputEnd::Close`], closes once what is queued is written; [`InputEnd::KeepOpen`] keeps
    /// the write side open for an answer still to come, until [`Host::close`] (or the idle
    /// timeout). A host older than plugin-api 0.1.3 does not call it and closes.
    fn on_input_end(&mut self, _host: &mut Host<'_>, _conn: ConnId) -> InputEnd {
        InputEnd::Close
    }

    // Hand-over (plugin-api 0.1.4): on a reload, upgrade or recycle the old worker's
    // connections move to its replacement with the state the plugin writes for them, instead of
    // draining. See "Hand-over" in docs/plugins.md.

    /// The version of the state [`Protocol::export_conn`] and [`Protocol::export_worker`]
    /// write (the plugin's own numbering: bump it when the format changes). 0, the default: the
    /// plugin does not take part and its workers drain on a replacement.
    const HANDOVER_VERSION: u32 = 0;

    /// In the replacement, before anything moves: whether this instance reads state that
    /// `plugin` exported at `version` (an older release's, or a newer one's after a roll-back).
    /// The default accepts its own [`Protocol::HANDOVER_VERSION`] only. False: nothing moves,
    /// the old worker drains.
    fn handover_accepts(&mut self, _host: &mut Host<'_>, _plugin: &str, version: u32) -> bool {
        version == Self::HANDOVER_VERSION
    }

    /// In the old worker: writes what the replacement needs to resume `conn` (its session, a
    /// half-read request's parser state…) to `out` and answers true; false (the default)
    /// declines, and the connection drains here as before. Keep the state: should the
    /// replacement fail, the connection resumes in this instance (it hears nothing more of a
    /// connection that moved: no `on_close`). The host moves the bytes it buffered itself
    /// (unread input, queued output, files queued by `send_file`): write only the plugin's own.
    fn export_conn(&mut self, _host: &mut Host<'_>, _conn: ConnId, _out: &mut StateWriter<'_>) -> bool {
        false
    }

    /// In the replacement: `conn` (an id of this worker) arrives with what the old instance's
    /// [`Protocol::export_conn`] wrote, at `version`. True: adopted (no `on_connect`: the
    /// connection goes on where it was); false: it goes back to the old worker and drains there.
    fn adopt_conn(&mut self, _host: &mut Host<'_>, _conn: ConnId, _version: u32, _state: &[u8]) -> bool {
        false
    }

    /// Whether the connections may move in batches (`handover_in_batches` in the ABI): the
    /// worker state first, then a batch of connections at a time, the old instance serving
    /// those not moved yet meanwhile, so that each client's pause is its batch's and not the
    /// whole worker's (10,000 connections). Answer true only when serving a connection changes
    /// nothing [`Protocol::export_worker`] moves (or it moves nothing) and no connection's
    /// handling reaches another connection but through the host's topics ([`Host::publish`]
    /// reaches the members in both workers, each message once; a plugin-kept room sending to its
    /// members does not: once a batch moved, this instance no longer has its connections, and a
    /// membership changed here after the worker state went is lost). False (the default): every
    /// connection stops at once, then they move.
    fn handover_in_batches(&self) -> bool {
        false
    }

    /// In the old worker, after its connections: the worker-wide state (a keyspace, rooms),
    /// written as it is serialised (large state goes to a memfd without a second copy). True
    /// (the default: nothing to write) moves it; false moves nothing at all (the worker drains).
    fn export_worker(&mut self, _host: &mut Host<'_>, _out: &mut StateWriter<'_>) -> bool {
        true
    }

    /// In the replacement, before the connections arrive: what [`Protocol::export_worker`]
    /// wrote, at `version` (a slice of a read-only mapping for large state: parse it, do not
    /// keep it). False: the hand-over fails, the old worker takes everything back and drains.
    fn adopt_worker(&mut self, _host: &mut Host<'_>, _version: u32, _state: &[u8]) -> bool {
        true
    }

    /// A message published on a topic the worker subscribed to itself
    /// ([`Host::subscribe_worker`]), once per message, wherever in the service or its cluster
    /// it was published (this worker included). A host older than plugin-api 0.1.4 never calls it.
    fn on_publish(&mut self, _host: &mut Host<'_>, _topic: &[u8], _msg: &[u8]) {}

    /// In the replacement (or the old worker, for a connection it takes back), right after
    /// [`Protocol::adopt_conn`]: a message on `topic` that `conn` hears through
    /// [`Protocol::on_publish`] (the old instance said so with [`Host::handover_hears`]) and
    /// missed across its move. Write it to `conn` alone, as `on_publish` would have; the host
    /// calls it for each missed message, in order, before any later `on_publish`. The default:
    /// nothing (a plugin that never calls `handover_hears` never hears it).
    fn on_publish_missed(&mut self, _host: &mut Host<'_>, _conn: ConnId, _topic: &[u8], _msg: &[u8]) {}
    // Pre-copy (plugin-api 0.1.4): a large worker state (a keyspace) goes out in steps while
    // the old worker serves; `export_worker` then writes only what changed meanwhile, with the
    // connections stopped. See "Pre-copy" in docs/plugins.md.

    /// Whether this instance adopts steps ([`Protocol::adopt_worker_step`]) in a replacement.
    /// False (the default): the old worker writes no step, its whole state goes in
    /// [`Protocol::export_worker`].
    const HANDOVER_STEPS: bool = false;

    /// In the old worker, once per loop turn before its connections stop (only when the
    /// replacement adopts steps): writes the next slice of the worker state to `out` (a few MiB
    /// or milliseconds: this worker's clients wait for this turn). [`ExportStep::More`]: another
    /// turn follows; [`ExportStep::Ready`] (the default, having written nothing): the copy is
    /// over and [`Protocol::export_worker`] follows, which then writes what changed since the
    /// first step (the instance records it from that call on); [`ExportStep::Failed`]: the
    /// hand-over fails (the old worker keeps everything).
    fn export_worker_step(&mut self, _host: &mut Host<'_>, _out: &mut StateWriter<'_>) -> ExportStep {
        ExportStep::Ready
    }

    /// In the replacement, for each step in order: a slice of the old instance's worker state,
    /// at `version`. Keep it aside (staged) until [`Protocol::adopt_worker`] commits it: nothing
    /// of it may be served before (the hand-over can still fail). False (the default): the
    /// hand-over fails.
    fn adopt_worker_step(&mut self, _host: &mut Host<'_>, _version: u32, _state: &[u8]) -> bool {
        false
    }

    /// A hand-over with steps ended without its last part (or the last part was refused): in
    /// the old worker, stop recording changes for the copy; in the replacement, drop what the
    /// steps staged.
    fn drop_worker_steps(&mut self, _host: &mut Host<'_>) {}
}

/// What [`Protocol::export_worker_step`] answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportStep {
    /// Another step follows at the next loop turn.
    More,
    /// The copy is over; `export_worker` follows.
    Ready,
    /// The step could not be written: the hand-over fails.
    Failed,
}

/// Where a plugin writes its hand-over state ([`Protocol::export_conn`],
/// [`Protocol::export_worker`]): a [`std::io::Write`] whose bytes the host stores as they
/// come. Write in pieces of any size; a failed write means the host could not store it (the
/// export then fails whatever the plugin answers).
pub struct StateWriter<'a> {
    sink: abi::RawStateSinkRef<'a>,
    written: u64,
    failed: bool,
}

impl<'a> StateWriter<'a> {
    /// A writer over the host's sink (used by the glue and [`crate::testing`]).
    pub fn new(sink: abi::RawStateSinkRef<'a>) -> Self {
        StateWriter { sink, written: 0, failed: false }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// A write failed (the host could not store the bytes).
    pub fn failed(&self) -> bool {
        self.failed
    }
}

impl std::io::Write for StateWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failed || !self.sink.write(RSlice::from_slice(buf)) {
            self.failed = true;
            return Err(std::io::Error::new(std::io::ErrorKind::OutOfMemory, "the host could not store the state"));
        }
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Per-connection state of a plugin, indexed by [`ConnId`] in O(1). Entries of a closed
/// connection must be removed in `on_close`; a stale id never reaches a newer entry.
#[derive(Debug)]
pub struct ConnMap<T> {
    slots: Vec<Option<(ConnId, T)>>,
}

impl<T> Default for ConnMap<T> {
    fn default() -> Self {
        ConnMap { slots: Vec::new() }
    }
}

impl<T> ConnMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the entry of `conn`, returning the previous value of that same connection.
    pub fn insert(&mut self, conn: ConnId, value: T) -> Option<T> {
        let i = conn.index();
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        self.slots[i].replace((conn, value)).filter(|(c, _)| *c == conn).map(|(_, v)| v)
    }

    /// The entry of `conn`, if it has one.
    pub fn get(&self, conn: ConnId) -> Option<&T> {
        match self.slots.get(conn.index()) {
            Some(Some((c, v))) if *c == conn => Some(v),
            _ => None,
        }
    }

    /// The entry of `conn`, if it has one.
    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut T> {
        match self.slots.get_mut(conn.index()) {
            Some(Some((c, v))) if *c == conn => Some(v),
            _ => None,
        }
    }

    /// The entry for `conn`, created with `T::default()` when missing (one look-up, inlined:
    /// plugins call this for every message; the creation is out of line).
    #[inline]
    pub fn entry(&mut self, conn: ConnId) -> &mut T
    where
        T: Default,
    {
        let i = conn.index();
        if !matches!(self.slots.get(i), Some(Some((c, _))) if *c == conn) {
            self.create(conn);
        }
        match &mut self.slots[i] {
            Some((_, v)) => v,
            None => unreachable!("created above"),
        }
    }

    /// A new default entry for `conn` (its slot empty, or left by an older connection).
    #[cold]
    #[inline(never)]
    fn create(&mut self, conn: ConnId)
    where
        T: Default,
    {
        self.insert(conn, T::default());
    }

    /// Removes and returns the entry of `conn` (never that of a newer connection at its index).
    pub fn remove(&mut self, conn: ConnId) -> Option<T> {
        let slot = self.slots.get_mut(conn.index())?;
        match slot {
            Some((c, _)) if *c == conn => slot.take().map(|(_, v)| v),
            _ => None,
        }
    }

    /// How many connections have an entry (counts; not O(1)).
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// True when no connection has an entry.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| s.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_map_ignores_stale_ids() {
        let mut m = ConnMap::new();
        let old = ConnId::new(3, 1);
        let new = ConnId::new(3, 2);
        m.insert(old, "old");
        assert_eq!(m.get(old), Some(&"old"));
        assert_eq!(m.get(new), None);
        assert_eq!(m.remove(new), None, "a stale id must not remove a newer entry");
        m.insert(new, "new");
        assert_eq!(m.get(old), None);
        assert_eq!(m.remove(new), Some("new"));
        assert!(m.is_empty());
    }

    #[test]
    fn conn_map_entry_defaults() {
        let mut m: ConnMap<u32> = ConnMap::new();
        let c = ConnId::new(0, 7);
        *m.entry(c) += 2;
        *m.entry(c) += 3;
        assert_eq!(m.get(c), Some(&5));
        assert_eq!(m.len(), 1);
        // A newer connection at the same index starts from the default, not the old entry.
        let newer = ConnId::new(0, 8);
        assert_eq!(*m.entry(newer), 0);
        assert_eq!(m.get(c), None);
        // An index past the end grows the map.
        *m.entry(ConnId::new(9, 1)) += 4;
        assert_eq!(m.get(ConnId::new(9, 1)), Some(&4));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn sock_addr_round_trips() {
        for a in ["127.0.0.1:8080", "[::1]:443"] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(sock_addr(raw_sock_addr(Some(a))), Some(a));
        }
        assert_eq!(sock_addr(raw_sock_addr(None)), None);
    }

    #[test]
    fn conn_id_packs_index_and_generation() {
        let c = ConnId::new(42, 9);
        assert_eq!(c.index(), 42);
        assert_eq!(c.generation(), 9);
    }
}
