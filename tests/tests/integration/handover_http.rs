//! The http plugin in hand-overs (docs/plugins.md, "Hand-over"): HTTP/1.1 keep-alive
//! connections, a request half sent, a large file download in flight, plain and over TLS, and
//! HTTP/2 connections (h2c and h2 over TLS) with their HPACK state and a window-blocked response
//! go on on the same connection across `host reload -g`. With a drain, each of these would get
//! `Connection: close` (HTTP/1.1) or GOAWAY (HTTP/2) and a closed connection.

use std::io::{Read, Write};
use std::time::Duration;

use host_tests::{Host, TempDir};

use crate::http_tools::pattern;

const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TIMEOUT: Duration = Duration::from_secs(15);
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// 20 MiB and a bit: far more than the socket buffers and the host's send buffer hold.
const BIG: usize = 20 * 1024 * 1024 + 13;
/// Sent whole by the plugin (under 256 KiB), more than an HTTP/2 window.
const MID: usize = 200_000;
/// Streamed by the plugin (over 256 KiB): over HTTP/2 a window at a time from the file.
const LARGE: usize = 1024 * 1024 + 5;

fn site() -> (TempDir, String) {
    let dir = TempDir::new();
    dir.write("www/big.bin", pattern(BIG));
    dir.write("www/mid.bin", pattern(MID));
    dir.write("www/large.bin", pattern(LARGE));
    let config = crate::http_tools::root_config(&dir.join("www"), "");
    (dir, config)
}

fn reload_and_wait_moved(host: &mut Host, n: usize) -> String {
    let out = host.command(["reload", "-g"], RELOAD_TIMEOUT);
    assert!(out.status.success(), "reload -g: {}{}", out.stdout, out.stderr);
    let line = host
        .log()
        .wait_for(&format!("hand-over: {n} connections moved"), LOG_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log_text()));
    assert!(line.contains("0 drained"), "{line}");
    line
}

/// Waits until the worker has read `n` bytes of some connection (its `connections` row).
fn wait_read(host: &mut Host, n: usize) {
    let bytes = format!(" {n}B ");
    host_tests::poll_until(Duration::from_secs(10), || {
        let out = host.command(["connections"], Duration::from_secs(5));
        out.stdout.lines().any(|l| l.contains(&bytes)).then_some(())
    })
    .unwrap_or_else(|| panic!("the worker never read {n} bytes"));
}

/// Reads one response head from `s`: (head, bytes read past it).
fn read_head(s: &mut impl Read) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = s.read(&mut chunk).unwrap_or_else(|e| panic!("no response head: {e}"));
        assert!(n > 0, "closed before a response head: {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the body of `len` bytes that follows a head (`rest` read already).
fn read_body(s: &mut impl Read, mut rest: Vec<u8>, len: usize) -> Vec<u8> {
    assert!(rest.len() <= len, "more than the body: a response too many");
    let at = rest.len();
    rest.resize(len, 0);
    s.read_exact(&mut rest[at..]).unwrap_or_else(|e| panic!("the body ended early: {e}"));
    rest
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head}"))
}

/// GET `path` on `s` and its whole response (head, body), keep-alive asserted.
fn get(s: &mut (impl Read + Write), path: &str) -> (String, Vec<u8>) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).unwrap();
    let (head, rest) = read_head(s);
    let body = read_body(s, rest, content_length(&head));
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    (head, body)
}

/// A 20 MiB download with two requests pipelined behind it (in the host's buffer, reading
/// paused while the body streams): the head and the first MiB read before the reload, the rest
/// after, on the same connection, then the two answers in order; then another request.
fn download_across_reload(host: &mut Host, s: &mut (impl Read + Write)) {
    s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /mid.bin HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (head, rest) = read_head(s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(content_length(&head), BIG);
    let first = read_body(s, rest, 1024 * 1024);
    reload_and_wait_moved(host, 1);
    let mut body = first;
    body.extend(read_body(s, Vec::new(), BIG - body.len()));
    assert!(body == pattern(BIG), "the download is not byte-exact");
    let (head, rest) = read_head(s);
    assert_eq!(content_length(&head), MID, "the pipelined requests are answered in order: {head}");
    assert!(read_body(s, rest, MID) == pattern(MID));
    let (head, rest) = read_head(s);
    assert_eq!(read_body(s, rest, content_length(&head)), b"Hello, World!");
    let (head, small) = get(s, "/mid.bin");
    assert!(head.starts_with("HTTP/1.1 200") && small == pattern(MID), "{head}");
}

fn tcp(port: u16) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

// A keep-alive connection between requests and one with a request half sent both move on
// `host reload -g`: the next request on the first is answered by the new worker (no
// `Connection: close`), the second's rest arrives there and is answered, and both go on.
#[test]
fn keep_alive_and_half_sent_requests_move() {
    let mut host = Host::start("http", &["--drain-timeout", "30"]);
    let mut idle = tcp(host.port());
    let (head, body) = get(&mut idle, "/");
    assert!(head.starts_with("HTTP/1.1 200") && body == b"Hello, World!", "{head}");
    let mut half = tcp(host.port());
    let post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world";
    half.write_all(&post[..30]).unwrap();
    wait_read(&mut host, 30);
    let old = host.worker_pids();
    reload_and_wait_moved(&mut host, 2);
    half.write_all(&post[30..]).unwrap();
    let (head, rest) = read_head(&mut half);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body(&mut half, rest, 11), b"hello world");
    let (_, body) = get(&mut idle, "/");
    assert_eq!(body, b"Hello, World!");
    let (_, body) = get(&mut half, "/");
    assert_eq!(body, b"Hello, World!");
    // The old worker had nothing left: it is gone long before the drain timeout.
    host.wait_workers(1, LOG_TIMEOUT, |now| now != old).unwrap_or_else(|e| panic!("{e}"));
}

