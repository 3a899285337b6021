//! The hand-over, in the worker: on a replacement, the old worker's connections and its plugin's
//! state move to the new worker over a socket pair the master made for the two (`HandOver` to
//! the old one, `Adopt` to the new one), instead of draining. The master stays off the data path.
//!
//! The order that loses nothing (see "Hand-over" in docs/architecture.md):
//!
//! ```text
//!  old: Offer{plugin, version} ─────────────►  new: handover_accepts? ── Refuse ─► old drains
//!                               ◄── Accept ──
//!  old: for each movable connection (all at once, or in batches of 256 while it serves the
//!       rest: `handover/send.rs`): plugin's export_conn → out of the table (deregistered, its
//!       id held); the worker state (inline, or a sealed memfd when large);
//!       Conns the state carries, State, Conns… (≤ 253 descriptors a frame, lent: no
//!       duplicates) ─►
//!                                              new: adopt_worker, then per frame as it comes,
//!                                              per connection: import (registered), adopt_conn
//!                                              (or give it back)
//!                               ◄── Ack ───── per frame, before it reads any of them; the
//!                                              registration (EPOLL_CTL_ADD) announces what
//!                                              arrived meanwhile (TLS and ring: read at once)
//!  old: closes its descriptors of that frame's adopted ones; restores the others under their ids
//!       Sessions… (UDP: plain data, no descriptor) ─►
//!                                              new: per session: import (keyed by its peer),
//!                                              adopt_conn (or give it back); Ack per frame
//!       Done ─►                      ◄── Ack([]) ─
//!  old: drains (or stops) what is left.
//! ```
//!
//! The new worker gone (its end closed), a refusal or a failure to adopt the worker state: the
//! old worker restores every connection it holds (those of frames not acknowledged yet) and
//! drains as before. Only the old worker decides a timeout (the replacement gives up on its own
//! only while it waits for the offer): at its deadline (counted again once the worker state is
//! sent), with connections lent, it sends nothing more but `Done` after what went (the rest
//! comes back: `send::cancel_unsent`); a replacement that is slow, not stuck, adopts and
//! acknowledges what it was sent and answers. No answer within `HANDOVER_CANCEL_WAIT_MS`: it
//! asks the master to kill the replacement (`HandoverTimedOut`) and restores what was not
//! acknowledged only once the channel closed, so that no connection is ever read by both. The old instance keeps its plugin state throughout (an export does not
//! consume it), so a restored connection goes on where it was.
//!
//! UDP sessions: both workers share the slot's socket (one receive queue). The old worker stops
//! reading it when its connections stop (`send::begin_sending`: every datagram it read was
//! delivered to its plugin then); the replacement reads it only once the hand-over has ended, its sessions adopted. A
//! datagram that arrives in between waits in the socket's queue and reaches the adopted session
//! (no new session, no `on_connect`): a peer never has a session in both workers. Should the
//! hand-over fail, the old worker takes its sessions back (and drains: they close), and their
//! peers' next datagrams open new sessions in the replacement.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::OwnedFd;

use mio::net::UnixStream;
use mio::{Interest, Token};
use plugin_api::abi::RawStateSink;
use plugin_api::ConnId;

use super::super::core::{ExportedConn, Snapshot, Stay};
use super::super::dispatch;
use super::super::transport::TlsSession;
use super::Worker;
use crate::ctl::{Fallback, Handover, HandoverChannel, HandoverFailure, HandoverReport, ToMaster, PROTOCOL};
use crate::sys;

mod adopt;
mod copy;
mod progress;
mod send;

/// The token of the hand-over's socket pair.
pub const HANDOVER: Token = Token(6);
/// Worker state larger than this goes through a sealed memfd rather than the channel.
const INLINE_STATE: usize = 64 * 1024;

/// A `HandOver` deferred until this worker's adoption ended (its pair's end, its terms).
pub(super) struct Deferred {
    fds: Vec<OwnedFd>,
    timeout_ms: u64,
    fallback: Fallback,
}

/// The worker's side of a hand-over under way.
pub(super) enum Session {
    Old(Box<OldSide>),
    New(Box<NewSide>),
}

