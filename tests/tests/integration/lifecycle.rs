//! The master's lifecycle and its control: reload (plain and graceful), stop, status, the pid
//! file, daemon mode, config files, the crash-loop back-off, logging, users, restart.
//!
//! Control commands run in the master's directory ([`Host::command`]), so the default pid file
//! (`./host.pid`) is that master's. Daemons are not children of the test: [`Daemon`] finds them
//! through their pid file and kills them (and their workers) by pid if a test fails.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_tests::{
    assert_contains, children, cmdline, get, host_command_in, is_alive, poll_until, run_host, run_host_in, signal_pid,
    Client, Host, Output, Signal, TempDir, READY_TIMEOUT,
};

/// How long a control command may take (`stop -g` waits up to the drain deadline, 5 s).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// The master's drain deadline.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const EXIT_TIMEOUT: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------------------
// Helpers

/// Asserts that a command succeeded, printing what it said when not.
#[track_caller]
fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "`host {what}` failed: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
}

/// Asserts that a command failed, printing what it said when not.
#[track_caller]
fn assert_failed(out: &Output, what: &str) {
    assert!(!out.status.success(), "`host {what}` should fail\nstdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
}

/// One `GET /` on a new connection (`Connection: close`): Ok with the status code, or Err with
/// what went wrong. Never panics, so a probe thread can count failures.
fn try_get(port: u16) -> Result<u16, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).map_err(|e| format!("read: {e} after {:?}", String::from_utf8_lossy(&got)))?;
    let text = String::from_utf8_lossy(&got);
    text.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| format!("no response: {text:?}"))
}

#[track_caller]
fn hello(port: u16) {
    assert_eq!(try_get(port), Ok(200), "GET / on port {port}");
}

/// Sends a line to a text-like service and expects it back.
#[track_caller]
fn echo(port: u16, line: &str) {
    let mut c = Client::connect(port);
    c.send(format!("{line}\n").as_bytes());
    let back = c.read_line().unwrap_or_else(|e| panic!("no echo from port {port}: {e}"));
    assert_eq!(String::from_utf8_lossy(&back), format!("{line}\n"));
}

/// The port in a `listening … address=IP:PORT` log line.
fn address_port(line: &str) -> Option<u16> {
    line.split_whitespace().find_map(|f| f.strip_prefix("address=")).and_then(|a| a.rsplit(':').next()?.parse().ok())
}

/// The port service `name` listens on, from the host's log.
fn service_port(host: &Host, name: &str) -> u16 {
    let line = host
        .log()
        .wait_for_all(&["listening", &format!("service={name} ")], READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    address_port(&line).unwrap_or_else(|| panic!("no address= in {line:?}"))
}

/// A port that was free a moment ago (for a test that must name the same port twice).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The rows of the worker table of a `status` rendering: `SERVICE #SLOT PID … STATE`, split on
/// whitespace (the PLUGIN cell `http 0.1.0` is two fields).
fn worker_rows(table: &str) -> Vec<Vec<&str>> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 3 && f[1].starts_with('#') && f[2].parse::<i32>().is_ok())
        .collect()
}

/// The pids of the worker rows of a `status` rendering, sorted.
fn row_pids(table: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = worker_rows(table).iter().map(|r| r[2].parse().unwrap()).collect();
    pids.sort_unstable();
    pids
}

/// Fields of `/proc/PID/stat` after the command name.
#[derive(Debug, Clone, Copy)]
struct Stat {
    ppid: i32,
    pgrp: i32,
    session: i32,
    tty_nr: i64,
}

fn stat(pid: &str) -> Stat {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // `pid (comm) state ppid pgrp session tty_nr …`
    let f: Vec<&str> = text[text.rfind(')').unwrap() + 1..].split_whitespace().collect();
    Stat {
        ppid: f[1].parse().unwrap(),
        pgrp: f[2].parse().unwrap(),
        session: f[3].parse().unwrap(),
        tty_nr: f[4].parse().unwrap(),
    }
}

/// A line of `/proc/PID/status` (`Uid`, `Umask`…), without its name.
fn proc_status(pid: &str, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Waits until `pid` is gone (or a zombie).
fn wait_gone(pid: i32, timeout: Duration) -> bool {
    poll_until(timeout, || (!is_alive(pid)).then_some(())).is_some()
}

/// A child process of the test (not a host), killed by pid on drop.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A daemonized master, found through its pid file. On drop (a test that failed half-way, or
/// one that already stopped it) SIGKILLs every master it saw and their workers, by pid, each
/// only if it still is a `host` process.
struct Daemon {
    pid_file: PathBuf,
    seen: Mutex<Vec<i32>>,
}

impl Daemon {
    fn new(pid_file: PathBuf) -> Daemon {
        Daemon { pid_file, seen: Mutex::new(Vec::new()) }
    }

    /// The pid in the pid file (remembered for the clean-up).
    fn pid(&self) -> i32 {
        let text = std::fs::read_to_string(&self.pid_file)
            .unwrap_or_else(|e| panic!("no pid file {}: {e}", self.pid_file.display()));
        let pid: i32 = text.trim().parse().unwrap_or_else(|_| panic!("bad pid file: {text:?}"));
        self.seen.lock().unwrap().push(pid);
        pid
    }

    fn workers(pid: i32) -> Vec<i32> {
        children(pid).into_iter().filter(|&p| cmdline(p).is_some_and(|c| c.starts_with("host: worker"))).collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let mut masters = self.seen.lock().unwrap().clone();
        if let Some(pid) = std::fs::read_to_string(&self.pid_file).ok().and_then(|t| t.trim().parse().ok()) {
            masters.push(pid);
        }
        for master in masters {
            if !cmdline(master).is_some_and(|c| c.starts_with("host: master")) {
                continue;
            }
            let workers = Daemon::workers(master);
            eprintln!("note: killing daemon master {master} and workers {workers:?}");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(master), Signal::SIGKILL);
            for w in workers {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(w), Signal::SIGKILL);
            }
        }
    }
}

