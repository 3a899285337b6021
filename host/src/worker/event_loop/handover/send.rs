//! The old worker's side of a hand-over once the replacement accepted: what leaves the table
//! and when, in which frames, and what each acknowledgement does.
//!
//! All at once (the default): every movable connection is taken out in one turn, then the
//! worker state; the frames go in this order: the connections the worker state carries,
//! `State`, the other connections, the UDP sessions, `Done`. In batches (the plugin answers
//! `handover_in_batches`): the worker state and what it carries first, then [`BATCH`]
//! connections at a time, the next batch once fewer than [`IN_FLIGHT`] wait for their
//! acknowledgement, this worker serving those not taken out yet meanwhile (a client's pause is
//! its batch's); then the UDP sessions and `Done`.
//!
//! Topic subscribers move in batches too: the seam (`worker::topic_seam`) is per connection.
//! Each connection carries the marks of this worker at the moment it is taken out (what it was
//! written up to then, by the fan-out and by the plugin's `on_publish`, which hears what is
//! queued for it first); this worker goes on writing the topics' messages to those not taken
//! out yet, and keeps what it takes from the start of the hand-over so that a connection coming
//! back (refused, or a failed hand-over) is written what it missed while it was out.
//!
//! The replacement acknowledges each `Conns` and `Sessions` frame as it adopts it, and `Done`
//! with an empty `Ack`: the acknowledged connections' descriptors close here (the replacement
//! holds them open), the refused ones come back under their ids.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, OwnedFd};

use plugin_api::abi::RawHandover;
use plugin_api::ConnId;
use zeroize::Zeroizing;

use super::super::super::core::{ExportedConn, Stay};
use super::super::super::dispatch;
use super::super::Worker;
use super::{OldSide, StateSink};
use crate::ctl::{Carrier, Handover, HandoverFailure, MovedConn, MovedSession};

/// Connections taken out per batch: one frame each (under the channel's 253 descriptors). Chosen
/// by measurement (bench/README.md, "Hand-over … batch size"): 64 with two batches in flight
/// gave the lowest gap clients see (10,000 text connections: p99 12–37 ms on a loaded machine,
/// against 31–140 ms with 256, and worse with four in flight: each batch waits behind those
/// before it in the replacement).
const BATCH: usize = 64;
/// A batch is taken out while fewer connections than this wait for their acknowledgement: the
/// replacement adopts one while the next is on its way.
const IN_FLIGHT: usize = 2 * BATCH;
/// A frame is closed once its bytes (plugin state, buffered input and output) reach this.
const FRAME_BYTES: usize = 8 << 20;

/// A frame the old worker has still to send.
pub(super) struct Outgoing {
    frame: Handover,
    /// The places in `OldSide::held` (counted from the first connection held) of the
    /// connections whose descriptors it lends, in order.
    lends: Range<usize>,
    /// Descriptors it carries that are its own (the worker state's memfd).
    owned: Vec<OwnedFd>,
    /// It is the worker state (`State`).
    state: bool,
}

impl Outgoing {
    /// A frame that lends no descriptor and carries none of its own, queued after the
    /// connection held at `place`.
    fn bare(frame: Handover, place: usize) -> Outgoing {
        Outgoing { frame, lends: place..place, owned: Vec::new(), state: false }
    }

    /// A frame that carries descriptors of its own (a step's memfd) and lends none.
    pub(super) fn owning(frame: Handover, owned: Vec<OwnedFd>, place: usize) -> Outgoing {
        Outgoing { frame, lends: place..place, owned, state: false }
    }
}

/// A frame the replacement answers with an `Ack`.
pub(super) enum Awaited {
    /// `count` connections, taken out at `since_ms` (their pause ends with the answer).
    Conns {
        count: usize,
        since_ms: u64,
    },
    Sessions {
        count: usize,
    },
    Done,
    /// A step of the worker state (pre-copy: `copy.rs`), answered with an empty `Ack`.
    Step,
}

