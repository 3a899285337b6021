//! Hand-over of resp's pub/sub subscribers (docs/architecture.md, "Hand-over"; resp's
//! `pubsub.rs`): pattern subscribers (`PSUBSCRIBE`, delivered by the plugin's `on_publish`)
//! and channel subscribers (`SUBSCRIBE`, written by the host) keep their connection across
//! reloads of two workers and hear every message once, in order, while a publisher publishes
//! every millisecond before, during and after. Raw RESP sockets: what they read is checked
//! byte for byte, and a closed or reconnected client cannot hide.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use host_tests::Host;

const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TIMEOUT: Duration = Duration::from_secs(15);
/// What a subscriber waits for one read at most (the publisher publishes every millisecond).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages published once the reloads are done, before `end`.
const AFTER: u64 = 200;

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads from `s` until what it read ends with `suffix`; what it read.
fn read_until(s: &mut TcpStream, suffix: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = [0; 65536];
    while !buf.ends_with(suffix) {
        match s.read(&mut chunk) {
            Ok(0) => panic!("closed after {:?}", String::from_utf8_lossy(&buf[buf.len().saturating_sub(200)..])),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("no {:?} after {} bytes: {e}", String::from_utf8_lossy(suffix), buf.len()),
        }
    }
    buf
}

/// `CLIENT ID` on a connection outside subscribe mode.
fn client_id(s: &mut TcpStream) -> u64 {
    s.write_all(b"CLIENT ID\r\n").unwrap();
    let line = read_until(s, b"\r\n");
    let text = String::from_utf8_lossy(&line);
    text.trim().strip_prefix(':').and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("CLIENT ID: {text}"))
}

/// A subscriber as set up: its connection, its client id, what it waits for.
struct Subscriber {
    name: String,
    s: TcpStream,
    id: u64,
    resp3: bool,
    /// `pmessage` or `message`: the payload is that many tokens after the kind.
    kind: &'static str,
}

/// A subscriber of `command` (`PSUBSCRIBE news.*` or `SUBSCRIBE news.a`), in RESP3 when
/// `resp3`; subscribed once its confirmation came.
fn subscribe(port: u16, name: &str, resp3: bool, command: &str) -> Subscriber {
    let mut s = connect(port);
    let id = client_id(&mut s);
    if resp3 {
        s.write_all(b"HELLO 3\r\n").unwrap();
        // The map's last entry: `modules`, an empty array.
        read_until(&mut s, b"$7\r\nmodules\r\n*0\r\n");
    }
    s.write_all(format!("{command}\r\n").as_bytes()).unwrap();
    let (kind, what) = command.split_once(' ').unwrap();
    let kind_lower = kind.to_ascii_lowercase();
    read_until(&mut s, format!("{kind_lower}\r\n${}\r\n{what}\r\n:1\r\n", what.len()).as_bytes());
    let kind = if kind_lower == "psubscribe" { "pmessage" } else { "message" };
    Subscriber { name: name.to_string(), s, id, resp3, kind }
}

/// Reads what `sub` hears until `end`: the payloads, in order; then, in RESP3 (where every
/// command runs in subscribe mode), its client id again.
fn hear(mut sub: Subscriber) -> JoinHandle<(String, Vec<String>, bool)> {
    std::thread::spawn(move || {
        let buf = read_until(&mut sub.s, b"$3\r\nend\r\n");
        let tokens: Vec<&[u8]> = buf.split(|&b| b == b'\n').map(|t| t.strip_suffix(b"\r").unwrap_or(t)).collect();
        let offset = if sub.kind == "pmessage" { 6 } else { 4 };
        let seen: Vec<String> = tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == sub.kind.as_bytes())
            .filter_map(|(i, _)| tokens.get(i + offset).map(|p| String::from_utf8_lossy(p).into_owned()))
            .collect();
        let same = !sub.resp3 || client_id(&mut sub.s) == sub.id;
        (sub.name, seen, same)
    })
}

