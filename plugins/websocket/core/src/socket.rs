//! The message-level layer: [`WebSocket`] implements [`Protocol`] (handshake, framing, masking,
//! fragmentation, UTF-8, ping/pong, the close handshake, limits, server pings, drain) and hands
//! whole messages to a [`Handler`], which answers through [`Ws`].

use std::time::Duration;

use plugin_api::{ConnError, ConnId, ConnMap, Frame, Host, Protocol, TimerId, WorkerInfo};
use serde::Deserialize;

use crate::frame::{
    apply_mask, close_code, parse_close, parse_header, write_close, write_frame, OpCode, ProtocolError,
    MAX_CONTROL_PAYLOAD,
};
use crate::handshake::{handshake, head_len, Policy, Rejection};
use crate::utf8::Utf8Validator;

/// A message buffer keeps at most this much capacity between messages.
const KEEP_CAPACITY: usize = 64 * 1024;

/// The WebSocket keys of the service's config. Unknown keys are left to the application.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Allowed `Origin` values; empty: any.
    pub origins: Vec<String>,
    /// Subprotocols the server speaks: the first one the client offers that is listed here is
    /// selected (the client's order of preference wins).
    pub protocols: Vec<String>,
    /// Seconds between server pings (0: none); a peer silent for one more interval is closed.
    pub ping_interval: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config { origins: Vec::new(), protocols: Vec::new(), ping_interval: 30.0 }
    }
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| format!("invalid websocket config: {e}"))?;
        if !(config.ping_interval.is_finite() && config.ping_interval >= 0.0) {
            return Err("invalid websocket config: ping_interval must be a number of seconds >= 0".into());
        }
        Ok(config)
    }
}

/// One complete message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

/// An application on top of WebSocket: the protocol is done by [`WebSocket`], which calls these.
pub trait Handler: Sized + 'static {
    /// Builds the handler from the service's config (the same TOML text [`Config`] reads).
    fn new(config: &str, worker: &WorkerInfo) -> Result<Self, String>;
    /// The handshake succeeded.
    fn on_open(&mut self, _ws: &mut Ws<'_, '_>, _conn: ConnId) {}
    /// A complete text or binary message (fragments joined, text valid UTF-8).
    fn on_message(&mut self, ws: &mut Ws<'_, '_>, conn: ConnId, msg: Message<'_>);
    /// An opened connection is gone (closed by either side or failed); `ws` can no longer reach it.
    fn on_close(&mut self, _ws: &mut Ws<'_, '_>, _conn: ConnId) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Waiting for the request head.
    #[default]
    Handshake,
    Open,
    /// We sent a close frame and wait for the peer's.
    CloseSent,
    /// The host was told to close; nothing more is read or sent.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Binary,
}

/// Per-connection state.
#[derive(Debug, Default)]
pub struct Conn {
    state: State,
    protocol: Option<String>,
    /// The unmasked payload of the message in progress.
    message: Vec<u8>,
    /// The kind of the message in progress (set by its first frame).
    kind: Option<Kind>,
    utf8: Utf8Validator,
    /// Payload bytes of the current, still incomplete text frame already unmasked into `message`
    /// and validated (a text frame is checked as it arrives, so bad UTF-8 fails at once).
    streamed: usize,
    /// A frame arrived since the last ping tick.
    seen: bool,
    /// The last tick sent a ping.
    pinged: bool,
    timer: Option<TimerId>,
    /// The handshake succeeded (the handler heard `on_open`).
    opened: bool,
}

/// The protocol side of a WebSocket service: a [`Protocol`] that drives a [`Handler`].
/// `export_plugin!(WebSocket<MyHandler>)` makes a plugin of it.
pub struct WebSocket<H> {
    handler: H,
    config: Config,
    /// The largest frame (header included) and the largest message payload.
    max_size: usize,
    conns: ConnMap<Conn>,
    /// Scratch space for encoding one outgoing frame.
    out: Vec<u8>,
}

