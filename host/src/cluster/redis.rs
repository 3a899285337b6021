//! A sans-IO Redis pub/sub client on one RESP3 connection.
//!
//! Why one RESP3 connection and not two RESP2 ones: a RESP2 connection in subscribe mode can
//! issue nothing but (P)(UN)SUBSCRIBE and PING, so publishing needs a second connection, with its
//! own handshake, state and reconnect. RESP3 (`HELLO 3`, Redis 6 and later) sends pub/sub
//! messages as out-of-band push frames (`>`), told apart from command replies, so SUBSCRIBE and
//! PUBLISH share one connection. A Redis older than 6 answers HELLO with an error, reported as
//! "needs Redis 6 or later".
//!
//! Frames are decoded with the `redis-protocol` crate (`resp3::decode::complete::decode` over a
//! byte slice: sans-IO, maintained as the codec of the `fred` client). Commands are encoded here:
//! an array of bulk strings is a few lines and lets PUBLISH write the payload once, straight into
//! the output buffer, instead of copying it into an owned frame first.
//!
//! Channels are `host:<service>:<topic>` (Redis channels are binary-safe; pub/sub ignores the
//! database number, so the prefix is what keeps services apart). Every PUBLISH payload starts with
//! the client's 8-byte origin id: Redis echoes a publish to the publisher's own subscriptions, and
//! the host delivers its own messages locally, so a client skips what it published itself.
//!
//! Sharded pub/sub (`sharded: true`, a `redis+cluster://` URL): SSUBSCRIBE / SPUBLISH /
//! SUNSUBSCRIBE and `smessage` pushes, on the node that owns the channel's slot. This client is
//! one node's connection: it asks for the slot map (`CLUSTER SLOTS`, [`WireEvent::Slots`]) and
//! reports a `sunsubscribe` push the node sent on its own (the slot moved away:
//! [`WireEvent::Unsubscribed`]); the routing over the nodes is `super::shards`. An error answer
//! to a subscription (`-MOVED`: the node does not serve the slot) is reported the same way, the
//! subscription not made, and as a broker error, which makes `shards` refresh the map.
//! A sharded publish keeps its topic and payload until its answer: one answered `-MOVED` or
//! `-ASK` (a slot migrating) comes back as [`WireEvent::Redirect`] for `shards` to send again,
//! once, to the node named (after `ASKING` for `-ASK`).

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::io::Write as _;

use redis_protocol::resp3::decode::complete::decode;
use redis_protocol::resp3::types::OwnedFrame;

use super::{url::ClusterUrl, ClusterError, Protocol, TopicError, WireEvent};

/// Redis's own limit on a bulk string (`proto-max-bulk-len`, 512 MB by default).
pub const MAX_PAYLOAD: usize = 512 * 1024 * 1024;
/// The origin id in front of every payload.
const ORIGIN_LEN: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOptions {
    /// `None`: the `default` user (when a password is given).
    pub username: Option<String>,
    pub password: Option<String>,
    /// SSUBSCRIBE / SPUBLISH instead of SUBSCRIBE / PUBLISH.
    pub sharded: bool,
    /// `host:<service>:`.
    pub prefix: Vec<u8>,
    /// The origin id in front of every payload (messages carrying it are skipped): one per
    /// host when each of its workers has a connection; None: a random one for this client.
    pub origin: Option<[u8; ORIGIN_LEN]>,
    /// The largest message taken from the broker (`topic_max_message`): a larger one is
    /// skipped as it arrives, never buffered whole, and reported ([`WireEvent::Oversized`]).
    pub max_message: usize,
}

impl RedisOptions {
    pub fn from_url(url: &ClusterUrl, service: &str) -> Self {
        Self {
            username: url.username.clone(),
            password: url.password.clone(),
            sharded: url.cluster,
            prefix: format!("host:{service}:").into_bytes(),
            origin: None,
            max_message: crate::config::DEFAULT_TOPIC_MAX_MESSAGE,
        }
    }
}

/// A range of slots of a Redis Cluster and the node (its master) that owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    /// Empty when the node does not know its own address (then: the node that answered).
    pub host: String,
    pub port: u16,
}

/// The slot of a channel in a Redis Cluster (CRC16 of the key or of its `{hash tag}`, mod 16384).
pub fn channel_slot(prefix: &[u8], topic: &[u8]) -> u16 {
    redis_protocol::redis_keyslot(&[prefix, topic].concat())
}

