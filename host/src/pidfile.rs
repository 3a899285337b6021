//! The pid file: how `host stop`, `reload`, `status` and `connections` find the master, and how a
//! second `start` knows one is running. The control socket lives beside it (`host.pid` →
//! `host.sock`).
//!
//! Where: `--pid-file`, else the config file's `pid_file`, else a file of its own in a per-user
//! runtime directory ([`default_dir`], [`default_pid_file_for`]): named after the config file
//! (`-c web.toml` → `web.pid`), or after the first service's name and address
//! (`http-127.0.0.1-8080.pid`), as Workerman names a pid file after its start file, so that two
//! hosts started by one user do not clash. A control command given neither option acts on the
//! one host running from that directory ([`running_in_default_dir`]).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sys::signal::kill;
use nix::unistd::Pid;

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

/// The default pid file of a start, in [`default_dir`]: named after the config file `config`
/// (its name without `.toml`), else after the first service's `name` and `listen` address.
pub fn default_pid_file_for(config: Option<&Path>, first_service: Option<(&str, &str)>) -> PathBuf {
    default_dir().join(pid_file_name(config, first_service))
}

/// The file name of [`default_pid_file_for`] (pure: the plan resolves it against its defaults).
pub fn pid_file_name(config: Option<&Path>, first_service: Option<(&str, &str)>) -> String {
    let raw = match (config, first_service) {
        (Some(path), _) => path.file_stem().map_or_else(|| "host".to_string(), |s| s.to_string_lossy().into_owned()),
        (None, Some((name, listen))) => format!("{name}-{listen}"),
        (None, None) => "host".to_string(),
    };
    format!("{}.pid", file_name_of(&raw))
}

/// `raw` as a file name: letters, digits, `.`, `_` and `-` kept, anything else a `-` (runs of
/// them one), no leading dot; longer than 48 bytes, cut with a hash of the whole appended (the
/// control socket beside it must fit a Unix socket path's 108 bytes).
fn file_name_of(raw: &str) -> String {
    let mut name = String::new();
    for c in raw.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' };
        if !(c == '-' && name.ends_with('-')) {
            name.push(c);
        }
    }
    let name = name.trim_matches('-').trim_start_matches('.').to_string();
    let name = if name.is_empty() { "host".to_string() } else { name };
    if name.len() <= 48 {
        return name;
    }
    let hash = raw.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{}-{:08x}", &name[..39], hash as u32)
}

/// The pid files in the default runtime directory whose masters run, with their pids, sorted.
pub fn running_in_default_dir() -> Result<Vec<(PathBuf, i32)>, PidFileError> {
    let dir = default_dir();
    check_private_dir(&dir)?;
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(cause) => return Err(PidFileError::Read { path: dir, cause }),
    };
    let mut running: Vec<(PathBuf, i32)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pid"))
        .filter_map(|p| read_running(&p).ok().map(|pid| (p, pid)))
        .collect();
    running.sort();
    Ok(running)
}

/// What a control command without `--pid-file` or `-c` looks for when no host runs: a path that
/// names the pattern, so that "no pid file …" says where it looked.
pub fn default_pattern() -> PathBuf {
    default_dir().join("*.pid")
}

/// Creates the directory of a pid file in the default runtime directory (mode 0700) and checks
/// it is this user's own ([`check_private_dir`]): someone could otherwise pre-create it, or a
/// symlink in its place, and hold our pid file and answer on our control socket.
pub fn prepare_default_dir(pid_file: &Path) -> Result<(), PidFileError> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = pid_file.parent().filter(|d| *d == default_dir()) else { return Ok(()) };
    let err = |cause| PidFileError::Write { path: pid_file.to_path_buf(), cause };
    if let Some(parent) = dir.parent() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).map_err(err)?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(err(e)),
        _ => {}
    }
    check_private_dir(dir)
}

