//! The state a resp worker hands over to its replacement (docs/plugins.md, "Hand-over"): the
//! keyspace with its deadlines and the server's counters (worker-wide), and each connection's
//! session (client id, name, library name and version, RESP2 or RESP3, the channels it is
//! subscribed to).
//!
//! Format version [`STATE_VERSION`] = 2, little-endian, length-prefixed:
//!
//! ```text
//! worker:  "RESPKS1\0" · next_client_id u64 · total_connections u64 · total_commands u64 ·
//!          expired_keys u64 · keys u64 · keys × (key: u32 len + bytes · value: u64 len + bytes ·
//!          deadline: i64 Unix ms, -1 for none)
//! session: id u64 · resp3 u8 · name, lib_name, lib_ver: each u32 len + bytes ·
//!          channels u32 · channels × (u32 len + bytes)
//! ```
//!
//! Version 1 (the same without the channels: a version 1 worker never moved a subscribed
//! connection) is read too, so a release with version 2 takes over from one with version 1.
//!
//! A subscribed connection moves with its channel list, in subscription order; the host moves
//! its subscriptions to the channels' topics (`2:`/`3:` by its protocol) and writes it every
//! message published during the move once, in order (the hand-over's topic seam). Subscribe mode
//! (what a RESP2 connection may run) and `SUBSCRIBE`'s counts follow from the list.
//!
//! Deadlines travel as Unix milliseconds: each worker's clock has its own epoch. A key already
//! expired is not written. A connection inside `MULTI` or with `WATCH`ed keys is not moved (its
//! transaction finishes on the old worker, which drains it): queued commands and watch stamps
//! belong to the old keyspace's history.

use std::io::{self, Write};

use crate::commands::{Server, Session};
use crate::store::NEVER;

/// The version of the format above.
pub const STATE_VERSION: u32 = 2;

/// Whether [`read_session`] reads state `version` (the worker format is the same in both).
pub fn reads(version: u32) -> bool {
    matches!(version, 1 | 2)
}

const MAGIC: &[u8; 8] = b"RESPKS1\0";

/// Writes the keyspace and counters (`now`: the worker's clock).
pub fn write_worker(server: &Server, now: u64, out: &mut impl Write) -> io::Result<()> {
    // Pieces of a few bytes each: gathered before they cross to the host.
    let mut out = io::BufWriter::with_capacity(256 * 1024, out);
    out.write_all(MAGIC)?;
    let [next_id, connections, commands] = server.counters();
    for n in [next_id, connections, commands, server.store.expired_keys] {
        out.write_all(&n.to_le_bytes())?;
    }
    let unix_now = server.unix_ms(now);
    let live: Vec<_> = server.store.entries().filter(|(_, e)| e.expires_at > now).collect();
    out.write_all(&(live.len() as u64).to_le_bytes())?;
    for (key, entry) in live {
        out.write_all(&(key.len() as u32).to_le_bytes())?;
        out.write_all(key)?;
        out.write_all(&(entry.value.len() as u64).to_le_bytes())?;
        out.write_all(&entry.value)?;
        let deadline = match entry.expires_at {
            NEVER => -1i64,
            at => unix_now.saturating_add(i64::try_from(at - now).unwrap_or(i64::MAX)),
        };
        out.write_all(&deadline.to_le_bytes())?;
    }
    out.flush()
}

/// Reads what [`write_worker`] wrote into `server`'s (empty) keyspace.
pub fn read_worker(server: &mut Server, now: u64, bytes: &[u8]) -> Result<(), String> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not a resp keyspace".into());
    }
    let counters = [r.u64()?, r.u64()?, r.u64()?];
    let expired = r.u64()?;
    let keys = r.u64()?;
    let unix_now = server.unix_ms(now);
    for _ in 0..keys {
        let key_len = r.u32()? as usize;
        let key: Box<[u8]> = r.take(key_len)?.into();
        let value_len = usize::try_from(r.u64()?).map_err(|_| "a value too large".to_string())?;
        let value = r.take(value_len)?.to_vec();
        let expires_at = match r.i64()? {
            -1 => NEVER,
            // One that expired during the hand-over expires at the next touch.
            deadline => now.saturating_add(u64::try_from(deadline.saturating_sub(unix_now)).unwrap_or(0)),
        };
        server.store.insert_moved(key, value, expires_at);
    }
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the keyspace", r.0.len()));
    }
    server.store.expired_keys += expired;
    server.adopt_counters(counters);
    Ok(())
}

