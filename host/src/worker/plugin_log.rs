//! A plugin's log records in the host's log, under the plugin's own target (its crate and
//! module, as `tracing` inside the plugin named them), so that `--log-level my_plugin=debug` or
//! `RUST_LOG=info,my_plugin::cache=trace` filters them like the host's own.
//!
//! `tracing` needs a `'static` callsite for each target and level: one is made (and leaked) the
//! first time a target is seen at a level, and registered, so filters see it like any other.
//! Their number is bounded: past [`MAX_CALLSITES`] targets, records go under the target
//! `plugin` with the plugin's target as a field.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use plugin_api::abi::LogLevel;
use tracing_core::callsite::{Callsite, Identifier};
use tracing_core::field::{FieldSet, Value};
use tracing_core::metadata::Kind;
use tracing_core::{Event, Interest, Level, Metadata};

/// The most distinct (target, level) callsites made for plugins in one worker.
const MAX_CALLSITES: usize = 512;

/// A callsite made at run time for one plugin target and level.
struct PluginCallsite {
    meta: OnceLock<Metadata<'static>>,
}

impl Callsite for PluginCallsite {
    fn set_interest(&self, _interest: Interest) {}

    fn metadata(&self) -> &Metadata<'static> {
        self.meta.get().expect("set before the callsite is registered")
    }
}

static CALLSITES: OnceLock<Mutex<HashMap<(String, u8), &'static PluginCallsite>>> = OnceLock::new();

fn level_of(level: LogLevel) -> Level {
    match level {
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
        _ => Level::TRACE,
    }
}

/// The callsite of `target` at `level` (None once too many were made).
fn callsite(target: &str, level: LogLevel) -> Option<&'static PluginCallsite> {
    let map = CALLSITES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let key = (target.to_string(), level as u8);
    if let Some(cs) = map.get(&key) {
        return Some(cs);
    }
    if map.len() >= MAX_CALLSITES {
        return None;
    }
    let cs: &'static PluginCallsite = Box::leak(Box::new(PluginCallsite { meta: OnceLock::new() }));
    let target: &'static str = Box::leak(target.to_string().into_boxed_str());
    let fields = FieldSet::new(&["message"], Identifier(cs));
    let meta = Metadata::new("plugin event", target, level_of(level), None, None, None, fields, Kind::EVENT);
    let _ = cs.meta.set(meta);
    tracing_core::callsite::register(cs);
    map.insert(key, cs);
    Some(cs)
}

/// Logs `message` under the plugin's `target`, or returns false (too many targets: the caller
/// logs it under `plugin`).
pub fn log(level: LogLevel, target: &str, message: &str) -> bool {
    let Some(cs) = callsite(target, level) else { return false };
    let meta = cs.metadata();
    tracing_core::dispatcher::get_default(|dispatch| {
        if dispatch.enabled(meta) {
            let fields = meta.fields();
            let field = fields.field("message").expect("the callsite has a message field");
            let text = format_args!("{message}");
            let values: [(&tracing_core::field::Field, Option<&dyn Value>); 1] = [(&field, Some(&text))];
            dispatch.event(&Event::new(meta, &fields.value_set(&values)));
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callsite_is_made_once_per_target_and_level() {
        let a = callsite("my_plugin::cache", LogLevel::Info).unwrap() as *const _;
        let b = callsite("my_plugin::cache", LogLevel::Info).unwrap() as *const _;
        let c = callsite("my_plugin::cache", LogLevel::Warn).unwrap() as *const _;
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(callsite("x", LogLevel::Error).unwrap().metadata().target(), "x");
        assert!(log(LogLevel::Info, "my_plugin", "no subscriber: nothing happens"));
    }
}
