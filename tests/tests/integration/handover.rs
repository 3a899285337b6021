//! Hand-over (docs/architecture.md, "Hand-over"): on a replacement the old worker's connections
//! move to the new worker with what it had read and the plugin's state, instead of draining.
//! Each test speaks as a real client and checks what it would notice: an unbroken connection,
//! nothing lost; and, when the replacement fails, the old worker still serving it.

use std::time::Duration;

use host_tests::{Client, Host};

const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TIMEOUT: Duration = Duration::from_secs(15);

fn read_line(c: &mut Client) -> String {
    let line = c.read_line().unwrap_or_else(|e| panic!("no line: {e}"));
    String::from_utf8_lossy(&line).into_owned()
}

/// Sends `first`, reads its echo, then sends `half` and waits until the worker has read it (its
/// `connections` row counts the bytes): the half line is in the worker's buffer, not the
/// kernel's, when the test goes on.
fn half_line_read(host: &mut Host, c: &mut Client, first: &[u8], half: &[u8]) {
    c.send(first);
    assert_eq!(read_line(c).as_bytes(), first);
    c.send(half);
    let bytes = format!(" {}B ", first.len() + half.len());
    host_tests::poll_until(Duration::from_secs(5), || {
        let out = host.command(["connections"], Duration::from_secs(5));
        out.stdout.lines().any(|l| l.contains(&bytes)).then_some(())
    })
    .expect("the half line never reached the worker");
}

fn reload(host: &mut Host, args: &[&str]) {
    let out = host.command(args, RELOAD_TIMEOUT);
    assert!(out.status.success(), "{args:?}: {}{}", out.stdout, out.stderr);
}

// A half-sent line read by the old worker is completed by the new one after `host reload -g`,
// and the connection goes on (with a drain it would close after that line).
#[test]
fn a_half_sent_line_is_completed_after_a_graceful_reload() {
    let mut host = Host::start("text", &["--drain-timeout", "30"]);
    let old = host.wait_workers(1, LOG_TIMEOUT, |_| true).unwrap_or_else(|e| panic!("{e}"));
    let mut c = Client::connect(host.port());
    half_line_read(&mut host, &mut c, b"first\n", b"hel");
    reload(&mut host, &["reload", "-g"]);
    let line = host.log().wait_for("hand-over: 1 connections moved", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("0 drained"), "{line}");
    // The old worker had nothing left to drain: it is gone long before the drain timeout.
    host.wait_workers(1, LOG_TIMEOUT, |now| now != old).unwrap_or_else(|e| panic!("{e}"));
    c.send(b"lo\n");
    assert_eq!(read_line(&mut c), "hello\n");
    c.send(b"again\n");
    assert_eq!(read_line(&mut c), "again\n", "the connection goes on in the new worker");
    // `status --json` and the table count it.
    let out = host.command(["status", "--json"], Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let row = &json["handovers"][0];
    assert_eq!(
        (row["service"].as_str(), row["moved"].as_u64(), row["drained"].as_u64()),
        (Some("text"), Some(1), Some(0)),
        "{json}"
    );
    let table = host.command(["status"], Duration::from_secs(10)).stdout;
    assert!(table.contains("HAND-OVERS") && table.contains("1 connections moved"), "{table}");
}

// The same across a reload the watcher starts: a new text.so moved into the plugin directory.
#[test]
fn a_half_sent_line_is_completed_after_a_watcher_reload() {
    use host_tests::plugin_dir::{variant, PluginDir};
    let dir = PluginDir::new();
    dir.mv("text.so", &std::fs::read(host_tests::plugin_file("text")).unwrap());
    let mut host = Host::start("text", &["--plugin-dir", &dir.arg(), "--drain-timeout", "30"]);
    let mut c = Client::connect(host.port());
    half_line_read(&mut host, &mut c, b"first\n", b"hel");
    dir.mv("text.so", &variant(&host_tests::plugin_file("text"), "next"));
    host.log().wait_for("hand-over: 1 connections moved", RELOAD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    c.send(b"lo\n");
    assert_eq!(read_line(&mut c), "hello\n");
    c.send(b"again\n");
    assert_eq!(read_line(&mut c), "again\n");
}

// Recycling (`--max-requests`) replaces the worker under a busy connection: it moves, and every
// line comes back once, in order.
#[test]
fn a_recycled_worker_hands_its_connection_over() {
    let host = Host::start("text", &["--max-requests", "40"]);
    let mut c = Client::connect(host.port());
    for i in 0..200 {
        c.send(format!("line {i}\n").as_bytes());
        assert_eq!(read_line(&mut c), format!("line {i}\n"));
    }
    host.log().wait_for("hand-over: 1 connections moved", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    c.send(b"last\n");
    assert_eq!(read_line(&mut c), "last\n");
    assert_eq!(host.log().count("hand-over failed"), 0, "{}", host.log_text());
}

/// `n` clients, each with a line echoed, send `during {i}` while `host <args>` runs; once the
/// log says `moved` (when given), each reads its line back and has `after {i}` echoed: nothing
/// lost, repeated or reordered, no connection closed, no hand-over failed.
fn lines_sent_during_a_reload_arrive(host: &mut Host, n: usize, args: &[&str], moved: Option<&str>) {
    let mut clients = clients_with_a_line(host, n, false);
    let writers: Vec<_> = clients.iter().map(Client::writer).collect();
    let during = std::thread::spawn(move || {
        for (i, mut w) in writers.into_iter().enumerate() {
            std::io::Write::write_all(&mut w, format!("during {i}\n").as_bytes()).expect("the connection is open");
        }
    });
    reload(host, args);
    during.join().unwrap();
    if let Some(moved) = moved {
        host.log().wait_for(moved, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}: {}", host.log_text()));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        assert_eq!(read_line(c), format!("during {i}\n"));
    }
    each_answers(&mut clients, "after", "after", "still connected");
    assert_eq!(host.log().count("hand-over failed"), 0, "{}", host.log_text());
}

// A plain reload (`host reload`, old workers stop at once) hands over too, and what the client
// sends while it runs is not lost.
#[test]
fn a_plain_reload_hands_over_what_arrives_meanwhile() {
    let mut host = Host::start("text", &["--count", "2"]);
    lines_sent_during_a_reload_arrive(&mut host, 6, &["reload"], None);
}

// More connections than one frame carries (253 descriptors): every one moves, its socket lent
// (not duplicated) and closed in the old worker only after the acknowledgement; lines sent while
// the hand-over runs are answered once, in order, whichever worker read them (those that
// arrived while no worker watched are announced by the new worker's registration, not read on
// the chance).
#[test]
fn connections_of_several_frames_all_move_with_what_they_sent_meanwhile() {
    const N: usize = 600;
    let mut host = Host::start("text", &["--count", "1"]);
    let moved = format!("hand-over: {N} connections moved");
    lines_sent_during_a_reload_arrive(&mut host, N, &["reload", "-g"], Some(&moved));
}

// `host reload -g --handovers` answers once the hand-overs it began have ended, with their
// outcome (a plain `reload -g` answers at the chain's end: `a_slow_replacement_continued`); by
// then every client was moved, and each is answered by the new worker.
#[test]
fn reload_with_handovers_answers_with_their_outcome() {
    const N: usize = 3;
    let mut host = Host::start("text", &["--count", "1", "--drain-timeout", "30"]);
    let old = host.worker_pids();
    let mut clients = clients_with_a_line(&mut host, N, false);
    let out = host.command(["reload", "-g", "--handovers"], RELOAD_TIMEOUT);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("reload done: 1 workers replaced"), "{}", out.stdout);
    assert!(
        out.stdout.trim_end().ends_with(&format!("; hand-overs: {N} connections moved, 0 drained")),
        "{}",
        out.stdout
    );
    each_answers(&mut clients, "after", "after", "still connected");
    let pids = open_connections(&mut host);
    assert!(pids.len() == N && !pids.contains(&old[0]), "every connection in the new worker: {pids:?}");
}

// `--no-handover` keeps the drain: the half line is finished by the old worker, which then
// closes the connection.
#[test]
fn no_handover_drains_as_before() {
    let mut host = Host::start("text", &["--no-handover", "--drain-timeout", "30"]);
    let mut c = Client::connect(host.port());
    half_line_read(&mut host, &mut c, b"first\n", b"hel");
    reload(&mut host, &["reload", "-g"]);
    c.send(b"lo\n");
    assert_eq!(read_line(&mut c), "hello\n");
    c.wait_closed(Duration::from_secs(10)).expect("a drained connection closes after its line");
    assert_eq!(host.log().count("hand-over"), 0, "{}", host.log_text());
}

/// fixture_crash taking part in hand-overs, with `config` (more `key = "value"` lines: how its
/// replacement or its old worker misbehaves) and `args`.
fn fixture_crash(config: &str, args: &[&str]) -> Host {
    let config = format!("handover = \"on\"\n{config}");
    let mut all = vec!["--plugin-config", config.as_str()];
    all.extend_from_slice(args);
    Host::start("fixture_crash", &all)
}

/// The flags of the tests whose replacement is stuck or slow: a long drain, a short hand-over.
const STUCK_ARGS: [&str; 4] = ["--drain-timeout", "30", "--handover-timeout", "1"];

/// fixture_crash with its replacement failing as `adopt` says.
fn failing_replacement(adopt: &str) -> Host {
    fixture_crash(&format!("adopt = \"{adopt}\"\n"), &["--drain-timeout", "30"])
}

/// `n` clients, each having sent `before {i}` and read its echo; with `half`, each also sent the
/// half line `hal`, which the worker has read (`half_line_read`).
fn clients_with_a_line(host: &mut Host, n: usize, half: bool) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..n).map(|_| Client::connect(host.port())).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let first = format!("before {i}\n");
        match half {
            true => half_line_read(host, c, first.as_bytes(), b"hal"),
            false => {
                c.send(first.as_bytes());
                assert_eq!(read_line(c), first);
            }
        }
    }
    clients
}

