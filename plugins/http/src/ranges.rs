//! Byte ranges (RFC 9110 §14): parsing a `Range` header against a representation's length.

use std::ops::Range;

/// More ranges than this in one request are ignored (the whole file is sent): many tiny ranges
/// are a denial-of-service pattern, not a client need.
pub const MAX_RANGES: usize = 64;

/// What a `Range` header asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// No usable `Range` (absent, another unit, invalid syntax, too many): send it all.
    Whole,
    /// Valid, but no range overlaps the representation: 416.
    Unsatisfiable,
    /// The satisfiable ranges, end-exclusive, clamped to the length; overlapping or adjacent
    /// ones coalesced (then in ascending order), else in the order asked.
    Parts(Vec<Range<u64>>),
}

/// Parses `value` (a `Range` field value) for a representation of `len` bytes.
pub fn parse(value: &[u8], len: u64) -> Ranges {
    let Some(set) = strip_unit(value.trim_ascii()) else {
        return Ranges::Whole;
    };
    let mut parts = Vec::new();
    let mut any = false;
    for spec in set.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|s| !s.is_empty()) {
        any = true;
        if parts.len() >= MAX_RANGES {
            return Ranges::Whole;
        }
        let Some(dash) = spec.iter().position(|&b| b == b'-') else {
            return Ranges::Whole;
        };
        let (first, last) = (&spec[..dash], &spec[dash + 1..]);
        let range = match (number(first), number(last)) {
            // `-n`: the last n bytes.
            (None, Some(n)) if first.is_empty() => match n {
                0 => None,
                n => Some(len.saturating_sub(n)..len),
            },
            (Some(a), None) if last.is_empty() => Some(a..len),
            (Some(a), Some(b)) if a <= b => Some(a..b.saturating_add(1).min(len)),
            _ => return Ranges::Whole,
        };
        if let Some(r) = range.filter(|r| r.start < len && r.start < r.end) {
            parts.push(r);
        }
    }
    match (any, parts.is_empty()) {
        (false, _) => Ranges::Whole,
        (true, true) => Ranges::Unsatisfiable,
        (true, false) => Ranges::Parts(coalesce(parts)),
    }
}

fn strip_unit(value: &[u8]) -> Option<&[u8]> {
    let eq = value.iter().position(|&b| b == b'=')?;
    value[..eq].trim_ascii().eq_ignore_ascii_case(b"bytes").then(|| &value[eq + 1..])
}

fn number(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Merges overlapping or adjacent ranges; ranges that do not touch keep the order asked.
fn coalesce(parts: Vec<Range<u64>>) -> Vec<Range<u64>> {
    let mut sorted = parts.clone();
    sorted.sort_by_key(|r| r.start);
    if sorted.windows(2).all(|w| w[0].end < w[1].start) {
        return parts;
    }
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str, len: u64) -> Ranges {
        parse(v.as_bytes(), len)
    }

    fn one(start: u64, end: u64) -> Ranges {
        Ranges::Parts(std::iter::once(start..end).collect())
    }

    fn parts(v: &[Range<u64>]) -> Ranges {
        Ranges::Parts(v.to_vec())
    }

    #[test]
    fn single_ranges() {
        assert_eq!(p("bytes=0-0", 10), one(0, 1));
        assert_eq!(p("bytes=2-5", 10), one(2, 6));
        assert_eq!(p("bytes=2-", 10), one(2, 10));
        assert_eq!(p("bytes=-3", 10), one(7, 10));
        assert_eq!(p("bytes=-30", 10), one(0, 10));
        assert_eq!(p("bytes=5-100", 10), one(5, 10));
        assert_eq!(p("Bytes = 1-2", 10), one(1, 3));
        assert_eq!(p("bytes=9-9", 10), one(9, 10));
    }

    #[test]
    fn unsatisfiable() {
        assert_eq!(p("bytes=10-", 10), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=10-20", 10), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=-0", 10), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=0-", 0), Ranges::Unsatisfiable);
        assert_eq!(p("bytes=-5", 0), Ranges::Unsatisfiable);
        // One satisfiable range is enough.
        assert_eq!(p("bytes=20-30, 1-1", 10), one(1, 2));
    }

    #[test]
    fn invalid_is_ignored() {
        for v in [
            "",
            "bytes",
            "bytes=",
            "items=0-1",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=1",
            "bytes=--1",
            "bytes=-",
            "bytes=0-1-2",
            "bytes=+1-2",
            "bytes=1-2,x",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(p(v, 10), Ranges::Whole, "{v:?}");
        }
        let many = format!("bytes={}", (0..=MAX_RANGES).map(|i| format!("{i}-{i}")).collect::<Vec<_>>().join(","));
        assert_eq!(p(&many, 1000), Ranges::Whole);
    }

    #[test]
    fn several_ranges() {
        assert_eq!(p("bytes=0-1, 5-6", 10), parts(&[0..2, 5..7]));
        // Kept in the order asked when apart.
        assert_eq!(p("bytes=5-6,0-1", 10), parts(&[5..7, 0..2]));
        // Coalesced when they overlap or touch.
        assert_eq!(p("bytes=5-7,0-2,3-4", 10), one(0, 8));
        assert_eq!(p("bytes=0-4,2-3,8-", 10), parts(&[0..5, 8..10]));
        assert_eq!(p("bytes=0-1,,4-5", 10), parts(&[0..2, 4..6]));
    }
}
