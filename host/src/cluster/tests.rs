//! The broker layer without sockets (a scripted wire client), then both clients and the driver
//! against a real `redis-server` and `nats-server` started by the tests on 127.0.0.1 with an
//! OS-chosen port. The servers are Debian packages `.ci/run` installs (`.ci/deps/cluster.apt`);
//! a missing binary fails the test with a message saying so.
//!
//! The throughput figures: `cargo test -p host --release --lib cluster::tests::throughput
//! -- --ignored --nocapture`.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use super::driver::Driver;
use super::url::{self, BrokerKind};
use super::*;

// ---------------------------------------------------------------------------------------------
// The broker layer, scripted.

/// Writes each command as a text line; reads `READY`, `PONG`, `MSG topic payload`, `ERR text`.
#[derive(Debug, Default)]
struct Script;

impl Protocol for Script {
    fn reset(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"HELLO\n");
    }
    fn parse(&mut self, input: &[u8], _out: &mut Vec<u8>, events: &mut Vec<WireEvent>) -> Result<usize, ClusterError> {
        let mut used = 0;
        while let Some(end) = input[used..].iter().position(|&b| b == b'\n') {
            let line = std::str::from_utf8(&input[used..used + end]).unwrap();
            used += end + 1;
            let mut words = line.splitn(3, ' ');
            match words.next().unwrap() {
                "READY" => events.push(WireEvent::Ready),
                "PONG" => events.push(WireEvent::Pong),
                "MSG" => events.push(WireEvent::Message {
                    topic: words.next().unwrap().into(),
                    payload: words.next().unwrap().into(),
                }),
                "ERR" => events.push(WireEvent::ServerError(words.next().unwrap().into())),
                other => return Err(ClusterError::Protocol(other.into())),
            }
        }
        Ok(used)
    }
    fn subscribe(&mut self, topic: &[u8], out: &mut Vec<u8>) {
        out.extend([b"SUB ", topic, b"\n"].concat());
    }
    fn unsubscribe(&mut self, topic: &[u8], out: &mut Vec<u8>) {
        out.extend([b"UNSUB ", topic, b"\n"].concat());
    }
    fn publish(&mut self, topic: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), TopicError> {
        if payload.len() > 8 {
            return Err(TopicError::TooLarge { len: payload.len(), max: 8 });
        }
        out.extend([b"PUB ", topic, b" ", payload, b"\n"].concat());
        Ok(())
    }
    fn ping(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"PING\n");
    }
}

fn take(broker: &mut Broker<Script>) -> String {
    let text = String::from_utf8(broker.output().to_vec()).unwrap();
    let n = broker.output().len();
    broker.consume_output(n);
    text
}

fn connected(now: Instant) -> Broker<Script> {
    let mut b = Broker::new(Script);
    b.on_connected(now);
    assert_eq!(take(&mut b), "HELLO\n");
    assert_eq!(b.feed(b"READY\n", now).unwrap(), vec![Event::Connected]);
    b
}

#[test]
fn subscribes_at_the_broker_on_the_first_subscriber_and_unsubscribes_after_the_last() {
    let now = Instant::now();
    let mut b = connected(now);
    b.subscribe(b"a").unwrap();
    assert_eq!(take(&mut b), "SUB a\n");
    b.subscribe(b"a").unwrap();
    b.subscribe(b"a").unwrap();
    assert_eq!(take(&mut b), "");
    b.unsubscribe(b"a");
    b.unsubscribe(b"a");
    assert_eq!(take(&mut b), "");
    assert_eq!(b.topic_count(), 1);
    b.unsubscribe(b"a");
    assert_eq!(take(&mut b), "UNSUB a\n");
    assert_eq!(b.topic_count(), 0);
    // One unsubscribe too many, or of a topic never subscribed: nothing.
    b.unsubscribe(b"a");
    b.unsubscribe(b"never");
    assert_eq!(take(&mut b), "");
    assert_eq!(b.subscribe(b""), Err(TopicError::Empty));
    let long = vec![b'x'; MAX_TOPIC_BYTES + 1];
    assert_eq!(b.subscribe(&long), Err(TopicError::TooLong { len: long.len(), max: MAX_TOPIC_BYTES }));
    assert_eq!(b.publish(&long, b"x"), Err(TopicError::TooLong { len: long.len(), max: MAX_TOPIC_BYTES }));
}

