//! Load client of `bench/run.sh` for the message protocols `wrk` cannot speak: WebSocket
//! (through `websocket-core`'s framing) and Workerman's Frame (through the frame plugin's). Each
//! of CONNS connections sends one message of SIZE bytes, waits for its echo, and repeats until
//! SECONDS have passed: messages/s over kept connections, like `wrk -c64` for requests.
//!
//! Run: msgload ws|frame PORT CONNS SECONDS SIZE
//! Prints one JSON object: `{"requests": N, "rps": R, "p50_us": A, "p99_us": B, "errors": E}`
//! (the fields `bench/bench.py` reads from wrk). Loopback only: it connects to 127.0.0.1.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use websocket_core::frame::{apply_mask, encode_header, parse_header, OpCode, MAX_HEADER_LEN};

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    Ws,
    Frame,
}

/// What one connection did.
#[derive(Default)]
struct Tally {
    messages: u64,
    errors: u64,
    /// Round-trip times in µs.
    rtts: Vec<u32>,
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: msgload ws|frame PORT CONNS SECONDS SIZE";
    let [proto, port, conns, secs, size] = args.as_slice() else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let proto = match proto.as_str() {
        "ws" => Proto::Ws,
        "frame" => Proto::Frame,
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let parse = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("not a number: {s}\n{usage}"));
    let (port, conns, secs, size) = (parse(port) as u16, parse(conns), parse(secs), parse(size) as usize);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let threads: Vec<_> = (0..conns).map(|_| std::thread::spawn(move || run(proto, port, size, deadline))).collect();
    let mut total = Tally::default();
    for t in threads {
        let tally = t.join().unwrap_or_else(|_| Tally { errors: 1, ..Tally::default() });
        total.messages += tally.messages;
        total.errors += tally.errors;
        total.rtts.extend(tally.rtts);
    }
    let elapsed = started.elapsed().as_secs_f64();
    total.rtts.sort_unstable();
    let pct = |p: f64| match total.rtts.len() {
        0 => "null".to_string(),
        n => total.rtts[((n as f64 * p) as usize).min(n - 1)].to_string(),
    };
    println!(
        "{{\"requests\": {}, \"rps\": {:.1}, \"p50_us\": {}, \"p99_us\": {}, \"errors\": {}}}",
        total.messages,
        total.messages as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        total.errors
    );
}

/// One connection's loop; an I/O error ends it and counts once.
fn run(proto: Proto, port: u16, size: usize, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    if let Err(e) = echo_loop(proto, port, size, deadline, &mut tally) {
        eprintln!("msgload: connection failed: {e}");
        tally.errors += 1;
    }
    tally
}

fn echo_loop(proto: Proto, port: u16, size: usize, deadline: Instant, tally: &mut Tally) -> io::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let payload = vec![b'x'; size];
    let request = match proto {
        Proto::Ws => {
            handshake(&mut reader, &mut writer, port)?;
            let mut head = [0u8; MAX_HEADER_LEN];
            let n = encode_header(&mut head, true, OpCode::Text, size);
            head[1] |= 0x80; // a client frame is masked
            let mut frame = head[..n].to_vec();
            frame.extend_from_slice(&MASK);
            let mut body = payload.clone();
            apply_mask(&mut body, MASK, 0);
            frame.extend_from_slice(&body);
            frame
        }
        Proto::Frame => frame::encode(&payload),
    };
    let mut answer = Vec::with_capacity(size + MAX_HEADER_LEN);
    while Instant::now() < deadline {
        let t0 = Instant::now();
        writer.write_all(&request)?;
        let got = match proto {
            Proto::Ws => read_ws_frame(&mut reader, &mut answer)?,
            Proto::Frame => read_frame(&mut reader, &mut answer)?,
        };
        if got != size {
            return Err(io::Error::other(format!("echo of {got} bytes, sent {size}")));
        }
        tally.rtts.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
        tally.messages += 1;
    }
    Ok(())
}

fn handshake(reader: &mut BufReader<TcpStream>, writer: &mut TcpStream, port: u16) -> io::Result<()> {
    write!(
        writer,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
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
    Ok(())
}

/// Reads one server frame; returns its payload length.
fn read_ws_frame(reader: &mut BufReader<TcpStream>, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    buf.resize(2, 0);
    reader.read_exact(buf)?;
    let header = loop {
        match parse_header(buf) {
            Ok(Some(h)) => break h,
            Ok(None) => {
                let at = buf.len();
                buf.push(0);
                reader.read_exact(&mut buf[at..])?;
            }
            Err(e) => return Err(io::Error::other(format!("bad frame from the server: {e:?}"))),
        }
    };
    let len = usize::try_from(header.payload_len).map_err(io::Error::other)?;
    buf.resize(len, 0);
    reader.read_exact(buf)?;
    Ok(len)
}

/// Reads one Frame-protocol frame; returns its payload length.
fn read_frame(reader: &mut BufReader<TcpStream>, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut head = [0u8; frame::HEADER_LEN];
    reader.read_exact(&mut head)?;
    let len = (u32::from_be_bytes(head) as usize)
        .checked_sub(frame::HEADER_LEN)
        .ok_or_else(|| io::Error::other("frame length below its header"))?;
    buf.resize(len, 0);
    reader.read_exact(buf)?;
    Ok(len)
}
