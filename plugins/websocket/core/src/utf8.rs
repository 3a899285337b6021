//! A streaming UTF-8 validator: text arrives in pieces (TCP reads, fragments) and a code point may
//! be cut anywhere. It fails on the first byte that no continuation can make valid (std's
//! validator reports an incomplete tail apart from an invalid one, `Utf8Error::error_len`), and
//! keeps at most 3 bytes of an unfinished code point between pieces.

/// The validator's state between pieces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Utf8Validator {
    /// The start of a code point cut at the end of the last piece.
    pending: [u8; 4],
    pending_len: u8,
}

/// A byte that can never be part of valid UTF-8 here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the next piece of the text.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), InvalidUtf8> {
        if self.pending_len > 0 {
            let have = self.pending_len as usize;
            let width = char_width(self.pending[0]);
            let take = (width - have).min(bytes.len());
            self.pending[have..have + take].copy_from_slice(&bytes[..take]);
            let now = have + take;
            bytes = &bytes[take..];
            match std::str::from_utf8(&self.pending[..now]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() => {
                    // Still a valid prefix: the piece was shorter than the code point.
                    self.pending_len = now as u8;
                    return Ok(());
                }
                Err(_) => return Err(InvalidUtf8),
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_none() => {
                let tail = &bytes[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// The text ended: valid only when no code point is left unfinished. Resets the state.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.pending_len == 0;
        *self = Self::default();
        if complete {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }

    /// Forgets any unfinished code point.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// The length of the code point a lead byte starts (only called on a valid lead byte kept as
/// an incomplete tail, so 2 to 4).
fn char_width(lead: u8) -> usize {
    match lead {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}
