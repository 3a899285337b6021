//! A pre-copy interleaved with writes of every kind ends with the replacement's keyspace equal
//! to the old one's (also under random operations, many seeds); what is recorded (only what the
//! copy passed: new keys never, removals before the cursor both keys); a flush during it, rounds,
//! the bound on what a copy sends, and a part that turns out unreadable (nothing of the copy is
//! served).

use std::collections::BTreeMap;

use super::*;
use crate::commands::{execute, ServerInfo, Session};
use crate::proto::Args;

/// The Unix time (ms) of the instant both tests' clocks start from.
const UNIX: i64 = 1_700_000_000_000;
/// The old worker's clock reads `OLD + t` at instant `t`, the new one's `NEW + t` (it started later).
const OLD: u64 = 1000;
const NEW: u64 = 50;

fn server(clock_at_start: u64) -> Server {
    let mut server = Server::new(ServerInfo { max_bulk: 1 << 20, ..ServerInfo::default() });
    server.unix_offset = Some(UNIX - clock_at_start as i64);
    server
}

fn run(server: &mut Server, session: &mut Session, now: u64, line: &str) {
    let msg = format!("{line}\r\n");
    let mut args = Args::default();
    args.parse(msg.as_bytes()).unwrap();
    let mut out = Vec::new();
    execute(server, session, args.view(msg.as_bytes()), now, &mut out);
}

/// The live keys at `now`: value and deadline in Unix ms (-1: none).
fn live(server: &Server, now: u64) -> BTreeMap<Vec<u8>, (Vec<u8>, i64)> {
    let unix_now = server.unix_ms(now);
    server
        .store
        .entries()
        .filter(|(_, e)| e.expires_at > now)
        .map(|(k, e)| (k.to_vec(), (e.value.clone(), deadline_out(unix_now, now, e.expires_at))))
        .collect()
}

/// An old worker with `keys` keys, one in five with a deadline far away, one in seven about to
/// expire.
fn filled(keys: usize) -> (Server, Session) {
    let mut old = server(OLD);
    let mut s = old.new_session(None, None);
    for i in 0..keys {
        let ttl = match i {
            i if i % 7 == 0 => " PX 40",
            i if i % 5 == 0 => " PX 100000",
            _ => "",
        };
        run(&mut old, &mut s, OLD, &format!("SET k{i} v{i}{ttl}"));
    }
    (old, s)
}

/// Runs the copy to its end, `between(old, session, step, t)` after each step, then the last
/// part; returns the replacement, the steps, the last part's bytes and the instant it ended.
fn copy_with(
    old: &mut Server,
    session: &mut Session,
    copy: Copy,
    between: impl FnMut(&mut Server, &mut Session, usize, u64),
) -> (Server, usize, usize, u64) {
    let (new, steps, last, t, _) = copy_counted(old, session, copy, between);
    (new, steps, last, t)
}

/// As [`copy_with`], also returning the copy's rounds.
fn copy_counted(
    old: &mut Server,
    session: &mut Session,
    mut copy: Copy,
    mut between: impl FnMut(&mut Server, &mut Session, usize, u64),
) -> (Server, usize, usize, u64, u64) {
    let new = server(NEW);
    let mut staged = Store::default();
    let (mut t, mut steps) = (0u64, 0usize);
    loop {
        let mut step = Vec::new();
        let ready = write_step(old, &mut copy, OLD + t, &mut step).unwrap();
        if step.starts_with(STEP_MAGIC) {
            assert!(step.len() as u64 <= copy.step_bytes + 64, "a step of {} bytes", step.len());
        }
        if !step.is_empty() {
            read_step(&mut staged, new.unix_ms(NEW + t), NEW + t, &step).unwrap();
            steps += 1;
        }
        assert!(new.store.is_empty(), "nothing staged is served before the last part");
        if ready {
            break;
        }
        t += 3;
        between(old, session, steps, t);
        // Active expiry runs meanwhile, as the worker's timer does.
        old.store.expire_cycle(OLD + t, 16);
    }
    let rounds = copy.rounds;
    let mut last = Vec::new();
    write_last(old, copy, OLD + t, &mut last).unwrap();
    let mut new = new;
    read_last(&mut new, staged, NEW + t, &last).unwrap();
    (new, steps, last.len(), t, rounds)
}

