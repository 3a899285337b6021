//! The HTTP/2 frame layer (RFC 9113 §4, §6): the frame header, every frame type decoded from
//! its payload with the checks the RFC puts on it (lengths, padding, stream ids), and writers
//! for the frames a server sends. Pure functions over bytes.
//!
//! A check that fails says which error it is ([`H2Error`]): a connection error ends the
//! connection with GOAWAY, a stream error resets one stream (RST_STREAM).

/// What a client sends first (RFC 9113 §3.4), before its SETTINGS frame.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The frame header's length.
pub const HEADER_LEN: usize = 9;

/// The smallest SETTINGS_MAX_FRAME_SIZE (and its initial value).
pub const MIN_MAX_FRAME_SIZE: u32 = 16_384;
/// The largest SETTINGS_MAX_FRAME_SIZE.
pub const MAX_MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
/// The largest flow-control window.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// Every window's initial size (before SETTINGS say otherwise).
pub const DEFAULT_WINDOW: u32 = 65_535;

/// Frame types (RFC 9113 §6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS parameters (RFC 9113 §6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// An error code (RFC 9113 §7); unknown codes are kept as they came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x1);
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(0x2);
    pub const FLOW_CONTROL_ERROR: ErrorCode = ErrorCode(0x3);
    pub const SETTINGS_TIMEOUT: ErrorCode = ErrorCode(0x4);
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x5);
    pub const FRAME_SIZE_ERROR: ErrorCode = ErrorCode(0x6);
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x7);
    pub const CANCEL: ErrorCode = ErrorCode(0x8);
    pub const COMPRESSION_ERROR: ErrorCode = ErrorCode(0x9);
    pub const CONNECT_ERROR: ErrorCode = ErrorCode(0xa);
    pub const ENHANCE_YOUR_CALM: ErrorCode = ErrorCode(0xb);
    pub const INADEQUATE_SECURITY: ErrorCode = ErrorCode(0xc);
    pub const HTTP_1_1_REQUIRED: ErrorCode = ErrorCode(0xd);
}

/// A protocol error and its reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Error {
    /// The connection ends: GOAWAY with this code.
    Connection(ErrorCode),
    /// This stream ends: RST_STREAM with this code; the connection goes on.
    Stream(u32, ErrorCode),
}

impl std::fmt::Display for H2Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H2Error::Connection(c) => write!(f, "HTTP/2 connection error {:#x}", c.0),
            H2Error::Stream(s, c) => write!(f, "HTTP/2 stream {s} error {:#x}", c.0),
        }
    }
}

impl std::error::Error for H2Error {}

const fn conn(code: ErrorCode) -> H2Error {
    H2Error::Connection(code)
}

/// The 9 bytes before every payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub len: u32,
    pub kind: u8,
    pub flags: u8,
    /// The stream id, reserved bit cleared.
    pub stream: u32,
}

impl FrameHeader {
    /// The header at the start of `buf`, when 9 bytes are there.
    pub fn parse(buf: &[u8]) -> Option<FrameHeader> {
        let b: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(FrameHeader {
            len: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        })
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
}

/// A stream dependency (RFC 9113 §5.3.2, deprecated): parsed to be checked, then ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    pub exclusive: bool,
    pub depends_on: u32,
    pub weight: u8,
}

/// A decoded frame; payloads borrow from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `flow_len` is the whole payload (padding included): what flow control counts.
    Data {
        stream: u32,
        data: &'a [u8],
        end_stream: bool,
        flow_len: u32,
    },
    Headers {
        stream: u32,
        block: &'a [u8],
        end_stream: bool,
        end_headers: bool,
        priority: Option<Priority>,
    },
    Priority {
        stream: u32,
        priority: Priority,
    },
    RstStream {
        stream: u32,
        code: ErrorCode,
    },
    /// `params` is a whole number of 6-byte settings ([`settings`] iterates them).
    Settings {
        ack: bool,
        params: &'a [u8],
    },
    PushPromise {
        stream: u32,
    },
    Ping {
        ack: bool,
        data: [u8; 8],
    },
    GoAway {
        last_stream: u32,
        code: ErrorCode,
        debug: &'a [u8],
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        block: &'a [u8],
        end_headers: bool,
    },
    /// A type this implementation does not know: ignored (RFC 9113 §4.1).
    Unknown {
        kind: u8,
        stream: u32,
    },
}

