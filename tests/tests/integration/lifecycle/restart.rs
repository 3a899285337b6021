//! Restart.

use super::*;

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

// `restart -d` with no options reuses the running master's (it reports how it was started), from
// another directory too; new options are checked before anything is stopped.
#[test]
fn restart_without_options_reuses_the_running_masters() {
    let dir = TempDir::new();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let out = run_host_in(
        dir.path(),
        ["start", "-d", "--plugin", "http", "--count", "2", "--listen", &listen],
        COMMAND_TIMEOUT,
    );
    let daemon = Daemon::new(host_tests::default_pid_file(dir.path()));
    assert_ok(&out, "start -d");
    let first = daemon.pid();
    hello(port);

    // Bad new options: refused, nothing stopped.
    let out = run_host_in(dir.path(), ["restart", "--plugin", "no_such_plugin", "--listen", &listen], COMMAND_TIMEOUT);
    assert_failed(&out, "restart with a missing plugin");
    assert_contains!(out.stderr, "no_such_plugin");
    assert!(is_alive(first), "a refused restart stopped the master");
    hello(port);

    // No options, from another directory: the running master's options.
    let elsewhere = TempDir::new();
    let out = host_command_in(dir.path()).current_dir(elsewhere.path()).args(["restart", "-d"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "restart -d failed:\n{stdout}\n{stderr}");
    let second = daemon.pid();
    assert_ne!(first, second);
    assert!(wait_gone(first, Duration::from_secs(5)), "the old master {first} is still there");
    assert_eq!(Daemon::workers(second).len(), 2, "the --count was not reused");
    hello(port);
    // And again: the restarted master reports the same options.
    let out = host_command_in(dir.path()).current_dir(elsewhere.path()).args(["restart", "-d"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let third = daemon.pid();
    assert!(wait_gone(second, Duration::from_secs(5)));
    assert_eq!(Daemon::workers(third).len(), 2);
    hello(port);
    let out = run_host_in(dir.path(), ["stop"], COMMAND_TIMEOUT);
    assert_ok(&out, "stop");
}
