//! Hand-over of WebSocket connections (docs/plugins.md, "Hand-over"): an open connection between
//! messages moves with what the layer knows of it, followed by the handler's own state. The
//! handler's [`Handler::HANDOVER_VERSION`] is the version the host sees (0: the application does
//! not take part, and its connections drain with a close frame 1001 as before).
//!
//! The layer's part, format 2: `2` · flags (bit 0 a frame was seen since the last ping, bit 1 a
//! ping is unanswered, bit 2 permessage-deflate agreed, bit 3 the client resets its compressor) ·
//! the server's window bits · the subprotocol (u16 length + bytes; 0xffff: none) · the topics
//! of [`crate::Ws::topics`] (a u8 count, then each a u16 length + bytes; the host moves the
//! subscriptions themselves) · the handler's bytes. Format 1 (written before 2) is the same
//! without the topics, and is still read (as no topics). All lengths little endian. A connection in the middle of a message, or one whose client compresses with
//! context takeover after a compressed message (the inflater's window cannot move), stays and
//! drains.

use std::io::Write;
use std::time::Duration;

use plugin_api::{ConnId, Host, StateWriter, MAX_TOPICS_PER_CONN, MAX_TOPIC_LEN};

use super::{Conn, Handler, State, WebSocket};
use crate::deflate::Agreed;

/// The format written.
const LAYER_FORMAT: u8 = 2;
/// The format before the topics moved: still read.
const LAYER_FORMAT_1: u8 = 1;
const NO_PROTOCOL: u16 = u16::MAX;

impl<H: Handler> WebSocket<H> {
    pub(super) fn export_conn_state(&mut self, host: &mut Host<'_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
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
        if !encode_topics(&c.topics, &mut head) {
            return false;
        }
        if out.write_all(&head).is_err() {
            return false;
        }
        let (handler, mut ws) = self.ws(host);
        handler.export_conn(&mut ws, conn, out)
    }

    pub(super) fn adopt_conn_state(&mut self, host: &mut Host<'_>, conn: ConnId, version: u32, state: &[u8]) -> bool {
        let Some((&[format @ (LAYER_FORMAT_1 | LAYER_FORMAT), flags, bits], rest)) = state.split_first_chunk::<3>()
        else {
            return false;
        };
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
        let (topics, handler_state) = match format {
            LAYER_FORMAT_1 => (Vec::new(), handler_state),
            _ => match decode_topics(handler_state) {
                Some(read) => read,
                None => return false,
            },
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
            topics,
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

/// Appends `topics` as the layer writes them (a u8 count, each a u16 length and the name); false
/// when they cannot be written so (more than 255, or a name longer than 65535 bytes: the host
/// allows neither).
fn encode_topics(topics: &[String], out: &mut Vec<u8>) -> bool {
    let Ok(count) = u8::try_from(topics.len()) else { return false };
    out.push(count);
    for topic in topics {
        let Ok(len) = u16::try_from(topic.len()) else { return false };
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(topic.as_bytes());
    }
    true
}

/// Reads what [`encode_topics`] wrote at the start of `state`: the topics and the rest; None
/// when it is truncated, a name is empty, too long for a topic or not UTF-8, or there are more
/// than a connection can have.
fn decode_topics(state: &[u8]) -> Option<(Vec<String>, &[u8])> {
    let (&count, mut rest) = state.split_first()?;
    if count as usize > MAX_TOPICS_PER_CONN {
        return None;
    }
    let mut topics = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (len, tail) = rest.split_first_chunk::<2>()?;
        let len = u16::from_le_bytes(*len) as usize;
        if len == 0 || len > MAX_TOPIC_LEN || len > tail.len() {
            return None;
        }
        let (name, tail) = tail.split_at(len);
        topics.push(std::str::from_utf8(name).ok()?.to_string());
        rest = tail;
    }
    Some((topics, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_garbage_is_refused() {
        let topics = vec!["lobby".to_string(), "é".repeat(100), "x".repeat(MAX_TOPIC_LEN)];
        let mut bytes = Vec::new();
        assert!(encode_topics(&topics, &mut bytes));
        bytes.extend_from_slice(b"handler");
        assert_eq!(decode_topics(&bytes), Some((topics, &b"handler"[..])));
        assert_eq!(decode_topics(&[0]), Some((vec![], &[][..])));
        let too_many: Vec<String> = (0..=MAX_TOPICS_PER_CONN).map(|i| format!("t{i}")).collect();
        let mut many = Vec::new();
        assert!(encode_topics(&too_many, &mut many));
        for bad in [&[][..], &[1][..], &[1, 3, 0, b'a'], &[1, 0, 0], &[1, 1, 0, 0xff], &[1, 1, 1, b'a'], &many] {
            assert_eq!(decode_topics(bad), None, "{bad:?}");
        }
        assert!(!encode_topics(&vec!["t".to_string(); 256], &mut Vec::new()));
    }
}
