//! What a server on [`super::Connection`] needs around it, shared by the http plugin and
//! [`crate::AppServer`]: whether a new connection speaks HTTP/2 ([`mode`], [`start`]), framing
//! whole frames for the host ([`frame_input`]), an HTTP/1.1 response head taken apart for
//! HEADERS ([`Http1Head`], [`split_head`]), and the close on a host error ([`close_on_error`]).

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
/// where its body starts: what [`super::Connection::send_headers`] takes. [`Http1Head`] does the
/// same without building the list.
pub fn split_head(out: &[u8]) -> Option<(u16, Fields<'_>, usize)> {
    let head = Http1Head::parse(out)?;
    let mut fields = Vec::with_capacity(12);
    for line in head.lines() {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = std::str::from_utf8(&line[..colon]).ok()?;
        fields.push((name, line[colon + 1..].trim_ascii()));
    }
    Some((head.status, fields, head.body_at))
}

/// An HTTP/1.1 response head (as [`crate::response`] writes it) read in place, for
/// [`super::Connection::send_fields`]: the status, the fields as they come, where the body
/// starts.
#[derive(Debug, Clone, Copy)]
pub struct Http1Head<'a> {
    pub status: u16,
    /// The field lines, each ending with CRLF.
    fields: &'a [u8],
    /// Where the body starts (after the blank line).
    pub body_at: usize,
}

impl<'a> Http1Head<'a> {
    /// The head at the start of `out`; `None` when there is no complete head or no status.
    pub fn parse(out: &'a [u8]) -> Option<Http1Head<'a>> {
        let first = out.iter().position(|&b| b == b'\n')?;
        let status = out.get(9..12).filter(|d| d.iter().all(u8::is_ascii_digit))?;
        let status = status.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        let mut at = first + 1;
        loop {
            let nl = at + out.get(at..)?.iter().position(|&b| b == b'\n')?;
            if nl == at || (nl == at + 1 && out[at] == b'\r') {
                return Some(Http1Head { status, fields: &out[first + 1..at], body_at: nl + 1 });
            }
            at = nl + 1;
        }
    }

    fn lines(&self) -> impl Iterator<Item = &'a [u8]> {
        let fields = self.fields;
        fields.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l)).filter(|l| !l.is_empty())
    }

    /// The fields (name, value); a line without a colon is skipped.
    pub fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        self.lines().filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii()))
        })
    }
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
        let head = Http1Head::parse(out).unwrap();
        assert_eq!((head.status, head.body_at), (206, at));
        let fields: Vec<_> = head.fields().collect();
        assert_eq!(fields, vec![(&b"Content-Range"[..], &b"bytes 0-1/9"[..]), (&b"ETag"[..], &b"\"x\""[..])]);
        assert!(Http1Head::parse(b"HTTP/1.1 200 OK\r\nA: b\r\n").is_none(), "no blank line yet");
        assert!(Http1Head::parse(b"HTTP/1.1 2x0 OK\r\n\r\n").is_none());
        let bare = Http1Head::parse(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((bare.status, bare.fields().count(), bare.body_at), (204, 0, 27));
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
