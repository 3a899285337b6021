//! RFC 6455 framing: the frame header parser, masking, the encoder, and close payloads.
//!
//! Parsing works on the bytes buffered so far and never copies: [`parse_header`] says how long
//! the frame is (or that more bytes are needed, or which protocol rule it breaks), and the
//! payload is unmasked in place or into a buffer the caller owns ([`apply_mask`]).

use std::fmt;

/// A frame's opcode (RFC 6455 section 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    /// The opcode for the low nibble `n`; None for the reserved values.
    pub fn from_u8(n: u8) -> Option<OpCode> {
        Some(match n {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, ping and pong: at most 125 bytes, never fragmented, allowed between fragments.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// The largest payload of a control frame.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_HEADER_LEN: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1: the message is compressed (only where permessage-deflate was negotiated).
    pub rsv1: bool,
    pub opcode: OpCode,
    /// The masking key (every client frame has one).
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes before the payload (2 to 14).
    pub header_len: usize,
}

impl FrameHeader {
    /// Header and payload, or None when that does not fit in a `usize`.
    pub fn frame_len(&self) -> Option<usize> {
        usize::try_from(self.payload_len).ok()?.checked_add(self.header_len)
    }
}

/// A rule of RFC 6455 broken by a frame, with the close code it calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// RSV1-3 set while no extension was negotiated.
    ReservedBits,
    /// Opcode 3-7 or B-F.
    ReservedOpcode(u8),
    /// A control frame with a payload over 125 bytes.
    ControlTooLong,
    /// A control frame without FIN.
    ControlFragmented,
    /// A 64-bit length with its most significant bit set.
    LengthTooLarge,
    /// A client frame without a mask.
    Unmasked,
    /// A continuation frame with no message in progress.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// A close payload of 1 byte, or with a code that may not be sent.
    BadClosePayload,
    /// Text that is not UTF-8 (a message or a close reason).
    InvalidUtf8,
    /// A frame or message over the size limit.
    TooBig,
    /// A compressed message that does not inflate (permessage-deflate).
    BadCompression,
}

impl ProtocolError {
    /// The close code to fail the connection with.
    pub fn close_code(self) -> u16 {
        match self {
            ProtocolError::InvalidUtf8 | ProtocolError::BadCompression => close_code::INVALID_PAYLOAD,
            ProtocolError::TooBig => close_code::TOO_BIG,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedBits => f.write_str("reserved bits set"),
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::ControlTooLong => f.write_str("control frame over 125 bytes"),
            ProtocolError::ControlFragmented => f.write_str("fragmented control frame"),
            ProtocolError::LengthTooLarge => f.write_str("64-bit length with the high bit set"),
            ProtocolError::Unmasked => f.write_str("unmasked client frame"),
            ProtocolError::UnexpectedContinuation => f.write_str("continuation without a message"),
            ProtocolError::ExpectedContinuation => f.write_str("new message inside a fragmented one"),
            ProtocolError::BadClosePayload => f.write_str("invalid close payload"),
            ProtocolError::InvalidUtf8 => f.write_str("invalid UTF-8"),
            ProtocolError::TooBig => f.write_str("message over the size limit"),
            ProtocolError::BadCompression => f.write_str("compressed data that does not inflate"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// Close status codes (RFC 6455 section 7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;

    /// May a peer send this code in a close frame? 1000-1003, 1007-1011 (1012-1014 are
    /// registered since), and 3000-4999 for libraries and applications.
    pub fn is_valid(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Parses the header at the start of `buf`: `Ok(None)` when it is not all there yet. Checks
/// every rule the header alone shows (reserved bits and opcodes, control frame length and FIN,
/// the 64-bit length's high bit); masking is the caller's rule (clients mask, servers do not).
pub fn parse_header(buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
    parse_header_ext(buf, false)
}

/// [`parse_header`], where RSV1 may be set (`rsv1_allowed`: permessage-deflate was negotiated)
/// on the first frame of a text or binary message; RSV2 and RSV3 never.
pub fn parse_header_ext(buf: &[u8], rsv1_allowed: bool) -> Result<Option<FrameHeader>, ProtocolError> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    let rsv1 = b0 & 0x40 != 0;
    let first_data = matches!(b0 & 0x0F, 0x1 | 0x2);
    if b0 & 0x30 != 0 || (rsv1 && !(rsv1_allowed && first_data)) {
        return Err(ProtocolError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = OpCode::from_u8(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    let short = b1 & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolError::ControlFragmented);
        }
        if short as usize > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolError::ControlTooLong);
        }
    }
    let (payload_len, mut pos) = match short {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let len = u64::from_be_bytes(b.try_into().expect("8 bytes"));
                if len >> 63 != 0 {
                    return Err(ProtocolError::LengthTooLarge);
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        match buf.get(pos..pos + 4) {
            Some(k) => {
                pos += 4;
                Some([k[0], k[1], k[2], k[3]])
            }
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some(FrameHeader { fin, rsv1, opcode, mask, payload_len, header_len: pos }))
}

/// XORs `data` with `key`, where `data` starts `offset` bytes into the payload (so a payload can
/// be unmasked piece by piece). Eight bytes at a time.
pub fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut k8 = [0u8; 8];
    for (i, k) in k8.iter_mut().enumerate() {
        *k = key[(offset + i) % 4];
    }
    let word = u64::from_ne_bytes(k8);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let w = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ word;
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    // 8 is a multiple of 4: the rest starts at key phase `offset` again.
    for (b, k) in chunks.into_remainder().iter_mut().zip(k8) {
        *b ^= k;
    }
}

/// Writes the header of an unmasked (server) frame into `out`; returns its length (2, 4 or 10).
pub fn encode_header(out: &mut [u8; MAX_HEADER_LEN], fin: bool, opcode: OpCode, payload_len: usize) -> usize {
    out[0] = if fin { 0x80 } else { 0 } | opcode.as_u8();
    match payload_len {
        0..=125 => {
            out[1] = payload_len as u8;
            2
        }
        126..=0xFFFF => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        }
    }
}

/// Appends one complete unmasked frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, fin: bool, opcode: OpCode, payload: &[u8]) {
    write_frame_rsv1(out, fin, false, opcode, payload);
}

/// [`write_frame`] with RSV1 (`compressed`: a permessage-deflate message's first frame).
pub fn write_frame_rsv1(out: &mut Vec<u8>, fin: bool, compressed: bool, opcode: OpCode, payload: &[u8]) {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut head, fin, opcode, payload.len());
    if compressed {
        head[0] |= 0x40;
    }
    out.reserve(n + payload.len());
    out.extend_from_slice(&head[..n]);
    out.extend_from_slice(payload);
}

/// Appends a close frame with `code` and `reason` (cut to fit 125 bytes at a char boundary).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    write_frame(out, true, OpCode::Close, &payload[..2 + end]);
}

/// The status code and reason of a received close payload (unmasked); `Ok(None)` for an empty
/// one. A 1-byte payload or a code that may not be sent is a protocol error; a reason that is
/// not UTF-8 is invalid data.
pub fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::BadClosePayload),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code::is_valid(code) {
                return Err(ProtocolError::BadClosePayload);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}
