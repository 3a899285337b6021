//! A connection taken out of the table whole ([`Core::export`]) and put back, in this worker or
//! another ([`Core::import`]): the base of a hand-over, where a worker's connections move to its
//! replacement instead of draining.
//!
//! An [`ExportedConn`] is three parts: the descriptors (the socket and the files queued by
//! `send_file`), the TLS state (a [`TlsSession`]: [`TlsSession::into_moved`] makes plain bytes
//! of it for another process, [`TlsSession::from_moved`] continues it there), and a [`Snapshot`]
//! of plain values that can be serialised as they are. Its times
//! are ages, not instants: each worker's clock starts at its own epoch. The old worker keeps
//! the exported value (and so every descriptor) until the new one has adopted it; should that
//! fail, importing it back restores the connection where it was.
//!
//! A UDP session has no descriptor of its own (the slot's socket is shared by the old worker and
//! its replacement): it moves as its [`Snapshot`] alone ([`Core::hold_session`],
//! [`Core::import_session`]), the peer address keying it in the new worker's session table.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;

use mio::{Interest, Token};
use plugin_api::ConnId;

use crate::tls::moved::CannotMove;

use super::super::topic_seam::Marks;
use super::super::topics::HeardSeam;

use super::super::phase::ConnPhase;
use super::super::transport::{Socket, Stream, TlsSession, Transport};
use super::conn::{Conn, FileOut, Hold, Origin, ReadSide, Sched};
use super::{Core, Deferred, CONN_TOKEN_BASE};

/// A range of a file queued among a connection's output (its descriptor travels beside it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRange {
    /// Its place in the output: written once [`Snapshot::output`] is written up to this index.
    pub at: usize,
    pub offset: u64,
    pub remaining: u64,
}

/// Everything of a connection but its descriptors and TLS state, as plain values (what a
/// hand-over sends beside the descriptors).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// `Open` or `Closing` (the phases that can move).
    pub phase: ConnPhase,
    pub origin: Origin,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    /// A Unix socket's peer: pid, uid, gid.
    pub cred: Option<(u32, u32, u32)>,
    /// The name the client asked for (TLS SNI).
    pub server_name: Option<String>,
    /// Bytes received and not yet consumed by a message.
    pub input: Vec<u8>,
    /// Length of the next message, when the plugin announced one longer than `input`.
    pub expect: Option<usize>,
    /// Bytes queued and not yet written.
    pub output: Vec<u8>,
    /// File ranges queued among `output`, in order; their files are `ExportedConn::files`.
    pub files: Vec<FileRange>,
    /// The peer half-closed (`eof`), or hung up (`hup`: read to EOF).
    pub eof: bool,
    pub hup: bool,
    /// Paused by the plugin, held by a full send buffer.
    pub hold: Hold,
    /// Milliseconds since the connection was last active (for its idle timeout).
    pub idle_ms: u64,
    /// Milliseconds since the incomplete message in `input` began to arrive (its timeout).
    pub message_age_ms: Option<u64>,
    pub age_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The topics it is subscribed to (`Host::subscribe`), in order: they move with it.
    pub topics: Vec<Vec<u8>>,
    /// With topics (or [`Snapshot::heard`] ones): the last number this worker took from each
    /// publisher (publisher, number): it was written every message up to these, the new worker
    /// writes it the later ones (`worker::topic_seam`).
    pub topic_marks: Vec<(u64, u64)>,
    /// Topics it hears through the plugin's `on_publish` (`RawHostExt::handover_hears`): the
    /// new worker does not subscribe it to them, it replays what it missed on them past
    /// `topic_marks` to the plugin's `on_publish_missed` once adopted.
    pub heard: Vec<Vec<u8>>,
}

/// A connection out of its table.
#[derive(Debug)]
pub struct ExportedConn {
    pub socket: Socket,
    /// The TLS state (None: plain). A value of this process: [`TlsSession::into_moved`] makes
    /// bytes of it. The plaintext it held is in [`Snapshot::input`] already.
    pub tls: Option<TlsSession>,
    /// The files of [`Snapshot::files`], in the same order (the host's own duplicates).
    pub files: Vec<File>,
    pub snapshot: Snapshot,
}

