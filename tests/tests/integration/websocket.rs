//! WebSocket (RFC 6455) through the `websocket` echo plugin and the `ws_chat` example: a real
//! client (Python's `websockets` package, a small script per test) for the happy paths, raw
//! sockets for bad input.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use host_tests::{assert_contains, poll_until, Client, Host, Signal};

/// Runs `python3 -c SCRIPT PORT` (bounded: killed after 30 s) and returns its stdout; panics with
/// its stderr when it fails.
pub(crate) fn python(script: &str, port: u16) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run python3: {e}"));
    let status = poll_until(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().expect("piped").read_to_string(&mut out).unwrap();
    child.stderr.take().expect("piped").read_to_string(&mut err).unwrap();
    match status {
        Some(s) if s.success() => out,
        Some(s) => panic!(
            "the client script failed ({s}); it needs `python3 -m pip install websockets`\nstdout:\n{out}\nstderr:\n{err}"
        ),
        None => panic!("the client script ran past 30 s\nstdout:\n{out}\nstderr:\n{err}"),
    }
}

/// The script's prologue: `url` of the server, and `connect` to loopback only (no proxy).
pub(crate) const PRELUDE: &str = r#"
import sys
from websockets.sync.client import connect as _connect
url = "ws://127.0.0.1:%s/" % sys.argv[1]
def connect(**kw):
    return _connect(url, proxy=None, open_timeout=5, close_timeout=5, **kw)
"#;

#[test]
fn python_client_gets_echo_large_messages_pongs_and_its_close_code() {
    let host = Host::start("websocket", &[]);
    let script = format!(
        r#"{PRELUDE}
with connect(max_size=None) as ws:
    ws.send("héllo")
    print("text", ws.recv(timeout=5) == "héllo")
    ws.send(b"\x00\xff\x10")
    r = ws.recv(timeout=5)
    print("binary", isinstance(r, bytes) and r == b"\x00\xff\x10")
    big = bytes(range(256)) * 3000
    ws.send(big)
    print("large", ws.recv(timeout=10) == big)
    ws.send(["frag", "men", "ted ✓"])
    print("fragments", ws.recv(timeout=5) == "fragmented ✓")
    print("pong", ws.ping(b"abc").wait(5))
    ws.close(code=4001, reason="bye")
    print("close", ws.close_code)
"#
    );
    let out = python(&script, host.port());
    assert_eq!(out, "text True\nbinary True\nlarge True\nfragments True\npong True\nclose 4001\n");
}

