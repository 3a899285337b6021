//! Protocols between processes.
//!
//! master ↔ worker, on the socket pair made at spawn: the [`channel::Channel`] of binary
//! frames carrying the [`messages`]. The master's first frame is its hello with the worker's
//! spec, the worker answers with its hello (or an error when their versions differ), then:
//! master → worker `Drain`, `Stop`, `ReloadHook`, `Report`, `Mailbox` and `Peers` (descriptors
//! for messages between workers, see `master::mailbox`), `Logs` (the access log and log file
//! descriptors, see `master::logs`); worker → master `Ready` once serving, `Error` before exiting
//! when it cannot start, `Report` answering a report request, `LogsReopened` answering `Logs`.
//! The master closing its end means it is gone: the worker stops.
//!
//! CLI ↔ master, on the control socket beside the pid file: one request line (`stop`,
//! `stop graceful`, `reload`, `reload graceful`, `status`, `connections`, `reopen-logs`), one
//! JSON answer line ([`LineConn`]). A client may shut its writing side down after its request:
//! it still gets its answer.

pub mod channel;
pub mod messages;
pub mod watch;

use std::io::{self, Read, Write};

pub use self::channel::Channel;
pub use self::messages::{
    Carrier, Fallback, Handover, HandoverFailure, HandoverReport, MovedConn, MovedSession, Peer, ReportKind, ToMaster,
    ToWorker, FINAL_REPORT, HANDOVER_CANCEL_WAIT_MS, HANDOVER_END_WAIT_MS, HANDOVER_KILL_WAIT_MS, PROTOCOL,
};

/// The master's end of a worker's channel.
pub type MasterChannel<S> = Channel<S, ToWorker, ToMaster>;
/// A worker's end of its channel to the master.
pub type WorkerChannel<S> = Channel<S, ToMaster, ToWorker>;
/// Either end of a hand-over's socket pair (old worker ↔ replacement).
pub type HandoverChannel<S> = Channel<S, Handover, Handover>;

/// The longest request line on the control socket.
pub const MAX_REQUEST_LINE: usize = 4096;

/// A non-blocking stream carrying lines both ways, with an output buffer: a large answer is
/// written as the peer reads it, never with a blocking write.
#[derive(Debug)]
pub struct LineConn<S> {
    pub stream: S,
    input: Vec<u8>,
    output: Vec<u8>,
    /// A longer line closes the connection (the peer may be less trusted than we are).
    max_line: usize,
    /// Bytes of `input` after its last newline.
    partial: usize,
    /// The peer shut its writing side down (a read returned 0): it sends nothing more, but may
    /// still read (a client that half-closes after its request waits for the answer).
    pub eof: bool,
    /// The stream failed, or the peer sent a line over the limit.
    pub closed: bool,
}

impl<S: Read + Write> LineConn<S> {
    pub fn new(stream: S, max_line: usize) -> Self {
        LineConn { stream, input: Vec::new(), output: Vec::new(), max_line, partial: 0, eof: false, closed: false }
    }

    /// Reads what is available and returns the complete lines (without their newline); at the
    /// end of the stream, an unterminated last line counts as a line.
    pub fn read_lines(&mut self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        while !self.eof && !self.closed {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.eof = true;
                    if self.partial > 0 {
                        self.input.push(b'\n');
                        self.partial = 0;
                    }
                }
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    // Only the new bytes are scanned: a long line is read in linear time.
                    self.partial = match buf[..n].iter().rposition(|&b| b == b'\n') {
                        Some(i) => n - i - 1,
                        None => self.partial + n,
                    };
                    if self.partial > self.max_line {
                        self.closed = true;
                        self.input.clear();
                        self.partial = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => self.closed = true,
            }
        }
        if self.partial >= self.input.len() {
            // No newline in the buffer: nothing to split (and no rescan of a long partial line).
            return Vec::new();
        }
        let end = self.input.len() - self.partial;
        let lines = self.input[..end - 1]
            .split(|&b| b == b'\n')
            .filter(|l| l.len() <= self.max_line)
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        self.input.drain(..end);
        lines
    }

    /// Queues `bytes` and writes what the peer takes now. Ok(true) when nothing is left queued.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<bool> {
        self.output.extend_from_slice(bytes);
        self.flush()
    }

    pub fn flush(&mut self) -> io::Result<bool> {
        let mut written = 0;
        let result = loop {
            if written == self.output.len() {
                break Ok(true);
            }
            match self.stream.write(&self.output[written..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        self.output.drain(..written);
        result
    }

    pub fn pending(&self) -> bool {
        !self.output.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A failed hand-over's cause has one name, in `status --json` (serde) and the log (`as_str`),
    // and its own reason for the connections left behind.
    #[test]
    fn a_hand_over_failure_has_one_name() {
        use HandoverFailure::*;
        let all = [Unreachable, Refused, NotAdopted, Protocol, Gone, TimedOut, Channel, Export];
        for cause in all {
            assert_eq!(serde_json::to_value(cause).unwrap(), cause.as_str(), "{cause:?}");
            let back: HandoverFailure = serde_json::from_value(cause.as_str().into()).unwrap();
            assert_eq!(back, cause);
        }
        let reasons: std::collections::HashSet<_> = all.iter().map(|c| c.stay_reason()).collect();
        assert_eq!(reasons.len(), all.len(), "each its own reason");
    }

    #[test]
    fn lines_are_split_and_partial_kept() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut b = LineConn::new(b, 1024);
        (&a).write_all(b"ready\nerror x\npart").unwrap();
        assert_eq!(b.read_lines(), vec!["ready".to_string(), "error x".to_string()]);
        assert!(b.read_lines().is_empty());
        (&a).write_all(b"ial\n").unwrap();
        assert_eq!(b.read_lines(), vec!["partial".to_string()]);
        assert!(!b.closed && !b.eof);
    }

    #[test]
    fn a_half_closed_peer_can_still_be_answered() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut b = LineConn::new(b, 1024);
        (&a).write_all(b"status\nlast").unwrap();
        a.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(b.read_lines(), vec!["status".to_string(), "last".to_string()]);
        assert!(b.eof && !b.closed);
        assert!(b.send(b"answer\n").unwrap());
        drop(b);
        let mut got = String::new();
        (&a).read_to_string(&mut got).unwrap();
        assert_eq!(got, "answer\n");
    }

    #[test]
    fn line_conn_queues_what_the_peer_does_not_take() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut a = LineConn::new(a, 1 << 30);
        let mut b = LineConn::new(b, 1 << 30);
        let big = vec![b'x'; 4 << 20];
        assert!(!a.send(&big).unwrap(), "4 MiB do not fit in a socket buffer");
        a.send(b"\nhello\n").unwrap();
        let mut got = Vec::new();
        for _ in 0..10_000 {
            got.extend(b.read_lines());
            if !a.flush().unwrap() {
                continue;
            }
            got.extend(b.read_lines());
            if got.len() == 2 {
                break;
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), big.len());
        assert_eq!(got[1], "hello");
    }

    #[test]
    fn an_overlong_line_closes_the_connection() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let mut b = LineConn::new(b, 16);
        (&a).write_all(b"short\n").unwrap();
        assert_eq!(b.read_lines(), vec!["short".to_string()]);
        (&a).write_all(&[b'x'; 100]).unwrap();
        assert!(b.read_lines().is_empty());
        assert!(b.closed, "a line over the limit closes the connection");
    }
}
