//! HTTP/1.1 for host: a static-file server browsers are happy with, on the `http_proto`
//! library (keep-alive, HTTP/1.0, pipelining, `Content-Length` and chunked request bodies,
//! `Expect: 100-continue`, strict RFC 9112 checks).
//!
//! Run: `host --plugin http --listen 127.0.0.1:8080 --plugin-config 'root = "/srv/www"'`, then
//! `curl -i http://127.0.0.1:8080/`.
//!
//! Routes:
//! - `GET`/`HEAD /`: `Hello, World!` as `text/plain` (TechEmpower plaintext). With a `root`,
//!   `/` serves `root/index.html` (or its listing) when there is one, and the plaintext otherwise.
//! - `POST`/`PUT /`: the request body is echoed back (`application/octet-stream`; `echo = false`
//!   turns it off).
//! - With a `root`: `GET`/`HEAD` of other paths serve files (see [`files`]): validators
//!   (`ETag`, `Last-Modified`) and conditional requests ([`conditional`]: 304, 412), byte ranges
//!   ([`ranges`]: 206, `multipart/byteranges`, 416), `Content-Type` by extension, precompressed
//!   `.br`/`.gz` siblings and optional on-the-fly gzip (with `Vary: Accept-Encoding`),
//!   `Cache-Control`; a directory without its slash is a 301 to it with the slash, `dir/`
//!   serves `dir/index.html` or, with `autoindex`, a listing.
//! - `OPTIONS` answers the resource's `Allow`; another registered method on an existing resource
//!   is 405 with a truthful `Allow`; an unknown method is 501.
//!
//! Config (TOML, every key optional; unknown keys are an error):
//! ```toml
//! root = "/srv/www"        # serve files from here (no default: no files)
//! autoindex = false        # list directories without index.html
//! serve_dotfiles = false   # /.git/config, /.env: 404 unless true (/.well-known/ always served)
//! etag = "strong"          # or "weak"
//! cache_control = "public, max-age=3600"               # on files (default: none)
//! cache_control_by_ext = { js = "max-age=31536000" }   # per extension, over cache_control
//! precompressed = true     # serve app.js.br / app.js.gz to clients that accept them
//! gzip = false             # compress text files on the fly (never ranges)
//! gzip_min = 1024          # ... from this size (up to 1 MiB)
//! echo = true              # POST/PUT / echoes the body
//! max_header = 65536       # request line + header fields, bytes (over it: 431, or 414)
//! max_target = 8192        # request target, bytes (over it: 414)
//! max_headers = 100        # header fields (over it: 431)
//! max_body = 1048576       # request body, bytes, decoded (over it: 413)
//! max_file = 67108864      # largest file served, bytes (over it: 500; default: no limit)
//! access_log_format = "combined"   # or "common": the lines of the host's --access-log
//! file_io = "sendfile"     # or "pool": how file bodies are sent (below)
//! ```
//! With an access log (`host --access-log FILE`, or `access_log` in a config file's service),
//! each response is logged once complete, as nginx does (see [`http_proto::access_log`]):
//! errors the parser answers (400, 408, 413, 414, 431…) included, a streamed file with the body
//! bytes handed to the host (fewer when the client went away).
//! `max_body` bounds the body alone: chunk framing and the head do not count, and a body larger
//! than the host's max package size (`--max-package-size`, default 1 MiB) is received in pieces
//! (the package size then bounds the head, see [`http_proto::parse`]).
//!
//! File bodies up to 256 KiB that the page cache holds are read in the loop (`preadv2` with
//! `RWF_NOWAIT`, which never waits for the disk) and go out in one response. Other file bodies
//! (whole files, a single range, each range of a `multipart/byteranges`):
//! - `file_io = "sendfile"` (the default): the host sends each file range itself
//!   (`Host::send_file`: `sendfile(2)` on plain TCP, zero copy; read and encrypted under TLS),
//!   a send buffer at a time. A range the page cache lacks is read from the disk inside the
//!   worker's loop (`sendfile` waits for it). The access log counts the bytes handed to the host.
//! - `file_io = "pool"`: the plugin reads what the page cache holds in the loop, reads what it
//!   lacks on the host's task pool (`Host::spawn_task`) while the loop serves everyone else, and
//!   sends the bytes.
//!
//! Either way reading the connection is paused while a body is streamed, so pipelined requests
//! are answered in order. On a host older than plugin-api 0.1.2 (no `send_file`, no task pool)
//! the plugin reads in the loop, as it did before. On-the-fly gzip (at most 1 MiB) still reads
//! and compresses in the loop. The figures behind the default: docs/architecture.md.

pub mod conditional;
pub mod files;
pub mod ranges;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use http_proto::access_log::{self, Entry, LogFormat, LogTime};
use http_proto::response::{self, DateCache};
use http_proto::Delivered;
use plugin_api::{
    export_plugin, ConnError, ConnId, ConnMap, Counter, Frame, Host, Protocol, SendFileError, TaskId, WorkerInfo,
};
use serde::Deserialize;

