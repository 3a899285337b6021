//! What each process holds: a worker gets its listening socket, its control socket and its plugin
//! snapshot (a sealed memfd) and nothing else, all close-on-exec once taken; the snapshot is
//! closed once the plugin is loaded; descriptors left open by whoever started the host reach
//! neither the master nor a worker; snapshots live in memory, not in a runtime directory.

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use host_tests::plugin_dir::{short_hash, variant, PluginDir};
use host_tests::{assert_contains, get, plugin_file, poll_until, Client, Host, TempDir, READY_TIMEOUT};

/// `O_CLOEXEC` in the `flags:` line of `/proc/PID/fdinfo/FD` (octal).
const O_CLOEXEC: u32 = 0o2_000_000;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The open descriptors of `pid` and what they point to (`socket:[…]`, `/memfd:…`, a path).
fn fd_links(pid: i32) -> Vec<(i32, String)> {
    let dir = fs::read_dir(format!("/proc/{pid}/fd")).unwrap_or_else(|e| panic!("cannot list fds of {pid}: {e}"));
    let mut links: Vec<(i32, String)> = dir
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            // A descriptor closed meanwhile (a connection) is skipped.
            let target = fs::read_link(e.path()).ok()?;
            Some((fd, target.display().to_string()))
        })
        .collect();
    links.sort();
    links
}

/// The open flags of descriptor `fd` of `pid`, or None if it closed meanwhile.
fn open_flags(pid: i32, fd: i32) -> Option<u32> {
    let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
    Some(u32::from_str_radix(flags.trim(), 8).unwrap_or_else(|e| panic!("bad flags {flags:?}: {e}")))
}

/// Every descriptor of `pid` above stderr that is not close-on-exec.
fn inheritable(pid: i32) -> Vec<(i32, String)> {
    fd_links(pid)
        .into_iter()
        .filter(|&(fd, _)| fd > 2 && open_flags(pid, fd).is_some_and(|f| f & O_CLOEXEC == 0))
        .collect()
}

fn maps(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_else(|e| panic!("cannot read maps of {pid}: {e}"))
}

fn hello(port: u16) {
    let r = Client::connect(port).request(&get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "Hello, World!");
}

