//! Ciphertext between the socket and rustls, given to rustls only in whole records.
//!
//! rustls' buffered connection reads the socket into a buffer of its own and keeps there a record
//! that is not whole yet; nothing public gives those bytes back. A connection that is to move to
//! another worker ([`super::moved`]) must leave rustls at a record boundary, or the bytes of the
//! record half received would be lost with it. So the transport reads the socket here, and rustls
//! reads from here ([`Staged::feed`]) only bytes that end a record; what follows the last whole
//! record waits here, and moves as plain bytes. The cost is one copy of the ciphertext (rustls
//! copies it again into its own buffer, as it did from the socket).

use std::io::{self, Read};

use super::record::MAX_RECORD;

/// The buffer's size while bytes flow: a whole record always fits after the bytes of the next.
const SIZE: usize = 32 * 1024;
const HEADER_LEN: usize = 5;
/// A longer record is malformed (TLS 1.2's 2^14 + 2048): it is given to rustls as it is, which
/// refuses it.
const MAX_CIPHERTEXT: usize = MAX_RECORD - HEADER_LEN;

/// Ciphertext read from the socket and not given to rustls yet.
#[derive(Debug, Default)]
pub struct Staged {
    /// `buf[start..end]` is not given yet; `buf[start..boundary]` ends at a record boundary.
    buf: Vec<u8>,
    start: usize,
    boundary: usize,
    end: usize,
    /// A malformed header was seen: everything is given as it comes (rustls refuses it).
    raw: bool,
}

impl Staged {
    /// A reader for `rustls::ServerConnection::read_tls`: whole records, read from `socket` when
    /// none is buffered (None: from the buffer only, `WouldBlock` once it has no whole record).
    pub fn feed<'a>(&'a mut self, socket: Option<&'a mut dyn Read>) -> Feed<'a> {
        Feed { staged: self, socket }
    }

    /// Bytes buffered that make whole records (for rustls).
    pub fn has_whole(&self) -> bool {
        self.start < self.boundary
    }

    /// The bytes after the last whole record given: a record not whole yet.
    pub fn rest(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn scan(&mut self) {
        if self.raw {
            self.boundary = self.end;
            return;
        }
        while let Some(h) =
            self.buf.get(self.boundary..self.boundary + HEADER_LEN).filter(|_| self.boundary + HEADER_LEN <= self.end)
        {
            let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
            if len > MAX_CIPHERTEXT {
                self.raw = true;
                self.boundary = self.end;
                return;
            }
            if self.boundary + HEADER_LEN + len > self.end {
                return;
            }
            self.boundary += HEADER_LEN + len;
        }
    }

    /// Reads `socket` until a record is whole: Ok(false) when it ended first.
    fn fill(&mut self, socket: &mut dyn Read) -> io::Result<bool> {
        loop {
            // Only a record not whole yet is buffered: to the front, with room for all of it.
            let shift = self.start;
            if shift > 0 {
                self.buf.copy_within(shift..self.end, 0);
                self.start = 0;
                self.boundary -= shift;
                self.end -= shift;
            }
            if self.buf.len() < SIZE {
                self.buf.resize(SIZE, 0);
            }
            match socket.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    self.scan();
                    if self.has_whole() {
                        return Ok(true);
                    }
                }
                Err(e) => {
                    if self.start == self.end {
                        // Idle: an idle connection holds no buffer.
                        *self = Staged { raw: self.raw, ..Staged::default() };
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// See [`Staged::feed`].
pub struct Feed<'a> {
    staged: &'a mut Staged,
    socket: Option<&'a mut dyn Read>,
}

impl Read for Feed<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let s = &mut *self.staged;
        if !s.has_whole() {
            let Some(socket) = self.socket.as_deref_mut() else {
                return Err(io::ErrorKind::WouldBlock.into());
            };
            // The socket ended: so does the stream (a record cut short is a truncation: rustls
            // sees the end, without `close_notify`).
            if !s.fill(socket)? {
                return Ok(0);
            }
        }
        let n = out.len().min(s.boundary - s.start);
        out[..n].copy_from_slice(&s.buf[s.start..s.start + n]);
        s.start += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len: usize, fill: u8) -> Vec<u8> {
        let mut r = vec![23, 3, 3, (len >> 8) as u8, len as u8];
        r.extend(std::iter::repeat_n(fill, len));
        r
    }

    /// A socket that gives its bytes in the chunks given, then `WouldBlock`.
    struct Chunks(Vec<Vec<u8>>);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let c = &mut self.0[0];
            let n = buf.len().min(c.len());
            buf[..n].copy_from_slice(&c[..n]);
            c.drain(..n);
            if c.is_empty() {
                self.0.remove(0);
            }
            Ok(n)
        }
    }

    #[test]
    fn only_whole_records_are_given_and_the_rest_waits() {
        let a = record(100, 1);
        let b = record(20_000 - 5 - 2048, 2);
        let mut wire = a.clone();
        wire.extend_from_slice(&b);
        // One byte at a time, then in a lump, to a reader that takes little at once.
        let mut socket = Chunks(wire[..150].iter().map(|&b| vec![b]).chain([wire[150..].to_vec()]).collect());
        let mut staged = Staged::default();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match staged.feed(Some(&mut socket)).read(&mut chunk) {
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            if got.len() == a.len() {
                assert!(staged.rest().len() < b.len(), "the second record is not whole yet");
            }
        }
        assert_eq!(got, wire);
        assert!(staged.rest().is_empty());
    }

    #[test]
    fn a_record_cut_short_stays_behind() {
        let a = record(10, 1);
        let b = record(50, 2);
        let mut wire = a.clone();
        wire.extend_from_slice(&b[..30]);
        let mut socket = Chunks(vec![wire]);
        let mut staged = Staged::default();
        let mut out = [0u8; 1024];
        assert_eq!(staged.feed(Some(&mut socket)).read(&mut out).unwrap(), a.len());
        assert_eq!(&out[..a.len()], &a[..]);
        assert_eq!(staged.feed(Some(&mut socket)).read(&mut out).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(staged.rest(), &b[..30]);
        assert_eq!(staged.feed(None).read(&mut out).unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_malformed_length_is_passed_through_for_rustls_to_refuse() {
        let mut wire = vec![23, 3, 3, 0xff, 0xff];
        wire.extend_from_slice(&[0; 10]);
        let mut socket = Chunks(vec![wire.clone()]);
        let mut staged = Staged::default();
        let mut out = [0u8; 1024];
        assert_eq!(staged.feed(Some(&mut socket)).read(&mut out).unwrap(), wire.len());
    }
}
