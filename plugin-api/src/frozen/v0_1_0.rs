//! plugin-api 0.1.0 (ABI 1, the first release), frozen: its root module and vtables as it
//! declared them, and the adapter that shows a 0.1.0 plugin as a 0.1.1 one ([`upgrade`]). See
//! [`crate::frozen`]. Never edit the declarations.

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RResult, RSlice, RStr, RString},
    StableAbi,
};

use crate::abi::{CallStatus, ConnError, ConnId, RawFrame, RawSockAddr, RawWorkerInfo, TimerId};
use crate::frozen::{call_old, calls_0_1_0, events_0_1_0, frozen_root, v0_1_1 as next};

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

// --- The adapter to plugin-api 0.1.1: 0.1.1's events that 0.1.0 lacks keep the frozen 0.1.1
// --- defaults (`on_conn_error` calls `on_error` with the closest reason).

/// Shows a plugin of this release as one of the next.
pub fn upgrade(plugin: RawPluginBox) -> next::RawPluginBox {
    next::RawPlugin_TO::from_value(Plugin(plugin), abi_stable::sabi_trait::TD_Opaque)
}

/// A plugin of this release, as the next release's `RawPlugin`.
struct Plugin(RawPluginBox);
/// The next release's host handle, as this release's `RawHost`.
struct HostView<'a>(next::RawHostRef<'a>);

impl next::RawPlugin for Plugin {
    events_0_1_0!();
}

impl RawHost for HostView<'_> {
    calls_0_1_0!();
}

frozen_root!(v0_1_0, new_v2: false, into_current);

/// Shows a plugin of this release as today's.
pub fn into_current(plugin: RawPluginBox) -> crate::abi::RawPluginBox {
    next::into_current(upgrade(plugin))
}
