//! One connection of the table: its socket, phase, input and output buffers, and the writes
//! that flush its output (bytes and file ranges, in order).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;

use plugin_api::ConnId;

use super::super::phase::ConnPhase;
use super::super::transport::Transport;

/// Written output is dropped from the front of the buffer once this much of it was written.
const COMPACT_AT: usize = 64 * 1024;

/// File bytes one connection writes at most in one flush (`RawHost::send_file`): a large file
/// to a fast reader then goes on next loop turn instead of holding the loop (the other
/// connections' events come first).
pub const FILE_BYTES_PER_FLUSH: u64 = 1024 * 1024;

/// How far [`Conn::flush`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// All of the output is written.
    All,
    /// The socket is full: go on when it is writable.
    Blocked,
    /// It wrote its share of file bytes for this turn ([`FILE_BYTES_PER_FLUSH`]): go on next turn.
    Yielded,
}

/// A range of a file queued on a connection's output (`RawHost::send_file`).
#[derive(Debug)]
pub struct FileOut {
    /// Its place in the output: written once `output` is written up to this index.
    pub at: usize,
    /// The host's own descriptor of the plugin's file (a `dup`).
    pub file: std::fs::File,
    pub offset: u64,
    pub remaining: u64,
}

/// Who opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Origin {
    /// Accepted on the listening socket (or a UDP session opened by a peer's datagram).
    Accepted,
    /// Opened by the plugin (`RawHost::connect`).
    Outbound,
}

/// What is known of the socket's receiving side (edge-triggered: the loop reads until
/// `WouldBlock` after an edge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadSide {
    /// The socket may have unread bytes.
    pub ready: bool,
    /// epoll said the peer hung up: read to EOF, not just to the first short read.
    pub hup: bool,
    /// The peer closed its sending side (a read returned 0): a half-close.
    pub eof: bool,
}

/// Why reading and dispatching are held (either holds them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hold {
    /// The plugin paused receiving (`RawHost::pause_recv`).
    pub by_plugin: bool,
    /// The output reached the max send buffer (`on_buffer_full`); released when it is flushed
    /// (`on_buffer_drain`).
    pub buffer_full: bool,
}

impl Hold {
    pub fn any(self) -> bool {
        self.by_plugin || self.buffer_full
    }
}

/// The loop's bookkeeping for the connection (rebuilt when a connection is imported).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sched {
    /// Registered for writability (output waits for a full socket).
    pub write_interest: bool,
    /// On the core's dirty list: flushed (or closed) at the end of the turn.
    pub dirty: bool,
}

