//! HTTP/2 connections (RFC 9113, on `http_proto::h2`): a TLS connection whose handshake agreed
//! `h2` by ALPN, or a cleartext one whose first bytes are the client preface (h2c with prior
//! knowledge), speaks HTTP/2 (`h2_mode` in the crate root decides).
//! Each request goes through the same [`Http::respond`] as an HTTP/1.1 one (rebuilt as an
//! HTTP/1.1 head by [`H2Request::http1_head_into`], in a buffer kept between requests); the
//! HTTP/1.1 response it writes is read in place ([`Http1Head`]) and sent as HEADERS and DATA. A file body is read a window at a time (what
//! [`Connection::send_capacity`] admits): from the page cache in the loop, from the disk on the
//! task pool (the stream waits for its read, the others go on), and goes on when a
//! WINDOW_UPDATE (or the host's send buffer draining) makes room; streams waiting for their
//! window never hold up the others.
//! Bytes the windows hold back count against the host's send buffer, as queued output does.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use http_proto::h2::{Config as H2Config, Connection, ErrorCode, Event, H2Request, Http1Head, Stats};
use http_proto::response;
use plugin_api::{ConnError, ConnId, Frame, Host};

use crate::log::PendingLog;
use crate::stream::{read_cached, read_on_pool, Part, STREAM_CHUNK, TASK_READ_MAX};
use crate::{Http, Method, Persist, Request, Response, Status};

/// The HTTP/2 side of one connection.
pub(crate) struct H2 {
    pub(crate) conn: Connection,
    /// The streams the plugin knows of: receiving a request body, or sending a file body.
    pub(crate) streams: BTreeMap<u32, H2Stream>,
    max_frame: usize,
    /// The connection's stats as last added to the worker's counters.
    reported: Stats,
}

impl std::fmt::Debug for H2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2").field("streams", &self.streams.len()).finish_non_exhaustive()
    }
}

#[derive(Default)]
pub(crate) struct H2Stream {
    /// The request, while its body arrives.
    pub(crate) request: Option<H2Request>,
    pub(crate) body: Vec<u8>,
    /// A file body being sent.
    pub(crate) sending: Option<(Arc<File>, VecDeque<Part>)>,
    /// A read of its file runs on the task pool: the stream waits for it.
    pub(crate) reading: bool,
    /// Bytes of the file the task pool read, from the front part's offset on, not sent yet.
    pub(crate) pooled: VecDeque<u8>,
    /// Its access-log line, written when the body is sent (or the stream ends early).
    pub(crate) log: Option<Box<PendingLog>>,
}

impl H2 {
    pub(crate) fn new() -> H2 {
        let config = H2Config::default();
        H2 {
            max_frame: config.max_frame_size as usize,
            conn: Connection::new(config),
            streams: BTreeMap::new(),
            reported: Stats::default(),
        }
    }

    /// A connection handed over from another worker (`handover`), its streams added after.
    pub(crate) fn adopted(conn: Connection) -> H2 {
        H2 { max_frame: conn.max_frame_size(), conn, streams: BTreeMap::new(), reported: Stats::default() }
    }

    /// [`plugin_api::Protocol::input`] on an HTTP/2 connection: the whole frames at the start
    /// of `buf` are one message (or the next frame, which the host then waits for).
    pub(crate) fn frame(&self, buf: &[u8]) -> Frame {
        http_proto::h2::frame_input(buf, self.max_frame)
    }
}

