//! The connection driven by a scripted client: frames in, events and frames out.

use super::*;
use crate::h2::frame::{kind, write_frame, write_headers, FrameHeader, HEADER_LEN, PREFACE};

/// A client: HPACK encoder for its requests, decoder for the responses.
struct Client {
    enc: loona_hpack::Encoder<'static>,
    dec: hpack::Decoder,
}

impl Client {
    fn new() -> Client {
        Client { enc: loona_hpack::Encoder::new(), dec: hpack::Decoder::new(1 << 20) }
    }

    fn block(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        self.enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
        let block = self.block(fields);
        let mut out = Vec::new();
        write_headers(&mut out, stream, &block, end_stream, frame::MIN_MAX_FRAME_SIZE);
        out
    }

    fn get(&mut self, stream: u32, path: &str) -> Vec<u8> {
        self.headers(stream, &[(":method", "GET"), (":scheme", "https"), (":authority", "a"), (":path", path)], true)
    }
}

fn start() -> Vec<u8> {
    let mut b = PREFACE.to_vec();
    frame::write_settings(&mut b, &[]);
    b
}

fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut b = Vec::new();
    frame::write_settings(&mut b, params);
    b
}

fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    write_frame(&mut b, kind, flags, stream, payload);
    b
}

/// A connection past its preface, with its opening output dropped.
fn open(config: Config) -> Connection {
    let mut c = Connection::new(config);
    let s = start();
    assert_eq!(c.recv(0, &s), s.len());
    c.take_output();
    c
}

/// The frames of `out`: header and payload.
fn frames(out: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut at = 0;
    let mut v = Vec::new();
    while at < out.len() {
        let h = FrameHeader::parse(&out[at..]).expect("a whole frame header");
        let end = at + HEADER_LEN + h.len as usize;
        v.push((h, out[at + HEADER_LEN..end].to_vec()));
        at = end;
    }
    assert_eq!(at, out.len(), "output ends on a frame boundary");
    v
}

fn kinds(out: &[u8]) -> Vec<(u8, u32)> {
    frames(out).iter().map(|(h, _)| (h.kind, h.stream)).collect()
}

/// The GOAWAY in `out`: its error code.
fn goaway(out: &[u8]) -> Option<ErrorCode> {
    frames(out)
        .iter()
        .find(|(h, _)| h.kind == kind::GOAWAY)
        .map(|(_, p)| ErrorCode(u32::from_be_bytes([p[4], p[5], p[6], p[7]])))
}

