//! The pid file as a lock, and control commands run by a user who may not reach the master.

use std::os::unix::process::CommandExt;

use super::*;

// A master holds its pid file locked: a second master started with the same pid file is
// refused even while the first has not written its pid yet (the file is locked but empty).
#[test]
fn a_locked_pid_file_refuses_a_second_master() {
    let dir = TempDir::new();
    let pid_file = dir.join("host.pid");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&pid_file).unwrap();
    file.try_lock().unwrap();
    let out = run_host_in(
        dir.path(),
        ["--plugin", "http", "--listen", "127.0.0.1:0", "--pid-file", pid_file.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(!out.status.success(), "a second master started: {}", out.stderr);
    assert_contains!(out.stderr, "already running");
    drop(file);
}

// `host status` run by another user than the master's says it cannot reach it for permission
// reasons, not that nothing runs (only root can switch users: CI runs as root).
#[test]
fn status_by_another_user_names_the_permission_problem() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("note: not root, cannot run a command as another user; skipped");
        return;
    }
    let host = Host::start("http", &[]);
    let pid_file = host.dir().join("host.pid");
    let out = host_command_in(host.dir().path())
        .args(["status", "--pid-file", pid_file.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_contains!(stderr, "not open to this user");
    assert_contains!(stderr, &host.pid().to_string());
}
