//! The server side of one HTTP/2 connection, sans-IO: [`Connection::recv`] takes the bytes
//! received (whole frames are used, the rest is left to the caller's buffer) and returns how
//! many it used; what happened comes out of [`Connection::poll_event`] ([`Event`]); what to
//! send accumulates in an output buffer ([`Connection::take_output`]). Responses go in with
//! [`Connection::send_headers`] and [`Connection::send_data`]; a body is sent as far as the
//! peer's windows admit and the rest waits in its stream's queue ([`Connection::queued_bytes`]),
//! without holding up the other streams.
//!
//! Defences, each counted in [`Stats`]: streams reset faster than [`Config::max_resets`] per
//! [`Config::flood_window_ms`] (Rapid Reset, CVE-2023-44487, counting the resets the client
//! provokes as well as its own) and frames that do no work (SETTINGS, PING, PRIORITY, empty DATA
//! and CONTINUATION, unknown types) beyond [`Config::max_idle_frames`] end the connection with
//! GOAWAY ENHANCE_YOUR_CALM; a header block is bounded before it is buffered
//! ([`Config::max_header_block`], CVE-2024-27316); the decoded field list is bounded
//! ([`Config::max_header_list_size`], the HPACK bomb: answered 431); streams past
//! [`Config::max_concurrent_streams`] are refused (REFUSED_STREAM).

use std::collections::{BTreeMap, VecDeque};

use super::frame::{self, flag, setting, ErrorCode, Frame, Framing, H2Error, DEFAULT_WINDOW, MAX_WINDOW};
use super::hpack::{self, DecodeError};
use super::request::H2Request;
pub use super::stats::Stats;

/// The local settings and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams past it are refused.
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: each stream's receive window (at least 65,535).
    pub initial_window_size: u32,
    /// The connection's receive window (at least 65,535; raised by a WINDOW_UPDATE at start).
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE: the largest frame received.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the largest decoded field list (names, values, 32 each).
    pub max_header_list_size: u32,
    /// The largest header block (HEADERS and CONTINUATION payloads), checked before buffering.
    pub max_header_block: usize,
    /// Stream resets (the client's, and the ones its errors cause) per window.
    pub max_resets: u32,
    /// Frames that do no work, per window.
    pub max_idle_frames: u32,
    /// The window of the two rates above, in milliseconds.
    pub flood_window_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_concurrent_streams: 100,
            initial_window_size: 256 * 1024,
            connection_window: 1024 * 1024,
            max_frame_size: frame::MIN_MAX_FRAME_SIZE,
            max_header_list_size: 64 * 1024,
            max_header_block: 64 * 1024,
            max_resets: 200,
            max_idle_frames: 1000,
            flood_window_ms: 1000,
        }
    }
}

/// An output buffer grown past this (a body's window of DATA frames) is given back once sent.
pub const RETAIN_OUTPUT: usize = 64 * 1024;

/// What the client did, for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new stream with a request head. `end_stream`: it has no body.
    Request { stream: u32, request: H2Request, end_stream: bool },
    /// A piece of a request body (possibly empty when only `end_stream` is news). Its length is
    /// handed back with [`Connection::release`] once consumed, to reopen the window.
    Data { stream: u32, data: Vec<u8>, end_stream: bool },
    /// A stream the application knows of ended early: the client cancelled it (RST_STREAM), or
    /// its error made the server reset it (`code` then says which). Anything for it is dropped.
    Reset { stream: u32, code: ErrorCode },
    /// The client is going away; streams up to `last_stream` still count.
    GoAway { last_stream: u32, code: ErrorCode },
}

/// Why a response could not be submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The stream is closed or reset (or never existed).
    StreamClosed,
    /// Headers sent twice, data before headers, or anything after the end.
    Order,
}

/// HTTP/1.1's connection-specific fields, left out of a response head (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&[u8]; 5] =
    [b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"proxy-connection"];

/// A count over a sliding window of time.
#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    start: u64,
    count: u32,
}