/// Processes whose command line contains `needle` (e.g. a test's unique pid file path).
fn processes_with_arg(needle: &str) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p as u32 != std::process::id() && is_alive(p))
        .filter_map(|p| cmdline(p).filter(|c| c.contains(needle)).map(|c| (p, c)))
        .collect()
}

/// A keep-alive HTTP connection read byte for byte, which tells an orderly close (EOF) from a
/// reset, as a drained connection must end with EOF.
struct KeepAlive {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    fn connect(port: u16) -> KeepAlive {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        KeepAlive { stream, buf: Vec::new() }
    }

    /// Sends `GET /` and reads the response (by its Content-Length); returns its head.
    fn get(&mut self) -> String {
        self.stream.write_all(&get("/")).unwrap();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
                if self.buf.len() >= end + 4 + len {
                    self.buf.drain(..end + 4 + len);
                    return head;
                }
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("EOF before a whole response: {:?}", String::from_utf8_lossy(&self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("no response: {e}; got {:?}", String::from_utf8_lossy(&self.buf)),
            }
        }
    }

    /// Expects an orderly close (EOF, not a reset) with nothing more before it.
    fn expect_eof(&mut self) {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => assert!(self.buf.is_empty(), "bytes before EOF: {:?}", String::from_utf8_lossy(&self.buf)),
            Ok(n) => panic!("bytes instead of EOF: {:?}", String::from_utf8_lossy(&chunk[..n])),
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                panic!("the connection is still open")
            }
            Err(e) => panic!("the connection ended with an error, not EOF: {e}"),
        }
    }
}

/// Requests `GET /` on new connections in a loop until stopped; counts answers and failures.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Probe {
    fn start(port: u16) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failures) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                match try_get(port) {
                    Ok(200) => ok += 1,
                    Ok(code) => failures.push(format!("status {code}")),
                    Err(e) => failures.push(e),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (ok, failures)
        });
        Probe { stop, thread: Some(thread) }
    }

    /// Stops the probe: (answered, failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// 1-2. Reload

