//! The protocol through the fake host: framing, keep-alive, errors, limits, drain.

use super::*;

#[test]
fn plaintext_hello() {
    let mut c = Client::new("");
    let r = c.feed(GET).take();
    assert!(r.starts_with("HTTP/1.1 200 OK\r\nServer: host\r\nDate: "), "{r}");
    assert!(response::parse_http_date(header(&r, "Date").unwrap().as_bytes()).is_some());
    assert_eq!(header(&r, "Content-Type"), Some("text/plain"));
    assert_eq!(header(&r, "Content-Length"), Some("13"));
    assert_eq!(header(&r, "Connection"), None);
    assert_eq!(body(&r), "Hello, World!");
    assert!(!c.closed());
    // Keep-alive: the next request on the same connection is answered too.
    assert_eq!(body(&c.feed(GET).take()), "Hello, World!");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let mut c = Client::new("");
    let mut batch = Vec::new();
    for i in 0..16 {
        let path = if i % 2 == 0 { "/" } else { "/nope" };
        batch.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    }
    let out = c.feed(&batch).take();
    let statuses: Vec<&str> = out.match_indices("HTTP/1.1 ").map(|(i, _)| &out[i + 9..i + 12]).collect();
    let expected: Vec<&str> = (0..16).map(|i| if i % 2 == 0 { "200" } else { "404" }).collect();
    assert_eq!(statuses, expected);
    assert!(!c.closed());
}

#[test]
fn a_request_arriving_byte_by_byte() {
    let mut c = Client::new("");
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
    for b in req {
        assert_eq!(c.take(), "");
        c.feed(&[*b]);
    }
    let r = c.take();
    assert_eq!(body(&r), "abc");
    assert_eq!(header(&r, "Content-Type"), Some("application/octet-stream"));
}

