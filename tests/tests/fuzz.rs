//! Fuzz targets for the protocol parsers (see `host_fuzz`). Each one checks invariants
//! that would break on a parser bug, not only "no panic": fed in pieces, a parser must frame
//! exactly what it frames fed whole; what it frames must be within its limits; what framing
//! accepted must parse.
//!
//! The HTTP targets cover both directions of `http_proto`'s framing: requests as a server
//! reads them (`http_requests`, `http_chunked`) and responses as a client or the proxy reads
//! them (`http_responses`).
//!
//! `cargo test -p host-tests --test fuzz` runs a short, deterministic round of each target
//! (part of the suite). The long run is `bench/fuzz.sh` (`FUZZ_SECS` per target, release mode).
//! The frame plugin's target is in `fuzz_frame.rs`: two plugin crates cannot link into one
//! binary (each exports the plugin's root symbol).

use host_fuzz::{run, splits, Budget};

/// Rounds per target in the default (CI) run.
const QUICK: u64 = 30_000;

fn budget() -> Budget {
    Budget::from_env(QUICK)
}

fn report(target: &str, r: host_fuzz::Report) {
    eprintln!("fuzz {target}: {} rounds in {:.1?}, no failure", r.rounds, r.elapsed);
}

/// Split points for `input` plus its end: the lengths buffered at each step.
fn ends(len: usize, salt: u64) -> Vec<usize> {
    let mut ends = splits(len, salt);
    ends.push(len);
    ends
}

mod http_targets {
    use super::*;
    use http_proto::chunked::{decode, ChunkScan};
    use http_proto::parse::Framed;
    use http_proto::{header_fields, parse_response_head, BodyScan, ResponseBody, ResponseHead};
    use http_proto::{percent_decode, persist, Framer, Limits};

