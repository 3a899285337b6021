//! {{lib}}: a WebSocket (RFC 6455) plugin on the `websocket-core` library, which does the
//! handshake, framing, masking, fragmentation, ping/pong, the close handshake and the limits;
//! this handler answers every message with itself (an echo). Write your application in `reply`
//! and in the `Handler` below.
//!
//! Config keys: those of websocket-core (`origins`, `protocols`, `ping_interval`,
//! `permessage_deflate`), e.g. `--plugin-config 'ping_interval = 10'`. The `Handler` also hears
//! the worker-level events (`on_worker_message`, `on_task_done`, `on_notify`, `on_timer`, ...).
//!
//! Run: {{run}}
//! Try: any WebSocket client on `ws://127.0.0.1:7000/`.

use plugin_api::{export_plugin, ConnId, WorkerInfo};
use websocket_core::{Handler, Message, WebSocket, Ws};

/// The application: one instance per worker process, which serves all its connections from one
/// thread (never block in a handler).
pub struct {{Type}};

/// The answer to one text message.
pub fn reply(text: &str) -> String {
    text.to_owned()
}

impl Handler for {{Type}} {
    /// It takes part in hand-overs: on a reload, `host upgrade` or a recycle its open connections
    /// move to the new worker (websocket-core moves the connection's own state and topics). Keep
    /// per-connection state? Write it in `export_conn`, read it in `adopt_conn` (version it, and
    /// bump this when its format changes); see "Hand-over" in the host's docs/plugins.md.
    const HANDOVER_VERSION: u32 = 1;
    /// An echo's connections are independent: they move a batch at a time while this
    /// worker serves the rest (each client pauses for its batch, not for all of them). Set it to
    /// false once a message can reach another connection (a room kept in the handler, a
    /// broadcast) or change worker-wide state: a batch already moved would miss it. (Topic
    /// subscriptions are safe: the host moves everything at once while there are any.)
    const HANDOVER_IN_BATCHES: bool = true;

    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok({{Type}})
    }

    fn on_message(&mut self, ws: &mut Ws<'_, '_>, conn: ConnId, msg: Message<'_>) {
        match msg {
            Message::Text(text) => {
                ws.send_text(conn, &reply(text));
            }
            Message::Binary(data) => {
                ws.send_binary(conn, data);
            }
        }
    }
}

export_plugin!(WebSocket<{{Type}}>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_echoed() {
        assert_eq!(reply("hello"), "hello");
    }
}
