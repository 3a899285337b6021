// `host upgrade`: the master replaces its own program with the binary now installed at the path
// it was started from (a copy renamed over it: a new inode, as `install` and package managers
// do). Same pid, same listening port; a keep-alive connection opened before still gets its
// answer; every worker afterwards runs the new file. A binary that is missing, not executable or
// refuses the running master's state is refused with the reason, and the old master serves on.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use host_tests::copied_host::CopiedHost;
use host_tests::load::Load;
use host_tests::plugin_dir::PluginDir;
use host_tests::{assert_contains, get, plugin_file, poll_until, Client};

/// For the upgrade's reload chain (every slot replaced) to finish.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

fn start() -> (PluginDir, CopiedHost) {
    let dir = PluginDir::new();
    dir.mv("http.so", &fs::read(plugin_file("http")).unwrap());
    // A long drain: the old keep-alive connection is still open when the test uses it again.
    let args = ["--plugin", "http", "--count", "2", "--listen", "127.0.0.1:0", "--drain-timeout", "60"];
    let mut args: Vec<&str> = args.to_vec();
    let plugin_dir = dir.arg();
    args.extend(["--plugin-dir", &plugin_dir]);
    let host = CopiedHost::start(&args);
    (dir, host)
}

/// The inode of the file a process runs (`/proc/PID/exe`).
fn exe_inode(pid: i32) -> u64 {
    fs::metadata(format!("/proc/{pid}/exe")).map(|m| m.ino()).unwrap_or(0)
}

/// The upgrade guardians among the children of master `pid` (forks of it, titled as it is).
fn guardians(pid: i32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| host_tests::cmdline(p).is_some_and(|c| c.starts_with("host: master")))
        .count()
}

fn hello(port: u16) {
    let r = Client::connect(port).request(&get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "Hello, World!");
}