/// A connection taken out: its id here, itself, the plugin's state for it, its TLS record layer
/// as bytes, and who carries it (an outbound connection).
type Taken = (ConnId, ExportedConn, Vec<u8>, Option<Zeroizing<Vec<u8>>>, Option<Carrier>);
/// What goes beside a held connection: the plugin's state, the TLS bytes, who carries it.
type Beside = (Vec<u8>, Option<Zeroizing<Vec<u8>>>, Option<Carrier>);

impl Worker {
    /// `Accept` (or the copy's end): the worker stops accepting, then takes out what moves (all
    /// of it, or the first batch) and queues its frames.
    pub(super) fn begin_sending(&mut self, old: &mut OldSide) -> Result<(), String> {
        // From now on the slot's new clients wait in its accept queue for the replacement. Those
        // the ring's accept completed before it ended are taken now: they are in the ids below.
        if self.core.phase.stop_serving() {
            self.stop_accepting();
        }
        // The pause clients of moved connections see starts with the first one taken out.
        old.stopped_ms = Some(self.core.now_ms);
        // Topic messages waiting in the mailbox are delivered first: they count in the marks
        // the connections take along (`worker::topic_seam`).
        self.read_mailbox_to_end();
        // What this worker takes from now on is kept for the connections that may come back.
        self.core.topics.recent.keep_from_now();
        for id in self.core.ids() {
            // Outbound connections move only when their owner carries them.
            match self.core.is_outbound(id) {
                true => old.outbound.push(id),
                false => old.pending.push_back(id),
            }
        }
        // In batches when the plugin can and the service lets it (`handover_batches`).
        let can_batch = dispatch::handover_in_batches(&mut self.plugin);
        if can_batch && self.handover_batches {
            tracing::info!(connections = old.pending.len(), "handing over in batches");
            old.messages_at_start = self.core.stats.messages;
            self.queue_worker_state(old, Vec::new())?;
            return self.export_more(old);
        }
        if can_batch {
            tracing::info!(connections = old.pending.len(), "handing over all at once (handover_batches = false)");
        }
        let ids: Vec<ConnId> = old.pending.drain(..).collect();
        let taken = self.export_conns(old, ids);
        self.queue_worker_state(old, taken)?;
        self.queue_end(old)
    }

    /// In batches: takes out the next ones while few are in flight; once none is left, the UDP
    /// sessions and `Done` follow.
    pub(super) fn export_more(&mut self, old: &mut OldSide) -> Result<(), String> {
        if old.stopped_ms.is_none() || old.done_queued {
            return Ok(());
        }
        let before = old.batches;
        while old.held.len() < IN_FLIGHT && !old.pending.is_empty() {
            let n = BATCH.min(old.pending.len());
            let ids: Vec<ConnId> = old.pending.drain(..n).collect();
            let taken = self.export_conns(old, ids);
            self.queue_conns(old, taken)?;
            old.batches += 1;
        }
        old.turns += u64::from(old.batches > before);
        match old.pending.is_empty() {
            true => self.queue_end(old),
            false => Ok(()),
        }
    }

    /// The worker state, then `taken` (connections taken out before it, all at once): the
    /// connections the state carries go first, then `State`, then `taken`. Should the state not
    /// go, every connection is in `held` still (the caller restores them).
    fn queue_worker_state(&mut self, old: &mut OldSide, taken: Vec<Taken>) -> Result<(), String> {
        let mut sink = StateSink::default();
        self.core.carry.exporting = Some(Vec::new());
        // A long export tells the master it goes on (its kill deadline counts again).
        let mut reporting = super::progress::Reporting::new(&mut sink, &mut self.control);
        let answer = dispatch::handover_export_worker(&mut self.plugin, &mut self.core, &mut reporting);
        old.final_exported = true;
        let carried = self.core.carry.exporting.take().unwrap_or_default();
        let mut with_state = Vec::new();
        for c in carried {
            // One that does not come out stays: the new plugin's lookup answers None for it.
            if let Some((conn, tls)) = self.take_out(c, &mut old.report) {
                with_state.push((c, conn, Vec::new(), tls, Some(Carrier::Worker)));
            }
        }
        let state = match answer == RawHandover::MOVE {
            true => {
                old.report.state_bytes += sink.len;
                old.report.memfd |= sink.memfd.is_some();
                sink.finish().map_err(|e| format!("could not store the worker state: {e}"))
            }
            false => Err("the plugin did not export its worker state".to_string()),
        };
        let (frame, fds) = match state {
            Ok(state) => state,
            Err(why) => {
                hold(old, with_state);
                hold(old, taken);
                return Err(why);
            }
        };
        let queued = self.queue_conns(old, with_state);
        let place = old.held_base + old.held.len();
        old.outgoing.push_back(Outgoing { frame, lends: place..place, owned: fds, state: true });
        let queued_too = self.queue_conns(old, taken);
        queued.and(queued_too)
    }

