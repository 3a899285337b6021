//! The message-level layer: [`WebSocket`] implements [`Protocol`] (handshake, framing, masking,
//! fragmentation, UTF-8, ping/pong, the close handshake, limits, server pings, drain) and hands
//! whole messages to a [`Handler`], which answers through [`Ws`].

mod handover;

use std::time::Duration;

use plugin_api::{
    ConnError, ConnId, ConnMap, Frame, Host, Protocol, StateWriter, TaskId, TimerId, TopicError, WorkerInfo,
};
use serde::Deserialize;

use crate::deflate::{self, Agreed, Deflater, Inflater, MIN_COMPRESS};
use crate::frame::{
    apply_mask, close_code, parse_close, parse_header_ext, write_close, write_frame, write_frame_rsv1, OpCode,
    ProtocolError, MAX_CONTROL_PAYLOAD,
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
    /// Accept permessage-deflate (RFC 7692) when the client offers it.
    pub permessage_deflate: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { origins: Vec::new(), protocols: Vec::new(), ping_interval: 30.0, permessage_deflate: true }
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

    // The worker-level events, passed through from [`Protocol`] (the same meaning there).

    /// The worker starts serving; an error stops it with that message.
    fn on_worker_start(&mut self, _ws: &mut Ws<'_, '_>) -> Result<(), String> {
        Ok(())
    }
    /// The worker stops (after its connections were drained or closed).
    fn on_worker_stop(&mut self, _ws: &mut Ws<'_, '_>) {}
    /// Bytes another worker of the service sent with `host.broadcast` or `host.send_to_worker`
    /// (reach the host through [`Ws::host`]).
    fn on_worker_message(&mut self, _ws: &mut Ws<'_, '_>, _from_slot: u32, _msg: &[u8]) {}
    /// A task started with `host.spawn_task` finished.
    fn on_task_done(&mut self, _ws: &mut Ws<'_, '_>, _task: TaskId, _result: Result<Vec<u8>, String>) {}
    /// The plugin's own thread woke the worker through a `host.notifier()`.
    fn on_notify(&mut self, _ws: &mut Ws<'_, '_>, _data: &[u8]) {}
    /// A message on a topic the worker subscribed to itself (`host.subscribe_worker`), as
    /// published (a whole frame when it came from [`Ws::publish_text`]).
    fn on_publish(&mut self, _ws: &mut Ws<'_, '_>, _topic: &[u8], _msg: &[u8]) {}
    /// A timer the handler added with `host.add_timer`/`add_interval` fired (the layer's own ping
    /// timers never reach it).
    fn on_timer(&mut self, _ws: &mut Ws<'_, '_>, _timer: TimerId, _data: u64) {}

    // Hand-over (docs/plugins.md): the layer moves its part of an open connection; the handler
    // moves its own state and says which versions it reads.

    /// The version of the state this handler writes; 0 (the default): it does not take part,
    /// and its connections drain (a close frame 1001) on a replacement.
    const HANDOVER_VERSION: u32 = 0;
    /// Whether its connections may move in batches, the old worker serving those not moved yet
    /// meanwhile (`Protocol::handover_in_batches`): true only when handling a connection changes
    /// nothing `export_worker` moves and reaches other connections only through the host's
    /// topics (an echo, or rooms on topics as `ws_chat`'s; not rooms kept as member lists in the
    /// handler: the worker state moves before the first batch, so a member joining after it in
    /// the old worker would be lost, and a message to a member that moved would not reach it).
    const HANDOVER_IN_BATCHES: bool = false;
    /// In the new worker: whether it reads state of `version` (default: its own only).
    fn handover_accepts(&mut self, version: u32) -> bool {
        version == Self::HANDOVER_VERSION
    }
    /// In the old worker: write `conn`'s state (after the layer's); false: it drains here.
    /// Through `ws` the handler reaches the host while it exports: a connection that hears a
    /// topic through [`Handler::on_publish`] (the worker subscribed, the handler sends on) says
    /// so with `ws.host().handover_hears(conn, topic)` (false: the host cannot replay that topic
    /// to it, so decline), and an outbound connection it owns moves with
    /// `ws.host().handover_carry(id)`.
    fn export_conn(&mut self, _ws: &mut Ws<'_, '_>, _conn: ConnId, _out: &mut StateWriter<'_>) -> bool {
        true
    }
    /// In the new worker: `conn` is open again (no `on_open`) with the state `export_conn` wrote.
    fn adopt_conn(&mut self, _ws: &mut Ws<'_, '_>, _conn: ConnId, _version: u32, state: &[u8]) -> bool {
        state.is_empty()
    }
    /// The worker-wide state (rooms, say), written after the connections' in the old worker.
    fn export_worker(&mut self, _ws: &mut Ws<'_, '_>, _out: &mut StateWriter<'_>) -> bool {
        true
    }
    /// Read in the new worker before the connections arrive; false fails the hand-over.
    fn adopt_worker(&mut self, _ws: &mut Ws<'_, '_>, _version: u32, state: &[u8]) -> bool {
        state.is_empty()
    }
    /// In the new worker: a message of `topic` that the adopted `conn` missed while it moved
    /// (its export declared that it hears `topic` with `handover_hears`), in order, before the
    /// live ones reach [`Handler::on_publish`]; send it to `conn` alone.
    fn on_publish_missed(&mut self, _ws: &mut Ws<'_, '_>, _conn: ConnId, _topic: &[u8], _msg: &[u8]) {}
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
    /// The data frame whose payload is still arriving (its header was consumed).
    frame: Option<InFrame>,
    /// Payload bytes of the message in progress as they came (compressed ones compressed).
    wire_len: usize,
    /// The message in progress is compressed (RSV1 on its first frame).
    compressed: bool,
    /// permessage-deflate, when negotiated.
    deflate: Option<Agreed>,
    /// Its decompressor, made at the first compressed message.
    inflater: Option<Box<Inflater>>,
    /// A frame arrived since the last ping tick.
    seen: bool,
    /// The last tick sent a ping.
    pinged: bool,
    timer: Option<TimerId>,
    /// The handshake succeeded (the handler heard `on_open`).
    opened: bool,
    /// The topics it is subscribed to ([`Ws::subscribe`]); they end when the close handshake
    /// begins, so that no message follows a close frame.
    topics: Vec<String>,
}

