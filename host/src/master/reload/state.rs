//! The reload pipeline as one state machine: pure transitions (no processes, no clock, no files)
//! that return the effects the master must carry out. docs/architecture.md, "The reload pipeline".
//!
//! ```text
//!            request                       all checked                ready(last slot)
//!   Idle ───────────────▶ Checking ───────────────────▶ Replacing ─────────────────────▶ Idle
//!    ▲                      │  ▲ request: checks again      │ ready(slot): promote, next   │
//!    │                      │  └─ with the newest files     │ request: queued; at the next │
//!    │   nothing to replace │                               │ step the chain is preempted  │
//!    └──────────────────────┴── stop / refused / failed ────┴──── and checked again ───────┘
//! ```
//!
//! - **Checking**: every requested service's plugin file is checked (copied, probed) off the
//!   loop. A request during a check merges with it and checks again, so the newest files win.
//! - **Replacing**: one slot at a time, make before break: start the replacement, wait for it to
//!   be ready, promote it (the old worker drains or stops), go on. A request during a step is
//!   queued; when the step ends the chain stops there and the merged request is checked again:
//!   slots already on the newest file are not replaced twice.
//! - Services that are waiting for their plugin file, or not reloadable, are never in a chain.
//!   A watcher event skips slots already running the file; a command replaces every slot (a
//!   refused newer file then recycles the workers on the last good snapshot, and says so).
//! - A replacement that fails ends its service's part of the chain (its slots not replaced yet
//!   keep their old workers); the chain goes on with the other services. A slot that had no
//!   ready worker when its replacement failed (a service that is down: its workers cannot
//!   start) fails no reload: the chain goes on, and the outcome names it. If a failure left a
//!   service on mixed versions, that service is retried (bounded), then given up with the mix
//!   shown in `status`. The outcome counts every slot the request moved, per service.

use std::collections::VecDeque;
use std::fmt;
use std::path::PathBuf;

use std::rc::Rc;

use crate::master::slots::{ClientId, ServiceId, SlotKey};
use crate::master::snapshot::Snapshot;

/// How many times a chain that failed half-way is run again.
pub const MAX_RETRIES: u32 = 2;

/// What a chain replaces workers with: a checked plugin snapshot, compared by content hash.
pub trait Candidate: Clone {
    fn hash(&self) -> u64;
}

impl Candidate for Rc<Snapshot> {
    fn hash(&self) -> u64 {
        self.hash
    }
}

/// Identifies one round of checks; results of an older round are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckId(pub u64);

/// What started a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The watcher saw this plugin file written.
    File(PathBuf),
    Signal(&'static str),
    /// `host reload` (graceful or not).
    Command,
    /// A chain that failed half-way, run again.
    Retry,
    /// `host upgrade` (or its signal): the master runs a new binary; every worker follows.
    Upgrade,
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::File(p) => write!(f, "{} changed", p.display()),
            Trigger::Signal(s) => f.write_str(s),
            Trigger::Command => f.write_str("host reload"),
            Trigger::Retry => f.write_str("retry"),
            Trigger::Upgrade => f.write_str("host upgrade"),
        }
    }
}

/// A reload asked for, possibly several merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub graceful: bool,
    pub triggers: Vec<Trigger>,
    /// Control clients waiting for the outcome.
    pub waiters: Vec<ClientId>,
    pub services: Vec<ServiceId>,
    /// A watcher event: slots already running the checked file are skipped. A command replaces
    /// every slot.
    pub only_changed: bool,
    /// Slots a chain this request took over already replaced (not replaced again by a command,
    /// unless their file changed since).
    pub done: Vec<SlotKey>,
    /// How often this request was retried after failing half-way.
    pub retries: u32,
    /// A chain of this request (or of one it took over) began replacing workers.
    pub began: bool,
    /// Slots whose replacement failed (the latest failure of each; a slot replaced later is
    /// taken off).
    pub failures: Vec<SlotFailure>,
}

/// A slot whose replacement failed (did not start, exited, or was not ready in time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotFailure {
    pub slot: SlotKey,
    pub reason: String,
    /// The slot had no ready worker when its replacement started: its service is down (its
    /// workers cannot start), so the reload made nothing worse; the slot keeps restarting on
    /// its own.
    pub down: bool,
}

impl Request {
    pub fn new(graceful: bool, trigger: Trigger, services: Vec<ServiceId>, only_changed: bool) -> Self {
        Request {
            graceful,
            triggers: vec![trigger],
            waiters: Vec::new(),
            services,
            only_changed,
            done: Vec::new(),
            retries: 0,
            began: false,
            failures: Vec::new(),
        }
    }

