//! An HTTP/1.1 reverse proxy for host, on outbound connections (`Host::connect`): requests go
//! round-robin to a list of upstreams over a pool of keep-alive connections per worker, with
//! `X-Forwarded-For` appended.
//!
//! Run: host --plugin proxy --listen 127.0.0.1:8080 --plugin-config 'upstreams = ["127.0.0.1:9001"]'
//!
//! - **Order.** A client's requests are forwarded one at a time: while one is in flight the
//!   proxy stops reading that client (`pause_recv`), so pipelined requests wait in the socket
//!   and their responses leave in order.
//! - **Backpressure.** A response streams through piece by piece; when the client's send buffer
//!   fills, its upstream connection is paused until it drains. A request is one message (the
//!   host's max package size bounds it) and its client stays paused until the answer is done.
//!   Memory per client stays within one request and about one send buffer.
//! - **Errors.** An upstream that refuses the connection is skipped for the next one; when every
//!   upstream refused, `502`. A connect or response timeout is `504`. An upstream that closes
//!   before its response is complete is `502`, or, once the response has begun, the client is
//!   closed. A request on a pooled connection the upstream had just closed is sent once more on
//!   a fresh one. Malformed requests get `400` (or `413`, `414`, `431`, `501`, `505`, as
//!   `http_proto` answers them) and a close; a malformed response is `502`.
//! - **Framing.** Requests and responses are framed by `http_proto` (`request_len`,
//!   `parse_response_head`, `BodyScan`), the parser the `http` plugin serves with: one set of
//!   `Content-Length`/`Transfer-Encoding` rules on both sides, so the proxy and an upstream built
//!   on it cannot disagree about where a message ends (ambiguous framing is refused, never
//!   guessed).
//! - **Drain.** Idle client and pooled connections close at once, busy ones after their
//!   response (`Connection: close`).
//! - **Hand-over.** On a reload a client between requests moves to the new worker, and the idle
//!   keep-alive pool moves with it (the upstream sees the same connections); a client waiting on
//!   an answer stays and is answered by the old worker (`handover`).
//! - **Half-close.** A client that shuts down its sending side after a request (`nc -q1`) gets
//!   the whole answer, then the close (`on_input_end` keeps it open while a request is in
//!   flight).
//!
//! Not done: `Upgrade` (WebSocket) is not forwarded, requests of one client never go to two
//! upstreams at once, and the response head is not reparsed for HTTP/1.0 clients (a chunked
//! response reaches them chunked).
//!
//! Config (TOML; `upstreams` is required, unknown keys are an error):
//! ```toml
//! upstreams = ["127.0.0.1:9001", "[::1]:9002", "backend:80"]
//! connect_timeout_ms = 10000   # per connect (504 when every try timed out)
//! response_timeout_ms = 30000  # from the request sent to the response head (504)
//! max_idle = 64                # idle keep-alive connections per upstream and worker
//! max_header = 65536           # a request or response head, bytes (431 / 502 above it)
//! ```

pub mod forward;
pub mod handover;

use std::io::Write as _;
use std::time::Duration;

use http_proto::{parse_head, parse_response_head, request_len, BodyScan, Limits, Method, Request, Status};
use plugin_api::{
    export_plugin, ConnError, ConnId, ConnMap, Frame, Host, InputEnd, Protocol, StateWriter, TimerId, WorkerInfo,
};
use serde::Deserialize;

/// The service's config for this plugin.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub upstreams: Vec<String>,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    #[serde(default = "default_max_idle")]
    pub max_idle: usize,
    #[serde(default = "default_max_header")]
    pub max_header: usize,
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_response_timeout_ms() -> u64 {
    30_000
}
fn default_max_idle() -> usize {
    64
}
fn default_max_header() -> usize {
    64 * 1024
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| format!("invalid proxy config: {e}"))?;
        if config.upstreams.is_empty() {
            return Err("invalid proxy config: upstreams must name at least one address".into());
        }
        if config.max_header == 0 || config.response_timeout_ms == 0 {
            return Err("invalid proxy config: max_header and response_timeout_ms must be positive".into());
        }
        Ok(config)
    }

    /// What `http_proto` checks heads against: `max_header` for the head (and the target in
    /// it); a request's body is bounded by the host's max package size (it is one message).
    fn limits(&self) -> Limits {
        Limits {
            max_header: self.max_header,
            max_body: u64::MAX,
            max_target: self.max_header,
            max_headers: Limits::default().max_headers,
        }
    }
}

