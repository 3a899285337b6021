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
