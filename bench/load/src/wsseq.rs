//! Sequence-numbered WebSocket clients for the hand-over benchmark (`bench/handover_ws.py`):
//! CLIENTS clients of an echo server each send a numbered text message every INTERVAL_MS (open
//! loop: the next goes whether or not the last came back, at most 64 in flight per client) and
//! check every echo: in order, once, none missing. One thread, one mio poll over every socket;
//! connecting and the upgrade are non-blocking too (at most 256 under way at once).
//!
//! Run: wsseq PORT CLIENTS INTERVAL_MS MAX_SECONDS [SIZE]
//! It prints `ready N` once every client is open, then reads commands on stdin: `phase NAME`
//! starts a phase (the figures are kept per phase), `end` stops sending, waits up to 5 s for the
//! echoes still on their way, prints one JSON report and exits. MAX_SECONDS after the start it
//! ends by itself, and so it does when stdin closes. With `WSSEQ_RECONNECT=1` a client the
//! server closes connects again (counted), for servers that drop their clients on a reload.
//!
//! Per phase: messages sent and echoed; `lost` (an echo came back and an earlier one never did),
//! `dup_or_reordered` (an echo not awaited: repeated, or late after its successors); disconnects
//! (and when, from the phase's start) and echoes still awaited on the closed connections;
//! `wait_ms` (p50/p99/max over the clients of each one's longest wait from sending a message to
//! its echo, counted in the phase the echo arrives in); `late_ms` (how late the client itself was
//! sending: its own limit). Loopback only: it connects to 127.0.0.1.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use websocket_core::frame::{apply_mask, encode_header, parse_header, OpCode, MAX_HEADER_LEN};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const MAX_IN_FLIGHT: usize = 64;
const MAX_CONNECTING: usize = 256;
const WAKER: Token = Token(usize::MAX);
const END_WAIT: Duration = Duration::from_secs(5);

#[derive(PartialEq)]
enum State {
    Connecting,
    Upgrading,
    Open,
    Closed,
}

struct Client {
    stream: Option<TcpStream>,
    state: State,
    out: Vec<u8>,
    inbuf: Vec<u8>,
    next_seq: u64,
    in_flight: VecDeque<(u64, Instant)>,
    /// Bumped on every connection, so a stale timer entry of an earlier one is ignored.
    generation: u32,
    ever_opened: bool,
    /// Watched for writability too: output is waiting, or it is connecting.
    watch_write: bool,
}

#[derive(Default)]
struct Phase {
    name: String,
    started: Option<Instant>,
    ended: Option<Instant>,
    sent: u64,
    echoed: u64,
    lost: u64,
    dup_or_reordered: u64,
    disconnects: u64,
    disconnect_first_ms: Option<u64>,
    disconnect_last_ms: u64,
    unanswered_on_close: u64,
    reconnects: u64,
    /// Clients open when the phase began.
    open_at_start: usize,
    /// Sends the client itself skipped, being a whole interval late (its own limit).
    skipped: u64,
    /// Each client's longest wait in µs (0: no echo in this phase).
    wait_us: Vec<u32>,
    late_us: Vec<u32>,
}

impl Phase {
    fn new(name: &str, clients: usize, now: Instant) -> Phase {
        Phase {
            name: name.to_string(),
            started: Some(now),
            wait_us: vec![0; clients],
            late_us: vec![0; clients],
            ..Phase::default()
        }
    }

    fn json(&self) -> String {
        let pct = |v: &[u32]| {
            let mut xs: Vec<u32> = v.iter().copied().filter(|&x| x > 0).collect();
            xs.sort_unstable();
            let at = |q: f64| match xs.len() {
                0 => 0.0,
                n => xs[((n as f64 * q) as usize).min(n - 1)] as f64 / 1000.0,
            };
            format!(
                "{{\"n\": {}, \"p50\": {:.1}, \"p99\": {:.1}, \"max\": {:.1}}}",
                xs.len(),
                at(0.5),
                at(0.99),
                at(1.0)
            )
        };
        let secs = match (self.started, self.ended) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        format!(
            "{{\"name\": \"{}\", \"secs\": {secs:.2}, \"sent\": {}, \"echoed\": {}, \"lost\": {}, \"dup_or_reordered\": {}, \
             \"disconnects\": {}, \"disconnect_first_ms\": {}, \"disconnect_last_ms\": {}, \"unanswered_on_close\": {}, \
             \"reconnects\": {}, \"open_at_start\": {}, \"skipped\": {}, \"wait_ms\": {}, \"late_ms\": {}}}",
            self.name,
            self.sent,
            self.echoed,
            self.lost,
            self.dup_or_reordered,
            self.disconnects,
            self.disconnect_first_ms.map_or("null".to_string(), |v| v.to_string()),
            self.disconnect_last_ms,
            self.unanswered_on_close,
            self.reconnects,
            self.open_at_start,
            self.skipped,
            pct(&self.wait_us),
            pct(&self.late_us)
        )
    }
}

