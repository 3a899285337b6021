//! Plugins built against an older `plugin-api`, seen through today's ABI: the host loads such a
//! plugin with the frozen types of its release ([`crate::abi_v1`] for 0.1.0, [`crate::abi_v2`]
//! for 0.1.1) and wraps its instance here, so the worker talks to every plugin through
//! [`RawPlugin`] alone. Events the old plugin lacks get what the policy says their default is
//! (`on_conn_error` → `on_error` with the closest reason, a no-op for the rest); the host handle
//! it sees forwards to today's.

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RSlice, RStr, RString},
};

use crate::abi::{
    CallStatus, ConnError, ConnErrorCode, ConnId, ConnectErrorCode, RawFrame, RawHostRef, RawPlugin, RawPluginBox,
    RawPlugin_TO, RawSockAddr, TimerId,
};
use crate::{abi_v1, abi_v2};

/// Wraps an instance of a plugin built against plugin-api 0.1.0.
pub fn from_v1(plugin: abi_v1::RawPluginBox) -> RawPluginBox {
    RawPlugin_TO::from_value(V1Plugin(plugin), TD_Opaque)
}

/// Wraps an instance of a plugin built against plugin-api 0.1.1.
pub fn from_v2(plugin: abi_v2::RawPluginBox) -> RawPluginBox {
    RawPlugin_TO::from_value(V2Plugin(plugin), TD_Opaque)
}

struct V1Plugin(abi_v1::RawPluginBox);
struct V2Plugin(abi_v2::RawPluginBox);

/// Today's host handle, as a 0.1.0 plugin expects it.
struct V1Host<'a>(RawHostRef<'a>);
/// Today's host handle, as a 0.1.1 plugin expects it.
struct V2Host<'a>(RawHostRef<'a>);

/// Calls the old plugin's `$method` with a view of `$host` of its release (`$module`, `$view`).
macro_rules! call_old {
    ($module:ident, $view:ident, $plugin:expr, $host:expr, $method:ident $(, $arg:expr)*) => {{
        let mut host = $view($host);
        $plugin.0.$method($module::RawHost_TO::from_ptr(&mut host, TD_Opaque) $(, $arg)*)
    }};
}

/// The events of plugin-api 0.1.0, passed on to the old plugin (`$module`, `$view`).
macro_rules! forward_events_0_1_0 {
    ($module:ident, $view:ident) => {
        fn on_worker_start(&mut self, host: RawHostRef<'_>) -> RResult<(), RString> {
            call_old!($module, $view, self, host, on_worker_start)
        }
        fn on_worker_stop(&mut self, host: RawHostRef<'_>) -> CallStatus {
            call_old!($module, $view, self, host, on_worker_stop)
        }
        fn on_worker_reload(&mut self, host: RawHostRef<'_>) -> CallStatus {
            call_old!($module, $view, self, host, on_worker_reload)
        }
        fn on_connect(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
            call_old!($module, $view, self, host, on_connect, conn)
        }
        fn input(&mut self, host: RawHostRef<'_>, conn: ConnId, buf: RSlice<'_, u8>) -> RawFrame {
            call_old!($module, $view, self, host, input, conn, buf)
        }
        fn on_message(&mut self, host: RawHostRef<'_>, conn: ConnId, msg: RSlice<'_, u8>) -> CallStatus {
            call_old!($module, $view, self, host, on_message, conn, msg)
        }
        fn on_close(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
            call_old!($module, $view, self, host, on_close, conn)
        }
        fn on_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnError) -> CallStatus {
            call_old!($module, $view, self, host, on_error, conn, err)
        }
        fn on_buffer_full(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
            call_old!($module, $view, self, host, on_buffer_full, conn)
        }
        fn on_buffer_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
            call_old!($module, $view, self, host, on_buffer_drain, conn)
        }
        fn on_timer(&mut self, host: RawHostRef<'_>, timer: TimerId, data: u64) -> CallStatus {
            call_old!($module, $view, self, host, on_timer, timer, data)
        }
        fn on_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
            call_old!($module, $view, self, host, on_drain, conn)
        }
    };
}

