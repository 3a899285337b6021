//! Unit tests of request framing and validation.

use super::*;

const LIMITS: Limits = Limits { max_header: 64 * 1024, max_body: 1 << 20 };

fn head(req: &[u8]) -> Result<Option<RequestHead>, Status> {
    parse_head(req, &LIMITS)
}

fn status(req: &[u8]) -> Status {
    match head(req) {
        Err(s) => s,
        other => panic!("{:?} was accepted: {other:?}", String::from_utf8_lossy(req)),
    }
}

/// Frames `req` fed one byte at a time; returns the total length and how many times
/// `100 Continue` was asked for.
fn frame_bytewise(req: &[u8]) -> (Option<usize>, usize) {
    let mut f = Framer::default();
    let mut continues = 0;
    for end in 1..=req.len() {
        let r = f.frame(&req[..end], &LIMITS).unwrap();
        continues += usize::from(r.send_continue);
        if let Some(len) = r.len {
            if len <= end {
                return (Some(len), continues);
            }
        }
    }
    (None, continues)
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
    let mut f = Framer::default();
    let mut rest = &buf[..];
    let mut n = 0;
    while !rest.is_empty() {
        let len = f.frame(rest, &LIMITS).unwrap().len.unwrap();
        assert_eq!(len, one.len());
        assert!(f.finish().is_some());
        rest = &rest[len..];
        n += 1;
    }
    assert_eq!(n, 16);
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
    let r = f.frame(&req[..30], &LIMITS);
    assert_eq!(r.map(|r| r.len), Ok(None));
    let r = f.frame(req, &LIMITS).unwrap();
    assert_eq!(r.len, Some(req.len() - 3));
    let h = f.finish().unwrap();
    assert_eq!(h.body, Body::Length(5));
    assert_eq!(&req[h.len..h.len + 5], b"hello");
    // Known as soon as the head is: the host can wait for (or refuse) the rest.
    let mut f = Framer::default();
    let r = f.frame(&req[..h.len], &LIMITS).unwrap();
    assert_eq!(r.len, Some(h.len + 5));
}

#[test]
fn chunked_body_split_everywhere() {
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let total = req.len() - 4;
    for split in 1..total {
        let mut f = Framer::default();
        let first = f.frame(&req[..split], &LIMITS).unwrap();
        assert_eq!(first.len, None, "split {split}");
        let second = f.frame(req, &LIMITS).unwrap();
        assert_eq!(second.len, Some(total), "split {split}");
        assert_eq!(f.finish().unwrap().body, Body::Chunked);
    }
    assert_eq!(frame_bytewise(&req[..total]), (Some(total), 0));
}

#[test]
fn missing_or_duplicate_host_is_400() {
    assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), Status::BadRequest);
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), Status::BadRequest);
    assert_eq!(status(b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), Status::BadRequest);
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
        assert_eq!(status(&req), Status::BadRequest, "{cl:?}");
    }
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
        Status::BadRequest
    );
    // Identical repeated fields are the same length.
    let h = head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    assert_eq!(h.unwrap().unwrap().body, Body::Length(5));
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
    assert_eq!(te("gzip"), Err(Status::NotImplemented));
    assert_eq!(te("gzip, chunked"), Err(Status::NotImplemented));
    assert_eq!(te("chunked, chunked"), Err(Status::BadRequest));
    assert_eq!(te(""), Err(Status::BadRequest));
    assert_eq!(
        status(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Status::BadRequest
    );
    assert_eq!(status(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), Status::BadRequest);
}

#[test]
fn other_versions_are_505() {
    for req in [
        &b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"[..],
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        b"GET / HTTP/3\r\nHost: a\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/2",
    ] {
        assert_eq!(status(req), Status::VersionNotSupported, "{req:?}");
    }
    for req in [&b"GET / FTP/1.1\r\n\r\n"[..], b"GET / HTTP/x\r\n\r\n", b"GET / http/1.1\r\n"] {
        assert_eq!(status(req), Status::BadRequest, "{req:?}");
    }
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
        assert_eq!(status(req), Status::BadRequest, "{req:?}");
    }
}

#[test]
fn header_limits_are_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..MAX_HEADERS {
        req.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    assert_eq!(status(&req), Status::HeadersTooLarge);
    let small = Limits { max_header: 100, ..LIMITS };
    let long = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "y".repeat(100));
    assert_eq!(parse_head(long.as_bytes(), &small), Err(Status::HeadersTooLarge));
    // Still incomplete but already too long.
    assert_eq!(parse_head(&long.as_bytes()[..110], &small), Err(Status::HeadersTooLarge));
    let mut f = Framer::default();
    assert!(f.frame(&long.as_bytes()[..30], &small).is_ok());
    assert_eq!(f.frame(&long.as_bytes()[..101], &small), Err(Status::HeadersTooLarge));
}

#[test]
fn body_over_the_limit_is_413() {
    let small = Limits { max_header: 1024, max_body: 4 };
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
    assert_eq!(parse_head(req, &small), Err(Status::ContentTooLarge));
    let req = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n";
    let mut f = Framer::default();
    assert_eq!(f.frame(req, &small), Err(Status::ContentTooLarge));
}

#[test]
fn expect_100_continue_once() {
    let req = b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(frame_bytewise(req), (Some(req.len()), 1));
    // Not when the body came along with the head.
    let mut f = Framer::default();
    assert!(!f.frame(req, &LIMITS).unwrap().send_continue);
    // Chunked: once, however many pieces follow.
    let req = b"PUT /x HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\n\
                Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    assert_eq!(frame_bytewise(req), (Some(req.len()), 1));
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
    assert_eq!(m(b"DELETE / HTTP/1.1\r\nHost: a\r\n\r\n"), Method::Other);
}

#[test]
fn keeps_if_modified_since() {
    let req = b"GET / HTTP/1.1\r\nHost: a\r\nIf-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n";
    let h = head(req).unwrap().unwrap();
    assert_eq!(&req[h.if_modified_since.unwrap()], b"Sun, 06 Nov 1994 08:49:37 GMT");
}
