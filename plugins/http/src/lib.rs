//! HTTP/1.1 for host: keep-alive, HTTP/1.0, pipelining, `Content-Length` and chunked request
//! bodies, `Expect: 100-continue`, `HEAD`, and static files under an optional root.
//!
//! Run: host --plugin http --listen 127.0.0.1:8080, then `curl -i http://127.0.0.1:8080/`.
//!
//! Routes:
//! - `GET`/`HEAD /`: `Hello, World!` as `text/plain` (TechEmpower plaintext). With a `root`,
//!   `/` serves `root/index.html` when there is one and falls back to `Hello, World!` otherwise,
//!   so the plaintext endpoint exists whatever the root holds.
//! - Any other method on `/`: the request body is echoed back (`application/octet-stream`).
//! - With a `root`: `GET`/`HEAD` of other paths serve files (see [`files`]), other methods on
//!   an existing file get 405 with `Allow: GET, HEAD`; everything else is 404.
//!
//! Config (TOML, every key optional; unknown keys are an error):
//! ```toml
//! root = "/srv/www"        # serve files from here (no default: no files)
//! max_header = 65536       # request line + header fields, bytes (over it: 431)
//! max_body = 1048576       # request body, bytes (over it: 413)
//! max_file = 67108864      # largest file served, bytes (over it: 500; default: no limit)
//! ```
//! The host's max package size (default 1 MiB) also bounds a whole request; raise both
//! together. Files are read whole into memory with blocking `std::fs` calls (see [`files`]).

pub mod chunked;
pub mod files;
pub mod parse;
pub mod response;

use plugin_api::{export_plugin, ConnError, ConnId, ConnMap, Frame, Host, Protocol, WorkerInfo};
use serde::Deserialize;

use crate::files::{FileInfo, Files, Lookup};
use crate::parse::{parse_head, Body, Framer, Limits, Method, RequestHead};
use crate::response::{Persist, Status};

/// The service's config for this plugin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: Option<String>,
    pub max_header: usize,
    pub max_body: u64,
    pub max_file: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { root: None, max_header: 64 * 1024, max_body: 1024 * 1024, max_file: u64::MAX }
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| format!("invalid http config: {e}"))?;
        if config.max_header == 0 {
            return Err("invalid http config: max_header must be positive".into());
        }
        if config.root.as_deref() == Some("") {
            return Err("invalid http config: root must not be empty".into());
        }
        Ok(config)
    }
}

/// Buffers grown past this by a large body or file are given back after the response.
const RETAIN_BUFFER: usize = 256 * 1024;

/// The plugin instance of one worker.
pub struct Http {
    limits: Limits,
    files: Option<Files>,
    max_file: u64,
    conns: ConnMap<Conn>,
    /// The response being written (reused: no allocation per request).
    out: Vec<u8>,
    /// A decoded chunked body, or a chunk of a streamed file (reused).
    body: Vec<u8>,
    date: response::DateCache,
    /// The file whose head `respond` just wrote, to be streamed by `on_message`.
    stream_next: Option<(std::fs::File, u64)>,
    /// Output queued per connection at most while streaming (the host's send buffer).
    send_window: usize,
}

/// Per-connection state.
#[derive(Debug, Default)]
struct Conn {
    framer: Framer,
    /// Bytes of a request not yet answered are buffered (drain then answers it, with close).
    in_flight: bool,
    /// The connection closes after what is queued: further input is ignored.
    closing: bool,
    /// A file body being sent a send buffer at a time.
    stream: Option<Stream>,
}

/// A large file body, sent as the connection drains (reading the connection is paused meanwhile,
/// so pipelined requests behind it are answered after it, in order).
#[derive(Debug)]
struct Stream {
    file: std::fs::File,
    remaining: u64,
    /// Close the connection after the last byte.
    close: bool,
}

