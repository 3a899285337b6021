//! A Redis-compatible in-memory key-value store: RESP2, and RESP3 after `HELLO 3`; inline and
//! multibulk commands; pipelining. redis-cli, redis-benchmark and redis-py work against it.
//!
//! **Each worker has its own keyspace.** Workers are separate processes and share nothing: with
//! `--count 4` a key set through one connection is invisible on a connection that landed on
//! another worker. Run it with `count = 1` (as `examples/resp.toml` does) for one store.
//!
//! Run: `host --plugin resp --count 1 --listen 127.0.0.1:6380`, then `redis-cli -p 6380`.
//!
//! No config keys. The service's `max_package_size` (`--max-package-size`, 1 MiB by default) is
//! the largest command accepted, so also the largest value (Redis: 512 MB); raise it for larger
//! values. A command that could never fit (a huge `*count` or `$length`) is refused at once with
//! Redis' protocol error, never buffered.
//!
//! Commands (Redis 7.0 semantics and error texts): `GET`, `SET` (`EX`, `PX`, `EXAT`, `PXAT`, `NX`,
//! `XX`, `GET`, `KEEPTTL`), `SETNX`, `SETEX`, `PSETEX`, `GETEX` (`EX`, `PX`, `EXAT`, `PXAT`,
//! `PERSIST`), `GETSET`, `GETDEL`, `MGET`, `MSET`, `MSETNX`, `DEL`, `UNLINK`, `EXISTS`, `TYPE`,
//! `INCR`, `DECR`, `INCRBY`, `DECRBY`, `APPEND`, `STRLEN`, `EXPIRE`, `PEXPIRE`, `EXPIREAT`,
//! `PEXPIREAT` (`NX`, `XX`, `GT`, `LT`), `TTL`, `PTTL`, `EXPIRETIME`, `PEXPIRETIME`, `PERSIST`,
//! `KEYS`, `SCAN` (`MATCH`, `COUNT`, `TYPE`), `DBSIZE`, `FLUSHALL`, `FLUSHDB`, `MULTI`, `EXEC`,
//! `DISCARD`, `WATCH`, `UNWATCH`, `PING`, `ECHO`, `SELECT 0`, `HELLO`, `AUTH`, `CLIENT` (`ID`,
//! `GETNAME`, `SETNAME`, `SETINFO`, `INFO`, `NO-EVICT`, `NO-TOUCH`), `CONFIG GET`, `COMMAND`
//! (`COUNT`, `LIST`, `INFO`, `DOCS`: an empty map), `INFO` (server, clients, memory, persistence,
//! stats, replication, cpu, commandstats, errorstats, cluster, keyspace), `FUNCTION FLUSH` and
//! `FUNCTION LIST` (there are no functions: OK and an empty list), `QUIT`, and pub/sub on the
//! host's topics: `SUBSCRIBE`, `UNSUBSCRIBE`, `PSUBSCRIBE`, `PUNSUBSCRIBE`, `PUBLISH` reach every
//! worker of the service and every host of its cluster (`--cluster`; [`pubsub`] says how, and
//! what differs from Redis: `PUBLISH` counts this worker's receivers, as Redis Cluster counts its
//! node's; no sharded channels). Values are strings
//! only. Nothing is persisted (`INFO persistence` says so: `loading:0`, `aof_enabled:0`, no
//! saves); `used_memory` is the worker's resident set (there is no allocator accounting).
//!
//! Deadlines are given and checked as Redis does, in Unix milliseconds: a TTL that overflows once
//! made milliseconds or added to the clock is refused with `ERR invalid expire time in '…'
//! command`. Transactions (`MULTI` … `EXEC`, redis-py's default `pipeline()`) queue each command
//! (`QUEUED`); an unknown command or a wrong number of arguments while queueing makes `EXEC`
//! answer `EXECABORT`; a `WATCH`ed key written, deleted, flushed or expired before `EXEC` makes it
//! answer nil; `WATCH` inside `MULTI` is an error; the state dies with the connection. Redis' own
//! test units for these commands pass against the plugin: `bench/redis_units.sh`.
//!
//! Keys expire lazily when touched, and actively: every 100 ms the worker samples keys that have
//! a deadline, 20 at a time, and removes the expired ones, going on while more than 10% of a
//! sample had expired, within a bounded number of rounds and about a millisecond (Redis' algorithm).
//!
//! On a reload, `host upgrade` or a recycle the keyspace (with its deadlines), the counters and
//! every connection's session (client id and name, RESP3) move to the new worker, and so do the
//! connections (hand-over, [`handover`]): a client sees the same keys on an unbroken connection.
//! The keyspace is copied in steps while the old worker serves ([`precopy`]); clients pause only
//! for the keys written during the copy.
//! A subscriber moves with its channels and hears every message once, in order. A connection
//! inside `MULTI`, with `WATCH`ed keys or with patterns (`PSUBSCRIBE`) finishes on the old
//! worker, which drains it.
//!
//! The parts are public for other plugins: [`proto`] frames and splits commands, [`reply`]
//! writes RESP2/RESP3 replies, [`store`] is the keyspace, [`commands`] runs commands on it.

