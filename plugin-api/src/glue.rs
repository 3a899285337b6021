//! The glue between [`Protocol`] and the raw ABI: builds the root module, catches panics before
//! they reach the boundary, and installs the log forwarder. Used by [`crate::export_plugin!`].

use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use abi_stable::{
    library::{CheckTypeLayout, LibHeader, RootModuleResult},
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RBox, RErr, ROk, RResult, RSlice, RStr, RString, RVec},
};

use crate::abi::{
    self, CallStatus, ConnErrorCode, ConnId, LogFn, LogLevel, PluginExtension, PluginMod, PluginModRef, RawFrame,
    RawHandover, RawHostRef, RawInputEnd, RawJob, RawJobBox, RawJob_TO, RawPlugin, RawPluginBox, RawPluginExt,
    RawPluginExt_TO, RawPlugin_TO, RawStateSinkRef, RawStep, RawWorkerInfo, TimerId, WorkerEnvRef, ABI_VERSION,
};
use crate::log;
use crate::sdk::{ConnError, ExportStep, Host, Protocol, StateWriter, WorkerInfo};

/// What [`crate::export_plugin!`] declares about the plugin crate it is used in.
pub trait Export {
    /// The plugin's implementation.
    type Protocol: Protocol;
    /// The plugin's name (its crate's library name).
    const NAME: &'static str;
    /// The plugin crate's version.
    const VERSION: &'static str;
}

/// The header abi_stable's loader looks for in a plugin: what `#[export_root_module]` puts in the
/// static it exports, for the root module of plugin `E`. The layout of the root module is
/// checked when the host loads it (`CheckTypeLayout::Yes`, as the attribute does by default).
pub const fn lib_header<E: Export>() -> LibHeader {
    // SAFETY: `from_constructor` requires the constructor to return a `PrefixRef<ErasedPrefix>`
    // transmuted from a `PrefixRef<M>` with `M` the module type given here. `load_root_module`
    // gets it from `__call_root_module_loader` applied to a function returning a
    // `PluginModRef`, exactly as the code `#[export_root_module]` generates does, and `M` is
    // `PluginModRef`.
    unsafe { LibHeader::from_constructor::<PluginModRef>(load_root_module::<E>, CheckTypeLayout::Yes) }
}

extern "C" fn load_root_module<E: Export>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(root_module_of::<E>)
}

fn root_module_of<E: Export>() -> PluginModRef {
    root_module::<E::Protocol>(E::NAME, E::VERSION)
}

/// Builds the root module of a plugin; called by the function [`crate::export_plugin!`] exports.
pub fn root_module<P: Protocol>(name: &'static str, version: &'static str) -> PluginModRef {
    PluginMod {
        abi_version: ABI_VERSION,
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        new: new_instance::<P>,
        new_v2: new_instance_v2::<P>,
    }
    .leak_into_prefix()
}

/// `new` (ABI 1), called by hosts older than plugin-api 0.1.1.
extern "C" fn new_instance<P: Protocol>(config: RStr<'_>, info: &RawWorkerInfo<'_>) -> RResult<RawPluginBox, RString> {
    let worker = WorkerInfo {
        service: info.service.to_string(),
        slot: info.slot,
        pid: info.pid,
        max_package_size: usize::try_from(info.max_package_size).unwrap_or(usize::MAX),
        max_send_buffer: usize::try_from(info.max_send_buffer).unwrap_or(usize::MAX),
        worker_count: None,
    };
    build::<P>(config, worker, info.log, info.max_log_level)
}

/// `new_v2`, called by hosts since plugin-api 0.1.1.
extern "C" fn new_instance_v2<P: Protocol>(config: RStr<'_>, env: WorkerEnvRef) -> RResult<RawPluginBox, RString> {
    let worker = WorkerInfo {
        service: env.service().to_string(),
        slot: env.slot(),
        pid: env.pid(),
        max_package_size: usize::try_from(env.max_package_size()).unwrap_or(usize::MAX),
        max_send_buffer: usize::try_from(env.max_send_buffer()).unwrap_or(usize::MAX),
        worker_count: Some(env.worker_count()).filter(|&n| n > 0),
    };
    build::<P>(config, worker, env.log(), env.max_log_level())
}

