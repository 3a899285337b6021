//! The raw ABI: what crosses between the host and a plugin `.so`.
//!
//! Everything here is `#[repr(C)]` and `StableAbi`, so abi_stable checks the layout when the host
//! loads a plugin and refuses one built against an incompatible `plugin-api`.
//!
//! Plugin authors do not use these types directly: they implement [`crate::Protocol`] and call
//! [`crate::export_plugin!`].
//!
//! # ABI evolution policy
//!
//! A plugin built against any earlier `plugin-api` 0.1.x must keep loading in every later host,
//! and a plugin built against a later 0.1.x loads in an earlier host as long as it does not need
//! what is new. When the host loads a plugin, abi_stable checks (1) the version of this crate:
//! same major, and for 0.x the host's minor must not be above the plugin's (the patch is not
//! compared); (2) the layout of every type reachable from the root module, each type's name and
//! package equal and its version "loosely compatible" (same `0.x` minor). For prefix types (the
//! root module, [`WorkerEnv`], the `sabi_trait` vtables) the plugin may have **more** fields
//! than the host, never fewer: a host whose prefix type grew refuses every plugin built before
//! the growth (a field-count error, `abi_checking.rs`). Hence:
//!
//! - **Versions.** `plugin-api` has a version of its own, independent of the workspace's. Only
//!   the patch number moves (0.1.0 → 0.1.1 → …) when the ABI grows compatibly. A minor bump
//!   (0.2) refuses every plugin ever built: it is reserved for a deliberate break.
//! - **[`ABI_VERSION`]** changes only when the *meaning* of an existing item changes (a field
//!   read differently, an event with a new contract). Growth by these rules keeps it.
//! - **Closed since 0.1.3: [`PluginMod`], [`WorkerEnv`], [`RawPlugin`], [`RawHost`],
//!   [`RawJob`] and [`RawNotifier`] never grow again** (every one is reachable from the root
//!   module, so its growth would refuse older plugins). Releases 0.1.0 to 0.1.2 grew them and are frozen in `crate::frozen`
//!   (`v0_1_0`, `v0_1_1`, `v0_1_2`, hidden from the docs: the root module and vtables as each
//!   release declared them, and an adapter to the next release), and the host's table of frozen
//!   releases (`FROZEN_RELEASES` in `host/src/plugin.rs`) loads a plugin of those releases
//!   with them. 0.1.3 added the last method of each vtable: `extension`, and the first event of
//!   the extension (`on_input_end`, before 0.1.3 shipped: no plugin of 0.1.3 lacks it).
//! - **New events are methods of [`RawPluginExt`], new host calls methods of [`RawHostExt`]**,
//!   added at the end, in release order, each with a default body: for an event, what happens
//!   for a plugin that lacks it (a no-op, or a call of the older event it replaces); for a host
//!   call, what a newer plugin gets from an older host (an explicit "unsupported" answer, never
//!   undefined behaviour). The extensions cross the boundary with their layout
//!   ([`PluginExtension`], [`HostExtension`]), which the receiving side checks with abi_stable's
//!   checker once ([`check_extension_layout`]): the methods both sides declare must agree, the
//!   ones only one side has are read as absent and answer their default. So a release adds
//!   its methods and nothing else: no frozen copy, no host table entry, no adapter.
//! - **What a release adds** (the checklist): (1) bump the patch in `plugin-api/Cargo.toml`;
//!   (2) the new methods at the end of [`RawPluginExt`] / [`RawHostExt`] under a
//!   `// --- Added in plugin-api 0.1.N` line, with default bodies; (3) the SDK side: a
//!   `Protocol` method with a default and its glue in `glue.rs` (`impl RawPluginExt for
//!   Glue<P>`), a `Host` method that reaches the host's extension (`HostExtension::check` then
//!   the call); (4) the host side: the worker's `RawHostExt` implementation (its `RawHost`
//!   impl answers `extension` with it) and the calls of the new events through
//!   `plugin.extension().ext`; (5) freeze the release that just shipped as a fixture:
//!   `tests/fixtures/old_abi_0_1_N` (a copy of that `plugin-api` and a small plugin that uses
//!   what that release added), loaded by `tests/tests/integration/abi.rs`. A new *type* used
//!   by a new method is declared once and never changes.
//! - **Only if the closed types must change anyway** (a deliberate decision: it costs a frozen
//!   copy): copy their declarations as released into `crate::frozen::vX_Y_Z` with an adapter to
//!   the next release (the blocks of events and calls of each release are one macro each in
//!   `crate::frozen`), and add the release to the host's table.
//! - **Existing methods and fields never change type**, are never removed, renamed or reordered.
//! - **Enums are exhaustive for abi_stable** (it compares kind and variants): [`ConnError`],
//!   [`RawFrame`], [`CallStatus`] and [`LogLevel`] can never gain a variant. A new enum that may
//!   grow is a `#[repr(transparent)] struct X(u8)` with associated consts ([`ConnErrorCode`]);
//!   a receiver must handle values it does not know. (abi_stable's `NonExhaustive` enums also
//!   refuse a host with more variants than the plugin: not a way to grow here.)
//! - **Plain `repr(C)` structs never change** ([`RawWorkerInfo`], [`RawSockAddr`]). What the
//!   host tells a plugin later goes through a host call of the extension.
//! - **Proof.** `tests/fixtures/old_abi` freezes `plugin-api` 0.1.0 and a plugin built against
//!   it, `tests/fixtures/old_abi_0_1_1`, `old_abi_0_1_2` and `old_abi_0_1_3` do the same for
//!   0.1.1, 0.1.2 and 0.1.3 (whose plugin uses the extension's `on_input_end`); the integration
//!   tests load all four into the current host.

use std::sync::atomic::{AtomicPtr, Ordering};

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_trait::TD_Opaque,
    sabi_types::{RMut, VersionStrings},
    std_types::{RArc, RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    type_layout::TypeLayout,
    StableAbi,
};

/// Bumped on any change of the meaning (not only the layout) of the ABI; growth by the policy
/// above keeps it.
pub const ABI_VERSION: u32 = 1;

/// Identifies one connection inside one worker. The low 32 bits are a dense index (reused after
/// a close), the high 32 bits a generation, so a stale id never names a newer connection.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// The id of the connection at `index` in its `generation`.
    pub const fn new(index: u32, generation: u32) -> Self {
        ConnId(((generation as u64) << 32) | index as u64)
    }
    /// Dense index, suitable for indexing a `Vec` (see [`crate::ConnMap`]).
    pub const fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    /// How many connections used this index before this one.
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Identifies a timer inside one worker.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub u64);

/// What the plugin's framing step says about the bytes buffered on a connection. Exhaustive:
/// can never gain a variant (see the policy above).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFrame {
    /// No complete message yet; call again when more bytes arrived.
    NeedMore,
    /// The next message is this many bytes long (it may not all be buffered yet: the host waits
    /// for the rest, and refuses it at once when it is over the max package size).
    Complete(u64),
    /// The bytes can never become a valid message: the connection is closed once what the plugin
    /// queued (an error response, say) is flushed.
    Invalid,
    /// The plugin panicked (caught by the glue); the host closes the connection.
    Panicked,
}

/// Result of a plugin callback that cannot fail otherwise. Exhaustive: can never gain a variant.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    /// The callback returned.
    Ok,
    /// The plugin panicked (caught by the glue); when the call was about a connection, the host
    /// closes that connection.
    Panicked,
}

/// Why the host reports an error on a connection, as ABI 1 first said it (`on_error`).
/// Exhaustive, so frozen: new reasons are [`ConnErrorCode`]s (`on_conn_error`).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// Why the host reports an error on a connection: a growable code (`on_conn_error`). A plugin
/// must expect codes it does not know (a newer host's); [`ConnErrorCode::closest_conn_error`]
/// maps every code to the nearest [`ConnError`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnErrorCode(pub u8);

