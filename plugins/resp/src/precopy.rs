//! A keyspace's pre-copy hand-over (docs/plugins.md, "Pre-copy"): the old worker writes its
//! keyspace in steps while it serves, records the changes to keys the copy already passed
//! ([`crate::store::Dirty`]: [`Store::touch`] and [`Store::touch_removed`] are where every change
//! goes through), and once the copy is over writes as its last part only those keys (each with
//! its current value and deadline, or a tombstone). The replacement stages the steps in a
//! keyspace of their own and commits them with the last part: nothing of a copy is served unless
//! the whole hand-over went through.
//!
//! The copy walks the keyspace's positions upwards. New keys are appended past the cursor (the
//! copy reaches them itself); a removal moves the last key into the removed one's place, so a
//! removal below the cursor records both keys, one at or past it nothing ([`crate::store::Dirty`]
//! has the rule). A write-heavy client therefore adds to the record only what it changes of the
//! part already copied.
//!
//! Rounds, as a live VM migration iterates: once the recorded keys pass [`ROUND_BYTES`], the next
//! step is a **round** carrying their current entries (or tombstones), and the record starts
//! again; the copy goes on. It ends when it reached the last position with less than
//! [`ROUND_BYTES`] recorded: the last part carries those, so the clients' pause is about a
//! round's size. A client changing the copied part faster than rounds send it, or appending
//! faster than steps copy, is bounded by [`Copy::max_sent`] (all steps and rounds together): past
//! it the copy ends as it stands, and the last part carries what is recorded (under
//! [`ROUND_BYTES`] plus one step's writes) and every position not reached yet, with the clients
//! stopped.
//!
//! Formats (version [`STEP_FORMAT`] = 2, in the magics; the full keyspace of
//! `handover::write_worker` is unchanged, and is what goes when the replacement takes no
//! steps), little-endian:
//!
//! ```text
//! step:      "RESPST1\0" · entries until the end (key: u32 len + bytes · value: u64 len +
//!            bytes · deadline: i64 Unix ms, -1 for none)
//! round:     "RESPRD2\0" · flushed u8 · records u64 · records (as below)
//! last part: "RESPDL1\0" · next_client_id u64 · total_connections u64 · total_commands u64 ·
//!            expired_keys u64 · flushed u8 · records u64 · records × (key: u32 len + bytes ·
//!            0 (a tombstone) | 1 · value: u64 len + bytes · deadline i64)
//! ```
//!
//! `flushed`: the keyspace was flushed since the copy began (or since the last round); the
//! replacement drops what it staged before it applies the records. A later record of a key
//! replaces an earlier one. This release reads steps and last parts of versions 1 and 2; rounds
//! are version 2's (state version 4, `handover::STATE_VERSION`: a release that reads up to 3 never
//! sees one, it refuses the hand-over at ready time).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::commands::Server;
use crate::handover::{next_entry, Reader};
use crate::store::{Store, NEVER};

/// The version of the step, round and last-part formats above.
pub const STEP_FORMAT: u32 = 2;
const STEP_MAGIC: &[u8; 8] = b"RESPST1\0";
const ROUND_MAGIC: &[u8; 8] = b"RESPRD2\0";
const LAST_MAGIC: &[u8; 8] = b"RESPDL1\0";

/// A step ends once it wrote this many bytes…
pub const STEP_BYTES: u64 = 2 << 20;
/// …or ran this long (checked every [`CHECK_EVERY`] keys): the worker's clients wait for it.
pub const STEP_TIME: Duration = Duration::from_millis(2);
const CHECK_EVERY: usize = 64;
/// Once the recorded keys take this much (keys, values when recorded, 48 bytes each), the next
/// step is a round carrying them; a copy ends only with less recorded (the last part's size).
pub const ROUND_BYTES: usize = 2 << 20;
/// Rounds once every position was copied, at most: then the copy ends with what is recorded (at
/// most what one loop turn's clients changed since the last round).
pub const END_ROUNDS: u64 = 8;
/// A copy sends at most its keyspace's bytes at the start (estimated) times this, plus [`SENT_SLACK`]…
pub const SENT_FACTOR: u64 = 2;
/// …(steps and rounds together); then it ends as it stands.
pub const SENT_SLACK: u64 = 256 << 20;

/// A copy under way in the old worker (the cursor is the store's: [`Store::copy_cursor`]).
#[derive(Debug)]
pub struct Copy {
    pub steps: u64,
    pub rounds: u64,
    /// Rounds sent once every position was copied; a round does not follow a round before that
    /// (the walk goes on between them).
    pub end_rounds: u64,
    last_was_round: bool,
    /// Bytes written by steps and rounds.
    pub sent: u64,
    /// The bounds: [`STEP_BYTES`], [`ROUND_BYTES`], the bytes a copy may send and
    /// [`END_ROUNDS`] (smaller in tests).
    pub step_bytes: u64,
    pub round_bytes: usize,
    pub max_sent: u64,
    pub max_end_rounds: u64,
}