fn build<P: Protocol>(
    config: RStr<'_>,
    worker: WorkerInfo,
    log: LogFn,
    max: LogLevel,
) -> RResult<RawPluginBox, RString> {
    log::install(log, max);
    install_panic_hook();
    match panic::catch_unwind(|| P::new(config.as_str(), &worker)) {
        Ok(Ok(p)) => ROk(RawPlugin_TO::from_value(Glue(p), TD_Opaque)),
        Ok(Err(e)) => RErr(RString::from(e)),
        Err(_) => RErr(RString::from("the plugin panicked while starting (see the log)")),
    }
}

/// Panics are logged through the host (with their location) instead of being printed to stderr
/// by this plugin's own copy of std.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(non-string panic payload)");
            let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            log::emit(crate::abi::LogLevel::Error, "plugin::panic", &format!("plugin panicked{at}: {msg}"));
        }))
    });
}

/// Runs one callback, turning a panic into `CallStatus::Panicked`.
fn guard(f: impl FnOnce()) -> CallStatus {
    match panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => CallStatus::Ok,
        Err(_) => CallStatus::Panicked,
    }
}

struct Glue<P>(P);

impl<P: Protocol> RawPlugin for Glue<P> {
    fn on_worker_start(&mut self, host: RawHostRef<'_>) -> RResult<(), RString> {
        let mut host = Host::from_raw(host);
        match panic::catch_unwind(AssertUnwindSafe(|| self.0.on_worker_start(&mut host))) {
            Ok(Ok(())) => ROk(()),
            Ok(Err(e)) => RErr(RString::from(e)),
            Err(_) => RErr(RString::from("the plugin panicked in its worker-start hook")),
        }
    }

    fn on_worker_stop(&mut self, host: RawHostRef<'_>) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_worker_stop(&mut host))
    }

    fn on_worker_reload(&mut self, host: RawHostRef<'_>) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_worker_reload(&mut host))
    }

    fn on_connect(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_connect(&mut host, conn))
    }

    fn input(&mut self, host: RawHostRef<'_>, conn: ConnId, buf: RSlice<'_, u8>) -> RawFrame {
        let mut host = Host::from_raw(host);
        match panic::catch_unwind(AssertUnwindSafe(|| self.0.input(&mut host, conn, buf.as_slice()))) {
            Ok(frame) => frame.into(),
            Err(_) => RawFrame::Panicked,
        }
    }

    fn on_message(&mut self, host: RawHostRef<'_>, conn: ConnId, msg: RSlice<'_, u8>) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_message(&mut host, conn, msg.as_slice()))
    }

    fn on_close(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_close(&mut host, conn))
    }

    fn on_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: abi::ConnError) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_error(&mut host, conn, ConnError::from(err)))
    }

    fn on_buffer_full(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_buffer_full(&mut host, conn))
    }

    fn on_buffer_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_buffer_drain(&mut host, conn))
    }

    fn on_timer(&mut self, host: RawHostRef<'_>, timer: TimerId, data: u64) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_timer(&mut host, timer, data))
    }

    fn on_drain(&mut self, host: RawHostRef<'_>, conn: ConnId) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_drain(&mut host, conn))
    }

    fn on_conn_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnErrorCode) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_error(&mut host, conn, ConnError::from(err)))
    }

    fn on_worker_message(&mut self, host: RawHostRef<'_>, from_slot: u32, msg: RSlice<'_, u8>) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_worker_message(&mut host, from_slot, msg.as_slice()))
    }

    fn on_task_done(&mut self, host: RawHostRef<'_>, task: u64, result: RResult<RVec<u8>, RString>) -> CallStatus {
        let mut host = Host::from_raw(host);
        let result = result.into_result().map(RVec::into_vec).map_err(RString::into_string);
        guard(|| self.0.on_task_done(&mut host, crate::TaskId(task), result))
    }

    fn on_notify(&mut self, host: RawHostRef<'_>, data: RSlice<'_, u8>) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_notify(&mut host, data.as_slice()))
    }

    fn extension(&mut self) -> PluginExtension<'_> {
        PluginExtension::new(RawPluginExt_TO::from_ptr(self, TD_Opaque))
    }
}