    /// Takes connections `ids` out of the table with their plugin state (a UDP session goes to
    /// `old.sessions`), each after the outbound connections it carries; what cannot move stays,
    /// counted in the report.
    fn export_conns(&mut self, old: &mut OldSide, ids: Vec<ConnId>) -> Vec<Taken> {
        // What the plugin's `on_publish` is to hear of the topic messages taken so far is heard
        // now, while the connections it writes to are here: its deliveries count in the marks
        // the connections take along, as the fan-out's do.
        dispatch::published(&mut self.plugin, &mut self.core);
        let mut conns = Vec::with_capacity(ids.len());
        for id in ids {
            if self.core.get(id).is_none() {
                // Closed while the batches before it went.
                continue;
            }
            if let Err(why) = self.core.movable(id) {
                tracing::debug!(conn = id.0, "stays: {why}");
                old.report.stay(&why.to_string(), 1);
                continue;
            }
            let mut state = Vec::new();
            self.core.carry.exporting = Some(Vec::new());
            let answer = dispatch::handover_export_conn(&mut self.plugin, &mut self.core, id, &mut state);
            let carried = self.core.carry.exporting.take().unwrap_or_default();
            if answer != RawHandover::MOVE {
                old.report.stay("declined by the plugin", 1);
                continue;
            }
            if self.core.get(id).is_some_and(|c| c.stream.datagram_peer().is_some()) {
                // A UDP session: its snapshot alone (no descriptor of its own).
                match self.core.hold_session(id) {
                    Ok(snapshot) => {
                        old.report.state_bytes += state.len() as u64;
                        old.sessions.push((id, snapshot, state));
                    }
                    Err(e) => {
                        tracing::debug!(conn = id.0, "stays: {e}");
                        old.report.stay(&e.to_string(), 1);
                    }
                }
                continue;
            }
            // What it carries comes out first: should one not, the owner stays with the rest.
            let mut taken = Vec::with_capacity(carried.len());
            for &c in &carried {
                match self.take_out(c, &mut old.report) {
                    Some((conn, tls)) => taken.push((c, conn, Vec::new(), tls, Some(Carrier::Conn(id.0)))),
                    None => break,
                }
            }
            let owner = match taken.len() == carried.len() {
                true => self.take_out(id, &mut old.report),
                false => {
                    old.report.stay("an outbound connection it carries cannot move", 1);
                    None
                }
            };
            match owner {
                Some((conn, tls)) => {
                    old.report.state_bytes += state.len() as u64;
                    conns.extend(taken);
                    conns.push((id, conn, state, tls, None));
                }
                None => {
                    for (c, conn, ..) in taken {
                        self.restore_conn(c, conn);
                        old.report.stay(&Stay::Outbound.to_string(), 1);
                    }
                }
            }
        }
        conns
    }