#[test]
fn upgrade_keeps_the_pid_the_port_and_open_connections_and_moves_every_worker_to_the_new_binary() {
    let (_plugins, host) = start();
    let (pid, port) = (host.pid(), host.port());
    let old_workers =
        poll_until(SETTLE_TIMEOUT, || Some(host.worker_pids()).filter(|p| p.len() == 2)).expect("2 workers");
    let mut kept = Client::connect(port);
    let r = kept.request(&get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    let load = Load::http_get(port, 4);
    assert!(load.wait_more(20, SETTLE_TIMEOUT), "the clients get no answers");

    host.replace_binary();
    let new_inode = fs::metadata(host.dir().join("bin/host")).unwrap().ino();
    assert_ne!(exe_inode(pid), new_inode, "the master still runs the old file");
    let out = host.command(&["upgrade"], UPGRADE_TIMEOUT);
    assert!(out.status.success(), "host upgrade failed: {}{}\nlog:\n{}", out.stdout, out.stderr, host.log());
    assert_contains!(out.stdout, format!("host upgraded (master pid {pid})"));

    // The same process, now the new file.
    assert_eq!(exe_inode(pid), new_inode, "the master does not run the new binary");
    assert!(host_tests::cmdline(pid).is_some_and(|c| c.starts_with("host: master")), "the title is kept");
    // The connection opened before the upgrade is answered (a draining worker may close it after).
    let r = kept.request(&get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "Hello, World!");
    // Every worker is new and runs the new file; new connections on the same port are served.
    let workers = poll_until(SETTLE_TIMEOUT, || {
        let pids = host.worker_pids();
        let all_new = pids.len() == 2 && pids.iter().all(|p| !old_workers.contains(p) && exe_inode(*p) == new_inode);
        all_new.then_some(pids)
    })
    .unwrap_or_else(|| panic!("workers are not all on the new binary: {:?}\n{}", host.worker_pids(), host.log()));
    hello(port);
    let tally = load.finish();
    assert!(tally.failed == 0 && tally.ok > 0, "requests failed during the upgrade: {tally:#?}");
    assert_contains!(host.log(), "upgraded: this binary took the master over");
    let status = host.command(&["status"], SETTLE_TIMEOUT);
    assert!(status.status.success(), "{}", status.stderr);
    assert_contains!(status.stdout, pid.to_string());
    for w in workers {
        assert_contains!(status.stdout, w.to_string());
    }
}

#[test]
fn a_binary_that_is_missing_not_executable_or_refuses_the_state_is_refused_and_the_old_master_serves_on() {
    let (_plugins, host) = start();
    let (pid, port) = (host.pid(), host.port());
    let workers = poll_until(SETTLE_TIMEOUT, || Some(host.worker_pids()).filter(|p| p.len() == 2)).expect("2 workers");
    let path = host.dir().join("bin/host");
    let script = |text: &str, mode: u32| {
        let new = host.dir().join("bin/host.new");
        fs::write(&new, text).unwrap();
        fs::set_permissions(&new, fs::Permissions::from_mode(mode)).unwrap();
        fs::rename(&new, &path).unwrap();
    };
    let cases = [
        ("removed", "no host binary at"),
        ("not executable", "is not executable"),
        ("refuses the state", "refused the running master's state (exit code 1): this build does not take state"),
    ];
    for (case, reason) in cases {
        match case {
            "removed" => fs::remove_file(&path).unwrap(),
            "not executable" => script("#!/bin/sh\nexit 0\n", 0o644),
            _ => script("#!/bin/sh\necho 'error: this build does not take state' >&2\nexit 1\n", 0o755),
        }
        let out = host.command(&["upgrade"], UPGRADE_TIMEOUT);
        assert!(!out.status.success(), "{case}: the upgrade was not refused: {}", out.stdout);
        assert_contains!(out.stderr, reason);
        assert_contains!(out.stderr, format!("the master (pid {pid}) goes on"));
        hello(port);
        assert_eq!(host.worker_pids(), workers, "{case}: the workers were touched");
    }
    assert!(host_tests::is_alive(pid));
    // A good binary afterwards upgrades as usual, here by its signal.
    host.replace_binary();
    let new_inode = fs::metadata(&path).unwrap().ino();
    host_tests::signal_pid(pid, host_tests::Signal::SIGURG);
    host.wait_for_log("reload done replaced=2 ", UPGRADE_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_contains!(host.wait_for_log("reload done", SETTLE_TIMEOUT).unwrap(), "reason=host upgrade");
    assert_eq!(exe_inode(pid), new_inode, "the master does not run the new binary");
    assert_eq!(guardians(pid), 0, "the new image did not release its guardian:\n{}", host.log());
    hello(port);
}

// Under systemd (NOTIFY_SOCKET, a datagram socket the test owns): the old image says
// RELOADING=1 before it executes the new binary, the new one MAINPID= (the same pid) and READY=1
// once every worker runs it.
#[test]
fn upgrade_tells_the_service_manager_reloading_mainpid_and_ready() {
    use std::os::unix::net::UnixDatagram;
    let dir = host_tests::TempDir::new();
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(SETTLE_TIMEOUT)).unwrap();
    let host = host_tests::Host::spawn_with_env(
        ["--plugin", "http", "--count", "2", "--listen", "127.0.0.1:0"],
        &[("NOTIFY_SOCKET", path.as_os_str())],
    );
    let mut buf = [0u8; 4096];
    let mut recv = || socket.recv(&mut buf).map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    let ready = recv().expect("READY=1 at the start");
    assert_contains!(ready, "READY=1");
    let pid_file = host.pid_file();
    let out = host_tests::run_host_in(
        host.dir().path(),
        ["upgrade", "--pid-file", pid_file.to_str().unwrap()],
        UPGRADE_TIMEOUT,
    );
    assert!(out.status.success(), "{out:?}\n{}", host.log_text());
    let mut said = Vec::new();
    while !said.last().is_some_and(|m: &String| m.contains("READY=1")) {
        said.push(recv().unwrap_or_else(|e| panic!("no READY=1 after the upgrade ({e}); got {said:?}")));
    }
    assert!(said[0].contains("RELOADING=1") && said[0].contains("MONOTONIC_USEC="), "{said:?}");
    assert!(said.iter().any(|m| m.contains(&format!("MAINPID={}", host.pid()))), "{said:?}");
    assert_contains!(said.last().unwrap(), "last reload: done: 2 workers replaced");
}

/// Starts the copied host with `count` workers and `extra` flags; returns the start arguments too.
fn start_with(count: &str, extra: &[&str]) -> (PluginDir, CopiedHost, Vec<String>) {
    let dir = PluginDir::new();
    dir.mv("http.so", &fs::read(plugin_file("http")).unwrap());
    let plugin_dir = dir.arg();
    let mut args: Vec<String> =
        ["--plugin", "http", "--count", count, "--listen", "127.0.0.1:0", "--drain-timeout", "60", "--plugin-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    args.push(plugin_dir);
    args.extend(extra.iter().map(|s| s.to_string()));
    let host = CopiedHost::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (dir, host, args)
}

/// Renames a script with `text` over the copied host's binary, as an installer does.
fn install_script(host: &CopiedHost, text: &str) {
    let (new, path) = (host.dir().join("bin/host.new"), host.dir().join("bin/host"));
    fs::write(&new, text).unwrap();
    fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&new, &path).unwrap();
}

// Issue 20 item 1: the check of the new binary runs off the master's loop. While a check hangs
// (until its 10 s deadline), `status` is answered, the workers are supervised as usual, and
// afterwards the watchdog kills none of them (it used to blame every worker for the master's
// own stall, and their replacements ran the bad binary).
#[test]
fn a_check_that_hangs_stalls_nothing_and_no_worker_is_blamed_for_it() {
    let (_plugins, host, _) = start_with("2", &["--worker-timeout", "1"]);
    let (pid, port) = (host.pid(), host.port());
    let workers = poll_until(SETTLE_TIMEOUT, || Some(host.worker_pids()).filter(|p| p.len() == 2)).expect("2 workers");
    let load = Load::http_get(port, 2);
    assert!(load.wait_more(20, SETTLE_TIMEOUT), "the clients get no answers");
    let checking = host.dir().join("checking");
    install_script(&host, &format!("#!/bin/sh\ntouch '{}'\nexec sleep 60\n", checking.display()));
    let dir = host.dir().to_path_buf();
    let upgrade = std::thread::spawn(move || host_tests::run_host_in(&dir, ["upgrade"], UPGRADE_TIMEOUT));
    poll_until(SETTLE_TIMEOUT, || checking.exists().then_some(())).expect("the check did not start");
    // Well within the check's 10 s: the master's loop runs on.
    let status = host.command(&["status"], Duration::from_secs(5));
    assert!(status.status.success(), "{}", status.stderr);
    for w in &workers {
        assert_contains!(status.stdout, w.to_string());
    }
    let out = upgrade.join().unwrap();
    assert!(!out.status.success(), "the upgrade was not refused: {}", out.stdout);
    assert_contains!(out.stderr, "did not answer within 10 s; killed");
    assert_contains!(out.stderr, format!("the master (pid {pid}) goes on"));
    hello(port);
    assert_eq!(host.worker_pids(), workers, "workers were replaced:\n{}", host.log());
    assert!(!host.log().contains("made no progress"), "the watchdog blamed a worker:\n{}", host.log());
    let tally = load.finish();
    assert!(tally.failed == 0 && tally.ok > 0, "requests failed during the check: {tally:#?}");
}

// Issue 20 item 2: a broken binary installed over the host's path (the first step of every
// package upgrade) is run by nobody until `host upgrade`: a worker that dies is replaced from
// the running image, and a reload (probe and new workers) works as before.
#[test]
fn workers_come_from_the_running_image_not_the_file_installed_over_it() {
    let (_plugins, host, _) = start_with("1", &[]);
    let (pid, port) = (host.pid(), host.port());
    let image = exe_inode(pid);
    let first = poll_until(SETTLE_TIMEOUT, || Some(host.worker_pids()).filter(|p| p.len() == 1)).expect("1 worker");
    install_script(&host, "#!/bin/sh\necho 'broken install' >&2\nexit 1\n");
    host_tests::signal_pid(first[0], host_tests::Signal::SIGKILL);
    let next = poll_until(SETTLE_TIMEOUT, || {
        Some(host.worker_pids()).filter(|p| p.len() == 1 && p[0] != first[0] && exe_inode(p[0]) == image)
    })
    .unwrap_or_else(|| panic!("no worker from the running image: {:?}\n{}", host.worker_pids(), host.log()));
    hello(port);
    let out = host.command(&["reload"], UPGRADE_TIMEOUT);
    assert!(out.status.success(), "reload failed: {}{}\n{}", out.stdout, out.stderr, host.log());
    let after = poll_until(SETTLE_TIMEOUT, || Some(host.worker_pids()).filter(|p| p.len() == 1 && p != &next))
        .expect("the reload replaced the worker");
    assert_eq!(exe_inode(after[0]), image, "the reload's worker runs another file");
    hello(port);
    assert!(!host.log().contains("broken install"), "the installed file was run:\n{}", host.log());
}

/// `ARGV_ENV`'s packing (each argument's bytes in hex, separated by commas).
fn pack_args(args: &[String]) -> String {
    args.iter().map(|a| a.bytes().map(|b| format!("{b:02x}")).collect::<String>()).collect::<Vec<_>>().join(",")
}

// Issue 20 item 3: a new binary that accepts the state in its check but fails once executed
// (here: it takes a command line with 3 workers where 2 run, and exits 1) is a rollback, not an
// outage: the master goes back to the image it was upgraded from, adopts its workers again, and
// the waiting `host upgrade` hears why; no request fails meanwhile, and a good binary upgrades
// afterwards.
#[test]
fn a_binary_that_fails_after_the_exec_is_rolled_back_and_no_request_fails() {
    let (_plugins, host, args) = start_with("2", &[]);
    let (pid, port) = (host.pid(), host.port());
    let image = exe_inode(pid);
    let workers = poll_until(SETTLE_TIMEOUT, || Some(host.worker_pids()).filter(|p| p.len() == 2)).expect("2 workers");
    let load = Load::http_get(port, 4);
    assert!(load.wait_more(20, SETTLE_TIMEOUT), "the clients get no answers");
    let other: Vec<String> = args.iter().map(|a| if a == "2" { "3".to_string() } else { a.clone() }).collect();
    let real = host_tests::host_bin();
    install_script(
        &host,
        &format!(
            "#!/bin/sh\nif [ \"$1\" = upgrade-check ]; then exec '{real}' \"$@\"; fi\nHOST_ARGV='{packed}' exec '{real}'\n",
            real = real.display(),
            packed = pack_args(&other)
        ),
    );
    let out = host.command(&["upgrade"], UPGRADE_TIMEOUT);
    assert!(!out.status.success(), "the upgrade did not fail: {}\n{}", out.stdout, host.log());
    assert_contains!(out.stderr, "the new binary failed before it was ready");
    assert_contains!(out.stderr, "3 workers now, 2 running");
    assert_contains!(out.stderr, format!("the master (pid {pid}) went back to the previous binary"));
    assert!(host_tests::is_alive(pid));
    assert_eq!(exe_inode(pid), image, "the master does not run its previous image");
    assert!(host_tests::cmdline(pid).is_some_and(|c| c.starts_with("host: master")), "the title is kept");
    assert_eq!(host.worker_pids(), workers, "the workers were not kept");
    // The upgrade's guardian (a fork of the master) was released by the image gone back to.
    assert_eq!(guardians(pid), 0, "a guardian is left:\n{}", host.log());
    hello(port);
    let status = host.command(&["status"], SETTLE_TIMEOUT);
    assert!(status.status.success(), "{}", status.stderr);
    let tally = load.finish();
    assert!(tally.failed == 0 && tally.ok > 0, "requests failed during the failed upgrade: {tally:#?}");
    // The path is still the one to upgrade from.
    host.replace_binary();
    let new_inode = fs::metadata(host.dir().join("bin/host")).unwrap().ino();
    let out = host.command(&["upgrade"], UPGRADE_TIMEOUT);
    assert!(out.status.success(), "host upgrade failed: {}{}\nlog:\n{}", out.stdout, out.stderr, host.log());
    assert_eq!(exe_inode(pid), new_inode, "the master does not run the new binary");
    assert_eq!(guardians(pid), 0, "the new image did not release its guardian:\n{}", host.log());
    hello(port);
}

/// Kills the given worker pids when dropped: workers adopted by a guardian's master are not
/// children of the master this test started, so `CopiedHost`'s drop does not find them.
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if host_tests::cmdline(pid).is_some_and(|c| c.starts_with("host: worker")) {
                host_tests::signal_pid(pid, host_tests::Signal::SIGKILL);
            }
        }
    }
}

