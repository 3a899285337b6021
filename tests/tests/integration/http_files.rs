//! The `http` plugin as a static-file server, through real clients: curl (ranges, resuming a
//! download, compression), python `requests`, and a raw client for what clients hide
//! (conditional requests, redirects, limits).

use host_tests::{assert_contains, get, post, Client, Host, TempDir};

use crate::http_tools::{curl, pattern, python, root_config};

const BIG: usize = 3 * 1024 * 1024 + 17;

/// A root with `big.bin` (over the streaming threshold), `small.txt`, `app.js` with a `.gz`
/// sibling, `docs/index.html`, `.env`, and a symlink out of the root.
fn site() -> (TempDir, Vec<u8>) {
    let dir = TempDir::new();
    let big = pattern(BIG);
    dir.write("www/big.bin", &big);
    dir.write("www/small.txt", "0123456789abcdefghij");
    dir.write("www/app.js", "console.log('plain');\n".repeat(200));
    dir.write("www/app.js.gz", b"\x1f\x8bnot-really-gzip");
    dir.write("www/docs/index.html", "<h1>docs</h1>");
    dir.write("www/.env", "SECRET=1");
    dir.write("outside.txt", "TOP-SECRET");
    std::os::unix::fs::symlink(dir.join("outside.txt"), dir.join("www/escape.txt")).unwrap();
    (dir, big)
}

