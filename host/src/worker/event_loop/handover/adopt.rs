//! The replacement's side of a hand-over: answer the offer; keep the connections that come
//! before the worker state (those it carries), adopt the state (in place from a sealed memfd
//! when large), then adopt each frame of connections as it comes and acknowledge it before
//! reading any of them (the old worker may still be serving the connections of later frames:
//! a hand-over in batches); `Done` is answered with an empty `Ack`.

use std::os::fd::OwnedFd;

use plugin_api::abi::RawHandover;
use plugin_api::ConnId;

use super::super::super::core::ExportedConn;
use super::super::super::dispatch;
use super::super::super::transport::{Socket, TlsSession};
use super::super::Worker;
use super::{name, NewSide};
use crate::ctl::{Carrier, Handover, MovedConn, MovedSession};
use crate::sys;

/// A worker state as received: in the frame, or a mapping of its memfd.
enum State {
    Inline(Vec<u8>),
    Mapped(sys::SealedMap),
}

impl State {
    fn bytes(&self) -> &[u8] {
        match self {
            State::Inline(bytes) => bytes,
            State::Mapped(map) => map.as_slice(),
        }
    }
}

/// What a replacement adopted in one hand-over (its log line at the end).
#[derive(Debug, Default)]
pub(in crate::worker::event_loop) struct Tally {
    adopted: u64,
    sessions: u64,
    offered: u64,
    state_bytes: u64,
    /// Pre-copy steps staged.
    steps: u64,
}

impl Worker {
    pub(super) fn drive_new(&mut self, mut new: NewSide) -> Option<NewSide> {
        for (msg, fds) in new.channel.read_with_fds() {
            if new.finished {
                continue;
            }
            match msg {
                Handover::Hello { .. } => {}
                Handover::Offer { plugin, version } if new.version.is_none() => {
                    let answer = match dispatch::handover_version(&mut self.plugin) {
                        0 => Handover::Refuse("the new plugin does not take part in hand-overs".into()),
                        _ if dispatch::handover_accepts(&mut self.plugin, &mut self.core, &plugin, version) => {
                            new.version = Some(version);
                            // From here on only the old worker decides a timeout: this side
                            // waits for `Done` or the channel's end (the old worker gone, or
                            // having taken everything back), and keeps the topic messages it
                            // takes meanwhile until then (their bound in bytes stands).
                            new.deadline_ms = None;
                            self.core.topics.recent.until_ms = u64::MAX;
                            // Pre-copy: a plugin that stages steps has the old worker write its
                            // state while it serves.
                            new.steps = dispatch::handover_adopts_steps(&mut self.plugin);
                            match new.steps {
                                true => Handover::AcceptSteps,
                                false => Handover::Accept,
                            }
                        }
                        _ => {
                            Handover::Refuse(format!("the new plugin cannot read state version {version} of {plugin}"))
                        }
                    };
                    if let Handover::Refuse(why) = &answer {
                        tracing::info!("hand-over refused: {why}");
                        new.finished = true;
                    }
                    let _ = new.channel.send(&answer);
                }
                Handover::Conns(list) if new.version.is_some() => {
                    let items = incoming(list, fds);
                    match new.state_in {
                        true => self.adopt_frame(&mut new, items),
                        false => new.early.push(items),
                    }
                }
                Handover::Step { len, inline } if new.steps && new.version.is_some() && !new.state_in => {
                    self.adopt_step(&mut new, len, inline, fds);
                }
                Handover::State { len, inline } if new.version.is_some() && !new.state_in => {
                    self.adopt_state(&mut new, len, inline, fds);
                }
                Handover::Sessions(list) if new.state_in => self.adopt_sessions(&mut new, list),
                Handover::Done if new.state_in => {
                    let t = &new.tally;
                    tracing::info!(
                        adopted = t.adopted,
                        udp_sessions = t.sessions,
                        offered = t.offered,
                        state_bytes = t.state_bytes,
                        steps = t.steps,
                        "connections adopted"
                    );
                    send_ack(&mut new, Vec::new());
                    new.finished = true;
                }
                other => {
                    tracing::warn!("hand-over: the old worker sent {} out of turn; giving up", name(&other));
                    let _ = new.channel.send(&Handover::Failed("a message out of turn".into()));
                    new.finished = true;
                }
            }
        }
        if !new.finished && new.deadline_ms.is_some_and(|d| self.core.now_ms >= d) {
            tracing::warn!("the previous worker offered nothing in time; serving without it");
            new.finished = true;
            new.channel.shut_down();
        }
        self.flush_handover(&mut new.channel, false);
        if new.channel.closed || (new.finished && !new.channel.pending()) {
            let _ = self.poll.registry().deregister(&mut new.channel.stream);
            // Steps never committed by the worker state: nothing of them is served.
            self.drop_staged(&mut new);
            self.resume_accepting();
            // No more connections come: the topic messages kept for them go, and so do the
            // lookups of carried connections.
            self.core.topics.recent.stop();
            self.core.carry.adopted.clear();
            // Connections that came before an unadopted worker state are the old worker's:
            // dropping these descriptors closes nothing of its.
            return None;
        }
        Some(new)
    }

