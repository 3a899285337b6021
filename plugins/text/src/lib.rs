//! Workerman's Text protocol: each `\n`-terminated line is one message. This plugin echoes every
//! line back, newline included. A line longer than the service's max package size closes the
//! connection (the host enforces the limit while the plugin answers `NeedMore`). When the worker
//! drains, an idle connection closes at once and one with half a line closes after that line.
//!
//! Run: host --plugin text --listen 127.0.0.1:7000, then `nc 127.0.0.1 7000`.

use plugin_api::{export_plugin, ConnId, ConnMap, Frame, Host, Protocol, WorkerInfo};

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
}
