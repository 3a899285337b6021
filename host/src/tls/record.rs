//! The TLS record layer of a connection that has moved to this worker from another one (see
//! [`super::moved`]): rustls ran the handshake elsewhere and gave up the traffic keys, IVs and
//! sequence numbers; this continues the connection with them, in user space, on `ring`'s AEAD,
//! doing what the kernel's TLS ULP would do with the same secrets.
//!
//! Sans-IO, shaped like rustls' buffered connection so the transport drives both alike:
//! [`RecordLayer::read_tls`] takes ciphertext from a reader, [`RecordLayer::read_plain`] opens
//! records and gives their plaintext, [`RecordLayer::write_plain`] seals plaintext into records,
//! [`RecordLayer::write_tls`] hands them to a writer. Records are opened and sealed in place in
//! two buffers that keep their capacity while traffic flows: no allocation per record.
//!
//! What it does not do: any handshake message. A TLS 1.3 KeyUpdate from the peer would need the
//! traffic secret (only rustls' `KernelConnection`, left behind in the old process, can compute
//! the next one), a TLS 1.2 renegotiation the whole handshake: both close the connection
//! ([`RecordError::KeyUpdate`], [`RecordError::Handshake`]). It cannot send a KeyUpdate either:
//! when the sealing key reaches the AEAD's confidentiality limit (the one rustls tracks, 2^24
//! records for AES-GCM), the connection is closed with `close_notify` instead.

use std::io::{self, Read, Write};

use ring::aead::{self, Aad, LessSafeKey, Nonce};

use super::keys::{less_safe_key, SEQ_SOFT_LIMIT};
pub use super::keys::{Aead, KeyError, TrafficKeys, Version};

/// The most plaintext a record carries.
pub const MAX_FRAGMENT: usize = 16 * 1024;
const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM sends the explicit part of its nonce before the ciphertext.
const GCM_EXPLICIT_LEN: usize = 8;
/// The longest record accepted: TLS 1.3 allows 2^14 + 256 bytes of ciphertext, TLS 1.2 2^14 + 2048.
const MAX_CIPHERTEXT_TLS13: usize = MAX_FRAGMENT + 256;
const MAX_CIPHERTEXT_TLS12: usize = MAX_FRAGMENT + 2048;
/// The largest record on the wire, header included.
pub const MAX_RECORD: usize = HEADER_LEN + MAX_CIPHERTEXT_TLS12;
/// Sealed records kept before `write_plain` takes no more (rustls' default for its own buffer).
const OUT_LIMIT: usize = 64 * 1024;
/// A buffer that grew past this while traffic flowed is let go once the connection pauses (a
/// read finds nothing) with it empty, so an idle connection holds a few KiB, not a burst's worth.
const KEEP: usize = 4 * 1024;
/// Empty application data records in a row before the peer is refused (rustls allows 32).
const MAX_EMPTY_RUN: u8 = 32;

const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_USER_CANCELED: u8 = 90;

/// Why the record layer ended the connection. The peer is told with an alert where TLS has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A TLS 1.3 KeyUpdate from the peer: the next traffic secret is not known here.
    #[error("the peer updated its TLS keys (KeyUpdate), which a moved connection cannot follow")]
    KeyUpdate,
    /// Any other handshake message (a TLS 1.2 renegotiation, say).
    #[error("the peer sent a TLS handshake message (type {0}) on a moved connection")]
    Handshake(u8),
    #[error("a TLS record failed authentication")]
    Decrypt,
    #[error("a TLS record of content type {0} was not expected")]
    Unexpected(u8),
    #[error("a TLS record was longer than the protocol allows")]
    Overflow,
    #[error("a TLS record was malformed")]
    Decode,
    #[error("the peer sent the TLS alert {0}")]
    Alert(u8),
    /// The sealing key reached its confidentiality limit (or a sequence number its end).
    #[error("the TLS traffic keys are used up (AEAD limit), and a moved connection cannot update them")]
    Exhausted,
    /// Our side sent `close_notify`: nothing more can be written.
    #[error("the TLS connection was closed for writing")]
    Closed,
}

impl RecordError {
    /// The alert that tells the peer (None: none, or `close_notify`, see [`RecordLayer::fail`]).
    fn alert(self) -> Option<u8> {
        match self {
            RecordError::Decrypt => Some(ALERT_BAD_RECORD_MAC),
            RecordError::Handshake(_) | RecordError::Unexpected(_) => Some(ALERT_UNEXPECTED_MESSAGE),
            RecordError::Overflow => Some(ALERT_RECORD_OVERFLOW),
            RecordError::Decode => Some(ALERT_DECODE_ERROR),
            RecordError::KeyUpdate | RecordError::Exhausted => Some(ALERT_CLOSE_NOTIFY),
            RecordError::Alert(_) | RecordError::Closed => None,
        }
    }
}