/// A sharded publish waiting for its answer, kept to be sent again if it is redirected.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    topic: Vec<u8>,
    payload: Vec<u8>,
    /// Sent again after a redirection already: a second one drops it.
    redirected: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Hello,
    /// Sharded: what was published, for a redirection.
    Publish(Option<Box<Sent>>),
    /// The `ASKING` in front of a publish sent again after `-ASK`.
    Asking,
    Ping,
    Slots,
    /// Sharded only: an SSUBSCRIBE / SUNSUBSCRIBE of this channel, answered by a push (or an
    /// error such as `-MOVED`), which must not be taken for the answer of another command.
    Subscribe(Vec<u8>),
    Unsubscribe(Vec<u8>),
}

#[derive(Debug)]
pub struct RedisClient {
    options: RedisOptions,
    origin: [u8; ORIGIN_LEN],
    /// The commands whose (non-push) replies are still to come, in order.
    pending: VecDeque<Pending>,
    /// Bytes of an oversized message's payload (and its CRLF) still to skip.
    skip: usize,
}

/// Room for a message push's other parts (its kind, the channel) and headers on top of its
/// payload: an incomplete frame larger than the payload limit and this is a protocol error.
const FRAME_SLACK: usize = 64 * 1024;

impl RedisClient {
    pub fn new(options: RedisOptions) -> Self {
        // A random id per client (std's SipHash keys are random per process and per RandomState).
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let origin = options.origin.unwrap_or_else(|| hasher.finish().to_le_bytes());
        Self { options, origin, pending: VecDeque::new(), skip: 0 }
    }

    fn channel(&self, topic: &[u8]) -> Vec<u8> {
        [self.options.prefix.as_slice(), topic].concat()
    }

    fn handle(&mut self, frame: OwnedFrame, events: &mut Vec<WireEvent>) -> Result<(), ClusterError> {
        if let OwnedFrame::Push { data, .. } = &frame {
            let kind = data.first().and_then(bytes_of).unwrap_or_default();
            if kind.eq_ignore_ascii_case(b"ssubscribe") {
                if matches!(self.pending.front(), Some(Pending::Subscribe(_))) {
                    self.pending.pop_front();
                }
                return Ok(());
            }
            if kind.eq_ignore_ascii_case(b"sunsubscribe") {
                let channel = data.get(1).and_then(bytes_of).unwrap_or_default();
                if matches!(self.pending.front(), Some(Pending::Unsubscribe(c)) if c == channel) {
                    self.pending.pop_front();
                } else if let Some(topic) = channel.strip_prefix(self.options.prefix.as_slice()) {
                    // Not asked for: the node gave the channel's slot away (a migration, a
                    // failover).
                    events.push(WireEvent::Unsubscribed { topic: topic.to_vec() });
                }
                return Ok(());
            }
            if (kind.eq_ignore_ascii_case(b"message") || kind.eq_ignore_ascii_case(b"smessage")) && data.len() == 3 {
                let (Some(channel), Some(payload)) = (bytes_of(&data[1]), bytes_of(&data[2])) else {
                    return Err(ClusterError::Protocol("a message push without a channel or payload".into()));
                };
                let Some(topic) = channel.strip_prefix(self.options.prefix.as_slice()) else {
                    return Ok(());
                };
                // Shorter than an origin id: not published by a host; skipped.
                if payload.len() < ORIGIN_LEN || payload[..ORIGIN_LEN] == self.origin {
                    return Ok(());
                }
                events.push(WireEvent::Message { topic: topic.to_vec(), payload: payload[ORIGIN_LEN..].to_vec() });
            }
            // (un)subscribe confirmations and other pushes need no action.
            return Ok(());
        }
        let error = error_of(&frame);
        match self.pending.pop_front() {
            Some(Pending::Hello) => match error {
                Some(e) if e.starts_with("NOPROTO") => {
                    Err(ClusterError::Refused(format!("{e} (RESP3 pub/sub needs Redis 6 or later)")))
                }
                Some(e) => Err(ClusterError::Refused(e)),
                None => {
                    events.push(WireEvent::Ready);
                    Ok(())
                }
            },
            Some(Pending::Ping) if error.is_none() => {
                events.push(WireEvent::Pong);
                Ok(())
            }
            Some(Pending::Slots) if error.is_none() => {
                events.push(WireEvent::Slots(slot_ranges(&frame)?));
                Ok(())
            }
            Some(Pending::Publish(Some(sent))) if error.as_deref().is_some_and(is_redirect) => {
                let e = error.unwrap_or_default();
                match parse_redirect(&e) {
                    Some((ask, host, port)) => {
                        let Sent { topic, payload, redirected } = *sent;
                        events.push(WireEvent::Redirect { ask, host, port, topic, payload, again: redirected });
                    }
                    None => events.push(WireEvent::ServerError(e)),
                }
                Ok(())
            }
            Some(Pending::Subscribe(channel)) if error.is_some() => {
                // Refused (`-MOVED`: another node serves the slot; `-CLUSTERDOWN`): not subscribed.
                if let Some(topic) = channel.strip_prefix(self.options.prefix.as_slice()) {
                    events.push(WireEvent::Unsubscribed { topic: topic.to_vec() });
                }
                events.push(WireEvent::ServerError(error.unwrap_or_default()));
                Ok(())
            }
            _ => {
                if let Some(e) = error {
                    events.push(WireEvent::ServerError(e));
                }
                Ok(())
            }
        }
    }
}