/// Each client sends `{prefix} {i}` and must hear `{answer} {i}` back (`half` and the client's
/// half line completed by `f`, or its line echoed).
fn each_answers(clients: &mut [Client], prefix: &str, answer: &str, why: &str) {
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!("{prefix} {i}\n").as_bytes());
        assert_eq!(read_line(c), format!("{answer} {i}\n"), "client {i}: {why}");
    }
}

/// `reload -g` to a replacement that stops itself while adopting (fixture_crash's
/// `adopt = "stop"`), continued once the old worker's deadline passed (it keeps what it was
/// sent, and has `HANDOVER_CANCEL_WAIT_MS` to answer): its pid and the old worker's `hand-over
/// ended` line, once it is seen that the replacement was neither ended nor killed.
fn a_slow_replacement_continued(host: &mut Host) -> (i32, String) {
    // `reload -g` answers once the slot's replacement is ready, before the hand-over it begins
    // has ended (it cannot end while the replacement is stopped): docs/architecture.md, "The
    // reload pipeline".
    let out = host.command(["reload", "-g"], RELOAD_TIMEOUT);
    assert!(
        out.status.success() && out.stdout.contains("reload done: 1 workers replaced"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let new = stopped_replacement(host);
    assert_eq!(host.log().count("hand-over ended"), 0, "{}", host.log_text());
    host.log()
        .wait_for("the replacement did not adopt in time; it keeps what it was sent", LOG_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    continue_once_stopped(new);
    let line = host.log().wait_for("hand-over ended", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(!matches!(process_state(new), None | Some('Z')), "the replacement was ended: {}", host.log_text());
    assert_eq!(host.log().count("killing it"), 0, "{}", host.log_text());
    (new, line)
}

/// Each open connection once (`host connections`): `moved` in the replacement `new`, `stayed` in
/// the old worker, none elsewhere.
fn assert_each_once_in(host: &mut Host, (new, moved): (i32, usize), (old, stayed): (i32, usize)) {
    let pids = open_connections(host);
    let in_new = pids.iter().filter(|&&p| p == new).count();
    let in_old = pids.iter().filter(|&&p| p == old).count();
    assert_eq!((in_new, in_old, pids.len()), (moved, stayed, moved + stayed), "{pids:?}");
}

/// The `pid=` of a log line.
fn pid_in(line: &str) -> i32 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("pid=")?.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

/// After a `reload -g` to a fixture_crash whose replacement stops itself while adopting
/// (`adopt = "stop"`): the replacement's pid.
fn stopped_replacement(host: &Host) -> i32 {
    pid_in(&host.log().wait_for("fixture_crash stops itself", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}")))
}

/// The number `name=N` of a log line.
fn field_of(line: &str, name: &str) -> usize {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line}"))
}

/// The pid of the worker serving each open connection (`host connections`), one a connection.
fn open_connections(host: &mut Host) -> Vec<i32> {
    let out = host.command(["connections"], Duration::from_secs(5));
    let rows = out.stdout.lines().filter(|l| l.contains(" open"));
    rows.map(|r| r.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{r}"))).collect()
}

// The replacement dies while adopting: the old worker takes its connections back and serves
// them (it drains: its plugin keeps draining connections open), what the client sent meanwhile
// included.
#[test]
fn a_replacement_that_crashes_while_adopting_loses_nothing() {
    let mut host = failing_replacement("abort");
    let mut c = Client::connect(host.port());
    half_line_read(&mut host, &mut c, b"one\n", b"tw");
    reload(&mut host, &["reload", "-g"]);
    let line = host.log().wait_for("hand-over failed", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("the new worker is gone") || line.contains("broke"), "{line}");
    c.send(b"o\n");
    assert_eq!(read_line(&mut c), "two\n", "the old worker completes the line it had read half of");
    c.send(b"three\n");
    assert_eq!(read_line(&mut c), "three\n");
}

// In batches (64 connections at a time, each acknowledged as the replacement adopts it), a
// replacement that dies mid-way: the connections it acknowledged were its own and close with it;
// every other one is taken back by the old worker, which answers it. fixture_crash aborts while
// adopting its 301st connection: the first four batches (256) were acknowledged, the fifth and
// what followed were not. (All at once, the first frame alone, 253, would have been; batches of
// 128 or 256 also acknowledge 256 here.)
#[test]
fn a_replacement_that_dies_mid_way_through_the_batches_loses_only_what_it_acknowledged() {
    const N: usize = 400;
    let config = "batches = \"on\"\nadopt = \"abort\"\nabort_after = \"300\"\n";
    let mut host = fixture_crash(config, &["--drain-timeout", "30"]);
    let mut clients = clients_with_a_line(&mut host, N, false);
    reload(&mut host, &["reload", "-g"]);
    let line = host.log().wait_for("hand-over failed", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    // The old worker learns it from the channel's end, a reset, or (a later batch on its way as
    // the replacement dies) a send that fails.
    let gone = ["the new worker is gone", "broke", "could not send connections"];
    assert!(gone.iter().any(|why| line.contains(why)), "{line}");
    let (mut answered, mut closed) = (0, 0);
    for (i, c) in clients.iter_mut().enumerate() {
        let _ = c.try_send(format!("after {i}\n").as_bytes());
        match c.read_line() {
            Ok(line) => {
                assert_eq!(String::from_utf8_lossy(&line), format!("after {i}\n"));
                answered += 1;
            }
            Err(_) => closed += 1,
        }
    }
    assert_eq!((closed, answered), (256, N - 256), "{}", host.log_text());
    // The report counts every connection that stayed, those not taken out yet included.
    let out = host.command(["status", "--json"], Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let row = &json["handovers"][0];
    assert_eq!((&row["failed"], &row["moved"], &row["drained"]), (&1.into(), &256.into(), &(N - 256).into()), "{json}");
}

// A replacement stuck after it accepted the offer (fixture_crash stops itself with SIGSTOP
// while adopting the first connection), `--handover-timeout 1`: at its deadline the old worker
// holds lent connections whose frames wait in the replacement's socket, so it sends `Done` after
// them; unanswered within `HANDOVER_CANCEL_WAIT_MS` too, it asks the master to end the
// replacement, and takes back what was not acknowledged only once the replacement's end of the
// pair has closed. The stopped replacement is dead by then (continued, it would adopt
// those frames and read the connections the old worker serves again: two workers on one
// connection), and the old worker answers every client, the line it had read half of included.
#[test]
fn a_replacement_stuck_after_accepting_is_ended_before_the_old_worker_takes_its_connections_back() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    const N: usize = 3;
    let mut host = fixture_crash("adopt = \"stop\"\n", &STUCK_ARGS);
    let old = host.worker_pids();
    assert_eq!(old.len(), 1, "one worker: {old:?}");
    let mut clients = clients_with_a_line(&mut host, N, true);
    reload(&mut host, &["reload", "-g"]);
    let new = stopped_replacement(&host);
    let line = host.log().wait_for("hand-over failed", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    // Were it still there, this would let it go on adopting.
    let _ = kill(Pid::from_raw(new), Signal::SIGCONT);
    let gone = host_tests::poll_until(LOG_TIMEOUT, || matches!(process_state(new), None | Some('Z')).then_some(()));
    assert!(gone.is_some(), "the stuck replacement {new} still runs ({line}): {}", host.log_text());
    assert!(line.contains("within 1000 ms (it was ended)"), "{line}");
    assert!(
        host.log().count("did not adopt its predecessor's connections in time; killing it") == 1,
        "{}",
        host.log_text()
    );
    each_answers(&mut clients, "f", "half", "the old worker completes the line it had read half of");
    assert!(host.worker_pids().contains(&old[0]), "the old worker drains on");
    assert_eq!(open_connections(&mut host), [old[0]; N], "each connection once, in the old worker");
    // The cause, as a name, in `status --json`: the hand-over timed out.
    let out = host.command(["status", "--json"], Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(json["handovers"][0]["last_cause"], "timed_out", "{json}");
}

// The replacement does not give up on its own once it accepted the offer, and the old worker's
// deadline counts from the worker state sent: the old worker stops (SIGSTOP, fixture_crash's
// `export = "stop"`) while exporting its worker state, for longer than `--handover-timeout 1`.
// Continued, it sends the state and the connections, which the replacement, still waiting,
// adopts: every connection moves, the line read half of is completed by the new worker.
#[test]
fn an_old_worker_slow_to_write_its_state_still_hands_over() {
    const N: usize = 3;
    let mut host = fixture_crash("export = \"stop\"\n", &STUCK_ARGS);
    let old = host.worker_pids();
    let mut clients = clients_with_a_line(&mut host, N, true);
    reload(&mut host, &["reload", "-g"]);
    let stopped = host.log().wait_for("stops itself while exporting", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pid_in(&stopped), old[0], "{stopped}");
    host_tests::poll_until(LOG_TIMEOUT, || (process_state(old[0]) == Some('T')).then_some(()))
        .expect("the old worker did not stop");
    // Not a synchronisation: the timeout under test passes (the replacement's, had it kept one
    // after accepting, and the old worker's own, had it counted the export).
    std::thread::sleep(Duration::from_millis(2500));
    continue_once_stopped(old[0]);
    let line = host.log().wait_for("hand-over ended", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains(&format!("moved={N} ")) && line.contains(" stayed=0 "), "{line}\n{}", host.log_text());
    each_answers(&mut clients, "f", "half", "the new worker completes the line");
}

// A replacement slower than `handover_timeout` but not stuck is not killed: at its deadline the
// old worker sends nothing more but `Done` after what it lent; the replacement (stopped while
// adopting, fixture_crash's `adopt = "stop"`, then continued) adopts what it had been sent,
// acknowledges it and answers: every connection is its own, none served by both workers, none
// closed (killed, it would have taken the connections it acknowledged down with it).
#[test]
fn a_replacement_slower_than_the_timeout_keeps_what_it_was_sent_and_is_not_killed() {
    const N: usize = 3;
    let mut host = fixture_crash("adopt = \"stop\"\n", &STUCK_ARGS);
    let old = host.worker_pids();
    assert_eq!(old.len(), 1, "one worker: {old:?}");
    let mut clients = clients_with_a_line(&mut host, N, true);
    let (new, line) = a_slow_replacement_continued(&mut host);
    assert!(line.contains(&format!("moved={N} ")) && line.contains(" stayed=0 "), "{line}\n{}", host.log_text());
    each_answers(&mut clients, "f", "half", "the replacement completes the line");
    assert_eq!(open_connections(&mut host), [new; N], "each connection once, in the replacement");
}

// The same in batches, with more connections than may wait for their acknowledgement at once:
// at the deadline the replacement (stopped while adopting its first connection) holds the
// batches it was sent; the connections not taken out yet stay with the old worker (`the
// hand-over timed out`). Continued, the replacement adopts what it was sent and answers `Done`:
// every client is answered, each by one worker, none closed.
#[test]
fn a_slow_replacement_in_batches_keeps_the_batches_it_was_sent_and_the_rest_stays() {
    const N: usize = 600;
    let mut host = fixture_crash("batches = \"on\"\nadopt = \"stop\"\n", &STUCK_ARGS);
    let old = host.worker_pids();
    assert_eq!(old.len(), 1, "one worker: {old:?}");
    let mut clients = clients_with_a_line(&mut host, N, false);
    let (new, line) = a_slow_replacement_continued(&mut host);
    let (moved, stayed) = (field_of(&line, "moved"), field_of(&line, "stayed"));
    assert!(moved > 0 && stayed > 0 && moved + stayed == N, "{line}\n{}", host.log_text());
    assert!(line.contains("it kept the"), "{line}");
    // What stayed stayed for the timeout: the connections not taken out yet (and the frames not
    // sent), none refused, none declined.
    let out = host.command(["status", "--json"], Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let stays = serde_json::json!([["the hand-over timed out", stayed]]);
    assert_eq!(json["handovers"][0]["last_stays"], stays, "{json}");
    each_answers(&mut clients, "after", "after", "answered by one worker");
    assert_each_once_in(&mut host, (new, moved), (old[0], stayed));
}

// A large hand-over all at once to a slow replacement: 600 connections go in three `Conns`
// frames (253 descriptors a frame), each connection carrying 4000 bytes of a line it sent and
// the worker read (about 1 MB a frame). The replacement stops while adopting the first frame;
// the frames it did not read by then wait in the full socket or behind it, and at the deadline
// those not handed to the channel yet are dropped (`send::cancel_unsent`): their connections
// stay (`the hand-over timed out`), `Done` follows what was sent. (How many frames the
// replacement read before it stopped is the scheduler's business: it may have read them all,
// then nothing stays; the unit test `cancel_drops_the_frames_stuck_behind_a_full_channel` covers
// the dropping without processes.) Continued, the replacement adopts what it was sent: every
// client's line is completed, by one worker, nothing lost.
#[test]
fn a_large_hand_over_all_at_once_to_a_slow_replacement_loses_nothing() {
    const N: usize = 600;
    const HALF: usize = 4000;
    let mut host = fixture_crash("adopt = \"stop\"\n", &STUCK_ARGS);
    let old = host.worker_pids();
    assert_eq!(old.len(), 1, "one worker: {old:?}");
    let mut clients = clients_with_a_line(&mut host, N, false);
    for c in &mut clients {
        c.send(&[b'x'; HALF]);
    }
    // Every half line is in the worker's buffers (then it travels in the frames).
    host_tests::poll_until(LOG_TIMEOUT, || {
        let out = host.command(["connections", "--json"], Duration::from_secs(10));
        let json: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let read =
            json["connections"].as_array()?.iter().filter(|r| r["conn"]["bytes_in"].as_u64() >= Some(HALF as u64));
        (read.count() == N).then_some(())
    })
    .expect("the half lines never all reached the worker");
    let (new, line) = a_slow_replacement_continued(&mut host);
    let (moved, stayed) = (field_of(&line, "moved"), field_of(&line, "stayed"));
    assert!(moved >= 253 && moved + stayed == N, "{line}\n{}", host.log_text());
    let out = host.command(["status", "--json"], Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let stays = match stayed {
        0 => serde_json::json!([]),
        _ => serde_json::json!([["the hand-over timed out", stayed]]),
    };
    assert_eq!(json["handovers"][0]["last_stays"], stays, "{json}");
    let whole = format!("{}y\n", "x".repeat(HALF));
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(b"y\n");
        assert!(read_line(c) == whole, "client {i}: its line was not completed");
    }
    assert_each_once_in(&mut host, (new, moved), (old[0], stayed));
}

// An old worker whose worker state takes longer to write than the master's kill deadline of it
// (from `HandOver`: `handover_timeout`, the waits of a timed-out hand-over, the drain and kill
// timeouts: 1 + 10 + 0.5 + 0.5 s here) is not killed while it writes (fixture_crash's
// `export = "slow"`, 14 s): it tells the master it goes on (`HandoverProgress`), and every
// connection moves.
#[test]
fn an_old_worker_writing_its_state_for_longer_than_its_kill_deadline_is_not_killed() {
    const N: usize = 2;
    let config = "export = \"slow\"\nexport_ms = \"14000\"\n";
    let mut host =
        fixture_crash(config, &["--drain-timeout", "0.5", "--kill-timeout", "0.5", "--handover-timeout", "1"]);
    let mut clients = clients_with_a_line(&mut host, N, true);
    reload(&mut host, &["reload", "-g"]);
    host.log().wait_for("writes its state slowly", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let line = host.log().wait_for("hand-over ended", Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains(&format!("moved={N} ")) && line.contains(" stayed=0 "), "{line}\n{}", host.log_text());
    each_answers(&mut clients, "f", "half", "the new worker completes the line");
}

// The new plugin refuses the old state (its version): nothing moves, the old worker serves on.
#[test]
fn a_replacement_that_refuses_the_state_loses_nothing() {
    let mut host = failing_replacement("refuse");
    let mut c = Client::connect(host.port());
    half_line_read(&mut host, &mut c, b"one\n", b"tw");
    reload(&mut host, &["reload", "-g"]);
    let line = host.log().wait_for("hand-over failed", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("refused the state"), "{line}");
    c.send(b"o\n");
    assert_eq!(read_line(&mut c), "two\n");
    // Nothing was taken out, and the connection that stayed is counted.
    let report = host.log().wait_for("hand-over failed, ", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.contains("hand-over failed, 1 drained: the new worker refused the state"), "{report}");
    // Refused before anything moved: the cause, and the reason the connection stayed, say so.
    assert!(report.contains("cause=refused"), "{report}");
    let out = host.command(["status", "--json"], Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let row = &json["handovers"][0];
    assert_eq!(row["last_stays"], serde_json::json!([["the new plugin refused the state", 1]]), "{json}");
}

/// Runs a python `script` (with redis-py or websockets) on the host's `port` (and `more`
/// arguments) until it prints `ready`: its stdin takes the test's go-ahead, its stdout what it
/// saw after.
fn python_ready(
    script: &str,
    port: u16,
    more: &[&str],
) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut py = Command::new("timeout")
        .args(["120", "python3", "-c", script, &port.to_string()])
        .args(more)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with redis-py and websockets");
    let mut out = std::io::BufReader::new(py.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line).expect("the script's first line");
    assert_eq!(line, "ready\n");
    (py, out)
}

/// A redis-py client on one connection (RESP3, named) that fills the keyspace, says `ready`,
/// waits for a line on stdin (the test reloads meanwhile), then reads it all back on the same
/// connection and prints what it saw.
const REDIS_PY: &str = r#"
import sys, redis
r = redis.Redis(port=int(sys.argv[1]), protocol=3, socket_timeout=20)
r.client_setname("keeper")
before = r.client_id()
r.set("k", "v")
r.set("t", "w", ex=1000)
pipe = r.pipeline(transaction=False)
for i in range(20000):
    pipe.set(f"key:{i}", f"value-{i}-" + "x" * 16)
pipe.execute()
print("ready", flush=True)
sys.stdin.readline()
same = r.client_id() == before
ttl = r.ttl("t")
values = r.mget([f"key:{i}" for i in range(0, 20000, 997)])
ok = all(v == f"value-{i}-".encode() + b"x" * 16 for i, v in zip(range(0, 20000, 997), values))
print(r.get("k").decode(), 900 < ttl <= 1000, r.client_getname(), same, r.dbsize(), ok, flush=True)
"#;

// redis-py keeps its connection across `host reload -g` and sees the same keyspace (a large one:
// through the memfd), its key's deadline, its client name and id, in RESP3; a new redis-cli
// connection sees the keys too.
#[test]
fn redis_clients_keep_the_keyspace_and_the_connection_across_reloads() {
    use std::io::{BufRead, Write};
    use std::process::Command;
    let mut host = Host::start("resp", &["--drain-timeout", "30"]);
    let (mut py, mut out) = python_ready(REDIS_PY, host.port(), &[]);
    let mut line = String::new();
    reload(&mut host, &["reload", "-g"]);
    let moved = host.log().wait_for("hand-over: 1 connections moved", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(moved.contains("memfd=true"), "20,000 keys go through a memfd: {moved}");
    writeln!(py.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "v True b'keeper' True 20002 True\n", "after the reload");
    assert!(py.wait().unwrap().success());
    // A second reload, the watcher's kind too: a fresh client on the third worker.
    reload(&mut host, &["reload"]);
    let cli = Command::new("timeout").args(["30", "redis-cli", "-p", &host.port().to_string(), "get", "k"]).output();
    assert_eq!(String::from_utf8_lossy(&cli.expect("redis-cli").stdout), "v\n");
}

/// Subscribers of a channel that must hear every message once, in order, on the connection they
/// have: a raw RESP2 socket, redis-py in RESP3 and `redis-cli SUBSCRIBE`; a publisher on its own
/// connection publishes numbers 1, 2, … from `ready` on. A line on stdin (the test reloaded)
/// makes it publish 200 more and `end`; each subscriber then reads up to `end` and the script
/// prints what each saw. `sys.argv[1]`: the port.
const SUBSCRIBERS_PY: &str = r#"
import socket, subprocess, sys, threading, redis
port = int(sys.argv[1])
raw = socket.create_connection(("127.0.0.1", port), timeout=30)
raw.sendall(b"SUBSCRIBE seq\r\n")
confirm = b"*3\r\n$9\r\nsubscribe\r\n$3\r\nseq\r\n:1\r\n"
got = b""
while len(got) < len(confirm):
    got += raw.recv(len(confirm) - len(got))
assert got == confirm, got
py = redis.Redis(port=port, protocol=3, socket_timeout=30).pubsub()
py.subscribe("seq")
assert py.get_message(timeout=10)["type"] == "subscribe"
py_addr = py.connection._sock.getsockname()
cli = subprocess.Popen(["redis-cli", "-p", str(port), "SUBSCRIBE", "seq"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
assert [cli.stdout.readline() for _ in range(3)] == [b"subscribe\n", b"seq\n", b"1\n"]
pub = redis.Redis(port=port, socket_timeout=30)
reloaded, sent = threading.Event(), []
def publish():
    n = 0
    while True:
        n += 1
        pub.publish("seq", str(n))
        if reloaded.is_set():
            sent.append(n)
            if len(sent) == 200:
                break
    pub.publish("seq", "end")
    sent.append(n)
thread = threading.Thread(target=publish)
thread.start()
print("ready", flush=True)
sys.stdin.readline()
reloaded.set()
thread.join()
last = sent[-1]
def verdict(seen):
    return "ok" if seen == [str(n) for n in range(1, last + 1)] else f"{len(seen)} of {last}: {seen[:5]}…{seen[-5:]}"
# The raw RESP2 socket: *3 $7 message $3 seq $N N, the payloads digits only.
buf = b""
while not buf.endswith(b"$3\r\nend\r\n"):
    chunk = raw.recv(65536)
    if not chunk:
        break
    buf += chunk
tokens = buf.split(b"\r\n")
raw_seen = [tokens[i + 4].decode() for i, t in enumerate(tokens) if t == b"message" and i + 4 < len(tokens)]
print("raw", verdict(raw_seen[:-1]) if raw_seen[-1:] == ["end"] else f"closed after {len(raw_seen)}", flush=True)
py_seen, resubscribed = [], False
while True:
    m = py.get_message(timeout=30)
    assert m is not None, "redis-py heard nothing for 30 s"
    if m["type"] != "message":
        resubscribed = True
        continue
    if m["data"] == b"end":
        break
    py_seen.append(m["data"].decode())
print("redis-py", verdict(py_seen), "resubscribed" if resubscribed else "same connection" if py.connection._sock.getsockname() == py_addr else "reconnected", flush=True)
cli_seen = []
while True:
    kind, channel, data = (cli.stdout.readline().decode().strip() for _ in range(3))
    if kind != "message" or data == "end":
        break
    cli_seen.append(data)
print("redis-cli", verdict(cli_seen) if data == "end" else f"{kind!r} after {len(cli_seen)}", flush=True)
cli.kill()
"#;

// Subscribers (raw RESP2, redis-py RESP3, redis-cli) keep their connection across `host reload
// -g` of two workers and hear every message published before, during and after it once, in
// order: their subscriptions move with them (resp's state carries the channels). With a drain
// they would be closed (the raw socket and redis-cli) or reconnect and miss messages (redis-py).
#[test]
fn redis_subscribers_keep_their_connection_and_every_message_across_reloads() {
    use std::io::{BufRead, Write};
    let mut host = Host::start("resp", &["--count", "2", "--drain-timeout", "30"]);
    let (mut py, mut out) = python_ready(SUBSCRIBERS_PY, host.port(), &[]);
    let mut line = String::new();
    reload(&mut host, &["reload", "-g"]);
    host.log().wait_for_nth("hand-over: ", 2, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    writeln!(py.stdin.as_mut().unwrap()).unwrap();
    let mut report = String::new();
    for _ in 0..3 {
        line.clear();
        out.read_line(&mut line).unwrap();
        report.push_str(&line);
    }
    assert_eq!(report, "raw ok\nredis-py ok same connection\nredis-cli ok\n", "{}", host.log_text());
    assert!(py.wait().unwrap().success());
    for line in host.log_text().lines().filter(|l| l.contains("hand-over: ")) {
        assert!(line.contains(" 0 drained"), "every connection moved: {line}");
    }
}

/// The first field of `/proc/PID/syscall`: the system call the process's main thread is in.
fn syscall_of(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    text.split_whitespace().next().map(str::to_string)
}

/// Continues `pid` once it has stopped: `fixture_crash` logs that it stops itself before its
/// `kill -STOP` has run, so a SIGCONT sent on the log line alone could come first and be lost.
fn continue_once_stopped(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    host_tests::poll_until(LOG_TIMEOUT, || (process_state(pid) == Some('T')).then_some(()))
        .unwrap_or_else(|| panic!("{pid} never stopped"));
    kill(Pid::from_raw(pid), Signal::SIGCONT).expect("SIGCONT");
}

/// The state letter of `/proc/PID/stat` (`T`: stopped).
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().next()?.chars().next()
}

/// One RESP command on a fresh connection; its one-line answer.
fn resp_once(port: u16, command: &[u8]) -> String {
    let mut c = Client::connect(port);
    c.send(command);
    read_line(&mut c)
}

// A replacement serves no one before the old worker's state is in. The master is frozen
// (SIGSTOP) once it started the replacement, so that the replacement is ready and in its loop
// while nobody has told it of the hand-over yet (the window between its `ready` and `Adopt`), and
// the old worker is frozen too: fresh clients then wait in the slot's accept queue. Once both
// are thawed, whichever worker answers them answers on the old keyspace (n was 100: the answers
// are 101 to 105, the count 105 after the hand-over). A replacement that accepted in that window
// would answer them on a keyspace of its own (1 to 5), which the old worker's then replaces.
#[test]
fn a_replacement_serves_no_one_before_the_old_state_is_in() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let host = Host::start("resp", &["--drain-timeout", "30"]);
    let port = host.port();
    assert_eq!(resp_once(port, b"SET n 100\r\n"), "+OK\r\n");
    let old = host.worker_pids();
    assert_eq!(old.len(), 1, "one worker: {old:?}");
    let dir = host.dir().path().to_path_buf();
    let reload = std::thread::spawn(move || host_tests::run_host_in(&dir, ["reload", "-g"], RELOAD_TIMEOUT));
    let started = host.log().wait_for("role=Replacement", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    host.signal(Signal::SIGSTOP);
    host_tests::poll_until(LOG_TIMEOUT, || (process_state(host.pid()) == Some('T')).then_some(()))
        .expect("the master did not stop");
    let new = pid_in(&started);
    // In its loop (epoll_wait, 232 on x86_64, or with `--io uring` io_uring_enter, 426; its
    // start polls with poll(2)): ready, waiting.
    let waiting = |s: Option<String>| matches!(s.as_deref(), Some("232" | "426"));
    let in_loop = host_tests::poll_until(LOG_TIMEOUT, || waiting(syscall_of(new)).then_some(()));
    kill(Pid::from_raw(old[0]), Signal::SIGSTOP).expect("SIGSTOP the old worker");
    host_tests::poll_until(LOG_TIMEOUT, || (process_state(old[0]) == Some('T')).then_some(()))
        .expect("the old worker did not stop");
    let mut fresh: Vec<Client> = (0..5).map(|_| Client::connect(port)).collect();
    for c in &mut fresh {
        c.send(b"INCR n\r\n");
    }
    kill(Pid::from_raw(old[0]), Signal::SIGCONT).expect("SIGCONT the old worker");
    host.signal(Signal::SIGCONT);
    assert!(in_loop.is_some(), "the replacement never waited in its loop");
    let mut answers: Vec<String> = fresh.iter_mut().map(read_line).collect();
    answers.sort();
    let expected: Vec<String> = (101..=105).map(|i| format!(":{i}\r\n")).collect();
    assert_eq!(answers, expected, "every fresh client met the old worker's keyspace");
    let out = reload.join().unwrap();
    assert!(out.status.success(), "reload -g: {}{}", out.stdout, out.stderr);
    host.log().wait_for("hand-over: ", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let mut c = Client::connect(port);
    c.send(b"GET n\r\n");
    assert_eq!([read_line(&mut c), read_line(&mut c)], ["$3\r\n", "105\r\n"], "the new worker has the count");
}

// A plugin built against plugin-api 0.1.0 (before hand-overs) loads and drains as before: it
// hears `on_drain` and its connection closes; the log says no hand-over took place.
#[test]
fn an_old_abi_plugin_still_drains() {
    let path = host_tests::old_abi_plugin();
    let mut host = Host::start(path.to_str().unwrap(), &["--drain-timeout", "30"]);
    let mut c = Client::connect(host.port());
    c.send(b"ping\n");
    assert_eq!(read_line(&mut c), "ping\n");
    reload(&mut host, &["reload", "-g"]);
    let rest = c.wait_closed(Duration::from_secs(10)).expect("closed by the drain");
    assert_eq!(String::from_utf8_lossy(&rest), "old_echo on_drain\n");
    let line = host.log().wait_for("no hand-over", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("does not take part"), "{line}");
    assert_eq!(host.log().count("hand-over failed"), 0, "{}", host.log_text());
    // `status --json` says why the connection stayed.
    let out = host.command(["status", "--json"], Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(json["handovers"][0]["last_stays"], serde_json::json!([["the plugin does not take part", 1]]), "{json}");
}

// `host upgrade`: the new image's workers adopt the connections of the workers it adopted from
// the old image, a half-sent line included.
#[test]
fn a_half_sent_line_is_completed_after_host_upgrade() {
    use host_tests::copied_host::CopiedHost;
    use host_tests::plugin_dir::PluginDir;
    let dir = PluginDir::new();
    dir.mv("text.so", &std::fs::read(host_tests::plugin_file("text")).unwrap());
    let plugin_dir = dir.arg();
    let args = ["--plugin", "text", "--listen", "127.0.0.1:0", "--drain-timeout", "30", "--plugin-dir", &plugin_dir];
    let host = CopiedHost::start(&args);
    let mut c = Client::connect(host.port());
    c.send(b"first\n");
    assert_eq!(read_line(&mut c), "first\n");
    c.send(b"hel");
    host_tests::poll_until(Duration::from_secs(5), || {
        let out = host.command(&["connections"], Duration::from_secs(5));
        out.stdout.lines().any(|l| l.contains(" 9B ")).then_some(())
    })
    .expect("the half line never reached the worker");
    host.replace_binary();
    let out = host.command(&["upgrade"], RELOAD_TIMEOUT);
    assert!(out.status.success(), "host upgrade failed: {}{}\nlog:\n{}", out.stdout, out.stderr, host.log());
    host.wait_for_log("hand-over: 1 connections moved", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    c.send(b"lo\n");
    assert_eq!(read_line(&mut c), "hello\n");
    c.send(b"again\n");
    assert_eq!(read_line(&mut c), "again\n");
}

/// What the python `websockets` scripts below start with: `ready(port, n)` connects `n`
/// clients, has each echo `i:0`, says `ready` and returns them.
const WS_READY_PY: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect

async def ready(port, n):
    socks = [await connect(f"ws://127.0.0.1:{port}/", compression=None) for _ in range(n)]
    for i, ws in enumerate(socks):
        await ws.send(f"{i}:0")
        assert await ws.recv() == f"{i}:0"
    print("ready", flush=True)
    return socks
"#;

/// python `websockets` clients that send sequence-numbered messages, say `ready`, wait for a
/// line on stdin (the test reloads meanwhile), send more and print what came back.
const WS_PY: &str = r#"
async def main(port, n):
    socks = await ready(port, n)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    got = []
    for seq in range(1, 21):
        for i, ws in enumerate(socks):
            await ws.send(f"{i}:{seq}")
        for i, ws in enumerate(socks):
            got.append(await ws.recv() == f"{i}:{seq}")
    print("in order" if all(got) else "lost or reordered", len(got), flush=True)
    for ws in socks:
        await ws.close()

asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), int(sys.argv[2])), 60))
"#;

// WebSocket clients (python `websockets`) stay connected across `host reload -g` and get every
// later message back in order: no close frame 1001, no reconnect.
#[test]
fn websocket_clients_stay_connected_across_a_reload() {
    use std::io::{BufRead, Write};
    let mut host = Host::start("websocket", &["--count", "2", "--drain-timeout", "30"]);
    let (mut py, mut out) = python_ready(&format!("{WS_READY_PY}{WS_PY}"), host.port(), &["10"]);
    let mut line = String::new();
    reload(&mut host, &["reload", "-g"]);
    host.log().wait_for_nth("hand-over: ", 2, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    writeln!(py.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "in order 200\n");
    assert!(py.wait().unwrap().success());
    let moved: usize = host
        .log_text()
        .lines()
        .filter(|l| l.contains("hand-over: "))
        .filter_map(|l| l.split("hand-over: ").nth(1)?.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(moved, 10, "every client moved:\n{}", host.log_text());
}

/// WebSocket clients that keep echoing while a hand-over runs: N clients connect and each echoes
/// once; "ready"; then each sends a numbered message every 10 ms and checks its echo (in order,
/// once) until a line on stdin; then one more each; prints "in order <echoes>" or what went wrong.
const WS_STREAM_PY: &str = r#"
async def main(port, n):
    socks = await ready(port, n)
    stop = asyncio.Event()
    echoed, bad = [0], []

    async def client(i, ws):
        seq = 0
        while not stop.is_set():
            seq += 1
            await ws.send(f"{i}:{seq}")
            got = await ws.recv()
            if got != f"{i}:{seq}":
                bad.append((i, seq, got))
                return
            echoed[0] += 1
            await asyncio.sleep(0.01)
        await ws.send(f"{i}:last")
        if await ws.recv() != f"{i}:last":
            bad.append((i, "last"))
        echoed[0] += 1

    tasks = [asyncio.create_task(client(i, ws)) for i, ws in enumerate(socks)]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop.set()
    await asyncio.gather(*tasks)
    print("in order" if not bad else f"lost or reordered {bad[:3]}", echoed[0], flush=True)
    for ws in socks:
        await ws.close()

asyncio.run(asyncio.wait_for(main(int(sys.argv[1]), int(sys.argv[2])), 90))
"#;

/// 400 websocket echo clients on one worker started with `args`, each echoing a numbered
/// message every 10 ms throughout `host reload -g`; checks that all 400 moved and that every
/// client's messages came back in order, once, on its first connection (a closed one fails the
/// script), and returns the host for what the caller checks of how they moved.
fn websocket_echoes_through_a_reload(args: &[&str]) -> Host {
    use std::io::{BufRead, Write};
    const N: usize = 400;
    let mut all = vec!["--count", "1", "--drain-timeout", "30"];
    all.extend_from_slice(args);
    let mut host = Host::start("websocket", &all);
    let (mut py, mut out) = python_ready(&format!("{WS_READY_PY}{WS_STREAM_PY}"), host.port(), &[&N.to_string()]);
    let mut line = String::new();
    reload(&mut host, &["reload", "-g"]);
    let moved = format!("hand-over: {N} connections moved");
    host.log().wait_for(&moved, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}: {}", host.log_text()));
    writeln!(py.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    let echoed: usize =
        line.strip_prefix("in order ").and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert!(echoed >= 2 * N, "every client echoed during and after: {line}");
    assert!(py.wait().unwrap().success());
    host
}

// The websocket echo answers `handover_in_batches`: 400 clients, more than the old worker takes
// out at once (`IN_FLIGHT`), so later batches leave only once earlier ones are acknowledged, the
// old worker serving them meanwhile (its log line counts the batches and the take-out turns).
// (All at once, the old worker would say nothing of batches; with fewer clients than
// `IN_FLIGHT`, one turn would take all.)
#[test]
fn websocket_connections_move_in_batches_across_a_reload() {
    let host = websocket_echoes_through_a_reload(&[]);
    assert_eq!(host.log().count("handing over in batches"), 1, "{}", host.log_text());
    assert_eq!(host.log().count("handing over all at once"), 0, "{}", host.log_text());
    let done = host.log().wait_for("handed over in batches", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(field_of(&done, "batches") >= 3, "{done}");
    assert!(field_of(&done, "turns") >= 2, "a later batch left after an acknowledgement: {done}");
}

// `--no-handover-batches` (`handover_batches = false`): the same plugin and clients move all at
// once, in the one turn, and every client stays connected all the same.
#[test]
fn websocket_connections_move_all_at_once_without_handover_batches() {
    let host = websocket_echoes_through_a_reload(&["--no-handover-batches"]);
    let log = host.log_text();
    assert_eq!(host.log().count("handing over all at once (handover_batches = false)"), 1, "{log}");
    assert_eq!(host.log().count("handing over in batches"), 0, "{log}");
    assert_eq!(host.log().count("handed over in batches"), 0, "{log}");
}

/// 600 `ws_chat` clients (python `websockets`), every thirtieth a member of the room `room` and the
/// others of `quiet` (so the members are spread over the hand-over's batches and every client
/// has a subscription), the first of them publishing in `room` (it moves in the first batch,
/// and publishes from the new worker while the old one writes to the rest): it sends `m 1`, `m 2`, ... every 1 ms from
/// `ready` until a line on stdin (the test reloads meanwhile), then `end`; each of the 21
/// members must hear every message once, in order, on its first connection.
const WS_ROOM_PY: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect

N = 600

async def main(port):
    socks = [await connect(f"ws://127.0.0.1:{port}/", compression=None) for _ in range(N + 1)]
    rooms = ["room" if i % 30 == 0 else "quiet" for i in range(N + 1)]
    for ws, room in zip(socks, rooms):
        await ws.send(f"/join {room}")
    for ws, room in zip(socks, rooms):
        assert await ws.recv() == f"joined {room}"
    members = [ws for ws, room in zip(socks, rooms) if room == "room"]
    stop = asyncio.Event()
    async def publish(ws):
        seq = 0
        while not stop.is_set():
            seq += 1
            await ws.send(f"m {seq}")
            await asyncio.sleep(0.001)
        await ws.send("end")
        return seq
    async def listen(ws):
        got = []
        while (m := await ws.recv()) != "end":
            got.append(m)
        return got
    listeners = [asyncio.create_task(listen(ws)) for ws in members]
    sender = asyncio.create_task(publish(socks[0]))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop.set()
    sent = await sender
    want = [f"m {i}" for i in range(1, sent + 1)]
    lists = await asyncio.gather(*listeners)
    bad = [(i, got) for i, got in enumerate(lists) if got != want]
    if bad:
        i, got = bad[0]
        first = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        print(f"{len(bad)} of {len(members)} wrong: client {i} heard {len(got)} of {sent}, first difference at {first}: {got[first:first + 3]} for {want[first:first + 3]}", flush=True)
    else:
        print("every message once, in order", flush=True)
    print("sent", sent, flush=True)
    # Every client is still on its first connection, now served by one worker.
    for ws in socks:
        await ws.send("/whoami")
    pids = {(await ws.recv()).split()[-1] for ws in socks}
    print("answered", len(socks), "workers", len(pids), flush=True)
    for ws in socks:
        await ws.close()

asyncio.run(asyncio.wait_for(main(int(sys.argv[1])), 100))
"#;

// Chat rooms move in batches (issue #21): 600 `ws_chat` clients with subscriptions on one
// worker, 20 of them members of a room spread over the batches, and a member publishing sequence
// numbers throughout `host reload -g`. The clients move 256 at a time (the "handing over in batches" line), the old worker writing the room's messages to those
// not moved yet meanwhile, and the topic seam is each connection's own (its marks taken as it
// leaves): every member hears every message once, in order, without a reconnect. Before, a
// worker with topic subscriptions moved everything at once (every member paused for the whole
// slot's hand-over).
#[test]
fn chat_room_members_move_in_batches_and_hear_every_message_once() {
    use std::io::{BufRead, Write};
    let mut host = Host::start("ws_chat", &["--count", "1", "--drain-timeout", "30"]);
    let (mut py, mut out) = python_ready(WS_ROOM_PY, host.port(), &[]);
    reload(&mut host, &["reload", "-g"]);
    host.log()
        .wait_for("hand-over: 601 connections moved", LOG_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}: {}", host.log_text()));
    assert_eq!(host.log().count("handing over in batches"), 1, "{}", host.log_text());
    writeln!(py.stdin.as_mut().unwrap()).unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "every message once, in order\n", "{}", host.log_text());
    line.clear();
    out.read_line(&mut line).unwrap();
    let sent: usize =
        line.trim().strip_prefix("sent ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    assert!(sent >= 2, "{sent} messages");
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "answered 601 workers 1\n");
    assert!(py.wait().unwrap().success());
    assert_eq!(host.log().count("hand-over failed"), 0);
}

/// A rustls client of `port` trusting `der`, limited to `version`.
fn tls_client(
    port: u16,
    der: &[u8],
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.to_vec().into()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let sock = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(LOG_TIMEOUT)).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

fn tls_line(tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>) -> Vec<u8> {
    use std::io::Read;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') {
        match tls.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            other => panic!("no line: {other:?} after {:?}", String::from_utf8_lossy(&line)),
        }
    }
    line
}

// An established TLS connection moves too (docs/architecture.md, "TLS hand-over"): its record
// layer (keys, sequence numbers, what was in flight) goes to the new worker beside the socket,
// and the client, TLS 1.3 or 1.2, goes on on the same connection without noticing — a half line
// completed, then a line of many records; then the client's close. Before, a TLS connection
// drained.
#[test]
fn an_established_tls_connection_moves_with_its_record_layer() {
    use std::io::{Read, Write};
    let dir = host_tests::TempDir::new();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let cert_file = dir.write("tls.crt", cert.pem().as_bytes());
    let key_file = dir.write("tls.key", key.serialize_pem().as_bytes());
    let mut host = Host::start(
        "text",
        &["--tls-cert", cert_file.to_str().unwrap(), "--tls-key", key_file.to_str().unwrap(), "--drain-timeout", "30"],
    );
    let port = host.port();
    let mut clients: Vec<_> = [&rustls::version::TLS13, &rustls::version::TLS12]
        .into_iter()
        .map(|v| {
            let mut c = tls_client(port, cert.der(), v);
            c.write_all(b"first\n").unwrap();
            assert_eq!(tls_line(&mut c), b"first\n");
            c.write_all(b"hel").unwrap();
            c
        })
        .collect();
    // Both half lines are in the worker's buffers (6 + 3 bytes each).
    host_tests::poll_until(Duration::from_secs(5), || {
        let out = host.command(["connections"], Duration::from_secs(5)).stdout;
        (out.matches(" 9B ").count() >= 2).then_some(())
    })
    .expect("the half lines never reached the worker");
    reload(&mut host, &["reload", "-g"]);
    let line = host.log().wait_for("hand-over: 2 connections moved", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("0 drained"), "{line}");
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(b"lo\n").unwrap();
        assert_eq!(tls_line(c), b"hello\n", "client {i}");
        let long: Vec<u8> = (0..40_000u32).map(|n| b'a' + (n % 26) as u8).chain([b'\n']).collect();
        c.write_all(&long).unwrap();
        assert!(tls_line(c) == long, "client {i}: a line of several records, byte-exact");
        // The client ends it; the new worker closes (when the peer closed first the host does not
        // answer with its own close_notify, moved or not).
        c.conn.send_close_notify();
        c.flush().unwrap();
        let mut rest = Vec::new();
        match c.read_to_end(&mut rest) {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "client {i}: {e}"),
        }
        assert!(rest.is_empty(), "client {i}: {rest:?}");
    }
}

/// A `chat` client in `room` only (it left the lobby), and its worker's pid.
fn chat_member(host: &Host, room: &str) -> (Client, String) {
    let mut c = Client::connect(host.port());
    c.send(format!("/whoami\n/join {room}\n/leave lobby\n").as_bytes());
    let pid = read_line(&mut c).split_whitespace().nth(3).unwrap_or_default().to_string();
    assert_eq!(read_line(&mut c), format!("joined {room}\n"));
    assert_eq!(read_line(&mut c), "left lobby\n");
    (c, pid)
}

// `examples/chat` takes part: clients of a room on both workers stay on their connections across
// `host reload -g`, with their rooms, and every line a member sends while the workers are
// replaced and after reaches every member once, in order (the topic messages of the hand-over's
// seam are written by exactly one of the two workers: `worker::topic_seam`).
#[test]
fn chat_rooms_go_on_across_a_graceful_reload() {
    let mut host =
        Host::start("chat", &["--count", "2", "--drain-timeout", "60", "--log-level", "info,host::worker::core=debug"]);
    let (mut members, mut on) = (Vec::new(), Vec::new());
    while members.len() < 6 || on.iter().collect::<std::collections::BTreeSet<_>>().len() < 2 {
        assert!(members.len() < 100, "100 clients did not land on both workers");
        let (c, pid) = chat_member(&host, "red");
        on.push(pid);
        members.push(c);
    }
    // A client in another room hears none of it (its rooms moved too).
    let (mut outsider, _) = chat_member(&host, "blue");
    // A member sends throughout the reload.
    const LINES: usize = 300;
    let sender = members.pop().unwrap();
    let mut writer = sender.writer();
    let during = std::thread::spawn(move || {
        for i in 0..LINES {
            std::io::Write::write_all(&mut writer, format!("line {i}\n").as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(3));
        }
    });
    reload(&mut host, &["reload", "-g"]);
    during.join().unwrap();
    members.push(sender);
    for (n, c) in members.iter_mut().enumerate() {
        for i in 0..LINES {
            assert_eq!(read_line(c), format!("line {i}\n"), "member {n} (of worker {}; all: {on:?})", on[n]);
        }
    }
    host.log().wait_for_nth("hand-over: ", 2, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    // (Only the lines of hand-overs that took place: "no hand-over: 4 drained …" counts none.)
    let moved: usize = host
        .log_text()
        .lines()
        .filter(|l| l.contains(" connections moved") && !l.contains("no hand-over"))
        .filter_map(|l| l.split("hand-over: ").nth(1)?.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(moved, members.len() + 1, "every client moved:\n{}", host.log_text());
    assert_eq!(host.log().count("hand-over failed"), 0);
    // The outsider (in blue only) heard nothing of red, and still speaks in blue.
    outsider.send(b"in blue\n");
    assert_eq!(read_line(&mut outsider), "in blue\n");
}

/// `fixture_udp_count` on one worker with `more` flags, ready; and its address.
fn udp_count_host(more: &[&str]) -> (Host, std::net::SocketAddr) {
    let mut args =
        vec!["--plugin", "fixture_udp_count", "--listen", "udp://127.0.0.1:0", "--count", "1", "--drain-timeout", "30"];
    args.extend_from_slice(more);
    let host = Host::spawn(args);
    host.wait_for_log("host ready", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let server = format!("127.0.0.1:{}", host.port()).parse().unwrap();
    (host, server)
}

/// A UDP peer on a port of its own, its answers waited for at most `LOG_TIMEOUT`.
fn udp_peer() -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(LOG_TIMEOUT)).unwrap();
    s
}

/// A UDP client of `fixture_udp_count`: sends a datagram, returns the answer's (count, pid).
fn udp_count(s: &std::net::UdpSocket, server: std::net::SocketAddr) -> (u64, u32) {
    s.send_to(b"x", server).expect("send");
    let mut buf = [0; 64];
    let (n, from) = s.recv_from(&mut buf).unwrap_or_else(|e| panic!("no answer: {e}"));
    assert_eq!(from, server);
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    let (count, pid) = answer.split_once(' ').unwrap_or_else(|| panic!("answer {answer:?}"));
    (count.parse().unwrap(), pid.parse().unwrap())
}

// UDP sessions move with their peers: after `host reload -g` each peer's session goes on in the
// new worker with the plugin's state for it (its count continues, not restarting at 1), no new
// session opens and none closes, and the log says they moved. One peer keeps sending through the
// reload: what it sends while the hand-over is under way waits in the socket's queue and reaches
// its moved session (never a second one).
#[test]
fn udp_sessions_move_with_their_peers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (mut host, server) = udp_count_host(&["--admin-listen", "127.0.0.1:0"]);
    let quiet: Vec<_> = (0..2).map(|_| udp_peer()).collect();
    let mut old_pid = 0;
    for c in &quiet {
        for n in 1..=3 {
            let (count, pid) = udp_count(c, server);
            assert_eq!(count, n);
            old_pid = pid;
        }
    }
    let busy = udp_peer();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sending = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                assert_eq!(udp_count(&busy, server).0, n, "the busy peer's count goes on");
                // A polite client (two cores are shared): it keeps sending, without a spin.
                std::thread::sleep(Duration::from_millis(1));
            }
            (busy, n)
        })
    };
    reload(&mut host, &["reload", "-g"]);
    let line = host.log().wait_for("hand-over: ", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    // Counted apart from connections: in the log line, `status --json` and `/metrics`.
    assert!(line.contains("hand-over: 0 connections moved, 3 UDP sessions moved, 0 drained"), "{line}");
    let out = host.command(["status", "--json"], Duration::from_secs(10));
    let json: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let row = &json["handovers"][0];
    assert_eq!((row["moved"].as_u64(), row["sessions"].as_u64()), (Some(0), Some(3)), "{json}");
    let (_, metrics) = crate::metrics::admin_get(crate::metrics::admin_port(&host), "/metrics");
    assert!(metrics.contains("host_handover_udp_sessions_total 3"), "{metrics}");
    stop.store(true, Ordering::Relaxed);
    let (busy, sent) = sending.join().expect("the busy peer's count went on");
    // The new worker answers each peer from its moved session.
    for (c, next) in quiet.iter().map(|c| (c, 4)).chain([(&busy, sent + 1)]) {
        let (count, pid) = udp_count(c, server);
        assert_eq!(count, next, "{}", host.log_text());
        assert_ne!(pid, old_pid, "the new worker answers");
    }
    host.log().wait_for("UDP sessions moved", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    host.log().wait_for_nth("session opened", 3, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(host.log().count("session opened"), 3, "{}", host.log_text());
    assert_eq!(host.log().count("session closed"), 0, "{}", host.log_text());
    assert_eq!(host.log().count("hand-over failed"), 0, "{}", host.log_text());
}

// The new plugin refuses the sessions: the old worker takes them back (no duplicate: it reads
// no datagram meanwhile) and its drain ends them (`on_close`); their peers' next datagrams open
// new sessions in the new worker.
#[test]
fn udp_sessions_the_new_plugin_refuses_go_back_and_end() {
    let (mut host, server) = udp_count_host(&["--plugin-config", "adopt = \"refuse\"\n"]);
    let c = udp_peer();
    assert_eq!(udp_count(&c, server).0, 1);
    let (count, old_pid) = udp_count(&c, server);
    assert_eq!(count, 2);
    reload(&mut host, &["reload", "-g"]);
    let line = host.log().wait_for("hand-over: ", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("0 connections moved, 1 drained (1 refused by the new plugin)"), "{line}");
    host.log().wait_for("session closed", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let (count, pid) = udp_count(&c, server);
    assert_eq!((count, pid == old_pid), (1, false), "a new session in the new worker");
    // (Its log line may reach the host's log after the answer reached the client.)
    host.log().wait_for_nth("session opened", 2, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
}

/// An upstream for `fixture_outbound`: answers each line `L` on its `k`-th accepted connection
/// with `k:L`, and counts its accepts.
fn counting_upstream() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&accepts);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let k = counted.fetch_add(1, Ordering::SeqCst) + 1;
            std::thread::spawn(move || {
                let Ok(mut w) = stream.try_clone() else { return };
                for line in std::io::BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if w.write_all(format!("{k}:{line}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepts)
}

/// `fixture_outbound` with `config`, and a client whose outbound connection to a counting
/// upstream has answered once.
fn client_with_upstream(config: &str) -> (Host, Client, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let (upstream, accepts) = counting_upstream();
    let host = Host::start("fixture_outbound", &["--plugin-config", config, "--drain-timeout", "30"]);
    let mut c = Client::connect(host.port());
    c.send(format!("connect {upstream}\n").as_bytes());
    assert_eq!(read_line(&mut c), "started\n");
    assert!(read_line(&mut c).starts_with("connected true"));
    c.send(b"send one\n");
    assert_eq!(read_line(&mut c), "data 1:one\n");
    (host, c, accepts)
}

// A client carries its outbound connection (`Host::handover_carry`) across `host reload -g`: the
// new worker answers it through the same upstream connection (the upstream accepted one).
#[test]
fn a_carried_outbound_connection_keeps_serving_its_client_across_a_reload() {
    let (mut host, mut c, accepts) = client_with_upstream("handover = \"on\"\n");
    reload(&mut host, &["reload", "-g"]);
    let line = host.log().wait_for("hand-over: ", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("hand-over: 2 connections moved"), "the client and its upstream connection: {line}");
    c.send(b"send two\n");
    assert_eq!(read_line(&mut c), "data 1:two\n", "the same upstream connection, from the new worker");
    assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
}

// The new plugin refuses the client: its carried outbound connection goes back with it, and the
// old worker goes on serving it through that connection.
#[test]
fn a_refused_clients_carried_connection_goes_back_with_it() {
    let (mut host, mut c, accepts) = client_with_upstream("handover = \"on\"\nadopt = \"refuse\"\n");
    reload(&mut host, &["reload", "-g"]);
    let line = host.log().wait_for("hand-over: ", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(line.contains("hand-over: 0 connections moved") && line.contains("refused by the new plugin"), "{line}");
    // The old worker drains: the plugin hears it for the outbound connection it took back.
    assert_eq!(read_line(&mut c), "drain\n");
    c.send(b"send two\n");
    assert_eq!(read_line(&mut c), "data 1:two\n", "the old worker, through the same upstream connection");
    assert_eq!(accepts.load(std::sync::atomic::Ordering::SeqCst), 1);
}

// `host upgrade` waits for the end of a hand-over: the master that started one is the one that
// kills its replacement should it time out (`HandoverTimedOut`; a new master would not know the
// pair). While the replacement is stuck adopting (fixture_crash's `adopt = "stop"`), the upgrade
// is refused with the reason and the master goes on; once the hand-over ended (the replacement
// continued and adopted), the same upgrade goes through and the moved connection is served.
#[test]
fn host_upgrade_is_refused_while_a_hand_over_is_under_way() {
    use host_tests::copied_host::CopiedHost;
    let fixtures = host_tests::fixtures_dir();
    let fixtures = fixtures.to_str().unwrap();
    let config = "handover = \"on\"\nadopt = \"stop\"\n";
    let args = [
        "--plugin",
        "fixture_crash",
        "--plugin-dir",
        fixtures,
        "--listen",
        "127.0.0.1:0",
        "--plugin-config",
        config,
        "--drain-timeout",
        "30",
        "--handover-timeout",
        "120",
    ];
    let host = CopiedHost::start(&args);
    let mut c = Client::connect(host.port());
    c.send(b"first\n");
    assert_eq!(read_line(&mut c), "first\n");
    let out = host.command(&["reload", "-g"], RELOAD_TIMEOUT);
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let new = pid_in(&host.wait_for_log("fixture_crash stops itself", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}")));
    host.replace_binary();
    let out = host.command(&["upgrade"], RELOAD_TIMEOUT);
    assert!(!out.status.success(), "the upgrade went on during a hand-over:\n{}", host.log());
    assert!(out.stderr.contains("a hand-over is under way"), "{}{}", out.stdout, out.stderr);
    continue_once_stopped(new);
    host.wait_for_log("hand-over: 1 connections moved", LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    c.send(b"moved\n");
    assert_eq!(read_line(&mut c), "moved\n");
    let out = host.command(&["upgrade"], RELOAD_TIMEOUT);
    assert!(out.status.success(), "host upgrade failed: {}{}\nlog:\n{}", out.stdout, out.stderr, host.log());
    // The upgraded master's replacement runs the same fixture: it stops itself while adopting
    // the connection too, and goes on once continued.
    let stopped = host.wait_for_nth("fixture_crash stops itself", 2, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let new = pid_in(&stopped);
    continue_once_stopped(new);
    host.wait_for_nth("hand-over: 1 connections moved", 2, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    c.send(b"after\n");
    assert_eq!(read_line(&mut c), "after\n");
}

// The topic seam across a reload chain (`master::mailbox`, `worker::topic_seam`): a publisher
// busy in one plugin call (`fixture_crash`'s `burst`: it reads nothing meanwhile, so it hears of
// no new peer) publishes numbered lines while `host reload -g` replaces the slot of a subscriber
// on another worker. The subscriber's hand-over waits until the publisher knows the
// replacement, so the old worker has every line sent to it alone before it hands over, and the
// subscriber hears every line once, in order. Without that wait the old worker hands over and
// exits during the burst; the lines the publisher sends after (20 at least: the burst goes on
// for 20 lines once the test saw the old worker gone) reach no one.
#[test]
fn a_subscriber_hears_every_line_of_a_publisher_busy_while_its_slot_is_replaced() {
    let stop = std::env::temp_dir().join(format!("host-burst-stop-{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    // Shorter than the hand-over's wait for the publisher (2 s), which it must outlast.
    let config = format!("topics = \"on\"\nburst_ms = \"1500\"\nburst_stop = \"{}\"\n", stop.display());
    let host =
        fixture_crash(&config, &["--count", "3", "--drain-timeout", "30", "--log-level", "info,host::master=debug"]);
    // A subscriber on slot 0 (replaced first), the publisher on slot 2 (replaced last).
    let (mut subscriber, mut publisher) = (None, None);
    for _ in 0..200 {
        if subscriber.is_some() && publisher.is_some() {
            break;
        }
        let mut c = Client::connect(host.port());
        c.send(b"slot\n");
        let line = read_line(&mut c);
        let words: Vec<&str> = line.split_whitespace().collect();
        let (slot, pid) = (words[1].to_string(), words[3].parse::<i32>().unwrap());
        match slot.as_str() {
            "0" if subscriber.is_none() => subscriber = Some((c, pid)),
            "2" if publisher.is_none() => publisher = Some(c),
            _ => {}
        }
    }
    let (Some((mut subscriber, old_pid)), Some(mut publisher)) = (subscriber, publisher) else {
        panic!("200 clients did not land on slots 0 and 2");
    };
    subscriber.send(b"sub feed\n");
    assert_eq!(read_line(&mut subscriber), "subscribed feed\n");
    publisher.send(b"burst feed\n");
    assert_eq!(read_line(&mut subscriber), "1\n", "the burst runs");
    host.signal(nix::sys::signal::Signal::SIGHUP);
    // The subscriber's old worker is gone (its hand-over over): the burst ends 20 lines later.
    let gone = host_tests::poll_until(Duration::from_secs(20), || {
        (!std::path::Path::new(&format!("/proc/{old_pid}")).exists()).then_some(())
    });
    std::fs::write(&stop, b"").unwrap();
    gone.expect("the subscriber's old worker did not exit");
    let published = read_line(&mut publisher);
    let n: u64 = published.strip_prefix("published ").and_then(|n| n.trim().parse().ok()).expect(&published);
    for i in 2..=n {
        let line = subscriber.read_line().map(|l| String::from_utf8_lossy(&l).into_owned());
        assert_eq!(line.ok().as_deref(), Some(format!("{i}\n").as_str()), "line {i} of {n}:\n{}", host.log_text());
    }
    let _ = std::fs::remove_file(&stop);
    // Every slot handed over (the publisher's last, once its burst was over); the subscriber's
    // old worker moved it and drained nothing.
    host.log().wait_for_nth("hand-over: ", 3, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let log = host.log_text();
    let slot0 = log.lines().find(|l| l.contains("hand-over: ") && l.contains("slot=0")).expect("slot 0's hand-over");
    assert!(slot0.contains(" connections moved, 0 drained") && !slot0.contains("hand-over: 0 "), "{slot0}");
    publisher.send(b"still here\n");
    assert_eq!(read_line(&mut publisher), "still here\n");
    assert_eq!(host.log().count("hand-over failed"), 0, "{}", host.log_text());
}
