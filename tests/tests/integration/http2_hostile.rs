//! HTTP/2 attacks and protocol abuse against the `http` plugin, each by a scripted client that
//! writes raw frames (python, with the `hpack` package for header blocks): CONTINUATION flood,
//! HPACK bomb, SETTINGS/PING/empty-DATA floods, too many streams, malformed requests, and a
//! client that never opens its window (the idle timeout still closes it, with GOAWAY first).
//! Each answer is the RFC 9113 one, the service goes on serving, and every defence shows in
//! `/metrics`.

use std::time::Duration;

use host_tests::{poll_until, Host, TempDir};

use crate::http_tools::{pattern, python, root_config};

/// Raw frames in, frames out: the helpers of every case. `sys.argv[1]` is the port.
const CLIENT: &str = r#"
import socket, struct, sys
import hpack

DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS = 1, 4
enc, dec = hpack.Encoder(), hpack.Decoder()

def frame(kind, flags, sid, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + sid.to_bytes(4, "big") + payload

def connect(settings=b""):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=20)
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0, settings))
    return s

def send(s, data):
    try:
        s.sendall(data)
    except OSError:
        pass  # the server may close before it has read everything

def request(path="/", method="GET", extra=()):
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", "x")] + list(extra)

def headers(sid, fields, end_stream=True):
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, enc.encode(fields))

class Seen:
    def __init__(self):
        self.goaway, self.resets, self.status, self.data, self.closed = None, {}, {}, {}, False

def read(s, done=lambda seen: False):
    """Frames until the server closes, or `done(seen)` holds."""
    seen, buf = Seen(), b""
    while not done(seen):
        try:
            chunk = s.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            seen.closed = True
            break
        buf += chunk
        while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
            n = int.from_bytes(buf[:3], "big")
            kind, sid, payload = buf[3], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n]
            buf = buf[9 + n:]
            if kind == GOAWAY:
                seen.goaway = (int.from_bytes(payload[4:8], "big"), int.from_bytes(payload[:4], "big"))
            elif kind == RST_STREAM:
                seen.resets[sid] = int.from_bytes(payload[:4], "big")
            elif kind == HEADERS:
                seen.status[sid] = dict(dec.decode(payload)).get(":status")
            elif kind == DATA:
                seen.data[sid] = seen.data.get(sid, 0) + len(payload)
    return seen
"#;

/// Runs one case: `CLIENT`, then `case`, against `port`; what it printed.
fn run_case(port: u16, case: &str) -> String {
    python(&format!("{CLIENT}\n{case}"), &[&port.to_string()]).trim().to_string()
}

