//! permessage-deflate (RFC 7692): the negotiation of the `Sec-WebSocket-Extensions` offer, and
//! the raw DEFLATE streams of compressed messages.
//!
//! What the server answers: the first offer it can honour, with `server_no_context_takeover`
//! always (one compressor serves the whole worker, reset after each message, so a connection
//! holds no compressor of its own), `client_no_context_takeover` when offered, and
//! `server_max_window_bits` echoed when offered. The compressor behind flate2's default backend
//! always uses a 32 KiB window: below 15 bits the server keeps its promise by sending that
//! connection's messages uncompressed (RFC 7692 lets any message go uncompressed). The
//! decompressor has a 32 KiB window, which reads any client window, so `client_max_window_bits`
//! is accepted and not answered. An offer with an unknown, repeated or invalid parameter is
//! declined, as the RFC requires; the next offer is tried.
//!
//! A compressed message is inflated as its frames arrive, into at most the message limit: a
//! message that inflates past it (a zip bomb) fails the connection with 1009 once the limit is
//! passed, never after inflating the rest.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::frame::ProtocolError;

/// The tail every compressed message had before the sender removed it (RFC 7692 section 7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Outgoing messages shorter than this go uncompressed: deflate would not shrink them.
pub const MIN_COMPRESS: usize = 64;

/// What was agreed on for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreed {
    /// The client resets its compressor after each message (so the server resets its
    /// decompressor).
    pub client_no_context_takeover: bool,
    /// The window the server promised to stay within (15 unless the client asked for less).
    pub server_max_window_bits: u8,
}

impl Agreed {
    /// Whether the server compresses its messages (only with its full window; see the module
    /// documentation).
    pub fn compress_out(&self) -> bool {
        self.server_max_window_bits == 15
    }

    /// The `Sec-WebSocket-Extensions` value of the response.
    pub fn response(&self) -> String {
        let mut r = String::from("permessage-deflate; server_no_context_takeover");
        if self.client_no_context_takeover {
            r.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits != 15 {
            r.push_str(&format!("; server_max_window_bits={}", self.server_max_window_bits));
        }
        r
    }
}

/// The first `permessage-deflate` offer of the `Sec-WebSocket-Extensions` values that can be
/// accepted; None declines compression.
pub fn negotiate<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Agreed> {
    values.into_iter().flat_map(|v| split_outside_quotes(v, b',')).find_map(accept_offer)
}

fn accept_offer(offer: &[u8]) -> Option<Agreed> {
    let mut parts = split_outside_quotes(offer, b';').map(<[u8]>::trim_ascii);
    if !parts.next()?.eq_ignore_ascii_case(b"permessage-deflate") {
        return None;
    }
    let mut agreed = Agreed { client_no_context_takeover: false, server_max_window_bits: 15 };
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for param in parts.filter(|p| !p.is_empty()) {
        let (name, value) = match param.iter().position(|&b| b == b'=') {
            Some(i) => (param[..i].trim_ascii(), Some(unquote(param[i + 1..].trim_ascii()))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return None;
        }
        match (&name[..], value) {
            (b"server_no_context_takeover", None) => {}
            (b"client_no_context_takeover", None) => agreed.client_no_context_takeover = true,
            (b"server_max_window_bits", Some(v)) => agreed.server_max_window_bits = window_bits(v)?,
            (b"client_max_window_bits", None) => {}
            (b"client_max_window_bits", Some(v)) => {
                window_bits(v)?;
            }
            _ => return None,
        }
        seen.push(name);
    }
    Some(agreed)
}

/// A window size parameter: 8 to 15, digits only, no leading zero.
fn window_bits(v: &[u8]) -> Option<u8> {
    match v {
        [d @ b'8'..=b'9'] => Some(d - b'0'),
        [b'1', d @ b'0'..=b'5'] => Some(10 + d - b'0'),
        _ => None,
    }
}

fn unquote(v: &[u8]) -> &[u8] {
    v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v)
}

/// `value` split at `sep` outside double quotes.
fn split_outside_quotes(value: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut in_quotes = false;
    value.split(move |&b| {
        if b == b'"' {
            in_quotes = !in_quotes;
        }
        b == sep && !in_quotes
    })
}

/// The decompressor of one connection's incoming messages.
pub struct Inflater {
    d: Decompress,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater { d: Decompress::new(false) }
    }
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater").field("total_in", &self.d.total_in()).finish()
    }
}

