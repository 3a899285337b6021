//! A raw client over `std::net::TcpStream`: send exact bytes, read HTTP/1.1 responses (by
//! `Content-Length` or chunked) or text lines, and tell a closed connection from a slow one.
//! Every read has a timeout ([`crate::IO_TIMEOUT`]), so a silent server fails a test, never hangs it.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::IO_TIMEOUT;

/// `GET PATH HTTP/1.1` with a `Host` header.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// `POST PATH HTTP/1.1` with `body` and its `Content-Length`.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    req.extend_from_slice(body);
    req
}

/// The head of a chunked `POST PATH`, and its body encoded as one chunk per piece of `pieces`
/// (then the last chunk), so a test can write them one by one.
pub fn post_chunked(path: &str, pieces: &[&[u8]]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let head = format!("POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    let mut chunks: Vec<Vec<u8>> = pieces
        .iter()
        .map(|p| {
            let mut c = format!("{:x}\r\n", p.len()).into_bytes();
            c.extend_from_slice(p);
            c.extend_from_slice(b"\r\n");
            c
        })
        .collect();
    chunks.push(b"0\r\n\r\n".to_vec());
    (head, chunks)
}

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The status line and header fields as received.
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection; bytes read past one response stay buffered for the next.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("could not connect to 127.0.0.1:{port}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        // Small writes leave at once, so split requests really arrive in pieces.
        stream.set_nodelay(true).unwrap();
        Client { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).unwrap_or_else(|e| panic!("could not send {} bytes: {e}", bytes.len()));
    }

    /// Sends `bytes`; an error is returned, not a panic (the server may close first).
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends `bytes` one write per piece of `n` bytes, pausing `pause` between writes.
    pub fn send_in_pieces(&mut self, bytes: &[u8], n: usize, pause: Duration) {
        for piece in bytes.chunks(n) {
            self.send(piece);
            std::thread::sleep(pause);
        }
    }

    /// Sends `req` and reads one response, panicking on any error.
    pub fn request(&mut self, req: &[u8]) -> Response {
        self.send(req);
        self.read_response().unwrap_or_else(|e| panic!("no response to {:?}: {e}", String::from_utf8_lossy(req)))
    }

    /// Reads `n` responses (e.g. to pipelined requests).
    pub fn read_responses(&mut self, n: usize) -> io::Result<Vec<Response>> {
        (0..n).map(|_| self.read_response()).collect()
    }

    /// Reads one response: head, then a body by `Content-Length` or chunked encoding (none for
    /// 1xx, 204 and 304).
    pub fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end - 4]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut response = Response { status, head, headers, body: Vec::new() };
        let chunked = response.header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        if (100..200).contains(&status) || status == 204 || status == 304 {
        } else if chunked {
            response.body = self.read_chunked()?;
        } else if let Some(len) = response.header("Content-Length") {
            let len: usize = len.parse().map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
            response.body = self.read_exact_buffered(len)?;
        } else {
            // No length: the body runs to the end of the connection.
            while self.fill_or_eof()? {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(response)
    }

    /// Reads one `\n`-terminated line (newline included).
    pub fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(self.buf.drain(..=i).collect());
            }
            self.fill()?;
        }
    }

    /// Reads exactly `n` bytes (what is buffered first).
    pub fn read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        self.read_exact_buffered(n)
    }

    /// Waits up to `timeout` for the server to close the connection (EOF or reset). Returns what
    /// arrived before the close, or Err when the connection is still open at the timeout.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + timeout;
        let mut got = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the connection is still open after {timeout:?}; received {:?}",
                    String::from_utf8_lossy(&got)
                ));
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let r = self.stream.read(&mut chunk);
            self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
            match r {
                Ok(0) => return Ok(got),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if is_reset(&e) => return Ok(got),
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    /// Another handle on the socket, to write from another thread while this one reads.
    pub fn writer(&self) -> TcpStream {
        self.stream.try_clone().expect("a clone of the socket")
    }

    /// Closes our sending side (the server reads EOF).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_crlf_line()?;
            let size_text = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailer fields up to an empty line.
                while !self.read_crlf_line()?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.read_exact_buffered(size)?);
            if !self.read_crlf_line()?.is_empty() {
                return Err(bad("chunk data not followed by CRLF".into()));
            }
        }
    }

    fn read_crlf_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    fn read_exact_buffered(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            self.fill()?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads more bytes into the buffer; EOF is an error here.
    fn fill(&mut self) -> io::Result<()> {
        if self.fill_or_eof()? {
            Ok(())
        } else {
            Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "the server closed the connection; {} unread bytes: {:?}",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf)
                ),
            ))
        }
    }

    /// Reads more bytes into the buffer; false at EOF.
    fn fill_or_eof(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
