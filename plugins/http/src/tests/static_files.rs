//! Static files through the fake host.

use super::*;
use crate::files::tests::tree;

#[test]
fn static_files() {
    let (_tmp, root) = tree("e2e");
    let config = format!("root = {:?}", root.to_str().unwrap());
    let mut c = Client::new(&config);
    let get = |c: &mut Client, req: &str| c.feed(req.as_bytes()).take();

    let r = get(&mut c, "GET /style.css HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    assert_eq!(header(&r, "Content-Type"), Some("text/css; charset=utf-8"));
    assert_eq!(body(&r), "body{}");
    let modified = header(&r, "Last-Modified").unwrap().to_string();

    let r = get(&mut c, &format!("GET /style.css?v=1 HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: {modified}\r\n\r\n"));
    assert!(r.starts_with("HTTP/1.1 304 Not Modified"), "{r}");
    // A 304 carries the validators and no body.
    assert_eq!(header(&r, "Content-Length"), None);
    assert!(header(&r, "ETag").is_some_and(|t| t.starts_with('"')));
    assert_eq!(header(&r, "Last-Modified"), Some(modified.as_str()));
    assert!(r.ends_with("\r\n\r\n"));
    let r =
        get(&mut c, "GET /style.css HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");

    let r = get(&mut c, "HEAD /style.css HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(header(&r, "Content-Length"), Some("6"));
    assert!(r.ends_with("\r\n\r\n"));

    let r = get(&mut c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(body(&r), "<h1>hi</h1>");
    let r = get(&mut c, "GET http://a/sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(body(&r), "a");

    for (req, code) in [
        ("POST /style.css HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "405"),
        ("GET /missing HTTP/1.1\r\nHost: a\r\n\r\n", "404"),
        ("GET /../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n", "400"),
        ("GET /%2e%2e/outside/secret HTTP/1.1\r\nHost: a\r\n\r\n", "400"),
        ("GET /a/%2F../x HTTP/1.1\r\nHost: a\r\n\r\n", "400"),
        ("GET /out/secret HTTP/1.1\r\nHost: a\r\n\r\n", "404"),
        ("GET /leak.txt HTTP/1.1\r\nHost: a\r\n\r\n", "404"),
    ] {
        let r = get(&mut c, req);
        assert!(r.starts_with(&format!("HTTP/1.1 {code} ")), "{req}: {r}");
        assert!(!r.contains("secret\n") && !body(&r).contains("secret"));
    }
    let r = get(&mut c, "POST /style.css HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(header(&r, "Allow"), Some("GET, HEAD, OPTIONS"));
    // The echo endpoint stays, and errors on a file path keep the connection.
    let r = get(&mut c, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi");
    assert_eq!(body(&r), "hi");
    assert!(!c.closed());

    std::fs::remove_file(root.join("index.html")).unwrap();
    assert_eq!(body(&get(&mut c, "GET / HTTP/1.1\r\nHost: a\r\n\r\n")), "Hello, World!");
}

#[test]
fn file_size_limit() {
    let (_tmp, root) = tree("big");
    let config = format!("root = {:?}\nmax_file = 3", root.to_str().unwrap());
    let mut c = Client::new(&config);
    let r = c.feed(b"GET /style.css HTTP/1.1\r\nHost: a\r\n\r\n").take();
    assert!(r.starts_with("HTTP/1.1 500 "), "{r}");
    assert_eq!(body(&c.feed(b"GET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n").take()), "a");
}

// A file over the streaming threshold is sent in chunks after its head (the fake host's buffer
// never fills, so it all goes in one call): same bytes, same length, and a request pipelined
// behind it is answered after it.
#[test]
fn large_files_are_streamed_whole() {
    let (_tmp, root) = tree("stream");
    let content: Vec<u8> = (0..(STREAM_AT as usize * 3 + 12345)).map(|i| (i % 253) as u8).collect();
    std::fs::write(root.join("big.bin"), &content).unwrap();
    let config = format!("root = {:?}", root.to_str().unwrap());
    let mut c = Client::new(&config);
    let out =
        c.feed(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\nGET /sub/a.txt HTTP/1.1\r\nHost: a\r\n\r\n").take_bytes();
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&out[..head_end]);
    assert_eq!(header(&head, "Content-Length"), Some(content.len().to_string().as_str()));
    assert!(out[head_end..].starts_with(&content), "the streamed body differs");
    let rest = String::from_utf8_lossy(&out[head_end + content.len()..]).into_owned();
    assert!(rest.starts_with("HTTP/1.1 200 OK") && body(&rest) == "a", "{rest}");
    assert!(!c.closed());
}

#[test]
fn ranges_through_the_plugin() {
    let (_tmp, root) = tree("ranges");
    let content: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(root.join("big.bin"), &content).unwrap();
    let config = format!("root = {:?}", root.to_str().unwrap());
    let mut c = Client::new(&config);
    let mut get =
        |range: &str| c.feed(format!("GET /style.css HTTP/1.1\r\nHost: a\r\nRange: {range}\r\n\r\n").as_bytes()).take();
    let r = get("bytes=1-2");
    assert!(r.starts_with("HTTP/1.1 206 "), "{r}");
    assert_eq!((header(&r, "Content-Range"), body(&r)), (Some("bytes 1-2/6"), "od"));
    let r = get("bytes=0-0,-1");
    let ct = header(&r, "Content-Type").unwrap();
    let boundary = ct.strip_prefix("multipart/byteranges; boundary=").unwrap();
    let want = format!(
        "--{boundary}\r\nContent-Type: text/css; charset=utf-8\r\nContent-Range: bytes 0-0/6\r\n\r\nb\r\n\
         --{boundary}\r\nContent-Type: text/css; charset=utf-8\r\nContent-Range: bytes 5-5/6\r\n\r\n}}\r\n--{boundary}--\r\n"
    );
    assert_eq!(body(&r), want);
    assert_eq!(header(&r, "Content-Length"), Some(want.len().to_string().as_str()));
    let r = get("bytes=6-");
    assert!(r.starts_with("HTTP/1.1 416 "), "{r}");
    assert_eq!(header(&r, "Content-Range"), Some("bytes */6"));
    assert!(get("bytes=x").starts_with("HTTP/1.1 200 "));
    // A large range is streamed (the fake host drains at once), byte-exact.
    let r = c.feed(b"GET /big.bin HTTP/1.1\r\nHost: a\r\nRange: bytes=1000-500999\r\n\r\n").take_bytes();
    let split = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&r[split..], &content[1000..501_000]);
}

#[test]
fn directory_redirects_and_listings() {
    let (_tmp, root) = tree("dirs");
    let config = format!("root = {:?}\nautoindex = true", root.to_str().unwrap());
    let mut c = Client::new(&config);
    let r = c.feed(b"GET /sub?q=1 HTTP/1.1\r\nHost: a\r\n\r\n").take();
    assert!(r.starts_with("HTTP/1.1 301 "), "{r}");
    assert_eq!(header(&r, "Location"), Some("/sub/?q=1"));
    let r = c.feed(b"GET /empty/ HTTP/1.1\r\nHost: a\r\n\r\n").take();
    assert!(r.starts_with("HTTP/1.1 200 ") && body(&r).contains("Index of /empty/"), "{r}");
    assert!(!c.closed());
}