/// A data frame in progress: its payload is consumed as it arrives (so a message of exactly the
/// limit needs no room for its header), unmasked, inflated and checked piece by piece.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    key: [u8; 4],
    /// Payload bytes already consumed (the mask's phase).
    offset: usize,
    remaining: u64,
    fin: bool,
}

/// The protocol side of a WebSocket service: a [`Protocol`] that drives a [`Handler`].
/// `export_plugin!(WebSocket<MyHandler>)` makes a plugin of it.
pub struct WebSocket<H> {
    handler: H,
    config: Config,
    /// The largest message payload (after inflation, and as sent).
    max_size: usize,
    conns: ConnMap<Conn>,
    /// Scratch space for encoding one outgoing frame.
    out: Vec<u8>,
    /// Scratch space for a compressed payload, or an unmasked compressed piece.
    scratch: Vec<u8>,
    /// The worker's compressor (permessage-deflate without server context takeover), made at the
    /// first compressed message sent.
    deflater: Option<Box<Deflater>>,
}

/// What a [`Handler`] can do during a callback: send to any open connection, close one, and
/// reach the host.
pub struct Ws<'a, 'h> {
    host: &'a mut Host<'h>,
    conns: &'a mut ConnMap<Conn>,
    out: &'a mut Vec<u8>,
    scratch: &'a mut Vec<u8>,
    deflater: &'a mut Option<Box<Deflater>>,
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

    /// Whether permessage-deflate was negotiated with `conn`.
    pub fn is_compressed(&self, conn: ConnId) -> bool {
        self.conns.get(conn).is_some_and(|c| c.deflate.is_some())
    }