/// What [`RecordLayer::read_plain`] gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// This many bytes of plaintext.
    Data(usize),
    /// No whole record is buffered: read more ciphertext ([`RecordLayer::read_tls`]).
    NeedMore,
    /// The peer sent `close_notify`: the end of its data.
    End,
}

/// The record layer of one moved connection (see the module's documentation).
pub struct RecordLayer {
    version: Version,
    aead: Aead,
    rx: TrafficKeys,
    tx: TrafficKeys,
    open_key: LessSafeKey,
    seal_key: LessSafeKey,
    seal_limit: u64,
    /// Ciphertext received: `inbuf[in_start..in_end]` is not consumed yet; the record at
    /// `in_start` may have been opened in place, its plaintext `inbuf[plain.0..plain.1]` is
    /// then what is left to give, and the record ends at `record_end` (0: no record is open).
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    plain: (usize, usize),
    record_end: usize,
    /// Sealed records: `outbuf[out_pos..]` is not written yet.
    outbuf: Vec<u8>,
    out_pos: usize,
    /// The peer sent `close_notify`; we did.
    rx_closed: bool,
    tx_closed: bool,
    failed: Option<RecordError>,
    empty_run: u8,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("version", &self.version)
            .field("aead", &self.aead)
            .field("rx_seq", &self.rx.seq)
            .field("tx_seq", &self.tx.seq)
            .finish_non_exhaustive()
    }
}

/// The parts a record layer is made of and gives back ([`RecordLayer::new`], [`RecordLayer::into_parts`]).
#[derive(Debug)]
pub struct LayerParts {
    pub version: Version,
    pub aead: Aead,
    pub rx: TrafficKeys,
    pub tx: TrafficKeys,
    /// Ciphertext received and not opened yet (a record not whole, or more).
    pub received: Vec<u8>,
    /// Sealed records not written yet.
    pub unsent: Vec<u8>,
    pub rx_closed: bool,
    pub tx_closed: bool,
}

impl RecordLayer {
    pub fn new(parts: LayerParts) -> Result<Self, KeyError> {
        let LayerParts { version, aead, rx, tx, received, unsent, rx_closed, tx_closed } = parts;
        let open_key = less_safe_key(aead, &rx)?;
        let seal_key = less_safe_key(aead, &tx)?;
        let in_end = received.len();
        Ok(RecordLayer {
            version,
            aead,
            open_key,
            seal_key,
            seal_limit: aead.confidentiality_limit(version),
            rx,
            tx,
            inbuf: received,
            in_start: 0,
            in_end,
            plain: (0, 0),
            record_end: 0,
            outbuf: unsent,
            out_pos: 0,
            rx_closed,
            tx_closed,
            failed: None,
            empty_run: 0,
        })
    }

    /// Everything needed to continue the connection elsewhere. Plaintext opened and not read yet
    /// must have been read first ([`RecordLayer::has_plaintext`]): it is not among the parts.
    pub fn into_parts(mut self) -> LayerParts {
        debug_assert!(!self.has_plaintext(), "plaintext left behind");
        self.finish_record();
        let received = self.inbuf[self.in_start..self.in_end].to_vec();
        let unsent = self.outbuf[self.out_pos..].to_vec();
        LayerParts {
            version: self.version,
            aead: self.aead,
            rx: self.rx.clone(),
            tx: self.tx.clone(),
            received,
            unsent,
            rx_closed: self.rx_closed,
            tx_closed: self.tx_closed,
        }
    }

    #[cfg_attr(not(test), allow(dead_code, reason = "for the hand-over's status"))]
    pub fn version(&self) -> Version {
        self.version
    }

    #[cfg_attr(not(test), allow(dead_code, reason = "for the hand-over's status"))]
    pub fn aead(&self) -> Aead {
        self.aead
    }

    /// Plaintext of an opened record is waiting to be read.
    pub fn has_plaintext(&self) -> bool {
        self.plain.0 < self.plain.1
    }

    /// The connection failed (the error `read_plain` or `write_plain` returned).
    pub fn failure(&self) -> Option<RecordError> {
        self.failed
    }

