//! File bodies of the `http` plugin in both of its `file_io` modes: `sendfile` (the host sends
//! the file range itself, `Host::send_file`) and `pool` (the plugin reads and sends bytes).
//! Large files arrive byte-identical, ranges are exact, HEAD has no body, pipelined answers stay
//! in order, a client leaving mid-file or a file shrinking under its response leaves the worker
//! serving. (Over TLS: `tls.rs`; a tiny send buffer: `backpressure.rs`.)

use std::time::Duration;

use host_tests::{get, Client, Host, TempDir};

use crate::http_tools::{pattern, root_config};

const MODES: [&str; 2] = ["sendfile", "pool"];
const BIG: usize = 5 * 1024 * 1024 + 123;
const WAIT: Duration = Duration::from_secs(20);

fn start(dir: &TempDir, mode: &str, extra: &[&str]) -> Host {
    let config = root_config(&dir.join("www"), &format!("file_io = {mode:?}"));
    let mut args = vec!["--plugin-config", &config];
    args.extend_from_slice(extra);
    Host::start("http", &args)
}

/// Reads one response head (up to the empty line) and nothing more.
fn read_head(c: &mut Client) -> String {
    let mut head = String::new();
    loop {
        let line = c.read_line().expect("a head line");
        if line == b"\r\n" {
            return head;
        }
        head.push_str(&String::from_utf8_lossy(&line));
    }
}

#[test]
fn large_files_ranges_and_head_arrive_exact_in_both_modes() {
    let dir = TempDir::new();
    let big = pattern(BIG);
    dir.write("www/big.bin", &big);
    for mode in MODES {
        let host = start(&dir, mode, &[]);
        let mut c = Client::connect(host.port());

        let whole = c.request(&get("/big.bin"));
        assert_eq!(whole.status, 200, "{mode}: {}", whole.head);
        assert_eq!(whole.body.len(), BIG, "{mode}");
        assert!(whole.body == big, "{mode}: the file arrived changed");

        let (a, b) = (1_000_001, 4_500_000);
        let req = format!("GET /big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes={a}-{b}\r\n\r\n");
        let part = c.request(req.as_bytes());
        assert_eq!(part.status, 206, "{mode}: {}", part.head);
        assert_eq!(part.header("content-range"), Some(format!("bytes {a}-{b}/{BIG}").as_str()), "{mode}");
        assert!(part.body == big[a..=b], "{mode}: the range arrived changed");

        // HEAD: the head only; the next response on the connection starts right after it.
        c.send(b"HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n");
        let head = read_head(&mut c);
        assert!(head.contains(&format!("Content-Length: {BIG}")), "{mode}: {head}");
        assert_eq!(c.read_response().expect("the GET after HEAD").body_text(), "Hello, World!", "{mode}");

        // Pipelined: a file, a range of it, then a small answer, in that order.
        let mut reqs = get("/big.bin");
        reqs.extend_from_slice(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=-10\r\n\r\n");
        reqs.extend_from_slice(&get("/"));
        c.send(&reqs);
        let answers = c.read_responses(3).expect("three answers");
        assert!(answers[0].body == big, "{mode}: the pipelined file arrived changed");
        assert!(answers[1].body == big[BIG - 10..], "{mode}: the pipelined range arrived changed");
        assert_eq!(answers[2].body_text(), "Hello, World!", "{mode}");
    }
}

// A client that reads a little of a large file and leaves: the worker (same pid) serves on, the
// file in full to the next client.
#[test]
fn a_client_leaving_mid_file_leaves_the_worker_serving() {
    let dir = TempDir::new();
    let big = pattern(BIG);
    dir.write("www/big.bin", &big);
    for mode in MODES {
        let host = start(&dir, mode, &["--count", "1"]);
        let workers = host.wait_workers(1, WAIT, |_| true).expect("one worker");
        for _ in 0..3 {
            let mut leaver = Client::connect(host.port());
            leaver.send(&get("/big.bin"));
            read_head(&mut leaver);
            leaver.read_exact(100_000).expect("some of the body");
            drop(leaver);
        }
        let mut c = Client::connect(host.port());
        let whole = c.request(&get("/big.bin"));
        assert!(whole.body == big, "{mode}: the file arrived changed after the others left");
        assert_eq!(host.worker_pids(), workers, "{mode}: the worker was replaced");
        let log = host.log_text();
        assert!(!log.contains("panicked"), "{mode}: {log}");
    }
}

// The file shrinks after its response head promised its old length: the connection closes
// short (never a hang, never other bytes), and the worker serves on.
#[test]
fn a_file_shrinking_under_its_response_closes_the_connection() {
    let dir = TempDir::new();
    let size = 40 << 20;
    for mode in MODES {
        let path = dir.write("www/shrinks.bin", pattern(size));
        let host = start(&dir, mode, &[]);
        let mut c = Client::connect(host.port());
        c.send(&get("/shrinks.bin"));
        let head = read_head(&mut c);
        assert!(head.contains(&format!("Content-Length: {size}")), "{mode}: {head}");
        // The socket buffers hold a few MiB at most: most of the file is still to be sent.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1 << 20).unwrap();
        let got = c.wait_closed(WAIT).unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(got.len() < size, "{mode}: {} bytes arrived", got.len());
        let expected = pattern(got.len().min(1 << 20));
        assert!(got[..expected.len()] == expected, "{mode}: the bytes before the end changed");
        let mut again = Client::connect(host.port());
        assert_eq!(again.request(&get("/")).body_text(), "Hello, World!", "{mode}");
    }
}
