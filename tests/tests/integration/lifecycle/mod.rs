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

// 1-2. Reload
mod reload;
// 3. Stop
mod stop;
// 4-5. Status and connections
mod status;
// 6. The pid file
mod pid_file;
// The pid file as a lock; control commands by a user who may not reach the master.
mod pid_lock;
// 7. Daemon mode
mod daemon;
// 8. Config files
mod config;
// 9. Crash loop
mod crash_loop;
// 10. Logging
mod logging;
// 11. Users
mod users;
// 12. Restart
mod restart;

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