    /// Holds `taken` (a failure from here on restores them) and queues their `Conns` frames: at
    /// most the channel's descriptors a frame, and a carried connection in its owner's frame.
    fn queue_conns(&mut self, old: &mut OldSide, taken: Vec<Taken>) -> Result<(), String> {
        let now = self.core.now_ms;
        let first = old.held_base + old.held.len();
        let rest = hold(old, taken);
        let max_fds = old.channel.max_fds();
        let needs: Vec<usize> = old.held.iter().skip(first - old.held_base).map(|(_, c)| 1 + c.files.len()).collect();
        let carriers: Vec<Option<Carrier>> = rest.iter().map(|(.., c)| *c).collect();
        let mut rest = rest.into_iter();
        let (mut batch, mut start, mut nfds, mut bytes) = (Vec::new(), first, 0usize, 0usize);
        let mut i = 0;
        while i < needs.len() {
            // A group: the connections a connection carries, then that connection.
            let mut end = i;
            while end + 1 < needs.len() && matches!(carriers[end], Some(Carrier::Conn(_))) {
                end += 1;
            }
            let need: usize = needs[i..=end].iter().sum();
            if need > max_fds {
                return Err(format!("a connection with {need} descriptors cannot go in one message"));
            }
            if !batch.is_empty() && (nfds + need > max_fds || bytes >= FRAME_BYTES) {
                let place = first + i;
                let frame = Handover::Conns(std::mem::take(&mut batch));
                old.outgoing.push_back(Outgoing { frame, lends: start..place, owned: Vec::new(), state: false });
                old.awaiting.push_back(Awaited::Conns { count: place - start, since_ms: now });
                (start, nfds, bytes) = (place, 0, 0);
            }
            for k in i..=end {
                let (state, tls, carried_by) = rest.next().expect("one per connection");
                let (id, conn) = &old.held[first - old.held_base + k];
                let Some((kind, _)) = conn.socket.lend() else {
                    return Err("a socket without a descriptor".into());
                };
                bytes += state.len() + conn.snapshot.input.len() + conn.snapshot.output.len() + 256;
                batch.push(MovedConn {
                    kind,
                    snapshot: conn.snapshot.clone(),
                    state,
                    tls: tls.map(|t| t.to_vec()),
                    old_id: id.0,
                    carried_by,
                });
            }
            nfds += need;
            i = end + 1;
        }
        if !batch.is_empty() {
            let place = first + needs.len();
            old.outgoing.push_back(Outgoing {
                frame: Handover::Conns(batch),
                lends: start..place,
                owned: Vec::new(),
                state: false,
            });
            old.awaiting.push_back(Awaited::Conns { count: place - start, since_ms: now });
        }
        Ok(())
    }

    /// Every connection is out: what stayed of the outbound ones is counted, the UDP sessions
    /// and `Done` are queued.
    fn queue_end(&mut self, old: &mut OldSide) -> Result<(), String> {
        // Outbound connections no one carried stay (still connecting, or their owner stays).
        for id in std::mem::take(&mut old.outbound) {
            if self.core.get(id).is_some() {
                let why = self.core.movable(id).err().unwrap_or(Stay::Outbound);
                tracing::debug!(conn = id.0, "stays: {why}");
                old.report.stay(&why.to_string(), 1);
            }
        }
        let place = old.held_base + old.held.len();
        let (mut batch, mut bytes) = (Vec::new(), 0usize);
        for (id, snapshot, state) in std::mem::take(&mut old.sessions) {
            if bytes >= FRAME_BYTES {
                let count = batch.len();
                old.outgoing.push_back(Outgoing::bare(Handover::Sessions(std::mem::take(&mut batch)), place));
                old.awaiting.push_back(Awaited::Sessions { count });
                bytes = 0;
            }
            bytes += state.len() + 256;
            batch.push(MovedSession { snapshot: snapshot.clone(), state });
            old.held_sessions.push_back((id, snapshot));
        }
        if !batch.is_empty() {
            let count = batch.len();
            old.outgoing.push_back(Outgoing::bare(Handover::Sessions(batch), place));
            old.awaiting.push_back(Awaited::Sessions { count });
        }
        old.outgoing.push_back(Outgoing::bare(Handover::Done, place));
        old.awaiting.push_back(Awaited::Done);
        old.done_queued = true;
        tracing::debug!(
            connections = old.held_base + old.held.len(),
            sessions = old.held_sessions.len(),
            stayed = old.report.stayed,
            state_bytes = old.report.state_bytes,
            "hand-over queued"
        );
        Ok(())
    }

