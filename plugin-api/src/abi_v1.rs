//! The root module and the two vtables exactly as `plugin-api` 0.1.0 declared them (ABI 1, the
//! first release), frozen. The host loads a plugin built against 0.1.0 with these types, and
//! [`crate::compat`] adapts its instance to today's [`crate::abi::RawPlugin`].
//!
//! Why a frozen copy: abi_stable lets a prefix type (root module, vtable) have *more* fields in
//! the plugin than in the host, never fewer (`abi_checking.rs`: a host layout with more fields is
//! a "too many fields" error). Today's types grew after 0.1.0, so a plugin built against 0.1.0
//! is checked against these instead. Names and package must stay as they were (abi_stable
//! compares both); the unchanged types (`ConnId`, `ConnError`, `RawWorkerInfo`…) are shared.
//! Never edit this file.

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString},
    StableAbi,
};

use crate::abi::{CallStatus, ConnError, ConnId, RawFrame, RawSockAddr, RawWorkerInfo, TimerId};

/// `RawHost` of plugin-api 0.1.0.
#[sabi_trait]
#[allow(missing_docs)]
pub trait RawHost {
    fn send(&mut self, conn: ConnId, data: RSlice<'_, u8>) -> bool;
    fn close(&mut self, conn: ConnId, last: RSlice<'_, u8>);
    fn pause_recv(&mut self, conn: ConnId, paused: bool);
    fn peer_addr(&self, conn: ConnId) -> RawSockAddr;
    fn local_addr(&self, conn: ConnId) -> RawSockAddr;
    fn pending_send(&self, conn: ConnId) -> u64;
    fn add_timer(&mut self, delay_ms: u64, interval_ms: u64, data: u64) -> TimerId;
    fn del_timer(&mut self, timer: TimerId) -> bool;
    fn slot(&self) -> u32;
    fn service(&self) -> RStr<'_>;
    fn is_draining(&self) -> bool;
    #[sabi(last_prefix_field)]
    fn now_ms(&self) -> u64;
}

/// The host handle of plugin-api 0.1.0.
pub type RawHostRef<'a> = RawHost_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>;

/// `RawPlugin` of plugin-api 0.1.0.
#[sabi_trait]
#[allow(missing_docs)]
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
    #[sabi(last_prefix_field)]
    fn on_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus;
}

/// An owned plugin instance of plugin-api 0.1.0.
pub type RawPluginBox = RawPlugin_TO<'static, RBox<()>>;

/// The root module of plugin-api 0.1.0.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// Always 1.
    pub abi_version: u32,
    /// The plugin's name.
    pub name: RStr<'static>,
    /// The plugin crate's version.
    pub version: RStr<'static>,
    /// Builds the worker's plugin instance.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(config: RStr<'_>, info: &RawWorkerInfo<'_>) -> RResult<RawPluginBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "plugin";
    const NAME: &'static str = "host plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
