//! Pre-copy: the old worker's plugin writes its worker state in steps while the worker goes on
//! serving every client, and accepting new ones, before anything stops (docs/architecture.md,
//! "Hand-over", pre-copy). Those it accepts meanwhile are in the table when the connections
//! stop, and move with the rest.
//!
//! The replacement answers the offer with `AcceptSteps` when its plugin adopts steps. From then
//! on, once per loop turn while fewer than [`STEPS_IN_FLIGHT`] steps wait for their
//! acknowledgement, the plugin's `handover_export_worker_step` writes the next slice (bounded by
//! the plugin: a few MiB or milliseconds; a step that writes nothing sends nothing), which goes
//! as one `Step` frame (a sealed memfd beyond 64 KiB, as the worker state). The replacement
//! stages each and acknowledges it with an empty `Ack`. Once the plugin answers ready and every
//! step is acknowledged, the hand-over goes on as without steps (`send::begin_sending`): the
//! connections stop and `handover_export_worker` writes what changed during the copy.
//!
//! Timeouts: each acknowledged step counts the hand-over's timeout again (the replacement makes
//! progress) and tells the master so (`HandoverProgress`, its kill deadline of this worker); a
//! replacement that adopts no step within the timeout fails the hand-over as any other. The
//! copy as a whole is bounded by the plugin (resp ends it once the keys written meanwhile pass
//! a bound). Should the hand-over fail before the last part was written, the plugin hears
//! `handover_drop_steps` (it stops recording changes); nothing was lent, so nothing comes back.

use plugin_api::abi::RawStep;

use super::super::super::dispatch;
use super::super::Worker;
use super::send::{Awaited, Outgoing};
use super::{OldSide, StateSink};
use crate::ctl::{Handover, ToMaster};

/// Steps sent and not acknowledged at most: the replacement adopts one while the next is
/// written.
const STEPS_IN_FLIGHT: usize = 2;
/// At most one `HandoverProgress` to the master this often while steps are acknowledged.
const PROGRESS_EVERY_MS: u64 = 500;

/// A copy under way in the old worker.
#[derive(Debug)]
pub(super) struct Copy {
    started_ms: u64,
    /// The plugin answered ready: no more steps.
    ready: bool,
    in_flight: usize,
    reported_ms: u64,
}

impl Copy {
    pub(super) fn new(now_ms: u64) -> Copy {
        Copy { started_ms: now_ms, ready: false, in_flight: 0, reported_ms: now_ms }
    }

    /// Whether the loop should turn again at once (room for another step).
    pub(super) fn wants_turn(&self) -> bool {
        !self.ready && self.in_flight < STEPS_IN_FLIGHT
    }
}

impl Worker {
    /// One turn of the copy: the next step while few are in flight; once the plugin is ready
    /// and every step acknowledged, the connections stop and the rest goes (`begin_sending`).
    pub(super) fn copy_more(&mut self, old: &mut OldSide) -> Result<(), String> {
        let Some(copy) = old.copy.as_mut() else { return Ok(()) };
        if copy.wants_turn() {
            let mut sink = StateSink::default();
            old.copy_started = true;
            let answer = dispatch::handover_export_worker_step(&mut self.plugin, &mut self.core, &mut sink);
            if answer != RawStep::MORE && answer != RawStep::READY {
                return Err("the plugin could not write a step of its worker state".into());
            }
            copy.ready = answer == RawStep::READY;
            if sink.len > 0 {
                let len = sink.len;
                let (inline, fds) =
                    sink.finish_parts().map_err(|e| format!("could not store a step of the worker state: {e}"))?;
                old.report.memfd |= !fds.is_empty();
                let place = old.held_base + old.held.len();
                old.outgoing.push_back(Outgoing::owning(Handover::Step { len, inline }, fds, place));
                old.awaiting.push_back(Awaited::Step);
                copy.in_flight += 1;
                old.report.copy_steps += 1;
                old.report.copy_bytes += len;
                old.report.state_bytes += len;
            }
        }
        if copy.ready && copy.in_flight == 0 {
            old.report.copy_ms = self.core.now_ms.saturating_sub(copy.started_ms);
            old.copy = None;
            tracing::info!(
                steps = old.report.copy_steps,
                bytes = old.report.copy_bytes,
                copy_ms = old.report.copy_ms,
                served_meanwhile = self.core.stats.messages.saturating_sub(old.messages_at_start),
                "worker state copied while serving; stopping the connections for the rest"
            );
            return self.begin_sending(old);
        }
        Ok(())
    }

    /// A step was acknowledged: the replacement made progress (the timeout and the master's
    /// kill deadline count again).
    pub(super) fn step_acknowledged(&mut self, old: &mut OldSide) -> Result<(), String> {
        let Some(copy) = old.copy.as_mut() else { return Err("a step acknowledged after the copy".into()) };
        copy.in_flight = copy.in_flight.saturating_sub(1);
        let now = self.core.now_ms;
        old.deadline_ms = now + old.timeout_ms;
        // The phase's deadline (the poll's) follows: past it, the loop would spin.
        self.core.phase.extend_hand_over(old.deadline_ms);
        if now >= copy.reported_ms + PROGRESS_EVERY_MS {
            copy.reported_ms = now;
            self.send_control(&ToMaster::HandoverProgress { state_bytes: old.report.state_bytes });
        }
        Ok(())
    }

    /// The hand-over ends without the last part written after steps: the plugin forgets the
    /// copy (it stops recording changes).
    pub(super) fn copy_abandoned(&mut self, old: &mut OldSide) {
        if old.copy_started && !old.final_exported {
            dispatch::handover_drop_steps(&mut self.plugin, &mut self.core);
            old.copy_started = false;
        }
        if let Some(copy) = old.copy.take() {
            // Failed during the copy: none was taken out, and `end_old` counts every connection
            // as stayed (the connections were not stopped yet).
            old.report.copy_ms = self.core.now_ms.saturating_sub(copy.started_ms);
        }
    }
}
