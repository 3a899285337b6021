//! The watch page: one shared page per worker, created by the master (a memfd, handed to the
//! worker with its other descriptors) and mapped by both. The worker stores in it, with one
//! relaxed atomic store, which plugin callback it is in; the master reads it when the worker
//! stops answering, without the worker's help (a worker stuck in a plugin sends nothing).

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::libc;
use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

/// The size of the memfd and of each mapping (one page on every Linux platform we build for).
const LEN: usize = 4096;

/// One shared word, mapped from a watch memfd (`MAP_SHARED`: the master and the worker see
/// the same memory). Unmapped on drop.
pub struct WatchPage {
    word: NonNull<AtomicU64>,
}

impl WatchPage {
    /// A new watch memfd (close-on-exec, zeroed) and the master's mapping of it.
    pub fn create(name: &str) -> io::Result<(WatchPage, OwnedFd)> {
        let name = CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let fd = memfd_create(&name, MemFdCreateFlag::MFD_CLOEXEC)?;
        nix::unistd::ftruncate(&fd, LEN as libc::off_t)?;
        let page = WatchPage::map(fd.as_fd())?;
        Ok((page, fd))
    }

    /// Maps the watch memfd `fd` (the worker's side; the mapping outlives the descriptor).
    pub fn map(fd: BorrowedFd<'_>) -> io::Result<WatchPage> {
        let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
        if (st.st_size as u64) < LEN as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the watch descriptor is smaller than a page"));
        }
        // SAFETY: a new shared read-write mapping of LEN bytes of a file at least that long (checked
        // above); the kernel picks the address, so no existing memory is touched. Failure is
        // MAP_FAILED, turned into an error below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let word = NonNull::new(ptr.cast::<AtomicU64>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(WatchPage { word })
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: `word` points at the start of a live, page-aligned (so 8-byte aligned) mapping
        // owned by `self` until drop; other processes change it only through atomic operations
        // (AtomicU64 is the only type this memory is ever accessed as).
        unsafe { self.word.as_ref() }
    }

    /// Stores `value` (relaxed: a plain store on x86-64 and arm64).
    pub fn store(&self, value: u64) {
        self.word().store(value, Ordering::Relaxed);
    }

    pub fn load(&self) -> u64 {
        self.word().load(Ordering::Relaxed)
    }
}

impl Drop for WatchPage {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of LEN bytes; no reference to it outlives `self`
        // (`word` borrows `self`).
        unsafe { libc::munmap(self.word.as_ptr().cast(), LEN) };
    }
}

impl fmt::Debug for WatchPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WatchPage({:#x})", self.load())
    }
}

/// The system's monotonic clock (CLOCK_MONOTONIC, the same in every process) in milliseconds.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, a valid local; CLOCK_MONOTONIC
    // always exists on Linux, so it cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_share_the_word() {
        let (master, fd) = WatchPage::create("test-watch").unwrap();
        let worker = WatchPage::map(fd.as_fd()).unwrap();
        drop(fd);
        assert_eq!(master.load(), 0, "zeroed");
        worker.store(0x0300_0000_0000_1234);
        assert_eq!(master.load(), 0x0300_0000_0000_1234);
    }

    #[test]
    fn refuses_a_descriptor_smaller_than_a_page() {
        let fd = crate::sys::sealed_memfd("tiny", &mut &b"x"[..]).unwrap();
        assert!(WatchPage::map(fd.as_fd()).is_err());
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(monotonic_ms() >= a + 4);
    }
}