// A 20 MiB static file in flight moves and completes byte-exact on the same connection, and
// the requests pipelined behind it are answered after it, in order. With `file_io = "sendfile"`
// (the default) the plugin hands the whole range to the host at once (`send_file`): it moves in
// the host's queue.
#[test]
fn a_download_in_flight_moves_and_completes() {
    let (_dir, config) = site();
    let mut host = Host::start("http", &["--plugin-config", &config, "--drain-timeout", "30"]);
    let mut s = tcp(host.port());
    download_across_reload(&mut host, &mut s);
}

// With `file_io = "pool"` the plugin reads the file and sends it a send buffer at a time: the
// rest of the body is the plugin's stream, which moves by the file's name (the new worker opens
// it and checks it is the same file), with its access-log line, pending until the body is sent:
// the new worker writes it, with the whole length.
#[test]
fn a_download_streamed_by_the_plugin_moves_with_its_log_line() {
    let (dir, config) = site();
    let config = format!("{config}file_io = \"pool\"\n");
    let log = dir.join("access.log");
    let log_arg = log.display().to_string();
    let mut host =
        Host::start("http", &["--plugin-config", &config, "--drain-timeout", "30", "--access-log", &log_arg]);
    let mut s = tcp(host.port());
    download_across_reload(&mut host, &mut s);
    let want = format!("\"GET /big.bin HTTP/1.1\" 200 {BIG}");
    host_tests::poll_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).ok().filter(|t| t.contains(&want))
    })
    .unwrap_or_else(|| panic!("no {want} in {}", std::fs::read_to_string(&log).unwrap_or_default()));
}

/// A certificate for `localhost` in `dir`: (cert file, key file, DER).
fn cert(dir: &TempDir) -> (String, String, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let c = dir.write("tls.crt", cert.pem().as_bytes());
    let k = dir.write("tls.key", key.serialize_pem().as_bytes());
    (c.display().to_string(), k.display().to_string(), cert.der().to_vec())
}

fn tls(port: u16, der: &[u8], alpn: &[u8]) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.to_vec().into()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, tcp(port))
}

// The same over TLS (`http/1.1` by ALPN): a keep-alive connection and a download in flight
// move with their record layer.
#[test]
fn tls_keep_alive_and_a_download_move() {
    let (dir, config) = site();
    let (c, k, der) = cert(&dir);
    let mut host =
        Host::start("http", &["--tls-cert", &c, "--tls-key", &k, "--plugin-config", &config, "--drain-timeout", "30"]);
    let mut s = tls(host.port(), &der, b"http/1.1");
    let (_, body) = get(&mut s, "/");
    assert_eq!(body, b"Hello, World!");
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    reload_and_wait_moved(&mut host, 1);
    let (_, body) = get(&mut s, "/");
    assert_eq!(body, b"Hello, World!", "the keep-alive connection goes on");
    download_across_reload(&mut host, &mut s);
}

/// A python `h2` client (h2c, or h2 over TLS with the certificate in argv[3]): requests with
/// fields its HPACK encoder indexes, two responses held by the connection's window (`/mid.bin`,
/// 200,000 bytes, queued whole in the HTTP/2 connection; `/large.bin`, 1 MiB, streamed by the
/// plugin from the file), the first 65,535 bytes received and not acknowledged; says `ready`,
/// waits for a line on stdin (the test reloads meanwhile), then sends two more requests with the
/// same fields (the blocks now refer to the dynamic table), opens the windows, and prints what
/// it got.
const H2_PY: &str = r#"
import socket, ssl, sys
import h2.connection, h2.config, h2.events
port, mode = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=20)
if mode == "tls":
    ctx = ssl.create_default_context(cafile=sys.argv[3])
    ctx.set_alpn_protocols(["h2"])
    s = ctx.wrap_socket(s, server_hostname="localhost")
    assert s.selected_alpn_protocol() == "h2"
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
s.sendall(c.data_to_send())
fields = lambda path: [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "localhost"),
                       ("x-session", "a-token-the-dynamic-table-holds-" + "z" * 40), ("user-agent", "handover-test/1")]