#[test]
fn echoes_bodies() {
    let mut c = Client::new("");
    let r = c.feed(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello").take();
    assert_eq!((header(&r, "Content-Length"), body(&r)), (Some("5"), "hello"));
    // Only POST and PUT echo; another method on `/` is told what it may do.
    let r = c.feed(b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n").take();
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    assert_eq!(header(&r, "Allow"), Some("GET, HEAD, OPTIONS, POST, PUT"));
    let r = c.feed(b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n").take();
    assert!(r.starts_with("HTTP/1.1 501 "), "{r}");
    let r = c.feed(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").take();
    assert_eq!(header(&r, "Allow"), Some("GET, HEAD, OPTIONS, POST, PUT"));
    let mut off = Client::new("echo = false");
    let r = off.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx").take();
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    assert_eq!(header(&r, "Allow"), Some("GET, HEAD, OPTIONS"));
    let r = off.feed(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").take();
    assert_eq!(header(&r, "Allow"), Some("GET, HEAD, OPTIONS"));
    let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                    6;x=y\r\nHello,\r\n7\r\n World!\r\n0\r\nT: v\r\n\r\n";
    for split in 0..chunked.len() {
        let mut c = Client::new("");
        c.feed(&chunked[..split]).feed(&chunked[split..]).feed(GET);
        let r = c.take();
        assert!(r.contains("Content-Length: 13\r\n\r\nHello, World!HTTP/1.1 200"), "split {split}: {r}");
    }
}

#[test]
fn head_has_the_length_but_no_body() {
    let mut c = Client::new("");
    let r = c.feed(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n").take();
    assert_eq!(header(&r, "Content-Length"), Some("13"));
    assert!(r.ends_with("\r\n\r\n"), "{r}");
}

#[test]
fn later_http_1_minor_versions_are_answered_as_1_1() {
    let mut c = Client::new("");
    let r = c.feed(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n").take();
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert_eq!(body(&r), "Hello, World!");
    assert!(!c.closed());
}

#[test]
fn http_1_0_and_connection_close() {
    let mut c = Client::new("");
    let r = c.feed(b"GET / HTTP/1.0\r\n\r\n").take();
    assert_eq!(header(&r, "Connection"), Some("close"));
    assert!(c.closed());

    let mut c = Client::new("");
    let r = c.feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").take();
    assert_eq!(header(&r, "Connection"), Some("keep-alive"));
    assert!(r.starts_with("HTTP/1.1 200 OK"));
    assert!(!c.closed());

    let mut c = Client::new("");
    let mut two = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec();
    two.extend_from_slice(GET);
    let r = c.feed(&two).take();
    assert_eq!(r.matches("HTTP/1.1").count(), 1, "nothing after close: {r}");
    assert_eq!(header(&r, "Connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn expect_100_continue() {
    let mut c = Client::new("");
    c.feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    assert_eq!(c.take(), "HTTP/1.1 100 Continue\r\n\r\n");
    c.feed(b"da");
    assert_eq!(c.take(), "");
    let r = c.feed(b"ta").take();
    assert!(r.starts_with("HTTP/1.1 200 OK"));
    assert_eq!(body(&r), "data");

    let mut c = Client::new("");
    c.feed(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n");
    c.feed(b"2\r\nab\r\n").feed(b"1\r\nc\r\n");
    assert_eq!(c.take(), "HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(body(&c.feed(b"0\r\n\r\n").take()), "abc");
}

#[test]
fn bad_requests_are_refused_and_closed() {
    for (req, code) in [
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "505"),
        (b"GET / HTTP/0.9\r\nHost: a\r\n\r\n", "505"),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: a:http\r\n\r\n", "400"),
        (b"GET /x HTTP/1.1 extra\r\nHost: a\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", "501"),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: a\rx\r\n\r\n", "400"),
    ] {
        let mut c = Client::new("");
        let r = c.feed(req).take();
        assert!(r.starts_with(&format!("HTTP/1.1 {code} ")), "{req:?}: {r}");
        assert_eq!(header(&r, "Connection"), Some("close"));
        assert!(c.closed());
    }
}

#[test]
fn size_limits() {
    // Over the plugin's max_body: refused by the plugin as soon as the head is in.
    let mut c = Client::new("max_body = 4");
    let r = c.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").take();
    assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
    // A body over the host's max package size is received in pieces: max_body is the limit.
    let mut c = Client::with_package("", 100);
    let body = "z".repeat(500);
    let r = c.feed(format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 500\r\n\r\n{body}").as_bytes()).take();
    assert!(r.starts_with("HTTP/1.1 200 ") && r.ends_with(&body), "{r}");
    assert!(!c.closed());
    let mut c = Client::with_package("max_body = 400", 100);
    let r = c.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n").take();
    assert_eq!(r, "");
    let r = c.feed(format!("190\r\n{}\r\n", "z".repeat(400)).as_bytes()).take();
    assert_eq!(r, "");
    let r = c.feed(b"1\r\nz\r\n").take();
    assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
    assert!(c.closed());
    // A head over it: 431, whether the host or the plugin notices first.
    let mut c = Client::with_package("", 100);
    let r = c.feed(format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "y".repeat(200)).as_bytes()).take();
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    let mut c = Client::with_package("", 100);
    let r = c.feed(format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(200)).as_bytes()).take();
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    let mut c = Client::new("max_header = 64");
    let r = c.feed(format!("GET / HTTP/1.1\r\nX: {}", "y".repeat(100)).as_bytes()).take();
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
}

#[test]
fn drain_answers_the_next_request_with_close_and_leaves_idle_open() {
    // An idle keep-alive connection is not closed under its client (a request may be on the
    // wire): its next request is answered with `Connection: close`.
    let mut c = Client::new("");
    c.feed(GET).take();
    c.drain();
    assert!(!c.closed());
    assert_eq!(c.take(), "");
    let r = c.feed(GET).take();
    assert_eq!(body(&r), "Hello, World!");
    assert_eq!(header(&r, "Connection"), Some("close"));
    assert!(c.closed());

    let mut c = Client::new("");
    c.feed(b"GET / HTTP/1.1\r\nHo");
    c.drain();
    assert!(!c.closed());
    let r = c.feed(b"st: a\r\n\r\n").take();
    assert_eq!(body(&r), "Hello, World!");
    assert_eq!(header(&r, "Connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn timeouts() {
    let mut c = Client::new("");
    c.feed(b"GET / HT").error(ConnError::Timeout);
    assert!(c.take().starts_with("HTTP/1.1 408 "));
    assert!(c.closed());
    let mut c = Client::new("");
    c.feed(GET).take();
    c.error(ConnError::Timeout);
    assert_eq!(c.take(), "");
    assert!(c.closed());
}

#[test]
fn config() {
    assert_eq!(Config::parse("").unwrap(), Config::default());
    assert!(Config::parse("rot = \"/\"").is_err());
    assert!(Config::parse("max_header = 0").is_err());
    assert!(Config::parse("root = \"\"").is_err());
    assert!(Config::parse("max_body = \"big\"").is_err());
    let worker = plugin_api::testing::TestHost::default().worker_info();
    assert!(Http::new("root = \"/nonexistent/host-http-test\"", &worker).is_err());
    let c = Config::parse("max_body = 10\nmax_header = 100").unwrap();
    assert_eq!((c.max_body, c.max_header, c.root), (10, 100, None));
}

#[test]
fn request_paths() {
    assert_eq!(request_path(b"/"), b"/");
    assert_eq!(request_path(b"/a?b=c"), b"/a");
    assert_eq!(request_path(b"/a#f"), b"/a");
    assert_eq!(request_path(b"http://host:80/x/y?q"), b"/x/y");
    assert_eq!(request_path(b"HTTPS://host"), b"/");
    assert_eq!(request_path(b"http://host?q"), b"/");
    assert_eq!(request_path(b"*"), b"*");
    assert_eq!(request_path(b"example.com:443"), b"example.com:443");
}

/// The plaintext benchmark's shape: 16 pipelined requests per read, through input/on_message
/// only (no harness copies). Run with
/// `cargo test --release -p host-plugin-http -- --ignored --nocapture plaintext_throughput`.
#[test]
#[ignore = "a measurement, not a check"]
fn plaintext_throughput() {
    let mut c = Client::new("");
    let conn = c.conn;
    let one = b"GET / HTTP/1.1\r\nHost: localhost:8080\r\nAccept: text/plain,text/html;q=0.9\r\nConnection: keep-alive\r\n\r\n";
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 16).collect();
    let rounds = 200_000;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        let mut rest = &batch[..];
        while !rest.is_empty() {
            let n = match call(&mut c.http, &mut c.host, |h, host| h.input(host, conn, rest)) {
                Frame::Complete(n) => n,
                other => panic!("{other:?}"),
            };
            call(&mut c.http, &mut c.host, |h, host| h.on_message(host, conn, &rest[..n]));
            rest = &rest[n..];
        }
        c.host.sent.clear();
    }
    let per = start.elapsed() / (rounds * 16);
    println!("plaintext: {per:?} per request");
}
