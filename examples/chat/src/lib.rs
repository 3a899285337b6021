//! Run: cargo build --release && target/release/host --plugin chat --listen 127.0.0.1:7000 --count 4
//! Try: `nc 127.0.0.1 7000` in two terminals, and type.
//!
//! A line-based chat on topics: a client is in the room `lobby` from the start, `/join ROOM`
//! joins more, and a line goes to every member of the sender's rooms (the sender included),
//! whichever worker and, with `--cluster`, whichever host they are on. The host writes each line
//! to the members itself ([`Host::publish`]): no member lists, no loop over clients here.
//!
//! Lines (up to 4096 bytes; a longer one closes the connection):
//! - `TEXT`: to the sender's rooms.
//! - `/join ROOM`, `/leave ROOM`: answered `joined ROOM`, `left ROOM` (or `! why`).
//! - `/whoami`: answers `slot N pid P` (which worker the client is on).
//! - `/to SLOT TEXT`: `TEXT` to the clients of the worker serving `SLOT` only (each client is
//!   also in the room `slot-N` of its worker); `! no such worker` for a slot the service has not.
//!
//! On a reload, upgrade or recycle the clients move to the new worker (hand-over): the host moves
//! each connection with its subscriptions and a half-typed line, the plugin its rooms (state
//! version 1, [`encode_rooms`]), a few hundred clients at a time (each pauses for its batch
//! only). A worker that drains instead (`handover = false`, a graceful
//! stop) keeps its clients until they leave or the drain timeout. Idle clients are closed by the
//! host's `--idle-timeout`.

use std::io::Write;

use plugin_api::{
    export_plugin, ConnId, ConnMap, Frame, Host, Protocol, StateWriter, WorkerInfo, MAX_TOPICS_PER_CONN, MAX_TOPIC_LEN,
};

/// The longest line.
pub const MAX_LINE: usize = 4096;

pub struct Chat {
    /// Each client's rooms (where its lines go).
    rooms: ConnMap<Vec<String>>,
    pid: u32,
}

/// A client's rooms as hand-over state, version 1: for each room its length (u16, little
/// endian) and its name.
pub fn encode_rooms(rooms: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for room in rooms {
        out.extend_from_slice(&(room.len() as u16).to_le_bytes());
        out.extend_from_slice(room.as_bytes());
    }
    out
}

/// Reads what [`encode_rooms`] wrote; None for anything else (a truncated or empty name, one
/// longer than a topic can be, not UTF-8, more rooms than a connection can have).
pub fn decode_rooms(mut state: &[u8]) -> Option<Vec<String>> {
    let mut rooms = Vec::new();
    while let Some((len, rest)) = state.split_first_chunk::<2>() {
        let len = u16::from_le_bytes(*len) as usize;
        if len == 0 || len > MAX_TOPIC_LEN || len > rest.len() || rooms.len() == MAX_TOPICS_PER_CONN {
            return None;
        }
        let (name, rest) = rest.split_at(len);
        rooms.push(std::str::from_utf8(name).ok()?.to_string());
        state = rest;
    }
    state.is_empty().then_some(rooms)
}

/// Where the next line ends in `buf`: its length with the newline.
pub fn line_length(buf: &[u8]) -> Frame {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) if i < MAX_LINE => Frame::Complete(i + 1),
        Some(_) => Frame::Invalid,
        None if buf.len() >= MAX_LINE => Frame::Invalid,
        None => Frame::NeedMore,
    }
}

impl Protocol for Chat {
    /// Version 1: a client's rooms ([`encode_rooms`]); no worker-wide state.
    const HANDOVER_VERSION: u32 = 1;

