//! Workerman's Frame protocol: each message is a 4-byte big-endian length, which counts the 4
//! header bytes too, followed by the payload. This plugin echoes every frame back, framed the same
//! way. A length below 4 or above the service's max package size (`--max-package-size`, 1 MiB by
//! default) can never be a valid frame: the connection is closed at once, nothing is buffered.
//! No config keys.
//!
//! Run: host --plugin frame --listen 127.0.0.1:7001
//!
//! The framing is public, so an application plugin can speak Frame without this echo:
//! [`frame_len`] (the `input` step), [`payload`] (the message body) and [`encode`] (a reply).

use plugin_api::{export_plugin, ConnId, Frame, Host, Protocol, StateWriter, WorkerInfo};

/// Bytes of the length header.
pub const HEADER_LEN: usize = 4;

/// Frames the next message in `buf`: its total length (header included) once the header is
/// buffered, `Invalid` when that length is below [`HEADER_LEN`] or above `max` (the service's max
/// package size), `NeedMore` before the header is complete.
pub fn frame_len(buf: &[u8], max: usize) -> Frame {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
        return Frame::NeedMore;
    };
    let len = u32::from_be_bytes(*header) as u64;
    if len < HEADER_LEN as u64 || len > max as u64 {
        return Frame::Invalid;
    }
    Frame::Complete(len as usize)
}

/// The payload of one complete frame (as delimited by [`frame_len`]).
pub fn payload(frame: &[u8]) -> &[u8] {
    frame.get(HEADER_LEN..).unwrap_or_default()
}

/// Appends `payload` as one frame to `out`. Panics on a payload over `u32::MAX - 4` bytes, which
/// no service can carry.
pub fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len() + HEADER_LEN).expect("a frame is at most 4 GiB");
    out.reserve(payload.len() + HEADER_LEN);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// `payload` as one frame.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(payload, &mut out);
    out
}

/// The echo service: every frame comes back as it was sent.
pub struct FrameEcho {
    max_package_size: usize,
}

impl Protocol for FrameEcho {
    fn new(_config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        Ok(FrameEcho { max_package_size: worker.max_package_size })
    }

    fn input(&mut self, _host: &mut Host<'_>, _conn: ConnId, buf: &[u8]) -> Frame {
        frame_len(buf, self.max_package_size)
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, frame: &[u8]) {
        // The header is already the right one: a frame echoed unchanged is its own encoding.
        host.send(conn, frame);
    }

    // Hand-over: a connection has no state of the plugin's (a frame half received is the
    // host's to move): version 1, empty.
    const HANDOVER_VERSION: u32 = 1;

    fn export_conn(&mut self, _host: &mut Host<'_>, _conn: ConnId, _out: &mut StateWriter<'_>) -> bool {
        true
    }

    fn adopt_conn(&mut self, _host: &mut Host<'_>, _conn: ConnId, version: u32, state: &[u8]) -> bool {
        version == 1 && state.is_empty()
    }
}

export_plugin!(FrameEcho);

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    #[test]
    fn waits_for_the_whole_header() {
        assert_eq!(frame_len(b"", MAX), Frame::NeedMore);
        assert_eq!(frame_len(&[0, 0, 0], MAX), Frame::NeedMore);
    }

    #[test]
    fn length_counts_the_header() {
        assert_eq!(frame_len(&[0, 0, 0, 4], MAX), Frame::Complete(4));
        assert_eq!(frame_len(&[0, 0, 0, 9, b'h', b'e'], MAX), Frame::Complete(9));
        assert_eq!(frame_len(&[0, 0, 1, 0], MAX), Frame::Complete(256));
        // Only the first frame counts when several are buffered.
        let two = [encode(b"ab"), encode(b"cde")].concat();
        assert_eq!(frame_len(&two, MAX), Frame::Complete(6));
    }

    #[test]
    fn refuses_impossible_lengths() {
        for short in 0..4u32 {
            assert_eq!(frame_len(&short.to_be_bytes(), MAX), Frame::Invalid, "length {short}");
        }
        assert_eq!(frame_len(&[0xff; 4], MAX), Frame::Invalid);
        assert_eq!(frame_len(&(MAX as u32 + 1).to_be_bytes(), MAX), Frame::Invalid);
        assert_eq!(frame_len(&(MAX as u32).to_be_bytes(), MAX), Frame::Complete(MAX));
    }

    #[test]
    fn encode_round_trips() {
        for p in [&b""[..], b"x", b"hello frame", &[0u8; 1000]] {
            let f = encode(p);
            assert_eq!(f.len(), p.len() + 4);
            assert_eq!(frame_len(&f, MAX), Frame::Complete(f.len()));
            assert_eq!(payload(&f), p);
        }
        let mut out = b"keep".to_vec();
        encode_into(b"z", &mut out);
        assert_eq!(out, b"keep\0\0\0\x05z");
    }
}
