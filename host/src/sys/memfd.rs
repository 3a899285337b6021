//! Sealed in-memory files: a plugin snapshot is one, and so is a hand-over's large worker state
//! (mapped read-only by the receiver: [`SealedMap`]). The kernel counts its references (the
//! master's fd, each worker's mapping), so nothing lives on disk and nothing needs deleting; the
//! seals make it immutable, so no one can change pages a worker has mapped.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

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
    seal(&fd)?;
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
///
/// `F_SEAL_WRITE` fails with `EBUSY` while a page of the file holds a reference other than
/// its mapping's. Just after the file was written, the kernel's own per-CPU page batches can
/// hold one for a moment (it drains and waits a little, and gives up on a loaded machine), so a
/// few more tries over about a second are made before the error is the caller's.
pub fn seal(fd: &impl AsRawFd) -> io::Result<()> {
    let seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL;
    retry_busy(|| fcntl(fd.as_raw_fd(), FcntlArg::F_ADD_SEALS(seals)).map(drop), std::thread::sleep)
}

/// How many times [`seal`] tries again after `EBUSY`, waiting 1 ms, then twice as long each time
/// up to [`SEAL_MAX_PAUSE`]: about 0.65 s of waiting in all.
const SEAL_RETRIES: usize = 10;
const SEAL_MAX_PAUSE: Duration = Duration::from_millis(200);

/// Runs `attempt` until it succeeds or fails with anything but `EBUSY`, at most
/// `1 + SEAL_RETRIES` times, calling `wait` with the pause before each retry; the last `EBUSY`
/// is the caller's.
fn retry_busy(mut attempt: impl FnMut() -> nix::Result<()>, mut wait: impl FnMut(Duration)) -> io::Result<()> {
    let mut pause = Duration::from_millis(1);
    for _ in 0..SEAL_RETRIES {
        match attempt() {
            Err(nix::errno::Errno::EBUSY) => wait(pause),
            done => return done.map_err(io::Error::from),
        }
        pause = (pause * 2).min(SEAL_MAX_PAUSE);
    }
    attempt().map_err(io::Error::from)
}

/// Whether a memfd is sealed as [`seal`] seals it (a hand-over's receiver trusts no other).
pub fn is_sealed(fd: &impl AsRawFd) -> io::Result<bool> {
    let seals = fcntl(fd.as_raw_fd(), FcntlArg::F_GET_SEALS)?;
    let want = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_WRITE;
    Ok(SealFlag::from_bits_truncate(seals).contains(want))
}

/// A read-only mapping of a sealed memfd (a hand-over's worker state): the plugin reads the
/// state in place, without a copy of it in the receiving worker. Unmapped on drop.
pub struct SealedMap {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

impl SealedMap {
    /// Maps all `len` bytes of `fd`, which must be sealed against writes, shrinking and growing
    /// (checked here: the contents cannot change, nor the file end, under the mapping) and be
    /// exactly `len` bytes long. `len` 0 maps nothing.
    pub fn map(fd: &OwnedFd, len: usize) -> io::Result<SealedMap> {
        if !is_sealed(fd)? {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "the memfd is not sealed"));
        }
        let size = nix::sys::stat::fstat(fd.as_raw_fd())?.st_size;
        if u64::try_from(size).ok() != Some(len as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the memfd holds {size} bytes, {len} announced"),
            ));
        }
        if len == 0 {
            return Ok(SealedMap { ptr: std::ptr::NonNull::dangling(), len });
        }
        // SAFETY: a fresh private read-only mapping of `len` bytes of a descriptor we borrow for
        // the call; the kernel picks the address, so it aliases nothing of ours. The mapping
        // keeps the file alive after `fd` closes.
        let ptr = unsafe {
            nix::libc::mmap(std::ptr::null_mut(), len, nix::libc::PROT_READ, nix::libc::MAP_PRIVATE, fd.as_raw_fd(), 0)
        };
        if ptr == nix::libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(SealedMap { ptr, len })
    }

    /// The state, in place.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is `len` readable bytes mapped by `map` (or dangling with `len` 0) and
        // stays mapped while `self` lives; the memfd is sealed, so nobody can write or truncate
        // the bytes under the mapping (no data race, no SIGBUS).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SealedMap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping `map` made; no slice of it outlives `self`
            // (`as_slice` borrows `self`).
            unsafe { nix::libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};

    #[test]
    fn a_sealed_memfd_maps_in_place_and_an_unsealed_one_is_refused() {
        let mut file = sealable_memfd("test-state").unwrap();
        file.write_all(b"state bytes").unwrap();
        let fd = OwnedFd::from(file);
        assert!(SealedMap::map(&fd, 11).is_err(), "not sealed yet");
        seal(&fd).unwrap();
        assert!(SealedMap::map(&fd, 12).is_err(), "the announced size must match");
        let map = SealedMap::map(&fd, 11).unwrap();
        drop(fd);
        assert_eq!(map.as_slice(), b"state bytes", "the mapping outlives the descriptor");
    }

    // The retry loop with injected answers: `EBUSY` twice, then done; `EBUSY` for good, given
    // up after the bounded tries and pauses; another error at once, without a pause.
    #[test]
    fn sealing_tries_again_on_ebusy_only_and_for_a_bounded_time() {
        use nix::errno::Errno;
        let run = |answers: &[nix::Result<()>]| {
            let (mut tries, mut pauses) = (0, Vec::new());
            let result = retry_busy(
                || {
                    tries += 1;
                    answers.get(tries - 1).copied().unwrap_or(Err(Errno::EBUSY))
                },
                |d| pauses.push(d.as_millis() as u64),
            );
            (result.map_err(|e| e.raw_os_error()), tries, pauses)
        };
        assert_eq!(run(&[Err(Errno::EBUSY), Err(Errno::EBUSY), Ok(())]), (Ok(()), 3, vec![1, 2]));
        let (result, tries, pauses) = run(&[]);
        assert_eq!((result, tries), (Err(Some(nix::libc::EBUSY)), 1 + SEAL_RETRIES));
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 128, 200, 200]);
        assert_eq!(run(&[Err(Errno::EPERM)]), (Err(Some(nix::libc::EPERM)), 1, vec![]));
        assert_eq!(run(&[Ok(())]), (Ok(()), 1, vec![]));
    }

    // A real `EBUSY`: `F_SEAL_WRITE` is refused while a writable shared mapping of the file
    // exists. `seal` tries again, then says so (and seals once the mapping is gone).
    #[test]
    fn sealing_a_memfd_mapped_for_writing_fails_with_ebusy_after_the_retries() {
        let mut file = sealable_memfd("test-busy").unwrap();
        file.write_all(&[7; 4096]).unwrap();
        // SAFETY: a fresh shared writable mapping of one page of a file we own, at an address
        // the kernel picks (it aliases nothing of ours); nothing reads or writes through it, and
        // it is unmapped below before the file is used again.
        let ptr = unsafe {
            nix::libc::mmap(
                std::ptr::null_mut(),
                4096,
                nix::libc::PROT_READ | nix::libc::PROT_WRITE,
                nix::libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, nix::libc::MAP_FAILED, "{}", io::Error::last_os_error());
        let busy = seal(&file).unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(nix::libc::EBUSY), "{busy}");
        // SAFETY: unmaps exactly the mapping made above; no reference into it exists.
        assert_eq!(unsafe { nix::libc::munmap(ptr, 4096) }, 0);
        seal(&file).unwrap();
        assert!(is_sealed(&file).unwrap());
    }

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
