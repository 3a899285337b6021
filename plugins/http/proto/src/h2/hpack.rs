//! HPACK (RFC 7541) for one connection, on the `loona-hpack` crate: a decoder whose output is
//! bounded (the HPACK bomb) and an encoder that signals a smaller dynamic table when the peer
//! asks for one.
//!
//! The crate decodes a whole header block and hands each field to a callback, borrowed from its
//! dynamic table where it can be: the bound is kept there. A field list over the bound is not
//! kept, but the block is still decoded to its end, so the dynamic table stays the peer's.

use std::borrow::Cow;

use loona_hpack::{Decoder as HpackDecoder, Encoder as HpackEncoder};

use super::hpack_table::{BlockScan, DynTable};

/// The dynamic table size both sides start with (SETTINGS_HEADER_TABLE_SIZE's initial value).
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// A field's size as SETTINGS_MAX_HEADER_LIST_SIZE counts it (RFC 9113 §6.5.2): name, value and 32.
pub fn field_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// Why a header block was not decoded into a field list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// Not valid HPACK: COMPRESSION_ERROR, the connection ends (§4.3).
    Compression,
    /// Valid, but the decoded list is over the bound: the request is refused (431), the
    /// connection goes on.
    TooLarge,
}

/// The receiving side's HPACK state.
pub struct Decoder {
    pub(crate) inner: HpackDecoder<'static>,
    pub(crate) max_list: usize,
    /// A copy of the dynamic table, for a hand-over.
    pub(crate) table: DynTable,
}

impl Decoder {
    /// `max_list`: the largest decoded field list ([`field_size`] summed), the local
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub fn new(max_list: usize) -> Decoder {
        let mut inner = HpackDecoder::new();
        // The local SETTINGS_HEADER_TABLE_SIZE stays at its default: a size update above it is
        // a decoding error.
        inner.set_max_allowed_table_size(DEFAULT_TABLE_SIZE);
        Decoder { inner, max_list, table: DynTable::new(DEFAULT_TABLE_SIZE) }
    }

    /// Decodes a whole header block into `fields` (cleared first).
    pub fn decode(&mut self, block: &[u8], fields: &mut Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), DecodeError> {
        fields.clear();
        let mut size = 0usize;
        let max = self.max_list;
        let mut over = false;
        let (table, mut scan) = (&mut self.table, BlockScan::new(block));
        self.inner
            .decode_with_cb(block, |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                if scan.next_field(table) {
                    table.add(&name, &value);
                }
                size = size.saturating_add(field_size(&name, &value));
                if size > max {
                    over = true;
                }
                if !over {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|_| DecodeError::Compression)?;
        scan.finish(table);
        if over {
            fields.clear();
            return Err(DecodeError::TooLarge);
        }
        Ok(())
    }
}

/// The sending side's HPACK state.
pub struct Encoder {
    pub(crate) inner: HpackEncoder<'static>,
    /// A table size the peer lowered to, to signal at the start of the next block.
    pub(crate) size_update: Option<usize>,
    /// A copy of the dynamic table, for a hand-over.
    pub(crate) table: DynTable,
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder { inner: HpackEncoder::new(), size_update: None, table: DynTable::new(DEFAULT_TABLE_SIZE) }
    }
}

impl Encoder {
    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the encoder never uses more than the default.
    pub fn set_peer_table_size(&mut self, size: u32) {
        let size = (size as usize).min(DEFAULT_TABLE_SIZE);
        self.inner.set_max_table_size(size);
        self.table.set_max(size);
        // Signalled even when unchanged: harmless, and simpler than tracking the last one.
        self.size_update = Some(size);
    }

    /// Appends the header block of `fields` to `out`.
    pub fn encode<'b>(&mut self, fields: impl IntoIterator<Item = (&'b [u8], &'b [u8])>, out: &mut Vec<u8>) {
        if let Some(size) = self.size_update.take() {
            // Dynamic Table Size Update (RFC 7541 §6.3): 001xxxxx, a 5-bit prefix integer.
            encode_integer(size, 5, 0x20, out);
        }
        for field in fields {
            let at = out.len();
            // Writing into a Vec cannot fail.
            let _ = self.inner.encode_header_into(field, out);
            // A literal with incremental indexing and a new name (the only one the encoder
            // writes) is the one representation whose first byte is 0x40: it was added.
            if out.get(at) == Some(&0x40) {
                self.table.add(field.0, field.1);
            }
        }
    }
}

/// An HPACK integer (RFC 7541 §5.1) with an `n`-bit prefix, `flags` in the prefix's high bits.
pub(crate) fn encode_integer(mut value: usize, n: u8, flags: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128 + 128) as u8);
        value /= 128;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter().map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec())).collect()
    }

    #[test]
    fn encoded_blocks_decode_to_the_same_fields_over_a_connection() {
        let mut enc = Encoder::default();
        let mut dec = Decoder::new(16 * 1024);
        let mut got = Vec::new();
        for _ in 0..3 {
            let list = fields(&[(":status", "200"), ("content-type", "text/plain"), ("x-custom", "a value")]);
            let mut block = Vec::new();
            enc.encode(list.iter().map(|(n, v)| (&n[..], &v[..])), &mut block);
            dec.decode(&block, &mut got).unwrap();
            assert_eq!(got, list);
        }
    }

    #[test]
    fn a_lowered_table_size_is_signalled_first() {
        let mut enc = Encoder::default();
        enc.set_peer_table_size(0);
        let mut block = Vec::new();
        enc.encode([(&b"x-a"[..], &b"1"[..])], &mut block);
        assert_eq!(block[0], 0x20, "a size update to 0 opens the block");
        let mut dec = Decoder::new(1024);
        let mut got = Vec::new();
        dec.decode(&block, &mut got).unwrap();
        assert_eq!(got, fields(&[("x-a", "1")]));
        let mut big = Vec::new();
        encode_integer(5000, 5, 0x20, &mut big);
        assert_eq!(big, [0x3f, 0xe9, 0x26]);
    }

    #[test]
    fn an_hpack_bomb_is_bounded_and_the_table_stays_in_step() {
        // One 4000-byte field in the dynamic table, then referenced 1,000 times: 4 MB from a
        // block of about 5 KB.
        let mut enc = HpackEncoder::new();
        let value = vec![b'a'; 4000];
        let mut block = enc.encode([(&b"x-big"[..], &value[..])]);
        block.extend(std::iter::repeat_n(0x80 | 62, 1000));
        let mut dec = Decoder::new(64 * 1024);
        let mut got = Vec::new();
        assert_eq!(dec.decode(&block, &mut got), Err(DecodeError::TooLarge));
        assert!(got.is_empty());
        // The table still holds the field: the next block, one reference, decodes.
        dec.decode(&[0x80 | 62], &mut got).unwrap();
        assert_eq!(got, [(b"x-big".to_vec(), value)]);
    }

    #[test]
    fn invalid_hpack_is_a_compression_error() {
        let mut dec = Decoder::new(1024);
        let mut got = Vec::new();
        // Index 0 does not exist; index 70 is past both tables; a table size over the maximum.
        for block in [&[0x80][..], &[0x80 | 70], &[0x3f, 0xe9, 0x26, 0x82]] {
            assert_eq!(dec.decode(block, &mut got), Err(DecodeError::Compression), "{block:?}");
        }
    }
}
