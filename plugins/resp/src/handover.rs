//! The state a resp worker hands over to its replacement (docs/plugins.md, "Hand-over"): the
//! keyspace with its deadlines and the server's counters (worker-wide), and each connection's
//! session (client id, name, library name and version, RESP2 or RESP3, the channels and the
//! patterns it is subscribed to).
//!
//! Format version [`STATE_VERSION`] = 4, little-endian, length-prefixed (4 is 3 with the
//! pre-copy's rounds, `precopy`; the formats here are the same):
//!
//! ```text
//! worker:  "RESPKS1\0" · next_client_id u64 · total_connections u64 · total_commands u64 ·
//!          expired_keys u64 · keys u64 · keys × (key: u32 len + bytes · value: u64 len + bytes ·
//!          deadline: i64 Unix ms, -1 for none)
//! session: id u64 · resp3 u8 · name, lib_name, lib_ver: each u32 len + bytes ·
//!          channels u32 · channels × (u32 len + bytes) ·
//!          patterns u32 · patterns × (u32 len + bytes)
//! ```
//!
//! Versions 1 (without the channels: a version 1 worker never moved a subscribed connection) and
//! 2 (without the patterns: a version 2 worker never moved a pattern subscriber) are read too,
//! so a release with version 3 or 4 takes over from either.
//!
//! A subscribed connection moves with its channel list and its pattern list, each in
//! subscription order. The host moves its subscriptions to the channels' topics (`2:`/`3:` by its
//! protocol) and writes it every message published during the move once, in order (the
//! hand-over's topic seam). Its patterns are the plugin's own delivery: the export declares that
//! it hears [`crate::pubsub::PATTERN_TOPIC`] (`Host::handover_hears`, or it drains), the adoption
//! registers its patterns (the worker listens with the first), and the host brings what it
//! missed to `on_publish_missed` (the same seam). Subscribe mode (what a RESP2 connection may
//! run) and the confirmations' counts follow from the lists.
//!
//! The keyspace is written straight from the store into the host's sink (no list or copy of its
//! entries) and read in one pass into a table sized once from the key count; a state that turns
//! out unreadable part of the way is refused and what it had put in taken out again
//! ([`read_worker`]: all or nothing, never part of a keyspace). `handover_cost` (an ignored
//! test) measures both sides.
//!
//! Deadlines travel as Unix milliseconds: each worker's clock has its own epoch. A key already
//! expired is not written. A connection inside `MULTI` or with `WATCH`ed keys is not moved (its
//! transaction finishes on the old worker, which drains it): queued commands and watch stamps
//! belong to the old keyspace's history.

use std::io::{self, Write};

use crate::commands::{Server, Session};
use crate::pubsub::{Subscriptions, MAX_PATTERNS, MAX_PATTERN_LEN};
use crate::store::NEVER;

/// The version of the format above.
pub const STATE_VERSION: u32 = 4;

/// Whether [`read_session`] reads state `version` (the worker format is the same in each).
pub fn reads(version: u32) -> bool {
    matches!(version, 1..=4)
}

const MAGIC: &[u8; 8] = b"RESPKS1\0";

/// Writes the keyspace and counters (`now`: the worker's clock).
///
/// Straight from the keyspace into `out` in pieces of [`WRITE_CHUNK`] (the host's memfd takes
/// each with one `write`): no copy of the keyspace, no list of its entries.
pub fn write_worker(server: &Server, now: u64, out: &mut impl Write) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(WRITE_CHUNK, out);
    out.write_all(MAGIC)?;
    let [next_id, connections, commands] = server.counters();
    for n in [next_id, connections, commands, server.store.expired_keys] {
        out.write_all(&n.to_le_bytes())?;
    }
    // Expired keys not yet removed stay behind: counted first, as the count leads.
    let live = server.store.entries().filter(|(_, e)| e.expires_at > now).count();
    out.write_all(&(live as u64).to_le_bytes())?;
    let unix_now = server.unix_ms(now);
    for (key, entry) in server.store.entries().filter(|(_, e)| e.expires_at > now) {
        let deadline = match entry.expires_at {
            NEVER => -1i64,
            at => unix_now.saturating_add(i64::try_from(at - now).unwrap_or(i64::MAX)),
        };
        out.write_all(&(key.len() as u32).to_le_bytes())?;
        out.write_all(key)?;
        out.write_all(&(entry.value.len() as u64).to_le_bytes())?;
        // A value of WRITE_CHUNK or more goes to `out` without a copy into the buffer.
        out.write_all(&entry.value)?;
        out.write_all(&deadline.to_le_bytes())?;
    }
    out.flush()
}

