//! The pre-copy hand-over of a large worker state (docs/architecture.md, "Hand-over"): the old
//! worker writes its keyspace in steps while it serves, then stops its connections only for what
//! changed meanwhile. A writer client writes across the reload and every key ends as it wrote
//! it last; a client that connects during the copy is served at once by the old worker and
//! moves with the others; a copy that fails half-way leaves nothing of itself in the replacement.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use host_tests::{run_host_in, Client, Host, Output, TempDir};

const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_TIMEOUT: Duration = Duration::from_secs(30);

fn read_line(c: &mut Client) -> String {
    let line = c.read_line().unwrap_or_else(|e| panic!("no line: {e}"));
    String::from_utf8_lossy(&line).trim_end().to_string()
}

/// One RESP reply as text: a simple line, an integer, or a bulk string's bytes (`(nil)`).
fn reply(c: &mut Client) -> String {
    let line = read_line(c);
    match line.strip_prefix('$') {
        Some("-1") => "(nil)".to_string(),
        Some(_) => read_line(c),
        None => line,
    }
}

fn command(c: &mut Client, line: &str) -> String {
    c.send(format!("{line}\r\n").as_bytes());
    reply(c)
}

/// The value the filler writes for key `i`.
fn fill_value(i: usize) -> String {
    format!("v{i}-{}", "x".repeat(60))
}

/// Writes keys `k:0` … `k:{n-1}` in pipelined batches.
fn fill(port: u16, n: usize) {
    let mut c = Client::connect(port);
    for start in (0..n).step_by(5000) {
        let end = (start + 5000).min(n);
        let batch: String = (start..end).map(|i| format!("SET k:{i} {}\r\n", fill_value(i))).collect();
        c.send(batch.as_bytes());
        for _ in start..end {
            assert_eq!(read_line(&mut c), "+OK");
        }
    }
}

fn reload(host: &mut Host) {
    let out = host.command(["reload", "-g"], RELOAD_TIMEOUT);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
}

/// What the writer wrote last for each key it touched (None: it deleted it).
type Record = HashMap<String, Option<String>>;

/// Writes until `stop`, one command at a time (each answered before the next: its record is
/// exact): new keys, keys of the filled keyspace overwritten, appended to and deleted, a counter.
fn write_until(mut c: Client, stop: Arc<AtomicBool>, filled: usize) -> (Client, Record, u64) {
    let mut record = Record::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) || n < 200 {
        n += 1;
        let i = n as usize;
        match n % 5 {
            0 => {
                let key = format!("w:{}", i % 3000);
                assert_eq!(command(&mut c, &format!("SET {key} s{n}")), "+OK");
                record.insert(key, Some(format!("s{n}")));
            }
            1 => {
                let key = format!("k:{}", (i * 7919) % filled);
                assert_eq!(command(&mut c, &format!("SET {key} o{n}")), "+OK");
                record.insert(key, Some(format!("o{n}")));
            }
            2 => {
                let key = format!("k:{}", (i * 104_729) % filled);
                let deleted = command(&mut c, &format!("DEL {key}"));
                assert!(deleted == ":1" || deleted == ":0", "{deleted}");
                record.insert(key, None);
            }
            3 => {
                let key = format!("k:{}", (i * 1_299_709) % filled);
                let before = record.get(&key).cloned().unwrap_or_else(|| Some(fill_value((i * 1_299_709) % filled)));
                let len = command(&mut c, &format!("APPEND {key} +a"));
                assert!(len.starts_with(':'), "{len}");
                let after = format!("{}+a", before.unwrap_or_default());
                assert_eq!(len, format!(":{}", after.len()), "APPEND {key}");
                record.insert(key, Some(after));
            }
            _ => {
                let count = command(&mut c, "INCR counter");
                record.insert("counter".into(), Some(count.trim_start_matches(':').to_string()));
            }
        }
    }
    (c, record, n)
}

