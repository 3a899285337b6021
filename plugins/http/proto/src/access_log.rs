//! Access-log lines in the Common and Combined Log Formats, as nginx writes them:
//!
//! ```text
//! 127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /a.gif HTTP/1.1" 200 2326 "http://x/" "curl/8.5.0"
//! ```
//!
//! `$remote_addr - - [$time_local] "$request" $status $body_bytes_sent` (common), then
//! `"$http_referer" "$http_user_agent"` (combined). The request line, referer and user agent are
//! escaped as nginx does (`"`, `\`, control bytes and bytes above 0x7e as `\xHH`), so a line is
//! always one line and its quoted fields always end where they seem to; an absent value is `-`.
//! Times are UTC. A plugin hands the line to the host (`Host::access_log`), which buffers it and
//! writes it to the service's access log.

use std::io::Write as _;
use std::net::IpAddr;

use crate::response::{civil_from_days, push_u64, MONTHS};

/// Which fields a line has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Common Log Format: no referer, no user agent.
    Common,
    /// Combined Log Format (nginx's default): with referer and user agent.
    #[default]
    Combined,
}

/// What one line says about one response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Entry<'a> {
    /// The client's address (`-` when unknown).
    pub remote: Option<IpAddr>,
    /// The request line as received, without its CRLF (`-` when there was none: a timeout
    /// before a whole line arrived).
    pub request_line: Option<&'a [u8]>,
    pub status: u16,
    /// Bytes of the response body sent (not the head).
    pub body_bytes: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
}

/// The length of a `[10/Oct/2000:13:55:36 +0000]` time.
pub const LOG_TIME_LEN: usize = 28;

/// Formats seconds since the Unix epoch as `[10/Oct/2000:13:55:36 +0000]` (UTC).
pub fn format_log_time(secs: u64) -> [u8; LOG_TIME_LEN] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut t = *b"[01/Jan/1970:00:00:00 +0000]";
    two_digits(&mut t[1..3], day);
    t[4..7].copy_from_slice(MONTHS[(month - 1) as usize]);
    let y = year.min(9999);
    two_digits(&mut t[8..10], y / 100);
    two_digits(&mut t[10..12], y % 100);
    two_digits(&mut t[13..15], rem / 3600);
    two_digits(&mut t[16..18], rem / 60 % 60);
    two_digits(&mut t[19..21], rem % 60);
    t
}

fn two_digits(dst: &mut [u8], n: u64) {
    dst[0] = b'0' + (n / 10 % 10) as u8;
    dst[1] = b'0' + (n % 10) as u8;
}

/// The log time, formatted at most once per second.
#[derive(Debug, Clone)]
pub struct LogTime {
    secs: u64,
    text: [u8; LOG_TIME_LEN],
}

impl Default for LogTime {
    fn default() -> Self {
        LogTime { secs: 0, text: format_log_time(0) }
    }
}

impl LogTime {
    /// The time for `secs` since the Unix epoch (reformatted only when the second changed).
    pub fn at(&mut self, secs: u64) -> &[u8; LOG_TIME_LEN] {
        if secs != self.secs {
            self.secs = secs;
            self.text = format_log_time(secs);
        }
        &self.text
    }
}

/// Appends one line (with its final newline) to `out`.
pub fn write_line(out: &mut Vec<u8>, entry: &Entry<'_>, time: &[u8], format: LogFormat) {
    match entry.remote {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" - - ");
    out.extend_from_slice(time);
    out.push(b' ');
    quoted(out, entry.request_line);
    out.push(b' ');
    push_u64(out, u64::from(entry.status));
    out.push(b' ');
    push_u64(out, entry.body_bytes);
    if format == LogFormat::Combined {
        out.push(b' ');
        quoted(out, entry.referer);
        out.push(b' ');
        quoted(out, entry.user_agent);
    }
    out.push(b'\n');
}

/// `"value"` escaped, or `"-"`.
fn quoted(out: &mut Vec<u8>, value: Option<&[u8]>) {
    out.push(b'"');
    match value {
        Some(v) if !v.is_empty() => escape(out, v),
        _ => out.push(b'-'),
    }
    out.push(b'"');
}

/// Appends `value` with `"`, `\`, control bytes and bytes above 0x7e written as `\xHH` (nginx's
/// `escape=default`).
pub fn escape(out: &mut Vec<u8>, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
            out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            out.push(b);
        }
    }
}