struct Bench {
    poll: Poll,
    addr: SocketAddr,
    clients: Vec<Client>,
    phases: Vec<Phase>,
    /// (when, client, generation): the next send of each open client.
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    to_connect: VecDeque<usize>,
    connecting: usize,
    interval: Duration,
    size: usize,
    reconnect: bool,
    sending: bool,
    opened_once: usize,
    failed_connects: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: wsseq PORT CLIENTS INTERVAL_MS MAX_SECONDS [SIZE]";
    if args.len() < 4 || args.len() > 5 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let parse = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("not a number: {s}\n{usage}"));
    let (port, clients, interval, max_secs) = (parse(&args[0]), parse(&args[1]), parse(&args[2]), parse(&args[3]));
    let size = args.get(4).map_or(32, |s| parse(s)).max(24) as usize;
    let reconnect = std::env::var_os("WSSEQ_RECONNECT").is_some_and(|v| v == "1");
    if let Err(e) =
        run(port as u16, clients as usize, Duration::from_millis(interval.max(1)), max_secs, size, reconnect)
    {
        eprintln!("wsseq: {e}");
        std::process::exit(1);
    }
}

fn run(port: u16, n: usize, interval: Duration, max_secs: u64, size: usize, reconnect: bool) -> io::Result<()> {
    let poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() || waker.wake().is_err() {
                return;
            }
        }
        let _ = tx.send("end".to_string());
        let _ = waker.wake();
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(max_secs);
    let mut b = Bench {
        poll,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        clients: (0..n)
            .map(|_| Client {
                stream: None,
                state: State::Closed,
                out: Vec::new(),
                inbuf: Vec::new(),
                next_seq: 0,
                in_flight: VecDeque::new(),
                generation: 0,
                ever_opened: false,
                watch_write: false,
            })
            .collect(),
        phases: vec![Phase::new("connect", n, started)],
        timers: BinaryHeap::new(),
        to_connect: (0..n).collect(),
        connecting: 0,
        interval,
        size,
        reconnect,
        sending: false,
        opened_once: 0,
        failed_connects: 0,
    };
    let mut events = Events::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut ending: Option<Instant> = None;
    let mut announced = false;
    loop {
        b.start_connects()?;
        let now = Instant::now();
        if !announced && b.opened_once == n {
            announced = true;
            b.sending = true;
            // Spread the first sends evenly over one interval.
            for i in 0..n {
                let at = now + interval.mul_f64(i as f64 / n as f64);
                b.timers.push(Reverse((at, i, b.clients[i].generation)));
            }
            println!("ready {n}");
            io::stdout().flush()?;
        }
        if ending.is_none() && now >= deadline {
            ending = Some(now);
            b.sending = false;
        }
        if let Some(t) = ending {
            let waiting: usize = b.clients.iter().map(|c| c.in_flight.len()).sum();
            if waiting == 0 || now >= t + END_WAIT {
                break;
            }
        }
        b.fire_timers(now);
        let timeout = b.timers.peek().map_or(Duration::from_millis(50), |Reverse((at, _, _))| {
            at.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(1), Duration::from_millis(50))
        });
        b.poll.poll(&mut events, Some(timeout))?;
        // The commands are looked for every turn (the waker only cuts a poll short).
        while let Ok(cmd) = rx.try_recv() {
            let now = Instant::now();
            if let Some(name) = cmd.strip_prefix("phase ") {
                b.phases.last_mut().unwrap().ended = Some(now);
                let open = b.clients.iter().filter(|c| c.state == State::Open).count();
                b.phases.push(Phase { open_at_start: open, ..Phase::new(name.trim(), n, now) });
            } else if cmd.trim() == "end" && ending.is_none() {
                ending = Some(now);
                b.sending = false;
            }
        }
        for event in events.iter() {
            if event.token() != WAKER {
                b.on_event(event.token().0, &mut chunk);
            }
        }
    }
    let now = Instant::now();
    b.phases.last_mut().unwrap().ended = Some(now);
    let unanswered: usize = b.clients.iter().map(|c| c.in_flight.len()).sum();
    let open = b.clients.iter().filter(|c| c.state == State::Open).count();
    let phases: Vec<String> = b.phases.iter().map(Phase::json).collect();
    println!(
        "{{\"clients\": {n}, \"open_at_end\": {open}, \"interval_ms\": {}, \"size\": {size}, \"unanswered_at_end\": {unanswered}, \
         \"failed_connects\": {}, \"client_cpu_s\": {:.2}, \"phases\": [{}]}}",
        interval.as_millis(),
        b.failed_connects,
        cpu_seconds(),
        phases.join(", ")
    );
    io::stdout().flush()
}

