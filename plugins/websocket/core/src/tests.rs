//! Unit tests: the frame parser and encoder, masking, UTF-8 in pieces, close payloads, the
//! handshake, and the [`WebSocket`] layer driven through a fake host the way the worker drives
//! it (framing with `input`, then `on_message` with each complete frame).

use plugin_api::testing::TestHost;
use std::io::Write;

use plugin_api::{ConnError, ConnId, Frame, Host, Protocol, StateWriter, TimerId, WorkerInfo};

use crate::frame::*;
use crate::handshake::{accept_key, handshake, head_len, Policy, Rejection};
use crate::utf8::Utf8Validator;
use crate::{Handler, Message, WebSocket, Ws};

/// A client frame: FIN, RSV bits and opcode as given, masked with a fixed key.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
    out
}

const FIN: u8 = 0x80;

#[test]
fn parses_headers_of_every_length_and_waits_for_incomplete_ones() {
    for len in [0usize, 1, 125, 126, 65535, 65536, 100_000] {
        let f = client_frame(FIN | 0x2, &vec![7; len]);
        let h = parse_header(&f).unwrap().unwrap();
        assert_eq!((h.fin, h.opcode, h.payload_len as usize), (true, OpCode::Binary, len));
        assert_eq!(h.frame_len(), Some(f.len()));
        assert_eq!(h.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        for cut in 0..h.header_len {
            assert_eq!(parse_header(&f[..cut]), Ok(None), "len {len}, {cut} header bytes");
        }
    }
}

#[test]
fn rejects_what_the_header_alone_shows_is_wrong() {
    assert_eq!(parse_header(&[0x80 | 0x40 | 0x1, 0x80]), Err(ProtocolError::ReservedBits));
    assert_eq!(parse_header(&[0x80 | 0x10 | 0x1, 0x80]), Err(ProtocolError::ReservedBits));
    assert_eq!(parse_header(&[0x83, 0x80]), Err(ProtocolError::ReservedOpcode(3)));
    assert_eq!(parse_header(&[0x8B, 0x80]), Err(ProtocolError::ReservedOpcode(0xB)));
    assert_eq!(parse_header(&[0x89, 0x80 | 126, 0, 126]), Err(ProtocolError::ControlTooLong));
    assert_eq!(parse_header(&[0x09, 0x80]), Err(ProtocolError::ControlFragmented));
    // A 64-bit length of 2^63: the high bit must be 0.
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    assert_eq!(parse_header(&huge), Err(ProtocolError::LengthTooLarge));
    // 2^63 - 1 parses (the size limit refuses it, see below).
    let mut big = vec![0x82, 0x80 | 127];
    big.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    big.extend_from_slice(&[1, 2, 3, 4]);
    let h = parse_header(&big).unwrap().unwrap();
    assert_eq!((h.payload_len, h.header_len), (u64::MAX >> 1, 14));
}

#[test]
fn masking_in_pieces_equals_masking_whole() {
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let key = [1, 2, 3, 250];
    let mut whole = data.clone();
    apply_mask(&mut whole, key, 0);
    assert_eq!(whole[4], data[4] ^ 1);
    assert_eq!(whole[7], data[7] ^ 250);
    for cut in [1, 3, 5, 8, 13, 999] {
        let mut pieces = data.clone();
        let (a, b) = pieces.split_at_mut(cut);
        apply_mask(a, key, 0);
        apply_mask(b, key, cut);
        assert_eq!(pieces, whole, "cut at {cut}");
    }
    apply_mask(&mut whole, key, 0);
    assert_eq!(whole, data, "masking twice restores the data");
}

#[test]
fn encodes_server_frames_unmasked_with_minimal_lengths() {
    for (len, header) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
        let mut out = Vec::new();
        write_frame(&mut out, true, OpCode::Text, &vec![b'a'; len]);
        let h = parse_header(&out).unwrap().unwrap();
        assert_eq!((h.header_len, h.payload_len as usize, h.mask, h.fin), (header, len, None, true));
        assert_eq!(out.len(), header + len);
    }
    let mut out = Vec::new();
    write_close(&mut out, 1000, &"é".repeat(100));
    let h = parse_header(&out).unwrap().unwrap();
    assert!(h.payload_len as usize <= MAX_CONTROL_PAYLOAD, "the reason is cut to fit");
    let (code, reason) = parse_close(&out[h.header_len..]).unwrap().unwrap();
    assert_eq!((code, reason.chars().count()), (1000, 61), "cut at a char boundary");
}

