//! Request framing and validation (RFC 9112), as pure functions over the bytes buffered on a
//! connection: where the next request ends, and whether it is acceptable at all.
//!
//! [`parse_head`] parses and checks a request head with `httparse`; [`Framer`] is the
//! per-connection progress on the request being received (its parsed head once complete, how far
//! an incomplete head was looked at, the body received so far, whether `100 Continue` went out),
//! so a request arriving in many pieces is not parsed from scratch for every piece.
//!
//! **Limits.** `max_body` bounds the body alone (decoded: chunk framing does not count). The
//! host's max package size bounds one *message* handed to the plugin; a request whose head and
//! body fit in one package is delivered whole (no copy), a longer one is delivered as its head
//! and then pieces of its body, which the framer collects (up to `max_body`). So the host's limit
//! bounds the head (with `max_header`), never the body.

use std::mem::MaybeUninit;
use std::ops::Range;

use crate::chunked::{ChunkError, ChunkScan};
use crate::request::Request;
use crate::response::Status;

/// The most header fields [`Limits::max_headers`] may allow.
pub const MAX_HEADERS_CAP: usize = 1024;

/// Size limits known to the plugin (the host's max package size applies as well, see the module
/// comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line and header fields, final CRLF included (over it: 431, or 414 when the
    /// request line alone is that long).
    pub max_header: usize,
    /// Request body, decoded (over it: 413).
    pub max_body: u64,
    /// Request target (over it: 414).
    pub max_target: usize,
    /// Header fields (over it: 431); at most [`MAX_HEADERS_CAP`].
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_header: 64 * 1024, max_body: 1024 * 1024, max_target: 8 * 1024, max_headers: 100 }
    }
}

/// The request method. Methods registered in RFC 9110 have a variant; any other token is
/// [`Method::Other`] (the static server answers it with 501; an application may accept it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    pub fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "CONNECT" => Method::Connect,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
}

/// A parsed, validated request head. Ranges are byte offsets from the request's first byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Length of the head, final CRLF included: the body starts here.
    pub len: usize,
    pub method: Method,
    /// The method token as sent.
    pub method_name: Range<usize>,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1 (and any later HTTP/1.x, answered as 1.1).
    pub minor: u8,
    /// The client's wish: HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request that has a body.
    pub expect_continue: bool,
    pub body: Body,
}

/// Parses the head at the start of `buf`: `Ok(None)` while incomplete, `Err(status)` when the
/// request must be refused with that status (and the connection closed).
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, Status> {
    match parse_exact(buf, limits) {
        Err(httparse::Error::Version) => match later_minor(buf) {
            // HTTP/1.2 and later 1.x: answered as 1.1 (RFC 9110 §2.5): parsed from a copy whose
            // version says 1.1 (same length, so every offset holds for `buf`).
            Some(at) => {
                let mut copy = buf.to_vec();
                copy[at] = b'1';
                match parse_exact(&copy, limits) {
                    Err(e) => Err(parse_error(&copy, e, limits)),
                    Ok(r) => r,
                }
            }
            None => Err(version_error(buf)),
        },
        Err(e) => Err(parse_error(buf, e, limits)),
        Ok(r) => r,
    }
}

fn parse_exact(buf: &[u8], limits: &Limits) -> Result<Result<Option<RequestHead>, Status>, httparse::Error> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
    let headers = &mut headers[..limits.max_headers.clamp(1, MAX_HEADERS_CAP)];
    let mut req = httparse::Request::new(&mut []);
    Ok(match req.parse_with_uninit_headers(buf, headers)? {
        httparse::Status::Partial if buf.len() > limits.max_header => Err(oversized_head(buf, limits)),
        httparse::Status::Partial => {
            // A request line longer than the target limit is refused before it ends.
            match first_line(buf).len() > limits.max_target + 32 {
                true => Err(Status::URI_TOO_LONG),
                false => Ok(None),
            }
        }
        httparse::Status::Complete(len) if len > limits.max_header => Err(oversized_head(buf, limits)),
        httparse::Status::Complete(len) => check_head(buf, &req, len, limits).map(Some),
    })
}

fn parse_error(buf: &[u8], e: httparse::Error, limits: &Limits) -> Status {
    match e {
        httparse::Error::TooManyHeaders => Status::HEADERS_TOO_LARGE,
        httparse::Error::Version => version_error(buf),
        _ if first_line(buf).len() > limits.max_target + 32 => Status::URI_TOO_LONG,
        _ => Status::BAD_REQUEST,
    }
}

/// 414 when the request line alone is too long, else 431.
fn oversized_head(buf: &[u8], limits: &Limits) -> Status {
    match first_line(buf).len() > limits.max_target {
        true => Status::URI_TOO_LONG,
        false => Status::HEADERS_TOO_LARGE,
    }
}

