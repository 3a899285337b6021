//! The only module with `unsafe`: every system call the host makes beyond what `std`, `mio` and
//! `nix` wrap safely, split by concern as mio's `src/sys/unix/` is:
//!
//! - [`fd`]: taking inherited descriptors (the one `from_raw_fd`), close-on-exec, stray fds;
//! - [`memfd`]: sealed in-memory files (plugin snapshots, a hand-over's state) and their
//!   read-only mappings;
//! - [`memory`]: what an idle worker gives back (its start-up's code pages, its stack's unused part);
//! - [`openat`]: walking a path without following symlinks (the plugin trust check);
//! - [`process`]: starting children with inherited fds, process titles and names;
//! - [`signal`]: the signalfd and SIGPIPE;
//! - [`socket`]: the per-slot SO_REUSEPORT listening sockets (TCP, UDP), the shared Unix one;
//! - [`scm`]: bytes with descriptors attached (SCM_RIGHTS), for the master↔worker channel;
//! - [`daemon`]: `start -d`, and pointing stdout and stderr at a reopened log file;
//! - [`guardian`]: the child that takes a failed binary upgrade back, and pidfds;
//! - [`identity`]: checking and switching user and group;
//! - [`watch`]: the page a worker shares with the master (which plugin callback it is in).
//!
//! Every descriptor is created close-on-exec (SOCK_CLOEXEC, O_CLOEXEC, F_DUPFD_CLOEXEC,
//! MFD_CLOEXEC; mio accepts with accept4(SOCK_CLOEXEC)): a child gets exactly the descriptors
//! [`spawn_with_fds`] hands it, never one by accident. Functions take `BorrowedFd`/`AsFd`/
//! `OwnedFd`; raw numbers appear only between fork and exec and where inherited fds are taken.
#![allow(unsafe_code)]

/// Calls `libc::$fn(args…)` and turns its `-1` into `io::Error::last_os_error()` (mio's
/// `syscall!`). It must be used inside an `unsafe` block whose SAFETY comment covers the call.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)? ) ) => {{
        let ret = nix::libc::$fn($($arg, )*);
        if ret == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(ret)
        }
    }};
}

mod daemon;
mod fd;
mod guardian;
mod identity;
mod memfd;
mod memory;
mod openat;
mod process;
mod scm;
mod signal;
mod socket;
mod watch;

pub use self::daemon::{daemonize, redirect_stdio, Daemonized};
pub use self::fd::{
    clear_cloexec, cloexec_strays, dup_regular_file, expect_socket, proc_fd_path, set_cloexec, take_inherited,
    take_inherited_range, FIRST_INHERITED_FD,
};
pub use self::guardian::{pidfd_ended, pidfd_open, Guardian, GUARDIAN_ENV};
pub use self::identity::{check_identity, switch_identity};
pub use self::memfd::{seal, sealable_memfd, sealed_memfd, SealedMap};
pub use self::memory::release_idle_pages;
pub use self::openat::{open_dir_nofollow, open_file_nofollow, open_root_dir};
pub use self::process::{
    dup_inherited_above, exec_image, exec_restoring, exec_with_title, open_running_image, set_nonblocking,
    set_thread_name, spawn_with_fds, trim_heap, RUNNING_IMAGE,
};
pub use self::scm::{recv_with_fds, send_with_fds};
pub use self::signal::{ignore_sigpipe, signal_fd};
pub use self::socket::{
    listen_reuseport, listen_unix, local_addr, peer_cred, same_socket, socket_kind, steer_reuseport, udp_reuseport,
    unix_in_use, SocketKind,
};
pub use self::watch::{monotonic_ms, WatchPage};
