//! Workerman's Text protocol: each `\n`-terminated line is one message. This plugin echoes every
//! line back, newline included. A line longer than the service's max package size closes the
//! connection (the host enforces the limit while the plugin answers `NeedMore`). When the worker
//! drains, an idle connection closes at once and one with half a line closes after that line.
//!
//! On a reload, upgrade or recycle its connections move to the new worker (hand-over): the
//! host carries the half line read so far, the plugin its one flag (state version 1).
//!
//! Run: host --plugin text --listen 127.0.0.1:7000, then `nc 127.0.0.1 7000`.

use std::io::Write;

use plugin_api::{export_plugin, ConnId, ConnMap, Frame, Host, Protocol, StateWriter, WorkerInfo};

#[derive(Debug, Default)]
struct Conn {
    /// Part of a line is buffered (the last framing call found no newline).
    partial: bool,
    /// Draining: close after the line in flight.
    close_after_line: bool,
}

pub struct Text {
    conns: ConnMap<Conn>,
}

/// The length of the first line in `buf`, newline included, if it is complete.
pub fn frame_line(buf: &[u8]) -> Frame {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => Frame::Complete(i + 1),
        None => Frame::NeedMore,
    }
}

impl Protocol for Text {
    /// Version 1: one byte per connection, 1 when part of a line is buffered.
    const HANDOVER_VERSION: u32 = 1;

    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Text { conns: ConnMap::new() })
    }

    fn input(&mut self, _host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame {
        let frame = frame_line(buf);
        self.conns.entry(conn).partial = frame == Frame::NeedMore && !buf.is_empty();
        frame
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, line: &[u8]) {
        host.send(conn, line);
        let state = self.conns.entry(conn);
        state.partial = false;
        if state.close_after_line {
            host.close(conn);
        }
    }

    fn on_close(&mut self, _host: &mut Host<'_>, conn: ConnId) {
        self.conns.remove(conn);
    }

    /// Lines are echoed to their own connection and there is no worker state: the connections
    /// move a batch at a time while the rest are served.
    fn handover_in_batches(&self) -> bool {
        true
    }

    fn export_conn(&mut self, _host: &mut Host<'_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
        let state = self.conns.get(conn);
        // A connection asked to close after its line is draining already: it stays.
        if state.is_some_and(|s| s.close_after_line) {
            return false;
        }
        out.write_all(&[state.is_some_and(|s| s.partial) as u8]).is_ok()
    }

    fn adopt_conn(&mut self, _host: &mut Host<'_>, conn: ConnId, version: u32, state: &[u8]) -> bool {
        match (version, state) {
            (1, [partial @ (0 | 1)]) => {
                self.conns.insert(conn, Conn { partial: *partial == 1, close_after_line: false });
                true
            }
            _ => false,
        }
    }

    fn on_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        let state = self.conns.entry(conn);
        if state.partial {
            state.close_after_line = true;
        } else {
            host.close(conn);
        }
    }
}

export_plugin!(Text);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_one_line_at_a_time() {
        assert_eq!(frame_line(b""), Frame::NeedMore);
        assert_eq!(frame_line(b"abc"), Frame::NeedMore);
        assert_eq!(frame_line(b"abc\n"), Frame::Complete(4));
        assert_eq!(frame_line(b"a\nbc\n"), Frame::Complete(2));
        assert_eq!(frame_line(b"\n"), Frame::Complete(1));
        assert_eq!(frame_line(b"crlf\r\nx"), Frame::Complete(6));
    }

    // A half line moves with its connection: the new instance completes it, and a draining
    // connection (closing after its line) stays behind.
    #[test]
    fn a_half_line_is_completed_by_the_new_instance() {
        use plugin_api::testing::TestPlugin;
        let mut old = TestPlugin::<Text>::new("").unwrap();
        let half = old.connect();
        old.feed(half, b"hel");
        let draining = old.connect();
        old.feed(draining, b"x");
        old.drain(&[draining]);
        let mut new = TestPlugin::<Text>::new("").unwrap();
        let moved = old.hand_over_to(&mut new, &[half, draining]).unwrap();
        assert_eq!(moved.len(), 1, "the draining connection stays");
        let (from, to) = moved[0];
        assert_eq!(from, half);
        new.feed(to, b"lo\n");
        assert_eq!(new.host.take_sent(to), b"hello\n");
        assert!(new.call(|p, _| p.conns.get(to).is_some_and(|c| !c.partial)));
    }

    #[test]
    fn state_of_an_unknown_version_is_refused() {
        use plugin_api::testing::TestPlugin;
        let mut new = TestPlugin::<Text>::new("").unwrap();
        let conn = ConnId::new(0, 1);
        assert!(!new.call(|p, h| p.adopt_conn(h, conn, 2, &[1])));
        assert!(!new.call(|p, h| p.adopt_conn(h, conn, 1, &[7])));
        assert!(!new.call(|p, h| p.handover_accepts(h, "text", 2)));
        assert!(new.call(|p, h| p.handover_accepts(h, "text", 1)));
    }
}
