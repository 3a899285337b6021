//! Run: cargo build --release && target/release/host start -c examples/ws_chat/host.toml
//! then open http://127.0.0.1:8080/ in two browser tabs.
//!
//! A WebSocket chat room written on `websocket-core` as a library: every text message from a
//! client goes to every client connected to the same worker. There is no delivery across
//! workers yet, so the service runs with `count = 1` (`host --plugin ws_chat --count 1`).

use plugin_api::{export_plugin, ConnId, WorkerInfo};
use websocket_core::{Handler, Message, WebSocket, Ws};

/// The room: the worker's open connections.
pub struct Chat {
    members: Vec<ConnId>,
}

impl Handler for Chat {
    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Chat { members: Vec::new() })
    }

    fn on_open(&mut self, _ws: &mut Ws<'_, '_>, conn: ConnId) {
        self.members.push(conn);
    }

    fn on_message(&mut self, ws: &mut Ws<'_, '_>, _conn: ConnId, msg: Message<'_>) {
        if let Message::Text(text) = msg {
            ws.broadcast_text(&self.members, text);
        }
    }

    fn on_close(&mut self, _ws: &mut Ws<'_, '_>, conn: ConnId) {
        self.members.retain(|&c| c != conn);
    }
}

export_plugin!(WebSocket<Chat>);
