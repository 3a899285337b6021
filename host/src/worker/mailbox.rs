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
//!
//! **Large messages.** A datagram holds at most [`MAX_WORKER_MESSAGE`] bytes after the slot's
//! word (a `SOCK_SEQPACKET` datagram must fit the socket's send buffer whole, and
//! `net.core.wmem_max` is 208 KiB on a stock kernel). A topic's message larger than that
//! (`topic_max_message` is 1 MiB by default) is cut into fragments marked [`FRAGMENT_FLAG`], each
//! carrying the sender's pid, the whole body's length and the fragment's offset; the receiver
//! puts them together per sender (a draining worker and its replacement share a slot, not a pid),
//! and drops a body whose fragments do not follow each other (a sender that lost one) or that is
//! over its own limit.
//!
//! **A peer that does not keep up.** What a peer's mailbox has no room for waits in the sender,
//! in order (a message is never cut short for one peer: its fragments all wait or all go), up to
//! a backlog of twice the largest topic message (at least [`MIN_PEER_BACKLOG`]); past it a
//! message is dropped for that peer and counted. While something waits for a peer, the sender's
//! loop watches that peer's end for room ([`PEERS`]) and sends what waits when it comes; not
//! otherwise (a watched datagram socket would wake the sender each time the peer reads one). A peer that is gone (`EPIPE`,
//! `ECONNREFUSED`) drops everything waiting for it.
//!
//! **A new set of peers** keeps what waits for a peer that stays (matched by its worker id). A
//! peer that appears on a slot whose previous worker has topic messages waiting here (its
//! mailbox was full: it is being replaced, and the hand-over's old worker drains its mailbox
//! once every peer knows the replacement, `master::mailbox`) gets a copy of those messages in
//! front of its own queue: whole messages only, never a worker message. The replacement keeps
//! each publisher's number once (`worker::topic_seam`), so a message both get is written once.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
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
/// Set in the sender's slot word of a fragment of a message larger than one datagram.
pub const FRAGMENT_FLAG: u32 = 1 << 30;
/// A fragment's header after the slot's word: the sender's pid, the whole body's length and the
/// fragment's offset in it (4 bytes each, little-endian).
const FRAGMENT_HEADER: usize = 12;
/// The bytes of a body one fragment carries.
const FRAGMENT_CHUNK: usize = MAX_WORKER_MESSAGE - FRAGMENT_HEADER;
/// Bytes waiting for one peer before messages to it are dropped, at least.
pub const MIN_PEER_BACKLOG: usize = 4 << 20;
/// Senders whose large messages are put together at once, at most (a service's workers and
/// their replacements); past it the unfinished ones are forgotten.
const MAX_PARTIALS: usize = 64;

/// The token of the peers' ends in the worker's poll: room came in a peer's mailbox.
pub const PEERS: Token = Token(8);

struct PeerEnd {
    peer: Peer,
    fd: OwnedFd,
    /// Datagrams its mailbox had no room for yet, in order; `true`: the last of a message.
    waiting: VecDeque<(Vec<u8>, bool)>,
    waiting_bytes: usize,
    /// Its end is in the poll (something waits).
    watched: bool,
    /// It appeared in the set being applied (it was not in the one before).
    fresh: bool,
}

/// A large body being put together from its fragments.
struct Partial {
    total: usize,
    body: Vec<u8>,
}

/// What [`Mailbox::next`] read.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A message in one datagram: the slot's word and the body's length (at `HEADER` in the
    /// buffer).
    Datagram { from: u32, len: usize },
    /// A large message put together (the slot's word without [`FRAGMENT_FLAG`]).
    Assembled { from: u32, body: Vec<u8> },
    /// A fragment of a message not complete yet (or dropped).
    Fragment,
}

pub struct Mailbox {
    /// The receiving end, once the master sent it.
    pub receiver: Option<OwnedFd>,
    peers: Vec<PeerEnd>,
    /// The peers of the previous set not (yet) in the one being applied: dropped once it is
    /// complete ([`Mailbox::peers_complete`]).
    previous: Vec<PeerEnd>,
    /// The message being sent, as datagrams (the first `frame_count` of these; their buffers
    /// are kept to avoid allocations per message).
    frames: Vec<Vec<u8>>,
    frame_count: usize,
    /// Bytes that may wait for one peer.
    backlog: usize,
    /// The largest body taken from fragments (a topic's header, topic and message).
    max_body: usize,
    partials: HashMap<u32, Partial>,
    pid: u32,
    /// The worker's poll, to watch the ends of peers something waits for.
    registry: Option<Registry>,
    pub sent: u64,
    pub received: u64,
    pub dropped: u64,
    /// Large messages over `max_body` skipped.
    pub oversized: u64,
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox::new(MAX_WORKER_MESSAGE)
    }
}