pub mod commands;
pub mod glob;
pub mod handover;
#[cfg(test)]
mod handover_cost;
#[cfg(test)]
mod handover_tests;
pub mod precopy;
pub mod proto;
pub mod pubsub;
pub mod reply;
pub mod store;

use std::time::{Duration, Instant};

use plugin_api::{export_plugin, ConnId, ConnMap, ExportStep, Frame, Host, Protocol, StateWriter, TimerId, WorkerInfo};

use crate::commands::{execute, After, Server, ServerInfo, Session};
use crate::proto::{frame_command, Args, Framed, Progress, BULK_MAX};

/// How often active expiry runs (Redis' default `hz`).
const EXPIRE_INTERVAL: Duration = Duration::from_millis(100);
/// Sampling rounds per batch of active expiry; a tick runs batches until little is stale, at most
/// [`EXPIRE_MAX_BATCHES`] of them and at most [`EXPIRE_BUDGET`].
const EXPIRE_ROUNDS: usize = 16;
const EXPIRE_MAX_BATCHES: usize = 16;
const EXPIRE_BUDGET: Duration = Duration::from_millis(1);
/// The `data` of the active expiry timer.
const EXPIRE_TIMER: u64 = 1;

#[derive(Debug, Default)]
struct Conn {
    session: Session,
    /// Where framing stopped in an incomplete command.
    progress: Progress,
    /// Part of a command is buffered.
    partial: bool,
    /// Draining: close after the command in flight.
    close_after_command: bool,
    /// Its channels and patterns (`SUBSCRIBE`, `PSUBSCRIBE`).
    subs: pubsub::Subscriptions,
}

pub struct Resp {
    server: Server,
    conns: ConnMap<Conn>,
    /// The pattern subscribers of this worker.
    patterns: pubsub::Patterns,
    /// Reused from one command to the next.
    args: Args,
    out: Vec<u8>,
    max_package_size: usize,
    /// A hand-over's pre-copy under way in this (old) worker ([`precopy`]).
    copy: Option<precopy::Copy>,
    /// The keyspace a hand-over's steps staged in this (new) worker, served once committed.
    staged: Option<store::Store>,
}

impl Resp {
    fn conn(&mut self, host: &Host<'_>, conn: ConnId) -> &mut Conn {
        if self.conns.get(conn).is_none() {
            let session = self.server.new_session(host.peer_addr(conn), host.local_addr(conn));
            self.conns.insert(conn, Conn { session, ..Conn::default() });
        }
        self.conns.get_mut(conn).expect("just inserted")
    }
}

impl Protocol for Resp {
    const HANDOVER_VERSION: u32 = handover::STATE_VERSION;

    fn new(_config: &str, worker: &WorkerInfo) -> Result<Self, String> {
        let info = ServerInfo {
            pid: worker.pid,
            slot: worker.slot,
            service: worker.service.clone(),
            max_bulk: worker.max_package_size.min(BULK_MAX),
        };
        Ok(Resp {
            server: Server::new(info),
            conns: ConnMap::new(),
            patterns: pubsub::Patterns::default(),
            args: Args::default(),
            out: Vec::with_capacity(4096),
            max_package_size: worker.max_package_size,
            copy: None,
            staged: None,
        })
    }

