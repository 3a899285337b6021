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
//! The host loads the `.so` with abi_stable, which checks every type's layout and the version of
//! this crate; a plugin built against an incompatible `plugin-api` is refused with an error.

// abi_stable's macro output trips these two lints; nowhere else are they allowed.
#![allow(non_camel_case_types, non_local_definitions)]

pub mod abi;
#[doc(hidden)]
pub mod glue;
mod log;
mod sdk;

pub use abi::{ConnId, TimerId, ABI_VERSION};
pub use sdk::{raw_sock_addr, ConnError, ConnMap, Frame, Host, Protocol, WorkerInfo};

#[doc(hidden)]
pub use abi_stable;
pub use tracing;

/// Exports a [`Protocol`] implementation as the plugin's root module. The plugin's name is the
/// crate's library name (`[lib] name`), its version the package version.
#[macro_export]
macro_rules! export_plugin {
    ($protocol:ty) => {
        #[$crate::abi_stable::export_root_module]
        pub fn host_plugin_root_module() -> $crate::abi::PluginModRef {
            $crate::glue::root_module::<$protocol>(env!("CARGO_CRATE_NAME"), env!("CARGO_PKG_VERSION"))
        }
    };
}