#[test]
fn resubscribes_everything_after_a_reconnect_and_counts_what_was_dropped() {
    let now = Instant::now();
    let mut b = Broker::new(Script);
    // Subscriptions made before the first connection wait for it.
    b.subscribe(b"b").unwrap();
    b.subscribe(b"a").unwrap();
    assert_eq!(b.publish(b"a", b"early"), Err(TopicError::Disconnected));
    b.on_connected(now);
    assert_eq!(b.publish(b"a", b"hs"), Err(TopicError::Disconnected), "still in the handshake");
    assert_eq!(take(&mut b), "HELLO\n");
    assert_eq!(b.feed(b"REA", now).unwrap(), vec![]);
    assert_eq!(b.feed(b"DY\n", now).unwrap(), vec![Event::Connected]);
    assert_eq!(take(&mut b), "SUB a\nSUB b\n");
    b.publish(b"a", b"x").unwrap();
    assert_eq!(take(&mut b), "PUB a x\n");

    b.publish(b"a", b"unsent").unwrap();
    b.on_disconnected();
    assert_eq!(b.state(), State::Disconnected);
    assert_eq!(b.publish(b"a", b"lost"), Err(TopicError::Disconnected));
    b.unsubscribe(b"b");
    b.subscribe(b"c").unwrap();
    assert_eq!(take(&mut b), "", "nothing is written while disconnected");
    b.on_connected(now);
    assert_eq!(take(&mut b), "HELLO\n", "what was not written died with the connection");
    b.feed(b"READY\n", now).unwrap();
    assert_eq!(take(&mut b), "SUB a\nSUB c\n");
    let c = b.counters();
    assert_eq!((c.published, c.dropped_disconnected, c.reconnects), (2, 3, 1));
}

#[test]
fn delivers_messages_only_for_topics_with_local_subscribers() {
    let now = Instant::now();
    let mut b = connected(now);
    b.subscribe(b"a").unwrap();
    let events = b.feed(b"MSG a one\nMSG z two\nERR oops\n", now).unwrap();
    assert_eq!(
        events,
        vec![Event::Message { topic: b"a".to_vec(), payload: b"one".to_vec() }, Event::BrokerError("oops".into()),]
    );
    b.unsubscribe(b"a");
    // In flight when the last subscriber left: not delivered.
    assert_eq!(b.feed(b"MSG a late\n", now).unwrap(), vec![]);
    let c = b.counters();
    assert_eq!((c.received, c.broker_errors), (1, 1));
    assert_eq!(b.publish(b"a", b"too large"), Err(TopicError::TooLarge { len: 9, max: 8 }));
    assert_eq!(b.counters().refused_too_large, 1);
    assert!(b.feed(b"BOGUS\n", now).is_err());
}

#[test]
fn pings_after_silence_and_fails_when_the_pong_never_comes() {
    let start = Instant::now();
    let mut b = connected(start);
    assert_eq!(b.next_tick(), Some(start + PING_INTERVAL));
    b.tick(start + PING_INTERVAL / 2).unwrap();
    assert_eq!(take(&mut b), "");
    let t = start + PING_INTERVAL;
    b.tick(t).unwrap();
    assert_eq!(take(&mut b), "PING\n");
    b.tick(t + PING_TIMEOUT / 2).unwrap();
    assert_eq!(take(&mut b), "", "one PING at a time");
    b.feed(b"PONG\n", t + Duration::from_millis(1)).unwrap();
    b.tick(t + PING_TIMEOUT).unwrap();
    assert_eq!(take(&mut b), "", "the answer reset the silence");
    let t2 = t + PING_INTERVAL + Duration::from_millis(1);
    b.tick(t2).unwrap();
    assert_eq!(take(&mut b), "PING\n");
    assert_eq!(b.tick(t2 + PING_TIMEOUT), Err(ClusterError::Stale(PING_TIMEOUT)));
}

// ---------------------------------------------------------------------------------------------
// Real servers.