/// Why a connection cannot be exported: it stays in the table, as it was.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("no such connection")]
    NotFound,
    /// Handshaking, connecting or lingering: not a connection the plugin can resume.
    #[error("a connection in phase {0:?} cannot move")]
    Phase(ConnPhase),
    /// A UDP session has no socket of its own: it moves as a session ([`Core::hold_session`]).
    #[error("a UDP session cannot move as a connection")]
    Datagram,
    /// [`Core::hold_session`] of a connection that is not a UDP session.
    #[error("not a UDP session")]
    NotASession,
    /// A TLS connection that cannot move (its handshake is not finished, say).
    #[error("a TLS connection cannot move: {0}")]
    Tls(CannotMove),
    /// On the io_uring backend, it could not leave the ring ([`Stay::InRing`]).
    #[error("it could not leave the io_uring ring")]
    InRing,
}

/// An import that failed: the connection is given back whole, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("could not import a connection: {source}")]
pub struct ImportError {
    pub conn: Box<ExportedConn>,
    pub source: io::Error,
}

/// Why a connection does not move in a hand-over (it drains in the old worker instead): the one
/// place that decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stay {
    /// Handshaking, connecting, closing or lingering: nothing for a plugin to resume.
    #[error("not open")]
    NotOpen,
    /// TLS that cannot continue in another process now (its handshake is not finished, the
    /// record layer failed…: `tls::moved::CannotMove` says which).
    #[error("its TLS cannot move now")]
    Tls,
    /// Opened by the plugin (`Host::connect`) and not carried by its owner's export
    /// (`RawHostExt::handover_carry`): still connecting, or its owner stays.
    #[error("outbound, not carried")]
    Outbound,
    /// On the io_uring backend, the ring cannot let it go: its socket failed, or a shutdown
    /// waits for its queued bytes (it is closing). (A connection with bytes in the ring moves:
    /// [`Core::export`] takes them.)
    #[error("the io_uring ring cannot let it go")]
    InRing,
}

/// Outbound connections in a hand-over. They are never offered to the plugin on their own: the
/// plugin names each one it carries (`RawHostExt::handover_carry`) while it exports the
/// connection that owns it, or its worker state, and the host moves it beside that owner, with
/// no state of its own (its plugin state is in the owner's), adopted with the owner or not at
/// all. The new worker imports every carried connection before it adopts anything and answers
/// the plugin's old → new lookups (`RawHostExt::handover_carried`) from `adopted`.
#[derive(Debug, Default)]
pub struct Carry {
    /// While the plugin exports an owner: the outbound connections it named, in order.
    pub exporting: Option<Vec<ConnId>>,
    /// While the replacement adopts: each carried connection's old id → its id here.
    pub adopted: HashMap<u64, ConnId>,
}

/// Why a UDP session's snapshot cannot be adopted (the old worker keeps the session).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSession {
    #[error("a UDP session without a peer address")]
    NoPeer,
    #[error("a UDP session in phase {0:?} cannot be adopted")]
    Phase(ConnPhase),
    /// Files, buffered input or a half-close: what no UDP session has.
    #[error("a UDP session snapshot with stream state")]
    StreamState,
    /// The peer has a session here already (a datagram opened one before the adoption).
    #[error("{0} has a UDP session here already")]
    Duplicate(SocketAddr),
    #[error("this worker has no UDP socket")]
    NoSocket,
}

impl Core {
    /// Whether connection `id` can move to a replacement, or why it stays. An outbound
    /// connection moves only when carried by its owner ([`Core::carry_outbound`]).
    pub fn movable(&self, id: ConnId) -> Result<(), Stay> {
        match self.movable_origin(id)? {
            Origin::Outbound => Err(Stay::Outbound),
            _ => Ok(()),
        }
    }

