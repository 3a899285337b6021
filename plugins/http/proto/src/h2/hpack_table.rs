//! A copy of an HPACK dynamic table (RFC 7541 §2.3.2, §4), kept beside the `loona-hpack`
//! decoder (whose table is private) so that a connection handed over to another worker takes
//! its table along: the new worker rebuilds it with the same entries, in order
//! (`h2::handover`). The response encoder (`hpack::Encoder`) inserts nothing, so it has none.
//!
//! The copy follows the table's rules: an entry costs its name, value and 32 bytes; the oldest
//! entries are evicted to make room; an entry larger than the table empties it and is not added;
//! lowering the size evicts. The decoder's side learns what a header block added by scanning
//! the block's representations ([`BlockScan`]) as the decoder hands out its fields.

use std::collections::VecDeque;

/// One dynamic table's entries, newest first, with its size and maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynTable {
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl DynTable {
    pub fn new(max: usize) -> DynTable {
        DynTable { entries: VecDeque::new(), size: 0, max }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// The entries, oldest first: the order they are added in to rebuild the table.
    pub fn oldest_first(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries.iter().rev().map(|(n, v)| (&n[..], &v[..]))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        let cost = name.len() + value.len() + 32;
        if cost > self.max {
            self.entries.clear();
            self.size = 0;
            return;
        }
        while self.size + cost > self.max {
            self.evict();
        }
        self.size += cost;
        self.entries.push_front((name.to_vec(), value.to_vec()));
    }

    pub fn set_max(&mut self, max: usize) {
        self.max = max;
        while self.size > self.max {
            self.evict();
        }
    }

    fn evict(&mut self) {
        if let Some((n, v)) = self.entries.pop_back() {
            self.size -= n.len() + v.len() + 32;
        }
    }
}

/// Walks a header block's representations (RFC 7541 §6) in step with the decoder: before each
/// decoded field, [`BlockScan::next_field`] applies the table size updates that precede it and
/// says whether the field is added to the table (literal with incremental indexing).
pub struct BlockScan<'a> {
    block: &'a [u8],
    at: usize,
}

impl<'a> BlockScan<'a> {
    pub fn new(block: &'a [u8]) -> BlockScan<'a> {
        BlockScan { block, at: 0 }
    }

    /// The next field's representation: true when it adds to the table. Size updates on the
    /// way are applied to `table`. False at the end or on anything malformed (the decoder then
    /// fails the block, and the connection ends).
    pub fn next_field(&mut self, table: &mut DynTable) -> bool {
        loop {
            let Some(&first) = self.block.get(self.at) else { return false };
            if first & 0x80 != 0 {
                self.integer(7);
                return false;
            }
            if first & 0xc0 == 0x40 {
                return self.literal(6).is_some();
            }
            if first & 0xe0 == 0x20 {
                match self.integer(5) {
                    Some(size) => table.set_max(size),
                    None => return false,
                }
                continue;
            }
            // Literal without indexing (0000) or never indexed (0001).
            self.literal(4);
            return false;
        }
    }

    /// The size updates after the last field.
    pub fn finish(mut self, table: &mut DynTable) {
        while let Some(&first) = self.block.get(self.at) {
            if first & 0xe0 != 0x20 {
                return;
            }
            match self.integer(5) {
                Some(size) => table.set_max(size),
                None => return,
            }
        }
    }

    fn literal(&mut self, prefix: u8) -> Option<()> {
        if self.integer(prefix)? == 0 {
            self.string()?;
        }
        self.string()
    }

    fn string(&mut self) -> Option<()> {
        let len = self.integer(7)?;
        self.at = self.at.checked_add(len).filter(|&end| end <= self.block.len())?;
        Some(())
    }

    /// An integer with an `n`-bit prefix (RFC 7541 §5.1).
    fn integer(&mut self, n: u8) -> Option<usize> {
        let max = (1usize << n) - 1;
        let mut value = (*self.block.get(self.at)? as usize) & max;
        self.at += 1;
        if value < max {
            return Some(value);
        }
        let mut shift = 0u32;
        loop {
            let b = *self.block.get(self.at)?;
            self.at += 1;
            value = value.checked_add(((b & 0x7f) as usize).checked_shl(shift)?)?;
            if b & 0x80 == 0 {
                return Some(value);
            }
            shift += 7;
            if shift > 28 {
                return None;
            }
        }
    }
}

/// A header block that adds `entries` (oldest first) to an empty decoder's table sized `max`:
/// the replacement's decoder reads it to hold what the old one held.
pub fn rebuild_block<'a>(max: usize, entries: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut block = Vec::new();
    if max != super::hpack::DEFAULT_TABLE_SIZE {
        super::hpack::encode_integer(max, 5, 0x20, &mut block);
    }
    for (name, value) in entries {
        block.push(0x40);
        for s in [name, value] {
            super::hpack::encode_integer(s.len(), 7, 0, &mut block);
            block.extend_from_slice(s);
        }
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_evicts_the_oldest_and_empties_for_a_huge_entry() {
        let mut t = DynTable::new(100);
        t.add(b"a", b"1"); // 34
        t.add(b"b", b"2"); // 68
        t.add(b"c", b"3"); // 102 > 100: a goes
        assert_eq!(t.oldest_first().collect::<Vec<_>>(), [(&b"b"[..], &b"2"[..]), (&b"c"[..], &b"3"[..])]);
        t.set_max(40);
        assert_eq!(t.len(), 1);
        t.add(&[b'x'; 50], b"");
        assert!(t.is_empty(), "an entry over the maximum empties the table");
    }

    #[test]
    fn the_scan_sees_which_fields_are_indexed() {
        // Size update to 100, indexed :method GET, literal incremental new name, literal without
        // indexing (indexed name 4), never indexed new name.
        let mut block = vec![0x3f, 0x45, 0x82, 0x40, 1, b'x', 1, b'y', 0x04, 1, b'/', 0x10, 1, b'z', 1, b'w'];
        block.extend_from_slice(&[0x20]);
        let mut t = DynTable::new(4096);
        let mut scan = BlockScan::new(&block);
        assert!(!scan.next_field(&mut t));
        assert_eq!(t.max(), 100);
        assert!(scan.next_field(&mut t));
        assert!(!scan.next_field(&mut t));
        assert!(!scan.next_field(&mut t));
        assert!(!scan.next_field(&mut t), "the end");
        scan.finish(&mut t);
        assert_eq!(t.max(), 0, "the trailing size update");
        // Garbage never panics.
        for junk in [&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..], &[0x40, 0x7f], &[0x40, 0x05, b'a']] {
            let mut scan = BlockScan::new(junk);
            while scan.next_field(&mut t) {}
            scan.finish(&mut t);
        }
    }
}
