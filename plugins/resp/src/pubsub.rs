//! `SUBSCRIBE`, `UNSUBSCRIBE` and `PUBLISH` on the host's topics: a message published on any
//! worker of the service, or on any host of its cluster (`--cluster`), reaches every subscribed
//! client, with no plugin call per recipient.
//!
//! The host writes a topic's bytes to its subscribers as they were published, and RESP2 and
//! RESP3 clients frame a message differently (`*3` array, `>3` push), so each channel is two
//! topics: `2:<channel>` for RESP2 subscribers and `3:<channel>` for RESP3 ones. `PUBLISH` frames
//! the message once for each and publishes both. Its answer counts the subscribers of this worker
//! only (Redis counts every receiver; here the others are on other workers and hosts, and are not
//! waited for).
//!
//! A RESP2 connection with subscriptions accepts only `(UN)SUBSCRIBE`, `PING` and `QUIT`, as
//! Redis; a RESP3 one runs every command. Not done: patterns (`PSUBSCRIBE`) and sharded channels
//! (`SSUBSCRIBE`, `SPUBLISH`) answer an error. A subscribed connection is not handed over to a
//! new worker on a reload (it drains on the old one; redis clients reconnect and resubscribe).
//! The service's topic limits apply: a channel name is at most `topic_max_len` bytes minus 2, a
//! connection has at most `topics_per_connection` channels, a message at most
//! `topic_max_message` bytes with its framing.

use plugin_api::{ConnId, Host, TopicError};

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

/// Runs `args` when it is a pub/sub command, or refuses what a RESP2 connection with
/// `channels` may not run; `channels`: the connection's subscriptions, in order.
pub fn command(
    host: &mut Host<'_>,
    conn: ConnId,
    channels: &mut Vec<Vec<u8>>,
    resp3: bool,
    args: ArgsView<'_>,
    out: &mut Vec<u8>,
) -> Outcome {
    if args.is_empty() {
        return Outcome::NotPubSub;
    }
    // Most commands are none of these: told apart by their first letter before any allocation.
    let first = args.get(0).first().map_or(0, u8::to_ascii_lowercase);
    if !matches!(first, b's' | b'u' | b'p') && (channels.is_empty() || resp3) {
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
                        if !channels.iter().any(|c| c == channel) {
                            channels.push(channel.to_vec());
                        }
                        confirm(out, resp3, b"subscribe", Some(channel), channels.len());
                    }
                    Err(e) => topic_error(&mut Reply::new(out, resp3), e),
                }
            }
            Outcome::Done
        }
        b"unsubscribe" => {
            let named: Vec<Vec<u8>> = match args.len() {
                1 => channels.clone(),
                _ => args.iter().skip(1).map(<[u8]>::to_vec).collect(),
            };
            if named.is_empty() {
                confirm(out, resp3, b"unsubscribe", None, 0);
            }
            for channel in named {
                let _ = host.unsubscribe(conn, topic(&channel, resp3));
                channels.retain(|c| *c != channel);
                confirm(out, resp3, b"unsubscribe", Some(&channel), channels.len());
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
            Reply::new(out, resp3).int(reached as i64);
            Outcome::Done
        }
        b"psubscribe" | b"punsubscribe" | b"ssubscribe" | b"sunsubscribe" | b"spublish" => {
            let name = String::from_utf8_lossy(&name).into_owned();
            Reply::new(out, resp3).error(&format!("ERR '{name}' is not supported: channels only (SUBSCRIBE, PUBLISH)"));
            Outcome::Done
        }
        _ if channels.is_empty() || resp3 => Outcome::NotPubSub,
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
    }
}