/// The request line of the bytes a request starts with: up to the first CR or LF (all of them
/// when there is none), at most `max` bytes; None when empty.
pub fn request_line(bytes: &[u8], max: usize) -> Option<&[u8]> {
    let end = bytes.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(bytes.len()).min(max);
    Some(&bytes[..end]).filter(|l| !l.is_empty())
}

/// The status code and body length of a response written whole into `response` (head and
/// body; a HEAD response or a streamed one has no body there). None when it does not start
/// with a status line.
pub fn status_and_body(response: &[u8]) -> Option<(u16, u64)> {
    let code = response.get(9..12)?;
    if !response.starts_with(b"HTTP/1.") || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |i| i + 4);
    Some((status, (response.len() - head_end) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(entry: &Entry<'_>, format: LogFormat) -> String {
        let mut out = Vec::new();
        write_line(&mut out, entry, &format_log_time(971_186_136), format);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn formats_combined_and_common() {
        let entry = Entry {
            remote: Some("127.0.0.1".parse().unwrap()),
            request_line: Some(b"GET /apache_pb.gif HTTP/1.0"),
            status: 200,
            body_bytes: 2326,
            referer: Some(b"http://www.example.com/start.html"),
            user_agent: Some(b"Mozilla/4.08 [en] (Win98; I ;Nav)"),
        };
        assert_eq!(
            line(&entry, LogFormat::Combined),
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /apache_pb.gif HTTP/1.0\" 200 2326 \
             \"http://www.example.com/start.html\" \"Mozilla/4.08 [en] (Win98; I ;Nav)\"\n"
        );
        assert_eq!(
            line(&entry, LogFormat::Common),
            "127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] \"GET /apache_pb.gif HTTP/1.0\" 200 2326\n"
        );
    }

    #[test]
    fn absent_values_are_dashes() {
        let entry = Entry { remote: Some("::1".parse().unwrap()), status: 408, ..Entry::default() };
        assert_eq!(line(&entry, LogFormat::Combined), "::1 - - [10/Oct/2000:13:55:36 +0000] \"-\" 408 0 \"-\" \"-\"\n");
        let entry = Entry { referer: Some(b""), ..entry };
        assert!(line(&entry, LogFormat::Combined).ends_with("\"-\" \"-\"\n"), "empty is absent");
        assert!(line(&Entry::default(), LogFormat::Common).starts_with("- - - ["));
    }

    #[test]
    fn quotes_backslashes_and_control_bytes_are_escaped() {
        let entry = Entry {
            request_line: Some(b"GET /a\"b\\c\x1b[31m\x7f\xc3\xa9 HTTP/1.1"),
            user_agent: Some(b"evil\"\n127.0.0.1 - - fake"),
            ..Entry::default()
        };
        let text = line(&entry, LogFormat::Combined);
        assert!(text.contains(r#""GET /a\x22b\x5Cc\x1B[31m\x7F\xC3\xA9 HTTP/1.1""#), "{text}");
        assert!(text.contains(r#""evil\x22\x0A127.0.0.1 - - fake""#), "{text}");
        assert_eq!(text.matches('\n').count(), 1, "one line whatever the client sent");
    }

    #[test]
    fn times_are_utc_in_the_common_form() {
        assert_eq!(&format_log_time(0), b"[01/Jan/1970:00:00:00 +0000]");
        assert_eq!(&format_log_time(951_782_400), b"[29/Feb/2000:00:00:00 +0000]");
        assert_eq!(&format_log_time(1_735_689_599), b"[31/Dec/2024:23:59:59 +0000]");
        let mut t = LogTime::default();
        assert_eq!(t.at(971_186_136), b"[10/Oct/2000:13:55:36 +0000]");
        assert_eq!(t.at(971_186_137), b"[10/Oct/2000:13:55:37 +0000]");
    }

    #[test]
    fn request_lines_and_responses_are_read() {
        assert_eq!(request_line(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 100), Some(&b"GET / HTTP/1.1"[..]));
        assert_eq!(request_line(b"GET /very-long", 8), Some(&b"GET /ver"[..]));
        assert_eq!(request_line(b"\r\n", 8), None);
        assert_eq!(status_and_body(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), Some((200, 5)));
        assert_eq!(status_and_body(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"), Some((304, 0)));
        assert_eq!(status_and_body(b"garbage"), None);
    }
}