/// The RST_STREAM codes in `out`, by stream.
fn resets(out: &[u8]) -> Vec<(u32, ErrorCode)> {
    frames(out)
        .iter()
        .filter(|(h, _)| h.kind == kind::RST_STREAM)
        .map(|(h, p)| (h.stream, ErrorCode(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))))
        .collect()
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn a_scripted_exchange() {
    let mut c = Connection::new(Config::default());
    // The server speaks first: SETTINGS, then the connection window raised.
    let opening = frames(&c.take_output());
    assert_eq!(opening[0].0.kind, kind::SETTINGS);
    let params: Vec<_> = frame::settings(&opening[0].1).collect();
    assert!(params.contains(&(setting::MAX_CONCURRENT_STREAMS, 100)));
    assert!(params.contains(&(setting::ENABLE_PUSH, 0)));
    assert_eq!(opening[1].0.kind, kind::WINDOW_UPDATE);

    let mut client = Client::new();
    let mut input = start();
    input.extend(raw(kind::PING, 0, 0, b"pingpong"));
    input.extend(client.get(1, "/index.html?x=1"));
    assert_eq!(c.recv(5, &input), input.len());
    let out = c.take_output();
    let f = frames(&out);
    assert_eq!((f[0].0.kind, f[0].0.flags), (kind::SETTINGS, flag::ACK));
    assert_eq!((f[1].0.kind, f[1].0.flags, &f[1].1[..]), (kind::PING, flag::ACK, &b"pingpong"[..]));

    let Some(Event::Request { stream: 1, request, end_stream: true }) = c.poll_event() else { panic!() };
    assert_eq!(request.method, "GET");
    assert_eq!(request.path.as_deref(), Some("/index.html?x=1"));
    assert_eq!(request.authority.as_deref(), Some("a"));
    // The same request as HTTP/1.1 sees it.
    let (raw_head, head) = request.http1_head(&crate::Limits::default()).unwrap();
    let r = crate::Request::new(&head, &raw_head, b"");
    assert_eq!((r.path(), r.query(), r.header_str("host")), ("/index.html", Some("x=1"), Some("a")));

    c.send_headers(1, 200, &[("Content-Type", b"text/plain"), ("Connection", b"close")], false).unwrap();
    c.send_data(1, b"hello ", false).unwrap();
    c.send_data(1, b"world", true).unwrap();
    assert_eq!(c.send_data(1, b"more", false), Err(SendError::StreamClosed));
    let out = c.take_output();
    let f = frames(&out);
    assert_eq!(kinds(&out), [(kind::HEADERS, 1), (kind::DATA, 1), (kind::DATA, 1)]);
    let mut fields = Vec::new();
    client.dec.decode(&f[0].1, &mut fields).unwrap();
    assert_eq!(fields, [(b":status".to_vec(), b"200".to_vec()), (b"content-type".to_vec(), b"text/plain".to_vec())]);
    assert_eq!(f[1].1, b"hello ");
    assert_eq!((&f[2].1[..], f[2].0.flags), (&b"world"[..], flag::END_STREAM));
    assert_eq!(c.open_streams(), 0);
    assert_eq!(c.queued_bytes(), 0);
}

#[test]
fn fed_in_pieces_the_same_events_come_out() {
    let mut client = Client::new();
    let mut input = start();
    for id in [1, 3, 5] {
        input.extend(client.get(id, &format!("/{id}")));
    }
    let mut whole = Connection::new(Config::default());
    whole.recv(0, &input);
    let want = events(&mut whole);
    assert_eq!(want.len(), 3);
    let mut c = Connection::new(Config::default());
    let mut buf = Vec::new();
    for &b in &input {
        buf.push(b);
        let n = c.recv(0, &buf);
        buf.drain(..n);
    }
    assert!(buf.is_empty());
    assert_eq!(events(&mut c), want);
}

