//! The replacement's side of a hand-over: answer the offer, keep every frame until `Done`, then
//! adopt the worker state (in place from a sealed memfd when large) and each connection, and
//! acknowledge before reading any of them.

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

impl Worker {
    pub(super) fn drive_new(&mut self, mut new: NewSide) -> Option<NewSide> {
        for (msg, fds) in new.channel.read_with_fds() {
            if new.finished {
                continue;
            }
            match msg {
                Handover::Hello { .. } => {}
                Handover::Offer { plugin, version } => {
                    let answer = match dispatch::handover_version(&mut self.plugin) {
                        0 => Handover::Refuse("the new plugin does not take part in hand-overs".into()),
                        _ if dispatch::handover_accepts(&mut self.plugin, &mut self.core, &plugin, version) => {
                            new.version = Some(version);
                            Handover::Accept
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
                Handover::State { .. } | Handover::Conns(_) | Handover::Sessions(_) => new.stash.push((msg, fds)),
                Handover::Done => {
                    self.adopt_all(&mut new);
                    new.finished = true;
                }
                other => {
                    tracing::warn!("hand-over: the old worker sent {} out of turn; giving up", name(&other));
                    let _ = new.channel.send(&Handover::Failed("a message out of turn".into()));
                    new.finished = true;
                }
            }
        }
        if !new.finished && self.core.now_ms >= new.deadline_ms {
            tracing::warn!("the previous worker handed nothing over in time; serving without it");
            new.finished = true;
            new.channel.shut_down();
        }
        self.flush_handover(&mut new.channel, false);
        if new.channel.closed || (new.finished && !new.channel.pending()) {
            let _ = self.poll.registry().deregister(&mut new.channel.stream);
            self.resume_accepting();
            // No more connections come: the topic messages kept for them go.
            self.core.topics.recent.stop();
            // Adopted connections arrived with stashed frames; an unfinished hand-over's
            // descriptors are the old worker's copies: dropping them here closes nothing of its.
            return None;
        }
        Some(new)
    }

    /// `Done`: imports the outbound connections carried along (their old ids answer the plugin's
    /// lookups), adopts the worker state, then every other connection (imported, then offered to
    /// the plugin, with what it carries); acknowledges before reading any of them.
    fn adopt_all(&mut self, new: &mut NewSide) {
        let Some(version) = new.version else {
            let _ = new.channel.send(&Handover::Failed("nothing was accepted".into()));
            return;
        };
        let mut state = None;
        let mut items = Vec::new();
        let mut session_items = Vec::new();
        for (msg, fds) in std::mem::take(&mut new.stash) {
            match msg {
                Handover::State { len, inline } if state.is_none() => state = Some((len, inline, fds)),
                Handover::Conns(list) => {
                    let mut fds = fds.into_iter();
                    for m in list {
                        let socket = fds.next();
                        let files: Vec<std::fs::File> =
                            fds.by_ref().take(m.snapshot.files.len()).map(std::fs::File::from).collect();
                        let MovedConn { kind, snapshot, state, tls, old_id, carried_by } = m;
                        items.push(Incoming {
                            kind,
                            snapshot: Some(snapshot),
                            tls,
                            state,
                            old_id,
                            carried_by,
                            socket,
                            files,
                        });
                    }
                }
                Handover::Sessions(list) => session_items.extend(list),
                _ => {}
            }
        }
        let Some((len, inline, fds)) = state else {
            let _ = new.channel.send(&Handover::Failed("no worker state came".into()));
            return;
        };
        let mut acks = vec![false; items.len()];
        let mut ids: Vec<Option<ConnId>> = vec![None; items.len()];
        // Carried connections first: the plugin looks them up as it adopts their owners.
        for (i, item) in items.iter_mut().enumerate() {
            if item.carried_by.is_some() {
                ids[i] = self.import_moved(item);
                if let Some(id) = ids[i] {
                    self.core.carry.adopted.insert(item.old_id, id);
                }
            }
        }
        let mut state_bytes = 0u64;
        // A large state is read in place from the sealed memfd's mapping: no copy.
        let mapped = match inline {
            Some(bytes) if bytes.len() as u64 == len => Ok(State::Inline(bytes)),
            Some(bytes) => Err(format!("{} bytes of state, {len} announced", bytes.len())),
            None => match (fds.into_iter().next(), usize::try_from(len)) {
                (Some(fd), Ok(len)) => sys::SealedMap::map(&fd, len)
                    .map(State::Mapped)
                    .map_err(|e| format!("could not map the state: {e}")),
                _ => Err("no memfd came with the state".into()),
            },
        };
        let adopted = mapped.map(|state| {
            let bytes = state.bytes();
            state_bytes += bytes.len() as u64;
            dispatch::handover_adopt_worker(&mut self.plugin, &mut self.core, version, bytes)
        });
        let failed = match adopted {
            Ok(RawHandover::MOVE) => None,
            Ok(_) => Some("the plugin refused the worker state".to_string()),
            Err(why) => Some(why),
        };
        if let Some(why) = failed {
            // Back out what came: these copies close; the old worker keeps every connection.
            for id in ids.into_iter().flatten() {
                let _ = self.core.export(id);
            }
            self.core.carry.adopted.clear();
            let _ = new.channel.send(&Handover::Failed(why));
            return;
        }
        for (i, item) in items.iter_mut().enumerate() {
            if item.carried_by.is_some() {
                continue;
            }
            state_bytes += item.state.len() as u64;
            let Some(id) = self.import_moved(item) else { continue };
            let answer = dispatch::handover_adopt_conn(&mut self.plugin, &mut self.core, id, version, &item.state);
            if answer == RawHandover::MOVE {
                acks[i] = true;
            } else {
                // Back out: this copy closes; the old worker keeps the connection.
                let _ = self.core.export(id);
            }
        }
        // A carried connection stays adopted with its owner (or the worker state), or goes back.
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
        self.core.carry.adopted.clear();
        let moved = acks.iter().filter(|&&a| a).count() as u64;
        // UDP sessions last (the acknowledgement answers them after the connections, in order).
        let mut sessions = 0u64;
        for m in session_items {
            let MovedSession { snapshot, state } = m;
            state_bytes += state.len() as u64;
            let adopted = self.adopt_session(version, snapshot, &state);
            sessions += adopted as u64;
            acks.push(adopted);
        }
        tracing::info!(
            adopted = moved,
            udp_sessions = sessions,
            offered = acks.len(),
            state_bytes,
            "connections adopted"
        );
        self.core.stats.adopted += moved + sessions;
        // The acknowledgement leaves before any adopted connection is read (in this turn's
        // settling): should this worker die after reading, the old one no longer holds them.
        let _ = new.channel.send(&Handover::Ack(acks));
        let _ = new.channel.flush_timeout(std::time::Duration::from_secs(1));
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
struct Incoming {
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

/// The record layer a TLS connection's old worker sent (`MovedTls::encode`).
fn moved_tls(bytes: &[u8]) -> Result<TlsSession, String> {
    let state = crate::tls::moved::MovedTls::decode(bytes).map_err(|e| e.to_string())?;
    TlsSession::from_moved(state).map_err(|e| e.to_string())
}