/// A client's request being answered.
#[derive(Debug)]
struct InFlight {
    /// The request as the upstream gets it.
    request: Vec<u8>,
    head_method: bool,
    upstream: Option<ConnId>,
    /// Where the round-robin started for this request, and how many upstreams refused since.
    first: usize,
    refused: usize,
    /// Sent once more after a pooled connection turned out closed.
    retried: bool,
    /// The response head went to the client.
    responded: bool,
    timer: Option<TimerId>,
}

#[derive(Debug, Default)]
struct Client {
    in_flight: Option<InFlight>,
    /// Close after the response in flight (the client asked, or the worker drains).
    close_after: bool,
}

/// Where an upstream connection is in the response it is reading.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reading {
    /// Nothing asked: any byte is an error.
    Idle,
    Head,
    Body(BodyScan),
}

#[derive(Debug)]
struct Upstream {
    /// Index into the config's upstreams.
    index: usize,
    client: Option<ConnId>,
    connected: bool,
    /// Taken from the pool (it may have been closed by the upstream meanwhile).
    reused: bool,
    reading: Reading,
    keep_alive: bool,
    /// Paused because its client's send buffer is full.
    paused: bool,
    /// Why it failed, as reported before its close.
    error: Option<ConnError>,
}

/// The plugin instance of one worker.
pub struct Proxy {
    config: Config,
    limits: Limits,
    max_send_buffer: usize,
    clients: ConnMap<Client>,
    upstreams: ConnMap<Upstream>,
    /// Idle keep-alive connections, per upstream.
    idle: Vec<Vec<ConnId>>,
    next: usize,
    out: Vec<u8>,
}

impl Protocol for Proxy {
    const HANDOVER_VERSION: u32 = 1;

    fn new(config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        let config = Config::parse(config)?;
        let n = config.upstreams.len();
        Ok(Proxy {
            limits: config.limits(),
            config,
            max_send_buffer: worker.max_send_buffer,
            clients: ConnMap::new(),
            upstreams: ConnMap::new(),
            idle: vec![Vec::new(); n],
            // Workers start at different upstreams.
            next: worker.slot as usize % n,
            out: Vec::new(),
        })
    }

    fn on_connect(&mut self, host: &mut Host<'_>, conn: ConnId) {
        let Some(up) = self.upstreams.get_mut(conn) else {
            self.clients.insert(conn, Client::default());
            return;
        };
        up.connected = true;
        match up.client {
            Some(client) => self.send_request(host, client, conn),
            None => self.release(host, conn),
        }
    }

    fn input(&mut self, host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame {
        let Some(up) = self.upstreams.get(conn) else {
            return match request_len(buf, &self.limits) {
                Ok(Some(len)) => Frame::Complete(len),
                Ok(None) => Frame::NeedMore,
                Err(status) => {
                    self.out.clear();
                    forward::write_error(&mut self.out, status, true);
                    host.close_with(conn, &self.out);
                    Frame::Invalid
                }
            };
        };
        let head_method =
            up.client.and_then(|c| self.clients.get(c)?.in_flight.as_ref()).is_some_and(|f| f.head_method);
        let len = match &up.reading {
            Reading::Idle => return Frame::Invalid,
            Reading::Head => match parse_response_head(buf, head_method, &self.limits) {
                Ok(Some(resp)) => resp.len,
                Ok(None) => return Frame::NeedMore,
                Err(_) => return Frame::Invalid,
            },
            // Scanned again by `on_response` as the piece is delivered.
            Reading::Body(scan) => match scan.clone().feed(buf) {
                Ok((n, _)) if n > 0 => n,
                _ => return Frame::Invalid,
            },
        };
        Frame::Complete(len)
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        if self.upstreams.get(conn).is_some() {
            self.on_response(host, conn, msg);
        } else {
            self.on_request(host, conn, msg);
        }
    }

    fn on_error(&mut self, host: &mut Host<'_>, conn: ConnId, err: ConnError) {
        if let Some(up) = self.upstreams.get_mut(conn) {
            up.error = Some(err);
        }
        host.close(conn);
    }

    fn on_close(&mut self, host: &mut Host<'_>, conn: ConnId) {
        if let Some(client) = self.clients.remove(conn) {
            // Its upstream connection is in the middle of something for nobody: not reusable.
            if let Some(up) = client.in_flight.and_then(|f| f.upstream) {
                if let Some(u) = self.upstreams.get_mut(up) {
                    u.client = None;
                    if u.connected {
                        host.close(up);
                    }
                }
            }
            return;
        }
        let Some(up) = self.upstreams.remove(conn) else { return };
        self.idle[up.index].retain(|&c| c != conn);
        let Some(client) = up.client else { return };
        let Some(flight) = self.clients.get_mut(client).and_then(|c| c.in_flight.as_mut()) else { return };
        flight.upstream = None;
        match (up.reading, up.error) {
            // The body ran to the close: the response is complete, and so is the client.
            (Reading::Body(BodyScan::UntilClose), _) => {
                if let Some(c) = self.clients.get_mut(client) {
                    c.close_after = true;
                }
                self.finish(host, client);
            }
            _ if flight.responded => {
                // Half a response went out: the client cannot be told otherwise.
                host.close(client);
            }
            (_, Some(ConnError::ConnectRefused)) | (_, Some(ConnError::Io)) if !up.connected => {
                flight.refused += 1;
                if flight.refused >= self.config.upstreams.len() {
                    self.answer_error(host, client, Status::BAD_GATEWAY);
                } else {
                    self.dispatch(host, client);
                }
            }
            (_, Some(ConnError::ConnectTimeout)) => self.answer_error(host, client, Status::GATEWAY_TIMEOUT),
            // A pooled connection the upstream closed before it read the request: once more.
            (Reading::Head, None) if up.reused && !flight.retried => {
                flight.retried = true;
                self.dispatch(host, client);
            }
            _ => self.answer_error(host, client, Status::BAD_GATEWAY),
        }
    }

    fn on_buffer_full(&mut self, host: &mut Host<'_>, conn: ConnId) {
        let up = self.clients.get(conn).and_then(|c| c.in_flight.as_ref()?.upstream);
        if let Some(up) = up {
            self.pause_upstream(host, up);
        }
    }

    fn on_buffer_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        let up = self.clients.get(conn).and_then(|c| c.in_flight.as_ref()?.upstream);
        if let Some(u) = up.and_then(|up| self.upstreams.get_mut(up)) {
            if std::mem::take(&mut u.paused) {
                host.resume_recv(up.expect("found above"));
            }
        }
    }