pub struct Conn {
    pub id: ConnId,
    /// The socket, plain or TLS: the plugin sees plaintext either way.
    pub stream: Transport,
    pub phase: ConnPhase,
    pub origin: Origin,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// A Unix socket's peer: pid, uid, gid (`SO_PEERCRED`, read at accept).
    pub cred: Option<(u32, u32, u32)>,
    /// Bytes received and not yet consumed by a message.
    pub input: Vec<u8>,
    /// Length of the next message when the plugin announced one longer than what is buffered.
    pub expect: Option<usize>,
    pub output: Vec<u8>,
    pub output_pos: usize,
    /// File ranges queued among the output bytes, in order (`RawHost::send_file`).
    pub files: VecDeque<FileOut>,
    pub read: ReadSide,
    pub hold: Hold,
    pub sched: Sched,
    /// When the incomplete message now buffered began to arrive (None: nothing buffered).
    pub message_started_ms: Option<u64>,
    pub last_active_ms: u64,
    pub created_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Conn {
    /// Bytes queued and not yet written: the output's, and the file ranges'.
    pub fn pending_output(&self) -> usize {
        let files: u64 = self.files.iter().map(|f| f.remaining).sum();
        (self.output.len() - self.output_pos).saturating_add(usize::try_from(files).unwrap_or(usize::MAX))
    }

    /// Where the output ends now (see [`Conn::truncate_output`]).
    pub fn output_mark(&self) -> (usize, usize) {
        (self.output.len(), self.files.len())
    }

    /// Drops what was queued after `mark` and is not written yet (a panicking plugin call's output).
    pub fn truncate_output(&mut self, mark: (usize, usize)) {
        self.files.truncate(mark.1);
        self.output.truncate(mark.0.max(self.output_pos));
    }

    /// Drops all of the output (the connection is closing: nothing more is written).
    pub fn clear_output(&mut self) {
        self.output = Vec::new();
        self.output_pos = 0;
        self.files.clear();
    }

    /// The plugin's sends are queued: a phase that takes output, on a socket that connected (an
    /// outbound connection closed while it was connecting never has a peer to write to).
    pub fn takes_output(&self) -> bool {
        self.phase.takes_output() && !(self.origin == Origin::Outbound && self.peer.is_none())
    }

    /// Reading and dispatching are on hold: paused, its send buffer full, or a phase that is
    /// not read (a lingering connection is read to discard, see `dispatch::read`).
    pub fn receive_paused(&self) -> bool {
        self.hold.any() || !matches!(self.phase, ConnPhase::Open | ConnPhase::Handshaking)
    }

    /// Writes as much of the output as the socket takes, bytes and file ranges in their order
    /// (`now_ms`: a write that makes progress counts as activity). A file that ends before its
    /// range is an error (`UnexpectedEof`): the connection cannot keep the length it promised.
    pub fn flush(&mut self, now_ms: u64) -> io::Result<Flushed> {
        let start = self.bytes_out;
        let mut file_budget = FILE_BYTES_PER_FLUSH;
        let result = loop {
            let until = self.files.front().map_or(self.output.len(), |f| f.at);
            if self.output_pos < until {
                let bytes = &self.output[self.output_pos..until];
                let written = match self.files.front() {
                    Some(_) => self.stream.write_before_file(bytes),
                    None => self.stream.write(bytes),
                };
                match written {
                    Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.output_pos += n;
                        self.bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flushed::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
                continue;
            }
            if let Some(f) = self.files.front_mut() {
                if f.remaining == 0 {
                    self.files.pop_front();
                    continue;
                }
                if file_budget == 0 {
                    break Ok(Flushed::Yielded);
                }
                let want = usize::try_from(f.remaining.min(file_budget)).unwrap_or(usize::MAX);
                match self.stream.write_file(&f.file, f.offset, want) {
                    Ok(0) => {
                        break Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ended before its range"))
                    }
                    Ok(n) => {
                        f.offset += n as u64;
                        f.remaining -= n as u64;
                        file_budget = file_budget.saturating_sub(n as u64);
                        self.bytes_out += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(Flushed::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
                continue;
            }
            // TLS: the records rustls holds go out too.
            break self.stream.flush_pending().map(|done| if done { Flushed::All } else { Flushed::Blocked });
        };
        if self.bytes_out > start {
            self.last_active_ms = now_ms;
        }
        if self.output_pos == self.output.len() && self.files.is_empty() {
            self.output.clear();
            self.output_pos = 0;
        } else if self.output_pos >= COMPACT_AT && self.output_pos * 2 >= self.output.len() {
            self.compact();
        }
        result
    }

    /// Puts bytes counted as written back before the output (what the io_uring ring had not
    /// sent when the connection left it, for an export): they are written first, and counted
    /// again then.
    pub fn requeue_front(&mut self, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        self.compact();
        let n = bytes.len();
        self.output.splice(0..0, bytes);
        for f in &mut self.files {
            f.at += n;
        }
        self.bytes_out = self.bytes_out.saturating_sub(n as u64);
    }

    /// Drops the written bytes from the front of the output (file ranges keep their place).
    /// Written bytes must not pile up while some output is always pending (a client that reads
    /// a little slower than it is sent to).
    pub fn compact(&mut self) {
        self.output.drain(..self.output_pos);
        for f in &mut self.files {
            f.at -= self.output_pos;
        }
        self.output_pos = 0;
    }
}
