//! Listening sockets: one SO_REUSEPORT socket per worker slot, bound by the master (docs/architecture.md
//! pitfall 7), created close-on-exec and non-blocking: TCP listeners, UDP sockets (one per slot
//! too), and the one Unix stream listener a Unix-socket service's workers share.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

const LISTEN_BACKLOG: i32 = 1024;

/// Binds `count` SO_REUSEPORT listening sockets on `addr` (one per worker slot).
///
/// For a given port, a plain socket without SO_REUSEPORT probes the address first: it fails when
/// anything listens there, even another process with SO_REUSEPORT that we would otherwise
/// silently share the port with. For port 0 the first socket lets the system pick the port (the
/// kernel never picks one that is shared through SO_REUSEPORT) and the others bind that one.
pub fn listen_reuseport(addr: SocketAddr, count: usize) -> io::Result<(SocketAddr, Vec<OwnedFd>)> {
    bind_reuseport(addr, SockType::Stream, count)
}

/// Binds `count` SO_REUSEPORT UDP sockets on `addr` (one per worker slot), as
/// [`listen_reuseport`] does for TCP: the kernel hashes each peer to one of them, so a peer's
/// datagrams keep reaching the same slot.
pub fn udp_reuseport(addr: SocketAddr, count: usize) -> io::Result<(SocketAddr, Vec<OwnedFd>)> {
    bind_reuseport(addr, SockType::Datagram, count)
}

fn bind_reuseport(addr: SocketAddr, ty: SockType, count: usize) -> io::Result<(SocketAddr, Vec<OwnedFd>)> {
    let mut fds = Vec::with_capacity(count);
    let bound = if addr.port() == 0 {
        // The system picks a port no socket uses: the first socket binds it, the others join.
        let fd = reuseport_socket(addr, ty)?;
        let bound = local_addr(fd.as_fd())?;
        fds.push(fd);
        bound
    } else {
        let probe = new_socket(addr, ty)?;
        socket::setsockopt(&probe, sockopt::ReuseAddr, &true)?;
        socket::bind(probe.as_raw_fd(), &SockaddrStorage::from(addr))?;
        local_addr(probe.as_fd())?
    };
    while fds.len() < count {
        fds.push(reuseport_socket(bound, ty)?);
    }
    Ok((bound, fds))
}

fn reuseport_socket(addr: SocketAddr, ty: SockType) -> io::Result<OwnedFd> {
    let fd = new_socket(addr, ty)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    if ty == SockType::Stream {
        socket::listen(&fd, socket::Backlog::new(LISTEN_BACKLOG).unwrap_or(socket::Backlog::MAXCONN))?;
    }
    Ok(fd)
}

/// An IPv6 socket is dual-stack (`IPV6_V6ONLY` off: IPv4 clients arrive as `::ffff:a.b.c.d`)
/// when bound to the unspecified address `[::]`, and IPv6-only for any other address.
fn new_socket(addr: SocketAddr, ty: SockType) -> io::Result<OwnedFd> {
    let family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let fd = socket::socket(family, ty, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &!addr.ip().is_unspecified())?;
    }
    Ok(fd)
}

/// Binds and listens on a Unix stream socket at `path` (one socket, shared by every worker:
/// AF_UNIX has no SO_REUSEPORT), then gives the file `mode`. A socket file left by a process that
/// is gone (a connect is refused) is replaced; one a live process listens on is refused with
/// `AddrInUse`, like a TCP port in use; any other file there is refused and kept.
pub fn listen_unix(path: &Path, mode: Option<u32>) -> io::Result<OwnedFd> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; not replaced", path.display()),
            ));
        }
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("address in use: a live process listens on {}", path.display()),
                ))
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ECONNREFUSED) => {
                tracing::info!(path = %path.display(), "replacing a stale socket file (nothing listens on it)");
                std::fs::remove_file(path)?;
            }
            Err(_) => {}
        }
    }
    let fd =
        socket::socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    socket::bind(fd.as_raw_fd(), &socket::UnixAddr::new(path)?)?;
    let listening = socket::listen(&fd, socket::Backlog::new(LISTEN_BACKLOG).unwrap_or(socket::Backlog::MAXCONN));
    let moded = match mode {
        Some(mode) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
        None => Ok(()),
    };
    if let Err(e) = listening.map_err(io::Error::from).and(moded) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(fd)
}

/// Whether something listens on the Unix socket at `path` (`host restart` checks first).
pub fn unix_in_use(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// What a listening socket handed to a worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    Tcp,
    Udp,
    Unix,
}

/// The kind of an inherited listening socket, from its type and address family.
pub fn socket_kind(fd: BorrowedFd<'_>) -> io::Result<SocketKind> {
    let ty = socket::getsockopt(&fd, sockopt::SockType)?;
    let ss: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    match (nix::sys::socket::SockaddrLike::family(&ss), ty) {
        (Some(AddressFamily::Unix), SockType::Stream) => Ok(SocketKind::Unix),
        (Some(AddressFamily::Inet | AddressFamily::Inet6), SockType::Stream) => Ok(SocketKind::Tcp),
        (Some(AddressFamily::Inet | AddressFamily::Inet6), SockType::Datagram) => Ok(SocketKind::Udp),
        (family, ty) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the listening socket is of an unsupported kind ({family:?}, {ty:?})"),
        )),
    }
}

/// The credentials of a Unix socket's peer (`SO_PEERCRED`): pid, uid, gid.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<(u32, u32, u32)> {
    let cred = socket::getsockopt(&fd, sockopt::PeerCredentials)?;
    Ok((cred.pid() as u32, cred.uid(), cred.gid()))
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