    /// `State`: imports the connections it carries (they came first: their old ids answer the
    /// plugin's lookups), adopts it, then offers those connections to the plugin. From here on
    /// each frame is adopted as it comes.
    fn adopt_state(&mut self, new: &mut NewSide, len: u64, inline: Option<Vec<u8>>, fds: Vec<OwnedFd>) {
        let version = new.version.expect("accepted before");
        let mut early = std::mem::take(&mut new.early);
        let ids: Vec<Vec<Option<ConnId>>> = early.iter_mut().map(|items| self.import_carried(items)).collect();
        let mapped = received(len, inline, fds);
        let adopted = mapped.map(|state| {
            let bytes = state.bytes();
            new.tally.state_bytes += bytes.len() as u64;
            dispatch::handover_adopt_worker(&mut self.plugin, &mut self.core, version, bytes)
        });
        let failed = match adopted {
            Ok(RawHandover::MOVE) => None,
            Ok(_) => Some("the plugin refused the worker state".to_string()),
            Err(why) => Some(why),
        };
        if let Some(why) = failed {
            // Back out what came: these copies close; the old worker keeps every connection.
            for id in ids.into_iter().flatten().flatten() {
                let _ = self.core.export(id);
            }
            self.core.carry.adopted.clear();
            self.drop_staged(new);
            let _ = new.channel.send(&Handover::Failed(why));
            new.finished = true;
            return;
        }
        // The steps are committed with it.
        new.staged = false;
        new.state_in = true;
        for (items, ids) in early.into_iter().zip(ids) {
            let acks = self.adopt_items(new, version, items, ids);
            send_ack(new, acks);
        }
    }

    /// `Step` (pre-copy): a slice of the worker state, staged by the plugin (nothing of it is
    /// served before the worker state commits it), acknowledged; or the hand-over fails.
    fn adopt_step(&mut self, new: &mut NewSide, len: u64, inline: Option<Vec<u8>>, fds: Vec<OwnedFd>) {
        let version = new.version.expect("accepted before");
        new.staged = true;
        let adopted = received(len, inline, fds).map(|state| {
            dispatch::handover_adopt_worker_step(&mut self.plugin, &mut self.core, version, state.bytes())
        });
        let failed = match adopted {
            Ok(RawHandover::MOVE) => None,
            Ok(_) => Some("the plugin refused a step of the worker state".to_string()),
            Err(why) => Some(why),
        };
        match failed {
            None => {
                new.tally.steps += 1;
                new.tally.state_bytes += len;
                send_ack(new, Vec::new());
            }
            Some(why) => {
                tracing::warn!("hand-over: {why}; giving up");
                self.drop_staged(new);
                let _ = new.channel.send(&Handover::Failed(why));
                new.finished = true;
            }
        }
    }

