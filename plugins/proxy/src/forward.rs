//! The heads the proxy writes for the other side: requests for the upstream and responses for
//! the client, from heads `http_proto` parsed and checked (the proxy has no HTTP parser of its
//! own: one set of framing rules for both sides, see `http_proto::client`). Hop-by-hop fields
//! are dropped, `X-Forwarded-For` is appended, `Connection: close` is added when closing.

use http_proto::{header_fields, Request, ResponseHead, Status};

/// The fields that concern one connection only (RFC 9110 §7.6.1), never forwarded.
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Writes `req` (its head, then `body` as received) for the upstream: HTTP/1.1, hop-by-hop
/// fields dropped, `X-Forwarded-For` extended with `client`, a `Host` when the client sent none
/// (HTTP/1.0).
pub fn write_request(
    req: &Request<'_>,
    body: &[u8],
    client: Option<std::net::IpAddr>,
    upstream: &str,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(req.method_name().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let raw = req.raw_head();
    let nominated = nominated(raw);
    let (mut forwarded, mut host) = (None, false);
    for (name, value) in header_fields(raw) {
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded = Some(value);
            continue;
        }
        host |= name.eq_ignore_ascii_case("host");
        if !hop_by_hop(name) && !nominated.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            header(out, name, value);
        }
    }
    if !host {
        header(out, "Host", upstream.as_bytes());
    }
    if let Some(ip) = client {
        out.extend_from_slice(b"X-Forwarded-For: ");
        if let Some(prev) = forwarded.filter(|v| !v.is_empty()) {
            out.extend_from_slice(prev);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(ip.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// The fields a `Connection` header names: hop-by-hop as well.
fn nominated(raw: &[u8]) -> Vec<&str> {
    header_fields(raw)
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .filter_map(|(_, value)| std::str::from_utf8(value).ok())
        .flat_map(|v| v.split(',').map(str::trim))
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
        .collect()
}

fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the response head `raw` (as `head` describes it) for the client: HTTP/1.1, hop-by-hop
/// fields dropped, `Connection: close` when the proxy closes the client after it.
pub fn write_response_head(raw: &[u8], head: &ResponseHead, close: bool, out: &mut Vec<u8>) {
    let raw = &raw[..head.len];
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(&raw[head.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    let nominated = nominated(raw);
    for (name, value) in header_fields(raw) {
        if !hop_by_hop(name) && !nominated.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            header(out, name, value);
        }
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A response the proxy makes itself (400, 502, 504…): a short text body.
pub fn write_error(out: &mut Vec<u8>, status: Status, close: bool) {
    let reason = status.reason();
    let body = format!("{reason}\n");
    out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\nContent-Type: text/plain\r\n", status.code()).as_bytes());
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