impl Mailbox {
    /// A mailbox taking topic messages of up to `max_message` bytes (`topic_max_message`).
    pub fn new(max_message: usize) -> Self {
        Mailbox {
            receiver: None,
            peers: Vec::new(),
            previous: Vec::new(),
            frames: Vec::new(),
            frame_count: 0,
            backlog: max_message.saturating_mul(2).max(MIN_PEER_BACKLOG),
            // The publisher, number, topic's length and the longest topic a service may allow.
            max_body: max_message + TOPIC_HEAD + crate::config::MAX_TOPIC_MAX_LEN as usize,
            partials: HashMap::new(),
            pid: std::process::id(),
            registry: None,
            sent: 0,
            received: 0,
            dropped: 0,
            oversized: 0,
        }
    }

    /// Takes the master's list of peers (`replace`: a new set; else more of the last one). A
    /// peer of the previous set keeps what waits for it; the set is complete at
    /// [`Mailbox::peers_complete`].
    pub fn set_peers(&mut self, replace: bool, peers: Vec<Peer>, fds: Vec<OwnedFd>, registry: &Registry) {
        if self.registry.is_none() {
            self.registry = registry.try_clone().ok();
        }
        if replace {
            // What is left of a set before the last one (never completed) goes now.
            self.drop_previous();
            self.previous = std::mem::take(&mut self.peers);
        }
        if peers.len() != fds.len() {
            tracing::warn!(peers = peers.len(), fds = fds.len(), "a peer list without its descriptors ignored");
            return;
        }
        for (peer, fd) in peers.into_iter().zip(fds) {
            match self.previous.iter().position(|p| p.peer.worker == peer.worker) {
                // The same worker: its end (and its registration) stays, with what waits for it.
                Some(k) => {
                    let mut end = self.previous.swap_remove(k);
                    end.peer = peer;
                    self.peers.push(end);
                }
                None => self.peers.push(PeerEnd {
                    peer,
                    fd,
                    waiting: VecDeque::new(),
                    waiting_bytes: 0,
                    watched: false,
                    fresh: true,
                }),
            }
        }
        tracing::debug!(peers = self.peers.len(), "worker peers");
    }

    /// The set of peers is complete (its last frame came): the peers of the previous set that
    /// are not in it are dropped, and a peer new on a slot gets a copy of the topic messages
    /// waiting for the slot's previous worker (see the module's doc).
    pub fn peers_complete(&mut self) {
        self.drop_previous();
        for i in 0..self.peers.len() {
            if self.peers[i].fresh {
                self.copy_backlog(i);
            }
        }
        for p in &mut self.peers {
            p.fresh = false;
        }
    }

    /// Drops the peers of the previous set left out of the new one, with what waits for them.
    fn drop_previous(&mut self) {
        for p in self.previous.drain(..) {
            if p.watched {
                if let Some(registry) = &self.registry {
                    // Before the descriptor closes: the peer's other holders keep the file open,
                    // and its registration would outlive our descriptor.
                    let _ = registry.deregister(&mut SourceFd(&p.fd.as_raw_fd()));
                }
            }
            if !p.waiting.is_empty() {
                self.dropped += p.waiting.iter().filter(|w| w.1).count() as u64;
            }
        }
    }

