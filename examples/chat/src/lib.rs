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
//! A draining worker (graceful reload or stop) keeps its clients until they leave or the drain
//! timeout: the rooms go on across a reload. Idle clients are closed by the host's
//! `--idle-timeout`.

use plugin_api::{export_plugin, ConnId, ConnMap, Frame, Host, Protocol, WorkerInfo};

/// The longest line.
pub const MAX_LINE: usize = 4096;

pub struct Chat {
    /// Each client's rooms (where its lines go).
    rooms: ConnMap<Vec<String>>,
    pid: u32,
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
}
