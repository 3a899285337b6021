//! The host handle a plugin gets during one call ([`Ctx`], `RawHost`), and the sends it queues.
//!
//! Plugin calls never close or free a connection directly: they queue output, set the
//! connection's phase or hold, and push [`Deferred`] work that the loop carries out between
//! plugin calls, so no callback sees a connection vanish under it and none re-enters the plugin.

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr};
use plugin_api::abi::{
    ConnError, ConnectErrorCode, HostExtension, RawHost, RawHostExt, RawHostExt_TO, RawJobBox, RawNotifierBox,
    RawPeerCred, RawSockAddr, RawTransport, SendFileStatus, TaskStatus,
};
use plugin_api::{raw_sock_addr, ConnId, TimerId};

use super::super::phase::ConnPhase;
use super::conn::FileOut;
use super::{Core, Deferred, MAX_PLUGIN_COUNTERS};
use crate::status::PluginCounter;

impl Core {
    /// `RawHost::send`: queues `data` on a stream's output (one datagram sent now for a UDP
    /// session). False when refused: no such connection, a phase that takes no output, or a
    /// send buffer already full.
    pub fn send(&mut self, id: ConnId, data: &[u8]) -> bool {
        if self.topics.hearing.is_some() && self.topics.had_already(id) {
            // From `on_publish`, a message this connection had already across a hand-over
            // (`topic_seam`): taken as sent, not written twice.
            return true;
        }
        let max = self.limits.max_send_buffer;
        let now = self.now_ms;
        let Some(c) = self.conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id) else {
            return false;
        };
        if let Some(peer) = c.stream.datagram_peer() {
            // UDP: each send is one datagram, sent now (a datagram the socket cannot take is
            // dropped, as UDP does; nothing is queued).
            let sent = match (c.phase, &self.udp) {
                (ConnPhase::Open | ConnPhase::Closing { .. }, Some(udp)) => udp.send_to(data, peer),
                _ => return false,
            };
            return match sent {
                Ok(n) => {
                    c.bytes_out += n as u64;
                    c.last_active_ms = now;
                    true
                }
                Err(e) => {
                    tracing::debug!(conn = id.0, %peer, "datagram not sent: {e}");
                    self.stats.send_failures += 1;
                    self.deferred.push_back((id, Deferred::Error(ConnError::SendFailed)));
                    false
                }
            };
        }
        if !c.takes_output() {
            return false;
        }
        // Like Workerman: a send is refused once the buffer is already full, but one large send
        // into a buffer below the limit is taken whole (a big response is one send).
        let pending = c.pending_output();
        if pending >= max {
            self.stats.send_failures += 1;
            self.deferred.push_back((id, Deferred::Error(ConnError::SendFailed)));
            return false;
        }
        c.output.extend_from_slice(data);
        let now_full = pending.saturating_add(data.len()) >= max && !c.hold.buffer_full;
        if now_full {
            c.hold.buffer_full = true;
            self.deferred.push_back((id, Deferred::BufferFull));
        }
        self.mark_dirty(id.index());
        true
    }

    /// `RawHost::send_file`: queues a range of a duplicate of `fd` after the output so far.
    pub fn send_file(&mut self, id: ConnId, fd: i32, offset: u64, len: u64) -> Result<(), SendFileStatus> {
        let max = self.limits.max_send_buffer;
        let Some(c) = self.conns.get_mut(id.index()).and_then(Option::as_mut).filter(|c| c.id == id) else {
            return Err(SendFileStatus::REFUSED);
        };
        if c.stream.datagram_peer().is_some() {
            return Err(SendFileStatus::NOT_A_STREAM);
        }
        if !c.takes_output() {
            return Err(SendFileStatus::REFUSED);
        }
        if offset.checked_add(len).is_none_or(|end| end > i64::MAX as u64) {
            return Err(SendFileStatus::BAD_FILE);
        }
        // As `send`: refused once the buffer is full, taken whole below the limit.
        if c.pending_output() >= max {
            self.stats.send_failures += 1;
            self.deferred.push_back((id, Deferred::Error(ConnError::SendFailed)));
            return Err(SendFileStatus::REFUSED);
        }
        if len == 0 {
            return Ok(());
        }
        let file = crate::sys::dup_regular_file(fd).map_err(|_| SendFileStatus::BAD_FILE)?;
        c.files.push_back(FileOut { at: c.output.len(), file, offset, remaining: len });
        if c.pending_output() >= max && !c.hold.buffer_full {
            c.hold.buffer_full = true;
            self.deferred.push_back((id, Deferred::BufferFull));
        }
        self.mark_dirty(id.index());
        Ok(())
    }
}

