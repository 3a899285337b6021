//! A connection's socket I/O, below the plugin: a TCP or Unix stream, plain or with TLS over it
//! (rustls; or, for a connection moved here from another worker, the user-space record layer of
//! `tls::record`), or a UDP session (no socket of its own: see `worker/datagram.rs`).
//!
//! [`Transport`] reads and writes plaintext the way a `TcpStream` reads and writes bytes, so the
//! event loop treats both alike: `read` decrypts (running the handshake on the way),
//! `write` encrypts, [`Transport::flush_pending`] writes the records rustls still holds, and
//! `shutdown(Write)` sends `close_notify` first. Everything is non-blocking: `WouldBlock` means
//! what it means on a socket. One difference the loop must respect: a short TLS read does not
//! mean the socket is empty (records may sit in rustls or in the socket while the plugin got
//! one buffer), so a TLS connection is read until `WouldBlock` ([`Transport::short_read_empties`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use rustls::ServerConfig;

use crate::tls::moved::CannotMove;
pub use crate::tls::session::TlsSession;

/// What the transport needs of a socket: non-blocking reads and writes (`WouldBlock` when it
/// has nothing or is full), shutting a side down, and the two writes around a file range. A
/// TCP or Unix stream, or in the unit tests a fake (`worker/fake_socket.rs`), so that
/// backpressure, pausing, half-close, drain and flush are tested without sockets.
pub trait SocketIo: Read + Write {
    /// Shuts down a side of the connection (`shutdown(2)`).
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;

    /// Writes bytes that a file range follows at once (a response head before its body): with
    /// `MSG_MORE` on a socket, so the kernel sends them in the file's first segments instead
    /// of a small segment of their own (what nginx's `tcp_nopush` does with a cork, without its
    /// two extra system calls).
    fn write_more(&mut self, buf: &[u8]) -> io::Result<usize>;

    /// Writes up to `len` bytes of `file` from `offset` (`sendfile(2)`: the kernel copies from
    /// the page cache); Ok(0) when the file ends before them.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize>;
}

fn send_more(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    use nix::sys::socket::{send, MsgFlags};
    // nix 0.29 names no MSG_MORE: the kernel's bit, kept as given.
    let flags = MsgFlags::from_bits_retain(nix::libc::MSG_MORE) | MsgFlags::MSG_NOSIGNAL;
    send(fd.as_raw_fd(), buf, flags).map_err(io::Error::from)
}

fn send_file(to: BorrowedFd<'_>, file: &File, offset: u64, len: usize) -> io::Result<usize> {
    let mut off = i64::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    nix::sys::sendfile::sendfile64(to, file, Some(&mut off), len).map_err(io::Error::from)
}

impl SocketIo for TcpStream {
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }

    fn write_more(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_more(self.as_fd(), buf)
    }

    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        send_file(self.as_fd(), file, offset, len)
    }
}

impl SocketIo for UnixStream {
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }

    fn write_more(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_more(self.as_fd(), buf)
    }

    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        send_file(self.as_fd(), file, offset, len)
    }
}

/// The byte stream under a connection.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A UDP session with this peer: datagrams arrive through the worker's UDP socket and leave
    /// through it (`Core::send`); reading gives nothing, writing is refused, registering is a no-op.
    Datagram(SocketAddr),
    /// A TCP or Unix stream whose receives and sends go through the worker's io_uring
    /// (`worker/uring`, `--io uring`).
    Ring(super::uring::RingSocket),
    /// A socket the unit tests play (registering it is a no-op).
    #[cfg(test)]
    Fake(super::fake_socket::FakeSocket),
}

/// Evaluates `$body` with `$s` bound to the stream's [`SocketIo`], or `$datagram` for a UDP session.
macro_rules! with_io {
    ($stream:expr, $s:ident => $body:expr, datagram => $datagram:expr) => {
        match $stream {
            Stream::Tcp($s) => $body,
            Stream::Unix($s) => $body,
            Stream::Ring($s) => $body,
            #[cfg(test)]
            Stream::Fake($s) => $body,
            Stream::Datagram(_) => $datagram,
        }
    };
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Tcp(s)
    }
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Stream::Unix(s)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        with_io!(self, s => s.read(buf), datagram => Err(io::ErrorKind::WouldBlock.into()))
    }
}

impl Write for Stream {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        with_io!(self, s => s.write(data), datagram => Err(io::ErrorKind::Unsupported.into()))
    }

    /// One `writev` for all of them: rustls hands every TLS record it holds as one slice, so a
    /// handshake flight (or the session tickets and a response) leaves in one system call and one
    /// segment instead of one per record (the default `write_vectored` writes the first only).
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        with_io!(self, s => s.write_vectored(bufs), datagram => Err(io::ErrorKind::Unsupported.into()))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