/// Writes a connection's session and its `channels`; false when it does not move (a transaction
/// or watches).
pub fn write_session(session: &Session, channels: &[Vec<u8>], out: &mut impl Write) -> io::Result<bool> {
    if session.multi.is_some() || !session.watched.is_empty() {
        return Ok(false);
    }
    let mut bytes = Vec::with_capacity(32 + channels.iter().map(|c| c.len() + 4).sum::<usize>());
    bytes.extend_from_slice(&session.id.to_le_bytes());
    bytes.push(session.resp3 as u8);
    for field in [&session.name, &session.lib_name, &session.lib_ver] {
        bytes.extend_from_slice(&(field.len() as u32).to_le_bytes());
        bytes.extend_from_slice(field);
    }
    bytes.extend_from_slice(&(channels.len() as u32).to_le_bytes());
    for channel in channels {
        bytes.extend_from_slice(&(channel.len() as u32).to_le_bytes());
        bytes.extend_from_slice(channel);
    }
    out.write_all(&bytes)?;
    Ok(true)
}

/// Reads what [`write_session`] wrote at `version` (1: no channels): the session and its
/// channels.
pub fn read_session(version: u32, bytes: &[u8]) -> Result<(Session, Vec<Vec<u8>>), String> {
    if !reads(version) {
        return Err(format!("session state version {version} is not one this plugin reads"));
    }
    let mut r = Reader(bytes);
    let id = r.u64()?;
    let resp3 = match r.take(1)? {
        [0] => false,
        [1] => true,
        other => return Err(format!("bad protocol flag {other:?}")),
    };
    let (name, lib_name, lib_ver) = (r.bytes()?, r.bytes()?, r.bytes()?);
    let mut channels = Vec::new();
    if version >= 2 {
        let count = r.u32()?;
        for _ in 0..count {
            let channel = r.bytes()?;
            if channel.is_empty() || channels.contains(&channel) {
                return Err("an empty or repeated channel".into());
            }
            channels.push(channel);
        }
    }
    if !r.0.is_empty() {
        return Err("bytes after the session".into());
    }
    Ok((Session { id, resp3, name, lib_name, lib_ver, ..Session::default() }, channels))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("the state ends early ({} bytes left, {n} wanted)", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A `u32` length and the bytes.
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyspace_with_deadlines_survives_the_trip() {
        let mut old = Server::default();
        old.unix_offset = Some(1_000_000);
        old.store.set(b"forever", b"v1", None, 10);
        old.store.set(b"soon", b"v2", Some(10 + 5_000), 10);
        old.store.set(b"gone", b"v3", Some(11), 10);
        let s = old.new_session(None, None);
        let mut bytes = Vec::new();
        write_worker(&old, 20, &mut bytes).unwrap();

        // The new worker's clock started later: its `now` is smaller for the same instant.
        let mut new = Server::default();
        new.unix_offset = Some(1_000_000 + 15);
        read_worker(&mut new, 5, &bytes).unwrap();
        assert_eq!(new.store.len(), 2, "the expired key is not carried");
        assert_eq!(new.store.get(b"forever", 5).unwrap().expires_at, NEVER);
        assert_eq!(new.store.get(b"soon", 5).unwrap().expires_at, 10 + 5_000 - 15, "the same Unix deadline");
        assert!(new.new_session(None, None).id > s.id, "client ids go on");
        assert!(read_worker(&mut Server::default(), 0, &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn a_session_moves_unless_it_is_in_a_transaction() {
        let mut s =
            Session { id: 7, resp3: true, name: b"app".to_vec(), lib_ver: b"5.0".to_vec(), ..Session::default() };
        let mut bytes = Vec::new();
        let channels = [b"news".to_vec(), b"a b".to_vec()];
        assert!(write_session(&s, &channels, &mut bytes).unwrap());
        let (back, back_channels) = read_session(STATE_VERSION, &bytes).unwrap();
        assert_eq!((back.id, back.resp3, &back.name[..], &back.lib_ver[..]), (7, true, &b"app"[..], &b"5.0"[..]));
        assert_eq!(back_channels, channels, "the channels, in order");
        s.watched.insert(b"k".to_vec().into(), 1);
        assert!(!write_session(&s, &[], &mut Vec::new()).unwrap());
        assert!(read_session(STATE_VERSION, &bytes[..3]).is_err());
        assert!(read_session(STATE_VERSION, &bytes[..bytes.len() - 1]).is_err());
        assert!(read_session(3, &bytes).is_err(), "a newer format is refused");
    }

    #[test]
    fn a_version_1_session_is_read() {
        // What a version 1 plugin wrote: the same fields without the channel list.
        let mut v1 = 9u64.to_le_bytes().to_vec();
        v1.push(0);
        for field in [&b"n"[..], b"", b"7"] {
            v1.extend_from_slice(&(field.len() as u32).to_le_bytes());
            v1.extend_from_slice(field);
        }
        let (s, channels) = read_session(1, &v1).unwrap();
        assert_eq!((s.id, s.resp3, &s.name[..], &s.lib_ver[..], channels.len()), (9, false, &b"n"[..], &b"7"[..], 0));
        assert!(read_session(2, &v1).is_err(), "version 2 has the channel count");
        assert!(reads(1) && reads(2) && !reads(0) && !reads(3));
    }
}
