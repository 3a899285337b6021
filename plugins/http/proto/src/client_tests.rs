use super::*;
use crate::chunked::ChunkError;
use crate::header_fields;

fn parse(raw: &[u8], head_request: bool) -> Result<Option<ResponseHead>, ResponseError> {
    parse_response_head(raw, head_request, &Limits::default())
}

fn head(raw: &str) -> ResponseHead {
    parse(raw.as_bytes(), false).unwrap().unwrap()
}

fn refused(raw: &str) -> ResponseError {
    parse(raw.as_bytes(), false).expect_err(raw)
}

/// Feeds `body` to a scan in pieces of `size`: where the body ended, or `None`.
fn scan_in_pieces(body: ResponseBody, bytes: &[u8], size: usize) -> Result<Option<usize>, ChunkError> {
    let mut scan = BodyScan::new(body);
    let mut pos = 0;
    while pos < bytes.len() {
        let (n, done) = scan.feed(&bytes[pos..(pos + size).min(bytes.len())])?;
        pos += n;
        if done {
            return Ok(Some(pos));
        }
    }
    Ok(None)
}

#[test]
fn a_head_is_parsed_with_its_status_reason_and_fields() {
    let raw = "HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc";
    let h = head(raw);
    assert_eq!((h.len, h.status, h.minor), (raw.len() - 3, 404, 1));
    assert_eq!(&raw[h.reason.clone()], "Not Found");
    assert_eq!((h.body, h.keep_alive), (ResponseBody::Length(3), true));
    let fields: Vec<_> = header_fields(&raw.as_bytes()[..h.len]).collect();
    assert_eq!(fields, [("Content-Length", &b"3"[..]), ("X-A", b"b")]);
    // An empty reason is allowed (RFC 9112 §4).
    let h = head("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n");
    assert!(h.reason.is_empty());
    assert_eq!(h.body, ResponseBody::None);
}

#[test]
fn incomplete_and_oversized_heads() {
    let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
    for end in 0..raw.len() {
        assert_eq!(parse(&raw[..end], false), Ok(None), "{end} bytes");
    }
    let small = Limits { max_header: 20, ..Limits::default() };
    assert_eq!(parse_response_head(raw, false, &small), Err(ResponseError::TooLarge));
    assert_eq!(parse_response_head(&raw[..25], false, &small), Err(ResponseError::TooLarge));
    let few = Limits { max_headers: 1, ..Limits::default() };
    assert_eq!(
        parse_response_head(b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n\r\n", false, &few),
        Err(ResponseError::TooLarge)
    );
}

#[test]
fn bodies_are_delimited_by_method_status_and_fields() {
    let length = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(head(length).body, ResponseBody::Length(3));
    assert_eq!(parse(length.as_bytes(), true).unwrap().unwrap().body, ResponseBody::None, "HEAD");
    for status in ["100 Continue", "103 Early Hints", "204 No Content", "304 Not Modified"] {
        let h = head(&format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n"));
        assert_eq!(h.body, ResponseBody::None, "{status}");
        assert_eq!(h.is_interim(), status.starts_with('1'), "{status}");
    }
    let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!((chunked.body, chunked.keep_alive), (ResponseBody::Chunked, true));
    // A transfer coding under chunked is framed by the chunks (and passed on as it is).
    assert_eq!(head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n").body, ResponseBody::Chunked);
    let close = head("HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!((close.body, close.keep_alive), (ResponseBody::UntilClose, false));
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    let ka = |raw: &str| head(raw).keep_alive;
    assert!(ka("HTTP/1.1 204 No Content\r\n\r\n"));
    assert!(!ka("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"));
    assert!(!ka("HTTP/1.1 204 No Content\r\nConnection: x, Close\r\n\r\n"));
    assert!(!ka("HTTP/1.0 204 No Content\r\n\r\n"));
    assert!(ka("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"));
    assert!(!ka("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"), "a body until the close");
}

#[test]
fn smuggling_shaped_framing_is_refused() {
    use ResponseError::Malformed;
    for raw in [
        // Both framings.
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        // A repeated length, the same value or not, in two fields or in one.
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\n",
        // Lengths that are not 1*DIGIT.
        "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 0x3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        // Chunked not last, twice, or under HTTP/1.0.
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n",
        "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        // Refused even where no body follows: the framing is wrong either way.
        "HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        // Not a response line.
        "HTTP/2.0 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 099 Low\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n",
        // A folded field (obs-fold) and a space before the colon.
        "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length : 3\r\n\r\n",
    ] {
        assert_eq!(refused(raw), Malformed, "{raw:?}");
    }
    // A NUL in a value.
    assert_eq!(parse(b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n", false), Err(Malformed));
}

#[test]
fn a_length_body_is_counted_across_pieces() {
    let body = b"0123456789NEXT";
    for size in 1..=body.len() {
        assert_eq!(scan_in_pieces(ResponseBody::Length(10), body, size), Ok(Some(10)), "pieces of {size}");
    }
    let mut scan = BodyScan::new(ResponseBody::Length(u64::MAX));
    assert_eq!(scan.feed(b"abc"), Ok((3, false)));
    assert!(BodyScan::new(ResponseBody::None).is_done());
    assert!(BodyScan::new(ResponseBody::Length(0)).is_done());
}

#[test]
fn a_chunked_body_is_scanned_across_pieces() {
    let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let end = body.len() - 4;
    for size in 1..=body.len() {
        assert_eq!(scan_in_pieces(ResponseBody::Chunked, body, size), Ok(Some(end)), "pieces of {size}");
    }
    let mut scan = BodyScan::new(ResponseBody::Chunked);
    assert_eq!(scan.feed(&body[..end]), Ok((end, true)));
    assert!(scan.is_done());
    assert_eq!(scan.feed(b"more"), Ok((0, true)), "nothing after the end belongs to it");
}

#[test]
fn bad_chunk_framing_is_refused() {
    for bad in [
        &b"zz\r\n"[..],
        b"\r\n",
        b"-1\r\n",
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5 5\r\nhello\r\n0\r\n\r\n",
        // 17 hex digits overflow 64 bits.
        b"10000000000000000\r\n",
        // Bare LF or bare CR as a line end (lenient scanners disagree about these).
        b"5\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\n0\r\n\r\n",
        b"5\rhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\n",
        // Data longer than its size.
        b"5\r\nhello!\r\n0\r\n\r\n",
    ] {
        let res = scan_in_pieces(ResponseBody::Chunked, bad, bad.len());
        assert_eq!(res, Err(ChunkError::Malformed), "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn until_close_takes_everything() {
    let mut scan = BodyScan::new(ResponseBody::UntilClose);
    assert_eq!(scan.feed(b"HTTP/1.1 200 OK\r\n\r\n"), Ok((19, false)));
    assert!(!scan.is_done());
}
