//! HTTP/2 through the `http` plugin, with real clients: curl (`--http2-prior-knowledge` on a
//! plain service, `--http2` over TLS with ALPN), `nghttp` with concurrent streams, and python
//! `h2` as a hostile client (Rapid Reset).

use std::path::PathBuf;

use host_tests::{assert_contains, poll_until, Host, TempDir};

use crate::http_tools::{curl, pattern, python, root_config, Ran};

const BIG: usize = 1024 * 1024 + 17;

/// A root with `big.bin` (1 MiB and a bit: streamed, over several windows) and `small.txt`.
fn site() -> (TempDir, Vec<u8>) {
    let dir = TempDir::new();
    let big = pattern(BIG);
    dir.write("www/big.bin", &big);
    dir.write("www/small.txt", "0123456789abcdefghij");
    (dir, big)
}

fn h2c(args: &[&str]) -> Ran {
    let mut all = vec!["--http2-prior-knowledge"];
    all.extend_from_slice(args);
    curl(&all)
}

// curl with prior knowledge speaks HTTP/2 to a plain service: the plaintext, a streamed 1 MiB
// file byte for byte, a range, HEAD, a 304 on its validator and a POST echoed; each response is
// logged with `HTTP/2.0`.
#[test]
fn h2c_prior_knowledge_serves_what_http1_serves() {
    let (dir, big) = site();
    let log = dir.join("access.log");
    let log_arg = log.display().to_string();
    let config = root_config(&dir.join("www"), "");
    let host = Host::start("http", &["--access-log", &log_arg, "--plugin-config", &config]);
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", host.port());

    let hello = h2c(&["-w", "\n%{http_version}", &url("/small.txt")]).text();
    assert_eq!(hello, "0123456789abcdefghij\n2");
    let got = h2c(&[&url("/big.bin")]).stdout;
    assert!(got == big, "big.bin over h2: {} bytes, want {}", got.len(), big.len());

    let head = h2c(&["-r", "10-19", "-D", "-", &url("/big.bin")]).text();
    assert_contains!(head, "HTTP/2 206");
    assert_contains!(head, &format!("content-range: bytes 10-19/{BIG}"));
    assert!(head.ends_with(std::str::from_utf8(&big[10..20]).unwrap()), "{head}");
    let range = h2c(&["-r", "500000-", &url("/big.bin")]).stdout;
    assert!(range == big[500_000..], "open range: {} bytes", range.len());

    let head = h2c(&["-I", &url("/big.bin")]).text();
    assert_contains!(head, "HTTP/2 200");
    assert_contains!(head, &format!("content-length: {BIG}"));
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap_or_else(|| panic!("no etag in {head}"))
        .trim()
        .to_string();
    let not_modified =
        h2c(&["-D", "-", "-o", "/dev/null", "-H", &format!("If-None-Match: {etag}"), &url("/big.bin")]).text();
    assert_contains!(not_modified, "HTTP/2 304");

    let body = pattern(100_000);
    dir.write("post.bin", &body);
    let post = dir.join("post.bin").display().to_string();
    let echoed = h2c(&["--data-binary", &format!("@{post}"), &url("/")]).stdout;
    assert!(echoed == body, "POST echo over h2: {} bytes", echoed.len());

    let missing = h2c(&["-w", "%{http_code}", "-o", "/dev/null", &url("/nope")]).text();
    assert_eq!(missing, "404");

    // The access log is flushed by the worker in its own time: wait for the last line.
    let text = poll_until(std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(&log).ok().filter(|t| t.contains("\"GET /nope HTTP/2.0\" 404"))
    })
    .unwrap_or_else(|| panic!("no h2 lines in {}", std::fs::read_to_string(&log).unwrap_or_default()));
    assert_contains!(text, "\"GET /small.txt HTTP/2.0\" 200 20");
    assert_contains!(text, &format!("\"GET /big.bin HTTP/2.0\" 200 {BIG}"));
    assert_contains!(text, "\"POST / HTTP/2.0\" 200 100000");
    assert!(!host.log_text().contains("WARN"), "{}", host.log_text());
}