// Issue 20 item 3, the case no rollback inside the new image can cover: a program that passes
// `upgrade-check` (it hands the check to a real host) and exits 1 when executed, before any of
// the host's code runs. The master's process is gone; before, its workers died with it (their
// parent-death signal) and the service was down. Now the upgrade's guardian (forked before the
// exec, holding the state's descriptors) execs the previous image, which takes the master over
// under a new pid and adopts every worker: they never stopped (their parent-death signal was
// off for the upgrade), a keep-alive connection opened before is answered on, no request of a
// running load fails, the pid file names the new master, and it supervises, reloads and stops
// the adopted workers (not its children: their end is seen through pidfds).
#[test]
fn a_binary_that_dies_before_running_the_host_is_taken_back_by_the_guardian_and_no_worker_stops() {
    let (_plugins, host, _) = start_with("2", &[]);
    let (pid, port) = (host.pid(), host.port());
    let image = exe_inode(pid);
    let workers = poll_until(SETTLE_TIMEOUT, || Some(host.worker_pids()).filter(|p| p.len() == 2)).expect("2 workers");
    let _workers = KillOnDrop(workers.clone());
    let mut held = Client::connect(port);
    assert_eq!(held.request(&get("/")).status, 200);
    let load = Load::http_get(port, 4);
    assert!(load.wait_more(20, SETTLE_TIMEOUT), "the clients get no answers");
    let real = host_tests::host_bin();
    install_script(
        &host,
        &format!("#!/bin/sh\nif [ \"$1\" = upgrade-check ]; then exec '{}' \"$@\"; fi\nexit 1\n", real.display()),
    );
    let out = host.command(&["upgrade"], UPGRADE_TIMEOUT);
    assert!(!out.status.success(), "the upgrade did not fail: {}\n{}", out.stdout, host.log());
    assert_contains!(out.stderr, "ended before it ran the host's loop");
    assert_contains!(out.stderr, "the upgrade's guardian took the master over");
    let new_pid: i32 = out
        .stderr
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {:?}", out.stderr));
    assert_ne!(new_pid, pid, "the guardian is another process");
    assert!(host_tests::is_alive(new_pid) && !host_tests::is_alive(pid), "{}", host.log());
    assert_eq!(exe_inode(new_pid), image, "the new master does not run the previous image");
    assert!(host_tests::cmdline(new_pid).is_some_and(|c| c.starts_with("host: master")), "the title is kept");
    // The workers never stopped, and the connection opened before is answered on.
    for &w in &workers {
        assert!(host_tests::is_alive(w), "worker {w} died with the master's process:\n{}", host.log());
    }
    assert_eq!(held.request(&get("/")).status, 200);
    hello(port);
    let status = host.command(&["status"], SETTLE_TIMEOUT);
    assert!(status.status.success(), "{}", status.stderr);
    assert_contains!(status.stdout, format!("pid {new_pid}"));
    for w in &workers {
        assert_contains!(status.stdout, w.to_string());
    }
    let tally = load.finish();
    assert!(tally.failed == 0 && tally.ok > 0, "requests failed during the failed upgrade: {tally:#?}");
    // The new master supervises the adopted workers: a reload replaces them, and their end
    // (not a child's: no SIGCHLD, no status) is seen.
    let out = host.command(&["reload"], UPGRADE_TIMEOUT);
    assert!(out.status.success(), "reload failed: {}{}\n{}", out.stdout, out.stderr, host.log());
    for &w in &workers {
        poll_until(SETTLE_TIMEOUT, || (!host_tests::is_alive(w)).then_some(()))
            .unwrap_or_else(|| panic!("adopted worker {w} was not replaced:\n{}", host.log()));
    }
    // Their exits are counted (how they ended is their parent's to know).
    poll_until(SETTLE_TIMEOUT, || {
        Some(host.command(&["status"], SETTLE_TIMEOUT).stdout).filter(|s| s.contains("status unknown: adopted"))
    })
    .unwrap_or_else(|| panic!("the adopted workers' exits are not counted:\n{}", host.log()));
    hello(port);
    let out = host.command(&["stop"], UPGRADE_TIMEOUT);
    assert!(out.status.success(), "stop failed: {}{}", out.stdout, out.stderr);
    poll_until(SETTLE_TIMEOUT, || (!host_tests::is_alive(new_pid)).then_some(())).expect("the new master did not stop");
}

