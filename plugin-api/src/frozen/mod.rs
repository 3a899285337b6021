//! Frozen releases: the root module and vtables exactly as an earlier `plugin-api` release
//! declared them, for the host to load a plugin of that release with, and the adapter that
//! shows such a plugin as the next release's. Not for plugin authors (hidden from the docs).
//!
//! Why frozen copies: abi_stable lets a prefix type (root module, `sabi_trait` vtable) have
//! *more* fields in the plugin than in the host, never fewer (`abi_checking.rs`: a host layout
//! with more fields is a field-count error). When a release grew one of them, a plugin of an
//! earlier release is checked against that release's declarations, kept here under the same
//! names (abi_stable compares names and package) in a module named after the release. Types that
//! did not change are shared with [`crate::abi`].
//!
//! Forwarding is cumulative: each module adapts its release to the **next** one only
//! (`v0_1_0` → `v0_1_1` → `v0_1_2` → [`crate::abi`]), so a release's adapter lists the events and
//! calls of its own release, never those of the releases after it. The event and call blocks of
//! each release are one macro each below: an adapter invokes the blocks of its release.
//!
//! 0.1.2 is the last release frozen this way: since 0.1.3 [`crate::abi::RawPlugin`],
//! [`crate::abi::RawHost`], [`crate::abi::PluginMod`] and [`crate::abi::WorkerEnv`] never grow;
//! new events and calls go to the extension objects ([`crate::abi::RawPluginExt`],
//! [`crate::abi::RawHostExt`]), whose layouts are checked when they are first used and whose
//! missing methods are read as absent. Never edit a frozen module.

use abi_stable::std_types::{RResult, RStr, RString};

use crate::abi::{RawPluginBox, RawWorkerInfo, WorkerEnvRef};

pub mod v0_1_0;
pub mod v0_1_1;
pub mod v0_1_2;

/// A plugin's root module, whichever release declared it: what the host needs from it. The
/// host loads a plugin with the root module type of its release and keeps it as a `dyn Root`.
pub trait Root {
    /// The plugin's `ABI_VERSION`.
    fn abi_version(&self) -> u32;
    /// The plugin's name.
    fn name(&self) -> &'static str;
    /// The plugin crate's version.
    fn version(&self) -> &'static str;
    /// Builds the worker's instance, seen through today's [`crate::abi::RawPlugin`]: through
    /// `new_v2` with `env()` when the plugin has it, else through `new` with `info`.
    fn new_instance(
        &self,
        config: RStr<'_>,
        info: &RawWorkerInfo<'_>,
        env: &dyn Fn() -> WorkerEnvRef,
    ) -> RResult<RawPluginBox, RString>;
}

impl Root for crate::abi::PluginModRef {
    fn abi_version(&self) -> u32 {
        (*self).abi_version()
    }
    fn name(&self) -> &'static str {
        (*self).name().as_str()
    }
    fn version(&self) -> &'static str {
        (*self).version().as_str()
    }
    fn new_instance(
        &self,
        config: RStr<'_>,
        info: &RawWorkerInfo<'_>,
        env: &dyn Fn() -> WorkerEnvRef,
    ) -> RResult<RawPluginBox, RString> {
        match self.new_v2() {
            Some(new_v2) => new_v2(config, env()),
            None => (self.new())(config, info),
        }
    }
}