    /// Whether connection `id` could move if its owner carries it (all but the outbound rule).
    fn movable_origin(&self, id: ConnId) -> Result<Origin, Stay> {
        let c = self.get(id).ok_or(Stay::NotOpen)?;
        if c.phase != ConnPhase::Open {
            return Err(Stay::NotOpen);
        }
        if c.stream.tls_movable().is_err() {
            return Err(Stay::Tls);
        }
        if !c.stream.ring_lets_go() {
            return Err(Stay::InRing);
        }
        Ok(c.origin)
    }

    /// `RawHostExt::handover_carry`: during an export, `id` (open, outbound, movable) goes with
    /// the owner being exported. False outside an export and for anything else.
    pub fn carry_outbound(&mut self, id: ConnId) -> bool {
        let movable = self.movable_origin(id) == Ok(Origin::Outbound);
        match &mut self.carry.exporting {
            Some(list) if movable => {
                if !list.contains(&id) {
                    list.push(id);
                }
                true
            }
            _ => false,
        }
    }

    /// What [`Core::export`] would take of the connection, its descriptors aside.
    pub fn snapshot(&self, id: ConnId) -> Option<Snapshot> {
        let c = self.get(id)?;
        let now = self.now_ms;
        Some(Snapshot {
            phase: c.phase,
            origin: c.origin,
            peer: c.peer,
            local: c.local,
            cred: c.cred,
            server_name: c.stream.server_name().map(str::to_string),
            input: c.input.clone(),
            expect: c.expect,
            output: c.output[c.output_pos..].to_vec(),
            files: c
                .files
                .iter()
                .map(|f| FileRange { at: f.at - c.output_pos, offset: f.offset, remaining: f.remaining })
                .collect(),
            eof: c.read.eof,
            hup: c.read.hup,
            hold: c.hold,
            idle_ms: now.saturating_sub(c.last_active_ms),
            message_age_ms: c.message_started_ms.map(|t| now.saturating_sub(t)),
            age_ms: now.saturating_sub(c.created_ms),
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            topics: self.topics.topics_of(id),
            topic_marks: match self.topics.topics_of(id).is_empty() && !self.topics.declared.contains_key(&id) {
                true => Vec::new(),
                false => self.topics.seen.iter().map(|(&p, &n)| (p, n)).collect(),
            },
            heard: self.topics.declared.get(&id).cloned().unwrap_or_default(),
        })
    }

    /// Takes an open (or closing) connection out of the table whole. The plugin hears nothing:
    /// the caller moves its state along.
    pub fn export(&mut self, id: ConnId) -> Result<ExportedConn, ExportError> {
        let c = self.get(id).ok_or(ExportError::NotFound)?;
        if c.stream.datagram_peer().is_some() {
            return Err(ExportError::Datagram);
        }
        if !matches!(c.phase, ConnPhase::Open | ConnPhase::Closing { announced: true }) {
            return Err(ExportError::Phase(c.phase));
        }
        if !c.stream.ring_lets_go() {
            return Err(ExportError::InRing);
        }
        // On io_uring, it leaves the ring first: what the ring received is read into its input,
        // what it had not sent goes before its output. (Checked before it leaves the table: a
        // connection is never lost to an export.)
        let now = self.now_ms;
        let c = self.get_mut(id).expect("checked above");
        let had = c.input.len();
        let left = c.stream.leave_ring(&mut c.input);
        let received = (c.input.len() - had) as u64;
        c.bytes_in += received;
        if received > 0 && c.message_started_ms.is_none() {
            c.message_started_ms = Some(now);
        }
        let left = left.map(|unsent| c.requeue_front(unsent));
        // TLS gives up the plaintext it holds to the connection's input (it moves with it).
        let settled = left
            .map_err(|e| {
                tracing::debug!(conn = id.0, "could not leave the io_uring ring: {e}");
                ExportError::InRing
            })
            .and_then(|()| c.stream.settle_tls(&mut c.input).map_err(ExportError::Tls));
        if let Err(e) = settled {
            // It stays: back on the ring, its output flushed, what it read dispatched.
            c.stream.stay_on_ring();
            self.mark_dirty(id.index());
            self.deferred.push_back((id, Deferred::Resume));
            return Err(e);
        }
        let snapshot = self.snapshot(id).expect("checked above");
        let conn = self.take(id.index()).expect("checked above");
        let (socket, tls) = match conn.stream.into_parts() {
            Ok(parts) => parts,
            Err(_) => unreachable!("a stream with a socket"),
        };
        let files = conn.files.into_iter().map(|f| f.file).collect();
        Ok(ExportedConn { socket, tls, files, snapshot })
    }

