//! Unit tests of request framing and validation.

use super::*;

const LIMITS: Limits = Limits { max_header: 64 * 1024, max_body: 1 << 20, max_target: 8192, max_headers: 100 };
const MAX_MESSAGE: usize = 1 << 20;

fn head(req: &[u8]) -> Result<Option<RequestHead>, Status> {
    parse_head(req, &LIMITS)
}

fn status(req: &[u8]) -> Status {
    match head(req) {
        Err(s) => s,
        other => panic!("{:?} was accepted: {other:?}", String::from_utf8_lossy(req)),
    }
}

/// What a connection fed through a [`Framer`] produced.
#[derive(Debug, Default, PartialEq)]
struct Run {
    /// The body of each request completed.
    bodies: Vec<Vec<u8>>,
    /// The length of each message delivered.
    messages: Vec<usize>,
    continues: usize,
}

/// Feeds `req` to a framer `piece` bytes at a time, as the host does: a message delivered is
/// gone from the buffer; a length over what is buffered is waited for.
fn run(req: &[u8], piece: usize, limits: &Limits, max_message: usize) -> Result<Run, Status> {
    let mut f = Framer::default();
    let (mut buf, mut out) = (Vec::new(), Run::default());
    for p in req.chunks(piece) {
        buf.extend_from_slice(p);
        while !buf.is_empty() {
            let framed = f.frame(&buf, limits, max_message)?;
            out.continues += usize::from(framed.send_continue);
            match framed.len {
                Some(n) if n <= buf.len() => {
                    assert!(n > 0 && n <= max_message, "message of {n}");
                    let msg: Vec<u8> = buf.drain(..n).collect();
                    out.messages.push(n);
                    if let Some(r) = f.take_request(&msg, limits)? {
                        out.bodies.push(r.body().to_vec());
                        f.finish();
                    }
                }
                _ => break,
            }
        }
    }
    Ok(out)
}

/// Frames `req` fed one byte at a time; returns its length when it was delivered whole, and
/// how many times `100 Continue` was asked for.
fn frame_bytewise(req: &[u8]) -> (Option<usize>, usize) {
    let r = run(req, 1, &LIMITS, MAX_MESSAGE).unwrap();
    let whole = (r.bodies.len() == 1).then(|| r.messages.iter().sum());
    (whole, r.continues)
}

#[test]
fn parses_a_simple_get() {
    let req = b"GET /index.html?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
    let h = head(req).unwrap().unwrap();
    assert_eq!(h.len, req.len());
    assert_eq!(h.method, Method::Get);
    assert_eq!(&req[h.target.clone()], b"/index.html?x=1");
    assert_eq!(h.minor, 1);
    assert!(h.keep_alive);
    assert_eq!(h.body, Body::None);
    assert!(!h.expect_continue);
}

#[test]
fn incomplete_head_needs_more() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for end in 0..req.len() {
        assert_eq!(head(&req[..end]), Ok(None), "{end}");
    }
}

#[test]
fn frames_pipelined_requests_one_at_a_time() {
    let one = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut buf = Vec::new();
    for _ in 0..16 {
        buf.extend_from_slice(one);
    }
    let r = run(&buf, buf.len(), &LIMITS, MAX_MESSAGE).unwrap();
    assert_eq!(r.messages, vec![one.len(); 16]);
    assert_eq!(r.bodies.len(), 16);
}

#[test]
fn frames_a_request_arriving_byte_by_byte() {
    let req = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(frame_bytewise(req), (Some(req.len()), 0));
    let req = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(frame_bytewise(req), (Some(req.len()), 0));
}

#[test]
fn content_length_frames_the_body() {
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET";
    let mut f = Framer::default();
    let r = f.frame(&req[..30], &LIMITS, MAX_MESSAGE);
    assert_eq!(r.map(|r| r.len), Ok(None));
    let r = f.frame(req, &LIMITS, MAX_MESSAGE).unwrap();
    assert_eq!(r.len, Some(req.len() - 3));
    let request = f.take_request(&req[..req.len() - 3], &LIMITS).unwrap().unwrap();
    assert_eq!(request.head().body, Body::Length(5));
    assert_eq!(request.body(), b"hello");
    // Known as soon as the head is: the host can wait for (or refuse) the rest.
    let head_len = req.len() - 8;
    let mut f = Framer::default();
    let r = f.frame(&req[..head_len], &LIMITS, MAX_MESSAGE).unwrap();
    assert_eq!(r.len, Some(head_len + 5));
}

