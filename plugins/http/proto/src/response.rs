//! Writing responses into a reused buffer, the low-level layer under [`crate::ResponseWriter`]:
//! status lines, the headers every response carries (`Server`, `Date`, `Content-Length` or
//! chunked, `Connection`), decimal numbers without allocating, and HTTP dates (IMF-fixdate) both
//! ways, with the `Date` value cached per second.

use std::time::{SystemTime, UNIX_EPOCH};

/// The interim response sent for `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A response status code (RFC 9110 §15), with the reason phrase of the registered ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(u16);

macro_rules! statuses {
    ($($name:ident = $code:literal $reason:literal,)*) => {
        impl Status {
            $(pub const $name: Status = Status($code);)*

            /// The registered reason phrase; empty for other codes (a status line may have an
            /// empty reason, RFC 9112 §4).
            pub fn reason(self) -> &'static str {
                match self.0 {
                    $($code => $reason,)*
                    _ => "",
                }
            }
        }
    };
}

statuses! {
    CONTINUE = 100 "Continue",
    OK = 200 "OK",
    CREATED = 201 "Created",
    ACCEPTED = 202 "Accepted",
    NO_CONTENT = 204 "No Content",
    PARTIAL_CONTENT = 206 "Partial Content",
    MOVED_PERMANENTLY = 301 "Moved Permanently",
    FOUND = 302 "Found",
    SEE_OTHER = 303 "See Other",
    NOT_MODIFIED = 304 "Not Modified",
    TEMPORARY_REDIRECT = 307 "Temporary Redirect",
    PERMANENT_REDIRECT = 308 "Permanent Redirect",
    BAD_REQUEST = 400 "Bad Request",
    UNAUTHORIZED = 401 "Unauthorized",
    FORBIDDEN = 403 "Forbidden",
    NOT_FOUND = 404 "Not Found",
    METHOD_NOT_ALLOWED = 405 "Method Not Allowed",
    NOT_ACCEPTABLE = 406 "Not Acceptable",
    REQUEST_TIMEOUT = 408 "Request Timeout",
    CONFLICT = 409 "Conflict",
    GONE = 410 "Gone",
    LENGTH_REQUIRED = 411 "Length Required",
    PRECONDITION_FAILED = 412 "Precondition Failed",
    CONTENT_TOO_LARGE = 413 "Content Too Large",
    URI_TOO_LONG = 414 "URI Too Long",
    UNSUPPORTED_MEDIA_TYPE = 415 "Unsupported Media Type",
    RANGE_NOT_SATISFIABLE = 416 "Range Not Satisfiable",
    EXPECTATION_FAILED = 417 "Expectation Failed",
    UNPROCESSABLE_CONTENT = 422 "Unprocessable Content",
    TOO_MANY_REQUESTS = 429 "Too Many Requests",
    HEADERS_TOO_LARGE = 431 "Request Header Fields Too Large",
    INTERNAL_ERROR = 500 "Internal Server Error",
    NOT_IMPLEMENTED = 501 "Not Implemented",
    BAD_GATEWAY = 502 "Bad Gateway",
    SERVICE_UNAVAILABLE = 503 "Service Unavailable",
    GATEWAY_TIMEOUT = 504 "Gateway Timeout",
    VERSION_NOT_SUPPORTED = 505 "HTTP Version Not Supported",
}

impl Status {
    /// Any code from 100 to 999 (a status line has three digits); `None` otherwise.
    pub const fn new(code: u16) -> Option<Status> {
        match code {
            100..=999 => Some(Status(code)),
            _ => None,
        }
    }

    pub fn code(self) -> u16 {
        self.0
    }

    /// 1xx, 204 and 304 responses never have a body (RFC 9110 §6.4.1).
    pub fn has_body(self) -> bool {
        !(self.0 < 200 || self.0 == 204 || self.0 == 304)
    }
}

/// What the response says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// HTTP/1.1 keep-alive: the default, no header needed.
    KeepAlive,
    /// HTTP/1.0 keep-alive: `Connection: keep-alive`.
    KeepAlive10,
    /// `Connection: close`; the connection closes after this response.
    Close,
}