/// The size of the pieces [`write_worker`] hands to the host.
const WRITE_CHUNK: usize = 256 * 1024;

/// Reads what [`write_worker`] wrote into `server`'s keyspace, all or nothing: a state that
/// turns out unreadable part of the way (a length beyond its end, bytes after it) is refused and
/// what it had put in is taken out again, so a refused state leaves the keyspace as it was
/// (empty), not part of one.
pub fn read_worker(server: &mut Server, now: u64, bytes: &[u8]) -> Result<(), String> {
    let mut r = Reader(bytes);
    if r.take(MAGIC.len())? != MAGIC {
        return Err("not a resp keyspace".into());
    }
    let counters = [r.u64()?, r.u64()?, r.u64()?];
    let expired = r.u64()?;
    let keys = r.u64()?;
    // The table sized once, bounded by the bytes whatever the count says (an entry takes at
    // least MIN_ENTRY of them).
    server.store.reserve(usize::try_from(keys).unwrap_or(usize::MAX).min(r.0.len() / MIN_ENTRY));
    let mark = server.store.moved_mark();
    let unix_now = server.unix_ms(now);
    let mut read = || {
        for _ in 0..keys {
            let (key, value, deadline) = next_entry(&mut r)?;
            let expires_at = match deadline {
                -1 => NEVER,
                // One that expired during the hand-over expires at the next touch.
                deadline => now.saturating_add(u64::try_from(deadline.saturating_sub(unix_now)).unwrap_or(0)),
            };
            server.store.insert_moved(key.into(), value.to_vec(), expires_at);
        }
        match r.0.len() {
            0 => Ok(()),
            n => Err(format!("{n} bytes after the keyspace")),
        }
    };
    if let Err(e) = read() {
        server.store.undo_moved(mark);
        return Err(e);
    }
    server.store.expired_keys += expired;
    server.adopt_counters(counters);
    Ok(())
}

/// The fewest bytes an entry takes: its two lengths and its deadline.
const MIN_ENTRY: usize = 4 + 8 + 8;

/// One entry of the keyspace: key, value, deadline (Unix ms, -1 for none).
pub(crate) fn next_entry<'a>(r: &mut Reader<'a>) -> Result<(&'a [u8], &'a [u8], i64), String> {
    let key_len = r.u32()? as usize;
    let key = r.take(key_len)?;
    let value_len = usize::try_from(r.u64()?).map_err(|_| "a value too large".to_string())?;
    let value = r.take(value_len)?;
    Ok((key, value, r.i64()?))
}

/// Writes a connection's session and its subscriptions; false when it does not move (a
/// transaction or watches).
pub fn write_session(session: &Session, subs: &Subscriptions, out: &mut impl Write) -> io::Result<bool> {
    if session.multi.is_some() || !session.watched.is_empty() {
        return Ok(false);
    }
    let (channels, patterns) = (&subs.channels, &subs.patterns);
    let mut bytes = Vec::with_capacity(36 + channels.iter().chain(patterns).map(|c| c.len() + 4).sum::<usize>());
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
    bytes.extend_from_slice(&(patterns.len() as u32).to_le_bytes());
    for pattern in patterns {
        bytes.extend_from_slice(&(pattern.len() as u32).to_le_bytes());
        bytes.extend_from_slice(pattern);
    }
    out.write_all(&bytes)?;
    Ok(true)
}

/// Reads what [`write_session`] wrote at `version` (1: no channels, 2: no patterns): the
/// session and its subscriptions.
pub fn read_session(version: u32, bytes: &[u8]) -> Result<(Session, Subscriptions), String> {
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
    let mut subs = Subscriptions::default();
    if version >= 2 {
        subs.channels = r.list("channel", usize::MAX)?;
    }
    if version >= 3 {
        subs.patterns = r.list("pattern", MAX_PATTERN_LEN)?;
        if subs.patterns.len() > MAX_PATTERNS {
            return Err(format!("{} patterns, more than {MAX_PATTERNS}", subs.patterns.len()));
        }
    }
    if !r.0.is_empty() {
        return Err("bytes after the session".into());
    }
    Ok((Session { id, resp3, name, lib_name, lib_ver, ..Session::default() }, subs))
}

pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("the state ends early ({} bytes left, {n} wanted)", self.0.len()));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    /// A `u32` count and as many distinct non-empty items of at most `max` bytes (channels,
    /// patterns).
    fn list(&mut self, what: &str, max: usize) -> Result<Vec<Vec<u8>>, String> {
        let count = self.u32()?;
        let mut items: Vec<Vec<u8>> = Vec::new();
        for _ in 0..count {
            let item = self.bytes()?;
            if item.is_empty() || item.len() > max || items.contains(&item) {
                return Err(format!("an empty, too long or repeated {what}"));
            }
            items.push(item);
        }
        Ok(items)
    }

    /// A `u32` length and the bytes.
    fn bytes(&mut self) -> Result<Vec<u8>, String> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Entry;

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

    fn state_of(server: &Server, now: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        write_worker(server, now, &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn an_empty_keyspace_and_a_value_of_several_mib_survive_the_trip() {
        let mut new = Server::default();
        read_worker(&mut new, 0, &state_of(&Server::default(), 0)).unwrap();
        assert!(new.store.is_empty());

        let mut old = Server::default();
        old.unix_offset = Some(1_000_000);
        // Larger than the pieces the writer hands over, and not a multiple of them.
        let big: Vec<u8> = (0..5 * 1024 * 1024 + 7).map(|i| (i % 251) as u8).collect();
        old.store.set(b"big", &big, Some(10 + 60_000), 10);
        old.store.set(b"", b"", None, 10);
        for i in 0..1000u32 {
            old.store.set(&i.to_le_bytes(), &i.to_be_bytes(), (i % 3 == 0).then_some(11 + u64::from(i)), 10);
        }
        let bytes = state_of(&old, 10);
        let mut new = Server::default();
        new.unix_offset = Some(1_000_000);
        read_worker(&mut new, 10, &bytes).unwrap();
        assert_eq!(new.store.len(), 1002);
        assert_eq!(new.store.volatile_len(), 1 + 334, "the deadlines' set is rebuilt");
        assert_eq!(new.store.get(b"big", 10).unwrap().value, big);
        assert_eq!(new.store.get(b"big", 10).unwrap().expires_at, 10 + 60_000);
        assert_eq!(new.store.get(b"", 10).unwrap().value, b"");
        for i in 0..1000u32 {
            let e = new.store.get(&i.to_le_bytes(), 10).unwrap();
            assert_eq!(e.value, i.to_be_bytes());
            assert_eq!(e.expires_at, if i % 3 == 0 { 11 + u64::from(i) } else { NEVER });
        }
    }

    #[test]
    fn the_worker_format_is_the_one_version_2_wrote() {
        // What a version 2 plugin wrote for one key with a deadline and one without: a later
        // change of these bytes needs a new version (and a reader for this one).
        let mut v2 = b"RESPKS1\0".to_vec();
        for n in [5u64, 4, 3, 2, 2] {
            v2.extend_from_slice(&n.to_le_bytes());
        }
        v2.extend_from_slice(&1u32.to_le_bytes());
        v2.extend_from_slice(b"a");
        v2.extend_from_slice(&2u64.to_le_bytes());
        v2.extend_from_slice(b"va");
        v2.extend_from_slice(&(-1i64).to_le_bytes());
        v2.extend_from_slice(&2u32.to_le_bytes());
        v2.extend_from_slice(b"bb");
        v2.extend_from_slice(&0u64.to_le_bytes());
        v2.extend_from_slice(&1_000_500i64.to_le_bytes());

        let mut new = Server::default();
        new.unix_offset = Some(1_000_000);
        read_worker(&mut new, 100, &v2).unwrap();
        assert_eq!(new.store.get(b"a", 100).unwrap(), &Entry { value: b"va".to_vec(), expires_at: NEVER });
        assert_eq!(new.store.get(b"bb", 100).unwrap(), &Entry { value: Vec::new(), expires_at: 500 });
        assert_eq!(new.store.expired_keys, 2);
        assert_eq!(state_of(&new, 100)[8 + 32..], v2[8 + 32..], "written back the same");
    }

    #[test]
    fn a_truncated_or_corrupt_keyspace_is_refused_and_nothing_of_it_stays() {
        let mut old = Server::default();
        old.unix_offset = Some(1_000_000);
        for i in 0..20u8 {
            old.store.set(&[b'k', i], &[i; 9], (i % 2 == 0).then_some(10_000), 10);
        }
        let bytes = state_of(&old, 10);
        let refused = |bytes: &[u8]| {
            let mut new = Server::default();
            let result = read_worker(&mut new, 10, bytes);
            assert!(new.store.is_empty() && new.store.volatile_len() == 0, "all or nothing");
            result.is_err()
        };
        for len in 0..bytes.len() {
            assert!(refused(&bytes[..len]), "cut at {len} of {}", bytes.len());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(refused(&longer), "bytes after the keyspace");
        let mut magic = bytes.clone();
        magic[0] ^= 1;
        assert!(refused(&magic));
        // A key count, a key length, a value length beyond the bytes: no allocation of that size.
        let header = 8 + 4 * 8;
        for (at, huge) in [(header, &u64::MAX.to_le_bytes()[..]), (header + 8, &u32::MAX.to_le_bytes()[..])] {
            let mut corrupt = bytes.clone();
            corrupt[at..at + huge.len()].copy_from_slice(huge);
            assert!(refused(&corrupt), "a huge length at {at}");
        }
        let mut corrupt = bytes.clone();
        corrupt[header + 8 + 4 + 2..header + 8 + 4 + 2 + 8].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
        assert!(refused(&corrupt), "a huge value length");
        let mut fewer = bytes.clone();
        fewer[header..header + 8].copy_from_slice(&19u64.to_le_bytes());
        assert!(refused(&fewer), "fewer keys than written");
    }

    fn subs(channels: &[&str], patterns: &[&str]) -> Subscriptions {
        let list = |items: &[&str]| items.iter().map(|i| i.as_bytes().to_vec()).collect();
        Subscriptions { channels: list(channels), patterns: list(patterns) }
    }

    #[test]
    fn a_session_moves_unless_it_is_in_a_transaction() {
        let mut s =
            Session { id: 7, resp3: true, name: b"app".to_vec(), lib_ver: b"5.0".to_vec(), ..Session::default() };
        let mut bytes = Vec::new();
        let moved = subs(&["news", "a b"], &["n*", "h?llo", "[ab]*"]);
        assert!(write_session(&s, &moved, &mut bytes).unwrap());
        let (back, back_subs) = read_session(STATE_VERSION, &bytes).unwrap();
        assert_eq!((back.id, back.resp3, &back.name[..], &back.lib_ver[..]), (7, true, &b"app"[..], &b"5.0"[..]));
        assert_eq!(back_subs.channels, moved.channels, "the channels, in order");
        assert_eq!(back_subs.patterns, moved.patterns, "the patterns, in order");
        s.watched.insert(b"k".to_vec().into(), 1);
        assert!(!write_session(&s, &Subscriptions::default(), &mut Vec::new()).unwrap());
        for len in 0..bytes.len() {
            assert!(read_session(STATE_VERSION, &bytes[..len]).is_err(), "cut at {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_session(STATE_VERSION, &longer).is_err());
        assert!(read_session(5, &bytes).is_err(), "a newer format is refused");
        // A repeated pattern, or more than a connection may have: refused.
        let mut twice = Vec::new();
        write_session(&Session::default(), &subs(&[], &["a*", "a*"]), &mut twice).unwrap();
        assert!(read_session(3, &twice).is_err());
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("p{i}*")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut too_many = Vec::new();
        write_session(&Session::default(), &subs(&[], &many), &mut too_many).unwrap();
        assert!(read_session(3, &too_many).is_err());
    }

    // What a version 2 plugin wrote (channels, no patterns) is read by this one: a release with
    // version 3 takes over from one with version 2.
    #[test]
    fn a_version_2_session_is_read() {
        let mut v2 = 9u64.to_le_bytes().to_vec();
        v2.push(1);
        for field in [&b"n"[..], b"", b"7"] {
            v2.extend_from_slice(&(field.len() as u32).to_le_bytes());
            v2.extend_from_slice(field);
        }
        v2.extend_from_slice(&1u32.to_le_bytes());
        v2.extend_from_slice(&4u32.to_le_bytes());
        v2.extend_from_slice(b"news");
        let (s, subs) = read_session(2, &v2).unwrap();
        assert_eq!((s.id, s.resp3, &subs.channels[..], subs.patterns.len()), (9, true, &[b"news".to_vec()][..], 0));
        assert!(read_session(3, &v2).is_err(), "version 3 has the pattern count");
        // What this version writes without patterns is version 2's bytes and a zero count.
        let mut v3 = Vec::new();
        let session = Session { id: 9, resp3: true, name: b"n".to_vec(), lib_ver: b"7".to_vec(), ..Session::default() };
        write_session(&session, &subs, &mut v3).unwrap();
        assert_eq!(v3, [&v2[..], &0u32.to_le_bytes()].concat());
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
        let (s, subs) = read_session(1, &v1).unwrap();
        assert_eq!((s.id, s.resp3, &s.name[..], &s.lib_ver[..], subs.count()), (9, false, &b"n"[..], &b"7"[..], 0));
        assert!(read_session(2, &v1).is_err(), "version 2 has the channel count");
        assert!(reads(1) && reads(2) && reads(3) && reads(4) && !reads(0) && !reads(5));
    }
}
