//! The `proxy` plugin in front of a host `http` service (or a tiny upstream of the test's own
//! when the test needs to see or break what the upstream gets): GET, POST bodies, keep-alive,
//! pipelined requests answered in order, round-robin past a dead upstream, 502 / 504,
//! `X-Forwarded-For`, an upstream closing mid-response, and a client that does not read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;
use std::time::Duration;

use host_tests::{get, poll_until, post, Client, Host, TempDir};

fn proxy(upstreams: &[String], extra_config: &str, flags: &[&str]) -> Host {
    let list = upstreams.iter().map(|u| format!("{u:?}")).collect::<Vec<_>>().join(", ");
    let config = format!("upstreams = [{list}]\n{extra_config}");
    let mut args = vec!["--plugin-config", config.as_str(), "--count", "1"];
    args.extend_from_slice(flags);
    Host::start("proxy", &args)
}

fn http_upstream(flags: &[&str]) -> (Host, String) {
    let mut args = vec!["--count", "1"];
    args.extend_from_slice(flags);
    let host = Host::start("http", &args);
    let addr = format!("127.0.0.1:{}", host.port());
    (host, addr)
}

fn dead_address() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// An upstream of the test's own: accepts one connection, reads one request head, and hands it
/// to `answer`, which writes what it likes (then the connection closes).
fn one_shot_upstream(
    answer: impl FnOnce(&str, &mut std::net::TcpStream) + Send + 'static,
) -> (SocketAddr, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let thread = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "the proxy closed before its request was whole");
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head).to_string();
        answer(&head, &mut s);
        head
    });
    (addr, thread)
}

#[test]
fn get_and_post_go_through_on_one_keep_alive_connection() {
    let (_up, addr) = http_upstream(&[]);
    let proxy = proxy(&[addr], "", &[]);
    let mut c = Client::connect(proxy.port());
    let r = c.request(&get("/"));
    assert_eq!((r.status, r.body_text().as_str()), (200, "Hello, World!"), "{}", r.head);
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let r = c.request(&post("/", &body));
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body == body, "the POST body came back changed ({} bytes)", r.body.len());
    let r = c.request(&get("/"));
    assert_eq!(r.status, 200, "the client connection stays open");
    assert_eq!(r.header("Connection"), None, "{}", r.head);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_up, addr) = http_upstream(&[]);
    let proxy = proxy(&[addr], "", &[]);
    let mut c = Client::connect(proxy.port());
    let mut all = Vec::new();
    for i in 0..8 {
        all.extend_from_slice(&post("/", format!("request {i}").as_bytes()));
        all.extend_from_slice(&get("/"));
    }
    c.send(&all);
    let responses = c.read_responses(16).expect("16 responses");
    for (i, pair) in responses.chunks(2).enumerate() {
        assert_eq!(pair[0].body_text(), format!("request {i}"));
        assert_eq!(pair[1].body_text(), "Hello, World!");
    }
}

#[test]
fn requests_skip_a_dead_upstream_and_502_when_none_answers() {
    let (_up, live) = http_upstream(&[]);
    let proxy1 = proxy(&[dead_address(), live], "", &[]);
    let mut c = Client::connect(proxy1.port());
    for _ in 0..4 {
        assert_eq!(c.request(&get("/")).status, 200, "round-robin goes past the refused upstream");
    }
    let proxy2 = proxy(&[dead_address(), dead_address()], "", &[]);
    let mut c = Client::connect(proxy2.port());
    let r = c.request(&get("/"));
    assert_eq!(r.status, 502, "{}", r.head);
    assert_eq!(c.request(&get("/")).status, 502, "the client connection stays usable");
}

#[test]
fn the_upstream_sees_x_forwarded_for_and_no_hop_by_hop_fields() {
    let (addr, upstream) = one_shot_upstream(|head, s| {
        let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}", head.len());
        s.write_all(answer.as_bytes()).unwrap();
    });
    let proxy = proxy(&[addr.to_string()], "", &[]);
    let mut c = Client::connect(proxy.port());
    let r = c.request(b"GET /who HTTP/1.1\r\nHost: site\r\nX-Forwarded-For: 10.1.2.3\r\nKeep-Alive: 5\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.status, 200);
    let seen = upstream.join().unwrap();
    assert!(seen.starts_with("GET /who HTTP/1.1\r\n"), "{seen}");
    assert!(seen.contains("\r\nHost: site\r\n"), "{seen}");
    assert!(seen.contains("\r\nX-Forwarded-For: 10.1.2.3, 127.0.0.1\r\n"), "{seen}");
    assert!(!seen.to_ascii_lowercase().contains("keep-alive"), "{seen}");
}

