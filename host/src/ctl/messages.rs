//! The messages of the master↔worker channel ([`super::channel`]), encoded with postcard.
//!
//! Compatibility rule: in every version of the protocol, variant 0 of both enums is `Hello` with
//! `protocol` as its first field, and variant 1 of [`ToMaster`] is `Error(String)`. A peer can
//! therefore always read the other's version (and a worker's refusal) before it knows how to
//! decode anything else. Any other change to these types bumps [`PROTOCOL`].

use serde::{Deserialize, Serialize};

use crate::config::WorkerSpec;

/// The version of the master↔worker protocol this binary speaks. A master and a worker of
/// different versions refuse each other at the hello (the worker after a binary upgrade is exec'd
/// from the new file while the old master runs).
///
/// 8: a replacement may start awaiting its hand-over (`WorkerSpec::await_handover`, `Serve`),
/// `Limits::handover_timeout_ms`, a hand-over report's reasons for what stayed, the moved-TLS
/// counters in the worker report.
/// 9: a hand-over's connections carry their old id and, for an outbound connection, who
/// carries it (`MovedConn::old_id`, `MovedConn::carried_by`); UDP sessions move in a hand-over
/// (`Handover::Sessions`).
/// 10: the replacement adopts and acknowledges each `Conns` and `Sessions` frame as it comes
/// (`Done` with an empty `Ack`), the connections the worker state carries come before `State`:
/// a hand-over may go in batches; a hand-over report counts the UDP sessions moved apart from
/// the connections (`HandoverReport::sessions`).
/// 11: an old worker writing a large worker state tells the master it goes on
/// (`ToMaster::HandoverProgress`), which extends its kill deadline.
/// 12: a moved connection's snapshot lists the topics it hears through the plugin's
/// `on_publish` (`Snapshot::heard`, `RawHostExt::handover_hears`); a worker is told whether its
/// hand-over may go in batches (`WorkerSpec::handover_batches`).
/// Also in 12, the pre-copy: a replacement that adopts the worker state in steps answers `AcceptSteps`, and
/// the old worker sends `Step`s (each acknowledged) while it serves, before the connections
/// stop; a hand-over report says the copy's steps, bytes and time (`HandoverReport::copy_*`).
/// 13: a failed hand-over's report says why as a type (`HandoverReport::cause`); the last `Peers` frame of a set carries the set's generation, and the worker answers it
/// with `PeersKnown` once it applied the set (the master starts a hand-over once every peer knows
/// the replacement: `master::mailbox`).
pub const PROTOCOL: u32 = 13;

/// The id of the status report a worker sends unasked as it exits (requests count from 1).
pub const FINAL_REPORT: u64 = 0;

/// What a report request asks a worker for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportKind {
    Status,
    Connections,
}

/// A message from the master to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// The master's first frame: its protocol version and the worker's settings.
    Hello {
        protocol: u32,
        spec: Box<WorkerSpec>,
    },
    /// Stop accepting, drain connections, exit within this many milliseconds.
    Drain {
        timeout_ms: u64,
    },
    /// Close everything and exit now.
    Stop,
    /// The service is not reloadable: call the plugin's reload hook instead of a restart.
    ReloadHook,
    Report {
        id: u64,
        kind: ReportKind,
    },
    /// Carries one descriptor: the receiving end of the worker's mailbox (a `SOCK_SEQPACKET`
    /// socket pair made by the master; it keeps the sending end and hands it to the peers).
    Mailbox,
    /// The workers of the service this worker may send messages to, each with the sending end of
    /// its mailbox (the frame carries one descriptor per peer, in this order). `replace`: this
    /// list starts a new set (the previous peers are dropped); false: it continues the previous
    /// frame (a set larger than one frame's descriptors is split). `generation`: 0, except on
    /// the last frame of a set, which the worker answers with [`ToMaster::PeersKnown`] once it
    /// applied the whole set (protocol 13).
    Peers {
        replace: bool,
        peers: Vec<Peer>,
        generation: u64,
    },
    /// Where the worker's logs go from now on: the frame carries the new access log's
    /// descriptor when `access_log`, then the host's log file's when `log_file` (made the
    /// worker's stdout and stderr). The worker writes what it buffered to the old access log
    /// first. Id 0: the access log a worker starts with (sent right after the hello when its
    /// spec says so; not answered); any other id is answered with `LogsReopened`
    /// (`host reopen-logs`).
    Logs {
        id: u64,
        access_log: bool,
        log_file: bool,
    },
    /// Whether the worker dies with the master's process (`kill`: the parent-death signal
    /// SIGKILL, as every worker starts) or outlives it (a binary upgrade is about to exec a new
    /// program in the master's place: should that die, the upgrade's guardian takes the master
    /// over and adopts the workers). Answered with [`ToMaster::ParentDeath`].
    ParentDeath {
        kill: bool,
    },
    /// Hand the connections over to the slot's replacement instead of draining (protocol 7):
    /// the frame carries this worker's end of a socket pair whose other end the replacement got
    /// with `Adopt`. Within `timeout_ms` the replacement must have acknowledged; otherwise, or
    /// if it refuses or dies, the worker keeps what it holds and does `fallback`.
    HandOver {
        timeout_ms: u64,
        fallback: Fallback,
    },
    /// Adopt what the slot's previous worker hands over on the socket pair end the frame carries;
    /// new connections wait meanwhile, `timeout_ms` at most.
    Adopt {
        timeout_ms: u64,
    },
    /// No hand-over comes to this replacement (its spec said `await_handover`): accept from now
    /// on. Sent only to a worker started awaiting one, which is of this protocol.
    Serve,
}

