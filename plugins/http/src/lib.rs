//! HTTP/1.1 for host: a static-file server browsers are happy with, on the `http_proto`
//! library (keep-alive, HTTP/1.0, pipelining, `Content-Length` and chunked request bodies,
//! `Expect: 100-continue`, strict RFC 9112 checks), and HTTP/2 (the `h2conn` module: a
//! connection that starts with the client preface, h2c in cleartext or `h2` by ALPN over TLS,
//! served by the same routes).
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
//! h2 = true                # HTTP/2 over TLS: `h2` offered by ALPN (false: http/1.1 only)
//! h2c = true               # HTTP/2 in cleartext, on connections that start with its preface
//! ```
//! Counters in the host's `/metrics` (admin listener): `host_plugin_http_responses_total{class}`,
//! and for HTTP/2 `host_plugin_http2_connections_total`, `_streams_total`, `_defences_total`,
//! `_frames_total` and `_errors_total` by `kind` (see `h2metrics`).
//!
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
//! are answered in order. Over HTTP/2 file bodies are always read as with `file_io = "pool"`
//! (DATA frames need the bytes), a window at a time. On a host older than plugin-api 0.1.2 (no
//! `send_file`, no task pool) the plugin reads in the loop, as it did before. On-the-fly gzip (at most 1 MiB) still reads
//! and compresses in the loop. The figures behind the default: docs/architecture.md.
//!
//! On a reload, upgrade or recycle its connections move to the replacement worker instead of
//! draining (keep-alive, a request half received, a file body in flight, HTTP/2 with its HPACK
//! state and windows): see `handover.rs` and docs/plugins.md, "Hand-over".
//!
//! Layout: this file answers requests (routes, files, representations); `config` holds the
//! settings, `stream` the streamed file bodies, `listing` the directory listings, `log` the
//! access-log lines; [`files`], [`conditional`] and [`ranges`] are pure helpers.

pub mod conditional;
mod config;
pub mod files;
mod h2conn;
mod h2metrics;
mod handover;
mod listing;
mod log;
pub mod ranges;
mod stream;

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use http_proto::access_log::{self, LogFormat, LogTime};
use http_proto::response::{self, DateCache};
use http_proto::Delivered;
use plugin_api::{
    export_plugin, ConnError, ConnId, ConnMap, Counter, Frame, Host, Protocol, StateWriter, TaskId, WorkerInfo,
};

pub use http_proto::{chunked, parse, persist, request_path, ConnState, Limits, Method, Persist, Request, Status};

pub use crate::config::{AccessLogFormat, Config, FileIo};
pub use crate::stream::read_cached;

use crate::conditional::Outcome;
use crate::files::{Files, Found, Lookup};
use crate::h2conn::H2;
use crate::h2metrics::{ConnEvent, H2Counters};
use crate::log::{PendingLog, MAX_LOGGED_LINE};
use crate::ranges::Ranges;
use crate::stream::{end_early, Part, Stream, STREAM_AT};

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
    /// An HTTP/2 request rebuilt as an HTTP/1.1 head (reused).
    h2_head: Vec<u8>,
    date: DateCache,
    /// File reads running on the host's task pool, and the connection each is for.
    reads: HashMap<TaskId, ConnId>,
    /// The same for HTTP/2 file bodies: the connection and the stream.
    h2_reads: HashMap<TaskId, (ConnId, u32)>,
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
    /// The HTTP/2 defences' and frames' counters.
    h2_counters: H2Counters,
    /// The service has an access log (else no line is formatted).
    access_log: bool,
    log_format: LogFormat,
    log_time: LogTime,
    /// The access-log line being written (reused).
    log_line: Vec<u8>,
    /// Stands in a connection's entry while its request is answered (see `on_message`).
    spare_state: Option<Box<ConnState>>,
}

/// What [`Http::respond`] wrote into `out`: a whole response, or the head of one whose body
/// streams after it.
#[derive(Debug)]
enum Response {
    Whole,
    Streamed { file: Arc<File>, parts: VecDeque<Part> },
}

