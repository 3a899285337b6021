//! Line protocols between processes.
//!
//! master ↔ worker, on the socket pair made at spawn: master → worker `spec <len>\n<TOML>` once
//! at start, then `drain <ms>`, `stop`, `reload-hook`, or `report <id> status|connections`;
//! worker → master `ready` once serving, `alive` every heartbeat (the watchdog's sign of life), `error <text>` before exiting when it cannot start, and
//! `report <id> <kind> <json>` answering a report request. The master closing its end means it
//! is gone: the worker stops.
//!
//! CLI ↔ master, on the control socket beside the pid file: one request line (`stop`,
//! `stop graceful`, `reload`, `reload graceful`, `status`, `connections`), one JSON answer line.

use std::io::{self, Read, Write};

/// The id of the status report a worker sends unasked as it exits (requests count from 1).
pub const FINAL_REPORT: u64 = 0;

/// What a report request asks a worker for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Status,
    Connections,
}

impl ReportKind {
    fn as_str(self) -> &'static str {
        match self {
            ReportKind::Status => "status",
            ReportKind::Connections => "connections",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "status" => Some(ReportKind::Status),
            "connections" => Some(ReportKind::Connections),
            _ => None,
        }
    }
}

/// A message from the master to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// Stop accepting, drain connections, exit within this many milliseconds.
    Drain {
        timeout_ms: u64,
    },
    /// Close everything and exit now.
    Stop,
    /// The service is not reloadable: call the plugin's reload hook instead of a restart.
    ReloadHook,
    Report {
        id: u64,
        kind: ReportKind,
    },
}

/// A message from a worker to the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToMaster {
    Ready,
    /// The worker's loop turns (sent at most every `heartbeat_ms`): the watchdog's sign of life.
    Alive,
    Error(String),
    /// `json` is one line of JSON (see `status`).
    Report {
        id: u64,
        kind: ReportKind,
        json: String,
    },
}

impl ToWorker {
    pub fn encode(&self) -> String {
        match self {
            ToWorker::Drain { timeout_ms } => format!("drain {timeout_ms}\n"),
            ToWorker::Stop => "stop\n".to_string(),
            ToWorker::ReloadHook => "reload-hook\n".to_string(),
            ToWorker::Report { id, kind } => format!("report {id} {}\n", kind.as_str()),
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        let mut words = line.split_whitespace();
        let msg = match (words.next()?, words.next(), words.next()) {
            ("drain", Some(ms), None) => ToWorker::Drain { timeout_ms: ms.parse().ok()? },
            ("stop", None, None) => ToWorker::Stop,
            ("reload-hook", None, None) => ToWorker::ReloadHook,
            ("report", Some(id), Some(kind)) => {
                ToWorker::Report { id: id.parse().ok()?, kind: ReportKind::parse(kind)? }
            }
            _ => return None,
        };
        words.next().is_none().then_some(msg)
    }
}

impl ToMaster {
    pub fn encode(&self) -> String {
        match self {
            ToMaster::Ready => "ready\n".to_string(),
            ToMaster::Alive => "alive\n".to_string(),
            // One line: the master reads line by line.
            ToMaster::Error(e) => format!("error {}\n", e.replace(['\n', '\r'], " ")),
            ToMaster::Report { id, kind, json } => format!("report {id} {} {json}\n", kind.as_str()),
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end();
        match line {
            "ready" => return Some(ToMaster::Ready),
            "alive" => return Some(ToMaster::Alive),
            _ => {}
        }
        if let Some(e) = line.strip_prefix("error ") {
            return Some(ToMaster::Error(e.to_string()));
        }
        let rest = line.strip_prefix("report ")?;
        let (id, rest) = rest.split_once(' ')?;
        let (kind, json) = rest.split_once(' ')?;
        Some(ToMaster::Report { id: id.parse().ok()?, kind: ReportKind::parse(kind)?, json: json.to_string() })
    }
}

pub fn encode_spec(spec_toml: &str) -> Vec<u8> {
    let mut out = format!("spec {}\n", spec_toml.len()).into_bytes();
    out.extend_from_slice(spec_toml.as_bytes());
    out
}

/// Reads the spec the master sends first (blocking), and not a byte more: what follows is read
/// by the event loop.
pub fn read_spec(r: &mut impl Read) -> io::Result<String> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("bad spec from master: {what}"));
    let mut header = Vec::new();
    let mut byte = [0u8];
    while header.len() < 32 {
        r.read_exact(&mut byte)?;
        if byte[0] == b'\n' {
            break;
        }
        header.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&header);
    let len: usize = line.strip_prefix("spec ").and_then(|n| n.parse().ok()).ok_or_else(|| bad("no header"))?;
    if len > 1 << 20 {
        return Err(bad("too long"));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    String::from_utf8(body).map_err(|_| bad("not UTF-8"))
}

/// The longest request line on the control socket.
pub const MAX_REQUEST_LINE: usize = 4096;
/// The longest line a worker sends the master (a report listing every connection).
pub const MAX_REPORT_LINE: usize = 64 << 20;

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
    /// The peer closed its end (a read returned 0) or the stream failed.
    pub closed: bool,
}

impl<S: Read + Write> LineConn<S> {
    pub fn new(stream: S, max_line: usize) -> Self {
        LineConn { stream, input: Vec::new(), output: Vec::new(), max_line, partial: 0, closed: false }
    }

    /// Reads what is available and returns the complete lines (without their newline).
    pub fn read_lines(&mut self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.closed = true;
                    break;
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
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.closed = true;
                    break;
                }
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

    #[test]
    fn messages_round_trip() {
        for m in [
            ToWorker::Stop,
            ToWorker::Drain { timeout_ms: 5000 },
            ToWorker::ReloadHook,
            ToWorker::Report { id: 7, kind: ReportKind::Connections },
        ] {
            assert_eq!(ToWorker::parse(&m.encode()), Some(m));
        }
        for m in [
            ToMaster::Ready,
            ToMaster::Error("plugin: bad thing".into()),
            ToMaster::Report { id: 3, kind: ReportKind::Status, json: r#"{"a": [1, 2]}"#.into() },
        ] {
            let line = m.encode();
            assert_eq!(line.matches('\n').count(), 1);
            assert_eq!(ToMaster::parse(&line), Some(m));
        }
        assert_eq!(ToMaster::parse(&ToMaster::Error("a\nb".into()).encode()), Some(ToMaster::Error("a b".into())));
        assert_eq!(ToWorker::parse("drain x\n"), None);
        assert_eq!(ToWorker::parse("stop now\n"), None);
        assert_eq!(ToMaster::parse("what\n"), None);
    }

    #[test]
    fn spec_is_length_prefixed() {
        let enc = encode_spec("a = 1\nb = \"x\"\n");
        let mut with_more = enc.clone();
        with_more.extend_from_slice(b"stop\n");
        let mut r = &with_more[..];
        assert_eq!(read_spec(&mut r).unwrap(), "a = 1\nb = \"x\"\n");
        assert_eq!(r, b"stop\n", "what follows the spec is left unread");
        assert!(read_spec(&mut &b"nonsense\n"[..]).is_err());
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
        assert!(!b.closed);
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
