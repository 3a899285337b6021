//! Worker recycling (`--max-requests`, `--max-memory`) through the fixture_crash echo plugin: a
//! worker is replaced the way a reload step replaces one (new worker first, then the old one
//! drains), so clients see no failure; a worker that allocates without bound per message is
//! recycled or killed, the master says why, and the service goes on serving.

use std::time::Duration;

use host_tests::status::wait_status;
use host_tests::{assert_contains, poll_until, Client, Host};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(30);

/// One line echoed on a new connection (the kernel picks the slot): the echo, or why not.
fn echo(port: u16, line: &str) -> Result<(), String> {
    let mut c = Client::connect(port);
    c.try_send(line.as_bytes()).map_err(|e| format!("send {line:?}: {e}"))?;
    let got = c.read_line().map_err(|e| format!("no echo of {line:?}: {e}"))?;
    (got == line.as_bytes())
        .then_some(())
        .ok_or_else(|| format!("{line:?} echoed as {:?}", String::from_utf8_lossy(&got)))
}

// Two workers with --max-requests 50: requests keep coming (each on a new connection) until both
// first workers were replaced; every request is answered, status counts the recycled exits.
#[test]
fn max_requests_replaces_the_workers_and_no_request_fails() {
    let host = Host::start("fixture_crash", &["--count", "2", "--max-requests", "50"]);
    let first = host.wait_workers(2, READY_TIMEOUT, |_| true).unwrap();
    let mut sent = 0;
    let mut failures = Vec::new();
    let replaced = poll_until(RECYCLE_TIMEOUT, || {
        for _ in 0..20 {
            sent += 1;
            if let Err(e) = echo(host.port(), &format!("request {sent}\n")) {
                failures.push(e);
            }
        }
        let now = host.worker_pids();
        (sent >= 200 && now.iter().all(|p| !first.contains(p))).then_some(())
    });
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    replaced.unwrap_or_else(|| panic!("workers {first:?} were not both replaced after {sent} requests"));
    let now = host.wait_workers(2, READY_TIMEOUT, |pids| pids.iter().all(|p| !first.contains(p))).unwrap();
    eprintln!("max_requests 50: {sent} requests, none failed, workers {first:?} → {now:?}");
    let line = host.wait_for_log("handled max_requests messages; recycling it", READY_TIMEOUT).unwrap();
    assert_contains!(line, "service=fixture_crash");
    host.wait_for_log("recycle: slot replaced", READY_TIMEOUT).unwrap();
    let s = wait_status(&host, READY_TIMEOUT, |s| {
        s.exits.iter().any(|e| e.how == "max_requests: exit code 0" && e.count >= 2)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.workers.len(), 2, "{}", s.text);
}

// A plugin that leaks 8 MiB a message, with --max-memory 64M: the worker is recycled (or killed
// when it grows on), the master logs why, and the service keeps serving.
#[test]
fn max_memory_recycles_or_kills_a_growing_worker_and_the_service_serves_on() {
    let host =
        Host::start("fixture_crash", &["--count", "2", "--max-memory", "64M", "--plugin-config", "misbehave = \"on\""]);
    let first = host.wait_workers(2, READY_TIMEOUT, |_| true).unwrap();
    let logged = poll_until(RECYCLE_TIMEOUT, || {
        // A grow line may reach a worker being killed: its echo is not awaited as a success.
        let _ = echo(host.port(), "grow\n");
        let text = host.log_text();
        (text.contains("worker reached max_memory; recycling it")
            || text.contains("worker killed: its resident memory"))
        .then_some(text)
    })
    .unwrap_or_else(|| panic!("no max_memory line in the log:\n{}", host.log_text()));
    assert_contains!(logged, "max_memory");
    let now = host.wait_workers(2, READY_TIMEOUT, |pids| pids.iter().any(|p| !first.contains(p))).unwrap();
    assert!(now.iter().any(|p| !first.contains(p)), "a grown worker was replaced: {first:?} → {now:?}");
    let why: Vec<&str> = logged.lines().filter(|l| l.contains("max_memory")).collect();
    eprintln!("max_memory 64M: workers {first:?} → {now:?}; {why:?}");
    for i in 0..10 {
        echo(host.port(), &format!("served {i}\n")).unwrap();
    }
    // Both workers may have grown past the limit: the other one may still be draining.
    let s = wait_status(&host, READY_TIMEOUT, |s| {
        s.exits.iter().any(|e| e.how.starts_with("max_memory: ")) && s.workers.len() == 2
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.workers.len(), 2, "{}", s.text);
}
