//! A complete request as an application sees it: a view over the received bytes (no copy).

use crate::parse::{Method, RequestHead};

/// One request: method, target, version, header fields and the (decoded) body.
///
/// Header values are the bytes as received, with surrounding whitespace trimmed; names compare
/// case-insensitively. The head was validated by [`crate::parse_head`] (RFC 9112 syntax, one
/// `Host`, unambiguous framing), so these accessors cannot fail.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    head: &'a RequestHead,
    raw: &'a [u8],
    body: &'a [u8],
}

impl<'a> Request<'a> {
    /// `raw` is the head's bytes (the ranges of `head` are offsets into it), `body` the body.
    pub fn new(head: &'a RequestHead, raw: &'a [u8], body: &'a [u8]) -> Self {
        Request { head, raw, body }
    }

    /// The parsed head (framing, keep-alive, byte ranges into [`Request::raw_head`]).
    pub fn head(&self) -> &'a RequestHead {
        self.head
    }

    /// The head as received, final CRLF included.
    pub fn raw_head(&self) -> &'a [u8] {
        self.raw
    }

    pub fn method(&self) -> Method {
        self.head.method
    }

    /// The method token as sent (`GET`, or an extension method).
    pub fn method_name(&self) -> &'a str {
        str_of(&self.raw[self.head.method_name.clone()])
    }

    /// The request target as sent: origin form (`/a?b`), absolute form, `*` or authority form.
    pub fn target(&self) -> &'a str {
        str_of(&self.raw[self.head.target.clone()])
    }

    /// The target's path, still percent-encoded (`/` for an absolute-form target without one).
    pub fn path(&self) -> &'a str {
        str_of(self.path_bytes())
    }

    /// [`Request::target`] as bytes, not checked again for UTF-8 (the parser did): what the
    /// per-request route checks compare.
    pub fn target_bytes(&self) -> &'a [u8] {
        &self.raw[self.head.target.clone()]
    }

    /// [`Request::path`] as bytes, not checked again for UTF-8.
    pub fn path_bytes(&self) -> &'a [u8] {
        request_path(self.target_bytes())
    }

    /// The target's query, without the `?`, when it has one.
    pub fn query(&self) -> Option<&'a str> {
        let t = self.target();
        let q = &t[t.find('?')? + 1..];
        Some(&q[..q.find('#').unwrap_or(q.len())])
    }

    /// The value of query parameter `name` (`a=1&b=2`), percent-decoded (`+` is a space).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k) == name).then(|| percent_decode(v))
        })
    }

    /// `(1, 0)` or `(1, 1)`.
    pub fn version(&self) -> (u8, u8) {
        (1, self.head.minor)
    }

    /// Whether the client wants the connection kept open after this request.
    pub fn keep_alive(&self) -> bool {
        self.head.keep_alive
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// The first value of header `name`, when it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of header `name`, in order (a list split over several lines).
    pub fn header_all<'n>(&self, name: &'n str) -> impl Iterator<Item = &'a [u8]> + 'n
    where
        'a: 'n,
    {
        self.headers().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Every header field, in order: `(name, value)`.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> {
        header_fields(self.raw)
    }

    /// The body, decoded from chunked coding when it was sent so.
    pub fn body(&self) -> &'a [u8] {
        self.body
    }
}

/// The header fields of a head that [`crate::parse_head`] or
/// [`crate::client::parse_response_head`] accepted (the first line skipped), in order:
/// `(name, value)`, values trimmed.
pub fn header_fields(raw: &[u8]) -> impl Iterator<Item = (&str, &[u8])> {
    let start = raw.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(raw.len());
    raw[start..]
        .split(|&b| b == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some((str_of(&line[..colon]), line[colon + 1..].trim_ascii()))
        })
}

fn str_of(b: &[u8]) -> &str {
    // httparse admits only visible ASCII in methods, targets and header names.
    std::str::from_utf8(b).unwrap_or_default()
}

/// Percent-decodes a query component (`+` is a space); invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|&h| (h as char).to_digit(16));
        match b[i] {
            b'%' => match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) => {
                    out.push((hi * 16 + lo) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path of a request target: the query and fragment dropped, and for the absolute form
/// (`http://host/path`, RFC 9112 §3.2.2) the scheme and authority too.
pub fn request_path(target: &[u8]) -> &[u8] {
    let has_prefix = |p: &[u8]| target.len() >= p.len() && target[..p.len()].eq_ignore_ascii_case(p);
    let skip = if target.first() == Some(&b'/') {
        0
    } else if has_prefix(b"http://") {
        7
    } else if has_prefix(b"https://") {
        8
    } else {
        0
    };
    let mut t = target;
    if skip > 0 {
        let rest = &target[skip..];
        t = match rest.iter().position(|&b| b == b'/' || b == b'?' || b == b'#') {
            Some(i) if rest[i] == b'/' => &rest[i..],
            _ => return b"/",
        };
    }
    let end = t.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(t.len());
    &t[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{parse_head, Limits};

    #[test]
    fn a_view_over_the_request() {
        let raw =
            b"\r\nPOST /sum?x=1&name=a%20b+c HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-a:  2 \r\nContent-Length: 2\r\n\r\n";
        let head = parse_head(raw, &Limits::default()).unwrap().unwrap();
        let r = Request::new(&head, raw, b"[]");
        assert_eq!(r.method(), Method::Post);
        assert_eq!(r.method_name(), "POST");
        assert_eq!(r.target(), "/sum?x=1&name=a%20b+c");
        assert_eq!(r.path(), "/sum");
        assert_eq!(r.target_bytes(), b"/sum?x=1&name=a%20b+c");
        assert_eq!(r.path_bytes(), b"/sum");
        assert_eq!(r.query(), Some("x=1&name=a%20b+c"));
        assert_eq!(r.query_param("name").as_deref(), Some("a b c"));
        assert_eq!(r.query_param("nope"), None);
        assert_eq!(r.header("x-a"), Some(&b"1"[..]));
        assert_eq!(r.header_all("X-A").collect::<Vec<_>>(), [&b"1"[..], b"2"]);
        assert_eq!(r.headers().count(), 4);
        assert_eq!(r.version(), (1, 1));
        assert!(r.keep_alive());
        assert_eq!(r.body(), b"[]");
    }

    #[test]
    fn request_paths() {
        for (target, path) in [
            ("/a/b?c=d", "/a/b"),
            ("/a#frag", "/a"),
            ("http://h/x/y?q", "/x/y"),
            ("HTTPS://h:8/x", "/x"),
            ("http://h", "/"),
            ("http://h?q", "/"),
            ("*", "*"),
        ] {
            assert_eq!(request_path(target.as_bytes()), path.as_bytes(), "{target}");
        }
    }
}
