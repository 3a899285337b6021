//! The chunked transfer coding of request bodies (RFC 9112 §7.1): a scanner that can stop at any
//! byte and resume where it stopped when more bytes arrive (so a large body arriving in pieces is
//! scanned once, not once per piece), and that decodes the data when asked to.
//!
//! Chunk extensions and trailer fields are checked for stray control bytes and otherwise ignored.
//! Line ends must be CRLF: a bare LF inside chunked framing is refused, since lenient parsing
//! here is what request-smuggling attacks feed on.

/// Why a chunked body is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Not valid chunked coding (answered with 400).
    Malformed,
    /// The decoded data would exceed the body limit (answered with 413).
    TooLarge,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the hex chunk size.
    #[default]
    Size,
    /// Whitespace after the size, before `;` or CR.
    SizeSpace,
    /// In a chunk extension (ignored).
    Ext,
    /// After the CR of the size line.
    SizeLf,
    /// In chunk data.
    Data,
    /// After chunk data, expecting CR.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final CRLF).
    TrailerStart,
    /// In a trailer field line (ignored).
    Trailer,
    /// After the CR of a trailer line.
    TrailerLf,
    /// After the final CR.
    EndLf,
    /// The body is complete.
    Done,
}

/// Resumable scanner over a chunked body. `body` passed to [`ChunkScan::advance`] must always
/// start at the first byte of the body and only grow between calls.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChunkScan {
    pos: usize,
    state: State,
    /// Size of the chunk being read (while in `Size`), then bytes of it still to come.
    size: u64,
    digits: u32,
    data_len: u64,
}

