//! Fuzz targets for the protocol parsers (see `host_tests::fuzz`). Each one checks invariants
//! that would break on a parser bug, not only "no panic": fed in pieces, a parser must frame
//! exactly what it frames fed whole; what it frames must be within its limits; what framing
//! accepted must parse.
//!
//! `cargo test -p host-tests --test fuzz` runs a short, deterministic round of each target
//! (part of the suite). The long run is `bench/fuzz.sh` (`FUZZ_SECS` per target, release mode).
//! The frame plugin's target is in `fuzz_frame.rs`: two plugin crates cannot link into one
//! binary (each exports the plugin's root symbol).

use host_tests::fuzz::{run, splits, Budget};

/// Rounds per target in the default (CI) run.
const QUICK: u64 = 30_000;

fn budget() -> Budget {
    Budget::from_env(QUICK)
}

fn report(target: &str, r: host_tests::fuzz::Report) {
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