#[test]
fn subprotocol_is_the_clients_first_that_the_server_lists() {
    let host = Host::start("websocket", &["--plugin-config", r#"protocols = ["chat", "superchat"]"#]);
    let script = format!(
        r#"{PRELUDE}
with connect(subprotocols=["v9", "superchat", "chat"]) as ws:
    print(ws.subprotocol)
with connect(subprotocols=["v9"]) as ws:
    print(ws.subprotocol)
"#
    );
    // websockets refuses a server that picks a protocol it did not offer, so "None" also shows
    // that no header was sent when nothing matched.
    assert_eq!(python(&script, host.port()), "superchat\nNone\n");
}

// The `websockets` client offers permessage-deflate by default: the server accepts it, and
// messages round-trip whether compressed or not; a client that offers nothing gets nothing.
#[test]
fn python_client_negotiates_permessage_deflate_and_round_trips() {
    let host = Host::start("websocket", &[]);
    let script = format!(
        r#"{PRELUDE}
with connect(max_size=None) as ws:
    print(ws.response.headers.get("Sec-WebSocket-Extensions"))
    print([type(e).__name__ for e in ws.protocol.extensions])
    long = "compress me, " * 5000
    # The server answers short messages uncompressed, long ones compressed.
    for m in ("short", long, long.encode(), bytes(range(256)) * 100, "✓" * 1000, long):
        ws.send(m)
        print(ws.recv(timeout=10) == m, end=" ")
    print()
with connect(compression=None) as ws:
    print(ws.response.headers.get("Sec-WebSocket-Extensions"))
    ws.send("plain")
    print(ws.recv(timeout=5))
"#
    );
    assert_eq!(
        python(&script, host.port()),
        "permessage-deflate; server_no_context_takeover\n['PerMessageDeflate']\n\
         True True True True True True \nNone\nplain\n"
    );
    // Turned off by the switch.
    let host = Host::start("websocket", &["--plugin-config", "permessage_deflate = false"]);
    let script = format!(
        r#"{PRELUDE}
with connect() as ws:
    print(ws.response.headers.get("Sec-WebSocket-Extensions"))
    ws.send("x" * 1000)
    print(len(ws.recv(timeout=5)))
"#
    );
    assert_eq!(python(&script, host.port()), "None\n1000\n");
}

// A compressed message that inflates past the max package size (16 MiB of zeros, some 16 KiB
// on the wire) is closed with 1009; one that inflates to exactly the limit is echoed.
#[test]
fn zip_bomb_is_refused_with_1009() {
    let host = Host::start("websocket", &[]);
    let script = format!(
        r#"{PRELUDE}
from websockets.exceptions import ConnectionClosedError
with connect(max_size=None) as ws:
    exact = b"\0" * (1 << 20)
    ws.send(exact)
    print(ws.recv(timeout=10) == exact)
with connect(max_size=None) as ws:
    ws.send(b"\0" * (16 << 20))
    try:
        ws.recv(timeout=10)
    except ConnectionClosedError as e:
        print(e.rcvd.code)
"#
    );
    assert_eq!(python(&script, host.port()), "True\n1009\n");
}

// A message of exactly the max package size, in one frame, is not refused because of its
// header; one byte more is.
#[test]
fn a_message_of_exactly_the_limit_is_echoed() {
    let host = Host::start("websocket", &["--max-package-size", "65536"]);
    let mut c = open(host.port());
    let payload: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    c.send(&frame(0x82, &payload));
    let echo = c.read_exact(10 + payload.len()).expect("the echo");
    assert_eq!(echo[..2], [0x82, 127]);
    assert_eq!(echo[10..], payload[..]);
    let mut c = open(host.port());
    c.send(&frame(0x82, &vec![0; 65537])[..14]);
    let got = c.wait_closed(Duration::from_secs(5)).expect("one byte over closes");
    assert_eq!(close_code_in(&got), 1009);
}

// With two workers, every member of a room gets every message, whichever worker it landed on and
// whichever worker the sender's is.
#[test]
fn chat_delivers_across_workers() {
    let host = Host::start("ws_chat", &["--count", "2"]);
    let script = format!(
        r#"{PRELUDE}
clients, pids = [], {{}}
for _ in range(60):
    ws = connect()
    ws.send("/whoami")
    pid = ws.recv(timeout=5).split()[3]
    ws.send("/join lobby")
    assert ws.recv(timeout=5) == "joined lobby"
    clients.append(ws)
    pids.setdefault(pid, ws)
    if len(pids) == 2 and len(clients) >= 4:
        break
print("workers", len(pids))
for i, sender in enumerate(pids.values()):
    text = "hello %d" % i
    sender.send(text)
    print(all(c.recv(timeout=5) == text for c in clients), end=" ")
print()
for c in clients:
    c.close()
"#
    );
    assert_eq!(python(&script, host.port()), "workers 2\nTrue True \n");
}

#[test]
fn chat_sends_each_message_to_every_client_of_the_worker() {
    let host = Host::start("ws_chat", &["--count", "1"]);
    let script = format!(
        r#"{PRELUDE}
with connect() as a, connect() as b:
    a.send("hi")
    print(a.recv(timeout=5))
    for ws in (a, b):
        ws.send("/join lobby")
        assert ws.recv(timeout=5) == "joined lobby"
    a.send("hi from a")
    print(a.recv(timeout=5), "|", b.recv(timeout=5))
    b.send("yo")
    print(a.recv(timeout=5), "|", b.recv(timeout=5))
"#
    );
    assert_eq!(python(&script, host.port()), "! /join a room first\nhi from a | hi from a\nyo | yo\n");
}

// ---- Raw sockets ----

fn upgrade_request(extra: &str) -> Vec<u8> {
    format!(
        "GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// A client that completed the handshake.
fn open(port: u16) -> Client {
    let mut c = Client::connect(port);
    let r = c.request(&upgrade_request("Sec-WebSocket-Version: 13\r\n"));
    assert_eq!(r.status, 101, "{}", r.head);
    assert_eq!(r.header("Sec-WebSocket-Accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    c
}

/// A masked client frame (`first`: FIN, RSV and opcode).
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [9u8, 8, 7, 6];
    let mut f = vec![first];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// The status code of the close frame in `bytes` (what arrived before the server closed).
fn close_code_in(bytes: &[u8]) -> u16 {
    assert!(bytes.len() >= 4 && bytes[0] == 0x88, "expected a close frame, got {bytes:x?}");
    u16::from_be_bytes([bytes[2], bytes[3]])
}

#[test]
fn plain_get_and_wrong_version_get_426() {
    let host = Host::start("websocket", &[]);
    let r = Client::connect(host.port()).request(&host_tests::get("/"));
    assert_eq!(r.status, 426);
    assert_eq!(r.header("Upgrade"), Some("websocket"));
    assert_contains!(r.body_text(), "WebSocket");
    assert_eq!(r.body_text().lines().count(), 1);
    let r = Client::connect(host.port()).request(&upgrade_request("Sec-WebSocket-Version: 8\r\n"));
    assert_eq!(r.status, 426);
    assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"));
    let r = Client::connect(host.port()).request(&upgrade_request(""));
    assert_eq!(r.status, 400, "no version at all is a bad request");
}

#[test]
fn origin_outside_the_allow_list_gets_403() {
    let host = Host::start("websocket", &["--plugin-config", r#"origins = ["https://example.com"]"#]);
    let r = Client::connect(host.port())
        .request(&upgrade_request("Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n"));
    assert_eq!(r.status, 403);
    let r = Client::connect(host.port())
        .request(&upgrade_request("Sec-WebSocket-Version: 13\r\nOrigin: https://example.com\r\n"));
    assert_eq!(r.status, 101);
}

#[test]
fn unmasked_frame_is_closed_with_1002() {
    let host = Host::start("websocket", &[]);
    let mut c = open(host.port());
    c.send(&[0x81, 0x02, b'h', b'i']);
    let got = c.wait_closed(Duration::from_secs(5)).expect("closed after the close frame");
    assert_eq!(close_code_in(&got), 1002);
}

#[test]
fn huge_lengths_close_the_connection_and_the_worker_serves_on() {
    let host = Host::start("websocket", &["--max-package-size", "65536"]);
    // A 64-bit length of 2^63.
    let mut c = open(host.port());
    let mut head = vec![0x82, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 63).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    c.send(&head);
    let got = c.wait_closed(Duration::from_secs(5)).expect("a 2^63 length closes the connection");
    assert_eq!(close_code_in(&got), 1002);
    // Over the max package size: 1009, from the header alone.
    let mut c = open(host.port());
    c.send(&frame(0x82, &vec![0; 100_000])[..14]);
    let got = c.wait_closed(Duration::from_secs(5)).expect("an oversized frame closes the connection");
    assert_eq!(close_code_in(&got), 1009);
    // The worker is unharmed: another client is served.
    let mut other = open(host.port());
    other.send(&frame(0x81, b"still here"));
    other.send(&frame(0x88, &1000u16.to_be_bytes()));
    let got = other.wait_closed(Duration::from_secs(5)).expect("closed after the close handshake");
    let mut want = vec![0x81, 10];
    want.extend_from_slice(b"still here");
    want.extend_from_slice(&[0x88, 2, 0x03, 0xE8]);
    assert_eq!(got, want);
}

// That a peer answering pings stays open is a unit test (websocket-core), free of timing.
#[test]
fn silent_peer_is_pinged_then_closed() {
    let host = Host::start("websocket", &["--plugin-config", "ping_interval = 0.2"]);
    let mut c = open(host.port());
    let got = c.wait_closed(Duration::from_secs(10)).expect("a peer that never answers is closed");
    assert!(got.starts_with(&[0x89, 0x00]), "a ping first: {got:x?}");
}

#[test]
fn drain_sends_going_away_and_the_host_stops_once_answered() {
    let mut host = Host::start("websocket", &["--drain-timeout", "30"]);
    let mut c = open(host.port());
    // The connection is open once the worker echoes.
    c.send(&frame(0x81, b"x"));
    assert_eq!(c.read_exact(3).expect("the echo"), [0x81, 1, b'x']);
    host.signal(Signal::SIGTERM);
    assert_eq!(close_code_in(&c.read_exact(4).expect("a close frame")), 1001);
    c.send(&frame(0x88, &1001u16.to_be_bytes()));
    let status = host.wait_all_gone(Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status.code(), Some(0));
}
