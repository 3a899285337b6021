//! Messages between the workers of a service (`RawHost::broadcast`, `send_to_worker`; the
//! plugin hears `on_worker_message`), straight from worker to worker, never through the master.
//!
//! Each worker has a mailbox: a `SOCK_SEQPACKET` socket pair made by the master
//! (`master::mailbox`), whose receiving end the worker gets over its channel (`ToWorker::Mailbox`)
//! and whose sending end the master hands to every other live worker of the service
//! (`ToWorker::Peers`) whenever the set changes. A message is one datagram: the sender's slot
//! (4 bytes, little-endian) then the bytes. Datagrams from one sender keep their order. Sends
//! never block: when a peer's mailbox is full (it does not keep up: the kernel's socket buffer,
//! shared by its senders, is the bound) or the peer is gone (`EPIPE`, `ECONNREFUSED`), the
//! message is dropped for that peer and counted.
//!
//! A topic's message (`Host::publish`) travels the same way, marked by [`TOPIC_FLAG`] in the
//! slot's word: then come its publisher's id (8 bytes) and sequence number (8 bytes), the
//! topic's length (2 bytes), the topic and the message, all little-endian (the numbers let a
//! connection that moves between workers hear each message once: `worker::topic_seam`). It is
//! never handed to `on_worker_message`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{recv, send, MsgFlags};
use plugin_api::abi::{WorkerMsgStatus, MAX_WORKER_MESSAGE};

use crate::ctl::Peer;

/// The sender's slot before the bytes.
const HEADER: usize = 4;

/// A datagram buffer that takes the largest message.
pub const RECV_BUFFER: usize = HEADER + MAX_WORKER_MESSAGE;

/// Set in the sender's slot word of a topic's message.
pub const TOPIC_FLAG: u32 = 1 << 31;

struct PeerEnd {
    peer: Peer,
    fd: OwnedFd,
}

#[derive(Default)]
pub struct Mailbox {
    /// The receiving end, once the master sent it.
    pub receiver: Option<OwnedFd>,
    peers: Vec<PeerEnd>,
    /// The datagram being sent (header and bytes), kept to avoid an allocation per message.
    out: Vec<u8>,
    pub sent: u64,
    pub received: u64,
    pub dropped: u64,
}

impl Mailbox {
    /// Takes the master's list of peers (`replace`: a new set; else more of the last one).
    pub fn set_peers(&mut self, replace: bool, peers: Vec<Peer>, fds: Vec<OwnedFd>) {
        if replace {
            self.peers.clear();
        }
        if peers.len() != fds.len() {
            tracing::warn!(peers = peers.len(), fds = fds.len(), "a peer list without its descriptors ignored");
            return;
        }
        self.peers.extend(peers.into_iter().zip(fds).map(|(peer, fd)| PeerEnd { peer, fd }));
        tracing::debug!(peers = self.peers.len(), "worker peers");
    }

    /// Sends `msg` from `from_slot` to every peer; returns how many took it, or a negative
    /// `WorkerMsgStatus`.
    pub fn broadcast(&mut self, from_slot: u32, msg: &[u8]) -> i64 {
        if !self.prepare(from_slot, msg) {
            return WorkerMsgStatus::TOO_LARGE.0 as i64;
        }
        let mut took = 0;
        for i in 0..self.peers.len() {
            took += self.deliver(i) as i64;
        }
        took
    }

    /// Sends `msg` from `from_slot` to the serving worker of `slot`: 1 when it took it, 0 when
    /// dropped, or a negative `WorkerMsgStatus`.
    pub fn send_to(&mut self, from_slot: u32, slot: u32, msg: &[u8]) -> i64 {
        if !self.prepare(from_slot, msg) {
            return WorkerMsgStatus::TOO_LARGE.0 as i64;
        }
        match self.peers.iter().position(|p| p.peer.slot == slot && p.peer.serving) {
            Some(i) => self.deliver(i) as i64,
            None => {
                self.dropped += 1;
                0
            }
        }
    }

