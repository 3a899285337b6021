// The worker binary: with `host-worker` installed beside `host`, every worker runs it
// (/proc/PID/exe), from the descriptor the master opened at start (a file installed over it is
// not run); without it, workers run `host` itself and the log says so. `host upgrade` moves the
// master and its workers to the new pair; a worker binary of another worker protocol is refused
// by the new binary's check, with the reason, and the old pair serves on.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use host_tests::copied_host::CopiedHost;
use host_tests::plugin_dir::PluginDir;
use host_tests::{assert_contains, get, plugin_file, poll_until, Client, TempDir};

const UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

fn args(dir: &PluginDir) -> Vec<String> {
    let mut args: Vec<String> = ["--plugin", "http", "--count", "2", "--listen", "127.0.0.1:0", "--plugin-dir"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(dir.arg());
    args
}

fn plugins() -> PluginDir {
    let dir = PluginDir::new();
    dir.mv("http.so", &fs::read(plugin_file("http")).unwrap());
    dir
}

fn start(pair: bool) -> (PluginDir, CopiedHost) {
    let dir = plugins();
    let args = args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = if pair { CopiedHost::start_pair(&args) } else { CopiedHost::start(&args) };
    (dir, host)
}

/// The inode of the file a process runs (`/proc/PID/exe`; a deleted file's too).
fn exe_inode(pid: i32) -> u64 {
    fs::metadata(format!("/proc/{pid}/exe")).map(|m| m.ino()).unwrap_or(0)
}

fn inode(host: &CopiedHost, name: &str) -> u64 {
    fs::metadata(host.dir().join("bin").join(name)).unwrap().ino()
}

fn hello(port: u16) {
    let r = Client::connect(port).request(&get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "Hello, World!");
}

/// Waits for 2 workers that all run the file of inode `inode` and none of `old`.
fn workers_on(host: &CopiedHost, inode: u64, old: &[i32]) -> Vec<i32> {
    poll_until(SETTLE_TIMEOUT, || {
        let pids = host.worker_pids();
        let all = pids.len() == 2 && pids.iter().all(|p| !old.contains(p) && exe_inode(*p) == inode);
        all.then_some(pids)
    })
    .unwrap_or_else(|| {
        let exes: Vec<_> = host.worker_pids().into_iter().map(|p| (p, exe_inode(p))).collect();
        panic!("the workers do not all run inode {inode}: {exes:?}\n{}", host.log())
    })
}

/// Renames a script with `text` over `bin/NAME`, as an installer does.
fn install_script(host: &CopiedHost, name: &str, text: &str) {
    let (new, path) = (host.dir().join(format!("bin/{name}.new")), host.dir().join(format!("bin/{name}")));
    fs::write(&new, text).unwrap();
    fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
    fs::rename(&new, &path).unwrap();
}

#[test]
fn workers_run_the_worker_binary_beside_the_host_and_the_host_itself_without_it() {
    let (_plugins, pair) = start(true);
    let worker = inode(&pair, "host-worker");
    let workers = workers_on(&pair, worker, &[]);
    assert_ne!(exe_inode(pair.pid()), worker, "the master runs the worker binary");
    assert!(host_tests::cmdline(workers[0]).is_some_and(|c| c.starts_with("host: worker")), "the title is kept");
    assert_contains!(pair.log(), "workers run the worker binary");
    hello(pair.port());
    // A file installed over the worker binary is not run: a worker that dies is replaced from
    // the descriptor the master opened at start.
    install_script(&pair, "host-worker", "#!/bin/sh\necho 'broken install' >&2\nexit 1\n");
    host_tests::signal_pid(workers[0], host_tests::Signal::SIGKILL);
    let _ = workers_on(&pair, worker, &workers[..1]);
    hello(pair.port());
    assert!(!pair.log().contains("broken install"), "the installed file was run:\n{}", pair.log());

    let (_plugins, alone) = start(false);
    let _ = workers_on(&alone, inode(&alone, "host"), &[]);
    assert_contains!(alone.log(), "no host-worker beside");
    hello(alone.port());
}

#[test]
fn upgrade_moves_the_master_and_its_workers_to_the_new_pair() {
    let (_plugins, host) = start(true);
    let (pid, port) = (host.pid(), host.port());
    let old = workers_on(&host, inode(&host, "host-worker"), &[]);
    host.replace_binary();
    host.replace_worker_binary();
    let (master, worker) = (inode(&host, "host"), inode(&host, "host-worker"));
    let out = host.command(&["upgrade"], UPGRADE_TIMEOUT);
    assert!(out.status.success(), "host upgrade failed: {}{}\nlog:\n{}", out.stdout, out.stderr, host.log());
    assert_contains!(out.stdout, format!("host upgraded (master pid {pid})"));
    assert_eq!(exe_inode(pid), master, "the master does not run the new binary");
    let _ = workers_on(&host, worker, &old);
    hello(port);
}

#[test]
fn a_worker_binary_of_another_protocol_is_refused_at_upgrade_and_at_start() {
    let (_plugins, host) = start(true);
    let (pid, port) = (host.pid(), host.port());
    let worker = inode(&host, "host-worker");
    let workers = workers_on(&host, worker, &[]);
    host.replace_binary();
    install_script(&host, "host-worker", "#!/bin/sh\necho 999\n");
    let out = host.command(&["upgrade"], UPGRADE_TIMEOUT);
    assert!(!out.status.success(), "the upgrade was not refused: {}", out.stdout);
    assert_contains!(out.stderr, "speaks worker protocol 999, this host");
    assert_contains!(out.stderr, "install `host` and `host-worker` of the same build together");
    assert_contains!(out.stderr, format!("the master (pid {pid}) goes on"));
    assert_eq!(host.worker_pids(), workers, "the workers were touched");
    hello(port);

    // The same pair refuses to start, saying why.
    let dir = TempDir::new();
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::copy(host.dir().join("bin/host"), dir.join("bin/host")).unwrap();
    fs::copy(host.dir().join("bin/host-worker"), dir.join("bin/host-worker")).unwrap();
    let plugins = plugins();
    let mut cmd = Command::new(dir.join("bin/host"));
    cmd.args(args(&plugins))
        .current_dir(dir.path())
        .env("XDG_RUNTIME_DIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = host_tests::copied_host::spawn_fresh_binary(&mut cmd).unwrap();
    let out = host_tests::wait_output(child, SETTLE_TIMEOUT);
    assert!(!out.status.success(), "it started: {}", out.stderr);
    assert_contains!(out.stderr, "speaks worker protocol 999, this host");
}

/// `ARGV_ENV`'s packing (each argument's bytes in hex, separated by commas).
fn pack_args(args: &[String]) -> String {
    args.iter().map(|a| a.bytes().map(|b| format!("{b:02x}")).collect::<String>()).collect::<Vec<_>>().join(",")
}

// A rollback keeps the old pair: the new master (a real host started with another worker count,
// so it fails before its loop runs) goes back to the previous image, which executes its workers
// from the worker binary it had, not from the new one now installed beside it.
#[test]
fn a_master_gone_back_after_a_failed_upgrade_keeps_its_worker_binary() {
    let dir = plugins();
    let args = args(&dir);
    let host = CopiedHost::start_pair(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (pid, port) = (host.pid(), host.port());
    let old = inode(&host, "host-worker");
    let workers = workers_on(&host, old, &[]);
    host.replace_worker_binary();
    assert_ne!(inode(&host, "host-worker"), old);
    let other: Vec<String> = args.iter().map(|a| if a == "2" { "3".to_string() } else { a.clone() }).collect();
    let real = host_tests::host_bin();
    install_script(
        &host,
        "host",
        &format!(
            "#!/bin/sh\nif [ \"$1\" = upgrade-check ]; then exec '{real}' \"$@\"; fi\nHOST_ARGV='{packed}' exec '{real}'\n",
            real = real.display(),
            packed = pack_args(&other)
        ),
    );
    let out = host.command(&["upgrade"], UPGRADE_TIMEOUT);
    assert!(!out.status.success(), "the upgrade did not fail: {}\n{}", out.stdout, host.log());
    assert_contains!(out.stderr, format!("the master (pid {pid}) went back to the previous binary"));
    assert_eq!(host.worker_pids(), workers, "the workers were not kept");
    // A worker that dies now is replaced from the worker binary the master had.
    host_tests::signal_pid(workers[0], host_tests::Signal::SIGKILL);
    let _ = workers_on(&host, old, &workers[..1]);
    hello(port);
}
