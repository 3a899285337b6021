//! Fan-out load client of `bench/topics.sh`: SUBSCRIBERS WebSocket clients join the room
//! `bench` of a chat server (`/join bench`, answered `joined bench`: `examples/ws_chat`, or the
//! Node servers of `bench/topics/`), spread over PORTS in turn; one more client, on the first
//! port, publishes a SIZE-byte text message, then the next once all but WINDOW messages reached
//! every subscriber, for SECONDS. Each message carries its send time, so every delivery gives a
//! publish-to-receive latency. One thread, one mio poll over every socket.
//!
//! Run: fanout PORTS SUBSCRIBERS SECONDS SIZE      (PORTS: `8081` or `8081,8082`)
//! With `FANOUT_SIO=1` it speaks Socket.IO 4 over its WebSocket transport instead
//! (`bench/topics/sio_server.js`): the Engine.IO open packet, `40` to join the namespace, and
//! the chat's text as the `chat` event (`42["chat","…"]`).
//! Prints one JSON object: `{"messages": M, "deliveries": D, "per_s": R, "p50_us": A,
//! "p99_us": B, "missing": X}` (`missing`: deliveries expected and not seen 2 s after the end).
//! Loopback only: it connects to 127.0.0.1.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use websocket_core::frame::{apply_mask, encode_header, parse_header, OpCode, MAX_HEADER_LEN};

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// Messages in flight at most (published and not yet seen by every subscriber).
const WINDOW: u64 = 4;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: fanout PORTS SUBSCRIBERS SECONDS SIZE";
    let [ports, subs, secs, size] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let parse = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("not a number: {s}\n{usage}"));
    let ports: Vec<u16> = ports.split(',').map(|p| parse(p) as u16).collect();
    let (subs, secs, size) = (parse(subs) as usize, parse(secs), parse(size) as usize);
    if let Err(e) = run(&ports, subs, Duration::from_secs(secs), size.max(24)) {
        eprintln!("fanout: {e}");
        std::process::exit(1);
    }
}

/// A client frame (masked) with `text`.
fn client_frame(text: &[u8]) -> Vec<u8> {
    let mut head = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut head, true, OpCode::Text, text.len());
    head[1] |= 0x80;
    let mut frame = head[..n].to_vec();
    frame.extend_from_slice(&MASK);
    let mut body = text.to_vec();
    apply_mask(&mut body, MASK, 0);
    frame.extend_from_slice(&body);
    frame
}

/// Socket.IO mode (`FANOUT_SIO=1`).
fn sio() -> bool {
    std::env::var_os("FANOUT_SIO").is_some_and(|v| v == "1")
}

/// The chat's `text` as this mode sends it.
fn chat(text: &[u8]) -> Vec<u8> {
    if !sio() {
        return text.to_vec();
    }
    [&b"42[\"chat\",\""[..], text, b"\"]"].concat()
}

/// The chat's text in a received frame's payload (None: a Socket.IO packet of another kind).
fn unchat(payload: &[u8]) -> Option<&[u8]> {
    if !sio() {
        return Some(payload);
    }
    payload.strip_prefix(b"42[\"chat\",\"")?.strip_suffix(b"\"]")
}

/// Reads one unmasked server frame's payload (up to 64 KiB).
fn read_frame(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut head = [0u8; 2];
    reader.read_exact(&mut head)?;
    let len = match head[1] & 0x7f {
        126 => {
            let mut ext = [0u8; 2];
            reader.read_exact(&mut ext)?;
            u16::from_be_bytes(ext) as usize
        }
        127 => return Err(io::Error::other("a frame too long for a handshake")),
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload)?;
    Ok(payload)
}