    /// Sends a topic's message to every peer (a peer that does not take it misses it: counted
    /// in `dropped`). The caller checked its size (`worker::topics::check_publish`).
    pub fn publish(&mut self, from_slot: u32, publisher: u64, seq: u64, topic: &[u8], msg: &[u8]) {
        if self.peers.is_empty() {
            return;
        }
        self.out.clear();
        self.out.extend_from_slice(&(from_slot | TOPIC_FLAG).to_le_bytes());
        self.out.extend_from_slice(&publisher.to_le_bytes());
        self.out.extend_from_slice(&seq.to_le_bytes());
        self.out.extend_from_slice(&(topic.len() as u16).to_le_bytes());
        self.out.extend_from_slice(topic);
        self.out.extend_from_slice(msg);
        for i in 0..self.peers.len() {
            self.deliver(i);
        }
    }

    /// Sends a topic's datagram as received (`raw`: header included) to the serving worker of
    /// `slot` (an old worker forwarding to its replacement); false when it did not take it.
    pub fn forward(&mut self, slot: u32, raw: &[u8]) -> bool {
        let Some(i) = self.peers.iter().position(|p| p.peer.slot == slot && p.peer.serving) else { return false };
        self.out.clear();
        self.out.extend_from_slice(raw);
        self.deliver(i)
    }

    fn prepare(&mut self, from_slot: u32, msg: &[u8]) -> bool {
        if msg.len() > MAX_WORKER_MESSAGE {
            return false;
        }
        self.out.clear();
        self.out.extend_from_slice(&from_slot.to_le_bytes());
        self.out.extend_from_slice(msg);
        true
    }

    /// Sends the prepared datagram to peer `i`, without blocking; false (counted) when dropped.
    fn deliver(&mut self, i: usize) -> bool {
        let fd = self.peers[i].fd.as_raw_fd();
        loop {
            match send(fd, &self.out, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
                Ok(_) => {
                    self.sent += 1;
                    return true;
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // EAGAIN: its mailbox is full. EPIPE, ECONNREFUSED: it is gone (the master
                    // tells us soon and we drop its end). Either way the message is lost for it.
                    tracing::debug!(
                        slot = self.peers[i].peer.slot,
                        worker = self.peers[i].peer.worker,
                        "message dropped: {e}"
                    );
                    self.dropped += 1;
                    return false;
                }
            }
        }
    }

    /// Reads the next message into `buf` (at least [`RECV_BUFFER`] long): its sender's slot and
    /// length. None when there is nothing more now (or no mailbox).
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(u32, usize)>> {
        let Some(fd) = &self.receiver else { return Ok(None) };
        loop {
            match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) if n >= HEADER => {
                    self.received += 1;
                    let from = u32::from_le_bytes(buf[..HEADER].try_into().expect("4 bytes"));
                    return Ok(Some((from, n - HEADER)));
                }
                // Nobody sends a shorter one; an empty read is every sender gone.
                Ok(_) => return Ok(None),
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A topic's datagram body (after the slot's word).
#[derive(Debug, PartialEq, Eq)]
pub struct TopicMsg<'a> {
    pub publisher: u64,
    pub seq: u64,
    pub topic: &'a [u8],
    pub msg: &'a [u8],
}