/// The worker being replaced.
pub(super) struct OldSide {
    channel: HandoverChannel<UnixStream>,
    fallback: Fallback,
    /// The service's `handover_timeout`: how long the replacement may take to adopt (counted
    /// again once the worker state is sent: writing it is this worker's time, not the
    /// replacement's).
    timeout_ms: u64,
    deadline_ms: u64,
    /// The deadline passed with connections lent: what was not sent came back, and `Done` went
    /// after what was (`send::cancel_unsent`); the replacement answers it once it adopted the
    /// rest, within `HANDOVER_CANCEL_WAIT_MS`.
    cancelled: bool,
    /// No answer to that `Done` in time either: the master was asked to end the replacement
    /// (`HandoverTimedOut`); this side reads its channel until it closes, sending nothing more.
    timed_out: bool,
    /// Taken out and not acknowledged, in the order sent: each under the id it had here (held:
    /// not reused). The first is the `held_base`-th connection held in this hand-over.
    held: VecDeque<(ConnId, ExportedConn)>,
    held_base: usize,
    /// UDP sessions sent and not acknowledged, in order.
    held_sessions: VecDeque<(ConnId, Snapshot)>,
    /// UDP sessions taken out and not sent yet (they go after every connection).
    sessions: Vec<(ConnId, Snapshot, Vec<u8>)>,
    /// When the first connection left the table (None: not yet, the offer is out).
    stopped_ms: Option<u64>,
    /// Frames still to send, in order, each with the places in `held` whose sockets (and queued
    /// files) it lends: they are sent as the channel takes them, never duplicated.
    outgoing: VecDeque<send::Outgoing>,
    /// The frames sent (or queued) that the replacement answers, in order.
    awaiting: VecDeque<send::Awaited>,
    /// In batches: the connections not taken out yet, served here meanwhile.
    pending: VecDeque<ConnId>,
    /// Outbound connections: they move only when carried (checked once everything is out).
    outbound: Vec<ConnId>,
    /// Everything is queued, `Done` included.
    done_queued: bool,
    /// In batches: how many were taken out, in how many loop turns, and the worker's message
    /// count when the first went (the messages it served meanwhile: its log line at the end).
    batches: u64,
    turns: u64,
    messages_at_start: u64,
    report: HandoverReport,
    /// The replacement answered the offer (`Accept` or `AcceptSteps`).
    accepted: bool,
    /// Pre-copy: the steps under way (`copy.rs`); None without steps, or once they are over.
    copy: Option<copy::Copy>,
    /// The plugin wrote a step, and `handover_export_worker` has (not) been called since: a
    /// failure in between tells it to forget the copy (`handover_drop_steps`).
    copy_started: bool,
    final_exported: bool,
}

impl OldSide {
    /// An old worker's side over `channel` as the hand-over begins: nothing offered or taken
    /// out yet.
    fn new(channel: HandoverChannel<UnixStream>, fallback: Fallback, timeout_ms: u64, deadline_ms: u64) -> OldSide {
        OldSide {
            channel,
            fallback,
            timeout_ms,
            deadline_ms,
            cancelled: false,
            timed_out: false,
            held: VecDeque::new(),
            held_base: 0,
            held_sessions: VecDeque::new(),
            sessions: Vec::new(),
            stopped_ms: None,
            outgoing: VecDeque::new(),
            awaiting: VecDeque::new(),
            pending: VecDeque::new(),
            outbound: Vec::new(),
            done_queued: false,
            batches: 0,
            turns: 0,
            messages_at_start: 0,
            report: HandoverReport { attempted: true, ..HandoverReport::default() },
            accepted: false,
            copy: None,
            copy_started: false,
            final_exported: false,
        }
    }
}