    /// Sends one text message to every open connection of `conns`, encoded once (uncompressed,
    /// which permessage-deflate allows); returns how many took it.
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
    /// closes once the peer answers (or at the host's timeouts). Its topics end now.
    pub fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        let Some(c) = self.conns.get_mut(conn) else { return };
        if c.state == State::Open {
            self.out.clear();
            write_close(self.out, code, reason);
            self.host.send(conn, self.out);
            c.state = State::CloseSent;
            for topic in std::mem::take(&mut c.topics) {
                let _ = self.host.unsubscribe(conn, topic);
            }
        }
    }

    /// Subscribes an open connection to `topic` (see `Host::subscribe`): what is published on it
    /// with [`Ws::publish_text`] anywhere in the service (and its cluster) reaches it as a text
    /// message, with no call of the handler. `Ok(true)` when subscribed now. The subscription
    /// ends with [`Ws::unsubscribe`], or when the connection starts closing.
    pub fn subscribe(&mut self, conn: ConnId, topic: &str) -> Result<bool, TopicError> {
        let Some(c) = self.conns.get_mut(conn).filter(|c| c.state == State::Open) else {
            return Err(TopicError::NoConnection);
        };
        let new = self.host.subscribe(conn, topic)?;
        if new {
            c.topics.push(topic.to_string());
        }
        Ok(new)
    }

    /// Ends a subscription of [`Ws::subscribe`]: `Ok(true)` when there was one.
    pub fn unsubscribe(&mut self, conn: ConnId, topic: &str) -> Result<bool, TopicError> {
        if let Some(c) = self.conns.get_mut(conn) {
            c.topics.retain(|t| t != topic);
        }
        self.host.unsubscribe(conn, topic)
    }

    /// The topics `conn` is subscribed to, in the order it subscribed.
    pub fn topics(&self, conn: ConnId) -> &[String] {
        self.conns.get(conn).map_or(&[], |c| c.topics.as_slice())
    }

    /// Publishes one text message on `topic`: framed here once (uncompressed, which
    /// permessage-deflate allows), written by the host to every subscriber of every worker and
    /// host. How many connections of this worker it reached.
    pub fn publish_text(&mut self, topic: &str, text: &str) -> Result<usize, TopicError> {
        self.out.clear();
        write_frame(self.out, true, OpCode::Text, text.as_bytes());
        self.host.publish(topic, self.out)
    }

    /// [`Ws::publish_text`] for a binary message.
    pub fn publish_binary(&mut self, topic: &str, data: &[u8]) -> Result<usize, TopicError> {
        self.out.clear();
        write_frame(self.out, true, OpCode::Binary, data);
        self.host.publish(topic, self.out)
    }

    /// Sends a ping (payload cut to 125 bytes).
    pub fn ping(&mut self, conn: ConnId, data: &[u8]) -> bool {
        self.send(conn, OpCode::Ping, &data[..data.len().min(MAX_CONTROL_PAYLOAD)])
    }

    fn send(&mut self, conn: ConnId, opcode: OpCode, payload: &[u8]) -> bool {
        let Some(c) = self.conns.get(conn).filter(|c| c.state == State::Open) else { return false };
        let compress = !opcode.is_control()
            && payload.len() >= MIN_COMPRESS
            && c.deflate.as_ref().is_some_and(Agreed::compress_out);
        self.out.clear();
        if compress {
            self.deflater.get_or_insert_with(Box::default).compress(payload, self.scratch);
        }
        if compress && self.scratch.len() < payload.len() {
            write_frame_rsv1(self.out, true, true, opcode, self.scratch);
        } else {
            write_frame(self.out, true, opcode, payload);
        }
        self.scratch.clear();
        self.scratch.shrink_to(KEEP_CAPACITY);
        self.host.send(conn, self.out)
    }
}

impl Conn {
    /// The message in progress is over (delivered, or dropped after our close).
    fn reset_message(&mut self) {
        self.message.clear();
        self.kind = None;
        self.compressed = false;
        self.wire_len = 0;
        self.utf8 = Utf8Validator::default();
    }
}

impl<H: Handler> WebSocket<H> {
    pub fn handler(&self) -> &H {
        &self.handler
    }

    fn ws<'a, 'h>(&'a mut self, host: &'a mut Host<'h>) -> (&'a mut H, Ws<'a, 'h>) {
        let ws = Ws {
            host,
            conns: &mut self.conns,
            out: &mut self.out,
            scratch: &mut self.scratch,
            deflater: &mut self.deflater,
        };
        (&mut self.handler, ws)
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
        let mut accepted = match handshake(head, &policy) {
            Ok(a) => a,
            Err(rejection) => return self.reject(host, conn, rejection),
        };
        let agreed = if self.config.permessage_deflate {
            deflate::negotiate(accepted.extension_offers.iter().map(Vec::as_slice))
        } else {
            None
        };
        accepted.extensions = agreed.map(|a| a.response());
        host.send(conn, &accepted.response());
        let timer = (self.config.ping_interval > 0.0)
            .then(|| host.add_interval(Duration::from_secs_f64(self.config.ping_interval), conn.0));
        let c = self.conns.entry(conn);
        c.state = State::Open;
        c.protocol = accepted.protocol;
        c.timer = timer;
        c.opened = true;
        c.deflate = agreed;
        let (handler, mut ws) = self.ws(host);
        handler.on_open(&mut ws, conn);
    }

    fn reject(&mut self, host: &mut Host<'_>, conn: ConnId, rejection: Rejection) {
        self.conns.entry(conn).state = State::Closed;
        host.close_with(conn, &rejection.response());
    }