#[test]
fn an_upstream_that_never_answers_is_a_504() {
    let (addr, _upstream) = one_shot_upstream(|_, s| {
        // Holds the connection, silent, until the proxy gives up and closes it.
        let _ = s.read(&mut [0u8; 1]);
    });
    let proxy = proxy(&[addr.to_string()], "response_timeout_ms = 300", &[]);
    let mut c = Client::connect(proxy.port());
    let r = c.request(&get("/"));
    assert_eq!(r.status, 504, "{}", r.head);
}

#[test]
fn an_upstream_closing_before_its_answer_is_a_502_and_mid_answer_closes_the_client() {
    let (addr, _upstream) = one_shot_upstream(|_, _| {});
    let proxy1 = proxy(&[addr.to_string()], "", &[]);
    let mut c = Client::connect(proxy1.port());
    assert_eq!(c.request(&get("/")).status, 502);

    let (addr, _upstream) = one_shot_upstream(|_, s| {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b").unwrap();
    });
    let proxy2 = proxy(&[addr.to_string()], "", &[]);
    let mut c = Client::connect(proxy2.port());
    c.send(&get("/"));
    let got = c.wait_closed(Duration::from_secs(10)).expect("the client is closed");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200 OK\r\n") && got.ends_with("\r\n\r\nonly ten b"), "{got:?}");
}

// The proxy frames with `http_proto`, the parser the `http` plugin serves with: framing that a
// lenient parser would read one way and a strict one another is refused on both sides (a
// request: 400 before any upstream is asked; a response: 502), never passed on.
#[test]
fn smuggling_shaped_framing_is_refused_both_ways() {
    let proxy1 = proxy(&[dead_address()], "", &[]);
    for req in [
        &b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        // A bare LF after a chunk size.
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    ] {
        let mut c = Client::connect(proxy1.port());
        let r = c.request(req);
        assert_eq!(r.status, 400, "{}: {}", String::from_utf8_lossy(req), r.head);
    }
    for answer in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ] {
        let (addr, upstream) = one_shot_upstream(move |_, s| s.write_all(answer).unwrap());
        let proxy2 = proxy(&[addr.to_string()], "", &[]);
        let r = Client::connect(proxy2.port()).request(&get("/"));
        assert_eq!(r.status, 502, "{}: {}", String::from_utf8_lossy(answer), r.head);
        upstream.join().unwrap();
    }
}

// A client that does not read a 32 MiB response: the proxy pauses the upstream connection once
// the client's send buffer is full, so the worker holds about one send buffer, not the file.
// Once the client reads, the file arrives whole.
#[test]
fn a_client_that_does_not_read_pauses_the_upstream_with_bounded_memory() {
    const SIZE: usize = 32 << 20;
    let dir = TempDir::new();
    let content: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
    dir.write("www/big.bin", &content);
    let config = format!("root = {:?}", dir.join("www").display().to_string());
    let (_up, addr) = http_upstream(&["--plugin-config", &config]);
    let mut proxy = proxy(&[addr], "", &["--max-send-buffer", "1048576"]);
    let mut c = Client::connect(proxy.port());
    c.send(&get("/big.bin"));
    let table = poll_until(Duration::from_secs(10), || {
        let out = proxy.command(["connections"], Duration::from_secs(10));
        out.stdout.lines().any(|l| l.ends_with(" paused")).then_some(out.stdout)
    })
    .unwrap_or_else(|| panic!("the upstream connection was never paused:\n{}", proxy.log_text()));
    for row in table.lines().filter(|l| l.contains("127.0.0.1")) {
        let pending = row.split_whitespace().nth(8).unwrap_or_default();
        assert!(human_bytes(pending) <= 3 << 20, "pending output {pending:?} in {row:?}\n{table}");
    }
    let r = c.read_response().expect("the big response");
    assert_eq!(r.status, 200);
    assert!(r.body == content, "the file arrived changed ({} bytes)", r.body.len());
    assert_eq!(c.request(&get("/")).status, 200, "the connection serves on");
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

// A client that half-closes after its request (`printf … | nc -q1`: SHUT_WR) still gets the
// whole answer, which comes after an upstream round trip that begins once the proxy could have
// seen the end of input: the proxy keeps the client's write side open (`on_input_end`) until
// the answer is relayed, then closes.
#[test]
fn a_client_that_half_closes_after_its_request_gets_the_whole_upstream_answer() {
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (shut_tx, shut_rx) = std::sync::mpsc::channel::<()>();
    let answer = body.clone();
    let (addr, upstream) = one_shot_upstream(move |_, s| {
        shut_rx.recv_timeout(Duration::from_secs(10)).expect("the client half-closed");
        s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", answer.len()).as_bytes()).unwrap();
        s.write_all(&answer).unwrap();
    });
    let proxy = proxy(&[addr.to_string()], "", &[]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&get("/")).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    shut_tx.send(()).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("the answer, then the close");
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4).expect("a response head");
    let head = String::from_utf8_lossy(&got[..split]).to_string();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(got[split..] == body[..], "the body arrived changed ({} of {} bytes)", got.len() - split, body.len());
    upstream.join().unwrap();
}

