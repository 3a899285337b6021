//! A sans-IO NATS core client (the text protocol of nats-server 2.x).
//!
//! Hand-written: the field's Rust clients (`async-nats`) are tied to tokio, and no maintained
//! sans-IO crate for the protocol exists; the protocol is a few text verbs. It is tested here on
//! canned bytes and in `cluster::tests` against a real `nats-server`.
//!
//! The handshake: the server sends `INFO {json}`; the client answers `CONNECT {json}` (verbose,
//! pedantic and headers off, `echo: false` so a host does not receive its own publishes) and
//! `PING`; the `PONG` that follows means CONNECT was accepted (an auth failure is `-ERR` and a
//! close instead). Keep-alive both ways: a server `PING` is answered with `PONG`, and
//! [`super::Broker::tick`] sends ours. `max_payload` from INFO bounds every PUB.
//!
//! Subjects are `host.<service>.<topic>`, the service and topic escaped into one subject token
//! each by [`escape_token`].

use std::collections::HashMap;
use std::io::Write as _;

use super::{url::ClusterUrl, ClusterError, Protocol, TopicError, WireEvent};

/// A control line (INFO can list many cluster URLs) longer than this is a protocol error.
const MAX_CONTROL_LINE: usize = 64 * 1024;
/// nats-server's default `max_payload`, until INFO says otherwise.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// A MSG announcing more than this is a protocol error whatever INFO said.
const HARD_MAX_PAYLOAD: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsOptions {
    pub user: Option<String>,
    pub pass: Option<String>,
    pub token: Option<String>,
    /// `host.<escaped service>.`
    pub prefix: Vec<u8>,
    /// An 8-byte id put in front of every payload, and messages carrying it skipped: set when
    /// several connections of one host (one per worker) must not receive each other's publishes
    /// (`echo: false` covers one connection only). None: payloads as they are.
    pub origin: Option<[u8; 8]>,
    /// The largest message taken from the broker (`topic_max_message`): a larger MSG is skipped
    /// as it arrives and reported ([`WireEvent::Oversized`]).
    pub max_message: usize,
    /// `tls://`: upgrade to TLS after the server's INFO (NATS starts in plain text), before
    /// CONNECT.
    pub tls: bool,
}

impl NatsOptions {
    pub fn from_url(url: &ClusterUrl, service: &str) -> Self {
        let mut prefix = b"host.".to_vec();
        prefix.extend_from_slice(escape_token(service.as_bytes()).as_bytes());
        prefix.push(b'.');
        Self {
            user: url.username.clone(),
            pass: url.password.clone(),
            token: url.token.clone(),
            prefix,
            origin: None,
            max_message: crate::config::DEFAULT_TOPIC_MAX_MESSAGE,
            tls: url.tls,
        }
    }
}

/// Whether a byte stands for itself in a subject token.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A topic (any bytes) as one NATS subject token: ASCII letters, digits, `-` and `_` as they are,
/// every other byte (`.`, `*`, `>`, spaces, `%`, non-ASCII) as `%XX`. Reversible by
/// [`unescape_token`]; an empty topic gives an empty token (topics are checked non-empty before).
pub fn escape_token(topic: &[u8]) -> String {
    let mut out = String::with_capacity(topic.len());
    for &b in topic {
        if plain(b) {
            out.push(b as char);
        } else {
            let _ = std::fmt::Write::write_fmt(&mut out, format_args!("%{b:02X}"));
        }
    }
    out
}

