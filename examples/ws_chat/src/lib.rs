//! Run: cargo build --release && target/release/host start -c examples/ws_chat/host.toml
//! then open http://127.0.0.1:8080/ in two browser tabs.
//!
//! WebSocket chat rooms on topics, written on `websocket-core` as a library: `/join ROOM` joins a
//! room (answered `joined ROOM`), any other text goes to every member of the sender's rooms, the
//! sender included, on every worker and, with `--cluster`, on every host. The host writes each
//! message to the members itself: it is framed once here and the plugin is not called per
//! member. `/whoami` answers the sender alone with its worker's slot and pid.
//!
//! On a reload, upgrade or recycle the clients move to the new worker (hand-over) and stay in
//! their rooms: the host moves the subscriptions, `websocket-core` the connection and its list of
//! rooms ([`Ws::topics`]); the chat itself keeps nothing per client or per worker (state
//! version 1: empty). They move in batches: a client pauses for its batch, not the worker's.

use plugin_api::{export_plugin, ConnId, WorkerInfo};
use websocket_core::{Handler, Message, WebSocket, Ws};

pub struct Chat {
    slot: u32,
    pid: u32,
}

impl Handler for Chat {
    /// Version 1: nothing of its own (the rooms are the layer's topics).
    const HANDOVER_VERSION: u32 = 1;
    /// The rooms are the host's topics, per connection: a member's message reaches the members
    /// still in the old worker and those moved alike (the host's fan-out and mailboxes), and
    /// serving a client changes no worker state. So the clients move a few hundred at a time,
    /// each pausing for its batch only.
    const HANDOVER_IN_BATCHES: bool = true;

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

#[cfg(test)]
mod tests {
    use plugin_api::testing::TestPlugin;
    use plugin_api::Protocol;

    use super::*;

    /// A masked client text frame.
    fn text(payload: &str) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut out = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        out.extend_from_slice(payload.as_bytes());
        out
    }

    /// The payloads of the unmasked server text frames in `bytes`.
    fn texts(mut bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while let [0x81, len, rest @ ..] = bytes {
            let (payload, tail) = rest.split_at(*len as usize);
            out.push(String::from_utf8(payload.to_vec()).unwrap());
            bytes = tail;
        }
        assert!(bytes.is_empty(), "not a text frame: {bytes:?}");
        out
    }

    fn open(t: &mut TestPlugin<WebSocket<Chat>>) -> ConnId {
        let conn = t.connect();
        t.feed(
            conn,
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        assert!(t.host.take_sent(conn).starts_with(b"HTTP/1.1 101"));
        conn
    }

    // Two members of a room move to a new instance and go on chatting in it: the room list
    // moved (without it the new instance would answer "! /join a room first").
    #[test]
    fn members_keep_their_rooms_across_a_hand_over() {
        let mut old = TestPlugin::<WebSocket<Chat>>::new("ping_interval = 0").unwrap();
        let (a, b) = (open(&mut old), open(&mut old));
        old.feed(a, &text("/join red"));
        old.feed(b, &text("/join red"));
        old.feed(a, &text("hi"));
        assert_eq!(texts(&old.host.take_sent(a)), ["joined red", "hi"]);
        assert_eq!(texts(&old.host.take_sent(b)), ["joined red", "hi"]);
        let mut new = TestPlugin::<WebSocket<Chat>>::new("ping_interval = 0").unwrap();
        let moved = old.hand_over_to(&mut new, &[a, b]).unwrap();
        let [(_, a2), (_, b2)] = moved[..] else { panic!("{moved:?}") };
        new.feed(b2, &text("still here"));
        assert_eq!(texts(&new.host.take_sent(a2)), ["still here"]);
        assert_eq!(texts(&new.host.take_sent(b2)), ["still here"]);
        // A garbage state is refused, not a panic.
        for junk in [&[][..], &[2], &[2, 0, 15, 0xff, 0xff, 3, 1, 0]] {
            assert!(!new.call(|p, h| p.adopt_conn(h, ConnId::new(9, 1), 1, junk)), "{junk:?}");
        }
    }
}