impl Rate {
    /// Counts one at `now`; true when that makes more than `max` in the window.
    fn hit(&mut self, now: u64, window: u64, max: u32) -> bool {
        if now.saturating_sub(self.start) >= window {
            *self = Rate { start: now, count: 0 };
        }
        self.count = self.count.saturating_add(1);
        self.count > max
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Preface,
    /// The preface came; the client's SETTINGS must be next.
    FirstSettings,
    Open,
    /// GOAWAY with an error went out: nothing more is read.
    Closed,
}

#[derive(Debug, Default)]
struct Stream {
    /// Its [`Event::Request`] went out.
    announced: bool,
    /// END_STREAM received (half-closed remote).
    recv_closed: bool,
    headers_sent: bool,
    /// The application has given all of the response (END_STREAM queued).
    send_done: bool,
    /// END_STREAM has gone out.
    end_sent: bool,
    recv_window: i64,
    /// Body bytes consumed by the application, not yet announced.
    release_pending: u32,
    /// Body bytes delivered and not yet released (given back to the connection on close).
    unreleased: u32,
    send_window: i64,
    queue: VecDeque<u8>,
    content_length: Option<u64>,
    received: u64,
}

/// A header block arriving in pieces.
struct Pending {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// One HTTP/2 connection, server side.
pub struct Connection {
    config: Config,
    phase: Phase,
    out: Vec<u8>,
    events: VecDeque<Event>,
    decoder: hpack::Decoder,
    encoder: hpack::Encoder,
    streams: BTreeMap<u32, Stream>,
    /// The highest stream id the client opened (or tried to).
    last_stream: u32,
    recv_window: i64,
    release_pending: u32,
    send_window: i64,
    peer_initial_window: u32,
    peer_max_frame: u32,
    queued: usize,
    pending: Option<Pending>,
    /// The header block being encoded (reused: no allocation per response).
    block: Vec<u8>,
    /// The last stream id of the GOAWAY sent, once sent.
    goaway_sent: Option<u32>,
    goaway_received: bool,
    resets: Rate,
    idle: Rate,
    now: u64,
    stats: Stats,
}

/// What the start of a connection's bytes says about HTTP/2 with prior knowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preface {
    /// The whole client preface is there.
    Yes,
    /// Not (or no longer possibly) the preface: HTTP/1.1 or something else.
    No,
    /// A prefix of the preface: wait for more.
    Maybe,
}

/// Whether `buf` starts with the client connection preface (h2c prior knowledge).
pub fn preface(buf: &[u8]) -> Preface {
    let n = buf.len().min(frame::PREFACE.len());
    match (buf[..n] == frame::PREFACE[..n], n == frame::PREFACE.len()) {
        (false, _) => Preface::No,
        (true, true) => Preface::Yes,
        (true, false) => Preface::Maybe,
    }
}

impl Connection {
    /// A new connection; its SETTINGS (and the connection window's WINDOW_UPDATE) are the
    /// first output, to be sent right away.
    pub fn new(config: Config) -> Connection {
        let config = Config {
            initial_window_size: config.initial_window_size.clamp(DEFAULT_WINDOW, MAX_WINDOW),
            connection_window: config.connection_window.clamp(DEFAULT_WINDOW, MAX_WINDOW),
            max_frame_size: config.max_frame_size.clamp(frame::MIN_MAX_FRAME_SIZE, frame::MAX_MAX_FRAME_SIZE),
            ..config
        };
        let mut out = Vec::with_capacity(64);
        frame::write_settings(
            &mut out,
            &[
                (setting::ENABLE_PUSH, 0),
                (setting::MAX_CONCURRENT_STREAMS, config.max_concurrent_streams),
                (setting::INITIAL_WINDOW_SIZE, config.initial_window_size),
                (setting::MAX_FRAME_SIZE, config.max_frame_size),
                (setting::MAX_HEADER_LIST_SIZE, config.max_header_list_size),
            ],
        );
        if config.connection_window > DEFAULT_WINDOW {
            frame::write_window_update(&mut out, 0, config.connection_window - DEFAULT_WINDOW);
        }
        Connection {
            config,
            phase: Phase::Preface,
            out,
            events: VecDeque::new(),
            decoder: hpack::Decoder::new(config.max_header_list_size as usize),
            encoder: hpack::Encoder::default(),
            streams: BTreeMap::new(),
            last_stream: 0,
            recv_window: i64::from(config.connection_window),
            release_pending: 0,
            send_window: i64::from(DEFAULT_WINDOW),
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: frame::MIN_MAX_FRAME_SIZE,
            queued: 0,
            pending: None,
            block: Vec::new(),
            goaway_sent: None,
            goaway_received: false,
            resets: Rate::default(),
            idle: Rate::default(),
            now: 0,
            stats: Stats::default(),
        }
    }

