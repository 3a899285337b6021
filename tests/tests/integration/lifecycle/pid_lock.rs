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
    // A pid file others may read (its directory is 0755): the socket (0600) is what refuses.
    let shared = TempDir::new();
    let pid_file = shared.join("host.pid");
    let pid_arg = pid_file.to_str().unwrap();
    let host = Host::start("http", &["--pid-file", pid_arg]);
    let as_nobody = |args: &[&str]| {
        let out = host_command_in(host.dir().path()).args(args).uid(65534).gid(65534).output().unwrap();
        assert!(!out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let stderr = as_nobody(&["status", "--pid-file", pid_arg]);
    assert_contains!(stderr, "not open to this user");
    assert_contains!(stderr, &host.pid().to_string());
    // The default pid file sits in a 0700 directory of the master's user: refused, and said so.
    let other = Host::start("http", &[]);
    let out = host_command_in(other.dir().path()).args(["status"]).uid(65534).gid(65534).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert_contains!(stderr, "belongs to uid 0");
    assert_contains!(stderr, "run the command as that user");
}

// A host started without --pid-file is found by control commands run from any directory (its
// pid file is in the per-user runtime directory); when none runs, the error says where it looked.
#[test]
fn control_commands_find_the_master_from_another_directory() {
    let host = Host::start("http", &[]);
    let out = host_command_in(host.dir().path()).current_dir("/").args(["status"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_contains!(stdout, format!("master pid {} ", host.pid()));
    let nothing = TempDir::new();
    let out = host_command_in(nothing.path()).current_dir("/").args(["status"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let looked = nothing.join("host").join("*.pid").display().to_string();
    assert_contains!(stderr, looked);
    assert_contains!(stderr, "--pid-file");
}
