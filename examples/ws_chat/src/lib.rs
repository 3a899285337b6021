//! Run: cargo build --release && target/release/host start -c examples/ws_chat/host.toml
//! then open http://127.0.0.1:8080/ in two browser tabs.
//!
//! A WebSocket chat room written on `websocket-core` as a library: every text message from a
//! client goes to every client of the service, on every worker. The worker that received it
//! sends it to its own clients and `host.broadcast`s it to the other workers, which hear it in
//! `on_worker_message` and send it to theirs. A message over 64 KiB (the limit of a message
//! between workers) reaches the sender's worker only. `/whoami` answers the sender alone with
//! its worker's slot and pid.

use plugin_api::{export_plugin, ConnId, WorkerInfo};
use websocket_core::{Handler, Message, WebSocket, Ws};

/// The room: the worker's open connections.
pub struct Chat {
    members: Vec<ConnId>,
    slot: u32,
    pid: u32,
}

impl Handler for Chat {
    fn new(_config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Chat { members: Vec::new(), slot: worker.slot, pid: worker.pid })
    }

    fn on_open(&mut self, _ws: &mut Ws<'_, '_>, conn: ConnId) {
        self.members.push(conn);
    }

    fn on_message(&mut self, ws: &mut Ws<'_, '_>, conn: ConnId, msg: Message<'_>) {
        let Message::Text(text) = msg else { return };
        if text == "/whoami" {
            ws.send_text(conn, &format!("slot {} pid {}", self.slot, self.pid));
            return;
        }
        ws.broadcast_text(&self.members, text);
        // The other workers' clients; without other workers (or over 64 KiB) nobody else.
        let _ = ws.host().broadcast(text.as_bytes());
    }

    fn on_worker_message(&mut self, ws: &mut Ws<'_, '_>, _from_slot: u32, msg: &[u8]) {
        if let Ok(text) = std::str::from_utf8(msg) {
            ws.broadcast_text(&self.members, text);
        }
    }

    fn on_close(&mut self, _ws: &mut Ws<'_, '_>, conn: ConnId) {
        self.members.retain(|&c| c != conn);
    }
}

export_plugin!(WebSocket<Chat>);
