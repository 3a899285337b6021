//! The `host` master under test: spawned in a process group of its own, its stderr (the log of
//! the master and of every worker) captured by a reader thread.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::procfs::{children, cmdline, group_pids, is_alive};
use crate::{poll_until, TempDir, READY_TIMEOUT};

/// The captured stderr of a host: every line, appended as it arrives.
#[derive(Debug, Default)]
pub struct Log {
    state: Mutex<LogState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct LogState {
    text: String,
    /// Every writer closed stderr: the master and all its workers are gone.
    closed: bool,
}

impl Log {
    pub fn text(&self) -> String {
        self.state.lock().unwrap().text.clone()
    }

    /// Waits until a line contains `pattern` and returns it; Err (with the log) at the timeout or
    /// when stderr closed without one.
    pub fn wait_for(&self, pattern: &str, timeout: Duration) -> Result<String, String> {
        self.wait_for_nth(pattern, 1, timeout)
    }

    /// Waits until a line contains every one of `patterns` and returns it.
    pub fn wait_for_all(&self, patterns: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        loop {
            let found = state.text.lines().find(|l| patterns.iter().all(|p| l.contains(p)));
            if let Some(line) = found {
                return Ok(line.to_string());
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return Err(format!("no line with all of {patterns:?} in {timeout:?}; log so far:\n{}", state.text));
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Waits until `n` lines contain `pattern` and returns the `n`th.
    pub fn wait_for_nth(&self, pattern: &str, n: usize, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().unwrap();
        loop {
            if let Some(line) = state.text.lines().filter(|l| l.contains(pattern)).nth(n - 1) {
                return Ok(line.to_string());
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                let why = if state.closed { "the host's stderr closed" } else { "timed out" };
                return Err(format!("{why} waiting for {n} line(s) with {pattern:?}; log so far:\n{}", state.text));
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// Lines that contain `pattern`.
    pub fn count(&self, pattern: &str) -> usize {
        self.state.lock().unwrap().text.lines().filter(|l| l.contains(pattern)).count()
    }

    fn push_line(&self, line: &str) {
        let mut state = self.state.lock().unwrap();
        state.text.push_str(line);
        state.text.push('\n');
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap().closed = true;
        self.changed.notify_all();
    }
}

/// Appends every line read from `stream` to a new [`Log`], on a thread of its own.
fn capture(stream: impl std::io::Read + Send + 'static) -> Arc<Log> {
    let log = Arc::new(Log::default());
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => sink.push_line(&line),
                Err(_) => break,
            }
        }
        sink.close();
    });
    log
}

/// A running `host` master (with its workers).
pub struct Host {
    child: Child,
    log: Arc<Log>,
    /// What the master printed on stdout (the start banner).
    stdout: Arc<Log>,
    exit: Option<ExitStatus>,
    /// The master's working and runtime directory (plugin snapshots); removed after the kill.
    dir: TempDir,
}

impl Host {
    /// Runs `host ARGS…` without waiting for anything. It runs in a temp dir of its own, which is
    /// also its runtime dir (`XDG_RUNTIME_DIR`: plugin snapshots), with `RUST_LOG` unset.
    pub fn spawn<I, S>(args: I) -> Host
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Host::spawn_with(args, |_| {})
    }

    /// [`Host::spawn`] with more environment variables.
    pub fn spawn_with_env<I, S>(args: I, env: &[(&str, &std::ffi::OsStr)]) -> Host
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let env: Vec<(String, std::ffi::OsString)> =
            env.iter().map(|(k, v)| (k.to_string(), v.to_os_string())).collect();
        Host::spawn_with(args, move |cmd| {
            cmd.envs(env);
        })
    }

    /// [`Host::spawn`], with `configure` applied to the command first (e.g. another environment).
    pub fn spawn_with<I, S>(args: I, configure: impl FnOnce(&mut Command)) -> Host
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let dir = TempDir::new();
        let mut cmd = host_command(&dir);
        configure(&mut cmd);
        let mut args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
        args.extend(io_args(&args));
        cmd.args(&args);
        // A test fixture named as a plugin is found where the harness built it (not beside the
        // host), the workspace's plugins where they always are.
        let names_fixture =
            args.windows(2).any(|w| w[0] == "--plugin" && w[1].to_string_lossy().starts_with("fixture_"));
        let chooses_dirs = args.iter().any(|a| a == "--plugin-dir" || a == "-c" || a == "--config");
        if names_fixture && !chooses_dirs {
            cmd.arg("--plugin-dir").arg(crate::fixtures_dir()).arg("--plugin-dir").arg(crate::target_dir());
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: Drop kills the master and every worker with one killpg.
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("could not run the host: {e}"));
        let log = capture(child.stderr.take().expect("piped stderr"));
        let stdout = capture(child.stdout.take().expect("piped stdout"));
        Host { child, log, stdout, exit: None, dir }
    }

