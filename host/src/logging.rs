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
use std::sync::Mutex;
use std::time::Instant;

use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// Warnings and errors one call site may log per second in a worker; the rest are counted and
/// summed up in one line when the next second begins.
pub const LINES_PER_SECOND: u32 = 20;

/// A layer that lets at most `per_second` warnings or errors of one call site through each
/// second; the first one of a later second is preceded by `N similar log lines suppressed`.
/// Info and lower pass untouched (a plugin's access log is not a flood).
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    epoch: Instant,
    sites: Mutex<HashMap<Identifier, Site>>,
}

#[derive(Debug, Default)]
struct Site {
    second: u64,
    count: u32,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(per_second: u32) -> Self {
        RateLimit { per_second, epoch: Instant::now(), sites: Mutex::new(HashMap::new()) }
    }

    /// Whether an event of `site` passes in `second`, and how many were suppressed before it
    /// when that is to be said now.
    fn admit(&self, site: Identifier, second: u64) -> (bool, u64) {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let s = sites.entry(site).or_default();
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
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let (pass, suppressed) = self.admit(meta.callsite(), self.epoch.elapsed().as_secs());
        if suppressed > 0 {
            // Said outside the lock; it passes this layer as a call site of its own.
            let site = format!("{}:{}", meta.file().unwrap_or(meta.target()), meta.line().unwrap_or(0));
            tracing::warn!(target: "host::logging", suppressed, site = %site, "{suppressed} similar log lines suppressed in the last second(s)");
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

    #[test]
    fn a_flood_of_one_site_is_cut_and_counted() {
        // Not zero-sized: two statics must have addresses of their own.
        struct Cs(#[allow(dead_code)] u8);
        impl tracing::Callsite for Cs {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &tracing::Metadata<'_> {
                unreachable!()
            }
        }
        static A: Cs = Cs(1);
        static B: Cs = Cs(2);
        let (a, b) = (Identifier(&A), Identifier(&B));
        let limit = RateLimit::new(3);
        let passed = (0..100).filter(|_| limit.admit(a.clone(), 7).0).count();
        assert_eq!(passed, 3);
        assert_eq!(limit.admit(b.clone(), 7), (true, 0), "another site has its own budget");
        assert_eq!(limit.admit(a.clone(), 8), (true, 97), "the next second says how many were cut");
        assert_eq!(limit.admit(a, 9), (true, 0));
    }

    #[test]
    fn a_write_never_fails() {
        let mut w = Stderr.make_writer();
        assert_eq!(w.write(b"").unwrap(), 0);
        assert!(w.flush().is_ok());
        let _ = dropped();
    }
}
