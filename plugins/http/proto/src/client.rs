//! The other direction: responses as a client reads them (the `proxy` plugin reading its
//! upstream), with the same framing rules as the requests a server reads ([`crate::parse`]), so
//! a proxy and its upstream cannot disagree about where a message ends.
//!
//! [`parse_response_head`] parses and checks a status line and header fields; [`BodyScan`]
//! follows the body as it streams by, a piece at a time (RFC 9112 §6.3):
//! - no body after `1xx`, `204`, `304` or a response to `HEAD`;
//! - `Transfer-Encoding` whose last coding is `chunked`: chunked ([`crate::chunked`], strict:
//!   CRLF line ends, hex sizes that fit in 64 bits);
//! - else one `Content-Length`;
//! - else the body runs until the server closes (and the connection cannot be reused).
//!
//! Refused as [`ResponseError::Malformed`], as for requests: `Transfer-Encoding` and
//! `Content-Length` together, `Transfer-Encoding` in an HTTP/1.0 response or without `chunked`
//! last (or with it twice), a second `Content-Length` (even an identical one) or a list in one,
//! a length that is not 1*DIGIT, a CR, LF or NUL inside a field value, a status outside 100-999.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::chunked::{ChunkError, ChunkScan};
use crate::parse::{parse_length, Limits, MAX_HEADERS_CAP};

/// Why a response head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// Not HTTP/1.x, a bad field, or ambiguous framing (the rules in the module comment).
    Malformed,
    /// The head is longer than `max_header`, or has more than `max_headers` fields.
    TooLarge,
}

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBody {
    None,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A parsed, validated response head. Ranges are byte offsets from the response's first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Length of the head, final CRLF included: the body starts here.
    pub len: usize,
    pub status: u16,
    /// The reason phrase as sent (may be empty).
    pub reason: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub body: ResponseBody,
    /// The server keeps the connection open after this response (HTTP/1.1 unless
    /// `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`; never when the body
    /// runs until the close).
    pub keep_alive: bool,
}

impl ResponseHead {
    /// A `1xx` response: another response follows for the same request.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// Parses the response head at the start of `buf`, the answer to a request that was a `HEAD`
/// when `head_request`: `Ok(None)` while incomplete. Of `limits`, `max_header` and
/// `max_headers` apply.
pub fn parse_response_head(
    buf: &[u8],
    head_request: bool,
    limits: &Limits,
) -> Result<Option<ResponseHead>, ResponseError> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let headers = &mut headers[..limits.max_headers.clamp(1, MAX_HEADERS_CAP)];
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, buf, headers) {
        Ok(httparse::Status::Partial) if buf.len() > limits.max_header => return Err(ResponseError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) if len > limits.max_header => return Err(ResponseError::TooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed),
    };
    check_head(buf, &resp, len, head_request).map(Some)
}

fn check_head(
    buf: &[u8],
    resp: &httparse::Response<'_, '_>,
    len: usize,
    head_request: bool,
) -> Result<ResponseHead, ResponseError> {
    let bad = Err(ResponseError::Malformed);
    let status = resp.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return bad;
    }
    let minor = resp.version.unwrap_or(1);
    let mut length = None::<u64>;
    let (mut chunked, mut chunked_last, mut has_te) = (0u32, false, false);
    let (mut close, mut keep_alive) = (false, false);
    for h in resp.headers.iter() {
        if h.value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return bad;
        }
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // One field with one value, as for requests (`parse::parse_head`).
            if length.is_some() {
                return bad;
            }
            length = Some(parse_length(h.value).ok_or(ResponseError::Malformed)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
            for coding in crate::parse::list(h.value) {
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                chunked += u32::from(chunked_last);
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in crate::parse::list(h.value) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    if has_te && (length.is_some() || minor == 0 || chunked != 1 || !chunked_last) {
        // Both framings at once is how responses are split; chunked must be the last coding
        // (a body that cannot be framed is refused rather than read until the close).
        return bad;
    }
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        ResponseBody::None
    } else if has_te {
        ResponseBody::Chunked
    } else {
        match length {
            Some(0) => ResponseBody::None,
            Some(n) => ResponseBody::Length(n),
            None => ResponseBody::UntilClose,
        }
    };
    let reason = resp.reason.unwrap_or_default();
    let reason = match reason.is_empty() {
        // httparse gives an empty reason as a slice of its own: point at the line's end.
        true => len..len,
        false => crate::parse::offset_in(buf, reason.as_bytes()),
    };
    let persistent = if minor == 1 { !close } else { keep_alive && !close };
    Ok(ResponseHead { len, status, reason, minor, body, keep_alive: persistent && body != ResponseBody::UntilClose })
}

/// Progress through a response body as it streams by, a piece at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyScan {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(ChunkScan),
    /// Every byte until the close.
    UntilClose,
    /// The body ended.
    Done,
}

impl BodyScan {
    pub fn new(body: ResponseBody) -> BodyScan {
        match body {
            ResponseBody::None | ResponseBody::Length(0) => BodyScan::Done,
            ResponseBody::Length(n) => BodyScan::Length(n),
            ResponseBody::Chunked => BodyScan::Chunked(ChunkScan::default()),
            ResponseBody::UntilClose => BodyScan::UntilClose,
        }
    }

    /// Takes `piece`, the next bytes after those of the previous call: how many of them belong
    /// to the body, and whether the body ended with them (the rest is not looked at).
    pub fn feed(&mut self, piece: &[u8]) -> Result<(usize, bool), ChunkError> {
        let (n, done) = match self {
            BodyScan::Done => (0, true),
            BodyScan::UntilClose => (piece.len(), false),
            BodyScan::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(piece.len());
                *left -= take as u64;
                (take, *left == 0)
            }
            BodyScan::Chunked(scan) => scan.feed(piece, u64::MAX, None)?,
        };
        if done {
            *self = BodyScan::Done;
        }
        Ok((n, done))
    }

    pub fn is_done(&self) -> bool {
        *self == BodyScan::Done
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
