//! Daemon mode.

use super::*;

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