impl ConnErrorCode {
    /// [`ConnError::PackageTooLarge`].
    pub const PACKAGE_TOO_LARGE: Self = ConnErrorCode(0);
    /// [`ConnError::Timeout`].
    pub const TIMEOUT: Self = ConnErrorCode(1);
    /// [`ConnError::SendFailed`].
    pub const SEND_FAILED: Self = ConnErrorCode(2);
    /// [`ConnError::Io`].
    pub const IO: Self = ConnErrorCode(3);
    /// An outbound connection was refused by its peer.
    pub const CONNECT_REFUSED: Self = ConnErrorCode(4);
    /// An outbound connection was not established in time.
    pub const CONNECT_TIMEOUT: Self = ConnErrorCode(5);
    /// The TLS handshake failed; the connection is gone.
    pub const TLS_HANDSHAKE: Self = ConnErrorCode(6);

    /// The [`ConnError`] an older plugin hears for this code: itself for the four ABI 1 reasons,
    /// [`ConnError::Io`] (the connection is gone) for every other.
    pub const fn closest_conn_error(self) -> ConnError {
        match self {
            Self::PACKAGE_TOO_LARGE => ConnError::PackageTooLarge,
            Self::TIMEOUT => ConnError::Timeout,
            Self::SEND_FAILED => ConnError::SendFailed,
            _ => ConnError::Io,
        }
    }
}

impl From<ConnError> for ConnErrorCode {
    fn from(err: ConnError) -> Self {
        match err {
            ConnError::PackageTooLarge => Self::PACKAGE_TOO_LARGE,
            ConnError::Timeout => Self::TIMEOUT,
            ConnError::SendFailed => Self::SEND_FAILED,
            ConnError::Io => Self::IO,
        }
    }
}

/// Why `RawHost::connect` could not even start a connection: a growable code (a plugin must
/// expect codes it does not know). Failures after the start arrive as `on_conn_error`.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnectErrorCode(pub u8);

impl ConnectErrorCode {
    /// The host is too old to open connections.
    pub const UNSUPPORTED: Self = ConnectErrorCode(0);
    /// The address is neither `ip:port`, `[ipv6]:port` nor `name:port`.
    pub const INVALID_ADDRESS: Self = ConnectErrorCode(1);
    /// The worker is at its max connections.
    pub const LIMIT: Self = ConnectErrorCode(2);
    /// The socket could not be created or registered (out of descriptors, say).
    pub const IO: Self = ConnectErrorCode(3);
}

/// Severity of a log record sent by a plugin, ordered like `tracing::Level` (TRACE is 0).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// An IPv4 or IPv6 socket address, FFI-safe. `family` is 4 or 6 (0: none, e.g. a Unix socket).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSockAddr {
    /// 4, 6, or 0 (no address).
    pub family: u8,
    /// The port, in host byte order.
    pub port: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub ip: [u8; 16],
}

/// Where the plugin's log records go: the host turns them into `tracing` events of its own.
pub type LogFn = extern "C" fn(level: LogLevel, target: RStr<'_>, message: RStr<'_>);

/// What the host tells a plugin when it builds its instance in a worker, through `new` (ABI 1).
/// A plain struct, so frozen: newer hosts pass a [`WorkerEnv`] to `new_v2` instead.
#[repr(C)]
#[derive(StableAbi)]
pub struct RawWorkerInfo<'a> {
    /// The service's name.
    pub service: RStr<'a>,
    /// The worker's slot within its service (0-based).
    pub slot: u32,
    /// The worker's process id.
    pub pid: u32,
    /// The service's largest message: the host refuses longer ones (`on_error(PackageTooLarge)`).
    pub max_package_size: u64,
    /// The send buffer: output queued above it makes the connection "full" (`on_buffer_full`,
    /// later `on_buffer_drain`), so a plugin streaming a large answer sends up to it at a time.
    pub max_send_buffer: u64,
    /// Records less severe than this are dropped inside the plugin, before formatting.
    pub max_log_level: LogLevel,
    /// Where the plugin's log records go.
    pub log: extern "C" fn(level: LogLevel, target: RStr<'_>, message: RStr<'_>),
}

/// What the host tells a plugin when it builds its instance in a worker, through `new_v2`. A
/// prefix type, closed since 0.1.3 (see the policy above: what the host tells later is a call of
/// [`RawHostExt`]). The host builds one per worker process and never frees it (it is `'static`: a plugin may
/// keep the [`WorkerEnvRef`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = WorkerEnvRef)))]
#[sabi(missing_field(option))]
pub struct WorkerEnv {
    /// The service's name.
    pub service: RStr<'static>,
    /// The worker's slot within its service (0-based).
    pub slot: u32,
    /// The worker's process id.
    pub pid: u32,
    /// The service's largest message: the host refuses longer ones (`PACKAGE_TOO_LARGE`).
    pub max_package_size: u64,
    /// The send buffer: output queued above it makes the connection "full".
    pub max_send_buffer: u64,
    /// Records less severe than this are dropped inside the plugin, before formatting.
    pub max_log_level: LogLevel,
    /// Where the plugin's log records go.
    pub log: extern "C" fn(level: LogLevel, target: RStr<'_>, message: RStr<'_>),
    /// How many workers the service has (its `count`).
    #[sabi(last_prefix_field)]
    pub worker_count: u32,
}