    fn new(_config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Chat { rooms: ConnMap::new(), pid: worker.pid })
    }

    fn on_connect(&mut self, host: &mut Host<'_>, conn: ConnId) {
        let slot_room = format!("slot-{}", host.slot());
        if host.subscribe(conn, "lobby").is_err() || host.subscribe(conn, &slot_room).is_err() {
            return host.close_with(conn, b"! this host has no topics\n");
        }
        self.rooms.insert(conn, vec!["lobby".into()]);
    }

    fn input(&mut self, _host: &mut Host<'_>, _conn: ConnId, buf: &[u8]) -> Frame {
        line_length(buf)
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        let text = String::from_utf8_lossy(msg.strip_suffix(b"\n").unwrap_or(msg));
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let rooms = self.rooms.entry(conn);
        let answer = if let Some(room) = text.strip_prefix("/join ") {
            host.subscribe(conn, room).map(|_| rooms.push(room.into())).map(|()| format!("joined {room}"))
        } else if let Some(room) = text.strip_prefix("/leave ") {
            rooms.retain(|r| r != room);
            host.unsubscribe(conn, room).map(|_| format!("left {room}"))
        } else if text == "/whoami" {
            Ok(format!("slot {} pid {}", host.slot(), self.pid))
        } else if let Some((slot, line)) = text.strip_prefix("/to ").and_then(|rest| rest.split_once(' ')) {
            match slot.parse::<u32>() {
                Ok(s) if s < host.worker_count().unwrap_or(1) => {
                    host.publish(format!("slot-{s}"), format!("{line}\n").as_bytes()).map(|_| String::new())
                }
                _ => Ok("! no such worker".into()),
            }
        } else {
            let line = format!("{text}\n");
            rooms.iter().try_for_each(|room| host.publish(room, line.as_bytes()).map(drop)).map(|()| String::new())
        };
        match answer {
            Ok(a) if a.is_empty() => {}
            Ok(a) => _ = host.send(conn, format!("{a}\n").as_bytes()),
            Err(e) => _ = host.send(conn, format!("! {e}\n").as_bytes()),
        }
    }

    fn on_close(&mut self, _host: &mut Host<'_>, conn: ConnId) {
        self.rooms.remove(conn);
    }

    /// Keeps the client: the rooms go on while the worker drains (until the drain timeout).
    fn on_drain(&mut self, _host: &mut Host<'_>, _conn: ConnId) {}

    /// The client's rooms (its subscriptions move with it, by the host).
    fn export_conn(&mut self, _host: &mut Host<'_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
        let rooms = self.rooms.get(conn).map_or(&[][..], Vec::as_slice);
        out.write_all(&encode_rooms(rooms)).is_ok()
    }

    /// A client's rooms are its own (its topics and its list here); the lines reach members
    /// through the host's topics, wherever they are: nothing worker-wide changes while the
    /// clients move a batch at a time.
    fn handover_in_batches(&self) -> bool {
        true
    }

    fn adopt_conn(&mut self, _host: &mut Host<'_>, conn: ConnId, version: u32, state: &[u8]) -> bool {
        match (version, decode_rooms(state)) {
            (1, Some(rooms)) => {
                self.rooms.insert(conn, rooms);
                true
            }
            _ => false,
        }
    }
}

export_plugin!(Chat);

#[cfg(test)]
mod tests {
    use plugin_api::testing::TestPlugin;

    use super::*;

    #[test]
    fn lines_are_framed_and_bounded() {
        assert_eq!(line_length(b"hi\nmore"), Frame::Complete(3));
        assert_eq!(line_length(b"partial"), Frame::NeedMore);
        assert_eq!(line_length(&vec![b'x'; MAX_LINE]), Frame::Invalid);
        let mut long = vec![b'x'; MAX_LINE];
        long.push(b'\n');
        assert_eq!(line_length(&long), Frame::Invalid);
    }