    /// Framing (see [`Protocol::input`]): a control frame whole; a data frame's header with what
    /// has arrived of its payload, then the rest of the payload as it arrives.
    fn input_frame(&mut self, conn: ConnId, buf: &[u8]) -> Result<Frame, ProtocolError> {
        let max = self.max_size;
        let c = self.conns.entry(conn);
        // A piece is never over the max package size, which the host holds any one piece to.
        if let Some(f) = &c.frame {
            return Ok(Frame::Complete(buf.len().min(max).min(f.remaining as usize)));
        }
        let Some(h) = parse_header_ext(buf, c.deflate.is_some())? else { return Ok(Frame::NeedMore) };
        h.mask.ok_or(ProtocolError::Unmasked)?;
        match (h.opcode, c.kind) {
            (OpCode::Continuation, None) => return Err(ProtocolError::UnexpectedContinuation),
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(ProtocolError::ExpectedContinuation),
            _ => {}
        }
        let len = h.header_len + h.payload_len.min(max as u64 + 1) as usize;
        if h.opcode.is_control() {
            return Ok(if len <= buf.len() { Frame::Complete(len) } else { Frame::NeedMore });
        }
        // The message's payload (not the frame's header) is what the limit bounds.
        if c.wire_len as u64 + h.payload_len > max as u64 {
            return Err(ProtocolError::TooBig);
        }
        Ok(Frame::Complete(len.min(buf.len()).min(max)))
    }

    /// Bytes framed by [`Self::input_frame`]: a control frame, or a data frame's header with part
    /// of its payload, or more of its payload.
    fn on_frame(&mut self, host: &mut Host<'_>, conn: ConnId, bytes: &[u8]) -> Result<(), ProtocolError> {
        let Some(c) = self.conns.get_mut(conn) else { return Ok(()) };
        c.seen = true;
        if c.frame.is_some() {
            return self.on_payload(host, conn, bytes);
        }
        let Ok(Some(h)) = parse_header_ext(bytes, c.deflate.is_some()) else { return Ok(()) };
        let key = h.mask.ok_or(ProtocolError::Unmasked)?;
        let payload = &bytes[h.header_len..];
        if h.opcode.is_control() {
            let mut control = [0u8; MAX_CONTROL_PAYLOAD];
            let p = &mut control[..payload.len()];
            p.copy_from_slice(payload);
            apply_mask(p, key, 0);
            return self.on_control(host, conn, h.opcode, p);
        }
        if h.opcode != OpCode::Continuation {
            c.kind = Some(if h.opcode == OpCode::Text { Kind::Text } else { Kind::Binary });
            c.compressed = h.rsv1;
        }
        c.frame = Some(InFrame { key, offset: 0, remaining: h.payload_len, fin: h.fin });
        self.on_payload(host, conn, payload)
    }

    /// A piece of the current data frame's payload: unmasked (and inflated) into the message,
    /// text checked as it comes; the message goes to the handler once its last byte is in.
    fn on_payload(&mut self, host: &mut Host<'_>, conn: ConnId, piece: &[u8]) -> Result<(), ProtocolError> {
        let max = self.max_size;
        let Some(c) = self.conns.get_mut(conn) else { return Ok(()) };
        let Some(f) = c.frame.as_mut() else { return Ok(()) };
        let (key, offset, fin) = (f.key, f.offset, f.fin);
        f.offset += piece.len();
        f.remaining -= piece.len() as u64;
        let frame_done = f.remaining == 0;
        if frame_done {
            c.frame = None;
        }
        c.wire_len += piece.len();
        let message_done = frame_done && fin;
        if c.state != State::Open {
            // After our close frame, data is dropped until the peer's close.
            if message_done {
                c.reset_message();
            }
            return Ok(());
        }
        let start = c.message.len();
        if c.compressed {
            self.scratch.clear();
            self.scratch.extend_from_slice(piece);
            apply_mask(&mut self.scratch, key, offset);
            let inflater = c.inflater.get_or_insert_with(Box::default);
            inflater.inflate(&self.scratch, &mut c.message, max)?;
            if message_done {
                let reset = c.deflate.is_some_and(|d| d.client_no_context_takeover);
                inflater.finish(&mut c.message, max, reset)?;
            }
        } else {
            c.message.extend_from_slice(piece);
            apply_mask(&mut c.message[start..], key, offset);
        }
        let text = c.kind == Some(Kind::Text);
        if text {
            c.utf8.feed(&c.message[start..]).map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        if !message_done {
            return Ok(());
        }
        if text {
            c.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        let mut data = std::mem::take(&mut c.message);
        c.reset_message();
        let msg = if text {
            Message::Text(std::str::from_utf8(&data).map_err(|_| ProtocolError::InvalidUtf8)?)
        } else {
            Message::Binary(&data)
        };
        let (handler, mut ws) = self.ws(host);
        handler.on_message(&mut ws, conn, msg);
        if let Some(c) = self.conns.get_mut(conn) {
            data.clear();
            data.shrink_to(KEEP_CAPACITY);
            c.message = data;
        }
        self.scratch.shrink_to(KEEP_CAPACITY);
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
            scratch: Vec::new(),
            deflater: None,
        })
    }

