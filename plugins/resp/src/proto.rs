//! The request side of RESP: framing one command in the connection's buffer (the `input` step),
//! and splitting a framed command into its arguments. Both follow redis-server 7's
//! `processMultibulkBuffer` / `processInlineBuffer`, error texts included.
//!
//! A request starting with `*` is a multibulk command (`*<count>\r\n` then `count` bulk strings
//! `$<len>\r\n<bytes>\r\n`); anything else is an inline command (one line, arguments separated by
//! spaces, with Redis' quoting rules).

use std::ops::Range;

/// The longest line Redis waits for without its end: an inline command, or the `*<count>` /
/// `$<len>` header of a multibulk one (`PROTO_INLINE_MAX_SIZE`).
pub const INLINE_MAX: usize = 64 * 1024;
/// The largest bulk string Redis accepts by default (`proto-max-bulk-len`).
pub const BULK_MAX: usize = 512 * 1024 * 1024;
/// The largest multibulk count Redis accepts (`INT_MAX`).
pub const MULTIBULK_MAX: i64 = i32::MAX as i64;
/// The fewest bytes one argument of a multibulk command takes (`$0\r\n\r\n`).
const MIN_ARG_LEN: u64 = 6;

/// A request that can never become a valid command. Redis answers it, then closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolError {
    /// A `*<count>` that is not an integer, is over [`MULTIBULK_MAX`], or whose arguments could
    /// not fit in the service's max package size.
    InvalidMultibulkLength,
    /// A `$<len>` that is not an integer, is negative, over [`BULK_MAX`], or past the max package
    /// size.
    InvalidBulkLength,
    /// A multibulk argument that does not start with `$`: the byte found instead.
    ExpectedDollar(u8),
    /// A `*<count>` line longer than [`INLINE_MAX`] (or the max package size) without its end.
    TooBigMultibulkCount,
    /// A `$<len>` line longer than [`INLINE_MAX`] (or the max package size) without its end.
    TooBigBulkCount,
    /// An inline command longer than [`INLINE_MAX`] without its end, or longer than the max
    /// package size.
    TooBigInline,
    /// An inline command with an unclosed quote (or a closing quote followed by a non-space).
    UnbalancedQuotes,
}

impl ProtocolError {
    /// The error reply, as redis-server writes it: `-ERR Protocol error: …\r\n`.
    pub fn write_reply(self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"-ERR Protocol error: ");
        match self {
            ProtocolError::InvalidMultibulkLength => out.extend_from_slice(b"invalid multibulk length"),
            ProtocolError::InvalidBulkLength => out.extend_from_slice(b"invalid bulk length"),
            ProtocolError::ExpectedDollar(got) => {
                out.extend_from_slice(b"expected '$', got '");
                // Redis replaces line breaks in error texts by spaces.
                out.push(if got == b'\r' || got == b'\n' { b' ' } else { got });
                out.push(b'\'');
            }
            ProtocolError::TooBigMultibulkCount => out.extend_from_slice(b"too big mbulk count string"),
            ProtocolError::TooBigBulkCount => out.extend_from_slice(b"too big bulk count string"),
            ProtocolError::TooBigInline => out.extend_from_slice(b"too big inline request"),
            ProtocolError::UnbalancedQuotes => out.extend_from_slice(b"unbalanced quotes in request"),
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// What the framing step found at the start of a connection's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed {
    /// Not a whole command yet.
    NeedMore,
    /// The command is this many bytes long. It may be longer than what is buffered when only the
    /// last argument's bytes are missing: its length is known, so the host can wait for exactly
    /// that many bytes without asking again.
    Complete(usize),
    /// Never a valid command: answer the error and close.
    Error(ProtocolError),
}

/// How far [`frame_command`] got through a multibulk command still incomplete, so the next call
/// (the same bytes and more) goes on from there instead of scanning every argument again.
/// Reset it (`Default`) once a command was framed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Arguments whose bytes are all buffered.
    args_done: u32,
    /// The offset just past them (0: nothing parsed yet, not even the count).
    pos: usize,
    /// The command's argument count, once parsed.
    count: u32,
}

