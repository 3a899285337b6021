//! [`AppServer`] over HTTP/2: each request of an h2 connection is rebuilt as an HTTP/1.1 head
//! ([`H2Request::http1_head`]), answered by the same [`App::handle`], and its response goes out
//! as HEADERS and DATA, as far as the peer's windows and the host's send buffer admit.

use std::collections::BTreeMap;

use plugin_api::{ConnError, ConnId, Host};

use crate::app::{App, AppServer};
use crate::h2::{Config, Connection, ErrorCode, Event, H2Request, Http1Head};
use crate::parse::Method;
use crate::request::Request;
use crate::response::{self, Persist, Status};

/// The HTTP/2 side of one connection.
pub(crate) struct AppH2 {
    conn: Connection,
    /// Requests whose body is still arriving.
    bodies: BTreeMap<u32, (H2Request, Vec<u8>)>,
    max_frame: usize,
}

impl std::fmt::Debug for AppH2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppH2").field("bodies", &self.bodies.len()).finish_non_exhaustive()
    }
}

impl AppH2 {
    pub(crate) fn new() -> AppH2 {
        let config = Config::default();
        AppH2 { max_frame: config.max_frame_size as usize, conn: Connection::new(config), bodies: BTreeMap::new() }
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Its state for a hand-over (`app_handover`): the connection's; one with a request body
    /// arriving stays.
    pub(crate) fn export(&self, out: &mut Vec<u8>) -> Result<(), crate::handover::Decline> {
        if !self.bodies.is_empty() {
            return Err("an HTTP/2 request body is being received");
        }
        self.conn.export(out)
    }

    /// A connection handed over with [`AppH2::export`]'s state.
    pub(crate) fn adopt(r: &mut crate::handover::Reader<'_>, now_ms: u64) -> Result<AppH2, String> {
        let conn = Connection::adopt(r, now_ms)?;
        Ok(AppH2 { max_frame: conn.max_frame_size(), conn, bodies: BTreeMap::new() })
    }
}

impl<A: App> AppServer<A> {
    /// The frames of an HTTP/2 connection: requests answered, output handed to the host.
    pub(crate) fn h2_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        let Some(mut h2) = self.conns.get_mut(conn).and_then(|c| c.h2.take()) else { return };
        h2.conn.recv(host.now_ms(), msg);
        let max_body = self.limits.max_body;
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
                    self.h2_serve(host, &mut h2, stream, &request, &[])
                }
                Event::Request { stream, request, end_stream: false } => {
                    if request.content_length().is_some_and(|n| n > max_body) {
                        self.h2_error(host, &mut h2, stream, Status::CONTENT_TOO_LARGE);
                        continue;
                    }
                    if request.field("expect").is_some_and(|v| v.eq_ignore_ascii_case(b"100-continue")) {
                        let _ = h2.conn.send_continue(stream);
                    }
                    h2.bodies.insert(stream, (request, Vec::new()));
                }
                Event::Data { stream, data, end_stream } => {
                    h2.conn.release(stream, data.len());
                    let Some((_, body)) = h2.bodies.get_mut(&stream) else { continue };
                    if (body.len() + data.len()) as u64 > max_body {
                        h2.bodies.remove(&stream);
                        self.h2_error(host, &mut h2, stream, Status::CONTENT_TOO_LARGE);
                        continue;
                    }
                    body.extend_from_slice(&data);
                    if end_stream {
                        if let Some((request, body)) = h2.bodies.remove(&stream) {
                            self.h2_serve(host, &mut h2, stream, &request, &body);
                        }
                    }
                }
                Event::Reset { stream, .. } => {
                    h2.bodies.remove(&stream);
                }
                Event::GoAway { .. } => {}
            }
        }
        self.h2_flush(host, conn, h2);
    }

    /// Answers one request with the application's response.
    fn h2_serve(&mut self, host: &mut Host<'_>, h2: &mut AppH2, stream: u32, request: &H2Request, body: &[u8]) {
        let (raw, head) = match request.http1_head(&self.limits) {
            Ok(rebuilt) => rebuilt,
            Err(status) => return self.h2_error(host, h2, stream, status),
        };
        let req = Request::new(&head, &raw, body);
        self.res.clear();
        self.app.handle(&req, &mut self.res);
        self.date.update(host.now_ms());
        self.out.clear();
        let head_only = req.method() == Method::Head;
        // As for HTTP/1.0: a chunked body is sent whole, with its length (h2 has no chunks).
        self.res.write_to(&mut self.out, self.date.get(), Persist::KeepAlive, head_only, 0);
        self.h2_send(h2, stream);
    }

    /// Answers `stream` with an error status (its request is not read further).
    fn h2_error(&mut self, host: &mut Host<'_>, h2: &mut AppH2, stream: u32, status: Status) {
        self.date.update(host.now_ms());
        self.out.clear();
        response::write_error(&mut self.out, status, self.date.get(), Persist::KeepAlive, false, &[]);
        self.h2_send(h2, stream);
    }

    /// The HTTP/1.1 response in `self.out`, as HEADERS and DATA on `stream`.
    fn h2_send(&mut self, h2: &mut AppH2, stream: u32) {
        let Some(head) = Http1Head::parse(&self.out) else {
            return h2.conn.reset(stream, ErrorCode::INTERNAL_ERROR);
        };
        let body = &self.out[head.body_at..];
        if h2.conn.send_fields(stream, head.status, head.fields(), body.is_empty()).is_ok() && !body.is_empty() {
            let _ = h2.conn.send_data(stream, body, true);
        }
        if self.out.capacity() > 256 * 1024 {
            self.out = Vec::with_capacity(4096);
        }
    }

    /// Hands the connection's output to the host while its send buffer is below the limit (the
    /// rest waits for `on_buffer_drain`); closes the connection once HTTP/2 is done with it.
    pub(crate) fn h2_flush(&mut self, host: &mut Host<'_>, conn: ConnId, mut h2: Box<AppH2>) {
        while h2.conn.has_output() && host.pending_send(conn) < self.send_window {
            if !host.send(conn, h2.conn.output()) {
                break;
            }
            h2.conn.output_sent();
        }
        let done = h2.conn.is_done() && !h2.conn.has_output();
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

    /// The host reports an error: the connection closes, after GOAWAY NO_ERROR for a timeout.
    pub(crate) fn h2_error_close(&mut self, host: &mut Host<'_>, conn: ConnId, err: ConnError) {
        let Some(c) = self.conns.get_mut(conn) else { return host.close(conn) };
        c.state.closing = true;
        crate::h2::serve::close_on_error(host, conn, c.h2.as_mut().map(|h| &mut h.conn), err, self.send_window);
    }
}