/// Writes of every kind resp has (its values are strings: no list or hash types), on keys
/// copied already, not yet, and new ones.
fn write_everything(old: &mut Server, s: &mut Session, n: usize, t: u64) {
    let now = OLD + t;
    for line in [
        format!("SET k{} new{n}", n * 3),
        format!("SET k{} again{n} KEEPTTL", n * 3 + 1),
        format!("DEL k{}", n * 5 + 1),
        "INCR counter".to_string(),
        format!("INCRBY k{} 5", n * 2),
        format!("SET n{n} 41"),
        format!("INCR n{n}"),
        format!("APPEND k{} -tail", n * 7 + 3),
        format!("EXPIRE k{} 1000", n * 11 + 4),
        format!("PEXPIRE k{} 1", n * 13 + 5),
        format!("SETEX fresh{n} 100 v"),
        format!("GETDEL k{}", n * 17 + 6),
        format!("GETSET k{} swapped", n * 19 + 2),
        format!("MSET a{n} 1 b{n} 2"),
        format!("PERSIST k{}", n * 10),
        format!("GETEX k{} PX 5000", n * 23 + 8),
        format!("UNLINK a{}", n.saturating_sub(1)),
        format!("SETNX k{} nx", n * 29 + 9),
        format!("DECRBY counter2 {n}"),
    ] {
        run(old, s, now, &line);
    }
}

#[test]
fn a_copy_interleaved_with_writes_of_every_kind_ends_with_the_same_keyspace() {
    let (mut old, mut s) = filled(3000);
    let mut full = Vec::new();
    crate::handover::write_worker(&old, OLD, &mut full).unwrap();
    let mut copy = Copy::start(&mut old.store);
    copy.step_bytes = 1024;
    let (new, steps, last, t) = copy_with(&mut old, &mut s, copy, write_everything);
    assert!(steps > 20, "{steps} steps");
    assert_eq!(live(&new, NEW + t), live(&old, OLD + t));
    assert!(last * 3 < full.len(), "the last part ({last} B) carries the writes, not the keyspace ({} B)", full.len());
    assert_eq!(new.counters(), old.counters());
    assert!(old.store.dirty_bytes() == 0, "the old worker records nothing after the copy");
}

#[test]
fn a_flush_during_the_copy_drops_what_was_copied_before_it() {
    let (mut old, mut s) = filled(1000);
    let mut copy = Copy::start(&mut old.store);
    copy.step_bytes = 512;
    let (new, steps, _, t) = copy_with(&mut old, &mut s, copy, |old, s, n, t| {
        match n {
            4 => run(old, s, OLD + t, "FLUSHALL"),
            9 => run(old, s, OLD + t, "FLUSHDB"),
            _ => {}
        }
        write_everything(old, s, n, t);
    });
    assert!(steps >= 4);
    assert!(!live(&old, OLD + t).is_empty());
    assert_eq!(live(&new, NEW + t), live(&old, OLD + t));
    assert!(new.store.peek(b"k999").is_none(), "a key flushed after it was copied is gone");
}

/// The recorded keys of `server`'s copy, sorted.
fn recorded(server: &mut Server) -> Vec<Vec<u8>> {
    let dirty = server.store.take_recorded().unwrap();
    let mut keys: Vec<Vec<u8>> = dirty.keys.iter().map(|k| k.to_vec()).collect();
    keys.sort();
    keys
}

