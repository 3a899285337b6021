//! The master↔worker channel: length-prefixed binary frames on the socket pair made at spawn.
//!
//! A frame is a 5-byte header, the payload's length (u32, little-endian) and the number of
//! descriptors the frame carries (u8), then the payload: one message encoded with postcard. The
//! descriptors (SCM_RIGHTS) travel with the frame's first byte; the receiver keeps every
//! descriptor it got, in order, and hands a frame the number its header announces once the frame
//! is complete (the kernel may glue bytes of earlier frames into the read that brings them, so
//! the count, not the read, says whose they are).
//!
//! Both directions are bounded: a frame over [`MAX_FRAME`] is refused without allocating it, an
//! output queue over [`MAX_OUTPUT`] means the peer does not read; either breaks the channel
//! ([`Channel::error`] says why; the owner may still tell the peer on a channel of its own, then
//! [`Channel::shut_down`] makes the peer see it closed).
//! The first frame each side sends is a hello carrying its protocol version (see
//! [`super::messages`]); a peer of another version is refused.
//!
//! The stream is non-blocking: [`Channel::send`] queues and writes what the peer takes now,
//! [`Channel::flush`] goes on when the socket is writable; only the worker's start, which has no
//! loop yet, waits ([`Channel::recv_timeout`], [`Channel::flush_timeout`]).

use std::collections::VecDeque;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use serde::Serialize;

use super::messages::{Message, PROTOCOL};
use crate::sys;

/// The largest payload of a frame: reports list every connection of a worker.
pub const MAX_FRAME: usize = 64 << 20;
/// The most bytes queued for a peer that does not read before the channel counts as broken.
pub const MAX_OUTPUT: usize = 256 << 20;
/// The most descriptors one frame carries.
pub const MAX_FDS_PER_FRAME: usize = 32;
/// The most descriptors one frame of a hand-over carries (the kernel's `SCM_MAX_FD`: one
/// `sendmsg`).
pub const MAX_FDS_PER_HANDOVER_FRAME: usize = 253;
const HEADER: usize = 5;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;
/// Written bytes are dropped from the front of the output queue once they are this many (and at
/// least half of it).
const COMPACT_AT: usize = 1 << 20;

/// A channel over the stream `S` that sends `Tx` and receives `Rx`.
#[derive(Debug)]
pub struct Channel<S, Tx, Rx> {
    pub stream: S,
    /// Received bytes not yet part of a complete frame.
    input: Vec<u8>,
    /// Descriptors received and not yet handed with a frame, in arrival order.
    in_fds: VecDeque<OwnedFd>,
    /// Decoded messages not yet taken (`recv_timeout` takes one at a time).
    received: VecDeque<(Rx, Vec<OwnedFd>)>,
    /// Frames to send; `output[..written]` are sent already.
    output: Vec<u8>,
    written: usize,
    /// The descriptors of queued frames: the offset in `output` of the frame's first byte.
    out_fds: VecDeque<(usize, Vec<OwnedFd>)>,
    /// The version the peer said in its hello; None until then.
    pub peer_protocol: Option<u32>,
    /// The peer closed its end, the stream failed, or the channel broke.
    pub closed: bool,
    /// Nothing more can be read (end of stream, a read error, or the channel broke). A failed
    /// write does not end reading: a peer that exited still has its last frames in the socket
    /// (a worker's reason for not starting), and they are read.
    read_done: bool,
    /// Why the channel broke (a protocol violation or a peer that does not read); None when it
    /// is open or the peer merely closed it.
    pub error: Option<String>,
    max_frame: usize,
    max_output: usize,
    /// The most descriptors a frame carries; 4 times as many may wait unclaimed.
    max_fds: usize,
    _messages: PhantomData<fn(Tx) -> Rx>,
}

