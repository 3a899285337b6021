//! The worker's side of a service's access log: the lines the plugin formats
//! (`RawHost::access_log`) are copied into a buffer and written to the file (opened by the
//! master, `O_APPEND`) when the buffer is full, when its oldest line is [`FLUSH_AFTER_MS`] old
//! (checked at the end of each loop turn, and the poll wakes for it), when the descriptor is
//! replaced (`host reopen-logs`) and as the worker drains or exits. A request costs a copy.
//!
//! Each write holds whole lines only and at most [`BUFFER`] bytes (a longer line alone): with
//! `O_APPEND`, the kernel puts each write at the end of the file in one piece, so the lines of
//! the service's workers never interleave.

use std::fs::File;
use std::io::Write;

/// Lines buffered at most before they are written.
pub const BUFFER: usize = 32 * 1024;
/// How long a line may wait in the buffer.
pub const FLUSH_AFTER_MS: u64 = 1000;

#[derive(Debug, Default)]
pub struct AccessLog {
    file: Option<File>,
    buf: Vec<u8>,
    /// When the oldest buffered line was appended (the loop's clock).
    since_ms: Option<u64>,
    /// Lines lost to failed writes since the last warning.
    lost: u64,
}

impl AccessLog {
    /// Appends a line (a newline is added when it lacks one). False when there is no access log.
    pub fn append(&mut self, line: &[u8], now_ms: u64) -> bool {
        if self.file.is_none() {
            return false;
        }
        if line.is_empty() {
            return true;
        }
        let len = line.len() + usize::from(!line.ends_with(b"\n"));
        if self.buf.len() + len > BUFFER {
            self.flush();
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve(BUFFER);
        }
        self.buf.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            self.buf.push(b'\n');
        }
        self.since_ms.get_or_insert(now_ms);
        if self.buf.len() >= BUFFER {
            self.flush();
        }
        true
    }

    /// When the buffer must be written at the latest.
    pub fn deadline_ms(&self) -> Option<u64> {
        self.since_ms.map(|t| t + FLUSH_AFTER_MS)
    }

    /// Writes the buffer if its oldest line waited long enough.
    pub fn flush_due(&mut self, now_ms: u64) {
        if self.deadline_ms().is_some_and(|d| d <= now_ms) {
            self.flush();
        }
    }

    /// Writes what is buffered (one write of whole lines). A failed write (disk full) drops the
    /// lines and says so in the worker's log.
    pub fn flush(&mut self) {
        self.since_ms = None;
        if self.buf.is_empty() {
            return;
        }
        let lines = self.buf.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(file) = self.file.as_mut() {
            match file.write_all(&self.buf) {
                Ok(()) if self.lost > 0 => {
                    tracing::warn!(lost = self.lost, "access log writable again; {} lines were lost", self.lost);
                    self.lost = 0;
                }
                Ok(()) => {}
                Err(e) => {
                    if self.lost == 0 {
                        tracing::warn!("could not write the access log: {e}; lines are lost until it works");
                    }
                    self.lost += lines;
                }
            }
        }
        self.buf.clear();
    }

    /// Writes what is buffered to the old file, then uses `file`.
    pub fn switch(&mut self, file: File) {
        self.flush();
        self.file = Some(file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn log_in(dir: &std::path::Path, name: &str) -> (AccessLog, std::path::PathBuf) {
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new().append(true).create(true).open(&path).unwrap();
        let mut log = AccessLog::default();
        log.switch(file);
        (log, path)
    }

    fn read(path: &std::path::Path) -> String {
        let mut s = String::new();
        File::open(path).unwrap().read_to_string(&mut s).unwrap();
        s
    }

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "host-access-log-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn without_a_file_nothing_is_kept() {
        let mut log = AccessLog::default();
        assert!(!log.append(b"GET /\n", 0));
        assert_eq!(log.deadline_ms(), None);
    }

    #[test]
    fn lines_wait_for_the_deadline_or_a_full_buffer() {
        let dir = temp_dir();
        let (mut log, path) = log_in(&dir, "a.log");
        assert!(log.append(b"one\n", 10));
        assert!(log.append(b"two", 20), "a newline is added");
        assert_eq!(log.deadline_ms(), Some(10 + FLUSH_AFTER_MS), "the oldest line decides");
        log.flush_due(500);
        assert_eq!(read(&path), "", "not yet");
        log.flush_due(10 + FLUSH_AFTER_MS);
        assert_eq!(read(&path), "one\ntwo\n");
        assert_eq!(log.deadline_ms(), None);
        // A full buffer is written at once, whole lines only.
        let line = vec![b'x'; 1000];
        for _ in 0..40 {
            log.append(&line, 2000);
        }
        let written = read(&path).len() - 8;
        assert!(written > 0 && written.is_multiple_of(1001) && written <= BUFFER, "{written}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_switch_writes_the_old_lines_to_the_old_file() {
        let dir = temp_dir();
        let (mut log, old) = log_in(&dir, "old.log");
        log.append(b"before\n", 0);
        let new = dir.join("new.log");
        log.switch(std::fs::OpenOptions::new().append(true).create(true).open(&new).unwrap());
        log.append(b"after\n", 0);
        log.flush();
        assert_eq!((read(&old), read(&new)), ("before\n".to_string(), "after\n".to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
