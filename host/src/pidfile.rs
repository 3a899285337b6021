//! The pid file: how `host stop`, `reload`, `status` and `connections` find the master, and how a
//! second `start` knows one is running. The control socket lives beside it (`host.pid` →
//! `host.sock`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::kill;
use nix::unistd::Pid;

pub const DEFAULT_PID_FILE: &str = "host.pid";

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("host is already running (pid {pid}, pid file {path})")]
    Running { pid: i32, path: PathBuf },
    #[error("host is not running (no pid file {0})")]
    NotRunning(PathBuf),
    #[error("host is not running (pid file {path} names pid {pid}, which is not a running host; remove the file)")]
    Stale { pid: i32, path: PathBuf },
    #[error("could not write pid file {path}: {cause}")]
    Write { path: PathBuf, cause: io::Error },
    #[error("could not read pid file {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
}

/// The control socket that goes with a pid file.
pub fn socket_path(pid_file: &Path) -> PathBuf {
    pid_file.with_extension("sock")
}

/// Whether `pid` is a live host master (not just any process that reused the pid).
/// A process that exited but is not yet reaped (a zombie) is not running.
pub fn is_host_master(pid: i32) -> bool {
    if pid <= 0 || kill(Pid::from_raw(pid), None).is_err() {
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
        Err(e) => return Err(PidFileError::Read { path: path.to_path_buf(), cause: e }),
    };
    let pid: i32 = text.trim().parse().unwrap_or(0);
    if is_host_master(pid) {
        Ok(pid)
    } else {
        Err(PidFileError::Stale { pid, path: path.to_path_buf() })
    }
}

/// A pid file this process wrote; removed on drop if it still names this process.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes our pid to `path`, refusing when a live master owns it and replacing a stale one.
    pub fn acquire(path: &Path) -> Result<Self, PidFileError> {
        let write_err = |e| PidFileError::Write { path: path.to_path_buf(), cause: e };
        for _ in 0..2 {
            match fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(path) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id()).map_err(write_err)?;
                    return Ok(PidFile { path: path.to_path_buf() });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match read_running(path) {
                    Ok(pid) if pid as u32 != std::process::id() => {
                        return Err(PidFileError::Running { pid, path: path.to_path_buf() })
                    }
                    _ => {
                        tracing::info!(path = %path.display(), "replacing a stale pid file");
                        fs::remove_file(path).map_err(write_err)?;
                    }
                },
                Err(e) => return Err(write_err(e)),
            }
        }
        Err(write_err(io::Error::new(io::ErrorKind::AlreadyExists, "another host keeps creating it")))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
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
    fn socket_sits_beside_the_pid_file() {
        assert_eq!(socket_path(Path::new("/run/x/host.pid")), PathBuf::from("/run/x/host.sock"));
        assert_eq!(socket_path(Path::new("/run/web")), PathBuf::from("/run/web.sock"));
    }
}
