//! Hand-over, the master's part: when a slot's replacement is promoted (a reload step, an
//! upgrade's step, a recycle), the old worker is told to hand its connections over to it
//! (`HandOver`, with one end of a socket pair the master makes; the replacement gets the other
//! with `Adopt`) instead of draining, when the service allows it (`handover`, on by default)
//! and both speak a protocol that has it. The master stays off the data path: the two workers
//! talk over their pair (`worker/event_loop/handover.rs`). What happened comes back from the old
//! worker (`HandedOver`): the log line, `status` and `/metrics` say it.

use std::time::Duration;

use super::process::Processes;
use super::slots::{ClientId, WorkerId};
use super::supervisor::{Output, Supervisor};
use nix::sys::signal::Signal;

use super::slots::Kill;
use crate::ctl::{Fallback, HandoverReport, ToWorker, HANDOVER_END_WAIT_MS};
use crate::status::Answer;

/// The first worker protocol with hand-overs.
pub const HANDOVER_PROTOCOL: u32 = 7;

/// A service's hand-overs, for `status` and `/metrics` (kept across its workers).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandoverTotals {
    /// Hand-overs that ended (moved something or not).
    pub handovers: u64,
    /// Of them, those that failed (refused, timed out, the replacement died): all drained.
    pub failed: u64,
    /// Connections moved, and connections that stayed (drained) in all of them.
    pub moved: u64,
    /// UDP sessions moved (not in `moved`).
    #[serde(default)]
    pub sessions: u64,
    pub stayed: u64,
    pub state_bytes: u64,
    /// The last one, as its old worker reported it.
    pub last: Option<HandoverReport>,
}

/// The answer to a `host reload --handovers`, held until the hand-overs under way when its chain
/// ended have ended too (each old worker's `HandedOver`, or its exit without one: its kill
/// deadline bounds the wait); then it says what they did.
#[derive(Debug)]
pub struct HeldAnswer {
    client: ClientId,
    answer: Answer,
    /// The old workers whose hand-over has not ended yet.
    handing: Vec<WorkerId>,
    moved: u64,
    sessions: u64,
    drained: u64,
    failed: u64,
    /// Old workers that ended without a report (killed at their deadline, say).
    unreported: u64,
}

impl HeldAnswer {
    /// The chain's answer with the hand-overs' outcome after it.
    fn finish(self) -> Answer {
        let ended = self.moved + self.sessions + self.drained + self.failed + self.unreported;
        let mut note = match ended {
            0 => "; no hand-over".to_string(),
            _ => format!("; hand-overs: {} connections moved", self.moved),
        };
        if self.sessions > 0 {
            note.push_str(&format!(", {} UDP sessions moved", self.sessions));
        }
        if ended > 0 {
            note.push_str(&format!(", {} drained", self.drained));
        }
        if self.failed > 0 {
            note.push_str(&format!(", {} failed", self.failed));
        }
        if self.unreported > 0 {
            note.push_str(&format!(", {} ended without a report", self.unreported));
        }
        match self.answer {
            Answer::Ok { message, wait_ms } => Answer::Ok { message: message + &note, wait_ms },
            Answer::Refused { message } => Answer::Refused { message: message + &note },
            Answer::Error { message } => Answer::Error { message: message + &note },
            other => other,
        }
    }
}

/// A hand-over held because its old worker is still adopting from its own predecessor (a
/// second reload's replacement ready before the first hand-over ended, issue 21): telling that
/// worker to hand over now would end its adoption half-way. It starts once the earlier one has
/// ended (its `HandedOver`, or the exit of either worker of it); its deadlines count from then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldHandover {
    pub old: WorkerId,
    pub new: WorkerId,
    pub graceful: bool,
}

impl<P: Processes> Supervisor<P> {
    /// `client` asked (`host reload --handovers`) to hear, with its reload's outcome, how the
    /// hand-overs the reload starts ended.
    pub fn answer_after_handovers(&mut self, client: ClientId) {
        self.after_handovers.push(client);
    }