    /// Drives the request framer as the host does: bytes arrive in pieces, each complete message
    /// is delivered, a request is answered and the next one framed.
    fn requests(input: &[u8], salt: u64) {
        let limits = Limits { max_header: 1024, max_body: 2048, max_target: 512, ..Limits::default() };
        // Small enough that bodies come in pieces now and then.
        let max_message = 1536;
        let mut framer = Framer::default();
        let mut delivered = 0;
        'feed: for end in ends(input.len(), salt) {
            while delivered < end {
                let buf = &input[delivered..end];
                let n = match framer.frame(buf, &limits, max_message) {
                    Err(status) => {
                        assert!(status.code() >= 400, "an error framing a request is a 4xx/5xx");
                        break 'feed;
                    }
                    Ok(Framed { len: None, .. }) => break,
                    Ok(Framed { len: Some(n), .. }) => n,
                };
                assert!(n > 0, "a framed message is never empty");
                assert!(n <= max_message, "framed {n} bytes, over the max message {max_message}");
                if n > buf.len() {
                    break;
                }
                match framer.take_request(&buf[..n], &limits) {
                    Err(_) => break 'feed,
                    Ok(None) => {}
                    Ok(Some(req)) => {
                        assert!(req.body().len() as u64 <= limits.max_body);
                        let _ = percent_decode(req.path());
                        let _ = (req.query(), req.keep_alive(), req.version(), req.method_name());
                        assert!(req.headers().count() <= limits.max_headers);
                        let _ = persist(req.head(), false);
                        framer.finish();
                    }
                }
                delivered += n;
            }
        }
    }

    #[test]
    fn http_requests() {
        report("http_requests", run("http_requests", budget(), 4096, requests));
    }

    /// A chunked body decoded whole and decoded in pieces: the same end, data and errors.
    fn chunked(input: &[u8], salt: u64) {
        let max = 4096;
        let mut whole_out = Vec::new();
        let whole = ChunkScan::default().advance(input, max, Some(&mut whole_out));
        let mut scan = ChunkScan::default();
        let mut out = Vec::new();
        let mut start = 0;
        let mut pieces = Ok(None);
        for end in ends(input.len(), salt) {
            match scan.feed(&input[start..end], max, Some(&mut out)) {
                Err(e) => {
                    pieces = Err(e);
                    break;
                }
                Ok((n, true)) => {
                    pieces = Ok(Some(start + n));
                    break;
                }
                Ok((n, false)) => assert_eq!(n, end - start, "an unfinished piece is taken whole"),
            }
            start = end;
        }
        assert_eq!(whole, pieces, "fed whole vs in pieces");
        if whole.is_ok() {
            assert_eq!(whole_out, out, "decoded data, whole vs in pieces");
            assert!(out.len() as u64 <= max);
        }
        if let Ok(Some(n)) = whole {
            let mut again = Vec::new();
            assert_eq!(decode(&input[..n], &mut again), Ok(n));
            assert_eq!(again, whole_out);
        }
    }

    #[test]
    fn http_chunked() {
        report("http_chunked", run("http_chunked", budget(), 4096, chunked));
    }

    /// What a client makes of a stream of responses on one connection: where each head and
    /// body ends (offsets into the input), then how the stream ended.
    #[derive(Debug, PartialEq)]
    enum Event {
        Head { end: usize, status: u16 },
        Body { end: usize },
        Error,
    }

    /// Frames responses as the proxy does (a head, then its body a piece at a time), the input
    /// arriving up to each of `ends`; each answers a `HEAD` when `head_request`.
    fn client_events(input: &[u8], ends: &[usize], head_request: bool) -> Vec<Event> {
        let limits = Limits { max_header: 1024, max_headers: 32, ..Limits::default() };
        let (mut events, mut delivered, mut body) = (Vec::new(), 0, None::<BodyScan>);
        for &end in ends {
            while delivered < end {
                let buf = &input[delivered..end];
                match body.as_mut() {
                    None => {
                        let head = match parse_response_head(buf, head_request, &limits) {
                            Err(_) => {
                                events.push(Event::Error);
                                return events;
                            }
                            Ok(None) => break,
                            Ok(Some(head)) => head,
                        };
                        check_response_head(&buf[..head.len], &head, head_request, &limits);
                        delivered += head.len;
                        events.push(Event::Head { end: delivered, status: head.status });
                        let scan = BodyScan::new(head.body);
                        if scan.is_done() {
                            events.push(Event::Body { end: delivered });
                        } else if !head.is_interim() {
                            body = Some(scan);
                        }
                    }
                    Some(scan) => {
                        let (n, done) = match scan.feed(buf) {
                            Err(_) => {
                                events.push(Event::Error);
                                return events;
                            }
                            Ok(taken) => taken,
                        };
                        assert!(n <= buf.len(), "a body took {n} bytes of {}", buf.len());
                        assert!(done || n == buf.len(), "an unfinished body takes the piece whole");
                        delivered += n;
                        if done {
                            assert!(scan.is_done());
                            events.push(Event::Body { end: delivered });
                            body = None;
                        }
                    }
                }
            }
        }
        if body == Some(BodyScan::UntilClose) {
            // The server closed: that ends a body delimited by the close.
            events.push(Event::Body { end: input.len() });
        }
        events
    }

    /// What a parsed head must be: within the limits, framed one way only.
    fn check_response_head(raw: &[u8], head: &ResponseHead, head_request: bool, limits: &Limits) {
        assert!(head.len <= limits.max_header && head.len == raw.len());
        assert!((100..=999).contains(&head.status));
        assert!(head.reason.end <= head.len);
        let count = |name: &str| header_fields(raw).filter(|(n, _)| n.eq_ignore_ascii_case(name)).count();
        let (lengths, codings) = (count("content-length"), count("transfer-encoding"));
        assert!(lengths <= 1, "two lengths accepted");
        assert!(lengths == 0 || codings == 0, "both framings accepted");
        assert!(codings == 0 || head.minor == 1, "Transfer-Encoding accepted in HTTP/1.0");
        let no_body = head_request || head.is_interim() || head.status == 204 || head.status == 304;
        if no_body {
            assert_eq!(head.body, ResponseBody::None);
        }
        if head.body == ResponseBody::UntilClose {
            assert!(!head.keep_alive, "a body until the close on a kept connection");
        }
    }

    /// Responses fed whole and in pieces: the same heads, bodies and errors at the same offsets.
    fn responses(input: &[u8], salt: u64) {
        let head_request = salt.is_multiple_of(7);
        let whole = client_events(input, &[input.len()], head_request);
        let pieces = client_events(input, &ends(input.len(), salt), head_request);
        assert_eq!(whole, pieces, "fed whole vs in pieces");
    }

    #[test]
    fn http_responses() {
        report("http_responses", run("http_responses", budget(), 4096, responses));
    }
}

mod resp_targets {
    use super::*;
    use resp::proto::{frame_command, Args, Framed, Progress};

    /// What framing a buffer yields: the command lengths in order, then an error if one ends it.
    #[derive(Debug, PartialEq)]
    struct Outcome {
        commands: Vec<usize>,
        error: bool,
    }

    const MAX: usize = 2048;

    fn whole(input: &[u8]) -> Outcome {
        let mut out = Outcome { commands: Vec::new(), error: false };
        let mut pos = 0;
        while pos < input.len() {
            match frame_command(&input[pos..], MAX, &mut Progress::default()) {
                Framed::Complete(n) if pos + n <= input.len() => {
                    out.commands.push(n);
                    pos += n;
                }
                Framed::Complete(_) | Framed::NeedMore => break,
                Framed::Error(_) => {
                    out.error = true;
                    break;
                }
            }
        }
        out
    }