    /// Takes a connection out like [`Core::export`] but keeps its id reserved, so that
    /// [`Core::restore`] can put it back under the same id (the plugin of this worker knows it
    /// by that id) should the hand-over fail; [`Core::release`] frees the id once it moved.
    pub fn hold(&mut self, id: ConnId) -> Result<ExportedConn, ExportError> {
        let exported = self.export(id)?;
        // Topic messages on its topics that reach this worker from now on are forwarded.
        let s = &exported.snapshot;
        self.topics.handed_over.extend(s.topics.iter().chain(&s.heard).map(|t| t[..].into()));
        // `take` freed the index last: reserve it again.
        self.keep_reserved(id);
        Ok(exported)
    }

    /// Puts a connection taken by [`Core::hold`] back under its id.
    pub fn restore(&mut self, id: ConnId, conn: ExportedConn) -> Result<ConnId, ImportError> {
        self.import_at(id, conn)
    }

    /// Frees the id of a connection taken by [`Core::hold`] that moved for good.
    pub fn release(&mut self, id: ConnId) {
        self.release_id(id);
    }

    /// Puts an exported connection in the table under a new id (ids are per worker): registered
    /// for reading, its output flushed and its buffered input dispatched at the end of the turn.
    pub fn import(&mut self, conn: ExportedConn) -> Result<ConnId, ImportError> {
        let id = self.reserve_id();
        self.import_at(id, conn)
    }

    fn import_at(&mut self, id: ConnId, conn: ExportedConn) -> Result<ConnId, ImportError> {
        let ExportedConn { socket, tls, files, snapshot: s } = conn;
        let mut stream = Transport::from_parts(socket, tls);
        if let Some(ring) = &self.ring {
            // On io_uring: on this worker's ring, as the connections it accepts.
            stream.adopt_ring(ring);
        }
        let index = id.index();
        if let Err(source) = self.registry.register(&mut stream, Token(index + CONN_TOKEN_BASE), Interest::READABLE) {
            self.release_id(id);
            let (socket, tls) = stream.into_parts().unwrap_or_else(|_| unreachable!("a stream with a socket"));
            return Err(ImportError { conn: Box::new(ExportedConn { socket, tls, files, snapshot: s }), source });
        }
        let open = s.phase == ConnPhase::Open;
        // What the peer sent meanwhile waits in the socket: the registration announces it (a
        // plain socket on epoll: no read of every imported socket on the chance), or it is read
        // at once.
        let ready = !s.eof && (s.hup || !stream.register_announces_input());
        let read = ReadSide { ready, hup: s.hup, eof: s.eof };
        self.put(id, stream, files, read, s);
        // Flush what was queued (or carry out the close); dispatch what was buffered.
        self.mark_dirty(index);
        if open {
            self.deferred.push_back((id, Deferred::Resume));
        }
        Ok(id)
    }

    /// Puts a connection built from a snapshot in the table under `id`, with its topics.
    fn put(&mut self, id: ConnId, stream: Transport, files: Vec<File>, read: ReadSide, s: Snapshot) {
        let now = self.now_ms;
        let file_outs = s.files.iter().zip(files).map(|(r, file)| FileOut {
            at: r.at,
            file,
            offset: r.offset,
            remaining: r.remaining,
        });
        let conn = Conn {
            id,
            stream,
            phase: s.phase,
            origin: s.origin,
            peer: s.peer,
            local: s.local,
            cred: s.cred,
            input: s.input,
            expect: s.expect,
            output: s.output,
            output_pos: 0,
            files: file_outs.collect(),
            read,
            hold: s.hold,
            sched: Sched::default(),
            message_started_ms: s.message_age_ms.map(|age| now.saturating_sub(age)),
            last_active_ms: now.saturating_sub(s.idle_ms),
            created_ms: now.saturating_sub(s.age_ms),
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
        };
        self.conns[id.index()] = Some(conn);
        self.live += 1;
        for topic in &s.topics {
            self.subscribe(id, topic);
        }
        // What this worker took on its topics that the old one had not: written first.
        let marks: Marks = s.topic_marks.iter().copied().collect();
        if !s.topics.is_empty() {
            self.replay_missed(id, &marks, &s.topics);
        }
        // What it missed on the topics the plugin delivers: once the plugin adopted it
        // (`Core::heard_missed`).
        if !s.heard.is_empty() {
            self.topics.heard_pending.insert(id, HeardSeam { topics: s.heard, marks });
        }
    }