/// The host handle a plugin gets during one call.
pub struct Ctx<'a> {
    pub core: &'a mut Core,
}

/// The calls added since plugin-api 0.1.3 (`RawHost::extension` hands them to the plugin).
impl RawHostExt for Ctx<'_> {
    fn api_version(&self) -> RStr<'static> {
        use abi_stable::library::RootModule as _;
        plugin_api::abi::PluginModRef::VERSION_STRINGS.version
    }

    fn transport(&self, conn: ConnId) -> RawTransport {
        self.core.get(conn).map_or(RawTransport::UNKNOWN, |c| c.stream.kind())
    }

    fn alpn(&self, conn: ConnId) -> ROption<RSlice<'_, u8>> {
        self.core.get(conn).and_then(|c| c.stream.alpn_protocol()).map(RSlice::from_slice).into()
    }

    fn set_alpn(&mut self, protocols: RSlice<'_, RStr<'_>>) -> bool {
        self.core.set_alpn(protocols.iter().map(|p| p.as_str().as_bytes()))
    }

    fn handover_carry(&mut self, conn: ConnId) -> bool {
        self.core.carry_outbound(conn)
    }

    fn handover_carried(&self, old: ConnId) -> ROption<ConnId> {
        self.core.carry.adopted.get(&old.0).copied().into()
    }

    fn handover_hears(&mut self, conn: ConnId, topic: RSlice<'_, u8>) -> bool {
        self.core.topics.declare_heard(conn, topic.as_slice())
    }

    fn subscribe(&mut self, conn: ConnId, topic: RSlice<'_, u8>) -> i64 {
        self.core.subscribe(conn, topic.as_slice())
    }

    fn unsubscribe(&mut self, conn: ConnId, topic: RSlice<'_, u8>) -> i64 {
        self.core.unsubscribe(conn, topic.as_slice())
    }

    fn publish(&mut self, topic: RSlice<'_, u8>, msg: RSlice<'_, u8>) -> i64 {
        self.core.publish(topic.as_slice(), msg.as_slice())
    }

    fn subscribers(&mut self, topic: RSlice<'_, u8>) -> i64 {
        match self.core.topics.check_topic(topic.as_slice()) {
            Ok(()) => self.core.topics.conn_count(topic.as_slice()) as i64,
            Err(status) => status.0 as i64,
        }
    }
}