pub struct Transport {
    stream: Stream,
    tls: Option<TlsSession>,
}

impl Transport {
    pub fn plain(stream: impl Into<Stream>) -> Self {
        Transport { stream: stream.into(), tls: None }
    }

    /// A TLS server connection over `stream`; the handshake runs as the connection is read.
    pub fn tls(stream: impl Into<Stream>, config: &Arc<ServerConfig>) -> io::Result<Self> {
        let tls = TlsSession::new(config).map_err(io::Error::other)?;
        Ok(Transport { stream: stream.into(), tls: Some(tls) })
    }

    /// The stream itself (under the ring's I/O for a ring socket): its addresses and options.
    fn base(&self) -> &Stream {
        match &self.stream {
            Stream::Ring(r) => r.inner(),
            s => s,
        }
    }

    /// The peer of a UDP session (None for a stream).
    pub fn datagram_peer(&self) -> Option<SocketAddr> {
        match self.stream {
            Stream::Datagram(peer) => Some(peer),
            _ => None,
        }
    }

    /// The credentials of a Unix socket's peer (pid, uid, gid); None for TCP and UDP.
    pub fn peer_cred(&self) -> Option<(u32, u32, u32)> {
        match self.base() {
            Stream::Unix(s) => crate::sys::peer_cred(std::os::fd::AsFd::as_fd(s)).ok(),
            _ => None,
        }
    }

    /// True while a TLS handshake is not complete (never for plain TCP).
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsSession::is_handshaking)
    }

    /// The name the client asked for (TLS SNI).
    pub fn server_name(&self) -> Option<&str> {
        self.tls.as_ref()?.server_name()
    }

    /// What carries the connection, as a plugin hears it (`RawHostExt::transport`).
    pub fn kind(&self) -> plugin_api::abi::RawTransport {
        use plugin_api::abi::RawTransport;
        // A ring socket is the stream it wraps.
        let stream = match &self.stream {
            Stream::Ring(r) => r.inner(),
            s => s,
        };
        match (stream, self.tls.is_some()) {
            (Stream::Ring(_), _) => RawTransport::UNKNOWN,
            (Stream::Tcp(_), false) => RawTransport::TCP,
            (Stream::Tcp(_), true) => RawTransport::TLS_TCP,
            (Stream::Unix(_), false) => RawTransport::UNIX,
            (Stream::Unix(_), true) => RawTransport::TLS_UNIX,
            (Stream::Datagram(_), _) => RawTransport::UDP,
            #[cfg(test)]
            (Stream::Fake(_), false) => RawTransport::TCP,
            #[cfg(test)]
            (Stream::Fake(_), true) => RawTransport::TLS_TCP,
        }
    }

    /// The protocol agreed with ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.tls.as_ref()?.alpn_protocol()
    }

    /// The connection runs on TLS state moved here from another worker.
    #[cfg_attr(not(test), allow(dead_code, reason = "for the hand-over's status"))]
    pub fn is_moved_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsSession::is_moved)
    }

    /// Readies a TLS connection to move: the plaintext its TLS layer holds is appended to
    /// `input` (the connection's unread bytes); what it then holds of the peer's data is a record
    /// not whole yet, which moves as it is. Nothing is read from the socket. Refused (nothing
    /// taken): a connection that cannot move, and why.
    #[cfg_attr(not(test), allow(dead_code, reason = "the hand-over's base: only the tests export yet"))]
    pub fn settle_tls(&mut self, input: &mut Vec<u8>) -> Result<(), CannotMove> {
        match self.tls.as_mut() {
            Some(tls) => tls.settle(input),
            None => Ok(()),
        }
    }

    /// Whether a read shorter than the buffer means the socket has nothing more (plain TCP).
    pub fn short_read_empties(&self) -> bool {
        self.tls.is_none()
    }

    /// TLS records are waiting to be written to the socket.
    pub fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsSession::wants_write)
    }

    /// Writes the TLS records rustls holds; Ok(true) when none is left (always for plain TCP).
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        match self.tls.as_mut() {
            Some(tls) => tls.flush(&mut self.stream),
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
        // (A UDP session has nothing to shut down or linger for: it just ends.)
        with_io!(&self.stream, s => SocketIo::shutdown(s, how), datagram => Err(io::ErrorKind::Unsupported.into()))
    }

    /// TCP_NODELAY on a TCP stream (nothing for the others).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        match self.base() {
            Stream::Tcp(s) => s.set_nodelay(on),
            _ => Ok(()),
        }
    }

    /// The peer's IP address (an error on a Unix socket: it has none).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self.base() {
            Stream::Tcp(s) => s.peer_addr(),
            Stream::Datagram(peer) => Ok(*peer),
            _ => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// The socket's pending error (an outbound connect's outcome: `SO_ERROR`).
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self.base() {
            Stream::Tcp(s) => s.take_error(),
            Stream::Unix(s) => s.take_error(),
            _ => Ok(None),
        }
    }

    /// The local IP address (an error on a Unix socket; a UDP session's is set by the core).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self.base() {
            Stream::Tcp(s) => s.local_addr(),
            _ => Err(io::ErrorKind::Unsupported.into()),
        }
    }
}