#[test]
fn close_payloads() {
    assert_eq!(parse_close(b""), Ok(None));
    assert_eq!(parse_close(&[3]), Err(ProtocolError::BadClosePayload));
    assert_eq!(parse_close(&[0x03, 0xE8, b'o', b'k']), Ok(Some((1000, "ok"))));
    for ok in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999] {
        assert!(parse_close(&u16::to_be_bytes(ok)).is_ok(), "{ok}");
    }
    for bad in [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535] {
        assert_eq!(parse_close(&u16::to_be_bytes(bad)), Err(ProtocolError::BadClosePayload), "{bad}");
    }
    assert_eq!(parse_close(&[0x03, 0xE8, 0xFF]), Err(ProtocolError::InvalidUtf8));
    assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);
    assert_eq!(ProtocolError::TooBig.close_code(), 1009);
    assert_eq!(ProtocolError::Unmasked.close_code(), 1002);
}

#[test]
fn utf8_split_anywhere_is_valid() {
    let text = "κόσμε 😀 a€b".as_bytes();
    for a in 0..=text.len() {
        for b in a..=text.len() {
            let mut v = Utf8Validator::new();
            for piece in [&text[..a], &text[a..b], &text[b..]] {
                assert_eq!(v.feed(piece), Ok(()), "cuts at {a}, {b}");
            }
            assert_eq!(v.finish(), Ok(()));
        }
    }
}

#[test]
fn utf8_fails_on_the_first_invalid_byte() {
    let mut v = Utf8Validator::new();
    // A valid start, then a surrogate (ED A0 80): the A0 is already impossible after ED.
    assert!(v.feed("κόσμε".as_bytes()).is_ok());
    assert!(v.feed(&[0xED]).is_ok(), "ED could still start a valid code point");
    assert!(v.feed(&[0xA0]).is_err(), "fails at the A0, before the rest arrives");
    // Over U+10FFFF, 0xFF, and an overlong form: each fails on its own piece.
    for bad in [&[0xF4, 0x90][..], &[0xFF], &[0xC0, 0x80], &[0x80]] {
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"ok").is_ok());
        assert!(v.feed(bad).is_err(), "{bad:x?}");
    }
    // An unfinished code point at the end is invalid.
    let mut v = Utf8Validator::new();
    assert!(v.feed(&[0xE2, 0x82]).is_ok());
    assert!(v.finish().is_err());
    assert!(v.feed(b"a").is_ok() && v.finish().is_ok(), "finish resets the state");
}