/// The events added since plugin-api 0.1.3 (see "ABI evolution policy" in [`crate::abi`] for
/// how one is added).
impl<P: Protocol> RawPluginExt for Glue<P> {
    fn api_version(&self) -> RStr<'static> {
        RStr::from_str(env!("CARGO_PKG_VERSION"))
    }

    fn on_input_end(&mut self, host: RawHostRef<'_>, conn: ConnId) -> RawInputEnd {
        let mut host = Host::from_raw(host);
        match panic::catch_unwind(AssertUnwindSafe(|| self.0.on_input_end(&mut host, conn))) {
            Ok(end) => end.into(),
            Err(_) => RawInputEnd::PANICKED,
        }
    }

    fn handover_version(&self) -> u32 {
        P::HANDOVER_VERSION
    }

    fn handover_accepts(&mut self, host: RawHostRef<'_>, plugin: RStr<'_>, version: u32) -> bool {
        let mut host = Host::from_raw(host);
        let plugin = plugin.as_str();
        panic::catch_unwind(AssertUnwindSafe(|| self.0.handover_accepts(&mut host, plugin, version))).unwrap_or(false)
    }

    fn handover_export_conn(&mut self, host: RawHostRef<'_>, conn: ConnId, sink: RawStateSinkRef<'_>) -> RawHandover {
        let mut host = Host::from_raw(host);
        let mut out = StateWriter::new(sink);
        let moved = panic::catch_unwind(AssertUnwindSafe(|| self.0.export_conn(&mut host, conn, &mut out)));
        handover_answer(moved, &out)
    }

    fn handover_export_worker(&mut self, host: RawHostRef<'_>, sink: RawStateSinkRef<'_>) -> RawHandover {
        let mut host = Host::from_raw(host);
        let mut out = StateWriter::new(sink);
        let moved = panic::catch_unwind(AssertUnwindSafe(|| self.0.export_worker(&mut host, &mut out)));
        handover_answer(moved, &out)
    }

    fn handover_adopt_worker(&mut self, host: RawHostRef<'_>, version: u32, state: RSlice<'_, u8>) -> RawHandover {
        let mut host = Host::from_raw(host);
        let adopted =
            panic::catch_unwind(AssertUnwindSafe(|| self.0.adopt_worker(&mut host, version, state.as_slice())));
        adopt_answer(adopted)
    }

    fn handover_adopt_conn(
        &mut self,
        host: RawHostRef<'_>,
        conn: ConnId,
        version: u32,
        state: RSlice<'_, u8>,
    ) -> RawHandover {
        let mut host = Host::from_raw(host);
        let adopted =
            panic::catch_unwind(AssertUnwindSafe(|| self.0.adopt_conn(&mut host, conn, version, state.as_slice())));
        adopt_answer(adopted)
    }

    fn on_publish(&mut self, host: RawHostRef<'_>, topic: RSlice<'_, u8>, msg: RSlice<'_, u8>) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_publish(&mut host, topic.as_slice(), msg.as_slice()))
    }

    fn handover_in_batches(&self) -> bool {
        panic::catch_unwind(AssertUnwindSafe(|| self.0.handover_in_batches())).unwrap_or(false)
    }

    fn on_publish_missed(
        &mut self,
        host: RawHostRef<'_>,
        conn: ConnId,
        topic: RSlice<'_, u8>,
        msg: RSlice<'_, u8>,
    ) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_publish_missed(&mut host, conn, topic.as_slice(), msg.as_slice()))
    }

    fn handover_export_worker_step(&mut self, host: RawHostRef<'_>, sink: RawStateSinkRef<'_>) -> RawStep {
        let mut host = Host::from_raw(host);
        let mut out = StateWriter::new(sink);
        match panic::catch_unwind(AssertUnwindSafe(|| self.0.export_worker_step(&mut host, &mut out))) {
            Ok(_) if out.failed() => RawStep::FAILED,
            Ok(ExportStep::More) => RawStep::MORE,
            Ok(ExportStep::Ready) => RawStep::READY,
            Ok(ExportStep::Failed) | Err(_) => RawStep::FAILED,
        }
    }

    fn handover_adopts_steps(&self) -> bool {
        P::HANDOVER_STEPS
    }

    fn handover_adopt_worker_step(&mut self, host: RawHostRef<'_>, version: u32, state: RSlice<'_, u8>) -> RawHandover {
        let mut host = Host::from_raw(host);
        let adopted =
            panic::catch_unwind(AssertUnwindSafe(|| self.0.adopt_worker_step(&mut host, version, state.as_slice())));
        adopt_answer(adopted)
    }

    fn handover_drop_steps(&mut self, host: RawHostRef<'_>) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.drop_worker_steps(&mut host))
    }
}