impl Copy {
    /// Starts a copy of `store` (it records changes from now on).
    pub fn start(store: &mut Store) -> Copy {
        store.start_recording();
        let max_sent = (store.estimated_bytes() as u64).saturating_mul(SENT_FACTOR).saturating_add(SENT_SLACK);
        Copy {
            steps: 0,
            rounds: 0,
            end_rounds: 0,
            last_was_round: false,
            sent: 0,
            step_bytes: STEP_BYTES,
            round_bytes: ROUND_BYTES,
            max_sent,
            max_end_rounds: END_ROUNDS,
        }
    }
}

/// A deadline on the worker's clock as Unix ms (-1: none).
fn deadline_out(unix_now: i64, now: u64, at: u64) -> i64 {
    match at {
        NEVER => -1,
        at => unix_now.saturating_add(i64::try_from(at.saturating_sub(now)).unwrap_or(i64::MAX)),
    }
}

/// A Unix ms deadline (-1: none) on this worker's clock; one already past expires at the next
/// touch.
fn deadline_in(unix_now: i64, now: u64, deadline: i64) -> u64 {
    match deadline {
        -1 => NEVER,
        deadline => now.saturating_add(u64::try_from(deadline.saturating_sub(unix_now)).unwrap_or(0)),
    }
}

fn write_entry(out: &mut impl Write, key: &[u8], value: &[u8], deadline: i64) -> io::Result<()> {
    out.write_all(&(key.len() as u32).to_le_bytes())?;
    out.write_all(key)?;
    out.write_all(&(value.len() as u64).to_le_bytes())?;
    out.write_all(value)?;
    out.write_all(&deadline.to_le_bytes())
}

/// Writes the next step of the copy into `out`: a round when the recorded keys passed
/// [`Copy::round_bytes`], else the next positions (at most about [`STEP_BYTES`] or
/// [`STEP_TIME`]). Ok(true): the copy is over (every position written with little recorded, or
/// the bytes sent passed [`Copy::max_sent`]): the last part follows. A step with nothing to write
/// writes nothing.
pub fn write_step(server: &mut Server, copy: &mut Copy, now: u64, out: &mut impl Write) -> io::Result<bool> {
    let unix_now = server.unix_ms(now);
    let store = &mut server.store;
    let Some(cursor) = store.copy_cursor() else {
        // Not recording (cannot happen after `Copy::start`): the steps sent cannot be trusted.
        return Err(io::Error::other("the copy's record is gone"));
    };
    if copy.sent >= copy.max_sent {
        return Ok(true);
    }
    // A flush goes in a round at once: the replacement must drop what it staged before the
    // steps that follow copy what came after it.
    let walked = cursor >= store.len();
    let round =
        store.flushed_since_round() || (store.dirty_bytes() >= copy.round_bytes && (walked || !copy.last_was_round));
    if walked && round && !store.flushed_since_round() && copy.end_rounds >= copy.max_end_rounds {
        // A writer changing the copied keys faster than rounds send them: end as it stands.
        return Ok(true);
    }
    copy.last_was_round = round;
    if round {
        let dirty = store.take_recorded().unwrap_or_default();
        let mut out = Counted { out: io::BufWriter::with_capacity(256 * 1024, out), bytes: 0 };
        out.write_all(ROUND_MAGIC)?;
        let keys: Vec<&[u8]> = dirty.keys.iter().map(|k| &**k).collect();
        write_keys(&mut out, store, dirty.flushed, &keys, cursor, unix_now, now)?;
        out.flush()?;
        copy.rounds += 1;
        copy.end_rounds += u64::from(walked);
        copy.steps += 1;
        copy.sent += out.bytes;
        return Ok(false);
    }
    let started = Instant::now();
    let mut out = io::BufWriter::with_capacity(256 * 1024, out);
    let (mut bytes, mut visited, mut next) = (0u64, 0usize, cursor);
    while next < store.len() {
        if bytes >= copy.step_bytes || (visited % CHECK_EVERY == CHECK_EVERY - 1 && started.elapsed() >= STEP_TIME) {
            break;
        }
        let (key, entry) = store.get_index(next).expect("below len");
        next += 1;
        visited += 1;
        if entry.expires_at <= now {
            continue;
        }
        if bytes == 0 {
            out.write_all(STEP_MAGIC)?;
        }
        write_entry(&mut out, key, &entry.value, deadline_out(unix_now, now, entry.expires_at))?;
        bytes += (key.len() + entry.value.len() + 20) as u64;
    }
    out.flush()?;
    store.advance_copy(next);
    copy.steps += u64::from(bytes > 0);
    copy.sent += bytes;
    Ok(next >= store.len() && store.dirty_bytes() < copy.round_bytes && !store.flushed_since_round())
}