/// Bytes of a file read at a time to be encrypted under TLS (one TLS record's worth).
const TLS_FILE_CHUNK: usize = 16 * 1024;

impl Transport {
    /// Writes plaintext that a file range follows at once (a response head before its body):
    /// on a plain stream with `MSG_MORE` ([`SocketIo::write_more`]); under TLS an ordinary `write`.
    pub fn write_before_file(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.tls.is_some() {
            return self.write(buf);
        }
        with_io!(&mut self.stream, s => s.write_more(buf), datagram => Err(io::ErrorKind::Unsupported.into()))
    }

    /// Writes up to `len` bytes of `file` from `offset` (a `RawHost::send_file` range): how many
    /// the socket took, Ok(0) when the file ends before them. A plain TCP or Unix stream uses
    /// `sendfile(2)` (the kernel copies from the page cache; a page not cached is read from the
    /// disk in this call); TLS reads a record's worth with `pread` and writes it through rustls
    /// (what rustls does not take is read again next time). `WouldBlock` as `write`.
    pub fn write_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        if self.tls.is_some() {
            let mut buf = [0u8; TLS_FILE_CHUNK];
            let want = len.min(TLS_FILE_CHUNK);
            let n = loop {
                match file.read_at(&mut buf[..want], offset) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            if n == 0 {
                return Ok(0);
            }
            return self.write(&buf[..n]);
        }
        with_io!(&mut self.stream, s => s.send_file(file, offset, len), datagram => Err(io::ErrorKind::Unsupported.into()))
    }
}

impl Read for Transport {
    /// Plaintext. Ok(0): the peer closed (TLS: `close_notify`, or the socket closed without it).
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tls.as_mut() {
            None => self.stream.read(buf),
            Some(tls) => tls.read(&mut self.stream, buf),
        }
    }
}