/// The replacement.
pub(super) struct NewSide {
    channel: HandoverChannel<UnixStream>,
    /// The state version it accepted.
    version: Option<u32>,
    /// Connections that came before the worker state (those it carries): imported before it is
    /// adopted, offered to the plugin after. Later frames are adopted as they come.
    early: Vec<Vec<adopt::Incoming>>,
    /// The worker state is adopted: no connection is served before it.
    state_in: bool,
    /// What it adopted so far, for the log.
    tally: adopt::Tally,
    /// Its part is over; the session ends once the channel has written what is queued.
    finished: bool,
    /// It gives up waiting for the offer (and accepts again) at this time; None once it
    /// accepted: then only the old side decides a timeout (it has the master end this worker
    /// should it be stuck), and this side waits for `Done` or its channel's end. Were it to give
    /// up on its own, the old worker might be writing a large state still (and take back what
    /// it held, or drain it away), or have given up already while frames it sent wait here.
    deadline_ms: Option<u64>,
    /// It answered `AcceptSteps` (its plugin adopts steps).
    steps: bool,
    /// Steps were staged and not committed by the worker state yet: should the hand-over end
    /// before, the plugin drops them (`handover_drop_steps`).
    staged: bool,
}

/// Where the worker state goes while the plugin writes it: memory, then a memfd once it is
/// over [`INLINE_STATE`] (written as it comes: no second copy of a large state in the worker).
#[derive(Default)]
struct StateSink {
    inline: Vec<u8>,
    memfd: Option<std::fs::File>,
    len: u64,
    error: Option<io::Error>,
}

impl RawStateSink for StateSink {
    fn write(&mut self, data: abi_stable::std_types::RSlice<'_, u8>) -> bool {
        let data = data.as_slice();
        if self.error.is_some() {
            return false;
        }
        if self.memfd.is_none() && self.inline.len() + data.len() > INLINE_STATE {
            match sys::sealable_memfd("host-handover-state") {
                Ok(mut file) => match file.write_all(&self.inline) {
                    Ok(()) => {
                        self.inline = Vec::new();
                        self.memfd = Some(file);
                    }
                    Err(e) => self.error = Some(e),
                },
                Err(e) => self.error = Some(e),
            }
        }
        let written = match &mut self.memfd {
            Some(file) => file.write_all(data),
            None => {
                self.inline.extend_from_slice(data);
                Ok(())
            }
        };
        match written {
            Ok(()) => {
                self.len += data.len() as u64;
                true
            }
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }
}

impl StateSink {
    /// The `State` frame and its descriptor (the sealed memfd), or why the state cannot go.
    fn finish(self) -> io::Result<(Handover, Vec<OwnedFd>)> {
        let len = self.len;
        let (inline, fds) = self.finish_parts()?;
        Ok((Handover::State { len, inline }, fds))
    }

    /// The bytes inline, or (None) the sealed memfd that holds them.
    fn finish_parts(self) -> io::Result<(Option<Vec<u8>>, Vec<OwnedFd>)> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.memfd {
            None => Ok((Some(self.inline), Vec::new())),
            Some(file) => {
                sys::seal(&file)?;
                Ok((None, vec![OwnedFd::from(file)]))
            }
        }
    }
}

/// The channel over one end of the master's socket pair, watched by the loop.
fn open_channel(worker: &mut Worker, fds: Vec<OwnedFd>) -> io::Result<HandoverChannel<UnixStream>> {
    let fd = fds.into_iter().next().ok_or_else(|| io::Error::other("no socket came with the frame"))?;
    let stream = std::os::unix::net::UnixStream::from(sys::expect_socket(fd, "the hand-over socket")?);
    stream.set_nonblocking(true)?;
    let mut channel = HandoverChannel::new(UnixStream::from_std(stream))
        .with_max_fds(crate::ctl::channel::MAX_FDS_PER_HANDOVER_FRAME);
    worker.poll.registry().register(&mut channel.stream, HANDOVER, Interest::READABLE)?;
    channel.send(&Handover::Hello { protocol: PROTOCOL })?;
    Ok(channel)
}

