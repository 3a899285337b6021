//! Stop.

use super::*;

// `host stop`: exit 0, "host stopped", the master and every worker gone, pid file and control
// socket removed; a second `stop` says nothing runs.
#[test]
fn stop_command_stops_everything_and_cleans_up() {
    let mut host = Host::start("http", &["--count", "2"]);
    let workers = host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap();
    let (pid_file, sock) = (host.pid_file(), host.pid_file().with_extension("sock"));
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
    // As init scripts expect: stopping what does not run succeeds and says so; `status` of
    // what does not run exits 3.
    let again = host.command(["stop"], COMMAND_TIMEOUT);
    assert_ok(&again, "stop");
    assert_contains!(again.stdout, "not running");
    let status = host.command(["status"], COMMAND_TIMEOUT);
    assert_eq!(status.status.code(), Some(3), "{status:?}");
    assert_contains!(status.stderr, "not running");
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

// `host stop` returns once the master exited, even when its parent has not reaped it yet (here:
// the test process; in a container: a pid 1 that reaps every 2 s): a zombie counts as stopped,
// though kill(pid, 0) and /proc/PID/comm both still succeed for it.
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

// A file event in a plugin directory while the master stops (here: draining an idle connection
// for 5 s) does not make the master busy-loop: the watcher's debounce deadline is part of the
// poll timeout, so it is taken even when stopping, or it would stay in the past and every poll
// return at once (on a build machine, every host watching `target/debug` would spin while it
// stops each time cargo writes a `.so` there).
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
