//! Where log lines go, and why logging never kills a process: a failed write to stderr (the pipe
//! to a log shipper closed, `host … 2>&1 | head` ended) is dropped and counted, never an error
//! that tracing-subscriber would report with `eprintln!` (which panics on a broken stderr). Once
//! writing works again, one line says how many were lost.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

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
    fn a_write_never_fails() {
        let mut w = Stderr.make_writer();
        assert_eq!(w.write(b"").unwrap(), 0);
        assert!(w.flush().is_ok());
        let _ = dropped();
    }
}