#[test]
fn only_changes_to_what_the_copy_passed_are_recorded() {
    let (mut old, mut s) = server_with(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5"), ("f", "6")]);
    let mut copy = Copy::start(&mut old.store);
    copy.step_bytes = 1;
    // Two steps of one entry each: a and b are copied.
    for _ in 0..2 {
        write_step(&mut old, &mut copy, OLD, &mut Vec::new()).unwrap();
    }
    assert_eq!(old.store.copy_cursor(), Some(2));
    // New keys are appended past the cursor; writes past it are not recorded either.
    for line in ["SET new1 x", "SET new2 y", "SET e changed", "EXPIRE f 100", "APPEND d +"] {
        run(&mut old, &mut s, OLD, line);
    }
    assert_eq!(recorded(&mut old), Vec::<Vec<u8>>::new(), "nothing the copy passed changed");
    // A write before the cursor is recorded.
    run(&mut old, &mut s, OLD, "INCR b");
    assert_eq!(recorded(&mut old), [b"b".to_vec()]);
    // A removal past it: nothing (new2, the last key, moves into c's place, both not copied).
    run(&mut old, &mut s, OLD, "DEL c");
    assert_eq!(recorded(&mut old), Vec::<Vec<u8>>::new());
    assert_eq!(old.store.get_index(2).unwrap().0, b"new2");
    // A removal before it: the removed key and the one moved into its place (new1, never copied).
    run(&mut old, &mut s, OLD, "GETDEL a");
    assert_eq!(recorded(&mut old), [b"a".to_vec(), b"new1".to_vec()]);
    // The same through an expiry, lazy and active: b (copied) expires, f (moved to 1) is recorded.
    run(&mut old, &mut s, OLD, "PEXPIRE b 5");
    assert_eq!(recorded(&mut old), [b"b".to_vec()]);
    assert!(old.store.get(b"b", OLD + 10).is_none());
    assert_eq!(recorded(&mut old), [b"b".to_vec(), b"f".to_vec()]);
    run(&mut old, &mut s, OLD, "PEXPIRE new1 5");
    assert_eq!(recorded(&mut old), [b"new1".to_vec()]);
    old.store.expire_cycle(OLD + 10, 16);
    assert_eq!(recorded(&mut old), [b"e".to_vec(), b"new1".to_vec()]);
    // Removing the last key when the copy passed everything: the cursor follows the length.
    while !write_step(&mut old, &mut copy, OLD + 10, &mut Vec::new()).unwrap() {}
    assert_eq!(old.store.copy_cursor(), Some(old.store.len()));
    let last = old.store.get_index(old.store.len() - 1).unwrap().0.to_vec();
    old.store.remove(&last, OLD + 10);
    assert_eq!(old.store.copy_cursor(), Some(old.store.len()));
    assert_eq!(recorded(&mut old), [last]);
    // A flush: the cursor goes back to 0, and what comes after is past it.
    run(&mut old, &mut s, OLD, "FLUSHALL");
    run(&mut old, &mut s, OLD, "SET z 1");
    let dirty = old.store.take_recorded().unwrap();
    assert!(dirty.flushed && dirty.keys.is_empty() && dirty.cursor == 0);
}

/// An old worker with these keys, in this order.
fn server_with(keys: &[(&str, &str)]) -> (Server, Session) {
    let mut old = server(OLD);
    let mut s = old.new_session(None, None);
    for (k, v) in keys {
        run(&mut old, &mut s, OLD, &format!("SET {k} {v}"));
    }
    (old, s)
}

#[test]
fn a_writer_of_new_keys_adds_nothing_to_the_record_and_the_copy_takes_them() {
    let (mut old, mut s) = filled(3000);
    let mut copy = Copy::start(&mut old.store);
    copy.step_bytes = 1024;
    let mut added = 0;
    let (new, steps, last, t) = copy_with(&mut old, &mut s, copy, |old, s, n, t| {
        // Fewer bytes per step than the step copies: the copy catches up.
        if n < 100 {
            for i in 0..10 {
                run(old, s, OLD + t, &format!("SET w{n}:{i} {}", "x".repeat(30)));
                added += 1;
            }
        }
    });
    assert!(added > 500 && steps > 60, "{added} keys added over {steps} steps");
    assert_eq!(live(&new, NEW + t), live(&old, OLD + t));
    // Only expiries of copied keys are recorded (one in seven of the fill expires at 40 ms).
    assert!(last < 12_000, "the last part ({last} B) carries no new key");
}

#[test]
fn rounds_carry_the_recorded_keys_and_the_copy_goes_on() {
    let (mut old, mut s) = filled(3000);
    let mut copy = Copy::start(&mut old.store);
    copy.step_bytes = 1024;
    copy.round_bytes = 2000;
    // Overwrites of keys the copy passed, over and over: each one recorded.
    let (new, steps, last, t, rounds) = copy_counted(&mut old, &mut s, copy, |old, s, n, t| {
        write_everything(old, s, n, t);
        for i in 0..20 {
            run(old, s, OLD + t, &format!("SET k{} round{n}", (n * 31 + i) % 3000));
        }
    });
    assert!(rounds >= 3, "{rounds} rounds");
    assert!(steps > 60, "the copy went on to its end: {steps} steps");
    assert!(last < 6000, "the last part carries less than a round ({last} B)");
    assert_eq!(live(&new, NEW + t), live(&old, OLD + t));
}

#[test]
fn a_copy_past_its_bound_ends_with_the_rest_in_the_last_part() {
    let (mut old, mut s) = filled(3000);
    let mut copy = Copy::start(&mut old.store);
    copy.step_bytes = 1024;
    copy.max_sent = 10_000;
    let (new, steps, last, t) = copy_with(&mut old, &mut s, copy, write_everything);
    // ~3000 keys of ~20 bytes a step of 1 KiB: ~60 steps without the bound.
    assert!(steps < 20, "the copy ended early: {steps} steps");
    assert!(last > 20_000, "the keys it did not reach are in the last part ({last} B)");
    assert_eq!(live(&new, NEW + t), live(&old, OLD + t));
}

/// xorshift64: the random operations of [`random_operations_between_steps_never_lose_a_change`].
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn random_operations_between_steps_never_lose_a_change() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let (mut old, mut s) = filled(50 + rng.below(400) as usize);
        let mut copy = Copy::start(&mut old.store);
        copy.step_bytes = 64 + rng.below(512);
        copy.round_bytes = [300, 2000, usize::MAX][rng.below(3) as usize];
        // A writer of new keys can outrun steps this small: the bound ends those copies.
        copy.max_sent = [rng.below(20_000), 200_000][rng.below(2) as usize];
        copy.max_end_rounds = rng.below(4);
        let ops = 1 + rng.below(30);
        let (new, _, _, t) = copy_with(&mut old, &mut s, copy, |old, s, _, t| {
            for _ in 0..ops {
                let k = format!("k{}", rng.below(600));
                let line = match rng.below(14) {
                    0 | 1 => format!("SET {k} v{}", rng.below(1000)),
                    2 => format!("SET {k} t PX {}", 1 + rng.below(20)),
                    3 => format!("DEL {k}"),
                    4 => format!("UNLINK {k} k{}", rng.below(600)),
                    5 => format!("GETDEL {k}"),
                    6 => format!("APPEND {k} +"),
                    7 => format!("PEXPIRE {k} {}", 1 + rng.below(10)),
                    8 => format!("PERSIST {k}"),
                    9 => format!("SET n{} new", rng.below(100_000)),
                    10 => format!("GET {k}"),
                    11 => format!("SETNX {k} nx"),
                    12 if rng.below(40) == 0 => "FLUSHDB".to_string(),
                    _ => format!("MSET {k} m k{} m", rng.below(600)),
                };
                run(old, s, OLD + t, &line);
            }
        });
        let (got, want) = (live(&new, NEW + t), live(&old, OLD + t));
        let differ: Vec<_> = want
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v.clone(), got.get(k).cloned()))
            .chain(
                got.keys()
                    .filter(|k| !want.contains_key(*k))
                    .map(|k| (String::from_utf8_lossy(k).into_owned(), (vec![], 0), got.get(k).cloned())),
            )
            .collect();
        assert!(differ.is_empty(), "seed {seed}: (key, old's, new's) {differ:?}");
        assert_eq!(old.store.dirty_bytes(), 0, "seed {seed}");
    }
}