/// Per-connection state.
#[derive(Debug, Default)]
struct Conn {
    /// Boxed: moved out of the entry and back for every request (a pointer, not the state).
    state: Box<ConnState>,
    /// A file body being sent a send buffer at a time.
    stream: Option<Stream>,
    /// Its access-log line, written when the stream ends or the connection closes.
    log: Option<Box<PendingLog>>,
    /// The connection speaks HTTP/2 (it began with the client preface).
    h2: Option<Box<H2>>,
    /// The connection speaks HTTP/1.x (its first bytes were not the preface).
    http1: bool,
}

/// Files compressed on the fly at most (read and compressed whole).
const GZIP_MAX: u64 = 1024 * 1024;
/// Buffers grown past this by a large response are given back after it.
const RETAIN_BUFFER: usize = 256 * 1024;
impl Protocol for Http {
    const HANDOVER_VERSION: u32 = handover::STATE_VERSION;

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
            h2_head: Vec::new(),
            date: Default::default(),
            reads: HashMap::new(),
            h2_reads: HashMap::new(),
            nowait: true,
            // The host takes a send whole while less than its send buffer is pending (issue #15:
            // a window above it sent into a full buffer, and the refused bytes were lost).
            send_window: worker.max_send_buffer.max(1),
            send_file,
            responses: [None; 5],
            h2_counters: H2Counters::default(),
            access_log: false,
            log_format,
            log_time: LogTime::default(),
            log_line: Vec::new(),
            spare_state: None,
        })
    }

    fn on_worker_start(&mut self, host: &mut Host<'_>) -> Result<(), String> {
        for (i, counter) in self.responses.iter_mut().enumerate() {
            let class = format!("class={}xx", i + 1);
            *counter = host.counter("http_responses", &class, "HTTP responses by status class");
        }
        self.h2_counters = H2Counters::register(host);
        // An empty line writes nothing: it asks whether the service keeps an access log.
        self.access_log = host.access_log(b"");
        // Over TLS, `h2` is offered by ALPN only while HTTP/2 is on (a service's `tls_alpn`
        // still wins; a host older than plugin-api 0.1.4 offers its default list).
        let alpn: &[&str] = if self.config.h2 { &["h2", "http/1.1", "http/1.0"] } else { &["http/1.1", "http/1.0"] };
        host.set_alpn(alpn);
        Ok(())
    }

    fn input(&mut self, host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame {
        let c = self.conns.entry(conn);
        if let Some(h2) = &c.h2 {
            return h2.frame(buf);
        }
        if !c.http1 {
            use http_proto::h2::{serve::PREFACE_LEN, Start};
            let mode = http_proto::h2::mode(self.config.h2, self.config.h2c, host, conn);
            match http_proto::h2::start(mode, buf) {
                Start::Http1 => c.http1 = true,
                // The preface alone is the first message; its SETTINGS go with the answer.
                Start::Http2 => {
                    c.h2 = Some(Box::new(H2::new()));
                    self.h2_counters.connection(host, ConnEvent::Opened);
                    return Frame::Complete(PREFACE_LEN);
                }
                Start::NeedMore => return Frame::NeedMore,
                Start::Invalid => {
                    plugin_api::tracing::debug!(conn = conn.0, "ALPN agreed h2 but no HTTP/2 preface; closed");
                    return Frame::Invalid;
                }
            }
        }
        let state = &mut c.state;
        let frame = state.input(host, conn, buf, &self.limits, self.max_message, &mut self.date, &mut self.out);
        if frame == Frame::Invalid {
            // The parser refused the request and queued its error answer.
            self.log_out(host, conn, access_log::request_line(buf, MAX_LOGGED_LINE), None, None);
        }
        frame
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        let c = self.conns.entry(conn);
        if c.h2.is_some() {
            return self.h2_message(host, conn, msg);
        }
        // Out of its entry while the request is answered (which needs the whole plugin): swapped
        // with a spare, so two pointers move, not the state (allocated once, not per request).
        let spare = self.spare_state.take().unwrap_or_default();
        let mut state = std::mem::replace(&mut c.state, spare);
        let mut answered = None;
        let limits = self.limits;
        let delivered = state.on_message(host, msg, &limits, |host, req| {
            let persist = persist(req.head(), host.is_draining());
            self.date.update(host.now_ms());
            self.out.clear();
            let response = self.respond(req, persist);
            let log = self.log_request(host, conn, req, &response, false);
            answered = Some((response, log));
            persist
        });
        let c = self.conns.entry(conn);
        self.spare_state = Some(std::mem::replace(&mut c.state, state));
        let persist = match delivered {
            Delivered::Ignored => return,
            Delivered::Answered(persist) => persist,
            Delivered::Refused(status) => {
                c.state.reject(host, conn, status, &mut self.date, &mut self.out);
                self.log_out(host, conn, access_log::request_line(msg, MAX_LOGGED_LINE), None, None);
                return self.count_response(host);
            }
        };
        match answered {
            Some((Response::Streamed { file, parts }, log)) => {
                // The head goes now; the body follows as the connection drains.
                host.send(conn, &self.out);
                c.stream = Some(Stream { file, parts, close: persist == Persist::Close, reading: false });
                c.log = log;
                host.pause_recv(conn);
                // (Counted from the head in `out` before the body's first piece is read.)
                self.count_response(host);
                self.pump(host, conn);
            }
            _ if persist == Persist::Close => {
                c.state.closing = true;
                host.close_with(conn, &self.out);
                self.count_response(host);
            }
            _ => {
                host.send(conn, &self.out);
                self.count_response(host);
            }
        }
        self.trim_buffers();
    }

    fn on_close(&mut self, host: &mut Host<'_>, conn: ConnId) {
        if let Some(mut c) = self.conns.remove(conn) {
            if let Some(h2) = c.h2.take() {
                self.h2_counters.connection(host, ConnEvent::Closed);
                self.h2_closed(host, h2);
            }
            if let Some(mut log) = c.log.take() {
                // The client went away during a streamed body: what was handed to the host.
                let left: u64 = c.stream.map_or(0, |s| s.parts.iter().map(Part::len).sum());
                log.body = log.body.saturating_sub(left);
                self.log_pending(host, &log);
            }
        }
    }

    fn on_buffer_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        self.h2_resume(host, conn, false);
        self.pump(host, conn);
    }

    fn on_task_done(&mut self, host: &mut Host<'_>, task: TaskId, result: Result<Vec<u8>, String>) {
        if let Some((conn, stream)) = self.h2_reads.remove(&task) {
            return self.h2_read_done(host, conn, stream, result);
        }
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
        if self.conns.get(conn).is_some_and(|c| c.h2.is_some()) {
            return self.h2_error_close(host, conn, err);
        }
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

    fn export_conn(&mut self, _host: &mut Host<'_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
        http_proto::handover::export_conn(conn, out, |state| self.export_state(conn, state))
    }

    fn adopt_conn(&mut self, host: &mut Host<'_>, conn: ConnId, version: u32, state: &[u8]) -> bool {
        version == handover::STATE_VERSION
            && http_proto::handover::adopt_conn(conn, || self.adopt_state(host, conn, state))
    }

    fn on_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        // HTTP/2: GOAWAY with the last stream id; the streams up to it are served, then the
        // connection closes.
        self.h2_resume(host, conn, true);
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
        if req.target_bytes() == b"*" {
            return match method {
                Method::Options => self.options(root_allow, persist),
                _ => self.error(Status::BAD_REQUEST, persist, head_only, &[]),
            };
        }
        let path = req.path_bytes();
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

export_plugin!(Http);

#[cfg(test)]
mod tests;