// SIGUSR1 and `host reload` replace every worker (same count, no pid kept), the master stays,
// and the service answers after each reload.
#[test]
fn reload_replaces_every_worker_while_serving() {
    let mut host = Host::start("http", &["--count", "2"]);
    let port = host.port();
    let master = host.pid();
    let mut workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let probe = Probe::start(port);
    for (round, how) in ["SIGUSR1", "host reload"].into_iter().enumerate() {
        if how == "SIGUSR1" {
            host.signal(Signal::SIGUSR1);
        } else {
            let out = host.command(["reload"], COMMAND_TIMEOUT);
            assert_ok(&out, "reload");
            assert_contains!(out.stdout, "reload done", "{how}");
        }
        host.log().wait_for_nth("reload done", round + 1, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
        let old = workers.clone();
        workers = host
            .wait_workers(2, Duration::from_secs(5), |pids| pids.iter().all(|p| !old.contains(p)))
            .unwrap_or_else(|e| panic!("{how}: workers not all replaced ({old:?} before): {e}"));
        for pid in &old {
            assert!(wait_gone(*pid, Duration::from_secs(3)), "{how}: old worker {pid} still runs");
        }
        assert!(is_alive(master) && host.wait_exit(Duration::ZERO).is_none(), "{how}: the master is gone");
    }
    // A plain reload stops the old workers at once: a request that one of them had accepted
    // and not answered yet may fail (that is what `reload -g` is for, tested below). So this
    // only asserts that the service answered, and answers after each reload.
    let (answered, _failures) = probe.finish();
    assert!(answered > 0, "the probe never got an answer");
    let r = host_tests::Client::connect(port).request(&host_tests::get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    let out = host.command(["status"], COMMAND_TIMEOUT);
    assert_contains!(out.stdout, format!("master pid {master} "));
    assert_eq!(row_pids(&out.stdout), workers, "{}", out.stdout);
}

// SIGHUP, SIGQUIT and `host reload -g` drain the old worker: a keep-alive connection that was
// answered before gets its next response with `Connection: close`, then EOF (not a reset); the
// old worker exits and a new one serves.
#[test]
fn graceful_reload_drains_keep_alive_connections() {
    let mut host = Host::start("http", &[]);
    let port = host.port();
    for (round, how) in ["SIGHUP", "SIGQUIT", "host reload -g"].into_iter().enumerate() {
        let old = host.wait_workers(1, Duration::from_secs(5), |_| true).unwrap()[0];
        let mut conn = KeepAlive::connect(port);
        let head = conn.get();
        assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
        match how {
            "SIGHUP" => host.signal(Signal::SIGHUP),
            "SIGQUIT" => host.signal(Signal::SIGQUIT),
            _ => {
                let out = host.command(["reload", "-g"], COMMAND_TIMEOUT);
                assert_ok(&out, "reload -g");
                assert_contains!(out.stdout, "reload done");
            }
        }
        host.log()
            .wait_for_all(&["draining", &format!("pid={old}}}")], Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{how}: the old worker {old} did not drain: {e}"));
        let head = conn.get();
        assert_contains!(head.to_ascii_lowercase(), "connection: close", "{how}");
        conn.expect_eof();
        assert!(
            wait_gone(old, Duration::from_secs(5)),
            "{how}: old worker {old} did not exit after its last connection"
        );
        host.log().wait_for_nth("reload done", round + 1, Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
        let new = host.wait_workers(1, Duration::from_secs(2), |p| p[0] != old).unwrap();
        assert!(!new.contains(&old));
        hello(port);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Stop

// `host stop`: exit 0, "host stopped", the master and every worker gone, pid file and control
// socket removed; a second `stop` says nothing runs.
#[test]
fn stop_command_stops_everything_and_cleans_up() {
    let mut host = Host::start("http", &["--count", "2"]);
    let workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let (pid_file, sock) = (host.dir().join("host.pid"), host.dir().join("host.sock"));
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), host.pid().to_string());
    assert!(sock.exists(), "no control socket at {}", sock.display());
    let out = host.command(["stop"], COMMAND_TIMEOUT);
    assert_ok(&out, "stop");
    assert_contains!(out.stdout, format!("host stopped (master pid {})", host.pid()));
    let status = host.wait_all_gone(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0));
    for pid in workers {
        assert!(wait_gone(pid, Duration::from_secs(2)), "worker {pid} outlived the master");
    }
    assert!(!pid_file.exists(), "the pid file is left");
    assert!(!sock.exists(), "the control socket is left");
    let again = host.command(["stop"], COMMAND_TIMEOUT);
    assert_failed(&again, "stop");
    assert_contains!(again.stderr, "not running");
}

// `host stop -g` with an idle keep-alive connection: the server closes it at the drain deadline
// (5 s), not at the idle timeout (60 s), and the command returns then.
#[test]
fn graceful_stop_command_ends_by_the_drain_deadline() {
    // A plugin dir of its own: no other test's `.so` written to target/debug (the default plugin
    // dir) reaches this master while it stops (see stopping_master_does_not_spin_…).
    let plugins = TempDir::new();
    std::fs::copy(host_tests::plugin_file("http"), plugins.join("http.so")).unwrap();
    let mut host = Host::start("http", &["--plugin-dir", &plugins.path().display().to_string()]);
    let mut c = Client::connect(host.port());
    assert_eq!(c.request(&get("/")).status, 200);
    let started = Instant::now();
    let out = host.command(["stop", "-g"], COMMAND_TIMEOUT);
    let took = started.elapsed();
    assert_ok(&out, "stop -g");
    assert_contains!(out.stdout, "host stopped");
    // 5.0 s on a quiet machine; the margin is for a loaded one (seen: 9 s with the tests of the
    // whole workspace running twice at once). What it rules out is a wait for the idle timeout.
    assert!(took < DRAIN_TIMEOUT + Duration::from_secs(5), "stop -g took {took:?}");
    c.wait_closed(Duration::from_secs(1)).expect("the idle connection is closed by then");
    let status = host.wait_all_gone(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0));
}

// --drain-timeout reaches the draining workers (and `stop -g` waits for that deadline, not 5 s).
#[test]
fn drain_timeout_flag_sets_the_workers_deadline() {
    let plugins = TempDir::new();
    std::fs::copy(host_tests::plugin_file("http"), plugins.join("http.so")).unwrap();
    let plugin_dir = plugins.path().display().to_string();
    let mut host = Host::start("http", &["--plugin-dir", &plugin_dir, "--drain-timeout", "0.5"]);
    let mut c = Client::connect(host.port());
    assert_eq!(c.request(&get("/")).status, 200);
    let out = host.command(["stop", "-g"], COMMAND_TIMEOUT);
    assert_ok(&out, "stop -g");
    assert_contains!(host.log_text(), "timeout_ms=500");
    c.wait_closed(Duration::from_secs(1)).expect("the idle connection is closed at the deadline");
    let status = host.wait_all_gone(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0));
}

// BUG: `host stop` waits until the master's pid is no longer a live process, but counts a
// zombie as live (pidfile::is_host_master: kill(pid, 0) and /proc/PID/comm both succeed for a
// zombie). A master whose parent does not reap it at once (here: the test process; in a
// container: a pid 1 that reaps every 2 s) makes `stop` wait long after the master exited, and
// fail with "still running after 7 s" if it is never reaped.
#[test]
fn stop_returns_once_the_master_exited_even_if_not_yet_reaped() {
    let mut host = Host::start("http", &[]);
    let started = Instant::now();
    // Not host.command(): nobody reaps the master while `stop` runs.
    let out = run_host_in(host.dir().path(), ["stop"], COMMAND_TIMEOUT);
    let took = started.elapsed();
    let status = host.wait_all_gone(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0));
    assert_ok(&out, "stop");
    assert!(took < Duration::from_secs(2), "stop took {took:?} for a master that exited at once");
}

