//! The reply side of RESP: RESP2 by default, RESP3 once the client said `HELLO 3`. Only the types
//! whose encoding differs between the two (null, map, set, verbatim string) look at the version.

/// Writes replies into a buffer the caller then sends.
#[derive(Debug)]
pub struct Reply<'a> {
    out: &'a mut Vec<u8>,
    resp3: bool,
}

impl<'a> Reply<'a> {
    pub fn new(out: &'a mut Vec<u8>, resp3: bool) -> Self {
        Reply { out, resp3 }
    }

    pub fn resp3(&self) -> bool {
        self.resp3
    }

    /// Switches the version for the replies that follow (`HELLO` answers in the new one).
    pub fn set_resp3(&mut self, resp3: bool) {
        self.resp3 = resp3;
    }

    pub fn ok(&mut self) {
        self.out.extend_from_slice(b"+OK\r\n");
    }

    /// `+text`: `text` must not contain `\r` or `\n`.
    pub fn simple(&mut self, text: &[u8]) {
        self.out.push(b'+');
        self.out.extend_from_slice(text);
        self.out.extend_from_slice(b"\r\n");
    }

    /// `-text`: `text` starts with the error code (`ERR …`, `WRONGTYPE …`); line breaks in it
    /// become spaces, as Redis does.
    pub fn error(&mut self, text: &str) {
        self.error_bytes(text.as_bytes());
    }

    pub fn error_bytes(&mut self, text: &[u8]) {
        self.out.push(b'-');
        self.out.extend(text.iter().map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
        self.out.extend_from_slice(b"\r\n");
    }

    pub fn int(&mut self, n: i64) {
        self.out.push(b':');
        self.number(n);
    }

    pub fn bulk(&mut self, data: &[u8]) {
        self.out.push(b'$');
        self.number(data.len() as i64);
        self.out.extend_from_slice(data);
        self.out.extend_from_slice(b"\r\n");
    }

    /// A missing value: `$-1` (RESP2) or `_` (RESP3).
    pub fn null(&mut self) {
        self.out.extend_from_slice(if self.resp3 { b"_\r\n" } else { b"$-1\r\n" });
    }

    /// A missing array: `*-1` (RESP2) or `_` (RESP3).
    pub fn null_array(&mut self) {
        self.out.extend_from_slice(if self.resp3 { b"_\r\n" } else { b"*-1\r\n" });
    }

    /// The header of an array of `n` replies, which follow.
    pub fn array(&mut self, n: usize) {
        self.out.push(b'*');
        self.number(n as i64);
    }

    /// The header of a map of `n` key/value pairs (a flat array of `2n` in RESP2).
    pub fn map(&mut self, n: usize) {
        if self.resp3 {
            self.out.push(b'%');
            self.number(n as i64);
        } else {
            self.array(2 * n);
        }
    }

    /// The header of a set of `n` replies (an array in RESP2).
    pub fn set(&mut self, n: usize) {
        if self.resp3 {
            self.out.push(b'~');
            self.number(n as i64);
        } else {
            self.array(n);
        }
    }

    /// Text meant for humans (`INFO`): a verbatim string `=…txt:` in RESP3, a bulk in RESP2.
    pub fn verbatim(&mut self, text: &[u8]) {
        if self.resp3 {
            self.out.push(b'=');
            self.number(text.len() as i64 + 4);
            self.out.extend_from_slice(b"txt:");
            self.out.extend_from_slice(text);
            self.out.extend_from_slice(b"\r\n");
        } else {
            self.bulk(text);
        }
    }

    /// `n` then `\r\n`.
    fn number(&mut self, n: i64) {
        self.out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(f: impl Fn(&mut Reply<'_>)) -> (String, String) {
        let (mut two, mut three) = (Vec::new(), Vec::new());
        f(&mut Reply::new(&mut two, false));
        f(&mut Reply::new(&mut three, true));
        (String::from_utf8(two).unwrap(), String::from_utf8(three).unwrap())
    }

    #[test]
    fn encodes_resp2_and_resp3() {
        assert_eq!(both(|r| r.ok()), ("+OK\r\n".into(), "+OK\r\n".into()));
        assert_eq!(both(|r| r.int(-42)).0, ":-42\r\n");
        assert_eq!(both(|r| r.bulk(b"hi")).0, "$2\r\nhi\r\n");
        assert_eq!(both(|r| r.bulk(b"")).0, "$0\r\n\r\n");
        assert_eq!(both(|r| r.null()), ("$-1\r\n".into(), "_\r\n".into()));
        assert_eq!(both(|r| r.null_array()), ("*-1\r\n".into(), "_\r\n".into()));
        assert_eq!(both(|r| r.map(2)), ("*4\r\n".into(), "%2\r\n".into()));
        assert_eq!(both(|r| r.set(3)), ("*3\r\n".into(), "~3\r\n".into()));
        assert_eq!(both(|r| r.verbatim(b"a:1")), ("$3\r\na:1\r\n".into(), "=7\r\ntxt:a:1\r\n".into()));
        assert_eq!(both(|r| r.error("ERR bad\r\nthing")).0, "-ERR bad  thing\r\n");
    }
}