/// A keep-alive upstream of the test's own that counts the connections it accepts and answers
/// each GET with `conn N req M` (N: the connection's number, M: the request's on it).
fn counting_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                for m in 1.. {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk) {
                            Ok(k) if k > 0 => buf.extend_from_slice(&chunk[..k]),
                            _ => return,
                        }
                    };
                    buf.drain(..end);
                    let body = format!("conn {n} req {m}");
                    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                    if s.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepts)
}

// A keep-alive client with an idle pooled upstream connection behind it, across `host reload -g`:
// the client's connection moves to the new worker and so does the pooled upstream connection
// (the upstream accepts no second one), and the next request goes over both.
#[test]
fn a_graceful_reload_moves_the_client_and_its_pooled_upstream_connection() {
    let (addr, accepts) = counting_upstream();
    let mut proxy = proxy(&[addr.to_string()], "", &["--drain-timeout", "30"]);
    let old = proxy.wait_workers(1, Duration::from_secs(15), |_| true).unwrap_or_else(|e| panic!("{e}"));
    let mut c = Client::connect(proxy.port());
    let r = c.request(&get("/"));
    assert_eq!((r.status, r.body_text().as_str()), (200, "conn 1 req 1"), "{}", r.head);
    let out = proxy.command(["reload", "-g"], Duration::from_secs(30));
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let line = proxy
        .log()
        .wait_for("hand-over: 2 connections moved", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_text()));
    assert!(line.contains("0 drained"), "{line}");
    // The old worker had nothing left: it is gone, and the answer comes from the new one.
    proxy.wait_workers(1, Duration::from_secs(15), |now| now != old).unwrap_or_else(|e| panic!("{e}"));
    let r = c.request(&get("/again"));
    assert_eq!((r.status, r.body_text().as_str()), (200, "conn 1 req 2"), "{}", r.head);
    assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 1, "the upstream saw a new connection");
    let out = proxy.command(["status", "--json"], Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let row = &json["handovers"][0];
    assert_eq!((row["moved"].as_u64(), row["drained"].as_u64()), (Some(2), Some(0)), "{json}");
}

// A client whose request waits on the upstream's answer declines to move (so does the upstream
// connection it waits on): both stay on the old worker, the answer comes from there with
// `Connection: close`, and the hand-over says why they stayed.
#[test]
fn a_request_in_flight_across_a_graceful_reload_is_answered_by_the_old_worker() {
    let (got, has_request) = std::sync::mpsc::channel::<()>();
    let (go, answer_now) = std::sync::mpsc::channel::<()>();
    let (addr, upstream) = one_shot_upstream(move |_, s| {
        got.send(()).unwrap();
        answer_now.recv_timeout(Duration::from_secs(30)).expect("the test never said to answer");
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
    });
    let mut proxy = proxy(&[addr.to_string()], "", &["--drain-timeout", "30"]);
    let mut c = Client::connect(proxy.port());
    c.send(&get("/"));
    has_request.recv_timeout(Duration::from_secs(15)).expect("the upstream never got the request");
    let out = proxy.command(["reload", "-g"], Duration::from_secs(30));
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let line = proxy
        .log()
        .wait_for("hand-over: 0 connections moved", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log_text()));
    assert!(line.contains("1 declined by the plugin") && line.contains("1 outbound, not carried"), "{line}");
    go.send(()).unwrap();
    let r = c.read_response().expect("the answer from the old worker");
    assert_eq!((r.status, r.body_text().as_str()), (200, "ok"), "{}", r.head);
    assert_eq!(r.header("Connection"), Some("close"), "{}", r.head);
    upstream.join().unwrap();
}