#[test]
fn a_request_body_reopens_the_windows_as_it_is_consumed() {
    let config = Config { initial_window_size: 65_535, connection_window: 65_535, ..Config::default() };
    let mut c = open(config);
    let mut client = Client::new();
    let post =
        [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/up"), ("content-length", "40000")];
    let mut input = client.headers(1, &post, false);
    input.extend(raw(kind::DATA, 0, 1, &[b'x'; 16_384]));
    // Padded: 1 + 8 + 3,000 + 8 bytes of window for 3,000 of data.
    let mut padded = vec![8u8];
    padded.extend([b'y'; 3000]);
    padded.extend([0u8; 8]);
    input.extend(raw(kind::DATA, flag::PADDED, 1, &padded));
    c.recv(0, &input);
    let ev = events(&mut c);
    assert!(matches!(ev[0], Event::Request { stream: 1, end_stream: false, .. }));
    assert_eq!(ev[1], Event::Data { stream: 1, data: vec![b'x'; 16_384], end_stream: false });
    assert_eq!(ev[2], Event::Data { stream: 1, data: vec![b'y'; 3000], end_stream: false });
    // Nothing consumed yet: no WINDOW_UPDATE.
    assert!(kinds(&c.take_output()).is_empty());
    // Consumed: once a quarter of a window is due, both windows reopen by what was consumed.
    c.release(1, 16_384);
    let out = c.take_output();
    let ups: Vec<(u32, u32)> = frames(&out)
        .iter()
        .filter(|(h, _)| h.kind == kind::WINDOW_UPDATE)
        .map(|(h, p)| (h.stream, u32::from_be_bytes([p[0], p[1], p[2], p[3]])))
        .collect();
    assert_eq!(ups, [(1, 16_384 + 9), (0, 16_384 + 9)], "what was consumed, and the padding");
    // The rest of the body, past the original stream window: admitted because it reopened.
    let mut input = raw(kind::DATA, 0, 1, &[b'z'; 16_384]);
    input.extend(raw(kind::DATA, flag::END_STREAM, 1, &[b'z'; 40_000 - 16_384 - 3000 - 16_384]));
    input.extend(raw(kind::DATA, 0, 1, &[b'z'; 16_384]));
    c.recv(1, &input);
    let ev = events(&mut c);
    assert_eq!(ev.len(), 3);
    assert!(matches!(ev[1], Event::Data { stream: 1, end_stream: true, .. }));
    // DATA after END_STREAM: STREAM_CLOSED, and the application hears of it.
    assert_eq!(ev[2], Event::Reset { stream: 1, code: ErrorCode::STREAM_CLOSED });
    assert_eq!(resets(&c.take_output()), [(1, ErrorCode::STREAM_CLOSED)]);
    assert_eq!(c.send_headers(1, 200, &[], true), Err(SendError::StreamClosed));
}

#[test]
fn a_body_that_contradicts_its_content_length_is_malformed() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    let post = [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("content-length", "3")];
    let mut input = client.headers(1, &post, false);
    input.extend(raw(kind::DATA, flag::END_STREAM, 1, b"four"));
    input.extend(client.headers(3, &post, true));
    c.recv(0, &input);
    assert_eq!(resets(&c.take_output()), [(1, ErrorCode::PROTOCOL_ERROR), (3, ErrorCode::PROTOCOL_ERROR)]);
    assert_eq!(c.stats().malformed_requests, 2);
}

#[test]
fn a_body_waits_for_the_window_without_holding_up_other_streams() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    // The client's stream windows: 10 bytes.
    let mut input = settings(&[(setting::INITIAL_WINDOW_SIZE, 10)]);
    input.extend(client.get(1, "/big"));
    input.extend(client.get(3, "/small"));
    c.recv(0, &input);
    c.take_output();
    assert_eq!(events(&mut c).len(), 2);
    c.send_headers(1, 200, &[], false).unwrap();
    c.send_data(1, &[b'b'; 100], true).unwrap();
    c.send_headers(3, 200, &[], false).unwrap();
    c.send_data(3, b"tiny", true).unwrap();
    let out = c.take_output();
    let f = frames(&out);
    let data: Vec<(u32, usize, bool)> = f
        .iter()
        .filter(|(h, _)| h.kind == kind::DATA)
        .map(|(h, p)| (h.stream, p.len(), h.has(flag::END_STREAM)))
        .collect();
    assert_eq!(data, [(1, 10, false), (3, 4, true)], "stream 3 finishes while stream 1 waits");
    assert_eq!(c.queued_bytes(), 90);
    assert_eq!(c.stream_queued(1), 90);
    // The window opens by 50, then by more than the rest.
    c.recv(1, &raw(kind::WINDOW_UPDATE, 0, 1, &50u32.to_be_bytes()));
    let f = frames(&c.take_output());
    assert_eq!((f.len(), f[0].1.len(), f[0].0.has(flag::END_STREAM)), (1, 50, false));
    c.recv(2, &raw(kind::WINDOW_UPDATE, 0, 1, &1000u32.to_be_bytes()));
    let f = frames(&c.take_output());
    assert_eq!((f.len(), f[0].1.len(), f[0].0.has(flag::END_STREAM)), (1, 40, true));
    assert_eq!(c.queued_bytes(), 0);
    assert_eq!(c.open_streams(), 0);
}

