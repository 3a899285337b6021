//! ABI evolution: a plugin built against the first release of `plugin-api` (0.1.0, frozen in
//! `tests/fixtures/old_abi`) keeps loading and serving in today's host, and events that grew
//! since reach its older callbacks (`on_conn_error` → its `on_error`). Plugins built against
//! today's `plugin-api` are covered by every other test.

use std::time::Duration;

use host_tests::{assert_contains, old_abi_plugin, run_host, Client, Host, Signal};

fn read_line(c: &mut Client) -> String {
    let line = c.read_line().unwrap_or_else(|e| panic!("no line: {e}"));
    String::from_utf8_lossy(&line).into_owned()
}

#[test]
fn check_plugin_accepts_a_plugin_built_against_plugin_api_0_1_0() {
    let path = old_abi_plugin();
    let out = run_host(["check-plugin".as_ref(), path.as_os_str()], Duration::from_secs(10));
    assert!(out.status.success(), "check-plugin refused the old plugin: {}", out.stderr);
    assert_eq!(out.stdout, "old_echo 0.1.0 (ABI 1)\n");
}

// Echo through the old plugin; a message over the max package size reaches its `on_error`
// (today's host calls `on_conn_error`, which a 0.1.0 plugin lacks).
#[test]
fn old_plugin_serves_and_hears_errors_through_its_on_error() {
    let path = old_abi_plugin();
    let host = Host::start(path.to_str().unwrap(), &["--max-package-size", "1024"]);
    assert_contains!(host.log_text(), "plugin_api=0.1.0");
    let mut c = Client::connect(host.port());
    c.send(b"hello old plugin\n");
    assert_eq!(read_line(&mut c), "hello old plugin\n");

    let mut big = Client::connect(host.port());
    let _ = big.try_send(&[b'x'; 64 * 1024]);
    let rest = big.wait_closed(Duration::from_secs(5)).expect("closed after the oversized message");
    assert_eq!(String::from_utf8_lossy(&rest), "old_echo on_error PackageTooLarge\n");

    // The first connection is unaffected.
    c.send(b"still here\n");
    assert_eq!(read_line(&mut c), "still here\n");
}

// A graceful stop reaches the old plugin's `on_drain`.
#[test]
fn old_plugin_hears_on_drain_on_a_graceful_stop() {
    let path = old_abi_plugin();
    let mut host = Host::start(path.to_str().unwrap(), &["--drain-timeout", "30"]);
    let mut c = Client::connect(host.port());
    c.send(b"ping\n");
    assert_eq!(read_line(&mut c), "ping\n");
    host.signal(Signal::SIGTERM);
    let rest = c.wait_closed(Duration::from_secs(5)).expect("closed by the drain");
    assert_eq!(String::from_utf8_lossy(&rest), "old_echo on_drain\n");
    let status = host.wait_all_gone(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0));
}