/// Files larger than this are streamed instead of read whole into one response.
const STREAM_AT: u64 = 256 * 1024;
/// Bytes read from a streamed file at a time.
const STREAM_CHUNK: usize = 64 * 1024;

impl Protocol for Http {
    fn new(config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        let config = Config::parse(config)?;
        let files = config.root.as_deref().map(Files::new).transpose()?;
        // A body the host would refuse anyway is refused at its head (413, no `100 Continue`).
        let max_body = config.max_body.min(worker.max_package_size as u64);
        Ok(Http {
            limits: Limits { max_header: config.max_header, max_body },
            files,
            max_file: config.max_file,
            conns: ConnMap::new(),
            out: Vec::with_capacity(4096),
            body: Vec::new(),
            date: Default::default(),
            stream_next: None,
            send_window: worker.max_send_buffer.max(STREAM_CHUNK),
        })
    }

    fn input(&mut self, host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame {
        let state = self.conns.entry(conn);
        if state.closing {
            return Frame::NeedMore;
        }
        state.in_flight = !buf.is_empty();
        match state.framer.frame(buf, &self.limits) {
            Ok(framed) => {
                if framed.send_continue {
                    host.send(conn, response::CONTINUE);
                }
                framed.len.map_or(Frame::NeedMore, Frame::Complete)
            }
            Err(status) => {
                self.reject(host, conn, status);
                Frame::Invalid
            }
        }
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        let state = self.conns.entry(conn);
        if state.closing {
            return;
        }
        state.in_flight = false;
        // The head parsed by `input` is kept; parsing again is only a fallback.
        let head = match state.framer.finish() {
            Some(head) => head,
            None => match parse_head(msg, &self.limits) {
                Ok(Some(head)) if msg.len() >= head.len => head,
                Ok(_) => return self.reject(host, conn, Status::BadRequest),
                Err(status) => return self.reject(host, conn, status),
            },
        };
        let persist = match (head.keep_alive && !host.is_draining(), head.minor) {
            (false, _) => Persist::Close,
            (true, 0) => Persist::KeepAlive10,
            (true, _) => Persist::KeepAlive,
        };
        self.date.update(host.now_ms());
        self.out.clear();
        self.respond(&head, msg, persist);
        if let Some(file) = self.stream_next.take() {
            // The head goes now; the body follows as the connection drains.
            host.send(conn, &self.out);
            let remaining = file.1;
            self.conns.entry(conn).stream = Some(Stream { file: file.0, remaining, close: persist == Persist::Close });
            host.pause_recv(conn);
            self.pump(host, conn);
        } else if persist == Persist::Close {
            self.conns.entry(conn).closing = true;
            host.close_with(conn, &self.out);
        } else {
            host.send(conn, &self.out);
        }
        self.trim_buffers();
    }

    fn on_close(&mut self, _host: &mut Host<'_>, conn: ConnId) {
        self.conns.remove(conn);
    }

    fn on_buffer_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        self.pump(host, conn);
    }

    fn on_error(&mut self, host: &mut Host<'_>, conn: ConnId, err: ConnError) {
        let state = self.conns.get(conn);
        let closing = state.is_some_and(|c| c.closing);
        match err {
            ConnError::PackageTooLarge if !closing => {
                // With the head complete the body is too large; otherwise the head is.
                let status = match state.is_some_and(|c| c.framer.has_head()) {
                    true => Status::ContentTooLarge,
                    false => Status::HeadersTooLarge,
                };
                self.reject(host, conn, status);
            }
            ConnError::Timeout if !closing && state.is_some_and(|c| c.in_flight) => {
                self.reject(host, conn, Status::RequestTimeout);
            }
            _ => host.close(conn),
        }
    }

    fn on_drain(&mut self, _host: &mut Host<'_>, _conn: ConnId) {
        // Nothing to do now: from here on `host.is_draining()` makes every response carry
        // `Connection: close` and close its connection once flushed. An idle keep-alive
        // connection is left open, not closed at once: its client may have a request on the
        // wire already, and closing under it would lose that request (the close race every
        // keep-alive server has). The host closes what is left at the drain deadline.
    }
}