/// The `(id, value)` pairs of a SETTINGS payload.
pub fn settings(params: &[u8]) -> impl Iterator<Item = (u16, u32)> + '_ {
    params.chunks_exact(6).map(|c| (u16::from_be_bytes([c[0], c[1]]), u32::from_be_bytes([c[2], c[3], c[4], c[5]])))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The payload less its padding (`PADDED`): the pad length byte and the pad itself.
fn unpad<'a>(h: &FrameHeader, payload: &'a [u8]) -> Result<&'a [u8], H2Error> {
    if !h.has(flag::PADDED) {
        return Ok(payload);
    }
    let (&pad, rest) = payload.split_first().ok_or(conn(ErrorCode::FRAME_SIZE_ERROR))?;
    // Padding as long as the payload or longer: PROTOCOL_ERROR (§6.1, §6.2).
    let keep = rest.len().checked_sub(pad as usize).ok_or(conn(ErrorCode::PROTOCOL_ERROR))?;
    Ok(&rest[..keep])
}

fn parse_priority(b: &[u8]) -> Priority {
    let dep = u32_at(b, 0);
    Priority { exclusive: dep & 0x8000_0000 != 0, depends_on: dep & MAX_WINDOW, weight: b[4] }
}

/// Decodes one frame: `payload` is exactly `h.len` bytes. Size checks against the local
/// SETTINGS_MAX_FRAME_SIZE happen before (on the header alone, see [`Framing`]).
pub fn decode<'a>(h: &FrameHeader, payload: &'a [u8]) -> Result<Frame<'a>, H2Error> {
    debug_assert_eq!(payload.len(), h.len as usize);
    let s = h.stream;
    let need_stream = |s: u32| if s == 0 { Err(conn(ErrorCode::PROTOCOL_ERROR)) } else { Ok(()) };
    let no_stream = |s: u32| if s != 0 { Err(conn(ErrorCode::PROTOCOL_ERROR)) } else { Ok(()) };
    Ok(match h.kind {
        kind::DATA => {
            need_stream(s)?;
            let data = unpad(h, payload)?;
            Frame::Data { stream: s, data, end_stream: h.has(flag::END_STREAM), flow_len: h.len }
        }
        kind::HEADERS => {
            need_stream(s)?;
            let mut block = unpad(h, payload)?;
            let mut priority = None;
            if h.has(flag::PRIORITY) {
                if block.len() < 5 {
                    return Err(conn(ErrorCode::FRAME_SIZE_ERROR));
                }
                let p = parse_priority(block);
                if p.depends_on == s {
                    // A stream error in RFC 9113 §5.3.1, but the header block would then go
                    // undecoded and the HPACK context out of step: the connection ends.
                    return Err(conn(ErrorCode::PROTOCOL_ERROR));
                }
                priority = Some(p);
                block = &block[5..];
            }
            Frame::Headers {
                stream: s,
                block,
                end_stream: h.has(flag::END_STREAM),
                end_headers: h.has(flag::END_HEADERS),
                priority,
            }
        }
        kind::PRIORITY => {
            need_stream(s)?;
            if payload.len() != 5 {
                return Err(H2Error::Stream(s, ErrorCode::FRAME_SIZE_ERROR));
            }
            let priority = parse_priority(payload);
            if priority.depends_on == s {
                return Err(H2Error::Stream(s, ErrorCode::PROTOCOL_ERROR));
            }
            Frame::Priority { stream: s, priority }
        }
        kind::RST_STREAM => {
            need_stream(s)?;
            if payload.len() != 4 {
                return Err(conn(ErrorCode::FRAME_SIZE_ERROR));
            }
            Frame::RstStream { stream: s, code: ErrorCode(u32_at(payload, 0)) }
        }
        kind::SETTINGS => {
            no_stream(s)?;
            let ack = h.has(flag::ACK);
            if (ack && !payload.is_empty()) || !payload.len().is_multiple_of(6) {
                return Err(conn(ErrorCode::FRAME_SIZE_ERROR));
            }
            Frame::Settings { ack, params: payload }
        }
        kind::PUSH_PROMISE => {
            need_stream(s)?;
            Frame::PushPromise { stream: s }
        }
        kind::PING => {
            no_stream(s)?;
            let data: [u8; 8] = payload.try_into().map_err(|_| conn(ErrorCode::FRAME_SIZE_ERROR))?;
            Frame::Ping { ack: h.has(flag::ACK), data }
        }
        kind::GOAWAY => {
            no_stream(s)?;
            if payload.len() < 8 {
                return Err(conn(ErrorCode::FRAME_SIZE_ERROR));
            }
            Frame::GoAway {
                last_stream: u32_at(payload, 0) & MAX_WINDOW,
                code: ErrorCode(u32_at(payload, 4)),
                debug: &payload[8..],
            }
        }
        kind::WINDOW_UPDATE => {
            if payload.len() != 4 {
                return Err(conn(ErrorCode::FRAME_SIZE_ERROR));
            }
            let increment = u32_at(payload, 0) & MAX_WINDOW;
            if increment == 0 {
                // §6.9: on a stream, a stream error; on the connection, a connection error.
                return Err(match s {
                    0 => conn(ErrorCode::PROTOCOL_ERROR),
                    s => H2Error::Stream(s, ErrorCode::PROTOCOL_ERROR),
                });
            }
            Frame::WindowUpdate { stream: s, increment }
        }
        kind::CONTINUATION => {
            need_stream(s)?;
            Frame::Continuation { stream: s, block: payload, end_headers: h.has(flag::END_HEADERS) }
        }
        other => Frame::Unknown { kind: other, stream: s },
    })
}

