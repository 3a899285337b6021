//! Everything that calls into the plugin: framing and message dispatch, connection events,
//! timers, and the end-of-turn settling (deferred events, one flush per connection).
//!
//! These are free functions over the plugin and the core (not methods of the worker) so that a
//! read buffer owned by the worker can be lent to them while both are borrowed mutably.

use std::io::{self, Read};
use std::net::Shutdown;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RStr;
use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use plugin_api::abi::{
    state_sink, CallStatus, ConnError, ConnErrorCode, RawFrame, RawHandover, RawHost_TO, RawInputEnd, RawPluginBox,
    RawStateSink, RawStep,
};
use plugin_api::{ConnId, TimerId};

use super::core::{Conn, Core, Ctx, Deferred, Flushed};
use super::outbound::OutboundEvent;
use super::phase::ConnPhase;
use super::{HANDSHAKE_TIMEOUT_MS, LINGER_MS};

/// Calls the plugin with a host handle borrowing the core: every plugin call of the loop goes
/// through here, marked in the watch page (which callback, since when) for the master's watchdog.
macro_rules! call {
    ($plugin:expr, $core:expr, $method:ident $(, $arg:expr)*) => {{
        $core.watch.enter(const { crate::ctl::watch::callback(stringify!($method)) }, $core.now_ms);
        let mut ctx = Ctx { core: &mut *$core };
        let host = RawHost_TO::from_ptr(&mut ctx, TD_Opaque);
        let result = $plugin.$method(host $(, $arg)*);
        $core.watch.leave();
        result
    }};
}

/// Calls the plugin about connection `id` (see `settle_panic`).
macro_rules! conn_call {
    ($plugin:expr, $core:expr, $id:expr, $what:literal, $method:ident $(, $arg:expr)*) => {{
        let before = $core.get($id).map(|c| c.output_mark());
        let status = call!($plugin, $core, $method $(, $arg)*);
        settle_panic($core, $id, status, before, $what);
    }};
}

/// A plugin call about one connection panicked: what that call queued (maybe half a response)
/// is dropped, what earlier calls queued (complete answers to earlier messages) still goes out,
/// then the connection closes.
fn settle_panic(core: &mut Core, id: ConnId, status: CallStatus, output_before: Option<(usize, usize)>, what: &str) {
    if status != CallStatus::Panicked {
        return;
    }
    count_panic(core);
    tracing::error!(conn = id.0, "plugin panicked in {what}; closing the connection");
    if let (Some(c), Some(mark)) = (core.get_mut(id), output_before) {
        c.truncate_output(mark);
    }
    core.close_after_flush(id);
}

/// Counts a caught plugin panic (`status` shows the count, and marks a worker that panicked lately).
fn count_panic(core: &mut Core) {
    core.stats.plugin_panics += 1;
    core.stats.last_panic_ms = Some(core.now_ms);
}

pub fn worker_start(plugin: &mut RawPluginBox, core: &mut Core) -> RResult<(), RString> {
    call!(plugin, core, on_worker_start)
}

pub fn worker_stop(plugin: &mut RawPluginBox, core: &mut Core) {
    if call!(plugin, core, on_worker_stop) == CallStatus::Panicked {
        count_panic(core);
        tracing::error!("plugin panicked in its worker-stop hook");
    }
}

pub fn worker_reload(plugin: &mut RawPluginBox, core: &mut Core) {
    if call!(plugin, core, on_worker_reload) == CallStatus::Panicked {
        count_panic(core);
        tracing::error!("plugin panicked in its worker-reload hook");
    }
}

pub fn worker_message(plugin: &mut RawPluginBox, core: &mut Core, from_slot: u32, msg: &[u8]) {
    if call!(plugin, core, on_worker_message, from_slot, RSlice::from_slice(msg)) == CallStatus::Panicked {
        count_panic(core);
        tracing::error!(from_slot, "plugin panicked in on_worker_message");
    }
}