impl Http {
    /// Sends the next part of a streamed file: up to the send buffer (the host then reports the
    /// connection full, and drained once it is written, which calls this again).
    fn pump(&mut self, host: &mut Host<'_>, conn: ConnId) {
        use std::io::Read;
        let Some(state) = self.conns.get_mut(conn) else { return };
        let Some(stream) = state.stream.as_mut() else { return };
        while stream.remaining > 0 && host.pending_send(conn) < self.send_window {
            let want = usize::try_from(stream.remaining).unwrap_or(usize::MAX).min(STREAM_CHUNK);
            self.body.resize(want, 0);
            match stream.file.read(&mut self.body) {
                Ok(0) | Err(_) => {
                    // The file shrank (or broke) under us: the length is promised, so the only
                    // honest end is a closed connection.
                    plugin_api::tracing::warn!(remaining = stream.remaining, "streamed file ended early; closing");
                    state.stream = None;
                    state.closing = true;
                    host.close(conn);
                    return;
                }
                Ok(n) => {
                    host.send(conn, &self.body[..n]);
                    stream.remaining -= n as u64;
                }
            }
        }
        if stream.remaining == 0 {
            let close = stream.close;
            state.stream = None;
            if close {
                state.closing = true;
                host.close(conn);
            } else {
                host.resume_recv(conn);
            }
            self.trim_buffers();
        }
    }

    /// Answers with an error status and closes the connection after it.
    fn reject(&mut self, host: &mut Host<'_>, conn: ConnId, status: Status) {
        let state = self.conns.entry(conn);
        state.closing = true;
        state.in_flight = false;
        self.date.update(host.now_ms());
        self.out.clear();
        response::write_error(&mut self.out, status, self.date.get(), Persist::Close, false);
        host.close_with(conn, &self.out);
    }

    /// Writes the response to a complete request into `self.out`.
    fn respond(&mut self, head: &RequestHead, msg: &[u8], persist: Persist) {
        let head_only = head.method == Method::Head;
        let path = request_path(&msg[head.target.clone()]);
        if path == b"*" && head.method == Method::Options {
            response::begin(&mut self.out, Status::Ok, self.date.get());
            response::header(&mut self.out, "Allow", b"GET, HEAD, POST");
            return response::finish(&mut self.out, 0, persist);
        }
        if path.first() != Some(&b'/') {
            return self.error(Status::BadRequest, persist, head_only);
        }
        let is_root = path == b"/";
        let echo = is_root && !matches!(head.method, Method::Get | Method::Head);
        let lookup = match &self.files {
            Some(files) if !echo => Some(files.lookup(path)),
            _ => None,
        };
        match (head.method, lookup) {
            (Method::Get | Method::Head, Some(Lookup::Found(info))) => self.file(head, msg, &info, persist),
            (Method::Get | Method::Head, None | Some(Lookup::NotFound)) if is_root => {
                response::begin(&mut self.out, Status::Ok, self.date.get());
                response::header(&mut self.out, "Content-Type", b"text/plain");
                response::finish(&mut self.out, HELLO.len() as u64, persist);
                if !head_only {
                    self.out.extend_from_slice(HELLO);
                }
            }
            // Any other method on `/` is the echo endpoint, with or without a root.
            _ if echo => self.echo(head, msg, persist),
            (_, Some(Lookup::Found(_))) => self.error(Status::MethodNotAllowed, persist, false),
            (_, Some(Lookup::Forbidden)) => self.error(Status::Forbidden, persist, head_only),
            (_, Some(Lookup::BadPath)) => self.error(Status::BadRequest, persist, head_only),
            (_, Some(Lookup::NotFound) | None) => self.error(Status::NotFound, persist, head_only),
        }
    }

    fn error(&mut self, status: Status, persist: Persist, head_only: bool) {
        response::write_error(&mut self.out, status, self.date.get(), persist, head_only);
    }