impl<S: AsFd, Tx: Serialize, Rx: Message> Channel<S, Tx, Rx> {
    /// A channel over `stream`, which must be non-blocking.
    pub fn new(stream: S) -> Self {
        Channel {
            stream,
            input: Vec::new(),
            in_fds: VecDeque::new(),
            received: VecDeque::new(),
            output: Vec::new(),
            written: 0,
            out_fds: VecDeque::new(),
            peer_protocol: None,
            closed: false,
            read_done: false,
            error: None,
            max_frame: MAX_FRAME,
            max_output: MAX_OUTPUT,
            max_fds: MAX_FDS_PER_FRAME,
            _messages: PhantomData,
        }
    }

    /// The same channel over another stream type (std's to mio's), its queues kept.
    pub fn map_stream<T: AsFd>(self, f: impl FnOnce(S) -> T) -> Channel<T, Tx, Rx> {
        Channel {
            stream: f(self.stream),
            input: self.input,
            in_fds: self.in_fds,
            received: self.received,
            output: self.output,
            written: self.written,
            out_fds: self.out_fds,
            peer_protocol: self.peer_protocol,
            closed: self.closed,
            read_done: self.read_done,
            error: self.error,
            max_frame: self.max_frame,
            max_output: self.max_output,
            max_fds: self.max_fds,
            _messages: PhantomData,
        }
    }

    /// The same channel with up to `max_fds` descriptors a frame (at most
    /// [`MAX_FDS_PER_HANDOVER_FRAME`]), for a hand-over's batches.
    pub fn with_max_fds(mut self, max_fds: usize) -> Self {
        self.max_fds = max_fds.min(MAX_FDS_PER_HANDOVER_FRAME);
        self
    }

    /// The most descriptors one frame carries.
    pub fn max_fds(&self) -> usize {
        self.max_fds
    }

    #[cfg(test)]
    fn with_limits(mut self, max_frame: usize, max_output: usize) -> Self {
        self.max_frame = max_frame;
        self.max_output = max_output;
        self
    }

