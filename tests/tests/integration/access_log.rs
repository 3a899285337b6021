//! Access logs: `--access-log FILE` with the `http` plugin, one Combined Log Format line per
//! response (raw clients and curl), flushed within about a second; logrotate's flow (rename,
//! `host reopen-logs`, more requests: nothing lost, nothing twice); a file that cannot be opened.

use std::path::Path;
use std::time::Duration;

use host_tests::{assert_contains, get, poll_until, run_host, Client, Host, TempDir};

use crate::http_tools::curl;

/// How long a buffered line may take to reach the file (the workers write at least once a
/// second), with room for a slow machine.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_string).collect()
}

/// Waits until `path` holds `n` lines (never more: the test fails on a duplicate).
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let mut last = Vec::new();
    let got = poll_until(FLUSH_TIMEOUT, || {
        last = lines(path);
        (last.len() >= n).then(|| last.clone())
    });
    let got =
        got.unwrap_or_else(|| panic!("{} has {} lines, not {n}:\n{}", path.display(), last.len(), last.join("\n")));
    assert_eq!(got.len(), n, "more lines than requests:\n{}", got.join("\n"));
    got
}

fn not_a_line<T>(line: &str) -> T {
    panic!("not a combined log line: {line:?}")
}

/// A Combined Log Format line, split: (remote, time, request, status, bytes, referer, agent).
fn fields(line: &str) -> (String, String, String, u16, u64, String, String) {
    let (remote, rest) = line.split_once(" - - [").unwrap_or_else(|| not_a_line(line));
    let (time, rest) = rest.split_once("] \"").unwrap_or_else(|| not_a_line(line));
    let (request, rest) = rest.split_once("\" ").unwrap_or_else(|| not_a_line(line));
    let mut it = rest.splitn(3, ' ');
    let status = it.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| not_a_line(line));
    let bytes = it.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| not_a_line(line));
    let quoted = it.next().unwrap_or_else(|| not_a_line(line));
    let (referer, agent) = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .and_then(|q| q.split_once("\" \""))
        .unwrap_or_else(|| not_a_line(line));
    // [10/Oct/2000:13:55:36 +0000]
    assert!(time.len() == 26 && time.ends_with(" +0000") && &time[2..3] == "/", "time {time:?} in {line:?}");
    (remote.into(), time.into(), request.into(), status, bytes, referer.into(), agent.into())
}

// N requests (a raw keep-alive client, a bad request, a 404 with a root, curl with a referer and
// its user agent) give N well-formed lines with the right request, status and body bytes, written
// by the workers' timer (no command, no stop).
#[test]
fn each_response_gets_one_combined_line() {
    let dir = TempDir::new();
    let log = dir.join("access.log");
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("a.txt"), "0123456789").unwrap();
    let root_config = format!("root = {:?}", root.display().to_string());
    let log_arg = log.display().to_string();
    let host = Host::start("http", &["--count", "2", "--access-log", &log_arg, "--plugin-config", &root_config]);
    let port = host.port();
    let mut c = Client::connect(port);
    for i in 0..10 {
        let r = c.request(&get(&format!("/a.txt?n={i}")));
        assert_eq!(r.status, 200);
    }
    assert_eq!(c.request(&get("/missing")).status, 404);
    let mut bad = Client::connect(port);
    bad.send(b"GET /x HTTP/1.1\r\n\r\n");
    let answer = bad.wait_closed(Duration::from_secs(5)).unwrap();
    assert_contains!(String::from_utf8_lossy(&answer), "400 Bad Request");
    let url = format!("http://127.0.0.1:{port}/a.txt?curl");
    curl(&["-o", "/dev/null", "-e", "http://example.test/\"quoted\"", &url]);

    let got = wait_lines(&log, 13);
    // One connection's lines are in order; the workers' buffers may reach the file in any order.
    let all: Vec<_> = got.iter().map(|l| fields(l)).collect();
    let keep_alive: Vec<_> = all.iter().filter(|f| f.2.starts_with("GET /a.txt?n=")).collect();
    assert_eq!(keep_alive.len(), 10, "{got:?}");
    for (i, (remote, _, request, status, bytes, referer, agent)) in keep_alive.into_iter().enumerate() {
        assert_eq!((remote.as_str(), *status, *bytes), ("127.0.0.1", 200, 10), "{got:?}");
        assert_eq!(*request, format!("GET /a.txt?n={i} HTTP/1.1"));
        assert_eq!((referer.as_str(), agent.as_str()), ("-", "-"));
    }
    let missing = all.iter().find(|f| f.2 == "GET /missing HTTP/1.1").unwrap_or_else(|| panic!("{got:?}"));
    assert_eq!(missing.3, 404);
    let rest: Vec<_> = all.iter().filter(|f| !f.2.starts_with("GET /a.txt?n=") && f.3 != 404).collect();
    let bad = rest.iter().find(|f| f.3 == 400).unwrap_or_else(|| panic!("no 400 in {got:?}"));
    assert_eq!(bad.2, "GET /x HTTP/1.1");
    let curl = rest.iter().find(|f| f.3 == 200).unwrap_or_else(|| panic!("no curl line in {got:?}"));
    assert_eq!((curl.2.as_str(), curl.4), ("GET /a.txt?curl HTTP/1.1", 10));
    assert_eq!(curl.5, r"http://example.test/\x22quoted\x22", "quotes are escaped");
    assert!(curl.6.starts_with("curl/"), "{:?}", curl.6);
}

