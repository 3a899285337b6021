//! Hand-over of WebSocket connections (docs/plugins.md, "Hand-over"): an open connection between
//! messages moves with what the layer knows of it, followed by the handler's own state. The
//! handler's [`Handler::HANDOVER_VERSION`] is the version the host sees (0: the application does
//! not take part, and its connections drain with a close frame 1001 as before).
//!
//! The layer's part, format 1: `1` · flags (bit 0 a frame was seen since the last ping, bit 1 a
//! ping is unanswered, bit 2 permessage-deflate agreed, bit 3 the client resets its compressor) ·
//! the server's window bits · the subprotocol (u16 length + bytes; 0xffff: none) · the
//! handler's bytes. A connection in the middle of a message, or one whose client compresses with
//! context takeover after a compressed message (the inflater's window cannot move), stays and
//! drains.

use std::io::Write;
use std::time::Duration;

use plugin_api::{ConnId, Host, StateWriter};

use super::{Conn, Handler, State, WebSocket};
use crate::deflate::Agreed;

const LAYER_FORMAT: u8 = 1;
const NO_PROTOCOL: u16 = u16::MAX;

impl<H: Handler> WebSocket<H> {
    pub(super) fn export_conn_state(&mut self, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
        let Some(c) = self.conns.get(conn) else { return false };
        let mid_message = c.frame.is_some() || c.kind.is_some() || !c.message.is_empty();
        let window = c.deflate.is_some_and(|d| !d.client_no_context_takeover) && c.inflater.is_some();
        if c.state != State::Open || mid_message || window {
            return false;
        }
        let deflate = c.deflate.unwrap_or(Agreed { client_no_context_takeover: false, server_max_window_bits: 15 });
        let flags = c.seen as u8
            | (c.pinged as u8) << 1
            | (c.deflate.is_some() as u8) << 2
            | (deflate.client_no_context_takeover as u8) << 3;
        let mut head = vec![LAYER_FORMAT, flags, deflate.server_max_window_bits];
        match c.protocol.as_deref() {
            Some(p) if p.len() < NO_PROTOCOL as usize => {
                head.extend_from_slice(&(p.len() as u16).to_le_bytes());
                head.extend_from_slice(p.as_bytes());
            }
            Some(_) => return false,
            None => head.extend_from_slice(&NO_PROTOCOL.to_le_bytes()),
        }
        out.write_all(&head).is_ok() && self.handler.export_conn(conn, out)
    }

    pub(super) fn adopt_conn_state(&mut self, host: &mut Host<'_>, conn: ConnId, version: u32, state: &[u8]) -> bool {
        let Some((&[LAYER_FORMAT, flags, bits], rest)) = state.split_first_chunk::<3>() else { return false };
        let Some((len, rest)) = rest.split_first_chunk::<2>() else { return false };
        let (protocol, handler_state) = match u16::from_le_bytes(*len) {
            NO_PROTOCOL => (None, rest),
            n if rest.len() >= n as usize => {
                let (p, rest) = rest.split_at(n as usize);
                match std::str::from_utf8(p) {
                    Ok(p) => (Some(p.to_string()), rest),
                    Err(_) => return false,
                }
            }
            _ => return false,
        };
        let deflate = (flags & 4 != 0)
            .then_some(Agreed { client_no_context_takeover: flags & 8 != 0, server_max_window_bits: bits });
        let timer = (self.config.ping_interval > 0.0)
            .then(|| host.add_interval(Duration::from_secs_f64(self.config.ping_interval), conn.0));
        let c = Conn {
            state: State::Open,
            protocol,
            seen: flags & 1 != 0,
            pinged: flags & 2 != 0,
            deflate,
            timer,
            opened: true,
            ..Conn::default()
        };
        self.conns.insert(conn, c);
        let (handler, mut ws) = self.ws(host);
        if handler.adopt_conn(&mut ws, conn, version, handler_state) {
            return true;
        }
        if let Some(c) = self.conns.remove(conn) {
            if let Some(t) = c.timer {
                host.del_timer(t);
            }
        }
        false
    }
}