/// Implements [`Root`] for the root module of a frozen release (`$module::PluginModRef`), whose
/// instances `$upgrade` turns into today's.
macro_rules! frozen_root {
    ($module:ident, new_v2: $has_v2:tt, $upgrade:path) => {
        impl $crate::frozen::Root for $crate::frozen::$module::PluginModRef {
            fn abi_version(&self) -> u32 {
                (*self).abi_version()
            }
            fn name(&self) -> &'static str {
                (*self).name().as_str()
            }
            fn version(&self) -> &'static str {
                (*self).version().as_str()
            }
            fn new_instance(
                &self,
                config: abi_stable::std_types::RStr<'_>,
                info: &$crate::abi::RawWorkerInfo<'_>,
                env: &dyn Fn() -> $crate::abi::WorkerEnvRef,
            ) -> abi_stable::std_types::RResult<$crate::abi::RawPluginBox, abi_stable::std_types::RString> {
                frozen_root!(@new self, config, info, env, $has_v2).map($upgrade)
            }
        }
    };
    (@new $m:expr, $config:expr, $info:expr, $env:expr, true) => {
        match $m.new_v2() {
            Some(new_v2) => new_v2($config, $env()),
            None => ($m.new())($config, $info),
        }
    };
    (@new $m:expr, $config:expr, $info:expr, $env:expr, false) => {{
        let _ = $env;
        ($m.new())($config, $info)
    }};
}
use frozen_root;

/// Calls the wrapped old plugin's `$method` with a view (`HostView`, of the adapter's module)
/// of the next release's host handle `$host`.
macro_rules! call_old {
    ($plugin:expr, $host:expr, $method:ident $(, $arg:expr)*) => {{
        let mut view = HostView($host);
        $plugin.0.$method(RawHost_TO::from_ptr(&mut view, abi_stable::sabi_trait::TD_Opaque) $(, $arg)*)
    }};
}
use call_old;

/// The events plugin-api 0.1.0 declared, passed by an adapter (`Plugin(old box)` implementing
/// `next::RawPlugin`) to the old plugin.
macro_rules! events_0_1_0 {
    () => {
        fn on_worker_start(&mut self, host: next::RawHostRef<'_>) -> RResult<(), RString> {
            call_old!(self, host, on_worker_start)
        }
        fn on_worker_stop(&mut self, host: next::RawHostRef<'_>) -> CallStatus {
            call_old!(self, host, on_worker_stop)
        }
        fn on_worker_reload(&mut self, host: next::RawHostRef<'_>) -> CallStatus {
            call_old!(self, host, on_worker_reload)
        }
        fn on_connect(&mut self, host: next::RawHostRef<'_>, conn: ConnId) -> CallStatus {
            call_old!(self, host, on_connect, conn)
        }
        fn input(&mut self, host: next::RawHostRef<'_>, conn: ConnId, buf: RSlice<'_, u8>) -> RawFrame {
            call_old!(self, host, input, conn, buf)
        }
        fn on_message(&mut self, host: next::RawHostRef<'_>, conn: ConnId, msg: RSlice<'_, u8>) -> CallStatus {
            call_old!(self, host, on_message, conn, msg)
        }
        fn on_close(&mut self, host: next::RawHostRef<'_>, conn: ConnId) -> CallStatus {
            call_old!(self, host, on_close, conn)
        }
        fn on_error(&mut self, host: next::RawHostRef<'_>, conn: ConnId, err: ConnError) -> CallStatus {
            call_old!(self, host, on_error, conn, err)
        }
        fn on_buffer_full(&mut self, host: next::RawHostRef<'_>, conn: ConnId) -> CallStatus {
            call_old!(self, host, on_buffer_full, conn)
        }
        fn on_buffer_drain(&mut self, host: next::RawHostRef<'_>, conn: ConnId) -> CallStatus {
            call_old!(self, host, on_buffer_drain, conn)
        }
        fn on_timer(&mut self, host: next::RawHostRef<'_>, timer: TimerId, data: u64) -> CallStatus {
            call_old!(self, host, on_timer, timer, data)
        }
        fn on_drain(&mut self, host: next::RawHostRef<'_>, conn: ConnId) -> CallStatus {
            call_old!(self, host, on_drain, conn)
        }
    };
}
use events_0_1_0;

/// The events plugin-api 0.1.1 added.
macro_rules! events_0_1_1 {
    () => {
        fn on_conn_error(&mut self, host: next::RawHostRef<'_>, conn: ConnId, err: ConnErrorCode) -> CallStatus {
            call_old!(self, host, on_conn_error, conn, err)
        }
        fn on_worker_message(&mut self, host: next::RawHostRef<'_>, from_slot: u32, msg: RSlice<'_, u8>) -> CallStatus {
            call_old!(self, host, on_worker_message, from_slot, msg)
        }
    };
}
use events_0_1_1;