impl Worker {
    /// `HandOver` from the master: offer the connections to the replacement; without a hand-over
    /// (the plugin does not take part, the socket is missing), do `fallback` at once. The worker
    /// goes on accepting until its connections stop (`send::begin_sending`: at once after
    /// `Accept`, after the copy with `AcceptSteps`): until then the replacement serves nobody.
    pub(super) fn start_handover(&mut self, fds: Vec<OwnedFd>, timeout_ms: u64, fallback: Fallback) {
        // Still adopting from its own predecessor (the master holds such a hand-over until the
        // earlier one ended, but its end is seen here a little later than there: the old
        // worker's report, or its exit, may come before this side has committed). Starting now
        // would drop the adoption half-way (its connections drained back, a plugin's staged
        // steps never dropped, its state lost): it starts once the adoption ended, its own
        // timeout counting from then. (Ignoring it instead would leave the master waiting for a
        // report until its kill deadline.)
        if matches!(self.handover, Some(Session::New(_))) {
            if self.deferred_handover.is_some() {
                tracing::error!("a second hand-over asked while one waits for the adoption to end ignored");
                return;
            }
            tracing::error!(
                "a hand-over asked while this worker still adopts from its predecessor; it starts once that ended"
            );
            self.deferred_handover = Some(Deferred { fds, timeout_ms, fallback });
            return;
        }
        if self.core.phase != super::WorkerPhase::Serving {
            tracing::debug!("a hand-over asked of a worker that is not serving ignored");
            return;
        }
        let version = dispatch::handover_version(&mut self.plugin);
        let mut report = HandoverReport::default();
        let open = self.core.open_count() as u64;
        if version == 0 {
            report.stay("the plugin does not take part", open);
            report.failure = Some("the plugin does not take part in hand-overs".into());
            return self.handover_ended(report, fallback);
        }
        let channel = match open_channel(self, fds) {
            Ok(channel) => channel,
            Err(e) => {
                report.stay(HandoverFailure::Unreachable.stay_reason(), open);
                report.failure = Some(format!("could not reach the replacement: {e}"));
                report.cause = Some(HandoverFailure::Unreachable);
                return self.handover_ended(report, fallback);
            }
        };
        self.core.phase.hand_over(self.core.now_ms + timeout_ms);
        tracing::info!(connections = self.core.open_count(), timeout_ms, "handing over");
        let mut old = OldSide::new(channel, fallback, timeout_ms, self.core.now_ms + timeout_ms);
        let offer = Handover::Offer { plugin: self.plugin_name.clone(), version };
        if let Err(e) = old.channel.send(&offer) {
            return self.end_old(old, HandoverFailure::Unreachable, format!("could not offer the connections: {e}"));
        }
        self.handover = Some(Session::Old(Box::new(old)));
    }

    /// `Adopt` from the master: the other end of a hand-over; wait for the old worker's offer.
    pub(super) fn start_adopt(&mut self, fds: Vec<OwnedFd>, timeout_ms: u64) {
        if self.handover.is_some() {
            tracing::warn!("a second hand-over while one is under way ignored");
            return;
        }
        match open_channel(self, fds) {
            Ok(channel) => {
                // New clients wait in the slot's accept queue until the old worker's state is
                // here: none of them sees a keyspace without it. (A replacement started
                // awaiting this never accepted; it resumes, as any, when the hand-over ends.)
                self.pause_accepting();
                self.awaiting_handover = false;
                let deadline_ms = self.core.now_ms + timeout_ms;
                // Topic messages taken meanwhile are kept for the connections to come.
                let recent = &mut self.core.topics.recent;
                recent.until_ms = recent.until_ms.max(deadline_ms);
                let new = NewSide {
                    channel,
                    version: None,
                    early: Vec::new(),
                    state_in: false,
                    tally: adopt::Tally::default(),
                    finished: false,
                    deadline_ms: Some(deadline_ms),
                    steps: false,
                    staged: false,
                };
                self.handover = Some(Session::New(Box::new(new)));
            }
            Err(e) => {
                tracing::warn!("could not open the hand-over from the previous worker: {e}");
                self.awaiting_handover = false;
                self.resume_accepting();
            }
        }
    }

