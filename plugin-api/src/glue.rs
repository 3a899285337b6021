//! The glue between [`Protocol`] and the raw ABI: builds the root module, catches panics before
//! they reach the boundary, and installs the log forwarder. Used by [`crate::export_plugin!`].

use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RBox, RErr, ROk, RResult, RSlice, RStr, RString},
};

use crate::abi::{
    CallStatus, ConnError, ConnId, PluginMod, PluginModRef, RawFrame, RawHostRef, RawPlugin, RawPluginBox,
    RawPlugin_TO, RawWorkerInfo, TimerId, ABI_VERSION,
};
use crate::log;
use crate::sdk::{Host, Protocol, WorkerInfo};

/// Builds the root module of a plugin; called by the function [`crate::export_plugin!`] exports.
pub fn root_module<P: Protocol>(name: &'static str, version: &'static str) -> PluginModRef {
    PluginMod {
        abi_version: ABI_VERSION,
        name: RStr::from_str(name),
        version: RStr::from_str(version),
        new: new_instance::<P>,
    }
    .leak_into_prefix()
}

extern "C" fn new_instance<P: Protocol>(config: RStr<'_>, info: &RawWorkerInfo<'_>) -> RResult<RawPluginBox, RString> {
    log::install(info.log, info.max_log_level);
    install_panic_hook();
    let worker = WorkerInfo {
        service: info.service.to_string(),
        slot: info.slot,
        pid: info.pid,
        max_package_size: usize::try_from(info.max_package_size).unwrap_or(usize::MAX),
        max_send_buffer: usize::try_from(info.max_send_buffer).unwrap_or(usize::MAX),
    };
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

    fn on_error(&mut self, host: RawHostRef<'_>, conn: ConnId, err: ConnError) -> CallStatus {
        let mut host = Host::from_raw(host);
        guard(|| self.0.on_error(&mut host, conn, err))
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