    pub fn with_waiter(mut self, waiter: Option<ClientId>) -> Self {
        self.waiters.extend(waiter);
        self
    }

    /// How many slots this request (with the chains it took over) moved to a new worker.
    pub fn moved(&self) -> usize {
        let mut slots = self.done.clone();
        slots.sort();
        slots.dedup();
        slots.len()
    }

    /// Notes a failed slot (its earlier failure in this request, if any, is replaced).
    fn note_failure(&mut self, failure: SlotFailure) {
        self.failures.retain(|f| f.slot != failure.slot);
        self.failures.push(failure);
    }

    /// How it ended once no slot is left to replace: done, unless a slot that was serving
    /// failed (slots of a service that is down do not count against it).
    fn outcome(&self, notes: Vec<String>) -> Outcome {
        let replaced = self.moved();
        if self.failures.iter().all(|f| f.down) {
            Outcome::Done { replaced, notes, down: self.failures.clone() }
        } else {
            Outcome::Aborted { replaced, failures: self.failures.clone(), notes }
        }
    }

    /// What triggered it, for logs and status.
    pub fn reason(&self) -> String {
        self.triggers.iter().map(Trigger::to_string).collect::<Vec<_>>().join("; ")
    }

    /// Both at once: graceful only if both asked for it, every slot if either was a command,
    /// everyone waiting hears the one outcome.
    fn merge(mut self, other: Request) -> Request {
        self.graceful &= other.graceful;
        self.only_changed &= other.only_changed;
        for t in other.triggers {
            if !self.triggers.contains(&t) {
                self.triggers.push(t);
            }
        }
        self.waiters.extend(other.waiters);
        for s in other.services {
            if !self.services.contains(&s) {
                self.services.push(s);
            }
        }
        self.done.extend(other.done);
        self.retries = self.retries.max(other.retries);
        self.began |= other.began;
        for f in other.failures {
            self.note_failure(f);
        }
        self
    }
}

/// What the master knows of a service when the pipeline decides.
#[derive(Debug, Clone)]
pub struct ServiceView<S> {
    pub name: String,
    pub reloadable: bool,
    /// Its plugin file does not exist yet: it has no workers.
    pub waiting: bool,
    /// The snapshot its slots run (the last good one).
    pub current: Option<S>,
    /// Its slots, with the hash of the snapshot each one's serving worker runs.
    pub slots: Vec<(SlotKey, u64)>,
    /// Its slots without a ready serving worker (dead, starting again, backing off).
    pub down: Vec<SlotKey>,
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every slot that needed it runs a new worker, but for those of services that were down
    /// (`down`: they keep restarting on their own). `notes`: files refused on the way.
    Done { replaced: usize, notes: Vec<String>, down: Vec<SlotFailure> },
    /// Nothing needed replacing (files unchanged, or no service to reload).
    Unchanged { notes: Vec<String> },
    /// The new plugin file was refused: nothing was replaced.
    Refused { service: ServiceId, reason: String },
    /// The replacement of a slot that was serving failed: the slots of its service not replaced
    /// yet keep their old workers; the other services were replaced. `failures`: every failed
    /// slot (those of services that were down too); `replaced`: every slot moved.
    Aborted { replaced: usize, failures: Vec<SlotFailure>, notes: Vec<String> },
    /// The master is stopping.
    Abandoned,
}

/// A request that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub request: Request,
    pub outcome: Outcome,
}

/// What the master must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<S> {
    /// Check the plugin file of `service` (off the loop), then call [`Reloader::checked`].
    Check {
        check: CheckId,
        service: ServiceId,
    },
    /// A service's checked file is the one its slots run already: nothing to replace there.
    Unchanged {
        service: ServiceId,
        hash: u64,
    },
    /// The first chain of a request begins replacing workers.
    Began {
        reason: String,
        graceful: bool,
        slots: usize,
    },
    /// A newer request took effect between two steps: the files are checked again.
    Preempted {
        reason: String,
    },
    /// Start the replacement worker of `slot` on `snapshot`; then call [`Reloader::ready`] or
    /// [`Reloader::failed`].
    Start {
        slot: SlotKey,
        snapshot: S,
    },
    /// The replacement of `slot` is ready: it becomes the slot's worker, the old one drains
    /// (graceful) or stops.
    Promote {
        slot: SlotKey,
        graceful: bool,
    },
    Finished(Finished),
}

#[derive(Debug)]
struct Chain<S> {
    request: Request,
    candidates: Vec<(ServiceId, S)>,
    queue: VecDeque<SlotKey>,
    current: Option<SlotKey>,
    /// `current` had no ready worker when its replacement started.
    current_down: bool,
    notes: Vec<String>,
}

