//! The proxy's state in a hand-over (`HANDOVER_VERSION` 1): what moves and how it is written.
//!
//! - **A client between requests** moves (state: one byte, 0); a client with a request in
//!   flight declines and finishes on the old worker (its upstream connection is in the middle of
//!   a response that the old instance is reading: moving both halves of a half-forwarded
//!   response is not clean), then drains there (`Connection: close`).
//! - **The idle keep-alive pool** moves with the worker state: each pooled upstream connection
//!   is carried (`Host::handover_carry`) and written as its old id and its upstream's address;
//!   the new instance looks its new id up (`Host::handover_carried`) and pools it again under
//!   that address's place in its own config, or closes it when the address is no longer an
//!   upstream (a reload changed the list) or its pool is full. The upstream sees the same
//!   connection: no new accept, no new handshake.
//!
//! The pool's format: `b"PXP1"`, a `u32` count, then per connection a `u64` old id, a `u16`
//! address length and the address (UTF-8), little-endian. Anything else is refused, never a
//! panic.

/// The magic that begins the pool's state.
const MAGIC: &[u8; 4] = b"PXP1";
/// The most connections a pool's state may name (far above any `max_idle` × upstreams).
const MAX_CONNS: u32 = 1 << 20;

/// One pooled upstream connection as it moves: its id in the old worker and its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PooledConn {
    pub old_id: u64,
    pub upstream: String,
}

/// Writes the pool's state.
pub fn encode_pool(conns: &[PooledConn], out: &mut Vec<u8>) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(conns.len() as u32).to_le_bytes());
    for c in conns {
        let addr = &c.upstream.as_bytes()[..c.upstream.len().min(u16::MAX as usize)];
        out.extend_from_slice(&c.old_id.to_le_bytes());
        out.extend_from_slice(&(addr.len() as u16).to_le_bytes());
        out.extend_from_slice(addr);
    }
}

/// Reads the pool's state (an empty state is an empty pool).
pub fn decode_pool(mut state: &[u8]) -> Result<Vec<PooledConn>, String> {
    if state.is_empty() {
        return Ok(Vec::new());
    }
    let magic = take(&mut state, 4)?;
    if magic != MAGIC {
        return Err("not a proxy pool state".into());
    }
    let n = u32::from_le_bytes(take(&mut state, 4)?.try_into().expect("4 bytes"));
    if n > MAX_CONNS {
        return Err(format!("{n} pooled connections is too many"));
    }
    let mut conns = Vec::with_capacity(n.min(1024) as usize);
    for _ in 0..n {
        let old_id = u64::from_le_bytes(take(&mut state, 8)?.try_into().expect("8 bytes"));
        let len = u16::from_le_bytes(take(&mut state, 2)?.try_into().expect("2 bytes"));
        let addr = take(&mut state, len as usize)?;
        let upstream = std::str::from_utf8(addr).map_err(|_| "an upstream address that is not UTF-8")?.to_string();
        conns.push(PooledConn { old_id, upstream });
    }
    if !state.is_empty() {
        return Err(format!("{} bytes after the pool", state.len()));
    }
    Ok(conns)
}

fn take<'a>(state: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if state.len() < n {
        return Err("the pool's state is cut short".into());
    }
    let (head, rest) = state.split_at(n);
    *state = rest;
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<PooledConn> {
        vec![
            PooledConn { old_id: 7, upstream: "127.0.0.1:9001".into() },
            PooledConn { old_id: u64::MAX - 1, upstream: "[::1]:80".into() },
            PooledConn { old_id: 0, upstream: String::new() },
        ]
    }

    #[test]
    fn the_pool_round_trips() {
        let mut out = Vec::new();
        encode_pool(&sample(), &mut out);
        assert_eq!(decode_pool(&out).unwrap(), sample());
        let mut empty = Vec::new();
        encode_pool(&[], &mut empty);
        assert_eq!(decode_pool(&empty).unwrap(), Vec::new());
        assert_eq!(decode_pool(&[]).unwrap(), Vec::new());
    }

    // Every cut of a valid state, every flipped byte and trailing garbage: an error or a
    // decoded pool, never a panic.
    #[test]
    fn garbage_is_refused_without_a_panic() {
        let mut out = Vec::new();
        encode_pool(&sample(), &mut out);
        for cut in 1..out.len() {
            assert!(decode_pool(&out[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..out.len() {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[i] ^= 1 << bit;
                let _ = decode_pool(&bad);
            }
        }
        let mut trailing = out.clone();
        trailing.push(0);
        assert!(decode_pool(&trailing).is_err());
        assert!(decode_pool(b"XXXX\0\0\0\0").is_err());
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_pool(&huge).is_err());
        let mut not_utf8 = MAGIC.to_vec();
        not_utf8.extend_from_slice(&1u32.to_le_bytes());
        not_utf8.extend_from_slice(&1u64.to_le_bytes());
        not_utf8.extend_from_slice(&1u16.to_le_bytes());
        not_utf8.push(0xff);
        assert!(decode_pool(&not_utf8).is_err());
    }
}