/// The request line (after the empty lines a client may send first), without its line end.
fn first_line(buf: &[u8]) -> &[u8] {
    let start = buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len());
    let line = &buf[start..];
    &line[..line.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(line.len())]
}

/// Where the minor digit of a well-formed `HTTP/1.N` with N > 1 is, when the request line has one.
fn later_minor(buf: &[u8]) -> Option<usize> {
    let line = first_line(buf);
    let version = line.rsplit(|&b| b == b' ').next()?;
    match version {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit() && *d > b'1' => {
            Some(version.as_ptr() as usize - buf.as_ptr() as usize + 7)
        }
        _ => None,
    }
}

/// httparse refuses every version but 1.0 and 1.1 alike; a well-formed version of another major
/// (`HTTP/2.0`, `HTTP/3`, `HTTP/0.9`) is 505, anything else in its place is 400.
fn version_error(buf: &[u8]) -> Status {
    let line = first_line(buf);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version.strip_prefix(b"HTTP/") {
        Some([major, b'.', minor]) if major.is_ascii_digit() && minor.is_ascii_digit() && *major != b'1' => {
            Status::VERSION_NOT_SUPPORTED
        }
        Some([major]) if major.is_ascii_digit() && *major != b'1' => Status::VERSION_NOT_SUPPORTED,
        _ => Status::BAD_REQUEST,
    }
}

fn check_head(buf: &[u8], req: &httparse::Request<'_, '_>, len: usize, limits: &Limits) -> Result<RequestHead, Status> {
    let bad = Err(Status::BAD_REQUEST);
    let method_name = req.method.unwrap_or_default();
    let method = Method::from_token(method_name);
    let path = req.path.unwrap_or_default().as_bytes();
    if path.len() > limits.max_target {
        return Err(Status::URI_TOO_LONG);
    }
    let minor = req.version.unwrap_or(1);
    let (mut hosts, mut length) = (0u32, None::<u64>);
    let (mut chunked, mut other_coding, mut chunked_last, mut has_te) = (0u32, false, false, false);
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    for h in req.headers.iter() {
        if h.value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return bad;
        }
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            if !valid_host(h.value) {
                return bad;
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // One field, one value: a second `Content-Length` line is refused like a list
            // (`5, 5`, which `parse_length` refuses), even with the same value.
            if length.is_some() {
                return bad;
            }
            length = Some(parse_length(h.value).ok_or(Status::BAD_REQUEST)?);
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
            return Err(Status::NOT_IMPLEMENTED);
        }
        if chunked != 1 || !chunked_last {
            return bad;
        }
        Body::Chunked
    } else {
        match length {
            Some(n) if n > limits.max_body => return Err(Status::CONTENT_TOO_LARGE),
            Some(n) if n > 0 => Body::Length(n),
            _ => Body::None,
        }
    };
    Ok(RequestHead {
        len,
        method,
        method_name: offset_in(buf, method_name.as_bytes()),
        target: offset_in(buf, path),
        minor,
        keep_alive: !close && (minor == 1 || keep_alive),
        expect_continue: expect_continue && minor == 1 && body != Body::None,
        body,
    })
}

/// The bytes a reg-name (RFC 3986) may hold: unreserved, sub-delims and `%` (one lookup a byte:
/// this runs for every request).
const HOST_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let extra = b"-._~!$&'()*+,;=%";
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
};

/// A `Host` value (RFC 9112 §3.2, RFC 3986 §3.2.2): empty, or `uri-host [":" port]` where the
/// host is a reg-name, an IPv4 address or a bracketed IP literal and the port is at most 65535.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.first() {
        Some(b'[') => match value.iter().position(|&b| b == b']') {
            Some(end) => {
                let literal = &value[1..end];
                let ok = !literal.is_empty()
                    && literal
                        .iter()
                        .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.' || b == b'v' || b == b'V');
                if !ok {
                    return false;
                }
                match &value[end + 1..] {
                    [] => return true,
                    [b':', port @ ..] => (&value[..0], Some(port)),
                    _ => return false,
                }
            }
            None => return false,
        },
        _ => match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], Some(&value[i + 1..])),
            None => (value, None),
        },
    };
    let host_ok = host.iter().all(|&b| HOST_BYTES[b as usize]);
    let port_ok = match port {
        None => true,
        Some(p) => p.len() <= 5 && p.iter().all(u8::is_ascii_digit) && parse_length(p).is_none_or(|n| n <= 65535),
    };
    host_ok && port_ok
}