/// Messages on topics the worker subscribed to itself, queued by the fan-out: the plugin hears
/// each (`on_publish`). Those its own `on_publish` publishes wait for the next turn.
pub fn published(plugin: &mut RawPluginBox, core: &mut Core) {
    for _ in 0..core.topics.heard.len() {
        let Some((topic, msg, from)) = core.topics.heard.pop_front() else { break };
        // The drop rule of a hand-over's seam (`topic_seam`): its sends to connections that had
        // this message already are dropped.
        let seam = !core.topics.heard_marks.is_empty();
        if let (true, Some((publisher, seq))) = (seam, from) {
            core.topics.hearing = Some((topic.clone(), publisher, seq));
        }
        let (t, m) = (RSlice::from_slice(&topic), RSlice::from_slice(&msg));
        let status = call!(plugin.extension().ext, core, on_publish, t, m);
        core.topics.hearing = None;
        if status == CallStatus::Panicked {
            count_panic(core);
            tracing::error!("plugin panicked in on_publish");
        }
    }
    core.heard_settled();
}

/// A connection that hears topics through the plugin's `on_publish`, just adopted (or taken
/// back): the plugin writes it what it missed on them across the move (`on_publish_missed`),
/// in order; its marks then advance past those (`topic_seam`).
pub fn publish_missed(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId) {
    let Some((seam, missed)) = core.heard_missed(id) else { return };
    for m in &missed {
        let (topic, msg) = (RSlice::from_slice(&m.topic), RSlice::from_slice(&m.msg));
        if call!(plugin.extension().ext, core, on_publish_missed, id, topic, msg) == CallStatus::Panicked {
            count_panic(core);
            tracing::error!(conn = id.0, "plugin panicked in on_publish_missed");
        }
    }
    core.heard_replayed(id, seam, &missed);
}

pub fn task_done(plugin: &mut RawPluginBox, core: &mut Core, task: u64, result: Result<RVec<u8>, RString>) {
    if call!(plugin, core, on_task_done, task, result.into()) == CallStatus::Panicked {
        count_panic(core);
        tracing::error!(task, "plugin panicked in on_task_done");
    }
}

pub fn notify(plugin: &mut RawPluginBox, core: &mut Core, data: &[u8]) {
    if call!(plugin, core, on_notify, RSlice::from_slice(data)) == CallStatus::Panicked {
        count_panic(core);
        tracing::error!("plugin panicked in on_notify");
    }
}

pub fn connect(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId) {
    conn_call!(plugin, core, id, "on_connect", on_connect, id);
}

// Hand-over (`event_loop/handover.rs`): the plugin's answers; a panic counts and refuses.

/// The version of the state the plugin exports (0: it does not take part).
pub fn handover_version(plugin: &mut RawPluginBox) -> u32 {
    plugin.extension().ext.handover_version()
}

/// Whether the plugin's connections may move in batches (`RawPluginExt::handover_in_batches`).
pub fn handover_in_batches(plugin: &mut RawPluginBox) -> bool {
    plugin.extension().ext.handover_in_batches()
}

pub fn handover_accepts(plugin: &mut RawPluginBox, core: &mut Core, from_plugin: &str, version: u32) -> bool {
    call!(plugin.extension().ext, core, handover_accepts, RStr::from_str(from_plugin), version)
}

pub fn handover_export_conn(
    plugin: &mut RawPluginBox,
    core: &mut Core,
    id: ConnId,
    state: &mut Vec<u8>,
) -> RawHandover {
    // What it hears through `on_publish` the plugin declares now (`RawHostExt::handover_hears`).
    core.topics.declared.remove(&id);
    core.topics.exporting = Some(id);
    let answer = call!(plugin.extension().ext, core, handover_export_conn, id, state_sink(state));
    core.topics.exporting = None;
    let answer = handover_answer(core, answer, "handover_export_conn");
    if answer != RawHandover::MOVE {
        core.topics.declared.remove(&id);
    }
    answer
}

pub fn handover_export_worker(plugin: &mut RawPluginBox, core: &mut Core, sink: &mut impl RawStateSink) -> RawHandover {
    let answer = call!(plugin.extension().ext, core, handover_export_worker, state_sink(sink));
    handover_answer(core, answer, "handover_export_worker")
}