/// The host methods of plugin-api 0.1.0, forwarded to today's handle.
macro_rules! forward_host_0_1_0 {
    () => {
        fn send(&mut self, conn: ConnId, data: RSlice<'_, u8>) -> bool {
            self.0.send(conn, data)
        }
        fn close(&mut self, conn: ConnId, last: RSlice<'_, u8>) {
            self.0.close(conn, last)
        }
        fn pause_recv(&mut self, conn: ConnId, paused: bool) {
            self.0.pause_recv(conn, paused)
        }
        fn peer_addr(&self, conn: ConnId) -> RawSockAddr {
            self.0.peer_addr(conn)
        }
        fn local_addr(&self, conn: ConnId) -> RawSockAddr {
            self.0.local_addr(conn)
        }
        fn pending_send(&self, conn: ConnId) -> u64 {
            self.0.pending_send(conn)
        }
        fn add_timer(&mut self, delay_ms: u64, interval_ms: u64, data: u64) -> TimerId {
            self.0.add_timer(delay_ms, interval_ms, data)
        }
        fn del_timer(&mut self, timer: TimerId) -> bool {
            self.0.del_timer(timer)
        }
        fn slot(&self) -> u32 {
            self.0.slot()
        }
        fn service(&self) -> RStr<'_> {
            self.0.service()
        }
        fn is_draining(&self) -> bool {
            self.0.is_draining()
        }
        fn now_ms(&self) -> u64 {
            self.0.now_ms()
        }
    };
}

impl RawPlugin for V1Plugin {
    forward_events_0_1_0!(abi_v1, V1Host);

    /// 0.1.0 has no `on_conn_error`: its `on_error` hears the closest reason.
    fn on_conn_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnErrorCode) -> CallStatus {
        call_old!(abi_v1, V1Host, self, host, on_error, conn, err.closest_conn_error())
    }
}

impl abi_v1::RawHost for V1Host<'_> {
    forward_host_0_1_0!();
}

impl RawPlugin for V2Plugin {
    forward_events_0_1_0!(abi_v2, V2Host);

    fn on_conn_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnErrorCode) -> CallStatus {
        call_old!(abi_v2, V2Host, self, host, on_conn_error, conn, err)
    }
    fn on_worker_message(&mut self, host: RawHostRef<'_>, from_slot: u32, msg: RSlice<'_, u8>) -> CallStatus {
        call_old!(abi_v2, V2Host, self, host, on_worker_message, from_slot, msg)
    }
}

impl abi_v2::RawHost for V2Host<'_> {
    forward_host_0_1_0!();

    fn worker_count(&self) -> u32 {
        self.0.worker_count()
    }
    fn counter(&mut self, name: RStr<'_>, labels: RStr<'_>, help: RStr<'_>) -> u32 {
        self.0.counter(name, labels, help)
    }
    fn counter_add(&mut self, counter: u32, delta: u64) {
        self.0.counter_add(counter, delta)
    }
    fn connect(&mut self, addr: RStr<'_>, timeout_ms: u64) -> RResult<ConnId, ConnectErrorCode> {
        self.0.connect(addr, timeout_ms)
    }
    fn is_outbound(&self, conn: ConnId) -> bool {
        self.0.is_outbound(conn)
    }
    fn server_name(&self, conn: ConnId) -> ROption<RStr<'_>> {
        self.0.server_name(conn)
    }
    fn broadcast(&mut self, msg: RSlice<'_, u8>) -> i64 {
        self.0.broadcast(msg)
    }
    fn send_to_worker(&mut self, slot: u32, msg: RSlice<'_, u8>) -> i64 {
        self.0.send_to_worker(slot, msg)
    }
}