/// What an old worker does with the connections that do not move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fallback {
    /// Drain them within this many milliseconds, then exit (a graceful replacement).
    Drain { timeout_ms: u64 },
    /// Close them and exit (a plain reload).
    Stop,
}

/// A worker another worker may send messages to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub slot: u32,
    /// The master's id of the worker (unique for the master's life).
    pub worker: u64,
    /// It serves its slot (`send_to_worker` goes to it); false: it drains or is a replacement.
    pub serving: bool,
}

/// How long an old worker whose hand-over timed out with connections lent waits for the
/// replacement's answer to the `Done` it then sends (the replacement adopts and acknowledges
/// what came before it, and answers: nothing is killed); then it asks the master to end the
/// replacement (`HandoverTimedOut`).
pub const HANDOVER_CANCEL_WAIT_MS: u64 = 5_000;
/// How long an old worker whose hand-over timed out waits, after `HandoverTimedOut`, for the
/// master to end the replacement (its end of the pair closing); then it takes everything it holds
/// back anyway.
pub const HANDOVER_KILL_WAIT_MS: u64 = 5_000;
/// The most a timed-out hand-over waits past its deadline before the old worker's fallback: the
/// master's kill deadline of the old worker grows by it.
pub const HANDOVER_END_WAIT_MS: u64 = HANDOVER_CANCEL_WAIT_MS + HANDOVER_KILL_WAIT_MS;

/// A message from a worker to the master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToMaster {
    /// The worker's first frame, answering the master's: its protocol version.
    Hello { protocol: u32 },
    /// The worker cannot start (sent instead of the hello when the versions differ), then exits.
    Error(String),
    /// The plugin is loaded and started: the worker serves.
    Ready,
    /// The answer to a report request. The report stays JSON (built with serde_json from
    /// `status::WorkerReport` or the connection rows): the master passes most of it through to
    /// `host status`/`connections` untouched, and the status format stays the one source of truth.
    Report { id: u64, kind: ReportKind, json: String },
    /// The worker's loop turns (sent at most once a heartbeat): the watchdog's sign of life. It
    /// carries what recycling decides on: messages handled since the worker started, and its
    /// resident memory (bytes, from `/proc/self/statm`; 0 if unknown).
    Alive { messages: u64, rss_bytes: u64 },
    /// The worker switched to the descriptors of `Logs { id }`; `error` says what went wrong
    /// (the old descriptors are kept).
    LogsReopened { id: u64, error: Option<String> },
    /// The worker's parent-death signal is as [`ToWorker::ParentDeath`] asked (`kill`).
    ParentDeath { kill: bool },
    /// An old worker's hand-over ended (protocol 7): what moved, what stayed (and drains or
    /// stops), and why when it failed.
    HandedOver(HandoverReport),
    /// The old worker's hand-over deadline passed with connections lent to the replacement, and
    /// the replacement did not answer the `Done` sent then either (protocol 10): the master kills that replacement (the one it named in this worker's
    /// `HandOver`; a worker has one hand-over in its life) if it still runs, as if it had died
    /// while adopting. The old worker then reads its end of the pair until it closes: what the
    /// replacement acknowledged before is its own, the rest comes back. Only the old side
    /// decides a timeout, so no connection is ever read by both.
    HandoverTimedOut,
    /// The old worker is writing its worker state for a hand-over and goes on (protocol 11):
    /// `state_bytes` written so far. Sent at most once a second while the plugin writes, and
    /// once the state is sent: the master's kill deadline of the old worker counts again from
    /// it, so that a long export (a large keyspace on a loaded machine) is not killed while it
    /// makes progress; a plugin that hangs in it writes nothing and is.
    HandoverProgress { state_bytes: u64 },
    /// The worker applied the set of peers whose last `Peers` frame carried `generation`
    /// (protocol 13): from now on what it sends reaches every worker of that set.
    PeersKnown { generation: u64 },
}

