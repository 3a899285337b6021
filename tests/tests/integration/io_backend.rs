//! The worker's I/O backend (`--io epoll|uring`, `io` in the config file): a worker on io_uring
//! holds a ring and serves keep-alive, pipelined and large answers, closes and half-closes as on
//! epoll; where io_uring is unavailable it says so once and serves on epoll. (The whole suite
//! runs on either backend with `HOST_TEST_IO=uring|epoll`.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use host_tests::{assert_contains, run_host, target_dir, Host, IO_TIMEOUT, READY_TIMEOUT};

const HELLO: &[u8] = b"Hello, World!";

/// Whether process `pid` holds an io_uring instance (a descriptor on `anon_inode:[io_uring]`).
fn holds_a_ring(pid: i32) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy().contains("io_uring")))
}

/// The workers of `host`, and whether they are on io_uring (false: the host logged that it is
/// unavailable here, and they are on epoll).
fn workers_on_ring(host: &Host, count: usize) -> (Vec<i32>, bool) {
    let workers = host.wait_workers(count, READY_TIMEOUT, |_| true).unwrap_or_else(|e| panic!("{e}"));
    let unavailable = host.log_text().contains("io_uring is unavailable");
    (workers, !unavailable)
}

/// `n` requests in one write on one connection, then the answers: all `n`, in order.
fn pipelined(port: u16, n: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let request = "GET / HTTP/1.1\r\nHost: t\r\n\r\n".repeat(n);
    s.write_all(request.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while memchr_count(&got, HELLO) < n {
        let k = s.read(&mut buf).unwrap_or_else(|e| panic!("after {} answers: {e}", memchr_count(&got, HELLO)));
        assert!(k > 0, "closed after {} answers of {n}", memchr_count(&got, HELLO));
        got.extend_from_slice(&buf[..k]);
    }
    assert_eq!(memchr_count(&got, b"HTTP/1.1 200 OK"), n, "{} bytes", got.len());
}

fn memchr_count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Keep-alive requests, pipelined ones, a file larger than the ring's send queue, and a client
/// that half-closes after its request: the same answers as on epoll.
fn serves(host: &Host, root: &Path) {
    let port = host.port();
    for _ in 0..20 {
        pipelined(port, 1);
    }
    pipelined(port, 200);
    // 3 MiB: more than the ring queues for one connection (256 KiB), through sendfile.
    let body: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &body).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();
    // Half-closed: the answer still comes in full, then the end.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
    assert_contains!(String::from_utf8_lossy(&got[..head_end]), "200 OK");
    assert!(got[head_end..] == body[..], "the body, whole ({} of {} bytes)", got.len() - head_end, body.len());
}

#[test]
fn a_worker_on_io_uring_holds_a_ring_and_serves_as_on_epoll() {
    let root = host_tests::TempDir::new();
    let config = format!("root = \"{}\"", root.path().display());
    let host = Host::start("http", &["--count", "2", "--io", "uring", "--plugin-config", &config]);
    let (workers, on_ring) = workers_on_ring(&host, 2);
    for &w in &workers {
        assert_eq!(holds_a_ring(w), on_ring, "worker {w}: {}", host.log_text());
    }
    if !on_ring {
        // The fallback: one line per worker, and they serve all the same.
        assert_eq!(host.log().count("io_uring is unavailable"), 2, "{}", host.log_text());
    }
    // (With a root, `/` is its index: the same words.)
    std::fs::write(root.join("index.html"), HELLO).unwrap();
    serves(&host, root.path());

    let epoll = Host::start("http", &["--io", "epoll", "--plugin-config", &config]);
    let (workers, _) = workers_on_ring(&epoll, 1);
    assert!(!holds_a_ring(workers[0]), "--io epoll holds no ring");
    serves(&epoll, root.path());
}

// The config file's `io` key; a flag given beside the file wins.
#[test]
fn the_config_file_chooses_the_backend() {
    let root = host_tests::TempDir::new();
    let config = root.write(
        "host.toml",
        format!(
            "plugin_dirs = [\"{}\"]\nio = \"uring\"\n\n[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0.0.1:0\"\n",
            target_dir().display()
        ),
    );
    let host = Host::spawn([Path::new("-c"), &config]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (workers, on_ring) = workers_on_ring(&host, 1);
    // (HOST_TEST_IO=epoll runs the suite with `--io epoll`, which wins over the file.)
    let flag_says_epoll = std::env::var("HOST_TEST_IO").is_ok_and(|v| v == "epoll");
    assert_eq!(holds_a_ring(workers[0]), on_ring && !flag_says_epoll, "{}", host.log_text());
    pipelined(host.port(), 50);

    let host = Host::spawn([Path::new("-c"), &config, Path::new("--io"), Path::new("epoll")]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (workers, _) = workers_on_ring(&host, 1);
    assert!(!holds_a_ring(workers[0]), "--io epoll wins over the file's io = \"uring\"");
    pipelined(host.port(), 50);
}

#[test]
fn an_unknown_backend_is_refused_with_the_choices() {
    let out = run_host(["--plugin", "http", "--listen", "127.0.0.1:0", "--io", "kqueue"], Duration::from_secs(20));
    assert!(!out.status.success());
    assert_contains!(out.stderr, "invalid value 'kqueue' for '--io <BACKEND>'");
    assert_contains!(out.stderr, "epoll, uring");
}

/// A client of the echo service: what it sends comes back (read within `timeout`).
fn echo_round(s: &mut TcpStream, msg: &[u8], timeout: Duration) -> std::io::Result<Vec<u8>> {
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(msg)?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

// At `--max-connections` a worker takes no more (on io_uring its multishot accept is cancelled):
// the next client waits in the listener's queue, and is served once a place frees (the accept
// is armed again).
#[test]
fn at_max_connections_a_client_waits_in_the_queue_until_a_place_frees() {
    for io in ["uring", "epoll"] {
        let host = Host::start("echo", &["--count", "1", "--io", io, "--max-connections", "2"]);
        let port = host.port();
        let mut first = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut second = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(echo_round(&mut first, b"one", IO_TIMEOUT).unwrap(), b"one", "{io}");
        assert_eq!(echo_round(&mut second, b"two", IO_TIMEOUT).unwrap(), b"two", "{io}");
        let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
        // Not served while two are open (a broken limit answers at once).
        let early = echo_round(&mut third, b"three", Duration::from_millis(300));
        assert!(early.is_err(), "{io}: the third client was served beyond the limit");
        drop(first);
        third.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut got = [0u8; 5];
        third.read_exact(&mut got).unwrap_or_else(|e| panic!("{io}: the waiting client was not served: {e}"));
        assert_eq!(&got, b"three", "{io}");
        // And the accept goes on after it: another place frees, another client is served.
        drop(second);
        let mut fourth = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(echo_round(&mut fourth, b"four", IO_TIMEOUT).unwrap(), b"four", "{io}");
    }
}