    /// Each loop turn while a hand-over is under way: what the peer sent, the deadline, the
    /// channel's output.
    pub(super) fn drive_handover(&mut self) {
        self.handover = match self.handover.take() {
            Some(Session::Old(old)) => self.drive_old(*old).map(|old| Session::Old(Box::new(old))),
            Some(Session::New(new)) => self.drive_new(*new).map(|new| Session::New(Box::new(new))),
            None => None,
        };
        if self.handover.is_none() {
            if let Some(Deferred { fds, timeout_ms, fallback }) = self.deferred_handover.take() {
                tracing::info!("the adoption ended; the hand-over asked meanwhile starts");
                self.start_handover(fds, timeout_ms, fallback);
            }
        }
    }

    /// The hand-over's deadline, for the poll's timeout (now, while a copy has room for another
    /// step: the next turn writes it).
    pub(super) fn handover_deadline(&self) -> Option<u64> {
        match &self.handover {
            Some(Session::Old(old)) if old.copy.as_ref().is_some_and(|c| c.wants_turn()) => Some(self.core.now_ms),
            Some(Session::Old(old)) => Some(old.deadline_ms),
            Some(Session::New(new)) => new.deadline_ms,
            None => None,
        }
    }

    /// What the replacement sent: its answers, in order. None: one of them ended the hand-over.
    fn take_answers(&mut self, mut old: OldSide, answers: Vec<(Handover, Vec<OwnedFd>)>) -> Option<OldSide> {
        for (msg, _fds) in answers {
            match msg {
                Handover::Hello { .. } => {}
                Handover::Accept if !old.accepted => {
                    old.accepted = true;
                    if let Err(why) = self.begin_sending(&mut old) {
                        self.end_old(old, HandoverFailure::Export, why);
                        return None;
                    }
                }
                Handover::AcceptSteps if !old.accepted => {
                    // Pre-copy: the worker state goes in steps while this worker serves
                    // (`copy.rs`); the connections stop once they are over.
                    old.accepted = true;
                    old.messages_at_start = self.core.stats.messages;
                    old.copy = Some(copy::Copy::new(self.core.now_ms));
                }
                Handover::Ack(adopted) if !old.awaiting.is_empty() => match self.acknowledged(&mut old, adopted) {
                    Ok(false) => {}
                    Ok(true) => {
                        if old.cancelled && old.report.stayed > 0 {
                            // Late: the replacement kept what it had been sent, the rest stayed.
                            old.report.failure = Some(format!(
                                "no acknowledgement from the new worker within {} ms (it kept the {} it had adopted by then)",
                                old.timeout_ms, old.report.moved
                            ));
                            old.report.cause = Some(HandoverFailure::TimedOut);
                        }
                        let (report, fallback) = (std::mem::take(&mut old.report), old.fallback);
                        self.handover_ended(report, fallback);
                        return None;
                    }
                    Err(why) => {
                        self.end_old(old, HandoverFailure::Protocol, why);
                        return None;
                    }
                },
                Handover::Refuse(why) => {
                    self.end_old(old, HandoverFailure::Refused, format!("the new worker refused the state: {why}"));
                    return None;
                }
                Handover::Failed(_) if old.cancelled => {
                    // `Done` before the worker state it never got: it adopted nothing.
                    let why = format!("no acknowledgement from the new worker within {} ms", old.timeout_ms);
                    self.end_old(old, HandoverFailure::TimedOut, why);
                    return None;
                }
                Handover::Failed(why) => {
                    self.end_old(old, HandoverFailure::NotAdopted, format!("the new worker could not adopt: {why}"));
                    return None;
                }
                Handover::Error(why) => {
                    self.end_old(old, HandoverFailure::Protocol, format!("the new worker failed: {why}"));
                    return None;
                }
                other => {
                    self.end_old(
                        old,
                        HandoverFailure::Protocol,
                        format!("the new worker sent {} out of turn", name(&other)),
                    );
                    return None;
                }
            }
        }
        Some(old)
    }