#[derive(Debug, Default)]
enum State<S> {
    #[default]
    Idle,
    Checking {
        request: Request,
        check: CheckId,
        pending: Vec<ServiceId>,
        results: Vec<(ServiceId, Result<S, String>)>,
    },
    Replacing(Chain<S>),
}

/// The reload pipeline: at most one reload under way, plus the request waiting for its next step.
#[derive(Debug)]
pub struct Reloader<S> {
    state: State<S>,
    queued: Option<Request>,
    checks: u64,
}

impl<S> Default for Reloader<S> {
    fn default() -> Self {
        Reloader { state: State::Idle, queued: None, checks: 0 }
    }
}

type Effects<S> = Vec<Effect<S>>;

impl<S: Candidate> Reloader<S> {
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// The chain under way was started by `host upgrade` (its new workers run the new binary).
    pub fn upgrading(&self) -> bool {
        matches!(&self.state, State::Replacing(chain) if chain.request.triggers.contains(&Trigger::Upgrade))
    }

    /// Files are being checked (a request now merges with the check and checks again).
    pub fn is_checking(&self) -> bool {
        matches!(self.state, State::Checking { .. })
    }

    /// Asks for a reload.
    pub fn request(&mut self, request: Request, views: &[ServiceView<S>]) -> Effects<S> {
        let mut fx = Vec::new();
        match std::mem::take(&mut self.state) {
            State::Idle => self.begin(request, views, &mut fx),
            // Check again, with whatever files are newest now.
            State::Checking { request: checking, .. } => self.begin(checking.merge(request), views, &mut fx),
            replacing @ State::Replacing(_) => {
                self.state = replacing;
                self.queued = Some(match self.queued.take() {
                    Some(q) => q.merge(request),
                    None => request,
                });
            }
        }
        fx
    }

    /// A check of round `check` ended for `service`.
    pub fn checked(
        &mut self,
        check: CheckId,
        service: ServiceId,
        result: Result<S, String>,
        views: &[ServiceView<S>],
    ) -> Effects<S> {
        let mut fx = Vec::new();
        let State::Checking { check: current, pending, results, .. } = &mut self.state else { return fx };
        if *current != check || !pending.contains(&service) {
            return fx;
        }
        pending.retain(|&s| s != service);
        results.push((service, result));
        if !pending.is_empty() {
            return fx;
        }
        let State::Checking { request, results, .. } = std::mem::take(&mut self.state) else { unreachable!() };
        self.launch(request, results, views, &mut fx);
        fx
    }

    /// The replacement of `slot` is ready.
    pub fn ready(&mut self, slot: SlotKey, views: &[ServiceView<S>]) -> Effects<S> {
        let mut fx = Vec::new();
        let State::Replacing(chain) = &mut self.state else { return fx };
        if chain.current != Some(slot) {
            return fx;
        }
        chain.current = None;
        chain.request.done.push(slot);
        chain.request.failures.retain(|f| f.slot != slot);
        fx.push(Effect::Promote { slot, graceful: chain.request.graceful });
        self.next_step(views, &mut fx);
        fx
    }

    /// The step ended: a queued request preempts the chain (check again with the newest files),
    /// or the next slot's replacement starts.
    fn next_step(&mut self, views: &[ServiceView<S>], fx: &mut Effects<S>) {
        match self.queued.take() {
            // Preempted between two steps: check again with the newest files.
            Some(queued) => {
                let State::Replacing(chain) = std::mem::take(&mut self.state) else { unreachable!() };
                fx.push(Effect::Preempted { reason: queued.reason() });
                self.begin(chain.request.merge(queued), views, fx);
            }
            None => self.step(views, fx),
        }
    }

    /// The replacement of `slot` failed (did not start, exited, or was not ready in time). The
    /// rest of its service keeps its old workers (unless the slot was down, see
    /// [`SlotFailure::down`]: its next slot is tried); the chain goes on with the other services.
    pub fn failed(&mut self, slot: SlotKey, reason: &str, views: &[ServiceView<S>]) -> Effects<S> {
        let mut fx = Vec::new();
        let State::Replacing(chain) = &mut self.state else { return fx };
        if chain.current != Some(slot) {
            return fx;
        }
        chain.current = None;
        let down = chain.current_down;
        chain.request.note_failure(SlotFailure { slot, reason: reason.to_string(), down });
        if !down {
            chain.queue.retain(|k| k.service != slot.service);
        }
        self.next_step(views, &mut fx);
        fx
    }

