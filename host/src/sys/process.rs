//! Starting processes: children that inherit chosen descriptors (workers, probes), the master's
//! re-exec for its process title, thread names.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use nix::libc;

use super::fd::FIRST_INHERITED_FD;

/// Inherited descriptors are first moved above this, so moving them down never overwrites one
/// that is still to be moved.
const FD_SCRATCH_BASE: RawFd = 100;
/// At most this many descriptors are handed to a child (the scratch array is on the stack:
/// nothing may allocate between fork and exec).
const MAX_INHERITED: usize = 16;

/// Starts `cmd` with `fds` inherited as descriptors 3, 4, … and no other descriptor above
/// stderr, with SIGKILL as its parent-death signal (the signal fires when the *thread* that
/// started it ends: start children from threads that live as long as the master).
pub fn spawn_with_fds(cmd: &mut Command, fds: &[BorrowedFd<'_>]) -> io::Result<Child> {
    if fds.len() > MAX_INHERITED {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors to hand to a child"));
    }
    let mut raw = [0 as RawFd; MAX_INHERITED];
    for (r, fd) in raw.iter_mut().zip(fds) {
        *r = fd.as_raw_fd();
    }
    let count = fds.len();
    let first_free = FIRST_INHERITED_FD + count as RawFd;
    // For kernels without close_range(CLOSE_RANGE_CLOEXEC): the highest descriptor number, read
    // before the fork (getrlimit is no business of the child).
    let fd_limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(65536, |(soft, _)| soft.min(i32::MAX as u64) as RawFd);
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed: it makes nothing but fcntl, dup2, close_range and prctl system calls,
    // allocates nothing (`raw` is a copy on the stack) and takes no lock. The descriptors in
    // `fds` are borrowed for this whole call, so they are open when the child copies them.
    unsafe {
        cmd.pre_exec(move || {
            // Move every fd out of the way first: dup2(3, 4) must not overwrite an fd still to
            // be moved to 5. The scratch copies are close-on-exec, so they vanish at exec.
            let mut scratch = [0 as RawFd; MAX_INHERITED];
            for i in 0..count {
                scratch[i] = syscall!(fcntl(raw[i], libc::F_DUPFD_CLOEXEC, FD_SCRATCH_BASE))?;
            }
            for (i, &fd) in scratch[..count].iter().enumerate() {
                // dup2 to a different number gives a descriptor without FD_CLOEXEC.
                syscall!(dup2(fd, FIRST_INHERITED_FD + i as RawFd))?;
            }
            // Everything above the handed fds vanishes at exec. Marked, not closed: std's pipe
            // that reports a failed exec to the parent must live until the exec.
            let marked =
                syscall!(syscall(libc::SYS_close_range, first_free, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC));
            if marked.is_err() {
                // Linux < 5.11: one by one (EBADF for the numbers not open).
                for fd in first_free..fd_limit {
                    let _ = syscall!(fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC));
                }
            }
            syscall!(prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0))?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// Replaces this process with the host binary run with the same arguments but `title` as its
/// argv[0], so `ps` shows e.g. `host: master (host.toml)`. `marker` is set in the environment so
/// the new image knows it is titled. Returns only if exec failed.
pub fn exec_with_title(title: &str, args: (&str, &std::ffi::OsStr), marker: &str) -> io::Error {
    // The running image, not the file at its path: that may be another binary by now.
    // The arguments travel in the environment (`args.0`): argv is the title alone.
    Command::new(RUNNING_IMAGE).arg0(title).env(args.0, args.1).env(marker, "1").exec()
}

/// The program that starts the image this process runs: exec'd by a child of a fork, it is the
/// parent's image (a fork shares it), whatever file sits at the path it was started from now,
/// and even when that file was deleted. Workers and probes are started from it, so that a
/// binary installed over the host's path is run only by `host upgrade`.
pub const RUNNING_IMAGE: &str = "/proc/self/exe";

/// A close-on-exec descriptor of the image this process runs (kept across `host upgrade`, so the
/// new image can go back to it).
pub fn open_running_image() -> io::Result<OwnedFd> {
    Ok(OwnedFd::from(std::fs::File::open(RUNNING_IMAGE)?))
}

/// A close-on-exec duplicate, numbered `min` or above, of the descriptor `number` this process
/// inherited and has not taken yet (a new master keeps copies of what the previous image handed
/// over, to give it back if it fails).
pub fn dup_inherited_above(number: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a number makes a new descriptor (EBADF if `number` is not
    // open) and touches no memory; the new number is owned by nothing else, so the OwnedFd owns
    // it. `number` itself is neither owned nor closed here.
    let new = unsafe { syscall!(fcntl(number, libc::F_DUPFD_CLOEXEC, min)) }?;
    // SAFETY: `new` was just created by the kernel for us (see above).
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Puts each `(fd, number)` back at `number` (open across exec), then execs the image `image`
/// (a descriptor of an ELF binary) as [`exec_image`] does. For a master going back to the image
/// it was upgraded from: `number`s are the descriptors the handed-over state names, which this
/// process may have closed or reused meanwhile. Returns only if the exec failed; the caller
/// must then exit (the numbers were overwritten under whatever owned them).
pub fn exec_restoring(
    image: BorrowedFd<'_>,
    fds: &[(BorrowedFd<'_>, RawFd)],
    argv0: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> io::Error {
    for &(fd, number) in fds {
        // SAFETY: dup2 makes `number` a copy of the open `fd` (borrowed) without close-on-exec;
        // whatever object owned `number` before loses it, which is sound only because this
        // process execs next or exits (documented above): nothing uses that object again.
        if let Err(e) = unsafe { syscall!(dup2(fd.as_raw_fd(), number)) } {
            return e;
        }
    }
    // An ELF image runs from its close-on-exec descriptor through this path (the kernel opens
    // it before it closes close-on-exec descriptors).
    let path = format!("/proc/self/fd/{}", image.as_raw_fd());
    exec_image(std::path::Path::new(&path), argv0, env)
}

/// Makes `fd` non-blocking (a pipe read with a deadline).
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL read and change only the open file's status flags; `fd` is
    // borrowed, so it is open.
    unsafe {
        let flags = syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Sets the name `top` and `/proc/PID/comm` show (15 bytes at most).
pub fn set_thread_name(name: &str) {
    let short: String = name.chars().take(15).collect();
    if let Ok(c) = std::ffi::CString::new(short) {
        let _ = nix::sys::prctl::set_name(&c);
    }
}

/// Replaces this process's image with `path` (same pid: children stay ours, locks and the
/// descriptors without close-on-exec stay open), run with `argv0` alone as its argv and this
/// process's environment plus `env`. A plain `execve`: unlike `Command::exec`, it keeps the
/// signal mask, so the signals the master reads from its signalfd stay blocked and pending across
/// the exec instead of taking their default action before the new image blocks them again.
/// Returns only if the exec failed.
pub fn exec_image(path: &std::path::Path, argv0: &str, env: &[(&str, &std::ffi::OsStr)]) -> io::Error {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cstring = |bytes: &[u8]| CString::new(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let build = || -> io::Result<(CString, CString, Vec<CString>)> {
        let path = cstring(path.as_os_str().as_bytes())?;
        let argv0 = cstring(argv0.as_bytes())?;
        let mut vars = Vec::new();
        for (key, value) in std::env::vars_os() {
            if env.iter().any(|(k, _)| std::ffi::OsStr::new(k) == key) {
                continue;
            }
            vars.push(cstring(&[key.as_bytes(), b"=", value.as_bytes()].concat())?);
        }
        for (key, value) in env {
            vars.push(cstring(&[key.as_bytes(), b"=", value.as_bytes()].concat())?);
        }
        Ok((path, argv0, vars))
    };
    match build() {
        Ok((path, argv0, vars)) => match nix::unistd::execve(&path, &[argv0], &vars) {
            Err(e) => e.into(),
            Ok(never) => match never {},
        },
        Err(e) => e,
    }
}

/// Gives the heap's free pages back to the system (`malloc_trim(0)`: glibc returns the free
/// top of the heap and `MADV_DONTNEED`s every whole free page inside it). A worker calls it once
/// its start-up (spec, plugin loading, configuration) is done and freed: what that left free
/// would otherwise stay resident for the worker's whole life. Returns whether memory was released.
#[cfg(target_env = "gnu")]
pub fn trim_heap() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists under its lock; it takes no
    // pointer and is safe to call at any time from any thread.
    unsafe { nix::libc::malloc_trim(0) != 0 }
}

/// (Other C libraries have no `malloc_trim`: nothing to do.)
#[cfg(not(target_env = "gnu"))]
pub fn trim_heap() -> bool {
    false
}