// A descriptor that whoever started the host left open (here: a file this test opened, its
// close-on-exec flag cleared) reaches neither the master nor any worker.
#[test]
fn stray_descriptors_reach_neither_master_nor_workers() {
    let dir = TempDir::new();
    let path = dir.write("stray", "left open by the caller");
    let stray = fs::File::open(&path).unwrap();
    nix::fcntl::fcntl(stray.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    let host = Host::start("http", &["--count", "2"]);
    // The host inherited it at its start; no later process of this test needs it.
    drop(stray);
    let workers = host.wait_workers(2, SETTLE_TIMEOUT, |_| true).unwrap_or_else(|e| panic!("{e}"));
    let target = path.display().to_string();
    for pid in std::iter::once(host.pid()).chain(workers) {
        let links = fd_links(pid);
        assert!(!links.iter().any(|(_, t)| *t == target), "process {pid} holds the stray {target}: {links:?}");
    }
    hello(host.port());
}

// Every descriptor of the master and of a worker above stderr is close-on-exec, the worker's
// inherited listening socket included: a process a plugin starts inherits none of them. The
// worker closed its plugin snapshot once the plugin was loaded; the master keeps it.
#[test]
fn descriptors_are_close_on_exec_and_the_snapshot_is_closed_after_loading() {
    let host = Host::start("http", &["--count", "2"]);
    let port = host.port();
    let workers = host.wait_workers(2, SETTLE_TIMEOUT, |_| true).unwrap_or_else(|e| panic!("{e}"));
    // A connection open meanwhile: accepted sockets must be close-on-exec too.
    let mut client = Client::connect(port);
    assert_eq!(client.request(&get("/")).status, 200);
    for &pid in &workers {
        let listener = open_flags(pid, 3).unwrap_or_else(|| panic!("worker {pid} has no fd 3"));
        assert_ne!(listener & O_CLOEXEC, 0, "worker {pid}: the listening socket (fd 3) is inheritable: {listener:o}");
        assert_eq!(inheritable(pid), [], "worker {pid}: inheritable descriptors");
        let links = fd_links(pid);
        assert!(
            !links.iter().any(|(_, t)| t.starts_with("/memfd:")),
            "worker {pid} still holds its snapshot: {links:?}"
        );
    }
    let master = host.pid();
    assert_eq!(inheritable(master), [], "master: inheritable descriptors");
    let snapshots: Vec<_> = fd_links(master).into_iter().filter(|(_, t)| t.starts_with("/memfd:http-")).collect();
    assert_eq!(snapshots.len(), 1, "the master holds one snapshot: {snapshots:?}");
}

// Workers map the plugin from a memfd named after it, never the file in the plugin directory,
// and the master creates nothing in its runtime directory (XDG_RUNTIME_DIR, here its own dir).
#[test]
fn workers_map_a_memfd_snapshot_and_no_runtime_dir_is_created() {
    let host = Host::start("http", &["--count", "2"]);
    let original = plugin_file("http").display().to_string();
    for pid in host.wait_workers(2, SETTLE_TIMEOUT, |_| true).unwrap_or_else(|e| panic!("{e}")) {
        let maps = maps(pid);
        assert_contains!(maps, "/memfd:http-", "worker {pid} maps no memfd snapshot");
        assert!(!maps.contains(&original), "worker {pid} maps the plugin file itself:\n{maps}");
    }
    hello(host.port());
    let mut made: Vec<String> = fs::read_dir(host.dir().path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        // `host/` holds the default pid file and the control socket, nothing else.
        .filter(|n| n != "host")
        .collect();
    let pid_dir: Vec<String> = fs::read_dir(host.dir().join("host"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".pid") && !n.ends_with(".sock"))
        .collect();
    made.extend(pid_dir);
    made.sort();
    assert_eq!(made, Vec::<String>::new(), "the master created files in its runtime dir");
}

// A service with `user = "nobody"` starts and serves when XDG_RUNTIME_DIR is private to root
// (0700): the worker needs no path to its plugin snapshot. Needs root; skipped otherwise.
#[test]
fn workers_of_another_user_load_their_plugin_with_a_private_runtime_dir() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("note: not root; workers_of_another_user_load_their_plugin_with_a_private_runtime_dir skipped");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("note: no user nobody; workers_of_another_user_load_their_plugin_with_a_private_runtime_dir skipped");
        return;
    };
    let runtime = TempDir::new();
    fs::set_permissions(runtime.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let cfg_dir = TempDir::new();
    let cfg = cfg_dir.write(
        "user.toml",
        "[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0.0.1:0\"\ncount = 2\nuser = \"nobody\"\n",
    );
    let host = Host::spawn_with(["-c".as_ref(), cfg.as_os_str()], |cmd| {
        cmd.env("XDG_RUNTIME_DIR", runtime.path());
    });
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    hello(host.port());
    let uid = nobody.uid.as_raw().to_string();
    for pid in host.wait_workers(2, SETTLE_TIMEOUT, |_| true).unwrap_or_else(|e| panic!("{e}")) {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or_default();
        assert_eq!(uids.split_whitespace().collect::<Vec<_>>(), [uid.as_str(); 4], "worker {pid} Uid: {uids}");
        assert_contains!(maps(pid), "/memfd:http-");
    }
    // Only its pid file and control socket (in `host/`), no snapshot.
    let made: Vec<String> =
        fs::read_dir(runtime.path()).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(made, ["host"], "the master wrote into XDG_RUNTIME_DIR");
}

// A reload hands the new workers a new memfd (its name carries the new hash), and once the old
// workers are gone the master holds the new snapshot alone: the old one is freed by the kernel.
#[test]
fn a_reload_moves_workers_to_a_new_memfd_and_frees_the_old_one() {
    let dir = PluginDir::new();
    let first = variant(&plugin_file("http"), "first");
    dir.mv("http.so", &first);
    let host = Host::start("http", &["--count", "2", "--plugin-dir", &dir.arg()]);
    let old_name = format!("/memfd:http-{}", short_hash(&first));
    let old = host.wait_workers(2, SETTLE_TIMEOUT, |_| true).unwrap_or_else(|e| panic!("{e}"));
    for &pid in &old {
        assert_contains!(maps(pid), old_name);
    }
    let next = variant(&plugin_file("http"), "next");
    let new_name = format!("/memfd:http-{}", short_hash(&next));
    dir.mv("http.so", &next);
    host.log().wait_for("reload done", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let new = host
        .wait_workers(2, SETTLE_TIMEOUT, |pids| pids.iter().all(|p| !old.contains(p)))
        .unwrap_or_else(|e| panic!("the old workers {old:?} are not all replaced: {e}"));
    for &pid in &new {
        assert_contains!(maps(pid), new_name);
    }
    // The master lets go of the old snapshot once it reaped the old workers.
    let mut held = Vec::new();
    let one = poll_until(SETTLE_TIMEOUT, || {
        held = fd_links(host.pid()).into_iter().map(|(_, t)| t).filter(|t| t.starts_with("/memfd:")).collect();
        (held.len() == 1).then_some(())
    });
    assert!(one.is_some(), "the master holds other snapshots than the new one: {held:?}");
    assert_contains!(held[0], new_name);
    hello(host.port());
}