    /// Framing as the host does it, bytes arriving in pieces, the progress kept between calls,
    /// and a known length waited for without asking again.
    fn pieces(input: &[u8], salt: u64) -> Outcome {
        let mut out = Outcome { commands: Vec::new(), error: false };
        let mut progress = Progress::default();
        let mut pos = 0;
        let mut waiting: Option<usize> = None;
        for end in ends(input.len(), salt) {
            while pos < end {
                let n = match waiting {
                    Some(n) => n,
                    None => match frame_command(&input[pos..end], MAX, &mut progress) {
                        Framed::Complete(n) => n,
                        Framed::NeedMore => break,
                        Framed::Error(_) => {
                            out.error = true;
                            return out;
                        }
                    },
                };
                assert!(n > 0 && n <= MAX, "framed {n} bytes (max {MAX})");
                if pos + n > end {
                    waiting = Some(n);
                    break;
                }
                waiting = None;
                progress = Progress::default();
                out.commands.push(n);
                pos += n;
            }
        }
        out
    }

    fn commands(input: &[u8], salt: u64) {
        let fed_whole = whole(input);
        assert_eq!(fed_whole, pieces(input, salt), "fed whole vs in pieces");
        let mut args = Args::default();
        let mut pos = 0;
        for n in fed_whole.commands {
            let msg = &input[pos..pos + n];
            let parsed = args.parse(msg);
            if msg[0] == b'*' {
                assert!(parsed.is_ok(), "a framed multibulk command parses: {parsed:?}");
            }
            if parsed.is_ok() {
                let view = args.view(msg);
                let total: usize = view.iter().map(<[u8]>::len).sum();
                assert!(total <= n);
            }
            pos += n;
        }
    }

    #[test]
    fn resp_commands() {
        report("resp_commands", run("resp_commands", budget(), 4096, commands));
    }
}

mod websocket_targets {
    use super::*;
    use websocket_core::frame::{apply_mask, parse_close, parse_header};
    use websocket_core::utf8::Utf8Validator;
    use websocket_core::OpCode;

    fn frames(input: &[u8], salt: u64) {
        let mut buf = input;
        while !buf.is_empty() {
            let header = match parse_header(buf) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    assert!(buf.len() < 14, "{} bytes and still no header", buf.len());
                    return;
                }
                Err(e) => {
                    let _ = e.close_code();
                    return;
                }
            };
            assert!((2..=14).contains(&header.header_len) && header.header_len <= buf.len());
            for k in 0..header.header_len {
                assert_eq!(parse_header(&buf[..k]), Ok(None), "a prefix of a header is incomplete");
            }
            let Some(len) = header.frame_len().filter(|&l| l <= buf.len()) else { return };
            let mut payload = buf[header.header_len..len].to_vec();
            if let Some(key) = header.mask {
                // Unmasking in two pieces equals unmasking whole.
                let mut split = payload.clone();
                let cut = (salt as usize) % (split.len() + 1);
                let (a, b) = split.split_at_mut(cut);
                apply_mask(a, key, 0);
                apply_mask(b, key, cut);
                apply_mask(&mut payload, key, 0);
                assert_eq!(split, payload, "masking split at {cut}");
            }
            match header.opcode {
                OpCode::Close => {
                    let _ = parse_close(&payload);
                }
                OpCode::Text => utf8(&payload, salt),
                _ => {}
            }
            buf = &buf[len..];
        }
    }

    /// The streaming validator agrees with the standard library, however the text is split.
    fn utf8(text: &[u8], salt: u64) {
        let mut v = Utf8Validator::new();
        let mut start = 0;
        let mut ok = true;
        for end in ends(text.len(), salt) {
            if v.feed(&text[start..end]).is_err() {
                ok = false;
                break;
            }
            start = end;
        }
        ok = ok && v.finish().is_ok();
        assert_eq!(ok, std::str::from_utf8(text).is_ok(), "utf-8 validity of {text:?}");
    }

    #[test]
    fn websocket_frames() {
        report("websocket_frames", run("websocket_frames", budget(), 4096, frames));
    }

    #[test]
    fn websocket_utf8() {
        report("websocket_utf8", run("websocket_utf8", budget(), 1024, utf8));
    }
}

/// plugin-api's glue between the raw ABI and a `Protocol`: framing results cross as `RawFrame`,
/// panics are caught and reported, never unwound across the boundary.
mod glue_targets {
    use std::panic::{self, AssertUnwindSafe};
    use std::sync::Once;