/// What a [`Handler`] can do during a callback: send to any open connection, close one, and
/// reach the host.
pub struct Ws<'a, 'h> {
    host: &'a mut Host<'h>,
    conns: &'a mut ConnMap<Conn>,
    out: &'a mut Vec<u8>,
}

impl<'h> Ws<'_, 'h> {
    pub fn host(&mut self) -> &mut Host<'h> {
        self.host
    }

    /// True while messages can be sent to `conn` (open, no close frame sent).
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| c.state == State::Open)
    }

    /// The subprotocol selected in the handshake.
    pub fn protocol(&self, conn: ConnId) -> Option<&str> {
        self.conns.get(conn)?.protocol.as_deref()
    }

    pub fn send_text(&mut self, conn: ConnId, text: &str) -> bool {
        self.send(conn, OpCode::Text, text.as_bytes())
    }

    pub fn send_binary(&mut self, conn: ConnId, data: &[u8]) -> bool {
        self.send(conn, OpCode::Binary, data)
    }

    /// Sends one text message to every open connection of `conns`, encoded once; returns how many
    /// took it.
    pub fn broadcast_text(&mut self, conns: &[ConnId], text: &str) -> usize {
        self.out.clear();
        write_frame(self.out, true, OpCode::Text, text.as_bytes());
        let mut sent = 0;
        for &conn in conns {
            if self.conns.get(conn).is_some_and(|c| c.state == State::Open) && self.host.send(conn, self.out) {
                sent += 1;
            }
        }
        sent
    }

    /// Starts the close handshake with `code` (see [`close_code`]) and `reason`; the connection
    /// closes once the peer answers (or at the host's timeouts).
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        if c.state == State::Open {
            self.out.clear();
            write_close(self.out, code, reason);
            self.host.send(conn, self.out);
            c.state = State::CloseSent;
        }
    }

    /// Sends a ping (payload cut to 125 bytes).
    pub fn ping(&mut self, conn: ConnId, data: &[u8]) -> bool {
        self.send(conn, OpCode::Ping, &data[..data.len().min(MAX_CONTROL_PAYLOAD)])
    }

    fn send(&mut self, conn: ConnId, opcode: OpCode, payload: &[u8]) -> bool {
        if !self.is_open(conn) {
            return false;
        }
        self.out.clear();
        write_frame(self.out, true, opcode, payload);
        self.host.send(conn, self.out)
    }
}

impl<H: Handler> WebSocket<H> {
    pub fn handler(&self) -> &H {
        &self.handler
    }

    fn ws<'a, 'h>(conns: &'a mut ConnMap<Conn>, out: &'a mut Vec<u8>, host: &'a mut Host<'h>) -> Ws<'a, 'h> {
        Ws { host, conns, out }
    }

