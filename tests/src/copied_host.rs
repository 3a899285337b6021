//! A host master run from a private copy of the host binary (with the worker binary beside it,
//! or alone), so that a test can replace those binaries on disk while the master runs, as
//! `cargo build`, `install` and package upgrades do (a new file renamed over the path: the
//! running master's file is unlinked, not rewritten).

use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::{host_bin, host_worker_bin, poll_until, TempDir, READY_TIMEOUT};

/// A master started from `DIR/bin/host`, in `DIR` (working and runtime directory), its log in
/// `DIR/host.log`. Drop kills it and its workers.
pub struct CopiedHost {
    dir: TempDir,
    child: Child,
}

impl CopiedHost {
    /// Copies the host binary alone (its workers run it: `host worker`), runs `host ARGS…` from
    /// the copy and waits until it is ready.
    pub fn start(args: &[&str]) -> CopiedHost {
        Self::start_installed(args, false)
    }

    /// As [`CopiedHost::start`], with the worker binary installed beside the host binary.
    pub fn start_pair(args: &[&str]) -> CopiedHost {
        Self::start_installed(args, true)
    }

    fn start_installed(args: &[&str], worker_binary: bool) -> CopiedHost {
        let dir = TempDir::new();
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::copy(host_bin(), dir.join("bin/host")).unwrap_or_else(|e| panic!("could not copy the host binary: {e}"));
        if worker_binary {
            fs::copy(host_worker_bin(), dir.join("bin/host-worker"))
                .unwrap_or_else(|e| panic!("could not copy the worker binary: {e}"));
        }
        let log = fs::File::create(dir.join("host.log")).unwrap();
        let mut cmd = Command::new(dir.join("bin/host"));
        cmd.args(args)
            .args(crate::host::io_args(args))
            .current_dir(dir.path())
            .env("XDG_RUNTIME_DIR", dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        let child = spawn_fresh_binary(&mut cmd).unwrap_or_else(|e| panic!("could not run the copied host: {e}"));
        let host = CopiedHost { dir, child };
        if let Err(e) = host.wait_for_log("host ready", READY_TIMEOUT) {
            panic!("the copied host did not get ready: {e}");
        }
        host
    }

    /// Its working and runtime directory; the binary is `bin/host` in it.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The port of its first `listening … address=IP:PORT` line.
    pub fn port(&self) -> u16 {
        let line = self.wait_for_log("listening", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        line.split_whitespace()
            .find_map(|f| f.strip_prefix("address="))
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address=IP:PORT in {line:?}"))
    }

    /// Runs the control command `host ARGS…` (the freshly built binary) against this master.
    pub fn command(&self, args: &[&str], timeout: Duration) -> crate::Output {
        crate::run_host_in(self.dir.path(), args, timeout)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The master's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("host.log")).unwrap_or_default()
    }

    /// Waits until a line of the log contains `pattern` and returns it.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Result<String, String> {
        poll_until(timeout, || self.log().lines().find(|l| l.contains(pattern)).map(String::from))
            .ok_or_else(|| format!("no line with {pattern:?} in {timeout:?}; log:\n{}", self.log()))
    }

    /// Waits until `n` lines of the log contain `pattern` and returns the `n`th.
    pub fn wait_for_nth(&self, pattern: &str, n: usize, timeout: Duration) -> Result<String, String> {
        poll_until(timeout, || self.log().lines().filter(|l| l.contains(pattern)).nth(n - 1).map(String::from))
            .ok_or_else(|| format!("no {n} line(s) with {pattern:?} in {timeout:?}; log:\n{}", self.log()))
    }

    /// The master's worker processes (its children titled `host: worker …`), sorted.
    pub fn worker_pids(&self) -> Vec<i32> {
        let pid = self.pid();
        let mut pids: Vec<i32> = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| crate::cmdline(p).is_some_and(|c| c.starts_with("host: worker")) && crate::is_alive(p))
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Puts a new copy of the binary in place by rename, as `cargo build` and `install` do.
    pub fn replace_binary(&self) {
        self.install("host", &host_bin());
    }

    /// Puts a new copy of the worker binary in place by rename.
    pub fn replace_worker_binary(&self) {
        self.install("host-worker", &host_worker_bin());
    }

    /// Copies `from` to `bin/NAME` by rename.
    fn install(&self, name: &str, from: &std::path::Path) {
        let (new, path) = (self.dir.join(format!("bin/{name}.new")), self.dir.join(format!("bin/{name}")));
        fs::copy(from, &new).unwrap_or_else(|e| panic!("could not copy {}: {e}", from.display()));
        fs::rename(&new, &path).unwrap_or_else(|e| panic!("could not replace {}: {e}", path.display()));
    }
}

impl Drop for CopiedHost {
    fn drop(&mut self) {
        // Workers run in process groups of their own: by pid, read while the master lives.
        let workers = self.worker_pids();
        let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.wait();
        for pid in workers {
            if crate::cmdline(pid).is_some_and(|c| c.starts_with("host")) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if std::thread::panicking() {
            eprintln!("\n---- copied host (pid {}) log ----\n{}---- end ----\n", self.pid(), self.log());
        }
    }
}

/// Spawns a binary this process has just written. Another test thread that forks while the copy
/// is open for writing holds that descriptor in its child until the child execs, and exec of the
/// copy fails with ETXTBSY meanwhile: a bounded retry (about 2 s) rides that out.
pub fn spawn_fresh_binary(cmd: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) && tries < 40 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}
