//! The `http` plugin as a static-file server, through real clients: curl (ranges, resuming a
//! download, compression, validators, directories), python `requests`, and a raw client for
//! what clients hide (limits). Every test of files runs over HTTP/1.1 and over HTTP/2 (h2c with
//! prior knowledge: [`Proto`]), against the same service.

use host_tests::{assert_contains, Client, Host, TempDir};

use crate::http_tools::{curl, pattern, python, root_config, Ran};

const BIG: usize = 3 * 1024 * 1024 + 17;

/// The protocols the file tests run over: the same routes answer both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Http1,
    /// HTTP/2 in cleartext, with prior knowledge.
    H2c,
}

const PROTOS: [Proto; 2] = [Proto::Http1, Proto::H2c];

impl Proto {
    /// curl speaking this protocol.
    fn curl(self, args: &[&str]) -> Ran {
        let flag = match self {
            Proto::Http1 => "--http1.1",
            Proto::H2c => "--http2-prior-knowledge",
        };
        curl(&[&[flag], args].concat())
    }

    /// `GET path` with `fields` (`Name: value`), and `-X method` when not GET: the response.
    fn fetch(self, port: u16, method: &str, path: &str, fields: &[&str]) -> Fetched {
        let url = url(port, path);
        // `-I` prints the head alone (a HEAD); else `-D -` prints it before the body.
        let mut args = match method {
            "HEAD" => vec!["-I", &url],
            _ => vec!["-D", "-", "-X", method, &url],
        };
        for f in fields {
            args.extend(["-H", f]);
        }
        let out = self.curl(&args).stdout;
        let at = out.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head") + 4;
        let head = String::from_utf8_lossy(&out[..at]).into_owned();
        let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let want = match self {
            Proto::Http1 => "HTTP/1.1 ",
            Proto::H2c => "HTTP/2 ",
        };
        assert!(head.starts_with(want), "{self:?}: {head}");
        Fetched { status, head, body: out[at..].to_vec() }
    }
}