    /// Fails the connection: a close frame with the error's code (when none was sent), then close.
    fn fail(&mut self, host: &mut Host<'_>, conn: ConnId, err: ProtocolError) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        if c.state == State::Open {
            self.out.clear();
            write_close(&mut self.out, err.close_code(), &err.to_string());
            host.send(conn, &self.out);
        }
        c.state = State::Closed;
        host.close(conn);
    }

    fn open(&mut self, host: &mut Host<'_>, conn: ConnId, head: &[u8]) {
        let policy = Policy { origins: &self.config.origins, protocols: &self.config.protocols };
        let accepted = match handshake(head, &policy) {
            Ok(a) => a,
            Err(rejection) => return self.reject(host, conn, rejection),
        };
        host.send(conn, &accepted.response());
        let timer = (self.config.ping_interval > 0.0)
            .then(|| host.add_interval(Duration::from_secs_f64(self.config.ping_interval), conn.0));
        let c = self.conns.entry(conn);
        c.state = State::Open;
        c.protocol = accepted.protocol;
        c.timer = timer;
        c.opened = true;
        let mut ws = Self::ws(&mut self.conns, &mut self.out, host);
        self.handler.on_open(&mut ws, conn);
    }

    fn reject(&mut self, host: &mut Host<'_>, conn: ConnId, rejection: Rejection) {
        self.conns.entry(conn).state = State::Closed;
        host.close_with(conn, &rejection.response());
    }

    /// Framing of one frame (see [`Protocol::input`]).
    fn input_frame(&mut self, conn: ConnId, buf: &[u8]) -> Result<Frame, ProtocolError> {
        let Some(h) = parse_header(buf)? else { return Ok(Frame::NeedMore) };
        let key = h.mask.ok_or(ProtocolError::Unmasked)?;
        let max = self.max_size;
        let c = self.conns.entry(conn);
        let continues_text = match (h.opcode, c.kind) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            (OpCode::Continuation, Some(kind)) => kind == Kind::Text,
            _ => false,
        };
        let total = h.frame_len().filter(|&n| n <= max).ok_or(ProtocolError::TooBig)?;
        if !h.opcode.is_control() {
            let before = c.message.len() - c.streamed;
            if before as u64 + h.payload_len > max as u64 {
                return Err(ProtocolError::TooBig);
            }
        }
        if total <= buf.len() {
            return Ok(Frame::Complete(total));
        }
        if c.state == State::Open && (h.opcode == OpCode::Text || continues_text) {
            // Validate what arrived of a text frame now: invalid UTF-8 fails before the rest comes.
            let avail = buf.len() - h.header_len;
            if avail > c.streamed {
                let start = c.message.len();
                c.message.extend_from_slice(&buf[h.header_len + c.streamed..]);
                apply_mask(&mut c.message[start..], key, c.streamed);
                c.streamed = avail;
                c.utf8.feed(&c.message[start..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            }
            return Ok(Frame::NeedMore);
        }
        Ok(Frame::Complete(total))
    }

    /// One complete frame.
    fn on_frame(&mut self, host: &mut Host<'_>, conn: ConnId, bytes: &[u8]) -> Result<(), ProtocolError> {
        let Ok(Some(h)) = parse_header(bytes) else { return Ok(()) };
        let key = h.mask.ok_or(ProtocolError::Unmasked)?;
        let payload = &bytes[h.header_len..];
        let Some(c) = self.conns.get_mut(conn) else { return Ok(()) };
        c.seen = true;
        if h.opcode.is_control() {
            let mut control = [0u8; MAX_CONTROL_PAYLOAD];
            let p = &mut control[..payload.len()];
            p.copy_from_slice(payload);
            apply_mask(p, key, 0);
            return self.on_control(host, conn, h.opcode, p);
        }
        if c.state != State::Open {
            // After our close frame, data is dropped until the peer's close.
            return Ok(());
        }
        if h.opcode != OpCode::Continuation {
            c.kind = Some(if h.opcode == OpCode::Text { Kind::Text } else { Kind::Binary });
        }
        let text = c.kind == Some(Kind::Text);
        let start = c.message.len();
        c.message.extend_from_slice(&payload[c.streamed..]);
        apply_mask(&mut c.message[start..], key, c.streamed);
        c.streamed = 0;
        if text {
            c.utf8.feed(&c.message[start..]).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        if !h.fin {
            return Ok(());
        }
        if text {
            c.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        c.kind = None;
        let mut data = std::mem::take(&mut c.message);
        let msg = if text {
            Message::Text(std::str::from_utf8(&data).map_err(|_| ProtocolError::InvalidUtf8)?)
        } else {
            Message::Binary(&data)
        };
        let mut ws = Self::ws(&mut self.conns, &mut self.out, host);
        self.handler.on_message(&mut ws, conn, msg);
        if let Some(c) = self.conns.get_mut(conn) {
            data.clear();
            data.shrink_to(KEEP_CAPACITY);
            c.message = data;
        }
        Ok(())
    }

    fn on_control(
        &mut self,
        host: &mut Host<'_>,
        conn: ConnId,
        opcode: OpCode,
        payload: &[u8],
    ) -> Result<(), ProtocolError> {
        let Some(c) = self.conns.get_mut(conn) else { return Ok(()) };
        match opcode {
            OpCode::Ping if c.state == State::Open => {
                self.out.clear();
                write_frame(&mut self.out, true, OpCode::Pong, payload);
                host.send(conn, &self.out);
            }
            OpCode::Close => {
                let code = parse_close(payload)?;
                if c.state == State::Open {
                    // Echo the peer's code (an empty close gets an empty one).
                    self.out.clear();
                    match code {
                        Some((code, _)) => write_close(&mut self.out, code, ""),
                        None => write_frame(&mut self.out, true, OpCode::Close, &[]),
                    }
                    host.send(conn, &self.out);
                }
                c.state = State::Closed;
                host.close(conn);
            }
            _ => {}
        }
        Ok(())
    }
}

impl<H: Handler> Protocol for WebSocket<H> {
    fn new(config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        Ok(WebSocket {
            config: Config::parse(config)?,
            handler: H::new(config, worker)?,
            max_size: worker.max_package_size,
            conns: ConnMap::new(),
            out: Vec::new(),
        })
    }

    fn input(&mut self, host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame {
        match self.conns.entry(conn).state {
            State::Handshake => match head_len(buf) {
                Ok(Some(n)) => Frame::Complete(n),
                Ok(None) => Frame::NeedMore,
                Err(rejection) => {
                    self.reject(host, conn, rejection);
                    Frame::Invalid
                }
            },
            State::Open | State::CloseSent => match self.input_frame(conn, buf) {
                Ok(frame) => frame,
                Err(e) => {
                    self.fail(host, conn, e);
                    Frame::Invalid
                }
            },
            State::Closed => Frame::Invalid,
        }
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        match self.conns.entry(conn).state {
            State::Handshake => self.open(host, conn, msg),
            State::Open | State::CloseSent => {
                if let Err(e) = self.on_frame(host, conn, msg) {
                    self.fail(host, conn, e);
                }
            }
            State::Closed => {}
        }
    }

    fn on_close(&mut self, host: &mut Host<'_>, conn: ConnId) {
        let Some(c) = self.conns.remove(conn) else { return };
        if let Some(t) = c.timer {
            host.del_timer(t);
        }
        if c.opened {
            let mut ws = Self::ws(&mut self.conns, &mut self.out, host);
            self.handler.on_close(&mut ws, conn);
        }
    }

    fn on_error(&mut self, host: &mut Host<'_>, conn: ConnId, err: ConnError) {
        let state = self.conns.get(conn).map(|c| c.state);
        match (state, err) {
            (Some(State::Handshake) | None, ConnError::PackageTooLarge) => {
                self.reject(host, conn, Rejection::BadRequest("request head too large"))
            }
            (Some(State::Open), ConnError::PackageTooLarge) => self.fail(host, conn, ProtocolError::TooBig),
            (Some(State::Open), ConnError::Timeout) => {
                let mut ws = Self::ws(&mut self.conns, &mut self.out, host);
                ws.close(conn, close_code::GOING_AWAY, "idle");
                if let Some(c) = self.conns.get_mut(conn) {
                    c.state = State::Closed;
                }
                host.close(conn);
            }
            _ => host.close(conn),
        }
    }

    fn on_timer(&mut self, host: &mut Host<'_>, _timer: TimerId, data: u64) {
        let conn = ConnId(data);
        let Some(c) = self.conns.get_mut(conn) else { return };
        if c.state != State::Open {
            return;
        }
        if c.pinged && !c.seen {
            // No pong, no frame at all for a whole interval after a ping: a dead peer.
            c.state = State::Closed;
            host.close(conn);
            return;
        }
        c.seen = false;
        c.pinged = true;
        self.out.clear();
        write_frame(&mut self.out, true, OpCode::Ping, b"");
        host.send(conn, &self.out);
    }

    fn on_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        match self.conns.get(conn).map(|c| c.state) {
            Some(State::Open) => {
                let mut ws = Self::ws(&mut self.conns, &mut self.out, host);
                ws.close(conn, close_code::GOING_AWAY, "server going away");
            }
            Some(State::CloseSent) => {}
            _ => host.close(conn),
        }
    }
}