/// A writer that counts what goes through it.
struct Counted<W> {
    out: W,
    bytes: u64,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Writes `flushed`, the count and a record per key of `keys`: its current live entry when it
/// is at a position below `below`, else a tombstone (the body of a round and the end of the last
/// part). In a round, `below` is the cursor: a recorded key at or past it (removed, then added
/// again) is one the copy will reach, and the replacement must not hold it meanwhile (its later
/// changes there are not recorded).
fn write_keys(
    out: &mut impl Write,
    store: &Store,
    flushed: bool,
    keys: &[&[u8]],
    below: usize,
    unix_now: i64,
    now: u64,
) -> io::Result<()> {
    out.write_all(&[u8::from(flushed)])?;
    out.write_all(&(keys.len() as u64).to_le_bytes())?;
    for key in keys {
        out.write_all(&(key.len() as u32).to_le_bytes())?;
        out.write_all(key)?;
        match store.peek_full(key).filter(|(i, e)| *i < below && e.expires_at > now) {
            Some((_, e)) => {
                out.write_all(&[1])?;
                out.write_all(&(e.value.len() as u64).to_le_bytes())?;
                out.write_all(&e.value)?;
                out.write_all(&deadline_out(unix_now, now, e.expires_at).to_le_bytes())?;
            }
            None => out.write_all(&[0])?,
        }
    }
    Ok(())
}

/// Reads what [`write_keys`] wrote into `staged` (a flush first drops what it staged).
fn read_records(r: &mut Reader<'_>, staged: &mut Store, unix_now: i64, now: u64) -> Result<(), String> {
    match r.take(1)? {
        [0] => {}
        [1] => *staged = Store::default(),
        other => return Err(format!("bad flush flag {other:?}")),
    }
    let records = r.u64()?;
    for _ in 0..records {
        let key_len = r.u32()? as usize;
        let key = r.take(key_len)?;
        match r.take(1)? {
            [0] => staged.remove_moved(key),
            [1] => {
                let value_len = usize::try_from(r.u64()?).map_err(|_| "a value too large".to_string())?;
                let value = r.take(value_len)?;
                let deadline = r.i64()?;
                staged.put_moved(key.into(), value.to_vec(), deadline_in(unix_now, now, deadline));
            }
            other => return Err(format!("bad record kind {other:?}")),
        }
    }
    Ok(())
}

/// Reads a step or a round into `staged` (the replacement's keyspace of the copy, served by no
/// one). A round cut short may have put part of its records in: the hand-over fails with it and
/// `staged` is dropped.
pub fn read_step(staged: &mut Store, unix_now: i64, now: u64, bytes: &[u8]) -> Result<(), String> {
    let mut r = Reader(bytes);
    let magic = r.take(STEP_MAGIC.len())?;
    if magic == ROUND_MAGIC {
        read_records(&mut r, staged, unix_now, now)?;
        return match r.0.len() {
            0 => Ok(()),
            n => Err(format!("{n} bytes after a round")),
        };
    }
    if magic != STEP_MAGIC {
        return Err("not a step of a resp keyspace".into());
    }
    while !r.0.is_empty() {
        let (key, value, deadline) = next_entry(&mut r)?;
        staged.put_moved(key.into(), value.to_vec(), deadline_in(unix_now, now, deadline));
    }
    Ok(())
}

/// Ends the copy and writes its last part: the counters, whether the keyspace was flushed, and
/// a record for each key changed since the copy passed it (or since the last round) or not
/// reached by it.
/// `_copy` is consumed: the copy is over.
pub fn write_last(server: &mut Server, _copy: Copy, now: u64, out: &mut impl Write) -> io::Result<()> {
    let dirty = server.store.stop_recording().unwrap_or_default();
    let store = &server.store;
    let unix_now = server.unix_ms(now);
    let not_reached = (dirty.cursor..store.len()).filter_map(|i| store.get_index(i)).map(|(k, _)| k);
    let keys: Vec<&[u8]> =
        dirty.keys.iter().map(|k| &**k).chain(not_reached.filter(|k| !dirty.keys.contains(*k))).collect();
    let mut out = io::BufWriter::with_capacity(256 * 1024, out);
    out.write_all(LAST_MAGIC)?;
    let [next_id, connections, commands] = server.counters();
    for n in [next_id, connections, commands, store.expired_keys] {
        out.write_all(&n.to_le_bytes())?;
    }
    write_keys(&mut out, store, dirty.flushed, &keys, usize::MAX, unix_now, now)?;
    out.flush()
}

/// Whether `state` is a last part (else a whole keyspace, `handover::read_worker`'s).
pub fn is_last(state: &[u8]) -> bool {
    state.starts_with(LAST_MAGIC)
}

/// Applies a last part to the keyspace the steps staged, then commits it into `server` with
/// the counters. All or nothing: an unreadable part leaves `server` as it was (and `staged` is
/// dropped by the caller).
pub fn read_last(server: &mut Server, mut staged: Store, now: u64, bytes: &[u8]) -> Result<(), String> {
    let mut r = Reader(bytes);
    if r.take(LAST_MAGIC.len())? != LAST_MAGIC {
        return Err("not the last part of a resp keyspace".into());
    }
    let counters = [r.u64()?, r.u64()?, r.u64()?];
    let expired = r.u64()?;
    let unix_now = server.unix_ms(now);
    read_records(&mut r, &mut staged, unix_now, now)?;
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the last part", r.0.len()));
    }
    server.store.adopt_staged(staged);
    server.store.expired_keys += expired;
    server.adopt_counters(counters);
    Ok(())
}

#[cfg(test)]
mod tests;