    /// Keeps the index `take` just freed reserved for `id`.
    fn keep_reserved(&mut self, id: ConnId) {
        if self.free.last() == Some(&(id.index() as u32)) {
            self.free.pop();
        } else {
            self.free.retain(|&i| i as usize != id.index());
        }
    }

    /// Takes an open UDP session out of the table as its snapshot, its id kept reserved like
    /// [`Core::hold`] (for [`Core::restore_session`] or [`Core::release`]). The plugin hears
    /// nothing. Datagrams from its peer are not read meanwhile: the worker stopped reading the
    /// slot's socket when the hand-over began.
    pub fn hold_session(&mut self, id: ConnId) -> Result<Snapshot, ExportError> {
        let c = self.get(id).ok_or(ExportError::NotFound)?;
        if c.stream.datagram_peer().is_none() {
            return Err(ExportError::NotASession);
        }
        if c.phase != ConnPhase::Open {
            return Err(ExportError::Phase(c.phase));
        }
        let snapshot = self.snapshot(id).expect("checked above");
        self.take(id.index()).expect("checked above");
        self.topics.handed_over.extend(snapshot.topics.iter().chain(&snapshot.heard).map(|t| t[..].into()));
        self.keep_reserved(id);
        Ok(snapshot)
    }

    /// Puts a session taken by [`Core::hold_session`] back under its id.
    pub fn restore_session(&mut self, id: ConnId, snapshot: Snapshot) -> Result<ConnId, BadSession> {
        self.put_session(id, snapshot)
    }

    /// Adopts a UDP session from its snapshot under a new id: its peer's next datagram reaches
    /// it (no new session, no `on_connect`), its idle age and counters go on.
    pub fn import_session(&mut self, snapshot: Snapshot) -> Result<ConnId, BadSession> {
        let id = self.reserve_id();
        self.put_session(id, snapshot)
    }

    /// Backs an adoption out (the plugin refused it): the session leaves this table without a
    /// word to the plugin; the old worker keeps it.
    pub fn forget_session(&mut self, id: ConnId) {
        if self.get(id).is_some_and(|c| c.stream.datagram_peer().is_some()) {
            self.take(id.index());
        }
    }

    fn put_session(&mut self, id: ConnId, s: Snapshot) -> Result<ConnId, BadSession> {
        if let Err(e) = self.session_fits(&s) {
            self.release_id(id);
            return Err(e);
        }
        let peer = s.peer.expect("checked by session_fits");
        self.put(id, Transport::plain(Stream::Datagram(peer)), Vec::new(), ReadSide::default(), s);
        self.sessions.insert(peer, id);
        Ok(id)
    }

    /// Whether `s` is a UDP session this worker can take.
    fn session_fits(&self, s: &Snapshot) -> Result<(), BadSession> {
        let peer = s.peer.ok_or(BadSession::NoPeer)?;
        if s.phase != ConnPhase::Open {
            return Err(BadSession::Phase(s.phase));
        }
        if !s.files.is_empty() || !s.input.is_empty() || !s.output.is_empty() || s.expect.is_some() || s.eof || s.hup {
            return Err(BadSession::StreamState);
        }
        if self.udp.is_none() {
            return Err(BadSession::NoSocket);
        }
        if self.sessions.contains_key(&peer) {
            return Err(BadSession::Duplicate(peer));
        }
        Ok(())
    }
}
