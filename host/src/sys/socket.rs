//! Listening sockets: one SO_REUSEPORT socket per worker slot, bound by the master (docs/architecture.md
//! pitfall 7), created close-on-exec and non-blocking.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

const LISTEN_BACKLOG: i32 = 1024;

/// Binds `count` SO_REUSEPORT listening sockets on `addr` (one per worker slot).
///
/// For a given port, a plain socket without SO_REUSEPORT probes the address first: it fails when
/// anything listens there, even another process with SO_REUSEPORT that we would otherwise
/// silently share the port with. For port 0 the first socket lets the system pick the port (the
/// kernel never picks one that is shared through SO_REUSEPORT) and the others bind that one.
pub fn listen_reuseport(addr: SocketAddr, count: usize) -> io::Result<(SocketAddr, Vec<OwnedFd>)> {
    let mut fds = Vec::with_capacity(count);
    let bound = if addr.port() == 0 {
        // The system picks a port no socket uses: the first socket binds it, the others join.
        let fd = reuseport_socket(addr)?;
        let bound = local_addr(fd.as_fd())?;
        fds.push(fd);
        bound
    } else {
        let probe = new_socket(addr)?;
        socket::setsockopt(&probe, sockopt::ReuseAddr, &true)?;
        socket::bind(probe.as_raw_fd(), &SockaddrStorage::from(addr))?;
        local_addr(probe.as_fd())?
    };
    while fds.len() < count {
        fds.push(reuseport_socket(bound)?);
    }
    Ok((bound, fds))
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let fd = new_socket(addr)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    socket::listen(&fd, socket::Backlog::new(LISTEN_BACKLOG).unwrap_or(socket::Backlog::MAXCONN))?;
    Ok(fd)
}

fn new_socket(addr: SocketAddr) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    Ok(fd)
}

/// The address a socket is bound to.
pub fn local_addr(fd: BorrowedFd<'_>) -> io::Result<SocketAddr> {
    let ss: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    if let Some(v4) = ss.as_sockaddr_in() {
        Ok(SocketAddr::V4((*v4).into()))
    } else if let Some(v6) = ss.as_sockaddr_in6() {
        Ok(SocketAddr::V6((*v6).into()))
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))
    }
}