    /// The chain replaced what it could. A service a failure left on mixed versions (some of
    /// its slots moved) is run again (its moved slots are skipped), at most [`MAX_RETRIES`]
    /// times; else the request ends.
    fn conclude(&mut self, chain: Chain<S>, views: &[ServiceView<S>], fx: &mut Effects<S>) {
        let request = chain.request;
        let mut mixed: Vec<ServiceId> = request
            .failures
            .iter()
            .filter(|f| !f.down && request.done.iter().any(|d| d.service == f.slot.service))
            .map(|f| f.slot.service)
            .collect();
        mixed.sort();
        mixed.dedup();
        if !mixed.is_empty() && request.retries < MAX_RETRIES {
            let mut retry = request;
            retry.retries += 1;
            retry.triggers.push(Trigger::Retry);
            retry.services.retain(|s| mixed.contains(s));
            let retry = match self.queued.take() {
                Some(q) => retry.merge(q),
                None => retry,
            };
            return self.begin(retry, views, fx);
        }
        let outcome = request.outcome(chain.notes);
        self.finish(request, outcome, views, fx);
    }

    /// The master is stopping: everything under way or queued is abandoned.
    pub fn stop(&mut self) -> Effects<S> {
        let request = match std::mem::take(&mut self.state) {
            State::Idle => None,
            State::Checking { request, .. } => Some(request),
            State::Replacing(chain) => Some(chain.request),
        };
        let request = match (request, self.queued.take()) {
            (Some(r), Some(q)) => Some(r.merge(q)),
            (r, q) => r.or(q),
        };
        request.map(|request| Effect::Finished(Finished { request, outcome: Outcome::Abandoned })).into_iter().collect()
    }

    fn begin(&mut self, mut request: Request, views: &[ServiceView<S>], fx: &mut Effects<S>) {
        request.services.retain(|s| views.get(s.0).is_some_and(|v| v.reloadable && !v.waiting));
        if request.services.is_empty() {
            let notes = vec!["no service to reload".to_string()];
            return self.finish(request, Outcome::Unchanged { notes }, views, fx);
        }
        self.checks += 1;
        let check = CheckId(self.checks);
        fx.extend(request.services.iter().map(|&service| Effect::Check { check, service }));
        let pending = request.services.clone();
        self.state = State::Checking { request, check, pending, results: Vec::new() };
    }

    /// Every file was checked: decide what to replace.
    fn launch(
        &mut self,
        mut request: Request,
        mut results: Vec<(ServiceId, Result<S, String>)>,
        views: &[ServiceView<S>],
        fx: &mut Effects<S>,
    ) {
        results.sort_by_key(|(s, _)| request.services.iter().position(|x| x == s));
        let mut candidates = Vec::new();
        let mut notes = Vec::new();
        let mut refused = None;
        for (service, result) in results {
            let view = &views[service.0];
            match result {
                Ok(snap) => candidates.push((service, snap)),
                Err(reason) => match (&view.current, request.only_changed) {
                    // A command recycles the workers even when the newer file is bad.
                    (Some(current), false) => {
                        notes.push(format!(
                            "service {}: plugin file refused ({reason}); workers recycled on the last good snapshot",
                            view.name
                        ));
                        candidates.push((service, current.clone()));
                    }
                    _ => {
                        notes.push(format!("service {}: plugin file refused: {reason}", view.name));
                        refused.get_or_insert((service, reason));
                    }
                },
            }
        }
        if request.only_changed {
            for (service, snap) in &candidates {
                if views[service.0].slots.iter().all(|&(_, hash)| hash == snap.hash()) {
                    fx.push(Effect::Unchanged { service: *service, hash: snap.hash() });
                }
            }
        }
        let queue: VecDeque<SlotKey> = candidates
            .iter()
            .flat_map(|(service, snap)| {
                let request = &request;
                views[service.0].slots.iter().filter_map(move |&(slot, hash)| {
                    let stale = hash != snap.hash();
                    let recycle = !request.only_changed && !request.done.contains(&slot);
                    (stale || recycle).then_some(slot)
                })
            })
            .collect();
        if queue.is_empty() {
            let outcome = match refused {
                Some((service, reason)) if candidates.is_empty() => Outcome::Refused { service, reason },
                // A preempted chain whose slots are all on the newest file by now: it is done.
                _ if request.began => request.outcome(notes),
                _ => Outcome::Unchanged { notes },
            };
            return self.finish(request, outcome, views, fx);
        }
        if !request.began {
            request.began = true;
            fx.push(Effect::Began { reason: request.reason(), graceful: request.graceful, slots: queue.len() });
        }
        self.state = State::Replacing(Chain { request, candidates, queue, current: None, current_down: false, notes });
        self.step(views, fx);
    }