pub use http_proto::{chunked, parse, persist, request_path, ConnState, Limits, Method, Persist, Request, Status};

use crate::conditional::{EtagKind, Outcome};
use crate::files::{Files, Found, Lookup};
use crate::ranges::Ranges;

/// The service's config for this plugin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub root: Option<String>,
    pub autoindex: bool,
    pub serve_dotfiles: bool,
    pub etag: EtagKind,
    pub cache_control: Option<String>,
    pub cache_control_by_ext: BTreeMap<String, String>,
    pub precompressed: bool,
    pub gzip: bool,
    pub gzip_min: u64,
    pub echo: bool,
    pub max_header: usize,
    pub max_target: usize,
    pub max_headers: usize,
    pub max_body: u64,
    pub max_file: u64,
    pub access_log_format: AccessLogFormat,
    pub file_io: FileIo,
}

/// How file bodies over 256 KiB (or not in the page cache) are sent (`file_io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileIo {
    /// The host sends the file range itself (`Host::send_file`: `sendfile(2)`, zero copy; a
    /// range the page cache lacks is read from the disk inside the worker's loop).
    #[default]
    Sendfile,
    /// The plugin reads the file (from the page cache in the loop, from the disk on the task
    /// pool) and sends the bytes.
    Pool,
}

/// The fields of an access-log line (`access_log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    /// Common Log Format plus referer and user agent (nginx's `combined`).
    #[default]
    Combined,
    /// Common Log Format.
    Common,
}

impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        Config {
            root: None,
            autoindex: false,
            serve_dotfiles: false,
            etag: EtagKind::Strong,
            cache_control: None,
            cache_control_by_ext: BTreeMap::new(),
            precompressed: true,
            gzip: false,
            gzip_min: 1024,
            echo: true,
            max_header: limits.max_header,
            max_target: limits.max_target,
            max_headers: limits.max_headers,
            max_body: limits.max_body,
            max_file: u64::MAX,
            access_log_format: AccessLogFormat::Combined,
            file_io: FileIo::default(),
        }
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| format!("invalid http config: {e}"))?;
        if config.max_header == 0 || config.max_target == 0 {
            return Err("invalid http config: max_header and max_target must be positive".into());
        }
        if !(1..=http_proto::parse::MAX_HEADERS_CAP).contains(&config.max_headers) {
            return Err(format!(
                "invalid http config: max_headers must be 1 to {}",
                http_proto::parse::MAX_HEADERS_CAP
            ));
        }
        if config.root.as_deref() == Some("") {
            return Err("invalid http config: root must not be empty".into());
        }
        let values = config.cache_control.iter().chain(config.cache_control_by_ext.values());
        if values.into_iter().any(|v| v.bytes().any(|b| b.is_ascii_control())) {
            return Err("invalid http config: cache_control values must be one line".into());
        }
        config.cache_control_by_ext = std::mem::take(&mut config.cache_control_by_ext)
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Ok(config)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_header: self.max_header,
            max_body: self.max_body,
            max_target: self.max_target,
            max_headers: self.max_headers,
        }
    }
}

/// The plugin instance of one worker.
pub struct Http {
    config: Config,
    limits: Limits,
    /// The host's max package size.
    max_message: usize,
    files: Option<Files>,
    conns: ConnMap<Conn>,
    /// The response being written (reused: no allocation per request).
    out: Vec<u8>,
    /// A chunk of a streamed file (reused).
    chunk: Vec<u8>,
    date: DateCache,
    /// File reads running on the host's task pool, and the connection each is for.
    reads: HashMap<TaskId, ConnId>,
    /// The kernel takes `RWF_NOWAIT` on these files (false once it said it does not: every read
    /// of an uncached file then goes to the task pool).
    nowait: bool,
    /// Output queued per connection at most while streaming (the host's send buffer).
    send_window: usize,
    /// File ranges go to `Host::send_file` (`file_io = "sendfile"`, until the host says it
    /// cannot).
    send_file: bool,
    /// `host_plugin_http_responses_total{class="1xx".."5xx"}` (None: a host too old to count).
    responses: [Option<Counter>; 5],
    /// The service has an access log (else no line is formatted).
    access_log: bool,
    log_format: LogFormat,
    log_time: LogTime,
    /// The access-log line being written (reused).
    log_line: Vec<u8>,
}

/// What [`Http::respond`] wrote into `out`: a whole response, or the head of one whose body
/// streams after it.
#[derive(Debug)]
enum Response {
    Whole,
    Streamed { file: Arc<File>, parts: VecDeque<Part> },
}

/// The access-log line of a streamed response, written once its body is sent.
#[derive(Debug)]
struct PendingLog {
    remote: Option<std::net::IpAddr>,
    request_line: Vec<u8>,
    referer: Option<Vec<u8>>,
    user_agent: Option<Vec<u8>>,
    status: u16,
    /// The body's length: what is sent once the stream ends.
    body: u64,
}

/// Per-connection state.
#[derive(Debug, Default)]
struct Conn {
    state: ConnState,
    /// A file body being sent a send buffer at a time.
    stream: Option<Stream>,
    /// Its access-log line, written when the stream ends or the connection closes.
    log: Option<Box<PendingLog>>,
}