    /// Reads ciphertext from `rd` into the buffer: at least what the record being received
    /// still lacks fits. Ok(0): `rd` ended.
    pub fn read_tls(&mut self, rd: &mut dyn Read) -> io::Result<usize> {
        self.finish_record();
        // Only a record not whole yet is buffered (else `read_plain` would have opened it): move
        // it to the front, and make room for all of it.
        let buffered = self.in_end - self.in_start;
        if self.in_start > 0 {
            let shift = self.in_start;
            self.inbuf.copy_within(shift..self.in_end, 0);
            self.in_start = 0;
            self.in_end = buffered;
            // (Plaintext not read yet moves along: `read_tls` is called with none, but may be.)
            if self.has_plaintext() {
                self.plain = (self.plain.0 - shift, self.plain.1 - shift);
                self.record_end -= shift;
            }
        }
        let whole = match self.header_at(0) {
            Some((_, len)) => HEADER_LEN + len.min(MAX_CIPHERTEXT_TLS12),
            None => HEADER_LEN,
        };
        let size = whole.max(KEEP).max(buffered + 1);
        if self.inbuf.len() < size {
            self.inbuf.resize(size, 0);
        }
        match rd.read(&mut self.inbuf[self.in_end..]) {
            Ok(n) => {
                self.in_end += n;
                Ok(n)
            }
            Err(e) => {
                // The peer has sent nothing more: a pause, when a connection is let go of what
                // a burst made its buffers grow to (not while it streams: no allocation per record).
                if e.kind() == io::ErrorKind::WouldBlock && self.in_start == self.in_end {
                    if self.inbuf.len() > KEEP {
                        self.inbuf = Vec::new();
                        self.in_start = 0;
                        self.in_end = 0;
                    }
                    if !self.wants_write() && self.outbuf.capacity() > KEEP {
                        self.outbuf = Vec::new();
                        self.out_pos = 0;
                    }
                }
                Err(e)
            }
        }
    }

    /// The content type and length of the record whose header starts at `at`, once buffered.
    fn header_at(&self, at: usize) -> Option<(u8, usize)> {
        let h = self.inbuf.get(at..at + HEADER_LEN).filter(|_| at + HEADER_LEN <= self.in_end)?;
        Some((h[0], usize::from(u16::from_be_bytes([h[3], h[4]]))))
    }

    /// Forgets the record whose plaintext was all read.
    fn finish_record(&mut self) {
        if !self.has_plaintext() && self.record_end != 0 {
            self.in_start = self.record_end;
            self.record_end = 0;
            self.plain = (0, 0);
        }
    }