/// What one hand-over did, as the old worker saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverReport {
    /// Connections the replacement adopted (TCP and Unix, accepted and carried outbound ones).
    pub moved: u64,
    /// UDP sessions the replacement adopted (not in `moved`).
    pub sessions: u64,
    /// Connections that stayed: declined by the plugin, refused by the new one, or not movable
    /// (TLS, handshaking, closing, outbound); they drain (or stop) in the old worker.
    pub stayed: u64,
    /// Bytes of plugin state sent: the connections' and the worker's.
    pub state_bytes: u64,
    /// The worker-wide state (or a step of it) went through a sealed memfd (it was large).
    pub memfd: bool,
    /// Milliseconds from the old worker's last read to the replacement's acknowledgement (the
    /// replacement reads at once on adoption: the pause a client of a moved connection sees).
    pub pause_ms: u64,
    /// Why nothing (or only part) moved: None when the hand-over went through.
    pub failure: Option<String>,
    /// The old and new workers talked (false: the old plugin does not take part, or the pair
    /// could not be used: a drain as before, not a failure).
    pub attempted: bool,
    /// Why connections stayed, with how many for each reason (they add up to `stayed`).
    pub stays: Vec<(String, u64)>,
    /// Pre-copy (protocol 12): the steps of the worker state sent while the old worker served,
    /// their bytes (also in `state_bytes`), and how long the copy ran before the connections
    /// stopped (not in `pause_ms`).
    pub copy_steps: u64,
    pub copy_bytes: u64,
    pub copy_ms: u64,
    /// Why it failed, as a type (protocol 13): None when it went through, or did not begin (the
    /// plugin does not take part). `failure` says it in words, with the detail.
    #[serde(default)]
    pub cause: Option<HandoverFailure>,
}

/// Why a hand-over failed, as the old worker saw it (`status --json`'s `last_cause`, the log's
/// `cause`). Whatever the cause, the old worker took back every connection it still held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoverFailure {
    /// The replacement could not be reached: the pair's socket was unusable, or the offer could
    /// not be written.
    Unreachable,
    /// The new plugin refused the old one's state (`handover_accepts`), or takes no part.
    Refused,
    /// The replacement could not adopt the worker state or a step of it (`Failed`).
    NotAdopted,
    /// The replacement said it failed (`Error`), or answered against the protocol (a message
    /// out of turn, an acknowledgement that does not match).
    Protocol,
    /// The replacement's end closed without an answer: it died or exited.
    Gone,
    /// No acknowledgement within `handover_timeout`.
    TimedOut,
    /// The channel broke: a write that failed, a frame over the limits.
    Channel,
    /// This worker could not send what it has: its plugin did not export, or the state could
    /// not be stored.
    Export,
}

impl HandoverFailure {
    /// Its name in `status --json` and the log.
    pub fn as_str(self) -> &'static str {
        match self {
            HandoverFailure::Unreachable => "unreachable",
            HandoverFailure::Refused => "refused",
            HandoverFailure::NotAdopted => "not_adopted",
            HandoverFailure::Protocol => "protocol",
            HandoverFailure::Gone => "gone",
            HandoverFailure::TimedOut => "timed_out",
            HandoverFailure::Channel => "channel",
            HandoverFailure::Export => "export",
        }
    }

    /// The reason the connections it left behind stayed (a report's `stays`).
    pub fn stay_reason(self) -> &'static str {
        match self {
            HandoverFailure::Unreachable => "the replacement could not be reached",
            HandoverFailure::Refused => "the new plugin refused the state",
            HandoverFailure::NotAdopted => "the replacement could not adopt the state",
            HandoverFailure::Protocol => "the replacement broke the protocol",
            HandoverFailure::Gone => "the replacement is gone",
            HandoverFailure::TimedOut => "the hand-over timed out",
            HandoverFailure::Channel => "the channel to the replacement broke",
            HandoverFailure::Export => "the state could not be exported",
        }
    }
}