/// Frames the command at the start of `buf`, refusing any that could not fit in `max` bytes (the
/// service's max package size), so the host is never asked to buffer more than that.
pub fn frame_command(buf: &[u8], max: usize, progress: &mut Progress) -> Framed {
    match buf.first() {
        None => Framed::NeedMore,
        Some(b'*') => frame_multibulk(buf, max, progress),
        Some(_) => match memchr::memchr(b'\n', buf) {
            // Over the max package size, the host would cut the connection without a reply.
            Some(nl) if nl >= max => Framed::Error(ProtocolError::TooBigInline),
            Some(nl) => Framed::Complete(nl + 1),
            None if buf.len() > INLINE_MAX || buf.len() >= max => Framed::Error(ProtocolError::TooBigInline),
            None => Framed::NeedMore,
        },
    }
}

/// The header line starting at `from` (`*…` or `$…`), without its `\r\n`, once its end is
/// buffered. Like Redis, the byte after `\r` is taken to be `\n` without looking at it. A line
/// whose end is not within `max` bytes of the command's start is refused.
fn header_line(
    buf: &[u8],
    from: usize,
    max: usize,
    too_big: ProtocolError,
) -> Result<Option<Range<usize>>, ProtocolError> {
    match memchr::memchr(b'\r', &buf[from..]) {
        None if buf.len() - from > INLINE_MAX || buf.len() >= max => Err(too_big),
        None => Ok(None),
        Some(i) if from + i + 2 > buf.len() => Ok(None),
        Some(i) => Ok(Some(from..from + i)),
    }
}

fn frame_multibulk(buf: &[u8], max: usize, progress: &mut Progress) -> Framed {
    match frame_multibulk_inner(buf, max, progress) {
        Ok(f) => f,
        Err(e) => Framed::Error(e),
    }
}

fn frame_multibulk_inner(buf: &[u8], max: usize, progress: &mut Progress) -> Result<Framed, ProtocolError> {
    if progress.pos == 0 {
        let Some(line) = header_line(buf, 0, max, ProtocolError::TooBigMultibulkCount)? else {
            return Ok(Framed::NeedMore);
        };
        let count = parse_i64(&buf[1..line.end])
            .filter(|&n| n <= MULTIBULK_MAX)
            .ok_or(ProtocolError::InvalidMultibulkLength)?;
        let pos = line.end + 2;
        if count <= 0 {
            // An empty command: Redis skips it without a reply.
            return Ok(Framed::Complete(pos));
        }
        if pos as u64 + count as u64 * MIN_ARG_LEN > max as u64 {
            return Err(ProtocolError::InvalidMultibulkLength);
        }
        *progress = Progress { args_done: 0, pos, count: count as u32 };
    }
    let mut pos = progress.pos;
    while progress.args_done < progress.count {
        if pos >= buf.len() {
            break;
        }
        let Some(line) = header_line(buf, pos, max, ProtocolError::TooBigBulkCount)? else {
            break;
        };
        if buf[pos] != b'$' {
            return Err(ProtocolError::ExpectedDollar(buf[pos]));
        }
        let len = parse_i64(&buf[pos + 1..line.end])
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= BULK_MAX)
            .ok_or(ProtocolError::InvalidBulkLength)?;
        let end = (line.end + 2).saturating_add(len).saturating_add(2);
        if end > max {
            return Err(ProtocolError::InvalidBulkLength);
        }
        if progress.args_done + 1 == progress.count {
            // The last argument: its length gives the command's.
            return Ok(Framed::Complete(end));
        }
        if end > buf.len() {
            break;
        }
        pos = end;
        progress.args_done += 1;
        progress.pos = pos;
    }
    Ok(Framed::NeedMore)
}

