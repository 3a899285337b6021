//! An HTTP/2 request head from its decoded field list (RFC 9113 §8.2, §8.3): pseudo-headers
//! checked, field names and values checked, connection-specific fields refused; and the same
//! request as an HTTP/1.1 head, so that one code path ([`crate::Request`]) serves both.

use crate::parse::{parse_head, Limits, RequestHead};
use crate::response::Status;

/// A request head received on a stream, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct H2Request {
    pub method: String,
    /// `None` only for CONNECT.
    pub scheme: Option<String>,
    pub authority: Option<String>,
    /// `None` only for CONNECT.
    pub path: Option<String>,
    /// The regular fields, in order, names in lowercase.
    pub fields: Vec<(String, Vec<u8>)>,
}

/// Fields that mean something for one HTTP/1.1 connection only (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&str; 5] = ["connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"];

/// Whether `name` is a valid field name for HTTP/2: a token in lowercase.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// RFC 9113 §8.2.1: no NUL, CR or LF, no whitespace at either end.
fn valid_value(value: &[u8]) -> bool {
    !value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
        && !value.first().is_some_and(|&b| b == b' ' || b == b'\t')
        && !value.last().is_some_and(|&b| b == b' ' || b == b'\t')
}

/// Why a field list is not a request: each is malformed (RFC 9113 §8.1.1), a stream error
/// PROTOCOL_ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// An uppercase or otherwise invalid field name.
    FieldName,
    FieldValue,
    /// A pseudo-header unknown, repeated, after a regular field, or missing.
    PseudoHeader,
    /// `connection`, `transfer-encoding`, `te` other than `trailers`, …
    ConnectionSpecific,
}

