//! plugin-api 0.1.2 (the third release of ABI 1, the last one whose vtables grew), frozen: its
//! root module and vtables as it declared them (the default bodies as 0.1.2 had them), and the
//! adapter that shows a 0.1.2 plugin as today's ([`upgrade`]). See [`crate::frozen`]. Never edit
//! the declarations.

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

use crate::abi::{
    self as next, CallStatus, ConnError, ConnErrorCode, ConnId, ConnectErrorCode, RawFrame, RawJobBox, RawNotifierBox,
    RawPeerCred, RawSockAddr, RawWorkerInfo, SendFileStatus, TaskStatus, TimerId, WorkerEnvRef, WorkerMsgStatus,
    NO_COUNTER,
};
use crate::frozen::{
    call_old, calls_0_1_0, calls_0_1_1, calls_0_1_2, events_0_1_0, events_0_1_1, events_0_1_2, frozen_root,
};

/// `RawHost` of plugin-api 0.1.2.
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

    fn worker_count(&self) -> u32 {
        0
    }

    fn counter(&mut self, name: RStr<'_>, labels: RStr<'_>, help: RStr<'_>) -> u32 {
        let _ = (name, labels, help);
        NO_COUNTER
    }

    fn counter_add(&mut self, counter: u32, delta: u64) {
        let _ = (counter, delta);
    }

    fn connect(&mut self, addr: RStr<'_>, timeout_ms: u64) -> RResult<ConnId, ConnectErrorCode> {
        let _ = (addr, timeout_ms);
        RResult::RErr(ConnectErrorCode::UNSUPPORTED)
    }

    fn is_outbound(&self, conn: ConnId) -> bool {
        let _ = conn;
        false
    }

    fn server_name(&self, conn: ConnId) -> ROption<RStr<'_>> {
        let _ = conn;
        ROption::RNone
    }
    fn broadcast(&mut self, msg: RSlice<'_, u8>) -> i64 {
        let _ = msg;
        WorkerMsgStatus::UNSUPPORTED.0 as i64
    }
    fn send_to_worker(&mut self, slot: u32, msg: RSlice<'_, u8>) -> i64 {
        let _ = (slot, msg);
        WorkerMsgStatus::UNSUPPORTED.0 as i64
    }

    fn peer_cred(&self, conn: ConnId) -> ROption<RawPeerCred> {
        let _ = conn;
        ROption::RNone
    }

    fn submit_task(&mut self, job: RawJobBox) -> i64 {
        drop(job);
        TaskStatus::UNSUPPORTED.0 as i64
    }

    fn notifier(&mut self) -> ROption<RawNotifierBox> {
        ROption::RNone
    }

    fn access_log(&mut self, line: RSlice<'_, u8>) -> bool {
        let _ = line;
        false
    }

    fn send_file(&mut self, conn: ConnId, fd: i32, offset: u64, len: u64) -> i64 {
        let _ = (conn, fd, offset, len);
        SendFileStatus::UNSUPPORTED.0 as i64
    }
}

/// The host handle of plugin-api 0.1.2.
pub type RawHostRef<'a> = RawHost_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>;

/// `RawPlugin` of plugin-api 0.1.2.
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

    fn on_conn_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnErrorCode) -> CallStatus {
        self.on_error(host, conn, err.closest_conn_error())
    }
    fn on_worker_message(&mut self, host: RawHostRef<'_>, from_slot: u32, msg: RSlice<'_, u8>) -> CallStatus {
        let _ = (host, from_slot, msg);
        CallStatus::Ok
    }

    fn on_task_done(&mut self, host: RawHostRef<'_>, task: u64, result: RResult<RVec<u8>, RString>) -> CallStatus {
        let _ = (host, task, result);
        CallStatus::Ok
    }
    fn on_notify(&mut self, host: RawHostRef<'_>, data: RSlice<'_, u8>) -> CallStatus {
        let _ = (host, data);
        CallStatus::Ok
    }
}

/// An owned plugin instance of plugin-api 0.1.2.
pub type RawPluginBox = RawPlugin_TO<'static, RBox<()>>;

/// The root module of plugin-api 0.1.2.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(option))]
#[allow(missing_docs)]
pub struct PluginMod {
    pub abi_version: u32,
    pub name: RStr<'static>,
    pub version: RStr<'static>,
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(config: RStr<'_>, info: &RawWorkerInfo<'_>) -> RResult<RawPluginBox, RString>,
    pub new_v2: extern "C" fn(config: RStr<'_>, env: WorkerEnvRef) -> RResult<RawPluginBox, RString>,
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "plugin";
    const NAME: &'static str = "host plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

// --- The adapter to today's release (0.1.3): its `extension` keeps the default (an extension
// --- without events: a 0.1.2 plugin hears none of the events added since).

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
    events_0_1_1!();
    events_0_1_2!();
}

impl RawHost for HostView<'_> {
    calls_0_1_0!();
    calls_0_1_1!();
    calls_0_1_2!();
}

frozen_root!(v0_1_2, new_v2: true, upgrade);

/// Shows a plugin of this release as today's.
pub fn into_current(plugin: RawPluginBox) -> next::RawPluginBox {
    upgrade(plugin)
}
