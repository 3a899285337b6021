//! Hot reload (docs/architecture.md, "The reload pipeline"): the master watches the plugin directories; a plugin file
//! that changed is checked, copied to a snapshot, probed, and then a chain replaces the service's
//! workers one at a time (start new, wait ready, drain old). A refused file aborts the chain and
//! the old workers keep serving. Every test but the `cargo build` one uses a private
//! `--plugin-dir`, so no build elsewhere can trigger its host.
//!
//! New versions of a plugin are variants of the real file with a trailer appended (the same code,
//! a new content hash), put in place by `mv` (a new inode) or `cp` (the loaded inode truncated and
//! rewritten: docs/architecture.md pitfall 1).

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use host_tests::cargo_plugin::CargoPlugin;
use host_tests::copied_host::CopiedHost;
use host_tests::load::{Load, Tally};
use host_tests::plugin_dir::{file_hash, short_hash, variant, PluginDir};
use host_tests::status::{status, wait_status};
use host_tests::{
    assert_contains, assert_not_contains, garbage, get, is_alive, plugin_file, poll_until, signal_pid, Client, Host,
    Signal, READY_TIMEOUT,
};

/// From a file write to the end of its chain: 300 ms of quiet, the check and the probe, then one
/// start per worker (debug builds, other tests running beside).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// For old workers to drain and exit, or a status to show what is expected.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The real http plugin's bytes.
fn http_bytes() -> Vec<u8> {
    fs::read(plugin_file("http")).unwrap()
}

/// A new version of the http plugin.
fn http_variant(tag: &str) -> Vec<u8> {
    variant(&plugin_file("http"), tag)
}

/// `host --plugin PLUGIN --count COUNT --plugin-dir DIR`, ready.
fn start(dir: &PluginDir, plugin: &str, count: u32) -> Host {
    Host::start(plugin, &["--count", &count.to_string(), "--plugin-dir", &dir.arg()])
}

fn wait_workers(host: &Host, n: usize) -> Vec<i32> {
    host.wait_workers(n, SETTLE_TIMEOUT, |_| true).unwrap_or_else(|e| panic!("{e}"))
}

fn hello(port: u16) {
    let r = Client::connect(port).request(&get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "Hello, World!");
}

/// Starts clients and waits until they are answered.
fn start_load(port: u16, clients: usize) -> Load {
    let load = Load::http_get(port, clients);
    assert!(load.wait_more(20, SETTLE_TIMEOUT), "the clients get no answers");
    load
}

/// Stops the clients; not one request may have failed.
fn finish_load(load: Load) -> Tally {
    let tally = load.finish();
    assert!(tally.failed == 0 && tally.ok > 0, "requests failed: {tally:#?}");
    tally
}

/// The lines of the log that contain every one of `patterns`.
fn lines_with(host: &Host, patterns: &[&str]) -> Vec<String> {
    host.log_text().lines().filter(|l| patterns.iter().all(|p| l.contains(p))).map(String::from).collect()
}

/// No two chains at once, and within a chain one replacement at a time: the log never starts a
/// chain before the previous one is done or aborted, nor a replacement worker before the previous
/// one replaced its slot or failed.
fn assert_one_chain_one_slot_at_a_time(log: &str) {
    let mut chain: Option<&str> = None;
    let mut replacement: Option<&str> = None;
    for line in log.lines() {
        if line.contains("reload starting") {
            assert!(chain.is_none(), "a chain started during another:\n{}\n{line}\n\nlog:\n{log}", chain.unwrap());
            chain = Some(line);
        } else if line.contains("reload done") || line.contains("reload aborted") {
            chain = None;
        } else if line.contains("worker started") && line.contains("role=Replacement") {
            assert!(chain.is_some(), "a replacement outside a chain: {line}\n\nlog:\n{log}");
            let previous = replacement.replace(line);
            assert!(previous.is_none(), "two replacements at once:\n{}\n{line}\n\nlog:\n{log}", previous.unwrap());
        } else if line.contains("reload step: slot replaced") || line.contains("replacement worker failed") {
            replacement = None;
        }
    }
}

