//! Transactions: `MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`, with redis-server 7.0's
//! semantics. Commands sent after `MULTI` are checked (name, arity) and queued, each answered
//! `QUEUED`; one refused while queueing makes `EXEC` answer `EXECABORT` and run nothing. `EXEC`
//! runs the queue in one go (nothing else runs in between: a worker is single-threaded) unless a
//! `WATCH`ed key was written, removed or expired since the `WATCH`: then it answers a null array.
//! The state belongs to the connection and ends with it.

use std::ops::Range;

use super::{execute, Server, Session};
use crate::proto::ArgsView;
use crate::reply::Reply;

/// The state of a connection between `MULTI` and `EXEC`/`DISCARD`.
#[derive(Debug, Default, Clone)]
pub struct Transaction {
    queued: Vec<Queued>,
    /// A command was refused while queueing: `EXEC` aborts.
    aborted: bool,
}

/// One queued command: its arguments, copied.
#[derive(Debug, Clone)]
struct Queued {
    bytes: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl Transaction {
    pub fn queue(&mut self, args: ArgsView<'_>) {
        let mut q = Queued { bytes: Vec::new(), ranges: Vec::with_capacity(args.len()) };
        for arg in args.iter() {
            let start = q.bytes.len();
            q.bytes.extend_from_slice(arg);
            q.ranges.push(start..q.bytes.len());
        }
        self.queued.push(q);
    }

    /// Refused while queueing (an unknown command, a wrong number of arguments).
    pub fn abort(&mut self) {
        self.aborted = true;
    }
}

pub fn multi(session: &mut Session, r: &mut Reply<'_>) {
    if session.multi.is_some() {
        return r.error("ERR MULTI calls can not be nested");
    }
    session.multi = Some(Transaction::default());
    r.ok();
}

pub fn discard(server: &mut Server, session: &mut Session, r: &mut Reply<'_>) {
    if session.multi.take().is_none() {
        return r.error("ERR DISCARD without MULTI");
    }
    unwatch_all(server, session);
    r.ok();
}

pub fn watch(server: &mut Server, session: &mut Session, args: ArgsView<'_>, now: u64, r: &mut Reply<'_>) {
    if session.multi.is_some() {
        return r.error("ERR WATCH inside MULTI is not allowed");
    }
    for key in args.iter().skip(1) {
        if !session.watched.contains_key(key) {
            let stamp = server.store.watch(key, now);
            session.watched.insert(key.into(), stamp);
        }
    }
    r.ok();
}

pub fn unwatch(server: &mut Server, session: &mut Session, r: &mut Reply<'_>) {
    unwatch_all(server, session);
    r.ok();
}

/// Ends every watch of the connection (also when it closes).
pub fn unwatch_all(server: &mut Server, session: &mut Session) {
    for (key, _) in session.watched.drain() {
        server.store.unwatch(&key);
    }
}

/// `EXEC`: the queued commands' replies in an array, or why they did not run.
pub fn exec(server: &mut Server, session: &mut Session, now: u64, out: &mut Vec<u8>) {
    let resp3 = session.resp3;
    let Some(tx) = session.multi.take() else {
        return Reply::new(out, resp3).error("ERR EXEC without MULTI");
    };
    // A watched key whose deadline passed is removed now, which counts as a change.
    for key in session.watched.keys() {
        server.store.contains(key, now);
    }
    let changed = session.watched.iter().any(|(key, stamp)| server.store.changed_since(key, *stamp));
    unwatch_all(server, session);
    if tx.aborted {
        return Reply::new(out, resp3).error("EXECABORT Transaction discarded because of previous errors.");
    }
    if changed {
        return Reply::new(out, resp3).null_array();
    }
    Reply::new(out, resp3).array(tx.queued.len());
    for q in &tx.queued {
        execute(server, session, ArgsView::new(&q.bytes, &q.ranges), now, out);
    }
}