/// The inverse of [`escape_token`]; `None` for a token it cannot have produced.
#[cfg_attr(not(test), allow(dead_code, reason = "subjects come back by sid; the tests prove the mapping one-to-one"))]
pub fn unescape_token(token: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(token.len());
    let mut i = 0;
    while i < token.len() {
        match token[i] {
            b'%' => {
                let hex = std::str::from_utf8(token.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()) {
                    return None;
                }
                let b = u8::from_str_radix(hex, 16).ok()?;
                if plain(b) {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if plain(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitInfo,
    AwaitPong,
    Ready,
}

#[derive(Debug)]
pub struct NatsClient {
    options: NatsOptions,
    phase: Phase,
    max_payload: usize,
    next_sid: u64,
    topic_of_sid: HashMap<u64, Vec<u8>>,
    sid_of_topic: HashMap<Vec<u8>, u64>,
    /// Bytes of an oversized MSG's payload (and its CRLF) still to skip.
    skip: usize,
}

impl NatsClient {
    pub fn new(options: NatsOptions) -> Self {
        Self {
            options,
            phase: Phase::AwaitInfo,
            max_payload: DEFAULT_MAX_PAYLOAD,
            next_sid: 1,
            topic_of_sid: HashMap::new(),
            sid_of_topic: HashMap::new(),
            skip: 0,
        }
    }

    /// The server's `max_payload` (from its last INFO).
    #[cfg_attr(not(test), allow(dead_code, reason = "the tests look"))]
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    fn subject(&self, topic: &[u8]) -> Vec<u8> {
        let mut s = self.options.prefix.clone();
        s.extend_from_slice(escape_token(topic).as_bytes());
        s
    }

    fn on_info(&mut self, json: &[u8], out: &mut Vec<u8>, events: &mut Vec<WireEvent>) -> Result<(), ClusterError> {
        let info: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| ClusterError::Protocol(format!("INFO is not JSON: {e}")))?;
        if let Some(max) = info.get("max_payload").and_then(|v| v.as_u64()) {
            self.max_payload = usize::try_from(max).unwrap_or(usize::MAX).min(HARD_MAX_PAYLOAD);
            let ours = self.options.max_message + self.options.origin.map_or(0, |o| o.len());
            if self.phase == Phase::AwaitInfo && ours > self.max_payload {
                tracing::warn!(
                    max_payload = self.max_payload,
                    topic_max_message = self.options.max_message,
                    "the NATS server's max_payload is below topic_max_message (and an 8-byte origin): \
                     larger messages reach this host's workers only (raise max_payload in nats-server's config)"
                );
            }
        }
        if self.phase != Phase::AwaitInfo {
            return Ok(()); // an INFO update (cluster topology): nothing else to do
        }
        let server_tls = |key: &str| info.get(key).and_then(|v| v.as_bool()) == Some(true);
        if self.options.tls {
            if !server_tls("tls_required") && !server_tls("tls_available") {
                return Err(ClusterError::Refused("the NATS server does not offer TLS (use a nats:// URL)".into()));
            }
            // The driver starts the TLS handshake before it writes what follows (CONNECT).
            events.push(WireEvent::StartTls);
        } else if server_tls("tls_required") {
            return Err(ClusterError::Refused("the NATS server requires TLS: use a tls:// URL".into()));
        }
        let mut connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "headers": false,
            "echo": false,
            "tls_required": self.options.tls,
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "name": "host-cluster",
            "protocol": 1,
        });
        let o = &self.options;
        for (key, value) in [("user", &o.user), ("pass", &o.pass), ("auth_token", &o.token)] {
            if let Some(v) = value {
                connect[key] = serde_json::Value::String(v.clone());
            }
        }
        out.extend_from_slice(b"CONNECT ");
        out.extend_from_slice(connect.to_string().as_bytes());
        out.extend_from_slice(b"\r\nPING\r\n");
        self.phase = Phase::AwaitPong;
        Ok(())
    }

    /// One MSG whose control line is `args`; `body` is everything after that line.
    /// Returns the bytes of `body` used, or `None` when the payload is not all there yet.
    fn on_msg(
        &mut self,
        args: &[&[u8]],
        body: &[u8],
        events: &mut Vec<WireEvent>,
    ) -> Result<Option<usize>, ClusterError> {
        let bad = || ClusterError::Protocol(format!("bad MSG line: {:?}", args.join(&b' ')));
        let (sid, len) = match args {
            [_subject, sid, len] | [_subject, sid, _, len] => {
                (number(sid).ok_or_else(bad)?, number(len).ok_or_else(bad)?)
            }
            _ => return Err(bad()),
        };
        let len = usize::try_from(len).map_err(|_| bad())?;
        if len > HARD_MAX_PAYLOAD {
            return Err(ClusterError::Protocol(format!("a MSG of {len} bytes")));
        }
        let origin_len = self.options.origin.map_or(0, |o| o.len());
        if len > self.options.max_message + origin_len {
            // Skipped as it arrives, never buffered whole.
            self.skip = len + 2;
            events.push(WireEvent::Oversized { len: len - origin_len });
            return Ok(Some(0));
        }
        if body.len() < len + 2 {
            return Ok(None);
        }
        if &body[len..len + 2] != b"\r\n" {
            return Err(ClusterError::Protocol("a MSG payload not followed by CRLF".into()));
        }
        // A sid we unsubscribed: a message that was in flight; skipped.
        if let Some(topic) = self.topic_of_sid.get(&sid) {
            let payload = &body[..len];
            let payload = match &self.options.origin {
                None => Some(payload),
                // Ours (another connection of this host), or not published by a host: skipped.
                Some(origin) => match payload.split_at_checked(origin.len()) {
                    Some((from, rest)) if from != origin => Some(rest),
                    _ => None,
                },
            };
            if let Some(payload) = payload {
                events.push(WireEvent::Message { topic: topic.clone(), payload: payload.to_vec() });
            }
        }
        Ok(Some(len + 2))
    }
}

fn number(s: &[u8]) -> Option<u64> {
    std::str::from_utf8(s).ok()?.parse().ok()
}

impl Protocol for NatsClient {
    fn reset(&mut self, _out: &mut Vec<u8>) {
        // The server speaks first (INFO). Sids start again: the broker forgot them.
        self.phase = Phase::AwaitInfo;
        self.skip = 0;
        self.topic_of_sid.clear();
        self.sid_of_topic.clear();
    }

    fn parse(&mut self, input: &[u8], out: &mut Vec<u8>, events: &mut Vec<WireEvent>) -> Result<usize, ClusterError> {
        let mut used = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(input.len() - used);
                self.skip -= n;
                used += n;
                if self.skip > 0 {
                    return Ok(used);
                }
            }
            let rest = &input[used..];
            let Some(end) = rest.windows(2).take(MAX_CONTROL_LINE).position(|w| w == b"\r\n") else {
                if rest.len() > MAX_CONTROL_LINE {
                    return Err(ClusterError::Protocol(format!("a control line longer than {MAX_CONTROL_LINE} bytes")));
                }
                return Ok(used);
            };
            let line = &rest[..end];
            let body = &rest[end + 2..];
            let mut words = line.split(|&b| b == b' ' || b == b'\t').filter(|w| !w.is_empty());
            let verb = words.next().unwrap_or_default().to_ascii_uppercase();
            let mut advance = end + 2;
            match verb.as_slice() {
                b"MSG" => {
                    let args: Vec<&[u8]> = words.collect();
                    match self.on_msg(&args, body, events)? {
                        Some(n) => advance += n,
                        None => return Ok(used),
                    }
                }
                b"PING" => out.extend_from_slice(b"PONG\r\n"),
                b"PONG" => {
                    if self.phase == Phase::AwaitPong {
                        self.phase = Phase::Ready;
                        events.push(WireEvent::Ready);
                    } else {
                        events.push(WireEvent::Pong);
                    }
                }
                b"+OK" => {}
                b"-ERR" => {
                    let message = String::from_utf8_lossy(line[4..].trim_ascii()).trim_matches('\'').to_string();
                    if self.phase == Phase::Ready {
                        events.push(WireEvent::ServerError(message));
                    } else {
                        return Err(ClusterError::Refused(message));
                    }
                }
                b"INFO" => {
                    self.on_info(line[4..].trim_ascii(), out, events)?;
                    if events.last() == Some(&WireEvent::StartTls) {
                        // Nothing after INFO is plain text any more.
                        return Ok(used + advance);
                    }
                }
                _ => {
                    return Err(ClusterError::Protocol(format!(
                        "unexpected line {:?}",
                        String::from_utf8_lossy(&line[..line.len().min(80)])
                    )))
                }
            }
            used += advance;
        }
    }

    fn subscribe(&mut self, topic: &[u8], out: &mut Vec<u8>) {
        let sid = self.next_sid;
        self.next_sid += 1;
        out.extend_from_slice(b"SUB ");
        out.extend_from_slice(&self.subject(topic));
        let _ = write!(out, " {sid}\r\n");
        self.topic_of_sid.insert(sid, topic.to_vec());
        self.sid_of_topic.insert(topic.to_vec(), sid);
    }

    fn unsubscribe(&mut self, topic: &[u8], out: &mut Vec<u8>) {
        if let Some(sid) = self.sid_of_topic.remove(topic) {
            self.topic_of_sid.remove(&sid);
            let _ = write!(out, "UNSUB {sid}\r\n");
        }
    }

    fn publish(&mut self, topic: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), TopicError> {
        let origin = self.options.origin.as_ref().map_or(&[][..], |o| o.as_slice());
        let len = origin.len() + payload.len();
        if len > self.max_payload {
            return Err(TopicError::TooLarge { len, max: self.max_payload });
        }
        out.extend_from_slice(b"PUB ");
        out.extend_from_slice(&self.subject(topic));
        let _ = write!(out, " {len}\r\n");
        out.extend_from_slice(origin);
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        Ok(())
    }

    fn ping(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"PING\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> NatsClient {
        let url = crate::cluster::url::parse("nats://me:pw@127.0.0.1:4222").unwrap();
        NatsClient::new(NatsOptions::from_url(&url, "chat app"))
    }

    fn ready(c: &mut NatsClient) -> Vec<u8> {
        let mut out = Vec::new();
        c.reset(&mut out);
        let info = b"INFO {\"server_id\":\"x\",\"max_payload\":16,\"proto\":1}\r\n";
        c.parse(info, &mut out, &mut Vec::new()).unwrap();
        let mut events = Vec::new();
        c.parse(b"PONG\r\n", &mut out, &mut events).unwrap();
        assert_eq!(events, vec![WireEvent::Ready]);
        out
    }

    #[test]
    fn escaping_is_reversible_and_makes_one_token() {
        for topic in [&b"room-1_a"[..], b"a.b", b"*", b">", b"a b\tc", b"100%", b"\xff\x00", "café".as_bytes()] {
            let token = escape_token(topic);
            assert!(token.bytes().all(|b| b.is_ascii_graphic() && !b".*>".contains(&b)), "{token}");
            assert_eq!(unescape_token(token.as_bytes()).as_deref(), Some(topic), "{token}");
        }
        assert_eq!(escape_token(b"a.b*c>d e%"), "a%2Eb%2Ac%3Ed%20e%25");
        // Not produced by escape_token: refused, so the mapping is one-to-one.
        for bad in [&b"a.b"[..], b"%41", b"%2e", b"%2", b"a b"] {
            assert_eq!(unescape_token(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn handshake_sends_connect_and_ping_after_info() {
        let mut c = client();
        let out = ready(&mut c);
        let text = String::from_utf8(out).unwrap();
        let json = text.strip_prefix("CONNECT ").unwrap().strip_suffix("\r\nPING\r\n").unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["verbose"], false);
        assert_eq!(v["pedantic"], false);
        assert_eq!(v["headers"], false);
        assert_eq!(v["echo"], false);
        assert_eq!((v["user"].as_str(), v["pass"].as_str()), (Some("me"), Some("pw")));
        assert_eq!(c.max_payload(), 16);
    }

    #[test]
    fn auth_error_before_ready_refuses_and_tls_required_is_clear() {
        let mut c = client();
        let mut out = Vec::new();
        c.reset(&mut out);
        c.parse(b"INFO {}\r\n", &mut out, &mut Vec::new()).unwrap();
        let err = c.parse(b"-ERR 'Authorization Violation'\r\n", &mut out, &mut Vec::new());
        assert_eq!(err, Err(ClusterError::Refused("Authorization Violation".into())));
        c.reset(&mut out);
        let err = c.parse(b"INFO {\"tls_required\":true}\r\n", &mut out, &mut Vec::new());
        assert!(matches!(err, Err(ClusterError::Refused(m)) if m.contains("tls://")));
        let url = crate::cluster::url::parse("tls://127.0.0.1:4222").unwrap();
        let mut c = NatsClient::new(NatsOptions::from_url(&url, "s"));
        let mut events = Vec::new();
        assert!(
            matches!(c.parse(b"INFO {}\r\n", &mut out, &mut events), Err(ClusterError::Refused(m)) if m.contains("TLS"))
        );
        out.clear();
        let info = b"INFO {\"tls_required\":true}\r\n";
        assert_eq!(c.parse(&[&info[..], b"\x16\x03"].concat(), &mut out, &mut events).unwrap(), info.len());
        assert_eq!(events, [WireEvent::StartTls], "the TLS bytes after INFO are left to the driver");
        assert!(out.starts_with(b"CONNECT {") && String::from_utf8_lossy(&out).contains("\"tls_required\":true"));
    }

    #[test]
    fn sub_pub_msg_with_exact_lengths() {
        let mut c = client();
        ready(&mut c);
        let mut out = Vec::new();
        c.subscribe(b"room.1", &mut out);
        c.publish(b"room.1", b"a\r\nb", &mut out).unwrap();
        assert_eq!(out, b"SUB host.chat%20app.room%2E1 1\r\nPUB host.chat%20app.room%2E1 4\r\na\r\nb\r\n");
        // A payload containing CRLF and "MSG", split across reads; a server PING in between.
        let input = b"MSG host.chat%20app.room%2E1 1 6\r\nMSG\r\nx\r\nPING\r\nmsg host.x 1 reply.to 0\r\n\r\n";
        let mut events = Vec::new();
        out.clear();
        assert_eq!(c.parse(&input[..30], &mut out, &mut events).unwrap(), 0);
        assert_eq!(c.parse(&input[..40], &mut out, &mut events).unwrap(), 0);
        assert_eq!(c.parse(input, &mut out, &mut events).unwrap(), input.len());
        assert_eq!(out, b"PONG\r\n");
        assert_eq!(
            events,
            vec![
                WireEvent::Message { topic: b"room.1".to_vec(), payload: b"MSG\r\nx".to_vec() },
                WireEvent::Message { topic: b"room.1".to_vec(), payload: Vec::new() },
            ]
        );
        // After UNSUB, a message in flight on the old sid is skipped.
        out.clear();
        c.unsubscribe(b"room.1", &mut out);
        assert_eq!(out, b"UNSUB 1\r\n");
        events.clear();
        c.parse(b"MSG host.x 1 1\r\nz\r\n", &mut out, &mut events).unwrap();
        assert!(events.is_empty());
    }

    // With an origin, payloads carry it and what carries ours (another connection of this host)
    // is skipped.
    #[test]
    fn an_origin_prefixes_payloads_and_skips_our_own() {
        let url = crate::cluster::url::parse("nats://127.0.0.1:4222").unwrap();
        let mut c = NatsClient::new(NatsOptions { origin: Some(*b"ORIGIN01"), ..NatsOptions::from_url(&url, "s") });
        ready(&mut c);
        let mut out = Vec::new();
        c.subscribe(b"t", &mut out);
        out.clear();
        c.publish(b"t", b"hi", &mut out).unwrap();
        assert_eq!(out, b"PUB host.s.t 10\r\nORIGIN01hi\r\n");
        let mut events = Vec::new();
        let input =
            b"MSG host.s.t 1 10\r\nORIGIN01me\r\nMSG host.s.t 1 10\r\nORIGIN02it\r\nMSG host.s.t 1 3\r\nabc\r\n";
        c.parse(input, &mut out, &mut events).unwrap();
        assert_eq!(events, vec![WireEvent::Message { topic: b"t".to_vec(), payload: b"it".to_vec() }]);
    }

    #[test]
    fn an_oversized_msg_is_skipped_as_it_arrives_and_the_stream_stays_in_sync() {
        let url = crate::cluster::url::parse("nats://127.0.0.1:4222").unwrap();
        let mut c = NatsClient::new(NatsOptions { max_message: 1000, ..NatsOptions::from_url(&url, "s") });
        ready(&mut c);
        let mut out = Vec::new();
        c.subscribe(b"t", &mut out);
        let mut input = b"MSG host.s.t 1 100000\r\n".to_vec();
        input.extend(vec![b'x'; 100_000]);
        input.extend_from_slice(b"\r\nMSG host.s.t 1 5\r\nafter\r\n");
        let (mut held, mut most, mut events) = (Vec::new(), 0, Vec::new());
        for piece in input.chunks(4096) {
            held.extend_from_slice(piece);
            most = most.max(held.len());
            let used = c.parse(&held, &mut out, &mut events).unwrap();
            held.drain(..used);
        }
        assert!(held.is_empty() && most <= 4096, "held {most} bytes at once");
        assert_eq!(
            events,
            vec![
                WireEvent::Oversized { len: 100_000 },
                WireEvent::Message { topic: b"t".to_vec(), payload: b"after".to_vec() }
            ]
        );
    }

    #[test]
    fn over_max_payload_refused_and_bad_input_is_an_error() {
        let mut c = client();
        ready(&mut c);
        let mut out = Vec::new();
        assert_eq!(c.publish(b"t", &[0; 17], &mut out), Err(TopicError::TooLarge { len: 17, max: 16 }));
        assert!(out.is_empty());
        let mut events = Vec::new();
        assert!(c.parse(b"MSG s 1 3\r\nabcd\r\n", &mut out, &mut events).is_err());
        assert!(c.parse(b"MSG s x 3\r\nabc\r\n", &mut out, &mut events).is_err());
        assert!(c.parse(b"BOGUS\r\n", &mut out, &mut events).is_err());
        assert!(c.parse(&vec![b'x'; MAX_CONTROL_LINE + 2], &mut out, &mut events).is_err());
        c.parse(b"-ERR 'Permissions Violation for Publish to x'\r\n", &mut out, &mut events).unwrap();
        assert_eq!(events, vec![WireEvent::ServerError("Permissions Violation for Publish to x".into())]);
    }
}
