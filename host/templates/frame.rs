//! {{lib}}: a host plugin for a length-prefixed binary protocol. Every message is a 4-byte
//! big-endian length, then that many bytes of payload; this plugin answers each message with the
//! same payload, framed the same way (an echo). Write your protocol in `reply`.
//!
//! Config keys: none yet (the service's `--plugin-config` TOML arrives in `Protocol::new`).
//!
//! Run: {{run}}
//! Try: `printf '\0\0\0\5hello' | nc -q1 127.0.0.1 7000 | od -c`

use plugin_api::{export_plugin, tracing, ConnId, Frame, Host, Protocol, WorkerInfo};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// The plugin: one instance per worker process, which serves all its connections from one
/// thread (never block in a handler).
pub struct {{Type}};

/// Framing: the whole message's length (prefix included) as soon as the prefix is there. The
/// host then waits for the rest, or closes the connection at once if that length is over the
/// service's max package size.
pub fn frame(buf: &[u8]) -> Frame {
    match buf.first_chunk::<HEADER_LEN>() {
        Some(prefix) => Frame::Complete(HEADER_LEN + u32::from_be_bytes(*prefix) as usize),
        None => Frame::NeedMore,
    }
}

/// `payload` with its length prefix. Payloads come from messages, which the max package size
/// keeps far below 4 GiB.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a payload under 4 GiB");
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// The answer to one message's payload, framed.
pub fn reply(payload: &[u8]) -> Vec<u8> {
    encode(payload)
}

impl Protocol for {{Type}} {
    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok({{Type}})
    }

    fn on_worker_start(&mut self, host: &mut Host<'_>) -> Result<(), String> {
        tracing::info!(slot = host.slot(), "{{lib}} is ready");
        Ok(())
    }

    fn input(&mut self, _host: &mut Host<'_>, _conn: ConnId, buf: &[u8]) -> Frame {
        frame(buf)
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        host.send(conn, &reply(&msg[HEADER_LEN..]));
    }
}

export_plugin!({{Type}});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_echoed() {
        assert_eq!(frame(b"\0\0"), Frame::NeedMore);
        assert_eq!(frame(b"\0\0\0\x05hel"), Frame::Complete(9));
        assert_eq!(frame(b"\0\0\0\0"), Frame::Complete(4));
        assert_eq!(reply(b"hello"), b"\0\0\0\x05hello");
    }
}
