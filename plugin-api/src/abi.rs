//! The raw ABI: what crosses between the host and a plugin `.so`.
//!
//! Everything here is `#[repr(C)]` and `StableAbi`, so abi_stable checks the layout when the host
//! loads a plugin and refuses one built against an incompatible `plugin-api`. New fields of the
//! root module may only be added after the `last_prefix_field`.
//!
//! Plugin authors do not use these types directly: they implement [`crate::Protocol`] and call
//! [`crate::export_plugin!`].

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString},
    StableAbi,
};

/// Bumped on any change of the meaning (not only the layout) of the ABI.
pub const ABI_VERSION: u32 = 1;

/// Identifies one connection inside one worker. The low 32 bits are a dense index (reused after
/// a close), the high 32 bits a generation, so a stale id never names a newer connection.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    pub const fn new(index: u32, generation: u32) -> Self {
        ConnId(((generation as u64) << 32) | index as u64)
    }
    /// Dense index, suitable for indexing a `Vec` (see [`crate::ConnMap`]).
    pub const fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    pub const fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// Identifies a timer inside one worker.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub u64);

/// What the plugin's framing step says about the bytes buffered on a connection.
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

/// Result of a plugin callback that cannot fail otherwise.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallStatus {
    Ok,
    /// The plugin panicked (caught by the glue); when the call was about a connection, the host
    /// closes that connection.
    Panicked,
}

/// Why the host reports an error on a connection.
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

/// Severity of a log record sent by a plugin, ordered like `tracing::Level` (TRACE is 0).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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
    pub family: u8,
    pub port: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub ip: [u8; 16],
}

/// Where the plugin's log records go: the host turns them into `tracing` events of its own.
pub type LogFn = extern "C" fn(level: LogLevel, target: RStr<'_>, message: RStr<'_>);

/// What the host tells a plugin when it builds its instance in a worker.
#[repr(C)]
#[derive(StableAbi)]
pub struct RawWorkerInfo<'a> {
    pub service: RStr<'a>,
    pub slot: u32,
    pub pid: u32,
    /// The service's largest message: the host refuses longer ones (`on_error(PackageTooLarge)`).
    pub max_package_size: u64,
    /// The send buffer: output queued above it makes the connection "full" (`on_buffer_full`,
    /// later `on_buffer_drain`), so a plugin streaming a large answer sends up to it at a time.
    pub max_send_buffer: u64,
    /// Records less severe than this are dropped inside the plugin, before formatting.
    pub max_log_level: LogLevel,
    pub log: extern "C" fn(level: LogLevel, target: RStr<'_>, message: RStr<'_>),
}

/// What the host offers a plugin during a callback.
#[sabi_trait]
pub trait RawHost {
    /// Appends `data` to the connection's output. False when the connection is closed or its
    /// send buffer is full (the plugin then also hears `on_error(SendFailed)`).
    fn send(&mut self, conn: ConnId, data: RSlice<'_, u8>) -> bool;
    /// Closes the connection once `last` and everything queued before it is flushed.
    fn close(&mut self, conn: ConnId, last: RSlice<'_, u8>);
    /// Stops (true) or restarts (false) reading from the connection.
    fn pause_recv(&mut self, conn: ConnId, paused: bool);
    fn peer_addr(&self, conn: ConnId) -> RawSockAddr;
    fn local_addr(&self, conn: ConnId) -> RawSockAddr;
    /// Bytes queued on the connection and not yet written to the socket.
    fn pending_send(&self, conn: ConnId) -> u64;
    /// Starts a timer firing after `delay_ms`, then every `interval_ms` (0: once). `data` comes
    /// back in `on_timer`.
    fn add_timer(&mut self, delay_ms: u64, interval_ms: u64, data: u64) -> TimerId;
    fn del_timer(&mut self, timer: TimerId) -> bool;
    fn slot(&self) -> u32;
    fn service(&self) -> RStr<'_>;
    /// True once the worker was asked to drain (graceful stop or reload).
    fn is_draining(&self) -> bool;
    /// Milliseconds on the worker's monotonic clock, cached once per loop turn.
    #[sabi(last_prefix_field)]
    fn now_ms(&self) -> u64;
}

/// The host handle passed to every callback, borrowed for that call only.
pub type RawHostRef<'a> = RawHost_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>;

/// A plugin instance: one per worker. The glue in `plugin-api` catches panics before they reach
/// this boundary and reports them as `Panicked`.
#[sabi_trait]
pub trait RawPlugin {
    fn on_worker_start(&mut self, host: RawHostRef<'_>) -> RResult<(), RString>;
    fn on_worker_stop(&mut self, host: RawHostRef<'_>) -> CallStatus;
    fn on_worker_reload(&mut self, host: RawHostRef<'_>) -> CallStatus;
    fn on_connect(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;
    fn input(&mut self, host: RawHostRef<'_>, conn: ConnId, buf: RSlice<'_, u8>) -> RawFrame;
    fn on_message(&mut self, host: RawHostRef<'_>, conn: ConnId, msg: RSlice<'_, u8>) -> CallStatus;
    fn on_close(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;
    fn on_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnError) -> CallStatus;
    fn on_buffer_full(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;
    fn on_buffer_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;
    fn on_timer(&mut self, host: RawHostRef<'_>, timer: TimerId, data: u64) -> CallStatus;
    /// The worker is draining: the plugin closes the connection now (idle) or after the message in
    /// flight (an HTTP server answers with `Connection: close`).
    #[sabi(last_prefix_field)]
    fn on_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;
}

/// An owned plugin instance.
pub type RawPluginBox = RawPlugin_TO<'static, RBox<()>>;

/// The root module every plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    pub abi_version: u32,
    /// The plugin's name, as used with `--plugin NAME`.
    pub name: RStr<'static>,
    /// The plugin crate's version.
    pub version: RStr<'static>,
    /// Builds the worker's plugin instance from the service's config (TOML text, may be empty).
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(config: RStr<'_>, info: &RawWorkerInfo<'_>) -> RResult<RawPluginBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "plugin";
    const NAME: &'static str = "host plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
