//! A connection's socket I/O, below the plugin: plain TCP, or TLS (rustls) over it.
//!
//! [`Transport`] reads and writes plaintext the way a `TcpStream` reads and writes bytes, so the
//! event loop treats both alike: `read` decrypts (running the handshake on the way),
//! `write` encrypts, [`Transport::flush_pending`] writes the records rustls still holds, and
//! `shutdown(Write)` sends `close_notify` first. Everything is non-blocking: `WouldBlock` means
//! what it means on a socket. One difference the loop must respect: a short TLS read does not
//! mean the socket is empty (records may sit in rustls or in the socket while the plugin got
//! one buffer), so a TLS connection is read until `WouldBlock` ([`Transport::short_read_empties`]).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::{ServerConfig, ServerConnection};

pub struct Transport {
    stream: TcpStream,
    tls: Option<Box<ServerConnection>>,
}

impl Transport {
    pub fn plain(stream: TcpStream) -> Self {
        Transport { stream, tls: None }
    }

    /// A TLS server connection over `stream`; the handshake runs as the connection is read.
    pub fn tls(stream: TcpStream, config: &Arc<ServerConfig>) -> io::Result<Self> {
        let conn = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        Ok(Transport { stream, tls: Some(Box::new(conn)) })
    }

    /// True while a TLS handshake is not complete (never for plain TCP).
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.is_handshaking())
    }

    /// The name the client asked for (TLS SNI).
    pub fn server_name(&self) -> Option<&str> {
        self.tls.as_ref()?.server_name()
    }

    /// The protocol agreed with ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.as_ref()?.alpn_protocol()
    }

    /// Whether a read shorter than the buffer means the socket has nothing more (plain TCP).
    pub fn short_read_empties(&self) -> bool {
        self.tls.is_none()
    }

    /// TLS records are waiting to be written to the socket.
    pub fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Writes the TLS records rustls holds; Ok(true) when none is left (always for plain TCP).
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        match self.tls.as_mut() {
            Some(tls) => write_records(tls, &mut self.stream),
            None => Ok(true),
        }
    }

    /// Our side is done: TLS sends `close_notify` (best effort: the socket took everything
    /// before), then the socket's sending side is shut.
    pub fn shutdown(&mut self, how: Shutdown) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            if matches!(how, Shutdown::Write | Shutdown::Both) {
                tls.send_close_notify();
                let _ = self.flush_pending();
            }
        }
        self.stream.shutdown(how)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.stream.set_nodelay(on)
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.stream.peer_addr()
    }

    /// The socket's pending error (an outbound connect's outcome: `SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        self.stream.take_error()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }
}

impl Read for Transport {
    /// Plaintext. Ok(0): the peer closed (TLS: `close_notify`, or the socket closed without it).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.stream.read(buf);
        };
        loop {
            // Plaintext rustls already holds comes first: the socket may have no new edge for it.
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without close_notify: a close all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match tls.read_tls(&mut self.stream) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = tls.process_new_packets() {
                // rustls queued an alert telling the peer why: send it if the socket takes it.
                let _ = write_records(tls, &mut self.stream);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages (or session tickets) to send: written now if the socket takes
            // them, else the loop flushes them once it is writable (`wants_write`).
            write_records(tls, &mut self.stream)?;
        }
    }
}

/// Writes the records rustls holds until none is left (Ok(true)) or the socket is full (Ok(false)).
fn write_records(tls: &mut ServerConnection, stream: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl Write for Transport {
    /// Plaintext: how much was taken (TLS: encrypted into rustls, written by later calls or by
    /// [`Transport::flush_pending`]).
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.stream.write(data);
        };
        loop {
            let n = tls.writer().write(data)?;
            if n > 0 || data.is_empty() {
                return Ok(n);
            }
            // rustls' buffer is full: make room by writing records to the socket.
            if !tls.wants_write() || !write_records(tls, &mut self.stream)? {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.flush_pending()? {
            true => Ok(()),
            false => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Source for Transport {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        self.stream.register(registry, token, interests)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        self.stream.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.stream.deregister(registry)
    }
}