/// A port free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A redis-server or nats-server this test started; killed and reaped on drop.
struct Server {
    kind: BrokerKind,
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Server {
    fn start(kind: BrokerKind, extra: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("host-cluster-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server =
            Self { kind, port: free_port(), dir, extra: extra.iter().map(|s| s.to_string()).collect(), child: None };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let (program, mut command) = match self.kind {
            BrokerKind::Redis => {
                let mut c = Command::new("redis-server");
                c.args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
                c.arg("--dir").arg(&self.dir);
                c.args(&self.extra);
                ("redis-server", c)
            }
            BrokerKind::Nats => {
                let conf = self.dir.join("nats.conf");
                let mut text = format!("listen: 127.0.0.1:{port}\n");
                for line in &self.extra {
                    text.push_str(line);
                    text.push('\n');
                }
                std::fs::write(&conf, text).unwrap();
                let mut c = Command::new("nats-server");
                c.arg("-c").arg(&conf);
                ("nats-server", c)
            }
        };
        command.stdout(Stdio::null()).stderr(Stdio::null()).current_dir(&self.dir);
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "could not start {program} ({e}): the cluster tests need it installed \
                 (Debian package {program}, listed in .ci/deps/cluster.apt)"
            )
        });
        self.child = Some(child);
        // Readiness: the port accepts, within a bound.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "{program} did not listen on {port} within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self, userinfo: &str) -> url::ClusterUrl {
        let scheme = match self.kind {
            BrokerKind::Redis => "redis",
            BrokerKind::Nats => "nats",
        };
        url::parse(&format!("{scheme}://{userinfo}127.0.0.1:{}", self.port)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Received = Vec<(Vec<u8>, Vec<u8>)>;

/// Drivers on one mio Poll, their events recorded.
struct Hosts {
    poll: Poll,
    drivers: Vec<Driver>,
    received: Vec<Received>,
    events: Vec<Vec<Event>>,
}

impl Hosts {
    fn new(urls: &[url::ClusterUrl]) -> Self {
        let drivers = urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                Driver::new(u.clone(), "svc", Token(i), None, crate::config::DEFAULT_TOPIC_MAX_MESSAGE).unwrap()
            })
            .collect::<Vec<_>>();
        let n = drivers.len();
        Self { poll: Poll::new().unwrap(), drivers, received: vec![Vec::new(); n], events: vec![Vec::new(); n] }
    }

    /// Run the loop until `done`, at most `limit`; false on time-out.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        let mut events = Events::with_capacity(64);
        loop {
            if done(self) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let next = self.drivers.iter().filter_map(Driver::next_deadline).min();
            let wait = next.map_or(Duration::from_millis(50), |t| t.saturating_duration_since(now));
            self.poll.poll(&mut events, Some(wait.min(Duration::from_millis(50)))).unwrap();
            let now = Instant::now();
            for event in events.iter() {
                let i = event.token().0;
                let got = self.drivers[i].handle_event(event, now);
                self.record(i, got);
            }
            for i in 0..self.drivers.len() {
                let got = self.drivers[i].tick(self.poll.registry(), now);
                self.record(i, got);
                self.drivers[i].flush_output();
            }
        }
    }

    fn record(&mut self, i: usize, got: Vec<Event>) {
        for event in got {
            if let Event::Message { topic, payload } = &event {
                self.received[i].push((topic.clone(), payload.clone()));
            } else {
                self.events[i].push(event);
            }
        }
    }

    fn wait_connected(&mut self) {
        let before: Vec<usize> = self.events.iter().map(|e| count(e, |e| *e == Event::Connected)).collect();
        let ok = self.run_until(Duration::from_secs(15), |h| {
            h.events.iter().zip(&before).all(|(e, b)| count(e, |e| *e == Event::Connected) > *b)
        });
        assert!(ok, "not all connected: {:?}", self.events);
    }

    /// Publish `topic` from `from` every 100 ms until `to` receives it: the readiness check that
    /// `to`'s subscription reached the broker. Returns with the receipts cleared.
    fn sync(&mut self, from: usize, to: usize, topic: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.received[to].iter().any(|(t, p)| t == topic && p == b"sync") {
            assert!(Instant::now() < deadline, "no delivery from {from} to {to} within 10 s");
            let _ = self.drivers[from].publish(topic, b"sync");
            self.run_until(Duration::from_millis(100), |h| !h.received[to].is_empty());
        }
        // Let the other syncs in flight arrive before clearing: what follows is ordered after a
        // marker on the same connection.
        let _ = self.drivers[from].publish(topic, b"marker");
        assert!(self.run_until(Duration::from_secs(5), |h| h.received[to].iter().any(|(_, p)| p == b"marker")));
        for r in &mut self.received {
            r.clear();
        }
    }
}

