//! The only module with `unsafe`: process creation, inherited file descriptors, signals.
#![allow(unsafe_code)]

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

/// The first descriptor a worker inherits; the others follow in order.
pub const FIRST_INHERITED_FD: RawFd = 3;
/// Inherited descriptors are first moved above this, so moving them down never overwrites one
/// that is still to be moved.
const FD_SCRATCH_BASE: RawFd = 100;
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
        let bound = local_addr(&fd)?;
        fds.push(fd);
        bound
    } else {
        let probe = new_socket(addr)?;
        socket::setsockopt(&probe, sockopt::ReuseAddr, &true)?;
        socket::bind(probe.as_raw_fd(), &SockaddrStorage::from(addr))?;
        local_addr(&probe)?
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

fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    let ss: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    if let Some(v4) = ss.as_sockaddr_in() {
        Ok(SocketAddr::V4((*v4).into()))
    } else if let Some(v6) = ss.as_sockaddr_in6() {
        Ok(SocketAddr::V6((*v6).into()))
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidData, "not an IP socket"))
    }
}

/// Starts `cmd` with `fds` inherited as descriptors 3, 4, … (close-on-exec cleared on those
/// alone), in a process group of its own (a terminal's Ctrl+C reaches only the master), and
/// with SIGKILL as its parent-death signal.
pub fn spawn_with_fds(cmd: &mut Command, fds: &[RawFd]) -> io::Result<Child> {
    let fds: Vec<RawFd> = fds.to_vec();
    cmd.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes nothing but fcntl, dup2 and prctl system
    // calls, allocates nothing (`fds` was built before the fork) and takes no lock. The
    // descriptors named in `fds` are owned by the caller, who keeps them open across `spawn`.
    unsafe {
        cmd.pre_exec(move || {
            // Move every fd out of the way first: dup2(3, 4) must not overwrite an fd still
            // to be moved to 5. The scratch copies are close-on-exec, so they vanish at exec.
            let mut scratch = [0 as RawFd; 16];
            if fds.len() > scratch.len() {
                return Err(io::Error::from_raw_os_error(nix::libc::EMFILE));
            }
            for (i, &fd) in fds.iter().enumerate() {
                scratch[i] = cvt(nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, FD_SCRATCH_BASE))?;
            }
            for (i, &fd) in scratch[..fds.len()].iter().enumerate() {
                // dup2 to a different number gives a descriptor without FD_CLOEXEC.
                cvt(nix::libc::dup2(fd, FIRST_INHERITED_FD + i as RawFd))?;
            }
            cvt(nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL as nix::libc::c_ulong, 0, 0, 0))?;
            Ok(())
        });
    }
    cmd.spawn()
}

fn cvt(ret: nix::libc::c_int) -> io::Result<nix::libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of the listening socket a worker inherited at `fd`.
pub fn inherited_listener(fd: RawFd) -> io::Result<TcpListener> {
    check_socket(fd)?;
    // SAFETY: the master passed this descriptor to us at exec and nothing else in this process
    // owns it; the TcpListener takes ownership and closes it on drop.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Takes ownership of the control socket a worker inherited at `fd`.
pub fn inherited_stream(fd: RawFd) -> io::Result<UnixStream> {
    check_socket(fd)?;
    // SAFETY: as for `inherited_listener`: the descriptor was passed to us at exec and is owned
    // by nothing else; the UnixStream closes it on drop.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    nix::fcntl::fcntl(stream.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC))?;
    Ok(stream)
}

/// Fails unless `fd` is an open socket (a worker started by hand gets a clear error, not UB).
fn check_socket(fd: RawFd) -> io::Result<()> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("descriptor {fd} was not inherited: {e} (workers are started by the master)"),
        )
    })?;
    if st.st_mode & nix::libc::S_IFMT != nix::libc::S_IFSOCK {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("descriptor {fd} is not a socket")));
    }
    Ok(())
}

/// Blocks `signals` in this thread (and every thread started after) and returns a descriptor that
/// becomes readable when one is pending. Signal handlers are never run: the event loop reads the
/// signal and acts on it, as nginx's handlers only set a flag.
pub fn signal_fd(signals: &[Signal]) -> io::Result<SignalFd> {
    let mut set = SigSet::empty();
    for s in signals {
        set.add(*s);
    }
    set.thread_block()?;
    Ok(SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?)
}

/// Writes to a closed socket return EPIPE instead of killing the process.
pub fn ignore_sigpipe() -> io::Result<()> {
    // SAFETY: installing SIG_IGN runs no handler code; it is allowed at any time.
    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, nix::sys::signal::SigHandler::SigIgn) }?;
    Ok(())
}

/// Sets the name `top` and `/proc/PID/comm` show (15 bytes at most).
pub fn set_thread_name(name: &str) {
    let short: String = name.chars().take(15).collect();
    if let Ok(c) = std::ffi::CString::new(short) {
        let _ = nix::sys::prctl::set_name(&c);
    }
}

