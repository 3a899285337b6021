//! Run: cargo build --release && target/release/host --plugin echo --listen 127.0.0.1:7000
//! Try: echo hello | nc -q1 127.0.0.1 7000
//!
//! The smallest plugin: every chunk of bytes that arrives is sent back as it is.

use plugin_api::{export_plugin, ConnId, Frame, Host, Protocol, WorkerInfo};

pub struct Echo;

impl Protocol for Echo {
    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Echo)
    }

    /// Every byte buffered so far is one message.
    fn input(&mut self, _host: &mut Host<'_>, _conn: ConnId, buf: &[u8]) -> Frame {
        Frame::Complete(buf.len())
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        host.send(conn, msg);
    }
}

export_plugin!(Echo);