fn count(events: &[Event], f: impl Fn(&Event) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}

fn msg(topic: &str, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    (topic.as_bytes().to_vec(), payload.to_vec())
}

fn publishes_reach_subscribed_topics_only(kind: BrokerKind) {
    let server = Server::start(kind, &[]);
    let mut h = Hosts::new(&[server.url(""), server.url("")]);
    h.wait_connected();
    h.drivers[0].subscribe(b"shared").unwrap();
    h.drivers[1].subscribe(b"shared").unwrap();
    h.drivers[1].subscribe(b"only b.*>").unwrap();
    h.sync(0, 1, b"shared");
    h.sync(1, 0, b"shared");

    let binary = b"MSG x 1 3\r\n\r\n\0\xff-ERR\r\n".to_vec();
    h.drivers[0].publish(b"nobody", b"n").unwrap();
    h.drivers[0].publish(b"only b.*>", &binary).unwrap();
    h.drivers[0].publish(b"shared", b"from a").unwrap();
    h.drivers[1].publish(b"shared", b"from b").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| h.received[1].len() >= 2 && !h.received[0].is_empty()));
    assert_eq!(h.received[1], vec![msg("only b.*>", &binary), msg("shared", b"from a")]);
    assert_eq!(h.received[0], vec![msg("shared", b"from b")], "a host does not get its own publishes");

    for r in &mut h.received {
        r.clear();
    }
    // Unsubscribe: B's UNSUBSCRIBE is ordered before its "done" publish on its connection.
    h.drivers[1].unsubscribe(b"only b.*>");
    h.drivers[1].publish(b"shared", b"done").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| h.received[0].contains(&msg("shared", b"done"))));
    h.drivers[0].publish(b"only b.*>", b"late").unwrap();
    h.drivers[0].publish(b"shared", b"after").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| !h.received[1].is_empty()));
    assert_eq!(h.received[1], vec![msg("shared", b"after")], "nothing on the unsubscribed topic");
    assert_eq!(h.drivers[1].topic_count(), 1);
    let (a, b) = (h.drivers[0].counters(), h.drivers[1].counters());
    assert!(a.published >= 5 && b.received >= 3, "{a:?} {b:?}");
    assert_eq!((a.dropped_disconnected, a.reconnects), (0, 0));
}

fn reconnects_and_resubscribes_after_a_broker_restart(kind: BrokerKind) {
    let mut server = Server::start(kind, &[]);
    let mut h = Hosts::new(&[server.url(""), server.url("")]);
    h.wait_connected();
    h.drivers[1].subscribe(b"t").unwrap();
    h.sync(0, 1, b"t");

    server.kill();
    let ok = h.run_until(Duration::from_secs(10), |h| {
        h.events.iter().all(|e| e.iter().any(|e| matches!(e, Event::Disconnected { .. })))
    });
    assert!(ok, "the drivers did not see the broker go: {:?}", h.events);
    assert_eq!(h.drivers[0].state(), State::Disconnected);
    assert_eq!(h.drivers[0].publish(b"t", b"lost"), Err(TopicError::Disconnected));
    assert_eq!(h.drivers[0].counters().dropped_disconnected, 1);

    server.spawn(); // the same port
    h.wait_connected();
    // B resubscribed by itself: delivery resumes.
    h.sync(0, 1, b"t");
    h.drivers[0].publish(b"t", b"back").unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| !h.received[1].is_empty()));
    assert_eq!(h.received[1], vec![msg("t", b"back")]);
    assert!(h.drivers[0].counters().reconnects >= 1 && h.drivers[1].counters().reconnects >= 1);
}