    fn on_timer(&mut self, host: &mut Host<'_>, timer: TimerId, data: u64) {
        let client = ConnId(data);
        let Some(flight) = self.clients.get_mut(client).and_then(|c| c.in_flight.as_mut()) else { return };
        if flight.timer != Some(timer) {
            return;
        }
        flight.timer = None;
        if let Some(up) = flight.upstream.take() {
            if let Some(u) = self.upstreams.get_mut(up) {
                u.client = None;
            }
            host.close(up);
        }
        self.answer_error(host, client, Status::GATEWAY_TIMEOUT);
    }

    fn on_input_end(&mut self, _host: &mut Host<'_>, conn: ConnId) -> InputEnd {
        // A client that half-closed with its request in flight gets the answer, then the close.
        // (Reading is paused while a request is in flight, so the host sees the end of input
        // after the answer as a rule; this holds should it see it earlier.)
        match self.clients.get_mut(conn) {
            Some(c) if c.in_flight.is_some() => {
                c.close_after = true;
                InputEnd::KeepOpen
            }
            _ => InputEnd::Close,
        }
    }

    // Hand-over (see `handover`): a client between requests moves; one with a request in
    // flight stays and finishes here. The idle pool moves with the worker state.
    fn export_conn(&mut self, _host: &mut Host<'_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
        match self.clients.get(conn) {
            Some(c) if c.in_flight.is_none() && !c.close_after => out.write_all(&[0]).is_ok(),
            _ => false,
        }
    }

    fn adopt_conn(&mut self, _host: &mut Host<'_>, conn: ConnId, version: u32, state: &[u8]) -> bool {
        match (version, state) {
            (1, [0]) => {
                self.clients.insert(conn, Client::default());
                true
            }
            _ => false,
        }
    }

    fn export_worker(&mut self, host: &mut Host<'_>, out: &mut StateWriter<'_>) -> bool {
        let mut pool = Vec::new();
        for (index, idle) in self.idle.iter().enumerate() {
            for &up in idle {
                // One that cannot move (an older host) stays in this pool and drains.
                if host.handover_carry(up) {
                    let upstream = self.config.upstreams[index].clone();
                    pool.push(handover::PooledConn { old_id: up.0, upstream });
                }
            }
        }
        let mut state = Vec::new();
        handover::encode_pool(&pool, &mut state);
        out.write_all(&state).is_ok()
    }