/// A large body, sent as the connection drains (reading the connection is paused meanwhile, so
/// pipelined requests behind it are answered after it, in order).
#[derive(Debug)]
struct Stream {
    file: Arc<File>,
    parts: VecDeque<Part>,
    /// Close the connection after the last byte.
    close: bool,
    /// A read of the next part runs on the task pool: the pump waits for it.
    reading: bool,
}

/// A piece of a response body: bytes (a multipart head), or a byte range of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Bytes(Vec<u8>),
    File { offset: u64, len: u64 },
}

impl Part {
    /// Bytes of the body it still holds.
    fn len(&self) -> u64 {
        match self {
            Part::Bytes(bytes) => bytes.len() as u64,
            Part::File { len, .. } => *len,
        }
    }
}

/// Bodies larger than this are streamed instead of read whole into one response.
const STREAM_AT: u64 = 256 * 1024;
/// Bytes read from a streamed file at a time, in the loop (from the page cache).
const STREAM_CHUNK: usize = 64 * 1024;
/// Bytes one read on the task pool takes at most (it reads from the disk: fewer, larger reads).
const TASK_READ_MAX: usize = 1024 * 1024;
/// Files compressed on the fly at most (read and compressed whole).
const GZIP_MAX: u64 = 1024 * 1024;
/// Buffers grown past this by a large response are given back after it.
const RETAIN_BUFFER: usize = 256 * 1024;
/// The longest request line an access-log line repeats.
const MAX_LOGGED_LINE: usize = 8192;

impl Protocol for Http {
    fn new(config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        let config = Config::parse(config)?;
        let send_file = config.file_io == FileIo::Sendfile;
        let log_format = match config.access_log_format {
            AccessLogFormat::Combined => LogFormat::Combined,
            AccessLogFormat::Common => LogFormat::Common,
        };
        let files =
            config.root.as_deref().map(|root| Files::new(root, config.serve_dotfiles, config.autoindex)).transpose()?;
        Ok(Http {
            limits: config.limits(),
            config,
            max_message: worker.max_package_size,
            files,
            conns: ConnMap::new(),
            out: Vec::with_capacity(4096),
            chunk: Vec::new(),
            date: Default::default(),
            reads: HashMap::new(),
            nowait: true,
            // The host takes a send whole while less than its send buffer is pending (issue #15:
            // a window above it sent into a full buffer, and the refused bytes were lost).
            send_window: worker.max_send_buffer.max(1),
            send_file,
            responses: [None; 5],
            access_log: false,
            log_format,
            log_time: LogTime::default(),
            log_line: Vec::new(),
        })
    }

    fn on_worker_start(&mut self, host: &mut Host<'_>) -> Result<(), String> {
        for (i, counter) in self.responses.iter_mut().enumerate() {
            let class = format!("class={}xx", i + 1);
            *counter = host.counter("http_responses", &class, "HTTP responses by status class");
        }
        // An empty line writes nothing: it asks whether the service keeps an access log.
        self.access_log = host.access_log(b"");
        Ok(())
    }

    fn input(&mut self, host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame {
        let state = &mut self.conns.entry(conn).state;
        let frame = state.input(host, conn, buf, &self.limits, self.max_message, &mut self.date, &mut self.out);
        if frame == Frame::Invalid {
            // The parser refused the request and queued its error answer.
            self.log_out(host, conn, access_log::request_line(buf, MAX_LOGGED_LINE), None, None);
        }
        frame
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        // Out of its entry while the request is answered (which needs the whole plugin).
        let mut state = std::mem::take(&mut self.conns.entry(conn).state);
        let mut answered = None;
        let limits = self.limits;
        let delivered = state.on_message(host, msg, &limits, |host, req| {
            let persist = persist(req.head(), host.is_draining());
            self.date.update(host.now_ms());
            self.out.clear();
            let response = self.respond(req, persist);
            let log = self.log_request(host, conn, req, &response);
            answered = Some((response, log));
            persist
        });
        let c = self.conns.entry(conn);
        c.state = state;
        let persist = match delivered {
            Delivered::Ignored => return,
            Delivered::Answered(persist) => persist,
            Delivered::Refused(status) => {
                c.state.reject(host, conn, status, &mut self.date, &mut self.out);
                self.log_out(host, conn, access_log::request_line(msg, MAX_LOGGED_LINE), None, None);
                return self.count_response(host);
            }
        };
        self.count_response(host);
        let c = self.conns.entry(conn);
        match answered {
            Some((Response::Streamed { file, parts }, log)) => {
                // The head goes now; the body follows as the connection drains.
                host.send(conn, &self.out);
                c.stream = Some(Stream { file, parts, close: persist == Persist::Close, reading: false });
                c.log = log;
                host.pause_recv(conn);
                self.pump(host, conn);
            }
            _ if persist == Persist::Close => {
                c.state.closing = true;
                host.close_with(conn, &self.out);
            }
            _ => {
                host.send(conn, &self.out);
            }
        }
        self.trim_buffers();
    }

    fn on_close(&mut self, host: &mut Host<'_>, conn: ConnId) {
        if let Some(mut c) = self.conns.remove(conn) {
            if let Some(mut log) = c.log.take() {
                // The client went away during a streamed body: what was handed to the host.
                let left: u64 = c.stream.map_or(0, |s| s.parts.iter().map(Part::len).sum());
                log.body = log.body.saturating_sub(left);
                self.log_pending(host, &log);
            }
        }
    }

    fn on_buffer_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        self.pump(host, conn);
    }

