//! Validators and conditional requests (RFC 9110 §8.8, §13): entity tags, their weak and strong
//! comparison, the order in which the preconditions are evaluated, and `If-Range`.

use http_proto::{Method, Request};

use crate::files::Meta;

/// How entity tags are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtagKind {
    /// `"…"`: usable for ranges (`If-Range`) and `If-Match`.
    #[default]
    Strong,
    /// `W/"…"`: only for `If-None-Match`.
    Weak,
}

/// The entity tag of a file: its size, modification time (nanoseconds included, so two writes
/// within a second differ) and inode (a file replaced by another of the same size and time
/// differs); `suffix` names a representation other than the file as stored (`-gzip`).
pub fn etag(meta: &Meta, kind: EtagKind, suffix: &str) -> String {
    let weak = if kind == EtagKind::Weak { "W/" } else { "" };
    format!("{weak}\"{:x}-{:x}.{:08x}-{:x}{suffix}\"", meta.len, meta.mtime, meta.mtime_nsec, meta.ino)
}

/// What the preconditions decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Go on (ranges, then the response).
    Proceed,
    /// 304.
    NotModified,
    /// 412.
    Failed,
}

/// Evaluates the preconditions in RFC 9110 §13.2.2's order for an existing representation
/// with entity tag `tag` and modification time `modified`, at `now` (seconds since the epoch).
pub fn evaluate(req: &Request<'_>, tag: &str, modified: u64, now: u64) -> Outcome {
    let get_or_head = matches!(req.method(), Method::Get | Method::Head);
    let if_match: Vec<&[u8]> = req.header_all("if-match").collect();
    if !if_match.is_empty() {
        if !if_match.iter().any(|v| list_matches(v, tag, true)) {
            return Outcome::Failed;
        }
    } else if let Some(since) = req.header("if-unmodified-since").and_then(http_proto::response::parse_http_date) {
        if modified > since {
            return Outcome::Failed;
        }
    }
    let if_none_match: Vec<&[u8]> = req.header_all("if-none-match").collect();
    if !if_none_match.is_empty() {
        if if_none_match.iter().any(|v| list_matches(v, tag, false)) {
            return if get_or_head { Outcome::NotModified } else { Outcome::Failed };
        }
    } else if get_or_head {
        let since = req.header("if-modified-since").and_then(http_proto::response::parse_http_date);
        // A date later than the server's clock is not a valid one (RFC 9110 §13.1.3): ignored,
        // or a file changed after the client's clock ran ahead would never be sent again.
        if let Some(since) = since.filter(|&since| since <= now) {
            if modified <= since {
                return Outcome::NotModified;
            }
        }
    }
    Outcome::Proceed
}

/// Whether a `Range` may be honoured under `If-Range` (absent, or naming this representation:
/// the same strong entity tag, or exactly its `Last-Modified` date).
pub fn if_range_holds(req: &Request<'_>, tag: &str, modified: u64) -> bool {
    let Some(value) = req.header("if-range") else {
        return true;
    };
    if value.first() == Some(&b'"') || value.starts_with(b"W/") {
        return !value.starts_with(b"W/") && !tag.starts_with("W/") && value == tag.as_bytes();
    }
    http_proto::response::parse_http_date(value) == Some(modified)
}

/// Whether an `If-Match` / `If-None-Match` value (`*` or a list of entity tags) matches `tag`,
/// by strong comparison (both strong and equal) or weak comparison (equal opaque tags).
pub fn list_matches(value: &[u8], tag: &str, strong: bool) -> bool {
    if value.trim_ascii() == b"*" {
        return true;
    }
    let (tag_weak, tag_opaque) = split_weak(tag.as_bytes());
    entity_tags(value).any(|t| {
        let (weak, opaque) = split_weak(t);
        opaque == tag_opaque && (!strong || (!weak && !tag_weak))
    })
}

fn split_weak(t: &[u8]) -> (bool, &[u8]) {
    match t.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, t),
    }
}