/// The two ends of `start -d`: the process the user started waits for a word from the daemon.
pub enum Daemonized {
    /// The process the user started: read the daemon's `ok` (or its error) from here.
    Parent(std::fs::File),
    /// The detached master: write `ok` here once ready (or the error that stopped it).
    Daemon(std::fs::File),
}

/// Detaches like a classic Unix daemon: fork, setsid, fork, chdir to `/`, stdin from /dev/null,
/// stdout and stderr to `log_file`. The umask is left as the user set it. Must be called while
/// the process has one thread (before logging, the watcher, anything that starts threads).
pub fn daemonize(log_file: &std::path::Path) -> io::Result<Daemonized> {
    use nix::unistd::{fork, ForkResult};
    use std::os::unix::fs::OpenOptionsExt;

    let log =
        std::fs::OpenOptions::new().create(true).append(true).mode(0o640).open(log_file).map_err(|e| {
            io::Error::new(e.kind(), format!("could not open the log file {}: {e}", log_file.display()))
        })?;
    let null = std::fs::File::open("/dev/null")?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: the caller guarantees this process has a single thread, so the child cannot
    // inherit a lock held by another thread; both sides go on running ordinary Rust code.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(write);
            // The intermediate child exits at once: reap it.
            let _ = nix::sys::wait::waitpid(child, None);
            return Ok(Daemonized::Parent(std::fs::File::from(read)));
        }
        ForkResult::Child => {}
    }
    drop(read);
    nix::unistd::setsid()?;
    // SAFETY: still a single thread (we are the child of a single-threaded fork).
    if let ForkResult::Parent { .. } = unsafe { fork() }? {
        // SAFETY: _exit ends the intermediate process at once, without running exit handlers or
        // flushing stdio buffers that belong to the original process.
        unsafe { nix::libc::_exit(0) };
    }
    nix::unistd::chdir("/")?;
    nix::unistd::dup2(null.as_raw_fd(), 0)?;
    nix::unistd::dup2(log.as_raw_fd(), 1)?;
    nix::unistd::dup2(log.as_raw_fd(), 2)?;
    Ok(Daemonized::Daemon(std::fs::File::from(write)))
}

/// Replaces this process with the host binary run with the same arguments but `title` as its
/// argv[0], so `ps` shows e.g. `host: master (host.toml)`. `marker` is set in the environment so
/// the new image knows it is titled. Returns only if exec failed.
pub fn exec_with_title(title: &str, marker: &str) -> io::Error {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return e,
    };
    Command::new(exe).arg0(title).args(std::env::args_os().skip(1)).env(marker, "1").exec()
}

fn lookup_identity(
    user: Option<&str>,
    group: Option<&str>,
) -> io::Result<(Option<nix::unistd::User>, Option<nix::unistd::Gid>)> {
    let not_found =
        |what: &str, name: &str| io::Error::new(io::ErrorKind::NotFound, format!("no {what} named {name:?}"));
    let user = match user {
        Some(name) => Some(nix::unistd::User::from_name(name)?.ok_or_else(|| not_found("user", name))?),
        None => None,
    };
    let gid = match group {
        Some(name) => Some(nix::unistd::Group::from_name(name)?.ok_or_else(|| not_found("group", name))?.gid),
        None => user.as_ref().map(|u| u.gid),
    };
    Ok((user, gid))
}

/// Checks, in the master, that the user and group exist and that this process may switch to
/// them (it runs as root, or they are already its own).
pub fn check_identity(user: Option<&str>, group: Option<&str>) -> io::Result<()> {
    let (user, gid) = lookup_identity(user, group)?;
    let euid = nix::unistd::geteuid();
    let same_user = user.as_ref().is_none_or(|u| u.uid == euid);
    let same_group = gid.is_none_or(|g| g == nix::unistd::getegid());
    let allowed = euid.is_root() || (same_user && same_group);
    if !allowed {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "switching user or group needs the master to run as root",
        ));
    }
    Ok(())
}

/// Switches this worker to `user` / `group` (the group defaults to the user's): groups first,
/// then the user, so root's privileges are gone for good before any plugin code runs.
pub fn switch_identity(user: Option<&str>, group: Option<&str>) -> io::Result<()> {
    let (user, gid) = lookup_identity(user, group)?;
    if !nix::unistd::geteuid().is_root() {
        // check_identity in the master made sure these are our own already.
        return Ok(());
    }
    if let Some(gid) = gid {
        nix::unistd::setgroups(&[gid])?;
        nix::unistd::setgid(gid)?;
    }
    if let Some(u) = user {
        nix::unistd::setuid(u.uid)?;
    }
    // Changing credentials clears the parent-death signal: set it again, and if the master died
    // before that (we were re-parented), go now.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if nix::unistd::getppid().as_raw() == 1 {
        return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the master is gone"));
    }
    Ok(())
}