/// Publishes 1, 2, … on `news.a` every millisecond (each answered before the next) until
/// `stop`, then [`AFTER`] more and `end` (`count`: how many so far); the last number.
fn publisher(port: u16, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let s = connect(port);
        let mut replies = BufReader::new(s.try_clone().unwrap());
        let mut s = s;
        let (mut n, mut after) = (0u64, 0u64);
        let mut line = String::new();
        let mut publish = |payload: &str| {
            s.write_all(format!("PUBLISH news.a {payload}\r\n").as_bytes()).unwrap();
            line.clear();
            replies.read_line(&mut line).unwrap();
            assert!(line.starts_with(':'), "PUBLISH answered {line:?}");
        };
        while after < AFTER {
            n += 1;
            publish(&n.to_string());
            count.store(n, Ordering::Relaxed);
            if stop.load(Ordering::Relaxed) {
                after += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        publish("end");
        n
    })
}

fn reload(host: &mut Host, args: &[&str]) {
    let out = host.command(args, RELOAD_TIMEOUT);
    assert!(out.status.success(), "{args:?}: {}{}", out.stdout, out.stderr);
}

// Pattern subscribers in RESP2 and RESP3 and channel subscribers, spread over two workers, keep
// their connection through `host reload -g` and a reload the watcher starts (a new plugin file) while
// a message is published every millisecond: each hears every message once, in order, and each
// hand-over says its connections moved, none drained. Before the plugin told the host what its
// pattern subscribers hear (`handover_hears`) they drained: closed at the reload.
#[test]
fn pattern_and_channel_subscribers_hear_every_message_once_across_reloads() {
    use host_tests::plugin_dir::{variant, PluginDir};
    let dir = PluginDir::new();
    dir.mv("resp.so", &std::fs::read(host_tests::plugin_file("resp")).unwrap());
    let mut host = Host::start("resp", &["--plugin-dir", &dir.arg(), "--count", "2", "--drain-timeout", "30"]);
    let port = host.port();
    let mut subs = Vec::new();
    for i in 0..3 {
        subs.push(subscribe(port, &format!("psubscribe resp2 #{i}"), false, "PSUBSCRIBE news.*"));
        subs.push(subscribe(port, &format!("psubscribe resp3 #{i}"), true, "PSUBSCRIBE news.*"));
    }
    for i in 0..2 {
        subs.push(subscribe(port, &format!("subscribe resp2 #{i}"), false, "SUBSCRIBE news.a"));
    }
    let hearing: Vec<_> = subs.into_iter().map(hear).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let publishing = publisher(port, Arc::clone(&stop), Arc::clone(&count));
    // Some messages before the first reload.
    host_tests::poll_until(LOG_TIMEOUT, || (count.load(Ordering::Relaxed) >= 50).then_some(()))
        .expect("the publisher publishes");
    reload(&mut host, &["reload", "-g"]);
    host.log().wait_for_nth("hand-over: ", 2, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    // The watcher's: a new resp.so moved into the plugin directory.
    dir.mv("resp.so", &variant(&host_tests::plugin_file("resp"), "next"));
    host.log().wait_for_nth("hand-over: ", 4, LOG_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    stop.store(true, Ordering::Relaxed);
    let last = publishing.join().expect("the publisher");
    let want: Vec<String> = (1..=last).map(|n| n.to_string()).collect();
    for h in hearing {
        let (name, seen, same) = h.join().expect("a subscriber");
        let first_wrong = seen.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            seen.len() == want.len() + 1 && first_wrong.is_none(),
            "{name}: {} messages of {} (and end), first out of place at {first_wrong:?}: {:?}",
            seen.len(),
            want.len(),
            first_wrong.map(|i| &seen[i.saturating_sub(2)..(i + 3).min(seen.len())])
        );
        assert!(same, "{name}: the same connection (CLIENT ID) after the reloads");
    }
    let log = host.log_text();
    let handovers: Vec<&str> = log.lines().filter(|l| l.contains("hand-over: ")).collect();
    assert_eq!(handovers.len(), 4, "{log}");
    for line in handovers {
        assert!(
            line.contains(" 0 drained") && !line.contains(" 0 connections moved"),
            "every connection moved: {line}"
        );
    }
}
