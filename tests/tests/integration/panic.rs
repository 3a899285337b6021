//! A panicking plugin (tests/fixtures/panic: echoes lines, panics on a line with `panic`). The
//! glue catches the panic; the host closes that connection, logs the panic, and the worker
//! goes on serving everyone else.

use std::time::Duration;

use host_tests::{assert_contains, Client, Host};

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

fn echo(c: &mut Client, line: &str) {
    c.send(line.as_bytes());
    let got = c.read_line().unwrap_or_else(|e| panic!("no echo of {line:?}: {e}"));
    assert_eq!(String::from_utf8_lossy(&got), line);
}

#[test]
fn panic_closes_that_connection_and_the_worker_lives_on() {
    let host = Host::start("fixture_panic", &["--count", "1"]);
    let port = host.port();
    let workers = host.worker_pids();
    assert_eq!(workers.len(), 1, "{workers:?}");
    let mut bystander = Client::connect(port);
    echo(&mut bystander, "before\n");

    let mut c = Client::connect(port);
    echo(&mut c, "hello\n");
    c.send(b"please panic now\n");
    let rest = c.wait_closed(CLOSE_TIMEOUT).expect("the server closes the connection whose message panicked");
    assert!(rest.is_empty(), "nothing is answered to a panic: {:?}", String::from_utf8_lossy(&rest));

    assert_eq!(host.worker_pids(), workers, "the worker must survive a plugin panic");
    echo(&mut bystander, "still here\n");
    echo(&mut Client::connect(port), "new connection\n");
    host.wait_for_log("plugin panicked in on_message", Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"));
}

// Messages before the one that panicked, in the same read, were complete: their answers are
// sent before the connection closes.
#[test]
fn answers_before_a_panic_are_still_sent() {
    let host = Host::start("fixture_panic", &["--count", "1"]);
    let mut c = Client::connect(host.port());
    c.send(b"one\ntwo\npanic\nthree\n");
    let got = c.wait_closed(CLOSE_TIMEOUT).expect("the server closes the connection");
    assert_eq!(String::from_utf8_lossy(&got), "one\ntwo\n");
}

// The panic message reaches the host's log through the plugin's log forwarder, as an error
// with the `plugin` target and where it happened.
#[test]
fn panic_is_logged_by_the_host_with_the_plugin_target() {
    let host = Host::start("fixture_panic", &["--count", "1"]);
    let mut c = Client::connect(host.port());
    c.send(b"panic\n");
    c.wait_closed(CLOSE_TIMEOUT).expect("closed");
    let line = host.wait_for_log("fixture asked to panic", Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"));
    assert_contains!(line, "ERROR");
    // Under the plugin's own target, not the host's.
    assert_contains!(line, " plugin::panic: ");
    // (The fixtures' workspace is tests/fixtures/: paths are relative to it.)
    assert_contains!(line, "panic/src/lib.rs");
}

// An ordinary `tracing` event of a plugin lands in the host's log with the plugin's target.
#[test]
fn plugin_tracing_events_reach_the_host_log() {
    let host = Host::start("fixture_panic", &["--count", "1"]);
    let line = host.wait_for_log("fixture_panic started", Duration::from_secs(2)).unwrap_or_else(|e| panic!("{e}"));
    assert_contains!(line, "INFO");
    assert_contains!(line, " fixture_panic: ");
    assert_contains!(line, "slot=0");
}

// A plugin's target filters its records like the host's own: `--log-level warn,fixture_panic=info`
// shows the plugin's info line and hides the host's.
#[test]
fn plugin_records_are_filtered_by_the_plugins_target() {
    let host =
        Host::start("fixture_panic", &["--count", "1", "--log-level", "warn,fixture_panic=info,host::master=info"]);
    let line = host.wait_for_log("fixture_panic started", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e}"));
    assert_contains!(line, " fixture_panic: ");
    assert_eq!(
        host.log().count("plugin loaded"),
        0,
        "a host::worker info line passed the filter:\n{}",
        host.log_text()
    );
}
