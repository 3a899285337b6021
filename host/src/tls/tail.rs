//! The record rustls holds half received, kept where the hand-over can take it.
//!
//! rustls' buffered connection reads the socket into a buffer of its own and keeps there a record
//! that is not whole yet; nothing public gives those bytes back. A connection that is to move to
//! another worker ([`super::moved`]) must take them along, or the record half received would be
//! lost. So rustls reads the socket through [`RecordTail::reader`], which follows the record
//! boundaries in the bytes passing by and keeps a copy of the record not whole yet: once rustls
//! has processed what it read, [`RecordTail::bytes`] is exactly what it holds of the peer's data.
//!
//! The cost: the bytes of a record that does not end within the read that brought them are copied
//! once more (rustls reads at most 4 KiB more than it holds, so most of a 16 KiB record is):
//! measured in memory, rustls receives 0.5-1.0 times as fast with AES-GCM, as fast with
//! ChaCha20-Poly1305 (docs/architecture.md, "TLS hand-over"). An earlier version gave rustls whole
//! records only, from a buffer of its own: every record then emptied rustls' buffer, which rustls
//! shrinks and grows again each time; this leaves rustls' reads as they were.

use std::io::{self, Read};

use super::record::MAX_RECORD;

const HEADER_LEN: usize = 5;
/// A longer record is malformed (TLS 1.2's 2^14 + 2048): rustls refuses it.
const MAX_CIPHERTEXT: usize = MAX_RECORD - HEADER_LEN;
/// change_cipher_spec, alert, handshake, application_data.
const CONTENT_TYPES: std::ops::RangeInclusive<u8> = 20..=23;
/// A copy that grew past this for a large record is let go at a pause between records.
const KEEP: usize = 4 * 1024;

/// The bytes of the record not whole yet, as they passed to rustls.
#[derive(Debug, Default)]
pub struct RecordTail {
    bytes: Vec<u8>,
    /// The stream is no TLS the tail can follow (a header of no TLS content type or version, or
    /// an oversized record): rustls refuses it, and the connection cannot move.
    lost: bool,
}

impl RecordTail {
    /// `socket`, read through this tail (for `rustls::ServerConnection::read_tls`).
    pub fn reader<'a>(&'a mut self, socket: &'a mut dyn Read) -> TailReader<'a> {
        TailReader { tail: self, socket }
    }

    /// What rustls holds of a record not whole yet (once it processed what it read); None when
    /// the stream could not be followed.
    pub fn bytes(&self) -> Option<&[u8]> {
        (!self.lost).then_some(&self.bytes[..])
    }

    /// Follows `read`, the bytes rustls just got.
    fn follow(&mut self, mut read: &[u8]) {
        while !read.is_empty() && !self.lost {
            if self.bytes.len() < HEADER_LEN {
                let n = (HEADER_LEN - self.bytes.len()).min(read.len());
                self.bytes.extend_from_slice(&read[..n]);
                read = &read[n..];
                if self.bytes.len() == HEADER_LEN {
                    let h = &self.bytes;
                    let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
                    if !(CONTENT_TYPES.contains(&h[0]) && h[1] == 3) || len > MAX_CIPHERTEXT {
                        self.lost = true;
                        self.bytes = Vec::new();
                        return;
                    }
                    if len == 0 {
                        self.bytes.clear();
                    }
                }
                continue;
            }
            let h = &self.bytes;
            let total = HEADER_LEN + usize::from(u16::from_be_bytes([h[3], h[4]]));
            let missing = total - self.bytes.len();
            if read.len() >= missing {
                // The record is whole: rustls processes it, nothing of it is kept.
                read = &read[missing..];
                self.bytes.clear();
            } else {
                self.bytes.extend_from_slice(read);
                read = &[];
            }
        }
    }
}

/// See [`RecordTail::reader`].
pub struct TailReader<'a> {
    tail: &'a mut RecordTail,
    socket: &'a mut dyn Read,
}

impl Read for TailReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.socket.read(buf) {
            Ok(n) => {
                self.tail.follow(&buf[..n]);
                Ok(n)
            }
            Err(e) => {
                // The peer paused between records: the copy a large record made grow is let go
                // (not while records stream: no allocation per record).
                let tail = &mut self.tail.bytes;
                if e.kind() == io::ErrorKind::WouldBlock && tail.is_empty() && tail.capacity() > KEEP {
                    *tail = Vec::new();
                }
                Err(e)
            }
        }
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

    #[test]
    fn the_tail_is_the_record_not_whole_yet_whatever_the_reads() {
        let a = record(100, 1);
        let b = record(17_000, 2);
        let c = record(0, 0);
        let wire: Vec<u8> = [&a[..], &b[..], &c[..], &a[..]].concat();
        // Every cut of the stream into two reads, then one byte at a time.
        for cut in (0..wire.len()).step_by(97).chain([1, 4, 5, 6, 105, 106, 17_110, 17_111]) {
            let mut tail = RecordTail::default();
            let mut out = vec![0u8; wire.len()];
            let mut rd = &wire[..cut];
            let n = tail.reader(&mut rd).read(&mut out).unwrap();
            assert_eq!(n, cut);
            // Where does the record holding byte `cut` start?
            let starts = [0, a.len(), a.len() + b.len(), a.len() + b.len() + c.len(), wire.len()];
            let start = *starts.iter().rev().find(|&&s| s <= cut).unwrap();
            assert_eq!(tail.bytes(), Some(&wire[start..cut]), "cut at {cut}");
        }
        let mut tail = RecordTail::default();
        for (i, byte) in wire.iter().enumerate() {
            let mut rd = &[*byte][..];
            assert_eq!(tail.reader(&mut rd).read(&mut [0u8; 1]).unwrap(), 1);
            if i == a.len() + 49 {
                assert_eq!(tail.bytes(), Some(&wire[a.len()..=i]));
            }
        }
        assert_eq!(tail.bytes(), Some(&[][..]));
    }

    /// Gives its bytes 4 KiB at a time (rustls' reads), then `WouldBlock`.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.0.len()).min(4096);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn the_copy_is_reused_while_records_stream_and_let_go_at_a_pause() {
        let wire: Vec<u8> = (0..20).flat_map(|i| record(16_000, i)).collect();
        let mut socket = Trickle(&wire);
        let mut tail = RecordTail::default();
        let mut out = [0u8; 8192];
        let mut caps = Vec::new();
        while tail.reader(&mut socket).read(&mut out).is_ok() {
            caps.push(tail.bytes.capacity());
        }
        let grown = caps.iter().position(|&c| c > KEEP).expect("grown for a large record");
        assert!(caps[grown..].iter().all(|&c| c >= caps[grown]), "reused: {caps:?}");
        assert!(caps[grown..].windows(2).filter(|w| w[0] != w[1]).count() <= 2, "reused: {caps:?}");
        assert_eq!(tail.bytes(), Some(&[][..]));
        assert_eq!(tail.bytes.capacity(), 0, "let go at the pause");
    }

    #[test]
    fn what_is_not_tls_cannot_be_followed() {
        let mut tail = RecordTail::default();
        let mut rd = &b"GET / HTTP/1.1\r\n"[..];
        assert_eq!(tail.reader(&mut rd).read(&mut [0u8; 64]).unwrap(), 16);
        assert_eq!(tail.bytes(), None);
        let mut tail = RecordTail::default();
        let mut rd = &[23, 3, 3, 0xff, 0xff, 0][..];
        assert_eq!(tail.reader(&mut rd).read(&mut [0u8; 64]).unwrap(), 6);
        assert_eq!(tail.bytes(), None);
    }
}