    #[test]
    fn lines_go_to_the_rooms_of_the_sender() {
        let mut t = TestPlugin::<Chat>::new("").unwrap();
        let (a, b) = (t.connect(), t.connect());
        t.feed(a, b"hello\n");
        assert_eq!((t.host.take_sent(a), t.host.take_sent(b)), (b"hello\n".to_vec(), b"hello\n".to_vec()));
        t.feed(b, b"/join red\n/leave lobby\n");
        assert_eq!(t.host.take_sent(b), b"joined red\nleft lobby\n");
        t.feed(b, b"in red\n");
        t.feed(a, b"in lobby\n");
        assert_eq!(t.host.take_sent(a), b"in lobby\n");
        assert_eq!(t.host.take_sent(b), b"in red\n");
        t.feed(a, b"/to 0 direct\n/to 7 nobody\n");
        assert_eq!(t.host.take_sent(a), b"direct\n! no such worker\n");
        assert_eq!(t.host.take_sent(b), b"direct\n");
    }

    // The rooms move with each client: after the hand-over the same lines reach the same
    // members, and `/leave` in the new instance works on what moved.
    #[test]
    fn rooms_move_with_their_clients() {
        let mut old = TestPlugin::<Chat>::new("").unwrap();
        let (a, b) = (old.connect(), old.connect());
        old.feed(a, b"/join red\n");
        old.feed(b, b"/join red\n/leave lobby\n");
        old.feed(a, b"/join bl");
        let _ = (old.host.take_sent(a), old.host.take_sent(b));
        let mut new = TestPlugin::<Chat>::new("").unwrap();
        let moved = old.hand_over_to(&mut new, &[a, b]).unwrap();
        let [(_, a2), (_, b2)] = moved[..] else { panic!("{moved:?}") };
        new.feed(a2, b"ue\n");
        assert_eq!(new.host.take_sent(a2), b"joined blue\n", "the half line completes");
        new.feed(b2, b"in red\n");
        assert_eq!((new.host.take_sent(a2), new.host.take_sent(b2)), (b"in red\n".to_vec(), b"in red\n".to_vec()));
        new.feed(a2, b"/leave red\n/leave blue\nall\n");
        assert_eq!(new.host.take_sent(a2), b"left red\nleft blue\nall\n");
        assert_eq!(new.host.take_sent(b2), b"", "b left the lobby before the move");
        assert!(old.host.topics_of(a).is_empty(), "the old worker keeps no subscription of a moved client");
    }

    #[test]
    fn the_room_state_round_trips_and_garbage_is_refused() {
        let rooms = vec!["lobby".to_string(), "ü".repeat(128), "x".repeat(MAX_TOPIC_LEN)];
        assert_eq!(decode_rooms(&encode_rooms(&rooms)), Some(rooms));
        assert_eq!(decode_rooms(&[]), Some(vec![]));
        let many: Vec<String> = (0..=MAX_TOPICS_PER_CONN).map(|i| format!("r{i}")).collect();
        for bad in [
            &[5, 0, b'a'][..],        // truncated name
            &[1][..],                 // truncated length
            &[0, 0][..],              // empty name
            &[1, 0, 0xff][..],        // not UTF-8
            &[1, 0, b'a', 7][..],     // trailing byte
            &[1, 2, b'a'][..],        // longer than a topic
            &encode_rooms(&many)[..], // more rooms than a connection has
        ] {
            assert_eq!(decode_rooms(bad), None, "{bad:?}");
        }
        let mut new = TestPlugin::<Chat>::new("").unwrap();
        let conn = ConnId::new(0, 1);
        assert!(!new.call(|p, h| p.adopt_conn(h, conn, 1, &[5, 0, b'a'])));
        assert!(!new.call(|p, h| p.adopt_conn(h, conn, 2, &encode_rooms(&["lobby".into()]))));
        assert!(!new.call(|p, h| p.handover_accepts(h, "chat", 2)));
        // Arbitrary bytes never panic.
        let mut x: u32 = 7;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    (x >> 16) as u8
                })
                .collect();
            let _ = decode_rooms(&junk);
        }
    }
}
