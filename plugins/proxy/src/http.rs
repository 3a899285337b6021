//! HTTP/1.1 framing for the proxy, on `httparse`: where a request ends, how a response body is
//! delimited (scanned as it streams through), and the heads rewritten for the other side
//! (hop-by-hop fields dropped, `X-Forwarded-For` appended, `Connection: close` when closing).
//!
//! (The `http` plugin's parser frames requests only, and that crate exports a plugin of its own,
//! so the proxy carries this small framing itself.)

use std::mem::MaybeUninit;

/// Header fields accepted in one head.
pub const MAX_HEADERS: usize = 64;

/// Why a request or response cannot be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Not HTTP/1.x, a bad field, a bad length, or conflicting framing.
    Bad,
    /// The head is longer than allowed.
    TooLarge,
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    /// Response only: until the upstream closes.
    UntilClose,
}

/// A request head, as the proxy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head_len: usize,
    pub body: Body,
    pub head_method: bool,
    /// The client keeps the connection open after this request.
    pub keep_alive: bool,
}

/// A response head, as the proxy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub head_len: usize,
    pub status: u16,
    pub body: Body,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
}

/// The fields that concern one connection only (RFC 9110 7.6.1), never forwarded.
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// What `Connection`, `Transfer-Encoding` and `Content-Length` say.
struct Framing {
    close: bool,
    keep_alive: bool,
    chunked: bool,
    length: Option<u64>,
}

fn framing(headers: &[httparse::Header<'_>]) -> Result<Framing, Malformed> {
    let mut f = Framing { close: false, keep_alive: false, chunked: false, length: None };
    let mut other_coding = false;
    for h in headers {
        if h.value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(Malformed::Bad);
        }
        let value = std::str::from_utf8(h.value).map_err(|_| Malformed::Bad)?;
        if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                f.close |= token.eq_ignore_ascii_case("close");
                f.keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                // Chunked must be the last coding; anything after it cannot be framed.
                other_coding = !coding.eq_ignore_ascii_case("chunked");
                f.chunked |= !other_coding;
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = parse_length(value).ok_or(Malformed::Bad)?;
            if f.length.is_some_and(|prev| prev != n) {
                return Err(Malformed::Bad);
            }
            f.length = Some(n);
        }
    }
    if other_coding || (f.chunked && f.length.is_some()) {
        return Err(Malformed::Bad);
    }
    Ok(f)
}

fn parse_length(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// Parses the request head at the start of `buf`: `Ok(None)` while incomplete.
pub fn parse_request(buf: &[u8], max_header: usize) -> Result<Option<Request>, Malformed> {
    let mut headers = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Partial) if buf.len() > max_header => return Err(Malformed::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) if len > max_header => return Err(Malformed::TooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed::TooLarge),
        Err(_) => return Err(Malformed::Bad),
    };
    let f = framing(req.headers)?;
    let minor = req.version.unwrap_or(1);
    let body = match (f.chunked, f.length) {
        (true, _) => Body::Chunked,
        (false, Some(0) | None) => Body::None,
        (false, Some(n)) => Body::Length(n),
    };
    Ok(Some(Request {
        head_len,
        body,
        head_method: req.method == Some("HEAD"),
        keep_alive: if minor == 1 { !f.close } else { f.keep_alive && !f.close },
    }))
}

/// Where the request at the start of `buf` ends: `Ok(None)` while that is not known yet.
pub fn request_len(buf: &[u8], max_header: usize) -> Result<Option<usize>, Malformed> {
    let Some(req) = parse_request(buf, max_header)? else { return Ok(None) };
    match req.body {
        Body::None | Body::UntilClose => Ok(Some(req.head_len)),
        Body::Length(n) => {
            usize::try_from(n).ok().and_then(|n| n.checked_add(req.head_len)).map(Some).ok_or(Malformed::TooLarge)
        }
        Body::Chunked => {
            let mut scan = Chunked::default();
            let body = &buf[req.head_len..];
            match scan.advance(body)? {
                (n, true) => Ok(Some(req.head_len + n)),
                (_, false) => Ok(None),
            }
        }
    }
}

/// Writes the request `raw` (head and body) for the upstream: HTTP/1.1, hop-by-hop fields
/// dropped, `X-Forwarded-For` extended with `client`, a `Host` when the client sent none.
pub fn write_request(raw: &[u8], req: &Request, client: Option<std::net::IpAddr>, upstream: &str, out: &mut Vec<u8>) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    // Parsed by `parse_request` already: this cannot fail.
    let _ = parsed.parse(raw);
    out.extend_from_slice(parsed.method.unwrap_or("GET").as_bytes());
    out.push(b' ');
    out.extend_from_slice(parsed.path.unwrap_or("/").as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let nominated = nominated(parsed.headers);
    let (mut forwarded, mut host) = (None, false);
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded = Some(h.value);
            continue;
        }
        host |= h.name.eq_ignore_ascii_case("host");
        if !hop_by_hop(h.name) && !nominated.iter().any(|n| n.eq_ignore_ascii_case(h.name)) {
            header(out, h.name, h.value);
        }
    }
    if !host {
        header(out, "Host", upstream.as_bytes());
    }
    if let Some(ip) = client {
        out.extend_from_slice(b"X-Forwarded-For: ");
        if let Some(prev) = forwarded.filter(|v| !v.is_empty()) {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ip.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&raw[req.head_len..]);
}

