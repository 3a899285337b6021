//! The worker's listening socket, whatever its kind: a TCP listener (its slot's SO_REUSEPORT
//! socket), the Unix listener every worker of the service shares, or its slot's UDP socket. The
//! kind is read from the inherited descriptor itself, so the master hands every kind over the
//! same way (and so does a socket the service manager or a previous master handed over).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use mio::event::Source;
use mio::net::{TcpListener, UdpSocket, UnixListener};
use mio::{Interest, Registry, Token};

use super::transport::Stream;
use crate::sys::{self, SocketKind};

pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
    /// A UDP service: the socket lives in the core (replies are sent from it); this is only a
    /// marker for the loop.
    Udp,
}

impl Listener {
    /// Takes the inherited listening socket; a UDP socket is returned apart (for the core).
    pub fn from_fd(fd: OwnedFd) -> io::Result<(Listener, Option<UdpSocket>)> {
        let kind = sys::socket_kind(fd.as_fd())?;
        Ok(match kind {
            SocketKind::Tcp => {
                let l = std::net::TcpListener::from(fd);
                l.set_nonblocking(true)?;
                (Listener::Tcp(TcpListener::from_std(l)), None)
            }
            SocketKind::Unix => {
                let l = std::os::unix::net::UnixListener::from(fd);
                l.set_nonblocking(true)?;
                (Listener::Unix(UnixListener::from_std(l)), None)
            }
            SocketKind::Udp => {
                let s = std::net::UdpSocket::from(fd);
                s.set_nonblocking(true)?;
                (Listener::Udp, Some(UdpSocket::from_std(s)))
            }
        })
    }

    pub fn is_udp(&self) -> bool {
        matches!(self, Listener::Udp)
    }

    /// The listening socket's descriptor (None for UDP: the core's socket).
    pub fn stream_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match self {
            Listener::Tcp(l) => Some(l.as_raw_fd()),
            Listener::Unix(l) => Some(l.as_raw_fd()),
            Listener::Udp => None,
        }
    }

    /// A connection accepted on this listener elsewhere (io_uring's accept: the descriptor is
    /// non-blocking already).
    pub fn stream_from(&self, fd: OwnedFd) -> Stream {
        match self {
            Listener::Unix(_) => Stream::Unix(mio::net::UnixStream::from_std(fd.into())),
            _ => Stream::Tcp(mio::net::TcpStream::from_std(fd.into())),
        }
    }

    /// The next connection (`WouldBlock` when none is queued, and always for UDP).
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Udp => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// Registering a UDP listener is the core's socket's business: a no-op here.
impl Source for Listener {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.register(registry, token, interests),
            Listener::Unix(l) => l.register(registry, token, interests),
            Listener::Udp => Ok(()),
        }
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.reregister(registry, token, interests),
            Listener::Unix(l) => l.reregister(registry, token, interests),
            Listener::Udp => Ok(()),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Listener::Tcp(l) => l.deregister(registry),
            Listener::Unix(l) => l.deregister(registry),
            Listener::Udp => Ok(()),
        }
    }
}