    /// Takes the frames at the start of `buf` (received at `now_ms`, any monotonic clock in
    /// milliseconds); returns the bytes used. The rest of `buf` is an incomplete frame, kept by
    /// the caller until more arrives (never more than 9 bytes + the max frame size). After a
    /// connection error the GOAWAY is in the output, [`Connection::is_closed`] is true and
    /// nothing more is read.
    pub fn recv(&mut self, now_ms: u64, buf: &[u8]) -> usize {
        self.now = now_ms;
        let mut used = 0;
        while self.phase != Phase::Closed {
            let rest = &buf[used..];
            if self.phase == Phase::Preface {
                match preface(rest) {
                    Preface::Yes => {
                        used += frame::PREFACE.len();
                        self.phase = Phase::FirstSettings;
                        continue;
                    }
                    Preface::Maybe => break,
                    Preface::No => {
                        self.connection_error(ErrorCode::PROTOCOL_ERROR);
                        break;
                    }
                }
            }
            let (h, len) = match frame::frame_at(rest, self.config.max_frame_size) {
                Ok(Framing::NeedMore) => break,
                Ok(Framing::Frame(h, len)) => (h, len),
                Err(e) => {
                    self.error(e);
                    break;
                }
            };
            used += len;
            if self.phase == Phase::FirstSettings {
                if h.kind != frame::kind::SETTINGS || h.has(flag::ACK) {
                    self.connection_error(ErrorCode::PROTOCOL_ERROR);
                    break;
                }
                self.phase = Phase::Open;
            }
            let result = match frame::decode(&h, &rest[frame::HEADER_LEN..len]) {
                Ok(f) => self.on_frame(f),
                Err(e) => {
                    if h.kind == frame::kind::WINDOW_UPDATE {
                        // The only decoding error of a well-sized WINDOW_UPDATE: increment 0.
                        self.stats.zero_window_updates += 1;
                    }
                    Err(e)
                }
            };
            if let Err(e) = result {
                self.error(e);
            }
        }
        if self.phase == Phase::Closed {
            // Nothing more is read: all of it is used.
            return buf.len();
        }
        self.flush();
        used
    }

    /// The next event, in order.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The bytes to send, taken (the buffer is left empty).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The bytes to send, left in place; [`Connection::output_sent`] once they are sent. Unlike
    /// [`Connection::take_output`], the buffer is kept for the next output: no allocation per
    /// flush.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// The bytes of [`Connection::output`] were sent: cleared (a buffer a large body grew past
    /// [`RETAIN_OUTPUT`] is given back).
    pub fn output_sent(&mut self) {
        if self.out.capacity() > RETAIN_OUTPUT {
            self.out = Vec::new();
        } else {
            self.out.clear();
        }
    }

    /// Whether there are bytes to send.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Response bytes waiting for the peer's windows, and output not taken yet: what the host
    /// counts against its send buffer bound.
    pub fn queued_bytes(&self) -> usize {
        self.queued + self.out.len()
    }

