use http_proto::{parse_head, parse_response_head, Limits};

use super::*;

#[test]
fn the_upstream_request_drops_hop_by_hop_fields_and_adds_x_forwarded_for() {
    let raw = b"POST /x HTTP/1.0\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nX-Forwarded-For: 10.0.0.1\r\nContent-Length: 2\r\n\r\nhi";
    let head = parse_head(raw, &Limits::default()).unwrap().unwrap();
    let req = Request::new(&head, &raw[..head.len], &raw[head.len..]);
    let mut out = Vec::new();
    write_request(&req, &raw[head.len..], Some([192, 0, 2, 7].into()), "up:80", &mut out);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "POST /x HTTP/1.1\r\nContent-Length: 2\r\nHost: up:80\r\nX-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n\r\nhi"
    );
}

#[test]
fn the_client_response_drops_hop_by_hop_fields_and_says_close() {
    let raw = b"HTTP/1.0 200 Fine\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX: y\r\nContent-Length: 2\r\n\r\nhi";
    let head = parse_response_head(raw, false, &Limits::default()).unwrap().unwrap();
    let mut out = Vec::new();
    write_response_head(raw, &head, true, &mut out);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "HTTP/1.1 200 Fine\r\nX: y\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    );
    let raw = b"HTTP/1.1 204 \r\n\r\n";
    let head = parse_response_head(raw, false, &Limits::default()).unwrap().unwrap();
    out.clear();
    write_response_head(raw, &head, false, &mut out);
    assert_eq!(String::from_utf8(out).unwrap(), "HTTP/1.1 204 \r\n\r\n");
}

#[test]
fn errors_are_short_text() {
    let mut out = Vec::new();
    write_error(&mut out, Status::GATEWAY_TIMEOUT, true);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 504 Gateway Timeout\r\nContent-Type: text/plain\r\nContent-Length: 16\r\nConnection: close\r\n\r\nGateway Timeout\n"
    );
}
