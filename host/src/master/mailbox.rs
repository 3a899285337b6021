//! The workers' mailboxes (messages between workers, `worker::mailbox`): the master makes each
//! worker's socket pair when it starts, gives the worker the receiving end and keeps the sending
//! end, and tells every ready worker of a service the sending ends of its peers whenever the
//! set changes (a worker becomes ready, is promoted or retired, exits). The messages themselves
//! never pass through the master.
//!
//! The peers of a worker are every other ready worker of its service: serving, draining (it
//! still has clients until it exits) and a replacement not promoted yet; `send_to_worker` picks
//! the serving one of a slot. A worker that exits leaves the set, so its peers drop its end.
//!
//! **Generations and the hand-over's barrier.** Each set told gets a generation (counted across
//! services, so increasing within each), carried by the last `Peers` frame of the set; a worker
//! of protocol [`PEERS_ACK_PROTOCOL`] or later answers it with `PeersKnown` once it applied the
//! whole set. When a worker first appears in a set at generation g, the other members then (of
//! that protocol) must know it: a hand-over to it waits here ([`Mailboxes::hold`]) until each has
//! acknowledged g or later, has exited, or [`PEERS_ACK_WAIT`] passed. Until a publisher knows
//! the replacement its topic messages go to the old worker alone; once it acknowledged, they go
//! to both, and what it had queued for the old worker alone is copied to the replacement
//! (`worker::mailbox`). So the old worker, which reads its mailbox to the end when it starts
//! sending (`worker::topic_seam`), has every message published to it alone by then, and every
//! later one reaches the replacement directly.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};

use super::slots::{Readiness, Role, ServiceId, SlotTable, WorkerId};
use crate::ctl::channel::MAX_FDS_PER_FRAME;
use crate::ctl::{Fallback, Peer, ToWorker};

/// The first worker protocol that acknowledges its peers (`ToMaster::PeersKnown`); the master
/// waits for no worker of an older one.
pub const PEERS_ACK_PROTOCOL: u32 = 13;

/// How long a hand-over waits, at most, for the peers to know the replacement; then it starts
/// anyway (logged) and the old worker's forwarding covers what reaches it alone. A peer answers
/// in one turn of its loop: only one busy in a plugin call (or stopped) takes long, and a wait
/// this long already stalls the chain visibly. The old worker's kill deadline grows by it.
pub const PEERS_ACK_WAIT: Duration = Duration::from_secs(2);

/// What a mailbox may hold before senders' messages are dropped (the kernel caps it at
/// `net.core.wmem_max`, 208 KiB by default). Shared by all of the worker's senders.
const MAILBOX_BUFFER: usize = 1 << 20;

#[derive(Default)]
pub struct Mailboxes {
    /// The sending end of each worker's mailbox.
    senders: BTreeMap<WorkerId, OwnedFd>,
    /// The set each service's workers were last told.
    told: BTreeMap<ServiceId, Vec<Member>>,
    /// The generation of the last set told (any service).
    generation: u64,
    /// The highest generation each worker acknowledged.
    known: BTreeMap<WorkerId, u64>,
    /// Each worker that appeared in a set: who must know it before a hand-over to it starts.
    joined: BTreeMap<WorkerId, Joined>,
    /// Hand-overs waiting for the peers to know their replacement, in the order they came.
    held: Vec<Held>,
}

/// A worker's first set: its generation, and the other members then that acknowledge.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Joined {
    generation: u64,
    must_know: Vec<WorkerId>,
}

/// A hand-over the supervisor started (`Output::HandOver`), to be begun by the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingHandOver {
    pub old: WorkerId,
    pub new: WorkerId,
    pub timeout_ms: u64,
    pub fallback: Fallback,
}

#[derive(Debug)]
struct Held {
    handover: PendingHandOver,
    since: Instant,
}

/// A held hand-over that may start now: how long it waited, and the peers that did not
/// acknowledge (empty: all did, or exited).
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    pub handover: PendingHandOver,
    pub waited: Duration,
    pub unaware: Vec<WorkerId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Member {
    id: WorkerId,
    slot: u32,
    serving: bool,
}