    fn on_worker_start(&mut self, host: &mut Host<'_>) -> Result<(), String> {
        let (handler, mut ws) = self.ws(host);
        handler.on_worker_start(&mut ws)
    }

    fn on_worker_stop(&mut self, host: &mut Host<'_>) {
        let (handler, mut ws) = self.ws(host);
        handler.on_worker_stop(&mut ws);
    }

    fn on_worker_message(&mut self, host: &mut Host<'_>, from_slot: u32, msg: &[u8]) {
        let (handler, mut ws) = self.ws(host);
        handler.on_worker_message(&mut ws, from_slot, msg);
    }

    fn on_task_done(&mut self, host: &mut Host<'_>, task: TaskId, result: Result<Vec<u8>, String>) {
        let (handler, mut ws) = self.ws(host);
        handler.on_task_done(&mut ws, task, result);
    }

    fn on_notify(&mut self, host: &mut Host<'_>, data: &[u8]) {
        let (handler, mut ws) = self.ws(host);
        handler.on_notify(&mut ws, data);
    }

    fn on_publish(&mut self, host: &mut Host<'_>, topic: &[u8], msg: &[u8]) {
        let (handler, mut ws) = self.ws(host);
        handler.on_publish(&mut ws, topic, msg);
    }

    fn on_publish_missed(&mut self, host: &mut Host<'_>, conn: ConnId, topic: &[u8], msg: &[u8]) {
        let (handler, mut ws) = self.ws(host);
        handler.on_publish_missed(&mut ws, conn, topic, msg);
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
            let (handler, mut ws) = self.ws(host);
            handler.on_close(&mut ws, conn);
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
                let (_, mut ws) = self.ws(host);
                ws.close(conn, close_code::GOING_AWAY, "idle");
                if let Some(c) = self.conns.get_mut(conn) {
                    c.state = State::Closed;
                }
                host.close(conn);
            }
            _ => host.close(conn),
        }
    }

    fn on_timer(&mut self, host: &mut Host<'_>, timer: TimerId, data: u64) {
        let conn = ConnId(data);
        let Some(c) = self.conns.get_mut(conn).filter(|c| c.timer == Some(timer)) else {
            let (handler, mut ws) = self.ws(host);
            return handler.on_timer(&mut ws, timer, data);
        };
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

    const HANDOVER_VERSION: u32 = H::HANDOVER_VERSION;

    fn handover_accepts(&mut self, _host: &mut Host<'_>, _plugin: &str, version: u32) -> bool {
        self.handler.handover_accepts(version)
    }

    fn export_conn(&mut self, host: &mut Host<'_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
        self.export_conn_state(host, conn, out)
    }

    fn handover_in_batches(&self) -> bool {
        H::HANDOVER_IN_BATCHES
    }

    fn adopt_conn(&mut self, host: &mut Host<'_>, conn: ConnId, version: u32, state: &[u8]) -> bool {
        self.adopt_conn_state(host, conn, version, state)
    }

    fn export_worker(&mut self, host: &mut Host<'_>, out: &mut StateWriter<'_>) -> bool {
        let (handler, mut ws) = self.ws(host);
        handler.export_worker(&mut ws, out)
    }

    fn adopt_worker(&mut self, host: &mut Host<'_>, version: u32, state: &[u8]) -> bool {
        let (handler, mut ws) = self.ws(host);
        handler.adopt_worker(&mut ws, version, state)
    }

    fn on_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        match self.conns.get(conn).map(|c| c.state) {
            Some(State::Open) => {
                let (_, mut ws) = self.ws(host);
                ws.close(conn, close_code::GOING_AWAY, "server going away");
            }
            Some(State::CloseSent) => {}
            _ => host.close(conn),
        }
    }
}