/// This process's utime + stime (from /proc/self/stat, at 100 ticks a second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after.split_whitespace().map(|s| s.parse().unwrap_or(0)).collect();
    // Fields 14 and 15 of the line; `after` starts at field 3.
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) as f64 / 100.0
}

impl Bench {
    fn phase(&mut self) -> &mut Phase {
        self.phases.last_mut().unwrap()
    }

    fn start_connects(&mut self) -> io::Result<()> {
        while self.connecting < MAX_CONNECTING {
            let Some(i) = self.to_connect.pop_front() else { break };
            let mut stream = match TcpStream::connect(self.addr) {
                Ok(s) => s,
                Err(e) => {
                    self.failed_connects += 1;
                    eprintln!("wsseq: connect: {e}");
                    continue;
                }
            };
            self.poll.registry().register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
            let c = &mut self.clients[i];
            c.stream = Some(stream);
            c.state = State::Connecting;
            c.generation += 1;
            c.inbuf.clear();
            c.out.clear();
            c.next_seq = 0;
            c.watch_write = true;
            self.connecting += 1;
        }
        Ok(())
    }

    fn fire_timers(&mut self, now: Instant) {
        // What is due within a millisecond goes now: fewer, fuller loop turns.
        while let Some(&Reverse((at, i, generation))) = self.timers.peek() {
            if at > now + Duration::from_millis(1) {
                break;
            }
            self.timers.pop();
            if !self.sending || self.clients[i].generation != generation || self.clients[i].state != State::Open {
                continue;
            }
            let late = now.saturating_duration_since(at).as_micros().min(u32::MAX as u128) as u32;
            let p = self.phase();
            p.late_us[i] = p.late_us[i].max(late.max(1));
            if self.clients[i].in_flight.len() < MAX_IN_FLIGHT {
                self.send(i, now);
            }
            // The schedule goes on from when it was due, not from now: a late client catches up.
            // The schedule keeps its phase: sends a late client missed are skipped (counted), so
            // clients do not bunch up into bursts behind a stall.
            let mut next = at + self.interval;
            while next <= now {
                next += self.interval;
                self.phase().skipped += 1;
            }
            self.timers.push(Reverse((next, i, generation)));
        }
    }