#[test]
fn an_unreadable_part_leaves_the_replacement_without_any_of_the_copy() {
    let (mut old, mut s) = filled(200);
    let mut copy = Copy::start(&mut old.store);
    copy.step_bytes = 256;
    let new = server(NEW);
    let mut staged = Store::default();
    let mut step = Vec::new();
    assert!(!write_step(&mut old, &mut copy, OLD, &mut step).unwrap());
    read_step(&mut staged, new.unix_ms(NEW), NEW, &step).unwrap();
    assert!(!staged.is_empty() && new.store.is_empty());
    // A step cut short is refused.
    assert!(read_step(&mut Store::default(), 0, NEW, &step[..step.len() - 1]).is_err());
    assert!(read_step(&mut Store::default(), 0, NEW, b"RESPKS1\0").is_err(), "not a step");
    run(&mut old, &mut s, OLD, "SET k1 changed");
    let mut last = Vec::new();
    write_last(&mut old, copy, OLD, &mut last).unwrap();
    for cut in [0, 8, 20, last.len() - 1] {
        let mut new = server(NEW);
        assert!(read_last(&mut new, staged.clone_for_test(), NEW, &last[..cut]).is_err(), "cut at {cut}");
        assert!(new.store.is_empty(), "all or nothing");
    }
    let mut longer = last.clone();
    longer.push(0);
    let mut new = server(NEW);
    assert!(read_last(&mut new, staged.clone_for_test(), NEW, &longer).is_err());
    assert!(new.store.is_empty());
    // The old worker stopped recording with its last part; a dropped copy stops it too.
    assert_eq!(old.store.dirty_bytes(), 0);
    assert_eq!(old.store.copy_cursor(), None);
    let _copy = Copy::start(&mut old.store);
    assert_eq!(old.store.copy_cursor(), Some(0));
    assert!(old.store.stop_recording().is_some());
    assert_eq!(old.store.copy_cursor(), None);
}

