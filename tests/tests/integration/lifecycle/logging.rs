//! Logging.

use super::*;

/// The JSON objects of a log; panics on a line that is not one.
fn json_lines(log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match serde_json::from_str::<serde_json::Value>(l) {
            Ok(v) if v.is_object() => v,
            _ => panic!("not a JSON object: {l:?}\nwhole log:\n{log}"),
        })
        .collect()
}

// `--log-format json` reaches the workers (they are started with the master's log level and
// format): a worker's line is JSON and carries its `worker` span.
#[test]
fn json_log_lines_are_json_and_carry_the_worker_span() {
    let mut host = Host::start("http", &["--log-format", "json"]);
    let worker = host.wait_workers(1, Duration::from_secs(2), |_| true).unwrap()[0];
    host.signal(Signal::SIGINT);
    let (status, log) = host.finish(EXIT_TIMEOUT);
    assert!(status.success(), "{status}");
    let lines = json_lines(&log);
    let ready = lines
        .iter()
        // A module of the worker (`host::worker::event_loop`): `RUST_LOG=host::worker=…` covers it.
        .find(|v| {
            v["target"].as_str().is_some_and(|t| t.starts_with("host::worker"))
                && v["fields"]["message"] == "plugin loaded"
        })
        .unwrap_or_else(|| panic!("no plugin loaded line from the worker:\n{log}"));
    let span = &ready["span"];
    assert_eq!(span["name"], "worker", "{ready}");
    assert_eq!(span["service"], "http", "{ready}");
    assert_eq!(span["slot"], 0, "{ready}");
    assert_eq!(span["pid"], worker, "{ready}");
    assert!(ready["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["name"] == "worker")), "{ready}");
}

// The master's own lines under `--log-format json` are JSON objects with stable fields.
#[test]
fn json_log_lines_of_the_master_are_json() {
    let mut host = Host::start("http", &["--log-format", "json"]);
    let worker = host.wait_workers(1, Duration::from_secs(2), |_| true).unwrap()[0];
    host.signal(Signal::SIGINT);
    let (status, log) = host.finish(EXIT_TIMEOUT);
    assert!(status.success(), "{status}");
    let master_lines: String = log.lines().filter(|l| !l.contains("worker{")).map(|l| format!("{l}\n")).collect();
    let lines = json_lines(&master_lines);
    let started = lines
        .iter()
        .find(|v| v["fields"]["message"] == "worker started")
        .unwrap_or_else(|| panic!("no worker started line:\n{log}"));
    assert_eq!(started["fields"]["service"], "http", "{started}");
    assert_eq!(started["fields"]["slot"], 0, "{started}");
    assert_eq!(started["fields"]["pid"], worker, "{started}");
    assert!(lines.iter().any(|v| v["fields"]["message"] == "host ready" && v["level"] == "INFO"), "{log}");
}

// `--log-level warn` applies to the workers too: no info line from anyone.
#[test]
fn log_level_applies_to_the_workers() {
    let mut host = Host::spawn(["--plugin", "http", "--listen", "127.0.0.1:0", "--log-level", "warn"]);
    poll_until(READY_TIMEOUT, || (host.worker_pids().len() == 1).then_some(())).expect("a worker");
    std::thread::sleep(Duration::from_millis(300));
    host.signal(Signal::SIGINT);
    let (_, log) = host.finish(EXIT_TIMEOUT);
    let info: Vec<&str> = log.lines().filter(|l| l.contains(" INFO ")).collect();
    assert!(info.is_empty(), "info lines under --log-level warn:\n{log}");
}
