//! The workers' mailboxes (messages between workers, `worker::mailbox`): the master makes each
//! worker's socket pair when it starts, gives the worker the receiving end and keeps the sending
//! end, and tells every ready worker of a service the sending ends of its peers whenever the
//! set changes (a worker becomes ready, is promoted or retired, exits). The messages themselves
//! never pass through the master.
//!
//! The peers of a worker are every other ready worker of its service: serving, draining (it
//! still has clients until it exits) and a replacement not promoted yet; `send_to_worker` picks
//! the serving one of a slot. A worker that exits leaves the set, so its peers drop its end.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::OwnedFd;

use nix::sys::socket::{setsockopt, socketpair, sockopt, AddressFamily, SockFlag, SockType};

use super::slots::{Readiness, Role, ServiceId, SlotTable, WorkerId};
use crate::ctl::channel::MAX_FDS_PER_FRAME;
use crate::ctl::{Peer, ToWorker};

/// What a mailbox may hold before senders' messages are dropped (the kernel caps it at
/// `net.core.wmem_max`, 208 KiB by default). Shared by all of the worker's senders.
const MAILBOX_BUFFER: usize = 1 << 20;

#[derive(Default)]
pub struct Mailboxes {
    /// The sending end of each worker's mailbox.
    senders: BTreeMap<WorkerId, OwnedFd>,
    /// The set each service's workers were last told.
    told: BTreeMap<ServiceId, Vec<Member>>,
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

    /// The worker is gone: its end goes, and its peers hear it at the next [`Mailboxes::changes`].
    pub fn close(&mut self, id: WorkerId) {
        self.senders.remove(&id);
    }

    /// The `Peers` frames (with their descriptors) to send, for every service whose set of
    /// ready workers changed since last time.
    pub fn changes(&mut self, slots: &SlotTable) -> Vec<(WorkerId, ToWorker, Vec<OwnedFd>)> {
        let mut now: BTreeMap<ServiceId, Vec<Member>> = BTreeMap::new();
        for w in slots.workers() {
            if w.readiness != Readiness::Ready || !self.senders.contains_key(&w.id) {
                continue;
            }
            let serving = slots.role(w.id) == Some(Role::Serving);
            now.entry(w.key.service).or_default().push(Member { id: w.id, slot: w.key.slot, serving });
        }
        let services: BTreeSet<ServiceId> = now.keys().chain(self.told.keys()).copied().collect();
        let mut frames = Vec::new();
        for service in services {
            let members = now.remove(&service).unwrap_or_default();
            if self.told.get(&service) == Some(&members) {
                continue;
            }
            for me in &members {
                let others: Vec<&Member> = members.iter().filter(|m| m.id != me.id).collect();
                let mut replace = true;
                // At least one frame, so that a worker left alone forgets its last peer.
                let chunks: Vec<&[&Member]> =
                    if others.is_empty() { vec![&[]] } else { others.chunks(MAX_FDS_PER_FRAME).collect() };
                for chunk in chunks {
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
                    frames.push((me.id, ToWorker::Peers { replace, peers }, fds));
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