#[test]
fn redis_publishes_reach_subscribed_topics_only() {
    publishes_reach_subscribed_topics_only(BrokerKind::Redis);
}

#[test]
fn nats_publishes_reach_subscribed_topics_only() {
    publishes_reach_subscribed_topics_only(BrokerKind::Nats);
}

#[test]
fn redis_reconnects_and_resubscribes_after_a_restart() {
    reconnects_and_resubscribes_after_a_broker_restart(BrokerKind::Redis);
}

#[test]
fn nats_reconnects_and_resubscribes_after_a_restart() {
    reconnects_and_resubscribes_after_a_broker_restart(BrokerKind::Nats);
}

#[test]
fn redis_password_is_checked() {
    let server = Server::start(BrokerKind::Redis, &["--requirepass", "s3cret"]);
    let mut h = Hosts::new(&[server.url(":s3cret@"), server.url(":wrong@")]);
    let ok = h.run_until(Duration::from_secs(10), |h| {
        h.events[0].contains(&Event::Connected)
            && h.events[1].iter().any(|e| matches!(e, Event::Disconnected { reason } if reason.contains("WRONGPASS")))
    });
    assert!(ok, "{:?}", h.events);
    assert_eq!(h.drivers[1].state(), State::Disconnected);
}

#[test]
fn a_host_name_is_resolved_off_the_loop() {
    let server = Server::start(BrokerKind::Nats, &[]);
    let name = url::parse(&format!("nats://localhost:{}", server.port)).unwrap();
    let mut h = Hosts::new(&[name, server.url("")]);
    h.wait_connected();
    h.drivers[0].subscribe(b"t").unwrap();
    h.sync(1, 0, b"t");
}

#[test]
fn nats_refuses_a_publish_over_max_payload() {
    let server = Server::start(BrokerKind::Nats, &["max_payload: 1024"]);
    let mut h = Hosts::new(&[server.url(""), server.url("")]);
    h.wait_connected();
    h.drivers[1].subscribe(b"t").unwrap();
    h.sync(0, 1, b"t");
    assert_eq!(h.drivers[0].publish(b"t", &[7; 1025]), Err(TopicError::TooLarge { len: 1025, max: 1024 }));
    assert_eq!(h.drivers[0].counters().refused_too_large, 1);
    h.drivers[0].publish(b"t", &[7; 1024]).unwrap();
    assert!(h.run_until(Duration::from_secs(10), |h| !h.received[1].is_empty()));
    assert_eq!(h.received[1], vec![msg("t", &[7; 1024])]);
    assert_eq!(h.drivers[0].state(), State::Ready, "the refused publish did not cost the connection");
}

/// Messages per second from one publisher client to one subscriber client, 10 s at most.
fn throughput(kind: BrokerKind) {
    const PAYLOAD: usize = 64;
    const WINDOW: u64 = 20_000;
    const TOTAL: u64 = 2_000_000;
    let server = Server::start(kind, &[]);
    let mut h = Hosts::new(&[server.url(""), server.url("")]);
    h.wait_connected();
    h.drivers[1].subscribe(b"bench").unwrap();
    h.sync(0, 1, b"bench");
    let payload = [b'x'; PAYLOAD];
    let start = Instant::now();
    let limit = Duration::from_secs(10);
    let mut sent = 0u64;
    while sent < TOTAL && start.elapsed() < limit {
        let received = h.drivers[1].counters().received;
        while sent - received.min(sent) < WINDOW && sent < TOTAL {
            h.drivers[0].publish(b"bench", &payload).unwrap();
            sent += 1;
        }
        h.received[1].clear();
        h.run_until(Duration::from_millis(1), |_| false);
    }
    let got = h.drivers[1].counters().received;
    let secs = start.elapsed().as_secs_f64();
    println!("{kind:?}: {got} messages of {PAYLOAD} bytes in {secs:.2} s = {:.0} messages/s", got as f64 / secs);
}

#[test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
fn throughput_redis() {
    throughput(BrokerKind::Redis);
}

#[test]
#[ignore = "a measurement: run with --release -- --ignored --nocapture"]
fn throughput_nats() {
    throughput(BrokerKind::Nats);
}
