//! Workerman's Text protocol: each `\n`-terminated line is one message. This plugin echoes every
//! line back, newline included. A line longer than the service's max package size closes the
//! connection (the host enforces the limit while the plugin answers `NeedMore`).
//!
//! Run: host --plugin text --listen 127.0.0.1:7000, then `nc 127.0.0.1 7000`.

use plugin_api::{export_plugin, ConnId, Frame, Host, Protocol, WorkerInfo};

pub struct Text;

/// The length of the first line in `buf`, newline included, if it is complete.
pub fn frame_line(buf: &[u8]) -> Frame {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => Frame::Complete(i + 1),
        None => Frame::NeedMore,
    }
}

impl Protocol for Text {
    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Text)
    }

    fn input(&mut self, _host: &mut Host<'_>, _conn: ConnId, buf: &[u8]) -> Frame {
        frame_line(buf)
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, line: &[u8]) {
        host.send(conn, line);
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