// Through the plugin's own events (`plugin_api::testing`, as the host calls them): a copy in
// steps with writes between them; then a replacement told to drop its staged steps keeps none.
#[test]
fn the_plugin_copies_in_steps_and_drops_what_it_staged_when_told() {
    use plugin_api::testing::TestPlugin;
    let mut old = TestPlugin::<crate::Resp>::new("").unwrap();
    let c = old.connect();
    let value = "v".repeat(100);
    let fill: String = (0..20_000).map(|i| format!("SET key:{i} {value}\r\n")).collect();
    old.feed(c, fill.as_bytes());
    old.host.take_sent(c);
    let mut new = TestPlugin::<crate::Resp>::new("").unwrap();
    let mut between = 0;
    let moved = old
        .hand_over_with_steps(&mut new, &[c], |old| {
            between += 1;
            let n = between;
            old.feed(
                c,
                format!("SET key:{n} w{n}\r\nDEL key:{}\r\nAPPEND key:{} +\r\n", 10_000 + n, 500 + n).as_bytes(),
            );
        })
        .unwrap();
    assert!(between >= 1, "several steps (20,000 keys of 100 bytes, steps of 2 MiB)");
    assert_eq!(moved.len(), 1);
    let values = |p: &TestPlugin<crate::Resp>| -> BTreeMap<Vec<u8>, Vec<u8>> {
        p.plugin.server.store.entries().map(|(k, e)| (k.to_vec(), e.value.clone())).collect()
    };
    assert_eq!(values(&new), values(&old));
    assert!(new.plugin.staged.is_none() && old.plugin.copy.is_none());

    // A step staged, then dropped: nothing of it is in the keyspace, nothing is kept.
    let mut again = TestPlugin::<crate::Resp>::new("").unwrap();
    let mut step = Vec::new();
    let mut copy = Copy::start(&mut new.plugin.server.store);
    write_step(&mut new.plugin.server, &mut copy, 0, &mut step).unwrap();
    assert!(again.call(|q, h| plugin_api::Protocol::adopt_worker_step(q, h, crate::handover::STATE_VERSION, &step)));
    assert!(again.plugin.staged.as_ref().is_some_and(|s| !s.is_empty()));
    again.call(plugin_api::Protocol::drop_worker_steps);
    assert!(again.plugin.staged.is_none() && again.plugin.server.store.is_empty());
}
