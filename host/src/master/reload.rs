//! The reload chain: replace the workers of every reloadable slot one at a time, make before
//! break. Pure logic (no processes, no clock): the master feeds it what happened and does what
//! it answers. See DESIGN.md section 3.

use std::collections::VecDeque;

/// One worker slot: service index and slot number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotKey {
    pub service: usize,
    pub slot: u32,
}

/// What the master must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start the replacement worker of this slot (with the chain's plugin snapshot).
    Start(SlotKey),
    /// The replacement of this slot is ready: ask the old worker(s) of the slot to stop (drain
    /// when the chain is graceful).
    Retire(SlotKey),
    /// The chain is over.
    Finished(Outcome),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every slot runs a new worker.
    Done { replaced: usize },
    /// A replacement failed: the chain stopped there; slots not yet replaced keep their old
    /// workers, those already replaced keep their new ones.
    Aborted { slot: SlotKey, replaced: usize, reason: String },
}

/// Who asked for a reload, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub graceful: bool,
    /// Why (`SIGHUP`, `host reload`, `plugins/http.so changed`…), for the log.
    pub reason: String,
    /// Opaque ids of control clients waiting for the outcome.
    pub waiters: Vec<u64>,
    /// The services to reload (indices).
    pub services: Vec<usize>,
    /// Skip services whose plugin file did not change (a watcher event, not a command).
    pub only_changed: bool,
}

/// A chain under way.
#[derive(Debug)]
pub struct Chain {
    pub request: Request,
    pending: VecDeque<SlotKey>,
    current: Option<SlotKey>,
    replaced: usize,
}

impl Chain {
    /// A chain over `slots`, in order. Call [`Chain::first`] to get its first step.
    pub fn new(slots: Vec<SlotKey>, request: Request) -> Self {
        Chain { request, pending: slots.into(), current: None, replaced: 0 }
    }

    pub fn first(&mut self) -> Step {
        self.advance()
    }

    fn advance(&mut self) -> Step {
        match self.pending.pop_front() {
            Some(key) => {
                self.current = Some(key);
                Step::Start(key)
            }
            None => {
                self.current = None;
                Step::Finished(Outcome::Done { replaced: self.replaced })
            }
        }
    }

    /// The replacement of `key` reported ready: retire the old worker, then go on.
    pub fn ready(&mut self, key: SlotKey) -> Vec<Step> {
        if self.current != Some(key) {
            return Vec::new();
        }
        self.replaced += 1;
        vec![Step::Retire(key), self.advance()]
    }

    /// The replacement of `key` failed (did not load, exited, or was not ready in time).
    pub fn failed(&mut self, key: SlotKey, reason: &str) -> Option<Step> {
        if self.current != Some(key) {
            return None;
        }
        self.current = None;
        self.pending.clear();
        Some(Step::Finished(Outcome::Aborted { slot: key, replaced: self.replaced, reason: reason.to_string() }))
    }
}

/// At most one chain at a time; a trigger during a chain waits, merged with any other waiting
/// one, and runs (with whatever plugin file is newest then) once the chain ends.
#[derive(Debug, Default)]
pub struct Reloader {
    pub chain: Option<Chain>,
    queued: Option<Request>,
}

impl Reloader {
    /// Asks for a reload. Returns the request to start now, or None when one is under way (the
    /// request is queued).
    pub fn trigger(&mut self, request: Request) -> Option<Request> {
        if self.chain.is_none() {
            return Some(request);
        }
        match self.queued.as_mut() {
            Some(q) => {
                // Graceful only if both asked for it; everyone waiting hears the one outcome.
                q.graceful &= request.graceful;
                q.reason = format!("{}; {}", q.reason, request.reason);
                q.waiters.extend(request.waiters);
                q.only_changed &= request.only_changed;
                for s in request.services {
                    if !q.services.contains(&s) {
                        q.services.push(s);
                    }
                }
            }
            None => self.queued = Some(request),
        }
        None
    }

    /// The chain ended: the queued request, if any, is the next to start.
    pub fn finish(&mut self) -> (Option<Chain>, Option<Request>) {
        (self.chain.take(), self.queued.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(slot: u32) -> SlotKey {
        SlotKey { service: 0, slot }
    }

    fn request(reason: &str, waiter: u64) -> Request {
        Request { graceful: true, reason: reason.into(), waiters: vec![waiter], services: vec![0], only_changed: true }
    }

    #[test]
    fn replaces_slots_one_at_a_time_make_before_break() {
        let mut chain = Chain::new(vec![key(0), key(1), key(2)], request("test", 1));
        assert_eq!(chain.first(), Step::Start(key(0)));
        // a ready from another slot changes nothing
        assert!(chain.ready(key(1)).is_empty());
        assert_eq!(chain.ready(key(0)), vec![Step::Retire(key(0)), Step::Start(key(1))]);
        assert_eq!(chain.ready(key(1)), vec![Step::Retire(key(1)), Step::Start(key(2))]);
        assert_eq!(chain.ready(key(2)), vec![Step::Retire(key(2)), Step::Finished(Outcome::Done { replaced: 3 })]);
    }

    #[test]
    fn a_failed_replacement_aborts_and_retires_nothing_more() {
        let mut chain = Chain::new(vec![key(0), key(1), key(2)], request("test", 1));
        chain.first();
        chain.ready(key(0));
        assert_eq!(chain.failed(key(0), "late"), None, "only the current slot can fail");
        let step = chain.failed(key(1), "plugin refused to start");
        assert_eq!(
            step,
            Some(Step::Finished(Outcome::Aborted {
                slot: key(1),
                replaced: 1,
                reason: "plugin refused to start".into()
            }))
        );
        assert!(chain.ready(key(2)).is_empty());
    }

    #[test]
    fn empty_chain_finishes_at_once() {
        let mut chain = Chain::new(vec![], request("nothing reloadable", 1));
        assert_eq!(chain.first(), Step::Finished(Outcome::Done { replaced: 0 }));
    }

    #[test]
    fn triggers_during_a_chain_queue_and_merge() {
        let mut r = Reloader::default();
        let first = r.trigger(request("SIGHUP", 1)).expect("idle: starts at once");
        r.chain = Some(Chain::new(vec![key(0)], first));
        assert!(r.trigger(request("file changed", 2)).is_none());
        let plain = Request {
            graceful: false,
            reason: "SIGUSR1".into(),
            waiters: vec![3],
            services: vec![1, 0],
            only_changed: false,
        };
        assert!(r.trigger(plain).is_none());
        let (done, next) = r.finish();
        assert_eq!(done.unwrap().request.waiters, vec![1]);
        let next = next.expect("queued request runs next");
        assert_eq!(next.waiters, vec![2, 3]);
        assert!(!next.graceful, "a plain reload wins over a graceful one");
        assert!(!next.only_changed, "a command reloads even an unchanged file");
        assert_eq!(next.services, vec![0, 1]);
        assert!(r.chain.is_none());
        assert_eq!(r.finish().1, None);
    }
}