#[test]
fn the_connection_window_bounds_all_streams_and_settings_move_stream_windows() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    let mut input = settings(&[(setting::INITIAL_WINDOW_SIZE, 1 << 20), (setting::MAX_FRAME_SIZE, 1 << 20)]);
    input.extend(client.get(1, "/a"));
    c.recv(0, &input);
    c.take_output();
    c.send_headers(1, 200, &[], false).unwrap();
    c.send_data(1, &vec![0; 100_000], true).unwrap();
    let out = c.take_output();
    let sent: usize = frames(&out).iter().filter(|(h, _)| h.kind == kind::DATA).map(|(_, p)| p.len()).sum();
    assert_eq!(sent, 65_535, "the connection window's initial size");
    assert_eq!(c.queued_bytes(), 100_000 - 65_535);
    c.recv(1, &raw(kind::WINDOW_UPDATE, 0, 0, &100_000u32.to_be_bytes()));
    let out = c.take_output();
    assert_eq!(frames(&out).iter().map(|(_, p)| p.len()).sum::<usize>(), 100_000 - 65_535);
    // A SETTINGS that pushes an open stream's window past 2^31-1: FLOW_CONTROL_ERROR.
    c.recv(2, &client.get(3, "/b"));
    c.take_output();
    c.recv(3, &raw(kind::WINDOW_UPDATE, 0, 3, &(MAX_WINDOW - (1 << 20)).to_be_bytes()));
    c.recv(4, &settings(&[(setting::INITIAL_WINDOW_SIZE, (1 << 20) + 1)]));
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::FLOW_CONTROL_ERROR));
    assert!(c.is_closed());
}

#[test]
fn window_overflow_is_a_flow_control_error() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    c.recv(0, &client.get(1, "/"));
    c.recv(0, &raw(kind::WINDOW_UPDATE, 0, 1, &MAX_WINDOW.to_be_bytes()));
    assert_eq!(resets(&c.take_output()), [(1, ErrorCode::FLOW_CONTROL_ERROR)]);
    assert!(!c.is_closed());
    c.recv(0, &raw(kind::WINDOW_UPDATE, 0, 0, &MAX_WINDOW.to_be_bytes()));
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::FLOW_CONTROL_ERROR));
    assert_eq!(c.stats().flow_control_errors, 2);
    // Data beyond the receive window.
    let config =
        Config { initial_window_size: 65_535, connection_window: 65_535, max_frame_size: 1 << 17, ..Config::default() };
    let mut c = open(config);
    let post = [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/")];
    let mut input = client.headers(1, &post, false);
    input.extend(raw(kind::DATA, 0, 1, &vec![0; 65_536]));
    c.recv(0, &input);
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::FLOW_CONTROL_ERROR));
}

#[test]
fn rapid_reset_ends_the_connection() {
    let config = Config { max_resets: 20, ..Config::default() };
    // Spread over time, the same number of resets is fine.
    let mut client = Client::new();
    let mut c = open(config);
    for i in 0..60u32 {
        let id = 1 + 2 * i;
        let mut input = client.get(id, "/");
        input.extend(raw(kind::RST_STREAM, 0, id, &ErrorCode::CANCEL.0.to_be_bytes()));
        c.recv(u64::from(i) * 100, &input);
    }
    assert!(!c.is_closed());
    assert_eq!(c.stats().peer_resets, 60);
    assert!(events(&mut c).contains(&Event::Reset { stream: 1, code: ErrorCode::CANCEL }));
    // All at once: the 21st in the window ends it.
    let mut client = Client::new();
    let mut c = open(config);
    let mut input = Vec::new();
    for i in 0..100u32 {
        let id = 1 + 2 * i;
        input.extend(client.get(id, "/"));
        input.extend(raw(kind::RST_STREAM, 0, id, &ErrorCode::CANCEL.0.to_be_bytes()));
    }
    assert_eq!(c.recv(0, &input), input.len());
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::ENHANCE_YOUR_CALM));
    assert_eq!(c.stats().rapid_reset, 1);
    assert_eq!(c.stats().peer_resets, 21);
    assert!(c.is_closed());
    // Resets the client provokes (malformed requests) count too.
    let mut client = Client::new();
    let mut c = open(config);
    let mut input = Vec::new();
    for i in 0..30u32 {
        input.extend(client.headers(1 + 2 * i, &[(":method", "GET"), (":path", "/")], true));
    }
    c.recv(0, &input);
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::ENHANCE_YOUR_CALM));
}