    /// Answers `waiters` with a reload's `answer`; a waiter that asked for the hand-overs'
    /// outcome hears it once the hand-overs under way now have ended.
    pub(in crate::master) fn answer_reload(&mut self, waiters: &[ClientId], answer: &Answer) {
        // Those under way, and those held until one under way ended (they start later; their old
        // worker reports, or exits, as any).
        let handing: Vec<WorkerId> = self
            .slots
            .workers()
            .filter(|w| w.handing_over_to.is_some())
            .map(|w| w.id)
            .chain(self.held_handovers.iter().map(|h| h.old))
            .collect();
        // A master that stops answers at once (its reload was abandoned).
        let stopping = self.phase == super::supervisor::Phase::Stopping;
        for &client in waiters {
            let asked = self.after_handovers.iter().position(|&c| c == client);
            if let Some(i) = asked {
                self.after_handovers.swap_remove(i);
            }
            let Some(_) = asked.filter(|_| !stopping) else {
                self.out.push(Output::Answer(client, answer.clone()));
                continue;
            };
            let held = HeldAnswer {
                client,
                answer: answer.clone(),
                handing: handing.clone(),
                moved: 0,
                sessions: 0,
                drained: 0,
                failed: 0,
                unreported: 0,
            };
            match handing.is_empty() {
                true => self.out.push(Output::Answer(client, held.finish())),
                false => self.held_answers.push(held),
            }
        }
    }

    /// The master stops: the answers held for hand-overs go now, with what ended so far (the
    /// rest counted as ended without a report).
    pub(in crate::master) fn answer_held_now(&mut self) {
        for mut held in std::mem::take(&mut self.held_answers) {
            held.unreported += held.handing.len() as u64;
            let client = held.client;
            self.out.push(Output::Answer(client, held.finish()));
        }
    }