    /// Starts the next slot's replacement, or ends the chain.
    fn step(&mut self, views: &[ServiceView<S>], fx: &mut Effects<S>) {
        let State::Replacing(chain) = &mut self.state else { return };
        match chain.queue.pop_front() {
            Some(slot) => {
                chain.current = Some(slot);
                chain.current_down = views.get(slot.service.0).is_some_and(|v| v.down.contains(&slot));
                let snapshot = chain
                    .candidates
                    .iter()
                    .find(|(s, _)| *s == slot.service)
                    .map(|(_, c)| c.clone())
                    .expect("every queued slot belongs to a service with a candidate");
                fx.push(Effect::Start { slot, snapshot });
            }
            None => {
                let State::Replacing(chain) = std::mem::take(&mut self.state) else { unreachable!() };
                self.conclude(chain, views, fx);
            }
        }
    }

    fn finish(&mut self, request: Request, outcome: Outcome, views: &[ServiceView<S>], fx: &mut Effects<S>) {
        self.state = State::Idle;
        fx.push(Effect::Finished(Finished { request, outcome }));
        if let Some(queued) = self.queued.take() {
            self.begin(queued, views, fx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Snap(u64);

    impl Candidate for Snap {
        fn hash(&self) -> u64 {
            self.0
        }
    }

    fn key(service: usize, slot: u32) -> SlotKey {
        SlotKey { service: ServiceId(service), slot }
    }

    /// Services each with `count` slots running snapshot `hash`.
    fn views(services: &[(u32, u64)]) -> Vec<ServiceView<Snap>> {
        services
            .iter()
            .enumerate()
            .map(|(i, &(count, hash))| ServiceView {
                name: format!("s{i}"),
                reloadable: true,
                waiting: false,
                current: Some(Snap(hash)),
                slots: (0..count).map(|n| (key(i, n), hash)).collect(),
                down: Vec::new(),
            })
            .collect()
    }

    fn file(services: &[usize]) -> Request {
        let services = services.iter().map(|&s| ServiceId(s)).collect();
        Request::new(true, Trigger::File("/p/libhttp.so".into()), services, true)
    }

    fn command(services: &[usize], waiter: u64) -> Request {
        let services = services.iter().map(|&s| ServiceId(s)).collect();
        Request::new(false, Trigger::Command, services, false).with_waiter(Some(ClientId(waiter)))
    }

    /// The effects that act on workers (not the ones that only inform).
    fn main(fx: &[Effect<Snap>]) -> Vec<Effect<Snap>> {
        fx.iter()
            .filter(|e| !matches!(e, Effect::Began { .. } | Effect::Unchanged { .. } | Effect::Preempted { .. }))
            .cloned()
            .collect()
    }

    fn checks(fx: &[Effect<Snap>]) -> Vec<(CheckId, ServiceId)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Check { check, service } => Some((*check, *service)),
                _ => None,
            })
            .collect()
    }

