//! Topics: publish/subscribe between the connections of every worker of a service, and of every
//! host of its cluster ([`Host::subscribe`], [`Host::publish`], [`crate::Protocol::on_publish`]).

use abi_stable::std_types::RSlice;

use super::Host;
use crate::abi::{ConnId, TopicStatus, WORKER_CONN};

/// Why a topic call was refused. More reasons may come: match with `_ =>`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// The host has no topics (older than plugin-api 0.1.4).
    Unsupported,
    /// The topic is empty or longer than the service allows ([`crate::MAX_TOPIC_LEN`] bytes by
    /// default; the host's `topic_max_len`).
    InvalidTopic,
    /// The connection is subscribed to as many topics as the service allows
    /// ([`crate::MAX_TOPICS_PER_CONN`] by default; the host's `topics_per_connection`).
    TooManyTopics,
    /// No such connection, or one that takes no output any more (closing).
    NoConnection,
    /// The message is larger than the service allows ([`crate::MAX_PUBLISH`] bytes by
    /// default; the host's `topic_max_message`).
    TooLarge,
}

impl std::fmt::Display for TopicError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TopicError::Unsupported => "the host has no topics",
            TopicError::InvalidTopic => "a topic is empty or longer than the service allows",
            TopicError::TooManyTopics => "the connection is subscribed to too many topics",
            TopicError::NoConnection => "no such connection",
            TopicError::TooLarge => "the message is larger than the service allows (topic_max_message)",
        })
    }
}

impl std::error::Error for TopicError {}

fn topic_result(answer: i64) -> Result<u64, TopicError> {
    match answer {
        n if n >= 0 => Ok(n as u64),
        n if n == TopicStatus::INVALID_TOPIC.0 as i64 => Err(TopicError::InvalidTopic),
        n if n == TopicStatus::TOO_MANY_TOPICS.0 as i64 => Err(TopicError::TooManyTopics),
        n if n == TopicStatus::NO_CONNECTION.0 as i64 => Err(TopicError::NoConnection),
        n if n == TopicStatus::TOO_LARGE.0 as i64 => Err(TopicError::TooLarge),
        // UNSUPPORTED, and any status this SDK does not know.
        _ => Err(TopicError::Unsupported),
    }
}

