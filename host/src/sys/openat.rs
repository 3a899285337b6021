//! Opening a path one component at a time, never following a symlink (`openat` with
//! `O_NOFOLLOW`): each step is taken from the descriptor of the directory checked before it, so
//! no one can swap a directory for a symlink between a check and the open that trusts it (the
//! plugin trust check, `master/trust.rs`).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::libc;

/// `/`, as a directory descriptor (`O_PATH`: only to walk from and to `fstat`).
pub fn open_root_dir() -> io::Result<OwnedFd> {
    open_in(None, OsStr::new("/"), libc::O_PATH | libc::O_DIRECTORY)
}

/// The directory `name` (one component, no `/`) inside `dir`; a symlink there is refused (ELOOP
/// or ENOTDIR).
pub fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open_in(Some(dir), name, libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
}

/// The file `name` (one component) inside `dir`, opened for reading; a symlink there is refused
/// (ELOOP). `O_NONBLOCK`: a FIFO put there does not block the open (the caller checks the type).
pub fn open_file_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open_in(Some(dir), name, libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
}

fn open_in(dir: Option<BorrowedFd<'_>>, name: &OsStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    if dir.is_some() && (name.as_bytes().contains(&b'/') || name.is_empty() || name == ".." || name == ".") {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a single path component"));
    }
    let name = CString::new(name.as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `name` is a NUL-terminated string that outlives the call; `dirfd` is borrowed for
    // the call (or AT_FDCWD). The descriptor returned is new and ours alone: the OwnedFd takes it
    // and closes it on drop. O_CLOEXEC: no child inherits it.
    let fd = unsafe { syscall!(openat(dirfd, name.as_ptr(), flags | libc::O_CLOEXEC)) }?;
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn symlinks_are_not_followed() {
        let dir = std::env::temp_dir().join(format!("host-openat-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("real")).unwrap();
        std::fs::write(dir.join("real/f"), b"x").unwrap();
        std::os::unix::fs::symlink("real", dir.join("link")).unwrap();
        std::os::unix::fs::symlink("f", dir.join("real/flink")).unwrap();
        let base = open_in(None, dir.as_os_str(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        let real = open_dir_nofollow(base.as_fd(), OsStr::new("real")).unwrap();
        assert!(open_file_nofollow(real.as_fd(), OsStr::new("f")).is_ok());
        assert!(open_file_nofollow(real.as_fd(), OsStr::new("flink")).is_err());
        assert!(open_dir_nofollow(base.as_fd(), OsStr::new("link")).is_err());
        assert!(open_dir_nofollow(base.as_fd(), OsStr::new("..")).is_err());
        assert!(open_dir_nofollow(base.as_fd(), OsStr::new("real/f")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
