//! A master whose log pipe closes (a log shipper that restarts, `host … 2>&1 | head`) goes on:
//! failed log writes are dropped, never fatal.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use host_tests::{get, host_command_in, is_alive, poll_until, run_host_in, Client, TempDir};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Kills the process group of the host it holds when dropped.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

#[test]
fn the_master_survives_its_log_pipe_closing() {
    let dir = TempDir::new();
    let mut child = host_command_in(dir.path())
        .args(["--plugin", "http", "--count", "2", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let master = child.id() as i32;
    let _group = Group(master);
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut port = None;
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        if let Some(addr) = line.split_whitespace().find_map(|f| f.strip_prefix("address=")) {
            port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        }
        if line.contains("host ready") {
            break;
        }
        line.clear();
    }
    let port = port.expect("the log names the port");
    // The reader goes away: every later log write fails with EPIPE.
    drop(stderr);
    let pid_file = host_tests::default_pid_file(dir.path());
    let pid_arg = pid_file.to_str().unwrap();
    // Plenty to log: a reload (every worker replaced) and a status table into the log.
    let out = run_host_in(dir.path(), ["reload", "--pid-file", pid_arg], Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
    nix::sys::signal::kill(Pid::from_raw(master), Signal::SIGUSR2).unwrap();
    let out = run_host_in(dir.path(), ["status", "--pid-file", pid_arg], Duration::from_secs(30));
    assert!(out.status.success(), "status after the pipe closed: {out:?}");
    assert!(is_alive(master), "the master died when its log pipe closed");
    let served = poll_until(Duration::from_secs(5), || {
        let r = Client::connect(port).request(&get("/"));
        (r.status == 200).then_some(())
    });
    assert!(served.is_some(), "the workers do not serve after the log pipe closed");
    assert!(child.try_wait().unwrap().is_none(), "the master exited");
}
