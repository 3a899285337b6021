//! WebSocket (RFC 6455) echo server: every text message comes back as text, every binary one as
//! binary. The protocol is `websocket-core` (`plugins/websocket/core`, re-exported here), whose
//! [`WebSocket`] layer this plugin instantiates with the [`Echo`] handler.
//!
//! Run: host --plugin websocket --listen 127.0.0.1:9001, then connect a WebSocket client to
//! `ws://127.0.0.1:9001/` (`python3 -m websockets ws://127.0.0.1:9001/`).
//!
//! Config keys (`--plugin-config` or `[service.config]`), all optional:
//! ```toml
//! origins = ["https://example.com"]   # allowed Origin values (default: any)
//! protocols = ["chat", "superchat"]   # subprotocols; the client's first listed one is selected
//! ping_interval = 30                  # seconds between server pings (0: off)
//! permessage_deflate = true           # accept permessage-deflate (RFC 7692) when offered
//! ```
//! The service's max package size (`--max-package-size`, 1 MiB by default) bounds a message's
//! payload (frame headers not counted; a compressed message once inflated): a bigger one is
//! closed with 1009.

pub use websocket_core::*;

use plugin_api::{export_plugin, ConnId, WorkerInfo};

/// The echo application.
pub struct Echo;

impl Handler for Echo {
    /// An echo keeps nothing per connection: its connections move on a reload with the layer's
    /// state alone.
    const HANDOVER_VERSION: u32 = 1;
    /// Each connection is its own: they move a few hundred at a time while the rest are served.
    const HANDOVER_IN_BATCHES: bool = true;

    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Echo)
    }

    fn on_message(&mut self, ws: &mut Ws<'_, '_>, conn: ConnId, msg: Message<'_>) {
        match msg {
            Message::Text(text) => ws.send_text(conn, text),
            Message::Binary(data) => ws.send_binary(conn, data),
        };
    }
}

export_plugin!(WebSocket<Echo>);

#[cfg(test)]
mod tests {
    use super::*;
    use plugin_api::Protocol;

    #[test]
    fn the_echo_moves_in_batches_and_a_handler_by_default_does_not() {
        struct Room;
        impl Handler for Room {
            fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
                Ok(Room)
            }
            fn on_message(&mut self, _ws: &mut Ws<'_, '_>, _conn: ConnId, _msg: Message<'_>) {}
        }
        let info = plugin_api::testing::TestHost::default().worker_info();
        assert!(WebSocket::<Echo>::new("", &info).unwrap().handover_in_batches());
        assert!(!WebSocket::<Room>::new("", &info).unwrap().handover_in_batches());
    }
}
