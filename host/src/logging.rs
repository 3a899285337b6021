//! Where log lines go, and why logging never kills a process: a failed write to stderr (the pipe
//! to a log shipper closed, `host … 2>&1 | head` ended) is dropped and counted, never an error
//! that tracing-subscriber would report with `eprintln!` (which panics on a broken stderr). Once
//! writing works again, one line says how many were lost.
//!
//! Workers also rate-limit their warnings and errors ([`RateLimit`]): a plugin that panics on
//! every connection must not fill the disk with two lines per connection.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tracing::callsite::Identifier;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// Warnings and errors one call site may log per second in a worker; the rest are counted and
/// summed up in one line when the next second begins.
pub const LINES_PER_SECOND: u32 = 20;

/// A layer that lets at most `per_second` warnings or errors of one call site through each
/// second; the rest are counted, and said in one `N similar log lines suppressed` line before
/// the first one of a later second, or by [`flush_suppressed`] (the worker calls it every
/// heartbeat and as it exits). Info and lower pass untouched (a plugin's access log is not a
/// flood).
#[derive(Debug, Clone)]
pub struct RateLimit {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    per_second: u32,
    epoch: Instant,
    sites: Mutex<HashMap<Identifier, Site>>,
}

#[derive(Debug)]
struct Site {
    meta: &'static Metadata<'static>,
    second: u64,
    count: u32,
    suppressed: u64,
}

/// The limiter of this process, for [`flush_suppressed`].
static ACTIVE: OnceLock<Arc<Shared>> = OnceLock::new();

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        let shared = Arc::new(Shared { per_second, epoch: Instant::now(), sites: Mutex::new(HashMap::new()) });
        let _ = ACTIVE.set(shared.clone());
        RateLimit { shared }
    }
}

impl Shared {
    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// Whether an event of `meta`'s call site passes in `second`, and how many were suppressed
    /// before it when that is to be said now.
    fn admit(&self, meta: &'static Metadata<'static>, second: u64) -> (bool, u64) {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let s = sites.entry(meta.callsite()).or_insert(Site { meta, second, count: 0, suppressed: 0 });
        let mut report = 0;
        if s.second != second {
            report = std::mem::take(&mut s.suppressed);
            s.second = second;
            s.count = 0;
        }
        s.count = s.count.saturating_add(1);
        let pass = s.count <= self.per_second;
        if !pass {
            s.suppressed += 1;
        }
        (pass, report)
    }

    /// The suppressed counts of the seconds that ended, taken.
    fn take_ended(&self, second: u64) -> Vec<(&'static Metadata<'static>, u64)> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        sites
            .values_mut()
            .filter(|s| s.second != second && s.suppressed > 0)
            .map(|s| (s.meta, std::mem::take(&mut s.suppressed)))
            .collect()
    }
}

/// Says how many lines were suppressed (outside any lock; the line passes the limiter as a call
/// site of its own).
fn report_suppressed(meta: &Metadata<'_>, suppressed: u64) {
    let site = format!("{}:{}", meta.file().unwrap_or(meta.target()), meta.line().unwrap_or(0));
    tracing::warn!(target: "host::logging", suppressed, site = %site, "{suppressed} similar log lines suppressed");
}

/// Says, for every call site whose flood ended, how many of its lines were suppressed.
pub fn flush_suppressed() {
    if let Some(shared) = ACTIVE.get() {
        for (meta, n) in shared.take_ended(shared.second()) {
            report_suppressed(meta, n);
        }
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let (pass, suppressed) = self.shared.admit(meta, self.shared.second());
        if suppressed > 0 {
            report_suppressed(meta, suppressed);
        }
        pass
    }
}

/// Log lines that could not be written since the last one that could.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// A `MakeWriter` for stderr that swallows write errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = StderrWriter;

    fn make_writer(&'a self) -> Self::Writer {
        StderrWriter
    }
}

#[derive(Debug)]
pub struct StderrWriter;

impl Write for StderrWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // One event is one write_all of a whole line: report earlier losses before it.
        let mut err = io::stderr().lock();
        let lost = DROPPED.load(Ordering::Relaxed);
        if lost > 0 && writeln!(err, "[host] {lost} log lines were lost (stderr was not writable)").is_ok() {
            DROPPED.fetch_sub(lost, Ordering::Relaxed);
        }
        if err.write_all(buf).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Log lines lost so far (for tests and reports).
#[cfg(test)]
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Callsite as _;

    #[test]
    fn a_flood_of_one_site_is_cut_and_counted() {
        fn meta_a() -> &'static Metadata<'static> {
            tracing::callsite! { name: "a", kind: tracing::metadata::Kind::EVENT, level: Level::ERROR, fields: [] }
                .metadata()
        }
        fn meta_b() -> &'static Metadata<'static> {
            tracing::callsite! { name: "b", kind: tracing::metadata::Kind::EVENT, level: Level::ERROR, fields: [] }
                .metadata()
        }
        let limit = RateLimit::new(3).shared;
        let passed = (0..100).filter(|_| limit.admit(meta_a(), 7).0).count();
        assert_eq!(passed, 3);
        assert_eq!(limit.admit(meta_b(), 7), (true, 0), "another site has its own budget");
        assert!(limit.take_ended(7).is_empty(), "the second is not over");
        let ended = limit.take_ended(8);
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].0.name(), ended[0].1), ("a", 97), "a flush says how many were cut, once");
        assert!(limit.take_ended(8).is_empty());
        for _ in 0..5 {
            limit.admit(meta_a(), 9);
        }
        assert_eq!(limit.admit(meta_a(), 10), (true, 2), "the next second says it too");
    }

    #[test]
    fn a_write_never_fails() {
        let mut w = Stderr.make_writer();
        assert_eq!(w.write(b"").unwrap(), 0);
        assert!(w.flush().is_ok());
        let _ = dropped();
    }
}
