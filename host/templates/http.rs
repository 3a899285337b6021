//! {{lib}}: a host plugin speaking a minimal HTTP/1.1, self-contained: keep-alive, pipelining,
//! `Content-Length` bodies (a chunked body is answered 501). A request with a body gets its body
//! back; one without gets a greeting. Write your application in `reply`.
//!
//! Config keys: none yet (the service's `--plugin-config` TOML arrives in `Protocol::new`).
//!
//! Run: {{run}}
//! Try: `curl -i http://127.0.0.1:7000/` and `curl --data-binary 'echo me' http://127.0.0.1:7000/`

use plugin_api::{export_plugin, tracing, ConnError, ConnId, ConnMap, Frame, Host, Protocol, WorkerInfo};

/// The plugin: one instance per worker process, which serves all its connections from one
/// thread (never block in a handler).
pub struct {{Type}} {
    conns: ConnMap<Conn>,
}

/// What the plugin remembers about one connection.
#[derive(Debug, Default)]
struct Conn {
    /// Part of a request is buffered (the last framing call needed more bytes).
    partial: bool,
    /// The worker drains: close after the request in flight is answered.
    close_after_reply: bool,
}

/// Framing: the length of the first request in `buf` (head and body) once its head is there, or
/// the status to answer a request that can never be valid with. The host waits for the rest of
/// the body, and refuses a request over the max package size (`on_error(PackageTooLarge)`).
pub fn frame(buf: &[u8]) -> Result<Frame, &'static str> {
    let Some(head_len) = head_len(buf) else {
        return Ok(Frame::NeedMore);
    };
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| "400 Bad Request")?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let version = request_line.split(' ').nth(2).unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err("400 Bad Request");
    }
    let mut body_len = 0usize;
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        if name.eq_ignore_ascii_case("content-length") {
            body_len = value.trim().parse().map_err(|_| "400 Bad Request")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("501 Not Implemented");
        }
    }
    head_len.checked_add(body_len).map(Frame::Complete).ok_or("400 Bad Request")
}

/// The length of the request head, its blank line included, once it is all there.
fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Whether the client wants the connection closed after this request: HTTP/1.0 unless it says
/// `keep-alive`, HTTP/1.1 when it says `close`.
pub fn wants_close(request: &[u8]) -> bool {
    let head = String::from_utf8_lossy(&request[..head_len(request).unwrap_or(request.len())]).to_ascii_lowercase();
    let mut lines = head.split("\r\n");
    let http10 = lines.next().is_some_and(|l| l.ends_with("http/1.0"));
    let connection = lines.find_map(|l| l.strip_prefix("connection:")).map(str::trim);
    match connection {
        Some(value) => value.split(',').any(|v| v.trim() == "close") || (http10 && !value.contains("keep-alive")),
        None => http10,
    }
}

/// A response with a plain-text `body`.
pub fn response(status: &str, body: &[u8], close: bool) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The answer to one whole request (head and body): its body back, or a greeting.
pub fn reply(request: &[u8], close: bool) -> Vec<u8> {
    let body = &request[head_len(request).unwrap_or(request.len())..];
    let body: &[u8] = if body.is_empty() { b"Hello from {{lib}}!\n" } else { body };
    response("200 OK", body, close)
}

impl Protocol for {{Type}} {
    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok({{Type}} { conns: ConnMap::new() })
    }

    fn on_worker_start(&mut self, host: &mut Host<'_>) -> Result<(), String> {
        tracing::info!(slot = host.slot(), "{{lib}} is ready");
        Ok(())
    }

    fn input(&mut self, host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame {
        match frame(buf) {
            Ok(frame) => {
                self.conns.entry(conn).partial = frame == Frame::NeedMore && !buf.is_empty();
                frame
            }
            Err(status) => {
                // Queued before the host closes the connection.
                host.send(conn, &response(status, status.as_bytes(), true));
                Frame::Invalid
            }
        }
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, request: &[u8]) {
        let state = self.conns.entry(conn);
        state.partial = false;
        let close = state.close_after_reply || wants_close(request);
        let answer = reply(request, close);
        if close {
            host.close_with(conn, &answer);
        } else {
            host.send(conn, &answer);
        }
    }

    fn on_close(&mut self, _host: &mut Host<'_>, conn: ConnId) {
        self.conns.remove(conn);
    }

    fn on_error(&mut self, host: &mut Host<'_>, conn: ConnId, err: ConnError) {
        match err {
            ConnError::PackageTooLarge => host.close_with(conn, &response("413 Content Too Large", b"", true)),
            _ => host.close(conn),
        }
    }

    /// A graceful stop or reload: an idle connection closes now, one with a request on its way
    /// after that request is answered.
    fn on_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        let state = self.conns.entry(conn);
        if state.partial {
            state.close_after_reply = true;
        } else {
            host.close(conn);
        }
    }
}

export_plugin!({{Type}});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed() {
        assert_eq!(frame(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(Frame::NeedMore));
        assert_eq!(frame(b"GET / HTTP/1.1\r\n\r\nGET"), Ok(Frame::Complete(18)));
        assert_eq!(frame(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe"), Ok(Frame::Complete(43)));
        assert_eq!(frame(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), Err("400 Bad Request"));
        assert_eq!(frame(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), Err("501 Not Implemented"));
        assert_eq!(frame(b"hello\r\n\r\n"), Err("400 Bad Request"));
    }

    #[test]
    fn bodies_are_echoed() {
        let answer = reply(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", false);
        assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(answer.ends_with(b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"));
        assert!(wants_close(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(wants_close(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(!wants_close(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
}
