//! {{lib}}: a host plugin for a line protocol. Every `\n`-terminated line is one message, and
//! this plugin answers each line with itself (an echo). Write your protocol in `reply` (and in
//! `frame`, if lines are not how your messages are delimited).
//!
//! Config keys: none yet (the service's `--plugin-config` TOML arrives in `Protocol::new`).
//!
//! Run: {{run}}
//! Try: `nc 127.0.0.1 7000`, then type a line.

use plugin_api::{export_plugin, tracing, ConnId, Frame, Host, Protocol, WorkerInfo};

/// The plugin: one instance per worker process, which serves all its connections from one
/// thread (never block in a handler).
pub struct {{Type}};

/// Framing: the length of the first line in `buf`, newline included, once it is all there.
/// Until then the host keeps reading, and closes the connection if the line grows past the
/// service's max package size.
pub fn frame(buf: &[u8]) -> Frame {
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => Frame::Complete(end + 1),
        None => Frame::NeedMore,
    }
}

/// The answer to one line (newline included).
pub fn reply(line: &[u8]) -> Vec<u8> {
    line.to_vec()
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

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, line: &[u8]) {
        host.send(conn, &reply(line));
    }
}

export_plugin!({{Type}});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_framed_and_echoed() {
        assert_eq!(frame(b""), Frame::NeedMore);
        assert_eq!(frame(b"hel"), Frame::NeedMore);
        assert_eq!(frame(b"hello\nwor"), Frame::Complete(6));
        assert_eq!(reply(b"hello\n"), b"hello\n");
    }
}
