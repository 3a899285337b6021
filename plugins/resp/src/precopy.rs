//! A keyspace's pre-copy hand-over (docs/plugins.md, "Pre-copy"): the old worker writes its
//! keyspace in steps while it serves, records the keys written, deleted, expired or flushed
//! meanwhile ([`Store::touch`] is the one place every change goes through), and once the copy is
//! over (or the recorded set passes [`DIRTY_MAX_BYTES`]) writes as its last part only those
//! keys (each with its current value and deadline, or a tombstone) and the keys the copy did not
//! reach. The replacement stages the steps in a keyspace of their own and commits them with the
//! last part: nothing of a copy is served unless the whole hand-over went through.
//!
//! The copy walks the keyspace's positions from the last down, as `SCAN` does: a removal moves
//! the last key into the removed one's place (from the copied part into the part not copied
//! yet, never the other way) and new keys are appended to the copied part, so every key present
//! throughout is written at least once; the others were changed, so they are recorded.
//!
//! Formats (version [`STEP_FORMAT`] = 1, in the magics; the full keyspace of
//! `handover::write_worker` is unchanged, and is what goes when the replacement takes no
//! steps), little-endian:
//!
//! ```text
//! step:      "RESPST1\0" · entries until the end (key: u32 len + bytes · value: u64 len +
//!            bytes · deadline: i64 Unix ms, -1 for none)
//! last part: "RESPDL1\0" · next_client_id u64 · total_connections u64 · total_commands u64 ·
//!            expired_keys u64 · flushed u8 · records u64 · records × (key: u32 len + bytes ·
//!            0 (a tombstone) | 1 · value: u64 len + bytes · deadline i64)
//! ```
//!
//! `flushed`: the keyspace was flushed during the copy; the replacement drops what the steps
//! staged before it applies the records. A later record of a key replaces an earlier one.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::commands::Server;
use crate::handover::{next_entry, Reader};
use crate::store::{Store, NEVER};

/// The version of the step and last-part formats above.
pub const STEP_FORMAT: u32 = 1;
const STEP_MAGIC: &[u8; 8] = b"RESPST1\0";
const LAST_MAGIC: &[u8; 8] = b"RESPDL1\0";

/// A step ends once it wrote this many bytes…
pub const STEP_BYTES: u64 = 2 << 20;
/// …or ran this long (checked every [`CHECK_EVERY`] keys): the worker's clients wait for it.
pub const STEP_TIME: Duration = Duration::from_millis(2);
const CHECK_EVERY: usize = 64;
/// The copy ends early (the rest goes in the last part, with the connections stopped) once the
/// keys recorded as changed take this much: a write-heavy client cannot keep it going forever.
pub const DIRTY_MAX_BYTES: usize = 64 << 20;

/// A copy under way in the old worker: the positions below `next` are not copied yet.
#[derive(Debug)]
pub struct Copy {
    next: usize,
    pub steps: u64,
    /// The bounds: [`STEP_BYTES`] and [`DIRTY_MAX_BYTES`] (smaller in tests).
    pub step_bytes: u64,
    pub dirty_max: usize,
}

impl Copy {
    /// Starts a copy of `store` (it records changes from now on).
    pub fn start(store: &mut Store) -> Copy {
        store.start_recording();
        Copy { next: store.len(), steps: 0, step_bytes: STEP_BYTES, dirty_max: DIRTY_MAX_BYTES }
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

/// Writes the next step of the copy into `out` (at most about [`STEP_BYTES`] or [`STEP_TIME`]).
/// Ok(true): the copy is over (every position was written, or the recorded keys passed their
/// bound): the last part follows. A step with nothing to write writes nothing.
pub fn write_step(server: &Server, copy: &mut Copy, now: u64, out: &mut impl Write) -> io::Result<bool> {
    let store = &server.store;
    copy.next = copy.next.min(store.len());
    if store.dirty_bytes() > copy.dirty_max {
        return Ok(true);
    }
    let started = Instant::now();
    let unix_now = server.unix_ms(now);
    let mut out = io::BufWriter::with_capacity(256 * 1024, out);
    let (mut bytes, mut visited) = (0u64, 0usize);
    while copy.next > 0 {
        if bytes >= copy.step_bytes || (visited % CHECK_EVERY == CHECK_EVERY - 1 && started.elapsed() >= STEP_TIME) {
            break;
        }
        copy.next -= 1;
        visited += 1;
        let (key, entry) = store.get_index(copy.next).expect("below len");
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
    copy.steps += u64::from(bytes > 0);
    Ok(copy.next == 0)
}

/// Reads a step into `staged` (the replacement's keyspace of the copy, served by no one).
pub fn read_step(staged: &mut Store, unix_now: i64, now: u64, bytes: &[u8]) -> Result<(), String> {
    let mut r = Reader(bytes);
    if r.take(STEP_MAGIC.len())? != STEP_MAGIC {
        return Err("not a step of a resp keyspace".into());
    }
    while !r.0.is_empty() {
        let (key, value, deadline) = next_entry(&mut r)?;
        staged.put_moved(key.into(), value.to_vec(), deadline_in(unix_now, now, deadline));
    }
    Ok(())
}

/// Ends the copy and writes its last part: the counters, whether the keyspace was flushed, and
/// a record for each key changed since the copy began or not reached by it.
pub fn write_last(server: &mut Server, copy: Copy, now: u64, out: &mut impl Write) -> io::Result<()> {
    let dirty = server.store.stop_recording().unwrap_or_default();
    let store = &server.store;
    let unix_now = server.unix_ms(now);
    let next = copy.next.min(store.len());
    let not_reached = (0..next).filter_map(|i| store.get_index(i)).map(|(k, _)| k).filter(|k| !dirty.keys.contains(*k));
    let keys: Vec<&[u8]> = dirty.keys.iter().map(|k| &**k).chain(not_reached).collect();
    let mut out = io::BufWriter::with_capacity(256 * 1024, out);
    out.write_all(LAST_MAGIC)?;
    let [next_id, connections, commands] = server.counters();
    for n in [next_id, connections, commands, store.expired_keys] {
        out.write_all(&n.to_le_bytes())?;
    }
    out.write_all(&[u8::from(dirty.flushed)])?;
    out.write_all(&(keys.len() as u64).to_le_bytes())?;
    for key in keys {
        match store.peek(key).filter(|e| e.expires_at > now) {
            Some(e) => {
                out.write_all(&(key.len() as u32).to_le_bytes())?;
                out.write_all(key)?;
                out.write_all(&[1])?;
                out.write_all(&(e.value.len() as u64).to_le_bytes())?;
                out.write_all(&e.value)?;
                out.write_all(&deadline_out(unix_now, now, e.expires_at).to_le_bytes())?;
            }
            None => {
                out.write_all(&(key.len() as u32).to_le_bytes())?;
                out.write_all(key)?;
                out.write_all(&[0])?;
            }
        }
    }
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
    match r.take(1)? {
        [0] => {}
        [1] => staged = Store::default(),
        other => return Err(format!("bad flush flag {other:?}")),
    }
    let records = r.u64()?;
    let unix_now = server.unix_ms(now);
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
