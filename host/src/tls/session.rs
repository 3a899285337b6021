//! A connection's TLS, either side of a hand-over: rustls from the handshake on, or the record
//! layer of a connection that moved here from another worker ([`super::record`]). The transport
//! (`worker/transport.rs`) reads and writes plaintext through it, over its socket.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

use super::moved::{self, CannotMove, Counters, MovedTls, TlsNames, COUNTERS};
use super::record::{KeyError, Opened, RecordError, RecordLayer};
use super::tail::RecordTail;

/// A connection's TLS.
pub enum TlsSession {
    /// rustls, from the handshake on.
    Rustls(Box<RustlsSession>),
    /// A connection that moved here after its handshake (`tls::moved`).
    #[cfg_attr(not(test), allow(dead_code, reason = "the hand-over's base: only the tests import yet"))]
    Moved(Box<MovedSession>),
}

pub struct RustlsSession {
    conn: ServerConnection,
    /// The record rustls holds half received, copied as rustls reads it, so that the connection
    /// can move at any time (`tls::tail`).
    tail: RecordTail,
    /// We sent `close_notify`.
    closed_write: bool,
}

pub struct MovedSession {
    layer: RecordLayer,
    names: TlsNames,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsSession::Rustls(_) => write!(f, "Rustls"),
            TlsSession::Moved(m) => write!(f, "Moved({:?})", m.layer),
        }
    }
}

impl TlsSession {
    /// A server connection about to handshake.
    pub fn new(config: &Arc<ServerConfig>) -> Result<Self, rustls::Error> {
        let conn = ServerConnection::new(config.clone())?;
        Ok(TlsSession::Rustls(Box::new(RustlsSession { conn, tail: RecordTail::default(), closed_write: false })))
    }

    /// True while the handshake is not complete.
    pub fn is_handshaking(&self) -> bool {
        matches!(self, TlsSession::Rustls(r) if r.conn.is_handshaking())
    }

    /// The name the client asked for (SNI).
    pub fn server_name(&self) -> Option<&str> {
        match self {
            TlsSession::Rustls(r) => r.conn.server_name(),
            TlsSession::Moved(m) => m.names.server_name.as_deref(),
        }
    }