/// An integer as Redis' `string2ll` reads it: optional `-`, digits, no leading zero (but `0`),
/// no spaces, no `+`, within `i64`.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s {
        [b'0'] => return Some(0),
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if neg {
        if v > i64::MAX as u64 + 1 {
            return None;
        }
        Some((v as i64).wrapping_neg())
    } else {
        i64::try_from(v).ok()
    }
}

/// The arguments of one framed command: ranges into the command's bytes (multibulk) or into a
/// buffer of their own (inline arguments, which may contain escapes). Reused from one command to
/// the next, so parsing allocates nothing once warm.
#[derive(Debug, Default)]
pub struct Args {
    ranges: Vec<Range<usize>>,
    unescaped: Vec<u8>,
    /// The ranges point into `unescaped` (an inline command with quotes), not the message.
    own_buffer: bool,
}

/// A parsed command's arguments, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct ArgsView<'a> {
    src: &'a [u8],
    ranges: &'a [Range<usize>],
}

impl<'a> ArgsView<'a> {
    /// Arguments given as ranges of `src`.
    pub fn new(src: &'a [u8], ranges: &'a [Range<usize>]) -> Self {
        ArgsView { src, ranges }
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Argument `i` (0 is the command name). Panics when out of range.
    pub fn get(&self, i: usize) -> &'a [u8] {
        &self.src[self.ranges[i].clone()]
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.ranges.iter().map(|r| &self.src[r.clone()])
    }
}

impl Args {
    /// Splits `msg`, one command as framed by [`frame_command`], into its arguments. A multibulk
    /// command cannot fail here (framing checked it); an inline one can (unbalanced quotes).
    pub fn parse(&mut self, msg: &[u8]) -> Result<(), ProtocolError> {
        self.ranges.clear();
        self.own_buffer = false;
        if msg.first() != Some(&b'*') {
            let line = msg.strip_suffix(b"\n").unwrap_or(msg);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if memchr::memchr2(b'"', b'\'', line).is_none() {
                // No quotes, so no escapes: the arguments are ranges of the line itself.
                split_plain(line, &mut self.ranges);
                return Ok(());
            }
            self.own_buffer = true;
            self.unescaped.clear();
            return split_inline(line, &mut self.unescaped, &mut self.ranges);
        }
        let mut pos = match memchr::memchr(b'\r', msg) {
            Some(i) => i + 2,
            None => return Ok(()),
        };
        let count = parse_i64(&msg[1..pos - 2]).unwrap_or(0);
        for _ in 0..count.max(0) {
            let Some(i) = msg.get(pos..).and_then(|rest| memchr::memchr(b'\r', rest)) else { break };
            let len = parse_i64(&msg[pos + 1..pos + i]).unwrap_or(0) as usize;
            let start = pos + i + 2;
            let end = (start + len).min(msg.len());
            self.ranges.push(start..end);
            pos = end + 2;
        }
        Ok(())
    }

    /// The arguments of the last [`Args::parse`] of `msg`.
    pub fn view<'a>(&'a self, msg: &'a [u8]) -> ArgsView<'a> {
        let src = if self.own_buffer { &self.unescaped[..] } else { msg };
        ArgsView { src, ranges: &self.ranges }
    }
}

/// Redis' `sdssplitargs`: arguments separated by whitespace; `"…"` with the escapes `\n \r \t \b
/// \a \\ \"` and `\xHH`; `'…'` with `\'`; a closing quote must be followed by whitespace or the end.
fn split_inline(line: &[u8], out: &mut Vec<u8>, ranges: &mut Vec<Range<usize>>) -> Result<(), ProtocolError> {
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i == line.len() {
            return Ok(());
        }
        let start = out.len();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            let Some(&c) = line.get(i) else {
                if in_dq || in_sq {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                break;
            };
            if in_dq {
                if c == b'\\' && i + 3 < line.len() && line[i + 1] == b'x' {
                    if let (Some(h), Some(l)) = (hex(line[i + 2]), hex(line[i + 3])) {
                        out.push(h << 4 | l);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    out.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    i += 2;
                    continue;
                }
                if c == b'"' {
                    if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                }
                out.push(c);
            } else if in_sq {
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    out.push(b'\'');
                    i += 2;
                    continue;
                }
                if c == b'\'' {
                    if line.get(i + 1).is_some_and(|&n| !is_space(n)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    i += 1;
                    break;
                }
                out.push(c);
            } else if is_space(c) {
                break;
            } else if c == b'"' {
                in_dq = true;
            } else if c == b'\'' {
                in_sq = true;
            } else {
                out.push(c);
            }
            i += 1;
        }
        ranges.push(start..out.len());
    }
}