    fn finished(fx: &[Effect<Snap>]) -> Vec<&Finished> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Finished(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_chain_replaces_slots_one_at_a_time_make_before_break() {
        let v = views(&[(3, 1)]);
        let mut r = Reloader::default();
        let fx = r.request(file(&[0]), &v);
        let [(check, service)] = checks(&fx)[..] else { panic!("{fx:?}") };
        let fx = r.checked(check, service, Ok(Snap(2)), &v);
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(0, 0), snapshot: Snap(2) }]);
        assert!(r.ready(key(0, 1), &v).is_empty(), "a ready from another slot changes nothing");
        assert_eq!(
            main(&r.ready(key(0, 0), &v)),
            vec![
                Effect::Promote { slot: key(0, 0), graceful: true },
                Effect::Start { slot: key(0, 1), snapshot: Snap(2) }
            ]
        );
        r.ready(key(0, 1), &v);
        let fx = r.ready(key(0, 2), &v);
        assert_eq!(main(&fx)[0], Effect::Promote { slot: key(0, 2), graceful: true });
        assert_eq!(finished(&fx)[0].outcome, Outcome::Done { replaced: 3, notes: vec![], down: vec![] });
        assert!(r.is_idle());
    }

    #[test]
    fn an_unchanged_file_replaces_nothing_but_a_command_recycles() {
        let v = views(&[(2, 7)]);
        let mut r = Reloader::default();
        let fx = r.request(file(&[0]), &v);
        let (check, service) = checks(&fx)[0];
        let fx = r.checked(check, service, Ok(Snap(7)), &v);
        assert!(matches!(finished(&fx)[0].outcome, Outcome::Unchanged { .. }), "{fx:?}");
        assert!(fx.contains(&Effect::Unchanged { service: ServiceId(0), hash: 7 }));
        assert!(!fx.iter().any(|e| matches!(e, Effect::Began { .. })));
        let fx = r.request(command(&[0], 1), &v);
        let (check, service) = checks(&fx)[0];
        let fx = r.checked(check, service, Ok(Snap(7)), &v);
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(0, 0), snapshot: Snap(7) }]);
    }

    #[test]
    fn waiting_and_non_reloadable_services_are_never_in_a_chain() {
        let mut v = views(&[(1, 1), (1, 1), (1, 1)]);
        v[0].waiting = true;
        v[0].current = None;
        v[1].reloadable = false;
        let mut r = Reloader::default();
        // A command (every service) reloads only the one that can be.
        let fx = r.request(command(&[0, 1, 2], 9), &v);
        assert_eq!(checks(&fx).iter().map(|c| c.1).collect::<Vec<_>>(), vec![ServiceId(2)]);
        // A file event of a non-reloadable service does nothing.
        let mut r = Reloader::default();
        let fx = r.request(file(&[1]), &v);
        assert!(checks(&fx).is_empty());
        assert!(matches!(finished(&fx)[0].outcome, Outcome::Unchanged { .. }));
        assert!(r.is_idle());
    }

    #[test]
    fn a_refused_file_aborts_a_file_reload_but_a_command_recycles_on_the_last_good_snapshot() {
        let v = views(&[(2, 1)]);
        let mut r = Reloader::default();
        let fx = r.request(file(&[0]), &v);
        let (check, service) = checks(&fx)[0];
        let fx = r.checked(check, service, Err("truncated".into()), &v);
        assert_eq!(finished(&fx)[0].outcome, Outcome::Refused { service: ServiceId(0), reason: "truncated".into() });
        let fx = r.request(command(&[0], 1), &v);
        let (check, service) = checks(&fx)[0];
        let fx = r.checked(check, service, Err("truncated".into()), &v);
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(0, 0), snapshot: Snap(1) }]);
        r.ready(key(0, 0), &v);
        let fx = r.ready(key(0, 1), &v);
        match &finished(&fx)[0].outcome {
            Outcome::Done { replaced: 2, notes, .. } => assert!(notes[0].contains("last good snapshot"), "{notes:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_during_a_check_checks_again_and_old_results_are_ignored() {
        let v = views(&[(1, 1), (1, 1)]);
        let mut r = Reloader::default();
        let fx = r.request(file(&[0]), &v);
        let (old, _) = checks(&fx)[0];
        let fx = r.request(file(&[1]), &v);
        let new = checks(&fx);
        assert_eq!(new.len(), 2, "both services checked again: {fx:?}");
        assert!(r.checked(old, ServiceId(0), Ok(Snap(2)), &v).is_empty(), "stale round ignored");
        assert!(r.checked(new[0].0, ServiceId(0), Ok(Snap(2)), &v).is_empty());
        let fx = r.checked(new[1].0, ServiceId(1), Ok(Snap(3)), &v);
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(0, 0), snapshot: Snap(2) }]);
    }

    #[test]
    fn a_trigger_during_a_chain_takes_effect_at_the_next_step_with_the_newest_file() {
        let mut v = views(&[(3, 1)]);
        let mut r = Reloader::default();
        let fx = r.request(file(&[0]), &v);
        let (check, _) = checks(&fx)[0];
        r.checked(check, ServiceId(0), Ok(Snap(2)), &v);
        // The file changes again while slot 0 is replaced.
        assert!(r.request(file(&[0]), &v).is_empty(), "queued until the step ends");
        v[0].slots[0].1 = 2; // slot 0 now runs snapshot 2
        let fx = r.ready(key(0, 0), &v);
        assert_eq!(main(&fx)[0], Effect::Promote { slot: key(0, 0), graceful: true });
        assert!(fx.iter().any(|e| matches!(e, Effect::Preempted { .. })));
        let (check, _) = checks(&fx)[0];
        // The newest file replaces every slot, slot 0 included (it runs the outdated one)...
        let fx = r.checked(check, ServiceId(0), Ok(Snap(3)), &v);
        assert!(!fx.iter().any(|e| matches!(e, Effect::Began { .. })), "one request, one beginning");
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(0, 0), snapshot: Snap(3) }]);
        // ...and had the file not changed again, slot 0 would not have been replaced twice.
        let mut r = Reloader::default();
        let mut v = views(&[(2, 1)]);
        let (check, _) = checks(&r.request(file(&[0]), &v))[0];
        r.checked(check, ServiceId(0), Ok(Snap(2)), &v);
        r.request(file(&[0]), &v);
        v[0].slots[0].1 = 2;
        let (check, _) = checks(&r.ready(key(0, 0), &v))[0];
        let fx = r.checked(check, ServiceId(0), Ok(Snap(2)), &v);
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(0, 1), snapshot: Snap(2) }]);
    }

    #[test]
    fn a_chain_preempted_at_its_last_step_is_done_not_unchanged() {
        let mut v = views(&[(2, 1)]);
        let mut r = Reloader::default();
        let (check, _) = checks(&r.request(file(&[0]), &v))[0];
        r.checked(check, ServiceId(0), Ok(Snap(2)), &v);
        r.ready(key(0, 0), &v);
        v[0].slots[0].1 = 2;
        r.request(file(&[0]), &v);
        v[0].slots[1].1 = 2;
        let (check, _) = checks(&r.ready(key(0, 1), &v))[0];
        let fx = r.checked(check, ServiceId(0), Ok(Snap(2)), &v);
        assert_eq!(finished(&fx)[0].outcome, Outcome::Done { replaced: 2, notes: vec![], down: vec![] });
    }

    #[test]
    fn a_preempted_command_does_not_recycle_slots_it_already_replaced() {
        let mut v = views(&[(2, 1)]);
        let mut r = Reloader::default();
        let (check, _) = checks(&r.request(command(&[0], 1), &v))[0];
        r.checked(check, ServiceId(0), Ok(Snap(1)), &v);
        r.request(command(&[0], 2), &v);
        v[0].slots[0].1 = 1;
        let (check, _) = checks(&r.ready(key(0, 0), &v))[0];
        let fx = r.checked(check, ServiceId(0), Ok(Snap(1)), &v);
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(0, 1), snapshot: Snap(1) }]);
        let fx = r.ready(key(0, 1), &v);
        let done = finished(&fx);
        assert_eq!(done[0].request.waiters, vec![ClientId(1), ClientId(2)], "both waiters hear the outcome");
    }

    #[test]
    fn a_failed_replacement_aborts_and_a_half_done_chain_is_retried_then_given_up() {
        let v = views(&[(2, 1)]);
        let mut r = Reloader::default();
        let (check, _) = checks(&r.request(file(&[0]), &v))[0];
        r.checked(check, ServiceId(0), Ok(Snap(2)), &v);
        // Nothing replaced yet: the chain aborts at once.
        let fx = r.failed(key(0, 0), "plugin refused to start", &v);
        let failure = SlotFailure { slot: key(0, 0), reason: "plugin refused to start".into(), down: false };
        assert_eq!(finished(&fx)[0].outcome, Outcome::Aborted { replaced: 0, failures: vec![failure], notes: vec![] });
        assert!(r.is_idle());
        // Half-way: retried (the slot already moved is skipped), at most MAX_RETRIES times.
        let mut v = views(&[(2, 1)]);
        let (check, _) = checks(&r.request(file(&[0]), &v))[0];
        r.checked(check, ServiceId(0), Ok(Snap(2)), &v);
        r.ready(key(0, 0), &v);
        v[0].slots[0].1 = 2;
        for attempt in 0..=MAX_RETRIES {
            let fx = r.failed(key(0, 1), "killed", &v);
            if attempt == MAX_RETRIES {
                assert!(matches!(finished(&fx)[0].outcome, Outcome::Aborted { .. }), "{fx:?}");
                break;
            }
            let (check, _) = checks(&fx)[0];
            let fx = r.checked(check, ServiceId(0), Ok(Snap(2)), &v);
            assert_eq!(main(&fx), vec![Effect::Start { slot: key(0, 1), snapshot: Snap(2) }], "retry {attempt}");
        }
        assert!(r.is_idle());
    }

    /// Runs a command reload of `services` through its check (every file unchanged, hash 1).
    fn commanded(r: &mut Reloader<Snap>, services: &[usize], v: &[ServiceView<Snap>]) -> Effects<Snap> {
        let fx = r.request(command(services, 1), v);
        let mut last = Vec::new();
        for (check, service) in checks(&fx) {
            last = r.checked(check, service, Ok(Snap(1)), v);
        }
        last
    }

    #[test]
    fn a_failed_service_does_not_stop_the_chain_for_the_others_and_the_count_is_exact() {
        // Services 0 (2 slots), 1 (2 slots), 2 (1 slot); service 1's first replacement fails.
        let v = views(&[(2, 1), (2, 1), (1, 1)]);
        let mut r = Reloader::default();
        assert_eq!(
            main(&commanded(&mut r, &[0, 1, 2], &v)),
            vec![Effect::Start { slot: key(0, 0), snapshot: Snap(1) }]
        );
        r.ready(key(0, 0), &v);
        assert_eq!(main(&r.ready(key(0, 1), &v))[1], Effect::Start { slot: key(1, 0), snapshot: Snap(1) });
        // Service 1's other slot keeps its old worker: the chain goes on with service 2.
        let fx = r.failed(key(1, 0), "exit code 3", &v);
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(2, 0), snapshot: Snap(1) }]);
        let fx = r.ready(key(2, 0), &v);
        let failure = SlotFailure { slot: key(1, 0), reason: "exit code 3".into(), down: false };
        assert_eq!(finished(&fx)[0].outcome, Outcome::Aborted { replaced: 3, failures: vec![failure], notes: vec![] });
        assert!(r.is_idle(), "no retry: the failed service did not move at all");
    }

    #[test]
    fn a_service_that_is_down_fails_no_reload() {
        // Service 0 is down (its slots have no ready worker); service 1 serves.
        let mut v = views(&[(2, 1), (1, 1)]);
        v[0].down = vec![key(0, 0), key(0, 1)];
        let mut r = Reloader::default();
        commanded(&mut r, &[0, 1], &v);
        // A down slot's failure does not end its service's part: the next slot is tried.
        let fx = r.failed(key(0, 0), "exit code 3", &v);
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(0, 1), snapshot: Snap(1) }]);
        let fx = r.failed(key(0, 1), "exit code 3", &v);
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(1, 0), snapshot: Snap(1) }]);
        let fx = r.ready(key(1, 0), &v);
        match &finished(&fx)[0].outcome {
            Outcome::Done { replaced: 1, down, .. } => {
                assert_eq!(down.iter().map(|f| f.slot).collect::<Vec<_>>(), vec![key(0, 0), key(0, 1)])
            }
            other => panic!("{other:?}"),
        }
        assert!(r.is_idle(), "a down service is not retried");
    }

    #[test]
    fn only_a_service_left_on_mixed_versions_is_retried_and_its_count_is_kept() {
        let v = views(&[(2, 1), (1, 1)]);
        let mut r = Reloader::default();
        commanded(&mut r, &[0, 1], &v);
        r.ready(key(0, 0), &v);
        r.failed(key(0, 1), "killed", &v);
        // Service 1 is replaced; then service 0 alone is checked again and its slot 1 retried.
        let fx = r.ready(key(1, 0), &v);
        assert!(finished(&fx).is_empty(), "{fx:?}");
        let retry = checks(&fx);
        assert_eq!(retry.iter().map(|c| c.1).collect::<Vec<_>>(), vec![ServiceId(0)]);
        let fx = r.checked(retry[0].0, ServiceId(0), Ok(Snap(1)), &v);
        assert_eq!(main(&fx), vec![Effect::Start { slot: key(0, 1), snapshot: Snap(1) }]);
        let fx = r.ready(key(0, 1), &v);
        assert_eq!(finished(&fx)[0].outcome, Outcome::Done { replaced: 3, notes: vec![], down: vec![] });
    }

    #[test]
    fn stop_abandons_the_check_or_chain_and_the_queued_request() {
        let v = views(&[(2, 1)]);
        let mut r = Reloader::default();
        r.request(command(&[0], 1), &v);
        let fx = r.stop();
        assert_eq!(finished(&fx)[0].outcome, Outcome::Abandoned);
        assert!(r.is_idle());
        let (check, _) = checks(&r.request(file(&[0]), &v))[0];
        r.checked(check, ServiceId(0), Ok(Snap(2)), &v);
        r.request(command(&[0], 2), &v);
        let fx = r.stop();
        assert_eq!(fx.len(), 1);
        assert_eq!(finished(&fx)[0].request.waiters, vec![ClientId(2)]);
        assert!(r.stop().is_empty());
        // Results of an abandoned check are ignored.
        assert!(r.checked(check, ServiceId(0), Ok(Snap(2)), &v).is_empty());
    }

    #[test]
    fn merged_requests_keep_every_waiter_and_the_strictest_mode() {
        let a = command(&[1], 1);
        let b = file(&[0]);
        let m = a.merge(b);
        assert!(!m.graceful && !m.only_changed);
        assert_eq!(m.services, vec![ServiceId(1), ServiceId(0)]);
        assert_eq!(m.reason(), "host reload; /p/libhttp.so changed");
    }
}