    fn on_worker_start(&mut self, host: &mut Host<'_>) -> Result<(), String> {
        self.server.started_ms = host.now_ms();
        host.add_interval(EXPIRE_INTERVAL, EXPIRE_TIMER);
        Ok(())
    }

    fn on_connect(&mut self, host: &mut Host<'_>, conn: ConnId) {
        self.conn(host, conn);
    }

    fn input(&mut self, host: &mut Host<'_>, conn: ConnId, buf: &[u8]) -> Frame {
        let max = self.max_package_size;
        let state = self.conn(host, conn);
        match frame_command(buf, max, &mut state.progress) {
            Framed::NeedMore => {
                state.partial = true;
                Frame::NeedMore
            }
            Framed::Complete(len) => {
                state.progress = Progress::default();
                state.partial = len > buf.len();
                Frame::Complete(len)
            }
            Framed::Error(e) => {
                // Redis answers a protocol error, then closes the connection.
                self.out.clear();
                e.write_reply(&mut self.out);
                host.send(conn, &self.out);
                Frame::Invalid
            }
        }
    }

    fn on_message(&mut self, host: &mut Host<'_>, conn: ConnId, msg: &[u8]) {
        let now = host.now_ms();
        self.conn(host, conn);
        let Some(state) = self.conns.get_mut(conn) else { return };
        state.partial = false;
        self.out.clear();
        if let Err(e) = self.args.parse(msg) {
            e.write_reply(&mut self.out);
            host.close_with(conn, &self.out);
            return;
        }
        let resp3 = state.session.resp3;
        let view = self.args.view(msg);
        let after = match pubsub::command(host, conn, &mut state.subs, &mut self.patterns, resp3, view, &mut self.out) {
            pubsub::Outcome::NotPubSub => {
                execute(&mut self.server, &mut state.session, self.args.view(msg), now, &mut self.out)
            }
            pubsub::Outcome::Done => After::Continue,
            pubsub::Outcome::Close => After::Close,
        };
        if state.session.resp3 != resp3 && !state.subs.is_empty() {
            // HELLO switched the framing: the subscriptions follow it.
            for channel in &state.subs.channels {
                let _ = host.unsubscribe(conn, pubsub::topic(channel, resp3));
                let _ = host.subscribe(conn, pubsub::topic(channel, !resp3));
            }
            self.patterns.switch(&state.subs.patterns, conn, !resp3);
        }
        if !self.out.is_empty() {
            host.send(conn, &self.out);
        }
        if after == After::Close || state.close_after_command {
            host.close(conn);
        }
    }

    fn on_close(&mut self, host: &mut Host<'_>, conn: ConnId) {
        if let Some(mut c) = self.conns.remove(conn) {
            for pattern in &c.subs.patterns {
                self.patterns.remove(host, pattern, conn, c.session.resp3);
            }
            self.server.end_session(&mut c.session);
        }
    }

    fn on_publish(&mut self, host: &mut Host<'_>, topic: &[u8], msg: &[u8]) {
        if topic == pubsub::PATTERN_TOPIC {
            self.patterns.deliver(host, msg, &mut self.out);
        }
    }

    fn on_publish_missed(&mut self, host: &mut Host<'_>, conn: ConnId, topic: &[u8], msg: &[u8]) {
        if topic != pubsub::PATTERN_TOPIC {
            return;
        }
        if let Some(c) = self.conns.get(conn) {
            self.patterns.deliver_to(host, conn, c.session.resp3, msg, &mut self.out);
        }
    }

    fn on_timer(&mut self, host: &mut Host<'_>, _timer: TimerId, data: u64) {
        if data != EXPIRE_TIMER {
            return;
        }
        let now = host.now_ms();
        let started = Instant::now();
        for _ in 0..EXPIRE_MAX_BATCHES {
            let (_, more) = self.server.store.expire_cycle(now, EXPIRE_ROUNDS);
            if !more || started.elapsed() >= EXPIRE_BUDGET {
                break;
            }
        }
    }

    fn handover_accepts(&mut self, _host: &mut Host<'_>, _plugin: &str, version: u32) -> bool {
        handover::reads(version)
    }