    fn on_task_done(&mut self, host: &mut Host<'_>, task: TaskId, result: Result<Vec<u8>, String>) {
        // A read for a connection that closed meanwhile is dropped.
        let Some(conn) = self.reads.remove(&task) else { return };
        let Some(c) = self.conns.get_mut(conn) else { return };
        let Some(stream) = c.stream.as_mut() else { return };
        stream.reading = false;
        let Some(Part::File { offset, len }) = stream.parts.front_mut() else { return };
        let bytes = match result {
            Ok(bytes) if !bytes.is_empty() => bytes,
            Ok(_) | Err(_) => return end_early(host, conn, c),
        };
        let n = bytes.len().min(usize::try_from(*len).unwrap_or(usize::MAX));
        // Nothing was sent on this connection while the read ran: the host takes it.
        if host.send(conn, &bytes[..n]) {
            *offset += n as u64;
            *len -= n as u64;
            self.pump(host, conn);
        }
    }

    fn on_error(&mut self, host: &mut Host<'_>, conn: ConnId, err: ConnError) {
        let state = &mut self.conns.entry(conn).state;
        match state.error_status(err) {
            Some(status) => {
                state.reject(host, conn, status, &mut self.date, &mut self.out);
                self.log_out(host, conn, None, None, None);
                self.count_response(host);
            }
            None => host.close(conn),
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
    /// Counts the response just written to `out` by its status class.
    fn count_response(&self, host: &mut Host<'_>) {
        let class = match self.out.get(..10) {
            Some([b'H', b'T', b'T', b'P', b'/', _, _, _, b' ', d]) if (b'1'..=b'5').contains(d) => (d - b'1') as usize,
            _ => return,
        };
        if let Some(counter) = self.responses[class] {
            host.add(counter, 1);
        }
    }

    /// Logs the response to `req` just written to `out`; a streamed body's line waits for its
    /// end (returned, to be written then).
    fn log_request(
        &mut self,
        host: &mut Host<'_>,
        conn: ConnId,
        req: &Request<'_>,
        response: &Response,
    ) -> Option<Box<PendingLog>> {
        if !self.access_log {
            return None;
        }
        let request_line = access_log::request_line(req.raw_head(), MAX_LOGGED_LINE);
        let (referer, user_agent) = (req.header("referer"), req.header("user-agent"));
        match response {
            Response::Streamed { parts, .. } => {
                let (status, _) = access_log::status_and_body(&self.out)?;
                Some(Box::new(PendingLog {
                    remote: host.peer_addr(conn).map(|a| a.ip()),
                    request_line: request_line.unwrap_or_default().to_vec(),
                    referer: referer.map(<[u8]>::to_vec),
                    user_agent: user_agent.map(<[u8]>::to_vec),
                    status,
                    body: parts.iter().map(Part::len).sum(),
                }))
            }
            Response::Whole => {
                self.log_out(host, conn, request_line, referer, user_agent);
                None
            }
        }
    }

    /// Logs the response written whole to `out`.
    fn log_out(
        &mut self,
        host: &mut Host<'_>,
        conn: ConnId,
        request_line: Option<&[u8]>,
        referer: Option<&[u8]>,
        user_agent: Option<&[u8]>,
    ) {
        if !self.access_log {
            return;
        }
        let Some((status, body_bytes)) = access_log::status_and_body(&self.out) else { return };
        let remote = host.peer_addr(conn).map(|a| a.ip());
        let entry = Entry { remote, request_line, status, body_bytes, referer, user_agent };
        self.write_log(host, &entry);
    }

    fn log_pending(&mut self, host: &mut Host<'_>, log: &PendingLog) {
        let entry = Entry {
            remote: log.remote,
            request_line: Some(&log.request_line),
            status: log.status,
            body_bytes: log.body,
            referer: log.referer.as_deref(),
            user_agent: log.user_agent.as_deref(),
        };
        self.write_log(host, &entry);
    }

    fn write_log(&mut self, host: &mut Host<'_>, entry: &Entry<'_>) {
        self.date.update(host.now_ms());
        self.log_line.clear();
        let time = self.log_time.at(self.date.secs());
        access_log::write_line(&mut self.log_line, entry, time, self.log_format);
        host.access_log(&self.log_line);
    }

    /// Sends the next part of a streamed body: up to the send buffer (the host then reports the
    /// connection full, and drained once it is written, which calls this again). What the page
    /// cache holds is read here; a read that would wait for the disk goes to the task pool, and
    /// its result (`on_task_done`) calls this again.
    fn pump(&mut self, host: &mut Host<'_>, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        let Some(stream) = c.stream.as_mut() else { return };
        if stream.reading {
            return;
        }
        // Below the window the host takes every send whole: nothing sent is ever refused.
        while host.pending_send(conn) < self.send_window {
            match stream.parts.front_mut() {
                None => break,
                Some(Part::Bytes(bytes)) => {
                    if !host.send(conn, bytes) {
                        return;
                    }
                    stream.parts.pop_front();
                }
                Some(Part::File { len: 0, .. }) => {
                    stream.parts.pop_front();
                }
                Some(&mut Part::File { offset, len }) if self.send_file => {
                    match host.send_file(conn, &stream.file, offset, len) {
                        Ok(()) => {
                            stream.parts.pop_front();
                        }
                        // An older host: read and send, as `file_io = "pool"` does.
                        Err(SendFileError::Unsupported) => self.send_file = false,
                        Err(SendFileError::BadFile | SendFileError::NotAStream) => return end_early(host, conn, c),
                        // Closed (or full, which the window rules out).
                        Err(_) => return,
                    }
                }
                Some(Part::File { offset, len }) => {
                    let left = usize::try_from(*len).unwrap_or(usize::MAX);
                    self.chunk.resize(left.min(STREAM_CHUNK), 0);
                    let read = match read_cached(&stream.file, &mut self.chunk, *offset, &mut self.nowait) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            let file = Arc::clone(&stream.file);
                            let (at, want) = (*offset, left.min(self.send_window.clamp(STREAM_CHUNK, TASK_READ_MAX)));
                            match host.spawn_task(move || read_on_pool(&file, at, want)) {
                                Ok(task) => {
                                    stream.reading = true;
                                    self.reads.insert(task, conn);
                                    return;
                                }
                                // No pool (an older host) or its queue is full: read here.
                                Err(_) => stream.file.read_at(&mut self.chunk, *offset),
                            }
                        }
                        other => other,
                    };
                    match read {
                        Ok(0) | Err(_) => return end_early(host, conn, c),
                        Ok(n) => {
                            if !host.send(conn, &self.chunk[..n]) {
                                return;
                            }
                            *offset += n as u64;
                            *len -= n as u64;
                        }
                    }
                }
            }
        }
        if stream.parts.is_empty() {
            let close = stream.close;
            c.stream = None;
            if let Some(log) = c.log.take() {
                self.log_pending(host, &log);
            }
            let Some(c) = self.conns.get_mut(conn) else { return };
            if close {
                c.state.closing = true;
                host.close(conn);
            } else {
                host.resume_recv(conn);
            }
            self.trim_buffers();
        }
    }

