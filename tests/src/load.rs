//! Keep-alive HTTP clients that send `GET /` in a loop while a test reloads the host, and count
//! every request that went wrong.
//!
//! A request fails when its response never comes (within [`RESPONSE_TIMEOUT`]), when the
//! connection is reset or closed before the whole response arrived, or when it is not
//! `200 Hello, World!`. Not failures: a response with `Connection: close` (the client opens a
//! new connection, as the http plugin asks of it while its worker drains) and a connection the
//! server closed after a complete response, before the client sent its next request (the client
//! looks before each request, and reconnects).

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a client waits for a response before it counts the request as lost. Longer than the
/// harness's usual timeout: a lost request shows sooner anyway (a draining worker closes what is
/// left at its 5 s deadline, and the client reads EOF), and on a loaded 2-core machine running
/// other test processes a response can be late by seconds without being lost.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Each client pauses this long between requests: enough traffic for every worker to be busy
/// during a reload, without starving the machine the host and the other tests run on.
pub const PAUSE: Duration = Duration::from_micros(500);

/// What the clients saw.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Requests answered `200 Hello, World!`.
    pub ok: u64,
    /// Requests that failed, with why (the first 20 of them).
    pub failures: Vec<String>,
    pub failed: u64,
    /// Connections opened.
    pub connections: u64,
    /// Responses that carried `Connection: close`.
    pub close_responses: u64,
    /// Connections the server closed between a complete response and the next request.
    pub closed_idle: u64,
    /// The slowest request, and requests answered after more than a second (the first 20).
    pub slowest: Duration,
    pub slow: Vec<String>,
}

/// Clients running until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` threads, each on its own keep-alive connection to `127.0.0.1:port`.
    pub fn http_get(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, tally) = (stop.clone(), ok.clone(), tally.clone());
                std::thread::spawn(move || run_client(port, &stop, &ok, &tally))
            })
            .collect();
        Load { stop, ok, tally, threads }
    }

    /// Requests answered so far (to wait until traffic flows).
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` more requests than now were answered, or `timeout` passes.
    pub fn wait_more(&self, n: u64, timeout: Duration) -> bool {
        let target = self.ok() + n;
        crate::poll_until(timeout, || (self.ok() >= target).then_some(())).is_some()
    }

    /// Stops the clients (each finishes the request it is in) and returns what they saw.
    pub fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
        let mut tally = self.tally.lock().unwrap().clone();
        tally.ok = self.ok();
        tally
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A test that panicked before finish(): let the threads end on their own.
        self.stop.store(true, Ordering::Relaxed);
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";
const BODY: &[u8] = b"Hello, World!";

fn run_client(port: u16, stop: &AtomicBool, ok: &AtomicU64, tally: &Mutex<Tally>) {
    let mut conn: Option<Conn> = None;
    let note = |f: &dyn Fn(&mut Tally)| f(&mut tally.lock().unwrap());
    let fail = |why: String| {
        note(&|t| {
            t.failed += 1;
            if t.failures.len() < 20 {
                t.failures.push(why.clone());
            }
        })
    };
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(PAUSE);
        if conn.as_ref().is_some_and(Conn::closed_by_server) {
            conn = None;
            note(&|t| t.closed_idle += 1);
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(port) {
                Ok(c) => {
                    note(&|t| t.connections += 1);
                    conn.insert(c)
                }
                Err(e) => {
                    fail(format!("could not connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        let sent = Instant::now();
        let result = c.exchange();
        let took = sent.elapsed();
        if took > Duration::from_secs(1) {
            let port = c.stream.local_addr().map_or(0, |a| a.port());
            note(&|t| {
                if t.slow.len() < 20 {
                    t.slow.push(format!("{} request #{} on port {port} took {took:?}", now(), c.requests));
                }
            });
        }
        note(&|t| t.slowest = t.slowest.max(took));
        match result {
            Ok((200, body, close)) if body == BODY => {
                ok.fetch_add(1, Ordering::Relaxed);
                if close {
                    note(&|t| t.close_responses += 1);
                    conn = None;
                }
            }
            Ok((status, body, _)) => {
                fail(format!("got {status} {:?}", String::from_utf8_lossy(&body)));
                conn = None;
            }
            Err(e) => {
                let port = c.stream.local_addr().map_or(0, |a| a.port());
                fail(format!("{} request #{} on port {port} failed: {e}", now(), c.requests));
                conn = None;
            }
        }
    }
}

/// One keep-alive connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Requests sent on it so far.
    requests: u64,
}

impl Conn {
    fn connect(port: u16) -> io::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
        stream.set_write_timeout(Some(RESPONSE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Conn { stream, buf: Vec::new(), requests: 0 })
    }

    /// True when the server closed (or reset) the connection, or sent bytes nobody asked for,
    /// since the last complete response. Looks without waiting.
    fn closed_by_server(&self) -> bool {
        if !self.buf.is_empty() || self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let r = self.stream.peek(&mut [0u8; 1]);
        let _ = self.stream.set_nonblocking(false);
        !matches!(r, Err(ref e) if e.kind() == ErrorKind::WouldBlock)
    }

    /// Sends `GET /` and reads the response: (status, body, whether it said `Connection: close`).
    fn exchange(&mut self) -> io::Result<(u16, Vec<u8>, bool)> {
        self.requests += 1;
        self.stream.write_all(REQUEST)?;
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill()?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(&head))?;
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let len: usize = header("Content-Length").and_then(|v| v.parse().ok()).ok_or_else(|| bad(&head))?;
        while self.buf.len() < len {
            self.fill()?;
        }
        let body: Vec<u8> = self.buf.drain(..len).collect();
        let close = header("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        Ok((status, body, close))
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    let got = String::from_utf8_lossy(&self.buf).into_owned();
                    return Err(io::Error::new(ErrorKind::UnexpectedEof, format!("closed; partial response {got:?}")));
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The wall clock as the host's log shows it (UTC seconds of the day), to line failures up with it.
fn now() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = t.as_secs() % 86400;
    format!("{:02}:{:02}:{:02}.{:06}Z", s / 3600, s / 60 % 60, s % 60, t.subsec_micros())
}

fn bad(head: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, format!("bad response head {head:?}"))
}