    /// Gives plaintext from the records buffered, opening the next one when the last is read.
    /// An error ends the connection: the alert that says why is queued for [`RecordLayer::write_tls`].
    pub fn read_plain(&mut self, buf: &mut [u8]) -> Result<Opened, RecordError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        loop {
            if self.has_plaintext() {
                let n = buf.len().min(self.plain.1 - self.plain.0);
                buf[..n].copy_from_slice(&self.inbuf[self.plain.0..self.plain.0 + n]);
                self.plain.0 += n;
                self.finish_record();
                return Ok(Opened::Data(n));
            }
            self.finish_record();
            if self.rx_closed {
                return Ok(Opened::End);
            }
            match self.open_next() {
                Ok(true) => {}
                Ok(false) => return Ok(Opened::NeedMore),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Opens the record at the front in place (Ok(false): none is whole yet).
    fn open_next(&mut self) -> Result<bool, RecordError> {
        let Some((typ, len)) = self.header_at(self.in_start) else {
            return Ok(false);
        };
        let max = match self.version {
            Version::Tls13 => MAX_CIPHERTEXT_TLS13,
            Version::Tls12 => MAX_CIPHERTEXT_TLS12,
        };
        if len > max {
            return Err(RecordError::Overflow);
        }
        let start = self.in_start;
        let end = start + HEADER_LEN + len;
        if end > self.in_end {
            return Ok(false);
        }
        if self.rx.seq >= SEQ_SOFT_LIMIT {
            return Err(RecordError::Exhausted);
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&self.inbuf[start..start + HEADER_LEN]);
        let seq = self.rx.seq;
        let payload = &mut self.inbuf[start + HEADER_LEN..end];
        let (content_type, plain_start, plain_len) = match self.version {
            Version::Tls13 => {
                if typ != CONTENT_APPLICATION_DATA {
                    return Err(RecordError::Unexpected(typ));
                }
                let nonce = Nonce::assume_unique_for_key(self.rx.nonce(seq));
                let inner =
                    self.open_key.open_in_place(nonce, Aad::from(header), payload).map_err(|_| RecordError::Decrypt)?;
                // TLSInnerPlaintext: content, its real type, zero padding.
                let Some(at) = inner.iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::Unexpected(0));
                };
                (inner[at], start + HEADER_LEN, at)
            }
            Version::Tls12 => {
                let explicit = if self.aead == Aead::Chacha20Poly1305 { 0 } else { GCM_EXPLICIT_LEN };
                if len < explicit + TAG_LEN {
                    return Err(RecordError::Decrypt);
                }
                let nonce = if explicit == 0 {
                    self.rx.nonce(seq)
                } else {
                    let mut n = [0u8; aead::NONCE_LEN];
                    n[..4].copy_from_slice(&self.rx.iv[..4]);
                    n[4..].copy_from_slice(&payload[..GCM_EXPLICIT_LEN]);
                    n
                };
                let aad = tls12_aad(seq, typ, [header[1], header[2]], len - explicit - TAG_LEN);
                let plain = self
                    .open_key
                    .open_within(Nonce::assume_unique_for_key(nonce), Aad::from(aad), payload, explicit..)
                    .map_err(|_| RecordError::Decrypt)?;
                (typ, start + HEADER_LEN, plain.len())
            }
        };
        self.rx.seq += 1;
        if plain_len > MAX_FRAGMENT {
            return Err(RecordError::Overflow);
        }
        let content = &self.inbuf[plain_start..plain_start + plain_len];
        match content_type {
            CONTENT_APPLICATION_DATA => {
                if plain_len == 0 {
                    self.empty_run += 1;
                    if self.empty_run > MAX_EMPTY_RUN {
                        return Err(RecordError::Unexpected(CONTENT_APPLICATION_DATA));
                    }
                    self.in_start = end;
                    return Ok(true);
                }
                self.empty_run = 0;
                self.plain = (plain_start, plain_start + plain_len);
                self.record_end = end;
                Ok(true)
            }
            CONTENT_ALERT => {
                let &[level, description] = content else {
                    return Err(RecordError::Decode);
                };
                self.in_start = end;
                match description {
                    ALERT_CLOSE_NOTIFY => {
                        // "Any data received after a closure alert has been received MUST be ignored."
                        self.rx_closed = true;
                        self.in_start = self.in_end;
                        Ok(true)
                    }
                    // TLS 1.3 outlaws warnings but `user_canceled`; TLS 1.2 ignores them (as rustls).
                    ALERT_USER_CANCELED if level == ALERT_WARNING => Ok(true),
                    _ if level == ALERT_WARNING && self.version == Version::Tls12 => Ok(true),
                    _ if level == ALERT_WARNING || level == ALERT_FATAL => Err(RecordError::Alert(description)),
                    _ => Err(RecordError::Decode),
                }
            }
            CONTENT_HANDSHAKE => match content.first() {
                Some(&HANDSHAKE_KEY_UPDATE) if self.version == Version::Tls13 => Err(RecordError::KeyUpdate),
                Some(&t) => Err(RecordError::Handshake(t)),
                None => Err(RecordError::Decode),
            },
            CONTENT_CHANGE_CIPHER_SPEC => Err(RecordError::Unexpected(CONTENT_CHANGE_CIPHER_SPEC)),
            other => Err(RecordError::Unexpected(other)),
        }
    }

    /// Ends the connection for `e`: the alert saying why is queued (sealed, if the key may still
    /// seal), and every later call returns `e`.
    fn fail(&mut self, e: RecordError) -> RecordError {
        self.failed = Some(e);
        self.plain = (0, 0);
        if let Some(alert) = e.alert() {
            if !self.tx_closed {
                let level = if alert == ALERT_CLOSE_NOTIFY { ALERT_WARNING } else { ALERT_FATAL };
                self.seal_record(CONTENT_ALERT, &[level, alert]);
                self.tx_closed = true;
            }
        }
        e
    }