// `host upgrade --handovers` answers once the hand-overs of the upgrade's chain have ended, with
// their outcome, as `host reload --handovers` does: by then every client of the text plugin was
// moved to a worker of the new binary, and each is still answered there.
#[test]
fn upgrade_with_handovers_answers_with_their_outcome() {
    const N: usize = 3;
    let dir = PluginDir::new();
    dir.mv("text.so", &fs::read(plugin_file("text")).unwrap());
    let plugin_dir = dir.arg();
    let args = ["--plugin", "text", "--count", "1", "--listen", "127.0.0.1:0", "--drain-timeout", "30"];
    let mut args = args.to_vec();
    args.extend(["--plugin-dir", &plugin_dir]);
    let host = CopiedHost::start(&args);
    let old = poll_until(SETTLE_TIMEOUT, || Some(host.worker_pids()).filter(|p| p.len() == 1)).expect("1 worker");
    let mut clients: Vec<Client> = (0..N).map(|_| Client::connect(host.port())).collect();
    let each_answers = |clients: &mut [Client], prefix: &str| {
        for (i, c) in clients.iter_mut().enumerate() {
            c.send(format!("{prefix} {i}\n").as_bytes());
            let line = c.read_line().unwrap_or_else(|e| panic!("client {i}: no line after {prefix}: {e}"));
            assert_eq!(String::from_utf8_lossy(&line), format!("{prefix} {i}\n"), "client {i}");
        }
    };
    each_answers(&mut clients, "before");

    host.replace_binary();
    let out = host.command(&["upgrade", "--handovers"], UPGRADE_TIMEOUT);
    assert!(out.status.success(), "host upgrade failed: {}{}\nlog:\n{}", out.stdout, out.stderr, host.log());
    assert_contains!(out.stdout, format!("host upgraded (master pid {})", host.pid()));
    assert!(
        out.stdout.trim_end().ends_with(&format!("; hand-overs: {N} connections moved, 0 drained")),
        "{}\nlog:\n{}",
        out.stdout,
        host.log()
    );
    each_answers(&mut clients, "after");
    let new = host.worker_pids();
    assert!(new.len() == 1 && new[0] != old[0], "the worker was not replaced: {new:?}");
}