impl Write for Transport {
    /// Plaintext: how much was taken (TLS: encrypted into records, written by later calls or by
    /// [`Transport::flush_pending`]).
    #[inline]
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.tls.as_mut() {
            None => self.stream.write(data),
            Some(tls) => tls.write(&mut self.stream, data),
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
        match &mut self.stream {
            Stream::Tcp(s) => s.register(registry, token, interests),
            Stream::Unix(s) => s.register(registry, token, interests),
            Stream::Ring(s) => {
                s.arm(token.0);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.reregister(registry, token, interests),
            Stream::Unix(s) => s.reregister(registry, token, interests),
            _ => Ok(()),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match &mut self.stream {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Unix(s) => s.deregister(registry),
            Stream::Ring(s) => {
                s.disarm();
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// A connection's socket taken out of its transport (`core::export`): the descriptor, and
/// which kind of stream it is.
pub enum Socket {
    Tcp(OwnedFd),
    Unix(OwnedFd),
    #[cfg(test)]
    Fake(super::fake_socket::FakeSocket),
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Socket::Tcp(fd) => write!(f, "Tcp({})", fd.as_raw_fd()),
            Socket::Unix(fd) => write!(f, "Unix({})", fd.as_raw_fd()),
            #[cfg(test)]
            Socket::Fake(_) => write!(f, "Fake"),
        }
    }
}

impl Socket {
    /// A socket of `kind` received in a hand-over.
    pub fn from_kind(kind: SocketKind, fd: OwnedFd) -> Self {
        match kind {
            SocketKind::Tcp => Socket::Tcp(fd),
            SocketKind::Unix => Socket::Unix(fd),
        }
    }

    /// Its kind and its descriptor, lent (a hand-over sends it: the replacement gets its own
    /// copy, this one stays until the replacement acknowledges). None for a test's fake socket.
    pub fn lend(&self) -> Option<(SocketKind, BorrowedFd<'_>)> {
        match self {
            Socket::Tcp(fd) => Some((SocketKind::Tcp, fd.as_fd())),
            Socket::Unix(fd) => Some((SocketKind::Unix, fd.as_fd())),
            #[cfg(test)]
            Socket::Fake(_) => None,
        }
    }

    /// Its kind and a duplicate of its descriptor (a test's own copy of a held socket). None for
    /// a test's fake socket.
    #[cfg(test)]
    pub fn dup(&self) -> Option<io::Result<(SocketKind, OwnedFd)>> {
        match self {
            Socket::Tcp(fd) => Some(fd.try_clone().map(|fd| (SocketKind::Tcp, fd))),
            Socket::Unix(fd) => Some(fd.try_clone().map(|fd| (SocketKind::Unix, fd))),
            #[cfg(test)]
            Socket::Fake(_) => None,
        }
    }
}

/// Which kind of stream a moved descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SocketKind {
    Tcp,
    Unix,
}

impl Transport {
    /// Whether its TLS (if any) can continue in another process now (`TlsSession::movable`).
    pub fn tls_movable(&self) -> Result<(), crate::tls::moved::CannotMove> {
        self.tls.as_ref().map_or(Ok(()), |t| t.movable())
    }

    /// On the io_uring backend, whether the ring can let it go ([`Transport::leave_ring`]): not
    /// a socket that failed or whose shutdown waits for its queued bytes.
    pub fn ring_lets_go(&self) -> bool {
        match &self.stream {
            Stream::Ring(r) => r.can_leave(),
            _ => true,
        }
    }

    /// Takes a connection on the io_uring ring off it, for an export (nothing to do for other
    /// streams): its receive and its send in flight are stopped and awaited; what the ring
    /// received and the connection had not read is read through the transport (TLS opens its
    /// records) and appended to `input`; what was written and the ring had not sent is given
    /// back: returned for a plain stream (the caller writes it before its output), under TLS
    /// (records sealed already) put before the records the TLS state holds to send, the state
    /// going on as a moved record layer. Then [`Transport::into_parts`] can take it apart.
    /// Refused: it goes on on the ring (what was read into `input` stays there: dispatch it).
    pub fn leave_ring(&mut self, input: &mut Vec<u8>) -> io::Result<Vec<u8>> {
        let Stream::Ring(r) = &mut self.stream else { return Ok(Vec::new()) };
        r.leave()?;
        let mut chunk = [0u8; TLS_FILE_CHUNK];
        let read = loop {
            match self.read(&mut chunk) {
                // (Its end: the socket says so again to whoever reads it next.)
                Ok(0) => break Ok(()),
                Ok(n) => input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        let Stream::Ring(r) = &mut self.stream else { unreachable!("a ring socket above") };
        if let Err(e) = read {
            r.stay(Vec::new());
            return Err(e);
        }
        let unsent = r.take_unsent();
        if unsent.is_empty() || self.tls.is_none() {
            return Ok(unsent);
        }
        let mut tls = self.tls.take().expect("checked above");
        // TLS: the ring's records go before those TLS holds; the rest of TLS's plaintext is
        // the connection's input.
        if let Err(why) = tls.settle(input) {
            self.tls = Some(tls);
            r.stay(unsent);
            return Err(io::Error::other(why));
        }
        let lost = match tls.into_moved() {
            Ok(mut moved) => {
                moved.unsent.splice(0..0, unsent);
                match TlsSession::from_moved(moved) {
                    Ok(session) => {
                        self.tls = Some(session);
                        return Ok(Vec::new());
                    }
                    Err(e) => e.to_string(),
                }
            }
            Err((Some(back), why)) => {
                self.tls = Some(back);
                r.stay(unsent);
                return Err(io::Error::other(why));
            }
            Err((None, why)) => why.to_string(),
        };
        // The TLS state is gone (not expected: `movable` checked it): nothing more can be said
        // on this connection; the socket fails, and the connection closes on its next read.
        r.fail();
        Err(io::Error::other(format!("its TLS state was lost: {lost}")))
    }

    /// Puts a connection [`Transport::leave_ring`] took off the ring back on it (the export
    /// failed after it).
    pub fn stay_on_ring(&mut self) {
        if let Stream::Ring(r) = &mut self.stream {
            r.stay(Vec::new());
        }
    }

    /// Puts the stream's I/O on the worker's io_uring ring (an imported connection, on a
    /// worker with `--io uring`).
    pub fn adopt_ring(&mut self, ring: &super::uring::RingHandle) {
        let stream = std::mem::replace(&mut self.stream, Stream::Datagram(SocketAddr::from(([0, 0, 0, 0], 0))));
        self.stream = ring.adopt(stream);
    }

    /// Whether registering it announces what is waiting to be read already: a plain TCP or Unix
    /// socket on epoll (`EPOLL_CTL_ADD` polls the file and queues an event for bytes that arrived
    /// before, edge-triggered or not). A TLS connection may hold records its record layer has
    /// not decrypted, and a ring socket reads only when asked: both are read at once instead.
    pub fn register_announces_input(&self) -> bool {
        self.tls.is_none() && matches!(self.stream, Stream::Tcp(_) | Stream::Unix(_))
    }

    /// The socket and the TLS state (None: plain), for an export. A UDP session has no socket
    /// of its own: it is given back.
    pub fn into_parts(self) -> Result<(Socket, Option<TlsSession>), Self> {
        // (A ring socket moves once the ring holds none of its bytes.)
        if matches!(&self.stream, Stream::Ring(r) if !r.is_settled()) {
            return Err(self);
        }
        let socket = match self.stream {
            Stream::Ring(r) => return Transport { stream: r.into_inner(), tls: self.tls }.into_parts(),
            Stream::Tcp(s) => Socket::Tcp(s.into()),
            Stream::Unix(s) => Socket::Unix(s.into()),
            #[cfg(test)]
            Stream::Fake(s) => Socket::Fake(s),
            Stream::Datagram(_) => return Err(self),
        };
        Ok((socket, self.tls))
    }

    /// The transport of an imported connection (the descriptor stays non-blocking: that is a
    /// property of the open socket, not of this process).
    pub fn from_parts(socket: Socket, tls: Option<TlsSession>) -> Self {
        let stream = match socket {
            Socket::Tcp(fd) => Stream::Tcp(TcpStream::from_std(std::net::TcpStream::from(fd))),
            Socket::Unix(fd) => Stream::Unix(UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))),
            #[cfg(test)]
            Socket::Fake(s) => Stream::Fake(s),
        };
        Transport { stream, tls }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::fake_socket::FakeSocket;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    /// A server transport over a fake socket, and a rustls client that trusts its certificate.
    fn pair() -> (Transport, FakeSocket, ClientConnection) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
        let spec = crate::tls::TlsSpec {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            alpn: vec![],
            tickets: None,
            alpn_fixed: false,
        };
        let server = crate::tls::server_config(&spec).expect("a server config");
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let client = ClientConnection::new(Arc::new(client), ServerName::try_from("localhost").unwrap()).unwrap();
        let fake = FakeSocket::with_room(1 << 20);
        let transport = Transport::tls(Stream::Fake(fake.clone()), &server).unwrap();
        (transport, fake, client)
    }

    /// What the client has to send, put in the server's socket.
    fn client_sends(client: &mut ClientConnection, fake: &FakeSocket) {
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        fake.peer_sends(&out);
    }

    /// What the server wrote, given to the client; the writes are forgotten.
    fn client_receives(client: &mut ClientConnection, fake: &FakeSocket) {
        let written = std::mem::take(&mut fake.0.borrow_mut().written);
        fake.0.borrow_mut().writes.clear();
        let mut bytes = &written[..];
        while !bytes.is_empty() {
            client.read_tls(&mut bytes).unwrap();
            client.process_new_packets().unwrap();
        }
    }

    #[test]
    fn a_handshake_flight_and_the_tickets_with_the_first_answer_leave_in_one_write_each() {
        let (mut server, fake, mut client) = pair();
        let mut buf = [0u8; 4096];
        client_sends(&mut client, &fake);
        let e = server.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // ServerHello, ChangeCipherSpec and the encrypted flight: several records, one writev
        // (one segment), not one write each.
        assert_eq!(fake.0.borrow().writes.len(), 1, "the server's flight in one write");
        client_receives(&mut client, &fake);
        assert!(!client.is_handshaking());

        // The client's Finished and its request arrive together.
        client.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        client_sends(&mut client, &fake);
        let n = server.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
        assert!(!server.is_handshaking());
        // The session tickets the handshake's end queued wait for the answer...
        assert!(fake.0.borrow().writes.is_empty(), "nothing written while reading the request");
        assert!(server.wants_write(), "the tickets are queued");
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert!(server.flush_pending().unwrap());
        // ...and leave with it, in one write.
        assert_eq!(fake.0.borrow().writes.len(), 1, "tickets and answer in one write");
        client_receives(&mut client, &fake);
        let mut answer = Vec::new();
        let _ = client.reader().read_to_end(&mut answer);
        assert_eq!(answer, b"HTTP/1.1 200 OK\r\n\r\n");
    }
}
