//! The pid file.

use super::*;

// A second start with the same pid file is refused, naming the running master.
#[test]
fn second_start_is_refused_naming_the_running_master() {
    let host = Host::start("http", &[]);
    let out = run_host_in(host.dir().path(), ["start", "--plugin", "http", "--listen", "127.0.0.1:0"], COMMAND_TIMEOUT);
    assert_failed(&out, "start");
    assert_contains!(out.stderr, format!("already running (pid {}", host.pid()));
    assert_eq!(std::fs::read_to_string(host.pid_file()).unwrap().trim(), host.pid().to_string());
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