pub fn handover_adopt_worker(plugin: &mut RawPluginBox, core: &mut Core, version: u32, state: &[u8]) -> RawHandover {
    let answer = call!(plugin.extension().ext, core, handover_adopt_worker, version, RSlice::from_slice(state));
    handover_answer(core, answer, "handover_adopt_worker")
}

pub fn handover_adopt_conn(
    plugin: &mut RawPluginBox,
    core: &mut Core,
    id: ConnId,
    version: u32,
    state: &[u8],
) -> RawHandover {
    let answer = call!(plugin.extension().ext, core, handover_adopt_conn, id, version, RSlice::from_slice(state));
    let answer = handover_answer(core, answer, "handover_adopt_conn");
    if answer == RawHandover::MOVE {
        // What it missed on the topics it hears through the plugin: written first.
        publish_missed(plugin, core, id);
    }
    answer
}

/// Pre-copy: the next step of the worker state into `sink` (old worker).
pub fn handover_export_worker_step(
    plugin: &mut RawPluginBox,
    core: &mut Core,
    sink: &mut impl RawStateSink,
) -> RawStep {
    call!(plugin.extension().ext, core, handover_export_worker_step, state_sink(sink))
}

/// Pre-copy: whether the plugin adopts steps (replacement).
pub fn handover_adopts_steps(plugin: &mut RawPluginBox) -> bool {
    plugin.extension().ext.handover_adopts_steps()
}

/// Pre-copy: one step of the old worker's state, staged by the plugin (replacement).
pub fn handover_adopt_worker_step(
    plugin: &mut RawPluginBox,
    core: &mut Core,
    version: u32,
    state: &[u8],
) -> RawHandover {
    let answer = call!(plugin.extension().ext, core, handover_adopt_worker_step, version, RSlice::from_slice(state));
    handover_answer(core, answer, "handover_adopt_worker_step")
}

/// Pre-copy: the hand-over ended without its last part; what the steps kept goes.
pub fn handover_drop_steps(plugin: &mut RawPluginBox, core: &mut Core) {
    if call!(plugin.extension().ext, core, handover_drop_steps) == CallStatus::Panicked {
        count_panic(core);
        tracing::error!("plugin panicked in handover_drop_steps");
    }
}

fn handover_answer(core: &mut Core, answer: RawHandover, what: &str) -> RawHandover {
    if answer == RawHandover::PANICKED {
        count_panic(core);
        tracing::error!("plugin panicked in {what}; read as a refusal");
    }
    answer
}

/// A connection the plugin knows went away outside the table (a hand-over could not take it
/// back): the plugin hears `on_close`.
pub fn closed_elsewhere(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId) {
    let _ = call!(plugin, core, on_close, id);
}

pub fn drain(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId) {
    if core.get(id).is_some_and(|c| c.phase == ConnPhase::Open) {
        conn_call!(plugin, core, id, "on_drain", on_drain, id);
    }
}

pub fn timer(plugin: &mut RawPluginBox, core: &mut Core, timer: TimerId, data: u64) {
    if call!(plugin, core, on_timer, timer, data) == CallStatus::Panicked {
        count_panic(core);
        tracing::error!(timer = timer.0, "plugin panicked in on_timer");
    }
}

/// One datagram of UDP session `id`: one message, no framing (dropped and counted while the
/// session is paused or closing).
pub fn datagram(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId, msg: &[u8]) {
    let now = core.now_ms;
    let Some(c) = core.get_mut(id) else { return };
    c.bytes_in += msg.len() as u64;
    c.last_active_ms = now;
    if c.receive_paused() {
        core.stats.datagrams_dropped += 1;
        return;
    }
    core.stats.messages += 1;
    conn_call!(plugin, core, id, "on_message", on_message, id, RSlice::from_slice(msg));
}

/// Reads what the socket has and dispatches complete messages. `hup`: the peer closed or the
/// socket failed, so read until EOF instead of stopping at the first short read.
pub fn read(plugin: &mut RawPluginBox, core: &mut Core, scratch: &mut [u8], index: usize, hup: bool) {
    read_socket(plugin, core, scratch, index, hup);
    // TLS: reading may have produced records to send (handshake, alerts, tickets).
    if core.by_index(index).is_some_and(|c| c.stream.wants_write()) {
        core.mark_dirty(index);
    }
}