#[test]
fn a_continuation_flood_is_bounded_before_it_is_buffered() {
    let config = Config { max_header_block: 32 * 1024, ..Config::default() };
    let mut c = open(config);
    let mut client = Client::new();
    let block = client.block(&[(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")]);
    let mut input = raw(kind::HEADERS, 0, 1, &block);
    for _ in 0..100 {
        input.extend(raw(kind::CONTINUATION, 0, 1, &[0x40; 16_000]));
    }
    let used = c.recv(0, &input);
    assert_eq!(used, input.len());
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::ENHANCE_YOUR_CALM));
    assert_eq!(c.stats().header_block_too_large, 1);
    // Empty CONTINUATION frames buffer nothing, but each is a frame that does no work.
    let mut c = open(Config { max_idle_frames: 50, ..Config::default() });
    let mut input = raw(kind::HEADERS, 0, 1, &block);
    for _ in 0..100 {
        input.extend(raw(kind::CONTINUATION, 0, 1, b""));
    }
    c.recv(0, &input);
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::ENHANCE_YOUR_CALM));
    assert_eq!(c.stats().idle_frame_flood, 1);
    // The client's SETTINGS was the first frame of the window.
    assert_eq!(c.stats().empty_continuation_frames, 50);
}

#[test]
fn headers_split_over_continuations_make_one_request() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    let block = client.block(&[(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/split")]);
    let (a, b) = block.split_at(3);
    let mut input = raw(kind::HEADERS, flag::END_STREAM, 1, a);
    input.extend(raw(kind::CONTINUATION, flag::END_HEADERS, 1, b));
    c.recv(0, &input);
    let Some(Event::Request { stream: 1, request, end_stream: true }) = c.poll_event() else { panic!() };
    assert_eq!(request.path.as_deref(), Some("/split"));
    // Another frame between HEADERS and CONTINUATION: PROTOCOL_ERROR.
    let mut input = raw(kind::HEADERS, 0, 3, a);
    input.extend(raw(kind::PING, 0, 0, &[0; 8]));
    c.recv(0, &input);
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::PROTOCOL_ERROR));
}

#[test]
fn an_hpack_bomb_is_answered_431_and_the_connection_goes_on() {
    let mut c = open(Config { max_header_list_size: 16 * 1024, ..Config::default() });
    let mut client = Client::new();
    // A 4,000-byte field indexed once, then referenced 1,000 times: 4 MB decoded.
    let value = "v".repeat(4000);
    let mut block = client.block(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "a"),
        (":path", "/"),
        ("x-big", &value),
    ]);
    block.extend(std::iter::repeat_n(0x80 | 62, 1000));
    let mut input = Vec::new();
    frame::write_headers(&mut input, 1, &block, true, frame::MIN_MAX_FRAME_SIZE);
    input.extend(client.get(3, "/next"));
    c.recv(0, &input);
    let out = c.take_output();
    let f = frames(&out);
    assert_eq!((f[0].0.kind, f[0].0.stream), (kind::HEADERS, 1));
    let mut fields = Vec::new();
    client.dec.decode(&f[0].1, &mut fields).unwrap();
    assert_eq!(fields[0], (b":status".to_vec(), b"431".to_vec()));
    assert_eq!(c.stats().header_list_too_large, 1);
    // The next request decodes: the HPACK context stayed in step.
    let ev = events(&mut c);
    assert!(matches!(&ev[..], [Event::Request { stream: 3, .. }]), "{ev:?}");
}

