//! Workerman's Text protocol through the `text` plugin: every `\n`-terminated line is echoed.

use std::time::Duration;

use host_tests::{Client, Host};

fn read_line(c: &mut Client) -> String {
    let line = c.read_line().unwrap_or_else(|e| panic!("no line: {e}"));
    String::from_utf8_lossy(&line).into_owned()
}

#[test]
fn lines_are_echoed_however_they_are_cut() {
    let host = Host::start("text", &[]);
    let mut c = Client::connect(host.port());
    c.send(b"hello\n");
    assert_eq!(read_line(&mut c), "hello\n");
    // One line in three writes.
    for piece in [&b"spl"[..], b"it li", b"ne\n"] {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_line(&mut c), "split line\n");
    // Several lines in one write, and a line's end in the next.
    c.send(b"a\nbb\nccc\nd");
    c.send(b"dd\n");
    for want in ["a\n", "bb\n", "ccc\n", "ddd\n"] {
        assert_eq!(read_line(&mut c), want);
    }
}

// A line that grows past --max-package-size without a newline closes the connection; other
// connections are not affected.
#[test]
fn overlong_line_closes_the_connection() {
    let host = Host::start("text", &["--max-package-size", "1024"]);
    let mut c = Client::connect(host.port());
    c.send(b"short\n");
    assert_eq!(read_line(&mut c), "short\n");
    let _ = c.try_send(&[b'x'; 4096]);
    let rest = c.wait_closed(Duration::from_secs(5)).expect("the server closes a connection over the max package size");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    let mut other = Client::connect(host.port());
    other.send(b"fine\n");
    assert_eq!(read_line(&mut other), "fine\n");
}

// Draining (graceful stop) closes an idle connection at once, and one with half a line only
// after that line was answered.
#[test]
fn drain_closes_idle_connections_and_finishes_half_lines() {
    let mut host = Host::start("text", &["--drain-timeout", "30"]);
    let mut idle = Client::connect(host.port());
    idle.send(b"ping\n");
    assert_eq!(read_line(&mut idle), "ping\n");
    let mut busy = Client::connect(host.port());
    busy.send(b"half a");
    // The worker has read the half line once `connections` counts its bytes.
    host_tests::poll_until(Duration::from_secs(5), || {
        let out = host.command(["connections"], Duration::from_secs(5));
        out.stdout.lines().any(|l| l.contains(" 6B ")).then_some(())
    })
    .expect("the half line never reached the worker");
    host.signal(nix::sys::signal::Signal::SIGTERM);
    idle.wait_closed(Duration::from_secs(5)).expect("the idle connection is closed at once");
    busy.send(b" line\n");
    assert_eq!(read_line(&mut busy), "half a line\n");
    busy.wait_closed(Duration::from_secs(5)).expect("closed after the line in flight");
    let status = host.wait_all_gone(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0));
}
