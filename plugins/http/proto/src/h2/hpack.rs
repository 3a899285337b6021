//! HPACK (RFC 7541) for one connection: a decoder on the `loona-hpack` crate whose output is
//! bounded (the HPACK bomb), and an encoder of response heads on the static table alone.
//!
//! The crate decodes a whole header block and hands each field to a callback, borrowed from its
//! dynamic table where it can be: the bound is kept there. A field list over the bound is not
//! kept, but the block is still decoded to its end, so the dynamic table stays the peer's.

use std::borrow::Cow;

use loona_hpack::Decoder as HpackDecoder;

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
        let result = self.decode_with(block, |name, value| fields.push((name.to_vec(), value.to_vec())));
        if result.is_err() {
            fields.clear();
        }
        result
    }

    /// Decodes a whole header block, handing each field to `field` as it comes (borrowed: the
    /// caller keeps what it needs, no list is built). Past the bound no field is handed over,
    /// and the result says [`DecodeError::TooLarge`]: what was handed over is to be dropped.
    pub fn decode_with(&mut self, block: &[u8], mut field: impl FnMut(&[u8], &[u8])) -> Result<(), DecodeError> {
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
                    field(&name, &value);
                }
            })
            .map_err(|_| DecodeError::Compression)?;
        scan.finish(table);
        if over {
            return Err(DecodeError::TooLarge);
        }
        Ok(())
    }
}

/// The sending side's HPACK state. Responses are encoded as nginx encodes them: the static
/// table's entries where one matches (`:status 200` is one byte, a known name its index), the
/// rest as literals without indexing, so the dynamic table stays empty. No search of a dynamic
/// table per field and no table to maintain: `loona-hpack`'s encoder spent more time searching
/// its table than the rest of a small response took (`bash bench/profile.sh h2`). Values are not
/// Huffman-coded (nor are they by that encoder).
#[derive(Debug, Default)]
pub struct Encoder {
    /// A table size the peer lowered to, to signal at the start of the next block.
    pub(crate) size_update: Option<usize>,
}

/// The static table's index of `name` (any case), if it has it (RFC 7541 Appendix A; of the
/// names listed twice or more, the first index).
fn static_name(name: &[u8]) -> Option<usize> {
    let mut lower = [0u8; 32];
    let lower = lower.get_mut(..name.len())?;
    for (l, b) in lower.iter_mut().zip(name) {
        *l = b.to_ascii_lowercase();
    }
    Some(match &*lower {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-charset" => 15,
        b"accept-encoding" => 16,
        b"accept-language" => 17,
        b"accept-ranges" => 18,
        b"accept" => 19,
        b"access-control-allow-origin" => 20,
        b"age" => 21,
        b"allow" => 22,
        b"authorization" => 23,
        b"cache-control" => 24,
        b"content-disposition" => 25,
        b"content-encoding" => 26,
        b"content-language" => 27,
        b"content-length" => 28,
        b"content-location" => 29,
        b"content-range" => 30,
        b"content-type" => 31,
        b"cookie" => 32,
        b"date" => 33,
        b"etag" => 34,
        b"expect" => 35,
        b"expires" => 36,
        b"from" => 37,
        b"host" => 38,
        b"if-match" => 39,
        b"if-modified-since" => 40,
        b"if-none-match" => 41,
        b"if-range" => 42,
        b"if-unmodified-since" => 43,
        b"last-modified" => 44,
        b"link" => 45,
        b"location" => 46,
        b"max-forwards" => 47,
        b"proxy-authenticate" => 48,
        b"proxy-authorization" => 49,
        b"range" => 50,
        b"referer" => 51,
        b"refresh" => 52,
        b"retry-after" => 53,
        b"server" => 54,
        b"set-cookie" => 55,
        b"strict-transport-security" => 56,
        b"transfer-encoding" => 57,
        b"user-agent" => 58,
        b"vary" => 59,
        b"via" => 60,
        b"www-authenticate" => 61,
        _ => return None,
    })
}

impl Encoder {
    /// The peer's SETTINGS_HEADER_TABLE_SIZE. The encoder inserts nothing, but the table size
    /// it may use still follows the peer's setting (RFC 7541 §4.2), signalled in the next block.
    pub fn set_peer_table_size(&mut self, size: u32) {
        // Signalled even when unchanged: harmless, and simpler than tracking the last one.
        self.size_update = Some((size as usize).min(DEFAULT_TABLE_SIZE));
    }