    /// `id`'s hand-over ended with `report`, or will not report (None: it did not start, or the
    /// worker is gone): the held answers that waited for it count it, and those that wait for
    /// nothing more go.
    pub(in crate::master) fn settle_held_answers(&mut self, id: WorkerId, report: Option<&HandoverReport>) {
        for held in &mut self.held_answers {
            let Some(i) = held.handing.iter().position(|&w| w == id) else { continue };
            held.handing.swap_remove(i);
            match report {
                Some(r) => {
                    held.moved += r.moved;
                    held.sessions += r.sessions;
                    held.drained += r.stayed;
                    held.failed += (r.failure.is_some() && r.attempted) as u64;
                }
                None => held.unreported += 1,
            }
        }
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held_answers).into_iter().partition(|h| h.handing.is_empty());
        self.held_answers = waiting;
        for held in done {
            let client = held.client;
            self.out.push(Output::Answer(client, held.finish()));
        }
    }

    /// Retires `old` (if any), replaced in its slot by `new`: a hand-over when the service has
    /// it on, else a drain (graceful) or a stop, with the kill deadline after either. A `new`
    /// that waits for a hand-over that does not come is told to serve (`Serve`).
    pub(in crate::master) fn retire_for(&mut self, old: Option<WorkerId>, new: Option<WorkerId>, graceful: bool) {
        let handed = old.is_some_and(|old| self.hand_over(old, new, graceful));
        if let Some(new) = new.filter(|_| !handed) {
            self.out.push(Output::Send(new, ToWorker::Serve));
        }
    }

    /// The worker `id` still adopts from (its hand-over to `id` under way), or is to adopt from
    /// (a hand-over to `id` held itself): `id` hands over only once that one ended.
    fn adopting_from(&self, id: WorkerId) -> Option<WorkerId> {
        let under_way = self.slots.workers().find(|w| w.handing_over_to == Some(id)).map(|w| w.id);
        under_way.or_else(|| self.held_handovers.iter().find(|h| h.new == id).map(|h| h.old))
    }

    /// Starts the held hand-overs whose old worker adopts no more (its own hand-over ended);
    /// one whose old worker is gone tells its replacement to serve, as a hand-over from a dead
    /// worker does.
    pub(in crate::master) fn start_held_handovers(&mut self) {
        let mut i = 0;
        while i < self.held_handovers.len() {
            let held = self.held_handovers[i];
            if self.slots.worker(held.old).is_some() && self.adopting_from(held.old).is_some() {
                i += 1;
                continue;
            }
            self.held_handovers.remove(i);
            if self.slots.worker(held.new).is_none() {
                // Its replacement is gone too: the old worker goes as a retired one does.
                self.retire(held.old, held.graceful);
                continue;
            }
            if self.slots.worker(held.old).is_none() {
                tracing::info!(
                    worker = held.new.0,
                    "the worker a held hand-over was to come from is gone; its replacement serves"
                );
            } else {
                tracing::info!(
                    old = held.old.0,
                    new = held.new.0,
                    "the hand-over the old worker adopted in ended; its own hand-over starts"
                );
            }
            self.retire_for(Some(held.old), Some(held.new), held.graceful);
        }
    }

    /// Starts `old`'s hand-over to `new`, or retires it as before; whether a hand-over began
    /// (or was held: `old` still adopts from its predecessor, and hands over once that ended).
    fn hand_over(&mut self, old: WorkerId, new: Option<WorkerId>, graceful: bool) -> bool {
        let handover = self.slots.worker(old).is_some_and(|w| self.services[w.key.service.0].service.handover);
        let Some(new) = new.filter(|_| handover) else {
            self.retire(old, graceful);
            return false;
        };
        if let Some(earlier) = self.adopting_from(old) {
            let service =
                self.slots.worker(old).map(|w| w.key).map(|k| (self.service_name(k.service).to_string(), k.slot));
            let pid = |id| self.slots.worker(id).map_or(0, |w| w.pid.as_raw());
            let (old_pid, new_pid, earlier_pid) = (pid(old), pid(new), pid(earlier));
            let (service, slot) = service.unwrap_or_default();
            tracing::info!(service = %service, slot, old_pid, new_pid, earlier_pid, "hand-over to {new_pid} waits for the one to {old_pid} (from {earlier_pid}) to end");
            // It is the slot's worker no more (retiring); it serves on, watched as a serving
            // worker is, without a kill deadline until its hand-over starts (the earlier
            // hand-over's own deadline bounds the wait: its old worker's exit starts this one).
            self.slots.retire(old);
            self.held_handovers.push(HeldHandover { old, new, graceful });
            return true;
        }
        let (drain, kill) = (self.timeouts.drain, self.timeouts.kill);
        let now = self.procs.now();
        // How long the old worker waits for the acknowledgement (the service's `handover_timeout`).
        let Some(service) = self.slots.worker(old).map(|w| w.key.service.0) else { return false };
        let timeout = Duration::from_millis(self.services[service].service.limits.handover_timeout_ms);
        let Some(w) = self.slots.worker_mut(old) else { return false };
        let fallback = match graceful {
            true => Fallback::Drain { timeout_ms: drain.as_millis() as u64 },
            false => Fallback::Stop,
        };
        // The hand-over's timeout counts from the worker state sent (the old worker says when:
        // `HandoverProgress`, which counts this again), and a timed-out one waits for the
        // replacement's answer, then its end (`HANDOVER_END_WAIT_MS` at most) before the fallback.
        // The master may hold the `HandOver` until the peers know the replacement
        // (`PEERS_ACK_WAIT` at most): the deadline counts from before that wait.
        let wait = Duration::from_millis(HANDOVER_END_WAIT_MS) + super::mailbox::PEERS_ACK_WAIT;
        let grace = timeout + wait + if graceful { drain } else { Duration::ZERO } + kill;
        let kill_at = now + grace;
        w.kill_at = Some(w.kill_at.map_or(kill_at, |k| k.min(kill_at)));
        w.handing_over_to = Some(new);
        w.handover_grace = grace;
        w.stall_at = None;
        w.retired_at.get_or_insert(now);
        self.slots.retire(old);
        let timeout_ms = timeout.as_millis() as u64;
        self.out.push(Output::HandOver { old, new, timeout_ms, fallback });
        true
    }

    /// `old`'s hand-over timed out with connections lent to its replacement: that replacement is
    /// killed (if it still runs) as if it had died while adopting, so that it never reads a
    /// connection the old worker takes back. Only the old side decides the timeout: the
    /// replacement waits for the end of the hand-over, its pair's end closing at the latest.
    pub fn handover_timed_out(&mut self, old: WorkerId) {
        let Some(new) = self.slots.worker(old).and_then(|w| w.handing_over_to) else {
            tracing::warn!(worker = old.0, "a hand-over timeout from a worker that hands nothing over ignored");
            return;
        };
        let timeout_ms =
            self.slots.worker(old).map_or(0, |w| self.services[w.key.service.0].service.limits.handover_timeout_ms);
        let Some(w) = self.slots.worker_mut(new) else {
            // Gone already (its end of the pair closes, or closed: the old worker sees it).
            return;
        };
        if w.killed.is_some() {
            return;
        }
        w.killed = Some(Kill::HandoverTimeout);
        w.error = Some(format!("it did not adopt the previous worker's connections within {timeout_ms} ms"));
        let (pid, key) = (w.pid, w.key);
        tracing::warn!(service = %self.service_name(key.service), slot = key.slot, pid = pid.as_raw(), timeout_ms, "the replacement did not adopt its predecessor's connections in time; killing it (the old worker keeps what it did not acknowledge)");
        self.procs.kill(pid, Signal::SIGKILL);
    }

    /// The old worker `id` writes its worker state, or sent it (`state_bytes` so far): its kill
    /// deadline counts again from now, as at its `HandOver` (it only ever grows here). A worker
    /// that is not handing over, or was killed already, is left as it is.
    pub fn handover_progress(&mut self, id: WorkerId, state_bytes: u64) {
        let now = self.procs.now();
        let Some(w) = self.slots.worker_mut(id) else { return };
        if w.handing_over_to.is_none() || w.killed.is_some() {
            return;
        }
        let kill_at = now + w.handover_grace;
        if w.kill_at.is_some_and(|k| k < kill_at) {
            w.kill_at = Some(kill_at);
        }
        tracing::debug!(
            worker = id.0,
            state_bytes,
            "the old worker's hand-over goes on; its kill deadline counts again"
        );
    }

    /// `old` was told to drain (or stop) instead of handing over (a worker protocol without
    /// hand-overs, no socket pair): no `HandedOver` comes, and nothing is under way.
    pub fn handover_not_started(&mut self, old: WorkerId) {
        if let Some(w) = self.slots.worker_mut(old) {
            w.handing_over_to = None;
        }
        self.settle_held_answers(old, None);
        self.start_held_handovers();
    }

    /// An old worker's hand-over ended: the log line, and the service's totals.
    pub fn handed_over(&mut self, id: WorkerId, report: HandoverReport) {
        let Some(w) = self.slots.worker_mut(id) else { return };
        // Over: nothing is lent any more (an upgrade may go on).
        w.handing_over_to = None;
        let key = w.key;
        let service = self.service_name(key.service).to_string();
        let text = describe(&report);
        match &report.failure {
            None => {
                tracing::info!(service = %service, slot = key.slot, moved = report.moved, udp_sessions = report.sessions, drained = report.stayed, state_bytes = report.state_bytes, memfd = report.memfd, pause_ms = report.pause_ms, "hand-over: {text}")
            }
            // A plugin that does not take part (or a hand-over that could not begin): a drain as before.
            Some(_) if !report.attempted => {
                tracing::info!(service = %service, slot = key.slot, drained = report.stayed, "no hand-over: {text}")
            }
            Some(_) => {
                let cause = report.cause.map_or("-", crate::ctl::HandoverFailure::as_str);
                tracing::warn!(service = %service, slot = key.slot, drained = report.stayed, cause = %cause, "hand-over {text}")
            }
        }
        let totals = self.handovers.entry(service.clone()).or_default();
        totals.handovers += 1;
        totals.failed += (report.failure.is_some() && report.attempted) as u64;
        totals.moved += report.moved;
        totals.sessions += report.sessions;
        totals.stayed += report.stayed;
        totals.state_bytes += report.state_bytes;
        totals.last = Some(report.clone());
        self.settle_held_answers(id, Some(&report));
        self.out.push(Output::HandedOver(report));
        // Its replacement adopts no more: a hand-over held for it starts.
        self.start_held_handovers();
    }
}

