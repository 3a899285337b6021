//! {{lib}}: a host plugin for a line protocol. Every `\n`-terminated line is one message, and
//! this plugin answers each line with itself (an echo). Write your protocol in `reply` (and in
//! `frame`, if lines are not how your messages are delimited).
//!
//! Config keys: none yet (the service's `--plugin-config` TOML arrives in `Protocol::new`).
//!
//! Run: {{run}}
//! Try: `nc 127.0.0.1 7000`, then type a line.

use std::io::Write;

use plugin_api::{export_plugin, tracing, ConnId, ConnMap, Frame, Host, Protocol, StateWriter, WorkerInfo};

/// The plugin: one instance per worker process, which serves all its connections from one
/// thread (never block in a handler).
pub struct {{Type}} {
    sessions: ConnMap<Session>,
}

/// What the plugin keeps per connection (here, how many messages it answered). On a reload,
/// `host upgrade` or a recycle the connection moves to the new worker with it (a hand-over:
/// `export_conn` writes it, the new code's `adopt_conn` reads it), so clients notice nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub messages: u64,
}

impl Session {
    /// The hand-over state, version 1 (`HANDOVER_VERSION`): `messages` as 8 bytes, little
    /// endian. When you change it, bump `HANDOVER_VERSION` and keep reading the older versions
    /// in `decode` (or refuse them in `handover_accepts`: the old worker then drains).
    pub fn encode(&self) -> [u8; 8] {
        self.messages.to_le_bytes()
    }

    /// Reads [`Session::encode`]'s bytes of `version`; None for anything else (refused: that
    /// connection stays and drains in the old worker).
    pub fn decode(version: u32, state: &[u8]) -> Option<Session> {
        match version {
            1 => Some(Session { messages: u64::from_le_bytes(state.try_into().ok()?) }),
            _ => None,
        }
    }
}


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
        Ok({{Type}} { sessions: ConnMap::new() })
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
        self.sessions.entry(conn).messages += 1;
    }

    fn on_close(&mut self, _host: &mut Host<'_>, conn: ConnId) {
        self.sessions.remove(conn);
    }

    // Hand-over: see "Hand-over" in the host's docs/plugins.md. Keep the state after exporting
    // (the hand-over may fail and the connection come back); never put pointers, descriptors,
    // timer or task ids in it. Worker-wide state (a cache, rooms) moves with `export_worker` and
    // `adopt_worker`; a large one can be copied in steps while this worker still serves
    // (`HANDOVER_STEPS`, `export_worker_step`: "Pre-copy" in the same docs).
    const HANDOVER_VERSION: u32 = 1;

    /// Each connection's handling touches only its own session and there is no worker state, so
    /// the connections move a batch at a time while this worker serves the rest (each
    /// client pauses for its batch, not for all of them). Answer false once a message can reach
    /// another connection (a room kept in the plugin, a broadcast) or change state that
    /// `export_worker` moves: a batch already moved would miss it.
    fn handover_in_batches(&self) -> bool {
        true
    }

    fn export_conn(&mut self, _host: &mut Host<'_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
        let session = self.sessions.get(conn).copied().unwrap_or_default();
        out.write_all(&session.encode()).is_ok()
    }

    fn adopt_conn(&mut self, _host: &mut Host<'_>, conn: ConnId, version: u32, state: &[u8]) -> bool {
        match Session::decode(version, state) {
            Some(session) => {
                self.sessions.insert(conn, session);
                true
            }
            None => false,
        }
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

    // The session moves with its connection to a new instance (as on a reload) and goes on
    // there; a state it cannot read is refused, never a panic.
    #[test]
    fn the_session_moves_with_its_connection() {
        use plugin_api::testing::TestPlugin;
        let mut old = TestPlugin::<{{Type}}>::new("").unwrap();
        let conn = old.connect();
        old.feed(conn, b"first\n");
        let mut new = TestPlugin::<{{Type}}>::new("").unwrap();
        let moved = old.hand_over_to(&mut new, &[conn]).unwrap();
        let (_, conn) = moved[0];
        new.feed(conn, b"second\n");
        assert_eq!(new.host.take_sent(conn), b"second\n");
        assert_eq!(new.call(|p, _| p.sessions.get(conn).copied()), Some(Session { messages: 2 }));
        assert_eq!(Session::decode(1, &Session { messages: 7 }.encode()), Some(Session { messages: 7 }));
        for (version, junk) in [(1, &[1u8, 2, 3][..]), (1, &[0; 9]), (2, &[0; 8])] {
            assert_eq!(Session::decode(version, junk), None);
            assert!(!new.call(|p, h| p.adopt_conn(h, ConnId::new(9, 1), version, junk)));
        }
    }
}