fn is_redirect(error: &str) -> bool {
    error.starts_with("MOVED ") || error.starts_with("ASK ")
}

/// `MOVED <slot> <host>:<port>` or `ASK …`: whether it is `ASK`, the host (empty: the node that
/// answered) and the port. None when it is not one.
fn parse_redirect(error: &str) -> Option<(bool, String, u16)> {
    let mut words = error.split(' ');
    let ask = match words.next()? {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    words.next()?.parse::<u16>().ok()?;
    let (host, port) = words.next()?.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((ask, host.to_string(), port.parse().ok()?))
}

/// Reads a `<kind><number>\r\n` header at the start of `buf`: the number and the header's
/// length; None when it is not all there. An error when it is not a number.
fn header(buf: &[u8], kind: u8) -> Result<Option<(usize, usize)>, ClusterError> {
    if buf.first() != Some(&kind) {
        return Err(ClusterError::Protocol(format!("expected {:?} in a push", kind as char)));
    }
    let Some(end) = buf.windows(2).take(24).position(|w| w == b"\r\n") else {
        return if buf.len() > 24 { Err(ClusterError::Protocol("a header too long".into())) } else { Ok(None) };
    };
    let n = std::str::from_utf8(&buf[1..end])
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| ClusterError::Protocol("a length that is not a number".into()))?;
    Ok(Some((n, end + 2)))
}

/// For an incomplete push (`>N` of bulk strings) whose last part is announced longer than
/// `max`: the bytes up to that part's data and its length, so that the caller skips it. None
/// when the frame is something else, not over the limit, or its headers are not all there yet.
fn oversized_push(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, ClusterError> {
    if buf.first() != Some(&b'>') {
        return Ok(None);
    }
    let Some((parts, mut at)) = header(buf, b'>')? else { return Ok(None) };
    for k in 0..parts {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Ok(None); // not a message push: left to the decoder (and the frame cap)
        }
        let Some((len, head)) = header(&buf[at..], b'$')? else { return Ok(None) };
        if len > max {
            if k + 1 != parts {
                return Err(ClusterError::Protocol(format!("a push with a part of {len} bytes before its last")));
            }
            return Ok(Some((at + head, len)));
        }
        at += head + len + 2;
    }
    Ok(None)
}

/// The reply to `CLUSTER SLOTS`: `[[start, end, [host, port, id, …], replicas…], …]`.
fn slot_ranges(frame: &OwnedFrame) -> Result<Vec<SlotRange>, ClusterError> {
    let bad = |what: &str| ClusterError::Protocol(format!("a CLUSTER SLOTS reply with {what}"));
    let OwnedFrame::Array { data, .. } = frame else { return Err(bad("no array")) };
    let mut ranges = Vec::with_capacity(data.len());
    for entry in data {
        let OwnedFrame::Array { data: parts, .. } = entry else { return Err(bad("an entry that is no array")) };
        let (Some(start), Some(end), Some(OwnedFrame::Array { data: master, .. })) =
            (parts.first().and_then(number_of), parts.get(1).and_then(number_of), parts.get(2))
        else {
            return Err(bad("an entry without start, end and master"));
        };
        let host = master.first().and_then(bytes_of).ok_or_else(|| bad("a master without a host"))?;
        let port = master.get(1).and_then(number_of).ok_or_else(|| bad("a master without a port"))?;
        let (Ok(start), Ok(end), Ok(port)) = (u16::try_from(start), u16::try_from(end), u16::try_from(port)) else {
            return Err(bad("a slot or a port out of range"));
        };
        if start > end || end >= 16384 {
            return Err(bad("a slot range out of 0-16383"));
        }
        let host = String::from_utf8_lossy(host).into_owned();
        // `?` or empty: the node does not know its address; the caller uses the one it asked.
        let host = if host == "?" { String::new() } else { host };
        ranges.push(SlotRange { start, end, host, port });
    }
    Ok(ranges)
}