/// One hand-over in words (the log line, `status`).
pub fn describe(r: &HandoverReport) -> String {
    // Why they stayed, when some did and not all for the one reason the failure names.
    let stays = match r.stays.as_slice() {
        [] => String::new(),
        [_] if r.failure.is_some() => String::new(),
        stays => {
            let each: Vec<String> = stays.iter().map(|(why, n)| format!("{n} {why}")).collect();
            format!(" ({})", each.join(", "))
        }
    };
    match &r.failure {
        None => format!(
            "{} connections moved{}, {} drained{stays}, {} bytes of state{}{}, paused {} ms",
            r.moved,
            match r.sessions {
                0 => String::new(),
                n => format!(", {n} UDP sessions moved"),
            },
            r.stayed,
            r.state_bytes,
            if r.memfd { " (memfd)" } else { "" },
            match r.copy_steps {
                0 => String::new(),
                n => format!(" ({} of them copied in {n} steps over {} ms while serving)", r.copy_bytes, r.copy_ms),
            },
            r.pause_ms
        ),
        Some(why) if !r.attempted => format!("{} drained{stays}: {why}", r.stayed),
        Some(why) => format!("failed, {} drained{stays}: {why}", r.stayed),
    }
}

/// The messages a hand-over starts with: `Adopt` for the replacement, `HandOver` for the old
/// worker (each frame carries one end of the pair).
pub fn messages(timeout_ms: u64, fallback: Fallback) -> (ToWorker, ToWorker) {
    (ToWorker::Adopt { timeout_ms }, ToWorker::HandOver { timeout_ms, fallback })
}