/// CPU time (user + system) `pid` has used, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = text[text.rfind(')').unwrap() + 1..].split_whitespace().collect();
    // Fields 14 and 15 (utime, stime), counted from `pid` as field 1.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

// BUG: a file event in a plugin directory while the master stops (here: draining an idle
// connection for 5 s) makes the master busy-loop until it exits. The watcher's debounce
// deadline is part of the poll timeout (master/mod.rs `next_deadline`), but once stopping,
// `run_deadlines` returns before it calls `watcher.due()`, so the deadline stays in the past and
// every poll returns at once. On a build machine, every host that watches `target/debug` spins
// while it stops each time cargo writes a `.so` there.
#[test]
fn stopping_master_does_not_spin_after_a_plugin_file_event() {
    let plugins = TempDir::new();
    std::fs::copy(host_tests::plugin_file("http"), plugins.join("http.so")).unwrap();
    let dir_arg = plugins.path().display().to_string();
    let mut host = Host::start("http", &["--plugin-dir", &dir_arg]);
    let mut c = Client::connect(host.port());
    assert_eq!(c.request(&get("/")).status, 200);
    // The idle connection keeps the worker draining, and the master stopping, for 5 s.
    host.signal(Signal::SIGTERM);
    host.wait_for_log("draining", Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"));
    plugins.write("other.so", "not a plugin");
    // Past the watcher's quiet time (300 ms), then one second measured.
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_ticks(host.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(host.pid()) - before;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    assert!(used * 10 < hz, "the stopping master used {used} of {hz} clock ticks in one second");
    host.wait_all_gone(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------------
// 4-5. Status and connections

// `host status`: the master's pid, the service row, one `ready` row per worker, whose pids are
// the master's children.
#[test]
fn status_shows_the_service_and_every_worker() {
    let mut host = Host::start("http", &["--count", "3"]);
    let port = host.port();
    let workers = host.wait_workers(3, Duration::from_secs(2), |_| true).unwrap();
    let out = host.command(["status"], COMMAND_TIMEOUT);
    assert_ok(&out, "status");
    let text = &out.stdout;
    assert_contains!(text, format!("master pid {} ", host.pid()));
    let service = text.lines().find(|l| l.starts_with("http ") && !l.contains('#')).unwrap_or_else(|| panic!("{text}"));
    let cells: Vec<&str> = service.split_whitespace().collect();
    assert_eq!(cells, ["http", &format!("127.0.0.1:{port}"), "http", env!("CARGO_PKG_VERSION"), "3", "true"], "{text}");
    let rows = worker_rows(text);
    assert_eq!(rows.len(), 3, "{text}");
    for (slot, row) in rows.iter().enumerate() {
        assert_eq!((row[0], row[1]), ("http", format!("#{slot}").as_str()), "{text}");
        assert_eq!(row.last(), Some(&"ready"), "{text}");
    }
    assert_eq!(row_pids(text), workers, "{text}");
}

// `host status --live` prints the table again and again (read two refreshes, then kill it).
#[test]
fn status_live_refreshes_the_table() {
    let host = Host::start("http", &["--count", "2"]);
    let workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let mut child = host_command_in(host.dir().path())
        .args(["status", "--live"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let live = Guarded(child);
    let seen = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    const CLEAR: &str = "\x1b[H\x1b[2J";
    // Two whole tables: the second refresh holds every worker's row.
    let complete = |text: &str| text.split(CLEAR).nth(2).is_some_and(|t| row_pids(t) == workers);
    let got = poll_until(Duration::from_secs(6), || {
        let text = seen.lock().unwrap().clone();
        complete(&text).then_some(text)
    });
    drop(live);
    let text = got.unwrap_or_else(|| panic!("no second refresh in 6 s; got {:?}", seen.lock().unwrap()));
    for table in text.split(CLEAR).skip(1).take(2) {
        assert_contains!(table, format!("master pid {} ", host.pid()));
        assert_eq!(row_pids(table), workers, "{table}");
    }
}

// `host connections` lists each open connection with the client's address.
#[test]
fn connections_lists_open_connections() {
    let mut host = Host::start("http", &["--count", "2"]);
    let port = host.port();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = KeepAlive::connect(port);
        c.get(); // accepted and answered: the worker has it
        clients.push(c);
    }
    let out = host.command(["connections"], COMMAND_TIMEOUT);
    assert_ok(&out, "connections");
    let text = &out.stdout;
    assert_contains!(text, "REMOTE");
    assert_contains!(text, "2 connections");
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    let remote = header.iter().position(|&h| h == "REMOTE").unwrap();
    let workers = host.worker_pids();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > remote && f[0].parse::<i32>().is_ok())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for c in &clients {
        let me = c.stream.local_addr().unwrap().to_string();
        let row = rows.iter().find(|r| r[remote] == me).unwrap_or_else(|| panic!("no row for {me}:\n{text}"));
        assert!(workers.contains(&row[0].parse().unwrap()), "{text}");
        assert_eq!(row[1], "http", "{text}");
    }
}

// SIGUSR2 writes the status table into the log, SIGIO the connections table.
#[test]
fn sigusr2_and_sigio_log_the_tables() {
    let host = Host::start("http", &["--count", "2"]);
    let workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let mut c = KeepAlive::connect(host.port());
    c.get();
    host.signal(Signal::SIGUSR2);
    let logged = poll_until(Duration::from_secs(5), || {
        let text = host.log_text();
        let table = &text[text.find("master pid")?..];
        (table.contains("SEND_FAIL") && row_pids(table) == workers).then(|| table.to_string())
    })
    .unwrap_or_else(|| panic!("no status table with workers {workers:?} in the log:\n{}", host.log_text()));
    assert_contains!(logged, format!("master pid {} ", host.pid()));
    host.signal(Signal::SIGIO);
    host.log().wait_for("1 connections", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
    let text = host.log_text();
    let table = &text[text.find("REMOTE").expect("the connections header")..];
    assert_contains!(table, c.stream.local_addr().unwrap().to_string());
}

// Many `status` commands at once: each gets a whole table of its own.
#[test]
fn concurrent_status_answers_never_mix() {
    let host = Host::start("http", &["--count", "2"]);
    let workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let dir = host.dir().path().to_path_buf();
    let master = host.pid();
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| (0..5).map(|_| run_host_in(&dir, ["status"], COMMAND_TIMEOUT)).collect::<Vec<Output>>())
            })
            .collect();
        for t in threads {
            for out in t.join().unwrap() {
                assert_ok(&out, "status");
                let text = &out.stdout;
                assert_eq!(text.matches("master pid").count(), 1, "{text}");
                assert_contains!(text, format!("master pid {master} "));
                assert_eq!(text.matches("SERVICE  LISTEN").count(), 1, "{text}");
                assert_eq!(text.matches("SERVICE  SLOT").count(), 1, "{text}");
                assert_eq!(row_pids(text), workers, "{text}");
                // `busy`: a worker that did not answer within 1 s (a loaded machine).
                let states = worker_rows(text).iter().map(|r| *r.last().unwrap()).collect::<Vec<_>>();
                assert!(states.iter().all(|&s| s == "ready" || s == "busy"), "{text}");
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 6. The pid file

// A second start with the same pid file is refused, naming the running master.
#[test]
fn second_start_is_refused_naming_the_running_master() {
    let host = Host::start("http", &[]);
    let out = run_host_in(host.dir().path(), ["start", "--plugin", "http", "--listen", "127.0.0.1:0"], COMMAND_TIMEOUT);
    assert_failed(&out, "start");
    assert_contains!(out.stderr, format!("already running (pid {}", host.pid()));
    assert_eq!(std::fs::read_to_string(host.dir().join("host.pid")).unwrap().trim(), host.pid().to_string());
    hello(host.port());
}

// A pid file naming a process that is gone is replaced.
#[test]
fn stale_pid_file_is_replaced() {
    let dir = TempDir::new();
    let mut gone = Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let pid_file = dir.write("h.pid", format!("{}\n", gone.id()));
    let pid_arg = pid_file.display().to_string();
    let mut host = Host::start("http", &["--pid-file", &pid_arg]);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), host.pid().to_string());
    host.wait_for_log("stale pid file", Duration::from_secs(1)).unwrap_or_else(|e| panic!("{e}"));
    let out = host.command(["status", "--pid-file", &pid_arg], COMMAND_TIMEOUT);
    assert_ok(&out, "status");
    assert_contains!(out.stdout, format!("master pid {} ", host.pid()));
}

// A pid file naming a live process that is not a host master is stale too, and that process
// is left alone.
#[test]
fn pid_file_naming_another_program_is_stale() {
    let dir = TempDir::new();
    let sleeper = Guarded(Command::new("sleep").arg("30").spawn().unwrap());
    let other = sleeper.0.id() as i32;
    let pid_file = dir.write("h.pid", format!("{other}\n"));
    let pid_arg = pid_file.display().to_string();
    let host = Host::start("http", &["--pid-file", &pid_arg]);
    assert_eq!(std::fs::read_to_string(&pid_file).unwrap().trim(), host.pid().to_string());
    assert!(is_alive(other), "the process named by the stale pid file was harmed");
    hello(host.port());
}

// ---------------------------------------------------------------------------------------------
// 7. Daemon mode

// `start -d` returns once ready; the master is detached (not our child, no terminal, a session
// of its own without being its leader, cwd `/`, our umask), logs to the log file, serves, and
// `host stop` with the same pid file stops it and removes the file.
#[test]
fn daemon_detaches_serves_and_stops() {
    let dir = TempDir::new();
    let (pid_file, log_file) = (dir.join("d.pid"), dir.join("d.log"));
    let daemon = Daemon::new(pid_file.clone());
    let pid_arg = pid_file.display().to_string();
    let log_arg = log_file.display().to_string();
    let started = Instant::now();
    let args = ["start", "-d", "--plugin", "http", "--count", "2", "--listen", "127.0.0.1:0"];
    let out = run_host_in(
        dir.path(),
        args.iter().copied().chain(["--pid-file", &pid_arg, "--log-file", &log_arg]),
        COMMAND_TIMEOUT,
    );
    assert_ok(&out, "start -d");
    assert!(started.elapsed() < READY_TIMEOUT, "start -d took {:?}", started.elapsed());
    let pid = daemon.pid();
    assert_contains!(out.stdout, format!("host started (master pid {pid}, logs in {log_arg})"));

    let me = stat("self");
    let st = stat(&pid.to_string());
    assert_ne!(st.ppid as u32, std::process::id(), "the daemon is the test's child");
    assert_eq!(st.tty_nr, 0, "the daemon has a controlling terminal");
    assert_ne!(st.session, me.session, "the daemon is in the test's session");
    assert_ne!(st.session, pid, "the daemon leads its session (it could acquire a terminal)");
    assert_eq!(st.pgrp, st.session, "setsid made the first child the leader of the group and the session");
    assert_eq!(std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(), Path::new("/"));
    assert_eq!(proc_status(&pid.to_string(), "Umask"), proc_status("self", "Umask"), "the umask changed");
    let workers = Daemon::workers(pid);
    assert_eq!(workers.len(), 2, "workers of {pid}: {workers:?}");
    for w in &workers {
        assert_eq!(stat(&w.to_string()).session, st.session);
    }

    let log = std::fs::read_to_string(&log_file).unwrap();
    assert_contains!(log, "host ready");
    let port = log.lines().find(|l| l.contains("listening")).and_then(address_port).unwrap_or_else(|| panic!("{log}"));
    hello(port);

    let out = run_host_in(dir.path(), ["stop", "--pid-file", &pid_arg], COMMAND_TIMEOUT);
    assert_ok(&out, "stop");
    assert_contains!(out.stdout, format!("host stopped (master pid {pid})"));
    assert!(!pid_file.exists(), "the pid file is left");
    assert!(wait_gone(pid, Duration::from_secs(5)), "the master is still there");
    for w in workers {
        assert!(wait_gone(w, Duration::from_secs(2)), "worker {w} is still there");
    }
    assert_contains!(std::fs::read_to_string(&log_file).unwrap(), "master exits");
}

// `start -d` on a port in use fails with the address in the message, and leaves nothing.
#[test]
fn daemon_start_on_a_port_in_use_fails() {
    let dir = TempDir::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let pid_file = dir.join("busy.pid");
    let _daemon = Daemon::new(pid_file.clone());
    let pid_arg = pid_file.display().to_string();
    let out = run_host_in(
        dir.path(),
        ["start", "-d", "--plugin", "http", "--listen", &addr, "--pid-file", &pid_arg],
        COMMAND_TIMEOUT,
    );
    assert_failed(&out, "start -d");
    assert_contains!(out.stderr, addr);
    assert!(!pid_file.exists(), "a pid file is left");
    let left = poll_until(Duration::from_secs(2), || processes_with_arg(&pid_arg).is_empty().then_some(()));
    assert!(left.is_some(), "processes left: {:?}", processes_with_arg(&pid_arg));
}

// ---------------------------------------------------------------------------------------------
// 8. Config files

const TWO_SERVICES: &str = r#"
[[service]]
name = "web"
plugin = "http"
listen = "127.0.0.1:0"
count = 2

[[service]]
name = "lines"
plugin = "text"
listen = "127.0.0.1:0"
"#;

// Two services from one file: both answer, `status` shows both, the titles name them.
#[test]
fn config_file_runs_two_services() {
    let cfg_dir = TempDir::new();
    let cfg = cfg_dir.write("two.toml", TWO_SERVICES).display().to_string();
    let mut host = Host::spawn(["-c", &cfg]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    hello(service_port(&host, "web"));
    echo(service_port(&host, "lines"), "hello lines");

    let workers = host.wait_workers(3, Duration::from_secs(2), |_| true).unwrap();
    let mut titles: Vec<String> = workers.iter().filter_map(|&p| cmdline(p)).collect();
    titles.sort();
    for (title, want) in
        titles.iter().zip(["host: worker lines #0 text ", "host: worker web #0 http ", "host: worker web #1 http "])
    {
        assert!(title.starts_with(want), "{title:?} should start with {want:?}");
    }
    assert!(cmdline(host.pid()).unwrap().starts_with("host: master (two.toml)"), "{:?}", cmdline(host.pid()));

    let out = host.command(["status", "-c", &cfg], COMMAND_TIMEOUT);
    assert_ok(&out, "status -c");
    let text = &out.stdout;
    for name in ["web", "lines"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} ")) && !l.contains('#')),
            "no {name} service row:\n{text}"
        );
    }
    let rows = worker_rows(text);
    let mut names: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    names.sort_unstable();
    assert_eq!(names, [("lines", "#0"), ("web", "#0"), ("web", "#1")], "{text}");
    assert_eq!(row_pids(text), workers, "{text}");
}

// A misspelt key: refused in one line that names the key and its line.
#[test]
fn config_file_typo_is_one_line_with_the_line_number() {
    let dir = TempDir::new();
    let cfg =
        dir.write("typo.toml", "[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0.0.1:0\"\ncuont = 2\n");
    let out = run_host([Path::new("-c"), &cfg], EXIT_TIMEOUT);
    assert_failed(&out, "-c typo.toml");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert_contains!(lines[0], "line 5");
    assert_contains!(lines[0], "cuont");
}

// A config file and service flags together: refused, saying why.
#[test]
fn config_file_with_service_flags_is_refused() {
    let dir = TempDir::new();
    let cfg = dir.write("two.toml", TWO_SERVICES).display().to_string();
    let out = run_host(["-c", &cfg, "--plugin", "http"], EXIT_TIMEOUT);
    assert_failed(&out, "-c … --plugin http");
    assert_contains!(out.stderr, "--plugin cannot be used with --config");
}

// BUG: global options written before the subcommand (`host -c FILE status`, `host --pid-file F
// stop`) are refused by clap: "the subcommand 'status' cannot be used with '--config <FILE>'".
// cli.rs: `args_conflicts_with_subcommands = true` on `Cli` makes every top-level argument,
// the global ones too, conflict with a subcommand.
#[test]
fn global_options_before_the_subcommand_are_accepted() {
    let cfg_dir = TempDir::new();
    let cfg = cfg_dir.write("two.toml", TWO_SERVICES).display().to_string();
    let mut host = Host::spawn(["-c", &cfg]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let out = host.command(["-c", &cfg, "status"], COMMAND_TIMEOUT);
    assert_ok(&out, "-c FILE status");
    let pid_file = host.dir().join("host.pid").display().to_string();
    let out = host.command(["--pid-file", &pid_file, "stop"], COMMAND_TIMEOUT);
    assert_ok(&out, "--pid-file F stop");
}

// ---------------------------------------------------------------------------------------------
// 9. Crash loop

/// Seconds since midnight of a log line's timestamp (`2026-01-01T12:34:56.789012Z …`).
fn log_seconds(line: &str) -> f64 {
    let time = line.split('T').nth(1).and_then(|t| t.split('Z').next()).unwrap_or_else(|| panic!("{line:?}"));
    let parts: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

// A slot whose worker exits at start is restarted with exponential back-off (not in a fork
// loop), the master says so and lives on, and the slot serves again once the cause is gone.
#[test]
fn crash_loop_backs_off_and_recovers() {
    let dir = TempDir::new();
    let trigger = dir.join("crash");
    let config = format!("crash_if_exists = \"{}\"", trigger.display());
    let host = Host::start("fixture_crash", &["--plugin-config", &config]);
    let port = host.port();
    echo(port, "before");
    let victim = host.wait_workers(1, Duration::from_secs(2), |_| true).unwrap()[0];
    let started_before = host.log().count("worker started");
    let ready_before = host.log().count("start_ms=");
    std::fs::write(&trigger, "").unwrap();
    signal_pid(victim, Signal::SIGKILL);
    // The measurement window: restarts are counted over it.
    let window = Duration::from_secs(5);
    std::thread::sleep(window);
    let text = host.log_text();
    let starts: Vec<&str> = text.lines().filter(|l| l.contains("worker started")).skip(started_before).collect();
    // Delays 0, 100, 200, 400, 800, 1600 ms (then 3.2 s): about 6 starts in 5 s.
    assert!((3..=15).contains(&starts.len()), "{} restarts in {window:?}:\n{text}", starts.len());
    assert_contains!(text, "keeps dying");
    assert!(text.contains("exit code 3"), "the crashes are logged with their exit code:\n{text}");
    let times: Vec<f64> = starts.iter().map(|l| log_seconds(l)).collect();
    let gaps: Vec<f64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("note: {} starts in {window:?}, {gaps:.2?} s apart", starts.len());
    assert!(gaps.last().is_some_and(|&g| g >= 0.7), "the restarts do not back off: gaps {gaps:?} s");
    assert!(is_alive(host.pid()), "the master died");

    std::fs::remove_file(&trigger).unwrap();
    host.log()
        .wait_for_nth("start_ms=", ready_before + 1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("the slot did not recover: {e}"));
    echo(port, "after");
    assert!(is_alive(host.pid()), "the master died");
}

// ---------------------------------------------------------------------------------------------
// 10. Logging

/// The JSON objects of a log; panics on a line that is not one.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) if v.is_object() => v,
            _ => panic!("not a JSON object: {l:?}\nwhole log:\n{log}"),
        })
        .collect()
}

// BUG: `--log-format json` (and `--log-level`) are the master's only: workers are started as
// `host worker` without them (master/spawn.rs spawn_worker), so they log text at `info`.
#[test]
fn json_log_lines_are_json_and_carry_the_worker_span() {
    let mut host = Host::start("http", &["--log-format", "json"]);
    let worker = host.wait_workers(1, Duration::from_secs(2), |_| true).unwrap()[0];
    host.signal(Signal::SIGINT);
    let (status, log) = host.finish(EXIT_TIMEOUT);
    assert!(status.success(), "{status}");
    let lines = json_lines(&log);
    let ready = lines
        .iter()
        .find(|v| v["target"] == "host::worker" && v["fields"]["message"] == "worker ready")
        .unwrap_or_else(|| panic!("no worker ready line from the worker:\n{log}"));
    let span = &ready["span"];
    assert_eq!(span["name"], "worker", "{ready}");
    assert_eq!(span["service"], "http", "{ready}");
    assert_eq!(span["slot"], 0, "{ready}");
    assert_eq!(span["pid"], worker, "{ready}");
    assert!(ready["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "worker")), "{ready}");
}

// The master's own lines under `--log-format json` are JSON objects with stable fields.
#[test]
fn json_log_lines_of_the_master_are_json() {
    let mut host = Host::start("http", &["--log-format", "json"]);
    let worker = host.wait_workers(1, Duration::from_secs(2), |_| true).unwrap()[0];
    host.signal(Signal::SIGINT);
    let (status, log) = host.finish(EXIT_TIMEOUT);
    assert!(status.success(), "{status}");
    let master_lines: String = log.lines().filter(|l| !l.contains("worker{")).map(|l| format!("{l}\n")).collect();
    let lines = json_lines(&master_lines);
    let started = lines
        .iter()
        .find(|v| v["fields"]["message"] == "worker started")
        .unwrap_or_else(|| panic!("no worker started line:\n{log}"));
    assert_eq!(started["fields"]["service"], "http", "{started}");
    assert_eq!(started["fields"]["slot"], 0, "{started}");
    assert_eq!(started["fields"]["pid"], worker, "{started}");
    assert!(lines.iter().any(|v| v["fields"]["message"] == "host ready" && v["level"] == "INFO"), "{log}");
}

// BUG (same cause as above): `--log-level warn` still lets the workers' info lines through.
#[test]
fn log_level_applies_to_the_workers() {
    let mut host = Host::spawn(["--plugin", "http", "--listen", "127.0.0.1:0", "--log-level", "warn"]);
    poll_until(READY_TIMEOUT, || (host.worker_pids().len() == 1).then_some(())).expect("a worker");
    std::thread::sleep(Duration::from_millis(300));
    host.signal(Signal::SIGINT);
    let (_, log) = host.finish(EXIT_TIMEOUT);
    let info: Vec<&str> = log.lines().filter(|l| l.contains(" INFO ")).collect();
    assert!(info.is_empty(), "info lines under --log-level warn:\n{log}");
}

// ---------------------------------------------------------------------------------------------
// 11. Users

// A service with `user = "nobody"`: its workers run as nobody, the master stays root, and the
// service answers. Needs root; skipped otherwise.
#[test]
fn workers_run_as_the_configured_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("note: not root; workers_run_as_the_configured_user skipped");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("note: no user nobody; workers_run_as_the_configured_user skipped");
        return;
    };
    let cfg_dir = TempDir::new();
    let cfg = cfg_dir
        .write(
            "user.toml",
            "[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0.0.1:0\"\ncount = 2\nuser = \"nobody\"\n",
        )
        .display()
        .to_string();
    let host = Host::spawn(["-c", &cfg]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    hello(service_port(&host, "web"));
    let uid = nobody.uid.as_raw();
    for w in host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap() {
        let uids = proc_status(&w.to_string(), "Uid");
        let uid = uid.to_string();
        assert_eq!(uids.split_whitespace().collect::<Vec<_>>(), [uid.as_str(); 4], "worker {w} Uid: {uids}");
    }
    let master = proc_status(&host.pid().to_string(), "Uid");
    assert_eq!(master.split_whitespace().collect::<Vec<_>>(), ["0"; 4], "master Uid: {master}");
}

// ---------------------------------------------------------------------------------------------
// 12. Restart

// `restart -d` stops the running master and starts a new one, on the same port.
#[test]
fn restart_replaces_the_master() {
    let dir = TempDir::new();
    let port = free_port();
    let cfg = dir
        .write(
            "r.toml",
            format!("pid_file = \"r.pid\"\nlog_file = \"r.log\"\n[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0.0.1:{port}\"\n"),
        )
        .display()
        .to_string();
    let daemon = Daemon::new(dir.join("r.pid"));
    let out = run_host_in(dir.path(), ["start", "-d", "-c", &cfg], COMMAND_TIMEOUT);
    assert_ok(&out, "start -d -c");
    let first = daemon.pid();
    hello(port);

    let out = run_host_in(dir.path(), ["restart", "-d", "-c", &cfg], COMMAND_TIMEOUT);
    assert_ok(&out, "restart -d -c");
    let second = daemon.pid();
    assert_ne!(first, second);
    assert_contains!(out.stdout, format!("host stopped (master pid {first})"));
    assert_contains!(out.stdout, format!("host started (master pid {second},"));
    assert!(wait_gone(first, Duration::from_secs(5)), "the old master {first} is still there");
    assert!(cmdline(second).is_some_and(|c| c.starts_with("host: master (r.toml)")), "{:?}", cmdline(second));
    hello(port);

    let out = run_host_in(dir.path(), ["stop", "-c", &cfg], COMMAND_TIMEOUT);
    assert_ok(&out, "stop -c");
    assert!(!dir.join("r.pid").exists(), "the pid file is left");
    assert!(wait_gone(second, Duration::from_secs(5)), "the master {second} is still there");
}
