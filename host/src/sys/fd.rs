//! File descriptors: taking the ones a worker inherited (the one `from_raw_fd` of the host),
//! close-on-exec for them and for strays a process was started with.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::libc;

/// The first descriptor a child started by `spawn_with_fds` inherits; the others follow in order.
pub const FIRST_INHERITED_FD: RawFd = 3;

/// Takes ownership of the `N` descriptors this process inherited at 3, 4, … (as
/// `spawn_with_fds` hands them) and makes each close-on-exec, so that a process this one starts
/// (a plugin may start one) inherits none of them.
///
/// Only a descriptor that is open and *not* close-on-exec is taken: one that survived exec.
/// Every descriptor this process opens itself is close-on-exec from birth (std, mio and this
/// module create them so), so such a descriptor is owned by nothing else here; and once taken
/// it is close-on-exec, so a second call cannot take it again. A process started by hand
/// without them gets a clear error.
pub fn take_inherited<const N: usize>() -> io::Result<[OwnedFd; N]> {
    let taken = take_inherited_range(FIRST_INHERITED_FD, N)?;
    Ok(taken.try_into().unwrap_or_else(|_| unreachable!("N descriptors were taken")))
}

/// [`take_inherited`] for `count` descriptors from `first` on (systemd's socket activation
/// hands over `LISTEN_FDS` of them from 3).
pub fn take_inherited_range(first: RawFd, count: usize) -> io::Result<Vec<OwnedFd>> {
    let fds: Vec<RawFd> = (0..count).map(|i| first + i as RawFd).collect();
    for &fd in &fds {
        // SAFETY: F_GETFD reads the flags of a descriptor number; it touches no memory and
        // takes no ownership; an fd that is not open gives EBADF.
        let flags = unsafe { syscall!(fcntl(fd, libc::F_GETFD)) }.map_err(|e| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("descriptor {fd} was not inherited: {e} (workers are started by the master)"),
            )
        })?;
        if flags & libc::FD_CLOEXEC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor {fd} is close-on-exec: it was not inherited, or was taken already"),
            ));
        }
    }
    let owned: Vec<OwnedFd> = fds
        .into_iter()
        .map(|fd| {
            // SAFETY: `fd` is open and not close-on-exec (checked above): it was handed to us
            // across exec and no object in this process owns it (see the doc comment). The
            // OwnedFd takes ownership and closes it on drop.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect();
    for fd in &owned {
        set_cloexec(fd.as_fd())?;
    }
    Ok(owned)
}

/// Makes `fd` close-on-exec.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFD changes only the descriptor's flags; `fd` is borrowed, so it is open.
    unsafe { syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC)) }?;
    Ok(())
}

/// Makes `fd` survive exec (a binary upgrade hands the master's descriptors to its new image);
/// the new image takes it with [`take_inherited_range`], which makes it close-on-exec again.
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFD changes only the descriptor's flags; `fd` is borrowed, so it is open.
    unsafe { syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFD, 0)) }?;
    Ok(())
}

/// A close-on-exec duplicate of a plugin's descriptor `fd` (`RawHost::send_file`), checked to
/// be an open regular file (what `sendfile(2)` and `pread` read).
pub fn dup_regular_file(fd: RawFd) -> io::Result<std::fs::File> {
    if fd < 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor of the same open file and touches no
    // memory; a number that is not open gives EBADF. The new one is owned by nothing else.
    let dup = unsafe { syscall!(fcntl(fd, libc::F_DUPFD_CLOEXEC, 0)) }?;
    // SAFETY: `dup` was just created by this process and is owned here only.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(dup) });
    if !file.metadata()?.is_file() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    Ok(file)
}

/// Fails unless `fd` is a socket; `what` names it in the error.
pub fn expect_socket(fd: OwnedFd, what: &str) -> io::Result<OwnedFd> {
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {} ({what}) is not a socket", fd.as_raw_fd()),
        ));
    }
    Ok(fd)
}

/// The path under which this process can open `fd` again (`/proc/self/fd/N`): how a worker
/// hands its plugin snapshot, an fd, to `dlopen`, which takes a path.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Marks every descriptor from `from` on close-on-exec (3: every one above stderr; more when the
/// service manager handed sockets over, which must survive). Called first thing when a master starts:
/// descriptors that whoever started the host left open (strays) then vanish at its next exec
/// (the re-exec for its process title) and reach no worker. Every descriptor the host opens
/// itself is close-on-exec already, so this changes only strays.
pub fn cloexec_strays(from: RawFd) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors (Linux 5.11);
    // it closes nothing and touches no memory.
    let ret = unsafe { syscall!(syscall(libc::SYS_close_range, from, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC)) };
    match ret {
        Ok(_) => Ok(()),
        // An older kernel (ENOSYS, or EINVAL for the flag): one by one.
        Err(_) => cloexec_each_open(from),
    }
}

/// `cloexec_strays` without close_range: every descriptor from `from` on that `/proc/self/fd` lists.
fn cloexec_each_open(from: RawFd) -> io::Result<()> {
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) else { continue };
        if fd >= from {
            // SAFETY: as in `set_cloexec`; a descriptor that closed meanwhile (the directory's
            // own) gives EBADF, which is ignored.
            let _ = unsafe { syscall!(fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC)) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloexec(fd: BorrowedFd<'_>) -> bool {
        let flags = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        flags & libc::FD_CLOEXEC != 0
    }

    #[test]
    fn strays_become_close_on_exec() {
        let file = std::fs::File::open("/dev/null").unwrap();
        nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        assert!(!cloexec(file.as_fd()));
        cloexec_strays(3).unwrap();
        assert!(cloexec(file.as_fd()));
    }

    #[test]
    fn strays_become_close_on_exec_without_close_range() {
        let file = std::fs::File::open("/dev/null").unwrap();
        nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        cloexec_each_open(3).unwrap();
        assert!(cloexec(file.as_fd()));
    }

    #[test]
    fn proc_fd_path_opens_the_same_file() {
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let path = proc_fd_path(file.as_fd());
        assert_eq!(std::fs::metadata(path).unwrap().len(), file.metadata().unwrap().len());
    }
}
