//! Daemon mode (`start -d`).

use std::io;
use std::os::fd::AsRawFd;

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

/// Makes `log` this process's stdout and stderr (`host reopen-logs`). `dup2` replaces each
/// atomically: a line written meanwhile goes whole to the old file or to the new one, never lost.
/// Children started later inherit the new file.
pub fn redirect_stdio(log: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    nix::unistd::dup2(log.as_raw_fd(), 1)?;
    nix::unistd::dup2(log.as_raw_fd(), 2)?;
    Ok(())
}
