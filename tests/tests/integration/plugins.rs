//! Finding plugins and refusing bad ones with a short, clear message (abi_stable's own report
//! runs to hundreds of lines).

use std::path::{Path, PathBuf};
use std::time::Duration;

use host_tests::{assert_contains, assert_not_contains, garbage, plugin_file, run_host, target_dir, Host, TempDir};

const EXIT_TIMEOUT: Duration = Duration::from_secs(8);
/// What a user can read at a glance.
const SHORT: usize = 10;

/// The lines of `text` that are not empty.
fn lines(text: &str) -> usize {
    text.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Runs `host --plugin PLUGIN --listen 127.0.0.1:0 EXTRA…`, which must fail to start; returns its
/// stderr once the master and everything it started are gone.
fn start_must_fail(plugin: &str, extra: &[&str]) -> String {
    let mut args = vec!["--plugin", plugin, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut host = Host::spawn(&args);
    let status = host.wait_all_gone(EXIT_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (_, log) = host.finish(EXIT_TIMEOUT);
    assert!(!status.success(), "{args:?} should fail, but: {status}\n{log}");
    assert_eq!(host.log().count("host ready"), 0, "{log}");
    log
}

/// Runs `host check-plugin PATH`, which must fail; returns its stderr.
fn check_must_fail(path: &Path) -> String {
    let out = run_host([Path::new("check-plugin"), path], EXIT_TIMEOUT);
    assert!(!out.status.success(), "check-plugin {} passed: {out:?}", path.display());
    assert_eq!(out.stdout, "", "check-plugin {}", path.display());
    out.stderr
}

// The real plugins pass the check, which prints `name version (ABI n)`.
#[test]
fn check_plugin_prints_name_version_and_abi() {
    let out = run_host([Path::new("check-plugin"), &plugin_file("http")], EXIT_TIMEOUT);
    assert!(out.status.success(), "{out:?}");
    let version = env!("CARGO_PKG_VERSION"); // one workspace version
    assert_eq!(out.stdout, format!("http {version} (ABI 1)\n"));
}

// An unknown name fails at once, naming the plugin and every file looked for.
#[test]
fn missing_plugin_names_the_directories_searched() {
    let dir = TempDir::new();
    let (a, b) = (dir.join("a"), dir.join("b"));
    let (a, b) = (a.display().to_string(), b.display().to_string());
    let log = start_must_fail("no_such_plugin", &["--plugin-dir", &a, "--plugin-dir", &b]);
    assert_contains!(log, "`no_such_plugin` not found");
    for tried in [
        format!("{a}/no_such_plugin.so"),
        format!("{a}/libno_such_plugin.so"),
        format!("{b}/no_such_plugin.so"),
        format!("{b}/libno_such_plugin.so"),
    ] {
        assert_contains!(log, tried);
    }
    assert!(lines(&log) < SHORT, "{log}");
}

// Without --plugin-dir: ./plugins, then the host binary's directory.
#[test]
fn missing_plugin_lists_the_default_directories() {
    let log = start_must_fail("no_such_plugin", &[]);
    assert_contains!(log, "plugins/no_such_plugin.so");
    assert_contains!(log, format!("{}/libno_such_plugin.so", target_dir().display()));
}

// A file of random bytes named `.so`: refused in a line or two that names it.
#[test]
fn garbage_file_is_refused_briefly() {
    let dir = TempDir::new();
    let path = dir.write("x.so", garbage(8192));
    let shown = path.display().to_string();
    let err = check_must_fail(&path);
    assert!(lines(&err) < SHORT, "{err}");
    assert_contains!(err, shown);
    let log = start_must_fail(&shown, &[]);
    assert!(lines(&log) < SHORT, "{log}");
    assert_contains!(log, shown);
}

/// A shared library of the system that is not a plugin.
fn system_library() -> Option<PathBuf> {
    [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib/aarch64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib64/libm.so.6",
        "/usr/lib/libm.so.6",
        "/lib/libm.so.6",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

// A real ELF library that is no plugin: a short message that says what is wrong, without
// abi_stable's mangled symbol names.
#[test]
fn shared_library_that_is_no_plugin_is_refused_clearly() {
    let Some(lib) = system_library() else {
        eprintln!("note: no libm.so.6 found on this system; test skipped");
        return;
    };
    let dir = TempDir::new();
    let path = dir.join("libm.so");
    std::fs::copy(&lib, &path).unwrap();
    let err = check_must_fail(&path);
    assert!(lines(&err) < SHORT, "{err}");
    assert_contains!(err, path.display().to_string());
    // Today: "Could load symbol: _1as_0lib_1header_0root_bmodule_bloader in library: … undefined
    // symbol: _1as_0lib_1header_0root_bmodule_bloader" (sic: abi_stable's wording).
    assert_not_contains!(err, "_1as_0lib", "the user should read that it is not a plugin");
    assert_contains!(err.to_lowercase(), "not a", "e.g. `… is not a host plugin`");
}

// A plugin built against an incompatible plugin-api (tests/fixtures/bad_abi: `abi_version` is a
// u8): refused by abi_stable's layout check, reported as the gist of its report.
#[test]
fn incompatible_abi_is_refused_with_the_mismatch() {
    let path = plugin_file("fixture_bad_abi");
    let err = check_must_fail(&path);
    assert!(lines(&err) < 3, "{err}");
    assert_contains!(err, path.display().to_string());
    assert_contains!(err, "mismatched type Expected: u32 Found: u8");
    let log = start_must_fail("fixture_bad_abi", &[]);
    assert!(lines(&log) < SHORT, "{log}");
    assert_contains!(log, "mismatched type Expected: u32 Found: u8");
    assert!(!log.contains("worker started"), "{log}");
}

// The master checks a copy of the plugin (a snapshot in its runtime dir), but the user named
// the file in the plugin dir: the error names that file, and says it once.
#[test]
fn refused_plugin_at_start_is_reported_once_by_its_own_path() {
    let path = plugin_file("fixture_bad_abi");
    let log = start_must_fail("fixture_bad_abi", &[]);
    assert_contains!(log, path.display().to_string());
    assert_eq!(log.matches("mismatched type").count(), 1, "the reason is repeated:\n{log}");
}

// A plugin whose worker-start hook fails: the master gives up with the plugin's words and
// leaves no worker behind (start_must_fail waits for the whole process group to be gone).
#[test]
fn failing_worker_start_fails_the_start() {
    let log = start_must_fail("fixture_start_fail", &["--count", "2"]);
    assert_contains!(log, "fixture refuses to start");
    let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    assert!(last.starts_with("error: "), "the last line is the error: {log}");
    assert_contains!(last, "fixture refuses to start");
}

// A plugin with an unresolved symbol is refused by the probe (immediate binding), naming the
// symbol, instead of passing and killing its worker on first use.
#[test]
fn a_plugin_with_an_unresolved_symbol_is_refused_at_the_probe() {
    let log = start_must_fail("fixture_unresolved", &[]);
    assert_contains!(log, "host_fixture_symbol_that_does_not_exist");
    assert_not_contains!(log, "worker started");
}

// `host reload` whose new plugin file is refused still recycles the workers on the last good
// snapshot, but exits with code 4 (documented in the README), so that a deploy script can tell.
#[test]
fn a_manual_reload_whose_file_is_refused_exits_4() {
    let dir = host_tests::plugin_dir::PluginDir::new();
    let bytes = std::fs::read(plugin_file("http")).unwrap();
    dir.mv("http.so", &bytes);
    let mut host = Host::start("http", &["--plugin-dir", &dir.arg()]);
    let out = host.command(["reload"], Duration::from_secs(60));
    assert!(out.status.success(), "a good file reloads with 0: {out:?}");
    dir.mv("http.so", &bytes[..bytes.len() / 2]);
    // The watcher's own reload is refused first; the manual one comes after it.
    host.wait_for_log("reload aborted", Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let out = host.command(["reload"], Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_contains!(out.stderr, "plugin file refused");
    assert_contains!(out.stderr, "truncated");
}

/// Kills, on drop, the daemon master named by a pid file and its workers (a test that fails
/// half-way leaves nothing running).
struct DaemonGuard(PathBuf);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let Some(pid) = std::fs::read_to_string(&self.0).ok().and_then(|t| t.trim().parse::<i32>().ok()) else {
            return;
        };
        if host_tests::cmdline(pid).is_some_and(|c| c.starts_with("host: master")) {
            for worker in host_tests::children(pid) {
                let _ = kill(Pid::from_raw(worker), Signal::SIGKILL);
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

fn echo(port: u16, line: &str) {
    let mut c = host_tests::Client::connect(port);
    c.send(format!("{line}\n").as_bytes());
    let back = c.read_line().unwrap_or_else(|e| panic!("no echo from port {port}: {e}"));
    assert_eq!(String::from_utf8_lossy(&back), format!("{line}\n"));
}

// `--plugin ./x/libtext.so` is found from the directory of the start, with `-d` too (the daemon
// changes to `/` before it looks); `restart -d` works, and a restart whose plugin file is gone
// is refused before the running host is stopped.
#[test]
fn a_relative_plugin_path_works_with_d_and_restart_never_stops_what_it_cannot_start() {
    let dir = TempDir::new();
    std::fs::create_dir(dir.join("x")).unwrap();
    std::fs::copy(plugin_file("text"), dir.join("x/libtext.so")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let pid_file = dir.join("t.pid").display().to_string();
    let _guard = DaemonGuard(dir.join("t.pid"));
    let timeout = Duration::from_secs(30);
    let start = ["start", "-d", "--pid-file", &pid_file, "--plugin", "./x/libtext.so", "--listen", &listen];
    let out = host_tests::run_host_in(dir.path(), start, timeout);
    assert!(out.status.success(), "start -d: {out:?}");
    echo(port, "first");
    let out = host_tests::run_host_in(dir.path(), ["restart", "-d", "--pid-file", &pid_file], timeout);
    assert!(out.status.success(), "restart -d: {out:?}");
    echo(port, "second");
    let running = std::fs::read_to_string(dir.join("t.pid")).unwrap();
    std::fs::remove_file(dir.join("x/libtext.so")).unwrap();
    let out = host_tests::run_host_in(dir.path(), ["restart", "-d", "--pid-file", &pid_file], timeout);
    assert!(!out.status.success(), "a restart that cannot start: {out:?}");
    assert_contains!(out.stderr, "nothing was stopped");
    assert_eq!(std::fs::read_to_string(dir.join("t.pid")).unwrap(), running, "the master changed");
    echo(port, "still there");
    let out = host_tests::run_host_in(dir.path(), ["stop", "--pid-file", &pid_file], timeout);
    assert!(out.status.success(), "stop: {out:?}");
}
