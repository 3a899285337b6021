//! A pre-copy interleaved with writes of every kind ends with the replacement's keyspace equal
//! to the old one's; a flush during it, the bound on the recorded keys, and a part that turns
//! out unreadable (nothing of the copy is served).

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
    mut copy: Copy,
    mut between: impl FnMut(&mut Server, &mut Session, usize, u64),
) -> (Server, usize, usize, u64) {
    let new = server(NEW);
    let mut staged = Store::default();
    let (mut t, mut steps) = (0u64, 0usize);
    loop {
        let mut step = Vec::new();
        let ready = write_step(old, &mut copy, OLD + t, &mut step).unwrap();
        assert!(step.len() as u64 <= copy.step_bytes + 64, "a step of {} bytes", step.len());
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
    let mut last = Vec::new();
    write_last(old, copy, OLD + t, &mut last).unwrap();
    let mut new = new;
    read_last(&mut new, staged, NEW + t, &last).unwrap();
    (new, steps, last.len(), t)
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

#[test]
fn the_recorded_keys_are_bounded_and_the_rest_goes_in_the_last_part() {
    let (mut old, mut s) = filled(3000);
    let mut copy = Copy::start(&mut old.store);
    copy.step_bytes = 1024;
    copy.dirty_max = 2000;
    let (new, steps, last, t) = copy_with(&mut old, &mut s, copy, write_everything);
    // ~3000 keys of ~20 bytes a step of 1 KiB: ~60 steps without the bound.
    assert!(steps < 20, "the copy ended early: {steps} steps");
    assert!(last > 20_000, "the keys it did not reach are in the last part ({last} B)");
    assert_eq!(live(&new, NEW + t), live(&old, OLD + t));
}

#[test]
fn an_unreadable_part_leaves_the_replacement_without_any_of_the_copy() {
    let (mut old, mut s) = filled(200);
    let mut copy = Copy::start(&mut old.store);
    copy.step_bytes = 256;
    let new = server(NEW);
    let mut staged = Store::default();
    let mut step = Vec::new();
    assert!(!write_step(&old, &mut copy, OLD, &mut step).unwrap());
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
    let _copy = Copy::start(&mut old.store);
    run(&mut old, &mut s, OLD, "SET k2 x");
    assert!(old.store.dirty_bytes() > 0);
    assert!(old.store.stop_recording().is_some());
    run(&mut old, &mut s, OLD, "SET k3 x");
    assert_eq!(old.store.dirty_bytes(), 0);
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
    write_step(&new.plugin.server, &mut copy, 0, &mut step).unwrap();
    assert!(again.call(|q, h| plugin_api::Protocol::adopt_worker_step(q, h, crate::handover::STATE_VERSION, &step)));
    assert!(again.plugin.staged.as_ref().is_some_and(|s| !s.is_empty()));
    again.call(plugin_api::Protocol::drop_worker_steps);
    assert!(again.plugin.staged.is_none() && again.plugin.server.store.is_empty());
}