#[test]
fn a_body_longer_than_a_message_comes_in_pieces() {
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let mut req =
        format!("PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len())
            .into_bytes();
    let head_len = req.len();
    req.extend_from_slice(&body);
    req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    for piece in [1, 7, 100, 1000, req.len()] {
        // Messages of at most 1024 bytes: the head, then pieces of the body.
        let r = run(&req, piece, &LIMITS, 1024).unwrap();
        assert_eq!(r.bodies, vec![body.clone(), vec![]], "pieces of {piece}");
        assert_eq!(r.continues, usize::from(piece < req.len()), "pieces of {piece}");
        assert!(r.messages[0] >= head_len);
    }
    // max_body is about the body alone: exactly at the limit is fine.
    let limits = Limits { max_body: body.len() as u64, ..LIMITS };
    assert_eq!(run(&req, 512, &limits, 1024).unwrap().bodies.len(), 2);
    let limits = Limits { max_body: body.len() as u64 - 1, ..LIMITS };
    assert_eq!(run(&req, 512, &limits, 1024), Err(Status::CONTENT_TOO_LARGE));
}

#[test]
fn chunked_body_split_everywhere() {
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    for piece in 1..req.len() {
        let r = run(req, piece, &LIMITS, MAX_MESSAGE).unwrap();
        assert_eq!(r.bodies, [&b"Wikipedia"[..], b""], "pieces of {piece}");
    }
    // Chunk framing does not count against max_body.
    let limits = Limits { max_body: 9, ..LIMITS };
    assert_eq!(run(req, 5, &limits, MAX_MESSAGE).unwrap().bodies.len(), 2);
    let limits = Limits { max_body: 8, ..LIMITS };
    assert_eq!(run(req, 5, &limits, MAX_MESSAGE), Err(Status::CONTENT_TOO_LARGE));
}

#[test]
fn host_values() {
    for ok in ["a", "a.b-c", "127.0.0.1:8080", "[::1]", "[::1]:80", "x:", "", "a%20b", "h:65535"] {
        assert!(valid_host(ok.as_bytes()), "{ok:?}");
    }
    for bad in ["a b", "a/b", "a:port", "a:65536", "a:123456", "[::1", "[::1]x", "a@b", "a\tb", "[]"] {
        assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        let req = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
        if !bad.contains('\t') {
            assert_eq!(status(req.as_bytes()), Status::BAD_REQUEST, "{bad:?}");
        }
    }
}

#[test]
fn missing_or_duplicate_host_is_400() {
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), Status::BAD_REQUEST);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), Status::BAD_REQUEST);
    assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), Status::BAD_REQUEST);
    // HTTP/1.0 may omit it.
    assert!(head(b"GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
    // An empty Host is allowed (RFC 9112 §3.2).
    assert!(head(b"GET / HTTP/1.1\r\nHost:\r\n\r\n").unwrap().is_some());
}

#[test]
fn bad_content_length_is_400() {
    for cl in [&b"+5"[..], b"-1", b"5, 5", b"5,6", b"0x10", b"1 2", b"", b"99999999999999999999999"] {
        let mut req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: ".to_vec();
        req.extend_from_slice(cl);
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&req), Status::BAD_REQUEST, "{cl:?}");
    }
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        Status::BAD_REQUEST
    );
    // One rule for a repeated length, in one field or two (RFC 9112 §6.3 allows refusing both):
    // identical values are refused as well.
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
        Status::BAD_REQUEST
    );
    assert_eq!(status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"), Status::BAD_REQUEST);
    assert_eq!(parse_length(b"007"), Some(7));
    assert_eq!(parse_length(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(parse_length(b"18446744073709551616"), None);
}

#[test]
fn transfer_encoding_rules() {
    let te = |v: &str| {
        let req = format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {v}\r\n\r\n");
        head(req.as_bytes())
    };
    assert_eq!(te("chunked").unwrap().unwrap().body, Body::Chunked);
    assert_eq!(te("Chunked").unwrap().unwrap().body, Body::Chunked);
    assert_eq!(te("gzip"), Err(Status::NOT_IMPLEMENTED));
    assert_eq!(te("gzip, chunked"), Err(Status::NOT_IMPLEMENTED));
    assert_eq!(te("chunked, chunked"), Err(Status::BAD_REQUEST));
    assert_eq!(te(""), Err(Status::BAD_REQUEST));
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Status::BAD_REQUEST
    );
    assert_eq!(status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), Status::BAD_REQUEST);
}

#[test]
fn other_versions_are_505() {
    for req in [
        &b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/0.9\r\nHost: a\r\n\r\n",
        b"GET / HTTP/3\r\nHost: a\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/2",
    ] {
        assert_eq!(status(req), Status::VERSION_NOT_SUPPORTED, "{req:?}");
    }
    for req in [&b"GET / FTP/1.1\r\n\r\n"[..], b"GET / HTTP/x\r\n\r\n", b"GET / http/1.1\r\n", b"GET / HTTP/1.10\r\n"] {
        assert_eq!(status(req), Status::BAD_REQUEST, "{req:?}");
    }
    // A later HTTP/1.x is answered as 1.1.
    let req = b"GET /x HTTP/1.2\r\nHost: a\r\n\r\n";
    let h = head(req).unwrap().unwrap();
    assert_eq!((h.minor, h.len, &req[h.target]), (1, req.len(), &b"/x"[..]));
    assert_eq!(status(b"GET / HTTP/1.9\r\n\r\n"), Status::BAD_REQUEST, "no Host");
}