/// What is at the start of a buffer: a whole frame, not yet, or a frame over the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A whole frame: its header, and its length with the header.
    Frame(FrameHeader, usize),
    NeedMore,
}

/// Looks for a whole frame at the start of `buf`; a length over `max_frame_size` (the local
/// SETTINGS_MAX_FRAME_SIZE) is a FRAME_SIZE_ERROR before any of the payload is buffered.
pub fn frame_at(buf: &[u8], max_frame_size: u32) -> Result<Framing, H2Error> {
    let Some(h) = FrameHeader::parse(buf) else { return Ok(Framing::NeedMore) };
    if h.len > max_frame_size {
        return Err(conn(ErrorCode::FRAME_SIZE_ERROR));
    }
    let total = HEADER_LEN + h.len as usize;
    Ok(if buf.len() >= total { Framing::Frame(h, total) } else { Framing::NeedMore })
}

/// Appends a frame header.
pub fn write_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_MAX_FRAME_SIZE as usize);
    let l = (len as u32).to_be_bytes();
    out.extend_from_slice(&[l[1], l[2], l[3], kind, flags]);
    out.extend_from_slice(&(stream & MAX_WINDOW).to_be_bytes());
}

/// Appends a whole frame.
pub fn write_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    write_header(out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
}

pub fn write_settings(out: &mut Vec<u8>, params: &[(u16, u32)]) {
    write_header(out, params.len() * 6, kind::SETTINGS, 0, 0);
    for &(id, value) in params {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&value.to_be_bytes());
    }
}

pub fn write_settings_ack(out: &mut Vec<u8>) {
    write_header(out, 0, kind::SETTINGS, flag::ACK, 0);
}

pub fn write_ping(out: &mut Vec<u8>, ack: bool, data: [u8; 8]) {
    write_frame(out, kind::PING, if ack { flag::ACK } else { 0 }, 0, &data);
}

pub fn write_window_update(out: &mut Vec<u8>, stream: u32, increment: u32) {
    write_frame(out, kind::WINDOW_UPDATE, 0, stream, &(increment & MAX_WINDOW).to_be_bytes());
}

pub fn write_rst_stream(out: &mut Vec<u8>, stream: u32, code: ErrorCode) {
    write_frame(out, kind::RST_STREAM, 0, stream, &code.0.to_be_bytes());
}

pub fn write_goaway(out: &mut Vec<u8>, last_stream: u32, code: ErrorCode, debug: &[u8]) {
    write_header(out, 8 + debug.len(), kind::GOAWAY, 0, 0);
    out.extend_from_slice(&(last_stream & MAX_WINDOW).to_be_bytes());
    out.extend_from_slice(&code.0.to_be_bytes());
    out.extend_from_slice(debug);
}

pub fn write_data(out: &mut Vec<u8>, stream: u32, data: &[u8], end_stream: bool) {
    write_frame(out, kind::DATA, if end_stream { flag::END_STREAM } else { 0 }, stream, data);
}

