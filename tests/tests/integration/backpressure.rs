//! The max send buffer: a client that does not read makes the worker stop reading from it (the
//! plugin hears `buffer_full`), and everything is delivered, in order and whole, once it reads.

use std::time::Duration;

use host_tests::{get, poll_until, Client, Host, TempDir};

const FILE_SIZE: usize = 32 << 20;

// A 32 MiB response to a client that does not read: the sockets' buffers take a few MiB, the
// rest waits, and the worker pauses reading the connection, so the pipelined second request
// stays unread; `host connections` shows it paused (with about a send buffer pending when the
// plugin reads the file, `file_io = "pool"`). Once the client reads, the file arrives whole and
// then the second answer. Both file modes.
#[test]
fn a_client_that_does_not_read_is_paused_then_served_in_full() {
    let dir = TempDir::new();
    let content: Vec<u8> = (0..FILE_SIZE).map(|i| (i % 251) as u8).collect();
    dir.write("www/big.bin", &content);
    for mode in ["sendfile", "pool"] {
        let config = format!("root = {:?}\nfile_io = {mode:?}", dir.join("www").display().to_string());
        let mut host = Host::start("http", &["--plugin-config", &config, "--max-send-buffer", "1048576"]);
        let port = host.port();

        let mut c = Client::connect(port);
        let mut both = get("/big.bin");
        both.extend_from_slice(&get("/"));
        c.send(&both);

        let paused = poll_until(Duration::from_secs(10), || {
            let out = host.command(["connections"], Duration::from_secs(10));
            let row = out.stdout.lines().find(|l| l.ends_with(" paused"))?.to_string();
            Some(row)
        })
        .unwrap_or_else(|| panic!("{mode}: the connection was never shown paused:\n{}", host.log_text()));
        // PENDING is the 9th column. `pool`: the plugin streams the file a send buffer at a
        // time, so the worker never holds much more than one (1 MiB) of the 32 MiB in memory.
        // `sendfile`: the rest of the file is pending as a file range (a descriptor, no memory).
        let pending = human_bytes(paused.split_whitespace().nth(8).unwrap_or_default());
        let bound = if mode == "pool" { 2 << 20 } else { FILE_SIZE as u64 };
        assert!(pending <= bound, "{mode}: pending output {pending} in {paused:?}");

        let big = c.read_response().expect("the big response");
        assert_eq!(big.status, 200, "{mode}: {}", big.head);
        assert_eq!(big.body.len(), FILE_SIZE, "{mode}");
        assert!(big.body == content, "{mode}: the file arrived changed");
        let hello = c.read_response().expect("the second, pipelined response");
        assert_eq!(hello.body_text(), "Hello, World!", "{mode}");
        // Reading resumed for good: the connection serves on.
        assert_eq!(c.request(&get("/")).status, 200, "{mode}");
    }
}

// A client that never reads is not kept forever: the idle timeout closes it, even though its
// unsent output would otherwise keep the connection "closing" (and its memory held) for good.
#[test]
fn a_client_that_never_reads_is_closed_after_the_idle_timeout() {
    let dir = TempDir::new();
    dir.write("www/big.bin", vec![7u8; FILE_SIZE]);
    let config = format!("root = {:?}", dir.join("www").display().to_string());
    let mut host = Host::start("http", &["--plugin-config", &config, "--idle-timeout", "1"]);
    let mut c = Client::connect(host.port());
    c.send(&get("/big.bin"));
    let gone = poll_until(Duration::from_secs(15), || {
        let out = host.command(["connections"], Duration::from_secs(10));
        out.stdout.contains("\n0 connections").then_some(())
    });
    assert!(gone.is_some(), "the stalled connection was never closed:\n{}", host.log_text());
}

// Slowloris: a request whose bytes keep trickling in (so the connection is never idle) is cut
// off by the message timeout with a 408.
#[test]
fn a_request_that_trickles_in_hits_the_message_timeout() {
    let host = Host::start("http", &["--message-timeout", "1"]);
    let mut c = Client::connect(host.port());
    c.send(b"GET / HTTP/1.1\r\n");
    let started = std::time::Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(10) {
        if c.try_send(b"X").is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let rest = c.wait_closed(Duration::from_secs(5));
    assert!(closed || rest.is_ok(), "the trickling request was never cut off: {rest:?}");
    if let Ok(bytes) = rest {
        assert!(String::from_utf8_lossy(&bytes).starts_with("HTTP/1.1 408"), "{:?}", String::from_utf8_lossy(&bytes));
    }
}

/// `268.2K`, `1.0M`, `512B` as `host connections` prints them, in bytes.
fn human_bytes(text: &str) -> u64 {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let scale = match unit {
        "B" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        _ => panic!("not a size: {text:?}"),
    };
    (number.parse::<f64>().unwrap_or_else(|_| panic!("not a size: {text:?}")) * scale) as u64
}

// Issue #15: with a send buffer smaller than the plugin's read chunk, the http file pump sent
// into a full buffer and ignored the refusal (a body shorter than its Content-Length). A whole
// file and a multipart range answer (many small parts: the pump sends several per turn) must
// arrive byte-identical, then the connection serves on.
#[test]
fn a_small_send_buffer_streams_files_whole() {
    let dir = TempDir::new();
    let size = 3 << 20;
    let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    dir.write("www/big.bin", &content);
    // Both ways of sending a file body: the host's send_file, and reads on the task pool.
    for mode in ["sendfile", "pool"] {
        let config = format!("root = {:?}\nfile_io = {mode:?}", dir.join("www").display().to_string());
        let host = Host::start("http", &["--plugin-config", &config, "--max-send-buffer", "1000"]);
        let mut c = Client::connect(host.port());

        let whole = c.request(&get("/big.bin"));
        assert_eq!(whole.status, 200, "{mode}: {}", whole.head);
        assert_eq!(whole.body.len(), size, "{mode}");
        assert!(whole.body == content, "{mode}: the file arrived changed");

        let ranges: Vec<(usize, usize)> = (0..40).map(|i| (i * 50_000, i * 50_000 + 9_999)).collect();
        let spec = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>().join(",");
        let req = format!("GET /big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes={spec}\r\n\r\n");
        let parts = c.request(req.as_bytes());
        assert_eq!(parts.status, 206, "{mode}: {}", parts.head);
        let declared: usize = parts.header("content-length").and_then(|v| v.parse().ok()).expect("a length");
        assert_eq!(parts.body.len(), declared, "{mode}");
        let mut at = 0;
        for (a, b) in ranges {
            let want = &content[a..=b];
            let found = parts.body[at..].windows(want.len()).position(|w| w == want).expect("each range, in order");
            at += found + want.len();
        }
        assert_eq!(c.request(&get("/")).body_text(), "Hello, World!", "{mode}");
    }
}
