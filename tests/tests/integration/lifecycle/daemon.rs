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

// logrotate on a daemon: its log file and its access log are renamed, `host reopen-logs` makes
// the master and its workers write to new files at the paths (the workers' last lines as they
// stop land in the new log file), and the renamed files keep what was written before.
#[test]
fn reopen_logs_moves_the_daemons_log_file_and_access_log() {
    let dir = TempDir::new();
    let (pid_file, log_file, access) = (dir.join("d.pid"), dir.join("d.log"), dir.join("access.log"));
    let daemon = Daemon::new(pid_file.clone());
    let [pid_arg, log_arg, access_arg] = [&pid_file, &log_file, &access].map(|p| p.display().to_string());
    let args = ["start", "-d", "--plugin", "http", "--count", "2", "--listen", "127.0.0.1:0"];
    let more = ["--pid-file", &pid_arg, "--log-file", &log_arg, "--access-log", &access_arg];
    let out = run_host_in(dir.path(), args.iter().copied().chain(more), COMMAND_TIMEOUT);
    assert_ok(&out, "start -d");
    let pid = daemon.pid();
    let log = std::fs::read_to_string(&log_file).unwrap();
    let port = log.lines().find(|l| l.contains("listening")).and_then(address_port).unwrap_or_else(|| panic!("{log}"));
    hello(port);
    std::fs::rename(&log_file, dir.join("d.log.1")).unwrap();
    std::fs::rename(&access, dir.join("access.log.1")).unwrap();
    let out = run_host_in(dir.path(), ["reopen-logs", "--pid-file", &pid_arg], COMMAND_TIMEOUT);
    assert_ok(&out, "reopen-logs");
    assert_contains!(out.stdout, format!("reopened the log file {log_arg}, the access log of http {access_arg}"));
    assert_contains!(out.stdout, "2 workers switched");
    assert_eq!(std::fs::read_to_string(dir.join("access.log.1")).unwrap().lines().count(), 1, "the first GET");
    hello(port);
    let out = run_host_in(dir.path(), ["stop", "--pid-file", &pid_arg], COMMAND_TIMEOUT);
    assert_ok(&out, "stop");
    assert!(wait_gone(pid, Duration::from_secs(5)), "the master is still there");
    let old = std::fs::read_to_string(dir.join("d.log.1")).unwrap();
    let new = std::fs::read_to_string(&log_file).unwrap();
    assert_contains!(old, "host ready");
    assert_contains!(new, "log file reopened");
    assert_eq!(new.matches("worker exits").count(), 2, "the workers log to the new file:\n{new}");
    assert!(!old.contains("worker exits") && !old.contains("master exits"), "{old}");
    assert_eq!(std::fs::read_to_string(&access).unwrap().lines().count(), 1, "the second GET");
}
