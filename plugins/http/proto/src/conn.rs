//! The per-connection side of an HTTP/1.1 server, shared by every server built on this crate:
//! framing with `100 Continue`, error answers that close the connection, the status for a host
//! error, and whether a response keeps the connection.

use plugin_api::{ConnError, ConnId, Frame, Host};

use crate::parse::{Framer, Limits, RequestHead};
use crate::request::Request;
use crate::response::{self, DateCache, Persist, Status};

/// What [`ConnState::on_message`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Nothing to answer (a piece of a body that goes on, or the connection is closing).
    Ignored,
    /// The request was answered into the caller's buffer: send it, keeping the connection or
    /// not.
    Answered(Persist),
    /// The request was refused with this status: answer it with [`ConnState::reject`].
    Refused(Status),
}

/// The state of one connection.
#[derive(Debug, Default)]
pub struct ConnState {
    pub framer: Framer,
    /// Bytes of a request not yet answered are buffered (a timeout then answers 408).
    pub in_flight: bool,
    /// The connection closes after what is queued: further input is ignored.
    pub closing: bool,
}

impl ConnState {
    /// [`plugin_api::Protocol::input`]: frames the next message, sends `100 Continue` when due,
    /// and refuses a bad request (its error response queued, then the connection closed).
    /// `max_message` is the host's max package size.
    #[allow(clippy::too_many_arguments)]
    pub fn input(
        &mut self,
        host: &mut Host<'_>,
        conn: ConnId,
        buf: &[u8],
        limits: &Limits,
        max_message: usize,
        date: &mut DateCache,
        out: &mut Vec<u8>,
    ) -> Frame {
        if self.closing {
            return Frame::NeedMore;
        }
        self.in_flight = !buf.is_empty();
        match self.framer.frame(buf, limits, max_message) {
            Ok(framed) => {
                if framed.send_continue {
                    host.send(conn, response::CONTINUE);
                }
                framed.len.map_or(Frame::NeedMore, Frame::Complete)
            }
            Err(status) => {
                self.reject(host, conn, status, date, out);
                Frame::Invalid
            }
        }
    }

    /// [`plugin_api::Protocol::on_message`]'s part every server shares: takes the request `msg`
    /// completes and has `answer` write its response (into the caller's buffer) and say whether
    /// the connection persists; then gets ready for the next request. The caller sends what
    /// `answer` wrote, or refuses the request ([`ConnState::reject`]). Nothing is answered for a
    /// piece of a body that goes on, or on a closing connection.
    pub fn on_message(
        &mut self,
        host: &mut Host<'_>,
        msg: &[u8],
        limits: &Limits,
        answer: impl FnOnce(&mut Host<'_>, &Request<'_>) -> Persist,
    ) -> Delivered {
        if self.closing {
            return Delivered::Ignored;
        }
        // (The framer is borrowed in place, not moved out and back: a request is answered
        // without copying the connection's state.)
        let answered = match self.framer.take_request(msg, limits) {
            Err(status) => Err(status),
            Ok(None) => Ok(None),
            Ok(Some(req)) => Ok(Some(answer(host, &req))),
        };
        match answered {
            Ok(None) => Delivered::Ignored,
            Ok(Some(persist)) => {
                self.framer.finish();
                self.in_flight = false;
                Delivered::Answered(persist)
            }
            Err(status) => {
                // What was framed of the refused request is dropped (the connection closes).
                self.framer = Framer::default();
                Delivered::Refused(status)
            }
        }
    }

    /// Answers with an error status and closes the connection after it.
    pub fn reject(
        &mut self,
        host: &mut Host<'_>,
        conn: ConnId,
        status: Status,
        date: &mut DateCache,
        out: &mut Vec<u8>,
    ) {
        self.closing = true;
        self.in_flight = false;
        date.update(host.now_ms());
        out.clear();
        response::write_error(out, status, date.get(), Persist::Close, false, &[]);
        host.close_with(conn, out);
    }

    /// The answer to a host error on this connection, if it deserves one: 431 for a message
    /// over the max package size, 408 for a request that did not arrive in time.
    pub fn error_status(&self, err: ConnError) -> Option<Status> {
        match err {
            _ if self.closing => None,
            // A body never makes a message longer than the package size (a long one comes in
            // pieces, bounded by `max_body`), so only a head can.
            ConnError::PackageTooLarge => Some(Status::HEADERS_TOO_LARGE),
            ConnError::Timeout if self.in_flight => Some(Status::REQUEST_TIMEOUT),
            _ => None,
        }
    }
}

/// Whether the response to `head` keeps the connection: not when the client or the worker
/// (draining) wants it closed.
pub fn persist(head: &RequestHead, draining: bool) -> Persist {
    match (head.keep_alive && !draining, head.minor) {
        (false, _) => Persist::Close,
        (true, 0) => Persist::KeepAlive10,
        (true, _) => Persist::KeepAlive,
    }
}
