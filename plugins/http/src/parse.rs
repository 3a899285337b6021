//! Request framing and validation (RFC 9112), as pure functions over the bytes buffered on a
//! connection: where the next request ends, and whether it is acceptable at all.
//!
//! [`parse_head`] parses and checks a request head with `httparse`; [`Framer`] is the
//! per-connection progress on the request being received (its parsed head once complete, how far
//! an incomplete head was looked at, the chunked-body scan, whether `100 Continue` went out), so a
//! request arriving in many pieces is not parsed from scratch for every piece.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::chunked::{ChunkError, ChunkScan};
use crate::response::Status;

/// Header fields accepted in one request; more is answered with 431.
pub const MAX_HEADERS: usize = 64;

/// Size limits known to the plugin (the host's max package size applies as well).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line and header fields, final CRLF included (over it: 431).
    pub max_header: usize,
    /// Request body, decoded (over it: 413).
    pub max_body: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Options,
    Other,
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// A parsed, validated request head. Ranges are byte offsets into the request, which is the
/// same buffer in `input` and `on_message` (both start at the request's first byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Length of the head, final CRLF included: the body starts here.
    pub len: usize,
    pub method: Method,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The client's wish: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request that has a body.
    pub expect_continue: bool,
    pub body: Body,
    pub if_modified_since: Option<Range<usize>>,
}

/// Parses the head at the start of `buf`: `Ok(None)` while incomplete, `Err(status)` when the
/// request must be refused with that status (and the connection closed).
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, Status> {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Partial) if buf.len() > limits.max_header => Err(Status::HeadersTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) if len > limits.max_header => Err(Status::HeadersTooLarge),
        Ok(httparse::Status::Complete(len)) => check_head(buf, &req, len, limits).map(Some),
        Err(httparse::Error::TooManyHeaders) => Err(Status::HeadersTooLarge),
        Err(httparse::Error::Version) => Err(version_error(buf)),
        Err(_) => Err(Status::BadRequest),
    }
}

/// httparse refuses every version but 1.0 and 1.1 alike; a well-formed other version
/// (`HTTP/2.0`, `HTTP/1.2`, `HTTP/3`) is 505, anything else in its place is 400.
fn version_error(buf: &[u8]) -> Status {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(0);
    let line = &buf[start..];
    let line = &line[..line.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(line.len())];
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version.strip_prefix(b"HTTP/") {
        Some(rest)
            if rest.first().is_some_and(u8::is_ascii_digit)
                && rest.iter().all(|&b| b.is_ascii_digit() || b == b'.') =>
        {
            Status::VersionNotSupported
        }
        _ => Status::BadRequest,
    }
}

fn check_head(buf: &[u8], req: &httparse::Request<'_, '_>, len: usize, limits: &Limits) -> Result<RequestHead, Status> {
    let bad = Err(Status::BadRequest);
    let method = match req.method.unwrap_or_default() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let path = req.path.unwrap_or_default().as_bytes();
    let minor = req.version.unwrap_or(1);
    let (mut hosts, mut length, mut ims) = (0u32, None::<u64>, None);
    let (mut chunked, mut other_coding, mut chunked_last, mut has_te) = (0u32, false, false, false);
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    for h in req.headers.iter() {
        if h.value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return bad;
        }
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_length(h.value).ok_or(Status::BadRequest)?;
            if length.is_some_and(|prev| prev != n) {
                return bad;
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
            for coding in list(h.value) {
                chunked_last = coding.eq_ignore_ascii_case(b"chunked");
                if chunked_last {
                    chunked += 1;
                } else {
                    other_coding = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            for option in list(h.value) {
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            // Other expectations are ignored (RFC 9110 §10.1.1 allows 417, not requires it).
            expect_continue |= h.value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"if-modified-since") {
            ims = Some(offset_in(buf, h.value));
        }
    }
    // RFC 9112 §3.2: exactly one Host in HTTP/1.1; never two.
    if hosts > 1 || (minor == 1 && hosts == 0) {
        return bad;
    }
    let body = if has_te {
        // Both framings at once is how requests are smuggled: refused rather than "TE wins".
        // Transfer-Encoding in HTTP/1.0 is faulty framing (RFC 9112 §6.1).
        if length.is_some() || minor == 0 {
            return bad;
        }
        if other_coding {
            return Err(Status::NotImplemented);
        }
        if chunked != 1 || !chunked_last {
            return bad;
        }
        Body::Chunked
    } else {
        match length {
            Some(n) if n > limits.max_body => return Err(Status::ContentTooLarge),
            Some(n) if n > 0 => Body::Length(n),
            _ => Body::None,
        }
    };
    Ok(RequestHead {
        len,
        method,
        target: offset_in(buf, path),
        minor,
        keep_alive: !close && (minor == 1 || keep_alive),
        expect_continue: expect_continue && minor == 1 && body != Body::None,
        body,
        if_modified_since: ims,
    })
}

/// A `Content-Length` value: 1*DIGIT and nothing else (no sign, no list, no overflow).
pub fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// The non-empty elements of a comma-separated field value, trimmed.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|s| s.trim_ascii()).filter(|s| !s.is_empty())
}

/// Where `part` (a subslice of `buf`) lies in `buf`.
fn offset_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    start..start + part.len()
}