/// The classic BPF program that spreads new connections of a SO_REUSEPORT group over the
/// sockets at `live` (their indices in the group: the order they started listening) only: the
/// packet's hash (`SKF_AD_RXHASH`) modulo `live.len()`, then a jump table from 0..n to `live`.
/// A result the group has no socket for makes the kernel fall back to its own hash spread.
pub fn steering_program(live: &[u32]) -> Vec<nix::libc::sock_filter> {
    use nix::libc::{
        sock_filter, BPF_ABS, BPF_ALU, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_MOD, BPF_RET, BPF_W, SKF_AD_OFF,
        SKF_AD_RXHASH,
    };
    let op = |code: u32, jt: u8, jf: u8, k: u32| sock_filter { code: code as u16, jt, jf, k };
    let mut prog = vec![
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_RXHASH) as u32),
        op(BPF_ALU | BPF_MOD | BPF_K, 0, 0, live.len().max(1) as u32),
    ];
    for (i, &index) in live.iter().enumerate() {
        // A == i: return live[i]; otherwise skip that return.
        prog.push(op(BPF_JMP | BPF_JEQ | BPF_K, 0, 1, i as u32));
        prog.push(op(BPF_RET | BPF_K, 0, 0, index));
    }
    prog.push(op(BPF_RET | BPF_K, 0, 0, live.first().copied().unwrap_or(0)));
    prog
}

/// Steers the new connections of `socket`'s SO_REUSEPORT group to the sockets at `live` (group
/// indices), or (None) gives the group back to the kernel's hash spread over all its sockets.
pub fn steer_reuseport(socket: BorrowedFd<'_>, live: Option<&[u32]>) -> io::Result<()> {
    use nix::libc::{sock_fprog, socklen_t, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, SO_DETACH_REUSEPORT_BPF};
    let Some(live) = live else {
        let zero: nix::libc::c_int = 0;
        // SAFETY: SO_DETACH_REUSEPORT_BPF reads (and ignores) one int from `zero`, a live local of
        // the size passed; `socket` is borrowed, so open.
        let detached = unsafe {
            syscall!(setsockopt(
                socket.as_raw_fd(),
                SOL_SOCKET,
                SO_DETACH_REUSEPORT_BPF,
                (&zero as *const nix::libc::c_int).cast(),
                std::mem::size_of::<nix::libc::c_int>() as socklen_t,
            ))
        };
        return match detached {
            // Nothing was attached.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOENT) => Ok(()),
            other => other.map(drop),
        };
    };
    let mut prog = steering_program(live);
    let fprog = sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: the kernel copies the `fprog.len` instructions `fprog.filter` points at (`prog`,
    // alive until after the call) and checks the program before attaching it; `socket` is
    // borrowed, so open.
    unsafe {
        syscall!(setsockopt(
            socket.as_raw_fd(),
            SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const sock_fprog).cast(),
            std::mem::size_of::<sock_fprog>() as socklen_t,
        ))
    }?;
    Ok(())
}

/// Whether two descriptors are the same socket (the same open file, as after a dup).
pub fn same_socket(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> io::Result<bool> {
    let (sa, sb) = (nix::sys::stat::fstat(a.as_raw_fd())?, nix::sys::stat::fstat(b.as_raw_fd())?);
    Ok(sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many connections wait in each socket's accept queue (accepting them all).
    fn accepted(sockets: &[OwnedFd]) -> Vec<usize> {
        sockets
            .iter()
            .map(|s| {
                let mut n = 0;
                while socket::accept4(s.as_raw_fd(), SockFlag::SOCK_CLOEXEC).map(nix::unistd::close).is_ok() {
                    n += 1;
                }
                n
            })
            .collect()
    }

    #[test]
    fn steering_sends_new_connections_to_the_live_sockets_only() {
        let (addr, sockets) = listen_reuseport("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        for live in [&[2u32][..], &[0, 2], &[1]] {
            steer_reuseport(sockets[0].as_fd(), Some(live)).unwrap();
            let clients: Vec<_> = (0..30).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
            // The handshakes are done (connect returned); the accept queues hold them.
            let counts = accepted(&sockets);
            assert_eq!(counts.iter().sum::<usize>(), clients.len(), "{live:?}: {counts:?}");
            for (index, n) in counts.iter().enumerate() {
                if !live.contains(&(index as u32)) {
                    assert_eq!(*n, 0, "socket {index} is not live ({live:?}): {counts:?}");
                }
            }
        }
        steer_reuseport(sockets[1].as_fd(), None).unwrap();
        steer_reuseport(sockets[1].as_fd(), None).expect("detaching twice is fine");
        let clients: Vec<_> = (0..10).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        assert_eq!(accepted(&sockets).iter().sum::<usize>(), clients.len());
    }

    #[test]
    fn the_program_is_a_jump_table() {
        let prog = steering_program(&[1, 3]);
        assert_eq!(prog.len(), 2 + 2 * 2 + 1);
        assert_eq!(prog[1].k, 2, "modulo the live sockets");
        assert_eq!((prog[2].k, prog[3].k, prog[4].k, prog[5].k), (0, 1, 1, 3));
    }

    #[test]
    fn dups_are_the_same_socket() {
        let (_, sockets) = listen_reuseport("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let dup = sockets[0].try_clone().unwrap();
        assert!(same_socket(sockets[0].as_fd(), dup.as_fd()).unwrap());
        assert!(!same_socket(sockets[0].as_fd(), sockets[1].as_fd()).unwrap());
    }
}
