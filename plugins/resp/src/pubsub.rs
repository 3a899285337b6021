//! `SUBSCRIBE`, `UNSUBSCRIBE`, `PSUBSCRIBE`, `PUNSUBSCRIBE` and `PUBLISH` on the host's topics: a
//! message published on any worker of the service, or on any host of its cluster (`--cluster`),
//! reaches every subscribed client.
//!
//! **Channels.** The host writes a topic's bytes to its subscribers as they were published, and
//! RESP2 and RESP3 clients frame a message differently (`*3` array, `>3` push), so each channel
//! is two topics: `2:<channel>` for RESP2 subscribers and `3:<channel>` for RESP3 ones.
//! `PUBLISH` frames the message once for each and publishes both: no plugin call per recipient.
//!
//! **Patterns.** The host's topics have no wildcards, so `PUBLISH` publishes a third message,
//! the channel and the payload on the topic [`PATTERN_TOPIC`], and a worker with pattern
//! subscribers listens to it itself (`subscribe_worker`, made when its first pattern comes and
//! ended with its last): its `on_publish` sees each message once, matches it against each of
//! its distinct patterns once ([`crate::glob`], Redis' matcher), frames a `pmessage` once per
//! matching pattern and protocol and sends it to that pattern's subscribers. The cost is one
//! more topic message per `PUBLISH` between the workers (and to the broker), and per message
//! one match per distinct pattern of a worker that has any; a worker without patterns does not
//! hear them. A connection has at most [`MAX_PATTERNS`] patterns of at most [`MAX_PATTERN_LEN`]
//! bytes.
//!
//! **What `PUBLISH` answers** is the number of receivers on this worker: its subscribers of the
//! channel and of matching patterns. Redis counts every receiver of the server; the host's other
//! workers and hosts are separate processes that learn of the message after `PUBLISH` has
//! answered, and an exact count would hold every `PUBLISH` for a round trip to each of them (and
//! to every host through the broker). So it counts as Redis Cluster does, whose `PUBLISH` counts
//! the receivers on the node it ran on.
//!
//! A RESP2 connection with subscriptions accepts only `(P)(UN)SUBSCRIBE`, `PING` and `QUIT`, as
//! Redis; a RESP3 one runs every command. Not done: sharded channels (`SSUBSCRIBE`, `SPUBLISH`)
//! answer an error. A subscribed connection is handed over to a new worker on a reload with its
//! channels and its patterns ([`crate::handover`]): it stays open and hears every message once,
//! in order. Its channels are host topics: the host's hand-over seam writes them. Its patterns
//! are this plugin's delivery: its export tells the host it hears [`PATTERN_TOPIC`] through
//! `on_publish` (`Host::handover_hears`; a host that cannot answers false and the connection
//! drains); the new instance's adoption registers its patterns (the worker listens from the
//! first), the host then brings what it missed across the move to `on_publish_missed`, which
//! sends that connection alone its `pmessage`s ([`Patterns::deliver_to`]), and drops a send of
//! `on_publish` of a message it had already. The service's topic limits
//! apply to channels: a channel name is at most `topic_max_len` bytes minus 2, a connection has
//! at most `topics_per_connection` channels, a message at most `topic_max_message` bytes with
//! its framing.

use indexmap::{IndexMap, IndexSet};
use plugin_api::{ConnId, Host, TopicError};

use crate::glob::glob_match;
use crate::proto::ArgsView;
use crate::reply::Reply;

/// What [`command`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a pub/sub command, and allowed: the caller runs it.
    NotPubSub,
    /// Answered (in `out`).
    Done,
    /// `QUIT` while subscribed: answered; close after the reply.
    Close,
}

/// The topic of `channel` for subscribers speaking RESP3 (`resp3`) or RESP2.
pub fn topic(channel: &[u8], resp3: bool) -> Vec<u8> {
    [if resp3 { &b"3:"[..] } else { &b"2:"[..] }, channel].concat()
}

/// A message on `channel` as a subscriber of `resp3` receives it.
pub fn message(channel: &[u8], msg: &[u8], resp3: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(channel.len() + msg.len() + 32);
    out.extend_from_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
    let mut r = Reply::new(&mut out, resp3);
    r.bulk(b"message");
    r.bulk(channel);
    r.bulk(msg);
    out
}