    fn drive_old(&mut self, mut old: OldSide) -> Option<OldSide> {
        let answers = old.channel.read_with_fds();
        let mut old = self.take_answers(old, answers)?;
        if old.channel.closed {
            let (cause, why) = match &old.channel.error {
                _ if old.timed_out => (
                    HandoverFailure::TimedOut,
                    format!("no acknowledgement from the new worker within {} ms (it was ended)", old.timeout_ms),
                ),
                Some(e) => (HandoverFailure::Channel, format!("the channel to the new worker broke: {e}")),
                None => (
                    HandoverFailure::Gone,
                    "the new worker is gone (its end closed without an answer: it died or exited)".to_string(),
                ),
            };
            self.end_old(old, cause, why);
            return None;
        }
        if self.core.now_ms >= old.deadline_ms {
            if old.timed_out {
                // The master did not act: the replacement may still adopt what it was sent.
                tracing::error!(
                    wait_ms = crate::ctl::HANDOVER_KILL_WAIT_MS,
                    "the replacement was not ended after the hand-over timed out; taking the connections back anyway"
                );
                let why = format!(
                    "no acknowledgement from the new worker within {} ms, and it was not ended",
                    old.timeout_ms
                );
                self.end_old(old, HandoverFailure::TimedOut, why);
                return None;
            }
            if !old.cancelled {
                if !self.cancel_unsent(&mut old) {
                    // Nothing is lent (the replacement has not accepted, or acknowledged
                    // everything but `Done`): it can read nothing this worker keeps.
                    let why = format!("no acknowledgement from the new worker within {} ms", old.timeout_ms);
                    self.end_old(old, HandoverFailure::TimedOut, why);
                    return None;
                }
                // Connections are lent: the replacement may adopt them yet (their frames wait in
                // its socket). `Done` follows them: it adopts and acknowledges what came before,
                // in order, then answers, and nothing is lent any more (none is served by two,
                // none closed).
                tracing::warn!(
                    timeout_ms = old.timeout_ms,
                    held = old.held.len() + old.held_sessions.len(),
                    "the replacement did not adopt in time; it keeps what it was sent, and nothing more is"
                );
                old.cancelled = true;
                old.deadline_ms = self.core.now_ms + crate::ctl::HANDOVER_CANCEL_WAIT_MS;
            } else {
                // No answer to `Done` either: the replacement is stuck. Only once it has ended
                // is what it did not acknowledge this worker's again.
                tracing::warn!(
                    wait_ms = crate::ctl::HANDOVER_CANCEL_WAIT_MS,
                    held = old.held.len() + old.held_sessions.len(),
                    "the replacement did not answer in time; asking the master to end it"
                );
                self.send_control(&ToMaster::HandoverTimedOut);
                old.timed_out = true;
                old.deadline_ms = self.core.now_ms + crate::ctl::HANDOVER_KILL_WAIT_MS;
                let _ = self.poll.registry().reregister(&mut old.channel.stream, HANDOVER, Interest::READABLE);
            }
        }
        if old.timed_out {
            // Nothing more goes out: the channel's end is awaited.
            return Some(old);
        }
        // Pre-copy: the next step, or the connections stop once the steps are over.
        if let Err(why) = self.copy_more(&mut old) {
            self.end_old(old, HandoverFailure::Export, why);
            return None;
        }
        // In batches: the next ones, while few are in flight.
        if let Err(why) = self.export_more(&mut old) {
            self.end_old(old, HandoverFailure::Export, why);
            return None;
        }
        match send::send_outgoing(&mut old) {
            Ok(true) => {
                // The worker state is sent: the replacement's time to adopt starts now (this
                // turn's clock is old when the plugin took long to write a large state), and so
                // does the master's kill deadline of this worker.
                let now = self.epoch.elapsed().as_millis() as u64;
                old.deadline_ms = now.max(self.core.now_ms) + old.timeout_ms;
                self.send_control(&ToMaster::HandoverProgress { state_bytes: old.report.state_bytes });
            }
            Ok(false) => {}
            Err(failed) => {
                // The replacement may have answered and closed its end while this frame was
                // written (a refusal of the worker state after the steps, say): its answer, read
                // with the error, says why the hand-over failed; the write's error only when it
                // said nothing.
                let old = self.take_answers(old, failed.answers)?;
                let (cause, why) = match failed.error.kind() {
                    // Its end closed: it died or exited.
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => (
                        HandoverFailure::Gone,
                        format!("the new worker is gone (could not send connections: {})", failed.error),
                    ),
                    _ => (HandoverFailure::Channel, format!("could not send connections: {}", failed.error)),
                };
                self.end_old(old, cause, why);
                return None;
            }
        }
        self.flush_handover(&mut old.channel, !old.outgoing.is_empty());
        Some(old)
    }