/// The entity tags of a list (`W/"a", "b,c"`): commas inside quotes do not split.
fn entity_tags(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = value;
    std::iter::from_fn(move || loop {
        rest = rest.trim_ascii_start();
        while let Some(r) = rest.strip_prefix(b",") {
            rest = r.trim_ascii_start();
        }
        if rest.is_empty() {
            return None;
        }
        let start = rest;
        let prefix = if rest.starts_with(b"W/") { 2 } else { 0 };
        if rest.get(prefix) != Some(&b'"') {
            // Not an entity tag: skip to the next comma.
            let end = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
            rest = &rest[end..];
            continue;
        }
        let close = rest[prefix + 1..].iter().position(|&b| b == b'"').map(|i| prefix + 1 + i);
        let Some(close) = close else {
            rest = &[];
            return None;
        };
        rest = &rest[close + 1..];
        return Some(&start[..close + 1]);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_proto::{parse_head, Limits};

    const TAG: &str = "\"a-1.0-2\"";
    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    const AT: u64 = 784_111_777;
    /// The server's clock in these tests: a day after `DATE`.
    const NOW: u64 = AT + 86_400;

    fn eval(method: &str, fields: &str, modified: u64) -> Outcome {
        let raw = format!("{method} / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        let head = parse_head(raw.as_bytes(), &Limits::default()).unwrap().unwrap();
        evaluate(&Request::new(&head, raw.as_bytes(), &[]), TAG, modified, NOW)
    }

    fn if_range(fields: &str, tag: &str) -> bool {
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
        let head = parse_head(raw.as_bytes(), &Limits::default()).unwrap().unwrap();
        if_range_holds(&Request::new(&head, raw.as_bytes(), &[]), tag, AT)
    }

    #[test]
    fn etags_differ_by_time_and_inode() {
        let m = Meta { len: 10, mtime: 5, mtime_nsec: 7, ino: 9 };
        assert_eq!(etag(&m, EtagKind::Strong, ""), "\"a-5.00000007-9\"");
        assert_eq!(etag(&m, EtagKind::Weak, "-gzip"), "W/\"a-5.00000007-9-gzip\"");
        assert_ne!(etag(&m, EtagKind::Strong, ""), etag(&Meta { mtime_nsec: 8, ..m }, EtagKind::Strong, ""));
        assert_ne!(etag(&m, EtagKind::Strong, ""), etag(&Meta { ino: 1, ..m }, EtagKind::Strong, ""));
    }

    #[test]
    fn entity_tag_lists() {
        assert!(list_matches(b"*", TAG, true));
        assert!(list_matches(b"\"x\", \"a-1.0-2\"", TAG, true));
        assert!(list_matches(b"W/\"a-1.0-2\"", TAG, false));
        assert!(!list_matches(b"W/\"a-1.0-2\"", TAG, true));
        assert!(!list_matches(b"\"a-1.0-2\"", "W/\"a-1.0-2\"", true));
        assert!(list_matches(b"\"a-1.0-2\"", "W/\"a-1.0-2\"", false));
        assert!(list_matches(b"\"x,y\" ,, junk, \"a-1.0-2\"", TAG, true));
        assert!(!list_matches(b"\"a-1.0-2", TAG, false));
        assert!(!list_matches(b"", TAG, false));
    }

    #[test]
    fn precondition_order() {
        use Outcome::*;
        let inm = |v: &str| format!("If-None-Match: {v}\r\n");
        assert_eq!(eval("GET", "", AT), Proceed);
        assert_eq!(eval("GET", &inm(TAG), AT), NotModified);
        assert_eq!(eval("HEAD", &inm("*"), AT), NotModified);
        assert_eq!(eval("GET", &inm("\"other\""), AT), Proceed);
        // If-None-Match wins over If-Modified-Since.
        let both = format!("{}If-Modified-Since: {DATE}\r\n", inm("\"other\""));
        assert_eq!(eval("GET", &both, AT), Proceed);
        assert_eq!(eval("GET", &format!("If-Modified-Since: {DATE}\r\n"), AT), NotModified);
        assert_eq!(eval("GET", &format!("If-Modified-Since: {DATE}\r\n"), AT + 1), Proceed);
        // An invalid date is ignored.
        assert_eq!(eval("GET", "If-Modified-Since: yesterday\r\n", AT), Proceed);
        // So is a date later than the server's clock (RFC 9110 §13.1.3), even for a file
        // modified before it; the clock's own second is still a valid date.
        let future = String::from_utf8(http_proto::response::format_http_date(NOW + 1).to_vec()).unwrap();
        assert_eq!(eval("GET", &format!("If-Modified-Since: {future}\r\n"), AT), Proceed);
        let now = String::from_utf8(http_proto::response::format_http_date(NOW).to_vec()).unwrap();
        assert_eq!(eval("GET", &format!("If-Modified-Since: {now}\r\n"), AT), NotModified);
        // Lists over several lines.
        assert_eq!(eval("GET", &format!("{}{}", inm("\"x\""), inm(TAG)), AT), NotModified);
        // Not for other methods: 412.
        assert_eq!(eval("POST", &inm("*"), AT), Failed);
        // If-Match and If-Unmodified-Since.
        assert_eq!(eval("GET", &format!("If-Match: {TAG}\r\n"), AT), Proceed);
        assert_eq!(eval("GET", "If-Match: \"other\"\r\n", AT), Failed);
        assert_eq!(eval("GET", &format!("If-Match: W/{TAG}\r\n"), AT), Failed);
        assert_eq!(eval("GET", &format!("If-Unmodified-Since: {DATE}\r\n"), AT + 1), Failed);
        assert_eq!(eval("GET", &format!("If-Unmodified-Since: {DATE}\r\n"), AT), Proceed);
        // If-Match wins over If-Unmodified-Since.
        let both = format!("If-Match: {TAG}\r\nIf-Unmodified-Since: {DATE}\r\n");
        assert_eq!(eval("GET", &both, AT + 1), Proceed);
    }

    #[test]
    fn if_range_rules() {
        assert!(if_range("", TAG));
        assert!(if_range(&format!("If-Range: {TAG}\r\n"), TAG));
        assert!(!if_range("If-Range: \"other\"\r\n", TAG));
        assert!(!if_range(&format!("If-Range: W/{TAG}\r\n"), TAG));
        assert!(!if_range("If-Range: W/\"a\"\r\n", "W/\"a\""));
        assert!(if_range(&format!("If-Range: {DATE}\r\n"), TAG));
        assert!(!if_range("If-Range: Sun, 06 Nov 1994 08:49:38 GMT\r\n", TAG));
        assert!(!if_range("If-Range: garbage\r\n", TAG));
    }
}