    /// Sends the request body back.
    fn echo(&mut self, head: &RequestHead, msg: &[u8], persist: Persist) {
        let rest = &msg[head.len..];
        let body = match head.body {
            Body::None => &[][..],
            Body::Length(n) => &rest[..rest.len().min(n as usize)],
            Body::Chunked => {
                self.body.clear();
                if chunked::decode(rest, &mut self.body).is_err() {
                    return self.error(Status::BadRequest, persist, false);
                }
                &self.body
            }
        };
        response::begin(&mut self.out, Status::Ok, self.date.get());
        response::header(&mut self.out, "Content-Type", b"application/octet-stream");
        response::finish(&mut self.out, body.len() as u64, persist);
        self.out.extend_from_slice(body);
    }

    /// Serves a file found under the root, or 304 when the client's copy is current.
    fn file(&mut self, head: &RequestHead, msg: &[u8], info: &FileInfo, persist: Persist) {
        let head_only = head.method == Method::Head;
        if info.len > self.max_file {
            plugin_api::tracing::warn!(
                path = %info.path.display(),
                len = info.len,
                max_file = self.max_file,
                "file too large to serve"
            );
            return self.error(Status::InternalError, persist, head_only);
        }
        let since = head.if_modified_since.as_ref().and_then(|r| response::parse_http_date(&msg[r.clone()]));
        let not_modified = since.is_some_and(|since| info.modified <= since);
        let status = if not_modified { Status::NotModified } else { Status::Ok };
        let start = self.out.len();
        response::begin(&mut self.out, status, self.date.get());
        response::header(&mut self.out, "Content-Type", info.content_type.as_bytes());
        let modified = response::format_http_date(info.modified);
        response::header(&mut self.out, "Last-Modified", &modified);
        // A 304 carries the length a 200 would have (RFC 9110 §8.6), and no body.
        response::finish(&mut self.out, info.len, persist);
        if head_only || not_modified {
            return;
        }
        if info.len > STREAM_AT {
            match std::fs::File::open(&info.path) {
                Ok(file) => self.stream_next = Some((file, info.len)),
                Err(e) => {
                    plugin_api::tracing::warn!(path = %info.path.display(), error = %e, "could not open file");
                    self.out.truncate(start);
                    self.error(Status::InternalError, persist, false);
                }
            }
            return;
        }
        if let Err(e) = files::read_into(info, &mut self.out) {
            plugin_api::tracing::warn!(path = %info.path.display(), error = %e, "could not read file");
            self.out.truncate(start);
            self.error(Status::InternalError, persist, false);
        }
    }

    fn trim_buffers(&mut self) {
        if self.out.capacity() > RETAIN_BUFFER {
            self.out = Vec::with_capacity(4096);
        }
        if self.body.capacity() > RETAIN_BUFFER {
            self.body = Vec::new();
        }
    }
}

const HELLO: &[u8] = b"Hello, World!";

/// The path of a request target: the query and fragment dropped, and for the absolute form
/// (`http://host/path`, RFC 9112 §3.2.2) the scheme and authority too.
pub fn request_path(target: &[u8]) -> &[u8] {
    let has_prefix = |p: &[u8]| target.len() >= p.len() && target[..p.len()].eq_ignore_ascii_case(p);
    let skip = if target.first() == Some(&b'/') {
        0
    } else if has_prefix(b"http://") {
        7
    } else if has_prefix(b"https://") {
        8
    } else {
        0
    };
    let mut t = target;
    if skip > 0 {
        let rest = &target[skip..];
        t = match rest.iter().position(|&b| b == b'/' || b == b'?' || b == b'#') {
            Some(i) if rest[i] == b'/' => &rest[i..],
            _ => return b"/",
        };
    }
    let end = t.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(t.len());
    &t[..end]
}

export_plugin!(Http);

#[cfg(test)]
mod tests;