// HTTP/1.1 still works beside it on the same service (the preface decides). `h2c = false`
// turns cleartext HTTP/2 off; `h2 = false` (the TLS switch) does not: the host tells the plugin
// the connection is plain TCP.
#[test]
fn http1_and_h2c_share_a_service() {
    let host = Host::start("http", &["--plugin-config", "h2 = false"]);
    let url = format!("http://127.0.0.1:{}/", host.port());
    assert_eq!(curl(&["--http1.1", "-w", " %{http_version}", &url]).text(), "Hello, World! 1.1");
    assert_eq!(h2c(&["-w", " %{http_version}", &url]).text(), "Hello, World! 2");
    // Off: the preface is not HTTP/1.1, and the connection is refused.
    let off = Host::start("http", &["--plugin-config", "h2c = false"]);
    let url = format!("http://127.0.0.1:{}/", off.port());
    let ran = crate::http_tools::run(
        std::process::Command::new("curl").args(["-sS", "--max-time", "10", "--http2-prior-knowledge", &url]),
        std::time::Duration::from_secs(20),
    );
    assert!(!ran.success, "h2c = false still served HTTP/2: {}", ran.text());
    assert_eq!(curl(&["--http1.1", &url]).text(), "Hello, World!");
}

/// A self-signed certificate for `localhost` and 127.0.0.1: (cert, key) PEM files in `dir`.
pub(crate) fn make_cert(dir: &TempDir) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.self_signed(&key).expect("a certificate");
    (dir.write("h2.crt", cert.pem().as_bytes()), dir.write("h2.key", key.serialize_pem().as_bytes()))
}

// Over TLS, curl's `--http2` negotiates `h2` by ALPN (the host offers it first, and tells the
// plugin what was agreed: `h2c = false` does not apply to TLS), and the 1 MiB file arrives
// whole; a client that asks for HTTP/1.1 still gets it; a client that sends the preface without
// having agreed h2 by ALPN is answered in HTTP/1.1 (prior knowledge is for cleartext only).
#[test]
fn tls_negotiates_h2_by_alpn() {
    let (dir, big) = site();
    let (cert, key) = make_cert(&dir);
    let config = root_config(&dir.join("www"), "h2c = false\n");
    let host = Host::start(
        "http",
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--plugin-config", &config],
    );
    let resolve = format!("localhost:{}:127.0.0.1", host.port());
    let url = |path: &str| format!("https://localhost:{}{path}", host.port());
    let tls = |args: &[&str]| {
        let mut all = vec!["--cacert", cert.to_str().unwrap(), "--resolve", &resolve];
        all.extend_from_slice(args);
        curl(&all)
    };
    assert_eq!(tls(&["--http2", "-w", " %{http_version}", &url("/small.txt")]).text(), "0123456789abcdefghij 2");
    let got = tls(&["--http2", &url("/big.bin")]).stdout;
    assert!(got == big, "big.bin over h2 and TLS: {} bytes", got.len());
    let range = tls(&["--http2", "-r", "1000-1999", &url("/big.bin")]).stdout;
    assert!(range == big[1000..2000], "range over h2 and TLS: {} bytes", range.len());
    assert_eq!(tls(&["--http1.1", "-w", " %{http_version}", &url("/small.txt")]).text(), "0123456789abcdefghij 1.1");

    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
for alpn in (None, ["http/1.1"]):
    if alpn:
        ctx.set_alpn_protocols(alpn)
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10), server_hostname="localhost")
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
    got = b""
    while True:
        try:
            data = s.recv(65536)
        except (OSError, ssl.SSLError):
            break
        if not data:
            break
        got += data
    print(s.selected_alpn_protocol(), got.split(b"\r\n")[0].decode())