    /// Takes a connection out of the table (its id held) with its TLS record layer as bytes;
    /// None when it stays (said in the report) or was lost.
    fn take_out(
        &mut self,
        id: ConnId,
        report: &mut HandoverReport,
    ) -> Option<(ExportedConn, Option<zeroize::Zeroizing<Vec<u8>>>)> {
        match self.core.hold(id) {
            Ok(mut conn) => match take_tls(&mut conn) {
                Ok(tls) => Some((conn, tls)),
                Err(TlsTake::Stays(why)) => {
                    tracing::debug!(conn = id.0, "stays: {why}");
                    report.stay(&Stay::Tls.to_string(), 1);
                    self.restore_conn(id, conn);
                    None
                }
                Err(TlsTake::Lost(why)) => {
                    // Its TLS state was consumed and could not be rebuilt: nothing can speak
                    // on the socket any more (not expected: `movable` checked first).
                    tracing::warn!(conn = id.0, "a TLS connection lost its state in a hand-over ({why}); closing it");
                    report.stay("its TLS state was lost (closed)", 1);
                    drop(conn);
                    self.core.release(id);
                    dispatch::closed_elsewhere(&mut self.plugin, &mut self.core, id);
                    None
                }
            },
            Err(e) => {
                tracing::debug!(conn = id.0, "stays: {e}");
                report.stay(&e.to_string(), 1);
                None
            }
        }
    }

    /// The hand-over failed: every connection comes back, and what the fallback says follows.
    fn end_old(&mut self, mut old: OldSide, cause: HandoverFailure, why: String) {
        tracing::warn!("hand-over failed: {why}; taking the connections back");
        self.copy_abandoned(&mut old);
        let held = std::mem::take(&mut old.held);
        let mut sessions: Vec<_> = std::mem::take(&mut old.held_sessions).into();
        sessions.extend(old.sessions.drain(..).map(|(id, snapshot, _)| (id, snapshot)));
        // What never left the table stays too: every connection when none was taken out yet
        // (no `Accept`), else those not taken out yet (in batches) and the outbound ones not
        // looked at yet (`queue_end` counts them once everything is out).
        let untouched = match old.stopped_ms {
            None => self.core.open_count(),
            Some(_) => {
                let present = |id: &ConnId| self.core.get(*id).is_some();
                old.pending.drain(..).filter(present).count() + old.outbound.drain(..).filter(present).count()
            }
        };
        old.report.stay(cause.stay_reason(), (held.len() + sessions.len() + untouched) as u64);
        for (id, conn) in held {
            self.restore_conn(id, conn);
        }
        for (id, snapshot) in sessions {
            self.restore_session(id, snapshot);
        }
        let _ = self.poll.registry().deregister(&mut old.channel.stream);
        old.report.failure = Some(why);
        old.report.cause = Some(cause);
        // (`moved`: those the replacement acknowledged before: they are its own.)
        let (report, fallback) = (std::mem::take(&mut old.report), old.fallback);
        self.handover_ended(report, fallback);
    }

    fn restore_conn(&mut self, id: ConnId, conn: ExportedConn) {
        let restored = self.core.restore(id, conn);
        // What it missed while out on the topics the plugin delivers (`topic_seam`).
        dispatch::publish_missed(&mut self.plugin, &mut self.core, id);
        if let Err(e) = restored {
            // Its socket closes as the value drops; the plugin hears the close.
            // (`Core::restore` freed its id already: freeing it twice would give one index to
            // two later connections.)
            tracing::warn!(conn = id.0, "could not take a connection back: {}", e.source);
            dispatch::closed_elsewhere(&mut self.plugin, &mut self.core, id);
        }
    }