    /// An `Ack` for the oldest frame not answered yet: the adopted connections' descriptors
    /// close here (without a shutdown: the replacement owns them), the refused ones come back
    /// under their ids. Ok(true): that was the answer to `Done`, the hand-over is over.
    pub(super) fn acknowledged(&mut self, old: &mut OldSide, adopted: Vec<bool>) -> Result<bool, String> {
        match old.awaiting.pop_front() {
            Some(Awaited::Conns { count, since_ms }) if adopted.len() == count && old.held.len() >= count => {
                for moved in adopted {
                    let (id, conn) = old.held.pop_front().expect("counted above");
                    old.held_base += 1;
                    if moved {
                        self.core.release(id);
                        drop(conn);
                        old.report.moved += 1;
                    } else {
                        self.restore_conn(id, conn);
                        old.report.stay("refused by the new plugin", 1);
                    }
                }
                old.report.pause_ms = old.report.pause_ms.max(self.core.now_ms.saturating_sub(since_ms));
                Ok(false)
            }
            Some(Awaited::Sessions { count }) if adopted.len() == count && old.held_sessions.len() >= count => {
                let mut moved_now = 0u64;
                for moved in adopted {
                    let (id, snapshot) = old.held_sessions.pop_front().expect("counted above");
                    if moved {
                        self.core.release(id);
                        old.report.sessions += 1;
                        moved_now += 1;
                    } else {
                        self.restore_session(id, snapshot);
                        old.report.stay("refused by the new plugin", 1);
                    }
                }
                if moved_now > 0 {
                    tracing::info!(sessions = moved_now, "UDP sessions moved to the replacement");
                }
                Ok(false)
            }
            Some(Awaited::Step) if adopted.is_empty() => self.step_acknowledged(old).map(|()| false),
            Some(Awaited::Done) if adopted.is_empty() => {
                if old.batches > 0 {
                    tracing::info!(
                        batches = old.batches,
                        turns = old.turns,
                        served_meanwhile = self.core.stats.messages.saturating_sub(old.messages_at_start),
                        "handed over in batches"
                    );
                }
                Ok(true)
            }
            Some(Awaited::Conns { count, .. } | Awaited::Sessions { count }) => {
                Err(format!("the new worker acknowledged {} connections of a frame of {count}", adopted.len()))
            }
            Some(Awaited::Done | Awaited::Step) => {
                Err("the new worker acknowledged connections that were not sent".into())
            }
            None => Err("an acknowledgement out of turn".into()),
        }
    }
}

impl Worker {
    /// The hand-over's deadline passed: the frames not given to the channel yet are not sent
    /// (their connections and UDP sessions come back under their ids, with those not taken out
    /// yet: they stay, for the timeout); `Done` follows what was sent, unless it went already.
    /// The replacement adopts and acknowledges what came before it, in order, and answers it:
    /// then nothing is lent any more. Whether something is lent now (else the caller ends).
    pub(super) fn cancel_unsent(&mut self, old: &mut OldSide) -> bool {
        let Unsent { first_place, sessions, done: done_unsent } = drop_unsent(old);
        let mut stays = 0u64;
        if let Some(place) = first_place {
            let back = old.held.split_off(place - old.held_base);
            stays += back.len() as u64;
            for (id, conn) in back {
                self.restore_conn(id, conn);
            }
        }
        let back = old.held_sessions.split_off(old.held_sessions.len() - sessions);
        let not_sent: Vec<_> = old.sessions.drain(..).map(|(id, snapshot, _)| (id, snapshot)).collect();
        stays += (back.len() + not_sent.len()) as u64;
        for (id, snapshot) in back.into_iter().chain(not_sent) {
            self.restore_session(id, snapshot);
        }
        // Never out of the table: they stay where they are.
        stays += old.pending.drain(..).count() as u64;
        stays += old.outbound.drain(..).filter(|&id| self.core.get(id).is_some()).count() as u64;
        old.report.stay(HandoverFailure::TimedOut.stay_reason(), stays);
        let lent = !old.held.is_empty() || !old.held_sessions.is_empty();
        if lent && (done_unsent || !old.done_queued) {
            let place = old.held_base + old.held.len();
            old.outgoing.push_back(Outgoing::bare(Handover::Done, place));
            old.awaiting.push_back(Awaited::Done);
        }
        old.done_queued = true;
        lent
    }
}