fn number_of(frame: &OwnedFrame) -> Option<i64> {
    match frame {
        OwnedFrame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

fn bytes_of(frame: &OwnedFrame) -> Option<&[u8]> {
    match frame {
        OwnedFrame::BlobString { data, .. } | OwnedFrame::SimpleString { data, .. } => Some(data),
        _ => None,
    }
}

fn error_of(frame: &OwnedFrame) -> Option<String> {
    match frame {
        OwnedFrame::SimpleError { data, .. } => Some(data.clone()),
        OwnedFrame::BlobError { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

/// `*N\r\n`.
fn push_array(out: &mut Vec<u8>, n: usize) {
    let _ = write!(out, "*{n}\r\n");
}

/// One bulk string made of `parts` laid end to end.
fn push_bulk(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let _ = write!(out, "${len}\r\n");
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

/// A command: an array of bulk strings.
pub(crate) fn push_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    push_array(out, args.len());
    for arg in args {
        push_bulk(out, &[arg]);
    }
}

impl Protocol for RedisClient {
    fn reset(&mut self, out: &mut Vec<u8>) {
        self.pending.clear();
        self.skip = 0;
        let user = self.options.username.as_deref().unwrap_or("default");
        match &self.options.password {
            Some(pass) => push_command(
                out,
                &[b"HELLO", b"3", b"AUTH", user.as_bytes(), pass.as_bytes(), b"SETNAME", b"host-cluster"],
            ),
            None => push_command(out, &[b"HELLO", b"3", b"SETNAME", b"host-cluster"]),
        }
        self.pending.push_back(Pending::Hello);
    }

    fn parse(&mut self, input: &[u8], _out: &mut Vec<u8>, events: &mut Vec<WireEvent>) -> Result<usize, ClusterError> {
        let mut used = 0;
        let max_payload = self.options.max_message + ORIGIN_LEN;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(input.len() - used);
                self.skip -= n;
                used += n;
                if self.skip > 0 {
                    return Ok(used);
                }
            }
            if used >= input.len() {
                return Ok(used);
            }
            match decode(&input[used..]) {
                Ok(Some((frame, n))) => {
                    used += n;
                    self.handle(frame, events)?;
                }
                Ok(None) => {
                    // Incomplete. A push whose last part (a message's payload) is over the limit
                    // is skipped as it arrives instead of being buffered whole.
                    if let Some((head, len)) = oversized_push(&input[used..], max_payload)? {
                        used += head;
                        self.skip = len + 2;
                        events.push(WireEvent::Oversized { len: len.saturating_sub(ORIGIN_LEN) });
                        continue;
                    }
                    if input.len() - used > max_payload + FRAME_SLACK {
                        return Err(ClusterError::Protocol(format!(
                            "an incomplete frame of more than {} bytes",
                            max_payload + FRAME_SLACK
                        )));
                    }
                    return Ok(used);
                }
                Err(e) => return Err(ClusterError::Protocol(e.to_string())),
            }
        }
    }

    fn subscribe(&mut self, topic: &[u8], out: &mut Vec<u8>) {
        if self.options.sharded {
            let channel = self.channel(topic);
            push_command(out, &[b"SSUBSCRIBE", &channel]);
            self.pending.push_back(Pending::Subscribe(channel));
        } else {
            push_command(out, &[b"SUBSCRIBE", &self.channel(topic)]);
        }
    }

    fn unsubscribe(&mut self, topic: &[u8], out: &mut Vec<u8>) {
        let channel = self.channel(topic);
        if self.options.sharded {
            push_command(out, &[b"SUNSUBSCRIBE", &channel]);
            self.pending.push_back(Pending::Unsubscribe(channel));
        } else {
            push_command(out, &[b"UNSUBSCRIBE", &channel]);
        }
    }

    fn request_slots(&mut self, out: &mut Vec<u8>) -> bool {
        push_command(out, &[b"CLUSTER", b"SLOTS"]);
        self.pending.push_back(Pending::Slots);
        true
    }

    fn publish(&mut self, topic: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), TopicError> {
        self.send_publish(topic, payload, false, out)
    }

    fn publish_redirected(
        &mut self,
        topic: &[u8],
        payload: &[u8],
        ask: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TopicError> {
        if ask {
            push_command(out, &[b"ASKING"]);
            self.pending.push_back(Pending::Asking);
        }
        self.send_publish(topic, payload, true, out)
    }

    fn ping(&mut self, out: &mut Vec<u8>) {
        push_command(out, &[b"PING"]);
        self.pending.push_back(Pending::Ping);
    }
}

impl RedisClient {
    /// PUBLISH, or SPUBLISH keeping what it sent for a redirection (`redirected`: sent again
    /// already).
    fn send_publish(
        &mut self,
        topic: &[u8],
        payload: &[u8],
        redirected: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), TopicError> {
        if payload.len() + ORIGIN_LEN > MAX_PAYLOAD {
            return Err(TopicError::TooLarge { len: payload.len(), max: MAX_PAYLOAD - ORIGIN_LEN });
        }
        let command: &[u8] = if self.options.sharded { b"SPUBLISH" } else { b"PUBLISH" };
        push_array(out, 3);
        push_bulk(out, &[command]);
        push_bulk(out, &[&self.options.prefix, topic]);
        push_bulk(out, &[&self.origin, payload]);
        let sent = self
            .options
            .sharded
            .then(|| Box::new(Sent { topic: topic.to_vec(), payload: payload.to_vec(), redirected }));
        self.pending.push_back(Pending::Publish(sent));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(password: Option<&str>, sharded: bool) -> RedisClient {
        RedisClient::new(RedisOptions {
            username: None,
            password: password.map(String::from),
            sharded,
            prefix: b"host:chat:".to_vec(),
            origin: None,
            max_message: 1024,
        })
    }

    fn push(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = format!(">{}\r\n", parts.len()).into_bytes();
        for p in parts {
            push_bulk(&mut out, &[p]);
        }
        out
    }

    #[test]
    fn commands_decode_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        push_command(&mut out, &[b"SUBSCRIBE", b"a\r\nb"]);
        let (frame, n) = decode(&out).unwrap().unwrap();
        assert_eq!(n, out.len());
        let OwnedFrame::Array { data, .. } = frame else { panic!("not an array") };
        assert_eq!(bytes_of(&data[1]).unwrap(), b"a\r\nb");
    }

    #[test]
    fn hello_with_auth_then_ready_on_the_map_reply() {
        let mut c = client(Some("pw"), false);
        let mut out = Vec::new();
        c.reset(&mut out);
        assert_eq!(
            out,
            b"*7\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$2\r\npw\r\n$7\r\nSETNAME\r\n$12\r\nhost-cluster\r\n"
        );
        let mut events = Vec::new();
        let reply = b"%1\r\n+server\r\n+redis\r\n";
        // Split reply: nothing consumed until the frame is complete.
        assert_eq!(c.parse(&reply[..5], &mut out, &mut events).unwrap(), 0);
        assert_eq!(c.parse(reply, &mut out, &mut events).unwrap(), reply.len());
        assert_eq!(events, vec![WireEvent::Ready]);
    }

    #[test]
    fn hello_errors_refuse_the_connection() {
        let mut c = client(Some("bad"), false);
        let mut out = Vec::new();
        c.reset(&mut out);
        let err = c.parse(b"-WRONGPASS invalid username-password pair\r\n", &mut out, &mut Vec::new());
        assert!(matches!(err, Err(ClusterError::Refused(m)) if m.starts_with("WRONGPASS")));
        c.reset(&mut out);
        let err = c.parse(b"-NOPROTO unsupported protocol version\r\n", &mut out, &mut Vec::new());
        assert!(matches!(err, Err(ClusterError::Refused(m)) if m.contains("Redis 6")));
    }

    #[test]
    fn messages_are_unprefixed_and_own_publishes_skipped() {
        let mut c = client(None, false);
        let mut out = Vec::new();
        c.reset(&mut out);
        c.parse(b"%0\r\n", &mut out, &mut Vec::new()).unwrap();
        let mut other = [7u8; 8].to_vec();
        other.extend_from_slice(b"bin\r\n\0ary");
        let mine = [c.origin.as_slice(), b"echo"].concat();
        let mut input = push(&[b"subscribe", b"host:chat:room", b"1"]);
        input.extend(push(&[b"message", b"host:chat:room", &other]));
        input.extend(push(&[b"message", b"host:chat:room", &mine]));
        input.extend(push(&[b"message", b"host:other:room", &other]));
        input.extend(push(&[b"smessage", b"host:chat:s", &other]));
        let mut events = Vec::new();
        assert_eq!(c.parse(&input, &mut out, &mut events).unwrap(), input.len());
        assert_eq!(
            events,
            vec![
                WireEvent::Message { topic: b"room".to_vec(), payload: b"bin\r\n\0ary".to_vec() },
                WireEvent::Message { topic: b"s".to_vec(), payload: b"bin\r\n\0ary".to_vec() },
            ]
        );
    }

    #[test]
    fn an_oversized_message_is_skipped_as_it_arrives_and_the_stream_stays_in_sync() {
        let mut c = client(None, false);
        let mut out = Vec::new();
        c.reset(&mut out);
        c.parse(b"%0\r\n", &mut out, &mut Vec::new()).unwrap();
        let big = [[7u8; 8].as_slice(), &vec![b'x'; 100_000]].concat();
        let mut input = push(&[b"message", b"host:chat:room", &big]);
        input.extend(push(&[b"message", b"host:chat:room", &[[7u8; 8].as_slice(), b"after"].concat()]));
        // Fed in small pieces as a socket would, the way `Broker::feed` does: never more than
        // a piece and a frame's headers held.
        let (mut held, mut most, mut events) = (Vec::new(), 0, Vec::new());
        for piece in input.chunks(4096) {
            held.extend_from_slice(piece);
            most = most.max(held.len());
            let used = c.parse(&held, &mut out, &mut events).unwrap();
            held.drain(..used);
        }
        assert!(held.is_empty());
        assert!(most < 8192, "held {most} bytes at once");
        assert_eq!(
            events,
            vec![
                WireEvent::Oversized { len: 100_000 },
                WireEvent::Message { topic: b"room".to_vec(), payload: b"after".to_vec() }
            ]
        );
        // A frame that is no message push and grows past the limit ends the connection.
        let mut c = client(None, false);
        c.reset(&mut out);
        let mut reply = b"$200000\r\n".to_vec();
        reply.extend(vec![b'y'; 100_000]);
        assert!(matches!(c.parse(&reply, &mut out, &mut Vec::new()), Err(ClusterError::Protocol(_))));
    }

    #[test]
    fn slot_map_moves_and_the_answers_of_sharded_subscriptions() {
        let mut c = client(None, true);
        let mut out = Vec::new();
        c.reset(&mut out);
        c.parse(b"%0\r\n", &mut out, &mut Vec::new()).unwrap();
        out.clear();
        c.subscribe(b"a", &mut out);
        c.unsubscribe(b"b", &mut out);
        c.subscribe(b"c", &mut out);
        assert!(c.request_slots(&mut out));
        let mut input = push(&[b"ssubscribe", b"host:chat:a", b"1"]);
        input.extend(push(&[b"sunsubscribe", b"host:chat:b", b"0"]));
        // The node refuses `c` (another node owns its slot): not taken for the map's answer,
        // and reported as not subscribed.
        input.extend(b"-MOVED 7365 127.0.0.1:7002\r\n");
        // A sunsubscribe nobody asked for: the slot of `a` moved away.
        input.extend(push(&[b"sunsubscribe", b"host:chat:a", b"0"]));
        input.extend(b"*2\r\n*3\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n");
        input.extend(b"*4\r\n:5461\r\n:16383\r\n*3\r\n$1\r\n?\r\n:7001\r\n$2\r\nid\r\n*2\r\n$1\r\nx\r\n:1\r\n");
        let mut events = Vec::new();
        assert_eq!(c.parse(&input, &mut out, &mut events).unwrap(), input.len());
        assert_eq!(
            events,
            vec![
                WireEvent::Unsubscribed { topic: b"c".to_vec() },
                WireEvent::ServerError("MOVED 7365 127.0.0.1:7002".into()),
                WireEvent::Unsubscribed { topic: b"a".to_vec() },
                WireEvent::Slots(vec![
                    SlotRange { start: 0, end: 5460, host: "127.0.0.1".into(), port: 7000 },
                    SlotRange { start: 5461, end: 16383, host: String::new(), port: 7001 },
                ]),
            ]
        );
        // A map out of range is a protocol error.
        c.request_slots(&mut out);
        let bad = b"*1\r\n*3\r\n:0\r\n:16384\r\n*2\r\n$1\r\nh\r\n:1\r\n";
        assert!(matches!(c.parse(bad, &mut out, &mut Vec::new()), Err(ClusterError::Protocol(_))));
    }

    #[test]
    fn channel_slots_follow_redis() {
        // CRC16/XMODEM's check value (0x31C3); a hash tag hashes only the tag.
        assert_eq!(channel_slot(b"host:chat:", b"room"), redis_protocol::redis_keyslot(b"host:chat:room"));
        assert_eq!(channel_slot(b"host:chat:", b"{user1000}.in"), channel_slot(b"host:x:", b"{user1000}.out"));
        assert_eq!(channel_slot(b"", b"123456789"), 12739);
    }

    #[test]
    fn publish_carries_the_origin_and_errors_are_reported() {
        let mut c = client(None, true);
        let mut out = Vec::new();
        c.reset(&mut out);
        c.parse(b"%0\r\n", &mut out, &mut Vec::new()).unwrap();
        out.clear();
        c.publish(b"t", b"x", &mut out).unwrap();
        let (frame, _) = decode(&out).unwrap().unwrap();
        let OwnedFrame::Array { data, .. } = frame else { panic!("not an array") };
        assert_eq!(bytes_of(&data[0]).unwrap(), b"SPUBLISH");
        assert_eq!(bytes_of(&data[1]).unwrap(), b"host:chat:t");
        assert_eq!(bytes_of(&data[2]).unwrap(), [c.origin.as_slice(), b"x"].concat());
        let mut events = Vec::new();
        c.parse(b"-MOVED 3999 127.0.0.1:6381\r\n", &mut out, &mut events).unwrap();
        let redirect = |ask, host: &str, port, again| WireEvent::Redirect {
            ask,
            host: host.into(),
            port,
            topic: b"t".to_vec(),
            payload: b"x".to_vec(),
            again,
        };
        assert_eq!(events, vec![redirect(false, "127.0.0.1", 6381, false)]);
        // Sent again after ASK: ASKING first (its +OK taken as its answer), then the publish,
        // whose redirection says it was sent again already.
        out.clear();
        c.publish_redirected(b"t", b"x", true, &mut out).unwrap();
        assert!(out.starts_with(b"*1\r\n$6\r\nASKING\r\n*3\r\n$8\r\nSPUBLISH\r\n"));
        c.publish(b"t", b"x", &mut out).unwrap();
        c.publish(b"t", b"x", &mut out).unwrap();
        events.clear();
        let answers = b"+OK\r\n-ASK 3999 :6382\r\n:1\r\n-ERR something else\r\n";
        c.parse(answers, &mut out, &mut events).unwrap();
        assert_eq!(events, vec![redirect(true, "", 6382, true), WireEvent::ServerError("ERR something else".into())]);
        assert_eq!(parse_redirect("MOVED 1 [::1]:7000"), Some((false, "::1".into(), 7000)));
        assert_eq!(parse_redirect("MOVED x 127.0.0.1:7000"), None);
        assert_eq!(parse_redirect("ASK 1 127.0.0.1"), None);
        // Not sharded: nothing is kept, a MOVED is an error.
        let mut c = client(None, false);
        c.reset(&mut out);
        c.parse(b"%0\r\n", &mut out, &mut Vec::new()).unwrap();
        c.publish(b"t", b"x", &mut out).unwrap();
        events.clear();
        c.parse(b"-MOVED 3999 127.0.0.1:6381\r\n", &mut out, &mut events).unwrap();
        assert_eq!(events, vec![WireEvent::ServerError("MOVED 3999 127.0.0.1:6381".into())]);
    }
}
