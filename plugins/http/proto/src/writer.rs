//! [`ResponseWriter`]: a response an application fills in (status, header fields, body), framed
//! by the library.

use std::io;

use crate::response::{self, Persist, Status};

/// Header fields the writer sets itself; an application's own are dropped.
const MANAGED: [&str; 5] = ["content-length", "transfer-encoding", "connection", "date", "server"];

/// A response being built: status (200 unless set), header fields, body.
///
/// The library writes the status line, `Server`, `Date`, the framing (`Content-Length`, or
/// `Transfer-Encoding: chunked` after [`ResponseWriter::chunked`]) and `Connection`; a `HEAD`
/// request gets the head alone. Bytes written with [`ResponseWriter::write`] (or through
/// [`std::io::Write`], e.g. `serde_json::to_writer(&mut res, &value)`) make the body.
#[derive(Debug)]
pub struct ResponseWriter {
    status: Status,
    headers: Vec<u8>,
    body: Vec<u8>,
    chunked: bool,
    close: bool,
}

impl Default for ResponseWriter {
    fn default() -> Self {
        ResponseWriter { status: Status::OK, headers: Vec::new(), body: Vec::new(), chunked: false, close: false }
    }
}

impl ResponseWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Back to an empty 200, keeping the buffers.
    pub fn clear(&mut self) {
        self.status = Status::OK;
        self.headers.clear();
        self.body.clear();
        self.chunked = false;
        self.close = false;
    }

    pub fn status(&mut self, status: Status) -> &mut Self {
        self.status = status;
        self
    }

    pub fn get_status(&self) -> Status {
        self.status
    }

    /// Adds a header field. A name that is not a token, a value with CR, LF or NUL, or a field
    /// the writer manages itself (`Content-Length`, `Transfer-Encoding`, `Connection`, `Date`,
    /// `Server`) is dropped: an application cannot break the framing.
    pub fn header(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Self {
        let value = value.as_ref();
        let token =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        let clean = value.iter().all(|&b| b != b'\r' && b != b'\n' && b != 0);
        if token && clean && !MANAGED.iter().any(|m| m.eq_ignore_ascii_case(name)) {
            response::header(&mut self.headers, name, value);
        }
        self
    }

    /// Replaces the body.
    pub fn body(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.body.clear();
        self.write(bytes)
    }

    /// Appends to the body (one chunk per call when chunked).
    pub fn write(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        let bytes = bytes.as_ref();
        match self.chunked {
            true => response::push_chunk(&mut self.body, bytes),
            false => self.body.extend_from_slice(bytes),
        }
        self
    }

    /// Sends the body with chunked coding instead of `Content-Length` (for an HTTP/1.0 client
    /// the writer falls back to the length). Call it before writing the body.
    pub fn chunked(&mut self) -> &mut Self {
        if !self.chunked {
            let plain = std::mem::take(&mut self.body);
            self.chunked = true;
            self.write(plain);
        }
        self
    }

    /// Closes the connection after this response (`Connection: close`).
    pub fn close(&mut self) -> &mut Self {
        self.close = true;
        self
    }

    /// Writes the whole response into `out` and returns what it says about the connection.
    /// `head_only`: the request was `HEAD` (same head, no body); `minor`: the request's HTTP/1.x.
    pub fn write_to(&self, out: &mut Vec<u8>, date: &[u8], persist: Persist, head_only: bool, minor: u8) -> Persist {
        let persist = if self.close { Persist::Close } else { persist };
        response::begin(out, self.status, date);
        out.extend_from_slice(&self.headers);
        let has_body = self.status.has_body();
        if !has_body {
            response::finish_bodiless(out, persist);
        } else if self.chunked && minor >= 1 {
            response::finish_chunked(out, persist);
            if !head_only {
                out.extend_from_slice(&self.body);
                out.extend_from_slice(response::LAST_CHUNK);
            }
        } else if self.chunked {
            let mut plain = Vec::with_capacity(self.body.len());
            crate::chunked::decode(&self.body, &mut plain).ok();
            response::finish(out, plain.len() as u64, persist);
            if !head_only {
                out.extend_from_slice(&plain);
            }
        } else {
            response::finish(out, self.body.len() as u64, persist);
            if !head_only {
                out.extend_from_slice(&self.body);
            }
        }
        persist
    }
}

impl io::Write for ResponseWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        ResponseWriter::write(self, buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(w: &ResponseWriter, head_only: bool, minor: u8) -> String {
        let mut out = Vec::new();
        w.write_to(&mut out, b"D", Persist::KeepAlive, head_only, minor);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn content_length_by_default() {
        let mut w = ResponseWriter::new();
        w.header("Content-Type", "application/json").body("{}");
        assert_eq!(
            text(&w, false, 1),
            "HTTP/1.1 200 OK\r\nServer: host\r\nDate: D\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        assert!(text(&w, true, 1).ends_with("Content-Length: 2\r\n\r\n"));
    }

    #[test]
    fn chunked_on_request_and_length_for_http_1_0() {
        let mut w = ResponseWriter::new();
        w.chunked().write("ab").write("").write("cde");
        assert!(text(&w, false, 1).ends_with("Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"));
        assert!(text(&w, false, 0).ends_with("Content-Length: 5\r\n\r\nabcde"));
    }

    #[test]
    fn framing_fields_and_bad_values_are_dropped() {
        let mut w = ResponseWriter::new();
        w.status(Status::NOT_FOUND)
            .header("Content-Length", "99")
            .header("X-Evil", "a\r\nSet-Cookie: x")
            .header("Bad Name", "v")
            .header("X-Ok", "1")
            .close();
        let mut out = Vec::new();
        assert_eq!(w.write_to(&mut out, b"D", Persist::KeepAlive, false, 1), Persist::Close);
        let t = String::from_utf8(out).unwrap();
        assert_eq!(
            t,
            "HTTP/1.1 404 Not Found\r\nServer: host\r\nDate: D\r\nX-Ok: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut w = ResponseWriter::new();
        w.status(Status::NO_CONTENT).body("ignored");
        assert!(text(&w, false, 1).ends_with("Date: D\r\n\r\n"));
    }
}