    /// `msg` as one frame (header and payload) announcing `fds` descriptors; refused (the
    /// channel stays usable) when the payload or the descriptors are over the limit.
    fn encode(&self, msg: &Tx, fds: usize) -> io::Result<Vec<u8>> {
        let payload = postcard::to_stdvec(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if payload.len() > self.max_frame || fds > self.max_fds {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a message of {} bytes with {fds} descriptors is over the limit ({} bytes, {} descriptors)",
                    payload.len(),
                    self.max_frame,
                    self.max_fds
                ),
            ));
        }
        let mut frame = Vec::with_capacity(HEADER + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.push(fds as u8);
        frame.extend_from_slice(&payload);
        Ok(frame)
    }

    /// Queues `msg` and writes what the peer takes now. A message over the frame limit is
    /// refused (the channel stays usable); a full queue or a failed write breaks the channel.
    pub fn send(&mut self, msg: &Tx) -> io::Result<()> {
        self.send_with_fds(msg, Vec::new())
    }

    /// Like [`Channel::send`], with descriptors that travel with the frame (closed here once sent).
    pub fn send_with_fds(&mut self, msg: &Tx, fds: Vec<OwnedFd>) -> io::Result<()> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the channel is closed"));
        }
        let frame = self.encode(msg, fds.len())?;
        let queued = self.queued();
        if queued + frame.len() > self.max_output {
            let why = format!("the peer does not read: {queued} bytes are queued for it already");
            self.break_off(why.clone());
            return Err(io::Error::other(why));
        }
        let start = self.output.len();
        self.output.extend_from_slice(&frame);
        if !fds.is_empty() {
            self.out_fds.push_back((start, fds));
        }
        self.flush().map(|_| ())
    }

    /// Like [`Channel::send_with_fds`] with descriptors the caller keeps (no duplicate is made):
    /// the frame is written only when nothing is queued before it, its descriptors going with
    /// its first bytes at once; what the peer does not take of it then is queued (without
    /// descriptors). Ok(false): nothing was sent (output is queued, or the socket is full): try
    /// again once [`Channel::flush`] emptied the queue. A hand-over lends its connections'
    /// sockets this way: they stay open in the old worker until the replacement answers.
    pub fn send_lending_fds(&mut self, msg: &Tx, fds: &[BorrowedFd<'_>]) -> io::Result<bool> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the channel is closed"));
        }
        if !self.flush()? {
            return Ok(false);
        }
        let frame = self.encode(msg, fds.len())?;
        let sent = loop {
            match sys::send_with_fds(self.stream.as_fd(), &frame, fds) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => break Ok(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => break Err(e),
            }
        };
        match sent {
            Ok(n) => {
                // The descriptors went with the first byte; the rest is plain bytes.
                self.output.extend_from_slice(&frame[n..]);
                Ok(true)
            }
            Err(e) => {
                self.closed = true;
                Err(e)
            }
        }
    }

    /// Writes what the peer takes now. Ok(true) when nothing is left queued.
    pub fn flush(&mut self) -> io::Result<bool> {
        let result = loop {
            if self.written == self.output.len() {
                break Ok(true);
            }
            // A frame's descriptors go with a write that starts at its first byte, and no write
            // reaches into the next frame that carries some.
            let (end, fds) = match self.out_fds.front() {
                Some((at, fds)) if *at == self.written => {
                    let end = self.out_fds.get(1).map_or(self.output.len(), |(next, _)| *next);
                    (end, fds.iter().map(AsFd::as_fd).collect::<Vec<BorrowedFd<'_>>>())
                }
                Some((at, _)) => (*at, Vec::new()),
                None => (self.output.len(), Vec::new()),
            };
            let carried = !fds.is_empty();
            match sys::send_with_fds(self.stream.as_fd(), &self.output[self.written..end], &fds) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.written += n;
                    if carried {
                        // Sent: the peer has its own copies.
                        self.out_fds.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(false),
                Err(e) => break Err(e),
            }
        };
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        } else if self.written >= COMPACT_AT && self.written * 2 >= self.output.len() {
            // Only once the written part is at least half: each byte is moved O(1) times.
            self.output.drain(..self.written);
            for (at, _) in &mut self.out_fds {
                *at -= self.written;
            }
            self.written = 0;
        }
        if result.is_err() {
            self.closed = true;
        }
        result
    }

    /// Bytes queued and not yet written.
    pub fn queued(&self) -> usize {
        self.output.len() - self.written
    }

    pub fn pending(&self) -> bool {
        self.queued() > 0
    }

    /// Reads what is available and returns the complete messages. A message that came with
    /// descriptors has them closed here: use [`Channel::read_with_fds`] where some are expected.
    pub fn read(&mut self) -> Vec<Rx> {
        self.read_with_fds()
            .into_iter()
            .map(|(msg, fds)| {
                if !fds.is_empty() {
                    tracing::warn!(count = fds.len(), "descriptors nobody expected were closed");
                }
                msg
            })
            .collect()
    }

    /// Reads what is available and returns the complete messages with their descriptors.
    pub fn read_with_fds(&mut self) -> Vec<(Rx, Vec<OwnedFd>)> {
        self.fill();
        self.received.drain(..).collect()
    }

    /// Waits up to `timeout` for the next message (for a process that has no loop yet).
    pub fn recv_timeout(&mut self, timeout: Duration) -> io::Result<(Rx, Vec<OwnedFd>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(next) = self.received.pop_front() {
                return Ok(next);
            }
            if self.closed {
                let why = self.error.clone().unwrap_or_else(|| "the peer closed the channel".into());
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
            }
            self.fill();
            if self.received.is_empty() && !self.closed {
                self.wait(PollFlags::POLLIN, deadline)?;
            }
        }
    }

    /// Writes everything queued, waiting up to `timeout` (for a process that has no loop, or
    /// none any more).
    pub fn flush_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.flush()? {
            self.wait(PollFlags::POLLOUT, deadline)?;
        }
        Ok(())
    }

    fn wait(&self, events: PollFlags, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.stream.as_fd(), events)];
        match nix::poll::poll(&mut fds, timeout) {
            Ok(0) => Err(io::Error::new(io::ErrorKind::TimedOut, format!("nothing from the peer in {left:?}"))),
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads until the socket has nothing more, decoding every complete frame into `received`.
    fn fill(&mut self) {
        while !self.read_done {
            let old = self.input.len();
            self.input.resize(old + READ_CHUNK, 0);
            let mut fds = Vec::new();
            let got = sys::recv_with_fds(self.stream.as_fd(), &mut self.input[old..], &mut fds);
            self.in_fds.extend(fds);
            match got {
                Ok(0) => {
                    self.input.truncate(old);
                    self.closed = true;
                    self.read_done = true;
                    if !self.input.is_empty() {
                        self.error = Some(format!("the peer closed in the middle of a frame ({old} bytes read)"));
                    }
                }
                Ok(n) => {
                    self.input.truncate(old + n);
                    if self.in_fds.len() > 4 * self.max_fds {
                        self.break_off(format!("the peer sent {} descriptors no frame claims", self.in_fds.len()));
                        return;
                    }
                    self.decode_frames();
                }
                Err(e) => {
                    self.input.truncate(old);
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock => return,
                        _ => {
                            self.closed = true;
                            self.read_done = true;
                        }
                    }
                }
            }
        }
    }

    /// Moves every complete frame of `input` into `received`.
    fn decode_frames(&mut self) {
        let mut at = 0;
        while !self.read_done && self.input.len() - at >= HEADER {
            let header = &self.input[at..at + HEADER];
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let nfds = header[4] as usize;
            if len > self.max_frame || nfds > self.max_fds {
                let (max, max_fds) = (self.max_frame, self.max_fds);
                self.break_off(format!("the peer announced a frame of {len} bytes and {nfds} descriptors (the limit is {max} bytes, {max_fds} descriptors)"));
                return;
            }
            if self.input.len() - at < HEADER + len {
                break;
            }
            if self.in_fds.len() < nfds {
                let got = self.in_fds.len();
                self.break_off(format!("a frame announced {nfds} descriptors, {got} arrived"));
                return;
            }
            let payload = &self.input[at + HEADER..at + HEADER + len];
            match decode::<Rx>(&mut self.peer_protocol, payload) {
                Ok(msg) => {
                    let fds = self.in_fds.drain(..nfds).collect();
                    self.received.push_back((msg, fds));
                }
                Err(why) => {
                    self.break_off(why);
                    return;
                }
            }
            at += HEADER + len;
        }
        self.input.drain(..at);
    }

    /// Shuts the socket down both ways: the peer sees the channel closed.
    pub fn shut_down(&mut self) {
        self.closed = true;
        self.read_done = true;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.stream.as_fd());
        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
    }

    /// The channel is broken: remember why and drop what was buffered.
    fn break_off(&mut self, why: String) {
        self.closed = true;
        self.read_done = true;
        self.error.get_or_insert(why);
        self.input = Vec::new();
        self.in_fds.clear();
        self.output = Vec::new();
        self.written = 0;
        self.out_fds.clear();
    }
}

/// Decodes one payload; the first one must be the peer's hello in our version (or a message
/// `Rx` allows before it).
fn decode<Rx: Message>(peer_protocol: &mut Option<u32>, payload: &[u8]) -> Result<Rx, String> {
    if peer_protocol.is_none() {
        let (tag, rest) = postcard::take_from_bytes::<u32>(payload).map_err(|e| format!("bad first frame: {e}"))?;
        if tag == 0 {
            let (protocol, _) =
                postcard::take_from_bytes::<u32>(rest).map_err(|e| format!("bad hello from the peer: {e}"))?;
            if protocol != PROTOCOL {
                return Err(format!("protocol mismatch: the peer speaks version {protocol}, this side {PROTOCOL}"));
            }
            *peer_protocol = Some(protocol);
        } else if !Rx::allowed_before_hello(tag) {
            return Err(format!("the peer sent message {tag} before its hello"));
        }
    }
    postcard::from_bytes(payload).map_err(|e| format!("could not decode a frame of {} bytes: {e}", payload.len()))
}

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;