/// Where the request at the start of `buf` ends, its body included (still chunk-coded): for a
/// caller that takes a request whole as one message, as the `proxy` plugin does. `Ok(None)`
/// while that is not known yet; a length is known as soon as the head is, before the body is
/// all there. Refused as [`parse_head`] refuses (and 400 for malformed chunked coding).
pub fn request_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, Status> {
    let Some(head) = parse_head(buf, limits)? else { return Ok(None) };
    match head.body {
        Body::None => Ok(Some(head.len)),
        Body::Length(n) => {
            let total = usize::try_from(n).ok().and_then(|n| n.checked_add(head.len));
            total.map(Some).ok_or(Status::CONTENT_TOO_LARGE)
        }
        Body::Chunked => {
            let body = &buf[head.len..];
            Ok(ChunkScan::default().advance(body, limits.max_body, None).map_err(chunk_status)?.map(|n| head.len + n))
        }
    }
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
pub(crate) fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|s| s.trim_ascii()).filter(|s| !s.is_empty())
}

/// Where `part` (a subslice of `buf`) lies in `buf`.
pub(crate) fn offset_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    start..start + part.len()
}

/// What [`Framer::frame`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framed {
    /// The length of the next message once known (it may not all be buffered yet): the whole
    /// request, or, for a body received in pieces, the part of `buf` consumed now.
    pub len: Option<usize>,
    /// Send `100 Continue` now (at most once per request).
    pub send_continue: bool,
}

/// A body being received in pieces (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piecewise {
    /// Bytes still to come.
    Length(u64),
    Chunked,
    /// Complete: the next message delivered ends the request.
    Done,
}

/// Framing progress on the request being received on one connection.
#[derive(Debug, Default, Clone)]
pub struct Framer {
    head: Option<RequestHead>,
    /// Bytes of an incomplete head already looked at.
    seen: usize,
    chunks: ChunkScan,
    continue_sent: bool,
    piecewise: Option<Piecewise>,
    /// The head of a request whose body comes in pieces.
    head_bytes: Vec<u8>,
    /// The body received in pieces, or a decoded chunked body.
    body: Vec<u8>,
}

/// Buffers grown past this by a large body are given back after the request.
const RETAIN_BUFFER: usize = 256 * 1024;

impl Framer {
    /// Looks at the bytes buffered for the request. `buf` starts at the first byte not yet
    /// delivered; until a message is delivered it only grows between calls. `max_message` is
    /// the host's max package size.
    ///
    /// Every byte of a returned length is consumed when it is delivered: the caller must hand
    /// that message to [`Framer::take_request`] before calling this again.
    pub fn frame(&mut self, buf: &[u8], limits: &Limits, max_message: usize) -> Result<Framed, Status> {
        let need_more = Framed { len: None, send_continue: false };
        if let Some(piecewise) = self.piecewise {
            let n = self.absorb(piecewise, &buf[..buf.len().min(max_message)], limits)?;
            return Ok(Framed { len: (n > 0).then_some(n), send_continue: false });
        }
        if self.head.is_none() {
            // An incomplete head is parsed again only when a line ended since the last look:
            // a head trickling in byte by byte costs one parse per line, not one per byte.
            let fresh = buf.get(self.seen..).unwrap_or_default();
            let parse = self.seen == 0 || fresh.contains(&b'\n');
            self.seen = buf.len();
            if !parse {
                return match buf.len() > limits.max_header {
                    true => Err(oversized_head(buf, limits)),
                    false => Ok(need_more),
                };
            }
            match parse_head(buf, limits)? {
                // The host delivers nothing longer than a message: not even a head.
                Some(head) if head.len > max_message => return Err(Status::HEADERS_TOO_LARGE),
                Some(head) => self.head = Some(head),
                None => return Ok(need_more),
            }
        }
        let Some(head) = &self.head else {
            return Ok(need_more);
        };
        let head_len = head.len;
        let expect_continue = head.expect_continue && !self.continue_sent;
        let (len, complete) = match head.body {
            Body::None => (head_len, true),
            Body::Length(n) => {
                let total = usize::try_from(n).ok().and_then(|n| n.checked_add(head_len));
                match total {
                    Some(total) if total <= max_message => (total, total <= buf.len()),
                    // All of it may be buffered already: no `100 Continue` then.
                    _ => {
                        let buffered = total.is_some_and(|t| t <= buf.len());
                        (self.start_pieces(buf, Piecewise::Length(n), limits, max_message)?, buffered)
                    }
                }
            }
            Body::Chunked => {
                self.body.clear();
                self.chunks = ChunkScan::default();
                let body = buf.get(head_len..).unwrap_or_default();
                let body = &body[..body.len().min(max_message.saturating_sub(head_len))];
                match self.chunks.feed(body, limits.max_body, Some(&mut self.body)).map_err(chunk_status)? {
                    (n, true) => (head_len + n, true),
                    (n, false) => {
                        (self.start_pieces(&buf[..head_len + n], Piecewise::Chunked, limits, max_message)?, false)
                    }
                }
            }
        };
        let send_continue = expect_continue && !complete;
        self.continue_sent |= send_continue;
        Ok(Framed { len: Some(len), send_continue })
    }