    fn adopt_worker(&mut self, host: &mut Host<'_>, version: u32, state: &[u8]) -> bool {
        let pool = match (version, handover::decode_pool(state)) {
            (1, Ok(pool)) => pool,
            (_, Err(e)) => {
                plugin_api::tracing::warn!("the previous worker's upstream pool is unreadable: {e}");
                return false;
            }
            _ => return false,
        };
        for pooled in pool {
            let Some(up) = host.handover_carried(ConnId(pooled.old_id)) else { continue };
            let index = self.config.upstreams.iter().position(|u| *u == pooled.upstream);
            match index {
                Some(index) if self.idle[index].len() < self.config.max_idle => {
                    let u = Upstream {
                        index,
                        client: None,
                        connected: true,
                        reused: false,
                        reading: Reading::Idle,
                        keep_alive: true,
                        paused: false,
                        error: None,
                    };
                    self.upstreams.insert(up, u);
                    self.idle[index].push(up);
                }
                // No longer an upstream of this config, or its pool is full.
                _ => host.close(up),
            }
        }
        true
    }

    fn on_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        if let Some(up) = self.upstreams.get(conn) {
            if up.client.is_none() {
                self.idle[up.index].retain(|&c| c != conn);
                host.close(conn);
            }
            return;
        }
        match self.clients.get_mut(conn) {
            Some(c) if c.in_flight.is_some() => c.close_after = true,
            _ => host.close(conn),
        }
    }
}

impl Proxy {
    fn on_request(&mut self, host: &mut Host<'_>, client: ConnId, raw: &[u8]) {
        // Framed by `request_len` already: the head is whole and valid.
        let Ok(Some(head)) = parse_head(raw, &self.limits) else {
            host.close(client);
            return;
        };
        let first = self.next;
        self.next = (self.next + 1) % self.config.upstreams.len();
        let mut request = Vec::with_capacity(raw.len() + 64);
        let ip = host.peer_addr(client).map(|a| a.ip());
        let (head_bytes, body) = raw.split_at(head.len);
        let req = Request::new(&head, head_bytes, &[]);
        forward::write_request(&req, body, ip, &self.config.upstreams[first], &mut request);
        let draining = host.is_draining();
        let c = self.clients.entry(client);
        c.close_after |= !head.keep_alive || draining;
        c.in_flight = Some(InFlight {
            request,
            head_method: head.method == Method::Head,
            upstream: None,
            first,
            refused: 0,
            retried: false,
            responded: false,
            timer: None,
        });
        // Its next request waits in the socket until this one is answered.
        host.pause_recv(client);
        self.dispatch(host, client);
    }

    /// Sends the client's request to the next upstream: a pooled connection, or a new one.
    fn dispatch(&mut self, host: &mut Host<'_>, client: ConnId) {
        let n = self.config.upstreams.len();
        loop {
            let Some(flight) = self.clients.get_mut(client).and_then(|c| c.in_flight.as_mut()) else { return };
            if flight.refused >= n {
                return self.answer_error(host, client, Status::BAD_GATEWAY);
            }
            let index = (flight.first + flight.refused) % n;
            if let Some(up) = self.idle[index].pop() {
                // One that moved to the replacement in a hand-over is gone from here without a
                // close: forget it.
                if !host.is_outbound(up) {
                    self.upstreams.remove(up);
                    continue;
                }
                let u = self.upstreams.get_mut(up).expect("pooled connections are known");
                u.client = Some(client);
                u.reused = true;
                flight.upstream = Some(up);
                return self.send_request(host, client, up);
            }
            let timeout = Duration::from_millis(self.config.connect_timeout_ms);
            match host.connect_timeout(self.config.upstreams[index].as_str(), timeout) {
                Ok(up) => {
                    flight.upstream = Some(up);
                    let u = Upstream {
                        index,
                        client: Some(client),
                        connected: false,
                        reused: false,
                        reading: Reading::Idle,
                        keep_alive: false,
                        paused: false,
                        error: None,
                    };
                    self.upstreams.insert(up, u);
                    return;
                }
                Err(e) => {
                    plugin_api::tracing::warn!(upstream = %self.config.upstreams[index], "could not connect: {e}");
                    flight.refused += 1;
                }
            }
        }
    }

    fn send_request(&mut self, host: &mut Host<'_>, client: ConnId, up: ConnId) {
        let timeout = Duration::from_millis(self.config.response_timeout_ms);
        let Some(flight) = self.clients.get_mut(client).and_then(|c| c.in_flight.as_mut()) else { return };
        if let Some(u) = self.upstreams.get_mut(up) {
            u.reading = Reading::Head;
            u.paused = false;
        }
        host.resume_recv(up);
        if !host.send(up, &flight.request) {
            host.close(up);
            return;
        }
        if let Some(old) = flight.timer.replace(host.add_timer(timeout, client.0)) {
            host.del_timer(old);
        }
    }