    /// How many body bytes of `stream` would go out now without waiting: what its window and
    /// the connection's admit, nothing while some already wait. A caller reading a file needs
    /// to read no more than this ahead.
    pub fn send_capacity(&self, stream: u32) -> usize {
        match self.streams.get(&stream) {
            Some(s) if s.headers_sent && !s.send_done && s.queue.is_empty() => {
                s.send_window.min(self.send_window).max(0) as usize
            }
            _ => 0,
        }
    }

    /// Response body bytes of `stream` waiting for a window.
    pub fn stream_queued(&self, stream: u32) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.queue.len())
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Streams open or half-closed.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// A connection error ended the connection: send the output, then close.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Nothing more will happen: closed, or draining (or told the peer is going away) with
    /// every stream finished. Send the output, then close.
    pub fn is_done(&self) -> bool {
        self.is_closed() || ((self.goaway_sent.is_some() || self.goaway_received) && self.streams.is_empty())
    }

    /// Graceful shutdown: GOAWAY NO_ERROR with the last stream id; streams up to it are served,
    /// later ones ignored. [`Connection::is_done`] says when the last one has finished.
    pub fn drain(&mut self) {
        if self.goaway_sent.is_none() && self.phase != Phase::Closed {
            frame::write_goaway(&mut self.out, self.last_stream, ErrorCode::NO_ERROR, b"");
            self.goaway_sent = Some(self.last_stream);
        }
    }

    /// The application closes the connection for a timeout (idle, or a request or response
    /// that stalled): GOAWAY NO_ERROR with the last stream id (RFC 9113 §6.8: the peer learns
    /// which of its streams may have been processed, and that it may retry the rest), then
    /// nothing more is read or sent; streams still open end with the connection. Not counted
    /// as an error. A GOAWAY already sent (a drain) is not repeated.
    pub fn close_idle(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.goaway_sent.is_none() {
            frame::write_goaway(&mut self.out, self.last_stream, ErrorCode::NO_ERROR, b"");
            self.goaway_sent = Some(self.last_stream);
        }
        self.phase = Phase::Closed;
        self.streams.clear();
        self.queued = 0;
        self.pending = None;
    }

    /// The application refuses `stream` unprocessed: RST_STREAM REFUSED_STREAM, which tells the
    /// client it may retry it (RFC 9113 §8.7); say, while the responses already queued on the
    /// connection are at the application's bound. Counted with the streams refused over the
    /// concurrency limit.
    pub fn refuse(&mut self, stream: u32) {
        if self.streams.contains_key(&stream) {
            self.stats.refused_streams += 1;
            self.reset(stream, ErrorCode::REFUSED_STREAM);
        }
    }

    /// Immediate shutdown: GOAWAY with `code` and the last stream id; nothing more is read.
    pub fn abort(&mut self, code: ErrorCode) {
        if self.phase != Phase::Closed {
            self.connection_error(code);
        }
    }

    /// An interim `100 Continue` on `stream` (the answer to `expect: 100-continue`, RFC 9110
    /// §10.1.1): the client may send its body. The final response head follows as usual.
    pub fn send_continue(&mut self, stream: u32) -> Result<(), SendError> {
        let s = self.streams.get(&stream).ok_or(SendError::StreamClosed)?;
        if s.headers_sent || s.recv_closed {
            return Err(SendError::Order);
        }
        let mut block = std::mem::take(&mut self.block);
        block.clear();
        self.encoder.start(&mut block);
        self.encoder.status(100, &mut block);
        frame::write_headers(&mut self.out, stream, &block, false, self.peer_max_frame);
        self.block = block;
        Ok(())
    }

    /// The response head of `stream`: `status`, then `fields` (names are sent in lowercase;
    /// HTTP/1.1's connection-specific fields are left out). `end_stream`: no body follows.
    pub fn send_headers(
        &mut self,
        stream: u32,
        status: u16,
        fields: &[(&str, &[u8])],
        end_stream: bool,
    ) -> Result<(), SendError> {
        self.send_fields(stream, status, fields.iter().map(|(n, v)| (n.as_bytes(), *v)), end_stream)
    }

