//! Plugins built against an older `plugin-api`, seen through today's ABI: the host loads such a
//! plugin with the frozen types of its release ([`crate::abi_v1`]) and wraps its instance here,
//! so the worker talks to every plugin through [`RawPlugin`] alone. Events the old plugin lacks
//! get what the policy says their default is (`on_conn_error` → `on_error` with the closest
//! reason); the host handle it sees forwards to today's.

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RResult, RSlice, RStr, RString},
};

use crate::abi::{
    CallStatus, ConnError, ConnErrorCode, ConnId, RawFrame, RawHostRef, RawPlugin, RawPluginBox, RawPlugin_TO,
    RawSockAddr, TimerId,
};
use crate::abi_v1;

/// Wraps an instance of a plugin built against plugin-api 0.1.0.
pub fn from_v1(plugin: abi_v1::RawPluginBox) -> RawPluginBox {
    RawPlugin_TO::from_value(V1Plugin(plugin), TD_Opaque)
}

struct V1Plugin(abi_v1::RawPluginBox);

/// Today's host handle, as a 0.1.0 plugin expects it.
struct V1Host<'a>(RawHostRef<'a>);

/// Calls the 0.1.0 plugin with a 0.1.0 view of `host`.
macro_rules! call_v1 {
    ($plugin:expr, $host:expr, $method:ident $(, $arg:expr)*) => {{
        let mut host = V1Host($host);
        $plugin.0.$method(abi_v1::RawHost_TO::from_ptr(&mut host, TD_Opaque) $(, $arg)*)
    }};
}

impl RawPlugin for V1Plugin {
    fn on_worker_start(&mut self, host: RawHostRef<'_>) -> RResult<(), RString> {
        call_v1!(self, host, on_worker_start)
    }
    fn on_worker_stop(&mut self, host: RawHostRef<'_>) -> CallStatus {
        call_v1!(self, host, on_worker_stop)
    }
    fn on_worker_reload(&mut self, host: RawHostRef<'_>) -> CallStatus {
        call_v1!(self, host, on_worker_reload)
    }
    fn on_connect(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        call_v1!(self, host, on_connect, conn)
    }
    fn input(&mut self, host: RawHostRef<'_>, conn: ConnId, buf: RSlice<'_, u8>) -> RawFrame {
        call_v1!(self, host, input, conn, buf)
    }
    fn on_message(&mut self, host: RawHostRef<'_>, conn: ConnId, msg: RSlice<'_, u8>) -> CallStatus {
        call_v1!(self, host, on_message, conn, msg)
    }
    fn on_close(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        call_v1!(self, host, on_close, conn)
    }
    fn on_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnError) -> CallStatus {
        call_v1!(self, host, on_error, conn, err)
    }
    fn on_buffer_full(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        call_v1!(self, host, on_buffer_full, conn)
    }
    fn on_buffer_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        call_v1!(self, host, on_buffer_drain, conn)
    }
    fn on_timer(&mut self, host: RawHostRef<'_>, timer: TimerId, data: u64) -> CallStatus {
        call_v1!(self, host, on_timer, timer, data)
    }
    fn on_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        call_v1!(self, host, on_drain, conn)
    }
    /// 0.1.0 has no `on_conn_error`: its `on_error` hears the closest reason.
    fn on_conn_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnErrorCode) -> CallStatus {
        call_v1!(self, host, on_error, conn, err.closest_conn_error())
    }
}

impl abi_v1::RawHost for V1Host<'_> {
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
}