#[test]
fn malformed_requests_are_400() {
    for req in [
        &b"GET / HTTP/1.1\r\nHost : a\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHo\0st: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\0\r\n\r\n",
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ] {
        assert_eq!(status(req), Status::BAD_REQUEST, "{req:?}");
    }
}

#[test]
fn header_limits_are_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..LIMITS.max_headers {
        req.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert_eq!(status(&req), Status::HEADERS_TOO_LARGE);
    let small = Limits { max_header: 100, ..LIMITS };
    let long = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "y".repeat(100));
    assert_eq!(parse_head(long.as_bytes(), &small), Err(Status::HEADERS_TOO_LARGE));
    // Still incomplete but already too long.
    assert_eq!(parse_head(&long.as_bytes()[..110], &small), Err(Status::HEADERS_TOO_LARGE));
    let mut f = Framer::default();
    assert!(f.frame(&long.as_bytes()[..30], &small, MAX_MESSAGE).is_ok());
    assert_eq!(f.frame(&long.as_bytes()[..101], &small, MAX_MESSAGE), Err(Status::HEADERS_TOO_LARGE));
    // The header count is configurable.
    let few = Limits { max_headers: 2, ..LIMITS };
    assert!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\n\r\n", &few).is_ok());
    assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n", &few), Err(Status::HEADERS_TOO_LARGE));
}

#[test]
fn long_targets_are_414() {
    let short = Limits { max_target: 100, ..LIMITS };
    let req = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(100));
    assert_eq!(parse_head(req.as_bytes(), &short), Err(Status::URI_TOO_LONG));
    let req = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(98));
    assert!(parse_head(req.as_bytes(), &short).unwrap().is_some());
    // Still arriving, and already too long.
    let req = format!("GET /{}", "a".repeat(200));
    assert_eq!(parse_head(req.as_bytes(), &short), Err(Status::URI_TOO_LONG));
    // Longer than the whole head limit.
    let tiny = Limits { max_header: 64, max_target: 50, ..LIMITS };
    assert_eq!(parse_head(req.as_bytes(), &tiny), Err(Status::URI_TOO_LONG));
}

#[test]
fn body_over_the_limit_is_413() {
    let small = Limits { max_header: 1024, max_body: 4, ..LIMITS };
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(parse_head(req, &small), Err(Status::CONTENT_TOO_LARGE));
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
    let mut f = Framer::default();
    assert_eq!(f.frame(req, &small, MAX_MESSAGE), Err(Status::CONTENT_TOO_LARGE));
}

#[test]
fn expect_100_continue_once() {
    let req = b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(frame_bytewise(req), (Some(req.len()), 1));
    // Not when the body came along with the head.
    let mut f = Framer::default();
    assert!(!f.frame(req, &LIMITS, MAX_MESSAGE).unwrap().send_continue);
    // Chunked: once, however many pieces follow.
    let req = b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\
                Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(run(req, 1, &LIMITS, MAX_MESSAGE).unwrap().continues, 1);
    // Not for HTTP/1.0, nor without a body.
    let req = b"PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(frame_bytewise(req), (Some(req.len()), 0));
    let req = b"GET /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n";
    assert_eq!(frame_bytewise(req), (Some(req.len()), 0));
}

#[test]
fn connection_semantics() {
    let ka = |req: &[u8]| head(req).unwrap().unwrap().keep_alive;
    assert!(ka(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, Close\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"));
}

#[test]
fn head_and_methods() {
    let m = |req: &[u8]| head(req).unwrap().unwrap().method;
    assert_eq!(m(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n"), Method::Head);
    assert_eq!(m(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), Method::Options);
    assert_eq!(m(b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n"), Method::Delete);
    assert_eq!(m(b"BREW / HTTP/1.1\r\nHost: a\r\n\r\n"), Method::Other);
}

#[test]
fn request_len_knows_where_a_whole_request_ends() {
    let limits = Limits::default();
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET";
    assert_eq!(request_len(get, &limits), Ok(Some(get.len() - 3)));
    assert_eq!(request_len(&get[..10], &limits), Ok(None));
    let post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(request_len(&post[..post.len() - 2], &limits), Ok(Some(post.len())), "known before it is all here");
    let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nNEXT";
    assert_eq!(request_len(chunked, &limits), Ok(Some(chunked.len() - 4)));
    assert_eq!(request_len(&chunked[..chunked.len() - 5], &limits), Ok(None));
    let bad_chunk = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n";
    assert_eq!(request_len(bad_chunk, &limits), Err(Status::BAD_REQUEST));
    let both = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(request_len(both, &limits), Err(Status::BAD_REQUEST));
    let huge = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n";
    let unbounded = Limits { max_body: u64::MAX, ..limits };
    assert_eq!(request_len(huge, &unbounded), Err(Status::CONTENT_TOO_LARGE));
}