/// Starts a response: status line, `Server` and `Date`.
pub fn begin(out: &mut Vec<u8>, status: Status, date: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status.code()));
    out.push(b' ');
    out.extend_from_slice(status.reason().as_bytes());
    out.extend_from_slice(b"\r\nServer: host\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
}

pub fn header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `Content-Length`, the `Connection` header when one is needed, and the blank line that
/// ends the head.
pub fn finish(out: &mut Vec<u8>, content_length: u64, persist: Persist) {
    out.extend_from_slice(b"Content-Length: ");
    push_u64(out, content_length);
    out.extend_from_slice(match persist {
        Persist::KeepAlive => b"\r\n\r\n".as_slice(),
        Persist::KeepAlive10 => b"\r\nConnection: keep-alive\r\n\r\n",
        Persist::Close => b"\r\nConnection: close\r\n\r\n",
    });
}

/// Writes the head's end for a response without a body and without `Content-Length` (304).
pub fn finish_bodiless(out: &mut Vec<u8>, persist: Persist) {
    out.extend_from_slice(match persist {
        Persist::KeepAlive => b"\r\n".as_slice(),
        Persist::KeepAlive10 => b"Connection: keep-alive\r\n\r\n",
        Persist::Close => b"Connection: close\r\n\r\n",
    });
}

/// Writes `Transfer-Encoding: chunked`, the `Connection` header when needed, and the blank line;
/// the body follows as [`push_chunk`]s and ends with [`LAST_CHUNK`].
pub fn finish_chunked(out: &mut Vec<u8>, persist: Persist) {
    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    finish_bodiless(out, persist);
}