    fn restore_session(&mut self, id: ConnId, snapshot: Snapshot) {
        let restored = self.core.restore_session(id, snapshot);
        dispatch::publish_missed(&mut self.plugin, &mut self.core, id);
        if let Err(e) = restored {
            // Not expected: this worker reads no datagram while it holds sessions.
            tracing::warn!(conn = id.0, "could not take a UDP session back: {e}");
            dispatch::closed_elsewhere(&mut self.plugin, &mut self.core, id);
        }
    }

    /// The master hears what the hand-over did; what stayed drains (or the worker stops).
    fn handover_ended(&mut self, report: HandoverReport, fallback: Fallback) {
        // Nothing more comes back: what was kept for it goes.
        self.core.topics.recent.stop();
        tracing::info!(
            moved = report.moved,
            udp_sessions = report.sessions,
            stayed = report.stayed,
            state_bytes = report.state_bytes,
            memfd = report.memfd,
            pause_ms = report.pause_ms,
            copy_steps = report.copy_steps,
            copy_bytes = report.copy_bytes,
            copy_ms = report.copy_ms,
            cause = %report.cause.map_or("-", HandoverFailure::as_str),
            failure = report.failure.as_deref().unwrap_or("-"),
            "hand-over ended"
        );
        self.send_control(&ToMaster::HandedOver(report));
        match fallback {
            // Draining already (a drain was asked meanwhile): what came back hears it too.
            Fallback::Drain { .. } if matches!(self.core.phase, super::WorkerPhase::Draining { .. }) => {
                for id in self.core.ids() {
                    dispatch::drain(&mut self.plugin, &mut self.core, id);
                }
            }
            Fallback::Drain { timeout_ms } => self.start_drain(timeout_ms),
            Fallback::Stop => self.core.phase.stop(super::Exit::Stopped),
        }
    }

    /// Writes what the channel holds; watches for room while something is left (`more`: frames
    /// not yet given to the channel).
    fn flush_handover(&mut self, channel: &mut HandoverChannel<UnixStream>, more: bool) {
        let done = channel.flush().unwrap_or(true) && !more;
        let interest = if done { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
        let _ = self.poll.registry().reregister(&mut channel.stream, HANDOVER, interest);
    }
}

fn name(msg: &Handover) -> &'static str {
    match msg {
        Handover::Hello { .. } => "hello",
        Handover::Error(_) => "error",
        Handover::Offer { .. } => "offer",
        Handover::Accept => "accept",
        Handover::Refuse(_) => "refuse",
        Handover::State { .. } => "state",
        Handover::Conns(_) => "connections",
        Handover::Done => "done",
        Handover::Ack(_) => "ack",
        Handover::Failed(_) => "failed",
        Handover::Sessions(_) => "sessions",
        Handover::AcceptSteps => "accept-steps",
        Handover::Step { .. } => "step",
    }
}

/// Why a held TLS connection's record layer did not become bytes.
enum TlsTake {
    /// Nothing was consumed: the connection goes back to the table and drains.
    Stays(String),
    /// The rustls value was consumed and no record layer could be rebuilt.
    Lost(String),
}

/// A held TLS connection's record layer as bytes for the replacement (None for a plain one).
/// rustls gives its keys up once: the connection keeps a record layer built from the same
/// state, so that it goes on here, unchanged for its client, if the hand-over fails.
fn take_tls(conn: &mut ExportedConn) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, TlsTake> {
    let Some(session) = conn.tls.take() else { return Ok(None) };
    match session.into_moved() {
        Ok(moved) => {
            let bytes = moved.encode();
            match TlsSession::from_moved(moved) {
                Ok(back) => {
                    conn.tls = Some(back);
                    Ok(Some(bytes))
                }
                Err(e) => Err(TlsTake::Lost(e.to_string())),
            }
        }
        Err((Some(back), why)) => {
            conn.tls = Some(back);
            Err(TlsTake::Stays(why.to_string()))
        }
        Err((None, why)) => Err(TlsTake::Lost(why.to_string())),
    }
}