    fn export_conn(&mut self, host: &mut Host<'_>, conn: ConnId, out: &mut StateWriter<'_>) -> bool {
        match self.conns.get(conn) {
            // Its channels move with it (the host's topics), the list in its state. Its patterns
            // are this plugin's own delivery (`on_publish`): the host keeps the seam for them
            // once told (`handover_hears`); a host that cannot leaves it to drain here.
            Some(c) if !c.close_after_command => {
                (c.subs.patterns.is_empty() || host.handover_hears(conn, pubsub::PATTERN_TOPIC))
                    && handover::write_session(&c.session, &c.subs, out).unwrap_or(false)
            }
            _ => false,
        }
    }

    fn adopt_conn(&mut self, host: &mut Host<'_>, conn: ConnId, version: u32, state: &[u8]) -> bool {
        match handover::read_session(version, state) {
            Ok((session, subs)) => {
                // Its patterns in this worker's table (the worker listens from the first).
                let resp3 = session.resp3;
                for (i, pattern) in subs.patterns.iter().enumerate() {
                    if let Err(e) = self.patterns.add(host, pattern, conn, resp3) {
                        plugin_api::tracing::warn!("a moved connection's patterns cannot be heard here: {e}");
                        for added in &subs.patterns[..i] {
                            self.patterns.remove(host, added, conn, resp3);
                        }
                        return false;
                    }
                }
                let session = self.server.adopt_session(session, host.peer_addr(conn), host.local_addr(conn));
                self.conns.insert(conn, Conn { session, subs, ..Conn::default() });
                true
            }
            Err(e) => {
                plugin_api::tracing::warn!("a moved connection's session is unreadable: {e}");
                false
            }
        }
    }

    fn export_worker(&mut self, host: &mut Host<'_>, out: &mut StateWriter<'_>) -> bool {
        match self.copy.take() {
            // After steps: what changed since the copy began, and what it did not reach.
            Some(copy) => precopy::write_last(&mut self.server, copy, host.now_ms(), out).is_ok(),
            None => handover::write_worker(&self.server, host.now_ms(), out).is_ok(),
        }
    }

    fn adopt_worker(&mut self, host: &mut Host<'_>, version: u32, state: &[u8]) -> bool {
        let staged = self.staged.take();
        if !handover::reads(version) {
            return false;
        }
        let read = match precopy::is_last(state) {
            true => precopy::read_last(&mut self.server, staged.unwrap_or_default(), host.now_ms(), state),
            false => handover::read_worker(&mut self.server, host.now_ms(), state),
        };
        match read {
            Ok(()) => true,
            Err(e) => {
                plugin_api::tracing::error!("the previous worker's keyspace is unreadable: {e}");
                false
            }
        }
    }

    const HANDOVER_STEPS: bool = true;

    fn export_worker_step(&mut self, host: &mut Host<'_>, out: &mut StateWriter<'_>) -> ExportStep {
        let copy = self.copy.get_or_insert_with(|| precopy::Copy::start(&mut self.server.store));
        match precopy::write_step(&mut self.server, copy, host.now_ms(), out) {
            Ok(true) => ExportStep::Ready,
            Ok(false) => ExportStep::More,
            Err(_) => ExportStep::Failed,
        }
    }

    fn adopt_worker_step(&mut self, host: &mut Host<'_>, version: u32, state: &[u8]) -> bool {
        if !handover::reads(version) {
            return false;
        }
        let now = host.now_ms();
        let unix_now = self.server.unix_ms(now);
        let staged = self.staged.get_or_insert_with(store::Store::default);
        match precopy::read_step(staged, unix_now, now, state) {
            Ok(()) => true,
            Err(e) => {
                plugin_api::tracing::error!("a step of the previous worker's keyspace is unreadable: {e}");
                false
            }
        }
    }

    fn drop_worker_steps(&mut self, _host: &mut Host<'_>) {
        if self.copy.take().is_some() {
            self.server.store.stop_recording();
        }
        self.staged = None;
    }

    fn on_drain(&mut self, host: &mut Host<'_>, conn: ConnId) {
        let state = self.conn(host, conn);
        if state.partial {
            state.close_after_command = true;
        } else {
            host.close(conn);
        }
    }
}

export_plugin!(Resp);
