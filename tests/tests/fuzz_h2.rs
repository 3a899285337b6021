//! Fuzz target for HTTP/2 (`http_proto::h2`, see `fuzz.rs` for the fuzzer): a client's bytes after
//! the connection preface, mutated, fed to the server connection. Seeds: what the python `h2`
//! client sends (`tests/fuzz/corpus/h2_frames/`, written by
//! `plugins/http/proto/src/h2/testdata/make_fuzz_seeds.py`).
//!
//! Invariants, beyond "no panic": fed whole or in pieces, the connection yields the same events,
//! the same output and the same counters; everything it sends is well-formed frames, each
//! within the peer's frame size; a response body never goes past the windows the client
//! granted; what it queues is what it was given less what it sent; a request it accepted
//! converts to an HTTP/1.1 request or is refused with a status.

use std::collections::HashMap;

use host_fuzz::{run, splits, Budget};
use http_proto::h2::frame::{self, flag, kind, setting, FrameHeader, Framing, PREFACE};
use http_proto::h2::{Config, Connection, Event};
use http_proto::{Limits, Request};

/// The response body for every request: larger than a window, so bodies wait in queues.
const BODY: usize = 70_000;

fn config() -> Config {
    Config {
        max_concurrent_streams: 8,
        initial_window_size: 65_535,
        connection_window: 65_535,
        max_header_list_size: 8 * 1024,
        max_header_block: 16 * 1024,
        max_resets: 20,
        max_idle_frames: 50,
        ..Config::default()
    }
}

/// What a run produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<Event>,
    output: Vec<u8>,
    stats: http_proto::h2::Stats,
    closed: bool,
}

/// Feeds `input` (after the preface) ending at `ends`; answers every request once all of it is
/// in (so that whole and in pieces produce the same output).
fn drive(input: &[u8], ends: &[usize]) -> (Outcome, Connection) {
    let mut conn = Connection::new(config());
    let mut output = conn.take_output();
    let mut buf = PREFACE.to_vec();
    let mut events = Vec::new();
    let mut start = 0;
    for &end in ends {
        buf.extend_from_slice(&input[start..end]);
        start = end;
        let used = conn.recv(0, &buf);
        assert!(used <= buf.len());
        buf.drain(..used);
        assert!(buf.len() < frame::HEADER_LEN + 16_384 + 24, "a whole frame was left unread");
        events.extend(std::iter::from_fn(|| conn.poll_event()));
        output.extend(conn.take_output());
    }
    let body = vec![b'b'; BODY];
    for e in &events {
        if let Event::Request { stream, request, .. } = e {
            check_request(request);
            if conn.send_headers(*stream, 200, &[("content-type", b"text/plain")], false).is_ok() {
                conn.send_data(*stream, &body, true).expect("data after headers");
            }
        }
    }
    output.extend(conn.take_output());
    let outcome = Outcome { events, output, stats: *conn.stats(), closed: conn.is_closed() };
    (outcome, conn)
}

fn check_request(request: &http_proto::h2::H2Request) {
    if let Ok((raw, head)) = request.http1_head(&Limits::default()) {
        let r = Request::new(&head, &raw, b"");
        let _ = (r.path(), r.query(), r.method_name(), r.headers().count());
        assert_eq!(r.method_name(), request.method);
    }
}

/// The server's output, frame by frame: well-formed, within the client's frame size, DATA within
/// the windows the client's SETTINGS and WINDOW_UPDATEs granted.
fn check_output(output: &[u8], input: &[u8]) {
    // The client's grants, from its (valid) frames, in order; conservative: WINDOW_UPDATEs are
    // counted whenever they came, so only "more than ever granted" is caught.
    let (mut initial, mut max_frame, mut conn_grant, mut stream_grant) =
        (65_535i64, 16_384usize, 65_535i64, HashMap::<u32, i64>::new());
    let mut at = 0;
    while let Ok(Framing::Frame(h, n)) = frame::frame_at(&input[at..], frame::MAX_MAX_FRAME_SIZE) {
        let p = &input[at + frame::HEADER_LEN..at + n];
        match frame::decode(&h, p) {
            Ok(frame::Frame::Settings { ack: false, params }) => {
                for (id, v) in frame::settings(params) {
                    match id {
                        setting::INITIAL_WINDOW_SIZE => initial = initial.max(i64::from(v)),
                        setting::MAX_FRAME_SIZE => max_frame = max_frame.max(v as usize),
                        _ => {}
                    }
                }
            }
            Ok(frame::Frame::WindowUpdate { stream: 0, increment }) => conn_grant += i64::from(increment),
            Ok(frame::Frame::WindowUpdate { stream, increment }) => {
                *stream_grant.entry(stream).or_default() += i64::from(increment)
            }
            _ => {}
        }
        at += n;
    }
    let mut sent_total = 0i64;
    let mut sent: HashMap<u32, i64> = HashMap::new();
    let mut at = 0;
    while at < output.len() {
        let h = FrameHeader::parse(&output[at..]).expect("the output ends on a frame boundary");
        let n = frame::HEADER_LEN + h.len as usize;
        assert!(at + n <= output.len(), "a truncated frame in the output");
        assert!(h.len as usize <= max_frame, "a frame of {} bytes, over the client's {max_frame}", h.len);
        let f = frame::decode(&h, &output[at + frame::HEADER_LEN..at + n]);
        assert!(f.is_ok() || h.kind == kind::GOAWAY, "the server sent a malformed frame: {h:?} {f:?}");
        if h.kind == kind::DATA {
            sent_total += i64::from(h.len);
            let s = sent.entry(h.stream).or_default();
            *s += i64::from(h.len);
            let grant = initial + stream_grant.get(&h.stream).copied().unwrap_or(0);
            assert!(*s <= grant, "stream {} sent {} bytes, granted {grant}", h.stream, *s);
            assert!(sent_total <= conn_grant, "sent {sent_total} bytes, connection granted {conn_grant}");
            assert!(h.flags & !flag::END_STREAM == 0);
        }
        at += n;
    }
}

fn frames(input: &[u8], salt: u64) {
    let (whole, conn) = drive(input, &[input.len()]);
    let mut ends = splits(input.len(), salt);
    ends.push(input.len());
    let (pieces, _) = drive(input, &ends);
    assert_eq!(whole, pieces, "fed whole vs in pieces");
    check_output(&whole.output, input);
    // What waits is what the application gave less what went out, all of it in stream queues.
    let answered: Vec<u32> = whole
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Request { stream, .. } => Some(*stream),
            _ => None,
        })
        .collect();
    assert!(conn.queued_bytes() <= answered.len() * BODY);
    let queued: usize = answered.iter().map(|&s| conn.stream_queued(s)).sum();
    assert_eq!(conn.queued_bytes(), queued);
}

#[test]
fn h2_frames() {
    let r = run("h2_frames", Budget::from_env(1_500), 20_000, frames);
    eprintln!("fuzz h2_frames: {} rounds in {:.1?}, no failure", r.rounds, r.elapsed);
}