    /// Switches to receiving the body in pieces: keeps a copy of the head and takes what follows
    /// it in `buf`. Returns the length of the first message (the head and that part).
    fn start_pieces(
        &mut self,
        buf: &[u8],
        piecewise: Piecewise,
        limits: &Limits,
        max_message: usize,
    ) -> Result<usize, Status> {
        let head_len = self.head.as_ref().map_or(0, |h| h.len);
        self.head_bytes.clear();
        self.head_bytes.extend_from_slice(&buf[..head_len]);
        self.piecewise = Some(piecewise);
        if piecewise == Piecewise::Chunked {
            // `frame` already decoded what followed the head (all of `buf`).
            return Ok(buf.len());
        }
        self.body.clear();
        let rest = &buf[head_len..];
        Ok(head_len + self.absorb(piecewise, &rest[..rest.len().min(max_message.saturating_sub(head_len))], limits)?)
    }

    /// Takes the next piece of a body received in pieces; returns the bytes of `buf` it used.
    fn absorb(&mut self, piecewise: Piecewise, buf: &[u8], limits: &Limits) -> Result<usize, Status> {
        match piecewise {
            Piecewise::Length(rest) => {
                let take = usize::try_from(rest).unwrap_or(usize::MAX).min(buf.len());
                self.body.extend_from_slice(&buf[..take]);
                let rest = rest - take as u64;
                self.piecewise = Some(if rest == 0 { Piecewise::Done } else { Piecewise::Length(rest) });
                Ok(take)
            }
            Piecewise::Chunked => {
                let (n, done) = self.chunks.feed(buf, limits.max_body, Some(&mut self.body)).map_err(chunk_status)?;
                if done {
                    self.piecewise = Some(Piecewise::Done);
                }
                Ok(n)
            }
            Piecewise::Done => Ok(0),
        }
    }

    /// What a hand-over keeps of the framing progress: whether `100 Continue` went out for the
    /// request being received (its bytes stay in the host's buffer and are framed again). None
    /// while a body is received in pieces: those bytes are held here, and the connection stays.
    pub fn handover_state(&self) -> Option<bool> {
        self.piecewise.is_none().then_some(self.continue_sent)
    }

    /// A framer for a connection handed over with [`Framer::handover_state`]'s answer.
    pub fn adopted(continue_sent: bool) -> Framer {
        Framer { continue_sent, ..Framer::default() }
    }

    /// True once the head of the request being received is complete (a size error is then
    /// about the body: 413, not 431).
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// The request, once `msg` (the message just delivered) completes it; `None` for a piece of
    /// a body that goes on. After answering it, call [`Framer::finish`].
    pub fn take_request<'a>(&'a mut self, msg: &'a [u8], limits: &Limits) -> Result<Option<Request<'a>>, Status> {
        if self.head.is_none() {
            // Delivered without `frame`: a whole request whose length the framer of the worker
            // that handed the connection over found (the host keeps that length), or a caller
            // that frames by itself. Parsed here.
            let head = parse_head(msg, limits)?.ok_or(Status::BAD_REQUEST)?;
            if head.body == Body::Chunked {
                self.body.clear();
                self.chunks = ChunkScan::default();
                let body = msg.get(head.len..).unwrap_or_default();
                if !self.chunks.feed(body, limits.max_body, Some(&mut self.body)).map_err(chunk_status)?.1 {
                    return Err(Status::BAD_REQUEST);
                }
            }
            self.head = Some(head);
        }
        let Some(head) = &self.head else { return Err(Status::BAD_REQUEST) };
        Ok(match (self.piecewise, head.body) {
            (Some(Piecewise::Done), _) => Some(Request::new(head, &self.head_bytes, &self.body)),
            (Some(_), _) => None,
            (None, Body::None) => Some(Request::new(head, &msg[..head.len], &[])),
            (None, Body::Length(n)) => {
                let end = msg.len().min(head.len.saturating_add(usize::try_from(n).unwrap_or(usize::MAX)));
                Some(Request::new(head, &msg[..head.len], &msg[head.len..end]))
            }
            (None, Body::Chunked) => Some(Request::new(head, &msg[..head.len], &self.body)),
        })
    }

    /// The request was answered: gets ready for the next one.
    pub fn finish(&mut self) {
        self.head = None;
        self.seen = 0;
        self.chunks = ChunkScan::default();
        self.continue_sent = false;
        self.piecewise = None;
        for buf in [&mut self.head_bytes, &mut self.body] {
            buf.clear();
            if buf.capacity() > RETAIN_BUFFER {
                *buf = Vec::new();
            }
        }
    }
}

fn chunk_status(e: ChunkError) -> Status {
    match e {
        ChunkError::Malformed => Status::BAD_REQUEST,
        ChunkError::TooLarge => Status::CONTENT_TOO_LARGE,
    }
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