impl Http {
    /// The frames of an HTTP/2 connection: events answered, then file bodies pumped.
    pub(crate) fn h2_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        let Some(mut h2) = self.conns.get_mut(conn).and_then(|c| c.h2.take()) else { return };
        h2.conn.recv(host.now_ms(), msg);
        while let Some(event) = h2.conn.poll_event() {
            match event {
                // Responses already wait at the send buffer's bound (a client that does not open
                // its windows): new requests are refused, unprocessed, until they drain.
                Event::Request { stream, .. }
                    if host.pending_send(conn) + h2.conn.queued_bytes() >= self.send_window =>
                {
                    h2.conn.refuse(stream);
                }
                Event::Request { stream, request, end_stream: true } => {
                    self.h2_serve(host, conn, &mut h2, stream, &request, &[]);
                }
                Event::Request { stream, request, end_stream: false } => {
                    let expect = request.field("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue"));
                    if request.content_length().is_some_and(|n| n > self.config.max_body) {
                        self.h2_error(host, conn, &mut h2, stream, Status::CONTENT_TOO_LARGE);
                        continue;
                    }
                    if expect {
                        let _ = h2.conn.send_continue(stream);
                    }
                    h2.streams.insert(stream, H2Stream { request: Some(request), ..Default::default() });
                }
                Event::Data { stream, data, end_stream } => {
                    h2.conn.release(stream, data.len());
                    let Some(s) = h2.streams.get_mut(&stream).filter(|s| s.request.is_some()) else { continue };
                    if (s.body.len() + data.len()) as u64 > self.config.max_body {
                        h2.streams.remove(&stream);
                        self.h2_error(host, conn, &mut h2, stream, Status::CONTENT_TOO_LARGE);
                        continue;
                    }
                    s.body.extend_from_slice(&data);
                    if end_stream {
                        let s = h2.streams.remove(&stream).unwrap_or_default();
                        if let Some(request) = s.request {
                            self.h2_serve(host, conn, &mut h2, stream, &request, &s.body);
                        }
                    }
                }
                Event::Reset { stream, .. } => {
                    if let Some(s) = h2.streams.remove(&stream) {
                        self.h2_ended_early(host, s);
                    }
                }
                Event::GoAway { .. } => {}
            }
        }
        self.h2_flush(host, conn, h2);
    }

    /// Answers one request: the same response as HTTP/1.1, as HEADERS and DATA.
    fn h2_serve(
        &mut self,
        host: &mut Host<'_>,
        conn: ConnId,
        h2: &mut H2,
        stream: u32,
        request: &H2Request,
        body: &[u8],
    ) {
        // The rebuilt head goes into a buffer kept from request to request.
        let mut raw = std::mem::take(&mut self.h2_head);
        let head = match request.http1_head_into(&self.limits, &mut raw) {
            Ok(head) => head,
            Err(status) => {
                self.h2_head = raw;
                return self.h2_error(host, conn, h2, stream, status);
            }
        };
        let req = Request::new(&head, &raw, body);
        self.date.update(host.now_ms());
        self.out.clear();
        let response = self.respond(&req, Persist::KeepAlive);
        self.count_response(host);
        let log = self.log_request(host, conn, &req, &response, true);
        let head_only = req.method() == Method::Head;
        self.h2_head = raw;
        // The HTTP/1.1 head is read in place, its fields encoded straight into HEADERS.
        let Some(head) = Http1Head::parse(&self.out) else {
            return h2.conn.reset(stream, ErrorCode::INTERNAL_ERROR);
        };
        match response {
            Response::Streamed { file, parts } => {
                if h2.conn.send_fields(stream, head.status, head.fields(), false).is_ok() {
                    h2.streams.insert(stream, H2Stream { sending: Some((file, parts)), log, ..Default::default() });
                }
            }
            Response::Whole => {
                let body = if head_only { &[][..] } else { &self.out[head.body_at..] };
                if h2.conn.send_fields(stream, head.status, head.fields(), body.is_empty()).is_ok() && !body.is_empty()
                {
                    let _ = h2.conn.send_data(stream, body, true);
                }
            }
        }
        self.trim_buffers();
    }

    /// Answers `stream` with an error status (the request is not read further).
    fn h2_error(&mut self, host: &mut Host<'_>, conn: ConnId, h2: &mut H2, stream: u32, status: Status) {
        self.date.update(host.now_ms());
        self.out.clear();
        response::write_error(&mut self.out, status, self.date.get(), Persist::KeepAlive, false, &[]);
        self.count_response(host);
        self.log_out(host, conn, None, None, None);
        let Some(head) = Http1Head::parse(&self.out) else { return };
        let body = &self.out[head.body_at..];
        if h2.conn.send_fields(stream, head.status, head.fields(), body.is_empty()).is_ok() && !body.is_empty() {
            let _ = h2.conn.send_data(stream, body, true);
        }
    }

    /// A stream that ended before its body was sent: its log line says how much was.
    fn h2_ended_early(&mut self, host: &mut Host<'_>, s: H2Stream) {
        if let Some(mut log) = s.log {
            let left: u64 = s.sending.map_or(0, |(_, parts)| parts.iter().map(Part::len).sum());
            log.body = log.body.saturating_sub(left);
            self.log_pending(host, &log);
        }
    }

    /// Sends file bodies as far as the windows and the host's send buffer admit.
    fn h2_pump(&mut self, host: &mut Host<'_>, conn: ConnId, h2: &mut H2) {
        let ids: Vec<u32> = h2.streams.iter().filter(|(_, s)| s.sending.is_some()).map(|(&id, _)| id).collect();
        for id in ids {
            loop {
                if host.pending_send(conn) + h2.conn.queued_bytes() >= self.send_window {
                    return;
                }
                let Some(s) = h2.streams.get_mut(&id) else { break };
                let cap = h2.conn.send_capacity(id);
                if cap == 0 || s.reading {
                    break;
                }
                let H2Stream { sending, reading, pooled, .. } = s;
                let Some((file, parts)) = sending.as_mut() else { break };
                let last = parts.len() <= 1;
                let done = match parts.front_mut() {
                    None => h2.conn.send_data(id, &[], true).map(|()| true),
                    Some(Part::Bytes(bytes)) => {
                        let sent = h2.conn.send_data(id, bytes, last).map(|()| last);
                        parts.pop_front();
                        sent
                    }
                    Some(Part::File { offset, len }) => {
                        let want = usize::try_from(*len).unwrap_or(usize::MAX).min(cap);
                        let read = if !pooled.is_empty() {
                            // What the task pool read comes first.
                            let k = want.min(pooled.len());
                            self.chunk.clear();
                            self.chunk.extend(pooled.drain(..k));
                            Ok(k)
                        } else {
                            // What the page cache holds is read here, the rest on the task pool.
                            self.chunk.resize(want.min(STREAM_CHUNK), 0);
                            match read_cached(file, &mut self.chunk, *offset, &mut self.nowait) {
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                    let (at, n) = (*offset, want.clamp(STREAM_CHUNK, TASK_READ_MAX));
                                    let n = n.min(usize::try_from(*len).unwrap_or(usize::MAX));
                                    let shared = Arc::clone(file);
                                    match host.spawn_task(move || read_on_pool(&shared, at, n)) {
                                        Ok(task) => {
                                            *reading = true;
                                            self.h2_reads.insert(task, (conn, id));
                                            break;
                                        }
                                        // No pool (an older host) or its queue is full: here.
                                        Err(_) => read_at(file, &mut self.chunk, *offset),
                                    }
                                }
                                other => other,
                            }
                        };
                        match read {
                            Ok(k) if k > 0 => {
                                *offset += k as u64;
                                *len -= k as u64;
                                let end = last && *len == 0;
                                if *len == 0 {
                                    parts.pop_front();
                                }
                                h2.conn.send_data(id, &self.chunk[..k], end).map(|()| end)
                            }
                            Ok(_) | Err(_) => {
                                plugin_api::tracing::warn!("streamed file ended early; stream reset");
                                h2.conn.reset(id, ErrorCode::INTERNAL_ERROR);
                                Ok(true)
                            }
                        }
                    }
                };
                match done {
                    Ok(false) => {}
                    // Sent whole, or the stream is gone.
                    Ok(true) | Err(_) => {
                        if let Some(s) = h2.streams.remove(&id) {
                            self.h2_ended_early(host, s);
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Pumps the file bodies and hands the connection's output to the host while its send
    /// buffer takes it whole (the host may write it at once: then the bodies go on, until the
    /// buffer stays full, which `on_buffer_drain` resumes, or the windows are shut, which a
    /// WINDOW_UPDATE resumes); closes the connection once HTTP/2 is done with it.
    fn h2_flush(&mut self, host: &mut Host<'_>, conn: ConnId, mut h2: Box<H2>) {
        loop {
            self.h2_pump(host, conn, &mut h2);
            if !h2.conn.has_output() || host.pending_send(conn) >= self.send_window {
                break;
            }
            // Sent from the connection's own buffer, which it keeps for the next output.
            if !host.send(conn, h2.conn.output()) {
                break;
            }
            h2.conn.output_sent();
        }
        let done = h2.conn.is_done() && !h2.conn.has_output();
        let H2 { conn: ref h2conn, ref mut reported, .. } = *h2;
        self.h2_counters.report(host, h2conn.stats(), reported);
        let Some(c) = self.conns.get_mut(conn) else { return };
        c.h2 = Some(h2);
        if done {
            c.state.closing = true;
            host.close(conn);
        }
    }

    /// The host's send buffer drained, or the worker drains (`drain`: GOAWAY first).
    pub(crate) fn h2_resume(&mut self, host: &mut Host<'_>, conn: ConnId, drain: bool) {
        let Some(mut h2) = self.conns.get_mut(conn).and_then(|c| c.h2.take()) else { return };
        if drain {
            h2.conn.drain();
        }
        self.h2_flush(host, conn, h2);
    }

    /// The host reports an error on the connection: it closes, with GOAWAY first for a timeout
    /// (`http_proto::h2::serve::close_on_error`).
    pub(crate) fn h2_error_close(&mut self, host: &mut Host<'_>, conn: ConnId, err: ConnError) {
        if err == ConnError::Timeout && self.conns.get(conn).is_some_and(|c| c.h2.is_some()) {
            self.h2_counters.connection(host, crate::h2metrics::ConnEvent::TimedOut);
        }
        let Some(c) = self.conns.get_mut(conn) else { return host.close(conn) };
        c.state.closing = true;
        http_proto::h2::serve::close_on_error(host, conn, c.h2.as_mut().map(|h| &mut h.conn), err, self.send_window);
    }

    /// A read of the task pool for `stream` of `conn` ended: its bytes go out as the windows
    /// admit; none (the file shrank, or broke) resets the stream.
    pub(crate) fn h2_read_done(
        &mut self,
        host: &mut Host<'_>,
        conn: ConnId,
        stream: u32,
        result: Result<Vec<u8>, String>,
    ) {
        let Some(mut h2) = self.conns.get_mut(conn).and_then(|c| c.h2.take()) else { return };
        if let Some(s) = h2.streams.get_mut(&stream) {
            s.reading = false;
            match result {
                Ok(bytes) if !bytes.is_empty() => s.pooled.extend(bytes),
                _ => {
                    plugin_api::tracing::warn!("streamed file ended early; stream reset");
                    h2.conn.reset(stream, ErrorCode::INTERNAL_ERROR);
                    if let Some(s) = h2.streams.remove(&stream) {
                        self.h2_ended_early(host, s);
                    }
                }
            }
        }
        self.h2_flush(host, conn, h2);
    }

    /// The connection closed: the log lines of bodies cut short.
    pub(crate) fn h2_closed(&mut self, host: &mut Host<'_>, h2: Box<H2>) {
        for (_, s) in h2.streams {
            self.h2_ended_early(host, s);
        }
    }
}

/// Reads a whole `buf` at `offset` (an error when the file ends before it).
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    file.read_exact_at(buf, offset)?;
    Ok(buf.len())
}