/// `*3`/`>3` kind, channel (or null), count: a (un)subscribe confirmation.
fn confirm(out: &mut Vec<u8>, resp3: bool, kind: &[u8], channel: Option<&[u8]>, count: usize) {
    out.extend_from_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
    let mut r = Reply::new(out, resp3);
    r.bulk(kind);
    match channel {
        Some(c) => r.bulk(c),
        None => r.null(),
    }
    r.int(count as i64);
}

fn topic_error(r: &mut Reply<'_>, e: TopicError) {
    r.error(match e {
        TopicError::Unsupported => "ERR pub/sub needs a host with topics (plugin-api 0.1.4 or later)",
        TopicError::InvalidTopic => "ERR the channel name is longer than this server allows (topic_max_len)",
        TopicError::TooManyTopics => "ERR too many channels on one connection (topics_per_connection)",
        TopicError::TooLarge => "ERR the message is larger than this server allows (topic_max_message)",
        _ => "ERR the subscription was refused",
    });
}

/// The topic a `PUBLISH` also goes to for pattern subscribers: `u32` channel length (LE), the
/// channel, the message. Channel topics start with `2:` or `3:`: no channel meets it.
pub const PATTERN_TOPIC: &[u8] = b"*";

/// Patterns per connection (Redis has no limit; this bounds what one client makes every
/// message cost).
pub const MAX_PATTERNS: usize = plugin_api::MAX_TOPICS_PER_CONN;

/// The longest pattern.
pub const MAX_PATTERN_LEN: usize = plugin_api::MAX_TOPIC_LEN;

/// A connection's subscriptions, each in the order it was made.
#[derive(Debug, Default)]
pub struct Subscriptions {
    pub channels: Vec<Vec<u8>>,
    pub patterns: Vec<Vec<u8>>,
}

impl Subscriptions {
    /// Redis' count in confirmations: channels and patterns.
    pub fn count(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

    /// Not in subscribe mode.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.patterns.is_empty()
    }
}

/// The worker's pattern subscribers: each distinct pattern with its subscribers, RESP2 ones and
/// RESP3 ones.
#[derive(Debug, Default)]
pub struct Patterns {
    by_pattern: IndexMap<Vec<u8>, [IndexSet<ConnId>; 2]>,
}

impl Patterns {
    /// Subscribes `conn` to `pattern`; the worker starts listening with its first pattern.
    pub fn add(&mut self, host: &mut Host<'_>, pattern: &[u8], conn: ConnId, resp3: bool) -> Result<(), TopicError> {
        if self.by_pattern.is_empty() {
            host.subscribe_worker(PATTERN_TOPIC)?;
        }
        self.by_pattern.entry(pattern.to_vec()).or_default()[resp3 as usize].insert(conn);
        Ok(())
    }

    /// Ends `conn`'s subscription to `pattern`; the worker stops listening with its last.
    pub fn remove(&mut self, host: &mut Host<'_>, pattern: &[u8], conn: ConnId, resp3: bool) {
        let Some(subs) = self.by_pattern.get_mut(pattern) else { return };
        subs[resp3 as usize].swap_remove(&conn);
        if subs.iter().all(IndexSet::is_empty) {
            self.by_pattern.swap_remove(pattern);
            if self.by_pattern.is_empty() {
                let _ = host.unsubscribe_worker(PATTERN_TOPIC);
            }
        }
    }

    /// `conn` switched protocols (`HELLO`): its patterns' messages are framed for the new one.
    pub fn switch(&mut self, patterns: &[Vec<u8>], conn: ConnId, resp3: bool) {
        for pattern in patterns {
            if let Some(subs) = self.by_pattern.get_mut(&pattern[..]) {
                subs[!resp3 as usize].swap_remove(&conn);
                subs[resp3 as usize].insert(conn);
            }
        }
    }

    /// How many subscriptions of this worker's connections a message on `channel` reaches.
    pub fn receivers(&self, channel: &[u8]) -> usize {
        self.by_pattern
            .iter()
            .filter(|(pattern, _)| glob_match(pattern, channel, false))
            .map(|(_, subs)| subs[0].len() + subs[1].len())
            .sum()
    }

    /// A message on [`PATTERN_TOPIC`] (`payload`, as [`pattern_payload`] made it): sent to the
    /// subscribers of every matching pattern, framed once per pattern and protocol.
    pub fn deliver(&self, host: &mut Host<'_>, payload: &[u8], out: &mut Vec<u8>) {
        let Some((channel, msg)) = split_pattern_payload(payload) else {
            plugin_api::tracing::warn!("a malformed pattern message was skipped");
            return;
        };
        for (pattern, subs) in &self.by_pattern {
            if !glob_match(pattern, channel, false) {
                continue;
            }
            for (resp3, subs) in [(false, &subs[0]), (true, &subs[1])] {
                if subs.is_empty() {
                    continue;
                }
                out.clear();
                pmessage(out, pattern, channel, msg, resp3);
                for &conn in subs {
                    host.send(conn, out);
                }
            }
        }
    }
}