    /// What the master printed on stdout so far (the start banner).
    pub fn stdout(&self) -> &Log {
        &self.stdout
    }

    /// Runs `host --plugin PLUGIN --listen 127.0.0.1:0 EXTRA…` and waits until it is ready.
    pub fn start(plugin: &str, extra: &[&str]) -> Host {
        let mut args = vec!["--plugin", plugin, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let host = Host::spawn(&args);
        if let Err(e) = host.log.wait_for("host ready", READY_TIMEOUT) {
            panic!("host {args:?} did not get ready: {e}");
        }
        host
    }

    /// The master's working directory (removed when the host is dropped).
    pub fn dir(&self) -> &TempDir {
        &self.dir
    }

    /// Its pid file: the default one, in `XDG_RUNTIME_DIR/host/` (the harness sets
    /// `XDG_RUNTIME_DIR` to the host's directory), once the master wrote it.
    pub fn pid_file(&self) -> std::path::PathBuf {
        default_pid_file(self.dir.path())
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The captured log so far.
    pub fn log_text(&self) -> String {
        self.log.text()
    }

    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> Result<String, String> {
        self.log.wait_for(pattern, timeout)
    }

    /// The port the master listens on, from its `listening … address=127.0.0.1:PORT` line.
    pub fn port(&self) -> u16 {
        let line = self.log.wait_for("listening", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        line.split_whitespace()
            .find_map(|f| f.strip_prefix("address="))
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no address=IP:PORT in {line:?}"))
    }

    /// The master's live worker processes (its children titled `host: worker …`), sorted.
    pub fn worker_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = children(self.pid())
            .into_iter()
            .filter(|&p| is_alive(p) && cmdline(p).is_some_and(|c| c.starts_with("host: worker")))
            .collect();
        pids.sort_unstable();
        pids
    }

    /// Waits until exactly `n` workers run and `ok` accepts their pids; returns them.
    pub fn wait_workers(&self, n: usize, timeout: Duration, ok: impl Fn(&[i32]) -> bool) -> Result<Vec<i32>, String> {
        let mut last = Vec::new();
        poll_until(timeout, || {
            last = self.worker_pids();
            (last.len() == n && ok(&last)).then(|| last.clone())
        })
        .ok_or_else(|| format!("wanted {n} workers in {timeout:?}, last saw {last:?}"))
    }

    /// Runs the control command `host ARGS…` (`stop`, `reload -g`, `status`…) in the master's
    /// directory, so that the default pid file (`./host.pid`) is this master's, and returns what
    /// it did. Meanwhile the master is reaped if it exits: the master is this process's child,
    /// and until it is reaped it is a zombie that a command waiting for it to be gone still sees.
    pub fn command<I, S>(&mut self, args: I, timeout: Duration) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
        let dir = self.dir.path().to_path_buf();
        std::thread::scope(|scope| {
            let command = scope.spawn(|| run_host_in(&dir, &args, timeout));
            while !command.is_finished() {
                if self.exit.is_none() {
                    self.exit = self.child.try_wait().ok().flatten();
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            command.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Sends `sig` to the master (by pid).
    pub fn signal(&self, sig: Signal) {
        if self.exit.is_none() {
            kill(Pid::from_raw(self.pid()), sig).unwrap_or_else(|e| panic!("could not send {sig} to the master: {e}"));
        }
    }

    /// Waits up to `timeout` for the master to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            let child = &mut self.child;
            self.exit = poll_until(timeout, || child.try_wait().ok().flatten());
        }
        self.exit
    }

    /// Waits for the master to exit and every process it started (its process group) to be gone.
    /// Returns the master's exit status, or Err with what is still there.
    pub fn wait_all_gone(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let start = Instant::now();
        let status = self.wait_exit(timeout).ok_or_else(|| format!("the master did not exit within {timeout:?}"))?;
        let pgid = self.pid();
        let left = timeout.saturating_sub(start.elapsed());
        poll_until(left, || group_pids(pgid).is_empty().then_some(())).ok_or_else(|| {
            format!(
                "processes left in the host's process group: {:?}",
                group_pids(pgid)
                    .into_iter()
                    .map(|p| format!("{p} {:?}", cmdline(p).unwrap_or_default()))
                    .collect::<Vec<_>>()
            )
        })?;
        Ok(status)
    }

    /// Waits for the master to exit and returns its status and whole stderr.
    pub fn finish(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let status = self.wait_exit(timeout).unwrap_or_else(|| panic!("host did not exit within {timeout:?}"));
        // The log closes once the master and any worker still holding stderr are gone.
        let _ = poll_until(Duration::from_secs(2), || self.log.state.lock().unwrap().closed.then_some(()));
        (status, self.log.text())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let pgid = self.pid();
        // Read before the kill: the master's children are listed only while it lives.
        let mut pids = self.worker_pids();
        if self.exit.is_none() {
            // The master is our unreaped child, so its pid (its group's id) is still ours.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // Anything that outlived the master or left its group, by pid, if it is a host process.
        pids.extend(group_pids(pgid));
        for pid in pids {
            if cmdline(pid).is_some_and(|c| c.starts_with("host")) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if std::thread::panicking() {
            let how = match self.exit {
                Some(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => format!("exited with code {c}"),
                    (_, Some(sig)) => format!("killed by signal {sig}"),
                    _ => format!("{s}"),
                },
                None => "killed by the harness".to_string(),
            };
            eprintln!("\n---- host (pid {pgid}, {how}) log ----\n{}---- end of host log ----\n", self.log.text());
        }
    }
}

/// The default pid file of the host run in `dir` (its `XDG_RUNTIME_DIR`): the one `*.pid` in
/// `dir/host/` (each start names its own, after its config file or its first service).
pub fn default_pid_file(dir: &Path) -> std::path::PathBuf {
    let runtime = dir.join("host");
    let found: Vec<std::path::PathBuf> = std::fs::read_dir(&runtime)
        .map(|entries| {
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "pid")).collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => one.clone(),
        [] => panic!("no pid file in {}", runtime.display()),
        several => panic!("several pid files in {}: {several:?}", runtime.display()),
    }
}

/// `--io BACKEND` when `HOST_TEST_IO` names one (`uring`, `epoll`) and `args` start a host (no
/// subcommand, or `start`) that does not choose its own: so the whole suite runs on either of
/// the worker's I/O backends (`HOST_TEST_IO=uring cargo test -p host-tests --test integration`).
pub fn io_args<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Vec<OsString> {
    let Some(io) = std::env::var_os("HOST_TEST_IO").filter(|v| !v.is_empty()) else {
        return Vec::new();
    };
    let starts = args.first().is_none_or(|a| {
        let a = a.as_ref().to_string_lossy();
        a.starts_with('-') || a == "start"
    });
    if !starts || args.iter().any(|a| a.as_ref() == "--io") {
        return Vec::new();
    }
    vec!["--io".into(), io]
}

/// `host`, freshly built, to run in `dir` (working and runtime directory), with `RUST_LOG` unset.
fn host_command(dir: &TempDir) -> Command {
    host_command_in(dir.path())
}

/// `host`, freshly built, to run in `dir` (working and runtime directory), with `RUST_LOG` unset.
pub fn host_command_in(dir: &Path) -> Command {
    let mut cmd = Command::new(crate::host_bin());
    cmd.current_dir(dir).env("XDG_RUNTIME_DIR", dir).env_remove("RUST_LOG");
    cmd
}

/// What a short-lived `host` command (like `check-plugin`) did.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `host ARGS…` to completion, killing it (and failing the test) after `timeout`.
pub fn run_host<I, S>(args: I, timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let dir = TempDir::new();
    run_host_in(dir.path(), args, timeout)
}

/// Runs `host ARGS…` to completion in `dir` (its working and runtime directory: `./host.pid` is
/// `dir/host.pid`), killing it (and failing the test) after `timeout`.
pub fn run_host_in<I, S>(dir: &Path, args: I, timeout: Duration) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let child = host_command_in(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("could not run the host: {e}"));
    wait_output(child, timeout)
}

/// Waits for `child` (started in a process group of its own, stdout and stderr piped) to exit
/// and reads its output, killing its group (and failing the test) after `timeout`.
pub fn wait_output(mut child: std::process::Child, timeout: Duration) -> Output {
    let read_all = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let Some(status) = poll_until(timeout, || child.try_wait().ok().flatten()) else {
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        panic!("host did not exit within {timeout:?}");
    };
    Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}
