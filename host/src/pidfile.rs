//! The pid file: how `host stop`, `reload`, `status` and `connections` find the master, and how a
//! second `start` knows one is running. The control socket lives beside it (`host.pid` →
//! `host.sock`).
//!
//! Where: `--pid-file`, else the config file's `pid_file`, else a per-user runtime directory
//! ([`default_dir`]), so that control commands find a master started without either from any
//! directory.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::kill;
use nix::unistd::Pid;

pub const DEFAULT_PID_FILE: &str = "host.pid";

/// The per-user runtime directory of a host started without `--pid-file` or `pid_file`:
/// `$XDG_RUNTIME_DIR/host`, else `/run/host` for root, else `/tmp/host-UID`.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|d| d.is_absolute()) {
        return dir.join("host");
    }
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        PathBuf::from("/run/host")
    } else {
        std::env::temp_dir().join(format!("host-{uid}"))
    }
}

/// The default pid file, in [`default_dir`].
pub fn default_pid_file() -> PathBuf {
    default_dir().join(DEFAULT_PID_FILE)
}

/// Creates the directory of a pid file in the default runtime directory (mode 0700); refuses one
/// that another user owns (someone could otherwise pre-create it and hold our pid file).
pub fn prepare_default_dir(pid_file: &Path) -> Result<(), PidFileError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let Some(dir) = pid_file.parent().filter(|d| *d == default_dir()) else { return Ok(()) };
    let err = |cause| PidFileError::Write { path: pid_file.to_path_buf(), cause };
    match fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) => return Err(err(e)),
    }
    let meta = fs::metadata(dir).map_err(err)?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        let msg = format!("{} belongs to another user; pass --pid-file", dir.display());
        return Err(err(io::Error::new(io::ErrorKind::PermissionDenied, msg)));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("host is already running (pid {pid}, pid file {path})")]
    Running { pid: i32, path: PathBuf },
    #[error(
        "host is not running (no pid file {0}; a host started with --pid-file or -c is found with the same option)"
    )]
    NotRunning(PathBuf),
    #[error("host is not running (pid file {path} names pid {pid}, which is not a running host; remove the file)")]
    Stale { pid: i32, path: PathBuf },
    #[error("could not write pid file {path}: {cause}")]
    Write { path: PathBuf, cause: io::Error },
    #[error("could not read pid file {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error(
        "cannot read pid file {0}: permission denied (a host of another user? run the command as that user, or root)"
    )]
    NoPermission(PathBuf),
}

/// The control socket that goes with a pid file.
pub fn socket_path(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("sock")
}

/// Whether `pid` is a live host master (not just any process that reused the pid).
/// A process that exited but is not yet reaped (a zombie) is not running.
pub fn is_host_master(pid: i32) -> bool {
    // EPERM: it exists, it just is not ours to signal (a master started by another user).
    if pid <= 0 || matches!(kill(Pid::from_raw(pid), None), Err(e) if e != nix::errno::Errno::EPERM) {
        return false;
    }
    // The state follows the command name, which is in parentheses and may hold spaces.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    if matches!(state, None | Some("Z" | "X")) {
        return false;
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline.starts_with(b"host: master") || comm.trim_end() == "host: master"
}

/// The pid of the running master named by `path`.
pub fn read_running(path: &Path) -> Result<i32, PidFileError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(PidFileError::NotRunning(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(PidFileError::NoPermission(path.to_path_buf()))
        }
        Err(e) => return Err(PidFileError::Read { path: path.to_path_buf(), cause: e }),
    };
    let pid: i32 = text.trim().parse().unwrap_or(0);
    if is_host_master(pid) {
        Ok(pid)
    } else {
        Err(PidFileError::Stale { pid, path: path.to_path_buf() })
    }
}

/// A pid file this process wrote and holds locked (`flock`) for its whole life: two masters
/// started at once cannot both own it. Removed on drop if it still names this process.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    /// Open and locked while the master lives (close-on-exec: workers do not inherit the lock).
    _lock: fs::File,
}

impl PidFile {
    /// Locks `path` and writes our pid to it, refusing when a live master owns it; a stale file
    /// (its master died) is taken over.
    pub fn acquire(path: &Path) -> Result<Self, PidFileError> {
        let write_err = |e| PidFileError::Write { path: path.to_path_buf(), cause: e };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map_err(write_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                // Another master holds it: it may not have written its pid yet.
                let pid = read_running(path).unwrap_or(0);
                return Err(PidFileError::Running { pid, path: path.to_path_buf() });
            }
            Err(fs::TryLockError::Error(e)) => return Err(write_err(e)),
        }
        match read_running(path) {
            // A master that does not lock (an older host) still runs.
            Ok(pid) if pid as u32 != std::process::id() => {
                return Err(PidFileError::Running { pid, path: path.to_path_buf() })
            }
            Err(PidFileError::Stale { pid, .. }) if pid != 0 => {
                tracing::info!(path = %path.display(), stale_pid = pid, "replacing a stale pid file")
            }
            _ => {}
        }
        // One write of the whole content, then the length: a reader sees a whole pid.
        let text = format!("{}\n", std::process::id());
        use std::io::Seek;
        file.seek(io::SeekFrom::Start(0)).map_err(write_err)?;
        file.write_all(text.as_bytes()).map_err(write_err)?;
        file.set_len(text.len() as u64).map_err(write_err)?;
        Ok(PidFile { path: path.to_path_buf(), _lock: file })
    }

    /// The pid file the master's previous image held locked (a binary upgrade: same process, so
    /// the pid in it is still right; the lock belongs to the open file, which crossed the exec).
    pub fn adopt(path: &Path, lock: fs::File) -> Self {
        PidFile { path: path.to_path_buf(), _lock: lock }
    }

    /// The locked file, to hand over across exec.
    pub fn lock_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self._lock)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // A new image that fails after `host upgrade` gives the pid file back to the previous one.
        if crate::master::upgrade::rollback_armed() {
            return;
        }
        let ours = fs::read_to_string(&self.path).is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("host-pidfile-{}-{name}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir.join("host.pid")
    }

    #[test]
    fn stale_pid_files_are_replaced_and_ours_removed() {
        let path = temp("stale");
        fs::write(&path, "999999999\n").unwrap();
        assert!(matches!(read_running(&path), Err(PidFileError::Stale { .. })));
        let pf = PidFile::acquire(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), std::process::id().to_string());
        drop(pf);
        assert!(!path.exists());
        assert!(matches!(read_running(&path), Err(PidFileError::NotRunning(_))));
    }

    #[test]
    fn a_pid_that_is_not_a_host_is_stale() {
        // pid 1 is alive but it is not a host master
        assert!(!is_host_master(1) || fs::read_to_string("/proc/1/comm").unwrap().starts_with("host"));
        assert!(!is_host_master(0));
        assert!(!is_host_master(-5));
    }

    #[test]
    fn a_locked_pid_file_is_refused_even_before_its_pid_is_written() {
        let path = temp("locked");
        let first = PidFile::acquire(&path).unwrap();
        // Same process, another open file description: the lock is taken.
        fs::write(&path, "").unwrap();
        assert!(matches!(PidFile::acquire(&path), Err(PidFileError::Running { .. })));
        drop(first);
        let again = PidFile::acquire(&path).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap().trim(), std::process::id().to_string());
        drop(again);
    }

    #[test]
    fn socket_sits_beside_the_pid_file() {
        assert_eq!(socket_path(Path::new("/run/x/host.pid")), PathBuf::from("/run/x/host.sock"));
        assert_eq!(socket_path(Path::new("/run/web")), PathBuf::from("/run/web.sock"));
    }
}