/// An export's answer: a move only when the plugin said so and every write was stored.
fn handover_answer(moved: std::thread::Result<bool>, out: &StateWriter<'_>) -> RawHandover {
    match moved {
        Ok(true) if !out.failed() => RawHandover::MOVE,
        Ok(_) => RawHandover::DECLINE,
        Err(_) => RawHandover::PANICKED,
    }
}

fn adopt_answer(adopted: std::thread::Result<bool>) -> RawHandover {
    match adopted {
        Ok(true) => RawHandover::MOVE,
        Ok(false) => RawHandover::DECLINE,
        Err(_) => RawHandover::PANICKED,
    }
}

/// Wraps a closure as a [`RawJob`] ([`Host::spawn_task`]): it runs once; a panic is caught here,
/// in the plugin's code, and returned as `Err` with its message (it never unwinds into the host).
pub fn job<F>(f: F) -> RawJobBox
where
    F: FnOnce() -> Vec<u8> + Send + 'static,
{
    RawJob_TO::from_value(Job(Some(f)), TD_Opaque)
}

struct Job<F>(Option<F>);

impl<F: FnOnce() -> Vec<u8> + Send + 'static> RawJob for Job<F> {
    fn run(&mut self) -> RResult<RVec<u8>, RString> {
        let Some(f) = self.0.take() else {
            return RErr(RString::from("the job ran already"));
        };
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(bytes) => ROk(RVec::from(bytes)),
            Err(payload) => RErr(RString::from(panic_message(payload.as_ref()))),
        }
    }
}

/// The message of a caught panic (`panic!("...")` payloads are a `&str` or a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// Wraps a [`Protocol`] as an owned raw plugin without a `.so`, for tests that drive a plugin
/// in-process through the ABI types.
pub fn instance<P: Protocol>(p: P) -> RawPluginBox {
    RawPlugin_TO::from_value(Glue(p), TD_Opaque)
}