// logrotate: the file is renamed, more requests arrive (buffered by the workers for the old
// file), `host reopen-logs` answers once every worker switched, more requests go to a new file
// at the path. Every request is in exactly one of the two files, in order.
#[test]
fn reopen_logs_after_a_rename_loses_nothing_and_repeats_nothing() {
    let dir = TempDir::new();
    let log = dir.join("access.log");
    let rotated = dir.join("access.log.1");
    let log_arg = log.display().to_string();
    let mut host = Host::start("http", &["--count", "2", "--access-log", &log_arg]);
    let port = host.port();
    let mut c = Client::connect(port);
    let ask = |c: &mut Client, n: usize| assert_eq!(c.request(&get(&format!("/?n={n}"))).status, 200);
    for n in 0..5 {
        ask(&mut c, n);
    }
    wait_lines(&log, 5);
    std::fs::rename(&log, &rotated).unwrap();
    for n in 5..10 {
        ask(&mut c, n);
    }
    let out = host.command(["reopen-logs"], COMMAND_TIMEOUT);
    assert!(out.status.success(), "reopen-logs failed: {}{}", out.stdout, out.stderr);
    assert_contains!(out.stdout, format!("reopened the access log of http {log_arg}"));
    assert_contains!(out.stdout, "2 workers switched");
    // Switched means written: the old file has the lines buffered before the command.
    assert_eq!(lines(&rotated).len(), 10, "{:?}", lines(&rotated));
    for n in 10..15 {
        ask(&mut c, n);
    }
    let new = wait_lines(&log, 5);
    let old = lines(&rotated);
    let requests = |ls: &[String]| ls.iter().map(|l| fields(l).2).collect::<Vec<_>>();
    let expect = |r: std::ops::Range<usize>| r.map(|n| format!("GET /?n={n} HTTP/1.1")).collect::<Vec<_>>();
    assert_eq!(requests(&old), expect(0..10));
    assert_eq!(requests(&new), expect(10..15));
}

// A file that cannot be reopened (its directory is gone) is reported by the command, and the
// workers keep writing to the old file.
#[test]
fn a_failed_reopen_is_reported_and_keeps_the_old_file() {
    let dir = TempDir::new();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let log = dir.join("logs/access.log");
    let log_arg = log.display().to_string();
    let mut host = Host::start("http", &["--access-log", &log_arg]);
    let port = host.port();
    std::fs::rename(dir.join("logs"), dir.join("logs.old")).unwrap();
    let out = host.command(["reopen-logs"], COMMAND_TIMEOUT);
    assert!(!out.status.success(), "reopen-logs should fail: {}", out.stdout);
    assert_contains!(out.stderr, format!("could not reopen the access log {log_arg}"));
    assert_contains!(out.stderr, "still writing to the old one");
    assert_eq!(Client::connect(port).request(&get("/?kept")).status, 200);
    let old = wait_lines(&dir.join("logs.old/access.log"), 1);
    assert_eq!(fields(&old[0]).2, "GET /?kept HTTP/1.1");
}

// A path that cannot be opened stops the start with the path and the reason.
#[test]
fn an_access_log_that_cannot_be_opened_stops_the_start() {
    let dir = TempDir::new();
    let log = dir.join("missing/access.log");
    let out = run_host(
        ["--plugin", "http", "--listen", "127.0.0.1:0", "--access-log", &log.display().to_string()],
        COMMAND_TIMEOUT,
    );
    assert!(!out.status.success(), "the host started: {}", out.stderr);
    assert_contains!(
        out.stderr,
        format!("service http: could not open the access log {}: No such file or directory", log.display())
    );
}

// Without an access log, `reopen-logs` has nothing to do and says so; a large download logs
// nothing at WARN (the loop's bounded rounds are a debug line).
#[test]
fn a_large_download_warns_about_nothing() {
    let dir = TempDir::new();
    let root = dir.join("www");
    std::fs::create_dir_all(&root).unwrap();
    let big: Vec<u8> = (0..24 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    let root_config = format!("root = {:?}", root.display().to_string());
    let mut host = Host::start("http", &["--plugin-config", &root_config]);
    let port = host.port();
    let out = dir.join("got.bin");
    curl(&["-o", &out.display().to_string(), &format!("http://127.0.0.1:{port}/big.bin")]);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), big.len() as u64);
    let answer = host.command(["reopen-logs"], COMMAND_TIMEOUT);
    assert_contains!(answer.stdout, "no log file to reopen");
    let log = host.log_text();
    assert!(!log.contains("WARN") && !log.contains("ERROR"), "{log}");
}