impl Mailboxes {
    /// Makes `id`'s mailbox: keeps the sending end, returns the receiving end for the worker.
    pub fn open(&mut self, id: WorkerId) -> io::Result<OwnedFd> {
        let (receiver, sender) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        // Best effort: the kernel caps it; the default still holds a few large messages.
        let _ = setsockopt(&sender, sockopt::SndBuf, &MAILBOX_BUFFER);
        self.senders.insert(id, sender);
        Ok(receiver)
    }

    /// Keeps the sending end of the mailbox of a worker the master's previous image started (a
    /// binary upgrade); its peers hear of it at the next [`Mailboxes::changes`].
    pub fn adopt(&mut self, id: WorkerId, sender: OwnedFd) {
        self.senders.insert(id, sender);
    }

    /// The sending end of `id`'s mailbox.
    pub fn sender(&self, id: WorkerId) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.senders.get(&id).map(|s| s.as_fd())
    }

    /// The worker is gone: its end goes, and its peers hear it at the next [`Mailboxes::changes`];
    /// no hand-over waits for it any more.
    pub fn close(&mut self, id: WorkerId) {
        self.senders.remove(&id);
        self.known.remove(&id);
        self.joined.remove(&id);
    }

    /// `id` applied the set of generation `generation` (`ToMaster::PeersKnown`).
    pub fn peers_known(&mut self, id: WorkerId, generation: u64) {
        let known = self.known.entry(id).or_default();
        *known = (*known).max(generation);
    }

    /// The peers that must know `new` and do not yet (alive, not acknowledged its first set).
    fn unaware_of(&self, new: WorkerId) -> Vec<WorkerId> {
        let Some(joined) = self.joined.get(&new) else { return Vec::new() };
        let knows = |m: &WorkerId| self.known.get(m).is_some_and(|&g| g >= joined.generation);
        joined.must_know.iter().copied().filter(|m| self.senders.contains_key(m) && !knows(m)).collect()
    }

    /// Holds `handover` until its replacement's peers know it; gives it back when they all do
    /// already (start it now).
    pub fn hold(&mut self, handover: PendingHandOver, now: Instant) -> Option<PendingHandOver> {
        if self.unaware_of(handover.new).is_empty() {
            return Some(handover);
        }
        self.held.push(Held { handover, since: now });
        None
    }

    /// The held hand-overs that start now: every peer of the replacement acknowledged or
    /// exited, or [`PEERS_ACK_WAIT`] passed.
    pub fn release(&mut self, now: Instant) -> Vec<Released> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.held.len() {
            let Held { handover, since } = self.held[i];
            let unaware = self.unaware_of(handover.new);
            let waited = now.saturating_duration_since(since);
            if unaware.is_empty() || waited >= PEERS_ACK_WAIT {
                self.held.remove(i);
                out.push(Released { handover, waited, unaware });
            } else {
                i += 1;
            }
        }
        out
    }

    /// Every held hand-over, given up (the master stops).
    pub fn take_held(&mut self) -> Vec<PendingHandOver> {
        self.held.drain(..).map(|h| h.handover).collect()
    }

    /// When the first held hand-over starts without its acknowledgements.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.since + PEERS_ACK_WAIT).min()
    }

    /// The `Peers` frames (with their descriptors) to send, for every service whose set of
    /// ready workers changed since last time; `acks`: whether a worker acknowledges its sets
    /// (its protocol has `PeersKnown`).
    pub fn changes(
        &mut self,
        slots: &SlotTable,
        acks: impl Fn(WorkerId) -> bool,
    ) -> Vec<(WorkerId, ToWorker, Vec<OwnedFd>)> {
        let mut now: BTreeMap<ServiceId, Vec<Member>> = BTreeMap::new();
        for w in slots.workers() {
            if w.readiness != Readiness::Ready || !self.senders.contains_key(&w.id) {
                continue;
            }
            let serving = slots.role(w.id) == Some(Role::Serving);
            now.entry(w.key.service).or_default().push(Member { id: w.id, slot: w.key.slot, serving });
        }
        self.changes_to(now, acks)
    }

    /// [`Mailboxes::changes`] for the sets `now`.
    fn changes_to(
        &mut self,
        mut now: BTreeMap<ServiceId, Vec<Member>>,
        acks: impl Fn(WorkerId) -> bool,
    ) -> Vec<(WorkerId, ToWorker, Vec<OwnedFd>)> {
        let services: BTreeSet<ServiceId> = now.keys().chain(self.told.keys()).copied().collect();
        let mut frames = Vec::new();
        for service in services {
            let members = now.remove(&service).unwrap_or_default();
            let before = self.told.get(&service);
            if before == Some(&members) {
                continue;
            }
            self.generation += 1;
            let generation = self.generation;
            let was = |id: WorkerId| before.is_some_and(|b| b.iter().any(|m| m.id == id));
            for me in members.iter().filter(|m| !was(m.id)) {
                let must_know = members.iter().map(|m| m.id).filter(|&id| id != me.id && acks(id)).collect();
                self.joined.insert(me.id, Joined { generation, must_know });
            }
            for me in &members {
                let others: Vec<&Member> = members.iter().filter(|m| m.id != me.id).collect();
                let mut replace = true;
                // At least one frame, so that a worker left alone forgets its last peer.
                let chunks: Vec<&[&Member]> =
                    if others.is_empty() { vec![&[]] } else { others.chunks(MAX_FDS_PER_FRAME).collect() };
                let last = chunks.len() - 1;
                for (k, chunk) in chunks.into_iter().enumerate() {
                    let mut peers = Vec::new();
                    let mut fds = Vec::new();
                    for m in chunk {
                        match self.senders[&m.id].try_clone() {
                            Ok(fd) => {
                                peers.push(Peer { slot: m.slot, worker: m.id.0, serving: m.serving });
                                fds.push(fd);
                            }
                            Err(e) => tracing::warn!(worker = m.id.0, "could not share a mailbox: {e}"),
                        }
                    }
                    // The set is acknowledged once whole: only its last frame names it.
                    let generation = if k == last { generation } else { 0 };
                    frames.push((me.id, ToWorker::Peers { replace, peers, generation }, fds));
                    replace = false;
                }
            }
            if members.is_empty() {
                self.told.remove(&service);
            } else {
                self.told.insert(service, members);
            }
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, slot: u32, serving: bool) -> Member {
        Member { id: WorkerId(id), slot, serving }
    }

    fn service(members: &[Member]) -> BTreeMap<ServiceId, Vec<Member>> {
        BTreeMap::from([(ServiceId(0), members.to_vec())])
    }

    /// Mailboxes with a sending end for each worker in `ids`.
    fn mailboxes(ids: std::ops::RangeInclusive<u64>) -> (Mailboxes, Vec<OwnedFd>) {
        let mut m = Mailboxes::default();
        let receivers = ids.map(|id| m.open(WorkerId(id)).unwrap()).collect();
        (m, receivers)
    }

    /// The generation each worker's frames of `frames` end with (0 when none names one).
    fn generations(frames: &[(WorkerId, ToWorker, Vec<OwnedFd>)]) -> BTreeMap<u64, Vec<u64>> {
        let mut out: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (id, msg, _) in frames {
            let ToWorker::Peers { generation, .. } = msg else { panic!("{msg:?}") };
            out.entry(id.0).or_default().push(*generation);
        }
        out
    }

    fn handover(old: u64, new: u64) -> PendingHandOver {
        PendingHandOver { old: WorkerId(old), new: WorkerId(new), timeout_ms: 1000, fallback: Fallback::Stop }
    }

    // A replacement's hand-over waits until every other member of the set it joined (the old
    // worker included) acknowledged that set or a later one; a member of an older protocol is
    // not waited for.
    #[test]
    fn a_hand_over_waits_for_every_peer_to_know_the_replacement() {
        let (mut m, _rx) = mailboxes(1..=5);
        let t0 = Instant::now();
        let frames = m.changes_to(service(&[member(1, 0, true), member(2, 1, true), member(3, 2, true)]), |_| true);
        assert_eq!(generations(&frames), BTreeMap::from([(1, vec![1]), (2, vec![1]), (3, vec![1])]));
        for id in 1..=3 {
            m.peers_known(WorkerId(id), 1);
        }
        // 4 replaces 2; 5 speaks protocol 12 (an adopted worker of the previous image, say).
        let set = [member(1, 0, true), member(2, 1, false), member(3, 2, true), member(4, 1, true)];
        let frames = m.changes_to(service(&set), |id| id != WorkerId(3));
        assert_eq!(generations(&frames).get(&4), Some(&vec![2]));
        assert_eq!(m.hold(handover(2, 4), t0), None, "peers do not know 4 yet");
        assert_eq!(m.next_deadline(), Some(t0 + PEERS_ACK_WAIT));
        m.peers_known(WorkerId(1), 2);
        assert_eq!(m.release(t0), vec![], "2 (the old worker) has not answered");
        m.peers_known(WorkerId(2), 1);
        assert_eq!(m.release(t0), vec![], "an older set is not this one");
        m.peers_known(WorkerId(2), 3);
        let ms = Duration::from_millis(7);
        let released = m.release(t0 + ms);
        assert_eq!(released, vec![Released { handover: handover(2, 4), waited: ms, unaware: vec![] }]);
        assert_eq!((m.release(t0 + ms), m.next_deadline()), (vec![], None));
        // Once known, a second hand-over to the same worker does not wait.
        assert_eq!(m.hold(handover(2, 4), t0), Some(handover(2, 4)));
        // Nothing changed: no frames, no generation.
        assert!(m.changes_to(service(&set), |_| true).is_empty());
    }

    // A peer that exits is not waited for; one that does not answer is waited for
    // `PEERS_ACK_WAIT`, then named; a replacement gone leaves nothing to wait for.
    #[test]
    fn a_hand_over_starts_when_a_silent_peer_exits_or_the_wait_is_over() {
        let (mut m, _rx) = mailboxes(1..=5);
        let t0 = Instant::now();
        m.changes_to(service(&[member(1, 0, true), member(2, 1, true)]), |_| true);
        m.changes_to(service(&[member(1, 0, false), member(2, 1, true), member(3, 0, true)]), |_| true);
        m.peers_known(WorkerId(1), 2);
        assert_eq!(m.hold(handover(1, 3), t0), None);
        m.close(WorkerId(2));
        assert_eq!(m.release(t0).len(), 1, "2 exited");
        m.changes_to(service(&[member(3, 0, true), member(4, 1, true)]), |_| true);
        assert_eq!(m.hold(handover(3, 4), t0), None);
        let early = t0 + PEERS_ACK_WAIT - Duration::from_millis(1);
        assert_eq!(m.release(early), vec![]);
        let released = m.release(t0 + PEERS_ACK_WAIT);
        assert_eq!(released[0].unaware, vec![WorkerId(3)], "named: it did not answer");
        assert_eq!(released[0].waited, PEERS_ACK_WAIT);
        // The replacement died while held: its hand-over starts (and finds it gone).
        m.changes_to(service(&[member(3, 0, true), member(4, 1, false), member(5, 1, true)]), |_| true);
        assert_eq!(m.hold(handover(4, 5), t0), None);
        m.close(WorkerId(5));
        assert_eq!(m.release(t0)[0].unaware, vec![]);
        // The master stops: what is held is given up, and nothing waits any more.
        m.changes_to(service(&[member(3, 0, false), member(4, 1, true), member(1, 0, true)]), |_| true);
        assert_eq!(m.hold(handover(3, 1), t0), None);
        assert_eq!((m.take_held(), m.next_deadline()), (vec![handover(3, 1)], None));
    }

    // A set larger than one frame's descriptors names its generation on its last frame only, so
    // that a worker acknowledges it once whole.
    #[test]
    fn a_chunked_set_names_its_generation_on_its_last_frame() {
        let n = MAX_FDS_PER_FRAME as u64 + 2;
        let (mut m, _rx) = mailboxes(1..=n);
        let members: Vec<Member> = (1..=n).map(|id| member(id, id as u32, true)).collect();
        let frames = m.changes_to(service(&members), |_| true);
        let gens = generations(&frames);
        assert_eq!(gens[&1], vec![0, 1], "{} peers: two frames", n - 1);
        let replaces: Vec<bool> = frames
            .iter()
            .filter(|f| f.0 == WorkerId(1))
            .map(|f| matches!(f.1, ToWorker::Peers { replace: true, .. }))
            .collect();
        assert_eq!(replaces, vec![true, false]);
    }
}
