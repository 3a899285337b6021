//! The line protocol on the socket pair between the master and each worker.
//!
//! master → worker: `spec <len>\n<len bytes of TOML>` once at start, then `drain <ms>\n` or
//! `stop\n`. worker → master: `ready\n` once serving, or `error <text>\n` before exiting when it
//! cannot start. The master closing its end means it is gone: the worker stops.

use std::io::{self, BufRead};

/// A message from the master to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToWorker {
    /// Stop accepting, drain connections, exit within this many milliseconds.
    Drain { timeout_ms: u64 },
    /// Close everything and exit now.
    Stop,
}

/// A message from a worker to the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToMaster {
    Ready,
    Error(String),
}

impl ToWorker {
    pub fn encode(&self) -> String {
        match self {
            ToWorker::Drain { timeout_ms } => format!("drain {timeout_ms}\n"),
            ToWorker::Stop => "stop\n".to_string(),
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end();
        match line.split_once(' ') {
            Some(("drain", ms)) => ms
                .parse()
                .ok()
                .map(|timeout_ms| ToWorker::Drain { timeout_ms }),
            None if line == "stop" => Some(ToWorker::Stop),
            _ => None,
        }
    }
}

impl ToMaster {
    pub fn encode(&self) -> String {
        match self {
            ToMaster::Ready => "ready\n".to_string(),
            // One line: the master reads line by line.
            ToMaster::Error(e) => format!("error {}\n", e.replace(['\n', '\r'], " ")),
        }
    }

    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end();
        if line == "ready" {
            return Some(ToMaster::Ready);
        }
        line.strip_prefix("error ")
            .map(|e| ToMaster::Error(e.to_string()))
    }
}

pub fn encode_spec(spec_toml: &str) -> Vec<u8> {
    let mut out = format!("spec {}\n", spec_toml.len()).into_bytes();
    out.extend_from_slice(spec_toml.as_bytes());
    out
}

/// Reads the spec the master sends first (blocking).
pub fn read_spec(r: &mut impl BufRead) -> io::Result<String> {
    let bad = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("bad spec from master: {what}"),
        )
    };
    let mut line = String::new();
    r.read_line(&mut line)?;
    let len: usize = line
        .trim_end()
        .strip_prefix("spec ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad("no header"))?;
    if len > 1 << 20 {
        return Err(bad("too long"));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    String::from_utf8(body).map_err(|_| bad("not UTF-8"))
}

/// Splits complete lines off the front of `buf`, leaving a partial line in place.
pub fn take_lines(buf: &mut Vec<u8>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=i).collect();
        lines.push(String::from_utf8_lossy(&line).into_owned());
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for m in [ToWorker::Stop, ToWorker::Drain { timeout_ms: 5000 }] {
            assert_eq!(ToWorker::parse(&m.encode()), Some(m));
        }
        for m in [
            ToMaster::Ready,
            ToMaster::Error("plugin: bad\nthing".into()),
        ] {
            let line = m.encode();
            assert_eq!(line.matches('\n').count(), 1);
            assert!(ToMaster::parse(&line).is_some());
        }
        assert_eq!(ToWorker::parse("drain x\n"), None);
        assert_eq!(ToMaster::parse("what\n"), None);
    }

    #[test]
    fn spec_is_length_prefixed() {
        let enc = encode_spec("a = 1\nb = \"x\"\n");
        let mut r = io::BufReader::new(&enc[..]);
        assert_eq!(read_spec(&mut r).unwrap(), "a = 1\nb = \"x\"\n");
        let mut r = io::BufReader::new(&b"nonsense\n"[..]);
        assert!(read_spec(&mut r).is_err());
    }

    #[test]
    fn lines_are_split_and_partial_kept() {
        let mut buf = b"ready\nerror x\npart".to_vec();
        assert_eq!(
            take_lines(&mut buf),
            vec!["ready\n".to_string(), "error x\n".to_string()]
        );
        assert_eq!(buf, b"part");
    }
}
