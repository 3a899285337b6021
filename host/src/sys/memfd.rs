//! Sealed in-memory files: a plugin snapshot is one. The kernel counts its references (the
//! master's fd, each worker's mapping), so nothing lives on disk and nothing needs deleting; the
//! seals make it immutable, so no one can change pages a worker has mapped.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// A new close-on-exec memfd named `name` (`/proc/PID/maps` shows `/memfd:NAME`) holding what
/// `from` reads, sealed against any change of size or contents (and against removing the seals).
pub fn sealed_memfd(name: &str, from: &mut impl std::io::Read) -> io::Result<OwnedFd> {
    let name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fd = memfd_create(&name, MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    // Copied a piece at a time (io::copy), never held whole in memory.
    std::io::copy(from, &mut file)?;
    let fd = OwnedFd::from(file);
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
    fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(fd)
}

/// A new close-on-exec memfd that can be sealed later ([`seal`]): a hand-over's worker state is
/// written into it as the plugin serialises it.
pub fn sealable_memfd(name: &str) -> io::Result<std::fs::File> {
    let name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let fd = memfd_create(&name, MemFdCreateFlag::MFD_CLOEXEC | MemFdCreateFlag::MFD_ALLOW_SEALING)?;
    Ok(std::fs::File::from(fd))
}

/// Seals a memfd of [`sealable_memfd`] against any change (and against removing the seals).
pub fn seal(fd: &impl AsRawFd) -> io::Result<()> {
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
    fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals))?;
    Ok(())
}

/// Whether a memfd is sealed as [`seal`] seals it (a hand-over's receiver trusts no other).
pub fn is_sealed(fd: &impl AsRawFd) -> io::Result<bool> {
    let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)?;
    let want = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
    Ok(SealFlag::from_bits_truncate(seals).contains(want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn holds_the_bytes_and_refuses_changes() {
        let fd = sealed_memfd("test-snapshot.so", &mut &b"plugin bytes"[..]).unwrap();
        let mut file = std::fs::File::from(fd);
        file.rewind().unwrap();
        let mut back = String::new();
        file.read_to_string(&mut back).unwrap();
        assert_eq!(back, "plugin bytes");
        file.rewind().unwrap();
        assert!(file.write_all(b"x").is_err(), "sealed against writes");
        assert!(file.set_len(3).is_err(), "sealed against shrinking");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        assert!(link.to_string_lossy().starts_with("/memfd:test-snapshot.so"), "{}", link.display());
    }
}