#[test]
fn control_frame_floods_end_the_connection() {
    type Count = fn(&Stats) -> u64;
    let cases: [(Vec<u8>, Count); 4] = [
        (settings(&[]), |s| s.settings_frames),
        (raw(kind::PING, 0, 0, &[1; 8]), |s| s.ping_frames),
        (raw(kind::PRIORITY, 0, 1, &[0, 0, 0, 0, 16]), |s| s.idle_frame_flood),
        (raw(kind::DATA, 0, 1, b""), |s| s.empty_data_frames),
    ];
    for (frame, count) in cases {
        let mut c = open(Config { max_idle_frames: 100, ..Config::default() });
        let mut client = Client::new();
        let post = [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/")];
        c.recv(0, &client.headers(1, &post, false));
        c.take_output();
        // Within the bound per window: fine, however long it goes on.
        for t in 0..5 {
            c.recv(t * 1000, &frame.repeat(90));
        }
        assert!(!c.is_closed());
        c.take_output();
        c.recv(10_000, &frame.repeat(200));
        assert_eq!(goaway(&c.take_output()), Some(ErrorCode::ENHANCE_YOUR_CALM), "{frame:?}");
        assert_eq!(c.stats().idle_frame_flood, 1);
        assert!(count(c.stats()) > 0);
    }
}

#[test]
fn zero_window_updates_are_protocol_errors() {
    let mut c = open(Config { max_resets: 10, ..Config::default() });
    let mut client = Client::new();
    c.recv(0, &client.get(1, "/"));
    c.recv(0, &raw(kind::WINDOW_UPDATE, 0, 1, &[0; 4]));
    assert_eq!(resets(&c.take_output()), [(1, ErrorCode::PROTOCOL_ERROR)]);
    // A flood of them on streams: each reset counts, the bound ends it.
    let mut input = Vec::new();
    for i in 1..40u32 {
        input.extend(client.get(1 + 2 * i, "/"));
        input.extend(raw(kind::WINDOW_UPDATE, 0, 1 + 2 * i, &[0; 4]));
    }
    c.recv(0, &input);
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::ENHANCE_YOUR_CALM));
    assert_eq!(c.stats().zero_window_updates, 11);
    // On the connection: a connection error.
    let mut c = open(Config::default());
    c.recv(0, &raw(kind::WINDOW_UPDATE, 0, 0, &[0; 4]));
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::PROTOCOL_ERROR));
}

#[test]
fn streams_past_the_limit_are_refused() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    let mut input = Vec::new();
    for i in 0..101u32 {
        input.extend(client.get(1 + 2 * i, "/"));
    }
    c.recv(0, &input);
    assert_eq!(events(&mut c).len(), 100);
    assert_eq!(resets(&c.take_output()), [(201, ErrorCode::REFUSED_STREAM)]);
    assert_eq!(c.stats().refused_streams, 1);
    // One finishes: the next is admitted.
    c.send_headers(1, 204, &[], true).unwrap();
    c.recv(0, &client.get(203, "/"));
    assert!(matches!(c.poll_event(), Some(Event::Request { stream: 203, .. })));
}

#[test]
fn malformed_requests_are_reset_with_protocol_error() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    let base = [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")];
    let bad: [&[(&str, &str)]; 5] = [
        &[("connection", "keep-alive")],
        &[("Upper", "x")],
        &[("transfer-encoding", "chunked")],
        &[("te", "gzip")],
        &[("x", "1"), (":path", "/late")],
    ];
    let mut input = Vec::new();
    for (i, extra) in bad.iter().enumerate() {
        let mut f = base.to_vec();
        f.extend_from_slice(extra);
        input.extend(client.headers(1 + 2 * i as u32, &f, true));
    }
    // Missing :scheme; a :status in a request.
    input.extend(client.headers(11, &[(":method", "GET"), (":path", "/")], true));
    input.extend(client.headers(
        13,
        &[(":status", "200"), (":method", "GET"), (":scheme", "http"), (":path", "/")],
        true,
    ));
    c.recv(0, &input);
    let r = resets(&c.take_output());
    assert_eq!(r.len(), 7);
    assert!(r.iter().all(|&(_, code)| code == ErrorCode::PROTOCOL_ERROR));
    assert_eq!(c.stats().malformed_requests, 7);
    assert!(events(&mut c).is_empty());
    // The connection goes on: the next request is served.
    c.recv(0, &client.get(15, "/ok"));
    assert!(matches!(c.poll_event(), Some(Event::Request { stream: 15, .. })));
}