impl Patterns {
    /// A message on [`PATTERN_TOPIC`] that `conn` (speaking `resp3`) missed across a hand-over
    /// (`on_publish_missed`): the `pmessage`s of its matching patterns, to it alone, in the
    /// order [`Patterns::deliver`] sends them.
    pub fn deliver_to(&self, host: &mut Host<'_>, conn: ConnId, resp3: bool, payload: &[u8], out: &mut Vec<u8>) {
        let Some((channel, msg)) = split_pattern_payload(payload) else {
            plugin_api::tracing::warn!("a malformed pattern message was skipped");
            return;
        };
        for (pattern, subs) in &self.by_pattern {
            if subs[resp3 as usize].contains(&conn) && glob_match(pattern, channel, false) {
                out.clear();
                pmessage(out, pattern, channel, msg, resp3);
                host.send(conn, out);
            }
        }
    }
}

/// What `PUBLISH` sends on [`PATTERN_TOPIC`].
pub fn pattern_payload(channel: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + channel.len() + msg.len());
    out.extend_from_slice(&(channel.len() as u32).to_le_bytes());
    out.extend_from_slice(channel);
    out.extend_from_slice(msg);
    out
}

/// The channel and the message of a [`pattern_payload`]; None when malformed.
pub fn split_pattern_payload(payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = payload.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_le_bytes(*len)).ok()?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// `pmessage pattern channel message` as a subscriber of `resp3` receives it.
pub fn pmessage(out: &mut Vec<u8>, pattern: &[u8], channel: &[u8], msg: &[u8], resp3: bool) {
    out.extend_from_slice(if resp3 { b">4\r\n" } else { b"*4\r\n" });
    let mut r = Reply::new(out, resp3);
    r.bulk(b"pmessage");
    r.bulk(pattern);
    r.bulk(channel);
    r.bulk(msg);
}