/// Connects, upgrades and joins `bench`; the stream, non-blocking, ready for the poll.
fn join(port: u16) -> io::Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    write!(
        writer,
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        if sio() { "/socket.io/?EIO=4&transport=websocket" } else { "/" }
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("HTTP/1.1 101") {
        return Err(io::Error::other(format!("handshake refused: {}", line.trim_end())));
    }
    while line != "\r\n" {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    if sio() {
        // The Engine.IO open packet, then the namespace's connect.
        let open = read_frame(&mut reader)?;
        if !open.starts_with(b"0{") {
            return Err(io::Error::other(format!("no open packet: {:?}", String::from_utf8_lossy(&open))));
        }
        writer.write_all(&client_frame(b"40"))?;
        let connected = read_frame(&mut reader)?;
        if !connected.starts_with(b"40") {
            return Err(io::Error::other(format!("no connect: {:?}", String::from_utf8_lossy(&connected))));
        }
    }
    writer.write_all(&client_frame(&chat(b"/join bench")))?;
    let answer = read_frame(&mut reader)?;
    if unchat(&answer) != Some(&b"joined bench"[..]) {
        return Err(io::Error::other(format!("join answered {:?}", String::from_utf8_lossy(&answer))));
    }
    if !reader.buffer().is_empty() {
        return Err(io::Error::other("bytes after the join's answer"));
    }
    let stream = reader.into_inner();
    stream.set_nonblocking(true)?;
    Ok(stream)
}

struct Sub {
    stream: MioStream,
    buf: Vec<u8>,
}

fn run(ports: &[u16], subs: usize, duration: Duration, size: usize) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut conns: Vec<Sub> = Vec::with_capacity(subs + 1);
    // The publisher is conns[0] (on the first port), a member of the room like the others.
    for i in 0..=subs {
        let std = join(ports[i % ports.len()])?;
        let mut stream = MioStream::from_std(std);
        poll.registry().register(&mut stream, Token(i), Interest::READABLE)?;
        conns.push(Sub { stream, buf: Vec::new() });
    }
    let receivers = conns.len() as u64;
    let epoch = Instant::now();
    let mut events = Events::with_capacity(4096);
    let mut chunk = vec![0u8; 256 * 1024];
    let (mut sent, mut seen) = (0u64, 0u64);
    let mut lat_us: Vec<u32> = Vec::new();
    let mut per_msg: HashMap<u64, u64> = HashMap::new();
    let end = epoch + duration;
    let mut drain_until = None;
    loop {
        let now = Instant::now();
        if drain_until.is_none() && now >= end {
            drain_until = Some(now + Duration::from_secs(2));
        }
        if drain_until.is_some_and(|t| now >= t) || (drain_until.is_some() && seen == sent * receivers) {
            break;
        }
        // Publish while fewer than WINDOW messages are incomplete.
        while drain_until.is_none() && seen + WINDOW * receivers > sent * receivers {
            let stamp = epoch.elapsed().as_nanos() as u64;
            let mut text = format!("{sent} {stamp} ").into_bytes();
            text.resize(size, b'x');
            conns[0].stream.write_all(&client_frame(&chat(&text))).or_else(|e| match e.kind() {
                io::ErrorKind::WouldBlock => Ok(()), // counted as missing at the end
                _ => Err(e),
            })?;
            sent += 1;
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))?;
        for event in events.iter() {
            let sub = &mut conns[event.token().0];
            loop {
                match sub.stream.read(&mut chunk) {
                    Ok(0) => return Err(io::Error::other("a subscriber was closed by the server")),
                    Ok(n) => sub.buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            let at = epoch.elapsed().as_nanos() as u64;
            let mut used = 0;
            while let Some(h) = parse_header(&sub.buf[used..]).map_err(|e| io::Error::other(e.to_string()))? {
                let Some(len) = h.frame_len() else { break };
                if sub.buf.len() - used < len {
                    break;
                }
                let payload = &sub.buf[used + len - h.payload_len as usize..used + len];
                let Some(payload) = unchat(payload) else {
                    used += len; // a Socket.IO packet of another kind
                    continue;
                };
                let mut words = payload.split(|&b| b == b' ');
                let id: u64 = std::str::from_utf8(words.next().unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                let stamp: u64 = std::str::from_utf8(words.next().unwrap_or_default())
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(at);
                *per_msg.entry(id).or_default() += 1;
                lat_us.push((at.saturating_sub(stamp) / 1000).min(u32::MAX as u64) as u32);
                seen += 1;
                used += len;
            }
            sub.buf.drain(..used);
        }
    }
    let elapsed = duration.as_secs_f64();
    lat_us.sort_unstable();
    let pct = |p: f64| match lat_us.len() {
        0 => 0,
        n => lat_us[((n as f64 * p) as usize).min(n - 1)],
    };
    let dupes: u64 = per_msg.values().map(|&n| n.saturating_sub(receivers)).sum();
    println!(
        "{{\"messages\": {sent}, \"deliveries\": {seen}, \"per_s\": {:.0}, \"p50_us\": {}, \"p99_us\": {}, \"missing\": {}, \"duplicates\": {dupes}, \"receivers\": {receivers}}}",
        seen as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        (sent * receivers).saturating_sub(seen),
    );
    Ok(())
}