    fn send(&mut self, i: usize, now: Instant) {
        let size = self.size;
        let c = &mut self.clients[i];
        let seq = c.next_seq;
        c.next_seq += 1;
        let mut text = format!("{seq} ").into_bytes();
        text.resize(size, b'x');
        let mut head = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut head, true, OpCode::Text, text.len());
        head[1] |= 0x80;
        c.out.extend_from_slice(&head[..n]);
        c.out.extend_from_slice(&MASK);
        apply_mask(&mut text, MASK, 0);
        c.out.extend_from_slice(&text);
        c.in_flight.push_back((seq, now));
        self.phase().sent += 1;
        self.flush(i);
    }

    /// Writes what is queued; the socket is watched for writability only while some waits (an
    /// edge-triggered poll would otherwise wake for every ACK that frees buffer space).
    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let Some(stream) = c.stream.as_mut() else { return };
        while !c.out.is_empty() {
            match stream.write(&c.out) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(i, &format!("write: {e}")),
            }
        }
        let want = !c.out.is_empty() || c.state == State::Connecting;
        if want != c.watch_write {
            let interest = if want { Interest::READABLE | Interest::WRITABLE } else { Interest::READABLE };
            if let Err(e) = self.poll.registry().reregister(stream, Token(i), interest) {
                return self.close(i, &format!("reregister: {e}"));
            }
            c.watch_write = want;
        }
    }

    fn close(&mut self, i: usize, why: &str) {
        let now = Instant::now();
        let c = &mut self.clients[i];
        let was = std::mem::replace(&mut c.state, State::Closed);
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        let unanswered = c.in_flight.len() as u64;
        c.in_flight.clear();
        c.out.clear();
        if matches!(was, State::Connecting | State::Upgrading) {
            self.connecting -= 1;
            self.failed_connects += 1;
            eprintln!("wsseq: client {i} could not connect: {why}");
        } else {
            let p = self.phase();
            let at = now.duration_since(p.started.unwrap_or(now)).as_millis() as u64;
            p.disconnects += 1;
            p.unanswered_on_close += unanswered;
            p.disconnect_first_ms = Some(p.disconnect_first_ms.map_or(at, |f| f.min(at)));
            p.disconnect_last_ms = p.disconnect_last_ms.max(at);
        }
        if self.reconnect || !self.clients[i].ever_opened {
            self.to_connect.push_back(i);
        }
    }

    fn on_event(&mut self, i: usize, chunk: &mut [u8]) {
        if i >= self.clients.len() || self.clients[i].stream.is_none() {
            return;
        }
        if self.clients[i].state == State::Connecting {
            let stream = self.clients[i].stream.as_ref().unwrap();
            match stream.take_error() {
                Ok(Some(e)) | Err(e) => return self.close(i, &format!("connect: {e}")),
                Ok(None) => {}
            }
            if stream.peer_addr().is_err() {
                return; // not connected yet
            }
            let _ = stream.set_nodelay(true);
            let port = self.addr.port();
            let c = &mut self.clients[i];
            c.state = State::Upgrading;
            c.out.extend_from_slice(
                format!(
                    "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            );
        }
        self.flush(i);
        // Read until the socket is empty (the poll is edge-triggered).
        loop {
            let c = &mut self.clients[i];
            let Some(stream) = c.stream.as_mut() else { return };
            match stream.read(chunk) {
                Ok(0) => return self.close(i, "closed by the server"),
                Ok(n) => c.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.close(i, &format!("read: {e}")),
            }
        }
        if self.clients[i].state == State::Upgrading {
            let c = &mut self.clients[i];
            let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else { return };
            if !c.inbuf.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&c.inbuf[..end.min(80)]).to_string();
                return self.close(i, &format!("upgrade refused: {line}"));
            }
            c.inbuf.drain(..end + 4);
            c.state = State::Open;
            let generation = c.generation;
            self.connecting -= 1;
            if !c.ever_opened {
                c.ever_opened = true;
                self.opened_once += 1;
            } else {
                self.phase().reconnects += 1;
                if self.sending {
                    self.timers.push(Reverse((Instant::now(), i, generation)));
                }
            }
        }
        self.read_frames(i);
    }

    fn read_frames(&mut self, i: usize) {
        let now = Instant::now();
        let mut used = 0;
        loop {
            let c = &mut self.clients[i];
            let header = match parse_header(&c.inbuf[used..]) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    c.inbuf.drain(..used);
                    return self.close(i, &format!("bad frame: {e:?}"));
                }
            };
            let Some(len) = header.frame_len() else { return self.close(i, "a frame too long") };
            if c.inbuf.len() - used < len {
                break;
            }
            let payload = &c.inbuf[used + header.header_len..used + len];
            used += len;
            match header.opcode {
                OpCode::Text => {}
                OpCode::Close => {
                    c.inbuf.clear();
                    return self.close(i, "a close frame");
                }
                _ => continue,
            }
            let seq: Option<u64> = payload
                .split(|&b| b == b' ')
                .next()
                .and_then(|w| std::str::from_utf8(w).ok())
                .and_then(|s| s.parse().ok());
            let (mut lost, mut dup, mut wait) = (0u64, 0u64, None);
            match seq {
                Some(s) if c.in_flight.iter().any(|&(q, _)| q == s) => {
                    while let Some(&(q, sent)) = c.in_flight.front() {
                        c.in_flight.pop_front();
                        if q == s {
                            wait = Some(now.duration_since(sent));
                            break;
                        }
                        lost += 1;
                    }
                }
                _ => dup += 1,
            }
            let p = self.phases.last_mut().unwrap();
            p.lost += lost;
            p.dup_or_reordered += dup;
            if let Some(w) = wait {
                p.echoed += 1;
                let us = w.as_micros().clamp(1, u32::MAX as u128) as u32;
                p.wait_us[i] = p.wait_us[i].max(us);
            }
        }
        self.clients[i].inbuf.drain(..used);
    }
}