    /// The plugin drops what steps it staged, once (the hand-over ended without committing them).
    fn drop_staged(&mut self, new: &mut NewSide) {
        if std::mem::take(&mut new.staged) {
            tracing::info!(steps = new.tally.steps, "dropping the staged steps of a hand-over that did not finish");
            dispatch::handover_drop_steps(&mut self.plugin, &mut self.core);
        }
    }

    /// A `Conns` frame after the worker state: imported, offered to the plugin, acknowledged.
    fn adopt_frame(&mut self, new: &mut NewSide, mut items: Vec<Incoming>) {
        let version = new.version.expect("accepted before");
        let ids = self.import_carried(&mut items);
        let acks = self.adopt_items(new, version, items, ids);
        send_ack(new, acks);
    }

    /// Imports the carried connections of a frame (before anything is offered to the plugin,
    /// which looks them up by their old ids); the others' places are None.
    fn import_carried(&mut self, items: &mut [Incoming]) -> Vec<Option<ConnId>> {
        let mut ids = vec![None; items.len()];
        for (i, item) in items.iter_mut().enumerate() {
            if item.carried_by.is_some() {
                ids[i] = self.import_moved(item);
                if let Some(id) = ids[i] {
                    self.core.carry.adopted.insert(item.old_id, id);
                }
            }
        }
        ids
    }

    /// Imports the other connections of a frame and offers each to the plugin (one it refuses
    /// is taken out again); a carried connection stays adopted with its owner (in the same
    /// frame) or the worker state, or goes back. One flag per connection, in order.
    fn adopt_items(
        &mut self,
        new: &mut NewSide,
        version: u32,
        mut items: Vec<Incoming>,
        ids: Vec<Option<ConnId>>,
    ) -> Vec<bool> {
        let mut acks = vec![false; items.len()];
        for (i, item) in items.iter_mut().enumerate() {
            if item.carried_by.is_some() {
                continue;
            }
            new.tally.state_bytes += item.state.len() as u64;
            let Some(id) = self.import_moved(item) else { continue };
            let answer = dispatch::handover_adopt_conn(&mut self.plugin, &mut self.core, id, version, &item.state);
            if answer == RawHandover::MOVE {
                acks[i] = true;
            } else {
                // Back out: this copy closes; the old worker keeps the connection.
                let _ = self.core.export(id);
            }
        }
        let adopted_owners: std::collections::HashSet<u64> =
            items.iter().zip(&acks).filter(|(_, &a)| a).map(|(item, _)| item.old_id).collect();
        for (i, item) in items.iter().enumerate() {
            let Some(id) = ids[i] else { continue };
            let keep = match item.carried_by {
                Some(Carrier::Worker) => true,
                Some(Carrier::Conn(owner)) => adopted_owners.contains(&owner),
                None => continue,
            };
            if keep {
                acks[i] = true;
            } else {
                let _ = self.core.export(id);
            }
        }
        let moved = acks.iter().filter(|&&a| a).count() as u64;
        new.tally.adopted += moved;
        new.tally.offered += acks.len() as u64;
        self.core.stats.adopted += moved;
        acks
    }

    /// A `Sessions` frame: each UDP session adopted or refused, acknowledged.
    fn adopt_sessions(&mut self, new: &mut NewSide, list: Vec<MovedSession>) {
        let version = new.version.expect("accepted before");
        let mut acks = Vec::with_capacity(list.len());
        for MovedSession { snapshot, state } in list {
            new.tally.state_bytes += state.len() as u64;
            let adopted = self.adopt_session(version, snapshot, &state);
            new.tally.sessions += adopted as u64;
            new.tally.offered += 1;
            self.core.stats.adopted += adopted as u64;
            acks.push(adopted);
        }
        send_ack(new, acks);
    }

