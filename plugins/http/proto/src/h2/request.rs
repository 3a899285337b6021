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

/// The bytes of a token (RFC 9110 §5.6.2): `TOKEN[b]` is 1 for a lowercase one, 2 for an
/// uppercase letter, 0 for any other byte. One lookup per byte of each field name.
const TOKEN: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            t[b] = 1;
        } else if c.is_ascii_uppercase() {
            t[b] = 2;
        }
        b += 1;
    }
    let extra = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = 1;
        i += 1;
    }
    t
};

/// Whether `name` is a valid field name for HTTP/2: a token in lowercase.
fn valid_name(name: &[u8]) -> bool {
    !name.is_empty() && name.iter().all(|&b| TOKEN[b as usize] == 1)
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

/// Builds an [`H2Request`] field by field as the HPACK decoder hands them over, so no decoded
/// field list is kept: each value is copied once, into the request. The first problem found is
/// the one [`RequestBuilder::finish`] reports (in the order [`H2Request::from_fields`] checks).
#[derive(Debug, Default)]
pub struct RequestBuilder {
    method: Option<String>,
    scheme: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    fields: Vec<(String, Vec<u8>)>,
    /// A pseudo-header came (a trailer section must have none).
    any_pseudo: bool,
    error: Option<Malformed>,
}

/// Whether `s` is a token (RFC 9110 §5.6.2), in any case.
fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| TOKEN[b as usize] != 0)
}

impl RequestBuilder {
    /// The next field of the list.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        self.any_pseudo |= name.starts_with(b":");
        if self.error.is_none() {
            if let Err(e) = self.check_push(name, value) {
                self.error = Some(e);
            }
        }
    }

    fn check_push(&mut self, name: &[u8], value: &[u8]) -> Result<(), Malformed> {
        if !valid_value(value) {
            return Err(Malformed::FieldValue);
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if !self.fields.is_empty() {
                return Err(Malformed::PseudoHeader);
            }
            let slot = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => return Err(Malformed::PseudoHeader),
            };
            if slot.is_some() {
                return Err(Malformed::PseudoHeader);
            }
            *slot = Some(String::from_utf8(value.to_vec()).map_err(|_| Malformed::PseudoHeader)?);
            return Ok(());
        }
        if !valid_name(name) {
            return Err(Malformed::FieldName);
        }
        if CONNECTION_SPECIFIC.iter().any(|c| c.as_bytes() == name) || (name == b"te" && value != b"trailers") {
            return Err(Malformed::ConnectionSpecific);
        }
        if self.fields.capacity() == 0 {
            self.fields.reserve(8);
        }
        // Names are checked to be ASCII just above.
        let name = String::from_utf8(name.to_vec()).map_err(|_| Malformed::FieldName)?;
        self.fields.push((name, value.to_vec()));
        Ok(())
    }

    /// Whether a pseudo-header came: a trailer section with one is malformed.
    pub fn has_pseudo(&self) -> bool {
        self.any_pseudo
    }

    /// The request, or why the list is not one.
    pub fn finish(self) -> Result<H2Request, Malformed> {
        let RequestBuilder { method, scheme, authority, path, fields, error, .. } = self;
        if let Some(e) = error {
            return Err(e);
        }
        let method = method.ok_or(Malformed::PseudoHeader)?;
        if !is_token(method.as_bytes()) {
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
}

impl H2Request {
    /// Checks a decoded field list and makes it a request.
    pub fn from_fields(list: Vec<(Vec<u8>, Vec<u8>)>) -> Result<H2Request, Malformed> {
        let mut builder = RequestBuilder::default();
        for (name, value) in &list {
            builder.push(name, value);
        }
        builder.finish()
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
        let mut raw = Vec::new();
        let head = self.http1_head_into(limits, &mut raw)?;
        Ok((raw, head))
    }

    /// [`H2Request::http1_head`] into a buffer of the caller's (cleared first, reused: no
    /// allocation per request once it has grown).
    pub fn http1_head_into(&self, limits: &Limits, raw: &mut Vec<u8>) -> Result<RequestHead, Status> {
        raw.clear();
        let target = match (&self.path, self.method.as_str()) {
            (Some(p), _) => p.as_str(),
            (None, _) => return Err(Status::NOT_IMPLEMENTED),
        };
        raw.reserve(64 + self.fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>());
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
        match parse_head(raw, limits)? {
            Some(head) => Ok(head),
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
