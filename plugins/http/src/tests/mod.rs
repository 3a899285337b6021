//! End-to-end tests of the `Protocol` implementation without a host process: the SDK's
//! `TestHost` records what the plugin sends, and [`Client`] drives the plugin the way the worker does
//! (framing with `input`, delivering with `on_message`, `on_error` for oversized messages).

mod access_log;
mod h2_mode;
mod protocol;
mod static_files;

use plugin_api::testing::TestHost;

use super::*;

/// One connection to a plugin instance, driven like the worker drives it.
struct Client {
    http: Http,
    host: TestHost,
    conn: ConnId,
    buf: Vec<u8>,
    /// The length of a framed message still arriving.
    pending: Option<usize>,
    max_package: usize,
}

fn call<R>(http: &mut Http, fake: &mut TestHost, f: impl FnOnce(&mut Http, &mut Host<'_>) -> R) -> R {
    fake.with(|host| f(http, host))
}

impl Client {
    fn new(config: &str) -> Self {
        Self::with_package(config, 1 << 20)
    }

    /// A connection to a worker whose host's max package size is `max_package`.
    fn with_package(config: &str, max_package: usize) -> Self {
        let mut host = TestHost::new();
        host.max_package_size = max_package;
        let worker = host.worker_info();
        let mut c = Client {
            http: Http::new(config, &worker).unwrap(),
            host: TestHost::new(),
            conn: ConnId::new(0, 1),
            buf: Vec::new(),
            pending: None,
            max_package,
        };
        c.host.service = "web".into();
        let conn = c.conn;
        call(&mut c.http, &mut c.host, |h, host| h.on_connect(host, conn));
        c
    }

    /// A connection from 192.0.2.7 to a worker whose service keeps an access log.
    fn logging(config: &str) -> Self {
        let mut c = Self::new(config);
        c.host.access_log = Some(Vec::new());
        c.host.peers.insert(c.conn, "192.0.2.7:40000".parse().unwrap());
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
        while !self.closed() && !self.buf.is_empty() {
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
                    self.host.closed.insert(conn);
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
        String::from_utf8(self.host.take_sent(self.conn)).unwrap()
    }

    fn take_bytes(&mut self) -> Vec<u8> {
        self.host.take_sent(self.conn)
    }

    /// Whether the plugin closed the connection.
    fn closed(&self) -> bool {
        self.host.is_closed(self.conn)
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