    /// Writes the response to a complete request into `self.out` (or its head, returning the
    /// body to stream).
    fn respond(&mut self, req: &Request<'_>, persist: Persist) -> Response {
        let method = req.method();
        let head_only = method == Method::Head;
        if method == Method::Other {
            return self.error(Status::NOT_IMPLEMENTED, persist, head_only, &[]);
        }
        let echo = self.config.echo;
        let root_allow: &[u8] = if echo { b"GET, HEAD, OPTIONS, POST, PUT" } else { b"GET, HEAD, OPTIONS" };
        if req.target() == "*" {
            return match method {
                Method::Options => self.options(root_allow, persist),
                _ => self.error(Status::BAD_REQUEST, persist, head_only, &[]),
            };
        }
        let path = req.path().as_bytes();
        if path.first() != Some(&b'/') {
            return self.error(Status::BAD_REQUEST, persist, head_only, &[]);
        }
        let is_root = path == b"/";
        if is_root && echo && matches!(method, Method::Post | Method::Put) {
            return self.echo(req.body(), persist);
        }
        let allow: &[u8] = if is_root { root_allow } else { b"GET, HEAD, OPTIONS" };
        let get = matches!(method, Method::Get | Method::Head);
        let lookup = self.files.as_ref().map(|files| files.lookup(path));
        match lookup {
            Some(Lookup::Forbidden) => self.error(Status::FORBIDDEN, persist, head_only, &[]),
            Some(Lookup::BadPath) => self.error(Status::BAD_REQUEST, persist, head_only, &[]),
            None | Some(Lookup::NotFound) if !is_root => self.error(Status::NOT_FOUND, persist, head_only, &[]),
            _ if method == Method::Options => self.options(allow, persist),
            _ if !get => self.error(Status::METHOD_NOT_ALLOWED, persist, head_only, &[("Allow", allow)]),
            None | Some(Lookup::NotFound) => self.hello(persist, head_only),
            Some(Lookup::File(found)) => self.file(req, found, persist),
            Some(Lookup::Redirect) => {
                let mut location = req.path().to_string();
                location.push('/');
                if let Some(q) = req.query() {
                    location.push('?');
                    location.push_str(q);
                }
                self.error(Status::MOVED_PERMANENTLY, persist, head_only, &[("Location", location.as_bytes())])
            }
            Some(Lookup::Listing(dir)) => self.listing(req, &dir, persist, head_only),
        }
    }

