//! Signals: the event loops read them from a signalfd (no handler ever runs, as nginx's handlers
//! only set a flag); SIGPIPE is ignored.

use std::io;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

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