impl RawHost for Ctx<'_> {
    fn extension(&mut self) -> HostExtension<'_> {
        HostExtension::new(RawHostExt_TO::from_ptr(self, TD_Opaque))
    }

    fn send(&mut self, conn: ConnId, data: RSlice<'_, u8>) -> bool {
        self.core.send(conn, data.as_slice())
    }

    fn close(&mut self, conn: ConnId, last: RSlice<'_, u8>) {
        if self.core.cancel_pending(conn) {
            return;
        }
        if !last.is_empty() {
            self.core.send(conn, last.as_slice());
        }
        self.core.close_after_flush(conn);
    }

    fn pause_recv(&mut self, conn: ConnId, paused: bool) {
        let Some(c) = self.core.get_mut(conn) else {
            return;
        };
        let was = c.hold.by_plugin;
        c.hold.by_plugin = paused;
        if was && !paused {
            self.core.deferred.push_back((conn, Deferred::Resume));
        }
    }

    fn peer_addr(&self, conn: ConnId) -> RawSockAddr {
        raw_sock_addr(self.core.get(conn).and_then(|c| c.peer))
    }

    fn local_addr(&self, conn: ConnId) -> RawSockAddr {
        raw_sock_addr(self.core.get(conn).and_then(|c| c.local))
    }

    fn pending_send(&self, conn: ConnId) -> u64 {
        self.core.get(conn).map_or(0, |c| c.pending_output() as u64)
    }

    fn add_timer(&mut self, delay_ms: u64, interval_ms: u64, data: u64) -> TimerId {
        self.core.timers.add(self.core.now_ms, delay_ms, interval_ms, data)
    }

    fn del_timer(&mut self, timer: TimerId) -> bool {
        self.core.timers.remove(timer)
    }

    fn slot(&self) -> u32 {
        self.core.slot
    }

    fn service(&self) -> RStr<'_> {
        RStr::from_str(&self.core.service)
    }

    fn is_draining(&self) -> bool {
        self.core.phase.tells_plugin_draining()
    }

    fn now_ms(&self) -> u64 {
        self.core.now_ms
    }

    fn worker_count(&self) -> u32 {
        self.core.worker_count
    }

    fn counter(&mut self, name: RStr<'_>, labels: RStr<'_>, help: RStr<'_>) -> u32 {
        let (name, labels) = (name.as_str(), labels.as_str());
        if let Some(i) = self.core.plugin_counters.iter().position(|c| c.name == name && c.labels == labels) {
            return i as u32;
        }
        if !PluginCounter::valid(name, labels) || self.core.plugin_counters.len() >= MAX_PLUGIN_COUNTERS {
            return plugin_api::abi::NO_COUNTER;
        }
        let counter = PluginCounter { name: name.into(), labels: labels.into(), help: help.as_str().into(), value: 0 };
        self.core.plugin_counters.push(counter);
        (self.core.plugin_counters.len() - 1) as u32
    }

    fn counter_add(&mut self, counter: u32, delta: u64) {
        if let Some(c) = self.core.plugin_counters.get_mut(counter as usize) {
            c.value = c.value.saturating_add(delta);
        }
    }

    fn connect(&mut self, addr: RStr<'_>, timeout_ms: u64) -> RResult<ConnId, ConnectErrorCode> {
        self.core.connect(addr.as_str(), timeout_ms).into()
    }

    fn is_outbound(&self, conn: ConnId) -> bool {
        self.core.is_outbound(conn)
    }

    fn server_name(&self, conn: ConnId) -> ROption<RStr<'_>> {
        self.core.get(conn).and_then(|c| c.stream.server_name()).map(RStr::from_str).into()
    }

    fn broadcast(&mut self, msg: RSlice<'_, u8>) -> i64 {
        let slot = self.core.slot;
        self.core.mailbox.broadcast(slot, msg.as_slice())
    }
    fn send_to_worker(&mut self, slot: u32, msg: RSlice<'_, u8>) -> i64 {
        let from = self.core.slot;
        self.core.mailbox.send_to(from, slot, msg.as_slice())
    }

    fn peer_cred(&self, conn: ConnId) -> ROption<RawPeerCred> {
        let cred = self.core.get(conn).and_then(|c| c.cred);
        cred.map(|(pid, uid, gid)| RawPeerCred { pid, uid, gid }).into()
    }

    fn submit_task(&mut self, job: RawJobBox) -> i64 {
        match self.core.tasks() {
            Some(tasks) => tasks.submit(job),
            None => TaskStatus::UNSUPPORTED.0 as i64,
        }
    }

    fn notifier(&mut self) -> ROption<RawNotifierBox> {
        self.core.tasks().map(|tasks| tasks.notifier()).into()
    }

    fn access_log(&mut self, line: RSlice<'_, u8>) -> bool {
        self.core.access_log.append(line.as_slice(), self.core.now_ms)
    }

    fn send_file(&mut self, conn: ConnId, fd: i32, offset: u64, len: u64) -> i64 {
        match self.core.send_file(conn, fd, offset, len) {
            Ok(()) => 0,
            Err(status) => status.0 as i64,
        }
    }
}