impl Inflater {
    /// Inflates `input`, part of a compressed message, appending to `out`; fails with
    /// [`ProtocolError::TooBig`] as soon as `out` would pass `max` bytes, and with
    /// [`ProtocolError::BadCompression`] on data that is not DEFLATE.
    pub fn inflate(&mut self, mut input: &[u8], out: &mut Vec<u8>, max: usize) -> Result<(), ProtocolError> {
        loop {
            if out.len() == out.capacity() {
                if out.len() > max {
                    return Err(ProtocolError::TooBig);
                }
                // At most one byte past the limit: that byte says the message is too big.
                let room = (max + 1 - out.len()).min(out.len().max(4096));
                out.reserve_exact(room);
            }
            let (in_before, out_before) = (self.d.total_in(), out.len());
            let status =
                self.d.decompress_vec(input, out, FlushDecompress::Sync).map_err(|_| ProtocolError::BadCompression)?;
            if out.len() > max {
                return Err(ProtocolError::TooBig);
            }
            input = &input[(self.d.total_in() - in_before) as usize..];
            if status == Status::StreamEnd {
                // A final block (BFINAL): what follows starts a new stream.
                self.d.reset(false);
                continue;
            }
            let progressed = self.d.total_in() != in_before || out.len() != out_before;
            if out.len() < out.capacity() && (input.is_empty() || !progressed) {
                return Ok(());
            }
        }
    }

    /// The message's last frame was inflated: the removed tail goes in, and without context
    /// takeover the stream starts over.
    pub fn finish(&mut self, out: &mut Vec<u8>, max: usize, reset: bool) -> Result<(), ProtocolError> {
        self.inflate(&TAIL, out, max)?;
        if reset {
            self.d.reset(false);
        }
        Ok(())
    }
}

/// The worker's compressor: each message is compressed on its own (no context takeover).
pub struct Deflater {
    c: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater { c: Compress::new(Compression::fast(), false) }
    }
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflater").finish()
    }
}

impl Deflater {
    /// `input` compressed as one message (sync flush, its tail removed) into `out`.
    pub fn compress(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(input.len() / 2 + 64);
        loop {
            let before = self.c.total_in();
            // Compressing into memory cannot fail: the only errors are of a misused stream.
            let _ = self.c.compress_vec(input, out, FlushCompress::Sync);
            input = &input[(self.c.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity().max(1024));
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        self.c.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(v: &str) -> Option<Agreed> {
        negotiate([v.as_bytes()])
    }

    #[test]
    fn negotiates_the_first_acceptable_offer() {
        let plain = Agreed { client_no_context_takeover: false, server_max_window_bits: 15 };
        assert_eq!(offer("permessage-deflate"), Some(plain));
        assert_eq!(offer("permessage-deflate; client_max_window_bits"), Some(plain));
        assert_eq!(offer("permessage-deflate; client_max_window_bits=\"10\""), Some(plain));
        let agreed = offer("permessage-deflate; client_no_context_takeover; server_max_window_bits=10").unwrap();
        assert_eq!(agreed, Agreed { client_no_context_takeover: true, server_max_window_bits: 10 });
        assert!(!agreed.compress_out());
        assert_eq!(
            agreed.response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
        );
        assert_eq!(plain.response(), "permessage-deflate; server_no_context_takeover");
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert_eq!(offer(bad), None, "{bad}");
        }
        // A declined offer, then an acceptable one, in one header or two.
        let two = "permessage-deflate; server_max_window_bits=99, permessage-deflate; client_no_context_takeover";
        assert!(offer(two).unwrap().client_no_context_takeover);
        assert_eq!(negotiate([&b"foo"[..], b"permessage-deflate"]), Some(plain));
    }

    #[test]
    fn round_trips_and_bounds_inflation() {
        let text = "a message that repeats, a message that repeats, a message that repeats".repeat(50);
        let mut deflater = Deflater::default();
        let mut wire = Vec::new();
        deflater.compress(text.as_bytes(), &mut wire);
        assert!(wire.len() < text.len() / 10, "{} bytes", wire.len());
        assert!(!wire.ends_with(&TAIL));
        // Inflated in pieces, twice (the compressor was reset: the second message stands alone).
        let mut inflater = Inflater::default();
        for _ in 0..2 {
            let mut out = Vec::new();
            for piece in wire.chunks(7) {
                inflater.inflate(piece, &mut out, 1 << 20).unwrap();
            }
            inflater.finish(&mut out, 1 << 20, true).unwrap();
            assert_eq!(out, text.as_bytes());
        }
        // Exactly the limit passes; one byte less fails.
        let mut out = Vec::new();
        inflater.inflate(&wire, &mut out, text.len()).unwrap();
        inflater.finish(&mut out, text.len(), true).unwrap();
        let mut out = Vec::new();
        let err = inflater
            .inflate(&wire, &mut out, text.len() - 1)
            .and_then(|()| inflater.finish(&mut out, text.len() - 1, true));
        assert_eq!(err, Err(ProtocolError::TooBig));
        assert!(out.len() <= text.len(), "stopped at the limit");
        // A bomb: 64 MiB of zeros in under 1 MiB, stopped at the 1 MiB limit.
        let zeros = vec![0u8; 64 << 20];
        let mut bomb = Vec::new();
        Deflater::default().compress(&zeros, &mut bomb);
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let mut out = Vec::new();
        assert_eq!(Inflater::default().inflate(&bomb, &mut out, 1 << 20), Err(ProtocolError::TooBig));
        assert!(out.capacity() <= 2 << 20, "{}", out.capacity());
        // Not DEFLATE.
        let mut out = Vec::new();
        assert_eq!(Inflater::default().inflate(&[0xFF; 16], &mut out, 1 << 20), Err(ProtocolError::BadCompression));
    }
}