impl HandoverReport {
    /// `n` more connections stayed for `why`.
    pub fn stay(&mut self, why: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.stayed += n;
        match self.stays.iter_mut().find(|(w, _)| w == why) {
            Some((_, count)) => *count += n,
            None => self.stays.push((why.to_string(), n)),
        }
    }
}

/// A message between an old worker and its replacement, on the socket pair the master made
/// for their hand-over (the same framing as the master's channel: variant 0 is the hello,
/// variant 1 an error). Order: old `Offer` → new `Accept`, `AcceptSteps` or `Refuse` → (after
/// `AcceptSteps`, old: `Step`s while it serves, each answered with an empty `Ack`) → old: the `Conns` the
/// worker state carries, `State`, the other `Conns`… (each with its descriptors), `Sessions`…,
/// `Done`; new: an `Ack` for each `Conns` and `Sessions` frame as it adopts it, an empty `Ack`
/// for `Done`, or `Failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Handover {
    Hello {
        protocol: u32,
    },
    Error(String),
    /// The old instance's plugin and the version of the state it exports.
    Offer {
        plugin: String,
        version: u32,
    },
    /// The new instance reads that version: the old worker stops reading and sends.
    Accept,
    /// It does not: nothing moves.
    Refuse(String),
    /// The worker-wide state, `len` bytes: inline, or (None) in the sealed memfd the frame carries.
    State {
        len: u64,
        inline: Option<Vec<u8>>,
    },
    /// A batch of connections: the frame carries, for each in order, its socket then its files.
    Conns(Vec<MovedConn>),
    /// Everything was sent.
    Done,
    /// For each connection (or UDP session) of the oldest frame not answered yet, in order:
    /// adopted (true) or to be taken back (false); empty for `Done`. The old worker closes its
    /// descriptors of the adopted ones only now.
    Ack(Vec<bool>),
    /// The new worker could not adopt the worker state: the old one takes everything back.
    Failed(String),
    /// A batch of UDP sessions (protocol 9), after every `Conns`: plain data, no descriptor
    /// (the slot's socket is the replacement's already). `Ack` answers them after the
    /// connections, in order.
    Sessions(Vec<MovedSession>),
    /// The new instance reads that version and adopts the worker state in steps (protocol 12,
    /// pre-copy): the old worker sends `Step`s while it serves, then stops and sends as after
    /// `Accept`.
    AcceptSteps,
    /// One step of the worker state (protocol 12), `len` bytes: inline, or (None) in the sealed
    /// memfd the frame carries. Sent while the old worker serves; each is answered with an
    /// empty `Ack` once adopted (staged), or `Failed`.
    Step {
        len: u64,
        inline: Option<Vec<u8>>,
    },
}

impl Message for Handover {
    fn allowed_before_hello(tag: u32) -> bool {
        tag == 1
    }
}

/// One connection of a hand-over: the host's part and the plugin's state for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovedConn {
    /// The kind of its socket (the frame's next descriptor), followed by its files' descriptors.
    pub kind: crate::worker::SocketKind,
    pub snapshot: crate::worker::Snapshot,
    pub state: Vec<u8>,
    /// A TLS connection's record layer (`tls::moved::MovedTls::encode`: its traffic keys,
    /// sequence numbers and the ciphertext in flight); None for a plain one. It crosses only the
    /// socket pair between the two workers.
    pub tls: Option<Vec<u8>>,
    /// Its id in the old worker: the plugin's state names the connections it carried by it.
    pub old_id: u64,
    /// An outbound connection carried by its owner (`RawHostExt::handover_carry`); None for
    /// one offered to the plugin itself (`adopt_conn`).
    pub carried_by: Option<Carrier>,
}

/// Who carries an outbound connection in a hand-over: it is adopted with its owner or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Carrier {
    /// The worker state (`export_worker`): it moves once that state is adopted.
    Worker,
    /// The connection of this old id (`export_conn`): it moves if that connection is adopted.
    Conn(u64),
}

/// One UDP session of a hand-over: the host's part (its peer, counters, idle age, topics) and
/// the plugin's state for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovedSession {
    pub snapshot: crate::worker::Snapshot,
    pub state: Vec<u8>,
}

/// What a channel needs to know of the messages it receives.
pub trait Message: Serialize + serde::de::DeserializeOwned {
    /// Whether a peer may send variant `tag` before its hello (a worker's refusal).
    fn allowed_before_hello(_tag: u32) -> bool {
        false
    }
}

impl Message for ToWorker {}

impl Message for ToMaster {
    fn allowed_before_hello(tag: u32) -> bool {
        // `Error`: a worker of another version says why it refuses.
        tag == 1
    }
}