/// Arguments separated by whitespace, without quotes: ranges of `line`.
fn split_plain(line: &[u8], ranges: &mut Vec<Range<usize>>) {
    let mut i = 0;
    while i < line.len() {
        if is_space(line[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < line.len() && !is_space(line[i]) {
            i += 1;
        }
        ranges.push(start..i);
    }
}

/// C's `isspace`.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn frame(buf: &[u8]) -> Framed {
        frame_command(buf, MAX, &mut Progress::default())
    }

    fn args(msg: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
        let mut a = Args::default();
        a.parse(msg)?;
        Ok(a.view(msg).iter().map(<[u8]>::to_vec).collect())
    }

    fn error_text(e: ProtocolError) -> String {
        let mut out = Vec::new();
        e.write_reply(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn frames_multibulk_commands() {
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$5\r\nhello\r\n";
        assert_eq!(frame(set), Framed::Complete(set.len()));
        // Pipelined: only the first command.
        let two = [&set[..], b"*1\r\n$4\r\nPING\r\n"].concat();
        assert_eq!(frame(&two), Framed::Complete(set.len()));
        // Every prefix but the whole waits; from the last header on, the length is known.
        let last_header = set.len() - b"hello\r\n".len();
        for cut in 0..set.len() {
            let want = if cut >= last_header { Framed::Complete(set.len()) } else { Framed::NeedMore };
            assert_eq!(frame(&set[..cut]), want, "cut at {cut}");
        }
        assert_eq!(frame(b"*0\r\n"), Framed::Complete(4));
        assert_eq!(frame(b"*-1\r\nPING\r\n"), Framed::Complete(5));
    }

    #[test]
    fn framing_resumes_where_it_stopped() {
        let cmd = b"*4\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\nb\r\n$2\r\ncd\r\n";
        let mut p = Progress::default();
        assert_eq!(frame_command(&cmd[..22], MAX, &mut p), Framed::NeedMore);
        assert_eq!((p.args_done, p.pos), (2, 21));
        assert_eq!(frame_command(&cmd[..32], MAX, &mut p), Framed::Complete(cmd.len()));
    }

    #[test]
    fn frames_inline_commands() {
        assert_eq!(frame(b"PING\r\n"), Framed::Complete(6));
        assert_eq!(frame(b"PING\nPING\n"), Framed::Complete(5));
        assert_eq!(frame(b"PIN"), Framed::NeedMore);
        assert_eq!(frame(&[b'a'; INLINE_MAX + 1]), Framed::Error(ProtocolError::TooBigInline));
    }

    /// Found by the fuzzer (`tests/tests/fuzz.rs`): a command over the max package size (below
    /// 64 KiB) was framed anyway, and the host cut the connection without Redis' error reply.
    #[test]
    fn refuses_commands_over_the_max_package_size() {
        use ProtocolError::*;
        let f = |buf: &[u8]| frame_command(buf, 16, &mut Progress::default());
        assert_eq!(f(b"SET key 0123456\r\n"), Framed::Error(TooBigInline));
        assert_eq!(f(b"SET key 012345\r\n"), Framed::Complete(16));
        assert_eq!(f(b"SET key 01234567"), Framed::Error(TooBigInline));
        assert_eq!(f(b"SET key 0123"), Framed::NeedMore);
        assert_eq!(f(b"*1\r\n$4\r\nPING\r\n"), Framed::Complete(14));
        assert_eq!(f(b"*1\r\n$00000000000"), Framed::Error(TooBigBulkCount));
        assert_eq!(f(b"*000000000000000"), Framed::Error(TooBigMultibulkCount));
    }

    #[test]
    fn refuses_what_redis_refuses() {
        use ProtocolError::*;
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*2147483648\r\n", InvalidMultibulkLength),
            (b"*abc\r\n", InvalidMultibulkLength),
            (b"*\r\n", InvalidMultibulkLength),
            (b"*01\r\n", InvalidMultibulkLength),
            (b"*1\r\n$4294967296\r\n", InvalidBulkLength),
            (b"*1\r\n$-1\r\n", InvalidBulkLength),
            (b"*1\r\n$536870913\r\n", InvalidBulkLength),
            (b"*1\r\nfoo\r\n", ExpectedDollar(b'f')),
            (b"*2\r\n$1\r\nabcd\r\n", ExpectedDollar(b'd')),
        ];
        for (buf, want) in cases {
            assert_eq!(frame_command(buf, BULK_MAX * 2, &mut Progress::default()), Framed::Error(*want), "{buf:?}");
        }
        // Never more than the max package size: a count or a length that could not fit.
        assert_eq!(frame(b"*1000000\r\n"), Framed::Error(InvalidMultibulkLength));
        assert_eq!(frame(b"*1\r\n$1048576\r\n"), Framed::Error(InvalidBulkLength));
        assert_eq!(frame(b"*1\r\n$1048560\r\n"), Framed::Complete(MAX));
        assert_eq!(frame(b"*1\r\n$1048561\r\n"), Framed::Error(InvalidBulkLength));
        assert_eq!(frame(&[b"*".as_slice(), &[b'1'; INLINE_MAX + 1]].concat()), Framed::Error(TooBigMultibulkCount));
        assert_eq!(frame(&[b"*1\r\n$".as_slice(), &[b'1'; INLINE_MAX + 1]].concat()), Framed::Error(TooBigBulkCount));
    }

    #[test]
    fn error_texts_are_redis_texts() {
        assert_eq!(
            error_text(ProtocolError::InvalidMultibulkLength),
            "-ERR Protocol error: invalid multibulk length\r\n"
        );
        assert_eq!(error_text(ProtocolError::InvalidBulkLength), "-ERR Protocol error: invalid bulk length\r\n");
        assert_eq!(error_text(ProtocolError::ExpectedDollar(b'x')), "-ERR Protocol error: expected '$', got 'x'\r\n");
    }

    #[test]
    fn parses_arguments() {
        let set = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$7\r\nhe\r\nllo\r\n";
        assert_eq!(args(set).unwrap(), [&b"SET"[..], b"a", b"he\r\nllo"]);
        assert_eq!(args(b"*1\r\n$0\r\n\r\n").unwrap(), [b""]);
        assert!(args(b"*0\r\n").unwrap().is_empty());
        assert_eq!(args(b"set  a\t1\r\n").unwrap(), [&b"set"[..], b"a", b"1"]);
        assert!(args(b"   \r\n").unwrap().is_empty());
        assert_eq!(args(b"set \"a b\" 'c\\'d'\n").unwrap(), [&b"set"[..], b"a b", b"c'd"]);
        assert_eq!(args(b"echo \"\\x41\\n\\\"\"\n").unwrap(), [&b"echo"[..], b"A\n\""]);
        assert_eq!(args(b"echo \"\"\n").unwrap(), [&b"echo"[..], b""]);
        for bad in [&b"echo \"abc\n"[..], b"echo 'abc\n", b"echo \"a\"b\n"] {
            assert_eq!(args(bad), Err(ProtocolError::UnbalancedQuotes), "{bad:?}");
        }
    }

    #[test]
    fn integers_are_read_like_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [&b""[..], b"-", b"01", b"-0", b"+1", b" 1", b"1 ", b"9223372036854775808", b"1a"] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
    }
}
