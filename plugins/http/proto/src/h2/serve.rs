//! What a server on [`super::Connection`] needs around it, shared by the http plugin and
//! [`crate::AppServer`]: whether a new connection speaks HTTP/2 ([`mode`], [`start`]), framing
//! whole frames for the host ([`frame_input`]), an HTTP/1.1 response head taken apart for
//! HEADERS ([`split_head`]), and the close on a host error ([`close_on_error`]).

use plugin_api::{ConnError, ConnId, Frame, Host, Transport};

use super::frame::PREFACE;
use super::{preface, Preface};

/// The host reports an error on the connection: it closes. A timeout (idle, a request that
/// stalled, a response whose window never opened) says GOAWAY NO_ERROR with the last stream id
/// first (RFC 9113 §6.8), when the send buffer (below `send_window`) takes it.
pub fn close_on_error(
    host: &mut Host<'_>,
    conn: ConnId,
    h2: Option<&mut super::Connection>,
    err: ConnError,
    send_window: usize,
) {
    let goaway = match (h2, err) {
        (Some(h2), ConnError::Timeout) => {
            h2.close_idle();
            h2.take_output()
        }
        _ => Vec::new(),
    };
    if host.pending_send(conn) < send_window {
        host.close_with(conn, &goaway);
    } else {
        host.close(conn);
    }
}

/// Whether a new connection speaks HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.x only: the preface is refused as a bad request.
    Off,
    /// HTTP/2 when it starts with the client preface, else HTTP/1.x.
    Allowed,
    /// HTTP/2 only (ALPN agreed `h2`): anything but the preface closes the connection.
    Required,
}

/// How a new connection may speak HTTP/2: over TLS only when the handshake agreed `h2` by ALPN
/// and `tls` is on (RFC 9113 §3.2: TLS connections choose h2 by ALPN, never by prior knowledge),
/// in cleartext when `cleartext` is on (prior knowledge, §3.3). A host older than plugin-api
/// 0.1.4 cannot say which: the preface decides, with both switches on.
pub fn mode(tls: bool, cleartext: bool, host: &mut Host<'_>, conn: ConnId) -> Mode {
    let allowed = |on: bool| if on { Mode::Allowed } else { Mode::Off };
    match host.transport(conn) {
        t if t.is_tls() => match host.alpn(conn) {
            Some(p) if p == b"h2" && tls => Mode::Required,
            _ => Mode::Off,
        },
        Transport::Unknown => allowed(tls && cleartext),
        _ => allowed(cleartext),
    }
}

/// What the first bytes of a connection in `mode` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// HTTP/1.x from here on.
    Http1,
    /// HTTP/2: the preface is the first message ([`PREFACE`]`.len()` bytes).
    Http2,
    /// A prefix of the preface: wait for more.
    NeedMore,
    /// ALPN agreed h2, and the client sends something else (RFC 9113 §3.4): close.
    Invalid,
}

/// Decides a new connection by its first bytes.
pub fn start(mode: Mode, buf: &[u8]) -> Start {
    match (mode, preface(buf)) {
        (Mode::Off, _) => Start::Http1,
        (_, Preface::Yes) => Start::Http2,
        (_, Preface::Maybe) => Start::NeedMore,
        (Mode::Required, Preface::No) => Start::Invalid,
        (Mode::Allowed, Preface::No) => Start::Http1,
    }
}

/// [`plugin_api::Protocol::input`] on an HTTP/2 connection: the whole frames at the start of
/// `buf` are one message (or the next frame's length, which the host then waits for; a frame
/// over `max_frame` is handed over by its header, for the connection to refuse).
pub fn frame_input(buf: &[u8], max_frame: usize) -> Frame {
    let mut at = 0;
    while let Some(h) = buf.get(at..at + 9) {
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        if len > max_frame {
            // The connection reads its header and ends with FRAME_SIZE_ERROR.
            return Frame::Complete(if at > 0 { at } else { 9 });
        }
        if buf.len() < at + 9 + len {
            if at == 0 {
                return Frame::Complete(9 + len);
            }
            break;
        }
        at += 9 + len;
    }
    if at == 0 {
        Frame::NeedMore
    } else {
        Frame::Complete(at)
    }
}

/// A response head's fields: (name, value).
pub type Fields<'a> = Vec<(&'a str, &'a [u8])>;

/// The status and fields of an HTTP/1.1 response head (as [`crate::response`] writes them), and
/// where its body starts: what [`super::Connection::send_headers`] takes.
pub fn split_head(out: &[u8]) -> Option<(u16, Fields<'_>, usize)> {
    let end = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let mut lines = out[..end].split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status = std::str::from_utf8(lines.next()?.get(9..12)?).ok()?.parse().ok()?;
    let mut fields = Vec::with_capacity(12);
    for line in lines {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = std::str::from_utf8(&line[..colon]).ok()?;
        fields.push((name, line[colon + 1..].trim_ascii()));
    }
    Some((status, fields, end + 4))
}

/// The length of the client preface: the first message of an HTTP/2 connection.
pub const PREFACE_LEN: usize = PREFACE.len();

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_a_response_head() {
        let out = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-1/9\r\nETag: \"x\"\r\n\r\nab";
        let (status, fields, at) = split_head(out).unwrap();
        assert_eq!(status, 206);
        assert_eq!(fields, vec![("Content-Range", &b"bytes 0-1/9"[..]), ("ETag", &b"\"x\""[..])]);
        assert_eq!(&out[at..], b"ab");
    }

    #[test]
    fn frames_whole_frames_and_waits_for_the_next() {
        let max = 16_384;
        let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        let mut buf = settings.to_vec();
        assert_eq!(frame_input(&buf[..5], max), Frame::NeedMore);
        assert_eq!(frame_input(&buf, max), Frame::Complete(9));
        buf.extend_from_slice(&[0, 0, 8, 6, 0, 0, 0, 0, 0, 1]);
        // The second frame is incomplete: the first goes now.
        assert_eq!(frame_input(&buf, max), Frame::Complete(9));
        assert_eq!(frame_input(&buf[9..], max), Frame::Complete(17));
        // A frame over the max frame size: its header alone, for the connection to refuse.
        assert_eq!(frame_input(&[0, 0x40, 1, 0, 0, 0, 0, 0, 1], max), Frame::Complete(9));
    }

    #[test]
    fn the_first_bytes_decide() {
        let p = &PREFACE[..];
        assert_eq!(start(Mode::Allowed, p), Start::Http2);
        assert_eq!(start(Mode::Allowed, &p[..5]), Start::NeedMore);
        assert_eq!(start(Mode::Allowed, b"GET / HTTP/1.1\r\n"), Start::Http1);
        assert_eq!(start(Mode::Required, b"GET / HTTP/1.1\r\n"), Start::Invalid);
        assert_eq!(start(Mode::Required, p), Start::Http2);
        assert_eq!(start(Mode::Off, p), Start::Http1);
    }
}