    use plugin_api::abi::{CallStatus, RawFrame};
    use plugin_api::abi_stable::std_types::RSlice;
    use plugin_api::glue::instance;
    use plugin_api::testing::TestHost;
    use plugin_api::{ConnId, Frame, Host, Protocol, WorkerInfo};

    use super::*;

    const BOOM: &str = "fuzz plugin panics on purpose";

    /// Frames `[len][len + 1 bytes…]`: 0xff as a length panics, 0xfe is invalid; a message
    /// holding 0xfd panics in `on_message`. It records what it was given.
    #[derive(Default)]
    struct Toy {
        messages: Vec<Vec<u8>>,
    }

    fn toy_frame(buf: &[u8]) -> Frame {
        match buf.first() {
            None => Frame::NeedMore,
            Some(0xff) => panic!("{BOOM}"),
            Some(0xfe) => Frame::Invalid,
            Some(&n) => Frame::Complete(n as usize + 1),
        }
    }

    impl Protocol for Toy {
        fn new(_: &str, _: &WorkerInfo) -> Result<Self, String> {
            Ok(Toy::default())
        }
        fn input(&mut self, _: &mut Host<'_>, _: ConnId, buf: &[u8]) -> Frame {
            toy_frame(buf)
        }
        fn on_message(&mut self, _: &mut Host<'_>, _: ConnId, msg: &[u8]) {
            self.messages.push(msg.to_vec());
            if msg.contains(&0xfd) {
                panic!("{BOOM}");
            }
        }
    }

    /// How a connection's stream ended: every message delivered, then why it stopped.
    #[derive(Debug, PartialEq, Eq)]
    enum End {
        /// Waiting for more bytes (this many buffered).
        Open(usize),
        Invalid,
        FramePanicked,
        MessagePanicked,
    }

    /// Feeds `input` through the glue in pieces ending at `ends`, framing and delivering as the
    /// host's worker does; returns the messages framed and how the stream ended.
    fn drive(input: &[u8], ends: &[usize]) -> (Vec<Vec<u8>>, End) {
        let mut plugin = instance(Toy::default());
        let mut host = TestHost::new();
        let conn = ConnId::new(0, 1);
        let (mut buf, mut framed, mut start) = (Vec::new(), Vec::new(), 0);
        for &end in ends {
            buf.extend_from_slice(&input[start..end]);
            start = end;
            loop {
                let raw =
                    panic::catch_unwind(AssertUnwindSafe(|| plugin.input(host.raw(), conn, RSlice::from_slice(&buf))))
                        .expect("a plugin's panic never unwinds out of the glue");
                // The glue says what the plugin said, or that it panicked.
                let direct = panic::catch_unwind(|| toy_frame(&buf));
                match (&direct, raw) {
                    (Ok(Frame::NeedMore), RawFrame::NeedMore) => break,
                    (Ok(Frame::Invalid), RawFrame::Invalid) => return (framed, End::Invalid),
                    (Err(_), RawFrame::Panicked) => return (framed, End::FramePanicked),
                    (Ok(Frame::Complete(n)), RawFrame::Complete(m)) if *n as u64 == m => {
                        if buf.len() < *n {
                            break;
                        }
                        let msg: Vec<u8> = buf.drain(..*n).collect();
                        framed.push(msg.clone());
                        let status = plugin.on_message(host.raw(), conn, RSlice::from_slice(&msg));
                        assert_eq!(status == CallStatus::Panicked, msg.contains(&0xfd), "on_message status {status:?}");
                        if status == CallStatus::Panicked {
                            return (framed, End::MessagePanicked);
                        }
                    }
                    (direct, raw) => panic!("the glue said {raw:?} for {:?}", direct.as_ref().ok()),
                }
            }
        }
        (framed, End::Open(buf.len()))
    }

    fn frames(input: &[u8], salt: u64) {
        let whole = drive(input, &[input.len()]);
        let split = drive(input, &ends(input.len(), salt));
        assert_eq!(split, whole, "fed in pieces ({:?})", splits(input.len(), salt));
        let total: usize = whole.0.iter().map(Vec::len).sum();
        if let End::Open(left) = whole.1 {
            assert_eq!(total + left, input.len(), "every byte is framed or buffered");
        }
    }

    /// Silences the toy's own panics (thousands of them); any other still prints.
    fn quiet_toy_panics() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let default = panic::take_hook();
            panic::set_hook(Box::new(move |info| {
                let msg = info.payload().downcast_ref::<String>().map(String::as_str);
                if msg != Some(BOOM) {
                    default(info);
                }
            }));
        });
    }

    #[test]
    fn glue_framing() {
        quiet_toy_panics();
        report("glue_framing", run("glue_framing", budget(), 2048, frames));
    }
}