/// A TLS connection whose handshake just completed: now the plugin hears of it.
fn announce_after_handshake(plugin: &mut RawPluginBox, core: &mut Core, index: usize) {
    let Some(c) = core.by_index(index) else { return };
    if c.phase != ConnPhase::Handshaking || c.stream.is_handshaking() {
        return;
    }
    c.phase = ConnPhase::Open;
    let id = c.id;
    let alpn = c.stream.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    tracing::debug!(conn = id.0, sni = ?c.stream.server_name(), ?alpn, "TLS handshake done");
    connect(plugin, core, id);
}

fn read_socket(plugin: &mut RawPluginBox, core: &mut Core, scratch: &mut [u8], index: usize, hup: bool) {
    if let Some(c) = core.by_index(index) {
        // Remembered: a read resumed later must still read to EOF.
        c.read.hup |= hup;
    }
    loop {
        let Some(c) = core.by_index(index) else {
            return;
        };
        // (After end of input, a connection kept open is not read again: the plugin heard it.)
        if !c.read.ready || c.read.eof {
            c.read.ready = false;
            return;
        }
        let lingering = matches!(c.phase, ConnPhase::Lingering { .. });
        if !lingering && c.receive_paused() {
            return;
        }
        let (id, now) = (c.id, core.now_ms);
        let c = core.by_index(index).expect("checked above");
        let result = c.stream.read(scratch);
        if c.phase == ConnPhase::Handshaking && !matches!(&result, Err(e) if e.kind() != io::ErrorKind::WouldBlock) {
            // Before any plaintext is delivered: `on_connect` comes first.
            announce_after_handshake(plugin, core, index);
        }
        let Some(c) = core.by_index(index) else { return };
        match result {
            Ok(0) => {
                c.read.ready = false;
                c.read.eof = true;
                if lingering {
                    close_now(plugin, core, index);
                } else {
                    input_end(plugin, core, id);
                }
                return;
            }
            Ok(n) => {
                c.bytes_in += n as u64;
                c.last_active_ms = now;
                if !lingering {
                    deliver(plugin, core, id, &scratch[..n]);
                }
                // (TLS: records may still wait in the socket; read on until WouldBlock.)
                let short_read_empties =
                    core.by_index(index).is_some_and(|c| !c.read.hup && c.stream.short_read_empties());
                if n < scratch.len() && short_read_empties {
                    // A short read emptied the socket; new data raises a new edge.
                    if let Some(c) = core.by_index(index) {
                        c.read.ready = false;
                    }
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.read.ready = false;
                return;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(conn = id.0, "read failed: {e}");
                fail(plugin, core, id, ConnError::Io);
                return;
            }
        }
    }
}

/// The peer finished sending (a half-close, or a close): the plugin says whether the
/// connection closes once what is queued is written (the default, and what a plugin older than
/// the event gets) or keeps its write side open until the plugin closes it. Either way nothing
/// more is read.
fn input_end(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId) {
    let Some(c) = core.get(id) else { return };
    let before = Some(c.output_mark());
    let end = match c.phase {
        ConnPhase::Open => call!(plugin.extension().ext, core, on_input_end, id),
        _ => RawInputEnd::CLOSE,
    };
    match end {
        RawInputEnd::KEEP_OPEN => {
            tracing::debug!(conn = id.0, "input ended; kept open for writing");
            // A partial message can never complete now (nor time out as a slow one).
            if let Some(c) = core.get_mut(id) {
                (c.input, c.expect, c.message_started_ms) = (Vec::new(), None, None);
            }
        }
        RawInputEnd::PANICKED => settle_panic(core, id, CallStatus::Panicked, before, "on_input_end"),
        // (Also a value this host does not know.)
        _ => core.close_after_flush(id),
    }
}

/// Hands freshly read bytes to the plugin: straight from the read buffer when nothing was
/// pending (no copy), else appended to the connection's input.
fn deliver(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId, bytes: &[u8]) {
    let Some(c) = core.get_mut(id) else { return };
    if c.input.is_empty() {
        let used = dispatch(plugin, core, id, bytes);
        let now = core.now_ms;
        if let Some(c) = core.get_mut(id) {
            if c.phase == ConnPhase::Open {
                c.input.extend_from_slice(&bytes[used..]);
                note_message_start(c, used > 0, now);
            }
        }
    } else {
        c.input.extend_from_slice(bytes);
        dispatch_buffered(plugin, core, id);
    }
}

/// Dispatches what is buffered on the connection (after more bytes came, or a resume).
fn dispatch_buffered(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId) {
    let Some(c) = core.get_mut(id) else { return };
    let mut input = std::mem::take(&mut c.input);
    let used = dispatch(plugin, core, id, &input);
    input.drain(..used);
    let now = core.now_ms;
    if let Some(c) = core.get_mut(id) {
        if c.phase == ConnPhase::Open {
            c.input = input;
            note_message_start(c, used > 0, now);
        }
    }
}

/// Keeps the time the incomplete message now buffered began to arrive (for the message timeout):
/// a new one when messages were consumed, none when nothing is left.
fn note_message_start(c: &mut Conn, consumed: bool, now: u64) {
    c.message_started_ms = match (c.input.is_empty(), consumed, c.message_started_ms) {
        (true, _, _) => None,
        (false, true, _) | (false, false, None) => Some(now),
        (false, false, started) => started,
    };
}

/// Frames and dispatches messages from `buf`; returns how many bytes were consumed.
fn dispatch(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId, buf: &[u8]) -> usize {
    let max = core.limits.max_package_size;
    let mut pos = 0;
    loop {
        let Some(c) = core.get_mut(id) else {
            return pos;
        };
        if c.receive_paused() || pos == buf.len() {
            return pos;
        }
        let rest = &buf[pos..];
        let output_before = Some(c.output_mark());
        let frame = match c.expect {
            Some(len) => RawFrame::Complete(len as u64),
            None => call!(plugin, core, input, id, RSlice::from_slice(rest)),
        };
        match frame {
            RawFrame::NeedMore if rest.len() >= max => return too_large(plugin, core, id, pos),
            RawFrame::NeedMore => return pos,
            RawFrame::Complete(len) if len > max as u64 => return too_large(plugin, core, id, pos),
            RawFrame::Complete(0) | RawFrame::Invalid => {
                core.close_after_flush(id);
                return pos;
            }
            RawFrame::Complete(len) if len as usize > rest.len() => {
                if let Some(c) = core.get_mut(id) {
                    c.expect = Some(len as usize);
                }
                return pos;
            }
            RawFrame::Complete(len) => {
                let len = len as usize;
                if let Some(c) = core.get_mut(id) {
                    c.expect = None;
                }
                core.stats.messages += 1;
                conn_call!(plugin, core, id, "on_message", on_message, id, RSlice::from_slice(&rest[..len]));
                pos += len;
            }
            RawFrame::Panicked => {
                settle_panic(core, id, CallStatus::Panicked, output_before, "input");
                return pos;
            }
        }
    }
}

fn too_large(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId, pos: usize) -> usize {
    tracing::debug!(conn = id.0, max = core.limits.max_package_size, "message over the max package size");
    conn_call!(plugin, core, id, "on_error", on_conn_error, id, ConnErrorCode::PACKAGE_TOO_LARGE);
    core.close_after_flush(id);
    pos
}

/// Reports an error to the plugin and closes the connection at once.
fn fail(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId, err: ConnError) {
    // (Also after `on_close` for a lingering connection: what it has always done.)
    if core
        .get(id)
        .is_some_and(|c| !matches!(c.phase, ConnPhase::Handshaking | ConnPhase::Closing { announced: false }))
    {
        conn_call!(plugin, core, id, "on_error", on_conn_error, id, ConnErrorCode::from(err));
    }
    close_now(plugin, core, id.index());
}

/// Closes idle connections, messages too slow to arrive, closing connections whose output makes
/// no progress, and lingering ones past their deadline.
pub fn sweep(plugin: &mut RawPluginBox, core: &mut Core, now: u64) {
    let idle_ms = core.limits.idle_timeout_ms;
    let message_ms = core.limits.message_timeout_ms;
    for id in core.ids() {
        let Some(c) = core.get(id) else { continue };
        let idle = idle_ms > 0 && now.saturating_sub(c.last_active_ms) >= idle_ms;
        let slow = message_ms > 0 && c.message_started_ms.is_some_and(|t| now.saturating_sub(t) >= message_ms);
        if matches!(c.phase, ConnPhase::Handshaking | ConnPhase::Closing { announced: false }) {
            // The plugin has not heard of it: no event, just the socket closed at the deadline.
            let limit = if message_ms > 0 { HANDSHAKE_TIMEOUT_MS.min(message_ms) } else { HANDSHAKE_TIMEOUT_MS };
            if now.saturating_sub(c.created_ms) >= limit {
                tracing::debug!(conn = id.0, "TLS handshake timeout");
                close_now(plugin, core, id.index());
            }
            continue;
        }
        match c.phase {
            ConnPhase::Lingering { until_ms } if now >= until_ms => close_now(plugin, core, id.index()),
            ConnPhase::Open if idle || slow => {
                tracing::debug!(conn = id.0, idle, slow_message = slow, "timeout");
                conn_call!(plugin, core, id, "on_error", on_conn_error, id, ConnErrorCode::TIMEOUT);
                core.close_after_flush(id);
                if let Some(c) = core.get_mut(id) {
                    // From now on it must make progress writing, or it is closed at the next timeout.
                    c.last_active_ms = now;
                }
            }
            // Its client does not read what is left to send.
            ConnPhase::Closing { .. } if idle => {
                tracing::debug!(conn = id.0, pending = c.pending_output(), "closing connection stalled; closed");
                close_now(plugin, core, id.index());
            }
            _ => {}
        }
    }
}

/// Delivers deferred events and flushes dirty connections until nothing is left to do.
pub fn settle(plugin: &mut RawPluginBox, core: &mut Core, scratch: &mut [u8]) {
    let mut dirty = std::mem::take(&mut core.dirty_spare);
    for _ in 0..64 {
        while let Some((id, what)) = core.deferred.pop_front() {
            if core.get(id).is_none() {
                continue;
            }
            match what {
                Deferred::BufferFull => {
                    conn_call!(plugin, core, id, "on_buffer_full", on_buffer_full, id);
                }
                Deferred::BufferDrain => {
                    conn_call!(plugin, core, id, "on_buffer_drain", on_buffer_drain, id);
                }
                Deferred::Error(err) => {
                    conn_call!(plugin, core, id, "on_error", on_conn_error, id, ConnErrorCode::from(err));
                }
                Deferred::Resume => {
                    dispatch_buffered(plugin, core, id);
                    read(plugin, core, scratch, id.index(), false);
                }
            }
        }
        if core.dirty.is_empty() {
            core.dirty_spare = dirty;
            core.requeue_next_turn();
            return;
        }
        std::mem::swap(&mut dirty, &mut core.dirty);
        for index in dirty.drain(..) {
            flush(plugin, core, index);
        }
    }
    core.dirty_spare = dirty;
    core.requeue_next_turn();
    // Not a fault: a plugin streaming a large answer refills the send buffer on every drain, and
    // a fast reader on loopback drains it within the same turn, so the rounds go on until the
    // answer ends. The bound keeps one such connection from starving the others: the rest
    // continues next turn (the poll does not wait while events are pending).
    tracing::debug!("events still pending after 64 rounds (a stream refilling on drain); continuing next turn");
}

fn flush(plugin: &mut RawPluginBox, core: &mut Core, index: usize) {
    let now = core.now_ms;
    let Some(c) = core.by_index(index) else {
        return;
    };
    c.sched.dirty = false;
    let id = c.id;
    if matches!(c.phase, ConnPhase::Lingering { .. }) {
        return;
    }
    if matches!(c.phase, ConnPhase::Connecting { .. }) {
        // An outbound connection not established yet has nothing to write (sends are refused
        // until then) and must keep waiting for writability: its connect completes there.
        return;
    }
    match c.flush(now) {
        Ok(Flushed::All) => {
            let drained = std::mem::replace(&mut c.hold.buffer_full, false);
            let closing = matches!(c.phase, ConnPhase::Closing { .. });
            if drained {
                core.deferred.push_back((id, Deferred::BufferDrain));
                core.deferred.push_back((id, Deferred::Resume));
            }
            let _ = core.set_write_interest(index, false);
            if closing {
                begin_close(plugin, core, index);
            }
        }
        Ok(Flushed::Yielded) => {
            // A file's share for this turn is written: the rest next turn, after the others.
            core.flush_next_turn.push(index);
        }
        Ok(Flushed::Blocked) => {
            if let Err(e) = core.set_write_interest(index, true) {
                tracing::debug!(conn = id.0, "could not wait for writability: {e}");
                fail(plugin, core, id, ConnError::Io);
            }
        }
        Err(e) => {
            tracing::debug!(conn = id.0, "write failed: {e}");
            fail(plugin, core, id, ConnError::Io);
        }
    }
}

/// Everything is flushed: shut our side down and linger, so that bytes the client is still
/// sending do not make the kernel reset the connection before it read our last response.
fn begin_close(plugin: &mut RawPluginBox, core: &mut Core, index: usize) {
    let until_ms = core.now_ms + LINGER_MS;
    let Some(c) = core.by_index(index) else {
        return;
    };
    let id = c.id;
    // (Closed before its TLS handshake completed: nothing to linger for.)
    if c.read.eof || !c.phase.announced() || c.stream.shutdown(Shutdown::Write).is_err() {
        close_now(plugin, core, index);
        return;
    }
    c.phase = ConnPhase::Lingering { until_ms };
    c.input = Vec::new();
    c.clear_output();
    c.read.ready = true;
    c.message_started_ms = None;
    // Read (and drop) what the client already sent: only a read to EOF avoids a reset.
    core.deferred.push_back((id, Deferred::Resume));
    let status = call!(plugin, core, on_close, id);
    if status == CallStatus::Panicked {
        count_panic(core);
        tracing::error!(conn = id.0, "plugin panicked in on_close");
    }
}

/// Closes the socket now and tells the plugin (unless it was told when lingering began).
pub fn close_now(plugin: &mut RawPluginBox, core: &mut Core, index: usize) {
    let Some(conn) = core.remove(index) else {
        return;
    };
    if conn.phase.announced() {
        let status = call!(plugin, core, on_close, conn.id);
        if status == CallStatus::Panicked {
            count_panic(core);
            tracing::error!(conn = conn.id.0, "plugin panicked in on_close");
        }
    }
}

/// An outbound connection failed to connect: the plugin hears the error, then `on_close`.
pub fn connect_failed(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId, code: ConnErrorCode) {
    conn_call!(plugin, core, id, "on_error", on_conn_error, id, code);
    close_now(plugin, core, id.index());
}

/// An outbound connection that never had a socket is gone (`code`: why, `None`: the plugin
/// closed it): the plugin hears the error, if any, then `on_close`.
pub fn pending_closed(plugin: &mut RawPluginBox, core: &mut Core, id: ConnId, code: Option<ConnErrorCode>) {
    if let Some(code) = code {
        if call!(plugin, core, on_conn_error, id, code) == CallStatus::Panicked {
            core.stats.plugin_panics += 1;
            tracing::error!(conn = id.0, "plugin panicked in on_error");
        }
    }
    if call!(plugin, core, on_close, id) == CallStatus::Panicked {
        core.stats.plugin_panics += 1;
        tracing::error!(conn = id.0, "plugin panicked in on_close");
    }
}

/// Tells the plugin what became of an outbound connection (`Core::connect_ready`,
/// `Core::expire_outbound`). `hup`: the readiness that established it also said the peer hung up.
pub fn outbound(plugin: &mut RawPluginBox, core: &mut Core, scratch: &mut [u8], event: OutboundEvent, hup: bool) {
    match event {
        OutboundEvent::Connected { id, index } => {
            connect(plugin, core, id);
            // What may already have arrived.
            if let Some(c) = core.by_index(index) {
                c.read.ready = true;
            }
            read(plugin, core, scratch, index, hup);
        }
        OutboundEvent::Failed { id, code } => connect_failed(plugin, core, id, code),
        OutboundEvent::Gone { id, code } => pending_closed(plugin, core, id, code),
    }
}