bodies, ended, status, ack = {}, set(), {}, [False]
def pump(until):
    while not until():
        data = s.recv(65536)
        if not data:
            raise SystemExit("closed")
        for e in c.receive_data(data):
            if isinstance(e, h2.events.ResponseReceived):
                status[e.stream_id] = dict(e.headers)[b":status"]
            if isinstance(e, h2.events.DataReceived):
                bodies.setdefault(e.stream_id, bytearray()).extend(e.data)
                if ack[0]:
                    c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            if isinstance(e, h2.events.StreamEnded):
                ended.add(e.stream_id)
            if isinstance(e, h2.events.ConnectionTerminated):
                raise SystemExit(f"goaway {e.error_code}")
        s.sendall(c.data_to_send())
c.send_headers(1, fields("/"), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: 1 in ended)
c.send_headers(3, fields("/mid.bin"), end_stream=True)
c.send_headers(5, fields("/large.bin"), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: sum(map(len, bodies.values())) >= 65535 and 3 in status and 5 in status)
assert bytes(bodies[1]) == b"Hello, World!"
print("ready", sum(map(len, bodies.values())), flush=True)
sys.stdin.readline()
# The new worker decodes this block (indexed fields) and answers its head; its body waits for
# the connection's window like the rest.
c.send_headers(7, fields("/"), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: 7 in status)
ack[0] = True
for sid in (3, 5):
    if bodies.get(sid):
        c.acknowledge_received_data(len(bodies[sid]), sid)
c.send_headers(9, fields("/mid.bin"), end_stream=True)
s.sendall(c.data_to_send())
pump(lambda: {3, 5, 7, 9} <= ended)
def pattern(n):
    return bytes(((i % 251) ^ (i // 251 % 256)) & 0xff for i in range(n))
mid, large = pattern(200000), pattern(1024 * 1024 + 5)
print(status[7].decode(), bytes(bodies[7]).decode(), bytes(bodies[3]) == mid, bytes(bodies[9]) == mid,
      bytes(bodies[5]) == large, flush=True)
"#;

fn h2_across_reload(host: &mut Host, args: &[&str]) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut py = Command::new("timeout")
        .args(["60", "python3", "-c", H2_PY])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with h2");
    let mut out = BufReader::new(py.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // The connection's window: the rest of both responses waits for it.
    assert_eq!(line, "ready 65535\n", "the responses wait for the window");
    reload_and_wait_moved(host, 1);
    writeln!(py.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "200 Hello, World! True True True\n", "after the reload, on the same connection");
    assert!(py.wait().unwrap().success());
}

// An h2c connection (prior knowledge) with its HPACK tables in use and a response held by the
// window moves: the new worker decodes the client's indexed fields and sends the rest when the
// client opens its window.
#[test]
fn an_h2c_connection_moves_with_its_hpack_state_and_a_blocked_stream() {
    let (_dir, config) = site();
    let mut host = Host::start("http", &["--plugin-config", &config, "--drain-timeout", "30"]);
    let port = host.port().to_string();
    h2_across_reload(&mut host, &[&port, "h2c"]);
}

// The same for h2 over TLS (ALPN `h2`).
#[test]
fn an_h2_tls_connection_moves_with_its_hpack_state_and_a_blocked_stream() {
    let (dir, config) = site();
    let (c, k, _) = cert(&dir);
    let mut host =
        Host::start("http", &["--tls-cert", &c, "--tls-key", &k, "--plugin-config", &config, "--drain-timeout", "30"]);
    let port = host.port().to_string();
    h2_across_reload(&mut host, &[&port, "tls", &c]);
}

// An application on `http_proto` (`examples/http_app`, `AppServer`) that sets
// `App::HANDOVER_VERSION` takes part too: a keep-alive connection and a half-sent POST move.
#[test]
fn an_app_server_connection_moves() {
    let mut host = Host::start("http_app", &["--drain-timeout", "30"]);
    let mut idle = tcp(host.port());
    let (_, body) = get(&mut idle, "/hello?name=a");
    assert_eq!(body, br#"{"hello":"a"}"#);
    let mut half = tcp(host.port());
    let post = b"POST /sum HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n[1,2,3]";
    half.write_all(&post[..40]).unwrap();
    wait_read(&mut host, 40);
    reload_and_wait_moved(&mut host, 2);
    half.write_all(&post[40..]).unwrap();
    let (head, rest) = read_head(&mut half);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_body(&mut half, rest, content_length(&head)), br#"{"sum":6}"#);
    let (_, body) = get(&mut idle, "/hello?name=b");
    assert_eq!(body, br#"{"hello":"b"}"#);
}