#[test]
fn a_drain_serves_open_streams_and_ignores_new_ones() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    c.recv(0, &client.get(1, "/"));
    c.take_output();
    c.drain();
    let out = c.take_output();
    let f = frames(&out);
    assert_eq!((f[0].0.kind, &f[0].1[..8]), (kind::GOAWAY, &[0, 0, 0, 1, 0, 0, 0, 0][..]));
    assert!(!c.is_done(), "stream 1 is still open");
    let mut late =
        client.headers(3, &[(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/")], false);
    late.extend(raw(kind::DATA, flag::END_STREAM, 3, b"body"));
    c.recv(0, &late);
    let ev = events(&mut c);
    assert_eq!(ev.len(), 1, "stream 3 is past the last stream id: ignored, its body too");
    assert!(!c.is_closed());
    c.send_headers(1, 200, &[], true).unwrap();
    assert!(c.is_done());
    assert_eq!(kinds(&c.take_output()), [(kind::HEADERS, 1)]);
    // Immediate: GOAWAY with the code, nothing more read.
    let mut c = open(Config::default());
    c.abort(ErrorCode::INTERNAL_ERROR);
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::INTERNAL_ERROR));
    assert!(c.is_closed() && c.is_done());
}

#[test]
fn a_bad_start_is_a_protocol_error() {
    let mut c = Connection::new(Config::default());
    c.take_output();
    assert_eq!(preface(b"PRI * HT"), Preface::Maybe);
    assert_eq!(preface(b"GET / HTTP/1.1\r\n"), Preface::No);
    assert_eq!(c.recv(0, b"PRI * HT"), 0);
    c.recv(0, b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::PROTOCOL_ERROR));
    // The first frame is not SETTINGS.
    let mut c = Connection::new(Config::default());
    c.take_output();
    let mut input = PREFACE.to_vec();
    input.extend(raw(kind::PING, 0, 0, &[0; 8]));
    c.recv(0, &input);
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::PROTOCOL_ERROR));
    // A frame over the max frame size; PUSH_PROMISE from a client; a stream id reused.
    for input in [
        {
            let mut b = Vec::new();
            frame::write_header(&mut b, 20_000, kind::DATA, 0, 1);
            b
        },
        raw(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &[0, 0, 0, 2]),
        raw(kind::DATA, 0, 2, b"x"),
        raw(kind::RST_STREAM, 0, 9, &[0; 4]),
    ] {
        let mut c = open(Config::default());
        c.recv(0, &input);
        assert!(goaway(&c.take_output()).is_some(), "{input:?}");
        assert!(c.is_closed());
    }
    let mut c = open(Config::default());
    let mut client = Client::new();
    c.recv(0, &client.get(5, "/"));
    c.recv(0, &client.get(3, "/"));
    assert_eq!(goaway(&c.take_output()), Some(ErrorCode::STREAM_CLOSED));
}