/// The fields a `Connection` header names: hop-by-hop as well.
fn nominated<'h>(headers: &[httparse::Header<'h>]) -> Vec<&'h str> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(',').map(str::trim))
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .collect()
}

fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Parses the response head at the start of `buf` (to a request with `head_method`).
pub fn parse_response(buf: &[u8], head_method: bool, max_header: usize) -> Result<Option<Response>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > max_header => return Err(Malformed::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(len)) if len > max_header => return Err(Malformed::TooLarge),
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Err(Malformed::TooLarge),
        Err(_) => return Err(Malformed::Bad),
    };
    let status = resp.code.unwrap_or(0);
    let f = framing(resp.headers)?;
    let body = if head_method || (100..200).contains(&status) || status == 204 || status == 304 {
        Body::None
    } else {
        match (f.chunked, f.length) {
            (true, _) => Body::Chunked,
            (false, Some(n)) => Body::Length(n),
            (false, None) => Body::UntilClose,
        }
    };
    let minor = resp.version.unwrap_or(1);
    let keep_alive = body != Body::UntilClose && if minor == 1 { !f.close } else { f.keep_alive && !f.close };
    Ok(Some(Response { head_len, status, body, keep_alive }))
}

/// Writes the response head `raw` for the client: HTTP/1.1, hop-by-hop fields dropped,
/// `Connection: close` when the proxy closes the client after it.
pub fn write_response_head(raw: &[u8], close: bool, out: &mut Vec<u8>) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    // Parsed by `parse_response` already: this cannot fail.
    let _ = parsed.parse(raw);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parsed.code.unwrap_or(502).to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parsed.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let nominated = nominated(parsed.headers);
    for h in parsed.headers.iter() {
        if !hop_by_hop(h.name) && !nominated.iter().any(|n| n.eq_ignore_ascii_case(h.name)) {
            header(out, h.name, h.value);
        }
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response the proxy makes itself (400, 502, 504): a short text body.
pub fn write_error(out: &mut Vec<u8>, status: u16, reason: &str, close: bool) {
    let body = format!("{reason}\n");
    out.extend_from_slice(format!("HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n").as_bytes());
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// Progress through a chunked body (RFC 9112 7.1) as it streams by, a piece at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    /// In a chunk-size line (`digits` read so far; `ext`: past a `;`).
    Size { value: u64, digits: u8, ext: bool },
    /// In chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: its CRLF.
    DataEnd,
    /// In the trailer section (`empty`: at the start of a line).
    Trailer { empty: bool },
    /// The body ended.
    Done,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::Size { value: 0, digits: 0, ext: false }
    }
}

impl Chunked {
    /// Scans `buf`, the next bytes of the body: how many belong to it, and whether it ended
    /// there (the rest is not looked at).
    pub fn advance(&mut self, buf: &[u8]) -> Result<(usize, bool), Malformed> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            *self = match *self {
                Chunked::Done => return Ok((i, true)),
                Chunked::Data(n) => {
                    let take = (buf.len() - i).min(usize::try_from(n).unwrap_or(usize::MAX));
                    i += take;
                    let left = n - take as u64;
                    *self = if left == 0 { Chunked::DataEnd } else { Chunked::Data(left) };
                    continue;
                }
                Chunked::Size { .. } | Chunked::DataEnd | Chunked::Trailer { .. } if b == b'\r' => *self,
                Chunked::Size { value, digits, ext: false } if b.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        return Err(Malformed::Bad);
                    }
                    let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Chunked::Size { value: value * 16 + d, digits: digits + 1, ext: false }
                }
                Chunked::Size { value, digits, .. } if b == b';' => Chunked::Size { value, digits, ext: true },
                Chunked::Size { digits: 0, .. } if b == b'\n' => return Err(Malformed::Bad),
                Chunked::Size { value: 0, .. } if b == b'\n' => Chunked::Trailer { empty: true },
                Chunked::Size { value, .. } if b == b'\n' => Chunked::Data(value),
                Chunked::Size { ext: true, .. } => *self,
                Chunked::Size { .. } if b == b' ' || b == b'\t' => *self,
                Chunked::Size { .. } => return Err(Malformed::Bad),
                Chunked::DataEnd if b == b'\n' => Chunked::default(),
                Chunked::DataEnd => return Err(Malformed::Bad),
                Chunked::Trailer { empty: true } if b == b'\n' => Chunked::Done,
                Chunked::Trailer { .. } if b == b'\n' => Chunked::Trailer { empty: true },
                Chunked::Trailer { .. } => Chunked::Trailer { empty: false },
            };
            i += 1;
        }
        Ok((i, *self == Chunked::Done))
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