/// What the host offers a plugin during a callback.
#[sabi_trait]
pub trait RawHost {
    /// Appends `data` to the connection's output. False when the connection is closed or its
    /// send buffer is full (the plugin then also hears `on_conn_error(SEND_FAILED)`).
    fn send(&mut self, conn: ConnId, data: RSlice<'_, u8>) -> bool;
    /// Closes the connection once `last` and everything queued before it is flushed.
    fn close(&mut self, conn: ConnId, last: RSlice<'_, u8>);
    /// Stops (true) or restarts (false) reading from the connection.
    fn pause_recv(&mut self, conn: ConnId, paused: bool);
    /// The connection's peer address (family 0 when unknown).
    fn peer_addr(&self, conn: ConnId) -> RawSockAddr;
    /// The connection's local address (family 0 when unknown).
    fn local_addr(&self, conn: ConnId) -> RawSockAddr;
    /// Bytes queued on the connection and not yet written to the socket.
    fn pending_send(&self, conn: ConnId) -> u64;
    /// Starts a timer firing after `delay_ms`, then every `interval_ms` (0: once). `data` comes
    /// back in `on_timer`.
    fn add_timer(&mut self, delay_ms: u64, interval_ms: u64, data: u64) -> TimerId;
    /// Deletes a timer; false when there was none.
    fn del_timer(&mut self, timer: TimerId) -> bool;
    /// The worker's slot within its service (0-based).
    fn slot(&self) -> u32;
    /// The service's name.
    fn service(&self) -> RStr<'_>;
    /// True once the worker was asked to drain (graceful stop or reload).
    fn is_draining(&self) -> bool;
    /// Milliseconds on the worker's monotonic clock, cached once per loop turn.
    #[sabi(last_prefix_field)]
    fn now_ms(&self) -> u64;

    // --- Added in plugin-api 0.1.1. Every method below has a default body: what a plugin gets
    // --- from an older host that lacks it ("unsupported").

    /// How many workers the service has; 0 when the host is too old to say.
    fn worker_count(&self) -> u32 {
        0
    }

    /// Registers (or finds) a counter of this plugin, reported in the host's metrics as
    /// `host_plugin_NAME_total` with the worker's service and slot and `labels` (`key=value`
    /// pairs separated by commas; may be empty). Returns its id, or [`NO_COUNTER`] when the name
    /// or labels are invalid or the host is too old to count.
    fn counter(&mut self, name: RStr<'_>, labels: RStr<'_>, help: RStr<'_>) -> u32 {
        let _ = (name, labels, help);
        NO_COUNTER
    }

    /// Adds `delta` to a counter [`RawHost::counter`] returned (unknown ids are ignored).
    fn counter_add(&mut self, counter: u32, delta: u64) {
        let _ = (counter, delta);
    }

    /// Opens an outbound TCP connection to `addr` (`"127.0.0.1:9001"`, `"[::1]:80"`, or
    /// `"name:port"`, resolved off the worker's loop), giving up after `timeout_ms` (0: the
    /// host's default). The id is valid at once; the plugin hears `on_connect` once connected,
    /// or `on_conn_error` (`CONNECT_REFUSED`, `CONNECT_TIMEOUT`, `IO`) then `on_close`. Sends
    /// before `on_connect` are refused. An older host answers [`ConnectErrorCode::UNSUPPORTED`].
    fn connect(&mut self, addr: RStr<'_>, timeout_ms: u64) -> RResult<ConnId, ConnectErrorCode> {
        let _ = (addr, timeout_ms);
        RResult::RErr(ConnectErrorCode::UNSUPPORTED)
    }

    /// True for a connection the plugin opened with `connect`, false for an accepted one (and
    /// from an older host, which has no outbound connections).
    fn is_outbound(&self, conn: ConnId) -> bool {
        let _ = conn;
        false
    }

    /// The server name the client asked for with TLS SNI; none on plain TCP, without SNI, or
    /// from a host too old to say.
    fn server_name(&self, conn: ConnId) -> ROption<RStr<'_>> {
        let _ = conn;
        ROption::RNone
    }
    /// Sends `msg` to every other live worker of the service (draining ones too, until they
    /// exit); they hear `on_worker_message`. Answers how many workers it was queued for (a peer
    /// whose mailbox is full or that is gone is skipped and counted as a drop), or a negative
    /// [`WorkerMsgStatus`]: [`WorkerMsgStatus::UNSUPPORTED`] from an older host,
    /// [`WorkerMsgStatus::TOO_LARGE`] for a message over [`MAX_WORKER_MESSAGE`].
    fn broadcast(&mut self, msg: RSlice<'_, u8>) -> i64 {
        let _ = msg;
        WorkerMsgStatus::UNSUPPORTED.0 as i64
    }
    /// Sends `msg` to the serving worker of `slot` (the replacement once promoted). 1 when
    /// queued, 0 when dropped (no such worker, its mailbox is full, it is gone: counted), or a
    /// negative [`WorkerMsgStatus`].
    fn send_to_worker(&mut self, slot: u32, msg: RSlice<'_, u8>) -> i64 {
        let _ = (slot, msg);
        WorkerMsgStatus::UNSUPPORTED.0 as i64
    }

    // --- Added in plugin-api 0.1.2 (0.1.1 is frozen in `frozen::v0_1_1`). Same rule: a default body
    // --- that answers "unsupported".

    /// The credentials of the peer of a Unix-socket connection (`SO_PEERCRED`, read when it was
    /// accepted); none on TCP and UDP, or from a host too old to say.
    fn peer_cred(&self, conn: ConnId) -> ROption<RawPeerCred> {
        let _ = conn;
        ROption::RNone
    }

    // Work off the loop (tasks and notifiers): one block.

    /// Runs `job` on the worker's task pool (threads of its own, started at the first task), off
    /// the event loop; its result comes back on the loop as `on_task_done` with the id returned
    /// here (> 0). A negative [`TaskStatus`] when it was not taken: [`TaskStatus::UNSUPPORTED`]
    /// from an older host, [`TaskStatus::QUEUE_FULL`] when the pool's queue is full.
    fn submit_task(&mut self, job: RawJobBox) -> i64 {
        drop(job);
        TaskStatus::UNSUPPORTED.0 as i64
    }

    /// A handle the plugin's own threads use to wake the loop with data (`on_notify`); none
    /// from an older host. Every call answers a handle to the same queue.
    fn notifier(&mut self) -> ROption<RawNotifierBox> {
        ROption::RNone
    }

    /// Appends one access-log line (`line`, its final newline included) to the service's
    /// access log. The host buffers it and writes whole lines to the file (opened by the master,
    /// reopened by `host reopen-logs`). False when the service has no access log, or from a host
    /// too old to keep one: the plugin may then skip formatting lines at all.
    fn access_log(&mut self, line: RSlice<'_, u8>) -> bool {
        let _ = line;
        false
    }

    /// Queues `len` bytes of the open file `fd` from `offset` on the connection's output, after
    /// everything queued before it (and before whatever is sent after it): the host duplicates
    /// the descriptor (the plugin may close its file at once) and writes the range when the
    /// socket is writable, with `sendfile(2)` on a plain TCP or Unix stream, by reading it and
    /// writing it through TLS on a TLS connection. The range counts toward the send buffer like
    /// a `send` of `len` bytes (the same refusal once full, `on_buffer_full`, `on_buffer_drain`
    /// once all of it is written). A file that ends before `offset + len` closes the connection
    /// (the response's length was promised). Answers 0 when queued (also for `len` 0), or a
    /// negative [`SendFileStatus`].
    fn send_file(&mut self, conn: ConnId, fd: i32, offset: u64, len: u64) -> i64 {
        let _ = (conn, fd, offset, len);
        SendFileStatus::UNSUPPORTED.0 as i64
    }

    // --- Added in plugin-api 0.1.3, the last method of this vtable: it never grows again. Host
    // --- calls added from now on are methods of `RawHostExt`.

    /// The host's extension: the calls added since plugin-api 0.1.3. An older host (and a host
    /// that implements none of them) answers an extension without calls, whose methods answer
    /// their defaults ("unsupported").
    fn extension(&mut self) -> HostExtension<'_> {
        HostExtension::none()
    }
}

/// The process at the other end of a Unix socket, as the kernel saw it when it connected
/// ([`RawHost::peer_cred`]). A plain struct: frozen.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPeerCred {
    /// Its process id.
    pub pid: u32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
}

/// The largest message between workers ([`RawHost::broadcast`], [`RawHost::send_to_worker`]).
pub const MAX_WORKER_MESSAGE: usize = 64 * 1024;

/// Why a message between workers was not sent: the negative answers of [`RawHost::broadcast`]
/// and [`RawHost::send_to_worker`]. Growable: a receiver must expect values it does not know.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerMsgStatus(pub i8);

impl WorkerMsgStatus {
    /// The host does not offer messages between workers (it is older than plugin-api 0.1.1).
    pub const UNSUPPORTED: Self = WorkerMsgStatus(-1);
    /// The message is over [`MAX_WORKER_MESSAGE`].
    pub const TOO_LARGE: Self = WorkerMsgStatus(-2);
}

/// What [`RawHost::counter`] answers when it registers nothing.
pub const NO_COUNTER: u32 = u32::MAX;

/// Why a task was not taken: the negative answers of [`RawHost::submit_task`]. Growable: a
/// receiver must expect values it does not know.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskStatus(pub i8);

impl TaskStatus {
    /// The host has no task pool (it is older than plugin-api 0.1.2).
    pub const UNSUPPORTED: Self = TaskStatus(-1);
    /// The pool's queue is full (`task_queue` jobs wait already): try later, or do less.
    pub const QUEUE_FULL: Self = TaskStatus(-2);
}

/// Why [`RawHost::send_file`] queued nothing: its negative answers. Growable: a receiver must
/// expect values it does not know.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SendFileStatus(pub i8);

impl SendFileStatus {
    /// The host cannot send files (it is older than plugin-api 0.1.2): read and `send` instead.
    pub const UNSUPPORTED: Self = SendFileStatus(-1);
    /// Refused as `send` refuses: the connection is closed or closing, not connected yet, or its
    /// send buffer is full (the plugin also hears `on_conn_error(SEND_FAILED)` for a full one).
    pub const REFUSED: Self = SendFileStatus(-2);
    /// `fd` is not an open regular file, or `offset + len` overflows.
    pub const BAD_FILE: Self = SendFileStatus(-3);
    /// The connection is a UDP session: it has no stream to send a file on.
    pub const NOT_A_STREAM: Self = SendFileStatus(-4);
}

/// What [`RawNotifier::notify`] answers: 0 when queued, or one of these (negative). Growable.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NotifyStatus(pub i8);

impl NotifyStatus {
    /// Queued: the plugin hears it as `on_notify` on the loop.
    pub const QUEUED: Self = NotifyStatus(0);
    /// The queue is full ([`MAX_NOTIFY_QUEUE`] messages wait): dropped, and counted.
    pub const FULL: Self = NotifyStatus(-1);
    /// Over [`MAX_NOTIFY_MESSAGE`] bytes: refused.
    pub const TOO_LARGE: Self = NotifyStatus(-2);
    /// The worker is gone (it exited): nobody will hear it.
    pub const GONE: Self = NotifyStatus(-3);
}