/// Checks that `dir`, the default runtime directory, is this user's own: a directory (not a
/// symlink to one), owned by this user, closed to group and others (0700). A directory that does
/// not exist passes (there is nothing in it to believe).
pub fn check_private_dir(dir: &Path) -> Result<(), PidFileError> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(cause) => return Err(PidFileError::Read { path: dir.to_path_buf(), cause }),
    };
    let refuse = |reason: String| Err(PidFileError::UnsafeDir { dir: dir.to_path_buf(), reason });
    let ours = nix::unistd::geteuid().as_raw();
    if meta.file_type().is_symlink() {
        return refuse("it is a symlink".into());
    }
    if !meta.is_dir() {
        return refuse("it is not a directory".into());
    }
    if meta.uid() != ours {
        let uid = meta.uid();
        return refuse(format!(
            "it belongs to uid {uid}, not to this user (uid {ours}) (a host of that user? run the command as that user)"
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!("its mode is {:04o}, not 0700 (`chmod 700 {}`)", meta.mode() & 0o7777, dir.display()));
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    #[error("host is already running (pid {pid}, pid file {path}); to run another one, give it a pid file of its own with --pid-file")]
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
        "refusing the runtime directory {dir}: {reason}; someone else may have made it: remove it, or pass --pid-file"
    )]
    UnsafeDir { dir: PathBuf, reason: String },
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
    if let Some(dir) = path.parent().filter(|d| *d == default_dir()) {
        check_private_dir(dir)?;
    }
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
    ///
    /// A master that took over from an upgrade's guardian is another process: it writes its own
    /// pid (one write of the whole content, then the length).
    pub fn adopt(path: &Path, lock: fs::File) -> Self {
        use std::os::unix::fs::FileExt;
        let text = format!("{}\n", std::process::id());
        if fs::read_to_string(path).is_ok_and(|t| t != text) {
            let written = lock.write_all_at(text.as_bytes(), 0).and_then(|()| lock.set_len(text.len() as u64));
            if let Err(e) = written {
                tracing::error!(path = %path.display(), "could not write this master's pid: {e}");
            }
        }
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
    fn only_a_private_real_directory_of_ours_is_a_runtime_directory() {
        use std::os::unix::fs::PermissionsExt;
        let top = temp("private").parent().unwrap().to_path_buf();
        let dir = top.join("run");
        assert!(check_private_dir(&dir).is_ok(), "absent: nothing to believe, nothing refused");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(check_private_dir(&dir).is_ok());
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let e = check_private_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("0755") && e.contains("--pid-file"), "{e}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        // Another user's `/tmp/host-UID -> /their/dir`: refused even though the target is fine.
        let link = top.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = check_private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn each_start_gets_a_default_pid_file_of_its_own() {
        let name = |config: Option<&str>, service: Option<(&str, &str)>| {
            let path = default_pid_file_for(config.map(Path::new), service);
            assert_eq!(path.parent(), Some(default_dir().as_path()));
            path.file_name().unwrap().to_string_lossy().into_owned()
        };
        assert_eq!(name(Some("/etc/host/web.toml"), Some(("x", "y"))), "web.pid");
        assert_eq!(name(None, Some(("http", "127.0.0.1:8080"))), "http-127.0.0.1-8080.pid");
        assert_ne!(name(None, Some(("http", "127.0.0.1:8080"))), name(None, Some(("http", "127.0.0.1:8081"))));
        assert_eq!(name(None, Some(("echo", "unix:/run/e.sock"))), "echo-unix-run-e.sock.pid");
        assert_eq!(name(None, Some(("dns", "udp://[::1]:53"))), "dns-udp-1-53.pid");
        assert_eq!(name(Some(".hidden.toml"), None), "hidden.pid");
        let long = name(None, Some((&"s".repeat(240), "127.0.0.1:1")));
        assert!(long.len() <= 52 && long.ends_with(".pid"), "{long}");
        assert_ne!(long, name(None, Some((&"s".repeat(240), "127.0.0.1:2"))));
    }

    #[test]
    fn socket_sits_beside_the_pid_file() {
        assert_eq!(socket_path(Path::new("/run/x/host.pid")), PathBuf::from("/run/x/host.sock"));
        assert_eq!(socket_path(Path::new("/run/web")), PathBuf::from("/run/web.sock"));
    }
}