/// A response as curl saw it.
struct Fetched {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Fetched {
    /// A field's value (names compared without case: HTTP/2 sends them in lowercase).
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A field's value in a response head, the name compared without case.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

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

// `curl -r` gets exactly the bytes asked for, from a file large enough to be streamed, with
// both `file_io` modes; HEAD says the length and sends nothing; If-Range with the current or a
// stale validator, several ranges (multipart), an unsatisfiable range (416) and a bad one (the
// whole file) mean the same over both protocols. The log stays free of warnings.
#[test]
fn curl_ranges_are_exact() {
    let (dir, big) = site();
    for file_io in ["sendfile", "pool"] {
        let (host, port) = start(&dir, &format!("file_io = \"{file_io}\""));
        for proto in PROTOS {
            let what = format!("{proto:?}, file_io = {file_io}");
            for (range, want) in [
                ("0-99", &big[..100]),
                ("1000-", &big[1000..]),
                ("-5000", &big[BIG - 5000..]),
                ("300000-2999999", &big[300_000..3_000_000]),
            ] {
                let got = proto.curl(&["-r", range, &url(port, "/big.bin")]).stdout;
                assert!(got == want, "{what}: range {range}: {} bytes, want {}", got.len(), want.len());
            }
            let r = proto.fetch(port, "GET", "/big.bin", &["Range: bytes=10-19"]);
            assert_eq!(r.status, 206, "{what}: {}", r.head);
            assert_eq!(r.header("content-range"), Some(format!("bytes 10-19/{BIG}").as_str()), "{what}");
            assert_eq!(r.header("accept-ranges"), Some("bytes"), "{what}");
            assert!(r.body == big[10..20], "{what}");
            let full = proto.curl(&[&url(port, "/big.bin")]).stdout;
            assert!(full == big, "{what}: whole file: {} bytes", full.len());

            let head = proto.fetch(port, "HEAD", "/big.bin", &[]);
            assert_eq!(head.status, 200, "{what}");
            assert_eq!(head.header("content-length"), Some(BIG.to_string().as_str()), "{what}");
            assert!(head.body.is_empty(), "{what}: HEAD sent a body");

            let etag = head.header("etag").expect("an ETag").to_string();
            let if_range = format!("If-Range: {etag}");
            assert_eq!(proto.fetch(port, "GET", "/big.bin", &["Range: bytes=0-0", &if_range]).body.len(), 1);
            let stale = proto.fetch(port, "GET", "/big.bin", &["Range: bytes=0-0", "If-Range: \"stale\""]);
            assert_eq!((stale.status, stale.body.len()), (200, BIG), "{what}");
            let multi = proto.fetch(port, "GET", "/big.bin", &["Range: bytes=0-1,10-11"]);
            assert_eq!(multi.status, 206, "{what}");
            assert!(multi.header("content-type").unwrap().starts_with("multipart/byteranges; boundary="), "{what}");
            assert_contains!(multi.text(), &format!("Content-Range: bytes 10-11/{BIG}"));
            let past = proto.fetch(port, "GET", "/big.bin", &["Range: bytes=99999999-"]);
            assert_eq!(past.status, 416, "{what}");
            assert_eq!(past.header("content-range"), Some(format!("bytes */{BIG}").as_str()), "{what}");
            let bad = proto.fetch(port, "GET", "/big.bin", &["Range: bytes=oops"]);
            assert_eq!((bad.status, bad.body.len()), (200, BIG), "{what}");
        }
        assert!(!host.log_text().contains("WARN"), "{}", host.log_text());
    }
}

// `curl -C -` resumes a partial download into a byte-identical file.
#[test]
fn curl_resumes_a_partial_download() {
    let (dir, big) = site();
    let (_host, port) = start(&dir, "");
    for proto in PROTOS {
        let out = dir.join("download.bin");
        std::fs::write(&out, &big[..123_457]).unwrap();
        proto.curl(&["-C", "-", "-o", out.to_str().unwrap(), &url(port, "/big.bin")]);
        assert!(std::fs::read(&out).unwrap() == big, "{proto:?}: the resumed file differs");
    }
}

// `curl --compressed` gets the precompressed sibling or gzip made on the fly, with `Vary`;
// a range is never compressed on the fly.
#[test]
fn curl_compressed() {
    let (dir, _) = site();
    let (_host, port) = start(&dir, "");
    for proto in PROTOS {
        let r = proto.fetch(port, "GET", "/app.js", &["Accept-Encoding: gzip"]);
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{proto:?}: {}", r.head);
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{proto:?}");
        assert_eq!(r.header("content-length"), Some("17"), "{proto:?}");
        // Without Accept-Encoding: the file itself.
        assert_contains!(proto.curl(&[&url(port, "/app.js")]).text(), "console.log('plain')");
    }

    // On the fly (the sibling gone).
    std::fs::remove_file(dir.join("www/app.js.gz")).unwrap();
    let (_host2, port2) = start(&dir, "gzip = true\ngzip_min = 100");
    for proto in PROTOS {
        let got = proto.curl(&["--compressed", "-D", "-", &url(port2, "/app.js")]).text();
        assert_eq!(header(&got, "content-encoding"), Some("gzip"), "{proto:?}: {got}");
        assert_contains!(got, &"console.log('plain');\n".repeat(200));
        let ranged = proto.curl(&["--compressed", "-D", "-", "-r", "0-6", &url(port2, "/app.js")]).text();
        assert_eq!(ranged.split_whitespace().nth(1), Some("206"), "{proto:?}: {ranged}");
        assert_eq!(header(&ranged, "content-encoding"), None, "{proto:?}: {ranged}");
        assert!(ranged.ends_with("console"), "{ranged}");
    }
}

// python `requests` (an HTTP/1.1 client) with a Range header; then If-Range with a stale
// validator gets it all. (`curl_ranges_are_exact` asks the same over both protocols.)
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
    for proto in PROTOS {
        dir.write("www/small.txt", "0123456789abcdefghij");
        let cond = |fields: &[&str]| proto.fetch(port, "GET", "/small.txt", fields);
        let r = cond(&[]);
        let etag = r.header("etag").expect("an ETag").to_string();
        let modified = r.header("last-modified").expect("a Last-Modified").to_string();
        assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
        let r = cond(&[&format!("If-None-Match: \"x\", {etag}")]);
        assert_eq!(r.status, 304, "{proto:?}: {}", r.head);
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
        assert!(r.body.is_empty());
        assert_eq!(cond(&["If-None-Match: *"]).status, 304);
        // If-None-Match wins over If-Modified-Since.
        let since = format!("If-Modified-Since: {modified}");
        assert_eq!(cond(&["If-None-Match: \"x\"", &since]).status, 200);
        assert_eq!(cond(&[&since]).status, 304);
        // A date later than the server's clock is ignored (RFC 9110 §13.1.3): the file, not 304.
        let r = cond(&["If-Modified-Since: Fri, 01 Jan 2100 00:00:00 GMT"]);
        assert_eq!((r.status, r.text().as_str()), (200, "0123456789abcdefghij"), "{}", r.head);
        assert_eq!(cond(&["If-Match: \"x\""]).status, 412);
        assert_eq!(cond(&[&format!("If-Match: {etag}")]).status, 200);
        assert_eq!(cond(&["If-Unmodified-Since: Sun, 06 Nov 1994 08:49:37 GMT"]).status, 412);
        // A file rewritten within the same second gets a new ETag (nanoseconds and size count).
        std::fs::write(dir.join("www/small.txt"), "changed").unwrap();
        let r = cond(&[&format!("If-None-Match: {etag}")]);
        assert_eq!((r.status, r.text().as_str()), (200, "changed"), "{proto:?}");
    }
}

// Directories: a redirect that keeps the query, index.html for `dir/`, a file with a slash is
// 404; dotfiles and a symlink out of the root are 404 like a missing file; MIME types by
// extension.
#[test]
fn directories_dotfiles_and_escapes() {
    let (dir, _) = site();
    dir.write("www/list/a<b>.txt", "x");
    let (_host, port) = start(&dir, "");
    let (_host2, port2) = start(&dir, "autoindex = true");
    for proto in PROTOS {
        let r = proto.fetch(port, "GET", "/docs?a=1&b=2", &[]);
        assert_eq!(r.status, 301, "{proto:?}: {}", r.head);
        assert_eq!(r.header("location"), Some("/docs/?a=1&b=2"));
        let r = proto.fetch(port, "GET", "/docs/", &[]);
        assert_eq!((r.status, r.text().as_str()), (200, "<h1>docs</h1>"));
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"), "{proto:?}");
        assert_eq!(
            proto.fetch(port, "GET", "/small.txt", &[]).header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        for path in ["/small.txt/", "/.env", "/escape.txt", "/nope"] {
            let r = proto.fetch(port, "GET", path, &[]);
            assert_eq!(r.status, 404, "{proto:?} {path}: {}", r.head);
            assert_eq!(r.text(), "Not Found\n", "{path}");
        }
        let r = proto.fetch(port, "POST", "/small.txt", &[]);
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD, OPTIONS")), "{}", r.head);
        let r = proto.fetch(port, "OPTIONS", "/small.txt", &[]);
        assert_eq!((r.status, r.header("allow")), (200, Some("GET, HEAD, OPTIONS")));
        // A listing only when asked for, names escaped.
        assert_eq!(proto.fetch(port, "GET", "/list/", &[]).status, 404);
        let r = proto.fetch(port2, "GET", "/list/", &[]);
        assert_eq!(r.status, 200, "{proto:?}: {}", r.head);
        assert_contains!(r.text(), "<a href=\"./a%3Cb%3E.txt\">a&lt;b&gt;.txt</a>");
    }
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