/// The largest message one `notify` takes.
pub const MAX_NOTIFY_MESSAGE: usize = 64 * 1024;
/// Messages waiting for the loop at most; past it `notify` answers [`NotifyStatus::FULL`].
pub const MAX_NOTIFY_QUEUE: usize = 4096;

/// A job for the worker's task pool ([`RawHost::submit_task`]), built by the plugin (the SDK's
/// `Host::spawn_task` wraps a closure), run once on a pool thread. Closed since 0.1.3 (see the
/// policy above).
#[sabi_trait]
pub trait RawJob: Send {
    /// Runs the job: its result, or the message of the panic the plugin's glue caught. It must
    /// not unwind (the SDK catches panics): an unwinding job takes the worker down.
    #[sabi(last_prefix_field)]
    fn run(&mut self) -> RResult<RVec<u8>, RString>;
}

/// An owned job.
pub type RawJobBox = RawJob_TO<'static, RBox<()>>;

/// What a plugin's own threads use to wake the worker's loop with data ([`RawHost::notifier`]).
/// Built by the host; `Send + Sync + Clone`, usable from any thread, for as long as the plugin
/// likes (after the worker exits it answers [`NotifyStatus::GONE`]). It only queues bytes: it
/// never touches the loop's state.
#[sabi_trait]
pub trait RawNotifier: Send + Sync + Clone {
    /// Queues `data` for `on_notify` and wakes the loop: a [`NotifyStatus`] (0: queued).
    #[sabi(last_prefix_field)]
    fn notify(&self, data: RSlice<'_, u8>) -> i8;
}

/// A shared notifier handle.
pub type RawNotifierBox = RawNotifier_TO<'static, RArc<()>>;

/// The host handle passed to every callback, borrowed for that call only.
pub type RawHostRef<'a> = RawHost_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>;

/// A plugin instance: one per worker. The glue in `plugin-api` catches panics before they reach
/// this boundary and reports them as `Panicked`.
#[sabi_trait]
pub trait RawPlugin {
    /// The worker is up and about to accept; an error stops it before it reports ready.
    fn on_worker_start(&mut self, host: RawHostRef<'_>) -> RResult<(), RString>;
    /// The worker is about to exit.
    fn on_worker_stop(&mut self, host: RawHostRef<'_>) -> CallStatus;
    /// A reload of a service that is not reloadable.
    fn on_worker_reload(&mut self, host: RawHostRef<'_>) -> CallStatus;
    /// A new connection was accepted.
    fn on_connect(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;
    /// Framing: how long is the next message in `buf` (the bytes buffered on `conn`)?
    fn input(&mut self, host: RawHostRef<'_>, conn: ConnId, buf: RSlice<'_, u8>) -> RawFrame;
    /// One complete message, as delimited by `input`.
    fn on_message(&mut self, host: RawHostRef<'_>, conn: ConnId, msg: RSlice<'_, u8>) -> CallStatus;
    /// The connection is closed; its id is stale from now on.
    fn on_close(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;
    /// An error on the connection (ABI 1). Hosts since plugin-api 0.1.1 call `on_conn_error`,
    /// whose default comes here.
    fn on_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnError) -> CallStatus;
    /// The connection's send buffer is full: the host stops reading from it until it drains.
    fn on_buffer_full(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;
    /// The connection's send buffer drained below the limit.
    fn on_buffer_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;
    /// A timer fired, with the `data` given when it was added.
    fn on_timer(&mut self, host: RawHostRef<'_>, timer: TimerId, data: u64) -> CallStatus;
    /// The worker is draining: the plugin closes the connection now (idle) or after the message in
    /// flight (an HTTP server answers with `Connection: close`).
    #[sabi(last_prefix_field)]
    fn on_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;

    // --- Added in plugin-api 0.1.1. Every method below has a default body: what happens for an
    // --- older plugin that lacks it.

    /// An error on the connection, as a growable code. Older plugins hear `on_error` with the
    /// closest [`ConnError`] (codes they cannot know become `Io`).
    fn on_conn_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnErrorCode) -> CallStatus {
        self.on_error(host, conn, err.closest_conn_error())
    }
    /// A message from another worker of the service (`broadcast` or `send_to_worker`), sent by
    /// the worker of `from_slot`. Older plugins ignore it.
    fn on_worker_message(&mut self, host: RawHostRef<'_>, from_slot: u32, msg: RSlice<'_, u8>) -> CallStatus {
        let _ = (host, from_slot, msg);
        CallStatus::Ok
    }

    // --- Added in plugin-api 0.1.2 (0.1.1 is frozen in `frozen::v0_1_1`). Same rule: a default body
    // --- that is a no-op or falls back to an older event.

    // Work off the loop (tasks and notifiers): one block.

    /// A task submitted with `submit_task` ended: its bytes, or why it failed (it panicked: the
    /// panic's message). Delivered on the loop thread, also while the worker drains. Older
    /// plugins submit no tasks.
    fn on_task_done(&mut self, host: RawHostRef<'_>, task: u64, result: RResult<RVec<u8>, RString>) -> CallStatus {
        let _ = (host, task, result);
        CallStatus::Ok
    }
    /// Bytes a plugin thread passed to a notifier (`RawHost::notifier`), on the loop thread, in
    /// the order they were queued.
    fn on_notify(&mut self, host: RawHostRef<'_>, data: RSlice<'_, u8>) -> CallStatus {
        let _ = (host, data);
        CallStatus::Ok
    }

    // --- Added in plugin-api 0.1.3, the last method of this vtable: it never grows again.
    // --- Events added from now on are methods of `RawPluginExt`.

    /// The plugin's extension: the events added since plugin-api 0.1.3. A plugin of an older
    /// release answers an extension without events (each event's default then applies).
    fn extension(&mut self) -> PluginExtension<'_> {
        PluginExtension::none()
    }
}

/// An owned plugin instance.
pub type RawPluginBox = RawPlugin_TO<'static, RBox<()>>;

/// The events added to the ABI since plugin-api 0.1.3, on the plugin's instance
/// ([`RawPlugin::extension`]). A growable vtable: a release adds its events at the end, each
/// with a default body (what a plugin built before it gets: a no-op, or the older event it
/// replaces). The host reaches it through a [`PluginExtension`], whose layout it checks once.
#[sabi_trait]
pub trait RawPluginExt {
    /// The `plugin-api` version the plugin was built against ("" for a plugin older than 0.1.3).
    #[sabi(last_prefix_field)]
    fn api_version(&self) -> RStr<'static>;

    // --- Events go here, in release order, each with a default body and a
    // --- `// --- Added in plugin-api 0.1.N` line above its block.

    // --- Added in plugin-api 0.1.3 (before it shipped): the first event of the extension.

    /// The peer of `conn` finished sending (a read returned end of input: it half-closed, or
    /// closed). Nothing more is read from it. A [`RawInputEnd`]: [`RawInputEnd::CLOSE`] (the
    /// default, and what a plugin without this event gets) closes the connection once its queued
    /// output is written; [`RawInputEnd::KEEP_OPEN`] keeps the write side open until the plugin
    /// closes it (the idle timeout still applies).
    fn on_input_end(&mut self, host: RawHostRef<'_>, conn: ConnId) -> RawInputEnd {
        let _ = (host, conn);
        RawInputEnd::CLOSE
    }

    // --- Added in plugin-api 0.1.4

    // Hand-over (one block): on a replacement, the old worker's connections and state move to
    // the new worker instead of draining. Every default means "does not take part": a plugin
    // without these events drains as before.

    /// The version of the state this instance exports for a hand-over (the plugin's own
    /// numbering; it goes with the state to the replacement). 0, the default: the plugin does
    /// not take part, and its worker drains.
    fn handover_version(&self) -> u32 {
        0
    }
    /// In the replacement, before anything moves: whether this instance can read state that an
    /// instance of `plugin` (its name) exported at `version` (Erlang's `code_change`). False (the
    /// default, and what a plugin that panics answers): nothing moves; the old worker drains.
    fn handover_accepts(&mut self, host: RawHostRef<'_>, plugin: RStr<'_>, version: u32) -> bool {
        let _ = (host, plugin, version);
        false
    }
    /// In the old worker: writes the state of `conn` into `sink` and answers
    /// [`RawHandover::MOVE`], or [`RawHandover::DECLINE`] (the default): the connection stays and
    /// drains. The instance keeps its state: should the hand-over fail, the connection resumes
    /// here.
    fn handover_export_conn(&mut self, host: RawHostRef<'_>, conn: ConnId, sink: RawStateSinkRef<'_>) -> RawHandover {
        let _ = (host, conn, sink);
        RawHandover::DECLINE
    }
    /// In the old worker, after its connections: writes the worker-wide state into `sink`
    /// ([`RawHandover::MOVE`]); [`RawHandover::DECLINE`] (the default) moves nothing at all.
    fn handover_export_worker(&mut self, host: RawHostRef<'_>, sink: RawStateSinkRef<'_>) -> RawHandover {
        let _ = (host, sink);
        RawHandover::DECLINE
    }
    /// In the replacement, before its connections: the worker-wide state the old instance
    /// exported at `version`. [`RawHandover::MOVE`]: adopted; anything else: the hand-over
    /// fails and the old worker takes everything back and drains.
    fn handover_adopt_worker(&mut self, host: RawHostRef<'_>, version: u32, state: RSlice<'_, u8>) -> RawHandover {
        let _ = (host, version, state);
        RawHandover::DECLINE
    }
    /// In the replacement: `conn` (an id of this worker) arrives with the state its old instance
    /// exported at `version`. [`RawHandover::MOVE`]: adopted (the plugin hears its messages
    /// from now on, and no `on_connect`); anything else: it goes back to the old worker, which
    /// drains it.
    fn handover_adopt_conn(
        &mut self,
        host: RawHostRef<'_>,
        conn: ConnId,
        version: u32,
        state: RSlice<'_, u8>,
    ) -> RawHandover {
        let _ = (host, conn, version, state);
        RawHandover::DECLINE
    }

    // Topics (one block): publish/subscribe between connections, across workers and hosts.

    /// A message published on a topic the worker itself subscribed to ([`WORKER_CONN`] in
    /// [`RawHostExt::subscribe`]), once per message and worker, wherever it was published.
    fn on_publish(&mut self, host: RawHostRef<'_>, topic: RSlice<'_, u8>, msg: RSlice<'_, u8>) -> CallStatus {
        let _ = (host, topic, msg);
        CallStatus::Ok
    }

    // Hand-over in batches.

    /// Whether a hand-over may move this instance's connections in batches: the worker state
    /// first, then a batch of connections at a time while the old worker goes on serving those
    /// not moved yet (each client's pause is its batch's, not the whole worker's). True only
    /// when serving a connection changes nothing the worker state moves and no connection's
    /// handling touches another connection. False (the default): every connection stops at
    /// once, then they move.
    fn handover_in_batches(&self) -> bool {
        false
    }

    // Topic messages a plugin delivers itself, in a hand-over.

    /// In the replacement, right after [`RawPluginExt::handover_adopt_conn`] adopted `conn`: a
    /// message on `topic` that `conn` hears through this plugin's [`RawPluginExt::on_publish`]
    /// (declared by the old instance with [`RawHostExt::handover_hears`]) and missed across its
    /// move: write it to `conn` alone, as `on_publish` would have. The host calls it once per
    /// missed message, in order, before any later `on_publish`; the old worker calls it too
    /// for a connection it takes back. The default: nothing.
    fn on_publish_missed(
        &mut self,
        host: RawHostRef<'_>,
        conn: ConnId,
        topic: RSlice<'_, u8>,
        msg: RSlice<'_, u8>,
    ) -> CallStatus {
        let _ = (host, conn, topic, msg);
        CallStatus::Ok
    }
    // Pre-copy (one block): a large worker state goes out in steps while the old worker serves;
    // only what changed meanwhile goes in `handover_export_worker`, with the connections stopped.

    /// In the old worker, once per loop turn before its connections stop, while the
    /// replacement takes steps ([`RawPluginExt::handover_adopts_steps`]): writes the next slice
    /// of the worker state into `sink` (one frame; keep it to a few MiB or milliseconds: clients
    /// wait for this turn) and answers [`RawStep::MORE`], or [`RawStep::READY`]: the copy is
    /// over, `handover_export_worker` follows (and writes what changed since the first step).
    /// [`RawStep::FAILED`]: the hand-over fails, the old worker keeps everything. The default:
    /// `READY` having written nothing (no step, today's hand-over).
    fn handover_export_worker_step(&mut self, host: RawHostRef<'_>, sink: RawStateSinkRef<'_>) -> RawStep {
        let _ = (host, sink);
        RawStep::READY
    }
    /// In the replacement, when it accepts: whether it adopts steps
    /// ([`RawPluginExt::handover_adopt_worker_step`]). False (the default): the old worker
    /// writes no step, its whole state goes in `handover_export_worker`.
    fn handover_adopts_steps(&self) -> bool {
        false
    }
    /// In the replacement, for each step in order: a slice of the worker state the old instance
    /// exported at `version`, to be kept aside (staged) until `handover_adopt_worker` commits it:
    /// nothing of it may be served before. [`RawHandover::MOVE`]: kept; anything else (the
    /// default) fails the hand-over.
    fn handover_adopt_worker_step(&mut self, host: RawHostRef<'_>, version: u32, state: RSlice<'_, u8>) -> RawHandover {
        let _ = (host, version, state);
        RawHandover::DECLINE
    }
    /// A hand-over with steps ended without its last part: in the old worker, nothing of the
    /// copy is wanted any more (stop recording changes); in the replacement, what the steps
    /// staged is dropped (its memory freed). Also after a refused `handover_adopt_worker`.
    fn handover_drop_steps(&mut self, host: RawHostRef<'_>) -> CallStatus {
        let _ = host;
        CallStatus::Ok
    }
}

/// What a plugin answers to [`RawPluginExt::handover_export_worker_step`]. Growable: a host
/// reads a value it does not know as [`RawStep::FAILED`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawStep(pub u8);

impl RawStep {
    /// The copy is over (what this call wrote, if anything, is its last step).
    pub const READY: Self = RawStep(0);
    /// Another step follows, at the next loop turn.
    pub const MORE: Self = RawStep(1);
    /// The step could not be written (or the plugin panicked): the hand-over fails.
    pub const FAILED: Self = RawStep(2);
}

/// What a plugin answers to a hand-over event ([`RawPluginExt::handover_export_conn`] and the
/// others). Growable: a host reads a value it does not know as [`RawHandover::DECLINE`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawHandover(pub u8);

impl RawHandover {
    /// Does not move (export), or refuses (adopt).
    pub const DECLINE: Self = RawHandover(0);
    /// Moves (export: the state is in the sink), or adopted.
    pub const MOVE: Self = RawHandover(1);
    /// The plugin panicked (caught by the glue): read as a refusal.
    pub const PANICKED: Self = RawHandover(2);
}

/// Where a plugin writes state for a hand-over: the host stores the bytes as they come (large
/// state straight into a memfd, without a second copy in the plugin). A type of plugin-api
/// 0.1.4, declared once: it never changes.
#[sabi_trait]
pub trait RawStateSink {
    /// Appends `data`; false when the host could not store it (out of memory): the export then
    /// fails, and what depends on it drains.
    #[sabi(last_prefix_field)]
    fn write(&mut self, data: RSlice<'_, u8>) -> bool;
}

/// A state sink, borrowed for one call.
pub type RawStateSinkRef<'a> = RawStateSink_TO<'a, RMut<'a, ()>>;

/// A sink that keeps the state in memory (tests; the host's small states).
impl RawStateSink for Vec<u8> {
    fn write(&mut self, data: RSlice<'_, u8>) -> bool {
        self.try_reserve(data.len()).is_ok() && {
            self.extend_from_slice(data.as_slice());
            true
        }
    }
}

/// `sink` as a [`RawStateSinkRef`], for one call.
pub fn state_sink<S: RawStateSink>(sink: &mut S) -> RawStateSinkRef<'_> {
    RawStateSink_TO::from_ptr(sink, TD_Opaque)
}

/// What the plugin answers to `on_input_end` ([`RawPluginExt::on_input_end`]). Growable: a host
/// reads a value it does not know as [`RawInputEnd::CLOSE`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawInputEnd(pub u8);

impl RawInputEnd {
    /// Close once the queued output is written (what a host did before the event existed).
    pub const CLOSE: Self = RawInputEnd(0);
    /// Keep the write side open until the plugin closes the connection.
    pub const KEEP_OPEN: Self = RawInputEnd(1);
    /// The plugin panicked (caught by the glue); the host closes the connection.
    pub const PANICKED: Self = RawInputEnd(2);
}

/// The plugin's extension object, borrowed from its instance.
pub type RawPluginExtRef<'a> = RawPluginExt_TO<'a, RMut<'a, ()>>;

/// The host calls added to the ABI since plugin-api 0.1.3, on the host's handle
/// ([`RawHost::extension`]). A growable vtable: a release adds its calls at the end, each with a
/// default body (what a newer plugin gets from an older host: an explicit "unsupported"). The
/// plugin reaches it through a [`HostExtension`], whose layout it checks once.
#[sabi_trait]
pub trait RawHostExt {
    /// The `plugin-api` version the host was built with ("" for a host that offers no calls of
    /// the extension, or is older than 0.1.3).
    #[sabi(last_prefix_field)]
    fn api_version(&self) -> RStr<'static>;

    // --- Calls added after 0.1.3 go here, in release order, each with a default body that
    // --- answers "unsupported" and a `// --- Added in plugin-api 0.1.N` line above its block.

    // --- Added in plugin-api 0.1.4

    /// What carries the connection: a [`RawTransport`] (TCP, a Unix socket, a UDP session, TLS
    /// over either). [`RawTransport::UNKNOWN`] for no such connection, and from a host older
    /// than 0.1.4.
    fn transport(&self, conn: ConnId) -> RawTransport {
        let _ = conn;
        RawTransport::UNKNOWN
    }
    /// The application protocol the connection's TLS handshake agreed by ALPN (RFC 7301), such
    /// as `h2`. None for a connection without TLS, a client that offered no ALPN, no such
    /// connection, and from a host older than 0.1.4 ([`RawHostExt::transport`] tells them
    /// apart).
    fn alpn(&self, conn: ConnId) -> ROption<RSlice<'_, u8>> {
        let _ = conn;
        ROption::RNone
    }

    // Topics (one block): publish/subscribe between connections, across workers and hosts.

    /// Subscribes `conn` to `topic` (1 to [`MAX_TOPIC_LEN`] bytes by default): every message published on
    /// it, on any worker of the service and any host of its cluster, is written to the
    /// connection's output as published. [`WORKER_CONN`] subscribes the worker itself: the
    /// plugin hears the topic's messages as [`RawPluginExt::on_publish`]. 1 when subscribed now,
    /// 0 when it was already, or a negative [`TopicStatus`]. A connection's subscriptions end
    /// with it.
    fn subscribe(&mut self, conn: ConnId, topic: RSlice<'_, u8>) -> i64 {
        let _ = (conn, topic);
        TopicStatus::UNSUPPORTED.0 as i64
    }

    /// Ends a subscription of [`RawHostExt::subscribe`]: 1 when there was one, 0 when not, or a
    /// negative [`TopicStatus`].
    fn unsubscribe(&mut self, conn: ConnId, topic: RSlice<'_, u8>) -> i64 {
        let _ = (conn, topic);
        TopicStatus::UNSUPPORTED.0 as i64
    }

    /// Publishes `msg` (at most [`MAX_PUBLISH`] bytes by default, framed by the plugin as its subscribers'
    /// protocol wants it) on `topic`: the host writes it to every subscribed connection of every
    /// worker of the service and of every host of its cluster, without a plugin call per
    /// recipient. Answers how many connections of this worker it was written to, or a negative
    /// [`TopicStatus`].
    fn publish(&mut self, topic: RSlice<'_, u8>, msg: RSlice<'_, u8>) -> i64 {
        let _ = (topic, msg);
        TopicStatus::UNSUPPORTED.0 as i64
    }

    /// How many connections of this worker are subscribed to `topic`, or a negative
    /// [`TopicStatus`].
    fn subscribers(&mut self, topic: RSlice<'_, u8>) -> i64 {
        let _ = topic;
        TopicStatus::UNSUPPORTED.0 as i64
    }

    /// The ALPN protocols (RFC 7301) the service's TLS handshakes offer from now on, in order of
    /// preference, each 1 to 255 bytes: the plugin's choice from its own configuration (the
    /// http plugin offers `h2` only while HTTP/2 is on). Connections accepted afterwards get
    /// them. A service whose configuration names `tls_alpn` keeps that list. True when applied;
    /// false without TLS, with `tls_alpn` configured, for an invalid list, and from a host older
    /// than 0.1.4.
    fn set_alpn(&mut self, protocols: RSlice<'_, RStr<'_>>) -> bool {
        let _ = protocols;
        false
    }

    // Outbound connections in a hand-over (one block).

    /// Called from [`RawPluginExt::handover_export_conn`] (the connection being exported owns
    /// `conn`) or [`RawPluginExt::handover_export_worker`] (the instance owns it): `conn`, an
    /// open connection of [`RawHost::connect`], moves in the same hand-over, adopted with its
    /// owner or not at all, its host-side state (buffers, pause, deadlines) with it. Its plugin
    /// state goes in the owner's. True when it will go; false (not outbound, still connecting,
    /// closing, TLS that cannot move, no export under way, an older host) when it stays: then
    /// decline the owner, or leave it out of the worker state.
    fn handover_carry(&mut self, conn: ConnId) -> bool {
        let _ = conn;
        false
    }
    /// Called from [`RawPluginExt::handover_adopt_worker`] and
    /// [`RawPluginExt::handover_adopt_conn`]: the id in this worker of the connection the old
    /// worker knew as `old` and carried in this hand-over ([`RawHostExt::handover_carry`]).
    /// None when it did not come (it stayed, or could not be registered here): forget it.
    fn handover_carried(&self, old: ConnId) -> ROption<ConnId> {
        let _ = old;
        ROption::RNone
    }

    // Topic messages a plugin delivers itself, in a hand-over.

    /// Called from [`RawPluginExt::handover_export_conn`] of `conn`: `conn` hears `topic` (a
    /// topic this worker subscribed to itself, [`WORKER_CONN`]) through the plugin's
    /// [`RawPluginExt::on_publish`]. The host keeps the hand-over's seam for it: the new worker
    /// calls [`RawPluginExt::on_publish_missed`] for each message of `topic` that `conn` missed
    /// across the move, and drops a send to `conn` from `on_publish` of a message it had
    /// already. The new worker does not subscribe `conn` to `topic`. True when recorded; false
    /// (no such worker subscription, no export of `conn` under way, an older host): decline
    /// `conn`, or it loses or repeats messages.
    fn handover_hears(&mut self, conn: ConnId, topic: RSlice<'_, u8>) -> bool {
        let _ = (conn, topic);
        false
    }
}

/// What carries a connection ([`RawHostExt::transport`]). Growable: a plugin reads a value it
/// does not know as [`RawTransport::UNKNOWN`].
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RawTransport(pub u8);

impl RawTransport {
    /// No such connection, or a host that cannot tell (older than 0.1.4).
    pub const UNKNOWN: Self = RawTransport(0);
    /// Plain TCP.
    pub const TCP: Self = RawTransport(1);
    /// A Unix stream socket.
    pub const UNIX: Self = RawTransport(2);
    /// A UDP session.
    pub const UDP: Self = RawTransport(3);
    /// TLS over TCP.
    pub const TLS_TCP: Self = RawTransport(4);
    /// TLS over a Unix stream socket.
    pub const TLS_UNIX: Self = RawTransport(5);
}

/// The longest topic name, in bytes ([`RawHostExt::subscribe`], [`RawHostExt::publish`]), by
/// default: a service may set its own (the host's `topic_max_len`, up to 1024).
pub const MAX_TOPIC_LEN: usize = 256;
/// The largest message [`RawHostExt::publish`] takes, in bytes, by default: a service may set
/// its own (the host's `topic_max_message`, up to 64 MiB).
pub const MAX_PUBLISH: usize = 1024 * 1024;
/// The most topics one connection may be subscribed to, by default: a service may set its own
/// (the host's `topics_per_connection`).
pub const MAX_TOPICS_PER_CONN: usize = 64;
/// The connection id that stands for the worker itself in [`RawHostExt::subscribe`] and
/// [`RawHostExt::unsubscribe`] (no connection has it: its generation is never reached).
pub const WORKER_CONN: ConnId = ConnId(u64::MAX);

/// Why a topic call was refused: the negative answers of the topic calls of [`RawHostExt`].
/// Growable: a receiver must expect values it does not know.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicStatus(pub i8);

impl TopicStatus {
    /// The host has no topics (it is older than plugin-api 0.1.4).
    pub const UNSUPPORTED: Self = TopicStatus(-1);
    /// The topic is empty or longer than the service allows ([`MAX_TOPIC_LEN`] by default).
    pub const INVALID_TOPIC: Self = TopicStatus(-2);
    /// The connection is subscribed to as many topics as the service allows
    /// ([`MAX_TOPICS_PER_CONN`] by default).
    pub const TOO_MANY_TOPICS: Self = TopicStatus(-3);
    /// No such connection (closed, or never opened), or one that takes no output.
    pub const NO_CONNECTION: Self = TopicStatus(-4);
    /// The message is larger than the service allows ([`MAX_PUBLISH`] by default).
    pub const TOO_LARGE: Self = TopicStatus(-5);
}

/// The host's extension object, borrowed from its handle for one callback.
pub type RawHostExtRef<'a> = RawHostExt_TO<'a, RMut<'a, ()>>;

/// A [`RawPluginExt`] as it crosses the boundary: its layout travels with it and is checked by
/// the host ([`PluginExtension::check`]) instead of when the plugin is loaded, so the
/// extension can grow without a frozen copy of the root module and vtables: the layouts of the
/// two sides must agree on every method both have; the methods only one side has are read as
/// absent (their defaults answer).
#[repr(C)]
#[derive(StableAbi)]
pub struct PluginExtension<'a> {
    /// `RawPluginExt`'s layout as the plugin's `plugin-api` declares it.
    pub layout: &'static TypeLayout,
    /// The extension. Its layout is checked at run time against `layout`, not at load time
    /// (abi_stable would refuse an older plugin's shorter vtable there).
    #[sabi(unsafe_opaque_field)]
    pub ext: RawPluginExtRef<'a>,
}

impl<'a> PluginExtension<'a> {
    /// Wraps `ext` with this `plugin-api`'s layout of it.
    pub fn new(ext: RawPluginExtRef<'a>) -> Self {
        PluginExtension { layout: <RawPluginExtRef<'static> as StableAbi>::LAYOUT, ext }
    }

    /// An extension without events: what a plugin older than 0.1.3 has.
    pub fn none() -> Self {
        PluginExtension::new(RawPluginExt_TO::from_ptr(Box::leak(Box::new(NoExtension)), TD_Opaque))
    }

    /// Whether the plugin's layout of the extension and this `plugin-api`'s agree (see
    /// [`check_extension_layout`]).
    pub fn check(&self) -> Result<(), String> {
        check_extension_layout(<RawPluginExtRef<'static> as StableAbi>::LAYOUT, self.layout)
    }
}

/// A [`RawHostExt`] as it crosses the boundary: like [`PluginExtension`], checked by the plugin
/// ([`HostExtension::check`]) before its first call.
#[repr(C)]
#[derive(StableAbi)]
pub struct HostExtension<'a> {
    /// `RawHostExt`'s layout as the host's `plugin-api` declares it.
    pub layout: &'static TypeLayout,
    /// The extension. Its layout is checked at run time against `layout`.
    #[sabi(unsafe_opaque_field)]
    pub ext: RawHostExtRef<'a>,
}

impl<'a> HostExtension<'a> {
    /// Wraps `ext` with this `plugin-api`'s layout of it.
    pub fn new(ext: RawHostExtRef<'a>) -> Self {
        HostExtension { layout: <RawHostExtRef<'static> as StableAbi>::LAYOUT, ext }
    }

    /// An extension without calls: what a host older than 0.1.3 (or one that offers none of
    /// them) has.
    pub fn none() -> Self {
        HostExtension::new(RawHostExt_TO::from_ptr(Box::leak(Box::new(NoExtension)), TD_Opaque))
    }

    /// Whether the host's layout of the extension and this `plugin-api`'s agree (see
    /// [`check_extension_layout`]). A layout checked once is not checked again.
    pub fn check(&self) -> Result<(), String> {
        static CHECKED: AtomicPtr<TypeLayout> = AtomicPtr::new(std::ptr::null_mut());
        if std::ptr::eq(CHECKED.load(Ordering::Relaxed), self.layout) {
            return Ok(());
        }
        check_extension_layout(<RawHostExtRef<'static> as StableAbi>::LAYOUT, self.layout)?;
        CHECKED.store((self.layout as *const TypeLayout).cast_mut(), Ordering::Relaxed);
        Ok(())
    }
}

/// The extension of a side that has none (a zero-sized value: leaking it allocates nothing).
struct NoExtension;

impl RawPluginExt for NoExtension {
    fn api_version(&self) -> RStr<'static> {
        RStr::from_str("")
    }
}

impl RawHostExt for NoExtension {
    fn api_version(&self) -> RStr<'static> {
        RStr::from_str("")
    }
}

/// Checks an extension's layout from the other side (`theirs`) against this side's (`mine`)
/// with abi_stable's checker: every method both declare must agree (name, order, signature,
/// package); either side may have more methods than the other (they are read as absent). An
/// error carries the gist of abi_stable's report.
pub fn check_extension_layout(mine: &'static TypeLayout, theirs: &'static TypeLayout) -> Result<(), String> {
    use abi_stable::abi_stability::abi_checking::check_layout_compatibility;
    if std::ptr::eq(mine, theirs) {
        return Ok(());
    }
    // abi_stable accepts an implementation with more methods than the interface, not fewer:
    // the side with fewer methods is the interface. Either order passes when they agree.
    match check_layout_compatibility(theirs, mine) {
        Ok(()) => Ok(()),
        Err(first) => check_layout_compatibility(mine, theirs).map_err(|_| {
            let report = first.to_string();
            let gist = report.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("incompatible layout");
            format!("the extension's layout does not match: {}", gist.trim())
        }),
    }
}

/// The root module every plugin exports. A prefix type: fields after `new` (the
/// `last_prefix_field`) were added later and read as `Option` (`None` from an older plugin).
/// Closed since 0.1.3 (see the policy above).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(option))]
pub struct PluginMod {
    /// [`ABI_VERSION`] of the `plugin-api` the plugin was built with.
    pub abi_version: u32,
    /// The plugin's name, as used with `--plugin NAME`.
    pub name: RStr<'static>,
    /// The plugin crate's version.
    pub version: RStr<'static>,
    /// Builds the worker's plugin instance from the service's config (TOML text, may be empty).
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(config: RStr<'_>, info: &RawWorkerInfo<'_>) -> RResult<RawPluginBox, RString>,
    /// Since plugin-api 0.1.1: `new` with a [`WorkerEnv`]. The host calls it when the plugin
    /// has it, else `new`.
    pub new_v2: extern "C" fn(config: RStr<'_>, env: WorkerEnvRef) -> RResult<RawPluginBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "plugin";
    const NAME: &'static str = "host plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

#[cfg(test)]
mod tests {
    use abi_stable::{sabi_trait, std_types::RStr, StableAbi};

    use super::{check_extension_layout, RawHostExtRef, RawPluginExtRef};

    /// `RawPluginExt` as a later release declares it: one more event.
    mod later {
        use abi_stable::{
            sabi_trait,
            std_types::{RSlice, RStr},
        };

        use crate::abi::{CallStatus, ConnId, RawHandover, RawHostRef, RawInputEnd, RawStateSinkRef, RawStep};
        #[sabi_trait]
        pub trait RawPluginExt {
            #[sabi(last_prefix_field)]
            fn api_version(&self) -> RStr<'static>;
            fn on_input_end(&mut self, host: RawHostRef<'_>, conn: ConnId) -> RawInputEnd {
                let _ = (host, conn);
                RawInputEnd::CLOSE
            }
            fn handover_version(&self) -> u32 {
                0
            }
            fn handover_accepts(&mut self, host: RawHostRef<'_>, plugin: RStr<'_>, version: u32) -> bool {
                let _ = (host, plugin, version);
                false
            }
            fn handover_export_conn(
                &mut self,
                host: RawHostRef<'_>,
                conn: ConnId,
                sink: RawStateSinkRef<'_>,
            ) -> RawHandover {
                let _ = (host, conn, sink);
                RawHandover::DECLINE
            }
            fn handover_export_worker(&mut self, host: RawHostRef<'_>, sink: RawStateSinkRef<'_>) -> RawHandover {
                let _ = (host, sink);
                RawHandover::DECLINE
            }
            fn handover_adopt_worker(
                &mut self,
                host: RawHostRef<'_>,
                version: u32,
                state: RSlice<'_, u8>,
            ) -> RawHandover {
                let _ = (host, version, state);
                RawHandover::DECLINE
            }
            fn handover_adopt_conn(
                &mut self,
                host: RawHostRef<'_>,
                conn: ConnId,
                version: u32,
                state: RSlice<'_, u8>,
            ) -> RawHandover {
                let _ = (host, conn, version, state);
                RawHandover::DECLINE
            }
            fn on_publish(&mut self, host: RawHostRef<'_>, topic: RSlice<'_, u8>, msg: RSlice<'_, u8>) -> CallStatus {
                let _ = (host, topic, msg);
                CallStatus::Ok
            }
            fn handover_in_batches(&self) -> bool {
                false
            }
            fn on_publish_missed(
                &mut self,
                host: RawHostRef<'_>,
                conn: ConnId,
                topic: RSlice<'_, u8>,
                msg: RSlice<'_, u8>,
            ) -> CallStatus {
                let _ = (host, conn, topic, msg);
                CallStatus::Ok
            }
            fn handover_export_worker_step(&mut self, host: RawHostRef<'_>, sink: RawStateSinkRef<'_>) -> RawStep {
                let _ = (host, sink);
                RawStep::READY
            }
            fn handover_adopts_steps(&self) -> bool {
                false
            }
            fn handover_adopt_worker_step(
                &mut self,
                host: RawHostRef<'_>,
                version: u32,
                state: RSlice<'_, u8>,
            ) -> RawHandover {
                let _ = (host, version, state);
                RawHandover::DECLINE
            }
            fn handover_drop_steps(&mut self, host: RawHostRef<'_>) -> CallStatus {
                let _ = host;
                CallStatus::Ok
            }
            fn on_future(&mut self, data: u64) -> u32 {
                let _ = data;
                0
            }
        }
    }

    /// `RawPluginExt` as a release before `on_input_end` would have declared it.
    mod earlier {
        use abi_stable::{sabi_trait, std_types::RStr};
        #[sabi_trait]
        pub trait RawPluginExt {
            #[sabi(last_prefix_field)]
            fn api_version(&self) -> RStr<'static>;
        }
    }

    /// `RawPluginExt` as a broken fork declares it: the first method changed type.
    mod broken {
        use abi_stable::sabi_trait;
        #[sabi_trait]
        pub trait RawPluginExt {
            #[sabi(last_prefix_field)]
            fn api_version(&self) -> u32;
        }
    }

    #[sabi_trait]
    trait Unrelated {
        #[sabi(last_prefix_field)]
        fn api_version(&self) -> RStr<'static>;
    }

    // An extension with more methods on either side passes; one whose shared methods differ,
    // or another type altogether, is refused with a reason.
    #[test]
    fn extension_layouts_agree_on_shared_methods_only() {
        let today = <RawPluginExtRef<'static> as StableAbi>::LAYOUT;
        let later = <later::RawPluginExt_TO<'static, abi_stable::sabi_types::RMut<'static, ()>> as StableAbi>::LAYOUT;
        assert!(check_extension_layout(today, today).is_ok());
        assert_eq!(check_extension_layout(today, later), Ok(()), "a newer plugin in this host");
        assert_eq!(check_extension_layout(later, today), Ok(()), "an older plugin in a newer host");

        let broken = <broken::RawPluginExt_TO<'static, abi_stable::sabi_types::RMut<'static, ()>> as StableAbi>::LAYOUT;
        let err = check_extension_layout(today, broken).unwrap_err();
        assert!(err.starts_with("the extension's layout does not match"), "{err}");
        let host = <RawHostExtRef<'static> as StableAbi>::LAYOUT;
        assert!(check_extension_layout(today, host).is_err(), "the host's extension is not the plugin's");
        let unrelated = <Unrelated_TO<'static, abi_stable::sabi_types::RMut<'static, ()>> as StableAbi>::LAYOUT;
        assert!(check_extension_layout(today, unrelated).is_err());
    }

    mod across_releases {
        use abi_stable::{sabi_trait::TD_Opaque, sabi_types::RMut, std_types::RStr, StableAbi};

        use super::super::{ConnId, RawHostRef, RawInputEnd, RawPluginExt, RawPluginExtRef, RawPluginExt_TO};
        use super::{check_extension_layout, earlier, later};

        /// A plugin of this release: it has `on_input_end`.
        struct Today;
        impl RawPluginExt for Today {
            fn api_version(&self) -> RStr<'static> {
                RStr::from_str("today")
            }
            fn on_input_end(&mut self, _: RawHostRef<'_>, _: ConnId) -> RawInputEnd {
                RawInputEnd::KEEP_OPEN
            }
        }

        /// A plugin of an earlier release: no `on_input_end`.
        struct Earlier;
        impl earlier::RawPluginExt for Earlier {
            fn api_version(&self) -> RStr<'static> {
                RStr::from_str("earlier")
            }
        }

        // What crosses the boundary is a vtable of the plugin's release, read through the host's
        // declaration once the layouts agree: the events the plugin has reach it, the ones it lacks
        // answer their default, in a host of a later release as in one of this release.
        #[test]
        fn an_extension_of_another_release_answers_its_events_and_defaults_for_the_rest() {
            let mut host = crate::testing::TestHost::new();
            let conn = ConnId::new(1, 1);
            let today = <RawPluginExtRef<'static> as StableAbi>::LAYOUT;

            // A plugin without the event, in this host.
            let mut plugin = Earlier;
            let theirs = earlier::RawPluginExt_TO::from_ptr(&mut plugin, TD_Opaque);
            let layout = <earlier::RawPluginExt_TO<'static, RMut<'static, ()>> as StableAbi>::LAYOUT;
            assert_eq!(check_extension_layout(today, layout), Ok(()));
            // SAFETY: both are the same `RObject` of an erased `RMut` and a prefix vtable reference;
            // the layouts were checked to agree on the methods both declare, which is what the host
            // relies on when it reads a plugin's extension across the boundary.
            let mut ext: RawPluginExtRef<'_> = unsafe { std::mem::transmute(theirs) };
            assert_eq!(ext.api_version().as_str(), "earlier");
            assert_eq!(ext.on_input_end(host.raw(), conn), RawInputEnd::CLOSE, "the default");

            // A plugin of this release, in a host of a later release (one more event).
            let mut plugin = Today;
            let ours = RawPluginExt_TO::from_ptr(&mut plugin, TD_Opaque);
            let later = <later::RawPluginExt_TO<'static, RMut<'static, ()>> as StableAbi>::LAYOUT;
            assert_eq!(check_extension_layout(later, today), Ok(()));
            // SAFETY: as above.
            let mut ext: later::RawPluginExt_TO<'_, RMut<'_, ()>> = unsafe { std::mem::transmute(ours) };
            assert_eq!(ext.api_version().as_str(), "today");
            assert_eq!(ext.on_input_end(host.raw(), conn), RawInputEnd::KEEP_OPEN, "the plugin's own");
            assert_eq!(ext.on_future(7), 0, "the later event's default");
        }
    }
}
