//! Messages between workers (topics delivered through the workers' mailboxes) through the `chat`
//! example: a line reaches the clients of every worker, across a graceful reload chain; a direct
//! message (`/to SLOT`: the room of one worker) reaches that slot only; a worker that stops
//! reading or dies costs counted drops, never the sender.

use std::collections::BTreeSet;
use std::time::Duration;

use host_tests::{Client, Host, Signal};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A chat client and the worker it landed on.
struct Member {
    client: Client,
    slot: u32,
    pid: i32,
}

fn line(c: &mut Client) -> String {
    let line = c.read_line().unwrap_or_else(|e| panic!("no line: {e}"));
    String::from_utf8_lossy(&line).into_owned()
}

fn join(host: &Host) -> Member {
    let mut client = Client::connect(host.port());
    client.send(b"/whoami\n");
    let answer = line(&mut client);
    let words: Vec<&str> = answer.split_whitespace().collect();
    match words[..] {
        ["slot", slot, "pid", pid] => Member { client, slot: slot.parse().unwrap(), pid: pid.parse().unwrap() },
        _ => panic!("unexpected answer to /whoami: {answer:?}"),
    }
}

/// Connects clients until they sit on at least `workers` distinct workers (SO_REUSEPORT spreads
/// them by hash; a bounded number of tries).
fn spread(host: &Host, workers: usize) -> Vec<Member> {
    let mut members = Vec::new();
    for _ in 0..200 {
        members.push(join(host));
        let pids: BTreeSet<i32> = members.iter().map(|m| m.pid).collect();
        if pids.len() >= workers && members.len() >= 8 {
            return members;
        }
    }
    panic!("200 clients did not land on {workers} workers");
}

/// The `worker messages:` line of `host status`.
fn message_line(host: &mut Host) -> String {
    let out = host.command(["status"], COMMAND_TIMEOUT);
    assert!(out.status.success(), "status failed: {}", out.stderr);
    out.stdout.lines().find(|l| l.starts_with("worker messages:")).unwrap_or_default().to_string()
}

#[test]
fn a_line_reaches_every_client_on_every_worker() {
    let host = Host::start("chat", &["--count", "4"]);
    let mut members = spread(&host, 3);
    // From two different workers, so that it is not one worker's luck.
    let first = members[0].pid;
    let other = members.iter().position(|m| m.pid != first).unwrap();
    for (from, text) in [(0, "hello from the first\n"), (other, "hello from another\n")] {
        members[from].client.send(text.as_bytes());
        // Every member of the room, the sender included.
        for (i, m) in members.iter_mut().enumerate() {
            assert_eq!(line(&mut m.client), text, "client {i} on worker #{} (pid {})", m.slot, m.pid);
        }
    }
}

#[test]
fn send_to_worker_reaches_that_slot_only() {
    let host = Host::start("chat", &["--count", "4"]);
    let mut members = spread(&host, 3);
    let a = 0;
    let b = members.iter().position(|m| m.slot != members[a].slot).unwrap();
    let c = members.iter().position(|m| m.slot != members[a].slot && m.slot != members[b].slot).unwrap();
    let target = members[b].slot;
    members[a].client.send(format!("/to {target} just for you\nafter\n").as_bytes());
    // Messages from one worker keep their order: slot b hears the direct one then the room's,
    // slot c and the sender the room's only.
    assert_eq!(line(&mut members[b].client), "just for you\n");
    assert_eq!(line(&mut members[b].client), "after\n");
    assert_eq!(line(&mut members[c].client), "after\n");
    assert_eq!(line(&mut members[a].client), "after\n");
    // The service has no slot 9: the sender hears so.
    members[a].client.send(b"/to 9 nobody\n");
    assert_eq!(line(&mut members[a].client), "! no such worker\n");
}

#[test]
fn no_message_is_lost_through_a_graceful_reload_chain() {
    let mut host = Host::start("chat", &["--count", "4", "--drain-timeout", "60"]);
    let mut members = spread(&host, 2);
    let a = members.remove(0);
    let b_at = members.iter().position(|m| m.pid != a.pid).unwrap();
    let mut b = members.remove(b_at);
    drop(members);
    let (old_a, old_b) = (a.pid, b.pid);
    // A sends while the chain replaces every worker (A's and B's drain: they stay alive with
    // their clients), then after it.
    const LINES: usize = 400;
    let sender = std::thread::spawn(move || {
        let mut a = a;
        for i in 0..LINES / 2 {
            a.client.send(format!("line {i}\n").as_bytes());
            std::thread::sleep(Duration::from_millis(2));
        }
        a
    });
    let out = host.command(["reload", "-g"], COMMAND_TIMEOUT);
    assert!(out.status.success(), "reload failed: {}\n{}", out.stdout, out.stderr);
    let mut a = sender.join().unwrap();
    for i in LINES / 2..LINES {
        a.client.send(format!("line {i}\n").as_bytes());
    }
    for i in 0..LINES {
        assert_eq!(line(&mut b.client), format!("line {i}\n"));
        assert_eq!(line(&mut a.client), format!("line {i}\n"), "the sender is in the room too");
    }
    // The reload replaced both workers; a client of a new worker and those of the draining ones
    // still talk to each other.
    let status = host.command(["status"], COMMAND_TIMEOUT).stdout;
    let mut c = join(&host);
    assert!(c.pid != old_a && c.pid != old_b, "a new client lands on a new worker:\n{status}");
    c.client.send(b"from the new generation\n");
    assert_eq!(line(&mut a.client), "from the new generation\n");
    assert_eq!(line(&mut b.client), "from the new generation\n");
    assert_eq!(line(&mut c.client), "from the new generation\n");
    b.client.send(b"from the old one\n");
    assert_eq!(line(&mut c.client), "from the old one\n");
}

#[test]
fn a_stuck_or_dead_peer_costs_counted_drops_not_the_sender() {
    let mut host = Host::start("chat", &["--count", "3"]);
    let mut a = join(&host);
    let victim = host_tests::poll_until(Duration::from_secs(10), || {
        host.worker_pids().into_iter().find(|&p| p != a.pid && host_tests::is_alive(p))
    })
    .expect("another worker");
    // A worker that does not read: its mailbox fills up and A's worker drops for it.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGSTOP).unwrap();
    // Until its mailbox overflows (its size depends on the system's socket buffer limits),
    // 64 MiB at most. To the room of another slot than A's (A is not in it: it need not read);
    // every worker's mailbox gets each line.
    let other = (a.slot + 1) % 3;
    let big = format!("/to {other} {}\n", "x".repeat(4000));
    let mut counted = String::new();
    for _ in 0..32 {
        for _ in 0..500 {
            a.client.send(big.as_bytes());
        }
        a.client.send(b"/whoami\n");
        line(&mut a.client);
        counted = message_line(&mut host);
        if dropped(&counted) > 0 {
            break;
        }
    }
    assert!(dropped(&counted) > 0, "drops are counted: {counted:?}");
    assert!(counted.contains(&format!("#{} {}:", a.slot, a.pid)), "per worker: {counted:?}");
    // Then it dies; A goes on sending.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    for _ in 0..10 {
        a.client.send(format!("/to {other} still here\n").as_bytes());
    }
    a.client.send(b"/whoami\n");
    assert_eq!(line(&mut a.client), format!("slot {} pid {}\n", a.slot, a.pid), "the sender lives on");
}

/// The drop count in a `worker messages:` line (0 when there is none).
fn dropped(counted: &str) -> u64 {
    counted
        .split("dropped ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}