/// A header block as HEADERS and as many CONTINUATION frames as `max_frame_size` needs.
pub fn write_headers(out: &mut Vec<u8>, stream: u32, block: &[u8], end_stream: bool, max_frame_size: u32) {
    let max = max_frame_size.max(MIN_MAX_FRAME_SIZE) as usize;
    let mut pieces = block.chunks(max).peekable();
    let first = pieces.next().unwrap_or_default();
    let last = pieces.peek().is_none();
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if last {
        flags |= flag::END_HEADERS;
    }
    write_frame(out, kind::HEADERS, flags, stream, first);
    while let Some(piece) = pieces.next() {
        let flags = if pieces.peek().is_none() { flag::END_HEADERS } else { 0 };
        write_frame(out, kind::CONTINUATION, flags, stream, piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Result<Frame<'_>, H2Error> {
        match frame_at(bytes, MIN_MAX_FRAME_SIZE)? {
            Framing::Frame(h, n) => {
                assert_eq!(n, bytes.len());
                decode(&h, &bytes[HEADER_LEN..n])
            }
            Framing::NeedMore => panic!("incomplete"),
        }
    }

    #[test]
    fn written_frames_decode_as_written() {
        let mut out = Vec::new();
        write_settings(&mut out, &[(setting::MAX_CONCURRENT_STREAMS, 100), (setting::INITIAL_WINDOW_SIZE, 1 << 20)]);
        let Frame::Settings { ack: false, params } = one(&out).unwrap() else { panic!() };
        assert_eq!(settings(params).collect::<Vec<_>>(), [(3, 100), (4, 1 << 20)]);

        for (write, want) in [
            (
                Box::new(|o: &mut Vec<u8>| write_ping(o, true, *b"12345678")) as Box<dyn Fn(&mut Vec<u8>)>,
                Frame::Ping { ack: true, data: *b"12345678" },
            ),
            (Box::new(|o| write_window_update(o, 3, 77)), Frame::WindowUpdate { stream: 3, increment: 77 }),
            (
                Box::new(|o| write_rst_stream(o, 5, ErrorCode::CANCEL)),
                Frame::RstStream { stream: 5, code: ErrorCode::CANCEL },
            ),
            (
                Box::new(|o| write_goaway(o, 7, ErrorCode::ENHANCE_YOUR_CALM, b"calm")),
                Frame::GoAway { last_stream: 7, code: ErrorCode::ENHANCE_YOUR_CALM, debug: b"calm" },
            ),
            (
                Box::new(|o| write_data(o, 1, b"abc", true)),
                Frame::Data { stream: 1, data: b"abc", end_stream: true, flow_len: 3 },
            ),
            (Box::new(write_settings_ack), Frame::Settings { ack: true, params: b"" }),
        ] {
            let mut out = Vec::new();
            write(&mut out);
            assert_eq!(one(&out).unwrap(), want);
        }
    }

    #[test]
    fn a_long_header_block_is_split_into_continuations() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut out = Vec::new();
        write_headers(&mut out, 1, &block, true, MIN_MAX_FRAME_SIZE);
        let mut at = 0;
        let mut got = Vec::new();
        let mut frames = Vec::new();
        while at < out.len() {
            let Framing::Frame(h, n) = frame_at(&out[at..], MIN_MAX_FRAME_SIZE).unwrap() else { panic!() };
            match decode(&h, &out[at + HEADER_LEN..at + n]).unwrap() {
                Frame::Headers { block, end_stream, end_headers, .. } => {
                    assert!(end_stream && !end_headers);
                    got.extend_from_slice(block);
                }
                Frame::Continuation { block, end_headers, .. } => {
                    got.extend_from_slice(block);
                    frames.push(end_headers);
                }
                f => panic!("{f:?}"),
            }
            at += n;
        }
        assert_eq!(got, block);
        assert_eq!(frames, [false, true]);
    }

    #[test]
    fn padding_and_priority_are_removed() {
        // HEADERS, PADDED | PRIORITY | END_HEADERS, pad 2, dependency 0 weight 15, block "xy".
        let payload = [2, 0, 0, 0, 0, 15, b'x', b'y', 0, 0];
        let mut out = Vec::new();
        write_frame(&mut out, kind::HEADERS, flag::PADDED | flag::PRIORITY | flag::END_HEADERS, 3, &payload);
        let Frame::Headers { block, priority, end_headers: true, .. } = one(&out).unwrap() else { panic!() };
        assert_eq!(block, b"xy");
        assert_eq!(priority, Some(Priority { exclusive: false, depends_on: 0, weight: 15 }));
        // DATA padded: the flow-controlled length counts the padding.
        let mut out = Vec::new();
        write_frame(&mut out, kind::DATA, flag::PADDED, 1, &[3, b'a', 0, 0, 0]);
        assert_eq!(one(&out).unwrap(), Frame::Data { stream: 1, data: b"a", end_stream: false, flow_len: 5 });
    }

    #[test]
    fn malformed_frames_are_the_right_errors() {
        let cases: &[(u8, u8, u32, &[u8], H2Error)] = &[
            // Padding longer than the payload.
            (kind::DATA, flag::PADDED, 1, &[5, 0], conn(ErrorCode::PROTOCOL_ERROR)),
            (kind::DATA, flag::PADDED, 1, &[], conn(ErrorCode::FRAME_SIZE_ERROR)),
            (kind::DATA, 0, 0, b"x", conn(ErrorCode::PROTOCOL_ERROR)),
            (kind::HEADERS, 0, 0, b"", conn(ErrorCode::PROTOCOL_ERROR)),
            (kind::HEADERS, flag::PRIORITY, 1, &[0, 0], conn(ErrorCode::FRAME_SIZE_ERROR)),
            (kind::HEADERS, flag::PRIORITY, 3, &[0, 0, 0, 3, 0], conn(ErrorCode::PROTOCOL_ERROR)),
            (kind::PRIORITY, 0, 1, &[0, 0, 0], H2Error::Stream(1, ErrorCode::FRAME_SIZE_ERROR)),
            (kind::RST_STREAM, 0, 1, &[0, 0, 0], conn(ErrorCode::FRAME_SIZE_ERROR)),
            (kind::RST_STREAM, 0, 0, &[0, 0, 0, 0], conn(ErrorCode::PROTOCOL_ERROR)),
            (kind::SETTINGS, 0, 1, &[], conn(ErrorCode::PROTOCOL_ERROR)),
            (kind::SETTINGS, 0, 0, &[0, 1, 0], conn(ErrorCode::FRAME_SIZE_ERROR)),
            (kind::SETTINGS, flag::ACK, 0, &[0, 1, 0, 0, 0, 0], conn(ErrorCode::FRAME_SIZE_ERROR)),
            (kind::PING, 0, 0, &[0; 7], conn(ErrorCode::FRAME_SIZE_ERROR)),
            (kind::PING, 0, 1, &[0; 8], conn(ErrorCode::PROTOCOL_ERROR)),
            (kind::GOAWAY, 0, 0, &[0; 7], conn(ErrorCode::FRAME_SIZE_ERROR)),
            (kind::WINDOW_UPDATE, 0, 0, &[0; 4], conn(ErrorCode::PROTOCOL_ERROR)),
            (kind::WINDOW_UPDATE, 0, 5, &[0; 4], H2Error::Stream(5, ErrorCode::PROTOCOL_ERROR)),
            (kind::WINDOW_UPDATE, 0, 5, &[0; 5], conn(ErrorCode::FRAME_SIZE_ERROR)),
            (kind::CONTINUATION, 0, 0, &[], conn(ErrorCode::PROTOCOL_ERROR)),
        ];
        for &(k, flags, stream, payload, want) in cases {
            let mut out = Vec::new();
            write_frame(&mut out, k, flags, stream, payload);
            assert_eq!(one(&out), Err(want), "type {k} flags {flags} stream {stream} {payload:?}");
        }
    }

    #[test]
    fn framing_waits_for_the_whole_frame_and_refuses_an_oversized_one() {
        let mut out = Vec::new();
        write_data(&mut out, 1, b"hello", false);
        for n in 0..out.len() {
            assert_eq!(frame_at(&out[..n], MIN_MAX_FRAME_SIZE), Ok(Framing::NeedMore));
        }
        let mut big = Vec::new();
        write_header(&mut big, MIN_MAX_FRAME_SIZE as usize + 1, kind::DATA, 0, 1);
        assert_eq!(frame_at(&big, MIN_MAX_FRAME_SIZE), Err(conn(ErrorCode::FRAME_SIZE_ERROR)));
        // The reserved bit of the stream id is ignored.
        let h = FrameHeader::parse(&[0, 0, 0, 0, 0, 0x80, 0, 0, 1]).unwrap();
        assert_eq!(h.stream, 1);
        // Unknown types are kept, to be ignored.
        let mut out = Vec::new();
        write_frame(&mut out, 0xfa, 0, 9, b"??");
        assert_eq!(one(&out).unwrap(), Frame::Unknown { kind: 0xfa, stream: 9 });
    }
}