fn start(dir: &TempDir, extra: &str) -> (Host, u16) {
    let config = root_config(&dir.join("www"), extra);
    let host = Host::start("http", &["--plugin-config", &config]);
    let port = host.port();
    (host, port)
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

// `curl -r` gets exactly the bytes asked for, from a file large enough to be streamed, and the
// log stays free of warnings during the large transfers.
#[test]
fn curl_ranges_are_exact() {
    let (dir, big) = site();
    let (host, port) = start(&dir, "");
    for (range, want) in [
        ("0-99", &big[..100]),
        ("1000-", &big[1000..]),
        ("-5000", &big[BIG - 5000..]),
        ("300000-2999999", &big[300_000..3_000_000]),
    ] {
        let got = curl(&["-r", range, &url(port, "/big.bin")]).stdout;
        assert!(got == want, "range {range}: {} bytes, want {}", got.len(), want.len());
    }
    let head = curl(&["-r", "10-19", "-D", "-", "-o", "/dev/null", &url(port, "/big.bin")]).text();
    assert_contains!(head, "HTTP/1.1 206");
    assert_contains!(head, &format!("Content-Range: bytes 10-19/{BIG}"));
    assert_contains!(head, "Accept-Ranges: bytes");
    let full = curl(&[&url(port, "/big.bin")]).stdout;
    assert!(full == big, "whole file: {} bytes", full.len());
    assert!(!host.log_text().contains("WARN"), "{}", host.log_text());
}

// `curl -C -` resumes a partial download into a byte-identical file.
#[test]
fn curl_resumes_a_partial_download() {
    let (dir, big) = site();
    let (_host, port) = start(&dir, "");
    let out = dir.join("download.bin");
    std::fs::write(&out, &big[..123_457]).unwrap();
    curl(&["-C", "-", "-o", out.to_str().unwrap(), &url(port, "/big.bin")]);
    assert!(std::fs::read(&out).unwrap() == big, "the resumed file differs");
}

// `curl --compressed` gets the precompressed sibling or gzip made on the fly, with `Vary`;
// a range is never compressed on the fly.
#[test]
fn curl_compressed() {
    let (dir, _) = site();
    let (_host, port) = start(&dir, "");
    let head = curl(&["-D", "-", "-o", "/dev/null", "-H", "Accept-Encoding: gzip", &url(port, "/app.js")]).text();
    assert_contains!(head, "Content-Encoding: gzip");
    assert_contains!(head, "Vary: Accept-Encoding");
    assert_contains!(head, "Content-Length: 17");
    // Without Accept-Encoding: the file itself.
    let plain = curl(&[&url(port, "/app.js")]).text();
    assert_contains!(plain, "console.log('plain')");

    // On the fly (the sibling gone).
    std::fs::remove_file(dir.join("www/app.js.gz")).unwrap();
    let (_host2, port2) = start(&dir, "gzip = true\ngzip_min = 100");
    let got = curl(&["--compressed", "-D", "-", &url(port2, "/app.js")]).text();
    assert_contains!(got, "Content-Encoding: gzip");
    assert_contains!(got, &"console.log('plain');\n".repeat(200));
    let ranged = curl(&["--compressed", "-D", "-", "-r", "0-6", &url(port2, "/app.js")]).text();
    assert_contains!(ranged, "HTTP/1.1 206");
    assert!(!ranged.contains("Content-Encoding"), "{ranged}");
    assert!(ranged.ends_with("console"), "{ranged}");
}

// python `requests` with a Range header; then If-Range with a stale validator gets it all.
#[test]
fn python_requests_ranges() {
    let (dir, big) = site();
    let (_host, port) = start(&dir, "");
    let script = r#"
import sys, requests
url = sys.argv[1]
r = requests.get(url, headers={"Range": "bytes=100-199"})
print(r.status_code, r.headers["Content-Range"], len(r.content), r.content[:4].hex())
etag = r.headers["ETag"]
r = requests.get(url, headers={"Range": "bytes=0-0", "If-Range": etag})
print(r.status_code, len(r.content))
r = requests.get(url, headers={"Range": "bytes=0-0", "If-Range": '"stale"'})
print(r.status_code, len(r.content))
r = requests.get(url, headers={"Range": "bytes=0-1,10-11"})
print(r.status_code, r.headers["Content-Type"].split(";")[0])
r = requests.get(url, headers={"Range": "bytes=99999999-"})
print(r.status_code, r.headers["Content-Range"])
r = requests.get(url, headers={"Range": "bytes=oops"})
print(r.status_code, len(r.content))
"#;
    let out = python(script, &[&url(port, "/big.bin")]);
    let lines: Vec<&str> = out.lines().collect();
    let hex: String = big[100..104].iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(lines[0], format!("206 bytes 100-199/{BIG} 100 {hex}"));
    assert_eq!(lines[1], "206 1");
    assert_eq!(lines[2], format!("200 {BIG}"));
    assert_eq!(lines[3], "206 multipart/byteranges");
    assert_eq!(lines[4], format!("416 bytes */{BIG}"));
    assert_eq!(lines[5], format!("200 {BIG}"));
}

// Validators and conditional requests, as a cache would send them.
#[test]
fn conditional_requests() {
    let (dir, _) = site();
    let (_host, port) = start(&dir, "cache_control = \"public, max-age=60\"");
    let mut c = Client::connect(port);
    let r = c.request(&get("/small.txt"));
    let etag = r.header("ETag").expect("an ETag").to_string();
    let modified = r.header("Last-Modified").expect("a Last-Modified").to_string();
    assert_eq!(r.header("Cache-Control"), Some("public, max-age=60"));
    let cond = |c: &mut Client, fields: &str| {
        c.request(format!("GET /small.txt HTTP/1.1\r\nHost: t\r\n{fields}\r\n").as_bytes())
    };
    let r = cond(&mut c, &format!("If-None-Match: \"x\", {etag}\r\n"));
    assert_eq!(r.status, 304, "{}", r.head);
    assert_eq!(r.header("ETag"), Some(etag.as_str()));
    assert_eq!(r.header("Cache-Control"), Some("public, max-age=60"));
    assert!(r.body.is_empty());
    assert_eq!(cond(&mut c, "If-None-Match: *\r\n").status, 304);
    // If-None-Match wins over If-Modified-Since.
    assert_eq!(cond(&mut c, &format!("If-None-Match: \"x\"\r\nIf-Modified-Since: {modified}\r\n")).status, 200);
    assert_eq!(cond(&mut c, &format!("If-Modified-Since: {modified}\r\n")).status, 304);
    // A date later than the server's clock is ignored (RFC 9110 §13.1.3): the file, not 304.
    let r = cond(&mut c, "If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT\r\n");
    assert_eq!((r.status, r.body_text().as_str()), (200, "0123456789abcdefghij"), "{}", r.head);
    assert_eq!(cond(&mut c, "If-Match: \"x\"\r\n").status, 412);
    assert_eq!(cond(&mut c, &format!("If-Match: {etag}\r\n")).status, 200);
    assert_eq!(cond(&mut c, "If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n").status, 412);
    // A file rewritten within the same second gets a new ETag (nanoseconds and size count).
    std::fs::write(dir.join("www/small.txt"), "changed").unwrap();
    let r = cond(&mut c, &format!("If-None-Match: {etag}\r\n"));
    assert_eq!((r.status, r.body_text().as_str()), (200, "changed"));
}

// Directories: a redirect that keeps the query, index.html for `dir/`, a file with a slash is
// 404; dotfiles and a symlink out of the root are 404 like a missing file.
#[test]
fn directories_dotfiles_and_escapes() {
    let (dir, _) = site();
    let (_host, port) = start(&dir, "");
    let mut c = Client::connect(port);
    let r = c.request(&get("/docs?a=1&b=2"));
    assert_eq!(r.status, 301, "{}", r.head);
    assert_eq!(r.header("Location"), Some("/docs/?a=1&b=2"));
    let r = c.request(&get("/docs/"));
    assert_eq!((r.status, r.body_text().as_str()), (200, "<h1>docs</h1>"));
    for path in ["/small.txt/", "/.env", "/escape.txt", "/nope"] {
        let r = c.request(&get(path));
        assert_eq!(r.status, 404, "{path}: {}", r.head);
        assert_eq!(r.body_text(), "Not Found\n", "{path}");
    }
    let r = c.request(&post("/small.txt", b"x"));
    assert_eq!((r.status, r.header("Allow")), (405, Some("GET, HEAD, OPTIONS")), "{}", r.head);
    let r = c.request(b"OPTIONS /small.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((r.status, r.header("Allow")), (200, Some("GET, HEAD, OPTIONS")));
    // A listing only when asked for, names escaped.
    dir.write("www/list/a<b>.txt", "x");
    assert_eq!(c.request(&get("/list/")).status, 404);
    let (_host2, port2) = start(&dir, "autoindex = true");
    let r = Client::connect(port2).request(&get("/list/"));
    assert_eq!(r.status, 200, "{}", r.head);
    assert_contains!(r.body_text(), "<a href=\"./a%3Cb%3E.txt\">a&lt;b&gt;.txt</a>");
}

// Limits that mean what they say: a 1 MiB body with `Expect: 100-continue` under the default
// 1 MiB package size gets 100 then 200; one byte more gets 413 before any 100; a long target
// is 414; too many header fields 431; an unknown method 501; a bad Host 400.
#[test]
fn limits_and_rfc_details() {
    let (_host, port) = start_plain();
    let body = pattern(1024 * 1024);
    let mut c = Client::connect(port);
    c.send(
        format!("PUT / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len())
            .as_bytes(),
    );
    let r = c.read_response().expect("100");
    assert_eq!(r.status, 100, "{}", r.head);
    c.send(&body);
    let r = c.read_response().expect("200");
    assert_eq!(r.status, 200, "{}", r.head);
    assert!(r.body == body, "echo differs");
    // Chunked: framing bytes do not count against max_body.
    let (head, chunks) = host_tests::post_chunked("/", &body.chunks(1000).collect::<Vec<_>>());
    c.send(&head);
    for chunk in chunks {
        c.send(&chunk);
    }
    let r = c.read_response().expect("chunked echo");
    assert_eq!((r.status, r.body.len()), (200, body.len()));

    let mut c = Client::connect(port);
    let over = body.len() + 1;
    let r = c.request(
        format!("PUT / HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {over}\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.head);

    let long = format!("/{}", "a".repeat(9000));
    for (req, status) in [
        (format!("GET {long} HTTP/1.1\r\nHost: t\r\n\r\n"), 414),
        (format!("GET / HTTP/1.1\r\nHost: t\r\n{}\r\n", "X: y\r\n".repeat(100)), 431),
        ("BREW / HTTP/1.1\r\nHost: t\r\n\r\n".to_string(), 501),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n".to_string(), 400),
        ("GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n".to_string(), 400),
        ("GET / HTTP/2.0\r\nHost: t\r\n\r\n".to_string(), 505),
        ("GET /x HTTP/1.1 x\r\nHost: t\r\n\r\n".to_string(), 400),
        ("GET / HTTP/1.2\r\nHost: t\r\n\r\n".to_string(), 200),
        // One rule for a repeated length, in two fields or in one list: refused.
        ("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".to_string(), 400),
        ("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello".to_string(), 400),
    ] {
        let r = Client::connect(port).request(req.as_bytes());
        assert_eq!(r.status, status, "{}: {}", &req[..req.len().min(40)], r.head);
    }
}

fn start_plain() -> (Host, u16) {
    let host = Host::start("http", &[]);
    let port = host.port();
    (host, port)
}