    /// Seals up to `data.len()` bytes of plaintext into records of at most [`MAX_FRAGMENT`]
    /// bytes: how much was taken (0 while [`OUT_LIMIT`] bytes of records wait to be written).
    pub fn write_plain(&mut self, data: &[u8]) -> Result<usize, RecordError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.tx_closed {
            return Err(RecordError::Closed);
        }
        let mut taken = 0;
        while taken < data.len() && self.outbuf.len() - self.out_pos < OUT_LIMIT {
            if self.tx.seq >= self.seal_limit {
                if taken > 0 {
                    break;
                }
                return Err(self.fail(RecordError::Exhausted));
            }
            let n = (data.len() - taken).min(MAX_FRAGMENT);
            self.seal_record(CONTENT_APPLICATION_DATA, &data[taken..taken + n]);
            taken += n;
        }
        Ok(taken)
    }

    /// Seals one record (`content` at most [`MAX_FRAGMENT`] bytes) at the end of the output.
    fn seal_record(&mut self, typ: u8, content: &[u8]) {
        if self.out_pos == self.outbuf.len() {
            self.outbuf.clear();
            self.out_pos = 0;
        }
        let seq = self.tx.seq;
        self.tx.seq += 1;
        let nonce = self.tx.nonce(seq);
        let start = self.outbuf.len();
        match self.version {
            Version::Tls13 => {
                let len = content.len() + 1 + TAG_LEN;
                let header = record_header(CONTENT_APPLICATION_DATA, len);
                self.outbuf.extend_from_slice(&header);
                self.outbuf.extend_from_slice(content);
                self.outbuf.push(typ);
                let tag = self
                    .seal_key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(header),
                        &mut self.outbuf[start + HEADER_LEN..],
                    )
                    .expect("a record is far below the AEAD's length limit");
                self.outbuf.extend_from_slice(tag.as_ref());
            }
            Version::Tls12 => {
                let explicit = if self.aead == Aead::Chacha20Poly1305 { 0 } else { GCM_EXPLICIT_LEN };
                let len = explicit + content.len() + TAG_LEN;
                self.outbuf.extend_from_slice(&record_header(typ, len));
                self.outbuf.extend_from_slice(&nonce[aead::NONCE_LEN - explicit..]);
                self.outbuf.extend_from_slice(content);
                let aad = tls12_aad(seq, typ, [3, 3], content.len());
                let tag = self
                    .seal_key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(aad),
                        &mut self.outbuf[start + HEADER_LEN + explicit..],
                    )
                    .expect("a record is far below the AEAD's length limit");
                self.outbuf.extend_from_slice(tag.as_ref());
            }
        }
    }

    /// Sealed records wait to be written.
    pub fn wants_write(&self) -> bool {
        self.out_pos < self.outbuf.len()
    }

    /// Writes sealed records to `wr` (one write): how many bytes it took.
    pub fn write_tls(&mut self, wr: &mut dyn Write) -> io::Result<usize> {
        if !self.wants_write() {
            return Ok(0);
        }
        let n = wr.write(&self.outbuf[self.out_pos..])?;
        self.out_pos += n;
        if self.out_pos == self.outbuf.len() {
            self.out_pos = 0;
            self.outbuf.clear();
        }
        Ok(n)
    }

    /// Queues `close_notify` (once): nothing is written after it.
    pub fn send_close_notify(&mut self) {
        if !self.tx_closed && self.failed.is_none() {
            self.seal_record(CONTENT_ALERT, &[ALERT_WARNING, ALERT_CLOSE_NOTIFY]);
            self.tx_closed = true;
        }
    }

    #[cfg_attr(not(test), allow(dead_code, reason = "for the hand-over's status"))]
    /// The peer sent `close_notify`.
    pub fn peer_closed(&self) -> bool {
        self.rx_closed
    }

    /// The capacities of the input and output buffers.
    #[cfg(test)]
    pub fn capacities(&self) -> (usize, usize) {
        (self.inbuf.capacity(), self.outbuf.capacity())
    }

    /// Seals a record of any content type (the tests play a misbehaving peer with it).
    #[cfg(test)]
    pub fn seal_raw(&mut self, typ: u8, content: &[u8]) {
        self.seal_record(typ, content);
    }

    /// The other end of this connection: the same keys, each direction's swapped (the tests
    /// play the client with it).
    #[cfg(test)]
    pub fn mirror(&self) -> RecordLayer {
        RecordLayer::new(LayerParts {
            version: self.version,
            aead: self.aead,
            rx: self.tx.clone(),
            tx: self.rx.clone(),
            received: Vec::new(),
            unsent: Vec::new(),
            rx_closed: false,
            tx_closed: false,
        })
        .expect("keys that made a layer")
    }
}

fn record_header(typ: u8, len: usize) -> [u8; HEADER_LEN] {
    let len = u16::try_from(len).expect("a record's length fits its header");
    let [hi, lo] = len.to_be_bytes();
    [typ, 3, 3, hi, lo]
}

/// TLS 1.2's additional data: sequence number, type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, version: [u8; 2], plain_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&version);
    aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
    aad
}
