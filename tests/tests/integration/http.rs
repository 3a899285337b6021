//! The `http` plugin, end to end.

use host_tests::{assert_contains, assert_not_contains, get, post, post_chunked, Client, Host, TempDir};
use std::time::Duration;

const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

fn start_http(extra: &[&str]) -> (Host, u16) {
    let host = Host::start("http", extra);
    let port = host.port();
    (host, port)
}

// `GET /` is the plaintext endpoint, with the headers every response carries.
#[test]
fn get_root_says_hello_with_standard_headers() {
    let (_host, port) = start_http(&[]);
    let r = Client::connect(port).request(&get("/"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "Hello, World!");
    assert_eq!(r.header("Content-Length"), Some("13"), "{}", r.head);
    assert_eq!(r.header("Server"), Some("host"), "{}", r.head);
    let date = r.header("Date").unwrap_or_else(|| panic!("no Date in {}", r.head));
    // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
    assert!(date.len() == 29 && date.ends_with(" GMT"), "Date {date:?}");
}

// One keep-alive connection serves many requests in a row.
#[test]
fn one_connection_serves_a_hundred_requests() {
    let (_host, port) = start_http(&[]);
    let mut c = Client::connect(port);
    for i in 0..100 {
        let r = c.request(&get("/"));
        assert_eq!(r.status, 200, "request {i}: {}", r.head);
        assert_eq!(r.body_text(), "Hello, World!", "request {i}");
    }
}

// Requests pipelined in one write are all answered, in order.
#[test]
fn pipelined_requests_are_answered_in_order() {
    let (_host, port) = start_http(&[]);
    let mut c = Client::connect(port);
    let batch: Vec<u8> = (0..16).flat_map(|i| post("/", format!("{i}").as_bytes())).collect();
    c.send(&batch);
    let responses = c.read_responses(16).expect("16 responses");
    for (i, r) in responses.iter().enumerate() {
        assert_eq!(r.status, 200, "response {i}: {}", r.head);
        assert_eq!(r.body_text(), i.to_string(), "response {i} out of order");
    }
    // The connection stays usable after the batch.
    assert_eq!(c.request(&get("/")).status, 200);
}

// A chunked body that arrives in several writes is decoded and echoed whole.
#[test]
fn chunked_body_in_pieces_is_echoed() {
    let (_host, port) = start_http(&[]);
    let mut c = Client::connect(port);
    let pieces: [&[u8]; 3] = [b"hello ", b"chunked ", b"world"];
    let (head, chunks) = post_chunked("/", &pieces);
    c.send(&head);
    for chunk in &chunks {
        // Split each chunk too: size line and data arrive apart.
        c.send_in_pieces(chunk, 3, Duration::from_millis(5));
    }
    let r = c.read_response().expect("a response to the chunked POST");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "hello chunked world");
    assert_eq!(c.request(&post("/", b"after")).body_text(), "after");
}

// Bytes that are not HTTP get a 400, then the server closes the connection.
#[test]
fn malformed_request_gets_400_and_close() {
    let (_host, port) = start_http(&[]);
    let mut c = Client::connect(port);
    let r = c.request(b"THIS IS NOT HTTP\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.head);
    c.wait_closed(CLOSE_TIMEOUT).expect("the server closes after a 400");
}

// HTTP/1.1 requires Host (RFC 9112 §3.2).
#[test]
fn http11_without_host_gets_400() {
    let (_host, port) = start_http(&[]);
    let mut c = Client::connect(port);
    let r = c.request(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(r.status, 400, "{}", r.head);
    c.wait_closed(CLOSE_TIMEOUT).expect("the server closes after a 400");
}

// Framing works however the bytes are cut: one byte per write.
#[test]
fn request_sent_one_byte_at_a_time_is_answered() {
    let (_host, port) = start_http(&[]);
    let mut c = Client::connect(port);
    c.send_in_pieces(&get("/"), 1, Duration::from_millis(1));
    let r = c.read_response().expect("a response");
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "Hello, World!");
}

/// A temp dir with `www/` as the root (holding `hello.txt` and `style.css`) and `secret.txt`
/// next to it, outside the root.
fn web_root() -> (TempDir, String) {
    let dir = TempDir::new();
    dir.write("www/hello.txt", "static hello\n");
    dir.write("www/style.css", "body { color: red }\n");
    dir.write("secret.txt", SECRET);
    let config = format!("root = {:?}", dir.join("www").display().to_string());
    (dir, config)
}

const SECRET: &str = "TOP-SECRET-do-not-serve";

// Files under the root are served with their content and type.
#[test]
fn static_file_is_served_with_its_content_type() {
    let (_dir, config) = web_root();
    let (_host, port) = start_http(&["--plugin-config", &config]);
    let mut c = Client::connect(port);
    let r = c.request(&get("/hello.txt"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "static hello\n");
    assert_contains!(r.header("Content-Type").unwrap_or_default(), "text/plain");
    let r = c.request(&get("/style.css"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body_text(), "body { color: red }\n");
    assert_contains!(r.header("Content-Type").unwrap_or_default(), "text/css");
}

// No path leads out of the root, however it is spelled.
#[test]
fn paths_out_of_the_root_are_refused() {
    let (_dir, config) = web_root();
    let (_host, port) = start_http(&["--plugin-config", &config]);
    for path in [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/.%2e/secret.txt",
        "/x/../../secret.txt",
        "/..%2fsecret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..\\secret.txt",
    ] {
        // Each on a new connection: a refusal may close it.
        let mut c = Client::connect(port);
        c.send(&get(path));
        let r = c.read_response().unwrap_or_else(|e| panic!("no response for {path}: {e}"));
        assert_ne!(r.status, 200, "{path} was served:\n{}", r.head);
        assert!((400..500).contains(&r.status), "{path}: {}", r.head);
        assert_not_contains!(r.body_text(), SECRET, "{path}");
    }
}

#[test]
fn missing_file_is_404() {
    let (_dir, config) = web_root();
    let (_host, port) = start_http(&["--plugin-config", &config]);
    let mut c = Client::connect(port);
    let r = c.request(&get("/nope.txt"));
    assert_eq!(r.status, 404, "{}", r.head);
    // A 404 keeps the connection.
    assert_eq!(c.request(&get("/hello.txt")).status, 200);
}

// `max_body` bounds the body, the host's max package size only the head: a body four times the
// package size is received in pieces and echoed; one over `max_body` gets 413 and a close; a
// head over the package size gets 431.
#[test]
fn body_limit_is_max_body_and_the_package_size_bounds_the_head() {
    let (_host, port) = start_http(&["--max-package-size", "1024", "--plugin-config", "max_body = 4096"]);
    let mut c = Client::connect(port);
    let body: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    assert!(c.request(&post("/", &body)).body == body, "a body larger than a package is echoed whole");
    let big = vec![b'b'; 4097];
    // The server may answer before it read everything; a failed write is not the point.
    let _ = c.try_send(&post("/", &big));
    let r = c.read_response().expect("a 413 response");
    assert_eq!(r.status, 413, "{}", r.head);
    c.wait_closed(CLOSE_TIMEOUT).expect("the server closes after a 413");
    let mut c = Client::connect(port);
    let r = c.request(format!("GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n", "y".repeat(2000)).as_bytes());
    assert_eq!(r.status, 431, "{}", r.head);
}
