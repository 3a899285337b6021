//! `tracing` inside a plugin: the plugin has its own copy of tracing's global dispatcher, so the
//! host's subscriber never sees its events. This installs, in the plugin, a subscriber that formats
//! each event and hands it to the host's log function, which logs it with the plugin's target.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex, OnceLock};

use abi_stable::std_types::RStr;
use tracing_core::{
    field::{Field, Visit},
    span, Event, Level, LevelFilter, Metadata, Subscriber,
};

use crate::abi::{LogFn, LogLevel};

static SINK: OnceLock<(LogFn, LogLevel)> = OnceLock::new();

/// Installs the forwarder as this plugin's global default (once; later calls are no-ops).
pub(crate) fn install(log: LogFn, max: LogLevel) {
    if SINK.set((log, max)).is_ok() {
        let _ = tracing_core::dispatcher::set_global_default(tracing_core::Dispatch::new(Forwarder { max }));
    }
}

/// Sends one record to the host directly (used for panics).
pub(crate) fn emit(level: LogLevel, target: &str, message: &str) {
    if let Some((log, max)) = SINK.get() {
        if level >= *max {
            log(level, RStr::from_str(target), RStr::from_str(message));
        }
    } else {
        eprintln!("{target}: {message}");
    }
}

fn level_of(l: &Level) -> LogLevel {
    match *l {
        Level::TRACE => LogLevel::Trace,
        Level::DEBUG => LogLevel::Debug,
        Level::INFO => LogLevel::Info,
        Level::WARN => LogLevel::Warn,
        _ => LogLevel::Error,
    }
}

struct Forwarder {
    max: LogLevel,
}

/// One record a plugin logged, as [`crate::testing::TestHost`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Its severity.
    pub level: LogLevel,
    /// Its target (the plugin's module path, unless it gave one).
    pub target: String,
    /// Its message, then `key=value` for its other fields.
    pub message: String,
}

/// Runs `f` with a subscriber of this thread that appends every record to `logs` (all levels).
pub(crate) fn recording<R>(logs: &Arc<Mutex<Vec<LogRecord>>>, f: impl FnOnce() -> R) -> R {
    let dispatch = tracing_core::Dispatch::new(Recorder(Arc::clone(logs)));
    tracing_core::dispatcher::with_default(&dispatch, f)
}

struct Recorder(Arc<Mutex<Vec<LogRecord>>>);

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let meta = event.metadata();
        let record = LogRecord { level: level_of(meta.level()), target: meta.target().to_string(), message: line.0 };
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(record);
    }
}

impl Subscriber for Forwarder {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        level_of(metadata.level()) >= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(match self.max {
            LogLevel::Trace => LevelFilter::TRACE,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        })
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let meta = event.metadata();
        emit(level_of(meta.level()), meta.target(), &line.0);
    }
}

/// `message` first, then `key=value` for the other fields.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let rest = std::mem::take(&mut self.0);
            let _ = write!(self.0, "{value:?}");
            if !rest.is_empty() {
                self.0.push(' ');
                self.0.push_str(&rest);
            }
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            let _ = write!(self.0, "{}={value}", field.name());
        }
    }
}