"#;
    let out = python(script, &[&host.port().to_string(), cert.to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for (line, alpn) in lines.iter().zip(["None", "http/1.1"]) {
        assert!(line.starts_with(&format!("{alpn} HTTP/1.1 ")), "preface with ALPN {alpn}: {line:?}");
    }
}

// `h2 = false` alone turns HTTP/2 off over TLS: the plugin chooses its ALPN list when it starts
// (`Host::set_alpn`), so `h2` is not offered and `curl --http2` negotiates HTTP/1.1; with the
// default, the same curl gets HTTP/2.
#[test]
fn h2_false_stops_offering_h2_by_alpn() {
    let (dir, _) = site();
    let (cert, key) = make_cert(&dir);
    for (extra, version) in [("h2 = false\n", "1.1"), ("", "2")] {
        let config = root_config(&dir.join("www"), extra);
        let host = Host::start(
            "http",
            &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--plugin-config", &config],
        );
        let resolve = format!("localhost:{}:127.0.0.1", host.port());
        let url = format!("https://localhost:{}/small.txt", host.port());
        let ran = curl(&[
            "--cacert",
            cert.to_str().unwrap(),
            "--resolve",
            &resolve,
            "--http2",
            "-w",
            " %{http_version}",
            &url,
        ]);
        assert_eq!(ran.text(), format!("0123456789abcdefghij {version}"), "config {extra:?}");
    }
}

// nghttp sends several requests on one connection as concurrent streams: each gets its answer.
#[test]
fn nghttp_concurrent_streams() {
    let (dir, _) = site();
    let config = root_config(&dir.join("www"), "");
    let host = Host::start("http", &["--plugin-config", &config]);
    let base = format!("http://127.0.0.1:{}", host.port());
    let urls: Vec<String> =
        ["/small.txt", "/big.bin", "/", "/small.txt?2", "/nope"].iter().map(|p| format!("{base}{p}")).collect();
    let mut cmd = std::process::Command::new("nghttp");
    cmd.arg("-nv").args(&urls);
    let ran = crate::http_tools::run(&mut cmd, std::time::Duration::from_secs(30));
    assert!(ran.success, "nghttp failed: {}\n{}", ran.text(), ran.stderr);
    let out = ran.text();
    assert_eq!(out.matches(":status: 200").count(), 4, "{out}");
    assert_eq!(out.matches(":status: 404").count(), 1, "{out}");
    // Five streams, each ended by the server (odd ids 13..21 after nghttp's priority streams,
    // or 1..9: count them rather than name them).
    assert_eq!(out.matches("recv HEADERS frame").count(), 5, "{out}");
    assert!(!out.contains("RST_STREAM"), "{out}");
}

// Rapid Reset (CVE-2023-44487): a client that opens and cancels streams past the bound gets
// GOAWAY ENHANCE_YOUR_CALM and the connection closes; the service goes on serving.
#[test]
fn rapid_reset_ends_the_connection_with_enhance_your_calm() {
    let host = Host::start("http", &[]);
    let script = r#"
import socket, sys
import h2.connection, h2.config, h2.events, h2.errors
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
s.sendall(c.data_to_send())
for i in range(1000):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")])
    c.reset_stream(sid)
try:
    s.sendall(c.data_to_send())
except OSError:
    pass
code = None
while True:
    try:
        data = s.recv(65536)
    except OSError:
        break
    if not data:
        break
    try:
        events = c.receive_data(data)
    except Exception:
        break
    for e in events:
        if isinstance(e, h2.events.ConnectionTerminated):
            code = e.error_code
print("goaway", int(code) if code is not None else "none")
"#;
    let out = python(script, &[&host.port().to_string()]);
    assert_eq!(out.trim(), "goaway 11", "ENHANCE_YOUR_CALM is 0xb");
    let url = format!("http://127.0.0.1:{}/", host.port());
    assert_eq!(h2c(&[&url]).text(), "Hello, World!");
}

// A worker that drains (SIGTERM) sends GOAWAY NO_ERROR with the last stream id on an open h2
// connection, then closes it; the master exits 0.
#[test]
fn drain_sends_goaway_with_the_last_stream() {
    use std::io::{BufRead, BufReader};
    let mut host = Host::start("http", &[]);
    let script = r#"
import socket, sys
import h2.connection, h2.config, h2.events
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
c.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")], end_stream=True)
s.sendall(c.data_to_send())
ready = False
goaway = None
while goaway is None:
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.StreamEnded) and not ready:
            ready = True
            print("ready", flush=True)
        if isinstance(e, h2.events.ConnectionTerminated):
            goaway = (int(e.error_code), e.last_stream_id)
    # Nothing more is sent once the GOAWAY came: the worker may have closed already.
    if goaway is None:
        s.sendall(c.data_to_send())
try:
    closed = s.recv(65536) == b""
except ConnectionResetError:
    # A close that found bytes of ours unread (an acknowledgement crossing the GOAWAY) resets.
    closed = True
print("goaway", goaway, "closed", closed, flush=True)
"#;
    let mut child = std::process::Command::new("timeout")
        .args(["20", "python3", "-c", script, &host.port().to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    host.signal(host_tests::Signal::SIGTERM);
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "goaway (0, 1) closed True");
    assert!(child.wait().unwrap().success());
    let status = host.wait_all_gone(std::time::Duration::from_secs(15)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0), "{status}");
}