    /// [`Connection::send_headers`] with the fields from an iterator, names in any case: an
    /// HTTP/1.1 head's ([`super::serve::Http1Head::fields`]) go straight into the header block.
    pub fn send_fields<'f>(
        &mut self,
        stream: u32,
        status: u16,
        fields: impl IntoIterator<Item = (&'f [u8], &'f [u8])>,
        end_stream: bool,
    ) -> Result<(), SendError> {
        let s = self.streams.get_mut(&stream).ok_or(SendError::StreamClosed)?;
        if s.headers_sent {
            return Err(SendError::Order);
        }
        s.headers_sent = true;
        let mut block = std::mem::take(&mut self.block);
        block.clear();
        self.encoder.start(&mut block);
        self.encoder.status(status, &mut block);
        for (name, value) in fields {
            if !CONNECTION_SPECIFIC.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                self.encoder.field(name, value, &mut block);
            }
        }
        frame::write_headers(&mut self.out, stream, &block, end_stream, self.peer_max_frame);
        self.block = block;
        if end_stream {
            let s = self.streams.get_mut(&stream).ok_or(SendError::StreamClosed)?;
            s.send_done = true;
            s.end_sent = true;
            self.finish_stream(stream);
        }
        Ok(())
    }

    /// A piece of the response body of `stream` (after its head); `end_stream` with the last.
    /// Sent as far as the windows admit, the rest queued.
    pub fn send_data(&mut self, stream: u32, data: &[u8], end_stream: bool) -> Result<(), SendError> {
        let s = self.streams.get_mut(&stream).ok_or(SendError::StreamClosed)?;
        if !s.headers_sent || s.send_done {
            return Err(SendError::Order);
        }
        s.send_done = end_stream;
        let mut data = data;
        if s.queue.is_empty() && self.phase != Phase::Closed {
            // Nothing of the stream waits: its first frame goes out now, without a copy into
            // its queue (a small response's whole body).
            let window = s.send_window.min(self.send_window).max(0) as usize;
            let n = data.len().min(window).min(self.peer_max_frame as usize);
            let end = end_stream && n == data.len();
            if n > 0 || end {
                frame::write_header(
                    &mut self.out,
                    n,
                    frame::kind::DATA,
                    if end { flag::END_STREAM } else { 0 },
                    stream,
                );
                self.out.extend_from_slice(&data[..n]);
                s.send_window -= n as i64;
                self.send_window -= n as i64;
                data = &data[n..];
                if end {
                    s.end_sent = true;
                    self.finish_stream(stream);
                    return Ok(());
                }
            }
        }
        s.queue.extend(data);
        self.queued += data.len();
        self.flush();
        Ok(())
    }

    /// The application consumed `n` bytes of `stream`'s request body: the windows reopen by as
    /// much (WINDOW_UPDATE once a quarter of a window is due).
    pub fn release(&mut self, stream: u32, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let threshold = self.config.initial_window_size / 4;
        let Some(s) = self.streams.get_mut(&stream) else { return };
        let n = n.min(s.unreleased);
        s.unreleased -= n;
        if !s.recv_closed {
            s.release_pending += n;
            if s.release_pending >= threshold {
                frame::write_window_update(&mut self.out, stream, s.release_pending);
                s.recv_window += i64::from(s.release_pending);
                s.release_pending = 0;
            }
        }
        self.release_connection(n);
    }

    /// Cancels `stream` (RST_STREAM `code`); its queued response is dropped.
    pub fn reset(&mut self, stream: u32, code: ErrorCode) {
        if self.streams.contains_key(&stream) {
            frame::write_rst_stream(&mut self.out, stream, code);
            self.remove_stream(stream);
        }
    }

    fn release_connection(&mut self, n: u32) {
        if n == 0 {
            return;
        }
        self.release_pending = self.release_pending.saturating_add(n);
        if self.release_pending >= self.config.connection_window / 4 {
            frame::write_window_update(&mut self.out, 0, self.release_pending);
            self.recv_window += i64::from(self.release_pending);
            self.release_pending = 0;
        }
    }

    fn remove_stream(&mut self, id: u32) {
        if let Some(s) = self.streams.remove(&id) {
            self.queued -= s.queue.len();
            self.release_connection(s.unreleased);
        }
    }

    /// Closes `id` once both sides are done; a response complete before the request's body is
    /// followed by RST_STREAM NO_ERROR (RFC 9113 §8.1): the client need not send the rest.
    fn finish_stream(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else { return };
        if !s.end_sent {
            return;
        }
        if !s.recv_closed {
            frame::write_rst_stream(&mut self.out, id, ErrorCode::NO_ERROR);
        }
        self.remove_stream(id);
    }

    /// Sends queued body bytes as the windows admit: one frame per stream per round, so a
    /// stalled stream never holds up the others.
    fn flush(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        let mut finished = Vec::new();
        loop {
            let mut moved = false;
            for (&id, s) in self.streams.iter_mut() {
                if s.end_sent || !s.headers_sent {
                    continue;
                }
                let window = s.send_window.min(self.send_window).max(0) as usize;
                let n = s.queue.len().min(window).min(self.peer_max_frame as usize);
                let end = s.send_done && n == s.queue.len();
                if n == 0 && !end {
                    continue;
                }
                let (a, b) = s.queue.as_slices();
                let flags = if end { flag::END_STREAM } else { 0 };
                frame::write_header(&mut self.out, n, frame::kind::DATA, flags, id);
                let from_a = n.min(a.len());
                self.out.extend_from_slice(&a[..from_a]);
                self.out.extend_from_slice(&b[..n - from_a]);
                s.queue.drain(..n);
                s.send_window -= n as i64;
                self.send_window -= n as i64;
                self.queued -= n;
                moved = true;
                if end {
                    s.end_sent = true;
                    finished.push(id);
                }
            }
            if !moved {
                break;
            }
        }
        for id in finished {
            self.finish_stream(id);
        }
    }

    fn error(&mut self, e: H2Error) {
        match e {
            H2Error::Connection(code) => self.connection_error(code),
            H2Error::Stream(id, code) => self.stream_error(id, code),
        }
    }

    /// GOAWAY with `code`; every stream ends with the connection (their queues are dropped).
    fn connection_error(&mut self, code: ErrorCode) {
        self.stats.connection_errors += 1;
        let last = self.goaway_sent.unwrap_or(self.last_stream);
        frame::write_goaway(&mut self.out, last, code, b"");
        self.goaway_sent = Some(last);
        self.phase = Phase::Closed;
        self.streams.clear();
        self.queued = 0;
        self.pending = None;
    }

    /// RST_STREAM for an error of the client's; such resets count toward the reset rate.
    fn stream_error(&mut self, id: u32, code: ErrorCode) {
        frame::write_rst_stream(&mut self.out, id, code);
        if let Some(s) = self.streams.get(&id) {
            // The application knows of the stream (its request went out): it hears of the end.
            if s.announced {
                self.events.push_back(Event::Reset { stream: id, code });
            }
            self.remove_stream(id);
        }
        self.count_reset();
    }

    fn count_reset(&mut self) {
        if self.resets.hit(self.now, self.config.flood_window_ms, self.config.max_resets) {
            self.stats.rapid_reset += 1;
            self.connection_error(ErrorCode::ENHANCE_YOUR_CALM);
        }
    }

    /// A frame that does no work; too many end the connection.
    fn idle_frame(&mut self) -> Result<(), H2Error> {
        if self.idle.hit(self.now, self.config.flood_window_ms, self.config.max_idle_frames) {
            self.stats.idle_frame_flood += 1;
            return Err(H2Error::Connection(ErrorCode::ENHANCE_YOUR_CALM));
        }
        Ok(())
    }

    /// Whether `id` is a stream the client has not opened yet.
    fn is_idle(&self, id: u32) -> bool {
        id > self.last_stream || id.is_multiple_of(2)
    }
}

#[path = "conn_recv.rs"]
mod recv;

#[path = "handover.rs"]
mod handover;

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