    /// Peer `i` is new on its slot: the whole topic messages waiting for the slot's latest
    /// worker before it (the highest worker id below its own: the one it replaces) go in front
    /// of its queue.
    fn copy_backlog(&mut self, i: usize) {
        let (slot, worker) = (self.peers[i].peer.slot, self.peers[i].peer.worker);
        let before = self
            .peers
            .iter()
            .filter(|p| !p.fresh && p.peer.slot == slot && p.peer.worker < worker)
            .max_by_key(|p| p.peer.worker);
        let Some(before) = before.filter(|p| !p.waiting.is_empty()) else { return };
        let mut copied = whole_topic_messages(&before.waiting);
        if copied.is_empty() {
            return;
        }
        let messages = copied.iter().filter(|w| w.1).count();
        let bytes: usize = copied.iter().map(|w| w.0.len()).sum();
        tracing::debug!(
            slot,
            messages,
            bytes,
            "topic messages waiting for the slot's previous worker copied to its replacement"
        );
        let peer = &mut self.peers[i];
        copied.append(&mut peer.waiting);
        peer.waiting = copied;
        peer.waiting_bytes += bytes;
        if self.flush_peer(i) && !self.peers[i].waiting.is_empty() {
            self.watch(i, true);
        }
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
    /// in `dropped`), in fragments when it is larger than a datagram. The caller checked its
    /// size (`TopicTable::check_publish`).
    pub fn publish(&mut self, from_slot: u32, publisher: u64, seq: u64, topic: &[u8], msg: &[u8]) {
        if self.peers.is_empty() {
            return;
        }
        let head = TopicHead::new(publisher, seq, topic);
        self.frame_body(from_slot | TOPIC_FLAG, &[&head.0, topic, msg]);
        for i in 0..self.peers.len() {
            self.deliver(i);
        }
    }

    /// Frames a body made of `parts` after the slot's `word`: one datagram, or fragments when it
    /// is larger than one.
    fn frame_body(&mut self, word: u32, parts: &[&[u8]]) {
        let body_len: usize = parts.iter().map(|p| p.len()).sum();
        if body_len <= MAX_WORKER_MESSAGE {
            let frame = self.frame(0);
            frame.extend_from_slice(&word.to_le_bytes());
            for part in parts {
                frame.extend_from_slice(part);
            }
            self.frame_count = 1;
            return;
        }
        let body = parts.concat();
        let pid = self.pid;
        let chunks = body.chunks(FRAGMENT_CHUNK);
        self.frame_count = chunks.len();
        for (k, chunk) in chunks.enumerate() {
            let frame = self.frame(k);
            frame.extend_from_slice(&(word | FRAGMENT_FLAG).to_le_bytes());
            frame.extend_from_slice(&pid.to_le_bytes());
            frame.extend_from_slice(&(body_len as u32).to_le_bytes());
            frame.extend_from_slice(&((k * FRAGMENT_CHUNK) as u32).to_le_bytes());
            frame.extend_from_slice(chunk);
        }
    }

    /// Sends a topic's message as received (the sender's slot `word` and its whole `body`,
    /// publisher and number included) to the serving worker of `slot` (an old worker forwarding
    /// to its replacement); false when it did not take it.
    pub fn forward(&mut self, slot: u32, word: u32, body: &[u8]) -> bool {
        let Some(i) = self.peers.iter().position(|p| p.peer.slot == slot && p.peer.serving) else { return false };
        self.frame_body(word & !FRAGMENT_FLAG, &[body]);
        self.deliver(i)
    }

    /// Datagram buffer `k`, emptied.
    fn frame(&mut self, k: usize) -> &mut Vec<u8> {
        if self.frames.len() <= k {
            self.frames.resize_with(k + 1, Vec::new);
        }
        let frame = &mut self.frames[k];
        frame.clear();
        frame
    }

    fn prepare(&mut self, from_slot: u32, msg: &[u8]) -> bool {
        if msg.len() > MAX_WORKER_MESSAGE {
            return false;
        }
        let frame = self.frame(0);
        frame.extend_from_slice(&from_slot.to_le_bytes());
        frame.extend_from_slice(msg);
        self.frame_count = 1;
        true
    }

    /// Sends the prepared message to peer `i` (after what waits for it), without blocking; what
    /// its mailbox has no room for waits. False (counted) when dropped.
    fn deliver(&mut self, i: usize) -> bool {
        if !self.flush_peer(i) {
            self.dropped += 1;
            return false;
        }
        let frames = &self.frames[..self.frame_count];
        let size: usize = frames.iter().map(Vec::len).sum();
        let peer = &mut self.peers[i];
        if !peer.waiting.is_empty() {
            if peer.waiting_bytes + size > self.backlog {
                tracing::debug!(slot = peer.peer.slot, worker = peer.peer.worker, "message dropped: backlog");
                self.dropped += 1;
                return false;
            }
            for (k, frame) in frames.iter().enumerate() {
                peer.waiting.push_back((frame.clone(), k + 1 == frames.len()));
            }
            peer.waiting_bytes += size;
            self.sent += 1;
            return true;
        }
        for (k, frame) in frames.iter().enumerate() {
            match send_datagram(&peer.fd, frame) {
                Ok(true) => {}
                Ok(false) => {
                    // No room: the rest waits (a message is at most half the backlog).
                    for (j, frame) in frames.iter().enumerate().skip(k) {
                        peer.waiting.push_back((frame.clone(), j + 1 == frames.len()));
                        peer.waiting_bytes += frame.len();
                    }
                    self.sent += 1;
                    self.watch(i, true);
                    return true;
                }
                Err(e) => {
                    // EPIPE, ECONNREFUSED: it is gone (the master tells us soon and we drop its
                    // end). The message is lost for it.
                    tracing::debug!(slot = peer.peer.slot, worker = peer.peer.worker, "message dropped: {e}");
                    self.dropped += 1;
                    return false;
                }
            }
        }
        self.sent += 1;
        true
    }

    /// Sends what waits for peer `i`, as far as its mailbox has room. False when the peer is
    /// gone (what waited is dropped and counted).
    fn flush_peer(&mut self, i: usize) -> bool {
        let alive = self.send_waiting(i);
        if self.peers[i].waiting.is_empty() {
            self.watch(i, false);
        }
        alive
    }

    /// Watches peer `i`'s end for room (`on`), or stops.
    fn watch(&mut self, i: usize, on: bool) {
        let peer = &mut self.peers[i];
        if peer.watched == on {
            return;
        }
        let Some(registry) = &self.registry else { return };
        let mut source = SourceFd(&peer.fd.as_raw_fd());
        let done = if on {
            registry.register(&mut source, PEERS, Interest::WRITABLE)
        } else {
            registry.deregister(&mut source)
        };
        match done {
            Ok(()) => peer.watched = on,
            Err(e) => tracing::warn!(slot = peer.peer.slot, "could not watch a peer's mailbox: {e}"),
        }
    }

    /// [`Mailbox::flush_peer`] without the watching.
    fn send_waiting(&mut self, i: usize) -> bool {
        let peer = &mut self.peers[i];
        while let Some((frame, _)) = peer.waiting.front() {
            match send_datagram(&peer.fd, frame) {
                Ok(true) => {
                    peer.waiting_bytes -= frame.len();
                    peer.waiting.pop_front();
                }
                Ok(false) => return true,
                Err(e) => {
                    let lost = peer.waiting.iter().filter(|w| w.1).count() as u64;
                    tracing::debug!(slot = peer.peer.slot, lost, "messages dropped: {e}");
                    peer.waiting.clear();
                    peer.waiting_bytes = 0;
                    // Those were counted as sent: now they are dropped.
                    self.sent = self.sent.saturating_sub(lost);
                    self.dropped += lost;
                    return false;
                }
            }
        }
        true
    }

    /// Room came in some peer's mailbox ([`PEERS`]): sends what waits.
    pub fn flush_waiting(&mut self) {
        for i in 0..self.peers.len() {
            if !self.peers[i].waiting.is_empty() {
                self.flush_peer(i);
            }
        }
    }

    /// Bytes waiting for peers (tests, status).
    #[cfg_attr(not(test), allow(dead_code, reason = "the tests look"))]
    pub fn waiting_bytes(&self) -> usize {
        self.peers.iter().map(|p| p.waiting_bytes).sum()
    }

    /// Reads the next datagram into `buf` (at least [`RECV_BUFFER`] long): its sender's slot
    /// word and length. None when there is nothing more now (or no mailbox).
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(u32, usize)>> {
        let Some(fd) = &self.receiver else { return Ok(None) };
        loop {
            match recv(fd.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
                Ok(n) if n >= HEADER => {
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

    /// Reads the next datagram into `buf` (at least [`RECV_BUFFER`] long). None when there is
    /// nothing more now (or no mailbox).
    pub fn next(&mut self, buf: &mut [u8]) -> io::Result<Option<Incoming>> {
        let Some((from, len)) = self.recv(buf)? else { return Ok(None) };
        if from & FRAGMENT_FLAG == 0 {
            self.received += 1;
            return Ok(Some(Incoming::Datagram { from, len }));
        }
        let datagram = &buf[HEADER..HEADER + len];
        let Some((head, chunk)) = datagram.split_at_checked(FRAGMENT_HEADER) else {
            tracing::warn!("a malformed fragment from another worker");
            return Ok(Some(Incoming::Fragment));
        };
        let word = |k: usize| u32::from_le_bytes(head[k * 4..k * 4 + 4].try_into().expect("4 bytes")) as usize;
        let (pid, total, offset) = (word(0) as u32, word(1), word(2));
        if total > self.max_body {
            if offset == 0 {
                self.oversized += 1;
                tracing::warn!(bytes = total, "a message from another worker over this worker's limit skipped");
            }
            self.partials.remove(&pid);
            return Ok(Some(Incoming::Fragment));
        }
        if offset == 0 {
            if self.partials.len() >= MAX_PARTIALS && !self.partials.contains_key(&pid) {
                self.partials.clear();
            }
            // A body left unfinished by this sender (it lost a fragment) is replaced.
            self.partials.insert(pid, Partial { total, body: Vec::with_capacity(total) });
        }
        let Some(partial) = self.partials.get_mut(&pid) else {
            // Its first fragment was lost: the rest is of no use.
            return Ok(Some(Incoming::Fragment));
        };
        if partial.total != total || partial.body.len() != offset || offset + chunk.len() > total {
            self.partials.remove(&pid);
            return Ok(Some(Incoming::Fragment));
        }
        partial.body.extend_from_slice(chunk);
        if partial.body.len() < total {
            return Ok(Some(Incoming::Fragment));
        }
        let body = self.partials.remove(&pid).map(|p| p.body).unwrap_or_default();
        self.received += 1;
        Ok(Some(Incoming::Assembled { from: from & !FRAGMENT_FLAG, body }))
    }
}

/// The whole topic messages of a peer's queue (`waiting`), in order: a message whose first
/// fragments left already and worker messages (no [`TOPIC_FLAG`]) are left out.
fn whole_topic_messages(waiting: &VecDeque<(Vec<u8>, bool)>) -> VecDeque<(Vec<u8>, bool)> {
    let word = |frame: &[u8]| frame.first_chunk::<4>().map_or(0, |w| u32::from_le_bytes(*w));
    // A fragment's offset: after the slot's word, the sender's pid and the body's length.
    let offset = |frame: &[u8]| {
        frame.get(HEADER + 8..HEADER + 12).map_or(0, |o| u32::from_le_bytes(o.try_into().expect("4 bytes")))
    };
    let mut rest = waiting.iter().peekable();
    // The front may be the rest of a message cut when the mailbox filled: skipped.
    if rest.peek().is_some_and(|(front, _)| word(front) & FRAGMENT_FLAG != 0 && offset(front) != 0) {
        for (_, last) in rest.by_ref() {
            if *last {
                break;
            }
        }
    }
    let mut out = VecDeque::new();
    let mut message = Vec::new();
    for (frame, last) in rest {
        message.push((frame.clone(), *last));
        if *last {
            if word(&message[0].0) & TOPIC_FLAG != 0 {
                out.extend(message.drain(..));
            }
            message.clear();
        }
    }
    out
}

/// Sends one datagram without blocking: true when sent, false when the mailbox has no room.
fn send_datagram(fd: &OwnedFd, datagram: &[u8]) -> Result<bool, Errno> {
    loop {
        match send(fd.as_raw_fd(), datagram, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

/// A topic's body before the topic: its publisher's id, its number and the topic's length.
const TOPIC_HEAD: usize = 8 + 8 + 2;

struct TopicHead([u8; TOPIC_HEAD]);

impl TopicHead {
    fn new(publisher: u64, seq: u64, topic: &[u8]) -> Self {
        let mut head = [0; TOPIC_HEAD];
        head[..8].copy_from_slice(&publisher.to_le_bytes());
        head[8..16].copy_from_slice(&seq.to_le_bytes());
        head[16..].copy_from_slice(&(topic.len() as u16).to_le_bytes());
        TopicHead(head)
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

    fn poll() -> mio::Poll {
        mio::Poll::new().unwrap()
    }

    #[test]
    fn messages_arrive_in_order_with_their_sender() {
        let (rx, tx) = pair();
        let p = poll();
        let mut a = Mailbox::default();
        a.set_peers(true, vec![peer(1, true)], vec![tx], p.registry());
        let mut b = Mailbox { receiver: Some(rx), ..Mailbox::default() };
        for i in 0..100u32 {
            assert_eq!(a.broadcast(0, &i.to_le_bytes()), 1);
        }
        let mut buf = vec![0; RECV_BUFFER];
        for i in 0..100u32 {
            let Some(Incoming::Datagram { from, len }) = b.next(&mut buf).unwrap() else { panic!("no datagram") };
            assert_eq!((from, &buf[HEADER..HEADER + len]), (0, &i.to_le_bytes()[..]));
        }
        assert_eq!(b.next(&mut buf).unwrap(), None);
        assert_eq!((a.sent, b.received), (100, 100));
    }

    // A topic's datagram carries its publisher and number; a cut one is refused.
    #[test]
    fn topic_messages_carry_their_publisher_and_number() {
        let (rx, tx) = pair();
        let p = poll();
        let mut a = Mailbox::default();
        a.set_peers(true, vec![peer(1, true)], vec![tx], p.registry());
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
    fn a_peer_that_does_not_keep_up_gets_a_bounded_backlog_and_a_gone_one_drops_it() {
        let (rx, tx) = pair();
        let p = poll();
        let mut a = Mailbox::default();
        a.set_peers(true, vec![peer(1, true)], vec![tx], p.registry());
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
        assert!(a.waiting_bytes() > 0 && a.waiting_bytes() <= MIN_PEER_BACKLOG, "{}", a.waiting_bytes());
        assert!(a.peers[0].watched, "its end is watched while something waits");
        // What waited goes out, in order, as the peer reads.
        let mut b = Mailbox { receiver: Some(rx), ..Mailbox::default() };
        let mut buf = vec![0; RECV_BUFFER];
        let mut got = 0;
        while got < took {
            a.flush_waiting();
            while let Some(Incoming::Datagram { len, .. }) = b.next(&mut buf).unwrap() {
                assert_eq!(len, big.len());
                got += 1;
            }
        }
        assert_eq!((got, a.waiting_bytes()), (took, 0));
        assert!(!a.peers[0].watched, "and not once nothing waits");
        for _ in 0..100 {
            a.broadcast(0, &big);
        }
        assert!(a.waiting_bytes() > 0);
        drop(b);
        assert_eq!(a.send_to(0, 1, b"x"), 0, "a peer gone is a drop, not an error");
        assert_eq!(a.waiting_bytes(), 0, "what waited for it is dropped");
        assert!(a.dropped > 2);
    }

    #[test]
    fn send_to_goes_to_the_serving_worker_and_size_is_bounded() {
        let (rx_old, tx_old) = pair();
        let (rx_new, tx_new) = pair();
        let p = poll();
        let mut a = Mailbox::default();
        a.set_peers(true, vec![peer(1, false), peer(1, true)], vec![tx_old, tx_new], p.registry());
        assert_eq!(a.send_to(0, 1, b"hi"), 1);
        let mut buf = vec![0; RECV_BUFFER];
        let mut old = Mailbox { receiver: Some(rx_old), ..Mailbox::default() };
        let mut new = Mailbox { receiver: Some(rx_new), ..Mailbox::default() };
        assert_eq!(old.next(&mut buf).unwrap(), None);
        assert_eq!(new.next(&mut buf).unwrap(), Some(Incoming::Datagram { from: 0, len: 2 }));
        assert_eq!(a.send_to(0, 9, b"hi"), 0, "no such slot");
        assert_eq!(a.broadcast(0, &vec![0; MAX_WORKER_MESSAGE + 1]), WorkerMsgStatus::TOO_LARGE.0 as i64);
        assert_eq!(a.broadcast(0, b"both"), 2, "a broadcast reaches the draining worker too");
    }

    /// Reads until a large message is complete, letting the senders send what waits.
    fn assemble(b: &mut Mailbox, senders: &mut [&mut Mailbox]) -> Vec<(u32, Vec<u8>)> {
        let mut buf = vec![0; RECV_BUFFER];
        let mut out = Vec::new();
        for _ in 0..10_000 {
            for s in senders.iter_mut() {
                s.flush_waiting();
            }
            match b.next(&mut buf).unwrap() {
                Some(Incoming::Assembled { from, body }) => out.push((from, body)),
                Some(Incoming::Datagram { from, len }) => out.push((from, buf[HEADER..HEADER + len].to_vec())),
                Some(Incoming::Fragment) => {}
                None if senders.iter().all(|s| s.waiting_bytes() == 0) => return out,
                None => {}
            }
        }
        panic!("the messages never came whole");
    }

    #[test]
    fn a_large_topic_message_crosses_in_fragments_and_is_put_together_per_sender() {
        let (rx, tx) = pair();
        let p = poll();
        let max = 3 << 20;
        let mut a = Mailbox::new(max);
        let mut c = Mailbox::new(max);
        c.pid = a.pid + 1; // the replacement of a's slot, sending at the same time
        a.set_peers(true, vec![peer(1, true)], vec![tx.try_clone().unwrap()], p.registry());
        c.set_peers(true, vec![peer(1, true)], vec![tx], p.registry());
        let mut b = Mailbox { receiver: Some(rx), ..Mailbox::new(max) };
        let one: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
        let two: Vec<u8> = (0..max - 5).map(|i| (i % 241) as u8).collect();
        a.publish(3, 1, 1, b"room", &one);
        c.publish(3, 1, 1, b"room", &two);
        a.publish(3, 1, 1, b"room", b"small after");
        let got = assemble(&mut b, &mut [&mut a, &mut c]);
        let bodies: Vec<(&[u8], &[u8])> =
            got.iter().map(|(_, body)| split_topic(body).map(|m| (m.topic, m.msg)).unwrap()).collect();
        assert!(got.iter().all(|(from, _)| *from == 3 | TOPIC_FLAG));
        assert_eq!(bodies.len(), 3);
        assert!(bodies.contains(&(&b"room"[..], &one[..])) && bodies.contains(&(&b"room"[..], &two[..])));
        let small = bodies.iter().position(|b| b.1 == b"small after").unwrap();
        let large_one = bodies.iter().position(|b| b.1 == &one[..]).unwrap();
        assert!(large_one < small, "one sender's messages keep their order");
        assert_eq!((b.received, b.oversized), (3, 0));
    }

    #[test]
    fn a_message_over_the_receivers_limit_or_missing_a_fragment_is_skipped() {
        let (rx, tx) = pair();
        let p = poll();
        let mut a = Mailbox::new(1 << 20);
        a.set_peers(true, vec![peer(1, true)], vec![tx], p.registry());
        let mut b = Mailbox { receiver: Some(rx), ..Mailbox::new(200_000) };
        a.publish(0, 1, 1, b"t", &vec![1; 300_000]);
        a.publish(0, 1, 1, b"t", &vec![2; 150_000]);
        let got = assemble(&mut b, &mut [&mut a]);
        assert_eq!(got.len(), 1);
        assert_eq!(split_topic(&got[0].1).unwrap().msg, &vec![2; 150_000][..]);
        assert_eq!(b.oversized, 1);
        // A body whose fragments do not follow each other (a sender lost one) is dropped.
        a.publish(0, 1, 1, b"t", &vec![3; 150_000]);
        a.frame_count = 3;
        let (first, third) = (a.frames[0].clone(), a.frames[2].clone());
        assert_eq!(assemble(&mut b, &mut [&mut a]).len(), 1);
        let fd = a.peers[0].fd.try_clone().unwrap();
        assert!(send_datagram(&fd, &first).unwrap() && send_datagram(&fd, &third).unwrap());
        a.publish(0, 1, 1, b"t", b"fine");
        let got = assemble(&mut b, &mut [&mut a]);
        assert_eq!(got.iter().map(|(_, body)| split_topic(body).unwrap().msg).collect::<Vec<_>>(), [&b"fine"[..]]);
    }

    /// The topic numbers (or `None` for a worker message) read from `b` (the mailbox of `a`'s
    /// peer `worker`) until it is empty and nothing waits for it in `a`.
    fn numbers(b: &mut Mailbox, a: &mut Mailbox, worker: u64) -> Vec<Option<u64>> {
        let mut buf = vec![0; RECV_BUFFER];
        let mut out = Vec::new();
        loop {
            a.flush_waiting();
            match b.next(&mut buf).unwrap() {
                Some(Incoming::Datagram { from, len }) if from & TOPIC_FLAG != 0 => {
                    out.push(Some(split_topic(&buf[HEADER..HEADER + len]).unwrap().seq))
                }
                Some(Incoming::Assembled { body, .. }) => out.push(Some(split_topic(&body).unwrap().seq)),
                Some(Incoming::Datagram { .. }) => out.push(None),
                Some(Incoming::Fragment) => {}
                None if a.peers.iter().all(|p| p.peer.worker != worker || p.waiting.is_empty()) => return out,
                None => {}
            }
        }
    }

    // A new set keeps what waits for a peer that stays, and a peer new on a slot gets a copy
    // of the topic messages waiting for the slot's previous worker (not its worker messages),
    // before what is published later.
    #[test]
    fn a_replacement_gets_the_topic_messages_waiting_for_its_predecessor() {
        let (rx_old, tx_old) = pair();
        let (rx_new, tx_new) = pair();
        let p = poll();
        let mut a = Mailbox::default();
        a.set_peers(true, vec![peer(1, true)], vec![tx_old.try_clone().unwrap()], p.registry());
        a.peers_complete();
        let msg = vec![5u8; 60_000];
        let mut seq = 0;
        while a.waiting_bytes() == 0 {
            seq += 1;
            a.publish(0, 7, seq, b"room", &msg);
        }
        let first_waiting = seq;
        assert_eq!(a.send_to(0, 1, b"to the worker"), 1, "waits too");
        for _ in 0..3 {
            seq += 1;
            a.publish(0, 7, seq, b"room", &msg);
        }
        // The slot's replacement (a higher worker id) joins; the old worker stays a peer.
        let replacement = Peer { slot: 1, worker: 200, serving: true };
        let old = Peer { serving: false, ..peer(1, true) };
        a.set_peers(true, vec![old, replacement], vec![tx_old, tx_new], p.registry());
        a.peers_complete();
        seq += 1;
        a.publish(0, 7, seq, b"room", b"after");
        assert_eq!(a.dropped, 0, "nothing that waited was dropped");
        let mut new = Mailbox { receiver: Some(rx_new), ..Mailbox::default() };
        let mut expect: Vec<Option<u64>> = (first_waiting..=seq).map(Some).collect();
        assert_eq!(numbers(&mut new, &mut a, 200), expect, "the copy, then what came after, in order");
        let mut old = Mailbox { receiver: Some(rx_old), ..Mailbox::default() };
        expect = (1..first_waiting).map(Some).collect();
        expect.push(Some(first_waiting));
        expect.push(None);
        expect.extend((first_waiting + 1..=seq).map(Some));
        assert_eq!(numbers(&mut old, &mut a, 101), expect, "the old worker still gets all it had waiting");
    }

    // Only whole topic messages are copied: the rest of a message whose first fragments left,
    // and worker messages, are not.
    #[test]
    fn only_whole_topic_messages_are_copied() {
        let mut a = Mailbox::default();
        let mut frames = |word: u32, seq: u64, len: usize| {
            if word & TOPIC_FLAG != 0 {
                a.frame_body(word, &[&TopicHead::new(7, seq, b"t").0, b"t", &vec![1; len]]);
            } else {
                a.prepare(word, &vec![1; len]);
            }
            let n = a.frame_count;
            a.frames[..n].iter().enumerate().map(|(k, f)| (f.clone(), k + 1 == n)).collect::<Vec<_>>()
        };
        let cut = frames(TOPIC_FLAG, 1, 2 * MAX_WORKER_MESSAGE);
        let worker = frames(0, 0, 10);
        let small = frames(TOPIC_FLAG, 2, 10);
        let large = frames(TOPIC_FLAG, 3, 2 * MAX_WORKER_MESSAGE);
        assert!(cut.len() == 3 && large.len() == 3);
        let waiting: VecDeque<_> = cut[1..].iter().chain(&worker).chain(&small).chain(&large).cloned().collect();
        let copied: Vec<_> = whole_topic_messages(&waiting).into_iter().collect();
        assert_eq!(copied, [small, large].concat());
        // A queue that starts with a whole message keeps it.
        let whole: VecDeque<_> = cut.iter().cloned().collect();
        assert_eq!(whole_topic_messages(&whole).len(), 3);
    }
}
