//! A pattern subscriber's hand-over through the plugin's events (a test host): its patterns
//! move and are heard in the new instance, the host is told it hears them (`handover_hears`),
//! and what it missed goes to it alone (`on_publish_missed`).

use plugin_api::abi::WORKER_CONN;
use plugin_api::testing::TestPlugin;
use plugin_api::ConnId;

use crate::pubsub::{pattern_payload, PATTERN_TOPIC};
use crate::Resp;

/// A command as a client sends it.
fn cmd(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

fn pmessage(pattern: &str, channel: &str, msg: &str, resp3: bool) -> Vec<u8> {
    let mut out = Vec::new();
    crate::pubsub::pmessage(&mut out, pattern.as_bytes(), channel.as_bytes(), msg.as_bytes(), resp3);
    out
}

fn new_id(moved: &[(ConnId, ConnId)], old: ConnId) -> ConnId {
    moved.iter().find(|(o, _)| *o == old).expect("moved").1
}

#[test]
fn a_pattern_subscriber_moves_with_its_patterns_and_hears_what_it_missed() {
    let mut old = TestPlugin::<Resp>::new("").unwrap();
    let (two, three, plain) = (old.connect(), old.connect(), old.connect());
    old.feed(two, &cmd(&["PSUBSCRIBE", "news.*", "n*"]));
    old.feed(two, &cmd(&["SUBSCRIBE", "chat"]));
    old.feed(three, &cmd(&["HELLO", "3"]));
    old.feed(three, &cmd(&["PSUBSCRIBE", "news.*"]));
    for c in [two, three, plain] {
        old.host.take_sent(c);
    }
    let mut new = TestPlugin::<Resp>::new("").unwrap();
    let moved = old.hand_over_to(&mut new, &[two, three, plain]).unwrap();
    assert_eq!(moved.len(), 3);
    let heard = [(two, PATTERN_TOPIC.to_vec()), (three, PATTERN_TOPIC.to_vec())];
    assert_eq!(old.host.hears, heard, "the pattern subscribers declared what they hear, the other not");
    let (two, three, plain) = (new_id(&moved, two), new_id(&moved, three), new_id(&moved, plain));
    assert!(new.host.worker_subscribed(PATTERN_TOPIC), "the new worker listens for its patterns");
    assert_eq!(new.host.topics_of(two), [b"2:chat".to_vec()], "the channel, a host topic");

    // Missed across the move: to that connection alone, one pmessage per matching pattern.
    new.publish_missed(two, PATTERN_TOPIC, &pattern_payload(b"news.a", b"m1"));
    assert_eq!(
        new.host.take_sent(two),
        [pmessage("news.*", "news.a", "m1", false), pmessage("n*", "news.a", "m1", false)].concat()
    );
    assert!(new.host.take_sent(three).is_empty() && new.host.take_sent(plain).is_empty());
    new.publish_missed(three, PATTERN_TOPIC, &pattern_payload(b"nope", b"m1"));
    assert!(new.host.take_sent(three).is_empty(), "no pattern of its matches");

    // Live: every pattern subscriber, framed for its protocol.
    new.publish(PATTERN_TOPIC, &pattern_payload(b"news.b", b"m2"));
    assert_eq!(
        new.host.take_sent(two),
        [pmessage("news.*", "news.b", "m2", false), pmessage("n*", "news.b", "m2", false)].concat()
    );
    assert_eq!(new.host.take_sent(three), pmessage("news.*", "news.b", "m2", true));

    // Subscribe mode and its counts go on: a RESP2 subscriber's PING is the pong message, its
    // next subscription the fourth.
    new.feed(two, &cmd(&["PING"]));
    assert_eq!(new.host.take_sent(two), b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    new.feed(two, &cmd(&["PSUBSCRIBE", "x"]));
    assert_eq!(new.host.take_sent(two), b"*3\r\n$10\r\npsubscribe\r\n$1\r\nx\r\n:4\r\n");
    // Its last pattern gone, the worker stops listening once the other one's are gone too.
    new.feed(two, &cmd(&["PUNSUBSCRIBE"]));
    new.feed(three, &cmd(&["PUNSUBSCRIBE"]));
    assert!(!new.host.worker_subscribed(PATTERN_TOPIC));
}

// A host that cannot keep the seam for it (here: the worker does not listen on the pattern
// topic, so `handover_hears` answers false): the pattern subscriber declines and drains.
#[test]
fn a_pattern_subscriber_stays_when_the_host_cannot_keep_its_seam() {
    let mut old = TestPlugin::<Resp>::new("").unwrap();
    let (p, c) = (old.connect(), old.connect());
    old.feed(p, &cmd(&["PSUBSCRIBE", "a*"]));
    old.feed(c, &cmd(&["SUBSCRIBE", "a"]));
    old.host.subscriptions.remove(PATTERN_TOPIC);
    let mut new = TestPlugin::<Resp>::new("").unwrap();
    let moved = old.hand_over_to(&mut new, &[p, c]).unwrap();
    assert_eq!(moved.iter().map(|m| m.0).collect::<Vec<_>>(), [c]);
    assert!(!new.host.subscriptions.get(PATTERN_TOPIC).is_some_and(|s| s.contains(&WORKER_CONN)));
}