#[test]
fn accept_key_matches_the_rfc_example() {
    assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

fn upgrade(extra: &str) -> String {
    format!(
        "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

#[test]
fn handshake_accepts_and_refuses() {
    let none = Policy::default();
    let ok = handshake(upgrade("Sec-WebSocket-Version: 13\r\n").as_bytes(), &none).unwrap();
    let response = String::from_utf8(ok.response()).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{response}");
    assert!(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(!response.contains("Sec-WebSocket-Extensions"), "permessage-deflate is declined");
    let refuse = |head: &str| handshake(head.as_bytes(), &none).unwrap_err();
    assert_eq!(refuse(&upgrade("Sec-WebSocket-Version: 8\r\n")), Rejection::WrongVersion);
    assert_eq!(refuse(&upgrade("")), Rejection::BadRequest("no Sec-WebSocket-Version"));
    assert_eq!(refuse("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Rejection::NotUpgrade);
    assert!(matches!(
        refuse(&upgrade("Sec-WebSocket-Version: 13\r\n").replace("GET", "POST")),
        Rejection::BadRequest(_)
    ));
    let bad_key = upgrade("Sec-WebSocket-Version: 13\r\n").replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=");
    assert!(matches!(refuse(&bad_key), Rejection::BadRequest(_)));
    let wrong = String::from_utf8(Rejection::WrongVersion.response()).unwrap();
    assert!(wrong.starts_with("HTTP/1.1 426 ") && wrong.contains("Sec-WebSocket-Version: 13\r\n"), "{wrong}");
    assert_eq!(head_len(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    assert_eq!(head_len(b"GET / HTTP/1.1\r\n\r\nxyz"), Ok(Some(18)));
}

#[test]
fn handshake_selects_subprotocol_and_checks_origin() {
    let protocols = ["chat".to_string(), "superchat".to_string()];
    let origins = ["https://example.com".to_string()];
    let policy = Policy { origins: &origins, protocols: &protocols };
    let head = upgrade(
        "Sec-WebSocket-Version: 13\r\nOrigin: https://example.com\r\nSec-WebSocket-Protocol: v2, superchat\r\n\
         Sec-WebSocket-Protocol: chat\r\n",
    );
    let ok = handshake(head.as_bytes(), &policy).unwrap();
    assert_eq!(ok.protocol.as_deref(), Some("superchat"), "the client's first that the server lists");
    assert!(String::from_utf8(ok.response()).unwrap().contains("Sec-WebSocket-Protocol: superchat\r\n"));
    let other = upgrade("Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n");
    assert_eq!(handshake(other.as_bytes(), &policy).unwrap_err(), Rejection::ForbiddenOrigin);
    let unknown = upgrade("Sec-WebSocket-Version: 13\r\nOrigin: https://example.com\r\nSec-WebSocket-Protocol: v9\r\n");
    assert_eq!(handshake(unknown.as_bytes(), &policy).unwrap().protocol, None);
}

// ---- The layer, driven through a fake host ----

/// Echoes and records messages, and records the worker-level events.
#[derive(Default)]
struct Recorder {
    got: Vec<(bool, Vec<u8>)>,
    events: Vec<String>,
}

impl Handler for Recorder {
    const HANDOVER_VERSION: u32 = 1;

    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Recorder::default())
    }
    fn on_message(&mut self, ws: &mut Ws<'_, '_>, conn: ConnId, msg: Message<'_>) {
        match msg {
            Message::Text(t) => {
                self.got.push((true, t.as_bytes().to_vec()));
                ws.send_text(conn, t);
            }
            Message::Binary(b) => {
                self.got.push((false, b.to_vec()));
                ws.send_binary(conn, b);
            }
        }
    }
    fn on_worker_message(&mut self, _ws: &mut Ws<'_, '_>, from_slot: u32, msg: &[u8]) {
        self.events.push(format!("message from {from_slot}: {}", String::from_utf8_lossy(msg)));
    }
    fn on_task_done(&mut self, _ws: &mut Ws<'_, '_>, task: plugin_api::TaskId, result: Result<Vec<u8>, String>) {
        self.events.push(format!("task {task:?}: {result:?}"));
    }
    fn on_notify(&mut self, _ws: &mut Ws<'_, '_>, data: &[u8]) {
        self.events.push(format!("notify {data:?}"));
    }
    fn on_timer(&mut self, _ws: &mut Ws<'_, '_>, timer: TimerId, data: u64) {
        self.events.push(format!("timer {} {data}", timer.0));
    }
}

/// One connection through the layer, framed as the worker frames it.
struct Conn {
    ws: WebSocket<Recorder>,
    host: TestHost,
    buf: Vec<u8>,
    /// `input` said Invalid, or the host refused a message over the max size.
    failed: bool,
    max: usize,
}

const CONN: ConnId = ConnId::new(0, 1);

impl Conn {
    fn open(max: usize) -> Conn {
        let ws = WebSocket::new("ping_interval = 0", &worker(max)).unwrap();
        let mut c = Conn { ws, host: TestHost::default(), buf: Vec::new(), failed: false, max };
        c.feed(upgrade("Sec-WebSocket-Version: 13\r\n").as_bytes());
        let response = String::from_utf8(c.host.take_sent(CONN)).unwrap();
        assert!(response.starts_with("HTTP/1.1 101"), "{response}");
        c
    }

    fn with_host<T>(&mut self, f: impl FnOnce(&mut WebSocket<Recorder>, &mut Host<'_>) -> T) -> T {
        let ws = &mut self.ws;
        self.host.with(|host| f(ws, host))
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        while !self.host.is_closed(CONN) && !self.failed && !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            let frame = self.with_host(|ws, h| ws.input(h, CONN, &buf));
            self.buf = buf;
            match frame {
                Frame::NeedMore if self.buf.len() >= self.max => self.too_large(),
                Frame::Complete(n) if n > self.max => self.too_large(),
                Frame::NeedMore => return,
                Frame::Complete(n) if n > self.buf.len() => return,
                Frame::Complete(n) => {
                    let msg: Vec<u8> = self.buf.drain(..n).collect();
                    self.with_host(|ws, h| ws.on_message(h, CONN, &msg));
                }
                Frame::Invalid => self.failed = true,
            }
        }
    }

    fn too_large(&mut self) {
        self.with_host(|ws, h| ws.on_error(h, CONN, ConnError::PackageTooLarge));
        self.failed = true;
    }

    /// The server frames sent so far: (opcode, payload).
    fn sent(&mut self) -> Vec<(OpCode, Vec<u8>)> {
        let out = self.host.take_sent(CONN);
        let mut frames = Vec::new();
        let mut rest = &out[..];
        while !rest.is_empty() {
            let h = parse_header(rest).unwrap().expect("whole server frames");
            assert_eq!(h.mask, None, "server frames are not masked");
            let end = h.frame_len().unwrap();
            frames.push((h.opcode, rest[h.header_len..end].to_vec()));
            rest = &rest[end..];
        }
        frames
    }

    /// The close code of the one close frame sent, and that the connection is closing.
    fn closed_with(&mut self) -> u16 {
        let frames = self.sent();
        let close = frames.iter().find(|(op, _)| *op == OpCode::Close).expect("a close frame");
        assert!(self.host.is_closed(CONN), "the connection is closed after the close frame");
        u16::from_be_bytes([close.1[0], close.1[1]])
    }

    fn got(&self) -> &[(bool, Vec<u8>)] {
        &self.ws.handler().got
    }
}

#[test]
fn echoes_messages_fed_one_byte_at_a_time() {
    let mut c = Conn::open(1 << 20);
    let mut bytes = client_frame(FIN | 0x1, "héllo".as_bytes());
    bytes.extend(client_frame(FIN | 0x2, &[0, 1, 2, 255]));
    for b in bytes {
        c.feed(&[b]);
    }
    assert_eq!(c.got(), &[(true, "héllo".as_bytes().to_vec()), (false, vec![0, 1, 2, 255])]);
    assert_eq!(c.sent(), vec![(OpCode::Text, "héllo".as_bytes().to_vec()), (OpCode::Binary, vec![0, 1, 2, 255])]);
}

#[test]
fn joins_fragments_with_control_frames_between_them() {
    let mut c = Conn::open(1 << 20);
    // "κόσμε" cut inside a code point across fragments, a ping in the middle.
    let text = "κόσμε".as_bytes();
    c.feed(&client_frame(0x1, &text[..3]));
    c.feed(&client_frame(FIN | 0x9, b"p"));
    c.feed(&client_frame(0x0, &text[3..7]));
    c.feed(&client_frame(FIN /* continuation */, &text[7..]));
    assert_eq!(c.got(), &[(true, text.to_vec())]);
    assert_eq!(c.sent(), vec![(OpCode::Pong, b"p".to_vec()), (OpCode::Text, text.to_vec())]);
}

#[test]
fn protocol_errors_close_with_1002() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", vec![0x81, 0x01, b'a']),
        ("rsv", client_frame(FIN | 0x20 | 0x1, b"a")),
        ("reserved opcode", client_frame(FIN | 0x3, b"")),
        ("continuation first", client_frame(FIN /* continuation */, b"a")),
        ("fragmented ping", client_frame(0x9, b"")),
        ("long ping", client_frame(FIN | 0x9, &[0; 126])),
        ("close of 1 byte", client_frame(FIN | 0x8, &[3])),
        ("close code 1005", client_frame(FIN | 0x8, &1005u16.to_be_bytes())),
        ("text inside text", [client_frame(0x1, b"a"), client_frame(FIN | 0x1, b"b")].concat()),
    ];
    for (what, bytes) in cases {
        let mut c = Conn::open(1 << 20);
        c.feed(&bytes);
        assert_eq!(c.closed_with(), 1002, "{what}");
        assert!(c.got().is_empty(), "{what}");
    }
}

#[test]
fn invalid_utf8_closes_with_1007_as_soon_as_it_arrives() {
    // Across fragments: the second fragment holds the bad byte; the message is never finished.
    let mut c = Conn::open(1 << 20);
    c.feed(&client_frame(0x1, "κό".as_bytes()));
    c.feed(&client_frame(0x0, &[0xCE, 0xFF]));
    assert_eq!(c.closed_with(), 1007);
    // Inside one frame whose end has not arrived yet.
    let mut c = Conn::open(1 << 20);
    let mut payload = b"hello".to_vec();
    payload.push(0xFF);
    payload.extend_from_slice(&[b'x'; 1000]);
    let frame = client_frame(FIN | 0x1, &payload);
    c.feed(&frame[..frame.len() - 1000]);
    assert_eq!(c.closed_with(), 1007, "fails before the frame is complete");
    // A close reason that is not UTF-8.
    let mut c = Conn::open(1 << 20);
    c.feed(&client_frame(FIN | 0x8, &[0x03, 0xE8, 0xFF]));
    assert_eq!(c.closed_with(), 1007);
    // Text ending in half a code point.
    let mut c = Conn::open(1 << 20);
    c.feed(&client_frame(FIN | 0x1, &[b'a', 0xE2, 0x82]));
    assert_eq!(c.closed_with(), 1007);
}

#[test]
fn close_handshake_echoes_the_code() {
    let mut c = Conn::open(1 << 20);
    c.feed(&client_frame(FIN | 0x8, &[0x0F, 0xA0, b'b', b'y', b'e']));
    assert_eq!(c.closed_with(), 4000);
    let mut c = Conn::open(1 << 20);
    c.feed(&client_frame(FIN | 0x8, b""));
    assert_eq!(c.sent(), vec![(OpCode::Close, vec![])], "an empty close gets an empty close");
    assert!(c.host.is_closed(CONN));
}

#[test]
fn frames_and_messages_over_the_limit_close_with_1009_before_buffering() {
    // One frame over the limit: refused from its header alone.
    let mut c = Conn::open(1000);
    let frame = client_frame(FIN | 0x2, &[0; 2000]);
    c.feed(&frame[..14]);
    assert_eq!(c.closed_with(), 1009);
    // Fragments adding up to more than the limit.
    let mut c = Conn::open(1000);
    c.feed(&client_frame(0x2, &[0; 600]));
    c.feed(&client_frame(FIN /* continuation */, &[0; 600])[..8]);
    assert_eq!(c.closed_with(), 1009);
    assert!(c.got().is_empty());
    // A 2^63 length: a protocol error, closed at once.
    let mut c = Conn::open(1000);
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
    huge.extend_from_slice(&[1, 2, 3, 4]);
    c.feed(&huge);
    assert_eq!(c.closed_with(), 1002);
    // 2^63 - 1: too big.
    let mut c = Conn::open(1000);
    let mut big = vec![0x82, 0x80 | 127];
    big.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    big.extend_from_slice(&[1, 2, 3, 4]);
    c.feed(&big);
    assert_eq!(c.closed_with(), 1009);
}

#[test]
fn drain_sends_going_away_and_closes_when_the_peer_answers() {
    let mut c = Conn::open(1 << 20);
    c.with_host(|ws, h| ws.on_drain(h, CONN));
    let frames = c.sent();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, OpCode::Close);
    assert_eq!(frames[0].1[..2], 1001u16.to_be_bytes());
    assert!(!c.host.is_closed(CONN), "waits for the peer's close");
    // Data after our close is dropped; the peer's close ends it without a second close frame.
    c.feed(&client_frame(FIN | 0x1, b"late"));
    c.feed(&client_frame(FIN | 0x8, &1001u16.to_be_bytes()));
    assert!(c.got().is_empty());
    assert_eq!(c.sent(), vec![]);
    assert!(c.host.is_closed(CONN));
}

#[test]
fn server_pings_close_only_peers_that_stay_silent() {
    let mut c = Conn::open(1 << 20);
    c.ws = WebSocket::new("ping_interval = 1", &worker(1 << 20)).unwrap();
    c.feed(upgrade("Sec-WebSocket-Version: 13\r\n").as_bytes());
    c.host.take_sent(CONN);
    let tick = |c: &mut Conn| c.with_host(|ws, h| ws.on_timer(h, TimerId(1), CONN.0));
    // A peer that answers each ping (or sends anything) stays.
    for _ in 0..3 {
        tick(&mut c);
        assert_eq!(c.sent(), vec![(OpCode::Ping, vec![])]);
        c.feed(&client_frame(FIN | 0xA, b""));
    }
    assert!(!c.host.is_closed(CONN));
    // One silent for a whole interval after a ping is closed.
    tick(&mut c);
    assert_eq!(c.sent(), vec![(OpCode::Ping, vec![])]);
    assert!(!c.host.is_closed(CONN));
    tick(&mut c);
    assert!(c.host.is_closed(CONN), "no answer within one more interval");
}

/// Server frames with their RSV1 bit: (compressed, opcode, payload).
fn server_frames(out: &[u8]) -> Vec<(bool, OpCode, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let h = parse_header_ext(rest, true).unwrap().expect("whole server frames");
        let end = h.frame_len().unwrap();
        frames.push((h.rsv1, h.opcode, rest[h.header_len..end].to_vec()));
        rest = &rest[end..];
    }
    frames
}

/// A connection that offered permessage-deflate with `offer` and got it; the response's
/// extension line.
fn open_deflate(max: usize, offer: &str) -> (Conn, String) {
    let mut c = Conn::open(max);
    c.ws = WebSocket::new("ping_interval = 0", &worker(max)).unwrap();
    c.feed(upgrade(&format!("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {offer}\r\n")).as_bytes());
    let response = String::from_utf8(c.host.take_sent(CONN)).unwrap();
    assert!(response.starts_with("HTTP/1.1 101"), "{response}");
    let line = response.lines().find(|l| l.starts_with("Sec-WebSocket-Extensions:")).unwrap_or_default().to_string();
    (c, line)
}

/// The worker a test's plugin is made for: the test host's, with `max` as its largest message.
fn worker(max: usize) -> WorkerInfo {
    let mut host = TestHost::default();
    host.max_package_size = max;
    host.worker_info()
}

fn compressed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::deflate::Deflater::default().compress(data, &mut out);
    out
}

#[test]
fn a_message_of_exactly_the_limit_passes_one_byte_more_is_1009() {
    // One frame whose payload is the whole limit: its header does not count.
    let mut c = Conn::open(1000);
    c.feed(&client_frame(FIN | 0x2, &[7; 1000]));
    assert_eq!(c.got(), &[(false, vec![7; 1000])]);
    assert_eq!(c.sent(), vec![(OpCode::Binary, vec![7; 1000])]);
    // The same in fragments, fed a few bytes at a time.
    let mut c = Conn::open(1000);
    let bytes = [client_frame(0x1, &[b'a'; 400]), client_frame(FIN, &[b'b'; 600])].concat();
    for piece in bytes.chunks(33) {
        c.feed(piece);
    }
    assert_eq!(c.got().len(), 1);
    assert_eq!(c.got()[0].1.len(), 1000);
    // One byte more: refused from the header, before the payload is buffered.
    let mut c = Conn::open(1000);
    c.feed(&client_frame(FIN | 0x2, &[7; 1001])[..8]);
    assert_eq!(c.closed_with(), 1009);
}

#[test]
fn permessage_deflate_is_negotiated_and_round_trips() {
    let (mut c, line) = open_deflate(1 << 20, "permessage-deflate; client_max_window_bits");
    assert_eq!(line, "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover");
    let text = "compress me, compress me, compress me, compress me, compress me! ".repeat(20);
    // A compressed message, in two fragments, fed in pieces; then an uncompressed one.
    let z = compressed(text.as_bytes());
    let bytes = [client_frame(0x40 | 0x1, &z[..z.len() / 2]), client_frame(FIN, &z[z.len() / 2..])].concat();
    for piece in bytes.chunks(5) {
        c.feed(piece);
    }
    c.feed(&client_frame(FIN | 0x1, b"plain"));
    // Context takeover: a second compressed message continues the client's stream.
    let mut inflater_check = Vec::new();
    let mut d = crate::deflate::Deflater::default();
    d.compress(b"again", &mut inflater_check);
    c.feed(&client_frame(FIN | 0x40 | 0x1, &inflater_check));
    assert_eq!(c.got(), &[(true, text.as_bytes().to_vec()), (true, b"plain".to_vec()), (true, b"again".to_vec())]);
    // The echo of the long text goes out compressed; short ones do not.
    let frames = server_frames(&c.host.take_sent(CONN));
    assert_eq!(frames.len(), 3);
    assert!(frames[0].0 && frames[0].2.len() < text.len() / 4, "{:?}", frames[0].2.len());
    let mut back = Vec::new();
    let mut inflater = crate::deflate::Inflater::default();
    inflater.inflate(&frames[0].2, &mut back, 1 << 20).unwrap();
    inflater.finish(&mut back, 1 << 20, true).unwrap();
    assert_eq!(back, text.as_bytes());
    assert_eq!(frames[1], (false, OpCode::Text, b"plain".to_vec()));
    assert_eq!(frames[2], (false, OpCode::Text, b"again".to_vec()));
}

#[test]
fn permessage_deflate_offers_are_honoured_or_declined() {
    let (_, line) = open_deflate(1 << 20, "permessage-deflate; client_no_context_takeover; server_max_window_bits=10");
    assert_eq!(
        line,
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
         server_max_window_bits=10"
    );
    let (_, line) = open_deflate(1 << 20, "permessage-deflate; bogus=1");
    assert_eq!(line, "", "an offer with an unknown parameter is declined");
    // The switch turns it off.
    let mut c = Conn::open(1 << 20);
    c.ws = WebSocket::new("ping_interval = 0\npermessage_deflate = false", &worker(1 << 20)).unwrap();
    c.feed(upgrade("Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n").as_bytes());
    let response = String::from_utf8(c.host.take_sent(CONN)).unwrap();
    assert!(response.starts_with("HTTP/1.1 101") && !response.contains("Extensions"), "{response}");
    // Without it, RSV1 is a protocol error.
    c.feed(&client_frame(FIN | 0x40 | 0x1, &compressed(b"hello")));
    assert_eq!(c.closed_with(), 1002);
    // With it, RSV1 on a continuation or a control frame is one too.
    for bad in [
        [client_frame(0x40 | 0x1, &compressed(b"a")), client_frame(FIN | 0x40, b"b")].concat(),
        client_frame(FIN | 0x40 | 0x9, b""),
    ] {
        let (mut c, _) = open_deflate(1 << 20, "permessage-deflate");
        c.feed(&bad);
        assert_eq!(c.closed_with(), 1002);
    }
    // A server_max_window_bits below 15: the server keeps it by not compressing.
    let (mut c, _) = open_deflate(1 << 20, "permessage-deflate; server_max_window_bits=9");
    let long = "x".repeat(1000);
    c.feed(&client_frame(FIN | 0x40 | 0x1, &compressed(long.as_bytes())));
    assert_eq!(server_frames(&c.host.take_sent(CONN)), vec![(false, OpCode::Text, long.into_bytes())]);
}

#[test]
fn a_zip_bomb_closes_with_1009_at_the_limit() {
    let (mut c, _) = open_deflate(128 * 1024, "permessage-deflate");
    // 16 MiB of zeros, some 80 KiB compressed: within the limit on the wire, over it inflated.
    let bomb = compressed(&vec![0; 16 << 20]);
    assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
    c.feed(&client_frame(FIN | 0x40 | 0x2, &bomb));
    assert_eq!(c.closed_with(), 1009);
    assert!(c.got().is_empty());
    // Data that does not inflate: 1007.
    let (mut c, _) = open_deflate(64 * 1024, "permessage-deflate");
    c.feed(&client_frame(FIN | 0x40 | 0x2, &[0xFF; 32]));
    assert_eq!(c.closed_with(), 1007);
}

#[test]
fn worker_level_events_reach_the_handler() {
    let mut c = Conn::open(1 << 20);
    c.with_host(|ws, h| {
        ws.on_worker_message(h, 3, b"hi");
        ws.on_task_done(h, plugin_api::TaskId(9), Ok(b"ok".to_vec()));
        ws.on_notify(h, &[1, 2]);
        // A timer the layer did not add (its ping timers are per connection) is the handler's.
        ws.on_timer(h, TimerId(77), 5);
    });
    assert_eq!(
        c.ws.handler().events,
        ["message from 3: hi", "task TaskId(9): Ok([111, 107])", "notify [1, 2]", "timer 77 5"]
    );
}

// Hand-over: an open connection between messages moves with its subprotocol and ping state and
// goes on echoing in the new instance; one in the middle of a message stays.
#[test]
fn an_open_connection_moves_between_messages_only() {
    use plugin_api::abi::state_sink;
    use plugin_api::StateWriter;
    let mut old = Conn::open(1 << 20);
    let export = |c: &mut Conn, state: &mut Vec<u8>| {
        c.with_host(|ws, h| ws.export_conn(h, CONN, &mut StateWriter::new(state_sink(state))))
    };
    old.feed(&client_frame(0x01, b"hel"));
    assert!(!export(&mut old, &mut Vec::new()), "a message in progress stays");
    old.feed(&client_frame(FIN, b"lo"));
    assert_eq!(old.sent(), [(OpCode::Text, b"hello".to_vec())]);
    let mut state = Vec::new();
    assert!(export(&mut old, &mut state));

    let ws = WebSocket::new("ping_interval = 0", &worker(1 << 20)).unwrap();
    let mut new = Conn { ws, host: TestHost::default(), buf: Vec::new(), failed: false, max: 1 << 20 };
    assert!(!new.with_host(|ws, h| ws.adopt_conn(h, CONN, 1, &state[..2])), "a cut state is refused");
    assert!(new.with_host(|ws, h| ws.adopt_conn(h, CONN, 1, &state)));
    new.feed(&client_frame(FIN | 0x02, b"after"));
    assert_eq!(new.sent(), [(OpCode::Binary, b"after".to_vec())]);
    assert_eq!(new.got(), [(false, b"after".to_vec())]);
}

/// An application whose listeners hear a topic through the handler: the worker subscribes to
/// "news" and `on_publish` sends each message to the connections that said "listen".
#[derive(Default)]
struct Listeners {
    listening: Vec<ConnId>,
}

impl Handler for Listeners {
    const HANDOVER_VERSION: u32 = 1;

    fn new(_config: &str, _worker: &WorkerInfo) -> Result<Self, String> {
        Ok(Listeners::default())
    }
    fn on_worker_start(&mut self, ws: &mut Ws<'_, '_>) -> Result<(), String> {
        ws.host().subscribe_worker(b"news").map(|_| ()).map_err(|e| e.to_string())
    }
    fn on_message(&mut self, _ws: &mut Ws<'_, '_>, conn: ConnId, msg: Message<'_>) {
        if msg == Message::Text("listen") {
            self.listening.push(conn);
        }
    }
    fn on_publish(&mut self, ws: &mut Ws<'_, '_>, _topic: &[u8], msg: &[u8]) {
        for &conn in &self.listening {
            ws.send_binary(conn, msg);
        }
    }
    fn export_conn(&mut self, ws: &mut Ws<'_, '_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
        let listening = self.listening.contains(&conn);
        (!listening || ws.host().handover_hears(conn, b"news")) && out.write_all(&[listening as u8]).is_ok()
    }
    fn adopt_conn(&mut self, _ws: &mut Ws<'_, '_>, conn: ConnId, _version: u32, state: &[u8]) -> bool {
        match state {
            [0] => true,
            [1] => {
                self.listening.push(conn);
                true
            }
            _ => false,
        }
    }
    fn on_publish_missed(&mut self, ws: &mut Ws<'_, '_>, conn: ConnId, _topic: &[u8], msg: &[u8]) {
        if self.listening.contains(&conn) {
            ws.send_binary(conn, msg);
        }
    }
}

// An application on the layer declares, in its export, that a connection hears a topic through
// its `on_publish` (through the host `Ws` now gives it), and gets what that connection missed
// after the move (`on_publish_missed`), to it alone; the other connection declares nothing.
#[test]
fn a_connection_that_hears_a_topic_through_the_handler_declares_it_and_gets_what_it_missed() {
    use plugin_api::testing::TestPlugin;
    let open = |t: &mut TestPlugin<WebSocket<Listeners>>| {
        let conn = t.connect();
        t.feed(conn, upgrade("Sec-WebSocket-Version: 13\r\n").as_bytes());
        assert!(t.host.take_sent(conn).starts_with(b"HTTP/1.1 101"));
        conn
    };
    let mut old = TestPlugin::<WebSocket<Listeners>>::new("ping_interval = 0").unwrap();
    let (listener, other) = (open(&mut old), open(&mut old));
    old.feed(listener, &client_frame(FIN | 0x01, b"listen"));
    old.publish(b"news", b"m0");
    assert_eq!(server_frames(&old.host.take_sent(listener)), [(false, OpCode::Binary, b"m0".to_vec())]);

    let mut new = TestPlugin::<WebSocket<Listeners>>::new("ping_interval = 0").unwrap();
    let moved = old.hand_over_to(&mut new, &[listener, other]).unwrap();
    assert_eq!(moved.len(), 2, "both connections move");
    assert_eq!(old.host.hears, [(listener, b"news".to_vec())], "only the listener declared the topic");
    let id = |old_id: ConnId| moved.iter().find(|m| m.0 == old_id).unwrap().1;
    let (listener, other) = (id(listener), id(other));

    new.publish_missed(listener, b"news", b"m1");
    assert_eq!(server_frames(&new.host.take_sent(listener)), [(false, OpCode::Binary, b"m1".to_vec())]);
    new.publish(b"news", b"m2");
    assert_eq!(server_frames(&new.host.take_sent(listener)), [(false, OpCode::Binary, b"m2".to_vec())]);
    assert!(new.host.take_sent(other).is_empty(), "the other connection hears nothing");
}