#[allow(dead_code)]
fn _assert_box_type(b: RawPluginBox) -> RawPlugin_TO<'static, RBox<()>> {
    b
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use abi_stable::std_types::RStr;
    use abi_stable::{prefix_type::PrefixTypeTrait, sabi_trait::TD_Opaque};

    use super::*;
    use crate::abi::{LogLevel, RawHost, RawHost_TO, RawSockAddr, WorkerEnv};

    /// What the probe saw: service, worker count from `new`, error, `Host::worker_count()`.
    type Seen = (String, Option<u32>, Option<ConnError>, Option<u32>);

    /// What the probe plugin saw, per test (each test uses its own service name).
    static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

    struct Probe(String);

    impl Protocol for Probe {
        fn new(_config: &str, worker: &WorkerInfo) -> Result<Self, String> {
            SEEN.lock().unwrap().push((worker.service.clone(), worker.worker_count, None, None));
            Ok(Probe(worker.service.clone()))
        }
        fn input(&mut self, _: &mut Host<'_>, _: ConnId, buf: &[u8]) -> crate::Frame {
            crate::Frame::Complete(buf.len())
        }
        fn on_message(&mut self, host: &mut Host<'_>, _: ConnId, _: &[u8]) {
            SEEN.lock().unwrap().push((self.0.clone(), None, None, host.worker_count()));
        }
        fn on_error(&mut self, _: &mut Host<'_>, _: ConnId, err: ConnError) {
            SEEN.lock().unwrap().push((self.0.clone(), None, Some(err), None));
        }
    }

    /// A host as old as plugin-api 0.1.0 looks to a plugin: its vtable has none of the methods
    /// added since (each answers its default). Not `testing::TestHost`, which has them all.
    struct OldHost;
    impl RawHost for OldHost {
        fn send(&mut self, _: ConnId, _: RSlice<'_, u8>) -> bool {
            true
        }
        fn close(&mut self, _: ConnId, _: RSlice<'_, u8>) {}
        fn pause_recv(&mut self, _: ConnId, _: bool) {}
        fn peer_addr(&self, _: ConnId) -> RawSockAddr {
            crate::raw_sock_addr(None)
        }
        fn local_addr(&self, _: ConnId) -> RawSockAddr {
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
            0
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
    }

    extern "C" fn no_log(_: LogLevel, _: RStr<'_>, _: RStr<'_>) {}

    fn seen(service: &str) -> Vec<(Option<u32>, Option<ConnError>, Option<u32>)> {
        SEEN.lock().unwrap().iter().filter(|s| s.0 == service).map(|s| (s.1, s.2, s.3)).collect()
    }

    #[test]
    fn new_v2_tells_the_worker_count_and_new_does_not() {
        let module = root_module::<Probe>("probe", "1.0.0");
        let new_v2 = module.new_v2().expect("today's glue exports new_v2");
        let env = WorkerEnv {
            service: RStr::from_str("v2"),
            slot: 1,
            pid: 2,
            max_package_size: 10,
            max_send_buffer: 20,
            max_log_level: LogLevel::Error,
            log: no_log,
            worker_count: 4,
        };
        assert!(new_v2(RStr::from_str(""), env.leak_into_prefix()).is_ok());
        assert_eq!(seen("v2"), vec![(Some(4), None, None)]);

        let info = RawWorkerInfo {
            service: RStr::from_str("v1"),
            slot: 1,
            pid: 2,
            max_package_size: 10,
            max_send_buffer: 20,
            max_log_level: LogLevel::Error,
            log: no_log,
        };
        assert!((module.new())(RStr::from_str(""), &info).is_ok());
        assert_eq!(seen("v1"), vec![(None, None, None)], "an older host cannot say");
    }

    #[test]
    fn topics_are_unsupported_on_a_host_without_them() {
        let mut old = OldHost;
        let mut host = Host::from_raw(RawHost_TO::from_ptr(&mut old, TD_Opaque));
        assert_eq!(host.subscribe(ConnId::new(0, 1), "t"), Err(crate::TopicError::Unsupported));
        assert_eq!(host.publish("t", b"x"), Err(crate::TopicError::Unsupported));
        assert_eq!(host.subscribers("t"), Err(crate::TopicError::Unsupported));
    }

    #[test]
    fn host_worker_count_is_none_from_a_host_without_it() {
        let mut plugin = instance(Probe("hosts".into()));
        let conn = ConnId::new(0, 0);
        let mut old = OldHost;
        plugin.on_message(RawHost_TO::from_ptr(&mut old, TD_Opaque), conn, RSlice::from_slice(b"x"));
        let mut new = crate::testing::TestHost::new();
        new.worker_count = 6;
        plugin.on_message(new.raw(), conn, RSlice::from_slice(b"x"));
        assert_eq!(seen("hosts"), vec![(None, None, None), (None, None, Some(6))]);
    }

    #[test]
    fn conn_errors_reach_on_error_by_either_path() {
        let mut plugin = instance(Probe("errors".into()));
        let conn = ConnId::new(0, 0);
        let mut host = OldHost;
        let codes = [
            ConnErrorCode::PACKAGE_TOO_LARGE,
            ConnErrorCode::TLS_HANDSHAKE,
            ConnErrorCode::CONNECT_REFUSED,
            ConnErrorCode(200),
        ];
        for code in codes {
            plugin.on_conn_error(RawHost_TO::from_ptr(&mut host, TD_Opaque), conn, code);
        }
        plugin.on_error(RawHost_TO::from_ptr(&mut host, TD_Opaque), conn, abi::ConnError::Timeout);
        let errs: Vec<_> = seen("errors").into_iter().map(|s| s.1.unwrap()).collect();
        assert_eq!(
            errs,
            [
                ConnError::PackageTooLarge,
                ConnError::TlsHandshake,
                ConnError::ConnectRefused,
                ConnError::Io,
                ConnError::Timeout
            ]
        );
    }

    #[test]
    fn new_codes_fall_back_to_io_for_old_plugins_and_old_ones_round_trip() {
        for old in
            [abi::ConnError::PackageTooLarge, abi::ConnError::Timeout, abi::ConnError::SendFailed, abi::ConnError::Io]
        {
            assert_eq!(ConnErrorCode::from(old).closest_conn_error(), old);
        }
        for new in [ConnErrorCode::CONNECT_REFUSED, ConnErrorCode::CONNECT_TIMEOUT, ConnErrorCode::TLS_HANDSHAKE] {
            assert_eq!(new.closest_conn_error(), abi::ConnError::Io);
            assert_eq!(ConnErrorCode::from(ConnError::from(new)), new);
        }
    }

    // A plugin asking an older host (whose vtable lacks `connect`) to connect hears
    // "unsupported", and no connection of that host is outbound.
    #[test]
    fn connect_on_a_host_without_it_is_unsupported() {
        let mut old = OldHost;
        let mut host = Host::from_raw(RawHost_TO::from_ptr(&mut old, TD_Opaque));
        assert_eq!(host.connect("127.0.0.1:1"), Err(crate::ConnectError::Unsupported));
        let addr: std::net::SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(host.connect(addr), Err(crate::ConnectError::Unsupported));
        assert!(!host.is_outbound(ConnId::new(0, 1)));
    }

    #[test]
    fn a_job_returns_its_bytes_and_a_panicking_job_its_message() {
        let mut ok = job(|| b"done".to_vec());
        assert_eq!(ok.run().into_result().map(RVec::into_vec), Ok(b"done".to_vec()));
        assert!(ok.run().is_err(), "a job runs once");
        let mut bad = job(|| panic!("job exploded"));
        assert_eq!(bad.run().into_result().map_err(RString::into_string), Err("job exploded".to_string()));
        let n = 7;
        let mut formatted = job(move || panic!("{n} bad"));
        assert_eq!(formatted.run().into_result().map_err(RString::into_string), Err("7 bad".to_string()));
    }

    // A plugin on an older host (whose vtable lacks the task calls) hears "unsupported".
    #[test]
    fn tasks_on_a_host_without_them_are_unsupported() {
        let mut old = OldHost;
        let mut host = Host::from_raw(RawHost_TO::from_ptr(&mut old, TD_Opaque));
        assert_eq!(host.spawn_task(Vec::new).unwrap_err(), crate::TaskError::Unsupported);
        assert!(host.notifier().is_none());
    }

    /// A plugin taking part in hand-overs: its state is a counter per connection and a total.
    struct Mover {
        total: u64,
        per_conn: std::collections::HashMap<ConnId, u8>,
    }

    impl Protocol for Mover {
        const HANDOVER_VERSION: u32 = 3;
        fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
            Ok(Mover { total: 0, per_conn: Default::default() })
        }
        fn input(&mut self, _: &mut Host<'_>, _: ConnId, buf: &[u8]) -> crate::Frame {
            crate::Frame::Complete(buf.len())
        }
        fn on_message(&mut self, _: &mut Host<'_>, _: ConnId, _: &[u8]) {}
        fn export_conn(&mut self, _: &mut Host<'_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
            use std::io::Write;
            match self.per_conn.get(&conn) {
                Some(&99) => panic!("cannot export this one"),
                Some(&n) => out.write_all(&[n]).is_ok(),
                None => false,
            }
        }
        fn adopt_conn(&mut self, _: &mut Host<'_>, conn: ConnId, version: u32, state: &[u8]) -> bool {
            version == 3 && state.len() == 1 && self.per_conn.insert(conn, state[0]).is_none()
        }
        fn export_worker(&mut self, _: &mut Host<'_>, out: &mut StateWriter<'_>) -> bool {
            use std::io::Write;
            // In pieces, as a serializer writes.
            self.total.to_le_bytes().chunks(3).all(|piece| out.write_all(piece).is_ok())
        }
        fn adopt_worker(&mut self, _: &mut Host<'_>, _: u32, state: &[u8]) -> bool {
            state.try_into().map(|b| self.total = u64::from_le_bytes(b)).is_ok()
        }
        // (An instance decides: here, by its state.)
        fn handover_in_batches(&self) -> bool {
            self.total != 0
        }
        fn on_publish_missed(&mut self, host: &mut Host<'_>, conn: ConnId, topic: &[u8], msg: &[u8]) {
            assert_eq!(topic, b"*");
            if msg == b"boom" {
                panic!("a message it cannot take");
            }
            host.send(conn, msg);
        }
    }

    // `on_publish_missed` reaches the instance with its connection, topic and message; a panic
    // in it is caught and answered as one.
    #[test]
    fn a_missed_message_crosses_the_boundary() {
        let mut p = instance(Mover::new("", &crate::testing::TestHost::new().worker_info()).unwrap());
        let mut host = crate::testing::TestHost::new();
        let conn = ConnId::new(4, 1);
        let mut ext = p.extension();
        let (star, msg) = (RSlice::from_slice(b"*"), RSlice::from_slice(b"m1"));
        assert_eq!(ext.ext.on_publish_missed(host.raw(), conn, star, msg), CallStatus::Ok);
        let boom = RSlice::from_slice(b"boom");
        assert_eq!(ext.ext.on_publish_missed(host.raw(), conn, star, boom), CallStatus::Panicked);
        drop(ext);
        assert_eq!(host.take_sent(conn), b"m1");
    }

    // The hand-over events through the ABI: the version, the state written through the host's
    // sink and read back, declines, refusals and a panic read as one.
    #[test]
    fn hand_over_events_cross_the_boundary() {
        use crate::abi::{state_sink, RawHandover};
        let mut old = Mover::new("", &crate::testing::TestHost::new().worker_info()).unwrap();
        old.total = 0x0102_0304_0506_0708;
        let (a, b, c) = (ConnId::new(1, 1), ConnId::new(2, 1), ConnId::new(3, 1));
        old.per_conn.insert(a, 7);
        old.per_conn.insert(c, 99);
        let mut old = instance(old);
        let mut new = instance(Mover::new("", &crate::testing::TestHost::new().worker_info()).unwrap());
        let mut host = crate::testing::TestHost::new();
        let mut ext = old.extension();
        let ext = &mut ext.ext;
        assert_eq!(ext.handover_version(), 3);
        assert!(ext.handover_in_batches(), "the instance's answer crosses the boundary");

        let mut state = Vec::new();
        assert_eq!(ext.handover_export_conn(host.raw(), a, state_sink(&mut state)), RawHandover::MOVE);
        assert_eq!(state, [7]);
        assert_eq!(ext.handover_export_conn(host.raw(), b, state_sink(&mut Vec::new())), RawHandover::DECLINE);
        assert_eq!(ext.handover_export_conn(host.raw(), c, state_sink(&mut Vec::new())), RawHandover::PANICKED);
        let mut worker = Vec::new();
        assert_eq!(ext.handover_export_worker(host.raw(), state_sink(&mut worker)), RawHandover::MOVE);

        let mut theirs = new.extension();
        let theirs = &mut theirs.ext;
        assert!(!theirs.handover_in_batches());
        assert!(theirs.handover_accepts(host.raw(), RStr::from_str("mover"), 3));
        assert!(!theirs.handover_accepts(host.raw(), RStr::from_str("mover"), 4), "another version");
        let moved = ConnId::new(0, 5);
        let slice = RSlice::from_slice(&worker);
        assert_eq!(theirs.handover_adopt_worker(host.raw(), 3, slice), RawHandover::MOVE);
        assert_eq!(theirs.handover_adopt_conn(host.raw(), moved, 3, RSlice::from_slice(&state)), RawHandover::MOVE);
        assert_eq!(theirs.handover_adopt_conn(host.raw(), moved, 3, RSlice::from_slice(&state)), RawHandover::DECLINE);
        assert_eq!(
            theirs.handover_adopt_worker(host.raw(), 3, RSlice::from_slice(&[1])),
            RawHandover::DECLINE,
            "a state it cannot read"
        );
    }

    /// A plugin whose worker state goes out in steps: `left` bytes, two a step; a step of 9
    /// panics.
    struct Stepper {
        left: Vec<u8>,
        staged: Vec<u8>,
    }

    impl Protocol for Stepper {
        const HANDOVER_VERSION: u32 = 1;
        const HANDOVER_STEPS: bool = true;
        fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
            Ok(Stepper { left: Vec::new(), staged: Vec::new() })
        }
        fn input(&mut self, _: &mut Host<'_>, _: ConnId, buf: &[u8]) -> crate::Frame {
            crate::Frame::Complete(buf.len())
        }
        fn on_message(&mut self, _: &mut Host<'_>, _: ConnId, _: &[u8]) {}
        fn export_worker_step(&mut self, _: &mut Host<'_>, out: &mut StateWriter<'_>) -> ExportStep {
            use std::io::Write;
            let n = self.left.len().min(2);
            let step: Vec<u8> = self.left.drain(..n).collect();
            assert!(step != [9], "a step of 9");
            match out.write_all(&step) {
                Ok(()) if self.left.is_empty() => ExportStep::Ready,
                Ok(()) => ExportStep::More,
                Err(_) => ExportStep::Failed,
            }
        }
        fn adopt_worker_step(&mut self, _: &mut Host<'_>, version: u32, state: &[u8]) -> bool {
            self.staged.extend_from_slice(state);
            version == 1 && !state.is_empty()
        }
        fn drop_worker_steps(&mut self, _: &mut Host<'_>) {
            self.staged = Vec::new();
        }
    }

    // The pre-copy events through the ABI: steps until ready, staged, dropped; a panic is a
    // failure; a plugin without them writes no step and adopts none.
    #[test]
    fn steps_cross_the_boundary_and_default_to_none() {
        use crate::abi::{state_sink, RawHandover, RawStep};
        let mut host = crate::testing::TestHost::new();
        let info = host.worker_info();
        let mut old = instance(Stepper { left: vec![1, 2, 3, 4, 5], ..Stepper::new("", &info).unwrap() });
        let mut new = instance(Stepper::new("", &info).unwrap());
        let mut ext = old.extension();
        let (mut steps, mut answers) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let mut step = Vec::new();
            answers.push(ext.ext.handover_export_worker_step(host.raw(), state_sink(&mut step)));
            steps.push(step);
        }
        assert_eq!(answers, [RawStep::MORE, RawStep::MORE, RawStep::READY]);
        assert_eq!(steps, [vec![1, 2], vec![3, 4], vec![5]]);
        let mut theirs = new.extension();
        assert!(theirs.ext.handover_adopts_steps());
        for step in &steps {
            assert_eq!(
                theirs.ext.handover_adopt_worker_step(host.raw(), 1, RSlice::from_slice(step)),
                RawHandover::MOVE
            );
        }
        assert_eq!(
            theirs.ext.handover_adopt_worker_step(host.raw(), 2, RSlice::from_slice(&[1])),
            RawHandover::DECLINE
        );
        assert_eq!(theirs.ext.handover_drop_steps(host.raw()), CallStatus::Ok);

        let mut panics = instance(Stepper { left: vec![9], ..Stepper::new("", &info).unwrap() });
        let mut ext = panics.extension();
        assert_eq!(ext.ext.handover_export_worker_step(host.raw(), state_sink(&mut Vec::new())), RawStep::FAILED);

        let mut plain = instance(Mover::new("", &info).unwrap());
        let mut ext = plain.extension();
        let mut step = Vec::new();
        assert_eq!(ext.ext.handover_export_worker_step(host.raw(), state_sink(&mut step)), RawStep::READY);
        assert!(step.is_empty(), "the default writes nothing");
        assert!(!ext.ext.handover_adopts_steps());
        assert_eq!(ext.ext.handover_adopt_worker_step(host.raw(), 3, RSlice::from_slice(&[1])), RawHandover::DECLINE);
    }

    #[test]
    fn the_exported_symbol_is_the_one_abi_stable_looks_for() {
        // `export_plugin!` spells the name out (a macro_rules cannot compute an identifier).
        let src = include_str!("lib.rs");
        let name = abi_stable::library::ROOT_MODULE_LOADER_NAME;
        assert!(src.contains(&format!("pub static {name}:")), "export_plugin! must export `{name}`");
    }
}