#[test]
fn expect_continue_gets_an_interim_100_then_the_response() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    let post =
        [(":method", "POST"), (":scheme", "http"), (":authority", "a"), (":path", "/"), ("expect", "100-continue")];
    c.recv(0, &client.headers(1, &post, false));
    c.take_output();
    let Some(Event::Request { request, .. }) = c.poll_event() else { panic!() };
    assert_eq!(request.field("expect"), Some(&b"100-continue"[..]));
    c.send_continue(1).unwrap();
    c.send_headers(1, 200, &[], true).unwrap();
    let out = c.take_output();
    let f = frames(&out);
    let mut statuses = Vec::new();
    for (h, p) in f.iter().filter(|(h, _)| h.kind == kind::HEADERS) {
        let mut fields = Vec::new();
        client.dec.decode(p, &mut fields).unwrap();
        statuses.push((fields[0].1.clone(), h.has(flag::END_STREAM)));
    }
    assert_eq!(statuses, [(b"100".to_vec(), false), (b"200".to_vec(), true)]);
    // The response came before the body ended: the client is told to stop (NO_ERROR).
    assert_eq!(resets(&out), [(1, ErrorCode::NO_ERROR)]);
}

#[test]
fn send_capacity_says_what_goes_out_without_queueing() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    let mut input = settings(&[(setting::INITIAL_WINDOW_SIZE, 1000)]);
    input.extend(client.get(1, "/"));
    c.recv(0, &input);
    assert_eq!(c.send_capacity(1), 0, "no head yet");
    c.send_headers(1, 200, &[], false).unwrap();
    assert_eq!(c.send_capacity(1), 1000);
    c.send_data(1, &[0; 600], false).unwrap();
    assert_eq!(c.send_capacity(1), 400);
    c.send_data(1, &[0; 600], false).unwrap();
    assert_eq!((c.send_capacity(1), c.stream_queued(1)), (0, 200));
    let mut total = Stats::default();
    total.merge(c.stats());
    total.merge(c.stats());
    assert_eq!(total.streams_opened, 2);
}

// A timeout closes with GOAWAY NO_ERROR and the last stream id, once, not counted as an error;
// the stream still waiting for its window is dropped with the connection.
#[test]
fn an_idle_close_says_goaway_no_error_with_the_last_stream() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    c.recv(0, &settings(&[(setting::INITIAL_WINDOW_SIZE, 0)]));
    c.recv(0, &client.get(1, "/"));
    c.recv(0, &client.get(3, "/"));
    c.send_headers(3, 200, &[], false).unwrap();
    c.send_data(3, &[7; 1000], true).unwrap();
    c.take_output();
    assert_eq!(c.queued_bytes(), 1000, "the body waits for a window that never opens");
    c.close_idle();
    let out = c.take_output();
    let f = frames(&out);
    assert_eq!(f.len(), 1, "{:?}", kinds(&out));
    assert_eq!((f[0].0.kind, &f[0].1[..8]), (kind::GOAWAY, &[0, 0, 0, 3, 0, 0, 0, 0][..]));
    assert!(c.is_closed() && c.is_done());
    assert_eq!(c.queued_bytes(), 0);
    assert_eq!(c.stats().connection_errors, 0);
    c.close_idle();
    assert!(!c.has_output(), "said once");

    // After a drain's GOAWAY, none is repeated.
    let mut c = open(Config::default());
    c.drain();
    c.take_output();
    c.close_idle();
    assert!(!c.has_output() && c.is_closed());
}

// The application refuses a stream unprocessed: REFUSED_STREAM, counted; others go on.
#[test]
fn an_application_refusal_is_refused_stream() {
    let mut c = open(Config::default());
    let mut client = Client::new();
    c.recv(0, &client.get(1, "/"));
    c.recv(0, &client.get(3, "/"));
    events(&mut c);
    c.take_output();
    c.refuse(1);
    assert_eq!(resets(&c.take_output()), [(1, ErrorCode::REFUSED_STREAM)]);
    assert_eq!(c.stats().refused_streams, 1);
    c.refuse(1);
    assert!(!c.has_output(), "once");
    c.send_headers(3, 200, &[], true).unwrap();
    assert_eq!(kinds(&c.take_output()), [(kind::HEADERS, 3)]);
}