/// What [`Framer::frame`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    /// The request's total length once known (it may not all be buffered yet).
    pub len: Option<usize>,
    /// Send `100 Continue` now (at most once per request).
    pub send_continue: bool,
}

/// Framing progress on the request being received on one connection.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    head: Option<RequestHead>,
    /// Bytes of an incomplete head already looked at.
    seen: usize,
    chunks: ChunkScan,
    continue_sent: bool,
}

impl Framer {
    /// Looks at the bytes buffered for the request (`buf` starts at its first byte and only
    /// grows between calls until [`Framer::finish`]).
    pub fn frame(&mut self, buf: &[u8], limits: &Limits) -> Result<Framed, Status> {
        let need_more = Framed { len: None, send_continue: false };
        if self.head.is_none() {
            // An incomplete head is parsed again only when a line ended since the last look:
            // a head trickling in byte by byte costs one parse per line, not one per byte.
            let fresh = buf.get(self.seen..).unwrap_or_default();
            let parse = self.seen == 0 || fresh.contains(&b'\n');
            self.seen = buf.len();
            if !parse {
                return match buf.len() > limits.max_header {
                    true => Err(Status::HeadersTooLarge),
                    false => Ok(need_more),
                };
            }
            match parse_head(buf, limits)? {
                Some(head) => self.head = Some(head),
                None => return Ok(need_more),
            }
        }
        let Some(head) = &self.head else {
            return Ok(need_more);
        };
        let (len, complete) = match head.body {
            Body::None => (Some(head.len), true),
            Body::Length(n) => {
                let len =
                    usize::try_from(n).ok().and_then(|n| n.checked_add(head.len)).ok_or(Status::ContentTooLarge)?;
                (Some(len), buf.len() >= len)
            }
            Body::Chunked => {
                let body = buf.get(head.len..).unwrap_or_default();
                match self.chunks.advance(body, limits.max_body, None) {
                    Ok(Some(n)) => (Some(head.len + n), true),
                    Ok(None) => (None, false),
                    Err(ChunkError::Malformed) => return Err(Status::BadRequest),
                    Err(ChunkError::TooLarge) => return Err(Status::ContentTooLarge),
                }
            }
        };
        let send_continue = head.expect_continue && !complete && !self.continue_sent;
        self.continue_sent |= send_continue;
        Ok(Framed { len, send_continue })
    }

    /// True once the head of the request being received is complete (a size error is then
    /// about the body: 413, not 431).
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// The request was delivered: returns its head and gets ready for the next request.
    pub fn finish(&mut self) -> Option<RequestHead> {
        let head = self.head.take();
        self.seen = 0;
        self.chunks = ChunkScan::default();
        self.continue_sent = false;
        head
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
