//! Run: cargo build --release && target/release/host start -c examples/ws_chat/host.toml
//! then open http://127.0.0.1:8080/ in two browser tabs.
//!
//! WebSocket chat rooms on topics, written on `websocket-core` as a library: `/join ROOM` joins a
//! room (answered `joined ROOM`), any other text goes to every member of the sender's rooms, the
//! sender included, on every worker and, with `--cluster`, on every host. The host writes each
//! message to the members itself: it is framed once here and the plugin is not called per
//! member. `/whoami` answers the sender alone with its worker's slot and pid.

use plugin_api::{export_plugin, ConnId, WorkerInfo};
use websocket_core::{Handler, Message, WebSocket, Ws};

pub struct Chat {
    slot: u32,
    pid: u32,
}

impl Handler for Chat {
    fn new(_config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Chat { slot: worker.slot, pid: worker.pid })
    }

    fn on_message(&mut self, ws: &mut Ws<'_, '_>, conn: ConnId, msg: Message<'_>) {
        let Message::Text(text) = msg else { return };
        let answer = if let Some(room) = text.strip_prefix("/join ") {
            ws.subscribe(conn, room).map(|_| format!("joined {room}"))
        } else if text == "/whoami" {
            Ok(format!("slot {} pid {}", self.slot, self.pid))
        } else if ws.topics(conn).is_empty() {
            Ok("! /join a room first".into())
        } else {
            let rooms = ws.topics(conn).to_vec();
            match rooms.iter().try_for_each(|room| ws.publish_text(room, text).map(drop)) {
                Ok(()) => return,
                Err(e) => Err(e),
            }
        };
        let answer = answer.unwrap_or_else(|e| format!("! {e}"));
        ws.send_text(conn, &answer);
    }
}

export_plugin!(WebSocket<Chat>);