    /// The protocol agreed with ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            TlsSession::Rustls(r) => r.conn.alpn_protocol(),
            TlsSession::Moved(m) => m.names.alpn.as_deref(),
        }
    }

    /// The connection runs on TLS state moved here from another worker.
    #[cfg_attr(not(test), allow(dead_code, reason = "for the hand-over's status"))]
    pub fn is_moved(&self) -> bool {
        matches!(self, TlsSession::Moved(_))
    }

    /// Records wait to be written to the socket.
    pub fn wants_write(&self) -> bool {
        match self {
            TlsSession::Rustls(r) => r.conn.wants_write(),
            TlsSession::Moved(m) => m.layer.wants_write(),
        }
    }

    /// Queues `close_notify`.
    pub fn send_close_notify(&mut self) {
        match self {
            TlsSession::Rustls(r) => {
                r.conn.send_close_notify();
                r.closed_write = true;
            }
            TlsSession::Moved(m) => m.layer.send_close_notify(),
        }
    }

    /// Plaintext, reading `socket` for records as needed. Ok(0): the peer closed (`close_notify`,
    /// or the socket closed without it).
    pub fn read<S: Read + Write>(&mut self, socket: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TlsSession::Rustls(r) => read_rustls(r, socket, buf),
            TlsSession::Moved(m) => read_moved(&mut m.layer, socket, buf),
        }
    }

    /// Takes plaintext into records (written by later calls or by [`TlsSession::flush`]): how
    /// much was taken; `WouldBlock` when the records waiting fill the buffer and the socket is full.
    pub fn write<S: Write>(&mut self, socket: &mut S, data: &[u8]) -> io::Result<usize> {
        loop {
            let n = match self {
                TlsSession::Rustls(r) => r.conn.writer().write(data)?,
                TlsSession::Moved(m) => match m.layer.write_plain(data) {
                    Ok(n) => n,
                    Err(e) => {
                        if e == RecordError::Exhausted {
                            Counters::count(&COUNTERS.closed_exhausted);
                        }
                        // `close_notify` is queued: send it if the socket takes it.
                        let _ = write_moved(&mut m.layer, socket);
                        return Err(io::Error::new(io::ErrorKind::BrokenPipe, e));
                    }
                },
            };
            if n > 0 || data.is_empty() {
                return Ok(n);
            }
            // The TLS buffer is full: make room by writing records to the socket.
            if !self.wants_write() || !self.flush(socket)? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    /// Writes the records waiting until none is left (Ok(true)) or the socket is full (Ok(false)).
    pub fn flush<S: Write>(&mut self, socket: &mut S) -> io::Result<bool> {
        match self {
            TlsSession::Rustls(r) => write_rustls(&mut r.conn, socket),
            TlsSession::Moved(m) => write_moved(&mut m.layer, socket),
        }
    }

    /// Readies the connection to move: the plaintext it holds is appended to `input` (the
    /// connection's unread bytes); what it then holds of the peer's data is a record not whole
    /// yet, which moves as it is. Nothing is read from the socket. Refused (nothing taken): a
    /// connection that cannot move, and why.
    #[cfg_attr(not(test), allow(dead_code, reason = "the hand-over's base: only the tests export yet"))]
    pub fn settle(&mut self, input: &mut Vec<u8>) -> Result<(), CannotMove> {
        self.movable()?;
        let mut chunk = [0u8; 4096];
        match self {
            // (rustls processed every record it read: `read_rustls` processes after each read.)
            TlsSession::Rustls(r) => loop {
                match r.conn.reader().read(&mut chunk) {
                    Ok(0) => return Ok(()),
                    Ok(n) => input.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(CannotMove::Failed(e.to_string())),
                }
            },
            TlsSession::Moved(m) => loop {
                match m.layer.read_plain(&mut chunk) {
                    Ok(Opened::Data(n)) => input.extend_from_slice(&chunk[..n]),
                    Ok(Opened::NeedMore | Opened::End) => return Ok(()),
                    Err(e) => return Err(CannotMove::Failed(e.to_string())),
                }
            },
        }
    }

    /// Whether the connection can move now, and why not ([`TlsSession::into_moved`] says the
    /// same, and gives the state).
    pub fn movable(&self) -> Result<(), CannotMove> {
        match self {
            TlsSession::Rustls(r) if r.conn.is_handshaking() => Err(CannotMove::Handshaking),
            TlsSession::Rustls(r) if r.tail.bytes().is_none() => Err(CannotMove::Unframed),
            TlsSession::Rustls(_) => Ok(()),
            TlsSession::Moved(m) => match m.layer.failure() {
                Some(e) => Err(CannotMove::Failed(e.to_string())),
                None => Ok(()),
            },
        }
    }

    /// The state that continues the connection in another worker ([`MovedTls::encode`] makes
    /// bytes of it). The transport's plaintext was taken first ([`TlsSession::settle`]).
    /// Refused: the session back as it was (None when rustls consumed it: the connection can
    /// only be closed), and why.
    #[cfg_attr(not(test), allow(dead_code, reason = "the hand-over's base: only the tests export yet"))]
    pub fn into_moved(self) -> Result<MovedTls, (Option<TlsSession>, CannotMove)> {
        match self {
            TlsSession::Rustls(r) => {
                let Some(rest) = r.tail.bytes().map(<[u8]>::to_vec) else {
                    return Err((Some(TlsSession::Rustls(r)), CannotMove::Unframed));
                };
                let RustlsSession { conn, tail, closed_write } = *r;
                moved::freeze_rustls(Box::new(conn), rest, closed_write).map_err(|(conn, why)| {
                    let back = conn
                        .map(|conn| TlsSession::Rustls(Box::new(RustlsSession { conn: *conn, tail, closed_write })));
                    (back, why)
                })
            }
            TlsSession::Moved(m) => {
                if let Some(e) = m.layer.failure() {
                    return Err((Some(TlsSession::Moved(m)), CannotMove::Failed(e.to_string())));
                }
                if m.layer.has_plaintext() {
                    return Err((Some(TlsSession::Moved(m)), CannotMove::PendingPlaintext));
                }
                let MovedSession { layer, names } = *m;
                Ok(MovedTls::from_layer(layer, names.suite, names.server_name, names.alpn))
            }
        }
    }

    /// The session of a connection that moved here.
    #[cfg_attr(not(test), allow(dead_code, reason = "the hand-over's base: only the tests import yet"))]
    pub fn from_moved(state: MovedTls) -> Result<Self, KeyError> {
        let (layer, names) = state.into_layer()?;
        Ok(TlsSession::Moved(Box::new(MovedSession { layer, names })))
    }
}

fn read_rustls<S: Read + Write>(tls: &mut RustlsSession, socket: &mut S, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // Plaintext rustls already holds comes first: the socket may have no new edge for it.
        match tls.conn.reader().read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The socket closed without close_notify: a close all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        match tls.conn.read_tls(&mut tls.tail.reader(socket)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let was_handshaking = tls.conn.is_handshaking();
        if let Err(e) = tls.conn.process_new_packets() {
            // rustls queued an alert telling the peer why: send it if the socket takes it.
            let _ = write_rustls(&mut tls.conn, socket);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        // A handshake flight to send: written now if the socket takes it, else the loop
        // flushes it once it is writable (`wants_write`). What the end of a TLS 1.3 handshake
        // queues (session tickets: the client waits for nothing) waits for this turn's flush
        // (the caller sees `wants_write`), so it leaves in one write with the first response;
        // the last flight of a TLS 1.2 handshake (ChangeCipherSpec, Finished) is what the client
        // waits for before it sends its request, so it leaves now.
        let tls13 = tls.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        if tls.conn.is_handshaking() || (was_handshaking && !tls13) {
            write_rustls(&mut tls.conn, socket)?;
        }
    }
}

fn read_moved<S: Read + Write>(layer: &mut RecordLayer, socket: &mut S, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match layer.read_plain(buf) {
            Ok(Opened::Data(n)) => return Ok(n),
            Ok(Opened::End) => return Ok(0),
            Ok(Opened::NeedMore) => {}
            Err(e) => {
                match e {
                    RecordError::KeyUpdate => Counters::count(&COUNTERS.closed_key_update),
                    RecordError::Exhausted => Counters::count(&COUNTERS.closed_exhausted),
                    _ => {}
                }
                // The alert telling the peer why is queued: send it if the socket takes it.
                let _ = write_moved(layer, socket);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
        match layer.read_tls(socket) {
            // The socket closed without close_notify: a close all the same.
            Ok(0) => return Ok(0),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn write_rustls<S: Write>(tls: &mut ServerConnection, socket: &mut S) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn write_moved<S: Write>(layer: &mut RecordLayer, socket: &mut S) -> io::Result<bool> {
    while layer.wants_write() {
        match layer.write_tls(socket) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