impl Host<'_> {
    /// Runs `f` on the host's extension, or answers "unsupported" from a host without it (or
    /// whose extension's layout does not match this one's).
    fn with_ext(&mut self, f: impl FnOnce(&mut crate::abi::RawHostExtRef<'_>) -> i64) -> i64 {
        let mut ext = self.raw.extension();
        match ext.check() {
            Ok(()) => f(&mut ext.ext),
            Err(_) => TopicStatus::UNSUPPORTED.0 as i64,
        }
    }

    /// Subscribes `conn` to `topic`: every message published on it, by any worker of the service
    /// on any host of its cluster, is written to the connection as it was published (the
    /// publisher frames it for the subscribers' protocol). `Ok(true)` when subscribed now,
    /// `Ok(false)` when it was already. The subscription ends with the connection (or
    /// [`Host::unsubscribe`]); it does not survive a crash of the worker. A topic is 1 to
    /// [`crate::MAX_TOPIC_LEN`] bytes and a connection has at most [`crate::MAX_TOPICS_PER_CONN`]
    /// by default (the service's `topic_max_len`, `topics_per_connection`).
    pub fn subscribe(&mut self, conn: ConnId, topic: impl AsRef<[u8]>) -> Result<bool, TopicError> {
        let topic = topic.as_ref();
        topic_result(self.with_ext(|ext| ext.subscribe(conn, RSlice::from_slice(topic)))).map(|n| n == 1)
    }

    /// Ends `conn`'s subscription to `topic`: `Ok(true)` when there was one.
    pub fn unsubscribe(&mut self, conn: ConnId, topic: impl AsRef<[u8]>) -> Result<bool, TopicError> {
        let topic = topic.as_ref();
        topic_result(self.with_ext(|ext| ext.unsubscribe(conn, RSlice::from_slice(topic)))).map(|n| n == 1)
    }

    /// Subscribes the worker itself to `topic`: each message published on it (here or anywhere
    /// else) comes to [`crate::Protocol::on_publish`], once per worker, for a plugin that looks
    /// at messages itself (filtering per user, a protocol's own subscription commands).
    pub fn subscribe_worker(&mut self, topic: impl AsRef<[u8]>) -> Result<bool, TopicError> {
        self.subscribe(WORKER_CONN, topic)
    }

    /// Ends the worker's own subscription of [`Host::subscribe_worker`].
    pub fn unsubscribe_worker(&mut self, topic: impl AsRef<[u8]>) -> Result<bool, TopicError> {
        self.unsubscribe(WORKER_CONN, topic)
    }

    /// Publishes `msg` on `topic`: the host writes these bytes to every connection subscribed
    /// to it on every worker of the service, and on every host of its cluster (`--cluster`),
    /// with no plugin call per recipient (frame it once, as the subscribers' protocol wants
    /// it). Returns how many connections of this worker it was written to. A subscriber whose
    /// send buffer is full (a slow consumer) misses the message; the host counts it. Across
    /// hosts delivery is at-most-once (see the docs). At most [`crate::MAX_PUBLISH`] bytes by
    /// default (the service's `topic_max_message`).
    pub fn publish(&mut self, topic: impl AsRef<[u8]>, msg: &[u8]) -> Result<usize, TopicError> {
        let topic = topic.as_ref();
        let answer = self.with_ext(|ext| ext.publish(RSlice::from_slice(topic), RSlice::from_slice(msg)));
        topic_result(answer).map(|n| n as usize)
    }

    /// How many connections of this worker are subscribed to `topic`.
    pub fn subscribers(&mut self, topic: impl AsRef<[u8]>) -> Result<usize, TopicError> {
        let topic = topic.as_ref();
        topic_result(self.with_ext(|ext| ext.subscribers(RSlice::from_slice(topic)))).map(|n| n as usize)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::TestPlugin;
    use crate::{ConnId, Frame, Host, Protocol, TopicError, WorkerInfo, MAX_PUBLISH, MAX_TOPICS_PER_CONN};

    /// `join T` subscribes, `leave T` unsubscribes, `say T X` publishes `X`; the worker itself
    /// listens to `log` and keeps what it hears.
    #[derive(Default)]
    struct Rooms {
        heard: Vec<(Vec<u8>, Vec<u8>)>,
        answers: Vec<Result<usize, TopicError>>,
    }

    impl Protocol for Rooms {
        fn new(_: &str, _: &WorkerInfo) -> Result<Self, String> {
            Ok(Rooms::default())
        }
        fn on_worker_start(&mut self, host: &mut Host<'_>) -> Result<(), String> {
            host.subscribe_worker("log").map(|_| ()).map_err(|e| e.to_string())
        }
        fn input(&mut self, _: &mut Host<'_>, _: ConnId, buf: &[u8]) -> Frame {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => Frame::Complete(i + 1),
                None => Frame::NeedMore,
            }
        }
        fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
            let line = std::str::from_utf8(&msg[..msg.len() - 1]).unwrap();
            let answer = match line.split_once(' ') {
                Some(("join", t)) => host.subscribe(conn, t).map(usize::from),
                Some(("leave", t)) => host.unsubscribe(conn, t).map(usize::from),
                Some(("say", rest)) => {
                    let (t, text) = rest.split_once(' ').unwrap();
                    host.publish(t, format!("{text}\n").as_bytes())
                }
                _ => host.subscribers(line),
            };
            self.answers.push(answer);
        }
        fn on_publish(&mut self, _: &mut Host<'_>, topic: &[u8], msg: &[u8]) {
            self.heard.push((topic.to_vec(), msg.to_vec()));
        }
    }

    #[test]
    fn subscribers_get_what_is_published_and_nothing_after_they_leave() {
        let mut t = TestPlugin::<Rooms>::new("").unwrap();
        let (a, b) = (t.connect(), t.connect());
        t.feed(a, b"join red\n");
        t.feed(b, b"join red\njoin red\njoin blue\n");
        t.feed(a, b"say red hi\n");
        assert_eq!(t.host.take_sent(a), b"hi\n", "the sender is a subscriber too");
        assert_eq!(t.host.take_sent(b), b"hi\n");
        t.feed(b, b"leave red\nsay red again\nred\n");
        assert_eq!(t.host.take_sent(a), b"again\n");
        assert!(t.host.take_sent(b).is_empty());
        assert_eq!(t.plugin.answers, [Ok(1), Ok(1), Ok(0), Ok(1), Ok(2), Ok(1), Ok(1), Ok(1)]);
        t.close(a);
        assert_eq!(t.publish(b"red", b"gone\n"), 0, "a connection's subscriptions end with it");
        assert_eq!(t.publish(b"blue", b"still\n"), 1);
        assert_eq!(t.host.take_sent(b), b"still\n");
    }

    #[test]
    fn the_worker_hears_its_own_topics_and_limits_are_refused() {
        let mut t = TestPlugin::<Rooms>::new("").unwrap();
        t.host.max_package_size = 2 * MAX_PUBLISH;
        t.publish(b"log", b"x");
        assert_eq!(t.plugin.heard, [(b"log".to_vec(), b"x".to_vec())]);
        let c = t.connect();
        for i in 0..MAX_TOPICS_PER_CONN {
            t.feed(c, format!("join t{i}\n").as_bytes());
        }
        t.plugin.answers.clear();
        t.feed(c, b"join one-too-many\n");
        let long = "x".repeat(crate::MAX_TOPIC_LEN + 1);
        t.feed(c, format!("join {long}\n").as_bytes());
        t.feed(c, format!("say t0 {}\n", "y".repeat(MAX_PUBLISH)).as_bytes());
        assert_eq!(
            t.plugin.answers,
            [Err(TopicError::TooManyTopics), Err(TopicError::InvalidTopic), Err(TopicError::TooLarge)]
        );
    }
}