/// The sum of `family`'s samples with `kind="<kind>"` in the admin listener's `/metrics`.
fn metric(admin: u16, family: &str, kind: &str) -> u64 {
    let (_, body) = crate::metrics::admin_get(admin, "/metrics");
    let prefix = format!("host_plugin_{family}_total{{");
    let label = format!("kind=\"{kind}\"");
    body.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn attacks_get_the_rfc_answers_and_are_counted_in_metrics() {
    let dir = TempDir::new();
    dir.write("www/big.bin", pattern(300_000));
    let config = root_config(&dir.join("www"), "");
    let host =
        Host::start("http", &["--plugin-config", &config, "--admin-listen", "127.0.0.1:0", "--idle-timeout", "2"]);
    let admin = crate::metrics::admin_port(&host);
    let port = host.port();

    // CONTINUATION flood (CVE-2024-27316): a header block that never ends is refused once over
    // its bound, before it is buffered: GOAWAY ENHANCE_YOUR_CALM (0xb), closed.
    let flood = run_case(
        port,
        r#"
s = connect()
send(s, frame(HEADERS, 0, 1, b"\0" * 16000) + frame(CONTINUATION, 0, 1, b"\0" * 16000) * 20)
seen = read(s)
print("goaway", seen.goaway and seen.goaway[0], "closed", seen.closed)
"#,
    );
    assert_eq!(flood, "goaway 11 closed True");

    // HPACK bomb: 4 KB of field indexed once, referenced 30 times (a 4 KB block decoding to
    // 120 KB): 431, and the connection goes on.
    let bomb = run_case(
        port,
        r#"
s = connect()
send(s, headers(1, request(extra=[("x-bomb", "a" * 4000)] * 30)) + headers(3, request()))
seen = read(s, lambda seen: 3 in seen.status)
print("status", seen.status.get(1), seen.status.get(3), "goaway", seen.goaway)
"#,
    );
    assert_eq!(bomb, "status 431 200 goaway None");

    // Floods of frames that do no work: SETTINGS, PING, empty DATA.
    for (name, frames) in [
        ("settings", "frame(SETTINGS, 0, 0) * 1500"),
        ("ping", "frame(PING, 0, 0, bytes(8)) * 1500"),
        ("empty data", "headers(1, request(method='POST'), end_stream=False) + frame(DATA, 0, 1) * 1500"),
    ] {
        let out = run_case(
            port,
            &format!(
                r#"
s = connect()
send(s, {frames})
seen = read(s)
print("goaway", seen.goaway and seen.goaway[0], "closed", seen.closed)
"#
            ),
        );
        assert_eq!(out, "goaway 11 closed True", "{name} flood");
    }

    // Too many streams: the 101st open stream is refused (REFUSED_STREAM, 0x7); the others live.
    let refused = run_case(
        port,
        r#"
s = connect()
send(s, b"".join(headers(2 * i + 1, request(method="POST"), end_stream=False) for i in range(101)))
seen = read(s, lambda seen: 201 in seen.resets)
print("resets", sorted(seen.resets.items()), "goaway", seen.goaway)
"#,
    );
    assert_eq!(refused, "resets [(201, 7)] goaway None");

    // Malformed requests: no :path, a connection-specific field, an upper-case name, a pseudo
    // field after a regular one, `te` other than trailers: each stream is reset with
    // PROTOCOL_ERROR (0x1); the connection serves the next request.
    let malformed = run_case(
        port,
        r#"
s = connect()
bad = [
    [(":method", "GET"), (":scheme", "http"), (":authority", "x")],
    request(extra=[("connection", "keep-alive")]),
    request(extra=[("X-Upper", "1")]),
    [(":method", "GET"), ("x-a", "1"), (":path", "/"), (":scheme", "http"), (":authority", "x")],
    request(extra=[("te", "gzip")]),
]
send(s, b"".join(headers(2 * i + 1, fields) for i, fields in enumerate(bad)) + headers(11, request()))
seen = read(s, lambda seen: 11 in seen.status)
print("resets", sorted(seen.resets.items()), "status", seen.status.get(11), "goaway", seen.goaway)
"#,
    );
    assert_eq!(malformed, "resets [(1, 1), (3, 1), (5, 1), (7, 1), (9, 1)] status 200 goaway None");

    // A client that never opens its window (slow read): the head arrives, no body; the idle
    // timeout still applies, and says GOAWAY NO_ERROR with the last stream id before closing.
    let stalled = run_case(
        port,
        r#"
s = connect(settings=(4).to_bytes(2, "big") + (0).to_bytes(4, "big"))
send(s, headers(1, request("/big.bin")))
seen = read(s)
print("status", seen.status.get(1), "data", seen.data.get(1, 0), "goaway", seen.goaway, "closed", seen.closed)
"#,
    );
    assert_eq!(stalled, "status 200 data 0 goaway (0, 1) closed True");

    // The service goes on serving, and /metrics counts each defence (the worker reports its
    // counters in its own time: poll).
    let hello = run_case(
        port,
        "s = connect()\nsend(s, headers(1, request()))\nprint(read(s, lambda seen: 1 in seen.data).status[1])",
    );
    assert_eq!(hello, "200");
    let want = [
        ("http2_defences", "continuation_flood", 1),
        ("http2_defences", "hpack_bomb", 1),
        ("http2_defences", "idle_frame_flood", 3),
        ("http2_streams", "refused", 1),
        ("http2_streams", "malformed", 5),
        ("http2_frames", "ping", 1000),
        ("http2_errors", "connection", 4),
    ];
    let counted = poll_until(Duration::from_secs(10), || {
        let got: Vec<u64> = want.iter().map(|(family, kind, _)| metric(admin, family, kind)).collect();
        want.iter().zip(&got).all(|((_, _, min), got)| got >= min).then_some(got)
    });
    assert!(counted.is_some(), "{}", crate::metrics::admin_get(admin, "/metrics").1);
}

// A client that never opens its windows cannot make the server hold more than the send buffer:
// once the responses waiting for its windows reach it, new requests are refused unprocessed
// (REFUSED_STREAM, which a client may retry); when it opens them, the waiting response
// arrives whole and the next request is served.
#[test]
fn responses_held_by_shut_windows_count_against_the_send_buffer() {
    let dir = TempDir::new();
    dir.write("www/mid.bin", pattern(200_000));
    let config = root_config(&dir.join("www"), "");
    let host = Host::start("http", &["--plugin-config", &config, "--max-send-buffer", "150000"]);
    let out = run_case(
        host.port(),
        r#"
s = connect(settings=(4).to_bytes(2, "big") + (0).to_bytes(4, "big"))
send(s, headers(1, request("/mid.bin")))
first = read(s, lambda seen: 1 in seen.status)
send(s, headers(3, request("/mid.bin")))
refused = read(s, lambda seen: 3 in seen.resets or 3 in seen.status)
big = (1 << 30).to_bytes(4, "big")
send(s, frame(WINDOW_UPDATE, 0, 0, big) + frame(WINDOW_UPDATE, 0, 1, big))
done = read(s, lambda seen: seen.data.get(1, 0) >= 200000)
send(s, frame(SETTINGS, 0, 0, (4).to_bytes(2, "big") + (1 << 20).to_bytes(4, "big")) + headers(5, request("/mid.bin")))
last = read(s, lambda seen: seen.data.get(5, 0) >= 200000)
print(first.status[1], first.data.get(1, 0), refused.resets.get(3), done.data.get(1), last.status.get(5), last.data.get(5))
"#,
    );
    assert_eq!(out, "200 0 7 200000 200 200000");
}

// A request body that stalls in the middle of a DATA frame meets the message timeout, long
// before the idle timeout: the connection ends with GOAWAY NO_ERROR and the last stream id (the
// client learns stream 1 may have been processed), and `/metrics` counts it
// (`http2_connections{kind=timeout}`). The connections are counted as they open and close; one
// still open is `opened - closed`.
#[test]
fn a_stalled_request_body_meets_the_message_timeout_and_connections_are_counted() {
    use std::io::{Read, Write};

    let dir = TempDir::new();
    dir.write("www/a.txt", b"a");
    let config = root_config(&dir.join("www"), "");
    let host = Host::start(
        "http",
        &[
            "--plugin-config",
            &config,
            "--admin-listen",
            "127.0.0.1:0",
            "--idle-timeout",
            "120",
            "--message-timeout",
            "1",
        ],
    );
    let admin = crate::metrics::admin_port(&host);
    let conns = |kind: &str| metric(admin, "http2_connections", kind);
    let wait_for = |want: [u64; 3]| {
        let got = poll_until(Duration::from_secs(10), || {
            let got = [conns("opened"), conns("closed"), conns("timeout")];
            (got == want).then_some(got)
        });
        assert!(
            got.is_some(),
            "want opened, closed, timeout {want:?}: {}",
            crate::metrics::admin_get(admin, "/metrics").1
        );
    };

    // A connection that stays open, once its SETTINGS are answered.
    let mut open = std::net::TcpStream::connect(("127.0.0.1", host.port())).expect("connect");
    open.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    open.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").unwrap();
    let mut head = [0u8; 9];
    open.read_exact(&mut head).expect("the server's SETTINGS");
    assert_eq!(head[3], 4, "a SETTINGS frame first");
    wait_for([1, 0, 0]);

    let stalled = run_case(
        host.port(),
        r#"
import time
s = connect()
send(s, headers(1, request("/", "POST", [("content-length", "100")]), end_stream=False))
send(s, frame(DATA, 0, 1, b"x" * 50)[:20])
start = time.monotonic()
seen = read(s)
print("goaway", seen.goaway, "closed", seen.closed, "before the idle timeout", time.monotonic() - start < 60)
"#,
    );
    assert_eq!(stalled, "goaway (0, 1) closed True before the idle timeout True");
    wait_for([2, 1, 1]);
    drop(open);
    wait_for([2, 2, 1]);
}

// The app server (`examples/http_app` on `http_proto::AppServer`) bounds what a client that
// never opens its windows makes it hold, as the http plugin does: once the responses waiting
// for the windows reach the send buffer, new requests are refused unprocessed (REFUSED_STREAM);
// when the client opens its windows, every response held arrives whole and the next request is
// served.
#[test]
fn the_app_server_refuses_requests_at_the_send_buffer_bound() {
    let host = Host::start("http_app", &["--max-send-buffer", "2000"]);
    let out = run_case(
        host.port(),
        r#"
name = "n" * 300
body = len('{"hello":"%s"}' % name)
s = connect(settings=(4).to_bytes(2, "big") + (0).to_bytes(4, "big"))
send(s, b"".join(headers(sid, request("/hello?name=" + name)) for sid in range(1, 41, 2)))
first = read(s, lambda seen: len(seen.status) + len(seen.resets) >= 20)
held = sorted(sid for sid, status in first.status.items() if status == "200" and sid not in first.data)
refused = sorted(sid for sid, code in first.resets.items() if code == 7)
send(s, frame(SETTINGS, 0, 0, (4).to_bytes(2, "big") + (1 << 20).to_bytes(4, "big")))
done = read(s, lambda seen: all(seen.data.get(sid, 0) >= body for sid in held))
send(s, headers(41, request("/hello?name=" + name)))
last = read(s, lambda seen: seen.data.get(41, 0) >= body)
print(len(held) > 0, len(refused) > 0, len(held) + len(refused),
      all(done.data.get(sid) == body for sid in held), last.status.get(41), last.data.get(41) == body)
"#,
    );
    assert_eq!(out, "True True 20 True 200 True");
}