/// The events plugin-api 0.1.2 added.
macro_rules! events_0_1_2 {
    () => {
        fn on_task_done(
            &mut self,
            host: next::RawHostRef<'_>,
            task: u64,
            result: RResult<RVec<u8>, RString>,
        ) -> CallStatus {
            call_old!(self, host, on_task_done, task, result)
        }
        fn on_notify(&mut self, host: next::RawHostRef<'_>, data: RSlice<'_, u8>) -> CallStatus {
            call_old!(self, host, on_notify, data)
        }
    };
}
use events_0_1_2;

/// The host calls plugin-api 0.1.0 declared, forwarded by a view (`HostView(next handle)`
/// implementing this release's `RawHost`) to the next release's handle.
macro_rules! calls_0_1_0 {
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
use calls_0_1_0;

/// The host calls plugin-api 0.1.1 added.
macro_rules! calls_0_1_1 {
    () => {
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
    };
}
use calls_0_1_1;

/// The host calls plugin-api 0.1.2 added.
macro_rules! calls_0_1_2 {
    () => {
        fn peer_cred(&self, conn: ConnId) -> ROption<RawPeerCred> {
            self.0.peer_cred(conn)
        }
        fn submit_task(&mut self, job: RawJobBox) -> i64 {
            self.0.submit_task(job)
        }
        fn notifier(&mut self) -> ROption<RawNotifierBox> {
            self.0.notifier()
        }
        fn access_log(&mut self, line: RSlice<'_, u8>) -> bool {
            self.0.access_log(line)
        }
        fn send_file(&mut self, conn: ConnId, fd: i32, offset: u64, len: u64) -> i64 {
            self.0.send_file(conn, fd, offset, len)
        }
    };
}
use calls_0_1_2;

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use abi_stable::sabi_trait::TD_Opaque;
    use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};

    use crate::abi::{self, CallStatus, ConnError, ConnErrorCode, ConnId, RawFrame, RawHost, RawHost_TO, TimerId};

    /// What the 0.1.0 plugin below heard, and what its host handle answered.
    static HEARD: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// A plugin as 0.1.0 declared one (its vtable, not its SDK).
    struct Old;
    impl super::v0_1_0::RawPlugin for Old {
        fn on_worker_start(&mut self, _: super::v0_1_0::RawHostRef<'_>) -> RResult<(), RString> {
            RResult::ROk(())
        }
        fn on_worker_stop(&mut self, _: super::v0_1_0::RawHostRef<'_>) -> CallStatus {
            CallStatus::Ok
        }
        fn on_worker_reload(&mut self, _: super::v0_1_0::RawHostRef<'_>) -> CallStatus {
            CallStatus::Ok
        }
        fn on_connect(&mut self, _: super::v0_1_0::RawHostRef<'_>, _: ConnId) -> CallStatus {
            CallStatus::Ok
        }
        fn input(&mut self, _: super::v0_1_0::RawHostRef<'_>, _: ConnId, buf: RSlice<'_, u8>) -> RawFrame {
            RawFrame::Complete(buf.len() as u64)
        }
        fn on_message(
            &mut self,
            mut host: super::v0_1_0::RawHostRef<'_>,
            conn: ConnId,
            msg: RSlice<'_, u8>,
        ) -> CallStatus {
            let sent = host.send(conn, msg);
            HEARD.lock().unwrap().push(format!("message, sent {sent}, slot {}", host.slot()));
            CallStatus::Ok
        }
        fn on_close(&mut self, _: super::v0_1_0::RawHostRef<'_>, _: ConnId) -> CallStatus {
            CallStatus::Ok
        }
        fn on_error(&mut self, _: super::v0_1_0::RawHostRef<'_>, _: ConnId, err: ConnError) -> CallStatus {
            HEARD.lock().unwrap().push(format!("on_error {err:?}"));
            CallStatus::Ok
        }
        fn on_buffer_full(&mut self, _: super::v0_1_0::RawHostRef<'_>, _: ConnId) -> CallStatus {
            CallStatus::Ok
        }
        fn on_buffer_drain(&mut self, _: super::v0_1_0::RawHostRef<'_>, _: ConnId) -> CallStatus {
            CallStatus::Ok
        }
        fn on_timer(&mut self, _: super::v0_1_0::RawHostRef<'_>, _: TimerId, _: u64) -> CallStatus {
            CallStatus::Ok
        }
        fn on_drain(&mut self, _: super::v0_1_0::RawHostRef<'_>, _: ConnId) -> CallStatus {
            CallStatus::Ok
        }
    }

    /// Today's host, as far as this test needs one: slot 3, every send accepted.
    struct Today;
    impl RawHost for Today {
        fn send(&mut self, _: ConnId, _: RSlice<'_, u8>) -> bool {
            true
        }
        fn close(&mut self, _: ConnId, _: RSlice<'_, u8>) {}
        fn pause_recv(&mut self, _: ConnId, _: bool) {}
        fn peer_addr(&self, _: ConnId) -> abi::RawSockAddr {
            crate::raw_sock_addr(None)
        }
        fn local_addr(&self, _: ConnId) -> abi::RawSockAddr {
            crate::raw_sock_addr(None)
        }
        fn pending_send(&self, _: ConnId) -> u64 {
            0
        }
        fn add_timer(&mut self, _: u64, _: u64, _: u64) -> TimerId {
            TimerId(0)
        }
        fn del_timer(&mut self, _: TimerId) -> bool {
            false
        }
        fn slot(&self) -> u32 {
            3
        }
        fn service(&self) -> RStr<'_> {
            RStr::from_str("svc")
        }
        fn is_draining(&self) -> bool {
            false
        }
        fn now_ms(&self) -> u64 {
            0
        }
        fn peer_cred(&self, _: ConnId) -> ROption<abi::RawPeerCred> {
            ROption::RNone
        }
    }

    // A 0.1.0 plugin seen through three adapters (0.1.0 → 0.1.1 → 0.1.2 → today): its events
    // arrive, its host calls reach today's host, `on_conn_error` reaches its `on_error` with the
    // closest reason, and the events added since are no-ops, its extension an empty one.
    #[test]
    fn a_plugin_of_the_first_release_works_through_the_chain_of_adapters() {
        let mut plugin = super::v0_1_0::into_current(super::v0_1_0::RawPlugin_TO::from_value(Old, TD_Opaque));
        let conn = ConnId::new(1, 0);
        let mut host = Today;
        let frame = plugin.input(RawHost_TO::from_ptr(&mut host, TD_Opaque), conn, RSlice::from_slice(b"abc"));
        assert_eq!(frame, RawFrame::Complete(3));
        plugin.on_message(RawHost_TO::from_ptr(&mut host, TD_Opaque), conn, RSlice::from_slice(b"abc"));
        plugin.on_conn_error(RawHost_TO::from_ptr(&mut host, TD_Opaque), conn, ConnErrorCode::TIMEOUT);
        plugin.on_conn_error(RawHost_TO::from_ptr(&mut host, TD_Opaque), conn, ConnErrorCode::TLS_HANDSHAKE);
        let status = plugin.on_task_done(RawHost_TO::from_ptr(&mut host, TD_Opaque), 1, RResult::ROk(RVec::new()));
        assert_eq!(status, CallStatus::Ok);
        assert_eq!(plugin.extension().ext.api_version().as_str(), "");
        assert!(plugin.extension().check().is_ok());
        assert_eq!(
            *HEARD.lock().unwrap(),
            ["message, sent true, slot 3", "on_error Timeout", "on_error Io"],
            "what the 0.1.0 plugin heard"
        );
    }
}
