//! ABI evolution: plugins built against earlier releases of `plugin-api` (0.1.0, frozen in
//! `tests/fixtures/old_abi`; 0.1.1, in `tests/fixtures/old_abi_0_1_1`; 0.1.2, in
//! `tests/fixtures/old_abi_0_1_2`; 0.1.3, in `tests/fixtures/old_abi_0_1_3`) keep loading and
//! serving in today's host, events that grew since reach their older callbacks (`on_conn_error`
//! → a 0.1.0 plugin's `on_error`), the calls each release had still answer, and the events of
//! the extension (0.1.3's `on_input_end`) reach a plugin of the release that added them. Plugins
//! built against today's `plugin-api` are covered by every other test.

use std::time::Duration;

use host_tests::{
    abi_0_1_1_plugin, abi_0_1_2_plugin, abi_0_1_3_plugin, assert_contains, old_abi_plugin, run_host, Client, Host,
    Signal,
};

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

#[test]
fn check_plugin_accepts_a_plugin_built_against_plugin_api_0_1_1() {
    let path = abi_0_1_1_plugin();
    let out = run_host(["check-plugin".as_ref(), path.as_os_str()], Duration::from_secs(10));
    assert!(out.status.success(), "check-plugin refused the 0.1.1 plugin: {}", out.stderr);
    assert_eq!(out.stdout, "v011_echo 0.1.1 (ABI 1)\n");
}

// The calls 0.1.1 added (worker_count, broadcast) answer through the frozen vtable, its
// `on_worker_message` hears a peer, and `on_conn_error` reaches it (its SDK's `on_error`).
#[test]
fn plugin_0_1_1_serves_and_its_calls_and_events_still_work() {
    let path = abi_0_1_1_plugin();
    let host = Host::start(path.to_str().unwrap(), &["--count", "2", "--max-package-size", "1024"]);
    assert_contains!(host.log_text(), "plugin_api=0.1.1");
    let mut c = Client::connect(host.port());
    c.send(b"hello 0.1.1\n");
    assert_eq!(read_line(&mut c), "hello 0.1.1\n");
    c.send(b"workers\n");
    assert_eq!(read_line(&mut c), "workers 2\n");
    drop(c);

    // A connection on each worker (SO_REUSEPORT spreads them by hash: a bounded number of
    // tries): a broadcast from one reaches the other's connections.
    let mut by_slot: [Option<Client>; 2] = [None, None];
    for _ in 0..200 {
        let mut client = Client::connect(host.port());
        client.send(b"slot\n");
        let slot: usize = read_line(&mut client).trim_start_matches("slot ").trim().parse().unwrap();
        by_slot[slot].get_or_insert(client);
        if by_slot.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some(mut a), Some(mut b)] = by_slot else { panic!("200 clients did not land on both workers") };
    a.send(b"bcast hi there\n");
    assert_eq!(read_line(&mut a), "queued 1\n");
    assert_eq!(read_line(&mut b), "from 0: hi there\n");

    let mut big = Client::connect(host.port());
    let _ = big.try_send(&[b'x'; 64 * 1024]);
    let rest = big.wait_closed(Duration::from_secs(5)).expect("closed after the oversized message");
    assert!(
        String::from_utf8_lossy(&rest).starts_with("v011_echo on_error "),
        "unexpected goodbye: {:?}",
        String::from_utf8_lossy(&rest)
    );
    a.send(b"still here\n");
    assert_eq!(read_line(&mut a), "still here\n");
}

#[test]
fn check_plugin_accepts_a_plugin_built_against_plugin_api_0_1_2() {
    let path = abi_0_1_2_plugin();
    let out = run_host(["check-plugin".as_ref(), path.as_os_str()], Duration::from_secs(10));
    assert!(out.status.success(), "check-plugin refused the 0.1.2 plugin: {}", out.stderr);
    assert_eq!(out.stdout, "v012_echo 0.1.2 (ABI 1)\n");
}

// The calls and events 0.1.2 added answer through its frozen vtables: a task's result comes
// back as `on_task_done`, a notifier wakes `on_notify`, `send_file` queues a file, and
// `on_conn_error` still reaches its `on_error`.
#[test]
fn plugin_0_1_2_serves_and_its_calls_and_events_still_work() {
    let path = abi_0_1_2_plugin();
    let host = Host::start(path.to_str().unwrap(), &["--max-package-size", "1024"]);
    assert_contains!(host.log_text(), "plugin_api=0.1.2");
    let mut c = Client::connect(host.port());
    c.send(b"hello 0.1.2\n");
    assert_eq!(read_line(&mut c), "hello 0.1.2\n");
    c.send(b"task make me loud\n");
    let line = read_line(&mut c);
    assert!(line.starts_with("task ") && line.ends_with(": MAKE ME LOUD\n"), "unexpected task answer: {line:?}");
    c.send(b"notify from a thread\n");
    assert_eq!(read_line(&mut c), "notified: from a thread\n");

    let file = std::env::temp_dir().join(format!("v012-send-file-{}", std::process::id()));
    std::fs::write(&file, b"file body").unwrap();
    c.send(format!("file {}\n", file.display()).as_bytes());
    assert_eq!(read_line(&mut c), "file body\n");
    std::fs::remove_file(&file).unwrap();

    let mut big = Client::connect(host.port());
    let _ = big.try_send(&[b'x'; 64 * 1024]);
    let rest = big.wait_closed(Duration::from_secs(5)).expect("closed after the oversized message");
    assert_eq!(String::from_utf8_lossy(&rest), "v012_echo on_error PackageTooLarge\n");
    c.send(b"still here\n");
    assert_eq!(read_line(&mut c), "still here\n");
}

#[test]
fn check_plugin_accepts_a_plugin_built_against_plugin_api_0_1_3() {
    let path = abi_0_1_3_plugin();
    let out = run_host(["check-plugin".as_ref(), path.as_os_str()], Duration::from_secs(10));
    assert!(out.status.success(), "check-plugin refused the 0.1.3 plugin: {}", out.stderr);
    assert_eq!(out.stdout, "v013_echo 0.1.3 (ABI 1)\n");
}

// The event 0.1.3 added reaches a plugin of that release through its extension, checked against
// the host's newer declaration: a half-close is heard (`on_input_end`), and its `KeepOpen` keeps
// the write side open for a line written later from a timer.
#[test]
fn plugin_0_1_3_hears_on_input_end_and_keeps_writing_after_it() {
    let path = abi_0_1_3_plugin();
    let host = Host::start(path.to_str().unwrap(), &["--max-package-size", "1024"]);
    assert_contains!(host.log_text(), "plugin_api=0.1.3");
    let mut c = Client::connect(host.port());
    c.send(b"hello 0.1.3\n");
    assert_eq!(read_line(&mut c), "hello 0.1.3\n");
    c.send(b"again\n");
    assert_eq!(read_line(&mut c), "again\n");
    c.shutdown_write();
    let rest = c.wait_closed(Duration::from_secs(5)).expect("closed by the plugin after its timer");
    assert_eq!(String::from_utf8_lossy(&rest), "input end after 2 lines\nstill writing\n");

    let mut big = Client::connect(host.port());
    let _ = big.try_send(&[b'x'; 64 * 1024]);
    let rest = big.wait_closed(Duration::from_secs(5)).expect("closed after the oversized message");
    assert_eq!(String::from_utf8_lossy(&rest), "v013_echo on_error PackageTooLarge\n");
}