/// What [`drop_unsent`] took out of a hand-over at its deadline.
#[derive(Debug, PartialEq, Eq)]
struct Unsent {
    /// The first place in `held` that the dropped frames lend (None: they lend none): the
    /// connections from there on come back.
    first_place: Option<usize>,
    /// The UDP sessions the dropped frames carry: the last ones of `held_sessions`.
    sessions: usize,
    /// `Done` was among them.
    done: bool,
}

/// Drops the frames not handed to the channel yet (queued behind a frame the channel has not
/// written whole, or not tried yet) from `outgoing`, and the answers they would have had from
/// `awaiting`; what they carried is for the caller to take back.
fn drop_unsent(old: &mut OldSide) -> Unsent {
    let mut unsent = Unsent { first_place: None, sessions: 0, done: false };
    for frame in old.outgoing.drain(..).rev().filter(|f| !f.state) {
        match old.awaiting.pop_back() {
            Some(Awaited::Sessions { count }) => unsent.sessions += count,
            Some(Awaited::Done) => unsent.done = true,
            Some(Awaited::Conns { .. } | Awaited::Step) | None => {}
        }
        if !frame.lends.is_empty() {
            unsent.first_place = Some(frame.lends.start);
        }
    }
    unsent
}

/// Puts `taken` in `old.held` (in order) and returns the rest of each: state, TLS, carrier.
fn hold(old: &mut OldSide, taken: Vec<Taken>) -> Vec<Beside> {
    let mut rest = Vec::with_capacity(taken.len());
    for (id, conn, state, tls, carrier) in taken {
        old.held.push_back((id, conn));
        rest.push((state, tls, carrier));
    }
    rest
}

/// A write to the replacement failed (it closed its end: `EPIPE`, `ECONNRESET`), with what it
/// had sent before it closed.
#[derive(Debug)]
pub(super) struct SendFailed {
    pub(super) error: io::Error,
    /// The replacement's frames that were in this side's socket (a failed write does not end
    /// reading): a refusal, a failure to adopt, acknowledgements. They are taken in order before
    /// the error counts, and one that ends the hand-over is its reason.
    pub(super) answers: Vec<(Handover, Vec<OwnedFd>)>,
}

/// Gives the channel the frames it takes now, each with the descriptors it lends (the sockets
/// and queued files of its connections, which `held` keeps open until the replacement answers).
/// Ok(true): the worker state went to the channel.
pub(super) fn send_outgoing(old: &mut OldSide) -> Result<bool, SendFailed> {
    send_frames(old).map_err(|error| SendFailed { error, answers: old.channel.read_with_fds() })
}

fn send_frames(old: &mut OldSide) -> io::Result<bool> {
    let mut state_sent = false;
    while let Some(next) = old.outgoing.front_mut() {
        if !next.owned.is_empty() {
            let owned = std::mem::take(&mut next.owned);
            old.channel.send_with_fds(&next.frame, owned)?;
            state_sent |= next.state;
            old.outgoing.pop_front();
            continue;
        }
        let mut fds = Vec::new();
        // (A frame without connections names no place: those before it may be answered already.)
        let range = match next.lends.is_empty() {
            true => 0..0,
            false => (next.lends.start - old.held_base)..(next.lends.end - old.held_base),
        };
        for (_, conn) in old.held.range(range) {
            let (_, socket) = conn.socket.lend().ok_or_else(|| io::Error::other("a socket without a descriptor"))?;
            fds.push(socket);
            fds.extend(conn.files.iter().map(AsFd::as_fd));
        }
        if !old.channel.send_lending_fds(&next.frame, &fds)? {
            return Ok(state_sent);
        }
        state_sent |= next.state;
        old.outgoing.pop_front();
    }
    Ok(state_sent)
}

#[cfg(test)]
#[path = "send_tests.rs"]
mod tests;
