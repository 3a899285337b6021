use super::*;

#[test]
fn requests_end_where_their_framing_says() {
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(request_len(get, 1024), Ok(Some(get.len())));
    assert_eq!(request_len(&get[..10], 1024), Ok(None));
    let post = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(request_len(&post[..post.len() - 2], 1024), Ok(Some(post.len())), "known before it is all here");
    let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    assert_eq!(request_len(chunked, 1024), Ok(Some(chunked.len())));
    assert_eq!(request_len(&chunked[..chunked.len() - 1], 1024), Ok(None));
    let both = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(request_len(both, 1024), Err(Malformed::Bad), "smuggling-shaped framing is refused");
    assert_eq!(request_len(b"GET / HTTP/1.1\r\nX: y\r\n", 8), Err(Malformed::TooLarge));
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    let ka = |raw: &[u8]| parse_request(raw, 1024).unwrap().unwrap().keep_alive;
    assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
    assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
    assert!(ka(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
}

#[test]
fn the_upstream_request_drops_hop_by_hop_fields_and_adds_x_forwarded_for() {
    let raw = b"POST /x HTTP/1.0\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 2\r\n\r\nhi";
    let req = parse_request(raw, 1024).unwrap().unwrap();
    let mut out = Vec::new();
    write_request(raw, &req, Some([192, 0, 2, 7].into()), "up:80", &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /x HTTP/1.1\r\nContent-Length: 2\r\nHost: up:80\r\nX-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n\r\nhi"
    );
}

#[test]
fn response_bodies_are_delimited_by_status_method_and_fields() {
    let body = |raw: &[u8], head| parse_response(raw, head, 1024).unwrap().unwrap().body;
    assert_eq!(body(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false), Body::Length(3));
    assert_eq!(body(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true), Body::None);
    assert_eq!(body(b"HTTP/1.1 204 No Content\r\n\r\n", false), Body::None);
    assert_eq!(body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false), Body::Chunked);
    let close = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", false, 1024).unwrap().unwrap();
    assert_eq!((close.body, close.keep_alive), (Body::UntilClose, false));
    let mut out = Vec::new();
    write_response_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nX: y\r\n\r\n", true, &mut out);
    assert_eq!(String::from_utf8(out).unwrap(), "HTTP/1.1 200 OK\r\nX: y\r\nConnection: close\r\n\r\n");
}

#[test]
fn a_chunked_body_is_scanned_across_pieces() {
    let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let end = body.len() - 4;
    for split in 0..=end {
        let mut scan = Chunked::default();
        let (a, done_a) = scan.advance(&body[..split]).unwrap();
        assert_eq!((a, done_a), (split, split == end));
        let (b, done) = scan.advance(&body[split..]).unwrap();
        assert!(done, "split at {split}");
        assert_eq!(a + b, end, "split at {split}");
    }
    assert_eq!(Chunked::default().advance(b"zz\r\n"), Err(Malformed::Bad));
    assert_eq!(Chunked::default().advance(b"\r\n"), Err(Malformed::Bad));
}