/// Replaces `plugins/http.so` of a running service with `how`, and checks that every worker is
/// replaced, one at a time, while two clients are answered throughout.
fn assert_replaced_by(how: fn(&PluginDir, &str, &[u8])) {
    let dir = PluginDir::new();
    dir.mv("http.so", &http_bytes());
    let host = start(&dir, "http", 4);
    let old = wait_workers(&host, 4);
    let load = start_load(host.port(), 2);

    let new = http_variant("next");
    let hash = short_hash(&new);
    how(&dir, "http.so", &new);
    let done = host.log().wait_for("reload done", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_contains!(done, "replaced=4");
    // The old workers drain and exit: four new processes, none of the old ones.
    let new_pids = host
        .wait_workers(4, SETTLE_TIMEOUT, |pids| pids.iter().all(|p| !old.contains(p)))
        .unwrap_or_else(|e| panic!("the old workers {old:?} are not all replaced: {e}"));
    let s = wait_status(&host, SETTLE_TIMEOUT, |s| s.all_on("http", 4, &hash)).unwrap_or_else(|e| panic!("{e}"));
    let mut shown: Vec<i32> = s.workers.iter().map(|w| w.pid).collect();
    shown.sort_unstable();
    assert_eq!(shown, new_pids, "status shows other workers than run:\n{}", s.text);
    assert!(s.last_reload.starts_with("done: 4 workers replaced"), "{}", s.text);
    let steps = lines_with(&host, &["reload step: slot replaced", &format!("new_hash={hash}")]);
    assert_eq!(steps.len(), 4, "{steps:#?}");
    // The service answered throughout, and still does.
    assert!(load.wait_more(20, SETTLE_TIMEOUT), "no answers after the reload");
    finish_load(load);
    let log = host.log_text();
    assert_not_contains!(log, "worker died");
    assert_one_chain_one_slot_at_a_time(&log);
    // Every old worker drained and exited cleanly (a signal would be SIGBUS or SIGSEGV here).
    assert!(s.exits.iter().all(|e| e.how == "exit code 0"), "{}", s.text);
    assert_eq!(s.exits.iter().map(|e| e.count).sum::<u64>(), 4, "{}", s.text);
}

// `mv new.so plugins/http.so` (a new inode, as `install` and deploy scripts do): every worker is
// replaced and runs the new file, and the service answers throughout.
#[test]
fn mv_over_the_plugin_replaces_every_worker() {
    assert_replaced_by(PluginDir::mv);
}

// `cp new.so plugins/http.so` truncates the loaded file and rewrites it in place, which crashes
// every process that mapped it (docs/architecture.md pitfall 1). Workers map a private snapshot, so the
// reload goes as with `mv`: no worker dies, of a signal or otherwise, and no request fails.
#[test]
fn cp_over_the_loaded_plugin_replaces_every_worker_and_crashes_none() {
    assert_replaced_by(PluginDir::cp);
}

// The same bytes written again (by `cp`, then by `mv`): the hash did not change, no worker is
// replaced.
#[test]
fn identical_file_is_not_reloaded() {
    let dir = PluginDir::new();
    let bytes = http_bytes();
    dir.mv("http.so", &bytes);
    let host = start(&dir, "http", 2);
    let before = wait_workers(&host, 2);
    dir.cp("http.so", &bytes);
    host.log().wait_for("plugin file unchanged; not reloaded", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    dir.mv("http.so", &bytes);
    host.log().wait_for_nth("plugin file unchanged; not reloaded", 2, RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(host.worker_pids(), before);
    assert_eq!(host.log().count("reload starting"), 0, "{}", host.log_text());
    let s = status(&host);
    assert!(s.all_on("http", 2, &short_hash(&bytes)), "{}", s.text);
    assert!(s.last_reload.starts_with("none; since then: unchanged, not reloaded"), "{}", s.text);
    hello(host.port());
}

/// How far a refused candidate gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// By the master's checks (ELF, probe): no worker ever loads it.
    BeforeAnyWorker,
    /// By the replacement worker, which fails to start and exits.
    ByTheReplacement,
}

/// A running service (two workers) whose plugin file `file` is replaced by `put`: the chain is
/// aborted with `reason`, no worker changes, the service answers throughout, and `status` says
/// why. The service is `--plugin http`, or with `by_path` `--plugin /path/to/FILE`.
fn assert_refused(file: &str, by_path: bool, put: impl FnOnce(&PluginDir), reason: &str, how: Refused) {
    let dir = PluginDir::new();
    let bytes = http_bytes();
    dir.mv(file, &bytes);
    let plugin = if by_path { dir.file(file).display().to_string() } else { "http".to_string() };
    let service = Path::new(file).file_stem().unwrap().to_str().unwrap().to_string();
    let host = start(&dir, &plugin, 2);
    let before = wait_workers(&host, 2);
    let load = start_load(host.port(), 2);

    put(&dir);
    let aborted = host.log().wait_for("reload aborted", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_contains!(aborted, reason);
    assert_contains!(aborted, "the old workers keep serving");
    // Not one worker changed (a replacement that failed has exited).
    host.wait_workers(2, SETTLE_TIMEOUT, |pids| pids == before.as_slice())
        .unwrap_or_else(|e| panic!("the workers changed: {e}\n{}", host.log_text()));
    let s = status(&host);
    assert!(s.all_on(&service, 2, &short_hash(&bytes)), "{}", s.text);
    assert!(s.last_reload.starts_with(&format!("aborted at {service} #0 (0 replaced before): ")), "{}", s.text);
    assert_contains!(s.last_reload, reason);
    assert!(load.wait_more(20, SETTLE_TIMEOUT), "no answers after the refused reload");
    finish_load(load);
    hello(host.port());
    let replacements = lines_with(&host, &["worker started", "role=Replacement"]);
    match how {
        Refused::BeforeAnyWorker => assert!(replacements.is_empty(), "{replacements:#?}"),
        Refused::ByTheReplacement => {
            assert_eq!(replacements.len(), 1, "the chain goes no further than its first slot: {replacements:#?}");
            let failed = lines_with(&host, &["replacement worker failed"]);
            assert_eq!(failed.len(), 1, "{}", host.log_text());
            assert_contains!(failed[0], reason);
            let pid: i32 = replacements[0]
                .split_whitespace()
                .find_map(|f| f.strip_prefix("pid="))
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no pid= in {:?}", replacements[0]));
            assert!(!is_alive(pid), "the failed replacement {pid} still runs");
        }
    }
    let log = host.log_text();
    assert_not_contains!(log, "worker died");
    assert_eq!(host.log().count("reload step"), 0, "{log}");
    assert_one_chain_one_slot_at_a_time(&log);
}

// The first half of the plugin, renamed into place: the section headers are missing, the master
// refuses it before any process loads it.
#[test]
fn truncated_plugin_is_refused_and_the_old_workers_serve() {
    let half = {
        let bytes = http_bytes();
        bytes[..bytes.len() / 2].to_vec()
    };
    assert_refused(
        "http.so",
        false,
        |dir| dir.mv("http.so", &half),
        "is not a complete ELF file: truncated",
        Refused::BeforeAnyWorker,
    );
}

// Random bytes written over the loaded plugin.
#[test]
fn random_bytes_are_refused_and_the_old_workers_serve() {
    assert_refused(
        "http.so",
        false,
        |dir| dir.cp("http.so", &garbage(64 * 1024)),
        "no ELF header",
        Refused::BeforeAnyWorker,
    );
}

// A plugin built against an incompatible plugin-api, over a service named by path (which takes
// any plugin name): the probe refuses it with the layout mismatch.
#[test]
fn incompatible_abi_is_refused_and_the_old_workers_serve() {
    let bad = fs::read(plugin_file("fixture_bad_abi")).unwrap();
    assert_refused(
        "svc.so",
        true,
        |dir| dir.cp("svc.so", &bad),
        "mismatched type Expected: u32 Found: u8",
        Refused::BeforeAnyWorker,
    );
}

// A plugin that passes the probe but whose worker-start hook fails: the replacement worker dies,
// the chain stops there, the old workers keep serving.
#[test]
fn failing_replacement_aborts_the_chain_and_the_old_workers_serve() {
    let start_fail = fs::read(plugin_file("fixture_start_fail")).unwrap();
    assert_refused(
        "svc.so",
        true,
        |dir| dir.cp("svc.so", &start_fail),
        "fixture refuses to start",
        Refused::ByTheReplacement,
    );
}

// The same when even the plugin directory does not exist yet: it is watched once it appears,
// and a plugin already in it when that happens counts.
#[test]
fn config_service_starts_when_its_plugin_directory_appears() {
    let root = host_tests::TempDir::new();
    let config = root.write(
        "host.toml",
        "plugin_dirs = [\"plugins\"]\n\n[[service]]\nname = \"text\"\nplugin = \"text\"\nlisten = \"127.0.0.1:0\"\n",
    );
    let host = Host::spawn([Path::new("-c"), &config]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let port = host.port();
    // Made elsewhere and moved in whole: the directory appears with the plugin already inside.
    let staging = root.join("staging");
    fs::create_dir(&staging).unwrap();
    fs::copy(plugin_file("text"), staging.join("text.so")).unwrap();
    fs::rename(&staging, root.join("plugins")).unwrap();
    host.log().wait_for("plugin appeared; starting the service", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    host.wait_for_log("worker ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let mut c = Client::connect(port);
    c.send(b"here\n");
    assert_eq!(c.read_line().unwrap(), b"here\n");
}

// A service from a config file whose plugin file does not exist yet: the host starts, `status`
// says what the service waits for, and the service starts when the file is moved in.
#[test]
fn config_service_starts_when_its_plugin_file_appears() {
    let dir = PluginDir::new();
    // Port 0: the system picks one and the log names it (config_file.rs allows it).
    let config = dir.root().write(
        "host.toml",
        "plugin_dirs = [\"plugins\"]\n\n[[service]]\nname = \"text\"\nplugin = \"text\"\nlisten = \"127.0.0.1:0\"\ncount = 2\n",
    );
    let host = Host::spawn([Path::new("-c"), &config]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let port = host.port();
    let s = status(&host);
    assert_eq!(s.services.len(), 1, "{}", s.text);
    assert_eq!(s.services[0].plugin, "waiting for text", "{}", s.text);
    assert!(s.workers.is_empty(), "{}", s.text);
    assert!(host.worker_pids().is_empty());

    let bytes = fs::read(plugin_file("text")).unwrap();
    dir.mv("text.so", &bytes);
    host.log().wait_for("plugin appeared; starting the service", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let s = wait_status(&host, SETTLE_TIMEOUT, |s| s.all_on("text", 2, &short_hash(&bytes)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(s.services[0].plugin.starts_with("text "), "{}", s.text);
    for line in ["one\n", "two\n", "three\n"] {
        let mut c = Client::connect(port);
        c.send(line.as_bytes());
        assert_eq!(c.read_line().unwrap(), line.as_bytes());
    }
    assert_not_contains!(host.log_text(), "worker died");
}

// `rm plugins/http.so`: nothing happens to the workers (they run a snapshot); a worker that dies
// meanwhile restarts from that snapshot; a new file moved back in is reloaded.
#[test]
fn removed_plugin_file_leaves_the_workers_serving() {
    let dir = PluginDir::new();
    dir.mv("http.so", &http_bytes());
    let host = start(&dir, "http", 2);
    let port = host.port();
    let before = wait_workers(&host, 2);

    let load = start_load(port, 2);
    dir.rm("http.so");
    // Longer than the watcher's quiet time (300 ms) plus a check.
    std::thread::sleep(Duration::from_millis(1000));
    assert!(load.wait_more(20, SETTLE_TIMEOUT), "no answers after the file was removed");
    finish_load(load);
    assert_eq!(host.worker_pids(), before, "{}", host.log_text());
    for what in ["reload starting", "reload refused", "reload aborted"] {
        assert_eq!(host.log().count(what), 0, "{}", host.log_text());
    }

    let victim = before[0];
    signal_pid(victim, Signal::SIGKILL);
    let after = host
        .wait_workers(2, SETTLE_TIMEOUT, |pids| !pids.contains(&victim))
        .unwrap_or_else(|e| panic!("no replacement for worker {victim}: {e}"));
    let new = *after.iter().find(|p| !before.contains(p)).unwrap();
    host.log()
        .wait_for_all(&["worker ready", &format!("pid={new}")], SETTLE_TIMEOUT)
        .unwrap_or_else(|e| panic!("the restarted worker did not get ready without the file: {e}"));
    for _ in 0..10 {
        hello(port);
    }

    let load = start_load(port, 2);
    let back = http_variant("back");
    dir.mv("http.so", &back);
    host.log().wait_for("reload done replaced=2", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    wait_status(&host, SETTLE_TIMEOUT, |s| s.all_on("http", 2, &short_hash(&back))).unwrap_or_else(|e| panic!("{e}"));
    finish_load(load);
    assert_eq!(host.log().count("worker died"), 1, "only the worker the test killed:\n{}", host.log_text());
}

/// The state letter of `/proc/PID/stat` (`T`: stopped).
fn process_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().next()?.chars().next()
}

/// SIGSTOPs the master and waits until it is stopped, and until its last log lines are read.
fn freeze(host: &Host) {
    host.signal(Signal::SIGSTOP);
    poll_until(SETTLE_TIMEOUT, || (process_state(host.pid()) == Some('T')).then_some(()))
        .unwrap_or_else(|| panic!("the master did not stop"));
    std::thread::sleep(Duration::from_millis(50));
}

// Triggers while a reload is under way: no two chains at once, one slot at a time, and the
// workers end on the newest file. First two files 50 ms apart (the watcher's quiet time merges
// them). Then a trigger that surely lands in a chain: when the log says a chain started, the
// master is frozen (SIGSTOP), a newer file is moved in and SIGHUP sent, and the master thawed: it
// reads the signal with the chain under way, queues it, and runs it once the chain is over.
#[test]
fn triggers_during_a_chain_end_on_the_newest_file() {
    let dir = PluginDir::new();
    dir.mv("http.so", &http_bytes());
    let host = start(&dir, "http", 4);
    let load = start_load(host.port(), 2);

    let (a, b) = (http_variant("a"), http_variant("b"));
    dir.mv("http.so", &a);
    std::thread::sleep(Duration::from_millis(50));
    dir.mv("http.so", &b);
    wait_status(&host, RELOAD_TIMEOUT, |s| s.all_on("http", 4, &short_hash(&b))).unwrap_or_else(|e| panic!("{e}"));

    // A chain is short (a few ms per worker): a try that freezes the master too late is repeated.
    let mut newest = String::new();
    for attempt in 0.. {
        assert!(attempt < 5, "the master was never frozen during a chain:\n{}", host.log_text());
        let chains = host.log().count("reload starting");
        let next = http_variant(&format!("c{attempt}"));
        dir.mv("http.so", &next);
        host.log().wait_for_nth("reload starting", chains + 1, RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        freeze(&host);
        let in_chain = host.log().count("reload done") < chains + 1;
        let newer = http_variant(&format!("d{attempt}"));
        newest = short_hash(&newer);
        dir.mv("http.so", &newer);
        host.signal(Signal::SIGHUP);
        host.signal(Signal::SIGCONT);
        if in_chain {
            host.log().wait_for("reload queued", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
            break;
        }
        eprintln!("note: the master was frozen after its chain (attempt {attempt}); trying again");
        wait_status(&host, RELOAD_TIMEOUT, |s| s.all_on("http", 4, &newest)).unwrap_or_else(|e| panic!("{e}"));
    }
    wait_status(&host, RELOAD_TIMEOUT, |s| s.all_on("http", 4, &newest)).unwrap_or_else(|e| panic!("{e}"));
    // The watcher's own report of the newest file merges into the check that loads it, or comes
    // after the chain (then the file is unchanged): either way nothing is left queued.
    poll_until(RELOAD_TIMEOUT, || {
        let log = host.log_text();
        let settled = log
            .rfind("reload done")
            .max(log.rfind("plugin file unchanged; not reloaded"))
            .max(log.rfind("nothing to replace"));
        (settled > log.rfind("reload queued").max(log.rfind("reload merged"))).then_some(())
    })
    .unwrap_or_else(|| panic!("a reload stayed queued:\n{}", host.log_text()));
    let s = status(&host);
    assert!(s.all_on("http", 4, &newest), "{}", s.text);
    // A preempted chain ends with the chain that moved the remaining slots to the newest file.
    assert!(s.last_reload.starts_with("done: "), "{}", s.text);
    finish_load(load);
    let log = host.log_text();
    assert_one_chain_one_slot_at_a_time(&log);
    assert_not_contains!(log, "worker died");
    assert_not_contains!(log, "reload aborted");
}

// Reload under load, in short: 8 keep-alive clients while three new files are moved in one after
// another (each once the previous reload is done). Not one request fails, every reload reaches
// all 4 workers, and the clients' connections move with each (no `Connection: close`). Timing
// figures are bench/reload.sh's business.
#[test]
fn reloads_under_load_lose_no_request() {
    let dir = PluginDir::new();
    dir.mv("http.so", &http_bytes());
    let host = start(&dir, "http", 4);
    let load = start_load(host.port(), 8);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    for i in 1..=3 {
        let bytes = http_variant(&format!("load {i}"));
        last = short_hash(&bytes);
        dir.mv("http.so", &bytes);
        let left = deadline.saturating_duration_since(Instant::now());
        let done = host.log().wait_for_nth("reload done", i, left).unwrap_or_else(|e| panic!("{e}"));
        assert_contains!(done, "replaced=4");
        let steps = lines_with(&host, &["reload step: slot replaced", &format!("new_hash={last}")]);
        assert_eq!(steps.len(), 4, "reload {i}: {steps:#?}");
        assert!(load.wait_more(50, SETTLE_TIMEOUT), "no answers after reload {i}");
    }
    let tally = finish_load(load);
    eprintln!("reloads_under_load_lose_no_request: {tally:?}");
    // The keep-alive clients' connections move to the new workers (hand-over): none is asked
    // to reconnect.
    assert_eq!(tally.close_responses, 0, "a client was asked to reconnect by a draining worker: {tally:?}");
    assert!(host.log().count("connections moved") >= 3, "{}", host.log_text());
    wait_status(&host, SETTLE_TIMEOUT, |s| s.all_on("http", 4, &last)).unwrap_or_else(|e| panic!("{e}"));
    let log = host.log_text();
    assert_not_contains!(log, "worker died");
    assert_not_contains!(log, "reload aborted");
    assert_one_chain_one_slot_at_a_time(&log);
}

/// The plugin `cargo_build_reloads_a_running_host` builds: a line protocol that answers every
/// line with `REPLY`. While its worker drains, it closes a connection after the answer (never
/// before), so a client that connects for each question loses nothing during a reload.
const HOTSWAP_SOURCE: &str = r#"//! Generated by host's integration test `reload::cargo_build_reloads_a_running_host`.
use plugin_api::{export_plugin, ConnId, Frame, Host, Protocol, WorkerInfo};

const REPLY: &str = "v1";

pub struct Hotswap;

impl Protocol for Hotswap {
    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Hotswap)
    }

    fn input(&mut self, _host: &mut Host<'_>, _conn: ConnId, buf: &[u8]) -> Frame {
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => Frame::Complete(i + 1),
            None => Frame::NeedMore,
        }
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, _line: &[u8]) {
        let reply = format!("{REPLY}\n");
        if host.is_draining() {
            host.close_with(conn, reply.as_bytes());
        } else {
            host.send(conn, reply.as_bytes());
        }
    }

    fn on_drain(&mut self, _host: &mut Host<'_>, _conn: ConnId) {}
}

export_plugin!(Hotswap);
"#;

/// One question on a new connection: the answer line, without its newline.
fn ask(port: u16) -> Result<String, String> {
    let mut c = Client::connect(port);
    c.try_send(b"which?\n").map_err(|e| format!("send: {e}"))?;
    let line = c.read_line().map_err(|e| format!("no answer: {e}"))?;
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// Asks in a loop on its own thread; collects the answers and the failures.
struct Asker {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(Vec<String>, Vec<String>)>>,
    thread: std::thread::JoinHandle<()>,
}

impl Asker {
    fn start(port: u16) -> Asker {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((Vec::new(), Vec::new())));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let answer = ask(port);
                let mut seen = v.lock().unwrap();
                match answer {
                    Ok(a) if a == "v1" || a == "v2" => seen.0.push(a),
                    Ok(other) => seen.1.push(format!("unexpected answer {other:?}")),
                    Err(e) => seen.1.push(e),
                }
                drop(seen);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Asker { stop, seen, thread }
    }

    /// Stops; returns (answers in order, failures).
    fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        let seen = self.seen.lock().unwrap();
        seen.clone()
    }
}

/// A cargo build of the generated plugin may compile `plugin-api` for it the first time, and may
/// wait for the target dir's lock while another cargo runs: far longer than a reload.
const BUILD_TIMEOUT: Duration = Duration::from_secs(240);

// The developer's loop: a plugin built by `cargo build` into the host binary's directory (a
// default plugin directory: no --plugin-dir) is reloaded by the running host when it is rebuilt.
// Slower than the other tests (seconds, up to BUILD_TIMEOUT on a cold cache) because it runs cargo
// twice on a package generated at run time.
#[test]
fn cargo_build_reloads_a_running_host() {
    let plugin = CargoPlugin::new("hotswap_fixture", HOTSWAP_SOURCE);
    let first = plugin.build(BUILD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let host = Host::start(plugin.name(), &["--count", "2"]);
    let port = host.port();
    assert_eq!(ask(port).unwrap(), "v1");
    let v1_hash = file_hash(&plugin.artifact());
    let asker = Asker::start(port);

    plugin.write_source(&HOTSWAP_SOURCE.replace(r#"const REPLY: &str = "v1";"#, r#"const REPLY: &str = "v2";"#));
    let second = plugin.build(BUILD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let built = Instant::now();
    let v2_hash = file_hash(&plugin.artifact());
    assert_ne!(v1_hash, v2_hash, "the rebuild did not change the plugin file");
    host.log().wait_for("reload done replaced=2", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    wait_status(&host, SETTLE_TIMEOUT, |s| s.all_on(plugin.name(), 2, &v2_hash)).unwrap_or_else(|e| panic!("{e}"));
    let serving = built.elapsed();
    for _ in 0..10 {
        assert_eq!(ask(port).unwrap(), "v2");
    }
    let (answers, failures) = asker.finish();
    assert!(failures.is_empty(), "{failures:#?}");
    let first_v2 = answers.iter().position(|a| a == "v2").expect("the clients never saw v2");
    assert!(first_v2 > 0, "the clients never saw v1: {answers:?}");
    eprintln!(
        "cargo_build_reloads_a_running_host: first build {first:?}, rebuild {second:?}, rebuild finished → \
         every worker on the new file {serving:?}, {} answers",
        answers.len()
    );
    let log = host.log_text();
    assert_not_contains!(log, "worker died");
    assert_one_chain_one_slot_at_a_time(&log);
}

// The host binary replaced on disk while the master runs (a rebuild with `cargo build`, an
// `install`, a package upgrade: a new file renamed over the path). The master must still start
// workers: for a reload, and to replace a worker that died. Found by this suite: the master
// exec'd `std::env::current_exe()`, which reads `/path/host (deleted)` once the file is replaced,
// so every reload was aborted ("could not start a worker process: No such file or directory")
// and a dead worker's slot stayed empty (fixed in host/src/master/spawn.rs, `host_exe`).
#[test]
fn reload_and_respawn_work_after_the_host_binary_is_replaced() {
    let dir = PluginDir::new();
    dir.mv("http.so", &http_bytes());
    let host =
        CopiedHost::start(&["--plugin", "http", "--count", "2", "--listen", "127.0.0.1:0", "--plugin-dir", &dir.arg()]);
    let before = poll_until(SETTLE_TIMEOUT, || Some(host.worker_pids()).filter(|p| p.len() == 2)).expect("2 workers");
    host.replace_binary();

    dir.mv("http.so", &http_variant("after the upgrade"));
    let outcome = poll_until(RELOAD_TIMEOUT, || {
        host.log().lines().find(|l| l.contains("reload done") || l.contains("reload aborted")).map(String::from)
    })
    .unwrap_or_else(|| panic!("the reload did not end:\n{}", host.log()));
    assert_contains!(outcome, "reload done replaced=2");

    let victim = host.worker_pids()[0];
    signal_pid(victim, Signal::SIGKILL);
    poll_until(SETTLE_TIMEOUT, || {
        let pids = host.worker_pids();
        (pids.len() == 2 && !pids.contains(&victim)).then_some(())
    })
    .unwrap_or_else(|| panic!("worker {victim} was not replaced (workers before: {before:?}):\n{}", host.log()));
}

// A plugin given by path is watched in its own directory, with no --plugin-dir naming it, and
// the start banner says which directories are watched.
#[test]
fn a_plugin_given_by_path_is_watched_in_its_directory() {
    let dir = PluginDir::new();
    let bytes = http_bytes();
    dir.mv("libhttp.so", &bytes);
    let path = dir.file("libhttp.so");
    let host = Host::start(path.to_str().unwrap(), &[]);
    let banner = host.stdout().wait_for("plugins watched in:", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_contains!(banner, dir.arg());
    let next = http_variant("by-path");
    dir.mv("libhttp.so", &next);
    host.log().wait_for("reload done replaced=1", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    wait_status(&host, RELOAD_TIMEOUT, |s| s.all_on("http", 1, &short_hash(&next))).unwrap_or_else(|e| panic!("{e}"));
    hello(host.port());
}

// An inotify watch follows the directory's inode, not its path: after `mv plugins.new plugins`
// the watch was on the old directory and hot reload silently ended. The watcher looks again
// every 2 s, watches the new directory, and takes its files as written.

/// Waits for the next chain (the `nth` since the start) to finish, and for `status` to show both
/// workers on `bytes`; the service answers.
fn assert_reloaded_to(host: &Host, nth: usize, bytes: &[u8]) {
    let done = host.log().wait_for_nth("reload done", nth, RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_contains!(done, "replaced=2");
    let hash = short_hash(bytes);
    wait_status(host, SETTLE_TIMEOUT, |s| s.all_on("http", 2, &hash)).unwrap_or_else(|e| panic!("{e}"));
    hello(host.port());
}

/// Creates `dir` holding `http.so` with `bytes` (a release of the plugin).
fn plugin_release(dir: &Path, bytes: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("http.so"), bytes).unwrap();
}

// `mv plugins plugins.old && mv plugins.new plugins`: the new directory's plugin is loaded, and a
// later `mv` into the new directory reloads again (it is watched, not only scanned once).
#[test]
fn plugin_directory_replaced_by_mv_is_watched_anew() {
    let dir = PluginDir::new();
    dir.mv("http.so", &http_bytes());
    let host = start(&dir, "http", 2);
    let old = wait_workers(&host, 2);

    let next = http_variant("new directory");
    let staged = dir.root().join("plugins.new");
    plugin_release(&staged, &next);
    fs::rename(dir.path(), dir.root().join("plugins.old")).unwrap();
    fs::rename(&staged, dir.path()).unwrap();
    assert_reloaded_to(&host, 1, &next);
    // Said in the log ("removed" instead when a check fell between the two renames).
    let said = lines_with(&host, &["plugin directory re", &dir.arg()]);
    assert!(!said.is_empty(), "{}", host.log_text());
    host.wait_workers(2, SETTLE_TIMEOUT, |pids| pids.iter().all(|p| !old.contains(p)))
        .unwrap_or_else(|e| panic!("the old workers {old:?} are not all replaced: {e}"));

    let third = http_variant("into the new directory");
    dir.mv("http.so", &third);
    assert_reloaded_to(&host, 2, &third);
    assert_not_contains!(host.log_text(), "worker died");
}

// `--plugin-dir plugins` where `plugins -> releases/1`, switched atomically (`ln -s releases/2
// plugins.tmp && mv -T plugins.tmp plugins`) to release 2, then rolled back to release 1: each
// switch reloads.
#[test]
fn plugin_directory_symlink_switched_to_another_release_reloads() {
    let root = host_tests::TempDir::new();
    let first = http_bytes();
    let second = http_variant("release 2");
    plugin_release(&root.join("releases/1"), &first);
    plugin_release(&root.join("releases/2"), &second);
    let plugins = root.join("plugins");
    std::os::unix::fs::symlink("releases/1", &plugins).unwrap();
    let switch = |release: &str| {
        let tmp = root.join("plugins.tmp");
        std::os::unix::fs::symlink(release, &tmp).unwrap();
        fs::rename(&tmp, &plugins).unwrap();
    };
    let host = Host::start("http", &["--count", "2", "--plugin-dir", plugins.to_str().unwrap()]);
    wait_workers(&host, 2);
    wait_status(&host, SETTLE_TIMEOUT, |s| s.all_on("http", 2, &short_hash(&first))).unwrap_or_else(|e| panic!("{e}"));

    switch("releases/2");
    assert_reloaded_to(&host, 1, &second);
    switch("releases/1");
    assert_reloaded_to(&host, 2, &first);
    assert_not_contains!(host.log_text(), "worker died");
}

// `plugins/http.so -> ../build/http.so`: the link's target lives outside the watched directory;
// a new build moved over the target reloads the service (its directory is watched too).
#[test]
fn plugin_file_symlinked_outside_the_directory_reloads_when_its_target_changes() {
    let dir = PluginDir::new();
    let build = dir.root().join("build");
    plugin_release(&build, &http_bytes());
    std::os::unix::fs::symlink("../build/http.so", dir.file("http.so")).unwrap();
    let host = start(&dir, "http", 2);
    wait_workers(&host, 2);

    let next = http_variant("rebuilt");
    let tmp = build.join("http.so.tmp");
    fs::write(&tmp, &next).unwrap();
    fs::rename(&tmp, build.join("http.so")).unwrap();
    assert_reloaded_to(&host, 1, &next);
}