    fn on_response(&mut self, host: &mut Host<'_>, up: ConnId, msg: &[u8]) {
        let Some(u) = self.upstreams.get_mut(up) else { return };
        let client = u.client;
        let close_after = client.and_then(|c| self.clients.get(c)).is_some_and(|c| c.close_after);
        let flight = client.and_then(|c| self.clients.get_mut(c)).and_then(|c| c.in_flight.as_mut());
        let done = match &mut u.reading {
            Reading::Idle => false,
            Reading::Head => {
                let head_method = flight.as_ref().is_some_and(|f| f.head_method);
                let Ok(Some(resp)) = parse_response_head(msg, head_method, &self.limits) else {
                    host.close(up);
                    return;
                };
                if resp.is_interim() {
                    if resp.status == 101 {
                        // An upgrade was never asked for (Upgrade is not forwarded).
                        host.close(up);
                        return;
                    }
                    // 100 Continue and the like: passed on; the final response follows.
                    if let Some(c) = client {
                        host.send(c, msg);
                    }
                    return;
                }
                u.keep_alive = resp.keep_alive;
                let scan = BodyScan::new(resp.body);
                let idle = scan.is_done();
                u.reading = if idle { Reading::Idle } else { Reading::Body(scan) };
                if let (Some(flight), Some(c)) = (flight, client) {
                    if let Some(t) = flight.timer.take() {
                        host.del_timer(t);
                    }
                    flight.responded = true;
                    let close = resp.body == http_proto::ResponseBody::UntilClose || close_after;
                    self.out.clear();
                    forward::write_response_head(msg, &resp, close, &mut self.out);
                    host.send(c, &self.out);
                }
                idle
            }
            Reading::Body(scan) => {
                // `input` delimited `msg` with a copy of this scan: it is all body.
                let done = matches!(scan.feed(msg), Ok((_, true)));
                if done {
                    u.reading = Reading::Idle;
                }
                self.forward(host, client, up, msg);
                done
            }
        };
        if done {
            let u = self.upstreams.get_mut(up).expect("still open");
            u.client = None;
            self.release(host, up);
            if let Some(c) = client {
                self.finish(host, c);
            }
        }
    }

    /// Passes a piece of a response body to the client; pauses the upstream while the client's
    /// send buffer is full.
    fn forward(&mut self, host: &mut Host<'_>, client: Option<ConnId>, up: ConnId, piece: &[u8]) {
        let Some(client) = client else { return };
        if !host.send(client, piece) {
            host.close(client);
            return;
        }
        if host.pending_send(client) >= self.max_send_buffer {
            self.pause_upstream(host, up);
        }
    }

    fn pause_upstream(&mut self, host: &mut Host<'_>, up: ConnId) {
        if let Some(u) = self.upstreams.get_mut(up) {
            if !u.paused {
                u.paused = true;
                host.pause_recv(up);
            }
        }
    }

    /// An upstream connection finished its response: back to the pool, or closed.
    fn release(&mut self, host: &mut Host<'_>, up: ConnId) {
        let Some(u) = self.upstreams.get_mut(up) else { return };
        u.reading = Reading::Idle;
        if u.paused {
            u.paused = false;
            host.resume_recv(up);
        }
        let pool = &mut self.idle[u.index];
        if u.keep_alive && u.connected && !host.is_draining() && pool.len() < self.config.max_idle {
            u.reused = false;
            pool.push(up);
        } else {
            host.close(up);
        }
    }

    /// The client's request is answered: read its next one, or close it.
    fn finish(&mut self, host: &mut Host<'_>, client: ConnId) {
        let Some(c) = self.clients.get_mut(client) else { return };
        if let Some(t) = c.in_flight.take().and_then(|f| f.timer) {
            host.del_timer(t);
        }
        if c.close_after {
            host.close(client);
        } else {
            host.resume_recv(client);
        }
    }

    fn answer_error(&mut self, host: &mut Host<'_>, client: ConnId, status: Status) {
        let close = self.clients.get(client).is_none_or(|c| c.close_after);
        self.out.clear();
        forward::write_error(&mut self.out, status, close);
        host.send(client, &self.out);
        self.finish(host, client);
    }
}

export_plugin!(Proxy);

#[cfg(test)]
mod half_close_tests;
#[cfg(test)]
mod handover_tests;