    fn error(&mut self, status: Status, persist: Persist, head_only: bool, extra: &[(&str, &[u8])]) -> Response {
        response::write_error(&mut self.out, status, self.date.get(), persist, head_only, extra);
        Response::Whole
    }

    fn hello(&mut self, persist: Persist, head_only: bool) -> Response {
        response::begin(&mut self.out, Status::OK, self.date.get());
        response::header(&mut self.out, "Content-Type", b"text/plain");
        response::finish(&mut self.out, HELLO.len() as u64, persist);
        if !head_only {
            self.out.extend_from_slice(HELLO);
        }
        Response::Whole
    }

    fn options(&mut self, allow: &[u8], persist: Persist) -> Response {
        response::begin(&mut self.out, Status::OK, self.date.get());
        response::header(&mut self.out, "Allow", allow);
        response::finish(&mut self.out, 0, persist);
        Response::Whole
    }

    /// Sends the request body back.
    fn echo(&mut self, body: &[u8], persist: Persist) -> Response {
        response::begin(&mut self.out, Status::OK, self.date.get());
        response::header(&mut self.out, "Content-Type", b"application/octet-stream");
        response::finish(&mut self.out, body.len() as u64, persist);
        self.out.extend_from_slice(body);
        Response::Whole
    }

    /// A directory listing (`autoindex`), names HTML-escaped and links percent-encoded.
    fn listing(
        &mut self,
        req: &Request<'_>,
        dir: &std::os::fd::OwnedFd,
        persist: Persist,
        head_only: bool,
    ) -> Response {
        let Some(files) = &self.files else { return Response::Whole };
        let names = match files.list(dir) {
            Ok(names) => names,
            Err(e) => {
                plugin_api::tracing::warn!(path = req.path(), error = %e, "could not list directory");
                return self.error(Status::INTERNAL_ERROR, persist, head_only, &[]);
            }
        };
        let title = html_escape(&http_proto::percent_decode(req.path()));
        let mut html = format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
             <body><h1>Index of {title}</h1>\n<ul>\n"
        );
        if req.path() != "/" {
            html.push_str("<li><a href=\"../\">../</a></li>\n");
        }
        for name in &names {
            html.push_str(&format!("<li><a href=\"{}\">{}</a></li>\n", href_escape(name), html_escape(name)));
        }
        html.push_str("</ul></body></html>\n");
        response::begin(&mut self.out, Status::OK, self.date.get());
        response::header(&mut self.out, "Content-Type", b"text/html; charset=utf-8");
        response::finish(&mut self.out, html.len() as u64, persist);
        if !head_only {
            self.out.extend_from_slice(html.as_bytes());
        }
        Response::Whole
    }

    /// Serves a file found under the root: representation, preconditions, ranges.
    fn file(&mut self, req: &Request<'_>, found: Found, persist: Persist) -> Response {
        let head_only = req.method() == Method::Head;
        let Found { mut file, mut meta, rel } = found;
        if meta.len > self.config.max_file {
            let path = String::from_utf8_lossy(&rel);
            plugin_api::tracing::warn!(%path, len = meta.len, max_file = self.config.max_file, "file too large to serve");
            return self.error(Status::INTERNAL_ERROR, persist, head_only, &[]);
        }
        let content_type = files::content_type(&rel);
        let negotiated = files::compressible(&content_type) && (self.config.precompressed || self.config.gzip);
        let range = req.header("range").filter(|_| req.method() == Method::Get);
        let accept = req.header("accept-encoding").unwrap_or_default();
        // The representation: a precompressed sibling, gzip made now, or the file as stored.
        let mut encoding: Option<&'static str> = None;
        let mut gzip_now = false;
        if negotiated && self.config.precompressed {
            for (coding, ext) in [("br", ".br"), ("gzip", ".gz")] {
                if !accepts(accept, coding) {
                    continue;
                }
                if let Some((f, m)) = self.files.as_ref().and_then(|files| files.sibling(&rel, ext)) {
                    (file, meta, encoding) = (f, m, Some(coding));
                    break;
                }
            }
        }
        if negotiated && encoding.is_none() && self.config.gzip && range.is_none() {
            gzip_now = (self.config.gzip_min..=GZIP_MAX).contains(&meta.len) && accepts(accept, "gzip");
            encoding = gzip_now.then_some("gzip");
        }
        let tag = conditional::etag(&meta, self.config.etag, if gzip_now { "-gzip" } else { "" });
        let last_modified = response::format_http_date(meta.mtime);
        let cache_control = self.cache_control(&rel).map(str::to_owned);
        let validators = |out: &mut Vec<u8>| {
            response::header(out, "ETag", tag.as_bytes());
            response::header(out, "Last-Modified", &last_modified);
            if let Some(cc) = &cache_control {
                response::header(out, "Cache-Control", cc.as_bytes());
            }
            if negotiated {
                response::header(out, "Vary", b"Accept-Encoding");
            }
        };
        match conditional::evaluate(req, &tag, meta.mtime, self.date.secs()) {
            Outcome::Failed => return self.error(Status::PRECONDITION_FAILED, persist, head_only, &[]),
            Outcome::NotModified => {
                response::begin(&mut self.out, Status::NOT_MODIFIED, self.date.get());
                validators(&mut self.out);
                response::finish_bodiless(&mut self.out, persist);
                return Response::Whole;
            }
            Outcome::Proceed => {}
        }
        let start = self.out.len();
        if gzip_now {
            let body = match gzip_file(&file, meta.len) {
                Ok(body) => body,
                Err(e) => return self.read_failed(&rel, &e, start, persist),
            };
            response::begin(&mut self.out, Status::OK, self.date.get());
            response::header(&mut self.out, "Content-Type", content_type.as_bytes());
            response::header(&mut self.out, "Content-Encoding", b"gzip");
            validators(&mut self.out);
            response::finish(&mut self.out, body.len() as u64, persist);
            if !head_only {
                self.out.extend_from_slice(&body);
            }
            return Response::Whole;
        }
        let ranges = match range {
            Some(value) if conditional::if_range_holds(req, &tag, meta.mtime) => ranges::parse(value, meta.len),
            _ => Ranges::Whole,
        };
        let status = match &ranges {
            Ranges::Unsatisfiable => {
                let content_range = format!("bytes */{}", meta.len);
                return self.error(
                    Status::RANGE_NOT_SATISFIABLE,
                    persist,
                    head_only,
                    &[("Content-Range", content_range.as_bytes()), ("Accept-Ranges", b"bytes")],
                );
            }
            Ranges::Whole => Status::OK,
            Ranges::Parts(_) => Status::PARTIAL_CONTENT,
        };
        response::begin(&mut self.out, status, self.date.get());
        response::header(&mut self.out, "Accept-Ranges", b"bytes");
        if let Some(coding) = encoding {
            response::header(&mut self.out, "Content-Encoding", coding.as_bytes());
        }
        validators(&mut self.out);
        let (parts, total) = match &ranges {
            Ranges::Parts(list) if list.len() == 1 => {
                let one = &list[0];
                let cr = format!("bytes {}-{}/{}", one.start, one.end - 1, meta.len);
                response::header(&mut self.out, "Content-Type", content_type.as_bytes());
                response::header(&mut self.out, "Content-Range", cr.as_bytes());
                (VecDeque::from([Part::File { offset: one.start, len: one.end - one.start }]), one.end - one.start)
            }
            Ranges::Parts(list) => {
                let boundary = boundary(&tag);
                let ct = format!("multipart/byteranges; boundary={boundary}");
                response::header(&mut self.out, "Content-Type", ct.as_bytes());
                multipart(list, &boundary, &content_type, meta.len)
            }
            _ => {
                response::header(&mut self.out, "Content-Type", content_type.as_bytes());
                (VecDeque::from([Part::File { offset: 0, len: meta.len }]), meta.len)
            }
        };
        response::finish(&mut self.out, total, persist);
        if head_only {
            return Response::Whole;
        }
        if total <= STREAM_AT {
            match self.body_from_cache(&file, &parts) {
                Ok(true) => return Response::Whole,
                // Not all in the page cache: streamed, its reads off the loop.
                Ok(false) => {}
                Err(e) => return self.read_failed(&rel, &e, start, persist),
            }
        }
        Response::Streamed { file: Arc::new(file), parts }
    }

    /// Appends a small body to `self.out` when the page cache holds all of it (true); leaves
    /// `self.out` as it was when some would have to come from the disk (false).
    fn body_from_cache(&mut self, file: &File, parts: &VecDeque<Part>) -> io::Result<bool> {
        let body_at = self.out.len();
        for part in parts {
            match part {
                Part::Bytes(bytes) => self.out.extend_from_slice(bytes),
                &Part::File { offset, len } => {
                    let at = self.out.len();
                    self.out.resize(at + len as usize, 0);
                    let mut done = 0;
                    while done < len as usize {
                        match read_cached(file, &mut self.out[at + done..], offset + done as u64, &mut self.nowait) {
                            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                            Ok(n) => done += n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                self.out.truncate(body_at);
                                return Ok(false);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
        Ok(true)
    }

    fn read_failed(&mut self, rel: &[u8], e: &std::io::Error, start: usize, persist: Persist) -> Response {
        let path = String::from_utf8_lossy(rel);
        plugin_api::tracing::warn!(%path, error = %e, "could not read file");
        self.out.truncate(start);
        self.error(Status::INTERNAL_ERROR, persist, false, &[])
    }

    fn cache_control(&self, rel: &[u8]) -> Option<&str> {
        let name = rel.rsplit(|&b| b == b'/').next().unwrap_or_default();
        let ext = name.iter().rposition(|&b| b == b'.').map(|i| String::from_utf8_lossy(&name[i + 1..]).to_lowercase());
        ext.and_then(|ext| self.config.cache_control_by_ext.get(&ext))
            .or(self.config.cache_control.as_ref())
            .map(String::as_str)
    }

    fn trim_buffers(&mut self) {
        if self.out.capacity() > RETAIN_BUFFER {
            self.out = Vec::with_capacity(4096);
        }
        if self.chunk.capacity() > RETAIN_BUFFER {
            self.chunk = Vec::new();
        }
    }
}

const HELLO: &[u8] = b"Hello, World!";

/// The file shrank (or broke) under a streamed body: the length is promised, so the only honest
/// end is a closed connection.
fn end_early(host: &mut Host<'_>, conn: ConnId, c: &mut Conn) {
    let remaining = c.stream.as_ref().map_or(0, |s| s.parts.iter().map(Part::len).sum::<u64>());
    plugin_api::tracing::warn!(remaining, "streamed file ended early; closing");
    c.stream = None;
    c.state.closing = true;
    host.close(conn);
}

/// Reads what the page cache holds at `offset` into `buf`, without waiting for the disk
/// (`preadv2` with `RWF_NOWAIT`): `WouldBlock` when none of it is cached (or the kernel cannot
/// say: then `nowait` turns false and every later call answers `WouldBlock` at once).
pub fn read_cached(file: &File, buf: &mut [u8], offset: u64, nowait: &mut bool) -> io::Result<usize> {
    use rustix::io::{Errno, ReadWriteFlags};
    if !*nowait {
        return Err(io::ErrorKind::WouldBlock.into());
    }
    loop {
        match rustix::io::preadv2(file, &mut [io::IoSliceMut::new(buf)], offset, ReadWriteFlags::NOWAIT) {
            Ok(n) => return Ok(n),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            // No RWF_NOWAIT here (an old kernel, a file system without it).
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                *nowait = false;
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// A read on the task pool: up to `want` bytes at `offset` (fewer at the end of the file; none
/// when it failed, which ends the body early).
fn read_on_pool(file: &File, offset: u64, want: usize) -> Vec<u8> {
    let mut buf = vec![0; want];
    let mut done = 0;
    while done < want {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                plugin_api::tracing::warn!(error = %e, "could not read file");
                break;
            }
        }
    }
    buf.truncate(done);
    buf
}

/// The parts of a `multipart/byteranges` body (RFC 9110 §14.6) and its length.
fn multipart(list: &[std::ops::Range<u64>], boundary: &str, content_type: &str, len: u64) -> (VecDeque<Part>, u64) {
    let mut parts = VecDeque::with_capacity(list.len() * 2 + 1);
    let mut total = 0;
    for (i, r) in list.iter().enumerate() {
        let lead = if i == 0 { "" } else { "\r\n" };
        let head = format!(
            "{lead}--{boundary}\r\nContent-Type: {content_type}\r\nContent-Range: bytes {}-{}/{len}\r\n\r\n",
            r.start,
            r.end - 1
        );
        total += head.len() as u64 + (r.end - r.start);
        parts.push_back(Part::Bytes(head.into_bytes()));
        parts.push_back(Part::File { offset: r.start, len: r.end - r.start });
    }
    let end = format!("\r\n--{boundary}--\r\n");
    total += end.len() as u64;
    parts.push_back(Part::Bytes(end.into_bytes()));
    (parts, total)
}

/// A multipart boundary: derived from the entity tag (so a repeated request gets the same body),
/// in characters a boundary may have and a file's bytes are unlikely to repeat by chance.
fn boundary(tag: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tag.hash(&mut h);
    format!("host-byteranges-{:016x}", h.finish())
}

/// Whether an `Accept-Encoding` value accepts `coding` (by name or `*`, with a q-value above 0).
pub fn accepts(value: &[u8], coding: &str) -> bool {
    let mut named = None;
    let mut star = None;
    for item in value.split(|&b| b == b',') {
        let mut params = item.split(|&b| b == b';');
        let name = params.next().unwrap_or_default().trim_ascii();
        let q = params
            .filter_map(|p| p.trim_ascii().strip_prefix(b"q=").or_else(|| p.trim_ascii().strip_prefix(b"Q=")))
            .next()
            .and_then(|q| std::str::from_utf8(q).ok()?.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(coding.as_bytes()) {
            named = Some(q > 0.0);
        } else if name == b"*" {
            star = Some(q > 0.0);
        }
    }
    named.or(star).unwrap_or(false)
}

fn gzip_file(file: &File, len: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut plain = vec![0; len as usize];
    file.read_exact_at(&mut plain, 0)?;
    let mut enc =
        flate2::write::GzEncoder::new(Vec::with_capacity(plain.len() / 3 + 64), flate2::Compression::default());
    enc.write_all(&plain)?;
    enc.finish()
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a name for a relative link (a trailing `/` of a directory kept).
fn href_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let (body, slash) = match name.strip_suffix('/') {
        Some(b) => (b, "/"),
        None => (name, ""),
    };
    for &b in body.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out.push_str(slash);
    // `./` first: a name with a colon must not read as a scheme.
    format!("./{out}")
}

export_plugin!(Http);

#[cfg(test)]
mod tests;