/// The end of a chunked body (no trailer fields).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends `data` as one chunk (nothing for empty data: an empty chunk would end the body).
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A complete short response whose body is the reason phrase (used for errors), with `extra`
/// header fields (e.g. `Allow` for 405).
pub fn write_error(
    out: &mut Vec<u8>,
    status: Status,
    date: &[u8],
    persist: Persist,
    head: bool,
    extra: &[(&str, &[u8])],
) {
    let reason = status.reason().as_bytes();
    begin(out, status, date);
    for (name, value) in extra {
        header(out, name, value);
    }
    header(out, "Content-Type", b"text/plain; charset=utf-8");
    finish(out, reason.len() as u64 + 1, persist);
    if !head {
        out.extend_from_slice(reason);
        out.push(b'\n');
    }
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Length of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub const DATE_LEN: usize = 29;

/// The current date, formatted at most once per second.
///
/// The host's clock (`now_ms`) is monotonic, so it cannot give the wall-clock date; it is only
/// used to skip even the `SystemTime` read when nothing has moved since the last response (one
/// loop turn answers many pipelined requests).
#[derive(Debug, Clone)]
pub struct DateCache {
    last_ms: Option<u64>,
    secs: u64,
    text: [u8; DATE_LEN],
}

impl Default for DateCache {
    fn default() -> Self {
        let secs = unix_now();
        DateCache { last_ms: None, secs, text: format_http_date(secs) }
    }
}

impl DateCache {
    /// Brings the date up to date; `now_ms` is the host's monotonic loop-turn clock.
    pub fn update(&mut self, now_ms: u64) {
        if self.last_ms == Some(now_ms) {
            return;
        }
        self.last_ms = Some(now_ms);
        let secs = unix_now();
        if secs != self.secs {
            self.secs = secs;
            self.text = format_http_date(secs);
        }
    }

    pub fn get(&self) -> &[u8] {
        &self.text
    }

    /// The wall-clock second of the date (seconds since the Unix epoch), for an access log.
    pub fn secs(&self) -> u64 {
        self.secs
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

const DAYS: [&[u8; 3]; 7] = [b"Sun", b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat"];
pub(crate) const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// Formats seconds since the Unix epoch as an IMF-fixdate (RFC 9110 §5.6.7).
pub fn format_http_date(secs: u64) -> [u8; DATE_LEN] {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut t = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    t[..3].copy_from_slice(DAYS[((days + 4) % 7) as usize]);
    two_digits(&mut t[5..7], day);
    t[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    let y = year.min(9999);
    two_digits(&mut t[12..14], y / 100);
    two_digits(&mut t[14..16], y % 100);
    two_digits(&mut t[17..19], rem / 3600);
    two_digits(&mut t[20..22], rem / 60 % 60);
    two_digits(&mut t[23..25], rem % 60);
    t
}

fn two_digits(dst: &mut [u8], n: u64) {
    dst[0] = b'0' + (n / 10 % 10) as u8;
    dst[1] = b'0' + (n % 10) as u8;
}

/// Parses an IMF-fixdate into seconds since the Unix epoch. The two obsolete formats (RFC 850,
/// asctime) are not accepted: a conditional request with one is answered unconditionally.
pub fn parse_http_date(s: &[u8]) -> Option<u64> {
    if s.len() != DATE_LEN
        || &s[3..5] != b", "
        || s[7] != b' '
        || s[11] != b' '
        || s[16] != b' '
        || s[19] != b':'
        || s[22] != b':'
        || &s[25..] != b" GMT"
        || !DAYS.iter().any(|d| &s[..3] == d.as_slice())
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        s[r].iter().try_fold(0u64, |acc, &b| b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0')))
    };
    let day = num(5..7)?;
    let month = MONTHS.iter().position(|m| &s[8..11] == m.as_slice())? as u64 + 1;
    let year = num(12..16)?;
    let (h, m, sec) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if year < 1970 || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date in or after 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn formats_known_dates() {
        assert_eq!(s(&format_http_date(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(s(&format_http_date(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(s(&format_http_date(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(s(&format_http_date(4_102_444_799)), "Thu, 31 Dec 2099 23:59:59 GMT");
    }

    #[test]
    fn parses_what_it_formats() {
        for secs in (0..5_000_000_000u64).step_by(7_777_777) {
            assert_eq!(parse_http_date(&format_http_date(secs)), Some(secs));
        }
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
    }

    #[test]
    fn rejects_other_date_forms() {
        for bad in [
            &b"Sunday, 06-Nov-94 08:49:37 GMT"[..],
            b"Sun Nov  6 08:49:37 1994",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Sun, 0x Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 25:49:37 GMT",
            b"",
        ] {
            assert_eq!(parse_http_date(bad), None, "{}", s(bad));
        }
    }

    #[test]
    fn writes_numbers() {
        let mut v = Vec::new();
        for n in [0u64, 7, 10, 13, 999, 1_000_000, u64::MAX] {
            v.clear();
            push_u64(&mut v, n);
            assert_eq!(s(&v), n.to_string());
        }
    }

    #[test]
    fn writes_a_head() {
        let mut v = Vec::new();
        begin(&mut v, Status::OK, b"D");
        header(&mut v, "Content-Type", b"text/plain");
        finish(&mut v, 13, Persist::KeepAlive10);
        assert_eq!(
            s(&v),
            "HTTP/1.1 200 OK\r\nServer: host\r\nDate: D\r\nContent-Type: text/plain\r\n\
             Content-Length: 13\r\nConnection: keep-alive\r\n\r\n"
        );
        v.clear();
        write_error(&mut v, Status::METHOD_NOT_ALLOWED, b"D", Persist::Close, false, &[("Allow", b"GET, HEAD")]);
        assert_eq!(
            s(&v),
            "HTTP/1.1 405 Method Not Allowed\r\nServer: host\r\nDate: D\r\nAllow: GET, HEAD\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 19\r\n\
             Connection: close\r\n\r\nMethod Not Allowed\n"
        );
    }

    #[test]
    fn date_cache_is_current() {
        let mut d = DateCache::default();
        d.update(1);
        let now = unix_now();
        let parsed = parse_http_date(d.get()).unwrap();
        assert!(parsed + 2 >= now && parsed <= now, "{parsed} vs {now}");
    }
}