impl H2Request {
    /// Checks a decoded field list and makes it a request.
    pub fn from_fields(list: Vec<(Vec<u8>, Vec<u8>)>) -> Result<H2Request, Malformed> {
        let mut method = None;
        let mut scheme = None;
        let mut authority = None;
        let mut path = None;
        let mut fields = Vec::with_capacity(list.len());
        for (name, value) in list {
            if !valid_value(&value) {
                return Err(Malformed::FieldValue);
            }
            if let Some(pseudo) = name.strip_prefix(b":") {
                if !fields.is_empty() {
                    return Err(Malformed::PseudoHeader);
                }
                let slot = match pseudo {
                    b"method" => &mut method,
                    b"scheme" => &mut scheme,
                    b"authority" => &mut authority,
                    b"path" => &mut path,
                    _ => return Err(Malformed::PseudoHeader),
                };
                if slot.is_some() {
                    return Err(Malformed::PseudoHeader);
                }
                *slot = Some(String::from_utf8(value).map_err(|_| Malformed::PseudoHeader)?);
                continue;
            }
            if !valid_name(&name) {
                return Err(Malformed::FieldName);
            }
            // Names are checked to be ASCII just above.
            let name = String::from_utf8(name).map_err(|_| Malformed::FieldName)?;
            if CONNECTION_SPECIFIC.contains(&name.as_str()) || (name == "te" && value != b"trailers") {
                return Err(Malformed::ConnectionSpecific);
            }
            fields.push((name, value));
        }
        let method = method.ok_or(Malformed::PseudoHeader)?;
        let token = |s: &str| !s.is_empty() && valid_name(s.to_ascii_lowercase().as_bytes());
        if !token(&method) {
            return Err(Malformed::PseudoHeader);
        }
        if method == "CONNECT" {
            // §8.5: only :authority (no extended CONNECT).
            if scheme.is_some() || path.is_some() || authority.is_none() {
                return Err(Malformed::PseudoHeader);
            }
        } else {
            let (Some(s), Some(p)) = (&scheme, &path) else { return Err(Malformed::PseudoHeader) };
            let path_ok = p.starts_with('/') || (p == "*" && method == "OPTIONS");
            if s.is_empty() || !path_ok || p.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(Malformed::PseudoHeader);
            }
        }
        if authority.as_deref().is_some_and(|a| a.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'/')) {
            return Err(Malformed::PseudoHeader);
        }
        Ok(H2Request { method, scheme, authority, path, fields })
    }

    /// The first value of field `name` (lowercase).
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, v)| &v[..])
    }

    /// The `content-length` the request declared, when it did and it is a number.
    pub fn content_length(&self) -> Option<u64> {
        std::str::from_utf8(self.field("content-length")?).ok()?.parse().ok()
    }

    /// The same request as an HTTP/1.1 head, parsed and checked by [`parse_head`] like one
    /// received on an HTTP/1.1 connection: `(raw, head)` for [`crate::Request::new`], with
    /// the request's body beside them.
    ///
    /// `:authority` becomes `Host` (unless a `host` field came as well); `cookie` fields split
    /// over several lines are joined with `; ` (RFC 9113 §8.2.3). A request HTTP/1.1 cannot
    /// carry (CONNECT, a target over the limits) is refused with the status that HTTP/1.1 would
    /// answer. [`crate::Request::version`] then says 1.1: the caller knows better.
    pub fn http1_head(&self, limits: &Limits) -> Result<(Vec<u8>, RequestHead), Status> {
        let target = match (&self.path, self.method.as_str()) {
            (Some(p), _) => p.as_str(),
            (None, _) => return Err(Status::NOT_IMPLEMENTED),
        };
        let mut raw = Vec::with_capacity(64 + self.fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>());
        raw.extend_from_slice(self.method.as_bytes());
        raw.push(b' ');
        raw.extend_from_slice(target.as_bytes());
        raw.extend_from_slice(b" HTTP/1.1\r\n");
        let has_host = self.field("host").is_some();
        if let (Some(a), false) = (&self.authority, has_host) {
            raw.extend_from_slice(b"host: ");
            raw.extend_from_slice(a.as_bytes());
            raw.extend_from_slice(b"\r\n");
        }
        let mut cookie_done = false;
        for (name, value) in &self.fields {
            if name == "cookie" {
                if cookie_done {
                    continue;
                }
                cookie_done = true;
                raw.extend_from_slice(b"cookie: ");
                let cookies = self.fields.iter().filter(|(n, _)| n == "cookie").map(|(_, v)| &v[..]);
                for (i, c) in cookies.enumerate() {
                    if i > 0 {
                        raw.extend_from_slice(b"; ");
                    }
                    raw.extend_from_slice(c);
                }
                raw.extend_from_slice(b"\r\n");
                continue;
            }
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(value);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        match parse_head(&raw, limits)? {
            Some(head) => Ok((raw, head)),
            None => Err(Status::BAD_REQUEST),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{Body, Method};
    use crate::Request;

    fn list(fields: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    const GET: [(&str, &str); 4] =
        [(":method", "GET"), (":scheme", "https"), (":authority", "example.com"), (":path", "/a?b=1")];

    #[test]
    fn a_request_becomes_the_http1_request_the_app_knows() {
        let mut fields = GET.to_vec();
        fields.extend([("cookie", "a=1"), ("accept", "*/*"), ("cookie", "b=2"), ("content-length", "2")]);
        let r = H2Request::from_fields(list(&fields)).unwrap();
        assert_eq!(r.content_length(), Some(2));
        let (raw, head) = r.http1_head(&Limits::default()).unwrap();
        assert_eq!(head.body, Body::Length(2));
        let req = Request::new(&head, &raw, b"hi");
        assert_eq!(req.method(), Method::Get);
        assert_eq!(req.path(), "/a");
        assert_eq!(req.query(), Some("b=1"));
        assert_eq!(req.header_str("host"), Some("example.com"));
        assert_eq!(req.header_str("cookie"), Some("a=1; b=2"));
        assert_eq!(req.header_str("accept"), Some("*/*"));
        assert_eq!(req.body(), b"hi");
    }

    #[test]
    fn malformed_requests_are_refused() {
        let with = |extra: &[(&str, &str)]| {
            let mut f = GET.to_vec();
            f.extend_from_slice(extra);
            H2Request::from_fields(list(&f))
        };
        assert_eq!(with(&[("X-Upper", "1")]), Err(Malformed::FieldName));
        assert_eq!(with(&[("bad name", "1")]), Err(Malformed::FieldName));
        assert_eq!(with(&[("x", "a\r\nb")]), Err(Malformed::FieldValue));
        assert_eq!(with(&[("x", " padded")]), Err(Malformed::FieldValue));
        for name in ["connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"] {
            assert_eq!(with(&[(name, "x")]), Err(Malformed::ConnectionSpecific), "{name}");
        }
        assert_eq!(with(&[("te", "gzip")]), Err(Malformed::ConnectionSpecific));
        assert!(with(&[("te", "trailers")]).is_ok());
        // A pseudo-header after a regular field, repeated, unknown, a response one, missing.
        assert_eq!(with(&[("x", "1"), (":path", "/")]), Err(Malformed::PseudoHeader));
        assert_eq!(with(&[(":path", "/again")]), Err(Malformed::PseudoHeader));
        for bad in [
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), (":status", "200")][..],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/"), (":foo", "x")],
            &[(":method", "GET"), (":path", "/")],
            &[(":scheme", "https"), (":path", "/")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "*")],
            &[(":method", "GET"), (":scheme", "https"), (":path", "/a b")],
            &[(":method", "G T"), (":scheme", "https"), (":path", "/")],
            &[(":method", "CONNECT"), (":authority", "a:1"), (":path", "/")],
        ] {
            assert_eq!(H2Request::from_fields(list(bad)), Err(Malformed::PseudoHeader), "{bad:?}");
        }
        let connect = H2Request::from_fields(list(&[(":method", "CONNECT"), (":authority", "a:443")])).unwrap();
        assert_eq!(connect.http1_head(&Limits::default()).unwrap_err(), Status::NOT_IMPLEMENTED);
        let options = H2Request::from_fields(list(&[(":method", "OPTIONS"), (":scheme", "http"), (":path", "*")]));
        assert!(options.is_ok());
    }

    #[test]
    fn http1_limits_apply_to_the_converted_head() {
        let long = format!("/{}", "a".repeat(9000));
        let r = H2Request::from_fields(list(&[(":method", "GET"), (":scheme", "http"), (":path", &long)])).unwrap();
        assert_eq!(r.http1_head(&Limits::default()).unwrap_err(), Status::URI_TOO_LONG);
        // No :authority and no host: HTTP/1.1 requires a Host.
        let r = H2Request::from_fields(list(&[(":method", "GET"), (":scheme", "http"), (":path", "/")])).unwrap();
        assert_eq!(r.http1_head(&Limits::default()).unwrap_err(), Status::BAD_REQUEST);
    }
}