/// Runs `args` when it is a pub/sub command, or refuses what a RESP2 connection with
/// subscriptions (`subs`) may not run.
pub fn command(
    host: &mut Host<'_>,
    conn: ConnId,
    subs: &mut Subscriptions,
    patterns: &mut Patterns,
    resp3: bool,
    args: ArgsView<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    if args.is_empty() {
        return Outcome::NotPubSub;
    }
    // Most commands are none of these: told apart by their first letter before any allocation.
    let first = args.get(0).first().map_or(0, u8::to_ascii_lowercase);
    if !matches!(first, b's' | b'u' | b'p') && (subs.is_empty() || resp3) {
        return Outcome::NotPubSub;
    }
    let name = args.get(0).to_ascii_lowercase();
    match name.as_slice() {
        b"subscribe" => {
            if args.len() < 2 {
                return wrong_arity(out, resp3, "subscribe");
            }
            for channel in args.iter().skip(1) {
                match host.subscribe(conn, topic(channel, resp3)) {
                    Ok(_) => {
                        if !subs.channels.iter().any(|c| c == channel) {
                            subs.channels.push(channel.to_vec());
                        }
                        confirm(out, resp3, b"subscribe", Some(channel), subs.count());
                    }
                    Err(e) => topic_error(&mut Reply::new(out, resp3), e),
                }
            }
            Outcome::Done
        }
        b"psubscribe" => {
            if args.len() < 2 {
                return wrong_arity(out, resp3, "psubscribe");
            }
            for pattern in args.iter().skip(1) {
                if !subs.patterns.iter().any(|p| p == pattern) {
                    let mut r = Reply::new(out, resp3);
                    if pattern.len() > MAX_PATTERN_LEN {
                        r.error(&format!("ERR the pattern is longer than {MAX_PATTERN_LEN} bytes"));
                        continue;
                    }
                    if subs.patterns.len() >= MAX_PATTERNS {
                        r.error(&format!("ERR too many patterns on one connection (at most {MAX_PATTERNS})"));
                        continue;
                    }
                    if let Err(e) = patterns.add(host, pattern, conn, resp3) {
                        topic_error(&mut r, e);
                        continue;
                    }
                    subs.patterns.push(pattern.to_vec());
                }
                confirm(out, resp3, b"psubscribe", Some(pattern), subs.count());
            }
            Outcome::Done
        }
        b"unsubscribe" | b"punsubscribe" => {
            // Without arguments: every channel (pattern) it has.
            let of_patterns = name[0] == b'p';
            let named: Vec<Vec<u8>> = match args.len() {
                1 if of_patterns => subs.patterns.clone(),
                1 => subs.channels.clone(),
                _ => args.iter().skip(1).map(<[u8]>::to_vec).collect(),
            };
            if named.is_empty() {
                confirm(out, resp3, &name, None, subs.count());
            }
            for item in named {
                if of_patterns {
                    if subs.patterns.contains(&item) {
                        patterns.remove(host, &item, conn, resp3);
                        subs.patterns.retain(|p| *p != item);
                    }
                } else {
                    let _ = host.unsubscribe(conn, topic(&item, resp3));
                    subs.channels.retain(|c| *c != item);
                }
                confirm(out, resp3, &name, Some(&item), subs.count());
            }
            Outcome::Done
        }
        b"publish" => {
            if args.len() != 3 {
                return wrong_arity(out, resp3, "publish");
            }
            let (channel, msg) = (args.get(1), args.get(2));
            let mut reached = 0;
            for framing in [false, true] {
                match host.publish(topic(channel, framing), &message(channel, msg, framing)) {
                    Ok(n) => reached += n,
                    Err(e) => {
                        topic_error(&mut Reply::new(out, resp3), e);
                        return Outcome::Done;
                    }
                }
            }
            // For the pattern subscribers of every worker; this worker's are counted here (its
            // `on_publish` hears the message after this command).
            if let Err(e) = host.publish(PATTERN_TOPIC, &pattern_payload(channel, msg)) {
                topic_error(&mut Reply::new(out, resp3), e);
                return Outcome::Done;
            }
            reached += patterns.receivers(channel);
            Reply::new(out, resp3).int(reached as i64);
            Outcome::Done
        }
        b"ssubscribe" | b"sunsubscribe" | b"spublish" => {
            let name = String::from_utf8_lossy(&name).into_owned();
            Reply::new(out, resp3).error(&format!(
                "ERR '{name}' is not supported: channels and patterns only (SUBSCRIBE, PSUBSCRIBE, PUBLISH)"
            ));
            Outcome::Done
        }
        _ if subs.is_empty() || resp3 => Outcome::NotPubSub,
        b"ping" => {
            // RESP2 in subscribe mode: a `pong` message rather than `+PONG`.
            out.extend_from_slice(b"*2\r\n");
            let mut r = Reply::new(out, false);
            r.bulk(b"pong");
            r.bulk(if args.len() > 1 { args.get(1) } else { b"" });
            Outcome::Done
        }
        b"quit" => {
            Reply::new(out, resp3).ok();
            Outcome::Close
        }
        _ => {
            let name = String::from_utf8_lossy(&name).into_owned();
            Reply::new(out, resp3).error(&format!(
                "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
            ));
            Outcome::Done
        }
    }
}

fn wrong_arity(out: &mut Vec<u8>, resp3: bool, name: &str) -> Outcome {
    Reply::new(out, resp3).error(&format!("ERR wrong number of arguments for '{name}' command"));
    Outcome::Done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_confirmations_are_framed_per_protocol() {
        assert_eq!(message(b"ch", b"hi", false), b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n");
        assert_eq!(message(b"ch", b"hi", true), b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n");
        let mut out = Vec::new();
        confirm(&mut out, false, b"unsubscribe", None, 0);
        confirm(&mut out, true, b"subscribe", Some(b"a"), 1);
        assert_eq!(out, b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
        out.clear();
        pmessage(&mut out, b"n*", b"news", b"hi", false);
        assert_eq!(out, b"*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$2\r\nhi\r\n");
    }

    #[test]
    fn pattern_payloads_split_back_and_garbage_is_refused() {
        let payload = pattern_payload(b"news", b"\x00\x01hi");
        assert_eq!(split_pattern_payload(&payload), Some((&b"news"[..], &b"\x00\x01hi"[..])));
        assert_eq!(split_pattern_payload(&pattern_payload(b"", b"")), Some((&b""[..], &b""[..])));
        assert_eq!(split_pattern_payload(&payload[..6]), None);
        assert_eq!(split_pattern_payload(b"\x01"), None);
    }
}
