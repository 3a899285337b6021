//! The guardian of a binary upgrade, and process descriptors (pidfds).
//!
//! A master that execs a new binary replaces itself: if that program dies before it runs any of
//! the host's code (a wrapper script that exits, a crash in the dynamic loader), the master's
//! pid is gone, and with it the control socket's server, the supervision and — by their
//! parent-death signal — the workers. So right before the exec the master forks a guardian: a
//! copy of itself that holds every descriptor the upgrade state names (at their numbers, open
//! across exec) and waits. The new image releases it once its loop runs ([`Guardian::release`]);
//! if instead the master's process ends, or is not released within the guardian's deadline (then
//! the guardian kills it first), the guardian execs the previous image with the state, and that
//! image takes the master over (a new pid), adopting the workers that outlived their parent.
//!
//! Between fork and exec the guardian runs only async-signal-safe calls (`poll`, `read`,
//! `kill`, `execve`, `_exit`; the master has other threads): everything it needs is prepared
//! before the fork ([`PreparedExec`]).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use nix::libc;
use nix::unistd::Pid;

/// An `execve` prepared in full: after a fork only the pointers are read.
struct PreparedExec {
    path: CString,
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

impl PreparedExec {
    /// `image` run with `argv0` alone and this process's environment plus `env` (which replaces
    /// a variable of the same name), as [`super::exec_image`] runs it.
    fn new(image: BorrowedFd<'_>, argv0: &str, env: &[(&str, &OsStr)]) -> io::Result<Self> {
        let cstring = |bytes: &[u8]| CString::new(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
        let path = cstring(format!("/proc/self/fd/{}", image.as_raw_fd()).as_bytes())?;
        let mut strings = vec![cstring(argv0.as_bytes())?];
        for (key, value) in std::env::vars_os() {
            if env.iter().any(|(k, _)| OsStr::new(k) == key) {
                continue;
            }
            strings.push(cstring(&[key.as_bytes(), b"=", value.as_bytes()].concat())?);
        }
        for (key, value) in env {
            strings.push(cstring(&[key.as_bytes(), b"=", value.as_bytes()].concat())?);
        }
        let argv = vec![strings[0].as_ptr(), std::ptr::null()];
        let mut envp: Vec<*const libc::c_char> = strings[1..].iter().map(|s| s.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(PreparedExec { path, _strings: strings, argv, envp })
    }

    /// Async-signal-safe: reads memory prepared before the fork. Returns only if it failed.
    fn exec(&self) {
        // SAFETY: every pointer points into `self`'s CStrings (alive for this call); both arrays
        // end with a null pointer, as execve requires.
        unsafe {
            libc::execve(self.path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        }
    }
}

/// The master's end of a guardian: its pid and the pipe that releases it.
#[derive(Debug)]
pub struct Guardian {
    pid: Pid,
    release: OwnedFd,
}

/// Where the new image finds its guardian: `pid,fd` (the pipe's write end, open across exec).
pub const GUARDIAN_ENV: &str = "HOST_UPGRADE_GUARDIAN";

impl Guardian {
    /// Forks the guardian. It waits until this process releases it (a byte on the pipe), or
    /// this process ends, or `deadline` passes (it kills this process then); in the last two
    /// cases it execs `image` (a descriptor of the previous binary, open across exec) with
    /// `argv0` and `env`, keeping every descriptor that is open across exec in this process at
    /// the moment of the fork. The returned pipe end is open across exec: the new image takes
    /// it from [`GUARDIAN_ENV`] ([`Guardian::env_value`]).
    pub fn fork(image: BorrowedFd<'_>, argv0: &str, env: &[(&str, &OsStr)], deadline: Duration) -> io::Result<Self> {
        let rescue = PreparedExec::new(image, argv0, env)?;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let me = pidfd_open(Pid::this())?;
        let deadline_ms = deadline.as_millis().min(i32::MAX as u128) as i64;
        let master = Pid::this().as_raw();
        let (read_raw, write_raw, me_raw) = (read.as_raw_fd(), write.as_raw_fd(), me.as_raw_fd());
        // SAFETY: fork is called with every value the child uses prepared; the child runs only
        // async-signal-safe calls (close, clock_gettime, poll, read, kill, execve, _exit) on
        // those values and never returns from this block.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above: the guardian's whole life, in the child, async-signal-safe.
            unsafe { guard(read_raw, write_raw, me_raw, master, deadline_ms, &rescue) }
        }
        drop((read, me));
        super::clear_cloexec(write.as_fd())?;
        Ok(Guardian { pid: Pid::from_raw(pid), release: write })
    }

    /// `pid,fd`, for [`GUARDIAN_ENV`].
    pub fn env_value(&self) -> String {
        format!("{},{}", self.pid, self.release.as_raw_fd())
    }

    /// The guardian this image was handed by the one that exec'd it ([`GUARDIAN_ENV`]); the
    /// variable is removed so that no child sees it.
    pub fn inherited() -> Option<Self> {
        let value = std::env::var(GUARDIAN_ENV).ok()?;
        std::env::remove_var(GUARDIAN_ENV);
        let (pid, fd) = value.split_once(',')?;
        let (pid, fd): (i32, RawFd) = (pid.parse().ok()?, fd.parse().ok()?);
        // Taken only if open and not close-on-exec: handed over across the exec.
        let release = super::take_inherited_range(fd, 1).ok()?.pop()?;
        Some(Guardian { pid: Pid::from_raw(pid), release })
    }

    /// The guardian's pipe end, which a new image that may still go back keeps open across
    /// that exec.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.release.as_fd()
    }

    /// Tells the guardian this process runs on: it exits, and is reaped here.
    pub fn release(self) {
        let _ = nix::unistd::write(&self.release, b"1");
        drop(self.release);
        while let Err(nix::errno::Errno::EINTR) = nix::sys::wait::waitpid(self.pid, None) {}
    }
}

/// The guardian, in the child of the fork.
///
/// # Safety
/// To be called only in the child of a fork, with descriptors it inherited: it runs only
/// async-signal-safe calls and never returns.
unsafe fn guard(
    read: RawFd,
    write: RawFd,
    master: RawFd,
    master_pid: i32,
    deadline_ms: i64,
    rescue: &PreparedExec,
) -> ! {
    // SAFETY: the calls below are async-signal-safe and use only descriptors this child
    // inherited and memory prepared before the fork (see the function's contract).
    unsafe {
        libc::close(write);
        let start = now_ms();
        let mut pipe_open = true;
        let mut killed = false;
        loop {
            let waited = now_ms() - start;
            if waited >= deadline_ms && !killed {
                // Not released in time: a program that is not a host hangs in the master's place.
                libc::kill(master_pid, libc::SIGKILL);
                killed = true;
            }
            let mut fds = [
                libc::pollfd { fd: master, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: if pipe_open { read } else { -1 }, events: libc::POLLIN, revents: 0 },
            ];
            let timeout = if killed { -1 } else { (deadline_ms - waited).clamp(1, i32::MAX as i64) as i32 };
            let n = libc::poll(fds.as_mut_ptr(), 2, timeout);
            if n < 0 {
                continue; // EINTR
            }
            if fds[0].revents != 0 {
                // The master's process ended: take over.
                libc::close(read);
                libc::close(master);
                rescue.exec();
                libc::_exit(1);
            }
            if fds[1].revents != 0 {
                let mut byte = 0u8;
                match libc::read(read, (&raw mut byte).cast(), 1) {
                    1 => libc::_exit(0),
                    // The end closed without a release: wait for the process itself (or the deadline).
                    0 => pipe_open = false,
                    _ => {}
                }
            }
        }
    }
}

/// Milliseconds of the monotonic clock (async-signal-safe).
fn now_ms() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the struct it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}

/// A descriptor of process `pid` (close-on-exec): readable once it has ended, whoever its
/// parent is; immune to pid reuse.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor (close-on-exec) or
    // -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created `fd` for this process; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether the process of `pidfd` has ended (never blocks).
pub fn pidfd_ended(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
    // SAFETY: poll reads and writes the one pollfd it is given; timeout 0 never blocks.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    n > 0 && fds[0].revents != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_says_when_a_process_that_is_not_a_child_ends() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = Pid::from_raw(child.id() as i32);
        let fd = pidfd_open(pid).unwrap();
        assert!(!pidfd_ended(fd.as_fd()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(pidfd_ended(fd.as_fd()));
    }
}