    /// Registers one connection that came (its descriptors taken from `item`); None when it
    /// cannot be (the old worker keeps it).
    fn import_moved(&mut self, item: &mut Incoming) -> Option<ConnId> {
        let snapshot = item.snapshot.take()?;
        let socket = item.socket.take().filter(|_| item.files.len() == snapshot.files.len())?;
        // A TLS connection goes on with the old worker's record layer.
        let tls = match item.tls.as_deref().map(moved_tls).transpose() {
            Ok(tls) => tls,
            Err(why) => {
                tracing::warn!("could not take a TLS connection's state: {why}");
                return None;
            }
        };
        let conn = ExportedConn {
            socket: Socket::from_kind(item.kind, socket),
            tls,
            files: std::mem::take(&mut item.files),
            snapshot,
        };
        match self.core.import(conn) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!("could not import a connection: {}", e.source);
                None
            }
        }
    }
}

/// A connection as it came (a `MovedConn`), with its descriptors.
pub(in crate::worker::event_loop) struct Incoming {
    kind: crate::worker::SocketKind,
    /// Taken by the import.
    snapshot: Option<crate::worker::Snapshot>,
    tls: Option<Vec<u8>>,
    state: Vec<u8>,
    old_id: u64,
    carried_by: Option<Carrier>,
    socket: Option<std::os::fd::OwnedFd>,
    files: Vec<std::fs::File>,
}

impl Worker {
    /// One UDP session: into the session table under a new id, then offered to the plugin
    /// (backed out if it refuses: the old worker keeps the session).
    fn adopt_session(&mut self, version: u32, snapshot: crate::worker::Snapshot, state: &[u8]) -> bool {
        let id = match self.core.import_session(snapshot) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!("could not adopt a UDP session: {e}");
                return false;
            }
        };
        let answer = dispatch::handover_adopt_conn(&mut self.plugin, &mut self.core, id, version, state);
        if answer != RawHandover::MOVE {
            self.core.forget_session(id);
        }
        answer == RawHandover::MOVE
    }
}

/// A worker state or a step as it came: `len` bytes inline, or (large) read in place from the
/// sealed memfd's mapping (no copy).
fn received(len: u64, inline: Option<Vec<u8>>, fds: Vec<OwnedFd>) -> Result<State, String> {
    match inline {
        Some(bytes) if bytes.len() as u64 == len => Ok(State::Inline(bytes)),
        Some(bytes) => Err(format!("{} bytes of state, {len} announced", bytes.len())),
        None => match (fds.into_iter().next(), usize::try_from(len)) {
            (Some(fd), Ok(len)) => {
                sys::SealedMap::map(&fd, len).map(State::Mapped).map_err(|e| format!("could not map the state: {e}"))
            }
            _ => Err("no memfd came with the state".into()),
        },
    }
}

/// A `Conns` frame's connections with their descriptors (each its socket, then its files).
fn incoming(list: Vec<MovedConn>, fds: Vec<OwnedFd>) -> Vec<Incoming> {
    let mut fds = fds.into_iter();
    let mut items = Vec::with_capacity(list.len());
    for m in list {
        let socket = fds.next();
        let files: Vec<std::fs::File> = fds.by_ref().take(m.snapshot.files.len()).map(std::fs::File::from).collect();
        let MovedConn { kind, snapshot, state, tls, old_id, carried_by } = m;
        items.push(Incoming { kind, snapshot: Some(snapshot), tls, state, old_id, carried_by, socket, files });
    }
    items
}

/// Acknowledges a frame **before any of its connections is read** (they are read in this
/// turn's settling, or at the next poll): should this worker die after reading, the old one no
/// longer holds them.
fn send_ack(new: &mut NewSide, acks: Vec<bool>) {
    let _ = new.channel.send(&Handover::Ack(acks));
    let _ = new.channel.flush_timeout(std::time::Duration::from_secs(1));
}

/// The record layer a TLS connection's old worker sent (`MovedTls::encode`).
fn moved_tls(bytes: &[u8]) -> Result<TlsSession, String> {
    let state = crate::tls::moved::MovedTls::decode(bytes).map_err(|e| e.to_string())?;
    TlsSession::from_moved(state).map_err(|e| e.to_string())
}