/// What an old worker that cannot hand over is told instead.
pub fn fallback_message(fallback: Fallback) -> ToWorker {
    match fallback {
        Fallback::Drain { timeout_ms } => ToWorker::Drain { timeout_ms },
        Fallback::Stop => ToWorker::Stop,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The log line and `status` say why connections stayed, per reason, adding up to `drained`.
    #[test]
    fn a_report_says_why_connections_stayed() {
        let mut r = HandoverReport { moved: 10, state_bytes: 4096, pause_ms: 3, attempted: true, ..Default::default() };
        assert_eq!(describe(&r), "10 connections moved, 0 drained, 4096 bytes of state, paused 3 ms");
        let copied = HandoverReport { copy_steps: 3, copy_bytes: 4000, copy_ms: 25, ..r.clone() };
        assert_eq!(
            describe(&copied),
            "10 connections moved, 0 drained, 4096 bytes of state (4000 of them copied in 3 steps over 25 ms while serving), paused 3 ms"
        );
        let udp = HandoverReport { sessions: 3, ..r.clone() };
        assert_eq!(
            describe(&udp),
            "10 connections moved, 3 UDP sessions moved, 0 drained, 4096 bytes of state, paused 3 ms"
        );
        r.stay("not open", 2);
        r.stay("declined by the plugin", 1);
        r.stay("not open", 1);
        r.stay("outbound", 0);
        assert_eq!(r.stayed, 4);
        assert_eq!(r.stays, vec![("not open".to_string(), 3), ("declined by the plugin".to_string(), 1)]);
        assert_eq!(
            describe(&r),
            "10 connections moved, 4 drained (3 not open, 1 declined by the plugin), 4096 bytes of state, paused 3 ms"
        );
        // A failure with one reason names it once.
        let mut f =
            HandoverReport { attempted: true, failure: Some("the new worker is gone".into()), ..Default::default() };
        f.stay(crate::ctl::HandoverFailure::Gone.stay_reason(), 5);
        assert_eq!(describe(&f), "failed, 5 drained: the new worker is gone");
        f.stay("not open", 1);
        assert_eq!(describe(&f), "failed, 6 drained (5 the replacement is gone, 1 not open): the new worker is gone");
    }
}