/// Reads a topic's datagram body; None when it is malformed.
pub fn split_topic(body: &[u8]) -> Option<TopicMsg<'_>> {
    let (publisher, body) = body.split_first_chunk::<8>()?;
    let (seq, body) = body.split_first_chunk::<8>()?;
    let (len, rest) = body.split_first_chunk::<2>()?;
    let len = u16::from_le_bytes(*len) as usize;
    let (topic, msg) = (rest.len() >= len).then(|| rest.split_at(len))?;
    Some(TopicMsg { publisher: u64::from_le_bytes(*publisher), seq: u64::from_le_bytes(*seq), topic, msg })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
            .unwrap()
    }

    fn peer(slot: u32, serving: bool) -> Peer {
        Peer { slot, worker: slot as u64 + 100, serving }
    }

    #[test]
    fn messages_arrive_in_order_with_their_sender() {
        let (rx, tx) = pair();
        let mut a = Mailbox::default();
        a.set_peers(true, vec![peer(1, true)], vec![tx]);
        let mut b = Mailbox { receiver: Some(rx), ..Mailbox::default() };
        for i in 0..100u32 {
            assert_eq!(a.broadcast(0, &i.to_le_bytes()), 1);
        }
        let mut buf = vec![0; RECV_BUFFER];
        for i in 0..100u32 {
            let (from, n) = b.recv(&mut buf).unwrap().unwrap();
            assert_eq!((from, &buf[HEADER..HEADER + n]), (0, &i.to_le_bytes()[..]));
        }
        assert_eq!(b.recv(&mut buf).unwrap(), None);
        assert_eq!((a.sent, b.received), (100, 100));
    }

    // A topic's datagram carries its publisher and number; a cut one is refused.
    #[test]
    fn topic_messages_carry_their_publisher_and_number() {
        let (rx, tx) = pair();
        let mut a = Mailbox::default();
        a.set_peers(true, vec![peer(1, true)], vec![tx]);
        let mut b = Mailbox { receiver: Some(rx), ..Mailbox::default() };
        a.publish(0, 0xfeed_0000_0001, 42, b"red", b"hello");
        let mut buf = vec![0; RECV_BUFFER];
        let (from, n) = b.recv(&mut buf).unwrap().unwrap();
        assert_eq!(from, TOPIC_FLAG);
        let body = &buf[HEADER..HEADER + n];
        let got = split_topic(body).unwrap();
        assert_eq!(got, TopicMsg { publisher: 0xfeed_0000_0001, seq: 42, topic: b"red", msg: b"hello" });
        for cut in [0, 7, 16, 17, 18, 20] {
            assert_eq!(split_topic(&body[..cut]), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_full_or_gone_peer_drops_and_counts() {
        let (rx, tx) = pair();
        let mut a = Mailbox::default();
        a.set_peers(true, vec![peer(1, true)], vec![tx]);
        let big = vec![7u8; MAX_WORKER_MESSAGE];
        let mut took = 0;
        for _ in 0..10_000 {
            if a.broadcast(0, &big) == 0 {
                break;
            }
            took += 1;
        }
        assert!(took < 10_000, "a mailbox nobody reads fills up");
        assert_eq!(a.dropped, 1);
        drop(rx);
        assert_eq!(a.send_to(0, 1, b"x"), 0, "a peer gone is a drop, not an error");
        assert_eq!(a.dropped, 2);
    }

    #[test]
    fn send_to_goes_to_the_serving_worker_and_size_is_bounded() {
        let (rx_old, tx_old) = pair();
        let (rx_new, tx_new) = pair();
        let mut a = Mailbox::default();
        a.set_peers(true, vec![peer(1, false), peer(1, true)], vec![tx_old, tx_new]);
        assert_eq!(a.send_to(0, 1, b"hi"), 1);
        let mut buf = vec![0; RECV_BUFFER];
        let mut old = Mailbox { receiver: Some(rx_old), ..Mailbox::default() };
        let mut new = Mailbox { receiver: Some(rx_new), ..Mailbox::default() };
        assert_eq!(old.recv(&mut buf).unwrap(), None);
        assert_eq!(new.recv(&mut buf).unwrap(), Some((0, 2)));
        assert_eq!(a.send_to(0, 9, b"hi"), 0, "no such slot");
        assert_eq!(a.broadcast(0, &vec![0; MAX_WORKER_MESSAGE + 1]), WorkerMsgStatus::TOO_LARGE.0 as i64);
        assert_eq!(a.broadcast(0, b"both"), 2, "a broadcast reaches the draining worker too");
    }
}