// 100,000 keys (~8 MB) copied in steps while a writer writes across `host reload -g`: the
// log says the copy's steps apart from the pause, the writer's connection moved (the same
// `CLIENT ID`), every key is what the writer wrote last (or the filler, for the others), and
// DBSIZE counts exactly those.
#[test]
fn a_keyspace_copied_while_serving_ends_with_every_write() {
    const FILLED: usize = 100_000;
    let mut host = Host::start("resp", &["--count", "1", "--drain-timeout", "30", "--handover-timeout", "30"]);
    fill(host.port(), FILLED);
    let mut writer = Client::connect(host.port());
    let id = command(&mut writer, "CLIENT ID");
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || write_until(writer, stop, FILLED))
    };
    reload(&mut host);
    let line = host.log().wait_for("hand-over: ", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    stop.store(true, Ordering::Relaxed);
    let (mut writer, record, writes) = thread.join().expect("the writer");
    let steps: u64 = line
        .split(" steps over ")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no steps in {line}"));
    assert!(steps >= 3, "the copy took several steps: {line}");
    assert!(line.contains("while serving"), "{line}");
    assert!(writes > 200, "the writer wrote across the reload ({writes} writes)");
    assert_eq!(command(&mut writer, "CLIENT ID"), id, "the same connection, moved");

    // Every key, through the writer's connection (MGET in batches).
    let mut expected: HashMap<String, Option<String>> =
        (0..FILLED).map(|i| (format!("k:{i}"), Some(fill_value(i)))).collect();
    expected.extend(record);
    let keys: Vec<&String> = expected.keys().collect();
    let mut wrong = Vec::new();
    for batch in keys.chunks(2000) {
        let names: Vec<&str> = batch.iter().map(|k| k.as_str()).collect();
        writer.send(format!("MGET {}\r\n", names.join(" ")).as_bytes());
        assert_eq!(read_line(&mut writer), format!("*{}", batch.len()));
        for key in batch {
            let got = reply(&mut writer);
            let want = expected[*key].clone().unwrap_or_else(|| "(nil)".into());
            if got != want && wrong.len() < 10 {
                wrong.push(format!("{key}: got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "keys not as last written: {wrong:#?}");
    let live = expected.values().filter(|v| v.is_some()).count();
    assert_eq!(command(&mut writer, "DBSIZE"), format!(":{live}"));
    // A fresh client sees the same keyspace.
    assert_eq!(command(&mut Client::connect(host.port()), "DBSIZE"), format!(":{live}"));
}

/// fixture_crash taking part in hand-overs with a worker state of `steps` steps, its
/// replacement failing as `adopt` says; a client on it, its echo checked.
fn crash_fixture(steps: u32, adopt: &str) -> (Host, Client) {
    let config = format!("handover = \"on\"\nsteps = \"{steps}\"\nadopt = \"{adopt}\"\nabort_after = \"3\"");
    let host = Host::start("fixture_crash", &["--plugin-config", &config, "--drain-timeout", "30"]);
    let mut c = Client::connect(host.port());
    c.send(b"before\n");
    assert_eq!(read_line(&mut c), "before");
    (host, c)
}

/// The service's hand-over row of `status --json`: its last hand-over's cause and stays.
fn last_handover(host: &mut Host) -> (serde_json::Value, serde_json::Value) {
    let out = host.command(["status", "--json"], Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let row = &json["handovers"][0];
    (row["last_cause"].clone(), row["last_stays"].clone())
}

// The replacement dies while it adopts the 4th of 20 steps: the hand-over fails, the old worker
// (which kept everything: nothing was lent during the copy) serves its client on, and its plugin
// forgets the copy (`handover_drop_steps`). The report says the replacement is gone (whether the
// old worker saw its end close or a write to it fail), in the log and `status --json`.
#[test]
fn a_replacement_that_dies_during_the_copy_leaves_everything_with_the_old_worker() {
    let (mut host, mut c) = crash_fixture(20, "abort_step");
    reload(&mut host);
    host.log().wait_for("fixture_crash aborts while adopting a step", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let failed = host.log().wait_for("hand-over failed, ", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(failed.contains("1 drained: the new worker is gone"), "{failed}");
    assert!(failed.contains("cause=gone"), "{failed}");
    let (cause, stays) = last_handover(&mut host);
    assert_eq!(cause, "gone");
    assert_eq!(stays, serde_json::json!([["the replacement is gone", 1]]));
    host.log().wait_for("fixture_crash forgets its copy", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    c.send(b"after\n");
    assert_eq!(read_line(&mut c), "after", "the old worker still serves it");
}

// The replacement staged 20 steps, then refuses the worker state: it drops what it staged (the
// plugin hears `handover_drop_steps`), the old worker serves its client on.
#[test]
fn a_replacement_that_refuses_the_state_after_the_steps_drops_them() {
    let (mut host, mut c) = crash_fixture(20, "refuse_state");
    reload(&mut host);
    host.log().wait_for("fixture_crash refuses the worker state", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let dropped = host.log().wait_for("dropping the staged steps", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(dropped.contains("steps=20"), "{dropped}");
    host.log().wait_for("fixture_crash drops 81920 staged bytes", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let failed = host.log().wait_for("hand-over failed, ", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    // The refusal may close the channel while the old worker still writes its connection's
    // frame: the refusal, read after the failed write, is still the reason.
    assert!(failed.contains("could not adopt: the plugin refused the worker state"), "{failed}");
    let (cause, stays) = last_handover(&mut host);
    assert_eq!(cause, "not_adopted");
    assert_eq!(stays, serde_json::json!([["the replacement could not adopt the state", 1]]));
    assert_eq!(host.log().count("fixture_crash forgets its copy"), 0, "its last part was written");
    c.send(b"after\n");
    assert_eq!(read_line(&mut c), "after", "the old worker still serves it");
}

// A client that connects while the worker state is copied is accepted and served by the old
// worker at once (the copy cannot end before: fixture_crash holds it while a file exists, so
// nothing here depends on timing), and it moves with the others once the connections stop.
// Before, the old worker stopped accepting at `HandOver`: the client waited in the accept queue
// for the whole copy (here: forever, its read timing out).
#[test]
fn a_client_that_connects_during_the_copy_is_served_at_once_and_moves() {
    client_during_the_copy(false);
}

// The same when the connections then move in batches: the client accepted during the copy is in
// the batches' list when the connections stop.
#[test]
fn a_client_that_connects_during_the_copy_moves_in_the_batches() {
    client_during_the_copy(true);
}

/// One fixture_crash worker whose copy of 3 steps is held while a file exists (`hold_copy`: a test
/// acts during the copy for as long as it needs, then removes the file), `config` added, and a
/// client on it (its echo checked). The file's directory comes along: it is removed on drop.
struct HeldCopy {
    _files: TempDir,
    hold: PathBuf,
    host: Host,
    client: Client,
}

fn held_copy(config: &str) -> HeldCopy {
    let files = TempDir::new();
    let hold = files.path().join("hold");
    std::fs::write(&hold, b"").expect("the hold file");
    let config = format!("handover = \"on\"\nsteps = \"3\"\n{config}hold_copy = \"{}\"", hold.display());
    let host = Host::start(
        "fixture_crash",
        &["--count", "1", "--plugin-config", &config, "--drain-timeout", "30", "--handover-timeout", "30"],
    );
    let mut client = Client::connect(host.port());
    client.send(b"before\n");
    assert_eq!(read_line(&mut client), "before");
    HeldCopy { _files: files, hold, host, client }
}

/// `host reload -g`, in a thread of its own (it answers once the replacement is ready: during the
/// copy), and the copy under way and held.
fn reload_during_the_copy(host: &Host) -> std::thread::JoinHandle<Output> {
    let dir = host.dir().path().to_path_buf();
    let reload = std::thread::spawn(move || run_host_in(&dir, ["reload", "-g"], RELOAD_TIMEOUT));
    host.log().wait_for("fixture_crash holds its copy", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    reload
}

fn client_during_the_copy(batches: bool) {
    let batches = if batches { "on" } else { "off" };
    let HeldCopy { _files, hold, host, client: mut before } = held_copy(&format!("batches = \"{batches}\"\n"));
    let reload = reload_during_the_copy(&host);

    let mut during = Client::connect(host.port());
    during.send(b"during\n");
    assert_eq!(read_line(&mut during), "during", "the old worker serves a new client during the copy");
    assert_eq!(host.log().count("worker state copied while serving"), 0, "the copy is still held");
    assert_eq!(host.log().count("hand-over: "), 0);

    std::fs::remove_file(&hold).expect("the hold file removed");
    let line = host.log().wait_for("hand-over: ", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("2 connections moved, 0 drained"), "both clients moved: {line}");
    let batched = host.log().count("handing over in batches");
    assert_eq!(batched, usize::from(batches == "on"), "batches = {batches}");
    assert!(line.contains("while serving"), "{line}");
    let out = reload.join().expect("the reload");
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    for (c, text) in [(&mut during, "after"), (&mut before, "again")] {
        c.send(format!("{text}\n").as_bytes());
        assert_eq!(read_line(c), text, "served by the replacement");
    }
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> i32 {
    let at = line.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name}= in {line:?}")) + name.len() + 1;
    let digits: String = line[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("no number after {name}= in {line:?}"))
}

// Issue 21: a second reload while the first one's hand-over still copies (fixture_crash holds
// its copy while a file exists). The second replacement W3 is ready, but W2, which still adopts
// from W1, is not told to hand over (that ended its adoption half-way: W1 took its client back
// and drained it, W2's staged steps and the state were lost): the hand-over to W3 waits for the
// one to W2 to end, then goes. The client moves twice, never closed, nothing drained.
#[test]
fn a_second_reload_during_a_copy_hands_over_once_the_first_ended() {
    let HeldCopy { _files, hold, host, client: mut c } = held_copy("");
    let out = reload_during_the_copy(&host).join().expect("the first reload");
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);

    let dir = host.dir().path().to_path_buf();
    let second = std::thread::spawn(move || run_host_in(&dir, ["reload", "-g"], RELOAD_TIMEOUT));
    let waits = host.log().wait_for("waits for the one to", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let out = second.join().expect("the second reload");
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let third = field(&waits, "new_pid");
    assert_eq!(host.log().count("hand-over: "), 0, "the copy is still held");
    assert_eq!(host.log().count("hand-over failed"), 0);
    c.send(b"during\n");
    assert_eq!(read_line(&mut c), "during", "the first worker serves it meanwhile");

    std::fs::remove_file(&hold).expect("the hold file removed");
    for n in 1..=2 {
        let line = host.log().wait_for_nth("hand-over: ", n, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
        assert!(line.contains("1 connections moved, 0 drained"), "hand-over {n}: {line}");
    }
    host.wait_workers(1, LOG_TIMEOUT, |pids| pids == [third]).unwrap_or_else(|e| panic!("{e}"));
    c.send(b"after\n");
    assert_eq!(read_line(&mut c), "after", "served by the third worker");
    assert_eq!(host.log().count("hand-over failed"), 0);
}
