//! End-to-end tests of the `Protocol` implementation without a host process: a fake `RawHost`
//! records what the plugin sends, and [`Client`] drives the plugin the way the worker does
//! (framing with `input`, delivering with `on_message`, `on_error` for oversized messages).

mod access_log;
mod protocol;
mod static_files;

use plugin_api::abi::{RawHost, RawHostRef, RawHost_TO, RawSockAddr};
use plugin_api::abi_stable::sabi_trait::TD_Opaque;
use plugin_api::abi_stable::sabi_types::RMut;
use plugin_api::abi_stable::std_types::{RSlice, RStr};
use plugin_api::{raw_sock_addr, TimerId};

use super::*;

#[derive(Default)]
struct FakeHost {
    sent: Vec<u8>,
    closed: bool,
    draining: bool,
    /// The access log's lines (None: the service has none).
    access_log: Option<Vec<u8>>,
    peer: Option<std::net::SocketAddr>,
}

impl RawHost for FakeHost {
    fn send(&mut self, _conn: ConnId, data: RSlice<'_, u8>) -> bool {
        if !self.closed {
            self.sent.extend_from_slice(&data);
        }
        !self.closed
    }
    fn close(&mut self, _conn: ConnId, last: RSlice<'_, u8>) {
        if !self.closed {
            self.sent.extend_from_slice(&last);
        }
        self.closed = true;
    }
    fn pause_recv(&mut self, _conn: ConnId, _paused: bool) {}
    fn peer_addr(&self, _conn: ConnId) -> RawSockAddr {
        raw_sock_addr(self.peer)
    }
    fn local_addr(&self, _conn: ConnId) -> RawSockAddr {
        raw_sock_addr(None)
    }
    fn pending_send(&self, _conn: ConnId) -> u64 {
        0
    }
    fn add_timer(&mut self, _delay_ms: u64, _interval_ms: u64, _data: u64) -> TimerId {
        TimerId(0)
    }
    fn del_timer(&mut self, _timer: TimerId) -> bool {
        false
    }
    fn slot(&self) -> u32 {
        0
    }
    fn service(&self) -> RStr<'_> {
        RStr::from_str("web")
    }
    fn is_draining(&self) -> bool {
        self.draining
    }
    fn now_ms(&self) -> u64 {
        0
    }
    fn access_log(&mut self, line: RSlice<'_, u8>) -> bool {
        match &mut self.access_log {
            Some(log) => {
                log.extend_from_slice(&line);
                true
            }
            None => false,
        }
    }
}

/// One connection to a plugin instance, driven like the worker drives it.
struct Client {
    http: Http,
    host: FakeHost,
    conn: ConnId,
    buf: Vec<u8>,
    /// The length of a framed message still arriving.
    pending: Option<usize>,
    max_package: usize,
}

fn call<R>(http: &mut Http, fake: &mut FakeHost, f: impl FnOnce(&mut Http, &mut Host<'_>) -> R) -> R {
    let raw: RawHostRef<'_> = RawHost_TO::from_ptr(RMut::new(fake), TD_Opaque);
    f(http, &mut Host::from_raw(raw))
}

impl Client {
    fn new(config: &str) -> Self {
        Self::with_package(config, 1 << 20)
    }

    /// A connection to a worker whose host's max package size is `max_package`.
    fn with_package(config: &str, max_package: usize) -> Self {
        let worker = WorkerInfo {
            service: "web".into(),
            slot: 0,
            pid: 1,
            max_package_size: max_package,
            max_send_buffer: 1 << 20,
            worker_count: Some(1),
        };
        let mut c = Client {
            http: Http::new(config, &worker).unwrap(),
            host: FakeHost::default(),
            conn: ConnId::new(0, 1),
            buf: Vec::new(),
            pending: None,
            max_package,
        };
        let conn = c.conn;
        call(&mut c.http, &mut c.host, |h, host| h.on_connect(host, conn));
        c
    }

    /// A connection from 192.0.2.7 to a worker whose service keeps an access log.
    fn logging(config: &str) -> Self {
        let mut c = Self::new(config);
        c.host.access_log = Some(Vec::new());
        c.host.peer = Some("192.0.2.7:40000".parse().unwrap());
        call(&mut c.http, &mut c.host, |h, host| h.on_worker_start(host)).unwrap();
        c
    }

    /// The access-log lines written since the last call.
    fn log_lines(&mut self) -> Vec<String> {
        let log = std::mem::take(self.host.access_log.as_mut().expect("an access log"));
        String::from_utf8(log).unwrap().lines().map(str::to_string).collect()
    }

    fn close(&mut self) {
        let conn = self.conn;
        call(&mut self.http, &mut self.host, |h, host| h.on_close(host, conn));
    }

    fn feed(&mut self, bytes: &[u8]) -> &mut Self {
        let conn = self.conn;
        self.buf.extend_from_slice(bytes);
        while !self.host.closed && !self.buf.is_empty() {
            let frame = match self.pending {
                Some(n) => Frame::Complete(n),
                None => {
                    let buf = &self.buf;
                    call(&mut self.http, &mut self.host, |h, host| h.input(host, conn, buf))
                }
            };
            match frame {
                Frame::Complete(n) if n > self.max_package => return self.error(ConnError::PackageTooLarge),
                Frame::Complete(n) if n <= self.buf.len() => {
                    self.pending = None;
                    let msg: Vec<u8> = self.buf.drain(..n).collect();
                    call(&mut self.http, &mut self.host, |h, host| h.on_message(host, conn, &msg));
                }
                Frame::Complete(n) => {
                    self.pending = Some(n);
                    break;
                }
                Frame::NeedMore if self.buf.len() > self.max_package => return self.error(ConnError::PackageTooLarge),
                Frame::NeedMore => break,
                Frame::Invalid => {
                    self.host.closed = true;
                    break;
                }
            }
        }
        self
    }

    fn error(&mut self, err: ConnError) -> &mut Self {
        let conn = self.conn;
        call(&mut self.http, &mut self.host, |h, host| h.on_error(host, conn, err));
        self
    }

    fn drain(&mut self) -> &mut Self {
        let conn = self.conn;
        call(&mut self.http, &mut self.host, |h, host| h.on_drain(host, conn));
        self.host.draining = true;
        self
    }

    /// Everything sent since the last call.
    fn take(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.host.sent)).unwrap()
    }

    fn take_bytes(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.host.sent)
    }
}

fn header<'a>(resp: &'a str, name: &str) -> Option<&'a str> {
    let head = &resp[..resp.find("\r\n\r\n").unwrap_or(resp.len())];
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

fn body(resp: &str) -> &str {
    &resp[resp.find("\r\n\r\n").unwrap() + 4..]
}

pub(crate) const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