    /// Appends the header block of `fields` to `out`: [`Encoder::status`] and
    /// [`Encoder::field`] for each, as they come.
    pub fn encode<'b>(&mut self, fields: impl IntoIterator<Item = (&'b [u8], &'b [u8])>, out: &mut Vec<u8>) {
        self.start(out);
        for (name, value) in fields {
            self.field(name, value, out);
        }
    }

    /// Opens a header block: the table size update the peer's SETTINGS asked for, if any.
    pub fn start(&mut self, out: &mut Vec<u8>) {
        if let Some(size) = self.size_update.take() {
            // Dynamic Table Size Update (RFC 7541 §6.3): 001xxxxx, a 5-bit prefix integer.
            encode_integer(size, 5, 0x20, out);
        }
    }

    /// `:status` (100 to 999): one byte for the seven codes the static table has.
    pub fn status(&mut self, code: u16, out: &mut Vec<u8>) {
        let index = match code {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => {
                let code = code.clamp(100, 999);
                // Literal without indexing, name `:status` (index 8), a 3-byte value.
                out.extend_from_slice(&[0x08, 3]);
                out.extend_from_slice(&[
                    b'0' + (code / 100) as u8,
                    b'0' + (code / 10 % 10) as u8,
                    b'0' + (code % 10) as u8,
                ]);
                return;
            }
        };
        out.push(0x80 | index);
    }

    /// One field, literal without indexing (RFC 7541 §6.2.2): the name by its static index when
    /// it has one, else written out in lowercase; the value as it is.
    pub fn field(&mut self, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        match static_name(name) {
            Some(index) => encode_integer(index, 4, 0x00, out),
            None => {
                out.push(0x00);
                encode_integer(name.len(), 7, 0x00, out);
                out.extend(name.iter().map(u8::to_ascii_lowercase));
            }
        }
        encode_integer(value.len(), 7, 0x00, out);
        out.extend_from_slice(value);
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
    use loona_hpack::Encoder as HpackEncoder;

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
    fn response_heads_use_the_static_table_and_leave_the_dynamic_one_empty() {
        let mut enc = Encoder::default();
        let mut dec = Decoder::new(16 * 1024);
        let mut got = Vec::new();
        let mut block = Vec::new();
        enc.start(&mut block);
        enc.status(200, &mut block);
        assert_eq!(block, [0x88], ":status 200 is static entry 8");
        enc.field(b"Content-Length", b"13", &mut block);
        assert_eq!(block[1..], [0x0f, 0x0d, 2, b'1', b'3'], "content-length by its index, 28");
        enc.field(b"Server", b"host", &mut block);
        enc.field(b"X-Custom", b"A Value", &mut block);
        assert_eq!(block[block.len() - 18..block.len() - 9], [0, 8, b'x', b'-', b'c', b'u', b's', b't', b'o']);
        dec.decode(&block, &mut got).unwrap();
        let want = fields(&[(":status", "200"), ("content-length", "13"), ("server", "host"), ("x-custom", "A Value")]);
        assert_eq!(got, want);
        // Every code: the seven of the static table by index, the others as literals.
        for code in [100, 200, 204, 206, 301, 304, 400, 404, 431, 500, 999] {
            let mut block = Vec::new();
            enc.status(code, &mut block);
            assert_eq!(block.len(), if [200, 204, 206, 304, 400, 404, 500].contains(&code) { 1 } else { 5 });
            dec.decode(&block, &mut got).unwrap();
            assert_eq!(got, fields(&[(":status", &code.to_string())]));
        }
        // Each name of the static table by its index; a name that is not there, in lowercase.
        let names =
            [":authority", "accept-ranges", "content-type", "ETag", "Last-Modified", "vary", "www-authenticate"];
        for (name, index) in names.into_iter().zip([1, 18, 31, 34, 44, 59, 61]) {
            assert_eq!(static_name(name.as_bytes()), Some(index), "{name}");
        }
        assert_eq!(static_name(b"x-content-type"), None);
        assert_eq!(static_name(&[b'a'; 40]), None);
        // Nothing was inserted: a reference to the first dynamic entry fails.
        assert_eq!(dec.decode(&[0x80 | 62], &mut got), Err(DecodeError::Compression));
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
