//! The stable ABI between `host` and its protocol plugins, and the safe SDK to write one.
//!
//! A plugin is a `cdylib` that implements [`Protocol`] and exports it with [`export_plugin!`]:
//!
//! ```
//! use plugin_api::{export_plugin, ConnId, Frame, Host, Protocol, WorkerInfo};
//!
//! struct Echo;
//! impl Protocol for Echo {
//!     fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> { Ok(Echo) }
//!     fn input(&mut self, _: &mut Host<'_>, _: ConnId, buf: &[u8]) -> Frame {
//!         Frame::Complete(buf.len())
//!     }
//!     fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
//!         host.send(conn, msg);
//!     }
//! }
//! export_plugin!(Echo);
//! ```
//!
//! A plugin depends on `plugin-api` only (`crate-type = ["cdylib", "rlib"]`), not on abi_stable.
//! The host loads the `.so` with abi_stable, which checks every type's layout and the version of
//! this crate; a plugin built against an incompatible `plugin-api` is refused with an error. What
//! may change between releases, and how plugins built against 0.1.0 keep loading, is the "ABI
//! evolution policy" in [`abi`].

// abi_stable's macro output trips these two lints; nowhere else are they allowed.
#![allow(non_camel_case_types, non_local_definitions)]
#![warn(missing_docs)]

pub mod abi;
#[doc(hidden)]
pub mod frozen;
#[doc(hidden)]
pub mod glue;
mod log;
mod sdk;
pub mod testing;

pub use abi::{
    ConnErrorCode, ConnId, ConnectErrorCode, TimerId, ABI_VERSION, MAX_PUBLISH, MAX_TOPICS_PER_CONN, MAX_TOPIC_LEN,
    MAX_WORKER_MESSAGE,
};
pub use sdk::{
    raw_sock_addr, ConnError, ConnMap, ConnectAddr, ConnectError, Counter, ExportStep, Frame, Host, InputEnd, Notifier,
    NotifyError, PeerCred, Protocol, SendFileError, StateWriter, TaskError, TaskId, TopicError, Transport, WorkerInfo,
    WorkerMsgError,
};

/// The abi_stable this crate is built with, for code that implements the raw ABI itself (a fake
/// [`abi::RawHost`] in a plugin's tests, say). A plugin needs no dependency on abi_stable.
pub use abi_stable;
pub use tracing;

/// Exports a [`Protocol`] implementation as the plugin's root module. The plugin's name is the
/// crate's library name (`[lib] name`), its version the package version.
///
/// The plugin needs no other dependency than `plugin-api`: this expands to what abi_stable's
/// `#[export_root_module]` generates (the same exported symbol, the same layout checks), through
/// `plugin-api`'s own paths.
#[macro_export]
macro_rules! export_plugin {
    ($protocol:ty) => {
        struct __HostPluginExport;

        impl $crate::glue::Export for __HostPluginExport {
            type Protocol = $protocol;
            const NAME: &'static str = env!("CARGO_CRATE_NAME");
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
        }

        /// The plugin's root module, found by the host's loader under abi_stable's name for it
        /// (`abi_stable::library::ROOT_MODULE_LOADER_NAME`).
        #[no_mangle]
        pub static _1as_0lib_1header_0root_bmodule_bloader: $crate::abi_stable::library::LibHeader =
            $crate::glue::lib_header::<__HostPluginExport>();
    };
}
