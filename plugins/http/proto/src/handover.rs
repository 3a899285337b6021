//! Hand-over state (docs/plugins.md, "Hand-over"): what a server built on this crate writes for
//! a connection that moves to the replacement worker, and reads back there. The bytes a host
//! buffered (a request half received, queued output) move by themselves; this is the parser's
//! and the HTTP/2 connection's own part ([`crate::h2::Connection::export`]).
//!
//! Encoding: little-endian integers, byte strings as a `u32` length and the bytes. Readers
//! refuse what is truncated, out of range or followed by stray bytes, with a reason; they never
//! panic (the unit tests feed them every truncation and garbage).
//!
//! An HTTP/1.1 connection ([`write_conn_state`]): flags `u8` (bit 0: `100 Continue` sent for
//! the request being received, bit 1: bytes of a request are buffered). It does not move when
//! it is closing, or while a body larger than the host's package size is received in pieces
//! (the parser holds those bytes itself).

use plugin_api::{ConnId, StateWriter};

use crate::conn::ConnState;

/// Appends a `u32` length and the bytes.
pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends an optional byte string: a presence byte, then [`put_bytes`].
pub fn put_opt_bytes(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            put_bytes(out, b);
        }
    }
}

/// A cursor over hand-over state: every read checks what is left.
#[derive(Debug)]
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("the state ends early ({} bytes left, {n} wanted)", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    pub fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(format!("a flag of {other}")),
        }
    }

    pub fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    /// A byte string written by [`put_bytes`].
    pub fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    /// An optional byte string written by [`put_opt_bytes`].
    pub fn opt_bytes(&mut self) -> Result<Option<&'a [u8]>, String> {
        Ok(if self.bool()? { Some(self.bytes()?) } else { None })
    }

    /// The state must end here.
    pub fn end(&self) -> Result<(), String> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(format!("{n} stray bytes after the state")),
        }
    }
}

/// Why a connection does not move (it drains where it is); said in the worker's debug log.
pub type Decline = &'static str;

/// `Protocol::export_conn` of a server built on this crate: `export` writes `conn`'s state, which
/// goes to `out` whole; a [`Decline`] keeps the connection here (it drains), its reason logged.
pub fn export_conn(
    conn: ConnId,
    out: &mut StateWriter<'_>,
    export: impl FnOnce(&mut Vec<u8>) -> Result<(), Decline>,
) -> bool {
    use std::io::Write;
    let mut state = Vec::new();
    match export(&mut state) {
        Ok(()) => out.write_all(&state).is_ok(),
        Err(reason) => {
            plugin_api::tracing::debug!(conn = conn.0, reason, "connection stays for the hand-over");
            false
        }
    }
}

/// `Protocol::adopt_conn` of a server built on this crate: `adopt` reads `conn`'s state; an
/// error (logged) sends the connection back to the old worker.
pub fn adopt_conn(conn: ConnId, adopt: impl FnOnce() -> Result<(), String>) -> bool {
    match adopt() {
        Ok(()) => true,
        Err(reason) => {
            plugin_api::tracing::warn!(conn = conn.0, %reason, "connection refused in the hand-over");
            false
        }
    }
}

/// Writes an HTTP/1.1 connection's parser state (see the module comment).
pub fn write_conn_state(state: &ConnState, out: &mut Vec<u8>) -> Result<(), Decline> {
    if state.closing {
        return Err("closing");
    }
    let continue_sent = state.framer.handover_state().ok_or("a large request body is being received")?;
    out.push(continue_sent as u8 | (state.in_flight as u8) << 1);
    Ok(())
}

/// Reads what [`write_conn_state`] wrote.
pub fn read_conn_state(r: &mut Reader<'_>) -> Result<ConnState, String> {
    let flags = r.u8()?;
    if flags > 3 {
        return Err(format!("unknown HTTP/1.1 flags {flags:#x}"));
    }
    Ok(ConnState { framer: crate::parse::Framer::adopted(flags & 1 != 0), in_flight: flags & 2 != 0, closing: false })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::Limits;

    #[test]
    fn a_half_received_request_moves_with_its_continue_sent() {
        let limits = Limits::default();
        let mut state = ConnState::default();
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        let framed = state.framer.frame(head, &limits, 1 << 20).unwrap();
        assert!(framed.send_continue);
        state.in_flight = true;
        let mut out = Vec::new();
        write_conn_state(&state, &mut out).unwrap();
        let mut r = Reader(&out);
        let mut moved = read_conn_state(&mut r).unwrap();
        r.end().unwrap();
        assert!(moved.in_flight);
        // The new worker sees the same bytes again: no second `100 Continue`.
        let framed = moved.framer.frame(head, &limits, 1 << 20).unwrap();
        assert!(!framed.send_continue, "100 Continue was sent by the old worker already");
        let mut whole = head.to_vec();
        whole.extend_from_slice(b"hello");
        assert_eq!(moved.framer.frame(&whole, &limits, 1 << 20).unwrap().len, Some(whole.len()));
    }

    #[test]
    fn closing_and_piecewise_connections_decline() {
        let mut state = ConnState { closing: true, ..Default::default() };
        assert_eq!(write_conn_state(&state, &mut Vec::new()), Err("closing"));
        state.closing = false;
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nabc";
        state.framer.frame(head, &Limits::default(), 1024).unwrap();
        assert!(write_conn_state(&state, &mut Vec::new()).is_err(), "a body in pieces stays");
    }

    #[test]
    fn truncated_or_garbage_state_is_refused() {
        assert!(read_conn_state(&mut Reader(&[])).is_err());
        assert!(read_conn_state(&mut Reader(&[0xff])).is_err());
        let mut r = Reader(&[1, 2]);
        read_conn_state(&mut r).unwrap();
        assert!(r.end().is_err(), "a stray byte");
        let mut r = Reader(&[1, 0, 0, 0]);
        assert!(r.bytes().is_err(), "a length past the end");
        assert!(Reader(&[2]).bool().is_err());
    }
}