impl ChunkScan {
    /// Scans on from where the last call stopped. `Ok(Some(n))`: the chunked body is the first
    /// `n` bytes of `body`; `Ok(None)`: more bytes are needed. Decoded data is appended to `out`
    /// when given; data over `max` decoded bytes is refused.
    pub fn advance(
        &mut self,
        body: &[u8],
        max: u64,
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<Option<usize>, ChunkError> {
        while self.pos < body.len() {
            if self.state == State::Data {
                let avail = (body.len() - self.pos) as u64;
                let take = self.size.min(avail) as usize;
                if let Some(out) = out.as_deref_mut() {
                    out.extend_from_slice(&body[self.pos..self.pos + take]);
                }
                self.pos += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = body[self.pos];
            self.pos += 1;
            self.state = self.step(b, max)?;
            if self.state == State::Done {
                return Ok(Some(self.pos));
            }
        }
        Ok((self.state == State::Done).then_some(self.pos))
    }

    /// Scans `piece`, the next bytes of the body after those of the previous call (for a body
    /// consumed as it arrives, where earlier bytes are gone): `Ok((n, true))` when the body ends
    /// after the first `n` bytes of `piece`, `Ok((piece.len(), false))` when it goes on.
    pub fn feed(&mut self, piece: &[u8], max: u64, out: Option<&mut Vec<u8>>) -> Result<(usize, bool), ChunkError> {
        self.pos = 0;
        Ok(match self.advance(piece, max, out)? {
            Some(n) => (n, true),
            None => (piece.len(), false),
        })
    }

    /// Decoded bytes announced so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    fn step(&mut self, b: u8, max: u64) -> Result<State, ChunkError> {
        use State::*;
        let bad = Err(ChunkError::Malformed);
        Ok(match (self.state, b) {
            (Size, _) if b.is_ascii_hexdigit() => {
                if self.size > u64::MAX >> 4 {
                    return bad;
                }
                self.size = self.size << 4 | u64::from(hex_value(b));
                self.digits += 1;
                Size
            }
            (Size, _) if self.digits == 0 => return bad,
            (Size | SizeSpace, b' ' | b'\t') => SizeSpace,
            (Size | SizeSpace, b';') => Ext,
            (Size | SizeSpace, b'\r') => SizeLf,
            (Size | SizeSpace, _) => return bad,
            (Ext, b'\r') => SizeLf,
            (TrailerStart, b'\r') => EndLf,
            (Trailer, b'\r') => TrailerLf,
            (Ext | Trailer | TrailerStart, _) if is_ctl(b) => return bad,
            (Ext, _) => Ext,
            (SizeLf, b'\n') => {
                self.digits = 0;
                if self.size == 0 {
                    TrailerStart
                } else {
                    self.data_len = self.data_len.saturating_add(self.size);
                    if self.data_len > max {
                        return Err(ChunkError::TooLarge);
                    }
                    Data
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (TrailerStart | Trailer, _) => Trailer,
            (TrailerLf, b'\n') => TrailerStart,
            (EndLf, b'\n') => Done,
            (SizeLf | DataCr | DataLf | TrailerLf | EndLf | Data | Done, _) => return bad,
        })
    }
}

/// Decodes a complete chunked body (as delimited by [`ChunkScan::advance`]) into `out`.
pub fn decode(body: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
    ChunkScan::default().advance(body, u64::MAX, Some(out))?.ok_or(ChunkError::Malformed)
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Control bytes other than tab (CR is handled before this is asked).
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"5;name=value\r\nHello\r\n8 \r\n, World!\r\n0\r\nX-Trailer: yes\r\n\r\n";

    fn scan_whole(body: &[u8]) -> Result<Option<usize>, ChunkError> {
        ChunkScan::default().advance(body, u64::MAX, None)
    }

    #[test]
    fn decodes_with_extensions_and_trailers() {
        let mut out = Vec::new();
        assert_eq!(decode(BODY, &mut out), Ok(BODY.len()));
        assert_eq!(out, b"Hello, World!");
        out.clear();
        assert_eq!(decode(b"0\r\n\r\n", &mut out), Ok(5));
        assert!(out.is_empty());
        out.clear();
        assert_eq!(decode(b"A\r\n0123456789\r\n0\r\n\r\n", &mut out), Ok(20));
        assert_eq!(out, b"0123456789");
    }

    #[test]
    fn stops_at_the_end_of_the_body() {
        let mut buf = BODY.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(scan_whole(&buf), Ok(Some(BODY.len())));
    }

    #[test]
    fn resumes_after_a_split_anywhere() {
        for split in 0..=BODY.len() {
            let mut scan = ChunkScan::default();
            let first = scan.advance(&BODY[..split], u64::MAX, None);
            if split < BODY.len() {
                assert_eq!(first, Ok(None), "split at {split}");
            }
            assert_eq!(scan.advance(BODY, u64::MAX, None), Ok(Some(BODY.len())), "split at {split}");
        }
    }

    #[test]
    fn resumes_one_byte_at_a_time() {
        let mut scan = ChunkScan::default();
        for end in 0..BODY.len() {
            assert_eq!(scan.advance(&BODY[..end], u64::MAX, None), Ok(None));
        }
        assert_eq!(scan.advance(BODY, u64::MAX, None), Ok(Some(BODY.len())));
        assert_eq!(scan.data_len(), 13);
    }

    #[test]
    fn refuses_malformed_coding() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b";ext\r\n",
            b"5\nHello\r\n0\r\n\r\n",
            b"5\r\nHelloX\r\n",
            b"5\r\nHello\n0\r\n\r\n",
            b"5\r\nHello\r\n0\r\n\n",
            b"0\r\nTrailer: a\nb\r\n\r\n",
            b"5;a\0b\r\n",
            b"5 x\r\n",
            b"-5\r\n",
            b"0x5\r\n",
            b"11111111111111111\r\n",
        ] {
            assert_eq!(scan_whole(bad), Err(ChunkError::Malformed), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn feeds_pieces_that_are_gone_once_scanned() {
        let mut buf = BODY.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for size in 1..=BODY.len() {
            let mut scan = ChunkScan::default();
            let (mut out, mut pos) = (Vec::new(), 0);
            let end = loop {
                let piece = &buf[pos..(pos + size).min(buf.len())];
                let (n, done) = scan.feed(piece, u64::MAX, Some(&mut out)).unwrap();
                pos += n;
                if done {
                    break pos;
                }
            };
            assert_eq!(end, BODY.len(), "pieces of {size}");
            assert_eq!(out, b"Hello, World!", "pieces of {size}");
        }
    }

    #[test]
    fn enforces_the_limit_on_decoded_data() {
        let body = b"5\r\nHello\r\n8\r\n, World!\r\n0\r\n\r\n";
        let mut scan = ChunkScan::default();
        assert_eq!(scan.advance(body, 13, None), Ok(Some(body.len())));
        let mut scan = ChunkScan::default();
        assert_eq!(scan.advance(body, 12, None), Err(ChunkError::TooLarge));
        // Refused as soon as the size line announces it, before the data arrives.
        let mut scan = ChunkScan::default();
        assert_eq!(scan.advance(b"ffffffff\r\n", 1 << 20, None), Err(ChunkError::TooLarge));
    }
}
